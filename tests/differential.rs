//! The compiled rule path and Rhai's interpreter give identical decisions.
//!
//! Rules are generated from the compiled subset (comparisons of every value type against every other,
//! `&&`/`||`/`!`, `if`/`else`, `return`, string methods, `in`), and from constructs outside it; requests are
//! generated with every attribute present or absent and `custom` values of every type. Each case is decided by
//! two engines over the same rules, one compiling them and one interpreting them, and the responses must agree
//! in state, rule ids, shadow rule ids and errors (messages included).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use proptest::prelude::*;
use riskgate::{CustomValue, Engine, FakeClock, RuleSet, TrackAttributes, TrackRequest};

/// The request variables that hold a string or `()`, as rules see them.
fn string_vars() -> Vec<&'static str> {
    riskgate::names::string_variables()
}

/// The outcome constants, and `()`.
fn outcomes_and_unit() -> Vec<&'static str> {
    let mut all = riskgate::names::outcomes();
    all.push("()");
    all
}

const CUSTOM_KEYS: [&str; 5] = ["a", "b", "amount", "s", "flag"];
const STRINGS: [&str; 7] = ["", "a", "10.", "x@y.io", "crypto", "Safari", "ü"];

fn string_lit() -> BoxedStrategy<String> {
    prop::sample::select(&STRINGS[..])
        .prop_map(|s| format!("{s:?}"))
        .boxed()
}

fn literal() -> BoxedStrategy<String> {
    prop_oneof![
        (-3i64..100_005).prop_map(|i| i.to_string()),
        prop::sample::select(vec!["0", "1", "2", "10000", "100000"]).prop_map(str::to_owned),
        prop::sample::select(vec!["2.5", "0.0", "10000.0", "-1.5"]).prop_map(str::to_owned),
        string_lit(),
        prop::sample::select(vec!["true", "false", "()"]).prop_map(str::to_owned),
        prop::sample::select(riskgate::names::outcomes()).prop_map(str::to_owned),
    ]
    .boxed()
}

/// A value: a request variable, a `custom` field, a literal, or a string's length.
fn value() -> BoxedStrategy<String> {
    prop_oneof![
        prop::sample::select(string_vars()).prop_map(str::to_owned),
        prop::sample::select(&CUSTOM_KEYS[..]).prop_map(|k| format!("custom.{k}")),
        literal(),
        prop::sample::select(string_vars()).prop_map(|v| format!("{v}.len()")),
        prop::sample::select(&CUSTOM_KEYS[..]).prop_map(|k| format!("custom.{k}.len()")),
        prop::sample::select(vec![
            "velocity(\"1h\")",
            "velocity_ip(\"10m\")",
            "velocity_device(\"1d\")",
            "distinct_users_on_ip(\"1h\")",
            "distinct_users_on_device(\"1h\")",
            "distinct_devices(\"7d\")",
            // Longer than the history kept: an error on both paths.
            "velocity(\"30d\")",
            "country()",
            "city()",
            // `asn()` and `is_anonymous_ip()` need databases the tests do not have (a load error).
            "travel_speed_kmh()",
            "ua_browser()",
            "ua_os()",
            "ua_device_type()",
            "rba_score()",
        ])
        .prop_map(str::to_owned),
    ]
    .boxed()
}

fn string_value() -> BoxedStrategy<String> {
    prop_oneof![
        prop::sample::select(string_vars()).prop_map(str::to_owned),
        prop::sample::select(&CUSTOM_KEYS[..]).prop_map(|k| format!("custom.{k}")),
    ]
    .boxed()
}

/// A condition.
fn cond() -> BoxedStrategy<String> {
    let cmp = prop::sample::select(vec!["==", "!=", "<", "<=", ">", ">="]);
    let leaf = prop_oneof![
        3 => (value(), cmp, value()).prop_map(|(a, op, b)| format!("{a} {op} {b}")),
        1 => (
            string_value(),
            prop::sample::select(vec!["starts_with", "ends_with", "contains"]),
            prop_oneof![string_lit(), string_value()]
        )
            .prop_map(|(v, m, a)| format!("{v}.{m}({a})")),
        1 => (string_value(), prop::sample::select(vec!["is_empty"]))
            .prop_map(|(v, m)| format!("{v}.{m}()")),
        1 => (value(), prop::collection::vec(literal(), 0..4))
            .prop_map(|(v, items)| format!("{v} in [{}]", items.join(", "))),
        1 => prop::sample::select(vec!["true", "false"]).prop_map(str::to_owned),
        1 => prop::sample::select(vec![
            "is_new_device()",
            "is_new_ip()",
            "is_new_country()",
            "is_impossible_travel()",
            "is_bot()",
            "rba_score() > 1.0",
            "rba_score() < 0.5",
        ])
        .prop_map(str::to_owned),
        1 => (Just("blocked"), value())
            .prop_map(|(l, v)| format!("in_list({l:?}, {v})")),
    ];
    leaf.prop_recursive(3, 12, 3, |inner| {
        prop_oneof![
            inner.clone().prop_map(|c| format!("!({c})")),
            (inner.clone(), inner.clone()).prop_map(|(a, b)| format!("({a} && {b})")),
            (inner.clone(), inner).prop_map(|(a, b)| format!("({a} || {b})")),
        ]
    })
    .boxed()
}

fn outcome() -> BoxedStrategy<String> {
    prop::sample::select(outcomes_and_unit())
        .prop_map(str::to_owned)
        .boxed()
}

/// A rule body in the compiled subset.
fn subset_rule() -> BoxedStrategy<String> {
    prop_oneof![
        (cond(), outcome()).prop_map(|(c, o)| format!("if {c} {{ {o} }}")),
        (cond(), outcome(), cond(), outcome(), outcome()).prop_map(|(c1, o1, c2, o2, o3)| format!(
            "if {c1} {{ {o1} }} else if {c2} {{ {o2} }} else {{ {o3} }}"
        )),
        (cond(), outcome(), outcome())
            .prop_map(|(c, o1, o2)| format!("if {c} {{ return {o1}; }}\n{o2}")),
        outcome(),
        // Local variables: run-time values, constants, arrays, shadowing a request variable.
        (value(), prop::sample::select(vec!["==", "!=", "<", ">="]), value(), outcome())
            .prop_map(|(a, op, b, o)| format!("let x = {a}; if x {op} {b} {{ {o} }}")),
        (prop::collection::vec(literal(), 0..4), value(), outcome()).prop_map(|(items, v, o)| {
            format!("const D = [{}]; if {v} in D {{ {o} }}", items.join(", "))
        }),
        (value(), value(), outcome())
            .prop_map(|(a, b, o)| format!("let email = {a}; if email == {b} {{ {o} }} else {{ {o} }}")),
        (string_value(), string_lit(), prop::collection::vec(string_lit(), 0..3), outcome()).prop_map(
            |(v, sep, items, o)| format!(
                "let d = [{}];\nif {v} != () {{\n  let p = {v}.split({sep}).pop();\n  if p in d || p == \"\" {{ {o} }}\n}}",
                items.join(", ")
            )
        ),
    ]
    .boxed()
}

/// A rule body partly or wholly outside the subset: locals, arithmetic, other methods, non-bool conditions,
/// non-outcome results.
fn other_rule() -> BoxedStrategy<String> {
    prop_oneof![
        (value(), value(), outcome())
            .prop_map(|(a, b, o)| format!("let x = {a}; x = {b}; if x == {b} {{ {o} }}")),
        (value(), value(), outcome()).prop_map(|(a, b, o)| format!("if {a} + {b} > 3 {{ {o} }}")),
        (value(), outcome()).prop_map(|(v, o)| format!("if {v} {{ {o} }}")),
        value(),
        (string_value(), outcome())
            .prop_map(|(v, o)| format!("if {v}.split(\"@\").len() > 1 {{ {o} }}")),
        (cond(), outcome()).prop_map(|(c, o)| format!("if {c} {{ {o} }} else {{ 42 }}")),
    ]
    .boxed()
}

fn opt_string(pool: &'static [&'static str]) -> impl Strategy<Value = Option<String>> {
    prop::option::of(prop::sample::select(pool).prop_map(str::to_owned))
}

fn custom_value() -> impl Strategy<Value = CustomValue> {
    prop_oneof![
        (-3i64..100_005).prop_map(CustomValue::Int),
        prop::sample::select(vec![0.0, 2.5, 10_000.0, 100_000.5, -1.5])
            .prop_map(CustomValue::Float),
        any::<bool>().prop_map(CustomValue::Bool),
        prop::sample::select(&STRINGS[..]).prop_map(CustomValue::from),
    ]
}

fn request() -> impl Strategy<Value = TrackRequest> {
    (
        prop::sample::select(vec!["u1", "10.user", "crypto"]),
        prop::sample::select(vec!["signIn", "withdraw-funds"]),
        (
            opt_string(&[
                "10.0.0.1",
                "81.2.69.142",
                "216.160.83.56",
                "89.160.20.112",
                "::1",
            ]),
            opt_string(&["d1", "dev-x", "10."]),
            opt_string(&["", "Safari", "curl/8", "Mozilla/5.0 Safari ü"]),
            opt_string(&["a@b.io", "x@y.io", "crypto"]),
            opt_string(&["+15550100", "a"]),
            opt_string(&["bob", "x@y.io"]),
            opt_string(&["https://example.com/", "a"]),
        ),
        prop::collection::btree_map(prop::sample::select(&CUSTOM_KEYS[..]), custom_value(), 0..4),
    )
        .prop_map(
            |(user, action, (ip, dev, ua, email, phone, username, redirect), custom)| {
                TrackRequest {
                    user_id: user.into(),
                    action: action.into(),
                    attributes: TrackAttributes {
                        idempotency_key: Some("k".into()),
                        ip_address: ip,
                        device_id: dev,
                        user_agent: ua,
                        email,
                        phone_number: phone,
                        username,
                        redirect_url: redirect,
                        custom: custom.into_iter().map(|(k, v)| (k.to_owned(), v)).collect(),
                    },
                }
            },
        )
}

fn ruleset(rules: &[(String, String)], config: &str, compile: bool) -> Option<RuleSet> {
    let geoip = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/rules/geoip/GeoIP2-City-Test.mmdb"
    );
    let config = format!("{config}\n[geoip]\ncity = {geoip:?}\n");
    let mut b = RuleSet::builder()
        .compile_rules(compile)
        .config_toml(config)
        .list("blocked", "10.0.0.0/8\nx@y.io\ncrypto\n2\n");
    for (id, src) in rules {
        b = b.rule(id.clone(), src.clone());
    }
    // A generated rule Rhai refuses to compile (a type error it catches early) is refused by both paths.
    b.build().ok()
}

/// Tracks `requests` in order through an engine compiling `rules` and one interpreting them (so signals see
/// the same history), and compares every response.
fn check(rules: Vec<(String, String)>, config: &str, requests: &[TrackRequest], all_compile: bool) {
    let Some(compiled) = ruleset(&rules, config, true) else {
        assert!(!all_compile, "subset rules failed to load: {rules:?}");
        assert!(ruleset(&rules, config, false).is_none());
        return;
    };
    let interpreted = ruleset(&rules, config, false).unwrap();
    assert!(interpreted.rules().all(|r| !r.compiled));
    if all_compile {
        for r in compiled.rules() {
            assert!(r.compiled, "rule in the subset was not compiled: {rules:?}");
        }
    }
    let clock = FakeClock::default();
    let engine = |rules: &RuleSet| {
        Engine::builder()
            .ruleset(rules.clone())
            .clock(clock.clone())
            .build()
            .unwrap()
    };
    let (ec, ei) = (engine(&compiled), engine(&interpreted));
    for (i, req) in requests.iter().enumerate() {
        let mut req = req.clone();
        req.attributes.idempotency_key = Some(format!("k{i}"));
        let (a, b) = (ec.track(&req), ei.track(&req));
        clock.advance(std::time::Duration::from_secs(60));
        match (a, b) {
            (Ok(a), Ok(b)) => {
                assert_eq!(a.state, b.state, "{rules:?}\n{req:?}");
                assert_eq!(a.rule_ids, b.rule_ids, "{rules:?}\n{req:?}");
                assert_eq!(a.priority_rule_id, b.priority_rule_id);
                assert_eq!(a.shadow_rule_ids, b.shadow_rule_ids, "{rules:?}\n{req:?}");
                assert_eq!(a.errors, b.errors, "{rules:?}\n{req:?}");
            }
            (a, b) => assert_eq!(a.map(|r| r.state), b.map(|r| r.state)),
        }
    }
}

fn with_ids(bodies: Vec<(String, bool, u8)>) -> Vec<(String, String)> {
    bodies
        .into_iter()
        .enumerate()
        .map(|(i, (body, shadow, priority))| {
            let mode = if shadow { "shadow" } else { "enforce" };
            (
                format!("r{i}"),
                format!("//! priority: {priority}\n//! mode: {mode}\n{body}"),
            )
        })
        .collect()
}

fn meta() -> impl Strategy<Value = (bool, u8)> {
    (
        prop::bool::weighted(0.2),
        prop::sample::select(vec![10u8, 20, 50]),
    )
}

fn config() -> impl Strategy<Value = String> {
    (
        prop::sample::select(vec!["\"CHALLENGE_REQUIRED\"", "\"skip\"", "\"BLOCK\""]),
        prop::sample::select(vec![50_000u64, 40, 12]),
    )
        .prop_map(|(on_error, ops)| {
            format!("on_rule_error = {on_error}\n[limits]\nmax_operations = {ops}\n")
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 192, ..ProptestConfig::default() })]

    #[test]
    fn subset_rules_compile_and_agree(
        bodies in prop::collection::vec((subset_rule(), meta()), 1..4),
        requests in prop::collection::vec(request(), 1..8),
    ) {
        let rules = with_ids(bodies.into_iter().map(|(b, (s, p))| (b, s, p)).collect());
        check(rules, "", &requests, true);
    }

    #[test]
    fn mixed_rules_and_limits_agree(
        bodies in prop::collection::vec((prop_oneof![subset_rule(), other_rule()], meta()), 1..4),
        requests in prop::collection::vec(request(), 1..8),
        config in config(),
    ) {
        let rules = with_ids(bodies.into_iter().map(|(b, (s, p))| (b, s, p)).collect());
        check(rules, &config, &requests, false);
    }
}

#[test]
fn the_bundled_rules_agree_on_the_sample_log() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/rules");
    let compiled = RuleSet::builder().rules_dir(dir).unwrap().build().unwrap();
    let interpreted = RuleSet::builder()
        .rules_dir(dir)
        .unwrap()
        .compile_rules(false)
        .build()
        .unwrap();
    assert!(compiled.rules().filter(|r| r.compiled).count() >= compiled.len() / 2);
    let log = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/examples/events.jsonl"
    ))
    .unwrap();
    let mut seen = 0;
    for line in log.lines() {
        let mut v: serde_json::Value = serde_json::from_str(line).unwrap();
        let Some(obj) = v.as_object_mut().filter(|o| !o.contains_key("op")) else {
            continue;
        };
        obj.remove("timestamp");
        let Ok(req) = TrackRequest::from_json(&v.to_string()) else {
            continue;
        };
        let decide = |rules: &RuleSet| {
            Engine::builder()
                .ruleset(rules.clone())
                .clock(FakeClock::default())
                .build()
                .unwrap()
                .track(&req)
        };
        let (a, b) = (decide(&compiled), decide(&interpreted));
        let (Ok(a), Ok(b)) = (a, b) else { continue };
        assert_eq!(
            (a.state, &a.rule_ids, &a.errors),
            (b.state, &b.rule_ids, &b.errors)
        );
        seen += 1;
    }
    assert!(seen >= 5, "only {seen} requests decided");
}

/// Type confusion, an ordering between a string and a number or with `()`, is the same rule error with the same
/// line and column on both paths; equality between different types stays `false` on both.
#[test]
fn type_confusion_is_the_same_rule_error_on_both_paths() {
    let rules: Vec<(String, String)> = [
        ("gt", "if custom.amount > 5000 { REVIEW }"),
        ("le-left", "if 5000 <= custom.amount { BLOCK }"),
        ("unit", "if custom.missing < 1.5 { BLOCK }"),
        ("str-var", "if email >= 3 { BLOCK }"),
        ("eq", "if custom.amount == 7000 { BLOCK }"),
        (
            "guarded",
            "if custom.amount != () && custom.amount > 1 { ALLOW }",
        ),
        ("consts", r#"if "a" < 1 { BLOCK }"#),
    ]
    .iter()
    .map(|(id, src)| ((*id).to_owned(), (*src).to_owned()))
    .collect();
    let with = |amount: Option<CustomValue>| {
        let mut r = TrackRequest::new("u", "signIn").email("a@b.io");
        if let Some(a) = amount {
            r.attributes.custom.insert("amount".into(), a);
        }
        r
    };
    let requests = [
        with(Some("7000".into())),
        with(Some(7000.into())),
        with(Some(2.5.into())),
        with(None),
    ];
    check(rules.clone(), "on_rule_error = \"skip\"", &requests, true);
    // The errors compared above are there: every ordering rule fails on the string amount.
    let set = ruleset(&rules, "on_rule_error = \"skip\"", true).unwrap();
    let engine = Engine::builder().ruleset(set).build().unwrap();
    let resp = engine.track(&requests[0]).unwrap();
    let failed: Vec<&str> = resp.errors.iter().map(|e| e.rule_id.as_str()).collect();
    assert_eq!(
        failed,
        ["consts", "gt", "guarded", "le-left", "str-var", "unit"]
    );
    assert!(resp.rule_ids.is_empty(), "{:?}", resp.rule_ids);
}
