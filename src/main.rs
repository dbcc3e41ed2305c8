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

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Format {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Compile and validate a rules folder, list its rules; print file:line:col errors and warnings, and exit 1
    /// if it fails.
    Check {
        /// The rules folder.
        #[arg(long, default_value = "rules")]
        rules: PathBuf,
        /// Fail on warnings too (an action code nothing else names, …).
        #[arg(long)]
        strict: bool,
        /// `text` (file:line:col lines) or `json` (one object on stdout, for CI systems and editors).
        #[arg(long, value_enum, default_value = "text")]
        format: cli::check::Format,
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
        /// Measure on a labelled log (lines with `"label"` and `"model"`, as `simulate` writes): print the share
        /// of attacks caught and of genuine events not allowed (friction), per label and model, on stderr.
        #[arg(long, conflicts_with = "compare")]
        labels: bool,
        /// Also write the per-label tally as JSON to this file.
        #[arg(long, value_name = "FILE", conflicts_with = "compare")]
        labels_json: Option<String>,
        /// Instead of the folder's rules, replay the log once per threshold through one rule,
        /// `if rba_score() >= T { CHALLENGE_REQUIRED }` (with the folder's riskgate.toml), and print catch rate
        /// and friction per threshold. Thresholds are comma-separated after `=` (`--rba-sweep=0.1,1,10`); alone,
        /// the flag tries 0.01,0.03,…,100.
        #[arg(
            long,
            value_name = "T,T,…",
            num_args = 0..=1,
            require_equals = true,
            value_delimiter = ','
        )]
        rba_sweep: Option<Vec<String>>,
        /// Keep actions and history on this store: `redis://host:port`, `redis+cluster://host:port,…`,
        /// `memory`, or `file:PATH` (in memory, durable at PATH: the replay starts from the state saved there
        /// and saves what it adds) (default: `[store]` in riskgate.toml).
        #[arg(long, value_name = "URL", conflicts_with_all = ["compare", "rba_sweep"])]
        store: Option<String>,
        /// Backtest: replay the log through this second rules folder too, each on its own engine, and print
        /// the decisions that changed (grouped by old → new state, with examples), the per-rule hits side by
        /// side and, on a labelled log, each side's catch rate, friction and confusion matrix, instead of the
        /// output lines.
        #[arg(long, value_name = "OTHER_RULES_DIR")]
        compare: Option<PathBuf>,
        /// Write a self-contained HTML report (SVG charts, no network fetch) to this file.
        #[arg(long, value_name = "FILE.html")]
        report: Option<PathBuf>,
        /// The summary's format (on stderr; the backtest's and the sweep's, on stdout).
        #[arg(long, value_enum, default_value_t = Format::Text)]
        format: Format,
        /// Begin each output line with the input's `line` number, `userId` and `action`.
        #[arg(long, conflicts_with_all = ["compare", "rba_sweep"])]
        echo: bool,
        /// Write challenge tokens as `<redacted>`, and give requests without an idempotency key one made from
        /// the line number, so that two runs diff cleanly.
        #[arg(long, conflicts_with = "token_seed")]
        redact_tokens: bool,
        /// Write challenge tokens as stand-ins made from this seed and the line number (a later
        /// `validateChallenge` line may name one), and make missing idempotency keys from it.
        #[arg(long, value_name = "SEED")]
        token_seed: Option<u64>,
        /// Add `"trace"` to the output line of each new decision: every rule that applies, matched or not, with
        /// the signals, variables and `custom` keys it read and its conditions' values (as `explain` gives).
        #[arg(long)]
        trace: bool,
    },
    /// Run the rule tests beside the rules (`tests/*.toml` in the rules folder), each on a fresh engine with a
    /// fake clock; print each failure with its file:line, expected and actual values and the decision's trace.
    /// Exit 1 if a test fails or a test file is invalid.
    Test {
        /// The rules folder.
        #[arg(long, default_value = "rules")]
        rules: PathBuf,
        /// Run only the tests whose `file::name` contains this text.
        filter: Option<String>,
        /// `text` (default) or `junit` (a JUnit XML report on standard output, for CI systems).
        #[arg(long, default_value = "text", value_parser = ["text", "junit"])]
        format: String,
    },
    /// A dry run: explain each track line (as for `replay`) with a JSON trace of every rule that applies, its
    /// outcome, the signals, variables and `custom` keys it read and its conditions' values. Nothing is
    /// recorded: each line is explained on its own, against an empty history.
    Explain {
        /// The rules folder.
        #[arg(long, default_value = "rules")]
        rules: PathBuf,
        /// The event file, or `-` for standard input.
        #[arg(default_value = "-")]
        events: String,
    },
    /// Write a labelled, simulated sign-in log (JSON lines for `replay --labels`): users, their devices and
    /// travels, and attackers (naive, VPN, targeted, credential stuffing, bots). The same flags give the same
    /// bytes.
    Simulate(SimulateArgs),
    /// Measure decision latency for a rules folder and an event log: replays the log round after round into a
    /// fresh engine, timing each `track` call; prints p50/p99/p99.9 latency and decisions per second. Without
    /// arguments it runs a realistic stream (distinct actions with an IP, device, user agent, idempotency key
    /// and five custom attributes) through ten built-in rules.
    Bench {
        /// The rules folder (default: the built-in ten rules of the realistic stream).
        #[arg(long)]
        rules: Option<PathBuf>,
        /// The event file (as for `replay`), or `-` for standard input (then read once). Without it, the
        /// realistic stream.
        events: Option<String>,
        /// The number of distinct actions in the realistic stream (without an event file).
        #[arg(long, default_value_t = 100_000)]
        actions: usize,
        /// Follow the realistic stream by every action once more: idempotent repeats.
        #[arg(long)]
        repeats: bool,
        /// Keep replaying until at least this many decisions were timed (refused lines and idempotent repeats are
        /// counted apart, untimed).
        #[arg(long, default_value_t = 100_000)]
        calls: u64,
        /// Keep replaying until at least this many seconds passed.
        #[arg(long, default_value_t = 2.0)]
        seconds: f64,
        /// Run every rule in Rhai's interpreter (no native compilation), for comparison.
        #[arg(long)]
        interpret: bool,
        /// Decide on this store (`redis://host:port`, `redis+cluster://…`, `file:PATH`); each round uses a key
        /// prefix (a file) of its own, so every round sees the same history.
        #[arg(long, value_name = "URL")]
        store: Option<String>,
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
        /// Keep actions and history on this store (`redis://host:port`, `redis+cluster://…`, shared with every
        /// other instance on it; or `file:PATH`, durable in this process) (default: `[store]` in riskgate.toml).
        #[arg(long, value_name = "URL")]
        store: Option<String>,
    },
}

/// `riskgate simulate` flags; the defaults are [`riskgate::simulate::Params::default`]'s.
#[derive(clap::Args)]
struct SimulateArgs {
    /// The random seed.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Users at the start.
    #[arg(long, default_value_t = 1000)]
    users: u32,
    /// Days simulated, warm-up included.
    #[arg(long, default_value_t = 42)]
    days: u32,
    /// Days of genuine-only traffic at the start (labelled `warmup`).
    #[arg(long, default_value_t = 14)]
    warmup_days: u32,
    /// Mean sign-ins per user per week.
    #[arg(long, default_value_t = 5.0)]
    logins_per_week: f64,
    /// Mean new devices (or cleared cookies) per user per month.
    #[arg(long, default_value_t = 0.25)]
    new_device_per_month: f64,
    /// Mean trips per user per year.
    #[arg(long, default_value_t = 3.0)]
    trips_per_year: f64,
    /// Share of sign-ins followed by one to three withdrawals.
    #[arg(long, default_value_t = 0.2)]
    sensitive_share: f64,
    /// New users joining per week, as a share of the starting population.
    #[arg(long, default_value_t = 0.01)]
    new_users_per_week: f64,
    /// Naive attacker sign-ins (anywhere, new device, common browser).
    #[arg(long, default_value_t = 300)]
    naive: u32,
    /// VPN attacker sign-ins (the victim's country).
    #[arg(long, default_value_t = 300)]
    vpn: u32,
    /// Targeted attacker sign-ins (the victim's network and exact browser).
    #[arg(long, default_value_t = 300)]
    targeted: u32,
    /// Credential-stuffing campaigns (one address and device, many accounts, seconds apart).
    #[arg(long, default_value_t = 6)]
    stuffing_campaigns: u32,
    /// Accounts tried per stuffing campaign.
    #[arg(long, default_value_t = 50)]
    stuffing_size: u32,
    /// Bot sign-ins (hosting and anonymising networks, mostly scripted user agents).
    #[arg(long, default_value_t = 300)]
    bots: u32,
    /// Start of the simulated period, epoch milliseconds (default 2026-01-05T00:00:00Z).
    #[arg(long, default_value_t = 1_767_571_200_000)]
    start_ms: i64,
    /// Write to this file instead of standard output.
    #[arg(long, short)]
    out: Option<String>,
}

impl SimulateArgs {
    fn params(&self) -> riskgate::simulate::Params {
        let mut p = riskgate::simulate::Params::default();
        p.seed = self.seed;
        p.users = self.users;
        p.days = self.days;
        p.warmup_days = self.warmup_days;
        p.logins_per_week = self.logins_per_week;
        p.new_device_per_month = self.new_device_per_month;
        p.trips_per_year = self.trips_per_year;
        p.sensitive_share = self.sensitive_share;
        p.new_users_per_week = self.new_users_per_week;
        p.naive = self.naive;
        p.vpn = self.vpn;
        p.targeted = self.targeted;
        p.stuffing_campaigns = self.stuffing_campaigns;
        p.stuffing_size = self.stuffing_size;
        p.bots = self.bots;
        p.start_ms = self.start_ms;
        p
    }
}

/// The `--rba-sweep` thresholds: the given ones (each a finite number), or the default list when none is given.
fn thresholds(list: &[String]) -> Result<Vec<f64>, ExitCode> {
    if list.is_empty() {
        return Ok(cli::replay::DEFAULT_SWEEP.to_vec());
    }
    let mut thresholds = Vec::new();
    for t in list {
        match t.trim().parse::<f64>() {
            Ok(v) if v.is_finite() => thresholds.push(v),
            _ if t.trim().is_empty() => {
                eprintln!(
                    "error: `--rba-sweep`: an empty threshold; write `--rba-sweep=0.1,1,10`, or `--rba-sweep` alone for the default list"
                );
                return Err(ExitCode::FAILURE);
            }
            _ => {
                eprintln!("error: `--rba-sweep`: `{t}` is not a finite number");
                return Err(ExitCode::FAILURE);
            }
        }
    }
    Ok(thresholds)
}

/// Whether `text`, given where a file name goes, is a threshold list meant for `--rba-sweep` (no such file, and
/// every comma-separated part a number).
fn looks_like_thresholds(text: &str) -> bool {
    !std::path::Path::new(text).exists()
        && text
            .split(',')
            .all(|t| t.trim().parse::<f64>().is_ok_and(f64::is_finite))
}

fn main() -> ExitCode {
    // `--rba-sweep 0.1,1 log.jsonl` would otherwise read the list as the event file.
    let raw: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if let Some(list) = raw
        .windows(2)
        .filter(|w| w.first().is_some_and(|a| a == "--rba-sweep"))
        .filter_map(|w| w.get(1).and_then(|l| l.to_str()))
        .find(|l| looks_like_thresholds(l))
    {
        eprintln!("error: thresholds are written `--rba-sweep={list}` (with `=`); `--rba-sweep` alone tries the default list");
        return ExitCode::FAILURE;
    }
    let args = Args::parse();
    match args.command {
        Command::Check {
            rules,
            strict,
            format,
        } => cli::check::run(&rules, strict, format),
        Command::Replay {
            rules,
            events,
            labels,
            labels_json,
            rba_sweep,
            compare,
            report,
            format,
            echo,
            redact_tokens,
            token_seed,
            trace,
            store,
        } => {
            let tokens = match (redact_tokens, token_seed) {
                (_, Some(seed)) => riskgate::replay::Tokens::Seeded(seed),
                (true, None) => riskgate::replay::Tokens::Redact,
                (false, None) => riskgate::replay::Tokens::Keep,
            };
            let sweep = match rba_sweep.map(|list| thresholds(&list)) {
                Some(Err(code)) => return code,
                Some(Ok(t)) => Some(t),
                None => None,
            };
            let json = format == Format::Json;
            if let Some(other) = compare {
                return cli::compare::run(
                    &rules,
                    &other,
                    &events,
                    &cli::compare::Options {
                        json,
                        tokens,
                        report,
                        sweep,
                    },
                );
            }
            if let Some(t) = sweep {
                return cli::replay::sweep(&rules, &events, &t, report.as_deref(), tokens, json);
            }
            cli::replay::run(
                &rules,
                &events,
                &cli::replay::Options {
                    labels,
                    labels_json,
                    json,
                    echo,
                    tokens,
                    report,
                    trace,
                    store,
                },
            )
        }
        Command::Test {
            rules,
            filter,
            format,
        } => cli::test::run(&rules, filter.as_deref(), format == "junit"),
        Command::Explain { rules, events } => cli::explain::run(&rules, &events),
        Command::Simulate(a) => cli::simulate::run(&a.params(), a.out.as_deref()),
        Command::Bench {
            rules,
            events,
            actions,
            repeats,
            calls,
            seconds,
            interpret,
            store,
        } => {
            let Ok(min_time) = std::time::Duration::try_from_secs_f64(seconds) else {
                eprintln!("error: `--seconds {seconds}` must be a number of seconds, 0 or more");
                return ExitCode::FAILURE;
            };
            let opts = cli::bench::Options {
                min_calls: calls,
                min_time,
                interpret,
                store,
            };
            let events = match events {
                Some(path) => cli::bench::Events::Log(path),
                None => cli::bench::Events::Realistic {
                    actions: actions.max(1),
                    repeats,
                },
            };
            cli::bench::run(rules.as_deref(), &events, &opts)
        }
        #[cfg(feature = "server")]
        Command::Serve {
            rules,
            listen,
            secret_file,
            store,
        } => cli::serve::run(&cli::serve::Options {
            rules,
            listen,
            secret_file,
            store,
        }),
    }
}
