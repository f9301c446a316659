//! The worker's request handlers.
//!
//! Serving a request takes a few KiB of future state (the exchange, the
//! retry loop, the streaming), while a keep-alive connection spends most of
//! its life idle. So a connection's own task only waits for its next
//! request, and the request itself runs in one of the worker's handler
//! tasks, which serve request after request for whichever connection hands
//! one over. A handler is spawned only when every existing one is busy and
//! is kept for the next burst, up to [`MAX_SPARE`] idle ones: in steady state
//! nothing is spawned and nothing is allocated. Spares that no request
//! needed for a whole sweep end (down to [`MIN_SPARE`]), so what a burst
//! spawned does not stay with an idle worker.
//!
//! ```text
//!  connection task                 handler task
//!  ───────────────                 ────────────
//!  acquire a slot ──── job ──────▶ serve_request(client)
//!                                  while the connection is busy:
//!                                    wait_hot, serve_request again
//!  wait            ◀─── done ───── (client back, or closed)
//!  release the slot                wait for the next job
//! ```
//!
//! A busy connection (see [`Client::wait_hot`]) stays with its handler
//! between requests, so the hand-over and the idle wait's readiness poll
//! are paid once per burst rather than once per request.

use std::cell::{Cell, RefCell};
use std::future::{poll_fn, Future};
use std::pin::{pin, Pin};
use std::rc::Rc;
use std::task::{Context, Poll, Waker};

use monoio::io::Canceller;

use crate::client::{Client, HotWait};
use crate::forward::{self, Next};
use crate::h1::RequestId;
use crate::worker::Worker;

/// Idle handlers a worker keeps; more are ended when they finish. Each holds
/// a request's future state (about 5 KiB), so this bounds what a burst
/// leaves behind.
const MAX_SPARE: usize = 64;
/// Idle handlers a worker keeps however long it has been idle.
const MIN_SPARE: usize = 4;

thread_local! {
    /// This worker's idle handlers: a worker is one thread with its own
    /// runtime, so its handlers are the thread's.
    static HANDLERS: Handlers = Handlers::default();
}

/// A worker's idle handlers.
#[derive(Default)]
struct Handlers {
    free: RefCell<Vec<Rc<Slot>>>,
    /// The fewest idle handlers since the last trim: that many sat unused.
    low: Cell<usize>,
}

/// Where a connection task and a handler task meet.
#[derive(Default)]
struct Slot {
    /// The connection handed to the handler, and whether its first head
    /// timed out.
    job: Cell<Option<(Client, bool)>>,
    /// The handler's answer: the connection to keep, or `None` (closed).
    done: Cell<Option<Option<Client>>>,
    handler: Cell<Option<Waker>>,
    owner: Cell<Option<Waker>>,
    /// No more jobs: the handler task ends.
    retire: Cell<bool>,
    /// The connection task went away mid-request; the handler frees itself.
    orphaned: Cell<bool>,
}

impl Handlers {
    fn acquire(&self, worker: &Rc<Worker>) -> Rc<Slot> {
        let mut free = self.free.borrow_mut();
        if let Some(slot) = free.pop() {
            self.low.set(self.low.get().min(free.len()));
            return slot;
        }
        drop(free);
        let slot = Rc::new(Slot::default());
        monoio::spawn(handle(Rc::clone(worker), Rc::clone(&slot)));
        slot
    }

    fn release(&self, slot: Rc<Slot>) {
        let mut free = self.free.borrow_mut();
        if free.len() < MAX_SPARE {
            free.push(slot);
        } else {
            slot.retire.set(true);
            wake(&slot.handler);
        }
    }
}

/// Ends the idle handlers that no request needed since the last trim,
/// keeping at least [`MIN_SPARE`]. Called every sweep of the worker.
pub(crate) fn trim() {
    HANDLERS.with(|h| {
        let mut free = h.free.borrow_mut();
        let needed = free.len() - h.low.get().min(free.len());
        let kept = needed.max(MIN_SPARE).min(free.len());
        for slot in free.drain(kept..) {
            slot.retire.set(true);
            wake(&slot.handler);
        }
        h.low.set(free.len());
    });
}

/// Hands one request of `client` to a handler and waits for it; returns the
/// connection when it stays open.
pub(crate) async fn run(
    worker: &Rc<Worker>,
    client: Client,
    head_timed_out: bool,
) -> Option<Client> {
    let slot = HANDLERS.with(|h| h.acquire(worker));
    let mut lease = Lease { slot: Some(slot) };
    let slot = lease.slot.as_deref().expect("leased");
    slot.job.set(Some((client, head_timed_out)));
    wake(&slot.handler);
    let kept = poll_fn(|cx| match slot.done.take() {
        Some(kept) => Poll::Ready(kept),
        None => {
            register(&slot.owner, cx.waker());
            Poll::Pending
        }
    })
    .await;
    lease.finish();
    kept
}

/// A slot in use by a connection task. Dropped before the handler answered
/// (the connection task was cancelled), it leaves the handler to free
/// itself when done.
struct Lease {
    slot: Option<Rc<Slot>>,
}

impl Lease {
    fn finish(&mut self) {
        if let Some(slot) = self.slot.take() {
            HANDLERS.with(|h| h.release(slot));
        }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if let Some(slot) = self.slot.take() {
            slot.orphaned.set(true);
        }
    }
}

/// A handler task: serves the requests handed to its slot until retired.
async fn handle(worker: Rc<Worker>, slot: Rc<Slot>) {
    // Request ids are generated per handler: a random prefix and a counter.
    let mut request_id = RequestId::new();
    // Cancels a busy connection's read when it pauses.
    let mut canceller = Canceller::new();
    // What the request did (for the front-end metrics and the access
    // log), lent to each request's connection.
    let mut record = Some(Box::<crate::access::Record>::default());
    loop {
        let job = poll_fn(|cx| {
            if slot.retire.get() {
                return Poll::Ready(None);
            }
            match slot.job.take() {
                Some(job) => Poll::Ready(Some(job)),
                None => {
                    register(&slot.handler, cx.waker());
                    Poll::Pending
                }
            }
        })
        .await;
        let Some((mut client, mut head_timed_out)) = job else {
            return;
        };
        let kept = loop {
            client.log = record.take();
            // A bug in one request must cost that connection, not the
            // worker and every connection it holds.
            let served = Isolated(pin!(forward::serve_request(
                &worker,
                &mut client,
                &mut request_id,
                head_timed_out
            )))
            .await;
            record = client.log.take().or_else(|| Some(Box::default()));
            match served {
                Ok(Next::KeepAlive) => {}
                Ok(Next::Close) => break None,
                Err(()) => {
                    tracing::error!("a request handler panicked; its connection was closed");
                    break None;
                }
            }
            // A busy connection's next request is awaited here, with a read
            // in flight; a pipelined one is served at once.
            head_timed_out = false;
            if client.pending() > 0 {
                continue;
            }
            if !client.hot || slot.orphaned.get() {
                break Some(client);
            }
            match client.wait_hot(&worker, &mut canceller).await {
                HotWait::Request => {}
                HotWait::Cold => break Some(client),
                HotWait::Closed => break None,
            }
        };
        if slot.orphaned.replace(false) {
            drop(kept);
            HANDLERS.with(|h| h.release(Rc::clone(&slot)));
        } else {
            slot.done.set(Some(kept));
            wake(&slot.owner);
        }
    }
}

/// Keeps `waker` in `cell`, cloning it only when it changed.
pub(crate) fn register(cell: &Cell<Option<Waker>>, waker: &Waker) {
    let kept = cell.take().filter(|w| w.will_wake(waker));
    cell.set(Some(kept.unwrap_or_else(|| waker.clone())));
}

/// Wakes the task in `cell`, keeping its waker for the next time (the
/// same task waits there again, so nothing is cloned per request).
pub(crate) fn wake(cell: &Cell<Option<Waker>>) {
    let waker = cell.take();
    if let Some(waker) = &waker {
        waker.wake_by_ref();
    }
    cell.set(waker);
}

/// Runs a future, turning a panic inside it into `Err(())` so that it ends
/// only its own request.
pub(crate) struct Isolated<'a, F>(pub(crate) Pin<&'a mut F>);

impl<F: Future> Future for Isolated<'_, F> {
    type Output = Result<F::Output, ()>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let inner = self.0.as_mut();
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| inner.poll(cx))) {
            Ok(Poll::Ready(output)) => Poll::Ready(Ok(output)),
            Ok(Poll::Pending) => Poll::Pending,
            Err(_) => Poll::Ready(Err(())),
        }
    }
}
