//! What [`Engine::explain`](crate::Engine::explain) returns: the decision the rules would make, and a trace of
//! every rule that applies to the action.

use serde::Serialize;

use crate::{Mode, RuleError, RuleId, State};

/// A dry-run decision and why: what `track` would decide for a request now, without recording anything.
///
/// The decision fields are those of a [`TrackResponse`](crate::TrackResponse) (no idempotency key, token or
/// URL: nothing is stored). [`rules`](Explanation::rules) holds one [`RuleTrace`] per rule that applies to the
/// action, in evaluation order.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct Explanation {
    /// The state `track` would decide.
    pub state: State,
    /// Every matching enforce rule, strongest first.
    pub rule_ids: Vec<RuleId>,
    /// The deciding rule, if an enforce rule matched.
    pub priority_rule_id: Option<RuleId>,
    /// The matching shadow rules.
    pub shadow_rule_ids: Vec<RuleId>,
    /// The rules that failed.
    pub errors: Vec<RuleError>,
    /// One entry per rule that applies to the action, in evaluation order.
    pub rules: Vec<RuleTrace>,
}

/// What one rule did in an [`Explanation`], and what it read.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct RuleTrace {
    /// The rule.
    pub rule_id: RuleId,
    /// `enforce` or `shadow`.
    #[serde(serialize_with = "mode_name")]
    pub mode: Mode,
    /// Its priority (lower is stronger).
    pub priority: u8,
    /// Whether it runs as native code (otherwise in Rhai's interpreter).
    pub compiled: bool,
    /// Whether it returned an outcome.
    pub matched: bool,
    /// The outcome it returned, if it matched.
    pub outcome: Option<State>,
    /// Its failure, if it failed (it then counts as `on_rule_error`).
    pub error: Option<RuleError>,
    /// How long it took to evaluate, in nanoseconds (signals it was first to ask for included).
    pub time_ns: u64,
    /// Every signal call written in the rule, with the value it has for this request (see [`Value`]).
    pub signals: Vec<Value>,
    /// The request variables the rule reads (`custom` apart), with their values (`null` when absent).
    pub variables: Vec<Value>,
    /// The `custom` keys the rule reads by name (`custom.amount`, `custom["amount"]`), with their values.
    pub custom: Vec<Value>,
    /// For each top-level `if` of the rule (and its `else if`s), each operand of its `&&` / `||` chain (or the
    /// whole condition), with its value: why a rule did or did not fire.
    pub comparisons: Vec<Value>,
    /// `rba_score()`'s factor per feature chain, when the rule calls it.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub rba: Vec<RbaFactor>,
}

/// One expression of a [`RuleTrace`] and its value.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct Value {
    /// The expression as riskgate prints it (`velocity("10m")`, `custom.amount > 10000`, `device_id`).
    pub expr: String,
    /// Its value as JSON (`null` for `()`; an outcome as its name); `null` when it has none (see `error`).
    pub value: serde_json::Value,
    /// Why there is no value: the expression failed, or it reads a variable the rule defines itself (its value
    /// depends on where in the rule it is read).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// One feature chain's factor in `rba_score()`: the score is the product of the factors.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct RbaFactor {
    /// `network`, `browser`, `device` or `deviceType`.
    pub chain: &'static str,
    /// The population's probability of the chain's most specific value over the user's (above 1: unusual for
    /// this user).
    pub factor: f64,
}

fn mode_name<S: serde::Serializer>(m: &Mode, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(m.as_str())
}
