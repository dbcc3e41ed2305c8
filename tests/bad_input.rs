//! Bad requests get a clear `TrackError` naming the field, and change nothing in the engine.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use riskgate::{CustomValue, Engine, RuleSet, State, TrackError, TrackRequest};

fn engine() -> Engine {
    let rules =
        RuleSet::from_sources([("new-key", "//! priority: 5\nCHALLENGE_REQUIRED")]).unwrap();
    Engine::builder().ruleset(rules).build().unwrap()
}

fn field_of(e: &TrackError) -> &str {
    match e {
        TrackError::InvalidRequest { field, .. } => field,
        other => panic!("expected invalid_request, got {other:?}"),
    }
}

type Mutation = Box<dyn Fn(&mut TrackRequest)>;

fn good() -> TrackRequest {
    let mut r = TrackRequest::new("user-1", "signIn");
    r.attributes.idempotency_key = Some("k1".into());
    r
}

#[test]
fn each_bad_field_is_refused_by_name() {
    let long = "x".repeat(256);
    let cases: Vec<(&str, Mutation)> = vec![
        ("userId", Box::new(|r| r.user_id = String::new())),
        ("userId", Box::new(move |r| r.user_id = "x".repeat(256))),
        ("userId", Box::new(|r| r.user_id = "bad\u{0}id".into())),
        ("action", Box::new(|r| r.action = String::new())),
        ("action", Box::new(|r| r.action = "sign in!".into())),
        ("action", Box::new(|r| r.action = "a".repeat(65))),
        ("action", Box::new(|r| r.action = "sign/in".into())),
        (
            "attributes.ipAddress",
            Box::new(|r| r.attributes.ip_address = Some("999.1.1.1".into())),
        ),
        (
            "attributes.ipAddress",
            Box::new(|r| r.attributes.ip_address = Some("".into())),
        ),
        (
            "attributes.ipAddress",
            Box::new(|r| r.attributes.ip_address = Some("10.0.0.1/8".into())),
        ),
        (
            "attributes.ipAddress",
            Box::new(|r| r.attributes.ip_address = Some("example.com".into())),
        ),
        (
            "attributes.idempotencyKey",
            Box::new(|r| r.attributes.idempotency_key = Some(String::new())),
        ),
        (
            "attributes.idempotencyKey",
            Box::new(move |r| r.attributes.idempotency_key = Some("k".repeat(256))),
        ),
        (
            "attributes.deviceId",
            Box::new(|r| r.attributes.device_id = Some("d\nx".into())),
        ),
        (
            "attributes.userAgent",
            Box::new(|r| r.attributes.user_agent = Some("u".repeat(2049))),
        ),
        (
            "attributes.email",
            Box::new(move |r| r.attributes.email = Some(format!("{long}@x.test"))),
        ),
        (
            "attributes.phoneNumber",
            Box::new(|r| r.attributes.phone_number = Some("1".repeat(33))),
        ),
        (
            "attributes.redirectUrl",
            Box::new(|r| r.attributes.redirect_url = Some(String::new())),
        ),
        (
            "attributes.custom",
            Box::new(|r| {
                for i in 0..65 {
                    r.attributes
                        .custom
                        .insert(format!("k{i}"), CustomValue::Int(i));
                }
            }),
        ),
        (
            "attributes.custom",
            Box::new(|r| {
                r.attributes
                    .custom
                    .insert("k".repeat(65), CustomValue::Bool(true));
            }),
        ),
        (
            "attributes.custom.big",
            Box::new(|r| {
                r.attributes
                    .custom
                    .insert("big".into(), CustomValue::String("v".repeat(1025)));
            }),
        ),
        (
            "attributes.custom.nan",
            Box::new(|r| {
                r.attributes
                    .custom
                    .insert("nan".into(), CustomValue::Float(f64::NAN));
            }),
        ),
    ];
    let e = engine();
    for (i, (field, mutate)) in cases.iter().enumerate() {
        let mut r = good();
        mutate(&mut r);
        let err = e
            .track(&r)
            .expect_err(&format!("case {i} ({field}) was accepted"));
        assert_eq!(err.code(), "invalid_request");
        assert_eq!(field_of(&err), *field, "case {i}: {err}");
        assert!(
            err.to_string().contains(field),
            "the message names the field: {err}"
        );
    }
    // Nothing was stored, and the good request is still a first decision.
    assert_eq!(e.stored_actions(), 0);
    let resp = e.track(&good()).unwrap();
    assert_eq!(resp.state, State::ChallengeRequired);
    assert!(resp.token.is_some());
    assert_eq!(e.stored_actions(), 1);
}

#[test]
fn ipv6_and_limits_at_the_edge_are_accepted() {
    let e = engine();
    let mut r = good();
    r.user_id = "u".repeat(255);
    r.action = "a".repeat(64);
    r.attributes.ip_address = Some("2001:db8::42".into());
    r.attributes.user_agent = Some(String::new());
    r.attributes
        .custom
        .insert("s".into(), CustomValue::String("v".repeat(1024)));
    e.track(&r).unwrap();
}

#[test]
fn bad_json_is_classified_and_names_the_field() {
    let cases = [
        ("{\"userId\":", "invalid_json", None),
        ("not json", "invalid_json", None),
        (
            r#"{"userId":5,"action":"signIn"}"#,
            "invalid_request",
            Some("userId"),
        ),
        (r#"{"action":"signIn"}"#, "invalid_request", Some("request")),
        (
            r#"{"userId":"u","action":"signIn","attributes":{"ipAdress":"1.2.3.4"}}"#,
            "invalid_request",
            Some("attributes.ipAdress"),
        ),
        (
            r#"{"userId":"u","action":"signIn","attributes":{"custom":{"a":{"b":1}}}}"#,
            "invalid_request",
            Some("attributes.custom.a"),
        ),
        (
            r#"{"userId":"u","action":"signIn","attributes":{"custom":{"a":null}}}"#,
            "invalid_request",
            Some("attributes.custom.a"),
        ),
        (
            r#"{"userId":"u","action":"signIn","attributes":{"custom":{"a":[1,2]}}}"#,
            "invalid_request",
            Some("attributes.custom.a"),
        ),
    ];
    for (json, code, field) in cases {
        let err = TrackRequest::from_json(json).expect_err(json);
        assert_eq!(err.code(), code, "{json}: {err}");
        if let Some(f) = field {
            assert_eq!(field_of(&err), f, "{json}: {err}");
        }
    }
    let err = TrackRequest::from_json(
        r#"{"userId":"u","action":"signIn","attributes":{"ipAdress":"1.2.3.4"}}"#,
    )
    .unwrap_err();
    assert!(
        err.to_string().contains("ipAdress"),
        "a misspelt attribute is named: {err}"
    );
}
