//! HTTP/2 connections to the replicas of gRPC pools, kept per worker: each
//! carries as many concurrent streams as the replica's
//! `SETTINGS_MAX_CONCURRENT_STREAMS` allows, and a stream that finds every
//! connection full opens another.
//!
//! A connection's frames are driven by a task of its own; when it ends (the
//! replica closed, GOAWAY, an error) the connection leaves the pool, and
//! streams still on it fail through the codec. A connection without a
//! stream for `upstream.idle_timeout` is let go (GOAWAY, then closed), as
//! an idle HTTP/1.1 one is.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::future::poll_fn;
use std::net::SocketAddr;
use std::rc::Rc;
use std::task::{Poll, Waker};
use std::time::{Duration, Instant};

use bytes::Bytes;
use h2::client::SendRequest;

use super::{ConnectError, TlsTarget, UpstreamIo};

/// One HTTP/2 connection to a replica.
pub(crate) struct H2Conn {
    send: SendRequest<Bytes>,
    /// Streams open on it now.
    active: Cell<usize>,
    /// Since when it has had no stream.
    idle_since: Cell<Instant>,
    /// Its task ended: it takes no new stream.
    closed: Rc<Cell<bool>>,
}

impl H2Conn {
    fn has_room(&self) -> bool {
        !self.closed.get() && self.active.get() < self.send.current_max_send_streams()
    }
}

/// A stream's claim on its connection, released when dropped.
pub(crate) struct StreamSlot {
    conn: Rc<H2Conn>,
}

impl StreamSlot {
    /// A handle to open the stream with.
    pub(crate) fn sender(&self) -> SendRequest<Bytes> {
        self.conn.send.clone()
    }
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        let active = self.conn.active.get() - 1;
        self.conn.active.set(active);
        if active == 0 {
            self.conn.idle_since.set(Instant::now());
        }
    }
}

/// The worker's HTTP/2 connections, by replica.
#[derive(Default)]
pub(crate) struct H2Pool {
    conns: HashMap<u64, Vec<Rc<H2Conn>>>,
    closer: Rc<Closer>,
}

/// Ends every connection's task when the worker stops (a task left
/// pending would keep its socket open past the worker).
#[derive(Default)]
pub(crate) struct Closer {
    closing: Cell<bool>,
    tasks: RefCell<Vec<Rc<Cell<Option<Waker>>>>>,
    live: Cell<usize>,
}

impl Closer {
    /// Completes when the worker stops.
    async fn closed(&self, slot: &Cell<Option<Waker>>) {
        poll_fn(|cx| {
            if self.closing.get() {
                return Poll::Ready(());
            }
            slot.set(Some(cx.waker().clone()));
            Poll::Pending
        })
        .await;
    }

    /// Ends every connection's task, and waits (up to a second) until they
    /// have closed their sockets.
    pub(crate) async fn close_all(&self) {
        self.closing.set(true);
        for slot in self.tasks.borrow_mut().drain(..) {
            if let Some(waker) = slot.take() {
                waker.wake();
            }
        }
        let deadline = std::time::Instant::now() + Duration::from_secs(1);
        while self.live.get() > 0 && std::time::Instant::now() < deadline {
            monoio::time::sleep(Duration::from_millis(1)).await;
        }
    }
}

impl H2Pool {
    /// A slot on a connection to replica `uid` with room for one more
    /// stream; `None` when every one is full or there is none.
    pub(crate) fn take(&mut self, uid: u64) -> Option<StreamSlot> {
        let conns = self.conns.get_mut(&uid)?;
        conns.retain(|c| !c.closed.get());
        let conn = conns.iter().find(|c| c.has_room())?;
        Some(Self::claim(conn))
    }

    /// Keeps a new connection to `uid` and claims a slot on it.
    pub(crate) fn add(&mut self, uid: u64, conn: H2Conn) -> StreamSlot {
        let conn = Rc::new(conn);
        let slot = Self::claim(&conn);
        self.conns.entry(uid).or_default().push(conn);
        slot
    }

    fn claim(conn: &Rc<H2Conn>) -> StreamSlot {
        conn.active.set(conn.active.get() + 1);
        StreamSlot {
            conn: Rc::clone(conn),
        }
    }

    /// What ends the connections' tasks.
    pub(crate) fn closer(&self) -> Rc<Closer> {
        Rc::clone(&self.closer)
    }

    /// Forgets replicas no longer in the snapshot, and connections without
    /// a stream for `idle_timeout`: each closes (GOAWAY) once its last
    /// stream ends and nothing here holds it.
    pub(crate) fn reap(&mut self, live: impl Fn(u64) -> bool, idle_timeout: Duration) {
        let now = Instant::now();
        self.conns.retain(|&uid, conns| {
            conns.retain(|c| {
                !c.closed.get()
                    && (c.active.get() > 0 || now.duration_since(c.idle_since.get()) < idle_timeout)
            });
            live(uid) && !conns.is_empty()
        });
    }
}

/// Connects to a replica and starts HTTP/2 on the connection (h2c, or h2
/// over TLS negotiated by ALPN), its frames driven by a task of its own.
pub(crate) async fn connect(
    addr: SocketAddr,
    tls: Option<&TlsTarget>,
    timeout: Duration,
    closer: Rc<Closer>,
) -> Result<H2Conn, ConnectError> {
    let h2_tls = tls.map(|target| {
        let mut config = (*target.config).clone();
        config.alpn_protocols = vec![b"h2".to_vec()];
        TlsTarget {
            config: std::sync::Arc::new(config),
            name: target.name.clone(),
        }
    });
    let conn = super::connect(addr, h2_tls.as_ref(), timeout).await?;
    let io: Box<dyn crate::tunnel::End> = match conn.stream {
        UpstreamIo::Plain(tcp) => {
            Box::new(tcp.try_into_poll_io().map_err(|_| ConnectError::Refused)?)
        }
        UpstreamIo::Tls(tls) => tls,
    };
    let handshake = h2::client::Builder::new()
        .initial_window_size(1 << 20)
        .initial_connection_window_size(4 << 20)
        .handshake::<_, Bytes>(io);
    let (send, connection) = match monoio::time::timeout(timeout, handshake).await {
        Ok(Ok(done)) => done,
        Ok(Err(error)) => {
            tracing::debug!(replica = %addr, %error, "HTTP/2 handshake with the replica failed");
            return Err(ConnectError::Refused);
        }
        Err(_) => return Err(ConnectError::TimedOut),
    };
    let closed = Rc::new(Cell::new(false));
    let ended = Rc::clone(&closed);
    let slot = Rc::new(Cell::new(None));
    closer.tasks.borrow_mut().push(Rc::clone(&slot));
    closer.live.set(closer.live.get() + 1);
    monoio::spawn(async move {
        monoio::select! {
            done = connection => if let Err(error) = done {
                tracing::debug!(replica = %addr, %error, "HTTP/2 connection to the replica ended");
            },
            () = closer.closed(&slot) => {}
        }
        ended.set(true);
        closer.live.set(closer.live.get() - 1);
        closer.tasks.borrow_mut().retain(|s| !Rc::ptr_eq(s, &slot));
    });
    Ok(H2Conn {
        send,
        active: Cell::new(0),
        idle_since: Cell::new(Instant::now()),
        closed,
    })
}
