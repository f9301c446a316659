//! A worker: one OS thread, one monoio runtime, one listener, one pool.
//!
//! Nothing here is shared with another worker except the snapshot cell (read
//! through a per-worker cache) and the counters, so the request path takes no
//! lock and no worker waits on another.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::{ArcSwap, Cache};
use inferlb_core::clients::ClientCounts;
use inferlb_core::{Cursor, ProxyConfig, ReplicaSet, WorkerStats};
use tokio::sync::watch;

use crate::budget::InspectBudget;
use crate::buffers::Buffers;
use crate::deadlines::{DeadlineTable, SWEEP_EVERY};
use crate::retry_budget::RetryBudget;
use crate::upstream::pool::Pool;

/// Where the proxy is in its life; sent from the control thread to workers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Accepting and serving.
    Running,
    /// Not accepting; in-flight requests finish, then connections close.
    Draining,
    /// Stop now, whatever is in flight.
    Stopped,
}

type SnapshotCache = Cache<Arc<ArcSwap<ReplicaSet>>, Arc<ReplicaSet>>;

/// The state every connection task of a worker shares.
pub(crate) struct Worker {
    pub(crate) config: ProxyConfig,
    pub(crate) snapshots: RefCell<SnapshotCache>,
    pub(crate) cursor: RefCell<Cursor>,
    pub(crate) pool: RefCell<Pool>,
    /// HTTP/2 connections to gRPC pools' replicas.
    pub(crate) h2_pool: RefCell<crate::upstream::h2::H2Pool>,
    pub(crate) phase: watch::Receiver<Phase>,
    pub(crate) stats: Arc<WorkerStats>,
    pub(crate) retry_budget: RefCell<RetryBudget>,
    /// Buffers rented by requests in progress.
    pub(crate) buffers: RefCell<Buffers>,
    /// Set once the worker stops accepting. Connections read this (and are
    /// woken through `idle`) instead of the shared phase channel, so a request touches
    /// nothing another worker writes.
    pub(crate) stopping: Cell<bool>,
    /// Deadlines of idle connections; woken all at once when `stopping`
    /// is set.
    pub(crate) idle: DeadlineTable,
    /// Deadlines of the fast phase of upstream reads and writes.
    pub(crate) watching: DeadlineTable,
    /// The time, refreshed every [`SWEEP_EVERY`]: for deadlines of seconds
    /// (keep-alive, header, pool idle), where a clock read per use would
    /// cost more than the precision is worth (nginx caches its time too).
    coarse_now: Cell<Instant>,
    /// This worker's share of `limits.inspect_budget_bytes`.
    pub(crate) inspect_budget: Rc<InspectBudget>,
    /// Connections per client address across the workers, when
    /// `limits.max_connections_per_client` is set.
    pub(crate) clients: Option<Arc<ClientCounts>>,
    /// This worker's side of the access log, when there is one.
    pub(crate) access: Option<crate::access::WorkerLog>,
    /// The front-end metrics: what clients saw per pool and model.
    pub(crate) front: crate::front::FrontCache,
    /// What each listener of the config speaks, by index.
    pub(crate) listeners: Vec<ListenerRole>,
}

/// What a listener speaks: TLS (with its live certificates) or plaintext,
/// and whether HTTP/2 is allowed.
#[derive(Debug, Clone)]
pub(crate) struct ListenerRole {
    pub(crate) tls: Option<Arc<crate::tls::Terminator>>,
    pub(crate) h2: bool,
}

impl Worker {
    /// The coarse time: at most [`SWEEP_EVERY`] old.
    pub(crate) fn now(&self) -> Instant {
        self.coarse_now.get()
    }

    /// A deadline for a short wait in a deadline table: it passes at the
    /// second sweep from now, so 100 to 200 ms of real time away (one
    /// [`SWEEP_EVERY`] after the coarse time could be a moment away).
    pub(crate) fn short_deadline(&self) -> Instant {
        self.now() + 2 * SWEEP_EVERY
    }

    pub(crate) fn new(
        index: usize,
        config: ProxyConfig,
        cell: Arc<ArcSwap<ReplicaSet>>,
        phase: watch::Receiver<Phase>,
        stats: Arc<WorkerStats>,
    ) -> Self {
        let pool = Pool::new(
            config.upstream.max_idle_per_replica,
            config.upstream.idle_timeout,
        );
        let retry_budget = RetryBudget::new(
            config.retries.budget_window_ms,
            config.retries.budget_percent,
        );
        let inspect_budget =
            InspectBudget::share(config.limits.inspect_budget_bytes, config.worker_count());
        Self {
            inspect_budget,
            clients: None,
            access: None,
            front: crate::front::FrontCache::new(std::sync::Arc::default()),
            listeners: config
                .listeners
                .iter()
                .map(|l| ListenerRole {
                    tls: None,
                    h2: l.allows_h2(),
                })
                .collect(),
            config,
            snapshots: RefCell::new(Cache::new(cell)),
            cursor: RefCell::new(Cursor::starting_at(index as u64)),
            pool: RefCell::new(pool),
            h2_pool: RefCell::default(),
            phase,
            stats,
            retry_budget: RefCell::new(retry_budget),
            buffers: RefCell::new(Buffers::default()),
            stopping: Cell::new(false),
            idle: DeadlineTable::default(),
            watching: DeadlineTable::default(),
            coarse_now: Cell::new(Instant::now()),
        }
    }
}

/// After a burst, memory the worker freed goes back to the system: glibc's
/// allocator keeps freed memory in its arenas for reuse, so a burst of
/// connections (8 000 slow 15 KiB heads, say) would leave the process
/// hundreds of MiB larger for good. Once this many bytes were freed...
const HEAP_TRIM_AFTER: usize = 4 * 1024 * 1024;
/// ...and no more often than this (a trim walks the allocator's arenas).
const HEAP_TRIM_EVERY: Duration = Duration::from_secs(1);

/// When to give freed memory back to the system.
#[derive(Debug)]
struct HeapTrim {
    pending: usize,
    last: Instant,
}

impl Default for HeapTrim {
    fn default() -> Self {
        Self {
            pending: 0,
            last: Instant::now(),
        }
    }
}

impl HeapTrim {
    fn after_freeing(&mut self, freed: usize, now: Instant) {
        self.pending += freed;
        if self.pending >= HEAP_TRIM_AFTER && now.duration_since(self.last) >= HEAP_TRIM_EVERY {
            crate::sock::trim_heap();
            self.pending = 0;
            self.last = now;
        }
    }
}

/// How often idle upstream connections are checked and expired.
const REAP_INTERVAL: Duration = Duration::from_secs(1);

/// Keeps the worker's clocks and tables current: the coarse time, the
/// deadline tables and the buffer pool every [`SWEEP_EVERY`], the upstream
/// pool every
/// [`REAP_INTERVAL`]. Runs for the worker's life.
pub(crate) async fn sweep(worker: Rc<Worker>) {
    let mut last_reap = Instant::now();
    let mut heap = HeapTrim::default();
    loop {
        monoio::time::sleep(SWEEP_EVERY).await;
        let now = Instant::now();
        worker.coarse_now.set(now);
        worker.idle.sweep(now);
        worker.watching.sweep(now);
        let freed = {
            let mut buffers = worker.buffers.borrow_mut();
            buffers.trim();
            buffers.take_freed()
        };
        heap.after_freeing(freed, now);
        if let Some(access) = &worker.access {
            access.flush();
        }
        crate::handler::trim();
        if now.duration_since(last_reap) >= REAP_INTERVAL {
            last_reap = now;
            let mut snapshots = worker.snapshots.borrow_mut();
            let set = snapshots.load();
            worker
                .pool
                .borrow_mut()
                .reap(|uid| set.replicas().iter().any(|r| r.uid == uid));
            worker.h2_pool.borrow_mut().reap(
                |uid| set.replicas().iter().any(|r| r.uid == uid),
                worker.config.upstream.idle_timeout,
            );
        }
    }
}
