//! Deciding: each outcome, priority resolution and ties, default outcomes, shadow rules, `actions` scoping.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::engine_with_config as engine;
use riskgate::{Engine, RuleSet, State, TrackRequest};

fn track(e: &Engine, action: &str) -> riskgate::TrackResponse {
    e.track(&TrackRequest::new("user-1", action)).unwrap()
}

#[test]
fn each_outcome_is_returned() {
    for (src, want) in [
        ("ALLOW", State::Allow),
        ("CHALLENGE_REQUIRED", State::ChallengeRequired),
        ("REVIEW", State::Review),
        ("BLOCK", State::Block),
    ] {
        let e = engine(&[("r", src)], "default_outcome = \"REVIEW\"");
        let resp = track(&e, "signIn");
        assert_eq!(resp.state, want, "{src}");
        assert_eq!(resp.rule_ids, ["r"]);
        assert_eq!(resp.priority_rule_id.as_deref(), Some("r"));
    }
}

#[test]
fn unit_does_not_match_and_the_default_applies() {
    let e = engine(&[("r", "if false { BLOCK }")], "");
    let resp = track(&e, "signIn");
    assert_eq!(resp.state, State::Allow);
    assert!(resp.rule_ids.is_empty());
    assert_eq!(resp.priority_rule_id, None);
    assert!(resp.errors.is_empty());
}

#[test]
fn lowest_priority_number_decides_and_rule_ids_are_strongest_first() {
    let e = engine(
        &[
            ("weak-block", "//! priority: 60\nBLOCK"),
            ("strong-allow", "//! priority: 5\nALLOW"),
            ("middle-review", "//! priority: 30\nREVIEW"),
            ("silent", "//! priority: 0\n()"),
        ],
        "",
    );
    let resp = track(&e, "signIn");
    assert_eq!(resp.state, State::Allow);
    assert_eq!(
        resp.rule_ids,
        ["strong-allow", "middle-review", "weak-block"]
    );
    assert_eq!(resp.priority_rule_id.as_deref(), Some("strong-allow"));
}

#[test]
fn ties_go_to_the_most_severe_outcome() {
    let e = engine(
        &[
            ("a-allow", "//! priority: 10\nALLOW"),
            ("b-challenge", "//! priority: 10\nCHALLENGE_REQUIRED"),
            ("c-block", "//! priority: 10\nBLOCK"),
            ("d-review", "//! priority: 10\nREVIEW"),
        ],
        "",
    );
    let resp = track(&e, "signIn");
    assert_eq!(resp.state, State::Block);
    assert_eq!(
        resp.rule_ids,
        ["c-block", "d-review", "b-challenge", "a-allow"]
    );
    let e = engine(
        &[
            ("a", "//! priority: 10\nCHALLENGE_REQUIRED"),
            ("b", "//! priority: 10\nREVIEW"),
        ],
        "",
    );
    assert_eq!(track(&e, "signIn").state, State::Review);
}

#[test]
fn default_outcome_is_global_then_per_action() {
    let config = "default_outcome = \"CHALLENGE_REQUIRED\"\n[actions.withdraw-funds]\ndefault_outcome = \"REVIEW\"\n";
    let e = engine(&[("never", "()")], config);
    assert_eq!(track(&e, "signIn").state, State::ChallengeRequired);
    assert_eq!(track(&e, "withdraw-funds").state, State::Review);
    let e = engine(&[], "");
    assert_eq!(track(&e, "anything").state, State::Allow);
}

#[test]
fn shadow_rules_are_reported_but_never_decide() {
    let e = engine(
        &[
            ("enforced", "//! priority: 50\nCHALLENGE_REQUIRED"),
            ("trial", "//! priority: 1\n//! mode: shadow\nBLOCK"),
        ],
        "",
    );
    let resp = track(&e, "signIn");
    assert_eq!(resp.state, State::ChallengeRequired);
    assert_eq!(resp.rule_ids, ["enforced"]);
    assert_eq!(resp.shadow_rule_ids, ["trial"]);
    let json = serde_json::to_value(&resp).unwrap();
    assert_eq!(json["shadowRuleIds"], serde_json::json!(["trial"]));
}

#[test]
fn actions_scope_which_rules_run() {
    let e = engine(
        &[
            ("sign-in-only", "//! actions: signIn\nBLOCK"),
            (
                "withdraw-or-email",
                "//! actions: withdraw-funds, change-email\nREVIEW",
            ),
            ("everywhere", "//! priority: 90\nCHALLENGE_REQUIRED"),
        ],
        "",
    );
    assert_eq!(track(&e, "signIn").rule_ids, ["sign-in-only", "everywhere"]);
    assert_eq!(
        track(&e, "withdraw-funds").rule_ids,
        ["withdraw-or-email", "everywhere"]
    );
    assert_eq!(
        track(&e, "change-email").rule_ids,
        ["withdraw-or-email", "everywhere"]
    );
    assert_eq!(track(&e, "signOut").rule_ids, ["everywhere"]);
}

#[test]
fn disabled_rules_do_not_run() {
    let e = engine(&[("off", "//! enabled: false\nBLOCK")], "");
    assert_eq!(track(&e, "signIn").state, State::Allow);
    assert!(!e.ruleset().rules().next().unwrap().enabled);
}

#[test]
fn rules_see_the_request() {
    let e = engine(
        &[(
            "all-fields",
            r#"
            if user_id == "u-9" && action == "signIn" && ip_address == "2001:db8::1" && device_id == "d"
                && user_agent == "ua" && email == "e@x.test" && phone_number == "+15550100"
                && username == "neo" && redirect_url == "https://app.test/next"
                && custom.amount == 12 && custom.ratio == 0.5 && custom.vip == true && custom.tier == "gold"
                && custom.missing == () { BLOCK }
            "#,
        )],
        "",
    );
    let req: TrackRequest = serde_json::from_str(
        r#"{"userId":"u-9","action":"signIn","attributes":{"ipAddress":"2001:db8::1","deviceId":"d",
            "userAgent":"ua","email":"e@x.test","phoneNumber":"+15550100","username":"neo",
            "redirectUrl":"https://app.test/next","custom":{"amount":12,"ratio":0.5,"vip":true,"tier":"gold"}}}"#,
    )
    .unwrap();
    let resp = e.track(&req).unwrap();
    assert_eq!(resp.state, State::Block, "{resp:?}");
}

#[test]
fn absent_attributes_read_as_unit() {
    let e = engine(
        &[(
            "absent",
            "if ip_address == () && device_id == () && email == () && custom.x == () { REVIEW }",
        )],
        "",
    );
    assert_eq!(track(&e, "signIn").state, State::Review);
}

#[test]
fn no_rule_can_change_what_a_later_rule_sees() {
    let e = engine(
        &[
            ("a-tamper", "let user_id = \"someone-else\"; let x = 1; ()"),
            ("b-check", "if user_id == \"user-1\" { REVIEW }"),
        ],
        "",
    );
    assert_eq!(track(&e, "signIn").state, State::Review);
    // Assigning to a request variable is refused at load (it was a rule error at run time).
    let e = RuleSet::from_sources([("assign", "user_id = \"x\"; ALLOW")]).unwrap_err();
    assert_eq!(
        e.to_string(),
        "assign:1:1: `user_id` is part of the request and cannot be changed (copy it first: `let c = user_id;`)"
    );
}

#[test]
fn responses_use_the_wire_names() {
    let e = engine(
        &[
            ("r", "//! priority: 3\nREVIEW"),
            ("s", "//! mode: shadow\nBLOCK"),
        ],
        "",
    );
    let mut req = TrackRequest::new("user-1", "signIn");
    req.attributes.idempotency_key = Some("key-1".into());
    let json = serde_json::to_value(e.track(&req).unwrap()).unwrap();
    assert_eq!(
        json,
        serde_json::json!({
            "state": "REVIEW",
            "idempotencyKey": "key-1",
            "ruleIds": ["r"],
            "priorityRuleId": "r",
            "shadowRuleIds": ["s"],
        })
    );
}

#[test]
fn state_serialises_as_authsignal_names_and_reads_review_required() {
    let names = [
        "ALLOW",
        "CHALLENGE_REQUIRED",
        "REVIEW",
        "BLOCK",
        "CHALLENGE_SUCCEEDED",
        "CHALLENGE_FAILED",
        "REVIEW_SUCCEEDED",
        "REVIEW_FAILED",
    ];
    for n in names {
        let s: State = serde_json::from_str(&format!("\"{n}\"")).unwrap();
        assert_eq!(serde_json::to_string(&s).unwrap(), format!("\"{n}\""));
    }
    let s: State = serde_json::from_str("\"REVIEW_REQUIRED\"").unwrap();
    assert_eq!(s, State::Review);
    assert!(serde_json::from_str::<State>("\"MAYBE\"").is_err());
}
