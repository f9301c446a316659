//! Who may call the API: without a token, only requests addressed to this
//! machine's loopback (DNS rebinding protection); with one, only requests
//! that carry it (the bearer scheme, compared in constant time).

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use subtle::ConstantTimeEq;

use crate::app::AppState;
use crate::error::ApiError;

/// Without a token, serves only requests addressed to a loopback name: a
/// web page the operator visits could otherwise point a name of its own at
/// 127.0.0.1 (DNS rebinding) and drive the API from the browser. A request
/// without `Host` (HTTP/1.0, a local script) is no browser's and passes.
pub(crate) async fn require_loopback_host(
    State(app): State<AppState>,
    headers: HeaderMap,
    request: Request,
    next: Next,
) -> Response {
    if app.token.is_none() && !names_loopback_only(&headers, request.uri()) {
        return ApiError::MisdirectedHost.into_response();
    }
    next.run(request).await
}

/// Whether a request, by its `Host` and its target, is addressed to this
/// machine's loopback: at most one `Host`, naming loopback, and an
/// origin-form target (an absolute-form one names a host of its own that a
/// proxy in between may have acted on). No `Host` at all is an HTTP/1.0
/// client on this machine.
fn names_loopback_only(headers: &HeaderMap, uri: &axum::http::Uri) -> bool {
    let mut hosts = headers.get_all(header::HOST).iter();
    let host_ok = match (hosts.next(), hosts.next()) {
        (None, _) => true,
        (Some(host), None) => host.to_str().is_ok_and(is_loopback_host),
        (Some(_), Some(_)) => false,
    };
    host_ok && uri.scheme().is_none() && uri.authority().is_none()
}

/// Whether a `Host` value names this machine's loopback: `localhost`, an
/// address in 127.0.0.0/8 or `[::1]`, with or without a port.
fn is_loopback_host(host: &str) -> bool {
    let name = if let Some(rest) = host.strip_prefix('[') {
        match rest.split_once(']') {
            Some((v6, port)) if port.is_empty() || port.starts_with(':') => v6,
            _ => return false,
        }
    } else {
        match host.rsplit_once(':') {
            Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
            Some(_) => return false,
            None => host,
        }
    };
    name.eq_ignore_ascii_case("localhost")
        || name
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// Rejects requests without the configured bearer token.
pub(crate) async fn require_token(
    State(app): State<AppState>,
    headers: HeaderMap,
    request: Request,
    next: Next,
) -> Response {
    if !authorized(&app, &headers) {
        return ApiError::Unauthorized.into_response();
    }
    next.run(request).await
}

/// Whether the request carries the configured token (always, when none is
/// configured). Compared in constant time, so nothing leaks about it.
pub(crate) fn authorized(app: &AppState, headers: &HeaderMap) -> bool {
    app.token
        .as_deref()
        .is_none_or(|token| carries_token(headers, token))
}

/// Whether `headers` carry `token` as a bearer credential, compared in
/// constant time.
pub(crate) fn carries_token(headers: &HeaderMap, token: &str) -> bool {
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(bearer_credentials)
        .unwrap_or("");
    bool::from(given.as_bytes().ct_eq(token.as_bytes()))
}

/// The credentials of a `Bearer` authorization: the scheme is
/// case-insensitive (RFC 9110 §11.1), then one or more spaces.
fn bearer_credentials(value: &str) -> Option<&str> {
    let (scheme, rest) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| rest.trim_start_matches(' '))
}

#[cfg(test)]
mod host_tests {
    use super::is_loopback_host;

    #[test]
    fn loopback_names_with_or_without_a_port() {
        for ok in [
            "localhost",
            "LOCALHOST:9090",
            "127.0.0.1",
            "127.0.0.1:9090",
            "127.1.2.3:1",
            "[::1]",
            "[::1]:9090",
        ] {
            assert!(is_loopback_host(ok), "{ok}");
        }
        for bad in [
            "evil.example",
            "evil.example:9090",
            "10.0.0.1:9090",
            "localhost.evil.example",
            "[::2]:9090",
            "127.0.0.1:x",
            "[::1]x",
            "",
        ] {
            assert!(!is_loopback_host(bad), "{bad}");
        }
    }
}
