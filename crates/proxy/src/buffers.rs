//! A worker's pool of I/O buffers. A connection rents buffers while one of
//! its requests is in progress and gives them back when it goes idle, so an
//! idle keep-alive connection owns none; an upstream connection gives its
//! read buffer back when it enters the keep-alive pool.

use std::mem;

/// Size of a rented buffer: a default-sized request head (16 KiB) fits, and
/// so do a response head and most reads of a token stream.
pub(crate) const BUFFER: usize = 16 * 1024;
/// Buffers kept for reuse per worker; more are freed when returned. This
/// bounds what the pool holds after a burst (here 1 MiB) while covering the
/// requests a busy worker has in flight at once.
const MAX_KEPT: usize = 64;

/// Free buffers of one worker, touched only from its thread.
#[derive(Debug, Default)]
pub(crate) struct Buffers {
    free: Vec<Vec<u8>>,
}

impl Buffers {
    /// Gives `slot` a buffer if it has none.
    pub(crate) fn rent(&mut self, slot: &mut Vec<u8>) {
        if slot.capacity() == 0 {
            *slot = self
                .free
                .pop()
                .unwrap_or_else(|| Vec::with_capacity(BUFFER));
        }
    }

    /// Takes `slot`'s buffer back, leaving it empty. A buffer that grew
    /// (for a large head or body) is freed rather than kept, so the pool
    /// only holds standard ones.
    pub(crate) fn give_back(&mut self, slot: &mut Vec<u8>) {
        let mut buf = mem::take(slot);
        if buf.capacity() == BUFFER && self.free.len() < MAX_KEPT {
            buf.clear();
            self.free.push(buf);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_are_reused_and_grown_ones_freed() {
        let mut pool = Buffers::default();
        let mut slot = Vec::new();
        pool.rent(&mut slot);
        let first = slot.as_ptr();
        slot.extend_from_slice(b"abc");
        pool.give_back(&mut slot);
        assert_eq!(slot.capacity(), 0);
        pool.rent(&mut slot);
        assert_eq!((slot.as_ptr(), slot.len()), (first, 0));
        slot.reserve(4 * BUFFER);
        pool.give_back(&mut slot);
        assert!(pool.free.is_empty());
    }
}
