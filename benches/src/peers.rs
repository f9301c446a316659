//! The proxies under comparison: inferlb, nginx and HAProxy, each started on
//! the same replicas with the same worker count and CPU pinning, plus
//! "direct" (no proxy: the limit) and an L4 relay (HAProxy in `mode tcp`:
//! it forwards bytes without parsing them, the floor for any proxy's CPU).

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde::Serialize;

use crate::{h2codec, procstat};

/// The route every peer of the edge scenarios answers itself (inferlb's
/// `[health] serve_path`): HTTP/2 measured without a replica.
pub const HEALTH_PATH: &str = "/healthz";

/// A load balancer in the comparison.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Peer {
    Direct,
    Inferlb,
    Nginx,
    Haproxy,
    /// HAProxy in `mode tcp`: each client connection relayed byte for byte
    /// to one replica.
    #[serde(rename = "haproxy-tcp")]
    HaproxyTcp,
    /// Not a proxy: the `h2` crate answering every stream itself
    /// ([`crate::h2codec`]), the HTTP/2 codec's floor in the `h2` scenario.
    #[serde(rename = "h2-crate")]
    H2Crate,
    /// SGLang's model gateway (`smg launch`, PyPI `smg`), with the policy
    /// in [`PeerSettings::routing`].
    Smg,
    /// vLLM's router (`vllm-router`, PyPI `vllm-router`).
    #[serde(rename = "vllm-router")]
    VllmRouter,
}

impl Peer {
    pub fn name(self) -> &'static str {
        match self {
            Self::Direct => "direct",
            Self::Inferlb => "inferlb",
            Self::Nginx => "nginx",
            Self::Haproxy => "haproxy",
            Self::HaproxyTcp => "haproxy-tcp",
            Self::H2Crate => "h2-crate",
            Self::Smg => "smg",
            Self::VllmRouter => "vllm-router",
        }
    }

    /// Whether the peer's program is on this machine.
    pub fn installed(self) -> bool {
        match self {
            Self::Direct | Self::Inferlb | Self::H2Crate => true,
            Self::Nginx => which("nginx").is_some(),
            Self::Haproxy | Self::HaproxyTcp => which("haproxy").is_some(),
            // In the venv `cargo xtask bench` installs; checked at start.
            Self::Smg | Self::VllmRouter => true,
        }
    }
}

/// The path of a program on `PATH` (and the sbin folders apt uses).
pub fn which(program: &str) -> Option<PathBuf> {
    let path = std::env::var("PATH").unwrap_or_default();
    let found = path
        .split(':')
        .chain(["/usr/sbin", "/sbin", "/usr/local/sbin"])
        .map(|dir| Path::new(dir).join(program))
        .find(|p| p.is_file());
    found
}

/// How every proxy runs.
#[derive(Debug, Clone)]
pub struct PeerSettings {
    pub workers: usize,
    /// CPUs the proxy is pinned to (`taskset -c`), empty for no pinning.
    pub proxy_cpus: Vec<usize>,
    /// The inferlb binary.
    pub inferlb: PathBuf,
    /// Scratch directory for configs and logs.
    pub dir: PathBuf,
    /// Routing rule for inferlb; the policy of an inference router.
    pub routing: String,
    /// The venv holding `smg` and `vllm-router` (`target/routers-venv`).
    pub routers_venv: PathBuf,
    /// Keep-alive connections per upstream (nginx `keepalive`).
    pub upstream_keepalive: usize,
    /// Extra TOML for inferlb's config file (e.g. `[engine_metrics]`).
    pub inferlb_config: Option<String>,
    /// Serve TLS (HTTP/1.1 and h2 by ALPN) with this certificate on
    /// `addr`, and h2c with prior knowledge on a second address, instead
    /// of plaintext HTTP/1.1 (the `tls` and `h2` scenarios).
    pub tls: Option<TlsFiles>,
    /// The replicas speak gRPC: h2c from clients, HTTP/2 to the replicas
    /// (inferlb's `protocol = "grpc"` pool, HAProxy's `proto h2`).
    pub grpc: bool,
}

/// One certificate for every peer: the chain, its key, and both in one
/// file (HAProxy's `crt`).
#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub combined: PathBuf,
}

/// The descriptor limit a peer may raise itself to (the hard limit).
fn nofile_limit() -> u64 {
    rlimit::Resource::NOFILE
        .get()
        .map_or(65_536, |(_, hard)| hard.min(1 << 20))
}

/// A running peer.
#[derive(Debug)]
pub struct Running {
    pub peer: Peer,
    /// Where clients connect: TLS with [`PeerSettings::tls`].
    pub addr: SocketAddr,
    /// h2c with prior knowledge, with [`PeerSettings::tls`].
    pub h2c: Option<SocketAddr>,
    /// The admin API, for inferlb.
    pub admin: Option<SocketAddr>,
    child: Option<Child>,
}

impl Running {
    /// Root process id (nginx's master, HAProxy, inferlb); none for direct.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// CPU seconds used so far by the peer and its children.
    pub fn cpu_seconds(&self) -> f64 {
        self.pid().map_or(0.0, procstat::tree_cpu_seconds)
    }

    /// Peak resident memory of the peer and its children, in KiB.
    pub fn peak_rss_kib(&self) -> u64 {
        self.pid().map_or(0, procstat::tree_peak_rss_kib)
    }

    /// Current resident memory of the peer and its children, in KiB.
    pub fn rss_kib(&self) -> u64 {
        self.pid().map_or(0, procstat::tree_rss_kib)
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
            let deadline = Instant::now() + Duration::from_secs(3);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

pub fn free_port() -> Result<SocketAddr> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?)
}

fn wait_for(addr: SocketAddr, child: &mut Child, what: &str) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return Ok(());
        }
        if let Some(status) = child.try_wait()? {
            bail!("{what} exited during start-up ({status})");
        }
        if Instant::now() > deadline {
            bail!("{what} did not listen on {addr} within 15 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `taskset -c CPUS program args...`, or the program alone without pinning.
fn pinned(program: &Path, cpus: &[usize]) -> Command {
    if cpus.is_empty() || which("taskset").is_none() {
        return Command::new(program);
    }
    let list = cpus
        .iter()
        .map(usize::to_string)
        .collect::<Vec<_>>()
        .join(",");
    let mut c = Command::new("taskset");
    c.arg("-c").arg(list).arg(program);
    c
}

/// The exact command line an inference router is started with (the
/// report records it): `smg launch` or `vllm-router` on `addr` in front of
/// `replicas`, with `policy`, its own Prometheus exporter on `metrics`,
/// warnings only (per-request logging costs both the same CPU they would
/// spend in production with it on; both log every request at info).
pub fn router_command(
    peer: Peer,
    venv: &Path,
    addr: SocketAddr,
    metrics: SocketAddr,
    replicas: &[SocketAddr],
    policy: &str,
) -> Vec<String> {
    let urls = replicas.iter().map(|r| format!("http://{r}"));
    let (program, mut args): (&str, Vec<String>) = match peer {
        Peer::Smg => ("smg", vec!["launch".into()]),
        _ => ("vllm-router", Vec::new()),
    };
    let mut command = vec![venv.join("bin").join(program).display().to_string()];
    command.append(&mut args);
    command.extend(["--host".into(), addr.ip().to_string()]);
    command.extend(["--port".into(), addr.port().to_string()]);
    command.push("--worker-urls".into());
    command.extend(urls);
    command.extend(["--policy".into(), policy.into()]);
    command.extend(["--prometheus-host".into(), metrics.ip().to_string()]);
    command.extend(["--prometheus-port".into(), metrics.port().to_string()]);
    let level = if peer == Peer::Smg { "warn" } else { "warning" };
    command.extend(["--log-level".into(), level.into()]);
    command
}

fn start_router(peer: Peer, replicas: &[SocketAddr], s: &PeerSettings) -> Result<Running> {
    let (addr, metrics) = (free_port()?, free_port()?);
    let command = router_command(peer, &s.routers_venv, addr, metrics, replicas, &s.routing);
    let program = PathBuf::from(&command[0]);
    if !program.is_file() {
        bail!(
            "{} is not installed: `cargo xtask bench` installs it into {}",
            peer.name(),
            s.routers_venv.display()
        );
    }
    let log = std::fs::File::create(s.dir.join(format!("{}.log", peer.name())))?;
    let mut child = pinned(&program, &s.proxy_cpus)
        .args(&command[1..])
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .with_context(|| format!("cannot start {}", peer.name()))?;
    wait_for(addr, &mut child, peer.name())?;
    Ok(Running {
        peer,
        addr,
        h2c: None,
        admin: None,
        child: Some(child),
    })
}

/// Starts a peer in front of `replicas`.
pub fn start(peer: Peer, replicas: &[SocketAddr], s: &PeerSettings) -> Result<Running> {
    std::fs::create_dir_all(&s.dir)?;
    match peer {
        Peer::Direct => Ok(Running {
            peer,
            addr: replicas[0],
            h2c: None,
            admin: None,
            child: None,
        }),
        Peer::Smg | Peer::VllmRouter => start_router(peer, replicas, s),
        Peer::H2Crate => {
            let addr = free_port()?;
            let program = std::env::current_exe().context("the bench's own binary")?;
            let mut child = pinned(&program, &s.proxy_cpus)
                .arg("--serve-h2-crate")
                .arg(addr.to_string())
                .stdout(Stdio::null())
                .spawn()
                .context("cannot start the h2 crate's server")?;
            wait_for(addr, &mut child, "the h2 crate's server")?;
            Ok(Running {
                peer,
                addr,
                h2c: Some(addr),
                admin: None,
                child: Some(child),
            })
        }
        Peer::Inferlb => {
            let addr = free_port()?;
            let admin = free_port()?;
            let h2c = s.tls.as_ref().map(|_| free_port()).transpose()?;
            let mut cmd = pinned(&s.inferlb, &s.proxy_cpus);
            cmd.args(["serve", "--admin-listen", &admin.to_string()]);
            let mut config = s.inferlb_config.clone().unwrap_or_default();
            if s.grpc {
                let list: Vec<String> = replicas
                    .iter()
                    .map(|r| format!("{{ address = \"{r}\" }}"))
                    .collect();
                config.push_str(&format!(
                    "\n[[pools]]\nname = \"m1\"\nprotocol = \"grpc\"\n\
                     grpc = {{ services = [\"inference.GRPCInferenceService\"] }}\nreplicas = [{}]\n",
                    list.join(", ")
                ));
            }
            match (&s.tls, h2c) {
                (Some(tls), Some(h2c)) => config.push_str(&format!(
                    "\n[health]\nserve_path = \"{HEALTH_PATH}\"\n[[listeners]]\naddress = \"{addr}\"\ntls = {{ certificates = [{{ cert = \"{}\", key = \"{}\" }}] }}\n\
                     [[listeners]]\naddress = \"{h2c}\"\n",
                    tls.cert.display(),
                    tls.key.display()
                )),
                _ => {
                    cmd.args(["--listen", &addr.to_string()]);
                }
            }
            cmd.args(["--workers", &s.workers.to_string(), "--routing", &s.routing])
                .env("RUST_LOG", "warn")
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(
                    s.dir.join(format!("inferlb-{}.log", addr.port())),
                )?);
            // A fleet member's state lives in etcd, not in a state file.
            if !config.contains("[cluster]") {
                cmd.arg("--state-file")
                    .arg(s.dir.join(format!("state-{}.json", addr.port())));
            }
            // A gRPC pool's replicas are declared in its config above.
            for r in replicas.iter().filter(|_| !s.grpc) {
                cmd.args(["--replica", &r.to_string()]);
            }
            if !config.is_empty() {
                let path = s.dir.join(format!("inferlb-{}.toml", addr.port()));
                std::fs::write(&path, config)?;
                cmd.arg("--config").arg(path);
            }
            let mut child = cmd.spawn().context("cannot start inferlb")?;
            wait_for(addr, &mut child, "inferlb")?;
            Ok(Running {
                peer,
                addr,
                h2c,
                admin: Some(admin),
                child: Some(child),
            })
        }
        Peer::Nginx => {
            let addr = free_port()?;
            let h2c = s.tls.as_ref().map(|_| free_port()).transpose()?;
            // nginx 1.22: `http2` on `listen`; on a plaintext listener it is
            // h2c with prior knowledge.
            let listen = match (&s.tls, h2c) {
                (Some(tls), Some(h2c)) => format!(
                    "listen {addr} ssl http2 reuseport;\n        listen {h2c} http2 reuseport;\n\
                     ssl_certificate {};\n        ssl_certificate_key {};\n\
                     ssl_protocols TLSv1.2 TLSv1.3;\n        ssl_session_cache shared:SSL:10m;\n\
                     ssl_session_tickets on;\n        http2_max_concurrent_streams 128;\n        \
                     location = {HEALTH_PATH} {{ default_type application/json; return 200 '{body}'; }}",
                    tls.cert.display(),
                    tls.key.display(),
                    body = h2codec::BODY,
                ),
                _ => format!("listen {addr} reuseport;"),
            };
            let servers: String = replicas
                .iter()
                .map(|r| format!("        server {r};\n"))
                .collect();
            let conf = format!(
                "worker_processes {workers};\nerror_log {dir}/nginx-error.log warn;\npid {dir}/nginx.pid;\n\
                 worker_rlimit_nofile {nofile};\nevents {{ worker_connections {conns}; }}\n\
                 http {{\n    access_log off;\n    keepalive_requests 1000000;\n    keepalive_timeout 120s;\n\
                 \n    upstream replicas {{\n{servers}        keepalive {keepalive};\n        keepalive_requests 1000000;\n    }}\n\
                 \n    server {{\n        {listen}\n        location / {{\n            proxy_pass http://replicas;\n\
                             proxy_http_version 1.1;\n            proxy_set_header Connection \"\";\n\
                             proxy_buffering off;\n            proxy_request_buffering off;\n        }}\n    }}\n}}\n",
                workers = s.workers,
                dir = s.dir.display(),
                keepalive = s.upstream_keepalive,
                nofile = nofile_limit(),
                conns = nofile_limit().saturating_sub(100).max(1024),
            );
            let path = s.dir.join("nginx.conf");
            std::fs::write(&path, conf)?;
            let nginx = which("nginx").context("nginx is not installed (use --install-peers)")?;
            let mut child = pinned(&nginx, &s.proxy_cpus)
                .arg("-c")
                .arg(&path)
                .arg("-p")
                .arg(&s.dir)
                .args(["-g", "daemon off;"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .context("cannot start nginx")?;
            wait_for(addr, &mut child, "nginx")?;
            Ok(Running {
                peer,
                addr,
                h2c,
                admin: None,
                child: Some(child),
            })
        }
        Peer::Haproxy | Peer::HaproxyTcp => {
            let addr = free_port()?;
            let h2c = s.tls.as_ref().map(|_| free_port()).transpose()?;
            let bind = match (&s.tls, h2c) {
                (Some(tls), Some(h2c)) => format!(
                    "bind {addr} ssl crt {} alpn h2,http/1.1\n    bind {h2c} proto h2\n    \
                     http-request return status 200 content-type application/json string '{body}' \
                     if {{ path {HEALTH_PATH} }}",
                    tls.combined.display(),
                    body = h2codec::BODY,
                ),
                // gRPC: h2c from clients (prior knowledge).
                _ if s.grpc => format!("bind {addr} proto h2"),
                _ => format!("bind {addr}"),
            };
            let proto = if s.grpc { " proto h2" } else { "" };
            let servers: String = replicas
                .iter()
                .enumerate()
                .map(|(i, r)| format!("    server r{i} {r}{proto}\n"))
                .collect();
            // HAProxy needs two descriptors per connection plus a margin.
            let maxconn = (nofile_limit().saturating_sub(200) / 2).max(1024);
            let conf = if peer == Peer::HaproxyTcp {
                // Round robin per connection: each client connection is
                // relayed to one replica for its whole life.
                format!(
                    "global\n    nbthread {workers}\n    maxconn {maxconn}\n\ndefaults\n    mode tcp\n    timeout connect 2s\n\
                     timeout client 120s\n    timeout server 300s\n\n\
                     frontend fe\n    bind {addr}\n    default_backend be\n\nbackend be\n    balance roundrobin\n{servers}",
                    workers = s.workers,
                )
            } else {
                format!(
                    "global\n    nbthread {workers}\n    maxconn {maxconn}\n\ndefaults\n    mode http\n    timeout connect 2s\n\
                     timeout client 120s\n    timeout server 300s\n    timeout http-keep-alive 120s\n    option http-keep-alive\n\n\
                     frontend fe\n    {bind}\n    default_backend be\n\nbackend be\n    balance roundrobin\n\
                         http-reuse always\n{servers}",
                    workers = s.workers,
                )
            };
            let path = s.dir.join(format!("{}.cfg", peer.name()));
            std::fs::write(&path, conf)?;
            let haproxy =
                which("haproxy").context("haproxy is not installed (use --install-peers)")?;
            let mut child = pinned(&haproxy, &s.proxy_cpus)
                .arg("-f")
                .arg(&path)
                .arg("-db")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .context("cannot start haproxy")?;
            wait_for(addr, &mut child, "haproxy")?;
            Ok(Running {
                peer,
                addr,
                h2c,
                admin: None,
                child: Some(child),
            })
        }
    }
}
