//! The backtest (`riskgate replay --compare`) and the replay summary on crafted logs, with exact counts:
//! changed decisions grouped by old → new state, per-rule hits side by side, catch rate, friction and the
//! confusion matrix on labelled lines, idempotent repeats counted apart from decisions, the JSON shapes,
//! `--echo`, and tokens that diff cleanly.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use serde_json::{json, Value};
use std::fs;
use std::path::Path;
use std::process::Output;

fn run(args: &[&str]) -> Output {
    let out = common::riskgate().args(args).output().unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// `a`: large payments go to review. `b`: a lower bar that blocks, a device check, and a rule that never
/// matches.
fn rulesets(dir: &Path) -> (String, String) {
    let a = dir.join("a");
    let b = dir.join("b");
    fs::create_dir_all(&a).unwrap();
    fs::create_dir_all(&b).unwrap();
    fs::write(
        a.join("big.rhai"),
        "//! priority: 10\nif custom.amount > 1000 { REVIEW }\n",
    )
    .unwrap();
    fs::write(
        b.join("big.rhai"),
        "//! priority: 10\nif custom.amount > 500 { BLOCK }\n",
    )
    .unwrap();
    fs::write(
        b.join("no-device.rhai"),
        "//! priority: 20\nif device_id == () { CHALLENGE_REQUIRED }\n",
    )
    .unwrap();
    fs::write(
        b.join("never.rhai"),
        "//! priority: 5\nif custom.amount > 1000000 { BLOCK }\n",
    )
    .unwrap();
    (a.display().to_string(), b.display().to_string())
}

fn pay(n: u32, user: &str, amount: u32, device: Option<&str>, label: Option<&str>) -> String {
    let device = device.map_or(String::new(), |d| format!(r#","deviceId":"{d}""#));
    let label = label.map_or(String::new(), |l| format!(r#","label":"{l}""#));
    format!(
        r#"{{"timestamp":{},"userId":"{user}","action":"pay","attributes":{{"idempotencyKey":"k-{user}"{device},"custom":{{"amount":{amount}}}}}{label}}}"#,
        1_709_251_200_000u64 + u64::from(n) * 60_000
    )
}

/// Eleven lines: eight decisions, two idempotent repeats of line 1, one malformed line.
fn log(dir: &Path) -> String {
    let lines = [
        pay(1, "u1", 100, Some("d1"), Some("genuine")),
        pay(2, "u2", 700, Some("d2"), Some("genuine")),
        pay(3, "u3", 2000, Some("d3"), Some("fraud")),
        pay(4, "u4", 50, None, Some("fraud")),
        pay(5, "u5", 50, None, Some("genuine")),
        pay(1, "u1", 100, Some("d1"), Some("genuine")),
        pay(1, "u1", 100, Some("d1"), Some("genuine")),
        pay(8, "u6", 5000, Some("d6"), Some("fraud")),
        pay(9, "u7", 10, Some("d7"), Some("warmup")),
        "{".to_owned(),
        pay(11, "u8", 20, Some("d8"), None),
    ];
    let path = dir.join("events.jsonl");
    fs::write(&path, lines.join("\n") + "\n").unwrap();
    path.display().to_string()
}

#[test]
fn the_backtest_prints_exact_counts_on_a_labelled_log() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = rulesets(dir.path());
    let events = log(dir.path());
    let out = run(&["replay", "--rules", &a, "--compare", &b, &events]);
    assert!(
        out.stderr.is_empty(),
        "no progress bar when stderr is not a terminal: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let expect = [
        format!(
            "backtest of 11 lines: `{a}` (base) vs `{b}` (other); 9 decisions compared, 5 changed"
        ),
        "  ALLOW → BLOCK: 1".to_owned(),
        "    line 2      u2                   pay              (default) → big".to_owned(),
        "  ALLOW → CHALLENGE_REQUIRED: 2".to_owned(),
        "    line 4      u4                   pay              (default) → no-device".to_owned(),
        "    line 5      u5                   pay              (default) → no-device".to_owned(),
        "  REVIEW → BLOCK: 2".to_owned(),
        "    line 3      u3                   pay              big → big".to_owned(),
        "    line 8      u6                   pay              big → big".to_owned(),
    ];
    for line in &expect {
        assert!(
            text.lines().any(|l| l == line),
            "missing `{line}` in:\n{text}"
        );
    }
    let row = |name: &str| -> Vec<String> {
        let l = text
            .lines()
            .find(|l| l.split_whitespace().next() == Some(name))
            .unwrap_or_else(|| panic!("no `{name}` row in:\n{text}"));
        l.split_whitespace().skip(1).map(str::to_owned).collect()
    };
    assert_eq!(row("decisions"), ["8", "8"]);
    assert_eq!(row("repeats"), ["2", "2"]);
    assert_eq!(row("refused"), ["1", "1"]);
    assert_eq!(row("ALLOW"), ["6", "3"]);
    assert_eq!(row("CHALLENGE_REQUIRED"), ["0", "2"]);
    assert_eq!(row("REVIEW"), ["2", "0"]);
    assert_eq!(row("BLOCK"), ["0", "3"]);
    assert_eq!(row("big"), ["2", "/", "2", "3", "/", "3"]);
    assert_eq!(row("no-device"), ["-", "2", "/", "2"]);
    assert_eq!(row("never"), ["-", "0", "/", "0"]);
    assert_eq!(row("catch"), ["rate", "66.67%", "100.00%"]);
    assert_eq!(row("friction"), ["0.00%", "66.67%"]);
    let matrix: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("attack →") || l.starts_with("genuine →"))
        .collect();
    assert_eq!(matrix.len(), 4, "{text}");
    let cells: Vec<Vec<&str>> = matrix
        .iter()
        .map(|l| l.split_whitespace().skip(3).collect())
        .collect();
    // attack → caught, attack → allowed, genuine → caught, genuine → allowed; repeats and `warmup` left out.
    assert_eq!(
        cells,
        [
            vec!["2", "3"],
            vec!["1", "0"],
            vec!["0", "2"],
            vec!["3", "1"]
        ]
    );
}

#[test]
fn the_backtest_as_json() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = rulesets(dir.path());
    let events = log(dir.path());
    let out = run(&[
        "replay",
        "--rules",
        &a,
        "--compare",
        &b,
        &events,
        "--format",
        "json",
    ]);
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let states = |allow: u64, ch: u64, review: u64, block: u64| json!({"ALLOW": allow, "CHALLENGE_REQUIRED": ch, "REVIEW": review, "BLOCK": block});
    let labels = |caught: u64, missed: u64, challenged: u64, allowed: u64| {
        json!({
            "attacks": caught + missed,
            "genuine": challenged + allowed,
            "catchRate": caught as f64 / (caught + missed) as f64,
            "friction": challenged as f64 / (challenged + allowed) as f64,
            "matrix": {
                "attack": {"caught": caught, "allowed": missed},
                "genuine": {"caught": challenged, "allowed": allowed},
            },
        })
    };
    let rule = |m: u64, d: u64| json!({"matched": m, "decided": d, "shadow": 0, "errors": 0});
    let example = |line: u64, user: &str, from: Option<&str>, to: &str| json!({"line": line, "userId": user, "action": "pay", "fromRule": from, "toRule": to});
    assert_eq!(
        v,
        json!({
            "lines": 11,
            "base": {
                "rules": a, "decisions": 8, "repeats": 2, "refused": 1,
                "states": states(6, 0, 2, 0), "labels": labels(2, 1, 0, 3), "neverMatched": [],
            },
            "other": {
                "rules": b, "decisions": 8, "repeats": 2, "refused": 1,
                "states": states(3, 2, 0, 3), "labels": labels(3, 0, 2, 1), "neverMatched": ["never"],
            },
            "changed": {
                "compared": 9,
                "total": 5,
                "groups": [
                    {"from": "ALLOW", "to": "CHALLENGE_REQUIRED", "count": 2, "examples": [
                        example(4, "u4", None, "no-device"), example(5, "u5", None, "no-device"),
                    ]},
                    {"from": "REVIEW", "to": "BLOCK", "count": 2, "examples": [
                        example(3, "u3", Some("big"), "big"), example(8, "u6", Some("big"), "big"),
                    ]},
                    {"from": "ALLOW", "to": "BLOCK", "count": 1, "examples": [
                        example(2, "u2", None, "big"),
                    ]},
                ],
            },
            "rules": [
                {"id": "big", "base": rule(2, 2), "other": rule(3, 3)},
                {"id": "never", "base": null, "other": rule(0, 0)},
                {"id": "no-device", "base": null, "other": rule(2, 2)},
            ],
        })
    );
}

#[test]
fn a_backtest_of_a_ruleset_against_itself_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (a, _) = rulesets(dir.path());
    let events = log(dir.path());
    let out = run(&[
        "replay",
        "--rules",
        &a,
        "--compare",
        &a,
        &events,
        "--format",
        "json",
    ]);
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        v["changed"],
        json!({"compared": 9, "total": 0, "groups": []})
    );
    assert_eq!(v["base"], {
        let mut o = v["other"].clone();
        o["rules"] = v["base"]["rules"].clone();
        o
    });
}

#[test]
fn the_replay_summary_counts_repeats_apart_from_decisions_and_rule_hits() {
    let dir = tempfile::tempdir().unwrap();
    let (_, b) = rulesets(dir.path());
    let events = log(dir.path());
    let out = run(&["replay", "--rules", &b, &events, "--format", "json"]);
    let s: Value = serde_json::from_slice(&out.stderr).unwrap();
    // Lines 6 and 7 repeat line 1: answered from the store, neither decisions nor hits.
    assert_eq!(
        (
            &s["lines"],
            &s["decisions"],
            &s["repeats"],
            &s["operations"]
        ),
        (&json!(11), &json!(8), &json!(2), &json!(0))
    );
    assert_eq!(s["refused"], json!({"invalid_json": 1}));
    assert_eq!(
        s["states"],
        json!({"ALLOW": 3, "CHALLENGE_REQUIRED": 2, "REVIEW": 0, "BLOCK": 3})
    );
    assert_eq!(
        s["actions"],
        json!({"pay": {"decisions": 8, "repeats": 2, "refused": 0,
            "states": {"ALLOW": 3, "CHALLENGE_REQUIRED": 2, "REVIEW": 0, "BLOCK": 3}}})
    );
    assert_eq!(s["rules"]["big"]["matched"], 3);
    assert_eq!(s["rules"]["no-device"]["decided"], 2);
    assert_eq!(s["neverMatched"], json!(["never"]));
    assert_eq!(
        s["labels"]["matrix"]["genuine"],
        json!({"caught": 2, "allowed": 1})
    );
    // Eight timed decisions: too few for a rate.
    assert_eq!(s["latency"]["calls"], 8);
    assert_eq!(s["latency"]["perSecond"], Value::Null);

    let text = run(&["replay", "--rules", &b, &events]);
    let stderr = String::from_utf8(text.stderr).unwrap();
    assert!(
        stderr.contains(": 8 decisions, 2 repeats, 0 operations, 1 refused"),
        "{stderr}"
    );
    assert!(stderr.contains("never matched: never"), "{stderr}");
    assert!(stderr.contains("too few calls for a rate"), "{stderr}");
    assert!(!stderr.contains("decisions/s"), "{stderr}");
}

#[test]
fn echo_leads_each_output_line_with_its_line_user_and_action() {
    let dir = tempfile::tempdir().unwrap();
    let (_, b) = rulesets(dir.path());
    let events = log(dir.path());
    let out = run(&["replay", "--rules", &b, &events, "--echo"]);
    let stdout = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 11);
    assert!(
        lines[1].starts_with(r#"{"line":2,"userId":"u2","action":"pay","state":"BLOCK","#),
        "{}",
        lines[1]
    );
    assert!(
        lines[9].starts_with(r#"{"line":10,"error":{"code":"invalid_json","#),
        "{}",
        lines[9]
    );
    for l in lines {
        let v: Value = serde_json::from_str(l).unwrap();
        assert!(v["line"].is_u64(), "{l}");
    }
}

#[test]
fn seeded_or_redacted_tokens_make_two_runs_identical() {
    let dir = tempfile::tempdir().unwrap();
    let (_, b) = rulesets(dir.path());
    // No idempotency keys: generated ones differ between runs unless made from the line number.
    let events = dir.path().join("nokeys.jsonl");
    fs::write(
        &events,
        "{\"timestamp\":0,\"userId\":\"u1\",\"action\":\"pay\",\"attributes\":{\"custom\":{\"amount\":1}}}\n\
         {\"timestamp\":1,\"userId\":\"u2\",\"action\":\"pay\",\"attributes\":{\"custom\":{\"amount\":2}}}\n",
    )
    .unwrap();
    let e = events.to_str().unwrap();
    let kept = [0, 1].map(|_| run(&["replay", "--rules", &b, e]).stdout);
    assert_ne!(kept[0], kept[1], "random tokens and keys by default");
    for flags in [&["--token-seed", "42"][..], &["--redact-tokens"][..]] {
        let [x, y] = [0, 1].map(|_| {
            let mut args = vec!["replay", "--rules", &b, e];
            args.extend_from_slice(flags);
            String::from_utf8(run(&args).stdout).unwrap()
        });
        assert_eq!(x, y, "{flags:?}");
        let first: Value = serde_json::from_str(x.lines().next().unwrap()).unwrap();
        assert_eq!(first["state"], "CHALLENGE_REQUIRED");
        let token = first["token"].as_str().unwrap();
        if flags.len() == 2 {
            assert!(token.starts_with("tok-") && token.len() == 20, "{token}");
        } else {
            assert_eq!(token, "<redacted>");
        }
        assert!(first["idempotencyKey"]
            .as_str()
            .unwrap()
            .starts_with("replay-"));
    }
}

#[test]
fn a_seeded_stand_in_token_validates_as_the_real_one() {
    let dir = tempfile::tempdir().unwrap();
    let (_, b) = rulesets(dir.path());
    let track = "{\"timestamp\":0,\"userId\":\"u1\",\"action\":\"pay\",\"attributes\":{\"idempotencyKey\":\"k\",\"custom\":{\"amount\":1}}}";
    // The stand-in depends on the seed and the line number only, so it is known before the run.
    let probe = run_with_stdin(&b, track);
    let v: Value = serde_json::from_str(probe.lines().next().unwrap()).unwrap();
    let token = v["token"].as_str().unwrap().to_owned();
    let input = format!(
        "{track}\n\
         {{\"op\":\"updateAction\",\"userId\":\"u1\",\"action\":\"pay\",\"idempotencyKey\":\"k\",\"state\":\"CHALLENGE_SUCCEEDED\"}}\n\
         {{\"op\":\"validateChallenge\",\"token\":\"{token}\"}}\n\
         {{\"op\":\"validateChallenge\",\"token\":\"tok-0000000000000000\"}}\n"
    );
    let stdout = run_with_stdin(&b, &input);
    let lines: Vec<Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines[0]["token"], token.as_str());
    assert_eq!(lines[2]["isValid"], true, "{stdout}");
    assert_eq!(lines[2]["userId"], "u1");
    assert_eq!(lines[3]["isValid"], false, "{stdout}");
    assert_eq!(
        lines[3].get("userId"),
        None,
        "an unknown stand-in is no token: {stdout}"
    );
}

fn run_with_stdin(rules: &str, input: &str) -> String {
    use std::io::Write;
    let mut child = common::riskgate()
        .args(["replay", "--rules", rules, "--token-seed", "9", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn bench_times_decisions_only_and_gives_no_rate_from_a_single_call() {
    let dir = tempfile::tempdir().unwrap();
    let (_, b) = rulesets(dir.path());
    let events = dir.path().join("one.jsonl");
    // One decision, one repeat of it, one refused line per round.
    let line = pay(1, "u1", 1, Some("d"), None);
    fs::write(&events, format!("{line}\n{line}\n{{\n")).unwrap();
    let e = events.to_str().unwrap();
    let out = run(&["bench", "--rules", &b, e, "--calls", "1", "--seconds", "0"]);
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(
        stdout.contains(
            "decisions timed: 1 in 1 rounds of the log (1 refused lines and 1 idempotent repeats not timed)"
        ),
        "{stdout}"
    );
    assert!(stdout.contains("too few calls (1) for a rate"), "{stdout}");
    assert!(!stdout.contains("decisions/s"), "{stdout}");
    let out = run(&[
        "bench",
        "--rules",
        &b,
        e,
        "--calls",
        "150",
        "--seconds",
        "0",
    ]);
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(
        stdout.contains("decisions timed: 150 in 150 rounds of the log (150 refused lines and 150 idempotent repeats not timed)"),
        "{stdout}"
    );
    assert!(stdout.contains("decisions/s on one thread"), "{stdout}");
}

/// `--rba-sweep` takes its list only after `=`: alone it tries the default thresholds on the file that follows,
/// a list written with a space is refused with the spelling to use, and a bad list is refused naming the part.
#[test]
fn the_rba_sweep_list_is_written_with_an_equals_sign() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("signin.jsonl");
    let sim = run(&[
        "simulate",
        "--seed",
        "2",
        "--users",
        "20",
        "--days",
        "15",
        "--naive",
        "3",
        "--vpn",
        "0",
        "--targeted",
        "0",
    ]);
    fs::write(&log, &sim.stdout).unwrap();
    let log = log.to_str().unwrap();
    let starter = concat!(env!("CARGO_MANIFEST_DIR"), "/starter");
    let rows = |out: &Output| -> Vec<String> {
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .skip(1)
            .filter_map(|l| l.split_whitespace().next().map(String::from))
            .collect()
    };

    let default = run(&["replay", "--rules", starter, "--rba-sweep", log]);
    assert_eq!(
        rows(&default),
        ["0.01", "0.03", "0.1", "0.3", "0.5", "1", "2", "3", "5", "10", "30", "100"]
    );
    let given = run(&["replay", "--rules", starter, "--rba-sweep=0.5,2", log]);
    assert_eq!(rows(&given), ["0.5", "2"]);

    for (args, message) in [
        (
            vec!["--rba-sweep", "0.5,2", log],
            "thresholds are written `--rba-sweep=0.5,2`",
        ),
        (vec![log, "--rba-sweep", "1"], "`--rba-sweep=1`"),
        (vec!["--rba-sweep=0.5,x", log], "`x` is not a finite number"),
        (
            vec!["--rba-sweep=1,inf", log],
            "`inf` is not a finite number",
        ),
        (vec!["--rba-sweep=", log], "an empty threshold"),
        (vec!["--rba-sweep=1,,2", log], "an empty threshold"),
    ] {
        let out = common::riskgate()
            .args(["replay", "--rules", starter])
            .args(&args)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?}");
        assert!(err.contains(message), "{args:?}: {err}");
        assert!(out.stdout.is_empty(), "{args:?}");
    }
}
