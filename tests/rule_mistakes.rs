//! Ordinary rule mistakes are caught before they decide anything: one row per mistake, each with the exact
//! diagnostic, refusal or rule error it gets. Load-time rows are checked through `RuleSet::builder`; run-time
//! rows on both the compiled and the interpreted path; the command line's `--strict` and `--format json` in
//! `check_*` below.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use proptest::prelude::*;
use riskgate::{Engine, RuleSet, Severity, State, TrackError, TrackRequest};

/// A ruleset of `rules` with `config` as `riskgate.toml` and `lists`.
fn load(
    rules: &[(&str, &str)],
    config: &str,
    lists: &[(&str, &str)],
    compile: bool,
) -> Result<RuleSet, riskgate::LoadError> {
    let mut b = RuleSet::builder()
        .compile_rules(compile)
        .config_toml(config);
    for (name, text) in lists {
        b = b.list(*name, *text);
    }
    for (id, src) in rules {
        b = b.rule(*id, *src);
    }
    b.build()
}

/// One load-time mistake: the rules, config and lists, and every diagnostic the load must give, in order, as
/// `file:line:col: message` with its code and suggestion.
struct LoadRow {
    mistake: &'static str,
    rules: &'static [(&'static str, &'static str)],
    config: &'static str,
    lists: &'static [(&'static str, &'static str)],
    want: &'static [(&'static str, &'static str, Option<&'static str>)],
}

const SCHEMA: &str =
    "[custom]\namount = \"number\"\ncountry = { type = \"string\", required = true }\n";

const LOAD_ROWS: &[LoadRow] = &[
    LoadRow {
        mistake: "a misspelt method",
        rules: &[("r", r#"if email.ends_wiht("x") { BLOCK }"#)],
        config: "",
        lists: &[],
        want: &[(
            "r:1:10: unknown method `ends_wiht`: did you mean `ends_with`?",
            "unknown_method",
            Some("ends_with"),
        )],
    },
    LoadRow {
        mistake: "a method with the wrong number of arguments",
        rules: &[("r", r#"if email.ends_with("x", 3) { BLOCK }"#)],
        config: "",
        lists: &[],
        want: &[(
            "r:1:10: `ends_with` is called with 2 arguments, but takes 1",
            "wrong_arity",
            None,
        )],
    },
    LoadRow {
        mistake: "a free function called as a method",
        rules: &[("r", "if email.is_new_device() { BLOCK }")],
        config: "",
        lists: &[],
        want: &[(
            "r:1:10: `is_new_device` takes no value before the dot: call it as `is_new_device()`",
            "not_a_method",
            None,
        )],
    },
    LoadRow {
        mistake: "a misspelt method deep in a chain",
        rules: &[("r", r#"if email.to_lower().trimm() == "x.io" { BLOCK }"#)],
        config: "",
        lists: &[],
        want: &[(
            "r:1:21: unknown method `trimm`: did you mean `trim`?",
            "unknown_method",
            Some("trim"),
        )],
    },
    LoadRow {
        mistake: "metadata after the first line of code",
        rules: &[("r", "//! priority: 10\nBLOCK\n//! priority: 3\n")],
        config: "",
        lists: &[],
        want: &[(
            "r:3:1: rule metadata after the first line of code is ignored: move this `//!` line to the top of the file",
            "metadata_after_code",
            None,
        )],
    },
    LoadRow {
        mistake: "an outcome written as a string",
        rules: &[("r", r#"if custom.amount == 1 { "REVIEW" }"#)],
        config: "",
        lists: &[],
        want: &[(
            r#"r:1:25: the rule returns the string "REVIEW", not an outcome: write `REVIEW` without quotes"#,
            "literal_return",
            Some("REVIEW"),
        )],
    },
    LoadRow {
        mistake: "an outcome returned as a lowercase string",
        rules: &[("r", "if email == () { return \"block\"; }\n()")],
        config: "",
        lists: &[],
        want: &[(
            r#"r:1:25: the rule returns the string "block", not an outcome: write `BLOCK` without quotes"#,
            "literal_return",
            Some("BLOCK"),
        )],
    },
    LoadRow {
        mistake: "a number where an outcome belongs",
        rules: &[("r", "if email == () { BLOCK } else { 0 }")],
        config: "",
        lists: &[],
        want: &[(
            "r:1:33: the rule returns `0`, which is not an outcome: return one of ALLOW, CHALLENGE_REQUIRED, REVIEW, BLOCK when it matches, or `()` when it does not",
            "literal_return",
            None,
        )],
    },
    LoadRow {
        mistake: "a misspelt request variable",
        rules: &[("r", "if emial == () { BLOCK }")],
        config: "",
        lists: &[],
        want: &[(
            "r:1:4: unknown variable `emial`: did you mean `email`?",
            "unknown_variable",
            Some("email"),
        )],
    },
    LoadRow {
        mistake: "a misspelt outcome",
        rules: &[("r", "if email == () { REVEIW }")],
        config: "",
        lists: &[],
        want: &[(
            "r:1:18: unknown variable `REVEIW`: did you mean `REVIEW`?",
            "unknown_variable",
            Some("REVIEW"),
        )],
    },
    LoadRow {
        mistake: "an unclosed block",
        rules: &[("r", "if email == () {\n  if user_id == \"}\" { BLOCK }\n")],
        config: "",
        lists: &[],
        want: &[(
            "r:1:16: unclosed `{`: expected `}` to terminate this block",
            "unclosed",
            None,
        )],
    },
    LoadRow {
        mistake: "an unclosed parenthesis",
        rules: &[("r", "if (email == () { BLOCK }\n")],
        config: "",
        lists: &[],
        want: &[(
            "r:1:4: unclosed `(`: expected `)` for a matching ( in this expression",
            "unclosed",
            None,
        )],
    },
    LoadRow {
        mistake: "a `custom` key the schema does not declare",
        rules: &[(
            "r",
            "if custom.amuont > 5000 && custom.country == \"NZ\" { REVIEW }",
        )],
        config: SCHEMA,
        lists: &[],
        want: &[(
            "r:1:11: unknown custom attribute `amuont`: did you mean `amount`? (`[custom]` declares `amount`, `country`)",
            "unknown_custom_key",
            Some("amount"),
        )],
    },
    LoadRow {
        mistake: "an undeclared `custom` key read by index",
        rules: &[("r", r#"if custom["colour"] == "red" { REVIEW }"#)],
        config: SCHEMA,
        lists: &[],
        want: &[(
            "r:1:11: unknown custom attribute `colour`: `[custom]` in riskgate.toml declares `amount`, `country`",
            "unknown_custom_key",
            None,
        )],
    },
    LoadRow {
        mistake: "an unknown type in the schema",
        rules: &[("r", "()")],
        config: "[custom]\namount = \"int\"\n",
        lists: &[],
        want: &[(
            "riskgate.toml:2:1: `[custom] amount`: unknown type `int`: expected \"string\", \"number\" or \"bool\", or `{ type = \"number\", required = true }`",
            "invalid",
            None,
        )],
    },
    LoadRow {
        mistake: "a bad list entry (the rule calling the list is not reported too)",
        rules: &[("r", r#"if in_list("blocked", ip_address) { BLOCK }"#)],
        config: "",
        lists: &[("blocked", "10.0.0.0/33\n")],
        want: &[(
            "lists/blocked.txt:1:1: invalid CIDR range `10.0.0.0/33`: the prefix length must be 0-32",
            "invalid",
            None,
        )],
    },
    LoadRow {
        mistake: "a missing GeoIP database (the rule needing it is not reported too)",
        rules: &[("r", r#"if country() == "NZ" { BLOCK }"#)],
        config: "[geoip]\ncity = \"no-such.mmdb\"\n",
        lists: &[],
        want: &[(
            "riskgate.toml:2:1: `[geoip] city`: cannot open `no-such.mmdb`: No such file or directory (os error 2)",
            "invalid",
            None,
        )],
    },
    LoadRow {
        mistake: "a signal with the wrong number of arguments (reported once)",
        rules: &[("r", "if velocity() > 3 { BLOCK }")],
        config: "",
        lists: &[],
        want: &[(
            r#"r:1:4: `velocity` takes one argument, a window like "10m" or "1h""#,
            "invalid",
            None,
        )],
    },
];

#[test]
fn each_load_time_mistake_gets_its_diagnostic() {
    for row in LOAD_ROWS {
        for compile in [true, false] {
            let e = load(row.rules, row.config, row.lists, compile)
                .map(|_| ())
                .expect_err(row.mistake);
            let got: Vec<(String, &str, Option<&str>)> = e
                .diagnostics()
                .iter()
                .map(|d| (d.to_string(), d.code, d.suggestion.as_deref()))
                .collect();
            let want: Vec<(String, &str, Option<&str>)> = row
                .want
                .iter()
                .map(|(m, c, s)| ((*m).to_owned(), *c, *s))
                .collect();
            assert_eq!(got, want, "{}", row.mistake);
            assert!(e
                .diagnostics()
                .iter()
                .all(|d| d.severity == Severity::Error));
        }
    }
}

/// Action codes named once and nowhere else: warnings, and the set still loads.
#[test]
fn an_action_code_nothing_else_names_is_a_warning() {
    for (mistake, rules, config, want) in [
        (
            "a misspelt code beside the right one",
            &[
                ("a", "//! actions: payment\nREVIEW"),
                ("b", "//! actions: withdraw-funds, paymnet\nBLOCK"),
                ("c", "//! actions: payment\nBLOCK"),
            ][..],
            "",
            &["b:1:30: warning: action code `paymnet` is named only here: no other rule, `[actions]` table or known action uses it (did you mean `payment`?)"][..],
        ),
        (
            "a code in the wrong case",
            &[("a", "//! actions: signin\nREVIEW")][..],
            "",
            &["a:1:14: warning: action code `signin` is named only here: no other rule, `[actions]` table or known action uses it (did you mean `signIn`?)"][..],
        ),
        (
            "an `[actions.<code>]` table no rule uses",
            &[("a", "//! actions: payment\nREVIEW"), ("b", "if action == \"payment\" { BLOCK }")][..],
            "[actions.paymnet]\ndefault_outcome = \"REVIEW\"\n",
            &["riskgate.toml:1:1: warning: action code `paymnet` is named only here: no other rule, `[actions]` table or known action uses it (did you mean `payment`?)"][..],
        ),
        (
            "a code used by a rule comparing `action` is not a mistake",
            &[("a", "//! actions: refund\nREVIEW"), ("b", r#"if action in ["refund", "x"] { BLOCK }"#)][..],
            "",
            &[][..],
        ),
    ] {
        let set = load(rules, config, &[], true).expect(mistake);
        let got: Vec<String> = set.warnings().iter().map(ToString::to_string).collect();
        assert_eq!(got, want, "{mistake}");
        for w in set.warnings() {
            assert_eq!((w.severity, w.code), (Severity::Warning, "unknown_action"));
        }
    }
}

/// One run-time mistake: the rule, the request's `custom` values, and the one rule error (or none) it gets.
struct RunRow {
    mistake: &'static str,
    rule: &'static str,
    custom: &'static [(&'static str, Custom)],
    want: Result<Option<State>, &'static str>,
}

#[derive(Clone, Copy)]
enum Custom {
    S(&'static str),
    N(i64),
}

const RUN_ROWS: &[RunRow] = &[
    RunRow {
        mistake: "a number sent as a string, against a threshold",
        rule: "if custom.amount > 5000 { REVIEW }",
        custom: &[("amount", Custom::S("7000"))],
        want: Err("1:18: cannot compare a string with a number using `>`: convert one side first (`parse_float(s)`, `parse_int(s)` or `n.to_string()`)"),
    },
    RunRow {
        mistake: "a threshold on the left",
        rule: "if 5000 <= custom.amount { REVIEW }",
        custom: &[("amount", Custom::S("7000"))],
        want: Err("1:9: cannot compare a number with a string using `<=`: convert one side first (`parse_float(s)`, `parse_int(s)` or `n.to_string()`)"),
    },
    RunRow {
        mistake: "a missing attribute against a threshold",
        rule: "if custom.amount > 5000 { REVIEW }",
        custom: &[],
        want: Err("1:18: cannot compare `()` with a number using `>`: a missing value is `()`: test it with `!= ()` first"),
    },
    RunRow {
        mistake: "arithmetic on a number sent as a string",
        rule: "if custom.amount - 100 > 5000 { REVIEW }",
        custom: &[("amount", Custom::S("7000"))],
        want: Err("1:18: cannot apply `-` to a string and a number: convert one side first (`parse_float(s)`, `parse_int(s)` or `n.to_string()`)"),
    },
    RunRow {
        mistake: "`+` joins a string and a number, and the comparison after it is still an error",
        rule: "if custom.amount + 100 > 5000 { REVIEW }",
        custom: &[("amount", Custom::S("7000"))],
        want: Err("1:24: cannot compare a string with a number using `>`: convert one side first (`parse_float(s)`, `parse_int(s)` or `n.to_string()`)"),
    },
    RunRow {
        mistake: "`+` on a missing attribute",
        rule: "if custom.amount + 100 > 5000 { REVIEW }",
        custom: &[],
        want: Err("1:18: cannot apply `+` to `()` and a number: a missing value is `()`: test it with `!= ()` first"),
    },
    RunRow {
        mistake: "arithmetic on a missing attribute",
        rule: "if custom.amount * 2 > 5000 { REVIEW }",
        custom: &[],
        want: Err("1:18: cannot apply `*` to `()` and a number: a missing value is `()`: test it with `!= ()` first"),
    },
    RunRow {
        mistake: "a missing attribute tested first is no error",
        rule: "if custom.amount != () && custom.amount > 5000 { REVIEW }",
        custom: &[],
        want: Ok(None),
    },
    RunRow {
        mistake: "equality between different types stays false",
        rule: "if custom.amount == 7000 { REVIEW }",
        custom: &[("amount", Custom::S("7000"))],
        want: Ok(None),
    },
    RunRow {
        mistake: "a number compares with a number",
        rule: "if custom.amount > 5000 { REVIEW }",
        custom: &[("amount", Custom::N(7000))],
        want: Ok(Some(State::Review)),
    },
    RunRow {
        mistake: "a method on the wrong type names the rule guide's types",
        rule: r#"if custom.amount.ends_with("0") { REVIEW }"#,
        custom: &[("amount", Custom::N(7000))],
        want: Err("1:18: function not found: ends_with (number, string)"),
    },
];

#[test]
fn each_run_time_type_mistake_is_a_rule_error_on_both_paths() {
    for row in RUN_ROWS {
        for compile in [true, false] {
            let set = load(&[("r", row.rule)], "on_rule_error = \"skip\"", &[], compile)
                .unwrap_or_else(|e| panic!("{}: {e}", row.mistake));
            let engine = Engine::builder().ruleset(set).build().unwrap();
            let mut req = TrackRequest::new("u", "signIn");
            for (k, v) in row.custom {
                req = match v {
                    Custom::S(s) => req.custom(*k, *s),
                    Custom::N(n) => req.custom(*k, *n),
                };
            }
            let resp = engine.track(&req).unwrap();
            let got = match resp.errors.as_slice() {
                [] => Ok(resp.rule_ids.first().map(|_| resp.state)),
                [e] => Err(e.message.as_str()),
                more => panic!("{}: {more:?}", row.mistake),
            };
            assert_eq!(got, row.want, "{} (compiled: {compile})", row.mistake);
        }
    }
}

/// A request whose custom values do not fit `[custom]` is refused naming the key, and changes nothing.
#[test]
fn a_request_that_does_not_fit_the_schema_is_refused_before_any_state_changes() {
    let set = load(
        &[(
            "r",
            "if velocity(\"1h\") > 0 { BLOCK } else if custom.amount > 5000 { REVIEW }",
        )],
        SCHEMA,
        &[],
        true,
    )
    .unwrap();
    let engine = Engine::builder().ruleset(set).build().unwrap();
    let base = || TrackRequest::new("u", "signIn").idempotency_key("k1");
    for (mistake, req, field, reason) in [
        (
            "a number sent as a string",
            base().custom("amount", "7000").custom("country", "NZ"),
            "attributes.custom.amount",
            "must be a number (`[custom]` in riskgate.toml), not a string",
        ),
        (
            "a string sent as a bool",
            base().custom("amount", 1).custom("country", true),
            "attributes.custom.country",
            "must be a string (`[custom]` in riskgate.toml), not a bool",
        ),
        (
            "a required key missing",
            base().custom("amount", 1),
            "attributes.custom.country",
            "is required (`[custom]` in riskgate.toml): expected a string",
        ),
    ] {
        let e = engine.track(&req).unwrap_err();
        assert_eq!(e.code(), "invalid_request", "{mistake}");
        assert_eq!(
            e,
            TrackError::InvalidRequest {
                field: field.to_owned(),
                reason: reason.to_owned()
            },
            "{mistake}"
        );
        assert!(
            engine.get_action("u", "signIn", "k1").is_none(),
            "{mistake}"
        );
    }
    // Nothing was counted: the first request that fits sees no earlier action.
    let ok = base()
        .custom("amount", 7000.5)
        .custom("country", "NZ")
        .custom("undeclared", "any");
    assert_eq!(engine.track(&ok).unwrap().state, State::Review);
}

fn write_folder(dir: &std::path::Path, rules: &[(&str, &str)], config: &str) {
    for (rel, text) in rules {
        common::write(dir, rel, text);
    }
    common::write(dir, "riskgate.toml", config);
}

#[test]
fn check_strict_fails_on_warnings_and_json_lists_every_diagnostic() {
    let dir = tempfile::tempdir().unwrap();
    write_folder(
        dir.path(),
        &[
            ("a.rhai", "//! actions: payment\nREVIEW\n"),
            ("b.rhai", "//! actions: payment, paymnet\nBLOCK\n"),
        ],
        "",
    );
    let rules = dir.path().display().to_string();
    let out = common::riskgate()
        .args(["check", "--rules", &rules])
        .output()
        .unwrap();
    assert!(out.status.success());
    let stderr = String::from_utf8(out.stderr).unwrap();
    let b = dir.path().join("b.rhai").display().to_string();
    assert_eq!(
        stderr,
        format!("{b}:1:23: warning: action code `paymnet` is named only here: no other rule, `[actions]` table or known action uses it (did you mean `payment`?)\n")
    );
    assert!(String::from_utf8(out.stdout)
        .unwrap()
        .ends_with("(1 warning)\n"));
    let out = common::riskgate()
        .args(["check", "--strict", "--rules", &rules])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8(out.stderr)
        .unwrap()
        .ends_with("error: 1 warning found, and `--strict` fails on warnings\n"));

    common::write(
        dir.path(),
        "c.rhai",
        "if email.ends_wiht(\"x\") { \"BLOCK\" }\n",
    );
    let out = common::riskgate()
        .args(["check", "--format", "json", "--rules", &rules])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let c = dir.path().join("c.rhai").display().to_string();
    assert_eq!(
        v,
        serde_json::json!({
            "ok": false,
            "rules": [],
            "diagnostics": [
                {"file": c, "line": 1, "column": 10, "severity": "error", "code": "unknown_method",
                 "message": "unknown method `ends_wiht`: did you mean `ends_with`?", "suggestion": "ends_with"},
                {"file": c, "line": 1, "column": 27, "severity": "error", "code": "literal_return",
                 "message": "the rule returns the string \"BLOCK\", not an outcome: write `BLOCK` without quotes",
                 "suggestion": "BLOCK"},
            ]
        })
    );
}

/// Generated rules: mixing real and misspelt variables, functions and methods, with right and wrong arities.
fn rule() -> impl Strategy<Value = String> {
    let var = prop::sample::select(vec![
        "email",
        "emial",
        "user_id",
        "ip_address",
        "custom.a",
        "x",
        "REVEIW",
    ]);
    let method = prop::sample::select(vec![
        ("ends_with", "(\"a\")"),
        ("ends_with", "()"),
        ("ends_wiht", "(\"a\")"),
        ("len", "()"),
        ("len", "(1)"),
        ("to_upper", "()"),
        ("split", "(\"@\")"),
        ("contains", "(\"a\")"),
        ("sub_string", "(1, 2)"),
        ("index_of", "(\"a\")"),
        ("trim", "()"),
        ("nope", "()"),
    ]);
    let call = prop::sample::select(vec![
        "velocity(\"1h\")",
        "velocity()",
        "is_new_device()",
        "is_new_devise()",
        "parse_int(\"1\")",
        "parse_int()",
        "max(1, 2)",
        "ua_browser()",
        "ua_browser(1)",
        "nothing()",
    ]);
    (var, method, call, 0usize..3).prop_map(|(v, (m, args), c, shape)| match shape {
        0 => format!("let x = {v}; if x != () && x.{m}{args} != () {{ BLOCK }}"),
        1 => format!("if {c} != () && {v} != () {{ REVIEW }}"),
        _ => format!("if {v} != () && {v}.{m}{args} == {c} {{ ALLOW }}"),
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    /// A rule `check` accepts never fails at run time because a function, method or variable does not exist.
    #[test]
    fn an_accepted_rule_never_meets_an_unknown_name_at_run_time(src in rule(), email in prop::option::of("[a-z@.]{1,8}")) {
        let Ok(set) = load(&[("r", &src)], "on_rule_error = \"skip\"", &[], false) else {
            return Ok(());
        };
        let engine = Engine::builder().ruleset(set).build().unwrap();
        let mut req = TrackRequest::new("u", "signIn").custom("a", "abc").ip("10.0.0.1");
        req.attributes.email = email;
        let resp = engine.track(&req).unwrap();
        for e in &resp.errors {
            let m = e.message.to_lowercase();
            prop_assert!(!m.contains("not found") && !m.contains("variable"), "{src}: {}", e.message);
        }
    }
}
