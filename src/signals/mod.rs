//! Risk signals rules can call.

/// Registers the signal functions on a rule engine.
pub(crate) fn register(_engine: &mut rhai::Engine) {}
