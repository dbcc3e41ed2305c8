//! The `riskgate` command line: check a rules folder, replay an event log against it, measure how fast it decides.

mod cli;

use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

#[cfg(feature = "server")]
const SERVE_HELP: &str = "";
#[cfg(not(feature = "server"))]
const SERVE_HELP: &str =
    "`riskgate serve` (the Authsignal-compatible HTTP server) is not in this build: \
install it with `cargo install --path . --features server`";

#[derive(Parser)]
#[command(
    name = "riskgate",
    version,
    about = "Check, replay and benchmark riskgate rules",
    after_help = SERVE_HELP
)]
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
    /// Measure decision latency for a rules folder and an event log: replays the log round after round into a
    /// fresh engine, timing each `track` call; prints p50/p99/p99.9 latency and decisions per second.
    Bench {
        /// The rules folder.
        #[arg(long, default_value = "rules")]
        rules: PathBuf,
        /// The event file (as for `replay`), or `-` for standard input (then read once).
        #[arg(default_value = "examples/events.jsonl")]
        events: String,
        /// Keep replaying until at least this many `track` calls were timed.
        #[arg(long, default_value_t = 100_000)]
        calls: u64,
        /// Keep replaying until at least this many seconds passed.
        #[arg(long, default_value_t = 2.0)]
        seconds: f64,
        /// Run every rule in Rhai's interpreter (no native compilation), for comparison.
        #[arg(long)]
        interpret: bool,
    },
    /// Serve the rules over HTTP as the Authsignal server API (track, get/update action, validate challenge),
    /// for Authsignal's official SDKs. The API secret comes from `--secret-file` or `RISKGATE_SECRET`.
    #[cfg(feature = "server")]
    Serve {
        /// The rules folder.
        #[arg(long, default_value = "rules")]
        rules: PathBuf,
        /// The address to listen on, such as 127.0.0.1:8080 (default: `[server] listen`).
        #[arg(long)]
        listen: Option<String>,
        /// A file holding the API secret (otherwise `RISKGATE_SECRET` is read).
        #[arg(long)]
        secret_file: Option<PathBuf>,
    },
}

fn main() -> ExitCode {
    let args = Args::parse();
    match args.command {
        Command::Check { rules } => cli::check::run(&rules),
        Command::Replay { rules, events } => cli::replay::run(&rules, &events),
        Command::Bench {
            rules,
            events,
            calls,
            seconds,
            interpret,
        } => {
            let Ok(min_time) = std::time::Duration::try_from_secs_f64(seconds) else {
                eprintln!("error: `--seconds {seconds}` must be a number of seconds, 0 or more");
                return ExitCode::FAILURE;
            };
            let opts = cli::bench::Options {
                min_calls: calls,
                min_time,
                interpret,
            };
            cli::bench::run(&rules, &events, &opts)
        }
        #[cfg(feature = "server")]
        Command::Serve {
            rules,
            listen,
            secret_file,
        } => cli::serve::run(&cli::serve::Options {
            rules,
            listen,
            secret_file,
        }),
    }
}
