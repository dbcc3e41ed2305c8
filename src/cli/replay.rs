//! `riskgate replay`: JSON lines in, one JSON line out per line, in order; a summary on stderr.
//!
//! Each line is a track request (`{"userId","action","attributes"}`, optional `"timestamp"`) or an operation
//! (`{"op":"updateAction"|"getAction"|"validateChallenge",…}`). The engine's clock is set to each line's
//! timestamp (RFC 3339 or epoch milliseconds; the wall clock when absent), so a replay of a log is
//! deterministic.

//!
//! The line handling itself is the library's [`riskgate::replay::Replayer`]; this file reads lines, writes
//! the output and keeps the summary.

use riskgate::replay::{Labels, Output, Replayer, Tokens};
use riskgate::Engine;
use std::io::{self, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use super::lines::{next_line, Line};
use super::progress::Progress;
use super::summary::Summary;

/// What `riskgate replay` reports besides its output lines.
#[derive(Default)]
pub struct Options {
    /// Print the per-label table (catch rate and friction) on stderr.
    pub labels: bool,
    /// Also write the per-label tally as JSON to this file.
    pub labels_json: Option<String>,
    /// Add each new decision's trace to its output line.
    pub trace: bool,
    /// The summary as one JSON object on stderr instead of text.
    pub json: bool,
    /// Begin each output line with the input's line number, `userId` and `action`.
    pub echo: bool,
    /// How challenge tokens and generated idempotency keys are written.
    pub tokens: Tokens,
    /// Write the HTML report here.
    pub report: Option<PathBuf>,
    /// `--store URL`: the state store to replay on.
    pub store: Option<String>,
}

pub fn run(rules: &Path, events: &str, opts: &Options) -> ExitCode {
    let builder = Engine::builder().rules_dir(rules).and_then(|b| {
        let file = b.ruleset_store_settings();
        match super::store_from(opts.store.as_deref(), &file) {
            Ok(Some(s)) => Ok(b.store(s)),
            Ok(None) => Ok(b),
            Err(m) => Err(riskgate::LoadError::Store(m)),
        }
    });
    let mut replayer = match builder.and_then(Replayer::new) {
        Ok(r) => r.tokens(opts.tokens),
        Err(e) => {
            super::check::report_load_error(&e);
            return ExitCode::FAILURE;
        }
    };
    replayer.set_trace(opts.trace);
    let stdout = io::stdout();
    let mut out = BufWriter::new(stdout.lock());
    let progress = Progress::for_file("replay", events);
    let result = if events == "-" {
        replay(
            &mut replayer,
            &mut io::BufReader::new(io::stdin()),
            &mut out,
            opts.echo,
            &progress,
        )
    } else {
        match std::fs::File::open(events) {
            Ok(f) => replay(
                &mut replayer,
                &mut io::BufReader::new(f),
                &mut out,
                opts.echo,
                &progress,
            ),
            Err(e) => {
                eprintln!("error: cannot read `{events}`: {e}");
                return ExitCode::FAILURE;
            }
        }
    };
    progress.finish();
    // With `--store file:PATH`, everything the replay added is written before the summary.
    if let Err(e) = replayer.engine().flush() {
        eprintln!("error: cannot write the state: {e}");
        return ExitCode::FAILURE;
    }
    let flushed = out.flush();
    let summary = match result.and_then(|s| flushed.map(|()| s)) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    if opts.json {
        eprintln!("{}", summary.to_json());
    } else {
        eprint!("{}", summary.text());
    }
    if opts.labels || opts.labels_json.is_some() {
        print_labels(&summary.labels);
    }
    if let Some(path) = &opts.labels_json {
        if let Err(e) = std::fs::write(path, summary.labels.to_json() + "\n") {
            eprintln!("error: cannot write `{path}`: {e}");
            return ExitCode::FAILURE;
        }
    }
    if let Some(path) = &opts.report {
        let name = rules.display().to_string();
        return write_report(path, &name, &summary, None);
    }
    ExitCode::SUCCESS
}

fn write_report(
    path: &Path,
    name: &str,
    summary: &Summary,
    sweep: Option<&[(f64, Labels)]>,
) -> ExitCode {
    let page = super::report::Report {
        title: format!("riskgate replay: {name}"),
        base: (name, summary),
        other: None,
        changes: None,
        sweep,
    };
    match std::fs::write(path, page.html()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: cannot write `{}`: {e}", path.display());
            ExitCode::FAILURE
        }
    }
}

/// Replays every line of `input` into `out`; with `echo`, each output line begins with the input's line
/// number, `userId` and `action`.
///
/// Output is flushed whenever the input has nothing more buffered, before waiting for more: a program that
/// drives `riskgate replay -` through a pipe (send a track line, read its token, send `validateChallenge`)
/// gets each answer without closing its end, while a file is still written in large blocks.
pub fn replay<R: io::Read>(
    replayer: &mut Replayer,
    input: &mut io::BufReader<R>,
    out: &mut impl Write,
    echo: bool,
    progress: &Progress,
) -> io::Result<Summary> {
    let ids: Vec<String> = replayer
        .engine()
        .ruleset()
        .rules()
        .map(|r| r.id.to_string())
        .collect();
    let mut s = Summary::new(ids.iter().map(String::as_str));
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
            Line::TooLong(len) => {
                progress.inc(len as u64 + 1);
                replayer.too_long(n, len)
            }
            Line::Text(bytes) => {
                progress.inc(bytes.len() as u64 + 1);
                match replayer.line(n, &bytes) {
                    Some(o) => o,
                    None => continue,
                }
            }
        };
        s.count(&output);
        if echo {
            out.write_all(echoed(&output).as_bytes())?;
        } else {
            out.write_all(output.json.as_bytes())?;
        }
        out.write_all(b"\n")?;
    }
    s.elapsed = started.elapsed();
    Ok(s)
}

/// The output line with `"line"`, `"userId"` and `"action"` first (the latter two when the input named them).
pub fn echoed(o: &Output) -> String {
    let mut s = format!("{{\"line\":{}", o.line);
    for (key, v) in [("userId", &o.user_id), ("action", &o.action)] {
        // An action record already carries both; JSON escaping keeps `"userId":` out of string values.
        if o.json.contains(&format!("\"{key}\":")) {
            continue;
        }
        if let Some(v) = v {
            if let Ok(q) = serde_json::to_string(v) {
                s.push_str(&format!(",\"{key}\":{q}"));
            }
        }
    }
    // A refused line already begins with its number.
    let own = format!("{{\"line\":{},", o.line);
    let rest = o
        .json
        .strip_prefix(own.as_str())
        .or_else(|| o.json.strip_prefix('{'))
        .unwrap_or(&o.json);
    if !rest.starts_with('}') {
        s.push(',');
    }
    s.push_str(rest);
    s
}

fn print_labels(labels: &Labels) {
    if labels.is_empty() {
        eprintln!("labels: no line carried a `label`");
        return;
    }
    eprintln!("decisions per label (caught: attacks not allowed; friction: others not allowed):");
    eprint!("{}", labels.table());
}

/// The thresholds `--rba-sweep` tries when given none.
pub const DEFAULT_SWEEP: [f64; 12] = [
    0.01, 0.03, 0.1, 0.3, 0.5, 1.0, 2.0, 3.0, 5.0, 10.0, 30.0, 100.0,
];

/// `riskgate replay --rba-sweep`: replays a labelled log once per threshold `t` through a ruleset of one rule,
/// `if rba_score() >= t { CHALLENGE_REQUIRED }`, with the configuration (GeoIP databases, `[signals]`) of the
/// rules folder, and prints the share of attacks caught and the friction at each threshold.
///
/// With `report`, the folder's own rules are replayed too, for the report's other charts.
pub fn sweep(
    rules: &Path,
    events: &str,
    thresholds: &[f64],
    report: Option<&Path>,
    tokens: Tokens,
    json: bool,
) -> ExitCode {
    let rows = match sweep_rows(rules, events, thresholds) {
        Ok(rows) => rows,
        Err(code) => return code,
    };
    if json {
        println!("{}", sweep_json(&rows));
    } else {
        print!("{}", sweep_table(&rows));
    }
    let Some(path) = report else {
        return ExitCode::SUCCESS;
    };
    let mut replayer = match Engine::builder().rules_dir(rules).and_then(Replayer::new) {
        Ok(r) => r.tokens(tokens),
        Err(e) => {
            super::check::report_load_error(&e);
            return ExitCode::FAILURE;
        }
    };
    let summary = std::fs::File::open(events).and_then(|f| {
        let progress = Progress::for_file("replay", events);
        replay(
            &mut replayer,
            &mut io::BufReader::new(f),
            &mut io::sink(),
            false,
            &progress,
        )
    });
    match summary {
        Ok(s) => write_report(path, &rules.display().to_string(), &s, Some(&rows)),
        Err(e) => {
            eprintln!("error: cannot read `{events}`: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The per-threshold tallies of `--rba-sweep` (an error has been printed when this fails).
pub fn sweep_rows(
    rules: &Path,
    events: &str,
    thresholds: &[f64],
) -> Result<Vec<(f64, Labels)>, ExitCode> {
    if events == "-" {
        eprintln!("error: `--rba-sweep` replays the log once per threshold: give a file, not `-`");
        return Err(ExitCode::FAILURE);
    }
    let config = match config_with_absolute_paths(rules) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return Err(ExitCode::FAILURE);
        }
    };
    let progress = Progress::new(
        "rba_score() sweep",
        Some(thresholds.len() as u64),
        "thresholds",
    );
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
                return Err(ExitCode::FAILURE);
            }
        };
        let file = match std::fs::File::open(events) {
            Ok(f) => f,
            Err(e) => {
                eprintln!("error: cannot read `{events}`: {e}");
                return Err(ExitCode::FAILURE);
            }
        };
        let mut sink = io::sink();
        let hidden = Progress::hidden();
        match replay(
            &mut replayer,
            &mut io::BufReader::new(file),
            &mut sink,
            false,
            &hidden,
        ) {
            Ok(s) => rows.push((t, s.labels)),
            Err(e) => {
                eprintln!("error: {e}");
                return Err(ExitCode::FAILURE);
            }
        }
        progress.inc(1);
    }
    progress.finish();
    Ok(rows)
}

/// The share of attacks (labels `attack` and `fraud`) caught and the friction on `genuine` events, at one
/// threshold of a sweep.
pub fn sweep_point(l: &Labels) -> (f64, f64) {
    let (a, f) = (l.total("attack"), l.total("fraud"));
    let decided = a.allow + a.caught() + f.allow + f.caught();
    let caught = if decided == 0 {
        0.0
    } else {
        (a.caught() + f.caught()) as f64 / decided as f64
    };
    (caught, l.total("genuine").rate())
}

/// The sweep as JSON: one object per threshold with the attack catch rate (overall and per model) and the
/// friction on genuine events.
pub fn sweep_json(rows: &[(f64, Labels)]) -> serde_json::Value {
    let v: Vec<serde_json::Value> = rows
        .iter()
        .map(|(t, l)| {
            let models: serde_json::Map<String, serde_json::Value> = l
                .rows()
                .filter(|r| r.0 == "attack")
                .map(|(_, m, tally)| (m.to_owned(), tally.rate().into()))
                .collect();
            serde_json::json!({
                "threshold": t,
                "caught": sweep_point(l).0,
                "friction": sweep_point(l).1,
                "caughtPerModel": models,
            })
        })
        .collect();
    serde_json::Value::Array(v)
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
            100.0 * sweep_point(l).0,
            100.0 * sweep_point(l).1,
            100.0 * l.action_total("genuine", "signIn").rate()
        );
    }
    s
}

/// The folder's `riskgate.toml` with its `[geoip]` paths made absolute, so that a ruleset built from it alone
/// finds the same databases.
/// The largest `riskgate.toml` a ruleset reads (the library's bound).
const CONFIG_LIMIT: u64 = 1 << 20;

fn config_with_absolute_paths(rules: &Path) -> Result<String, String> {
    let path = rules.join("riskgate.toml");
    // The ruleset that was just loaded read this file within its bound; read it within the same bound again.
    let file = match std::fs::File::open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(String::new()),
        Err(e) => return Err(format!("cannot read `{}`: {e}", path.display())),
    };
    let mut text = String::new();
    file.take(CONFIG_LIMIT + 1)
        .read_to_string(&mut text)
        .map_err(|e| format!("cannot read `{}`: {e}", path.display()))?;
    if text.len() as u64 > CONFIG_LIMIT {
        return Err(format!(
            "`{}` is larger than {CONFIG_LIMIT} bytes, the most `riskgate.toml` may hold",
            path.display()
        ));
    }
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
