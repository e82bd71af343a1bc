//! `chainboot doctor`: everything on this host that would stop a machine from booting, each
//! problem with its fix, found without changing anything. The cheap checks (ports, state
//! directory, clock) also run in `chainboot check`; the DHCP probe runs only on interfaces the
//! user names with `--probe`.

pub mod dhcp_probe;
pub mod firewall;
mod host;
pub mod ports;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use crate::config::{self, Config};
use crate::interfaces::Interface;
use crate::ipxe::IpxeBinaries;
use dhcp_probe::ServerKind;
use ports::Proto;

pub use host::{check_clock, check_state_dir};

/// How bad a finding is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    Ok,
    /// Worth knowing, stops nothing.
    Note,
    /// Boots work, worse than they could.
    Warning,
    /// Stops boots (or the server).
    Error,
}

/// One thing found, and what to do about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    pub level: Level,
    pub text: String,
    pub fix: Option<String>,
}

impl Finding {
    pub fn new(level: Level, text: impl Into<String>) -> Finding {
        Finding {
            level,
            text: text.into(),
            fix: None,
        }
    }

    pub fn fix(mut self, fix: impl Into<String>) -> Finding {
        self.fix = Some(fix.into());
        self
    }

    /// `check`'s form: `error: ...`, `warning: ...`, plain text otherwise.
    pub fn check_line(&self) -> String {
        let fix = self
            .fix
            .as_deref()
            .map_or_else(String::new, |f| format!("; fix: {f}"));
        match self.level {
            Level::Error => format!("error: {}{fix}", self.text),
            Level::Warning => format!("warning: {}{fix}", self.text),
            Level::Ok | Level::Note => format!("{}{fix}", self.text),
        }
    }
}

/// `chainboot doctor`'s arguments.
#[derive(Debug, clap::Args)]
pub struct DoctorArgs {
    /// Config file (TOML); without it the embedded default is checked.
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// Send one DHCPDISCOVER (random MAC, never followed by a REQUEST) out of this interface
    /// and report every DHCP and proxyDHCP server that answers. Repeat for more interfaces;
    /// without it nothing is sent.
    #[arg(long, value_name = "INTERFACE")]
    probe: Vec<String>,
    /// How long to listen for answers to the probe (dnsmasq pings an address for 3 s before
    /// it offers it to a new client).
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    probe_wait: Duration,
}

pub fn run(args: &DoctorArgs) -> ExitCode {
    let (cfg, source) = match config::load(args.config.as_deref()) {
        Ok(c) => c,
        Err(problems) => {
            for p in &problems.0 {
                print_finding(&Finding::new(Level::Error, p.to_string()));
            }
            println!("the config has problems: `chainboot check` shows them with their lines");
            return ExitCode::from(1);
        }
    };
    println!("config: {source}");
    let mut all = Vec::new();
    let ifaces = boot_interfaces(&cfg, &mut all);
    all.extend(check_ports(&cfg));
    all.extend(check_ipxe(&cfg));
    all.extend(check_ipv6(&cfg, &ifaces));
    all.extend(check_firewall(&cfg, &ifaces));
    all.push(check_state_dir(&cfg));
    all.push(check_clock());
    all.extend(check_dhcp_neighbours(&cfg, &args.probe, args.probe_wait));
    for f in &all {
        print_finding(f);
    }
    let errors = all.iter().filter(|f| f.level == Level::Error).count();
    let warnings = all.iter().filter(|f| f.level == Level::Warning).count();
    let plural = |n: usize| if n == 1 { "" } else { "s" };
    if errors == 0 && warnings == 0 {
        println!("ok: nothing found that would stop a boot");
    } else {
        println!(
            "{errors} problem{}, {warnings} warning{}",
            plural(errors),
            plural(warnings)
        );
    }
    if errors > 0 {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}

fn print_finding(f: &Finding) {
    let word = match f.level {
        Level::Ok => "ok",
        Level::Note => "note",
        Level::Warning => "warning",
        Level::Error => "error",
    };
    println!("{word:<8} {}", f.text);
    if let Some(fix) = &f.fix {
        println!("{:<8} fix: {fix}", "");
    }
}

/// The interfaces the server would serve (findings about them go to `out`).
fn boot_interfaces(cfg: &Config, out: &mut Vec<Finding>) -> Vec<Interface> {
    match crate::interfaces::select(&cfg.server.interfaces) {
        Ok(list) if list.is_empty() => {
            out.push(
                Finding::new(
                    Level::Error,
                    "no interface to serve: none is up with an IPv4 address",
                )
                .fix("bring the boot network's interface up with an address, or name it in [server] interfaces"),
            );
            list
        }
        Ok(list) => {
            for i in &list {
                if i.ipv4.is_empty() {
                    out.push(
                        Finding::new(
                            Level::Error,
                            format!("interface {} is not up or has no IPv4 address", i.name),
                        )
                        .fix(format!(
                            "give it an address on the boot network (ip addr add ADDR/LEN dev {0}; ip link set {0} up)",
                            i.name
                        )),
                    );
                } else {
                    let addrs: Vec<String> =
                        i.ipv4.iter().map(|(a, l)| format!("{a}/{l}")).collect();
                    out.push(Finding::new(
                        Level::Ok,
                        format!("interface {} ({})", i.name, addrs.join(", ")),
                    ));
                }
            }
            list
        }
        Err(e) => {
            out.push(Finding::new(
                Level::Error,
                format!("listing the network interfaces: {e}"),
            ));
            Vec::new()
        }
    }
}

/// What the server would listen on.
pub struct Listener {
    pub proto: Proto,
    pub addr: SocketAddr,
    pub what: &'static str,
}

pub fn listeners(cfg: &Config) -> Vec<Listener> {
    let any = |port| SocketAddr::from(([0, 0, 0, 0], port));
    let mut out = Vec::new();
    if cfg.dhcp.mode != chainboot_dhcp::Mode::Off {
        out.push(Listener {
            proto: Proto::Udp,
            addr: any(cfg.dhcp.ports.server),
            what: "DHCP",
        });
        out.push(Listener {
            proto: Proto::Udp,
            addr: any(cfg.dhcp.ports.proxy),
            what: "PXE boot server (proxyDHCP requests)",
        });
    }
    out.push(Listener {
        proto: Proto::Udp,
        addr: cfg.tftp.listen,
        what: "TFTP",
    });
    for (list, what) in [
        (cfg.http.listen.as_list(), "HTTP"),
        (cfg.http.tls_listen.as_list(), "HTTPS"),
    ] {
        for a in list {
            if let Ok(addr) = a.parse() {
                out.push(Listener {
                    proto: Proto::Tcp,
                    addr,
                    what,
                });
            }
        }
    }
    for addr in &cfg.api.listen {
        out.push(Listener {
            proto: Proto::Tcp,
            addr: *addr,
            what: "API",
        });
    }
    out
}

/// Each listener's port: free, held by a running chainboot, or taken by another program.
pub fn check_ports(cfg: &Config) -> Vec<Finding> {
    let mut out = Vec::new();
    for l in listeners(cfg) {
        let held = ports::holders(l.proto, l.addr);
        let name = format!("{} {} ({})", l.proto.name(), l.addr, l.what);
        if held.is_empty() {
            out.push(Finding::new(Level::Ok, format!("{name} is free")));
            continue;
        }
        let inodes: Vec<u64> = held.iter().map(|b| b.inode).collect();
        let owners: Vec<String> = ports::owners(&inodes).into_values().flatten().collect();
        let by_chainboot = !owners.is_empty() && owners.iter().all(|o| o.starts_with("chainboot "));
        if by_chainboot {
            out.push(Finding::new(
                Level::Note,
                format!("{name} is held by {} (already running)", owners.join(", ")),
            ));
            continue;
        }
        let who = if owners.is_empty() {
            format!(
                "a socket on {} whose owner this user cannot see",
                held.first().map_or(l.addr, |b| b.local)
            )
        } else {
            owners.join(", ")
        };
        out.push(
            Finding::new(Level::Error, format!("{name} is taken by {who}"))
                .fix(format!(
                    "stop that service (e.g. `systemctl disable --now` it: dnsmasq, isc-dhcp-server, tftpd-hpa, nginx, ...), or listen elsewhere in the config{}",
                    if l.what == "DHCP" {
                        "; with another DHCP server on the segment, set [dhcp] mode = \"proxy\" and stop only its boot options"
                    } else {
                        ""
                    }
                )),
        );
    }
    out
}

/// The first-stage binaries per architecture.
pub fn check_ipxe(cfg: &Config) -> Vec<Finding> {
    let bins = IpxeBinaries::locate(&cfg.ipxe);
    let mut out = Vec::new();
    let needed = ["undionly.kpxe", cfg.ipxe.efi_x64_name()];
    for (name, path) in bins.found() {
        out.push(Finding::new(
            Level::Ok,
            format!("iPXE {name} ({})", path.display()),
        ));
    }
    for known in bins.missing() {
        let level = if needed.contains(&known.name) {
            Level::Error
        } else {
            Level::Note
        };
        // Only the x86-64 UEFI first stage `[ipxe] efi_x64` names is needed; the other is an option.
        let unchosen_x64 = match cfg.ipxe.efi_x64_name() {
            "snponly.efi" => "ipxe.efi",
            _ => "snponly.efi",
        };
        if known.name == unchosen_x64 {
            continue;
        }
        out.push(
            Finding::new(
                level,
                format!(
                    "iPXE {} missing: {} cannot boot",
                    known.name, known.for_whom
                ),
            )
            .fix(known.package),
        );
    }
    out
}

/// IPv6 on each boot interface, when router advertisements are to be sent.
fn check_ipv6(cfg: &Config, ifaces: &[Interface]) -> Vec<Finding> {
    if cfg.ipv6.router_advertisements == chainboot_ra::RaMode::Off {
        return vec![Finding::new(
            Level::Note,
            "IPv6 router advertisements are off ([ipv6] router_advertisements): iPXE waits ~15 s for IPv6 on each boot unless a router on the segment answers",
        )];
    }
    ifaces
        .iter()
        .map(
            |i| match chainboot_ra::ipv6_state(&i.name).problem(&i.name) {
                Some(p) => Finding::new(Level::Warning, p),
                None => Finding::new(
                    Level::Ok,
                    format!("IPv6 on {}: router solicitations can be answered", i.name),
                ),
            },
        )
        .collect()
}

/// The boot ports against this namespace's nftables ruleset.
fn check_firewall(cfg: &Config, ifaces: &[Interface]) -> Vec<Finding> {
    let rules = match firewall::ruleset() {
        Ok(r) => r,
        Err(e) => {
            return vec![Finding::new(
                Level::Note,
                format!("firewall not checked: {e}"),
            )]
        }
    };
    let mut out = Vec::new();
    let names: Vec<Option<&str>> = if ifaces.is_empty() {
        vec![None]
    } else {
        ifaces.iter().map(|i| Some(i.name.as_str())).collect()
    };
    let mut any_dropped = false;
    for l in listeners(cfg).iter().filter(|l| l.what != "API") {
        for iface in &names {
            let port = l.addr.port();
            if let firewall::Fate::Dropped { by, chain, certain } =
                firewall::fate(&rules, l.proto, port, *iface)
            {
                any_dropped = true;
                let on = iface.map_or_else(String::new, |i| format!(" on {i}"));
                let proto = l.proto.name().to_lowercase();
                out.push(
                    Finding::new(
                        if certain {
                            Level::Error
                        } else {
                            Level::Warning
                        },
                        format!(
                            "the firewall {} {} {port} ({}){on}: {by}",
                            if certain { "drops" } else { "may drop" },
                            l.proto.name(),
                            l.what
                        ),
                    )
                    .fix(format!(
                        "nft insert rule {chain} {proto} dport {port} accept"
                    )),
                );
            }
        }
    }
    if !any_dropped {
        out.push(Finding::new(
            Level::Ok,
            "firewall (nftables): the boot ports are let in",
        ));
    }
    out
}

/// Other DHCP and proxyDHCP servers, heard by one probe per named interface.
fn check_dhcp_neighbours(cfg: &Config, probe: &[String], wait: Duration) -> Vec<Finding> {
    if probe.is_empty() {
        return vec![Finding::new(
            Level::Note,
            "other DHCP servers: not probed (pass --probe INTERFACE to send one DHCPDISCOVER there)",
        )];
    }
    let mode = cfg.dhcp.mode;
    let mut out = Vec::new();
    for iface in probe {
        if let Some((by, chain)) = firewall::probe_replies_dropped(iface) {
            out.push(
                Finding::new(
                    Level::Error,
                    format!(
                        "not probed on {iface}: the firewall drops UDP 68 there ({by}), so no DHCP server's answer could be heard"
                    ),
                )
                .fix(format!("nft insert rule {chain} udp dport 68 accept")),
            );
            continue;
        }
        let answers = match dhcp_probe::probe(iface, wait) {
            Ok(a) => a,
            Err(e) => {
                out.push(Finding::new(
                    Level::Error,
                    format!("probing DHCP on {iface}: {e}"),
                ));
                continue;
            }
        };
        let dhcp: Vec<_> = answers
            .iter()
            .filter(|a| a.kind == ServerKind::Dhcp)
            .collect();
        if dhcp.is_empty() {
            let level = if mode == chainboot_dhcp::Mode::Server {
                Level::Ok
            } else {
                Level::Error
            };
            let f = Finding::new(
                level,
                format!(
                    "no DHCP server answered on {iface} within {}",
                    humantime::format_duration(wait)
                ),
            );
            out.push(if level == Level::Error {
                f.fix("nothing gives the machines an address: set [dhcp] mode = \"server\" with a [[dhcp.subnet]] (`chainboot init --interface IFACE` suggests one)")
            } else {
                f
            });
        }
        for a in &answers {
            let mut f = Finding::new(Level::Note, format!("on {iface}: {a}"));
            match (a.kind, mode) {
                (ServerKind::Dhcp, chainboot_dhcp::Mode::Server) => {
                    f.level = Level::Error;
                    f = f.fix("two servers would hand out addresses on one segment: set [dhcp] mode = \"proxy\" (chainboot then adds only boot information) or stop the other server");
                }
                (ServerKind::Dhcp, _) if a.boot_info => {
                    f.level = Level::Warning;
                    f = f.fix("it hands out boot information itself, which PXE firmware may follow instead of chainboot's: remove its next-server/filename/PXE options");
                }
                (ServerKind::ProxyDhcp, chainboot_dhcp::Mode::Off) => {}
                (ServerKind::ProxyDhcp, _) => {
                    f.level = Level::Warning;
                    f = f.fix("another boot server answers PXE firmware on this segment (a running chainboot is one too): stop it, or machines may boot from either");
                }
                (ServerKind::Dhcp, _) => f.level = Level::Ok,
            }
            out.push(f);
        }
    }
    out
}
