//! Resolution: from each rule's result to the action's state.
//!
//! Among matching enforce rules the lowest priority number decides; on a tie the most severe outcome wins
//! (`BLOCK` > `REVIEW` > `CHALLENGE_REQUIRED` > `ALLOW`), then the rule id (so the order is total and
//! deterministic). A failing rule counts as `on_rule_error`; shadow rules are only reported.

use crate::config::{Config, OnRuleError};
use crate::rules::sandbox::RuleResult;
use crate::rules::{Mode, Rule};
use crate::{RuleError, RuleId, State};
use smallvec::SmallVec;

/// The first decision on an action.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Decision {
    pub state: State,
    pub rule_ids: RuleIds,
    pub priority_rule_id: Option<RuleId>,
    pub shadow_rule_ids: Vec<RuleId>,
    pub errors: Vec<RuleError>,
}

/// Matching rule ids: one inline (most decisions match none or one), more on the heap.
pub(crate) type RuleIds = SmallVec<[RuleId; 1]>;

type Matches<'a> = SmallVec<[(u8, State, &'a RuleId); 16]>;

/// Resolves the results of `rules` (one per rule, same order) for `action`. Error messages are moved out of
/// `results` (read in place, not moved: the list is on the caller's stack).
pub(crate) fn resolve<'a>(
    config: &Config,
    action: &str,
    rules: impl Iterator<Item = &'a Rule>,
    results: &mut [RuleResult],
) -> Decision {
    // On the stack for up to 16 matches each: a decision allocates only the lists it returns.
    let mut enforce: Matches = SmallVec::new();
    let mut shadow: Matches = SmallVec::new();
    let mut errors = Vec::new();
    for (rule, result) in rules.zip(results) {
        let outcome = match result {
            RuleResult::NoMatch => None,
            RuleResult::Match(s) => Some(*s),
            RuleResult::Error(kind, message) => {
                errors.push(RuleError {
                    rule_id: rule.id.clone(),
                    kind: *kind,
                    message: std::mem::take(message),
                });
                match config.on_rule_error {
                    OnRuleError::Outcome(s) => Some(s),
                    OnRuleError::Skip => None,
                }
            }
        };
        if let Some(s) = outcome {
            let list = match rule.meta.mode {
                Mode::Enforce => &mut enforce,
                Mode::Shadow => &mut shadow,
            };
            list.push((rule.meta.priority, s, &rule.id));
        }
    }
    let strongest_first = |a: &(u8, State, &RuleId), b: &(u8, State, &RuleId)| {
        a.0.cmp(&b.0)
            .then(b.1.severity().cmp(&a.1.severity()))
            .then(a.2.cmp(b.2))
    };
    enforce.sort_by(strongest_first);
    shadow.sort_by(strongest_first);
    let (state, priority_rule_id) = match enforce.first() {
        Some(&(_, s, id)) => (s, Some(id.clone())),
        None => (config.default_for(action), None),
    };
    Decision {
        state,
        rule_ids: enforce.iter().map(|e| e.2.clone()).collect(),
        priority_rule_id,
        shadow_rule_ids: shadow.iter().map(|e| e.2.clone()).collect(),
        errors,
    }
}
