//! Durable state files as an adversary sends them: a valid snapshot and journal, truncated, with bytes flipped,
//! and with their checksums sealed again over the change (the checksums are unkeyed: anyone who can write the
//! files can make them match). Loading either succeeds within the engine's bounds or is refused with
//! `LoadError::StateFile`; it never panics (on any thread), hangs or reserves memory the file does not back.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use proptest::prelude::*;
use riskgate::{Engine, LoadError, RuleSet, State, StoreSettings, TrackRequest};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Once, OnceLock};
use std::time::{Duration, Instant};

const HEADER: usize = 28;
const FRAME_HEAD: usize = 16;
const CAPACITY: usize = 40;
const MAX_KEYS: usize = 30;

/// Panics on any thread of this test binary, counted (a loader thread's panic would otherwise only be an error).
static PANICS: AtomicUsize = AtomicUsize::new(0);

fn count_panics() {
    static HOOK: Once = Once::new();
    HOOK.call_once(|| {
        let prev = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            PANICS.fetch_add(1, Ordering::SeqCst);
            prev(info);
        }));
    });
}

fn rules() -> RuleSet {
    RuleSet::builder()
        .config_toml(format!(
            "[idempotency]\ncapacity = {CAPACITY}\n[signals]\nmax_keys = {MAX_KEYS}\n"
        ))
        .rule(
            "new-device",
            "//! priority: 20\nif is_new_device() { CHALLENGE_REQUIRED }",
        )
        .rule(
            "busy",
            "//! priority: 10\nif velocity(\"1h\") > 3 { BLOCK }",
        )
        .rule(
            "score",
            "//! priority: 5\nif rba_score() > 1.0e12 { REVIEW }",
        )
        .build()
        .unwrap()
}

fn engine(path: &Path) -> Result<Engine, LoadError> {
    Engine::builder()
        .ruleset(rules())
        .store(StoreSettings::file(path).sync_interval(Duration::from_millis(5)))
        .build()
}

fn signin(user: &str, key: &str, device: &str, ip: &str) -> TrackRequest {
    let mut r = TrackRequest::new(user, "signIn").idempotency_key(key);
    r.attributes.device_id = Some(device.into());
    r.attributes.ip_address = Some(ip.into());
    r
}

/// Every kind of record: decisions with and without tokens, transitions, a used token, known devices.
fn exercise(e: &Engine) {
    for i in 0..12 {
        let (user, key) = (format!("u{}", i % 4), format!("k{i}"));
        let r = e
            .track(&signin(&user, &key, &format!("d{}", i % 3), "81.2.69.160"))
            .unwrap();
        if r.state == State::ChallengeRequired && i % 2 == 0 {
            e.update_action(&user, "signIn", &key, State::ChallengeSucceeded)
                .unwrap();
            if let Some(t) = r.token {
                assert!(e.validate_challenge(&t).is_valid);
            }
        }
    }
}

/// The files of one state: (name suffix, bytes).
type Files = Vec<(String, Vec<u8>)>;

fn read_state(path: &Path) -> Files {
    let name = path.file_name().unwrap().to_string_lossy().into_owned();
    let mut files: Files = std::fs::read_dir(path.parent().unwrap())
        .unwrap()
        .filter_map(|e| {
            let e = e.unwrap();
            let n = e.file_name().to_string_lossy().into_owned();
            let rest = n.strip_prefix(&name)?.to_owned();
            (rest.is_empty() || rest.starts_with(".journal."))
                .then(|| (rest, std::fs::read(e.path()).unwrap()))
        })
        .collect();
    files.sort();
    files
}

/// A state written whole by a clean shutdown (a snapshot with every section; an empty journal).
fn snapshot_state() -> &'static Files {
    static S: OnceLock<Files> = OnceLock::new();
    S.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state");
        let e = engine(&path).unwrap();
        exercise(&e);
        drop(e);
        read_state(&path)
    })
}

/// A state held in its journal: an empty snapshot and the synced frames of a running engine.
fn journal_state() -> &'static Files {
    static S: OnceLock<Files> = OnceLock::new();
    S.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state");
        let e = engine(&path).unwrap();
        exercise(&e);
        let deadline = Instant::now() + Duration::from_secs(20);
        while e.durable_stats().unwrap().syncs < 2 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        std::thread::sleep(Duration::from_millis(50));
        let files = read_state(&path);
        drop(e);
        files
    })
}

/// The payload ranges of a file's frames.
fn payloads(bytes: &[u8]) -> Vec<std::ops::Range<usize>> {
    let mut at = HEADER;
    let mut out = Vec::new();
    while at + FRAME_HEAD <= bytes.len() {
        let len = u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
        let end = (at + FRAME_HEAD + len).min(bytes.len());
        out.push(at + FRAME_HEAD..end);
        at = end;
    }
    out
}

/// Recomputes every frame's checksum over its (changed) payload, as an adversary would.
fn seal(bytes: &mut [u8], frames: &[std::ops::Range<usize>]) {
    for r in frames {
        if r.end <= bytes.len() {
            let sum = xxhash_rust::xxh3::xxh3_64(&bytes[r.clone()]);
            bytes[r.start - 8..r.start].copy_from_slice(&sum.to_le_bytes());
        }
    }
}

#[derive(Debug, Clone)]
enum Change {
    /// XOR a byte anywhere (header and frame heads included).
    Flip(usize, u8),
    /// Put a large little-endian u32 into a payload (where counts and lengths live).
    Big(usize, u32),
    /// Set a payload byte (record types, flags, states).
    Set(usize, u8),
}

fn change() -> impl Strategy<Value = Change> {
    prop_oneof![
        (any::<usize>(), 1u8..=255).prop_map(|(a, b)| Change::Flip(a, b)),
        (
            any::<usize>(),
            prop_oneof![
                Just(u32::MAX),
                Just(1 << 31),
                Just(1 << 24),
                Just(65_536),
                any::<u32>()
            ]
        )
            .prop_map(|(a, v)| Change::Big(a, v)),
        (any::<usize>(), any::<u8>()).prop_map(|(a, b)| Change::Set(a, b)),
    ]
}

/// Writes `files` with file `which` changed, loads it, and checks the outcome.
fn attack(files: &Files, which: usize, changes: &[Change], sealed: bool, cut: Option<usize>) {
    count_panics();
    let which = which % files.len();
    let dir = tempfile::tempdir().unwrap();
    let path: PathBuf = dir.path().join("state");
    for (i, (suffix, bytes)) in files.iter().enumerate() {
        let mut b = bytes.clone();
        if i == which {
            let frames = payloads(&b);
            let inner: Vec<usize> = frames.iter().flat_map(|r| r.clone()).collect();
            for c in changes {
                match *c {
                    Change::Flip(at, x) => {
                        let at = at % b.len();
                        b[at] ^= x;
                    }
                    Change::Big(at, v) if inner.len() >= 4 => {
                        let at = inner[at % (inner.len() - 3)];
                        let end = (at + 4).min(b.len());
                        let v = v.to_le_bytes();
                        b[at..end].copy_from_slice(&v[..end - at]);
                    }
                    Change::Set(at, v) if !inner.is_empty() => {
                        b[inner[at % inner.len()]] = v;
                    }
                    _ => {}
                }
            }
            if sealed {
                seal(&mut b, &frames);
            }
            if let Some(cut) = cut {
                b.truncate(cut % (b.len() + 1));
            }
        }
        std::fs::write(with(&path, suffix), &b).unwrap();
    }
    let before = PANICS.load(Ordering::SeqCst);
    let started = Instant::now();
    match engine(&path) {
        Ok(e) => {
            assert!(e.stored_actions() <= CAPACITY, "{}", e.stored_actions());
            assert!(
                e.history_keys() <= 3 * MAX_KEYS,
                "{} history keys",
                e.history_keys()
            );
            // What loaded is usable: tracking, repeating and snapshotting it again work.
            e.track(&signin("probe", "p", "d", "216.160.83.56"))
                .unwrap();
            let _ = e.track(&signin("u1", "k1", "d1", "81.2.69.160"));
            e.flush().unwrap();
        }
        Err(LoadError::StateFile { reason, .. }) => assert!(!reason.is_empty()),
        Err(other) => panic!("not a state file error: {other}"),
    }
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(PANICS.load(Ordering::SeqCst), before, "a loader panicked");
}

fn with(path: &Path, suffix: &str) -> PathBuf {
    let mut p = path.as_os_str().to_owned();
    p.push(suffix);
    PathBuf::from(p)
}

fn index_of(files: &Files, want: impl Fn(&str) -> bool) -> usize {
    files.iter().position(|(s, _)| want(s)).unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn a_changed_snapshot_loads_within_bounds_or_is_refused(
        changes in proptest::collection::vec(change(), 1..4),
        sealed in proptest::bool::weighted(0.8),
        cut in proptest::option::weighted(0.2, any::<usize>()),
    ) {
        let files = snapshot_state();
        attack(files, index_of(files, str::is_empty), &changes, sealed, cut);
    }

    #[test]
    fn a_changed_journal_loads_within_bounds_or_is_refused(
        changes in proptest::collection::vec(change(), 1..4),
        sealed in proptest::bool::weighted(0.8),
        cut in proptest::option::weighted(0.2, any::<usize>()),
    ) {
        let files = journal_state();
        let j = index_of(files, |s| s.starts_with(".journal.") && files.iter().any(|(t, b)| t == s && b.len() > HEADER));
        attack(files, j, &changes, sealed, cut);
    }
}

#[test]
fn every_cut_of_a_journal_loads() {
    let files = journal_state();
    let j = index_of(files, |s| s.starts_with(".journal."));
    let len = files[j].1.len();
    for cut in (0..len).step_by(len / 60 + 1) {
        attack(files, j, &[], false, Some(cut));
    }
}

#[test]
fn a_snapshot_whose_action_count_disagrees_with_its_chunks_is_refused() {
    // A count larger than the actions listed would make every listed action "older than the capacity" and
    // load an empty store without a word.
    let files = snapshot_state();
    let s = index_of(files, str::is_empty);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state");
    for (i, (suffix, bytes)) in files.iter().enumerate() {
        let mut b = bytes.clone();
        if i == s {
            let frames = payloads(&b);
            let at = frames[1].start + 4;
            let listed = u32::from_le_bytes(b[at..at + 4].try_into().unwrap());
            assert!(listed > 0);
            b[at..at + 4].copy_from_slice(&(listed + 1000).to_le_bytes());
            seal(&mut b, &frames);
        }
        std::fs::write(with(&path, suffix), &b).unwrap();
    }
    match engine(&path) {
        Err(LoadError::StateFile { reason, .. }) => assert!(reason.contains("damaged"), "{reason}"),
        Err(e) => panic!("{e}"),
        Ok(e) => panic!("loaded {} actions", e.stored_actions()),
    }
}
