//! Replacing the rules: `swap_ruleset` and `reload_rules` are atomic (a decision runs on one ruleset from start
//! to end), a folder is read again while decisions run, every kind of broken folder never replaces the working
//! ruleset, and (feature `watch`) the folder is reloaded when it changes.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

mod common;

use common::{at, clock, keyed};
use riskgate::{Engine, LoadError, RuleSet, State, TrackRequest};
use std::fs;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

/// `user-1` signing in from 203.0.113.7 with idempotency key `key`.
fn req(key: &str) -> TrackRequest {
    keyed(key).ip("203.0.113.7")
}

/// Writes generation `g` of a ruleset into `dir`: two rules whose file names carry the generation.
fn write_generation(dir: &Path, g: usize) {
    fs::create_dir_all(dir).unwrap();
    fs::write(
        dir.join(format!("g{g}-challenge.rhai")),
        "//! priority: 10\nif ip_address != () { CHALLENGE_REQUIRED }",
    )
    .unwrap();
    fs::write(
        dir.join(format!("g{g}-review.rhai")),
        "//! priority: 20\nREVIEW",
    )
    .unwrap();
}

/// Points the symlink `link` at `target` atomically (a new link renamed over the old one), the way
/// deployments switch rules folders.
#[cfg(unix)]
fn point(link: &Path, target: &Path) {
    let tmp = link.with_extension("tmp");
    let _ = fs::remove_file(&tmp);
    std::os::unix::fs::symlink(target, &tmp).unwrap();
    fs::rename(&tmp, link).unwrap();
}

#[cfg(unix)]
#[test]
fn reloads_while_decisions_run_never_mix_generations() {
    let root = tempfile::tempdir().unwrap();
    let link = root.path().join("current");
    write_generation(&root.path().join("gen-0"), 0);
    point(&link, &root.path().join("gen-0"));
    let engine = Engine::builder()
        .rules_dir(&link)
        .unwrap()
        .clock(clock())
        .build()
        .unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let trackers: Vec<_> = (0..3)
        .map(|t| {
            let engine = engine.clone();
            let stop = Arc::clone(&stop);
            thread::spawn(move || {
                let mut generations = std::collections::BTreeSet::new();
                let mut i = 0;
                while !stop.load(Ordering::Relaxed) || i < 50 {
                    let resp = engine.track_at(&req(&format!("t{t}-{i}")), at(0)).unwrap();
                    assert_eq!(resp.rule_ids.len(), 2, "{resp:?}");
                    let g = resp.rule_ids[0].split('-').next().unwrap().to_owned();
                    assert!(
                        resp.rule_ids
                            .iter()
                            .all(|id| id.starts_with(&format!("{g}-"))),
                        "mixed generations: {resp:?}"
                    );
                    assert_eq!(resp.state, State::ChallengeRequired);
                    generations.insert(g);
                    i += 1;
                }
                generations
            })
        })
        .collect();
    let mut loaded = 0;
    for g in 1..=20 {
        let dir = root.path().join(format!("gen-{g}"));
        write_generation(&dir, g);
        point(&link, &dir);
        // A reload that lists one generation's folder and then reads the next one's fails whole (the file
        // is not there), and the ruleset in use stays: either way, never a mix.
        if engine.reload_rules().is_ok() {
            loaded += 1;
        }
        thread::sleep(Duration::from_millis(2));
    }
    stop.store(true, Ordering::Relaxed);
    let mut seen = std::collections::BTreeSet::new();
    for t in trackers {
        seen.extend(t.join().unwrap());
    }
    assert!(loaded > 0);
    assert!(seen.len() > 1, "decisions saw only {seen:?}");
    // After the last reload, decisions use the last generation.
    let resp = engine.track_at(&req("after"), at(0)).unwrap();
    assert!(resp.rule_ids[0].starts_with("g20-"), "{resp:?}");
}

#[test]
fn a_broken_folder_never_replaces_the_working_rules() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    fs::write(
        d.join("challenge.rhai"),
        "//! priority: 10\nCHALLENGE_REQUIRED",
    )
    .unwrap();
    fs::create_dir_all(d.join("lists")).unwrap();
    fs::write(d.join("lists/bad.txt"), "203.0.113.0/24\n").unwrap();
    fs::write(d.join("riskgate.toml"), "default_outcome = \"ALLOW\"\n").unwrap();
    let engine = Engine::builder()
        .rules_dir(d)
        .unwrap()
        .clock(clock())
        .build()
        .unwrap();
    let baseline = engine.track_at(&req("k0"), at(0)).unwrap();
    assert_eq!(baseline.rule_ids, ["challenge"]);
    type Break = (&'static str, Box<dyn Fn(&Path)>, Box<dyn Fn(&Path)>);
    let breakages: Vec<Break> = vec![
        (
            "syntax error",
            Box::new(|d| fs::write(d.join("new.rhai"), "if { BLOCK").unwrap()),
            Box::new(|d| fs::remove_file(d.join("new.rhai")).unwrap()),
        ),
        (
            "unknown metadata key",
            Box::new(|d| fs::write(d.join("new.rhai"), "//! priorty: 1\nBLOCK").unwrap()),
            Box::new(|d| fs::remove_file(d.join("new.rhai")).unwrap()),
        ),
        (
            "unknown function",
            Box::new(|d| {
                fs::write(d.join("new.rhai"), "if velocty(\"1h\") > 1 { BLOCK }").unwrap()
            }),
            Box::new(|d| fs::remove_file(d.join("new.rhai")).unwrap()),
        ),
        (
            "not UTF-8",
            Box::new(|d| fs::write(d.join("new.rhai"), b"BLOCK \xff\xfe").unwrap()),
            Box::new(|d| fs::remove_file(d.join("new.rhai")).unwrap()),
        ),
        (
            "half-written file",
            Box::new(|d| fs::write(d.join("new.rhai"), "if custom.amount > 1000 && ").unwrap()),
            Box::new(|d| fs::remove_file(d.join("new.rhai")).unwrap()),
        ),
        (
            "bad riskgate.toml",
            Box::new(|d| {
                fs::write(d.join("riskgate.toml"), "default_outcome = \"MAYBE\"\n").unwrap()
            }),
            Box::new(|d| {
                fs::write(d.join("riskgate.toml"), "default_outcome = \"ALLOW\"\n").unwrap()
            }),
        ),
        (
            "unparsable riskgate.toml",
            Box::new(|d| fs::write(d.join("riskgate.toml"), "[limits\n").unwrap()),
            Box::new(|d| {
                fs::write(d.join("riskgate.toml"), "default_outcome = \"ALLOW\"\n").unwrap()
            }),
        ),
        (
            "bad list",
            Box::new(|d| fs::write(d.join("lists/bad.txt"), "203.0.113.0/33\n").unwrap()),
            Box::new(|d| fs::write(d.join("lists/bad.txt"), "203.0.113.0/24\n").unwrap()),
        ),
        (
            "rule file turned into a folder",
            Box::new(|d| fs::create_dir_all(d.join("challenge.rhai.d/x.rhai")).unwrap()),
            Box::new(|d| fs::remove_dir_all(d.join("challenge.rhai.d")).unwrap()),
        ),
    ];
    for (i, (name, break_it, fix_it)) in breakages.iter().enumerate() {
        break_it(d);
        let err = engine.reload_rules();
        // The folder-shaped rule file is skipped rather than refused (folders are walked): it must not load
        // as a rule either way.
        if *name != "rule file turned into a folder" {
            let err = err.expect_err(name);
            assert!(!err.to_string().is_empty(), "{name}");
        }
        let resp = engine
            .track_at(&req(&format!("k{}", i + 1)), at(0))
            .unwrap();
        assert_eq!(
            resp.rule_ids, baseline.rule_ids,
            "{name}: the working rules changed"
        );
        assert_eq!(resp.state, baseline.state, "{name}");
        fix_it(d);
        engine
            .reload_rules()
            .unwrap_or_else(|e| panic!("{name}: fixed folder fails: {e}"));
    }
}

#[test]
fn a_deleted_folder_keeps_the_working_rules() {
    let dir = tempfile::tempdir().unwrap();
    let rules = dir.path().join("rules");
    fs::create_dir_all(&rules).unwrap();
    fs::write(rules.join("review.rhai"), "REVIEW").unwrap();
    let engine = Engine::builder()
        .rules_dir(&rules)
        .unwrap()
        .build()
        .unwrap();
    fs::remove_dir_all(&rules).unwrap();
    let err = engine.reload_rules().unwrap_err();
    assert!(err.to_string().contains("cannot read"), "{err}");
    assert_eq!(engine.track(&req("k")).unwrap().state, State::Review);
}

// ---- swapping rulesets, and reloading a folder ----

#[test]
fn swap_ruleset_changes_later_decisions_and_keeps_stored_actions() {
    let e = Engine::builder()
        .ruleset(RuleSet::from_sources([("v1", "REVIEW")]).unwrap())
        .build()
        .unwrap();
    assert_eq!(e.track(&keyed("a")).unwrap().state, State::Review);
    e.swap_ruleset(RuleSet::from_sources([("v2", "BLOCK")]).unwrap());
    let resp = e.track(&keyed("b")).unwrap();
    assert_eq!(resp.state, State::Block);
    assert_eq!(resp.rule_ids, ["v2"]);
    // The action decided before the swap is still the same action.
    let again = e.track(&keyed("a")).unwrap();
    assert_eq!(again.state, State::Review);
    assert_eq!(again.rule_ids, ["v1"]);
}

#[test]
fn reload_reads_the_folder_again_and_a_broken_folder_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("r.rhai"), "REVIEW").unwrap();
    let e = Engine::builder()
        .rules_dir(dir.path())
        .unwrap()
        .build()
        .unwrap();
    assert_eq!(e.track(&keyed("1")).unwrap().state, State::Review);

    fs::write(dir.path().join("r.rhai"), "BLOCK").unwrap();
    e.reload_rules().unwrap();
    assert_eq!(e.track(&keyed("2")).unwrap().state, State::Block);

    // A syntax error in one file and a bad config: the whole reload is refused.
    fs::write(dir.path().join("r.rhai"), "ALLOW").unwrap();
    fs::write(dir.path().join("broken.rhai"), "if {").unwrap();
    let err = e.reload_rules().unwrap_err();
    assert!(err.to_string().contains("broken.rhai:1:"), "{err}");
    assert_eq!(
        e.track(&keyed("3")).unwrap().state,
        State::Block,
        "the old ruleset stays whole"
    );
    assert_eq!(e.ruleset().len(), 1);

    fs::remove_file(dir.path().join("broken.rhai")).unwrap();
    fs::write(
        dir.path().join("riskgate.toml"),
        "on_rule_error = \"sometimes\"\n",
    )
    .unwrap();
    assert!(e.reload_rules().is_err());
    assert_eq!(e.track(&keyed("4")).unwrap().state, State::Block);

    fs::remove_file(dir.path().join("riskgate.toml")).unwrap();
    e.reload_rules().unwrap();
    assert_eq!(e.track(&keyed("5")).unwrap().state, State::Allow);
}

#[test]
fn reload_needs_a_folder() {
    let e = Engine::builder()
        .ruleset(RuleSet::from_sources([("r", "ALLOW")]).unwrap())
        .build()
        .unwrap();
    assert!(matches!(e.reload_rules(), Err(LoadError::NoRulesDir)));
    assert!(matches!(
        Engine::builder().build(),
        Err(LoadError::NoRuleset)
    ));
}

#[test]
fn engine_is_send_sync_and_clones_share_state() {
    fn assert_send_sync<T: Send + Sync + Clone>() {}
    assert_send_sync::<Engine>();
    let e = Engine::builder()
        .ruleset(RuleSet::from_sources([("r", "REVIEW")]).unwrap())
        .build()
        .unwrap();
    let e2 = e.clone();
    e2.swap_ruleset(RuleSet::from_sources([("r", "BLOCK")]).unwrap());
    assert_eq!(e.track(&keyed("x")).unwrap().state, State::Block);
    assert_eq!(e2.stored_actions(), 1);
}

#[test]
fn in_flight_decisions_finish_on_the_ruleset_they_started_with() {
    // Rules that take a while, swapped many times while threads decide: every response's rule ids come from
    // one ruleset generation, never a mix.
    let make = |g: u32| {
        RuleSet::from_sources([
            (format!("g{g}/a"), common::slow("REVIEW")),
            (format!("g{g}/b"), common::slow("BLOCK")),
        ])
        .unwrap()
    };
    let e = Engine::builder().ruleset(make(0)).build().unwrap();
    std::thread::scope(|s| {
        for t in 0..2 {
            let e = e.clone();
            s.spawn(move || {
                for i in 0..300 {
                    let resp = e.track(&keyed(&format!("{t}-{i}"))).unwrap();
                    let gens: Vec<&str> = resp
                        .rule_ids
                        .iter()
                        .map(|id| id.split('/').next().unwrap())
                        .collect();
                    assert_eq!(gens.len(), 2);
                    assert_eq!(gens[0], gens[1], "mixed rulesets: {:?}", resp.rule_ids);
                }
            });
        }
        for g in 1..50 {
            e.swap_ruleset(make(g));
        }
    });
}

// ---- watching the folder (feature `watch`) ----

#[cfg(feature = "watch")]
mod watch {
    use super::*;
    use riskgate::{LoadError, RuleSet, WatchError};
    use std::sync::mpsc;

    const DEBOUNCE: Duration = Duration::from_millis(50);
    /// Filesystem events can be slow on a loaded CI machine.
    const PATIENCE: Duration = Duration::from_secs(10);

    fn watched(
        d: &Path,
    ) -> (
        Engine,
        riskgate::RulesWatcher,
        mpsc::Receiver<Result<(), String>>,
    ) {
        let engine = Engine::builder().rules_dir(d).unwrap().build().unwrap();
        let (tx, rx) = mpsc::channel();
        let watcher = engine
            .watch_rules(DEBOUNCE, move |r: Result<(), LoadError>| {
                let _ = tx.send(r.map_err(|e| e.to_string()));
            })
            .unwrap();
        (engine, watcher, rx)
    }

    fn state(engine: &Engine, key: &str) -> State {
        engine.track(&req(key)).unwrap().state
    }

    #[test]
    fn a_change_on_disk_is_reloaded_and_a_broken_one_is_not() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        fs::write(d.join("r.rhai"), "REVIEW").unwrap();
        let (engine, watcher, reloads) = watched(d);
        assert_eq!(watcher.dir(), d);
        assert_eq!(state(&engine, "a"), State::Review);

        fs::write(d.join("r.rhai"), "BLOCK").unwrap();
        assert_eq!(reloads.recv_timeout(PATIENCE).unwrap(), Ok(()));
        assert_eq!(state(&engine, "b"), State::Block);

        fs::write(d.join("r.rhai"), "if { BLOCK").unwrap();
        let err = reloads.recv_timeout(PATIENCE).unwrap().unwrap_err();
        assert!(err.contains("r.rhai:1:"), "{err}");
        assert_eq!(
            state(&engine, "c"),
            State::Block,
            "a broken file replaced the rules"
        );

        fs::write(d.join("r.rhai"), "ALLOW").unwrap();
        assert_eq!(reloads.recv_timeout(PATIENCE).unwrap(), Ok(()));
        assert_eq!(state(&engine, "d"), State::Allow);

        // Dropping the watcher stops reloading.
        drop(watcher);
        fs::write(d.join("r.rhai"), "BLOCK").unwrap();
        assert!(reloads.recv_timeout(DEBOUNCE * 10).is_err());
        assert_eq!(state(&engine, "e"), State::Allow);
    }

    #[test]
    fn a_burst_of_changes_is_one_reload() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        fs::write(d.join("r.rhai"), "REVIEW").unwrap();
        let (engine, _watcher, reloads) = watched(d);
        for i in 0..30 {
            fs::write(d.join(format!("r{i}.rhai")), "//! priority: 90\nALLOW").unwrap();
        }
        fs::write(d.join("r.rhai"), "BLOCK").unwrap();
        assert_eq!(reloads.recv_timeout(PATIENCE).unwrap(), Ok(()));
        // Whatever else arrives, it arrives soon after and is at most a couple of reloads.
        let mut more = 0;
        while reloads.recv_timeout(DEBOUNCE * 6).is_ok() {
            more += 1;
        }
        assert!(more <= 2, "{more} more reloads for one burst");
        assert_eq!(state(&engine, "x"), State::Block);
        assert_eq!(engine.ruleset().len(), 31);
    }

    /// The final rule: REVIEW for the probe (which has no `custom.ok`). Its prefix `if custom.ok == true
    /// { ALLOW }` is a valid rule too, which returns `()` for the probe, so the default, ALLOW, applies; the
    /// empty prefix is also ALLOW.
    const FINAL: &str = "//! priority: 10\nif custom.ok == true { ALLOW } else { REVIEW }\n";

    /// Watches `d` (holding one rule that BLOCKs) with `debounce`; every reload's result, with the probe's
    /// state right after it when it loaded, goes to the receiver.
    fn watched_probe(
        d: &Path,
        debounce: Duration,
    ) -> (
        Engine,
        riskgate::RulesWatcher,
        mpsc::Receiver<Result<State, String>>,
    ) {
        let engine = Engine::builder().rules_dir(d).unwrap().build().unwrap();
        let (tx, rx) = mpsc::channel();
        let probe = engine.clone();
        let n = std::sync::atomic::AtomicUsize::new(0);
        let watcher = engine
            .watch_rules(debounce, move |r: Result<(), LoadError>| {
                let i = n.fetch_add(1, Ordering::Relaxed);
                let _ = tx.send(
                    r.map(|()| probe.track(&req(&format!("probe-{i}"))).unwrap().state)
                        .map_err(|e| e.to_string()),
                );
            })
            .unwrap();
        (engine, watcher, rx)
    }

    /// Writes `text` to `path` a few bytes at a time, with a pause after each piece; `long` pauses of
    /// `pause_long` come after every tenth piece.
    fn write_slowly(path: &Path, text: &str, pause: Duration, pause_long: Duration) {
        use std::io::Write;
        let mut f = fs::File::create(path).unwrap();
        for (i, piece) in text.as_bytes().chunks(2).enumerate() {
            f.write_all(piece).unwrap();
            f.flush().unwrap();
            thread::sleep(if i % 10 == 9 { pause_long } else { pause });
        }
    }

    #[test]
    fn a_rule_written_slowly_in_place_never_loads_a_prefix() {
        // Pieces every quarter debounce, and after every tenth piece a pause longer than the debounce (but
        // within the settle check): the debounce alone would load a prefix at each long pause, and the old
        // "at least every ten debounce periods" rule would load one anyway.
        let debounce = Duration::from_millis(200);
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        fs::write(d.join("r.rhai"), "BLOCK").unwrap();
        let (engine, _watcher, reloads) = watched_probe(d, debounce);
        assert_eq!(state(&engine, "start"), State::Block);
        let done = Arc::new(AtomicBool::new(false));
        let writer = {
            let (path, done) = (d.join("r.rhai"), Arc::clone(&done));
            thread::spawn(move || {
                write_slowly(&path, FINAL, debounce / 4, debounce * 5 / 4);
                done.store(true, Ordering::Release);
            })
        };
        // While the file is being written, decisions see the old rule or the whole new one, never a prefix.
        let mut i = 0;
        while !done.load(Ordering::Acquire) {
            let s = state(&engine, &format!("during-{i}"));
            assert!(
                s == State::Block || s == State::Review,
                "a prefix was loaded: {s:?}"
            );
            i += 1;
            thread::sleep(Duration::from_millis(5));
        }
        writer.join().unwrap();
        // The first reload the watcher made is the whole rule; the prefixes were never even tried.
        let first = reloads.recv_timeout(PATIENCE).unwrap();
        assert_eq!(
            first,
            Ok(State::Review),
            "a reload of a partly written file"
        );
        assert_eq!(state(&engine, "end"), State::Review);
        assert!(reloads.recv_timeout(debounce * 4).is_err(), "one reload");
    }

    #[test]
    fn the_rename_workflow_swaps_a_rule_in_whole() {
        // Written under a hidden name in the folder, or outside it, with pauses far longer than the debounce
        // (which would defeat the settle check in place): nothing loads until the rename, which loads it all.
        let debounce = Duration::from_millis(50);
        let outside = tempfile::tempdir().unwrap();
        for tmp_in_folder in [true, false] {
            let dir = tempfile::tempdir().unwrap();
            let d = dir.path();
            fs::write(d.join("r.rhai"), "BLOCK").unwrap();
            let (engine, _watcher, reloads) = watched_probe(d, debounce);
            let tmp = if tmp_in_folder {
                d.join(".r.rhai.tmp")
            } else {
                outside.path().join("r.rhai")
            };
            let short = FINAL.get(..40).unwrap().to_owned() + "\n";
            write_slowly(&tmp, &short, debounce * 4, debounce * 4);
            fs::write(&tmp, FINAL).unwrap();
            // Whatever reloads the hidden file's events caused, they kept the old rule.
            while let Ok(r) = reloads.recv_timeout(debounce * 6) {
                assert_eq!(r, Ok(State::Block), "in folder: {tmp_in_folder}");
            }
            assert_eq!(state(&engine, "before"), State::Block);
            fs::rename(&tmp, d.join("r.rhai")).unwrap();
            assert_eq!(reloads.recv_timeout(PATIENCE).unwrap(), Ok(State::Review));
            assert_eq!(state(&engine, "after"), State::Review);
            // `reload_rules` reads the renamed file whole too.
            engine.reload_rules().unwrap();
            assert_eq!(state(&engine, "again"), State::Review);
        }
    }

    #[test]
    fn an_engine_without_a_folder_has_nothing_to_watch() {
        let engine = Engine::builder()
            .ruleset(RuleSet::from_sources([("r", "ALLOW")]).unwrap())
            .build()
            .unwrap();
        let err = engine.watch_rules(DEBOUNCE, |_| {}).unwrap_err();
        assert!(matches!(err, WatchError::NoRulesDir), "{err}");
    }
}
