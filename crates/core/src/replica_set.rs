//! The immutable snapshot the data plane routes with, and its publisher.

use std::fmt;
use std::sync::Arc;

use arc_swap::ArcSwap;

use std::collections::HashMap;

use crate::affinity::Ring;
use crate::balance::{Balancer, Cursor, Routing, Tried, View};
use crate::pool::{NewPrefix, PoolName, PoolSpec};
use crate::prefix::{PrefixTable, Slot};
use crate::replica::Replica;
use crate::replica::{Health, ReplicaState};
use crate::scaling::PoolQueue;

/// One published view of the replicas: what every worker routes with until
/// the next generation is published. Never mutated after it is built.
pub struct ReplicaSet {
    generation: u64,
    routing: Routing,
    safeguards: Safeguards,
    replicas: Vec<Replica>,
    pools: Vec<PoolView>,
    /// Pool names and aliases → index into `pools`.
    names: HashMap<String, u32>,
    /// The pool for requests that name no model, or one no pool serves.
    default_pool: Option<u32>,
    /// Some pool has session affinity (the request path looks for keys
    /// only then).
    any_affinity: bool,
}

/// One pool of a snapshot: its replicas (indices into the snapshot's list)
/// and the balancer built over the routable ones.
pub struct PoolView {
    spec: PoolSpec,
    routing: Routing,
    members: Vec<u32>,
    balancer: Box<dyn Balancer>,
    failing_open: bool,
    /// `prefix` routing's table, and the slot of each routable member.
    table: Option<Arc<PrefixTable>>,
    slots: Vec<(u32, Slot)>,
    /// Held requests, when the pool autoscales.
    queue: Option<Arc<PoolQueue>>,
    /// Session affinity's ring over the routable members.
    ring: Option<Ring>,
}

impl PoolView {
    /// The pool's name.
    pub fn name(&self) -> &PoolName {
        &self.spec.name
    }

    /// Its declaration (aliases, settings).
    pub fn spec(&self) -> &PoolSpec {
        &self.spec
    }

    /// The routing rule in force (the pool's own, or the top-level one).
    pub fn routing(&self) -> Routing {
        self.routing
    }

    /// Its replicas, as indices into [`ReplicaSet::replicas`].
    pub fn members(&self) -> &[u32] {
        &self.members
    }

    /// Whether every active replica is unhealthy and routing fails open.
    pub fn failing_open(&self) -> bool {
        self.failing_open
    }

    /// `prefix` routing's table, when the pool routes by prefix.
    pub fn table(&self) -> Option<&Arc<PrefixTable>> {
        self.table.as_ref()
    }

    /// The queue of held requests, when the pool autoscales.
    pub fn queue(&self) -> Option<&Arc<PoolQueue>> {
        self.queue.as_ref()
    }
}

impl fmt::Debug for PoolView {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PoolView")
            .field("name", &self.spec.name)
            .field("routing", &self.routing)
            .field("members", &self.members.len())
            .finish()
    }
}

/// A request's text for `prefix` routing: its chained block hashes
/// ([`crate::prefix::chain`]) and its length in bytes.
#[derive(Debug, Clone, Copy)]
pub struct PrefixKey<'a> {
    /// The block hashes.
    pub chain: &'a [u64],
    /// The text's length.
    pub len: usize,
}

/// The safeguards every snapshot routes under: slow start and fail-open
/// (not a scaling safeguards).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Safeguards {
    /// Slow-start ramp of new and recovered replicas, ms; 0 is off.
    pub slow_start_ms: u64,
    /// When every active replica is unhealthy, route to all of them anyway
    /// (ALB's fail-open) rather than answer 503.
    pub fail_open: bool,
}

impl Default for Safeguards {
    fn default() -> Self {
        Self {
            slow_start_ms: 0,
            fail_open: true,
        }
    }
}

/// A pool declaration and the prefix table it keeps across snapshots.
#[derive(Debug, Clone)]
pub struct PoolEntry {
    /// The declaration.
    pub spec: PoolSpec,
    /// Its table, when it routes by prefix.
    pub table: Option<Arc<PrefixTable>>,
    /// Its held requests, when it autoscales.
    pub queue: Option<Arc<PoolQueue>>,
}

impl ReplicaSet {
    /// Builds a snapshot and its balancer with the default safeguards.
    pub fn new(generation: u64, routing: Routing, replicas: Vec<Replica>) -> Self {
        Self::with_safeguards(generation, routing, Safeguards::default(), replicas)
    }

    /// Builds a snapshot whose pools are the ones its replicas name.
    pub fn with_safeguards(
        generation: u64,
        routing: Routing,
        safeguards: Safeguards,
        replicas: Vec<Replica>,
    ) -> Self {
        Self::with_pools(generation, routing, safeguards, replicas, &[])
    }

    /// Builds a snapshot: the declared pools, then any pool a replica names
    /// that is not declared (with default settings), and a balancer each.
    ///
    /// The default pool exists when it is declared, when a replica is in it,
    /// or when no other pool exists (so an empty proxy answers 503, not 404).
    pub fn with_pools(
        generation: u64,
        routing: Routing,
        safeguards: Safeguards,
        replicas: Vec<Replica>,
        declared: &[PoolEntry],
    ) -> Self {
        let mut entries: Vec<PoolEntry> = declared.to_vec();
        for r in &replicas {
            if !entries.iter().any(|e| e.spec.name == r.pool) {
                entries.push(PoolEntry {
                    spec: PoolSpec::named(r.pool.clone()),
                    table: None,
                    queue: None,
                });
            }
        }
        if entries.is_empty() {
            entries.push(PoolEntry {
                spec: PoolSpec::named(PoolName::default_pool()),
                table: None,
                queue: None,
            });
        }
        let mut pools = Vec::with_capacity(entries.len());
        let mut names = HashMap::new();
        let mut default_pool = None;
        for entry in entries {
            let index = pools.len() as u32;
            let effective = entry.spec.routing.unwrap_or(routing);
            let members: Vec<u32> = (0..replicas.len() as u32)
                .filter(|&i| replicas[i as usize].pool == entry.spec.name)
                .collect();
            let (balancer, failing_open, routable) =
                build_balancer(effective, &safeguards, &replicas, &members);
            let table = if effective == Routing::Prefix {
                Some(entry.table.unwrap_or_else(|| {
                    Arc::new(PrefixTable::new(entry.spec.prefix.max_tree_bytes))
                }))
            } else {
                None
            };
            let slots = match &table {
                Some(table) => routable
                    .iter()
                    .filter_map(|&i| Some((i, table.slot_for(replicas[i as usize].uid)?)))
                    .collect(),
                None => Vec::new(),
            };
            let ring = entry
                .spec
                .affinity
                .as_ref()
                .map(|_| Ring::build(&replicas, &routable));
            if entry.spec.name.is_default() {
                default_pool = Some(index);
            }
            // The first pool to claim a name keeps it.
            for name in std::iter::once(entry.spec.name.as_str())
                .chain(entry.spec.aliases.iter().map(String::as_str))
                .chain(entry.spec.adapters.iter().map(String::as_str))
            {
                names.entry(name.to_owned()).or_insert(index);
            }
            pools.push(PoolView {
                ring,
                spec: entry.spec,
                routing: effective,
                members,
                balancer,
                failing_open,
                table,
                slots,
                queue: entry.queue,
            });
        }
        let any_affinity = pools.iter().any(|p| p.spec.affinity.is_some());
        Self {
            generation,
            routing,
            safeguards,
            replicas,
            pools,
            names,
            default_pool,
            any_affinity,
        }
    }

    /// Whether any pool has session affinity.
    pub fn any_affinity(&self) -> bool {
        self.any_affinity
    }

    /// Whether every active replica of the default pool is unhealthy and
    /// routing fails open.
    pub fn failing_open(&self) -> bool {
        self.default_view().is_some_and(PoolView::failing_open)
    }

    /// The routing settings.
    pub fn safeguards(&self) -> Safeguards {
        self.safeguards
    }

    /// An empty snapshot (generation 0): every request gets 503.
    pub fn empty(routing: Routing) -> Self {
        Self::new(0, routing, Vec::new())
    }

    /// Increases by one with every published change.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// The top-level routing rule (a pool may have its own).
    pub fn routing(&self) -> Routing {
        self.routing
    }

    /// Every replica, routable or not, in a stable order.
    pub fn replicas(&self) -> &[Replica] {
        &self.replicas
    }

    /// Every pool, declared ones first.
    pub fn pools(&self) -> &[PoolView] {
        &self.pools
    }

    /// The pool serving `model`: the pool with that name or alias, else the
    /// default pool; `None` when neither exists (the request gets 404).
    #[inline]
    pub fn pool_for(&self, model: Option<&str>) -> Option<usize> {
        model
            .and_then(|m| self.names.get(m))
            .or(self.default_pool.as_ref())
            .map(|&i| i as usize)
    }

    /// The pool whose name or alias is `model`, not falling back.
    pub fn pool_named(&self, model: &str) -> Option<usize> {
        self.names.get(model).map(|&i| i as usize)
    }

    /// The default pool's index, if it exists.
    pub fn default_pool(&self) -> Option<usize> {
        self.default_pool.map(|i| i as usize)
    }

    fn default_view(&self) -> Option<&PoolView> {
        self.default_pool.map(|i| &self.pools[i as usize])
    }

    /// Whether at least one replica of any pool is healthy and takes new
    /// requests: a pool failing open (every replica unhealthy, routed
    /// anyway) does not count.
    pub fn has_healthy(&self) -> bool {
        self.replicas.iter().any(|r| r.is_routable())
    }

    /// Whether at least one replica of any pool takes new requests.
    pub fn has_routable(&self) -> bool {
        (0..self.pools.len()).any(|p| self.pool_has_routable(p))
    }

    /// Whether the routable replicas of pool `pool` have `limit` requests
    /// in flight each, or more (true when none is routable).
    pub fn pool_is_full(&self, pool: usize, limit: u32) -> bool {
        let (mut routable, mut in_flight) = (0u64, 0u64);
        for &i in self.pools[pool].members() {
            let r = &self.replicas[i as usize];
            if r.is_routable() {
                routable += 1;
                in_flight += r.stats.in_flight();
            }
        }
        in_flight >= routable * u64::from(limit)
    }

    /// Whether at least one replica of pool `pool` takes new requests.
    pub fn pool_has_routable(&self, pool: usize) -> bool {
        let view = &self.pools[pool];
        view.failing_open
            || view
                .members
                .iter()
                .any(|&i| self.replicas[i as usize].is_routable())
    }

    /// Picks a replica of the default pool for the next request, skipping
    /// those already tried.
    #[inline]
    pub fn pick(&self, cursor: &mut Cursor, tried: &Tried) -> Option<&Replica> {
        self.pick_index(cursor, tried).map(|i| &self.replicas[i])
    }

    /// Like [`pick`](Self::pick), but returns the index (for [`Tried`]).
    #[inline]
    pub fn pick_index(&self, cursor: &mut Cursor, tried: &Tried) -> Option<usize> {
        self.pick_at(cursor, tried, crate::clock::now_ms())
    }

    /// Picks from the default pool as of `now_ms` (penalties, ejections and
    /// slow start depend on it).
    #[inline]
    pub fn pick_at(&self, cursor: &mut Cursor, tried: &Tried, now_ms: u64) -> Option<usize> {
        let pool = self.default_pool? as usize;
        self.pick_in(pool, cursor, tried, now_ms, None)
    }

    /// What a pick in `pool` sees.
    #[inline]
    fn view<'a>(&'a self, pool: &'a PoolView, tried: &'a Tried, now_ms: u64) -> View<'a> {
        View {
            replicas: &self.replicas,
            tried,
            now_ms,
            slow_start_ms: self.safeguards.slow_start_ms,
            weights: &pool.spec.load,
        }
    }

    /// Picks a replica of pool `pool` (an index from [`pool_for`](Self::pool_for))
    /// as of `now_ms`. `key` is the request's text for `prefix` routing;
    /// without one, `prefix` picks the least loaded replica.
    #[inline]
    pub fn pick_in(
        &self,
        pool: usize,
        cursor: &mut Cursor,
        tried: &Tried,
        now_ms: u64,
        key: Option<PrefixKey<'_>>,
    ) -> Option<usize> {
        let view = &self.pools[pool];
        let v = self.view(view, tried, now_ms);
        match (&view.table, key) {
            (Some(table), Some(key)) if !key.chain.is_empty() => {
                pick_by_prefix(view, table, &v, cursor, key)
            }
            _ => view.balancer.pick(&v, cursor),
        }
    }

    /// Picks a replica of pool `pool` for a request naming its LoRA adapter
    /// `adapter`: the least loaded replica whose engine reports the adapter
    /// running or waiting, else the least loaded one with a free adapter
    /// slot, each only within the balance guard (`[prefix]`'s thresholds
    /// over the pool rule's pick); the pool rule's pick otherwise, and
    /// whenever no engine reports its adapters.
    pub fn pick_adapter(
        &self,
        pool: usize,
        cursor: &mut Cursor,
        tried: &Tried,
        now_ms: u64,
        adapter: &str,
    ) -> Option<usize> {
        let view = &self.pools[pool];
        let v = self.view(view, tried, now_ms);
        let least = view.balancer.pick(&v, cursor)?;
        let guard = &view.spec.prefix;
        let limit = guard.balance_abs_threshold + guard.balance_rel_threshold * v.load(least);
        let best = |wanted: &dyn Fn(&crate::replica::Adapters) -> bool| {
            view.members
                .iter()
                .map(|&i| i as usize)
                .filter(|&i| v.usable(i) && self.replicas[i].is_routable())
                .filter(|&i| {
                    self.replicas[i]
                        .stats
                        .with_adapters(now_ms, wanted)
                        .unwrap_or(false)
                })
                .map(|i| (v.load(i), i))
                .min_by(|a, b| a.0.total_cmp(&b.0))
                .filter(|&(load, _)| load <= limit)
                .map(|(_, i)| i)
        };
        best(&|a| a.has(adapter))
            .or_else(|| best(&|a| a.has_free_slot()))
            .or(Some(least))
    }

    /// Picks a replica of pool `pool` for a request whose affinity key
    /// hashes to `hash` ([`crate::affinity::key_hash`]): the key's replica
    /// on the pool's ring, within its bounded load. A pool without
    /// affinity picks by its rule.
    pub fn pick_affine(
        &self,
        pool: usize,
        cursor: &mut Cursor,
        tried: &Tried,
        now_ms: u64,
        hash: u64,
    ) -> Option<usize> {
        let view = &self.pools[pool];
        let (Some(ring), Some(affinity)) = (&view.ring, &view.spec.affinity) else {
            return self.pick_in(pool, cursor, tried, now_ms, None);
        };
        let v = self.view(view, tried, now_ms);
        ring.pick(hash, &v, affinity.epsilon)
    }
}

/// Builds one pool's balancer over its routable members (or, failing open,
/// over its active ones). Returns the balancer, whether it fails open, and
/// the members it routes to.
fn build_balancer(
    routing: Routing,
    safeguards: &Safeguards,
    replicas: &[Replica],
    members: &[u32],
) -> (Box<dyn Balancer>, bool, Vec<u32>) {
    // Failing open never reaches a replica whose name does not resolve.
    let active = |r: &Replica| r.state == ReplicaState::Active && r.weight > 0 && r.resolved;
    let in_pool = |i: usize| members.binary_search(&(i as u32)).is_ok();
    let mut routable: Vec<bool> = replicas
        .iter()
        .enumerate()
        .map(|(i, r)| in_pool(i) && r.is_routable())
        .collect();
    let failing_open = safeguards.fail_open
        && members.iter().any(|&i| active(&replicas[i as usize]))
        && !routable.contains(&true);
    if failing_open {
        // Every active replica failed its checks: the checks are more
        // likely wrong than the whole fleet, so route to all of them.
        routable = replicas
            .iter()
            .enumerate()
            .map(|(i, r)| in_pool(i) && active(r) && r.health == Health::Unhealthy)
            .collect();
    }
    let balancer = routing.build(replicas, &routable);
    let order = (0..replicas.len() as u32)
        .filter(|&i| routable[i as usize])
        .collect();
    (balancer, failing_open, order)
}

/// `prefix` routing: a replica that served the longest recorded prefix of
/// the text (the least loaded of them, when several did), if the match
/// covers `min_match_ratio` of the text and that replica passes the balance
/// guard; else a replica whose match still covers `min_match_ratio`; else
/// the least loaded replica. The chosen replica is recorded as an owner of
/// the text's blocks, so a hot prefix spreads over more replicas when its
/// first owner is busy instead of moving back and forth.
/// How much more loaded than the least loaded replica (one queued
/// request) a replica may be and still take a new prefix for balance.
const NEW_PREFIX_SLACK: f64 = 1.0;

fn pick_by_prefix(
    view: &PoolView,
    table: &PrefixTable,
    v: &View<'_>,
    cursor: &mut Cursor,
    key: PrefixKey<'_>,
) -> Option<usize> {
    let settings = &view.spec.prefix;
    let least = view.balancer.pick(v, cursor)?;
    let limit = settings.balance_abs_threshold + settings.balance_rel_threshold * v.load(least);
    // Blocks that cover `min_match_ratio` of the text.
    let needed = ((settings.min_match_ratio * key.len as f64) / crate::prefix::BLOCK as f64)
        .ceil()
        .max(1.0) as usize;
    // The least loaded usable owner among `owners`, if within the guard.
    let hashed = settings.new_prefix == NewPrefix::Hash;
    // The first block past what this instance knows of the text: in a
    // fleet, what tells one conversation or question from another under a
    // shared system prompt, and the same block on every instance whatever
    // each has seen of the text since.
    let found = table.lookup(key.chain);
    let known = found.as_ref().map_or(0, |m| m.blocks);
    let head = key
        .chain
        .get(known.min(key.chain.len().saturating_sub(1)))
        .copied();
    // The usable owner among `owners` within the guard: the least loaded,
    // or, hashed, the one rendezvous hashing of `head` ranks first (so
    // every instance picks the same one of a shared prefix's owners).
    let best = |owners: crate::prefix::Owners| {
        let within = || {
            owners
                .as_slice()
                .iter()
                .filter_map(|&slot| view.slots.iter().find(|&&(_, s)| s == slot))
                .map(|&(i, _)| i as usize)
                .filter(|&i| v.usable(i))
                .map(|i| (v.load(i), i))
                .filter(|&(load, _)| load <= limit)
        };
        let lightest = within().min_by(|a, b| a.0.total_cmp(&b.0));
        match (head.filter(|_| hashed), lightest) {
            // Among the owners within one queued request of the lightest.
            (Some(head), Some((light, _))) => within()
                .filter(|&(load, _)| load <= light + NEW_PREFIX_SLACK)
                .max_by_key(|&(_, i)| rendezvous(head, v.replicas[i].id.as_str()))
                .map(|(_, i)| i),
            (_, lightest) => lightest.map(|(_, i)| i),
        }
    };
    let mut chosen = None;
    if let Some(m) = found {
        if m.blocks >= needed.min(key.chain.len()) {
            let shorter = || {
                (needed < m.blocks)
                    .then(|| best(table.owners(key.chain[needed - 1])))
                    .flatten()
            };
            chosen = Some(best(m.owners).or_else(shorter).unwrap_or(least));
        }
    }
    // A text no replica holds: among the replicas about as loaded as the
    // least loaded one (within one queued request), the one that got the
    // fewest new prefixes so far (SGLang's "smallest tree"), so that a few
    // prefixes sent one at a time spread over the replicas rather than
    // doubling up wherever the rule's rotation happens to point.
    let chosen = chosen.unwrap_or_else(|| {
        // Hashed, a prefix's replica is its home on every instance, kept
        // like an owner's within the balance guard; otherwise among the
        // replicas within one queued request of the least loaded.
        let near = match settings.new_prefix {
            NewPrefix::Hash => limit,
            NewPrefix::Fewest => v.load(least) + NEW_PREFIX_SLACK,
        };
        let candidates = view.slots.iter().filter(|&&(i, _)| {
            let i = i as usize;
            v.usable(i) && !v.penalized(i) && v.load(i) <= near
        });
        match (settings.new_prefix, head) {
            // Highest random weight of (the first unknown block, replica
            // id): the same on every instance, and a replica that leaves
            // moves only its own prefixes.
            (NewPrefix::Hash, Some(head)) => candidates
                .map(|&(i, _)| i as usize)
                .max_by_key(|&i| rendezvous(head, v.replicas[i].id.as_str()))
                .unwrap_or(least),
            _ => table
                .place_new(candidates.map(|&(_, slot)| slot))
                .and_then(|slot| view.slots.iter().find(|&&(_, s)| s == slot))
                .map_or(least, |&(i, _)| i as usize),
        }
    });
    if let Some(&(_, slot)) = view.slots.iter().find(|&&(i, _)| i as usize == chosen) {
        table.record(key.chain, slot, PrefixTable::stamp_at(v.now_ms));
    }
    Some(chosen)
}

/// The rendezvous weight of a text's first block on a replica: FNV-1a of
/// the id, mixed with the block hash (splitmix64's finalizer).
fn rendezvous(head: u64, id: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in id.bytes() {
        h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
    }
    let mut z = h ^ head;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

impl fmt::Debug for ReplicaSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReplicaSet")
            .field("generation", &self.generation)
            .field("routing", &self.routing)
            .field("replicas", &self.replicas.len())
            .finish()
    }
}

/// Where the control plane publishes snapshots and workers load them.
///
/// Loading is wait-free for readers (arc-swap), so publishing a new snapshot
/// never stalls a request; a worker sees it from its next pick.
#[derive(Debug, Clone)]
pub struct Snapshots(Arc<ArcSwap<ReplicaSet>>);

impl Snapshots {
    /// Starts with `initial` published.
    pub fn new(initial: ReplicaSet) -> Self {
        Self(Arc::new(ArcSwap::from_pointee(initial)))
    }

    /// The current snapshot.
    pub fn load(&self) -> Arc<ReplicaSet> {
        self.0.load_full()
    }

    /// Publishes a new snapshot for every worker's next pick.
    pub fn publish(&self, set: ReplicaSet) {
        self.0.store(Arc::new(set));
    }

    /// The swap cell itself, for callers that keep an `arc_swap::Cache`.
    pub fn cell(&self) -> &Arc<ArcSwap<ReplicaSet>> {
        &self.0
    }
}

#[cfg(test)]
mod tests;
