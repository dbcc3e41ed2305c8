//! The state-store seam: where an engine keeps what it remembers between decisions.
//!
//! Two things are remembered: actions (idempotency, single-flight first decisions, lifecycle, challenge tokens)
//! and signal history (velocity series, distinct sets, known devices/IPs/countries, `rba_score()`'s counts).
//! The seam is two small enums, matched once per call (static dispatch, no `dyn` on the hot path):
//!
//! - [`Backend`] for actions: [`Backend::Memory`] is the in-process `store::Store` (the default, zero set-up);
//!   [`Backend::Redis`] (feature `redis`) keeps actions on a Redis server or cluster shared by every engine.
//! - `signals::View` for history: `View::Local` is the engine's own `signals::History`; `View::Snapshot` is
//!   what a remote store fetched for one action before its rules ran, and logs what the decision writes.
//!
//! Rules, resolution and signals see neither: they read a `DecisionCtx` whose history is a `View`. What a
//! stored decision means (responses, records, conflicts) stays with the engine; a remote store keeps
//! [`record::Decided`] values and the counts behind the signals.

#[cfg(feature = "redis")]
pub(crate) mod record;
#[cfg(feature = "redis")]
pub(crate) mod redis;

use crate::store::Store;

/// Where an engine's actions are kept.
// One per engine, behind its `Arc`: the in-memory store is kept inline (no pointer to chase on every call).
#[allow(clippy::large_enum_variant)]
pub(crate) enum Backend {
    /// In this process.
    Memory(Store),
    /// On Redis (or Redis Cluster), shared by every engine that uses it.
    #[cfg(feature = "redis")]
    Redis(Box<redis::RedisStore>),
}

#[cfg(feature = "redis")]
/// A remote store call failed (unreachable, timed out, refused): the message says how, without the url.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct StoreError(pub String);

#[cfg(feature = "redis")]
impl std::fmt::Display for StoreError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}
