//! How long durable state (`[store] path`) takes to load: builds a state of N actions and N history keys
//! (one velocity series per user), writes it, then times loading it back from the snapshot. `cargo run --release --example durable_load -- 1000000 /tmp/riskgate-load`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use riskgate::{Engine, FakeClock, RuleSet, StoreSettings, TrackRequest};
use std::path::PathBuf;
use std::time::{Duration, Instant, UNIX_EPOCH};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let n: usize = args.next().map_or(Ok(1_000_000), |a| a.parse())?;
    let dir = PathBuf::from(args.next().unwrap_or_else(|| "/tmp/riskgate-load".into()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let path = dir.join("state");
    let rules = RuleSet::builder()
        .config_toml(&format!("[idempotency]\ncapacity = {}\n[signals]\nmax_keys = {}", n + 1, n + 1))
        .rule("busy", r#"if velocity("1h") > 5 { BLOCK }"#)
        .build()?;
    let clock = FakeClock::at(UNIX_EPOCH + Duration::from_secs(1_700_000_000));
    let store = StoreSettings::file(&path)
        .sync_interval(Duration::from_millis(100))
        .snapshot_interval(Duration::from_secs(86_400));
    let build = || {
        Engine::builder()
            .ruleset(rules.clone())
            .clock(clock.clone())
            .store(store.clone())
            .build()
    };
    let e = build()?;
    let t = Instant::now();
    for i in 0..n {
        let mut r = TrackRequest::new(format!("user-{i}"), "signIn").idempotency_key(format!("k{i}"));
        r.attributes.device_id = Some(format!("dev-{i}"));
        e.track(&r)?;
    }
    eprintln!("tracked {n} in {:?}", t.elapsed());
    let (actions, keys) = (e.stored_actions(), e.history_keys());
    let t = Instant::now();
    e.flush()?;
    let s = e.durable_stats().unwrap_or_default();
    eprintln!(
        "flushed in {:?}: journal {} bytes ({:.1} per action), snapshot {} bytes ({:.1} per action + history key)",
        t.elapsed(),
        s.journal_bytes,
        s.journal_bytes as f64 / n as f64,
        s.snapshot_bytes,
        s.snapshot_bytes as f64 / n as f64
    );
    drop(e);
    let t = Instant::now();
    let e = build()?;
    let took = t.elapsed();
    assert_eq!((e.stored_actions(), e.history_keys()), (actions, keys));
    eprintln!("loaded {actions} actions + {keys} history keys from the snapshot in {took:?}");
    std::mem::forget(e);
    Ok(())
}
