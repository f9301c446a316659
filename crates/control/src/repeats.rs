//! Rate-limited error logging: a failure that repeats every tick (a full
//! disk under the drain reaper, say) is logged when it first happens, then
//! at most once per interval with how many times it happened meanwhile.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How often one repeating error is logged again.
pub const REPEAT_INTERVAL: Duration = Duration::from_secs(10);

/// The last error of one source, and how often it repeated unlogged.
#[derive(Debug, Default)]
pub struct Repeats {
    last: Mutex<Option<Last>>,
}

#[derive(Debug)]
struct Last {
    text: String,
    logged_at: Instant,
    suppressed: u64,
}

impl Repeats {
    /// Logs `error` at error level with `message`, unless the same error
    /// was logged less than [`REPEAT_INTERVAL`] ago.
    pub fn error(&self, error: &dyn std::fmt::Display, message: &str) {
        if let Some(suppressed) = self.admit(error.to_string(), Instant::now()) {
            tracing::error!(%error, repeated = suppressed, "{message}");
        }
    }

    /// The source works again: the next error is logged at once.
    pub fn clear(&self) {
        *self.last.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }

    /// Whether to log `text` now; if so, how many times it repeated unlogged
    /// since it was last logged.
    fn admit(&self, text: String, now: Instant) -> Option<u64> {
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        match last.as_mut() {
            Some(l) if l.text == text && now.duration_since(l.logged_at) < REPEAT_INTERVAL => {
                l.suppressed += 1;
                None
            }
            Some(l) if l.text == text => {
                let suppressed = std::mem::take(&mut l.suppressed);
                l.logged_at = now;
                Some(suppressed)
            }
            _ => {
                *last = Some(Last {
                    text,
                    logged_at: now,
                    suppressed: 0,
                });
                Some(0)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_repeating_error_is_logged_once_per_interval_with_its_count() {
        let repeats = Repeats::default();
        let t0 = Instant::now();
        assert_eq!(repeats.admit("disk full".into(), t0), Some(0));
        for i in 1..=99 {
            let at = t0 + Duration::from_millis(100 * i);
            assert_eq!(repeats.admit("disk full".into(), at), None);
        }
        assert_eq!(
            repeats.admit("disk full".into(), t0 + REPEAT_INTERVAL),
            Some(99)
        );
        // Another error is news.
        assert_eq!(repeats.admit("other".into(), t0 + REPEAT_INTERVAL), Some(0));
        repeats.clear();
        assert_eq!(repeats.admit("other".into(), t0 + REPEAT_INTERVAL), Some(0));
    }
}
