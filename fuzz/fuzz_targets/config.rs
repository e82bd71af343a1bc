//! The config loader over the binary's whole config (`chainboot_config_file::Config`: every
//! section, with the same validation `chainboot check` runs).
//!
//! Invariants: never panics; a text that fails yields at least one problem, and every problem
//! points at a line (and column) inside the text and names the file.
#![no_main]

use std::path::Path;

use chainboot_config_file::Config;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // Config files are read as UTF-8 text (load_file uses read_to_string).
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if text.len() > 16 * 1024 {
        return;
    }
    let file = Path::new("fuzz.toml");
    let lines = text.split('\n').count();
    if let Err(problems) = chainboot_config::load_str::<Config>(file, text) {
        assert!(!problems.0.is_empty(), "an error without problems");
        for p in &problems.0 {
            assert_eq!(p.file, file);
            assert!(
                p.line >= 1 && p.line <= lines,
                "problem line {} outside the text ({lines} lines): {p}\n--- text:\n{text}",
                p.line
            );
            assert!(p.column >= 1, "problem without a column: {p}");
            assert!(!p.message.is_empty());
            let _ = p.to_string();
        }
    }
});
