//! `[cors]` over real sockets: preflights answered by the proxy, allowed
//! origins on every answer (the replica's and the proxy's own), the
//! replica's CORS fields replaced, other origins left without them. Both
//! monoio drivers.

mod support;

use inferlb_core::{Config, IoDriver};
use inferlb_testkit::{FakeReplica, RawClient, RawResponse};

both_drivers!(
    preflights_are_answered_by_the_proxy,
    answers_to_allowed_origins_carry_cors_fields,
    any_origin_is_a_star,
    without_cors_a_preflight_goes_to_the_replica,
);

const UI: &str = "https://ui.example.com";

fn cors(toml: &str) -> inferlb_core::config::Cors {
    Config::from_toml(toml).unwrap().proxy.cors.unwrap()
}

fn send(client: &mut RawClient, request: &str) -> RawResponse {
    client.send(request.as_bytes()).unwrap();
    client.read_response().unwrap()
}

fn preflight(origin: &str, method: &str, headers: &str) -> String {
    format!(
        "OPTIONS /v1/chat/completions HTTP/1.1\r\nHost: t\r\nOrigin: {origin}\r\nAccess-Control-Request-Method: {method}\r\nAccess-Control-Request-Headers: {headers}\r\n\r\n"
    )
}

fn preflights_are_answered_by_the_proxy(driver: IoDriver) {
    let replica = FakeReplica::builder().name("r1").start().unwrap();
    let proxy = support::start(driver, &[replica.addr()], |c| {
        c.proxy.cors = Some(cors(&format!(
            "[cors]\nallowed_origins = [\"{UI}\"]\nmax_age_s = 120"
        )))
    });
    let mut client = RawClient::connect(proxy.addr()).unwrap();
    // The OpenAI JS SDK's preflight: Authorization and its own headers.
    let asked = "authorization, content-type, x-stainless-os";
    let resp = send(&mut client, &preflight(UI, "POST", asked));
    assert_eq!(resp.status, 204, "{resp:?}");
    assert_eq!(resp.header("access-control-allow-origin"), Some(UI));
    assert_eq!(resp.header("vary"), Some("Origin"));
    assert_eq!(
        resp.header("access-control-allow-methods"),
        Some("GET, POST, OPTIONS")
    );
    assert_eq!(resp.header("access-control-allow-headers"), Some(asked));
    assert_eq!(resp.header("access-control-max-age"), Some("120"));
    assert_eq!(resp.header("content-length"), None, "a 204 has no body");
    assert!(resp.body.is_empty());
    assert_eq!(replica.counters().requests(), 0, "answered by the proxy");
    // An origin, a method or a header not allowed: 403 in OpenAI's shape,
    // and the connection stays usable.
    for request in [
        preflight("https://evil.example.com", "POST", "content-type"),
        preflight(UI, "DELETE", "content-type"),
    ] {
        let resp = send(&mut client, &request);
        assert_eq!(resp.status, 403, "{request}");
        let error: serde_json::Value = serde_json::from_slice(&resp.body).unwrap();
        assert_eq!(error["error"]["code"], "cors_not_allowed");
        assert_eq!(resp.header("access-control-allow-origin"), None);
    }
    let proxy = support::start(driver, &[replica.addr()], |c| {
        c.proxy.cors = Some(cors(&format!(
            "[cors]\nallowed_origins = [\"{UI}\"]\nallowed_headers = [\"Content-Type\", \"Authorization\"]"
        )))
    });
    let mut client = RawClient::connect(proxy.addr()).unwrap();
    let resp = send(
        &mut client,
        &preflight(UI, "POST", "Authorization,content-type"),
    );
    assert_eq!(resp.status, 204);
    assert_eq!(
        resp.header("access-control-allow-headers"),
        Some("content-type, authorization")
    );
    let resp = send(&mut client, &preflight(UI, "POST", "x-other"));
    assert_eq!(resp.status, 403);
}

fn answers_to_allowed_origins_carry_cors_fields(driver: IoDriver) {
    // A replica with its own (different) CORS policy: the proxy's wins.
    let replica = FakeReplica::builder()
        .name("r1")
        .header("Access-Control-Allow-Origin", "*")
        .start()
        .unwrap();
    let proxy = support::start(driver, &[replica.addr()], |c| {
        c.proxy.cors = Some(cors(&format!(
            "[cors]\nallowed_origins = [\"http://localhost:3000\", \"{UI}\"]\nallow_credentials = true"
        )))
    });
    let mut client = RawClient::connect(proxy.addr()).unwrap();
    let post = |origin: &str| {
        format!("POST /v1/completions HTTP/1.1\r\nHost: t\r\nOrigin: {origin}\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{{}}")
    };
    let resp = send(&mut client, &post(UI));
    assert_eq!(resp.status, 200);
    assert_eq!(resp.header("x-replica"), Some("r1"));
    assert_eq!(resp.header_count("access-control-allow-origin"), 1);
    assert_eq!(resp.header("access-control-allow-origin"), Some(UI));
    assert_eq!(
        resp.header("access-control-allow-credentials"),
        Some("true")
    );
    assert_eq!(
        resp.header("access-control-expose-headers"),
        Some("x-request-id")
    );
    // Another origin: forwarded, without the proxy's fields (the browser
    // keeps the answer from the page); the replica's are dropped all the
    // same, so its policy never widens the proxy's.
    let resp = send(&mut client, &post("https://evil.example.com"));
    assert_eq!(resp.status, 200);
    assert_eq!(resp.header("access-control-allow-origin"), None);
    // The proxy's own answers carry them too: no replica is routable.
    let proxy = support::start(driver, &[], |c| {
        c.proxy.cors = Some(cors(&format!("[cors]\nallowed_origins = [\"{UI}\"]")))
    });
    let mut client = RawClient::connect(proxy.addr()).unwrap();
    let resp = send(&mut client, &post(UI));
    assert_eq!(resp.status, 503);
    assert_eq!(resp.header("access-control-allow-origin"), Some(UI));
}

fn any_origin_is_a_star(driver: IoDriver) {
    let replica = FakeReplica::builder().name("r1").start().unwrap();
    let proxy = support::start(driver, &[replica.addr()], |c| {
        c.proxy.cors = Some(cors("[cors]\nallowed_origins = [\"*\"]"))
    });
    let mut client = RawClient::connect(proxy.addr()).unwrap();
    let resp = send(&mut client, &preflight("null", "GET", "authorization"));
    assert_eq!(resp.status, 204);
    assert_eq!(resp.header("access-control-allow-origin"), Some("*"));
    assert_eq!(
        resp.header("access-control-allow-headers"),
        Some("authorization")
    );
    let resp = send(
        &mut client,
        "GET /v1/models HTTP/1.1\r\nHost: t\r\nOrigin: https://a.example\r\n\r\n",
    );
    assert_eq!(resp.header("access-control-allow-origin"), Some("*"));
    // No Origin: no CORS fields.
    let resp = send(&mut client, "GET / HTTP/1.1\r\nHost: t\r\n\r\n");
    assert_eq!(resp.header("access-control-allow-origin"), None);
}

fn without_cors_a_preflight_goes_to_the_replica(driver: IoDriver) {
    let replica = FakeReplica::builder().name("r1").start().unwrap();
    let proxy = support::start(driver, &[replica.addr()], |_| {});
    let mut client = RawClient::connect(proxy.addr()).unwrap();
    let resp = send(&mut client, &preflight(UI, "POST", "content-type"));
    assert_eq!(resp.header("x-replica"), Some("r1"));
    assert_eq!(replica.counters().requests(), 1);
}
