//! Progress on long runs (`replay`, the backtest, `bench`, `test`): a bar with rate and ETA when stderr is a
//! terminal, and nothing at all otherwise, so piped or redirected output stays exactly what the command prints.

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::io::IsTerminal;
use std::time::Duration;

/// A progress bar over a known amount of work (bytes of an input file, timed calls, tests), or a spinner when
/// the amount is unknown (standard input). Hidden when stderr is not a terminal; cheap to update per line.
pub struct Progress {
    bar: ProgressBar,
}

impl Progress {
    /// A bar over `len` units of `unit` (`"bytes"` shows sizes), or a spinner counting them when `len` is
    /// `None`, labelled `what`.
    pub fn new(what: &str, len: Option<u64>, unit: &str) -> Progress {
        Progress::with_target(what, len, unit, std::io::stderr().is_terminal())
    }

    /// A bar that is never drawn (for inner loops whose caller shows progress).
    pub fn hidden() -> Progress {
        Progress::with_target("", None, "", false)
    }

    /// A bar over the bytes of `events` (a file; a spinner for `-`).
    pub fn for_file(what: &str, events: &str) -> Progress {
        let len = (events != "-")
            .then(|| std::fs::metadata(events).ok().map(|m| m.len()))
            .flatten();
        Progress::new(what, len, "bytes")
    }

    fn with_target(what: &str, len: Option<u64>, unit: &str, draw: bool) -> Progress {
        let bar = match len {
            Some(n) => ProgressBar::with_draw_target(Some(n), target(draw)),
            None => ProgressBar::with_draw_target(None, target(draw)),
        };
        let (count, rate) = if unit == "bytes" {
            ("{bytes}/{total_bytes}", "{bytes_per_sec}")
        } else {
            ("{human_pos}/{human_len}", "{per_sec}")
        };
        let template = match len {
            Some(_) => format!("{{msg}} [{{bar:30}}] {count} {rate}, ETA {{eta}}"),
            None if unit == "bytes" => "{msg} {spinner} {bytes} {bytes_per_sec}".to_owned(),
            None => "{msg} {spinner} {human_pos} {per_sec}".to_owned(),
        };
        if let Ok(style) = ProgressStyle::with_template(&template) {
            bar.set_style(style.progress_chars("=> "));
        }
        bar.set_message(what.to_owned());
        bar.enable_steady_tick(Duration::from_millis(200));
        Progress { bar }
    }

    /// Adds `n` units done.
    pub fn inc(&self, n: u64) {
        self.bar.inc(n);
    }

    /// Sets the units done.
    pub fn set(&self, pos: u64) {
        self.bar.set_position(pos);
    }

    /// Removes the bar, before the summary is printed.
    pub fn finish(&self) {
        self.bar.finish_and_clear();
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.bar.finish_and_clear();
    }
}

fn target(draw: bool) -> ProgressDrawTarget {
    if draw {
        ProgressDrawTarget::stderr_with_hz(5)
    } else {
        ProgressDrawTarget::hidden()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hidden_when_not_drawn_and_still_counts() {
        let p = Progress::with_target("replay", Some(10), "lines", false);
        assert!(p.bar.is_hidden());
        p.inc(3);
        p.inc(4);
        assert_eq!(p.bar.position(), 7);
        p.set(9);
        assert_eq!(p.bar.position(), 9);
        p.finish();
    }
}
