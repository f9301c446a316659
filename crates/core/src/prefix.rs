//! The prefix table behind `prefix` routing: which replica served which
//! prompt prefix recently, shared by every worker.
//!
//! # Design
//!
//! A request's text is cut into [`BLOCK`]-byte blocks and each block gets a
//! hash chained on the one before it (`h₁ = H(b₁)`, `h₂ = H(b₂, h₁)`, …),
//! so equal hashes at depth *d* mean (with high probability) equal first *d*
//! blocks. That is an approximate radix tree flattened into a hash table,
//! the same shape vLLM's prefix cache and the llm-d scheduler use: a node
//! is a block hash, its owner the replica that last served a text through
//! it.
//!
//! The table is a fixed array of 64-byte buckets of eight `AtomicU64`
//! entries (`fingerprint:32 | owner:16 | stamp:16`), sized from
//! `prefix.max_tree_bytes`. Every worker reads and writes it without a lock:
//! a lookup is a binary search over the chain's depth (about log₂ blocks
//! bucket reads), a record refreshes each block's entry, and a bucket that is
//! full evicts its least recently stamped entry (LRU per bucket). Races
//! between workers can lose an update; the table is a routing hint, so a
//! lost update costs at most one cache miss on a replica, never a wrong
//! answer.
//!
//! Owners are small slots mapped to replica uids by the control plane;
//! [`PrefixTable::forget`] clears a removed replica's entries.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use xxhash_rust::xxh3::xxh3_64_with_seed;

/// Bytes of text per block (about 16 tokens).
pub const BLOCK: usize = 64;

const WAYS: usize = 8;

#[derive(Debug, Default)]
#[repr(align(64))]
struct Bucket([AtomicU64; WAYS]);

/// Computes the chained block hashes of `text` into `out` (cleared first);
/// the last block may be short.
pub fn chain(text: &[u8], out: &mut Vec<u64>) {
    out.clear();
    let mut h = 0u64;
    for block in text.chunks(BLOCK) {
        h = xxh3_64_with_seed(block, h);
        out.push(h);
    }
}

/// An owner slot: 1 to 65535 (0 is "nobody").
pub type Slot = u16;

/// One pool's prefix table.
#[derive(Debug)]
pub struct PrefixTable {
    buckets: Box<[Bucket]>,
    mask: usize,
    /// Slot `i + 1` belongs to replica uid `owners[i]` (0: free).
    owners: Mutex<Vec<u64>>,
    /// New prefixes placed on each slot (index `slot - 1`): among replicas
    /// about as loaded as the least, the next new prefix goes to the one
    /// that got the fewest.
    placements: Mutex<Vec<u64>>,
}

/// The replicas that served a block: up to one bucket's worth.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Owners {
    slots: [Slot; WAYS],
    len: usize,
}

impl Owners {
    /// The owners' slots.
    pub fn as_slice(&self) -> &[Slot] {
        &self.slots[..self.len]
    }
}

/// The longest recorded prefix of a text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Match {
    /// Blocks matched.
    pub blocks: usize,
    /// Who served them (a hot prefix may live on several replicas).
    pub owners: Owners,
}

#[inline]
fn fingerprint(h: u64) -> u64 {
    (h >> 32) | 1
}

#[inline]
fn pack(fp: u64, owner: Slot, stamp: u16) -> u64 {
    (fp << 32) | (u64::from(owner) << 16) | u64::from(stamp)
}

#[inline]
fn owner_of(entry: u64) -> Slot {
    (entry >> 16) as Slot
}

#[inline]
fn stamp_of(entry: u64) -> u16 {
    entry as u16
}

impl PrefixTable {
    /// A table using about `max_bytes` (at least 1024 buckets).
    pub fn new(max_bytes: usize) -> Self {
        // The largest power of two that fits, so a bucket is `hash & mask`.
        let n = (max_bytes / std::mem::size_of::<Bucket>()).max(1024);
        let buckets = if n.is_power_of_two() {
            n
        } else {
            n.next_power_of_two() / 2
        };
        Self {
            buckets: (0..buckets).map(|_| Bucket::default()).collect(),
            mask: buckets - 1,
            owners: Mutex::new(Vec::new()),
            placements: Mutex::new(Vec::new()),
        }
    }

    /// Bytes the entries take.
    pub fn bytes(&self) -> usize {
        self.buckets.len() * std::mem::size_of::<Bucket>()
    }

    /// The LRU stamp of a time (`clock::now_ms`): seconds, wrapping.
    pub fn stamp_at(now_ms: u64) -> u16 {
        (now_ms / 1000) as u16
    }

    #[inline]
    fn bucket(&self, h: u64) -> &Bucket {
        &self.buckets[(h as usize) & self.mask]
    }

    /// Whether any replica served the block with hash `h`.
    #[inline]
    fn known(&self, h: u64) -> bool {
        let fp = fingerprint(h);
        self.bucket(h).0.iter().any(|e| {
            let e = e.load(Ordering::Relaxed);
            e != 0 && e >> 32 == fp
        })
    }

    /// The replicas that served the block with hash `h`.
    pub fn owners(&self, h: u64) -> Owners {
        let fp = fingerprint(h);
        let mut owners = Owners::default();
        for e in &self.bucket(h).0 {
            let e = e.load(Ordering::Relaxed);
            if e != 0 && e >> 32 == fp && owner_of(e) != 0 {
                owners.slots[owners.len] = owner_of(e);
                owners.len += 1;
            }
        }
        owners
    }

    /// The deepest block of `chain` the table knows, and who served it.
    pub fn lookup(&self, chain: &[u64]) -> Option<Match> {
        // The entries of one text are recorded together and refreshed
        // together, so "block d is known" holds for a prefix of the chain:
        // binary search for its end.
        let (mut known, mut hi) = (0usize, chain.len());
        while known < hi {
            let mid = (known + hi).div_ceil(2);
            if self.known(chain[mid - 1]) {
                known = mid;
            } else {
                hi = mid - 1;
            }
        }
        if known == 0 {
            return None;
        }
        let owners = self.owners(chain[known - 1]);
        (owners.len > 0).then_some(Match {
            blocks: known,
            owners,
        })
    }

    /// Records that `owner` served a text with this chain, now: its entry
    /// for each block is refreshed or added (other owners' entries stay,
    /// so a hot prefix can live on several replicas); a full bucket evicts
    /// its least recently stamped entry.
    pub fn record(&self, chain: &[u64], owner: Slot, stamp: u16) {
        for &h in chain {
            let fp = fingerprint(h);
            let want = pack(fp, owner, stamp);
            let bucket = &self.bucket(h).0;
            let mut victim = 0;
            let mut victim_age = 0u16;
            let mut found = false;
            for (i, cell) in bucket.iter().enumerate() {
                let e = cell.load(Ordering::Relaxed);
                if e != 0 && e >> 32 == fp && owner_of(e) == owner {
                    if e != want {
                        cell.store(want, Ordering::Relaxed);
                    }
                    found = true;
                    break;
                }
                let age = if e == 0 {
                    u16::MAX
                } else {
                    stamp.wrapping_sub(stamp_of(e))
                };
                if age > victim_age || i == 0 {
                    victim = i;
                    victim_age = age;
                }
            }
            if !found {
                bucket[victim].store(want, Ordering::Relaxed);
            }
        }
    }

    /// Of `candidates` (slots), the one that got the fewest new prefixes
    /// (the first such), counted as placed there.
    pub fn place_new(&self, candidates: impl Iterator<Item = Slot>) -> Option<Slot> {
        let mut placed = self.placements.lock().unwrap_or_else(|e| e.into_inner());
        let count =
            |placed: &Vec<u64>, slot: Slot| placed.get(usize::from(slot) - 1).copied().unwrap_or(0);
        let slot = candidates.min_by_key(|&slot| count(&placed, slot))?;
        let at = usize::from(slot) - 1;
        if placed.len() <= at {
            placed.resize(at + 1, 0);
        }
        placed[at] += 1;
        Some(slot)
    }

    /// The slot of replica `uid`, given one if it has none (control plane).
    /// `None` when every slot is taken.
    pub fn slot_for(&self, uid: u64) -> Option<Slot> {
        let mut owners = self.owners.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(i) = owners.iter().position(|&o| o == uid) {
            return Some(i as Slot + 1);
        }
        if let Some(i) = owners.iter().position(|&o| o == 0) {
            owners[i] = uid;
            return Some(i as Slot + 1);
        }
        if owners.len() < usize::from(Slot::MAX) {
            owners.push(uid);
            return Some(owners.len() as Slot);
        }
        None
    }

    /// Removes replica `uid`'s entries and frees its slot (control plane;
    /// a sweep over the whole table).
    pub fn forget(&self, uid: u64) {
        let mut owners = self.owners.lock().unwrap_or_else(|e| e.into_inner());
        let Some(i) = owners.iter().position(|&o| o == uid) else {
            return;
        };
        let slot = i as Slot + 1;
        for bucket in self.buckets.iter() {
            for cell in &bucket.0 {
                let e = cell.load(Ordering::Relaxed);
                if e != 0 && owner_of(e) == slot {
                    let _ = cell.compare_exchange(e, 0, Ordering::Relaxed, Ordering::Relaxed);
                }
            }
        }
        owners[i] = 0;
        let mut placed = self.placements.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(count) = placed.get_mut(i) {
            *count = 0;
        }
    }

    /// Entries in use, per owner slot (a sweep; for tests and the API).
    pub fn entries_of(&self, slot: Slot) -> usize {
        self.buckets
            .iter()
            .flat_map(|b| b.0.iter())
            .filter(|c| {
                let e = c.load(Ordering::Relaxed);
                e != 0 && owner_of(e) == slot
            })
            .count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(seed: u8, len: usize) -> Vec<u8> {
        (0..len)
            .map(|i| seed.wrapping_add((i % 251) as u8))
            .collect()
    }

    #[test]
    fn the_longest_recorded_prefix_is_found_with_its_owner() {
        let table = PrefixTable::new(1 << 20);
        let a = table.slot_for(11).unwrap();
        let b = table.slot_for(22).unwrap();
        let system = text(1, 2048);
        let mut first = system.clone();
        first.extend_from_slice(b"question one?");
        let mut chain_first = Vec::new();
        chain(&first, &mut chain_first);
        assert_eq!(table.lookup(&chain_first), None);
        table.record(&chain_first, a, 0);
        // Same system prompt, another question: the shared blocks match.
        let mut second = system.clone();
        second.extend_from_slice(b"a different question, longer than one block of text to be sure it spans more than a block");
        let mut chain_second = Vec::new();
        chain(&second, &mut chain_second);
        let m = table.lookup(&chain_second).unwrap();
        assert_eq!(m.owners.as_slice(), [a]);
        assert_eq!(m.blocks, 2048 / BLOCK);
        // A second replica serves the shared blocks too: both own them; the
        // first text's own last block is still only the first owner's.
        table.record(&chain_second, b, 0);
        let mut third = system.clone();
        third.extend_from_slice(b"a third question");
        let mut chain_third = Vec::new();
        chain(&third, &mut chain_third);
        let mut both = table
            .lookup(&chain_third)
            .unwrap()
            .owners
            .as_slice()
            .to_vec();
        both.sort();
        assert_eq!(both, [a, b]);
        assert_eq!(table.lookup(&chain_first).unwrap().owners.as_slice(), [a]);
        // An unrelated text matches nothing.
        let mut other = Vec::new();
        chain(&text(99, 3000), &mut other);
        assert_eq!(table.lookup(&other), None);
    }

    #[test]
    fn forgetting_a_replica_removes_its_entries_and_frees_its_slot() {
        let table = PrefixTable::new(1 << 20);
        let a = table.slot_for(7).unwrap();
        let mut c = Vec::new();
        chain(&text(3, 4096), &mut c);
        table.record(&c, a, 0);
        assert_eq!(table.entries_of(a), 4096 / BLOCK);
        table.forget(7);
        assert_eq!(table.entries_of(a), 0);
        assert_eq!(table.lookup(&c), None);
        assert_eq!(table.slot_for(8), Some(a), "the slot is reused");
    }

    #[test]
    fn the_table_stays_within_its_size_and_evicts_the_oldest() {
        let table = PrefixTable::new(64 * 1024);
        assert!(table.bytes() <= 64 * 1024);
        let owner = table.slot_for(1).unwrap();
        // Far more blocks than entries: old texts are evicted, new ones kept.
        let mut c = Vec::new();
        for i in 0..400u32 {
            let t: Vec<u8> = format!("{i:08}").repeat(512).into_bytes();
            chain(&t, &mut c);
            table.record(&c, owner, (i / 10) as u16);
        }
        let entries = table.entries_of(owner);
        assert!(entries <= table.bytes() / 8, "{entries}");
        let newest: Vec<u8> = format!("{:08}", 399).repeat(512).into_bytes();
        chain(&newest, &mut c);
        assert!(table.lookup(&c).is_some(), "the newest text is kept");
    }
}
