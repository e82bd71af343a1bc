//! `chainboot`: the binary that wires DHCP, TFTP, HTTP and the boot policy together.
//! Each concern lives in its own crate; this one only parses the command line, loads the
//! config, builds the servers and runs them until a signal says stop.

// glibc's malloc_trim, which no crate wraps.
#[allow(unsafe_code)]
mod allocator;
mod api_client;
mod check;
mod doctor;
mod explain;
mod fleet;
mod generate;
mod identity;
mod init;
mod interfaces;
mod logging;
mod resolver;
mod serve;
mod service_manager;
mod tls;

// The config file's schema and loader live in their own crate (the fuzz target loads the
// same `Config`); `crate::config` and `crate::ipxe` name them for the modules here.
use chainboot_config_file::{self as config, ipxe};

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "chainboot",
    version,
    about = "Network boot server: DHCP, TFTP, HTTP and iPXE boot policy in one binary",
    long_about = None
)]
struct Cli {
    /// Log format: `text` for people, `json` for log collectors.
    #[arg(long, global = true, value_enum, default_value_t = logging::LogFormat::Text)]
    log_format: logging::LogFormat,
    /// Log level or filter (tracing syntax, e.g. `debug` or `chainboot_dhcp=debug`);
    /// RUST_LOG overrides it.
    #[arg(long, global = true, default_value = "info")]
    log_level: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the servers the config enables (with no config: the embedded default, proxyDHCP).
    Serve {
        /// Config file (TOML).
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Validate a config and report what chainboot would serve; exit 1 on any problem.
    Check {
        /// Config file (TOML); without it the embedded default is checked.
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Quick mode: every PXE client boots this kernel (and initrds) with this command line.
    Boot {
        /// The kernel file.
        kernel: PathBuf,
        /// Initrd files, in order.
        initrd: Vec<PathBuf>,
        /// Kernel command line (used literally).
        #[arg(long, default_value = "")]
        cmdline: String,
        /// Config file for everything but the boot policy (listen addresses, DHCP mode, ...).
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Machines known to a running server: list, show, set-profile, rearm, label, forget.
    Machines {
        #[command(flatten)]
        api: api_client::ApiArgs,
        #[command(subcommand)]
        command: api_client::MachinesCommand,
    },
    /// DHCP leases of a running server.
    Leases {
        #[command(flatten)]
        api: api_client::ApiArgs,
        #[command(subcommand)]
        command: api_client::LeasesCommand,
    },
    /// Events of a running server: list, follow live, a machine's boot timelines.
    Events {
        #[command(flatten)]
        api: api_client::ApiArgs,
        #[command(subcommand)]
        command: api_client::EventsCommand,
    },
    /// Dry run: the DHCP reply and the iPXE script a client would get, and why.
    Explain(explain::ExplainArgs),
    /// Print the snippet that makes another DHCP server (ISC dhcpd, dnsmasq, Kea) hand out the
    /// same boot decisions as chainboot (for `[dhcp] mode = "off"`).
    DhcpConfig {
        /// isc, dnsmasq or kea.
        server: chainboot_dhcp::SnippetKind,
        /// The address of this chainboot server as clients reach it (default: `[server]
        /// advertise`).
        #[arg(long)]
        server_ip: Option<std::net::Ipv4Addr>,
        /// Kea's `Dhcp6` snippet (only `kea`), for this IPv6 address of chainboot's (default:
        /// `[dhcp6] advertise`).
        #[arg(long, value_name = "IPV6")]
        ipv6: Option<Option<std::net::Ipv6Addr>>,
        /// Config file (TOML).
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Write a starter config for this host: its boot interfaces, proxy or server DHCP mode
    /// (from one DHCP probe on the named interfaces), the iPXE binaries found.
    Init(init::InitArgs),
    /// Everything on this host that would stop a boot, each problem with its fix: ports,
    /// iPXE binaries, IPv6, firewall, other DHCP servers (--probe), state directory, clock.
    /// Changes nothing.
    Doctor(doctor::DoctorArgs),
    /// Man pages and shell completions, from this command-line definition (for packaging).
    #[command(hide = true)]
    Generate {
        #[command(subcommand)]
        command: generate::GenerateCommand,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    logging::init(cli.log_format, &cli.log_level);
    match cli.command {
        Command::Check { config } => check::run(config.as_deref()),
        Command::Serve { config } => {
            allocator::spawn_trimmer();
            serve::run(config.as_deref(), None)
        }
        Command::Boot {
            kernel,
            initrd,
            cmdline,
            config,
        } => {
            allocator::spawn_trimmer();
            serve::run(
                config.as_deref(),
                Some(serve::QuickBoot {
                    kernel,
                    initrd,
                    cmdline,
                }),
            )
        }
        Command::Explain(args) => explain::run(&args),
        Command::Machines { api, command } => api_client::run_machines(&api, &command),
        Command::Leases { api, command } => api_client::run_leases(&api, &command),
        Command::Events { api, command } => api_client::run_events(&api, &command),
        Command::DhcpConfig {
            server,
            server_ip,
            ipv6: Some(ip6),
            config,
        } => {
            let _ = server_ip;
            dhcp6_config(server, ip6, config.as_deref())
        }
        Command::DhcpConfig {
            server,
            server_ip,
            ipv6: None,
            config,
        } => dhcp_config(server, server_ip, config.as_deref()),
        Command::Init(args) => init::run(&args),
        Command::Doctor(args) => doctor::run(&args),
        Command::Generate { command } => generate::run(&command, Cli::command()),
    }
}

/// Kea's Dhcp6 client classes (the other servers' IPv6 configuration is not generated).
fn dhcp6_config(
    kind: chainboot_dhcp::SnippetKind,
    server_ip: Option<std::net::Ipv6Addr>,
    config: Option<&std::path::Path>,
) -> ExitCode {
    if kind != chainboot_dhcp::SnippetKind::Kea {
        eprintln!("chainboot dhcp-config: --ipv6 is for kea only (Kea's Dhcp6 snippet)");
        return ExitCode::from(2);
    }
    let cfg = match config::load(config) {
        Ok((c, _)) => c,
        Err(p) => {
            eprintln!("{p}");
            return ExitCode::from(1);
        }
    };
    let Some(ip) = server_ip.or(cfg.dhcp6.advertise) else {
        eprintln!(
            "chainboot dhcp-config: the snippet needs this server's IPv6 address: pass \
             --ipv6 ADDRESS or set [dhcp6] advertise"
        );
        return ExitCode::from(2);
    };
    print!(
        "{}",
        chainboot_dhcp6::snippet::kea6(&cfg.boot_settings(), ip)
    );
    ExitCode::SUCCESS
}

fn dhcp_config(
    kind: chainboot_dhcp::SnippetKind,
    server_ip: Option<std::net::Ipv4Addr>,
    config: Option<&std::path::Path>,
) -> ExitCode {
    let cfg = match config::load(config) {
        Ok((c, _)) => c,
        Err(p) => {
            eprintln!("{p}");
            return ExitCode::from(1);
        }
    };
    let Some(ip) = server_ip.or(cfg.server.advertise_addr()) else {
        eprintln!(
            "chainboot dhcp-config: the snippet needs this server's address: pass --server-ip \
             or set [server] advertise"
        );
        return ExitCode::from(2);
    };
    print!(
        "{}",
        chainboot_dhcp::snippet(kind, &cfg.boot_settings(), ip)
    );
    ExitCode::SUCCESS
}
