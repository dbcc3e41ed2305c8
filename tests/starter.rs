//! The starter ruleset (`starter/`) on a simulated sign-in log it was not tuned on: at least 99% of the
//! attacks of every attacker model and overall are caught, and at most 3% of genuine events (and of genuine
//! sign-ins) meet friction. Prints the measured table, and `rba_score()` alone at the starter's threshold on the
//! same stream.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use riskgate::replay::{Labels, Outcome, Replayer};
use riskgate::simulate::{simulate, Params};
use riskgate::{Engine, RuleSet};
use std::collections::BTreeMap;

const STARTER: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/starter");

/// Seed 11 was never used to choose a threshold (the starter's were chosen on seed 1).
fn params() -> Params {
    let mut p = Params::default();
    p.seed = 11;
    p.users = 300;
    p.days = 35;
    p.warmup_days = 14;
    p.naive = 150;
    p.vpn = 150;
    p.targeted = 150;
    p.bots = 150;
    p.stuffing_campaigns = 3;
    p.stuffing_size = 50;
    p
}

/// The tally per label, and how many decisions each rule matched.
fn measure(rules: RuleSet, log: &[u8]) -> (Labels, BTreeMap<String, u64>) {
    let mut matched: BTreeMap<String, u64> = rules.rules().map(|r| (r.id.to_string(), 0)).collect();
    let mut replayer = Replayer::new(Engine::builder().ruleset(rules)).unwrap();
    let mut labels = Labels::default();
    for (n, line) in log.split(|&b| b == b'\n').enumerate() {
        let Some(out) = replayer.line(n as u64 + 1, line) else {
            continue;
        };
        match &out.outcome {
            Outcome::Refused(e) => panic!("line {} refused: {e}", n + 1),
            Outcome::Tracked(r) => {
                for id in &r.rule_ids {
                    *matched.entry(id.to_string()).or_default() += 1;
                }
            }
            _ => {}
        }
        labels.record(&out);
    }
    (labels, matched)
}

#[test]
fn the_starter_rules_catch_attacks_with_little_friction() {
    let mut log = Vec::new();
    simulate(&params(), &mut log).unwrap();
    let rules = RuleSet::from_dir(STARTER).unwrap();
    let (labels, matched) = measure(rules, &log);
    println!("starter ruleset, simulator seed 11:\n{}", labels.table());
    println!("matches per rule: {matched:?}");

    let threshold = std::fs::read_to_string(format!("{STARTER}/signin/rba-score.rhai")).unwrap();
    let threshold = threshold
        .split("rba_score() >= ")
        .nth(1)
        .and_then(|t| t.split_whitespace().next())
        .unwrap()
        .to_owned();
    let config = std::fs::read_to_string(format!("{STARTER}/riskgate.toml"))
        .unwrap()
        .replace("\"geoip/", &format!("\"{STARTER}/geoip/"));
    let alone = RuleSet::builder()
        .config_toml(config)
        .rule(
            "rba",
            format!("if rba_score() >= {threshold} {{ CHALLENGE_REQUIRED }}"),
        )
        .build()
        .unwrap();
    let (alone, _) = measure(alone, &log);
    println!(
        "rba_score() >= {threshold} alone, same stream:\n{}",
        alone.table()
    );

    // Friction is a target overall and on sign-ins (below); per genuine behaviour the table shows it: a first
    // sign-in with no history (`enrolment`) and a new device are challenged most of the time, and travel sits
    // near 3%, above it on a sample this small.
    let mut models = 0;
    for (_, model, t) in labels.rows().filter(|r| r.0 == "attack") {
        models += 1;
        assert!(t.events >= 100, "{model}: {t:?}");
        assert!(t.rate() >= 0.99, "{model}: {:.2}% caught", 100.0 * t.rate());
    }
    assert_eq!(models, 5, "every attacker model is in the log");
    // Every rule of the starter ruleset answers something in this stream, but the one for sensitive actions
    // from an unverified device: the simulator has no attacker who acts after a sign-in.
    assert_eq!(matched.len(), 9);
    for (rule, n) in &matched {
        assert!(
            *n > 0 || rule == "sensitive/new-device",
            "`{rule}` never matched"
        );
    }
    let attacks = labels.total("attack");
    assert!(
        attacks.rate() >= 0.99,
        "{:.2}% caught",
        100.0 * attacks.rate()
    );
    let genuine = labels.total("genuine");
    assert!(genuine.events > 5_000);
    assert!(
        genuine.rate() <= 0.03,
        "{:.2}% friction",
        100.0 * genuine.rate()
    );
    let sign_ins = labels.action_total("genuine", "signIn");
    assert!(
        sign_ins.rate() <= 0.03,
        "{:.2}% friction on sign-ins",
        100.0 * sign_ins.rate()
    );
}
