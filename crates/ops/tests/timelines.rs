//! Boot timelines from events as the servers emit them: the real DHCP engine answers real
//! client packets, the sans-IO TFTP transfer meets OVMF's size probe, and the observers the
//! servers call turn it all into events; the timeline is then read back as the API serves it.
#![allow(clippy::unwrap_used)] // a test: a failed step is a failed test

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use chainboot_content::{CleanPath, Served, What};
use chainboot_dhcp::client::{ClientKind, ClientMessage, ReplyView};
use chainboot_dhcp::wire::MessageType;
use chainboot_dhcp::{BootSettings, DhcpConfig, DhcpObserver, Engine, Ingress};
use chainboot_events::{EventLog, EventSettings};
use chainboot_http::{AccessRecord, HttpObserver, StaticFile};
use chainboot_machine::Mac;
use chainboot_ops::{machine_timeline, Metrics, Observers};
use chainboot_policy::{Policy, PolicyConfig};
use chainboot_store::Store;
use chainboot_tftp::proto::{self, ErrorCode, Packet};
use chainboot_tftp::server::{TransferObserver, TransferSummary};
use chainboot_tftp::{Outcome as TftpOutcome, Transfer, TransferSettings};

const MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x00, 0x18, 0x01];
const MAC_STR: &str = "52:54:00:00:18:01";

struct Rig {
    engine: Engine,
    observers: Observers,
    store: Arc<Store>,
    events: Arc<EventLog>,
    ip: Ipv4Addr,
}

fn rig() -> Rig {
    rig_with(PolicyConfig::default())
}

fn rig_with(policy: PolicyConfig) -> Rig {
    let store = Arc::new(Store::in_memory().unwrap());
    let events = EventLog::start(store.clone(), EventSettings::default());
    let policy = Policy::new(policy, store.clone()).unwrap_or_else(|p| panic!("policy: {p:?}"));
    let cfg: DhcpConfig = serde_json::from_value(serde_json::json!({
        "mode": "server",
        "subnet": [{"cidr": "198.18.0.0/24", "pools": [["198.18.0.100", "198.18.0.199"]]}],
    }))
    .unwrap();
    Rig {
        engine: Engine::new(cfg, BootSettings::default()),
        observers: Observers {
            events: events.clone(),
            metrics: Arc::new(Metrics::default()),
            policy: Arc::new(policy),
        },
        store,
        events,
        ip: Ipv4Addr::UNSPECIFIED,
    }
}

impl Rig {
    /// A DISCOVER and a REQUEST of `kind` through the engine, each handed to the observer as
    /// the DHCP server does.
    fn dora(&mut self, kind: ClientKind) {
        let ingress = Ingress {
            ifindex: 3,
            iface: "veth0".into(),
            local_addr: Ipv4Addr::new(198, 18, 0, 1),
            local_port: 67,
            src: SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 68),
        };
        let discover = ClientMessage::new(kind.clone(), MessageType::Discover, MAC).encode();
        let h = self.engine.handle(SystemTime::now(), &ingress, &discover);
        self.observers
            .exchange(&ingress, &h, Duration::from_micros(50));
        let offer = ReplyView::parse(&h.outgoing[0].bytes).expect("an offer");
        let mut request = ClientMessage::new(kind, MessageType::Request, MAC);
        request.requested_ip = Some(offer.yiaddr);
        request.server_id = Some(Ipv4Addr::new(198, 18, 0, 1));
        let h = self
            .engine
            .handle(SystemTime::now(), &ingress, &request.encode());
        self.observers
            .exchange(&ingress, &h, Duration::from_micros(50));
        self.ip = offer.yiaddr;
    }

    /// OVMF's way to fetch a file over TFTP: a request with `tsize` only to learn the size,
    /// aborted with an ERROR once the OACK is in, then the real download.
    fn tftp_like_ovmf(&self, path: &str) {
        let mut raw = vec![0, 1];
        for part in [path, "octet", "tsize", "0", "blksize", "1468"] {
            raw.extend(part.as_bytes());
            raw.push(0);
        }
        let Ok(Packet::Rrq(req)) = proto::parse(&raw) else {
            panic!("bad request")
        };
        let now = Instant::now();
        let mut probe = Transfer::new(&req, 1_000_000, now, &TransferSettings::default());
        let mut err = [0u8; 64];
        let n = proto::put_error(
            &mut err,
            ErrorCode::OptionRefused,
            "User aborted the transfer",
        );
        probe.handle(now, &err[..n]);
        let client = SocketAddr::from((self.ip, 1024));
        let outcome = probe.outcome().expect("the probe ended").clone();
        assert!(matches!(outcome, TftpOutcome::ClientError { code: 8, .. }));
        for (bytes, outcome) in [(0, outcome), (1_000_000, TftpOutcome::Completed)] {
            self.observers.on_finish(&TransferSummary {
                client,
                path,
                bytes,
                blksize: 1468,
                windowsize: 1,
                duration: Duration::from_millis(20),
                outcome: &outcome,
                served: Served::new(What::FirstStage),
            });
        }
    }

    /// A response as the HTTP server hands it to the observer, tagged as its route tags it.
    fn respond(
        &self,
        path: &str,
        status: u16,
        what: What,
        file: Option<StaticFile>,
    ) -> AccessRecord {
        let mut record = AccessRecord {
            client: SocketAddr::from((self.ip, 40000)),
            method: http::Method::GET,
            uri: path.parse().unwrap(),
            status: http::StatusCode::from_u16(status).unwrap(),
            bytes: 1000,
            duration: Duration::from_millis(3),
            complete: true,
            served: Served::new(what),
            file,
        };
        self.observers.on_response(&mut record);
        record
    }

    fn get(&self, path: &str, status: u16, what: What) {
        self.respond(path, status, what, None);
    }

    /// The number of events stored so far.
    fn event_count(&self) -> usize {
        assert!(self.events.flush(Duration::from_secs(10)));
        chainboot_store::events::list(&self.store, &Default::default())
            .unwrap()
            .len()
    }

    /// The machine's last boot as `GET /api/v1/machines/MAC/timeline` serves it.
    fn last_boot(&self) -> serde_json::Value {
        assert!(self.events.flush(Duration::from_secs(10)));
        let mac: Mac = MAC_STR.parse().unwrap();
        let boots = machine_timeline(&self.store, mac).unwrap();
        boots.as_array().unwrap().last().cloned().expect("a boot")
    }

    fn uefi_boot_to_the_installer(&mut self) {
        self.dora(ClientKind::Firmware { arch: 7 });
        self.tftp_like_ovmf("ipxe.efi");
        // iPXE looks for an autoexec.ipxe next to itself and goes on without it.
        self.observers.on_refused(
            SocketAddr::from((self.ip, 1025)),
            "autoexec.ipxe",
            "file not found",
        );
        self.dora(ClientKind::Ipxe {
            arch: 7,
            http: true,
            user_class: true,
        });
        self.get("/boot.ipxe", 200, What::Script);
        self.get("/ipxe", 200, What::Script);
        self.get("/boot/debian/kernel", 200, What::Kernel);
        self.get("/boot/debian/initrd/0", 200, What::Initrd);
    }
}

fn stages(boot: &serde_json::Value) -> Vec<String> {
    boot["stages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["stage"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn a_healthy_uefi_boot_with_a_size_probe_has_no_errors_and_reaches_the_installer_config() {
    let mut r = rig();
    r.uefi_boot_to_the_installer();
    let mac = MAC_STR;
    r.get(&format!("/config/{mac}/preseed.cfg"), 200, What::Config);
    let boot = r.last_boot();
    assert_eq!(boot["errors"], 0, "{boot:#}");
    assert_eq!(boot["reached"], "config", "{boot:#}");
    assert_eq!(
        stages(&boot),
        [
            "firmware-dhcp",
            "first-stage",
            "ipxe-dhcp",
            "script",
            "kernel",
            "initrd",
            "config"
        ]
    );
    // The events say what happened in words, not in Rust.
    let list = chainboot_store::events::list(&r.store, &Default::default()).unwrap();
    let outcomes: Vec<&str> = list
        .iter()
        .filter_map(|e| e.detail["outcome"].as_str())
        .collect();
    for o in &outcomes {
        assert!(
            ["offer", "ack", "size-probe", "lookup-miss", "ok"].contains(o),
            "{outcomes:?}"
        );
    }
    assert!(outcomes.contains(&"size-probe"), "{outcomes:?}");
    // Nothing in a healthy boot carries an error (the dashboard flags those).
    for e in &list {
        assert!(e.detail["error"].is_null(), "{:?}", e.detail);
    }
}

#[test]
fn pxelinux_trying_config_names_in_turn_is_no_error() {
    let mut r = rig();
    r.dora(ClientKind::Ipxe {
        arch: 0,
        http: true,
        user_class: true,
    });
    r.get("/boot.ipxe", 200, What::Script);
    r.get("/boot/seed/loader", 200, What::Loader);
    for name in ["a1b2c3d4-0000-0000-0000-000000000000", "C612", "C6"] {
        r.get(&format!("/pxelinux.cfg/{name}"), 404, What::Script);
    }
    r.get("/pxelinux.cfg/01-52-54-00-00-18-01", 200, What::Script);
    r.get("/boot/seed/kernel", 200, What::Kernel);
    let boot = r.last_boot();
    assert_eq!(boot["errors"], 0, "{boot:#}");
    assert_eq!(boot["reached"], "kernel", "{boot:#}");
}

#[test]
fn a_missing_kernel_and_an_installer_404_show_as_errors_of_that_boot() {
    let mut r = rig();
    r.dora(ClientKind::Firmware { arch: 7 });
    r.tftp_like_ovmf("ipxe.efi");
    r.dora(ClientKind::Ipxe {
        arch: 7,
        http: true,
        user_class: true,
    });
    r.get("/boot.ipxe", 200, What::Script);
    r.get("/boot/debian/kernel", 404, What::Kernel);
    let boot = r.last_boot();
    assert_eq!(boot["errors"], 1, "{boot:#}");
    let kernel = boot["stages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["stage"] == "kernel")
        .cloned()
        .unwrap();
    assert_eq!(kernel["error"], true, "{boot:#}");
    // A path outside the boot namespace from this known machine (d-i probing a mirror) is in
    // its timeline too; the same from a stranger is not.
    r.get("/debian/dists/bookworm/Release", 404, What::Other);
    assert_eq!(r.last_boot()["errors"], 2);
    r.observers.on_response(&mut AccessRecord {
        client: SocketAddr::from(([198, 18, 0, 250], 40000)),
        method: http::Method::GET,
        uri: "/favicon.ico".parse().unwrap(),
        status: http::StatusCode::NOT_FOUND,
        bytes: 0,
        duration: Duration::from_millis(1),
        complete: true,
        served: Served::new(What::Other),
        file: None,
    });
    assert!(r.events.flush(Duration::from_secs(10)));
    let list = chainboot_store::events::list(&r.store, &Default::default()).unwrap();
    assert!(list.iter().all(|e| e.detail["path"] != "/favicon.ico"));
}

/// A profile whose kernel is a plain file under `[http] root` and whose initrd is inside an
/// ISO image: iPXE fetches them by their `/files/` and `/iso/` URLs, not a `/boot/` route.
fn files_profile() -> PolicyConfig {
    let profile = serde_json::from_value(serde_json::json!({
        "name": "debian",
        "kernel": "debian/vmlinuz",
        "initrd": ["iso:deb/install.amd/initrd.gz"],
    }))
    .unwrap();
    let boot = serde_json::from_value(serde_json::json!({ "default": "debian" })).unwrap();
    PolicyConfig {
        profiles: vec![profile],
        groups: Vec::new(),
        boot,
    }
}

#[test]
fn plain_files_are_counted_not_recorded_and_a_machines_kernel_file_is_its_kernel_step() {
    let mut r = rig_with(files_profile());
    r.dora(ClientKind::Ipxe {
        arch: 7,
        http: true,
        user_class: true,
    });
    r.get("/boot.ipxe", 200, What::Script);
    let before = r.event_count();
    // No decision for this machine yet: its files are plain files.
    let file = |iso: Option<&str>, path: &str| StaticFile {
        iso: iso.map(str::to_string),
        path: CleanPath::parse(path).unwrap(),
    };
    let plain = r.respond(
        "/files/debian/vmlinuz",
        200,
        What::File,
        Some(file(None, "debian/vmlinuz")),
    );
    assert_eq!(plain.served.what, What::File);
    assert_eq!(r.event_count(), before, "a plain file is no event");
    assert_eq!(r.observers.metrics.http_responses.get(What::File, 1), 1);

    // The machine's script made its decision: now the same URLs are its kernel and initrd.
    let mac: Mac = MAC_STR.parse().unwrap();
    let policy = &r.observers.policy;
    match policy
        .decide_now(&chainboot_policy::ClientFacts::new(mac), None, None, None)
        .unwrap()
    {
        chainboot_policy::policy::Decided::Done(d) => {
            policy.remember(&d);
        }
        other => panic!("{other:?}"),
    }
    let kernel = r.respond(
        "/files/debian/vmlinuz",
        200,
        What::File,
        Some(file(None, "debian/vmlinuz")),
    );
    assert_eq!(kernel.served, Served::of(What::Kernel, mac));
    let initrd = r.respond(
        "/iso/deb/install.amd/initrd.gz",
        200,
        What::IsoFile,
        Some(file(Some("deb"), "install.amd/initrd.gz")),
    );
    assert_eq!(initrd.served.what, What::Initrd);
    // Another file of the same tree, and the kernel's path in another tree, stay plain.
    let other = r.respond(
        "/files/debian/README",
        200,
        What::File,
        Some(file(None, "debian/README")),
    );
    assert_eq!(other.served.what, What::File);
    let elsewhere = r.respond(
        "/iso/deb/debian/vmlinuz",
        200,
        What::IsoFile,
        Some(file(Some("deb"), "debian/vmlinuz")),
    );
    assert_eq!(elsewhere.served.what, What::IsoFile);
    assert_eq!(r.event_count(), before + 2);
    let boot = r.last_boot();
    assert_eq!(boot["reached"], "initrd", "{boot:#}");
    assert_eq!(stages(&boot), ["ipxe-dhcp", "script", "kernel", "initrd"]);
}

#[test]
fn a_script_fetched_by_an_address_no_machine_is_known_by_is_counted_only() {
    let r = rig();
    // 198.18.0.250 never took part in a DHCP exchange here, and the neighbour table of this
    // host does not know it.
    let mut record = AccessRecord {
        client: SocketAddr::from(([198, 18, 0, 250], 40000)),
        method: http::Method::GET,
        uri: "/boot.ipxe".parse().unwrap(),
        status: http::StatusCode::OK,
        bytes: 120,
        duration: Duration::from_millis(1),
        complete: true,
        served: Served::new(What::Script),
        file: None,
    };
    r.observers.on_response(&mut record);
    assert_eq!(r.event_count(), 0);
    assert_eq!(r.observers.metrics.http_responses.get(What::Script, 1), 1);
    // The same route naming the machine it proved it is, is a step of that machine's boot.
    let mac: Mac = MAC_STR.parse().unwrap();
    record.served = Served::of(What::Script, mac);
    r.observers.on_response(&mut record);
    assert_eq!(r.event_count(), 1);
    let boot = r.last_boot();
    assert_eq!(stages(&boot), ["script"]);
}
