//! The action store: every tracked action under (user, action, idempotency key), bounded in time and count,
//! with single-flight first decisions.
//!
//! # Design
//! - The map is a [`DashMap`] keyed by the 128-bit xxh3 hash of the identity, hashed from the borrowed strings,
//!   so a lookup allocates nothing. The stored slot keeps the identity itself, and a hit is compared to it, so
//!   a hash collision can never return another user's action.
//! - A new identity inserts an empty slot under the shard lock, releases the lock, and then decides inside the
//!   slot's `OnceLock`: concurrent callers with the same identity wait on that cell and the rules run once. No
//!   map lock is held while rules run.
//! - Retention: a FIFO of (key, time) in insertion order. Inserting pops from its front every action older than
//!   the TTL, and more while the store holds more than its capacity (oldest first). A lookup also treats an
//!   expired action as absent, so expiry is exact even between inserts.

use dashmap::DashMap;
use std::collections::VecDeque;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use crate::decide::Decision;
use crate::State;

/// Hashes an action identity. Lengths are mixed in so that `("ab", "c")` and `("a", "bc")` differ.
pub(crate) fn identity_hash(user_id: &str, action: &str, key: &str) -> u128 {
    let mut h = xxhash_rust::xxh3::Xxh3::new();
    for part in [user_id, action, key] {
        h.update(&(part.len() as u32).to_le_bytes());
        h.update(part.as_bytes());
    }
    h.digest128()
}

/// A hasher for keys that are already uniformly distributed hashes.
#[derive(Default)]
pub(crate) struct PreHashed(u64);

impl Hasher for PreHashed {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut b = [0u8; 8];
            b[..chunk.len()].copy_from_slice(chunk);
            self.0 ^= u64::from_le_bytes(b);
        }
    }
    fn write_u128(&mut self, v: u128) {
        self.0 ^= (v as u64) ^ ((v >> 64) as u64);
    }
}

type Map<V> = DashMap<u128, V, BuildHasherDefault<PreHashed>>;

/// One stored action.
pub(crate) struct Slot {
    /// `user_id`, `action` and the idempotency key, one after the other.
    ident: Box<str>,
    user_len: u32,
    action_len: u32,
    pub fingerprint: u128,
    pub created_ms: i64,
    pub decided: OnceLock<Decided>,
    state: AtomicU8,
    state_updated_ms: AtomicI64,
    token_used: AtomicBool,
}

/// What the first decision fixed for an action.
pub(crate) struct Decided {
    pub decision: Decision,
    pub token: Option<Box<str>>,
    pub token_expires_ms: i64,
    pub url: Option<Box<str>>,
}

impl Slot {
    fn new(user_id: &str, action: &str, key: &str, fingerprint: u128, now_ms: i64) -> Self {
        let mut ident = String::with_capacity(user_id.len() + action.len() + key.len());
        ident.push_str(user_id);
        ident.push_str(action);
        ident.push_str(key);
        Slot {
            ident: ident.into_boxed_str(),
            user_len: user_id.len() as u32,
            action_len: action.len() as u32,
            fingerprint,
            created_ms: now_ms,
            decided: OnceLock::new(),
            state: AtomicU8::new(State::Allow.to_u8()),
            state_updated_ms: AtomicI64::new(now_ms),
            token_used: AtomicBool::new(false),
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
    pub fn state_updated_ms(&self) -> i64 {
        self.state_updated_ms.load(Ordering::Acquire)
    }
    pub fn init_state(&self, s: State) {
        self.state.store(s.to_u8(), Ordering::Release);
    }

    /// Moves the state from `from` to `to` if it is still `from`.
    pub fn transition(&self, from: State, to: State, now_ms: i64) -> bool {
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
            self.state_updated_ms.store(now_ms, Ordering::Release);
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
    tokens: Map<u128>,
    order: Mutex<VecDeque<(u128, i64)>>,
    capacity: AtomicUsize,
}

impl Store {
    pub fn new(capacity: usize) -> Self {
        Store {
            map: Map::default(),
            tokens: Map::default(),
            order: Mutex::new(VecDeque::new()),
            capacity: AtomicUsize::new(capacity.max(1)),
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
        now_ms: i64,
        ttl_ms: i64,
    ) -> Option<Arc<Slot>> {
        let h = identity_hash(user_id, action, key);
        let slot = self.map.get(&h).map(|s| Arc::clone(&s))?;
        (slot.is(user_id, action, key) && !expired(&slot, now_ms, ttl_ms)).then_some(slot)
    }

    /// Finds the action for `track`, inserting a fresh slot when the identity is new or its action expired.
    /// `Err(slot)` when the hash is taken by another identity (a 128-bit collision).
    pub fn get_or_insert(
        &self,
        user_id: &str,
        action: &str,
        key: &str,
        fingerprint: u128,
        now_ms: i64,
        ttl_ms: i64,
    ) -> Result<Found, Arc<Slot>> {
        let h = identity_hash(user_id, action, key);
        // Fast path: a live hit takes only a shard read lock.
        if let Some(s) = self.map.get(&h) {
            let s = Arc::clone(&s);
            if !expired(&s, now_ms, ttl_ms) {
                return if s.is(user_id, action, key) {
                    Ok(Found::Existing(s))
                } else {
                    Err(s)
                };
            }
        }
        let found = match self.map.entry(h) {
            dashmap::Entry::Occupied(mut e) => {
                let s = Arc::clone(e.get());
                if !expired(&s, now_ms, ttl_ms) {
                    return if s.is(user_id, action, key) {
                        Ok(Found::Existing(s))
                    } else {
                        Err(s)
                    };
                }
                let fresh = Arc::new(Slot::new(user_id, action, key, fingerprint, now_ms));
                self.forget_token(&s);
                e.insert(Arc::clone(&fresh));
                fresh
            }
            dashmap::Entry::Vacant(e) => {
                let fresh = Arc::new(Slot::new(user_id, action, key, fingerprint, now_ms));
                e.insert(Arc::clone(&fresh));
                fresh
            }
        };
        self.admit(h, now_ms, ttl_ms);
        Ok(Found::New(found))
    }

    /// Records a new key in the retention order, and evicts what is expired or over capacity.
    fn admit(&self, h: u128, now_ms: i64, ttl_ms: i64) {
        let capacity = self.capacity.load(Ordering::Relaxed);
        let mut evict: Vec<(u128, i64)> = Vec::new();
        {
            let Ok(mut order) = self.order.lock() else {
                return;
            };
            order.push_back((h, now_ms));
            while let Some(&(k, t)) = order.front() {
                if order.len() > capacity || t.saturating_add(ttl_ms) <= now_ms {
                    order.pop_front();
                    evict.push((k, t));
                } else {
                    break;
                }
            }
        }
        for (k, t) in evict {
            // Remove only the slot this entry stands for: a key inserted again after expiry has its own entry.
            if let Some((_, s)) = self.map.remove_if(&k, |_, s| s.created_ms == t) {
                self.forget_token(&s);
            }
        }
    }

    /// Registers the token of a decided slot.
    pub fn register_token(&self, token: &str, slot: &Slot) {
        self.tokens.insert(
            token_hash(token),
            identity_hash(slot.user_id(), slot.action(), slot.key()),
        );
    }

    /// The action a token belongs to, with the token compared in full.
    pub fn by_token(&self, token: &str) -> Option<Arc<Slot>> {
        let key = *self.tokens.get(&token_hash(token))?;
        let slot = self.map.get(&key).map(|s| Arc::clone(&s))?;
        let stored = slot.decided.get()?.token.as_deref()?;
        constant_time_eq(stored.as_bytes(), token.as_bytes()).then_some(slot)
    }

    fn forget_token(&self, slot: &Slot) {
        if let Some(t) = slot.decided.get().and_then(|d| d.token.as_deref()) {
            self.tokens.remove(&token_hash(t));
        }
    }
}

fn expired(s: &Slot, now_ms: i64, ttl_ms: i64) -> bool {
    s.created_ms.saturating_add(ttl_ms) <= now_ms
}

fn token_hash(token: &str) -> u128 {
    xxhash_rust::xxh3::xxh3_128(token.as_bytes())
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// A fresh challenge token: 192 bits from the operating system's random source, base64url without padding.
pub(crate) fn new_token() -> Option<String> {
    use base64::Engine as _;
    let mut bytes = [0u8; 24];
    getrandom::fill(&mut bytes).ok()?;
    Some(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes))
}
