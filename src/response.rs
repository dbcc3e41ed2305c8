//! The response wire types: [`State`], [`TrackResponse`] (and its borrowed [`TrackView`]), [`ActionRecord`],
//! [`ValidateChallengeResponse`].

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
    type Err = ParseStateError;
    /// Parses a wire name in any letter case (`"challenge_required"`, `"Review"`); `REVIEW_REQUIRED` is read as
    /// `REVIEW`.
    ///
    /// ```
    /// use riskgate::State;
    ///
    /// assert_eq!("challenge_required".parse::<State>()?, State::ChallengeRequired);
    /// assert_eq!("REVIEW_REQUIRED".parse::<State>()?, State::Review);
    /// let e = "maybe".parse::<State>().unwrap_err();
    /// assert_eq!(e.input(), "maybe");
    /// assert!(e.to_string().starts_with("unknown state `maybe`: expected ALLOW, "));
    /// # Ok::<(), riskgate::ParseStateError>(())
    /// ```
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        // The longest wire name is 19 bytes: anything longer is unknown without upper-casing it.
        let known = (s.len() <= 19)
            .then(|| State::from_wire(&s.to_ascii_uppercase()))
            .flatten();
        known.ok_or_else(|| ParseStateError {
            input: s.chars().take(256).collect(),
        })
    }
}

/// Why a string is not a [`State`] (see [`State`]'s `FromStr`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "unknown state `{}`: expected ALLOW, CHALLENGE_REQUIRED, REVIEW, BLOCK, CHALLENGE_SUCCEEDED, \
     CHALLENGE_FAILED, REVIEW_SUCCEEDED or REVIEW_FAILED",
    crate::error::shorten(input)
)]
pub struct ParseStateError {
    input: String,
}

impl ParseStateError {
    /// The string that did not parse (its first 256 characters).
    pub fn input(&self) -> &str {
        &self.input
    }
}

impl State {
    /// The states [`Engine::update_action`](crate::Engine::update_action) may move an action in this state to:
    /// a challenge resolves once, a review resolves once, nothing else moves.
    ///
    /// ```
    /// use riskgate::State;
    ///
    /// assert_eq!(State::Review.allowed_moves(), [State::ReviewSucceeded, State::ReviewFailed]);
    /// assert!(State::Allow.allowed_moves().is_empty());
    /// ```
    pub fn allowed_moves(self) -> &'static [State] {
        match self {
            State::ChallengeRequired => &[State::ChallengeSucceeded, State::ChallengeFailed],
            State::Review => &[State::ReviewSucceeded, State::ReviewFailed],
            _ => &[],
        }
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
impl PartialEq<String> for RuleId {
    fn eq(&self, other: &String) -> bool {
        *self.0 == **other
    }
}
impl PartialEq<RuleId> for str {
    fn eq(&self, other: &RuleId) -> bool {
        self == &*other.0
    }
}
impl PartialEq<RuleId> for &str {
    fn eq(&self, other: &RuleId) -> bool {
        *self == &*other.0
    }
}
/// For building expected responses in tests; the engine names rules by their path.
impl From<&str> for RuleId {
    fn from(s: &str) -> Self {
        RuleId::new(s)
    }
}
impl From<String> for RuleId {
    fn from(s: String) -> Self {
        RuleId(Arc::from(s))
    }
}
impl AsRef<str> for RuleId {
    fn as_ref(&self) -> &str {
        &self.0
    }
}
/// Lets a set or map of rule ids be searched with a `&str`.
impl std::borrow::Borrow<str> for RuleId {
    fn borrow(&self) -> &str {
        &self.0
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
    /// What kind of failure it was, for code that acts on it (serialised as `"kind"`, in snake case).
    #[serde(default)]
    pub kind: RuleErrorKind,
    /// What went wrong, with the line and column in the rule where Rhai reports one.
    pub message: String,
}

/// What kind of failure a [`RuleError`] is. Its message says the details; the kind is for code that counts,
/// alerts or retries by kind. Serialised in snake case (`"time_limit"`, `"wrong_return_type"`, …).
///
/// New kinds may be added: match with a `_` arm.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum RuleErrorKind {
    /// The rule ran longer than `[limits] time_limit_ms`.
    TimeLimit,
    /// The rule ran more than `[limits] max_operations` operations.
    OperationLimit,
    /// A string, array or map (or a thrown value) grew past its size limit.
    SizeLimit,
    /// Function calls nested deeper than `[limits] max_call_depth`, or arrays and maps nested deeper than the
    /// sandbox compares, prints or serialises (64 levels).
    DepthLimit,
    /// The rule returned a value that is neither an outcome nor `()`.
    WrongReturnType,
    /// Any other error the rule raised while running: a `throw`, a function called on the wrong type, a
    /// signal it cannot use. Also what an error entry without a `kind` (written before kinds existed) reads as.
    #[default]
    Runtime,
    /// The rule's evaluation panicked (a fault in riskgate or Rhai, caught and reported).
    Panic,
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
#[non_exhaustive]
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
    /// Set when the remote state store failed and `state` is `[store] on_store_error`'s outcome, not a
    /// decision: the action was not stored (a retry decides again) and no rule ran.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub store_error: Option<String>,
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
            .field("store_error", &self.store_error)
            .finish()
    }
}

/// A borrowed look at what [`Engine::track_with`](crate::Engine::track_with) decided: the same fields as
/// [`TrackResponse`], read in place from the stored action. Building it copies nothing, allocates nothing and
/// bumps no reference count, so a repeat answered through it writes no memory another thread reads.
///
/// It lives only inside the closure given to `track_with`; [`TrackView::to_response`] makes an owned
/// [`TrackResponse`] from it (what [`Engine::track`](crate::Engine::track) returns).
pub struct TrackView<'a>(View<'a>);

enum View<'a> {
    /// An action of the in-memory store and its first decision.
    Stored {
        slot: &'a crate::store::Slot,
        decided: &'a crate::store::Decided,
        /// The idempotency key (the store keeps only its hash).
        key: &'a str,
    },
    /// A response built already (a remote store's).
    #[cfg(feature = "redis")]
    Owned(&'a TrackResponse),
}

impl<'a> TrackView<'a> {
    pub(crate) fn stored(
        slot: &'a crate::store::Slot,
        decided: &'a crate::store::Decided,
        key: &'a str,
    ) -> Self {
        TrackView(View::Stored { slot, decided, key })
    }
    #[cfg(feature = "redis")]
    pub(crate) fn owned(response: &'a TrackResponse) -> Self {
        TrackView(View::Owned(response))
    }

    /// The action's current state (after any [`update_action`](crate::Engine::update_action)).
    pub fn state(&self) -> State {
        match &self.0 {
            View::Stored { slot, .. } => slot.state(),
            #[cfg(feature = "redis")]
            View::Owned(r) => r.state,
        }
    }
    /// The action's idempotency key: the caller's, or the one the engine generated.
    pub fn idempotency_key(&self) -> &'a str {
        match &self.0 {
            View::Stored { key, .. } => key,
            #[cfg(feature = "redis")]
            View::Owned(r) => &r.idempotency_key,
        }
    }
    /// For `CHALLENGE_REQUIRED`: the challenge token to hand to the client.
    pub fn token(&self) -> Option<&'a str> {
        match &self.0 {
            View::Stored { decided, .. } => decided.token(),
            #[cfg(feature = "redis")]
            View::Owned(r) => r.token.as_deref(),
        }
    }
    /// For `CHALLENGE_REQUIRED` with `[challenge] url` configured: the challenge page, carrying the token.
    pub fn url(&self) -> Option<&'a str> {
        match &self.0 {
            View::Stored { decided, .. } => decided.url(),
            #[cfg(feature = "redis")]
            View::Owned(r) => r.url.as_deref(),
        }
    }
    /// Every matching enforce rule, strongest first.
    pub fn rule_ids(&self) -> &'a [RuleId] {
        match &self.0 {
            View::Stored { decided, .. } => decided.rule_ids(),
            #[cfg(feature = "redis")]
            View::Owned(r) => &r.rule_ids,
        }
    }
    /// The rule that decided the state; `None` when no rule matched and the default outcome applied.
    pub fn priority_rule_id(&self) -> Option<&'a RuleId> {
        match &self.0 {
            View::Stored { decided, .. } => decided.priority_rule_id(),
            #[cfg(feature = "redis")]
            View::Owned(r) => r.priority_rule_id.as_ref(),
        }
    }
    /// Matching shadow rules: reported, never deciding.
    pub fn shadow_rule_ids(&self) -> &'a [RuleId] {
        match &self.0 {
            View::Stored { decided, .. } => decided.shadow_rule_ids(),
            #[cfg(feature = "redis")]
            View::Owned(r) => &r.shadow_rule_ids,
        }
    }
    /// Rules that failed while deciding.
    pub fn errors(&self) -> &'a [RuleError] {
        match &self.0 {
            View::Stored { decided, .. } => decided.errors(),
            #[cfg(feature = "redis")]
            View::Owned(r) => &r.errors,
        }
    }
    /// Set when the remote state store failed (see [`TrackResponse::store_error`]).
    pub fn store_error(&self) -> Option<&'a str> {
        match &self.0 {
            View::Stored { .. } => None,
            #[cfg(feature = "redis")]
            View::Owned(r) => r.store_error.as_deref(),
        }
    }

    /// The owned response: what [`Engine::track`](crate::Engine::track) returns.
    pub fn to_response(&self) -> TrackResponse {
        match &self.0 {
            #[cfg(feature = "redis")]
            View::Owned(r) => (*r).clone(),
            View::Stored { .. } => TrackResponse {
                state: self.state(),
                idempotency_key: self.idempotency_key().to_owned(),
                token: self.token().map(str::to_owned),
                url: self.url().map(str::to_owned),
                rule_ids: self.rule_ids().to_vec(),
                priority_rule_id: self.priority_rule_id().cloned(),
                shadow_rule_ids: self.shadow_rule_ids().to_vec(),
                errors: self.errors().to_vec(),
                store_error: None,
            },
        }
    }
}

/// Like [`TrackResponse`]'s, `Debug` redacts the token and url.
impl fmt::Debug for TrackView<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const REDACTED: Option<&str> = Some("<redacted>");
        f.debug_struct("TrackView")
            .field("state", &self.state())
            .field("idempotency_key", &self.idempotency_key())
            .field("token", &self.token().and(REDACTED))
            .field("url", &self.url().and(REDACTED))
            .field("rule_ids", &self.rule_ids())
            .field("priority_rule_id", &self.priority_rule_id())
            .field("shadow_rule_ids", &self.shadow_rule_ids())
            .field("errors", &self.errors())
            .field("store_error", &self.store_error())
            .finish()
    }
}

/// A stored action, as [`Engine::get_action`](crate::Engine::get_action) and
/// [`Engine::update_action`](crate::Engine::update_action) return it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
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
#[non_exhaustive]
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

impl TrackResponse {
    /// A response in `state` for the action with `idempotency_key`, with no token, url, rules or errors: for
    /// tests and stand-ins of an engine (the struct is `#[non_exhaustive]`, so set the other fields on the
    /// value this returns).
    ///
    /// ```
    /// use riskgate::{State, TrackResponse};
    ///
    /// let mut resp = TrackResponse::new(State::ChallengeRequired, "k1");
    /// resp.token = Some("t".into());
    /// assert_eq!(resp.priority_rule(), None);
    /// ```
    pub fn new(state: State, idempotency_key: impl Into<String>) -> Self {
        TrackResponse {
            state,
            idempotency_key: idempotency_key.into(),
            token: None,
            url: None,
            rule_ids: Vec::new(),
            priority_rule_id: None,
            shadow_rule_ids: Vec::new(),
            errors: Vec::new(),
            store_error: None,
        }
    }

    /// The id of the rule that decided the state, as a string; `None` when the default outcome applied.
    ///
    /// ```
    /// use riskgate::{Engine, RuleSet, State, TrackRequest};
    ///
    /// let engine = Engine::builder().ruleset(RuleSet::from_sources([("withdraw/big", "REVIEW")])?).build()?;
    /// let resp = engine.track(&TrackRequest::new("u1", "withdraw-funds"))?;
    /// assert_eq!(resp.priority_rule(), Some("withdraw/big"));
    /// assert!(resp.rule_ids.iter().any(|id| id == "withdraw/big"));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn priority_rule(&self) -> Option<&str> {
        self.priority_rule_id.as_deref()
    }
}

impl ActionRecord {
    /// A record of an action first decided as `state` at `at` and not moved since: for tests and stand-ins of
    /// an engine (the struct is `#[non_exhaustive]`, so set the other fields on the value this returns).
    ///
    /// ```
    /// use riskgate::{ActionRecord, State};
    ///
    /// let rec = ActionRecord::new("u1", "signIn", "k1", State::Review, std::time::SystemTime::UNIX_EPOCH);
    /// assert_eq!((rec.state, rec.outcome), (State::Review, State::Review));
    /// ```
    pub fn new(
        user_id: impl Into<String>,
        action: impl Into<String>,
        idempotency_key: impl Into<String>,
        state: State,
        at: SystemTime,
    ) -> Self {
        ActionRecord {
            user_id: user_id.into(),
            action: action.into(),
            idempotency_key: idempotency_key.into(),
            state,
            outcome: state,
            rule_ids: Vec::new(),
            priority_rule_id: None,
            created_at: at,
            state_updated_at: at,
        }
    }

    /// The id of the rule that decided the first decision, as a string; `None` when the default outcome
    /// applied.
    pub fn priority_rule(&self) -> Option<&str> {
        self.priority_rule_id.as_deref()
    }
}

impl ValidateChallengeResponse {
    /// The answer for a token that names no retained action, or is otherwise not valid for `reason` without an
    /// action to report: `is_valid` false and no identity.
    ///
    /// ```
    /// use riskgate::{InvalidTokenReason, ValidateChallengeResponse};
    ///
    /// let r = ValidateChallengeResponse::invalid(InvalidTokenReason::UnknownToken);
    /// assert!(!r.is_valid && r.state.is_none());
    /// ```
    pub fn invalid(reason: InvalidTokenReason) -> Self {
        ValidateChallengeResponse {
            is_valid: false,
            state: None,
            user_id: None,
            action: None,
            idempotency_key: None,
            reason: Some(reason),
        }
    }

    /// The answer for a token of the stored action (`user_id`, `action`, `idempotency_key`) in `state`: valid
    /// when `reason` is `None`.
    pub fn about(
        user_id: impl Into<String>,
        action: impl Into<String>,
        idempotency_key: impl Into<String>,
        state: State,
        reason: Option<InvalidTokenReason>,
    ) -> Self {
        ValidateChallengeResponse {
            is_valid: reason.is_none(),
            state: Some(state),
            user_id: Some(user_id.into()),
            action: Some(action.into()),
            idempotency_key: Some(idempotency_key.into()),
            reason,
        }
    }
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
    /// The remote state store failed, so the token could not be checked (nor used up): a retry may succeed.
    StoreUnavailable,
}

impl InvalidTokenReason {
    /// The wire name (`"unknown_token"`).
    pub fn as_str(self) -> &'static str {
        match self {
            InvalidTokenReason::UnknownToken => "unknown_token",
            InvalidTokenReason::Expired => "expired",
            InvalidTokenReason::NotSucceeded => "not_succeeded",
            InvalidTokenReason::AlreadyUsed => "already_used",
            InvalidTokenReason::StoreUnavailable => "store_unavailable",
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
