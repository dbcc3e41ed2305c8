//! Time inside the engine, as types: an instant ([`EpochMs`], milliseconds since the Unix epoch) and a span
//! ([`DurationMs`], milliseconds), so that a `now` and a `ttl` can never be passed in each other's place.
//!
//! Arithmetic saturates: event times are bounded (see `clock::check_event_ms`) and spans come from validated
//! settings, so saturation is never reached in practice, and it can never wrap.
//!
//! This module imports nothing from the rest of the crate.

/// An instant: milliseconds since the Unix epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub(crate) struct EpochMs(i64);

/// A span of time in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub(crate) struct DurationMs(i64);

impl EpochMs {
    /// The earliest instant: before every event, so "expires at `MIN`" means already expired.
    pub const MIN: EpochMs = EpochMs(i64::MIN);
    /// The latest instant.
    #[cfg(test)]
    pub const MAX: EpochMs = EpochMs(i64::MAX);

    pub const fn from_ms(ms: i64) -> Self {
        EpochMs(ms)
    }
    pub const fn ms(self) -> i64 {
        self.0
    }
    /// The instant `d` after this one.
    pub const fn plus(self, d: DurationMs) -> EpochMs {
        EpochMs(self.0.saturating_add(d.0))
    }
    /// Whether something that started at this instant and lives `ttl` is over at `now`.
    pub fn expired(self, ttl: DurationMs, now: EpochMs) -> bool {
        self.plus(ttl) <= now
    }
}

impl DurationMs {
    pub const fn from_ms(ms: i64) -> Self {
        DurationMs(ms)
    }
    pub const fn ms(self) -> i64 {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instants_and_spans_add_up_and_saturate() {
        let t = EpochMs::from_ms(1_000);
        let d = DurationMs::from_ms(500);
        assert_eq!(t.plus(d), EpochMs::from_ms(1_500));
        assert_eq!(EpochMs::MAX.plus(d), EpochMs::MAX);
        assert_eq!(EpochMs::MIN.plus(DurationMs::from_ms(-1)), EpochMs::MIN);
        assert!(!t.expired(d, EpochMs::from_ms(1_499)));
        assert!(t.expired(d, EpochMs::from_ms(1_500)));
    }
}
