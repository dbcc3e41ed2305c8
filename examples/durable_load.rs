//! How long durable state (`[store] path`) takes to load: builds a state of N actions and N history keys
//! (N / 2 users with two sign-ins each: a velocity series and a known entry per user), then times loading it back from the journal alone (as after a crash: the
//! files copied aside before any snapshot) and from the snapshot (as after a clean shutdown). `cargo run --release --example durable_load -- 1000000 /tmp/riskgate-load`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use riskgate::{Engine, FakeClock, RuleSet, StoreSettings, TrackRequest};
use std::path::PathBuf;
use std::time::{Duration, Instant, UNIX_EPOCH};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let n: usize = args.next().map_or(Ok(1_000_000), |a| a.parse())?;
    let dir = PathBuf::from(args.next().unwrap_or_else(|| "/tmp/riskgate-load".into()));
    // `load`: only time loading the snapshot an earlier run left (for a profiler).
    let load_only = args.next().as_deref() == Some("load");
    if !load_only {
        let _ = std::fs::remove_dir_all(&dir);
    }
    std::fs::create_dir_all(&dir)?;
    let path = dir.join("state");
    let rules = RuleSet::builder()
        .config_toml(format!(
            "[idempotency]\ncapacity = {}\n[signals]\nmax_keys = {}\nmax_bytes = 1073741824",
            n + 1,
            n + 1
        ))
        .rule("busy", r#"if velocity("1h") > 5 { BLOCK }"#)
        .build()?;
    let clock = FakeClock::at(UNIX_EPOCH + Duration::from_secs(1_700_000_000));
    let at = |path: &std::path::Path| {
        StoreSettings::file(path)
            .sync_interval(Duration::from_millis(100))
            .snapshot_interval(Duration::from_secs(86_400))
            .journal_buffer(1 << 30)
    };
    let store = at(&path);
    let build = |store: &StoreSettings| {
        Engine::builder()
            .ruleset(rules.clone())
            .clock(clock.clone())
            .store(store.clone())
            .build()
    };
    if load_only {
        let t = Instant::now();
        let e = build(&store)?;
        eprintln!(
            "loaded {} actions + {} history keys from the snapshot in {:?}",
            e.stored_actions(),
            e.history_keys(),
            t.elapsed()
        );
        std::mem::forget(e);
        return Ok(());
    }
    let e = build(&store)?;
    let t = Instant::now();
    for i in 0..n {
        let r =
            TrackRequest::new(format!("user-{}", i / 2), "signIn").idempotency_key(format!("k{i}"));
        e.track(&r)?;
    }
    eprintln!("tracked {n} in {:?}", t.elapsed());
    let (actions, keys) = (e.stored_actions(), e.history_keys());
    // Wait for the writer to sync everything, then copy the files aside: a state of one empty snapshot and a
    // journal, as a crash would leave it.
    let mut synced = 0;
    loop {
        std::thread::sleep(Duration::from_millis(300));
        let s = e.durable_stats().unwrap_or_default().journal_bytes;
        if s == synced {
            break;
        }
        synced = s;
    }
    let crashed = dir.join("crashed");
    for f in std::fs::read_dir(&dir)? {
        let f = f?.path();
        let name = f
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned();
        if let Some(rest) = name.strip_prefix("state") {
            std::fs::copy(&f, dir.join(format!("crashed{rest}")))?;
        }
    }
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
    let e = build(&store)?;
    let took = t.elapsed();
    assert_eq!((e.stored_actions(), e.history_keys()), (actions, keys));
    eprintln!("loaded {actions} actions + {keys} history keys from the snapshot in {took:?}");
    std::mem::forget(e);
    let t = Instant::now();
    let j = build(&at(&crashed))?;
    let took = t.elapsed();
    assert_eq!((j.stored_actions(), j.history_keys()), (actions, keys));
    eprintln!("loaded {actions} actions + {keys} history keys from the journal alone ({synced} bytes) in {took:?}");
    std::mem::forget(j);
    Ok(())
}
