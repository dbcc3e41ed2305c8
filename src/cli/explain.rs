//! `riskgate explain`: a dry run of each track line, one JSON trace out per line in; nothing is recorded.

use riskgate::replay::Replayer;
use riskgate::Engine;
use std::io::{self, BufWriter, Write};
use std::path::Path;
use std::process::ExitCode;

use super::lines::{next_line, Line};

pub fn run(rules: &Path, events: &str) -> ExitCode {
    let replayer = match Engine::builder().rules_dir(rules).and_then(Replayer::new) {
        Ok(r) => r,
        Err(e) => {
            super::check::report_load_error(&e);
            return ExitCode::FAILURE;
        }
    };
    let stdout = io::stdout();
    let mut out = BufWriter::new(stdout.lock());
    let result = if events == "-" {
        explain(&replayer, &mut io::BufReader::new(io::stdin()), &mut out)
    } else {
        match std::fs::File::open(events) {
            Ok(f) => explain(&replayer, &mut io::BufReader::new(f), &mut out),
            Err(e) => {
                eprintln!("error: cannot read `{events}`: {e}");
                return ExitCode::FAILURE;
            }
        }
    };
    match result.and_then(|()| out.flush()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Explains every line of `input` into `out`, flushing whenever the input has nothing more buffered.
fn explain<R: io::Read>(
    replayer: &Replayer,
    input: &mut io::BufReader<R>,
    out: &mut impl Write,
) -> io::Result<()> {
    let mut n = 0u64;
    loop {
        if input.buffer().is_empty() {
            out.flush()?;
        }
        let Some(line) = next_line(input)? else {
            return Ok(());
        };
        n += 1;
        let json = match line {
            Line::TooLong(len) => replayer.too_long(n, len).json,
            Line::Text(bytes) => match replayer.explain_line(n, &bytes) {
                Some(j) => j,
                None => continue,
            },
        };
        out.write_all(json.as_bytes())?;
        out.write_all(b"\n")?;
    }
}
