//! Socket calls monoio does not offer: peeking at a peer's state and shutting
//! a socket down under an in-flight operation; taking the bytes a TLS read
//! wrote into a buffer's spare capacity; and giving freed heap memory back
//! to the system. The only `unsafe` of the crate.

#![allow(unsafe_code)]

use std::mem::MaybeUninit;
use std::net::Shutdown;
use std::os::fd::{AsRawFd, BorrowedFd};

use socket2::SockRef;

/// What a non-blocking peek saw on a socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PeerState {
    /// Nothing to read: the peer is quiet and the connection open.
    Quiet,
    /// Bytes are waiting.
    HasData,
    /// The peer closed (EOF) or the connection failed.
    Closed,
}

fn with_sock<R>(fd: &impl AsRawFd, f: impl FnOnce(SockRef<'_>) -> R) -> R {
    // SAFETY: `fd` belongs to a live socket object borrowed for the whole
    // call, so the descriptor stays open while `SockRef` uses it.
    let borrowed = unsafe { BorrowedFd::borrow_raw(fd.as_raw_fd()) };
    f(SockRef::from(&borrowed))
}

/// Peeks one byte without blocking and without consuming it.
pub(crate) fn peer_state(fd: &impl AsRawFd) -> PeerState {
    with_sock(fd, |sock| {
        let mut byte = [MaybeUninit::<u8>::uninit(); 1];
        match sock.recv_with_flags(&mut byte, libc::MSG_PEEK | libc::MSG_DONTWAIT) {
            Ok(0) => PeerState::Closed,
            Ok(_) => PeerState::HasData,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => PeerState::Quiet,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => PeerState::Quiet,
            Err(_) => PeerState::Closed,
        }
    })
}

/// Whether the bytes waiting on the socket (without blocking) start like
/// `prefix`: at least three of them, all matching.
pub(crate) fn starts_with(fd: &impl AsRawFd, prefix: &[u8]) -> bool {
    with_sock(fd, |sock| {
        let mut bytes = [MaybeUninit::<u8>::uninit(); 32];
        let len = prefix.len().min(bytes.len());
        match sock.recv_with_flags(&mut bytes[..len], libc::MSG_PEEK | libc::MSG_DONTWAIT) {
            Ok(n) if n >= 3 => (0..n).all(|i| {
                // SAFETY: `recv` initialised the first `n` bytes.
                let b = unsafe { bytes[i].assume_init() };
                b == prefix[i]
            }),
            _ => false,
        }
    })
}

/// Whether the peer has left: the connection was reset or failed, or (when
/// `half_close` counts) the peer sent its FIN. Bytes it sent before may
/// still be queued, and a peek cannot see past them; `poll` can.
pub(crate) fn peer_left(fd: &impl AsRawFd, half_close: bool) -> bool {
    let mut pfd = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLRDHUP,
        revents: 0,
    };
    // SAFETY: one valid `pollfd` and a zero timeout: the call only reports
    // the state of a descriptor the caller keeps open.
    let ready = unsafe { libc::poll(&mut pfd, 1, 0) };
    let mut left = libc::POLLHUP | libc::POLLERR;
    if half_close {
        left |= libc::POLLRDHUP;
    }
    ready > 0 && pfd.revents & left != 0
}

/// Shuts both directions down. Any read or write still pending on the socket
/// completes at once, and the peer sees the close now rather than when the
/// last reference to the descriptor goes away.
pub(crate) fn shutdown(fd: &impl AsRawFd) {
    with_sock(fd, |sock| {
        let _ = sock.shutdown(Shutdown::Both);
    });
}

/// Stops sending (FIN) while still reading, for a lingering close.
pub(crate) fn shutdown_write(fd: &impl AsRawFd) {
    with_sock(fd, |sock| {
        let _ = sock.shutdown(Shutdown::Write);
    });
}

/// Marks `buf[..len]` as read after a read filled its spare capacity
/// through a [`tokio::io::ReadBuf`] (which initialised those bytes).
pub(crate) fn commit_read(buf: &mut Vec<u8>, len: usize) {
    assert!(len <= buf.capacity());
    // SAFETY: the caller's read wrote (initialised) every byte up to `len`
    // of this buffer's allocation, which `len <= capacity` bounds.
    unsafe { buf.set_len(len) }
}

/// Returns the allocator's free memory to the system (glibc `malloc_trim`):
/// freed pages at the top of each arena are released, and whole free pages
/// inside them are given back with `MADV_DONTNEED`.
pub(crate) fn trim_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: `malloc_trim` only walks the allocator's own state, under
    // its own locks; it is safe to call from any thread at any time.
    unsafe {
        libc::malloc_trim(0);
    }
}
