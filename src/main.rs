//! The `riskgate` command line: check a rules folder, replay an event log against it.

mod cli;

use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(name = "riskgate", version, about = "Check and replay riskgate rules")]
struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Compile and validate a rules folder, list its rules; print file:line:col errors and exit 1 if it fails.
    Check {
        /// The rules folder.
        #[arg(long, default_value = "rules")]
        rules: PathBuf,
    },
    /// Replay JSON lines (track requests and operations) through the rules: one JSON line out per line in,
    /// a summary on stderr.
    Replay {
        /// The rules folder.
        #[arg(long, default_value = "rules")]
        rules: PathBuf,
        /// The event file, or `-` for standard input.
        #[arg(default_value = "-")]
        events: String,
    },
}

fn main() -> ExitCode {
    let args = Args::parse();
    match args.command {
        Command::Check { rules } => cli::check::run(&rules),
        Command::Replay { rules, events } => cli::replay::run(&rules, &events),
    }
}
