//! The counters behind `GET /metrics`, written in the Prometheus text format (version 0.0.4).
//!
//! A small registry rather than the `metrics` crates: riskgate needs a handful of counters and two histograms,
//! and every label value it would record (action codes, rule ids) comes from callers or rule files, so the
//! number of series must be capped here anyway. Each labelled family holds at most [`MAX_SERIES`] label sets;
//! values beyond that are counted under `_other`, so no caller can grow this past a fixed bound.

use dashmap::DashMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// The most label sets one family keeps; further values count under `_other`.
pub const MAX_SERIES: usize = 1000;

/// Upper bounds of the latency histograms' buckets, in seconds.
const BUCKETS: [f64; 14] = [
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
    10.0,
];

/// A counter family with up to two labels.
struct Family {
    name: &'static str,
    help: &'static str,
    labels: [&'static str; 2],
    /// Keyed by the label values joined with a NUL (which no label value here holds: action codes and rule
    /// ids have no control characters), so a lookup needs no allocation.
    series: DashMap<String, AtomicU64>,
}

impl Family {
    fn new(name: &'static str, help: &'static str, labels: [&'static str; 2]) -> Self {
        Family {
            name,
            help,
            labels,
            series: DashMap::new(),
        }
    }

    fn inc(&self, a: &str, b: &str) {
        self.add(a, b, 1);
    }

    fn add(&self, a: &str, b: &str, n: u64) {
        thread_local! {
            static KEY: std::cell::RefCell<String> = const { std::cell::RefCell::new(String::new()) };
        }
        let hit = KEY.with(|k| {
            let Ok(mut k) = k.try_borrow_mut() else {
                return false;
            };
            k.clear();
            k.push_str(a);
            k.push('\0');
            k.push_str(b);
            match self.series.get(k.as_str()) {
                Some(c) => {
                    c.fetch_add(n, Ordering::Relaxed);
                    true
                }
                None => false,
            }
        });
        if hit {
            return;
        }
        let key = if self.series.len() >= MAX_SERIES {
            "_other\0_other".to_owned()
        } else {
            format!("{a}\0{b}")
        };
        self.series
            .entry(key)
            .or_insert_with(|| AtomicU64::new(0))
            .fetch_add(n, Ordering::Relaxed);
    }

    fn write(&self, out: &mut String) {
        let _ = writeln!(out, "# HELP {} {}", self.name, self.help);
        let _ = writeln!(out, "# TYPE {} counter", self.name);
        let mut rows: Vec<_> = self
            .series
            .iter()
            .map(|e| (e.key().clone(), e.value().load(Ordering::Relaxed)))
            .collect();
        rows.sort();
        for (key, v) in rows {
            let (a, b) = key.split_once('\0').unwrap_or((&key, ""));
            let _ = write!(out, "{}{{{}=\"", self.name, self.labels[0]);
            escape(out, a);
            if !self.labels[1].is_empty() {
                let _ = write!(out, "\",{}=\"", self.labels[1]);
                escape(out, b);
            }
            let _ = writeln!(out, "\"}} {v}");
        }
    }
}

/// A latency histogram without labels.
struct Histogram {
    name: &'static str,
    help: &'static str,
    buckets: [AtomicU64; BUCKETS.len()],
    count: AtomicU64,
    sum_nanos: AtomicU64,
}

impl Histogram {
    fn new(name: &'static str, help: &'static str) -> Self {
        Histogram {
            name,
            help,
            buckets: Default::default(),
            count: AtomicU64::new(0),
            sum_nanos: AtomicU64::new(0),
        }
    }

    fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        if let Some(i) = BUCKETS.iter().position(|&b| secs <= b) {
            if let Some(b) = self.buckets.get(i) {
                b.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        let nanos = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        self.sum_nanos.fetch_add(nanos, Ordering::Relaxed);
    }

    fn write(&self, out: &mut String) {
        let _ = writeln!(out, "# HELP {} {}", self.name, self.help);
        let _ = writeln!(out, "# TYPE {} histogram", self.name);
        let mut cumulative = 0;
        for (bound, b) in BUCKETS.iter().zip(&self.buckets) {
            cumulative += b.load(Ordering::Relaxed);
            let _ = writeln!(out, "{}_bucket{{le=\"{bound}\"}} {cumulative}", self.name);
        }
        let count = self.count.load(Ordering::Relaxed);
        let _ = writeln!(out, "{}_bucket{{le=\"+Inf\"}} {count}", self.name);
        let sum = self.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9;
        let _ = writeln!(out, "{}_sum {sum}", self.name);
        let _ = writeln!(out, "{}_count {count}", self.name);
    }
}

fn escape(out: &mut String, v: &str) {
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

/// Everything `GET /metrics` reports that the engine does not count itself.
pub(crate) struct Metrics {
    decisions: Family,
    rule_hits: Family,
    rule_errors: Family,
    responses: Family,
    reloads: Family,
    track_seconds: Histogram,
    request_seconds: Histogram,
    pub(crate) in_flight: AtomicU64,
}

impl Metrics {
    pub(crate) fn new() -> Self {
        Metrics {
            decisions: Family::new(
                "riskgate_decisions_total",
                "Track responses by action and state (a repeat with the same idempotency key counts again).",
                ["action", "state"],
            ),
            rule_hits: Family::new(
                "riskgate_rule_hits_total",
                "Track responses in which a rule matched, by rule and mode.",
                ["rule", "mode"],
            ),
            rule_errors: Family::new(
                "riskgate_rule_errors_total",
                "Track responses in which a rule failed, by rule.",
                ["rule", ""],
            ),
            responses: Family::new(
                "riskgate_http_responses_total",
                "HTTP responses by route and status code.",
                ["route", "status"],
            ),
            reloads: Family::new(
                "riskgate_rules_reloads_total",
                "Rules reloads (SIGHUP or a folder change) by result.",
                ["result", ""],
            ),
            track_seconds: Histogram::new(
                "riskgate_track_duration_seconds",
                "Time the engine took to decide a track request.",
            ),
            request_seconds: Histogram::new(
                "riskgate_http_request_duration_seconds",
                "Time from a request's headers to its response, every route.",
            ),
            in_flight: AtomicU64::new(0),
        }
    }

    pub(crate) fn track(&self, resp: &crate::TrackResponse, action: &str, took: Duration) {
        self.track_seconds.observe(took);
        self.decisions.inc(action, wire_state(resp.state));
        for r in &resp.rule_ids {
            self.rule_hits.inc(r, "enforce");
        }
        for r in &resp.shadow_rule_ids {
            self.rule_hits.inc(r, "shadow");
        }
        for e in &resp.errors {
            self.rule_errors.inc(&e.rule_id, "");
        }
    }

    pub(crate) fn response(&self, route: &str, status: u16, took: Duration) {
        self.request_seconds.observe(took);
        self.responses.inc(route, &status.to_string());
    }

    pub(crate) fn reload(&self, ok: bool) {
        self.reloads.inc(if ok { "ok" } else { "error" }, "");
    }

    /// The Prometheus text for these counters and the engine's own.
    pub(crate) fn render(&self, engine: Option<&crate::Engine>) -> String {
        let mut out = String::with_capacity(4096);
        self.decisions.write(&mut out);
        self.rule_hits.write(&mut out);
        self.rule_errors.write(&mut out);
        self.responses.write(&mut out);
        self.reloads.write(&mut out);
        self.track_seconds.write(&mut out);
        self.request_seconds.write(&mut out);
        let _ = writeln!(
            out,
            "# HELP riskgate_http_requests_in_flight Requests being handled now.\n\
             # TYPE riskgate_http_requests_in_flight gauge\n\
             riskgate_http_requests_in_flight {}",
            self.in_flight.load(Ordering::Relaxed)
        );
        if let Some(e) = engine {
            let _ = writeln!(
                out,
                "# HELP riskgate_rule_evaluations_total New actions decided by running the rules (repeats excluded).\n\
                 # TYPE riskgate_rule_evaluations_total counter\n\
                 riskgate_rule_evaluations_total {}\n\
                 # HELP riskgate_stored_actions Actions the engine retains now.\n\
                 # TYPE riskgate_stored_actions gauge\n\
                 riskgate_stored_actions {}\n\
                 # HELP riskgate_rules_loaded Rules in the ruleset being served.\n\
                 # TYPE riskgate_rules_loaded gauge\n\
                 riskgate_rules_loaded {}",
                e.decisions(),
                e.stored_actions(),
                e.ruleset().len()
            );
        }
        out
    }
}

/// A state's name on this surface: the SDKs' `REVIEW_REQUIRED` for `State::Review`.
pub(crate) fn wire_state(s: crate::State) -> &'static str {
    match s {
        crate::State::Review => "REVIEW_REQUIRED",
        s => s.as_str(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_stop_growing_at_the_cap() {
        let f = Family::new("x_total", "x", ["a", "b"]);
        for i in 0..(MAX_SERIES + 50) {
            f.inc(&i.to_string(), "s");
        }
        assert_eq!(f.series.len(), MAX_SERIES + 1);
        let other = f
            .series
            .get("_other\0_other")
            .map(|c| c.load(Ordering::Relaxed));
        assert_eq!(other, Some(50));
    }

    #[test]
    fn labels_are_escaped_and_histograms_cumulate() {
        let f = Family::new("x_total", "x", ["a", ""]);
        f.inc("q\"\\\n", "");
        let mut out = String::new();
        f.write(&mut out);
        assert!(out.contains("x_total{a=\"q\\\"\\\\\\n\"} 1\n"), "{out}");
        let h = Histogram::new("h_seconds", "h");
        h.observe(Duration::from_micros(80));
        h.observe(Duration::from_millis(3));
        let mut out = String::new();
        h.write(&mut out);
        assert!(out.contains("h_seconds_bucket{le=\"0.0001\"} 1\n"), "{out}");
        assert!(out.contains("h_seconds_bucket{le=\"0.005\"} 2\n"), "{out}");
        assert!(out.contains("h_seconds_count 2\n"), "{out}");
    }
}
