//! Turning a machine's events into boot timelines, and spotting chainload loops. Pure
//! functions over events: no clock, no store.

use std::collections::{HashMap, VecDeque};

use chainboot_machine::Mac;
use chainboot_store::events::EventRecord;
use serde::Serialize;

/// The stages of a network boot, in the order they happen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Stage {
    /// The firmware's PXE (or UEFI HTTP Boot) DHCP exchange.
    FirmwareDhcp,
    /// The first-stage iPXE binary over TFTP (or HTTP for UEFI HTTP Boot).
    FirstStage,
    /// iPXE's own DHCP exchange.
    IpxeDhcp,
    /// The boot script (`/boot.ipxe`, `/ipxe`).
    Script,
    Kernel,
    Initrd,
    /// The installer fetching its per-machine file (`/config/MAC/NAME`: a preseed, kickstart).
    Config,
    /// The installed OS or installer calling back (`installed`, ...).
    OsCallback,
}

impl Stage {
    pub const ALL: [Stage; 8] = [
        Stage::FirmwareDhcp,
        Stage::FirstStage,
        Stage::IpxeDhcp,
        Stage::Script,
        Stage::Kernel,
        Stage::Initrd,
        Stage::Config,
        Stage::OsCallback,
    ];
}

/// Which stage an event belongs to, from its kind and the facts the producers put in it:
/// - `dhcp` events carry `client`: `pxe`, `http-boot` (firmware) or `ipxe`;
/// - `tftp` events carry `first_stage: true` for iPXE binaries;
/// - `http` events carry `what`: `first-stage`, `script`, `kernel`, `initrd`, `config`, ...;
/// - `api` events are callbacks from the booted system.
pub fn stage_of(kind: &str, detail: &serde_json::Value) -> Option<Stage> {
    let s = |k: &str| detail.get(k).and_then(|v| v.as_str());
    match kind {
        "dhcp" => match s("client") {
            Some("pxe") | Some("http-boot") => Some(Stage::FirmwareDhcp),
            Some("ipxe") => Some(Stage::IpxeDhcp),
            _ => None,
        },
        "tftp" => {
            if detail.get("first_stage").and_then(|v| v.as_bool()) == Some(true) {
                Some(Stage::FirstStage)
            } else {
                match s("what") {
                    Some("script") => Some(Stage::Script),
                    Some("kernel") => Some(Stage::Kernel),
                    Some("initrd") => Some(Stage::Initrd),
                    _ => None,
                }
            }
        }
        "http" => match s("what") {
            Some("first-stage") => Some(Stage::FirstStage),
            Some("script") => Some(Stage::Script),
            Some("kernel") => Some(Stage::Kernel),
            Some("initrd") => Some(Stage::Initrd),
            Some("config") => Some(Stage::Config),
            _ => None,
        },
        "api" => Some(Stage::OsCallback),
        _ => None,
    }
}

/// One stage of one boot.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StageSpan {
    pub stage: Stage,
    pub start_ms: i64,
    pub end_ms: i64,
    pub duration_ms: i64,
    /// Events that make it up.
    pub events: usize,
    /// True when any of its events reported an error.
    pub error: bool,
}

/// One boot: from a firmware DHCP exchange to the last event before the next one.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Boot {
    pub start_ms: i64,
    pub end_ms: i64,
    pub stages: Vec<StageSpan>,
    /// The furthest stage reached.
    pub reached: Option<Stage>,
    pub errors: usize,
}

/// A pause this long starts a new boot even without a firmware DHCP event.
pub const BOOT_GAP_MS: i64 = 10 * 60 * 1000;

/// Splits one machine's events (any order) into boots, oldest first.
pub fn boots(events: &[EventRecord]) -> Vec<Boot> {
    let mut sorted: Vec<&EventRecord> = events.iter().collect();
    sorted.sort_by_key(|e| (e.at_ms, e.id));
    let mut out: Vec<Boot> = Vec::new();
    let mut current: Option<Boot> = None;
    for e in sorted {
        let stage = stage_of(&e.kind, &e.detail);
        let starts_new = match (&current, stage) {
            (None, _) => true,
            (Some(b), _) if e.at_ms - b.end_ms > BOOT_GAP_MS => true,
            // A firmware DHCP after the boot got past firmware DHCP is the next power-on.
            (Some(b), Some(Stage::FirmwareDhcp)) => {
                b.reached.is_some_and(|r| r > Stage::FirmwareDhcp)
            }
            _ => false,
        };
        if starts_new {
            if let Some(b) = current.take() {
                out.push(b);
            }
            current = Some(Boot {
                start_ms: e.at_ms,
                end_ms: e.at_ms,
                stages: Vec::new(),
                reached: None,
                errors: 0,
            });
        }
        let Some(boot) = current.as_mut() else {
            continue;
        };
        boot.end_ms = boot.end_ms.max(e.at_ms);
        let error = crate::detail::is_error(&e.detail);
        if error {
            boot.errors += 1;
        }
        let Some(stage) = stage else { continue };
        boot.reached = Some(boot.reached.map_or(stage, |r| r.max(stage)));
        // A transfer event is logged when it ends; its duration says when it began.
        let duration = e
            .detail
            .get("duration_ms")
            .and_then(|v| v.as_i64())
            .unwrap_or(0)
            .max(0);
        let begin = e.at_ms - duration;
        match boot.stages.iter_mut().find(|s| s.stage == stage) {
            Some(span) => {
                span.start_ms = span.start_ms.min(begin);
                span.end_ms = span.end_ms.max(e.at_ms);
                span.duration_ms = span.end_ms - span.start_ms;
                span.events += 1;
                span.error |= error;
            }
            None => boot.stages.push(StageSpan {
                stage,
                start_ms: begin,
                end_ms: e.at_ms,
                duration_ms: e.at_ms - begin,
                events: 1,
                error,
            }),
        }
        boot.stages.sort_by_key(|s| s.stage);
    }
    if let Some(b) = current {
        out.push(b);
    }
    out
}

/// A machine fetched the first stage repeatedly without reaching HTTP.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoopAlert {
    pub mac: Mac,
    pub fetches: usize,
    pub window_ms: i64,
}

/// Counts first-stage fetches per machine; HTTP progress (a script fetched) clears the count.
/// Three fetches within two minutes (the defaults) is a loop: firmware that keeps being told
/// to load iPXE, typically because another DHCP server hands out the boot file too, or because
/// the iPXE build lacks HTTP and is sent back to TFTP forever.
#[derive(Debug, Clone)]
pub struct LoopDetector {
    threshold: usize,
    window_ms: i64,
    fetches: HashMap<Mac, VecDeque<i64>>,
}

/// Machines tracked at once; beyond it the stalest are forgotten (memory stays bounded under a
/// flood of fake MACs).
const MAX_TRACKED: usize = 10_000;

impl LoopDetector {
    pub fn new(threshold: usize, window_ms: i64) -> LoopDetector {
        LoopDetector {
            threshold: threshold.max(2),
            window_ms,
            fetches: HashMap::new(),
        }
    }

    /// Feeds one event; returns an alert when this event completes a loop.
    pub fn observe(&mut self, at_ms: i64, mac: Mac, stage: Stage) -> Option<LoopAlert> {
        match stage {
            Stage::FirstStage => {
                if self.fetches.len() >= MAX_TRACKED && !self.fetches.contains_key(&mac) {
                    let cutoff = at_ms - self.window_ms;
                    self.fetches
                        .retain(|_, q| q.back().is_some_and(|&t| t >= cutoff));
                    if self.fetches.len() >= MAX_TRACKED {
                        return None;
                    }
                }
                let q = self.fetches.entry(mac).or_default();
                q.push_back(at_ms);
                while q.front().is_some_and(|&t| at_ms - t > self.window_ms) {
                    q.pop_front();
                }
                if q.len() >= self.threshold {
                    let fetches = q.len();
                    q.clear();
                    return Some(LoopAlert {
                        mac,
                        fetches,
                        window_ms: self.window_ms,
                    });
                }
                None
            }
            Stage::Script | Stage::Kernel | Stage::Initrd | Stage::Config | Stage::OsCallback => {
                self.fetches.remove(&mac);
                None
            }
            Stage::FirmwareDhcp | Stage::IpxeDhcp => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detail::{Detail, DhcpDetail, HttpDetail, Outcome, TftpDetail};
    use serde_json::json;

    fn ev<D: Detail>(id: i64, at: i64, d: &D) -> EventRecord {
        EventRecord {
            id,
            at_ms: at,
            mac: Some("52:54:00:00:00:01".parse().unwrap()),
            kind: D::KIND.into(),
            detail: d.to_json(),
            server: None,
        }
    }

    fn dhcp(msg: &str, client: &'static str, outcome: Outcome) -> DhcpDetail {
        DhcpDetail {
            family: "ipv4",
            msg: msg.into(),
            client,
            arch: Some(7),
            iface: "veth0".into(),
            port: 67,
            outcome,
            reason: None,
            address: Some("198.18.0.100".into()),
            decision: serde_json::Value::Null,
        }
    }

    fn tftp(path: &str, bytes: u64, duration_ms: u64, outcome: Outcome) -> TftpDetail {
        TftpDetail {
            client: "198.18.0.100:1024".into(),
            path: path.into(),
            what: "first-stage",
            first_stage: true,
            bytes,
            blksize: 1468,
            windowsize: 1,
            duration_ms,
            mb_per_s: 1.0,
            outcome,
            error: outcome.is_error().then(|| "timed out".into()),
            note: (outcome == Outcome::SizeProbe)
                .then(|| "client error 8: User aborted the transfer".into()),
        }
    }

    fn http(what: &'static str, status: u16, duration_ms: u64) -> HttpDetail {
        HttpDetail {
            client: "198.18.0.100:40000".into(),
            method: "GET".into(),
            path: format!("/{what}"),
            what,
            status,
            outcome: Outcome::of_http_status(status),
            bytes: 1000,
            duration_ms,
            complete: true,
        }
    }

    /// A UEFI boot as the servers record it: DHCP offer and ack, OVMF's size probe of the
    /// first stage, then the real download, iPXE's DHCP, script, kernel, initrd.
    fn a_full_boot(t0: i64, id0: i64) -> Vec<EventRecord> {
        vec![
            ev(id0, t0, &dhcp("discover", "pxe", Outcome::Offer)),
            ev(id0 + 1, t0 + 100, &dhcp("request", "pxe", Outcome::Ack)),
            ev(
                id0 + 2,
                t0 + 150,
                &tftp("ipxe.efi", 0, 10, Outcome::SizeProbe),
            ),
            ev(
                id0 + 3,
                t0 + 900,
                &tftp("ipxe.efi", 1_000_000, 700, Outcome::Ok),
            ),
            ev(
                id0 + 4,
                t0 + 3000,
                &dhcp("discover", "ipxe", Outcome::Offer),
            ),
            ev(id0 + 5, t0 + 3050, &dhcp("request", "ipxe", Outcome::Ack)),
            ev(id0 + 6, t0 + 3100, &http("script", 200, 5)),
            ev(id0 + 7, t0 + 3500, &http("kernel", 200, 300)),
            ev(id0 + 8, t0 + 4500, &http("initrd", 200, 900)),
        ]
    }

    #[test]
    fn a_boot_becomes_ordered_stages_with_durations() {
        let b = boots(&a_full_boot(1_000, 1));
        assert_eq!(b.len(), 1);
        let stages: Vec<Stage> = b[0].stages.iter().map(|s| s.stage).collect();
        assert_eq!(
            stages,
            vec![
                Stage::FirmwareDhcp,
                Stage::FirstStage,
                Stage::IpxeDhcp,
                Stage::Script,
                Stage::Kernel,
                Stage::Initrd
            ]
        );
        assert_eq!(b[0].stages[0].duration_ms, 100);
        assert_eq!(
            b[0].stages[1].start_ms, 1_140,
            "TFTP began duration_ms before it ended"
        );
        assert_eq!(b[0].reached, Some(Stage::Initrd));
        assert_eq!(b[0].errors, 0);
    }

    #[test]
    fn the_next_power_on_starts_a_new_boot_and_errors_show() {
        let mut events = a_full_boot(1_000, 1);
        let mut second = a_full_boot(20_000, 100);
        second[7] = ev(107, 23_500, &http("kernel", 404, 3));
        events.extend(second);
        let b = boots(&events);
        assert_eq!(b.len(), 2);
        assert_eq!(b[1].start_ms, 20_000);
        assert_eq!(b[1].errors, 1);
        assert!(b[1]
            .stages
            .iter()
            .any(|s| s.stage == Stage::Kernel && s.error));
    }

    #[test]
    fn the_installer_config_fetch_is_a_stage_and_failed_transfers_are_errors() {
        let mut events = a_full_boot(1_000, 1);
        events.push(ev(20, 9_000, &http("config", 200, 2)));
        let b = boots(&events);
        assert_eq!(b[0].reached, Some(Stage::Config));
        assert_eq!(b[0].errors, 0);
        // The same boot where the first stage timed out once and the DHCP server had no
        // address for the machine's second try.
        events.push(ev(
            21,
            9_100,
            &tftp("ipxe.efi", 4096, 9000, Outcome::TimedOut),
        ));
        let mut refused = dhcp("discover", "ipxe", Outcome::Refused);
        refused.reason = Some("pool-exhausted");
        events.push(ev(22, 9_200, &refused));
        let b = boots(&events);
        assert_eq!(b[0].errors, 2, "{b:?}");
    }

    #[test]
    fn repeated_first_stage_without_http_is_a_loop_and_a_normal_boot_is_not() {
        let mac: Mac = "52:54:00:00:00:01".parse().unwrap();
        let mut d = LoopDetector::new(3, 120_000);
        // Normal boots, several in a row: each reaches the script.
        for i in 0..5 {
            let t = i * 10_000;
            assert_eq!(d.observe(t, mac, Stage::FirstStage), None);
            assert_eq!(d.observe(t + 3_000, mac, Stage::Script), None);
        }
        // A loop: first stage, first stage, first stage.
        assert_eq!(d.observe(100_000, mac, Stage::FirstStage), None);
        assert_eq!(d.observe(110_000, mac, Stage::FirstStage), None);
        let alert = d.observe(120_000, mac, Stage::FirstStage).unwrap();
        assert_eq!(alert.fetches, 3);
        // Spread over more than the window: not a loop.
        let other: Mac = "52:54:00:00:00:02".parse().unwrap();
        assert_eq!(d.observe(0, other, Stage::FirstStage), None);
        assert_eq!(d.observe(130_000, other, Stage::FirstStage), None);
        assert_eq!(d.observe(260_000, other, Stage::FirstStage), None);
    }

    #[test]
    fn stage_classification_follows_the_producers_facts() {
        assert_eq!(
            stage_of("dhcp", &json!({"client": "http-boot"})),
            Some(Stage::FirmwareDhcp)
        );
        assert_eq!(stage_of("dhcp", &json!({"client": "other"})), None);
        assert_eq!(stage_of("tftp", &json!({"first_stage": false})), None);
        assert_eq!(
            stage_of("http", &json!({"what": "first-stage"})),
            Some(Stage::FirstStage)
        );
        assert_eq!(
            stage_of("api", &json!({"event": "installed"})),
            Some(Stage::OsCallback)
        );
        assert_eq!(stage_of("chainload-loop", &json!({})), None);
    }
}
