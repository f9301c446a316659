//! Scale from zero: a request for an autoscaling pool that has no routable
//! replica is held here while the control plane starts one, then forwarded
//! as if nothing happened. With `max_in_flight_per_replica`, a request is
//! also held while every routable replica is at that limit (HAProxy's
//! `maxconn` and queue), so a burst waits for the replicas starting rather
//! than piling onto the first. It waits at most the pool's `queue_timeout_ms`,
//! behind at most `max_queued` others; a client that leaves is dropped from
//! the queue at once.
//!
//! The wait polls the worker's snapshot (a new replica arrives as a new
//! snapshot) and the client socket every [`POLL`]: held requests are rare
//! and short-lived, so a timer beats a cross-thread wake-up channel here.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::error::ErrorKind;
use crate::worker::Worker;

/// How often a held request looks for a replica and for its client.
const POLL: Duration = Duration::from_millis(10);

/// How a hold ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Hold {
    /// The pool does not autoscale: nothing to wait for.
    NotHeld,
    /// A replica is routable (with room) now: pick again.
    Ready,
    /// The client closed its connection while waiting.
    ClientGone,
    /// 503 with `Retry-After`.
    Refused(ErrorKind),
}

/// Holds the request while `model`'s pool autoscales and has no routable
/// replica (or none with room under its per-replica limit); `gone` says
/// whether the client has left.
pub(crate) async fn wait(worker: &Worker, gone: &dyn Fn() -> bool, model: Option<&str>) -> Hold {
    // A replica takes requests, and (with a per-replica limit) has room.
    let ready = |worker: &Worker| {
        let mut snapshots = worker.snapshots.borrow_mut();
        let set = snapshots.load();
        set.pool_for(model).is_some_and(|p| {
            let limit = set.pools()[p]
                .spec()
                .autoscaling
                .as_ref()
                .and_then(|a| a.max_in_flight_per_replica);
            set.pool_has_routable(p) && limit.is_none_or(|l| !set.pool_is_full(p, l))
        })
    };
    let (queue, timeout, max) = {
        let mut snapshots = worker.snapshots.borrow_mut();
        let set = snapshots.load();
        let Some(pool) = set.pool_for(model) else {
            return Hold::NotHeld;
        };
        let view = &set.pools()[pool];
        let (Some(queue), Some(settings)) = (view.queue(), view.spec().autoscaling.as_ref()) else {
            return Hold::NotHeld;
        };
        (
            Arc::clone(queue),
            settings.queue_timeout,
            settings.max_queued,
        )
    };
    let Ok(held) = queue.enter(max) else {
        return Hold::Refused(ErrorKind::QueueFull);
    };
    let deadline = Instant::now() + timeout;
    loop {
        if ready(worker) {
            held.served();
            return Hold::Ready;
        }
        if gone() {
            return Hold::ClientGone;
        }
        if Instant::now() >= deadline {
            return Hold::Refused(ErrorKind::QueueTimeout);
        }
        monoio::time::sleep(POLL).await;
    }
}
