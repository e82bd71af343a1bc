//! `chainboot-stormsim`: runs a boot storm from the current network namespace and prints the
//! report as one JSON object on stdout (per-machine lines with `--per-machine FILE`).

use std::time::Duration;

use anyhow::Result;
use clap::Parser;

#[derive(Parser, Debug)]
#[command(about = "Boot-storm simulator (DHCP, TFTP, iPXE DHCP, HTTP) against one boot server")]
struct Args {
    /// Number of simulated machines.
    #[arg(long, default_value_t = 40)]
    machines: usize,
    /// All machines power on within this many seconds (uniform random).
    #[arg(long, default_value_t = 10.0)]
    spread: f64,
    /// Global deadline in seconds; unfinished machines are failures.
    #[arg(long, default_value_t = 300.0)]
    deadline: f64,
    /// Interface for the DHCP socket.
    #[arg(long, default_value = "vc")]
    iface: String,
    /// Seed for arrival times.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Third and fourth MAC bytes, hex (e.g. 0a01): distinct runs against one server differ.
    #[arg(long, default_value = "0000")]
    mac_prefix: String,
    /// TFTP blksize asked for.
    #[arg(long, default_value_t = 1468)]
    blksize: u16,
    /// Random (seeded) MACs instead of sequential ones.
    #[arg(long)]
    random_macs: bool,
    /// Boots a machine tries in all (a failed boot powers on again, as firmware that retries
    /// or a watchdog does); at most 16.
    #[arg(long, default_value_t = 1)]
    boot_attempts: u32,
    /// Write one JSON line per machine here.
    #[arg(long)]
    per_machine: Option<std::path::PathBuf>,
}

fn main() -> Result<()> {
    let a = Args::parse();
    anyhow::ensure!(a.machines <= 65536, "at most 65536 machines");
    anyhow::ensure!(
        (1..=chainboot_stormsim::MAX_BOOT_ATTEMPTS).contains(&a.boot_attempts),
        "--boot-attempts: 1 to {}",
        chainboot_stormsim::MAX_BOOT_ATTEMPTS
    );
    let p = u16::from_str_radix(&a.mac_prefix, 16)?.to_be_bytes();
    let cfg = chainboot_stormsim::StormConfig {
        machines: a.machines,
        spread: Duration::from_secs_f64(a.spread),
        deadline: Duration::from_secs_f64(a.deadline),
        iface: a.iface,
        seed: a.seed,
        mac_prefix: p,
        blksize: a.blksize,
        random_macs: a.random_macs,
        boot_attempts: a.boot_attempts,
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let rep = rt.block_on(chainboot_stormsim::run(&cfg))?;
    if let Some(f) = a.per_machine {
        let mut s = String::new();
        for r in &rep.results {
            s.push_str(&serde_json::to_string(r)?);
            s.push('\n');
        }
        std::fs::write(f, s)?;
    }
    println!("{}", serde_json::to_string(&rep)?);
    rt.shutdown_timeout(Duration::from_secs(1));
    Ok(())
}
