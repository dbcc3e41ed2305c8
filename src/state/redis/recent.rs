//! The identities one engine saw decided on Redis, and until when each is live: a hint, never an answer.
//!
//! A repeat of an identity this table holds is asked of Redis with one `GET` of its action key, which the
//! server answers in a fraction of what the claim script costs (the claim builds the request's history reads
//! before it can find the identity decided). Everything the repeat answers still comes from Redis: its
//! current state (an `update_action` made on any engine), its fingerprint (a conflict), its liveness. A hint
//! that misses (the action gone from Redis, or another identity's slot) falls back to the claim, which is
//! what every call without a hint makes.
//!
//! The table is fixed at [`SLOTS`] words (512 KiB), direct-mapped by the identity's hash, written and read
//! with relaxed atomics: two engines' threads racing on one slot leave one of their hints, or none.

use std::sync::atomic::{AtomicU64, Ordering};

/// How many identities the table holds at most.
pub(crate) const SLOTS: usize = 1 << 16;

/// A direct-mapped table of identity hashes and the second their action expires.
pub(crate) struct Recent {
    slots: Box<[AtomicU64]>,
}

impl Recent {
    pub fn new() -> Self {
        Recent {
            slots: (0..SLOTS).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    /// The slot of an identity and the word that says it: the hash's high 32 bits, then the second (of the
    /// epoch) its action stops being live, rounded down. `None` when that second does not fit 32 bits (after
    /// 2106): such an identity is never hinted.
    fn word(identity: u128, until_ms: i64) -> (usize, Option<u64>) {
        let at = (identity as u64 as usize) & (SLOTS - 1);
        let tag = (identity >> 96) as u64;
        let until_s = u32::try_from(until_ms.div_euclid(1000)).ok();
        (at, until_s.map(|s| tag << 32 | u64::from(s)))
    }

    /// Notes that `identity` is decided and live until `until_ms` (its creation plus the idempotency TTL).
    pub fn note(&self, identity: u128, until_ms: i64) {
        if let (at, Some(word)) = Self::word(identity, until_ms) {
            if let Some(slot) = self.slots.get(at) {
                slot.store(word, Ordering::Relaxed);
            }
        }
    }

    /// Whether `identity` was noted and is still live at `now_ms` (never before the epoch). It errs early only:
    /// a hint expires at the whole second before its action does.
    pub fn holds(&self, identity: u128, now_ms: i64) -> bool {
        let (at, _) = Self::word(identity, 0);
        let Some(word) = self.slots.get(at).map(|s| s.load(Ordering::Relaxed)) else {
            return false;
        };
        let tag = (identity >> 96) as u64;
        word >> 32 == tag && now_ms >= 0 && now_ms / 1000 < i64::from(word as u32)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_noted_identity_is_held_until_the_second_before_it_expires() {
        let r = Recent::new();
        let id = 0x1234_5678_9abc_def0_0fed_cba9_8765_4321_u128;
        assert!(!r.holds(id, 0), "an empty table holds nothing");
        r.note(id, 10_500);
        assert!(r.holds(id, 0));
        assert!(r.holds(id, 9_999));
        assert!(!r.holds(id, 10_000), "the whole second before 10.5 s");
        assert!(!r.holds(id, 10_499));
        // Another identity of the same slot (its low bits) but another tag is not held, and replaces it.
        let other = id ^ (1u128 << 100);
        assert!(!r.holds(other, 0));
        r.note(other, 20_000);
        assert!(r.holds(other, 0) && !r.holds(id, 0));
        // Another slot is untouched.
        assert!(!r.holds(id ^ 1, 0));
    }

    #[test]
    fn times_outside_32_bit_seconds_are_never_hinted() {
        let r = Recent::new();
        let id = 77u128 << 96 | 5;
        r.note(id, i64::MAX);
        assert!(!r.holds(id, 0));
        r.note(id, -5_000);
        assert!(!r.holds(id, -10_000), "before the epoch");
        r.note(id, 4_000);
        assert!(!r.holds(id, i64::MIN) && !r.holds(id, i64::MAX));
        assert!(r.holds(id, 3_999));
    }
}
