//! `riskgate bench`: how fast a ruleset decides a given event log, on this machine.
//!
//! The log is replayed as `riskgate replay` would (same parsing, same per-line clock), into a fresh engine per
//! round so that every round sees the same history, and only the `track` calls are timed. Rounds repeat until
//! both a minimum number of decisions and a minimum time are reached. The summary gives latency percentiles,
//! the mean, and decisions per second on one thread, and says how many rules run as native code.
//!
//! Without an event log it runs the realistic stream of `workload.rs`: distinct actions in a shuffled order,
//! each with an IP, a device, a user agent, an idempotency key and five `custom` attributes, decided by its ten
//! rules (or by `--rules`).
//!
//! Only decisions are timed into those figures: a refused line (invalid, or an idempotency conflict) and an
//! idempotent repeat (answered from the store) are counted apart, so they do not flatter the rate; and no rate
//! is given from fewer than [`MIN_CALLS_FOR_RATE`] decisions.

use riskgate::replay::{Outcome, Replayer};
use riskgate::{Engine, RuleSet};
use std::io::{self, BufReader};
use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use super::lines::{next_line, Line};
use super::progress::Progress;
use super::stats::{human, Histogram};
use super::summary::{rate, MIN_CALLS_FOR_RATE};

/// How long and how much to measure.
pub struct Options {
    /// Stop after at least this many timed decisions (and `min_time`).
    pub min_calls: u64,
    /// Stop after at least this much wall time (and `min_calls`).
    pub min_time: Duration,
    /// Run every rule in Rhai's interpreter instead of compiling the common subset.
    pub interpret: bool,
    /// `--store URL`: decide on this store (each round under a key prefix of its own).
    pub store: Option<String>,
}

/// Where the events come from.
pub enum Events {
    /// An event file, or `-` for standard input.
    Log(String),
    /// The realistic stream of `workload.rs` with this many distinct actions; with `repeats`, followed by every
    /// action once more (same attributes, another order): idempotent repeats.
    Realistic { actions: usize, repeats: bool },
}

pub fn run(rules: Option<&Path>, events: &Events, opts: &Options) -> ExitCode {
    let built = match rules {
        Some(dir) => RuleSet::builder()
            .rules_dir(dir)
            .and_then(|b| b.compile_rules(!opts.interpret).build()),
        None => super::workload::with_rules(RuleSet::builder())
            .compile_rules(!opts.interpret)
            .build(),
    };
    let ruleset = match built {
        Ok(r) => r,
        Err(e) => {
            super::check::report_load_error(&e);
            return ExitCode::FAILURE;
        }
    };
    let (measured, name) = match events {
        Events::Log(path) => (measure(&ruleset, path, opts), path.clone()),
        Events::Realistic { actions, repeats } => {
            let mut requests = super::workload::requests(*actions, "bench");
            if *repeats {
                let mut again = requests.clone();
                again.reverse();
                requests.extend(again);
            }
            let stream = super::workload::jsonl(&requests);
            println!(
                "events: the realistic stream, {actions} distinct actions{}",
                if *repeats { ", each repeated once" } else { "" }
            );
            let m = measure_from(&ruleset, opts, |_| {
                Ok(Some(
                    Box::new(io::Cursor::new(stream.as_slice())) as Box<dyn io::BufRead>
                ))
            });
            (m, "the realistic stream".to_owned())
        }
    };
    let events = name;
    match measured {
        Ok(m) => {
            print(&ruleset, &m);
            if m.latency.count() == 0 {
                eprintln!("error: no line of `{events}` reached `track`");
                return ExitCode::FAILURE;
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: cannot read `{events}`: {e}");
            ExitCode::FAILURE
        }
    }
}

/// What a bench run measured.
pub struct Measured {
    /// Decisions only.
    pub latency: Histogram,
    pub rounds: u64,
    /// Lines refused (by the reader or by `track`), in all rounds.
    pub refused: u64,
    /// Idempotent repeats answered from the store, in all rounds.
    pub repeats: u64,
    pub elapsed: Duration,
}

/// Replays `events` round after round until `opts` is satisfied (or a round times nothing).
pub fn measure(ruleset: &RuleSet, events: &str, opts: &Options) -> io::Result<Measured> {
    measure_from(ruleset, opts, |round| {
        Ok(if events == "-" {
            // Standard input can be read only once.
            (round == 0).then(|| Box::new(io::stdin().lock()) as Box<dyn io::BufRead>)
        } else {
            Some(Box::new(BufReader::new(std::fs::File::open(events)?)))
        })
    })
}

/// [`measure`] over the input `open(round)` gives for each round (`None`: no more rounds).
fn measure_from<'a>(
    ruleset: &RuleSet,
    opts: &Options,
    mut open: impl FnMut(u64) -> io::Result<Option<Box<dyn io::BufRead + 'a>>>,
) -> io::Result<Measured> {
    let mut m = Measured {
        latency: Histogram::default(),
        rounds: 0,
        refused: 0,
        repeats: 0,
        elapsed: Duration::ZERO,
    };
    let progress = Progress::new("bench", Some(opts.min_calls), "decisions");
    let started = Instant::now();
    loop {
        // With `--store file:PATH`, each round's own state file, removed after the round.
        let mut round_files = None;
        let mut builder = Engine::builder().ruleset(ruleset.clone());
        if let Some(mut s) = super::store_from(opts.store.as_deref(), ruleset.store_settings())
            .map_err(io::Error::other)?
        {
            s.key_prefix = format!("{}-bench-{}-{}", s.key_prefix, std::process::id(), m.rounds);
            if let Some(p) = &s.path {
                let mut round = p.as_os_str().to_owned();
                round.push(format!(".bench-{}-{}", std::process::id(), m.rounds));
                round_files = Some(std::path::PathBuf::from(round));
                s.path.clone_from(&round_files);
            }
            builder = builder.store(s);
        }
        let mut replayer = Replayer::new(builder).map_err(|e| io::Error::other(e.to_string()))?;
        let before = m.latency.count();
        let Some(mut input) = open(m.rounds)? else {
            drop(replayer);
            if let Some(p) = &round_files {
                remove_state(p);
            }
            break;
        };
        let mut n = 0u64;
        while let Some(line) = next_line(&mut input)? {
            n += 1;
            let Line::Text(bytes) = line else {
                m.refused += 1;
                continue;
            };
            let Some(out) = replayer.line(n, &bytes) else {
                continue;
            };
            match out.outcome {
                Outcome::Tracked(_) if out.repeat => m.repeats += 1,
                Outcome::Tracked(_) => {
                    if let Some(t) = out.track_latency {
                        m.latency.record(t);
                    }
                }
                Outcome::Refused(_) => m.refused += 1,
                _ => {}
            }
        }
        drop(replayer);
        if let Some(p) = &round_files {
            remove_state(p);
        }
        m.rounds += 1;
        progress.set(m.latency.count().min(opts.min_calls));
        let done = m.latency.count() >= opts.min_calls && started.elapsed() >= opts.min_time;
        if done || m.latency.count() == before {
            break;
        }
    }
    progress.finish();
    m.elapsed = started.elapsed();
    Ok(m)
}

/// Removes the state file `path` and its journals.
fn remove_state(path: &std::path::Path) {
    let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
        return;
    };
    let name = name.to_string_lossy().into_owned();
    let dir = if dir.as_os_str().is_empty() {
        std::path::Path::new(".")
    } else {
        dir
    };
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let n = e.file_name().to_string_lossy().into_owned();
            if n == name || n.starts_with(&format!("{name}.")) {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
}

fn print(ruleset: &RuleSet, m: &Measured) {
    let compiled = ruleset.rules().filter(|r| r.compiled).count();
    println!(
        "rules: {} ({} compiled to native code, {} interpreted by Rhai)",
        ruleset.len(),
        compiled,
        ruleset.len() - compiled
    );
    let h = &m.latency;
    let calls = h.count();
    println!(
        "decisions timed: {calls} in {} rounds of the log ({} refused lines and {} idempotent repeats not \
         timed), {} wall time",
        m.rounds,
        m.refused,
        m.repeats,
        human(m.elapsed)
    );
    if calls == 0 {
        return;
    }
    let busy = h.total().as_secs_f64().max(1e-9);
    let mean = Duration::from_secs_f64(busy / calls as f64);
    println!(
        "latency: p50 {}, p99 {}, p99.9 {}, max {}, mean {}",
        human(h.quantile(0.5)),
        human(h.quantile(0.99)),
        human(h.quantile(0.999)),
        human(h.max()),
        human(mean)
    );
    match rate(h) {
        Some(r) => println!("throughput: {r:.0} decisions/s on one thread (time inside track only)"),
        None => println!(
            "throughput: too few calls ({calls}) for a rate: time at least {MIN_CALLS_FOR_RATE} decisions (`--calls`)"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn measures_the_sample_log_until_both_bounds_are_met() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/rules");
        let events = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/events.jsonl");
        let rules = RuleSet::from_dir(dir).unwrap();
        let opts = Options {
            min_calls: 100,
            min_time: Duration::ZERO,
            interpret: false,
            store: None,
        };
        let m = measure(&rules, events, &opts).unwrap();
        assert!(m.latency.count() >= 100, "{}", m.latency.count());
        assert!(m.rounds >= 2);
        let per_round = m.latency.count() / m.rounds;
        assert!(per_round >= 5 && m.latency.count() % per_round == 0);
        assert!(m.latency.quantile(0.5) <= m.latency.quantile(0.999));
    }

    #[test]
    fn a_log_without_track_lines_stops_after_one_round() {
        let dir = tempfile::tempdir().unwrap();
        let events = dir.path().join("ops.jsonl");
        std::fs::write(
            &events,
            "{\"op\":\"validateChallenge\",\"token\":\"x\"}\n\n",
        )
        .unwrap();
        let rules = RuleSet::from_sources([("r", "()")]).unwrap();
        let opts = Options {
            min_calls: 10,
            min_time: Duration::ZERO,
            interpret: true,
            store: None,
        };
        let m = measure(&rules, events.to_str().unwrap(), &opts).unwrap();
        assert_eq!((m.latency.count(), m.rounds), (0, 1));
    }
}
