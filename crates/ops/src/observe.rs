//! Observers: the servers call these hooks; they turn activity into events (keyed by MAC) and
//! metrics. They run on serving paths, so they only touch memory: the event log queues, the
//! histograms are atomics.

use std::net::IpAddr;
use std::sync::Arc;

use chainboot_content::shown_path;
use chainboot_content::What;
use chainboot_dhcp::boot::BootDecision;
use chainboot_dhcp::{Handled, Ingress};
use chainboot_events::{
    Detail, DhcpDetail, EventLog, HttpDetail, Outcome, Sighted, SourceProof, TftpDetail,
};
use chainboot_http::{AccessRecord, HttpObserver, StaticFile};
use chainboot_machine::Mac;
use chainboot_policy::facts::sanitize_fact;
use chainboot_policy::policy::AssetSlot;
use chainboot_policy::Policy;
use chainboot_tftp::server::{TransferObserver, TransferSummary};
use serde_json::json;

use crate::metrics::{Histogram, LabeledCounter, WhatCounter, LATENCY_BUCKETS, TRANSFER_BUCKETS};

/// Histograms and counters the observers fill (the servers' own counters are read directly).
#[derive(Debug)]
pub struct Metrics {
    pub tftp_transfer_seconds: Histogram,
    pub tftp_transfers: LabeledCounter,
    pub http_request_seconds: Histogram,
    /// By what was served and status class (`code`: `1xx` ... `5xx`).
    pub http_responses: WhatCounter,
    pub http_bytes: WhatCounter,
    pub dhcp_exchanges: LabeledCounter,
    pub dhcp_decision_seconds: Histogram,
    /// Requests that named a MAC they could not prove they came from, by route.
    pub refused_identity: LabeledCounter,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            tftp_transfer_seconds: Histogram::new(TRANSFER_BUCKETS),
            tftp_transfers: LabeledCounter::default(),
            http_request_seconds: Histogram::new(LATENCY_BUCKETS),
            http_responses: WhatCounter::new("code", &["1xx", "2xx", "3xx", "4xx", "5xx"]),
            http_bytes: WhatCounter::new("", &[]),
            dhcp_exchanges: LabeledCounter::default(),
            dhcp_decision_seconds: Histogram::new(LATENCY_BUCKETS),
            refused_identity: LabeledCounter::default(),
        }
    }
}

/// Everything the observers share.
pub struct Observers {
    pub events: Arc<EventLog>,
    pub metrics: Arc<Metrics>,
    pub policy: Arc<Policy>,
}

/// Files loaders look for and go on without when they are absent: PXELINUX tries
/// `pxelinux.cfg/` names in turn (UUID, MAC, IP prefixes, `default`), iPXE asks for
/// `autoexec.ipxe`. A miss is part of a healthy boot.
fn is_optional_lookup(path: &str) -> bool {
    let p = path.trim_start_matches('/');
    p.starts_with("pxelinux.cfg/") || p.eq_ignore_ascii_case("autoexec.ipxe")
}

/// A finished transfer's outcome. A client that answers our option acknowledgement with an
/// error before taking any data only wanted the size (`tsize`): firmware such as OVMF does so
/// before every real download ("User aborted the transfer", error 8 = option refused, or 0).
fn tftp_outcome(s: &TransferSummary<'_>) -> Outcome {
    use chainboot_tftp::transfer::Outcome as T;
    match s.outcome {
        T::Completed => Outcome::Ok,
        T::ClientError { code: 0 | 8, .. } if s.bytes == 0 => Outcome::SizeProbe,
        T::TimedOut => Outcome::TimedOut,
        T::ClientError { .. } | T::Failed(_) | T::Aborted(_) => Outcome::Error,
    }
}

impl TransferObserver for Observers {
    fn on_finish(&self, s: &TransferSummary<'_>) {
        let secs = s.duration.as_secs_f64();
        let outcome = s.outcome.to_string();
        let ok = s.outcome.is_success();
        let what = s.served.what;
        self.metrics.tftp_transfer_seconds.observe(secs);
        self.metrics.tftp_transfers.add(
            format!(
                "what=\"{what}\",outcome=\"{}\"",
                if ok { "completed" } else { "failed" }
            ),
            1,
        );
        // Every transfer is an event: a transfer is many round trips, and over TFTP even a
        // plain file is most likely a step of a PXELINUX boot.
        let mac = s
            .served
            .mac
            .or_else(|| self.events.mac_for_ip(s.client.ip()));
        let detail = TftpDetail {
            client: s.client.to_string(),
            path: s.path.to_string(),
            what: what.as_str(),
            first_stage: what == What::FirstStage,
            bytes: s.bytes,
            blksize: s.blksize,
            windowsize: s.windowsize,
            duration_ms: s.duration.as_millis() as u64,
            mb_per_s: if secs > 0.0 {
                (s.bytes as f64 / secs / 1e6 * 10.0).round() / 10.0
            } else {
                0.0
            },
            outcome: tftp_outcome(s),
            error: None,
            note: None,
            source: self.source_proof(mac, what, ok, s.client.ip()),
        };
        let detail = match (ok, detail.outcome.is_error()) {
            (true, _) => detail,
            (false, true) => TftpDetail {
                error: Some(outcome),
                ..detail
            },
            (false, false) => TftpDetail {
                note: Some(outcome),
                ..detail
            },
        };
        self.events.record(mac, TftpDetail::KIND, detail.to_json());
    }

    fn on_refused(&self, client: std::net::SocketAddr, path: &str, reason: &str) {
        self.metrics
            .tftp_transfers
            .add("what=\"refused\",outcome=\"refused\"".into(), 1);
        // Not a machine's event: whoever sent the request, its address proves no MAC (and a
        // refused first-stage name must not count towards a chainload loop).
        self.events.record_refused(
            None,
            "tftp",
            if is_optional_lookup(path) {
                json!({"client": client.to_string(), "path": shown_path(path), "note": shown_path(reason), "outcome": Outcome::LookupMiss})
            } else {
                json!({"client": client.to_string(), "path": shown_path(path), "error": shown_path(reason), "outcome": Outcome::Refused})
            },
        );
    }
}

impl Observers {
    /// For a first stage taken whole by a known machine: whether it came from the machine's
    /// own address (what a Secure Boot refusal needs to count). One lease lookup and one
    /// neighbour-table ioctl per first stage; nothing for any other transfer.
    fn source_proof(&self, mac: Option<Mac>, what: What, ok: bool, ip: IpAddr) -> SourceProof {
        match mac {
            Some(mac) if ok && what == What::FirstStage => {
                SourceProof::of(self.policy.own_address(mac, ip))
            }
            _ => SourceProof::default(),
        }
    }

    /// A file a static route served, as one of `mac`'s boot steps when its last decision
    /// names it (a profile's kernel and initrds may be plain files under `[http] root` or in
    /// an ISO image, fetched by their `/files/` or `/iso/` URL).
    fn boot_step_of_file(&self, mac: Mac, file: &StaticFile) -> Option<What> {
        let d = self.policy.recent(mac)?;
        Some(match d.slot_of_file(file.iso.as_deref(), &file.path)? {
            AssetSlot::Kernel => What::Kernel,
            AssetSlot::Initrd(_) => What::Initrd,
            AssetSlot::Loader => What::Loader,
            AssetSlot::Url(_) => return None,
        })
    }
}

impl HttpObserver for Observers {
    /// Counts every response; records an event only for a step of a machine's boot (what its
    /// timeline shows) and, rate-limited, for failures. Plain files, strangers' successes and
    /// the API are counted only: per small request an event costs more than serving it.
    fn on_response(&self, r: &mut AccessRecord) {
        let what = r.served.what;
        // Operator traffic (API reads, metrics, dashboard) is not part of any boot.
        if what == What::Api {
            return;
        }
        let status = r.status.as_u16();
        let failed = status >= 400;
        if !failed && what == What::Other {
            self.count_http(r);
            return;
        }
        let client_ip: IpAddr = r.client.ip();
        // A failure belongs to a machine only when the route proved the request came from it,
        // or when its address is one the machine proved is its own (the policy teaches the
        // event log an address only after its identity check); anyone else's is unattributed.
        let mac = match r.served.mac {
            Some(mac) => Some(mac),
            None if failed => self.events.mac_of_address(client_ip),
            None => self.events.mac_for_ip(client_ip),
        };
        // The access line written after this names the machine too.
        r.served.mac = mac;
        if let (Some(mac), Some(file)) = (mac, &r.file) {
            if let Some(step) = self.boot_step_of_file(mac, file) {
                r.served.what = step;
            }
        }
        self.count_http(r);
        let what = r.served.what;
        let record = if failed {
            // Requests outside the boot namespace (a browser's /favicon.ico, scanners) are
            // kept out of timelines, except a known machine's (an installer probing a mirror
            // path that is not there).
            what != What::Other || mac.is_some()
        } else {
            what.is_boot_step() && mac.is_some()
        };
        if !record {
            return;
        }
        let path = r.path();
        let detail = HttpDetail {
            client: r.client.to_string(),
            method: r.method.as_str().to_string(),
            path: shown_path(path).into_owned(),
            what: what.as_str(),
            status,
            outcome: match Outcome::of_http_status(status) {
                Outcome::NotFound if is_optional_lookup(path) => Outcome::LookupMiss,
                o => o,
            },
            bytes: r.bytes,
            duration_ms: r.duration.as_millis() as u64,
            complete: r.complete,
            source: self.source_proof(mac, what, !failed && r.complete, client_ip),
        };
        if failed {
            self.events
                .record_refused(mac, HttpDetail::KIND, detail.to_json());
        } else {
            // A machine's own callback (e.g. `installed`) is recorded with its body by the
            // API hook ([`MachineEvents`]) as an `api` event; this is the request itself.
            self.events.record(mac, HttpDetail::KIND, detail.to_json());
        }
    }
}

impl Observers {
    fn count_http(&self, r: &AccessRecord) {
        let what = r.served.what;
        let class = (r.status.as_u16() / 100).clamp(1, 5) as usize - 1;
        self.metrics
            .http_request_seconds
            .observe_duration(r.duration);
        self.metrics.http_responses.add(what, class, 1);
        self.metrics.http_bytes.add(what, 0, r.bytes);
    }
}

/// How a DHCP client presented itself.
fn client_kind(f: &chainboot_dhcp::PacketFacts) -> &'static str {
    if f.is_ipxe {
        "ipxe"
    } else if f.is_http_client() {
        "http-boot"
    } else if f.is_pxe_client() {
        "pxe"
    } else {
        "other"
    }
}

impl chainboot_dhcp::DhcpObserver<Ingress, Handled> for Observers {
    fn exchange(&self, ingress: &Ingress, handled: &Handled, decided_in: std::time::Duration) {
        // Runs once per DHCP packet, on the receive path: everything here is paid per exchange
        // at load, so the counter's labels are static strings, and an ordinary client costs no
        // event (only machines that boot through chainboot have a timeline).
        fn msg_label(m: chainboot_dhcp::wire::MessageType) -> &'static str {
            use chainboot_dhcp::wire::MessageType as T;
            match m {
                T::Discover => "discover",
                T::Offer => "offer",
                T::Request => "request",
                T::Decline => "decline",
                T::Ack => "ack",
                T::Nak => "nak",
                T::Release => "release",
                T::Inform => "inform",
            }
        }
        self.metrics
            .dhcp_decision_seconds
            .observe_duration(decided_in);
        let Some((msg, facts)) = &handled.request else {
            return;
        };
        let kind = client_kind(facts);
        let (outcome, reason) = dhcp_outcome(&handled.outcome);
        self.metrics.dhcp_exchanges.add(
            format!(
                "type=\"{}\",client=\"{kind}\",outcome=\"{outcome}\"",
                msg_label(*msg)
            ),
            1,
        );
        // A message for a live peer of the fleet is that server's to record: counted here
        // (`chainboot_dhcp_ignored_peer_server_total`), or every server of N would add N-1 events
        // per request. One naming a server the fleet does not know keeps its event.
        if matches!(
            handled.outcome,
            chainboot_dhcp::engine::Outcome::Ignored(chainboot_dhcp::engine::Ignored::PeerServer)
        ) {
            return;
        }
        if let (Some(mac), Some(addr)) = (facts.mac, handled.address) {
            self.events.learn_ip(IpAddr::V4(addr), mac, true);
        }
        if let Some(mac) = facts
            .mac
            .filter(|_| kind != "other" || facts.arch_code.is_some())
        {
            // A client without an address asks from 0.0.0.0: the address it is given stands
            // for it in the new-machine limiter (relayed requests come from their relay).
            let src = *ingress.src.ip();
            let source = match handled.address {
                Some(a) if src.is_unspecified() => a,
                _ => src,
            };
            self.events.sighted(Sighted {
                mac,
                source: IpAddr::V4(source),
                arch: arch_name(facts.arch_code),
                vendor_class: facts.vendor_class.as_deref().and_then(sanitize_fact),
                uuid: facts
                    .uuid
                    .as_deref()
                    .and_then(|u| u.get(1..17))
                    .and_then(|u| <[u8; 16]>::try_from(u).ok())
                    .map(|u| uuid_text(&u)),
            });
        }
        // Ordinary DHCP clients are not booting through chainboot: counted, not logged. (In
        // server mode they get an address and the decision "not a boot client".)
        if kind == "other"
            && matches!(
                handled.decision,
                None | Some(BootDecision::NoBoot(
                    chainboot_dhcp::boot::NoBoot::NotBootClient
                ))
            )
        {
            return;
        }
        let decision = match &handled.decision {
            Some(BootDecision::Boot(a)) => json!({"stage": a.stage, "file": a.file}),
            Some(BootDecision::NoBoot(n)) => json!({"no_boot": n}),
            None => serde_json::Value::Null,
        };
        let detail = DhcpDetail {
            family: "ipv4",
            msg: msg_label(*msg).to_string(),
            client: kind,
            arch: facts.arch_code,
            iface: ingress.iface.clone(),
            port: ingress.local_port,
            outcome,
            reason,
            address: handled.address.map(|a| a.to_string()),
            decision,
        };
        self.events
            .record(facts.mac, DhcpDetail::KIND, detail.to_json());
    }
}

impl chainboot_dhcp::DhcpObserver<chainboot_dhcp6::Ingress6, chainboot_dhcp6::Handled6>
    for Observers
{
    /// The DHCPv6 side of a machine's timeline, in the same `dhcp` events (family `ipv6`):
    /// boot clients' exchanges are recorded under the MAC behind the DUID, and a bound
    /// address maps that machine's later TFTP/HTTP requests over IPv6 to it. Ordinary clients
    /// are counted only (`chainboot_dhcp6_*`).
    fn exchange(
        &self,
        ingress: &chainboot_dhcp6::Ingress6,
        handled: &chainboot_dhcp6::Handled6,
        decided_in: std::time::Duration,
    ) {
        use chainboot_dhcp6::wire::msg as m;
        self.metrics
            .dhcp_decision_seconds
            .observe_duration(decided_in);
        let Some((t, facts)) = &handled.request else {
            return;
        };
        // A message for a live peer of the fleet is that server's to record (counted as
        // `chainboot_dhcp6_ignored_peer_server_total`), as for DHCPv4.
        if handled.outcome
            == chainboot_dhcp6::Outcome6::Ignored(chainboot_dhcp6::Ignored6::PeerServer)
        {
            return;
        }
        let mac = facts.mac.map(|(mac, _)| mac);
        if let (Some(mac), chainboot_dhcp6::Outcome6::Replied(m::REPLY)) = (mac, handled.outcome) {
            for addr in &handled.addresses {
                self.events.learn_ip(IpAddr::V6(*addr), mac, true);
            }
        }
        let kind = client_kind(&facts.boot);
        if let Some(mac) = mac.filter(|_| kind != "other" || facts.boot.arch_code.is_some()) {
            self.events.sighted(Sighted {
                mac,
                source: IpAddr::V6(*ingress.src.ip()),
                arch: arch_name(facts.boot.arch_code),
                vendor_class: facts.boot.vendor_class.as_deref().and_then(sanitize_fact),
                uuid: facts.uuid.map(|u| uuid_text(&u)),
            });
        }
        if kind == "other" {
            return;
        }
        let msg = match *t {
            m::SOLICIT => "solicit",
            m::REQUEST => "request",
            m::CONFIRM => "confirm",
            m::RENEW => "renew",
            m::REBIND => "rebind",
            m::RELEASE => "release",
            m::DECLINE => "decline",
            _ => "information-request",
        };
        let (outcome, reason) = match handled.outcome.words() {
            ("advertise", _) => (Outcome::Offer, None),
            ("reply", _) => (Outcome::Ack, None),
            ("dropped", r) => (Outcome::Dropped, r),
            (
                _,
                r @ Some("no-subnet" | "pool-exhausted" | "new-client-limit" | "no-server-address"),
            ) => (Outcome::Refused, r),
            (_, r) => (Outcome::Ignored, r),
        };
        let decision = match &handled.decision {
            Some(BootDecision::Boot(a)) => json!({"stage": a.stage, "file": a.url()}),
            Some(BootDecision::NoBoot(n)) => json!({"no_boot": n}),
            None => serde_json::Value::Null,
        };
        let detail = DhcpDetail {
            family: "ipv6",
            msg: msg.to_string(),
            client: kind,
            arch: facts.boot.arch_code,
            iface: ingress.iface.clone(),
            port: ingress.local_port,
            outcome,
            reason,
            address: handled.addresses.first().map(|a| a.to_string()),
            decision,
        };
        self.events.record(mac, DhcpDetail::KIND, detail.to_json());
    }
}

/// Option 93's architecture as chainboot names it (`efi-x64`, `bios`, ...).
fn arch_name(code: Option<u16>) -> Option<String> {
    chainboot_machine::Arch::from_option93(code?).map(|c| c.arch.name().to_string())
}

/// A UUID's 16 bytes in its text form, in the order they were sent.
fn uuid_text(u: &[u8; 16]) -> String {
    let h: String = u.iter().map(|b| format!("{b:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    )
}

/// The engine's outcome as an event outcome and, when not answered, why. Requests ignored
/// because the client cannot be served (no subnet, no free address, an unknown architecture)
/// are refusals: that machine's boot fails there.
pub fn dhcp_outcome(o: &chainboot_dhcp::engine::Outcome) -> (Outcome, Option<&'static str>) {
    use chainboot_dhcp::engine::Outcome as O;
    use chainboot_dhcp::engine::{DropReason, Ignored};
    use chainboot_dhcp::wire::MessageType as M;
    match o {
        O::Replied(M::Offer) => (Outcome::Offer, None),
        O::Replied(M::Nak) => (Outcome::Nak, None),
        O::Replied(_) => (Outcome::Ack, None),
        O::Ignored(why) => match why {
            Ignored::ModeOff => (Outcome::Ignored, Some("mode-off")),
            Ignored::NotBootClient => (Outcome::Ignored, Some("not-boot-client")),
            Ignored::OtherServer => (Outcome::Ignored, Some("other-server")),
            Ignored::PeerServer => (Outcome::Ignored, Some("peer-server")),
            Ignored::PeerClient => (Outcome::Ignored, Some("peer-client")),
            Ignored::NoReply => (Outcome::Ignored, Some("no-reply")),
            Ignored::UnknownArch => (Outcome::Refused, Some("unknown-arch")),
            Ignored::NoSubnet => (Outcome::Refused, Some("no-subnet")),
            Ignored::PoolExhausted => (Outcome::Refused, Some("pool-exhausted")),
            Ignored::NewClientLimit => (Outcome::Refused, Some("new-client-limit")),
        },
        O::Dropped(why) => match why {
            DropReason::Malformed(_) => (Outcome::Dropped, Some("malformed")),
            DropReason::RateLimited => (Outcome::Dropped, Some("rate-limited")),
            DropReason::RelayRateLimited => (Outcome::Dropped, Some("relay-rate-limited")),
            DropReason::ReplyTooLarge => (Outcome::Dropped, Some("reply-too-large")),
        },
    }
}

/// The policy routes' hooks: machines' own events go to the event log (the OS-callback stage
/// of their timeline), and a machine's JSON carries its last boot.
pub struct MachineEvents {
    pub events: Arc<EventLog>,
    pub store: Arc<chainboot_store::Store>,
    pub metrics: Arc<Metrics>,
}

impl chainboot_policy::MachineHooks for MachineEvents {
    fn machine_event(&self, mac: Mac, event: &str, body: &serde_json::Value) {
        self.events
            .record(Some(mac), "api", json!({ "event": event, "body": body }));
    }

    fn last_boot(&self, mac: Mac) -> Option<serde_json::Value> {
        let boots = crate::timelines::machine_timeline(&self.store, mac).ok()?;
        boots.as_array()?.last().cloned()
    }

    fn operator_actions(&self, mac: Mac) -> Option<serde_json::Value> {
        crate::timelines::operator_actions(&self.store, mac).ok()
    }

    fn operator_changed(&self, id: i64, event: chainboot_store::events::NewEvent) {
        self.events.written(id, event);
    }

    fn refused(&self, _mac: Mac, _peer: Option<IpAddr>, route: &'static str) {
        // Counted only: the MAC is whatever the sender typed, so it goes in no machine's
        // history and no per-request log line (a flood would fill both).
        self.metrics
            .refused_identity
            .add(format!("route=\"{route}\""), 1);
    }

    fn verified(&self, mac: Mac, ip: IpAddr, by_address: bool) {
        self.events.learn_ip(ip, mac, by_address);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_largest_machine_report_fits_an_event_whole() {
        let body = serde_json::json!({
            "event": "e".repeat(64),
            "message": "\"".repeat(950),
            "detail": {"k": "x".repeat(2030)},
        })
        .to_string();
        assert!(
            body.len() <= chainboot_policy::machine_event::MAX_BODY_BYTES,
            "{}",
            body.len()
        );
        let (event, kept) = chainboot_policy::machine_event::parse(body.as_bytes()).unwrap();
        let detail = json!({ "event": event, "body": kept });
        assert!(detail.to_string().len() <= chainboot_events::MAX_DETAIL_BYTES);
    }
}
