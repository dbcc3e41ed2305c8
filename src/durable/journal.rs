//! The write-ahead journal: one compact record per change, appended to an in-memory buffer on the decision path
//! (a lock held for a memory copy, no system call) and written out by the background writer.
//!
//! History changes are journaled as their inputs ([`History::record`]'s and [`History::make_known`]'s
//! arguments), so replaying them reproduces the tables exactly; actions as the stored decision, then each
//! state transition and token use. Every change to one action is journaled after the change it depends on is
//! visible (the decision before the cell other calls wait on is filled), and one buffer keeps the order, so an
//! action's records are always replayed in the order they happened.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use super::format::{Damaged, Put, Reader};
use crate::decide::Decision;
use crate::hash::H128;
use crate::response::{RuleError, RuleErrorKind, RuleId, State};
use crate::signals::history::{get_located, put_located, History, Keys, Verified};
use crate::signals::rba::{Features, LEVELS};
use crate::signals::Footprint;
use crate::store::{Decided, Found, Slot, Store};
use crate::time::{DurationMs, EpochMs};

const RECORD: u8 = 1;
const MAKE_KNOWN: u8 = 2;
const ACTION: u8 = 3;
const TRANSITION: u8 = 4;
const TOKEN_USED: u8 = 5;

/// The changes not yet written to disk, bounded.
pub(crate) struct Journal {
    pub(super) buf: Mutex<Vec<u8>>,
    /// The most bytes `buf` may hold; a change that does not fit is counted in `dropped` and not journaled.
    max_bytes: usize,
    pub(super) dropped: AtomicU64,
}

impl Journal {
    pub fn new(max_bytes: usize) -> Self {
        Journal {
            buf: Mutex::new(Vec::new()),
            max_bytes,
            dropped: AtomicU64::new(0),
        }
    }

    /// Appends one record written by `put`, unless the buffer is full.
    #[inline]
    fn append(&self, put: impl FnOnce(&mut Vec<u8>)) {
        let mut buf = self.buf.lock().unwrap_or_else(|p| p.into_inner());
        let start = buf.len();
        put(&mut buf);
        if buf.len() > self.max_bytes {
            buf.truncate(start);
            drop(buf);
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// [`History::record`]'s arguments.
    pub fn record(&self, keys: &Keys, now_ms: i64, horizon_ms: i64, kept: u8) {
        self.append(|b| {
            b.u8(RECORD);
            put_keys(b, keys);
            b.i64(now_ms);
            b.i64(horizon_ms);
            b.u8(kept);
        });
    }

    /// [`History::make_known`]'s arguments.
    pub fn make_known(&self, user: u64, v: &Verified<'_>) {
        self.append(|b| {
            b.u8(MAKE_KNOWN);
            b.u64(user);
            let flags = u8::from(v.device.is_some())
                | u8::from(v.ip.is_some()) << 1
                | u8::from(v.country.is_some()) << 2
                | u8::from(v.location.is_some()) << 3;
            b.u8(flags);
            for x in [v.device, v.ip, v.country].into_iter().flatten() {
                b.u64(x);
            }
            if let Some(l) = &v.location {
                put_located(b, l);
            }
            b.u8(v.rba.len().min(LEVELS) as u8);
            for &x in v.rba.iter().take(LEVELS) {
                b.u64(x);
            }
            b.i64(v.at_ms);
        });
    }

    /// A new action's first decision; `identity` is its user id, action and idempotency key.
    pub fn action(&self, identity: Identity<'_>, slot: &Slot, decided: &Decided) {
        self.append(|b| {
            b.u8(ACTION);
            put_ident(b, identity);
            put_slot(b, slot, decided, decided.outcome(), slot.created, false);
        });
    }

    /// The action `identity` moved to `to` at `now`.
    pub fn transition(&self, identity: Identity<'_>, to: State, now: EpochMs) {
        self.append(|b| {
            b.u8(TRANSITION);
            put_ident(b, identity);
            b.u8(to.to_u8());
            b.i64(now.ms());
        });
    }

    /// The token of the action `identity` was used.
    pub fn token_used(&self, identity: Identity<'_>) {
        self.append(|b| {
            b.u8(TOKEN_USED);
            put_ident(b, identity);
        });
    }
}

/// An action's user id, action and idempotency key.
pub(crate) type Identity<'a> = (&'a str, &'a str, &'a str);

pub(super) fn put_ident(b: &mut Vec<u8>, (user, action, key): Identity<'_>) {
    b.str(user);
    b.str(action);
    b.str(key);
}

fn put_keys(b: &mut Vec<u8>, k: &Keys) {
    b.u64(k.user);
    b.u64(k.action);
    b.u8(u8::from(k.ip.is_some()) | u8::from(k.device.is_some()) << 1);
    for x in [k.ip, k.device].into_iter().flatten() {
        b.u64(x);
    }
}

fn get_keys(r: &mut Reader<'_>) -> Result<Keys, Damaged> {
    let user = r.u64()?;
    let action = r.u64()?;
    let flags = r.u8()?;
    let ip = if flags & 1 != 0 { Some(r.u64()?) } else { None };
    let device = if flags & 2 != 0 { Some(r.u64()?) } else { None };
    Ok(Keys {
        user,
        action,
        ip,
        device,
    })
}

fn put_opt_str(b: &mut Vec<u8>, s: Option<&str>) {
    match s {
        None => b.u8(0),
        Some(s) => {
            b.u8(1);
            b.str(s);
        }
    }
}

fn kind_to_u8(k: RuleErrorKind) -> u8 {
    match k {
        RuleErrorKind::TimeLimit => 0,
        RuleErrorKind::OperationLimit => 1,
        RuleErrorKind::SizeLimit => 2,
        RuleErrorKind::DepthLimit => 3,
        RuleErrorKind::WrongReturnType => 4,
        RuleErrorKind::Panic => 6,
        _ => 5,
    }
}

fn kind_from_u8(v: u8) -> RuleErrorKind {
    match v {
        0 => RuleErrorKind::TimeLimit,
        1 => RuleErrorKind::OperationLimit,
        2 => RuleErrorKind::SizeLimit,
        3 => RuleErrorKind::DepthLimit,
        4 => RuleErrorKind::WrongReturnType,
        6 => RuleErrorKind::Panic,
        _ => RuleErrorKind::Runtime,
    }
}

/// One stored action after its identity: fingerprint, times, state and its first decision (the journal's
/// `ACTION` record and each action of a snapshot).
pub(super) fn put_slot(
    b: &mut Vec<u8>,
    slot: &Slot,
    d: &Decided,
    state: State,
    updated: EpochMs,
    token_used: bool,
) {
    let fp: [u64; 2] = slot.fingerprint.into();
    b.u64(fp[0]);
    b.u64(fp[1]);
    b.i64(slot.created.ms());
    b.u8(state.to_u8());
    b.i64(updated.ms());
    b.u8(u8::from(token_used));
    b.u8(d.outcome().to_u8());
    b.u32(d.rule_ids().len() as u32);
    for id in d.rule_ids() {
        b.str(id);
    }
    let plain = d.priority_rule_id() == d.rule_ids().first()
        && d.shadow_rule_ids().is_empty()
        && d.errors().is_empty()
        && d.token().is_none()
        && d.url().is_none()
        && d.footprint().is_none();
    if plain {
        b.u8(0);
        return;
    }
    b.u8(1);
    match d.priority_rule_id() {
        p if p == d.rule_ids().first() => b.u8(0),
        None => b.u8(1),
        Some(p) => {
            b.u8(2);
            b.str(p);
        }
    }
    b.u32(d.shadow_rule_ids().len() as u32);
    for id in d.shadow_rule_ids() {
        b.str(id);
    }
    b.u32(d.errors().len() as u32);
    for e in d.errors() {
        b.str(&e.rule_id);
        b.u8(kind_to_u8(e.kind));
        b.str(&e.message);
    }
    put_opt_str(b, d.token());
    b.i64(d.token_expires().ms());
    put_opt_str(b, d.url());
    match d.footprint() {
        None => b.u8(0),
        Some(f) => {
            b.u8(1);
            put_keys(b, &f.keys);
            match f.ip {
                None => b.u8(0),
                Some(IpAddr::V4(a)) => {
                    b.u8(4);
                    b.bytes(&a.octets());
                }
                Some(IpAddr::V6(a)) => {
                    b.u8(6);
                    b.bytes(&a.octets());
                }
            }
            b.i64(f.at_ms);
            match f.rba {
                None => b.u8(0),
                Some(r) => {
                    b.u8(1);
                    let (values, present) = r.to_raw();
                    for v in values {
                        b.u64(v);
                    }
                    b.u32(u32::from(present));
                }
            }
        }
    }
}

/// What one stored action holds, read back.
pub(super) struct SavedSlot<'a> {
    ident: SavedIdent<'a>,
    fingerprint: H128,
    pub created: EpochMs,
    state: State,
    updated: EpochMs,
    token_used: bool,
    decided: Decided,
}

/// Rule ids read back share one allocation per distinct id.
#[derive(Default)]
pub(super) struct RuleIds(HashMap<Box<str>, RuleId>);

impl RuleIds {
    fn get(&mut self, s: &str) -> RuleId {
        if let Some(id) = self.0.get(s) {
            return id.clone();
        }
        let id = RuleId::new(s);
        // Bounded: a damaged file cannot make the table grow past this; later ids are simply not shared.
        if self.0.len() < 100_000 {
            self.0.insert(s.into(), id.clone());
        }
        id
    }

    fn list(&mut self, r: &mut Reader<'_>) -> Result<Vec<RuleId>, Damaged> {
        let n = r.count(4)?;
        let mut v = Vec::with_capacity(n);
        for _ in 0..n {
            v.push(self.get(r.str()?));
        }
        Ok(v)
    }
}

fn get_state(v: u8) -> Result<State, Damaged> {
    if usize::from(v) < State::ALL.len() {
        Ok(State::from_u8(v))
    } else {
        Err(Damaged::new(format!(
            "unknown action state {v}: the file is damaged"
        )))
    }
}

fn get_opt_str<'a>(r: &mut Reader<'a>) -> Result<Option<&'a str>, Damaged> {
    Ok(match r.u8()? {
        0 => None,
        _ => Some(r.str()?),
    })
}

/// How a saved action's identity is written.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum IdentLayout {
    /// The three strings (the journal).
    Strings,
    /// A tag, then the three strings ([`TAG_STRINGS`]) or only the action's key in the store
    /// ([`TAG_KEY`]): snapshots (format version 2 and later).
    Tagged,
}

/// In a snapshot, an action whose identity follows as its three strings (an action with a token).
pub(super) const TAG_STRINGS: u8 = 1;
/// In a snapshot, an action whose identity is known only by its key in the store (its keyed hash).
pub(super) const TAG_KEY: u8 = 0;

/// A saved action's identity: the strings, or the key the store holds it under.
#[derive(Clone, Copy)]
pub(super) enum SavedIdent<'a> {
    Strings(Identity<'a>),
    Key(H128),
}

fn get_ident<'a>(r: &mut Reader<'a>, layout: IdentLayout) -> Result<SavedIdent<'a>, Damaged> {
    let strings = |r: &mut Reader<'a>| -> Result<SavedIdent<'a>, Damaged> {
        Ok(SavedIdent::Strings((r.str()?, r.str()?, r.str()?)))
    };
    match layout {
        IdentLayout::Strings => strings(r),
        IdentLayout::Tagged => match r.u8()? {
            TAG_STRINGS => strings(r),
            TAG_KEY => Ok(SavedIdent::Key(H128::from([r.u64()?, r.u64()?]))),
            other => Err(Damaged::new(format!(
                "unknown action identity tag {other}: the file is damaged"
            ))),
        },
    }
}

pub(super) fn get_slot<'a>(
    r: &mut Reader<'a>,
    ids: &mut RuleIds,
    layout: IdentLayout,
) -> Result<SavedSlot<'a>, Damaged> {
    let ident = get_ident(r, layout)?;
    let fingerprint = H128::from([r.u64()?, r.u64()?]);
    let created = EpochMs::from_ms(r.i64()?);
    let state = get_state(r.u8()?)?;
    let updated = EpochMs::from_ms(r.i64()?);
    let token_used = r.u8()? != 0;
    let outcome = get_state(r.u8()?)?;
    let rule_ids: crate::decide::RuleIds = ids.list(r)?.into();
    let mut decision = Decision {
        state: outcome,
        priority_rule_id: rule_ids.first().cloned(),
        rule_ids,
        shadow_rule_ids: Vec::new(),
        errors: Vec::new(),
    };
    let (mut token, mut expires, mut url, mut footprint) =
        (None, EpochMs::MIN, None, Footprint::default());
    if r.u8()? != 0 {
        match r.u8()? {
            0 => {}
            1 => decision.priority_rule_id = None,
            _ => decision.priority_rule_id = Some(ids.get(r.str()?)),
        }
        decision.shadow_rule_ids = ids.list(r)?;
        let n = r.count(9)?;
        for _ in 0..n {
            decision.errors.push(RuleError {
                rule_id: ids.get(r.str()?),
                kind: kind_from_u8(r.u8()?),
                message: r.str()?.to_owned(),
            });
        }
        token = get_opt_str(r)?.map(str::to_owned);
        expires = EpochMs::from_ms(r.i64()?);
        url = get_opt_str(r)?.map(str::to_owned);
        if r.u8()? != 0 {
            footprint.keys = get_keys(r)?;
            footprint.ip = match r.u8()? {
                0 => None,
                4 => Some(IpAddr::from(
                    <[u8; 4]>::try_from(r.bytes(4)?).unwrap_or_default(),
                )),
                _ => Some(IpAddr::from(
                    <[u8; 16]>::try_from(r.bytes(16)?).unwrap_or_default(),
                )),
            };
            footprint.at_ms = r.i64()?;
            if r.u8()? != 0 {
                let mut values = [0u64; LEVELS];
                for v in &mut values {
                    *v = r.u64()?;
                }
                footprint.rba = Some(Features::from_raw(values, r.u32()? as u16));
            }
        }
    }
    let identity = match ident {
        SavedIdent::Strings(i) => i,
        // Only an action with a token needs its identity (`validate_challenge` answers with it).
        SavedIdent::Key(_) if token.is_some() => {
            return Err(Damaged::new(
                "an action with a challenge token has no identity: the file is damaged",
            ))
        }
        SavedIdent::Key(_) => ("", "", ""),
    };
    let decided = Decided::new(decision, identity, token, expires, url, footprint);
    Ok(SavedSlot {
        ident,
        fingerprint,
        created,
        state,
        updated,
        token_used,
        decided,
    })
}

/// Puts a saved action in `store`, unless it expired by `now` or its identity is already stored.
pub(super) fn restore_slot(store: &Store, saved: SavedSlot<'_>, now: EpochMs, ttl: DurationMs) {
    if saved.created.expired(ttl, now) {
        return;
    }
    let key = match saved.ident {
        SavedIdent::Strings((user, action, idem)) => store.key(user, action, idem),
        SavedIdent::Key(key) => key,
    };
    let guard = store.guard();
    let Found::New(slot) = store.get_or_insert(&guard, key, saved.fingerprint, saved.created, ttl)
    else {
        return;
    };
    slot.restore(saved.state, saved.updated, saved.token_used);
    let _ = slot.decided.set(saved.decided);
    store.register_token(key, slot);
}

/// Where replayed records go, and what they are held to.
pub(super) struct Target<'s> {
    pub store: &'s Store,
    pub history: &'s History,
    pub ttl: DurationMs,
    /// The latest event time seen so far (records carry their own): what expiry is measured from.
    pub latest_ms: i64,
    pub ids: RuleIds,
}

/// Applies every record of one journal frame, in order.
pub(super) fn replay(payload: &[u8], t: &mut Target<'_>) -> Result<usize, Damaged> {
    let mut r = Reader::new(payload);
    let mut n = 0;
    while !r.is_empty() {
        match r.u8()? {
            RECORD => {
                let keys = get_keys(&mut r)?;
                let now_ms = r.i64()?;
                let horizon = r.i64()?;
                let kept = r.u8()?;
                t.latest_ms = t.latest_ms.max(now_ms);
                t.history.record(
                    &keys,
                    EpochMs::from_ms(now_ms),
                    DurationMs::from_ms(horizon),
                    kept,
                );
            }
            MAKE_KNOWN => {
                let user = r.u64()?;
                let flags = r.u8()?;
                let mut opt = |bit: u8| -> Result<Option<u64>, Damaged> {
                    Ok(if flags & bit != 0 {
                        Some(r.u64()?)
                    } else {
                        None
                    })
                };
                let device = opt(1)?;
                let ip = opt(2)?;
                let country = opt(4)?;
                let location = if flags & 8 != 0 {
                    Some(get_located(&mut r)?)
                } else {
                    None
                };
                let n_rba = usize::from(r.u8()?).min(LEVELS);
                let mut rba = [0u64; LEVELS];
                for v in rba.iter_mut().take(n_rba) {
                    *v = r.u64()?;
                }
                let at_ms = r.i64()?;
                t.latest_ms = t.latest_ms.max(at_ms);
                t.history.make_known(
                    user,
                    &Verified {
                        device,
                        ip,
                        country,
                        location,
                        rba: rba.get(..n_rba).unwrap_or(&[]),
                        at_ms,
                    },
                );
            }
            ACTION => {
                let saved = get_slot(&mut r, &mut t.ids, IdentLayout::Strings)?;
                t.latest_ms = t.latest_ms.max(saved.created.ms());
                restore_slot(t.store, saved, EpochMs::from_ms(t.latest_ms), t.ttl);
            }
            TRANSITION => {
                let (user, action, key) = (r.str()?, r.str()?, r.str()?);
                let to = get_state(r.u8()?)?;
                let at = EpochMs::from_ms(r.i64()?);
                let g = t.store.guard();
                if let Some(slot) = t.store.get(&g, t.store.key(user, action, key), at, t.ttl) {
                    slot.restore(to, at, slot.token_used());
                }
            }
            TOKEN_USED => {
                let (user, action, key) = (r.str()?, r.str()?, r.str()?);
                let g = t.store.guard();
                let now = EpochMs::from_ms(t.latest_ms);
                if let Some(slot) = t.store.get(&g, t.store.key(user, action, key), now, t.ttl) {
                    slot.use_token();
                }
            }
            other => {
                return Err(Damaged::new(format!(
                    "unknown record type {other}: the file is damaged"
                )))
            }
        }
        n += 1;
    }
    Ok(n)
}
