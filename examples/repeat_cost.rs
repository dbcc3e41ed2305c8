//! A repeat on the realistic stream, for an instruction counter: fills an engine with the stream's live actions
//! (as the `realistic` bench group does), then repeats every one of them through `Engine::track_with`, through
//! `Engine::track`, and probes the `floor/hash-probe` baseline (a) over the same requests, each in a function of
//! its own, so a profiler's inclusive cost of that function over its request count is the cost of one call.
//!
//! ```sh
//! cargo build --release --example repeat_cost
//! valgrind --tool=callgrind --dump-instr=no --callgrind-out-file=/tmp/rep.cg target/release/examples/repeat_cost
//! callgrind_annotate --inclusive=yes /tmp/rep.cg | grep -E 'repeats_|floor_probes'
//! ```
//!
//! Each of those functions runs once over all `N` requests (100,000 by default, the first argument): divide its
//! inclusive instructions by `N`.
//!
//! `repeat_cost N time` instead times the three in alternating batches of 2,000 calls (about a millisecond, less
//! than a scheduler time slice) and prints the fastest batch and the median of each, per call, and their ratios
//! to the floor: on a machine shared with other work, the fastest batches are the ones no other process
//! interrupted, so their ratio holds where criterion's estimates drift with the load.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../src/cli/workload.rs"]
mod workload;

use riskgate::__bench::IdentityHasher;
use riskgate::{Engine, FakeClock, RuleSet, State, TrackRequest};
use std::hash::{BuildHasherDefault, Hasher};
use std::hint::black_box;
use std::sync::Arc;

/// Repeats through the borrowed view, reading the outcome and whether there is a token (as the bench's
/// `realistic/repeat-view` does).
#[inline(never)]
fn repeats_track_with(e: &Engine, reqs: &[TrackRequest]) -> usize {
    let mut challenges = 0;
    for r in reqs {
        let (s, token) = e
            .track_with(r, |v| (v.state(), v.token().is_some()))
            .unwrap();
        challenges += usize::from(black_box(s) == State::ChallengeRequired && token);
    }
    challenges
}

/// Repeats through `track`: an owned response, built and dropped.
#[inline(never)]
fn repeats_track(e: &Engine, reqs: &[TrackRequest]) -> usize {
    let mut challenges = 0;
    for r in reqs {
        let resp = e.track(r).unwrap();
        challenges += usize::from(black_box(&resp).state == State::ChallengeRequired);
    }
    challenges
}

/// The bench baseline's map hasher: the map's keys are already identity hashes.
#[derive(Default)]
struct Id(u64);

impl Hasher for Id {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, _: &[u8]) {}
    fn write_u128(&mut self, v: u128) {
        self.0 = (v as u64) ^ ((v >> 64) as u64);
    }
}

/// Baseline (a): hash the identity, probe a pre-filled lock-free map of the same size, take a shared value.
#[inline(never)]
fn floor_probes(
    ids: &IdentityHasher,
    map: &papaya::HashMap<u128, Arc<u64>, BuildHasherDefault<Id>>,
    reqs: &[TrackRequest],
) -> u64 {
    let m = map.pin();
    let mut sum = 0;
    for r in reqs {
        let k = r.attributes.idempotency_key.as_deref().unwrap_or("");
        sum += *black_box(m.get(&ids.hash(&r.user_id, &r.action, k)).cloned()).unwrap();
    }
    sum
}

fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .map_or(100_000, |a| a.parse().expect("N: a number of actions"));
    let b =
        workload::with_rules(RuleSet::builder().config_toml("[idempotency]\ncapacity = 400000"));
    let e = Engine::builder()
        .ruleset(b.build().unwrap())
        .clock(FakeClock::default())
        .build()
        .unwrap();
    let live = workload::requests(n, "live");
    for r in &live {
        e.track(r).unwrap();
    }
    // The crate's identity hash (keyed SipHash-1-3), as the store keys actions.
    let ids = IdentityHasher::new().expect("random source");
    let map = papaya::HashMap::builder()
        .hasher(BuildHasherDefault::<Id>::default())
        .resize_mode(papaya::ResizeMode::Blocking)
        .build();
    for (i, r) in live.iter().enumerate() {
        let k = r.attributes.idempotency_key.as_deref().unwrap();
        map.pin()
            .insert(ids.hash(&r.user_id, &r.action, k), Arc::new(i as u64));
    }
    if std::env::args().nth(2).as_deref() == Some("time") {
        time(&e, &ids, &map, &live);
        return;
    }
    let a = repeats_track_with(&e, &live);
    let b = repeats_track(&e, &live);
    assert_eq!(a, b);
    let s = floor_probes(&ids, &map, &live);
    println!("{n} repeats each way, {a} of them challenges; floor checksum {s}");
}

/// Alternating timed batches of the three, 300 rounds; prints per call the fastest batch and the median.
fn time(
    e: &Engine,
    ids: &IdentityHasher,
    map: &papaya::HashMap<u128, Arc<u64>, BuildHasherDefault<Id>>,
    live: &[TrackRequest],
) {
    for warm in [false, true] {
        time_batches(e, ids, map, live, warm);
    }
}

/// Reads every byte of the requests' strings, as a caller that has just parsed them has them in cache.
fn warm_up(reqs: &[TrackRequest]) -> u64 {
    let mut sum = 0u64;
    let mut add = |s: &str| sum = sum.wrapping_add(s.bytes().map(u64::from).sum::<u64>());
    for r in reqs {
        add(&r.user_id);
        add(&r.action);
        let a = &r.attributes;
        for f in [
            &a.idempotency_key,
            &a.device_id,
            &a.ip_address,
            &a.user_agent,
            &a.redirect_url,
            &a.email,
            &a.phone_number,
            &a.username,
        ]
        .into_iter()
        .flatten()
        {
            add(f);
        }
        for (k, v) in &a.custom {
            add(k);
            if let riskgate::CustomValue::String(s) = v {
                add(s);
            }
        }
    }
    sum
}

/// [`time`], the requests of each batch cold (as the bench walks 100,000 of them) or `warm` (read just before,
/// as a server that has just parsed them has them; the stored actions and the map stay cold).
fn time_batches(
    e: &Engine,
    ids: &IdentityHasher,
    map: &papaya::HashMap<u128, Arc<u64>, BuildHasherDefault<Id>>,
    live: &[TrackRequest],
    warm: bool,
) {
    const BATCH: usize = 2_000;
    const ROUNDS: usize = 300;
    let mut ns: [Vec<f64>; 3] = Default::default();
    // Each batch its own slice of the stream, taken again only dozens of batches later: as in the bench, the
    // requests and their actions are not in cache when a batch starts.
    let batches: Vec<&[TrackRequest]> = live.chunks_exact(BATCH).collect();
    let mut next = 0;
    let per_call = |t: std::time::Instant| t.elapsed().as_nanos() as f64 / BATCH as f64;
    for _ in 0..ROUNDS {
        let mut batch = || {
            next += 1;
            batches[next % batches.len()]
        };
        let (a, b, c) = (batch(), batch(), batch());
        let warm_up = |r: &[TrackRequest]| {
            if warm {
                black_box(warm_up(r));
            }
        };
        warm_up(a);
        let t = std::time::Instant::now();
        black_box(floor_probes(ids, map, a));
        ns[0].push(per_call(t));
        warm_up(b);
        let t = std::time::Instant::now();
        black_box(repeats_track_with(e, b));
        ns[1].push(per_call(t));
        warm_up(c);
        let t = std::time::Instant::now();
        black_box(repeats_track(e, c));
        ns[2].push(per_call(t));
    }
    let stats = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        (v[0], v[v.len() / 2])
    };
    let [floor, with, track] = ns.each_mut().map(stats);
    let requests = if warm {
        "requests read just before"
    } else {
        "requests cold"
    };
    println!("{ROUNDS} rounds of {BATCH} calls each, {requests}; ns per call, fastest batch / median batch");
    println!("floor/hash-probe (a)   {:7.1} / {:7.1}", floor.0, floor.1);
    for (name, (min, med)) in [
        ("repeat-view (track_with)", with),
        ("repeat (track)", track),
    ] {
        println!(
            "{name:<24} {min:7.1} / {med:7.1}   {:.2}x / {:.2}x (a)",
            min / floor.0,
            med / floor.1
        );
    }
}
