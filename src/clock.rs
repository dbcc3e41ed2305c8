//! Time, injected: every time-dependent behaviour (velocity windows, action retention, token expiry) reads the
//! engine's [`Clock`], never the system clock directly, so tests and replays are deterministic.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::error::TrackError;

/// A source of the current time for an [`Engine`](crate::Engine).
///
/// The engine asks its clock once per [`track`](crate::Engine::track) call (and once per lifecycle call);
/// [`track_at`](crate::Engine::track_at) bypasses it with an explicit time.
pub trait Clock: Send + Sync + 'static {
    /// The current time.
    fn now(&self) -> SystemTime;
}

/// The operating system's wall clock. This is the default.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> SystemTime {
        SystemTime::now()
    }
}

/// A clock that only moves when told to: for tests of rules, retention and expiry.
///
/// Clones share the same time, so a test can keep one handle and give another to the engine.
///
/// ```
/// use riskgate::{Clock, FakeClock};
/// use std::time::{Duration, UNIX_EPOCH};
///
/// let clock = FakeClock::at(UNIX_EPOCH + Duration::from_secs(1_700_000_000));
/// let handle = clock.clone();
/// handle.advance(Duration::from_secs(60));
/// assert_eq!(clock.now(), UNIX_EPOCH + Duration::from_secs(1_700_000_060));
/// ```
#[derive(Debug, Clone)]
pub struct FakeClock {
    millis: Arc<AtomicI64>,
}

impl FakeClock {
    /// A fake clock showing `at` (kept to millisecond precision).
    pub fn at(at: SystemTime) -> Self {
        FakeClock {
            millis: Arc::new(AtomicI64::new(to_millis(at))),
        }
    }

    /// Moves the clock forward by `by`. It saturates at the latest time it can show (`i64::MAX` milliseconds
    /// after the epoch, far past the [range of event times](crate::Engine::track_at)), never wrapping around to
    /// the past.
    pub fn advance(&self, by: Duration) {
        let ms = i64::try_from(by.as_millis()).unwrap_or(i64::MAX);
        // The closure always returns `Some`, so this cannot fail.
        let _ = self
            .millis
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |now| {
                Some(now.saturating_add(ms))
            });
    }

    /// Sets the clock to `at`.
    pub fn set(&self, at: SystemTime) {
        self.millis.store(to_millis(at), Ordering::SeqCst);
    }
}

impl Default for FakeClock {
    /// A fake clock at 2024-01-01T00:00:00Z.
    fn default() -> Self {
        FakeClock::at(UNIX_EPOCH + Duration::from_secs(1_704_067_200))
    }
}

impl Clock for FakeClock {
    fn now(&self) -> SystemTime {
        from_millis(self.millis.load(Ordering::SeqCst))
    }
}

/// The earliest event time accepted (1970-01-01T00:00:00Z), in milliseconds since the Unix epoch.
pub(crate) const MIN_EVENT_MS: i64 = 0;
/// The latest event time accepted (9999-12-31T23:59:59.999Z), in milliseconds since the Unix epoch.
pub(crate) const MAX_EVENT_MS: i64 = 253_402_300_799_999;

/// Checks that an event time, `ms` milliseconds after the epoch, is in the range riskgate accepts, the same for
/// every source (`track_at`, RFC 3339 and epoch-millisecond replay timestamps); `shown` tells how the caller
/// gave it, for the error.
pub(crate) fn check_event_ms(ms: i128, shown: impl FnOnce() -> String) -> Result<i64, TrackError> {
    match i64::try_from(ms) {
        Ok(ms) if (MIN_EVENT_MS..=MAX_EVENT_MS).contains(&ms) => Ok(ms),
        _ => Err(TrackError::invalid(
            "timestamp",
            format!(
                "`{}` is outside the range of event times, 1970-01-01T00:00:00Z to 9999-12-31T23:59:59.999Z",
                crate::error::shorten(&shown())
            ),
        )),
    }
}

/// Milliseconds since the Unix epoch (negative before it), saturating.
pub(crate) fn to_millis(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_millis()).unwrap_or(i64::MAX),
        Err(e) => i64::try_from(e.duration().as_millis()).map_or(i64::MIN, |v| -v),
    }
}

/// The inverse of [`to_millis`].
pub(crate) fn from_millis(ms: i64) -> SystemTime {
    if ms >= 0 {
        UNIX_EPOCH + Duration::from_millis(ms.unsigned_abs())
    } else {
        UNIX_EPOCH - Duration::from_millis(ms.unsigned_abs())
    }
}

/// Formats epoch milliseconds as RFC 3339 UTC with millisecond precision (`2024-01-01T00:00:00.000Z`).
pub(crate) fn format_rfc3339(ms: i64) -> String {
    let nanos = i128::from(ms) * 1_000_000;
    let format = time::macros::format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
    );
    time::OffsetDateTime::from_unix_timestamp_nanos(nanos)
        .ok()
        .and_then(|t| t.format(&format).ok())
        .unwrap_or_else(|| ms.to_string())
}

/// Parses an RFC 3339 timestamp (any offset) into epoch milliseconds.
pub(crate) fn parse_rfc3339(s: &str) -> Option<i64> {
    let t = time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).ok()?;
    i64::try_from(t.unix_timestamp_nanos() / 1_000_000).ok()
}

/// Serde support for `SystemTime` as an RFC 3339 string.
pub(crate) mod rfc3339 {
    use serde::{de, Deserialize, Deserializer, Serializer};
    use std::time::SystemTime;

    pub(crate) fn serialize<S: Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&super::format_rfc3339(super::to_millis(*t)))
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<SystemTime, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        super::parse_rfc3339(&s)
            .map(super::from_millis)
            .ok_or_else(|| de::Error::custom(format!("invalid RFC 3339 timestamp `{s}`")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fake_clock_saturates_instead_of_wrapping() {
        let clock = FakeClock::at(UNIX_EPOCH + Duration::from_millis(1_000));
        clock.advance(Duration::from_millis(u64::MAX));
        assert_eq!(to_millis(clock.now()), i64::MAX);
        clock.advance(Duration::MAX);
        assert_eq!(to_millis(clock.now()), i64::MAX);
        let clock = FakeClock::at(UNIX_EPOCH);
        clock.advance(Duration::from_millis(i64::MAX as u64 - 1));
        clock.advance(Duration::from_millis(5));
        assert_eq!(to_millis(clock.now()), i64::MAX);
    }

    #[test]
    fn the_range_of_event_times_is_1970_to_9999() {
        assert_eq!(check_event_ms(0, || "0".into()), Ok(0));
        assert_eq!(
            check_event_ms(i128::from(MAX_EVENT_MS), || "m".into()),
            Ok(MAX_EVENT_MS)
        );
        assert_eq!(
            parse_rfc3339("9999-12-31T23:59:59.999Z"),
            Some(MAX_EVENT_MS)
        );
        assert_eq!(format_rfc3339(MAX_EVENT_MS), "9999-12-31T23:59:59.999Z");
        for bad in [
            -1,
            i128::from(MAX_EVENT_MS) + 1,
            i128::from(u64::MAX),
            i128::MIN,
        ] {
            let e = check_event_ms(bad, || "x".into()).unwrap_err();
            assert_eq!(
                e.to_string(),
                "invalid `timestamp`: `x` is outside the range of event times, \
                 1970-01-01T00:00:00Z to 9999-12-31T23:59:59.999Z"
            );
        }
    }

    #[test]
    fn millis_round_trip_and_format() {
        let t = UNIX_EPOCH + Duration::from_millis(1_704_067_200_123);
        assert_eq!(from_millis(to_millis(t)), t);
        assert_eq!(format_rfc3339(to_millis(t)), "2024-01-01T00:00:00.123Z");
        assert_eq!(
            parse_rfc3339("2024-01-01T02:00:00.123+02:00"),
            Some(1_704_067_200_123)
        );
        assert_eq!(parse_rfc3339("yesterday"), None);
        assert_eq!(to_millis(UNIX_EPOCH - Duration::from_secs(1)), -1000);
        assert_eq!(from_millis(-1000), UNIX_EPOCH - Duration::from_secs(1));
    }
}
