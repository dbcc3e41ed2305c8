//! `riskgate check`: compile and validate a rules folder.

use riskgate::{Diagnostic, LoadError, RuleSet, Severity};
use std::path::Path;
use std::process::ExitCode;

/// How `check` prints what it found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// The rules table on stdout, `file:line:col: message` lines on stderr.
    Text,
    /// One JSON object on stdout: `ok`, `rules` (ids), `diagnostics` (each with `file`, `line`, `column`,
    /// `severity`, `code`, `message`, `suggestion`).
    Json,
}

pub fn run(dir: &Path, strict: bool, format: Format) -> ExitCode {
    let loaded = RuleSet::from_dir(dir);
    let (set, diagnostics) = match &loaded {
        Ok(set) => (Some(set), set.warnings().to_vec()),
        Err(e) => (None, diagnostics_of(e, dir)),
    };
    let warnings = diagnostics
        .iter()
        .filter(|d| d.severity == Severity::Warning)
        .count();
    let ok = set.is_some() && !(strict && warnings > 0);
    match format {
        Format::Json => {
            #[derive(serde::Serialize)]
            struct Report<'a> {
                ok: bool,
                rules: Vec<String>,
                diagnostics: &'a [Diagnostic],
            }
            let report = Report {
                ok,
                rules: set.map_or_else(Vec::new, |s| s.rules().map(|r| r.id.to_string()).collect()),
                diagnostics: &diagnostics,
            };
            let out = serde_json::to_string(&report).unwrap_or_default();
            println!("{out}");
        }
        Format::Text => {
            if let Some(set) = set {
                print_rules(set);
            }
            for d in &diagnostics {
                eprintln!("{d}");
            }
            match (set, ok) {
                (Some(set), true) => {
                    let note = match warnings {
                        0 => String::new(),
                        1 => " (1 warning)".to_owned(),
                        n => format!(" ({n} warnings)"),
                    };
                    println!("ok: {} rules in {}{note}", set.len(), dir.display());
                }
                (Some(_), false) => eprintln!(
                    "error: {warnings} warning{} found, and `--strict` fails on warnings",
                    if warnings == 1 { "" } else { "s" }
                ),
                (None, _) => {
                    let n = diagnostics.len();
                    if n > 0 {
                        eprintln!("error: {n} problem{} found", if n == 1 { "" } else { "s" });
                    }
                }
            }
        }
    }
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// Every problem of a load error as diagnostics (one not tied to a file names the rules folder).
fn diagnostics_of(e: &LoadError, dir: &Path) -> Vec<Diagnostic> {
    match e.diagnostics() {
        [] => {
            let (file, code) = match e {
                LoadError::Io { path, .. } => (path.display().to_string(), "io"),
                _ => (dir.display().to_string(), "invalid"),
            };
            vec![Diagnostic::new(file, 0, 0, e.to_string()).with_code(code)]
        }
        d => d.to_vec(),
    }
}

fn print_rules(set: &RuleSet) {
    println!(
        "{:<32} {:>8}  {:<8} {:<24} description",
        "rule", "priority", "mode", "actions"
    );
    for r in set.rules() {
        let actions = r
            .actions
            .as_ref()
            .map_or_else(|| "*".to_owned(), |a| a.join(","));
        let mode = if r.enabled {
            r.mode.as_str()
        } else {
            "disabled"
        };
        println!(
            "{:<32} {:>8}  {:<8} {:<24} {}",
            r.id.as_str(),
            r.priority,
            mode,
            actions,
            r.description.as_deref().unwrap_or("")
        );
    }
}

/// Prints a load error on stderr, one problem a line.
pub fn report_load_error(e: &LoadError) {
    eprintln!("{e}");
    let n = e.diagnostics().len();
    if n > 0 {
        eprintln!("error: {n} problem{} found", if n == 1 { "" } else { "s" });
    }
}
