//! The history seam: what one decision reads of the signal history and what it writes, whichever store keeps it.
//!
//! [`View::Local`] is the engine's own in-memory [`History`], read and written in place (the default, and the
//! hot path: one enum match per call). [`View::Snapshot`] is a remote store's: everything a decision may read is
//! fetched in one round trip before the rules run ([`Fetched`], exactly what the local tables would answer for
//! this action's user, IP and device), and what the decision writes is logged ([`Writes`]) for the store to
//! apply in its second round trip. Signals and rules call the same methods either way and cannot tell them
//! apart.

// Only a remote store (feature `redis`) makes snapshots.
#![cfg_attr(not(feature = "redis"), allow(dead_code))]

use std::sync::{Arc, Mutex, OnceLock};

use super::history::{History, Keys, KnownKind, Located, RbaCounts, SeriesKind, SetKind, Verified};
use crate::time::{DurationMs, EpochMs};

/// Where a decision's history is.
#[derive(Clone)]
pub(crate) enum View {
    /// The engine's in-memory history.
    Local(Arc<History>),
    /// A remote store's history for this one action, fetched before the rules ran.
    Snapshot(Arc<Snapshot>),
}

/// A remote store's history for one action: the reads fetched for it, and the writes it made.
pub(crate) struct Snapshot {
    /// Hashing only (its seed is shared by every engine on the store); its tables stay empty.
    hasher: Arc<History>,
    known_for_ms: i64,
    data: OnceLock<Fetched>,
    writes: Mutex<Writes>,
}

/// What a remote store answered for one action's keys. Series hold times, sets and known lists (member,
/// last seen), all within the windows the store was asked for.
#[derive(Debug, Default, Clone, PartialEq)]
pub(crate) struct Fetched {
    /// By [`SeriesKind`]: user, IP, device (index `kind - 1`), sorted.
    pub series: [Vec<i64>; 3],
    /// By [`SetKind`]: users on the IP, users on the device, devices of the user (index `kind - 4`).
    pub sets: [Vec<(u64, i64)>; 3],
    /// By [`KnownKind`]: devices, IPs, countries.
    pub known: [Vec<(u64, i64)>; 3],
    pub location: Option<Located>,
    /// `rba_score()`: the user's verified actions and per value (value, count, last seen).
    pub rba_user_actions: u64,
    pub rba_user: Vec<(u64, u64, i64)>,
    /// `rba_score()`: all users' verified actions and per value asked for (value, count, last seen).
    pub rba_all_actions: u64,
    pub rba_all: Vec<(u64, u64, i64)>,
    /// Counts the store made itself, `(kind, window, count)`: a series or set read this way is answered from
    /// these for its windows (the ruleset's literal windows) instead of from `series` or `sets`.
    pub counts: Vec<(u8, i64, i64)>,
}

impl Fetched {
    /// The count the store made of `kind` over `window`, if it made one.
    fn counted(&self, kind: u8, window_ms: i64) -> Option<i64> {
        self.counts
            .iter()
            .find(|c| c.0 == kind && c.1 == window_ms)
            .map(|c| c.2)
    }
}

/// What one decision (or one successful challenge) writes to history.
#[derive(Debug, Default, Clone)]
pub(crate) struct Writes {
    /// [`History::record`]'s arguments: the action counted in the series and sets `kept`.
    pub record: Option<(Keys, EpochMs, DurationMs, u8)>,
    /// [`History::make_known`]'s arguments.
    pub known: Option<KnownWrite>,
}

/// What one verified action makes known, owned.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct KnownWrite {
    pub user: u64,
    pub device: Option<u64>,
    pub ip: Option<u64>,
    pub country: Option<u64>,
    pub location: Option<Located>,
    pub rba: Vec<u64>,
    pub at_ms: i64,
}

impl Snapshot {
    pub fn new(hasher: Arc<History>, known_for_ms: i64) -> Self {
        Snapshot {
            hasher,
            known_for_ms,
            data: OnceLock::new(),
            writes: Mutex::new(Writes::default()),
        }
    }

    /// Sets what the store answered (once; before the rules run).
    pub fn fill(&self, data: Fetched) {
        let _ = self.data.set(data);
    }

    /// What the decision wrote.
    pub fn take_writes(&self) -> Writes {
        match self.writes.lock() {
            Ok(mut w) => std::mem::take(&mut *w),
            Err(p) => std::mem::take(&mut *p.into_inner()),
        }
    }

    fn data(&self) -> Option<&Fetched> {
        self.data.get()
    }

    fn write(&self, f: impl FnOnce(&mut Writes)) {
        match self.writes.lock() {
            Ok(mut w) => f(&mut w),
            Err(p) => f(&mut p.into_inner()),
        }
    }
}

/// Entries `t` with `now - window < t <= now` of a sorted series.
fn count_times(times: &[i64], now_ms: i64, window_ms: i64) -> i64 {
    let from = times.partition_point(|&t| t <= now_ms.saturating_sub(window_ms));
    let to = times.partition_point(|&t| t <= now_ms);
    to.saturating_sub(from) as i64
}

impl View {
    /// The hashing side of the history (its seed).
    fn hasher(&self) -> &History {
        match self {
            View::Local(h) => h,
            View::Snapshot(s) => &s.hasher,
        }
    }

    pub fn keys(
        &self,
        user_id: &str,
        action: &str,
        ip: Option<&str>,
        device: Option<&str>,
    ) -> Keys {
        self.hasher().keys(user_id, action, ip, device)
    }

    pub fn hash(&self, tag: u8, value: &str) -> u64 {
        self.hasher().hash(tag, value)
    }

    pub fn mix(&self, tag: u8, value: u64) -> u64 {
        self.hasher().mix(tag, value)
    }

    pub fn quick_hash(&self, tag: u8, value: &str) -> u64 {
        self.hasher().quick_hash(tag, value)
    }

    pub fn seed_id(&self) -> u64 {
        self.hasher().seed_id()
    }

    pub fn quick_hash2(&self, tag: u8, a: &str, b: &str) -> u64 {
        self.hasher().quick_hash2(tag, a, b)
    }

    pub fn velocity(&self, kind: SeriesKind, keys: &Keys, now: EpochMs, window: DurationMs) -> i64 {
        match self {
            View::Local(h) => h.velocity(kind, keys, now, window),
            View::Snapshot(s) => {
                let present = match kind {
                    SeriesKind::User => true,
                    SeriesKind::Ip => keys.ip.is_some(),
                    SeriesKind::Device => keys.device.is_some(),
                };
                let Some(d) = s.data().filter(|_| present) else {
                    return 0;
                };
                if let Some(n) = d.counted(kind as u8, window.ms()) {
                    return n;
                }
                d.series
                    .get(kind as usize - 1)
                    .map_or(0, |t| count_times(t, now.ms(), window.ms()))
            }
        }
    }

    pub fn distinct(&self, kind: SetKind, keys: &Keys, now: EpochMs, window: DurationMs) -> i64 {
        match self {
            View::Local(h) => h.distinct(kind, keys, now, window),
            View::Snapshot(s) => {
                let present = match kind {
                    SetKind::UsersOnIp => keys.ip.is_some(),
                    SetKind::UsersOnDevice => keys.device.is_some(),
                    SetKind::DevicesOfUser => true,
                };
                let from = now.ms().saturating_sub(window.ms());
                let Some(d) = s.data().filter(|_| present) else {
                    return 0;
                };
                if let Some(n) = d.counted(kind as u8, window.ms()) {
                    return n;
                }
                d.sets.get(kind as usize - 4).map_or(0, |m| {
                    m.iter().filter(|m| m.1 > from && m.1 <= now.ms()).count() as i64
                })
            }
        }
    }

    pub fn is_known(&self, user: u64, kind: KnownKind, item: u64, now: EpochMs) -> bool {
        match self {
            View::Local(h) => h.is_known(user, kind, item, now),
            View::Snapshot(s) => {
                let i = match kind {
                    KnownKind::Device => 0,
                    KnownKind::Ip => 1,
                    KnownKind::Country => 2,
                };
                s.data().and_then(|d| d.known.get(i)).is_some_and(|l| {
                    l.iter()
                        .any(|m| m.0 == item && m.1.saturating_add(s.known_for_ms) > now.ms())
                })
            }
        }
    }

    /// `present`: bit `l` set when level `l` of `values` is in the request (absent levels count 0).
    pub fn rba_counts(&self, user: u64, values: &[u64], present: u16, now: EpochMs) -> RbaCounts {
        match self {
            View::Local(h) => h.rba_counts(user, values, present, now),
            View::Snapshot(s) => {
                let mut out = RbaCounts::default();
                let Some(d) = s.data() else { return out };
                let fresh = |last: i64| last.saturating_add(s.known_for_ms) > now.ms();
                out.all_actions = d.rba_all_actions;
                out.user_actions = d.rba_user_actions;
                for (i, v) in values.iter().enumerate() {
                    if present & (1 << i) == 0 {
                        continue;
                    }
                    let find = |l: &[(u64, u64, i64)]| {
                        l.iter()
                            .find(|c| c.0 == *v && fresh(c.2))
                            .map_or(0, |c| c.1)
                    };
                    if let Some(slot) = out.user.get_mut(i) {
                        *slot = find(&d.rba_user);
                    }
                    if let Some(slot) = out.all.get_mut(i) {
                        *slot = find(&d.rba_all);
                    }
                }
                out
            }
        }
    }

    pub fn last_location(&self, user: u64) -> Option<Located> {
        match self {
            View::Local(h) => h.last_location(user),
            View::Snapshot(s) => s.data().and_then(|d| d.location),
        }
    }

    pub fn record(&self, keys: &Keys, now: EpochMs, horizon: DurationMs, kept: u8) {
        match self {
            View::Local(h) => h.record(keys, now, horizon, kept),
            View::Snapshot(s) => s.write(|w| w.record = Some((*keys, now, horizon, kept))),
        }
    }

    pub fn make_known(&self, user: u64, v: &Verified<'_>) {
        match self {
            View::Local(h) => h.make_known(user, v),
            View::Snapshot(s) => s.write(|w| {
                w.known = Some(KnownWrite {
                    user,
                    device: v.device,
                    ip: v.ip,
                    country: v.country,
                    location: v.location,
                    rba: v.rba.to_vec(),
                    at_ms: v.at_ms,
                })
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_snapshot_counts_as_the_local_tables_do() {
        assert_eq!(count_times(&[1_000, 2_000, 3_000], 3_000, 2_000), 2);
        assert_eq!(count_times(&[1_000, 2_000, 3_000], 3_000, 2_001), 3);
        assert_eq!(count_times(&[1_000, 2_000, 3_000], 2_500, 10_000), 2);
    }
}
