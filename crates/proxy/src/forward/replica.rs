//! The replica a request goes to: picked from the worker's snapshot by the
//! pool's affinity, adapter or rule, reached over a pooled or new
//! connection, and what its answers say about it (counters, outlier
//! failures, penalties).

use super::*;

/// The replica a request went to.
pub(super) struct Picked {
    pub(super) uid: u64,
    pub(super) addr: SocketAddr,
    pub(super) stats: Arc<ReplicaStats>,
    /// TLS to the replica, for a pool with `[pools.upstream_tls]`.
    pub(super) tls: Option<upstream::TlsTarget>,
}

/// Picks a replica of the current snapshot that this request has not
/// tried; what was tried is forgotten when the snapshot changes. With
/// `may_hold`, an autoscaling pool whose replicas are all at their
/// `max_in_flight_per_replica` gives none (the request is held instead).
pub(super) fn pick(
    worker: &Worker,
    tried: &mut Tried,
    tried_generation: &mut u64,
    now_ms: u64,
    target: &Target,
    may_hold: bool,
) -> Option<Picked> {
    let mut snapshots = worker.snapshots.borrow_mut();
    let set = snapshots.load();
    if set.generation() != *tried_generation {
        tried.clear();
        *tried_generation = set.generation();
    }
    let pool = set.pool_for(target.model.as_ref().map(ModelName::as_str))?;
    if may_hold {
        let limit = set.pools()[pool]
            .spec()
            .autoscaling
            .as_ref()
            .and_then(|a| a.max_in_flight_per_replica);
        if limit.is_some_and(|limit| set.pool_is_full(pool, limit)) {
            return None;
        }
    }
    let cursor = &mut worker.cursor.borrow_mut();
    let adapter = target
        .model
        .as_ref()
        .map(ModelName::as_str)
        .filter(|m| set.pools()[pool].spec().is_adapter(m));
    let index = match (target.affinity, adapter) {
        // Session affinity first, on top of the pool's rule.
        (Some(hash), _) => set.pick_affine(pool, cursor, tried, now_ms, hash)?,
        // A LoRA adapter: where the engines have it loaded.
        (None, Some(adapter)) => set.pick_adapter(pool, cursor, tried, now_ms, adapter)?,
        (None, None) => {
            let key = (!target.chain.is_empty()).then(|| PrefixKey {
                chain: &target.chain,
                len: target.text_len,
            });
            set.pick_in(pool, cursor, tried, now_ms, key)?
        }
    };
    tried.insert(index);
    let replica = &set.replicas()[index];
    // `RUST_LOG=inferlb_proxy=debug`: each routing decision (a level check
    // when off).
    tracing::debug!(
        pool = %set.pools()[pool].name(),
        model = target.model.as_ref().map_or("", ModelName::as_str),
        rule = %set.pools()[pool].routing(),
        replica = %replica.id,
        in_flight = replica.stats.in_flight(),
        prefix_bytes = target.text_len,
        affinity = target.affinity.is_some(),
        "routed"
    );
    let tls = match &set.pools()[pool].spec().upstream_tls {
        None => None,
        Some(settings) => Some(upstream::tls::target(settings, &replica.address)?),
    };
    Some(Picked {
        uid: replica.uid,
        addr: replica.addr,
        stats: Arc::clone(&replica.stats),
        tls,
    })
}

/// A pooled connection to the replica, or a new one; `None` when the
/// connect was refused or timed out (counted against the replica).
pub(super) async fn connect(worker: &Worker, picked: &Picked) -> Option<UpstreamConn> {
    let pooled = worker.pool.borrow_mut().take(picked.uid, worker.now());
    let mut conn = match pooled {
        Some(conn) => conn,
        None => match upstream::connect(
            picked.addr,
            picked.tls.as_ref(),
            worker.config.timeouts.upstream_connect,
        )
        .await
        {
            Ok(conn) => conn,
            Err(error) => {
                picked.stats.record_connect_error();
                record_failure(worker, picked.uid);
                tracing::debug!(replica = %picked.addr, ?error, "connect failed");
                return None;
            }
        },
    };
    worker.buffers.borrow_mut().rent(&mut conn.buf);
    Some(conn)
}

/// Records what a response says about its replica: status counters, the
/// head time for `p2c`, outlier failures, and any penalty it asks for.
pub(super) fn account(worker: &Worker, picked: &Picked, resp: &ResponseInfo, head_time: Duration) {
    picked.stats.record_response(resp.status);
    picked.stats.record_head_time(head_time);
    if resp.status >= 500 {
        record_failure(worker, picked.uid);
    } else {
        picked.stats.record_success();
    }
    if matches!(resp.status, 429 | 503) {
        penalty::on_response(
            &picked.stats,
            resp.status,
            resp.retry_after_s,
            clock::now_ms(),
        );
    }
}

/// Counts a connect failure or 5xx against a replica; ejects it after a run.
pub(super) fn record_failure(worker: &Worker, uid: u64) {
    let mut snapshots = worker.snapshots.borrow_mut();
    let set = snapshots.load();
    if let Some(index) = set.replicas().iter().position(|r| r.uid == uid) {
        if let Some(ms) = worker
            .config
            .outlier
            .on_failure(set, index, clock::now_ms())
        {
            tracing::warn!(replica = %set.replicas()[index].id, ejected_ms = ms, "replica ejected after consecutive failures");
        }
    }
}
