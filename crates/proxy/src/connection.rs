//! A client connection's life between requests. While idle it waits for
//! readability owning no buffer and no request state (an io_uring poll, not
//! a read with a buffer behind it); each request is then served by one of
//! the worker's handlers, and the connection waits again. A busy connection
//! stays with its handler between requests instead (see
//! [`Client::wait_hot`]) until it pauses.

use std::future::{poll_fn, Future};
use std::net::SocketAddr;
use std::pin::pin;
use std::rc::Rc;
use std::task::Poll;

use std::sync::Arc;
use std::time::{Duration, Instant};

use inferlb_core::WorkerStats;
use monoio::net::tcp::stream_poll::TcpStreamPoll;
use monoio::net::{TcpListener, TcpStream};

use crate::client::Client;
use crate::deadlines::SWEEP_EVERY;
use crate::handler;
use crate::io::ClientIo;
use crate::worker::Worker;

/// How an idle wait ended.
enum Wait {
    /// Bytes (or a close) arrived.
    Readable,
    /// Nothing arrived within the header or keep-alive timeout.
    TimedOut,
    /// The worker is stopping.
    Stop,
}

/// Accepts on every listener and serves until told to stop, then drains:
/// no new connections, in-flight requests get the drain timeout to finish.
pub(crate) async fn accept(worker: Rc<Worker>, listeners: Vec<TcpListener>) {
    monoio::spawn(crate::worker::sweep(Rc::clone(&worker)));
    let mut listeners = listeners.into_iter();
    let Some(first) = listeners.next() else {
        return;
    };
    // The others accept in tasks of their own; every loop ends when the
    // phase leaves Running.
    let others: Vec<_> = listeners
        .enumerate()
        .map(|(i, listener)| monoio::spawn(accept_on(Rc::clone(&worker), listener, i + 1)))
        .collect();
    accept_on(Rc::clone(&worker), first, 0).await;
    // Every listener is closed before the drain: a task left behind when
    // the runtime ends would keep its socket open.
    for other in others {
        other.await;
    }
    let phase = worker.phase.clone();
    worker.stopping.set(true);
    worker.idle.wake_all();
    let deadline = Instant::now() + worker.config.timeouts.shutdown_drain;
    while worker.stats.open_connections() > 0
        && Instant::now() < deadline
        && *phase.borrow() != crate::worker::Phase::Stopped
    {
        monoio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Accepts on one listener (the `index`th of the config) until the phase
/// leaves Running.
async fn accept_on(worker: Rc<Worker>, listener: TcpListener, index: usize) {
    let max = worker.config.limits.max_connections_per_worker as u64;
    let mut phase = worker.phase.clone();
    let mut last_refusal_log: Option<Instant> = None;
    let mut last_client_refusal_log: Option<Instant> = None;
    loop {
        let accepted = monoio::select! {
            accepted = listener.accept() => accepted,
            _ = phase.wait_for(|p| *p != crate::worker::Phase::Running) => break,
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
        // One client address may hold only so many, across the workers.
        let counted = match &worker.clients {
            None => None,
            Some(clients) => match clients.enter(peer.ip()) {
                Some(counted) => Some(counted),
                None => {
                    worker.stats.connection_refused();
                    if last_client_refusal_log.is_none_or(|t| t.elapsed() > Duration::from_secs(10))
                    {
                        tracing::warn!(
                            client = %peer.ip(),
                            limit = worker.config.limits.max_connections_per_client,
                            "connection limit per client address reached; closing its new connections"
                        );
                        last_client_refusal_log = Some(Instant::now());
                    }
                    drop(stream);
                    continue;
                }
            },
        };
        worker.stats.connection_opened();
        let open = Open(Arc::clone(&worker.stats));
        let worker = Rc::clone(&worker);
        monoio::spawn(async move {
            let _held = (open, counted);
            serve(worker, stream, peer, index).await;
        });
    }
    drop(listener);
}

/// Decrements the open-connection count when a connection task ends.
struct Open(Arc<WorkerStats>);

impl Drop for Open {
    fn drop(&mut self) {
        self.0.connection_closed();
    }
}

/// Serves one client connection of the `listener`th listener until it
/// closes: TLS first where the listener has it, then HTTP/2 when the
/// client chose it (ALPN, or the h2c preface), else HTTP/1.1.
pub(crate) async fn serve(
    worker: Rc<Worker>,
    stream: TcpStream,
    peer: SocketAddr,
    listener: usize,
) {
    let trusted = worker
        .config
        .trusted_proxies
        .iter()
        .any(|range| range.contains(peer.ip()));
    let role = &worker.listeners[listener];
    let h2_peer = |tls: Option<(&'static str, &'static str)>| crate::h2::Peer {
        ip: peer.ip(),
        trusted,
        https: tls.is_some(),
        tls,
    };
    let (io, tls) = match role.tls.clone() {
        None => (ClientIo::Plain(stream), None),
        // Boxed, like HTTP/2 below: every connection task would otherwise
        // carry the largest of these futures inline, a plaintext HTTP/1.1
        // connection's idle task included.
        Some(terminator) => match Box::pin(handshake(&worker, &terminator, stream)).await {
            None => return,
            Some((tls, true)) => {
                let described = crate::tls::describe(tls.get_ref().1);
                Box::pin(crate::h2::serve(
                    Rc::clone(&worker),
                    tls,
                    h2_peer(Some(described)),
                ))
                .await;
                return;
            }
            Some((tls, false)) => {
                let described = crate::tls::describe(tls.get_ref().1);
                (ClientIo::Tls(tls), Some(described))
            }
        },
    };
    let mut client = Client::new(io, peer.ip(), trusted);
    client.tls = tls;
    loop {
        let mut head_timed_out = false;
        if client.pending() == 0 {
            let since = worker.now();
            match wait(&worker, &mut client).await {
                // A keep-alive connection whose next request came within
                // about a sweep is busy: its handler keeps it for a while
                // (see `Client::wait_hot`).
                Wait::Readable => {
                    client.hot = client.accepted.is_none()
                        && client.stream.plain().is_some()
                        && worker.now().duration_since(since) <= SWEEP_EVERY;
                }
                // A connection that never sent a byte gets 408 like a slow
                // one (HAProxy does the same); an idle keep-alive one just
                // closes.
                Wait::TimedOut if client.accepted.is_some() => head_timed_out = true,
                Wait::TimedOut | Wait::Stop => return,
            }
            // A plaintext client's first bytes may be the HTTP/2 preface
            // (h2c with prior knowledge).
            if role.h2 && client.accepted.is_some() && !head_timed_out {
                if let Some(stream) = client.stream.plain() {
                    if crate::sock::starts_with(stream, crate::h2::PREFACE) {
                        if let Some(poll) = client.into_poll_io() {
                            Box::pin(crate::h2::serve(Rc::clone(&worker), poll, h2_peer(None)))
                                .await;
                        }
                        return;
                    }
                }
            }
        }
        match handler::run(&worker, client, head_timed_out).await {
            Some(kept) => client = kept,
            None => return,
        }
    }
}

/// A TLS connection's handshake, within the handshake timeout; counted by
/// outcome. Returns the stream and whether the client chose HTTP/2.
async fn handshake(
    worker: &Worker,
    terminator: &crate::tls::Terminator,
    stream: TcpStream,
) -> Option<(Box<tokio_rustls::server::TlsStream<TcpStreamPoll>>, bool)> {
    let _ = stream.set_nodelay(true);
    let poll = stream.try_into_poll_io().ok()?;
    let acceptor = tokio_rustls::TlsAcceptor::from(terminator.config());
    let edge = worker.front.edge();
    let timeout = worker.config.timeouts.tls_handshake;
    match monoio::time::timeout(timeout, acceptor.accept(poll)).await {
        Ok(Ok(tls)) => {
            let conn = tls.get_ref().1;
            let (version, cipher) = crate::tls::describe(conn);
            edge.handshake(inferlb_core::Handshake {
                version,
                cipher,
                resumed: conn.handshake_kind() == Some(rustls::HandshakeKind::Resumed),
            });
            let h2 = conn.alpn_protocol() == Some(b"h2");
            // Boxed: a connection task holds only a pointer to the TLS
            // state.
            Some((Box::new(tls), h2))
        }
        Ok(Err(error)) => {
            let kind = crate::tls::classify(&error);
            edge.handshake_failed(kind);
            tracing::debug!(%error, kind = kind.label(), listener = terminator.name(), "TLS handshake failed");
            None
        }
        Err(_) => {
            edge.handshake_failed(inferlb_core::HandshakeError::Timeout);
            None
        }
    }
}

/// Waits for the next request on an idle connection: the rest of the header
/// timeout before a connection's first request, the keep-alive timeout
/// after it. The deadline lives in the worker's idle table, not in a timer
/// of this connection's own.
async fn wait(worker: &Worker, client: &mut Client) -> Wait {
    let timeouts = &worker.config.timeouts;
    let deadline = match client.accepted {
        Some(at) => at + timeouts.client_header,
        None => worker.now() + timeouts.client_keepalive,
    };
    if worker.stopping.get() {
        return Wait::Stop;
    }
    let row = worker.idle.register(deadline);
    let mut readable = pin!(client.stream.readable(&mut client.carry));
    poll_fn(|cx| {
        // An error is found again by the read that follows.
        if readable.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Wait::Readable);
        }
        if worker.stopping.get() {
            return Poll::Ready(Wait::Stop);
        }
        if row.expired(cx.waker()) {
            return Poll::Ready(Wait::TimedOut);
        }
        Poll::Pending
    })
    .await
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    /// Every idle connection is a task holding this future: TLS and HTTP/2
    /// state must stay behind pointers (a TLS stream held inline made it
    /// 3 KiB, and an idle plaintext connection 2.5 KiB dearer).
    #[test]
    fn a_connection_task_stays_small() {
        let mut rt = monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
            .enable_timer()
            .build()
            .unwrap();
        rt.block_on(async {
            let state = inferlb_core::State::new(inferlb_core::Routing::RoundRobin);
            let cell = Arc::new(arc_swap::ArcSwap::from_pointee(state.snapshot()));
            let (_tx, phase) = tokio::sync::watch::channel(crate::worker::Phase::Running);
            let worker = std::rc::Rc::new(crate::worker::Worker::new(
                0,
                inferlb_core::ProxyConfig::default(),
                cell,
                phase,
                Arc::new(inferlb_core::WorkerStats::default()),
            ));
            let front = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            let _peer = std::net::TcpStream::connect(front.local_addr().unwrap()).unwrap();
            let (accepted, peer) = front.accept().unwrap();
            let stream = monoio::net::TcpStream::from_std(accepted).unwrap();
            let task = super::serve(worker, stream, peer, 0);
            let size = std::mem::size_of_val(&task);
            assert!(size <= 1024, "a connection task is {size} bytes");
        });
    }
}
