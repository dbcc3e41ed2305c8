//! The sandbox against hostile rules: each limit (operations, time, string/array/map size, call depth, callbacks)
//! ends a runaway rule as a rule error within the configured bound, the decision still returns (the other
//! rules still decide), and memory stays bounded. Rules that reach for what the sandbox leaves out (`eval`,
//! modules, writes to the request, captures) fail to load with a clear message.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

mod common;

use proptest::prelude::*;
use riskgate::{Engine, RuleSet, State, TrackRequest, TrackResponse};
use std::time::{Duration, Instant};

/// A rule that always matches, stronger than the hostile one: it must still decide.
const GOOD: (&str, &str) = ("zz-good", "//! priority: 10\nREVIEW");

/// Debug builds on a shared 2-core CI machine: generous, but far below "hangs".
const WALL_BOUND: Duration = Duration::from_secs(2);

/// (name, rule source, what the error message must contain). Where either the operation or the time limit
/// may stop a rule first (debug builds on a loaded machine are slow), only "exceed" is required; the test
/// below with small configured limits pins each limit's message.
const HOSTILE: &[(&str, &str, &str)] = &[
    ("loop", "loop {}", "exceeded"),
    ("while-true", "while true { }", "exceeded"),
    (
        "huge-range",
        "for i in range(0, 1000000000000) { } ()",
        "limit of",
    ),
    (
        "deep-recursion",
        "fn f(x) { f(x + 1) } f(0)",
        "call depth limit of 16 exceeded",
    ),
    (
        "mutual-recursion",
        "fn a(x) { b(x) } fn b(x) { a(x) } a(1)",
        "call depth limit",
    ),
    (
        "string-doubling",
        r#"let s = "ab"; loop { s += s; }"#,
        "Length of string exceeds its limit",
    ),
    (
        "string-pad",
        r#"let s = ""; s.pad(100000000, "x"); s"#,
        "Length of string exceeds its limit",
    ),
    (
        "string-replace-blowup",
        r#"let s = ""; s.pad(16000, "a"); let t = s; s.replace("a", t); ()"#,
        "Length of string exceeds its limit",
    ),
    (
        "string-replace-empty-pattern",
        r#"let s = ""; s.pad(16000, "a"); s.replace("", "xyz"); ()"#,
        "Length of string exceeds its limit",
    ),
    (
        "string-in-array",
        r#"let s = ""; s.pad(16000, "a"); let a = []; for i in 0..1000 { a.push(s); } ()"#,
        "Length of string exceeds its limit",
    ),
    (
        "array-push",
        "let a = []; loop { a.push(a.len()); }",
        "exceed",
    ),
    (
        "array-pad",
        "let a = []; a.pad(100000000, 0); ()",
        "Size of array/BLOB exceeds its limit",
    ),
    (
        "nested-arrays",
        "let a = []; for i in 0..1000 { let b = []; b.pad(1000, i); a.push(b); } ()",
        "Size of array/BLOB exceeds its limit",
    ),
    (
        "map-growth",
        "let m = #{}; let i = 0; loop { m[`k${i}`] = i; i += 1; }",
        "exceed",
    ),
    ("blob", "let b = blob(100000000); ()", "exceeds its limit"),
    (
        "sort-comparer-swallows-errors",
        "let a = []; a.pad(1000, 1); a.sort(|x, y| { let z = 0; while z < 1000 { z += 1 } 0 }); ()",
        "limit of",
    ),
    (
        "wall-clock-spin",
        "let t = timestamp(); while t.elapsed < 1.0 {} ()",
        "exceeded",
    ),
    ("sleep", "sleep(10)", "`sleep` is not available in rules"),
    (
        "sleep-overflow",
        "sleep(1.0e300)",
        "`sleep` is not available in rules",
    ),
    (
        "sleep-via-pointer",
        r#"let f = Fn("sleep"); f.call(3600)"#,
        "`sleep` is not available in rules",
    ),
    ("eval-via-pointer", r#"Fn("eval")"#, "'eval' is a reserved keyword"),
    (
        "mutate-request",
        "custom.clear(); ()",
        "cannot be called on constant",
    ),
    (
        "deep-json",
        "parse_json(\"[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]\")",
        "maximum complexity",
    ),
    (
        "overflow",
        "9223372036854775807 + 1",
        "Addition overflow",
    ),
    ("division-by-zero", "1 / 0", "Division by zero"),
    (
        "wrong-return-type",
        r#"let v = "BLOCK"; v"#,
        "not ALLOW, CHALLENGE_REQUIRED, REVIEW, BLOCK or ()",
    ),
    ("throw", r#"throw "boom""#, "boom"),
    (
        // A limit reached inside a callback stays reached: catching the error does not let the rule go on.
        "caught-limit-in-callback",
        "let a = []; a.pad(100, 1); a.for_each(|| { try { loop {} } catch {} }); BLOCK",
        "limit of",
    ),
    (
        "caught-limit",
        "try { loop {} } catch {} BLOCK",
        "limit of",
    ),
];

/// Tests that bound a decision's wall time take this lock around it: on a 2-core machine, runaway rules
/// decided side by side would stretch each other's times.
static TIMING: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn alone() -> std::sync::MutexGuard<'static, ()> {
    TIMING.lock().unwrap_or_else(|p| p.into_inner())
}

fn request() -> TrackRequest {
    let mut req = TrackRequest::new("user-1", "signIn");
    req.attributes.custom.insert("amount".into(), 5i64.into());
    req
}

#[test]
fn each_hostile_rule_is_a_rule_error_and_the_decision_still_returns() {
    for &(name, source, expected) in HOSTILE {
        let rules = RuleSet::from_sources([(name, source), GOOD])
            .unwrap_or_else(|e| panic!("{name}: should load, got {e}"));
        let engine = Engine::builder().ruleset(rules).build().unwrap();
        let _alone = alone();
        let started = Instant::now();
        let resp = engine
            .track(&request())
            .unwrap_or_else(|e| panic!("{name}: track failed: {e}"));
        let took = started.elapsed();
        assert!(took < WALL_BOUND, "{name}: took {took:?}");
        assert_eq!(resp.errors.len(), 1, "{name}: {resp:?}");
        assert_eq!(resp.errors[0].rule_id, name);
        assert!(
            resp.errors[0].message.contains(expected),
            "{name}: expected `{expected}` in `{}`",
            resp.errors[0].message
        );
        // The failing rule counts as `on_rule_error` (CHALLENGE_REQUIRED, priority 50); the good rule, stronger,
        // still decides.
        assert_eq!(resp.state, State::Review, "{name}");
        assert_eq!(resp.rule_ids, ["zz-good", name], "{name}");
        // Nothing of the hostile rule survives into the next decision on the same thread.
        let again = engine.track(&request()).unwrap();
        assert_eq!(again.errors.len(), 1, "{name}: {again:?}");
    }
}

#[test]
fn configured_limits_are_the_ones_enforced() {
    let rules = RuleSet::builder()
        .rule("loop", "loop {}")
        .rule("recurse", "fn f(x) { f(x + 1) } f(0)")
        .rule("string", r#"let s = "ab"; loop { s += s; }"#)
        .rule("array", "let a = []; loop { a.push(1); }")
        // Rhai checks a map's size when it is next used, not on `m[k] = v` itself (the operation and time
        // limits bound that growth meanwhile).
        .rule(
            "map",
            "let m = #{}; for i in 0..100 { m[`k${i}`] = i; } m.len()",
        )
        .config_toml(
            r#"
on_rule_error = "BLOCK"
[limits]
# A wall-clock limit no rule reaches, so that each rule meets the limit it is written for even on a busy machine.
time_limit = "60s"
max_operations = 1000
max_call_depth = 4
max_string_size = 100
max_array_size = 10
max_map_size = 10
"#,
        )
        .build()
        .unwrap();
    let engine = Engine::builder().ruleset(rules).build().unwrap();
    let resp = engine.track(&request()).unwrap();
    assert_eq!(resp.state, State::Block);
    let msg = |id: &str| {
        resp.errors
            .iter()
            .find(|e| e.rule_id == id)
            .map(|e| e.message.clone())
            .unwrap_or_default()
    };
    assert!(
        msg("loop").contains("operation limit of 1000 exceeded"),
        "{resp:?}"
    );
    assert!(
        msg("recurse").contains("call depth limit of 4 exceeded"),
        "{resp:?}"
    );
    assert!(msg("string").contains("strings 100 bytes"), "{resp:?}");
    assert!(msg("array").contains("arrays 10 items"), "{resp:?}");
    assert!(msg("map").contains("maps 10 entries"), "{resp:?}");
}

/// Writing to a request variable is a load error (Rhai would refuse a plain assignment to a constant only at
/// run time, and let a property or index write into the `custom` map through).
#[test]
fn writes_to_the_request_are_load_errors() {
    for (source, at, expected) in [
        (
            r#"user_id = "admin"; ()"#,
            "1:1:",
            "`user_id` is part of the request and cannot be changed",
        ),
        (
            "custom.trusted_tester = true; ()",
            "1:1:",
            "`custom` is part of the request",
        ),
        (
            r#"custom["trusted_tester"] = true; ()"#,
            "1:1:",
            "`custom` is part of the request",
        ),
        (
            "custom.amount += 1; ()",
            "1:1:",
            "`custom` is part of the request",
        ),
        (
            "custom.dest[0] = 'x'; ()",
            "1:1:",
            "`custom` is part of the request",
        ),
        (
            "fn f() { this.t = true } custom.f(); ()",
            "1:33:",
            "`f` cannot be called on `custom` in method style",
        ),
        (
            "custom.call(|| this.t = true); ()",
            "1:8:",
            "`call` cannot be called on `custom` in method style",
        ),
    ] {
        let e = RuleSet::from_sources([("w", source)]).unwrap_err();
        let text = e.to_string();
        assert!(
            text.starts_with(&format!("w:{at} {expected}")),
            "{source}: {text}"
        );
    }
}

/// Closures cannot capture variables (Rhai feature `no_closure`): a capture is a load error. Captured variables
/// were Rhai's only shared values, and a shared value re-entered from a callback made each access sleep
/// 5 × 10 ms (feature `sync`) before failing, so one rule could run for seconds or be made to deadlock.
#[test]
fn closures_cannot_capture_variables() {
    for (name, source) in [
        (
            "closure-reentrancy",
            "let x = [1]; let f = |y| { x.push(y); x.len() }; x.for_each(|| f.call(1)); ()",
        ),
        (
            "shared-in-for-each",
            "let x = 1; let f = |a| this += x + a; let arr = []; arr.pad(100, 1); arr.for_each(|| { try { x.call(f, 2); } catch {} }); BLOCK",
        ),
        (
            "shared-in-sort",
            "let x = 1; let f = |a| this += x + a; let arr = []; arr.pad(1000, 1); arr.sort(|p, q| { try { x.call(f, 2); } catch {} 0 }); BLOCK",
        ),
    ] {
        let e = RuleSet::from_sources([(name, source), GOOD]).unwrap_err();
        let text = e.to_string();
        assert!(text.starts_with(&format!("{name}:1:")), "{name}: {text}");
        assert!(text.contains("unknown variable `x`"), "{name}: {text}");
    }
}

/// The time limit holds inside callbacks (`for_each`, `sort` comparers, `call`), whose operations Rhai counts
/// on a copy of its counters: each of these rules would run for seconds, and ends as a rule error within 3×
/// the limit. The limit is 100 ms, so that a busy machine's scheduling delay (milliseconds) cannot reach the
/// bound while an overrun (as before: 0.8 s to over 30 s) cannot stay under it.
const CALLBACK_HEAVY: &[(&str, &str)] = &[
    (
        "call-in-for-each",
        "let arr = []; arr.pad(1000, 1); arr.for_each(|| { try { this.call(|a| { let z = 0; while z < 1000 { z += 1 } this += a }, 2); } catch {} }); BLOCK",
    ),
    (
        "sort-comparer",
        "let arr = []; arr.pad(1000, 1); arr.sort(|p, q| { try { p.call(|b| { let z = 0; while z < 1000 { z += 1 } this + b }, 2); } catch {} 0 }); BLOCK",
    ),
    (
        "while-in-for-each",
        "let arr = []; arr.pad(1000, 1); arr.for_each(|| { let z = 0; while z < 1000 { z += 1 } }); BLOCK",
    ),
];

fn timed(source: &str, config: &str) -> (riskgate::TrackResponse, Duration) {
    let rules = RuleSet::builder()
        .rule("hostile", source)
        .config_toml(config)
        .build()
        .unwrap_or_else(|e| panic!("{source}: {e}"));
    let engine = Engine::builder().ruleset(rules).build().unwrap();
    let _alone = alone();
    let started = Instant::now();
    let resp = engine.track(&request()).unwrap();
    (resp, started.elapsed())
}

#[test]
fn callbacks_end_within_three_times_the_time_limit() {
    let limit = Duration::from_millis(100);
    let config = "[limits]
time_limit = \"100ms\"
max_operations = 1000000000
";
    for &(name, source) in CALLBACK_HEAVY {
        let (resp, took) = timed(source, config);
        assert_eq!(resp.errors.len(), 1, "{name}: {resp:?}");
        assert!(
            resp.errors[0]
                .message
                .contains("time limit of 100ms exceeded"),
            "{name}: {resp:?}"
        );
        assert_ne!(resp.state, State::Block, "{name}: the rule still decided");
        assert!(took >= limit, "{name}: {took:?}");
        assert!(took < 3 * limit, "{name}: took {took:?}");
    }
}

#[test]
fn callback_operations_count_against_the_operation_limit() {
    // A time limit no rule reaches: each rule must meet the operation limit (5 M operations, mostly inside
    // callbacks, against 50,000).
    for &(name, source) in CALLBACK_HEAVY {
        let (resp, _) = timed(
            source,
            "[limits]
time_limit = \"60s\"
",
        );
        assert_eq!(resp.errors.len(), 1, "{name}: {resp:?}");
        assert!(
            resp.errors[0]
                .message
                .contains("operation limit of 50000 exceeded"),
            "{name}: {resp:?}"
        );
    }
    // With the default limits, whichever comes first.
    for &(name, source) in CALLBACK_HEAVY {
        let (resp, took) = timed(source, "");
        assert_eq!(resp.errors.len(), 1, "{name}: {resp:?}");
        assert!(
            resp.errors[0].message.contains("limit of"),
            "{name}: {resp:?}"
        );
        assert!(took < WALL_BOUND, "{name}: took {took:?}");
    }
}

/// One generated callback-heavy rule: a standard function that calls back (`outer`) over `n` items, each
/// callback doing `work` (a loop, a nested call, or another callback), possibly inside `try`/`catch`.
fn callback_rule() -> impl Strategy<Value = String> {
    let outer = prop::sample::select(vec![
        "a.for_each(|| { BODY });",
        "a.map(|v| { BODY; v });",
        "a.filter(|v| { BODY; true });",
        "a.sort(|p, q| { BODY; 0 });",
        "a.reduce(|s, v| { BODY; s }, 0);",
        "a.all(|v| { BODY; true });",
        "a.some(|v| { BODY; false });",
        "a.retain(|v| { BODY; true });",
        "a.dedup(|p, q| { BODY; false });",
    ]);
    let work = prop::sample::select(vec![
        "let z = 0; while z < 1000 { z += 1 }",
        "1.call(|b| { let z = 0; while z < 1000 { z += 1 } b }, 2)",
        "let b = []; b.pad(100, 1); b.for_each(|| { let z = 0; while z < 100 { z += 1 } })",
        "let s = \"\"; for i in 0..100 { s += i }",
        "loop {}",
    ]);
    (
        outer,
        work,
        prop::bool::ANY,
        prop::sample::select(vec![100usize, 1000]),
    )
        .prop_map(|(outer, work, caught, n)| {
            let body = if caught {
                format!("try {{ {work} }} catch {{}}")
            } else {
                work.to_owned()
            };
            format!(
                "let a = []; a.pad({n}, 1); {} BLOCK",
                outer.replace("BODY", &body)
            )
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    /// Whatever a callback-heavy rule does, it ends within 3× the time limit, and a rule that ran past the
    /// limit is a rule error, never a decision.
    #[test]
    fn generated_callback_heavy_rules_end_within_three_times_the_time_limit(source in callback_rule()) {
        let limit = Duration::from_millis(100);
        let (resp, took) = timed(&source, "[limits]\ntime_limit = \"100ms\"\nmax_operations = 1000000000\n");
        prop_assert!(took < 3 * limit, "took {:?}: {}", took, source);
        if took > limit + limit / 2 {
            prop_assert_eq!(resp.errors.len(), 1, "{}: {:?}", source, resp);
        }
        if resp.errors.is_empty() {
            prop_assert_eq!(resp.state, State::Block);
        } else {
            prop_assert!(resp.errors[0].message.contains("limit of"), "{}: {:?}", source, resp);
        }
    }
}

#[test]
fn the_time_limit_stops_a_rule_within_its_budget() {
    let rules = RuleSet::builder()
        .rule("spin", "let t = timestamp(); while t.elapsed < 10.0 {} ()")
        .config_toml("[limits]\nmax_operations = 1000000000\ntime_limit = \"20ms\"\n")
        .build()
        .unwrap();
    let engine = Engine::builder().ruleset(rules).build().unwrap();
    let _alone = alone();
    let started = Instant::now();
    let resp = engine.track(&request()).unwrap();
    let took = started.elapsed();
    assert!(
        resp.errors[0]
            .message
            .contains("time limit of 20ms exceeded"),
        "{resp:?}"
    );
    assert!(took >= Duration::from_millis(20), "{took:?}");
    assert!(took < Duration::from_millis(1000), "{took:?}");
}

#[test]
fn skip_leaves_a_failing_rule_out_of_the_decision() {
    let rules = RuleSet::builder()
        .rule("loop", "loop {}")
        .config_toml("on_rule_error = \"skip\"\ndefault_outcome = \"ALLOW\"\n")
        .build()
        .unwrap();
    let engine = Engine::builder().ruleset(rules).build().unwrap();
    let resp = engine.track(&request()).unwrap();
    assert_eq!(resp.state, State::Allow);
    assert!(resp.rule_ids.is_empty());
    assert_eq!(resp.errors.len(), 1);
}

#[test]
fn unavailable_features_and_file_or_process_access_fail_to_load_with_a_clear_message() {
    for (source, expected) in [
        (
            r#"import "std" as s; ()"#,
            "`import` is not available in rules: rules cannot load modules",
        ),
        (
            "export const x = 1; ()",
            "`export` is not available in rules",
        ),
        (r#"open("/etc/passwd")"#, "unknown function `open`"),
        (
            r#"read_file("/etc/passwd")"#,
            "unknown function `read_file`",
        ),
        (r#"system("rm -rf /")"#, "unknown function `system`"),
        (
            r#"eval("BLOCK")"#,
            "`eval` is not available in rules: rules cannot evaluate code built at run time",
        ),
    ] {
        let e = RuleSet::from_sources([("bad", source)]).unwrap_err();
        assert!(e.to_string().contains(expected), "{source}: {e}");
        assert!(e.to_string().starts_with("bad:1:"), "{source}: {e}");
    }
}

#[test]
fn deeply_nested_source_is_a_load_error_not_a_stack_overflow() {
    let n = 100_000;
    for source in [
        format!("{}1{}", "(".repeat(n), ")".repeat(n)),
        format!("{}1{}", "[".repeat(n), "]".repeat(n)),
        format!("{}1{}", "if true {".repeat(n), "}".repeat(n)),
        format!("{}true", "!".repeat(n)),
        format!("let x = #{{}}; x{}", ".a".repeat(n)),
        "|x| ".repeat(n),
        format!("1{}", " + 1".repeat(n)),
    ] {
        let e = RuleSet::from_sources([("deep", source.as_str())]).unwrap_err();
        assert!(e.to_string().contains("deep:1:"), "{e}");
    }
}

// ---- each limit on its own, with the defaults or a generous time limit ----

/// Decides with a runaway rule beside a weaker one that matches; the time includes building the engine.
fn limited(src: &str, config: &str) -> (TrackResponse, Duration) {
    let _alone = alone();
    let started = Instant::now();
    let resp = common::engine_with_config(
        &[("runaway", src), ("fine", "//! priority: 90\nREVIEW")],
        config,
    )
    .track(&common::req("user-1", "signIn"))
    .unwrap();
    (resp, started.elapsed())
}

#[test]
fn an_infinite_loop_ends_at_the_operation_limit() {
    // A generous time limit, so that the operation limit is what ends it even in a debug build on a busy machine.
    let (resp, took) = limited("loop {}", "[limits]\ntime_limit = \"30s\"\n");
    assert_eq!(resp.state, State::ChallengeRequired);
    assert_eq!(resp.rule_ids, ["runaway", "fine"]);
    assert!(
        resp.errors[0].message.contains("operation limit"),
        "{}",
        resp.errors[0].message
    );
    assert!(took < Duration::from_secs(5), "{took:?}");
}

#[test]
fn an_infinite_loop_ends_at_the_time_limit() {
    let (resp, took) = limited(
        "loop {}",
        "[limits]\nmax_operations = 1000000000000\ntime_limit = \"20ms\"\n",
    );
    assert!(
        resp.errors[0].message.contains("time limit of 20ms"),
        "{}",
        resp.errors[0].message
    );
    assert!(took < Duration::from_secs(5), "{took:?}");
}

#[test]
fn a_huge_string_ends_at_the_size_limit() {
    let (resp, took) = limited(r#"let s = "x"; loop { s += s; }"#, "");
    assert!(
        resp.errors[0].message.contains("exceeds its limit"),
        "{}",
        resp.errors[0].message
    );
    assert!(took < Duration::from_secs(5));
    let (resp, _) = limited(r#"let s = "0123456789".pad(100000000, "x"); ALLOW"#, "");
    assert_eq!(resp.errors.len(), 1, "{resp:?}");
}

#[test]
fn deep_recursion_ends_at_the_call_depth_limit() {
    let (resp, took) = limited("fn f(n) { f(n + 1) } f(0)", "");
    assert!(
        resp.errors[0].message.contains("call depth"),
        "{}",
        resp.errors[0].message
    );
    assert!(took < Duration::from_secs(5));
}

#[test]
fn huge_arrays_and_maps_end_at_their_limits() {
    // A generous time limit, so that a data or operation limit is what ends these even in a debug build.
    let cfg = "[limits]\ntime_limit = \"30s\"\n";
    let (resp, _) = limited("let a = []; loop { a.push(1); }", cfg);
    assert!(
        resp.errors[0].message.contains("exceeds its limit"),
        "{}",
        resp.errors[0].message
    );
    // Rhai checks a map's size when the map is passed on, not on every index assignment, so a map grown in a
    // loop is bounded by the operation limit.
    let (resp, _) = limited(
        "let m = #{}; let i = 0; loop { m[`k${i}`] = i; i += 1; }",
        cfg,
    );
    let msg = &resp.errors[0].message;
    assert!(
        msg.contains("operation limit") || msg.contains("exceeds its limit"),
        "{msg}"
    );
}

/// Peak resident memory of this process, in KiB (Linux).
#[cfg(target_os = "linux")]
fn peak_rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

#[cfg(target_os = "linux")]
#[test]
fn memory_stays_bounded_under_rules_that_try_to_grow_it() {
    // Each of these would take hundreds of MiB to GiB without the limits (the replace alone is 256 MiB).
    let growers = [
        r#"let s = ""; s.pad(16000, "a"); let t = s; s.replace("a", t); ()"#,
        r#"let s = "ab"; loop { s += s; }"#,
        "let a = []; a.pad(100000000, 0); ()",
        "let a = []; for i in 0..1000 { let b = []; b.pad(1000, i); a.push(b); } ()",
        r#"let s = ""; s.pad(16000, "a"); let m = #{}; for i in 0..1000 { m[`${i}`] = s + i; } ()"#,
        "let b = blob(100000000); ()",
    ];
    let rules = RuleSet::from_sources(
        growers
            .iter()
            .enumerate()
            .map(|(i, s)| (format!("grow-{i}"), *s)),
    )
    .unwrap();
    let engine = Engine::builder().ruleset(rules).build().unwrap();
    let before = peak_rss_kib();
    for i in 0..20 {
        let mut req = request();
        req.attributes.idempotency_key = Some(format!("k{i}"));
        let resp = engine.track(&req).unwrap();
        assert_eq!(resp.state, State::ChallengeRequired, "{resp:?}");
    }
    let grown_mib = peak_rss_kib().saturating_sub(before) / 1024;
    assert!(grown_mib < 128, "peak memory grew by {grown_mib} MiB");
}

/// Rust's default stack for spawned threads: every nesting test runs its decisions on one.
const SPAWNED_STACK: usize = 2 * 1024 * 1024;

/// Runs `f` on a new thread with Rust's default spawned-thread stack, so that a stack overflow shows (as an
/// abort of the test binary) however large the test harness's own stack is.
fn on_small_stack<R: Send + 'static>(f: impl FnOnce() -> R + Send + 'static) -> R {
    std::thread::Builder::new()
        .stack_size(SPAWNED_STACK)
        .spawn(f)
        .unwrap()
        .join()
        .unwrap()
}

/// Limits that let a rule build the deepest data its size limits allow (debug builds are slow).
fn deep_config(max_array: usize, max_map: usize) -> String {
    format!(
        "[limits]\ntime_limit = \"60s\"\nmax_operations = 1000000000\nmax_array_size = {max_array}\nmax_map_size = {max_map}\n"
    )
}

/// Every operation of Rhai's standard library that recurses once per nesting level, as a Rhai expression over
/// `a` (a deeply nested value), with what it must end as: `D` the depth error, `ok` a result (`E`, any other
/// error, is never right). The ones that need room beyond the size limits are in [`NESTED_SIZE_OPS`].
const NESTED_OPS: &[(&str, &str, &str)] = &[
    ("eq", "a == a", "D"),
    ("ne", "a != a", "D"),
    ("in", "a in [a]", "D"),
    ("contains", "[a].contains(a)", "D"),
    ("index_of", "[a].index_of(a)", "D"),
    ("to_string", "a.to_string()", "D"),
    ("to_debug", "a.to_debug()", "D"),
    ("print", "print(a)", "D"),
    ("debug", "debug(a)", "D"),
    // Interpolation and `+` with a string fall back to Rhai's own formatting when `to_string` fails.
    ("interpolate", "`${a}`", "ok"),
    ("string-plus", "\"\" + a", "ok"),
    ("plus-string", "a + \"\"", "ok"),
    ("to_json", "#{y: a}.to_json()", "D"),
    ("switch", "switch a { 1 => 2, _ => 3 }", "ok"),
    ("copy", "{ let b = a; let c = b; c.len() }", "ok"),
];

/// Operations on the deepest data that also grow it: the size limits stop them (Rhai's size errors cannot be
/// caught, so each gets its own rule). `dedup` is here because its comparisons need two copies.
const NESTED_SIZE_OPS: &[&str] = &[
    "let b = [a, a]; b.dedup(); ()",
    "let b = [a]; let c = b + b; ()",
    // Rhai checks the size after `+=` when the array is next used.
    "let b = [a]; b += b; b.len()",
    "let b = [a]; b.append(b); ()",
];

/// A rule that nests `levels` containers (`[` an array, `{` a map, in a loop of `n` rounds of `shape`), applies
/// every operation in [`NESTED_OPS`] to the result, and throws a summary (`eq:D ne:D …`).
fn nested_rule(shape: &str, rounds: usize) -> String {
    let wrap: String = shape
        .chars()
        .map(|c| {
            if c == '[' {
                "a = [take(a)]; "
            } else {
                "a = #{x: take(a)}; "
            }
        })
        .collect();
    let mut src = format!("let a = 1; for i in 0..{rounds} {{ {wrap}}}\nlet r = \"\";\n");
    for (name, expr, _) in NESTED_OPS {
        src.push_str(&format!(
            "try {{ let v = {expr}; r += \"{name}:ok \"; }} catch (e) {{ r += if `${{e}}`.contains(\"nested deeper than 64 levels\") {{ \"{name}:D \" }} else {{ \"{name}:E \" }}; }}\n"
        ));
    }
    src.push_str("throw r;");
    src
}

fn expected_summary() -> String {
    NESTED_OPS
        .iter()
        .map(|(name, _, want)| format!("{name}:{want} "))
        .collect()
}

/// Decides with `rule` (and the good rule) under `config` on a 2 MiB thread; returns the rule's error message.
fn decide_on_small_stack(rule: String, config: String) -> String {
    on_small_stack(move || {
        let rules = RuleSet::builder()
            .rule("deep", rule.as_str())
            .rule(GOOD.0, GOOD.1)
            .config_toml(&config)
            .build()
            .unwrap();
        let engine = Engine::builder().ruleset(rules).build().unwrap();
        let resp = engine.track(&request()).unwrap();
        assert_eq!(resp.state, State::Review, "{resp:?}");
        assert_eq!(resp.errors.len(), 1, "{resp:?}");
        resp.errors[0].message.clone()
    })
}

#[test]
fn every_recursing_operation_on_the_deepest_data_the_default_limits_allow_ends_in_time() {
    // Default sizes: 1024 array items and 1024 map entries, nested elements counted in total, so at most 1023
    // arrays, 1023 maps, or 2046 of them alternating (each wrapping level is one item or entry).
    for (shape, rounds) in [("[", 1023), ("{", 1023), ("[{", 1023), ("{[", 1023)] {
        let msg = decide_on_small_stack(nested_rule(shape, rounds), deep_config(1024, 1024));
        assert!(
            msg.ends_with(&expected_summary()),
            "{shape} × {rounds}: {msg}"
        );
    }
    for op in NESTED_SIZE_OPS {
        let rule = format!("let a = 1; for i in 0..1023 {{ a = #{{x: [take(a)]}}; }} {op}");
        let msg = decide_on_small_stack(rule, deep_config(1024, 1024));
        assert!(msg.contains("exceeds its limit"), "{op}: {msg}");
    }
}

#[test]
fn the_deepest_arrays_the_largest_limits_allow_end_in_time() {
    // `max_array_size` at its cap: 8191 nested arrays (mixed with maps at their cap too, 16382 levels, is the
    // same code path and takes most of a minute in a debug build).
    let msg = decide_on_small_stack(nested_rule("[", 8191), deep_config(8192, 8192));
    assert!(msg.ends_with(&expected_summary()), "{msg}");
}

#[test]
fn throwing_or_returning_the_deepest_data_is_a_bounded_rule_error() {
    let build = "let a = 1; for i in 0..1023 { a = #{x: [take(a)]}; }";
    let thrown = decide_on_small_stack(format!("{build} throw a;"), deep_config(1024, 1024));
    assert!(thrown.starts_with("1:"), "{thrown}");
    assert!(thrown.contains("#{\"x\": [#{\"x\": ["), "{thrown}");
    assert!(thrown.len() <= 1024, "{} bytes", thrown.len());
    let returned = decide_on_small_stack(format!("{build} a"), deep_config(1024, 1024));
    assert!(returned.contains("not ALLOW"), "{returned}");
}

#[test]
fn curried_function_pointers_are_load_errors() {
    // A curried value is invisible to Rhai's size check: it could nest data past any depth the size limits
    // bound, and grow past them.
    for source in [
        r#"fn f(x) { x } let g = Fn("f").curry([1]); ()"#,
        r#"fn f(x) { x } let a = [1]; let g = curry(Fn("f"), a); ()"#,
        r#"fn f(x) { x } let g = curry(Fn("f"), 1); ()"#,
    ] {
        let e = RuleSet::from_sources([("c", source)]).unwrap_err();
        assert!(
            e.to_string().contains(
                "`curry` is not available in rules: curried values would escape the size limits"
            ),
            "{source}: {e}"
        );
    }
    // `Fn("curry")` is refused by Rhai itself.
    let msg = decide_on_small_stack(
        r#"fn f(x) { x } let g = Fn("curry"); g.call(Fn("f"), 1)"#.to_owned(),
        String::new(),
    );
    assert!(msg.contains("'curry' is a reserved keyword"), "{msg}");
}

#[test]
fn size_limits_past_their_caps_are_refused() {
    for (key, v) in [("max_array_size", 8193), ("max_map_size", 8193)] {
        let e = RuleSet::builder()
            .rule("r", "ALLOW")
            .config_toml(format!("[limits]\n{key} = {v}\n"))
            .build()
            .unwrap_err();
        assert!(
            e.to_string()
                .contains(&format!("`[limits] {key}` must be at most 8192")),
            "{e}"
        );
    }
    let mut limits = riskgate::SandboxLimits::default();
    limits.max_map_size = 8193;
    let e = RuleSet::builder()
        .rule("r", "ALLOW")
        .sandbox_limits(limits)
        .build()
        .unwrap_err();
    assert!(
        e.to_string()
            .contains("`max_map_size` must be at most 8192"),
        "{e}"
    );
}

/// The expected `to_string` of `1` wrapped in `shape` (outermost first): Rhai's standard formatting.
fn printed(shape: &[bool]) -> String {
    shape.iter().rev().fold("1".to_owned(), |inner, &array| {
        if array {
            format!("[{inner}]")
        } else {
            format!("#{{\"x\": {inner}}}")
        }
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    /// Any nesting of arrays and maps, any recursing operation: the decision comes back, with the right answer
    /// up to 64 levels and the depth error past them.
    #[test]
    fn nesting_shapes_times_operations(
        shape in proptest::collection::vec(any::<bool>(), 0..140),
        op in 0usize..6,
    ) {
        let literal: Vec<&str> = shape.iter().map(|&a| if a { "true" } else { "false" }).collect();
        let build = format!(
            "let a = 1; let shape = [{}]; shape.reverse(); for s in shape {{ if s {{ a = [take(a)]; }} else {{ a = #{{x: take(a)}}; }} }}",
            literal.join(", ")
        );
        let expected = printed(&shape);
        let (expr, want) = match op {
            0 => ("a == a", "true".to_owned()),
            1 => ("a != a", "false".to_owned()),
            2 => ("a in [a]", "true".to_owned()),
            3 => ("a.to_string()", expected.clone()),
            // `dedup` drops a copy if its comparison succeeds, and keeps both if it fails (Rhai's rule).
            4 if shape.len() > 64 => ("{ let b = [a, a]; b.dedup(); b.len() }", "2".to_owned()),
            4 => ("{ let b = [a, a]; b.dedup(); b.len() }", "1".to_owned()),
            _ => ("#{y: a}.to_json()", format!("{{\"y\":{}}}", expected.replace("#{", "{").replace(": ", ":"))),
        };
        let msg = decide_on_small_stack(format!("{build} throw `${{{expr}}}`;"), deep_config(1024, 1024));
        // `#{y: a}` wraps the data in one more map.
        let depth = shape.len() + usize::from(op == 5);
        if depth <= 64 || op == 4 {
            prop_assert_eq!(msg, format!("1:{}: Runtime error: {want}", build.len() + 2));
        } else {
            prop_assert!(msg.contains("arrays and maps nested deeper than 64 levels cannot be"), "{}", msg);
        }
    }
}

#[test]
fn data_nested_past_the_depth_the_sandbox_handles_is_a_depth_limit_error() {
    // A time limit far beyond the rule's cost, so a loaded machine cannot turn the depth error into a timeout.
    let rules = RuleSet::builder()
        .config_toml("[limits]\ntime_limit = \"60s\"\n")
        .rule(
            "deep",
            "let a = []; for i in 0..100 { a = [a]; } if a == a { BLOCK }",
        )
        .build()
        .unwrap();
    let engine = Engine::builder().ruleset(rules).build().unwrap();
    let resp = engine.track(&request()).unwrap();
    assert_eq!(resp.errors.len(), 1, "{:?}", resp.errors);
    assert_eq!(resp.errors[0].kind, riskgate::RuleErrorKind::DepthLimit);
    assert!(
        resp.errors[0]
            .message
            .contains("arrays and maps nested deeper than 64 levels cannot be compared"),
        "{}",
        resp.errors[0].message
    );
}
