//! I/O on a replica's connection that gives up as soon as the request no
//! longer matters: the client left, the replica was evicted (its drain
//! timed out), or the time limit passed.
//!
//! Fast operations never pay for the watch: the client and the eviction
//! flag are watched only once an operation has taken longer than 100 to
//! 200 ms (until the worker's second deadline sweep; see
//! [`Worker::short_deadline`]), so a slow generation is cancelled within
//! about that long of the client leaving. An operation given up on is cancelled by dropping it;
//! the caller then shuts the connection down.

use std::future::{poll_fn, Future};
use std::pin::{pin, Pin};
use std::task::Poll;
use std::time::Duration;

use inferlb_core::ReplicaStats;

use crate::buffers::MIN_READ;
use crate::io::ClientIo;
use crate::upstream::UpstreamConn;
use crate::worker::Worker;

/// How often a slow operation checks whether its replica was evicted.
const EVICTION_CHECK: Duration = Duration::from_millis(100);

/// How a watched operation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Io {
    /// Bytes read, or the whole buffer written.
    Done(usize),
    /// The replica closed its side (reads only).
    Eof,
    /// The socket failed.
    Failed,
    TimedOut,
    ClientGone,
    Evicted,
}

/// Reads from the replica into the free space of `conn.buf`.
pub(crate) async fn read(
    worker: &Worker,
    conn: &mut UpstreamConn,
    client: &ClientIo,
    stats: &ReplicaStats,
    limit: Duration,
) -> Io {
    if conn.buf.capacity() - conn.buf.len() < MIN_READ {
        conn.buf.reserve(MIN_READ.max(conn.buf.capacity()));
    }
    let buf = std::mem::take(&mut conn.buf);
    let op = conn.stream.read_into(buf);
    match watched(worker, op, client, Phase::Response, stats, limit).await {
        Ok((result, buf)) => {
            conn.buf = buf;
            match result {
                Ok(0) => Io::Eof,
                Ok(n) => Io::Done(n),
                Err(_) => Io::Failed,
            }
        }
        Err(io) => io,
    }
}

/// Writes all of `buf` to the replica. The buffer comes back unless the
/// write was given up on (then it went down with the cancelled operation).
pub(crate) async fn write<T: crate::io::OutBuf>(
    worker: &Worker,
    stream: &mut crate::upstream::UpstreamIo,
    buf: T,
    client: &ClientIo,
    stats: &ReplicaStats,
    limit: Duration,
) -> (Io, Option<T>) {
    let len = buf.bytes_init();
    match watched(
        worker,
        stream.write_all(buf),
        client,
        Phase::Upload,
        stats,
        limit,
    )
    .await
    {
        Ok((Ok(_), buf)) => (Io::Done(len), Some(buf)),
        Ok((Err(_), buf)) => (Io::Failed, Some(buf)),
        Err(io) => (io, None),
    }
}

/// Runs `op` within `limit`, watching the client and the eviction flag once
/// it has taken 100 to 200 ms. The fast phase holds no timer
/// (see [`fast`]); a slow operation then gets a timer for what is left of
/// `limit`.
async fn watched<F: Future>(
    worker: &Worker,
    op: F,
    client: &ClientIo,
    phase: Phase,
    stats: &ReplicaStats,
    limit: Duration,
) -> Result<F::Output, Io> {
    let mut op = pin!(op);
    let started = worker.now();
    if let Some(done) = fast(worker, op.as_mut()).await {
        return Ok(done);
    }
    let left = limit.saturating_sub(worker.now().saturating_duration_since(started));
    // The slow phase's timers and watchers are a few KiB of future state;
    // boxed, they cost only the slow operations (an allocation beside the
    // tens of milliseconds already waited), and every fast one moves less.
    Box::pin(slow(op, client, phase, stats, left)).await
}

/// Runs `op` within `limit` (a write to the client): timerless while fast,
/// as [`watched`], then with a timer. `None`: the time ran out.
pub(crate) async fn within<F: Future>(
    worker: &Worker,
    op: F,
    limit: Duration,
) -> Option<F::Output> {
    let mut op = pin!(op);
    let started = worker.now();
    if let Some(done) = fast(worker, op.as_mut()).await {
        return Some(done);
    }
    let left = limit.saturating_sub(worker.now().saturating_duration_since(started));
    Box::pin(monoio::time::timeout(left, op)).await.ok()
}

/// Polls `op` until it completes or 100 to 200 ms have passed. The deadline
/// sits in the worker's `watching` table, not in a timer (see
/// [`Worker::short_deadline`]). `None`: still running.
async fn fast<F: Future>(worker: &Worker, mut op: Pin<&mut F>) -> Option<F::Output> {
    let row = worker.watching.register(worker.short_deadline());
    poll_fn(|cx| {
        if let Poll::Ready(done) = op.as_mut().poll(cx) {
            return Poll::Ready(Some(done));
        }
        if row.expired(cx.waker()) {
            return Poll::Ready(None);
        }
        Poll::Pending
    })
    .await
}

/// The slow phase of [`watched`]: the operation against the client leaving,
/// the replica's eviction and what is left of the time limit.
async fn slow<F: Future>(
    op: Pin<&mut F>,
    client: &ClientIo,
    phase: Phase,
    stats: &ReplicaStats,
    left: Duration,
) -> Result<F::Output, Io> {
    monoio::select! {
        biased;
        done = op => Ok(done),
        _ = client_gone(client, phase) => Err(Io::ClientGone),
        _ = evicted(stats) => Err(Io::Evicted),
        _ = monoio::time::sleep(left) => Err(Io::TimedOut),
    }
}

/// Completes when the replica is evicted (removed after a drain timed out
/// with this exchange still in flight).
async fn evicted(stats: &ReplicaStats) {
    while !stats.is_evicted() {
        monoio::time::sleep(EVICTION_CHECK).await;
    }
}

/// Which way a watched operation goes, which decides what counts as the
/// client leaving while its bytes wait unread.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Sending the request: the unread bytes are this request's body, and a
    /// client that closed behind them (FIN or reset) has left.
    Upload,
    /// Awaiting or relaying the response: unread bytes are a pipelined
    /// request, and a client that half-closed after sending it still waits
    /// for its answers (as nginx's broken-connection check sees it); only a
    /// reset means it left.
    Response,
}

/// Completes when the client has left (see [`ClientIo::gone`]).
async fn client_gone(client: &ClientIo, phase: Phase) {
    client.gone(phase == Phase::Upload).await;
}
