//! `[store]` in `riskgate.toml` and [`EngineBuilder::store`](crate::EngineBuilder::store): where an engine
//! keeps what it remembers between decisions (actions, tokens, signal history).
//!
//! Parsed with the rest of the file whether or not feature `redis` is built; an engine built without it
//! refuses `backend = "redis"` at `build`. The store is chosen once, when the engine is built: a reload that
//! changes `[store]` changes nothing until the engine is built again.

use serde::Deserialize;
use std::time::Duration;

use crate::State;

/// Which store an engine keeps its state in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum StoreBackend {
    /// In this process (the default): embedded, no set-up, the fastest; one engine's view only.
    #[default]
    Memory,
    /// On a Redis server or Redis Cluster (feature `redis`): every engine sharing it shares one view.
    Redis,
}

/// What `track` does while the remote store fails (Redis down, slow or restarting): `[store] on_store_error`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum OnStoreError {
    /// Answer with this outcome, unstored, with [`TrackResponse::store_error`](crate::TrackResponse::store_error)
    /// saying why (no token: a challenge cannot be completed without the store).
    Outcome(State),
    /// Fail the call with [`TrackError::Store`](crate::TrackError::Store).
    Error,
}

/// What an engine with durable state (`[store] path`) does when its files are damaged, truncated or of an
/// unknown format version: `[store] on_corrupt`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum OnCorrupt {
    /// Refuse to build the engine ([`LoadError::StateFile`](crate::LoadError::StateFile)); the files are left
    /// as they are (the default).
    #[default]
    Refuse,
    /// Set the files aside (renamed `*.damaged-<ms>`) and start empty.
    Empty,
}

/// The state store's settings (`[store]` in `riskgate.toml`, or [`EngineBuilder::store`](crate::EngineBuilder::store)).
///
/// ```
/// use riskgate::{OnStoreError, State, StoreSettings};
/// use std::time::Duration;
///
/// let s = StoreSettings::redis("redis://127.0.0.1:6379")
///     .key_prefix("shop")
///     .timeout(Duration::from_millis(30))
///     .on_store_error(OnStoreError::Outcome(State::ChallengeRequired));
/// assert_eq!(s.key_prefix, "shop");
/// ```
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct StoreSettings {
    /// `backend`: `"memory"` (default) or `"redis"`.
    pub backend: StoreBackend,
    /// `url`: `redis://host:port[/db]`, or several comma-separated `redis://` nodes of a Redis Cluster
    /// (`cluster = true`).
    pub url: Option<String>,
    /// `cluster`: the url names Redis Cluster nodes (default false).
    pub cluster: bool,
    /// `key_prefix`: every key starts with it (default `riskgate`), so several deployments can share a server.
    pub key_prefix: String,
    /// `timeout`: the longest one round trip to the store may take (default `50ms`).
    pub timeout: Duration,
    /// `connect_timeout`: the longest a new connection may take (default `100ms`).
    pub connect_timeout: Duration,
    /// `lease`: how long a first decision may hold its identity before another instance may decide it
    /// (default `2s`); a caller waiting on another instance's decision waits at most this long.
    pub lease: Duration,
    /// `on_store_error`: an outcome such as `"CHALLENGE_REQUIRED"` (default), or `"error"`.
    pub on_store_error: OnStoreError,
    /// `path`: keep the in-memory store's state in this file (and `PATH.journal.N` beside it), so a restart
    /// forgets nothing (see the README's "Restarts and durability"). `None` (the default): memory only.
    pub path: Option<std::path::PathBuf>,
    /// `on_corrupt`: `"refuse"` (default) or `"empty"`.
    pub on_corrupt: OnCorrupt,
    /// `sync_interval`: how often changes are written and synced to the journal (default `100ms`, from 1ms to
    /// 1h): a crash loses at most the changes of the last interval.
    pub sync_interval: Duration,
    /// `snapshot_interval`: how often the state is written whole and the journal started afresh (default
    /// `10m`, from 1s to 1 day).
    pub snapshot_interval: Duration,
    /// `journal_buffer`: the most bytes of changes waiting to be written (default 64 MiB, at least 64 KiB);
    /// past it, changes are counted as dropped ([`DurableStats::dropped`](crate::DurableStats::dropped)), never
    /// waited on.
    pub journal_buffer: usize,
}

impl Default for StoreSettings {
    fn default() -> Self {
        StoreSettings {
            backend: StoreBackend::Memory,
            url: None,
            cluster: false,
            key_prefix: "riskgate".to_owned(),
            timeout: Duration::from_millis(50),
            connect_timeout: Duration::from_millis(100),
            lease: Duration::from_secs(2),
            on_store_error: OnStoreError::Outcome(State::ChallengeRequired),
            path: None,
            on_corrupt: OnCorrupt::Refuse,
            sync_interval: Duration::from_millis(100),
            snapshot_interval: Duration::from_secs(600),
            journal_buffer: 64 << 20,
        }
    }
}

impl StoreSettings {
    /// The in-memory store (the default).
    pub fn memory() -> Self {
        StoreSettings::default()
    }

    /// A Redis store at `url` (`redis://host:port[/db]`); a `url` with several comma-separated nodes, or
    /// given to [`cluster`](StoreSettings::cluster), is a Redis Cluster.
    pub fn redis(url: impl Into<String>) -> Self {
        let url = url.into();
        StoreSettings {
            backend: StoreBackend::Redis,
            cluster: url.contains(','),
            url: Some(url),
            ..StoreSettings::default()
        }
    }

    /// The in-memory store, kept durably at `path` (a file, with its journals beside it).
    ///
    /// ```
    /// use riskgate::{OnCorrupt, StoreSettings};
    /// use std::time::Duration;
    ///
    /// let s = StoreSettings::file("/var/lib/riskgate/state")
    ///     .sync_interval(Duration::from_millis(50))
    ///     .on_corrupt(OnCorrupt::Empty);
    /// assert!(s.path.is_some());
    /// ```
    pub fn file(path: impl Into<std::path::PathBuf>) -> Self {
        StoreSettings {
            path: Some(path.into()),
            ..StoreSettings::default()
        }
    }

    /// What a damaged state file does.
    pub fn on_corrupt(mut self, on: OnCorrupt) -> Self {
        self.on_corrupt = on;
        self
    }

    /// How often changes are synced to the journal: the most a crash loses.
    pub fn sync_interval(mut self, interval: Duration) -> Self {
        self.sync_interval = interval;
        self
    }

    /// How often the state is written whole.
    pub fn snapshot_interval(mut self, interval: Duration) -> Self {
        self.snapshot_interval = interval;
        self
    }

    /// The most bytes of changes waiting to be written.
    pub fn journal_buffer(mut self, bytes: usize) -> Self {
        self.journal_buffer = bytes;
        self
    }

    /// Whether the url names Redis Cluster nodes.
    pub fn cluster(mut self, cluster: bool) -> Self {
        self.cluster = cluster;
        self
    }

    /// The prefix of every key.
    pub fn key_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.key_prefix = prefix.into();
        self
    }

    /// The longest one round trip may take.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The longest a new connection may take.
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// How long a first decision holds its identity.
    pub fn lease(mut self, lease: Duration) -> Self {
        self.lease = lease;
        self
    }

    /// What `track` does while the store fails.
    pub fn on_store_error(mut self, on: OnStoreError) -> Self {
        self.on_store_error = on;
        self
    }

    /// Settings from a `--store` argument: `memory`, `file:PATH`, `redis://…` or `redis+cluster://host:port,…`.
    pub fn from_url(url: &str) -> Result<Self, String> {
        if url == "memory" {
            return Ok(StoreSettings::memory());
        }
        if let Some(path) = url.strip_prefix("file:") {
            if path.is_empty() {
                return Err("`--store file:PATH`: the path is empty".to_owned());
            }
            return Ok(StoreSettings::file(path));
        }
        if let Some(rest) = url.strip_prefix("redis+cluster://") {
            let nodes: Vec<String> = rest.split(',').map(|n| format!("redis://{n}")).collect();
            return Ok(StoreSettings::redis(nodes.join(",")).cluster(true));
        }
        if url.starts_with("redis://") {
            return Ok(StoreSettings::redis(url));
        }
        Err(format!(
            "`--store`: expected `memory`, `file:PATH`, `redis://host:port` or `redis+cluster://host:port,…`, not `{}`",
            crate::error::shorten(url)
        ))
    }

    /// The nodes the url names.
    pub(crate) fn nodes(&self) -> Vec<String> {
        self.url
            .as_deref()
            .unwrap_or("")
            .split(',')
            .map(str::trim)
            .filter(|n| !n.is_empty())
            .map(str::to_owned)
            .collect()
    }

    /// Checks the values; `Err` names the first bad one.
    pub(crate) fn check(&self) -> Result<(), (&'static str, String)> {
        let ms = |d: Duration| d.as_millis();
        for (key, d) in [
            ("timeout", self.timeout),
            ("connect_timeout", self.connect_timeout),
            ("lease", self.lease),
        ] {
            if ms(d) == 0 || ms(d) > 3_600_000 {
                return Err((key, format!("`[store] {key}` must be from 1ms to 1h")));
            }
        }
        if self.key_prefix.is_empty()
            || self.key_prefix.len() > 64
            || self.key_prefix.contains(['{', '}'])
        {
            return Err((
                "key_prefix",
                "`[store] key_prefix` must be 1 to 64 bytes without `{` or `}`".to_owned(),
            ));
        }
        let in_range = |d: Duration, lo: u128, hi: u128| (lo..=hi).contains(&ms(d));
        if !in_range(self.sync_interval, 1, 3_600_000) {
            return Err((
                "sync_interval",
                "`[store] sync_interval` must be from 1ms to 1h".to_owned(),
            ));
        }
        if !in_range(self.snapshot_interval, 1_000, 86_400_000) {
            return Err((
                "snapshot_interval",
                "`[store] snapshot_interval` must be from 1s to 1d".to_owned(),
            ));
        }
        if self.journal_buffer < 64 * 1024 {
            return Err((
                "journal_buffer",
                "`[store] journal_buffer` must be at least 65536 bytes".to_owned(),
            ));
        }
        if let Some(p) = &self.path {
            if p.as_os_str().is_empty() {
                return Err(("path", "`[store] path` is empty".to_owned()));
            }
            if self.backend == StoreBackend::Redis {
                return Err((
                    "path",
                    "`[store] path` keeps the in-memory store durable: it does not go with `backend = \"redis\"`"
                        .to_owned(),
                ));
            }
        }
        if self.backend == StoreBackend::Redis {
            let nodes = self.nodes();
            if nodes.is_empty() || nodes.iter().any(|n| !n.starts_with("redis://")) {
                return Err((
                    "url",
                    "`[store] url` must be `redis://host:port` (comma-separated nodes for a cluster)"
                        .to_owned(),
                ));
            }
        }
        Ok(())
    }
}

/// `[store]` as written.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(crate) struct StoreFile {
    backend: Option<String>,
    url: Option<String>,
    cluster: Option<bool>,
    key_prefix: Option<String>,
    timeout: Option<String>,
    connect_timeout: Option<String>,
    lease: Option<String>,
    on_store_error: Option<String>,
    path: Option<String>,
    on_corrupt: Option<String>,
    sync_interval: Option<String>,
    snapshot_interval: Option<String>,
    journal_buffer: Option<usize>,
}

impl StoreFile {
    /// Checks the values; `fail(key, message)` hears of each bad one.
    pub(crate) fn resolve(&self, fail: &mut dyn FnMut(&str, String)) -> StoreSettings {
        let mut s = StoreSettings::default();
        match self.backend.as_deref() {
            None | Some("memory") => {}
            Some("redis") => s.backend = StoreBackend::Redis,
            Some(other) => fail(
                "backend",
                format!(
                    "`[store] backend`: expected \"memory\" or \"redis\", not `{}`",
                    crate::error::shorten(other)
                ),
            ),
        }
        if let Some(u) = &self.url {
            s.cluster = u.contains(',');
            s.url = Some(u.clone());
        }
        if let Some(c) = self.cluster {
            s.cluster = c;
        }
        if let Some(p) = &self.key_prefix {
            s.key_prefix.clone_from(p);
        }
        for (key, v, slot) in [
            ("timeout", &self.timeout, &mut s.timeout),
            (
                "connect_timeout",
                &self.connect_timeout,
                &mut s.connect_timeout,
            ),
            ("lease", &self.lease, &mut s.lease),
            ("sync_interval", &self.sync_interval, &mut s.sync_interval),
            (
                "snapshot_interval",
                &self.snapshot_interval,
                &mut s.snapshot_interval,
            ),
        ] {
            if let Some(v) = v {
                match crate::duration::parse_millis(v) {
                    Ok(ms) => *slot = Duration::from_millis(u64::try_from(ms).unwrap_or(0)),
                    Err(m) => fail(key, format!("`[store] {key}`: {m}")),
                }
            }
        }
        if let Some(p) = &self.path {
            s.path = Some(p.into());
        }
        if let Some(n) = self.journal_buffer {
            s.journal_buffer = n;
        }
        match self.on_corrupt.as_deref() {
            None | Some("refuse") => {}
            Some("empty") => s.on_corrupt = OnCorrupt::Empty,
            Some(other) => fail(
                "on_corrupt",
                format!(
                    "`[store] on_corrupt`: expected \"refuse\" or \"empty\", not `{}`",
                    crate::error::shorten(other)
                ),
            ),
        }
        if let Some(v) = &self.on_store_error {
            match v.as_str() {
                "error" => s.on_store_error = OnStoreError::Error,
                other => match other.parse::<State>() {
                    Ok(st) if st.is_decision() => s.on_store_error = OnStoreError::Outcome(st),
                    _ => fail(
                        "on_store_error",
                        format!(
                            "`[store] on_store_error`: expected ALLOW, CHALLENGE_REQUIRED, REVIEW, BLOCK or \"error\", not `{}`",
                            crate::error::shorten(other)
                        ),
                    ),
                },
            }
        }
        if let Err((key, m)) = s.check() {
            fail(key, m);
        }
        s
    }
}
