//! `/v1/pools`: the pools (one model's replicas each) as the proxy routes
//! them, and adding a replica to one.

use axum::extract::{Path, State};
use axum::response::Response;
use axum::Json;
use inferlb_core::{Command, PoolView, ReplicaSet};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::app::{parse_pool, ApiJson, AppState};
use crate::error::{ApiError, ErrorBody};
use crate::replicas::{add, NewReplica, ReplicaView};

/// One pool as the API shows it.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct PoolInfo {
    /// The model name clients send.
    pub name: String,
    /// Other names of the model.
    pub aliases: Vec<String>,
    /// The model name its replicas serve: a request naming an alias in its
    /// body is forwarded with this name.
    pub served_model_name: String,
    /// The routing rule in force.
    pub routing: String,
    /// What the replicas speak: `http1`, or `grpc` (HTTP/2 to the
    /// replicas; gRPC calls only).
    pub protocol: String,
    /// A gRPC pool's services (calls to them without a model key come here).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub grpc_services: Vec<String>,
    /// TLS to the replicas (`[pools.upstream_tls]` in the config); absent:
    /// plaintext.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream_tls: Option<UpstreamTlsInfo>,
    /// LoRA adapters served under their own names (`adapters` in the
    /// config).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub adapters: Vec<String>,
    /// Session affinity (`affinity` in the config); absent: off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub affinity: Option<AffinityInfo>,
    /// Serves requests that name no model, or a model no pool serves.
    pub default: bool,
    /// Declared (config or `PUT`), rather than existing because a replica
    /// names it.
    pub declared: bool,
    /// Replicas taking new requests.
    pub routable: usize,
    /// Its replicas, draining ones included.
    pub replicas: Vec<ReplicaView>,
}

/// How the proxy speaks TLS to a pool's replicas.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct UpstreamTlsInfo {
    /// The CA file the replicas' certificates are verified against; absent:
    /// the system's roots.
    pub ca: Option<String>,
    /// The name verified and sent as SNI; absent: each replica's host.
    pub server_name: Option<String>,
    pub verify: bool,
}

/// Session affinity: consistent hashing with bounded loads on a key.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct AffinityInfo {
    /// Where the key is read: `header:x-session-id`, `cookie:NAME`,
    /// `json:user`.
    pub key: String,
    /// A key moves off a replica whose load would pass (1 + epsilon) × the
    /// mean.
    pub epsilon: f64,
}

fn info(set: &ReplicaSet, index: usize, declared: bool) -> PoolInfo {
    let pool: &PoolView = &set.pools()[index];
    let replicas: Vec<ReplicaView> = pool
        .members()
        .iter()
        .map(|&i| ReplicaView::from(&set.replicas()[i as usize]))
        .collect();
    PoolInfo {
        name: pool.name().to_string(),
        aliases: pool.spec().aliases.clone(),
        served_model_name: pool.spec().served_name().to_owned(),
        routing: pool.routing().to_string(),
        protocol: pool.spec().protocol.as_str().to_owned(),
        grpc_services: pool.spec().grpc.services.clone(),
        upstream_tls: pool
            .spec()
            .upstream_tls
            .as_deref()
            .map(|t| UpstreamTlsInfo {
                ca: t.ca.as_ref().map(|p| p.display().to_string()),
                server_name: t.server_name.clone(),
                verify: t.verify,
            }),
        adapters: pool.spec().adapters.clone(),
        affinity: pool.spec().affinity.as_ref().map(|a| AffinityInfo {
            key: a.key.to_string(),
            epsilon: a.epsilon,
        }),
        default: set.default_pool() == Some(index),
        declared,
        routable: pool
            .members()
            .iter()
            .filter(|&&i| set.replicas()[i as usize].is_routable())
            .count(),
        replicas,
    }
}

/// Every pool with its replicas.
#[utoipa::path(get, path = "/v1/pools", tag = "pools",
    responses((status = 200, body = [PoolInfo]), (status = 401, body = ErrorBody)))]
pub(crate) async fn list_pools(State(app): State<AppState>) -> Json<Vec<PoolInfo>> {
    let state = app.control.state().await;
    let set = app.control.snapshot();
    Json(
        (0..set.pools().len())
            .map(|i| info(&set, i, state.pool(set.pools()[i].name()).is_some()))
            .collect(),
    )
}

/// One pool, by name or alias.
#[utoipa::path(get, path = "/v1/pools/{name}", tag = "pools", params(("name" = String, Path)),
    responses((status = 200, body = PoolInfo), (status = 404, body = ErrorBody)))]
pub(crate) async fn get_pool(
    State(app): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<PoolInfo>, ApiError> {
    let state = app.control.state().await;
    let set = app.control.snapshot();
    let index = set
        .pool_named(&name)
        .ok_or_else(|| ApiError::NotFound(format!("no pool is named {name:?}")))?;
    let declared = state.pool(set.pools()[index].name()).is_some();
    Ok(Json(info(&set, index, declared)))
}

/// Adds a replica to a pool (created with default settings if it does not
/// exist yet).
#[utoipa::path(post, path = "/v1/pools/{name}/replicas", tag = "pools", params(("name" = String, Path)),
    request_body = NewReplica,
    responses((status = 201, body = ReplicaView), (status = 400, body = ErrorBody),
        (status = 409, body = ErrorBody), (status = 413, body = ErrorBody), (status = 415, body = ErrorBody)))]
pub(crate) async fn add_pool_replica(
    State(app): State<AppState>,
    Path(name): Path<String>,
    ApiJson(mut new): ApiJson<NewReplica>,
) -> Result<Response, ApiError> {
    let pool = parse_pool("pool", &name)?;
    if new.pool.as_ref().is_some_and(|p| p != pool.as_str()) {
        return Err(ApiError::BadRequest(format!(
            "the body names pool {:?} but the path names {pool}",
            new.pool.as_deref().unwrap_or_default()
        )));
    }
    new.pool = Some(pool.to_string());
    add(&app, &new).await
}

/// A pool's local autoscaling: desired, current and in-service replicas,
/// held requests, and the last activities with their causes (like
/// DescribeScalingActivities). 404 when the pool does not autoscale.
#[utoipa::path(get, path = "/v1/pools/{name}/autoscaling", tag = "pools", params(("name" = String, Path)),
    responses((status = 200, body = inferlb_control::scaler::Status), (status = 404, body = ErrorBody)))]
pub(crate) async fn get_autoscaling(
    State(app): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<inferlb_control::scaler::Status>, ApiError> {
    Ok(Json(scaler_of(&app, &name)?.status()))
}

/// Changes `min`, `max` or `target_in_flight` at runtime, or holds the pool
/// as it is with `"suspended": true`. Applied within a second; kept in the
/// state file when one is used.
#[utoipa::path(patch, path = "/v1/pools/{name}/autoscaling", tag = "pools", params(("name" = String, Path)),
    request_body = inferlb_control::scaler::Change,
    responses((status = 200, body = inferlb_control::scaler::Status), (status = 400, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 415, body = ErrorBody)))]
pub(crate) async fn patch_autoscaling(
    State(app): State<AppState>,
    Path(name): Path<String>,
    ApiJson(change): ApiJson<inferlb_control::scaler::Change>,
) -> Result<Json<inferlb_control::scaler::Status>, ApiError> {
    let shared = scaler_of(&app, &name)?;
    let pool = shared.status().pool;
    let pool = parse_pool("name", &pool)?;
    // Planned and applied under the writer's lock: the answer is what was
    // committed, and a concurrent change is not overwritten.
    app.control
        .apply_planned(|state| {
            let (Some(current), Some(config)) = (
                state.scaling(&pool),
                state.pool(&pool).and_then(|p| p.autoscaling.as_deref()),
            ) else {
                return Err(ApiError::NotFound(format!(
                    "pool {pool} does not autoscale"
                )));
            };
            let settings = change.applied_to(current, config).map_err(|problems| {
                ApiError::BadRequest(
                    problems
                        .iter()
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                        .join("; "),
                )
            })?;
            Ok(vec![Command::SetScaling {
                pool: pool.clone(),
                settings,
            }])
        })
        .await??;
    Ok(Json(shared.status()))
}

fn scaler_of(
    app: &AppState,
    name: &str,
) -> Result<std::sync::Arc<inferlb_control::scaler::Shared>, ApiError> {
    let set = app.control.snapshot();
    let index = set
        .pool_named(name)
        .ok_or_else(|| ApiError::NotFound(format!("no pool is named {name:?}")))?;
    let pool = set.pools()[index].name();
    app.control.scalers().get(pool).ok_or_else(|| {
        ApiError::NotFound(format!(
            "pool {pool} does not autoscale: declare [pools.autoscaling] in the config"
        ))
    })
}
