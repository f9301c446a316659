//! The edge: TLS termination and HTTP/2 from clients, with clients nobody
//! here wrote (curl over HTTP/1.1 and HTTP/2, `openssl s_client`), on both
//! monoio drivers. The Python HTTP/2 clients (abuse, httpx, the openai SDK)
//! are in `edge_python.rs`.

#[path = "support/certs.rs"]
mod certs;
mod support;

use std::net::SocketAddr;
use std::process::Command;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use inferlb_core::config::{CertificateFiles, Listener, Protocol, Tls};
use inferlb_core::{HandshakeError, IoDriver};
use inferlb_testkit::{eventually, fresh_dir, FakeReplica, Scratch};

use certs::{Ca, Leaf};

both_drivers!(
    tls_serves_http1_and_http2_with_the_certificate_the_client_names,
    h2c_with_prior_knowledge_streams_through_the_same_path,
    unknown_names_get_the_first_certificate_or_are_refused,
    resumption_and_versions,
    client_certificates_are_required_with_a_client_ca,
    a_silent_client_is_dropped_at_the_handshake_timeout,
    sighup_reload_swaps_certificates_and_keeps_them_when_the_new_files_are_bad,
    a_pool_with_upstream_tls_reaches_its_replicas_over_verified_tls,
    a_stop_lets_http2_streams_finish,
    alpn_without_h2_keeps_a_listener_on_http1,
);

/// A CA, an ECDSA certificate for `api.test` and an RSA one for
/// `other.test`, in a scratch directory.
struct Pki {
    dir: Scratch,
    ca: Ca,
    api: Leaf,
    other: Leaf,
}

fn pki() -> Pki {
    // Tests run in parallel in one process: each gets its own directory.
    static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let dir = fresh_dir(&format!("edge{}", NEXT.fetch_add(1, Ordering::Relaxed)));
    let ca = Ca::new(&dir, "edge");
    let api = ca.leaf(&dir, "api", &["api.test", "localhost"]);
    let other = ca.rsa_leaf(&dir, "other", &["other.test"]);
    Pki {
        dir,
        ca,
        api,
        other,
    }
}

fn tls(leaves: &[&Leaf]) -> Tls {
    Tls {
        certificates: leaves
            .iter()
            .map(|l| CertificateFiles {
                cert: l.cert.clone(),
                key: l.key.clone(),
            })
            .collect(),
        client_ca: None,
        refuse_unknown_server_name: false,
    }
}

/// A proxy with a TLS listener first and a plaintext one second.
fn start(driver: IoDriver, replica: SocketAddr, tls: Tls) -> support::Proxy {
    support::start(driver, &[replica], |c| {
        c.proxy.listeners = vec![
            Listener {
                address: "127.0.0.1:0".parse().unwrap(),
                tls: Some(tls),
                alpn: vec![Protocol::H2, Protocol::Http1],
            },
            Listener::plain("127.0.0.1:0".parse().unwrap()),
        ];
        c.proxy.timeouts.tls_handshake = Duration::from_millis(300);
    })
}

/// What curl saw: the status, the HTTP version, the body.
struct Curled {
    status: u16,
    version: String,
    body: String,
    ok: bool,
}

/// Runs curl with `args` and reports the status and version it saw.
fn curl(args: &[&str]) -> Curled {
    let out = Command::new("curl")
        .args([
            "-sS",
            "--max-time",
            "10",
            "-w",
            "\n%{http_code} %{http_version}",
        ])
        .args(args)
        .output()
        .expect("these tests need curl");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, tail) = text.rsplit_once('\n').unwrap_or(("", &text));
    let mut tail = tail.split(' ');
    Curled {
        status: tail.next().and_then(|s| s.parse().ok()).unwrap_or(0),
        version: tail.next().unwrap_or("").to_owned(),
        body: body.to_owned(),
        ok: out.status.success(),
    }
}

/// `https://NAME:PORT/PATH` resolved to the proxy, trusting the test CA.
fn https_args(pki: &Pki, name: &str, addr: SocketAddr, path: &str) -> Vec<String> {
    vec![
        "--cacert".into(),
        pki.ca.pem.display().to_string(),
        "--resolve".into(),
        format!("{name}:{}:127.0.0.1", addr.port()),
        format!("https://{name}:{}{path}", addr.port()),
    ]
}

fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

/// Runs `openssl s_client` against `addr` with `args`, sends one request
/// that asks the proxy to close, and reads until it does (so TLS 1.3
/// session tickets, sent after the handshake, arrive); returns the output.
fn s_client(addr: SocketAddr, args: &[&str]) -> String {
    use std::io::Write;
    let mut child = Command::new("openssl")
        .args(["s_client", "-ign_eof", "-connect", &addr.to_string()])
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("these tests need the openssl command");
    let mut stdin = child.stdin.take().unwrap();
    let _ = stdin.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    drop(stdin);
    let out = child.wait_with_output().unwrap();
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// The subject line of the certificate `s_client` was served.
fn served_subject(output: &str) -> String {
    output
        .lines()
        .find(|l| l.starts_with("subject="))
        .unwrap_or("")
        .to_owned()
}

fn handshake_errors(proxy: &support::Proxy, kind: HandshakeError) -> u64 {
    let edge = &proxy.handle.front_end().edge;
    edge.handshake_errors()
        .iter()
        .find(|(k, _)| *k == kind)
        .map_or(0, |(_, n)| *n)
}

fn tls_serves_http1_and_http2_with_the_certificate_the_client_names(driver: IoDriver) {
    let pki = pki();
    let replica = FakeReplica::builder().name("r1").echo().start().unwrap();
    let proxy = start(driver, replica.addr(), tls(&[&pki.api, &pki.other]));
    let tls_addr = proxy.handle.local_addrs()[0];

    // curl offers h2 and http/1.1; the proxy prefers h2.
    let got = curl(&strs(&https_args(&pki, "api.test", tls_addr, "/v1/x")));
    assert!(got.ok, "curl failed");
    assert_eq!((got.status, got.version.as_str()), (200, "2"));
    let seen = replica.counters().last_request().unwrap();
    assert_eq!(seen.header("x-forwarded-proto"), Some("https"));
    assert_eq!(
        seen.header("host"),
        Some(&*format!("api.test:{}", tls_addr.port()))
    );

    // HTTP/1.1 over TLS, with a body: the replica echoes it.
    let mut args = https_args(&pki, "other.test", tls_addr, "/v1/echo");
    args.extend(["--http1.1", "-d", "hello over tls"].map(String::from));
    let got = curl(&strs(&args));
    assert_eq!((got.status, got.version.as_str()), (200, "1.1"));
    assert!(got.body.contains("hello over tls"), "{}", got.body);

    // A chunked HTTP/2 upload (no content-length) arrives whole.
    let body = pki.dir.join("body");
    std::fs::write(&body, "x".repeat(200_000)).unwrap();
    let mut args = https_args(&pki, "api.test", tls_addr, "/v1/echo");
    let upload = format!("@{}", body.display());
    args.extend(["-H", "Transfer-Encoding: chunked", "--data-binary", &upload].map(String::from));
    let got = curl(&strs(&args));
    assert_eq!((got.status, got.version.as_str()), (200, "2"));
    assert_eq!(replica.counters().last_request().unwrap().body_len, 200_000);

    // SNI picks the certificate: ECDSA for api.test, RSA for other.test.
    let api = s_client(tls_addr, &["-servername", "api.test"]);
    assert!(served_subject(&api).contains("api.test"), "{api}");
    let other = s_client(tls_addr, &["-servername", "other.test"]);
    assert!(served_subject(&other).contains("other.test"), "{other}");
    assert!(
        other.contains("RSA") || other.contains("rsaEncryption"),
        "{other}"
    );
    // ALPN as offered.
    let h2 = s_client(
        tls_addr,
        &["-servername", "api.test", "-alpn", "h2,http/1.1"],
    );
    assert!(h2.contains("ALPN protocol: h2"), "{h2}");
    let edge = &proxy.handle.front_end().edge;
    assert!(edge.h2_streams.load(Ordering::Relaxed) >= 2);
}

fn h2c_with_prior_knowledge_streams_through_the_same_path(driver: IoDriver) {
    let pki = pki();
    let replica = FakeReplica::builder()
        .name("r1")
        .tokens(5, Duration::from_millis(20))
        .start()
        .unwrap();
    let proxy = start(driver, replica.addr(), tls(&[&pki.api]));
    let plain = proxy.handle.local_addrs()[1];
    let url = format!("http://{plain}/v1/chat/completions");
    // A streamed response arrives as it is produced (SSE over h2c).
    let started = Instant::now();
    let json = "content-type: application/json";
    let got = curl(&[
        "--http2-prior-knowledge",
        "-N",
        &url,
        "-H",
        json,
        "-d",
        "{}",
    ]);
    assert_eq!((got.status, got.version.as_str()), (200, "2"));
    assert_eq!(got.body.matches("\"tok").count(), 5, "{}", got.body);
    assert!(started.elapsed() >= Duration::from_millis(80));
    // HTTP/1.1 on the same listener is unchanged, and X-Forwarded-Proto
    // says http.
    let got = curl(&["--http1.1", &url, "-H", json, "-d", "{}"]);
    assert_eq!((got.status, got.version.as_str()), (200, "1.1"));
    assert_eq!(
        replica
            .counters()
            .last_request()
            .unwrap()
            .header("x-forwarded-proto"),
        Some("http")
    );
    // The proxy's own answers (a model listing, an error) come over h2 too.
    let got = curl(&[
        "--http2-prior-knowledge",
        &format!("http://{plain}/v1/models"),
    ]);
    assert_eq!((got.status, got.version.as_str()), (200, "2"));
    let got = curl(&["--http2-prior-knowledge", &url, "-d", "not json"]);
    assert_eq!(got.status, 415, "{}", got.body);
    assert!(got.body.contains("\"error\""), "{}", got.body);
}

fn unknown_names_get_the_first_certificate_or_are_refused(driver: IoDriver) {
    let pki = pki();
    let replica = FakeReplica::builder().name("r1").start().unwrap();
    let proxy = start(driver, replica.addr(), tls(&[&pki.api, &pki.other]));
    let addr = proxy.handle.local_addrs()[0];
    let unknown = s_client(addr, &["-servername", "nobody.test"]);
    assert!(served_subject(&unknown).contains("api.test"), "{unknown}");
    drop(proxy);

    let mut strict = tls(&[&pki.api, &pki.other]);
    strict.refuse_unknown_server_name = true;
    let proxy = start(driver, replica.addr(), strict);
    let addr = proxy.handle.local_addrs()[0];
    let refused = s_client(addr, &["-servername", "nobody.test"]);
    assert!(served_subject(&refused).is_empty(), "{refused}");
    assert!(eventually(Duration::from_secs(5), || {
        handshake_errors(&proxy, HandshakeError::UnknownServerName) == 1
    }));
    // Known names still work.
    let ok = s_client(addr, &["-servername", "other.test"]);
    assert!(served_subject(&ok).contains("other.test"), "{ok}");
}

fn resumption_and_versions(driver: IoDriver) {
    let pki = pki();
    let replica = FakeReplica::builder().name("r1").start().unwrap();
    let proxy = start(driver, replica.addr(), tls(&[&pki.api]));
    let addr = proxy.handle.local_addrs()[0];
    let session = pki.dir.join("session.pem");
    let session = session.to_str().unwrap();
    for version in ["-tls1_3", "-tls1_2"] {
        let first = s_client(
            addr,
            &[version, "-servername", "api.test", "-sess_out", session],
        );
        assert!(first.contains("New,"), "{first}");
        let again = s_client(
            addr,
            &[version, "-servername", "api.test", "-sess_in", session],
        );
        assert!(again.contains("Reused,"), "{version}: {again}");
    }
    // TLS 1.1 and older are refused.
    let old = s_client(addr, &["-tls1_1", "-servername", "api.test"]);
    assert!(served_subject(&old).is_empty(), "{old}");
    let edge = &proxy.handle.front_end().edge;
    let handshakes = edge.handshakes();
    let resumed = |version: &str| {
        handshakes
            .iter()
            .filter(|(h, _)| h.resumed && h.version == version && h.cipher.starts_with("TLS"))
            .map(|(_, n)| n)
            .sum::<u64>()
    };
    assert!(
        resumed("TLSv1.3") >= 1 && resumed("TLSv1.2") >= 1,
        "{handshakes:?}"
    );
    assert!(eventually(Duration::from_secs(5), || {
        handshake_errors(&proxy, HandshakeError::Protocol) >= 1
    }));
}

fn client_certificates_are_required_with_a_client_ca(driver: IoDriver) {
    let pki = pki();
    let clients = Ca::new(&pki.dir, "clients");
    let client = clients.leaf(&pki.dir, "client", &["client.test"]);
    let replica = FakeReplica::builder().name("r1").start().unwrap();
    let mut settings = tls(&[&pki.api]);
    settings.client_ca = Some(clients.pem.clone());
    let proxy = start(driver, replica.addr(), settings);
    let addr = proxy.handle.local_addrs()[0];
    let without = curl(&strs(&https_args(&pki, "api.test", addr, "/")));
    assert!(!without.ok && without.status == 0);
    let mut args = https_args(&pki, "api.test", addr, "/");
    args.extend([
        "--cert".to_owned(),
        client.cert.display().to_string(),
        "--key".to_owned(),
        client.key.display().to_string(),
    ]);
    let with = curl(&strs(&args));
    assert_eq!(with.status, 200);
    assert!(eventually(Duration::from_secs(5), || {
        handshake_errors(&proxy, HandshakeError::ClientCertificate) >= 1
    }));
}

fn a_silent_client_is_dropped_at_the_handshake_timeout(driver: IoDriver) {
    use std::io::Read;
    let pki = pki();
    let replica = FakeReplica::builder().name("r1").start().unwrap();
    let proxy = start(driver, replica.addr(), tls(&[&pki.api]));
    let addr = proxy.handle.local_addrs()[0];
    let mut silent = std::net::TcpStream::connect(addr).unwrap();
    silent
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let started = Instant::now();
    let n = silent.read(&mut [0u8; 16]).unwrap_or(0);
    assert_eq!(n, 0, "closed without a byte");
    assert!(started.elapsed() < Duration::from_secs(3));
    assert!(eventually(Duration::from_secs(5), || {
        handshake_errors(&proxy, HandshakeError::Timeout) == 1
    }));
    // A plaintext request on the TLS port is a protocol error, counted.
    let _ = inferlb_testkit::send_raw(addr, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    assert!(eventually(Duration::from_secs(5), || {
        handshake_errors(&proxy, HandshakeError::Protocol) == 1
    }));
}

fn sighup_reload_swaps_certificates_and_keeps_them_when_the_new_files_are_bad(driver: IoDriver) {
    let pki = pki();
    let replica = FakeReplica::builder().name("r1").start().unwrap();
    // The listener reads api.pem/api.key; a reload reads them again.
    let proxy = start(driver, replica.addr(), tls(&[&pki.api]));
    let addr = proxy.handle.local_addrs()[0];
    assert!(served_subject(&s_client(addr, &["-servername", "api.test"])).contains("api.test"));

    // A new certificate under the same file names.
    let renewed = pki
        .ca
        .leaf(&pki.dir, "renewed", &["renewed.test", "api.test"]);
    std::fs::copy(&renewed.cert, &pki.api.cert).unwrap();
    std::fs::copy(&renewed.key, &pki.api.key).unwrap();
    // A connection open across the reload keeps working.
    let mut open = inferlb_testkit::RawClient::connect(proxy.handle.local_addrs()[1]).unwrap();
    assert!(proxy.handle.reload_certificates().is_empty());
    let after = s_client(addr, &["-servername", "api.test"]);
    assert!(served_subject(&after).contains("renewed.test"), "{after}");
    assert_eq!(open.get("/").unwrap().status, 200);

    // A bad key: the error names the file, and the renewed one stays.
    std::fs::write(&pki.api.key, "not a key").unwrap();
    let errors = proxy.handle.reload_certificates();
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(errors[0].contains("api.key"), "{errors:?}");
    let still = s_client(addr, &["-servername", "api.test"]);
    assert!(served_subject(&still).contains("renewed.test"), "{still}");
}

#[test]
fn a_bad_certificate_stops_the_start_naming_the_file() {
    let pki = pki();
    let missing = CertificateFiles {
        cert: pki.dir.join("missing.pem"),
        key: pki.api.key.clone(),
    };
    let mismatched = CertificateFiles {
        cert: pki.api.cert.clone(),
        key: pki.other.key.clone(),
    };
    let not_pem = pki.dir.join("garbage.pem");
    std::fs::write(&not_pem, "hello").unwrap();
    let garbage = CertificateFiles {
        cert: not_pem,
        key: pki.api.key.clone(),
    };
    for (files, expected) in [
        (missing, "missing.pem"),
        (mismatched, "does not belong"),
        (garbage, "garbage.pem: no certificate"),
    ] {
        let mut config = inferlb_core::Config::default();
        config.proxy.workers = 1;
        config.proxy.listeners = vec![Listener {
            address: "127.0.0.1:0".parse().unwrap(),
            tls: Some(Tls {
                certificates: vec![files],
                client_ca: None,
                refuse_unknown_server_name: false,
            }),
            alpn: vec![Protocol::H2, Protocol::Http1],
        }];
        let snapshots = inferlb_core::Snapshots::new(
            inferlb_core::State::new(inferlb_core::Routing::RoundRobin).snapshot(),
        );
        let error = inferlb_proxy::start(&config.proxy, snapshots).unwrap_err();
        assert!(error.to_string().contains(expected), "{error}");
    }
}

/// inferlb in front of a TLS replica (here another inferlb terminating TLS
/// before a fake replica): verified against the pool's CA, with the name
/// from `server_name`; a CA that did not sign the replica's certificate
/// gets no answer from it, and `verify = false` accepts it.
fn a_pool_with_upstream_tls_reaches_its_replicas_over_verified_tls(driver: IoDriver) {
    use inferlb_core::pool::{PoolSpec, UpstreamTls};
    use inferlb_core::{Command, PoolName, Routing, State};
    let pki = pki();
    let replica = FakeReplica::builder().name("r1").start().unwrap();
    let front = start(driver, replica.addr(), tls(&[&pki.api]));
    let tls_replica = front.handle.local_addrs()[0];
    let stranger = Ca::new(&pki.dir, "stranger");
    let cases = [
        (Some(pki.ca.pem.clone()), Some("api.test"), true, 200),
        // No server_name: the replica's address (an IP) is not in its
        // certificate.
        (Some(pki.ca.pem.clone()), None, true, 502),
        (Some(stranger.pem.clone()), Some("api.test"), true, 502),
        (None, None, false, 200),
    ];
    for (ca, server_name, verify, status) in cases {
        let mut state = State::new(Routing::RoundRobin);
        let mut spec = PoolSpec::named(PoolName::new("m").unwrap());
        spec.upstream_tls = Some(std::sync::Arc::new(UpstreamTls {
            ca,
            server_name: server_name.map(String::from),
            verify,
        }));
        state.apply(Command::SetPool(Box::new(spec))).unwrap();
        state
            .apply(Command::Add(support::pool_spec("a", tls_replica, "m")))
            .unwrap();
        let proxy = support::start_state(driver, state, |_| {});
        let response = inferlb_testkit::send_raw(
            proxy.addr(),
            b"GET /v1/x HTTP/1.1\r\nHost: x\r\nX-Model: m\r\nConnection: close\r\n\r\n",
        )
        .unwrap();
        assert_eq!(response.status, status, "{server_name:?} verify={verify}");
        if status == 200 {
            assert_eq!(response.header("x-replica"), Some("r1"));
            // The replica's proxy saw TLS: it says https to the fake.
            let seen = replica.counters().last_request().unwrap();
            assert_eq!(seen.header("x-forwarded-proto"), Some("https"));
        }
    }
}

/// A graceful stop with an HTTP/2 token stream in flight: the client gets
/// GOAWAY and still the whole stream (curl over h2c).
fn a_stop_lets_http2_streams_finish(driver: IoDriver) {
    use std::io::BufRead;
    let replica = FakeReplica::builder()
        .name("r1")
        .tokens(20, Duration::from_millis(50))
        .start()
        .unwrap();
    let proxy = support::start(driver, &[replica.addr()], |c| {
        c.proxy.listeners = vec![Listener::plain("127.0.0.1:0".parse().unwrap())];
    });
    let url = format!("http://{}/v1/completions", proxy.addr());
    let mut curl = Command::new("curl")
        .args(["-sS", "-v", "-N", "--http2-prior-knowledge", &url])
        .args([
            "-H",
            "content-type: application/json",
            "-d",
            "{\"stream\": true}",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("these tests need curl");
    let mut lines = std::io::BufReader::new(curl.stdout.take().unwrap()).lines();
    let mut tokens = 0;
    // The first token is in: stop.
    for line in lines.by_ref() {
        if line.unwrap().contains("\"tok") {
            tokens += 1;
            break;
        }
    }
    proxy.handle.shutdown();
    tokens += lines
        .map_while(Result::ok)
        .filter(|l| l.contains("\"tok"))
        .count();
    let out = curl.wait_with_output().unwrap();
    let verbose = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{verbose}");
    assert_eq!(tokens, 20, "{verbose}");
}

/// `alpn = ["http/1.1"]`: no HTTP/2 on that listener. A TLS client offering
/// both gets HTTP/1.1, one offering only h2 fails the handshake (counted
/// as no_application_protocol), and the h2c preface on such a plaintext
/// listener is not taken for HTTP/2.
fn alpn_without_h2_keeps_a_listener_on_http1(driver: IoDriver) {
    let pki = pki();
    let replica = FakeReplica::builder().name("r1").start().unwrap();
    let proxy = support::start(driver, &[replica.addr()], |c| {
        c.proxy.listeners = vec![
            Listener {
                address: "127.0.0.1:0".parse().unwrap(),
                tls: Some(tls(&[&pki.api])),
                alpn: vec![Protocol::Http1],
            },
            Listener {
                address: "127.0.0.1:0".parse().unwrap(),
                tls: None,
                alpn: vec![Protocol::Http1],
            },
        ];
    });
    let (tls_addr, plain) = (proxy.handle.local_addrs()[0], proxy.handle.local_addrs()[1]);
    let got = curl(&strs(&https_args(&pki, "api.test", tls_addr, "/")));
    assert_eq!((got.status, got.version.as_str()), (200, "1.1"));
    let h2_only = s_client(tls_addr, &["-servername", "api.test", "-alpn", "h2"]);
    assert!(served_subject(&h2_only).is_empty(), "{h2_only}");
    assert!(eventually(Duration::from_secs(5), || {
        handshake_errors(&proxy, HandshakeError::NoApplicationProtocol) == 1
    }));
    let got = curl(&["--http2-prior-knowledge", &format!("http://{plain}/")]);
    assert_ne!(got.version, "2");
    let edge = &proxy.handle.front_end().edge;
    assert_eq!(edge.h2_connections.load(Ordering::Relaxed), 0);
}
