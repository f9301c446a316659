//! A process-wide monotonic clock in milliseconds, cheap to share between
//! threads as a plain `u64` (deadlines live in atomics).
//!
//! Time-dependent logic (penalties, ejections, slow start) takes `now_ms` as
//! an argument, so tests pass any time they like instead of sleeping.

use std::sync::OnceLock;
use std::time::Instant;

static START: OnceLock<Instant> = OnceLock::new();

/// Milliseconds since the first call in this process.
#[inline]
pub fn now_ms() -> u64 {
    START.get_or_init(Instant::now).elapsed().as_millis() as u64
}
