//! Ending iPXE's wait for IPv6 on IPv4-only boot networks.
//!
//! iPXE's "Configuring (net0 ...)" step waits for every network configurator, IPv6 included
//! (src/usr/ifmgmt.c). Its IPv6 configurator (src/net/ndp.c) sends router solicitations and,
//! when no router answers, gives up only after ~15.75 s (the build Debian ships) or ~3.9 s
//! (iPXE 1.21.1 and later). Any router advertisement with the M and O flags clear completes it
//! at once (measured in bench/README.md). chainboot therefore answers router
//! solicitations on its boot interfaces with an advertisement that carries nothing: router
//! lifetime 0 (no host installs an IPv6 route from it), no prefix (no host configures an
//! address from it), M and O clear (no DHCPv6). In `auto` mode it stays quiet on any link where
//! a real IPv6 router has been heard.
//!
//! When chainboot's DHCPv6 hands out addresses the advertisement says so ([`Advertisement`]):
//! M and O set, the DHCPv6 prefixes on-link, the router lifetime the operator configured.
//!
//! [`responder`] is the sans-IO core; [`RaServer`] owns one raw ICMPv6 socket per interface.

pub mod responder;

use std::io;
use std::net::{Ipv6Addr, SocketAddrV6};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::UdpSocket;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

pub use responder::{Advertisement, Policy, Responder};

/// `[ipv6] router_advertisements`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum RaMode {
    /// Answer router solicitations unless a real IPv6 router is heard on the link.
    #[default]
    Auto,
    /// Always answer.
    Always,
    /// Never send anything.
    Off,
}

/// `[ipv6]`: chainboot's only IPv6 behaviour, see the crate docs.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct Ipv6Config {
    pub router_advertisements: RaMode,
    /// Minimum time between two advertisements on one interface.
    #[serde(deserialize_with = "chainboot_config::duration::deserialize")]
    pub min_interval: Duration,
    /// How long a heard IPv6 router keeps `auto` quiet.
    #[serde(deserialize_with = "chainboot_config::duration::deserialize")]
    pub quiet_after_router: Duration,
    /// Router lifetime of the advertisements (0: not a default router). Only matters when
    /// `[dhcp6]` hands out addresses and chainboot's host routes for the boot network.
    #[serde(deserialize_with = "chainboot_config::duration::deserialize")]
    pub router_lifetime: Duration,
}

impl Default for Ipv6Config {
    fn default() -> Self {
        Ipv6Config {
            router_advertisements: RaMode::Auto,
            min_interval: Duration::from_millis(250),
            quiet_after_router: Duration::from_secs(3600),
            router_lifetime: Duration::ZERO,
        }
    }
}

impl chainboot_config::Validate for Ipv6Config {
    fn validate(&self) -> Vec<chainboot_config::Issue> {
        let mut out = Vec::new();
        if self.min_interval < Duration::from_millis(10) {
            out.push(chainboot_config::Issue::new(
                vec!["min_interval".into()],
                "must be at least 10ms (it bounds the packets a solicitation flood can cause)"
                    .into(),
            ));
        }
        if self.router_lifetime > Duration::from_secs(9000) {
            out.push(chainboot_config::Issue::new(
                vec!["router_lifetime".into()],
                "must be at most 9000s (RFC 4861 §6.2.1 MaxRtrAdvInterval bound)".into(),
            ));
        }
        out
    }
}

/// Counters for metrics.
#[derive(Debug, Default)]
pub struct RaStats {
    pub solicitations: AtomicU64,
    pub advertisements_sent: AtomicU64,
    pub routers_heard: AtomicU64,
    /// The boot interfaces router advertisements are meant for (for `/healthz`, which says
    /// when IPv6 is off on one of them).
    pub interfaces: std::sync::Mutex<Vec<String>>,
}

/// Whether IPv6 works on an interface, as far as answering router solicitations goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ipv6State {
    Ready,
    /// IPv6 is on but the interface has no link-local address (yet: the link may be down):
    /// advertisements cannot be sent from it.
    NoLinkLocal,
    /// IPv6 is off there (why): no solicitation can arrive.
    Disabled(String),
}

impl Ipv6State {
    /// What it means for the boots on that interface, for logs, `check` and `/healthz`;
    /// `None` when ready.
    pub fn problem(&self, interface: &str) -> Option<String> {
        let why = match self {
            Ipv6State::Ready => return None,
            Ipv6State::NoLinkLocal => format!("{interface} has no IPv6 link-local address"),
            Ipv6State::Disabled(why) => why.clone(),
        };
        Some(format!(
            "IPv6 is off on {interface} ({why}): chainboot cannot answer IPv6 router \
             solicitations there, so iPXE waits for IPv6 on every boot (~15 s with Debian's \
             iPXE); enable IPv6 on it (sysctl -w net.ipv6.conf.{interface}.disable_ipv6=0)"
        ))
    }
}

/// Looks at the interface's IPv6 settings in this network namespace: `disable_ipv6` (and
/// whether the kernel has IPv6 at all), then its addresses for a link-local one.
pub fn ipv6_state(interface: &str) -> Ipv6State {
    if interface.is_empty() || interface.contains('/') || interface.starts_with('.') {
        return Ipv6State::Disabled(format!("`{interface}` is not an interface name"));
    }
    let setting = format!("/proc/sys/net/ipv6/conf/{interface}/disable_ipv6");
    match std::fs::read_to_string(&setting) {
        Ok(v) if v.trim() == "0" => {}
        Ok(v) => {
            return Ipv6State::Disabled(format!(
                "net.ipv6.conf.{interface}.disable_ipv6 = {}",
                v.trim()
            ))
        }
        Err(_) if !std::path::Path::new("/proc/sys/net/ipv6").exists() => {
            return Ipv6State::Disabled("the kernel has no IPv6 (ipv6.disable=1?)".into())
        }
        Err(e) => return Ipv6State::Disabled(format!("{setting}: {e}")),
    }
    // Lines: address (32 hex digits), ifindex, prefix length, scope, flags, name.
    let has_link_local = std::fs::read_to_string("/proc/net/if_inet6").is_ok_and(|t| {
        t.lines().any(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f.len() == 6 && f[5] == interface && f[0].starts_with("fe80")
        })
    });
    if has_link_local {
        Ipv6State::Ready
    } else {
        Ipv6State::NoLinkLocal
    }
}

const ALL_NODES: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1);
const ALL_ROUTERS: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 2);
const IPPROTO_ICMPV6: libc::c_int = 58;
const ICMP6_FILTER: libc::c_int = 1;

/// One raw ICMPv6 socket on one interface.
pub struct RaServer {
    interface: String,
    ifindex: u32,
    /// A raw ICMPv6 socket driven through tokio's datagram socket type: `recvfrom`/`sendto`
    /// are the same system calls for raw and UDP sockets, and this avoids unsafe fd handling.
    socket: UdpSocket,
    responder: Responder,
    stats: Arc<RaStats>,
    /// Consecutive failed sends (for quiet retries during start-up).
    failures: u32,
    /// M set (for the log line).
    managed: bool,
}

impl RaServer {
    /// Opens the socket on `interface`. Fails (and the caller logs and goes on without RA)
    /// when IPv6 is disabled or the process lacks CAP_NET_RAW.
    pub fn bind(
        interface: &str,
        cfg: &Ipv6Config,
        advertisement: &Advertisement,
        stats: Arc<RaStats>,
    ) -> io::Result<RaServer> {
        let policy = match cfg.router_advertisements {
            RaMode::Auto => Policy::Auto,
            RaMode::Always => Policy::Always,
            RaMode::Off => {
                return Err(io::Error::new(
                    io::ErrorKind::Unsupported,
                    "router advertisements are off",
                ))
            }
        };
        let ifindex = if_index(interface)?;
        let socket = Socket::new(Domain::IPV6, Type::RAW, Some(Protocol::ICMPV6))?;
        socket.set_nonblocking(true)?;
        socket.bind_device(Some(interface.as_bytes()))?;
        // RFC 4861 §6.1: receivers drop RS/RA whose hop limit is not 255.
        socket.set_multicast_hops_v6(255)?;
        socket.set_unicast_hops_v6(255)?;
        socket.set_multicast_if_v6(ifindex)?;
        socket.set_multicast_loop_v6(false)?;
        socket.join_multicast_v6(&ALL_ROUTERS, ifindex)?;
        set_icmp6_filter(
            &socket,
            &[
                responder::ROUTER_SOLICITATION,
                responder::ROUTER_ADVERTISEMENT,
            ],
        )?;
        Ok(RaServer {
            interface: interface.to_string(),
            ifindex,
            socket: UdpSocket::from_std(std::net::UdpSocket::from(std::os::fd::OwnedFd::from(
                socket,
            )))?,
            responder: Responder::new(policy, cfg.min_interval, cfg.quiet_after_router)
                .with_advertisement(advertisement),
            managed: advertisement.managed,
            stats,
            failures: 0,
        })
    }

    /// Runs until cancelled.
    pub async fn run(mut self, shutdown: CancellationToken) -> io::Result<()> {
        if self.managed {
            info!(interface = %self.interface, "answering IPv6 router solicitations: M and O set (chainboot's DHCPv6 hands out addresses), its prefixes on-link");
        } else {
            info!(interface = %self.interface, "answering IPv6 router solicitations with an empty advertisement");
        }
        let mut buf = [0u8; 1500];
        loop {
            let sleep_until = self
                .responder
                .poll_timeout()
                .map(tokio::time::Instant::from_std);
            tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
                _ = async {
                    match sleep_until {
                        Some(t) => tokio::time::sleep_until(t).await,
                        None => std::future::pending().await,
                    }
                } => {
                    let now = std::time::Instant::now();
                    if let Some(ra) = self.responder.poll_transmit(now) {
                        let dst = SocketAddrV6::new(ALL_NODES, 0, 0, self.ifindex);
                        match self.socket.send_to(ra, std::net::SocketAddr::V6(dst)).await {
                            Ok(_) => {
                                self.failures = 0;
                                self.stats.advertisements_sent.fetch_add(1, Ordering::Relaxed);
                                debug!(interface = %self.interface, "sent router advertisement");
                            }
                            Err(e) => {
                                // Right after start the link-local address may still be
                                // tentative (EADDRNOTAVAIL): retry shortly, quietly at first.
                                self.failures += 1;
                                if self.failures > 5 {
                                    warn!(interface = %self.interface, "router advertisement not sent: {e}");
                                } else {
                                    debug!(interface = %self.interface, "router advertisement not sent yet: {e}");
                                }
                                self.responder.send_failed(now, Duration::from_millis(500));
                            }
                        }
                    }
                }
                received = self.socket.recv_from(&mut buf) => {
                    match received {
                        Ok((n, from)) => {
                            let msg = &buf[..n];
                            let source = match from {
                                std::net::SocketAddr::V6(a) => *a.ip(),
                                std::net::SocketAddr::V4(_) => Ipv6Addr::UNSPECIFIED,
                            };
                            let before = self.responder.router_heard();
                            match responder::classify(msg) {
                                responder::Heard::Solicitation => {
                                    self.stats.solicitations.fetch_add(1, Ordering::Relaxed);
                                }
                                responder::Heard::Advertisement { carries_service: true } => {
                                    self.stats.routers_heard.fetch_add(1, Ordering::Relaxed);
                                }
                                _ => {}
                            }
                            self.responder.handle(std::time::Instant::now(), source, msg);
                            if before.is_none() && self.responder.router_heard().is_some() {
                                info!(interface = %self.interface, router = %source,
                                    "an IPv6 router is on this link; not answering router solicitations in auto mode");
                            }
                        }
                        Err(e) => debug!("icmpv6 receive error: {e}"),
                    }
                }
            }
        }
    }
}

// if_nametoindex(3): a plain libc call that socket2 does not wrap.
#[allow(unsafe_code)]
fn if_index(name: &str) -> io::Result<u32> {
    let c = std::ffi::CString::new(name)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in interface name"))?;
    // SAFETY: valid NUL-terminated string.
    let idx = unsafe { libc::if_nametoindex(c.as_ptr()) };
    if idx == 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(idx)
}

/// Lets only the given ICMPv6 types through to the socket (RFC 3542 §3.2), so that the
/// server does not wake up for every neighbour solicitation on a busy link.
#[allow(unsafe_code)] // ICMP6_FILTER: a socket option socket2 does not wrap
fn set_icmp6_filter(socket: &Socket, pass: &[u8]) -> io::Result<()> {
    // A set bit blocks the type.
    let mut filter = [u32::MAX; 8];
    for &t in pass {
        filter[(t >> 5) as usize] &= !(1u32 << (t & 31));
    }
    // SAFETY: `filter` is the 32-byte icmp6_filter structure the option expects.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            IPPROTO_ICMPV6,
            ICMP6_FILTER,
            filter.as_ptr().cast(),
            std::mem::size_of_val(&filter) as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
