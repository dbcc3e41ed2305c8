//! What an application embedding riskgate meets first: building requests in code, parsing states, mapping
//! errors to HTTP statuses, comparing rule ids, and building response values for its own tests.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use riskgate::{
    ActionRecord, Diagnostic, InvalidTokenReason, RuleId, State, TrackError, TrackRequest,
    TrackResponse, ValidateChallengeResponse,
};
use std::collections::HashSet;
use std::time::SystemTime;

mod common;

use common::engine;

#[test]
fn a_request_built_in_code_reaches_the_rules() {
    let e = engine(&[(
        "withdraw/big",
        r#"if custom.amount > 4000 && device_id == "dev-1" && ip_address == "203.0.113.7" && email == "a@example.com" { REVIEW }"#,
    )]);
    let req = TrackRequest::new("user-1", "withdraw-funds")
        .ip("203.0.113.7")
        .device("dev-1")
        .email("a@example.com")
        .idempotency_key("order-17")
        .custom("amount", 4200u64);
    let resp = e.track(&req).unwrap();
    assert_eq!(resp.state, State::Review);
    assert_eq!(resp.idempotency_key, "order-17");
    assert_eq!(resp.priority_rule(), Some("withdraw/big"));
    let rec = e
        .get_action("user-1", "withdraw-funds", "order-17")
        .unwrap();
    assert_eq!(rec.priority_rule(), Some("withdraw/big"));
    let small = TrackRequest::new("user-1", "withdraw-funds").custom("amount", 4000u16);
    assert_eq!(e.track(&small).unwrap().priority_rule(), None);
}

#[test]
fn states_parse_in_any_case_with_a_typed_error() {
    for s in State::ALL {
        assert_eq!(s.as_str().parse::<State>().unwrap(), s);
        assert_eq!(s.as_str().to_lowercase().parse::<State>().unwrap(), s);
    }
    assert_eq!(
        "Challenge_Required".parse::<State>().unwrap(),
        State::ChallengeRequired
    );
    assert_eq!("review_required".parse::<State>().unwrap(), State::Review);
    let e = "REVIEWED".parse::<State>().unwrap_err();
    assert_eq!(e.input(), "REVIEWED");
    assert_eq!(
        e.to_string(),
        "unknown state `REVIEWED`: expected ALLOW, CHALLENGE_REQUIRED, REVIEW, BLOCK, CHALLENGE_SUCCEEDED, \
         CHALLENGE_FAILED, REVIEW_SUCCEEDED or REVIEW_FAILED"
    );
    for bad in [
        "",
        " ALLOW",
        "ALLOW\n",
        "ALLOWALLOWALLOWALLOWALLOW",
        "ａｌｌｏｗ",
    ] {
        assert!(bad.parse::<State>().is_err(), "{bad:?}");
    }
    let long = "x".repeat(10_000);
    let e = long.parse::<State>().unwrap_err();
    assert!(e.to_string().len() < 300, "the message shortens the input");
    // The wire format stays exact: serde does not read lower case.
    assert!(serde_json::from_str::<State>("\"allow\"").is_err());
}

#[test]
fn an_invalid_transition_names_the_allowed_states() {
    let e = engine(&[("r", "REVIEW")]);
    e.track(&TrackRequest::new("u1", "signIn").idempotency_key("k"))
        .unwrap();
    let err = e
        .update_action("u1", "signIn", "k", State::ChallengeSucceeded)
        .unwrap_err();
    match &err {
        TrackError::InvalidTransition { from, to, allowed } => {
            assert_eq!((*from, *to), (State::Review, State::ChallengeSucceeded));
            assert_eq!(*allowed, [State::ReviewSucceeded, State::ReviewFailed]);
            assert_eq!(*allowed, from.allowed_moves());
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(err.http_status(), 409);
    e.update_action("u1", "signIn", "k", State::ReviewFailed)
        .unwrap();
    match e.update_action("u1", "signIn", "k", State::ReviewSucceeded) {
        Err(TrackError::InvalidTransition { allowed, .. }) => assert!(allowed.is_empty()),
        other => panic!("{other:?}"),
    }
    for s in State::ALL {
        for to in s.allowed_moves() {
            assert!(!to.is_decision(), "{s} -> {to}");
        }
        assert_eq!(
            s.allowed_moves().is_empty(),
            !matches!(s, State::ChallengeRequired | State::Review)
        );
    }
}

#[test]
fn every_error_has_an_http_status() {
    let e = engine(&[("a", "ALLOW")]);
    let cases: Vec<(TrackError, u16)> = vec![
        (TrackRequest::from_json("{").unwrap_err(), 400),
        (e.track(&TrackRequest::new("", "signIn")).unwrap_err(), 400),
        (
            e.update_action("u", "signIn", "missing", State::ChallengeSucceeded)
                .unwrap_err(),
            404,
        ),
        (TrackError::RandomSource, 503),
    ];
    for (err, status) in cases {
        assert_eq!(err.http_status(), status, "{err}");
    }
    e.track(
        &TrackRequest::new("u", "signIn")
            .idempotency_key("k")
            .custom("n", 1),
    )
    .unwrap();
    let conflict = e
        .track(
            &TrackRequest::new("u", "signIn")
                .idempotency_key("k")
                .custom("n", 2),
        )
        .unwrap_err();
    assert_eq!(
        (conflict.code(), conflict.http_status()),
        ("idempotency_conflict", 409)
    );
    assert_eq!(TrackError::RandomSource.code(), "random_source");
    assert_eq!(
        TrackError::RandomSource.to_string(),
        "cannot make a challenge token: the operating system's random source failed"
    );
}

#[test]
fn rule_ids_compare_with_strings_both_ways() {
    let e = engine(&[("withdraw/big", "BLOCK"), ("other", "REVIEW")]);
    let resp = e.track(&TrackRequest::new("u1", "signIn")).unwrap();
    let id: &RuleId = resp.priority_rule_id.as_ref().unwrap();
    assert!(*id == *"withdraw/big");
    assert!(id.eq(&"withdraw/big"));
    assert!("withdraw/big" == *id);
    assert!(*"withdraw/big" == *id);
    let owned = String::from("withdraw/big");
    assert!(*id == owned);
    assert!(*id != "other");
    let as_ref: &str = id.as_ref();
    assert_eq!(as_ref, "withdraw/big");
    let ids: HashSet<RuleId> = resp.rule_ids.iter().cloned().collect();
    assert!(ids.contains("other") && ids.contains("withdraw/big") && !ids.contains("nope"));
    // The wire form is unchanged: a plain string.
    let json = serde_json::to_value(&resp).unwrap();
    assert_eq!(json["priorityRuleId"], "withdraw/big");
}

#[test]
fn response_values_can_be_built_for_tests() {
    let mut r = TrackResponse::new(State::ChallengeRequired, "k1");
    r.token = Some("t".into());
    assert_eq!(
        serde_json::to_string(&r).unwrap(),
        r#"{"state":"CHALLENGE_REQUIRED","idempotencyKey":"k1","token":"t","ruleIds":[]}"#
    );
    let e = engine(&[("a", "ALLOW")]);
    let got = e
        .track(&TrackRequest::new("u1", "signIn").idempotency_key("k1"))
        .unwrap();
    let mut expected = TrackResponse::new(State::Allow, "k1");
    expected.rule_ids.push("a".into());
    expected.priority_rule_id = Some(RuleId::from("a"));
    assert_eq!(got, expected);

    let at = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_700_000_000);
    let rec = ActionRecord::new("u1", "signIn", "k1", State::Review, at);
    assert_eq!(
        serde_json::to_string(&rec).unwrap(),
        r#"{"userId":"u1","action":"signIn","idempotencyKey":"k1","state":"REVIEW","outcome":"REVIEW","ruleIds":[],"createdAt":"2023-11-14T22:13:20.000Z","stateUpdatedAt":"2023-11-14T22:13:20.000Z"}"#
    );
    assert_eq!(
        e.validate_challenge("nope"),
        ValidateChallengeResponse::invalid(InvalidTokenReason::UnknownToken)
    );
    let v = ValidateChallengeResponse::about("u1", "signIn", "k1", State::ChallengeSucceeded, None);
    assert!(v.is_valid);
    assert_eq!(v.state, Some(State::ChallengeSucceeded));
    let d = Diagnostic::new("rules/a.rhai", 0, 0, "no rules");
    assert_eq!(d.to_string(), "rules/a.rhai: no rules");
    assert_eq!((d.line, d.column), (0, 0));
}
