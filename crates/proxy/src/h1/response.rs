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
/// into `out`. `Ok(None)` means the head is not complete yet.
pub(crate) fn parse_and_rewrite(
    buf: &[u8],
    request: &RequestInfo,
    keep_client: bool,
    request_id: &RequestId,
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
    // Upgrades are not proxied: the request's Upgrade header was dropped, so
    // a 101 is a replica error.
    if status == 101 || !(100..=599).contains(&status) {
        return Err(ErrorKind::UpstreamFailed);
    }
    let informational = status < 200;

    let mut length: Option<u64> = None;
    // Every Transfer-Encoding line counts: a list split over several lines
    // is one list (RFC 9110 §5.3).
    let mut chunked_count = 0;
    let mut chunked_final = false;
    let mut has_te = false;
    let mut connection = ConnectionTokens::default();
    let mut has_request_id = false;
    let mut retry_after_s = None;
    for h in resp.headers.iter() {
        let name = h.name.as_bytes();
        if name.eq_ignore_ascii_case(b"content-length") {
            length = Some(content_length(length, h.value).ok_or(ErrorKind::UpstreamFailed)?);
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            for coding in h.value.split(|&b| b == b',').map(trim) {
                if coding.is_empty() {
                    continue;
                }
                has_te = true;
                chunked_final = coding.eq_ignore_ascii_case(b"chunked");
                chunked_count += usize::from(chunked_final);
            }
        } else if name.eq_ignore_ascii_case(b"connection") {
            connection.add(h.value);
        } else if name.eq_ignore_ascii_case(b"x-request-id") {
            has_request_id = true;
        } else if name.eq_ignore_ascii_case(b"retry-after") {
            retry_after_s = std::str::from_utf8(trim(h.value))
                .ok()
                .and_then(|v| v.parse::<u64>().ok());
        }
    }
    let bodiless =
        request.method == Method::Head || informational || status == 204 || status == 304;
    let body = if bodiless {
        Framing::None
    } else if has_te {
        // Only a lone `chunked` can be relayed: another coding would reach
        // the client undeclared, and a non-chunked final coding leaves the
        // body's end to the close, where a response can be cut short unseen.
        if !(chunked_final && chunked_count == 1) {
            return Err(ErrorKind::UpstreamFailed);
        }
        Framing::Chunked
    } else if let Some(n) = length {
        Framing::Length(n)
    } else {
        Framing::UntilClose
    };
    let upstream_keep_alive = minor == 1
        && !connection.close
        && body != Framing::UntilClose
        && !(has_te && length.is_some());
    let client_close = !keep_client
        || body == Framing::UntilClose
        || (body == Framing::Chunked && request.minor == 0);

    out.clear();
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(itoa::Buffer::new().format(status).as_bytes());
    out.push(b' ');
    out.extend_from_slice(resp.reason.unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
    for h in resp.headers.iter() {
        let name = h.name.as_bytes();
        if is_hop_by_hop(name)
            || connection.drops(&*resp.headers, name)
            || name.eq_ignore_ascii_case(b"content-length")
        {
            continue;
        }
        push_header(out, name, h.value);
    }
    if !informational {
        let framing_length = match body {
            Framing::Length(n) => Some(n),
            // A HEAD or 304 response's length describes the body it omits.
            Framing::None if status != 204 && !has_te => length,
            _ => None,
        };
        if let Some(n) = framing_length {
            out.extend_from_slice(b"Content-Length: ");
            out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        if body == Framing::Chunked && request.minor == 1 {
            out.extend_from_slice(b"Transfer-Encoding: chunked\r\n");
        }
        if !has_request_id {
            push_header(out, b"X-Request-Id", request_id.as_bytes());
        }
        if client_close {
            out.extend_from_slice(b"Connection: close\r\n");
        } else if request.minor == 0 {
            out.extend_from_slice(b"Connection: keep-alive\r\n");
        }
    }
    out.extend_from_slice(b"\r\n");
    Ok(Some(ResponseInfo {
        status,
        body,
        informational,
        upstream_keep_alive,
        client_close,
        head_len,
        retry_after_s,
    }))
}
