//! Load for the edge scenarios (`tls`, `h2`): a test certificate for every
//! peer, TLS handshakes (a new connection per request, rustls as the
//! client), h2load runs (HTTP/1.1 over TLS at a fixed rate, h2 over TLS and
//! h2c), and idle TLS and h2 connections held open to weigh them.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use hdrhistogram::Histogram;
use rustls::pki_types::ServerName;
use rustls::ClientConfig;

use crate::peers::TlsFiles;

/// An ECDSA P-256 certificate for `localhost` and 127.0.0.1, self-signed.
pub fn certificate(dir: &Path) -> Result<TlsFiles> {
    std::fs::create_dir_all(dir)?;
    let key = rcgen::KeyPair::generate()?;
    let params = rcgen::CertificateParams::new(vec!["localhost".into(), "127.0.0.1".into()])?;
    let cert = params.self_signed(&key)?;
    let files = TlsFiles {
        cert: dir.join("bench.pem"),
        key: dir.join("bench.key"),
        combined: dir.join("bench-combined.pem"),
    };
    std::fs::write(&files.cert, cert.pem())?;
    std::fs::write(&files.key, key.serialize_pem())?;
    std::fs::write(
        &files.combined,
        format!("{}{}", cert.pem(), key.serialize_pem()),
    )?;
    Ok(files)
}

/// Which handshakes a handshake run makes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Handshake {
    /// TLS 1.3, a full handshake every time.
    Full13,
    /// TLS 1.2, resuming the session (tickets or the cache) after the first.
    Resumed12,
}

/// What a handshake run did.
#[derive(Debug, Default)]
pub struct Handshakes {
    pub completed: u64,
    pub resumed: u64,
    pub errors: u64,
    pub elapsed: Duration,
    /// Connect to the end of the response, µs.
    pub latency: Option<Histogram<u64>>,
}

/// Opens a new TLS connection per request (`GET /v1/models`, closed
/// after the response) from `threads` threads for `duration`.
pub fn handshakes(
    addr: SocketAddr,
    threads: usize,
    duration: Duration,
    kind: Handshake,
) -> Handshakes {
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let workers: Vec<_> = (0..threads.max(1))
        .map(|_| {
            let stop = Arc::clone(&stop);
            std::thread::spawn(move || {
                let config = client_config(kind);
                let mut done = Handshakes {
                    latency: Histogram::new(3).ok(),
                    ..Handshakes::default()
                };
                while !stop.load(Ordering::Relaxed) {
                    let t = Instant::now();
                    match one_request(addr, &config) {
                        Ok(resumed) => {
                            done.completed += 1;
                            done.resumed += u64::from(resumed);
                            if let Some(h) = done.latency.as_mut() {
                                let _ = h.record(t.elapsed().as_micros() as u64);
                            }
                        }
                        Err(_) => done.errors += 1,
                    }
                }
                done
            })
        })
        .collect();
    std::thread::sleep(duration);
    stop.store(true, Ordering::Relaxed);
    let mut total = Handshakes {
        latency: Histogram::new(3).ok(),
        ..Handshakes::default()
    };
    for worker in workers {
        if let Ok(done) = worker.join() {
            total.completed += done.completed;
            total.resumed += done.resumed;
            total.errors += done.errors;
            if let (Some(all), Some(h)) = (total.latency.as_mut(), done.latency.as_ref()) {
                let _ = all.add(h);
            }
        }
    }
    total.elapsed = started.elapsed();
    total
}

fn client_config(kind: Handshake) -> Arc<ClientConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let versions: &[&rustls::SupportedProtocolVersion] = match kind {
        Handshake::Full13 => &[&rustls::version::TLS13],
        Handshake::Resumed12 => &[&rustls::version::TLS12],
    };
    let mut config = ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_protocol_versions(versions)
        .expect("TLS versions")
        .dangerous()
        .with_custom_certificate_verifier(inferlb_proxy::bench_support::accept_any_certificate(
            provider,
        ))
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    if kind == Handshake::Full13 {
        config.resumption = rustls::client::Resumption::disabled();
    }
    Arc::new(config)
}

/// One request on a new connection; returns whether the session resumed.
fn one_request(addr: SocketAddr, config: &Arc<ClientConfig>) -> Result<bool> {
    let mut tcp = TcpStream::connect(addr)?;
    tcp.set_nodelay(true)?;
    tcp.set_read_timeout(Some(Duration::from_secs(5)))?;
    let name = ServerName::try_from("localhost")?;
    let mut conn = rustls::ClientConnection::new(Arc::clone(config), name)?;
    let mut tls = rustls::Stream::new(&mut conn, &mut tcp);
    tls.write_all(b"GET /v1/models HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n")?;
    let mut response = Vec::with_capacity(1024);
    match tls.read_to_end(&mut response) {
        Ok(_) => {}
        // A peer that closes without close_notify.
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {}
        Err(e) => return Err(e.into()),
    }
    if !response.starts_with(b"HTTP/1.1 200") {
        bail!("not 200");
    }
    Ok(conn.handshake_kind() == Some(rustls::HandshakeKind::Resumed))
}

/// What an h2load run reported.
#[derive(Debug, Default, Clone)]
pub struct H2load {
    pub rps: f64,
    pub succeeded: u64,
    pub failed: u64,
    /// Mean and max time per request, ms.
    pub mean_ms: f64,
    pub max_ms: f64,
}

/// Percentiles of the per-request times h2load wrote with `--log-file`
/// (tab-separated: start µs since the epoch, status, µs to the response's
/// end), in ms: p50, p99.
pub fn h2load_log_percentiles(path: &std::path::Path) -> Option<(f64, f64)> {
    let text = std::fs::read_to_string(path).ok()?;
    let mut histogram = hdrhistogram::Histogram::<u64>::new(3).ok()?;
    for line in text.lines() {
        let micros = line
            .split('\t')
            .nth(2)
            .and_then(|v| v.trim().parse::<u64>().ok());
        if let Some(micros) = micros {
            let _ = histogram.record(micros.max(1));
        }
    }
    if histogram.is_empty() {
        return None;
    }
    let ms = |q: f64| histogram.value_at_quantile(q) as f64 / 1000.0;
    Some((ms(0.5), ms(0.99)))
}

/// Runs h2load with `args` and reads its summary.
pub fn h2load(args: &[String]) -> Result<H2load> {
    let out = Command::new("h2load").args(args).output().context(
        "h2load is not installed (apt install nghttp2-client; cargo xtask bench --install-peers)",
    )?;
    let text = String::from_utf8_lossy(&out.stdout);
    let mut result = H2load::default();
    for line in text.lines() {
        let line = line.trim();
        if let Some(rest) = line.strip_prefix("finished in ") {
            // finished in 5.00s, 12345.67 req/s, 1.23MB/s
            result.rps = rest
                .split(", ")
                .nth(1)
                .and_then(|r| r.strip_suffix(" req/s"))
                .and_then(|r| r.parse().ok())
                .unwrap_or(0.0);
        } else if let Some(rest) = line.strip_prefix("requests: ") {
            // requests: N total, N started, N done, N succeeded, N failed, ...
            for part in rest.split(", ") {
                let mut words = part.split(' ');
                let (Some(n), Some(what)) = (words.next(), words.next()) else {
                    continue;
                };
                let n = n.parse().unwrap_or(0);
                match what {
                    "succeeded" => result.succeeded = n,
                    "failed" => result.failed = n,
                    _ => {}
                }
            }
        } else if let Some(rest) = line.strip_prefix("time for request:") {
            // time for request: min max mean sd +/- sd
            let fields: Vec<&str> = rest.split_whitespace().collect();
            let ms = |s: &str| {
                if let Some(v) = s.strip_suffix("us") {
                    v.parse::<f64>().ok().map(|v| v / 1000.0)
                } else if let Some(v) = s.strip_suffix("ms") {
                    v.parse::<f64>().ok()
                } else if let Some(v) = s.strip_suffix('s') {
                    v.parse::<f64>().ok().map(|v| v * 1000.0)
                } else {
                    None
                }
            };
            result.max_ms = fields.get(1).and_then(|s| ms(s)).unwrap_or(0.0);
            result.mean_ms = fields.get(2).and_then(|s| ms(s)).unwrap_or(0.0);
        }
    }
    if result.succeeded == 0 {
        bail!(
            "h2load completed no request:\n{text}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(result)
}

/// Connections held open and idle.
#[derive(Debug)]
pub struct Idle {
    held: Vec<Box<dyn Send + std::fmt::Debug>>,
    pub opened: Arc<AtomicU64>,
}

impl Idle {
    pub fn len(&self) -> usize {
        self.held.len()
    }

    pub fn is_empty(&self) -> bool {
        self.held.is_empty()
    }
}

/// `n` TLS keep-alive connections, each after one request whose response
/// was read, then idle.
pub fn idle_tls(addr: SocketAddr, n: usize) -> Idle {
    let config = client_config(Handshake::Full13);
    let opened = Arc::new(AtomicU64::new(0));
    let mut held: Vec<Box<dyn Send + std::fmt::Debug>> = Vec::with_capacity(n);
    for _ in 0..n {
        let Ok(stream) = idle_tls_one(addr, &config) else {
            continue;
        };
        opened.fetch_add(1, Ordering::Relaxed);
        held.push(Box::new(stream));
    }
    Idle { held, opened }
}

type TlsConn = rustls::StreamOwned<rustls::ClientConnection, TcpStream>;

fn idle_tls_one(addr: SocketAddr, config: &Arc<ClientConfig>) -> Result<TlsConn> {
    let tcp = TcpStream::connect(addr)?;
    tcp.set_read_timeout(Some(Duration::from_secs(5)))?;
    let conn =
        rustls::ClientConnection::new(Arc::clone(config), ServerName::try_from("localhost")?)?;
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    tls.write_all(b"GET /v1/models HTTP/1.1\r\nHost: bench\r\n\r\n")?;
    // The response's head and its Content-Length body.
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = tls.read(&mut buf)?;
        if n == 0 {
            bail!("closed");
        }
        got.extend_from_slice(&buf[..n]);
        if let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&got[..end]).to_ascii_lowercase();
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0);
            if got.len() >= end + 4 + len {
                return Ok(tls);
            }
        }
    }
}

/// `n` h2c connections (prior knowledge): the preface and SETTINGS sent,
/// the server's SETTINGS read, then idle.
pub fn idle_h2c(addr: SocketAddr, n: usize) -> Idle {
    let opened = Arc::new(AtomicU64::new(0));
    let mut held: Vec<Box<dyn Send + std::fmt::Debug>> = Vec::with_capacity(n);
    for _ in 0..n {
        let Ok(mut tcp) = TcpStream::connect(addr) else {
            continue;
        };
        let _ = tcp.set_read_timeout(Some(Duration::from_secs(5)));
        let mut hello = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        // An empty SETTINGS frame.
        hello.extend_from_slice(&[0, 0, 0, 4, 0, 0, 0, 0, 0]);
        if tcp.write_all(&hello).is_err() {
            continue;
        }
        let mut header = [0u8; 9];
        if tcp.read_exact(&mut header).is_err() || header[3] != 4 {
            continue;
        }
        opened.fetch_add(1, Ordering::Relaxed);
        held.push(Box::new(tcp));
    }
    Idle { held, opened }
}
