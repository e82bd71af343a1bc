//! Which group a machine belongs to. One place decides: the most specific matching
//! group wins; `validate` guarantees that two groups of equal specificity never both match.

use std::collections::BTreeMap;

use chainboot_machine::Arch;

use crate::config::{fact_glob, mac_glob, GroupConfig};
use crate::facts::{sanitize_uuid, ClientFacts};
use crate::glob::Glob;

/// A group with its selectors parsed.
#[derive(Debug, Clone)]
pub struct CompiledGroup {
    /// Position in the config's `[[group]]` list.
    pub index: usize,
    pub specificity: usize,
    mac: Vec<Glob>,
    uuid: Vec<String>,
    arch: Vec<Arch>,
    hostname: Vec<Glob>,
    serial: Vec<Glob>,
    labels: BTreeMap<String, String>,
}

/// How one selector fared for one machine (for `explain`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SelectorOutcome {
    pub selector: String,
    pub wanted: String,
    pub got: String,
    pub matched: bool,
}

impl CompiledGroup {
    /// Parses a group's selectors. On error: (selector, index in its list, message).
    pub fn compile(
        index: usize,
        g: &GroupConfig,
    ) -> Result<CompiledGroup, (&'static str, usize, String)> {
        let m = &g.selectors;
        let globs = |field: &'static str, list: &[String], f: fn(&str) -> Result<Glob, String>| {
            list.iter()
                .enumerate()
                .map(|(j, s)| f(s).map_err(|e| (field, j, format!("`{s}`: {e}"))))
                .collect::<Result<Vec<_>, _>>()
        };
        let mut uuid = Vec::new();
        for (j, u) in m.uuid.iter().enumerate() {
            uuid.push(sanitize_uuid(u).ok_or((
                "uuid",
                j,
                format!("`{u}` is not a UUID (8-4-4-4-12 hex)"),
            ))?);
        }
        for (k, v) in &m.labels {
            if !crate::facts::valid_label(k, v) {
                return Err((
                    "labels",
                    0,
                    format!("label `{k}` = `{v}`: use letters, digits and . _ - : + , /"),
                ));
            }
        }
        Ok(CompiledGroup {
            index,
            specificity: m.specificity(),
            mac: globs("mac", &m.mac, mac_glob)?,
            uuid,
            arch: m.arch.clone(),
            hostname: globs("hostname", &m.hostname, fact_glob)?,
            serial: globs("serial", &m.serial, fact_glob)?,
            labels: m.labels.clone(),
        })
    }

    /// Each selector's outcome for this machine; the group matches when all matched.
    pub fn evaluate(
        &self,
        facts: &ClientFacts,
        labels: &BTreeMap<String, String>,
    ) -> Vec<SelectorOutcome> {
        let mut out = Vec::new();
        let show = |o: Option<&str>| o.unwrap_or("(unknown)").to_string();
        let join = |v: &[Glob]| {
            v.iter()
                .map(|g| g.to_string())
                .collect::<Vec<_>>()
                .join(" | ")
        };
        if !self.mac.is_empty() {
            let mac = facts.mac.to_string();
            out.push(SelectorOutcome {
                selector: "mac".into(),
                wanted: join(&self.mac),
                matched: self.mac.iter().any(|g| g.matches(&mac)),
                got: mac,
            });
        }
        if !self.uuid.is_empty() {
            out.push(SelectorOutcome {
                selector: "uuid".into(),
                wanted: self.uuid.join(" | "),
                got: show(facts.uuid.as_deref()),
                matched: facts.uuid.as_ref().is_some_and(|u| self.uuid.contains(u)),
            });
        }
        if !self.arch.is_empty() {
            out.push(SelectorOutcome {
                selector: "arch".into(),
                wanted: self
                    .arch
                    .iter()
                    .map(|a| a.name())
                    .collect::<Vec<_>>()
                    .join(" | "),
                got: show(facts.arch.map(|a| a.name())),
                matched: facts.arch.is_some_and(|a| self.arch.contains(&a)),
            });
        }
        for (name, globs, value) in [
            ("hostname", &self.hostname, &facts.hostname),
            ("serial", &self.serial, &facts.serial),
        ] {
            if !globs.is_empty() {
                out.push(SelectorOutcome {
                    selector: name.into(),
                    wanted: join(globs),
                    got: show(value.as_deref()),
                    matched: value
                        .as_ref()
                        .is_some_and(|v| globs.iter().any(|g| g.matches(v))),
                });
            }
        }
        for (k, v) in &self.labels {
            let got = labels.get(k);
            out.push(SelectorOutcome {
                selector: format!("labels.{k}"),
                wanted: v.clone(),
                got: show(got.map(|s| s.as_str())),
                matched: got == Some(v),
            });
        }
        out
    }

    /// True if every selector matches.
    pub fn matches(&self, facts: &ClientFacts, labels: &BTreeMap<String, String>) -> bool {
        self.evaluate(facts, labels).iter().all(|o| o.matched)
    }

    /// Whether some machine could match both groups: for every selector both groups use, the
    /// two value sets must intersect; a selector only one group uses restricts nothing.
    pub fn may_overlap(&self, other: &CompiledGroup) -> bool {
        fn globs_meet(a: &[Glob], b: &[Glob]) -> bool {
            a.is_empty() || b.is_empty() || a.iter().any(|x| b.iter().any(|y| x.intersects(y)))
        }
        fn sets_meet<T: PartialEq>(a: &[T], b: &[T]) -> bool {
            a.is_empty() || b.is_empty() || a.iter().any(|x| b.contains(x))
        }
        let labels_meet = self
            .labels
            .iter()
            .all(|(k, v)| other.labels.get(k).is_none_or(|w| w == v));
        globs_meet(&self.mac, &other.mac)
            && sets_meet(&self.uuid, &other.uuid)
            && sets_meet(&self.arch, &other.arch)
            && globs_meet(&self.hostname, &other.hostname)
            && globs_meet(&self.serial, &other.serial)
            && labels_meet
    }
}

/// The winning group among `groups` for this machine: highest specificity; ties cannot both
/// match in a validated config, and if they do anyway (unvalidated config) the first listed
/// wins and `ambiguous` says so.
pub fn best_group<'a>(
    groups: &'a [CompiledGroup],
    facts: &ClientFacts,
    labels: &BTreeMap<String, String>,
) -> Option<(&'a CompiledGroup, bool)> {
    let mut best: Option<&CompiledGroup> = None;
    let mut ambiguous = false;
    for g in groups.iter().filter(|g| g.matches(facts, labels)) {
        match best {
            None => best = Some(g),
            Some(b) if g.specificity > b.specificity => {
                best = Some(g);
                ambiguous = false;
            }
            Some(b) if g.specificity == b.specificity => ambiguous = true,
            Some(_) => {}
        }
    }
    best.map(|b| (b, ambiguous))
}
