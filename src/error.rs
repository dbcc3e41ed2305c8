//! Error types: what a caller did wrong ([`TrackError`]) and why a ruleset did not load ([`LoadError`]).

use std::fmt;

mod shorten;
pub(crate) use shorten::shorten;

use std::path::PathBuf;

/// Why a [`track`](crate::Engine::track), [`update_action`](crate::Engine::update_action) or request parse
/// was refused. A refused call changes nothing in the engine.
///
/// Rule failures are never a `TrackError`: they are reported inside the response (`errors`).
/// Each variant has a stable [`code`](TrackError::code), the same on the command line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TrackError {
    /// The input is not well-formed JSON (code `invalid_json`).
    #[error("invalid JSON: {0}")]
    InvalidJson(String),
    /// A field fails validation (code `invalid_request`).
    #[error("invalid `{field}`: {reason}")]
    InvalidRequest {
        /// The field, in its JSON wire name (`attributes.ipAddress`).
        field: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The idempotency key was already used for a request with different attributes
    /// (code `idempotency_conflict`).
    #[error(
        "idempotency key `{}` was already used for `{}` by user `{}` with different attributes",
        shorten(idempotency_key),
        shorten(action),
        shorten(user_id)
    )]
    IdempotencyConflict {
        /// The user of the earlier action.
        user_id: String,
        /// The action code.
        action: String,
        /// The reused key.
        idempotency_key: String,
    },
    /// No stored action has this identity (code `action_not_found`).
    #[error(
        "no action `{}` with idempotency key `{}` for user `{}`",
        shorten(action),
        shorten(idempotency_key),
        shorten(user_id)
    )]
    ActionNotFound {
        /// The user id asked for.
        user_id: String,
        /// The action code asked for.
        action: String,
        /// The idempotency key asked for.
        idempotency_key: String,
    },
    /// The requested state change is not allowed from the action's current state
    /// (code `invalid_transition`).
    #[error(
        "cannot move an action from `{from}` to `{to}`: {}",
        DisplayMoves(allowed)
    )]
    InvalidTransition {
        /// The action's current state.
        from: crate::State,
        /// The state asked for.
        to: crate::State,
        /// The states an action may move to from `from` ([`State::allowed_moves`](crate::State::allowed_moves));
        /// empty when it may not move at all.
        allowed: &'static [crate::State],
    },
    /// The operating system's random source failed while making a challenge token (code `random_source`).
    ///
    /// The rules decided `CHALLENGE_REQUIRED`, but a challenge without a token cannot be completed, so the call
    /// fails instead and the action is not stored: a retry decides again. (The attempt does count in velocity
    /// signals.) On a working system this does not happen; if it does, the host's entropy source is broken.
    #[error("cannot make a challenge token: the operating system's random source failed")]
    RandomSource,
    /// The remote state store (`[store] backend = "redis"`) failed: unreachable, timed out or refused (code
    /// `store_unavailable`). Returned only with `[store] on_store_error = "error"`; otherwise `track` answers
    /// the configured outcome with [`TrackResponse::store_error`](crate::TrackResponse::store_error) set.
    #[error("the state store failed: {0}")]
    Store(String),
}

struct DisplayMoves(&'static [crate::State]);

impl fmt::Display for DisplayMoves {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            return f.write_str("no moves are allowed from this state");
        }
        f.write_str("allowed: ")?;
        for (i, s) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            f.write_str(s.as_str())?;
        }
        Ok(())
    }
}

impl TrackError {
    /// The stable error code: `invalid_json`, `invalid_request`, `idempotency_conflict`, `action_not_found`,
    /// `invalid_transition`, `random_source` or `store_unavailable`.
    pub fn code(&self) -> &'static str {
        match self {
            TrackError::InvalidJson(_) => "invalid_json",
            TrackError::InvalidRequest { .. } => "invalid_request",
            TrackError::IdempotencyConflict { .. } => "idempotency_conflict",
            TrackError::ActionNotFound { .. } => "action_not_found",
            TrackError::InvalidTransition { .. } => "invalid_transition",
            TrackError::RandomSource => "random_source",
            TrackError::Store(_) => "store_unavailable",
        }
    }

    /// The HTTP status a web handler should answer with:
    ///
    /// | code | status |
    /// |---|---|
    /// | `invalid_json`, `invalid_request` | 400 Bad Request: the caller sent something wrong |
    /// | `idempotency_conflict` | 409 Conflict: the key is taken by a different request |
    /// | `action_not_found` | 404 Not Found |
    /// | `invalid_transition` | 409 Conflict: the request is well-formed, but the action's current state does not allow it (it may have been resolved by someone else) |
    /// | `random_source` | 503 Service Unavailable: the server cannot make tokens now; a retry may succeed |
    /// | `store_unavailable` | 503 Service Unavailable: the state store failed; a retry may succeed |
    ///
    /// ```
    /// let e = riskgate::TrackRequest::from_json("{").unwrap_err();
    /// assert_eq!((e.code(), e.http_status()), ("invalid_json", 400));
    /// ```
    pub fn http_status(&self) -> u16 {
        match self {
            TrackError::InvalidJson(_) | TrackError::InvalidRequest { .. } => 400,
            TrackError::IdempotencyConflict { .. } | TrackError::InvalidTransition { .. } => 409,
            TrackError::ActionNotFound { .. } => 404,
            TrackError::RandomSource | TrackError::Store(_) => 503,
        }
    }

    pub(crate) fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Self {
        TrackError::InvalidRequest {
            field: field.into(),
            reason: reason.into(),
        }
    }
}

/// How serious a [`Diagnostic`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Severity {
    /// The ruleset does not load.
    Error,
    /// The ruleset loads, but something in it is probably a mistake (`riskgate check --strict` fails on it).
    Warning,
}

impl Severity {
    /// `"error"` or `"warning"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Error => "error",
            Severity::Warning => "warning",
        }
    }
}

/// One problem found while loading a ruleset, with where it is.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Diagnostic {
    /// The file, as the rules folder path joined with the rule's path (`rules/withdraw/new-device.rhai`), or the
    /// rule id for rules given as sources.
    pub file: String,
    /// 1-based line; 0 when the problem is not tied to a line.
    pub line: usize,
    /// 1-based column; 0 when the problem is not tied to a column.
    pub column: usize,
    /// What is wrong.
    pub message: String,
    /// Whether the ruleset fails to load because of it.
    pub severity: Severity,
    /// A stable code for the kind of mistake (`unknown_method`, `literal_return`, …; `invalid` for the rest),
    /// for tools that group or filter diagnostics.
    pub code: &'static str,
    /// What to write instead, when there is one likely fix (`ends_with` for `ends_wiht`, `REVIEW` for
    /// `"REVIEW"`). The message says it too.
    pub suggestion: Option<String>,
}

impl Diagnostic {
    /// An error in `file` at `line` and `column` (1-based; 0 when not tied to one), with code `invalid` and no
    /// suggestion.
    ///
    /// ```
    /// let d = riskgate::Diagnostic::new("rules/a.rhai", 3, 14, "unknown variable `x`");
    /// assert_eq!(d.to_string(), "rules/a.rhai:3:14: unknown variable `x`");
    /// assert_eq!((d.severity, d.code), (riskgate::Severity::Error, "invalid"));
    /// ```
    pub fn new(
        file: impl Into<String>,
        line: usize,
        column: usize,
        message: impl Into<String>,
    ) -> Self {
        Diagnostic {
            file: file.into(),
            line,
            column,
            message: message.into(),
            severity: Severity::Error,
            code: "invalid",
            suggestion: None,
        }
    }

    /// The same diagnostic with code `code`.
    #[must_use]
    pub fn with_code(mut self, code: &'static str) -> Self {
        self.code = code;
        self
    }

    /// The same diagnostic with a suggested fix.
    #[must_use]
    pub fn with_suggestion(mut self, suggestion: impl Into<String>) -> Self {
        self.suggestion = Some(suggestion.into());
        self
    }

    /// The same diagnostic as a warning.
    #[must_use]
    pub fn warning(mut self) -> Self {
        self.severity = Severity::Warning;
        self
    }

    /// The diagnostic as one JSON object: `file`, `line`, `column`, `severity`, `code`, `message` and
    /// `suggestion` (`null` when there is none), as `riskgate check --format json` prints them.
    ///
    /// ```
    /// let d = riskgate::Diagnostic::new("a.rhai", 1, 4, "unknown variable `emial`: did you mean `email`?")
    ///     .with_code("unknown_variable")
    ///     .with_suggestion("email");
    /// assert_eq!(
    ///     d.to_json(),
    ///     r#"{"file":"a.rhai","line":1,"column":4,"severity":"error","code":"unknown_variable","message":"unknown variable `emial`: did you mean `email`?","suggestion":"email"}"#
    /// );
    /// ```
    pub fn to_json(&self) -> String {
        // Serialising strings and numbers cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }
}

impl serde::Serialize for Diagnostic {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let mut st = s.serialize_struct("Diagnostic", 7)?;
        st.serialize_field("file", &self.file)?;
        st.serialize_field("line", &self.line)?;
        st.serialize_field("column", &self.column)?;
        st.serialize_field("severity", self.severity.as_str())?;
        st.serialize_field("code", self.code)?;
        st.serialize_field("message", &self.message)?;
        st.serialize_field("suggestion", &self.suggestion)?;
        st.end()
    }
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.line, self.column) {
            (0, _) => write!(f, "{}: ", self.file)?,
            (l, 0) => write!(f, "{}:{}: ", self.file, l)?,
            (l, c) => write!(f, "{}:{}:{}: ", self.file, l, c)?,
        }
        if self.severity == Severity::Warning {
            f.write_str("warning: ")?;
        }
        f.write_str(&self.message)
    }
}

/// Why a ruleset could not be loaded, or an engine not built. The engine keeps its previous ruleset.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LoadError {
    /// One or more rules, lists or the config are invalid; every problem found is listed.
    #[error("{}", DisplayList(.0))]
    Invalid(Vec<Diagnostic>),
    /// A file or folder could not be read.
    #[error("cannot read `{}`: {source}", path.display())]
    Io {
        /// The path that failed.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// [`EngineBuilder::build`](crate::EngineBuilder::build) was called without a ruleset.
    #[error("no ruleset: call `rules_dir` or `ruleset` on the builder")]
    NoRuleset,
    /// [`Engine::reload_rules`](crate::Engine::reload_rules) was called on an engine that was not built from a
    /// rules folder.
    #[error("this engine was not built from a rules folder, so there is nothing to reload")]
    NoRulesDir,
    /// A setting given to [`EngineBuilder`](crate::EngineBuilder) or [`RuleSetBuilder`](crate::RuleSetBuilder)
    /// in code is out of range.
    #[error("invalid `{setting}`: {reason}")]
    InvalidSetting {
        /// The builder method (`sandbox_limits`, `idempotency_ttl`).
        setting: &'static str,
        /// What is wrong with the value.
        reason: String,
    },
    /// [`EngineBuilder::build`](crate::EngineBuilder::build) could not draw the engine's secret keys (for
    /// request fingerprints, history keys and hash-table buckets) from the operating system's random source.
    /// An engine never runs with fixed or guessable keys in their place.
    #[error("the operating system's random source failed: cannot draw the engine's secret keys")]
    RandomSource,
    /// The engine's state store (`[store]`) could not be set up: feature `redis` is not built, or the store
    /// could not be reached when the engine was built.
    #[error("the state store: {0}")]
    Store(String),
    /// The durable state at `[store] path` cannot be loaded: a file is damaged or truncated, was written in a
    /// format version this riskgate does not read, or cannot be read or written. Nothing was loaded or
    /// changed; with `[store] on_corrupt = "empty"` damaged files are set aside and the engine starts empty.
    #[error("the state file `{}`: {reason}", path.display())]
    StateFile {
        /// The file at fault.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
}

impl LoadError {
    /// The problems found, when the error is [`LoadError::Invalid`]; empty otherwise.
    pub fn diagnostics(&self) -> &[Diagnostic] {
        match self {
            LoadError::Invalid(d) => d,
            _ => &[],
        }
    }

    pub(crate) fn one(
        file: impl Into<String>,
        line: usize,
        column: usize,
        message: impl Into<String>,
    ) -> Self {
        LoadError::Invalid(vec![Diagnostic::new(file, line, column, message)])
    }
}

struct DisplayList<'a>(&'a [Diagnostic]);

impl fmt::Display for DisplayList<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, d) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{d}")?;
        }
        Ok(())
    }
}
