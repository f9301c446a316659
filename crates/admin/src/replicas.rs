//! `/v1/replicas`: list, add, read, drain, reweight and replace replicas.
//! Each route is one change through the control plane's writer, and its
//! answer is what was committed.

use std::time::{Duration, SystemTime};

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use inferlb_control::writer::{ControlError, DEFAULT_DRAIN};
use inferlb_core::config::{replica_spec_in, FileReplica};
use inferlb_core::replica::check_weight;
use inferlb_core::{
    Command, PoolName, PoolSpec, Replica, ReplicaState, Routing, StateError, StatusClass,
};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::app::{parse_id, parse_pool, rfc3339, ApiJson, AppState};
use crate::error::{ApiError, ErrorBody};

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
    /// LoRA adapters the engine reports (vLLM's `vllm:lora_requests_info`):
    /// with requests running, waiting, and how many it serves at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub adapters: Option<AdaptersView>,
}

/// The LoRA adapters an engine reports.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct AdaptersView {
    pub running: Vec<String>,
    pub waiting: Vec<String>,
    pub max_lora: u32,
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
                    adapters: s.adapters_last().map(|a| AdaptersView {
                        running: a.running.clone(),
                        waiting: a.waiting.clone(),
                        max_lora: a.max_lora,
                    }),
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
    /// The model name the replicas serve (a body naming an alias is
    /// forwarded with this name); absent keeps the current one, which is
    /// the pool's name unless the config says otherwise.
    pub served_model_name: Option<String>,
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
pub(crate) async fn list_replicas(State(app): State<AppState>) -> Json<Vec<ReplicaView>> {
    let snapshot = app.control.snapshot();
    Json(snapshot.replicas().iter().map(ReplicaView::from).collect())
}

/// Adds a replica; it takes requests from the next pick on.
#[utoipa::path(post, path = "/v1/replicas", tag = "replicas", request_body = NewReplica,
    responses((status = 201, body = ReplicaView), (status = 400, body = ErrorBody),
        (status = 409, body = ErrorBody), (status = 413, body = ErrorBody), (status = 415, body = ErrorBody)))]
pub(crate) async fn add_replica(
    State(app): State<AppState>,
    ApiJson(new): ApiJson<NewReplica>,
) -> Result<Response, ApiError> {
    add(&app, &new).await
}

/// Adds a replica and answers 201 with it.
pub(crate) async fn add(app: &AppState, new: &NewReplica) -> Result<Response, ApiError> {
    let spec = spec_of("replica", new).await?;
    let id = spec.id.clone();
    match app.control.apply_one(Command::Add(spec)).await {
        Ok(_) => {}
        // The replica that holds the id or address: what the caller met.
        Err(ControlError::State(
            e @ (StateError::IdExists { .. } | StateError::AddressExists { .. }),
        )) => {
            let holder = match &e {
                StateError::IdExists { id } | StateError::AddressExists { id, .. } => id.clone(),
                _ => id.clone(),
            };
            let holder = &holder;
            let snapshot = app.control.snapshot();
            let current = snapshot
                .replicas()
                .iter()
                .find(|r| &r.id == holder)
                .map(ReplicaView::from)
                .and_then(|v| serde_json::to_value(v).ok());
            return Err(match current {
                Some(current) => ApiError::ConflictWith(e.to_string(), current),
                None => ApiError::Conflict(e.to_string()),
            });
        }
        Err(e) => return Err(e.into()),
    }
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
pub(crate) async fn get_replica(
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
pub(crate) async fn delete_replica(
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
pub(crate) async fn patch_replica(
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
pub(crate) async fn replace_replicas(
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
        if let Some(served) = &pool.served_model_name {
            inferlb_core::pool::check_alias(served)
                .map_err(|e| ApiError::BadRequest(format!("pools[{p}].served_model_name: {e}")))?;
        }
        if pool_specs.iter().any(|s: &PoolSpec| s.name == name) {
            return Err(ApiError::BadRequest(format!(
                "pools[{p}]: pool {name} is listed twice"
            )));
        }
        // Settings the API does not carry (prefix, weights, engine metrics,
        // affinity, adapters) are kept from the current declaration.
        let mut spec = app
            .control
            .state()
            .await
            .pool(&name)
            .cloned()
            .unwrap_or_else(|| PoolSpec::named(name.clone()));
        spec.aliases = pool.aliases.clone();
        if pool.served_model_name.is_some() {
            spec.served_model_name = pool.served_model_name.clone();
        }
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
            (desired.clone(), extra)
        })
        .await?;
    let (mut added, mut drained, mut updated) = (Vec::new(), Vec::new(), Vec::new());
    for command in &commands {
        match command {
            Command::Add(spec) | Command::Admit(spec) | Command::AdmitPeer(spec) => {
                added.push(spec.id.to_string())
            }
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
            | Command::SetScaling { .. }
            | Command::LearnAdapters { .. } => {}
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
