//! Idempotency: repeats return the stored action, conflicts are refused, retention is bounded in time, count
//! and memory, and concurrent first calls decide once.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use riskgate::{Engine, FakeClock, RuleSet, State, TrackError, TrackRequest, TrackResponse};
use std::sync::{Arc, Barrier};
use std::time::Duration;

/// Decides from `custom.decide`: "challenge", "review", "block"; anything else falls to the default, ALLOW.
const DECIDE: &str = r#"//! priority: 10
let d = custom.decide;
if d == "challenge" { CHALLENGE_REQUIRED } else if d == "review" { REVIEW } else if d == "block" { BLOCK }"#;

/// [`DECIDE`] and a shadow rule, with `config` as the ruleset's riskgate.toml.
fn rules_with(config: &str) -> RuleSet {
    RuleSet::builder()
        .rule("decide", DECIDE)
        .rule("shadow/always", "//! mode: shadow\nBLOCK")
        .config_toml(config)
        .build()
        .unwrap()
}

fn engine_with(config: &str, clock: &FakeClock) -> Engine {
    common::with_test_store(Engine::builder())
        .ruleset(rules_with(config))
        .clock(clock.clone())
        .build()
        .unwrap()
}

fn engine(clock: &FakeClock) -> Engine {
    engine_with("", clock)
}

fn req(user: &str, key: Option<&str>, decide: &str) -> TrackRequest {
    let mut r = TrackRequest::new(user, "withdraw-funds");
    r.attributes.idempotency_key = key.map(Into::into);
    r.attributes.ip_address = Some("203.0.113.7".into());
    r.attributes.custom.insert("decide".into(), decide.into());
    r
}

#[test]
fn a_repeat_returns_the_same_action_without_evaluating_rules() {
    let clock = FakeClock::default();
    let e = engine(&clock);
    for decide in ["allow", "challenge", "review", "block"] {
        let r = req("u1", Some(decide), decide);
        let first = e.track(&r).unwrap();
        let before = e.decisions();
        clock.advance(Duration::from_secs(5));
        let again = e.track(&r).unwrap();
        assert_eq!(again, first, "{decide}");
        assert_eq!(e.decisions(), before, "a repeat must not evaluate rules");
        // The stored record agrees with both.
        let rec = e.get_action("u1", "withdraw-funds", decide).unwrap();
        assert_eq!(rec.state, first.state);
        assert_eq!(rec.outcome, first.state);
        assert_eq!(rec.rule_ids, first.rule_ids);
        assert_eq!(rec.priority_rule_id, first.priority_rule_id);
        assert_eq!(
            rec.created_at, rec.state_updated_at,
            "not updated: the creation time"
        );
    }
    let challenge = e.track(&req("u1", Some("challenge"), "challenge")).unwrap();
    assert_eq!(challenge.state, State::ChallengeRequired);
    assert!(challenge.token.is_some());
    assert_eq!(challenge.rule_ids, ["decide"]);
    assert_eq!(challenge.shadow_rule_ids, ["shadow/always"]);
    assert_eq!(e.decisions(), 4);
    assert_eq!(e.stored_actions(), 4);
}

#[test]
fn a_repeat_after_update_action_returns_the_new_state() {
    let clock = FakeClock::default();
    let e = engine(&clock);
    let r = req("u1", Some("k1"), "review");
    let first = e.track(&r).unwrap();
    assert_eq!(first.state, State::Review);
    clock.advance(Duration::from_secs(60));
    let updated = e
        .update_action("u1", "withdraw-funds", "k1", State::ReviewSucceeded)
        .unwrap();
    let again = e.track(&r).unwrap();
    assert_eq!(again.state, State::ReviewSucceeded);
    let mut same_but_state = again.clone();
    same_but_state.state = first.state;
    assert_eq!(
        same_but_state, first,
        "everything but the state is the first decision's"
    );
    assert_eq!(e.get_action("u1", "withdraw-funds", "k1").unwrap(), updated);
    assert_eq!(updated.outcome, State::Review);
    assert_eq!(e.decisions(), 1);
}

#[test]
fn the_identity_is_user_action_and_key() {
    let clock = FakeClock::default();
    let e = engine(&clock);
    let a = req("u1", Some("k"), "allow");
    let mut other_action = a.clone();
    other_action.action = "signIn".into();
    let other_user = req("u2", Some("k"), "block");
    e.track(&a).unwrap();
    // Same key, another user or action: a different action, even with different attributes.
    assert_eq!(e.track(&other_user).unwrap().state, State::Block);
    assert_eq!(e.track(&other_action).unwrap().state, State::Allow);
    assert_eq!(e.decisions(), 3);
    // Strings that concatenate alike are still different identities.
    let ab = req("ab", Some("c"), "allow");
    let a_bc = req("a", Some("bc"), "block");
    assert_eq!(e.track(&ab).unwrap().state, State::Allow);
    assert_eq!(e.track(&a_bc).unwrap().state, State::Block);
}

#[test]
fn without_a_key_the_engine_generates_a_uuid_v4_that_repeats() {
    let clock = FakeClock::default();
    let e = engine(&clock);
    let r = req("u1", None, "challenge");
    let first = e.track(&r).unwrap();
    let key = uuid::Uuid::parse_str(&first.idempotency_key).unwrap();
    assert_eq!(key.get_version_num(), 4);
    assert_eq!(first.idempotency_key, key.hyphenated().to_string());
    // Another call without a key is another action.
    let second = e.track(&r).unwrap();
    assert_ne!(second.idempotency_key, first.idempotency_key);
    assert_ne!(second.token, first.token);
    // A call with the generated key repeats the first.
    let again = e
        .track(&req("u1", Some(&first.idempotency_key), "challenge"))
        .unwrap();
    assert_eq!(again, first);
    assert_eq!(e.decisions(), 2);
}

#[test]
fn a_reused_key_with_different_attributes_is_refused_and_changes_nothing() {
    let clock = FakeClock::default();
    let e = engine(&clock);
    let r = req("u1", Some("k1"), "challenge");
    let first = e.track(&r).unwrap();
    let record = e.get_action("u1", "withdraw-funds", "k1").unwrap();

    let mut changes: Vec<TrackRequest> = Vec::new();
    let mut c = r.clone();
    c.attributes.custom.insert("decide".into(), "allow".into());
    changes.push(c);
    let mut c = r.clone();
    c.attributes.ip_address = Some("203.0.113.8".into());
    changes.push(c);
    let mut c = r.clone();
    c.attributes.ip_address = None;
    changes.push(c);
    let mut c = r.clone();
    c.attributes.device_id = Some("d1".into());
    changes.push(c);
    let mut c = r.clone();
    c.attributes.custom.insert("extra".into(), 1i64.into());
    changes.push(c);
    let mut c = r.clone();
    c.attributes.custom.insert("decide".into(), true.into());
    changes.push(c);
    let mut c = r.clone();
    c.attributes.redirect_url = Some("https://app.test/".into());
    changes.push(c);

    for c in &changes {
        let err = e.track(c).unwrap_err();
        assert_eq!(err.code(), "idempotency_conflict", "{c:?}");
        assert_eq!(
            err,
            TrackError::IdempotencyConflict {
                user_id: "u1".into(),
                action: "withdraw-funds".into(),
                idempotency_key: "k1".into(),
            }
        );
        assert_eq!(
            err.to_string(),
            "idempotency key `k1` was already used for `withdraw-funds` by user `u1` with different attributes"
        );
    }
    assert_eq!(e.get_action("u1", "withdraw-funds", "k1").unwrap(), record);
    assert_eq!(e.track(&r).unwrap(), first);
    assert_eq!(e.decisions(), 1);
    assert_eq!(e.stored_actions(), 1);
}

#[test]
fn on_conflict_replay_returns_the_stored_action() {
    let clock = FakeClock::default();
    let e = engine_with("[idempotency]\non_conflict = \"replay\"", &clock);
    let first = e.track(&req("u1", Some("k1"), "challenge")).unwrap();
    let other = e.track(&req("u1", Some("k1"), "allow")).unwrap();
    assert_eq!(other, first, "the earlier decision, not the new attributes");
    assert_eq!(other.state, State::ChallengeRequired);
    assert_eq!(e.decisions(), 1);
}

#[test]
fn actions_expire_after_the_ttl_on_the_engines_clock() {
    let clock = FakeClock::default();
    let e = engine_with("[idempotency]\nttl = \"1h\"", &clock);
    let r = req("u1", Some("k1"), "review");
    let first = e.track(&r).unwrap();
    clock.advance(Duration::from_millis(3_600_000 - 1));
    assert_eq!(e.track(&r).unwrap(), first, "still retained 1 ms before");
    assert!(e.get_action("u1", "withdraw-funds", "k1").is_some());
    clock.advance(Duration::from_millis(1));
    assert_eq!(e.get_action("u1", "withdraw-funds", "k1"), None);
    let err = e
        .update_action("u1", "withdraw-funds", "k1", State::ReviewSucceeded)
        .unwrap_err();
    assert_eq!(err.code(), "action_not_found");
    assert_eq!(e.decisions(), 1);
    // The key is free again: the same request is decided anew, and so is a different one (the expired action
    // cannot cause a conflict).
    let renewed = e.track(&req("u1", Some("k1"), "block")).unwrap();
    assert_eq!(renewed.state, State::Block);
    assert_eq!(e.decisions(), 2);
    let rec = e.get_action("u1", "withdraw-funds", "k1").unwrap();
    assert_eq!(rec.outcome, State::Block);
    assert_eq!(rec.created_at, clock_now(&clock));
    // The expired slot was replaced, not added to.
    assert_eq!(e.stored_actions(), 1);
}

#[test]
fn a_swapped_ruleset_s_ttl_applies_to_the_next_repeat() {
    // The in-memory store checks an action's age against the current TTL on every lookup; Redis expires an
    // action's keys at the TTL they were written with.
    if !common::in_memory() {
        return;
    }
    let clock = FakeClock::default();
    let e = engine_with("[idempotency]\nttl = \"1h\"", &clock);
    let rules = |ttl: &str| rules_with(&format!("[idempotency]\nttl = \"{ttl}\""));
    let r = req("u1", Some("k1"), "review");
    let first = e.track(&r).unwrap();
    clock.advance(Duration::from_secs(10 * 60));
    // Within the new TTL the repeat is answered from the store; past it, the action is gone and decided anew.
    e.swap_ruleset(rules("11m"));
    assert_eq!(e.track(&r).unwrap(), first);
    assert_eq!(e.decisions(), 1);
    e.swap_ruleset(rules("5m"));
    assert_eq!(e.track(&r).unwrap().state, State::Review);
    assert_eq!(e.decisions(), 2);
}

#[test]
fn the_default_ttl_is_a_day() {
    let clock = FakeClock::default();
    let e = engine(&clock);
    let r = req("u1", Some("k1"), "allow");
    e.track(&r).unwrap();
    clock.advance(Duration::from_secs(24 * 3600 - 1));
    assert!(e.get_action("u1", "withdraw-funds", "k1").is_some());
    clock.advance(Duration::from_secs(1));
    assert!(e.get_action("u1", "withdraw-funds", "k1").is_none());
}

#[test]
fn expired_actions_are_evicted_as_new_ones_arrive() {
    // The in-memory store's own bound (capacity, eviction on insert, process memory): on Redis, actions and
    // history are bounded by native expiry instead (tests/redis_store.rs).
    if !common::in_memory() {
        return;
    }
    let clock = FakeClock::default();
    let e = engine_with("[idempotency]\nttl = \"10m\"", &clock);
    for i in 0..50 {
        e.track(&req("u1", Some(&format!("old-{i}")), "allow"))
            .unwrap();
    }
    assert_eq!(e.stored_actions(), 50);
    clock.advance(Duration::from_secs(600));
    // Each new action evicts up to 16 expired ones, until none is left.
    for (i, stored) in [35, 20, 5, 4].into_iter().enumerate() {
        e.track(&req("u1", Some(&format!("new-{i}")), "allow"))
            .unwrap();
        assert_eq!(e.stored_actions(), stored, "after new action {i}");
    }
    // The expired actions left the store; the new ones stay.
    assert!(e.get_action("u1", "withdraw-funds", "new-0").is_some());
}

fn clock_now(clock: &FakeClock) -> std::time::SystemTime {
    use riskgate::Clock;
    clock.now()
}

#[test]
fn the_store_keeps_the_newest_actions_up_to_its_capacity() {
    // The in-memory store's own bound (capacity, eviction on insert, process memory): on Redis, actions and
    // history are bounded by native expiry instead (tests/redis_store.rs).
    if !common::in_memory() {
        return;
    }
    let clock = FakeClock::default();
    let e = engine_with("[idempotency]\ncapacity = 100", &clock);
    for i in 0..1_000 {
        e.track(&req("u1", Some(&format!("k{i}")), "allow"))
            .unwrap();
        assert!(e.stored_actions() <= 100);
        clock.advance(Duration::from_millis(1));
    }
    assert_eq!(e.stored_actions(), 100);
    for i in 0..900 {
        assert!(e
            .get_action("u1", "withdraw-funds", &format!("k{i}"))
            .is_none());
    }
    for i in 900..1_000 {
        assert!(e
            .get_action("u1", "withdraw-funds", &format!("k{i}"))
            .is_some());
    }
    // A repeat of an evicted action is a new decision.
    e.track(&req("u1", Some("k0"), "allow")).unwrap();
    assert_eq!(e.decisions(), 1_001);
    assert_eq!(e.stored_actions(), 100);
}

#[test]
fn concurrent_first_calls_with_one_identity_decide_once() {
    const THREADS: usize = 8;
    const ROUNDS: usize = 20;
    let clock = FakeClock::default();
    // A slow rule widens the window in which the callers overlap. A challenge draws a fresh random token at
    // every evaluation, so identical tokens show there was one.
    let rules = RuleSet::builder()
        .rule(
            "slow-challenge",
            "let x = 0; for i in 0..2000 { x += i; } if x > 0 { CHALLENGE_REQUIRED }",
        )
        .config_toml("[limits]\ntime_limit = \"10s\"\nmax_operations = 1000000")
        .build()
        .unwrap();
    let e = common::with_test_store(Engine::builder())
        .ruleset(rules)
        .clock(clock.clone())
        .build()
        .unwrap();
    for round in 0..ROUNDS {
        let barrier = Arc::new(Barrier::new(THREADS));
        let r = req("u1", Some(&format!("k{round}")), "x");
        let handles: Vec<_> = (0..THREADS)
            .map(|_| {
                let (e, r, barrier) = (e.clone(), r.clone(), Arc::clone(&barrier));
                std::thread::spawn(move || {
                    barrier.wait();
                    e.track(&r).unwrap()
                })
            })
            .collect();
        let responses: Vec<TrackResponse> =
            handles.into_iter().map(|h| h.join().unwrap()).collect();
        assert_eq!(responses[0].state, State::ChallengeRequired);
        assert!(responses[0].token.is_some());
        for resp in &responses {
            assert_eq!(resp, &responses[0], "round {round}");
        }
        assert_eq!(e.decisions(), round as u64 + 1, "round {round}");
    }
}

#[test]
fn concurrent_calls_with_one_key_and_different_attributes_decide_once() {
    const THREADS: usize = 8;
    let clock = FakeClock::default();
    let e = engine(&clock);
    let barrier = Arc::new(Barrier::new(THREADS));
    let handles: Vec<_> = (0..THREADS)
        .map(|i| {
            let (e, barrier) = (e.clone(), Arc::clone(&barrier));
            std::thread::spawn(move || {
                let decide = if i % 2 == 0 { "block" } else { "review" };
                barrier.wait();
                (decide, e.track(&req("u1", Some("k"), decide)))
            })
        })
        .collect();
    let results: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    assert_eq!(e.decisions(), 1);
    let winner = e.get_action("u1", "withdraw-funds", "k").unwrap().state;
    for (decide, result) in results {
        let expected = if decide == "block" {
            State::Block
        } else {
            State::Review
        };
        match result {
            Ok(resp) => assert_eq!((resp.state, winner), (expected, expected)),
            Err(err) => {
                assert_eq!(err.code(), "idempotency_conflict");
                assert_ne!(expected, winner);
            }
        }
    }
}

#[test]
fn a_refused_request_stores_nothing() {
    let clock = FakeClock::default();
    let e = engine(&clock);
    let mut bad = req("u1", Some("k1"), "allow");
    bad.attributes.ip_address = Some("not an ip".into());
    assert_eq!(e.track(&bad).unwrap_err().code(), "invalid_request");
    let mut bad_key = req("u1", Some(""), "allow");
    bad_key.attributes.idempotency_key = Some("x".repeat(256));
    assert_eq!(e.track(&bad_key).unwrap_err().code(), "invalid_request");
    assert_eq!(e.stored_actions(), 0);
    assert_eq!(e.decisions(), 0);
    // The key is still free for a good request.
    assert_eq!(
        e.track(&req("u1", Some("k1"), "block")).unwrap().state,
        State::Block
    );
}

/// Two `withdraw-funds` requests built to collide under an unkeyed xxh3 fingerprint: padding attributes place
/// `custom.amount` and `custom.pad` at offsets where one lane's multiply term is zero and the second value
/// cancels the first. They differ only in those two numbers.
fn forged_pair() -> (TrackRequest, TrackRequest) {
    let build = |amount: f64, pad: i64| {
        let mut r = TrackRequest::new("u1", "withdraw-funds");
        r.attributes.idempotency_key = Some("k1".into());
        r.attributes.user_agent = Some("MM".into());
        let custom = &mut r.attributes.custom;
        custom.insert("amount".into(), amount.into());
        custom.insert("pad".into(), pad.into());
        custom.insert("filler".into(), "f".repeat(21).into());
        custom.insert("zfill".into(), "z".repeat(300).into());
        r
    };
    (
        build(1.000_000_468_693_230_4, 17_594_136_791_224),
        build(1_099_512_143_109.656_7, -180_126_390_958_028_616),
    )
}

#[test]
fn a_crafted_fingerprint_collision_is_still_a_conflict() {
    let rules = || RuleSet::from_sources([("big", "if custom.amount > 1000.0 { BLOCK }")]).unwrap();
    let (small, big) = forged_pair();
    let e = common::with_test_store(Engine::builder())
        .ruleset(rules())
        .build()
        .unwrap();
    assert_eq!(e.track(&small).unwrap().state, State::Allow);
    let err = e.track(&big).unwrap_err();
    assert_eq!(
        err,
        TrackError::IdempotencyConflict {
            user_id: "u1".into(),
            action: "withdraw-funds".into(),
            idempotency_key: "k1".into(),
        }
    );
    assert_eq!(e.decisions(), 1);
    // On its own, the second request is blocked: the conflict is what keeps it from the first's ALLOW.
    let alone = common::with_test_store(Engine::builder())
        .ruleset(rules())
        .build()
        .unwrap();
    assert_eq!(alone.track(&big).unwrap().state, State::Block);
}

mod any_difference {
    use super::*;
    use proptest::prelude::*;
    use riskgate::{CustomValue, TrackAttributes};
    use std::sync::atomic::{AtomicU64, Ordering};

    fn text(pool: &'static [&'static str]) -> impl Strategy<Value = Option<String>> {
        prop::option::of(prop::sample::select(pool).prop_map(String::from))
    }

    /// Values chosen to be near each other: `1`, `1.0`, `"1"` and `true` are four different values.
    fn value() -> impl Strategy<Value = CustomValue> {
        prop_oneof![
            prop::sample::select(&["1", "", "a", "1.0", "true"][..]).prop_map(CustomValue::from),
            prop::sample::select(&[0i64, 1, -1, i64::MAX, i64::MIN][..]).prop_map(CustomValue::Int),
            prop::sample::select(&[0.0f64, 1.0, 0.1, -1.0, 1e300, f64::MIN_POSITIVE][..])
                .prop_map(CustomValue::Float),
            any::<bool>().prop_map(CustomValue::Bool),
        ]
    }

    fn attributes() -> impl Strategy<Value = TrackAttributes> {
        (
            (
                text(&["d1", "d2", "d1d2"]),
                text(&["203.0.113.7", "::1", "2001:db8::1"]),
                text(&["", "MM", "Mozilla/5.0", "d1"]),
                text(&["https://a.test/", "https://a.test/?x"]),
            ),
            (
                text(&["a@x.test", "d1", "b@x.test"]),
                text(&["+15550100", "d1"]),
                text(&["alice", "d1", "bob"]),
                prop::collection::btree_map(
                    prop::sample::select(&["a", "b", "ab", "1", "d1"][..]).prop_map(String::from),
                    value(),
                    0..4,
                ),
            ),
        )
            .prop_map(
                |(
                    (device_id, ip_address, user_agent, redirect_url),
                    (email, phone_number, username, custom),
                )| {
                    TrackAttributes {
                        idempotency_key: None,
                        device_id,
                        ip_address,
                        user_agent,
                        redirect_url,
                        email,
                        phone_number,
                        username,
                        custom,
                    }
                },
            )
    }

    /// Equal as the fingerprint sees them: floats by their bits.
    fn same(a: &TrackAttributes, b: &TrackAttributes) -> bool {
        let bits = |v: &CustomValue| match v {
            CustomValue::Float(f) => Some(f.to_bits()),
            _ => None,
        };
        let mut a = a.clone();
        let mut b = b.clone();
        let equal_custom = a.custom.len() == b.custom.len()
            && a.custom
                .iter()
                .zip(&b.custom)
                .all(|((ka, va), (kb, vb))| ka == kb && va == vb && bits(va) == bits(vb));
        a.custom.clear();
        b.custom.clear();
        equal_custom && a == b
    }

    /// A copy of `a` with up to three fields replaced by `b`'s: most pairs differ in one or two attributes.
    fn edited(a: &TrackAttributes, b: &TrackAttributes, fields: &[usize]) -> TrackAttributes {
        let mut c = a.clone();
        for &f in fields {
            match f {
                0 => c.device_id = b.device_id.clone(),
                1 => c.ip_address = b.ip_address.clone(),
                2 => c.user_agent = b.user_agent.clone(),
                3 => c.redirect_url = b.redirect_url.clone(),
                4 => c.email = b.email.clone(),
                5 => c.phone_number = b.phone_number.clone(),
                6 => c.username = b.username.clone(),
                7 => c.custom = b.custom.clone(),
                // One custom entry of b's, added or replacing a's.
                _ => {
                    if let Some((k, v)) = b.custom.iter().next() {
                        c.custom.insert(k.clone(), v.clone());
                    }
                }
            }
        }
        c
    }

    static KEYS: AtomicU64 = AtomicU64::new(0);

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn two_requests_that_differ_in_any_attribute_conflict(
            a in attributes(),
            b in attributes(),
            fields in prop::collection::vec(0usize..9, 1..4),
        ) {
            let clock = FakeClock::default();
            let e = engine(&clock);
            let key = format!("k{}", KEYS.fetch_add(1, Ordering::Relaxed));
            let c = edited(&a, &b, &fields);
            let mut first = TrackRequest::new("u1", "withdraw-funds");
            first.attributes = a.clone();
            first.attributes.idempotency_key = Some(key.clone());
            let mut second = first.clone();
            second.attributes = c.clone();
            second.attributes.idempotency_key = Some(key);
            let stored = e.track(&first).unwrap();
            match e.track(&second) {
                Ok(again) => {
                    prop_assert!(same(&a, &c), "a different request repeated: {a:?} vs {c:?}");
                    prop_assert_eq!(again, stored);
                }
                Err(err) => {
                    prop_assert!(!same(&a, &c), "an equal request conflicted: {err}");
                    prop_assert_eq!(err.code(), "idempotency_conflict");
                }
            }
            prop_assert_eq!(e.decisions(), 1);
        }
    }
}

#[test]
fn lowering_the_capacity_evicts_a_few_actions_per_track_not_all_at_once() {
    // The in-memory store's own bound (capacity, eviction on insert, process memory): on Redis, actions and
    // history are bounded by native expiry instead (tests/redis_store.rs).
    if !common::in_memory() {
        return;
    }
    let load = |capacity: usize| {
        RuleSet::builder()
            .rule("r", "ALLOW")
            .config_toml(format!("[idempotency]\ncapacity = {capacity}\n"))
            .build()
            .unwrap()
    };
    let clock = FakeClock::default();
    let e = common::with_test_store(Engine::builder())
        .ruleset(load(1_000_000))
        .clock(clock.clone())
        .build()
        .unwrap();
    const N: usize = 20_000;
    for i in 0..N {
        e.track(&req(&format!("u{i}"), None, "allow")).unwrap();
    }
    assert_eq!(e.stored_actions(), N);
    e.swap_ruleset(load(1));
    // The next action evicts at most 16 of the old ones: no caller pays for the whole backlog.
    let started = std::time::Instant::now();
    e.track(&req("new", Some("k0"), "allow")).unwrap();
    let first = started.elapsed();
    assert_eq!(e.stored_actions(), N + 1 - 16);
    assert!(first < Duration::from_millis(200), "{first:?}");
    // Each later action shrinks the store by 15, until it is back at the capacity, holding the newest.
    let mut n = 1;
    while e.stored_actions() > 1 {
        e.track(&req("new", Some(&format!("k{n}")), "allow"))
            .unwrap();
        n += 1;
        assert!(n <= N / 15 + 2, "not converging: {}", e.stored_actions());
    }
    assert_eq!(n, (N + 1).div_ceil(15));
    let last = format!("k{}", n - 1);
    assert!(e.get_action("new", "withdraw-funds", &last).is_some());
    // Expiry is bounded the same way: a day later everything has expired, and one action evicts 16.
    let e2 = common::with_test_store(Engine::builder())
        .ruleset(load(1_000_000))
        .clock(clock.clone())
        .build()
        .unwrap();
    for i in 0..1_000 {
        e2.track(&req(&format!("u{i}"), Some("k"), "allow"))
            .unwrap();
    }
    assert!(e2.get_action("u999", "withdraw-funds", "k").is_some());
    clock.advance(Duration::from_secs(24 * 3600));
    e2.track(&req("late", None, "allow")).unwrap();
    assert_eq!(e2.stored_actions(), 1_000 + 1 - 16);
    // Expired actions are gone for lookups at once, evicted or not.
    assert_eq!(e2.get_action("u999", "withdraw-funds", "k"), None);
}

#[test]
fn event_times_outside_1970_to_9999_are_refused_and_the_last_one_does_not_expire_at_once() {
    use std::time::UNIX_EPOCH;
    let clock = FakeClock::default();
    let e = engine(&clock);
    let last = UNIX_EPOCH + Duration::from_millis(253_402_300_799_999);
    let r = req("u1", Some("k1"), "block");
    assert_eq!(e.track_at(&r, last).unwrap().state, State::Block);
    // At the last valid millisecond the action is stored for its TTL like any other, not expired at once.
    clock.set(last);
    assert!(e.get_action("u1", "withdraw-funds", "k1").is_some());
    assert_eq!(e.track_at(&r, last).unwrap().state, State::Block);
    assert_eq!(e.decisions(), 1);
    for (at, shown) in [
        (last + Duration::from_millis(1), "253402300800000"),
        (
            UNIX_EPOCH + Duration::from_millis(u64::MAX),
            "9223372036854775807",
        ),
        (UNIX_EPOCH - Duration::from_millis(1), "-1"),
    ] {
        let err = e.track_at(&req("u2", Some("k2"), "allow"), at).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "invalid `timestamp`: `{shown} ms since the epoch` is outside the range of event times, \
                 1970-01-01T00:00:00Z to 9999-12-31T23:59:59.999Z"
            )
        );
    }
    // A clock advanced past the range saturates (never wraps into the past) and is refused the same way.
    clock.advance(Duration::MAX);
    let err = e.track(&req("u2", Some("k2"), "allow")).unwrap_err();
    assert_eq!(err.code(), "invalid_request");
    assert!(err.to_string().contains("9223372036854775807 ms"), "{err}");
    assert_eq!((e.stored_actions(), e.decisions()), (1, 1));
}
