//! [`Engine::stats`](crate::Engine::stats): decisions by state, per-rule matches and errors, and the cumulative
//! evaluation time, since the engine was built.
//!
//! # Cost on the decision path
//! Counting must not make every decision write one shared cache line, which would bounce between cores. The
//! counters are striped: each thread writes the stripe its index picks (threads are numbered as they first
//! decide, modulo [`STRIPES`]), every stripe on cache lines of its own, with relaxed atomic adds. A snapshot
//! sums the stripes, so it is exact once decisions have finished and may miss ones still running.
//!
//! Per-rule counters belong to the ruleset a decision ran on, so a swap never races a running decision. A
//! replaced ruleset's counters are folded into per-rule totals (by rule id) once no decision holds it any more.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::rules::sandbox::RuleResult;
use crate::{RuleId, State};

/// How many stripes counters are spread over (a power of two).
pub(crate) const STRIPES: usize = 16;

/// Padding between stripes, in counters: two 64-byte cache lines (adjacent-line prefetch pairs them).
const PAD: usize = 16;

/// The decision states a first decision can have, in counter order.
const DECISIONS: [State; 4] = [
    State::Allow,
    State::ChallengeRequired,
    State::Review,
    State::Block,
];

/// This thread's stripe.
fn stripe() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static STRIPE: usize = NEXT.fetch_add(1, Ordering::Relaxed) % STRIPES;
    }
    STRIPE.with(|s| *s)
}

/// The engine-wide counters of one stripe: decisions per state, then evaluation nanoseconds.
#[repr(align(128))]
#[derive(Default)]
struct Stripe {
    counts: [AtomicU64; 5],
}

/// The engine's counters, kept in the engine across ruleset swaps.
#[derive(Default)]
pub(crate) struct Counters {
    stripes: [Stripe; STRIPES],
    retired: Mutex<Retired>,
}

/// Counters of rulesets no longer in use.
#[derive(Default)]
struct Retired {
    /// Still held by some decision: folded into `totals` once they are not.
    live: Vec<Arc<RuleCounters>>,
    /// Per rule id, summed over the rulesets folded in. Bounded by the distinct rule ids the engine's
    /// rulesets have had.
    totals: BTreeMap<RuleId, RuleStats>,
}

/// Per-rule matches and errors of one ruleset.
pub(crate) struct RuleCounters {
    ids: Vec<RuleId>,
    /// Per stripe: `PAD` unused counters, then (matches, errors) per rule, then `PAD` unused counters, so no
    /// other stripe's counters share a cache line with them.
    stripes: Vec<Box<[AtomicU64]>>,
}

impl RuleCounters {
    pub(crate) fn new(ids: Vec<RuleId>) -> Self {
        let len = PAD + 2 * ids.len() + PAD;
        RuleCounters {
            stripes: (0..STRIPES)
                .map(|_| (0..len).map(|_| AtomicU64::new(0)).collect())
                .collect(),
            ids,
        }
    }

    /// Counts the results of rules `idx` (indexes into the ruleset, the same order as `results`).
    pub(crate) fn record(&self, idx: &[usize], results: &[RuleResult]) {
        let Some(s) = self.stripes.get(stripe()) else {
            return;
        };
        for (&i, r) in idx.iter().zip(results) {
            let slot = match r {
                RuleResult::NoMatch => continue,
                RuleResult::Match(_) => PAD + 2 * i,
                RuleResult::Error(..) => PAD + 2 * i + 1,
            };
            if let Some(c) = s.get(slot) {
                c.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    fn add_to(&self, totals: &mut BTreeMap<RuleId, RuleStats>) {
        for (i, id) in self.ids.iter().enumerate() {
            let sum = |slot: usize| -> u64 {
                self.stripes
                    .iter()
                    .filter_map(|s| s.get(slot))
                    .map(|c| c.load(Ordering::Relaxed))
                    .sum()
            };
            let t = totals.entry(id.clone()).or_default();
            t.matches += sum(PAD + 2 * i);
            t.errors += sum(PAD + 2 * i + 1);
        }
    }
}

impl Counters {
    /// Counts one first decision in `state` whose evaluation started at `started`.
    pub(crate) fn record(&self, state: State, started: Instant) {
        let ns = u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX);
        let Some(s) = self.stripes.get(stripe()) else {
            return;
        };
        if let Some(i) = DECISIONS.iter().position(|&d| d == state) {
            if let Some(c) = s.counts.get(i) {
                c.fetch_add(1, Ordering::Relaxed);
            }
        }
        if let Some(c) = s.counts.get(4) {
            c.fetch_add(ns, Ordering::Relaxed);
        }
    }

    /// Keeps the counters of a ruleset being replaced.
    pub(crate) fn retire(&self, old: Arc<RuleCounters>) {
        if let Ok(mut r) = self.retired.lock() {
            r.live.push(old);
            r.fold();
        }
    }

    /// A snapshot, with the current ruleset's counters `current`.
    pub(crate) fn snapshot(&self, current: &RuleCounters) -> Stats {
        let sum = |i: usize| -> u64 {
            self.stripes
                .iter()
                .filter_map(|s| s.counts.get(i))
                .map(|c| c.load(Ordering::Relaxed))
                .sum()
        };
        let mut rules = BTreeMap::new();
        if let Ok(mut r) = self.retired.lock() {
            r.fold();
            rules.clone_from(&r.totals);
            for live in &r.live {
                live.add_to(&mut rules);
            }
        }
        current.add_to(&mut rules);
        let by_state = DecisionCounts {
            allow: sum(0),
            challenge_required: sum(1),
            review: sum(2),
            block: sum(3),
        };
        Stats {
            decisions: by_state.allow
                + by_state.challenge_required
                + by_state.review
                + by_state.block,
            by_state,
            rules,
            evaluation_time: Duration::from_nanos(sum(4)),
        }
    }
}

impl Retired {
    /// Folds the retired counters no decision holds any more into `totals`.
    fn fold(&mut self) {
        let (done, live): (Vec<_>, Vec<_>) = std::mem::take(&mut self.live)
            .into_iter()
            .partition(|c| Arc::strong_count(c) == 1);
        self.live = live;
        for c in done {
            c.add_to(&mut self.totals);
        }
    }
}

/// What [`Engine::stats`](crate::Engine::stats) returns: counts since the engine was built.
///
/// Only first decisions count (as in [`Engine::decisions`](crate::Engine::decisions)): a repeat returns the
/// stored action without evaluating rules. [`Engine::explain`](crate::Engine::explain) counts nowhere.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Stats {
    /// First decisions made.
    pub decisions: u64,
    /// First decisions by state.
    pub by_state: DecisionCounts,
    /// Per rule id, over every ruleset the engine has used: how often it matched and failed.
    pub rules: BTreeMap<RuleId, RuleStats>,
    /// The time spent evaluating rules and resolving decisions, summed over first decisions.
    pub evaluation_time: Duration,
}

/// First decisions per state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct DecisionCounts {
    /// `ALLOW`.
    pub allow: u64,
    /// `CHALLENGE_REQUIRED`.
    pub challenge_required: u64,
    /// `REVIEW`.
    pub review: u64,
    /// `BLOCK`.
    pub block: u64,
}

/// One rule's counts in [`Stats`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct RuleStats {
    /// Times it returned an outcome (enforce or shadow; whether or not it decided).
    pub matches: u64,
    /// Times it failed.
    pub errors: u64,
}

#[cfg(feature = "metrics")]
impl Stats {
    /// Publishes this snapshot through the [`metrics`] facade, so the application's recorder (a Prometheus or
    /// StatsD exporter) reports it: counters `riskgate_decisions_total` (label `state`),
    /// `riskgate_rule_matches_total` and `riskgate_rule_errors_total` (label `rule`), and
    /// `riskgate_evaluation_microseconds_total`, each set to its absolute value. Call it periodically (or
    /// before each scrape); nothing is published on the decision path.
    pub fn publish(&self) {
        let d = &self.by_state;
        for (state, n) in [
            (State::Allow, d.allow),
            (State::ChallengeRequired, d.challenge_required),
            (State::Review, d.review),
            (State::Block, d.block),
        ] {
            metrics::counter!("riskgate_decisions_total", "state" => state.as_str()).absolute(n);
        }
        for (id, r) in &self.rules {
            metrics::counter!("riskgate_rule_matches_total", "rule" => id.to_string())
                .absolute(r.matches);
            metrics::counter!("riskgate_rule_errors_total", "rule" => id.to_string())
                .absolute(r.errors);
        }
        let us = u64::try_from(self.evaluation_time.as_micros()).unwrap_or(u64::MAX);
        metrics::counter!("riskgate_evaluation_microseconds_total").absolute(us);
    }
}
