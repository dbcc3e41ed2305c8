//! The action lifecycle: `get_action`, `update_action` and its state machine, in the library and through
//! `riskgate replay`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use riskgate::{ActionRecord, Clock, Engine, FakeClock, RuleSet, State, TrackError, TrackRequest};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

const ALL: [State; 8] = State::ALL;

/// Decides from `custom.decide`: the wire name of the decision to return.
const DECIDE: &str = r#"let d = custom.decide;
if d == "CHALLENGE_REQUIRED" { CHALLENGE_REQUIRED } else if d == "REVIEW" { REVIEW } else if d == "BLOCK" { BLOCK } else { ALLOW }"#;

fn engine(clock: &FakeClock) -> Engine {
    let rules = RuleSet::from_sources([("decide", DECIDE)]).unwrap();
    common::with_test_store(Engine::builder())
        .ruleset(rules)
        .clock(clock.clone())
        .build()
        .unwrap()
}

fn req(key: &str, decision: State) -> TrackRequest {
    let mut r = TrackRequest::new("u1", "signIn");
    r.attributes.idempotency_key = Some(key.into());
    r.attributes
        .custom
        .insert("decide".into(), decision.as_str().into());
    r
}

fn get(e: &Engine, key: &str) -> Option<ActionRecord> {
    e.get_action("u1", "signIn", key)
}

/// The moves DESIGN §5 allows.
fn allowed(from: State, to: State) -> bool {
    matches!(
        (from, to),
        (
            State::ChallengeRequired,
            State::ChallengeSucceeded | State::ChallengeFailed
        ) | (State::Review, State::ReviewSucceeded | State::ReviewFailed)
    )
}

/// Puts a fresh action (key `key`) into `state`: decided as its decision, then moved along if needed.
fn action_in(e: &Engine, key: &str, state: State) -> ActionRecord {
    let decision = match state {
        State::ChallengeSucceeded | State::ChallengeFailed => State::ChallengeRequired,
        State::ReviewSucceeded | State::ReviewFailed => State::Review,
        d => d,
    };
    assert_eq!(e.track(&req(key, decision)).unwrap().state, decision);
    if state != decision {
        e.update_action("u1", "signIn", key, state).unwrap();
    }
    let rec = get(e, key).unwrap();
    assert_eq!(rec.state, state);
    rec
}

#[test]
fn every_move_from_every_state_is_allowed_or_refused_with_nothing_changed() {
    let clock = FakeClock::default();
    let e = engine(&clock);
    let mut n = 0;
    for from in ALL {
        for to in ALL {
            n += 1;
            let key = format!("k{n}");
            let before = action_in(&e, &key, from);
            clock.advance(Duration::from_secs(1));
            let result = e.update_action("u1", "signIn", &key, to);
            if allowed(from, to) {
                let rec = result.unwrap();
                assert_eq!(rec.state, to);
                assert_eq!(rec.outcome, from, "the first decision stays readable");
                assert_eq!(rec.state_updated_at, clock.now());
                assert_eq!(rec.created_at, before.created_at);
                assert_eq!(rec.rule_ids, before.rule_ids);
                assert_eq!(get(&e, &key).unwrap(), rec);
            } else {
                let err = result.unwrap_err();
                assert_eq!(err.code(), "invalid_transition", "{from} -> {to}");
                match &err {
                    TrackError::InvalidTransition { from: f, to: t, .. } => {
                        assert_eq!((*f, *t), (from, to))
                    }
                    other => panic!("{other:?}"),
                }
                assert!(
                    err.to_string()
                        .starts_with(&format!("cannot move an action from `{from}` to `{to}`: ")),
                    "{err}"
                );
                assert_eq!(
                    get(&e, &key).unwrap(),
                    before,
                    "{from} -> {to} changed the action"
                );
            }
        }
    }
}

#[test]
fn refusals_say_which_moves_are_allowed() {
    let clock = FakeClock::default();
    let e = engine(&clock);
    action_in(&e, "c", State::ChallengeRequired);
    action_in(&e, "r", State::Review);
    action_in(&e, "a", State::Allow);
    let msg = |key: &str, to: State| {
        e.update_action("u1", "signIn", key, to)
            .unwrap_err()
            .to_string()
    };
    assert_eq!(
        msg("c", State::ReviewSucceeded),
        "cannot move an action from `CHALLENGE_REQUIRED` to `REVIEW_SUCCEEDED`: allowed: CHALLENGE_SUCCEEDED, CHALLENGE_FAILED"
    );
    assert_eq!(
        msg("r", State::Allow),
        "cannot move an action from `REVIEW` to `ALLOW`: allowed: REVIEW_SUCCEEDED, REVIEW_FAILED"
    );
    assert_eq!(
        msg("a", State::ChallengeSucceeded),
        "cannot move an action from `ALLOW` to `CHALLENGE_SUCCEEDED`: no moves are allowed from this state"
    );
}

#[test]
fn a_challenge_or_review_resolves_once() {
    let clock = FakeClock::default();
    let e = engine(&clock);
    action_in(&e, "c", State::ChallengeSucceeded);
    for to in [State::ChallengeFailed, State::ChallengeSucceeded] {
        let err = e.update_action("u1", "signIn", "c", to).unwrap_err();
        assert_eq!(err.code(), "invalid_transition");
    }
    assert_eq!(get(&e, "c").unwrap().state, State::ChallengeSucceeded);
}

#[test]
fn concurrent_updates_have_one_winner() {
    let clock = FakeClock::default();
    let e = engine(&clock);
    for round in 0..20 {
        let key = format!("k{round}");
        action_in(&e, &key, State::Review);
        let handles: Vec<_> = [State::ReviewSucceeded, State::ReviewFailed]
            .into_iter()
            .cycle()
            .take(8)
            .map(|to| {
                let (e, key) = (e.clone(), key.clone());
                std::thread::spawn(move || (to, e.update_action("u1", "signIn", &key, to)))
            })
            .collect();
        let results: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
        let winners: Vec<State> = results
            .iter()
            .filter_map(|(to, r)| r.as_ref().ok().map(|_| *to))
            .collect();
        assert_eq!(winners.len(), 1, "round {round}: {results:?}");
        let final_state = get(&e, &key).unwrap().state;
        assert_eq!(final_state, winners[0]);
        for (_, r) in &results {
            if let Err(TrackError::InvalidTransition { from, .. }) = r {
                assert_eq!(*from, final_state, "the refusal names the state that won");
            }
        }
    }
}

#[test]
fn unknown_and_expired_actions_are_not_found() {
    let clock = FakeClock::default();
    let e = engine(&clock);
    assert_eq!(get(&e, "nope"), None);
    let err = e
        .update_action("u1", "signIn", "nope", State::ChallengeSucceeded)
        .unwrap_err();
    assert_eq!(err.code(), "action_not_found");
    assert_eq!(
        err.to_string(),
        "no action `signIn` with idempotency key `nope` for user `u1`"
    );
    action_in(&e, "k", State::ChallengeRequired);
    // Another user or action with the same key is not this action.
    assert_eq!(e.get_action("u2", "signIn", "k"), None);
    assert_eq!(e.get_action("u1", "signUp", "k"), None);
    clock.advance(Duration::from_secs(24 * 3600));
    assert_eq!(get(&e, "k"), None);
    let err = e
        .update_action("u1", "signIn", "k", State::ChallengeSucceeded)
        .unwrap_err();
    assert_eq!(err.code(), "action_not_found");
}

#[test]
fn records_serialise_in_camel_case_with_rfc3339_times() {
    let clock = FakeClock::at(UNIX_EPOCH + Duration::from_millis(1_704_067_200_250));
    let e = engine(&clock);
    action_in(&e, "k", State::Review);
    clock.advance(Duration::from_secs(90));
    let rec = e
        .update_action("u1", "signIn", "k", State::ReviewFailed)
        .unwrap();
    let json = serde_json::to_value(&rec).unwrap();
    assert_eq!(
        json,
        serde_json::json!({
            "userId": "u1",
            "action": "signIn",
            "idempotencyKey": "k",
            "state": "REVIEW_FAILED",
            "outcome": "REVIEW",
            "ruleIds": ["decide"],
            "priorityRuleId": "decide",
            "createdAt": "2024-01-01T00:00:00.250Z",
            "stateUpdatedAt": "2024-01-01T00:01:30.250Z",
        })
    );
    let back: ActionRecord = serde_json::from_value(json).unwrap();
    assert_eq!(back, rec);
}

#[test]
fn an_action_being_decided_is_not_visible_until_it_is_decided() {
    let clock = FakeClock::default();
    // A rule slow enough that the test sees the action while it is being decided.
    let rules = RuleSet::builder()
        .rule(
            "slow",
            "let x = 0; for i in 0..300000 { x += 1; } if x > 0 { REVIEW }",
        )
        .config_toml("[limits]\ntime_limit = \"30s\"\nmax_operations = 10000000")
        .build()
        .unwrap();
    let e = common::with_test_store(Engine::builder())
        .ruleset(rules)
        .clock(clock.clone())
        .build()
        .unwrap();
    // Under a loaded machine the test may miss the moment; it tries again with a fresh key.
    let mut seen_in_flight = false;
    for attempt in 0..10 {
        let key = format!("k{attempt}");
        let done = Arc::new(AtomicBool::new(false));
        let worker = {
            let (e, done, key) = (e.clone(), Arc::clone(&done), key.clone());
            std::thread::spawn(move || {
                let resp = e.track(&req(&key, State::Allow)).unwrap();
                done.store(true, Ordering::SeqCst);
                resp
            })
        };
        while !done.load(Ordering::SeqCst) {
            if e.stored_actions() == attempt + 1 {
                // The slot is in the store; the decision may or may not be. A decided action never goes back.
                let rec = get(&e, &key);
                // From REVIEW this move is invalid, so it changes nothing either way.
                let code = e
                    .update_action("u1", "signIn", &key, State::ChallengeSucceeded)
                    .unwrap_err()
                    .code();
                match rec {
                    None => {
                        seen_in_flight = true;
                        assert!(matches!(code, "action_not_found" | "invalid_transition"));
                    }
                    Some(rec) => {
                        assert_eq!(rec.outcome, State::Review, "never a half-made record");
                        assert_eq!(code, "invalid_transition");
                    }
                }
            }
            std::thread::yield_now();
        }
        let resp = worker.join().unwrap();
        let rec = get(&e, &key).unwrap();
        assert_eq!(rec.outcome, State::Review);
        assert_eq!(resp.state, rec.state);
        if seen_in_flight {
            break;
        }
    }
    assert!(
        seen_in_flight,
        "the test never caught the action while it was being decided"
    );
}

// ---- through `riskgate replay`, in process ----

fn rules_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("decide.rhai"), DECIDE).unwrap();
    dir
}

#[test]
fn replay_runs_the_lifecycle_operations() {
    let dir = rules_dir();
    let input = r#"{"timestamp":"2024-01-01T00:00:00Z","userId":"u1","action":"withdraw","attributes":{"idempotencyKey":"k1","custom":{"decide":"REVIEW"}}}
{"timestamp":"2024-01-01T00:00:01Z","op":"getAction","userId":"u1","action":"withdraw","idempotencyKey":"k1"}
{"timestamp":"2024-01-01T00:05:00Z","op":"updateAction","userId":"u1","action":"withdraw","idempotencyKey":"k1","state":"REVIEW_SUCCEEDED"}
{"timestamp":"2024-01-01T00:06:00Z","userId":"u1","action":"withdraw","attributes":{"idempotencyKey":"k1","custom":{"decide":"REVIEW"}}}
{"timestamp":"2024-01-01T00:07:00Z","op":"updateAction","userId":"u1","action":"withdraw","idempotencyKey":"k1","state":"REVIEW_FAILED"}
{"timestamp":"2024-01-01T00:07:00Z","op":"updateAction","userId":"u1","action":"withdraw","idempotencyKey":"nope","state":"REVIEW_FAILED"}
{"timestamp":"2024-01-01T00:07:00Z","op":"getAction","userId":"u1","action":"withdraw","idempotencyKey":"nope"}
{"timestamp":"2024-01-01T00:07:00Z","op":"updateAction","userId":"u1","action":"withdraw","idempotencyKey":"k1","state":"DONE"}
{"timestamp":"2024-01-01T00:07:00Z","userId":"u1","action":"withdraw","attributes":{"idempotencyKey":"k1","custom":{"decide":"BLOCK"}}}
{"timestamp":"2024-01-02T00:06:00Z","op":"getAction","userId":"u1","action":"withdraw","idempotencyKey":"k1"}
"#;
    let out = common::replay(dir.path(), input);
    assert_eq!(out.len(), 10);
    assert_eq!(out[0]["state"], "REVIEW");
    assert_eq!(
        out[1],
        serde_json::json!({
            "userId": "u1", "action": "withdraw", "idempotencyKey": "k1", "state": "REVIEW",
            "outcome": "REVIEW", "ruleIds": ["decide"], "priorityRuleId": "decide",
            "createdAt": "2024-01-01T00:00:00.000Z", "stateUpdatedAt": "2024-01-01T00:00:00.000Z",
        })
    );
    assert_eq!(out[2]["state"], "REVIEW_SUCCEEDED");
    assert_eq!(out[2]["stateUpdatedAt"], "2024-01-01T00:05:00.000Z");
    assert_eq!(
        out[3]["state"], "REVIEW_SUCCEEDED",
        "a repeat returns the current state"
    );
    let code = |v: &serde_json::Value| v["error"]["code"].as_str().unwrap().to_owned();
    assert_eq!(out[4]["line"], 5);
    assert_eq!(code(&out[4]), "invalid_transition");
    assert_eq!(code(&out[5]), "action_not_found");
    assert_eq!(code(&out[6]), "action_not_found");
    assert_eq!(code(&out[7]), "invalid_request");
    assert!(out[7]["error"]["message"]
        .as_str()
        .unwrap()
        .contains("unknown state `DONE`"));
    assert_eq!(code(&out[8]), "idempotency_conflict");
    assert_eq!(code(&out[9]), "action_not_found", "expired after 24 h");
}

#[test]
fn replay_operations_without_a_timestamp_happen_at_the_previous_lines_time() {
    let dir = rules_dir();
    // Events from 2024: with the wall clock, these actions would have expired long ago.
    let input = r#"{"timestamp":"2024-01-01T00:00:00Z","userId":"u1","action":"withdraw","attributes":{"idempotencyKey":"k1","custom":{"decide":"CHALLENGE_REQUIRED"}}}
{"op":"updateAction","userId":"u1","action":"withdraw","idempotencyKey":"k1","state":"CHALLENGE_SUCCEEDED"}
{"op":"getAction","userId":"u1","action":"withdraw","idempotencyKey":"k1"}
{"timestamp":"2024-01-03T00:00:00Z","op":"getAction","userId":"u1","action":"withdraw","idempotencyKey":"k1"}
{"op":"getAction","userId":"u1","action":"withdraw","idempotencyKey":"k1"}
"#;
    let out = common::replay(dir.path(), input);
    assert_eq!(out[0]["state"], "CHALLENGE_REQUIRED");
    assert_eq!(out[1]["state"], "CHALLENGE_SUCCEEDED");
    assert_eq!(out[1]["stateUpdatedAt"], "2024-01-01T00:00:00.000Z");
    assert_eq!(out[2]["state"], "CHALLENGE_SUCCEEDED");
    // A timestamp moves the clock: two days later the action has expired, and stays so for the next line.
    assert_eq!(out[3]["error"]["code"], "action_not_found");
    assert_eq!(out[4]["error"]["code"], "action_not_found");
}
