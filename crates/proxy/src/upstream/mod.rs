//! Upstream connections: establishing them and keeping them alive per worker.

pub(crate) mod pool;

use std::net::SocketAddr;
use std::time::Duration;

use monoio::net::TcpStream;

/// Initial capacity of an upstream connection's read buffer; response heads
/// and most token-stream reads fit.
const READ_BUFFER: usize = 16 * 1024;

/// One connection to a replica, with the buffer its responses are read into.
#[derive(Debug)]
pub(crate) struct UpstreamConn {
    pub(crate) stream: TcpStream,
    pub(crate) buf: Vec<u8>,
    /// The connection has carried a request before (it came from the pool).
    pub(crate) reused: bool,
}

/// Why a connect failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ConnectError {
    Refused,
    TimedOut,
}

/// Connects within `timeout`, with TCP_NODELAY so that small writes (a
/// request head, a token) leave at once.
pub(crate) async fn connect(
    addr: SocketAddr,
    timeout: Duration,
) -> Result<UpstreamConn, ConnectError> {
    match monoio::time::timeout(timeout, TcpStream::connect_addr(addr)).await {
        Ok(Ok(stream)) => {
            let _ = stream.set_nodelay(true);
            Ok(UpstreamConn {
                stream,
                buf: Vec::with_capacity(READ_BUFFER),
                reused: false,
            })
        }
        Ok(Err(_)) => Err(ConnectError::Refused),
        Err(_) => Err(ConnectError::TimedOut),
    }
}
