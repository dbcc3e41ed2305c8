//! `rba_score()` through the engine: only verified actions teach it (a completed challenge does, a failed one
//! does not), compiled and interpreted rules agree, and a ruleset that never calls it keeps no counts.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use riskgate::{Engine, FakeClock, RuleSet, State, TrackRequest};
use std::time::Duration;

const UA: &str = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/143.0.0.0 Safari/537.36";

fn engine(compile: bool) -> (Engine, FakeClock) {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/starter/geoip");
    let rules = RuleSet::builder()
        .compile_rules(compile)
        .config_toml(format!(
            "[geoip]\ncity = \"{dir}/GeoIP2-City-Test.mmdb\"\nasn = \"{dir}/GeoLite2-ASN-Test.mmdb\"\n"
        ))
        .rule("unusual", "if rba_score() > 2.0 { CHALLENGE_REQUIRED }")
        .build()
        .unwrap();
    assert_eq!(rules.rules().all(|r| r.compiled), compile);
    let clock = FakeClock::default();
    let e = common::with_test_store(Engine::builder())
        .ruleset(rules)
        .clock(clock.clone())
        .build()
        .unwrap();
    (e, clock)
}

fn sign_in(e: &Engine, clock: &FakeClock, key: &str, device: &str) -> State {
    clock.advance(Duration::from_secs(3600));
    let req = TrackRequest::new("alice", "signIn")
        .idempotency_key(key)
        .ip("216.160.83.58")
        .device(device)
        .user_agent(UA);
    e.track(&req).unwrap().state
}

#[test]
fn a_completed_challenge_teaches_the_score_and_a_failed_one_does_not() {
    for compile in [true, false] {
        let (e, clock) = engine(compile);
        for i in 0..5 {
            assert_eq!(
                sign_in(&e, &clock, &format!("k{i}"), "laptop"),
                State::Allow
            );
        }
        // A device nobody has used: the score is about n + 1 = 6 in the device chain alone.
        assert_eq!(sign_in(&e, &clock, "n1", "phone"), State::ChallengeRequired);
        e.update_action("alice", "signIn", "n1", State::ChallengeFailed)
            .unwrap();
        assert_eq!(
            sign_in(&e, &clock, "n2", "phone"),
            State::ChallengeRequired,
            "compile={compile}"
        );
        e.update_action("alice", "signIn", "n2", State::ChallengeSucceeded)
            .unwrap();
        assert_eq!(
            sign_in(&e, &clock, "n3", "phone"),
            State::Allow,
            "compile={compile}"
        );
        assert_eq!(sign_in(&e, &clock, "k9", "laptop"), State::Allow);
    }
}

#[test]
fn rba_score_is_a_number_that_needs_no_database() {
    let rules = RuleSet::builder()
        .rule(
            "typed",
            "if type_of(rba_score()) == \"f64\" && rba_score() == 1.0 { BLOCK }",
        )
        .build()
        .unwrap();
    let e = common::with_test_store(Engine::builder())
        .ruleset(rules)
        .build()
        .unwrap();
    // No history: every chain is neutral, so the score is exactly 1.
    let r = e
        .track(&TrackRequest::new("u", "signIn").ip("203.0.113.1"))
        .unwrap();
    assert_eq!(r.state, State::Block, "{:?}", r.errors);
    let bad = RuleSet::builder().rule("bad", "rba_score(1) > 2.0").build();
    let msg = bad.err().map(|e| e.to_string()).unwrap_or_default();
    assert!(msg.contains("`rba_score` takes no arguments"), "{msg}");
}
