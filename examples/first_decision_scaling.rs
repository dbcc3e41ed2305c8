//! First decisions on one thread and on two (each on its own users), for a profiler: the realistic stream's
//! live actions stored first, then `N` fresh first decisions per thread (100,000 by default, the first
//! argument), timed as a whole; prints decisions per second and the two-thread ratio. With a capacity (the
//! second argument, 400,000 by default, as the bench engine has) below what the run stores, the store is
//! evicting throughout, as the criterion group's long runs are.
//!
//! ```sh
//! cargo build --release --example first_decision_scaling
//! target/release/examples/first_decision_scaling 100000 400000
//! perf record -e cpu-clock -g target/release/examples/first_decision_scaling 200000
//! RG_CHUNK=10000 target/release/examples/first_decision_scaling 200000 400000
//! ```
//!
//! A third argument (1 or 2) runs only that many threads. `RG_CHUNK=k` starts fresh threads every `k` calls
//! each, as the criterion group does per sample.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../src/cli/workload.rs"]
mod workload;

use riskgate::{Engine, FakeClock, RuleSet, TrackRequest};
use std::hint::black_box;
use std::time::{Duration, Instant};

fn engine(capacity: usize) -> Engine {
    let b = workload::with_rules(
        RuleSet::builder().config_toml(format!("[idempotency]\ncapacity = {capacity}")),
    );
    Engine::builder()
        .ruleset(b.build().unwrap())
        .clock(FakeClock::default())
        .build()
        .unwrap()
}

/// `n` fresh requests per thread, each thread on its own users (by user parity).
fn parts(n: usize, threads: usize, tag: &str) -> Vec<Vec<TrackRequest>> {
    let mut parts = vec![Vec::with_capacity(n); threads];
    for r in workload::requests(n * threads, tag) {
        let user: usize = r.user_id.trim_start_matches("user-").parse().unwrap();
        parts[user % threads].push(r);
    }
    parts
}

fn run(e: &Engine, parts: &[Vec<TrackRequest>]) -> Duration {
    // RG_CHUNK=k: fresh threads every k calls each (as a bench that spawns threads per sample does).
    let chunk: usize = std::env::var("RG_CHUNK")
        .ok()
        .map_or(usize::MAX, |c| c.parse().unwrap());
    let longest = parts.iter().map(Vec::len).max().unwrap_or(0);
    let start = Instant::now();
    let mut from = 0;
    while from < longest {
        let to = from.saturating_add(chunk).min(longest);
        std::thread::scope(|s| {
            for p in parts {
                let mine = &p[from.min(p.len())..to.min(p.len())];
                s.spawn(move || {
                    for r in mine {
                        black_box(e.track(r).unwrap());
                    }
                });
            }
        });
        from = to;
    }
    start.elapsed()
}

fn main() {
    let mut args = std::env::args().skip(1);
    let n: usize = args.next().map_or(100_000, |a| a.parse().expect("N"));
    let capacity: usize = args
        .next()
        .map_or(400_000, |a| a.parse().expect("capacity"));
    let only: Option<usize> = args.next().map(|a| a.parse().expect("threads"));
    let mut rates = [0f64; 3];
    for threads in [1usize, 2] {
        if only.is_some_and(|t| t != threads) {
            continue;
        }
        let e = engine(capacity);
        for r in &workload::requests(100_000, "live") {
            e.track(r).unwrap();
        }
        // Fill past the capacity first, so the timed part evicts from its start when the capacity is below
        // what the run stores.
        let warm = parts(n, threads, "warm");
        run(&e, &warm);
        let p = parts(n, threads, "timed");
        let t = run(&e, &p);
        rates[threads] = (n * threads) as f64 / t.as_secs_f64();
        println!(
            "{threads} thread(s): {:.0} first decisions/s ({:.0} ns per call per thread), {} stored",
            rates[threads],
            t.as_nanos() as f64 / n as f64,
            e.stored_actions()
        );
    }
    if rates[1] > 0.0 && rates[2] > 0.0 {
        println!("2 threads / 1 thread: {:.2}x", rates[2] / rates[1]);
    }
}
