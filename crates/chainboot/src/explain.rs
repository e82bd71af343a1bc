//! `chainboot explain`: a dry run of one client through the DHCP engine and the boot policy,
//! printing what it would be told and why. Nothing is sent; the state store is only read.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddrV4, SocketAddrV6};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::SystemTime;

use chainboot_dhcp::client::{ClientKind, ClientMessage, ReplyView};
use chainboot_dhcp::engine::fleet::{bucket, Fleet};
use chainboot_dhcp::wire::MessageType;
use chainboot_dhcp::{Engine, Ingress, Mode};
use chainboot_machine::{Arch, BootTransport, Mac};
use chainboot_policy::{HttpBase, Policy, RawFacts};
use chainboot_store::{servers, Store};

use crate::config;

#[derive(Debug, clap::Args)]
pub struct ExplainArgs {
    /// The client's MAC address.
    #[arg(long)]
    pub mac: String,
    /// Architecture: a name (bios, efi-x64, efi-ia32, efi-arm64, ...) or an option 93 number.
    #[arg(long)]
    pub arch: String,
    /// User class the client sends; "iPXE" makes it an iPXE client (with option 175).
    #[arg(long)]
    pub user_class: Option<String>,
    /// For an iPXE client: its build lacks HTTP (no option 175.19).
    #[arg(long)]
    pub no_http: bool,
    /// For an iPXE client: its build has HTTPS (option 175.20).
    #[arg(long, conflicts_with = "no_http")]
    pub https: bool,
    /// SMBIOS UUID.
    #[arg(long)]
    pub uuid: Option<String>,
    /// Hostname the client reports.
    #[arg(long)]
    pub hostname: Option<String>,
    /// Serial number the client reports.
    #[arg(long)]
    pub serial: Option<String>,
    /// Address of the interface the request arrives on (default: `[server] advertise`, the
    /// first subnet's router, or 192.0.2.1 as a placeholder).
    #[arg(long)]
    pub server_ip: Option<Ipv4Addr>,
    /// Explain a DHCPv6 client (Solicit through the `[dhcp6]` engine) instead of DHCPv4.
    #[arg(long)]
    pub ipv6: bool,
    /// With --ipv6: the address of the interface the request arrives on (default:
    /// `[dhcp6] advertise`, else the first address of the first `[[dhcp6.subnet]]` prefix).
    #[arg(long)]
    pub server_ip6: Option<Ipv6Addr>,
    /// Config file (TOML).
    #[arg(long, short)]
    pub config: Option<PathBuf>,
}

pub fn run(args: &ExplainArgs) -> ExitCode {
    match explain(args) {
        Ok(text) => {
            print!("{text}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("chainboot explain: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn explain(args: &ExplainArgs) -> anyhow::Result<String> {
    let (cfg, source) = config::load(args.config.as_deref()).map_err(anyhow::Error::msg)?;
    let mac: Mac = args.mac.parse()?;
    let code: u16 = match args.arch.trim().parse::<u16>() {
        Ok(n) => n,
        Err(_) => args.arch.parse::<Arch>()?.option93(),
    };
    let client_arch = Arch::from_option93(code);
    let is_ipxe = args
        .user_class
        .as_deref()
        .is_some_and(|u| u.eq_ignore_ascii_case("ipxe"));
    let kind = if is_ipxe {
        ClientKind::Ipxe {
            arch: code,
            http: !args.no_http,
            user_class: true,
        }
    } else if client_arch.is_some_and(|c| c.transport == BootTransport::HttpBoot) {
        ClientKind::HttpBoot { arch: code }
    } else {
        ClientKind::Firmware { arch: code }
    };
    let server_ip = args
        .server_ip
        .or(cfg.server.advertise_addr())
        .or_else(|| cfg.dhcp.subnet.iter().find_map(|s| s.router))
        .unwrap_or(Ipv4Addr::new(192, 0, 2, 1));

    let mut out = String::new();
    out.push_str(&format!("config: {source}\n"));
    out.push_str(&format!(
        "client: {mac}, option 93 = {code} ({}), {}\n",
        client_arch.map_or("unknown architecture".to_string(), |c| c.arch.to_string()),
        match &kind {
            ClientKind::Ipxe { http: true, .. } if args.https => {
                "iPXE with HTTP and HTTPS (options 175.19, 175.20)"
            }
            ClientKind::Ipxe { http: true, .. } => "iPXE with HTTP (option 175.19)",
            ClientKind::Ipxe { http: false, .. } => "iPXE without HTTP",
            ClientKind::HttpBoot { .. } => "UEFI HTTP Boot (HTTPClient)",
            _ => "PXE firmware (PXEClient)",
        }
    ));

    // One policy for both answers, as in `serve` (Secure Boot refusals as the store remembers
    // them: `explain` runs apart from the server's event log).
    let store = Arc::new(open_store(&cfg.store, &cfg.server.state_dir)?);
    explain_record(&store, mac, &mut out);
    let policy = Arc::new(Policy::new(cfg.policy(), store).map_err(|p| anyhow::anyhow!("{p:?}"))?);
    let server: IpAddr = if args.ipv6 {
        let ip6 = explain_dhcp6(&cfg, &policy, args, mac, code, &kind, &mut out);
        IpAddr::V6(ip6)
    } else {
        explain_dhcp4(&cfg, &policy, args, mac, kind, server_ip, &mut out);
        IpAddr::V4(server_ip)
    };
    explain_policy(&cfg, &policy, args, mac, client_arch, server, &mut out)?;
    Ok(out)
}

/// DHCP: the engine itself answers a DISCOVER as it would on the wire.
fn explain_dhcp4(
    cfg: &config::Config,
    policy: &Arc<Policy>,
    args: &ExplainArgs,
    mac: Mac,
    kind: ClientKind,
    server_ip: Ipv4Addr,
    out: &mut String,
) {
    out.push_str(&format!(
        "\nDHCP ({} mode, request received on {server_ip}):\n",
        match cfg.dhcp.mode {
            Mode::Proxy => "proxy",
            Mode::Server => "server",
            Mode::Off => "off",
        }
    ));
    let mut engine = Engine::new(cfg.dhcp.clone(), boot_settings(cfg, policy));
    engine.set_fleet(fleet_view(cfg, policy.store(), mac, out));
    let ingress = Ingress {
        ifindex: 1,
        iface: "explain".into(),
        local_addr: server_ip,
        local_port: cfg.dhcp.ports.server,
        src: SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, cfg.dhcp.ports.client),
    };
    let mut message = ClientMessage::new(kind, MessageType::Discover, mac.0);
    message.ipxe_https = args.https;
    let packet = message.encode();
    let handled = engine.handle(SystemTime::now(), &ingress, &packet);
    if let Some(d) = &handled.decision {
        out.push_str(&format!(
            "  decision: {}\n",
            serde_json::to_string(d).unwrap_or_default()
        ));
        if let chainboot_dhcp::BootDecision::Boot(a) = d {
            out.push_str(&format!("  why: {}\n", a.why));
            out.push_str(&format!("  loader: {} ({})\n", a.loader, a.loader_why));
        }
    }
    let (outcome, reason) = chainboot_ops::observe::dhcp_outcome(&handled.outcome);
    match reason {
        Some(r) => out.push_str(&format!("  outcome: {outcome} ({r})\n")),
        None => out.push_str(&format!("  outcome: {outcome}\n")),
    }
    for reply in &handled.outgoing {
        if let Some(view) = ReplyView::parse(&reply.bytes) {
            out.push_str(&format!(
                "  reply {} to {}: yiaddr {}, siaddr {}, file \"{}\", {} bytes\n",
                format!("{:?}", reply.msg_type).to_lowercase(),
                destination(&reply.dest),
                view.yiaddr,
                view.siaddr,
                view.file.escape_debug(),
                view.len
            ));
            if let Some(vc) = view.opt_str(60) {
                out.push_str(&format!("    option 60 (vendor class): {vc}\n"));
            }
            if let Some(o43) = view.opt(43) {
                out.push_str(&format!(
                    "    option 43 (PXE vendor options): {}\n",
                    hex_bytes(o43)
                ));
            }
            if let Some(o175) = view.opt(175) {
                out.push_str(&format!(
                    "    option 175 (iPXE options): {}\n",
                    hex_bytes(o175)
                ));
            }
        }
    }
    if cfg.dhcp.mode == Mode::Off {
        out.push_str("  (DHCP is off: run `chainboot dhcp-config isc|dnsmasq|kea` for your server's snippet)\n");
    }
}

/// On a fleet's database: the live servers as this server would see them now, and which one
/// answers the client's DHCP (its hash bucket's owner), so the engine below answers as this
/// server would, or ignores the client as another server's. `None` for one server alone.
fn fleet_view(cfg: &config::Config, store: &Store, mac: Mac, out: &mut String) -> Option<Fleet> {
    if !store.is_shared() {
        return None;
    }
    let within_ms = i64::try_from(cfg.store.peer_timeout.as_millis()).unwrap_or(i64::MAX);
    let live = match servers::live(store, within_ms) {
        Ok(live) => live,
        Err(e) => {
            out.push_str(&format!(
                "  fleet: the live servers could not be read ({e})\n"
            ));
            return None;
        }
    };
    let fleet = Fleet::new(store.server_name(), live.into_iter().map(|s| s.name));
    let b = bucket(&mac.0);
    out.push_str(&format!(
        "  fleet: this is {}; live servers {}; the client's hash bucket {b} is answered by {}\n",
        store.server_name(),
        fleet.live().join(", "),
        fleet.owner(b)
    ));
    Some(fleet)
}

/// What the store remembers of the machine: when it was seen, what its firmware said over
/// DHCP, how far its last boot got, and a Secure Boot refusal.
fn explain_record(store: &Store, mac: Mac, out: &mut String) {
    let Ok(Some(m)) = store.machine(mac) else {
        out.push_str("record: none (never seen, or forgotten)\n");
        return;
    };
    let fw = &m.firmware;
    let ago = |ms: i64| {
        let s = (chainboot_events::now_ms() - ms).max(0) / 1000;
        format!("{s}s ago")
    };
    out.push_str(&format!("record: last seen {}", ago(m.last_seen_ms)));
    if let (Some(stage), Some(at)) = (&fw.stage, fw.stage_ms) {
        out.push_str(&format!(", last boot reached {stage} ({})", ago(at)));
    }
    out.push('\n');
    let mut said: Vec<String> = Vec::new();
    for (k, v) in [
        ("arch", &fw.arch),
        ("vendor class", &fw.vendor_class),
        ("uuid", &fw.uuid),
    ] {
        if let Some(v) = v {
            said.push(format!("{k} {v}"));
        }
    }
    if !said.is_empty() {
        out.push_str(&format!(
            "  its firmware said over DHCP: {}\n",
            said.join(", ")
        ));
    }
    if let Some(sb) = &fw.secure_boot {
        out.push_str(&format!(
            "  Secure Boot: its firmware refused the unsigned first stage ({}, {}, {}){}\n",
            sb.why,
            ago(sb.at_ms),
            if sb.proven { "proven" } else { "unproven" },
            if sb.proven {
                ": [boot] secure_boot_fallback applies to it"
            } else {
                ": a fetch did not come from its own address, so nothing is switched"
            }
        ));
    }
}

/// `[boot]` with the policy choosing each firmware client's loader, as in `serve`.
fn boot_settings(cfg: &config::Config, policy: &Arc<Policy>) -> chainboot_dhcp::BootSettings {
    let mut boot = cfg.boot_settings();
    boot.loaders.chooser = Some(Arc::new(crate::resolver::PolicyLoader {
        policy: policy.clone(),
        events: None,
    }));
    boot
}

/// DHCPv6: the `[dhcp6]` engine answers a Solicit from a client with a DUID-LL of `mac`,
/// sent from its EUI-64 link-local address, as this server of a fleet would (answering it,
/// or leaving it to the peer that owns its hash bucket). Returns the server address it used.
fn explain_dhcp6(
    cfg: &config::Config,
    policy: &Arc<Policy>,
    args: &ExplainArgs,
    mac: Mac,
    code: u16,
    kind: &ClientKind,
    out: &mut String,
) -> Ipv6Addr {
    use chainboot_dhcp6::client::Client6;
    use chainboot_dhcp6::wire::{code as opt, Options};
    let server_ip = args
        .server_ip6
        .or(cfg.dhcp6.advertise)
        .or_else(|| {
            let p = cfg.dhcp6.subnet.first()?.prefix;
            Some(Ipv6Addr::from(u128::from(p.network()) + 1))
        })
        .unwrap_or(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1));
    out.push_str(&format!(
        "\nDHCPv6 ({} mode, Solicit received on {server_ip}):\n",
        cfg.dhcp6.mode.as_str()
    ));
    let duid = [&[0u8, 3, 0, 1][..], &mac.0].concat();
    let client = match kind {
        ClientKind::Ipxe { .. } => Client6 {
            user_class: Some("iPXE".into()),
            ..Client6::firmware(duid, code, false)
        },
        ClientKind::HttpBoot { .. } => Client6::firmware(duid, code, true),
        _ => Client6::firmware(duid, code, false),
    };
    let link_local = chainboot_dhcp6::duid::eui64_link_local(mac);
    let ingress = chainboot_dhcp6::Ingress6 {
        ifindex: 1,
        iface: "explain".into(),
        local: vec![server_ip],
        dst: chainboot_dhcp6::server::ALL_DHCP_SERVERS,
        local_port: cfg.dhcp6.ports.server,
        src: SocketAddrV6::new(link_local, cfg.dhcp6.ports.client, 0, 1),
    };
    let mut engine = chainboot_dhcp6::Engine6::new(
        cfg.dhcp6.clone(),
        boot_settings(cfg, policy),
        vec![0, 4, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
    );
    // The client's DUID-LL carries its MAC, the key DHCPv6 clients are shared by in a fleet
    // too: the same server answers its DHCPv4 and DHCPv6.
    if cfg.dhcp6.mode != chainboot_dhcp6::Mode6::Off {
        engine.set_fleet(fleet_view(cfg, policy.store(), mac, out), Vec::new());
    }
    let handled = engine.handle(SystemTime::now(), &ingress, &client.solicit());
    if let Some(d) = &handled.decision {
        out.push_str(&format!(
            "  decision: {}\n",
            serde_json::to_string(d).unwrap_or_default()
        ));
        if let chainboot_dhcp::BootDecision::Boot(a) = d {
            out.push_str(&format!("  why: {}\n", a.why));
            out.push_str(&format!("  loader: {} ({})\n", a.loader, a.loader_why));
        }
    }
    match handled.outcome.words() {
        (outcome, Some(r)) => out.push_str(&format!("  outcome: {outcome} ({r})\n")),
        (outcome, None) => out.push_str(&format!("  outcome: {outcome}\n")),
    }
    if let Some((_, facts)) = &handled.request {
        if let Some((mac, from)) = facts.mac {
            out.push_str(&format!(
                "  machine: {mac} (MAC from its {})\n",
                from.as_str()
            ));
        }
    }
    for reply in &handled.outgoing {
        let kind = if reply.msg_type == chainboot_dhcp6::wire::msg::ADVERTISE {
            "advertise"
        } else {
            "reply"
        };
        out.push_str(&format!("  {kind} to {}: ", reply.dest));
        let opts = reply
            .bytes
            .get(4..)
            .and_then(|b| Options::parse(b).ok())
            .unwrap_or_default();
        let addrs: Vec<String> = handled.addresses.iter().map(Ipv6Addr::to_string).collect();
        out.push_str(&format!("addresses [{}]", addrs.join(", ")));
        if let Some(url) = opts.get(opt::BOOTFILE_URL) {
            out.push_str(&format!(
                ", option 59 \"{}\"",
                String::from_utf8_lossy(url).escape_debug()
            ));
        }
        out.push_str(&format!(", {} bytes\n", reply.bytes.len()));
    }
    if cfg.dhcp6.mode == chainboot_dhcp6::Mode6::Off {
        out.push_str("  (DHCPv6 is off: set [dhcp6] mode, or run `chainboot dhcp-config kea` for Kea's dhcp6 snippet)\n");
    }
    server_ip
}

/// Boot policy: the script iPXE would get from `server`.
fn explain_policy(
    cfg: &config::Config,
    policy: &Policy,
    args: &ExplainArgs,
    mac: Mac,
    client_arch: Option<chainboot_machine::ClientArch>,
    server: IpAddr,
    out: &mut String,
) -> anyhow::Result<()> {
    out.push_str("\nboot policy:\n");
    let facts = chainboot_policy::ClientFacts::from_raw(
        mac,
        &RawFacts {
            arch: client_arch.map(|c| c.arch),
            uuid: args.uuid.as_deref(),
            hostname: args.hostname.as_deref(),
            serial: args.serial.as_deref(),
            ..RawFacts::default()
        },
    );
    let settings = cfg.boot_settings();
    let base = HttpBase::new(&settings.http_base(server))
        .map_err(anyhow::Error::msg)?
        .with_https_port(settings.https_port);
    let explanation = match policy.explain_now(&facts, &base, None) {
        Ok(e) => e,
        // Only a decision that needs the pixiecore API costs a runtime.
        Err(question) => {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let answer = rt.block_on(question.fetch(&reqwest::Client::new()));
            policy
                .explain_now(&facts, &base, Some(answer))
                .map_err(|_| anyhow::anyhow!("the boot API's answer was not used"))?
        }
    };
    for line in explanation.to_string().lines() {
        out.push_str(&format!("  {line}\n"));
    }
    Ok(())
}

/// The live store when there is one (pinned profiles and boot-once state matter): the fleet's
/// database (not migrated: `explain` only reads) or the SQLite file, otherwise an empty
/// in-memory one; `explain` never creates files.
fn open_store(cfg: &chainboot_store::StoreConfig, state_dir: &Path) -> anyhow::Result<Store> {
    if let Some(store) = Store::inspect(cfg)? {
        store.compatible_schema()?;
        return Ok(store);
    }
    if state_dir.join(chainboot_store::DB_FILE).is_file() {
        Ok(Store::open(state_dir)?)
    } else {
        Ok(Store::in_memory()?)
    }
}

/// Where a reply goes, in words.
fn destination(d: &chainboot_dhcp::engine::Destination) -> String {
    use chainboot_dhcp::engine::Destination;
    match d {
        Destination::Unicast(a) => format!("{a}"),
        Destination::Broadcast { port } => format!("255.255.255.255:{port} (broadcast)"),
        Destination::UnicastNoArp { addr, mac } => format!("{addr} (unicast to {mac})"),
    }
}

/// Option bytes as `01 a2 ff`.
fn hex_bytes(b: &[u8]) -> String {
    b.iter()
        .map(|x| format!("{x:02x}"))
        .collect::<Vec<_>>()
        .join(" ")
}
