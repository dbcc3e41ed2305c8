//! Velocity and distinct counts: windows and their edges, separation by user/IP/device, what counts (every
//! first decision, blocked ones too; never idempotent repeats), window errors.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use riskgate::{Engine, RuleSet, State, TrackAttributes, TrackRequest};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

const T0: u64 = 1_709_283_600; // 2024-03-01T09:00:00Z

fn at(secs: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(T0 + secs)
}

fn req(user: &str, action: &str, ip: Option<&str>, device: Option<&str>) -> TrackRequest {
    TrackRequest {
        user_id: user.into(),
        action: action.into(),
        attributes: TrackAttributes {
            ip_address: ip.map(Into::into),
            device_id: device.map(Into::into),
            ..Default::default()
        },
    }
}

/// An engine with `rules` as `(id, source)`.
fn engine(rules: &[(&str, &str)]) -> Engine {
    common::with_test_store(Engine::builder())
        .ruleset(RuleSet::from_sources(rules.iter().copied()).unwrap())
        .build()
        .unwrap()
}

/// Tracks `r` at `t` and returns the matching rule ids.
fn rules_at(e: &Engine, r: &TrackRequest, t: SystemTime) -> Vec<String> {
    e.track_at(r, t)
        .unwrap()
        .rule_ids
        .iter()
        .map(|id| id.to_string())
        .collect()
}

/// A rule per count value, so a test can read a signal's value from which rule matched.
fn counting(signal: &str, max: i64) -> Vec<(String, String)> {
    (0..=max)
        .map(|n| (format!("n{n}"), format!("if {signal} == {n} {{ ALLOW }}")))
        .collect()
}

fn value_engine(signal: &str) -> Engine {
    value_engine_with(signal, "")
}

/// [`value_engine`] with `config` as its `riskgate.toml`.
fn value_engine_with(signal: &str, config: &str) -> Engine {
    let rules = counting(signal, 12)
        .into_iter()
        .fold(RuleSet::builder(), |b, (id, src)| b.rule(id, src))
        .config_toml(config)
        .build()
        .unwrap();
    common::with_test_store(Engine::builder())
        .ruleset(rules)
        .build()
        .unwrap()
}

/// The value the signal had for this decision.
fn value(e: &Engine, r: &TrackRequest, t: SystemTime) -> i64 {
    let ids = rules_at(e, r, t);
    assert_eq!(ids.len(), 1, "{ids:?}");
    ids[0][1..].parse().unwrap()
}

fn keyed(mut r: TrackRequest, key: &str) -> TrackRequest {
    r.attributes.idempotency_key = Some(key.into());
    r
}

#[test]
fn velocity_counts_earlier_actions_inside_the_window_only() {
    let e = value_engine(r#"velocity("1h")"#);
    let r = req("u1", "withdraw-funds", Some("203.0.113.1"), Some("d1"));
    assert_eq!(value(&e, &r, at(0)), 0, "nothing before the first action");
    assert_eq!(value(&e, &r, at(60)), 1);
    assert_eq!(value(&e, &r, at(120)), 2);
    // At exactly one hour after the first action, the first has left the window: (now - 1h, now].
    assert_eq!(value(&e, &r, at(3_600)), 2);
    assert_eq!(
        value(&e, &r, at(3_659)),
        3,
        "60s, 120s and 3600s are inside"
    );
    assert_eq!(value(&e, &r, at(3_721)), 2, "120s has left at 3720s");
    assert_eq!(value(&e, &r, at(20_000)), 0);
}

#[test]
fn windows_differ_and_each_is_exact() {
    let rules = [
        (
            "short",
            r#"if velocity("30s") == 1 && velocity("10m") == 3 { REVIEW }"#,
        ),
        ("long", r#"if velocity("7d") == 4 { BLOCK }"#),
    ];
    let e = engine(&rules);
    let r = req("u1", "signIn", None, None);
    for t in [0, 86_400, 86_400 + 400, 86_400 + 500] {
        e.track_at(&r, at(t)).unwrap();
    }
    let ids = rules_at(&e, &r, at(86_400 + 510));
    assert_eq!(ids, ["long", "short"]);
}

#[test]
fn users_ips_devices_and_actions_are_counted_apart() {
    let rules = [
        ("user", r#"if velocity("1h") == 2 { REVIEW }"#),
        ("ip", r#"if velocity_ip("1h") == 3 { REVIEW }"#),
        ("device", r#"if velocity_device("1h") == 1 { REVIEW }"#),
    ];
    let e = engine(&rules);
    let ip = Some("198.51.100.7");
    e.track_at(&req("alice", "withdraw-funds", ip, Some("d-a")), at(0))
        .unwrap();
    e.track_at(&req("alice", "withdraw-funds", ip, Some("d-b")), at(1))
        .unwrap();
    e.track_at(&req("bob", "withdraw-funds", ip, Some("d-c")), at(2))
        .unwrap();
    e.track_at(&req("alice", "signIn", ip, Some("d-a")), at(3))
        .unwrap(); // another action code
    e.track_at(
        &req("carol", "withdraw-funds", Some("192.0.2.1"), Some("d-a")),
        at(4),
    )
    .unwrap();
    // alice: 2 earlier withdrawals; this IP: 3 withdrawals (alice, alice, bob); device d-b: 1 (alice).
    let ids = rules_at(&e, &req("alice", "withdraw-funds", ip, Some("d-b")), at(5));
    assert_eq!(ids, ["device", "ip", "user"]);
    // Without an IP or device those counts are 0, and the user's count is unaffected.
    let e2 = value_engine(r#"velocity_ip("1h") + velocity_device("1h") * 10"#);
    assert_eq!(value(&e2, &req("x", "signIn", None, None), at(0)), 0);
    assert_eq!(value(&e2, &req("x", "signIn", None, None), at(1)), 0);
}

#[test]
fn distinct_users_and_devices() {
    let rules = [
        (
            "users-on-ip",
            r#"if distinct_users_on_ip("1h") == 2 { REVIEW }"#,
        ),
        (
            "users-on-device",
            r#"if distinct_users_on_device("1h") == 3 { REVIEW }"#,
        ),
        ("devices", r#"if distinct_devices("1h") == 2 { REVIEW }"#),
    ];
    let e = engine(&rules);
    let ip = Some("198.51.100.7");
    for (t, user, dev) in [
        (0, "a", "d1"),
        (1, "b", "d1"),
        (2, "a", "d1"),
        (3, "c", "d1"),
        (4, "a", "d2"),
    ] {
        e.track_at(&req(user, "signIn", ip, Some(dev)), at(t))
            .unwrap();
    }
    // From this IP: a, b, c (3, so no match); device d1: a, b, c; user a: d1, d2.
    let ids = rules_at(
        &e,
        &req("a", "signIn", Some("192.0.2.9"), Some("d1")),
        at(10),
    );
    assert_eq!(ids, ["devices", "users-on-device"]);
    let e2 = value_engine(r#"distinct_users_on_ip("1h")"#);
    for (t, user) in [(0, "a"), (1, "b"), (4_000, "c")] {
        e2.track_at(&req(user, "signIn", ip, None), at(t)).unwrap();
    }
    assert_eq!(
        value(&e2, &req("d", "signIn", ip, None), at(4_001)),
        1,
        "a and b are older than 1h"
    );
}

#[test]
fn a_full_distinct_set_takes_a_late_member_and_drops_its_oldest_other() {
    // max_per_key = 3: d1, d2, d3 fill the user's devices; d0 arrives late, older than all of them (a replay
    // slightly out of order). It is kept and d1, the oldest other, goes, on every store.
    let e = value_engine_with(r#"distinct_devices("31s")"#, "[signals]\nmax_per_key = 3\n");
    for (t, dev) in [(10, "d1"), (20, "d2"), (30, "d3"), (5, "d0")] {
        e.track_at(&req("u", "signIn", None, Some(dev)), at(t))
            .unwrap();
    }
    // Within (9s, 40s]: d2 and d3, not d0 (at 5s); d1 (at 10s) would make it 3 had it been kept.
    assert_eq!(value(&e, &req("u", "signIn", None, None), at(40)), 2);
    // Within (4s, 35s]: d0, d2, d3.
    assert_eq!(value(&e, &req("u", "signIn", None, None), at(35)), 3);
}

#[test]
fn idempotent_repeats_do_not_count_but_blocked_attempts_do() {
    let e = engine(&[
        (
            "block",
            "//! priority: 10\nif velocity(\"1h\") >= 1 { BLOCK }",
        ),
        (
            "three",
            "//! priority: 20\nif velocity(\"1h\") == 3 { REVIEW }",
        ),
    ]);
    let r = |k: &str| keyed(req("u", "withdraw-funds", None, None), k);
    for s in 0..5 {
        assert_eq!(
            e.track_at(&r("k1"), at(s)).unwrap().state,
            State::Allow,
            "repeat {s}"
        );
    }
    assert_eq!(
        rules_at(&e, &r("k2"), at(10)),
        ["block"],
        "one earlier action, not five"
    );
    assert_eq!(rules_at(&e, &r("k3"), at(11)), ["block"]);
    // k1 once, and the two blocked attempts.
    assert_eq!(rules_at(&e, &r("k4"), at(12)), ["block", "three"]);
}

#[test]
fn a_bad_literal_window_is_a_load_error_naming_it() {
    let err = RuleSet::from_sources([("w", "if velocity(\"1 hour\") > 3 { BLOCK }")]).unwrap_err();
    let d = &err.diagnostics()[0];
    assert_eq!((d.file.as_str(), d.line, d.column), ("w", 1, 13), "{err}");
    assert!(
        d.message.contains("`1 hour`") && d.message.contains("velocity"),
        "{err}"
    );
    let err = RuleSet::from_sources([("w", "velocity(\"1h\", 2)")]).unwrap_err();
    assert!(err.to_string().contains("takes one argument"), "{err}");
}

#[test]
fn a_bad_computed_window_is_a_rule_error_naming_it() {
    let rules = [(
        "computed",
        r#"let w = if custom.fast == true { "5 min" } else { "30d" }; if velocity(w) > 3 { BLOCK }"#,
    )];
    let e = engine(&rules);
    let mut r = req("u", "signIn", None, None);
    let resp = e.track_at(&r, at(0)).unwrap();
    assert_eq!(resp.errors.len(), 1);
    assert!(resp.errors[0].message.contains("30d"), "{:?}", resp.errors);
    assert!(
        resp.errors[0].message.contains("max_window"),
        "{:?}",
        resp.errors
    );
    r.attributes.custom.insert("fast".into(), true.into());
    let resp = e.track_at(&r, at(1)).unwrap();
    assert!(
        resp.errors[0].message.contains("`5 min`"),
        "{:?}",
        resp.errors
    );
    assert_eq!(
        resp.state,
        State::ChallengeRequired,
        "on_rule_error decides"
    );
}

#[test]
fn computed_windows_keep_max_window_of_history() {
    let rules = RuleSet::builder()
        .rule(
            "computed",
            r#"let w = "2h"; if velocity(w) == 1 { REVIEW }"#,
        )
        .config_toml("[signals]\nmax_window = \"3h\"\n")
        .build()
        .unwrap();
    let e = common::with_test_store(Engine::builder())
        .ruleset(rules)
        .build()
        .unwrap();
    let r = req("u", "signIn", None, None);
    e.track_at(&r, at(0)).unwrap();
    assert_eq!(e.track_at(&r, at(5_000)).unwrap().state, State::Review);
}

#[test]
fn a_flood_of_unique_keys_stays_at_the_bound() {
    // The in-memory store's own bound (capacity, eviction on insert, process memory): on Redis, actions and
    // history are bounded by native expiry instead (tests/redis_store.rs).
    if !common::in_memory() {
        return;
    }
    let rules = RuleSet::builder()
        .rule(
            "v",
            r#"if velocity("1h") > 100 || distinct_devices("1h") > 100 || is_new_device() { () }"#,
        )
        .config_toml("[signals]\nmax_keys = 500\nmax_per_key = 8\n[idempotency]\ncapacity = 100\n")
        .build()
        .unwrap();
    let e = common::with_test_store(Engine::builder())
        .ruleset(rules)
        .build()
        .unwrap();
    for i in 0..5_000u32 {
        let ip = format!("10.{}.{}.{}", i >> 16, (i >> 8) & 255, i & 255);
        let r = req(
            &format!("user-{i}"),
            "signIn",
            Some(&ip),
            Some(&format!("device-{i}")),
        );
        e.track_at(&r, at(u64::from(i))).unwrap();
        // Three tables, each at most 500 keys.
        assert!(
            e.history_keys() <= 1_500,
            "{} keys after {i}",
            e.history_keys()
        );
    }
    assert!(
        e.history_keys() >= 1_000,
        "the bound is reached, not undershot"
    );
    // One hot key: its series stays at max_per_key, and counts saturate there.
    let hot = req("hot", "signIn", Some("192.0.2.1"), Some("dev-hot"));
    for i in 0..50u64 {
        e.track_at(&hot, at(6_000 + i)).unwrap();
    }
    let probe = RuleSet::builder()
        .rule("n", r#"if velocity("1h") == 8 { REVIEW }"#)
        .config_toml("[signals]\nmax_keys = 500\nmax_per_key = 8\n")
        .build()
        .unwrap();
    e.swap_ruleset(probe);
    assert_eq!(e.track_at(&hot, at(6_100)).unwrap().state, State::Review);
}

#[test]
fn idle_keys_are_dropped_after_the_longest_window() {
    // The in-memory store's own bound (capacity, eviction on insert, process memory): on Redis, actions and
    // history are bounded by native expiry instead (tests/redis_store.rs).
    if !common::in_memory() {
        return;
    }
    let rules = RuleSet::from_sources([("v", r#"if velocity("10m") > 100 { BLOCK }"#)]).unwrap();
    let e = common::with_test_store(Engine::builder())
        .ruleset(rules)
        .build()
        .unwrap();
    for i in 0..200u64 {
        e.track_at(&req(&format!("u{i}"), "signIn", None, None), at(i))
            .unwrap();
    }
    let busy = e.history_keys();
    assert!(busy >= 400, "{busy}");
    assert_eq!(busy, 400, "a velocity series and a known entry per user");
    // An hour later every earlier series is idle: new keys sweep them out as they arrive. What users made
    // known is kept longer (`[signals] known_for`).
    for i in 0..200u64 {
        e.track_at(
            &req(&format!("late{i}"), "signIn", None, None),
            at(3_600 + i),
        )
        .unwrap();
    }
    assert_eq!(
        e.history_keys(),
        200 + 400,
        "old series dropped, old known entries kept"
    );
}

#[test]
fn without_windowed_rules_no_series_are_kept() {
    // Counts the in-memory tables' keys (`history_keys`); on Redis the same holds of the keys a decision
    // writes, measured in tests/redis_store.rs.
    if !common::in_memory() {
        return;
    }
    let e = engine(&[("none", "if user_id == \"x\" { BLOCK }")]);
    for i in 0..100u64 {
        e.track_at(
            &req(&format!("u{i}"), "signIn", Some("192.0.2.1"), Some("d")),
            at(i),
        )
        .unwrap();
    }
    // Only what users made known (one key per user) is kept.
    assert_eq!(e.history_keys(), 100);
}

#[test]
fn concurrent_actions_are_all_counted() {
    let e = engine(&[(
        "n",
        r#"if velocity("1h") == 400 && distinct_devices("1h") == 2 { REVIEW }"#,
    )]);
    std::thread::scope(|s| {
        for t in 0..2u64 {
            let e = e.clone();
            s.spawn(move || {
                for i in 0..200u64 {
                    let r = keyed(
                        req("u", "withdraw-funds", None, Some(&format!("d{t}"))),
                        &format!("{t}-{i}"),
                    );
                    e.track_at(&r, at(i)).unwrap();
                }
            });
        }
    });
    let last = keyed(req("u", "withdraw-funds", None, Some("d0")), "last");
    assert_eq!(e.track_at(&last, at(300)).unwrap().state, State::Review);
}

#[test]
fn lowering_max_keys_evicts_a_few_keys_per_decision_not_all_at_once() {
    // The in-memory store's own bound (capacity, eviction on insert, process memory): on Redis, actions and
    // history are bounded by native expiry instead (tests/redis_store.rs).
    if !common::in_memory() {
        return;
    }
    let load = |max_keys: usize| {
        RuleSet::builder()
            .rule("v", r#"if velocity("1h") > 100 { BLOCK }"#)
            .config_toml(format!("[signals]\nmax_keys = {max_keys}\n"))
            .build()
            .unwrap()
    };
    let e = common::with_test_store(Engine::builder())
        .ruleset(load(100_000))
        .build()
        .unwrap();
    const USERS: u64 = 20_000;
    for i in 0..USERS {
        e.track_at(&req(&format!("u{i}"), "signIn", None, None), at(i / 10))
            .unwrap();
    }
    // A velocity series and a known entry per user.
    assert_eq!(e.history_keys(), 2 * USERS as usize);
    e.swap_ruleset(load(1));
    // One decision adds a key to each table and evicts at most 16 from each: the table shrinks over the
    // decisions that follow instead of inside this one.
    let started = std::time::Instant::now();
    e.track_at(&req("new-0", "signIn", None, None), at(USERS / 10))
        .unwrap();
    let first = started.elapsed();
    assert_eq!(e.history_keys(), 2 * (USERS as usize + 1 - 16));
    assert!(first < Duration::from_millis(200), "{first:?}");
    let mut n = 1;
    while e.history_keys() > 2 {
        e.track_at(
            &req(&format!("new-{n}"), "signIn", None, None),
            at(USERS / 10),
        )
        .unwrap();
        n += 1;
        assert!(
            n <= USERS / 15 + 2,
            "not converging: {} keys",
            e.history_keys()
        );
    }
    // Back at the bound: one key per table, the newest.
    assert_eq!(e.history_keys(), 2);
    assert_eq!(n, (USERS + 1).div_ceil(15));
}

/// Spellings of 1.2.3.4: dotted, IPv4-mapped IPv6 in dotted and hex form, long and upper-case.
pub const V4_SPELLINGS: [&str; 6] = [
    "1.2.3.4",
    "::ffff:1.2.3.4",
    "::ffff:102:304",
    "0:0:0:0:0:ffff:1.2.3.4",
    "::FFFF:0102:0304",
    "0000:0000:0000:0000:0000:ffff:0102:0304",
];

/// Eight spellings of 2001:db8::1: compressed, upper-case, leading zeros, full form, mixed.
pub const V6_SPELLINGS: [&str; 8] = [
    "2001:db8::1",
    "2001:DB8::1",
    "2001:0db8::1",
    "2001:db8:0:0:0:0:0:1",
    "2001:0db8:0000:0000:0000:0000:0000:0001",
    "2001:db8::0:1",
    "2001:db8:0::1",
    "2001:0DB8:0:0::0:0001",
];

#[test]
fn velocity_ip_counts_an_address_however_it_is_spelt() {
    for spellings in [&V4_SPELLINGS[..], &V6_SPELLINGS[..]] {
        let e = value_engine(r#"velocity_ip("1h")"#);
        for (i, ip) in spellings.iter().enumerate() {
            let r = req(&format!("u{i}"), "signIn", Some(ip), None);
            assert_eq!(value(&e, &r, at(i as u64)), i as i64, "{ip}");
        }
    }
}

#[test]
fn distinct_users_on_ip_counts_an_address_however_it_is_spelt() {
    for spellings in [&V4_SPELLINGS[..], &V6_SPELLINGS[..]] {
        let e = value_engine(r#"distinct_users_on_ip("1h")"#);
        for (i, ip) in spellings.iter().enumerate() {
            let r = req(&format!("u{i}"), "signIn", Some(ip), None);
            assert_eq!(value(&e, &r, at(i as u64)), i as i64, "{ip}");
        }
    }
}

#[test]
fn an_ipv4_compatible_address_is_its_own_ipv6_address() {
    // `::1.2.3.4` (deprecated IPv4-compatible, RFC 4291) is the IPv6 address ::102:304, not 1.2.3.4.
    let e = value_engine(r#"velocity_ip("1h")"#);
    assert_eq!(
        value(&e, &req("a", "signIn", Some("1.2.3.4"), None), at(0)),
        0
    );
    assert_eq!(
        value(&e, &req("b", "signIn", Some("::1.2.3.4"), None), at(1)),
        0
    );
    assert_eq!(
        value(&e, &req("c", "signIn", Some("::102:304"), None), at(2)),
        1
    );
    assert_eq!(
        value(&e, &req("d", "signIn", Some("::ffff:1.2.3.4"), None), at(3)),
        1
    );
}

#[test]
fn max_bytes_is_set_in_signals_and_cannot_be_zero() {
    let e = RuleSet::builder()
        .rule("v", r#"if velocity("1h") > 3 { BLOCK }"#)
        .config_toml("[signals]\nmax_bytes = 0\n")
        .build()
        .unwrap_err();
    assert_eq!(
        e.to_string(),
        "riskgate.toml:2:1: `[signals] max_bytes` must be at least 1"
    );
    // A budget smaller than one key keeps nothing: every count is 0, and memory stays at the budget (the
    // in-memory tables' bound; Redis bounds history by expiry and `maxmemory`).
    if !common::in_memory() {
        return;
    }
    let rules = RuleSet::builder()
        .rule("v", r#"if velocity("1h") > 0 { BLOCK }"#)
        .config_toml("[signals]\nmax_bytes = 1\n")
        .build()
        .unwrap();
    let e = common::with_test_store(Engine::builder())
        .ruleset(rules)
        .build()
        .unwrap();
    let r = req("u", "signIn", None, None);
    for i in 0..5 {
        assert_eq!(e.track_at(&r, at(i)).unwrap().state, State::Allow);
    }
    assert_eq!(e.history_keys(), 0);
    assert_eq!(e.history_bytes(), 0);
}
