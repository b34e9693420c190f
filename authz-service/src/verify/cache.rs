//! Caches bounded by bytes, sharing one memory budget.
//!
//! Every cache the service keeps (verified tokens, Basic successes, compartment lookups) is a
//! [`ByteCache`]: entries are weighed by an estimate of the heap they hold, and the cache never
//! holds more than its share of the budget the service was started with
//! (`--cache-memory-mib`). Counting entries is not enough: a verified token with 600 scopes
//! holds a hundred times more than one with three, and a bound in entries let ~14 KiB tokens
//! grow a replica far past its memory limit.
//!
//! Eviction follows S3-FIFO (Yang et al., SOSP 2023): a new entry enters a small probation
//! queue (a tenth of the budget); it moves to the main queue only if it was used again while
//! there, and main-queue entries used since the hand last passed get another round. A flood of
//! one-off entries (distinct tokens, forged or not) therefore churns the probation queue and
//! leaves the entries that real clients keep using in place, which "clear everything when
//! full" did not. Expired entries are dropped whenever the hand reaches them.
//!
//! Keys are 32-byte digests computed by the owner (salted per verifier), so the cache itself
//! never holds a credential or a patient id in the clear.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Instant;

use crate::observe::{CacheName, Observer};

pub type Key = [u8; 32];

/// The default for `--cache-memory-mib`: with the chart's 256 MiB limit this leaves room for
/// the process itself (about 20 MiB), allocator overhead and request buffers.
pub const DEFAULT_BUDGET_MIB: usize = 64;

/// A usage counter saturates here: "used often" and "used very often" are treated alike.
const MAX_FREQ: u8 = 3;

/// How one total budget is shared between the caches. Tokens dominate (large scope sets);
/// a Basic success is a digest and a deadline; a lookup is a digest and a few patient ids.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budget {
    pub tokens: usize,
    pub basic: usize,
    pub lookups: usize,
    /// Introspection verdicts (opaque tokens): an identity like a verified JWT's.
    pub introspection: usize,
}

impl Budget {
    /// Splits `total` bytes: 60 % verified JWTs, 15 % introspection verdicts, 5 % Basic
    /// successes, 20 % lookups.
    pub fn split(total: usize) -> Budget {
        Budget {
            tokens: total / 100 * 60,
            basic: total / 100 * 5,
            lookups: total / 100 * 20,
            introspection: total / 100 * 15,
        }
    }

    pub fn total(&self) -> usize {
        self.tokens + self.basic + self.lookups + self.introspection
    }

    pub fn from_mib(mib: usize) -> Budget {
        Budget::split(mib.saturating_mul(1024 * 1024))
    }
}

impl Default for Budget {
    fn default() -> Self {
        Budget::from_mib(DEFAULT_BUDGET_MIB)
    }
}

/// Heap bytes of an allocation of `n` bytes, with the allocator's header and rounding
/// (glibc: 16-byte granules, 8 bytes of header); nothing for an empty one.
pub fn alloc_bytes(n: usize) -> usize {
    if n == 0 {
        0
    } else {
        (n + 8).next_multiple_of(16)
    }
}

/// Heap bytes behind a `String`.
pub fn string_bytes(s: &str) -> usize {
    // The capacity is not visible through &str; clones of parsed values are exact-sized.
    alloc_bytes(s.len())
}

struct Slot<V> {
    value: V,
    weight: usize,
    expires: Instant,
    freq: AtomicU8,
    in_main: bool,
}

struct Inner<V> {
    map: HashMap<Key, Slot<V>>,
    small: VecDeque<Key>,
    main: VecDeque<Key>,
    small_bytes: usize,
    bytes: usize,
}

/// A cache of values under digest keys, bounded by `budget` bytes.
pub struct ByteCache<V> {
    budget: usize,
    /// Entries heavier than this are not cached at all: one of them would push out many
    /// ordinary ones, and refusing it only costs its owner a re-verification.
    max_entry: usize,
    inner: RwLock<Inner<V>>,
    observer: Option<(CacheName, Arc<dyn Observer>)>,
}

impl<V> std::fmt::Debug for ByteCache<V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (entries, bytes) = self.usage();
        f.debug_struct("ByteCache")
            .field("budget", &self.budget)
            .field("entries", &entries)
            .field("bytes", &bytes)
            .finish()
    }
}

impl<V> ByteCache<V> {
    /// Fixed cost of one entry besides its value's heap: the map slot (hashbrown keeps up to
    /// twice the slots it uses after growing) and the queue position.
    fn overhead() -> usize {
        2 * (std::mem::size_of::<Key>() + std::mem::size_of::<Slot<V>>() + 1)
            + 2 * std::mem::size_of::<Key>()
    }

    /// A cache without metrics (tests, benchmarks).
    pub fn new(budget: usize) -> Self {
        ByteCache {
            budget,
            max_entry: budget / 64,
            inner: RwLock::new(Inner {
                map: HashMap::new(),
                small: VecDeque::new(),
                main: VecDeque::new(),
                small_bytes: 0,
                bytes: 0,
            }),
            observer: None,
        }
    }

    /// A cache that reports its use to `observer` (as `fhirguard_cache_{entries,bytes,
    /// budget_bytes,evictions_total,uncacheable_total}{cache=name}` in the server).
    pub fn observed(name: CacheName, budget: usize, observer: Arc<dyn Observer>) -> Self {
        observer.cache_budget(name, budget);
        ByteCache {
            observer: Some((name, observer)),
            ..ByteCache::new(budget)
        }
    }

    pub fn budget(&self) -> usize {
        self.budget
    }

    /// (entries, bytes) as accounted.
    pub fn usage(&self) -> (usize, usize) {
        self.inner
            .read()
            .map(|i| (i.map.len(), i.bytes))
            .unwrap_or((0, 0))
    }

    /// Calls `f` with the entry under `key` if there is one that has not expired; a hit
    /// marks the entry as used, which is what keeps it through eviction.
    /// An observed cache counts the lookup as a hit or a miss by what this returns.
    pub fn get<R>(&self, key: &Key, now: Instant, f: impl FnOnce(&V) -> Option<R>) -> Option<R> {
        let found = self.find(key, now, f);
        if let Some((name, o)) = &self.observer {
            o.cache_lookup(*name, found.is_some());
        }
        found
    }

    fn find<R>(&self, key: &Key, now: Instant, f: impl FnOnce(&V) -> Option<R>) -> Option<R> {
        let inner = self.inner.read().ok()?;
        let slot = inner.map.get(key)?;
        if slot.expires <= now {
            return None;
        }
        let r = f(&slot.value)?;
        let _ = slot
            .freq
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |f| {
                (f < MAX_FREQ).then_some(f + 1)
            });
        Some(r)
    }

    /// Stores `value` (whose heap is `weight` bytes) until `expires`, evicting as needed.
    /// Returns false when the entry is too heavy to cache.
    pub fn insert(&self, key: Key, value: V, weight: usize, expires: Instant) -> bool {
        let weight = weight.saturating_add(Self::overhead());
        if weight > self.max_entry {
            if let Some((name, o)) = &self.observer {
                o.cache_uncacheable(*name);
            }
            return false;
        }
        let Ok(mut guard) = self.inner.write() else {
            return false;
        };
        let inner = &mut *guard;
        match inner.map.get_mut(&key) {
            // Replaced in place: it keeps its queue position and its use count.
            Some(slot) => {
                inner.bytes = inner.bytes - slot.weight + weight;
                if !slot.in_main {
                    inner.small_bytes = inner.small_bytes - slot.weight + weight;
                }
                slot.value = value;
                slot.weight = weight;
                slot.expires = expires;
            }
            None => {
                inner.map.insert(
                    key,
                    Slot {
                        value,
                        weight,
                        expires,
                        freq: AtomicU8::new(0),
                        in_main: false,
                    },
                );
                inner.small.push_back(key);
                inner.small_bytes += weight;
                inner.bytes += weight;
            }
        }
        let now = Instant::now();
        let mut evicted = 0u64;
        while inner.bytes > self.budget && self.evict_one(inner, now) {
            evicted += 1;
        }
        let usage = (inner.map.len(), inner.bytes);
        drop(guard);
        // Reported after the lock is released: an observer's work never holds up a reader.
        self.report(usage, evicted);
        true
    }

    /// Drops one entry; false when there is nothing left to drop.
    fn evict_one(&self, inner: &mut Inner<V>, now: Instant) -> bool {
        // Each pass either drops an entry, or spends one unit of an entry's use count (or its
        // probation), so the loop ends after at most MAX_FREQ + 1 rounds over the entries.
        loop {
            let from_small = !inner.small.is_empty()
                && (inner.small_bytes > self.budget / 10 || inner.main.is_empty());
            let queue = if from_small {
                &mut inner.small
            } else {
                &mut inner.main
            };
            let Some(key) = queue.pop_front() else {
                return false;
            };
            let Some(slot) = inner.map.get_mut(&key) else {
                continue;
            };
            let used = slot.freq.load(Ordering::Relaxed);
            if slot.expires > now && used > 0 {
                if from_small {
                    // Used while on probation: promoted.
                    slot.in_main = true;
                    slot.freq.store(0, Ordering::Relaxed);
                    inner.small_bytes -= slot.weight;
                } else {
                    slot.freq.store(used - 1, Ordering::Relaxed);
                }
                inner.main.push_back(key);
                continue;
            }
            let weight = slot.weight;
            inner.map.remove(&key);
            inner.bytes -= weight;
            if from_small {
                inner.small_bytes -= weight;
            }
            return true;
        }
    }

    fn report(&self, (entries, bytes): (usize, usize), evicted: u64) {
        if let Some((name, o)) = &self.observer {
            o.cache_usage(*name, entries, bytes, evicted);
        }
    }

    /// Drops every entry (a new config is in force; old verdicts must not be reused).
    pub fn clear(&self) {
        if let Ok(mut inner) = self.inner.write() {
            inner.map = HashMap::new();
            inner.small = VecDeque::new();
            inner.main = VecDeque::new();
            inner.small_bytes = 0;
            inner.bytes = 0;
        }
        self.report((0, 0), 0);
    }
}

/// The service's caches, one per kind, shared by every policy and connection. Keys are salted
/// per verifier or client, so entries never cross policies or config generations; a new
/// config clears them all anyway, which also returns their memory at once.
pub struct Caches {
    pub tokens: Arc<ByteCache<crate::verify::jwt::CachedToken>>,
    pub basic: Arc<ByteCache<()>>,
    pub lookups: Arc<ByteCache<crate::core::smart::Stored>>,
    pub introspection: Arc<ByteCache<crate::verify::introspection::CachedIntrospection>>,
}

impl Caches {
    pub fn new(budget: Budget, observer: &Arc<dyn Observer>) -> Self {
        Caches {
            tokens: Arc::new(ByteCache::observed(
                CacheName::Token,
                budget.tokens,
                observer.clone(),
            )),
            basic: Arc::new(ByteCache::observed(
                CacheName::Basic,
                budget.basic,
                observer.clone(),
            )),
            lookups: Arc::new(ByteCache::observed(
                CacheName::Lookup,
                budget.lookups,
                observer.clone(),
            )),
            introspection: Arc::new(ByteCache::observed(
                CacheName::Introspection,
                budget.introspection,
                observer.clone(),
            )),
        }
    }

    pub fn clear(&self) {
        self.tokens.clear();
        self.basic.clear();
        self.lookups.clear();
        self.introspection.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn key(i: u64) -> Key {
        let mut k = [0u8; 32];
        k[..8].copy_from_slice(&i.to_le_bytes());
        k
    }

    fn later() -> Instant {
        Instant::now() + Duration::from_secs(600)
    }

    #[test]
    fn stays_within_its_budget_in_bytes() {
        let c: ByteCache<Vec<u8>> = ByteCache::new(1 << 20);
        for i in 0..10_000u64 {
            let v = vec![0u8; 1000];
            assert!(c.insert(key(i), v, 1000, later()));
            assert!(c.usage().1 <= 1 << 20);
        }
        let (entries, bytes) = c.usage();
        assert!(entries > 500, "{entries} entries in {bytes} bytes");
    }

    #[test]
    fn entries_in_use_survive_a_flood_of_one_off_entries() {
        let c: ByteCache<u64> = ByteCache::new(1 << 20);
        let per = ByteCache::<u64>::overhead() + 1000;
        let capacity = (1 << 20) / per;
        let hot: Vec<u64> = (0..capacity as u64 / 4).collect();
        for &h in &hot {
            c.insert(key(h), h, 1000, later());
        }
        // A flood ten times the cache's size; the hot entries are used now and then.
        for i in 0..(capacity as u64 * 10) {
            c.insert(key(1_000_000 + i), i, 1000, later());
            if i % 50 == 0 {
                for &h in &hot {
                    c.get(&key(h), Instant::now(), |v| Some(*v));
                }
            }
        }
        let kept = hot
            .iter()
            .filter(|&&h| c.get(&key(h), Instant::now(), |v| Some(*v)) == Some(h))
            .count();
        assert_eq!(kept, hot.len(), "every hot entry is still cached");
    }

    #[test]
    fn expired_entries_are_not_returned_and_go_first() {
        let c: ByteCache<u64> = ByteCache::new(1 << 16);
        let past = Instant::now();
        c.insert(key(1), 1, 10, past);
        assert_eq!(c.get(&key(1), Instant::now(), |v| Some(*v)), None);
        c.insert(key(2), 2, 10, later());
        assert_eq!(c.get(&key(2), Instant::now(), |v| Some(*v)), Some(2));
    }

    #[test]
    fn too_heavy_entries_are_not_cached_and_replacement_keeps_the_count_right() {
        let c: ByteCache<u64> = ByteCache::new(64 * 1024);
        assert!(!c.insert(key(1), 1, 2000, later()), "above budget/64");
        assert_eq!(c.usage(), (0, 0));
        assert!(c.insert(key(2), 2, 100, later()));
        let (_, b1) = c.usage();
        assert!(c.insert(key(2), 3, 200, later()));
        let (n, b2) = c.usage();
        assert_eq!((n, b2 - b1), (1, 100));
        assert_eq!(c.get(&key(2), Instant::now(), |v| Some(*v)), Some(3));
        c.clear();
        assert_eq!(c.usage(), (0, 0));
        assert_eq!(c.get(&key(2), Instant::now(), |v| Some(*v)), None);
    }

    use proptest::prelude::*;

    #[derive(Debug, Clone)]
    enum Op {
        Insert(u8, u16),
        Get(u8),
        Clear,
    }

    proptest! {
        /// Any sequence of inserts, reads and clears: the accounted bytes are exactly the
        /// entries' weights, never above the budget, and a read returns the value last
        /// stored under its key or nothing.
        #[test]
        fn accounting_holds_for_any_sequence(ops in proptest::collection::vec(
            prop_oneof![
                10 => (any::<u8>(), 0u16..1200).prop_map(|(k, w)| Op::Insert(k, w)),
                10 => any::<u8>().prop_map(Op::Get),
                1 => Just(Op::Clear),
            ],
            0..600,
        )) {
            // Room for about a hundred entries, keys for 256, some too heavy to cache.
            let budget = 48 * 1024;
            let c: ByteCache<(u8, u16)> = ByteCache::new(budget);
            let mut last = std::collections::HashMap::new();
            for op in ops {
                match op {
                    Op::Insert(k, w) => {
                        if c.insert(key(u64::from(k)), (k, w), usize::from(w), later()) {
                            last.insert(k, w);
                        }
                    }
                    Op::Get(k) => {
                        if let Some((gk, gw)) = c.get(&key(u64::from(k)), Instant::now(), |v| Some(*v)) {
                            prop_assert_eq!(gk, k);
                            prop_assert_eq!(Some(&gw), last.get(&k));
                        }
                    }
                    Op::Clear => {
                        c.clear();
                        last.clear();
                    }
                }
                let inner = c.inner.read().unwrap();
                let weights: usize = inner.map.values().map(|s| s.weight).sum();
                prop_assert_eq!(weights, inner.bytes);
                prop_assert!(inner.bytes <= budget);
                prop_assert_eq!(inner.small.len() + inner.main.len(), inner.map.len());
                let small: usize = inner.map.values().filter(|s| !s.in_main).map(|s| s.weight).sum();
                prop_assert_eq!(small, inner.small_bytes);
            }
        }
    }

    #[test]
    fn the_budget_split_adds_up() {
        let b = Budget::from_mib(64);
        assert!(b.total() <= 64 << 20);
        assert!(b.tokens > b.lookups && b.lookups > b.basic);
    }
}
