//! The subcommands of the `riskgate` binary.

pub mod bench;
pub mod check;
pub mod compare;
pub mod explain;
pub mod lines;
pub mod progress;
pub mod replay;
pub mod report;
#[cfg(feature = "server")]
pub mod serve;
pub mod simulate;
pub mod stats;
pub mod summary;
pub mod test;
pub mod workload;
