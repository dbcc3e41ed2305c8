//! Snapshots: every live action and history key, written whole to `PATH.tmp`, synced, renamed over `PATH`.

use std::io::{self, BufWriter, Write};
use std::path::Path;
use std::sync::Arc;

use super::format::{self, Damaged, Put, Reader};
use super::journal::{self, RuleIds};
use super::Params;
use crate::hash::EngineKeys;
use crate::signals::History;
use crate::store::{Slot, Store};
use crate::time::EpochMs;

/// What a snapshot says besides its state.
pub(super) struct Meta {
    pub generation: u64,
    /// The hashing keys every change was made with ([`EngineKeys::shared_bytes`]).
    shared: [u8; 24],
    pub latest_ms: i64,
}

/// The three frames of a snapshot: meta, actions, history.
fn sections(bytes: &[u8]) -> Result<(u64, [&[u8]; 3]), Damaged> {
    let generation = format::read_header(bytes, format::SNAPSHOT_MAGIC, "snapshot")?;
    let mut found: Vec<&[u8]> = Vec::with_capacity(3);
    let tail = format::frames(bytes, |p| {
        found.push(p);
        Ok(())
    })?;
    match (tail, <[&[u8]; 3]>::try_from(found)) {
        (format::Tail::Clean, Ok(s)) => Ok((generation, s)),
        _ => Err(Damaged::new(
            "the snapshot is truncated or damaged (its sections are not all whole)",
        )),
    }
}

fn meta(generation: u64, m: &[u8]) -> Result<Meta, Damaged> {
    let mut r = Reader::new(m);
    let shared: [u8; 24] = r
        .bytes(24)?
        .try_into()
        .map_err(|_| Damaged::new("the snapshot's keys are damaged"))?;
    Ok(Meta {
        generation,
        shared,
        latest_ms: r.i64()?,
    })
}

/// The hashing keys a snapshot's state was made with (the bucket keys stay `keys`').
pub(super) fn read_keys(bytes: &[u8], keys: EngineKeys) -> Result<EngineKeys, Damaged> {
    let (generation, [m, _, _]) = sections(bytes)?;
    Ok(keys.with_shared(&meta(generation, m)?.shared))
}

/// Decodes a snapshot into an empty store and history (made with the snapshot's keys): actions on this thread,
/// history on another.
pub(super) fn read(
    bytes: &[u8],
    store: &Store,
    history: &History,
    params: &Params,
) -> Result<Meta, Damaged> {
    let (generation, [m, actions, hist]) = sections(bytes)?;
    let meta = meta(generation, m)?;
    let now = EpochMs::from_ms(meta.latest_ms);
    let (a, h) = std::thread::scope(|s| {
        let h = s.spawn(|| history.import(&mut Reader::new(hist)));
        let a = (|| {
            let mut r = Reader::new(actions);
            let n = r.count(40)?;
            let mut ids = RuleIds::default();
            for _ in 0..n {
                let saved = journal::get_slot(&mut r, &mut ids)?;
                journal::restore_slot(store, saved, now, params.ttl);
            }
            Ok::<(), Damaged>(())
        })();
        (a, h.join())
    });
    a?;
    h.map_err(|_| Damaged::new("loading the history failed"))??;
    Ok(meta)
}

/// Writes the snapshot of `store` and `history` covering journal generation `generation`; returns its bytes.
pub(super) fn write(
    path: &Path,
    generation: u64,
    keys: &EngineKeys,
    store: &Store,
    history: &History,
    latest_ms: i64,
    params: &Params,
) -> io::Result<u64> {
    let now = EpochMs::from_ms(latest_ms);
    let mut m = Vec::with_capacity(32);
    m.bytes(&keys.shared_bytes());
    m.i64(latest_ms);
    // Live, answerable actions, oldest first (the order the store evicts in).
    let mut slots: Vec<Arc<Slot>> = Vec::with_capacity(store.len());
    store.for_each(|s| {
        let answerable = s
            .decided
            .get()
            .is_some_and(|d| d.outcome() != crate::State::ChallengeRequired || d.token().is_some());
        if answerable && !s.created.expired(params.ttl, now) {
            slots.push(Arc::clone(s));
        }
    });
    slots.sort_unstable_by_key(|s| s.created);
    let mut actions = Vec::with_capacity(slots.len() * 96 + 4);
    actions.u32(slots.len() as u32);
    for s in &slots {
        if let Some(d) = s.decided.get() {
            journal::put_slot(&mut actions, s, d, s.state(), s.state_updated(), s.token_used());
        }
    }
    drop(slots);
    let mut hist = Vec::new();
    history.export(&mut hist, latest_ms, params.horizon_ms);
    let tmp = super::with_suffix(path, ".tmp");
    let file = super::create(&tmp)?;
    let mut w = BufWriter::with_capacity(1 << 20, file);
    w.write_all(&format::header(format::SNAPSHOT_MAGIC, generation))?;
    let mut total = format::HEADER_LEN as u64;
    for section in [&m, &actions, &hist] {
        let mut head = Vec::with_capacity(format::FRAME_HEAD);
        format::frame_head(&mut head, section);
        w.write_all(&head)?;
        w.write_all(section)?;
        total += (head.len() + section.len()) as u64;
    }
    let file = w.into_inner().map_err(|e| e.into_error())?;
    file.sync_all()?;
    drop(file);
    std::fs::rename(&tmp, path)?;
    super::sync_dir(path)?;
    Ok(total)
}
