//! The retention shards' published fronts and the versioned lower bound on them (see `Store::admit`).
//!
//! The hand-rolled part of the store's protocol, kept apart so that a model checker can run it: it names its
//! atomics through `super::sync` (the standard ones here; `model/` puts shuttle's in their place and
//! explores the interleavings of publishing, scanning and refreshing).
//!
//! The invariant: the bound never exceeds a live front, so an insert that reads it unexpired may skip the
//! scan. Every change of a front lowers the bound if needed and bumps its version; a refresh raises the bound
//! to the oldest front it scanned with a compare-and-swap from the value read before the scan, which fails if
//! any front changed meanwhile.

use super::sync::{AtomicI64, AtomicU64, Ordering};

/// Bits of the bound that hold its version; the rest hold the bound in ms (event times fit in 48 bits: at
/// most 9999-12-31, `clock::MAX_EVENT_MS`).
const BOUND_VERSION_BITS: u32 = 16;
const VERSION_MASK: u64 = (1 << BOUND_VERSION_BITS) - 1;
const BOUND_MAX_MS: i64 = (1 << (64 - BOUND_VERSION_BITS)) - 1;

/// Packs a bound (`i64::MAX`, an empty store, saturates to a time that never expires) with its version.
fn pack_bound(ms: i64, version: u64) -> u64 {
    ((ms.clamp(0, BOUND_MAX_MS) as u64) << BOUND_VERSION_BITS) | (version & VERSION_MASK)
}

/// The bound, in ms, of a packed value from [`Fronts::bound`].
pub(crate) fn bound_ms(packed: u64) -> i64 {
    (packed >> BOUND_VERSION_BITS) as i64
}

/// The creation time (ms) of each shard's oldest entry, `i64::MAX` for an empty shard, and a lower bound on
/// them all. A front is written only under its shard's lock ([`Fronts::publish`]); everything else reads
/// without a lock.
pub(crate) struct Fronts {
    fronts: Box<[AtomicI64]>,
    /// The bound packed with its version ([`pack_bound`]).
    min_front: AtomicU64,
}

impl Fronts {
    /// `shards` empty fronts.
    pub fn new(shards: usize) -> Self {
        Fronts {
            fronts: (0..shards).map(|_| AtomicI64::new(i64::MAX)).collect(),
            min_front: AtomicU64::new(pack_bound(i64::MAX, 0)),
        }
    }

    /// Shard `i`'s published front.
    pub fn front(&self, i: usize) -> i64 {
        self.fronts[i].load(Ordering::Acquire)
    }

    /// The packed bound (read its time with [`bound_ms`]); pass it to [`Fronts::refresh`] after a scan.
    pub fn bound(&self) -> u64 {
        self.min_front.load(Ordering::SeqCst)
    }

    /// Publishes `t` as shard `i`'s front; called with the shard locked.
    pub fn publish(&self, i: usize, t: i64) {
        if self.fronts[i].swap(t, Ordering::SeqCst) == t {
            return;
        }
        // Lower the bound to `t` if needed, and bump its version either way.
        let mut cur = self.min_front.load(Ordering::SeqCst);
        loop {
            let next = pack_bound(bound_ms(cur).min(t), (cur & VERSION_MASK) + 1);
            match self.min_front.compare_exchange_weak(
                cur,
                next,
                Ordering::SeqCst,
                Ordering::SeqCst,
            ) {
                Ok(_) => return,
                Err(seen) => cur = seen,
            }
        }
    }

    /// Raises the bound to the oldest published front, unless a front changed since `seen` (from
    /// [`Fronts::bound`]) was read: then the bound stays as that change left it, still a lower bound.
    pub fn refresh(&self, seen: u64) {
        let _ = self.min_front.compare_exchange(
            seen,
            pack_bound(self.oldest_ms(), (seen & VERSION_MASK) + 1),
            Ordering::SeqCst,
            Ordering::SeqCst,
        );
    }

    /// The oldest published front (`i64::MAX` when every shard is empty).
    pub fn oldest_ms(&self) -> i64 {
        self.fronts
            .iter()
            .map(|f| f.load(Ordering::SeqCst))
            .min()
            .unwrap_or(i64::MAX)
    }

    /// The shard whose oldest entry is the oldest of all, leaving `own` out when `skip_own`; `None` when every
    /// shard considered is empty.
    ///
    /// Ties (entries created in the same millisecond, common at hundreds of thousands of decisions a second)
    /// go to the first tied shard after `own`, counting round from it, and to `own` last: inserters on
    /// different shards so evict from different shards, where a fixed order sent every one of them to the
    /// same lock (two threads evicting at capacity ran at 1.1–1.8× one thread, 1.9× without eviction).
    pub fn oldest(&self, own: usize, skip_own: bool) -> Option<usize> {
        let n = self.fronts.len();
        self.fronts
            .iter()
            .enumerate()
            .filter(|&(i, _)| !(skip_own && i == own))
            // By time, then by the distance round from `own`: 0 for the shard after it, n - 1 for `own` itself.
            .map(|(i, f)| (f.load(Ordering::Relaxed), (i + n - own - 1) % n, i))
            .filter(|&(t, _, _)| t != i64::MAX)
            .min()
            .map(|(_, _, i)| i)
    }
}
