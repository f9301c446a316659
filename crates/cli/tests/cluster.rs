//! A fleet of inferlb instances on a real three-member etcd cluster on
//! loopback: changes made through any instance routed by all, concurrent
//! writes, drains across instances, etcd members lost, and etcd gone
//! altogether under load (fail static).

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use inferlb_testkit::{
    eventually, free_addr, fresh_dir, wait_for_port, EtcdCluster, FakeReplica, RawClient, Scratch,
};
use serde_json::Value;

/// One `inferlb serve` of the fleet.
struct Instance {
    child: Child,
    listen: SocketAddr,
    admin: SocketAddr,
}

impl Drop for Instance {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The etcd endpoints an instance is given, as a TOML array.
trait Endpoints {
    fn toml(&self) -> String;
}

impl Endpoints for EtcdCluster {
    fn toml(&self) -> String {
        self.toml_endpoints()
    }
}

impl Endpoints for str {
    fn toml(&self) -> String {
        self.to_owned()
    }
}

/// Starts instance `name` of fleet `fleet` with `replicas` declared.
fn instance(
    dir: &Path,
    etcd: &(impl Endpoints + ?Sized),
    fleet: &str,
    name: &str,
    replicas: &[SocketAddr],
) -> Instance {
    instance_with(dir, etcd, fleet, name, replicas, "", &[])
}

/// Like [`instance`], with more config and environment.
fn instance_with(
    dir: &Path,
    etcd: &(impl Endpoints + ?Sized),
    fleet: &str,
    name: &str,
    replicas: &[SocketAddr],
    more: &str,
    env: &[(&str, &str)],
) -> Instance {
    let (listen, admin) = (free_addr(), free_addr());
    let config = dir.join(format!("{name}.toml"));
    let mut text = format!(
        "listen = \"{listen}\"\nworkers = 1\n[admin]\nlisten = \"{admin}\"\n[health]\nenabled = false\n\
         [cluster]\netcd = {}\nname = \"{fleet}\"\ninstance = \"{name}\"\nlease_ttl_s = 3\n",
        etcd.toml()
    );
    for (i, r) in replicas.iter().enumerate() {
        text.push_str(&format!(
            "[[replicas]]\naddress = \"{r}\"\nid = \"declared-{i}\"\n"
        ));
    }
    text.push_str(more);
    std::fs::write(&config, text).unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_inferlb"))
        .env_remove("INFERLB_CONFIG")
        .env_remove("INFERLB_ADMIN_TOKEN")
        .env_remove("STATE_DIRECTORY")
        .env("RUST_LOG", "info")
        .envs(env.iter().copied())
        .arg("serve")
        .arg("--config")
        .arg(&config)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join(format!("{name}.log"))).unwrap())
        .spawn()
        .unwrap();
    let instance = Instance {
        child,
        listen,
        admin,
    };
    assert!(
        wait_for_port(admin, Duration::from_secs(20)),
        "instance {name} did not start; see {}",
        dir.join(format!("{name}.log")).display()
    );
    assert!(wait_for_port(listen, Duration::from_secs(10)));
    instance
}

/// One admin call: the status, the JSON body and the raw headers.
fn call(admin: SocketAddr, method: &str, path: &str, body: Option<&str>) -> (u16, Value, String) {
    let mut client = RawClient::connect(admin).unwrap();
    client.set_read_timeout(Duration::from_secs(30)).unwrap();
    let body = body.unwrap_or("");
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    client.send(request.as_bytes()).unwrap();
    let resp = client.read_response().unwrap();
    let headers = resp
        .headers
        .iter()
        .map(|(k, v)| format!("{k}: {v}"))
        .collect::<Vec<_>>()
        .join("\n");
    let value = serde_json::from_slice(&resp.body).unwrap_or(Value::Null);
    (resp.status, value, headers)
}

fn ids(admin: SocketAddr) -> Vec<String> {
    let (status, list, _) = call(admin, "GET", "/v1/replicas", None);
    assert_eq!(status, 200);
    let mut ids: Vec<String> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_str().unwrap().to_owned())
        .collect();
    ids.sort();
    ids
}

fn add(admin: SocketAddr, id: &str, addr: SocketAddr) -> u16 {
    add_answer(admin, id, addr).0
}

fn add_answer(admin: SocketAddr, id: &str, addr: SocketAddr) -> (u16, Value) {
    let body = format!(r#"{{"address": "{addr}", "id": "{id}"}}"#);
    let (status, body, _) = call(admin, "POST", "/v1/replicas", Some(&body));
    (status, body)
}

/// Which replica answers a GET through an instance's proxy.
fn answered_by(listen: SocketAddr) -> Option<String> {
    let mut client = RawClient::connect(listen).ok()?;
    let resp = client.get("/").ok()?;
    (resp.status == 200).then(|| resp.header("x-replica").unwrap_or("?").to_owned())
}

struct Fixture {
    dir: Scratch,
    etcd: EtcdCluster,
}

fn fixture(name: &str) -> Fixture {
    let dir = fresh_dir(&format!("cluster-{name}"));
    let etcd = EtcdCluster::start(&dir, 3);
    Fixture { dir, etcd }
}

#[test]
fn an_admin_change_on_one_instance_is_routed_by_all() {
    let f = fixture("routed");
    let a = FakeReplica::builder().name("a").start().unwrap();
    let b = FakeReplica::builder().name("b").start().unwrap();
    let lbs: Vec<Instance> = ["lb-1", "lb-2", "lb-3"]
        .iter()
        .map(|n| instance(&f.dir, &f.etcd, "routed", n, &[a.addr()]))
        .collect();
    // The first instance created the fleet's record from its config; all
    // serve the declared replica.
    for lb in &lbs {
        assert_eq!(ids(lb.admin), ["declared-0"]);
        assert_eq!(answered_by(lb.listen).as_deref(), Some("a"));
    }
    // A replica added through lb-2, drained through lb-3: every instance
    // routes by it within a second or so.
    assert_eq!(add(lbs[1].admin, "b", b.addr()), 201);
    let (status, _, _) = call(lbs[2].admin, "DELETE", "/v1/replicas/declared-0", None);
    assert_eq!(status, 202);
    for lb in &lbs {
        assert!(
            eventually(Duration::from_secs(3), || ids(lb.admin) == ["b"]),
            "{:?}",
            ids(lb.admin)
        );
        for _ in 0..5 {
            assert_eq!(answered_by(lb.listen).as_deref(), Some("b"));
        }
    }
    // Every instance reports; each lists the three.
    assert!(eventually(Duration::from_secs(5), || {
        let (status, view, _) = call(lbs[0].admin, "GET", "/v1/cluster", None);
        status == 200
            && view["stale"] == false
            && view["instances"].as_array().is_some_and(|i| i.len() == 3)
    }));
    let (_, view, _) = call(lbs[0].admin, "GET", "/v1/cluster", None);
    assert_eq!(view["name"], "routed");
    assert_eq!(view["instance"], "lb-1");
    let names: Vec<&str> = view["instances"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["instance"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["lb-1", "lb-2", "lb-3"]);
    // A graceful stop leaves the fleet at once (its lease revoked), not
    // when its 3 s lease would expire.
    let mut lbs = lbs;
    let status = Command::new("kill")
        .args(["-TERM", &lbs[2].child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    assert!(lbs[2].child.wait().unwrap().success());
    let listed = |admin| {
        call(admin, "GET", "/v1/cluster", None).1["instances"]
            .as_array()
            .map_or(0, Vec::len)
    };
    assert!(
        eventually(Duration::from_millis(1500), || listed(lbs[0].admin) == 2),
        "{}",
        listed(lbs[0].admin)
    );
    // A restarted instance serves the fleet's state, not its file's list.
    drop(lbs);
    let again = instance(&f.dir, &f.etcd, "routed", "lb-4", &[a.addr()]);
    assert_eq!(ids(again.admin), ["b"]);
}

#[test]
fn concurrent_writes_on_two_instances_lose_nothing() {
    let f = fixture("writes");
    let one = instance(&f.dir, &f.etcd, "writes", "lb-1", &[]);
    let two = instance(&f.dir, &f.etcd, "writes", "lb-2", &[]);
    let admins = [one.admin, two.admin];
    // Forty different replicas added at once, half through each instance.
    let threads: Vec<_> = (0..40)
        .map(|i| {
            let admin = admins[i % 2];
            std::thread::spawn(move || {
                let addr = SocketAddr::from(([127, 0, 0, 1], 20_000 + i as u16));
                add_answer(admin, &format!("r{i:02}"), addr)
            })
        })
        .collect();
    for t in threads {
        let (status, body) = t.join().unwrap();
        assert_eq!(status, 201, "{body}");
    }
    let mut expected: Vec<String> = (0..40).map(|i| format!("r{i:02}")).collect();
    expected.sort();
    for admin in admins {
        assert!(
            eventually(Duration::from_secs(3), || ids(admin) == expected),
            "{:?}",
            ids(admin)
        );
    }
    // The same id through both at once: one wins, the other gets 409.
    let racers: Vec<_> = admins
        .iter()
        .enumerate()
        .map(|(i, &admin)| {
            std::thread::spawn(move || {
                add_answer(
                    admin,
                    "same",
                    SocketAddr::from(([127, 0, 0, 1], 21_000 + i as u16)),
                )
            })
        })
        .collect();
    let mut answers: Vec<(u16, Value)> = racers.into_iter().map(|t| t.join().unwrap()).collect();
    answers.sort_by_key(|(status, _)| *status);
    assert_eq!(answers[0].0, 201);
    assert_eq!(answers[1].0, 409);
    // The loser is told the state it met: the winner's replica.
    assert_eq!(answers[1].1["current"]["id"], "same", "{}", answers[1].1);
    assert_eq!(
        answers[1].1["current"]["address"], answers[0].1["address"],
        "{}",
        answers[1].1
    );
}

/// Opens a token stream through `listen` and reads its first token.
fn open_stream(listen: SocketAddr) -> RawClient {
    let mut client = RawClient::connect(listen).unwrap();
    client.set_read_timeout(Duration::from_secs(20)).unwrap();
    client
        .send(b"GET /stream HTTP/1.1\r\nHost: t\r\n\r\n")
        .unwrap();
    client.read_until(b"tok0").unwrap();
    client
}

#[test]
fn a_drain_waits_for_streams_on_every_instance() {
    let f = fixture("drain");
    let slow = FakeReplica::builder()
        .name("slow")
        .tokens(30, Duration::from_millis(100))
        .start()
        .unwrap();
    let one = instance(&f.dir, &f.etcd, "drain", "lb-1", &[slow.addr()]);
    let two = instance(&f.dir, &f.etcd, "drain", "lb-2", &[slow.addr()]);
    // The first stream half done when the second starts: the second ends
    // some 1.5 s after the first.
    let mut first = open_stream(one.listen);
    first.read_until(b"tok15").unwrap();
    let mut second = open_stream(two.listen);
    let (status, view, _) = call(one.admin, "DELETE", "/v1/replicas/declared-0", None);
    assert_eq!(status, 202);
    assert_eq!(view["state"], "draining");
    // Both instances stop sending it new requests...
    assert!(eventually(Duration::from_secs(3), || {
        call(two.admin, "GET", "/v1/replicas/declared-0", None).1["state"] == "draining"
    }));
    let refused = RawClient::connect(two.listen).and_then(|mut c| c.get("/"));
    assert!(
        refused.as_ref().is_ok_and(|r| r.status == 503),
        "{refused:?}"
    );
    // ...and keep it while either has a stream in flight to it.
    first.read_until(b"[DONE]").unwrap();
    assert!(!eventually(Duration::from_millis(800), || ids(one.admin).is_empty()));
    assert_eq!(ids(two.admin), ["declared-0"]);
    second.read_until(b"[DONE]").unwrap();
    for admin in [one.admin, two.admin] {
        assert!(
            eventually(Duration::from_secs(6), || ids(admin).is_empty()),
            "{:?}",
            ids(admin)
        );
    }
}

/// Requests through every instance until stopped: how many were sent, and
/// each that failed (at which count, on which instance, and what came back).
fn load(
    listens: Vec<SocketAddr>,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<(u64, Vec<String>)> {
    std::thread::spawn(move || {
        let mut failed = Vec::new();
        let mut clients: Vec<RawClient> = listens
            .iter()
            .map(|&l| RawClient::connect(l).unwrap())
            .collect();
        // Bounded: at most 200 000 requests.
        let mut sent = 0;
        while sent < 200_000 && !stop.load(Ordering::Relaxed) {
            let i = (sent as usize) % clients.len();
            sent += 1;
            let answer = clients[i].get("/");
            if !answer.as_ref().is_ok_and(|r| r.status == 200) {
                failed.push(format!("request {sent} to {}: {answer:?}", listens[i]));
                clients[i] = RawClient::connect(listens[i]).unwrap();
            }
        }
        (sent, failed)
    })
}

#[test]
fn etcd_lost_fails_no_request_and_writes_answer_503() {
    let mut f = fixture("static");
    let a = FakeReplica::builder().name("a").start().unwrap();
    let b = FakeReplica::builder().name("b").start().unwrap();
    let c = FakeReplica::builder().name("c").start().unwrap();
    let log1 = format!(
        "[access_log]\npath = \"{}\"\n",
        f.dir.join("access-1.log").display()
    );
    let log2 = format!(
        "[access_log]\npath = \"{}\"\n",
        f.dir.join("access-2.log").display()
    );
    let one = instance_with(&f.dir, &f.etcd, "static", "lb-1", &[a.addr()], &log1, &[]);
    let two = instance_with(&f.dir, &f.etcd, "static", "lb-2", &[a.addr()], &log2, &[]);
    assert_eq!(add(one.admin, "b", b.addr()), 201);
    assert!(eventually(Duration::from_secs(3), || ids(two.admin).len() == 2));
    let stop = Arc::new(AtomicBool::new(false));
    let traffic = load(vec![one.listen, two.listen], Arc::clone(&stop));

    // One member killed: nothing is noticed; writes still work.
    f.etcd.kill(0);
    assert_eq!(add(two.admin, "c", c.addr()), 201);
    assert!(eventually(Duration::from_secs(3), || ids(one.admin).len() == 3));
    let (_, view, _) = call(one.admin, "GET", "/v1/cluster", None);
    assert_eq!(view["stale"], false, "{view}");

    // The whole cluster stopped: both instances serve their last state.
    f.etcd.stop_all();
    for admin in [one.admin, two.admin] {
        assert!(
            eventually(Duration::from_secs(10), || {
                call(admin, "GET", "/v1/cluster", None).1["stale"] == true
            }),
            "never marked stale"
        );
        let (status, body, _) = call(admin, "DELETE", "/v1/replicas/c", None);
        assert_eq!(status, 503, "{body}");
        assert_eq!(body["error"], "unavailable");
        assert!(body["message"].as_str().unwrap().contains("etcd"), "{body}");
        let (status, list, headers) = call(admin, "GET", "/v1/replicas", None);
        assert_eq!(status, 200);
        assert_eq!(list.as_array().unwrap().len(), 3);
        assert!(
            headers.to_ascii_lowercase().contains("warning: 110"),
            "{headers}"
        );
        assert!(
            headers
                .to_ascii_lowercase()
                .contains("x-inferlb-stale: true"),
            "{headers}"
        );
    }
    // Traffic goes on through etcd's absence (the load runs meanwhile).
    let before = a.counters().requests() + b.counters().requests() + c.counters().requests();
    assert!(eventually(Duration::from_secs(5), || {
        a.counters().requests() + b.counters().requests() + c.counters().requests() > before + 100
    }));

    // Back: writes work again, and each instance resyncs.
    f.etcd.restart_stopped();
    assert!(
        eventually(Duration::from_secs(20), || {
            call(one.admin, "GET", "/v1/cluster", None).1["stale"] == false
        }),
        "never reconnected"
    );
    // A drain with time to finish: the load's request in flight to `c`
    // (there may be one at any moment) completes, so none fails.
    assert!(eventually(Duration::from_secs(10), || {
        call(
            one.admin,
            "DELETE",
            "/v1/replicas/c?drain_timeout_s=5",
            None,
        )
        .0 == 202
    }));
    assert!(
        eventually(Duration::from_secs(10), || ids(two.admin).len() == 2),
        "{:?}",
        ids(two.admin)
    );
    stop.store(true, Ordering::Relaxed);
    let (sent, failed) = traffic.join().unwrap();
    assert!(sent > 500, "{sent}");
    assert!(
        failed.is_empty(),
        "{} of {sent} requests failed: {failed:#?}",
        failed.len()
    );
}

/// moto is shared: the agent's test resets it, which must not wipe what the
/// publisher's test reads. They take turns.
static MOTO: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn moto_url() -> String {
    std::env::var("INFERLB_MOTO_URL").unwrap_or_else(|_| {
        panic!("INFERLB_MOTO_URL is not set: run these tests with `cargo xtask test`, which starts moto_server")
    })
}

/// `autoscale run --cluster` on host `name`, its log in `dir/name.log`.
fn agent(dir: &Path, etcd: &EtcdCluster, name: &str) -> Instance {
    let example = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../deploy/autoscaling.example.toml"
    );
    let child = Command::new(env!("CARGO_BIN_EXE_inferlb"))
        .args(["autoscale", "run", "--interval", "1s", "--file", example])
        .args(["--endpoint-url", &moto_url(), "--region", "us-east-1"])
        .args(["--cluster", &etcd.endpoints().join(",")])
        .args([
            "--cluster-name",
            "agents",
            "--instance",
            name,
            "--lease-ttl",
            "3s",
        ])
        .env("AWS_ACCESS_KEY_ID", "testing")
        .env("AWS_SECRET_ACCESS_KEY", "testing")
        .env_remove("AWS_PROFILE")
        .env("RUST_LOG", "info,inferlb_autoscaler=debug")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join(format!("{name}.log"))).unwrap())
        .spawn()
        .unwrap();
    Instance {
        child,
        listen: free_addr(),
        admin: free_addr(),
    }
}

fn log(dir: &Path, name: &str) -> String {
    std::fs::read_to_string(dir.join(format!("{name}.log"))).unwrap_or_default()
}

#[test]
fn one_autoscaling_agent_leads_and_a_standby_takes_over_after_kill_9() {
    let _turn = MOTO.lock().unwrap_or_else(|e| e.into_inner());
    let url = moto_url();
    let addr = url.trim_start_matches("http://");
    let reset = RawClient::connect(addr.parse().unwrap())
        .and_then(|mut c| {
            c.send(format!("POST /moto-api/reset HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n").as_bytes())?;
            c.read_response()
        })
        .unwrap();
    assert_eq!(reset.status, 200);
    let f = fixture("agents");
    let mut agents = vec![
        agent(&f.dir, &f.etcd, "host-a"),
        agent(&f.dir, &f.etcd, "host-b"),
    ];
    let names = ["host-a", "host-b"];
    let leads = |name: &str| log(&f.dir, name).contains("this instance leads");
    assert!(
        eventually(Duration::from_secs(20), || names.iter().any(|n| leads(n))),
        "nobody leads:\n{}\n{}",
        log(&f.dir, "host-a"),
        log(&f.dir, "host-b")
    );
    let leader = if leads("host-a") { 0 } else { 1 };
    let standby = 1 - leader;
    // The leader applies the file once; the standby makes no call.
    assert!(
        eventually(Duration::from_secs(20), || log(&f.dir, names[leader])
            .contains("AWS matches the file")),
        "{}",
        log(&f.dir, names[leader])
    );
    assert!(log(&f.dir, names[leader]).contains("drift corrected"));
    let waiting = log(&f.dir, names[standby]);
    assert!(!waiting.contains("this instance leads"), "{waiting}");
    assert!(!waiting.contains("drift corrected"), "{waiting}");
    assert!(!waiting.contains("AWS matches the file"), "{waiting}");

    // kill -9 of the leader: the standby leads within the lease TTL (3 s)
    // and finds nothing left to apply.
    let _ = agents[leader].child.kill();
    let _ = agents[leader].child.wait();
    let killed = std::time::Instant::now();
    assert!(
        eventually(Duration::from_secs(10), || leads(names[standby])),
        "{}",
        log(&f.dir, names[standby])
    );
    let took = killed.elapsed();
    assert!(took < Duration::from_secs(5), "took {took:?}");
    assert!(eventually(Duration::from_secs(10), || log(
        &f.dir,
        names[standby]
    )
    .contains("AWS matches the file")));
    let after = log(&f.dir, names[standby]);
    assert!(!after.contains("drift corrected"), "{after}");
    drop(agents);
}

/// GetMetricStatistics through moto's query API: the largest `Maximum` of
/// `metric` for pool `pool` in `namespace` over the last ten minutes.
fn metric_maximum(url: &str, namespace: &str, metric: &str, pool: &str) -> Option<f64> {
    let now = std::time::SystemTime::now();
    let at = |t: std::time::SystemTime| humantime::format_rfc3339_seconds(t).to_string();
    let body = format!(
        "Action=GetMetricStatistics&Version=2010-08-01&Namespace={namespace}&MetricName={metric}\
         &StartTime={}&EndTime={}&Period=60&Statistics.member.1=Maximum\
         &Dimensions.member.1.Name=Pool&Dimensions.member.1.Value={pool}",
        at(now - Duration::from_secs(600)),
        at(now + Duration::from_secs(600)),
    );
    let addr = url.trim_start_matches("http://");
    let mut client = RawClient::connect(addr.parse().ok()?).ok()?;
    let request = format!(
        "POST / HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/x-www-form-urlencoded\r\n\
         Authorization: AWS4-HMAC-SHA256 Credential=testing/20260101/us-east-1/monitoring/aws4_request, SignedHeaders=host, Signature=0\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    client.send(request.as_bytes()).ok()?;
    let text = String::from_utf8(client.read_response().ok()?.body).ok()?;
    text.split("<Maximum>")
        .skip(1)
        .filter_map(|rest| rest.split('<').next()?.parse::<f64>().ok())
        .reduce(f64::max)
}

#[test]
fn one_instance_publishes_the_fleets_concurrency_to_cloudwatch() {
    let _turn = MOTO.lock().unwrap_or_else(|e| e.into_inner());
    let url = moto_url();
    let f = fixture("publish");
    let namespace = format!("inferlb-fleet-{}", std::process::id());
    let slow = FakeReplica::builder()
        .name("slow")
        .tokens(200, Duration::from_millis(100))
        .start()
        .unwrap();
    let more = format!("[autoscaling.publish]\nnamespace = \"{namespace}\"\ninterval_s = 10\n");
    let env = [
        ("AWS_ENDPOINT_URL", url.as_str()),
        ("AWS_ACCESS_KEY_ID", "testing"),
        ("AWS_SECRET_ACCESS_KEY", "testing"),
        ("AWS_REGION", "us-east-1"),
        ("AWS_EC2_METADATA_DISABLED", "true"),
    ];
    let one = instance_with(
        &f.dir,
        &f.etcd,
        "publish",
        "lb-1",
        &[slow.addr()],
        &more,
        &env,
    );
    let two = instance_with(
        &f.dir,
        &f.etcd,
        "publish",
        "lb-2",
        &[slow.addr()],
        &more,
        &env,
    );
    // One stream through each instance, to the same replica: each instance
    // sees one in flight, the fleet two.
    let _first = open_stream(one.listen);
    let _second = open_stream(two.listen);
    let publishes = |name: &str| log(&f.dir, name).contains("publishes the fleet's figures");
    assert!(eventually(Duration::from_secs(10), || publishes("lb-1")
        || publishes("lb-2")));
    assert!(
        eventually(Duration::from_secs(30), || {
            metric_maximum(&url, &namespace, "MaxInFlightPerReplica", "default") == Some(2.0)
        }),
        "{:?}",
        metric_maximum(&url, &namespace, "MaxInFlightPerReplica", "default")
    );
    assert!(publishes("lb-1") != publishes("lb-2"), "both publish");
}

/// `[pools.autoscaling]` for pool `llama`: one local replica (a
/// fake-replica child process) on a port of `lo..=hi`.
fn local_pool(name: &str, lo: u16, hi: u16) -> String {
    format!(
        "[[pools]]\nname = \"llama\"\n[pools.autoscaling]\nmin = 1\nmax = 1\nprovider = \"exec\"\n\
         command = [\"{}\", \"fake-replica\", \"--listen\", \"{{host}}:{{port}}\", \"--model\", \"llama\", \"--name\", \"{name}-{{index}}\"]\n\
         ports = \"{lo}-{hi}\"\nstart_timeout_s = 30\n",
        env!("CARGO_BIN_EXE_inferlb")
    )
}

fn pool_ids(admin: SocketAddr) -> Vec<String> {
    let (_, list, _) = call(admin, "GET", "/v1/replicas", None);
    let mut ids: Vec<String> = list
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["pool"] == "llama")
        .map(|r| r["id"].as_str().unwrap().to_owned())
        .collect();
    ids.sort();
    ids
}

#[test]
fn local_replicas_are_routed_by_every_instance_and_leave_with_theirs() {
    let f = fixture("local");
    let base = 31_000 + (std::process::id() % 1000) as u16 * 20;
    let one = instance_with(
        &f.dir,
        &f.etcd,
        "local",
        "lb-1",
        &[],
        &local_pool("lb-1", base, base + 4),
        &[],
    );
    let mut two = instance_with(
        &f.dir,
        &f.etcd,
        "local",
        "lb-2",
        &[],
        &local_pool("lb-2", base + 10, base + 14),
        &[],
    );
    // Each instance routes to its own replica and to the other's.
    for (admin, own, peer) in [(one.admin, "lb-1", "lb-2"), (two.admin, "lb-2", "lb-1")] {
        assert!(
            eventually(Duration::from_secs(30), || {
                let ids = pool_ids(admin);
                ids.len() == 2
                    && ids
                        .iter()
                        .any(|i| !i.contains('.') || i.starts_with(&format!("{own}-")))
                    && ids.iter().any(|i| i.starts_with(&format!("{peer}.")))
            }),
            "{own}: {:?}",
            pool_ids(admin)
        );
    }
    // Requests through one instance reach both hosts' replicas.
    let mut names = std::collections::HashSet::new();
    for _ in 0..20 {
        let mut client = RawClient::connect(one.listen).unwrap();
        let body = r#"{"model": "llama", "prompt": "hi", "max_tokens": 2}"#;
        let request = format!(
            "POST /v1/completions HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        client.send(request.as_bytes()).unwrap();
        let resp = client.read_response().unwrap();
        assert_eq!(resp.status, 200);
        if let Some(name) = resp.header("x-replica") {
            names.insert(name.to_owned());
        }
    }
    assert_eq!(names.len(), 2, "{names:?}");
    // kill -9 of lb-2: its replica stops with it, and leaves lb-1's list
    // with lb-2's lease.
    let _ = two.child.kill();
    let _ = two.child.wait();
    assert!(
        eventually(Duration::from_secs(10), || pool_ids(one.admin).len() == 1),
        "{:?}",
        pool_ids(one.admin)
    );
}

fn sighup(instance: &Instance) {
    let status = Command::new("kill")
        .args(["-HUP", &instance.child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

/// Which replica answers through `listen`, once it is `want`.
fn answers(listen: SocketAddr, want: &str) -> bool {
    answered_by(listen).as_deref() == Some(want)
}

#[test]
fn sighup_publishes_the_declared_list_only_when_this_file_changed_it() {
    let f = fixture("reload");
    let a = FakeReplica::builder().name("a").start().unwrap();
    let b = FakeReplica::builder().name("b").start().unwrap();
    let one = instance(&f.dir, &f.etcd, "reload", "lb-1", &[a.addr()]);
    let two = instance(&f.dir, &f.etcd, "reload", "lb-2", &[a.addr()]);
    // lb-1's file now declares b instead of a: SIGHUP publishes it.
    let path = f.dir.join("lb-1.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::write(
        &path,
        text.replace(&a.addr().to_string(), &b.addr().to_string()),
    )
    .unwrap();
    sighup(&one);
    for lb in [&one, &two] {
        assert!(
            eventually(Duration::from_secs(5), || answers(lb.listen, "b")),
            "{:?}",
            answered_by(lb.listen)
        );
    }
    // lb-2's file did not change since it read it: its SIGHUP leaves the
    // fleet's list alone (its old file cannot undo lb-1's change).
    sighup(&two);
    assert!(!eventually(Duration::from_secs(2), || answers(
        one.listen, "a"
    )));
    assert!(answers(two.listen, "b"));
}

/// Runs `openssl` with `args` in `dir`.
fn openssl(dir: &Path, args: &[&str]) {
    let status = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("this test needs the openssl command");
    assert!(status.success(), "openssl {args:?}");
}

/// A CA, etcd's certificate for 127.0.0.1 and a client certificate, all
/// ECDSA P-256, in `dir`.
fn certificates(dir: &Path) {
    let key = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
    ];
    let mut ca = vec!["req", "-x509", "-days", "2", "-subj", "/CN=test-ca"];
    ca.extend(key);
    ca.extend(["-keyout", "ca.key", "-out", "ca.pem"]);
    openssl(dir, &ca);
    for (name, ext) in [
        (
            "server",
            "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth,clientAuth\n",
        ),
        ("client", "extendedKeyUsage=clientAuth\n"),
    ] {
        let subject = format!("/CN={name}");
        let (keyfile, csr, pem, extfile) = (
            format!("{name}.key"),
            format!("{name}.csr"),
            format!("{name}.pem"),
            format!("{name}.ext"),
        );
        std::fs::write(dir.join(&extfile), ext).unwrap();
        let mut req = vec!["req", "-subj", &subject];
        req.extend(key);
        req.extend(["-keyout", &keyfile, "-out", &csr]);
        openssl(dir, &req);
        openssl(
            dir,
            &[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-days",
                "2",
                "-extfile",
                &extfile,
                "-out",
                &pem,
            ],
        );
    }
}

#[test]
fn tls_to_etcd_with_a_client_certificate() {
    let dir = fresh_dir("cluster-tls");
    certificates(&dir);
    let etcd = EtcdCluster::start_tls(
        &dir,
        3,
        inferlb_testkit::EtcdTls {
            cert: dir.join("server.pem"),
            key: dir.join("server.key"),
            client_ca: dir.join("ca.pem"),
        },
    );
    assert!(etcd.endpoints()[0].starts_with("https://"));
    let a = FakeReplica::builder().name("a").start().unwrap();
    let path = |f: &str| dir.join(f).display().to_string();
    let with_cert = format!(
        "[cluster.tls]\nca = \"{}\"\ncert = \"{}\"\nkey = \"{}\"\n",
        path("ca.pem"),
        path("client.pem"),
        path("client.key")
    );
    let one = instance_with(&dir, &etcd, "tls", "lb-1", &[a.addr()], &with_cert, &[]);
    assert!(
        eventually(Duration::from_secs(5), || {
            call(one.admin, "GET", "/v1/cluster", None).1["stale"] == false
        }),
        "{}",
        call(one.admin, "GET", "/v1/cluster", None).1
    );
    assert_eq!(add(one.admin, "b", free_addr()), 201);
    // Without a client certificate etcd refuses the instance: it serves
    // its config's replicas, marked stale, and writes answer 503.
    let ca_only = format!("[cluster.tls]\nca = \"{}\"\n", path("ca.pem"));
    let two = instance_with(&dir, &etcd, "tls", "lb-2", &[a.addr()], &ca_only, &[]);
    assert_eq!(ids(two.admin), ["declared-0"]);
    let (_, view, _) = call(two.admin, "GET", "/v1/cluster", None);
    assert_eq!(view["stale"], true, "{view}");
    assert_eq!(add(two.admin, "c", free_addr()), 503);
}

/// A call to etcd's JSON gateway (`/v3/...`) on `endpoint`.
fn etcd_gateway(endpoint: &str, path: &str, body: &str) -> Value {
    let addr: SocketAddr = endpoint.trim_start_matches("http://").parse().unwrap();
    let mut client = RawClient::connect(addr).unwrap();
    let request = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    client.send(request.as_bytes()).unwrap();
    let resp = client.read_response().unwrap();
    assert_eq!(resp.status, 200, "{}", String::from_utf8_lossy(&resp.body));
    serde_json::from_slice(&resp.body).unwrap()
}

#[test]
fn an_instance_behind_a_compacted_history_reads_the_record_again() {
    let mut f = fixture("compact");
    let replicas: Vec<_> = (0..3)
        .map(|i| {
            FakeReplica::builder()
                .name(&format!("r{i}"))
                .start()
                .unwrap()
        })
        .collect();
    let endpoints = f.etcd.endpoints();
    // lb-1 reaches etcd only through member 0; lb-2 through the others.
    let only_first = format!("[\"{}\"]", endpoints[0]);
    let others = format!("[\"{}\", \"{}\"]", endpoints[1], endpoints[2]);
    let one = instance(&f.dir, only_first.as_str(), "compact", "lb-1", &[]);
    let two = instance(&f.dir, others.as_str(), "compact", "lb-2", &[]);
    assert_eq!(add(two.admin, "r0", replicas[0].addr()), 201);
    assert!(eventually(Duration::from_secs(3), || ids(one.admin) == ["r0"]));
    // Member 0 goes: lb-1 loses etcd; the fleet (a quorum of two) goes on
    // through lb-2, and etcd compacts its history past lb-1's revision.
    f.etcd.kill(0);
    assert!(
        eventually(Duration::from_secs(15), || add(
            two.admin,
            "r1",
            replicas[1].addr()
        ) == 201),
        "lb-2 could not write with two members of three"
    );
    assert_eq!(add(two.admin, "r2", replicas[2].addr()), 201);
    // Another key moves the store past the record's revision, and the
    // history is compacted to there.
    etcd_gateway(
        &endpoints[1],
        "/v3/kv/put",
        r#"{"key": "L3VucmVsYXRlZA==", "value": "eA=="}"#,
    );
    let now = etcd_gateway(&endpoints[1], "/v3/kv/range", r#"{"key": "AA=="}"#);
    let revision = now["header"]["revision"].as_str().unwrap().to_owned();
    etcd_gateway(
        &endpoints[1],
        "/v3/kv/compaction",
        &format!(r#"{{"revision": "{revision}", "physical": true}}"#),
    );
    assert_eq!(
        ids(one.admin),
        ["r0"],
        "lb-1 serves its last state meanwhile"
    );
    // Member 0 back: lb-1's watch cannot resume from its revision; it
    // reads the record again and serves the fleet's state.
    f.etcd.restart_stopped();
    assert!(
        eventually(Duration::from_secs(20), || ids(one.admin)
            == ["r0", "r1", "r2"]),
        "{:?}",
        ids(one.admin)
    );
    // And it follows the fleet again.
    let extra = FakeReplica::builder().name("r3").start().unwrap();
    assert_eq!(add(two.admin, "r3", extra.addr()), 201);
    assert!(eventually(Duration::from_secs(5), || ids(one.admin).len() == 4));
    let (_, view, _) = call(one.admin, "GET", "/v1/cluster", None);
    assert_eq!(view["stale"], false, "{view}");
}
