//! Settings made in code on `EngineBuilder` and `RuleSetBuilder`: each one takes effect, wins over
//! `riskgate.toml`, survives reloads and swaps, and out-of-range values fail `build`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use riskgate::{
    Engine, EngineBuilder, FakeClock, InvalidTokenReason, LoadError, OnConflict, OnRuleError,
    RuleSet, SandboxLimits, State, TrackRequest,
};
use std::time::Duration;

const FAILING: &str = "let x = 1; x.ends_with(\"1\")";
/// A rule that runs several hundred Rhai operations before deciding.
const BUSY: &str = "let n = 0; for i in 0..200 { n += i; } if n > 0 { REVIEW }";

fn set(rules: &[(&str, &str)], config: &str) -> RuleSet {
    let mut b = RuleSet::builder().config_toml(config);
    for (id, src) in rules {
        b = b.rule(*id, *src);
    }
    b.build().unwrap()
}

fn build(b: EngineBuilder) -> Engine {
    b.build().unwrap()
}

fn req(key: &str) -> TrackRequest {
    TrackRequest::new("u1", "signIn").idempotency_key(key)
}

fn setting_error(b: EngineBuilder) -> (&'static str, String) {
    match b.build().unwrap_err() {
        LoadError::InvalidSetting { setting, reason } => (setting, reason),
        other => panic!("{other:?}"),
    }
}

#[test]
fn idempotency_capacity_bounds_the_store_over_the_file() {
    let rules = set(&[("a", "ALLOW")], "[idempotency]\ncapacity = 100\n");
    let e = build(Engine::builder().ruleset(rules).idempotency_capacity(2));
    for k in ["k1", "k2", "k3", "k4"] {
        e.track(&req(k)).unwrap();
    }
    assert_eq!(e.stored_actions(), 2);
    assert_eq!(
        e.get_action("u1", "signIn", "k1"),
        None,
        "the oldest went first"
    );
    assert!(e.get_action("u1", "signIn", "k4").is_some());
}

#[test]
fn idempotency_ttl_wins_over_the_file() {
    let clock = FakeClock::default();
    let rules = set(&[("a", "ALLOW")], "[idempotency]\nttl = \"1h\"\n");
    let e = build(
        Engine::builder()
            .ruleset(rules)
            .clock(clock.clone())
            .idempotency_ttl(Duration::from_secs(60)),
    );
    e.track(&req("k1")).unwrap();
    clock.advance(Duration::from_secs(59));
    e.track(&req("k1")).unwrap();
    assert_eq!(e.decisions(), 1, "still retained within the TTL");
    clock.advance(Duration::from_secs(2));
    assert_eq!(e.get_action("u1", "signIn", "k1"), None);
    e.track(&req("k1")).unwrap();
    assert_eq!(e.decisions(), 2, "expired after 60s, not the file's hour");
}

#[test]
fn on_conflict_both_ways_over_the_file() {
    let conflicting = |e: &Engine| {
        e.track(&req("k1").custom("n", 1)).unwrap();
        e.track(&req("k1").custom("n", 2))
    };
    let replay = build(
        Engine::builder()
            .ruleset(set(
                &[("a", "ALLOW")],
                "[idempotency]\non_conflict = \"error\"\n",
            ))
            .on_conflict(OnConflict::Replay),
    );
    assert_eq!(conflicting(&replay).unwrap().state, State::Allow);
    let error = build(
        Engine::builder()
            .ruleset(set(
                &[("a", "ALLOW")],
                "[idempotency]\non_conflict = \"replay\"\n",
            ))
            .on_conflict(OnConflict::Error),
    );
    let e = conflicting(&error).unwrap_err();
    assert_eq!((e.code(), e.http_status()), ("idempotency_conflict", 409));
}

#[test]
fn token_ttl_wins_over_the_file() {
    let clock = FakeClock::default();
    let e = build(
        Engine::builder()
            .ruleset(set(
                &[("c", "CHALLENGE_REQUIRED")],
                "[challenge]\ntoken_ttl = \"1h\"\n",
            ))
            .clock(clock.clone())
            .token_ttl(Duration::from_secs(30)),
    );
    let token = e.track(&req("k1")).unwrap().token.unwrap();
    e.update_action("u1", "signIn", "k1", State::ChallengeSucceeded)
        .unwrap();
    clock.advance(Duration::from_secs(31));
    assert_eq!(
        e.validate_challenge(&token).reason,
        Some(InvalidTokenReason::Expired)
    );
}

#[test]
fn on_rule_error_skip_and_outcome_over_the_file() {
    let skip = build(
        Engine::builder()
            .ruleset(set(&[("bad", FAILING)], "on_rule_error = \"BLOCK\"\n"))
            .on_rule_error(OnRuleError::Skip),
    );
    let r = skip.track(&req("k1")).unwrap();
    assert_eq!(r.state, State::Allow);
    assert_eq!(r.errors.len(), 1);
    assert!(r.rule_ids.is_empty());
    let block = build(
        Engine::builder()
            .ruleset(set(&[("bad", FAILING)], "on_rule_error = \"skip\"\n"))
            .on_rule_error(OnRuleError::Outcome(State::Block)),
    );
    let r = block.track(&req("k1")).unwrap();
    assert_eq!(r.state, State::Block);
    assert_eq!(r.priority_rule(), Some("bad"));
}

#[test]
fn default_outcomes_over_the_file_with_the_action_default_first() {
    let rules = set(
        &[("never", "if false { BLOCK }")],
        "default_outcome = \"BLOCK\"\n[actions.pay]\ndefault_outcome = \"REVIEW\"\n",
    );
    let e = build(
        Engine::builder()
            .ruleset(rules)
            .default_outcome(State::ChallengeRequired)
            .action_default_outcome("withdraw", State::Allow),
    );
    let state = |action: &str| e.track(&TrackRequest::new("u1", action)).unwrap().state;
    assert_eq!(state("signIn"), State::ChallengeRequired);
    assert_eq!(
        state("pay"),
        State::Review,
        "the file's per-action default stays"
    );
    assert_eq!(state("withdraw"), State::Allow);
}

#[test]
fn settings_survive_a_swap() {
    let e = build(
        Engine::builder()
            .ruleset(set(&[("never", "if false { BLOCK }")], ""))
            .default_outcome(State::Review),
    );
    e.swap_ruleset(set(
        &[("never", "if false { BLOCK }")],
        "default_outcome = \"BLOCK\"\n",
    ));
    assert_eq!(e.track(&req("k1")).unwrap().state, State::Review);
}

fn small_limits() -> SandboxLimits {
    let mut l = SandboxLimits::default();
    l.max_operations = 100;
    l.time_limit = Duration::from_secs(5);
    l
}

#[test]
fn sandbox_limits_apply_to_the_folder_and_every_reload() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("busy.rhai"), BUSY).unwrap();
    std::fs::write(
        dir.path().join("riskgate.toml"),
        "[limits]\nmax_operations = 1000000\ntime_limit = \"5s\"\n",
    )
    .unwrap();
    let busy_fails = |e: &Engine, key: &str| {
        let r = e.track(&req(key)).unwrap();
        assert_eq!(r.errors.len(), 1, "{r:?}");
        assert!(
            r.errors[0].message.contains("operation limit of 100"),
            "{}",
            r.errors[0].message
        );
    };
    // Before and after `rules_dir`: the same engine.
    let before = build(
        Engine::builder()
            .sandbox_limits(small_limits())
            .rules_dir(dir.path())
            .unwrap(),
    );
    busy_fails(&before, "k1");
    let after = build(
        Engine::builder()
            .rules_dir(dir.path())
            .unwrap()
            .sandbox_limits(small_limits()),
    );
    busy_fails(&after, "k1");
    after.reload_rules().unwrap();
    busy_fails(&after, "k2");
    // Without the setting the file's limit holds.
    let file = build(Engine::builder().rules_dir(dir.path()).unwrap());
    let r = file.track(&req("k1")).unwrap();
    assert_eq!(r.state, State::Review, "{r:?}");
}

#[test]
fn sandbox_limits_on_a_ruleset_built_in_code() {
    let rules = RuleSet::builder()
        .rule("busy", BUSY)
        .sandbox_limits(small_limits())
        .config_toml("[limits]\nmax_operations = 1000000\ntime_limit = \"5s\"\n")
        .build()
        .unwrap();
    let e = build(Engine::builder().ruleset(rules.clone()));
    let r = e.track(&req("k1")).unwrap();
    assert!(
        r.errors[0].message.contains("operation limit of 100"),
        "{r:?}"
    );
    let (setting, reason) = setting_error(
        Engine::builder()
            .ruleset(rules)
            .sandbox_limits(SandboxLimits::default()),
    );
    assert_eq!(setting, "sandbox_limits");
    assert!(
        reason.contains("RuleSetBuilder::sandbox_limits"),
        "{reason}"
    );
    let mut zero = SandboxLimits::default();
    zero.max_call_depth = 0;
    let e = RuleSet::builder()
        .rule("a", "ALLOW")
        .sandbox_limits(zero)
        .build()
        .unwrap_err();
    assert_eq!(
        e.to_string(),
        "invalid `sandbox_limits`: `max_call_depth` must be at least 1: the sandbox cannot be turned off"
    );
}

#[test]
fn out_of_range_settings_fail_build_by_name() {
    let b = || Engine::builder().ruleset(set(&[("a", "ALLOW")], ""));
    assert_eq!(
        setting_error(b().idempotency_capacity(0)),
        ("idempotency_capacity", "must be at least 1".to_owned())
    );
    assert_eq!(
        setting_error(b().idempotency_ttl(Duration::ZERO)).0,
        "idempotency_ttl"
    );
    assert_eq!(
        setting_error(b().token_ttl(Duration::from_secs(11 * 365 * 86_400))).0,
        "token_ttl"
    );
    let (setting, reason) = setting_error(b().default_outcome(State::ReviewFailed));
    assert_eq!(setting, "default_outcome");
    assert_eq!(
        reason,
        "`REVIEW_FAILED` is not a decision: expected ALLOW, CHALLENGE_REQUIRED, REVIEW or BLOCK"
    );
    assert_eq!(
        setting_error(b().on_rule_error(OnRuleError::Outcome(State::ChallengeSucceeded))).0,
        "on_rule_error"
    );
    let (setting, reason) = setting_error(b().action_default_outcome("sign in!", State::Allow));
    assert_eq!(setting, "action_default_outcome");
    assert!(
        reason.starts_with("`sign in!` is not an action code"),
        "{reason}"
    );
    let e = b().idempotency_capacity(0).build().unwrap_err();
    assert_eq!(
        e.to_string(),
        "invalid `idempotency_capacity`: must be at least 1"
    );
}

#[test]
fn depth_limits_set_in_code_are_capped_like_the_file() {
    // A depth above its cap would let a recursive rule overflow the stack: refused in code as in the file.
    for (name, cap, set) in [
        (
            "max_call_depth",
            32,
            (|l: &mut SandboxLimits, v| l.max_call_depth = v) as fn(&mut SandboxLimits, usize),
        ),
        ("max_expr_depth", 128, |l, v| l.max_expr_depth = v),
        ("max_function_expr_depth", 64, |l, v| {
            l.max_function_expr_depth = v
        }),
    ] {
        let mut limits = SandboxLimits::default();
        set(&mut limits, 1_000_000);
        let e = RuleSet::builder()
            .rule("a", "ALLOW")
            .sandbox_limits(limits)
            .build()
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            format!("invalid `sandbox_limits`: `{name}` must be at most {cap}")
        );
        let mut at_cap = SandboxLimits::default();
        set(&mut at_cap, cap);
        RuleSet::builder()
            .rule("a", "ALLOW")
            .sandbox_limits(at_cap)
            .build()
            .unwrap_or_else(|e| panic!("{name} = {cap}: {e}"));
    }
    // At the cap, a rule recursing without end is a rule error on a 2 MiB thread, not an overflow.
    let mut limits = SandboxLimits::default();
    limits.max_call_depth = 32;
    let rules = RuleSet::builder()
        .rule("deep", "fn f(n) { f(n + 1) } f(0)")
        .sandbox_limits(limits)
        .build()
        .unwrap();
    let engine = Engine::builder().ruleset(rules).build().unwrap();
    let resp = std::thread::Builder::new()
        .stack_size(2 << 20)
        .spawn(move || engine.track(&req("deep")).unwrap())
        .unwrap()
        .join()
        .unwrap();
    assert_eq!(resp.errors.len(), 1, "{:?}", resp.errors);
}
