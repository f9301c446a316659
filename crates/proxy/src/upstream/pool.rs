//! A worker's keep-alive pool: idle upstream connections per replica.
//!
//! Owned by one worker and touched only from its thread, so it needs no lock.
//! Connections are keyed by the replica's process-unique `uid`, so a replica
//! removed and re-added at the same address never gets the old sockets.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use super::UpstreamConn;

#[derive(Debug)]
struct Idle {
    conn: UpstreamConn,
    since: Instant,
}

/// Idle connections per replica, most recently used last.
#[derive(Debug)]
pub(crate) struct Pool {
    idle: HashMap<u64, Vec<Idle>>,
    max_idle: usize,
    idle_timeout: Duration,
}

impl Pool {
    pub(crate) fn new(max_idle: usize, idle_timeout: Duration) -> Self {
        Self {
            idle: HashMap::new(),
            max_idle,
            idle_timeout,
        }
    }

    /// The most recently used live connection to a replica, if any. Each
    /// candidate is checked with a non-blocking peek first: a replica that
    /// closed an idle connection has left an EOF on it, and sending a request
    /// there would fail it for nothing.
    pub(crate) fn take(&mut self, uid: u64, now: Instant) -> Option<UpstreamConn> {
        let list = self.idle.get_mut(&uid)?;
        while let Some(idle) = list.pop() {
            if now.duration_since(idle.since) >= self.idle_timeout {
                continue;
            }
            if !idle.conn.stream.reusable() {
                // Closed by the replica, or unexpected bytes: either way the
                // connection cannot carry a new request.
                continue;
            }
            let mut conn = idle.conn;
            conn.reused = true;
            return Some(conn);
        }
        None
    }

    /// Returns a connection after a complete exchange; beyond the limit the
    /// connection is closed instead.
    pub(crate) fn put(&mut self, uid: u64, mut conn: UpstreamConn, now: Instant) {
        if self.max_idle == 0 {
            return;
        }
        conn.buf.clear();
        let list = self.idle.entry(uid).or_default();
        if list.len() >= self.max_idle {
            list.remove(0);
        }
        list.push(Idle { conn, since: now });
    }

    /// Closes connections idle too long or closed by their replica, and every
    /// connection of replicas no longer in the snapshot (`keep` says which
    /// uids remain).
    pub(crate) fn reap(&mut self, keep: impl Fn(u64) -> bool) {
        let now = Instant::now();
        let timeout = self.idle_timeout;
        self.idle.retain(|&uid, list| {
            if !keep(uid) {
                return false;
            }
            list.retain(|idle| {
                now.duration_since(idle.since) < timeout && idle.conn.stream.reusable()
            });
            !list.is_empty()
        });
    }
}
