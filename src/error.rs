//! Error types: what a caller did wrong ([`TrackError`]) and why a ruleset did not load ([`LoadError`]).

use std::fmt;

use crate::request::shorten;
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
    #[error("cannot move an action from `{from}` to `{to}`: {allowed}")]
    InvalidTransition {
        /// The action's current state.
        from: crate::State,
        /// The state asked for.
        to: crate::State,
        /// The moves that are allowed from `from`.
        allowed: &'static str,
    },
}

impl TrackError {
    /// The stable error code: `invalid_json`, `invalid_request`, `idempotency_conflict`, `action_not_found` or
    /// `invalid_transition`.
    pub fn code(&self) -> &'static str {
        match self {
            TrackError::InvalidJson(_) => "invalid_json",
            TrackError::InvalidRequest { .. } => "invalid_request",
            TrackError::IdempotencyConflict { .. } => "idempotency_conflict",
            TrackError::ActionNotFound { .. } => "action_not_found",
            TrackError::InvalidTransition { .. } => "invalid_transition",
        }
    }

    pub(crate) fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Self {
        TrackError::InvalidRequest {
            field: field.into(),
            reason: reason.into(),
        }
    }
}

/// One problem found while loading a ruleset, with where it is.
#[derive(Debug, Clone, PartialEq, Eq)]
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
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.line, self.column) {
            (0, _) => write!(f, "{}: {}", self.file, self.message),
            (l, 0) => write!(f, "{}:{}: {}", self.file, l, self.message),
            (l, c) => write!(f, "{}:{}:{}: {}", self.file, l, c, self.message),
        }
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
        LoadError::Invalid(vec![Diagnostic {
            file: file.into(),
            line,
            column,
            message: message.into(),
        }])
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
