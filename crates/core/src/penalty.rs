//! Penalties a replica asks for: a 429, or a 429/503 with `Retry-After`,
//! means "send me less for a while". A penalty is soft (the replica is
//! avoided while others can take the request), unlike an outlier ejection.

use crate::replica::ReplicaStats;

/// A 429 without `Retry-After` avoids the replica this long.
pub const DEFAULT_PENALTY_S: u64 = 1;
/// The longest `Retry-After` honoured, so a bogus header cannot park a
/// replica for hours.
pub const MAX_PENALTY_S: u64 = 300;

/// Applies the penalty a response asks for, if any: `Retry-After` seconds
/// (capped) on a 429 or 503, [`DEFAULT_PENALTY_S`] on a 429 without one.
/// Returns the penalty's end, in the clock's milliseconds.
pub fn on_response(
    stats: &ReplicaStats,
    status: u16,
    retry_after_s: Option<u64>,
    now_ms: u64,
) -> Option<u64> {
    let seconds = match (status, retry_after_s) {
        (429 | 503, Some(s)) => s.min(MAX_PENALTY_S),
        (429, None) => DEFAULT_PENALTY_S,
        _ => return None,
    };
    let until = now_ms + seconds * 1000;
    stats.penalize_until(until);
    Some(until)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_429_and_503_penalize() {
        let stats = ReplicaStats::default();
        assert_eq!(on_response(&stats, 200, Some(5), 0), None);
        assert_eq!(on_response(&stats, 503, None, 0), None);
        assert!(!stats.is_penalized(1));
        assert_eq!(on_response(&stats, 429, None, 1_000), Some(2_000));
        assert!(stats.is_penalized(1_500));
        assert_eq!(on_response(&stats, 503, Some(10), 0), Some(10_000));
        assert_eq!(on_response(&stats, 429, Some(100_000), 0), Some(300_000));
    }
}
