//! Replica host names, resolved off the control thread and again on an
//! interval: an address that changed replaces the replica (in-flight
//! requests to the old address finish; the new one ramps up under slow
//! start), and a replica whose name did not resolve at start becomes
//! routable once it does. A resolver that hangs holds up only its own
//! lookup: health checks, the drain reaper and `/metrics` carry on.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use inferlb_core::replica::resolve_address;
use inferlb_core::{Command, ReplicaState};

use crate::writer::Control;

/// Turns `host:port` text into an address. The system resolver runs on
/// tokio's blocking pool; tests plug in their own.
pub trait Resolve: Send + Sync + 'static {
    /// Resolves one address (blocking is allowed: this runs on the blocking
    /// pool, never on the control thread).
    fn resolve(&self, address: &str) -> std::io::Result<SocketAddr>;
}

/// The system resolver (`getaddrinfo`, through the standard library).
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemResolver;

impl Resolve for SystemResolver {
    fn resolve(&self, address: &str) -> std::io::Result<SocketAddr> {
        resolve_address(address).map_err(std::io::Error::other)
    }
}

/// How long one lookup may take before this round gives up on it; the
/// lookup's thread finishes on its own, and the name is not asked again
/// while it is still out.
pub const LOOKUP_TIMEOUT: Duration = Duration::from_secs(5);

/// Re-resolves replica host names every `interval`, forever.
pub async fn run(control: Arc<Control>, interval: Duration, resolver: Arc<dyn Resolve>) {
    let outstanding = Arc::new(Mutex::new(HashSet::new()));
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticker.tick().await;
    loop {
        ticker.tick().await;
        refresh(&control, &resolver, &outstanding, LOOKUP_TIMEOUT).await;
    }
}

/// One round: every replica named by a host name (or not resolved yet) is
/// looked up; each answer that differs becomes a `SetAddress`. Returns how
/// many replicas changed. `outstanding` holds the names whose lookups are
/// still out from earlier rounds.
pub async fn refresh(
    control: &Control,
    resolver: &Arc<dyn Resolve>,
    outstanding: &Arc<Mutex<HashSet<String>>>,
    timeout: Duration,
) -> usize {
    let snapshot = control.snapshot();
    let mut lookups = tokio::task::JoinSet::new();
    for replica in snapshot.replicas() {
        let literal = replica.address.parse::<SocketAddr>().is_ok();
        if (literal && replica.resolved) || replica.state == ReplicaState::Draining {
            continue;
        }
        let address = replica.address.clone();
        if !outstanding
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(address.clone())
        {
            continue;
        }
        let (resolver, outstanding) = (Arc::clone(resolver), Arc::clone(outstanding));
        let id = replica.id.clone();
        lookups.spawn(async move {
            let name = address.clone();
            let lookup = tokio::task::spawn_blocking(move || {
                let answer = resolver.resolve(&name);
                outstanding
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .remove(&name);
                answer
            });
            (id, address, tokio::time::timeout(timeout, lookup).await)
        });
    }
    let mut changed = 0;
    while let Some(Ok((id, address, answer))) = lookups.join_next().await {
        let addr = match answer {
            Ok(Ok(Ok(addr))) => addr,
            Ok(Ok(Err(error))) => {
                tracing::debug!(%id, %address, %error, "replica name did not resolve; keeping what it had");
                continue;
            }
            Ok(Err(_)) | Err(_) => {
                tracing::warn!(%id, %address, "replica name lookup is taking too long; keeping what it had");
                continue;
            }
        };
        let before = control
            .snapshot()
            .replicas()
            .iter()
            .find(|r| r.id == id)
            .map(|r| (r.resolved, r.addr));
        match control
            .apply_one(Command::SetAddress {
                id: id.clone(),
                addr,
            })
            .await
        {
            Ok(inferlb_core::Outcome::Changed) => {
                changed += 1;
                match before {
                    Some((true, old)) => {
                        tracing::info!(%id, %address, %old, new = %addr, "replica address changed; replaced")
                    }
                    _ => {
                        tracing::info!(%id, %address, resolved = %addr, "replica name resolves now")
                    }
                }
            }
            Ok(inferlb_core::Outcome::NoChange) => {}
            Err(error) => {
                tracing::warn!(%id, %address, %error, "new address of a replica not applied")
            }
        }
    }
    changed
}
