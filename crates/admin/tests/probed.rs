//! Defects found by probing the admin API, each pinned: a misspelled `PUT`
//! that drained everything, a `PUT` that deleted an autoscaling pool,
//! answers that said "nothing changed" after something did (a state file
//! that fails mid-route), autoscaling changes outside the config's rules,
//! path-segment ids, the bearer scheme's case, `Host` tricks, and routes
//! mapped by probing without the token.

use std::sync::Arc;

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use axum::Router;
use http_body_util::BodyExt;
use inferlb_admin::{AppState, DataPlane};
use inferlb_control::{Control, Declared, StateFile};
use inferlb_core::{
    Command, PoolAutoscaling, PoolName, PoolSpec, Provider, ReplicaState, Routing, Snapshots, State,
};
use serde_json::{json, Value};
use tower::ServiceExt;

struct App {
    router: Router,
    control: Arc<Control>,
    /// Stops the pools' scalers when the test ends.
    _stop: tokio::sync::watch::Sender<bool>,
}

/// A pool that scales itself between 0 and 4 replicas on 4 ports (none is
/// ever started: nothing is sent to it).
fn autoscaling_pool() -> PoolSpec {
    let mut spec = PoolSpec::named(PoolName::new("auto").unwrap());
    let mut scaling = PoolAutoscaling::new(Provider::Exec {
        command: vec!["/bin/false".into()],
        env: Vec::new(),
    });
    scaling.max = 4;
    scaling.ports = (20000, 20003);
    spec.autoscaling = Some(Arc::new(scaling));
    spec
}

async fn app_with(token: Option<&str>, store: Option<StateFile>) -> App {
    let pool = autoscaling_pool();
    let mut state = State::new(Routing::RoundRobin);
    state
        .apply(Command::SetPool(Box::new(pool.clone())))
        .unwrap();
    let snapshots = Snapshots::new(state.snapshot());
    let control = Arc::new(Control::new(state, snapshots, store));
    control.set_declared(Declared {
        replicas: Vec::new(),
        pools: vec![pool],
    });
    let (stop, stopped) = tokio::sync::watch::channel(false);
    inferlb_control::scaler::spawn_all(&control, &stopped).await;
    let data_plane = DataPlane {
        workers: 1,
        io_driver: "io_uring".into(),
        worker_stats: Vec::new(),
        front: Default::default(),
    };
    let app = AppState::new(
        Arc::clone(&control),
        data_plane,
        token.map(str::to_owned),
        false,
    );
    App {
        router: inferlb_admin::router(app),
        control,
        _stop: stop,
    }
}

async fn send(app: &App, request: Request<Body>) -> (StatusCode, Value) {
    let response = app.router.clone().oneshot(request).await.unwrap();
    let status = response.status();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    let value = serde_json::from_slice(&bytes)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into()));
    (status, value)
}

async fn call(app: &App, method: Method, uri: &str, body: Option<Value>) -> (StatusCode, Value) {
    let mut request = Request::builder().method(method).uri(uri);
    if body.is_some() {
        request = request.header("content-type", "application/json");
    }
    let body = body.map_or_else(Body::empty, |b| Body::from(b.to_string()));
    send(app, request.body(body).unwrap()).await
}

fn message(value: &Value) -> String {
    value["message"].as_str().unwrap_or_default().to_owned()
}

async fn add(app: &App, id: &str, port: u16) {
    let (status, body) = call(
        app,
        Method::POST,
        "/v1/replicas",
        Some(json!({"address": format!("127.0.0.1:{port}"), "id": id})),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
}

#[tokio::test]
async fn a_put_with_an_unknown_key_is_refused_and_drains_nothing() {
    let app = app_with(None, None).await;
    add(&app, "a", 9001).await;
    for body in [
        json!({}),
        json!({"replica": [{"address": "127.0.0.1:9001"}]}),
        json!({"pool": [{"name": "x"}]}),
        json!({"replicas": [], "extra": 1}),
        json!("replicas"),
    ] {
        let (status, answer) = call(&app, Method::PUT, "/v1/replicas", Some(body.clone())).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}: {answer}");
        let text = message(&answer);
        if let Some(key) = body.as_object().and_then(|o| {
            o.keys()
                .find(|k| *k != "replicas" && *k != "pools")
                .cloned()
        }) {
            assert!(
                text.contains(&key),
                "{body}: the answer names no field: {text}"
            );
        }
        let snapshot = app.control.snapshot();
        let a = &snapshot.replicas()[0];
        assert_eq!(a.state, ReplicaState::Active, "{body} drained a replica");
    }
}

#[tokio::test]
async fn a_put_cannot_delete_a_pool_the_config_declares_with_autoscaling() {
    let app = app_with(None, None).await;
    for pools in [json!([]), json!([{"name": "other"}])] {
        let (status, answer) = call(
            &app,
            Method::PUT,
            "/v1/replicas",
            Some(json!({"replicas": [], "pools": pools})),
        )
        .await;
        assert_eq!(status, StatusCode::CONFLICT, "{answer}");
        assert!(message(&answer).contains("auto"), "{answer}");
    }
    assert!(app.control.snapshot().pool_named("auto").is_some());
    // Listed, the pool may be re-declared (aliases, routing).
    let (status, answer) = call(
        &app,
        Method::PUT,
        "/v1/replicas",
        Some(json!({"pools": [{"name": "auto", "aliases": ["auto-model"]}]})),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert!(app.control.snapshot().pool_named("auto-model").is_some());
}

#[tokio::test]
async fn autoscaling_changes_follow_the_configs_rules() {
    let app = app_with(None, None).await;
    let uri = "/v1/pools/auto/autoscaling";
    for (change, field) in [
        (json!({"max": 5}), "max"),
        (json!({"max": 0}), "max"),
        (json!({"min": 3, "max": 2}), "min"),
        (json!({"target_in_flight": 0}), "target_in_flight"),
        (json!({"target_in_flight": 1e12}), "target_in_flight"),
    ] {
        let (status, answer) = call(&app, Method::PATCH, uri, Some(change.clone())).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{change}: {answer}");
        assert!(message(&answer).contains(field), "{change}: {answer}");
    }
    let (status, answer) = call(&app, Method::PATCH, uri, Some(json!({"max": 4, "min": 1}))).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(
        (answer["min"].as_u64(), answer["max"].as_u64()),
        (Some(1), Some(4))
    );
    // Two changes of different fields: neither is lost.
    call(&app, Method::PATCH, uri, Some(json!({"suspended": true}))).await;
    let (_, answer) = call(&app, Method::GET, uri, None).await;
    assert_eq!(answer["suspended"], true);
    assert_eq!(answer["min"], 1);
}

/// A state file whose saves fail: its path is a directory, so the rename
/// that makes a save durable fails, whatever the process's privileges.
fn failing_store(dir: &std::path::Path) -> StateFile {
    let path = dir.join("state.json");
    std::fs::create_dir_all(path.join("occupied")).unwrap();
    StateFile::new(path)
}

#[tokio::test]
async fn a_failing_state_file_answers_5xx_only_when_nothing_changed() {
    let dir = inferlb_testkit::fresh_dir("probed-failing-store");
    let app = app_with(None, Some(failing_store(&dir))).await;
    let generation = app.control.snapshot().generation();

    let (status, _) = call(
        &app,
        Method::POST,
        "/v1/replicas",
        Some(json!({"address": "127.0.0.1:9001", "id": "a"})),
    )
    .await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
    assert!(app.control.snapshot().replicas().is_empty());

    let (status, _) = call(
        &app,
        Method::PUT,
        "/v1/replicas",
        Some(json!([{"address": "127.0.0.1:9001", "id": "a"}])),
    )
    .await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
    assert!(app.control.snapshot().replicas().is_empty());

    let (status, _) = call(
        &app,
        Method::PATCH,
        "/v1/pools/auto/autoscaling",
        Some(json!({"max": 2})),
    )
    .await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
    let (_, answer) = call(&app, Method::GET, "/v1/pools/auto/autoscaling", None).await;
    assert_eq!(answer["max"], 4, "the refused change shows: {answer}");
    assert_eq!(app.control.snapshot().generation(), generation);

    // A replica the scaler starts is its own, never written: it joins even
    // when the disk refuses every write.
    let mut started = inferlb_core::ReplicaSpec::of(&inferlb_core::Replica::new(
        inferlb_core::ReplicaId::new("auto-0").unwrap(),
        "127.0.0.1:20000".into(),
        "127.0.0.1:20000".parse().unwrap(),
        1,
    ));
    started.pool = PoolName::new("auto").unwrap();
    app.control
        .apply_one(Command::Admit(started))
        .await
        .unwrap();
    assert_eq!(app.control.snapshot().replicas().len(), 1);
}

#[tokio::test]
async fn a_drain_and_the_removal_of_an_idle_replica_are_one_change() {
    let dir = inferlb_testkit::fresh_dir("probed-drain");
    let path = dir.join("state.json");
    let app = app_with(None, Some(StateFile::new(&path))).await;
    add(&app, "a", 9001).await;
    add(&app, "b", 9002).await;
    // The disk fails from now on: the DELETE and the PUT change nothing and
    // say so.
    std::fs::remove_file(&path).unwrap();
    std::fs::create_dir_all(path.join("occupied")).unwrap();
    let (status, _) = call(&app, Method::DELETE, "/v1/replicas/a", None).await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
    let (status, _) = call(&app, Method::PUT, "/v1/replicas", Some(json!([]))).await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
    let (status, _) = call(
        &app,
        Method::PATCH,
        "/v1/replicas/a",
        Some(json!({"weight": 7, "state": "draining"})),
    )
    .await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
    let (status, _) = call(
        &app,
        Method::POST,
        "/v1/pools/other/replicas",
        Some(json!({"address": "127.0.0.1:9003"})),
    )
    .await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
    let snapshot = app.control.snapshot();
    assert_eq!(snapshot.replicas().len(), 2);
    assert!(snapshot
        .replicas()
        .iter()
        .all(|r| r.state == ReplicaState::Active && r.weight == 1));
    // It works again: both answers are true to the final state.
    std::fs::remove_dir_all(&path).unwrap();
    let (status, answer) = call(&app, Method::DELETE, "/v1/replicas/a", None).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{answer}");
    let (status, answer) = call(&app, Method::PUT, "/v1/replicas", Some(json!([]))).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(answer["drained"], json!(["b"]));
    assert!(app.control.snapshot().replicas().is_empty());
}

#[tokio::test]
async fn path_segment_ids_are_refused() {
    let app = app_with(None, None).await;
    for id in [".", ".."] {
        let (status, answer) = call(
            &app,
            Method::POST,
            "/v1/replicas",
            Some(json!({"address": "127.0.0.1:9001", "id": id})),
        )
        .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{id}: {answer}");
    }
}

async fn get_with(app: &App, uri: &str, headers: &[(&str, &str)]) -> StatusCode {
    let mut request = Request::builder().method(Method::GET).uri(uri);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    send(app, request.body(Body::empty()).unwrap()).await.0
}

#[tokio::test]
async fn the_bearer_scheme_is_case_insensitive() {
    let app = app_with(Some("s3cret"), None).await;
    for value in [
        "Bearer s3cret",
        "bearer s3cret",
        "BEARER s3cret",
        "Bearer  s3cret",
    ] {
        let status = get_with(&app, "/v1/replicas", &[("authorization", value)]).await;
        assert_eq!(status, StatusCode::OK, "{value}");
    }
    for value in ["Bearer s3cre", "Basic s3cret", "Bearers3cret", "s3cret"] {
        let status = get_with(&app, "/v1/replicas", &[("authorization", value)]).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{value}");
    }
}

#[tokio::test]
async fn without_a_token_two_hosts_or_an_absolute_target_are_misdirected() {
    let app = app_with(None, None).await;
    let status = get_with(
        &app,
        "/v1/replicas",
        &[("host", "127.0.0.1"), ("host", "evil.example")],
    )
    .await;
    assert_eq!(status, StatusCode::MISDIRECTED_REQUEST);
    let status = get_with(
        &app,
        "/v1/replicas",
        &[("host", "127.0.0.1"), ("host", "127.0.0.1")],
    )
    .await;
    assert_eq!(status, StatusCode::MISDIRECTED_REQUEST);
    let status = get_with(
        &app,
        "http://evil.example/v1/replicas",
        &[("host", "127.0.0.1")],
    )
    .await;
    assert_eq!(status, StatusCode::MISDIRECTED_REQUEST);
    let status = get_with(&app, "/v1/replicas", &[("host", "localhost:9090")]).await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn with_a_token_unknown_v1_routes_answer_401_before_404() {
    let app = app_with(Some("s3cret"), None).await;
    for uri in ["/v1/nothing", "/v1/replicas/a/b/c", "/v1"] {
        assert_eq!(
            get_with(&app, uri, &[]).await,
            StatusCode::UNAUTHORIZED,
            "{uri}"
        );
        let status = get_with(&app, uri, &[("authorization", "Bearer s3cret")]).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{uri}");
    }
    // Outside /v1 (no API there), and without a token, 404 as before.
    assert_eq!(get_with(&app, "/nothing", &[]).await, StatusCode::NOT_FOUND);
    let open = app_with(None, None).await;
    assert_eq!(
        get_with(&open, "/v1/nothing", &[]).await,
        StatusCode::NOT_FOUND
    );
}
