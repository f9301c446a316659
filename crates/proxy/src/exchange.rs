//! One attempt at a request on one upstream connection: send the request,
//! stream the rest of its body, and read the response head.
//!
//! ```text
//!  send head + kept body ──▶ [100 Continue] ──▶ stream the rest ──▶ await head ──▶ Response
//!        │                                                           │  ▲   │
//!        │ write failed                          1xx: pass it on ────┘  │   │ closed before
//!        ▼                                                              │   ▼ any response byte
//!    Retryable(Send)                                                    │ Retryable(AwaitHead)
//!
//!  anything else (timeouts, a bad head, response bytes then a close, the
//!  client leaving, the replica evicted, a bad request body): Fatal
//! ```
//!
//! The exchange decides nothing about retrying: it says how the attempt
//! ended, and `forward` decides what to do next. `Retryable` is returned
//! only while no byte of a response has arrived, so a request is never sent
//! twice once the replica has started answering it.

use std::time::{Duration, Instant};

use inferlb_core::ReplicaStats;
use monoio::buf::IoBuf;

use crate::client::{Client, BODY_BUFFER, ERROR_WRITE_TIMEOUT};
use crate::error::{Abort, ErrorKind};
use crate::h1::body::Body;
use crate::h1::request::RequestInfo;
use crate::h1::response::{self, ResponseInfo};
use crate::h1::RequestId;
use crate::upstream::UpstreamConn;
use crate::watch::{self, Io};
use crate::worker::Worker;

/// Largest response head accepted from a replica.
const MAX_RESPONSE_HEAD: usize = 64 * 1024;

/// Where a retryable attempt failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stage {
    /// Writing the request (head and kept body) failed.
    Send,
    /// The replica closed the connection before any response byte.
    AwaitHead,
}

/// How one attempt ended.
#[derive(Debug)]
pub(crate) enum Outcome {
    /// A final response head arrived; the client's version of it is in
    /// `client.out`. `head_time` runs from the end of the request (so a
    /// slow upload does not count) to the head.
    Response {
        resp: ResponseInfo,
        head_time: Duration,
    },
    /// The replica failed before sending any response byte.
    Retryable(Stage),
    /// The request cannot go on: on this replica, or (for a client error)
    /// anywhere.
    Fatal(Abort),
}

/// What an attempt needs to know about the request, fixed for all attempts.
pub(crate) struct Exchange<'a> {
    pub(crate) worker: &'a Worker,
    pub(crate) info: &'a RequestInfo,
    pub(crate) stats: &'a ReplicaStats,
    pub(crate) request_id: &'a RequestId,
    /// The client connection stays open after the response.
    pub(crate) keep_client: bool,
}

/// What earlier attempts of the same request already did.
#[derive(Debug, Default)]
pub(crate) struct Progress {
    /// `100 Continue` went to the client.
    pub(crate) sent_continue: bool,
    /// The body's top-level keys, counted as it streams, when the request
    /// was routed on the `"model"` at its start: a second one is refused.
    pub(crate) model_keys: Option<crate::inspect::ModelKeys>,
}

impl Exchange<'_> {
    /// Runs one attempt on `conn`. The request to send is `client.request`;
    /// the rest of the body, if any, is read from the client as it streams.
    pub(crate) async fn run(
        &self,
        client: &mut Client,
        conn: &mut UpstreamConn,
        body: &mut Body,
        progress: &mut Progress,
    ) -> Outcome {
        let timeouts = &self.worker.config.timeouts;
        let request = std::mem::take(&mut client.request);
        let (io, request) = watch::write(
            self.worker,
            &mut conn.stream,
            request,
            &client.stream,
            self.stats,
            timeouts.upstream_write,
        )
        .await;
        client.request = request.unwrap_or_default();
        match io {
            Io::Done(n) => self.stats.add_bytes_out(n),
            Io::Eof | Io::Failed => return Outcome::Retryable(Stage::Send),
            other => return Outcome::Fatal(gave_up(other, Direction::Write)),
        }
        if let Err(abort) = continue_if_expected(self.info, client, body, progress).await {
            return Outcome::Fatal(abort);
        }
        if let Err(abort) = self
            .stream_body(client, conn, body, &mut progress.model_keys)
            .await
        {
            return Outcome::Fatal(abort);
        }
        self.await_head(client, conn, progress).await
    }

    /// Streams the rest of the request body from the client to the replica.
    async fn stream_body(
        &self,
        client: &mut Client,
        conn: &mut UpstreamConn,
        body: &mut Body,
        model_keys: &mut Option<crate::inspect::ModelKeys>,
    ) -> Result<(), Abort> {
        let timeouts = &self.worker.config.timeouts;
        while !body.is_done() {
            if client.pending() == 0 {
                match monoio::time::timeout(timeouts.body_read, client.fill(BODY_BUFFER)).await {
                    Ok(Ok(n)) if n > 0 => {}
                    Ok(_) => return Err(Abort::ClientGone),
                    Err(_) => return Err(Abort::Respond(ErrorKind::BodyTimeout)),
                }
            }
            let pending = &client.buf[client.pos..];
            let mut second_model = false;
            let n = body
                .take(pending, |payload| {
                    if let Some(keys) = model_keys.as_mut() {
                        second_model |= keys.feed(&pending[payload]);
                    }
                })
                .map_err(|e| Abort::Respond(e.kind()))?;
            if second_model {
                // Not sent: the replica gets an unfinished body and the
                // connection to it is closed.
                return Err(Abort::Respond(ErrorKind::AmbiguousModel));
            }
            let buf = std::mem::take(&mut client.buf);
            let (start, end) = (client.pos, client.pos + n);
            let (io, slice) = watch::write(
                self.worker,
                &mut conn.stream,
                buf.slice(start..end),
                &client.stream,
                self.stats,
                timeouts.upstream_write,
            )
            .await;
            client.buf = slice.map(|s| s.into_inner()).unwrap_or_default();
            client.pos = end;
            match io {
                Io::Done(n) => self.stats.add_bytes_out(n),
                other => return Err(gave_up(other, Direction::Write)),
            }
        }
        Ok(())
    }

    /// Reads the response head, passing interim 1xx responses on.
    async fn await_head(
        &self,
        client: &mut Client,
        conn: &mut UpstreamConn,
        progress: &Progress,
    ) -> Outcome {
        let sent_at = Instant::now();
        let deadline = sent_at + self.worker.config.timeouts.upstream_response;
        // An interim response went to the client: a failure now must close
        // the client connection rather than answer a second time.
        let mut interim = false;
        let mut interims = 0;
        loop {
            if !conn.buf.is_empty() {
                let parsed = response::parse_and_rewrite(
                    &conn.buf,
                    self.info,
                    self.keep_client,
                    self.request_id,
                    self.worker
                        .config
                        .cors
                        .is_some()
                        .then_some(&client.cors[..]),
                    &mut client.out,
                );
                match parsed {
                    Ok(Some(resp)) if resp.informational => {
                        interims += 1;
                        if interims > MAX_INTERIM_RESPONSES {
                            // A replica that never gets to its answer: the
                            // client gets a final 502 (allowed after any
                            // number of interim responses).
                            return Outcome::Fatal(Abort::Respond(ErrorKind::UpstreamFailed));
                        }
                        // RFC 9110 §15.2: not to an HTTP/1.0 client, and a
                        // 100 only to a client that asked for it (and not
                        // twice).
                        let wanted = match resp.status {
                            100 => self.info.expect_continue && !progress.sent_continue,
                            _ => true,
                        };
                        if self.info.minor == 1 && wanted {
                            interim = true;
                            let timeout = self.worker.config.timeouts.body_read;
                            if let Err(abort) = client.write_out(self.worker, timeout).await {
                                return Outcome::Fatal(abort);
                            }
                        }
                        conn.buf.drain(..resp.head_len);
                        continue;
                    }
                    Ok(Some(resp)) => {
                        return Outcome::Response {
                            resp,
                            head_time: sent_at.elapsed(),
                        }
                    }
                    Ok(None) if conn.buf.len() < MAX_RESPONSE_HEAD => {}
                    Ok(None) | Err(_) => return Outcome::Fatal(self.failed(interim)),
                }
            }
            let left = deadline.saturating_duration_since(Instant::now());
            let io = if left.is_zero() {
                Io::TimedOut
            } else {
                watch::read(self.worker, conn, &client.stream, self.stats, left).await
            };
            match io {
                Io::Done(n) => self.stats.add_bytes_in(n),
                Io::Eof | Io::Failed if conn.buf.is_empty() && !interim => {
                    return Outcome::Retryable(Stage::AwaitHead)
                }
                Io::Eof | Io::Failed => return Outcome::Fatal(self.failed(interim)),
                Io::ClientGone => return Outcome::Fatal(Abort::ClientGone),
                _ if interim => return Outcome::Fatal(Abort::AfterHead),
                other => return Outcome::Fatal(gave_up(other, Direction::Read)),
            }
        }
    }

    /// The replica failed after response bytes arrived: 502, or a close
    /// when an interim response already went out.
    fn failed(&self, interim: bool) -> Abort {
        if interim {
            Abort::AfterHead
        } else {
            Abort::Respond(ErrorKind::UpstreamFailed)
        }
    }
}

/// Interim (1xx) responses accepted before the final one; more is a
/// replica that never answers, and the client gets 502.
const MAX_INTERIM_RESPONSES: usize = 10;

/// Which way a watched operation went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Direction {
    Read,
    Write,
}

/// Maps a watched operation that did not complete: a write that timed out
/// is the replica not reading (504, "did not read the request"); a read
/// that timed out is the replica not answering (504).
/// A client that asked to be told before sending its body hears it now
/// that a replica has the head, or the proxy wants to read the body (nginx
/// answers 100 itself too).
pub(crate) async fn continue_if_expected(
    info: &RequestInfo,
    client: &mut Client,
    body: &Body,
    progress: &mut Progress,
) -> Result<(), Abort> {
    if !info.expect_continue
        || info.minor != 1
        || body.is_done()
        || client.pending() > 0
        || progress.sent_continue
    {
        return Ok(());
    }
    progress.sent_continue = true;
    let line: &'static [u8] = b"HTTP/1.1 100 Continue\r\n\r\n";
    match monoio::time::timeout(ERROR_WRITE_TIMEOUT, client.stream.write_all(line)).await {
        Ok((Ok(_), _)) => Ok(()),
        _ => Err(Abort::ClientGone),
    }
}

fn gave_up(io: Io, direction: Direction) -> Abort {
    match (io, direction) {
        (Io::ClientGone, _) => Abort::ClientGone,
        (Io::TimedOut, Direction::Write) => Abort::Respond(ErrorKind::UpstreamWriteTimeout),
        (Io::TimedOut, Direction::Read) => Abort::Respond(ErrorKind::UpstreamTimeout),
        (Io::Done(_) | Io::Eof | Io::Failed | Io::Evicted, _) => {
            Abort::Respond(ErrorKind::UpstreamFailed)
        }
    }
}

#[cfg(test)]
mod tests {
    //! The exchange's outcomes against scripted replicas on real sockets.

    use std::io::{Read, Write};
    use std::net::{SocketAddr, TcpListener};
    use std::sync::Arc;
    use std::time::Duration;

    use arc_swap::ArcSwap;
    use inferlb_core::{ProxyConfig, ReplicaSet, ReplicaStats, Routing, WorkerStats};
    use monoio::net::TcpStream;

    use super::*;
    use crate::h1::body::Body;
    use crate::h1::request::{parse_and_rewrite, Forwarding};
    use crate::worker::Phase;

    /// What the scripted replica does with the one connection it accepts.
    #[derive(Clone, Copy)]
    enum Script {
        /// Reads the request head, then writes these bytes and closes.
        Answer(&'static [u8]),
        /// Resets the connection as the request arrives, reading nothing.
        Reset,
        /// Reads the request head and answers nothing for a second.
        Silent,
    }

    fn replica(script: Script) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        std::thread::spawn(move || {
            let (mut stream, _) = listener.accept().unwrap();
            match script {
                Script::Answer(_) | Script::Silent => {
                    let mut head = Vec::new();
                    let mut byte = [0u8; 1];
                    while !head.ends_with(b"\r\n\r\n") {
                        if stream.read(&mut byte).unwrap_or(0) == 0 {
                            return;
                        }
                        head.push(byte[0]);
                    }
                    match script {
                        Script::Answer(bytes) => {
                            let _ = stream.write_all(bytes);
                            std::thread::sleep(Duration::from_millis(50));
                        }
                        _ => std::thread::sleep(Duration::from_secs(1)),
                    }
                }
                Script::Reset => {
                    // Once the request starts to arrive (so the connect
                    // has completed on the proxy's side), unread.
                    let _ = stream.peek(&mut [0u8; 1]);
                    socket2::SockRef::from(&stream)
                        .set_linger(Some(Duration::ZERO))
                        .unwrap();
                }
            }
        });
        addr
    }

    /// Runs one exchange of `GET /` against a replica following `script`.
    fn run(script: Script, tweak: impl FnOnce(&mut ProxyConfig)) -> Outcome {
        let mut config = ProxyConfig::default();
        tweak(&mut config);
        let replica_addr = replica(script);
        let mut runtime = monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
            .enable_timer()
            .build()
            .unwrap();
        runtime.block_on(async move {
            let cell = Arc::new(ArcSwap::from_pointee(ReplicaSet::empty(
                Routing::RoundRobin,
            )));
            let (_phase_tx, phase) = tokio::sync::watch::channel(Phase::Running);
            let worker = std::rc::Rc::new(Worker::new(
                0,
                config,
                cell,
                phase,
                Arc::new(WorkerStats::default()),
            ));
            monoio::spawn(crate::worker::sweep(std::rc::Rc::clone(&worker)));
            // The client: a real connection, quiet for the whole exchange.
            let front = TcpListener::bind("127.0.0.1:0").unwrap();
            let _peer = std::net::TcpStream::connect(front.local_addr().unwrap()).unwrap();
            let (accepted, peer) = front.accept().unwrap();
            let stream = TcpStream::from_std(accepted).unwrap();
            let mut client = Client::new(crate::io::ClientIo::Plain(stream), peer.ip(), false);
            let mut request_id = RequestId::new();
            worker.buffers.borrow_mut().rent(&mut client.request);
            let info = parse_and_rewrite(
                b"GET / HTTP/1.1\r\nHost: t\r\n\r\n",
                100,
                &Forwarding {
                    client_ip: b"127.0.0.1",
                    https: false,
                    trusted: false,
                    underscores: false,
                    keep_claims: false,
                    model_header: b"x-model",
                    health_path: None,
                    upgrades: &[],
                },
                &mut request_id,
                &mut client.request,
            )
            .unwrap();
            let mut conn = crate::upstream::connect(replica_addr, None, Duration::from_secs(2))
                .await
                .unwrap();
            let stats = ReplicaStats::default();
            let exchange = Exchange {
                worker: &worker,
                info: &info,
                stats: &stats,
                request_id: &request_id,
                keep_client: true,
            };
            let mut body = Body::new(info.body);
            exchange
                .run(&mut client, &mut conn, &mut body, &mut Progress::default())
                .await
        })
    }

    #[test]
    fn a_final_head_is_a_response() {
        let outcome = run(
            Script::Answer(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"),
            |_| {},
        );
        assert!(
            matches!(outcome, Outcome::Response { resp, .. } if resp.status == 200),
            "{outcome:?}"
        );
    }

    #[test]
    fn a_close_before_any_response_byte_is_retryable() {
        let outcome = run(Script::Answer(b""), |_| {});
        assert!(
            matches!(outcome, Outcome::Retryable(Stage::AwaitHead)),
            "{outcome:?}"
        );
    }

    #[test]
    fn a_failed_send_is_retryable() {
        let outcome = run(Script::Reset, |_| {});
        assert!(
            matches!(outcome, Outcome::Retryable(Stage::Send | Stage::AwaitHead)),
            "{outcome:?}"
        );
    }

    #[test]
    fn response_bytes_then_a_failure_is_fatal() {
        // A head cut short, and one that is not HTTP: bytes arrived, so
        // the request is never sent again.
        for answer in [&b"HTTP/1.1 200 OK\r\nContent-Le"[..], b"NOT HTTP\r\n\r\n"] {
            let outcome = run(Script::Answer(answer), |_| {});
            assert!(
                matches!(
                    outcome,
                    Outcome::Fatal(Abort::Respond(ErrorKind::UpstreamFailed))
                ),
                "{:?}: {outcome:?}",
                String::from_utf8_lossy(answer)
            );
        }
    }

    #[test]
    fn a_close_after_an_interim_response_closes_the_client() {
        let outcome = run(Script::Answer(b"HTTP/1.1 103 Early Hints\r\n\r\n"), |_| {});
        assert!(
            matches!(outcome, Outcome::Fatal(Abort::AfterHead)),
            "{outcome:?}"
        );
    }

    #[test]
    fn no_head_in_time_is_a_timeout() {
        // The replica reads the request and stays silent past the limit.
        let outcome = run(Script::Silent, |c| {
            c.timeouts.upstream_response = Duration::from_millis(100);
        });
        assert!(
            matches!(
                outcome,
                Outcome::Fatal(Abort::Respond(ErrorKind::UpstreamTimeout))
            ),
            "{outcome:?}"
        );
    }
}
