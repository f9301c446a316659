//! Coarse deadlines, kept in a worker-wide table and swept on a tick, for
//! waits that need no timer of their own: idle client connections (a monoio
//! timer entry is 640 bytes, cache-padded; a row here is 40) and the fast
//! phase of upstream I/O (a timer registered and removed per read or write
//! costs more than the I/O's bookkeeping).
//!
//! A waiter registers its deadline and waker; the worker's sweeper wakes the
//! rows whose deadline passed, and a stopping worker wakes them all.
//! Deadlines are therefore precise to one [`SWEEP_EVERY`], which is plenty
//! for timeouts measured in seconds. Rows are reused, so steady state
//! allocates nothing.

use std::cell::RefCell;
use std::task::Waker;
use std::time::{Duration, Instant};

/// How often the sweeper looks for idle deadlines that passed.
pub(crate) const SWEEP_EVERY: Duration = Duration::from_millis(100);

#[derive(Debug)]
struct Entry {
    deadline: Instant,
    waker: Option<Waker>,
    expired: bool,
    used: bool,
}

/// One table of deadlines of one worker.
#[derive(Debug, Default)]
pub(crate) struct DeadlineTable {
    rows: RefCell<Vec<Entry>>,
    free: RefCell<Vec<usize>>,
}

impl DeadlineTable {
    /// Registers a waiter until `deadline`; returns its row.
    pub(crate) fn register(&self, deadline: Instant) -> Row<'_> {
        let row = Entry {
            deadline,
            waker: None,
            expired: false,
            used: true,
        };
        let mut rows = self.rows.borrow_mut();
        let index = match self.free.borrow_mut().pop() {
            Some(index) => {
                rows[index] = row;
                index
            }
            None => {
                rows.push(row);
                rows.len() - 1
            }
        };
        Row { table: self, index }
    }

    /// Whether the row's deadline passed; otherwise keeps `waker` to be
    /// woken when it does.
    fn expired(&self, index: usize, waker: &Waker) -> bool {
        let mut rows = self.rows.borrow_mut();
        let row = &mut rows[index];
        if row.expired {
            return true;
        }
        match &row.waker {
            Some(kept) if kept.will_wake(waker) => {}
            _ => row.waker = Some(waker.clone()),
        }
        false
    }

    /// Frees a row (the waiter woke up, or its wait was dropped).
    fn release(&self, index: usize) {
        let mut rows = self.rows.borrow_mut();
        let row = &mut rows[index];
        row.used = false;
        row.waker = None;
        self.free.borrow_mut().push(index);
    }

    /// Wakes the waiters whose deadline passed by `now`.
    pub(crate) fn sweep(&self, now: Instant) {
        for row in self.rows.borrow_mut().iter_mut() {
            if row.used && !row.expired && row.deadline <= now {
                row.expired = true;
                if let Some(waker) = row.waker.take() {
                    waker.wake();
                }
            }
        }
    }

    /// Wakes every waiter (the worker is stopping).
    pub(crate) fn wake_all(&self) {
        for row in self.rows.borrow_mut().iter_mut() {
            if let Some(waker) = row.waker.take() {
                waker.wake();
            }
        }
    }
}

/// A registered deadline, freed when dropped.
#[derive(Debug)]
pub(crate) struct Row<'a> {
    table: &'a DeadlineTable,
    index: usize,
}

impl Row<'_> {
    /// Whether the deadline passed; otherwise the waiter in `waker` is
    /// woken when the sweeper finds it passed.
    pub(crate) fn expired(&self, waker: &Waker) -> bool {
        self.table.expired(self.index, waker)
    }
}

impl Drop for Row<'_> {
    fn drop(&mut self) {
        self.table.release(self.index);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::task::Wake;

    struct Count(AtomicUsize);

    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[test]
    fn rows_expire_at_their_deadline_and_are_reused() {
        let table = DeadlineTable::default();
        let count = Arc::new(Count(AtomicUsize::new(0)));
        let waker = Waker::from(Arc::clone(&count));
        let start = Instant::now();
        let early = table.register(start + Duration::from_secs(1));
        let late = table.register(start + Duration::from_secs(5));
        assert!(!early.expired(&waker));
        assert!(!late.expired(&waker));
        table.sweep(start + Duration::from_secs(2));
        assert_eq!(count.0.load(Ordering::SeqCst), 1);
        assert!(early.expired(&waker));
        assert!(!late.expired(&waker));
        let freed = early.index;
        drop(early);
        let again = table.register(start + Duration::from_secs(9));
        assert_eq!(again.index, freed, "a freed row is reused");
        assert!(!again.expired(&waker));
        table.wake_all();
        assert_eq!(count.0.load(Ordering::SeqCst), 3);
    }
}
