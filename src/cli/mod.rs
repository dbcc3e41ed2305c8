//! The subcommands of the `riskgate` binary.

pub mod check;
pub mod lines;
pub mod replay;
pub mod stats;
