//! Prometheus text exposition (format 0.0.4), written by hand: the server's counters already
//! live in each crate as atomics, so all `/metrics` needs is a renderer and a few histograms.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use chainboot_content::What;
use parking_lot::Mutex;

/// A histogram with fixed bucket bounds (seconds or bytes), lock-free to observe. Buckets hold
/// their own counts; the exposition's cumulative counts are summed when rendered.
#[derive(Debug)]
pub struct Histogram {
    bounds: &'static [f64],
    buckets: Vec<AtomicU64>,
    /// Sum in micro-units (µs for durations), to keep it an integer atomic.
    sum_micro: AtomicU64,
    count: AtomicU64,
}

/// Buckets for request/decision latencies, in seconds.
pub const LATENCY_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
];
/// Buckets for transfer durations, in seconds.
pub const TRANSFER_BUCKETS: &[f64] = &[
    0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
];

impl Histogram {
    pub fn new(bounds: &'static [f64]) -> Histogram {
        Histogram {
            bounds,
            buckets: bounds.iter().map(|_| AtomicU64::new(0)).collect(),
            sum_micro: AtomicU64::new(0),
            count: AtomicU64::new(0),
        }
    }

    /// One atomic add to the value's own bucket (not to every bucket above it: on the serving
    /// path of every request that was up to 13 contended adds); `render` sums them up.
    pub fn observe(&self, value: f64) {
        if let Some(i) = self.bounds.iter().position(|bound| value <= *bound) {
            self.buckets[i].fetch_add(1, Ordering::Relaxed);
        }
        self.sum_micro
            .fetch_add((value.max(0.0) * 1e6) as u64, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    pub fn observe_duration(&self, d: Duration) {
        self.observe(d.as_secs_f64());
    }

    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    fn render(&self, out: &mut String, name: &str, labels: &str) {
        let sep = if labels.is_empty() { "" } else { "," };
        let mut cumulative = 0;
        for (b, bound) in self.buckets.iter().zip(self.bounds) {
            cumulative += b.load(Ordering::Relaxed);
            let _ = writeln!(
                out,
                "{name}_bucket{{{labels}{sep}le=\"{bound}\"}} {cumulative}"
            );
        }
        let count = self.count.load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {count}");
        let braces = |l: &str| {
            if l.is_empty() {
                String::new()
            } else {
                format!("{{{l}}}")
            }
        };
        let _ = writeln!(
            out,
            "{name}_sum{} {}",
            braces(labels),
            self.sum_micro.load(Ordering::Relaxed) as f64 / 1e6
        );
        let _ = writeln!(out, "{name}_count{} {count}", braces(labels));
    }
}

/// Counters keyed by a label set that is only known at run time (e.g. HTTP route kind).
#[derive(Debug, Default)]
pub struct LabeledCounter {
    values: Mutex<BTreeMap<String, u64>>,
}

impl LabeledCounter {
    /// `labels` is the rendered label list, e.g. `kind="script",status="200"`.
    pub fn add(&self, labels: String, n: u64) {
        *self.values.lock().entry(labels).or_insert(0) += n;
    }

    fn render(&self, out: &mut String, name: &str) {
        for (labels, v) in self.values.lock().iter() {
            let _ = writeln!(out, "{name}{{{labels}}} {v}");
        }
    }
}

/// Counters by what was served and, optionally, one more label of a fixed set of values: both
/// known in advance, so counting is one atomic add (no label text built per request).
#[derive(Debug)]
pub struct WhatCounter {
    /// The second label's name and values (`code`, `1xx`...`5xx`); empty: `what` only.
    label: &'static str,
    values: &'static [&'static str],
    counts: Vec<AtomicU64>,
}

impl WhatCounter {
    pub fn new(label: &'static str, values: &'static [&'static str]) -> WhatCounter {
        let n = What::ALL.len() * values.len().max(1);
        WhatCounter {
            label,
            values,
            counts: (0..n).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    /// Adds `n` to `what` and the second label's `value`-th value (ignored when there is
    /// no second label; out of range: the last value).
    pub fn add(&self, what: What, value: usize, n: u64) {
        let width = self.values.len().max(1);
        let i = what.index() * width + value.min(width - 1);
        self.counts[i].fetch_add(n, Ordering::Relaxed);
    }

    /// The count of `what` and `value` (tests).
    pub fn get(&self, what: What, value: usize) -> u64 {
        let width = self.values.len().max(1);
        self.counts[what.index() * width + value.min(width - 1)].load(Ordering::Relaxed)
    }

    fn render(&self, out: &mut String, name: &str) {
        let width = self.values.len().max(1);
        for (i, c) in self.counts.iter().enumerate() {
            let v = c.load(Ordering::Relaxed);
            if v == 0 {
                continue;
            }
            let what = What::ALL[i / width];
            match self.values.get(i % width) {
                Some(value) => {
                    let _ = writeln!(
                        out,
                        "{name}{{what=\"{what}\",{}=\"{value}\"}} {v}",
                        self.label
                    );
                }
                None => {
                    let _ = writeln!(out, "{name}{{what=\"{what}\"}} {v}");
                }
            }
        }
    }
}

/// Writes the text format. Helpers keep HELP/TYPE next to each family.
pub struct Writer {
    out: String,
}

impl Default for Writer {
    fn default() -> Self {
        Writer::new()
    }
}

impl Writer {
    pub fn new() -> Writer {
        Writer {
            out: String::with_capacity(16 * 1024),
        }
    }

    fn head(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.out, "# HELP {name} {help}");
        let _ = writeln!(self.out, "# TYPE {name} {kind}");
    }

    pub fn counter(&mut self, name: &str, help: &str, value: u64) {
        self.head(name, "counter", help);
        let _ = writeln!(self.out, "{name} {value}");
    }

    pub fn gauge(&mut self, name: &str, help: &str, value: f64) {
        self.head(name, "gauge", help);
        let _ = writeln!(self.out, "{name} {value}");
    }

    /// One family with several labelled samples.
    pub fn family(&mut self, name: &str, kind: &str, help: &str, samples: &[(String, f64)]) {
        self.head(name, kind, help);
        for (labels, v) in samples {
            if labels.is_empty() {
                let _ = writeln!(self.out, "{name} {v}");
            } else {
                let _ = writeln!(self.out, "{name}{{{labels}}} {v}");
            }
        }
    }

    pub fn labeled(&mut self, name: &str, help: &str, c: &LabeledCounter) {
        self.head(name, "counter", help);
        c.render(&mut self.out, name);
    }

    pub fn by_what(&mut self, name: &str, help: &str, c: &WhatCounter) {
        self.head(name, "counter", help);
        c.render(&mut self.out, name);
    }

    pub fn histogram(&mut self, name: &str, help: &str, h: &Histogram) {
        self.head(name, "histogram", help);
        h.render(&mut self.out, name, "");
    }

    pub fn finish(self) -> String {
        self.out
    }
}

/// Escapes a label value (backslash, quote, newline).
pub fn label_value(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative() {
        let h = Histogram::new(&[0.1, 1.0]);
        h.observe(0.05);
        h.observe(0.5);
        h.observe(5.0);
        let mut w = Writer::new();
        w.histogram("x_seconds", "test", &h);
        let text = w.finish();
        assert!(text.contains("x_seconds_bucket{le=\"0.1\"} 1"), "{text}");
        assert!(text.contains("x_seconds_bucket{le=\"1\"} 2"), "{text}");
        assert!(text.contains("x_seconds_bucket{le=\"+Inf\"} 3"), "{text}");
        assert!(text.contains("x_seconds_sum 5.55"), "{text}");
        assert!(text.contains("x_seconds_count 3"), "{text}");
    }

    #[test]
    fn counters_by_what_render_only_what_was_counted() {
        let c = WhatCounter::new("code", &["1xx", "2xx", "3xx", "4xx", "5xx"]);
        c.add(What::Script, 1, 2);
        c.add(What::Kernel, 3, 1);
        c.add(What::Kernel, 99, 1);
        let mut w = Writer::new();
        w.by_what("x_total", "test", &c);
        let text = w.finish();
        assert!(
            text.contains("x_total{what=\"script\",code=\"2xx\"} 2"),
            "{text}"
        );
        assert!(
            text.contains("x_total{what=\"kernel\",code=\"4xx\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("x_total{what=\"kernel\",code=\"5xx\"} 1"),
            "{text}"
        );
        assert_eq!(text.lines().filter(|l| l.starts_with("x_total")).count(), 3);
        let bytes = WhatCounter::new("", &[]);
        bytes.add(What::File, 0, 1024);
        let mut w = Writer::new();
        w.by_what("b_total", "test", &bytes);
        assert!(w.finish().contains("b_total{what=\"file\"} 1024"));
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(label_value("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}
