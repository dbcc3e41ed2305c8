//! The Redis store against Redis itself, on loopback, in one run (feature `redis`; `cargo bench --features redis
//! --bench redis`): a bare PING round trip, first decisions and repeats (p50, p99), decisions per second from 32
//! concurrent async callers, and `redis-benchmark -t set -c 32` (non-pipelined) on the same server. It starts
//! its own redis-server on a free port (the tests' helper) and prints the table BENCHMARKS.md shows.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

#[path = "../tests/common/redis.rs"]
#[allow(dead_code)]
mod server;

use riskgate::{Engine, RuleSet, TrackRequest};
use std::time::{Duration, Instant};

const N: usize = 20_000;
const CALLERS: usize = 32;
/// Requests `redis-benchmark` sends.
const SET_N: u64 = 200_000;

fn pct(v: &mut [Duration], p: f64) -> Duration {
    v.sort_unstable();
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v.get(i).copied().unwrap_or_default()
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

/// The server's CPU time so far (user and system, seconds).
fn server_cpu(con: &mut redis::Connection) -> f64 {
    let info: String = redis::cmd("INFO").arg("cpu").query(con).unwrap_or_default();
    info.lines()
        .filter(|l| l.starts_with("used_cpu_sys:") || l.starts_with("used_cpu_user:"))
        .filter_map(|l| l.split(':').nth(1)?.trim().parse::<f64>().ok())
        .sum()
}

/// Commands the server ran since the last `CONFIG RESETSTAT` (a script's `redis.call`s each count), less
/// this bench's own `INFO` and `CONFIG`; the statistics are reset after.
fn commands(con: &mut redis::Connection) -> u64 {
    let stats: String = redis::cmd("INFO")
        .arg("commandstats")
        .query(con)
        .unwrap_or_default();
    let n = stats
        .lines()
        .filter(|l| !l.starts_with("cmdstat_info") && !l.starts_with("cmdstat_config"))
        .filter_map(|l| {
            l.split("calls=")
                .nth(1)?
                .split(',')
                .next()?
                .parse::<u64>()
                .ok()
        })
        .sum();
    let _: redis::RedisResult<()> = redis::cmd("CONFIG").arg("RESETSTAT").query(con);
    n
}

fn request(i: usize) -> TrackRequest {
    TrackRequest::new(format!("user{}", i % 1000), "signIn")
        .idempotency_key(format!("k{i}"))
        .ip(format!("10.{}.{}.{}", i % 3, i % 250, i % 7))
        .device(format!("dev{}", i % 1500))
}

fn main() {
    let Some(srv) = server::Server::start() else {
        eprintln!("redis-server is not installed: nothing to measure");
        return;
    };
    let rules = RuleSet::builder()
        .rule("fast", r#"if velocity("1h") > 20 { BLOCK }"#)
        .rule("ip", r#"if velocity_ip("10m") > 50 { REVIEW }"#)
        .rule(
            "devs",
            r#"if distinct_devices("1h") > 3 { CHALLENGE_REQUIRED }"#,
        )
        .rule("new", r#"if device_id != () && is_new_device() { REVIEW }"#)
        .build()
        .unwrap();
    let settings = srv
        .settings()
        .timeout(Duration::from_secs(1))
        .connect_timeout(Duration::from_secs(1));
    let engine = Engine::builder()
        .ruleset(rules)
        .store(settings)
        .build()
        .unwrap();

    let client = redis::Client::open(srv.url()).unwrap();
    let mut con = client.get_connection().unwrap();
    let mut ping: Vec<Duration> = (0..N)
        .map(|_| {
            let t = Instant::now();
            let _: String = redis::cmd("PING").query(&mut con).unwrap();
            t.elapsed()
        })
        .collect();

    let reqs: Vec<TrackRequest> = (0..N).map(request).collect();
    let timed = |reqs: &[TrackRequest]| -> Vec<Duration> {
        reqs.iter()
            .map(|r| {
                let t = Instant::now();
                let resp = engine.track(r).unwrap();
                let d = t.elapsed();
                assert!(resp.store_error.is_none(), "{:?}", resp.store_error);
                d
            })
            .collect()
    };
    commands(&mut con);
    let rt0 = engine.store_round_trips();
    let mut first = timed(&reqs);
    let rt1 = engine.store_round_trips();
    let first_commands = commands(&mut con);
    let mut repeat = timed(&reqs);
    let rt2 = engine.store_round_trips();
    let repeat_commands = commands(&mut con);

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let per = N / CALLERS;
    let cpu0 = server_cpu(&mut con);
    let started = Instant::now();
    runtime.block_on(async {
        let tasks: Vec<_> = (0..CALLERS)
            .map(|c| {
                let e = engine.clone();
                tokio::spawn(async move {
                    for i in 0..per {
                        let r = request(N + c * per + i);
                        let resp = e.track_async(&r).await.unwrap();
                        assert!(resp.store_error.is_none());
                    }
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
    });
    let async_rate = (per * CALLERS) as f64 / started.elapsed().as_secs_f64();
    let async_cpu = (server_cpu(&mut con) - cpu0) / (per * CALLERS) as f64;
    // The statistics printed at the end are the async callers' and redis-benchmark's.
    let _: redis::RedisResult<()> = redis::cmd("CONFIG").arg("RESETSTAT").query(&mut con);
    let cpu1 = server_cpu(&mut con);

    let out = std::process::Command::new("redis-benchmark")
        .args([
            "-p",
            &srv.port.to_string(),
            "-t",
            "set",
            "-c",
            "32",
            "-n",
            &SET_N.to_string(),
            "-q",
        ])
        .output();
    let set_rate = out
        .ok()
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .split_whitespace()
                .find_map(|w| w.parse::<f64>().ok())
        })
        .unwrap_or(f64::NAN);
    let set_cpu = (server_cpu(&mut con) - cpu1) / SET_N as f64;

    let (p50_ping, p50_first, p99_first, p50_repeat, p99_repeat) = (
        pct(&mut ping, 0.5),
        pct(&mut first, 0.5),
        pct(&mut first, 0.99),
        pct(&mut repeat, 0.5),
        pct(&mut repeat, 0.99),
    );
    println!("| measure | value | ratio |");
    println!("|---|---|---|");
    println!("| PING round trip p50 | {:.1} µs | 1 |", us(p50_ping));
    println!(
        "| first decision p50 (p99) | {:.1} µs ({:.1} µs) | {:.2}× PING |",
        us(p50_first),
        us(p99_first),
        us(p50_first) / us(p50_ping)
    );
    println!(
        "| repeat p50 (p99) | {:.1} µs ({:.1} µs) | {:.2}× PING |",
        us(p50_repeat),
        us(p99_repeat),
        us(p50_repeat) / us(p50_ping)
    );
    println!(
        "| round trips per first decision / repeat | {:.2} / {:.2} | |",
        (rt1 - rt0) as f64 / N as f64,
        (rt2 - rt1) as f64 / N as f64
    );
    println!(
        "| decisions/s, {CALLERS} async callers | {async_rate:.0} | {:.0}% of SET |",
        100.0 * async_rate / set_rate
    );
    println!("| redis-benchmark -t set -c 32 | {set_rate:.0} req/s | |");
    println!(
        "| Redis commands per first decision / repeat (each `redis.call` counts) | {:.2} / {:.2} | |",
        first_commands as f64 / N as f64,
        repeat_commands as f64 / N as f64
    );
    println!(
        "| server CPU per decision (32 async callers) / per SET (redis-benchmark) | {:.1} µs / {:.1} µs | {:.1}× |",
        async_cpu * 1e6,
        set_cpu * 1e6,
        async_cpu / set_cpu
    );
    // Where the server's time went, from the async callers on: microseconds per call of each command.
    let stats: String = redis::cmd("INFO")
        .arg("commandstats")
        .query(&mut con)
        .unwrap_or_default();
    for l in stats.lines().filter(|l| l.starts_with("cmdstat_")) {
        println!("{l}");
    }
}
