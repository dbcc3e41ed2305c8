//! The engine's memory of past actions: velocity series, distinct-member sets, and what each user has made known.
//!
//! # Bounds
//! History lives in three tables: `series` (one key per user+action, IP+action and device+action: the times of
//! those actions), `distinct` (one key per IP, device and user: the users or devices seen with it and when) and
//! `known` (one key per user: the devices, IPs and countries the user has made known, and the last known
//! location, and `rba_score()`'s counts of the user's feature values), plus, when a rule calls `rba_score()`,
//! `rba` (one key per feature value: how many verified actions of all users had it). Each table holds at most
//! `[signals] max_keys` keys and `[signals] max_bytes` bytes, each series
//! or set at most `[signals] max_per_key` entries, each user at most [`MAX_KNOWN`] devices, IPs and countries.
//!
//! Only the series and sets some rule calls are recorded. They drop what is older than the ruleset's longest
//! window (its *horizon*), and a key idle that long is dropped whole as new keys arrive (each new key sweeps at
//! most [`SWEEP_PER_INSERT`] idle ones, so no decision pays for a backlog); known entries are dropped after
//! `[signals] known_for` without being seen. When a table is full, the key created longest ago goes first. A
//! table over `max_keys` (after a reload lowered it) evicts at most 16 keys per new key until it is back under.
//!
//! Keys alone do not bound memory: a dense key (a full series or set) holds up to 16 KB, a sparse one about
//! 180 bytes. So each table also keeps an account of its bytes (each key's slots, counted as if the table had
//! just doubled, plus its buffers' capacity and the allocator's header) and evicts the keys created longest
//! ago while it is over `[signals] max_bytes` (default `config::DEFAULT_HISTORY_MAX_BYTES` per table). Buffers grow by
//! doubling but never past their cap, so a full series holds exactly `max_per_key` times.
//!
//! Keys are 64-bit xxh3 hashes of the user id, IP address (one key per address, however it is spelt: see
//! [`History::ip_key`]) or device id, seeded per engine from the operating system's random source, so callers
//! cannot aim collisions at a key they do not control.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use crate::config::HistoryLimits as Limits;
use crate::durable::format::{Damaged, Put, Reader};
use crate::durable::Journal;
use crate::hash::{BucketKeys, EngineKeys, PreHashedMap, Seeded};
use crate::time::{DurationMs, EpochMs};

/// At most this many devices, IPs and countries are remembered as known per user (each; the least recently
/// seen goes first).
pub const MAX_KNOWN: usize = 256;

/// How many idle keys one insertion may sweep, so no single decision pays for a large backlog.
const SWEEP_PER_INSERT: usize = 32;

/// How many keys over `max_keys` one insertion may evict (the same bound as the action store's).
const EVICT_PER_INSERT: usize = crate::config::EVICT_PER_INSERT;
/// How many keys one write may evict to bring its table back under `[signals] max_bytes`. One write grows a
/// table by at most one key's largest step (a set growing from 500 to 1,000 members, 8 KB), and every key
/// frees at least [`Table::KEY_OVERHEAD`] (over 100 bytes), so this always suffices in steady state; after
/// `max_bytes` is lowered, the excess is evicted this many keys per write.
const SHED_PER_WRITE: usize = 128;

/// What the allocator adds to each heap allocation (glibc's chunk header), counted so that the budget holds
/// for resident memory, not only for the bytes asked for.
const ALLOC_OVERHEAD: usize = 16;

/// Bytes a buffer of `capacity` elements of `T` holds on the heap, with the allocator's overhead.
fn heap<T>(capacity: usize) -> usize {
    if capacity == 0 {
        0
    } else {
        capacity.saturating_mul(std::mem::size_of::<T>()) + ALLOC_OVERHEAD
    }
}

/// Room for one more element, growing by doubling but never past `cap` (so a full series or set holds
/// exactly `cap` slots, not the next power of two).
fn make_room<T>(v: &mut Vec<T>, cap: usize) {
    if v.len() == v.capacity() && v.len() < cap {
        v.reserve_exact(v.len().max(4).min(cap - v.len()));
    }
}

type Map<V> = PreHashedMap<u64, V>;

/// What a table's values tell it about themselves.
trait Entry: Default {
    /// The last time the key was written.
    fn last_ms(&self) -> i64;
    /// The bytes the value holds on the heap (see [`heap`]).
    fn heap_bytes(&self) -> usize;
}

/// A bounded map with creation-order eviction and idle expiry, and an account of the bytes it holds.
///
/// INVARIANT: every key in `map` appears exactly once in `order` (keys are only removed by popping `order`).
/// INVARIANT: `bytes` is the sum of [`Table::size`] over the values in `map` (every change to a value adds its
/// change in size, under the value's shard lock; every removal subtracts the removed value's size).
struct Table<V> {
    map: Map<V>,
    order: Mutex<VecDeque<(u64, i64)>>,
    bytes: AtomicUsize,
}

impl<V: Entry> Table<V> {
    /// What a key costs besides its value's heap: its slot in the map and in the creation order, each counted
    /// twice over (a hash table or queue that has just doubled is half empty) and the map's slots at its
    /// 7/8 load factor. Tables keep their capacity after eviction, so this is what bounds them too.
    const KEY_OVERHEAD: usize =
        2 * (std::mem::size_of::<(u64, V)>() + 1) * 8 / 7 + 2 * std::mem::size_of::<(u64, i64)>();

    fn new(keys: BucketKeys) -> Self {
        Table {
            map: Map::with_hasher(keys),
            order: Mutex::new(VecDeque::new()),
            bytes: AtomicUsize::new(0),
        }
    }

    /// The bytes one key with `value` accounts for.
    fn size(value: &V) -> usize {
        Self::KEY_OVERHEAD + value.heap_bytes()
    }

    /// Updates the value under `key` with `f`, creating it first if needed; then evicts what is over `max_keys`
    /// or `max_bytes`, or idle longer than `horizon_ms`.
    fn upsert(&self, key: u64, now_ms: i64, horizon_ms: i64, cap: Caps, f: impl FnOnce(&mut V)) {
        let created = match self.map.entry(key) {
            dashmap::Entry::Occupied(mut e) => {
                let v = e.get_mut();
                let before = Self::size(v);
                f(v);
                let after = Self::size(v);
                if after >= before {
                    self.bytes.fetch_add(after - before, Ordering::Relaxed);
                } else {
                    self.bytes.fetch_sub(before - after, Ordering::Relaxed);
                }
                false
            }
            dashmap::Entry::Vacant(e) => {
                let mut v = V::default();
                f(&mut v);
                self.bytes.fetch_add(Self::size(&v), Ordering::Relaxed);
                e.insert(v);
                true
            }
        };
        if created {
            self.admit(key, now_ms, horizon_ms, cap);
        } else if self.bytes() > cap.max_bytes {
            if let Ok(mut order) = self.order.lock() {
                self.shed(&mut order, cap.max_bytes);
            }
        }
    }

    /// Removes `key` (already popped from `order`) if `keep` says not to keep it, keeping `bytes` true.
    fn remove_unless(&self, key: u64, keep: impl FnOnce(&V) -> bool) -> bool {
        match self.map.remove_if(&key, |_, v| !keep(v)) {
            Some((_, v)) => {
                self.bytes.fetch_sub(Self::size(&v), Ordering::Relaxed);
                true
            }
            None => false,
        }
    }

    /// Evicts the keys created longest ago until the table is within `max_bytes` (at most
    /// [`SHED_PER_WRITE`] of them).
    fn shed(&self, order: &mut VecDeque<(u64, i64)>, max_bytes: usize) {
        for _ in 0..SHED_PER_WRITE {
            if self.bytes() <= max_bytes {
                break;
            }
            let Some((k, _)) = order.pop_front() else {
                break;
            };
            self.remove_unless(k, |_| false);
        }
    }

    fn admit(&self, key: u64, now_ms: i64, horizon_ms: i64, cap: Caps) {
        let Ok(mut order) = self.order.lock() else {
            return;
        };
        order.push_back((key, now_ms));
        // At most EVICT_PER_INSERT keys over `max_keys` go per new key, so a table over its bound (after
        // `max_keys` was lowered) shrinks over the next insertions instead of in one caller.
        for _ in 0..EVICT_PER_INSERT {
            if order.len() <= cap.max_keys.max(1) {
                break;
            }
            if let Some((k, _)) = order.pop_front() {
                self.remove_unless(k, |_| false);
            }
        }
        self.shed(&mut order, cap.max_bytes);
        for _ in 0..SWEEP_PER_INSERT {
            let Some(&(k, t)) = order.front() else { break };
            if t.saturating_add(horizon_ms) > now_ms {
                break;
            }
            order.pop_front();
            let busy = |v: &V| v.last_ms().saturating_add(horizon_ms) > now_ms;
            if !self.remove_unless(k, busy) {
                // Written since it was queued: check it again one horizon after its last write.
                if let Some(last) = self.map.get(&k).map(|v| v.last_ms()) {
                    order.push_back((k, last));
                }
            }
        }
    }

    fn len(&self) -> usize {
        self.map.len()
    }

    fn bytes(&self) -> usize {
        self.bytes.load(Ordering::Relaxed)
    }
}

/// The key and byte bounds one write is held to.
#[derive(Debug, Clone, Copy)]
struct Caps {
    max_keys: usize,
    max_bytes: usize,
}

/// The times of one subject's actions with one action code, oldest first.
#[derive(Default)]
struct Series {
    times: VecDeque<i64>,
    last_ms: i64,
}

impl Entry for Series {
    fn last_ms(&self) -> i64 {
        self.last_ms
    }

    fn heap_bytes(&self) -> usize {
        heap::<i64>(self.times.capacity())
    }
}

impl Series {
    fn push(&mut self, at: i64, horizon_ms: i64, cap: usize) {
        while self
            .times
            .front()
            .is_some_and(|&t| t.saturating_add(horizon_ms) <= at)
        {
            self.times.pop_front();
        }
        if self.times.len() >= cap.max(1) {
            self.times.pop_front();
        }
        let n = self.times.len();
        if n == self.times.capacity() && n < cap.max(1) {
            self.times.reserve_exact(n.max(4).min(cap.max(1) - n));
        }
        // Replays may be slightly out of order: keep the series sorted.
        let i = self.times.partition_point(|&t| t <= at);
        self.times.insert(i, at);
        self.last_ms = self.last_ms.max(at);
    }

    /// Entries `t` with `now - window < t <= now`.
    fn count(&self, now_ms: i64, window_ms: i64) -> i64 {
        let from = self
            .times
            .partition_point(|&t| t <= now_ms.saturating_sub(window_ms));
        let to = self.times.partition_point(|&t| t <= now_ms);
        to.saturating_sub(from) as i64
    }
}

/// Members (users or devices) seen with one subject, each with when it was last seen.
#[derive(Default)]
struct Distinct {
    members: Vec<(u64, i64)>,
    last_ms: i64,
}

impl Entry for Distinct {
    fn last_ms(&self) -> i64 {
        self.last_ms
    }

    fn heap_bytes(&self) -> usize {
        heap::<(u64, i64)>(self.members.capacity())
    }
}

impl Distinct {
    fn see(&mut self, member: u64, at: i64, horizon_ms: i64, cap: usize) {
        self.last_ms = self.last_ms.max(at);
        if let Some(m) = self.members.iter_mut().find(|m| m.0 == member) {
            m.1 = m.1.max(at);
            return;
        }
        self.members.retain(|m| m.1.saturating_add(horizon_ms) > at);
        if self.members.len() >= cap.max(1) {
            remove_oldest(&mut self.members);
        }
        make_room(&mut self.members, cap.max(1));
        self.members.push((member, at));
    }

    fn count(&self, now_ms: i64, window_ms: i64) -> i64 {
        let from = now_ms.saturating_sub(window_ms);
        self.members
            .iter()
            .filter(|m| m.1 > from && m.1 <= now_ms)
            .count() as i64
    }
}

/// What one user has made known.
#[derive(Default)]
struct Known {
    devices: Vec<(u64, i64)>,
    ips: Vec<(u64, i64)>,
    countries: Vec<(u64, i64)>,
    location: Option<Located>,
    last_ms: i64,
    /// `rba_score()`: how many verified actions the user has, and how often each feature value was among them.
    rba_actions: u32,
    rba: RbaValues,
}

/// How many verified actions of one user had one feature value (an IP, an ASN, a browser, …), and when the last
/// was.
#[derive(Debug, Clone, Copy)]
struct RbaCount {
    value: u64,
    count: u32,
    last_ms: i64,
}

impl Entry for Known {
    fn last_ms(&self) -> i64 {
        self.last_ms
    }

    fn heap_bytes(&self) -> usize {
        [&self.devices, &self.ips, &self.countries]
            .iter()
            .map(|l| heap::<(u64, i64)>(l.capacity()))
            .sum::<usize>()
            + self.rba.heap_bytes()
    }
}

/// One user's `rba_score()` counts: a list of at most [`MAX_RBA_VALUES`] values, and an open-addressing index of
/// it (linear probing, each slot the position in the list plus one, 0 for empty; at most half the slots taken) so
/// that a value is found without walking the list: a user's list is mostly one-off addresses no level asks for.
#[derive(Default)]
struct RbaValues {
    list: Vec<RbaCount>,
    slots: Vec<u8>,
}

// A slot holds a position in the list plus one.
const _: () = assert!(MAX_RBA_VALUES < u8::MAX as usize);

impl RbaValues {
    fn heap_bytes(&self) -> usize {
        heap::<RbaCount>(self.list.capacity()) + heap::<u8>(self.slots.capacity())
    }

    /// The position of `value` in the list. Values are seeded hashes: their low bits spread them.
    fn find(&self, value: u64) -> Option<usize> {
        let mask = self.slots.len().checked_sub(1)?;
        let mut i = value as usize;
        // Ends: at most half the slots are taken.
        loop {
            let slot = usize::from(*self.slots.get(i & mask)?);
            let at = slot.checked_sub(1)?;
            if self.list.get(at).is_some_and(|c| c.value == value) {
                return Some(at);
            }
            i = i.wrapping_add(1);
        }
    }

    /// Indexes the list's entry at `at` (its value not indexed yet, and a free slot left).
    fn index(&mut self, at: usize) {
        let (Some(c), Some(mask)) = (self.list.get(at), self.slots.len().checked_sub(1)) else {
            return;
        };
        let mut i = c.value as usize;
        while self.slots.get(i & mask).is_some_and(|&s| s != 0) {
            i = i.wrapping_add(1);
        }
        if let Some(s) = self.slots.get_mut(i & mask) {
            *s = u8::try_from(at + 1).unwrap_or(0);
        }
    }

    /// Indexes the whole list again, in at least twice as many slots as it has entries.
    fn reindex(&mut self) {
        let size = (self.list.len() * 2).next_power_of_two().max(8);
        self.slots.clear();
        self.slots.resize(size, 0);
        for at in 0..self.list.len() {
            self.index(at);
        }
    }

    /// Counts one more action with `value` (at most [`MAX_RBA_VALUES`] values: the least recently seen goes
    /// first; values not seen within `known_for_ms` of `at` are dropped when a new one comes).
    fn count(&mut self, value: u64, at: i64, known_for_ms: i64) {
        if let Some(c) = self.find(value).and_then(|i| self.list.get_mut(i)) {
            c.count = c.count.saturating_add(1);
            c.last_ms = c.last_ms.max(at);
            return;
        }
        let before = self.list.len();
        self.list
            .retain(|c| c.last_ms.saturating_add(known_for_ms) > at);
        if self.list.len() >= MAX_RBA_VALUES {
            if let Some(i) = self
                .list
                .iter()
                .enumerate()
                .min_by_key(|(_, c)| c.last_ms)
                .map(|(i, _)| i)
            {
                self.list.swap_remove(i);
            }
        }
        make_room(&mut self.list, MAX_RBA_VALUES);
        self.list.push(RbaCount {
            value,
            count: 1,
            last_ms: at,
        });
        if self.list.len() != before + 1 || self.list.len() * 2 > self.slots.len() {
            // Entries went or moved, or the index is half full.
            self.reindex();
        } else {
            self.index(self.list.len() - 1);
        }
    }
}

/// How many verified actions, over all users, had one feature value (the population side of `rba_score()`),
/// and when the last was. Both are atomics, so that a count is bumped in place under the map's epoch guard.
///
/// A key leaves the [`Population`] in two steps: its count is swapped to [`Freq::DEAD`], then the dead entry is
/// removed. A writer that finds a dead entry removes it itself and inserts a fresh one, so no increment lands on
/// an entry on its way out (see [`Freq::bump`] and [`Freq::kill_if_idle`]).
struct Freq {
    count: std::sync::atomic::AtomicU32,
    last_ms: AtomicI64,
}

impl Freq {
    /// The count of an entry being removed (live counts saturate one below).
    const DEAD: u32 = u32::MAX;

    fn new(at_ms: i64) -> Self {
        Freq {
            count: std::sync::atomic::AtomicU32::new(1),
            last_ms: AtomicI64::new(at_ms),
        }
    }

    fn is_dead(&self) -> bool {
        self.count.load(Ordering::SeqCst) == Self::DEAD
    }

    /// Counts one more action at `at_ms`; false (and nothing counted) when the entry is dead. The time is
    /// written before the count, so that [`Freq::kill_if_idle`], which reads them in the other order, never
    /// kills an entry whose count it did not see idle.
    fn bump(&self, at_ms: i64) -> bool {
        self.last_ms.fetch_max(at_ms, Ordering::SeqCst);
        let mut c = self.count.load(Ordering::SeqCst);
        loop {
            if c == Self::DEAD {
                return false;
            }
            let next = c.saturating_add(1).min(Self::DEAD - 1);
            match self
                .count
                .compare_exchange_weak(c, next, Ordering::SeqCst, Ordering::SeqCst)
            {
                Ok(_) => return true,
                Err(now) => c = now,
            }
        }
    }

    /// Marks the entry dead if its last action is at least `horizon_ms` before `now_ms`; whether it did.
    fn kill_if_idle(&self, now_ms: i64, horizon_ms: i64) -> bool {
        let mut c = self.count.load(Ordering::SeqCst);
        loop {
            let idle = self
                .last_ms
                .load(Ordering::SeqCst)
                .saturating_add(horizon_ms)
                <= now_ms;
            if c == Self::DEAD || !idle {
                return false;
            }
            match self
                .count
                .compare_exchange(c, Self::DEAD, Ordering::SeqCst, Ordering::SeqCst)
            {
                Ok(_) => return true,
                Err(now) => c = now,
            }
        }
    }

    /// The count, or 0 when the entry is dead or its last action is `known_for_ms` or more before `now_ms`.
    fn fresh_count(&self, now_ms: i64, known_for_ms: i64) -> u32 {
        let c = self.count.load(Ordering::Relaxed);
        let fresh = self
            .last_ms
            .load(Ordering::Relaxed)
            .saturating_add(known_for_ms)
            > now_ms;
        if c == Self::DEAD || !fresh {
            0
        } else {
            c
        }
    }
}

/// The population counts of `rba_score()`: one key per feature value, in a lock-free map (papaya), so that a
/// score reads all its values under one epoch guard instead of taking a shard lock per value.
///
/// Bounded like a [`Table`]: at most `[signals] max_keys` keys and `max_bytes` bytes (each key accounts for
/// [`Population::KEY_BYTES`]), the key created longest ago goes first, and each new key sweeps at most
/// [`SWEEP_PER_INSERT`] keys idle longer than `known_for`.
///
/// INVARIANT: every live key in `map` appears exactly once in `order`. Only [`Population::admit`] pops
/// `order`, and it kills (marks dead) each key it pops before removing it; a dead key is removed by whoever
/// meets it first, and only while dead, so a fresh entry inserted under the same key is never removed in its
/// place.
struct Population {
    map: papaya::HashMap<u64, Freq, BucketKeys>,
    order: Mutex<VecDeque<(u64, i64)>>,
    /// How many verified actions of all users were counted.
    actions: std::sync::atomic::AtomicU64,
}

impl Population {
    /// What a key costs: papaya's boxed entry with the allocator's header, and its slot (a pointer and a
    /// metadata byte) counted four times over (a table that has just doubled, holding removed keys' tombstones
    /// until its next copy), plus its place in the creation order.
    const KEY_BYTES: usize = std::mem::size_of::<(u64, Freq)>()
        + ALLOC_OVERHEAD
        + 4 * (std::mem::size_of::<usize>() + 1)
        + 2 * std::mem::size_of::<(u64, i64)>();

    fn new(keys: BucketKeys) -> Self {
        Population {
            map: papaya::HashMap::builder()
                .hasher(keys)
                .resize_mode(papaya::ResizeMode::Blocking)
                .build(),
            order: Mutex::new(VecDeque::new()),
            actions: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// Counts one more verified action with `value` at `at_ms`, creating its key if needed; a new key then
    /// evicts what is over the caps or idle longer than `horizon_ms`. A writer racing the removal of the same
    /// key retries a bounded number of times, then drops this one increment.
    fn count(&self, value: u64, at_ms: i64, horizon_ms: i64, cap: Caps) {
        let g = self.map.pin();
        for _ in 0..4 {
            match g.get(&value) {
                Some(f) if f.bump(at_ms) => return,
                Some(_) => {
                    let _ = g.remove_if(&value, |_, f| f.is_dead());
                }
                None => {
                    if g.try_insert(value, Freq::new(at_ms)).is_ok() {
                        drop(g);
                        self.admit(value, at_ms, horizon_ms, cap);
                        return;
                    }
                }
            }
        }
    }

    /// Queues a new key, then evicts the keys created longest ago while over the caps (at most
    /// [`SHED_PER_WRITE`]) and sweeps idle ones from the front (at most [`SWEEP_PER_INSERT`]).
    fn admit(&self, key: u64, now_ms: i64, horizon_ms: i64, cap: Caps) {
        let Ok(mut order) = self.order.lock() else {
            return;
        };
        order.push_back((key, now_ms));
        let g = self.map.pin();
        let remove = |k: u64| {
            let _ = g.remove_if(&k, |_, f| f.is_dead());
        };
        let limit = cap.max_keys.max(1).min(cap.max_bytes / Self::KEY_BYTES);
        for _ in 0..SHED_PER_WRITE {
            if order.len() <= limit {
                break;
            }
            let Some((k, _)) = order.pop_front() else {
                break;
            };
            if let Some(f) = g.get(&k) {
                f.count.store(Freq::DEAD, Ordering::SeqCst);
            }
            remove(k);
        }
        for _ in 0..SWEEP_PER_INSERT {
            let Some(&(k, t)) = order.front() else { break };
            if t.saturating_add(horizon_ms) > now_ms {
                break;
            }
            order.pop_front();
            match g.get(&k) {
                Some(f) if f.kill_if_idle(now_ms, horizon_ms) => remove(k),
                // Written since it was queued: check it again one horizon after its last write.
                Some(f) => order.push_back((k, f.last_ms.load(Ordering::SeqCst))),
                None => {}
            }
        }
    }

    /// The fresh counts of the `values` whose bit is set in `present` (the others 0), under one guard.
    fn counts(
        &self,
        values: &[u64],
        present: u16,
        now_ms: i64,
        known_for_ms: i64,
        out: &mut [u64],
    ) {
        let g = self.map.pin();
        for (l, (slot, v)) in out.iter_mut().zip(values).enumerate() {
            if present & (1 << l) != 0 {
                *slot = g
                    .get(v)
                    .map_or(0, |f| u64::from(f.fresh_count(now_ms, known_for_ms)));
            }
        }
    }

    fn len(&self) -> usize {
        self.map.len()
    }

    fn bytes(&self) -> usize {
        self.len().saturating_mul(Self::KEY_BYTES)
    }
}

/// At most this many feature values are counted per user for `rba_score()` (the least recently seen goes
/// first); values not seen within `[signals] known_for` no longer count.
pub const MAX_RBA_VALUES: usize = 128;

/// What `rba_score()` reads for one action: per feature value, the user's count and the population's.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub(crate) struct RbaCounts {
    /// The user's verified actions.
    pub user_actions: u64,
    /// All users' verified actions.
    pub all_actions: u64,
    /// Per value asked for: how many of the user's verified actions had it.
    pub user: [u64; super::rba::LEVELS],
    /// Per value asked for: how many of all users' verified actions had it.
    pub all: [u64; super::rba::LEVELS],
}

/// A point on the globe and when the user was there, with the IP (and its country) that placed them, so that
/// the next action from the same IP can refresh it without another database lookup.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Located {
    pub lat: f64,
    pub lon: f64,
    pub at_ms: i64,
    pub ip: u64,
    pub country: Option<CountryCode>,
}

/// An ISO 3166-1 alpha-2 country code, stored inline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct CountryCode([u8; 2]);

impl CountryCode {
    /// The code, if `code` is two ASCII letters.
    pub fn new(code: &str) -> Option<Self> {
        match code.as_bytes() {
            &[a, b] if a.is_ascii_alphabetic() && b.is_ascii_alphabetic() => {
                Some(CountryCode([a, b]))
            }
            _ => None,
        }
    }

    pub fn as_str(&self) -> &str {
        std::str::from_utf8(&self.0).unwrap_or("")
    }
}

fn remember(list: &mut Vec<(u64, i64)>, item: u64, at: i64, known_for_ms: i64) {
    if let Some(m) = list.iter_mut().find(|m| m.0 == item) {
        m.1 = m.1.max(at);
        return;
    }
    list.retain(|m| m.1.saturating_add(known_for_ms) > at);
    if list.len() >= MAX_KNOWN {
        remove_oldest(list);
    }
    make_room(list, MAX_KNOWN);
    list.push((item, at));
}

fn remove_oldest(list: &mut Vec<(u64, i64)>) {
    if let Some(i) = list
        .iter()
        .enumerate()
        .min_by_key(|(_, m)| m.1)
        .map(|(i, _)| i)
    {
        list.swap_remove(i);
    }
}

/// Which velocity series a count reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SeriesKind {
    User = 1,
    Ip = 2,
    Device = 3,
}

/// Which distinct-member set a count reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SetKind {
    UsersOnIp = 4,
    UsersOnDevice = 5,
    DevicesOfUser = 6,
}

/// The history a windowed signal counts, and so the history that is kept when some rule calls it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kept {
    /// A velocity series: the times of earlier actions with this action code.
    Series(SeriesKind),
    /// A distinct-member set: the users or devices seen with a subject.
    Set(SetKind),
}

impl Kept {
    /// Its tag in history (and in the per-decision memo).
    pub fn tag(self) -> u8 {
        match self {
            Kept::Series(k) => k as u8,
            Kept::Set(k) => k as u8,
        }
    }

    /// Its bit in a set of kept series and sets (`SignalSet::windowed`, [`History::record`]).
    pub fn bit(self) -> u8 {
        1 << self.tag()
    }
}

/// Which known list a lookup reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum KnownKind {
    Device,
    Ip,
    Country,
}

/// What one verified action of a user makes known ([`History::make_known`]).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Verified<'a> {
    pub device: Option<u64>,
    pub ip: Option<u64>,
    pub country: Option<u64>,
    pub location: Option<Located>,
    /// Its `rba_score()` feature values (empty when no rule calls it).
    pub rba: &'a [u64],
    pub at_ms: i64,
}

/// The hashed keys of one action.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Keys {
    pub user: u64,
    pub action: u64,
    pub ip: Option<u64>,
    pub device: Option<u64>,
}

/// Everything the engine remembers for signals. Shared by all rulesets an engine runs.
pub(crate) struct History {
    seed: Seeded,
    series: Table<Series>,
    distinct: Table<Distinct>,
    known: Table<Known>,
    /// Population counts of feature values for `rba_score()`, and how many verified actions they count.
    rba: Population,
    max_keys: AtomicUsize,
    max_bytes: AtomicUsize,
    max_per_key: AtomicUsize,
    known_for_ms: AtomicI64,
    /// Durable state (`[store] path`): where every change is journaled, once set.
    journal: std::sync::OnceLock<Arc<Journal>>,
}

impl History {
    /// An empty history: keys hashed with the engine's seed, tables bucketed with its bucket keys.
    pub fn new(limits: Limits, keys: EngineKeys) -> Self {
        History {
            seed: keys.history,
            series: Table::new(keys.buckets),
            distinct: Table::new(keys.buckets),
            known: Table::new(keys.buckets),
            rba: Population::new(keys.buckets),
            max_keys: AtomicUsize::new(limits.max_keys),
            max_bytes: AtomicUsize::new(limits.max_bytes),
            max_per_key: AtomicUsize::new(limits.max_per_key),
            known_for_ms: AtomicI64::new(limits.known_for_ms),
            journal: std::sync::OnceLock::new(),
        }
    }

    /// Journals every change from now on (durable state; set once, when the engine is built).
    pub fn set_journal(&self, journal: Arc<Journal>) {
        let _ = self.journal.set(journal);
    }

    pub fn set_limits(&self, limits: Limits) {
        self.max_keys.store(limits.max_keys, Ordering::Relaxed);
        self.max_bytes.store(limits.max_bytes, Ordering::Relaxed);
        self.max_per_key
            .store(limits.max_per_key, Ordering::Relaxed);
        self.known_for_ms
            .store(limits.known_for_ms, Ordering::Relaxed);
    }

    fn caps(&self) -> Caps {
        Caps {
            max_keys: self.max_keys.load(Ordering::Relaxed),
            max_bytes: self.max_bytes.load(Ordering::Relaxed),
        }
    }

    fn max_per_key(&self) -> usize {
        self.max_per_key.load(Ordering::Relaxed)
    }

    /// How many keys the tables hold together.
    pub fn len(&self) -> usize {
        self.series.len() + self.distinct.len() + self.known.len() + self.rba.len()
    }

    /// The bytes the tables account for together (each at most `[signals] max_bytes`).
    pub fn bytes(&self) -> usize {
        self.series.bytes() + self.distinct.bytes() + self.known.bytes() + self.rba.bytes()
    }

    /// The seeded hash of one attribute value (`tag` keeps user ids, IPs and devices apart).
    pub fn hash(&self, tag: u8, value: &str) -> u64 {
        self.hash_bytes(tag, value.as_bytes())
    }

    fn hash_bytes(&self, tag: u8, value: &[u8]) -> u64 {
        self.seed.tagged(tag, value)
    }

    /// The seeded key of an IP address, the same for every spelling of one address.
    ///
    /// An IPv4 address that passed request validation has exactly one spelling (four decimal parts, no leading
    /// zeros: `std`'s parser refuses any other), so its text is its key and costs no parse. Text with a `:` is
    /// IPv6: it is parsed, an IPv4-mapped address (`::ffff:1.2.3.4`, `::ffff:102:304`, …) is keyed as its dotted
    /// IPv4 text, and any other as its 16 bytes (which no dotted text can equal: 15 bytes at most).
    pub fn ip_key(&self, text: &str) -> u64 {
        if !text.contains(':') {
            return self.hash(b'i', text);
        }
        match text.parse::<std::net::Ipv6Addr>() {
            Ok(a) => match a.to_ipv4_mapped() {
                Some(v4) => {
                    use std::io::Write;
                    let mut buf = [0u8; 15];
                    let mut w = &mut buf[..];
                    let _ = write!(w, "{v4}");
                    let n = 15 - w.len();
                    self.hash_bytes(b'i', buf.get(..n).unwrap_or_default())
                }
                None => self.hash_bytes(b'i', &a.octets()),
            },
            // Not reached for a validated request; any fixed key would do.
            Err(_) => self.hash(b'i', text),
        }
    }

    /// The keys of an action.
    pub fn keys(
        &self,
        user_id: &str,
        action: &str,
        ip: Option<&str>,
        device: Option<&str>,
    ) -> Keys {
        Keys {
            user: self.hash(b'u', user_id),
            action: self.hash(b'a', action),
            ip: ip.map(|v| self.ip_key(v)),
            device: device.map(|v| self.hash(b'd', v)),
        }
    }

    /// A hash `tag` keeps apart from others, of a value already hashed (an IP key, a device key, a number).
    pub fn mix(&self, tag: u8, value: u64) -> u64 {
        self.combine(tag, value, 0)
    }

    /// A one-shot seeded hash of `value` for `tag` (cheaper than [`History::hash`]'s streaming state on the short
    /// strings `rba_score()` hashes; the two never need to agree).
    pub fn quick_hash(&self, tag: u8, value: &str) -> u64 {
        self.seed.quick(tag, value.as_bytes())
    }

    /// Tells this history's hash seed from others (for per-thread caches of values hashed with it).
    pub fn seed_id(&self) -> u64 {
        self.seed.id()
    }

    /// [`History::quick_hash`] of two strings together.
    pub fn quick_hash2(&self, tag: u8, a: &str, b: &str) -> u64 {
        let first = self.quick_hash(tag, a);
        xxhash_rust::xxh3::xxh3_64_with_seed(b.as_bytes(), first)
    }

    fn combine(&self, kind: u8, subject: u64, other: u64) -> u64 {
        let mut b = [0u8; 17];
        b[0] = kind;
        b[1..9].copy_from_slice(&subject.to_le_bytes());
        b[9..].copy_from_slice(&other.to_le_bytes());
        self.seed.bytes(&b)
    }

    fn series_key(&self, kind: SeriesKind, keys: &Keys) -> Option<u64> {
        let subject = match kind {
            SeriesKind::User => Some(keys.user),
            SeriesKind::Ip => keys.ip,
            SeriesKind::Device => keys.device,
        }?;
        Some(self.combine(kind as u8, subject, keys.action))
    }

    fn set_key(&self, kind: SetKind, keys: &Keys) -> Option<u64> {
        let subject = match kind {
            SetKind::UsersOnIp => keys.ip,
            SetKind::UsersOnDevice => keys.device,
            SetKind::DevicesOfUser => Some(keys.user),
        }?;
        Some(self.combine(kind as u8, subject, 0))
    }

    /// Earlier actions in the series within `window` of `now` (0 when the attribute is absent).
    pub fn velocity(&self, kind: SeriesKind, keys: &Keys, now: EpochMs, window: DurationMs) -> i64 {
        let (now_ms, window_ms) = (now.ms(), window.ms());
        self.series_key(kind, keys)
            .and_then(|k| self.series.map.get(&k).map(|s| s.count(now_ms, window_ms)))
            .unwrap_or(0)
    }

    /// Distinct members of the set seen within `window` of `now` (0 when the attribute is absent).
    pub fn distinct(&self, kind: SetKind, keys: &Keys, now: EpochMs, window: DurationMs) -> i64 {
        let (now_ms, window_ms) = (now.ms(), window.ms());
        self.set_key(kind, keys)
            .and_then(|k| {
                self.distinct
                    .map
                    .get(&k)
                    .map(|s| s.count(now_ms, window_ms))
            })
            .unwrap_or(0)
    }

    /// Whether `item` (a device, IP or country hash) is known for `user` at `now`: made known, and seen
    /// again since, within `known_for`.
    pub fn is_known(&self, user: u64, kind: KnownKind, item: u64, now: EpochMs) -> bool {
        let now_ms = now.ms();
        let known_for = self.known_for_ms.load(Ordering::Relaxed);
        self.known.map.get(&user).is_some_and(|k| {
            let list = match kind {
                KnownKind::Device => &k.devices,
                KnownKind::Ip => &k.ips,
                KnownKind::Country => &k.countries,
            };
            list.iter()
                .any(|m| m.0 == item && m.1.saturating_add(known_for) > now_ms)
        })
    }

    /// What `rba_score()` needs about `values` (at most [`super::rba::LEVELS`]; only those whose bit is set in
    /// `present` are looked up, the others count 0): the user's and the population's counts of each among
    /// verified actions still within `known_for` of `now`.
    ///
    /// One look-up of the user and one probe of their counts' index per value, then the population's counts under one epoch guard ([`Population::counts`]).
    #[inline]
    pub fn rba_counts(&self, user: u64, values: &[u64], present: u16, now: EpochMs) -> RbaCounts {
        let now_ms = now.ms();
        let known_for = self.known_for_ms.load(Ordering::Relaxed);
        let fresh = |last: i64| last.saturating_add(known_for) > now_ms;
        let mut out = RbaCounts {
            all_actions: self.rba.actions.load(Ordering::Relaxed),
            ..RbaCounts::default()
        };
        if let Some(k) = self.known.map.get(&user) {
            out.user_actions = u64::from(k.rba_actions);
            for ((l, v), slot) in values.iter().enumerate().zip(out.user.iter_mut()) {
                if present & (1 << l) == 0 {
                    continue;
                }
                if let Some(c) = k.rba.find(*v).and_then(|i| k.rba.list.get(i)) {
                    if fresh(c.last_ms) {
                        *slot = u64::from(c.count);
                    }
                }
            }
        }
        self.rba
            .counts(values, present, now_ms, known_for, &mut out.all);
        out
    }

    /// The user's last known location.
    pub fn last_location(&self, user: u64) -> Option<Located> {
        self.known.map.get(&user).and_then(|k| k.location)
    }

    /// Counts an action in the series and sets rules read (bit `1 << kind` of `kept`), keeping `horizon` of
    /// history (nothing when it is 0).
    pub fn record(&self, keys: &Keys, now: EpochMs, horizon: DurationMs, kept: u8) {
        let (now_ms, horizon_ms) = (now.ms(), horizon.ms());
        if horizon_ms <= 0 {
            return;
        }
        if let Some(j) = self.journal.get() {
            j.record(keys, now_ms, horizon_ms, kept);
        }
        let (caps, cap) = (self.caps(), self.max_per_key());
        let kept_kind = |kind: u8| kept & (1 << kind) != 0;
        for kind in [SeriesKind::User, SeriesKind::Ip, SeriesKind::Device] {
            if !kept_kind(kind as u8) {
                continue;
            }
            if let Some(k) = self.series_key(kind, keys) {
                self.series.upsert(k, now_ms, horizon_ms, caps, |s| {
                    s.push(now_ms, horizon_ms, cap)
                });
            }
        }
        for (kind, member) in [
            (SetKind::UsersOnIp, Some(keys.user)),
            (SetKind::UsersOnDevice, Some(keys.user)),
            (SetKind::DevicesOfUser, keys.device),
        ] {
            if !kept_kind(kind as u8) {
                continue;
            }
            if let (Some(k), Some(m)) = (self.set_key(kind, keys), member) {
                self.distinct.upsert(k, now_ms, horizon_ms, caps, |s| {
                    s.see(m, now_ms, horizon_ms, cap)
                });
            }
        }
    }

    /// Makes the device, IP and country of an action known for its user, and its location the user's last
    /// known one (unless a later one is already recorded).
    pub fn make_known(&self, user: u64, v: &Verified<'_>) {
        let Verified {
            device,
            ip,
            country,
            location,
            rba,
            at_ms,
        } = *v;
        if let Some(j) = self.journal.get() {
            j.make_known(user, v);
        }
        let horizon = self.known_for_ms.load(Ordering::Relaxed);
        let caps = self.caps();
        if !rba.is_empty() {
            self.rba.actions.fetch_add(1, Ordering::Relaxed);
            for &v in rba {
                self.rba.count(v, at_ms, horizon, caps);
            }
        }
        self.known.upsert(user, at_ms, horizon, caps, |k| {
            k.last_ms = k.last_ms.max(at_ms);
            if !rba.is_empty() {
                k.rba_actions = k.rba_actions.saturating_add(1);
                for &v in rba {
                    k.rba.count(v, at_ms, horizon);
                }
            }
            if let Some(d) = device {
                remember(&mut k.devices, d, at_ms, horizon);
            }
            if let Some(i) = ip {
                remember(&mut k.ips, i, at_ms, horizon);
            }
            if let Some(c) = country {
                remember(&mut k.countries, c, at_ms, horizon);
            }
            if let Some(l) = location {
                if k.location.is_none_or(|old| old.at_ms <= l.at_ms) {
                    k.location = Some(l);
                }
            }
        });
    }
}

/// Snapshots (durable state): every live key of every table, oldest first, and back.
impl History {
    /// Writes the tables to `out`: keys idle for `horizon_ms` (series and sets) or `known_for` (known items,
    /// `rba_score()` counts) at `now_ms` are left out, as they would be swept.
    pub(crate) fn export(&self, out: &mut Vec<u8>, now_ms: i64, horizon_ms: i64) {
        let known_for = self.known_for_ms.load(Ordering::Relaxed);
        let live = |last: i64, span: i64| last.saturating_add(span) > now_ms;
        out.u64(self.rba.actions.load(Ordering::Relaxed));
        export_table(&self.series, out, |s, out| {
            if !live(s.last_ms, horizon_ms) {
                return false;
            }
            out.i64(s.last_ms);
            out.u32(s.times.len() as u32);
            for &t in &s.times {
                out.i64(t);
            }
            true
        });
        export_table(&self.distinct, out, |d, out| {
            if !live(d.last_ms, horizon_ms) {
                return false;
            }
            out.i64(d.last_ms);
            put_pairs(out, &d.members);
            true
        });
        export_table(&self.known, out, |k, out| {
            if !live(k.last_ms, known_for) {
                return false;
            }
            out.i64(k.last_ms);
            for list in [&k.devices, &k.ips, &k.countries] {
                put_pairs(out, list);
            }
            match k.location {
                None => out.u8(0),
                Some(l) => {
                    out.u8(1);
                    put_located(out, &l);
                }
            }
            out.u32(k.rba_actions);
            out.u32(k.rba.list.len() as u32);
            for c in &k.rba.list {
                out.u64(c.value);
                out.u32(c.count);
                out.i64(c.last_ms);
            }
            true
        });
        self.rba.export(out, |last| live(last, known_for));
    }

    /// Reads tables [`History::export`] wrote into this (empty) history, within its limits: past `max_keys`
    /// the keys created longest ago are left out, past `max_per_key` a series or set keeps its newest entries.
    pub(crate) fn import(&self, r: &mut Reader<'_>) -> Result<(), Damaged> {
        let (caps, cap) = (self.caps(), self.max_per_key().max(1));
        self.rba.actions.store(r.u64()?, Ordering::Relaxed);
        import_table(&self.series, r, caps, |r| {
            let last_ms = r.i64()?;
            let n = r.count(8)?;
            let mut times = VecDeque::with_capacity(n.min(cap));
            for _ in 0..n {
                let t = r.i64()?;
                if times.len() == cap {
                    times.pop_front();
                }
                times.push_back(t);
            }
            Ok(Series { times, last_ms })
        })?;
        import_table(&self.distinct, r, caps, |r| {
            let last_ms = r.i64()?;
            let members = get_pairs(r, cap)?;
            Ok(Distinct { members, last_ms })
        })?;
        import_table(&self.known, r, caps, |r| {
            let last_ms = r.i64()?;
            let devices = get_pairs(r, MAX_KNOWN)?;
            let ips = get_pairs(r, MAX_KNOWN)?;
            let countries = get_pairs(r, MAX_KNOWN)?;
            let location = match r.u8()? {
                0 => None,
                _ => Some(get_located(r)?),
            };
            let rba_actions = r.u32()?;
            let n = r.count(20)?;
            let mut rba = Vec::with_capacity(n.min(MAX_RBA_VALUES));
            for _ in 0..n {
                let c = RbaCount {
                    value: r.u64()?,
                    count: r.u32()?,
                    last_ms: r.i64()?,
                };
                if rba.len() < MAX_RBA_VALUES {
                    rba.push(c);
                }
            }
            Ok(Known {
                devices,
                ips,
                countries,
                location,
                last_ms,
                rba_actions,
                rba: {
                    let mut values = RbaValues {
                        list: rba,
                        slots: Vec::new(),
                    };
                    values.reindex();
                    values
                },
            })
        })?;
        self.rba.import(r, caps)
    }
}

/// Snapshots of the population counts: the same layout as a [`Table`]'s (count, then key, creation time, count
/// and last time per key, oldest first).
impl Population {
    fn export(&self, out: &mut Vec<u8>, live: impl Fn(i64) -> bool) {
        let order = self.order.lock().unwrap_or_else(|p| p.into_inner());
        let count_at = out.len();
        out.u32(0);
        let mut n = 0u32;
        let g = self.map.pin();
        for &(key, created) in order.iter() {
            let Some(f) = g.get(&key) else { continue };
            let (count, last_ms) = (
                f.count.load(Ordering::SeqCst),
                f.last_ms.load(Ordering::SeqCst),
            );
            if count == Freq::DEAD || !live(last_ms) {
                continue;
            }
            out.u64(key);
            out.i64(created);
            out.u32(count);
            out.i64(last_ms);
            n += 1;
        }
        if let Some(slot) = out.get_mut(count_at..count_at + 4) {
            slot.copy_from_slice(&n.to_le_bytes());
        }
    }

    /// Reads what [`Population::export`] wrote into this (empty) table, within its caps: past them the keys
    /// created longest ago are left out.
    fn import(&self, r: &mut Reader<'_>, caps: Caps) -> Result<(), Damaged> {
        let n = r.count(28)?;
        let limit = caps.max_keys.max(1).min(caps.max_bytes / Self::KEY_BYTES);
        let skip = n.saturating_sub(limit);
        let mut order = self.order.lock().unwrap_or_else(|p| p.into_inner());
        order.reserve(n - skip);
        let g = self.map.pin();
        for i in 0..n {
            let key = r.u64()?;
            let created = r.i64()?;
            let count = r.u32()?.min(Freq::DEAD - 1);
            let last_ms = r.i64()?;
            if i < skip || count == 0 {
                continue;
            }
            let f = Freq {
                count: std::sync::atomic::AtomicU32::new(count),
                last_ms: AtomicI64::new(last_ms),
            };
            // A damaged file could list a key twice: keep the first, so the order stays true.
            if g.try_insert(key, f).is_ok() {
                order.push_back((key, created));
            }
        }
        Ok(())
    }
}

fn export_table<V: Entry>(
    t: &Table<V>,
    out: &mut Vec<u8>,
    mut put: impl FnMut(&V, &mut Vec<u8>) -> bool,
) {
    let order = t.order.lock().unwrap_or_else(|p| p.into_inner());
    let count_at = out.len();
    out.u32(0);
    let mut n = 0u32;
    for &(key, created) in order.iter() {
        let Some(v) = t.map.get(&key) else { continue };
        let start = out.len();
        out.u64(key);
        out.i64(created);
        if put(&v, out) {
            n += 1;
        } else {
            out.truncate(start);
        }
    }
    if let Some(slot) = out.get_mut(count_at..count_at + 4) {
        slot.copy_from_slice(&n.to_le_bytes());
    }
}

fn import_table<V: Entry>(
    t: &Table<V>,
    r: &mut Reader<'_>,
    caps: Caps,
    mut get: impl FnMut(&mut Reader<'_>) -> Result<V, Damaged>,
) -> Result<(), Damaged> {
    let n = r.count(16)?;
    let skip = n.saturating_sub(caps.max_keys.max(1));
    let mut order = t.order.lock().unwrap_or_else(|p| p.into_inner());
    order.reserve(n - skip);
    for i in 0..n {
        let key = r.u64()?;
        let created = r.i64()?;
        let v = get(r)?;
        if i < skip {
            continue;
        }
        t.bytes.fetch_add(Table::<V>::size(&v), Ordering::Relaxed);
        if let Some(old) = t.map.insert(key, v) {
            // A damaged file could list a key twice: keep the account and the order true.
            t.bytes.fetch_sub(Table::<V>::size(&old), Ordering::Relaxed);
            continue;
        }
        order.push_back((key, created));
    }
    // A file written under a larger `max_bytes` (or a crafted one) is held to this one: the keys created
    // longest ago go, as the table would have evicted them.
    while t.bytes() > caps.max_bytes {
        let Some((key, _)) = order.pop_front() else {
            break;
        };
        t.remove_unless(key, |_| false);
    }
    Ok(())
}

fn put_pairs(out: &mut Vec<u8>, list: &[(u64, i64)]) {
    out.u32(list.len() as u32);
    for &(m, t) in list {
        out.u64(m);
        out.i64(t);
    }
}

fn get_pairs(r: &mut Reader<'_>, cap: usize) -> Result<Vec<(u64, i64)>, Damaged> {
    let n = r.count(16)?;
    let mut list = Vec::with_capacity(n.min(cap));
    for _ in 0..n {
        let p = (r.u64()?, r.i64()?);
        if list.len() < cap {
            list.push(p);
        }
    }
    Ok(list)
}

/// Writes a location (the journal's and the snapshot's layout).
pub(crate) fn put_located(out: &mut Vec<u8>, l: &Located) {
    out.f64(l.lat);
    out.f64(l.lon);
    out.i64(l.at_ms);
    out.u64(l.ip);
    match l.country {
        None => out.u8(0),
        Some(c) => {
            out.u8(1);
            out.bytes(&c.0);
        }
    }
}

/// Reads what [`put_located`] wrote.
pub(crate) fn get_located(r: &mut Reader<'_>) -> Result<Located, Damaged> {
    Ok(Located {
        lat: r.f64()?,
        lon: r.f64()?,
        at_ms: r.i64()?,
        ip: r.u64()?,
        country: match r.u8()? {
            0 => None,
            _ => {
                let b = r.bytes(2)?;
                CountryCode::new(std::str::from_utf8(b).unwrap_or(""))
            }
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys() -> EngineKeys {
        EngineKeys::draw().unwrap()
    }

    #[test]
    fn the_rba_index_finds_what_a_walk_of_the_list_finds() {
        // Values colliding in the index's low bits, re-seen, expiring and evicted at the cap.
        let mut r = RbaValues::default();
        let mut seen = Vec::new();
        for step in 0..2_000u64 {
            let value = (step * 7_919 % 300) << (step % 3) | 1;
            let at = i64::try_from(step).unwrap_or(0) * 10;
            r.count(value, at, 5_000);
            seen.push(value);
            assert!(r.list.len() <= MAX_RBA_VALUES);
            assert!(r.list.len() * 2 <= r.slots.len());
            for v in seen.iter().rev().take(400) {
                let walked = r.list.iter().position(|c| c.value == *v);
                assert_eq!(r.find(*v), walked, "value {v} at step {step}");
            }
        }
        assert_eq!(r.find(u64::MAX), None);
        assert_eq!(RbaValues::default().find(1), None);
    }

    #[test]
    fn series_counts_the_open_closed_window() {
        let mut s = Series::default();
        for t in [1_000, 2_000, 3_000] {
            s.push(t, 10_000, 100);
        }
        assert_eq!(s.count(3_000, 2_000), 2); // (1000, 3000]: 2000 and 3000
        assert_eq!(s.count(3_000, 2_001), 3);
        assert_eq!(s.count(2_500, 10_000), 2); // later entries are not "earlier"
        s.push(1_500, 10_000, 100); // out of order
        assert_eq!(s.count(2_000, 1_000), 2);
    }

    #[test]
    fn series_and_sets_are_capped() {
        let mut s = Series::default();
        for t in 0..50 {
            s.push(t, 1_000_000, 10);
        }
        assert_eq!(s.times.len(), 10);
        let mut d = Distinct::default();
        for m in 0..50 {
            d.see(m, i64::try_from(m).unwrap_or(0), 1_000_000, 10);
        }
        assert_eq!(d.members.len(), 10);
        assert!(d.members.iter().all(|m| m.0 >= 40));
    }

    #[test]
    fn an_ip_has_one_key_however_it_is_spelt() {
        let h = History::new(Limits::default(), keys());
        let v4 = h.ip_key("1.2.3.4");
        for s in [
            "::ffff:1.2.3.4",
            "::ffff:102:304",
            "0:0:0:0:0:ffff:1.2.3.4",
            "::FFFF:0102:0304",
        ] {
            assert_eq!(h.ip_key(s), v4, "{s}");
        }
        let v6 = h.ip_key("2001:db8::1");
        for s in [
            "2001:DB8::1",
            "2001:0db8:0000:0000:0000:0000:0000:0001",
            "2001:db8:0::0:1",
        ] {
            assert_eq!(h.ip_key(s), v6, "{s}");
        }
        assert_ne!(h.ip_key("::1.2.3.4"), v4, "IPv4-compatible is not mapped");
        assert_ne!(h.ip_key("1.2.3.5"), v4);
        // Dotted IPv4 text is its own key only because it has one spelling: `std` refuses every other.
        for other in [
            "01.2.3.4",
            "1.2.3.04",
            "1.2.3",
            "1.2.3.4.",
            " 1.2.3.4",
            "0x1.2.3.4",
            "1.2.3.4/32",
        ] {
            assert!(other.parse::<std::net::IpAddr>().is_err(), "{other}");
        }
    }

    fn caps(max_keys: usize, max_bytes: usize) -> Caps {
        Caps {
            max_keys,
            max_bytes,
        }
    }

    /// The bytes the values in `t` account for, recomputed from scratch.
    fn recount<V: Entry>(t: &Table<V>) -> usize {
        t.map.iter().map(|e| Table::<V>::size(e.value())).sum()
    }

    #[test]
    fn a_table_stays_within_its_bytes_and_its_account_is_exact() {
        let t: Table<Series> = Table::new(keys().buckets);
        let budget = 64 * 1024;
        // Many small keys, then a few that grow to a full series: the budget holds after every write.
        for k in 0..2_000u64 {
            t.upsert(k, 0, 1_000_000, caps(usize::MAX, budget), |s| {
                s.push(0, 1_000_000, 500)
            });
            assert!(t.bytes() <= budget, "{} after key {k}", t.bytes());
        }
        for i in 0..3_000i64 {
            let k = 10_000 + (i % 3) as u64;
            t.upsert(k, i, 1_000_000, caps(usize::MAX, budget), |s| {
                s.push(i, 1_000_000, 500)
            });
            assert!(t.bytes() <= budget, "{} after write {i}", t.bytes());
        }
        assert_eq!(t.bytes(), recount(&t));
        assert!(t.bytes() > budget / 2, "the budget is used, not undershot");
        let full = t
            .map
            .get(&10_000)
            .map(|s| (s.times.len(), s.times.capacity()));
        assert_eq!(
            full,
            Some((500, 500)),
            "a full series holds exactly its cap"
        );
        // A lower budget is reached a bounded number of keys per write.
        for i in 0..100i64 {
            t.upsert(
                20_000 + i as u64,
                5_000,
                1_000_000,
                caps(usize::MAX, 8 * 1024),
                |s| s.push(5_000, 1_000_000, 500),
            );
        }
        assert!(t.bytes() <= 8 * 1024, "{}", t.bytes());
        assert_eq!(t.bytes(), recount(&t));
    }

    #[test]
    fn the_population_counts_under_its_caps_and_sweeps_idle_values() {
        let p = Population::new(keys().buckets);
        let counts = |p: &Population, values: &[u64], now: i64| {
            let mut out = [0u64; 4];
            p.counts(values, 0b1111, now, 1_000, &mut out);
            out
        };
        for _ in 0..3 {
            p.count(7, 100, 1_000, caps(10, usize::MAX));
        }
        p.count(8, 100, 1_000, caps(10, usize::MAX));
        assert_eq!(counts(&p, &[7, 8, 9, 7], 200), [3, 1, 0, 3]);
        // Not seen within `known_for`: counts 0, and the next new key sweeps it.
        assert_eq!(counts(&p, &[7, 8], 1_100), [0, 0, 0, 0]);
        p.count(9, 1_200, 1_000, caps(10, usize::MAX));
        assert_eq!(p.len(), 1);
        assert_eq!(counts(&p, &[9], 1_200), [1, 0, 0, 0]);
        // Over `max_keys`, the keys created longest ago go first; `max_bytes` bounds it the same way.
        for v in 100..150u64 {
            p.count(v, 1_300, 1_000, caps(10, usize::MAX));
            assert!(p.len() <= 10);
        }
        assert_eq!(counts(&p, &[149, 140, 139], 1_300), [1, 1, 0, 0]);
        let budget = 5 * Population::KEY_BYTES;
        for v in 200..250u64 {
            p.count(v, 1_300, 1_000, caps(usize::MAX, budget));
            assert!(p.bytes() <= budget, "{}", p.bytes());
        }
        let order = p.order.lock().map(|o| o.len()).unwrap_or(0);
        assert_eq!(order, p.len());
    }

    #[test]
    fn population_counts_are_exact_under_racing_writers_and_it_stays_bounded_while_evicting() {
        let race = |p: &std::sync::Arc<Population>, evicting: bool| {
            let threads: Vec<_> = (0..4u64)
                .map(|t| {
                    let p = std::sync::Arc::clone(p);
                    std::thread::spawn(move || {
                        for i in 0..2_000u64 {
                            p.count(i % 8, 1, 1_000_000, caps(64, usize::MAX));
                            if evicting {
                                // A stream of new values that keeps evicting the oldest keys.
                                p.count(1_000 + t * 10_000 + i, 1, 1_000_000, caps(64, usize::MAX));
                            }
                        }
                    })
                })
                .collect();
            for t in threads {
                assert!(t.join().is_ok());
            }
        };
        let p = std::sync::Arc::new(Population::new(keys().buckets));
        race(&p, false);
        let mut out = [0u64; 8];
        p.counts(&[0, 1, 2, 3, 4, 5, 6, 7], 0xff, 1, 1_000_000, &mut out);
        assert_eq!(out, [1_000; 8], "no increment is lost");
        race(&p, true);
        assert!(p.len() <= 64, "{}", p.len());
        let order = p.order.lock().map(|o| o.len()).unwrap_or(0);
        assert_eq!(order, p.len(), "every live key is queued once");
    }

    #[test]
    fn table_evicts_oldest_and_idle_keys() {
        let t: Table<Series> = Table::new(keys().buckets);
        for k in 0..100u64 {
            t.upsert(k, 0, 1_000, caps(10, usize::MAX), |s| s.push(0, 1_000, 10));
        }
        assert_eq!(t.len(), 10);
        assert!(t.map.get(&99).is_some() && t.map.get(&0).is_none());
        // Everything is idle after one horizon: new inserts sweep it.
        for k in 1_000..1_005u64 {
            t.upsert(k, 5_000, 1_000, caps(10, usize::MAX), |s| {
                s.push(5_000, 1_000, 10)
            });
        }
        assert_eq!(t.len(), 5);
        let order = t.order.lock().map(|o| o.len()).unwrap_or(0);
        assert_eq!(order, 5);
    }
}
