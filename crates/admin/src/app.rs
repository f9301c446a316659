//! What every route shares: the application state (the one writer, the
//! data plane's figures, the token), the JSON extractor whose failures are
//! `ApiError`s, and the parsing of ids, pool names and times.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use axum::extract::{FromRequest, Request};
use axum::Json;
use inferlb_control::writer::Control;
use inferlb_core::{PoolName, ReplicaId, WorkerStats};

use crate::error::ApiError;
use crate::metrics::Metrics;

/// Largest request body accepted.
pub const MAX_BODY: usize = 64 * 1024;

/// What the admin API reports about the data plane it sits beside.
#[derive(Debug, Clone)]
pub struct DataPlane {
    /// Worker threads.
    pub workers: usize,
    /// `io_uring` or `legacy`.
    pub io_driver: String,
    /// Per-worker counters.
    pub worker_stats: Vec<Arc<WorkerStats>>,
    /// What clients saw per pool and model (the front-end metrics).
    pub front: Arc<inferlb_core::FrontEnd>,
}

/// Everything the handlers share.
#[derive(Debug, Clone)]
pub struct AppState {
    pub(crate) control: Arc<Control>,
    pub(crate) data_plane: DataPlane,
    pub(crate) token: Option<Arc<str>>,
    pub(crate) started: Instant,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) protect_probes: bool,
}

impl AppState {
    /// State for the router. `token`: when set, every `/v1` route requires
    /// it; with `protect_probes`, `/healthz`, `/readyz` and `/metrics` too.
    pub fn new(
        control: Arc<Control>,
        data_plane: DataPlane,
        token: Option<String>,
        protect_probes: bool,
    ) -> Self {
        let metrics = Arc::new(Metrics::new(
            Arc::clone(&control),
            data_plane.worker_stats.clone(),
            Arc::clone(&data_plane.front),
        ));
        Self {
            control,
            data_plane,
            token: token.map(Arc::from),
            started: Instant::now(),
            metrics,
            protect_probes,
        }
    }
}

/// A JSON body extractor whose failures are `ApiError`s (400, 413, 415).
#[derive(Debug)]
pub struct ApiJson<T>(pub T);

impl<S: Send + Sync, T: serde::de::DeserializeOwned> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let Json(value) = Json::<T>::from_request(req, state).await?;
        Ok(Self(value))
    }
}

pub(crate) fn parse_id(id: &str) -> Result<ReplicaId, ApiError> {
    ReplicaId::new(id).map_err(|_| ApiError::NotFound(format!("no replica has id {id:?}")))
}

/// A pool name from a request, or 400 saying what is wrong with it.
pub(crate) fn parse_pool(field: &str, name: &str) -> Result<PoolName, ApiError> {
    PoolName::new(name).map_err(|e| ApiError::BadRequest(format!("{field}: {e}")))
}

/// The last second RFC 3339 can write (9999-12-31T23:59:59Z).
const RFC3339_MAX_S: u64 = 253_402_300_799;

/// Formats a time as RFC 3339, clamped into the years it can express, so
/// that no stored time can make a listing fail.
pub(crate) fn rfc3339(t: SystemTime) -> String {
    let max = SystemTime::UNIX_EPOCH + Duration::from_secs(RFC3339_MAX_S);
    let t = t.clamp(SystemTime::UNIX_EPOCH, max);
    humantime::format_rfc3339_seconds(t).to_string()
}

#[cfg(test)]
mod rfc3339_tests {
    use super::*;

    #[test]
    fn every_time_formats() {
        assert_eq!(rfc3339(SystemTime::UNIX_EPOCH), "1970-01-01T00:00:00Z");
        let far = SystemTime::UNIX_EPOCH + Duration::from_secs(300_000_000_000);
        assert_eq!(rfc3339(far), "9999-12-31T23:59:59Z");
        let before = SystemTime::UNIX_EPOCH - Duration::from_secs(5);
        assert_eq!(rfc3339(before), "1970-01-01T00:00:00Z");
    }
}
