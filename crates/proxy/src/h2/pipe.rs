//! The two ends of one HTTP/2 stream's bridge: the handler reads the
//! request as HTTP/1.1 bytes and writes the response as HTTP/1.1 bytes,
//! exactly as it does on a TCP connection; the stream's pumps fill and
//! drain the other end. Both directions are bounded, so a slow replica or a
//! slow client holds back the other side through HTTP/2 flow control
//! instead of piling bytes up here.

use std::cell::{Cell, RefCell};
use std::future::poll_fn;
use std::io;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};

use crate::handler::register as park;

/// Request bytes held for the handler before the upload waits.
pub(crate) const INBOUND_LIMIT: usize = 64 * 1024;
/// Response bytes held for the client before the handler's write waits.
const OUTBOUND_LIMIT: usize = 64 * 1024;

/// One stream's bridge, shared by its pumps and its handler end.
#[derive(Default)]
pub(crate) struct Pipe {
    state: RefCell<State>,
    /// The handler waits here to read, to write, and for a reset.
    reader: Cell<Option<Waker>>,
    writer: Cell<Option<Waker>>,
    watcher: Cell<Option<Waker>>,
    /// The pumps wait here: the upload for room, the response for bytes.
    upload: Cell<Option<Waker>>,
    response: Cell<Option<Waker>>,
}

#[derive(Debug, Default)]
struct State {
    inbound: Vec<u8>,
    in_pos: usize,
    /// The whole request is in `inbound`.
    in_end: bool,
    outbound: Vec<u8>,
    out_pos: usize,
    /// The handler is done with the stream: no more response bytes.
    handler_done: bool,
    /// The client reset the stream, or its connection ended.
    reset: bool,
}

/// Wakes the task waiting in `cell` and forgets it (it registers again
/// when it waits again).
fn wake(cell: &Cell<Option<Waker>>) {
    if let Some(waker) = cell.take() {
        waker.wake();
    }
}

impl Pipe {
    /// A pipe whose request starts with `head`.
    pub(crate) fn with_inbound(head: Vec<u8>) -> Rc<Self> {
        let pipe = Self::default();
        pipe.state.borrow_mut().inbound = head;
        Rc::new(pipe)
    }

    // The pumps' side.

    /// Adds request bytes for the handler.
    pub(crate) fn push_inbound(&self, bytes: &[u8]) {
        let mut state = self.state.borrow_mut();
        if state.in_pos == state.inbound.len() {
            state.inbound.clear();
            state.in_pos = 0;
        }
        state.inbound.extend_from_slice(bytes);
        drop(state);
        wake(&self.reader);
    }

    /// The request is complete.
    pub(crate) fn end_inbound(&self) {
        self.state.borrow_mut().in_end = true;
        wake(&self.reader);
    }

    /// Waits until the handler has room for more request bytes; false when
    /// it no longer reads (done, or the stream was reset).
    pub(crate) async fn upload_room(&self) -> bool {
        poll_fn(|cx| {
            let state = self.state.borrow();
            if state.handler_done || state.reset {
                return Poll::Ready(false);
            }
            if state.inbound.len() - state.in_pos < INBOUND_LIMIT {
                return Poll::Ready(true);
            }
            park(&self.upload, cx.waker());
            Poll::Pending
        })
        .await
    }

    /// Moves the response bytes waiting into `out`. `Ready(false)`: the
    /// handler is done and nothing is left.
    pub(crate) fn poll_outbound(&self, cx: &mut Context<'_>, out: &mut Vec<u8>) -> Poll<bool> {
        let mut state = self.state.borrow_mut();
        if state.out_pos < state.outbound.len() {
            let start = state.out_pos;
            out.extend_from_slice(&state.outbound[start..]);
            state.outbound.clear();
            state.out_pos = 0;
            drop(state);
            wake(&self.writer);
            return Poll::Ready(true);
        }
        if state.handler_done {
            return Poll::Ready(false);
        }
        park(&self.response, cx.waker());
        Poll::Pending
    }

    /// The client reset the stream (or its connection ended): the
    /// handler's reads and writes fail and its watch sees the client gone.
    pub(crate) fn set_reset(&self) {
        self.state.borrow_mut().reset = true;
        wake(&self.reader);
        wake(&self.writer);
        wake(&self.watcher);
        wake(&self.upload);
    }

    pub(crate) fn is_reset(&self) -> bool {
        self.state.borrow().reset
    }

    // The handler's side.

    fn poll_read(&self, cx: &mut Context<'_>, buf: &mut Vec<u8>) -> Poll<io::Result<usize>> {
        let room = buf.capacity() - buf.len();
        self.poll_take(cx, room, |bytes| buf.extend_from_slice(bytes))
    }

    /// Reads request bytes into `out`, for a tunnel.
    fn poll_read_slice(&self, cx: &mut Context<'_>, out: &mut [u8]) -> Poll<io::Result<usize>> {
        let room = out.len();
        self.poll_take(cx, room, |bytes| out[..bytes.len()].copy_from_slice(bytes))
    }

    /// Hands up to `room` request bytes to `take`; `Ok(0)` at the end.
    fn poll_take(
        &self,
        cx: &mut Context<'_>,
        room: usize,
        take: impl FnOnce(&[u8]),
    ) -> Poll<io::Result<usize>> {
        let mut state = self.state.borrow_mut();
        if state.reset {
            return Poll::Ready(Err(io::ErrorKind::ConnectionReset.into()));
        }
        let available = state.inbound.len() - state.in_pos;
        if available > 0 {
            let n = available.min(room);
            let start = state.in_pos;
            take(&state.inbound[start..start + n]);
            state.in_pos += n;
            drop(state);
            wake(&self.upload);
            return Poll::Ready(Ok(n));
        }
        if state.in_end {
            return Poll::Ready(Ok(0));
        }
        park(&self.reader, cx.waker());
        Poll::Pending
    }

    fn poll_write(&self, cx: &mut Context<'_>, bytes: &[u8]) -> Poll<io::Result<usize>> {
        let mut state = self.state.borrow_mut();
        if state.reset {
            return Poll::Ready(Err(io::ErrorKind::ConnectionReset.into()));
        }
        if state.outbound.len() - state.out_pos >= OUTBOUND_LIMIT {
            park(&self.writer, cx.waker());
            return Poll::Pending;
        }
        state.outbound.extend_from_slice(bytes);
        drop(state);
        wake(&self.response);
        Poll::Ready(Ok(bytes.len()))
    }

    fn handler_done(&self) {
        self.state.borrow_mut().handler_done = true;
        wake(&self.response);
        wake(&self.upload);
    }
}

/// The handler's end of a stream: its [`crate::io::ClientIo`].
pub(crate) struct StreamIo {
    pipe: Rc<Pipe>,
    https: bool,
}

impl StreamIo {
    pub(crate) fn new(pipe: Rc<Pipe>, https: bool) -> Self {
        Self { pipe, https }
    }

    /// Whether the stream's connection is TLS.
    pub(crate) fn https(&self) -> bool {
        self.https
    }

    /// Reads request bytes into the free capacity of `buf`.
    pub(crate) async fn read_into(&mut self, mut buf: Vec<u8>) -> (io::Result<usize>, Vec<u8>) {
        let result = poll_fn(|cx| self.pipe.poll_read(cx, &mut buf)).await;
        (result, buf)
    }

    /// Writes response bytes, waiting while the client is behind.
    pub(crate) async fn write_all(&mut self, bytes: &[u8]) -> io::Result<usize> {
        poll_fn(|cx| self.pipe.poll_write(cx, bytes)).await
    }

    /// Whether the client reset the stream.
    pub(crate) fn is_reset(&self) -> bool {
        self.pipe.is_reset()
    }

    /// Completes when the client resets the stream.
    pub(crate) async fn reset(&self) {
        poll_fn(|cx| {
            if self.pipe.is_reset() {
                return Poll::Ready(());
            }
            park(&self.pipe.watcher, cx.waker());
            Poll::Pending
        })
        .await;
    }
}

/// A tunnel's view of the stream (an RFC 8441 WebSocket): request DATA in,
/// response DATA out; shutting down ends the response.
impl tokio::io::AsyncRead for StreamIo {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let out = buf.initialize_unfilled();
        let n = std::task::ready!(self.pipe.poll_read_slice(cx, out))?;
        buf.advance(n);
        Poll::Ready(Ok(()))
    }
}

impl tokio::io::AsyncWrite for StreamIo {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut Context<'_>,
        bytes: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.pipe.poll_write(cx, bytes)
    }

    fn poll_flush(self: std::pin::Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: std::pin::Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.pipe.handler_done();
        Poll::Ready(Ok(()))
    }
}

impl Drop for StreamIo {
    fn drop(&mut self) {
        self.pipe.handler_done();
    }
}
