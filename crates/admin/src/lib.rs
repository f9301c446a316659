//! The admin REST API of inferlb: operators list, add, drain, reweight and
//! remove replicas at runtime; every change is a core `Command`, applied one
//! at a time, persisted atomically, then published to the data plane.
//!
//! # Layout
//!
//! - [`control`]: `Control`, the single writer: apply, persist, publish, reap
//!   drained replicas.
//! - [`persist`]: the state file, written atomically and durably.
//! - [`api`]: routes, DTOs, handlers, bearer-token auth, the OpenAPI document.
//! - [`metrics`]: the Prometheus collector behind `/metrics`.
//! - [`health`]: active health checks, turned into `SetHealth` commands.
//! - [`error`]: `ApiError` and the status each variant maps to.

#![forbid(unsafe_code)]

pub mod api;
pub mod control;
pub mod error;
pub mod health;
pub mod metrics;
pub mod persist;

use std::future::Future;

pub use api::{router, AppState, DataPlane};
pub use control::{Control, ControlError, DEFAULT_DRAIN};
pub use error::ApiError;
pub use persist::{PersistError, StateFile};

/// Serves the admin API on `listener` until `shutdown` completes.
pub async fn serve(
    listener: tokio::net::TcpListener,
    router: axum::Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router)
        .with_graceful_shutdown(shutdown)
        .await
}
