//! `riskgate test`: the rule tests beside the rules (`<rules>/tests/*.toml`).
//!
//! A test file holds `[[test]]` tables, each an ordered list of `[[test.step]]`s. A step does one thing (`track`,
//! `updateAction`, `getAction` or `validateChallenge`) at its time and checks what came back against its
//! `expect` table. Every test runs on a fresh engine (the folder's rules, no history, no stored action) whose
//! clock is a fake one set to each step's time, so tests never share state and never read the wall clock.
//!
//! ```toml
//! [[test]]
//! name = "a sixth withdrawal within an hour is refused"
//! start = "2024-03-01T09:00:00Z"         # the first step's time (this is the default)
//!
//! [[test.step]]
//! repeat = 5                             # five withdrawals, one second apart
//! track = { userId = "u1", action = "withdraw-funds", attributes = { deviceId = "d1" } }
//!
//! [[test.step]]
//! at = "+10m"                            # after the step before (default "+1s"), or an RFC 3339 time
//! track = { userId = "u1", action = "withdraw-funds", attributes = { deviceId = "d1" } }
//! expect = { state = "BLOCK", priorityRuleId = "withdraw/velocity", signals = { 'velocity("1h")' = 5 } }
//! ```
//!
//! `expect` keys: `state`; `priorityRuleId` (`""` for none); `ruleIds` and `shadowRuleIds` (exact lists) and
//! `ruleIdsContain` and `shadowRuleIdsContain` (each listed id among them); `errors` (the ids of the rules that
//! failed, exactly); `signals` (expression → value, evaluated as the rules saw them, before the action is
//! recorded); `isValid` (for `validateChallenge`); `error` (the error code a refused step returns).
//! `updateAction`, `getAction` and `validateChallenge` act on the last tracked action (and its token) unless
//! they name `userId`, `action`, `idempotencyKey` or `token`.

use riskgate::{
    Engine, Explanation, FakeClock, RuleSet, State, TrackError, TrackRequest, TrackResponse,
};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, SystemTime};
use toml::Spanned;

/// The biggest test file read, in bytes.
const MAX_FILE_BYTES: u64 = 4 * 1024 * 1024;
/// The most steps (repeats counted) one test runs.
const MAX_STEPS: u64 = 100_000;
/// The first step's time when a test gives no `start`.
const DEFAULT_START: &str = "2024-03-01T09:00:00Z";

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    test: Vec<Test>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Test {
    name: Spanned<String>,
    start: Option<Spanned<String>>,
    #[serde(default)]
    step: Vec<Step>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Step {
    at: Option<Spanned<String>>,
    repeat: Option<Spanned<u64>>,
    track: Option<Spanned<toml::Value>>,
    update_action: Option<Spanned<ActionArgs>>,
    get_action: Option<Spanned<ActionArgs>>,
    validate_challenge: Option<Spanned<TokenArgs>>,
    #[serde(default)]
    expect: Expect,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct ActionArgs {
    user_id: Option<String>,
    action: Option<String>,
    idempotency_key: Option<String>,
    state: Option<Spanned<String>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct TokenArgs {
    token: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Expect {
    state: Option<Spanned<String>>,
    priority_rule_id: Option<Spanned<String>>,
    rule_ids: Option<Spanned<Vec<String>>>,
    rule_ids_contain: Option<Spanned<Vec<String>>>,
    shadow_rule_ids: Option<Spanned<Vec<String>>>,
    shadow_rule_ids_contain: Option<Spanned<Vec<String>>>,
    errors: Option<Spanned<Vec<String>>>,
    is_valid: Option<Spanned<bool>>,
    error: Option<Spanned<String>>,
    #[serde(default)]
    signals: BTreeMap<String, Spanned<toml::Value>>,
}

/// One failed expectation.
struct Failure {
    /// `file:line` of the expectation.
    at: String,
    message: String,
    /// The trace of the decision the expectation was about, as text.
    trace: Option<String>,
}

/// What running one test gave.
struct Outcome {
    name: String,
    failures: Vec<Failure>,
}

/// What reading one test file gave.
enum FileResult {
    /// The file's tests (those the filter selects).
    Ran(Vec<Outcome>),
    /// The file could not be read or is not a valid test file.
    Invalid(String),
}

pub fn run(rules: &Path, filter: Option<&str>, junit: bool) -> ExitCode {
    let ruleset = match RuleSet::from_dir(rules) {
        Ok(r) => r,
        Err(e) => {
            super::check::report_load_error(&e);
            return ExitCode::FAILURE;
        }
    };
    let files = match test_files(&rules.join("tests")) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut results = Vec::new();
    // A bar on a terminal for long suites (nothing when stderr is not one), cleared before the report.
    let progress = super::progress::Progress::new("test", Some(files.len() as u64), "files");
    for path in &files {
        let shown = path.display().to_string();
        results.push((shown.clone(), run_file(&ruleset, path, &shown, filter)));
        progress.inc(1);
    }
    progress.finish();
    let (mut passed, mut failed, mut invalid) = (0, 0, 0);
    for (_, r) in &results {
        match r {
            FileResult::Ran(tests) => {
                for t in tests {
                    if t.failures.is_empty() {
                        passed += 1;
                    } else {
                        failed += 1;
                    }
                }
            }
            FileResult::Invalid(_) => invalid += 1,
        }
    }
    let report = if junit {
        junit_report(&results)
    } else {
        let mut report = text_report(&results);
        let verdict = if failed + invalid == 0 {
            "ok"
        } else {
            "FAILED"
        };
        let _ = write!(
            report,
            "test result: {verdict}. {passed} passed; {failed} failed"
        );
        if invalid > 0 {
            let _ = write!(
                report,
                "; {invalid} invalid test file{}",
                if invalid == 1 { "" } else { "s" }
            );
        }
        if files.is_empty() {
            let _ = write!(
                report,
                " (no test files in `{}`)",
                rules.join("tests").display()
            );
        }
        report.push('\n');
        report
    };
    // Not `print!`, which panics when the reader has gone (`riskgate test | head`).
    if let Err(e) = std::io::Write::write_all(&mut std::io::stdout().lock(), report.as_bytes()) {
        if e.kind() != std::io::ErrorKind::BrokenPipe {
            eprintln!("error: {e}");
        }
        return ExitCode::FAILURE;
    }
    if failed + invalid == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// The `*.toml` files in `dir`, sorted; none when the folder does not exist.
fn test_files(dir: &Path) -> Result<Vec<PathBuf>, String> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(format!("cannot read `{}`: {e}", dir.display())),
    };
    let mut files: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "toml") && p.is_file())
        .collect();
    files.sort();
    Ok(files)
}

fn run_file(ruleset: &RuleSet, path: &Path, shown: &str, filter: Option<&str>) -> FileResult {
    let text = match read_bounded(path) {
        Ok(t) => t,
        Err(e) => return FileResult::Invalid(format!("{shown}: {e}")),
    };
    let file: File = match toml::from_str(&text) {
        Ok(f) => f,
        Err(e) => {
            let at = e
                .span()
                .map_or_else(String::new, |s| format!(":{}", line_col(&text, s.start)));
            return FileResult::Invalid(format!("{shown}{at}: {}", e.message()));
        }
    };
    let mut out = Vec::new();
    for test in &file.test {
        let name = test.name.get_ref().clone();
        if filter.is_some_and(|f| !format!("{shown}::{name}").contains(f)) {
            continue;
        }
        let lines = Lines {
            text: &text,
            file: shown,
        };
        let failures = match run_test(ruleset, test, &lines) {
            Ok(f) => f,
            Err(e) => return FileResult::Invalid(e),
        };
        out.push(Outcome { name, failures });
    }
    FileResult::Ran(out)
}

fn read_bounded(path: &Path) -> Result<String, String> {
    use std::io::Read;
    let f = std::fs::File::open(path).map_err(|e| e.to_string())?;
    let mut text = String::new();
    f.take(MAX_FILE_BYTES + 1)
        .read_to_string(&mut text)
        .map_err(|e| e.to_string())?;
    if text.len() as u64 > MAX_FILE_BYTES {
        return Err(format!("a test file holds at most {MAX_FILE_BYTES} bytes"));
    }
    Ok(text)
}

/// Turns byte offsets of one file into `file:line` (1-based).
struct Lines<'a> {
    text: &'a str,
    file: &'a str,
}

impl Lines<'_> {
    fn at<T>(&self, s: &Spanned<T>) -> String {
        format!("{}:{}", self.file, line_of(self.text, s.span().start))
    }
}

fn line_of(text: &str, offset: usize) -> usize {
    text.get(..offset)
        .map_or(1, |t| t.matches('\n').count() + 1)
}

fn line_col(text: &str, offset: usize) -> String {
    let before = text.get(..offset).unwrap_or("");
    let col = before
        .rfind('\n')
        .map_or(before.len(), |i| before.len() - i - 1)
        + 1;
    format!("{}:{col}", line_of(text, offset))
}

/// The state one test carries from step to step.
struct Run {
    engine: Engine,
    clock: FakeClock,
    now: SystemTime,
    /// The last tracked action: (userId, action, idempotencyKey).
    last: Option<(String, String, String)>,
    /// The last challenge token returned.
    token: Option<String>,
}

/// Runs `test`; its failed expectations, or why the test itself is invalid (`file:line: …`).
fn run_test(ruleset: &RuleSet, test: &Test, lines: &Lines) -> Result<Vec<Failure>, String> {
    let start = match &test.start {
        Some(s) => parse_time(s.get_ref()).map_err(|e| format!("{}: `start`: {e}", lines.at(s)))?,
        None => parse_time(DEFAULT_START).map_err(|e| format!("{}: {e}", lines.at(&test.name)))?,
    };
    let clock = FakeClock::at(start);
    let engine = Engine::builder()
        .ruleset(ruleset.clone())
        .clock(clock.clone())
        .build()
        .map_err(|e| format!("{}: {e}", lines.file))?;
    let mut run = Run {
        engine,
        clock,
        now: start,
        last: None,
        token: None,
    };
    let mut failures = Vec::new();
    let mut budget = MAX_STEPS;
    for (i, step) in test.step.iter().enumerate() {
        let repeat = step.repeat.as_ref().map_or(1, |r| *r.get_ref());
        if repeat == 0 || repeat > budget {
            let at = step
                .repeat
                .as_ref()
                .map_or_else(|| lines.at(&test.name), |r| lines.at(r));
            return Err(format!(
                "{at}: `repeat`: expected 1 to {budget} (a test runs at most {MAX_STEPS} steps)"
            ));
        }
        budget -= repeat;
        let at = match &step.at {
            Some(a) => step_time(run.now, a.get_ref())
                .map_err(|e| format!("{}: `at`: {e}", lines.at(a)))?,
            None if i == 0 => run.now,
            None => run.now + Duration::from_secs(1),
        };
        for r in 0..repeat {
            run.now = at + Duration::from_secs(r);
            run.clock.set(run.now);
            let last = r + 1 == repeat;
            let step_failures = run_step(&mut run, step, lines, i + 1, last)?;
            failures.extend(step_failures);
        }
    }
    Ok(failures)
}

/// What a step's operation returned, for its expectations.
#[derive(Default)]
struct Got {
    state: Option<State>,
    response: Option<TrackResponse>,
    is_valid: Option<bool>,
    error: Option<TrackError>,
    trace: Option<Explanation>,
    signals: Vec<(String, Result<serde_json::Value, String>)>,
}

fn run_step(
    run: &mut Run,
    step: &Step,
    lines: &Lines,
    number: usize,
    check: bool,
) -> Result<Vec<Failure>, String> {
    let ops = [
        step.track.as_ref().map(|s| lines.at(s)),
        step.update_action.as_ref().map(|s| lines.at(s)),
        step.get_action.as_ref().map(|s| lines.at(s)),
        step.validate_challenge.as_ref().map(|s| lines.at(s)),
    ];
    let given: Vec<&String> = ops.iter().flatten().collect();
    let [only] = given.as_slice() else {
        let at = given
            .get(1)
            .map_or_else(|| lines.file.to_owned(), |a| (*a).clone());
        return Err(format!(
            "{at}: step {number}: expected exactly one of `track`, `updateAction`, `getAction`, `validateChallenge`"
        ));
    };
    let op_at = (*only).clone();
    let mut got = Got::default();
    if let Some(track) = &step.track {
        let req: TrackRequest = serde_json::to_value(track.get_ref())
            .map_err(|e| e.to_string())
            .and_then(|v| serde_json::from_value(v).map_err(|e| e.to_string()))
            .map_err(|e| format!("{op_at}: `track`: {e}"))?;
        if check {
            got.trace = run.engine.explain_at(&req, run.now).ok();
            for expr in step.expect.signals.keys() {
                let v = run
                    .engine
                    .evaluate_at(&req, expr, run.now)
                    .map_err(|e| e.to_string());
                got.signals.push((expr.clone(), v));
            }
        }
        match run.engine.track_at(&req, run.now) {
            Ok(resp) => {
                run.last = Some((
                    req.user_id.clone(),
                    req.action.clone(),
                    resp.idempotency_key.clone(),
                ));
                if resp.token.is_some() {
                    run.token.clone_from(&resp.token);
                }
                got.state = Some(resp.state);
                got.response = Some(resp);
            }
            Err(e) => got.error = Some(e),
        }
    } else if let Some(args) = step.update_action.as_ref().or(step.get_action.as_ref()) {
        let a = args.get_ref();
        let (user, action, key) = identity(run, a).map_err(|e| format!("{op_at}: {e}"))?;
        let result = if step.update_action.is_some() {
            let Some(state) = &a.state else {
                return Err(format!("{op_at}: `updateAction`: `state` is missing"));
            };
            let new_state: State = state
                .get_ref()
                .parse()
                .map_err(|e| format!("{}: `state`: {e}", lines.at(state)))?;
            run.engine.update_action(&user, &action, &key, new_state)
        } else {
            run.engine
                .get_action(&user, &action, &key)
                .ok_or(TrackError::ActionNotFound {
                    user_id: user,
                    action,
                    idempotency_key: key,
                })
        };
        match result {
            Ok(record) => got.state = Some(record.state),
            Err(e) => got.error = Some(e),
        }
    } else if let Some(args) = &step.validate_challenge {
        let token = match (&args.get_ref().token, &run.token) {
            (Some(t), _) | (None, Some(t)) => t.clone(),
            (None, None) => {
                return Err(format!(
                    "{op_at}: `validateChallenge`: no earlier step returned a token"
                ))
            }
        };
        let v = run.engine.validate_challenge(&token);
        got.state = v.state;
        got.is_valid = Some(v.is_valid);
    }
    if !check {
        return Ok(match got.error {
            Some(e) if step.expect.error.is_none() => vec![Failure {
                at: op_at,
                message: format!("step {number}: refused: {e}"),
                trace: None,
            }],
            _ => Vec::new(),
        });
    }
    Ok(compare(&step.expect, &got, lines, number, &op_at))
}

/// The identity an `updateAction` or `getAction` acts on: as given, or the last tracked action's.
fn identity(run: &Run, a: &ActionArgs) -> Result<(String, String, String), String> {
    let last = run.last.as_ref();
    let pick = |given: &Option<String>, from: Option<&String>, name: &str| {
        given
            .clone()
            .or_else(|| from.cloned())
            .ok_or_else(|| format!("`{name}` is missing and no earlier step tracked an action"))
    };
    Ok((
        pick(&a.user_id, last.map(|l| &l.0), "userId")?,
        pick(&a.action, last.map(|l| &l.1), "action")?,
        pick(&a.idempotency_key, last.map(|l| &l.2), "idempotencyKey")?,
    ))
}

fn compare(e: &Expect, got: &Got, lines: &Lines, number: usize, op_at: &str) -> Vec<Failure> {
    let mut out = Vec::new();
    let trace = got.trace.as_ref().map(render_trace);
    let mut fail = |at: String, what: &str, expected: String, actual: String| {
        out.push(Failure {
            at,
            message: format!("step {number}: `{what}`: expected {expected}, got {actual}"),
            trace: trace.clone(),
        });
    };
    match (&e.error, &got.error) {
        (Some(want), Some(err)) if want.get_ref() == err.code() => {}
        (Some(want), Some(err)) => fail(
            lines.at(want),
            "error",
            want.get_ref().clone(),
            format!("{} ({err})", err.code()),
        ),
        (Some(want), None) => fail(
            lines.at(want),
            "error",
            want.get_ref().clone(),
            "no error".into(),
        ),
        (None, Some(err)) => {
            fail(
                op_at.to_owned(),
                "error",
                "no error".into(),
                format!("{} ({err})", err.code()),
            );
            return out;
        }
        (None, None) => {}
    }
    if let Some(want) = &e.state {
        let actual = got
            .state
            .map_or_else(|| "no state".to_owned(), |s| s.as_str().to_owned());
        let same = want
            .get_ref()
            .parse::<State>()
            .is_ok_and(|w| Some(w) == got.state);
        if !same {
            fail(lines.at(want), "state", want.get_ref().clone(), actual);
        }
    }
    let resp = got.response.as_ref();
    let ids = |v: Option<&Vec<riskgate::RuleId>>| -> Vec<String> {
        v.map(|v| v.iter().map(ToString::to_string).collect())
            .unwrap_or_default()
    };
    let rule_ids = ids(resp.map(|r| &r.rule_ids));
    let shadow = ids(resp.map(|r| &r.shadow_rule_ids));
    if let Some(want) = &e.priority_rule_id {
        let actual = resp
            .and_then(|r| r.priority_rule_id.as_ref())
            .map_or_else(String::new, ToString::to_string);
        if *want.get_ref() != actual {
            fail(
                lines.at(want),
                "priorityRuleId",
                quote(want.get_ref()),
                quote(&actual),
            );
        }
    }
    for (want, actual, what) in [
        (&e.rule_ids, &rule_ids, "ruleIds"),
        (&e.shadow_rule_ids, &shadow, "shadowRuleIds"),
    ] {
        if let Some(want) = want {
            if want.get_ref() != actual {
                fail(lines.at(want), what, list(want.get_ref()), list(actual));
            }
        }
    }
    for (want, actual, what) in [
        (&e.rule_ids_contain, &rule_ids, "ruleIdsContain"),
        (&e.shadow_rule_ids_contain, &shadow, "shadowRuleIdsContain"),
    ] {
        if let Some(want) = want {
            let missing: Vec<String> = want
                .get_ref()
                .iter()
                .filter(|w| !actual.contains(w))
                .cloned()
                .collect();
            if !missing.is_empty() {
                fail(
                    lines.at(want),
                    what,
                    format!("{} among them", list(want.get_ref())),
                    format!("{} (missing {})", list(actual), list(&missing)),
                );
            }
        }
    }
    if let Some(want) = &e.errors {
        let actual: Vec<String> = resp
            .map(|r| r.errors.iter().map(|e| e.rule_id.to_string()).collect())
            .unwrap_or_default();
        if *want.get_ref() != actual {
            let messages: Vec<String> = resp
                .map(|r| {
                    r.errors
                        .iter()
                        .map(|e| format!("{}: {}", e.rule_id, e.message))
                        .collect()
                })
                .unwrap_or_default();
            let shown = if messages.is_empty() {
                list(&actual)
            } else {
                format!("{} ({})", list(&actual), messages.join("; "))
            };
            fail(lines.at(want), "errors", list(want.get_ref()), shown);
        }
    }
    if let Some(want) = &e.is_valid {
        let actual = got
            .is_valid
            .map_or_else(|| "nothing".to_owned(), |v| v.to_string());
        if Some(*want.get_ref()) != got.is_valid {
            fail(
                lines.at(want),
                "isValid",
                want.get_ref().to_string(),
                actual,
            );
        }
    }
    for (expr, want) in &e.signals {
        let expected = serde_json::to_value(want.get_ref()).unwrap_or(serde_json::Value::Null);
        let actual = got.signals.iter().find(|(x, _)| x == expr).map(|(_, v)| v);
        let same = match actual {
            Some(Ok(v)) => json_eq(&expected, v),
            _ => false,
        };
        if !same {
            let shown = match actual {
                Some(Ok(v)) => v.to_string(),
                Some(Err(e)) => format!("an error: {e}"),
                None => "nothing (only `track` steps have signals)".to_owned(),
            };
            fail(lines.at(want), expr, expected.to_string(), shown);
        }
    }
    out
}

/// Equal as JSON, with integers and floats of the same value equal (`3` and `3.0`).
fn json_eq(a: &serde_json::Value, b: &serde_json::Value) -> bool {
    match (a.as_f64(), b.as_f64()) {
        (Some(x), Some(y)) => x == y,
        _ => a == b,
    }
}

fn quote(s: &str) -> String {
    if s.is_empty() {
        "none".to_owned()
    } else {
        format!("`{s}`")
    }
}

fn list(v: &[String]) -> String {
    format!(
        "[{}]",
        v.iter()
            .map(|s| format!("`{s}`"))
            .collect::<Vec<_>>()
            .join(", ")
    )
}

/// A decision's trace as indented text: one line per rule, then what it read.
pub fn render_trace(e: &Explanation) -> String {
    let mut out = String::new();
    let _ = write!(out, "decision: {}", e.state.as_str());
    if let Some(p) = &e.priority_rule_id {
        let _ = write!(out, " by `{p}`");
    }
    out.push('\n');
    for r in &e.rules {
        let what = match (&r.outcome, &r.error) {
            (Some(s), _) => format!("matched {}", s.as_str()),
            (None, Some(err)) => format!("error: {}", err.message),
            (None, None) => "no match".to_owned(),
        };
        let _ = writeln!(
            out,
            "{} ({}, priority {}): {what}",
            r.rule_id,
            r.mode.as_str(),
            r.priority
        );
        // Conditions first (`→`), then what the rule reads (`=`) that is not a condition itself.
        let reads = r.signals.iter().chain(&r.variables).chain(&r.custom);
        let reads = reads.filter(|v| !r.comparisons.iter().any(|c| c.expr == v.expr));
        let conditions = r.comparisons.iter().map(|v| (v, "→"));
        for (v, sign) in conditions.chain(reads.map(|v| (v, "="))) {
            match &v.error {
                Some(err) => {
                    let _ = writeln!(out, "    {} {sign} ? ({err})", v.expr);
                }
                None => {
                    let _ = writeln!(out, "    {} {sign} {}", v.expr, v.value);
                }
            }
        }
        for f in &r.rba {
            let _ = writeln!(out, "    rba {} factor = {}", f.chain, f.factor);
        }
    }
    out
}

fn text_report(results: &[(String, FileResult)]) -> String {
    let mut out = String::new();
    for (file, r) in results {
        match r {
            FileResult::Invalid(e) => {
                let _ = writeln!(out, "error: {e}");
            }
            FileResult::Ran(tests) => {
                for t in tests {
                    if t.failures.is_empty() {
                        let _ = writeln!(out, "ok   {file}::{}", t.name);
                        continue;
                    }
                    let _ = writeln!(out, "FAIL {file}::{}", t.name);
                    out.push_str(&failures_text(&t.failures, "  ", "    "));
                }
            }
        }
    }
    out
}

/// Each failure on a line of its own (after `indent`), each step's trace once, after its last failure (the
/// failures of one step share it), its lines after `trace_indent`.
fn failures_text(failures: &[Failure], indent: &str, trace_indent: &str) -> String {
    let mut out = String::new();
    for (i, f) in failures.iter().enumerate() {
        let _ = writeln!(out, "{indent}{}: {}", f.at, f.message);
        if failures
            .get(i + 1)
            .is_some_and(|next| next.trace == f.trace)
        {
            continue;
        }
        for line in f.trace.iter().flat_map(|t| t.lines()) {
            let _ = writeln!(out, "{trace_indent}{line}");
        }
    }
    out
}

fn junit_report(results: &[(String, FileResult)]) -> String {
    let mut suites = String::new();
    let (mut all, mut all_failed, mut all_errors) = (0, 0, 0);
    for (file, r) in results {
        let f = xml(file);
        match r {
            FileResult::Invalid(e) => {
                all += 1;
                all_errors += 1;
                let _ = write!(
                    suites,
                    "  <testsuite name=\"{f}\" tests=\"1\" failures=\"0\" errors=\"1\">\n    \
                     <testcase name=\"(test file)\" classname=\"{f}\">\n      \
                     <error message=\"{}\"/>\n    </testcase>\n  </testsuite>\n",
                    xml(e)
                );
            }
            FileResult::Ran(tests) => {
                let failed = tests.iter().filter(|t| !t.failures.is_empty()).count();
                all += tests.len();
                all_failed += failed;
                let _ = writeln!(
                    suites,
                    "  <testsuite name=\"{f}\" tests=\"{}\" failures=\"{failed}\" errors=\"0\">",
                    tests.len()
                );
                for t in tests {
                    let n = xml(&t.name);
                    if t.failures.is_empty() {
                        let _ = writeln!(suites, "    <testcase name=\"{n}\" classname=\"{f}\"/>");
                        continue;
                    }
                    let _ = writeln!(suites, "    <testcase name=\"{n}\" classname=\"{f}\">");
                    // One `<failure>` per test case (as JUnit readers expect): the first failed expectation as
                    // its message, every one of them with the traces as its text.
                    let body = failures_text(&t.failures, "", "");
                    let first = t
                        .failures
                        .first()
                        .map(|fl| format!("{}: {}", fl.at, fl.message))
                        .unwrap_or_default();
                    let _ = writeln!(
                        suites,
                        "      <failure message=\"{}\">{}</failure>",
                        xml(&first),
                        xml(&body)
                    );
                    let _ = writeln!(suites, "    </testcase>");
                }
                let _ = writeln!(suites, "  </testsuite>");
            }
        }
    }
    format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<testsuites name=\"riskgate\" tests=\"{all}\" \
         failures=\"{all_failed}\" errors=\"{all_errors}\">\n{suites}</testsuites>\n"
    )
}

/// `s` escaped for XML text and attributes (control characters XML 1.0 cannot hold are dropped).
fn xml(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            '\n' => out.push_str("&#10;"),
            '\t' | '\r' => out.push(' '),
            c if c.is_control() => {}
            c => out.push(c),
        }
    }
    out
}

fn parse_time(s: &str) -> Result<SystemTime, String> {
    let t = time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
        .map_err(|_| format!("`{s}` is not an RFC 3339 time such as `{DEFAULT_START}`"))?;
    let ns = t.unix_timestamp_nanos();
    let after = u64::try_from(ns).map_err(|_| format!("`{s}` is before 1970"))?;
    Ok(SystemTime::UNIX_EPOCH + Duration::from_nanos(after))
}

/// A step's `at`: `+N{s,m,h,d}` after `prev`, or an RFC 3339 time.
fn step_time(prev: SystemTime, s: &str) -> Result<SystemTime, String> {
    let Some(rel) = s.strip_prefix('+') else {
        return parse_time(s);
    };
    let bad = || format!("`{s}` is neither `+N` with a unit (s, m, h, d) nor an RFC 3339 time");
    let unit = rel.chars().last().ok_or_else(bad)?;
    let n: u64 = rel
        .get(..rel.len() - unit.len_utf8())
        .and_then(|n| n.parse().ok())
        .ok_or_else(bad)?;
    let secs = match unit {
        's' => Some(n),
        'm' => n.checked_mul(60),
        'h' => n.checked_mul(3600),
        'd' => n.checked_mul(86_400),
        _ => None,
    }
    .filter(|&s| s <= 100 * 365 * 86_400)
    .ok_or_else(bad)?;
    Ok(prev + Duration::from_secs(secs))
}
