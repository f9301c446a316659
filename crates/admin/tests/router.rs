//! The admin router without a server: each route, each bad input and its
//! 4xx, token enforcement, and the OpenAPI document kept in step with the
//! routes.

use std::sync::Arc;

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use axum::Router;
use http_body_util::BodyExt;
use inferlb_admin::{AppState, DataPlane};
use inferlb_control::{Control, StateFile};
use inferlb_core::{Routing, Snapshots, State, WorkerStats};
use serde_json::{json, Value};
use tower::ServiceExt;

struct App {
    router: Router,
    control: Arc<Control>,
    state: AppState,
}

fn app_with(token: Option<&str>, store: Option<StateFile>) -> App {
    app_with_probes(token, store, false)
}

fn app_with_probes(token: Option<&str>, store: Option<StateFile>, protect_probes: bool) -> App {
    let state = State::new(Routing::RoundRobin);
    let snapshots = Snapshots::new(state.snapshot());
    let control = Arc::new(Control::new(state, snapshots, store));
    let data_plane = DataPlane {
        workers: 2,
        io_driver: "io_uring".into(),
        worker_stats: vec![
            Arc::new(WorkerStats::default()),
            Arc::new(WorkerStats::default()),
        ],
        front: Default::default(),
    };
    let state = AppState::new(
        Arc::clone(&control),
        data_plane,
        token.map(str::to_owned),
        protect_probes,
    );
    App {
        router: inferlb_admin::router(state.clone()),
        control,
        state,
    }
}

fn app() -> App {
    app_with(None, None)
}

async fn call(app: &App, method: Method, uri: &str, body: Option<Value>) -> (StatusCode, Value) {
    call_raw(
        app,
        method,
        uri,
        body.map(|b| b.to_string()),
        "application/json",
        None,
    )
    .await
}

async fn call_raw(
    app: &App,
    method: Method,
    uri: &str,
    body: Option<String>,
    content_type: &str,
    token: Option<&str>,
) -> (StatusCode, Value) {
    let mut request = Request::builder().method(method).uri(uri);
    if body.is_some() {
        request = request.header("content-type", content_type);
    }
    if let Some(token) = token {
        request = request.header("authorization", format!("Bearer {token}"));
    }
    let request = request
        .body(body.map_or_else(Body::empty, Body::from))
        .unwrap();
    let response = app.router.clone().oneshot(request).await.unwrap();
    let status = response.status();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    let value = serde_json::from_slice(&bytes)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into()));
    (status, value)
}

fn message(value: &Value) -> String {
    value["message"].as_str().unwrap_or_default().to_owned()
}

#[tokio::test]
async fn add_list_patch_and_drain() {
    let app = app();
    let (status, created) = call(
        &app,
        Method::POST,
        "/v1/replicas",
        Some(json!({"address": "127.0.0.1:9001", "weight": 3})),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(created["id"], "127.0.0.1-9001");
    assert_eq!(created["weight"], 3);
    assert_eq!(created["state"], "active");
    for field in ["in_flight", "requests", "errors", "added_at", "address"] {
        assert!(
            created.get(field).is_some(),
            "{field} missing from {created}"
        );
    }
    let (status, _) = call(
        &app,
        Method::POST,
        "/v1/replicas",
        Some(json!({"address": "127.0.0.1:9002", "id": "gpu-b"})),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED);
    let (_, list) = call(&app, Method::GET, "/v1/replicas", None).await;
    assert_eq!(list.as_array().unwrap().len(), 2);

    let (status, patched) = call(
        &app,
        Method::PATCH,
        "/v1/replicas/gpu-b",
        Some(json!({"weight": 10})),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(patched["weight"], 10);

    // An idle replica drains and disappears at once.
    let (status, drained) = call(
        &app,
        Method::DELETE,
        "/v1/replicas/gpu-b?drain_timeout_s=30",
        None,
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    assert_eq!(drained["state"], "draining");
    let (status, _) = call(&app, Method::GET, "/v1/replicas/gpu-b", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(app.control.snapshot().replicas().len(), 1);
}

#[tokio::test]
async fn a_busy_replica_drains_until_idle_and_can_be_taken_back() {
    let app = app();
    call(
        &app,
        Method::POST,
        "/v1/replicas",
        Some(json!({"address": "127.0.0.1:9001", "id": "a"})),
    )
    .await;
    let busy = app.control.snapshot().replicas()[0].stats.start_request();
    let (status, _) = call(&app, Method::DELETE, "/v1/replicas/a", None).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let (_, one) = call(&app, Method::GET, "/v1/replicas/a", None).await;
    assert_eq!(one["state"], "draining");
    assert!(one["drain_deadline"].is_string());
    assert!(!app.control.snapshot().has_routable());

    let (status, back) = call(
        &app,
        Method::PATCH,
        "/v1/replicas/a",
        Some(json!({"state": "active"})),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(back["state"], "active");
    call(
        &app,
        Method::PATCH,
        "/v1/replicas/a",
        Some(json!({"state": "draining"})),
    )
    .await;
    assert_eq!(
        app.control.reap_drained().await.unwrap(),
        0,
        "removed with a request in flight"
    );
    drop(busy);
    assert_eq!(app.control.reap_drained().await.unwrap(), 1);
    assert!(app.control.snapshot().replicas().is_empty());
}

#[tokio::test]
async fn drain_timeouts_outside_an_hour_are_refused_without_harm() {
    let app = app();
    call(
        &app,
        Method::POST,
        "/v1/replicas",
        Some(json!({"address": "127.0.0.1:9001", "id": "a"})),
    )
    .await;
    let _busy = app.control.snapshot().replicas()[0].stats.start_request();
    // These overflowed the clock or the RFC 3339 formatter before.
    for huge in ["18446744073709551615", "300000000000", "3601"] {
        let (status, body) = call(
            &app,
            Method::DELETE,
            &format!("/v1/replicas/a?drain_timeout_s={huge}"),
            None,
        )
        .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{huge}");
        assert!(message(&body).contains("0..=3600"), "{}", message(&body));
    }
    let (status, one) = call(&app, Method::GET, "/v1/replicas/a", None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(one["state"], "active");
    let (status, _) = call(
        &app,
        Method::DELETE,
        "/v1/replicas/a?drain_timeout_s=3600",
        None,
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let (status, listed) = call(&app, Method::GET, "/v1/replicas", None).await;
    assert_eq!(status, StatusCode::OK);
    assert!(listed.to_string().contains("drain_deadline"));
}

#[tokio::test]
async fn a_drain_timeout_evicts_the_replica() {
    let app = app();
    call(
        &app,
        Method::POST,
        "/v1/replicas",
        Some(json!({"address": "127.0.0.1:9001", "id": "a"})),
    )
    .await;
    let stats = Arc::clone(&app.control.snapshot().replicas()[0].stats);
    let _busy = stats.start_request();
    let (status, _) = call(
        &app,
        Method::DELETE,
        "/v1/replicas/a?drain_timeout_s=0",
        None,
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    assert!(app.control.snapshot().replicas().is_empty());
    assert!(stats.is_evicted());
}

#[tokio::test]
async fn put_applies_the_difference() {
    let app = app();
    for (addr, id) in [("127.0.0.1:1", "a"), ("127.0.0.1:2", "b")] {
        call(
            &app,
            Method::POST,
            "/v1/replicas",
            Some(json!({"address": addr, "id": id})),
        )
        .await;
    }
    let body = json!([{"address": "127.0.0.1:1", "id": "a", "weight": 4}, {"address": "127.0.0.1:3", "id": "c"}]);
    let (status, result) = call(&app, Method::PUT, "/v1/replicas", Some(body)).await;
    assert_eq!(status, StatusCode::OK, "{result}");
    assert_eq!(result["added"], json!(["c"]));
    assert_eq!(result["drained"], json!(["b"]));
    assert_eq!(result["updated"], json!(["a"]));
    let ids: Vec<_> = app
        .control
        .snapshot()
        .replicas()
        .iter()
        .map(|r| r.id.to_string())
        .collect();
    assert_eq!(ids, ["a", "c"]);
    // The wrapped form, and idempotence.
    let body = json!({"replicas": [{"address": "127.0.0.1:1", "id": "a", "weight": 4}, {"address": "127.0.0.1:3", "id": "c"}]});
    let (status, result) = call(&app, Method::PUT, "/v1/replicas", Some(body)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(result["added"], json!([]));
    assert_eq!(result["updated"], json!([]));
}

#[tokio::test]
async fn bad_input_gets_a_4xx_that_says_what_is_wrong() {
    let app = app();
    call(
        &app,
        Method::POST,
        "/v1/replicas",
        Some(json!({"address": "127.0.0.1:9001", "id": "a"})),
    )
    .await;
    let cases: Vec<(Method, &str, String, &str, StatusCode, &str)> = vec![
        (
            Method::POST,
            "/v1/replicas",
            json!({"address": "nonsense"}).to_string(),
            "application/json",
            StatusCode::BAD_REQUEST,
            "address",
        ),
        (
            Method::POST,
            "/v1/replicas",
            json!({"address": "127.0.0.1:0"}).to_string(),
            "application/json",
            StatusCode::BAD_REQUEST,
            "port 0",
        ),
        (
            Method::POST,
            "/v1/replicas",
            json!({"address": "127.0.0.1:5", "weight": 1001}).to_string(),
            "application/json",
            StatusCode::BAD_REQUEST,
            "weight",
        ),
        (
            Method::POST,
            "/v1/replicas",
            json!({"address": "127.0.0.1:5", "weight": -1}).to_string(),
            "application/json",
            StatusCode::BAD_REQUEST,
            "weight",
        ),
        (
            Method::POST,
            "/v1/replicas",
            json!({"address": "127.0.0.1:5", "colour": "red"}).to_string(),
            "application/json",
            StatusCode::BAD_REQUEST,
            "colour",
        ),
        (
            Method::POST,
            "/v1/replicas",
            json!({"address": "127.0.0.1:5", "id": "no/slash"}).to_string(),
            "application/json",
            StatusCode::BAD_REQUEST,
            "id",
        ),
        (
            Method::POST,
            "/v1/replicas",
            "{\"address\": ".into(),
            "application/json",
            StatusCode::BAD_REQUEST,
            "JSON",
        ),
        (
            Method::POST,
            "/v1/replicas",
            json!({"weight": 1}).to_string(),
            "application/json",
            StatusCode::BAD_REQUEST,
            "address",
        ),
        (
            Method::POST,
            "/v1/replicas",
            json!({"address": "127.0.0.1:5"}).to_string(),
            "text/plain",
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "JSON",
        ),
        (
            Method::POST,
            "/v1/replicas",
            json!({"address": "127.0.0.1:9001"}).to_string(),
            "application/json",
            StatusCode::CONFLICT,
            "127.0.0.1:9001",
        ),
        (
            Method::POST,
            "/v1/replicas",
            json!({"address": "127.0.0.1:9001", "id": "other"}).to_string(),
            "application/json",
            StatusCode::CONFLICT,
            "address",
        ),
        (
            Method::POST,
            "/v1/replicas",
            json!({"address": "127.0.0.1:7", "id": "a"}).to_string(),
            "application/json",
            StatusCode::CONFLICT,
            "id a",
        ),
        (
            Method::PATCH,
            "/v1/replicas/a",
            json!({}).to_string(),
            "application/json",
            StatusCode::BAD_REQUEST,
            "nothing to change",
        ),
        (
            Method::PATCH,
            "/v1/replicas/a",
            json!({"state": "sleeping"}).to_string(),
            "application/json",
            StatusCode::BAD_REQUEST,
            "state",
        ),
        (
            Method::PATCH,
            "/v1/replicas/a",
            json!({"weight": 2000}).to_string(),
            "application/json",
            StatusCode::BAD_REQUEST,
            "weight",
        ),
        (
            Method::PATCH,
            "/v1/replicas/zz",
            json!({"weight": 2}).to_string(),
            "application/json",
            StatusCode::NOT_FOUND,
            "zz",
        ),
        (
            Method::DELETE,
            "/v1/replicas/zz",
            String::new(),
            "",
            StatusCode::NOT_FOUND,
            "zz",
        ),
        (
            Method::DELETE,
            "/v1/replicas/a?drain_timeout_s=soon",
            String::new(),
            "",
            StatusCode::BAD_REQUEST,
            "drain_timeout_s",
        ),
        (
            Method::PUT,
            "/v1/replicas",
            json!([{"address": "127.0.0.1:1"}, {"address": "127.0.0.1:1"}]).to_string(),
            "application/json",
            StatusCode::BAD_REQUEST,
            "twice",
        ),
    ];
    for (method, uri, body, content_type, status, needle) in cases {
        let body = if body.is_empty() { None } else { Some(body) };
        let (got, value) =
            call_raw(&app, method.clone(), uri, body.clone(), content_type, None).await;
        assert_eq!(got, status, "{method} {uri} {body:?}: {value}");
        assert!(
            message(&value).contains(needle),
            "{method} {uri} {body:?}: message {:?} lacks {needle:?}",
            message(&value)
        );
        assert!(value["error"].is_string());
    }
    let big = json!({"address": "127.0.0.1:5", "id": "x".repeat(70 * 1024)}).to_string();
    let (status, _) = call_raw(
        &app,
        Method::POST,
        "/v1/replicas",
        Some(big),
        "application/json",
        None,
    )
    .await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    // Nothing changed along the way.
    assert_eq!(app.control.snapshot().replicas().len(), 1);
}

#[tokio::test]
async fn the_token_protects_v1_but_not_the_probes() {
    let app = app_with(Some("s3cret"), None);
    let (status, body) = call_raw(&app, Method::GET, "/v1/replicas", None, "", None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(body["error"], "unauthorized");
    let (status, _) = call_raw(&app, Method::GET, "/v1/replicas", None, "", Some("wrong")).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, _) = call_raw(&app, Method::GET, "/v1/replicas", None, "", Some("s3cret")).await;
    assert_eq!(status, StatusCode::OK);
    let body = Some(json!({"address": "127.0.0.1:5"}).to_string());
    let (status, _) = call_raw(
        &app,
        Method::POST,
        "/v1/replicas",
        body,
        "application/json",
        None,
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    for open in ["/healthz", "/readyz", "/metrics"] {
        let (status, _) = call_raw(&app, Method::GET, open, None, "", None).await;
        assert_ne!(status, StatusCode::UNAUTHORIZED, "{open}");
    }
}

/// Sends a GET with the given `Host`.
async fn get_with_host(app: &App, uri: &str, host: &str, token: Option<&str>) -> StatusCode {
    let mut request = Request::builder().uri(uri).header("host", host);
    if let Some(token) = token {
        request = request.header("authorization", format!("Bearer {token}"));
    }
    let request = request.body(Body::empty()).unwrap();
    app.router.clone().oneshot(request).await.unwrap().status()
}

#[tokio::test]
async fn without_a_token_only_loopback_hosts_are_served() {
    // A page that points its own name at 127.0.0.1 (DNS rebinding) sends
    // that name as Host.
    let app = app();
    for path in ["/v1/replicas", "/metrics", "/healthz", "/openapi.json"] {
        assert_eq!(
            get_with_host(&app, path, "evil.example:9090", None).await,
            StatusCode::MISDIRECTED_REQUEST,
            "{path}"
        );
    }
    for host in [
        "127.0.0.1:9090",
        "localhost:9090",
        "[::1]:9090",
        "localhost",
    ] {
        assert_eq!(
            get_with_host(&app, "/v1/replicas", host, None).await,
            StatusCode::OK,
            "{host}"
        );
    }
    // With a token the token is the guard, whatever the name.
    let guarded = app_with(Some("s3cret"), None);
    assert_eq!(
        get_with_host(
            &guarded,
            "/v1/replicas",
            "admin.internal:9090",
            Some("s3cret")
        )
        .await,
        StatusCode::OK
    );
}

#[tokio::test]
async fn protected_probes_protect_the_openapi_document_too() {
    let app = app_with_probes(Some("s3cret"), None, true);
    for path in ["/openapi.json", "/metrics", "/healthz"] {
        let (status, _) = call_raw(&app, Method::GET, path, None, "", None).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{path}");
    }
}

#[tokio::test]
async fn probes_status_and_metrics() {
    let app = app();
    let (status, _) = call(&app, Method::GET, "/healthz", None).await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = call(&app, Method::GET, "/readyz", None).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    call(
        &app,
        Method::POST,
        "/v1/replicas",
        Some(json!({"address": "127.0.0.1:9001", "id": "a"})),
    )
    .await;
    let (status, _) = call(&app, Method::GET, "/readyz", None).await;
    assert_eq!(status, StatusCode::OK);
    // Its only replica unhealthy: routing fails open, but not ready.
    let id = inferlb_core::ReplicaId::new("a").unwrap();
    app.control
        .apply_one(inferlb_core::Command::SetHealth {
            id: id.clone(),
            health: inferlb_core::Health::Unhealthy,
        })
        .await
        .unwrap();
    assert!(app.control.snapshot().has_routable(), "failing open");
    let (status, _) = call(&app, Method::GET, "/readyz", None).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    app.control
        .apply_one(inferlb_core::Command::SetHealth {
            id,
            health: inferlb_core::Health::Healthy,
        })
        .await
        .unwrap();
    let (status, body) = call(&app, Method::GET, "/v1/status", None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["workers"], 2);
    assert_eq!(body["io_driver"], "io_uring");
    assert_eq!(body["routing"], "round_robin");
    assert_eq!(body["generation"], 3, "the add and the two health changes");

    let stats = Arc::clone(&app.control.snapshot().replicas()[0].stats);
    drop(stats.start_request());
    stats.record_response(200);
    stats
        .head_time()
        .record(std::time::Duration::from_millis(30));
    let (status, text) = call(&app, Method::GET, "/metrics", None).await;
    assert_eq!(status, StatusCode::OK);
    let text = text.as_str().unwrap().to_owned();
    for line in [
        "inferlb_replica_requests_total{replica=\"a\",pool=\"default\"} 1",
        "inferlb_replica_responses_total{replica=\"a\",class=\"2xx\",pool=\"default\"} 1",
        "inferlb_replica_in_flight{replica=\"a\",pool=\"default\"} 0",
        "inferlb_replica_connect_errors_total{replica=\"a\",pool=\"default\"} 0",
        "inferlb_replica_response_head_seconds_bucket{replica=\"a\",pool=\"default\",le=\"0.05\"} 1",
        "inferlb_replica_request_duration_seconds_count{replica=\"a\",pool=\"default\"} 0",
        "inferlb_pool_routable_replicas{pool=\"default\"} 1",
        "inferlb_worker_open_connections{worker=\"1\"} 0",
        "inferlb_snapshot_generation 3",
        "inferlb_build_info{version=",
    ] {
        assert!(text.contains(line), "metrics lack {line:?}:\n{text}");
    }
}

#[tokio::test]
async fn openapi_describes_exactly_the_routes() {
    let app = app();
    let doc = serde_json::to_value(inferlb_admin::api::openapi(&app.state)).unwrap();
    let (status, served) = call(&app, Method::GET, "/openapi.json", None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(served, doc);
    let mut documented = Vec::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys() {
            documented.push(format!("{} {path}", method.to_uppercase()));
        }
    }
    documented.sort();
    let expected = [
        "DELETE /v1/replicas/{id}",
        "GET /healthz",
        "GET /metrics",
        "GET /readyz",
        "GET /v1/cluster",
        "GET /v1/pools",
        "GET /v1/pools/{name}",
        "GET /v1/pools/{name}/autoscaling",
        "GET /v1/replicas",
        "GET /v1/replicas/{id}",
        "GET /v1/status",
        "PATCH /v1/pools/{name}/autoscaling",
        "PATCH /v1/replicas/{id}",
        "POST /v1/pools/{name}/replicas",
        "POST /v1/replicas",
        "PUT /v1/replicas",
    ];
    assert_eq!(documented, expected);
    // Every documented route is served (not the fallback 404 for an unknown path).
    for entry in &documented {
        let (method, path) = entry.split_once(' ').unwrap();
        let uri = path.replace("{id}", "nobody");
        let (status, body) = call_raw(&app, method.parse().unwrap(), &uri, None, "", None).await;
        assert_ne!(status, StatusCode::METHOD_NOT_ALLOWED, "{entry}");
        if status == StatusCode::NOT_FOUND {
            assert!(
                !message(&body).contains("no such route"),
                "{entry} is documented but not routed"
            );
        }
    }
    let (status, body) = call(&app, Method::GET, "/v2/nothing", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(message(&body).contains("no such route"));
}

#[tokio::test]
async fn changes_are_on_disk_before_the_answer() {
    let dir = inferlb_testkit::fresh_dir("router");
    let path = dir.join("state.json");
    let _ = std::fs::remove_file(&path);
    let app = app_with(None, Some(StateFile::new(&path)));
    let (status, _) = call(
        &app,
        Method::POST,
        "/v1/replicas",
        Some(json!({"address": "127.0.0.1:9001", "id": "a"})),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED);
    let loaded = StateFile::new(&path)
        .load(Routing::RoundRobin, &Default::default())
        .unwrap()
        .unwrap();
    assert_eq!(loaded.replicas()[0].id.as_str(), "a");
}

#[tokio::test]
async fn health_verdicts_are_published_but_never_written() {
    let dir = inferlb_testkit::fresh_dir("router-health");
    let path = dir.join("state.json");
    let _ = std::fs::remove_file(&path);
    let state = {
        let mut state = State::new(Routing::RoundRobin);
        state
            .apply(inferlb_core::Command::Add(inferlb_core::ReplicaSpec {
                id: inferlb_core::ReplicaId::new("a").unwrap(),
                address: "127.0.0.1:9001".into(),
                addr: "127.0.0.1:9001".parse().unwrap(),
                weight: 1,
                pool: Default::default(),
            }))
            .unwrap();
        state
    };
    let snapshots = Snapshots::new(state.snapshot());
    let control = Control::new(state, snapshots, Some(StateFile::new(&path)));
    let generation = control.snapshot().generation();
    control
        .apply_one(inferlb_core::Command::SetHealth {
            id: inferlb_core::ReplicaId::new("a").unwrap(),
            health: inferlb_core::Health::Unhealthy,
        })
        .await
        .unwrap();
    assert!(
        control.snapshot().generation() > generation,
        "not published"
    );
    assert!(!path.exists(), "a health flip wrote the state file");
}

#[tokio::test]
async fn the_grafana_dashboard_uses_only_served_metrics() {
    let app = app();
    call(
        &app,
        Method::POST,
        "/v1/replicas",
        Some(json!({"address": "127.0.0.1:9001", "id": "a"})),
    )
    .await;
    let (_, text) = call(&app, Method::GET, "/metrics", None).await;
    let text = text.as_str().unwrap().to_owned();
    let dashboard = include_str!("../../../deploy/prometheus/grafana-dashboard.json");
    let doc: Value = serde_json::from_str(dashboard).unwrap();
    let mut checked = 0;
    for panel in doc["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().unwrap() {
            let expr = target["expr"].as_str().unwrap();
            for (start, _) in expr.match_indices("inferlb_") {
                let name: String = expr[start..]
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                assert!(
                    text.contains(&format!("\n{name}")),
                    "the dashboard uses {name}, which /metrics lacks"
                );
                checked += 1;
            }
        }
    }
    assert!(checked >= 10);
}

#[tokio::test]
async fn pools_are_listed_added_to_and_converged() {
    let app = app();
    // A replica added to a pool that does not exist creates it.
    let (status, body) = call(
        &app,
        Method::POST,
        "/v1/pools/llama-3-8b/replicas",
        Some(json!({"address": "127.0.0.1:9101", "id": "l1"})),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["pool"], "llama-3-8b");
    let (status, body) = call(
        &app,
        Method::POST,
        "/v1/replicas",
        Some(json!({"address": "127.0.0.1:9102", "id": "d1"})),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(body["pool"], "default");
    let (status, pools) = call(&app, Method::GET, "/v1/pools", None).await;
    assert_eq!(status, StatusCode::OK);
    let names: Vec<&str> = pools
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["llama-3-8b", "default"]);
    assert_eq!(pools[1]["default"], true);
    assert_eq!(pools[0]["replicas"][0]["id"], "l1");
    assert_eq!(pools[0]["routable"], 1);

    // The body and the path must agree; a bad pool name is a 400.
    let (status, body) = call(
        &app,
        Method::POST,
        "/v1/pools/llama-3-8b/replicas",
        Some(json!({"address": "127.0.0.1:9103", "pool": "other"})),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(message(&body).contains("path names llama-3-8b"), "{body}");
    let (status, body) = call(
        &app,
        Method::POST,
        "/v1/replicas",
        Some(json!({"address": "127.0.0.1:9103", "pool": "a/b"})),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(message(&body).contains("replica.pool"), "{body}");
    let (status, _) = call(&app, Method::GET, "/v1/pools/nope", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    // PUT with pools: declarations converge, replicas move between pools.
    let (status, body) = call(
        &app,
        Method::PUT,
        "/v1/replicas",
        Some(json!({
            "replicas": [{"address": "127.0.0.1:9102", "id": "d1"}],
            "pools": [{
                "name": "llama-3-8b",
                "aliases": ["meta-llama/Meta-Llama-3-8B-Instruct"],
                "routing": "prefix",
                "replicas": [{"address": "127.0.0.1:9101", "id": "l1"}, {"address": "127.0.0.1:9104", "id": "l2"}],
            }],
        })),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["added"], json!(["l2"]));
    let (status, _) = call(
        &app,
        Method::GET,
        "/v1/pools/meta-llama/Meta-Llama-3-8B-Instruct",
        None,
    )
    .await;
    assert_eq!(
        status,
        StatusCode::NOT_FOUND,
        "an alias with / is not a path segment"
    );
    let (_, pool) = call(&app, Method::GET, "/v1/pools/llama-3-8b", None).await;
    assert_eq!(pool["routing"], "prefix");
    assert_eq!(pool["declared"], true);
    assert_eq!(
        pool["aliases"],
        json!(["meta-llama/Meta-Llama-3-8B-Instruct"])
    );
    assert_eq!(pool["replicas"].as_array().unwrap().len(), 2);
    // An alias another pool claims is a conflict, and nothing changes.
    let (status, body) = call(
        &app,
        Method::PUT,
        "/v1/replicas",
        Some(json!({"pools": [
            {"name": "a", "aliases": ["x"]},
            {"name": "b", "aliases": ["x"]},
        ]})),
    )
    .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    let (_, pools) = call(&app, Method::GET, "/v1/pools", None).await;
    assert_eq!(pools.as_array().unwrap().len(), 2);
}

#[tokio::test]
async fn pools_persist_in_the_state_file() {
    let dir = inferlb_testkit::fresh_dir("pools");
    let path = dir.join("state.json");
    let app = app_with(None, Some(StateFile::new(&path)));
    let (status, _) = call(
        &app,
        Method::PUT,
        "/v1/replicas",
        Some(json!({"pools": [{
            "name": "m", "aliases": ["org/m"], "routing": "least_load",
            "served_model_name": "org/m",
            "replicas": [{"address": "127.0.0.1:9201", "id": "m1"}],
        }]})),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let (_, pools) = call(&app, Method::GET, "/v1/pools", None).await;
    let listed = pools
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "m")
        .unwrap();
    assert_eq!(listed["served_model_name"], "org/m");
    let state = StateFile::new(&path)
        .load(Routing::RoundRobin, &Default::default())
        .unwrap()
        .unwrap();
    let pool = state.pools().first().unwrap();
    assert_eq!(pool.name.as_str(), "m");
    assert_eq!(pool.aliases, ["org/m"]);
    assert_eq!(pool.served_name(), "org/m");
    assert_eq!(pool.routing, Some(Routing::LeastLoad));
    assert_eq!(state.replicas()[0].pool.as_str(), "m");
}
