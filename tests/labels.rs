//! Replaying labelled lines: `label` and `model` are carried beside the request and counted, `ifState` makes an
//! update conditional.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use riskgate::replay::{Labels, Outcome, Replayer, MAX_LABEL_BYTES};
use riskgate::{Engine, RuleSet};

fn replayer() -> Replayer {
    let rules =
        RuleSet::from_sources([("new-device", "if is_new_device() { CHALLENGE_REQUIRED }")])
            .unwrap();
    Replayer::new(Engine::builder().ruleset(rules)).unwrap()
}

#[test]
fn labels_are_carried_and_counted_but_do_not_change_the_output() {
    let mut r = replayer();
    let mut labels = Labels::default();
    let a = r
        .line(1, br#"{"timestamp":0,"userId":"u1","action":"signIn","attributes":{"idempotencyKey":"k1","deviceId":"d1"},"label":"genuine","model":"home"}"#)
        .unwrap();
    assert_eq!(
        a.label
            .as_ref()
            .map(|l| (l.label.as_str(), l.model.as_deref())),
        Some(("genuine", Some("home")))
    );
    assert!(
        a.json
            .starts_with(r#"{"state":"CHALLENGE_REQUIRED","idempotencyKey":"k1""#),
        "{}",
        a.json
    );
    assert!(!a.json.contains("label"));
    labels.record(&a);
    let u = r
        .line(2, br#"{"timestamp":10,"op":"updateAction","userId":"u1","action":"signIn","idempotencyKey":"k1","state":"CHALLENGE_SUCCEEDED","ifState":"CHALLENGE_REQUIRED","label":"genuine"}"#)
        .unwrap();
    assert!(
        u.json.contains(r#""state":"CHALLENGE_SUCCEEDED""#),
        "{}",
        u.json
    );
    labels.record(&u);
    let b = r
        .line(3, br#"{"timestamp":20,"userId":"u1","action":"signIn","attributes":{"idempotencyKey":"k2","deviceId":"d1"},"label":"genuine","model":"home"}"#)
        .unwrap();
    assert!(b.json.starts_with(r#"{"state":"ALLOW""#), "{}", b.json);
    labels.record(&b);
    let c = r
        .line(4, br#"{"timestamp":30,"userId":"u1","action":"signIn","attributes":{"idempotencyKey":"k3","deviceId":"evil"},"label":"attack","model":"vpn"}"#)
        .unwrap();
    labels.record(&c);
    // An unlabelled line is not counted.
    let d = r
        .line(5, br#"{"timestamp":40,"userId":"u2","action":"signIn"}"#)
        .unwrap();
    assert!(d.label.is_none());
    labels.record(&d);
    let genuine = labels.total("genuine");
    assert_eq!(
        (genuine.events, genuine.allow, genuine.challenge),
        (2, 1, 1)
    );
    assert_eq!(genuine.rate(), 0.5);
    let attack = labels.total("attack");
    assert_eq!((attack.events, attack.caught(), attack.rate()), (1, 1, 1.0));
    let rows: Vec<(&str, &str, u64)> = labels.rows().map(|(l, m, t)| (l, m, t.events)).collect();
    assert_eq!(rows, [("attack", "vpn", 1), ("genuine", "home", 2)]);
    let table = labels.table();
    assert!(
        table.contains("100.00% caught") && table.contains("50.00% friction"),
        "{table}"
    );
    let json: serde_json::Value = serde_json::from_str(&labels.to_json()).unwrap();
    assert_eq!(json["rows"][0]["model"], "vpn");
    assert_eq!(json["rows"][1]["rate"], 0.5);
}

#[test]
fn if_state_applies_the_update_only_from_that_state() {
    let mut r = replayer();
    r.line(1, br#"{"timestamp":0,"userId":"u1","action":"signIn","attributes":{"idempotencyKey":"k1","deviceId":"d1"}}"#)
        .unwrap();
    // Not in review: the action comes back unchanged.
    let o = r
        .line(2, br#"{"timestamp":5,"op":"updateAction","userId":"u1","action":"signIn","idempotencyKey":"k1","state":"REVIEW_SUCCEEDED","ifState":"REVIEW"}"#)
        .unwrap();
    assert!(matches!(o.outcome, Outcome::Operation));
    assert!(
        o.json.contains(r#""state":"CHALLENGE_REQUIRED""#),
        "{}",
        o.json
    );
    // Without ifState the same move is refused, as before.
    let o = r
        .line(3, br#"{"timestamp":6,"op":"updateAction","userId":"u1","action":"signIn","idempotencyKey":"k1","state":"REVIEW_SUCCEEDED"}"#)
        .unwrap();
    assert!(
        o.json.contains(r#""code":"invalid_transition""#),
        "{}",
        o.json
    );
    // An unknown action is still not found, and a bad ifState names the field.
    let o = r
        .line(4, br#"{"op":"updateAction","userId":"u1","action":"signIn","idempotencyKey":"nope","state":"CHALLENGE_FAILED","ifState":"CHALLENGE_REQUIRED"}"#)
        .unwrap();
    assert!(
        o.json.contains(r#""code":"action_not_found""#),
        "{}",
        o.json
    );
    let o = r
        .line(5, br#"{"op":"updateAction","userId":"u1","action":"signIn","idempotencyKey":"k1","state":"CHALLENGE_FAILED","ifState":"SOMETIMES"}"#)
        .unwrap();
    assert!(
        o.json.contains(r#""code":"invalid_request""#) && o.json.contains("ifState"),
        "{}",
        o.json
    );
}

#[test]
fn bad_labels_are_refused_naming_the_field() {
    let mut r = replayer();
    let long = "x".repeat(MAX_LABEL_BYTES + 1);
    for (field, value) in [
        ("label", "1".to_owned()),
        ("label", "\"\"".to_owned()),
        ("label", format!("\"{long}\"")),
        ("model", "\"a\\u0007b\"".to_owned()),
        ("model", "[]".to_owned()),
    ] {
        let line =
            format!(r#"{{"timestamp":0,"userId":"u1","action":"signIn","{field}":{value}}}"#);
        let o = r.line(1, line.as_bytes()).unwrap();
        assert!(
            o.json.contains(r#""code":"invalid_request""#)
                && o.json.contains(&format!("`{field}`")),
            "{field}={value}: {}",
            o.json
        );
    }
    let ok = format!(
        r#"{{"timestamp":0,"userId":"u1","action":"signIn","label":"{}"}}"#,
        "x".repeat(MAX_LABEL_BYTES)
    );
    assert!(r.line(2, ok.as_bytes()).unwrap().json.contains("\"state\""));
}
