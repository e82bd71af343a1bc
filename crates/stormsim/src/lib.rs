//! Boot-storm simulator: N simulated machines, each doing the whole network boot against one
//! boot server, the way firmware and iPXE do it:
//!
//! 1. DHCP DORA as PXE firmware (vendor class `PXEClient`, option 93 = 0 or 7, broadcast flag);
//! 2. TFTP RRQ of the first-stage file named in the ACK (`blksize 1468`, `tsize 0`, and for
//!    UEFI machines `windowsize 4`, as OVMF's PXE asks), from the leased address;
//! 3. DHCP DORA again as iPXE (option 175 with 19, user-class `iPXE`);
//! 4. HTTP GET of the boot URL from that ACK; every `chain` line is followed (iPXE variables
//!    such as `${mac:hexhyp}` expanded) until a script with `kernel`/`initrd` lines;
//! 5. HTTP GET of the kernel, then of each initrd, streamed and counted against
//!    `Content-Length`.
//!
//! As iPXE does, a `kernel`, `initrd` or `chain` line's `||` alternatives (a fleet's scripts
//! name each live peer's URL after the server's own) are tried in order, and the first that
//! answers counts; running out of them (`goto failed`) fails the boot.
//!
//! A machine whose boot fails at any step powers on again (as firmware that gives up retries
//! its boot, or a watchdog resets the machine) up to `boot_attempts` boots in all; its times
//! count from its first power-on.
//!
//! Machines arrive uniformly at random within `spread` (seeded, so a run is repeatable). One
//! DHCP socket (0.0.0.0:68 bound to the interface) is shared and replies are demultiplexed by
//! xid; TFTP and HTTP sockets are bound to each machine's leased address, so the client side's
//! namespace must treat the pool as local (`ip route add local POOL dev lo`). Every wait is
//! bounded: per-packet timeouts with a bounded number of retransmits, and a global deadline
//! after which unfinished machines count as failures.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use chainboot_dhcp::client::{ClientKind, ClientMessage, ReplyView};
use chainboot_dhcp::wire::{code, MessageType};
use http_body_util::{BodyExt, Empty};
use parking_lot::Mutex;
use rand::{Rng, SeedableRng};
use serde::Serialize;
use tokio::net::{TcpSocket, UdpSocket};
use tokio::sync::mpsc;

/// What to simulate.
#[derive(Debug, Clone)]
pub struct StormConfig {
    /// Number of machines.
    pub machines: usize,
    /// All machines power on within this window (uniform random).
    pub spread: Duration,
    /// Global deadline for the whole storm, counted from the start.
    pub deadline: Duration,
    /// Interface the DHCP socket is bound to (SO_BINDTODEVICE).
    pub iface: String,
    /// Seed for arrival times (and MAC prefix choice).
    pub seed: u64,
    /// Second-to-last MAC byte pair; distinct runs against one server use distinct prefixes.
    pub mac_prefix: [u8; 2],
    /// TFTP block size asked for.
    pub blksize: u16,
    /// Random (seeded, distinct) last three MAC bytes instead of sequential ones.
    pub random_macs: bool,
    /// Boots a machine tries in all before it counts as failed (1: no second boot; at most
    /// [`MAX_BOOT_ATTEMPTS`]).
    pub boot_attempts: u32,
}

/// Boots per machine at most: each boot's xids differ in four bits.
pub const MAX_BOOT_ATTEMPTS: u32 = 16;
/// How long a machine whose boot failed waits before it powers on again.
const REBOOT_PAUSE: Duration = Duration::from_secs(1);

impl Default for StormConfig {
    fn default() -> Self {
        StormConfig {
            machines: 40,
            spread: Duration::from_secs(10),
            deadline: Duration::from_secs(300),
            iface: "vc".into(),
            seed: 1,
            mac_prefix: [0x00, 0x00],
            blksize: 1468,
            random_macs: false,
            boot_attempts: 1,
        }
    }
}

/// One machine's outcome.
#[derive(Debug, Clone, Serialize, Default)]
pub struct MachineResult {
    pub mac: String,
    pub arch: u16,
    /// Seconds from the storm's start to this machine's first power-on (to line its stages up
    /// with events of the run, such as a server killed at a known time).
    pub powered_on: f64,
    pub ok: bool,
    /// Address leased to the firmware, then to iPXE.
    pub firmware_address: Option<String>,
    pub address: Option<String>,
    pub error: Option<String>,
    /// Seconds from power-on to the last byte of the kernel.
    pub time_to_kernel: Option<f64>,
    /// Seconds from power-on to the last byte of the last initrd.
    pub time_to_done: Option<f64>,
    pub dhcp_retransmits: u64,
    pub tftp_retransmits: u64,
    /// Boots it took (more than 1 when a boot failed and it powered on again).
    pub boots: u32,
    pub tftp_bytes: u64,
    pub http_bytes: u64,
    /// Scripts, kernels and initrds fetched from a `||` alternative because the URLs before
    /// it failed (in a fleet: the machine's server died mid-boot and a peer answered).
    pub http_alternatives: u64,
    /// Seconds from power-on at which each stage finished.
    pub stages: Vec<(String, f64)>,
}

/// The whole run.
#[derive(Debug, Clone, Serialize)]
pub struct StormReport {
    pub machines: usize,
    pub ok: usize,
    pub failures: usize,
    pub time_to_kernel_p50: Option<f64>,
    pub time_to_kernel_p99: Option<f64>,
    pub time_to_kernel_max: Option<f64>,
    pub time_to_done_p50: Option<f64>,
    pub time_to_done_p99: Option<f64>,
    pub dhcp_retransmits: u64,
    /// NAKs received (each restarts the DORA, as firmware does).
    pub dhcp_naks: u64,
    pub tftp_retransmits: u64,
    /// Boots that failed and were tried again (see [`StormConfig::boot_attempts`]).
    pub reboots: u64,
    /// Fetches answered by a `||` alternative after the ones before it failed
    /// ([`MachineResult::http_alternatives`], all machines).
    pub http_alternatives: u64,
    pub bytes: u64,
    pub wall_seconds: f64,
    /// The simulator's own CPU time (user + system), seconds: beside the server's CPU it says
    /// whether the client side could have been the bottleneck.
    pub cpu_s: Option<f64>,
    /// The first few distinct errors, with counts.
    pub errors: Vec<(String, usize)>,
    #[serde(skip)]
    pub results: Vec<MachineResult>,
}

/// Nearest-rank percentile of `v` (sorted in place).
pub fn percentile(v: &mut [f64], p: f64) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let rank = ((p / 100.0) * v.len() as f64).ceil() as usize;
    Some(v[rank.clamp(1, v.len()) - 1])
}

/// The part of an xid that names the machine (salt and index); the top nibble is the phase and
/// attempt.
const XID_MACHINE: u32 = 0x0fff_ffff;

type Waiters = Arc<Mutex<HashMap<u32, mpsc::UnboundedSender<ReplyView>>>>;

struct Shared {
    dhcp: UdpSocket,
    waiters: Waiters,
    dhcp_retx: AtomicU64,
    dhcp_naks: AtomicU64,
    tftp_retx: AtomicU64,
    blksize: u16,
    boot_attempts: u32,
}

/// Runs the storm and returns its report. Fails only on setup errors (socket, interface);
/// machine failures are in the report.
pub async fn run(cfg: &StormConfig) -> Result<StormReport> {
    let dhcp = dhcp_socket(&cfg.iface)?;
    let shared = Arc::new(Shared {
        dhcp,
        waiters: Arc::new(Mutex::new(HashMap::new())),
        dhcp_retx: AtomicU64::new(0),
        dhcp_naks: AtomicU64::new(0),
        tftp_retx: AtomicU64::new(0),
        blksize: cfg.blksize,
        boot_attempts: cfg.boot_attempts.clamp(1, MAX_BOOT_ATTEMPTS),
    });
    let rx_task = {
        let s = shared.clone();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 2048];
            loop {
                let Ok((n, _)) = s.dhcp.recv_from(&mut buf).await else {
                    continue;
                };
                let Some(r) = ReplyView::parse(&buf[..n]) else {
                    continue;
                };
                if let Some(tx) = s.waiters.lock().get(&(r.xid & XID_MACHINE)) {
                    let _ = tx.send(r);
                }
            }
        })
    };

    let mut rng = rand::rngs::StdRng::seed_from_u64(cfg.seed);
    let start = Instant::now();
    let mut tasks = Vec::with_capacity(cfg.machines);
    for i in 0..cfg.machines {
        let offset = if cfg.spread.is_zero() {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(rng.random_range(0.0..cfg.spread.as_secs_f64()))
        };
        let idx = i as u16;
        let mac = machine_mac(cfg, &mut rng, idx);
        let arch = if i % 2 == 0 { 0 } else { 7 };
        let s = shared.clone();
        let salt = (cfg.seed as u32).wrapping_mul(0x9e37_79b9) & 0x0fff_0000;
        tasks.push(tokio::spawn(async move {
            tokio::time::sleep(offset).await;
            let on = start.elapsed().as_secs_f64();
            let mut r = machine(s, mac, arch, salt | u32::from(idx)).await;
            r.powered_on = on;
            r
        }));
    }
    let deadline = start + cfg.deadline;
    let mut results = Vec::with_capacity(cfg.machines);
    for (i, t) in tasks.into_iter().enumerate() {
        let left = deadline.saturating_duration_since(Instant::now());
        let r = match tokio::time::timeout(left, t).await {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => MachineResult {
                error: Some(format!("task: {e}")),
                ..Default::default()
            },
            Err(_) => MachineResult {
                mac: format!("machine #{i}"),
                error: Some("global deadline".into()),
                ..Default::default()
            },
        };
        results.push(r);
    }
    rx_task.abort();
    Ok(report(
        results,
        start.elapsed(),
        shared.dhcp_retx.load(Ordering::Relaxed),
        shared.dhcp_naks.load(Ordering::Relaxed),
        shared.tftp_retx.load(Ordering::Relaxed),
    ))
}

/// The client port 68 on `iface`, broadcast allowed, with a receive buffer large enough for a
/// whole storm's replies.
fn dhcp_socket(iface: &str) -> Result<UdpSocket> {
    let sock = socket2::Socket::new(
        socket2::Domain::IPV4,
        socket2::Type::DGRAM,
        Some(socket2::Protocol::UDP),
    )?;
    sock.set_reuse_address(true)?;
    sock.set_broadcast(true)?;
    sock.bind_device(Some(iface.as_bytes()))
        .with_context(|| format!("SO_BINDTODEVICE {}", iface))?;
    // Replies to a whole storm can pile up; a larger buffer keeps the kernel from dropping them.
    let _ = sock.set_recv_buffer_size(8 << 20);
    sock.set_nonblocking(true)?;
    sock.bind(&SocketAddr::from(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 68)).into())
        .context("bind 0.0.0.0:68 (root needed; nothing else may hold port 68)")?;
    Ok(UdpSocket::from_std(sock.into())?)
}

/// Machine `idx`'s MAC: 52:54, the configured prefix and the index, or with random MACs a
/// random fourth byte and the index scrambled.
fn machine_mac(cfg: &StormConfig, rng: &mut rand::rngs::StdRng, idx: u16) -> [u8; 6] {
    let mut mac = [
        0x52,
        0x54,
        cfg.mac_prefix[0],
        cfg.mac_prefix[1],
        (idx >> 8) as u8,
        idx as u8,
    ];
    if cfg.random_macs {
        // Third byte from the RNG, the index in the last two bytes scrambled by an odd
        // multiplier (a bijection on u16): distinct, and not consecutive.
        mac[3] = rng.random();
        let x = idx.wrapping_mul(0x9e37).to_be_bytes();
        mac[4] = x[0];
        mac[5] = x[1];
    }
    mac
}

fn report(results: Vec<MachineResult>, wall: Duration, dr: u64, naks: u64, tr: u64) -> StormReport {
    let ok = results.iter().filter(|r| r.ok).count();
    let mut ttk: Vec<f64> = results.iter().filter_map(|r| r.time_to_kernel).collect();
    let mut ttd: Vec<f64> = results.iter().filter_map(|r| r.time_to_done).collect();
    let mut errors: Vec<(String, usize)> = Vec::new();
    for e in results.iter().filter_map(|r| r.error.as_ref()) {
        if let Some((_, n)) = errors.iter_mut().find(|(k, _)| k == e) {
            *n += 1;
        } else if errors.len() < 10 {
            errors.push((e.clone(), 1));
        }
    }
    StormReport {
        machines: results.len(),
        ok,
        failures: results.len() - ok,
        time_to_kernel_p50: percentile(&mut ttk, 50.0),
        time_to_kernel_p99: percentile(&mut ttk, 99.0),
        time_to_kernel_max: percentile(&mut ttk, 100.0),
        time_to_done_p50: percentile(&mut ttd, 50.0),
        time_to_done_p99: percentile(&mut ttd, 99.0),
        dhcp_retransmits: dr,
        dhcp_naks: naks,
        tftp_retransmits: tr,
        reboots: results
            .iter()
            .map(|r| u64::from(r.boots.saturating_sub(1)))
            .sum(),
        http_alternatives: results.iter().map(|r| r.http_alternatives).sum(),
        bytes: results.iter().map(|r| r.tftp_bytes + r.http_bytes).sum(),
        wall_seconds: wall.as_secs_f64(),
        cpu_s: own_cpu_seconds(),
        errors,
        results,
    }
}

/// User plus system CPU time of this process so far.
fn own_cpu_seconds() -> Option<f64> {
    use nix::sys::resource::{getrusage, UsageWho};
    let u = getrusage(UsageWho::RUSAGE_SELF).ok()?;
    let secs = |t: nix::sys::time::TimeVal| t.tv_sec() as f64 + t.tv_usec() as f64 / 1e6;
    Some(secs(u.user_time()) + secs(u.system_time()))
}

fn mac_str(mac: &[u8; 6], sep: char) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(&sep.to_string())
}

async fn machine(s: Arc<Shared>, mac: [u8; 6], arch: u16, xid: u32) -> MachineResult {
    let t0 = Instant::now();
    let mut r = MachineResult {
        mac: mac_str(&mac, ':'),
        arch,
        ..Default::default()
    };
    for boot in 0..s.boot_attempts {
        if boot > 0 {
            tokio::time::sleep(REBOOT_PAUSE).await;
        }
        // Each boot its own xids (bits 24-27 of the machine's part), and each of its two DORAs
        // (firmware, then iPXE) and their attempts (top nibble) too, on one channel: a late or
        // duplicate reply to an earlier one never counts for a later one.
        let xid = xid ^ ((boot % MAX_BOOT_ATTEMPTS) << 24);
        let (tx, mut rx) = mpsc::unbounded_channel();
        let xid_ipxe = xid | 0x8000_0000;
        s.waiters.lock().insert(xid, tx);
        let m = Machine {
            mac,
            arch,
            xid,
            xid_ipxe,
            t0,
        };
        let res = flow(&s, &mut r, &mut rx, &m).await;
        s.waiters.lock().remove(&xid);
        r.boots = boot + 1;
        match res {
            Ok(()) => {
                r.ok = true;
                r.error = None;
                break;
            }
            Err(e) => r.error = Some(format!("{e:#}")),
        }
    }
    r
}

/// One simulated machine: its MAC, client architecture, the xids of its two DORAs and when it
/// was powered on.
struct Machine {
    mac: [u8; 6],
    arch: u16,
    xid: u32,
    xid_ipxe: u32,
    t0: Instant,
}

impl Machine {
    fn stage(&self, r: &mut MachineResult, name: &str) {
        r.stages
            .push((name.to_string(), self.t0.elapsed().as_secs_f64()));
    }
}

/// The boot a PXE ROM and then iPXE do: firmware DHCP, first stage over TFTP, iPXE's DHCP,
/// scripts over HTTP, kernel, initrds.
async fn flow(
    s: &Shared,
    r: &mut MachineResult,
    rx: &mut mpsc::UnboundedReceiver<ReplyView>,
    m: &Machine,
) -> Result<()> {
    firmware_stage(s, r, rx, m).await?;
    let ack2 = dora(
        s,
        rx,
        ClientKind::Ipxe {
            arch: m.arch,
            http: true,
            user_class: true,
        },
        m.mac,
        m.xid_ipxe,
        &mut r.dhcp_retransmits,
    )
    .await
    .context("iPXE DHCP")?;
    m.stage(r, "ipxe-dhcp");
    let ip2 = ack2.yiaddr;
    r.address = Some(ip2.to_string());
    let url = boot_file(&ack2);
    if !url.starts_with("http://") {
        bail!("iPXE ACK boot file is not an http URL: {url:?}");
    }
    let vars = Vars {
        mac: m.mac,
        arch: m.arch,
        ip: ip2,
    };
    let (url, script) = follow_scripts(r, m, ip2, url, &vars).await?;
    let urls = |alternatives: Vec<String>| -> Vec<String> {
        alternatives
            .iter()
            .map(|a| resolve(&url, &vars.expand(a)))
            .collect()
    };
    let kernel = find_alternatives(&script, "kernel")
        .ok_or_else(|| anyhow!("no kernel line after {MAX_CHAINS} chains: {script:?}"))?;
    fetch_counted(r, ip2, &urls(kernel)).await?;
    r.time_to_kernel = Some(m.t0.elapsed().as_secs_f64());
    m.stage(r, "kernel");
    for line in script.lines() {
        if let Some(initrd) = alternatives(line, "initrd") {
            fetch_counted(r, ip2, &urls(initrd)).await?;
        }
    }
    r.time_to_done = Some(m.t0.elapsed().as_secs_f64());
    m.stage(r, "initrd");
    Ok(())
}

/// The firmware's part: DORA, then the boot file its ACK names over TFTP.
async fn firmware_stage(
    s: &Shared,
    r: &mut MachineResult,
    rx: &mut mpsc::UnboundedReceiver<ReplyView>,
    m: &Machine,
) -> Result<()> {
    let ack = dora(
        s,
        rx,
        ClientKind::Firmware { arch: m.arch },
        m.mac,
        m.xid,
        &mut r.dhcp_retransmits,
    )
    .await
    .context("firmware DHCP")?;
    m.stage(r, "firmware-dhcp");
    let ip = ack.yiaddr;
    r.firmware_address = Some(ip.to_string());
    let tftp_server = if ack.siaddr.is_unspecified() {
        server_id(&ack).ok_or_else(|| anyhow!("firmware ACK has neither siaddr nor server id"))?
    } else {
        ack.siaddr
    };
    let file = boot_file(&ack);
    if file.is_empty() {
        bail!("firmware ACK names no boot file");
    }
    let (n, retx) = tftp_get(ip, tftp_server, &file, s.blksize, firmware_window(m.arch))
        .await
        .with_context(|| format!("TFTP {file}"))?;
    s.tftp_retx.fetch_add(retx, Ordering::Relaxed);
    r.tftp_retransmits = retx;
    r.tftp_bytes = n;
    m.stage(r, "first-stage");
    Ok(())
}

/// The boot file of a reply: the `file` field, else option 67 (without trailing NULs).
fn boot_file(ack: &ReplyView) -> String {
    let file = if ack.file.is_empty() {
        ack.opt_str(code::BOOTFILE).unwrap_or_default()
    } else {
        ack.file.clone()
    };
    file.trim_end_matches('\0').to_string()
}

/// Chains followed before a machine gives up.
const MAX_CHAINS: usize = 16;

/// Longest `sleep` obeyed in a script (a server asking for more is not waited for longer).
const MAX_SLEEP: u64 = 60;

/// Follows `chain` lines (at most [`MAX_CHAINS`] hops) from `url` to the script that boots a
/// kernel, sleeping where a script says `sleep N` first, as iPXE does (a server that is busy
/// answers "retry in N seconds" that way); that script and its URL.
async fn follow_scripts(
    r: &mut MachineResult,
    m: &Machine,
    ip: Ipv4Addr,
    url: String,
    vars: &Vars,
) -> Result<(String, String)> {
    let mut script = String::new();
    let mut urls = vec![url];
    let mut url = String::new();
    for hop in 0..MAX_CHAINS {
        (url, script) = first_script(ip, &urls).await?;
        if urls.first() != Some(&url) {
            r.http_alternatives += 1;
        }
        m.stage(r, &format!("script{hop}"));
        if find_cmd(&script, "kernel").is_some() {
            break;
        }
        let Some(next) = find_alternatives(&script, "chain") else {
            bail!("script from {url} has neither kernel nor chain: {script:?}");
        };
        if let Some(secs) = find_cmd(&script, "sleep").and_then(|s| s.parse::<u64>().ok()) {
            tokio::time::sleep(Duration::from_secs(secs.min(MAX_SLEEP))).await;
        }
        urls = next
            .iter()
            .map(|n| resolve(&url, &vars.expand(n)))
            .collect();
    }
    Ok((url, script))
}

/// The first of `urls` (a `chain` line's alternatives, tried in order as iPXE does) that
/// answers an iPXE script: its URL and the script. The last failure when none does.
async fn first_script(ip: Ipv4Addr, urls: &[String]) -> Result<(String, String)> {
    let mut failed = anyhow!("a chain line with no URL");
    for url in urls {
        let got = http_get(ip, url, true)
            .await
            .with_context(|| format!("GET {url}"));
        match got {
            Ok((200, body, _)) => {
                let script = String::from_utf8_lossy(&body).into_owned();
                if script.starts_with("#!ipxe") {
                    return Ok((url.clone(), script));
                }
                failed = anyhow!("GET {url}: not an iPXE script");
            }
            Ok((status, _, _)) => failed = anyhow!("GET {url}: status {status}"),
            Err(e) => failed = e,
        }
    }
    Err(failed)
}

/// GETs the first of `urls` (a `kernel` or `initrd` line's alternatives) that answers 200
/// with its whole body, trying them in order as iPXE does: that URL and the body's length, or
/// the last failure when none does.
async fn fetch_first(ip: Ipv4Addr, urls: &[String]) -> Result<(String, u64)> {
    let mut failed = anyhow!("a line with no URL");
    for url in urls {
        match fetch(ip, url).await {
            Ok(n) => return Ok((url.clone(), n)),
            Err(e) => failed = e,
        }
    }
    Err(failed)
}

/// [`fetch_first`] for a machine: its bytes and whether an alternative answered, counted.
async fn fetch_counted(r: &mut MachineResult, ip: Ipv4Addr, urls: &[String]) -> Result<()> {
    let (from, n) = fetch_first(ip, urls).await?;
    r.http_bytes += n;
    if urls.first() != Some(&from) {
        r.http_alternatives += 1;
    }
    Ok(())
}

/// What iPXE does with the first `cmd` line (`kernel`, `initrd`) of `script`, fetched from
/// `script_url`, as a machine at `local` of the storm does it: each `||` alternative in order,
/// the first that answers in full wins. Its URL and length.
pub async fn fetch_line(
    local: Ipv4Addr,
    script_url: &str,
    script: &str,
    cmd: &str,
) -> Result<(String, u64)> {
    let alternatives =
        find_alternatives(script, cmd).ok_or_else(|| anyhow!("no {cmd} line in {script:?}"))?;
    let urls: Vec<String> = alternatives
        .iter()
        .map(|a| resolve(script_url, a))
        .collect();
    fetch_first(local, &urls).await
}

/// GET `url` from `ip`, body counted and dropped; its length, or an error for any status
/// other than 200.
async fn fetch(ip: Ipv4Addr, url: &str) -> Result<u64> {
    get_discarding(ip, url)
        .await
        .with_context(|| format!("GET {url}"))
}

/// Longest response head read before giving up.
const MAX_HEAD: usize = 16 * 1024;

/// Bytes discarded per receive call.
const DISCARD_PER_RECV: usize = 1 << 20;

/// GET `url` from `local` with `Connection: close`; the body is counted against
/// `Content-Length` (required) and discarded inside the kernel (`recv` with `MSG_TRUNC` never
/// copies TCP data out). Kernels and initrds are nearly all of a storm's bytes: 50 GB for
/// 10 000 machines, which copied into the simulator (as `http_get` does through hyper) cost
/// the client side as much CPU as the server, on the same two CPUs, so the storm measured the
/// client. Returns the body length; any status but 200 is an error.
pub async fn get_discarding(local: Ipv4Addr, url: &str) -> Result<u64> {
    let (addr, host, path) = split_url(url)?;
    let sock = TcpSocket::new_v4()?;
    sock.bind(SocketAddr::from(SocketAddrV4::new(local, 0)))?;
    let mut stream = tokio::time::timeout(Duration::from_secs(30), sock.connect(addr))
        .await
        .map_err(|_| anyhow!("connect timed out"))??;
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: iPXE/1.21.1 (stormsim)\r\nConnection: close\r\n\r\n"
    );
    tokio::io::AsyncWriteExt::write_all(&mut stream, req.as_bytes()).await?;
    let mut head = Vec::with_capacity(4096);
    let (status, clen, body_start) = loop {
        if head.len() >= MAX_HEAD {
            bail!("response head over {MAX_HEAD} bytes");
        }
        let mut chunk = [0u8; 4096];
        let n = tokio::time::timeout(
            Duration::from_secs(60),
            tokio::io::AsyncReadExt::read(&mut stream, &mut chunk),
        )
        .await
        .map_err(|_| anyhow!("no response head in 60 s"))??;
        if n == 0 {
            bail!("connection closed before the response head");
        }
        head.extend_from_slice(&chunk[..n]);
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut resp = httparse::Response::new(&mut headers);
        if let httparse::Status::Complete(len) = resp.parse(&head)? {
            let clen = resp
                .headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case("content-length"))
                .and_then(|h| std::str::from_utf8(h.value).ok())
                .and_then(|v| v.trim().parse::<u64>().ok());
            break (resp.code.unwrap_or(0), clen, len);
        }
    };
    if status != 200 {
        bail!("status {status}");
    }
    let clen = clen.ok_or_else(|| anyhow!("no Content-Length"))?;
    let already = (head.len() - body_start) as u64;
    if already > clen {
        bail!("more body bytes than Content-Length {clen}");
    }
    let mut left = clen - already;
    let mut scratch = Box::<[u8]>::new_uninit_slice(DISCARD_PER_RECV);
    while left > 0 {
        let want = left.min(DISCARD_PER_RECV as u64) as usize;
        let got = tokio::time::timeout(Duration::from_secs(60), async {
            loop {
                stream.readable().await?;
                match stream.try_io(tokio::io::Interest::READABLE, || {
                    socket2::SockRef::from(&stream)
                        .recv_with_flags(&mut scratch[..want], libc::MSG_TRUNC)
                }) {
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                    r => return r,
                }
            }
        })
        .await
        .map_err(|_| anyhow!("body stalled for 60 s after {} bytes", clen - left))??;
        if got == 0 {
            bail!("body {} bytes, Content-Length {clen}", clen - left);
        }
        left -= got as u64;
    }
    Ok(clen)
}

/// The server address, `Host` and path of an `http://` URL.
fn split_url(url: &str) -> Result<(SocketAddr, &str, &str)> {
    let after = url
        .strip_prefix("http://")
        .ok_or_else(|| anyhow!("not an http URL"))?;
    let host_end = after.find('/').unwrap_or(after.len());
    let host = &after[..host_end];
    let path = if host_end == after.len() {
        "/"
    } else {
        &after[host_end..]
    };
    let addr: SocketAddr = if host.contains(':') {
        host.parse()?
    } else {
        SocketAddr::new(host.parse()?, 80)
    };
    Ok((addr, host, path))
}

fn server_id(r: &ReplyView) -> Option<Ipv4Addr> {
    let v = r.opt(code::SERVER_ID)?;
    Some(Ipv4Addr::new(
        *v.first()?,
        *v.get(1)?,
        *v.get(2)?,
        *v.get(3)?,
    ))
}

/// DHCP timeouts per try (firmware-like backoff, shortened), bounded.
const DHCP_TIMEOUTS: [u64; 6] = [2, 4, 8, 8, 8, 8];

async fn exchange(
    s: &Shared,
    rx: &mut mpsc::UnboundedReceiver<ReplyView>,
    pkt: &[u8],
    xid: u32,
    want: &[MessageType],
    retx: &mut u64,
) -> Result<ReplyView> {
    let dst = SocketAddr::from(SocketAddrV4::new(Ipv4Addr::BROADCAST, 67));
    for (i, secs) in DHCP_TIMEOUTS.iter().enumerate() {
        if i > 0 {
            *retx += 1;
            s.dhcp_retx.fetch_add(1, Ordering::Relaxed);
        }
        s.dhcp.send_to(pkt, dst).await.context("send DHCP")?;
        let until = tokio::time::Instant::now() + Duration::from_secs(*secs);
        loop {
            match tokio::time::timeout_at(until, rx.recv()).await {
                Ok(Some(r)) => {
                    if r.xid != xid {
                        continue;
                    }
                    if let Some(t) = r.msg_type {
                        if want.contains(&t) {
                            return Ok(r);
                        }
                    }
                }
                Ok(None) => bail!("reply channel closed"),
                Err(_) => break,
            }
        }
    }
    bail!("no {want:?} after {} tries", DHCP_TIMEOUTS.len())
}

async fn dora(
    s: &Shared,
    rx: &mut mpsc::UnboundedReceiver<ReplyView>,
    kind: ClientKind,
    mac: [u8; 6],
    xid: u32,
    retx: &mut u64,
) -> Result<ReplyView> {
    let mut last_nak = String::new();
    for attempt in 0..DORA_ATTEMPTS {
        let mut m = ClientMessage::new(kind.clone(), MessageType::Discover, mac);
        m.xid = xid | (attempt << 28);
        let offer = exchange(s, rx, &m.encode(), m.xid, &[MessageType::Offer], retx).await?;
        m.msg_type = MessageType::Request;
        m.requested_ip = Some(offer.yiaddr);
        m.server_id = server_id(&offer);
        let ack = exchange(
            s,
            rx,
            &m.encode(),
            m.xid,
            &[MessageType::Ack, MessageType::Nak],
            retx,
        )
        .await?;
        if ack.msg_type == Some(MessageType::Ack) {
            if ack.yiaddr.is_unspecified() {
                bail!("ACK without an address");
            }
            return Ok(ack);
        }
        // NAK: start over, as firmware does.
        last_nak = ack.opt_str(code::MESSAGE).unwrap_or_default();
        s.dhcp_naks.fetch_add(1, Ordering::Relaxed);
    }
    bail!("NAKed {DORA_ATTEMPTS} times (last: {last_nak:?})")
}

/// DORAs a machine starts before giving up on NAKs (firmware restarts after a NAK).
const DORA_ATTEMPTS: u32 = 8;

/// The TFTP windowsize a machine's firmware asks for: UEFI's PXE (edk2, so OVMF and most
/// vendors' UEFI) asks for 4 blocks a window (seen on the wire from OVMF); a BIOS PXE ROM reads
/// lock-step.
fn firmware_window(arch: u16) -> u16 {
    if arch == 0 {
        1
    } else {
        4
    }
}

/// TFTP timeouts per try, seconds, bounded.
const TFTP_TIMEOUTS: [u64; 8] = [1, 1, 2, 2, 4, 4, 4, 4];

/// Downloads `file` over TFTP from `local`, asking for `blksize` and (above 1) `windowsize`
/// (RFC 7440: the server sends that many blocks, the client acknowledges the last of each
/// window); returns (bytes, retransmits).
pub async fn tftp_get(
    local: Ipv4Addr,
    server: Ipv4Addr,
    file: &str,
    blksize: u16,
    windowsize: u16,
) -> Result<(u64, u64)> {
    let sock = UdpSocket::bind(SocketAddrV4::new(local, 0))
        .await
        .with_context(|| format!("bind {local} (is the pool routed as local?)"))?;
    let mut dl = Download::new(
        SocketAddr::from(SocketAddrV4::new(server, 69)),
        file,
        blksize,
        windowsize,
    );
    let mut retx = 0u64;
    let mut tries = 0usize;
    // One byte more than the largest block the server may send, so an oversized one shows.
    let mut buf = vec![0u8; usize::from(blksize.max(512)) + 5];
    sock.send_to(&dl.last, dl.peer).await?;
    loop {
        let secs = TFTP_TIMEOUTS
            .get(tries)
            .copied()
            .ok_or_else(|| anyhow!("no answer after {} tries at block {}", tries, dl.expect))?;
        let got = tokio::time::timeout(Duration::from_secs(secs), sock.recv_from(&mut buf)).await;
        let (n, from) = match got {
            Ok(r) => r?,
            Err(_) => {
                tries += 1;
                if tries < TFTP_TIMEOUTS.len() {
                    retx += 1;
                    sock.send_to(&dl.last, dl.peer).await?;
                }
                continue;
            }
        };
        match dl.on_datagram(from, &buf[..n])? {
            Step::Ignore => {}
            Step::Advance => tries = 0,
            Step::Progress => {
                tries = 0;
                sock.send_to(&dl.last, dl.peer).await?;
            }
            Step::Repeat => {
                sock.send_to(&dl.last, dl.peer).await?;
            }
            Step::Done => {
                sock.send_to(&dl.last, dl.peer).await?;
                return Ok((dl.total, retx));
            }
        }
    }
}

/// What a TFTP client does after a datagram.
enum Step {
    /// Not for this transfer, or nothing to do.
    Ignore,
    /// New data or the OACK: send `last` (the new ACK) and start the timeouts over.
    Progress,
    /// New data inside a window: start the timeouts over; the window's last block is
    /// acknowledged.
    Advance,
    /// The previous block again (our ACK was lost or late), or a gap in a window: ACK the
    /// last block received in order again.
    Repeat,
    /// The last block: send its ACK and finish.
    Done,
}

/// The client side of one TFTP read: the server's TID once known, the datagram to resend on
/// timeout, the negotiated block size and transfer size, and what has arrived.
struct Download {
    peer: SocketAddr,
    locked: bool,
    last: Vec<u8>,
    blksize: usize,
    tsize: Option<u64>,
    /// The negotiated windowsize (1 until an OACK says otherwise), blocks received in order
    /// in the current window, and whether this window's gap was acknowledged already.
    window: u16,
    in_window: u16,
    gap_acked: bool,
    expect: u16,
    total: u64,
}

impl Download {
    /// Starts with the RRQ (asking for `blksize`, the transfer size and, above 1,
    /// `windowsize`) as `last`.
    fn new(server: SocketAddr, file: &str, blksize: u16, windowsize: u16) -> Download {
        let mut rrq = vec![0, 1];
        let (b, w) = (blksize.to_string(), windowsize.to_string());
        let mut parts = vec![file, "octet", "blksize", &b, "tsize", "0"];
        if windowsize > 1 {
            parts.extend(["windowsize", &w]);
        }
        for part in parts {
            rrq.extend_from_slice(part.as_bytes());
            rrq.push(0);
        }
        Download {
            peer: server,
            locked: false,
            last: rrq,
            blksize: 512,
            tsize: None,
            window: 1,
            in_window: 0,
            gap_acked: false,
            expect: 1,
            total: 0,
        }
    }

    fn on_datagram(&mut self, from: SocketAddr, p: &[u8]) -> Result<Step> {
        if (self.locked && from != self.peer) || from.ip() != self.peer.ip() || p.len() < 4 {
            return Ok(Step::Ignore);
        }
        match u16::from_be_bytes([p[0], p[1]]) {
            6 if !self.locked => {
                self.peer = from;
                self.locked = true;
                let mut fields = p[2..].split(|&b| b == 0);
                while let (Some(k), Some(v)) = (fields.next(), fields.next()) {
                    let k = String::from_utf8_lossy(k).to_ascii_lowercase();
                    let v = String::from_utf8_lossy(v);
                    match k.as_str() {
                        "blksize" => self.blksize = v.parse().context("OACK blksize")?,
                        "tsize" => self.tsize = Some(v.parse().context("OACK tsize")?),
                        "windowsize" => {
                            self.window = v.parse().context("OACK windowsize")?;
                            if self.window == 0 {
                                bail!("OACK windowsize 0");
                            }
                        }
                        _ => {}
                    }
                }
                self.last = vec![0, 4, 0, 0];
                Ok(Step::Progress)
            }
            3 => self.on_data(from, p),
            5 => {
                let msg = String::from_utf8_lossy(&p[4..]);
                bail!(
                    "TFTP error {}: {}",
                    u16::from_be_bytes([p[2], p[3]]),
                    msg.trim_end_matches('\0')
                );
            }
            _ => Ok(Step::Ignore),
        }
    }

    fn on_data(&mut self, from: SocketAddr, p: &[u8]) -> Result<Step> {
        if !self.locked {
            self.peer = from;
            self.locked = true;
        }
        let block = u16::from_be_bytes([p[2], p[3]]);
        let data = p.len() - 4;
        if data > self.blksize {
            bail!(
                "block {block} has {data} bytes, blksize is {}",
                self.blksize
            );
        }
        if block == self.expect.wrapping_sub(1) && self.window == 1 {
            return Ok(Step::Repeat);
        }
        if block != self.expect {
            // A window resent from our last ACK on (that ACK was lost), or one with a block
            // missing: acknowledge the last block received in order, once per window.
            if self.window > 1 && !self.gap_acked {
                self.gap_acked = true;
                self.in_window = 0;
                return Ok(Step::Repeat);
            }
            return Ok(Step::Ignore);
        }
        self.total += data as u64;
        self.last = vec![0, 4, p[2], p[3]];
        self.expect = self.expect.wrapping_add(1);
        if data >= self.blksize {
            self.in_window += 1;
            if self.in_window < self.window {
                return Ok(Step::Advance);
            }
            self.in_window = 0;
            self.gap_acked = false;
            return Ok(Step::Progress);
        }
        if let Some(t) = self.tsize {
            if t != self.total {
                bail!("got {} bytes, tsize said {t}", self.total);
            }
        }
        Ok(Step::Done)
    }
}

/// Values for iPXE's `${...}` variables in chain URLs.
struct Vars {
    mac: [u8; 6],
    arch: u16,
    ip: Ipv4Addr,
}

impl Vars {
    fn expand(&self, s: &str) -> String {
        let mut out = String::new();
        let mut rest = s;
        while let Some(i) = rest.find("${") {
            out.push_str(&rest[..i]);
            let Some(j) = rest[i..].find('}') else {
                out.push_str(&rest[i..]);
                return out;
            };
            let inner = &rest[i + 2..i + j];
            let (name, ty) = inner.split_once(':').unwrap_or((inner, ""));
            let name = name.rsplit('/').next().unwrap_or(name);
            let efi = self.arch != 0;
            let v = match name {
                "mac" if ty == "hexhyp" => mac_str(&self.mac, '-'),
                "mac" => mac_str(&self.mac, ':'),
                "ip" => self.ip.to_string(),
                "uuid" => format!(
                    "11111111-1111-1111-1111-{}",
                    mac_str(&self.mac, '\0').replace('\0', "")
                ),
                "buildarch" => (if efi { "x86_64" } else { "i386" }).to_string(),
                "platform" => (if efi { "efi" } else { "pcbios" }).to_string(),
                _ => String::new(),
            };
            out.push_str(&v);
            rest = &rest[i + j + 1..];
        }
        out.push_str(rest);
        out
    }
}

/// The first argument of the first `cmd` line that is not an option.
fn find_cmd(script: &str, cmd: &str) -> Option<String> {
    find_alternatives(script, cmd)?.into_iter().next()
}

/// The alternatives of the first `cmd` line ([`alternatives`]).
fn find_alternatives(script: &str, cmd: &str) -> Option<Vec<String>> {
    script.lines().find_map(|l| alternatives(l, cmd))
}

/// When `line` is a `cmd` command, its first argument and those of the `cmd` commands that
/// follow it after `||` (iPXE runs each only when the one before failed), up to the first
/// other command (`goto failed`: running out of alternatives fails as before).
fn alternatives(line: &str, cmd: &str) -> Option<Vec<String>> {
    let mut out = Vec::new();
    for part in line.split("||") {
        let mut w = part.split_whitespace();
        if w.next() != Some(cmd) {
            break;
        }
        out.extend(first_arg(w));
    }
    (!out.is_empty()).then_some(out)
}

/// The first non-option argument of an iPXE image command (`--name X`, `-n X`, `--timeout X`
/// and `-t X` take a value).
fn first_arg<'a>(mut w: impl Iterator<Item = &'a str>) -> Option<String> {
    while let Some(a) = w.next() {
        match a {
            "--name" | "-n" | "--timeout" | "-t" => {
                w.next();
            }
            _ if a.starts_with('-') => {}
            _ => return Some(a.to_string()),
        }
    }
    None
}

/// `u` against the URL `base` (absolute, host-relative or path-relative).
fn resolve(base: &str, u: &str) -> String {
    if u.starts_with("http://") {
        return u.to_string();
    }
    let after = base.strip_prefix("http://").unwrap_or(base);
    let host_end = after.find('/').unwrap_or(after.len());
    let origin = &base[..base.len() - after.len() + host_end];
    if u.starts_with('/') {
        return format!("{origin}{u}");
    }
    let path = &after[host_end..];
    let path = path.split('?').next().unwrap_or("/");
    let dir = &path[..path.rfind('/').map(|i| i + 1).unwrap_or(0)];
    format!("{origin}{dir}{u}")
}

/// GET `url` from `local`; returns (status, body if `keep` (at most 1 MiB), bytes received).
/// The body length is checked against Content-Length.
pub async fn http_get(local: Ipv4Addr, url: &str, keep: bool) -> Result<(u16, Vec<u8>, u64)> {
    let (addr, host, path) = split_url(url)?;
    let sock = TcpSocket::new_v4()?;
    sock.bind(SocketAddr::from(SocketAddrV4::new(local, 0)))?;
    let stream = tokio::time::timeout(Duration::from_secs(30), sock.connect(addr))
        .await
        .map_err(|_| anyhow!("connect timed out"))??;
    let (mut send, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
    let conn = tokio::spawn(conn);
    let req = hyper::Request::get(path)
        .header("host", host)
        .header("user-agent", "iPXE/1.21.1 (stormsim)")
        .body(Empty::<bytes::Bytes>::new())?;
    let resp = tokio::time::timeout(Duration::from_secs(60), send.send_request(req))
        .await
        .map_err(|_| anyhow!("no response headers in 60 s"))??;
    let status = resp.status().as_u16();
    let clen: Option<u64> = resp
        .headers()
        .get("content-length")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok());
    let mut body = resp.into_body();
    let mut kept = Vec::new();
    let mut n = 0u64;
    loop {
        let f = tokio::time::timeout(Duration::from_secs(60), body.frame())
            .await
            .map_err(|_| anyhow!("body stalled for 60 s after {n} bytes"))?;
        let Some(f) = f else { break };
        let f = f?;
        if let Ok(d) = f.into_data() {
            n += d.len() as u64;
            if keep && kept.len() < (1 << 20) {
                kept.extend_from_slice(&d);
            }
        }
    }
    conn.abort();
    if let Some(c) = clen {
        if c != n {
            bail!("body {n} bytes, Content-Length {c}");
        }
    }
    Ok((status, kept, n))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(block: u16, len: usize) -> Vec<u8> {
        let mut p = vec![0, 3];
        p.extend_from_slice(&block.to_be_bytes());
        p.extend(std::iter::repeat_n(7u8, len));
        p
    }

    #[test]
    fn a_windowed_download_acknowledges_each_windows_last_block_and_a_gap_once() {
        let server: SocketAddr = "198.18.0.1:69".parse().unwrap();
        let tid: SocketAddr = "198.18.0.1:40000".parse().unwrap();
        let mut d = Download::new(server, "snponly.efi", 1468, 4);
        let asked: &[u8] = b"windowsize\x004\x00";
        assert!(d.last.windows(asked.len()).any(|w| w == asked));
        let oack = b"\x00\x06blksize\x001468\x00windowsize\x004\x00tsize\x005000\x00";
        assert!(matches!(d.on_datagram(tid, oack).unwrap(), Step::Progress));
        assert_eq!(d.last, [0, 4, 0, 0]);
        for b in 1..=3 {
            assert!(matches!(
                d.on_datagram(tid, &data(b, 1468)).unwrap(),
                Step::Advance
            ));
        }
        assert!(matches!(
            d.on_datagram(tid, &data(4, 1468)).unwrap(),
            Step::Progress
        ));
        assert_eq!(d.last, [0, 4, 0, 4]);
        // Block 5 lost: 6 shows the gap, acknowledged (ACK 4) once for the window.
        assert!(matches!(
            d.on_datagram(tid, &data(6, 1468)).unwrap(),
            Step::Repeat
        ));
        assert_eq!(d.last, [0, 4, 0, 4]);
        assert!(matches!(
            d.on_datagram(tid, &data(7, 1468)).unwrap(),
            Step::Ignore
        ));
        // The server resends from 5: a new window counts from there, and a short block ends
        // the file (the OACK's tsize said 5000; this test's file is longer).
        d.tsize = Some(5 * 1468 + 100);
        assert!(matches!(
            d.on_datagram(tid, &data(5, 1468)).unwrap(),
            Step::Advance
        ));
        assert!(matches!(
            d.on_datagram(tid, &data(6, 100)).unwrap(),
            Step::Done
        ));
        assert_eq!(d.total, 5 * 1468 + 100);
    }

    #[test]
    fn a_lockstep_download_acknowledges_every_block_and_repeats_for_a_duplicate() {
        let server: SocketAddr = "198.18.0.1:69".parse().unwrap();
        let tid: SocketAddr = "198.18.0.1:40000".parse().unwrap();
        let mut d = Download::new(server, "undionly.kpxe", 1468, 1);
        let asked: &[u8] = b"windowsize";
        assert!(!d.last.windows(asked.len()).any(|w| w == asked));
        let oack = b"\x00\x06blksize\x001468\x00tsize\x001500\x00";
        assert!(matches!(d.on_datagram(tid, oack).unwrap(), Step::Progress));
        assert!(matches!(
            d.on_datagram(tid, &data(1, 1468)).unwrap(),
            Step::Progress
        ));
        assert!(matches!(
            d.on_datagram(tid, &data(1, 1468)).unwrap(),
            Step::Repeat
        ));
        assert!(matches!(
            d.on_datagram(tid, &data(2, 32)).unwrap(),
            Step::Done
        ));
    }

    #[test]
    fn percentiles_nearest_rank() {
        let mut v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&mut v, 50.0), Some(50.0));
        assert_eq!(percentile(&mut v, 99.0), Some(99.0));
        assert_eq!(percentile(&mut v, 100.0), Some(100.0));
        assert_eq!(percentile(&mut [], 50.0), None);
    }

    #[test]
    fn expands_ipxe_variables_and_resolves() {
        let v = Vars {
            mac: [0x52, 0x54, 0, 0, 0x01, 0x02],
            arch: 7,
            ip: Ipv4Addr::new(198, 18, 8, 3),
        };
        assert_eq!(
            v.expand("/ipxe?mac=${mac:hexhyp}&p=${platform:uristring}&x=${net0/mac}&q=${nope}"),
            "/ipxe?mac=52-54-00-00-01-02&p=efi&x=52:54:00:00:01:02&q="
        );
        assert_eq!(
            resolve("http://198.18.0.1/boot.ipxe", "/ipxe?mac=1"),
            "http://198.18.0.1/ipxe?mac=1"
        );
        assert_eq!(
            resolve("http://198.18.0.1:8080/a/b?x=/y", "k"),
            "http://198.18.0.1:8080/a/k"
        );
        assert_eq!(
            find_cmd("#!ipxe\nchain --replace --autofree http://h/x\n", "chain").as_deref(),
            Some("http://h/x")
        );
        assert_eq!(
            find_cmd(
                "kernel --name kernel http://h/k a=b || goto failed\n",
                "kernel"
            )
            .as_deref(),
            Some("http://h/k")
        );
    }

    #[test]
    fn a_lines_alternatives_are_its_commands_urls_up_to_another_command() {
        let script = "#!ipxe\necho x || echo y\n\
            kernel --name kernel http://a/k x=1 || kernel --name kernel http://b/k x=1 || goto failed\n\
            initrd --name i http://a/i || goto failed\n\
            chain --replace http://a/boot.ipxe || chain --replace http://b/boot.ipxe\n";
        assert_eq!(
            find_alternatives(script, "kernel").unwrap(),
            ["http://a/k", "http://b/k"]
        );
        assert_eq!(find_alternatives(script, "initrd").unwrap(), ["http://a/i"]);
        assert_eq!(
            find_alternatives(script, "chain").unwrap(),
            ["http://a/boot.ipxe", "http://b/boot.ipxe"]
        );
        assert_eq!(find_alternatives(script, "boot"), None);
        // A command after `goto` is never reached.
        assert_eq!(
            alternatives(
                "kernel http://a/k || goto failed || kernel http://b/k",
                "kernel"
            )
            .unwrap(),
            ["http://a/k"]
        );
    }
}
