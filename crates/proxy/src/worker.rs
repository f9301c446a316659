//! A worker: one OS thread, one monoio runtime, one listener, one pool.
//!
//! Nothing here is shared with another worker except the snapshot cell (read
//! through a per-worker cache) and the counters, so the request path takes no
//! lock and no worker waits on another.

use std::cell::{Cell, RefCell};
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::{ArcSwap, Cache};
use inferlb_core::{Cursor, ProxyConfig, ReplicaSet, WorkerStats};
use monoio::net::TcpListener;
use tokio::sync::{watch, Notify};

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
    pub(crate) phase: watch::Receiver<Phase>,
    pub(crate) stats: Arc<WorkerStats>,
    pub(crate) retry_budget: RefCell<RetryBudget>,
    /// Set once the worker stops accepting. Connections read this (and wait
    /// on `stop`) instead of the shared phase channel, so a request touches
    /// nothing another worker writes.
    pub(crate) stopping: Cell<bool>,
    /// Wakes idle connections when `stopping` is set.
    pub(crate) stop: Notify,
}

/// How many retries a worker may make: a share of its recent requests, so
/// a sick fleet is not hammered with retry storms (Envoy's retry budget;
/// Linkerd's too). A small floor lets a quiet proxy still retry.
#[derive(Debug)]
pub(crate) struct RetryBudget {
    window_ms: u64,
    percent: u64,
    start_ms: u64,
    requests: u64,
    retries: u64,
    previous_requests: u64,
    previous_retries: u64,
}

/// Retries allowed in any window whatever the request count.
const MIN_RETRIES: u64 = 3;

impl RetryBudget {
    pub(crate) fn new(window_ms: u64, percent: u64) -> Self {
        Self {
            window_ms: window_ms.max(1),
            percent,
            start_ms: 0,
            requests: 0,
            retries: 0,
            previous_requests: 0,
            previous_retries: 0,
        }
    }

    fn roll(&mut self, now_ms: u64) {
        let elapsed = now_ms.saturating_sub(self.start_ms);
        if elapsed >= self.window_ms {
            let fresh = elapsed < 2 * self.window_ms;
            self.previous_requests = if fresh { self.requests } else { 0 };
            self.previous_retries = if fresh { self.retries } else { 0 };
            self.requests = 0;
            self.retries = 0;
            self.start_ms = now_ms;
        }
    }

    /// Counts a request.
    pub(crate) fn on_request(&mut self, now_ms: u64) {
        self.roll(now_ms);
        self.requests += 1;
    }

    /// Takes one retry from the budget, if any is left.
    pub(crate) fn try_retry(&mut self, now_ms: u64) -> bool {
        self.roll(now_ms);
        let requests = self.requests + self.previous_requests;
        let retries = self.retries + self.previous_retries;
        let allowed = (requests * self.percent / 100).max(MIN_RETRIES);
        if retries >= allowed {
            return false;
        }
        self.retries += 1;
        true
    }
}

impl Worker {
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
        Self {
            config,
            snapshots: RefCell::new(Cache::new(cell)),
            cursor: RefCell::new(Cursor::starting_at(index as u64)),
            pool: RefCell::new(pool),
            phase,
            stats,
            retry_budget: RefCell::new(retry_budget),
            stopping: Cell::new(false),
            stop: Notify::new(),
        }
    }
}

/// Runs a future, turning a panic inside it into `Err(())` so that it ends
/// only its own task.
struct Isolated<'a, F>(std::pin::Pin<&'a mut F>);

impl<F: std::future::Future<Output = ()>> std::future::Future for Isolated<'_, F> {
    type Output = Result<(), ()>;

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        let inner = self.0.as_mut();
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| inner.poll(cx))) {
            Ok(std::task::Poll::Ready(())) => std::task::Poll::Ready(Ok(())),
            Ok(std::task::Poll::Pending) => std::task::Poll::Pending,
            Err(_) => std::task::Poll::Ready(Err(())),
        }
    }
}

/// How often idle upstream connections are checked and expired.
const REAP_INTERVAL: Duration = Duration::from_secs(1);

/// Decrements the open-connection count when a connection task ends.
struct Open(Arc<WorkerStats>);

impl Drop for Open {
    fn drop(&mut self) {
        self.0.connection_closed();
    }
}

/// Accepts and serves until told to stop, then drains: no new connections,
/// in-flight requests get the drain timeout to finish.
pub(crate) async fn serve(worker: Rc<Worker>, listener: TcpListener) {
    let reaper = Rc::clone(&worker);
    monoio::spawn(async move {
        loop {
            monoio::time::sleep(REAP_INTERVAL).await;
            let mut snapshots = reaper.snapshots.borrow_mut();
            let set = snapshots.load();
            reaper
                .pool
                .borrow_mut()
                .reap(|uid| set.replicas().iter().any(|r| r.uid == uid));
        }
    });
    let max = worker.config.limits.max_connections_per_worker as u64;
    let mut phase = worker.phase.clone();
    let mut last_refusal_log: Option<Instant> = None;
    loop {
        let accepted = monoio::select! {
            accepted = listener.accept() => accepted,
            _ = phase.wait_for(|p| *p != Phase::Running) => break,
        };
        let (stream, peer): (_, SocketAddr) = match accepted {
            Ok(pair) => pair,
            Err(error) => {
                // Out of descriptors or memory: back off instead of spinning.
                tracing::warn!(%error, "accept failed");
                monoio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        if worker.stats.open_connections() >= max {
            worker.stats.connection_refused();
            if last_refusal_log.is_none_or(|t| t.elapsed() > Duration::from_secs(10)) {
                tracing::warn!(
                    limit = max,
                    "connection limit reached; closing new connections"
                );
                last_refusal_log = Some(Instant::now());
            }
            drop(stream);
            continue;
        }
        worker.stats.connection_opened();
        let open = Open(Arc::clone(&worker.stats));
        let worker = Rc::clone(&worker);
        monoio::spawn(async move {
            let _open = open;
            // A bug in one connection must cost that connection, not the
            // worker and every connection it holds.
            let served =
                Isolated(std::pin::pin!(crate::forward::serve(&worker, stream, peer))).await;
            if served.is_err() {
                tracing::error!(%peer, "a connection task panicked; its connection was closed");
            }
        });
    }
    worker.stopping.set(true);
    worker.stop.notify_waiters();
    drop(listener);
    let deadline = Instant::now() + worker.config.timeouts.shutdown_drain;
    while worker.stats.open_connections() > 0
        && Instant::now() < deadline
        && *phase.borrow() != Phase::Stopped
    {
        monoio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::RetryBudget;

    #[test]
    fn the_budget_allows_a_share_of_requests_plus_a_floor() {
        let mut budget = RetryBudget::new(10_000, 20);
        for _ in 0..100 {
            budget.on_request(1_000);
        }
        let granted = (0..100).filter(|_| budget.try_retry(1_000)).count();
        assert_eq!(granted, 20);
        // A quiet proxy may still retry a little.
        let mut quiet = RetryBudget::new(10_000, 20);
        quiet.on_request(0);
        assert_eq!((0..10).filter(|_| quiet.try_retry(0)).count(), 3);
    }

    #[test]
    fn the_window_slides() {
        let mut budget = RetryBudget::new(1_000, 50);
        for _ in 0..10 {
            budget.on_request(0);
        }
        assert_eq!((0..10).filter(|_| budget.try_retry(0)).count(), 5);
        // One window later the old counts still weigh; two later they are gone.
        budget.on_request(1_500);
        assert!(!budget.try_retry(1_500));
        budget.on_request(4_000);
        assert!(budget.try_retry(4_000));
    }
}
