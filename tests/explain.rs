//! `Engine::explain`: a dry run that changes nothing, and the trace it returns; `Engine::evaluate_at`;
//! `replay --trace` through the replayer.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{at, footprint, req};
use riskgate::replay::Replayer;
use riskgate::{Engine, FakeClock, RuleSet, State, TrackRequest};
use serde_json::json;

const RULES: &[(&str, &str)] = &[
    (
        "busy",
        "//! priority: 10\nif velocity(\"1h\") >= 2 && custom.amount > 100 { BLOCK }",
    ),
    (
        "new-device",
        "//! priority: 40\nif is_new_device() { CHALLENGE_REQUIRED }",
    ),
    (
        "watch",
        "//! mode: shadow\nif custom[\"dest\"] == \"crypto\" || email == () { REVIEW }",
    ),
    ("broken", "//! priority: 60\nlet x = 1; x.ends_with(\"1\")"),
    (
        "score",
        "//! priority: 70\nif rba_score() > 1000.0 { BLOCK }",
    ),
];

fn engine(clock: &FakeClock) -> Engine {
    Engine::builder()
        .ruleset(common::ruleset(RULES, "on_rule_error = \"skip\"\n"))
        .clock(clock.clone())
        .build()
        .unwrap()
}

fn pay(user: &str, amount: i64) -> TrackRequest {
    req(user, "pay")
        .device("d1")
        .ip("203.0.113.9")
        .custom("amount", amount)
}

/// Everything an engine shows of its state, beyond `footprint` (its stats with their evaluation time, which
/// differs between two engines deciding alike).
fn state(e: &Engine) -> (usize, usize, u64, usize, riskgate::Stats) {
    let (a, h, d) = footprint(e);
    (a, h, d, e.history_bytes(), e.stats())
}

/// [`state`] without the evaluation time, to compare two engines.
fn counts(e: &Engine) -> (usize, usize, u64, usize, riskgate::Stats) {
    let mut s = state(e);
    s.4.evaluation_time = std::time::Duration::ZERO;
    s
}

#[test]
fn explain_changes_nothing() {
    let clock = FakeClock::at(at(0));
    let (a, b) = (engine(&clock), engine(&clock));
    let history = [
        pay("u1", 5).idempotency_key("k1"),
        pay("u1", 500),
        pay("u2", 7),
    ];
    for (i, r) in history.iter().enumerate() {
        let t = at(i as u64);
        assert_eq!(
            a.track_at(r, t).unwrap().state,
            b.track_at(r, t).unwrap().state
        );
    }
    let before = state(&a);
    assert_eq!(counts(&a), counts(&b));
    // Explain new requests, a stored identity, another user, and a challenge (which would make a token).
    let probes = [
        pay("u1", 900),
        pay("u1", 5).idempotency_key("k1"),
        pay("u3", 1).idempotency_key("k9"),
        req("u4", "pay").custom("dest", "crypto"),
    ];
    for p in &probes {
        for _ in 0..3 {
            a.explain_at(p, at(10)).unwrap();
            a.evaluate_at(p, "velocity(\"1h\")", at(10)).unwrap();
        }
    }
    assert_eq!(
        state(&a),
        before,
        "stored actions, history keys and bytes, decisions and stats"
    );
    assert_eq!(counts(&a), counts(&b));
    assert_eq!(a.get_action("u3", "pay", "k9"), None);
    assert_eq!(
        a.get_action("u1", "pay", "k1"),
        b.get_action("u1", "pay", "k1")
    );
    // And the next decisions are the same as on the engine that explained nothing.
    for (i, p) in probes.iter().enumerate() {
        let t = at(20 + i as u64);
        let (ra, rb) = (a.track_at(p, t).unwrap(), b.track_at(p, t).unwrap());
        assert_eq!(
            (ra.state, &ra.rule_ids, &ra.shadow_rule_ids),
            (rb.state, &rb.rule_ids, &rb.shadow_rule_ids)
        );
    }
    assert_eq!(footprint(&a), footprint(&b));
}

#[test]
fn explain_gives_the_decision_track_would_make() {
    let clock = FakeClock::at(at(0));
    let (a, b) = (engine(&clock), engine(&clock));
    for i in 0..2 {
        a.track_at(&pay("u1", 1), at(i)).unwrap();
        b.track_at(&pay("u1", 1), at(i)).unwrap();
    }
    let probe = pay("u1", 500);
    let why = a.explain_at(&probe, at(5)).unwrap();
    let got = b.track_at(&probe, at(5)).unwrap();
    assert_eq!(why.state, State::Block);
    assert_eq!(why.state, got.state);
    assert_eq!(why.rule_ids, got.rule_ids);
    assert_eq!(why.priority_rule_id, got.priority_rule_id);
    assert_eq!(why.shadow_rule_ids, got.shadow_rule_ids);
    assert_eq!(why.errors, got.errors);
}

#[test]
fn the_trace_says_why_each_rule_did_or_did_not_fire() {
    let clock = FakeClock::at(at(0));
    let e = engine(&clock);
    for i in 0..2 {
        e.track_at(&pay("u1", 1), at(i)).unwrap();
    }
    let why = e.explain_at(&pay("u1", 50), at(5)).unwrap();
    let ids: Vec<&str> = why.rules.iter().map(|r| &*r.rule_id).collect();
    assert_eq!(ids, ["broken", "busy", "new-device", "score", "watch"]);
    let v = serde_json::to_value(&why).unwrap();
    let rule = |id: &str| {
        v["rules"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["ruleId"] == id)
            .unwrap()
            .clone()
    };

    let busy = rule("busy");
    assert_eq!(busy["matched"], false);
    assert_eq!(busy["compiled"], true);
    assert_eq!(busy["mode"], "enforce");
    assert_eq!(busy["priority"], 10);
    assert_eq!(
        busy["signals"],
        json!([{"expr": "velocity(\"1h\")", "value": 2}])
    );
    assert_eq!(
        busy["custom"],
        json!([{"expr": "custom.amount", "value": 50}])
    );
    assert_eq!(busy["variables"], json!([]));
    assert_eq!(
        busy["comparisons"],
        json!([
            {"expr": "velocity(\"1h\") >= 2", "value": true},
            {"expr": "custom.amount > 100", "value": false},
        ])
    );

    // The device was only ever challenged, never verified: still new.
    let device = rule("new-device");
    assert_eq!(
        (device["matched"].clone(), device["outcome"].clone()),
        (json!(true), json!("CHALLENGE_REQUIRED"))
    );
    assert_eq!(
        device["comparisons"],
        json!([{"expr": "is_new_device()", "value": true}])
    );
    assert_eq!(why.state, State::ChallengeRequired);
    assert_eq!(why.priority_rule_id.as_deref(), Some("new-device"));

    let watch = rule("watch");
    assert_eq!(watch["mode"], "shadow");
    assert_eq!(
        (watch["matched"].clone(), watch["outcome"].clone()),
        (json!(true), json!("REVIEW"))
    );
    assert_eq!(
        watch["variables"],
        json!([{"expr": "email", "value": null}])
    );
    assert_eq!(
        watch["custom"],
        json!([{"expr": "custom.dest", "value": null}])
    );
    assert_eq!(
        watch["comparisons"],
        json!([
            {"expr": "custom[\"dest\"] == \"crypto\"", "value": false},
            {"expr": "email == ()", "value": true},
        ])
    );
    assert_eq!(why.shadow_rule_ids, ["watch"]);

    let broken = rule("broken");
    assert_eq!(broken["matched"], false);
    assert_eq!(broken["error"]["ruleId"], "broken");
    assert_eq!(broken["error"]["kind"], "runtime");
    assert_eq!(why.errors.len(), 1);
    assert_eq!(
        broken["comparisons"],
        json!([]),
        "a rule without a top-level `if` has no conditions"
    );

    // rba_score(): one factor per chain, whose product is the score. Without a user agent there is no device
    // type, so that chain has no level and no factor.
    let score = &why.rules[3];
    assert_eq!(
        score.rba.iter().map(|f| f.chain).collect::<Vec<_>>(),
        ["network", "browser", "device"]
    );
    let product: f64 = score.rba.iter().map(|f| f.factor).product();
    let value = score.signals[0].value.as_f64().unwrap();
    assert!(
        (product - value).abs() <= 1e-12 * value.abs(),
        "{product} vs {value}"
    );
    assert!(why.rules.iter().all(|r| r.time_ns > 0));
    assert!(why
        .rules
        .iter()
        .filter(|r| r.rule_id != "score")
        .all(|r| r.rba.is_empty()));
}

#[test]
fn a_local_variable_is_named_not_guessed() {
    let e = common::engine(&[(
        "r",
        "let n = velocity(\"1h\"); if n > 3 && user_id == \"u\" { BLOCK }",
    )]);
    let why = e.explain(&req("u", "signIn")).unwrap();
    let c = &why.rules[0].comparisons;
    assert_eq!(c[0].expr, "n > 3");
    assert_eq!(c[0].value, serde_json::Value::Null);
    assert_eq!(
        c[0].error.as_deref(),
        Some("reads the rule's own variable `n`")
    );
    assert_eq!(
        (c[1].expr.as_str(), &c[1].value),
        ("user_id == \"u\"", &json!(true))
    );
    assert_eq!(why.rules[0].signals[0].value, 0);
}

#[test]
fn explain_validates_the_request_as_track_does() {
    let e = common::engine(&[("r", "ALLOW")]);
    let bad = req("", "signIn");
    assert_eq!(e.explain(&bad).unwrap_err(), e.track(&bad).unwrap_err());
}

#[test]
fn evaluate_at_reads_signals_and_refuses_bad_expressions() {
    let clock = FakeClock::at(at(0));
    let e = engine(&clock);
    e.track_at(&pay("u1", 1), at(0)).unwrap();
    assert_eq!(
        e.evaluate_at(&pay("u1", 1), "velocity(\"1h\")", at(1))
            .unwrap(),
        1
    );
    assert_eq!(
        e.evaluate_at(&pay("u1", 1), "custom.amount * 2", at(1))
            .unwrap(),
        2
    );
    assert_eq!(
        e.evaluate_at(&pay("u1", 1), "BLOCK", at(1)).unwrap(),
        "BLOCK"
    );
    let err = e
        .evaluate_at(&pay("u1", 1), "velocity_ip(\"1h\")", at(1))
        .unwrap_err();
    assert_eq!(err.code(), "invalid_request");
    assert!(
        err.to_string()
            .contains("is not called by name in any rule"),
        "{err}"
    );
    let err = e
        .evaluate_at(&pay("u1", 1), "velocity(", at(1))
        .unwrap_err();
    assert!(err.to_string().contains("does not parse"), "{err}");
    let err = e.evaluate_at(&pay("u1", 1), "loop {}", at(1)).unwrap_err();
    assert!(
        err.to_string().contains("does not parse") || err.to_string().contains("limit"),
        "{err}"
    );
    assert_eq!(e.decisions(), 1);
}

#[test]
fn replay_trace_adds_the_trace_to_new_decisions_only() {
    let rules = RuleSet::from_sources([("no-device", "if device_id == () { CHALLENGE_REQUIRED }")])
        .unwrap();
    let mut r = Replayer::new(Engine::builder().ruleset(rules)).unwrap();
    r.set_trace(true);
    let line = br#"{"timestamp":0,"userId":"u1","action":"signIn","attributes":{"idempotencyKey":"k1","deviceId":"d1"}}"#;
    let first: serde_json::Value = serde_json::from_str(&r.line(1, line).unwrap().json).unwrap();
    assert_eq!(first["state"], "ALLOW");
    assert_eq!(
        first["trace"][0]["comparisons"],
        json!([{"expr": "device_id == ()", "value": false}])
    );
    let out = r.line(2, line).unwrap().json;
    assert_eq!(
        out, r#"{"state":"ALLOW","idempotencyKey":"k1","ruleIds":[]}"#,
        "a repeat is not decided again"
    );
    r.set_trace(false);
    let line = br#"{"timestamp":0,"userId":"u2","action":"signIn","attributes":{"idempotencyKey":"k1","deviceId":"d1"}}"#;
    assert_eq!(
        r.line(3, line).unwrap().json,
        r#"{"state":"ALLOW","idempotencyKey":"k1","ruleIds":[]}"#
    );
}

#[test]
fn explain_lines_record_nothing_and_refuse_operations() {
    let rules = RuleSet::from_sources([("busy", "if velocity(\"1h\") > 0 { BLOCK }")]).unwrap();
    let r = Replayer::new(Engine::builder().ruleset(rules)).unwrap();
    let line = br#"{"timestamp":0,"userId":"u1","action":"signIn"}"#;
    for n in 1..=3 {
        let v: serde_json::Value = serde_json::from_str(&r.explain_line(n, line).unwrap()).unwrap();
        assert_eq!(
            v["state"], "ALLOW",
            "line {n}: nothing recorded, so velocity stays 0"
        );
        assert_eq!(v["rules"][0]["signals"][0]["value"], 0);
    }
    assert_eq!(footprint(r.engine()), (0, 0, 0));
    let op = br#"{"op":"getAction","userId":"u1","action":"signIn","idempotencyKey":"k"}"#;
    assert_eq!(
        r.explain_line(4, op).unwrap(),
        r#"{"line":4,"error":{"code":"invalid_request","message":"invalid `op`: operations change stored actions: explain takes track requests only"}}"#
    );
    assert_eq!(r.explain_line(5, b"  "), None);
    assert!(r
        .explain_line(6, b"{")
        .unwrap()
        .starts_with(r#"{"line":6,"error":{"code":"invalid_json""#));
}
