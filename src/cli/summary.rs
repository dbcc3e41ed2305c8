//! What one replay saw, counted so that it can be trusted and diffed: decisions apart from idempotent repeats
//! (a repeat is answered from the store, so it is neither a decision nor a rule hit, as `Engine::decisions`
//! has it), refused lines apart from both, per action code, per rule, over event time and, on a labelled log,
//! as a confusion matrix. Printed as text or JSON; the backtest and the HTML report read the same counts.

use riskgate::replay::{Labels, Outcome, Output};
use riskgate::State;
use serde_json::{json, Map, Value};
use std::collections::BTreeMap;
use std::time::Duration;

use super::stats::{human, Histogram};

/// The four states a first decision can have, in the order every table shows them.
pub const STATES: [&str; 4] = ["ALLOW", "CHALLENGE_REQUIRED", "REVIEW", "BLOCK"];

/// The most distinct action codes counted apart; further ones are counted under `(other)`.
pub const MAX_ACTIONS: usize = 256;

/// Fewer timed calls than this give no calls-per-second figure: a rate from one or a few calls is noise.
pub const MIN_CALLS_FOR_RATE: u64 = 100;

/// The position of a first decision's state in [`STATES`].
pub fn state_index(s: State) -> usize {
    match s {
        State::Allow => 0,
        State::ChallengeRequired | State::ChallengeSucceeded | State::ChallengeFailed => 1,
        State::Review | State::ReviewSucceeded | State::ReviewFailed => 2,
        State::Block => 3,
    }
}

/// What a line's `label` says for the confusion matrix: `Some(true)` for an attack (`attack`, as `riskgate
/// simulate` writes, or `fraud`), `Some(false)` for `genuine`, `None` for any other label (such as the
/// simulator's `warmup`, genuine traffic while history builds up), which the matrix leaves out.
pub fn attack_label(label: &str) -> Option<bool> {
    match label {
        "attack" | "fraud" => Some(true),
        "genuine" => Some(false),
        _ => None,
    }
}

/// Decisions of one action code.
#[derive(Default, Clone)]
pub struct ActionTally {
    pub decisions: u64,
    pub repeats: u64,
    pub refused: u64,
    pub states: [u64; 4],
}

/// First decisions on labelled lines: attacks (`attack`, `fraud`) and genuine lines, caught (not `ALLOW`) or
/// allowed.
#[derive(Default, Clone, Copy, PartialEq, Eq, Debug)]
pub struct Confusion {
    /// Attacks not allowed.
    pub caught: u64,
    /// Attacks allowed.
    pub missed: u64,
    /// Genuine lines not allowed (friction).
    pub challenged: u64,
    /// Genuine lines allowed.
    pub allowed: u64,
}

impl Confusion {
    fn record(&mut self, attack: bool, allowed: bool) {
        match (attack, allowed) {
            (true, false) => self.caught += 1,
            (true, true) => self.missed += 1,
            (false, false) => self.challenged += 1,
            (false, true) => self.allowed += 1,
        }
    }

    /// Whether any labelled decision was counted.
    pub fn is_empty(&self) -> bool {
        *self == Confusion::default()
    }

    /// Attacks caught, as a share of attacks (0 when there are none).
    pub fn catch_rate(&self) -> f64 {
        share(self.caught, self.caught + self.missed)
    }

    /// Genuine lines not allowed, as a share of genuine lines (0 when there are none).
    pub fn friction(&self) -> f64 {
        share(self.challenged, self.challenged + self.allowed)
    }

    pub fn to_json(self) -> Value {
        json!({
            "attacks": self.caught + self.missed,
            "genuine": self.challenged + self.allowed,
            "catchRate": self.catch_rate(),
            "friction": self.friction(),
            "matrix": {
                "attack": {"caught": self.caught, "allowed": self.missed},
                "genuine": {"caught": self.challenged, "allowed": self.allowed},
            },
        })
    }
}

fn share(n: u64, of: u64) -> f64 {
    if of == 0 {
        0.0
    } else {
        n as f64 / of as f64
    }
}

/// Decisions over event time, per state, in at most [`Timeline::MAX_BINS`] bins: when the times seen span
/// more, the bin width doubles and neighbours merge, so memory stays bounded on any log.
#[derive(Clone)]
pub struct Timeline {
    width_ms: i64,
    bins: BTreeMap<i64, [u64; 4]>,
}

/// Bin widths in seconds, each a multiple of the one before (so bins merge exactly); past the last, doubling.
const WIDTHS_S: [i64; 15] = [
    1, 5, 10, 30, 60, 300, 600, 1800, 3600, 7200, 21_600, 43_200, 86_400, 604_800, 2_419_200,
];

impl Default for Timeline {
    fn default() -> Self {
        Timeline {
            width_ms: 1000,
            bins: BTreeMap::new(),
        }
    }
}

/// A bin width for people: `30s`, `5m`, `6h`, `7d`.
pub fn width_text(ms: i64) -> String {
    let s = ms / 1000;
    if s % 86_400 == 0 {
        format!("{}d", s / 86_400)
    } else if s % 3600 == 0 {
        format!("{}h", s / 3600)
    } else if s % 60 == 0 {
        format!("{}m", s / 60)
    } else {
        format!("{s}s")
    }
}

impl Timeline {
    /// The most bins kept.
    pub const MAX_BINS: i64 = 96;

    pub fn record(&mut self, at_ms: i64, state: usize) {
        let key = at_ms.div_euclid(self.width_ms);
        if let Some(n) = self.bins.entry(key).or_default().get_mut(state) {
            *n += 1;
        }
        while self.span() > Self::MAX_BINS {
            let old_width = self.width_ms;
            self.width_ms = WIDTHS_S
                .iter()
                .map(|s| s * 1000)
                .find(|&w| w > old_width)
                .unwrap_or_else(|| old_width.saturating_mul(2));
            let old = std::mem::take(&mut self.bins);
            for (k, v) in old {
                let start = k.saturating_mul(old_width);
                let e = self
                    .bins
                    .entry(start.div_euclid(self.width_ms))
                    .or_default();
                for (a, b) in e.iter_mut().zip(v) {
                    *a += b;
                }
            }
        }
    }

    fn span(&self) -> i64 {
        match (self.bins.keys().next(), self.bins.keys().next_back()) {
            (Some(a), Some(b)) => b.saturating_sub(*a).saturating_add(1),
            _ => 0,
        }
    }

    /// The bin width in milliseconds.
    pub fn width_ms(&self) -> i64 {
        self.width_ms
    }

    /// Every bin from the first to the last (empty ones included): its start (epoch ms) and counts per state.
    pub fn bins(&self) -> Vec<(i64, [u64; 4])> {
        let (Some(&first), Some(&last)) = (self.bins.keys().next(), self.bins.keys().next_back())
        else {
            return Vec::new();
        };
        (first..=last)
            .map(|k| {
                (
                    k.saturating_mul(self.width_ms),
                    self.bins.get(&k).copied().unwrap_or_default(),
                )
            })
            .collect()
    }
}

/// What one replay saw.
#[derive(Default)]
pub struct Summary {
    /// Lines answered (blank lines aside).
    pub lines: u64,
    /// Track lines that were decided (rules ran).
    pub decisions: u64,
    /// Track lines answered from the store as idempotent repeats.
    pub repeats: u64,
    /// Operations (`updateAction`, `getAction`, `validateChallenge`) that succeeded.
    pub operations: u64,
    /// Refused lines per error code.
    pub failed: BTreeMap<&'static str, u64>,
    /// Decisions per state, in [`STATES`] order.
    pub states: [u64; 4],
    /// Per rule, over decisions only: (enforce matches, times deciding, shadow matches, errors).
    pub rules: BTreeMap<String, [u64; 4]>,
    /// Per action code.
    pub actions: BTreeMap<String, ActionTally>,
    /// The latency of decisions (repeats and refused lines are not timed here).
    pub latency: Histogram,
    pub timeline: Timeline,
    pub elapsed: Duration,
    /// Track lines per `label` and `model` (repeats included, as `--labels` has always counted them).
    pub labels: Labels,
    /// Labelled decisions (repeats left out).
    pub confusion: Confusion,
}

impl Summary {
    /// A summary that lists every rule of `rules`, so that rules that never match are shown.
    pub fn new<'a>(rules: impl IntoIterator<Item = &'a str>) -> Summary {
        let mut s = Summary::default();
        for id in rules {
            s.rules.insert(id.to_owned(), [0; 4]);
        }
        s
    }

    pub fn count(&mut self, o: &Output) {
        self.lines += 1;
        self.labels.record(o);
        let action = o.action.as_deref().map(|a| {
            if self.actions.contains_key(a) || self.actions.len() < MAX_ACTIONS {
                a.to_owned()
            } else {
                "(other)".to_owned()
            }
        });
        match &o.outcome {
            Outcome::Tracked(_) if o.repeat => {
                self.repeats += 1;
                if let Some(a) = action {
                    self.actions.entry(a).or_default().repeats += 1;
                }
            }
            Outcome::Tracked(resp) => {
                self.decisions += 1;
                if let Some(t) = o.track_latency {
                    self.latency.record(t);
                }
                let st = state_index(resp.state);
                self.states[st] += 1;
                if let Some(at) = o.at_ms {
                    self.timeline.record(at, st);
                }
                if let Some(a) = action {
                    let e = self.actions.entry(a).or_default();
                    e.decisions += 1;
                    e.states[st] += 1;
                }
                if let Some(attack) = o.label.as_ref().and_then(|l| attack_label(&l.label)) {
                    self.confusion.record(attack, st == 0);
                }
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
            Outcome::Refused(e) => {
                *self.failed.entry(e.code()).or_default() += 1;
                if let Some(a) = action {
                    self.actions.entry(a).or_default().refused += 1;
                }
            }
            _ => {}
        }
    }

    pub fn refused(&self) -> u64 {
        self.failed.values().sum()
    }

    /// Rules that neither matched (enforce or shadow) nor failed on any decision.
    pub fn never_matched(&self) -> Vec<&str> {
        self.rules
            .iter()
            .filter(|(_, c)| c[0] == 0 && c[2] == 0 && c[3] == 0)
            .map(|(id, _)| id.as_str())
            .collect()
    }

    /// The summary as text (what `riskgate replay` prints on stderr).
    pub fn text(&self) -> String {
        use std::fmt::Write as _;
        let mut s = String::new();
        let _ = writeln!(
            s,
            "replayed {} lines in {}: {} decisions, {} repeats, {} operations, {} refused",
            self.lines,
            human(self.elapsed),
            self.decisions,
            self.repeats,
            self.operations,
            self.refused()
        );
        let _ = writeln!(s, "states: {}", states_text(&self.states));
        if !self.failed.is_empty() {
            let f: Vec<String> = self
                .failed
                .iter()
                .map(|(k, v)| format!("{k} {v}"))
                .collect();
            let _ = writeln!(s, "refused lines: {}", f.join(", "));
        }
        let _ = writeln!(
            s,
            "{:<32} {:>9} {:>9} {:>7} {:>7} {:>9} {:>7} {:>7}",
            "action", "decisions", "repeats", "refused", "ALLOW", "CHALLENGE", "REVIEW", "BLOCK"
        );
        for (a, t) in &self.actions {
            let _ = writeln!(
                s,
                "{a:<32} {:>9} {:>9} {:>7} {:>7} {:>9} {:>7} {:>7}",
                t.decisions,
                t.repeats,
                t.refused,
                t.states[0],
                t.states[1],
                t.states[2],
                t.states[3]
            );
        }
        let _ = writeln!(
            s,
            "{:<32} {:>9} {:>9} {:>7} {:>7}",
            "rule (over decisions)", "matched", "decided", "shadow", "errors"
        );
        for (id, [m, d, sh, e]) in &self.rules {
            let _ = writeln!(s, "{id:<32} {m:>9} {d:>9} {sh:>7} {e:>7}");
        }
        let never = self.never_matched();
        if !never.is_empty() {
            let _ = writeln!(s, "never matched: {}", never.join(", "));
        }
        if !self.confusion.is_empty() {
            let c = &self.confusion;
            let _ = writeln!(
                s,
                "labelled decisions: {} attacks, {:.2}% caught; {} genuine, {:.2}% friction",
                c.caught + c.missed,
                100.0 * c.catch_rate(),
                c.challenged + c.allowed,
                100.0 * c.friction()
            );
        }
        if let Some(line) = latency_text(&self.latency, "decision latency") {
            let _ = writeln!(s, "{line}");
        }
        s
    }

    /// The summary as one JSON object (`riskgate replay --format json`).
    pub fn to_json(&self) -> Value {
        let actions: Map<String, Value> = self
            .actions
            .iter()
            .map(|(a, t)| {
                (
                    a.clone(),
                    json!({
                        "decisions": t.decisions,
                        "repeats": t.repeats,
                        "refused": t.refused,
                        "states": states_json(&t.states),
                    }),
                )
            })
            .collect();
        json!({
            "lines": self.lines,
            "decisions": self.decisions,
            "repeats": self.repeats,
            "operations": self.operations,
            "refused": self.failed,
            "states": states_json(&self.states),
            "actions": actions,
            "rules": rules_json(&self.rules),
            "neverMatched": self.never_matched(),
            "labels": if self.confusion.is_empty() { Value::Null } else { self.confusion.to_json() },
            "latency": latency_json(&self.latency),
        })
    }
}

pub fn states_text(states: &[u64; 4]) -> String {
    STATES
        .iter()
        .zip(states)
        .map(|(k, n)| format!("{k} {n}"))
        .collect::<Vec<_>>()
        .join(", ")
}

pub fn states_json(states: &[u64; 4]) -> Value {
    let m: Map<String, Value> = STATES
        .iter()
        .zip(states)
        .map(|(k, n)| ((*k).to_owned(), Value::from(*n)))
        .collect();
    Value::Object(m)
}

pub fn rule_json(c: &[u64; 4]) -> Value {
    json!({"matched": c[0], "decided": c[1], "shadow": c[2], "errors": c[3]})
}

fn rules_json(rules: &BTreeMap<String, [u64; 4]>) -> Value {
    let m: Map<String, Value> = rules
        .iter()
        .map(|(id, c)| (id.clone(), rule_json(c)))
        .collect();
    Value::Object(m)
}

/// Calls per second inside the timed calls, or `None` below [`MIN_CALLS_FOR_RATE`] calls.
pub fn rate(h: &Histogram) -> Option<f64> {
    (h.count() >= MIN_CALLS_FOR_RATE).then(|| h.count() as f64 / h.total().as_secs_f64().max(1e-9))
}

/// `what over N calls: p50 …, p99 …, p99.9 …, max … (R decisions/s on one thread)`, or `(too few calls for a
/// rate)`; `None` when nothing was timed.
pub fn latency_text(h: &Histogram, what: &str) -> Option<String> {
    if h.count() == 0 {
        return None;
    }
    let rate = match rate(h) {
        Some(r) => format!("{r:.0} decisions/s on one thread"),
        None => format!("too few calls for a rate: fewer than {MIN_CALLS_FOR_RATE}"),
    };
    Some(format!(
        "{what} over {} calls: p50 {}, p99 {}, p99.9 {}, max {} ({rate})",
        h.count(),
        human(h.quantile(0.5)),
        human(h.quantile(0.99)),
        human(h.quantile(0.999)),
        human(h.max()),
    ))
}

pub fn latency_json(h: &Histogram) -> Value {
    let ns = |d: Duration| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
    json!({
        "calls": h.count(),
        "p50Ns": ns(h.quantile(0.5)),
        "p99Ns": ns(h.quantile(0.99)),
        "p999Ns": ns(h.quantile(0.999)),
        "maxNs": ns(h.max()),
        "perSecond": rate(h),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_timeline_stays_bounded_and_keeps_every_count() {
        let mut t = Timeline::default();
        for i in 0..10_000i64 {
            t.record(i * 7_919, (i % 4) as usize);
        }
        t.record(-5_000_000, 0);
        let bins = t.bins();
        assert!(bins.len() as i64 <= Timeline::MAX_BINS, "{}", bins.len());
        let total: u64 = bins.iter().map(|(_, c)| c.iter().sum::<u64>()).sum();
        assert_eq!(total, 10_001);
        assert!(bins.windows(2).all(|w| w[1].0 - w[0].0 == t.width_ms()));
        assert!(bins[0].0 <= -5_000_000);
        assert_eq!(width_text(t.width_ms()), "30m");
    }

    #[test]
    fn confusion_rates() {
        let mut c = Confusion::default();
        for (attack, allowed) in [(true, false), (true, false), (true, true), (false, false)] {
            c.record(attack, allowed);
        }
        for _ in 0..3 {
            c.record(false, true);
        }
        assert_eq!((c.caught, c.missed, c.challenged, c.allowed), (2, 1, 1, 3));
        assert!((c.catch_rate() - 2.0 / 3.0).abs() < 1e-12);
        assert!((c.friction() - 0.25).abs() < 1e-12);
    }

    #[test]
    fn no_rate_from_few_calls() {
        let mut h = Histogram::default();
        h.record(Duration::from_micros(3));
        assert_eq!(rate(&h), None);
        let line = latency_text(&h, "x").unwrap();
        assert!(line.contains("too few calls"), "{line}");
        for _ in 1..MIN_CALLS_FOR_RATE {
            h.record(Duration::from_micros(1));
        }
        assert!(rate(&h).is_some());
    }
}
