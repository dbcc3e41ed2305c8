//! Settings given in code: the typed [`SandboxLimits`], and what [`EngineBuilder`](crate::EngineBuilder)'s
//! setters override in a ruleset's `riskgate.toml`.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::config::{Config, Limits, OnConflict, OnRuleError};
use crate::error::LoadError;
use crate::time::DurationMs;
use crate::State;

/// The longest a TTL set in code may be, as in `riskgate.toml`: 10 years.
const MAX_TTL: Duration = Duration::from_secs(10 * 365 * 86_400);
/// The longest rule time limit, as in `riskgate.toml`.
const MAX_TIME_LIMIT: Duration = Duration::from_secs(60);

/// The sandbox every rule runs in: the `[limits]` table of `riskgate.toml`, typed.
///
/// Start from [`SandboxLimits::default`] (the documented defaults) and change what you need. Every count must be
/// at least 1 and `time_limit` between 1ms and 60s: the sandbox cannot be turned off.
///
/// ```
/// use std::time::Duration;
///
/// let mut limits = riskgate::SandboxLimits::default();
/// limits.max_operations = 100_000;
/// limits.time_limit = Duration::from_millis(25);
/// let rules = riskgate::RuleSet::builder().rule("r", "ALLOW").sandbox_limits(limits).build()?;
/// assert_eq!(rules.len(), 1);
/// # Ok::<(), riskgate::LoadError>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct SandboxLimits {
    /// Rhai operations one rule may run (`max_operations`, default 50 000).
    pub max_operations: u64,
    /// Function call depth (`max_call_depth`, default 16, at most 32).
    pub max_call_depth: usize,
    /// Expression nesting at the top level (`max_expr_depth`, default 64, at most 128).
    pub max_expr_depth: usize,
    /// Expression nesting inside functions (`max_function_expr_depth`, default 32, at most 64).
    pub max_function_expr_depth: usize,
    /// The longest string a rule may build, in bytes (`max_string_size`, default 16 KiB).
    pub max_string_size: usize,
    /// The longest array a rule may build (`max_array_size`, default 1024, at most 8192), nested items counted.
    pub max_array_size: usize,
    /// The largest map a rule may build (`max_map_size`, default 1024, at most 8192), nested entries counted.
    pub max_map_size: usize,
    /// Wall-clock time one rule may run (`time_limit`, default 10ms), in whole milliseconds.
    pub time_limit: Duration,
}

impl Default for SandboxLimits {
    fn default() -> Self {
        SandboxLimits::from_limits(&Limits::default())
    }
}

impl SandboxLimits {
    pub(crate) fn from_limits(l: &Limits) -> Self {
        SandboxLimits {
            max_operations: l.max_operations,
            max_call_depth: l.max_call_depth,
            max_expr_depth: l.max_expr_depth,
            max_function_expr_depth: l.max_function_expr_depth,
            max_string_size: l.max_string_size,
            max_array_size: l.max_array_size,
            max_map_size: l.max_map_size,
            time_limit: Duration::from_millis(l.time_limit_ms.unsigned_abs()),
        }
    }

    /// The limits in the form the sandbox uses, or why they are out of range.
    pub(crate) fn to_limits(self) -> Result<Limits, LoadError> {
        let bad = |reason: String| LoadError::InvalidSetting {
            setting: "sandbox_limits",
            reason,
        };
        for (name, v) in [
            ("max_operations", usize::from(self.max_operations != 0)),
            ("max_call_depth", self.max_call_depth),
            ("max_expr_depth", self.max_expr_depth),
            ("max_function_expr_depth", self.max_function_expr_depth),
            ("max_string_size", self.max_string_size),
            ("max_array_size", self.max_array_size),
            ("max_map_size", self.max_map_size),
        ] {
            if v == 0 {
                return Err(bad(format!(
                    "`{name}` must be at least 1: the sandbox cannot be turned off"
                )));
            }
        }
        for (name, v, cap) in [
            (
                "max_call_depth",
                self.max_call_depth,
                crate::config::MAX_CALL_DEPTH,
            ),
            (
                "max_expr_depth",
                self.max_expr_depth,
                crate::config::MAX_EXPR_DEPTH,
            ),
            (
                "max_function_expr_depth",
                self.max_function_expr_depth,
                crate::config::MAX_FUNCTION_EXPR_DEPTH,
            ),
            (
                "max_array_size",
                self.max_array_size,
                crate::config::MAX_ARRAY_SIZE,
            ),
            (
                "max_map_size",
                self.max_map_size,
                crate::config::MAX_MAP_SIZE,
            ),
        ] {
            if v > cap {
                return Err(bad(format!("`{name}` must be at most {cap}")));
            }
        }
        let ms = self.time_limit.as_millis();
        if ms == 0 || self.time_limit > MAX_TIME_LIMIT {
            return Err(bad(format!(
                "`time_limit` must be between 1ms and 60s, not {:?}",
                self.time_limit
            )));
        }
        Ok(Limits {
            max_operations: self.max_operations,
            max_call_depth: self.max_call_depth,
            max_expr_depth: self.max_expr_depth,
            max_function_expr_depth: self.max_function_expr_depth,
            max_string_size: self.max_string_size,
            max_array_size: self.max_array_size,
            max_map_size: self.max_map_size,
            time_limit_ms: i64::try_from(ms).unwrap_or(i64::MAX),
        })
    }
}

/// What the engine builder's setters override in every ruleset the engine uses. `None` keeps the file's value.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Overrides {
    pub capacity: Option<usize>,
    pub idempotency_ttl: Option<Duration>,
    pub token_ttl: Option<Duration>,
    pub on_conflict: Option<OnConflict>,
    pub on_rule_error: Option<OnRuleError>,
    pub default_outcome: Option<State>,
    pub action_defaults: BTreeMap<String, State>,
}

impl Overrides {
    /// Checks every value set, so that a bad one fails `build` instead of a decision.
    pub fn check(&self) -> Result<(), LoadError> {
        let bad = |setting, reason: String| Err(LoadError::InvalidSetting { setting, reason });
        if self.capacity == Some(0) {
            return bad("idempotency_capacity", "must be at least 1".to_owned());
        }
        for (setting, ttl) in [
            ("idempotency_ttl", self.idempotency_ttl),
            ("token_ttl", self.token_ttl),
        ] {
            if let Some(d) = ttl {
                if d.as_millis() == 0 || d > MAX_TTL {
                    return bad(
                        setting,
                        format!("must be between 1ms and 10 years, not {d:?}"),
                    );
                }
            }
        }
        let not_decision = |s: State| {
            format!("`{s}` is not a decision: expected ALLOW, CHALLENGE_REQUIRED, REVIEW or BLOCK")
        };
        if let Some(OnRuleError::Outcome(s)) = self.on_rule_error {
            if !s.is_decision() {
                return bad("on_rule_error", not_decision(s));
            }
        }
        if let Some(s) = self.default_outcome {
            if !s.is_decision() {
                return bad("default_outcome", not_decision(s));
            }
        }
        for (code, &s) in &self.action_defaults {
            if !crate::request::is_action_code(code) {
                return bad(
                    "action_default_outcome",
                    format!(
                        "`{}` is not an action code: expected 1-64 of [a-zA-Z0-9_-]",
                        crate::error::shorten(code)
                    ),
                );
            }
            if !s.is_decision() {
                return bad("action_default_outcome", not_decision(s));
            }
        }
        Ok(())
    }

    /// `file` (a ruleset's configuration) with these settings applied over it.
    pub fn apply(&self, file: &Config) -> Config {
        let mut c = file.clone();
        if let Some(v) = self.capacity {
            c.capacity = v;
        }
        if let Some(d) = self.idempotency_ttl {
            c.idempotency_ttl = DurationMs::from_ms(millis(d));
        }
        if let Some(d) = self.token_ttl {
            c.token_ttl = DurationMs::from_ms(millis(d));
        }
        if let Some(v) = self.on_conflict {
            c.on_conflict = v;
        }
        if let Some(v) = self.on_rule_error {
            c.on_rule_error = v;
        }
        if let Some(v) = self.default_outcome {
            c.default_outcome = v;
        }
        for (code, &s) in &self.action_defaults {
            c.action_defaults.insert(code.clone(), s);
        }
        c
    }
}

/// Whole milliseconds of `d`, saturating (checked durations are at most 10 years).
fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_limits_are_the_files_defaults() {
        assert_eq!(
            SandboxLimits::default().to_limits().unwrap(),
            Limits::default()
        );
    }

    #[test]
    fn out_of_range_limits_are_refused_by_name() {
        let l = SandboxLimits {
            max_map_size: 0,
            ..SandboxLimits::default()
        };
        assert_eq!(
            l.to_limits().unwrap_err().to_string(),
            "invalid `sandbox_limits`: `max_map_size` must be at least 1: the sandbox cannot be turned off"
        );
        let l = SandboxLimits {
            max_operations: 0,
            ..SandboxLimits::default()
        };
        assert!(l
            .to_limits()
            .unwrap_err()
            .to_string()
            .contains("`max_operations`"));
        for t in [
            Duration::ZERO,
            Duration::from_micros(999),
            Duration::from_secs(61),
        ] {
            let l = SandboxLimits {
                time_limit: t,
                ..SandboxLimits::default()
            };
            assert!(
                l.to_limits()
                    .unwrap_err()
                    .to_string()
                    .contains("`time_limit` must be between"),
                "{t:?}"
            );
        }
    }

    #[test]
    fn overrides_replace_only_what_they_set() {
        let file = Config::parse(
            "default_outcome = \"REVIEW\"\n[actions.pay]\ndefault_outcome = \"BLOCK\"\n[idempotency]\nttl = \"1h\"\n",
            "riskgate.toml",
        )
        .unwrap();
        let o = Overrides {
            token_ttl: Some(Duration::from_secs(30)),
            action_defaults: BTreeMap::from([("signIn".to_owned(), State::ChallengeRequired)]),
            ..Overrides::default()
        };
        let c = o.apply(&file);
        assert_eq!(c.token_ttl.ms(), 30_000);
        assert_eq!(c.idempotency_ttl.ms(), 3_600_000, "the file's value stays");
        assert_eq!(c.default_for("pay"), State::Block);
        assert_eq!(c.default_for("signIn"), State::ChallengeRequired);
        assert_eq!(c.default_for("other"), State::Review);
        assert_eq!(Overrides::default().apply(&file), file);
    }
}
