//! `GET /v1/cluster` (the fleet's instances and their last reports), and
//! the stale marking of reads while etcd cannot be reached.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::extract::{Request, State};
use axum::http::{HeaderValue, Method};
use axum::middleware::Next;
use axum::response::Response;
use axum::Json;
use serde::Serialize;
use utoipa::ToSchema;

use crate::app::AppState;
use crate::error::ApiError;

/// `GET /v1/cluster`.
#[derive(Debug, Serialize, ToSchema)]
pub struct ClusterView {
    /// The fleet's name (`[cluster] name`): its keys live under `/inferlb/<name>/`.
    pub name: String,
    /// This instance.
    pub instance: String,
    /// etcd's client URLs.
    pub etcd: Vec<String>,
    /// The record revision this instance has applied.
    pub revision: i64,
    /// Whether this instance cannot reach etcd now: it serves the last
    /// state it had (fail static) and refuses writes with 503.
    pub stale: bool,
    /// Since when etcd is unreachable (RFC 3339), and why.
    pub stale_since: Option<String>,
    pub etcd_error: Option<String>,
    /// Every live instance's last report (as of this instance's last read).
    pub instances: Vec<InstanceView>,
}

/// One instance's last report.
#[derive(Debug, Serialize, ToSchema)]
pub struct InstanceView {
    pub instance: String,
    /// Its admin API address.
    pub admin: Option<String>,
    /// The record revision it has applied.
    pub revision: i64,
    /// When it reported (RFC 3339), and how long ago.
    pub reported_at: String,
    pub age_ms: u64,
    /// Requests in flight per replica (replicas with none are left out).
    pub in_flight: BTreeMap<String, u64>,
    /// Requests in flight per pool.
    pub pools: BTreeMap<String, u64>,
    /// Its health verdict per replica.
    pub health: BTreeMap<String, String>,
}

fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}

/// The fleet: this instance, whether it can reach etcd, and every live
/// instance's last report. 404 when inferlb runs alone (no `[cluster]`).
#[utoipa::path(get, path = "/v1/cluster", tag = "cluster",
    responses((status = 200, body = ClusterView), (status = 404, description = "not a member of a fleet")))]
pub(crate) async fn get_cluster(
    State(app): State<AppState>,
) -> Result<Json<ClusterView>, ApiError> {
    let Some(fleet) = app.control.fleet() else {
        return Err(ApiError::NotFound(
            "this instance runs alone: configure [cluster] to run a fleet".into(),
        ));
    };
    let link = fleet.link();
    let now = SystemTime::now();
    let instances = fleet
        .reports()
        .into_iter()
        .map(|r| {
            let at = UNIX_EPOCH + Duration::from_millis(r.reported_at_unix_ms);
            InstanceView {
                instance: r.instance,
                admin: r.admin,
                revision: r.revision,
                reported_at: rfc3339(at),
                age_ms: now.duration_since(at).unwrap_or_default().as_millis() as u64,
                in_flight: r
                    .in_flight
                    .into_iter()
                    .map(|(id, n)| (id.to_string(), n))
                    .collect(),
                pools: r
                    .pools
                    .into_iter()
                    .map(|(pool, p)| (pool.to_string(), p.in_flight))
                    .collect(),
                health: r
                    .health
                    .into_iter()
                    .map(|(id, h)| (id.to_string(), h))
                    .collect(),
            }
        })
        .collect();
    let config = fleet.config();
    Ok(Json(ClusterView {
        name: config.name.clone(),
        instance: config.instance.clone(),
        etcd: config.etcd.clone(),
        revision: fleet.revision(),
        stale: link.down.is_some(),
        stale_since: link.down.as_ref().map(|(since, _)| rfc3339(*since)),
        etcd_error: link.down.map(|(_, why)| why),
        instances,
    }))
}

/// While etcd cannot be reached, reads say their state may be stale: the
/// standard `Warning: 110` and `X-Inferlb-Stale: true`.
pub(crate) async fn mark_stale(
    State(app): State<AppState>,
    request: Request,
    next: Next,
) -> Response {
    let read = request.method() == Method::GET || request.method() == Method::HEAD;
    let mut response = next.run(request).await;
    let down = app.control.fleet().and_then(|f| f.link().down);
    if let (true, Some((since, _))) = (read, down) {
        let text = format!(
            "110 inferlb \"Response is Stale: etcd unreachable since {}\"",
            humantime::format_rfc3339_seconds(since)
        );
        let headers = response.headers_mut();
        if let Ok(value) = HeaderValue::from_str(&text) {
            headers.insert("warning", value);
        }
        headers.insert("x-inferlb-stale", HeaderValue::from_static("true"));
    }
    response
}
