//! Routes, DTOs and handlers of the admin API.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use axum::extract::{DefaultBodyLimit, FromRequest, Path, Query, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use inferlb_core::config::{replica_spec_in, FileReplica};
use inferlb_core::replica::check_weight;
use inferlb_core::{
    Command, PoolName, PoolSpec, Replica, ReplicaId, ReplicaState, Routing, StatusClass,
    WorkerStats,
};
use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq;
use utoipa::{IntoParams, OpenApi, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::error::{ApiError, ErrorBody};
use crate::metrics::Metrics;
use inferlb_control::writer::{Control, DEFAULT_DRAIN};

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
}

/// Everything the handlers share.
#[derive(Debug, Clone)]
pub struct AppState {
    pub(crate) control: Arc<Control>,
    data_plane: DataPlane,
    token: Option<Arc<str>>,
    started: Instant,
    metrics: Arc<Metrics>,
    protect_probes: bool,
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

/// One replica as the API shows it.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ReplicaView {
    /// Stable id.
    pub id: String,
    /// The address as given.
    pub address: String,
    /// The address connections go to.
    pub resolved: String,
    /// The pool (model) it serves.
    pub pool: String,
    /// Relative share of new requests, 0..=1000.
    pub weight: u32,
    /// `active`, `draining`, `unhealthy` (failing its health checks) or
    /// `ejected` (failing requests; back after its ejection).
    pub state: String,
    /// Requests in flight now, across all workers.
    pub in_flight: u64,
    /// Requests sent to the replica since it was added.
    pub requests: u64,
    /// 5xx responses plus failed connects.
    pub errors: u64,
    /// Responses by status class.
    pub responses: ResponseCounts,
    /// Refused or timed-out connects.
    pub connect_errors: u64,
    /// When it was added (RFC 3339, UTC).
    pub added_at: String,
    /// While draining: when it is removed even with requests in flight.
    pub drain_deadline: Option<String>,
    /// The load its model server last reported (engine metrics), if scraped.
    pub engine: Option<EngineView>,
}

/// A replica's engine load, from its Prometheus metrics.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct EngineView {
    /// Requests waiting in the engine's queue.
    pub waiting: f64,
    /// Requests running.
    pub running: f64,
    /// KV-cache usage, 0 to 1.
    pub kv_usage: f64,
    /// Milliseconds since the scrape.
    pub age_ms: u64,
    /// Recent enough to route on (4 scrape intervals); otherwise routing
    /// uses inferlb's own in-flight count.
    pub fresh: bool,
}

/// Responses by status class.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ResponseCounts {
    #[serde(rename = "2xx")]
    ok: u64,
    #[serde(rename = "3xx")]
    redirect: u64,
    #[serde(rename = "4xx")]
    client_error: u64,
    #[serde(rename = "5xx")]
    server_error: u64,
}

/// The last second RFC 3339 can write (9999-12-31T23:59:59Z).
const RFC3339_MAX_S: u64 = 253_402_300_799;

/// Formats a time as RFC 3339, clamped into the years it can express, so
/// that no stored time can make a listing fail.
fn rfc3339(t: SystemTime) -> String {
    let max = SystemTime::UNIX_EPOCH + Duration::from_secs(RFC3339_MAX_S);
    let t = t.clamp(SystemTime::UNIX_EPOCH, max);
    humantime::format_rfc3339_seconds(t).to_string()
}

impl From<&Replica> for ReplicaView {
    fn from(r: &Replica) -> Self {
        let s = &r.stats;
        Self {
            id: r.id.to_string(),
            address: r.address.clone(),
            resolved: if r.resolved {
                r.addr.to_string()
            } else {
                "unresolved".to_owned()
            },
            weight: r.weight,
            state: inferlb_core::Routability::of(r, inferlb_core::clock::now_ms())
                .as_str()
                .to_owned(),
            in_flight: s.in_flight(),
            requests: s.requests(),
            errors: s.responses(StatusClass::ServerError) + s.connect_errors(),
            responses: ResponseCounts {
                ok: s.responses(StatusClass::Success),
                redirect: s.responses(StatusClass::Redirect),
                client_error: s.responses(StatusClass::ClientError),
                server_error: s.responses(StatusClass::ServerError),
            },
            connect_errors: s.connect_errors(),
            added_at: rfc3339(r.added_at),
            drain_deadline: r.drain_deadline.map(rfc3339),
            pool: r.pool.to_string(),
            engine: s.engine_last().map(|(load, at)| {
                let now = inferlb_core::clock::now_ms();
                EngineView {
                    waiting: load.waiting,
                    running: load.running,
                    kv_usage: load.kv_usage,
                    age_ms: now.saturating_sub(at),
                    fresh: s.engine(now).is_some(),
                }
            }),
        }
    }
}

/// A replica to add (`POST /v1/replicas`, and each entry of `PUT`).
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewReplica {
    /// `ip:port`, `[ipv6]:port` or `host:port` (resolved once, now).
    pub address: String,
    /// 0..=1000; default 1.
    pub weight: Option<u64>,
    /// `[A-Za-z0-9._-]{1,64}`; default derived from the address.
    pub id: Option<String>,
    /// The pool (model) it serves; default `default`. A pool that does not
    /// exist yet is created with default settings.
    pub pool: Option<String>,
}

/// A change to one replica (`PATCH /v1/replicas/{id}`).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReplicaPatch {
    /// New weight, 0..=1000.
    pub weight: Option<u64>,
    /// `active` takes a draining replica back; `draining` drains it with the
    /// default timeout.
    #[schema(value_type = Option<String>, example = "active")]
    pub state: Option<ReplicaState>,
}

/// The whole replica list (`PUT /v1/replicas`): a JSON array, or an object
/// with a `replicas` array.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum ReplicaList {
    /// `[{"address": ...}, ...]`
    Bare(Vec<NewReplica>),
    /// `{"replicas": [...], "pools": [{"name": ..., "replicas": [...]}]}`
    Wrapped {
        /// The replicas (each may name its `pool`).
        #[serde(default)]
        replicas: Vec<NewReplica>,
        /// When given, the pool declarations become exactly these (and
        /// their replicas are added to the list).
        pools: Option<Vec<NewPool>>,
    },
}

impl ReplicaList {
    /// The list from a `PUT` body, each problem named by its field: a body
    /// that is neither an array nor an object with `replicas` or `pools`
    /// (a misspelled key) is refused rather than read as an empty list,
    /// which would drain every replica.
    fn parse(body: serde_json::Value) -> Result<Self, ApiError> {
        let invalid = |field: &str, e: serde_json::Error| {
            ApiError::BadRequest(format!("invalid body: {field}: {e}"))
        };
        match body {
            serde_json::Value::Array(_) => serde_json::from_value(body)
                .map(Self::Bare)
                .map_err(|e| invalid("replicas", e)),
            serde_json::Value::Object(mut fields) => {
                if let Some(unknown) = fields.keys().find(|k| *k != "replicas" && *k != "pools") {
                    return Err(ApiError::BadRequest(format!(
                        "invalid body: unknown field `{unknown}`, expected `replicas` or `pools`"
                    )));
                }
                let replicas = fields.remove("replicas");
                let pools = fields.remove("pools");
                if replicas.is_none() && pools.is_none() {
                    return Err(ApiError::BadRequest(
                        "invalid body: give `replicas`, `pools` or both (an empty `replicas` list drains every replica)".into(),
                    ));
                }
                let replicas = match replicas {
                    Some(v) => serde_json::from_value(v).map_err(|e| invalid("replicas", e))?,
                    None => Vec::new(),
                };
                let pools = match pools {
                    Some(v) => Some(serde_json::from_value(v).map_err(|e| invalid("pools", e))?),
                    None => None,
                };
                Ok(Self::Wrapped { replicas, pools })
            }
            _ => Err(ApiError::BadRequest(
                "invalid body: expected an array of replicas or an object with `replicas` and `pools`".into(),
            )),
        }
    }
}

/// A pool the config declares with `[pools.autoscaling]` runs inferlb's own
/// replica processes: only the config can take it away, so a `pools` list
/// without it is refused (409) rather than deleting it.
fn refuse_dropping_autoscaling_pools(app: &AppState, pools: &[NewPool]) -> Result<(), ApiError> {
    let declared = app.control.declared();
    let dropped: Vec<String> = declared
        .pools
        .iter()
        .filter(|p| p.autoscaling.is_some())
        .filter(|p| !pools.iter().any(|n| n.name == p.name.as_str()))
        .map(|p| p.name.to_string())
        .collect();
    if dropped.is_empty() {
        return Ok(());
    }
    Err(ApiError::Conflict(format!(
        "pools: the config declares {} with [pools.autoscaling]; list {} in `pools` (only the config can remove an autoscaling pool)",
        dropped.join(", "),
        if dropped.len() == 1 { "it" } else { "them" }
    )))
}

/// A pool declaration in `PUT /v1/replicas`.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewPool {
    /// The model name clients send: `[A-Za-z0-9._:-]{1,128}`.
    pub name: String,
    /// Other names of the model.
    #[serde(default)]
    pub aliases: Vec<String>,
    /// The pool's routing rule; default: the top-level one.
    #[schema(value_type = Option<String>, example = "prefix")]
    pub routing: Option<Routing>,
    /// Its replicas (their `pool` is this one).
    #[serde(default)]
    pub replicas: Vec<NewReplica>,
}

/// What `PUT /v1/replicas` changed.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ReplaceResult {
    /// Ids added.
    pub added: Vec<String>,
    /// Ids now draining.
    pub drained: Vec<String>,
    /// Ids whose weight or state changed.
    pub updated: Vec<String>,
    /// The list after the change.
    pub replicas: Vec<ReplicaView>,
}

/// The longest drain timeout accepted: an hour, as ALB's deregistration delay.
const MAX_DRAIN_S: u64 = 3600;

/// Query of `DELETE /v1/replicas/{id}`.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct DrainQuery {
    /// Seconds in-flight requests may take before the replica is removed
    /// anyway and its connections closed: 0 to 3600 (ALB's deregistration
    /// delay range). Default 300; 0 removes at once.
    pub drain_timeout_s: Option<u64>,
}

/// `GET /v1/status`.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Status {
    /// inferlb's version.
    pub version: String,
    /// Seconds since start.
    pub uptime_s: u64,
    /// Data-plane worker threads.
    pub workers: usize,
    /// `io_uring` or `legacy`.
    pub io_driver: String,
    /// Generation of the published snapshot.
    pub generation: u64,
    /// Routing rule.
    pub routing: String,
    /// Replicas in the snapshot.
    pub replicas: usize,
    /// Replicas taking new requests.
    pub routable: usize,
    /// Pools (models).
    pub pools: usize,
    /// Open client connections over all workers.
    pub open_connections: u64,
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

/// Validates a new replica, resolving its name on the blocking pool so a
/// slow resolver holds up this request only, never the control thread.
pub(crate) async fn spec_of(
    field: &str,
    new: &NewReplica,
) -> Result<inferlb_core::ReplicaSpec, ApiError> {
    let pool = match &new.pool {
        Some(name) => parse_pool(&format!("{field}.pool"), name)?,
        None => PoolName::default_pool(),
    };
    let file = FileReplica {
        address: new.address.clone(),
        weight: new.weight,
        id: new.id.clone(),
    };
    let field = field.to_owned();
    tokio::task::spawn_blocking(move || replica_spec_in(&field, &file, pool))
        .await
        .map_err(|e| ApiError::Internal(format!("resolver task failed: {e}")))?
        .map_err(|e| ApiError::BadRequest(e.to_string()))
}

/// Lists every replica, draining ones included.
#[utoipa::path(get, path = "/v1/replicas", tag = "replicas",
    responses((status = 200, body = [ReplicaView]), (status = 401, body = ErrorBody)))]
async fn list_replicas(State(app): State<AppState>) -> Json<Vec<ReplicaView>> {
    let snapshot = app.control.snapshot();
    Json(snapshot.replicas().iter().map(ReplicaView::from).collect())
}

/// Adds a replica; it takes requests from the next pick on.
#[utoipa::path(post, path = "/v1/replicas", tag = "replicas", request_body = NewReplica,
    responses((status = 201, body = ReplicaView), (status = 400, body = ErrorBody),
        (status = 409, body = ErrorBody), (status = 413, body = ErrorBody), (status = 415, body = ErrorBody)))]
async fn add_replica(
    State(app): State<AppState>,
    ApiJson(new): ApiJson<NewReplica>,
) -> Result<Response, ApiError> {
    add(&app, &new).await
}

/// Adds a replica and answers 201 with it.
pub(crate) async fn add(app: &AppState, new: &NewReplica) -> Result<Response, ApiError> {
    let spec = spec_of("replica", new).await?;
    let id = spec.id.clone();
    app.control.apply_one(Command::Add(spec)).await?;
    let snapshot = app.control.snapshot();
    let replica = snapshot
        .replicas()
        .iter()
        .find(|r| r.id == id)
        .map(ReplicaView::from);
    Ok((StatusCode::CREATED, Json(replica)).into_response())
}

/// One replica.
#[utoipa::path(get, path = "/v1/replicas/{id}", tag = "replicas", params(("id" = String, Path)),
    responses((status = 200, body = ReplicaView), (status = 404, body = ErrorBody)))]
async fn get_replica(
    State(app): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<ReplicaView>, ApiError> {
    let id = parse_id(&id)?;
    let snapshot = app.control.snapshot();
    snapshot
        .replicas()
        .iter()
        .find(|r| r.id == id)
        .map(|r| Json(ReplicaView::from(r)))
        .ok_or_else(|| ApiError::NotFound(format!("no replica has id {id}")))
}

/// Drains a replica: no new requests; it disappears when its in-flight
/// requests finish or the drain timeout passes.
#[utoipa::path(delete, path = "/v1/replicas/{id}", tag = "replicas", params(("id" = String, Path), DrainQuery),
    responses((status = 202, body = ReplicaView), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn delete_replica(
    State(app): State<AppState>,
    Path(id): Path<String>,
    query: Result<Query<DrainQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(query) = query?;
    let id = parse_id(&id)?;
    let timeout = match query.drain_timeout_s {
        None => DEFAULT_DRAIN,
        Some(s) if s <= MAX_DRAIN_S => Duration::from_secs(s),
        Some(s) => {
            return Err(ApiError::BadRequest(format!(
                "drain_timeout_s must be within 0..={MAX_DRAIN_S} seconds (ALB's deregistration delay range), not {s}"
            )))
        }
    };
    let deadline = SystemTime::now() + timeout;
    let before = app.control.snapshot();
    // One step: the drain, and the removal of the replica when it is idle
    // (or the timeout is 0). The answer is what was committed.
    app.control
        .apply_one(Command::Drain {
            id: id.clone(),
            deadline,
        })
        .await?;
    let after = app.control.snapshot();
    let view = match after.replicas().iter().find(|r| r.id == id) {
        Some(replica) => ReplicaView::from(replica),
        None => {
            let gone = before
                .replicas()
                .iter()
                .find(|r| r.id == id)
                .ok_or_else(|| ApiError::NotFound(format!("no replica has id {id}")))?;
            let mut view = ReplicaView::from(gone);
            // 202: the drain was accepted, and it is already complete.
            view.state = "draining".to_owned();
            view.in_flight = 0;
            view.drain_deadline = Some(rfc3339(deadline));
            view
        }
    };
    Ok((StatusCode::ACCEPTED, Json(view)).into_response())
}

/// Changes a replica's weight, or takes a draining replica back.
#[utoipa::path(patch, path = "/v1/replicas/{id}", tag = "replicas", params(("id" = String, Path)),
    request_body = ReplicaPatch,
    responses((status = 200, body = ReplicaView), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn patch_replica(
    State(app): State<AppState>,
    Path(id): Path<String>,
    ApiJson(patch): ApiJson<ReplicaPatch>,
) -> Result<Json<ReplicaView>, ApiError> {
    let id = parse_id(&id)?;
    if patch.weight.is_none() && patch.state.is_none() {
        return Err(ApiError::BadRequest(
            "nothing to change: give weight, state or both".into(),
        ));
    }
    let mut commands = Vec::new();
    if let Some(weight) = patch.weight {
        let weight = check_weight(weight).map_err(|e| ApiError::BadRequest(e.to_string()))?;
        commands.push(Command::SetWeight {
            id: id.clone(),
            weight,
        });
    }
    match patch.state {
        Some(ReplicaState::Draining) => {
            let current = app
                .control
                .snapshot()
                .replicas()
                .iter()
                .find(|r| r.id == id)
                .map(|r| r.state);
            if current != Some(ReplicaState::Draining) {
                let deadline = SystemTime::now() + DEFAULT_DRAIN;
                commands.push(Command::Drain {
                    id: id.clone(),
                    deadline,
                });
            }
        }
        Some(state) => commands.push(Command::SetState {
            id: id.clone(),
            state,
        }),
        None => {}
    }
    app.control.apply(commands).await?;
    let snapshot = app.control.snapshot();
    snapshot
        .replicas()
        .iter()
        .find(|r| r.id == id)
        .map(|r| Json(ReplicaView::from(r)))
        .ok_or_else(|| ApiError::NotFound(format!("no replica has id {id}")))
}

/// Makes the replica list match the one given: adds, weight changes,
/// un-drains, and drains (default timeout) of replicas no longer listed.
#[utoipa::path(put, path = "/v1/replicas", tag = "replicas", request_body = ReplicaList,
    responses((status = 200, body = ReplaceResult), (status = 400, body = ErrorBody), (status = 409, body = ErrorBody)))]
async fn replace_replicas(
    State(app): State<AppState>,
    ApiJson(body): ApiJson<serde_json::Value>,
) -> Result<Json<ReplaceResult>, ApiError> {
    let (entries, pools) = match ReplicaList::parse(body)? {
        ReplicaList::Bare(v) => (v, None),
        ReplicaList::Wrapped { replicas, pools } => (replicas, pools),
    };
    if let Some(pools) = &pools {
        refuse_dropping_autoscaling_pools(&app, pools)?;
    }
    let mut listed: Vec<(String, NewReplica)> = entries
        .into_iter()
        .enumerate()
        .map(|(i, e)| (format!("replicas[{i}]"), e))
        .collect();
    let mut pool_specs = Vec::new();
    for (p, pool) in pools.iter().flatten().enumerate() {
        let name = parse_pool(&format!("pools[{p}].name"), &pool.name)?;
        for (i, alias) in pool.aliases.iter().enumerate() {
            inferlb_core::pool::check_alias(alias)
                .map_err(|e| ApiError::BadRequest(format!("pools[{p}].aliases[{i}]: {e}")))?;
        }
        if pool_specs.iter().any(|s: &PoolSpec| s.name == name) {
            return Err(ApiError::BadRequest(format!(
                "pools[{p}]: pool {name} is listed twice"
            )));
        }
        // Settings the API does not carry (prefix, weights, engine metrics)
        // are kept from the current declaration.
        let mut spec = app
            .control
            .state()
            .await
            .pool(&name)
            .cloned()
            .unwrap_or_else(|| PoolSpec::named(name.clone()));
        spec.aliases = pool.aliases.clone();
        spec.routing = pool.routing;
        pool_specs.push(spec);
        for (i, replica) in pool.replicas.iter().enumerate() {
            let field = format!("pools[{p}].replicas[{i}]");
            if replica.pool.as_ref().is_some_and(|n| n != &pool.name) {
                return Err(ApiError::BadRequest(format!(
                    "{field}.pool: a replica listed under pool {} cannot name another pool",
                    pool.name
                )));
            }
            let mut replica = replica.clone();
            replica.pool = Some(pool.name.clone());
            listed.push((field, replica));
        }
    }
    let mut desired = Vec::with_capacity(listed.len());
    for (field, entry) in &listed {
        let spec = spec_of(field, entry).await?;
        if desired
            .iter()
            .any(|d: &inferlb_core::ReplicaSpec| d.id == spec.id || d.addr == spec.addr)
        {
            return Err(ApiError::BadRequest(format!(
                "{field}: {} is listed twice",
                spec.address
            )));
        }
        desired.push(spec);
    }
    let converge_pools = pools.is_some();
    let commands = app
        .control
        .converge(SystemTime::now() + DEFAULT_DRAIN, |state| {
            let extra = if converge_pools {
                state.diff_pools(&pool_specs)
            } else {
                Vec::new()
            };
            (desired, extra)
        })
        .await?;
    let (mut added, mut drained, mut updated) = (Vec::new(), Vec::new(), Vec::new());
    for command in &commands {
        match command {
            Command::Add(spec) | Command::Admit(spec) => added.push(spec.id.to_string()),
            Command::Drain { id, .. } => drained.push(id.to_string()),
            Command::SetWeight { id, .. } | Command::SetState { id, .. } => {
                if !updated.contains(&id.to_string()) {
                    updated.push(id.to_string());
                }
            }
            Command::Remove { id } => drained.push(id.to_string()),
            Command::SetAddress { id, .. } => updated.push(id.to_string()),
            Command::SetRouting(_)
            | Command::SetHealth { .. }
            | Command::SetSafeguards(_)
            | Command::SetPool(_)
            | Command::RemovePool { .. }
            | Command::SetScaling { .. } => {}
        }
    }
    let replicas = app
        .control
        .snapshot()
        .replicas()
        .iter()
        .map(ReplicaView::from)
        .collect();
    Ok(Json(ReplaceResult {
        added,
        drained,
        updated,
        replicas,
    }))
}

/// What the proxy is running with.
#[utoipa::path(get, path = "/v1/status", tag = "status", responses((status = 200, body = Status)))]
async fn status(State(app): State<AppState>) -> Json<Status> {
    let snapshot = app.control.snapshot();
    Json(Status {
        version: env!("CARGO_PKG_VERSION").to_owned(),
        uptime_s: app.started.elapsed().as_secs(),
        workers: app.data_plane.workers,
        io_driver: app.data_plane.io_driver.clone(),
        generation: snapshot.generation(),
        routing: snapshot.routing().as_str().to_owned(),
        replicas: snapshot.replicas().len(),
        routable: snapshot
            .replicas()
            .iter()
            .filter(|r| r.is_routable())
            .count(),
        pools: snapshot.pools().len(),
        open_connections: app
            .data_plane
            .worker_stats
            .iter()
            .map(|w| w.open_connections())
            .sum(),
    })
}

/// Liveness: the process answers.
#[utoipa::path(get, path = "/healthz", tag = "probes", responses((status = 200, description = "alive")))]
async fn healthz() -> &'static str {
    "ok\n"
}

/// Readiness: 200 only while at least one replica is routable.
#[utoipa::path(get, path = "/readyz", tag = "probes",
    responses((status = 200, description = "a replica is routable"), (status = 503, description = "none is")))]
async fn readyz(State(app): State<AppState>) -> Response {
    if app.control.snapshot().has_routable() {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "no routable replica\n").into_response()
    }
}

/// Prometheus text format.
#[utoipa::path(get, path = "/metrics", tag = "probes",
    responses((status = 200, description = "Prometheus text format 0.0.4", content_type = "text/plain")))]
async fn metrics(State(app): State<AppState>) -> Response {
    match app.metrics.render() {
        Ok(text) => (
            [(
                header::CONTENT_TYPE,
                prometheus_client::encoding::prometheus_text::CONTENT_TYPE,
            )],
            text,
        )
            .into_response(),
        Err(e) => ApiError::Internal(format!("cannot encode metrics: {e}")).into_response(),
    }
}

#[derive(OpenApi)]
#[openapi(
    info(title = "inferlb admin API", description = "Replica lifecycle, status and metrics of an inferlb proxy."),
    components(schemas(ErrorBody)),
    modifiers(&BearerAuth),
    security(("bearer" = []))
)]
struct ApiDoc;

struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// Without a token, serves only requests addressed to a loopback name: a
/// web page the operator visits could otherwise point a name of its own at
/// 127.0.0.1 (DNS rebinding) and drive the API from the browser. A request
/// without `Host` (HTTP/1.0, a local script) is no browser's and passes.
async fn require_loopback_host(
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
async fn require_token(
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
fn authorized(app: &AppState, headers: &HeaderMap) -> bool {
    let Some(token) = &app.token else {
        return true;
    };
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(bearer_credentials)
        .unwrap_or("");
    bool::from(given.as_bytes().ct_eq(token.as_bytes()))
}

/// The credentials of a `Bearer` authorization: the scheme is
/// case-insensitive (RFC 9110 §11.1), then one or more spaces.
pub(crate) fn bearer_credentials(value: &str) -> Option<&str> {
    let (scheme, rest) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| rest.trim_start_matches(' '))
}

/// The documented routes and the OpenAPI document describing them; both
/// come from the same `routes!` lists, so they cannot drift apart.
fn routers(app: &AppState) -> (Router<AppState>, Router<AppState>, utoipa::openapi::OpenApi) {
    let (v1, mut doc) = OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(list_replicas, add_replica, replace_replicas))
        .routes(routes!(get_replica, delete_replica, patch_replica))
        .routes(routes!(status))
        .routes(routes!(crate::pools::list_pools))
        .routes(routes!(crate::pools::get_pool))
        .routes(routes!(crate::pools::add_pool_replica))
        .routes(routes!(
            crate::pools::get_autoscaling,
            crate::pools::patch_autoscaling
        ))
        .split_for_parts();
    let (probes, probes_doc) = OpenApiRouter::new()
        .routes(routes!(healthz))
        .routes(routes!(readyz))
        .routes(routes!(metrics))
        .split_for_parts();
    doc.merge(probes_doc);
    let v1 = v1.layer(middleware::from_fn_with_state(app.clone(), require_token));
    let probes = if app.protect_probes {
        probes.layer(middleware::from_fn_with_state(app.clone(), require_token))
    } else {
        probes
    };
    (v1, probes, doc)
}

/// The admin API router.
pub fn router(app: AppState) -> Router {
    let (v1, probes, doc) = routers(&app);
    let doc = Arc::new(doc);
    let mut openapi = Router::new().route(
        "/openapi.json",
        get(move || async move { Json(doc.as_ref().clone()) }),
    );
    if app.protect_probes {
        // The document maps the API: protected with the probes.
        openapi = openapi.layer(middleware::from_fn_with_state(app.clone(), require_token));
    }
    Router::new()
        .merge(v1)
        .merge(probes)
        .merge(openapi)
        .fallback(unknown_route)
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .layer(middleware::from_fn_with_state(
            app.clone(),
            require_loopback_host,
        ))
        .with_state(app)
}

/// A route that does not exist: 404, except under `/v1/` when a token is
/// set, where a caller without it gets 401 first, so the API's shape is not
/// mapped by probing unauthenticated.
async fn unknown_route(
    State(app): State<AppState>,
    headers: HeaderMap,
    uri: axum::http::Uri,
) -> Response {
    let under_v1 = uri.path() == "/v1" || uri.path().starts_with("/v1/");
    if under_v1 && !authorized(&app, &headers) {
        return ApiError::Unauthorized.into_response();
    }
    ApiError::NotFound("no such route; see /openapi.json".into()).into_response()
}

/// The OpenAPI document, for tests and tooling.
pub fn openapi(app: &AppState) -> utoipa::openapi::OpenApi {
    routers(app).2
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
