//! The names rules see besides signals: the request variables and the outcome constants, each written once.
//!
//! Scope filling and the compile-time scope (`sandbox.rs`), the variable-use analysis ([`bit`], read by
//! `sandbox::vars_used`) and the native compiler (`compile.rs`) all read these tables.

use crate::request::TrackRequest;
use crate::State;

/// The name of the `custom` map.
pub(crate) const CUSTOM: &str = "custom";

/// How a request variable is read from a request.
#[derive(Clone, Copy)]
pub(crate) enum Read {
    /// A string, or `()` when the attribute is absent.
    Text(for<'a> fn(&'a TrackRequest) -> Option<&'a str>),
    /// The `custom` map.
    Custom,
}

/// One request variable.
pub(crate) struct Var {
    pub name: &'static str,
    pub read: Read,
}

const fn text(name: &'static str, read: for<'a> fn(&'a TrackRequest) -> Option<&'a str>) -> Var {
    Var {
        name,
        read: Read::Text(read),
    }
}

/// The request variables every rule sees, in scope order. A rule's variable set (`Rule::vars`) has bit
/// `1 << i` for the `i`-th.
pub(crate) const VARS: [Var; 10] = [
    text("user_id", |r| Some(r.user_id.as_str())),
    text("action", |r| Some(r.action.as_str())),
    text("ip_address", |r| r.attributes.ip_address.as_deref()),
    text("device_id", |r| r.attributes.device_id.as_deref()),
    text("user_agent", |r| r.attributes.user_agent.as_deref()),
    text("email", |r| r.attributes.email.as_deref()),
    text("phone_number", |r| r.attributes.phone_number.as_deref()),
    text("username", |r| r.attributes.username.as_deref()),
    text("redirect_url", |r| r.attributes.redirect_url.as_deref()),
    Var {
        name: CUSTOM,
        read: Read::Custom,
    },
];

/// Every request variable, as a variable set.
pub(crate) const ALL: u16 = (1 << VARS.len()) - 1;

/// The bit of `custom` in a variable set.
pub(crate) const CUSTOM_BIT: u16 = {
    let mut i = 0;
    while i < VARS.len() && !same(VARS[i].name.as_bytes(), CUSTOM.as_bytes()) {
        i += 1;
    }
    assert!(i < VARS.len(), "`custom` is a request variable");
    1 << i
};

const fn same(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let mut i = 0;
    while i < a.len() {
        if a[i] != b[i] {
            return false;
        }
        i += 1;
    }
    true
}

/// The bit of request variable `name` in a variable set.
pub(crate) fn bit(name: &str) -> Option<u16> {
    VARS.iter().position(|v| v.name == name).map(|i| 1 << i)
}

/// The request variable `name`.
pub(crate) fn find(name: &str) -> Option<&'static Var> {
    VARS.iter().find(|v| v.name == name)
}

/// The outcome constants (named by [`State::as_str`]): the states that are decisions, in [`State::ALL`] order.
pub(crate) const OUTCOMES: [State; 4] = {
    let mut out = [State::Allow; 4];
    let (mut i, mut n) = (0, 0);
    while i < State::ALL.len() {
        if State::ALL[i].is_decision() {
            // More decisions than `OUTCOMES` has room for fails to compile here.
            out[n] = State::ALL[i];
            n += 1;
        }
        i += 1;
    }
    assert!(
        n == out.len(),
        "`OUTCOMES` has room for more decisions than there are"
    );
    out
};

/// The outcome constant `name`.
pub(crate) fn outcome(name: &str) -> Option<State> {
    OUTCOMES.into_iter().find(|s| s.as_str() == name)
}

/// The outcome names, for messages (`ALLOW, CHALLENGE_REQUIRED, REVIEW, BLOCK`).
pub(crate) fn outcome_names() -> String {
    OUTCOMES.map(State::as_str).join(", ")
}

/// The names rules can use, for riskgate's own tests and tools. Not a stable API.
pub mod names {
    /// The request variables that hold a string or `()` (every one but `custom`).
    pub fn string_variables() -> Vec<&'static str> {
        super::VARS
            .iter()
            .filter(|v| matches!(v.read, super::Read::Text(_)))
            .map(|v| v.name)
            .collect()
    }

    /// The outcome constants.
    pub fn outcomes() -> Vec<&'static str> {
        super::OUTCOMES.map(crate::State::as_str).to_vec()
    }
}
