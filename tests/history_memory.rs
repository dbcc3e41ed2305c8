//! History memory under floods, measured with allocator statistics. In a test binary of its own: the counts
//! are process-wide, so no other test may allocate beside it.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use riskgate::{Engine, RuleSet};
use std::time::{Duration, UNIX_EPOCH};

const T0: u64 = 1_709_283_600; // 2024-03-01T09:00:00Z

fn req(user: &str, action: &str, ip: Option<&str>, device: Option<&str>) -> riskgate::TrackRequest {
    let mut r = riskgate::TrackRequest::new(user, action);
    r.attributes.ip_address = ip.map(Into::into);
    r.attributes.device_id = device.map(Into::into);
    r
}

#[global_allocator]
static ALLOC: &stats_alloc::StatsAlloc<std::alloc::System> = &stats_alloc::INSTRUMENTED_SYSTEM;

fn live_bytes() -> i64 {
    let s = ALLOC.stats();
    s.bytes_allocated as i64 - s.bytes_deallocated as i64
}

/// Every history table a ruleset can fill: three velocity series, three distinct sets, and known devices and
/// IPs (every action ends ALLOW).
const EVERY_SERIES: &str = r#"if velocity("1h") < 0 || velocity_ip("1h") < 0 || velocity_device("1h") < 0
    || distinct_users_on_ip("1h") < 0 || distinct_users_on_device("1h") < 0 || distinct_devices("1h") < 0
    || is_new_device() && is_new_ip() && false { BLOCK }"#;

/// Floods an engine (with `[signals]` settings `signals`) with `n` actions over `keys` users, IPs and devices,
/// mixed so that every user meets many IPs and devices. `check` sees the engine and the live bytes added so far
/// every 1,000 actions; returns the live bytes added and the history keys at the end.
fn flood(signals: &str, n: u32, keys: u32, mut check: impl FnMut(&Engine, i64)) -> (i64, usize) {
    let rules = RuleSet::builder()
        .rule("all", EVERY_SERIES)
        .config_toml(format!(
            "[signals]\n{signals}\n[idempotency]\ncapacity = 16\n"
        ))
        .build()
        .unwrap();
    let e = Engine::builder().ruleset(rules).build().unwrap();
    let before = live_bytes();
    for i in 0..n {
        let u = i % keys;
        let ip = (i / keys + i * 7) % keys;
        let d = (i / keys + i * 13) % keys;
        let ip = format!("10.{}.{}.{}", ip >> 16, (ip >> 8) & 255, ip & 255);
        let r = req(
            &format!("user-{u}"),
            "signIn",
            Some(&ip),
            Some(&format!("device-{d}")),
        );
        e.track_at(
            &r,
            UNIX_EPOCH + Duration::from_millis(T0 * 1000 + u64::from(i)),
        )
        .unwrap();
        if i % 1_000 == 999 {
            check(&e, live_bytes() - before);
        }
    }
    let added = live_bytes() - before;
    let keys = e.history_keys();
    (added, keys)
}

#[test]
fn a_dense_flood_stays_within_max_bytes() {
    // 200 users, IPs and devices acting 150 times each: every series, set and known list fills up, in all
    // three tables. Each table may hold 512 KiB.
    const MAX: i64 = 512 * 1024;
    // What the engine holds besides history (the store's 16 actions, the ruleset): well under this.
    const OTHER: i64 = 256 * 1024;
    let mut peak = 0;
    let (added, keys) = flood(
        &format!("max_bytes = {MAX}\nmax_per_key = 100"),
        30_000,
        200,
        |e, live| {
            assert!(e.history_bytes() as i64 <= 3 * MAX, "{}", e.history_bytes());
            assert!(live <= 3 * MAX + OTHER, "{live} bytes live");
            peak = peak.max(live);
        },
    );
    assert!(added <= 3 * MAX + OTHER, "{added} bytes live at the end");
    // Without the budget this flood holds about three times as much: it is really bounded, not undershot.
    assert!(peak >= 2 * MAX, "the flood fills history: peak {peak}");
    assert!(keys < 2_000, "{keys} keys: the budget evicted some");
}
