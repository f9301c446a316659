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
use monoio::io::AsyncWriteRentExt;

use crate::client::{Client, BODY_BUFFER, ERROR_WRITE_TIMEOUT};
use crate::error::{Abort, ErrorKind};
use crate::h1::body::{Body, BodyError};
use crate::h1::request::RequestInfo;
use crate::h1::response::{self, ResponseInfo};
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
    /// The client connection stays open after the response.
    pub(crate) keep_client: bool,
}

/// What earlier attempts of the same request already did.
#[derive(Debug, Default)]
pub(crate) struct Progress {
    /// `100 Continue` went to the client.
    pub(crate) sent_continue: bool,
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
        if let Err(abort) = self.send_continue(client, body, progress).await {
            return Outcome::Fatal(abort);
        }
        if let Err(abort) = self.stream_body(client, conn, body).await {
            return Outcome::Fatal(abort);
        }
        self.await_head(client, conn, progress).await
    }

    /// A client that asked to be told before sending its body hears it now
    /// that a replica has the head (nginx answers 100 itself too).
    async fn send_continue(
        &self,
        client: &mut Client,
        body: &Body,
        progress: &mut Progress,
    ) -> Result<(), Abort> {
        if !self.info.expect_continue
            || self.info.minor != 1
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

    /// Streams the rest of the request body from the client to the replica.
    async fn stream_body(
        &self,
        client: &mut Client,
        conn: &mut UpstreamConn,
        body: &mut Body,
    ) -> Result<(), Abort> {
        let timeouts = &self.worker.config.timeouts;
        while !body.is_done() {
            if client.pending() == 0 {
                match monoio::time::timeout(timeouts.body_read, client.fill(BODY_BUFFER)).await {
                    Ok(Ok(n)) if n > 0 => {}
                    Ok(_) => return Err(Abort::ClientGone),
                    Err(_) => return Err(Abort::Respond(ErrorKind::HeadTimeout)),
                }
            }
            let n = body
                .take(&client.buf[client.pos..], |_| {})
                .map_err(|e| Abort::Respond(body_error(e)))?;
            let buf = std::mem::take(&mut client.buf);
            let (start, end) = (client.pos, client.pos + n);
            let (io, slice) = watch::write(
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
        loop {
            if !conn.buf.is_empty() {
                let parsed = response::parse_and_rewrite(
                    &conn.buf,
                    self.info,
                    self.keep_client,
                    &client.request_id,
                    &mut client.out,
                );
                match parsed {
                    Ok(Some(resp)) if resp.informational => {
                        interim = true;
                        if self.info.minor == 1 && !(resp.status == 100 && progress.sent_continue) {
                            let timeout = self.worker.config.timeouts.body_read;
                            if let Err(abort) = client.write_out(timeout).await {
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
                watch::read(conn, &client.stream, self.stats, left).await
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

/// Which way a watched operation went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Direction {
    Read,
    Write,
}

/// Maps a watched operation that did not complete: a write that timed out
/// is the replica not reading (504, "did not read the request"); a read
/// that timed out is the replica not answering (504).
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

/// The status for a request body the framer refused.
pub(crate) fn body_error(error: BodyError) -> ErrorKind {
    match error {
        BodyError::Malformed => ErrorKind::BadRequest,
        BodyError::TooLarge => ErrorKind::BodyTooLarge,
    }
}
