//! Replays every committed fuzz corpus file (`fuzz/corpus/<target>/*`) through the same functions the
//! cargo-fuzz targets call (`fuzz/harness.rs`), so the corpus, and every crash found and fixed, guards the
//! stable build on each `cargo test`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

#[path = "../fuzz/harness.rs"]
mod harness;

use std::path::Path;

fn replay(target: &str, run: fn(&[u8])) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target);
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no corpus in {}", dir.display());
    for f in &files {
        let data = std::fs::read(f).unwrap();
        let outcome = std::panic::catch_unwind(|| run(&data));
        assert!(outcome.is_ok(), "{} fails its fuzz checks", f.display());
    }
}

#[test]
fn replay_line_corpus() {
    replay("replay_line", harness::replay_line);
}

#[test]
fn rule_source_corpus() {
    replay("rule_source", harness::rule_source);
}

#[test]
fn list_file_corpus() {
    replay("list_file", harness::list_file);
}

#[test]
fn config_toml_corpus() {
    replay("config_toml", harness::config_toml);
}
