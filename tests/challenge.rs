//! Challenges: tokens, the challenge url, `validate_challenge` (once, unexpired, succeeded only), and that
//! tokens stay out of logs.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use riskgate::{
    Engine, FakeClock, InvalidTokenReason, RuleSet, State, TrackRequest, TrackResponse,
    ValidateChallengeResponse,
};
use std::collections::HashSet;
use std::time::Duration;

const RULE: &str = r#"if custom.challenge == true { CHALLENGE_REQUIRED } else { ALLOW }"#;

fn engine_with(config: &str, clock: &FakeClock) -> Engine {
    let rules = RuleSet::builder()
        .rule("challenge", RULE)
        .config_toml(config)
        .build()
        .unwrap();
    common::with_test_store(Engine::builder())
        .ruleset(rules)
        .clock(clock.clone())
        .build()
        .unwrap()
}

fn engine(clock: &FakeClock) -> Engine {
    engine_with("", clock)
}

fn req(key: &str, challenge: bool) -> TrackRequest {
    let mut r = TrackRequest::new("u1", "withdraw-funds");
    r.attributes.idempotency_key = Some(key.into());
    r.attributes
        .custom
        .insert("challenge".into(), challenge.into());
    r
}

fn challenged(e: &Engine, key: &str) -> (TrackResponse, String) {
    let resp = e.track(&req(key, true)).unwrap();
    assert_eq!(resp.state, State::ChallengeRequired);
    let token = resp.token.clone().unwrap();
    (resp, token)
}

fn succeed(e: &Engine, key: &str) {
    e.update_action("u1", "withdraw-funds", key, State::ChallengeSucceeded)
        .unwrap();
}

fn reason_of(wire: &str) -> InvalidTokenReason {
    serde_json::from_value(serde_json::Value::String(wire.into())).unwrap()
}

fn invalid(reason: &str) -> ValidateChallengeResponse {
    ValidateChallengeResponse::invalid(reason_of(reason))
}

fn about(key: &str, state: State, reason: Option<&str>) -> ValidateChallengeResponse {
    ValidateChallengeResponse::about("u1", "withdraw-funds", key, state, reason.map(reason_of))
}

#[test]
fn the_full_challenge_flow() {
    let clock = FakeClock::default();
    let e = engine(&clock);
    let (first, token) = challenged(&e, "k1");
    // Pending: not valid yet, and checking does not use the token up.
    assert_eq!(
        e.validate_challenge(&token),
        about("k1", State::ChallengeRequired, Some("not_succeeded"))
    );
    clock.advance(Duration::from_secs(30));
    succeed(&e, "k1");
    // A repeat of the track call still carries the same token, with the new state.
    let again = e.track(&req("k1", true)).unwrap();
    assert_eq!(again.token, first.token);
    assert_eq!(again.state, State::ChallengeSucceeded);
    assert_eq!(
        e.validate_challenge(&token),
        about("k1", State::ChallengeSucceeded, None)
    );
    // Valid once only.
    assert_eq!(
        e.validate_challenge(&token),
        about("k1", State::ChallengeSucceeded, Some("already_used"))
    );
    let json = serde_json::to_value(e.validate_challenge(&token)).unwrap();
    assert_eq!(
        json,
        serde_json::json!({"isValid": false, "state": "CHALLENGE_SUCCEEDED", "userId": "u1",
            "action": "withdraw-funds", "idempotencyKey": "k1", "reason": "already_used"})
    );
}

#[test]
fn a_failed_challenge_never_validates() {
    let clock = FakeClock::default();
    let e = engine(&clock);
    let (_, token) = challenged(&e, "k1");
    e.update_action("u1", "withdraw-funds", "k1", State::ChallengeFailed)
        .unwrap();
    for _ in 0..2 {
        assert_eq!(
            e.validate_challenge(&token),
            about("k1", State::ChallengeFailed, Some("not_succeeded"))
        );
    }
    // And it cannot be turned into a success afterwards.
    assert_eq!(
        e.update_action("u1", "withdraw-funds", "k1", State::ChallengeSucceeded)
            .unwrap_err()
            .code(),
        "invalid_transition"
    );
}

#[test]
fn tokens_are_192_random_bits_in_base64url_and_only_for_challenges() {
    let clock = FakeClock::default();
    let e = engine(&clock);
    let mut seen = HashSet::new();
    for i in 0..500 {
        let (_, token) = challenged(&e, &format!("k{i}"));
        assert_eq!(token.len(), 32, "24 bytes, base64 without padding");
        assert!(token
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'));
        assert!(seen.insert(token), "a token repeated");
    }
    let allowed = e.track(&req("allowed", false)).unwrap();
    assert_eq!(allowed.state, State::Allow);
    assert_eq!(allowed.token, None);
    assert_eq!(allowed.url, None);
}

#[test]
fn tokens_expire_after_ten_minutes_by_default() {
    let clock = FakeClock::default();
    let e = engine(&clock);
    let (_, token) = challenged(&e, "k1");
    let (_, late) = challenged(&e, "k2");
    succeed(&e, "k1");
    succeed(&e, "k2");
    clock.advance(Duration::from_millis(10 * 60_000 - 1));
    assert!(e.validate_challenge(&token).is_valid, "1 ms before expiry");
    clock.advance(Duration::from_millis(1));
    assert_eq!(
        e.validate_challenge(&late),
        about("k2", State::ChallengeSucceeded, Some("expired"))
    );
}

#[test]
fn token_ttl_is_configurable() {
    let clock = FakeClock::default();
    let e = engine_with("[challenge]\ntoken_ttl = \"30s\"", &clock);
    let (_, token) = challenged(&e, "k1");
    succeed(&e, "k1");
    clock.advance(Duration::from_secs(30));
    assert_eq!(
        e.validate_challenge(&token)
            .reason
            .map(InvalidTokenReason::as_str),
        Some("expired")
    );
    // Expiry is checked before the state: an expired pending token is reported as expired.
    let (_, pending) = challenged(&e, "k2");
    clock.advance(Duration::from_secs(31));
    assert_eq!(
        e.validate_challenge(&pending),
        about("k2", State::ChallengeRequired, Some("expired"))
    );
}

#[test]
fn forged_and_malformed_tokens_are_unknown() {
    let clock = FakeClock::default();
    let e = engine(&clock);
    let (_, token) = challenged(&e, "k1");
    succeed(&e, "k1");
    let mut flipped = token.clone().into_bytes();
    flipped[10] = if flipped[10] == b'A' { b'B' } else { b'A' };
    let flipped = String::from_utf8(flipped).unwrap();
    let forged = [
        String::new(),
        "x".into(),
        flipped,
        format!("{token}A"),
        token[..31].to_owned(),
        token.to_uppercase(),
        "A".repeat(32),
        "é".repeat(16),
        "a".repeat(100_000),
        "\0".repeat(32),
    ];
    for f in &forged {
        assert_eq!(e.validate_challenge(f), invalid("unknown_token"), "{f:?}");
    }
    // None of that used the real token up.
    assert!(e.validate_challenge(&token).is_valid);
}

#[test]
fn a_token_belongs_to_its_own_action() {
    let clock = FakeClock::default();
    let e = engine(&clock);
    let (_, t1) = challenged(&e, "k1");
    let (_, t2) = challenged(&e, "k2");
    succeed(&e, "k2");
    assert_eq!(
        e.validate_challenge(&t1),
        about("k1", State::ChallengeRequired, Some("not_succeeded"))
    );
    assert_eq!(
        e.validate_challenge(&t2),
        about("k2", State::ChallengeSucceeded, None)
    );
}

#[test]
fn a_token_dies_with_its_action() {
    let clock = FakeClock::default();
    // Actions kept for less time than tokens: the action's expiry ends the token.
    let e = engine_with(
        "[idempotency]\nttl = \"5m\"\n[challenge]\ntoken_ttl = \"10m\"",
        &clock,
    );
    let (_, token) = challenged(&e, "k1");
    succeed(&e, "k1");
    clock.advance(Duration::from_secs(300));
    assert_eq!(e.validate_challenge(&token), invalid("unknown_token"));
    // The key tracked again is a new action with a new token; the old one stays dead.
    let (_, fresh) = challenged(&e, "k1");
    assert_ne!(fresh, token);
    succeed(&e, "k1");
    assert_eq!(e.validate_challenge(&token), invalid("unknown_token"));
    assert!(e.validate_challenge(&fresh).is_valid);

    // An action evicted for capacity takes its token with it (capacity is the in-memory store's bound; on
    // Redis, actions are bounded by their TTL).
    if !common::in_memory() {
        return;
    }
    let e = engine_with("[idempotency]\ncapacity = 2", &clock);
    let (_, first) = challenged(&e, "a");
    succeed(&e, "a");
    challenged(&e, "b");
    challenged(&e, "c");
    assert_eq!(e.validate_challenge(&first), invalid("unknown_token"));
}

#[test]
fn the_challenge_url_carries_the_token_and_the_redirect() {
    let clock = FakeClock::default();
    let e = engine_with(
        "[challenge]\nurl = \"https://auth.example.com/challenge\"",
        &clock,
    );
    let mut r = req("k1", true);
    r.attributes.redirect_url = Some("https://app.example.com/done?step=2&x=a b".into());
    let resp = e.track(&r).unwrap();
    let token = resp.token.clone().unwrap();
    assert_eq!(
        resp.url.as_deref().unwrap(),
        format!(
            "https://auth.example.com/challenge?token={token}&redirectUrl=https%3A%2F%2Fapp.example.com%2Fdone%3Fstep%3D2%26x%3Da%20b"
        )
    );
    // Without a redirectUrl, only the token; a url that has a query already gets `&`.
    let e = engine_with(
        "[challenge]\nurl = \"https://auth.example.com/c?tenant=7\"",
        &clock,
    );
    let resp = e.track(&req("k2", true)).unwrap();
    assert_eq!(
        resp.url.unwrap(),
        format!(
            "https://auth.example.com/c?tenant=7&token={}",
            resp.token.unwrap()
        )
    );
    // No url configured: no url.
    let e = engine(&clock);
    assert_eq!(e.track(&req("k3", true)).unwrap().url, None);
}

#[test]
fn debug_output_never_shows_a_token() {
    let clock = FakeClock::default();
    let e = engine_with("[challenge]\nurl = \"https://auth.example.com/c\"", &clock);
    let (resp, token) = challenged(&e, "k1");
    for shown in [format!("{resp:?}"), format!("{resp:#?}")] {
        assert!(!shown.contains(&token), "{shown}");
        assert!(!shown.contains("auth.example.com"), "{shown}");
        assert!(shown.contains("<redacted>"));
        assert!(shown.contains("ChallengeRequired"));
        assert!(shown.contains("k1"));
    }
    succeed(&e, "k1");
    let record = e.get_action("u1", "withdraw-funds", "k1").unwrap();
    assert!(!format!("{record:?}").contains(&token));
    let checked = e.validate_challenge(&token);
    assert!(!format!("{checked:?}").contains(&token));
    // Serialising for the client keeps the real token.
    let json = serde_json::to_string(&resp).unwrap();
    assert!(json.contains(&token));
    // A response without a token shows None, not a redaction.
    let allowed = e.track(&req("k2", false)).unwrap();
    assert!(format!("{allowed:?}").contains("token: None"));
}

#[test]
fn an_action_evicted_while_being_decided_answers_its_caller_and_leaves_no_token() {
    // The in-memory store's own bound (capacity, eviction on insert, process memory): on Redis, actions and
    // history are bounded by native expiry instead (tests/redis_store.rs).
    if !common::in_memory() {
        return;
    }
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    let clock = FakeClock::default();
    let rules = RuleSet::builder()
        .rule(
            "slow",
            "//! actions: slow\nlet x = 0; for i in 0..300000 { x += 1; } if x > 0 { CHALLENGE_REQUIRED }",
        )
        .config_toml("[idempotency]\ncapacity = 1\n[limits]\ntime_limit = \"30s\"\nmax_operations = 10000000")
        .build()
        .unwrap();
    let e = common::with_test_store(Engine::builder())
        .ruleset(rules)
        .clock(clock.clone())
        .build()
        .unwrap();
    let slow = |key: &str| {
        let mut r = TrackRequest::new("u1", "slow");
        r.attributes.idempotency_key = Some(key.into());
        r
    };
    // Under a loaded machine the test may miss the moment; it tries again with a fresh key.
    let mut caught = 0;
    for attempt in 0..20 {
        let key = format!("k{attempt}");
        let done = Arc::new(AtomicBool::new(false));
        let worker = {
            let (e, done, r) = (e.clone(), Arc::clone(&done), slow(&key));
            std::thread::spawn(move || {
                let resp = e.track(&r).unwrap();
                done.store(true, Ordering::SeqCst);
                resp
            })
        };
        // Wait until the action is stored but not yet decided, then push it out with another action.
        let mut evicted_in_flight = false;
        while !done.load(Ordering::SeqCst) {
            // The store holds one action: once the previous attempt's `fast` action is gone, it is this one.
            let previous_gone = attempt == 0
                || e.get_action("u1", "fast", &format!("{}", attempt - 1))
                    .is_none();
            if previous_gone
                && e.stored_actions() == 1
                && e.get_action("u1", "slow", &key).is_none()
            {
                let mut fast = TrackRequest::new("u1", "fast");
                fast.attributes.idempotency_key = Some(format!("{attempt}"));
                e.track(&fast).unwrap();
                evicted_in_flight = !done.load(Ordering::SeqCst);
                break;
            }
            std::thread::yield_now();
        }
        let resp = worker.join().unwrap();
        // Either way, the caller got its decision, and neither the action nor its token outlived eviction.
        assert_eq!(resp.state, State::ChallengeRequired);
        let token = resp.token.unwrap();
        assert_eq!(e.get_action("u1", "slow", &key), None);
        assert_eq!(e.stored_actions(), 1);
        assert_eq!(e.validate_challenge(&token), invalid("unknown_token"));
        if evicted_in_flight {
            caught += 1;
            if caught == 3 {
                break;
            }
        }
    }
    assert!(
        caught > 0,
        "the test never caught an action while it was being decided"
    );
}

#[test]
fn concurrent_validations_of_one_token_have_one_winner() {
    use std::sync::{Arc, Barrier};
    let clock = FakeClock::default();
    let e = engine(&clock);
    for round in 0..20 {
        let key = format!("k{round}");
        let (_, token) = challenged(&e, &key);
        succeed(&e, &key);
        let barrier = Arc::new(Barrier::new(8));
        let handles: Vec<_> = (0..8)
            .map(|_| {
                let (e, token, barrier) = (e.clone(), token.clone(), Arc::clone(&barrier));
                std::thread::spawn(move || {
                    barrier.wait();
                    e.validate_challenge(&token)
                })
            })
            .collect();
        let results: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
        assert_eq!(results.iter().filter(|r| r.is_valid).count(), 1);
        for r in results.iter().filter(|r| !r.is_valid) {
            assert_eq!(
                r,
                &about(&key, State::ChallengeSucceeded, Some("already_used"))
            );
        }
    }
}

#[test]
fn under_concurrent_eviction_exactly_the_stored_actions_have_live_tokens() {
    // The in-memory store's own bound (capacity, eviction on insert, process memory): on Redis, actions and
    // history are bounded by native expiry instead (tests/redis_store.rs).
    if !common::in_memory() {
        return;
    }
    const THREADS: usize = 4;
    const PER_THREAD: usize = 2_000;
    const CAPACITY: usize = 100;
    let clock = FakeClock::default();
    let e = engine_with(&format!("[idempotency]\ncapacity = {CAPACITY}"), &clock);
    let handles: Vec<_> = (0..THREADS)
        .map(|t| {
            let e = e.clone();
            std::thread::spawn(move || {
                (0..PER_THREAD)
                    .map(|i| {
                        let key = format!("t{t}-{i}");
                        let token = e.track(&req(&key, true)).unwrap().token.unwrap();
                        (key, token)
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let issued: Vec<(String, String)> = handles
        .into_iter()
        .flat_map(|h| h.join().unwrap())
        .collect();
    // Once the inserts have settled, the store is exactly at its bound.
    assert_eq!(e.stored_actions(), CAPACITY);
    let mut live = 0;
    for (key, token) in &issued {
        let check = e.validate_challenge(token);
        let stored = e.get_action("u1", "withdraw-funds", key).is_some();
        if stored {
            live += 1;
            assert_eq!(
                check,
                about(key, State::ChallengeRequired, Some("not_succeeded"))
            );
        } else {
            assert_eq!(check, invalid("unknown_token"), "{key}");
        }
    }
    assert_eq!(live, CAPACITY);
}
