//! riskgate: an embeddable, in-process risk-decision engine.
//!
//! An application calls [`Engine::track`] where a sensitive action happens and gets back a [`State`]:
//! `ALLOW`, `CHALLENGE_REQUIRED`, `REVIEW` or `BLOCK`, decided by Rhai rules in a `rules/` folder.
//!
//! ```
//! use riskgate::{Engine, RuleSet, State, TrackAttributes, TrackRequest};
//!
//! let rules = RuleSet::from_sources([
//!     ("withdraw/big", "//! actions: withdraw-funds\nif custom.amount > 1000 { REVIEW }"),
//! ])?;
//! let engine = Engine::builder().ruleset(rules).build()?;
//! let mut attributes = TrackAttributes::default();
//! attributes.custom.insert("amount".into(), 5000i64.into());
//! let resp = engine.track(&TrackRequest {
//!     user_id: "user-1".into(),
//!     action: "withdraw-funds".into(),
//!     attributes,
//! })?;
//! assert_eq!(resp.state, State::Review);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! See the README for the rule format, the signals rules can call and the command line.

mod clock;
mod config;
mod decide;
mod duration;
mod engine;
mod error;
mod request;
mod response;
mod rules;
#[cfg(feature = "server")]
pub mod server;
mod server_settings;
mod signals;
mod store;

pub mod replay;
#[cfg(feature = "watch")]
mod watch;

pub use clock::{Clock, FakeClock, SystemClock};
pub use engine::{Engine, EngineBuilder};
pub use error::{Diagnostic, LoadError, TrackError};
pub use request::{
    CustomValue, TrackAttributes, TrackRequest, MAX_CUSTOM_ENTRIES, MAX_CUSTOM_KEY_BYTES,
    MAX_CUSTOM_STRING_BYTES, MAX_ID_BYTES, MAX_LONG_FIELD_BYTES, MAX_PHONE_BYTES,
};
pub use response::{
    ActionRecord, InvalidTokenReason, RuleError, RuleId, State, TrackResponse,
    ValidateChallengeResponse,
};
pub use rules::{Mode, RuleInfo, RuleSet, RuleSetBuilder};
pub use server_settings::{LogFormat, ServerSettings};
#[cfg(feature = "watch")]
pub use watch::{RulesWatcher, WatchError};

/// The README's Rust examples, compiled as doctests so they cannot go stale.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
