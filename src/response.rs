//! The response wire types: [`State`], [`TrackResponse`], [`ActionRecord`], [`ValidateChallengeResponse`].

use serde::{Deserialize, Serialize};
use std::fmt;
use std::sync::Arc;
use std::time::SystemTime;

/// The state of an action: one of the four decisions, or where the challenge or review went since.
///
/// Serialised in Authsignal's form (`"ALLOW"`, `"CHALLENGE_REQUIRED"`, …); `"REVIEW_REQUIRED"` is read as
/// [`State::Review`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum State {
    /// Let the action proceed.
    Allow,
    /// Ask the user to prove who they are; the response carries a `token`.
    ChallengeRequired,
    /// Hold the action for a person to review.
    #[serde(alias = "REVIEW_REQUIRED")]
    Review,
    /// Refuse the action.
    Block,
    /// The user passed the challenge.
    ChallengeSucceeded,
    /// The user failed the challenge.
    ChallengeFailed,
    /// A reviewer approved the action.
    ReviewSucceeded,
    /// A reviewer rejected the action.
    ReviewFailed,
}

impl State {
    /// Every state: the four decisions, then the four lifecycle states, in declaration order.
    ///
    /// ```
    /// assert_eq!(riskgate::State::ALL.iter().filter(|s| s.is_decision()).count(), 4);
    /// ```
    pub const ALL: [State; 8] = [
        State::Allow,
        State::ChallengeRequired,
        State::Review,
        State::Block,
        State::ChallengeSucceeded,
        State::ChallengeFailed,
        State::ReviewSucceeded,
        State::ReviewFailed,
    ];

    /// The wire name (`"CHALLENGE_REQUIRED"`).
    pub fn as_str(self) -> &'static str {
        match self {
            State::Allow => "ALLOW",
            State::ChallengeRequired => "CHALLENGE_REQUIRED",
            State::Review => "REVIEW",
            State::Block => "BLOCK",
            State::ChallengeSucceeded => "CHALLENGE_SUCCEEDED",
            State::ChallengeFailed => "CHALLENGE_FAILED",
            State::ReviewSucceeded => "REVIEW_SUCCEEDED",
            State::ReviewFailed => "REVIEW_FAILED",
        }
    }

    /// Parses a wire name; `REVIEW_REQUIRED` is read as `REVIEW`.
    pub fn from_wire(s: &str) -> Option<State> {
        Some(match s {
            "ALLOW" => State::Allow,
            "CHALLENGE_REQUIRED" => State::ChallengeRequired,
            "REVIEW" | "REVIEW_REQUIRED" => State::Review,
            "BLOCK" => State::Block,
            "CHALLENGE_SUCCEEDED" => State::ChallengeSucceeded,
            "CHALLENGE_FAILED" => State::ChallengeFailed,
            "REVIEW_SUCCEEDED" => State::ReviewSucceeded,
            "REVIEW_FAILED" => State::ReviewFailed,
            _ => return None,
        })
    }

    /// Whether this is one of the four decisions a rule can return (not a lifecycle state).
    pub const fn is_decision(self) -> bool {
        matches!(
            self,
            State::Allow | State::ChallengeRequired | State::Review | State::Block
        )
    }

    /// How severe a decision is, for breaking priority ties: `BLOCK` > `REVIEW` > `CHALLENGE_REQUIRED` >
    /// `ALLOW`.
    pub(crate) fn severity(self) -> u8 {
        match self {
            State::Block => 3,
            State::Review => 2,
            State::ChallengeRequired => 1,
            _ => 0,
        }
    }

    pub(crate) fn to_u8(self) -> u8 {
        self as u8
    }

    pub(crate) fn from_u8(v: u8) -> State {
        State::ALL
            .get(usize::from(v))
            .copied()
            .unwrap_or(State::Block)
    }
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for State {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        State::from_wire(s).ok_or_else(|| {
            format!(
                "unknown state `{}`: expected ALLOW, CHALLENGE_REQUIRED, REVIEW, BLOCK, CHALLENGE_SUCCEEDED, \
                 CHALLENGE_FAILED, REVIEW_SUCCEEDED or REVIEW_FAILED",
                crate::request::shorten(s)
            )
        })
    }
}

/// A rule's id: its path under the rules folder without the extension (`withdraw/new-device`).
///
/// Cheap to clone (shared); compares and serialises as a string.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RuleId(Arc<str>);

impl RuleId {
    pub(crate) fn new(s: &str) -> Self {
        RuleId(Arc::from(s))
    }
    /// The id as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::ops::Deref for RuleId {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}
impl fmt::Debug for RuleId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}
impl fmt::Display for RuleId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}
impl PartialEq<str> for RuleId {
    fn eq(&self, other: &str) -> bool {
        &*self.0 == other
    }
}
impl PartialEq<&str> for RuleId {
    fn eq(&self, other: &&str) -> bool {
        &*self.0 == *other
    }
}
impl Serialize for RuleId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}
impl<'de> Deserialize<'de> for RuleId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        Ok(RuleId::new(&s))
    }
}

/// A rule that failed while deciding, and why. The decision went on without it (see `on_rule_error`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RuleError {
    /// The failing rule.
    pub rule_id: RuleId,
    /// What went wrong, with the line and column in the rule where Rhai reports one.
    pub message: String,
}

/// What [`Engine::track`](crate::Engine::track) decided for an action.
///
/// A repeated call with the same identity returns the same action: the same `idempotency_key`, `token`,
/// `url`, rule ids and errors, and its current `state`.
///
/// The challenge `token` is a bearer secret: `Debug` prints `token` and `url` as `"<redacted>"`, so logging a
/// response with `{:?}` never leaks one. Serialising it (to hand it to the client) writes the real values.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TrackResponse {
    /// The action's current state (after any [`update_action`](crate::Engine::update_action)).
    pub state: State,
    /// The action's idempotency key: the caller's, or the one the engine generated.
    pub idempotency_key: String,
    /// For `CHALLENGE_REQUIRED`: the challenge token to hand to the client.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    /// For `CHALLENGE_REQUIRED` with `[challenge] url` configured: the challenge page, carrying the token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// Every matching enforce rule, strongest first.
    pub rule_ids: Vec<RuleId>,
    /// The rule that decided the state; absent when no rule matched and the default outcome applied.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority_rule_id: Option<RuleId>,
    /// Matching shadow rules: reported, never deciding.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub shadow_rule_ids: Vec<RuleId>,
    /// Rules that failed while deciding.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<RuleError>,
}

impl fmt::Debug for TrackResponse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const REDACTED: Option<&str> = Some("<redacted>");
        f.debug_struct("TrackResponse")
            .field("state", &self.state)
            .field("idempotency_key", &self.idempotency_key)
            .field("token", &self.token.as_ref().and(REDACTED))
            .field("url", &self.url.as_ref().and(REDACTED))
            .field("rule_ids", &self.rule_ids)
            .field("priority_rule_id", &self.priority_rule_id)
            .field("shadow_rule_ids", &self.shadow_rule_ids)
            .field("errors", &self.errors)
            .finish()
    }
}

/// A stored action, as [`Engine::get_action`](crate::Engine::get_action) and
/// [`Engine::update_action`](crate::Engine::update_action) return it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ActionRecord {
    /// The user.
    pub user_id: String,
    /// The action code.
    pub action: String,
    /// The idempotency key.
    pub idempotency_key: String,
    /// The current state.
    pub state: State,
    /// The first decision, which lifecycle updates do not change.
    pub outcome: State,
    /// Every matching enforce rule of the first decision, strongest first.
    pub rule_ids: Vec<RuleId>,
    /// The deciding rule of the first decision.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority_rule_id: Option<RuleId>,
    /// When the action was tracked.
    #[serde(with = "crate::clock::rfc3339")]
    pub created_at: SystemTime,
    /// When the state last changed (the creation time until an update).
    #[serde(with = "crate::clock::rfc3339")]
    pub state_updated_at: SystemTime,
}

/// What [`Engine::validate_challenge`](crate::Engine::validate_challenge) found for a token.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ValidateChallengeResponse {
    /// True only for an unexpired token whose action reached `CHALLENGE_SUCCEEDED`, the first time it is
    /// validated.
    pub is_valid: bool,
    /// The action's current state, when the token names a stored action.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<State>,
    /// The action's user.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_id: Option<String>,
    /// The action code.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub action: Option<String>,
    /// The action's idempotency key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<String>,
    /// Why the token is not valid; absent when it is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<InvalidTokenReason>,
}

/// Why [`Engine::validate_challenge`](crate::Engine::validate_challenge) found a token not valid. Serialised in
/// snake case (`"unknown_token"`).
///
/// ```
/// use riskgate::{Engine, InvalidTokenReason, RuleSet};
///
/// let engine = Engine::builder().ruleset(RuleSet::from_sources([("r", "CHALLENGE_REQUIRED")])?).build()?;
/// let check = engine.validate_challenge("not-a-token");
/// assert!(!check.is_valid);
/// assert_eq!(check.reason, Some(InvalidTokenReason::UnknownToken));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum InvalidTokenReason {
    /// No retained action has this token: forged, mistyped, or its action expired or was evicted.
    UnknownToken,
    /// The token is older than `[challenge] token_ttl`.
    Expired,
    /// The action has not reached `CHALLENGE_SUCCEEDED`: the challenge is pending or failed (see `state`).
    NotSucceeded,
    /// The token was validated before: a token is valid once.
    AlreadyUsed,
}

impl InvalidTokenReason {
    /// The wire name (`"unknown_token"`).
    pub fn as_str(self) -> &'static str {
        match self {
            InvalidTokenReason::UnknownToken => "unknown_token",
            InvalidTokenReason::Expired => "expired",
            InvalidTokenReason::NotSucceeded => "not_succeeded",
            InvalidTokenReason::AlreadyUsed => "already_used",
        }
    }
}

impl fmt::Display for InvalidTokenReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::State;

    #[test]
    fn the_stored_byte_round_trips_every_state() {
        for s in State::ALL {
            assert_eq!(State::from_u8(s.to_u8()), s);
            assert_eq!(State::from_wire(s.as_str()), Some(s));
        }
    }
}
