//! `riskgate check`: compile and validate a rules folder.

use riskgate::{LoadError, RuleSet};
use std::path::Path;
use std::process::ExitCode;

pub fn run(dir: &Path) -> ExitCode {
    match RuleSet::from_dir(dir) {
        Ok(set) => {
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
            println!("ok: {} rules in {}", set.len(), dir.display());
            ExitCode::SUCCESS
        }
        Err(e) => {
            report_load_error(&e);
            ExitCode::FAILURE
        }
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
