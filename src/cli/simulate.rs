//! `riskgate simulate`: write a labelled sign-in log (the model is the library's [`riskgate::simulate`]).

use riskgate::simulate::{simulate, Params};
use std::io::{self, BufWriter, Write};
use std::process::ExitCode;

/// Writes the log to `out` (a file) or standard output; a one-line count on stderr.
pub fn run(params: &Params, out: Option<&str>) -> ExitCode {
    let result = match out {
        None | Some("-") => {
            let stdout = io::stdout();
            let mut w = BufWriter::new(stdout.lock());
            simulate(params, &mut w).and_then(|c| w.flush().map(|()| c))
        }
        Some(path) => match std::fs::File::create(path) {
            Ok(f) => {
                let mut w = BufWriter::new(f);
                simulate(params, &mut w).and_then(|c| w.flush().map(|()| c))
            }
            Err(e) => {
                eprintln!("error: cannot write `{path}`: {e}");
                return ExitCode::FAILURE;
            }
        },
    };
    match result {
        Ok(c) => {
            eprintln!(
                "simulated seed {}: {} warm-up, {} genuine and {} attack events, {} updateAction lines",
                params.seed, c.warmup, c.genuine, c.attacks, c.updates
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
