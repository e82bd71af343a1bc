//! bench/storm/summary.py, the storm benchmark's summary step, run on raw files the benchmark
//! wrote (bench/storm/results/): a run of one side (`STORM_SIDES=chainboot`) decides no ratio
//! and must leave the summary table's file as it was; a run of both sides replaces it. Each
//! run works on copies in a throw-away tree shaped like the repository's (`storm/results/`
//! beside `summary/`), never on the repository's own summary.
#![allow(clippy::unwrap_used)] // a test: a failed step is a failed test

use std::path::{Path, PathBuf};
use std::process::Command;

fn bench() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../bench")
}

/// A tree with `raw` copied into `storm/results/` and a summary file standing for the last
/// verdict; runs the summary step on the copy and returns its output and the summary file.
fn summarise(raw: &str) -> (String, String) {
    let tree = tempfile::tempdir().unwrap();
    let results = tree.path().join("storm/results");
    std::fs::create_dir_all(&results).unwrap();
    std::fs::create_dir(tree.path().join("summary")).unwrap();
    std::fs::copy(bench().join("storm/results").join(raw), results.join(raw)).unwrap();
    let table = tree.path().join("summary/storm-1000-quiet.tsv");
    std::fs::write(&table, "the last two-sided verdict\n").unwrap();
    let out = Command::new("python3")
        .arg(bench().join("storm/summary.py"))
        .arg(results.join(raw))
        .arg("0")
        .output()
        .unwrap_or_else(|e| panic!("python3 is needed: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    (stdout, std::fs::read_to_string(&table).unwrap())
}

#[test]
fn a_one_sided_storm_run_leaves_the_summary_untouched_and_says_so() {
    // 1000 machines, chainboot only.
    let (stdout, table) = summarise("storm-20261205-031204.jsonl");
    assert_eq!(table, "the last two-sided verdict\n");
    assert!(
        stdout.contains("one-sided run (chainboot) decides no ratio")
            && stdout.contains("left as it was"),
        "{stdout}"
    );
    // Its medians are still printed.
    assert!(stdout.contains("time-to-kernel p99 s"), "{stdout}");
}

#[test]
fn a_storm_run_of_both_sides_writes_its_ratios_to_the_summary() {
    // 1000 machines, three rounds of each side.
    let (stdout, table) = summarise("storm-20261205-080940.jsonl");
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines.len(), 2, "{table}");
    assert!(
        lines[0].starts_with("storm 1000: p99 time-to-kernel vs dnsmasq+nginx")
            && lines[0].contains("\tquiet\t0.63\t"),
        "{table}"
    );
    assert!(
        lines[1].starts_with("storm 1000: CPU-s per 1000 boots vs dnsmasq+nginx (lower is better)")
            && lines[1].contains("\tquiet\t1.54\t"),
        "{table}"
    );
    assert!(
        lines[0].ends_with("\tbench/storm/results/storm-20261205-080940.jsonl"),
        "{table}"
    );
    assert!(stdout.contains("summary: "), "{stdout}");
}
