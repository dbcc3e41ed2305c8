//! riskgate's benchmark suite: one criterion binary, nine groups.
//!
//! - `realistic`: the headline groups, on the realistic stream of `src/cli/workload.rs` (100,000 live actions,
//!   shuffled distinct identities, full attributes, ten rules): repeats (through `track` and through
//!   `track_with`'s borrowed view) and first decisions, 1 and 2 threads.
//! - `floor`: the baselines on the same stream: (a) hash + probe of a lock-free map, (b) the rules as closures.
//! - `best-case`: one hot key repeated (an idempotency hit), 1 and 2 threads.
//! - `decide`: a first decision with the bundled ruleset, the starter ruleset and with 1/10/50 simple rules, through the compiled
//!   path, through Rhai's interpreter only, and as the same rules written as native Rust closures.
//! - `signals`: the signal look-ups rules call.
//! - `throughput`: a mixed workload (90% first decisions, 10% repeats) on 1 and 2 threads.
//! - `store`: the concurrent map behind the action store against the alternatives, on the realistic stream's
//!   identity hashes.
//! - `signal-cost`: what every signal adds to a first decision, on both rule paths.
//! - `rba`: what `rba_score()` adds to a first decision, on users with varied history (several devices,
//!   addresses, networks and browser versions each).
//!
//! Run `cargo bench --bench riskgate -- --quick` for a short run; see BENCHMARKS.md. Setting
//! `RISKGATE_BENCH_MEMORY=N` instead measures resident memory per stored action over N unique actions and exits
//! (add `RISKGATE_BENCH_MEMORY_RULES=plain` for the action store without signal history).
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use criterion::{black_box, criterion_group, BenchmarkId, Criterion, Throughput};
use riskgate::{CustomValue, Engine, FakeClock, RuleSet, State, TrackAttributes, TrackRequest};
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::path::Path;
use std::sync::{Arc, Barrier, Mutex};
use std::time::{Duration, Instant};

#[path = "../src/cli/workload.rs"]
mod workload;

// ---------------------------------------------------------------------------------------------------------
// Fixtures

/// The bundled example ruleset (`rules/`), with the store capacity capped so long runs stay in memory.
fn bundled(compile: bool, capacity: i64) -> RuleSet {
    folder("rules", compile, capacity)
}

/// A rules folder of the project (`rules`, `starter`) with the action store's capacity set.
fn folder(name: &str, compile: bool, capacity: i64) -> RuleSet {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join(name);
    let mut config: toml::Table = std::fs::read_to_string(dir.join("riskgate.toml"))
        .unwrap()
        .parse()
        .unwrap();
    let idem = config
        .entry("idempotency")
        .or_insert_with(|| toml::Value::Table(toml::Table::new()));
    if let toml::Value::Table(t) = idem {
        t.insert("capacity".into(), toml::Value::Integer(capacity));
    }
    RuleSet::builder()
        .rules_dir(&dir)
        .unwrap()
        .config_toml(config.to_string())
        .compile_rules(compile)
        .build()
        .unwrap()
}

fn engine(rules: RuleSet) -> Engine {
    Engine::builder()
        .ruleset(rules)
        .clock(FakeClock::default())
        .build()
        .unwrap()
}

/// A realistic sign-in / withdrawal request.
fn request(user: &str, action: &str) -> TrackRequest {
    let mut attributes = TrackAttributes {
        device_id: Some("555c17e1-3837-4f13-81bb-131e5597e168".into()),
        ip_address: Some("203.0.113.42".into()),
        user_agent: Some(
            "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) \
             Version/17.0 Safari/605.1.15"
                .into(),
        ),
        email: Some("alice@example.com".into()),
        ..Default::default()
    };
    attributes.custom.insert("amount".into(), 2_500i64.into());
    attributes
        .custom
        .insert("destination".into(), "bank".into());
    TrackRequest {
        user_id: user.into(),
        action: action.into(),
        attributes,
    }
}

/// `n` simple rules in five shapes that cycle: string prefix tests, `()` checks, numeric thresholds on
/// `custom`, `in` on a literal array and a string method chain. None matches [`request`] except the last
/// shape's every fifth rule, so every rule runs to its end.
fn simple_rules(n: usize) -> Vec<(String, String)> {
    (0..n)
        .map(|i| {
            let src = match i % 5 {
                0 => format!(
                    "if ip_address.starts_with(\"10.{i}.\") || device_id == () {{ BLOCK }} \
                     else if custom.amount != () && custom.amount > {} {{ REVIEW }}",
                    10_000 + i
                ),
                1 => format!(
                    "if email != () && email.ends_with(\"@blocked{i}.example\") {{ BLOCK }}"
                ),
                2 => format!(
                    "if custom.amount > {} && custom.destination == \"crypto\" {{ REVIEW }}",
                    5_000 + i
                ),
                3 => format!(
                    "if custom.destination in [\"crypto\", \"gift-card-{i}\"] {{ CHALLENGE_REQUIRED }}"
                ),
                _ => format!(
                    "//! mode: shadow\nif user_agent != () && user_agent.contains(\"Safari\") && \
                     user_agent.len() > {i} {{ ALLOW }}"
                ),
            };
            (format!("r{i:02}"), src)
        })
        .collect()
}

type NativeRule = Box<dyn Fn(&TrackRequest) -> Option<State> + Send + Sync>;

fn custom_int(req: &TrackRequest, k: &str) -> Option<f64> {
    match req.attributes.custom.get(k)? {
        CustomValue::Int(i) => Some(*i as f64),
        CustomValue::Float(f) => Some(*f),
        _ => None,
    }
}

fn custom_str<'a>(req: &'a TrackRequest, k: &str) -> Option<&'a str> {
    match req.attributes.custom.get(k)? {
        CustomValue::String(s) => Some(s),
        _ => None,
    }
}

/// [`simple_rules`] written by hand as Rust closures: the floor any rule engine is measured against.
fn native_rules(n: usize) -> Vec<NativeRule> {
    (0..n)
        .map(|i| -> NativeRule {
            match i % 5 {
                0 => {
                    let prefix = format!("10.{i}.");
                    let limit = (10_000 + i) as f64;
                    Box::new(move |r| {
                        let a = &r.attributes;
                        if a.ip_address
                            .as_deref()
                            .is_some_and(|ip| ip.starts_with(&prefix))
                            || a.device_id.is_none()
                        {
                            Some(State::Block)
                        } else if custom_int(r, "amount").is_some_and(|v| v > limit) {
                            Some(State::Review)
                        } else {
                            None
                        }
                    })
                }
                1 => {
                    let suffix = format!("@blocked{i}.example");
                    Box::new(move |r| {
                        r.attributes
                            .email
                            .as_deref()
                            .is_some_and(|e| e.ends_with(&suffix))
                            .then_some(State::Block)
                    })
                }
                2 => {
                    let limit = (5_000 + i) as f64;
                    Box::new(move |r| {
                        (custom_int(r, "amount").is_some_and(|v| v > limit)
                            && custom_str(r, "destination") == Some("crypto"))
                        .then_some(State::Review)
                    })
                }
                3 => {
                    let list = ["crypto".to_owned(), format!("gift-card-{i}")];
                    Box::new(move |r| {
                        custom_str(r, "destination")
                            .is_some_and(|d| list.iter().any(|x| x == d))
                            .then_some(State::ChallengeRequired)
                    })
                }
                _ => Box::new(move |r| {
                    r.attributes
                        .user_agent
                        .as_deref()
                        .is_some_and(|ua| ua.contains("Safari") && ua.chars().count() > i)
                        .then_some(State::Allow)
                }),
            }
        })
        .collect()
}

fn ruleset(rules: Vec<(String, String)>, compile: bool) -> RuleSet {
    let mut b = RuleSet::builder()
        .compile_rules(compile)
        .config_toml("[idempotency]\ncapacity = 200000");
    for (id, src) in rules {
        b = b.rule(id, src);
    }
    b.build().unwrap()
}

/// Runs `f(thread, iters_for_this_thread)` on `threads` threads started together; returns the wall time.
fn on_threads(threads: usize, iters: u64, f: impl Fn(usize, u64) + Sync) -> Duration {
    let barrier = Barrier::new(threads + 1);
    std::thread::scope(|s| {
        for t in 0..threads {
            let (barrier, f) = (&barrier, &f);
            s.spawn(move || {
                barrier.wait();
                f(t, iters);
                barrier.wait();
            });
        }
        barrier.wait();
        let start = Instant::now();
        barrier.wait();
        start.elapsed()
    })
}

// ---------------------------------------------------------------------------------------------------------
// Groups

/// How many live actions the realistic groups keep stored before they time anything.
const LIVE: usize = 100_000;

/// The engine of the realistic groups: the workload's ten rules, compiled, with room for the live actions and
/// the first decisions timed after them.
fn realistic_engine() -> Engine {
    let b =
        workload::with_rules(RuleSet::builder().config_toml("[idempotency]\ncapacity = 400000"));
    let rules = b.build().unwrap();
    assert!(
        rules.rules().all(|r| r.compiled),
        "every workload rule compiles"
    );
    engine(rules)
}

/// Tracks `reqs` into `e` and checks the stream is what the realistic groups promise: 10–20% challenges.
fn fill(e: &Engine, reqs: &[TrackRequest]) {
    let challenges = reqs
        .iter()
        .filter(|r| e.track(r).unwrap().state == State::ChallengeRequired)
        .count();
    let share = challenges as f64 / reqs.len() as f64;
    assert!((0.10..=0.20).contains(&share), "challenge share {share}");
}

/// The time each of `threads` threads takes for its part of `parts`, one `track` per request (the wall time of
/// the slowest; per call it is this over one part's length).
fn track_all(e: &Engine, parts: &[Vec<TrackRequest>]) -> Duration {
    on_threads(parts.len(), 0, |t, _| {
        for r in &parts[t] {
            black_box(e.track(r).unwrap());
        }
    })
}

/// `n` first decisions per thread for `threads` threads, each thread on its own users (by user parity), from
/// a stream no engine has seen (`batch` makes the keys unique).
fn fresh(n: u64, threads: usize, batch: &mut u64) -> Vec<Vec<TrackRequest>> {
    *batch += 1;
    let all = workload::requests(n as usize * threads, &format!("b{batch}"));
    let mut parts = vec![Vec::with_capacity(n as usize); threads];
    for r in all {
        let user: usize = r.user_id.trim_start_matches("user-").parse().unwrap();
        parts[user % threads].push(r);
    }
    parts
}

/// `iters` calls of `call` on each of `threads` threads over the live actions, in the stream's order (all of them
/// on one thread, half each on two); the wall time.
fn repeats(
    threads: usize,
    iters: u64,
    live: &[TrackRequest],
    halves: &[&[TrackRequest]],
    call: impl Fn(&TrackRequest) + Sync,
) -> Duration {
    on_threads(threads, iters, |t, n| {
        let mine = if threads == 1 { live } else { halves[t] };
        let mut i = 0;
        for _ in 0..n {
            call(&mine[i]);
            i += 1;
            if i == mine.len() {
                i = 0;
            }
        }
    })
}

/// The headline groups, on the realistic stream of `src/cli/workload.rs`: ≥ 100,000 live actions, distinct
/// identities in a shuffled order, every request with an IP, a device, a user agent, an idempotency key and
/// five `custom` attributes; ten rules, 10–20% challenges. Batches are timed, never single calls.
fn realistic(c: &mut Criterion) {
    if !wanted("realistic") {
        return;
    }
    let mut g = c.benchmark_group("realistic");
    let e = realistic_engine();
    let live = workload::requests(LIVE, "live");
    fill(&e, &live);
    // Repeats: every call an idempotency hit on one of the live actions, in the stream's shuffled order;
    // `repeat` through `track` (an owned response, built and dropped), `repeat-view` through `track_with` (the
    // caller reads the outcome, and whether there is a token, from the borrowed view: nothing allocated).
    let halves: Vec<&[TrackRequest]> = live.chunks(LIVE / 2).collect();
    for threads in [1usize, 2] {
        g.bench_function(format!("repeat/{threads}-thread"), |b| {
            b.iter_custom(|iters| {
                repeats(threads, iters, &live, &halves, |r| {
                    black_box(e.track(r).unwrap());
                })
            })
        });
        g.bench_function(format!("repeat-view/{threads}-thread"), |b| {
            b.iter_custom(|iters| {
                repeats(threads, iters, &live, &halves, |r| {
                    black_box(
                        e.track_with(r, |v| (v.state(), v.token().is_some()))
                            .unwrap(),
                    );
                })
            })
        });
    }
    // First decisions: distinct identities the engine has not seen, on top of the live actions.
    let mut batch = 0;
    for threads in [1usize, 2] {
        g.bench_function(format!("first-decision/{threads}-thread"), |b| {
            b.iter_custom(|iters| {
                let parts = fresh(iters, threads, &mut batch);
                let longest = parts.iter().map(Vec::len).max().unwrap_or(1).max(1);
                // Per call on each thread, scaled to `iters` calls (the halves differ by a few).
                track_all(&e, &parts).mul_f64(iters as f64 / longest as f64)
            })
        });
    }
    g.finish();
}

/// `track` with durable state (`[store] path`) on and off, on the realistic stream, in the same run: first
/// decisions (each journals its action and its history writes; repeats journal nothing). Besides criterion's
/// two estimates, alternating batches of fresh decisions on the two engines give a paired ratio that machine
/// load cannot skew (printed as `durable/paired`).
fn durable(c: &mut Criterion) {
    if !wanted("durable") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let b =
        workload::with_rules(RuleSet::builder().config_toml("[idempotency]\ncapacity = 400000"));
    let rules = b.build().unwrap();
    let off = engine(rules.clone());
    let on = Engine::builder()
        .ruleset(rules)
        .clock(FakeClock::default())
        .store(riskgate::StoreSettings::file(dir.path().join("state")))
        .build()
        .unwrap();
    let live = workload::requests(LIVE, "live");
    fill(&off, &live);
    fill(&on, &live);
    // Paired first, while both engines hold the same actions (criterion's runs below add unequal numbers).
    let mut batch = 0;
    let (mut t_off, mut t_on) = (Duration::ZERO, Duration::ZERO);
    let (rounds, per) = (40, 5_000u64);
    for round in 0..rounds {
        let a = fresh(per, 1, &mut batch);
        let b = fresh(per, 1, &mut batch);
        if round % 2 == 0 {
            t_off += track_all(&off, &a);
            t_on += track_all(&on, &b);
        } else {
            t_on += track_all(&on, &b);
            t_off += track_all(&off, &a);
        }
    }
    let calls = (rounds * per) as f64;
    let stats = on.durable_stats().unwrap();
    eprintln!(
        "durable/paired: {calls} first decisions each, off {:.0} ns/call, on {:.0} ns/call, on/off {:.3}; \
         journal {} bytes, {} syncs, {} dropped",
        t_off.as_nanos() as f64 / calls,
        t_on.as_nanos() as f64 / calls,
        t_on.as_secs_f64() / t_off.as_secs_f64(),
        stats.journal_bytes,
        stats.syncs,
        stats.dropped
    );
    let mut g = c.benchmark_group("durable");
    for (name, e) in [("off", &off), ("on", &on)] {
        g.bench_function(format!("first-decision/{name}"), |b| {
            b.iter_custom(|iters| track_all(e, &fresh(iters, 1, &mut batch)))
        });
    }
    g.finish();
}

/// The baselines the realistic groups are measured against, on the same stream:
/// - `hash-probe`: (a) hash the three identity strings with the crate's hash and probe a pre-filled lock-free
///   map (papaya) of the same size, returning a shared value: the floor of a repeat;
/// - `native-rules`: (b) the same ten rules as hand-written Rust closures over the same requests.
fn floor(c: &mut Criterion) {
    if !wanted("floor") {
        return;
    }
    let mut g = c.benchmark_group("floor");
    let live = workload::requests(LIVE, "live");
    // The crate's identity hash (keyed SipHash-1-3 over the lengths and the strings' words), as the store keys.
    let ids = riskgate::__bench::IdentityHasher::new().expect("random source");
    let identity_hash = |u: &str, a: &str, k: &str| ids.hash(u, a, k);
    let map: papaya::HashMap<u128, Arc<u64>, H> = papaya::HashMap::builder()
        .hasher(H::default())
        .resize_mode(papaya::ResizeMode::Blocking)
        .build();
    for (i, r) in live.iter().enumerate() {
        let k = r.attributes.idempotency_key.as_deref().unwrap();
        map.pin()
            .insert(identity_hash(&r.user_id, &r.action, k), Arc::new(i as u64));
    }
    g.bench_function("hash-probe", |b| {
        b.iter_custom(|iters| {
            let m = map.pin();
            let start = Instant::now();
            let mut i = 0;
            for _ in 0..iters {
                let r = &live[i];
                let k = r.attributes.idempotency_key.as_deref().unwrap_or("");
                black_box(m.get(&identity_hash(&r.user_id, &r.action, k)).cloned());
                i += 1;
                if i == live.len() {
                    i = 0;
                }
            }
            start.elapsed()
        })
    });
    let rules = workload::native();
    g.bench_function("native-rules", |b| {
        b.iter_custom(|iters| {
            let start = Instant::now();
            let mut i = 0;
            for _ in 0..iters {
                let r = &live[i];
                let worst = rules
                    .iter()
                    .enumerate()
                    .filter_map(|(n, rule)| rule(black_box(r)).filter(|_| n != 9))
                    .max_by_key(|s| match s {
                        State::Block => 3,
                        State::Review => 2,
                        State::ChallengeRequired => 1,
                        _ => 0,
                    });
                black_box(worst);
                i += 1;
                if i == live.len() {
                    i = 0;
                }
            }
            start.elapsed()
        })
    });
    g.finish();
}

/// The best case: one hot key repeated (everything in cache), with the small `request` fixture.
fn best_case(c: &mut Criterion) {
    if !wanted("best-case") {
        return;
    }
    let mut g = c.benchmark_group("best-case");
    let e = engine(bundled(true, 200_000));
    let mut reqs: Vec<TrackRequest> = (0..2)
        .map(|t| {
            let mut r = request(&format!("user-{t}"), "signIn");
            r.attributes.idempotency_key = Some(format!("key-{t}"));
            r
        })
        .collect();
    for r in &reqs {
        e.track(r).unwrap();
    }
    g.bench_function("repeat/1-thread", |b| {
        b.iter(|| e.track(black_box(&reqs[0])).unwrap())
    });
    // Per-call time on each of 2 threads, both on one key, then each on its own key.
    g.bench_function("repeat/2-threads-same-key", |b| {
        b.iter_custom(|iters| {
            on_threads(2, iters, |_, n| {
                for _ in 0..n {
                    black_box(e.track(&reqs[0]).unwrap());
                }
            })
        })
    });
    g.bench_function("repeat/2-threads-own-keys", |b| {
        b.iter_custom(|iters| {
            on_threads(2, iters, |t, n| {
                for _ in 0..n {
                    black_box(e.track(&reqs[t]).unwrap());
                }
            })
        })
    });
    reqs.truncate(1);
    g.finish();
}

fn decide(c: &mut Criterion) {
    if !wanted("decide") {
        return;
    }
    let mut g = c.benchmark_group("decide");
    // Engine overhead alone: validation, store insert, response, with no rule to run.
    let empty = engine(ruleset(Vec::new(), true));
    let req = request("user-1", "signIn");
    g.bench_function("engine-no-rules", |b| b.iter(|| empty.track(&req).unwrap()));

    for (name, dir, compile) in [
        ("bundled-compiled", "rules", true),
        ("bundled-rhai", "rules", false),
        ("starter-compiled", "starter", true),
    ] {
        let e = engine(folder(dir, compile, 200_000));
        let signin = request("user-1", "signIn");
        let withdraw = request("user-1", "withdraw-funds");
        g.bench_function(format!("{name}/signIn"), |b| {
            b.iter(|| e.track(&signin).unwrap())
        });
        g.bench_function(format!("{name}/withdraw-funds"), |b| {
            b.iter(|| e.track(&withdraw).unwrap())
        });
    }

    for n in [1usize, 10, 50] {
        let req = request("user-1", "signIn");
        for (name, compile) in [("compiled", true), ("rhai", false)] {
            let e = engine(ruleset(simple_rules(n), compile));
            g.bench_with_input(BenchmarkId::new(name, n), &n, |b, _| {
                b.iter(|| e.track(&req).unwrap())
            });
        }
        let native = native_rules(n);
        g.bench_with_input(BenchmarkId::new("native-closures", n), &n, |b, _| {
            b.iter(|| {
                let mut out = Vec::with_capacity(native.len());
                for f in &native {
                    out.push(f(black_box(&req)));
                }
                out
            })
        });
    }
    g.finish();
}

/// 100,000 disjoint /28 ranges, none of which holds the requests' addresses.
fn big_list() -> String {
    let mut text = String::with_capacity(2_000_000);
    for i in 0..100_000u32 {
        let base = i * 32;
        let (a, b, c) = ((base >> 16) & 255, (base >> 8) & 255, base & 255);
        text.push_str(&format!("10.{a}.{b}.{c}/28\n"));
    }
    text
}

/// What one signal adds to a first decision: a one-rule ruleset asking the signal against the same rule
/// without it (`baseline`), with ten earlier actions per user in history. The `signal-cost` group covers
/// every signal on both rule paths; this group tracks the targets (CIDR list, velocity, GeoIP city).
fn signals(c: &mut Criterion) {
    if !wanted("signals") {
        return;
    }
    const USERS: u64 = 1_000;
    let mut g = c.benchmark_group("signals");
    let city_db = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/rules/geoip/GeoIP2-City-Test.mmdb"
    );
    let req = |i: u64| {
        let user = i % USERS;
        let mut r = request(&format!("user-{user}"), "withdraw-funds");
        r.attributes.idempotency_key = Some(format!("k{i}"));
        r.attributes.ip_address = Some(format!("81.2.69.{}", 142 + user % 50));
        r
    };
    let t0 = std::time::UNIX_EPOCH + Duration::from_secs(1_709_283_600);
    for (name, rule) in [
        ("baseline", r#"if ip_address == "10.0.0.1" { BLOCK }"#),
        (
            "in_list-100k-cidr",
            r#"if in_list("big", ip_address) { BLOCK }"#,
        ),
        ("velocity", r#"if velocity("1h") > 100000 { BLOCK }"#),
        ("geoip-city", r#"if city() == "Atlantis" { BLOCK }"#),
    ] {
        let rules = RuleSet::builder()
            .rule("r", rule)
            .list("big", big_list())
            .config_toml(format!(
                "[idempotency]\ncapacity = 200000\n[geoip]\ncity = {city_db:?}\n"
            ))
            .build()
            .unwrap();
        assert!(rules.rules().all(|r| r.compiled), "{name}");
        let e = engine(rules);
        let mut i = 0u64;
        while i < USERS * 10 {
            e.track_at(&req(i), t0 + Duration::from_secs(i)).unwrap();
            i += 1;
        }
        g.bench_function(name, |b| {
            b.iter(|| {
                i += 1;
                black_box(e.track_at(&req(i), t0 + Duration::from_secs(i)).unwrap())
            })
        });
    }
    g.finish();
}

fn throughput(c: &mut Criterion) {
    if !wanted("throughput") {
        return;
    }
    let mut g = c.benchmark_group("throughput");
    g.throughput(Throughput::Elements(1));
    let e = engine(bundled(true, 200_000));
    let repeats: Vec<TrackRequest> = (0..2)
        .map(|t| {
            let mut r = request(&format!("repeat-user-{t}"), "signIn");
            r.attributes.idempotency_key = Some("k".into());
            e.track(&r).unwrap();
            r
        })
        .collect();
    let fresh: Vec<TrackRequest> = (0..2)
        .map(|t| request(&format!("user-{t}"), "withdraw-funds"))
        .collect();
    // One element is one call; with 2 threads each does half, so time per element falls as they scale.
    for threads in [1usize, 2] {
        g.bench_function(format!("mixed-90-10/{threads}-threads"), |b| {
            b.iter_custom(|iters| {
                let per = iters.div_ceil(threads as u64);
                on_threads(threads, per, |t, n| {
                    for i in 0..n {
                        let r = if i % 10 == 9 { &repeats[t] } else { &fresh[t] };
                        black_box(e.track(r).unwrap());
                    }
                })
            })
        });
    }
    g.finish();
    // Wall time only shows scaling when each thread has a core. Report CPU time too, from the scheduler's
    // per-thread statistics (Linux), so that a busy machine is told apart from contention in riskgate.
    const CALLS: u64 = 100_000;
    for threads in [1usize, 2] {
        let per = CALLS / threads as u64;
        let cpu = std::sync::Mutex::new((Duration::ZERO, Duration::ZERO));
        let wall = on_threads(threads, per, |t, n| {
            let before = schedstat();
            for i in 0..n {
                let r = if i % 10 == 9 { &repeats[t] } else { &fresh[t] };
                black_box(e.track(r).unwrap());
            }
            if let (Some(a), Some(b)) = (before, schedstat()) {
                let mut c = cpu.lock().unwrap();
                c.0 += b.0.saturating_sub(a.0);
                c.1 += b.1.saturating_sub(a.1);
            }
        });
        let (on_cpu, waiting) = cpu.into_inner().unwrap();
        println!(
            "throughput/mixed-90-10/{threads}-threads: {:.0} calls/s wall, {:.0} calls per CPU-second, \
             threads waited for a CPU {:.0}% of the wall time",
            CALLS as f64 / wall.as_secs_f64(),
            CALLS as f64 / on_cpu.as_secs_f64().max(1e-9),
            100.0 * waiting.as_secs_f64() / (wall.as_secs_f64() * threads as f64)
        );
    }
}

/// This thread's time on a CPU and waiting for one, from `/proc/thread-self/schedstat` (Linux only).
fn schedstat() -> Option<(Duration, Duration)> {
    let text = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    let mut f = text.split_whitespace().map(|v| v.parse::<u64>().ok());
    Some((
        Duration::from_nanos(f.next()??),
        Duration::from_nanos(f.next()??),
    ))
}

/// A hasher for keys that are already hashes (the store keys by a 128-bit xxh3 of the identity).
#[derive(Default)]
struct PreHashed(u64);
impl Hasher for PreHashed {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, _: &[u8]) {
        unreachable!("only u128 keys are hashed")
    }
    fn write_u128(&mut self, v: u128) {
        self.0 = (v as u64) ^ ((v >> 64) as u64);
    }
}
type H = BuildHasherDefault<PreHashed>;

/// The operations the store needs from a concurrent map, for comparing candidates on the same workload.
trait Candidate: Sync {
    fn insert(&self, k: u128, v: Arc<u64>);
    fn get(&self, k: u128) -> Option<Arc<u64>>;
}

impl Candidate for Mutex<HashMap<u128, Arc<u64>, H>> {
    fn insert(&self, k: u128, v: Arc<u64>) {
        self.lock().unwrap().insert(k, v);
    }
    fn get(&self, k: u128) -> Option<Arc<u64>> {
        self.lock().unwrap().get(&k).cloned()
    }
}
impl Candidate for dashmap::DashMap<u128, Arc<u64>, H> {
    fn insert(&self, k: u128, v: Arc<u64>) {
        dashmap::DashMap::insert(self, k, v);
    }
    fn get(&self, k: u128) -> Option<Arc<u64>> {
        dashmap::DashMap::get(self, &k).map(|r| Arc::clone(&r))
    }
}
impl Candidate for papaya::HashMap<u128, Arc<u64>, H> {
    fn insert(&self, k: u128, v: Arc<u64>) {
        self.pin().insert(k, v);
    }
    fn get(&self, k: u128) -> Option<Arc<u64>> {
        self.pin().get(&k).cloned()
    }
}
impl Candidate for scc::HashMap<u128, Arc<u64>, H> {
    fn insert(&self, k: u128, v: Arc<u64>) {
        let _ = self.upsert(k, v);
    }
    fn get(&self, k: u128) -> Option<Arc<u64>> {
        self.read(&k, |_, v| Arc::clone(v))
    }
}

fn store(c: &mut Criterion) {
    if !wanted("store") {
        return;
    }
    let mut g = c.benchmark_group("store");
    // The identity hashes of the realistic stream's live actions, in its shuffled order; inserts beyond them
    // use fresh hashes.
    let ids = riskgate::__bench::IdentityHasher::new().expect("random source");
    let keys: Vec<u128> = workload::requests(LIVE, "live")
        .iter()
        .map(|r| {
            ids.hash(
                &r.user_id,
                &r.action,
                r.attributes.idempotency_key.as_deref().unwrap(),
            )
        })
        .collect();
    const N: u64 = LIVE as u64;
    let key = |i: u64| match keys.get(i as usize) {
        Some(&k) => k,
        None => xxhash_rust::xxh3::xxh3_128(&i.to_le_bytes()),
    };
    let papaya_in = |mode| {
        papaya::HashMap::builder()
            .hasher(H::default())
            .resize_mode(mode)
            .build()
    };
    // Every map grows from empty to the live actions (no pre-sizing), so lookups are measured after growth.
    let maps: Vec<(&str, Box<dyn Candidate>)> = vec![
        ("mutex-hashmap", Box::new(Mutex::new(HashMap::default()))),
        (
            "dashmap",
            Box::new(dashmap::DashMap::with_hasher(H::default())),
        ),
        (
            "papaya-incremental",
            Box::new(papaya_in(papaya::ResizeMode::Incremental(1024))),
        ),
        (
            "papaya-blocking",
            Box::new(papaya_in(papaya::ResizeMode::Blocking)),
        ),
        ("scc", Box::new(scc::HashMap::with_hasher(H::default()))),
    ];
    for (name, m) in &maps {
        for i in 0..N {
            m.insert(key(i), Arc::new(i));
        }
        g.bench_function(format!("hit-1-thread/{name}"), |b| {
            let mut i = 0u64;
            b.iter(|| {
                i = (i + 7919) % N;
                m.get(key(i))
            })
        });
        g.bench_function(format!("hit-2-threads/{name}"), |b| {
            b.iter_custom(|iters| {
                on_threads(2, iters, |t, n| {
                    let mut i = t as u64;
                    for _ in 0..n {
                        i = (i + 7919) % N;
                        black_box(m.get(key(i)));
                    }
                })
            })
        });
        g.bench_function(format!("insert-2-threads/{name}"), |b| {
            let next = std::sync::atomic::AtomicU64::new(N);
            b.iter_custom(|iters| {
                on_threads(2, iters, |_, n| {
                    for _ in 0..n {
                        let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        m.insert(key(i), Arc::new(i));
                    }
                })
            })
        });
    }
    g.finish();
}

// ---------------------------------------------------------------------------------------------------------
// Memory: resident bytes per stored action

/// Resident set size of this process, from `/proc/self/statm` (Linux).
fn rss_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * 4096)
}

/// Tracks `n` unique first decisions and prints the growth of resident memory per action: through the bundled
/// rules (store, signal history and allocator overhead together), or with `RISKGATE_BENCH_MEMORY_RULES=plain`
/// through one rule that calls no signal (the action store alone).
fn memory(n: u64) {
    let capacity = i64::try_from(n).unwrap();
    let plain = std::env::var("RISKGATE_BENCH_MEMORY_RULES").is_ok_and(|v| v == "plain");
    let rules = if plain {
        RuleSet::builder()
            .rule("huge", "if custom.amount > 100000 { BLOCK }")
            .config_toml(format!("[idempotency]\ncapacity = {capacity}"))
            .build()
            .unwrap()
    } else {
        bundled(true, capacity)
    };
    let e = engine(rules);
    let mut req = request("user-0", "signIn");
    // Warm the allocator and the rule engine before the baseline.
    for i in 0..1_000 {
        req.attributes.idempotency_key = Some(format!("warm-{i}"));
        e.track(&req).unwrap();
    }
    let before = rss_bytes().unwrap_or(0);
    let start = Instant::now();
    for i in 0..n {
        req.user_id = format!("user-{}", i % 50_000);
        req.attributes.idempotency_key = Some(format!("{i:036}"));
        e.track(&req).unwrap();
    }
    let after = rss_bytes().unwrap_or(0);
    println!(
        "memory ({}): {n} actions, {} bytes resident growth, {:.0} bytes per action ({} actions stored, {:?})",
        if plain { "one plain rule" } else { "bundled rules" },
        after.saturating_sub(before),
        after.saturating_sub(before) as f64 / n as f64,
        e.stored_actions(),
        start.elapsed()
    );
}

// ---- `signal-cost`: what each signal adds to a decision ----
//
// The same one-rule ruleset with and without the signal, with realistic history behind every lookup, on both
// rule paths (`compiled`: rules compiled to native closures, the default; `interpreted`: Rhai's interpreter).
// Each case tracks a fresh action (a new idempotency key) for one of 1,000 users, one second after the previous
// one on a fake clock, so velocity series, distinct sets and known devices are populated as in production; the
// difference from `baseline` is the signal's cost, including keeping the history it needs.

const COST_USERS: u64 = 1_000;

fn test_db(file: &str) -> String {
    format!("{}/tests/data/geoip/{file}", env!("CARGO_MANIFEST_DIR"))
}

fn cost_engine(rule: &str, compiled: bool) -> Engine {
    let config = format!(
        "[idempotency]\ncapacity = 100000\n[geoip]\ncity = \"{}\"\nasn = \"{}\"\nanonymous_ip = \"{}\"\n",
        test_db("GeoIP2-City-Test.mmdb"),
        test_db("GeoLite2-ASN-Test.mmdb"),
        test_db("GeoIP2-Anonymous-IP-Test.mmdb")
    );
    let rules = RuleSet::builder()
        .rule("r", rule)
        .list("big", big_list())
        .config_toml(config)
        .compile_rules(compiled)
        .build()
        .unwrap();
    Engine::builder()
        .ruleset(rules)
        .clock(FakeClock::default())
        .build()
        .unwrap()
}

/// The request for iteration `i`: user `i % COST_USERS`, from an address in London that the user always uses (or,
/// with `fresh_ip`, a different one each time, so GeoIP cannot answer from the user's last known location),
/// with a desktop user agent.
fn cost_request(i: u64, fresh_ip: bool) -> TrackRequest {
    let user = i % COST_USERS;
    let host = if fresh_ip { i % 97 } else { user % 50 };
    TrackRequest {
        user_id: format!("user-{user}"),
        action: "withdraw-funds".into(),
        attributes: TrackAttributes {
            idempotency_key: Some(format!("k{i}")),
            device_id: Some(format!("device-{}", user % 700)),
            ip_address: Some(format!("81.2.69.{}", 142 + host)),
            user_agent: Some(
                "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) \
                 Version/17.0 Safari/605.1.15"
                    .into(),
            ),
            ..Default::default()
        },
    }
}

/// Rules that never match (so every case does the same work after its rules), each asking one signal.
const COST_CASES: [(&str, &str); 23] = [
    ("baseline", r#"if user_id == "nobody" { BLOCK }"#),
    ("velocity", r#"if velocity("1h") > 100000 { BLOCK }"#),
    ("velocity_ip", r#"if velocity_ip("1h") > 100000 { BLOCK }"#),
    (
        "velocity_device",
        r#"if velocity_device("1h") > 100000 { BLOCK }"#,
    ),
    (
        "distinct_users_on_ip",
        r#"if distinct_users_on_ip("1h") > 100000 { BLOCK }"#,
    ),
    (
        "distinct_devices",
        r#"if distinct_devices("1h") > 100000 { BLOCK }"#,
    ),
    (
        "is_new_device",
        r#"if is_new_device() && user_id == "nobody" { BLOCK }"#,
    ),
    (
        "is_new_country",
        r#"if is_new_country() && user_id == "nobody" { BLOCK }"#,
    ),
    ("in_list/100k", r#"if in_list("big", ip_address) { BLOCK }"#),
    (
        "in_list/100k-x10",
        r#"let n = 0; for i in 0..10 { if in_list("big", ip_address) { n += 1 } } if n > 0 { BLOCK }"#,
    ),
    (
        "baseline-x10",
        r#"let n = 0; for i in 0..10 { if ip_address == "x" { n += 1 } } if n > 0 { BLOCK }"#,
    ),
    ("country", r#"if country() == "ZZ" { BLOCK }"#),
    ("country/fresh-ip", r#"if country() == "ZZ" { BLOCK }"#),
    (
        "is_new_country/fresh-ip",
        r#"if is_new_country() && user_id == "nobody" { BLOCK }"#,
    ),
    (
        "travel/fresh-ip",
        r#"if is_impossible_travel() && user_id == "nobody" { BLOCK }"#,
    ),
    ("baseline/fresh-ip", r#"if user_id == "nobody" { BLOCK }"#),
    ("asn", r#"if asn() == 1 { BLOCK }"#),
    ("is_anonymous_ip", r#"if is_anonymous_ip() == 1 { BLOCK }"#),
    (
        "is_impossible_travel",
        r#"if is_impossible_travel() && user_id == "nobody" { BLOCK }"#,
    ),
    ("ua_browser", r#"if ua_browser() == "Lynx" { BLOCK }"#),
    ("is_bot", r#"if is_bot() && user_id == "nobody" { BLOCK }"#),
    ("rba_score", r#"if rba_score() > 1.0e12 { BLOCK }"#),
    ("rba_score/fresh-ip", r#"if rba_score() > 1.0e12 { BLOCK }"#),
];

fn signal_cost(c: &mut Criterion) {
    if !wanted("signal-cost") {
        return;
    }
    let mut g = c.benchmark_group("signal-cost");
    g.sample_size(30)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    let t0 = std::time::UNIX_EPOCH + Duration::from_secs(1_709_283_600);
    for ((name, rule), compiled) in COST_CASES.iter().flat_map(|c| [(c, true), (c, false)]) {
        let e = cost_engine(rule, compiled);
        let fresh = name.ends_with("fresh-ip");
        let path = if compiled { "compiled" } else { "interpreted" };
        // History first: ten actions per user.
        let mut i = 0u64;
        while i < COST_USERS * 10 {
            e.track_at(&cost_request(i, fresh), t0 + Duration::from_secs(i))
                .unwrap();
            i += 1;
        }
        g.bench_function(format!("{path}/{name}"), |b| {
            b.iter(|| {
                i += 1;
                let at = t0 + Duration::from_secs(i);
                black_box(e.track_at(&cost_request(i, fresh), at).unwrap())
            })
        });
    }
    g.finish();
}

const RBA_USERS: u64 = 1_000;

/// Sign-in `i` of user `i % RBA_USERS`, varied the way people are: one of three devices (phone and computer
/// mostly), a home address in Milton (AS209, US) or one from a Linköping pool (AS29518, SE), and a browser that
/// updates now and then. With `new_device`, a device nobody has used.
fn rba_request(i: u64, new_device: bool) -> TrackRequest {
    let user = i % RBA_USERS;
    let round = i / RBA_USERS;
    let device = if new_device {
        format!("new-{i}")
    } else {
        format!("device-{user}-{}", [0, 1, 0, 1, 2][(round % 5) as usize])
    };
    let ip = if round % 3 == 2 {
        format!("89.160.20.{}", 112 + (i % 16))
    } else {
        format!("216.160.83.{}", 56 + (user % 8))
    };
    let version = 140 + round / 4 % 4;
    let ua = if device.ends_with("-1") {
        "Mozilla/5.0 (iPhone; CPU iPhone OS 17_0 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) \
         Version/17.0 Mobile/15E148 Safari/604.1"
            .to_string()
    } else {
        format!(
            "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) \
             Chrome/{version}.0.0.0 Safari/537.36"
        )
    };
    TrackRequest::new(format!("user-{user}"), "signIn")
        .idempotency_key(format!("k{i}"))
        .device(device)
        .ip(ip)
        .user_agent(ua)
}

/// `rba_score()` against the same engine without it, on users with twenty earlier sign-ins each in history
/// (all allowed, so all verified): a usual sign-in, and one from a device nobody has used.
fn rba(c: &mut Criterion) {
    if !wanted("rba") {
        return;
    }
    let mut g = c.benchmark_group("rba");
    let t0 = std::time::UNIX_EPOCH + Duration::from_secs(1_709_283_600);
    for (name, rule, new_device) in [
        ("baseline", r#"if user_id == "nobody" { BLOCK }"#, false),
        ("score", r#"if rba_score() > 1.0e12 { BLOCK }"#, false),
        (
            "baseline/new-device",
            r#"if user_id == "nobody" { BLOCK }"#,
            true,
        ),
        (
            "score/new-device",
            r#"if rba_score() > 1.0e12 { BLOCK }"#,
            true,
        ),
    ] {
        let e = cost_engine(rule, true);
        let mut i = 0u64;
        while i < RBA_USERS * 20 {
            e.track_at(&rba_request(i, false), t0 + Duration::from_secs(i))
                .unwrap();
            i += 1;
        }
        g.bench_function(name, |b| {
            b.iter(|| {
                i += 1;
                let at = t0 + Duration::from_secs(i);
                black_box(e.track_at(&rba_request(i, new_device), at).unwrap())
            })
        });
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .sample_size(30);
    targets = realistic, floor, best_case, decide, signals, throughput, store, signal_cost, rba, durable
}

/// Whether group `name` can match the benchmark filter on the command line, so that running or profiling one
/// benchmark (`cargo bench --bench riskgate -- decide/compiled`) does not pay for every other group's setup.
fn wanted(name: &str) -> bool {
    let mut args = std::env::args().skip(1);
    let mut filter = None;
    while let Some(a) = args.next() {
        if matches!(
            a.as_str(),
            "--profile-time"
                | "--measurement-time"
                | "--warm-up-time"
                | "--sample-size"
                | "--save-baseline"
                | "--baseline"
                | "--load-baseline"
                | "--output-format"
                | "--color"
                | "--plotting-backend"
                | "--significance-level"
                | "--noise-threshold"
                | "--confidence-level"
                | "--nresamples"
        ) {
            args.next();
        } else if !a.starts_with('-') {
            filter = Some(a);
            break;
        }
    }
    let Some(f) = filter else { return true };
    // Criterion's filter is a regular expression: any of its `|` alternatives may name the group.
    f.split('|').any(|f| {
        let f = f.trim_start_matches('^').trim_start_matches('(');
        match f.split_once('/') {
            Some((group, _)) => group == name,
            None => name.contains(f) || f.contains(name),
        }
    })
}

fn main() {
    if let Some(n) = std::env::var("RISKGATE_BENCH_MEMORY")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        memory(n);
        return;
    }
    benches();
    Criterion::default().configure_from_args().final_summary();
}
