//! What a failing rule leads to: it is reported in `errors` with a bounded message, counts as `on_rule_error`
//! (or is skipped), never stops the other rules, and keeps a stored action small. Which limits end a runaway
//! rule is `tests/sandbox.rs`; the README's "Failure semantics" rows are `tests/failure_semantics.rs`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

#[global_allocator]
static ALLOC: &stats_alloc::StatsAlloc<std::alloc::System> = &stats_alloc::INSTRUMENTED_SYSTEM;

use common::FAILING;
use riskgate::{Engine, RuleSet, State, TrackRequest, TrackResponse};

/// Every decision in this binary runs under a read lock; measuring the bytes an action holds takes the write
/// lock, so no other test allocates meanwhile.
static MEASURING: std::sync::RwLock<()> = std::sync::RwLock::new(());

fn decide(rules: &[(&str, &str)], config: &str) -> TrackResponse {
    let _shared = MEASURING.read().unwrap_or_else(|p| p.into_inner());
    common::engine_with_config(rules, config)
        .track(&common::req("user-1", "signIn"))
        .unwrap()
}

#[test]
fn a_failing_rule_counts_as_challenge_by_default() {
    let resp = decide(&[("bad", FAILING)], "");
    assert_eq!(resp.state, State::ChallengeRequired);
    assert_eq!(resp.rule_ids, ["bad"]);
    assert_eq!(resp.errors.len(), 1);
    assert_eq!(resp.errors[0].rule_id, "bad");
    assert!(
        resp.errors[0].message == "2:14: function not found: ends_with (number, string)",
        "{}",
        resp.errors[0].message
    );
    assert!(
        resp.errors[0].message.starts_with("2:"),
        "the rule line is named: {}",
        resp.errors[0].message
    );
}

#[test]
fn on_rule_error_can_be_any_outcome() {
    for (cfg, want) in [
        ("ALLOW", State::Allow),
        ("REVIEW", State::Review),
        ("BLOCK", State::Block),
    ] {
        let resp = decide(
            &[
                ("bad", FAILING),
                ("weaker", "//! priority: 20\nCHALLENGE_REQUIRED"),
            ],
            &format!("on_rule_error = \"{cfg}\""),
        );
        assert_eq!(resp.state, want, "{cfg}");
        assert_eq!(resp.priority_rule_id.as_deref(), Some("bad"));
        assert_eq!(resp.errors.len(), 1);
    }
}

#[test]
fn skip_leaves_the_failing_rule_out() {
    let resp = decide(
        &[("bad", FAILING), ("other", "//! priority: 20\nREVIEW")],
        "on_rule_error = \"skip\"",
    );
    assert_eq!(resp.state, State::Review);
    assert_eq!(resp.rule_ids, ["other"]);
    assert_eq!(resp.errors.len(), 1);
    let resp = decide(
        &[("bad", FAILING)],
        "on_rule_error = \"skip\"\ndefault_outcome = \"BLOCK\"",
    );
    assert_eq!(resp.state, State::Block);
    assert!(resp.rule_ids.is_empty());
}

#[test]
fn a_wrong_return_type_is_a_rule_error() {
    // Literals are refused at load (`tests/rule_mistakes.rs`); values made at run time are rule errors.
    for src in [
        "let v = \"BLOCK\"; v",
        "let v = 42; v",
        "let v = true; v",
        "let v = [BLOCK]; v",
        "let v = #{}; v",
    ] {
        let resp = decide(&[("wrong", src)], "on_rule_error = \"skip\"");
        assert_eq!(resp.state, State::Allow, "{src}");
        assert_eq!(resp.errors.len(), 1, "{src}");
        assert!(
            resp.errors[0].message.contains("not ALLOW"),
            "{}",
            resp.errors[0].message
        );
    }
}

#[test]
fn one_bad_rule_does_not_stop_the_others() {
    let resp = decide(
        &[
            ("a-bad", "//! priority: 50\nthrow \"boom\""),
            ("b-good", "//! priority: 10\nBLOCK"),
        ],
        "",
    );
    assert_eq!(resp.state, State::Block);
    assert_eq!(resp.rule_ids, ["b-good", "a-bad"]);
    assert!(resp.errors[0].message.contains("boom"));
}

#[test]
fn a_failing_shadow_rule_never_changes_the_state() {
    let resp = decide(
        &[("trial", "//! mode: shadow\nthrow \"x\"")],
        "on_rule_error = \"BLOCK\"",
    );
    assert_eq!(resp.state, State::Allow);
    assert_eq!(resp.shadow_rule_ids, ["trial"]);
    assert_eq!(resp.errors.len(), 1);
}

/// The longest rule error message stored (README, "Failure semantics").
const MAX_MESSAGE: usize = 1024;

#[test]
fn a_long_error_message_is_cut_at_a_character_boundary() {
    for (src, starts) in [
        (
            r#"let s = ""; s.pad(16000, "x"); throw s"#,
            "1:32: Runtime error: xxxx",
        ),
        // Two-byte characters: the cut must not split one.
        (
            r#"let s = ""; s.pad(8000, "é"); throw s"#,
            "1:31: Runtime error: éééé",
        ),
        (
            r#"let s = ""; s.pad(5000, "€"); throw "a" + s"#,
            "1:31: Runtime error: a€€€",
        ),
        (
            r#"let a = []; for i in 0..1000 { a.push(`item ${i}`) } throw a"#,
            "1:54: Runtime error: [\"item 0\"",
        ),
    ] {
        // A time limit a debug build stays under while building the value.
        let resp = decide(&[("big", src)], "[limits]\ntime_limit = \"5s\"\n");
        let msg = &resp.errors[0].message;
        assert!(msg.len() <= MAX_MESSAGE, "{}: {} bytes", src, msg.len());
        assert!(msg.len() > MAX_MESSAGE - 8, "{}: {} bytes", src, msg.len());
        assert!(msg.ends_with('…'), "{src}");
        assert!(
            msg.starts_with(starts),
            "{src}: {}",
            msg.chars().take(30).collect::<String>()
        );
    }
    // A short one is kept whole.
    let resp = decide(&[("small", r#"throw "boom""#)], "");
    assert_eq!(resp.errors[0].message, "1:1: Runtime error: boom");
}

#[test]
fn a_thrown_map_counts_its_keys_against_the_string_size_limit() {
    // 1,000 keys of 16 KB: 16 MB of text that Rhai's own size check (values only) lets through.
    let src = r#"let k = ""; k.pad(16000, "k"); let m = #{}; for i in 0..1000 { m[`${i}${k}`] = i; } throw m"#;
    let resp = decide(
        &[("runaway", src), ("fine", "//! priority: 90\nREVIEW")],
        "[limits]\ntime_limit = \"30s\"\nmax_operations = 1000000\n",
    );
    let msg = &resp.errors[0].message;
    assert_eq!(
        msg,
        "1:85: thrown value exceeds its limit (strings 16384 bytes, map keys included)"
    );
    // Under the limit, the map is shown (cut to the bound).
    let resp = decide(&[("m", r#"throw #{a: 1, b: "x"}"#)], "");
    assert!(
        resp.errors[0].message.contains("Runtime error: #{"),
        "{resp:?}"
    );
}

fn live_bytes() -> i64 {
    let s = ALLOC.stats();
    s.bytes_allocated as i64 - s.bytes_deallocated as i64
}

/// The bytes one stored action holds, with `rule` failing on every decision (300 actions kept).
fn bytes_per_action(rule: &str) -> i64 {
    const N: usize = 300;
    let _alone = MEASURING.write().unwrap_or_else(|p| p.into_inner());
    let rules = RuleSet::builder()
        .rule("r", rule)
        .config_toml(format!(
            "[idempotency]\ncapacity = {N}\n[limits]\ntime_limit = \"5s\"\nmax_operations = 1000000\n"
        ))
        .build()
        .unwrap();
    let e = Engine::builder().ruleset(rules).build().unwrap();
    e.track(&TrackRequest::new("warm-up", "signIn")).unwrap();
    let before = live_bytes();
    for i in 0..N {
        let resp = e
            .track(&TrackRequest::new(format!("user-{i}"), "signIn"))
            .unwrap();
        assert_eq!(resp.errors.len(), 1);
    }
    (live_bytes() - before) / N as i64
}

#[test]
fn a_stored_action_stays_small_whatever_its_rules_throw() {
    let small = bytes_per_action(r#"throw "boom""#);
    for hostile in [
        r#"let s = ""; s.pad(16000, "x"); throw s"#,
        // 16 KB keys: 3.2 MB (16 MB with 1,000 keys, which the test above throws).
        r#"let k = ""; k.pad(16000, "k"); let m = #{}; for i in 0..200 { m[`${i}${k}`] = i; } throw m"#,
        r#"let a = []; for i in 0..1000 { a.push(`item ${i}`) } throw a"#,
    ] {
        let big = bytes_per_action(hostile);
        // The message is at most 1,024 bytes (before: 16 KB and 3.2 MB).
        assert!(
            big - small < MAX_MESSAGE as i64 + 512,
            "{hostile}: {big} bytes per action, {small} with a short message"
        );
    }
}
