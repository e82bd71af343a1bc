//! Replays fuzz/regressions/config (inputs that once crashed the `config` fuzz target): each must
//! be refused with problems that point at a line and column inside the text, never a panic.

use std::path::Path;

use chainboot_config::{load_str, Issue, Validate};
use serde::Deserialize;

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
#[allow(dead_code)]
struct Doc {
    server: chainboot_config::ServerConfig,
    mode: String,
}

impl Validate for Doc {
    fn validate(&self) -> Vec<Issue> {
        self.server.validate()
    }
}

#[test]
fn fuzz_regressions_are_problems_not_panics() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/regressions/config");
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).expect("regression folder") {
        let path = entry.expect("entry").path();
        let text = String::from_utf8(std::fs::read(&path).expect("read")).expect("utf-8");
        let err = load_str::<Doc>(Path::new("f.toml"), &text).expect_err("invalid TOML");
        assert!(!err.0.is_empty());
        let lines = text.split('\n').count();
        for p in &err.0 {
            assert!(p.line >= 1 && p.line <= lines, "{}: {p}", path.display());
            assert!(p.column >= 1, "{}: {p}", path.display());
            assert!(
                p.message.starts_with("not valid TOML"),
                "{}: {p}",
                path.display()
            );
        }
        n += 1;
    }
    assert!(n > 0, "no regression inputs in {}", dir.display());
}
