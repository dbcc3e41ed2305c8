//! The `riskgate` command line end to end: `check` and `replay`, including what only the binary does (reading
//! lines from a pipe with a length bound, answering each line before the next arrives, the summary).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Output, Stdio};

fn riskgate(args: &[&str], stdin: Option<&str>) -> Output {
    let mut child = common::riskgate()
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut pipe = child.stdin.take().unwrap();
    // The process may exit before reading (broken rules): a broken pipe here is expected then.
    let _ = pipe.write_all(stdin.unwrap_or("").as_bytes());
    drop(pipe);
    child.wait_with_output().unwrap()
}

fn ruleset(dir: &Path) {
    fs::create_dir_all(dir.join("withdraw")).unwrap();
    fs::write(
        dir.join("withdraw/big.rhai"),
        "//! priority: 10\n//! actions: withdraw-funds\n//! description: big withdrawals\nif custom.amount > 1000 { REVIEW }\n",
    )
    .unwrap();
    fs::write(
        dir.join("no-device.rhai"),
        "//! priority: 20\nif device_id == () { CHALLENGE_REQUIRED }\n",
    )
    .unwrap();
    fs::write(
        dir.join("trial.rhai"),
        "//! mode: shadow\nif custom.amount > 5 { BLOCK }\n",
    )
    .unwrap();
}

#[test]
fn check_lists_the_rules() {
    let dir = tempfile::tempdir().unwrap();
    ruleset(dir.path());
    let out = riskgate(&["check", "--rules", dir.path().to_str().unwrap()], None);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(
        stdout.contains("withdraw/big") && stdout.contains("big withdrawals"),
        "{stdout}"
    );
    assert!(stdout.contains("shadow"), "{stdout}");
    assert!(stdout.contains("ok: 3 rules"), "{stdout}");
}

#[test]
fn check_reports_file_line_column_and_exits_1() {
    let dir = tempfile::tempdir().unwrap();
    ruleset(dir.path());
    fs::write(
        dir.path().join("withdraw/broken.rhai"),
        "//! priority: 10\nif amount > {\n",
    )
    .unwrap();
    fs::write(dir.path().join("meta.rhai"), "//! prority: 1\nALLOW\n").unwrap();
    let out = riskgate(&["check", "--rules", dir.path().to_str().unwrap()], None);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8(out.stderr).unwrap();
    let broken = format!("{}/withdraw/broken.rhai:2:", dir.path().display());
    assert!(stderr.contains(&broken), "{stderr}");
    let meta = format!(
        "{}/meta.rhai:1:5: unknown metadata key `prority`",
        dir.path().display()
    );
    assert!(stderr.contains(&meta), "{stderr}");
    assert!(stderr.contains("2 problems"), "{stderr}");
    assert!(out.stdout.is_empty());
}

#[test]
fn check_defaults_to_the_rules_folder() {
    let out = common::riskgate()
        .arg("check")
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

const EVENTS: &str = r#"{"timestamp":"2024-03-01T09:00:00Z","userId":"u1","action":"withdraw-funds","attributes":{"idempotencyKey":"k1","deviceId":"d1","custom":{"amount":5000}}}
{"timestamp":1709283600000,"userId":"u2","action":"signIn","attributes":{"idempotencyKey":"k2"}}
this is not json

{"userId":"u3","action":"sign in","attributes":{}}
{"timestamp":"2024-03-01T09:10:00+01:00","op":"getAction","userId":"u1","action":"withdraw-funds","idempotencyKey":"k1"}
{"timestamp":"2024-03-01T09:11:00Z","op":"updateAction","userId":"u1","action":"withdraw-funds","idempotencyKey":"k1","state":"REVIEW_SUCCEEDED"}
{"timestamp":"2024-03-01T09:12:00Z","userId":"u1","action":"withdraw-funds","attributes":{"idempotencyKey":"k1","deviceId":"d1","custom":{"amount":5000}}}
{"timestamp":"2024-03-01T09:13:00Z","userId":"u1","action":"withdraw-funds","attributes":{"idempotencyKey":"k1","deviceId":"d1","custom":{"amount":1}}}
{"op":"getAction","userId":"nobody","action":"signIn","idempotencyKey":"x"}
{"timestamp":"2024-03-01T09:14:00Z","op":"updateAction","userId":"u2","action":"signIn","idempotencyKey":"k2","state":"REVIEW_FAILED"}
{"op":"fly","userId":"u2"}
{"timestamp":"yesterday","userId":"u4","action":"signIn"}
"#;

#[test]
fn replay_answers_every_line_in_order_with_a_summary() {
    let dir = tempfile::tempdir().unwrap();
    ruleset(dir.path());
    let events = dir.path().join("events.jsonl");
    fs::write(&events, EVENTS).unwrap();
    let out = riskgate(
        &[
            "replay",
            "--rules",
            dir.path().to_str().unwrap(),
            events.to_str().unwrap(),
        ],
        None,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<serde_json::Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(
        lines.len(),
        12,
        "one output per non-blank input line: {stdout}"
    );

    assert_eq!(lines[0]["state"], "REVIEW");
    assert_eq!(lines[0]["ruleIds"], serde_json::json!(["withdraw/big"]));
    assert_eq!(lines[0]["shadowRuleIds"], serde_json::json!(["trial"]));
    assert_eq!(lines[1]["state"], "CHALLENGE_REQUIRED");
    assert!(lines[1]["token"].as_str().unwrap().len() >= 22);
    assert_eq!(lines[2]["line"], 3);
    assert_eq!(lines[2]["error"]["code"], "invalid_json");
    assert_eq!(lines[3]["line"], 5, "line numbers count the blank line");
    assert_eq!(lines[3]["error"]["code"], "invalid_request");
    assert!(lines[3]["error"]["message"]
        .as_str()
        .unwrap()
        .contains("`action`"));
    // The event time is the line's timestamp.
    assert_eq!(lines[4]["createdAt"], "2024-03-01T09:00:00.000Z");
    assert_eq!(lines[4]["state"], "REVIEW");
    assert_eq!(lines[5]["state"], "REVIEW_SUCCEEDED");
    assert_eq!(lines[5]["stateUpdatedAt"], "2024-03-01T09:11:00.000Z");
    assert_eq!(lines[5]["outcome"], "REVIEW");
    // A repeat returns the current state; a changed repeat is a conflict.
    assert_eq!(lines[6]["state"], "REVIEW_SUCCEEDED");
    assert_eq!(lines[6]["idempotencyKey"], "k1");
    assert_eq!(lines[7]["error"]["code"], "idempotency_conflict");
    assert_eq!(lines[8]["error"]["code"], "action_not_found");
    assert_eq!(lines[9]["error"]["code"], "invalid_transition");
    assert_eq!(lines[10]["error"]["code"], "invalid_request");
    assert_eq!(lines[11]["error"]["code"], "invalid_request");
    assert!(lines[11]["error"]["message"]
        .as_str()
        .unwrap()
        .contains("timestamp"));

    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(
        stderr.contains("CHALLENGE_REQUIRED 1, REVIEW 1"),
        "{stderr}"
    );
    assert!(stderr.contains("withdraw/big"), "{stderr}");
    assert!(
        stderr.contains("p50") && stderr.contains("p99") && stderr.contains("p99.9"),
        "{stderr}"
    );
}

#[test]
fn replay_reads_standard_input() {
    let dir = tempfile::tempdir().unwrap();
    ruleset(dir.path());
    let input = r#"{"userId":"u","action":"signIn","attributes":{"deviceId":"d"}}"#;
    let out = riskgate(
        &["replay", "--rules", dir.path().to_str().unwrap(), "-"],
        Some(input),
    );
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["state"], "ALLOW");
    assert_eq!(
        v["idempotencyKey"].as_str().unwrap().len(),
        36,
        "a generated UUID v4"
    );
}

#[test]
fn replay_with_broken_rules_fails_before_reading() {
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("bad.rhai"), "BLOCK +").unwrap();
    let out = riskgate(
        &["replay", "--rules", dir.path().to_str().unwrap(), "-"],
        Some("{}"),
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("bad.rhai:1:"));
    assert!(out.stdout.is_empty());
}

#[test]
fn replay_of_the_bundled_example_runs() {
    let out = common::riskgate()
        .args(["replay", "examples/events.jsonl"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let n_in = fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/examples/events.jsonl"
    ))
    .unwrap()
    .lines()
    .filter(|l| !l.trim().is_empty())
    .count();
    assert_eq!(String::from_utf8(out.stdout).unwrap().lines().count(), n_in);
}

fn error_line(json: &str) -> (u64, String, String) {
    let v: serde_json::Value = serde_json::from_str(json).unwrap();
    (
        v["line"].as_u64().unwrap(),
        v["error"]["code"].as_str().unwrap().to_owned(),
        v["error"]["message"].as_str().unwrap().to_owned(),
    )
}

#[test]
fn the_replay_command_skips_10_mib_lines_and_goes_on() {
    let mut input = Vec::new();
    input.extend_from_slice(
        b"{\"timestamp\":0,\"userId\":\"u\",\"action\":\"signIn\",\"attributes\":{\"idempotencyKey\":\"k1\"}}\n",
    );
    input.extend(std::iter::repeat_n(b'[', 10 * 1024 * 1024));
    input.push(b'\n');
    input.extend_from_slice(b"\xff\xfe\n");
    input.extend_from_slice(
        b"{\"timestamp\":1,\"userId\":\"u\",\"action\":\"signIn\",\"attributes\":{\"idempotencyKey\":\"k2\"}}",
    );
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("r.rhai"),
        "if velocity(\"1h\") > 0 { REVIEW }",
    )
    .unwrap();
    let mut child = common::riskgate()
        .args(["replay", "--rules"])
        .arg(dir.path())
        .arg("-")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let writer = std::thread::spawn(move || stdin.write_all(&input));
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 4, "{stdout}");
    assert!(lines[0].contains(r#""state":"ALLOW""#), "{}", lines[0]);
    let (n, code, msg) = error_line(lines[1]);
    assert_eq!((n, code.as_str()), (2, "invalid_request"));
    assert!(
        msg.contains("is 10485760 bytes, at most 1048576 are allowed"),
        "{msg}"
    );
    assert_eq!(error_line(lines[2]).1, "invalid_json");
    // The refused lines left no trace: the last line sees exactly one earlier action.
    assert!(lines[3].contains(r#""state":"REVIEW""#), "{}", lines[3]);
}

#[test]
fn validate_challenge_through_replay_in_a_pipe() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("challenge.rhai"),
        r#"if custom.challenge == true { CHALLENGE_REQUIRED } else { ALLOW }"#,
    )
    .unwrap();
    let mut child = common::riskgate()
        .args(["replay", "--rules"])
        .arg(dir.path())
        .arg("-")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut ask = |line: &str| -> serde_json::Value {
        writeln!(stdin, "{line}").unwrap();
        stdin.flush().unwrap();
        let mut out = String::new();
        stdout.read_line(&mut out).unwrap();
        serde_json::from_str(&out).unwrap()
    };
    let tracked = ask(
        r#"{"userId":"u1","action":"withdraw-funds","attributes":{"idempotencyKey":"k1","custom":{"challenge":true}}}"#,
    );
    assert_eq!(tracked["state"], "CHALLENGE_REQUIRED");
    let token = tracked["token"].as_str().unwrap().to_owned();
    let validate = format!(r#"{{"op":"validateChallenge","token":"{token}"}}"#);
    let pending = ask(&validate);
    assert_eq!(pending["isValid"], false);
    assert_eq!(pending["reason"], "not_succeeded");
    assert_eq!(pending["state"], "CHALLENGE_REQUIRED");
    let updated = ask(
        r#"{"op":"updateAction","userId":"u1","action":"withdraw-funds","idempotencyKey":"k1","state":"CHALLENGE_SUCCEEDED"}"#,
    );
    assert_eq!(updated["state"], "CHALLENGE_SUCCEEDED");
    let valid = ask(&validate);
    assert_eq!(
        valid,
        serde_json::json!({"isValid": true, "state": "CHALLENGE_SUCCEEDED", "userId": "u1",
            "action": "withdraw-funds", "idempotencyKey": "k1"})
    );
    assert_eq!(ask(&validate)["reason"], "already_used");
    assert_eq!(
        ask(r#"{"op":"validateChallenge","token":"forged"}"#)["reason"],
        "unknown_token"
    );
    assert_eq!(
        ask(r#"{"op":"validateChallenge"}"#)["error"]["code"],
        "invalid_request"
    );
    drop(stdin);
    assert!(child.wait().unwrap().success());
}

#[test]
fn simulate_writes_what_the_library_writes_and_replay_measures_it() {
    let args = [
        "simulate",
        "--seed",
        "5",
        "--users",
        "30",
        "--days",
        "10",
        "--warmup-days",
        "3",
    ];
    let out = riskgate(&args, None);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut p = riskgate::simulate::Params::default();
    p.seed = 5;
    p.users = 30;
    p.days = 10;
    p.warmup_days = 3;
    let mut expected = Vec::new();
    riskgate::simulate::simulate(&p, &mut expected).unwrap();
    assert_eq!(
        out.stdout, expected,
        "the flags' defaults are the library's"
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("simulated seed 5"));

    // From a file: the output is larger than a pipe holds while this test writes.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("signin.jsonl");
    std::fs::write(&path, &out.stdout).unwrap();
    let starter = concat!(env!("CARGO_MANIFEST_DIR"), "/starter");
    let path = path.to_string_lossy().into_owned();
    let out = riskgate(&["replay", "--rules", starter, "--labels", &path], None);
    assert!(out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("decisions per label"), "{err}");
    for row in [
        "attack     naive",
        "attack     (all)",
        "genuine    [signIn]",
    ] {
        assert!(err.contains(row), "{row} in {err}");
    }
    assert!(!err.contains("refused lines"), "{err}");
}
