//! Request heads: finding their end, parsing them, checking their framing,
//! and writing the rewritten head that goes to the replica.

use std::mem::MaybeUninit;

use crate::error::ErrorKind;
use crate::h1::body::Framing;
use crate::h1::{
    content_length, is_hop_by_hop, push_header, trim, upgrade_allowed, ConnectionTokens, RequestId,
};

/// Finds where a request head ends while bytes arrive, refusing bytes that
/// other parsers would read differently: NUL, a CR not followed by LF, and an
/// LF not preceded by CR (httparse accepts bare LF; a backend might not).
#[derive(Debug, Default)]
pub(crate) struct HeadScanner {
    scanned: usize,
}

impl HeadScanner {
    /// Forgets progress, for the next head.
    pub(crate) fn reset(&mut self) {
        self.scanned = 0;
    }

    /// Scans new bytes of `head`; returns the head length once the blank
    /// line has been seen.
    pub(crate) fn scan(&mut self, head: &[u8]) -> Result<Option<usize>, ErrorKind> {
        let mut i = self.scanned;
        while i < head.len() {
            match head[i] {
                0 => return Err(ErrorKind::BadRequest),
                b'\r' => {
                    let Some(&next) = head.get(i + 1) else { break };
                    if next != b'\n' {
                        return Err(ErrorKind::BadRequest);
                    }
                    // A CRLF right after another one is the blank line.
                    if i >= 2 && &head[i - 2..i] == b"\r\n" {
                        return Ok(Some(i + 2));
                    }
                    i += 2;
                }
                b'\n' => return Err(ErrorKind::BadRequest),
                _ => i += 1,
            }
        }
        self.scanned = i;
        Ok(None)
    }
}

/// Request methods the proxy forwards.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Method {
    Get,
    Head,
    Post,
    Put,
    Delete,
    Options,
    Patch,
}

impl Method {
    fn parse(method: &str) -> Result<Self, ErrorKind> {
        Ok(match method {
            "GET" => Self::Get,
            "HEAD" => Self::Head,
            "POST" => Self::Post,
            "PUT" => Self::Put,
            "DELETE" => Self::Delete,
            "OPTIONS" => Self::Options,
            "PATCH" => Self::Patch,
            // A reverse proxy does not tunnel, and TRACE would reflect
            // headers (cookies, tokens) back to a script.
            "CONNECT" | "TRACE" => return Err(ErrorKind::MethodNotAllowed),
            _ => return Err(ErrorKind::NotImplemented),
        })
    }

    /// Safe to send twice: a request that failed before any response byte
    /// may be replayed on a new connection.
    pub(crate) fn is_idempotent(self) -> bool {
        matches!(
            self,
            Self::Get | Self::Head | Self::Put | Self::Delete | Self::Options
        )
    }
}

/// What the rest of the request path needs from a parsed head; plain data,
/// so it outlives the buffer the head was parsed from.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RequestInfo {
    pub(crate) method: Method,
    /// 0 for HTTP/1.0, 1 for HTTP/1.1.
    pub(crate) minor: u8,
    /// How the body is delimited: `None`, `Length` or `Chunked`.
    pub(crate) body: Framing,
    /// The client wants the connection kept open after the response.
    pub(crate) keep_alive: bool,
    pub(crate) expect_continue: bool,
    /// An HTTP/1.0 request without `Host`: the caller adds the replica's.
    pub(crate) needs_host: bool,
    /// The request is well framed but refused (405 for CONNECT and TRACE):
    /// answer it, keeping the connection only when `keep_alive` allows.
    pub(crate) refused: Option<ErrorKind>,
    /// Where the model header's value is in the head (offset, length).
    pub(crate) model: Option<Span>,
    /// `model` is the target's `model` query parameter, percent-encoded (an
    /// upgrade without the model header: the Realtime API's `?model=`).
    pub(crate) model_in_query: bool,
    /// A protocol switch `upgrades` allows (a WebSocket handshake): the
    /// replica got `Connection: upgrade` and the client's `Upgrade`, and its
    /// 101 turns the connection into a tunnel.
    pub(crate) upgrade: bool,
    /// The body is JSON (`Content-Type: application/json`).
    pub(crate) json: bool,
    /// The body is `multipart/form-data`: its boundary, in the head.
    pub(crate) form: Option<Span>,
    /// The proxy answers this request itself.
    pub(crate) local: Option<Local>,
    /// Its CORS fields, for `[cors]`.
    pub(crate) cors: CorsAsk,
}

/// Where a request's CORS fields are in its head.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct CorsAsk {
    /// `Origin`.
    pub(crate) origin: Option<Span>,
    /// `Access-Control-Request-Method` (a preflight's).
    pub(crate) request_method: Option<Span>,
    /// `Access-Control-Request-Headers`.
    pub(crate) request_headers: Option<Span>,
}

/// A range of the head: `head[start..start + len]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Span {
    pub(crate) start: u32,
    pub(crate) len: u32,
}

impl Span {
    fn of(head: &[u8], part: &[u8]) -> Self {
        Self {
            start: (part.as_ptr() as usize - head.as_ptr() as usize) as u32,
            len: part.len() as u32,
        }
    }

    /// The bytes it covers in `head`.
    pub(crate) fn in_head(self, head: &[u8]) -> &[u8] {
        &head[self.start as usize..(self.start + self.len) as usize]
    }
}

/// Requests the proxy answers itself: OpenAI's model listing from its
/// pools, and its own health.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Local {
    /// `[health] serve_path`.
    Health,
    /// `GET /v1/models`.
    ListModels,
    /// `GET /v1/models/{model}`: the model's span in the head.
    GetModel(Span),
}

/// Which OpenAI model route, if any, a bodiless GET targets.
fn local_route(head: &[u8], path: &str, health_path: Option<&str>) -> Option<Local> {
    let path = path.split('?').next().unwrap_or(path);
    if health_path == Some(path) {
        return Some(Local::Health);
    }
    let rest = path.strip_prefix("/v1/models")?;
    if rest.is_empty() || rest == "/" {
        return Some(Local::ListModels);
    }
    let model = rest.strip_prefix('/')?;
    Some(Local::GetModel(Span::of(head, model.as_bytes())))
}

/// OpenAI's API paths whose request body is JSON (audio uploads are
/// multipart and are not among them).
const JSON_API_PATHS: [&str; 5] = [
    "/v1/chat/completions",
    "/v1/completions",
    "/v1/embeddings",
    "/v1/responses",
    "/v1/moderations",
];

/// Whether `path` (query and all) is one of [`JSON_API_PATHS`].
fn is_json_api(path: &str) -> bool {
    let path = path.split('?').next().unwrap_or(path);
    JSON_API_PATHS.contains(&path.trim_end_matches('/'))
}

/// Whether a `Content-Type` value is JSON (`application/json`, any params).
fn is_json(value: &[u8]) -> bool {
    let media = value.split(|&b| b == b';').next().unwrap_or(b"");
    trim(media).eq_ignore_ascii_case(b"application/json")
}

/// The boundary of a `multipart/form-data` content type (quoted or not),
/// when it is one: 1 to 70 characters (RFC 2046 §5.1.1).
fn form_boundary(value: &[u8]) -> Option<&[u8]> {
    let mut params = value.split(|&b| b == b';');
    let media = trim(params.next()?);
    if !media.eq_ignore_ascii_case(b"multipart/form-data") {
        return None;
    }
    params.find_map(|param| {
        let param = trim(param);
        let eq = param.iter().position(|&b| b == b'=')?;
        if !trim(&param[..eq]).eq_ignore_ascii_case(b"boundary") {
            return None;
        }
        let value = trim(&param[eq + 1..]);
        let value = value
            .strip_prefix(b"\"")
            .and_then(|v| v.strip_suffix(b"\""))
            .unwrap_or(value);
        (1..=70).contains(&value.len()).then_some(value)
    })
}

/// Transfer codings a client may legitimately apply before `chunked`; a
/// request using one is well framed but cannot be forwarded as is (501).
const KNOWN_CODINGS: [&[u8]; 6] = [
    b"gzip",
    b"x-gzip",
    b"deflate",
    b"compress",
    b"x-compress",
    b"br",
];

/// Checks a request's `Transfer-Encoding` list: only a single `chunked` is
/// forwarded; a known coding before a final `chunked` is well framed but not
/// supported (501); anything else cannot be framed safely (400).
fn transfer_encoding(values: &[&[u8]]) -> Result<(), ErrorKind> {
    let mut codings = values
        .iter()
        .flat_map(|v| v.split(|&b| b == b','))
        .map(trim);
    let mut count = 0;
    let mut last_chunked = false;
    let mut all_known = true;
    for coding in &mut codings {
        count += 1;
        let chunked = coding.eq_ignore_ascii_case(b"chunked");
        if !chunked && !KNOWN_CODINGS.iter().any(|k| coding.eq_ignore_ascii_case(k)) {
            all_known = false;
        }
        if last_chunked {
            // `chunked` must be the final coding, applied once.
            return Err(ErrorKind::BadRequest);
        }
        last_chunked = chunked;
    }
    match (count, last_chunked, all_known) {
        (1, true, _) => Ok(()),
        (_, true, true) => Err(ErrorKind::NotImplemented),
        _ => Err(ErrorKind::BadRequest),
    }
}

/// The status for a request line httparse refused on its version: 505 for a
/// well-formed `HTTP/x.y` that is not 1.x, 400 for anything else.
fn version_error(head: &[u8]) -> ErrorKind {
    let line_end = head.iter().position(|&b| b == b'\r').unwrap_or(head.len());
    let line = &head[..line_end];
    let version = line.rsplit(|&b| b == b' ').next().unwrap_or(b"");
    let well_formed = version.len() == 8
        && version.starts_with(b"HTTP/")
        && version[5].is_ascii_digit()
        && version[6] == b'.'
        && version[7].is_ascii_digit();
    let bare_major =
        version.len() == 6 && version.starts_with(b"HTTP/") && version[5].is_ascii_digit();
    if (well_formed || bare_major) && version[5] != b'1' {
        ErrorKind::VersionNotSupported
    } else {
        ErrorKind::BadRequest
    }
}

/// Who sent the request, and what the rewritten head may keep from it.
#[derive(Debug)]
pub(crate) struct Forwarding<'a> {
    /// The client's IP, text, for `X-Forwarded-For` and `X-Real-IP`.
    pub(crate) client_ip: &'a [u8],
    /// The client came over TLS (`X-Forwarded-Proto: https`).
    pub(crate) https: bool,
    /// The client is a trusted proxy (`trusted_proxies`): its forwarding
    /// headers are kept and appended to. From anyone else they are replaced.
    pub(crate) trusted: bool,
    /// Forward header names containing `_` (`underscores_in_headers`).
    pub(crate) underscores: bool,
    /// Keep an untrusted client's [`CLIENT_CLAIMS`]
    /// (`keep_untrusted_forwarded_headers`).
    pub(crate) keep_claims: bool,
    /// The header naming the model, lowercase.
    pub(crate) model_header: &'a [u8],
    /// `[health] serve_path`, answered by the proxy.
    pub(crate) health_path: Option<&'a str>,
    /// Protocols a client may switch to (`upgrades`), lowercase.
    pub(crate) upgrades: &'a [String],
}

/// Forwarding headers that only a proxy in front can vouch for and that
/// inferlb does not write: from an untrusted client they are dropped.
const CLIENT_CLAIMS: [&[u8]; 4] = [
    b"x-forwarded-host",
    b"x-forwarded-port",
    b"x-forwarded-prefix",
    b"x-forwarded-server",
];

/// Forwarding headers the proxy writes itself, from the client's address
/// and (for a trusted client) the client's own values.
const FORWARDING: [&[u8]; 4] = [
    b"x-forwarded-for",
    b"x-forwarded-proto",
    b"x-real-ip",
    b"forwarded",
];

/// Splits an absolute-form target (`http://host:port/path?q`) into its
/// authority and origin-form path (RFC 9112 §3.2.2); `None` when `target`
/// is not in absolute form.
fn absolute_form(target: &str) -> Option<Result<(&str, &str), ErrorKind>> {
    let rest = ["http://", "https://"].iter().find_map(|scheme| {
        target
            .get(..scheme.len())
            .filter(|s| s.eq_ignore_ascii_case(scheme))
            .map(|_| &target[scheme.len()..])
    })?;
    let end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, path) = rest.split_at(end);
    if authority.is_empty() || authority.contains('@') {
        // No host, or user info (deprecated, and a phishing tool).
        return Some(Err(ErrorKind::BadRequest));
    }
    Some(Ok((authority, path)))
}

/// Parses a complete head (`head` ends with the blank line), checks it, and
/// writes the head for the replica into `out`. The request id (the client's,
/// when it sent a usable one) lands in `request_id`.
pub(crate) fn parse_and_rewrite(
    head: &[u8],
    max_headers: usize,
    forwarding: &Forwarding<'_>,
    request_id: &mut RequestId,
    out: &mut Vec<u8>,
) -> Result<RequestInfo, ErrorKind> {
    // Left uninitialised: httparse writes only the fields it finds, and
    // zeroing 256 fields (8 KiB) per request cost more than the parse.
    let mut storage = [const { MaybeUninit::<httparse::Header<'_>>::uninit() };
        inferlb_core::config::MAX_HEADERS_CAP];
    let headers = &mut storage[..max_headers.min(inferlb_core::config::MAX_HEADERS_CAP)];
    let mut req = httparse::Request::new(&mut []);
    match req.parse_with_uninit_headers(head, headers) {
        Ok(httparse::Status::Complete(_)) => {}
        Ok(httparse::Status::Partial) => return Err(ErrorKind::BadRequest),
        Err(httparse::Error::TooManyHeaders) => return Err(ErrorKind::HeadTooLarge),
        Err(httparse::Error::Version) => return Err(version_error(head)),
        Err(_) => return Err(ErrorKind::BadRequest),
    }
    let (Some(method), Some(target), Some(minor)) = (req.method, req.path, req.version) else {
        return Err(ErrorKind::BadRequest);
    };

    // An unsupported method is answered once the framing is known: 405
    // keeps a bodiless connection, anything else closes it.
    let method_name = method;
    let method = Method::parse(method);
    if let Err(kind) = method {
        if kind != ErrorKind::MethodNotAllowed {
            return Err(kind);
        }
    }
    let (authority, path) = split_target(target, method_name, method.is_err())?;
    let headers = &*req.headers;
    let seen = Seen::scan(head, headers, forwarding, request_id)?;
    if minor == 1 && seen.hosts != 1 || seen.hosts > 1 {
        return Err(ErrorKind::BadRequest);
    }
    let body = seen.framing(minor)?;
    let keep_alive = if minor == 1 {
        !seen.connection.close
    } else {
        seen.connection.keep_alive && !seen.connection.close
    };
    let method = match method {
        Ok(method) => method,
        // Sound framing and no body: answer, keeping the connection if the
        // client wants it kept.
        Err(kind) if body == Framing::None => {
            return Ok(RequestInfo {
                method: Method::Get,
                minor,
                body,
                keep_alive,
                expect_continue: false,
                needs_host: false,
                refused: Some(kind),
                model: None,
                model_in_query: false,
                upgrade: false,
                json: false,
                form: None,
                local: None,
                cors: seen.cors,
            });
        }
        Err(_) => return Err(ErrorKind::BadRequest),
    };
    // A JSON API with a body of another type: say what it takes, rather
    // than read it for a model it cannot name.
    if method == Method::Post
        && body != Framing::None
        && seen.typed
        && !seen.json
        && is_json_api(path)
    {
        return Err(ErrorKind::UnsupportedMediaType);
    }
    if request_id.is_empty() {
        request_id.generate();
    }
    // A protocol switch: a bodiless HTTP/1.1 GET asking for one with both
    // `Connection: upgrade` and an allowed `Upgrade` (RFC 9110 §7.8).
    // Anything else has its `Upgrade` dropped as hop-by-hop.
    let upgrade = seen.upgrade.filter(|value| {
        method == Method::Get
            && minor == 1
            && body == Framing::None
            && seen.connection.upgrade
            && upgrade_allowed(forwarding.upgrades, value)
    });
    let (mut model, mut model_in_query) = (seen.model, false);
    if upgrade.is_some() && model.is_none() {
        model = query_param(path, "model").map(|value| Span::of(head, value.as_bytes()));
        model_in_query = model.is_some();
    }
    let replica = ReplicaHead {
        method: method_name,
        path,
        authority,
        headers,
        connection: &seen.connection,
        forwarding,
        body,
        upgrade,
    };
    replica.write(request_id, out);

    Ok(RequestInfo {
        method,
        minor,
        body,
        keep_alive,
        expect_continue: seen.expect_continue,
        needs_host: seen.hosts == 0 && authority.is_none(),
        refused: None,
        model,
        model_in_query,
        upgrade: upgrade.is_some(),
        json: seen.json,
        form: seen.form,
        cors: seen.cors,
        local: if method == Method::Get && body == Framing::None {
            local_route(head, path, forwarding.health_path)
        } else {
            None
        },
    })
}

/// The first non-empty value of the query parameter `name` in `path`, as
/// sent (percent-encoded).
fn query_param<'p>(path: &'p str, name: &str) -> Option<&'p str> {
    let (_, query) = path.split_once('?')?;
    query.split('&').find_map(|pair| {
        let (key, value) = pair.split_once('=')?;
        (key == name && !value.is_empty()).then_some(value)
    })
}

/// Splits a request target into the authority to send as `Host` (absolute
/// form only) and the path. Origin form (`/path`), `*` for OPTIONS, or
/// absolute form, which goes on in origin form with `Host` taken from its
/// authority. (A refused CONNECT's authority form is judged by its method.)
fn split_target<'t>(
    target: &'t str,
    method: &str,
    refused: bool,
) -> Result<(Option<&'t str>, &'t str), ErrorKind> {
    match absolute_form(target) {
        Some(split) => {
            let (authority, path) = split?;
            Ok((Some(authority), path))
        }
        None if target.starts_with('/') || (target == "*" && method == "OPTIONS") => {
            Ok((None, target))
        }
        None if refused => Ok((None, target)),
        None => Err(ErrorKind::BadRequest),
    }
}

/// What one pass over the client's headers found.
#[derive(Default)]
struct Seen<'h> {
    length: Option<u64>,
    te: [&'h [u8]; 4],
    te_count: usize,
    hosts: usize,
    connection: ConnectionTokens,
    expect_continue: bool,
    model: Option<Span>,
    json: bool,
    /// A `Content-Type` was sent (JSON or not).
    typed: bool,
    form: Option<Span>,
    cors: CorsAsk,
    /// `Upgrade`'s value (the first such line).
    upgrade: Option<&'h [u8]>,
}

impl<'h> Seen<'h> {
    /// Reads the headers the proxy acts on; the client's `X-Request-Id`, if
    /// usable, lands in `request_id`.
    fn scan(
        head: &[u8],
        headers: &[httparse::Header<'h>],
        forwarding: &Forwarding<'_>,
        request_id: &mut RequestId,
    ) -> Result<Self, ErrorKind> {
        let mut seen = Seen::default();
        request_id.clear();
        for h in headers {
            let name = h.name.as_bytes();
            if name.eq_ignore_ascii_case(forwarding.model_header) {
                let value = trim(h.value);
                if !value.is_empty() && seen.model.is_none() {
                    seen.model = Some(Span::of(head, value));
                }
            } else if name.eq_ignore_ascii_case(b"content-type") {
                seen.json = is_json(h.value);
                seen.form = form_boundary(h.value).map(|b| Span::of(head, b));
                seen.typed = true;
            } else if name.eq_ignore_ascii_case(b"content-length") {
                seen.length =
                    Some(content_length(seen.length, h.value).ok_or(ErrorKind::BadRequest)?);
            } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
                if seen.te_count == seen.te.len() {
                    return Err(ErrorKind::BadRequest);
                }
                seen.te[seen.te_count] = h.value;
                seen.te_count += 1;
            } else if name.eq_ignore_ascii_case(b"host") {
                seen.hosts += 1;
            } else if name.eq_ignore_ascii_case(b"connection") {
                seen.connection.add(h.value);
            } else if name.eq_ignore_ascii_case(b"upgrade") {
                seen.upgrade.get_or_insert(trim(h.value));
            } else if name.eq_ignore_ascii_case(b"expect") {
                if trim(h.value).eq_ignore_ascii_case(b"100-continue") {
                    seen.expect_continue = true;
                } else {
                    return Err(ErrorKind::ExpectationFailed);
                }
            } else if name.eq_ignore_ascii_case(b"x-request-id") {
                request_id.set_from_client(trim(h.value));
            } else if name.eq_ignore_ascii_case(b"origin") {
                seen.cors.origin = Some(Span::of(head, trim(h.value)));
            } else if name.eq_ignore_ascii_case(b"access-control-request-method") {
                seen.cors.request_method = Some(Span::of(head, trim(h.value)));
            } else if name.eq_ignore_ascii_case(b"access-control-request-headers") {
                seen.cors.request_headers = Some(Span::of(head, trim(h.value)));
            }
        }
        Ok(seen)
    }

    /// How the request body is framed, refusing the ambiguous combinations.
    fn framing(&self, minor: u8) -> Result<Framing, ErrorKind> {
        Ok(match (self.te_count, self.length) {
            (0, None) => Framing::None,
            (0, Some(0)) => Framing::None,
            (0, Some(n)) => Framing::Length(n),
            // Both framings at once is the classic smuggling setup; so is
            // chunked in HTTP/1.0, which predates it.
            (_, Some(_)) => return Err(ErrorKind::BadRequest),
            (_, None) if minor == 0 => return Err(ErrorKind::BadRequest),
            (n, None) => {
                transfer_encoding(&self.te[..n])?;
                Framing::Chunked
            }
        })
    }
}

/// The head the replica gets: origin form, HTTP/1.1, hop-by-hop and
/// proxy-owned headers replaced by the proxy's own.
struct ReplicaHead<'a, 'h> {
    method: &'a str,
    path: &'a str,
    authority: Option<&'a str>,
    headers: &'a [httparse::Header<'h>],
    connection: &'a ConnectionTokens,
    forwarding: &'a Forwarding<'a>,
    body: Framing,
    /// The `Upgrade` value to pass on, for an allowed protocol switch.
    upgrade: Option<&'a [u8]>,
}

impl ReplicaHead<'_, '_> {
    fn write(&self, request_id: &RequestId, out: &mut Vec<u8>) {
        out.clear();
        out.extend_from_slice(self.method.as_bytes());
        out.push(b' ');
        if !self.path.starts_with(['/', '*']) {
            // `http://host` or `http://host?q`: the origin form's path is `/`.
            out.push(b'/');
        }
        out.extend_from_slice(self.path.as_bytes());
        out.extend_from_slice(b" HTTP/1.1\r\n");
        if let Some(authority) = self.authority {
            push_header(out, b"Host", authority.as_bytes());
        }
        for h in self.headers {
            let name = h.name.as_bytes();
            if is_hop_by_hop(name)
                || self.connection.drops(self.headers, name)
                || name.eq_ignore_ascii_case(b"content-length")
                || name.eq_ignore_ascii_case(b"expect")
                || name.eq_ignore_ascii_case(b"x-request-id")
                || FORWARDING.iter().any(|f| name.eq_ignore_ascii_case(f))
                || (!self.forwarding.trusted
                    && !self.forwarding.keep_claims
                    && CLIENT_CLAIMS.iter().any(|f| name.eq_ignore_ascii_case(f)))
                || (self.authority.is_some() && name.eq_ignore_ascii_case(b"host"))
                || (!self.forwarding.underscores && name.contains(&b'_'))
            {
                continue;
            }
            push_header(out, name, h.value);
        }
        match self.body {
            Framing::Length(n) => {
                out.extend_from_slice(b"Content-Length: ");
                out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
                out.extend_from_slice(b"\r\n");
            }
            Framing::Chunked => out.extend_from_slice(b"Transfer-Encoding: chunked\r\n"),
            Framing::None | Framing::UntilClose => {}
        }
        if let Some(protocols) = self.upgrade {
            out.extend_from_slice(b"Connection: upgrade\r\n");
            push_header(out, b"Upgrade", protocols);
        }
        write_forwarding(out, self.headers, self.forwarding);
        out.extend_from_slice(b"X-Request-Id: ");
        out.extend_from_slice(request_id.as_bytes());
        out.extend_from_slice(b"\r\n\r\n");
    }
}

/// Writes `X-Forwarded-For`, `X-Forwarded-Proto`, `X-Real-IP` and
/// `Forwarded`. From an untrusted client they say only what the proxy saw;
/// a trusted proxy's values are kept, with this hop appended to the lists.
fn write_forwarding(
    out: &mut Vec<u8>,
    headers: &[httparse::Header<'_>],
    forwarding: &Forwarding<'_>,
) {
    let ip = forwarding.client_ip;
    let theirs = |name: &'static str| {
        headers
            .iter()
            .filter(move |h| forwarding.trusted && h.name.eq_ignore_ascii_case(name))
            .map(|h| trim(h.value))
            .filter(|v| !v.is_empty())
    };
    out.extend_from_slice(b"X-Forwarded-For: ");
    for value in theirs("x-forwarded-for") {
        out.extend_from_slice(value);
        out.extend_from_slice(b", ");
    }
    out.extend_from_slice(ip);
    out.extend_from_slice(b"\r\nX-Forwarded-Proto: ");
    let proto: &[u8] = if forwarding.https { b"https" } else { b"http" };
    out.extend_from_slice(theirs("x-forwarded-proto").next().unwrap_or(proto));
    out.extend_from_slice(b"\r\nX-Real-IP: ");
    out.extend_from_slice(theirs("x-real-ip").next().unwrap_or(ip));
    out.extend_from_slice(b"\r\nForwarded: ");
    for value in theirs("forwarded") {
        out.extend_from_slice(value);
        out.extend_from_slice(b", ");
    }
    // RFC 7239 §6: an IPv6 node is quoted and bracketed.
    let v6 = ip.contains(&b':');
    out.extend_from_slice(if v6 { b"for=\"[" } else { b"for=" });
    out.extend_from_slice(ip);
    out.extend_from_slice(if v6 { b"]\";proto=" } else { b";proto=" });
    out.extend_from_slice(proto);
    out.extend_from_slice(b"\r\n");
}

#[cfg(test)]
mod tests;
