//! `[cors]`: browser pages on other origins calling the API directly.
//!
//! A request with an allowed `Origin` gets `Access-Control-Allow-Origin`
//! (and the exposed headers) on whatever answers it, the replica or the
//! proxy; the replica's own `Access-Control-*` fields are dropped, so the
//! page sees one policy. A preflight (`OPTIONS` with `Origin` and
//! `Access-Control-Request-Method`) is answered by the proxy: 204 with the
//! allowed methods, headers and max age, or 403 when the origin, method or
//! a header is not allowed. A request from an origin not allowed is
//! forwarded without CORS fields: the browser keeps its answer from the
//! page, as the Fetch standard has it.

use inferlb_core::config::Cors;

use crate::h1::body::Framing;
use crate::h1::request::{CorsAsk, Method, RequestInfo};

/// What `[cors]` makes of one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Forward it (with `out`'s fields on the answer, when any).
    Pass,
    /// An allowed preflight: answer 204 with `out`'s fields.
    Preflight,
    /// A preflight for an origin, method or header not allowed: 403.
    Refused,
}

/// Judges a request by its CORS fields (`ask`, spans of `head`), writing
/// the header lines its answer carries into `out`.
pub(crate) fn judge(cors: &Cors, info: &RequestInfo, head: &[u8], out: &mut Vec<u8>) -> Verdict {
    let ask: CorsAsk = info.cors;
    let Some(origin) = ask.origin.map(|s| s.in_head(head)) else {
        return Verdict::Pass;
    };
    let preflight = info.method == Method::Options
        && info.body == Framing::None
        && ask.request_method.is_some();
    if !cors.allows_origin(origin) {
        return if preflight {
            Verdict::Refused
        } else {
            Verdict::Pass
        };
    }
    if cors.any_origin {
        out.extend_from_slice(b"Access-Control-Allow-Origin: *\r\n");
    } else {
        out.extend_from_slice(b"Access-Control-Allow-Origin: ");
        out.extend_from_slice(origin);
        out.extend_from_slice(b"\r\nVary: Origin\r\n");
    }
    if cors.allow_credentials {
        out.extend_from_slice(b"Access-Control-Allow-Credentials: true\r\n");
    }
    if !preflight {
        list(out, b"Access-Control-Expose-Headers", &cors.expose_headers);
        return Verdict::Pass;
    }
    let method = ask.request_method.map_or(&b""[..], |s| s.in_head(head));
    let headers = ask.request_headers.map(|s| s.in_head(head));
    if !cors.allows_method(method) || !headers.is_none_or(|h| cors.allows_headers(h)) {
        out.clear();
        return Verdict::Refused;
    }
    list(out, b"Access-Control-Allow-Methods", &cors.methods);
    match headers {
        // Any header: the ones asked for, `Authorization` included (which
        // a `*` would not cover).
        Some(asked) if cors.any_header => {
            out.extend_from_slice(b"Access-Control-Allow-Headers: ");
            out.extend_from_slice(asked);
            out.extend_from_slice(b"\r\n");
        }
        Some(_) => list(out, b"Access-Control-Allow-Headers", &cors.headers),
        None => {}
    }
    out.extend_from_slice(b"Access-Control-Max-Age: ");
    out.extend_from_slice(itoa::Buffer::new().format(cors.max_age_s).as_bytes());
    out.extend_from_slice(b"\r\n");
    if headers.is_some() && cors.any_origin {
        // The allowed headers follow the preflight's.
        out.extend_from_slice(b"Vary: Access-Control-Request-Headers\r\n");
    }
    Verdict::Preflight
}

/// `Name: a, b, c\r\n`, or nothing for an empty list.
fn list(out: &mut Vec<u8>, name: &[u8], values: &[String]) {
    if values.is_empty() {
        return;
    }
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    for (i, v) in values.iter().enumerate() {
        if i > 0 {
            out.extend_from_slice(b", ");
        }
        out.extend_from_slice(v.as_bytes());
    }
    out.extend_from_slice(b"\r\n");
}
