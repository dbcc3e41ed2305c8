//! The sign-in simulator: the same parameters give the same bytes, every line replays, labels are carried and
//! counted, and challenges are completed only where one was asked.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use riskgate::replay::{Labels, Outcome, Replayer};
use riskgate::simulate::{simulate, Params};
use riskgate::{Engine, RuleSet};

fn small(seed: u64) -> Params {
    let mut p = Params::default();
    p.seed = seed;
    p.users = 60;
    p.days = 21;
    p.warmup_days = 7;
    p.naive = 20;
    p.vpn = 20;
    p.targeted = 20;
    p.bots = 20;
    p.stuffing_campaigns = 2;
    p.stuffing_size = 10;
    p
}

fn run(p: &Params) -> (Vec<u8>, riskgate::simulate::Counts) {
    let mut out = Vec::new();
    let counts = simulate(p, &mut out).unwrap();
    (out, counts)
}

#[test]
fn the_same_seed_gives_the_same_bytes() {
    let (a, ca) = run(&small(42));
    let (b, cb) = run(&small(42));
    assert_eq!(a, b);
    assert_eq!(ca, cb);
    let (c, _) = run(&small(43));
    assert_ne!(a, c, "another seed is another log");
    let lines = a.split(|&b| b == b'\n').filter(|l| !l.is_empty()).count() as u64;
    assert_eq!(lines, ca.warmup + ca.genuine + ca.attacks + ca.updates);
    assert_eq!(ca.attacks, 20 * 4 + 2 * 10);
    assert_eq!(ca.updates, 2 * (ca.warmup + ca.genuine + ca.attacks));
}

#[test]
fn lines_are_in_time_order_and_every_line_replays() {
    let (log, counts) = run(&small(7));
    let rules =
        RuleSet::from_sources([("new-device", "if is_new_device() { CHALLENGE_REQUIRED }")])
            .unwrap();
    let mut replayer = Replayer::new(Engine::builder().ruleset(rules)).unwrap();
    let mut labels = Labels::default();
    let mut last = 0i64;
    let mut challenged = 0u64;
    let mut completed = 0u64;
    for (n, line) in log
        .split(|&b| b == b'\n')
        .filter(|l| !l.is_empty())
        .enumerate()
    {
        let v: serde_json::Value = serde_json::from_slice(line).unwrap();
        let t = v["timestamp"].as_i64().unwrap();
        assert!(t >= last, "line {} goes back in time", n + 1);
        last = t;
        let out = replayer.line(n as u64 + 1, line).unwrap();
        match &out.outcome {
            Outcome::Tracked(r) => {
                assert!(out.label.is_some(), "track line {} has a label", n + 1);
                if r.state == riskgate::State::ChallengeRequired {
                    challenged += 1;
                }
            }
            Outcome::Operation
                if v["ifState"] == "CHALLENGE_REQUIRED"
                    && (out.json.contains("\"CHALLENGE_SUCCEEDED\"")
                        || out.json.contains("\"CHALLENGE_FAILED\"")) =>
            {
                completed += 1;
            }
            Outcome::Refused(e) => panic!("line {} refused: {e}", n + 1),
            _ => {}
        }
        labels.record(&out);
    }
    let total = labels.total("warmup").events
        + labels.total("genuine").events
        + labels.total("attack").events;
    assert_eq!(total, counts.warmup + counts.genuine + counts.attacks);
    assert!(challenged > 0);
    // Every challenge is answered (by the user, or failed by the attacker), and nothing else is changed.
    assert_eq!(completed, challenged);
    // A rule that challenges every new device catches every simulated attacker: they all come from a new one.
    assert_eq!(labels.total("attack").rate(), 1.0);
}
