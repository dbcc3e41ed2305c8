//! What each failure leads to, one test per row of the README's "Failure semantics" table: a rule error, a
//! rule that runs out of time, a full action store, a full signal history, a GeoIP database that is missing
//! or lacks the address, and a ruleset that stops loading.
//!
//! Each row's details are tested beside their concern: `tests/rule_errors.rs` (rule errors),
//! `tests/sandbox.rs` (limits), `tests/idempotency.rs` (the store), `tests/signals_velocity.rs` (history),
//! `tests/signals_geo.rs` (GeoIP) and `tests/reload.rs` (loading).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

mod common;

use common::{at, engine_at_t0 as engine};
use riskgate::{Engine, RuleSet, State, TrackRequest};
use std::fs;
use std::time::Duration;

/// `user` signing in from London (81.2.69.142) on `device-1` with idempotency key `key`.
fn req(user: &str, key: &str) -> TrackRequest {
    common::req(user, "signIn")
        .idempotency_key(key)
        .ip("81.2.69.142")
        .device("device-1")
}

#[test]
fn a_rule_error_counts_as_on_rule_error_and_is_reported() {
    let failing = |config: &str| {
        RuleSet::builder()
            .rule("broken", "let x = custom.missing + 1; ()")
            .config_toml(config)
            .build()
            .unwrap()
    };
    let resp = engine(failing("")).track_at(&req("u", "k"), at(0)).unwrap();
    assert_eq!(
        resp.state,
        State::ChallengeRequired,
        "the default on_rule_error"
    );
    assert_eq!(resp.rule_ids, ["broken"]);
    assert_eq!(resp.errors.len(), 1);
    assert_eq!(resp.errors[0].rule_id, "broken");
    assert!(
        resp.errors[0].message.starts_with("1:"),
        "{:?}",
        resp.errors
    );
    let resp = engine(failing("on_rule_error = \"BLOCK\""))
        .track_at(&req("u", "k"), at(0))
        .unwrap();
    assert_eq!(resp.state, State::Block);
    let resp = engine(failing("on_rule_error = \"skip\""))
        .track_at(&req("u", "k"), at(0))
        .unwrap();
    assert_eq!(resp.state, State::Allow);
    assert!(resp.rule_ids.is_empty());
    assert_eq!(resp.errors.len(), 1, "skipped, still reported");
}

#[test]
fn a_rule_out_of_time_is_a_rule_error() {
    let rules = RuleSet::builder()
        .rule("slow", "let t = timestamp(); while t.elapsed < 5.0 {} ()")
        .config_toml("on_rule_error = \"REVIEW\"\n[limits]\nmax_operations = 1000000000\ntime_limit = \"5ms\"")
        .build()
        .unwrap();
    let started = std::time::Instant::now();
    let resp = engine(rules).track_at(&req("u", "k"), at(0)).unwrap();
    assert!(started.elapsed() < Duration::from_secs(1));
    assert_eq!(resp.state, State::Review);
    assert!(resp.errors[0]
        .message
        .contains("time limit of 5ms exceeded"));
}

#[test]
fn a_full_action_store_forgets_the_oldest_actions() {
    let rules = RuleSet::builder()
        .rule("r", "REVIEW")
        .config_toml("[idempotency]\ncapacity = 3")
        .build()
        .unwrap();
    let e = engine(rules);
    for i in 0..5 {
        e.track_at(&req("u", &format!("k{i}")), at(0)).unwrap();
    }
    assert_eq!(e.stored_actions(), 3);
    assert!(e.get_action("u", "signIn", "k0").is_none());
    assert!(e.get_action("u", "signIn", "k1").is_none());
    assert!(e.get_action("u", "signIn", "k4").is_some());
    // A forgotten action cannot be updated, and tracking it again is a new decision.
    let err = e
        .update_action("u", "signIn", "k0", State::ReviewSucceeded)
        .unwrap_err();
    assert_eq!(err.code(), "action_not_found");
    let decisions = e.decisions();
    e.track_at(&req("u", "k0"), at(0)).unwrap();
    assert_eq!(e.decisions(), decisions + 1);
    assert_eq!(e.stored_actions(), 3);
}

#[test]
fn a_full_history_forgets_the_oldest_keys() {
    let rules = RuleSet::builder()
        .rule("seen", "if velocity(\"1h\") > 0 { BLOCK }")
        .config_toml("[signals]\nmax_keys = 2")
        .build()
        .unwrap();
    let e = engine(rules);
    for u in ["a", "b", "c"] {
        assert_eq!(
            e.track_at(&req(u, "k1"), at(0)).unwrap().state,
            State::Allow
        );
    }
    // "c" is still remembered; "a" was pushed out, so its next action looks like its first.
    assert_eq!(
        e.track_at(&req("c", "k2"), at(0)).unwrap().state,
        State::Block
    );
    assert_eq!(
        e.track_at(&req("a", "k2"), at(0)).unwrap().state,
        State::Allow
    );
}

#[test]
fn geo_signals_need_a_database_and_read_as_unknown_for_addresses_it_lacks() {
    let e = RuleSet::from_sources([("geo", "if country() == () { REVIEW }")]).unwrap_err();
    assert!(
        e.to_string().contains("`country` needs a GeoIP database"),
        "{e}"
    );
    let db = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/rules/geoip/GeoIP2-City-Test.mmdb"
    );
    let rules = RuleSet::builder()
        .rule("geo", "if country() == () && city() == () { REVIEW }")
        .config_toml(format!("[geoip]\ncity = \"{db}\"\n"))
        .build()
        .unwrap();
    let e = engine(rules);
    let mut unknown = req("u", "k1");
    unknown.attributes.ip_address = Some("10.0.0.1".into());
    let resp = e.track_at(&unknown, at(0)).unwrap();
    assert_eq!(resp.state, State::Review);
    assert!(resp.errors.is_empty());
    // An address the database knows (MaxMind's test data) is located.
    let resp = e.track_at(&req("u", "k2"), at(0)).unwrap();
    assert_eq!(resp.state, State::Allow, "{resp:?}");
}

#[test]
fn a_missing_geoip_file_is_a_load_error_and_a_reload_keeps_the_working_rules() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    fs::write(d.join("r.rhai"), "REVIEW").unwrap();
    fs::write(
        d.join("riskgate.toml"),
        "[geoip]\ncity = \"geoip/missing.mmdb\"\n",
    )
    .unwrap();
    let err = Engine::builder().rules_dir(d).err().unwrap();
    assert!(err.to_string().contains("cannot open"), "{err}");
    assert!(err.to_string().contains("missing.mmdb"), "{err}");

    fs::write(d.join("riskgate.toml"), "").unwrap();
    let e = Engine::builder().rules_dir(d).unwrap().build().unwrap();
    fs::write(d.join("r.rhai"), "BLOCK").unwrap();
    fs::write(
        d.join("riskgate.toml"),
        "[geoip]\ncity = \"geoip/missing.mmdb\"\n",
    )
    .unwrap();
    assert!(e.reload_rules().is_err());
    assert_eq!(e.track(&req("u", "k")).unwrap().state, State::Review);
}
