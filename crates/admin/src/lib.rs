//! The admin REST API of inferlb: operators list, add, drain, reweight and
//! remove replicas and change pools at runtime. Each route turns its request
//! into commands for the control plane's one writer (`inferlb-control`) and
//! answers with what was applied and made durable.
//!
//! # Layout
//!
//! - [`api`]: the router, the OpenAPI document, the probes and the status.
//! - [`replicas`]: the `/v1/replicas` routes.
//! - [`pools`]: `/v1/pools` and a pool's autoscaling routes.
//! - [`app`]: what every route shares (state, JSON extractor, parsing).
//! - `auth`: the loopback rule without a token, the bearer token with one.
//! - [`metrics`]: the Prometheus collector behind `/metrics`.
//! - [`error`]: `ApiError` and the status each variant maps to.
//! - `admission`: who may hold an admin connection (per-client caps, the
//!   slots kept for token holders) and the body timeout.
//! - this file: `serve`, the HTTP server with its per-client limits.

#![forbid(unsafe_code)]

pub mod api;
pub mod app;
pub mod cluster;
pub mod error;
pub mod metrics;
pub mod pools;
pub mod replicas;

mod admission;
mod auth;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::sync::{watch, Semaphore};

pub use api::router;
pub use app::{AppState, DataPlane};
pub use error::ApiError;

/// What one admin client may hold: the API is reachable before any token is
/// checked, so none of it may be unbounded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServeLimits {
    /// Time for a whole request head; then the connection closes.
    pub header_read_timeout: Duration,
    /// Time for a whole request body once its head has arrived; then the
    /// answer is 408 and the connection closes (nginx
    /// `client_body_timeout`).
    pub body_read_timeout: Duration,
    /// Admin connections open at once; more are closed as they arrive.
    pub max_connections: usize,
    /// General connections one client address may hold at once; past it,
    /// only the slots kept for the token remain to it.
    pub max_connections_per_client: usize,
    /// With a token set, this many of `max_connections` are kept for
    /// clients that present it: a connection admitted into them is served
    /// only with the token, so no unauthenticated peer can take every slot.
    pub reserved_for_token: usize,
    /// The admin token, when one is configured (see `reserved_for_token`).
    pub token: Option<Arc<str>>,
    /// Largest request head; larger gets 431 (hyper's floor is 8 KiB).
    pub max_head_bytes: usize,
}

impl Default for ServeLimits {
    fn default() -> Self {
        Self {
            header_read_timeout: Duration::from_secs(10),
            body_read_timeout: Duration::from_secs(10),
            max_connections: 256,
            max_connections_per_client: 64,
            reserved_for_token: 32,
            token: None,
            max_head_bytes: 16 * 1024,
        }
    }
}

/// Serves the admin API on `listener` until `shutdown` completes, with the
/// default [`ServeLimits`]. Bodies are capped at 64 KiB by the router.
pub async fn serve(
    listener: tokio::net::TcpListener,
    router: axum::Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    serve_with_limits(listener, router, shutdown, ServeLimits::default()).await
}

/// Serves the admin API with explicit limits: each connection is an HTTP/1.1
/// connection from hyper's builder with a header timeout (on a real timer,
/// which `axum::serve` never sets), a body timeout and a head-size cap, under
/// a cap on connections overall and per client address, with a share of the
/// connections kept for clients holding the token. On shutdown, open
/// connections finish their request and close.
pub async fn serve_with_limits(
    listener: tokio::net::TcpListener,
    router: axum::Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
    limits: ServeLimits,
) -> std::io::Result<()> {
    let reserved = if limits.token.is_some() {
        limits.reserved_for_token.min(limits.max_connections)
    } else {
        0
    };
    let open = Arc::new(Semaphore::new(limits.max_connections - reserved));
    let kept = Arc::new(Semaphore::new(reserved));
    let clients = inferlb_core::clients::ClientCounts::new(limits.max_connections_per_client);
    let router = router.layer(axum::middleware::from_fn_with_state(
        limits.body_read_timeout,
        admission::read_body_within,
    ));
    let (closing_tx, closing) = watch::channel(false);
    let mut shutdown = std::pin::pin!(shutdown);
    let mut refusals = admission::Refusals::default();
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = &mut shutdown => break,
        };
        let (stream, peer) = match accepted {
            Ok(pair) => pair,
            Err(error) => {
                // Out of descriptors: back off instead of spinning.
                tracing::warn!(%error, "admin accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        // A general slot: within the client's share and the general pool.
        // Otherwise one of the slots kept for the token: served only with
        // it, so a client at its cap (or a flood from anywhere) cannot
        // lock the operator out, even from the same address.
        let general = clients
            .enter(peer.ip())
            .and_then(|client| Some((client, Arc::clone(&open).try_acquire_owned().ok()?)));
        let (held, token_only) = match general {
            Some((client, permit)) => ((permit, Some(client)), false),
            None => match Arc::clone(&kept).try_acquire_owned() {
                Ok(permit) => ((permit, None), true),
                Err(_) => {
                    refusals.note(
                        peer,
                        "admin connection limit reached (overall or for this client address); closing new connections",
                        limits.max_connections,
                    );
                    continue;
                }
            },
        };
        let router = match (&limits.token, token_only) {
            (Some(token), true) => router.clone().layer(axum::middleware::from_fn_with_state(
                Arc::clone(token),
                admission::require_token_or_close,
            )),
            _ => router.clone(),
        };
        let service = TowerToHyperService::new(router);
        let mut closing = closing.clone();
        let (header_timeout, max_head) = (limits.header_read_timeout, limits.max_head_bytes);
        tokio::spawn(async move {
            let _held = held;
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                .header_read_timeout(header_timeout)
                .max_buf_size(max_head.max(8192));
            let conn = builder.serve_connection(TokioIo::new(stream), service);
            let mut conn = std::pin::pin!(conn);
            tokio::select! {
                _ = conn.as_mut() => return,
                _ = closing.wait_for(|c| *c) => conn.as_mut().graceful_shutdown(),
            }
            let _ = conn.await;
        });
    }
    let _ = closing_tx.send(true);
    // Wait for open connections to finish, as `axum::serve` does.
    let all = |n: usize| u32::try_from(n).unwrap_or(u32::MAX);
    let _ = open
        .acquire_many(all(limits.max_connections - reserved))
        .await;
    let _ = kept.acquire_many(all(reserved)).await;
    Ok(())
}
