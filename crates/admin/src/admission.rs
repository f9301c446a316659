//! Who may hold an admin connection, and for how long a body may take: the
//! refusals' log, the slots kept for clients holding the token, and the
//! body timeout (the per-address count is core's `ClientCounts`). The API is reachable before a token is
//! checked, so one peer must not be able to hold it all.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::error::ApiError;

/// Refused connections are logged once per 10 s per reason, not per
/// connection: a flood must not flood the log too.
#[derive(Debug, Default)]
pub(crate) struct Refusals {
    last: HashMap<&'static str, Instant>,
}

impl Refusals {
    pub(crate) fn note(&mut self, peer: SocketAddr, reason: &'static str, limit: usize) {
        let now = Instant::now();
        let due = self
            .last
            .get(reason)
            .is_none_or(|t| now.duration_since(*t) > Duration::from_secs(10));
        if due {
            tracing::warn!(%peer, limit, "{reason}");
            self.last.insert(reason, now);
        }
    }
}

/// Reads the whole body (bounded by the router's 64 KiB) within
/// `timeout`, before any handler runs; a body slower than that gets 408 and
/// the connection closes, so a peer sending a byte now and then cannot hold
/// a connection open.
pub(crate) async fn read_body_within(
    State(timeout): State<Duration>,
    request: Request,
    next: Next,
) -> Response {
    let (parts, body) = request.into_parts();
    let read = axum::body::to_bytes(body, crate::app::MAX_BODY);
    match tokio::time::timeout(timeout, read).await {
        Ok(Ok(bytes)) => {
            next.run(Request::from_parts(parts, Body::from(bytes)))
                .await
        }
        Ok(Err(e)) if over_the_limit(&e) => closing(ApiError::PayloadTooLarge.into_response()),
        Ok(Err(_)) => closing(
            ApiError::BadRequest("the request body could not be read".into()).into_response(),
        ),
        Err(_) => {
            let mut response = (
                StatusCode::REQUEST_TIMEOUT,
                axum::Json(crate::error::ErrorBody {
                    error: "request_timeout",
                    message: format!(
                        "the request body did not arrive within {} s",
                        timeout.as_secs_f64()
                    ),
                    current: None,
                }),
            )
                .into_response();
            response = closing(response);
            response
        }
    }
}

/// Whether reading a body failed because it is longer than allowed.
fn over_the_limit(error: &axum::Error) -> bool {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(e) = cause {
        if e.is::<http_body_util::LengthLimitError>() {
            return true;
        }
        cause = e.source();
    }
    false
}

/// On a connection admitted into the slots kept for token holders: a
/// request without the token gets 401 and the connection is closed.
pub(crate) async fn require_token_or_close(
    State(token): State<Arc<str>>,
    request: Request,
    next: Next,
) -> Response {
    if crate::auth::carries_token(request.headers(), &token) {
        next.run(request).await
    } else {
        closing(ApiError::Unauthorized.into_response())
    }
}

/// The answer with `Connection: close`, so hyper closes after sending it.
fn closing(mut response: Response) -> Response {
    response
        .headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    response
}
