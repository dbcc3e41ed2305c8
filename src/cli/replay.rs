//! `riskgate replay`: JSON lines in, one JSON line out per line, in order; a summary on stderr.
//!
//! Each line is a track request (`{"userId","action","attributes"}`, optional `"timestamp"`) or an operation
//! (`{"op":"updateAction"|"getAction"|"validateChallenge",…}`). The engine's clock is set to each line's
//! timestamp (RFC 3339 or epoch milliseconds; the wall clock when absent), so a replay of a log is
//! deterministic.

use riskgate::{Engine, FakeClock, State, TrackError, TrackRequest};
use serde::Serialize;
use serde_json::{Map, Value};
use std::collections::BTreeMap;
use std::io::{self, BufRead, BufWriter, Write};
use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use super::lines::{next_line, Line, MAX_LINE_BYTES};
use super::stats::{human, Histogram};

/// What one replay saw.
#[derive(Default)]
pub struct Summary {
    pub lines: u64,
    pub tracked: u64,
    pub operations: u64,
    pub failed: BTreeMap<&'static str, u64>,
    pub states: BTreeMap<&'static str, u64>,
    /// Per rule: (enforce matches, times deciding, shadow matches, errors).
    pub rules: BTreeMap<String, [u64; 4]>,
    pub latency: Histogram,
    pub elapsed: Duration,
}

pub fn run(rules: &Path, events: &str) -> ExitCode {
    let clock = FakeClock::at(SystemTime::now());
    let engine = match Engine::builder()
        .clock(clock.clone())
        .rules_dir(rules)
        .and_then(|b| b.build())
    {
        Ok(e) => e,
        Err(e) => {
            super::check::report_load_error(&e);
            return ExitCode::FAILURE;
        }
    };
    let stdout = io::stdout();
    let mut out = BufWriter::new(stdout.lock());
    let result = if events == "-" {
        replay(&engine, &clock, &mut io::stdin().lock(), &mut out)
    } else {
        match std::fs::File::open(events) {
            Ok(f) => replay(&engine, &clock, &mut io::BufReader::new(f), &mut out),
            Err(e) => {
                eprintln!("error: cannot read `{events}`: {e}");
                return ExitCode::FAILURE;
            }
        }
    };
    let flushed = out.flush();
    match result.and_then(|s| flushed.map(|()| s)) {
        Ok(summary) => {
            print_summary(&summary);
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Replays every line of `input` into `out`.
pub fn replay(
    engine: &Engine,
    clock: &FakeClock,
    input: &mut impl BufRead,
    out: &mut impl Write,
) -> io::Result<Summary> {
    let mut s = Summary::default();
    for r in engine.ruleset().rules() {
        s.rules.insert(r.id.to_string(), [0; 4]);
    }
    let started = Instant::now();
    let mut n = 0u64;
    while let Some(line) = next_line(input)? {
        n += 1;
        if matches!(&line, Line::Text(t) if t.iter().all(u8::is_ascii_whitespace)) {
            continue;
        }
        s.lines += 1;
        let text = match line {
            Line::TooLong(len) => {
                let e = TrackError::InvalidRequest {
                    field: "line".into(),
                    reason: format!("is {len} bytes, at most {MAX_LINE_BYTES} are allowed"),
                };
                write_error(out, &mut s, n, &e)?;
                continue;
            }
            Line::Text(bytes) => match String::from_utf8(bytes) {
                Ok(t) => t,
                Err(_) => {
                    write_error(
                        out,
                        &mut s,
                        n,
                        &TrackError::InvalidJson("the line is not valid UTF-8".into()),
                    )?;
                    continue;
                }
            },
        };
        match handle(engine, clock, &text, &mut s) {
            Ok(json) => {
                out.write_all(json.as_bytes())?;
                out.write_all(b"\n")?;
            }
            Err(e) => write_error(out, &mut s, n, &e)?,
        }
    }
    s.elapsed = started.elapsed();
    Ok(s)
}

fn write_error(out: &mut impl Write, s: &mut Summary, line: u64, e: &TrackError) -> io::Result<()> {
    *s.failed.entry(e.code()).or_default() += 1;
    let message = serde_json::to_string(&e.to_string()).unwrap_or_else(|_| "\"\"".to_owned());
    writeln!(
        out,
        r#"{{"line":{line},"error":{{"code":"{}","message":{message}}}}}"#,
        e.code()
    )
}

fn handle(
    engine: &Engine,
    clock: &FakeClock,
    text: &str,
    s: &mut Summary,
) -> Result<String, TrackError> {
    let mut obj: Map<String, Value> = match serde_json::from_str::<Value>(text) {
        Ok(Value::Object(m)) => m,
        Ok(_) => {
            return Err(TrackError::InvalidRequest {
                field: "line".into(),
                reason: "expected a JSON object".into(),
            })
        }
        Err(e) => return Err(TrackError::InvalidJson(e.to_string())),
    };
    let at = match obj.remove("timestamp") {
        None => SystemTime::now(),
        Some(v) => parse_timestamp(&v)?,
    };
    clock.set(at);
    let op = match obj.remove("op") {
        None => None,
        Some(Value::String(op)) => Some(op),
        Some(_) => return Err(invalid("op", "expected a string")),
    };
    let Some(op) = op else {
        let req: TrackRequest = from_value(obj)?;
        let started = Instant::now();
        let resp = engine.track_at(&req, at);
        s.latency.record(started.elapsed());
        let resp = resp?;
        s.tracked += 1;
        *s.states.entry(resp.state.as_str()).or_default() += 1;
        for (i, id) in resp.rule_ids.iter().enumerate() {
            let e = s.rules.entry(id.to_string()).or_default();
            e[0] += 1;
            if i == 0 {
                e[1] += 1;
            }
        }
        for id in &resp.shadow_rule_ids {
            s.rules.entry(id.to_string()).or_default()[2] += 1;
        }
        for err in &resp.errors {
            s.rules.entry(err.rule_id.to_string()).or_default()[3] += 1;
        }
        return to_json(&resp);
    };
    s.operations += 1;
    match op.as_str() {
        "updateAction" => {
            let a: ActionArgs = from_value(obj.clone())?;
            let state = match obj.get("state") {
                Some(Value::String(v)) => v.parse::<State>().map_err(|m| invalid("state", &m))?,
                _ => return Err(invalid("state", "expected a state name")),
            };
            to_json(&engine.update_action(&a.user_id, &a.action, &a.idempotency_key, state)?)
        }
        "getAction" => {
            let a: ActionArgs = from_value(obj)?;
            match engine.get_action(&a.user_id, &a.action, &a.idempotency_key) {
                Some(r) => to_json(&r),
                None => Err(TrackError::ActionNotFound {
                    user_id: a.user_id,
                    action: a.action,
                    idempotency_key: a.idempotency_key,
                }),
            }
        }
        "validateChallenge" => {
            let token = match obj.get("token") {
                Some(Value::String(t)) => t.clone(),
                _ => return Err(invalid("token", "expected a string")),
            };
            to_json(&engine.validate_challenge(&token))
        }
        other => Err(invalid(
            "op",
            &format!("unknown operation `{other}`: expected updateAction, getAction or validateChallenge"),
        )),
    }
}

#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct ActionArgs {
    user_id: String,
    action: String,
    idempotency_key: String,
    #[serde(default, rename = "state")]
    _state: Option<Value>,
}

fn invalid(field: &str, reason: &str) -> TrackError {
    TrackError::InvalidRequest {
        field: field.into(),
        reason: reason.into(),
    }
}

fn from_value<T: serde::de::DeserializeOwned>(obj: Map<String, Value>) -> Result<T, TrackError> {
    serde_path_to_error::deserialize(Value::Object(obj)).map_err(|e| {
        let path = e.path().to_string();
        let field = if path == "." {
            "request".to_owned()
        } else {
            path
        };
        let msg = e.inner().to_string();
        invalid(&field, &msg)
    })
}

fn to_json<T: Serialize>(v: &T) -> Result<String, TrackError> {
    serde_json::to_string(v).map_err(|e| TrackError::InvalidJson(e.to_string()))
}

fn parse_timestamp(v: &Value) -> Result<SystemTime, TrackError> {
    match v {
        Value::Number(n) => match n.as_u64() {
            Some(ms) => Ok(UNIX_EPOCH + Duration::from_millis(ms)),
            None => Err(invalid(
                "timestamp",
                "epoch milliseconds must be a non-negative whole number",
            )),
        },
        Value::String(s) => time_from_rfc3339(s)
            .ok_or_else(|| invalid("timestamp", &format!("`{s}` is not an RFC 3339 timestamp"))),
        _ => Err(invalid(
            "timestamp",
            "expected an RFC 3339 string or epoch milliseconds",
        )),
    }
}

fn time_from_rfc3339(s: &str) -> Option<SystemTime> {
    let t = time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).ok()?;
    let nanos = u64::try_from(t.unix_timestamp_nanos()).ok()?;
    Some(UNIX_EPOCH + Duration::from_nanos(nanos))
}

fn print_summary(s: &Summary) {
    let failed: u64 = s.failed.values().sum();
    eprintln!(
        "replayed {} lines in {}: {} decisions, {} operations, {} refused",
        s.lines,
        human(s.elapsed),
        s.tracked,
        s.operations,
        failed
    );
    let states: Vec<String> = ["ALLOW", "CHALLENGE_REQUIRED", "REVIEW", "BLOCK"]
        .iter()
        .map(|k| format!("{k} {}", s.states.get(k).copied().unwrap_or(0)))
        .collect();
    eprintln!("states: {}", states.join(", "));
    if !s.failed.is_empty() {
        let f: Vec<String> = s.failed.iter().map(|(k, v)| format!("{k} {v}")).collect();
        eprintln!("refused lines: {}", f.join(", "));
    }
    eprintln!(
        "{:<32} {:>8} {:>8} {:>8} {:>8}",
        "rule", "matched", "decided", "shadow", "errors"
    );
    for (id, [m, d, sh, e]) in &s.rules {
        eprintln!("{id:<32} {m:>8} {d:>8} {sh:>8} {e:>8}");
    }
    let h = &s.latency;
    if h.count() > 0 {
        let per_sec = h.count() as f64 / h.total().as_secs_f64().max(1e-9);
        eprintln!(
            "track latency over {} calls: p50 {}, p99 {}, p99.9 {}, max {} ({:.0} decisions/s on one thread)",
            h.count(),
            human(h.quantile(0.5)),
            human(h.quantile(0.99)),
            human(h.quantile(0.999)),
            human(h.max()),
            per_sec
        );
    }
}
