//! The action store: every tracked action under (user, action, idempotency key), bounded in time and count,
//! with single-flight first decisions.
//!
//! # Design
//! - The map is a lock-free `papaya::HashMap` keyed by the keyed 128-bit SipHash-1-3 of the identity
//!   (`hash::identity_hash`, under a secret derived from the engine's fingerprint key), hashed from the borrowed
//!   strings, so a lookup allocates nothing. The hash is the identity: the store keeps no identity strings
//!   (the caller of every call has them), except for actions with a challenge token, whose identity
//!   `validate_challenge` answers with. Keyed, a caller cannot search for two identities that share a hash;
//!   an accidental collision has probability 2⁻¹²⁸ per pair.
//! - The slot lives in the map's own entry (one allocation per action, no `Arc`). A lookup takes no lock and
//!   writes no shared memory: it pins an epoch [`Guard`] (a per-thread reservation) and borrows the slot under
//!   it ([`Store::get`]). Memory removed from the map is freed only after every guard that could see it is
//!   dropped.
//! - The map resizes in papaya's blocking mode: an insert that finds the table full copies it at once
//!   (helped by concurrent inserters), so lookups after growth probe one table, never a chain of half-moved
//!   ones (papaya's incremental mode left lookups probing hundreds of slots after growth; `store` bench group).
//! - A new identity inserts an empty slot with one compare-and-swap, and then decides inside the slot's
//!   `OnceLock`: concurrent callers with the same identity block on that cell (they park in the OS, they do
//!   not spin) and the rules run once. No lock is held while rules run.
//! - Retention is sharded: the store keeps up to [`MAX_SHARDS`] FIFOs of (key, slot sequence number, time),
//!   chosen by a keyed hash of the identity, and publishes the time of each one's oldest entry. An insert
//!   locks its own shard to push its entry, then evicts the oldest entries of all (the shard with the oldest
//!   published front; among equally old fronts, the first after its own, so concurrent inserters spread out)
//!   while they are older than the TTL or the store holds more than its capacity, at most
//!   [`EVICT_PER_INSERT`] per insert. An insert that finds the store within capacity and a published lower
//!   bound on all fronts unexpired (the common case) evicts nothing and scans no front (`store/bound.rs`,
//!   model-checked by `model/`).
//!   A backlog (the capacity lowered by a reload, a jump in event time) is
//!   worked off over the next inserts, never by one caller. No lock is global: an insert locks its own shard
//!   and, only when it evicts, the shard it evicts from. A lookup also treats an expired action as absent, so
//!   expiry is exact even between inserts. An entry removes only the slot it was pushed for (same sequence
//!   number, unique per shard): a key inserted again after expiry has its own.
//! - Tokens: a second lock-free map from the token's hash to its action's key. A token lives exactly as long
//!   as its slot is in the store; see [`Store::register_token`] for how eviction and registration, which race,
//!   never leave an orphan behind. How a token is made, hashed and compared is `token.rs`'s.
//! - Both maps bucket their keys with the engine's secret keys (`hash::BucketKeys`).
//!
//! # Concurrent calls
//! - [`Store::get`] and [`Store::by_token`] never block and never fail spuriously: they see every insert that
//!   completed before they started, and may or may not see one that is concurrent.
//! - [`Store::get_or_insert`] is linearizable per identity: of concurrent callers with one new identity,
//!   exactly one gets `Found::New` and every other gets `Found::Existing` with that same slot.
//! - The capacity is exact between calls: after an insert returns, and no other is running, the store holds
//!   at most the capacity (or is working off a backlog, [`EVICT_PER_INSERT`] per insert). Concurrent inserts
//!   may each see the store one over before the other's eviction, so it can briefly hold one action more per
//!   concurrent insert. Eviction is oldest-first by creation time across all shards.
//! - An action evicted or withdrawn while another thread holds it stays valid for that thread: memory is
//!   freed only when every [`Guard`] that could reach it is gone.

use std::collections::VecDeque;
use std::hash::BuildHasher;
use std::sync::atomic::{fence, AtomicBool, AtomicI64, AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};

use crate::decide::Decision;
use crate::hash::{identity_hash, BucketKeys, EngineKeys, IdentityKey, H128};
use crate::response::{RuleError, RuleId, State};
use crate::signals::Footprint;
use crate::time::{DurationMs, EpochMs};
use crate::token;
use bound::{bound_ms, Fronts};
use papaya::{Compute, Operation, ResizeMode};

mod bound;

/// The atomics `bound.rs` names (a model checker substitutes its own).
mod sync {
    pub(super) use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
}

type Map<V> = papaya::HashMap<H128, V, BucketKeys>;

/// A pinned epoch of the action map: slots borrowed from [`Store::get`] live as long as it does. Pinning
/// writes only this thread's reservation; hold it for one call, not across calls (it delays freeing what the
/// map removes meanwhile).
pub(crate) type Guard<'s> = papaya::LocalGuard<'s>;

/// The most retention shards a store uses.
pub(crate) const MAX_SHARDS: usize = 64;

/// A store gets one retention shard per this many actions of capacity (at least one, at most
/// [`MAX_SHARDS`]).
const ACTIONS_PER_SHARD: usize = 4096;

fn map<V>(keys: BucketKeys) -> Map<V> {
    papaya::HashMap::builder()
        .hasher(keys)
        .resize_mode(ResizeMode::Blocking)
        .build()
}

pub(crate) use crate::config::EVICT_PER_INSERT;

/// One stored action, held in the map's entry under its key (the keyed hash of its identity).
pub(crate) struct Slot {
    /// Unique per slot in this store: tells a retention entry whether it still stands for the stored slot.
    seq: u64,
    pub fingerprint: H128,
    pub created: EpochMs,
    pub decided: OnceLock<Decided>,
    state_updated_ms: AtomicI64,
    state: AtomicU8,
    token_used: AtomicBool,
}

/// What the first decision fixed for an action, kept compact: most actions are an `ALLOW` or `BLOCK` with no
/// shadow matches, errors, token or url, and store only the outcome and their matching rule ids.
pub(crate) struct Decided {
    outcome: State,
    /// The matching rule id when there is one (most decisions); two or more are in `rest`.
    rule_id: Option<RuleId>,
    rest: Option<Box<Rest>>,
}

/// The parts of a decision most actions do not have.
#[derive(Default)]
struct Rest {
    /// The matching rule ids when there are two or more.
    rule_ids: Box<[RuleId]>,
    /// Set only when the deciding rule is not the first of `rule_ids` (resolution never does that today).
    priority_rule_id: Option<Option<RuleId>>,
    shadow_rule_ids: Vec<RuleId>,
    errors: Vec<RuleError>,
    token: Option<Box<str>>,
    token_expires: EpochMs,
    url: Option<Box<str>>,
    /// Kept only for actions that can still move to `CHALLENGE_SUCCEEDED` or `REVIEW_SUCCEEDED`.
    footprint: Option<Footprint>,
    /// The identity of an action with a token (what `validate_challenge` answers with, from the token alone).
    identity: Option<Identity>,
}

/// `user_id`, `action` and the idempotency key, one after the other.
struct Identity {
    text: Box<str>,
    user_len: u32,
    action_len: u32,
}

impl Identity {
    fn new(user_id: &str, action: &str, key: &str) -> Self {
        let mut text = String::with_capacity(user_id.len() + action.len() + key.len());
        text.push_str(user_id);
        text.push_str(action);
        text.push_str(key);
        Identity {
            text: text.into_boxed_str(),
            user_len: user_id.len() as u32,
            action_len: action.len() as u32,
        }
    }

    fn parts(&self) -> (&str, &str, &str) {
        let (u, a) = (self.user_len as usize, self.action_len as usize);
        let part = |r: std::ops::Range<usize>| self.text.get(r).unwrap_or("");
        (part(0..u), part(u..u + a), part(u + a..self.text.len()))
    }
}

impl Decided {
    /// The stored form of `decision` for the action `identity` (user, action, key), which is kept only when
    /// there is a token.
    pub fn new(
        decision: Decision,
        identity: (&str, &str, &str),
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
        let (user_id, action, key) = identity;
        let priority_rule_id =
            (priority_rule_id.as_ref() != rule_ids.first()).then_some(priority_rule_id);
        let (rule_id, rule_ids) = if rule_ids.len() <= 1 {
            (rule_ids.into_iter().next(), Box::default())
        } else {
            (None, rule_ids.into_vec().into_boxed_slice())
        };
        let rest = Rest {
            rule_ids,
            priority_rule_id,
            shadow_rule_ids,
            errors,
            identity: token.is_some().then(|| Identity::new(user_id, action, key)),
            token: token.map(String::into_boxed_str),
            token_expires,
            url: url.map(String::into_boxed_str),
            footprint: pending.then_some(footprint),
        };
        let needed = !rest.rule_ids.is_empty()
            || rest.priority_rule_id.is_some()
            || !rest.shadow_rule_ids.is_empty()
            || !rest.errors.is_empty()
            || rest.token.is_some()
            || rest.url.is_some()
            || rest.footprint.is_some();
        Decided {
            outcome: state,
            rule_id,
            rest: needed.then(|| Box::new(rest)),
        }
    }

    /// The first decision's state.
    pub fn outcome(&self) -> State {
        self.outcome
    }
    pub fn rule_ids(&self) -> &[RuleId] {
        match &self.rest {
            Some(r) if !r.rule_ids.is_empty() => &r.rule_ids,
            _ => self.rule_id.as_slice(),
        }
    }
    pub fn priority_rule_id(&self) -> Option<&RuleId> {
        match self.rest.as_ref().and_then(|r| r.priority_rule_id.as_ref()) {
            Some(explicit) => explicit.as_ref(),
            None => self.rule_ids().first(),
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
    /// The action's user id, action and idempotency key: kept only for an action with a token.
    pub fn identity(&self) -> Option<(&str, &str, &str)> {
        self.rest.as_ref()?.identity.as_ref().map(Identity::parts)
    }
}

impl Slot {
    fn new(seq: u64, fingerprint: H128, now: EpochMs) -> Self {
        Slot {
            seq,
            fingerprint,
            created: now,
            decided: OnceLock::new(),
            state_updated_ms: AtomicI64::new(now.ms()),
            state: AtomicU8::new(State::Allow.to_u8()),
            token_used: AtomicBool::new(false),
        }
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

    /// Whether the token was used.
    pub fn token_used(&self) -> bool {
        self.token_used.load(Ordering::Acquire)
    }

    /// Sets what a state file says of a restored slot (before the slot is shared).
    pub fn restore(&self, state: State, updated: EpochMs, token_used: bool) {
        self.state.store(state.to_u8(), Ordering::Release);
        self.state_updated_ms.store(updated.ms(), Ordering::Release);
        self.token_used.store(token_used, Ordering::Release);
    }
}

/// The result of looking an identity up for `track`.
pub(crate) enum Found<'g> {
    /// The identity was new: this caller inserted the slot.
    New(&'g Slot),
    /// The identity was already stored (possibly still being decided by another caller).
    Existing(&'g Slot),
}

/// The bounded action store.
pub(crate) struct Store {
    map: Map<Slot>,
    /// Token hash → the key of the action the token belongs to.
    tokens: Map<H128>,
    /// Retention, a power of two of shards (see the module docs).
    shards: Box<[Shard]>,
    /// Each shard's oldest creation time and a lower bound on them (`bound.rs`): an insert that finds the
    /// store within capacity and the bound unexpired evicts nothing, without scanning the fronts.
    fronts: Fronts,
    /// The keys that choose a key's shard (so a caller cannot aim keys at one shard).
    keys: BucketKeys,
    /// The key of identity hashes.
    identity: IdentityKey,
    capacity: AtomicUsize,
}

/// One retention shard: its FIFO and the sequence numbers of its slots. Aligned to its own cache lines, so
/// inserts on different shards share none.
#[repr(align(128))]
struct Shard {
    order: Mutex<VecDeque<Entry>>,
    next_seq: AtomicU64,
}

impl Shard {
    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<Entry>> {
        // A poisoned lock only means another thread panicked while holding it; the queue is still whole.
        self.order.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A retention entry: the slot stored under `key` with sequence number `seq`, created at `created`.
struct Entry {
    key: H128,
    seq: u64,
    created: EpochMs,
}

impl Store {
    /// An empty store hashing identities and bucketing its keys with `keys`.
    pub fn new(capacity: usize, keys: &EngineKeys) -> Self {
        // The largest power of two at most capacity / ACTIONS_PER_SHARD (and at least 1).
        let wanted = (capacity / ACTIONS_PER_SHARD).clamp(1, MAX_SHARDS);
        let shards = 1usize << wanted.ilog2();
        Store {
            map: map(keys.buckets),
            tokens: map(keys.buckets),
            shards: (0..shards)
                .map(|_| Shard {
                    order: Mutex::new(VecDeque::new()),
                    next_seq: AtomicU64::new(0),
                })
                .collect(),
            fronts: Fronts::new(shards),
            keys: keys.buckets,
            identity: keys.identity(),
            capacity: AtomicUsize::new(capacity.max(1)),
        }
    }

    /// The key an action is stored under: the keyed hash of its identity. Hash it once per call.
    pub fn key(&self, user_id: &str, action: &str, idempotency_key: &str) -> H128 {
        identity_hash(&self.identity, user_id, action, idempotency_key)
    }

    /// Pins the action map for lookups (see [`Guard`]).
    pub fn guard(&self) -> Guard<'_> {
        self.map.guard()
    }

    /// The retention shard of `key`.
    fn shard(&self, key: H128) -> usize {
        (self.keys.hash_one(key) >> 32) as usize & (self.shards.len() - 1)
    }

    pub fn set_capacity(&self, capacity: usize) {
        self.capacity.store(capacity.max(1), Ordering::Relaxed);
    }

    /// How many actions are stored.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Looks up the live (unexpired) action stored under `key`, borrowed under `guard` (from [`Store::guard`]
    /// of this store).
    pub fn get<'g>(
        &self,
        guard: &'g Guard<'_>,
        key: H128,
        now: EpochMs,
        ttl: DurationMs,
    ) -> Option<&'g Slot> {
        let slot = self.map.get(&key, guard)?;
        (!slot.created.expired(ttl, now)).then_some(slot)
    }

    /// Finds the action under `key` for `track`, inserting a fresh slot when the identity is new or its action
    /// expired. The slot is borrowed under `guard` (from [`Store::guard`] of this store).
    pub fn get_or_insert<'g>(
        &self,
        guard: &'g Guard<'_>,
        key: H128,
        fingerprint: H128,
        now: EpochMs,
        ttl: DurationMs,
    ) -> Found<'g> {
        // Fast path: a live hit is a lock-free probe.
        if let Some(s) = self.map.get(&key, guard) {
            if !s.created.expired(ttl, now) {
                return Found::Existing(s);
            }
        }
        let shard = self.shard(key);
        let seq = self.shards[shard].next_seq.fetch_add(1, Ordering::Relaxed);
        let fresh = || Slot::new(seq, fingerprint, now);
        // A plain insert when the key is vacant (the common case); the dearer `compute` only to replace an
        // expired action.
        let (slot, replaced) = match self.map.try_insert_with(key, fresh, guard) {
            Ok(s) => (s, None),
            Err(current) if !current.created.expired(ttl, now) => return Found::Existing(current),
            Err(_) => match self.map.compute(
                key,
                |entry| match entry {
                    Some((_, s)) if !s.created.expired(ttl, now) => Operation::Abort(s),
                    // An expired action is gone, so this is a new action (and no conflict).
                    _ => Operation::Insert(fresh()),
                },
                guard,
            ) {
                Compute::Aborted(s) => return Found::Existing(s),
                Compute::Updated {
                    old: (_, old),
                    new: (_, new),
                } => (new, Some(old)),
                Compute::Inserted(_, new) => (new, None),
                // Never: the closure does not remove.
                Compute::Removed(_, old) => return Found::Existing(old),
            },
        };
        if let Some(old) = replaced {
            self.forget_token(key, old);
        }
        self.admit(shard, key, seq, now, ttl);
        Found::New(slot)
    }

    /// Records a new slot in its shard's retention order, and evicts what is expired or over capacity, oldest
    /// first across all shards, at most [`EVICT_PER_INSERT`] entries (see the module docs).
    fn admit(&self, own: usize, key: H128, seq: u64, now: EpochMs, ttl: DurationMs) {
        {
            let mut order = self.shards[own].lock();
            order.push_back(Entry {
                key,
                seq,
                created: now,
            });
            self.publish_front(own, &order);
        }
        let capacity = self.capacity.load(Ordering::Relaxed);
        // The common case: within capacity and nothing old enough to expire. One load each, no scan.
        let bound = self.fronts.bound();
        if self.map.len() <= capacity && !EpochMs::from_ms(bound_ms(bound)).expired(ttl, now) {
            return;
        }
        let mut evict = [const { None::<Entry> }; EVICT_PER_INSERT];
        let mut n = 0;
        // Whether the inserting shard holds nothing older than the new entry.
        let mut own_done = false;
        while n < EVICT_PER_INSERT {
            let over = self.map.len().saturating_sub(n) > capacity;
            let Some(i) = self.fronts.oldest(own, own_done) else {
                break;
            };
            let front = self.fronts.front(i);
            if !over && !EpochMs::from_ms(front).expired(ttl, now) {
                break;
            }
            let mut order = self.shards[i].lock();
            match order.front() {
                Some(e) if i == own && e.seq == seq => own_done = true,
                Some(e) if over || e.created.expired(ttl, now) => {
                    evict[n] = order.pop_front();
                    n += 1;
                }
                // Another caller changed this shard since its front was read: look again.
                _ => {}
            }
            self.publish_front(i, &order);
        }
        if n == 0 {
            self.fronts.refresh(bound);
        }
        let guard = self.map.guard();
        for e in evict.iter().take(n).flatten() {
            // Remove only the slot this entry stands for: a key inserted again after expiry has its own entry.
            if let Ok(Some((_, s))) = self.map.remove_if(&e.key, |_, s| s.seq == e.seq, &guard) {
                self.forget_token(e.key, s);
            }
        }
    }

    /// Publishes the creation time of shard `i`'s oldest entry (`i64::MAX` when it is empty); called with the
    /// shard locked.
    fn publish_front(&self, i: usize, order: &VecDeque<Entry>) {
        let t = order.front().map_or(i64::MAX, |e| e.created.ms());
        self.fronts.publish(i, t);
    }

    /// Removes `slot` if it is still the action stored under `key`: its decision could not be completed, so the
    /// next call with the identity is a new action.
    pub fn withdraw(&self, key: H128, slot: &Slot) {
        let guard = self.map.guard();
        if let Ok(Some((_, s))) = self.map.remove_if(&key, |_, s| s.seq == slot.seq, &guard) {
            self.forget_token(key, s);
        }
    }

    /// Registers the challenge token of `slot`, stored under `key`, once its decision (which holds the token)
    /// is set.
    ///
    /// INVARIANT: the token map holds a token only while its slot is in the action map. Eviction and
    /// registration race (a slot can be evicted while its first caller is still deciding), so both sides
    /// publish first and check second, with a sequentially consistent fence between: the decision holding the
    /// token is set, then registration inserts the token and checks the slot is still stored (and withdraws the
    /// token if not); eviction removes the slot, then reads the decision's token and removes it. Whichever runs
    /// second sees the other's write, so no token outlives its slot.
    pub fn register_token(&self, key: H128, slot: &Slot) {
        let Some(token) = slot.decided.get().and_then(Decided::token) else {
            return;
        };
        let th = token::token_hash(token);
        let tokens = self.tokens.pin();
        tokens.insert(th, key);
        fence(Ordering::SeqCst);
        let stored = self.map.pin().get(&key).is_some_and(|s| s.seq == slot.seq);
        if !stored {
            let _ = tokens.remove_if(&th, |_, k| *k == key);
        }
    }

    /// The live action a token belongs to, with the token compared in full (in constant time), borrowed under
    /// `guard`.
    pub fn by_token<'g>(
        &self,
        guard: &'g Guard<'_>,
        token: &str,
        now: EpochMs,
        ttl: DurationMs,
    ) -> Option<&'g Slot> {
        let key = *self.tokens.pin().get(&token::token_hash(token))?;
        let slot = self.get(guard, key, now, ttl)?;
        let stored = slot.decided.get()?.token()?;
        token::same_token(stored, token).then_some(slot)
    }

    /// Makes room for `n` more actions at once (a state file being loaded), so the map is not copied as it grows.
    pub fn reserve(&self, n: usize) {
        let guard = self.map.guard();
        self.map
            .reserve(n.min(self.capacity.load(Ordering::Relaxed)), &guard);
    }

    /// Puts every retention FIFO back in creation order, after actions were restored from several threads at
    /// once (each in creation order, but interleaved), and republishes the fronts.
    pub fn sort_retention(&self) {
        for (i, shard) in self.shards.iter().enumerate() {
            let mut order = shard.lock();
            order.make_contiguous().sort_by_key(|e| e.created);
            self.publish_front(i, &order);
        }
        self.fronts.refresh(self.fronts.bound());
    }

    /// Calls `f` with every stored action and its key (in no particular order), borrowed under `guard`, for
    /// snapshots.
    pub fn for_each<'g>(&self, guard: &'g Guard<'_>, mut f: impl FnMut(H128, &'g Slot)) {
        for (&key, slot) in self.map.iter(guard) {
            f(key, slot);
        }
    }

    /// How many challenge tokens are registered (one per stored action that has one).
    #[cfg(test)]
    pub fn tokens_len(&self) -> usize {
        self.tokens.len()
    }

    /// Withdraws the token of `slot`, just removed from under `key` in the action map (see `register_token`).
    fn forget_token(&self, key: H128, slot: &Slot) {
        fence(Ordering::SeqCst);
        if let Some(token) = slot.decided.get().and_then(Decided::token) {
            let _ = self
                .tokens
                .pin()
                .remove_if(&token::token_hash(token), |_, k| *k == key);
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
        Store::new(capacity, &crate::hash::EngineKeys::draw().unwrap())
    }

    fn key(store: &Store, k: &str) -> H128 {
        store.key("u", "a", k)
    }

    /// Decides the action stored under `k` as a challenge with `token`, and registers the token.
    fn decide_with_token(store: &Store, k: &str, slot: &Slot, token: &str) {
        let _ = slot.decided.set(Decided::new(
            Decision {
                state: State::ChallengeRequired,
                rule_ids: Default::default(),
                priority_rule_id: None,
                shadow_rule_ids: Vec::new(),
                errors: Vec::new(),
            },
            ("u", "a", k),
            Some(token.into()),
            EpochMs::MAX,
            None,
            Default::default(),
        ));
        store.register_token(key(store, k), slot);
    }

    /// Inserts the action `k`, which must be new, and returns its sequence number.
    fn insert(store: &Store, k: &str, now_ms: i64) -> u64 {
        let g = store.guard();
        match store.get_or_insert(&g, key(store, k), 0u128.into(), at(now_ms), TTL) {
            Found::New(s) => s.seq,
            Found::Existing(_) => panic!("`{k}` should be new"),
        }
    }

    /// Inserts the action `k` and decides it as a challenge with `token`.
    fn insert_with_token(store: &Store, k: &str, now_ms: i64, token: &str) {
        let g = store.guard();
        match store.get_or_insert(&g, key(store, k), 0u128.into(), at(now_ms), TTL) {
            Found::New(s) => decide_with_token(store, k, s, token),
            Found::Existing(_) => panic!("`{k}` should be new"),
        }
    }

    fn live(store: &Store, k: &str, now_ms: i64) -> bool {
        store
            .get(&store.guard(), key(store, k), at(now_ms), TTL)
            .is_some()
    }

    fn by_token(store: &Store, token: &str, now_ms: i64) -> bool {
        store
            .by_token(&store.guard(), token, at(now_ms), TTL)
            .is_some()
    }

    #[test]
    fn tokens_never_outlive_their_actions() {
        let store = store(4);
        for i in 0..100 {
            insert_with_token(&store, &format!("k{i}"), i, &format!("t{i}"));
            assert!(store.len() <= 4);
            assert_eq!(store.tokens_len(), store.len());
        }
        assert!(by_token(&store, "t99", 100));
        assert!(!by_token(&store, "t0", 100));
    }

    #[test]
    fn a_token_registered_after_its_action_was_evicted_is_withdrawn() {
        let store = store(1);
        let g = store.guard();
        let Found::New(first) =
            store.get_or_insert(&g, key(&store, "k1"), 0u128.into(), at(0), TTL)
        else {
            panic!("new")
        };
        // A second action evicts the first while its caller is still deciding.
        let Found::New(second) =
            store.get_or_insert(&g, key(&store, "k2"), 0u128.into(), at(1), TTL)
        else {
            panic!("new")
        };
        decide_with_token(&store, "k1", first, "t1");
        decide_with_token(&store, "k2", second, "t2");
        assert_eq!(store.tokens_len(), 1);
        assert!(!by_token(&store, "t1", 2));
        assert!(by_token(&store, "t2", 2));
        // The evicted slot is still readable by the thread that holds it.
        assert_eq!(first.decided.get().and_then(Decided::token), Some("t1"));
    }

    #[test]
    fn an_expired_action_is_replaced_and_its_token_forgotten() {
        let store = store(10);
        insert_with_token(&store, "k", 0, "t-old");
        assert!(by_token(&store, "t-old", TTL_MS - 1));
        assert!(store
            .by_token(&store.guard(), "t-old", TTL_END, TTL)
            .is_none());
        let old = store.map.pin().get(&key(&store, "k")).map(|s| s.seq);
        let fresh = insert(&store, "k", TTL_MS);
        assert_ne!(old, Some(fresh));
        assert_eq!(store.tokens_len(), 0);
        assert_eq!(store.len(), 1);
        // The retention entry of the expired slot must not remove its successor.
        insert(&store, "other", TTL_MS + 1);
        assert!(live(&store, "k", TTL_MS + 1));
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
        assert!(live(&store, "late9", TTL_MS + 2));
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

    #[test]
    fn shards_never_round_the_capacity_up_by_more_than_a_shard_each() {
        for capacity in [
            1, 4095, 4096, 12_288, 100_000, 400_000, 1_000_000, 10_000_000,
        ] {
            let s = store(capacity);
            let n = s.shards.len();
            assert!(n.is_power_of_two() && n <= MAX_SHARDS, "{capacity}: {n}");
            assert!(
                n == 1 || n <= capacity / ACTIONS_PER_SHARD,
                "{capacity}: {n}"
            );
        }
    }

    #[test]
    fn the_oldest_front_wins_and_ties_go_round_from_the_inserter_s_shard() {
        let f = bound::Fronts::new(4);
        for i in 0..4 {
            f.publish(i, 7);
        }
        // Ties: the shard after `own`, wrapping, so inserters on different shards evict from different ones.
        assert_eq!(f.oldest(0, false), Some(1));
        assert_eq!(f.oldest(1, false), Some(2));
        assert_eq!(f.oldest(3, false), Some(0));
        // `own` only when nothing else ties it, and never when skipped.
        for i in [1, 2, 3] {
            f.publish(i, 9);
        }
        assert_eq!(f.oldest(0, false), Some(0));
        assert_eq!(f.oldest(0, true), Some(1));
        // A strictly older front wins wherever it is.
        f.publish(2, 3);
        assert_eq!(f.oldest(3, false), Some(2));
        assert_eq!(f.oldest(1, true), Some(2));
        // Empty shards are never chosen.
        let empty = bound::Fronts::new(2);
        assert_eq!(empty.oldest(0, false), None);
        empty.publish(0, 1);
        assert_eq!(empty.oldest(0, true), None);
    }

    #[test]
    fn a_sharded_store_keeps_exactly_its_capacity_newest_first() {
        let capacity = 4 * ACTIONS_PER_SHARD;
        let store = store(capacity);
        assert_eq!(store.shards.len(), 4);
        for i in 0..2 * capacity {
            insert(&store, &format!("k{i}"), i as i64);
            assert_eq!(store.len(), (i + 1).min(capacity));
        }
        // Oldest first across shards: exactly the newest `capacity` actions remain.
        let live = |i: usize| live(&store, &format!("k{i}"), 0);
        assert!((capacity..2 * capacity).all(live));
        assert!(!(0..capacity).any(live));
        // Expiry is oldest first across shards too: one insert a TTL later evicts EVICT_PER_INSERT.
        insert(&store, "late", 2 * capacity as i64 + TTL_MS);
        assert_eq!(store.len(), capacity + 1 - EVICT_PER_INSERT);
    }

    #[test]
    fn concurrent_first_calls_with_one_identity_get_one_slot() {
        for round in 0..50 {
            let store = store(1000);
            let k = key(&store, &format!("k{round}"));
            let news = AtomicUsize::new(0);
            let slots: Vec<u64> = std::thread::scope(|s| {
                let hs: Vec<_> = (0..4)
                    .map(|_| {
                        s.spawn(|| {
                            let g = store.guard();
                            match store.get_or_insert(&g, k, 0u128.into(), at(0), TTL) {
                                Found::New(s) => {
                                    news.fetch_add(1, Ordering::Relaxed);
                                    s.seq
                                }
                                Found::Existing(s) => s.seq,
                            }
                        })
                    })
                    .collect();
                hs.into_iter().map(|h| h.join().unwrap()).collect()
            });
            assert_eq!(news.load(Ordering::Relaxed), 1);
            assert!(slots.iter().all(|&s| s == slots[0]));
        }
    }

    #[test]
    fn lookups_during_eviction_see_whole_slots_or_nothing() {
        let store = store(64);
        let stop = AtomicBool::new(false);
        std::thread::scope(|s| {
            s.spawn(|| {
                for i in 0..20_000 {
                    insert(&store, &format!("k{i}"), 0);
                }
                stop.store(true, Ordering::Release);
            });
            s.spawn(|| {
                let mut seen = 0;
                while !stop.load(Ordering::Acquire) {
                    for i in (0..20_000).step_by(97) {
                        let guard = store.guard();
                        if let Some(slot) =
                            store.get(&guard, key(&store, &format!("k{i}")), at(0), TTL)
                        {
                            // The slot stays whole while the guard is held, evicted or not.
                            assert_eq!(slot.created, at(0));
                            assert!(slot.seq < 20_000);
                            seen += 1;
                        }
                    }
                }
                seen
            });
        });
        assert!(store.len() <= 64);
    }

    #[test]
    fn the_published_bound_stays_below_every_front_under_racing_inserts() {
        // Event times out of order across threads and shards, with eviction (a capacity below what is inserted)
        // popping fronts while other shards go from empty to full: whatever interleaving, once the inserts are
        // done the bound must not exceed any front, or an expired action would be kept past its TTL.
        for round in 0..20u64 {
            let store = store(4 * ACTIONS_PER_SHARD);
            std::thread::scope(|s| {
                for t in 0..3u64 {
                    let store = &store;
                    s.spawn(move || {
                        for i in 0..3000u64 {
                            let ms = ((i * 7919 + t * 104_729 + round) % 5000) as i64;
                            insert(store, &format!("r{round}t{t}k{i}"), ms);
                        }
                    });
                }
            });
            let oldest = store.fronts.oldest_ms();
            let bound = bound_ms(store.fronts.bound());
            assert!(
                bound <= oldest,
                "round {round}: bound {bound} > front {oldest}"
            );
            // And the first insert a TTL after the oldest action evicts it.
            let before = store.len();
            insert(&store, "late", oldest + TTL_MS);
            assert!(store.len() <= before, "round {round}");
        }
    }

    fn decision(state: State, ids: &[&str], shadow: &[&str]) -> Decision {
        let ids: crate::decide::RuleIds = ids.iter().map(|i| RuleId::new(i)).collect();
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
        let plain = |ids: &[&str]| {
            Decided::new(
                decision(State::Block, ids, &[]),
                ("u", "a", "k"),
                None,
                at(5),
                None,
                Footprint::default(),
            )
        };
        // None or one matching rule: nothing beside the decided record itself.
        for ids in [&[][..], &["a"]] {
            let d = plain(ids);
            assert!(d.rest.is_none());
            assert_eq!(d.rule_ids().len(), ids.len());
            assert_eq!(d.priority_rule_id().map(|r| &**r), ids.first().copied());
        }
        // Two or more: the list is kept whole, in order.
        let d = plain(&["a", "b"]);
        assert!(d.rest.is_some());
        assert_eq!(d.outcome(), State::Block);
        assert_eq!(d.rule_ids(), [RuleId::new("a"), RuleId::new("b")]);
        assert_eq!(d.priority_rule_id(), Some(&RuleId::new("a")));
        assert!(d.shadow_rule_ids().is_empty() && d.errors().is_empty());
        assert_eq!((d.token(), d.url(), d.footprint()), (None, None, None));
        // Without a token, the identity is not kept.
        assert_eq!(d.identity(), None);
        // The store's memory per action depends on these staying small.
        assert!(
            std::mem::size_of::<Slot>() <= 88,
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
        let d = Decided::new(
            dec,
            ("user", "act", "key"),
            Some("t".into()),
            at(9),
            Some("u".into()),
            fp,
        );
        assert_eq!(d.identity(), Some(("user", "act", "key")));
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
        let d = Decided::new(odd, ("u", "a", "k"), None, at(0), None, fp);
        assert_eq!(d.priority_rule_id(), None);
        assert_eq!(d.footprint(), None);
    }
}
