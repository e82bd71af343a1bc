//! A DHCP load generator for bench/dhcp: full exchanges at a fixed rate, as a relay agent
//! (like `perfdhcp -l IF` with a giaddr), cheap enough per exchange that it is not what limits
//! the measurement. DHCPv4 (DISCOVER-OFFER-REQUEST-ACK) or DHCPv6
//! (Solicit-Advertise-Request-Reply inside Relay-Forw/Relay-Repl, see `v6.rs`), chosen by the
//! family of the addresses given.
//!
//! Why not only perfdhcp: on a 2-core machine perfdhcp 2.2 needs about a full core at
//! 14 000 exchanges/s (measured: 4.5-6.3 s of CPU per 5 s run at 12 000-16 000/s) and then
//! drops packets itself, so no server can be shown to sustain more than that. This generator
//! encodes and parses the few fields it needs by hand (the crate's own test client,
//! `client::ClientMessage` / `ReplyView`, goes through dhcproto and allocates per packet, which
//! would make the generator cost as much as the server it measures), sends with `sendmmsg`
//! every millisecond and receives with `recvmmsg`, and prints its own CPU time so that a run
//! shows whether it was the bottleneck.
//!
//! ```text
//! dhcp-load SERVER_IP RELAY_IP --rate N --seconds S [--wait-ms W] [--mac-prefix HEX4]
//! ```
//! IPv4: binds RELAY_IP:67 (the giaddr; so it must run where RELAY_IP is a local address and
//! nothing else holds port 67), sends DISCOVERs for S seconds at N per second, each from a new
//! client MAC, answers every OFFER with a REQUEST (options 50 and 54 from the OFFER) and counts
//! ACKs. IPv6: binds [RELAY_IP]:547 and does the same with Solicits from a new DUID each,
//! relayed with RELAY_IP as the link-address, and Requests for the advertised address. After
//! the last first message it waits W ms (default 1000) for stragglers. Prints one line:
//! `do_sent do_recv ra_sent ra_recv acks_per_s do_drop_pct ra_drop_pct ra_avg_ms ra_p99_ms
//! naks duplicates send_failures cpu_s` as `key=value` pairs (the IPv4 names for both
//! families: `do` is DISCOVER-OFFER or Solicit-Advertise, `ra` REQUEST-ACK or Request-Reply,
//! `naks` NAKs or Replies without an address; `duplicates`: ACKs of an address already ACKed
//! to another client; `send_failures`: datagrams this generator could not send). Exit status
//! 0 even with drops (the caller judges); 2 on usage errors.

mod v6;

use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::ops::Range;
use std::time::{Duration, Instant};

use chainboot_udp::{RecvBatch, Transmit};

const BOOTP_HEADER: usize = 236;
const MAGIC: [u8; 4] = [99, 130, 83, 99];
const BATCH: usize = 64;
const DISCOVER: u8 = 1;
const OFFER: u8 = 2;
const REQUEST: u8 = 3;
const ACK: u8 = 5;
const NAK: u8 = 6;

struct Opts {
    server: IpAddr,
    relay: IpAddr,
    rate: u64,
    seconds: u64,
    wait: Duration,
    mac_prefix: [u8; 2],
}

fn usage() -> ! {
    eprintln!(
        "usage: dhcp-load SERVER_IP RELAY_IP --rate N --seconds S [--wait-ms W] [--mac-prefix HEX4]\n\
         (both addresses IPv4: DHCPv4 with RELAY_IP as giaddr; both IPv6: relayed DHCPv6)"
    );
    std::process::exit(2)
}

fn parse_opts() -> Opts {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() < 2 {
        usage()
    }
    let ip = |s: &str| s.parse::<IpAddr>().unwrap_or_else(|_| usage());
    let mut o = Opts {
        server: ip(&args[0]),
        relay: ip(&args[1]),
        rate: 1000,
        seconds: 5,
        wait: Duration::from_millis(1000),
        mac_prefix: [0x02, 0xdc],
    };
    if o.server.is_ipv4() != o.relay.is_ipv4() {
        usage()
    }
    let mut i = 2;
    while i < args.len() {
        let value = args.get(i + 1).unwrap_or_else(|| usage());
        let n = || value.parse::<u64>().unwrap_or_else(|_| usage());
        match args[i].as_str() {
            "--rate" => o.rate = n().max(1),
            "--seconds" => o.seconds = n().max(1),
            "--wait-ms" => o.wait = Duration::from_millis(n()),
            "--mac-prefix" => {
                let v = u16::from_str_radix(value, 16).unwrap_or_else(|_| usage());
                o.mac_prefix = v.to_be_bytes();
            }
            _ => usage(),
        }
        i += 2;
    }
    o
}

/// Exchange `index` uses xid = index and a MAC made of the prefix and the index, so replies
/// map back to their exchange without a lookup table shared between sender and receiver.
fn mac_of(prefix: [u8; 2], index: u32) -> [u8; 6] {
    let i = index.to_be_bytes();
    [prefix[0], prefix[1], i[0], i[1], i[2], i[3]]
}

/// What a reply is, to the pacing loop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// OFFER / Advertise with an address.
    Offer,
    /// ACK / Reply with an address.
    Ack,
    /// NAK / a Reply without an address.
    Nak,
    Other,
}

/// The fields of a reply the generator needs.
struct Reply {
    /// The exchange it answers.
    index: u32,
    kind: Kind,
    /// The address offered or bound (IPv4 in the first 4 bytes).
    addr: [u8; 16],
    /// Where the server identifier's value is in the datagram.
    server_id: Option<Range<usize>>,
}

/// One family's messages.
trait Protocol {
    /// The port the relay binds and the server listens on.
    const PORT: u16;
    /// Most exchanges one run can tell apart by their transaction id.
    const MAX_EXCHANGES: usize;
    /// The first message of exchange `index` (DISCOVER, Solicit).
    fn first(&self, out: &mut Vec<u8>, index: u32);
    /// The second message, asking for what `reply` (an offer, inside `datagram`) offered.
    fn second(&self, out: &mut Vec<u8>, reply: &Reply, datagram: &[u8]);
    /// None if the datagram is not a well-formed reply.
    fn parse(&self, datagram: &[u8]) -> Option<Reply>;
}

/// Relayed DHCPv4: BOOTREQUESTs with hops 1 and the giaddr set.
struct V4 {
    giaddr: Ipv4Addr,
    server: Ipv4Addr,
    mac_prefix: [u8; 2],
}

impl Protocol for V4 {
    const PORT: u16 = 67;
    const MAX_EXCHANGES: usize = u32::MAX as usize;

    fn first(&self, out: &mut Vec<u8>, index: u32) {
        self.encode(out, DISCOVER, index, &[]);
    }

    fn second(&self, out: &mut Vec<u8>, reply: &Reply, datagram: &[u8]) {
        let mut server_id = self.server.octets();
        if let Some(v) = reply.server_id.clone().and_then(|r| datagram.get(r)) {
            if v.len() == 4 {
                server_id.copy_from_slice(v);
            }
        }
        self.encode(
            out,
            REQUEST,
            reply.index,
            &[(50, &reply.addr[..4]), (54, &server_id[..])],
        );
    }

    fn parse(&self, p: &[u8]) -> Option<Reply> {
        if p.len() < BOOTP_HEADER + 4 || p[0] != 2 || p[BOOTP_HEADER..BOOTP_HEADER + 4] != MAGIC {
            return None;
        }
        let xid = u32::from_be_bytes(p[4..8].try_into().ok()?);
        let mut addr = [0u8; 16];
        addr[..4].copy_from_slice(&p[16..20]);
        let mut msg_type = 0;
        let mut server_id = None;
        let mut i = BOOTP_HEADER + 4;
        while i < p.len() {
            let code = p[i];
            if code == 255 {
                break;
            }
            if code == 0 {
                i += 1;
                continue;
            }
            let len = *p.get(i + 1)? as usize;
            let value = p.get(i + 2..i + 2 + len)?;
            match code {
                53 if len == 1 => msg_type = value[0],
                54 if len == 4 => server_id = Some(i + 2..i + 2 + len),
                _ => {}
            }
            i += 2 + len;
        }
        let kind = match msg_type {
            OFFER => Kind::Offer,
            ACK => Kind::Ack,
            NAK => Kind::Nak,
            _ => Kind::Other,
        };
        Some(Reply {
            index: xid,
            kind,
            addr,
            server_id,
        })
    }
}

impl V4 {
    /// A relayed BOOTREQUEST: hops 1, giaddr set, chaddr the client's MAC.
    fn encode(&self, out: &mut Vec<u8>, msg_type: u8, xid: u32, extra: &[(u8, &[u8])]) {
        let mac = mac_of(self.mac_prefix, xid);
        out.clear();
        out.resize(BOOTP_HEADER, 0);
        out[0] = 1; // BOOTREQUEST
        out[1] = 1; // Ethernet
        out[2] = 6;
        out[3] = 1; // hops: relayed once
        out[4..8].copy_from_slice(&xid.to_be_bytes());
        out[24..28].copy_from_slice(&self.giaddr.octets());
        out[28..34].copy_from_slice(&mac);
        out.extend_from_slice(&MAGIC);
        out.extend_from_slice(&[53, 1, msg_type]);
        out.extend_from_slice(&[61, 7, 1]);
        out.extend_from_slice(&mac);
        for (code, value) in extra {
            out.push(*code);
            out.push(value.len() as u8);
            out.extend_from_slice(value);
        }
        out.extend_from_slice(&[55, 4, 1, 3, 6, 51]);
        out.push(255);
        // Pad to the BOOTP minimum, as firmware does.
        if out.len() < 300 {
            out.resize(300, 0);
        }
    }
}

/// Sends `packets` to `to` with as few `sendmmsg` calls as the kernel allows; returns how many
/// went out (a full send buffer drops the rest, counted as drops by the caller's totals).
fn send_all(socket: &UdpSocket, to: SocketAddr, packets: &[Vec<u8>]) -> usize {
    let transmits: Vec<Transmit> = packets
        .iter()
        .map(|p| Transmit {
            destination: to,
            source: None,
            ifindex: 0,
            contents: p,
        })
        .collect();
    let mut sent = 0;
    while sent < transmits.len() {
        match chainboot_udp::send(socket, &transmits[sent..]) {
            Ok(n) if n > 0 => sent += n,
            _ => break,
        }
    }
    sent
}

fn cpu_seconds() -> f64 {
    use nix::sys::resource::{getrusage, UsageWho};
    use nix::sys::time::TimeValLike;
    getrusage(UsageWho::RUSAGE_SELF).map_or(0.0, |u| {
        (u.user_time().num_microseconds() + u.system_time().num_microseconds()) as f64 / 1e6
    })
}

fn fail(what: impl std::fmt::Display) -> ! {
    eprintln!("dhcp-load: {what}");
    std::process::exit(2)
}

fn main() {
    let o = parse_opts();
    match (o.server, o.relay) {
        (IpAddr::V4(server), IpAddr::V4(giaddr)) => run(
            &o,
            &V4 {
                giaddr,
                server,
                mac_prefix: o.mac_prefix,
            },
        ),
        (IpAddr::V6(_), IpAddr::V6(relay)) => run(&o, &v6::V6::new(relay, o.mac_prefix)),
        _ => usage(),
    }
}

/// The counts of a run.
#[derive(Default)]
struct Tally {
    do_sent: usize,
    do_recv: usize,
    ra_sent: usize,
    ra_recv: usize,
    naks: usize,
    duplicates: usize,
    send_failures: usize,
}

fn run<P: Protocol>(o: &Opts, proto: &P) {
    let total = (o.rate * o.seconds) as usize;
    if total > P::MAX_EXCHANGES {
        fail(format!(
            "{total} exchanges in one run; at most {}",
            P::MAX_EXCHANGES
        ));
    }
    let socket = UdpSocket::bind(SocketAddr::new(o.relay, P::PORT))
        .unwrap_or_else(|e| fail(format!("bind {}: {e}", SocketAddr::new(o.relay, P::PORT))));
    let sock2 = socket2::SockRef::from(&socket);
    let _ = sock2.set_recv_buffer_size(8 << 20);
    let _ = sock2.set_send_buffer_size(8 << 20);
    socket
        .set_read_timeout(Some(Duration::from_millis(1)))
        .unwrap_or_else(|e| fail(format!("receive timeout: {e}")));
    let server = SocketAddr::new(o.server, P::PORT);

    // Per exchange: when its second message went out, whether its offer and ACK came.
    let mut request_sent: Vec<Option<Instant>> = vec![None; total];
    let mut offered = vec![false; total];
    let mut acked = vec![false; total];
    let mut ra_delays: Vec<Duration> = Vec::with_capacity(total);
    let mut leased = std::collections::HashSet::with_capacity(total);
    let mut t = Tally::default();

    let start = Instant::now();
    let end_of_sending = start + Duration::from_secs(o.seconds);
    let deadline = end_of_sending + o.wait;
    let mut next_index = 0usize;
    let mut out: Vec<Vec<u8>> = Vec::new();
    let mut batch = RecvBatch::new(BATCH, 1500);
    let mut scratch = Vec::with_capacity(300);
    loop {
        let now = Instant::now();
        if now >= deadline {
            break;
        }
        // First messages due by now (the schedule is rate x elapsed time, so a late tick
        // catches up).
        let due = ((now - start).as_secs_f64() * o.rate as f64) as usize;
        let due = due.min(total);
        out.clear();
        while next_index < due {
            proto.first(&mut scratch, next_index as u32);
            out.push(scratch.clone());
            next_index += 1;
        }
        if !out.is_empty() {
            let n = send_all(&socket, server, &out);
            t.do_sent += n;
            t.send_failures += out.len() - n;
        }
        // Everything that has arrived (waiting at most 1 ms for the first datagram).
        if !matches!(batch.recv(&socket), Ok(n) if n > 0) {
            continue;
        }
        let received = Instant::now();
        out.clear();
        for (datagram, _) in batch.iter() {
            let Some(reply) = proto.parse(datagram) else {
                continue;
            };
            let i = reply.index as usize;
            if i >= total {
                continue;
            }
            match reply.kind {
                Kind::Offer if !offered[i] => {
                    offered[i] = true;
                    t.do_recv += 1;
                    proto.second(&mut scratch, &reply, datagram);
                    out.push(scratch.clone());
                    request_sent[i] = Some(received);
                }
                Kind::Ack if !acked[i] && request_sent[i].is_some() => {
                    acked[i] = true;
                    t.ra_recv += 1;
                    if let Some(sent) = request_sent[i] {
                        ra_delays.push(received - sent);
                    }
                    if !leased.insert(reply.addr) {
                        t.duplicates += 1;
                    }
                }
                Kind::Nak => t.naks += 1,
                _ => {}
            }
        }
        if !out.is_empty() {
            let n = send_all(&socket, server, &out);
            t.ra_sent += n;
            t.send_failures += out.len() - n;
        }
    }
    report(o, &t, ra_delays);
}

fn report(o: &Opts, t: &Tally, mut ra_delays: Vec<Duration>) {
    let pct = |sent: usize, recv: usize| {
        if sent == 0 {
            100.0
        } else {
            100.0 * (sent - recv.min(sent)) as f64 / sent as f64
        }
    };
    ra_delays.sort();
    let avg = if ra_delays.is_empty() {
        0.0
    } else {
        ra_delays.iter().map(|d| d.as_secs_f64()).sum::<f64>() / ra_delays.len() as f64 * 1e3
    };
    let p99 = ra_delays
        .get(ra_delays.len().saturating_sub(1) * 99 / 100)
        .map(|d| d.as_secs_f64() * 1e3)
        .unwrap_or(0.0);
    println!(
        "do_sent={} do_recv={} ra_sent={} ra_recv={} acks_per_s={:.0} \
         do_drop_pct={:.2} ra_drop_pct={:.2} ra_avg_ms={avg:.3} ra_p99_ms={p99:.3} naks={} \
         duplicates={} send_failures={} cpu_s={:.2}",
        t.do_sent,
        t.do_recv,
        t.ra_sent,
        t.ra_recv,
        t.ra_recv as f64 / o.seconds as f64,
        pct(t.do_sent, t.do_recv),
        pct(t.ra_sent, t.ra_recv),
        t.naks,
        t.duplicates,
        t.send_failures,
        cpu_seconds(),
    );
}
