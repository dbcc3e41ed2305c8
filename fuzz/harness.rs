//! What each fuzz target runs, and what it checks. Shared by the cargo-fuzz targets (`fuzz/fuzz_targets/`)
//! and by `tests/fuzz_corpus.rs`, which replays every committed corpus file through the same functions on the
//! stable toolchain.
//!
//! Inputs are raw bytes rather than `arbitrary` structures: every target feeds a text format (JSON lines, Rhai
//! source, list files, TOML), so the bytes *are* the structure, libFuzzer's dictionary-free mutations work on
//! them directly, and the committed seeds stay readable.
//!
//! A panic here is a finding: either riskgate panicked, or one of the checked properties does not hold.

#![allow(dead_code)] // each fuzz target uses one of these functions

use riskgate::replay::{Outcome, Replayer};
use riskgate::{Engine, FakeClock, RuleSet, State, TrackRequest, TrackResponse};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime};

/// Inputs beyond this are skipped: the targets look for logic bugs, not for how long a 1 MiB rule compiles.
const MAX_INPUT: usize = 64 * 1024;

fn text(data: &[u8]) -> Option<String> {
    (data.len() <= MAX_INPUT).then(|| String::from_utf8_lossy(data).into_owned())
}

/// A fixed instant (2024-03-01T00:00:00Z), so runs do not depend on the wall clock.
fn epoch() -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(1_709_251_200)
}

// ---------------------------------------------------------------------------------------------------------
// replay_line: JSON lines through the replay parser and `track`.

const REPLAY_RULES: &[(&str, &str)] = &[
    (
        "velocity",
        "//! priority: 20\nif velocity(\"1h\") > 3 { REVIEW }",
    ),
    (
        "new-device",
        "//! actions: signIn\nif device_id != () && is_new_device() { CHALLENGE_REQUIRED }",
    ),
    (
        "listed-ip",
        "//! priority: 1\nif ip_address != () && in_list(\"bad\", ip_address) { BLOCK }",
    ),
    (
        "amount",
        "//! actions: withdraw-funds\nif custom.amount > 1000 { REVIEW } else if custom.amount == () { () }",
    ),
    ("shadow", "//! mode: shadow\nBLOCK"),
];

const REPLAY_CONFIG: &str = r#"
[idempotency]
capacity = 4096
[challenge]
url = "https://auth.example.test/challenge"
"#;

fn replayer() -> &'static Mutex<Replayer> {
    static R: OnceLock<Mutex<Replayer>> = OnceLock::new();
    R.get_or_init(|| {
        let mut b = RuleSet::builder()
            .config_toml(REPLAY_CONFIG)
            .list("bad", "203.0.113.0/24\n2001:db8::/32\n");
        for (id, src) in REPLAY_RULES {
            b = b.rule(*id, *src);
        }
        let rules = b.build().unwrap();
        Mutex::new(Replayer::new(Engine::builder().ruleset(rules)).unwrap())
    })
}

/// Each `\n`-separated line of `data` through [`Replayer::line`] (one engine for the whole run, so lines can
/// refer to actions earlier inputs tracked).
///
/// Checks: every output line is one JSON object; a refused line is `{"line":N,"error":{"code","message"}}`
/// with the error's code, and leaves the number of stored actions unchanged; a tracked line replayed at once
/// returns the same action (same key, state and rule ids) without storing another one.
pub fn replay_line(data: &[u8]) {
    if data.len() > MAX_INPUT {
        return;
    }
    let mut r = replayer().lock().unwrap_or_else(|p| p.into_inner());
    for (i, line) in data.split(|&b| b == b'\n').enumerate() {
        let n = i as u64 + 1;
        let before = r.engine().stored_actions();
        let Some(out) = r.line(n, line) else {
            assert!(line.iter().all(u8::is_ascii_whitespace));
            continue;
        };
        let json: serde_json::Value = serde_json::from_str(&out.json)
            .unwrap_or_else(|e| panic!("output is not JSON ({e}): {}", out.json));
        assert!(json.is_object(), "{}", out.json);
        assert!(!out.json.contains('\n'), "{}", out.json);
        match &out.outcome {
            Outcome::Refused(e) => {
                assert_eq!(json["line"], n, "{}", out.json);
                assert_eq!(json["error"]["code"], e.code(), "{}", out.json);
                assert!(json["error"]["message"]
                    .as_str()
                    .is_some_and(|m| !m.is_empty()));
                assert_eq!(
                    r.engine().stored_actions(),
                    before,
                    "a refused line stored something"
                );
            }
            Outcome::Tracked(first) => {
                check_response(first);
                let again = r.line(n, line);
                match again.map(|o| o.outcome) {
                    Some(Outcome::Tracked(second)) => assert_same_action(first, &second, line),
                    other => panic!("a repeat of a tracked line gave {other:?}"),
                }
            }
            _ => {}
        }
    }
}

fn check_response(resp: &TrackResponse) {
    assert!(!resp.idempotency_key.is_empty());
    assert_eq!(resp.priority_rule_id.as_ref(), resp.rule_ids.first());
    // A token exists exactly when the first decision was CHALLENGE_REQUIRED (the state may have moved on since).
    if resp.state == State::ChallengeRequired {
        assert!(resp.token.is_some(), "{resp:?}");
    }
    if resp.token.is_some() {
        assert!(
            matches!(
                resp.state,
                State::ChallengeRequired | State::ChallengeSucceeded | State::ChallengeFailed
            ),
            "{resp:?}"
        );
    }
    for e in &resp.errors {
        assert!(!e.message.is_empty());
        assert!(!e.message.contains("rule panicked"), "{}", e.message);
    }
}

fn assert_same_action(first: &TrackResponse, second: &TrackResponse, line: &[u8]) {
    let has_key = serde_json::from_slice::<serde_json::Value>(line)
        .ok()
        .is_some_and(|v| v["attributes"]["idempotencyKey"].is_string());
    if has_key {
        assert_eq!(first.idempotency_key, second.idempotency_key);
        assert_eq!(first.state, second.state);
        assert_eq!(first.rule_ids, second.rule_ids);
        assert_eq!(first.token, second.token);
    }
}

// ---------------------------------------------------------------------------------------------------------
// rule_source: arbitrary Rhai source as a rule, under the production sandbox limits.

fn probe_requests() -> Vec<TrackRequest> {
    let mut a = TrackRequest::new("user-1", "signIn");
    a.attributes.idempotency_key = Some("k1".into());
    a.attributes.ip_address = Some("203.0.113.7".into());
    a.attributes.device_id = Some("device-1".into());
    a.attributes.user_agent = Some("Mozilla/5.0 (X11; Linux x86_64) Firefox/120.0".into());
    a.attributes.email = Some("a@example.com".into());
    a.attributes.custom.insert("amount".into(), 1500i64.into());
    a.attributes.custom.insert("ratio".into(), 0.5f64.into());
    a.attributes.custom.insert("crypto".into(), true.into());
    a.attributes.custom.insert("dest".into(), "wallet-9".into());
    let mut b = TrackRequest::new("user-2", "withdraw-funds");
    b.attributes.idempotency_key = Some("k2".into());
    vec![a, b]
}

/// Where an input splits into several rules: a line holding only `---`.
const RULE_SEPARATOR: &str = "\n---\n";

/// The most rules one input becomes (the rest of the input stays in the last one).
const MAX_RULES: usize = 4;

/// The default time limit of one rule, and the factor within which a decision must return per interpreted
/// rule (see README, "Failure semantics").
const TIME_LIMIT: Duration = Duration::from_millis(10);
const TIME_FACTOR: u32 = 3;

/// Loads `data` as up to four rules (`fuzz-0` … `fuzz-3`, split at lines holding `---`; the odd ones in shadow
/// mode) next to a rule that always matches, with the default limits, and decides the probe requests: with
/// rules compiled to native code, interpreted, and without the shadow rules.
///
/// Checks: loading either succeeds or reports diagnostics that name a fuzz rule, alike on both paths; `track`
/// never fails for a valid request whatever the rules do; no rule panics; each decision returns within 3× the
/// time limit per rule; compiled and interpreted rules decide alike, and shadow rules never change a
/// decision (the state and the enforce rules that matched), unless a time limit (wall clock, so not
/// repeatable) was involved.
pub fn rule_source(data: &[u8]) {
    let Some(source) = text(data) else { return };
    let parts: Vec<&str> = source.splitn(MAX_RULES, RULE_SEPARATOR).collect();
    let build = |compile: bool, shadows: bool| {
        let mut b = RuleSet::builder()
            .compile_rules(compile)
            .rule("zz-always", "//! priority: 90\nALLOW");
        for (i, part) in parts.iter().enumerate() {
            if i % 2 == 1 {
                if shadows {
                    b = b.rule(format!("fuzz-{i}"), format!("//! mode: shadow\n{part}"));
                }
            } else {
                b = b.rule(format!("fuzz-{i}"), *part);
            }
        }
        b.build()
    };
    let compiled = match build(true, true) {
        Ok(r) => r,
        Err(e) => {
            assert!(!e.diagnostics().is_empty(), "{e}");
            for d in e.diagnostics() {
                assert!(d.file.starts_with("fuzz-"), "{d}");
                assert!(!d.message.is_empty());
            }
            assert!(
                build(false, true).is_err(),
                "loads interpreted but not compiled"
            );
            return;
        }
    };
    let interpreted = build(false, true).unwrap();
    let unshadowed = build(false, false).unwrap();
    let decide = |rules: RuleSet| -> Vec<TrackResponse> {
        // A compiled rule can fall back to the interpreter: count every rule.
        let budgets = rules.len() as u32;
        // Each interpreted rule has its own budget; a few milliseconds more for the rest of `track` (a debug
        // build replaying the corpus).
        let bound = TIME_LIMIT * TIME_FACTOR * budgets + Duration::from_millis(20);
        let engine = |rules: RuleSet| {
            Engine::builder()
                .ruleset(rules)
                .clock(FakeClock::at(epoch()))
                .build()
                .unwrap()
        };
        let first = engine(rules.clone());
        probe_requests()
            .iter()
            .map(|req| {
                let started = Instant::now();
                let resp = first.track_at(req, epoch()).unwrap();
                let took = started.elapsed();
                if took >= bound {
                    // A loaded machine can stall a thread past the bound once; an overrun repeats. Time the
                    // same decision again on a fresh engine.
                    let again = engine(rules.clone());
                    let started = Instant::now();
                    again.track_at(req, epoch()).unwrap();
                    let retook = started.elapsed();
                    assert!(
                        retook < bound,
                        "a decision took {took:?}, then {retook:?} (bound {bound:?}): {resp:?}"
                    );
                }
                check_response(&resp);
                assert!(resp.state.is_decision());
                assert!(resp
                    .errors
                    .iter()
                    .all(|e| e.rule_id.as_str().starts_with("fuzz-")));
                resp
            })
            .collect()
    };
    let a = decide(compiled);
    let b = decide(interpreted);
    let c = decide(unshadowed);
    let timed = |r: &[TrackResponse]| {
        r.iter()
            .flat_map(|x| &x.errors)
            .any(|e| e.message.contains("time limit"))
    };
    if !timed(&a) && !timed(&b) {
        for (x, y) in a.iter().zip(&b) {
            assert_eq!(x.state, y.state, "compiled vs interpreted: {x:?} {y:?}");
            assert_eq!(x.rule_ids, y.rule_ids, "compiled vs interpreted");
            assert_eq!(x.shadow_rule_ids, y.shadow_rule_ids);
            assert_eq!(x.errors, y.errors, "compiled vs interpreted");
        }
    }
    if !timed(&b) && !timed(&c) {
        for (x, y) in b.iter().zip(&c) {
            assert_eq!(
                x.state, y.state,
                "a shadow rule changed the decision: {x:?} {y:?}"
            );
            assert_eq!(x.rule_ids, y.rule_ids, "a shadow rule changed the decision");
        }
    }
}

// ---------------------------------------------------------------------------------------------------------
// list_file: list files and CIDR parsing, checked against a plain reference.

/// A list entry as the reference reads it.
enum RefEntry {
    Range(u128, u128, bool),
    Exact(String),
}

/// IPv4 addresses (and IPv4-mapped IPv6 ones) as `(value, true)`, IPv6 as `(value, false)`.
fn ref_addr(ip: std::net::IpAddr) -> (u128, bool) {
    match ip {
        std::net::IpAddr::V4(a) => (u128::from(u32::from(a)), true),
        std::net::IpAddr::V6(a) => match a.to_ipv4_mapped() {
            Some(v4) => (u128::from(u32::from(v4)), true),
            None => (u128::from(a), false),
        },
    }
}

fn to_ip(v: u128, v4: bool) -> std::net::IpAddr {
    if v4 {
        std::net::IpAddr::V4(std::net::Ipv4Addr::from(v as u32))
    } else {
        std::net::IpAddr::V6(std::net::Ipv6Addr::from(v))
    }
}

/// The reference reading of one entry, for a list the engine accepted.
fn ref_entry(entry: &str) -> RefEntry {
    let (addr, prefix) = match entry.split_once('/') {
        Some((a, p)) => (a, Some(p)),
        None => (entry, None),
    };
    let Ok(ip) = addr.parse::<std::net::IpAddr>() else {
        return RefEntry::Exact(entry.to_owned());
    };
    let (v, v4) = ref_addr(ip);
    let width = if v4 { 32 } else { 128 };
    let bits: u32 = prefix.map_or(width, |p| p.parse().unwrap_or(width));
    let host = width - bits;
    let size_mask = if host >= 128 {
        u128::MAX
    } else {
        (1u128 << host) - 1
    };
    let start = v & !size_mask;
    RefEntry::Range(start, start | size_mask, v4)
}

/// Loads `data` as list `fuzz` and asks `in_list` about every entry's edges and neighbours.
///
/// Checks: loading never panics, and a rejected list names a line; for an accepted list, membership of each
/// probed address and string agrees with a linear scan over the entries read the plain way (a range is
/// `[start, end]` after masking the host bits; IPv4-mapped IPv6 counts as IPv4), so range merging and binary
/// search cannot lose or invent members.
pub fn list_file(data: &[u8]) {
    let Some(text) = text(data) else { return };
    let rules = RuleSet::builder()
        .list("fuzz", text.as_str())
        .rule("hit", "if in_list(\"fuzz\", custom.v) { BLOCK }")
        .config_toml("[idempotency]\ncapacity = 100000\n")
        .build();
    let rules = match rules {
        Ok(r) => r,
        Err(e) => {
            let mut on_list = 0;
            for d in e.diagnostics() {
                if d.file == "lists/fuzz.txt" {
                    on_list += 1;
                    assert!(d.line >= 1, "{d}");
                    assert!(!d.message.is_empty());
                } else {
                    // The rule that reads the rejected list says so too.
                    assert_eq!(d.file, "hit", "{d}");
                }
            }
            assert!(on_list > 0, "{e}");
            return;
        }
    };
    let entries: Vec<RefEntry> = text
        .lines()
        .map(|l| l.split('#').next().unwrap_or("").trim())
        .filter(|e| !e.is_empty())
        .map(ref_entry)
        .collect();
    let mut probes: Vec<String> = Vec::new();
    for e in entries.iter().take(64) {
        match e {
            RefEntry::Range(s, t, v4) => {
                let top = if *v4 { u128::from(u32::MAX) } else { u128::MAX };
                for v in [
                    Some(*s),
                    Some(*t),
                    s.checked_sub(1),
                    t.checked_add(1).filter(|v| *v <= top),
                ]
                .into_iter()
                .flatten()
                {
                    probes.push(to_ip(v, *v4).to_string());
                    if *v4 {
                        probes.push(format!("::ffff:{}", to_ip(v, true)));
                    }
                }
            }
            RefEntry::Exact(s) => {
                probes.push(s.clone());
                probes.push(format!("{s}x"));
            }
        }
    }
    probes.extend(["0.0.0.0", "255.255.255.255", "::", "::1", "10.0.0.1"].map(String::from));
    let engine = Engine::builder()
        .ruleset(rules)
        .clock(FakeClock::at(epoch()))
        .build()
        .unwrap();
    for (i, probe) in probes.iter().enumerate() {
        let expected = match probe.parse::<std::net::IpAddr>() {
            Ok(ip) => {
                let (v, v4) = ref_addr(ip);
                entries.iter().any(
                    |e| matches!(e, RefEntry::Range(s, t, w) if *w == v4 && *s <= v && v <= *t),
                )
            }
            Err(_) => entries
                .iter()
                .any(|e| matches!(e, RefEntry::Exact(s) if s == probe)),
        };
        let mut req = TrackRequest::new("u", "signIn");
        req.attributes.idempotency_key = Some(format!("p{i}"));
        req.attributes
            .custom
            .insert("v".into(), probe.as_str().into());
        if req.validate().is_err() {
            continue;
        }
        let resp = engine.track_at(&req, epoch()).unwrap();
        assert!(resp.errors.is_empty(), "{resp:?}");
        assert_eq!(
            resp.state == State::Block,
            expected,
            "in_list(`{probe}`) disagrees with the reference"
        );
    }
}

// ---------------------------------------------------------------------------------------------------------
// config_toml: `riskgate.toml`.

/// Loads `data` as `riskgate.toml` next to one rule.
///
/// Checks: a rejected file reports diagnostics on `riskgate.toml` with a line inside the file (or 0); an
/// accepted one builds an engine that decides a request.
pub fn config_toml(data: &[u8]) {
    let Some(text) = text(data) else { return };
    let built = RuleSet::builder()
        .rule("r", "if custom.x == 1 { REVIEW }")
        .config_toml(text.as_str())
        .build();
    match built {
        Ok(rules) => {
            let engine = Engine::builder()
                .ruleset(rules)
                .clock(FakeClock::at(epoch()))
                .build()
                .unwrap();
            let resp = engine
                .track_at(&TrackRequest::new("u", "signIn"), epoch())
                .unwrap();
            assert!(resp.state.is_decision());
        }
        Err(e) => {
            let lines = text.lines().count() + 1;
            assert!(!e.diagnostics().is_empty(), "{e}");
            for d in e.diagnostics() {
                assert_eq!(d.file, "riskgate.toml", "{d}");
                assert!(d.line <= lines, "{d} (the file has {lines} lines)");
                assert!(!d.message.is_empty());
            }
            let _ = e.to_string();
        }
    }
}
