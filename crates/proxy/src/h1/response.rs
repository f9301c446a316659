//! Response heads from a replica: parsing, framing, and the rewritten head
//! the client receives.

use std::mem::MaybeUninit;

use crate::error::ErrorKind;
use crate::h1::body::Framing;
use crate::h1::request::{Method, RequestInfo};
use crate::h1::{content_length, is_hop_by_hop, push_header, trim, ConnectionTokens, RequestId};

/// Most header fields accepted in a response head.
const MAX_RESPONSE_HEADERS: usize = 128;

/// What the forwarding loop needs from a response head.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ResponseInfo {
    pub(crate) status: u16,
    /// How the body is delimited on the replica's side.
    pub(crate) body: Framing,
    /// 1xx other than 101: forwarded, then another head follows.
    pub(crate) informational: bool,
    /// A 101 to an allowed upgrade: both connections become a tunnel.
    pub(crate) upgraded: bool,
    /// The replica allows another request on this connection.
    pub(crate) upstream_keep_alive: bool,
    /// The client connection must close after this response.
    pub(crate) client_close: bool,
    /// Length of the head in the buffer it was parsed from.
    pub(crate) head_len: usize,
    /// `Retry-After` in seconds, when given as a number.
    pub(crate) retry_after_s: Option<u64>,
}

/// Parses a response head at the start of `buf` and writes the client's head
/// into `out`. With `[cors]` (`cors` is `Some`, the lines for this request,
/// possibly none) the replica's `Access-Control-*` fields are dropped and the
/// proxy's lines go on a final response. `Ok(None)` means the head is not
/// complete yet.
pub(crate) fn parse_and_rewrite(
    buf: &[u8],
    request: &RequestInfo,
    keep_client: bool,
    request_id: &RequestId,
    cors: Option<&[u8]>,
    out: &mut Vec<u8>,
) -> Result<Option<ResponseInfo>, ErrorKind> {
    // Left uninitialised, as for requests: httparse writes what it finds.
    let mut headers =
        [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_RESPONSE_HEADERS];
    let mut resp = httparse::Response::new(&mut []);
    let parsed = httparse::ParserConfig::default().parse_response_with_uninit_headers(
        &mut resp,
        buf,
        &mut headers,
    );
    let head_len = match parsed {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(_) => return Err(ErrorKind::UpstreamFailed),
    };
    let (Some(status), Some(minor)) = (resp.code, resp.version) else {
        return Err(ErrorKind::UpstreamFailed);
    };
    // A 101 answers only the protocol switch the request asked for (its
    // `Upgrade` was passed on); to any other request it is a replica error.
    let upgraded = status == 101;
    if upgraded && !request.upgrade || !(100..=599).contains(&status) {
        return Err(ErrorKind::UpstreamFailed);
    }
    let informational = status < 200 && !upgraded;
    let seen = Seen::scan(resp.headers)?;
    if upgraded {
        return switched(&resp, head_len, &seen, request_id, out).map(Some);
    }
    let bodiless =
        request.method == Method::Head || informational || status == 204 || status == 304;
    let body = seen.framing(bodiless)?;
    let upstream_keep_alive = minor == 1
        && !seen.connection.close
        && body != Framing::UntilClose
        && !(seen.has_te && seen.length.is_some());
    let client_close = !keep_client
        || body == Framing::UntilClose
        || (body == Framing::Chunked && request.minor == 0);
    let head = ClientHead {
        status,
        reason: resp.reason.unwrap_or(""),
        body,
        informational,
        client_close,
    };
    head.write(&seen, resp.headers, request, request_id, cors, out);
    Ok(Some(ResponseInfo {
        status,
        body,
        informational,
        upgraded: false,
        upstream_keep_alive,
        client_close,
        head_len,
        retry_after_s: seen.retry_after_s,
    }))
}

/// A replica's `101 Switching Protocols`: the client gets its end-to-end
/// fields and the switch (`Connection: upgrade` and the replica's
/// `Upgrade`); nothing follows but the tunnel's bytes.
fn switched(
    resp: &httparse::Response<'_, '_>,
    head_len: usize,
    seen: &Seen,
    request_id: &RequestId,
    out: &mut Vec<u8>,
) -> Result<ResponseInfo, ErrorKind> {
    let headers = &*resp.headers;
    let upgrade = headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case("upgrade"))
        .map(|h| trim(h.value))
        .filter(|v| !v.is_empty())
        .ok_or(ErrorKind::UpstreamFailed)?;
    out.clear();
    out.extend_from_slice(b"HTTP/1.1 101 ");
    out.extend_from_slice(resp.reason.unwrap_or("Switching Protocols").as_bytes());
    out.extend_from_slice(b"\r\n");
    for h in headers {
        let name = h.name.as_bytes();
        if is_hop_by_hop(name)
            || seen.connection.drops(headers, name)
            || name.eq_ignore_ascii_case(b"content-length")
        {
            continue;
        }
        push_header(out, name, h.value);
    }
    out.extend_from_slice(b"Connection: upgrade\r\n");
    push_header(out, b"Upgrade", upgrade);
    if !seen.has_request_id {
        push_header(out, b"X-Request-Id", request_id.as_bytes());
    }
    out.extend_from_slice(b"\r\n");
    Ok(ResponseInfo {
        status: 101,
        body: Framing::None,
        informational: false,
        upgraded: true,
        upstream_keep_alive: false,
        client_close: true,
        head_len,
        retry_after_s: None,
    })
}

/// What one pass over a response's header fields found.
#[derive(Default)]
struct Seen {
    length: Option<u64>,
    // Every Transfer-Encoding line counts: a list split over several lines
    // is one list (RFC 9110 §5.3).
    chunked_count: usize,
    chunked_final: bool,
    has_te: bool,
    connection: ConnectionTokens,
    has_request_id: bool,
    retry_after_s: Option<u64>,
}

impl Seen {
    fn scan(headers: &[httparse::Header<'_>]) -> Result<Self, ErrorKind> {
        let mut seen = Self::default();
        for h in headers {
            let name = h.name.as_bytes();
            if name.eq_ignore_ascii_case(b"content-length") {
                seen.length =
                    Some(content_length(seen.length, h.value).ok_or(ErrorKind::UpstreamFailed)?);
            } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
                for coding in h.value.split(|&b| b == b',').map(trim) {
                    if coding.is_empty() {
                        continue;
                    }
                    seen.has_te = true;
                    seen.chunked_final = coding.eq_ignore_ascii_case(b"chunked");
                    seen.chunked_count += usize::from(seen.chunked_final);
                }
            } else if name.eq_ignore_ascii_case(b"connection") {
                seen.connection.add(h.value);
            } else if name.eq_ignore_ascii_case(b"x-request-id") {
                seen.has_request_id = true;
            } else if name.eq_ignore_ascii_case(b"retry-after") {
                seen.retry_after_s = std::str::from_utf8(trim(h.value))
                    .ok()
                    .and_then(|v| v.parse::<u64>().ok());
            }
        }
        Ok(seen)
    }

    /// How the body is delimited on the replica's side.
    fn framing(&self, bodiless: bool) -> Result<Framing, ErrorKind> {
        Ok(if bodiless {
            Framing::None
        } else if self.has_te {
            // Only a lone `chunked` can be relayed: another coding would
            // reach the client undeclared, and a non-chunked final coding
            // leaves the body's end to the close, where a response can be
            // cut short unseen.
            if !(self.chunked_final && self.chunked_count == 1) {
                return Err(ErrorKind::UpstreamFailed);
            }
            Framing::Chunked
        } else if let Some(n) = self.length {
            Framing::Length(n)
        } else {
            Framing::UntilClose
        })
    }
}

/// The head the client receives.
struct ClientHead<'a> {
    status: u16,
    reason: &'a str,
    body: Framing,
    informational: bool,
    client_close: bool,
}

impl ClientHead<'_> {
    /// Writes the status line, the replica's end-to-end fields, and the
    /// framing and connection fields of the client's side.
    fn write(
        &self,
        seen: &Seen,
        headers: &[httparse::Header<'_>],
        request: &RequestInfo,
        request_id: &RequestId,
        cors: Option<&[u8]>,
        out: &mut Vec<u8>,
    ) {
        out.clear();
        out.extend_from_slice(b"HTTP/1.1 ");
        out.extend_from_slice(itoa::Buffer::new().format(self.status).as_bytes());
        out.push(b' ');
        out.extend_from_slice(self.reason.as_bytes());
        out.extend_from_slice(b"\r\n");
        for h in headers {
            let name = h.name.as_bytes();
            if is_hop_by_hop(name)
                || seen.connection.drops(headers, name)
                || name.eq_ignore_ascii_case(b"content-length")
                || (cors.is_some()
                    && name.len() > 15
                    && name[..15].eq_ignore_ascii_case(b"access-control-"))
            {
                continue;
            }
            push_header(out, name, h.value);
        }
        if !self.informational {
            out.extend_from_slice(cors.unwrap_or_default());
            let framing_length = match self.body {
                Framing::Length(n) => Some(n),
                // A HEAD or 304 response's length describes the body it omits.
                Framing::None if self.status != 204 && !seen.has_te => seen.length,
                _ => None,
            };
            if let Some(n) = framing_length {
                out.extend_from_slice(b"Content-Length: ");
                out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
                out.extend_from_slice(b"\r\n");
            }
            if self.body == Framing::Chunked && request.minor == 1 {
                out.extend_from_slice(b"Transfer-Encoding: chunked\r\n");
            }
            if !seen.has_request_id {
                push_header(out, b"X-Request-Id", request_id.as_bytes());
            }
            if self.client_close {
                out.extend_from_slice(b"Connection: close\r\n");
            } else if request.minor == 0 {
                out.extend_from_slice(b"Connection: keep-alive\r\n");
            }
        }
        out.extend_from_slice(b"\r\n");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::h1::request::{self, Forwarding};

    /// A replica's `head` answering `request`: the client's head, or the error.
    fn answer(ask: &[u8], head: &[u8]) -> Result<(ResponseInfo, String), ErrorKind> {
        let mut id = RequestId::new();
        let mut replica_head = Vec::new();
        let info = request::parse_and_rewrite(
            ask,
            100,
            &Forwarding {
                client_ip: b"192.0.2.7",
                https: false,
                trusted: false,
                underscores: false,
                keep_claims: false,
                model_header: b"x-model",
                health_path: None,
                upgrades: &["websocket".to_owned()],
            },
            &mut id,
            &mut replica_head,
        )
        .unwrap();
        let mut out = Vec::new();
        let resp = super::parse_and_rewrite(head, &info, true, &id, None, &mut out)?.unwrap();
        Ok((resp, String::from_utf8(out).unwrap()))
    }

    const SWITCH: &[u8] = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: a\r\n\r\n";

    #[test]
    fn a_101_to_an_upgrade_switches_the_client_too() {
        let request =
            b"GET /ws HTTP/1.1\r\nHost: h\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n";
        let (resp, head) = answer(request, SWITCH).unwrap();
        assert!(resp.upgraded && !resp.informational && !resp.upstream_keep_alive);
        assert_eq!(resp.head_len, SWITCH.len());
        assert!(
            head.starts_with("HTTP/1.1 101 Switching Protocols\r\n"),
            "{head}"
        );
        assert!(head.contains("Sec-WebSocket-Accept: a\r\n"), "{head}");
        assert!(
            head.contains("Connection: upgrade\r\nUpgrade: websocket\r\n"),
            "{head}"
        );
        // A 101 without `Upgrade` switches to nothing: the replica failed.
        let bare = b"HTTP/1.1 101 Switching Protocols\r\n\r\n";
        assert_eq!(
            answer(request, bare).unwrap_err(),
            ErrorKind::UpstreamFailed
        );
    }

    #[test]
    fn a_101_to_anything_else_is_the_replicas_failure() {
        let request = b"GET /ws HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\n\r\n";
        assert_eq!(
            answer(request, SWITCH).unwrap_err(),
            ErrorKind::UpstreamFailed
        );
    }
}
