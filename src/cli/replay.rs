//! `riskgate replay`: JSON lines in, one JSON line out per line, in order; a summary on stderr.
//!
//! Each line is a track request (`{"userId","action","attributes"}`, optional `"timestamp"`) or an operation
//! (`{"op":"updateAction"|"getAction"|"validateChallenge",…}`). The engine's clock is set to each line's
//! timestamp (RFC 3339 or epoch milliseconds; the wall clock when absent), so a replay of a log is
//! deterministic.

//!
//! The line handling itself is the library's [`riskgate::replay::Replayer`]; this file reads lines, writes
//! the output and keeps the summary.

use riskgate::replay::{Labels, Outcome, Output, Replayer};
use riskgate::Engine;
use std::collections::BTreeMap;
use std::io::{self, BufWriter, Write};
use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use super::lines::{next_line, Line};
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
    /// Decisions per `label` and `model` (lines that carry one).
    pub labels: Labels,
}

/// What `riskgate replay` reports besides its summary.
#[derive(Default)]
pub struct Options {
    /// Print the per-label table (catch rate and friction) on stderr.
    pub labels: bool,
    /// Also write the per-label tally as JSON to this file.
    pub labels_json: Option<String>,
    /// Add each new decision's trace to its output line.
    pub trace: bool,
}

pub fn run(rules: &Path, events: &str, opts: &Options) -> ExitCode {
    let mut replayer = match Engine::builder().rules_dir(rules).and_then(Replayer::new) {
        Ok(r) => r,
        Err(e) => {
            super::check::report_load_error(&e);
            return ExitCode::FAILURE;
        }
    };
    replayer.set_trace(opts.trace);
    let stdout = io::stdout();
    let mut out = BufWriter::new(stdout.lock());
    let result = if events == "-" {
        replay(
            &mut replayer,
            &mut io::BufReader::new(io::stdin()),
            &mut out,
        )
    } else {
        match std::fs::File::open(events) {
            Ok(f) => replay(&mut replayer, &mut io::BufReader::new(f), &mut out),
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
            if opts.labels || opts.labels_json.is_some() {
                print_labels(&summary.labels);
            }
            if let Some(path) = &opts.labels_json {
                if let Err(e) = std::fs::write(path, summary.labels.to_json() + "\n") {
                    eprintln!("error: cannot write `{path}`: {e}");
                    return ExitCode::FAILURE;
                }
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Replays every line of `input` into `out`.
///
/// Output is flushed whenever the input has nothing more buffered, before waiting for more: a program that
/// drives `riskgate replay -` through a pipe (send a track line, read its token, send `validateChallenge`)
/// gets each answer without closing its end, while a file is still written in large blocks.
pub fn replay<R: io::Read>(
    replayer: &mut Replayer,
    input: &mut io::BufReader<R>,
    out: &mut impl Write,
) -> io::Result<Summary> {
    let mut s = Summary::default();
    for r in replayer.engine().ruleset().rules() {
        s.rules.insert(r.id.to_string(), [0; 4]);
    }
    let started = Instant::now();
    let mut n = 0u64;
    loop {
        if input.buffer().is_empty() {
            out.flush()?;
        }
        let Some(line) = next_line(input)? else {
            break;
        };
        n += 1;
        let output = match line {
            Line::TooLong(len) => replayer.too_long(n, len),
            Line::Text(bytes) => match replayer.line(n, &bytes) {
                Some(o) => o,
                None => continue,
            },
        };
        s.lines += 1;
        s.count(&output);
        out.write_all(output.json.as_bytes())?;
        out.write_all(b"\n")?;
    }
    s.elapsed = started.elapsed();
    Ok(s)
}

impl Summary {
    fn count(&mut self, o: &Output) {
        self.labels.record(o);
        if let Some(t) = o.track_latency {
            self.latency.record(t);
        }
        match &o.outcome {
            Outcome::Tracked(resp) => {
                self.tracked += 1;
                *self.states.entry(resp.state.as_str()).or_default() += 1;
                for (i, id) in resp.rule_ids.iter().enumerate() {
                    let e = self.rules.entry(id.to_string()).or_default();
                    e[0] += 1;
                    if i == 0 {
                        e[1] += 1;
                    }
                }
                for id in &resp.shadow_rule_ids {
                    self.rules.entry(id.to_string()).or_default()[2] += 1;
                }
                for err in &resp.errors {
                    self.rules.entry(err.rule_id.to_string()).or_default()[3] += 1;
                }
            }
            Outcome::Operation => self.operations += 1,
            Outcome::Refused(e) => *self.failed.entry(e.code()).or_default() += 1,
            _ => {}
        }
    }
}

fn print_labels(labels: &Labels) {
    if labels.is_empty() {
        eprintln!("labels: no line carried a `label`");
        return;
    }
    eprintln!("decisions per label (caught: attacks not allowed; friction: others not allowed):");
    eprint!("{}", labels.table());
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

/// The thresholds `--rba-sweep` tries when given none.
pub const DEFAULT_SWEEP: [f64; 12] = [
    0.01, 0.03, 0.1, 0.3, 0.5, 1.0, 2.0, 3.0, 5.0, 10.0, 30.0, 100.0,
];

/// `riskgate replay --rba-sweep`: replays a labelled log once per threshold `t` through a ruleset of one rule,
/// `if rba_score() >= t { CHALLENGE_REQUIRED }`, with the configuration (GeoIP databases, `[signals]`) of the
/// rules folder, and prints the share of attacks caught and the friction at each threshold.
pub fn sweep(rules: &Path, events: &str, thresholds: &[f64]) -> ExitCode {
    if events == "-" {
        eprintln!("error: `--rba-sweep` replays the log once per threshold: give a file, not `-`");
        return ExitCode::FAILURE;
    }
    let config = match config_with_absolute_paths(rules) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut rows: Vec<(f64, Labels)> = Vec::new();
    for &t in thresholds {
        let built = riskgate::RuleSet::builder()
            .config_toml(config.clone())
            .rule(
                "rba-sweep",
                format!("if rba_score() >= {t:?} {{ CHALLENGE_REQUIRED }}"),
            )
            .build();
        let mut replayer = match built.and_then(|r| Replayer::new(Engine::builder().ruleset(r))) {
            Ok(r) => r,
            Err(e) => {
                super::check::report_load_error(&e);
                return ExitCode::FAILURE;
            }
        };
        let file = match std::fs::File::open(events) {
            Ok(f) => f,
            Err(e) => {
                eprintln!("error: cannot read `{events}`: {e}");
                return ExitCode::FAILURE;
            }
        };
        let mut sink = io::sink();
        match replay(&mut replayer, &mut io::BufReader::new(file), &mut sink) {
            Ok(s) => rows.push((t, s.labels)),
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::FAILURE;
            }
        }
    }
    print!("{}", sweep_table(&rows));
    ExitCode::SUCCESS
}

/// One line per threshold: caught per attacker model and overall, friction on genuine events (all of them, and
/// sign-ins alone).
pub fn sweep_table(rows: &[(f64, Labels)]) -> String {
    use std::fmt::Write as _;
    let mut models: Vec<String> = Vec::new();
    for (_, l) in rows {
        for (label, model, _) in l.rows() {
            if label == "attack" && !models.iter().any(|m| m == model) {
                models.push(model.to_owned());
            }
        }
    }
    let mut s = String::new();
    let _ = write!(s, "{:>9}", "threshold");
    for m in &models {
        let _ = write!(s, " {:>9}", m);
    }
    let _ = writeln!(s, " {:>9} {:>9} {:>9}", "caught", "friction", "(signIn)");
    for (t, l) in rows {
        let _ = write!(s, "{t:>9}");
        for m in &models {
            let row = l
                .rows()
                .find(|r| r.0 == "attack" && r.1 == m)
                .map(|r| r.2.rate())
                .unwrap_or(0.0);
            let _ = write!(s, " {:>8.2}%", 100.0 * row);
        }
        let _ = writeln!(
            s,
            " {:>8.2}% {:>8.2}% {:>8.2}%",
            100.0 * l.total("attack").rate(),
            100.0 * l.total("genuine").rate(),
            100.0 * l.action_total("genuine", "signIn").rate()
        );
    }
    s
}

/// The folder's `riskgate.toml` with its `[geoip]` paths made absolute, so that a ruleset built from it alone
/// finds the same databases.
fn config_with_absolute_paths(rules: &Path) -> Result<String, String> {
    let path = rules.join("riskgate.toml");
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(String::new()),
        Err(e) => return Err(format!("cannot read `{}`: {e}", path.display())),
    };
    let mut doc: toml::Table = text
        .parse()
        .map_err(|e| format!("`{}`: {e}", path.display()))?;
    if let Some(toml::Value::Table(geo)) = doc.get_mut("geoip") {
        for (_, v) in geo.iter_mut() {
            if let toml::Value::String(p) = v {
                *p = rules.join(&*p).display().to_string();
            }
        }
    }
    toml::to_string(&doc).map_err(|e| format!("`{}`: {e}", path.display()))
}
