//! `riskgate test` end to end: passing, failing and malformed test files with their exact output and exit
//! codes, JUnit XML, the filter; the bundled rules' and starter's own tests; `riskgate explain`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::write;
use std::path::Path;
use std::process::Output;

fn run(dir: &Path, args: &[&str]) -> Output {
    common::riskgate()
        .current_dir(dir)
        .args(args)
        .output()
        .unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8(b.to_vec()).unwrap()
}

const BUSY: &str = "//! priority: 10\nif velocity(\"10m\") >= 2 && custom.amount > 100 { BLOCK }\n";

const PASSING: &str = r#"[[test]]
name = "two quick payments are fine"

[[test.step]]
repeat = 2
track = { userId = "u1", action = "pay", attributes = { custom = { amount = 500 } } }
expect = { state = "ALLOW", ruleIds = [], signals = { 'velocity("10m")' = 1 } }
"#;

const FAILING: &str = r#"[[test]]
name = "the third is blocked"

[[test.step]]
repeat = 2
track = { userId = "u1", action = "pay", attributes = { custom = { amount = 50 } } }

[[test.step]]
track = { userId = "u1", action = "pay", attributes = { custom = { amount = 50 } } }

[test.step.expect]
state = "BLOCK"
priorityRuleId = "busy"
signals = { 'velocity("10m")' = 3 }
"#;

const MALFORMED: &str = r#"[[test]]
name = "a typo"

[[test.step]]
track = { userId = "u1", action = "pay" }
expect = { stat = "BLOCK" }
"#;

fn folder(files: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "rules/busy.rhai", BUSY);
    for (name, body) in files {
        write(dir.path(), &format!("rules/tests/{name}"), body);
    }
    dir
}

#[test]
fn passing_tests_exit_zero() {
    let dir = folder(&[("pass.toml", PASSING)]);
    let out = run(dir.path(), &["test"]);
    assert_eq!(
        text(&out.stdout),
        "ok   rules/tests/pass.toml::two quick payments are fine\ntest result: ok. 1 passed; 0 failed\n"
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
}

#[test]
fn a_failure_prints_where_what_and_the_trace_and_exits_one() {
    let dir = folder(&[("a.toml", PASSING), ("b.toml", FAILING)]);
    let out = run(dir.path(), &["test"]);
    assert_eq!(
        text(&out.stdout),
        r#"ok   rules/tests/a.toml::two quick payments are fine
FAIL rules/tests/b.toml::the third is blocked
  rules/tests/b.toml:12: step 2: `state`: expected BLOCK, got ALLOW
  rules/tests/b.toml:13: step 2: `priorityRuleId`: expected `busy`, got none
  rules/tests/b.toml:14: step 2: `velocity("10m")`: expected 3, got 2
    decision: ALLOW
    busy (enforce, priority 10): no match
        velocity("10m") >= 2 → true
        custom.amount > 100 → false
        velocity("10m") = 2
        custom.amount = 50
test result: FAILED. 1 passed; 1 failed
"#
    );
    assert_eq!(out.status.code(), Some(1));
}

#[test]
fn a_malformed_file_is_an_error_with_its_line_and_column() {
    let dir = folder(&[("a.toml", PASSING), ("bad.toml", MALFORMED)]);
    let out = run(dir.path(), &["test"]);
    assert_eq!(
        text(&out.stdout),
        "ok   rules/tests/a.toml::two quick payments are fine\n\
         error: rules/tests/bad.toml:6:12: unknown field `stat`, expected one of `state`, `priorityRuleId`, \
         `ruleIds`, `ruleIdsContain`, `shadowRuleIds`, `shadowRuleIdsContain`, `errors`, `isValid`, `error`, \
         `signals`\n\
         test result: FAILED. 1 passed; 0 failed; 1 invalid test file\n"
    );
    assert_eq!(out.status.code(), Some(1));
    for (body, message) in [
        ("[[test]]\nname = \"x\"\n[[test.step]]\nat = \"+3 weeks\"\ntrack = {}\n", "rules/tests/bad.toml:4: `at`: `+3 weeks` is neither `+N` with a unit (s, m, h, d) nor an RFC 3339 time"),
        ("[[test]]\nname = \"x\"\n[[test.step]]\ntrack = { userId = \"u\", action = \"pay\" }\ngetAction = {}\n", "rules/tests/bad.toml:5: step 1: expected exactly one of `track`, `updateAction`, `getAction`, `validateChallenge`"),
        ("[[test]]\nname = \"x\"\n[[test.step]]\nvalidateChallenge = {}\n", "rules/tests/bad.toml:4: `validateChallenge`: no earlier step returned a token"),
        ("[[test]]\nname = \"x\"\n[[test.step]]\nrepeat = 0\ntrack = {}\n", "rules/tests/bad.toml:4: `repeat`: expected 1 to 100000 (a test runs at most 100000 steps)"),
    ] {
        let dir = folder(&[("bad.toml", body)]);
        let out = run(dir.path(), &["test"]);
        assert_eq!(
            text(&out.stdout),
            format!("error: {message}\ntest result: FAILED. 0 passed; 0 failed; 1 invalid test file\n")
        );
        assert_eq!(out.status.code(), Some(1));
    }
}

#[test]
fn a_refused_step_is_a_failure_unless_expected() {
    let body = r#"[[test]]
name = "a conflict"

[[test.step]]
track = { userId = "u1", action = "pay", attributes = { idempotencyKey = "k", custom = { amount = 1 } } }

[[test.step]]
track = { userId = "u1", action = "pay", attributes = { idempotencyKey = "k", custom = { amount = 2 } } }
expect = { error = "idempotency_conflict" }

[[test.step]]
track = { userId = "", action = "pay" }
"#;
    let dir = folder(&[("t.toml", body)]);
    let out = run(dir.path(), &["test"]);
    assert_eq!(
        text(&out.stdout),
        "FAIL rules/tests/t.toml::a conflict\n  rules/tests/t.toml:12: step 3: `error`: expected no error, got \
         invalid_request (invalid `userId`: must not be empty)\ntest result: FAILED. 0 passed; 1 failed\n"
    );
    assert_eq!(out.status.code(), Some(1));
}

#[test]
fn junit_reports_every_file_and_the_filter_selects_tests() {
    let dir = folder(&[
        ("a.toml", PASSING),
        ("b.toml", FAILING),
        ("bad.toml", MALFORMED),
    ]);
    let out = run(dir.path(), &["test", "--format", "junit"]);
    let xml = text(&out.stdout);
    assert!(xml.starts_with(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<testsuites name=\"riskgate\" tests=\"3\" failures=\"1\" errors=\"1\">\n  \
         <testsuite name=\"rules/tests/a.toml\" tests=\"1\" failures=\"0\" errors=\"0\">\n    \
         <testcase name=\"two quick payments are fine\" classname=\"rules/tests/a.toml\"/>\n  </testsuite>\n"
    ), "{xml}");
    assert!(xml.contains(
        "<failure message=\"rules/tests/b.toml:12: step 2: `state`: expected BLOCK, got ALLOW\">rules/tests/b.toml:12: step 2: \
         `state`: expected BLOCK, got ALLOW&#10;rules/tests/b.toml:13:"
    ), "{xml}");
    assert!(
        xml.contains("velocity(&quot;10m&quot;) &gt;= 2 → true&#10;"),
        "{xml}"
    );
    assert!(xml.contains("<testcase name=\"(test file)\" classname=\"rules/tests/bad.toml\">\n      <error message=\"rules/tests/bad.toml:6:12: unknown field `stat`"), "{xml}");
    assert_eq!(xml.matches("<testsuite ").count(), 3);
    assert!(xml.ends_with("</testsuites>\n"));
    assert_eq!(out.status.code(), Some(1));

    let dir = folder(&[("a.toml", PASSING), ("b.toml", FAILING)]);
    let out = run(dir.path(), &["test", "quick payments"]);
    assert_eq!(
        text(&out.stdout),
        "ok   rules/tests/a.toml::two quick payments are fine\ntest result: ok. 1 passed; 0 failed\n"
    );
    assert_eq!(out.status.code(), Some(0));
}

#[test]
fn no_test_files_pass_and_say_so() {
    let dir = folder(&[]);
    let out = run(dir.path(), &["test"]);
    assert_eq!(
        text(&out.stdout),
        "test result: ok. 0 passed; 0 failed (no test files in `rules/tests`)\n"
    );
    assert_eq!(out.status.code(), Some(0));
}

#[test]
fn the_bundled_rules_and_the_starter_pass_their_tests() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    for (dir, tests) in [("rules", 11), ("starter", 7)] {
        let out = run(root, &["test", "--rules", dir]);
        let stdout = text(&out.stdout);
        assert!(
            stdout.ends_with(&format!("test result: ok. {tests} passed; 0 failed\n")),
            "{stdout}"
        );
        assert_eq!(out.status.code(), Some(0));
    }
}

#[test]
fn every_bundled_rule_is_matched_by_some_test() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    for dir in ["rules", "starter"] {
        let rules = riskgate::RuleSet::from_dir(root.join(dir)).unwrap();
        let tests: String = std::fs::read_dir(root.join(dir).join("tests"))
            .unwrap()
            .map(|e| std::fs::read_to_string(e.unwrap().path()).unwrap())
            .collect();
        for r in rules.rules() {
            assert!(
                tests.contains(&format!("\"{}\"", r.id)),
                "no test expects `{}` in {dir}/tests",
                r.id
            );
        }
    }
}

#[test]
fn explain_prints_a_trace_per_line_and_records_nothing() {
    let dir = folder(&[]);
    let line =
        r#"{"timestamp":0,"userId":"u1","action":"pay","attributes":{"custom":{"amount":500}}}"#;
    write(
        dir.path(),
        "events.jsonl",
        &format!("{line}\n{line}\n{line}\n"),
    );
    let out = run(dir.path(), &["explain", "events.jsonl"]);
    let lines: Vec<serde_json::Value> = text(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 3);
    for v in &lines {
        assert_eq!(v["state"], "ALLOW");
        assert_eq!(
            v["rules"][0]["signals"][0],
            serde_json::json!({"expr": "velocity(\"10m\")", "value": 0})
        );
    }
    assert_eq!(out.status.code(), Some(0));
}
