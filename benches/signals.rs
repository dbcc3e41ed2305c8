//! What each signal adds to a decision: the same one-rule ruleset with and without the signal, with realistic
//! history behind every lookup, on both rule paths (`compiled`: rules compiled to native closures, the
//! default; `interpreted`: Rhai's interpreter).
//!
//! `cargo bench --bench signals` (add `-- --quick` for a short run). Each case tracks a fresh action (a new
//! idempotency key) for one of 1,000 users, one second after the previous one on a fake clock, so velocity
//! series, distinct sets and known devices are populated as in production; the difference from `baseline` is
//! the signal's cost, including keeping the history it needs.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use riskgate::{Engine, FakeClock, RuleSet, TrackAttributes, TrackRequest};
use std::time::{Duration, UNIX_EPOCH};

const USERS: u64 = 1_000;

fn db(file: &str) -> String {
    format!("{}/tests/data/geoip/{file}", env!("CARGO_MANIFEST_DIR"))
}

/// 100,000 disjoint /28 ranges, none of which holds the benchmark's addresses.
fn big_list() -> String {
    let mut text = String::with_capacity(2_000_000);
    for i in 0..100_000u32 {
        let base = i * 32;
        text.push_str(&format!(
            "10.{}.{}.{}/28\n",
            (base >> 16) & 255,
            (base >> 8) & 255,
            base & 255
        ));
    }
    text
}

fn engine(rule: &str, compiled: bool) -> Engine {
    let config = format!(
        "[idempotency]\ncapacity = 100000\n[geoip]\ncity = \"{}\"\nasn = \"{}\"\nanonymous_ip = \"{}\"\n",
        db("GeoIP2-City-Test.mmdb"),
        db("GeoLite2-ASN-Test.mmdb"),
        db("GeoIP2-Anonymous-IP-Test.mmdb")
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

/// The request for iteration `i`: user `i % USERS`, from an address in London that the user always uses (or,
/// with `fresh_ip`, a different one each time, so GeoIP cannot answer from the user's last known location),
/// with a desktop user agent.
fn request(i: u64, fresh_ip: bool) -> TrackRequest {
    let user = i % USERS;
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
const CASES: [(&str, &str); 21] = [
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
];

fn signals(c: &mut Criterion) {
    let mut g = c.benchmark_group("signal-cost");
    g.sample_size(30)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    let t0 = UNIX_EPOCH + Duration::from_secs(1_709_283_600);
    for ((name, rule), compiled) in CASES.iter().flat_map(|c| [(c, true), (c, false)]) {
        let e = engine(rule, compiled);
        let fresh = name.ends_with("fresh-ip");
        let path = if compiled { "compiled" } else { "interpreted" };
        // History first: ten actions per user.
        let mut i = 0u64;
        while i < USERS * 10 {
            e.track_at(&request(i, fresh), t0 + Duration::from_secs(i))
                .unwrap();
            i += 1;
        }
        g.bench_function(format!("{path}/{name}"), |b| {
            b.iter(|| {
                i += 1;
                let at = t0 + Duration::from_secs(i);
                black_box(e.track_at(&request(i, fresh), at).unwrap())
            })
        });
    }
    g.finish();
}

criterion_group!(benches, signals);
criterion_main!(benches);
