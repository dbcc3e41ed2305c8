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

    /// Settings from a `--store` argument: `memory`, `redis://…` or `redis+cluster://host:port,…`.
    pub fn from_url(url: &str) -> Result<Self, String> {
        if url == "memory" {
            return Ok(StoreSettings::memory());
        }
        if let Some(rest) = url.strip_prefix("redis+cluster://") {
            let nodes: Vec<String> = rest.split(',').map(|n| format!("redis://{n}")).collect();
            return Ok(StoreSettings::redis(nodes.join(",")).cluster(true));
        }
        if url.starts_with("redis://") {
            return Ok(StoreSettings::redis(url));
        }
        Err(format!(
            "`--store`: expected `memory`, `redis://host:port` or `redis+cluster://host:port,…`, not `{}`",
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
        ] {
            if let Some(v) = v {
                match crate::duration::parse_millis(v) {
                    Ok(ms) => *slot = Duration::from_millis(u64::try_from(ms).unwrap_or(0)),
                    Err(m) => fail(key, format!("`[store] {key}`: {m}")),
                }
            }
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
