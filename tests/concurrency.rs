//! Many threads tracking, updating actions and swapping rulesets at once: no deadlock, no lost history (the
//! counts add up exactly), no response that mixes two rulesets, and one decision per identity however many
//! threads race on it.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

mod common;

use riskgate::{Engine, FakeClock, RuleSet, State, TrackError, TrackRequest};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Barrier};
use std::thread;
use std::time::{Duration, SystemTime};

const TRACKERS: usize = 6;
const USERS: usize = 12;
const PER_TRACKER: usize = 150;
/// Everything must finish well within this, or the test calls it a deadlock.
const WATCHDOG: Duration = Duration::from_secs(120);

fn at() -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(1_709_251_200)
}

/// A generation of rules: every rule id carries the generation's tag, every rule matches every request (so
/// each response lists all of one generation's rules), and one of them reads the history.
fn generation(tag: &str) -> RuleSet {
    RuleSet::from_sources([
        (
            format!("{tag}/history"),
            "//! priority: 10\nif velocity(\"1h\") >= 0 { CHALLENGE_REQUIRED }".to_owned(),
        ),
        (
            format!("{tag}/review-odd"),
            "//! priority: 20\nif custom.n % 2 == 1 { REVIEW } else { ALLOW }".to_owned(),
        ),
        (
            format!("{tag}/shadow"),
            "//! mode: shadow\nBLOCK".to_owned(),
        ),
        (
            format!("{tag}/failing"),
            "//! priority: 30\nthrow \"deliberate\"".to_owned(),
        ),
    ])
    .unwrap()
}

fn request(user: usize, key: &str, n: i64) -> TrackRequest {
    let mut r = TrackRequest::new(format!("user-{user}"), "withdraw-funds");
    r.attributes.idempotency_key = Some(key.to_owned());
    r.attributes.device_id = Some(format!("device-{}", user % 3));
    r.attributes.custom.insert("n".into(), n.into());
    r
}

/// Runs `f` on a thread and fails the test if it does not finish within the watchdog.
fn within_watchdog(f: impl FnOnce() + Send + 'static) {
    let (tx, rx) = mpsc::channel();
    let worker = thread::spawn(move || {
        f();
        let _ = tx.send(());
    });
    match rx.recv_timeout(WATCHDOG) {
        Ok(()) => worker.join().unwrap(),
        Err(mpsc::RecvTimeoutError::Disconnected) => {
            // The worker panicked: surface its panic.
            if let Err(p) = worker.join() {
                std::panic::resume_unwind(p);
            }
        }
        Err(mpsc::RecvTimeoutError::Timeout) => panic!("deadlock: not finished after {WATCHDOG:?}"),
    }
}

#[test]
fn trackers_updaters_and_swappers_at_once() {
    within_watchdog(run_stress);
}

fn run_stress() {
    let engine = common::with_test_store(Engine::builder())
        .ruleset(generation("gen-a"))
        .clock(FakeClock::at(at()))
        .build()
        .unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let swaps = Arc::new(AtomicUsize::new(0));
    let start = Arc::new(Barrier::new(TRACKERS + 3));
    let mut handles = Vec::new();

    // Trackers: each tracks its own keys, plus a shared set of keys every tracker races on.
    for t in 0..TRACKERS {
        let engine = engine.clone();
        let start = Arc::clone(&start);
        let swaps = Arc::clone(&swaps);
        handles.push(thread::spawn(move || {
            start.wait();
            let mut seen: Vec<(String, TrackRequest, riskgate::TrackResponse)> = Vec::new();
            for i in 0..PER_TRACKER {
                // Now and then, wait for the swapper to move on, so that swaps surely overlap decisions
                // even when the scheduler favours the trackers.
                if i % 25 == 0 {
                    let seen_swaps = swaps.load(Ordering::Relaxed);
                    while swaps.load(Ordering::Relaxed) == seen_swaps {
                        thread::yield_now();
                    }
                }
                let (key, n) = if i % 5 == 0 {
                    (format!("shared-{i}"), i as i64)
                } else {
                    (format!("t{t}-{i}"), (t * PER_TRACKER + i) as i64)
                };
                let req = request(i % USERS, &key, n);
                let resp = engine.track_at(&req, at()).unwrap();
                seen.push((key, req, resp));
            }
            seen
        }));
    }

    // Swapper: alternates between two generations as fast as it can.
    let swapper = {
        let engine = engine.clone();
        let stop = Arc::clone(&stop);
        let swaps = Arc::clone(&swaps);
        let start = Arc::clone(&start);
        let a = generation("gen-a");
        let b = generation("gen-b");
        thread::spawn(move || {
            start.wait();
            while !stop.load(Ordering::Relaxed) {
                let next = if swaps.fetch_add(1, Ordering::Relaxed) % 2 == 0 {
                    &b
                } else {
                    &a
                };
                engine.swap_ruleset(next.clone());
            }
        })
    };

    // Updaters: two threads race to settle the same challenged actions, one to SUCCEEDED, one to FAILED.
    let updater = |to: State| {
        let engine = engine.clone();
        let stop = Arc::clone(&stop);
        let start = Arc::clone(&start);
        thread::spawn(move || {
            start.wait();
            let mut won = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                for user in 0..USERS {
                    for i in (0..PER_TRACKER).step_by(5) {
                        let key = format!("shared-{i}");
                        match engine.update_action(
                            &format!("user-{user}"),
                            "withdraw-funds",
                            &key,
                            to,
                        ) {
                            Ok(rec) => {
                                assert_eq!(rec.state, to);
                                won.push((user, key));
                            }
                            Err(TrackError::ActionNotFound { .. })
                            | Err(TrackError::InvalidTransition { .. }) => {}
                            Err(other) => panic!("unexpected {other:?}"),
                        }
                    }
                }
                thread::yield_now();
            }
            won
        })
    };
    let succeeders = updater(State::ChallengeSucceeded);
    let failers = updater(State::ChallengeFailed);

    let results: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    stop.store(true, Ordering::Relaxed);
    swapper.join().unwrap();
    let won_s = succeeders.join().unwrap();
    let won_f = failers.join().unwrap();
    assert!(swaps.load(Ordering::Relaxed) > 1, "the swapper never ran");

    // No response mixes generations, and every rule of its generation is there.
    let mut by_identity: HashMap<(String, String), riskgate::TrackResponse> = HashMap::new();
    let mut identities = 0;
    let mut tags = std::collections::HashSet::new();
    for seen in &results {
        for (key, req, resp) in seen {
            let tag = resp.rule_ids[0].split('/').next().unwrap().to_owned();
            assert!(tag == "gen-a" || tag == "gen-b", "{resp:?}");
            tags.insert(tag.clone());
            let all_ids = resp
                .rule_ids
                .iter()
                .chain(&resp.shadow_rule_ids)
                .chain(resp.errors.iter().map(|e| &e.rule_id));
            for id in all_ids {
                assert!(
                    id.starts_with(&format!("{tag}/")),
                    "mixed generations: {resp:?}"
                );
            }
            assert_eq!(resp.rule_ids.len(), 3, "{resp:?}");
            assert_eq!(resp.shadow_rule_ids.len(), 1, "{resp:?}");
            assert_eq!(resp.errors.len(), 1, "{resp:?}");
            assert_eq!(resp.idempotency_key, *key);
            // Racing trackers of one identity all got the same action.
            match by_identity.entry((req.user_id.clone(), key.clone())) {
                std::collections::hash_map::Entry::Occupied(first) => {
                    assert_eq!(first.get().rule_ids, resp.rule_ids);
                    assert_eq!(first.get().token, resp.token);
                }
                std::collections::hash_map::Entry::Vacant(v) => {
                    identities += 1;
                    v.insert(resp.clone());
                }
            }
        }
    }

    assert_eq!(
        tags.len(),
        2,
        "decisions ran on only one generation: the swaps did not overlap"
    );

    // Exactly one decision per identity; every identity stored.
    assert_eq!(engine.decisions(), identities as u64);
    assert_eq!(engine.stored_actions(), identities);

    // Each challenged action was settled by exactly one of the two racing updaters.
    let mut settled: HashMap<(usize, String), usize> = HashMap::new();
    for w in won_s.iter().chain(&won_f) {
        *settled.entry(w.clone()).or_default() += 1;
    }
    assert!(
        settled.values().all(|&n| n == 1),
        "an action was settled twice"
    );
    for (user, key) in settled.keys() {
        let rec = engine
            .get_action(&format!("user-{user}"), "withdraw-funds", key)
            .unwrap();
        assert!(matches!(
            rec.state,
            State::ChallengeSucceeded | State::ChallengeFailed
        ));
    }

    // No lost history: each user's velocity equals the distinct actions tracked for that user.
    let mut per_user: HashMap<String, usize> = HashMap::new();
    for (user, _) in by_identity.keys() {
        *per_user.entry(user.clone()).or_default() += 1;
    }
    for (user, count) in per_user {
        let exact = RuleSet::from_sources([(
            "count",
            format!("if velocity(\"1h\") == {count} {{ BLOCK }} else {{ REVIEW }}"),
        )])
        .unwrap();
        engine.swap_ruleset(exact);
        let mut probe = TrackRequest::new(user.clone(), "withdraw-funds");
        probe.attributes.idempotency_key = Some("probe".into());
        let resp = engine.track_at(&probe, at()).unwrap();
        assert_eq!(
            resp.state,
            State::Block,
            "{user}: expected velocity {count}"
        );
    }
}

#[test]
fn many_threads_on_one_identity_decide_once() {
    within_watchdog(|| {
        let engine = common::with_test_store(Engine::builder())
            .ruleset(generation("gen-a"))
            .clock(FakeClock::at(at()))
            .build()
            .unwrap();
        let start = Arc::new(Barrier::new(8));
        let handles: Vec<_> = (0..8)
            .map(|_| {
                let engine = engine.clone();
                let start = Arc::clone(&start);
                thread::spawn(move || {
                    start.wait();
                    (0..50)
                        .map(|_| engine.track_at(&request(1, "same", 1), at()).unwrap())
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        let all: Vec<_> = handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect();
        assert_eq!(engine.decisions(), 1);
        assert_eq!(engine.stored_actions(), 1);
        assert!(all
            .iter()
            .all(|r| r.token == all[0].token && r.rule_ids == all[0].rule_ids));
    });
}
