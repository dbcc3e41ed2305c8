//! One compiled rule: what the sandbox runs and resolution reads.

use super::{compile, meta};
use crate::response::RuleId;

pub(crate) struct Rule {
    pub id: RuleId,
    pub meta: meta::Meta,
    pub ast: rhai::AST,
    /// The rule as native code, when it is in the compiled subset (see `compile.rs`).
    pub compiled: Option<compile::Compiled>,
    /// The request variables the rule reads (see `sandbox::vars_used`).
    pub vars: u16,
}
