//! The admin REST API of inferlb: operators list, add, drain, reweight and
//! remove replicas and change pools at runtime. Each route turns its request
//! into commands for the control plane's one writer (`inferlb-control`) and
//! answers with what was applied and made durable.
//!
//! # Layout
//!
//! - [`api`]: routes, DTOs, handlers, bearer-token auth, the OpenAPI document.
//! - [`pools`]: `/v1/pools` and a pool's autoscaling routes.
//! - [`metrics`]: the Prometheus collector behind `/metrics`.
//! - [`error`]: `ApiError` and the status each variant maps to.
//! - this file: `serve`, the HTTP server with its per-client limits.

#![forbid(unsafe_code)]

pub mod api;
pub mod error;
pub mod metrics;
pub mod pools;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::sync::{watch, Semaphore};

pub use api::{router, AppState, DataPlane};
pub use error::ApiError;

/// What one admin client may hold: the API is reachable before any token is
/// checked, so none of it may be unbounded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServeLimits {
    /// Time for a whole request head; then the connection closes.
    pub header_read_timeout: Duration,
    /// Admin connections open at once; more are closed as they arrive.
    pub max_connections: usize,
    /// Largest request head; larger gets 431 (hyper's floor is 8 KiB).
    pub max_head_bytes: usize,
}

impl Default for ServeLimits {
    fn default() -> Self {
        Self {
            header_read_timeout: Duration::from_secs(10),
            max_connections: 256,
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
/// which `axum::serve` never sets) and a head-size cap, under a cap on
/// connections. On shutdown, open connections finish their request and close.
pub async fn serve_with_limits(
    listener: tokio::net::TcpListener,
    router: axum::Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
    limits: ServeLimits,
) -> std::io::Result<()> {
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    let (closing_tx, closing) = watch::channel(false);
    let mut shutdown = std::pin::pin!(shutdown);
    let mut last_refusal: Option<std::time::Instant> = None;
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
        let Ok(permit) = Arc::clone(&permits).try_acquire_owned() else {
            if last_refusal.is_none_or(|t| t.elapsed() > Duration::from_secs(10)) {
                tracing::warn!(%peer, limit = limits.max_connections, "admin connection limit reached; closing new connections");
                last_refusal = Some(std::time::Instant::now());
            }
            drop(stream);
            continue;
        };
        let service = TowerToHyperService::new(router.clone());
        let mut closing = closing.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                .header_read_timeout(limits.header_read_timeout)
                .max_buf_size(limits.max_head_bytes.max(8192));
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
    let all = u32::try_from(limits.max_connections).unwrap_or(u32::MAX);
    let _ = permits.acquire_many(all).await;
    Ok(())
}
