//! A worker's pool of I/O buffers. A connection rents buffers while one of
//! its requests is in progress and gives them back when it goes idle, so an
//! idle keep-alive connection owns none; an upstream connection gives its
//! read buffer back when it enters the keep-alive pool.

use std::mem;

/// The least free space a read is given.
pub(crate) const MIN_READ: usize = 2 * 1024;

/// Size of a rented buffer: a default-sized request head (16 KiB) fits, and
/// so do a response head and most reads of a token stream.
pub(crate) const BUFFER: usize = 16 * 1024;
/// Buffers a worker always keeps once it has had them: a light load never
/// allocates.
const MIN_KEPT: usize = 8;
/// The most the pool holds (64 MiB): returned buffers beyond it are freed.
/// Below it, what a burst returns stays until [`Buffers::trim`] finds it
/// unused for a whole sweep, so a worker with hundreds of requests in flight
/// reuses its buffers instead of freeing and allocating 16 KiB per request.
const MAX_KEPT: usize = 4096;

/// Free buffers of one worker, touched only from its thread.
#[derive(Debug, Default)]
pub(crate) struct Buffers {
    free: Vec<Vec<u8>>,
    /// The fewest free buffers since the last trim: that many sat unused.
    low: usize,
    /// Bytes of buffers freed since [`Buffers::take_freed`] last asked.
    freed: usize,
}

impl Buffers {
    /// Gives `slot` a buffer if it has none.
    pub(crate) fn rent(&mut self, slot: &mut Vec<u8>) {
        if slot.capacity() == 0 {
            *slot = self
                .free
                .pop()
                .unwrap_or_else(|| Vec::with_capacity(BUFFER));
            self.low = self.low.min(self.free.len());
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
        } else {
            self.freed += buf.capacity();
        }
    }

    /// Frees the buffers that no request needed since the last trim,
    /// keeping at least [`MIN_KEPT`]. Called every sweep (100 ms): a steady
    /// load keeps its working set, an idle worker is back to the minimum
    /// within two sweeps.
    pub(crate) fn trim(&mut self) {
        let needed = self.free.len() - self.low.min(self.free.len());
        let kept = needed.max(MIN_KEPT);
        self.freed += self.free.len().saturating_sub(kept) * BUFFER;
        self.free.truncate(kept);
        if self.free.capacity() > 2 * MIN_KEPT.max(self.free.len()) {
            self.free.shrink_to_fit();
        }
        self.low = self.free.len();
    }

    /// Bytes of buffers freed (trimmed, or grown past the standard size)
    /// since the last call.
    pub(crate) fn take_freed(&mut self) -> usize {
        mem::take(&mut self.freed)
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

    #[test]
    fn what_is_freed_is_counted_for_the_heap_trim() {
        let mut pool = Buffers::default();
        let mut slots: Vec<Vec<u8>> = (0..200).map(|_| Vec::new()).collect();
        for slot in &mut slots {
            pool.rent(slot);
        }
        let mut grown = Vec::new();
        pool.rent(&mut grown);
        grown.reserve(4 * BUFFER);
        let grown_capacity = grown.capacity();
        pool.give_back(&mut grown);
        assert_eq!(pool.take_freed(), grown_capacity, "a grown buffer is freed");
        for slot in &mut slots {
            pool.give_back(slot);
        }
        assert_eq!(pool.take_freed(), 0, "kept for reuse");
        pool.trim();
        pool.trim();
        assert_eq!(pool.take_freed(), (200 - MIN_KEPT) * BUFFER);
        assert_eq!(pool.take_freed(), 0);
    }

    #[test]
    fn a_burst_is_kept_while_used_and_trimmed_when_not() {
        let mut pool = Buffers::default();
        let mut slots: Vec<Vec<u8>> = (0..300).map(|_| Vec::new()).collect();
        let mut first = Vec::new();
        for round in 0..3 {
            let mut seen = Vec::new();
            for slot in &mut slots {
                pool.rent(slot);
                seen.push(slot.as_ptr());
            }
            seen.sort();
            if round == 0 {
                first = seen;
            } else {
                assert_eq!(seen, first, "round {round} allocated");
            }
            for slot in &mut slots {
                pool.give_back(slot);
            }
            pool.trim();
            // All 300 were rented in this sweep: none is freed, and from the
            // second round on every rent reuses one.
            assert_eq!(pool.free.len(), 300, "round {round}");
        }
        // A sweep with only 10 rented at once frees all but those 10.
        for slot in &mut slots[..10] {
            pool.rent(slot);
        }
        for slot in &mut slots[..10] {
            pool.give_back(slot);
        }
        pool.trim();
        assert_eq!(pool.free.len(), 10.max(MIN_KEPT));
        // An idle sweep keeps the minimum.
        pool.trim();
        assert_eq!(pool.free.len(), MIN_KEPT);
    }
}
