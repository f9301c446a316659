//! Health, clock-free: the check-verdict state machine ([`Tracker`]) and
//! the status an operator sees ([`Routability`]).
//!
//! ```text
//!            unhealthy_threshold failures in a row
//!   Healthy ─────────────────────────────────────▶ Unhealthy
//!      ▲                                               │
//!      └──────── healthy_threshold passes in a row ────┘
//! ```

use crate::replica::{Health, Replica, ReplicaState};

/// Checks in a row that flip a verdict (ALB's healthy and unhealthy
/// thresholds).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Thresholds {
    /// Passes in a row that make an unhealthy replica healthy.
    pub healthy: u32,
    /// Failures in a row that make a healthy replica unhealthy.
    pub unhealthy: u32,
}

/// The run of check results of one replica.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tracker {
    /// Passes in a row (positive) or failures in a row (negative).
    run: i64,
}

impl Tracker {
    /// Records one check of a replica whose verdict is `current`; returns
    /// the new verdict when this check flips it.
    pub fn record(
        &mut self,
        passed: bool,
        current: Health,
        thresholds: Thresholds,
    ) -> Option<Health> {
        self.run = match (passed, self.run) {
            (true, n) if n > 0 => n.saturating_add(1),
            (true, _) => 1,
            (false, n) if n < 0 => n.saturating_sub(1),
            (false, _) => -1,
        };
        match current {
            Health::Healthy if -self.run >= i64::from(thresholds.unhealthy.max(1)) => {
                Some(Health::Unhealthy)
            }
            Health::Unhealthy if self.run >= i64::from(thresholds.healthy.max(1)) => {
                Some(Health::Healthy)
            }
            _ => None,
        }
    }
}

/// What an operator sees of a replica: draining wins, then an unresolved
/// name, then an ejection, then a failing health check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Routability {
    Active,
    Draining,
    Unhealthy,
    Ejected,
    /// Its host name did not resolve; it is retried.
    Unresolved,
}

impl Routability {
    /// Every status, in the order metrics list them.
    pub const ALL: [Self; 5] = [
        Self::Active,
        Self::Draining,
        Self::Unhealthy,
        Self::Ejected,
        Self::Unresolved,
    ];

    /// The status of `replica` at `now_ms`.
    pub fn of(replica: &Replica, now_ms: u64) -> Self {
        if replica.state == ReplicaState::Draining {
            Self::Draining
        } else if !replica.resolved {
            Self::Unresolved
        } else if replica.stats.is_ejected(now_ms) {
            Self::Ejected
        } else if replica.health == Health::Unhealthy {
            Self::Unhealthy
        } else {
            Self::Active
        }
    }

    /// The name used in the API and the metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Active => "active",
            Self::Draining => "draining",
            Self::Unhealthy => "unhealthy",
            Self::Ejected => "ejected",
            Self::Unresolved => "unresolved",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Replays `checks` through a tracker, applying each flip.
    fn replay(checks: &[bool], thresholds: Thresholds) -> Vec<Health> {
        let mut tracker = Tracker::default();
        let mut health = Health::Healthy;
        let mut verdicts = Vec::with_capacity(checks.len());
        for &passed in checks {
            if let Some(next) = tracker.record(passed, health, thresholds) {
                health = next;
            }
            verdicts.push(health);
        }
        verdicts
    }

    proptest! {
        #[test]
        fn a_verdict_flips_exactly_after_its_threshold_in_a_row(
            checks in proptest::collection::vec(any::<bool>(), 0..200),
            healthy in 1u32..6,
            unhealthy in 1u32..6,
        ) {
            let thresholds = Thresholds { healthy, unhealthy };
            let verdicts = replay(&checks, thresholds);
            let mut previous = Health::Healthy;
            for (i, (&passed, &now)) in checks.iter().zip(&verdicts).enumerate() {
                // The run of equal results ending at this check.
                let run = checks[..=i].iter().rev().take_while(|&&c| c == passed).count() as u32;
                match (previous, now) {
                    (Health::Healthy, Health::Unhealthy) => {
                        prop_assert!(!passed && run >= unhealthy);
                    }
                    (Health::Unhealthy, Health::Healthy) => {
                        prop_assert!(passed && run >= healthy);
                    }
                    (Health::Healthy, Health::Healthy) => {
                        prop_assert!(passed || run < unhealthy);
                    }
                    (Health::Unhealthy, Health::Unhealthy) => {
                        prop_assert!(!passed || run < healthy);
                    }
                }
                previous = now;
            }
        }
    }

    #[test]
    fn alb_defaults_need_two_in_a_row() {
        let t = Thresholds {
            healthy: 2,
            unhealthy: 2,
        };
        assert_eq!(
            replay(&[false, true, false, false, true, true], t),
            [
                Health::Healthy,
                Health::Healthy,
                Health::Healthy,
                Health::Unhealthy,
                Health::Unhealthy,
                Health::Healthy
            ]
        );
    }
}
