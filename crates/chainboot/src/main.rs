//! `chainboot`: the binary that wires DHCP, TFTP, HTTP and the boot policy together.
//! Each concern lives in its own crate; this one only parses the command line, loads the
//! config, builds the servers and runs them until a signal says stop.

mod check;
mod config;
mod interfaces;
mod ipxe;
mod logging;
mod resolver;
mod serve;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

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
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    logging::init(cli.log_format, &cli.log_level);
    match cli.command {
        Command::Check { config } => check::run(config.as_deref()),
        Command::Serve { config } => serve::run(config.as_deref()),
    }
}
