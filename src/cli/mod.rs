//! The subcommands of the `riskgate` binary.

pub mod bench;
pub mod check;
pub mod lines;
pub mod replay;
#[cfg(feature = "server")]
pub mod serve;
pub mod simulate;
pub mod stats;
pub mod workload;
