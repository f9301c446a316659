//! A client's transport, as the HTTP/1.1 path sees it: a TCP socket, TLS
//! over one, or one HTTP/2 stream (whose request and response travel as
//! HTTP/1.1 bytes through [`crate::h2::StreamIo`]). The request path reads
//! and writes through these few calls and never asks which it has.
//!
//! Plain TCP keeps monoio's owned-buffer I/O (io_uring operations on the
//! worker's buffers); TLS runs rustls through tokio-rustls on monoio's
//! readiness interface (`poll-io`), so a TLS read decrypts straight into the
//! caller's buffer.

use std::future::poll_fn;
use std::io;
use std::os::fd::AsRawFd;
use std::pin::Pin;
use std::time::Duration;

use monoio::buf::{IoBuf, IoBufMut, Slice};
use monoio::io::{AsyncReadRent, AsyncWriteRentExt};
use monoio::net::tcp::stream_poll::TcpStreamPoll;
use monoio::net::TcpStream;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio_rustls::server::TlsStream;

use crate::sock::{peer_left, peer_state, PeerState};

/// How often a TLS client is checked for having left during a slow
/// exchange (a plain one is watched with a readiness wait instead).
const TLS_LEFT_CHECK: Duration = Duration::from_millis(100);

/// A client's transport.
pub(crate) enum ClientIo {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStreamPoll>>),
    H2(crate::h2::StreamIo),
    /// Handed to a tunnel (see [`crate::tunnel`]), which closes it when
    /// done: reads see the end, writes fail.
    Detached,
}

impl ClientIo {
    /// The TCP socket, when the transport is plain TCP.
    pub(crate) fn plain(&self) -> Option<&TcpStream> {
        match self {
            Self::Plain(stream) => Some(stream),
            _ => None,
        }
    }

    /// Whether the client is served over TLS (directly, or as an HTTP/2
    /// stream of a TLS connection).
    pub(crate) fn is_https(&self) -> bool {
        match self {
            Self::Plain(_) | Self::Detached => false,
            Self::Tls(_) => true,
            Self::H2(stream) => stream.https(),
        }
    }

    /// Reads into the free capacity of `buf` (`buf[len..capacity]`).
    pub(crate) async fn read_into(&mut self, buf: Vec<u8>) -> (io::Result<usize>, Vec<u8>) {
        match self {
            Self::Plain(stream) => crate::io::read_plain(stream, buf).await,
            Self::Tls(tls) => read_tls(&mut **tls, buf).await,
            Self::H2(stream) => stream.read_into(buf).await,
            Self::Detached => (Ok(0), buf),
        }
    }

    /// Writes all of `buf`.
    pub(crate) async fn write_all<T: OutBuf>(&mut self, buf: T) -> (io::Result<usize>, T) {
        match self {
            Self::Plain(stream) => stream.write_all(buf).await,
            Self::Tls(tls) => write_tls(&mut **tls, buf).await,
            Self::H2(stream) => {
                let result = stream.write_all(buf.bytes()).await;
                (result, buf)
            }
            Self::Detached => (Err(io::ErrorKind::NotConnected.into()), buf),
        }
    }

    /// Waits until the connection has bytes (or a close) to read, owning
    /// no buffer. A TLS connection reads one byte for it (a readiness wait
    /// would miss a record rustls already holds), which `carry` keeps for
    /// the next read.
    pub(crate) async fn readable(&mut self, carry: &mut Option<u8>) -> io::Result<()> {
        match self {
            Self::Plain(stream) => stream.readable(false).await,
            Self::Tls(tls) => {
                let mut byte = [0u8; 1];
                let n = tokio::io::AsyncReadExt::read(&mut **tls, &mut byte).await?;
                if n == 1 {
                    *carry = Some(byte[0]);
                }
                Ok(())
            }
            Self::H2(_) | Self::Detached => Ok(()),
        }
    }

    /// Completes when the client has left (closed, reset, or reset its
    /// HTTP/2 stream); `upload`: a half-close counts as leaving. See
    /// [`crate::watch`].
    pub(crate) async fn gone(&self, upload: bool) {
        match self {
            Self::Plain(stream) => loop {
                if stream.readable(false).await.is_err() {
                    return;
                }
                match peer_state(stream) {
                    PeerState::Closed => return,
                    PeerState::HasData => {
                        while !peer_left(stream, upload) {
                            monoio::time::sleep(TLS_LEFT_CHECK).await;
                        }
                        return;
                    }
                    // A spurious wake-up; do not spin on it.
                    PeerState::Quiet => monoio::time::sleep(Duration::from_millis(1)).await,
                }
            },
            // Records waiting to be read hide a close from a peek, so the
            // socket's state is asked directly, every check.
            Self::Tls(tls) => {
                let fd = tls.get_ref().0.as_raw_fd();
                while !peer_left(&fd, upload) {
                    monoio::time::sleep(TLS_LEFT_CHECK).await;
                }
            }
            Self::H2(stream) => stream.reset().await,
            Self::Detached => {}
        }
    }

    /// Stops sending (a TLS close_notify first), keeping the read side for
    /// a lingering close.
    pub(crate) async fn shutdown_write(&mut self) {
        match self {
            Self::Plain(stream) => crate::sock::shutdown_write(stream),
            Self::Tls(tls) => {
                let _ = monoio::time::timeout(Duration::from_secs(1), tls.shutdown()).await;
            }
            Self::H2(_) | Self::Detached => {}
        }
    }

    /// Whether the client has already left (closed, reset, or reset its
    /// stream), without waiting.
    pub(crate) fn has_left(&self) -> bool {
        match self {
            Self::Plain(stream) => {
                peer_state(stream) == PeerState::Closed || peer_left(stream, false)
            }
            Self::Tls(tls) => peer_left(&tls.get_ref().0.as_raw_fd(), false),
            Self::H2(stream) => stream.is_reset(),
            Self::Detached => true,
        }
    }
}

/// Reads from a TCP socket into the free capacity of `buf` (an io_uring
/// read into the buffer itself).
pub(crate) async fn read_plain(
    stream: &mut TcpStream,
    buf: Vec<u8>,
) -> (io::Result<usize>, Vec<u8>) {
    let (len, cap) = (buf.len(), buf.capacity());
    let (result, slice) = stream.read(buf.slice_mut(len..cap)).await;
    (result, slice.into_inner())
}

/// Reads from a TLS stream (a client's or a replica's) into the free
/// capacity of `buf`, decrypting straight into it.
pub(crate) async fn read_tls<T: AsyncRead + Unpin>(
    tls: &mut T,
    mut buf: Vec<u8>,
) -> (io::Result<usize>, Vec<u8>) {
    let len = buf.len();
    let spare = buf.spare_capacity_mut();
    let result = poll_fn(|cx| {
        let mut read = ReadBuf::uninit(&mut *spare);
        Pin::new(&mut *tls)
            .poll_read(cx, &mut read)
            .map_ok(|()| read.filled().len())
    })
    .await;
    if let Ok(n) = result {
        crate::sock::commit_read(&mut buf, len + n);
    }
    (result, buf)
}

/// Writes all of `buf` to a TLS stream and flushes the records out.
pub(crate) async fn write_tls<T: AsyncWrite + Unpin, B: OutBuf>(
    tls: &mut T,
    buf: B,
) -> (io::Result<usize>, B) {
    let result = async {
        tls.write_all(buf.bytes()).await?;
        tls.flush().await?;
        Ok(buf.bytes().len())
    }
    .await;
    (result, buf)
}

/// A buffer written to a client: owned (for io_uring) and readable as
/// bytes (for TLS and HTTP/2 streams).
pub(crate) trait OutBuf: IoBuf + 'static {
    fn bytes(&self) -> &[u8];
}

impl OutBuf for Vec<u8> {
    fn bytes(&self) -> &[u8] {
        self
    }
}

impl OutBuf for &'static [u8] {
    fn bytes(&self) -> &[u8] {
        self
    }
}

impl OutBuf for Slice<Vec<u8>> {
    fn bytes(&self) -> &[u8] {
        &self.get_ref()[self.begin()..self.end()]
    }
}
