//! Deadlines of a worker's idle client connections, kept in one table and
//! swept on a coarse tick, so that an idle connection holds no timer of its
//! own (a monoio timer entry is 640 bytes, cache-padded; a row here is 40).
//!
//! An idle connection registers its deadline and waker; the worker's sweeper
//! wakes the rows whose deadline passed, and a stopping worker wakes them
//! all. Timeouts are therefore precise to one [`SWEEP_EVERY`], which is
//! plenty for keep-alive and header timeouts measured in seconds. Rows are
//! reused, so steady state allocates nothing.

use std::cell::RefCell;
use std::task::Waker;
use std::time::{Duration, Instant};

/// How often the sweeper looks for idle deadlines that passed.
pub(crate) const SWEEP_EVERY: Duration = Duration::from_millis(100);

#[derive(Debug)]
struct Row {
    deadline: Instant,
    waker: Option<Waker>,
    expired: bool,
    used: bool,
}

/// The idle table of one worker.
#[derive(Debug, Default)]
pub(crate) struct IdleTable {
    rows: RefCell<Vec<Row>>,
    free: RefCell<Vec<usize>>,
}

impl IdleTable {
    /// Registers an idle connection until `deadline`; returns its row.
    pub(crate) fn register(&self, deadline: Instant) -> usize {
        let row = Row {
            deadline,
            waker: None,
            expired: false,
            used: true,
        };
        let mut rows = self.rows.borrow_mut();
        match self.free.borrow_mut().pop() {
            Some(index) => {
                rows[index] = row;
                index
            }
            None => {
                rows.push(row);
                rows.len() - 1
            }
        }
    }

    /// Whether the row's deadline passed; otherwise keeps `waker` to be
    /// woken when it does.
    pub(crate) fn expired(&self, index: usize, waker: &Waker) -> bool {
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

    /// Frees a row (the connection woke up, or its wait was dropped).
    pub(crate) fn release(&self, index: usize) {
        let mut rows = self.rows.borrow_mut();
        let row = &mut rows[index];
        row.used = false;
        row.waker = None;
        self.free.borrow_mut().push(index);
    }

    /// Wakes the connections whose deadline passed by `now`.
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

    /// Wakes every idle connection (the worker is stopping).
    pub(crate) fn wake_all(&self) {
        for row in self.rows.borrow_mut().iter_mut() {
            if let Some(waker) = row.waker.take() {
                waker.wake();
            }
        }
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
        let table = IdleTable::default();
        let count = Arc::new(Count(AtomicUsize::new(0)));
        let waker = Waker::from(Arc::clone(&count));
        let start = Instant::now();
        let early = table.register(start + Duration::from_secs(1));
        let late = table.register(start + Duration::from_secs(5));
        assert!(!table.expired(early, &waker));
        assert!(!table.expired(late, &waker));
        table.sweep(start + Duration::from_secs(2));
        assert_eq!(count.0.load(Ordering::SeqCst), 1);
        assert!(table.expired(early, &waker));
        assert!(!table.expired(late, &waker));
        table.release(early);
        let again = table.register(start + Duration::from_secs(9));
        assert_eq!(again, early, "a freed row is reused");
        assert!(!table.expired(again, &waker));
        table.wake_all();
        assert_eq!(count.0.load(Ordering::SeqCst), 3);
    }
}
