//! Properties of decisions, checked on generated rulesets, histories and requests:
//! - decisions are deterministic for the same ruleset, history and time;
//! - the state is the outcome of the strongest matching enforce rule, or the default;
//! - adding a shadow rule never changes a state, even one that tries to write into the request;
//! - a repeat returns what `get_action` returns;
//! - any JSON either parses and decides, or is refused with an error: never a panic.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use proptest::prelude::*;
use riskgate::{Engine, FakeClock, RuleSet, State, TrackRequest, TrackResponse};
use std::time::{Duration, SystemTime};

fn at(offset_s: u64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(1_709_251_200 + offset_s)
}

const OUTCOMES: [State; 4] = [
    State::Allow,
    State::ChallengeRequired,
    State::Review,
    State::Block,
];

fn severity(s: State) -> u8 {
    match s {
        State::Block => 3,
        State::Review => 2,
        State::ChallengeRequired => 1,
        _ => 0,
    }
}

/// A generated rule: matches when `custom.n > threshold`; then returns `outcome`, or fails (which counts as
/// `on_rule_error`, CHALLENGE_REQUIRED by default).
#[derive(Debug, Clone)]
struct GenRule {
    priority: u8,
    shadow: bool,
    threshold: i64,
    outcome: State,
    fails: bool,
}

impl GenRule {
    fn source(&self) -> String {
        let body = if self.fails {
            "throw \"generated failure\"".to_owned()
        } else {
            self.outcome.as_str().to_owned()
        };
        format!(
            "//! priority: {}\n//! mode: {}\nif custom.n > {} {{ {body} }}",
            self.priority,
            if self.shadow { "shadow" } else { "enforce" },
            self.threshold
        )
    }

    /// What the rule counts as for request value `n`.
    fn result(&self, n: i64) -> Option<State> {
        (n > self.threshold).then_some(if self.fails {
            State::ChallengeRequired
        } else {
            self.outcome
        })
    }
}

fn gen_rule() -> impl Strategy<Value = GenRule> {
    (
        0u8..4,
        prop::bool::weighted(0.25),
        0i64..10,
        prop::sample::select(OUTCOMES.to_vec()),
        prop::bool::weighted(0.15),
    )
        .prop_map(|(priority, shadow, threshold, outcome, fails)| GenRule {
            priority,
            shadow,
            threshold,
            outcome,
            fails,
        })
}

fn ruleset(rules: &[GenRule], extra: Option<(&str, String)>) -> RuleSet {
    let mut b = RuleSet::builder();
    for (i, r) in rules.iter().enumerate() {
        b = b.rule(format!("r{i:02}"), r.source());
    }
    if let Some((id, src)) = extra {
        b = b.rule(id, src);
    }
    b.build().unwrap()
}

fn engine(rules: RuleSet) -> Engine {
    Engine::builder()
        .ruleset(rules)
        .clock(FakeClock::at(at(0)))
        .build()
        .unwrap()
}

fn request(user: u8, n: i64, key: &str) -> TrackRequest {
    let mut r = TrackRequest::new(format!("user-{user}"), "withdraw-funds");
    r.attributes.idempotency_key = Some(key.to_owned());
    r.attributes.custom.insert("n".into(), n.into());
    r
}

/// The state and enforce rule ids the contract promises for value `n`.
fn expected(rules: &[GenRule], n: i64) -> (State, Vec<String>) {
    let mut matching: Vec<(u8, State, String)> = rules
        .iter()
        .enumerate()
        .filter(|(_, r)| !r.shadow)
        .filter_map(|(i, r)| r.result(n).map(|s| (r.priority, s, format!("r{i:02}"))))
        .collect();
    matching.sort_by(|a, b| {
        a.0.cmp(&b.0)
            .then(severity(b.1).cmp(&severity(a.1)))
            .then(a.2.cmp(&b.2))
    });
    let state = matching.first().map_or(State::Allow, |m| m.1);
    (state, matching.into_iter().map(|m| m.2).collect())
}

/// Every write in [`WRITES`], each way: refused at load (naming the writer), or without effect on a later rule.
#[test]
fn every_write_to_the_request_is_refused_or_changes_nothing() {
    let mut refused = 0;
    for write in WRITES {
        for compile in [true, false] {
            let built = RuleSet::builder()
                .compile_rules(compile)
                .config_toml("[limits]\ntime_limit = \"10s\"\n")
                .rule("a-writer", format!("//! mode: shadow\n{write}"))
                .rule("zz-reader", READER)
                .build();
            let rules = match built {
                Ok(r) => r,
                Err(e) => {
                    assert!(e.diagnostics().iter().all(|d| d.file == "a-writer"), "{e}");
                    refused += 1;
                    continue;
                }
            };
            let mut req = request(0, 5, "k");
            req.attributes.custom.insert("s".into(), "abc".into());
            req.attributes.email = Some("a@example.com".into());
            let resp = engine(rules).track_at(&req, at(0)).unwrap();
            assert_eq!(resp.state, State::Allow, "{write}: {resp:?}");
            assert!(resp.rule_ids.is_empty(), "{write}: {resp:?}");
        }
    }
    // Assignments, and script functions or `call` bound to a request variable, are load errors (18 of the
    // writes, each way); the rest fail at run time or change a copy.
    assert_eq!(refused, 2 * 18);
}

/// Matches (ALLOW, the strongest outcome) only if a rule before it changed what it sees of the request.
const READER: &str = r#"//! priority: 0
if "t" in custom || custom["t"] == true || custom.len() != 2 || custom.s != "abc" || type_of(custom.n) != "i64"
    || user_id != "user-0" || email != "a@example.com" || action != "withdraw-funds" { ALLOW }"#;

/// Ways a rule might try to change the request for the rules after it.
const WRITES: &[&str] = &[
    "custom.t = true; ()",
    r#"custom["t"] = true; ()"#,
    "custom.n = 0; ()",
    "custom.n += 100; ()",
    r#"custom.s += "x"; ()"#,
    "custom.s[0] = 'x'; ()",
    "custom += #{t: true}; ()",
    r#"custom.remove("n"); ()"#,
    r#"custom.remove("s"); ()"#,
    "custom.clear(); ()",
    "custom.mixin(#{t: true}); ()",
    "custom.fill_with(#{t: true}); ()",
    r#"custom.s.make_upper(); ()"#,
    r#"custom.s.clear(); ()"#,
    r#"custom.s.truncate(1); ()"#,
    r#"custom.s.pad(10, "x"); ()"#,
    r#"custom.s.replace("a", "b"); ()"#,
    r#"custom.s.trim(); ()"#,
    r#"user_id = "admin"; ()"#,
    r#"user_id += "x"; ()"#,
    "user_id.clear(); ()",
    "user_id.make_upper(); ()",
    "user_id.truncate(1); ()",
    r#"user_id.replace("user", "root"); ()"#,
    r#"user_id.pad(20, "x"); ()"#,
    "user_id.crop(1); ()",
    "email.remove('a'); ()",
    "email[0] = 'b'; ()",
    r#"action = "signIn"; ()"#,
    "clear(custom); ()",
    "mixin(custom, #{t: true}); ()",
    r#"remove(custom, "n"); ()"#,
    "make_upper(user_id); ()",
    "fn f() { this.t = true } custom.f(); ()",
    "fn f() { this.clear() } user_id.f(); ()",
    r#"fn f() { this += "x" } custom.s.f(); ()"#,
    r#"fn f() { custom.t = true } f!(); ()"#,
    "fn f(m) { m.t = true; m } f(custom); ()",
    r#"fn f() { this.t = true } custom.call(Fn("f")); ()"#,
    r#"fn f(m) { m.t = true } Fn("f").call(custom); ()"#,
    "custom.call(|| this.t = true); ()",
    "let c = custom; c.t = true; c.n = 0; ()",
    "let custom = #{t: true}; ()",
    "let u = user_id; u.clear(); u += \"x\"; ()",
    "for k in custom.keys() { custom[k] = 0; } ()",
    "custom.values().clear(); ()",
];

fn same_decision(a: &TrackResponse, b: &TrackResponse) -> bool {
    a.state == b.state
        && a.rule_ids == b.rule_ids
        && a.priority_rule_id == b.priority_rule_id
        && a.shadow_rule_ids == b.shadow_rule_ids
        && a.errors == b.errors
}

/// One step of a generated history: who, which value, which device and IP, how many seconds later.
#[derive(Debug, Clone)]
struct Step {
    user: u8,
    n: i64,
    device: u8,
    ip: u8,
    after_s: u64,
    repeat: bool,
}

fn gen_step() -> impl Strategy<Value = Step> {
    (
        0u8..3,
        0i64..10,
        0u8..3,
        0u8..3,
        0u64..900,
        prop::bool::weighted(0.2),
    )
        .prop_map(|(user, n, device, ip, after_s, repeat)| Step {
            user,
            n,
            device,
            ip,
            after_s,
            repeat,
        })
}

/// Rules that read the history, so determinism covers signals too.
const HISTORY_RULES: &[(&str, &str)] = &[
    (
        "velocity",
        "//! priority: 5\nif velocity(\"10m\") >= 2 { REVIEW }",
    ),
    (
        "new-device",
        "//! priority: 6\nif is_new_device() { CHALLENGE_REQUIRED }",
    ),
    (
        "ip-crowd",
        "//! priority: 4\nif distinct_users_on_ip(\"1h\") > 1 { BLOCK }",
    ),
    (
        "devices",
        "//! mode: shadow\nif distinct_devices(\"1h\") > 1 { BLOCK }",
    ),
];

fn run_history(rules: &[GenRule], steps: &[Step]) -> Vec<TrackResponse> {
    let mut b = RuleSet::builder();
    for (i, r) in rules.iter().enumerate() {
        b = b.rule(format!("r{i:02}"), r.source());
    }
    for (id, src) in HISTORY_RULES {
        b = b.rule(*id, *src);
    }
    let e = engine(b.build().unwrap());
    let mut t = 0;
    let mut out = Vec::new();
    for (i, s) in steps.iter().enumerate() {
        t += s.after_s;
        let key = if s.repeat && i > 0 {
            format!("k{}", i - 1)
        } else {
            format!("k{i}")
        };
        let mut req = request(s.user, s.n, &key);
        req.attributes.device_id = Some(format!("device-{}", s.device));
        req.attributes.ip_address = Some(format!("203.0.113.{}", s.ip));
        // A repeat with other attributes is an idempotency conflict: part of the history too.
        match e.track_at(&req, at(t)) {
            Ok(resp) => out.push(resp),
            Err(err) => assert_eq!(err.code(), "idempotency_conflict"),
        }
    }
    out
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn decisions_are_deterministic(
        rules in prop::collection::vec(gen_rule(), 0..5),
        steps in prop::collection::vec(gen_step(), 1..25),
    ) {
        let a = run_history(&rules, &steps);
        let b = run_history(&rules, &steps);
        prop_assert_eq!(a.len(), b.len());
        for (x, y) in a.iter().zip(&b) {
            prop_assert!(same_decision(x, y), "{:?} vs {:?}", x, y);
            prop_assert_eq!(&x.idempotency_key, &y.idempotency_key);
        }
    }

    #[test]
    fn the_strongest_matching_enforce_rule_decides(
        rules in prop::collection::vec(gen_rule(), 0..8),
        values in prop::collection::vec(0i64..12, 1..6),
    ) {
        let e = engine(ruleset(&rules, None));
        for (i, n) in values.iter().enumerate() {
            let resp = e.track_at(&request(0, *n, &format!("k{i}")), at(0)).unwrap();
            let (state, ids) = expected(&rules, *n);
            prop_assert_eq!(resp.state, state, "n = {}: {:?}", n, resp);
            let got: Vec<String> = resp.rule_ids.iter().map(|r| r.to_string()).collect();
            prop_assert_eq!(&got, &ids);
            prop_assert_eq!(
                resp.priority_rule_id.map(|r| r.to_string()),
                ids.first().cloned()
            );
            let failing = rules.iter().filter(|r| r.fails && *n > r.threshold).count();
            prop_assert_eq!(resp.errors.len(), failing);
        }
    }

    #[test]
    fn a_shadow_rule_never_changes_a_state(
        rules in prop::collection::vec(gen_rule(), 0..6),
        shadow in gen_rule(),
        values in prop::collection::vec(0i64..12, 1..6),
    ) {
        let shadow = GenRule { shadow: true, ..shadow };
        let without = engine(ruleset(&rules, None));
        let with = engine(ruleset(&rules, Some(("zz-shadow", shadow.source()))));
        for (i, n) in values.iter().enumerate() {
            let key = format!("k{i}");
            let a = without.track_at(&request(0, *n, &key), at(0)).unwrap();
            let b = with.track_at(&request(0, *n, &key), at(0)).unwrap();
            prop_assert_eq!(a.state, b.state);
            prop_assert_eq!(&a.rule_ids, &b.rule_ids);
            prop_assert_eq!(
                b.shadow_rule_ids.iter().any(|r| r == "zz-shadow"),
                shadow.result(*n).is_some()
            );
        }
    }

    /// A shadow rule that tries to write into the request (run before every other rule) either fails to load,
    /// naming itself, or changes nothing: the same decision with it as without it, compiled or interpreted.
    #[test]
    fn a_shadow_rule_that_writes_to_the_request_never_changes_a_decision(
        rules in prop::collection::vec(gen_rule(), 0..5),
        write in prop::sample::select(WRITES.to_vec()),
        values in prop::collection::vec(0i64..12, 1..4),
        compile in prop::bool::ANY,
    ) {
        let build = |writer: Option<&str>| {
            // A time limit no rule here reaches even on a loaded machine: a timed-out rule would differ.
            let mut b = RuleSet::builder()
                .compile_rules(compile)
                .config_toml("[limits]\ntime_limit = \"10s\"\n");
            for (i, r) in rules.iter().enumerate() {
                b = b.rule(format!("r{i:02}"), r.source());
            }
            b = b.rule("zz-reader", READER);
            if let Some(w) = writer {
                b = b.rule("a-writer", format!("//! mode: shadow\n{w}"));
            }
            b.build()
        };
        let with = match build(Some(write)) {
            Ok(r) => engine(r),
            Err(e) => {
                for d in e.diagnostics() {
                    prop_assert_eq!(&d.file, "a-writer", "{}", e);
                }
                return Ok(());
            }
        };
        let without = engine(build(None).unwrap());
        for (i, n) in values.iter().enumerate() {
            let key = format!("k{i}");
            let mut req = request(0, *n, &key);
            req.attributes.custom.insert("s".into(), "abc".into());
            req.attributes.email = Some("a@example.com".into());
            let a = without.track_at(&req, at(0)).unwrap();
            let b = with.track_at(&req, at(0)).unwrap();
            prop_assert_eq!(a.state, b.state, "{}: {:?} vs {:?}", write, a, b);
            prop_assert_eq!(&a.rule_ids, &b.rule_ids, "{}", write);
            prop_assert!(!a.rule_ids.iter().any(|r| r == "zz-reader"), "{}: {:?}", write, a);
        }
    }

    #[test]
    fn a_repeat_returns_what_get_action_returns(
        rules in prop::collection::vec(gen_rule(), 0..6),
        n in 0i64..12,
        settle in prop::option::of(prop::bool::ANY),
    ) {
        let e = engine(ruleset(&rules, None));
        let req = request(1, n, "k");
        let first = e.track_at(&req, at(0)).unwrap();
        if let Some(ok) = settle {
            let to = match (first.state, ok) {
                (State::ChallengeRequired, true) => Some(State::ChallengeSucceeded),
                (State::ChallengeRequired, false) => Some(State::ChallengeFailed),
                (State::Review, true) => Some(State::ReviewSucceeded),
                (State::Review, false) => Some(State::ReviewFailed),
                _ => None,
            };
            if let Some(to) = to {
                e.update_action("user-1", "withdraw-funds", "k", to).unwrap();
            }
        }
        let decisions = e.decisions();
        let repeat = e.track_at(&req, at(1)).unwrap();
        let stored = e.get_action("user-1", "withdraw-funds", "k").unwrap();
        prop_assert_eq!(repeat.state, stored.state);
        prop_assert_eq!(&repeat.rule_ids, &stored.rule_ids);
        prop_assert_eq!(&repeat.priority_rule_id, &stored.priority_rule_id);
        prop_assert_eq!(&repeat.idempotency_key, &stored.idempotency_key);
        prop_assert_eq!(repeat.token, first.token);
        prop_assert_eq!(stored.outcome, first.state);
        prop_assert_eq!(e.decisions(), decisions, "a repeat evaluated the rules");
    }
}

/// JSON values shaped like track requests, with every kind of wrong value mixed in.
fn gen_json() -> impl Strategy<Value = serde_json::Value> {
    use serde_json::{json, Value};
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_map(|f| json!(f)),
        ".{0,12}".prop_map(Value::from),
        "[a-zA-Z0-9_-]{1,8}".prop_map(Value::from),
        prop::sample::select(vec![
            "203.0.113.7",
            "2001:db8::1",
            "999.1.1.1",
            "",
            " ",
            "\u{0}",
            "user-1",
            "signIn",
        ])
        .prop_map(Value::from),
    ];
    let value = leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..3).prop_map(Value::from),
            prop::collection::btree_map("[a-z]{1,3}", inner, 0..3)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    });
    let attr_keys = prop::sample::subsequence(
        vec![
            "idempotencyKey",
            "deviceId",
            "ipAddress",
            "userAgent",
            "redirectUrl",
            "email",
            "phoneNumber",
            "username",
            "custom",
            "bogus",
        ],
        0..5,
    );
    let custom = prop::collection::btree_map(".{0,4}", value.clone(), 0..4)
        .prop_map(|m| Value::Object(m.into_iter().collect()));
    (
        prop::sample::subsequence(vec!["userId", "action", "attributes", "extra"], 0..=4),
        attr_keys,
        prop::collection::vec(value, 16),
        custom,
    )
        .prop_map(|(top, attrs, values, custom)| {
            let mut it = values.into_iter();
            let mut a = serde_json::Map::new();
            for k in attrs {
                let v = if k == "custom" {
                    custom.clone()
                } else {
                    it.next().unwrap_or(Value::Null)
                };
                a.insert(k.to_owned(), v);
            }
            let mut o = serde_json::Map::new();
            for k in top {
                let v = if k == "attributes" {
                    Value::Object(a.clone())
                } else {
                    it.next().unwrap_or(Value::Null)
                };
                o.insert(k.to_owned(), v);
            }
            Value::Object(o)
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn any_json_parses_and_decides_or_is_refused(value in gen_json(), junk in ".{0,40}") {
        let e = engine(RuleSet::from_sources([
            ("amount", "if custom.amount > 10 { REVIEW }"),
            ("device", "if device_id == () { CHALLENGE_REQUIRED }"),
        ]).unwrap());
        for text in [value.to_string(), junk] {
            match TrackRequest::from_json(&text) {
                Ok(req) => {
                    let before = (e.stored_actions(), e.decisions());
                    match e.track_at(&req, at(0)) {
                        Ok(resp) => prop_assert!(resp.state.is_decision()),
                        Err(err) => {
                            prop_assert!(
                                matches!(err.code(), "invalid_request" | "idempotency_conflict"),
                                "{}", err
                            );
                            prop_assert_eq!((e.stored_actions(), e.decisions()), before);
                        }
                    }
                }
                Err(err) => {
                    prop_assert!(matches!(err.code(), "invalid_json" | "invalid_request"), "{}", err);
                    prop_assert!(!err.to_string().is_empty());
                }
            }
        }
    }
}
