//! Session affinity: requests that carry the same key (a header, a cookie,
//! a top-level JSON string such as OpenAI's `user`) go to the same replica
//! of their pool, on top of the pool's routing rule, by **consistent
//! hashing with bounded loads** (Mirrokni, Thorup and Zadimoghaddam, 2018;
//! HAProxy's `hash-balance-factor`).
//!
//! Each routable replica owns [`POINTS`] points on a hash ring, placed by
//! hashing its id (not its place in the snapshot), so every snapshot (and
//! every inferlb instance) agrees on the ring. A key hashes to a point and
//! walks clockwise to the first replica that may take one more request:
//!
//! ```text
//! capacity(r) = ⌈(1 + ε) × (in flight over the pool + 1) × weight(r) / Σ weight⌉
//! r takes the request when in_flight(r) + 1 ≤ capacity(r)
//! ```
//!
//! so a hot key spills to the next replica on the ring instead of
//! overloading its own, and comes back when the load falls. A replica that
//! leaves (removed, drained, unhealthy, ejected) takes only its own points
//! with it: only the keys that hashed to it move.

use std::fmt;
use std::str::FromStr;

use xxhash_rust::xxh3::xxh3_64_with_seed;

use crate::balance::{Tried, View};
use crate::replica::Replica;

/// Ring points per replica: enough that each replica's share of the keys
/// is within a few percent of even for a handful of replicas.
pub const POINTS: usize = 160;

/// ε when the config gives none: a replica takes up to 1.25× the mean.
pub const DEFAULT_EPSILON: f64 = 0.25;

/// Seeds keep key hashes and ring points apart from the prefix hashes.
const KEY_SEED: u64 = 0x5e55_1011_affe_c7ed;

/// Where a request's affinity key is read from.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum AffinityKey {
    /// `header:NAME`: a request header's value (the name lowercase).
    Header(String),
    /// `cookie:NAME`: a cookie of the `Cookie` header.
    Cookie(String),
    /// `json:FIELD`: a top-level string of a JSON body (`json:user`: the
    /// OpenAI `user` field).
    Json(String),
}

impl AffinityKey {
    /// What is read, for logs and the API: `header:x-session-id`.
    pub fn describe(&self) -> String {
        self.to_string()
    }
}

impl fmt::Display for AffinityKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Header(name) => write!(f, "header:{name}"),
            Self::Cookie(name) => write!(f, "cookie:{name}"),
            Self::Json(field) => write!(f, "json:{field}"),
        }
    }
}

/// An RFC 9110 token (header and cookie names).
fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

impl FromStr for AffinityKey {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let expected = "expected \"header:NAME\", \"cookie:NAME\" or \"json:FIELD\"";
        let Some((kind, name)) = s.split_once(':') else {
            return Err(format!("{s:?}: {expected}"));
        };
        match kind {
            "header" if is_token(name) => Ok(Self::Header(name.to_ascii_lowercase())),
            "cookie" if is_token(name) => Ok(Self::Cookie(name.to_owned())),
            "json" if !name.is_empty() && !name.contains(['"', '\\']) => {
                Ok(Self::Json(name.to_owned()))
            }
            "header" | "cookie" => Err(format!("{s:?}: {name:?} is not a valid name")),
            "json" => Err(format!("{s:?}: {name:?} is not a valid field name")),
            _ => Err(format!("{s:?}: {expected}")),
        }
    }
}

/// A pool's `affinity = { key = "...", epsilon = 0.25 }`.
#[derive(Debug, Clone, PartialEq)]
pub struct Affinity {
    /// Where the key is read from.
    pub key: AffinityKey,
    /// How far above the mean load a replica may go before its keys spill
    /// to the next replica on the ring.
    pub epsilon: f64,
}

impl Affinity {
    /// Checks ε; the reason names the problem.
    pub fn check_epsilon(epsilon: f64) -> Result<(), String> {
        if epsilon.is_finite() && epsilon > 0.0 {
            Ok(())
        } else {
            Err(format!(
                "{epsilon} must be a number above 0 (0.25: a replica takes up to 1.25x the mean load)"
            ))
        }
    }
}

/// The hash a key's value routes by.
pub fn key_hash(value: &[u8]) -> u64 {
    xxh3_64_with_seed(value, KEY_SEED)
}

/// A pool's ring over its routable replicas, built with each snapshot.
#[derive(Debug, Clone, Default)]
pub struct Ring {
    /// (point, index into the snapshot's replicas), sorted by point.
    points: Vec<(u64, u32)>,
    /// The replicas on the ring.
    members: Vec<u32>,
}

impl Ring {
    /// A ring over `members` (indices into `replicas`).
    pub fn build(replicas: &[Replica], members: &[u32]) -> Self {
        let mut points = Vec::with_capacity(members.len() * POINTS);
        for &i in members {
            let id = replicas[i as usize].id.as_str().as_bytes();
            for point in 0..POINTS as u64 {
                points.push((xxh3_64_with_seed(id, point), i));
            }
        }
        points.sort_unstable();
        Self {
            points,
            members: members.to_vec(),
        }
    }

    /// The replica for a key's hash: the first on the ring from `hash` that
    /// is usable (not tried, not ejected) and within its bounded load;
    /// penalized replicas (a recent 429 or 503) only when no other is.
    /// `None` when no member is usable.
    pub fn pick(&self, hash: u64, view: &View<'_>, epsilon: f64) -> Option<usize> {
        let (mut total, mut weights) = (0u64, 0u64);
        for &i in &self.members {
            if view.usable(i as usize) {
                total += view.replicas[i as usize].stats.in_flight();
                weights += u64::from(view.replicas[i as usize].weight.max(1));
            }
        }
        if weights == 0 {
            return None;
        }
        let fits = |i: usize| {
            let r = &view.replicas[i];
            let share = f64::from(r.weight.max(1)) / weights as f64;
            let capacity = ((1.0 + epsilon) * (total + 1) as f64 * share).ceil();
            (r.stats.in_flight() + 1) as f64 <= capacity
        };
        let start = self.points.partition_point(|&(point, _)| point < hash);
        let len = self.points.len();
        for strict in [true, false] {
            let mut seen = Tried::default();
            let mut first_usable = None;
            for step in 0..len {
                let i = self.points[(start + step) % len].1 as usize;
                if seen.contains(i) {
                    continue;
                }
                seen.insert(i);
                if !view.usable(i) || (strict && view.penalized(i)) {
                    continue;
                }
                first_usable.get_or_insert(i);
                if fits(i) {
                    return Some(i);
                }
            }
            // Every usable replica is over its bound (only when loads moved
            // between the sum and the check): the key's own.
            if first_usable.is_some() {
                return first_usable;
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pool::LoadWeights;
    use crate::replica::{Replica, ReplicaId};
    use std::collections::HashMap;

    fn replicas(n: usize) -> Vec<Replica> {
        (0..n)
            .map(|i| {
                let addr: std::net::SocketAddr = format!("10.0.0.{}:8000", i + 1).parse().unwrap();
                Replica::new(
                    ReplicaId::new(&format!("r{i}")).unwrap(),
                    addr.to_string(),
                    addr,
                    1,
                )
            })
            .collect()
    }

    fn pick(ring: &Ring, replicas: &[Replica], key: &str, epsilon: f64) -> usize {
        let tried = Tried::default();
        let weights = LoadWeights::default();
        let view = View {
            replicas,
            tried: &tried,
            now_ms: 0,
            slow_start_ms: 0,
            weights: &weights,
        };
        ring.pick(key_hash(key.as_bytes()), &view, epsilon).unwrap()
    }

    #[test]
    fn keys_parse_and_bad_ones_say_why() {
        assert_eq!(
            "header:X-Session-ID".parse::<AffinityKey>().unwrap(),
            AffinityKey::Header("x-session-id".into())
        );
        assert_eq!(
            "json:user".parse::<AffinityKey>().unwrap(),
            AffinityKey::Json("user".into())
        );
        assert_eq!(
            "cookie:sid".parse::<AffinityKey>().unwrap(),
            AffinityKey::Cookie("sid".into())
        );
        for bad in [
            "user",
            "query:x",
            "header:",
            "header:a b",
            "cookie:a;b",
            "json:",
        ] {
            let err = bad.parse::<AffinityKey>().unwrap_err();
            assert!(err.contains(bad), "{bad}: {err}");
        }
        assert!(Affinity::check_epsilon(0.0).is_err());
        assert!(Affinity::check_epsilon(f64::NAN).is_err());
        assert!(Affinity::check_epsilon(0.1).is_ok());
    }

    #[test]
    fn a_key_keeps_its_replica_and_keys_spread() {
        let rs = replicas(4);
        let ring = Ring::build(&rs, &[0, 1, 2, 3]);
        let mut count = HashMap::new();
        for k in 0..4000 {
            let key = format!("session-{k}");
            let r = pick(&ring, &rs, &key, DEFAULT_EPSILON);
            assert_eq!(r, pick(&ring, &rs, &key, DEFAULT_EPSILON), "{key} moved");
            *count.entry(r).or_insert(0) += 1;
        }
        assert_eq!(count.len(), 4);
        for (&r, &n) in &count {
            assert!(
                (700..=1300).contains(&n),
                "replica {r} got {n} of 4000 keys"
            );
        }
    }

    #[test]
    fn only_the_keys_of_a_replica_that_leaves_move() {
        let rs = replicas(4);
        let before = Ring::build(&rs, &[0, 1, 2, 3]);
        let after = Ring::build(&rs, &[0, 1, 3]);
        let mut moved = 0;
        for k in 0..2000 {
            let key = format!("k{k}");
            let (a, b) = (
                pick(&before, &rs, &key, DEFAULT_EPSILON),
                pick(&after, &rs, &key, DEFAULT_EPSILON),
            );
            if a != 2 {
                assert_eq!(a, b, "{key} moved from {a} though replica 2 left");
            } else {
                moved += 1;
                assert_ne!(b, 2);
            }
        }
        assert!(moved > 300, "{moved}");
    }

    #[test]
    fn a_key_spills_off_a_replica_over_its_bound_and_comes_back() {
        let rs = replicas(3);
        let ring = Ring::build(&rs, &[0, 1, 2]);
        let home = pick(&ring, &rs, "hot", 0.25);
        // 10 in flight on the key's replica, none elsewhere: its bound is
        // ⌈1.25 × 11 / 3⌉ = 5.
        let guards: Vec<_> = (0..10).map(|_| rs[home].stats.start_request()).collect();
        let spilled = pick(&ring, &rs, "hot", 0.25);
        assert_ne!(spilled, home);
        drop(guards);
        assert_eq!(pick(&ring, &rs, "hot", 0.25), home);
    }
}
