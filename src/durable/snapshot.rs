//! Snapshots: every live action and history key, written whole to `PATH.tmp`, synced, renamed over `PATH`.

use super::format::{self, Damaged, Put, Reader};
use super::journal::{self, IdentLayout, RuleIds};
use super::Params;
use crate::hash::EngineKeys;
use crate::hash::H128;
use crate::signals::History;
use crate::store::{Slot, Store};
use crate::time::EpochMs;
use std::io::{self, BufWriter, Write};
use std::path::Path;

/// How many chunks a snapshot's actions are cut into (so loading shares them out over threads).
const ACTION_CHUNKS: usize = 8;

/// What a snapshot says besides its state.
pub(super) struct Meta {
    pub generation: u64,
    /// The hashing keys every change was made with ([`EngineKeys::shared_bytes`]).
    shared: [u8; 24],
    pub latest_ms: i64,
}

/// The generation and three frames of a snapshot: meta, actions, history.
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
    // Only the header and the first frame are checked here: `read` checks the whole file before using it.
    let generation = format::read_header(bytes, format::SNAPSHOT_MAGIC, "snapshot")?;
    let mut first = None;
    let _ = format::frames(bytes, |p| {
        first = Some(p);
        // Stop after the first frame.
        Err(Damaged::new(""))
    });
    let m = first
        .ok_or_else(|| Damaged::new("the snapshot is truncated: its first section is not whole"))?;
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
    // Every action is a tag and its identity strings or its key in the store.
    let layout = IdentLayout::Tagged;
    let meta = meta(generation, m)?;
    let now = EpochMs::from_ms(meta.latest_ms);
    // The actions come in chunks: the history and every chunk are tasks, shared out over two threads.
    let mut r = Reader::new(actions);
    let chunks = r.count(4)?;
    let total = r.u32()? as usize;
    // Past the capacity, the oldest actions are left out (as the store would have evicted them).
    let skip = total.saturating_sub(params.capacity.max(1));
    let mut parts = Vec::with_capacity(chunks);
    let mut first = 0usize;
    for _ in 0..chunks {
        let len = r.u32()? as usize;
        let part = r.bytes(len)?;
        let n = Reader::new(part).u32()? as usize;
        parts.push((first, part));
        first = first.saturating_add(n);
    }
    if first != total {
        // A count above the actions listed would leave every one out as past the capacity, silently.
        return Err(Damaged::new(format!(
            "the snapshot says it holds {total} actions but lists {first}: the file is damaged"
        )));
    }
    store.reserve(total);
    let next = std::sync::atomic::AtomicUsize::new(0);
    let work = || -> Result<(), Damaged> {
        let mut ids = RuleIds::default();
        loop {
            let task = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            if task == 0 {
                history.import(&mut Reader::new(hist))?;
                continue;
            }
            let Some(&(first, part)) = parts.get(task - 1) else {
                return Ok(());
            };
            let mut r = Reader::new(part);
            let n = r.count(40)?;
            for i in first..first + n {
                let saved = journal::get_slot(&mut r, &mut ids, layout)?;
                if i >= skip {
                    journal::restore_slot(store, saved, now, params.ttl);
                }
            }
        }
    };
    let (a, b) = std::thread::scope(|s| {
        let other = s.spawn(work);
        let mine = work();
        (mine, other.join())
    });
    a?;
    b.map_err(|_| Damaged::new("loading the state failed"))??;
    store.sort_retention();
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
    // Live, answerable actions, oldest first (the order the store evicts in), borrowed under one guard until
    // they are written (this store is the writer's own, rebuilt from the files: nothing is removed meanwhile).
    let guard = store.guard();
    let mut slots: Vec<(H128, &Slot)> = Vec::with_capacity(store.len());
    store.for_each(&guard, |key, s| {
        let answerable = s
            .decided
            .get()
            .is_some_and(|d| d.outcome() != crate::State::ChallengeRequired || d.token().is_some());
        if answerable && !s.created.expired(params.ttl, now) {
            slots.push((key, s));
        }
    });
    slots.sort_unstable_by_key(|(_, s)| s.created);
    // In creation order, cut into chunks that load in parallel.
    let chunks = if slots.len() < 4096 { 1 } else { ACTION_CHUNKS };
    let per = slots.len().div_ceil(chunks).max(1);
    let mut actions = Vec::with_capacity(slots.len() * 96 + 16);
    actions.u32(chunks as u32);
    actions.u32(slots.len() as u32);
    for c in 0..chunks {
        let part = slots
            .get(c * per..((c + 1) * per).min(slots.len()))
            .unwrap_or(&[]);
        let len_at = actions.len();
        actions.u32(0);
        actions.u32(part.len() as u32);
        for &(key, s) in part {
            if let Some(d) = s.decided.get() {
                // An action with a token keeps its identity strings; any other is known by its key.
                match d.identity() {
                    Some(identity) => {
                        actions.u8(journal::TAG_STRINGS);
                        journal::put_ident(&mut actions, identity);
                    }
                    None => {
                        actions.u8(journal::TAG_KEY);
                        let k: [u64; 2] = key.into();
                        actions.u64(k[0]);
                        actions.u64(k[1]);
                    }
                }
                journal::put_slot(
                    &mut actions,
                    s,
                    d,
                    s.state(),
                    s.state_updated(),
                    s.token_used(),
                );
            }
        }
        let len = (actions.len() - len_at - 4) as u32;
        if let Some(slot) = actions.get_mut(len_at..len_at + 4) {
            slot.copy_from_slice(&len.to_le_bytes());
        }
    }
    drop(slots);
    drop(guard);
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decide::Decision;
    use crate::store::{Decided, Found};
    use crate::time::DurationMs;
    use crate::State;

    const TTL: DurationMs = DurationMs::from_ms(60_000);
    const NOW: EpochMs = EpochMs::from_ms(10);

    fn params() -> Params {
        Params {
            capacity: 100,
            ttl: TTL,
            limits: Default::default(),
            horizon_ms: 0,
        }
    }

    /// The two actions every test here saves: `key-plain` blocked, `key-token` challenged with a token.
    const ACTIONS: [(&str, Option<&str>); 2] = [("key-plain", None), ("key-token", Some("tok"))];

    fn decided(key: &str, token: Option<&str>) -> Decided {
        let state = match token {
            Some(_) => State::ChallengeRequired,
            None => State::Block,
        };
        let decision = Decision {
            state,
            rule_ids: Default::default(),
            priority_rule_id: None,
            shadow_rule_ids: Vec::new(),
            errors: Vec::new(),
        };
        Decided::new(
            decision,
            ("user-one", "signIn", key),
            token.map(str::to_owned),
            EpochMs::from_ms(1000),
            None,
            Default::default(),
        )
    }

    /// A new slot for `user-one`'s `signIn` with idempotency key `key`, and its key in the store.
    fn insert<'g>(store: &Store, g: &'g crate::store::Guard<'_>, key: &str) -> (H128, &'g Slot) {
        let k = store.key("user-one", "signIn", key);
        let Found::New(slot) =
            store.get_or_insert(g, k, H128::from([1, 2]), EpochMs::from_ms(5), TTL)
        else {
            panic!("new")
        };
        (k, slot)
    }

    /// A snapshot in format version 1 (every action's identity as its three strings), which is refused.
    fn version_1(keys: &EngineKeys) -> Vec<u8> {
        let mut m = Vec::new();
        m.bytes(&keys.shared_bytes());
        m.i64(NOW.ms());
        let scratch = Store::new(10, keys);
        let g = scratch.guard();
        let mut part = Vec::new();
        part.u32(ACTIONS.len() as u32);
        for (key, token) in ACTIONS {
            let (_, slot) = insert(&scratch, &g, key);
            let d = decided(key, token);
            journal::put_ident(&mut part, ("user-one", "signIn", key));
            journal::put_slot(&mut part, slot, &d, d.outcome(), EpochMs::from_ms(5), false);
        }
        let mut actions = Vec::new();
        actions.u32(1);
        actions.u32(ACTIONS.len() as u32);
        actions.u32(part.len() as u32);
        actions.extend_from_slice(&part);
        let mut hist = Vec::new();
        History::new(Default::default(), *keys).export(&mut hist, NOW.ms(), 0);
        let mut file = format::header_version(format::SNAPSHOT_MAGIC, 0, 1).to_vec();
        for section in [&m, &actions, &hist] {
            format::frame(&mut file, section);
        }
        file
    }

    /// Loads `bytes` into a fresh store (with the snapshot's keys) and checks both actions are there.
    fn load_and_check(bytes: &[u8]) {
        let keys = read_keys(bytes, EngineKeys::draw().unwrap()).unwrap();
        let store = Store::new(100, &keys);
        let history = History::new(Default::default(), keys);
        read(bytes, &store, &history, &params()).unwrap();
        assert_eq!(store.len(), 2);
        let g = store.guard();
        let plain = store
            .get(&g, store.key("user-one", "signIn", "key-plain"), NOW, TTL)
            .unwrap();
        assert_eq!(plain.state(), State::Block);
        assert_eq!(plain.fingerprint, H128::from([1, 2]));
        let challenged = store.by_token(&g, "tok", NOW, TTL).unwrap();
        let d = challenged.decided.get().unwrap();
        assert_eq!(d.identity(), Some(("user-one", "signIn", "key-token")));
        assert_eq!(challenged.state(), State::ChallengeRequired);
        drop(g);
    }

    #[test]
    fn a_version_1_snapshot_is_refused_naming_both_versions_and_this_version_round_trips() {
        let keys = EngineKeys::draw().unwrap();
        let v1 = version_1(&keys);
        let store = Store::new(100, &keys);
        let history = History::new(Default::default(), keys);
        let Err(e) = read(&v1, &store, &history, &params()) else {
            panic!("a version-1 snapshot was read")
        };
        assert!(
            e.0.contains("version 1") && e.0.contains(&format!("version {}", format::VERSION)),
            "{}",
            e.0
        );
        assert_eq!(store.len(), 0, "a refused snapshot loaded actions");
        // The same actions written by this riskgate: this version, the plain action known by its key only, the
        // challenged one with its identity.
        let filled = Store::new(10, &keys);
        let g = filled.guard();
        for (key, token) in ACTIONS {
            let (k, slot) = insert(&filled, &g, key);
            let d = slot.decided.get_or_init(|| decided(key, token));
            slot.init_state(d.outcome());
            filled.register_token(k, slot);
        }
        drop(g);
        let dir = std::env::temp_dir().join(format!(
            "riskgate-snapshot-test-{}-{}",
            std::process::id(),
            xxh3_tag()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("state");
        write(&path, 0, &keys, &filled, &history, NOW.ms(), &params()).unwrap();
        let v2 = std::fs::read(&path).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(
            format::read_header_version(&v2, format::SNAPSHOT_MAGIC, "snapshot"),
            Ok((0, format::VERSION))
        );
        let has = |needle: &[u8]| v2.windows(needle.len()).any(|w| w == needle);
        assert!(!has(b"key-plain"), "a plain action's identity was written");
        assert!(has(b"key-token"));
        load_and_check(&v2);
    }

    /// Something unique to this test run, for a file name.
    fn xxh3_tag() -> u64 {
        crate::hash::xxh3_64(format!("{:?}", std::time::SystemTime::now()).as_bytes())
    }
}
