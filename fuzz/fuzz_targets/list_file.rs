//! Fuzz target `list_file`: see `harness.rs` for what it drives and what it checks.
#![no_main]

#[path = "../harness.rs"]
mod harness;

libfuzzer_sys::fuzz_target!(|data: &[u8]| harness::list_file(data));
