//! TLS on a running `inferlb serve`: HTTP/2 by ALPN with the protocol and
//! TLS version in the access log, SIGHUP swapping the certificate (and a
//! bad new key keeping the old one), and `inferlb check` naming a missing
//! certificate file. Certificates from the `openssl` command; clients curl
//! and `openssl s_client`.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use inferlb_testkit::{eventually, free_addr, fresh_dir, wait_for_port, FakeReplica};

struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A self-signed ECDSA certificate for `api.test` with `cn` as its common
/// name, written to `cert` and `key`.
fn certificate(cert: &Path, key: &Path, cn: &str) {
    let status = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
        ])
        .args(["-nodes", "-days", "2", "-subj", &format!("/CN={cn}")])
        .args(["-addext", "subjectAltName=DNS:api.test"])
        .arg("-keyout")
        .arg(key)
        .arg("-out")
        .arg(cert)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("these tests need the openssl command");
    assert!(status.success());
}

/// The subject of the certificate served for `api.test`.
fn served_subject(addr: std::net::SocketAddr) -> String {
    let out = Command::new("openssl")
        .args([
            "s_client",
            "-connect",
            &addr.to_string(),
            "-servername",
            "api.test",
        ])
        .stdin(Stdio::null())
        .output()
        .expect("these tests need the openssl command");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find(|l| l.starts_with("subject="))
        .unwrap_or("")
        .to_owned()
}

#[test]
fn sighup_swaps_certificates_and_the_access_log_says_h2_and_tls() {
    let replica = FakeReplica::builder().name("r1").start().unwrap();
    let dir = fresh_dir("tls-serve");
    let (cert, key) = (dir.join("api.pem"), dir.join("api.key"));
    certificate(&cert, &key, "first");
    let listen = free_addr();
    let admin = free_addr();
    let log = dir.join("access.log");
    let config = format!(
        "workers = 1\n[[listeners]]\naddress = \"{listen}\"\n\
         tls = {{ certificates = [{{ cert = \"{}\", key = \"{}\" }}] }}\n\
         [[replicas]]\naddress = \"{}\"\n[admin]\nlisten = \"{}\"\n[access_log]\npath = \"{}\"\n",
        cert.display(),
        key.display(),
        replica.addr(),
        admin,
        log.display()
    );
    let config_path = dir.join("inferlb.toml");
    std::fs::write(&config_path, config).unwrap();
    let serve = Running(
        Command::new(env!("CARGO_BIN_EXE_inferlb"))
            .arg("serve")
            .arg("--config")
            .arg(&config_path)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("serve.log")).unwrap())
            .spawn()
            .unwrap(),
    );
    assert!(wait_for_port(listen, Duration::from_secs(20)));

    let curl = Command::new("curl")
        .args([
            "-sS",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code} %{http_version}",
        ])
        .arg("--cacert")
        .arg(&cert)
        .args([
            "--resolve",
            &format!("api.test:{}:127.0.0.1", listen.port()),
        ])
        .arg(format!("https://api.test:{}/v1/models", listen.port()))
        .output()
        .expect("these tests need curl");
    assert_eq!(String::from_utf8_lossy(&curl.stdout), "200 2");
    assert!(eventually(Duration::from_secs(10), || {
        std::fs::read_to_string(&log).is_ok_and(|text| {
            text.contains("\"protocol\":\"HTTP/2.0\"")
                && text.contains("\"tls_version\":\"TLSv1.3\"")
                && text.contains("\"tls_cipher\":\"TLS13_")
        })
    }));

    // The handshake is counted by version and cipher suite.
    let metrics = inferlb_testkit::send_raw(
        admin,
        b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n",
    )
    .unwrap();
    let text = String::from_utf8_lossy(&metrics.body).into_owned();
    assert!(
        text.contains("inferlb_tls_handshakes_total{version=\"TLSv1.3\",cipher=\"TLS13_")
            && text.contains("inferlb_http2_streams_total 1"),
        "{text}"
    );

    // A renewed certificate under the same file names, then SIGHUP.
    assert!(served_subject(listen).contains("first"));
    certificate(&cert, &key, "second");
    let hup = |pid: u32| {
        Command::new("kill")
            .args(["-HUP", &pid.to_string()])
            .status()
            .unwrap()
    };
    assert!(hup(serve.0.id()).success());
    assert!(eventually(Duration::from_secs(10), || served_subject(
        listen
    )
    .contains("second")));

    // A bad key: an error naming the file, and the old certificate stays.
    std::fs::write(&key, "not a key").unwrap();
    assert!(hup(serve.0.id()).success());
    assert!(eventually(Duration::from_secs(10), || {
        std::fs::read_to_string(dir.join("serve.log"))
            .is_ok_and(|l| l.contains("certificates not reloaded") && l.contains("api.key"))
    }));
    assert!(served_subject(listen).contains("second"));
}

#[test]
fn check_names_a_missing_certificate() {
    let dir = fresh_dir("tls-check");
    let config = dir.join("inferlb.toml");
    std::fs::write(
        &config,
        format!(
            "[[listeners]]\naddress = \"127.0.0.1:8443\"\n\
             tls = {{ certificates = [{{ cert = \"{0}/missing.pem\", key = \"{0}/missing.key\" }}] }}\n",
            dir.display()
        ),
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_inferlb"))
        .args(["check", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("listeners[0].tls") && stderr.contains("missing.pem"),
        "{stderr}"
    );
}
