//! Upgraded connections (a WebSocket after its handshake): once a replica
//! answers a protocol switch with `101 Switching Protocols`, the client's
//! connection (or HTTP/2 stream) and the replica's carry bytes both ways,
//! unchanged, until both sides have closed.
//!
//! ```text
//!  client ──read──▶ buffer ──write──▶ replica      each direction ends with
//!  client ◀─write── buffer ◀──read─── replica      a half-close passed on
//! ```
//!
//! A tunnel is one request in flight on its replica for as long as it
//! lasts. It ends early when no byte has moved either way for
//! `timeouts.tunnel_idle_timeout_ms`, when its replica is evicted (a drain
//! gives tunnels `drain_timeout_s`, as it gives streams), or when a side
//! fails; both connections are then closed.
//!
//! Both ends are driven through readiness (monoio's `poll-io`), so one task
//! relays both directions and waits on both at once.

use std::cell::Cell;
use std::future::poll_fn;
use std::io;
use std::pin::{pin, Pin};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use inferlb_core::ReplicaStats;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::client::Client;
use crate::error::Abort;
use crate::h1::response::ResponseInfo;
use crate::io::ClientIo;
use crate::upstream::{UpstreamConn, UpstreamIo};
use crate::worker::Worker;

/// Bytes buffered per direction: one read's worth, written before the next.
const BUFFER: usize = 16 * 1024;

/// Longest wait between two checks of the idle deadline and the eviction
/// flag: a drained replica's tunnels close within this of its timeout.
const CHECK: Duration = Duration::from_secs(1);

/// Either end of a tunnel.
pub(crate) trait End: AsyncRead + AsyncWrite + Unpin {}
impl<T: AsyncRead + AsyncWrite + Unpin> End for T {}

/// Relays an upgraded connection after the replica's 101, whose client head
/// is in `client.out`. Returns when the tunnel is over; the client's
/// connection always closes after it.
pub(crate) async fn relay(
    worker: &Worker,
    client: &mut Client,
    conn: UpstreamConn,
    resp: &ResponseInfo,
    stats: &ReplicaStats,
) -> Abort {
    // Bytes the replica sent after its head are the tunnel's first ones.
    client.out.extend_from_slice(&conn.buf[resp.head_len..]);
    let timeout = worker.config.timeouts.body_read;
    if let Some(log) = client.log.as_deref_mut() {
        log.head_sent();
    }
    if let Err(abort) = client.write_out(worker, timeout).await {
        return abort;
    }
    // And the bytes the client sent after its request head go first the
    // other way.
    let early = client.buf[client.pos..].to_vec();
    client.pos = client.buf.len();
    let Some(mut replica) = replica_end(conn) else {
        return Abort::AfterHead;
    };
    let Some(mut front) = client_end(&mut client.stream) else {
        return Abort::AfterHead;
    };
    let idle = worker.config.timeouts.tunnel_idle;
    let last = Cell::new(Instant::now());
    let mut up = Direction::with(early);
    let mut down = Direction::with(Vec::new());
    let mut moving = pin!(poll_fn(|cx| {
        let sent = up.poll(cx, &mut *front, &mut *replica, &last);
        let received = down.poll(cx, &mut *replica, &mut *front, &last);
        match (sent, received) {
            (Poll::Ready(Err(e)), _) | (_, Poll::Ready(Err(e))) => Poll::Ready(Err(e)),
            (Poll::Ready(Ok(())), Poll::Ready(Ok(()))) => Poll::Ready(Ok(())),
            _ => Poll::Pending,
        }
    }));
    let ended = loop {
        let quiet = last.get().elapsed();
        if quiet >= idle {
            tracing::debug!(
                replica_idle_ms = idle.as_millis() as u64,
                "tunnel idle: closed"
            );
            break Abort::AfterHead;
        }
        if stats.is_evicted() {
            break Abort::AfterHead;
        }
        let wait = (idle - quiet).min(CHECK);
        monoio::select! {
            done = &mut moving => break match done {
                Ok(()) => Abort::AfterHead,
                Err(_) => Abort::ClientGone,
            },
            _ = monoio::time::sleep(wait) => {}
        }
    };
    if let Some(log) = client.log.as_deref_mut() {
        log.bytes_in += up.moved;
        log.bytes_out += down.moved;
    }
    stats.add_bytes_out(up.moved as usize);
    stats.add_bytes_in(down.moved as usize);
    ended
}

/// The replica's connection as a readiness-driven stream.
fn replica_end(conn: UpstreamConn) -> Option<Box<dyn End>> {
    Some(match conn.stream {
        UpstreamIo::Plain(tcp) => Box::new(tcp.try_into_poll_io().ok()?),
        UpstreamIo::Tls(tls) => tls,
    })
}

/// The client's transport, taken from it for the tunnel's life (it is left
/// [`ClientIo::Detached`]).
fn client_end(stream: &mut ClientIo) -> Option<Box<dyn End>> {
    Some(match std::mem::replace(stream, ClientIo::Detached) {
        ClientIo::Plain(tcp) => Box::new(tcp.try_into_poll_io().ok()?),
        ClientIo::Tls(tls) => tls,
        ClientIo::H2(stream) => Box::new(stream),
        ClientIo::Detached => return None,
    })
}

/// One direction of a tunnel: reads into its buffer, writes it all out,
/// and passes the reader's close on as a half-close of the writer.
struct Direction {
    buf: Vec<u8>,
    start: usize,
    end: usize,
    /// The writer has bytes it may hold (TLS records): flush before waiting.
    unflushed: bool,
    read_done: bool,
    done: bool,
    moved: u64,
}

impl Direction {
    fn with(early: Vec<u8>) -> Self {
        let end = early.len();
        let mut buf = early;
        buf.resize(BUFFER.max(end), 0);
        Self {
            buf,
            start: 0,
            end,
            unflushed: false,
            read_done: false,
            done: false,
            moved: 0,
        }
    }

    /// Moves what `from` has to `to`; `Ready(Ok)` once `from` has closed
    /// and `to` has been shut for writing.
    fn poll(
        &mut self,
        cx: &mut Context<'_>,
        from: &mut dyn End,
        to: &mut dyn End,
        last: &Cell<Instant>,
    ) -> Poll<io::Result<()>> {
        if self.done {
            return Poll::Ready(Ok(()));
        }
        loop {
            while self.start < self.end {
                let n = std::task::ready!(
                    Pin::new(&mut *to).poll_write(cx, &self.buf[self.start..self.end])
                )?;
                if n == 0 {
                    return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
                }
                self.start += n;
                self.moved += n as u64;
                self.unflushed = true;
            }
            if self.read_done {
                std::task::ready!(Pin::new(&mut *to).poll_shutdown(cx))?;
                self.done = true;
                return Poll::Ready(Ok(()));
            }
            let mut read = ReadBuf::new(&mut self.buf);
            match Pin::new(&mut *from).poll_read(cx, &mut read) {
                Poll::Ready(Ok(())) => {
                    let n = read.filled().len();
                    (self.start, self.end) = (0, n);
                    if n == 0 {
                        self.read_done = true;
                    } else {
                        last.set(Instant::now());
                    }
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => {
                    if self.unflushed {
                        std::task::ready!(Pin::new(&mut *to).poll_flush(cx))?;
                        self.unflushed = false;
                    }
                    return Poll::Pending;
                }
            }
        }
    }
}
