//! `chainboot init`: a starter config for this host. It names the boot interfaces, asks the
//! segment whether a DHCP server already answers (one DHCPDISCOVER from a random MAC, only on
//! interfaces the user named or confirmed): proxy mode beside it, or server mode with a pool
//! suggested from the interface's subnet when none answers; records the iPXE binaries found
//! and what machines boot by default. It never replaces an existing file unless told to.

use std::io::{BufRead, IsTerminal, Write};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use crate::doctor::dhcp_probe::{self, Answer, ServerKind};
use crate::interfaces::Interface;
use crate::ipxe::{IpxeBinaries, IpxeConfig};

/// The most addresses a suggested pool holds (a /16 gets a pool at its top, not half of it).
const MAX_SUGGESTED_POOL: u32 = 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum InitMode {
    Proxy,
    Server,
}

/// `chainboot init`'s arguments.
#[derive(Debug, clap::Args)]
pub struct InitArgs {
    /// Where to write the config.
    #[arg(long, short, default_value = "/etc/chainboot/chainboot.toml")]
    config: PathBuf,
    /// Print the config instead of writing it.
    #[arg(long, conflicts_with = "force")]
    stdout: bool,
    /// Replace an existing config (the old one is kept as FILE.bak).
    #[arg(long)]
    force: bool,
    /// A boot interface (repeat for more). Without it, an interactive run asks; a
    /// non-interactive one serves every interface and sends no probe.
    #[arg(long = "interface", short, value_name = "NAME")]
    interfaces: Vec<String>,
    /// Send no DHCP probe (then the mode is --mode, or proxy).
    #[arg(long)]
    no_probe: bool,
    /// Use this DHCP mode whatever the probe hears (a server-mode pool is still suggested
    /// from the first interface's subnet).
    #[arg(long, value_enum)]
    mode: Option<InitMode>,
    /// How long to listen for answers to the probe (dnsmasq pings an address for 3 s before
    /// it offers it to a new client).
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    probe_wait: Duration,
    /// The server's state directory.
    #[arg(long, default_value = "/var/lib/chainboot")]
    state_dir: PathBuf,
}

pub fn run(args: &InitArgs) -> ExitCode {
    match init(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("chainboot init: {e}");
            ExitCode::from(1)
        }
    }
}

fn init(args: &InitArgs) -> Result<(), String> {
    if !args.stdout && !args.force && args.config.exists() {
        return Err(format!(
            "{} exists; it is left as it is (pass --force to replace it, or --stdout to print a new one)",
            args.config.display()
        ));
    }
    let all = crate::interfaces::list().map_err(|e| format!("listing interfaces: {e}"))?;
    let interactive = std::io::stdin().is_terminal() && args.interfaces.is_empty();
    let (names, probe_ok) = if interactive {
        ask_interfaces(&all)?
    } else {
        (args.interfaces.clone(), !args.interfaces.is_empty())
    };
    let chosen: Vec<Interface> = names
        .iter()
        .map(|n| {
            all.iter()
                .find(|i| &i.name == n)
                .cloned()
                .ok_or_else(|| format!("no interface {n} that is up with an IPv4 address"))
        })
        .collect::<Result<_, _>>()?;
    let mut answers: Vec<(String, Answer)> = Vec::new();
    let probed = probe_ok && !args.no_probe && args.mode.is_none();
    if probed {
        for i in &chosen {
            // Silence behind a firewall that drops the answers would suggest server mode
            // beside a working DHCP server.
            if let Some((by, chain)) = crate::doctor::firewall::probe_replies_dropped(&i.name) {
                return Err(format!(
                    "the firewall drops UDP 68 on {} ({by}): the probe could hear no DHCP server there; allow it (nft insert rule {chain} udp dport 68 accept) or pass --mode",
                    i.name
                ));
            }
            eprintln!(
                "probing DHCP on {} (one DHCPDISCOVER, {} wait)...",
                i.name,
                humantime::format_duration(args.probe_wait)
            );
            let heard = dhcp_probe::probe(&i.name, args.probe_wait).map_err(|e| {
                format!(
                    "probing DHCP on {}: {e} (the probe needs root; or pass --no-probe, or --mode)",
                    i.name
                )
            })?;
            for a in heard {
                eprintln!("  heard {a}");
                answers.push((i.name.clone(), a));
            }
        }
    }
    let plan = Plan::decide(args, &chosen, &answers, probed)?;
    let text = plan.render(args, &IpxeBinaries::locate(&IpxeConfig::default()));
    if args.stdout {
        print!("{text}");
        return Ok(());
    }
    write_config(&args.config, &text, args.force)?;
    eprintln!(
        "wrote {} ({} mode). Next: `chainboot check --config {0}`, `chainboot doctor`, then start the service (systemctl enable --now chainboot)",
        args.config.display(),
        plan.mode_word()
    );
    Ok(())
}

/// Asks for the boot interfaces and whether to probe them.
fn ask_interfaces(all: &[Interface]) -> Result<(Vec<String>, bool), String> {
    let stdin = std::io::stdin();
    let mut line = String::new();
    eprintln!("interfaces that are up with an IPv4 address:");
    for i in all {
        let addrs: Vec<String> = i.ipv4.iter().map(|(a, l)| format!("{a}/{l}")).collect();
        eprintln!("  {:<16} {}", i.name, addrs.join(", "));
    }
    eprint!("boot interfaces, separated by spaces (empty: all of them, no probe): ");
    let _ = std::io::stderr().flush();
    stdin
        .lock()
        .read_line(&mut line)
        .map_err(|e| format!("reading the answer: {e}"))?;
    let names: Vec<String> = line.split_whitespace().map(str::to_owned).collect();
    if names.is_empty() {
        return Ok((names, false));
    }
    eprint!(
        "send one DHCPDISCOVER (random MAC) on {} to see whether a DHCP server answers? [Y/n] ",
        names.join(", ")
    );
    let _ = std::io::stderr().flush();
    line.clear();
    stdin
        .lock()
        .read_line(&mut line)
        .map_err(|e| format!("reading the answer: {e}"))?;
    let yes = matches!(line.trim(), "" | "y" | "Y" | "yes");
    Ok((names, yes))
}

/// What the config will say, and why.
struct Plan {
    interfaces: Vec<String>,
    mode: InitMode,
    why: Vec<String>,
    subnet: Option<Subnet>,
}

struct Subnet {
    cidr: String,
    pool: (Ipv4Addr, Ipv4Addr),
    router: Option<Ipv4Addr>,
}

impl Plan {
    fn decide(
        args: &InitArgs,
        chosen: &[Interface],
        answers: &[(String, Answer)],
        probed: bool,
    ) -> Result<Plan, String> {
        let mut why = Vec::new();
        let dhcp: Vec<&(String, Answer)> = answers
            .iter()
            .filter(|(_, a)| a.kind == ServerKind::Dhcp)
            .collect();
        for (iface, a) in answers {
            why.push(format!("heard on {iface}: {a}"));
            if a.kind == ServerKind::ProxyDhcp {
                why.push(format!(
                    "warning: another boot server ({}) answers PXE firmware on {iface}; stop it before starting chainboot",
                    a.server
                ));
            }
        }
        let mode = match args.mode {
            Some(m) => {
                why.push("mode chosen with --mode".into());
                m
            }
            None if !probed => {
                why.push("no probe was sent: proxy mode (beside the network's own DHCP server) is the safe default; run `chainboot init --interface NAME` to ask the segment".into());
                InitMode::Proxy
            }
            None if !dhcp.is_empty() => {
                why.push("a DHCP server answers: chainboot adds only boot information (proxyDHCP) and hands out no address".into());
                InitMode::Proxy
            }
            None => {
                why.push("no DHCP server answered: chainboot hands out addresses itself (server mode); check the suggested pool".into());
                InitMode::Server
            }
        };
        let subnet = if mode == InitMode::Server {
            let first = chosen.first().ok_or(
                "server mode needs a boot interface with an IPv4 address (pass --interface NAME)",
            )?;
            let (addr, prefix) = *first
                .ipv4
                .first()
                .ok_or_else(|| format!("{} has no IPv4 address", first.name))?;
            let (cidr, pool) = suggest_pool(addr, prefix).ok_or_else(|| {
                format!(
                    "{addr}/{prefix} on {} leaves no room for a pool",
                    first.name
                )
            })?;
            Some(Subnet {
                cidr,
                pool,
                router: default_gateway(&first.name),
            })
        } else {
            None
        };
        Ok(Plan {
            interfaces: chosen.iter().map(|i| i.name.clone()).collect(),
            mode,
            why,
            subnet,
        })
    }

    fn mode_word(&self) -> &'static str {
        match self.mode {
            InitMode::Proxy => "proxy",
            InitMode::Server => "server",
        }
    }

    fn render(&self, args: &InitArgs, bins: &IpxeBinaries) -> String {
        let mut s = String::new();
        let mut line = |l: &str| {
            s.push_str(l);
            s.push('\n');
        };
        line("# chainboot configuration, written by `chainboot init`.");
        line("# Check it: `chainboot check`; the host: `chainboot doctor`; every key: man chainboot,");
        line("# README.md \"Config reference\". SIGHUP (systemctl reload chainboot) applies changes.");
        line("");
        line("[server]");
        if self.interfaces.is_empty() {
            line("# Every interface that is up with an IPv4 address. Name the boot network's:");
            line("# interfaces = [\"eth1\"]");
        } else {
            line(&format!("interfaces = {}", toml_list(&self.interfaces)));
        }
        line(&format!(
            "state_dir = {}",
            toml_str(&args.state_dir.to_string_lossy())
        ));
        line("");
        for w in &self.why {
            line(&format!("# {w}"));
        }
        line("[dhcp]");
        line(&format!("mode = \"{}\"", self.mode_word()));
        if let Some(sub) = &self.subnet {
            line("");
            line("# Suggested from the interface's own address: check that no other host uses the pool.");
            line("[[dhcp.subnet]]");
            line(&format!("cidr = \"{}\"", sub.cidr));
            line(&format!(
                "pools = [[\"{}\", \"{}\"]]",
                sub.pool.0, sub.pool.1
            ));
            match sub.router {
                Some(r) => line(&format!("router = \"{r}\"")),
                None => line(
                    "# router = \"ADDRESS\"   # no default route on this interface: none given",
                ),
            }
            line("# dns = [\"ADDRESS\"]");
        }
        line("");
        let found: Vec<String> = bins
            .found()
            .map(|(n, p)| format!("#   {n:<16} {}", p.display()))
            .collect();
        if found.is_empty() {
            line("# No iPXE binaries found: install the package `ipxe` (Debian/Ubuntu).");
        } else {
            line("# iPXE binaries found:");
            for f in &found {
                line(f);
            }
        }
        for m in bins.missing() {
            if m.name == "undionly.kpxe" || m.name == "snponly.efi" {
                line(&format!(
                    "# missing {}: {} ({})",
                    m.name, m.for_whom, m.package
                ));
            }
        }
        line("[ipxe]");
        line("dir = \"auto\"");
        line("");
        line(
            "# What a machine boots by default: the iPXE menu of the profiles below. Add a profile",
        );
        line("# (kernel + initrd + cmdline, an ISO image, a script) and set [boot] default to it, e.g.");
        line("#   [[iso]]");
        line("#   name = \"debian\"");
        line("#   path = \"/srv/iso/debian-12-amd64-netinst.iso\"");
        line("#   [[profile]]");
        line("#   name = \"debian-install\"");
        line("#   kernel = \"iso:debian/install.amd/vmlinuz\"");
        line("#   initrd = [\"iso:debian/install.amd/initrd.gz\"]");
        line("[[profile]]");
        line("name = \"local-disk\"");
        line("description = \"Boot from the local disk\"");
        line("action = \"local-disk\"");
        line("");
        line("[boot]");
        line("default = \"menu\"");
        s
    }
}

fn toml_str(s: &str) -> String {
    let escaped: String = s
        .chars()
        .flat_map(|c| match c {
            '"' => vec!['\\', '"'],
            '\\' => vec!['\\', '\\'],
            c => vec![c],
        })
        .collect();
    format!("\"{escaped}\"")
}

fn toml_list(items: &[String]) -> String {
    let inner: Vec<String> = items.iter().map(|i| toml_str(i)).collect();
    format!("[{}]", inner.join(", "))
}

/// A pool for the subnet of `addr/prefix`: the half of its host addresses without `addr`, at
/// most [`MAX_SUGGESTED_POOL`] of them, taken from that half's top. `None` when the subnet
/// is too small (/31, /32).
pub fn suggest_pool(addr: Ipv4Addr, prefix: u8) -> Option<(String, (Ipv4Addr, Ipv4Addr))> {
    if prefix > 30 {
        return None;
    }
    let mask = if prefix == 0 {
        0
    } else {
        u32::MAX << (32 - prefix)
    };
    let a = u32::from(addr);
    let net = a & mask;
    let bcast = net | !mask;
    let (first, last) = (net + 1, bcast - 1);
    let mid = first + (last - first) / 2;
    let (lo, hi) = if a > mid {
        (first, mid)
    } else {
        (mid + 1, last)
    };
    let lo = lo.max(hi.saturating_sub(MAX_SUGGESTED_POOL - 1));
    if lo > hi {
        return None;
    }
    Some((
        format!("{}/{prefix}", Ipv4Addr::from(net)),
        (Ipv4Addr::from(lo), Ipv4Addr::from(hi)),
    ))
}

/// The default route's gateway through `iface`, from /proc/net/route.
fn default_gateway(iface: &str) -> Option<Ipv4Addr> {
    let text = std::fs::read_to_string("/proc/net/route").ok()?;
    text.lines().skip(1).find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        if f.len() < 3 || f[0] != iface || f[1] != "00000000" {
            return None;
        }
        let gw = u32::from_str_radix(f[2], 16).ok()?;
        // The kernel prints the address as a host-order number.
        Some(Ipv4Addr::from(gw.to_ne_bytes())).filter(|g| !g.is_unspecified())
    })
}

/// Writes `text` to `path` atomically (a new file renamed over it), creating its folder; an
/// existing file is moved to `path.bak` first when `force`, refused otherwise.
fn write_config(path: &Path, text: &str, force: bool) -> Result<(), String> {
    let shown = path.display();
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    }
    let tmp = path.with_extension("toml.new");
    {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)
            .map_err(|e| format!("creating {}: {e}", tmp.display()))?;
        f.write_all(text.as_bytes())
            .and_then(|()| f.sync_all())
            .map_err(|e| format!("writing {}: {e}", tmp.display()))?;
    }
    if path.exists() {
        if !force {
            let _ = std::fs::remove_file(&tmp);
            return Err(format!("{shown} appeared meanwhile; it is left as it is"));
        }
        let mut bak = path.as_os_str().to_owned();
        bak.push(".bak");
        std::fs::copy(path, &bak).map_err(|e| format!("keeping {shown} as .bak: {e}"))?;
    }
    std::fs::rename(&tmp, path).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        format!("renaming {} to {shown}: {e}", tmp.display())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    #[test]
    fn the_pool_is_the_half_without_the_servers_address() {
        let (cidr, pool) = suggest_pool(ip("198.18.0.1"), 24).unwrap();
        assert_eq!(cidr, "198.18.0.0/24");
        assert_eq!(pool, (ip("198.18.0.128"), ip("198.18.0.254")));
        let (_, pool) = suggest_pool(ip("198.18.0.200"), 24).unwrap();
        assert_eq!(pool, (ip("198.18.0.1"), ip("198.18.0.127")));
    }

    #[test]
    fn a_large_subnet_gets_a_bounded_pool_at_its_top() {
        let (cidr, pool) = suggest_pool(ip("198.18.0.1"), 15).unwrap();
        assert_eq!(cidr, "198.18.0.0/15");
        assert_eq!(pool.1, ip("198.19.255.254"));
        assert_eq!(
            u32::from(pool.1) - u32::from(pool.0) + 1,
            MAX_SUGGESTED_POOL
        );
    }

    #[test]
    fn tiny_subnets_get_no_pool() {
        assert!(suggest_pool(ip("198.18.0.1"), 31).is_none());
        assert!(suggest_pool(ip("198.18.0.1"), 32).is_none());
        let (_, pool) = suggest_pool(ip("198.18.0.1"), 30).unwrap();
        assert_eq!(pool, (ip("198.18.0.2"), ip("198.18.0.2")));
    }

    #[test]
    fn strings_are_escaped_for_toml() {
        assert_eq!(toml_str(r#"/a"b\c"#), r#""/a\"b\\c""#);
    }
}
