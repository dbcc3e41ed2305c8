//! The action store: every tracked action under (user, action, idempotency key), bounded in time and count,
//! with single-flight first decisions.
//!
//! # Design
//! - The map is a `DashMap` keyed by the 128-bit xxh3 hash of the identity, hashed from the borrowed strings,
//!   so a lookup allocates nothing. The stored slot keeps the identity itself, and a hit is compared to it, so
//!   a hash collision can never return another user's action.
//! - A new identity inserts an empty slot under the shard lock, releases the lock, and then decides inside the
//!   slot's `OnceLock`: concurrent callers with the same identity wait on that cell and the rules run once. No
//!   map lock is held while rules run.
//! - Retention: a FIFO of (key, slot sequence number, time) in insertion order. Inserting pops from its front
//!   actions older than the TTL, and more while the store holds more than its capacity (oldest first), at most
//!   [`EVICT_PER_INSERT`] per insert: a backlog (the capacity lowered by a reload, a jump in event time) is
//!   worked off over the next inserts, never by one caller. A lookup also treats an expired action as absent,
//!   so expiry is exact even between inserts. An entry removes only the slot it was pushed for (same sequence
//!   number): a key inserted again after expiry has its own.
//! - Tokens: a second map from the token's hash to its slot. A token lives exactly as long as its slot is in
//!   the store; see [`Store::register_token`] for how eviction and registration, which race, never leave an
//!   orphan behind. How a token is made, hashed and compared is `token.rs`'s.
//! - Both maps bucket their keys with the engine's secret keys (`hash::BucketKeys`).

use std::collections::VecDeque;
use std::sync::atomic::{fence, AtomicBool, AtomicI64, AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use crate::decide::Decision;
use crate::hash::{identity_hash, BucketKeys, PreHashedMap, H128};
use crate::response::{RuleError, RuleId, State};
use crate::signals::Footprint;
use crate::time::{DurationMs, EpochMs};
use crate::token;

type Map<V> = PreHashedMap<H128, V>;

pub(crate) use crate::config::EVICT_PER_INSERT;

/// One stored action.
pub(crate) struct Slot {
    /// `user_id`, `action` and the idempotency key, one after the other.
    ident: Box<str>,
    user_len: u32,
    action_len: u32,
    /// Unique per slot in this store: tells a retention entry whether it still stands for the stored slot.
    seq: u64,
    pub fingerprint: H128,
    pub created: EpochMs,
    pub decided: OnceLock<Decided>,
    state: AtomicU8,
    state_updated_ms: AtomicI64,
    token_used: AtomicBool,
    /// The hash of the slot's challenge token, set just before the token is registered.
    token_hash: OnceLock<H128>,
}

/// What the first decision fixed for an action, kept compact: most actions are an `ALLOW` or `BLOCK` with no
/// shadow matches, errors, token or url, and store only the outcome and their matching rule ids.
pub(crate) struct Decided {
    outcome: State,
    rule_ids: Box<[RuleId]>,
    rest: Option<Box<Rest>>,
}

/// The parts of a decision most actions do not have.
#[derive(Default)]
struct Rest {
    /// Set only when the deciding rule is not the first of `rule_ids` (resolution never does that today).
    priority_rule_id: Option<Option<RuleId>>,
    shadow_rule_ids: Vec<RuleId>,
    errors: Vec<RuleError>,
    token: Option<Box<str>>,
    token_expires: EpochMs,
    url: Option<Box<str>>,
    /// Kept only for actions that can still move to `CHALLENGE_SUCCEEDED` or `REVIEW_SUCCEEDED`.
    footprint: Option<Footprint>,
}

impl Decided {
    pub fn new(
        decision: Decision,
        token: Option<String>,
        token_expires: EpochMs,
        url: Option<String>,
        footprint: Footprint,
    ) -> Decided {
        let Decision {
            state,
            rule_ids,
            priority_rule_id,
            shadow_rule_ids,
            errors,
        } = decision;
        let pending = matches!(state, State::ChallengeRequired | State::Review);
        let rest = Rest {
            priority_rule_id: (priority_rule_id.as_ref() != rule_ids.first())
                .then_some(priority_rule_id),
            shadow_rule_ids,
            errors,
            token: token.map(String::into_boxed_str),
            token_expires,
            url: url.map(String::into_boxed_str),
            footprint: pending.then_some(footprint),
        };
        let needed = rest.priority_rule_id.is_some()
            || !rest.shadow_rule_ids.is_empty()
            || !rest.errors.is_empty()
            || rest.token.is_some()
            || rest.url.is_some()
            || rest.footprint.is_some();
        Decided {
            outcome: state,
            rule_ids: rule_ids.into_boxed_slice(),
            rest: needed.then(|| Box::new(rest)),
        }
    }

    /// The first decision's state.
    pub fn outcome(&self) -> State {
        self.outcome
    }
    pub fn rule_ids(&self) -> &[RuleId] {
        &self.rule_ids
    }
    pub fn priority_rule_id(&self) -> Option<&RuleId> {
        match self.rest.as_ref().and_then(|r| r.priority_rule_id.as_ref()) {
            Some(explicit) => explicit.as_ref(),
            None => self.rule_ids.first(),
        }
    }
    pub fn shadow_rule_ids(&self) -> &[RuleId] {
        self.rest.as_ref().map_or(&[], |r| &r.shadow_rule_ids)
    }
    pub fn errors(&self) -> &[RuleError] {
        self.rest.as_ref().map_or(&[], |r| &r.errors)
    }
    pub fn token(&self) -> Option<&str> {
        self.rest.as_ref()?.token.as_deref()
    }
    /// When the token expires; meaningless without a token.
    pub fn token_expires(&self) -> EpochMs {
        self.rest.as_ref().map_or(EpochMs::MIN, |r| r.token_expires)
    }
    pub fn url(&self) -> Option<&str> {
        self.rest.as_ref()?.url.as_deref()
    }
    /// What a successful challenge or review makes known; `None` for actions decided otherwise.
    pub fn footprint(&self) -> Option<&Footprint> {
        self.rest.as_ref()?.footprint.as_ref()
    }
}

impl Slot {
    fn new(
        user_id: &str,
        action: &str,
        key: &str,
        seq: u64,
        fingerprint: H128,
        now: EpochMs,
    ) -> Self {
        let mut ident = String::with_capacity(user_id.len() + action.len() + key.len());
        ident.push_str(user_id);
        ident.push_str(action);
        ident.push_str(key);
        Slot {
            ident: ident.into_boxed_str(),
            user_len: user_id.len() as u32,
            action_len: action.len() as u32,
            seq,
            fingerprint,
            created: now,
            decided: OnceLock::new(),
            state: AtomicU8::new(State::Allow.to_u8()),
            state_updated_ms: AtomicI64::new(now.ms()),
            token_used: AtomicBool::new(false),
            token_hash: OnceLock::new(),
        }
    }

    pub fn user_id(&self) -> &str {
        self.ident.get(..self.user_len as usize).unwrap_or("")
    }
    pub fn action(&self) -> &str {
        let u = self.user_len as usize;
        self.ident
            .get(u..u + self.action_len as usize)
            .unwrap_or("")
    }
    pub fn key(&self) -> &str {
        self.ident
            .get((self.user_len + self.action_len) as usize..)
            .unwrap_or("")
    }
    fn is(&self, user_id: &str, action: &str, key: &str) -> bool {
        self.user_id() == user_id && self.action() == action && self.key() == key
    }

    /// The current state. Before the first decision is stored this is meaningless: callers read it only
    /// after `decided` is set (the decision's state is written before the cell is filled).
    pub fn state(&self) -> State {
        State::from_u8(self.state.load(Ordering::Acquire))
    }
    pub fn state_updated(&self) -> EpochMs {
        EpochMs::from_ms(self.state_updated_ms.load(Ordering::Acquire))
    }
    pub fn init_state(&self, s: State) {
        self.state.store(s.to_u8(), Ordering::Release);
    }

    /// Moves the state from `from` to `to` if it is still `from`.
    pub fn transition(&self, from: State, to: State, now: EpochMs) -> bool {
        let ok = self
            .state
            .compare_exchange(
                from.to_u8(),
                to.to_u8(),
                Ordering::AcqRel,
                Ordering::Acquire,
            )
            .is_ok();
        if ok {
            self.state_updated_ms.store(now.ms(), Ordering::Release);
        }
        ok
    }

    /// Marks the token used; true only the first time.
    pub fn use_token(&self) -> bool {
        !self.token_used.swap(true, Ordering::AcqRel)
    }
}

/// The result of looking an identity up for `track`.
pub(crate) enum Found {
    /// The identity was new: this caller inserted the slot.
    New(Arc<Slot>),
    /// The identity was already stored (possibly still being decided by another caller).
    Existing(Arc<Slot>),
}

/// The bounded action store.
pub(crate) struct Store {
    map: Map<Arc<Slot>>,
    tokens: Map<Arc<Slot>>,
    order: Mutex<VecDeque<Entry>>,
    capacity: AtomicUsize,
    next_seq: AtomicU64,
}

/// A retention entry: the slot stored under `key` with sequence number `seq`, created at `created`.
struct Entry {
    key: H128,
    seq: u64,
    created: EpochMs,
}

impl Store {
    /// An empty store bucketing its keys with `keys`.
    pub fn new(capacity: usize, keys: BucketKeys) -> Self {
        Store {
            map: Map::with_hasher(keys),
            tokens: Map::with_hasher(keys),
            order: Mutex::new(VecDeque::new()),
            capacity: AtomicUsize::new(capacity.max(1)),
            next_seq: AtomicU64::new(0),
        }
    }

    pub fn set_capacity(&self, capacity: usize) {
        self.capacity.store(capacity.max(1), Ordering::Relaxed);
    }

    /// How many actions are stored.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Looks up a live (unexpired) action.
    pub fn get(
        &self,
        user_id: &str,
        action: &str,
        key: &str,
        now: EpochMs,
        ttl: DurationMs,
    ) -> Option<Arc<Slot>> {
        let h = identity_hash(user_id, action, key);
        let slot = self.map.get(&h).map(|s| Arc::clone(&s))?;
        (slot.is(user_id, action, key) && !slot.created.expired(ttl, now)).then_some(slot)
    }

    /// Finds the action for `track`, inserting a fresh slot when the identity is new or its action expired.
    /// `Err(slot)` when the hash is taken by another identity (a 128-bit collision).
    pub fn get_or_insert(
        &self,
        user_id: &str,
        action: &str,
        key: &str,
        fingerprint: H128,
        now: EpochMs,
        ttl: DurationMs,
    ) -> Result<Found, Arc<Slot>> {
        let h = identity_hash(user_id, action, key);
        // Fast path: a live hit takes only a shard read lock.
        if let Some(s) = self.map.get(&h) {
            let s = Arc::clone(&s);
            if !s.created.expired(ttl, now) {
                return if s.is(user_id, action, key) {
                    Ok(Found::Existing(s))
                } else {
                    Err(s)
                };
            }
        }
        let seq = self.next_seq.fetch_add(1, Ordering::Relaxed);
        let fresh = Arc::new(Slot::new(user_id, action, key, seq, fingerprint, now));
        let replaced = match self.map.entry(h) {
            dashmap::Entry::Occupied(mut e) => {
                let s = Arc::clone(e.get());
                if !s.created.expired(ttl, now) {
                    return if s.is(user_id, action, key) {
                        Ok(Found::Existing(s))
                    } else {
                        Err(s)
                    };
                }
                // The stored action expired: it is gone, so this is a new action (and no conflict).
                e.insert(Arc::clone(&fresh));
                Some(s)
            }
            dashmap::Entry::Vacant(e) => {
                e.insert(Arc::clone(&fresh));
                None
            }
        };
        if let Some(old) = replaced {
            self.forget_token(&old);
        }
        self.admit(h, seq, now, ttl);
        Ok(Found::New(fresh))
    }

    /// Records a new slot in the retention order, and evicts what is expired or over capacity, at most
    /// [`EVICT_PER_INSERT`] entries.
    fn admit(&self, key: H128, seq: u64, now: EpochMs, ttl: DurationMs) {
        let capacity = self.capacity.load(Ordering::Relaxed);
        let mut evict: Vec<Entry> = Vec::new();
        {
            // A poisoned lock only means another thread panicked while holding it; the queue is still whole.
            let mut order = self.order.lock().unwrap_or_else(|p| p.into_inner());
            order.push_back(Entry {
                key,
                seq,
                created: now,
            });
            while let Some(front) = order.front() {
                if evict.len() < EVICT_PER_INSERT
                    && (order.len() > capacity || front.created.expired(ttl, now))
                {
                    if let Some(e) = order.pop_front() {
                        evict.push(e);
                    }
                } else {
                    break;
                }
            }
        }
        for e in evict {
            // Remove only the slot this entry stands for: a key inserted again after expiry has its own entry.
            if let Some((_, s)) = self.map.remove_if(&e.key, |_, s| s.seq == e.seq) {
                self.forget_token(&s);
            }
        }
    }

    /// Removes `slot` if it is still the action stored for its identity: its decision could not be completed,
    /// so the next call with the identity is a new action.
    pub fn withdraw(&self, slot: &Arc<Slot>) {
        let h = identity_hash(slot.user_id(), slot.action(), slot.key());
        if let Some((_, s)) = self.map.remove_if(&h, |_, s| Arc::ptr_eq(s, slot)) {
            self.forget_token(&s);
        }
    }

    /// Registers the challenge token of `slot`, which is being decided.
    ///
    /// INVARIANT: the token map holds a token only while its slot is in the action map. Eviction and
    /// registration race (a slot can be evicted while its first caller is still deciding), so both sides
    /// publish first and check second, with a sequentially consistent fence between: registration sets
    /// `token_hash`, inserts the token, then checks the slot is still stored (and withdraws the token if not);
    /// eviction removes the slot, then reads `token_hash` and removes the token. Whichever runs second sees
    /// the other's write, so no token outlives its slot.
    pub fn register_token(&self, token: &str, slot: &Arc<Slot>) {
        let th = token::token_hash(token);
        if slot.token_hash.set(th).is_err() {
            return;
        }
        self.tokens.insert(th, Arc::clone(slot));
        fence(Ordering::SeqCst);
        let h = identity_hash(slot.user_id(), slot.action(), slot.key());
        let stored = self
            .map
            .get(&h)
            .is_some_and(|s| Arc::ptr_eq(s.value(), slot));
        if !stored {
            self.tokens.remove_if(&th, |_, s| Arc::ptr_eq(s, slot));
        }
    }

    /// The live action a token belongs to, with the token compared in full (in constant time).
    pub fn by_token(&self, token: &str, now: EpochMs, ttl: DurationMs) -> Option<Arc<Slot>> {
        let slot = self
            .tokens
            .get(&token::token_hash(token))
            .map(|s| Arc::clone(&s))?;
        if slot.created.expired(ttl, now) {
            return None;
        }
        let stored = slot.decided.get()?.token()?;
        token::same_token(stored, token).then_some(slot)
    }

    /// How many challenge tokens are registered (one per stored action that has one).
    #[cfg(test)]
    pub fn tokens_len(&self) -> usize {
        self.tokens.len()
    }

    /// Withdraws the token of a slot that was just removed from the action map (see `register_token`).
    fn forget_token(&self, slot: &Arc<Slot>) {
        fence(Ordering::SeqCst);
        if let Some(&th) = slot.token_hash.get() {
            self.tokens.remove_if(&th, |_, s| Arc::ptr_eq(s, slot));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TTL_MS: i64 = 60_000;
    const TTL: DurationMs = DurationMs::from_ms(TTL_MS);
    const TTL_END: EpochMs = EpochMs::from_ms(TTL_MS);

    fn at(ms: i64) -> EpochMs {
        EpochMs::from_ms(ms)
    }

    fn store(capacity: usize) -> Store {
        Store::new(capacity, crate::hash::EngineKeys::draw().unwrap().buckets)
    }

    fn decide_with_token(store: &Store, slot: &Arc<Slot>, token: &str) {
        store.register_token(token, slot);
        let _ = slot.decided.set(Decided::new(
            Decision {
                state: State::ChallengeRequired,
                rule_ids: Vec::new(),
                priority_rule_id: None,
                shadow_rule_ids: Vec::new(),
                errors: Vec::new(),
            },
            Some(token.into()),
            EpochMs::MAX,
            None,
            Default::default(),
        ));
    }

    fn insert(store: &Store, key: &str, now_ms: i64) -> Arc<Slot> {
        match store.get_or_insert("u", "a", key, 0u128.into(), at(now_ms), TTL) {
            Ok(Found::New(s)) => s,
            _ => panic!("`{key}` should be new"),
        }
    }

    #[test]
    fn tokens_never_outlive_their_actions() {
        let store = store(4);
        for i in 0..100 {
            let slot = insert(&store, &format!("k{i}"), i);
            decide_with_token(&store, &slot, &format!("t{i}"));
            assert!(store.len() <= 4);
            assert_eq!(store.tokens_len(), store.len());
        }
        assert!(store.by_token("t99", at(100), TTL).is_some());
        assert!(store.by_token("t0", at(100), TTL).is_none());
    }

    #[test]
    fn a_token_registered_after_its_action_was_evicted_is_withdrawn() {
        let store = store(1);
        let first = insert(&store, "k1", 0);
        // A second action evicts the first while its caller is still deciding.
        let second = insert(&store, "k2", 1);
        decide_with_token(&store, &first, "t1");
        decide_with_token(&store, &second, "t2");
        assert_eq!(store.tokens_len(), 1);
        assert!(store.by_token("t1", at(2), TTL).is_none());
        assert!(store.by_token("t2", at(2), TTL).is_some());
    }

    #[test]
    fn an_expired_action_is_replaced_and_its_token_forgotten() {
        let store = store(10);
        let old = insert(&store, "k", 0);
        decide_with_token(&store, &old, "t-old");
        assert!(store.by_token("t-old", at(TTL_MS - 1), TTL).is_some());
        assert!(store.by_token("t-old", TTL_END, TTL).is_none());
        let fresh = insert(&store, "k", TTL_MS);
        assert!(!Arc::ptr_eq(&old, &fresh));
        assert_eq!(store.tokens_len(), 0);
        assert_eq!(store.len(), 1);
        // The retention entry of the expired slot must not remove its successor.
        insert(&store, "other", TTL_MS + 1);
        assert!(store.get("u", "a", "k", at(TTL_MS + 1), TTL).is_some());
    }

    #[test]
    fn a_backlog_is_evicted_a_few_entries_per_insert() {
        let store = store(1000);
        for i in 0..100 {
            insert(&store, &format!("k{i}"), 0);
        }
        store.set_capacity(1);
        insert(&store, "new", 1);
        assert_eq!(store.len(), 101 - EVICT_PER_INSERT);
        // The same bound holds for expiry: everything is expired at TTL + 1.
        insert(&store, "later", TTL_MS + 1);
        assert_eq!(store.len(), 102 - 2 * EVICT_PER_INSERT);
        for i in 0..10 {
            insert(&store, &format!("late{i}"), TTL_MS + 2);
        }
        assert_eq!(store.len(), 1);
        assert!(store.get("u", "a", "late9", at(TTL_MS + 2), TTL).is_some());
    }

    #[test]
    fn expired_actions_are_evicted_on_the_next_insert() {
        let store = store(100);
        for i in 0..10 {
            insert(&store, &format!("k{i}"), i);
        }
        assert_eq!(store.len(), 10);
        insert(&store, "late", TTL_MS + 5);
        // k0..=k5 expired (created at 0..=5, TTL 60 s); k6..=k9 and `late` remain.
        assert_eq!(store.len(), 5);
    }

    fn decision(state: State, ids: &[&str], shadow: &[&str]) -> Decision {
        let ids: Vec<RuleId> = ids.iter().map(|i| RuleId::new(i)).collect();
        Decision {
            state,
            priority_rule_id: ids.first().cloned(),
            rule_ids: ids,
            shadow_rule_ids: shadow.iter().map(|i| RuleId::new(i)).collect(),
            errors: Vec::new(),
        }
    }

    #[test]
    fn a_plain_decision_is_stored_compactly_and_read_back_whole() {
        let d = Decided::new(
            decision(State::Block, &["a", "b"], &[]),
            None,
            at(5),
            None,
            Footprint::default(),
        );
        assert!(d.rest.is_none());
        assert_eq!(d.outcome(), State::Block);
        assert_eq!(d.rule_ids(), [RuleId::new("a"), RuleId::new("b")]);
        assert_eq!(d.priority_rule_id(), Some(&RuleId::new("a")));
        assert!(d.shadow_rule_ids().is_empty() && d.errors().is_empty());
        assert_eq!((d.token(), d.url(), d.footprint()), (None, None, None));
        // The store's memory per action depends on these staying small.
        assert!(
            std::mem::size_of::<Slot>() <= 136,
            "{}",
            std::mem::size_of::<Slot>()
        );
        assert!(std::mem::size_of::<Decided>() <= 32);
    }

    #[test]
    fn every_other_part_survives() {
        let mut dec = decision(State::ChallengeRequired, &[], &["s"]);
        dec.errors.push(RuleError {
            rule_id: RuleId::new("e"),
            kind: crate::RuleErrorKind::Runtime,
            message: "m".into(),
        });
        let fp = Footprint {
            at_ms: 7,
            ..Footprint::default()
        };
        let d = Decided::new(dec, Some("t".into()), at(9), Some("u".into()), fp);
        assert_eq!(d.priority_rule_id(), None);
        assert_eq!(d.shadow_rule_ids(), [RuleId::new("s")]);
        assert_eq!(d.errors()[0].message, "m");
        assert_eq!(
            (d.token(), d.url(), d.token_expires()),
            (Some("t"), Some("u"), at(9))
        );
        assert_eq!(d.footprint(), Some(&fp));
        // A deciding rule that is not the first listed is kept as given.
        let mut odd = decision(State::Allow, &["a"], &[]);
        odd.priority_rule_id = None;
        let d = Decided::new(odd, None, at(0), None, fp);
        assert_eq!(d.priority_rule_id(), None);
        assert_eq!(d.footprint(), None);
    }
}
