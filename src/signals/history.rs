//! The engine's memory of past actions: velocity series, distinct-member sets, and what each user has made known.
//!
//! # Bounds
//! History lives in three tables: `series` (one key per user+action, IP+action and device+action: the times of
//! those actions), `distinct` (one key per IP, device and user: the users or devices seen with it and when) and
//! `known` (one key per user: the devices, IPs and countries the user has made known, and the last known
//! location). Each table holds at most `[signals] max_keys` keys, each series or set at most
//! `[signals] max_per_key` entries, each user at most [`MAX_KNOWN`] devices, IPs and countries.
//!
//! Only the series and sets some rule calls are recorded. They drop what is older than the ruleset's longest
//! window (its *horizon*), and a key idle that long is dropped whole as new keys arrive (each new key sweeps at
//! most [`SWEEP_PER_INSERT`] idle ones, so no decision pays for a backlog); known entries are dropped after
//! `[signals] known_for` without being seen. When a table is full, the key created longest ago goes first.
//!
//! A key costs about 200 bytes with its entries (measured over 1.4 million keys from 200,000 unique users, IPs
//! and devices), so the defaults bound history at roughly 600 MB in the worst case.
//!
//! Keys are 64-bit xxh3 hashes of the user id, IP or device id, seeded per engine from the operating system's
//! random source, so callers cannot aim collisions at a key they do not control.

use dashmap::DashMap;
use std::collections::VecDeque;
use std::hash::BuildHasherDefault;
use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering};
use std::sync::Mutex;

use crate::store::PreHashed;

/// At most this many devices, IPs and countries are remembered as known per user (each; the least recently
/// seen goes first).
pub const MAX_KNOWN: usize = 256;

/// How many idle keys one insertion may sweep, so no single decision pays for a large backlog.
const SWEEP_PER_INSERT: usize = 32;

type Map<V> = DashMap<u64, V, BuildHasherDefault<PreHashed>>;

/// What a table's values tell it about themselves.
trait Entry: Default {
    /// The last time the key was written.
    fn last_ms(&self) -> i64;
}

/// A bounded map with creation-order eviction and idle expiry.
///
/// INVARIANT: every key in `map` appears exactly once in `order` (keys are only removed by popping `order`).
struct Table<V> {
    map: Map<V>,
    order: Mutex<VecDeque<(u64, i64)>>,
}

impl<V: Entry> Table<V> {
    fn new() -> Self {
        Table {
            map: Map::default(),
            order: Mutex::new(VecDeque::new()),
        }
    }

    /// Updates the value under `key` with `f`, creating it first if needed; then evicts what is over `max_keys`
    /// or idle longer than `horizon_ms`.
    fn upsert(
        &self,
        key: u64,
        now_ms: i64,
        horizon_ms: i64,
        max_keys: usize,
        f: impl FnOnce(&mut V),
    ) {
        let created = match self.map.entry(key) {
            dashmap::Entry::Occupied(mut e) => {
                f(e.get_mut());
                false
            }
            dashmap::Entry::Vacant(e) => {
                let mut v = V::default();
                f(&mut v);
                e.insert(v);
                true
            }
        };
        if created {
            self.admit(key, now_ms, horizon_ms, max_keys);
        }
    }

    fn admit(&self, key: u64, now_ms: i64, horizon_ms: i64, max_keys: usize) {
        let Ok(mut order) = self.order.lock() else {
            return;
        };
        order.push_back((key, now_ms));
        while order.len() > max_keys.max(1) {
            if let Some((k, _)) = order.pop_front() {
                self.map.remove(&k);
            }
        }
        for _ in 0..SWEEP_PER_INSERT {
            let Some(&(k, t)) = order.front() else { break };
            if t.saturating_add(horizon_ms) > now_ms {
                break;
            }
            order.pop_front();
            let idle = |_: &u64, v: &V| v.last_ms().saturating_add(horizon_ms) <= now_ms;
            if self.map.remove_if(&k, idle).is_none() {
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
}

impl Entry for Known {
    fn last_ms(&self) -> i64 {
        self.last_ms
    }
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

/// The hashed keys of one action.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Keys {
    pub user: u64,
    pub action: u64,
    pub ip: Option<u64>,
    pub device: Option<u64>,
}

/// The history limits in force (from the current ruleset's `[signals]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Limits {
    pub max_keys: usize,
    pub max_per_key: usize,
    pub known_for_ms: i64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_keys: 1_000_000,
            max_per_key: 1_000,
            known_for_ms: 90 * 86_400_000,
        }
    }
}

/// Everything the engine remembers for signals. Shared by all rulesets an engine runs.
pub(crate) struct History {
    seed: u64,
    series: Table<Series>,
    distinct: Table<Distinct>,
    known: Table<Known>,
    max_keys: AtomicUsize,
    max_per_key: AtomicUsize,
    known_for_ms: AtomicI64,
}

impl History {
    pub fn new(limits: Limits) -> Self {
        let mut seed = [0u8; 8];
        // A fixed seed only weakens collision resistance against chosen keys; it never breaks correctness.
        let _ = getrandom::fill(&mut seed);
        History {
            seed: u64::from_le_bytes(seed),
            series: Table::new(),
            distinct: Table::new(),
            known: Table::new(),
            max_keys: AtomicUsize::new(limits.max_keys),
            max_per_key: AtomicUsize::new(limits.max_per_key),
            known_for_ms: AtomicI64::new(limits.known_for_ms),
        }
    }

    pub fn set_limits(&self, limits: Limits) {
        self.max_keys.store(limits.max_keys, Ordering::Relaxed);
        self.max_per_key
            .store(limits.max_per_key, Ordering::Relaxed);
        self.known_for_ms
            .store(limits.known_for_ms, Ordering::Relaxed);
    }

    fn max_keys(&self) -> usize {
        self.max_keys.load(Ordering::Relaxed)
    }

    fn max_per_key(&self) -> usize {
        self.max_per_key.load(Ordering::Relaxed)
    }

    /// How many keys the three tables hold together.
    pub fn len(&self) -> usize {
        self.series.len() + self.distinct.len() + self.known.len()
    }

    /// The seeded hash of one attribute value (`tag` keeps user ids, IPs and devices apart).
    pub fn hash(&self, tag: u8, value: &str) -> u64 {
        let mut h = xxhash_rust::xxh3::Xxh3::with_seed(self.seed);
        h.update(&[tag]);
        h.update(value.as_bytes());
        h.digest()
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
            ip: ip.map(|v| self.hash(b'i', v)),
            device: device.map(|v| self.hash(b'd', v)),
        }
    }

    fn combine(&self, kind: u8, subject: u64, other: u64) -> u64 {
        let mut b = [0u8; 17];
        b[0] = kind;
        b[1..9].copy_from_slice(&subject.to_le_bytes());
        b[9..].copy_from_slice(&other.to_le_bytes());
        xxhash_rust::xxh3::xxh3_64_with_seed(&b, self.seed)
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

    /// Earlier actions in the series within `window_ms` of `now_ms` (0 when the attribute is absent).
    pub fn velocity(&self, kind: SeriesKind, keys: &Keys, now_ms: i64, window_ms: i64) -> i64 {
        self.series_key(kind, keys)
            .and_then(|k| self.series.map.get(&k).map(|s| s.count(now_ms, window_ms)))
            .unwrap_or(0)
    }

    /// Distinct members of the set seen within `window_ms` of `now_ms` (0 when the attribute is absent).
    pub fn distinct(&self, kind: SetKind, keys: &Keys, now_ms: i64, window_ms: i64) -> i64 {
        self.set_key(kind, keys)
            .and_then(|k| {
                self.distinct
                    .map
                    .get(&k)
                    .map(|s| s.count(now_ms, window_ms))
            })
            .unwrap_or(0)
    }

    /// Whether `item` (a device, IP or country hash) is known for `user` at `now_ms`: made known, and seen
    /// again since, within `known_for`.
    pub fn is_known(&self, user: u64, kind: KnownKind, item: u64, now_ms: i64) -> bool {
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

    /// The user's last known location.
    pub fn last_location(&self, user: u64) -> Option<Located> {
        self.known.map.get(&user).and_then(|k| k.location)
    }

    /// Counts an action in the series and sets rules read (bit `1 << kind` of `kept`), keeping `horizon_ms` of
    /// history (nothing when it is 0).
    pub fn record(&self, keys: &Keys, now_ms: i64, horizon_ms: i64, kept: u8) {
        if horizon_ms <= 0 {
            return;
        }
        let (max_keys, cap) = (self.max_keys(), self.max_per_key());
        let kept_kind = |kind: u8| kept & (1 << kind) != 0;
        for kind in [SeriesKind::User, SeriesKind::Ip, SeriesKind::Device] {
            if !kept_kind(kind as u8) {
                continue;
            }
            if let Some(k) = self.series_key(kind, keys) {
                self.series.upsert(k, now_ms, horizon_ms, max_keys, |s| {
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
                self.distinct.upsert(k, now_ms, horizon_ms, max_keys, |s| {
                    s.see(m, now_ms, horizon_ms, cap)
                });
            }
        }
    }

    /// Makes the device, IP and country of an action known for its user, and its location the user's last
    /// known one (unless a later one is already recorded).
    pub fn make_known(
        &self,
        user: u64,
        device: Option<u64>,
        ip: Option<u64>,
        country: Option<u64>,
        location: Option<Located>,
        at_ms: i64,
    ) {
        let horizon = self.known_for_ms.load(Ordering::Relaxed);
        self.known
            .upsert(user, at_ms, horizon, self.max_keys(), |k| {
                k.last_ms = k.last_ms.max(at_ms);
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

#[cfg(test)]
mod tests {
    use super::*;

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
    fn table_evicts_oldest_and_idle_keys() {
        let t: Table<Series> = Table::new();
        for k in 0..100u64 {
            t.upsert(k, 0, 1_000, 10, |s| s.push(0, 1_000, 10));
        }
        assert_eq!(t.len(), 10);
        assert!(t.map.get(&99).is_some() && t.map.get(&0).is_none());
        // Everything is idle after one horizon: new inserts sweep it.
        for k in 1_000..1_005u64 {
            t.upsert(k, 5_000, 1_000, 10, |s| s.push(5_000, 1_000, 10));
        }
        assert_eq!(t.len(), 5);
        let order = t.order.lock().map(|o| o.len()).unwrap_or(0);
        assert_eq!(order, 5);
    }
}
