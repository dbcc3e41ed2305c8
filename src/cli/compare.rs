//! The backtest, `riskgate replay --compare OTHER_DIR EVENTS`: one log through two rulesets, each on its own
//! engine (with its own history and store), line by line in step. It reports the decisions that changed,
//! grouped by (old → new) state with a few examples each, the per-rule hit counts side by side and, on a
//! labelled log, each ruleset's catch rate, friction and confusion matrix.
//!
//! Only first decisions are compared: an idempotent repeat returns what its action already is on each side,
//! and an operation's answer follows from the decisions before it.

use riskgate::replay::{Outcome, Output, Replayer, Tokens};
use riskgate::Engine;
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::io::{self, BufRead};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use super::lines::{next_line, Line};
use super::progress::Progress;
use super::summary::{rule_json, state_index, states_json, Summary, STATES};

/// Examples kept per (old → new) group.
pub const MAX_EXAMPLES: usize = 5;

/// One changed decision.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Example {
    pub line: u64,
    pub user_id: String,
    pub action: String,
    /// The deciding rule on each side; `None` when the default outcome applied (or the line was refused).
    pub from_rule: Option<String>,
    pub to_rule: Option<String>,
}

/// The changed decisions of one (old → new) pair.
#[derive(Clone, Debug, Default)]
pub struct Group {
    pub count: u64,
    pub examples: Vec<Example>,
}

/// Every changed decision, grouped.
#[derive(Default)]
pub struct Changes {
    /// Lines decided (or refused) on both sides.
    pub compared: u64,
    /// Of those, the ones whose state differs.
    pub changed: u64,
    pub groups: BTreeMap<(String, String), Group>,
}

/// What a line came to on one side, for comparison: a first decision's state or `refused`; `None` for
/// repeats and operations, which are not compared.
fn verdict(o: &Output) -> Option<(&'static str, Option<String>)> {
    match &o.outcome {
        Outcome::Tracked(r) if !o.repeat => Some((
            STATES[state_index(r.state)],
            r.priority_rule_id.as_ref().map(ToString::to_string),
        )),
        Outcome::Refused(_) => Some(("refused", None)),
        _ => None,
    }
}

impl Changes {
    /// Compares the two answers to one line.
    pub fn record(&mut self, old: &Output, new: &Output) {
        let (Some(a), Some(b)) = (verdict(old), verdict(new)) else {
            return;
        };
        self.compared += 1;
        if a.0 == b.0 {
            return;
        }
        self.changed += 1;
        let g = self
            .groups
            .entry((a.0.to_owned(), b.0.to_owned()))
            .or_default();
        g.count += 1;
        if g.examples.len() < MAX_EXAMPLES {
            g.examples.push(Example {
                line: old.line,
                user_id: old.user_id.clone().unwrap_or_default(),
                action: old.action.clone().unwrap_or_default(),
                from_rule: a.1,
                to_rule: b.1,
            });
        }
    }

    /// The groups, largest first (then by name).
    pub fn sorted(&self) -> Vec<(&(String, String), &Group)> {
        let mut v: Vec<_> = self.groups.iter().collect();
        v.sort_by(|x, y| y.1.count.cmp(&x.1.count).then_with(|| x.0.cmp(y.0)));
        v
    }
}

/// A backtest's result: each side's summary and the changes.
pub struct Backtest {
    pub base_name: String,
    pub other_name: String,
    pub base: Summary,
    pub other: Summary,
    pub changes: Changes,
}

/// What `riskgate replay --compare` does besides comparing.
pub struct Options {
    pub json: bool,
    pub tokens: Tokens,
    pub report: Option<PathBuf>,
    /// `--rba-sweep` thresholds, for the report's sweep chart (and a table after the text).
    pub sweep: Option<Vec<f64>>,
}

pub fn run(rules: &Path, other: &Path, events: &str, opts: &Options) -> ExitCode {
    let build = |dir: &Path| {
        Engine::builder()
            .rules_dir(dir)
            .and_then(Replayer::new)
            .map(|r| r.tokens(opts.tokens))
    };
    let (mut a, mut b) = match (build(rules), build(other)) {
        (Ok(a), Ok(b)) => (a, b),
        (Err(e), _) | (_, Err(e)) => {
            super::check::report_load_error(&e);
            return ExitCode::FAILURE;
        }
    };
    let progress = Progress::for_file("backtest", events);
    let result = if events == "-" {
        backtest(&mut a, &mut b, &mut io::stdin().lock(), &progress)
    } else {
        match std::fs::File::open(events) {
            Ok(f) => backtest(&mut a, &mut b, &mut io::BufReader::new(f), &progress),
            Err(e) => {
                eprintln!("error: cannot read `{events}`: {e}");
                return ExitCode::FAILURE;
            }
        }
    };
    progress.finish();
    let mut bt = match result {
        Ok(bt) => bt,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    bt.base_name = rules.display().to_string();
    bt.other_name = other.display().to_string();
    let sweep = match &opts.sweep {
        Some(t) => match super::replay::sweep_rows(rules, events, t) {
            Ok(rows) => Some(rows),
            Err(code) => return code,
        },
        None => None,
    };
    if opts.json {
        let mut v = bt.to_json();
        if let (Some(rows), Some(obj)) = (&sweep, v.as_object_mut()) {
            obj.insert("rbaSweep".into(), super::replay::sweep_json(rows));
        }
        println!("{v}");
    } else {
        print!("{}", bt.text());
        if let Some(rows) = &sweep {
            println!(
                "rba_score() sweep (one rule, `if rba_score() >= T {{ CHALLENGE_REQUIRED }}`):"
            );
            print!("{}", super::replay::sweep_table(rows));
        }
    }
    if let Some(path) = &opts.report {
        let page = super::report::Report {
            title: format!("riskgate backtest: {} vs {}", bt.base_name, bt.other_name),
            base: (&bt.base_name, &bt.base),
            other: Some((&bt.other_name, &bt.other)),
            changes: Some(&bt.changes),
            sweep: sweep.as_deref(),
        };
        if let Err(e) = std::fs::write(path, page.html()) {
            eprintln!("error: cannot write `{}`: {e}", path.display());
            return ExitCode::FAILURE;
        }
    }
    ExitCode::SUCCESS
}

/// Replays every line of `input` through both replayers in step.
pub fn backtest(
    a: &mut Replayer,
    b: &mut Replayer,
    input: &mut impl BufRead,
    progress: &Progress,
) -> io::Result<Backtest> {
    let ids = |r: &Replayer| -> Vec<String> {
        r.engine()
            .ruleset()
            .rules()
            .map(|r| r.id.to_string())
            .collect()
    };
    let (ia, ib) = (ids(a), ids(b));
    let mut bt = Backtest {
        base_name: String::new(),
        other_name: String::new(),
        base: Summary::new(ia.iter().map(String::as_str)),
        other: Summary::new(ib.iter().map(String::as_str)),
        changes: Changes::default(),
    };
    let started = Instant::now();
    let mut n = 0u64;
    while let Some(line) = next_line(input)? {
        n += 1;
        let (x, y) = match line {
            Line::TooLong(len) => {
                progress.inc(len as u64 + 1);
                (a.too_long(n, len), b.too_long(n, len))
            }
            Line::Text(bytes) => {
                progress.inc(bytes.len() as u64 + 1);
                match (a.line(n, &bytes), b.line(n, &bytes)) {
                    (Some(x), Some(y)) => (x, y),
                    _ => continue,
                }
            }
        };
        bt.base.count(&x);
        bt.other.count(&y);
        bt.changes.record(&x, &y);
    }
    bt.base.elapsed = started.elapsed();
    bt.other.elapsed = bt.base.elapsed;
    Ok(bt)
}

fn pct(x: f64) -> String {
    format!("{:.2}%", 100.0 * x)
}

fn rule_or_default(r: &Option<String>) -> &str {
    r.as_deref().unwrap_or("(default)")
}

/// One rule's row of the side-by-side table: its id and each side's counts (`None`: not in that ruleset).
pub type RuleRow<'a> = (&'a str, Option<&'a [u64; 4]>, Option<&'a [u64; 4]>);

impl Backtest {
    /// The union of both rulesets' rule ids, with each side's counts (`None`: not in that ruleset).
    pub fn rules(&self) -> Vec<RuleRow<'_>> {
        let ids: BTreeSet<&str> = self
            .base
            .rules
            .keys()
            .chain(self.other.rules.keys())
            .map(String::as_str)
            .collect();
        ids.into_iter()
            .map(|id| (id, self.base.rules.get(id), self.other.rules.get(id)))
            .collect()
    }

    pub fn text(&self) -> String {
        use std::fmt::Write as _;
        let (a, b) = (&self.base, &self.other);
        let (na, nb) = (&self.base_name, &self.other_name);
        let mut s = String::new();
        let _ = writeln!(
            s,
            "backtest of {} lines: `{na}` (base) vs `{nb}` (other); {} decisions compared, {} changed",
            a.lines, self.changes.compared, self.changes.changed
        );
        let w = na.len().max(nb.len()).clamp(12, 40);
        let _ = writeln!(s, "{:<20} {na:>w$} {nb:>w$}", "");
        let mut row = |name: &str, x: u64, y: u64| {
            let _ = writeln!(s, "{name:<20} {x:>w$} {y:>w$}");
        };
        row("decisions", a.decisions, b.decisions);
        row("repeats", a.repeats, b.repeats);
        row("refused", a.refused(), b.refused());
        for (i, st) in STATES.iter().enumerate() {
            row(st, a.states[i], b.states[i]);
        }
        if self.changes.groups.is_empty() {
            let _ = writeln!(s, "\nno decision changed");
        } else {
            let _ = writeln!(s, "\nchanged decisions (base → other):");
            for ((from, to), g) in self.changes.sorted() {
                let _ = writeln!(s, "  {from} → {to}: {}", g.count);
                for e in &g.examples {
                    let _ = writeln!(
                        s,
                        "    line {:<6} {:<20} {:<16} {} → {}",
                        e.line,
                        e.user_id,
                        e.action,
                        rule_or_default(&e.from_rule),
                        rule_or_default(&e.to_rule)
                    );
                }
                if g.count > g.examples.len() as u64 {
                    let _ = writeln!(s, "    … and {} more", g.count - g.examples.len() as u64);
                }
            }
        }
        let _ = writeln!(
            s,
            "\nper-rule hits over decisions (matched / decided; `-`: not in that ruleset):"
        );
        let _ = writeln!(s, "{:<36} {na:>w$} {nb:>w$}", "rule");
        let cell = |c: Option<&[u64; 4]>| match c {
            Some(c) => format!("{} / {}", c[0] + c[2], c[1]),
            None => "-".to_owned(),
        };
        for (id, x, y) in self.rules() {
            let _ = writeln!(s, "{id:<36} {:>w$} {:>w$}", cell(x), cell(y));
        }
        if !a.confusion.is_empty() || !b.confusion.is_empty() {
            let _ = writeln!(
                s,
                "\nlabelled decisions (attack: `attack` or `fraud`; genuine: `genuine`; caught: not ALLOW):"
            );
            let _ = writeln!(s, "{:<28} {na:>w$} {nb:>w$}", "");
            let (x, y) = (&a.confusion, &b.confusion);
            let mut line = |name: &str, p: String, q: String| {
                let _ = writeln!(s, "{name:<28} {p:>w$} {q:>w$}");
            };
            line("catch rate", pct(x.catch_rate()), pct(y.catch_rate()));
            line("friction", pct(x.friction()), pct(y.friction()));
            line(
                "attack → caught",
                x.caught.to_string(),
                y.caught.to_string(),
            );
            line(
                "attack → allowed",
                x.missed.to_string(),
                y.missed.to_string(),
            );
            line(
                "genuine → caught",
                x.challenged.to_string(),
                y.challenged.to_string(),
            );
            line(
                "genuine → allowed",
                x.allowed.to_string(),
                y.allowed.to_string(),
            );
        }
        s
    }

    pub fn to_json(&self) -> Value {
        let side = |name: &str, s: &Summary| {
            json!({
                "rules": name,
                "decisions": s.decisions,
                "repeats": s.repeats,
                "refused": s.refused(),
                "states": states_json(&s.states),
                "labels": if s.confusion.is_empty() { Value::Null } else { s.confusion.to_json() },
                "neverMatched": s.never_matched(),
            })
        };
        let groups: Vec<Value> = self
            .changes
            .sorted()
            .into_iter()
            .map(|((from, to), g)| {
                json!({
                    "from": from,
                    "to": to,
                    "count": g.count,
                    "examples": g.examples.iter().map(|e| json!({
                        "line": e.line,
                        "userId": e.user_id,
                        "action": e.action,
                        "fromRule": e.from_rule,
                        "toRule": e.to_rule,
                    })).collect::<Vec<_>>(),
                })
            })
            .collect();
        let rules: Vec<Value> = self
            .rules()
            .into_iter()
            .map(|(id, x, y)| {
                json!({
                    "id": id,
                    "base": x.map(rule_json),
                    "other": y.map(rule_json),
                })
            })
            .collect();
        json!({
            "lines": self.base.lines,
            "base": side(&self.base_name, &self.base),
            "other": side(&self.other_name, &self.other),
            "changed": {
                "compared": self.changes.compared,
                "total": self.changes.changed,
                "groups": groups,
            },
            "rules": rules,
        })
    }
}
