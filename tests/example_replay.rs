//! The bundled example: `examples/events.jsonl` replayed (in process, as `riskgate replay` does) through the
//! bundled `rules/`, checking every line's outcome: each example rule, signals included, triggers where the log
//! says it should.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use serde_json::Value;
use std::path::Path;

/// Per input line: the expected state (or error code), and the deciding rule.
const EXPECTED: [(&str, Option<&str>); 29] = [
    ("ALLOW", None),                                        // alice signs in from London
    ("ALLOW", None), // the same action again: idempotent repeat
    ("CHALLENGE_REQUIRED", Some("signin/missing-device")), // bob, no device
    ("CHALLENGE_REQUIRED", Some("signin/missing-device")), // getAction
    ("CHALLENGE_SUCCEEDED", Some("signin/missing-device")), // updateAction
    ("BLOCK", Some("signin/disposable-email")), // mallory
    ("ALLOW", None), // alice withdraws from her known laptop
    ("REVIEW", Some("withdraw/large-amount")), // 25,000
    ("REVIEW_SUCCEEDED", Some("withdraw/large-amount")),
    ("BLOCK", Some("withdraw/huge-amount")), // carol, 250,000
    ("idempotency_conflict", None),          // same key, different amount
    ("ALLOW", Some("common/trusted-tester")), // qa-bot
    ("invalid_request", None),               // bad action code
    ("invalid_request", None),               // bad IP
    ("CHALLENGE_REQUIRED", Some("withdraw/new-device")), // alice's new phone
    ("CHALLENGE_SUCCEEDED", Some("withdraw/new-device")), // she passes the challenge
    ("ALLOW", None),                         // so the phone is known now
    ("ALLOW", None),                         // erin signs in
    ("ALLOW", None),                         // withdrawal 1
    ("ALLOW", None),                         // withdrawal 2
    ("ALLOW", None),                         // withdrawal 2 repeated: not counted again
    ("ALLOW", None),                         // 3
    ("ALLOW", None),                         // 4
    ("ALLOW", None),                         // 5
    ("BLOCK", Some("withdraw/velocity")),    // the sixth within an hour
    ("BLOCK", Some("network/tor-exit")),     // trent, from a Tor exit
    ("REVIEW", Some("signin/impossible-travel")), // alice in Changchun an hour after London
    ("ALLOW", None),                         // erin, 45 minutes later: the window has moved on
    ("ALLOW", None),                         // alice in Linköping the next day: possible
];

#[test]
fn the_example_log_replays_to_its_expected_states() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let events = std::fs::read_to_string(root.join("examples/events.jsonl")).unwrap();
    let lines: Vec<Value> = common::replay(&root.join("rules"), &events);
    assert_eq!(lines.len(), EXPECTED.len(), "{lines:?}");
    for (n, (line, (want, rule))) in lines.iter().zip(EXPECTED).enumerate() {
        let got = line["state"]
            .as_str()
            .or_else(|| line["error"]["code"].as_str())
            .unwrap_or("?");
        assert_eq!(got, want, "line {}: {line}", n + 1);
        assert_eq!(
            line["priorityRuleId"].as_str(),
            rule,
            "line {}: {line}",
            n + 1
        );
    }
    // The shadow trial rule on clients without a user agent saw bob and mallory.
    let shadowed: Vec<usize> = lines
        .iter()
        .enumerate()
        .filter(|(_, l)| {
            l["shadowRuleIds"]
                .as_array()
                .is_some_and(|a| a.iter().any(|r| r == "signin/headless-client"))
        })
        .map(|(n, _)| n + 1)
        .collect();
    assert_eq!(shadowed, [3, 6]);
    // A repeat returns the same action: same key, same rules.
    assert_eq!(lines[0], lines[1]);
    assert_eq!(lines[19], lines[20]);
}
