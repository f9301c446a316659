//! The admin API's router: every route with its OpenAPI document (one
//! list, so they cannot drift apart), the probes, and the status route.

use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use utoipa::{OpenApi, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::app::{AppState, MAX_BODY};
use crate::auth::{authorized, require_loopback_host, require_token};
use crate::error::{ApiError, ErrorBody};
use crate::replicas::{
    __path_add_replica, __path_delete_replica, __path_get_replica, __path_list_replicas,
    __path_patch_replica, __path_replace_replicas, add_replica, delete_replica, get_replica,
    list_replicas, patch_replica, replace_replicas,
};

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

/// Readiness: 200 only while at least one replica is healthy and routable;
/// 503 while none is, failing open included (requests are then sent to
/// replicas that fail their checks).
#[utoipa::path(get, path = "/readyz", tag = "probes",
    responses((status = 200, description = "a replica is routable"), (status = 503, description = "none is")))]
async fn readyz(State(app): State<AppState>) -> Response {
    if app.control.snapshot().has_healthy() {
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

/// The documented routes and the OpenAPI document describing them; both
/// come from the same `routes!` lists, so they cannot drift apart.
fn routers(app: &AppState) -> (Router<AppState>, Router<AppState>, utoipa::openapi::OpenApi) {
    let (v1, mut doc) = OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(list_replicas, add_replica, replace_replicas))
        .routes(routes!(get_replica, delete_replica, patch_replica))
        .routes(routes!(status))
        .routes(routes!(crate::cluster::get_cluster))
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
    let v1 = v1
        .layer(middleware::from_fn_with_state(
            app.clone(),
            crate::cluster::mark_stale,
        ))
        .layer(middleware::from_fn_with_state(app.clone(), require_token));
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
