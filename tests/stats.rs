//! `Engine::stats()`: decisions by state, per-rule matches and errors, evaluation time; across threads and
//! ruleset swaps.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{engine_with_config, req, ruleset};
use riskgate::Stats;
use std::time::Duration;

const RULES: &[(&str, &str)] = &[
    ("big", "//! priority: 10\nif custom.amount > 100 { BLOCK }"),
    ("mid", "//! priority: 20\nif custom.amount > 10 { REVIEW }"),
    (
        "shadow",
        "//! mode: shadow\nif custom.amount > 1 { CHALLENGE_REQUIRED }",
    ),
    (
        "broken",
        "//! priority: 30\nif custom.amount == 3 { let x = 1; x.ends_with(\"1\") }",
    ),
];

fn rule(s: &Stats, id: &str) -> (u64, u64) {
    let r = s.rules.get(id).copied().unwrap_or_default();
    (r.matches, r.errors)
}

#[test]
fn stats_count_first_decisions_by_state_and_rule() {
    let e = engine_with_config(RULES, "on_rule_error = \"skip\"\n");
    assert_eq!(e.stats().decisions, 0);
    assert_eq!(e.stats().evaluation_time, Duration::ZERO);
    for (i, amount) in [0, 3, 50, 500, 500, 2].into_iter().enumerate() {
        e.track(
            &req("u", "pay")
                .idempotency_key(format!("k{i}"))
                .custom("amount", amount),
        )
        .unwrap();
    }
    // A repeat, a refused request and an explanation are not decisions.
    e.track(&req("u", "pay").idempotency_key("k0").custom("amount", 0))
        .unwrap();
    assert!(e
        .track(&req("u", "pay").idempotency_key("k0").custom("amount", 9))
        .is_err());
    assert!(e.track(&req("", "pay")).is_err());
    e.explain(&req("u", "pay").custom("amount", 500)).unwrap();
    let s = e.stats();
    assert_eq!(s.decisions, 6);
    assert_eq!(s.decisions, e.decisions());
    let b = s.by_state;
    assert_eq!(
        (b.allow, b.challenge_required, b.review, b.block),
        (3, 0, 1, 2)
    );
    assert_eq!(rule(&s, "big"), (2, 0));
    assert_eq!(rule(&s, "mid"), (3, 0));
    assert_eq!(rule(&s, "shadow"), (5, 0));
    assert_eq!(rule(&s, "broken"), (0, 1));
    assert_eq!(s.rules.len(), 4);
    assert!(s.evaluation_time > Duration::ZERO);
}

#[test]
fn stats_sum_every_thread() {
    let e = engine_with_config(RULES, "");
    std::thread::scope(|scope| {
        for t in 0..8 {
            let e = e.clone();
            scope.spawn(move || {
                for i in 0..250 {
                    e.track(
                        &req(&format!("u{t}"), "pay")
                            .custom("amount", if i % 2 == 0 { 500 } else { 0 }),
                    )
                    .unwrap();
                }
            });
        }
    });
    let s = e.stats();
    assert_eq!(s.decisions, 2000);
    assert_eq!((s.by_state.block, s.by_state.allow), (1000, 1000));
    assert_eq!(rule(&s, "big"), (1000, 0));
}

#[test]
fn per_rule_counts_survive_ruleset_swaps() {
    let e = engine_with_config(RULES, "");
    e.track(&req("u", "pay").custom("amount", 500)).unwrap();
    e.swap_ruleset(ruleset(
        &[
            ("big", "if custom.amount > 100 { BLOCK }"),
            ("new", "if custom.amount > 0 { REVIEW }"),
        ],
        "",
    ));
    e.track(&req("u", "pay").custom("amount", 500)).unwrap();
    let s = e.stats();
    assert_eq!(
        rule(&s, "big"),
        (2, 0),
        "the same rule id over both rulesets"
    );
    assert_eq!(
        rule(&s, "mid"),
        (1, 0),
        "a rule of the replaced set keeps its counts"
    );
    assert_eq!(rule(&s, "new"), (1, 0));
    assert_eq!(s.by_state.block, 2);
    // Many swaps keep the totals exact.
    for _ in 0..50 {
        e.swap_ruleset(ruleset(&[("big", "if custom.amount > 100 { BLOCK }")], ""));
        e.track(&req("u", "pay").custom("amount", 500)).unwrap();
    }
    let s = e.stats();
    assert_eq!(rule(&s, "big"), (52, 0));
    assert_eq!(rule(&s, "mid"), (1, 0));
}
