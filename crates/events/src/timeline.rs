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
    /// The stage's name, as serialised (`firmware-dhcp`, `first-stage`, ...).
    pub fn name(self) -> &'static str {
        match self {
            Stage::FirmwareDhcp => "firmware-dhcp",
            Stage::FirstStage => "first-stage",
            Stage::IpxeDhcp => "ipxe-dhcp",
            Stage::Script => "script",
            Stage::Kernel => "kernel",
            Stage::Initrd => "initrd",
            Stage::Config => "config",
            Stage::OsCallback => "os-callback",
        }
    }

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
/// - `dhcp` events carry `client`: `pxe`, `http-boot` (firmware) or `ipxe`; giving an address
///   back or extending its lease (`msg` `release`, `decline`, `renew`, `rebind`) is no step of
///   a boot: UEFI firmware releases its DHCPv6 address when it leaves a boot option, also
///   after it fetched the first stage, and that must not look like the next power-on (nor,
///   to [`SecureBootDetector`], like the firmware back at DHCP after refusing the first stage);
/// - `tftp` events carry `first_stage: true` for iPXE binaries;
/// - `http` events carry `what`: `first-stage`, `script`, `kernel`, `initrd`, `config`, ...;
/// - `api` events are callbacks from the booted system.
pub fn stage_of(kind: &str, detail: &serde_json::Value) -> Option<Stage> {
    let s = |k: &str| detail.get(k).and_then(|v| v.as_str());
    match kind {
        "dhcp" if matches!(s("msg"), Some("release" | "decline" | "renew" | "rebind")) => None,
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
    /// The firmware refused the unsigned first stage in this boot (Secure Boot, probably):
    /// `proven` when the fetches came from the machine's own address.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secure_boot_refused: Option<RefusalNote>,
}

/// A Secure Boot refusal as a boot's timeline shows it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RefusalNote {
    pub at_ms: i64,
    pub proven: bool,
    pub evidence: String,
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
        // An operator's change (a re-arm, a pin) is no part of a boot: it neither starts one
        // nor stretches it.
        if e.kind == crate::OPERATOR {
            continue;
        }
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
                secure_boot_refused: None,
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
        if e.kind == crate::SECURE_BOOT_REFUSED {
            boot.secure_boot_refused = Some(RefusalNote {
                at_ms: e.at_ms,
                proven: e.detail.get("proven").and_then(|v| v.as_bool()) == Some(true),
                evidence: e
                    .detail
                    .get("evidence")
                    .and_then(|v| v.as_str())
                    .unwrap_or("")
                    .to_string(),
            });
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

/// What an event tells the Secure Boot refusal detector.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SecureBootSignal {
    /// A UEFI machine took an unsigned first stage whole (iPXE's `.efi`, not a file of the
    /// signed chains' `secureboot/` folder). `proven` when the fetch came from the machine's
    /// own address (the producer's `own_address`: chainboot's lease of that address for the
    /// MAC, and the kernel's neighbour table naming the same hardware address).
    UnsignedUefiFirstStage { proven: bool },
    /// The firmware asked DHCP again (this or its next boot option).
    FirmwareDhcp,
    /// iPXE (or anything after it) ran: the first stage was not refused.
    Progress,
}

/// The folder of the signed chains' files (TFTP and `/ipxe-bin/`): fetching one of them is
/// never the unsigned first stage.
const SIGNED_FOLDER: &str = "secureboot/";

/// Classifies an event for [`SecureBootDetector`].
pub fn secure_boot_signal(kind: &str, detail: &serde_json::Value) -> Option<SecureBootSignal> {
    let stage = stage_of(kind, detail)?;
    match stage {
        Stage::FirmwareDhcp => Some(SecureBootSignal::FirmwareDhcp),
        Stage::FirstStage => {
            let path = detail.get("path").and_then(|v| v.as_str()).unwrap_or("");
            let path = path.trim_start_matches('/');
            let path = path.strip_prefix("ipxe-bin/").unwrap_or(path);
            let whole = detail.get("outcome").and_then(|v| v.as_str()) == Some("ok");
            let efi = path.to_ascii_lowercase().ends_with(".efi");
            let signed = path.to_ascii_lowercase().starts_with(SIGNED_FOLDER);
            let proven = detail.get("own_address").and_then(|v| v.as_bool()) == Some(true);
            (whole && efi && !signed).then_some(SecureBootSignal::UnsignedUefiFirstStage { proven })
        }
        Stage::IpxeDhcp
        | Stage::Script
        | Stage::Kernel
        | Stage::Initrd
        | Stage::Config
        | Stage::OsCallback => Some(SecureBootSignal::Progress),
    }
}

/// A UEFI machine that took the unsigned first stage and never ran it. Its firmware almost
/// surely refused to run it (Secure Boot: "Access Denied", then the next boot option).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecureBootAlert {
    pub mac: Mac,
    /// From the end of the first stage's download to the moment the refusal was concluded.
    pub after_ms: i64,
    /// What showed it: `silence` (no iPXE within [`SECURE_BOOT_SILENCE_MS`]),
    /// `fetched-again` (the unsigned first stage again, never run in between) or
    /// `firmware-dhcp` (back at the firmware's DHCP: for an unproven fetch only).
    pub evidence: &'static str,
    /// Every fetch it rests on came from the machine's own address, and its evidence is
    /// something a stranger cannot forge (silence, or another such fetch). Only a proven
    /// refusal may switch the machine's loader.
    pub proven: bool,
}

/// A machine that took the unsigned first stage and has not run it yet.
#[derive(Debug, Clone, Copy)]
struct Pending {
    at_ms: i64,
    proven: bool,
}

/// Spots machines whose firmware refuses the unsigned first stage. A healthy UEFI boot goes
/// first stage → iPXE's own DHCP within seconds; a refused one goes first stage → the
/// firmware's DHCP again (its next boot option, or the same one retried), often → the first
/// stage again (OVMF's HTTP Boot option), or → nothing (OVMF's PXE over IPv6 waits minutes).
/// BIOS machines never trip it (their first stage is not an `.efi`), nor do machines on a
/// signed chain.
///
/// What counts as proof: a DHCP request names whatever MAC its sender typed, so it never
/// concludes a proven refusal. A fetch from the machine's own address that is followed by
/// silence, or by another such fetch with no progress in between, does. A fetch from an
/// address not shown to be the machine's concludes (at the firmware's DHCP, another fetch or
/// silence) as an unproven observation only.
#[derive(Debug, Clone)]
pub struct SecureBootDetector {
    silence_ms: i64,
    took_unsigned: HashMap<Mac, Pending>,
}

/// How long iPXE may take from the end of its download to its first DHCP request before the
/// machine counts as having refused it. iPXE asks within a few seconds on hardware and under
/// QEMU's TCG on a busy host alike; a minute leaves a wide margin.
pub const SECURE_BOOT_SILENCE_MS: i64 = 60_000;

impl SecureBootDetector {
    pub fn new(silence_ms: i64) -> SecureBootDetector {
        SecureBootDetector {
            silence_ms,
            took_unsigned: HashMap::new(),
        }
    }

    /// Feeds one event; returns an alert when it completes the refusal pattern.
    pub fn observe(
        &mut self,
        at_ms: i64,
        mac: Mac,
        signal: SecureBootSignal,
    ) -> Option<SecureBootAlert> {
        match signal {
            SecureBootSignal::UnsignedUefiFirstStage { proven } => {
                if let Some(before) = self.took_unsigned.get(&mac).copied() {
                    // Taken twice and run neither time.
                    self.took_unsigned.remove(&mac);
                    return Some(SecureBootAlert {
                        mac,
                        after_ms: at_ms - before.at_ms,
                        evidence: "fetched-again",
                        proven: before.proven && proven,
                    });
                }
                if self.took_unsigned.len() >= MAX_TRACKED {
                    return None;
                }
                self.took_unsigned.insert(mac, Pending { at_ms, proven });
                None
            }
            SecureBootSignal::FirmwareDhcp => {
                let pending = self.took_unsigned.get(&mac).copied()?;
                if pending.proven {
                    // Anyone can send it: a proven fetch waits for silence or another fetch.
                    return None;
                }
                self.took_unsigned.remove(&mac);
                Some(SecureBootAlert {
                    mac,
                    after_ms: at_ms - pending.at_ms,
                    evidence: "firmware-dhcp",
                    proven: false,
                })
            }
            SecureBootSignal::Progress => {
                self.took_unsigned.remove(&mac);
                None
            }
        }
    }

    /// Machines silent since their download for longer than the silence limit, as of `now_ms`
    /// (called periodically; each machine is reported once).
    pub fn expire(&mut self, now_ms: i64) -> Vec<SecureBootAlert> {
        let silent: Vec<(Mac, Pending)> = self
            .took_unsigned
            .iter()
            .filter(|(_, p)| now_ms - p.at_ms >= self.silence_ms)
            .map(|(m, p)| (*m, *p))
            .collect();
        silent
            .into_iter()
            .map(|(mac, p)| {
                self.took_unsigned.remove(&mac);
                SecureBootAlert {
                    mac,
                    after_ms: now_ms - p.at_ms,
                    evidence: "silence",
                    proven: p.proven,
                }
            })
            .collect()
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
            source: Default::default(),
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
            source: Default::default(),
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
    fn an_operator_change_is_neither_a_boot_nor_a_stage_of_one() {
        let op = |id: i64, at: i64| EventRecord {
            id,
            at_ms: at,
            mac: Some("52:54:00:00:00:01".parse().unwrap()),
            kind: crate::OPERATOR.into(),
            detail: json!({"action": "rearm", "detail": {"error": "x"}}),
            server: Some("pxe-b".into()),
        };
        // A re-arm long after the boot, then one in the middle of the next boot.
        let mut list = a_full_boot(1_000, 1);
        list.push(op(20, 10_000_000));
        list.extend(a_full_boot(20_000_000, 30));
        list.push(op(50, 20_003_200));
        let b = boots(&list);
        assert_eq!(b.len(), 2, "{b:?}");
        assert_eq!(
            b[0].end_ms, 5_500,
            "the re-arm does not stretch the boot before it"
        );
        assert_eq!(b[1].stages.len(), 6);
        assert_eq!(b[1].errors, 0);
        assert_eq!(
            b,
            boots(
                &a_full_boot(1_000, 1)
                    .into_iter()
                    .chain(a_full_boot(20_000_000, 30))
                    .collect::<Vec<_>>()
            )
        );
    }

    #[test]
    fn a_secure_boot_refusal_shows_in_the_boot_where_it_happened() {
        let mut events = a_full_boot(1_000, 1);
        let mut refused = a_full_boot(20_000, 100);
        refused.truncate(4);
        refused.push(EventRecord {
            id: 200,
            at_ms: 80_900,
            mac: refused[0].mac,
            kind: crate::SECURE_BOOT_REFUSED.into(),
            detail: json!({"evidence": "silence", "proven": true}),
            server: None,
        });
        events.extend(refused);
        let b = boots(&events);
        assert_eq!(b.len(), 2);
        assert_eq!(b[0].secure_boot_refused, None);
        assert_eq!(
            b[1].secure_boot_refused,
            Some(RefusalNote {
                at_ms: 80_900,
                proven: true,
                evidence: "silence".into()
            })
        );
        assert_eq!(b[1].reached, Some(Stage::FirstStage));
        let json = serde_json::to_value(&b).unwrap();
        assert!(json[0].get("secure_boot_refused").is_none(), "{json}");
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

    /// A UEFI PXE boot over IPv6 as OVMF runs it: Solicit/Request, the first stage over TFTP,
    /// then the firmware's Release of its address (sent when it leaves the boot option, after
    /// the download), then iPXE.
    #[test]
    fn a_firmware_release_after_the_first_stage_stays_in_the_same_boot() {
        let mut events = vec![
            ev(1, 1_000, &dhcp("solicit", "pxe", Outcome::Offer)),
            ev(2, 1_100, &dhcp("request", "pxe", Outcome::Ack)),
            ev(3, 1_900, &tftp("ipxe.efi", 1_000_000, 700, Outcome::Ok)),
            ev(4, 2_100, &dhcp("release", "pxe", Outcome::Ack)),
            ev(5, 20_000, &dhcp("solicit", "ipxe", Outcome::Offer)),
            ev(6, 20_050, &dhcp("request", "ipxe", Outcome::Ack)),
            ev(7, 20_100, &http("script", 200, 5)),
            ev(8, 20_500, &http("kernel", 200, 300)),
            ev(9, 21_500, &http("initrd", 200, 900)),
        ];
        let b = boots(&events);
        assert_eq!(b.len(), 1, "{b:?}");
        assert_eq!(b[0].reached, Some(Stage::Initrd));
        let firmware = &b[0].stages[0];
        assert_eq!(firmware.stage, Stage::FirmwareDhcp);
        assert_eq!(
            (firmware.events, firmware.end_ms),
            (2, 1_100),
            "the release is no part of the firmware's DHCP stage"
        );
        // The next power-on still starts a new boot.
        events.push(ev(10, 60_000, &dhcp("solicit", "pxe", Outcome::Offer)));
        assert_eq!(boots(&events).len(), 2);
        // And the Secure Boot detector does not take the release for the firmware back at
        // DHCP after refusing the first stage.
        assert_eq!(
            secure_boot_signal("dhcp", &dhcp("release", "pxe", Outcome::Ack).to_json()),
            None
        );
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
    fn sb_trace(events: &[(i64, &str, serde_json::Value)]) -> Vec<SecureBootAlert> {
        let mac: Mac = "52:54:00:00:00:01".parse().unwrap();
        let mut d = SecureBootDetector::new(SECURE_BOOT_SILENCE_MS);
        let mut out = Vec::new();
        for (at, kind, detail) in events {
            out.extend(d.expire(*at));
            if let Some(signal) = secure_boot_signal(kind, detail) {
                out.extend(d.observe(*at, mac, signal));
            }
        }
        out
    }

    /// A first-stage event; `own` when its source address was the machine's own.
    fn fetch(path: &str, outcome: &str, own: bool) -> serde_json::Value {
        json!({"path": path, "first_stage": true, "what": "first-stage", "outcome": outcome,
            "own_address": own})
    }

    fn first_stage(path: &str, outcome: &str) -> serde_json::Value {
        fetch(path, outcome, true)
    }

    fn summary(alerts: &[SecureBootAlert]) -> Vec<(&'static str, bool)> {
        alerts.iter().map(|a| (a.evidence, a.proven)).collect()
    }

    #[test]
    fn a_proven_unsigned_fetch_followed_by_silence_or_another_fetch_is_a_proven_refusal() {
        // OVMF's next option is PXE over IPv6, which waits minutes: silence says it, even
        // with the firmware's DHCP in between (a DHCP request proves nothing by itself).
        let alerts = sb_trace(&[
            (0, "dhcp", json!({"client": "pxe"})),
            (900, "tftp", first_stage("ipxe.efi", "size-probe")),
            (2_000, "tftp", first_stage("ipxe.efi", "ok")),
            (3_500, "dhcp", json!({"client": "http-boot"})),
            (
                2_000 + SECURE_BOOT_SILENCE_MS,
                "dhcp",
                json!({"client": "other"}),
            ),
        ]);
        assert_eq!(
            alerts,
            [SecureBootAlert {
                mac: "52:54:00:00:00:01".parse().unwrap(),
                after_ms: SECURE_BOOT_SILENCE_MS,
                evidence: "silence",
                proven: true,
            }]
        );
        // OVMF's HTTP Boot option takes the unsigned binary again and refuses it again.
        let alerts = sb_trace(&[
            (2_000, "tftp", first_stage("ipxe.efi", "ok")),
            (3_500, "dhcp", json!({"client": "http-boot"})),
            (4_000, "http", first_stage("/ipxe-bin/ipxe.efi", "ok")),
        ]);
        assert_eq!(summary(&alerts), [("fetched-again", true)]);
    }

    #[test]
    fn a_fetch_from_an_address_not_the_machines_is_an_unproven_observation_only() {
        // A stranger's DHCP naming the machine, its fetch from its own address, then silence.
        let alerts = sb_trace(&[
            (0, "dhcp", json!({"client": "pxe"})),
            (2_000, "tftp", fetch("ipxe.efi", "ok", false)),
            (
                2_000 + SECURE_BOOT_SILENCE_MS,
                "dhcp",
                json!({"client": "other"}),
            ),
        ]);
        assert_eq!(summary(&alerts), [("silence", false)]);
        // ... or its next DHCP request naming the machine.
        let alerts = sb_trace(&[
            (2_000, "tftp", fetch("ipxe.efi", "ok", false)),
            (3_000, "dhcp", json!({"client": "pxe"})),
        ]);
        assert_eq!(summary(&alerts), [("firmware-dhcp", false)]);
        // A stranger's fetch beside the machine's own proves nothing either.
        let alerts = sb_trace(&[
            (2_000, "tftp", fetch("ipxe.efi", "ok", false)),
            (2_500, "tftp", first_stage("ipxe.efi", "ok")),
        ]);
        assert_eq!(summary(&alerts), [("fetched-again", false)]);
    }

    #[test]
    fn healthy_boots_and_signed_chains_never_look_refused() {
        // UEFI: iPXE's own DHCP follows the first stage.
        assert!(sb_trace(&[
            (0, "dhcp", json!({"client": "pxe"})),
            (2_000, "tftp", first_stage("ipxe.efi", "ok")),
            (3_000, "dhcp", json!({"client": "ipxe"})),
            (9_000, "dhcp", json!({"client": "pxe"})),
            (
                9_000 + SECURE_BOOT_SILENCE_MS,
                "dhcp",
                json!({"client": "other"})
            ),
        ])
        .is_empty());
        // BIOS: undionly.kpxe is no EFI binary, whatever follows.
        assert!(sb_trace(&[
            (2_000, "tftp", first_stage("undionly.kpxe", "ok")),
            (3_000, "dhcp", json!({"client": "pxe"})),
            (
                3_000 + SECURE_BOOT_SILENCE_MS,
                "dhcp",
                json!({"client": "other"})
            ),
        ])
        .is_empty());
        // The signed chain's files, over TFTP and HTTP Boot.
        assert!(sb_trace(&[
            (2_000, "tftp", first_stage("secureboot/ipxe.efi", "ok")),
            (
                2_500,
                "http",
                first_stage("/ipxe-bin/secureboot/ipxe.efi", "ok")
            ),
            (3_000, "dhcp", json!({"client": "pxe"})),
            (
                3_000 + SECURE_BOOT_SILENCE_MS,
                "dhcp",
                json!({"client": "other"})
            ),
        ])
        .is_empty());
        // iPXE slow to ask, but within the limit.
        assert!(sb_trace(&[
            (0, "tftp", first_stage("ipxe.efi", "ok")),
            (
                SECURE_BOOT_SILENCE_MS - 1,
                "dhcp",
                json!({"client": "ipxe"})
            ),
            (
                SECURE_BOOT_SILENCE_MS * 3,
                "dhcp",
                json!({"client": "other"})
            ),
        ])
        .is_empty());
        // A failed download proves nothing.
        assert!(sb_trace(&[
            (0, "tftp", first_stage("ipxe.efi", "timed-out")),
            (1_000, "dhcp", json!({"client": "pxe"})),
            (
                1_000 + SECURE_BOOT_SILENCE_MS,
                "dhcp",
                json!({"client": "other"})
            ),
        ])
        .is_empty());
    }

    #[test]
    fn uefi_http_boot_of_the_unsigned_binary_counts_too() {
        let alerts = sb_trace(&[
            (0, "http", first_stage("/ipxe-bin/ipxe.efi", "ok")),
            (SECURE_BOOT_SILENCE_MS, "dhcp", json!({"client": "pxe"})),
        ]);
        assert_eq!(summary(&alerts), [("silence", true)]);
    }
}
