#![doc = include_str!("../README.md")]
//!
//! [`EngineBuilder::idempotency_capacity`]: crate::EngineBuilder::idempotency_capacity
//! [`OnConflict`]: crate::OnConflict
//! [`OnRuleError`]: crate::OnRuleError
//! [`SandboxLimits`]: crate::SandboxLimits
//! [`TrackError`]: crate::TrackError
//! [`TrackError::code`]: crate::TrackError::code
//! [`TrackError::http_status`]: crate::TrackError::http_status
//! [`ParseStateError`]: crate::ParseStateError
//! [`RuleErrorKind`]: crate::RuleErrorKind

mod clock;
mod config;
mod counter;
mod decide;
mod durable;
mod duration;
mod engine;
mod error;
mod explain;
mod files;
mod hash;
mod request;
mod response;
mod rules;
#[cfg(feature = "server")]
pub mod server;
mod server_settings;
mod settings;
mod signals;
mod state;
mod stats;
mod store;
mod store_settings;
mod time;
mod token;

pub mod replay;
#[cfg(feature = "simulate")]
pub mod simulate;
#[cfg(feature = "watch")]
mod watch;

pub use clock::{Clock, FakeClock, SystemClock};
pub use config::{OnConflict, OnRuleError};
pub use durable::DurableStats;
pub use engine::{Engine, EngineBuilder};
pub use error::{Diagnostic, LoadError, Severity, TrackError};
pub use explain::{Explanation, RbaFactor, RuleTrace, Value};
pub use request::{
    CustomValue, TrackAttributes, TrackRequest, MAX_CUSTOM_ENTRIES, MAX_CUSTOM_KEY_BYTES,
    MAX_CUSTOM_STRING_BYTES, MAX_ID_BYTES, MAX_LONG_FIELD_BYTES, MAX_PHONE_BYTES,
};
pub use response::{
    ActionRecord, InvalidTokenReason, ParseStateError, RuleError, RuleErrorKind, RuleId, State,
    TrackResponse, TrackView, ValidateChallengeResponse,
};
pub use rules::{Mode, RuleInfo, RuleSet, RuleSetBuilder};
pub use server_settings::{LogFormat, ServerSettings};
pub use settings::SandboxLimits;
pub use stats::{DecisionCounts, RuleStats, Stats};
pub use store_settings::{OnCorrupt, OnStoreError, StoreBackend, StoreSettings};
#[cfg(feature = "watch")]
pub use watch::{RulesWatcher, WatchError};

#[doc(hidden)]
pub use rules::vars::names;

/// Not part of the API: the crate's identity hash, for the benchmarks' `floor/hash-probe` baseline, which must
/// hash the way the store does.
#[doc(hidden)]
pub mod __bench {
    /// The store's keyed identity hash under a freshly drawn key.
    pub struct IdentityHasher(crate::hash::IdentityKey);

    impl IdentityHasher {
        /// A hasher with a key drawn from the OS (`None` if the random source fails).
        pub fn new() -> Option<Self> {
            Some(IdentityHasher(
                crate::hash::EngineKeys::draw().ok()?.identity(),
            ))
        }

        /// The hash of one identity, as the action store computes it.
        #[inline]
        pub fn hash(&self, user_id: &str, action: &str, key: &str) -> u128 {
            let [lo, hi]: [u64; 2] =
                crate::hash::identity_hash(&self.0, user_id, action, key).into();
            u128::from(lo) | u128::from(hi) << 64
        }
    }
}
