//! Shared set-up for the integration tests: times, requests, engines, rule fixtures, in-process replay and the
//! `riskgate` binary. Each test binary uses a subset of these, hence `dead_code` is allowed here.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

pub mod redis;

use riskgate::replay::Replayer;
use riskgate::{Engine, EngineBuilder, FakeClock, RuleSet, TrackRequest};
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// 2024-03-01T00:00:00Z in seconds since the Unix epoch: the tests' "now".
pub const T0: u64 = 1_709_251_200;

/// `secs` seconds after [`T0`].
pub fn at(secs: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(T0 + secs)
}

/// A clock standing at [`T0`].
pub fn clock() -> FakeClock {
    FakeClock::at(at(0))
}

/// A request for `user` doing `action`; add attributes with its builder methods (`.ip(..)`, `.device(..)`,
/// `.idempotency_key(..)`, `.custom(..)`).
pub fn req(user: &str, action: &str) -> TrackRequest {
    TrackRequest::new(user, action)
}

/// `user-1` signing in with idempotency key `key`.
pub fn keyed(key: &str) -> TrackRequest {
    req("user-1", "signIn").idempotency_key(key)
}

/// A ruleset of `(id, source)` rules with `riskgate.toml` text `config`.
pub fn ruleset(rules: &[(&str, &str)], config: &str) -> RuleSet {
    let mut b = RuleSet::builder().config_toml(config);
    for (id, src) in rules {
        b = b.rule(*id, *src);
    }
    b.build().unwrap()
}

/// An engine on the wall clock over `rules`, with the default configuration.
pub fn engine(rules: &[(&str, &str)]) -> Engine {
    engine_with_config(rules, "")
}

/// An engine on the wall clock over `rules`, with `riskgate.toml` text `config`.
pub fn engine_with_config(rules: &[(&str, &str)], config: &str) -> Engine {
    build(Engine::builder().ruleset(ruleset(rules, config)))
}

/// An engine over `rules` whose clock stands at [`T0`].
pub fn engine_at_t0(rules: RuleSet) -> Engine {
    build(Engine::builder().ruleset(rules).clock(clock()))
}

/// Builds `b`, which must succeed: on the store `RISKGATE_TEST_STORE` names (memory by default; see
/// [`redis`]), so every suite that builds its engines here runs on each backend unchanged.
pub fn build(b: EngineBuilder) -> Engine {
    with_test_store(b).build().unwrap()
}

/// `b` on the store `RISKGATE_TEST_STORE` names.
pub fn with_test_store(b: EngineBuilder) -> EngineBuilder {
    match redis::test_store() {
        Some(s) => b.store(s),
        None => {
            if std::env::var("RISKGATE_TEST_STORE").is_ok_and(|v| v != "memory") {
                redis::say_skipped();
            }
            b
        }
    }
}

/// Whether this run's engines keep their state in memory: tests of the in-memory store's own bounds
/// (capacity eviction, bytes, key counts) hold only there.
pub fn in_memory() -> bool {
    !redis::on_redis()
}

/// A rule that fails at run time (a method that does not exist), at priority 10.
pub const FAILING: &str = "//! priority: 10\nlet x = 1; x.ends_with(\"1\")";

/// A rule that runs a 200-step loop before deciding `outcome`: slow enough for decisions to overlap a ruleset
/// swap, far inside every limit.
pub fn slow(outcome: &str) -> String {
    format!("let i = 0; while i < 200 {{ i += 1; }} {outcome}")
}

/// Everything observable about an engine's state: stored actions, history keys, decisions made.
pub fn footprint(e: &Engine) -> (usize, usize, u64) {
    (e.stored_actions(), e.history_keys(), e.decisions())
}

/// Writes `text` to `dir/rel`, creating the folders on the way.
pub fn write(dir: &Path, rel: &str, text: &str) {
    let path = dir.join(rel);
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).unwrap();
    }
    std::fs::write(path, text).unwrap();
}

/// Replays `input` (JSON lines) in process through the rules folder `rules`, as `riskgate replay` does, and
/// returns the output lines parsed (blank lines have none).
pub fn replay(rules: &Path, input: &str) -> Vec<serde_json::Value> {
    let mut r = Replayer::new(Engine::builder().rules_dir(rules).unwrap()).unwrap();
    input
        .split('\n')
        .map(|l| l.strip_suffix('\r').unwrap_or(l))
        .enumerate()
        .filter_map(|(i, line)| r.line(i as u64 + 1, line.as_bytes()))
        .map(|out| serde_json::from_str(&out.json).unwrap())
        .collect()
}

/// The `riskgate` binary, with no API secret from the environment of the test run.
#[cfg(feature = "cli")]
pub fn riskgate() -> std::process::Command {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_riskgate"));
    cmd.env_remove("RISKGATE_SECRET");
    cmd
}
