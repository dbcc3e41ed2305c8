//! Bad and hostile input: every bad request, JSON text or replay line gets a clear error naming the field, and
//! a refused request changes nothing in the engine: no stored action, no history, no decision counted, so a
//! later good request behaves as if the bad ones never came. Covers the library, the JSON parser and the replay
//! line handler (the `riskgate replay` binary's own line reading is in `tests/cli.rs`).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

mod common;

use common::{at, footprint};
use riskgate::replay::{Outcome, Replayer, MAX_LINE_BYTES};
use riskgate::{CustomValue, Engine, RuleSet, State, TrackError, TrackRequest};

/// Rules whose outcome depends on history, so that any trace a refused request left would show.
fn rules() -> RuleSet {
    RuleSet::from_sources([
        (
            "seen-before",
            "//! priority: 10\nif velocity(\"1h\") > 0 || velocity_ip(\"1h\") > 0 { BLOCK }",
        ),
        (
            "new-device",
            "//! priority: 20\nif device_id != () && is_new_device() { CHALLENGE_REQUIRED }",
        ),
    ])
    .unwrap()
}

fn engine() -> Engine {
    common::engine_at_t0(rules())
}

fn good() -> TrackRequest {
    common::keyed("k1")
        .device("device-1")
        .ip("203.0.113.7")
        .custom("amount", 10)
}

/// A one-rule engine on the wall clock whose first decision is a challenge.
fn challenge_engine() -> Engine {
    common::engine(&[("new-key", "//! priority: 5\nCHALLENGE_REQUIRED")])
}

/// A good request with nothing but an idempotency key.
fn plain_good() -> TrackRequest {
    common::keyed("k1")
}

fn field_of(e: &TrackError) -> &str {
    match e {
        TrackError::InvalidRequest { field, .. } => field,
        other => panic!("expected invalid_request, got {other:?}"),
    }
}

type Mutation = Box<dyn Fn(&mut TrackRequest)>;

fn bad_requests() -> Vec<(&'static str, &'static str, Mutation)> {
    let set_ip = |v: &'static str| -> Mutation {
        Box::new(move |r: &mut TrackRequest| r.attributes.ip_address = Some(v.into()))
    };
    vec![
        ("empty user id", "userId", Box::new(|r| r.user_id.clear())),
        (
            "oversized user id",
            "userId",
            Box::new(|r| r.user_id = "u".repeat(256)),
        ),
        (
            "user id with NUL",
            "userId",
            Box::new(|r| r.user_id = "user\0-1".into()),
        ),
        (
            "user id with newline",
            "userId",
            Box::new(|r| r.user_id = "user-1\n{\"forged\":1}".into()),
        ),
        (
            "user id with DEL",
            "userId",
            Box::new(|r| r.user_id = "user\u{7f}".into()),
        ),
        (
            "user id with C1 control",
            "userId",
            Box::new(|r| r.user_id = "user\u{85}".into()),
        ),
        ("empty action", "action", Box::new(|r| r.action.clear())),
        (
            "action with space",
            "action",
            Box::new(|r| r.action = "sign in".into()),
        ),
        (
            "action with unicode",
            "action",
            Box::new(|r| r.action = "sígnIn".into()),
        ),
        (
            "oversized action",
            "action",
            Box::new(|r| r.action = "a".repeat(65)),
        ),
        (
            "empty idempotency key",
            "attributes.idempotencyKey",
            Box::new(|r| r.attributes.idempotency_key = Some(String::new())),
        ),
        (
            "oversized idempotency key",
            "attributes.idempotencyKey",
            Box::new(|r| r.attributes.idempotency_key = Some("k".repeat(256))),
        ),
        (
            "idempotency key with tab",
            "attributes.idempotencyKey",
            Box::new(|r| r.attributes.idempotency_key = Some("k\t1".into())),
        ),
        (
            "ip out of range",
            "attributes.ipAddress",
            set_ip("999.1.1.1"),
        ),
        ("ip too short", "attributes.ipAddress", set_ip("1.2.3")),
        ("ip with port", "attributes.ipAddress", set_ip("1.2.3.4:80")),
        ("ip with space", "attributes.ipAddress", set_ip(" 1.2.3.4")),
        (
            "ip with prefix",
            "attributes.ipAddress",
            set_ip("10.0.0.0/8"),
        ),
        (
            "ipv6 bad hex",
            "attributes.ipAddress",
            set_ip("2001:db8::g"),
        ),
        ("ipv6 zone", "attributes.ipAddress", set_ip("fe80::1%eth0")),
        ("empty ip", "attributes.ipAddress", set_ip("")),
        (
            "hostname as ip",
            "attributes.ipAddress",
            set_ip("localhost"),
        ),
        (
            "empty device id",
            "attributes.deviceId",
            Box::new(|r| r.attributes.device_id = Some(String::new())),
        ),
        (
            "oversized user agent",
            "attributes.userAgent",
            Box::new(|r| r.attributes.user_agent = Some("M".repeat(2049))),
        ),
        (
            "redirect with CR",
            "attributes.redirectUrl",
            Box::new(|r| r.attributes.redirect_url = Some("https://a.test/\r\nX: y".into())),
        ),
        (
            "oversized email",
            "attributes.email",
            Box::new(|r| r.attributes.email = Some(format!("{}@example.com", "a".repeat(250)))),
        ),
        (
            "oversized phone",
            "attributes.phoneNumber",
            Box::new(|r| r.attributes.phone_number = Some("+1".repeat(20))),
        ),
        (
            "too many custom entries",
            "attributes.custom",
            Box::new(|r| {
                for i in 0..1000 {
                    r.attributes
                        .custom
                        .insert(format!("k{i}"), CustomValue::Int(i));
                }
            }),
        ),
        (
            "empty custom key",
            "attributes.custom",
            Box::new(|r| {
                r.attributes.custom.insert(String::new(), 1i64.into());
            }),
        ),
        (
            "oversized custom key",
            "attributes.custom",
            Box::new(|r| {
                r.attributes.custom.insert("k".repeat(65), 1i64.into());
            }),
        ),
        (
            "custom key with control",
            "attributes.custom",
            Box::new(|r| {
                r.attributes
                    .custom
                    .insert("a\u{1b}[31m".into(), 1i64.into());
            }),
        ),
        (
            "oversized custom string",
            "attributes.custom.note",
            Box::new(|r| {
                r.attributes
                    .custom
                    .insert("note".into(), "n".repeat(1025).into());
            }),
        ),
        (
            "NaN custom number",
            "attributes.custom.amount",
            Box::new(|r| {
                r.attributes.custom.insert("amount".into(), f64::NAN.into());
            }),
        ),
        (
            "infinite custom number",
            "attributes.custom.amount",
            Box::new(|r| {
                r.attributes
                    .custom
                    .insert("amount".into(), f64::INFINITY.into());
            }),
        ),
    ]
}

#[test]
fn each_bad_request_is_refused_by_field_and_changes_nothing() {
    let e = engine();
    let empty = footprint(&e);
    for (name, field, mutate) in bad_requests() {
        let mut req = good();
        mutate(&mut req);
        let err = e.track_at(&req, at(0)).unwrap_err();
        match &err {
            TrackError::InvalidRequest { field: f, reason } => {
                assert_eq!(f, field, "{name}: {err}");
                assert!(!reason.is_empty());
            }
            other => panic!("{name}: expected invalid_request, got {other:?}"),
        }
        assert_eq!(err.code(), "invalid_request");
        // A clear message: lowercase, names the field, echoes at most a shortened, escaped value.
        let msg = err.to_string();
        assert!(
            msg.starts_with(&format!("invalid `{field}`")),
            "{name}: {msg}"
        );
        assert!(msg.len() < 400, "{name}: message is {} bytes", msg.len());
        assert!(
            !msg.contains('\n') && !msg.contains('\0'),
            "{name}: {msg:?}"
        );
        assert_eq!(footprint(&e), empty, "{name} left a trace");
        assert!(e.get_action("user-1", "signIn", "k1").is_none(), "{name}");
    }
    // The good request now behaves exactly as on a fresh engine: no velocity, a new device.
    let first = e.track_at(&good(), at(0)).unwrap();
    let fresh = engine().track_at(&good(), at(0)).unwrap();
    assert_eq!(first.state, State::ChallengeRequired);
    assert_eq!(
        (&first.state, &first.rule_ids),
        (&fresh.state, &fresh.rule_ids)
    );
    assert_eq!(footprint(&e).0, 1);
}

#[test]
fn an_idempotency_conflict_changes_nothing() {
    let e = engine();
    let first = e.track_at(&good(), at(0)).unwrap();
    let after_first = footprint(&e);
    let mut other = good();
    other.attributes.ip_address = Some("198.51.100.1".into());
    let err = e.track_at(&other, at(0)).unwrap_err();
    assert_eq!(err.code(), "idempotency_conflict");
    assert_eq!(footprint(&e), after_first);
    let stored = e.get_action("user-1", "signIn", "k1").unwrap();
    assert_eq!(stored.state, first.state);
    // The history still holds one action from the first IP, none from the conflicting one.
    let mut probe = good();
    probe.attributes.idempotency_key = Some("k2".into());
    probe.user_id = "user-2".into();
    probe.attributes.ip_address = Some("198.51.100.1".into());
    assert_ne!(e.track_at(&probe, at(0)).unwrap().state, State::Block);
}

#[test]
fn hostile_json_is_refused_without_overflowing_the_stack() {
    let deep = |n: usize| {
        format!(
            r#"{{"userId":"u","action":"a","attributes":{{"custom":{{"k":{}1{}}}}}}}"#,
            "[".repeat(n),
            "]".repeat(n)
        )
    };
    let deep_objects = format!(
        r#"{{"userId":"u","action":"a","attributes":{{"custom":{}1{}}}}}"#,
        r#"{"k":"#.repeat(100_000),
        "}".repeat(100_000)
    );
    let mut huge_custom = String::from(r#"{"userId":"u","action":"a","attributes":{"custom":{"#);
    for i in 0..100_000 {
        if i > 0 {
            huge_custom.push(',');
        }
        huge_custom.push_str(&format!(r#""k{i}":{i}"#));
    }
    huge_custom.push_str("}}}");
    let cases: Vec<(&str, String, &str)> = vec![
        // Typed parsing refuses the first level that is not a scalar: the depth is never reached.
        ("deep arrays", deep(100_000), "invalid_request"),
        ("deep objects", deep_objects, "invalid_request"),
        ("nested custom value", deep(1), "invalid_request"),
        (
            "null custom value",
            r#"{"userId":"u","action":"a","attributes":{"custom":{"k":null}}}"#.into(),
            "invalid_request",
        ),
        (
            "number as user id",
            r#"{"userId":1,"action":"a"}"#.into(),
            "invalid_request",
        ),
        (
            "unknown field",
            r#"{"userId":"u","action":"a","admin":true}"#.into(),
            "invalid_request",
        ),
        (
            "unknown attribute",
            r#"{"userId":"u","action":"a","attributes":{"isAdmin":true}}"#.into(),
            "invalid_request",
        ),
        (
            // A key given twice is malformed, wherever it is (see `duplicate_keys_are_refused_everywhere`).
            "duplicate field",
            r#"{"userId":"u","userId":"v","action":"a"}"#.into(),
            "invalid_json",
        ),
        (
            "truncated",
            r#"{"userId":"u","action":"#.into(),
            "invalid_json",
        ),
        ("not an object", "[]".into(), "invalid_request"),
        ("bare string", r#""u""#.into(), "invalid_request"),
        ("empty", String::new(), "invalid_json"),
        (
            "lone surrogate",
            r#"{"userId":"\ud800","action":"a"}"#.into(),
            "invalid_json",
        ),
        (
            "trailing garbage",
            r#"{"userId":"u","action":"a"} x"#.into(),
            "invalid_json",
        ),
    ];
    for (name, json, code) in cases {
        let e = TrackRequest::from_json(&json)
            .err()
            .unwrap_or_else(|| panic!("{name}: parsed"));
        assert_eq!(e.code(), code, "{name}: {e}");
        assert!(e.to_string().len() < 400, "{name}: {e}");
    }
    // Parsed but refused by validation, with nothing stored.
    let e = engine();
    let req = TrackRequest::from_json(&huge_custom).unwrap();
    let err = e.track_at(&req, at(0)).unwrap_err();
    assert!(err.to_string().contains("100000 entries"), "{err}");
    assert_eq!(footprint(&e), (0, 0, 0));
    let req = TrackRequest::from_json(r#"{"userId":"u\u0000","action":"a"}"#).unwrap();
    assert_eq!(
        e.track_at(&req, at(0)).unwrap_err().code(),
        "invalid_request"
    );
}

fn replayer() -> Replayer {
    Replayer::new(Engine::builder().ruleset(rules())).unwrap()
}

fn error_line(json: &str) -> (u64, String, String) {
    let v: serde_json::Value = serde_json::from_str(json).unwrap();
    (
        v["line"].as_u64().unwrap(),
        v["error"]["code"].as_str().unwrap().to_owned(),
        v["error"]["message"].as_str().unwrap().to_owned(),
    )
}

#[test]
fn replay_refuses_bad_lines_and_goes_on() {
    let mut r = replayer();
    let good_line =
        br#"{"timestamp":0,"userId":"u","action":"signIn","attributes":{"idempotencyKey":"k","deviceId":"d"}}"#;
    let mut ten_mib = br#"{"userId":"u","action":"signIn","attributes":{"custom":{"k":""#.to_vec();
    ten_mib.resize(10 * 1024 * 1024, b'x');
    ten_mib.extend_from_slice(br#""}}}"#);
    let cases: Vec<(&str, Vec<u8>, &str, &str)> = vec![
        ("non-UTF-8", b"{\"userId\":\"\xff\"}".to_vec(), "invalid_json", "UTF-8"),
        ("10 MiB line", ten_mib, "invalid_request", "at most 1048576"),
        ("NUL bytes", b"\0\0\0".to_vec(), "invalid_json", "invalid JSON"),
        (
            // Replay reads a line as a JSON value first: serde_json's recursion limit applies.
            "deeply nested line",
            "[".repeat(1_000_000).into_bytes(),
            "invalid_json",
            "recursion limit exceeded",
        ),
        (
            "control character in a value",
            br#"{"userId":"u\u0007","action":"signIn"}"#.to_vec(),
            "invalid_request",
            "control character",
        ),
        (
            "raw control character",
            b"{\"userId\":\"u\x07\",\"action\":\"signIn\"}".to_vec(),
            "invalid_json",
            "control character",
        ),
        (
            "bad timestamp",
            br#"{"timestamp":"yesterday","userId":"u","action":"signIn"}"#.to_vec(),
            "invalid_request",
            "timestamp",
        ),
        (
            "negative timestamp",
            br#"{"timestamp":-1,"userId":"u","action":"signIn"}"#.to_vec(),
            "invalid_request",
            "timestamp",
        ),
        (
            "huge op name",
            format!(r#"{{"op":"{}"}}"#, "x".repeat(100_000)).into_bytes(),
            "invalid_request",
            "unknown operation",
        ),
        (
            "update to a decision state",
            br#"{"op":"updateAction","userId":"u","action":"signIn","idempotencyKey":"k","state":"ALLOW"}"#
                .to_vec(),
            "action_not_found",
            "no action",
        ),
    ];
    for (i, (name, line, code, needle)) in cases.iter().enumerate() {
        let n = i as u64 + 1;
        let out = r.line(n, line).unwrap();
        assert!(matches!(out.outcome, Outcome::Refused(_)), "{name}");
        let (l, c, m) = error_line(&out.json);
        assert_eq!((l, c.as_str()), (n, *code), "{name}: {m}");
        assert!(m.contains(needle), "{name}: {m}");
        assert!(out.json.len() < 1024, "{name}: {} bytes", out.json.len());
        assert_eq!(footprint(r.engine()), (0, 0, 0), "{name} left a trace");
    }
    let out = r.line(99, good_line).unwrap();
    assert!(matches!(out.outcome, Outcome::Tracked(_)), "{}", out.json);
    assert!(out.json.contains("CHALLENGE_REQUIRED"), "{}", out.json);
    assert!(r.line(100, b"  \t ").is_none());
    const { assert!(MAX_LINE_BYTES < 10 * 1024 * 1024) };
}

#[test]
fn duplicate_keys_are_refused_everywhere() {
    // The same message for a duplicate at any depth, from the library and from replay: never the last value.
    let cases: &[(&str, &str)] = &[
        (
            r#"{"userId":"u","action":"signIn","userId":"v"}"#,
            "invalid JSON: duplicate field `userId` at line 1 column 40",
        ),
        (
            r#"{"userId":"u","action":"signIn","attributes":{"deviceId":"a","deviceId":"b"}}"#,
            "invalid JSON: duplicate field `deviceId` in `attributes` at line 1 column 71",
        ),
        (
            r#"{"userId":"u","action":"signIn","attributes":{"custom":{"amount":1,"amount":1000000}}}"#,
            "invalid JSON: duplicate field `amount` in `attributes.custom` at line 1 column 75",
        ),
        (
            r#"{"userId":"u","action":"signIn","attributes":{"custom":{"k":1},"custom":{"k":2}}}"#,
            "invalid JSON: duplicate field `custom` in `attributes` at line 1 column 71",
        ),
    ];
    for (json, message) in cases {
        let e = TrackRequest::from_json(json).unwrap_err();
        assert_eq!(e.code(), "invalid_json", "{json}");
        assert_eq!(e.to_string(), *message, "{json}");
    }
    // A long duplicate key is shortened in the message like any user input.
    let long = "k".repeat(10_000);
    let e = TrackRequest::from_json(&format!(
        r#"{{"userId":"u","action":"a","attributes":{{"custom":{{"{long}":1,"{long}":2}}}}}}"#
    ))
    .unwrap_err();
    assert_eq!(e.code(), "invalid_json");
    assert!(e.to_string().len() < 200, "{e}");

    let mut r = replayer();
    let lines: &[(&str, &str)] = &[
        (
            r#"{"timestamp":0,"userId":"u","action":"signIn","userId":"admin"}"#,
            "invalid JSON: duplicate field `userId` at line 1 column 54",
        ),
        (
            r#"{"op":"getAction","op":"validateChallenge","token":"t"}"#,
            "invalid JSON: duplicate field `op` at line 1 column 22",
        ),
        (
            r#"{"timestamp":0,"timestamp":"2024-01-01T00:00:00Z","userId":"u","action":"signIn"}"#,
            "invalid JSON: duplicate field `timestamp` at line 1 column 26",
        ),
        (
            r#"{"userId":"u","action":"signIn","attributes":{"ipAddress":"1.2.3.4","ipAddress":"5.6.7.8"}}"#,
            "invalid JSON: duplicate field `ipAddress` in `attributes` at line 1 column 79",
        ),
        (
            r#"{"userId":"u","action":"signIn","attributes":{"custom":{"a":[{"x":1,"x":2}]}}}"#,
            "invalid JSON: duplicate field `x` in `attributes.custom.a[0]` at line 1 column 71",
        ),
        (
            r#"{"op":"updateAction","userId":"u","action":"signIn","idempotencyKey":"k","state":"CHALLENGE_FAILED","state":"CHALLENGE_SUCCEEDED"}"#,
            "invalid JSON: duplicate field `state` at line 1 column 107",
        ),
    ];
    for (i, (line, message)) in lines.iter().enumerate() {
        let n = i as u64 + 1;
        let out = r.line(n, line.as_bytes()).unwrap();
        assert!(matches!(out.outcome, Outcome::Refused(_)), "{line}");
        assert_eq!(
            error_line(&out.json),
            (n, "invalid_json".to_owned(), (*message).to_owned()),
            "{line}"
        );
        assert_eq!(footprint(r.engine()), (0, 0, 0), "{line} left a trace");
    }
    // Equal keys in different objects are not duplicates.
    let out = r
        .line(
            99,
            br#"{"timestamp":0,"userId":"u","action":"signIn","attributes":{"custom":{"userId":"x"}}}"#,
        )
        .unwrap();
    assert!(matches!(out.outcome, Outcome::Tracked(_)), "{}", out.json);
}

#[test]
fn replay_timestamps_share_one_range_in_both_forms() {
    let range =
        "is outside the range of event times, 1970-01-01T00:00:00Z to 9999-12-31T23:59:59.999Z";
    let mut r = replayer();
    let refused: &[(&str, String)] = &[
        (
            "253402300800000",
            format!("invalid `timestamp`: `253402300800000` {range}"),
        ),
        (
            "18446744073709551615",
            format!("invalid `timestamp`: `18446744073709551615` {range}"),
        ),
        ("-1", format!("invalid `timestamp`: `-1` {range}")),
        (
            r#""1969-12-31T23:59:59.999Z""#,
            format!("invalid `timestamp`: `1969-12-31T23:59:59.999Z` {range}"),
        ),
        (
            r#""1970-01-01T00:59:59+01:00""#,
            format!("invalid `timestamp`: `1970-01-01T00:59:59+01:00` {range}"),
        ),
        (
            r#""+10000-01-01T00:00:00Z""#,
            "invalid `timestamp`: `+10000-01-01T00:00:00Z` is not an RFC 3339 timestamp".to_owned(),
        ),
        (
            "1.5",
            "invalid `timestamp`: epoch milliseconds must be a non-negative whole number"
                .to_owned(),
        ),
    ];
    for (i, (ts, message)) in refused.iter().enumerate() {
        let n = i as u64 + 1;
        let line = format!(r#"{{"timestamp":{ts},"userId":"u","action":"signIn"}}"#);
        let out = r.line(n, line.as_bytes()).unwrap();
        assert_eq!(
            error_line(&out.json),
            (n, "invalid_request".to_owned(), message.clone()),
            "{ts}"
        );
        assert_eq!(footprint(r.engine()), (0, 0, 0), "{ts} left a trace");
    }
    // Inside the range, both forms are accepted up to the last millisecond of 9999, and mean the same time.
    for (key, ts, created) in [
        (
            "k1",
            r#""2600-01-01T00:00:00Z""#,
            "2600-01-01T00:00:00.000Z",
        ),
        ("k2", "32503680000000", "3000-01-01T00:00:00.000Z"),
        (
            "k3",
            r#""9999-12-31T23:59:59.999Z""#,
            "9999-12-31T23:59:59.999Z",
        ),
        ("k4", "253402300799999", "9999-12-31T23:59:59.999Z"),
        (
            "k5",
            r#""1970-01-01T00:00:00Z""#,
            "1970-01-01T00:00:00.000Z",
        ),
        ("k6", "0", "1970-01-01T00:00:00.000Z"),
    ] {
        let line = format!(
            r#"{{"timestamp":{ts},"userId":"u","action":"signIn","attributes":{{"idempotencyKey":"{key}"}}}}"#
        );
        let out = r.line(1, line.as_bytes()).unwrap();
        assert!(
            matches!(out.outcome, Outcome::Tracked(_)),
            "{ts}: {}",
            out.json
        );
        // The action is stored at that time and does not expire at once: a lookup at the same time finds it.
        let get = format!(
            r#"{{"timestamp":{ts},"op":"getAction","userId":"u","action":"signIn","idempotencyKey":"{key}"}}"#
        );
        let out = r.line(2, get.as_bytes()).unwrap();
        assert!(
            out.json.contains(&format!(r#""createdAt":"{created}""#)),
            "{ts}: {}",
            out.json
        );
    }
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
    let e = challenge_engine();
    for (i, (field, mutate)) in cases.iter().enumerate() {
        let mut r = plain_good();
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
    let resp = e.track(&plain_good()).unwrap();
    assert_eq!(resp.state, State::ChallengeRequired);
    assert!(resp.token.is_some());
    assert_eq!(e.stored_actions(), 1);
}

#[test]
fn ipv6_and_limits_at_the_edge_are_accepted() {
    let e = challenge_engine();
    let mut r = plain_good();
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
