//! Arbitrary query strings on every route: never a 5xx, never a panic.
//! (A huge `drain_timeout_s` once overflowed the clock and then the RFC 3339
//! formatter, leaving every later listing broken.)

use std::sync::Arc;

use axum::body::Body;
use axum::http::{Method, Request};
use inferlb_admin::{AppState, DataPlane};
use inferlb_control::Control;
use inferlb_core::{Routing, Snapshots, State};
use proptest::prelude::*;
use tower::ServiceExt;

const ROUTES: &[(&str, &str)] = &[
    ("GET", "/v1/replicas"),
    ("PUT", "/v1/replicas"),
    ("POST", "/v1/replicas"),
    ("GET", "/v1/replicas/a"),
    ("DELETE", "/v1/replicas/a"),
    ("PATCH", "/v1/replicas/a"),
    ("GET", "/v1/status"),
    ("GET", "/healthz"),
    ("GET", "/readyz"),
    ("GET", "/metrics"),
    ("GET", "/openapi.json"),
];

/// A query value: numbers of every size, signs, junk and escapes.
fn value() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<u64>().prop_map(|n| n.to_string()),
        any::<i64>().prop_map(|n| n.to_string()),
        "[0-9]{1,40}",
        "[ -~]{0,24}".prop_map(|s| escape(&s)),
        Just("%FF%FE".to_owned()),
        Just("1e309".to_owned()),
    ]
}

/// Percent-encodes all but unreserved characters and `%` (kept, so that
/// broken escapes reach the server too).
fn escape(text: &str) -> String {
    text.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~%".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

fn query() -> impl Strategy<Value = String> {
    let key = prop_oneof![
        Just("drain_timeout_s".to_owned()),
        Just("weight".to_owned()),
        "[a-z_]{1,12}",
    ];
    proptest::collection::vec((key, value()), 0..4).prop_map(|pairs| {
        pairs
            .into_iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("&")
    })
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 256,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn no_query_makes_a_route_fail(route in 0..ROUTES.len(), query in query(), busy in any::<bool>()) {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        runtime.block_on(async move {
            let state = State::new(Routing::RoundRobin);
            let snapshots = Snapshots::new(state.snapshot());
            let control = Arc::new(Control::new(state, snapshots, None));
            let data_plane = DataPlane { workers: 1, io_driver: "io_uring".into(), worker_stats: Vec::new(), front: Default::default() };
            let router = inferlb_admin::router(AppState::new(Arc::clone(&control), data_plane, None, false));
            let add = Request::builder()
                .method(Method::POST)
                .uri("/v1/replicas")
                .header("content-type", "application/json")
                .body(Body::from(r#"{"address": "127.0.0.1:9001", "id": "a"}"#))
                .unwrap();
            router.clone().oneshot(add).await.unwrap();
            // A request in flight keeps a drained replica listed.
            let _busy = busy.then(|| control.snapshot().replicas()[0].stats.start_request());
            let (method, path) = ROUTES[route];
            let request = Request::builder()
                .method(method)
                .uri(format!("{path}?{query}"))
                .header("content-type", "application/json")
                .body(Body::from("{}"))
                .unwrap();
            let status = router.clone().oneshot(request).await.unwrap().status();
            assert!(status.as_u16() < 500, "{method} {path}?{query}: {status}");
            // Whatever happened, the list still answers.
            let list = Request::builder().uri("/v1/replicas").body(Body::empty()).unwrap();
            let status = router.oneshot(list).await.unwrap().status();
            assert!(status.is_success(), "listing after {method} {path}?{query}: {status}");
        });
    }
}
