//! Active health checks from the control plane: an HTTP GET per replica on
//! an interval; a verdict flips after N passes or failures in a row (ALB's
//! healthy and unhealthy thresholds) and becomes a `SetHealth` command.
//!
//! ```text
//!            unhealthy_threshold failures in a row
//!   Healthy ─────────────────────────────────────▶ Unhealthy
//!      ▲                                               │
//!      └──────── healthy_threshold passes in a row ────┘
//! ```

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use inferlb_core::config::HealthCheck;
use inferlb_core::{Command, Health, Replica, ReplicaState};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::control::Control;

/// The state an operator sees: draining wins, then an ejection, then a
/// failing health check.
pub fn effective_state(r: &Replica, now_ms: u64) -> &'static str {
    if r.state == ReplicaState::Draining {
        "draining"
    } else if r.stats.is_ejected(now_ms) {
        "ejected"
    } else if r.health == Health::Unhealthy {
        "unhealthy"
    } else {
        "active"
    }
}

/// One check: a GET of `path` answered 200–399 within `timeout`.
pub async fn check(addr: SocketAddr, path: &str, timeout: Duration) -> bool {
    let attempt = async {
        let mut stream = TcpStream::connect(addr).await.ok()?;
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: inferlb-health-check\r\nConnection: close\r\n\r\n"
        );
        stream.write_all(request.as_bytes()).await.ok()?;
        let mut head = [0u8; 64];
        let mut have = 0;
        while have < 12 {
            let n = stream.read(&mut head[have..]).await.ok()?;
            if n == 0 {
                break;
            }
            have += n;
        }
        let line = std::str::from_utf8(&head[..have]).ok()?;
        let status: u16 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some((200..400).contains(&status))
    };
    matches!(tokio::time::timeout(timeout, attempt).await, Ok(Some(true)))
}

/// Checks every replica of the current snapshot each interval, forever.
pub async fn run(control: Arc<Control>, config: HealthCheck) {
    // Passes (positive) or failures (negative) in a row, per replica uid.
    let mut runs: HashMap<u64, i64> = HashMap::new();
    let mut ticker = tokio::time::interval(config.interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let snapshot = control.snapshot();
        let mut checks = tokio::task::JoinSet::new();
        for r in snapshot.replicas() {
            let (uid, addr, path, timeout) = (r.uid, r.addr, config.path.clone(), config.timeout);
            checks.spawn(async move { (uid, check(addr, &path, timeout).await) });
        }
        let mut verdicts = HashMap::new();
        while let Some(Ok((uid, passed))) = checks.join_next().await {
            verdicts.insert(uid, passed);
        }
        runs.retain(|uid, _| verdicts.contains_key(uid));
        let mut commands = Vec::new();
        for r in snapshot.replicas() {
            let Some(&passed) = verdicts.get(&r.uid) else {
                continue;
            };
            let run = runs.entry(r.uid).or_insert(0);
            *run = match (passed, *run) {
                (true, n) if n > 0 => n + 1,
                (true, _) => 1,
                (false, n) if n < 0 => n - 1,
                (false, _) => -1,
            };
            if r.health == Health::Healthy && -*run >= i64::from(config.unhealthy_threshold) {
                tracing::warn!(id = %r.id, address = %r.address, path = %config.path, "replica failed its health checks: unhealthy");
                commands.push(Command::SetHealth {
                    id: r.id.clone(),
                    health: Health::Unhealthy,
                });
            } else if r.health == Health::Unhealthy && *run >= i64::from(config.healthy_threshold) {
                tracing::info!(id = %r.id, address = %r.address, "replica passes its health checks again: healthy");
                commands.push(Command::SetHealth {
                    id: r.id.clone(),
                    health: Health::Healthy,
                });
            }
        }
        if !commands.is_empty() {
            // A replica removed meanwhile makes its command fail; apply the
            // others one by one.
            for command in commands {
                if let Err(e) = control.apply_one(command).await {
                    tracing::debug!(error = %e, "health verdict not applied");
                }
            }
            let now = control.snapshot();
            if now.failing_open() {
                tracing::warn!("every replica is unhealthy: failing open, routing to all of them");
            }
        }
    }
}
