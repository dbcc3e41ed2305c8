//! A decided action as a remote store keeps it: compact JSON in the action's `d` field, the rest (identity,
//! fingerprint, times, state, token use) in fields of their own so that scripts can read and move them.

use serde::{Deserialize, Serialize};
use std::net::IpAddr;

use crate::decide::Decision;
use crate::response::{RuleError, RuleId, State};
use crate::signals::{Footprint, Keys};

/// What the first decision fixed for an action.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Decided {
    #[serde(rename = "o")]
    pub outcome: State,
    #[serde(rename = "r", default, skip_serializing_if = "Vec::is_empty")]
    pub rule_ids: Vec<RuleId>,
    #[serde(rename = "p", default, skip_serializing_if = "Option::is_none")]
    pub priority_rule_id: Option<RuleId>,
    #[serde(rename = "s", default, skip_serializing_if = "Vec::is_empty")]
    pub shadow_rule_ids: Vec<RuleId>,
    #[serde(rename = "e", default, skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<RuleError>,
    #[serde(rename = "t", default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    #[serde(rename = "x", default)]
    pub token_expires: i64,
    #[serde(rename = "u", default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// Kept only for actions that can still move to `CHALLENGE_SUCCEEDED` or `REVIEW_SUCCEEDED`.
    #[serde(rename = "f", default, skip_serializing_if = "Option::is_none")]
    pub footprint: Option<FootprintWire>,
}

/// A [`Footprint`] in the store.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct FootprintWire {
    u: u64,
    a: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    i: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    d: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    ip: Option<IpAddr>,
    at: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    rba: Option<(Vec<u64>, u16)>,
}

impl From<&Footprint> for FootprintWire {
    fn from(f: &Footprint) -> Self {
        FootprintWire {
            u: f.keys.user,
            a: f.keys.action,
            i: f.keys.ip,
            d: f.keys.device,
            ip: f.ip,
            at: f.at_ms,
            rba: f.rba.map(|r| {
                let (v, p) = r.parts();
                (v.to_vec(), p)
            }),
        }
    }
}

impl FootprintWire {
    pub fn footprint(&self) -> Footprint {
        Footprint {
            keys: Keys {
                user: self.u,
                action: self.a,
                ip: self.i,
                device: self.d,
            },
            ip: self.ip,
            at_ms: self.at,
            rba: self
                .rba
                .as_ref()
                .map(|(v, p)| crate::signals::rba::Features::from_parts(v, *p)),
        }
    }
}

impl Decided {
    pub fn new(
        decision: Decision,
        token: Option<String>,
        token_expires: i64,
        url: Option<String>,
        footprint: &Footprint,
    ) -> Self {
        let pending = matches!(decision.state, State::ChallengeRequired | State::Review);
        Decided {
            outcome: decision.state,
            rule_ids: decision.rule_ids.into_vec(),
            priority_rule_id: decision.priority_rule_id,
            shadow_rule_ids: decision.shadow_rule_ids,
            errors: decision.errors,
            token,
            token_expires,
            url,
            footprint: pending.then(|| FootprintWire::from(footprint)),
        }
    }
}

/// One stored action, as a remote store answers it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Stored {
    pub user_id: String,
    pub action: String,
    pub key: String,
    pub fingerprint: u128,
    pub created: i64,
    pub state: State,
    pub state_updated: i64,
    pub decided: Decided,
}

impl Stored {
    pub fn response(&self) -> crate::TrackResponse {
        let d = &self.decided;
        let mut r = crate::TrackResponse::new(self.state, self.key.clone());
        r.token.clone_from(&d.token);
        r.url.clone_from(&d.url);
        r.rule_ids.clone_from(&d.rule_ids);
        r.priority_rule_id.clone_from(&d.priority_rule_id);
        r.shadow_rule_ids.clone_from(&d.shadow_rule_ids);
        r.errors.clone_from(&d.errors);
        r
    }

    pub fn record(&self) -> crate::ActionRecord {
        crate::ActionRecord {
            user_id: self.user_id.clone(),
            action: self.action.clone(),
            idempotency_key: self.key.clone(),
            state: self.state,
            outcome: self.decided.outcome,
            rule_ids: self.decided.rule_ids.clone(),
            priority_rule_id: self.decided.priority_rule_id.clone(),
            created_at: crate::clock::from_millis(self.created),
            state_updated_at: crate::clock::from_millis(self.state_updated),
        }
    }
}
