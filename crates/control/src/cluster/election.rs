//! Leaders for the fleet's singletons: etcd's election API on a lease.

use std::time::Duration;

use etcd_client::Client;
use inferlb_core::config::Cluster as ClusterConfig;

use super::{client, FleetError, CALL_TIMEOUT};

/// This instance leads a singleton of the fleet (etcd's election API on a
/// lease): it runs while `lost` has not fired.
pub struct Leadership {
    /// Fires when leadership may be lost: the lease could not be kept alive
    /// for two thirds of its TTL (stepping down before etcd could expire
    /// it, so two leaders never overlap), or it expired.
    pub lost: tokio::sync::watch::Receiver<bool>,
    keeper: tokio::task::JoinHandle<()>,
    client: Client,
    lease: i64,
}

impl Leadership {
    /// Gives leadership up at once (the lease is revoked, so a standby
    /// takes over without waiting for the TTL).
    pub async fn resign(mut self) {
        self.keeper.abort();
        let _ = tokio::time::timeout(CALL_TIMEOUT, self.client.lease_revoke(self.lease)).await;
    }
}

impl std::fmt::Debug for Leadership {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Leadership")
            .field("lease", &self.lease)
            .finish_non_exhaustive()
    }
}

impl Drop for Leadership {
    fn drop(&mut self) {
        self.keeper.abort();
    }
}

/// Campaigns for `singleton` (e.g. `autoscale-agent`) in `config`'s fleet
/// and returns once this instance leads. Standing by is logged with the
/// current leader's name.
pub async fn lead(config: &ClusterConfig, singleton: &str) -> Result<Leadership, FleetError> {
    let mut client = client(config).await?;
    let name = format!("{}election/{singleton}", config.prefix());
    let ttl = config.lease_ttl;
    let lease = client.lease_grant(ttl.as_secs() as i64, None).await?.id();
    // The lease is kept alive while campaigning too.
    let (lost_tx, lost) = tokio::sync::watch::channel(false);
    let keeper = tokio::spawn(keep_alive(client.clone(), lease, ttl, lost_tx));
    if let Ok(current) = client.leader(name.as_str()).await {
        if let Some(kv) = current.kv() {
            tracing::info!(
                singleton,
                leader = %String::from_utf8_lossy(kv.value()),
                "standing by: another instance leads"
            );
        }
    }
    let campaign = client.campaign(name.as_str(), config.instance.as_str(), lease);
    let mut watch = lost.clone();
    tokio::select! {
        won = campaign => { won?; }
        _ = watch.changed() => {
            keeper.abort();
            return Err(FleetError::Unreachable("the lease was lost while campaigning".to_owned()));
        }
    }
    tracing::info!(singleton, instance = %config.instance, "this instance leads");
    Ok(Leadership {
        lost,
        keeper,
        client,
        lease,
    })
}

async fn keep_alive(
    mut client: Client,
    lease: i64,
    ttl: Duration,
    lost: tokio::sync::watch::Sender<bool>,
) {
    let mut last_ok = tokio::time::Instant::now();
    let margin = ttl * 2 / 3;
    loop {
        tokio::time::sleep(ttl / 3).await;
        let kept = tokio::time::timeout(CALL_TIMEOUT, client.lease_keep_alive(lease)).await;
        match kept {
            Ok(Ok(_)) => last_ok = tokio::time::Instant::now(),
            Ok(Err(etcd_client::Error::LeaseKeepAliveError(why))) => {
                tracing::warn!(%why, "the leadership lease expired");
                let _ = lost.send(true);
                return;
            }
            _ if last_ok.elapsed() >= margin => {
                tracing::warn!(
                    "the leadership lease could not be kept alive for two thirds of its TTL; stepping down"
                );
                let _ = lost.send(true);
                return;
            }
            _ => {}
        }
    }
}
