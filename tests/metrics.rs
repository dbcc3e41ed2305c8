//! `Stats::publish`: what an application's `metrics` recorder (a Prometheus or StatsD exporter) receives.
//!
//! Needs `--features metrics`; without it this file only says so.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[cfg(not(feature = "metrics"))]
#[test]
fn metrics_tests_need_the_metrics_feature() {
    use std::io::Write;
    // Written past the test harness's capture, so a plain `cargo test` says what it skipped.
    let _ = writeln!(
        std::io::stderr(),
        "tests/metrics.rs: skipped, needs the `metrics` feature: run `cargo test --features metrics --test metrics`"
    );
}

#[cfg(feature = "metrics")]
mod publish {
    use metrics::{
        Counter, CounterFn, Gauge, Histogram, Key, KeyName, Metadata, Recorder, SharedString, Unit,
    };
    use riskgate::{Engine, RuleSet, TrackRequest};
    use std::collections::BTreeMap;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::{Arc, Mutex};

    /// One counter: the last absolute value set, and the sum of increments.
    #[derive(Default)]
    struct Cell {
        absolute: AtomicU64,
        increments: AtomicU64,
    }

    impl CounterFn for Cell {
        fn increment(&self, value: u64) {
            self.increments.fetch_add(value, Ordering::Relaxed);
        }
        fn absolute(&self, value: u64) {
            self.absolute.fetch_max(value, Ordering::Relaxed);
        }
    }

    /// Counters by `name{label=value,…}`.
    #[derive(Default)]
    struct Capture {
        counters: Mutex<BTreeMap<String, Arc<Cell>>>,
    }

    impl Capture {
        fn name(key: &Key) -> String {
            let labels: Vec<String> = key
                .labels()
                .map(|l| format!("{}={}", l.key(), l.value()))
                .collect();
            format!("{}{{{}}}", key.name(), labels.join(","))
        }

        /// Every counter's absolute value; a counter that was only incremented would be a publishing mistake.
        fn values(&self) -> BTreeMap<String, u64> {
            let counters = self.counters.lock().unwrap();
            for (name, c) in counters.iter() {
                assert_eq!(
                    c.increments.load(Ordering::Relaxed),
                    0,
                    "{name} was incremented"
                );
            }
            counters
                .iter()
                .map(|(k, c)| (k.clone(), c.absolute.load(Ordering::Relaxed)))
                .collect()
        }
    }

    impl Recorder for Capture {
        fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
        fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
        fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
        fn register_counter(&self, key: &Key, _: &Metadata<'_>) -> Counter {
            let cell = Arc::clone(
                self.counters
                    .lock()
                    .unwrap()
                    .entry(Self::name(key))
                    .or_default(),
            );
            Counter::from_arc(cell)
        }
        fn register_gauge(&self, key: &Key, _: &Metadata<'_>) -> Gauge {
            panic!("publish sets counters only, not the gauge `{}`", key.name())
        }
        fn register_histogram(&self, key: &Key, _: &Metadata<'_>) -> Histogram {
            panic!(
                "publish sets counters only, not the histogram `{}`",
                key.name()
            )
        }
    }

    #[test]
    fn publish_sets_every_counter_to_its_absolute_value() {
        let rules = RuleSet::from_sources([
            ("big", "//! priority: 10\nif custom.amount > 100 { REVIEW }"),
            ("huge", "//! priority: 5\nif custom.amount > 1000 { BLOCK }"),
            (
                "bad",
                "//! priority: 20\nif custom.amount == 3 { let x = 1; x.ends_with(\"1\") }",
            ),
        ])
        .unwrap();
        let engine = Engine::builder().ruleset(rules).build().unwrap();
        for amount in [5, 500, 5000, 3, 7] {
            engine
                .track(&TrackRequest::new("u1", "pay").custom("amount", amount))
                .unwrap();
        }
        let capture = Capture::default();
        metrics::with_local_recorder(&capture, || engine.stats().publish());
        let values = capture.values();
        let expected: BTreeMap<String, u64> = [
            ("riskgate_decisions_total{state=ALLOW}", 2),
            ("riskgate_decisions_total{state=BLOCK}", 1),
            ("riskgate_decisions_total{state=CHALLENGE_REQUIRED}", 1),
            ("riskgate_decisions_total{state=REVIEW}", 1),
            ("riskgate_rule_errors_total{rule=bad}", 1),
            ("riskgate_rule_errors_total{rule=big}", 0),
            ("riskgate_rule_errors_total{rule=huge}", 0),
            ("riskgate_rule_matches_total{rule=bad}", 0),
            ("riskgate_rule_matches_total{rule=big}", 2),
            ("riskgate_rule_matches_total{rule=huge}", 1),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
        let evaluation = "riskgate_evaluation_microseconds_total{}";
        assert!(values.contains_key(evaluation), "{values:?}");
        let rest: BTreeMap<String, u64> = values
            .into_iter()
            .filter(|(k, _)| k != evaluation)
            .collect();
        assert_eq!(rest, expected);

        // Published again after more decisions: the counters move to the new totals.
        engine
            .track(&TrackRequest::new("u2", "pay").custom("amount", 9))
            .unwrap();
        metrics::with_local_recorder(&capture, || engine.stats().publish());
        assert_eq!(capture.values()["riskgate_decisions_total{state=ALLOW}"], 3);
    }
}
