//! Upstream connections: establishing them (over TLS for a pool with
//! `[pools.upstream_tls]`) and keeping them alive per worker.

pub(crate) mod h2;
pub(crate) mod pool;
pub(crate) mod tls;

use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;
use std::time::Duration;

use monoio::io::AsyncWriteRentExt;
use monoio::net::tcp::stream_poll::TcpStreamPoll;
use monoio::net::TcpStream;
use rustls::pki_types::ServerName;
use tokio_rustls::client::TlsStream;

use crate::io::OutBuf;

/// Initial capacity of an upstream connection's read buffer; response heads
/// and most token-stream reads fit.
const READ_BUFFER: usize = 16 * 1024;

/// One connection to a replica, with the buffer its responses are read into.
#[derive(Debug)]
pub(crate) struct UpstreamConn {
    pub(crate) stream: UpstreamIo,
    pub(crate) buf: Vec<u8>,
    /// The connection has carried a request before (it came from the pool).
    pub(crate) reused: bool,
}

/// A replica connection's transport: plain TCP (io_uring operations on
/// the worker's buffers) or TLS (rustls on monoio's readiness interface).
#[derive(Debug)]
pub(crate) enum UpstreamIo {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStreamPoll>>),
}

impl AsRawFd for UpstreamIo {
    fn as_raw_fd(&self) -> RawFd {
        match self {
            Self::Plain(stream) => stream.as_raw_fd(),
            Self::Tls(tls) => tls.get_ref().0.as_raw_fd(),
        }
    }
}

impl UpstreamIo {
    /// Reads into the free capacity of `buf` (`buf[len..capacity]`).
    pub(crate) async fn read_into(&mut self, buf: Vec<u8>) -> (io::Result<usize>, Vec<u8>) {
        match self {
            Self::Plain(stream) => crate::io::read_plain(stream, buf).await,
            Self::Tls(tls) => crate::io::read_tls(&mut **tls, buf).await,
        }
    }

    /// Writes all of `buf`.
    pub(crate) async fn write_all<T: OutBuf>(&mut self, buf: T) -> (io::Result<usize>, T) {
        match self {
            Self::Plain(stream) => stream.write_all(buf).await,
            Self::Tls(tls) => crate::io::write_tls(&mut **tls, buf).await,
        }
    }

    /// Whether an idle connection can carry another request. A plain one
    /// must be quiet (an EOF, or bytes nobody asked for, rule it out); on a
    /// TLS one the replica may have sent session tickets, so only a close
    /// behind them rules it out.
    pub(crate) fn reusable(&self) -> bool {
        use crate::sock::{peer_left, peer_state, PeerState};
        match self {
            Self::Plain(stream) => peer_state(stream) == PeerState::Quiet,
            Self::Tls(_) => peer_state(self) != PeerState::Closed && !peer_left(self, true),
        }
    }
}

/// How to reach a replica over TLS: the client configuration of its pool
/// and the name its certificate must carry.
#[derive(Debug, Clone)]
pub(crate) struct TlsTarget {
    pub(crate) config: Arc<rustls::ClientConfig>,
    pub(crate) name: ServerName<'static>,
}

/// Why a connect failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ConnectError {
    Refused,
    TimedOut,
    /// The TLS handshake failed (a certificate that does not verify, no
    /// TLS on the other side).
    Tls,
}

/// Connects within `timeout` (the TLS handshake included), with
/// TCP_NODELAY so that small writes (a request head, a token) leave at once.
pub(crate) async fn connect(
    addr: SocketAddr,
    tls: Option<&TlsTarget>,
    timeout: Duration,
) -> Result<UpstreamConn, ConnectError> {
    let connect = async {
        let stream = TcpStream::connect_addr(addr)
            .await
            .map_err(|_| ConnectError::Refused)?;
        let _ = stream.set_nodelay(true);
        let Some(target) = tls else {
            return Ok(UpstreamIo::Plain(stream));
        };
        let poll = stream
            .try_into_poll_io()
            .map_err(|_| ConnectError::Refused)?;
        let connector = tokio_rustls::TlsConnector::from(Arc::clone(&target.config));
        match connector.connect(target.name.clone(), poll).await {
            Ok(tls) => Ok(UpstreamIo::Tls(Box::new(tls))),
            Err(error) => {
                tracing::warn!(replica = %addr, %error, "TLS to the replica failed");
                Err(ConnectError::Tls)
            }
        }
    };
    match monoio::time::timeout(timeout, connect).await {
        Ok(Ok(stream)) => Ok(UpstreamConn {
            stream,
            buf: Vec::with_capacity(READ_BUFFER),
            reused: false,
        }),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(ConnectError::TimedOut),
    }
}
