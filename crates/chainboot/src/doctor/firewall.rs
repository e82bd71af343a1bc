//! Whether the host's nftables ruleset lets a new request to one of chainboot's ports in:
//! the input-hook filter chains of the `ip` and `inet` families (`nft -j list ruleset`), read
//! rule by rule as a new packet to that port would meet them.
//!
//! Only what can be read for certain decides: a rule that matches on anything else (source
//! addresses, marks, iptables-nft's xt matches, jumps) is skipped, and a drop that such a
//! rule might have prevented is reported as "may drop".

use serde_json::Value;

use super::ports::Proto;

/// What the ruleset does with a new request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fate {
    Accepted,
    /// Dropped or rejected: by which rule or policy, and whether a rule this reader could
    /// not judge came first (then it only may be).
    Dropped {
        by: String,
        /// The chain as `nft` names it (`inet filter input`).
        chain: String,
        certain: bool,
    },
}

/// A new request's fate in the ruleset `json` (the output of `nft -j list ruleset`), arriving
/// on `interface` for `proto` port `port`.
pub fn fate(json: &Value, proto: Proto, port: u16, interface: Option<&str>) -> Fate {
    let items = json
        .get("nftables")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default();
    let mut chains: Vec<(&Value, i64)> = items
        .iter()
        .filter_map(|i| i.get("chain"))
        .filter(|c| {
            c.get("hook").and_then(Value::as_str) == Some("input")
                && matches!(c.get("family").and_then(Value::as_str), Some("ip" | "inet"))
        })
        .map(|c| (c, c.get("prio").and_then(Value::as_i64).unwrap_or(0)))
        .collect();
    chains.sort_by_key(|(_, p)| *p);
    for (chain, _) in chains {
        let key = |v: &Value, k: &str| v.get(k).and_then(Value::as_str).map(str::to_owned);
        let (family, table, name) = (
            key(chain, "family"),
            key(chain, "table"),
            key(chain, "name"),
        );
        let mut unsure = false;
        let mut verdict = None;
        for rule in items.iter().filter_map(|i| i.get("rule")) {
            if key(rule, "family") != family
                || key(rule, "table") != table
                || key(rule, "chain") != name
            {
                continue;
            }
            match judge(rule, proto, port, interface) {
                Judged::NotForUs => {}
                Judged::Unknown => unsure = true,
                Judged::Verdict(v) => {
                    verdict = Some((v, rule.get("handle").and_then(Value::as_i64)));
                    break;
                }
            }
        }
        let at = format!(
            "{} {} {}",
            family.as_deref().unwrap_or("?"),
            table.as_deref().unwrap_or("?"),
            name.as_deref().unwrap_or("?")
        );
        match verdict {
            Some((Verdict::Accept, _)) => continue,
            Some((Verdict::Drop(word), handle)) => {
                return Fate::Dropped {
                    by: format!(
                        "a `{word}` rule in chain {at} (handle {})",
                        handle.unwrap_or(-1)
                    ),
                    chain: at,
                    certain: !unsure,
                }
            }
            None => {
                if chain.get("policy").and_then(Value::as_str) == Some("drop") {
                    return Fate::Dropped {
                        by: format!("the drop policy of chain {at}"),
                        chain: at,
                        certain: !unsure,
                    };
                }
            }
        }
    }
    Fate::Accepted
}

enum Verdict {
    Accept,
    Drop(&'static str),
}

enum Judged {
    NotForUs,
    Unknown,
    Verdict(Verdict),
}

fn judge(rule: &Value, proto: Proto, port: u16, interface: Option<&str>) -> Judged {
    let Some(exprs) = rule.get("expr").and_then(Value::as_array) else {
        return Judged::Unknown;
    };
    let want = match proto {
        Proto::Udp => "udp",
        Proto::Tcp => "tcp",
    };
    let mut applies = true;
    for e in exprs {
        if let Some(m) = e.get("match") {
            let left = m.get("left").unwrap_or(&Value::Null);
            let right = m.get("right").unwrap_or(&Value::Null);
            let negated = m.get("op").and_then(Value::as_str) == Some("!=");
            let hit = if let Some(p) = left.get("payload") {
                match (
                    p.get("protocol").and_then(Value::as_str),
                    p.get("field").and_then(Value::as_str),
                ) {
                    (Some(pr), Some("dport")) if pr == want => contains_port(right, port),
                    (Some("udp" | "tcp"), Some("dport")) => Some(false),
                    _ => None,
                }
            } else if let Some(meta) = left.get("meta") {
                match meta.get("key").and_then(Value::as_str) {
                    Some("l4proto") => Some(contains_str(right, want)),
                    Some("iifname") => interface.map(|i| contains_str(right, i)),
                    _ => None,
                }
            } else if left
                .get("ct")
                .and_then(|c| c.get("key"))
                .and_then(Value::as_str)
                == Some("state")
            {
                Some(contains_str(right, "new"))
            } else {
                None
            };
            match hit.map(|h| h != negated) {
                Some(true) => {}
                Some(false) => applies = false,
                None => return Judged::Unknown,
            }
        } else if e.get("accept").is_some() {
            return if applies {
                Judged::Verdict(Verdict::Accept)
            } else {
                Judged::NotForUs
            };
        } else if e.get("drop").is_some() || e.get("reject").is_some() {
            let word = if e.get("drop").is_some() {
                "drop"
            } else {
                "reject"
            };
            return if applies {
                Judged::Verdict(Verdict::Drop(word))
            } else {
                Judged::NotForUs
            };
        } else if e.get("counter").is_some() || e.get("log").is_some() {
            continue;
        } else {
            // jump, goto, set updates, limits...: not judged here.
            return if applies {
                Judged::Unknown
            } else {
                Judged::NotForUs
            };
        }
    }
    Judged::NotForUs
}

fn contains_port(right: &Value, port: u16) -> Option<bool> {
    let p = i64::from(port);
    if let Some(n) = right.as_i64() {
        return Some(n == p);
    }
    if let Some([lo, hi]) = right
        .get("range")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
    {
        return Some(lo.as_i64()? <= p && p <= hi.as_i64()?);
    }
    if let Some(set) = right.get("set").and_then(Value::as_array) {
        let mut any = false;
        for v in set {
            any |= contains_port(v, port)?;
        }
        return Some(any);
    }
    None
}

fn contains_str(right: &Value, want: &str) -> bool {
    match right {
        Value::String(s) => s == want,
        Value::Array(a) => a.iter().any(|v| v.as_str() == Some(want)),
        Value::Object(_) => right
            .get("set")
            .and_then(Value::as_array)
            .is_some_and(|a| a.iter().any(|v| v.as_str() == Some(want))),
        _ => false,
    }
}

/// The ruleset of this network namespace, or why it could not be read.
pub fn ruleset() -> Result<Value, String> {
    let out = std::process::Command::new("nft")
        .args(["-j", "list", "ruleset"])
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|e| format!("nft: {e} (package nftables)"))?;
    if !out.status.success() {
        return Err(format!(
            "nft -j list ruleset: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    serde_json::from_slice(&out.stdout).map_err(|e| format!("nft -j list ruleset: {e}"))
}

/// Why the DHCP probe on `interface` could hear no answer: this host's ruleset drops the
/// servers' replies to UDP port 68 there (as far as it can tell). `None` when it lets them in
/// or cannot be read.
pub fn probe_replies_dropped(interface: &str) -> Option<(String, String)> {
    let rules = ruleset().ok()?;
    match fate(&rules, Proto::Udp, 68, Some(interface)) {
        Fate::Dropped {
            by,
            chain,
            certain: true,
        } => Some((by, chain)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn chain(policy: &str) -> Value {
        json!({"chain": {"family": "inet", "table": "filter", "name": "input", "handle": 1,
            "type": "filter", "hook": "input", "prio": 0, "policy": policy}})
    }

    fn rule(handle: i64, expr: Value) -> Value {
        json!({"rule": {"family": "inet", "table": "filter", "chain": "input",
            "handle": handle, "expr": expr}})
    }

    fn dport(proto: &str, right: Value) -> Value {
        json!({"match": {"op": "==", "left": {"payload": {"protocol": proto, "field": "dport"}},
            "right": right}})
    }

    #[test]
    fn a_drop_policy_drops_ports_no_rule_accepts() {
        let rs = json!({"nftables": [
            chain("drop"),
            rule(2, json!([{"match": {"op": "in", "left": {"ct": {"key": "state"}},
                "right": ["established", "related"]}}, {"accept": null}])),
            rule(3, json!([dport("tcp", json!({"set": [22, 80]})), {"accept": null}])),
            rule(4, json!([dport("udp", json!({"range": [67, 68]})), {"accept": null}])),
        ]});
        assert_eq!(fate(&rs, Proto::Tcp, 80, Some("eth1")), Fate::Accepted);
        assert_eq!(fate(&rs, Proto::Udp, 67, Some("eth1")), Fate::Accepted);
        assert_eq!(
            fate(&rs, Proto::Udp, 69, Some("eth1")),
            Fate::Dropped {
                by: "the drop policy of chain inet filter input".into(),
                chain: "inet filter input".into(),
                certain: true
            }
        );
    }

    #[test]
    fn a_reject_rule_for_the_port_is_named() {
        let rs = json!({"nftables": [
            chain("accept"),
            rule(7, json!([dport("udp", json!(69)), {"counter": {"packets": 0, "bytes": 0}},
                {"reject": null}])),
        ]});
        assert_eq!(
            fate(&rs, Proto::Udp, 69, None),
            Fate::Dropped {
                by: "a `reject` rule in chain inet filter input (handle 7)".into(),
                chain: "inet filter input".into(),
                certain: true
            }
        );
        assert_eq!(fate(&rs, Proto::Udp, 67, None), Fate::Accepted);
        assert_eq!(fate(&rs, Proto::Tcp, 69, None), Fate::Accepted);
    }

    #[test]
    fn a_rule_it_cannot_judge_makes_a_drop_uncertain() {
        let rs = json!({"nftables": [
            chain("drop"),
            rule(2, json!([{"match": {"op": "==", "left": {"payload": {"protocol": "ip",
                "field": "saddr"}}, "right": "198.18.0.0/24"}}, {"accept": null}])),
        ]});
        assert!(matches!(
            fate(&rs, Proto::Udp, 67, None),
            Fate::Dropped { certain: false, .. }
        ));
    }

    #[test]
    fn an_empty_ruleset_accepts() {
        assert_eq!(
            fate(&json!({"nftables": []}), Proto::Udp, 67, None),
            Fate::Accepted
        );
    }
}
