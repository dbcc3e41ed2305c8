//! Durable state (`[store] path`): what survives a clean restart and a `kill -9`, how damaged files are
//! refused or set aside, and that a writer that falls behind stays bounded.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use riskgate::{
    Engine, InvalidTokenReason, LoadError, OnCorrupt, RuleSet, State, StoreSettings, TrackRequest,
};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const NEW_DEVICE: &str = "//! priority: 20\nif is_new_device() { CHALLENGE_REQUIRED }";
const BUSY: &str = "//! priority: 10\nif velocity(\"1h\") > 3 { BLOCK }";

fn rules() -> RuleSet {
    RuleSet::from_sources([("new-device", NEW_DEVICE), ("busy", BUSY)]).unwrap()
}

fn engine(store: &StoreSettings) -> Result<Engine, LoadError> {
    Engine::builder()
        .ruleset(rules())
        .store(store.clone())
        .build()
}

fn req(user: &str, key: &str, device: &str) -> TrackRequest {
    let mut r = TrackRequest::new(user, "signIn").idempotency_key(key);
    r.attributes.device_id = Some(device.into());
    r
}

/// Waits for the writer's first sync (at most 10 s), then `settle` more for the intervals after it to write the
/// rest (the tests use a 5 ms `sync_interval`).
fn wait_for_sync(e: &Engine, settle: Duration) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while e.durable_stats().unwrap().syncs == 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    std::thread::sleep(settle);
}

/// The files as a crash of the running engine `e` would leave them, once its journal is synced: a copy in a
/// folder of its own.
fn crashed_copy(e: &Engine, path: &Path, settle: Duration) -> (tempfile::TempDir, PathBuf) {
    wait_for_sync(e, settle);
    let copy = temp("copy");
    copy_state(path, &copy.1);
    copy
}

/// `n` first decisions of u1 on device d1, keys `k0`, `k1`, ….
fn track_keys(e: &Engine, n: usize) {
    for i in 0..n {
        e.track(&req("u1", &format!("k{i}"), "d1")).unwrap();
    }
}

fn temp(name: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(name);
    (dir, path)
}

#[test]
fn a_clean_restart_forgets_nothing() {
    let (_dir, path) = temp("state");
    let store = StoreSettings::file(&path);
    let e = engine(&store).unwrap();
    // A challenge on a new device, passed: the device becomes known, and its token is valid once.
    let first = e.track(&req("u1", "k1", "d1")).unwrap();
    assert_eq!(first.state, State::ChallengeRequired);
    let token = first.token.clone().unwrap();
    e.update_action("u1", "signIn", "k1", State::ChallengeSucceeded)
        .unwrap();
    // A second challenge whose token is used before the restart.
    let second = e.track(&req("u3", "k1", "d9")).unwrap();
    let used = second.token.clone().unwrap();
    e.update_action("u3", "signIn", "k1", State::ChallengeSucceeded)
        .unwrap();
    assert!(e.validate_challenge(&used).is_valid);
    // Four sign-ins of u2: the fifth within the hour is blocked (more than 3 before it).
    e.track(&req("u2", "a", "d2")).unwrap();
    e.update_action("u2", "signIn", "a", State::ChallengeSucceeded)
        .unwrap();
    for k in ["b", "c", "d"] {
        assert_eq!(e.track(&req("u2", k, "d2")).unwrap().state, State::Allow);
    }
    let stored = e.stored_actions();
    let keys = e.history_keys();
    drop(e);

    let e = engine(&store).unwrap();
    assert_eq!(e.stored_actions(), stored);
    assert_eq!(e.history_keys(), keys);
    // The known device stays known.
    assert_eq!(e.track(&req("u1", "k2", "d1")).unwrap().state, State::Allow);
    // Velocity counts on: this is u2's fourth sign-in within the hour.
    assert_eq!(e.track(&req("u2", "e", "d2")).unwrap().state, State::Block);
    // The token issued before validates once; the one used before does not validate again.
    let v = e.validate_challenge(&token);
    assert!(v.is_valid, "{v:?}");
    assert_eq!(
        e.validate_challenge(&token).reason,
        Some(InvalidTokenReason::AlreadyUsed)
    );
    assert_eq!(
        e.validate_challenge(&used).reason,
        Some(InvalidTokenReason::AlreadyUsed)
    );
    // A repeat returns the stored action, decided before the restart, without deciding again.
    let again = e.track(&req("u1", "k1", "d1")).unwrap();
    assert_eq!(again.state, State::ChallengeSucceeded);
    assert_eq!(again.token, first.token);
    assert_eq!(e.decisions(), 2);
    let stats = e.durable_stats().unwrap();
    assert_eq!(stats.dropped, 0);
    assert!(stats.snapshot_bytes > 0);
}

#[test]
fn the_journal_alone_restores_what_was_synced() {
    // No snapshot after the changes: a restart replays the journal (the engine is left running, as a crashed
    // process would be, and a second engine loads its files).
    let (_dir, path) = temp("state");
    let store = StoreSettings::file(&path).sync_interval(Duration::from_millis(5));
    let e = engine(&store).unwrap();
    track_keys(&e, 50);
    let copy = crashed_copy(&e, &path, Duration::from_millis(50));
    let restored = engine(&StoreSettings::file(&copy.1)).unwrap();
    assert_eq!(restored.stored_actions(), 50);
    assert_eq!(
        restored.get_action("u1", "signIn", "k0").unwrap().state,
        State::ChallengeRequired
    );
    assert_eq!(
        restored.get_action("u1", "signIn", "k49").unwrap().state,
        State::Block
    );
    // Velocity: 50 earlier sign-ins of u1 within the hour.
    assert_eq!(
        restored.track(&req("u1", "new", "d1")).unwrap().state,
        State::Block
    );
    drop(e);
}

/// Copies the snapshot and journals at `from` to `to` (same names, another base).
fn copy_state(from: &Path, to: &Path) {
    let name = from.file_name().unwrap().to_string_lossy().into_owned();
    let to_name = to.file_name().unwrap().to_string_lossy().into_owned();
    for e in std::fs::read_dir(from.parent().unwrap()).unwrap() {
        let e = e.unwrap();
        let n = e.file_name().to_string_lossy().into_owned();
        if let Some(rest) = n.strip_prefix(&name) {
            let target = to.parent().unwrap().join(format!("{to_name}{rest}"));
            std::fs::copy(e.path(), target).unwrap();
        }
    }
}

/// A state with a snapshot and a journal, written by a clean shutdown and then more changes.
fn saved_state(path: &Path) {
    let store = StoreSettings::file(path);
    let e = engine(&store).unwrap();
    track_keys(&e, 20);
    drop(e);
}

fn refused(store: &StoreSettings) -> String {
    match engine(store) {
        Err(e @ LoadError::StateFile { .. }) => e.to_string(),
        Err(e) => panic!("another error: {e}"),
        Ok(_) => panic!("a damaged state was loaded"),
    }
}

#[test]
fn a_truncated_or_altered_snapshot_is_refused_or_set_aside() {
    let (dir, path) = temp("state");
    saved_state(&path);
    let whole = std::fs::read(&path).unwrap();
    let store = StoreSettings::file(&path);
    // Every cut and a flipped byte anywhere: refused, and the file left as it was.
    for cut in [1, 20, 40, whole.len() / 2, whole.len() - 1] {
        std::fs::write(&path, &whole[..cut]).unwrap();
        let msg = refused(&store);
        assert!(msg.contains("state"), "{msg}");
        assert_eq!(std::fs::read(&path).unwrap(), &whole[..cut]);
    }
    for at in (0..whole.len()).step_by(7) {
        let mut bad = whole.clone();
        bad[at] ^= 0x10;
        std::fs::write(&path, &bad).unwrap();
        let msg = refused(&store);
        assert!(
            msg.contains("damaged")
                || msg.contains("truncated")
                || msg.contains("not a riskgate")
                || msg.contains("version"),
            "byte {at}: {msg}"
        );
    }
    // `on_corrupt = "empty"`: the damaged file is set aside and the engine starts empty.
    let mut bad = whole.clone();
    bad[whole.len() / 2] ^= 1;
    std::fs::write(&path, &bad).unwrap();
    let e = engine(&store.clone().on_corrupt(OnCorrupt::Empty)).unwrap();
    assert_eq!(e.stored_actions(), 0);
    assert!(e
        .durable_stats()
        .unwrap()
        .recovered
        .unwrap()
        .contains("set aside"));
    let aside = std::fs::read_dir(dir.path())
        .unwrap()
        .filter(|f| {
            f.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .contains(".damaged-")
        })
        .count();
    assert!(aside >= 1);
    drop(e);
    // What it saved since loads again.
    assert!(engine(&store).is_ok());
}

#[test]
fn a_damaged_journal_is_refused_and_a_torn_tail_is_loaded() {
    let (_dir, path) = temp("state");
    let store = StoreSettings::file(&path).sync_interval(Duration::from_millis(5));
    let e = engine(&store).unwrap();
    for i in 0..30 {
        e.track(&req("u1", &format!("k{i}"), "d1")).unwrap();
        if i % 10 == 9 {
            // Separate frames.
            let n = e.durable_stats().unwrap().syncs;
            let deadline = Instant::now() + Duration::from_secs(10);
            while e.durable_stats().unwrap().syncs == n && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(2));
            }
        }
    }
    let pristine = temp("pristine");
    copy_state(&path, &pristine.1);
    drop(e);
    let copy = temp("copy");
    copy_state(&pristine.1, &copy.1);
    let journal = std::fs::read_dir(copy.0.path())
        .unwrap()
        .map(|f| f.unwrap().path())
        .find(|p| p.to_string_lossy().contains(".journal."))
        .unwrap();
    let whole = std::fs::read(&journal).unwrap();
    assert!(whole.len() > 200, "{}", whole.len());
    let store = StoreSettings::file(&copy.1);
    // Cut anywhere: loads, with what was whole.
    for cut in [whole.len() - 1, whole.len() - 30, whole.len() / 2, 30] {
        std::fs::write(&journal, &whole[..cut]).unwrap();
        let e = engine(&store).unwrap_or_else(|e| panic!("cut at {cut}: {e}"));
        assert!(e.stored_actions() < 30);
        let note = e.durable_stats().unwrap().recovered;
        assert!(
            note.as_deref().unwrap_or("").contains("incomplete write"),
            "{note:?}"
        );
        // Its shutdown snapshot folds the journal in: put the files back for the next cut.
        drop(e);
        copy_state(&pristine.1, &copy.1);
    }
    // A flipped byte in the first frame, with frames after it: refused.
    let mut bad = whole.clone();
    bad[60] ^= 1;
    std::fs::write(&journal, &bad).unwrap();
    let msg = refused(&store);
    assert!(msg.contains("damaged"), "{msg}");
}

#[test]
fn an_unknown_format_version_is_refused_naming_both() {
    // Versions 1 and 2: written before fingerprints (and version 2's store keys) changed their encoding, so
    // their actions would not match a repeat.
    for old in [1u32, 2] {
        let (_dir, path) = temp("state");
        saved_state(&path);
        let mut b = std::fs::read(&path).unwrap();
        b[8..12].copy_from_slice(&old.to_le_bytes());
        let sum = xxhash_of(&b[..20]);
        b[20..28].copy_from_slice(&sum.to_le_bytes());
        std::fs::write(&path, &b).unwrap();
        let msg = refused(&StoreSettings::file(&path));
        assert!(
            msg.contains(&format!("version {old}")) && msg.contains("version 3"),
            "{msg}"
        );
        // Even `on_corrupt = "empty"` does not start on it silently: the file is set aside, not overwritten.
        let e = engine(&StoreSettings::file(&path).on_corrupt(OnCorrupt::Empty)).unwrap();
        assert!(e
            .durable_stats()
            .unwrap()
            .recovered
            .unwrap()
            .contains(&format!("version {old}")));
    }
}

fn xxhash_of(b: &[u8]) -> u64 {
    // The header checksum is xxh3-64: recomputed here the way the format does, through the same crate riskgate uses.
    xxhash_rust::xxh3::xxh3_64(b)
}

#[test]
fn a_writer_that_falls_behind_drops_and_counts_never_blocks() {
    let (_dir, path) = temp("state");
    let store = StoreSettings::file(&path)
        .sync_interval(Duration::from_secs(3600))
        .journal_buffer(64 * 1024);
    let e = engine(&store).unwrap();
    let n = 5_000;
    let started = Instant::now();
    for i in 0..n {
        e.track(&req(&format!("u{i}"), "k", "d")).unwrap();
    }
    let took = started.elapsed();
    let stats = e.durable_stats().unwrap();
    assert!(stats.dropped > 0, "{stats:?}");
    assert_eq!(stats.syncs, 0);
    assert!(took < Duration::from_secs(60));
    drop(e);
    // What fit in the buffer was written at shutdown; the rest was counted, not waited for.
    let e = engine(&store).unwrap();
    let kept = e.stored_actions();
    assert!(kept > 0 && kept < n, "{kept}");
    assert_eq!(e.durable_stats().unwrap().dropped, 0);
}

#[test]
fn a_large_state_loads_in_parallel_within_the_capacity_newest_first() {
    let (_dir, path) = temp("state");
    let clock = riskgate::FakeClock::at(std::time::UNIX_EPOCH + Duration::from_secs(1_700_000_000));
    let build = |capacity: usize| {
        let rules = RuleSet::builder()
            .config_toml(format!("[idempotency]\ncapacity = {capacity}"))
            .rule("busy", BUSY)
            .build()
            .unwrap();
        Engine::builder()
            .ruleset(rules)
            .clock(clock.clone())
            .store(StoreSettings::file(&path))
            .build()
            .unwrap()
    };
    let e = build(20_000);
    let n = 12_000;
    for i in 0..n {
        clock.advance(Duration::from_millis(1));
        e.track(&TrackRequest::new(format!("u{i}"), "signIn").idempotency_key("k"))
            .unwrap();
    }
    drop(e);
    let e = build(20_000);
    assert_eq!(e.stored_actions(), n);
    drop(e);
    // A lower capacity keeps the newest actions, and the store evicts oldest first from there on.
    let e = build(5_000);
    assert_eq!(e.stored_actions(), 5_000);
    let has = |e: &Engine, i: usize| e.get_action(&format!("u{i}"), "signIn", "k").is_some();
    assert!((n - 5_000..n).all(|i| has(&e, i)));
    assert!(!(0..n - 5_000).any(|i| has(&e, i)));
    for i in 0..100 {
        clock.advance(Duration::from_millis(1));
        e.track(&TrackRequest::new(format!("new{i}"), "signIn").idempotency_key("k"))
            .unwrap();
    }
    assert_eq!(e.stored_actions(), 5_000);
    assert!((n - 5_000 + 100..n).all(|i| has(&e, i)));
    assert!(!(n - 5_000..n - 5_000 + 100).any(|i| has(&e, i)));
}

#[test]
fn settings_are_checked() {
    let bad = [
        StoreSettings::file("x").sync_interval(Duration::ZERO),
        StoreSettings::file("x").snapshot_interval(Duration::from_millis(10)),
        StoreSettings::file("x").journal_buffer(10),
        StoreSettings::file(""),
    ];
    for s in bad {
        assert!(
            matches!(engine(&s), Err(LoadError::InvalidSetting { .. })),
            "{s:?}"
        );
    }
    assert_eq!(
        StoreSettings::from_url("file:/tmp/x").unwrap().path,
        Some(PathBuf::from("/tmp/x"))
    );
    assert!(StoreSettings::from_url("file:").is_err());
}

#[test]
fn store_path_in_riskgate_toml() {
    let dir = tempfile::tempdir().unwrap();
    let rules = dir.path().join("rules");
    std::fs::create_dir_all(&rules).unwrap();
    std::fs::write(rules.join("busy.rhai"), BUSY).unwrap();
    let state = dir.path().join("state");
    std::fs::write(
        rules.join("riskgate.toml"),
        format!(
            "[store]\npath = {:?}\nsync_interval = \"20ms\"\nsnapshot_interval = \"1m\"\non_corrupt = \"empty\"\n",
            state.to_string_lossy()
        ),
    )
    .unwrap();
    let build = || {
        Engine::builder()
            .rules_dir(&rules)
            .unwrap()
            .build()
            .unwrap()
    };
    let e = build();
    e.track(&TrackRequest::new("u1", "signIn").idempotency_key("k"))
        .unwrap();
    drop(e);
    assert!(state.exists());
    assert!(build().get_action("u1", "signIn", "k").is_some());
    std::fs::write(
        rules.join("riskgate.toml"),
        "[store]\non_corrupt = \"maybe\"\n",
    )
    .unwrap();
    let err = Engine::builder()
        .rules_dir(&rules)
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("on_corrupt"), "{err}");
}

// ---- kill -9 ----

const CHILD: &str = "RISKGATE_DURABLE_CHILD";

/// The child process of `survives_kill_9_at_random_points`: tracks without end, flushing every few actions and
/// printing what each flush covered. Does nothing unless run as that child.
#[test]
fn child_process() {
    let Ok(path) = std::env::var(CHILD) else {
        return;
    };
    let start: u64 = std::env::var("RISKGATE_DURABLE_START")
        .unwrap()
        .parse()
        .unwrap();
    let store = StoreSettings::file(&path).sync_interval(Duration::from_millis(3));
    let e = engine(&store).unwrap();
    println!("ready");
    let mut i = start;
    loop {
        for _ in 0..10 {
            let user = format!("u{}", i % 7);
            e.track(&req(&user, &format!("k{i}"), &format!("d{}", i % 3)))
                .unwrap();
            i += 1;
        }
        e.flush().unwrap();
        println!("acked {}", i - 1);
    }
}

#[test]
fn survives_kill_9_at_random_points() {
    if std::env::var(CHILD).is_ok() {
        return;
    }
    let (_dir, path) = temp("state");
    let exe = std::env::current_exe().unwrap();
    let mut acked: Vec<u64> = Vec::new();
    let mut rng = 0x9E37_79B9_7F4A_7C15u64 ^ u64::from(std::process::id());
    let mut next = || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let started = Instant::now();
    let kills = 50;
    for round in 0..kills {
        let start = round * 1_000_000;
        let mut child = Command::new(&exe)
            .args([
                "--exact",
                "child_process",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD, &path)
            .env("RISKGATE_DURABLE_START", start.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        // Half the kills land at a random moment from the start (loading, the first snapshot), half while
        // tracking and flushing.
        let wait = Duration::from_millis(next() % 250);
        std::thread::sleep(wait);
        child.kill().unwrap();
        child.wait().unwrap();
        let mut out = String::new();
        child
            .stdout
            .take()
            .unwrap()
            .read_to_string(&mut out)
            .unwrap();
        if let Some(last) = out
            .lines()
            .filter_map(|l| l.strip_prefix("acked "))
            .filter_map(|n| n.parse::<u64>().ok())
            .next_back()
        {
            acked.extend(start..=last);
        }
        // The files always load, and hold every action acknowledged before a flush returned.
        let e = engine(&StoreSettings::file(&path))
            .unwrap_or_else(|e| panic!("round {round}: the state does not load: {e}"));
        for &i in &acked {
            let user = format!("u{}", i % 7);
            assert!(
                e.get_action(&user, "signIn", &format!("k{i}")).is_some(),
                "round {round}: action {i} was acknowledged but is gone"
            );
        }
        drop(e);
    }
    assert!(
        acked.len() > 100,
        "the child acknowledged only {} actions",
        acked.len()
    );
    eprintln!(
        "{kills} kills, {} acknowledged actions checked, {:?}",
        acked.len(),
        started.elapsed()
    );
}

#[test]
fn rba_score_counts_survive_a_restart() {
    const SCORE: &str = "//! priority: 5\nif rba_score() > 1.0e12 { REVIEW }";
    let rules = || RuleSet::from_sources([("new-device", NEW_DEVICE), ("score", SCORE)]).unwrap();
    let (_dir, path) = temp("state");
    let store = StoreSettings::file(&path);
    let build = || {
        Engine::builder()
            .ruleset(rules())
            .store(store.clone())
            .build()
            .unwrap()
    };
    let signin = |user: &str, key: &str, device: &str, ip: &str| {
        let mut r = req(user, key, device);
        r.attributes.ip_address = Some(ip.into());
        r.attributes.user_agent = Some(
            "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) \
             Chrome/120.0.0.0 Safari/537.36"
                .into(),
        );
        r
    };
    let e = build();
    // Verified sign-ins (challenged on a new device, then passed) teach the user's and the population's counts.
    for (i, (user, device, ip)) in [
        ("u1", "d1", "81.2.69.160"),
        ("u2", "d2", "81.2.69.160"),
        ("u3", "d3", "216.160.83.56"),
        ("u1", "d4", "216.160.83.56"),
    ]
    .into_iter()
    .enumerate()
    {
        let key = format!("k{i}");
        let r = e.track(&signin(user, &key, device, ip)).unwrap();
        assert_eq!(r.state, State::ChallengeRequired);
        e.update_action(user, "signIn", &key, State::ChallengeSucceeded)
            .unwrap();
    }
    let probe = signin("u1", "probe", "d9", "216.160.83.56");
    let factors = |e: &Engine| {
        let why = e.explain(&probe).unwrap();
        let score = why
            .rules
            .iter()
            .find(|t| t.rule_id.as_str() == "score")
            .unwrap();
        format!("{:?}", score.rba)
    };
    let before = factors(&e);
    let empty = Engine::builder().ruleset(rules()).build().unwrap();
    assert_ne!(factors(&empty), before, "the counts move the score");
    drop(e);
    let e = build();
    assert_eq!(factors(&e), before, "the score's counts after a restart");
}

// ---- files an operator or an adversary leaves behind ----

#[test]
fn journals_without_their_snapshot_are_refused_not_replayed_under_new_keys() {
    // The journals' records are keyed with the snapshot's hashing keys: replayed under newly drawn ones, every
    // repeat would be an idempotency conflict and the history would count under keys nothing looks up.
    let (dir, path) = temp("state");
    let store = StoreSettings::file(&path).sync_interval(Duration::from_millis(5));
    let e = engine(&store).unwrap();
    track_keys(&e, 10);
    let copy = crashed_copy(&e, &path, Duration::from_millis(30));
    drop(e);
    std::fs::remove_file(&copy.1).unwrap();
    let msg = refused(&StoreSettings::file(&copy.1));
    assert!(msg.contains("snapshot"), "{msg}");
    // Nothing was changed: the journal is still there, and no new snapshot was written over the gap.
    assert!(!copy.1.exists());
    // `on_corrupt = "empty"` sets the journals aside and starts empty.
    let e = engine(&StoreSettings::file(&copy.1).on_corrupt(OnCorrupt::Empty)).unwrap();
    assert_eq!(e.stored_actions(), 0);
    drop(e);
    drop(dir);
}

#[cfg(unix)]
#[test]
fn a_fifo_or_a_device_at_the_path_is_refused_without_blocking() {
    let (_dir, path) = temp("state");
    assert!(Command::new("mkfifo")
        .arg(&path)
        .status()
        .unwrap()
        .success());
    let (tx, rx) = std::sync::mpsc::channel();
    let p = path.clone();
    std::thread::spawn(move || {
        let r = engine(&StoreSettings::file(&p)).map(|_| ());
        let _ = tx.send(r.map_err(|e| e.to_string()));
    });
    let msg = rx
        .recv_timeout(Duration::from_secs(20))
        .expect("building on a FIFO blocked")
        .unwrap_err();
    assert!(msg.contains("regular file"), "{msg}");
    let msg = refused(&StoreSettings::file("/dev/zero"));
    assert!(msg.contains("regular file"), "{msg}");
}

/// A tmpfs of `kib` KiB mounted on a new folder, unmounted when dropped; `None` where mounting is not allowed.
struct Tmpfs(tempfile::TempDir);

impl Tmpfs {
    fn mount(kib: usize) -> Option<Tmpfs> {
        let dir = tempfile::tempdir().ok()?;
        let ok = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={kib}k"),
                "riskgate-test",
            ])
            .arg(dir.path())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        ok.then_some(Tmpfs(dir))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(self.0.path()).status();
    }
}

#[test]
fn a_full_disk_loses_nothing_once_it_has_room_again() {
    let Some(fs) = Tmpfs::mount(512) else {
        eprintln!("skipped: cannot mount a tmpfs here");
        return;
    };
    let path = fs.0.path().join("state");
    let store = StoreSettings::file(&path).sync_interval(Duration::from_secs(3600));
    let e = engine(&store).unwrap();
    // Fill the disk: only the journal's last page has room left.
    let filler = fs.0.path().join("filler");
    {
        use std::io::Write;
        let mut f = std::fs::File::create(&filler).unwrap();
        while f.write_all(&[7u8; 4096]).is_ok() {}
        let _ = f.sync_all();
    }
    // More than the page holds: the frame is written in part, then the disk is full.
    for i in 0..100 {
        e.track(&req(&format!("u{i}"), "k", "d")).unwrap();
    }
    let err = e.flush().expect_err("a full disk is reported by flush");
    assert!(!err.to_string().is_empty());
    // Room again: what was tracked meanwhile and what the full disk refused both reach the disk.
    std::fs::remove_file(&filler).unwrap();
    for i in 100..110 {
        e.track(&req(&format!("u{i}"), "k", "d")).unwrap();
    }
    e.flush()
        .unwrap_or_else(|e| panic!("after the disk has room: {e}"));
    drop(e);
    let e = engine(&store).unwrap_or_else(|e| panic!("the state does not load: {e}"));
    assert_eq!(e.stored_actions(), 110);
    drop(e);
}

#[cfg(unix)]
#[test]
fn a_second_engine_on_one_path_is_refused_while_the_first_runs() {
    let (_dir, path) = temp("state");
    let store = StoreSettings::file(&path);
    let first = engine(&store).unwrap();
    first.track(&req("u1", "k1", "d1")).unwrap();
    let msg = refused(&store);
    assert!(msg.contains("another engine"), "{msg}");
    // The refusal changed nothing: the first engine's state is whole, and loads once it is gone.
    drop(first);
    let again = engine(&store).unwrap();
    assert!(again.get_action("u1", "signIn", "k1").is_some());
}

#[test]
fn a_path_in_a_missing_folder_is_refused_naming_it() {
    let (dir, _) = temp("state");
    let missing = dir.path().join("no-such-folder").join("state");
    let msg = refused(&StoreSettings::file(&missing));
    assert!(msg.contains("no-such-folder"), "{msg}");
    assert!(!missing.parent().unwrap().exists());
}

#[test]
fn restarts_keep_idempotency_transitions_tokens_and_ttl() {
    let (_dir, path) = temp("state");
    let clock = riskgate::FakeClock::at(std::time::UNIX_EPOCH + Duration::from_secs(1_700_000_000));
    let build = |path: &Path| {
        let rules = RuleSet::builder()
            .config_toml("[idempotency]\nttl = \"10m\"")
            .rule("new-device", NEW_DEVICE)
            .rule("busy", BUSY)
            .build()
            .unwrap();
        Engine::builder()
            .ruleset(rules)
            .clock(clock.clone())
            .store(StoreSettings::file(path).sync_interval(Duration::from_millis(5)))
            .build()
            .unwrap()
    };
    let e = build(&path);
    let t1 = e.track(&req("u1", "k1", "d1")).unwrap().token.unwrap();
    assert!(e.track(&req("u2", "k2", "d2")).unwrap().token.is_some());
    drop(e);

    clock.advance(Duration::from_secs(5 * 60));
    let e = build(&path);
    // The same key with another request is still a conflict; the same request is the stored action.
    let conflict = e.track(&req("u1", "k1", "d9")).unwrap_err();
    assert_eq!(conflict.code(), "idempotency_conflict");
    assert_eq!(
        e.track(&req("u1", "k1", "d1")).unwrap().state,
        State::ChallengeRequired
    );
    // Transitions go on from the stored state, and only the allowed ones.
    e.update_action("u1", "signIn", "k1", State::ChallengeSucceeded)
        .unwrap();
    assert!(e
        .update_action("u1", "signIn", "k1", State::ChallengeFailed)
        .is_err());
    assert!(e.validate_challenge(&t1).is_valid);
    assert_eq!(
        e.validate_challenge(&t1).reason,
        Some(InvalidTokenReason::AlreadyUsed)
    );
    // The challenge passed after the restart made the device known.
    assert_eq!(e.track(&req("u1", "k3", "d1")).unwrap().state, State::Allow);
    // The same from the journal alone (a crash now): a copy of the files as they are.
    let copy = crashed_copy(&e, &path, Duration::from_millis(50));
    let c = build(&copy.1);
    assert_eq!(
        c.get_action("u1", "signIn", "k1").unwrap().state,
        State::ChallengeSucceeded
    );
    assert_eq!(
        c.validate_challenge(&t1).reason,
        Some(InvalidTokenReason::AlreadyUsed)
    );
    assert!(c
        .update_action("u1", "signIn", "k1", State::ChallengeFailed)
        .is_err());
    drop(c);
    drop(e);

    // Ten minutes after they were created, the first actions are gone: measured from when they were created,
    // not from the restart.
    clock.advance(Duration::from_secs(5 * 60));
    let e = build(&path);
    assert!(e.get_action("u2", "signIn", "k2").is_none());
    assert!(e.get_action("u1", "signIn", "k1").is_none());
    assert!(e.get_action("u1", "signIn", "k3").is_some());
    // An expired key is free again: a different request under it is a new action, not a conflict.
    assert!(e.track(&req("u2", "k2", "d9")).is_ok());
}

#[test]
fn a_lower_max_bytes_holds_after_a_restart() {
    let (_dir, path) = temp("state");
    let build = |max_bytes: usize| {
        let rules = RuleSet::builder()
            .config_toml(format!("[signals]\nmax_bytes = {max_bytes}"))
            .rule("busy", BUSY)
            .build()
            .unwrap();
        Engine::builder()
            .ruleset(rules)
            .store(StoreSettings::file(&path))
            .build()
            .unwrap()
    };
    let e = build(64 << 20);
    for i in 0..3000 {
        let mut r =
            TrackRequest::new(format!("u{}", i % 1000), "signIn").idempotency_key(format!("k{i}"));
        r.attributes.device_id = Some(format!("d{i}"));
        r.attributes.ip_address = Some(format!("10.0.{}.{}", (i / 250) % 250, i % 250));
        e.track(&r).unwrap();
    }
    let before = e.history_bytes();
    drop(e);
    let max_bytes = 64 * 1024;
    assert!(before > 8 * max_bytes, "{before}");
    let e = build(max_bytes);
    // Each of the four tables within `max_bytes`, the newest keys kept.
    assert!(
        e.history_bytes() <= 4 * max_bytes,
        "{} bytes",
        e.history_bytes()
    );
    assert!(e.history_keys() > 0);
}
