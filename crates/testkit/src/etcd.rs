//! A real etcd cluster on loopback for the fleet's tests: three members
//! (Debian's `etcd-server`, which `cargo xtask test` installs), each a
//! child process that a test can kill, stop and start again.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::client::{eventually, free_addr, RawClient};

/// One member.
#[derive(Debug)]
struct Member {
    name: String,
    client: SocketAddr,
    peer: SocketAddr,
    /// Plain HTTP `/health` (and metrics), whether clients use TLS or not.
    metrics: SocketAddr,
    child: Option<Child>,
}

/// TLS on etcd's client URLs: its certificate (with an IP SAN for
/// 127.0.0.1), key, and the CA its clients' certificates must chain to
/// (`--client-cert-auth`).
#[derive(Debug, Clone)]
pub struct EtcdTls {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub client_ca: PathBuf,
}

/// A running etcd cluster; its members are killed when dropped.
#[derive(Debug)]
pub struct EtcdCluster {
    dir: PathBuf,
    token: String,
    members: Vec<Member>,
    tls: Option<EtcdTls>,
}

/// The etcd binary: `$INFERLB_ETCD`, else `etcd` on the PATH.
fn etcd_binary() -> PathBuf {
    std::env::var_os("INFERLB_ETCD").map_or_else(|| PathBuf::from("etcd"), PathBuf::from)
}

impl EtcdCluster {
    /// Starts `size` members with their data under `dir`, and waits until
    /// every one answers `/health`. Panics, naming what to install, when
    /// etcd is missing.
    pub fn start(dir: &Path, size: usize) -> Self {
        Self::start_with(dir, size, None)
    }

    /// Like [`EtcdCluster::start`], its client URLs `https://` with `tls`
    /// and client certificates required.
    pub fn start_tls(dir: &Path, size: usize, tls: EtcdTls) -> Self {
        Self::start_with(dir, size, Some(tls))
    }

    /// Starts the members; a port taken between picking it and etcd's
    /// bind (tests run in parallel) starts the cluster again on new ports,
    /// up to three times.
    fn start_with(dir: &Path, size: usize, tls: Option<EtcdTls>) -> Self {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let cluster = Self::launch(dir, size, tls.clone());
            let healthy = eventually(Duration::from_secs(30), || {
                (0..size).all(|i| cluster.healthy(i))
            });
            if !healthy && attempt < 3 && cluster.lost_a_port() {
                drop(cluster);
                for i in 0..size {
                    let _ = std::fs::remove_dir_all(dir.join(format!("etcd-m{i}")));
                }
                continue;
            }
            cluster.wait_healthy();
            return cluster;
        }
    }

    /// Whether a member's log says its port was taken.
    fn lost_a_port(&self) -> bool {
        self.members.iter().any(|m| {
            std::fs::read_to_string(self.dir.join(format!("etcd-{}.log", m.name)))
                .is_ok_and(|log| log.contains("address already in use"))
        })
    }

    fn launch(dir: &Path, size: usize, tls: Option<EtcdTls>) -> Self {
        let members: Vec<Member> = (0..size)
            .map(|i| Member {
                name: format!("m{i}"),
                client: free_addr(),
                peer: free_addr(),
                metrics: free_addr(),
                child: None,
            })
            .collect();
        let mut cluster = Self {
            dir: dir.to_path_buf(),
            token: format!("inferlb-test-{}-{}", std::process::id(), fastrand::u32(..)),
            members,
            tls,
        };
        for i in 0..size {
            cluster.start_member(i);
        }
        cluster
    }

    /// The client URLs, for `[cluster] etcd`.
    pub fn endpoints(&self) -> Vec<String> {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        self.members
            .iter()
            .map(|m| format!("{scheme}://{}", m.client))
            .collect()
    }

    /// The endpoints as a TOML array.
    pub fn toml_endpoints(&self) -> String {
        let quoted: Vec<String> = self
            .endpoints()
            .iter()
            .map(|e| format!("\"{e}\""))
            .collect();
        format!("[{}]", quoted.join(", "))
    }

    fn start_member(&mut self, i: usize) {
        let initial: Vec<String> = self
            .members
            .iter()
            .map(|m| format!("{}=http://{}", m.name, m.peer))
            .collect();
        let m = &self.members[i];
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        let data = self.dir.join(format!("etcd-{}", m.name));
        let log = std::fs::File::create(self.dir.join(format!("etcd-{}.log", m.name)))
            .expect("an etcd log file");
        let mut command = Command::new(etcd_binary());
        if let Some(tls) = &self.tls {
            command
                .arg("--cert-file")
                .arg(&tls.cert)
                .arg("--key-file")
                .arg(&tls.key)
                .arg("--trusted-ca-file")
                .arg(&tls.client_ca)
                .arg("--client-cert-auth");
        }
        let child = command
            .arg("--name")
            .arg(&m.name)
            .arg("--data-dir")
            .arg(&data)
            .arg("--listen-client-urls")
            .arg(format!("{scheme}://{}", m.client))
            .arg("--advertise-client-urls")
            .arg(format!("{scheme}://{}", m.client))
            .arg("--listen-metrics-urls")
            .arg(format!("http://{}", m.metrics))
            .arg("--listen-peer-urls")
            .arg(format!("http://{}", m.peer))
            .arg("--initial-advertise-peer-urls")
            .arg(format!("http://{}", m.peer))
            .arg("--initial-cluster")
            .arg(initial.join(","))
            .arg("--initial-cluster-token")
            .arg(&self.token)
            .arg("--initial-cluster-state")
            .arg("new")
            .arg("--heartbeat-interval")
            .arg("50")
            .arg("--election-timeout")
            .arg("500")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot start etcd ({}): {e}; install Debian's etcd-server (cargo xtask test does)",
                    etcd_binary().display()
                )
            });
        self.members[i].child = Some(child);
    }

    /// Whether member `i` answers `/health` with a healthy cluster.
    fn healthy(&self, i: usize) -> bool {
        let Ok(mut client) = RawClient::connect(self.members[i].metrics) else {
            return false;
        };
        client
            .get("/health")
            .is_ok_and(|r| r.status == 200 && String::from_utf8_lossy(&r.body).contains("true"))
    }

    /// Waits until every running member is healthy.
    pub fn wait_healthy(&self) {
        for (i, m) in self.members.iter().enumerate() {
            if m.child.is_none() {
                continue;
            }
            assert!(
                eventually(Duration::from_secs(30), || self.healthy(i)),
                "etcd member {} did not become healthy; see {}",
                m.name,
                self.dir.join(format!("etcd-{}.log", m.name)).display()
            );
        }
    }

    /// Kills member `i` (SIGKILL).
    pub fn kill(&mut self, i: usize) {
        if let Some(mut child) = self.members[i].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Kills every member.
    pub fn stop_all(&mut self) {
        for i in 0..self.members.len() {
            self.kill(i);
        }
    }

    /// Starts every stopped member again on its data and waits for health.
    pub fn restart_stopped(&mut self) {
        for i in 0..self.members.len() {
            if self.members[i].child.is_none() {
                self.start_member(i);
            }
        }
        self.wait_healthy();
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        self.stop_all();
    }
}
