//! HTTP/1.1 codec pieces: request and response heads, the body framer and
//! its chunked decoder, and the header rules both directions share.

pub(crate) mod body;
pub(crate) mod chunked;
pub(crate) mod request;
pub(crate) mod response;

/// Headers that describe one hop, never forwarded as they are (RFC 9110
/// §7.6.1). `Transfer-Encoding` is among them because the proxy writes its
/// own framing line; `Proxy-Authorization` is meant for a proxy, not a replica.
const HOP_BY_HOP: [&[u8]; 9] = [
    b"connection",
    b"keep-alive",
    b"proxy-connection",
    b"te",
    b"trailer",
    b"upgrade",
    b"transfer-encoding",
    b"proxy-authenticate",
    b"proxy-authorization",
];

pub(crate) fn is_hop_by_hop(name: &[u8]) -> bool {
    HOP_BY_HOP.iter().any(|h| name.eq_ignore_ascii_case(h))
}

pub(crate) fn push_header(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// The tokens of `Connection` headers: `close`, `keep-alive`, and whether
/// any other token names a header to drop. Every token counts, however many
/// there are: the names are looked up in the header values again when a
/// header is written, so nothing is stored and nothing is capped.
#[derive(Debug, Default)]
pub(crate) struct ConnectionTokens {
    pub(crate) close: bool,
    pub(crate) keep_alive: bool,
    /// `upgrade`: the sender asks to switch protocols (with `Upgrade`).
    pub(crate) upgrade: bool,
    names: bool,
}

/// Headers a `Connection` token cannot remove: the proxy needs `Host` to
/// reach the replica's virtual host, and writes the framing headers itself.
const NOT_DROPPABLE: [&[u8]; 3] = [b"host", b"content-length", b"transfer-encoding"];

impl ConnectionTokens {
    pub(crate) fn add(&mut self, value: &[u8]) {
        for token in value.split(|&b| b == b',').map(trim) {
            if token.is_empty() {
                continue;
            }
            if token.eq_ignore_ascii_case(b"close") {
                self.close = true;
            } else if token.eq_ignore_ascii_case(b"keep-alive") {
                self.keep_alive = true;
            } else if token.eq_ignore_ascii_case(b"upgrade") {
                self.upgrade = true;
                self.names = true;
            } else {
                self.names = true;
            }
        }
    }

    /// Whether a `Connection` header among `headers` names `name`, so that
    /// it is dropped as hop-by-hop (never `Host` or the framing headers).
    pub(crate) fn drops(&self, headers: &[httparse::Header<'_>], name: &[u8]) -> bool {
        if !self.names || NOT_DROPPABLE.iter().any(|n| name.eq_ignore_ascii_case(n)) {
            return false;
        }
        headers
            .iter()
            .filter(|h| h.name.eq_ignore_ascii_case("connection"))
            .flat_map(|h| h.value.split(|&b| b == b','))
            .any(|token| trim(token).eq_ignore_ascii_case(name))
    }
}

/// Parses `Content-Length` values on top of those seen before (`current`):
/// every line, and every comma-separated element of one (`5, 5`, RFC 9110
/// §8.6), must be the same run of digits. `None` when they are not. One rule
/// for requests and responses.
pub(crate) fn content_length(current: Option<u64>, value: &[u8]) -> Option<u64> {
    let mut result = current;
    for part in value.split(|&b| b == b',') {
        let part = trim(part);
        if part.is_empty() || part.len() > 19 || !part.iter().all(u8::is_ascii_digit) {
            return None;
        }
        let n = part.iter().fold(0u64, |n, &d| n * 10 + u64::from(d - b'0'));
        match result {
            Some(prev) if prev != n => return None,
            _ => result = Some(n),
        }
    }
    result
}

/// Whether every protocol an `Upgrade` value lists (`websocket`,
/// `websocket/13`) is among `allowed` (lowercase names): the replica may
/// pick any of them, so one it may not is enough to refuse the switch.
pub(crate) fn upgrade_allowed(allowed: &[String], value: &[u8]) -> bool {
    let mut any = false;
    for protocol in value.split(|&b| b == b',').map(trim) {
        if protocol.is_empty() {
            continue;
        }
        let name = protocol.split(|&b| b == b'/').next().unwrap_or(protocol);
        if !allowed
            .iter()
            .any(|a| a.as_bytes().eq_ignore_ascii_case(name))
        {
            return false;
        }
        any = true;
    }
    any
}

pub(crate) fn trim(v: &[u8]) -> &[u8] {
    let start = v
        .iter()
        .position(|b| !matches!(b, b' ' | b'\t'))
        .unwrap_or(v.len());
    let end = v
        .iter()
        .rposition(|b| !matches!(b, b' ' | b'\t'))
        .map_or(start, |e| e + 1);
    &v[start..end]
}

/// Longest client-supplied request id kept; longer ones are replaced.
const MAX_REQUEST_ID: usize = 128;

/// A request id: the client's `X-Request-Id` when it is short and printable,
/// otherwise one generated from the worker's random prefix and a counter.
/// Held inline so that neither case allocates.
#[derive(Debug)]
pub(crate) struct RequestId {
    bytes: [u8; MAX_REQUEST_ID],
    len: usize,
    prefix: u64,
    counter: u64,
}

impl RequestId {
    /// A generator with a random prefix, so ids from different workers and
    /// restarts do not collide.
    pub(crate) fn new() -> Self {
        Self {
            bytes: [0; MAX_REQUEST_ID],
            len: 0,
            prefix: fastrand::u64(..),
            counter: 0,
        }
    }

    pub(crate) fn clear(&mut self) {
        self.len = 0;
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub(crate) fn as_bytes(&self) -> &[u8] {
        &self.bytes[..self.len]
    }

    /// Keeps the client's id when it is 1 to 128 visible ASCII characters.
    pub(crate) fn set_from_client(&mut self, value: &[u8]) {
        if !value.is_empty()
            && value.len() <= MAX_REQUEST_ID
            && value.iter().all(|b| b.is_ascii_graphic())
        {
            self.bytes[..value.len()].copy_from_slice(value);
            self.len = value.len();
        }
    }

    /// 32 lowercase hex digits: the worker's prefix, then a counter.
    pub(crate) fn generate(&mut self) {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        self.counter = self.counter.wrapping_add(1);
        for (half, value) in [self.prefix, self.counter].into_iter().enumerate() {
            for i in 0..16 {
                let nibble = (value >> (60 - 4 * i)) & 0xf;
                self.bytes[half * 16 + i] = HEX[nibble as usize];
            }
        }
        self.len = 32;
    }
}
