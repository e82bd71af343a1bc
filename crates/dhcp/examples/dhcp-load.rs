//! A DHCP load generator for bench/dhcp: full DORA exchanges at a fixed rate, as a relay agent
//! (like `perfdhcp -l IF` with a giaddr), cheap enough per exchange that it is not what limits
//! the measurement.
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
//! dhcp-load SERVER_IP GIADDR --rate N --seconds S [--wait-ms W] [--mac-prefix HEX4]
//! ```
//! Binds GIADDR:67 (so it must run where GIADDR is a local address and nothing else holds
//! port 67), sends DISCOVERs for S seconds at N per second, each from a new client MAC, answers
//! every OFFER with a REQUEST (options 50 and 54 from the OFFER) and counts ACKs. After the
//! last DISCOVER it waits W ms (default 1000) for stragglers. Prints one line:
//! `do_sent do_recv ra_sent ra_recv acks_per_s do_drop_pct ra_drop_pct ra_avg_ms ra_p99_ms
//! naks duplicates send_failures cpu_s` as `key=value` pairs (`duplicates`: ACKs of an address
//! already ACKed to another client; `send_failures`: datagrams this generator could not send). Exit status 0 even with drops (the caller
//! judges); 2 on usage errors.

use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
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
    server: Ipv4Addr,
    giaddr: Ipv4Addr,
    rate: u64,
    seconds: u64,
    wait: Duration,
    mac_prefix: [u8; 2],
}

fn usage() -> ! {
    eprintln!(
        "usage: dhcp-load SERVER_IP GIADDR --rate N --seconds S [--wait-ms W] [--mac-prefix HEX4]"
    );
    std::process::exit(2)
}

fn parse_opts() -> Opts {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() < 2 {
        usage()
    }
    let ip = |s: &str| s.parse::<Ipv4Addr>().unwrap_or_else(|_| usage());
    let mut o = Opts {
        server: ip(&args[0]),
        giaddr: ip(&args[1]),
        rate: 1000,
        seconds: 5,
        wait: Duration::from_millis(1000),
        mac_prefix: [0x02, 0xdc],
    };
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

/// A relayed BOOTREQUEST: hops 1, giaddr set, chaddr the client's MAC.
fn encode(
    out: &mut Vec<u8>,
    msg_type: u8,
    xid: u32,
    mac: [u8; 6],
    giaddr: Ipv4Addr,
    extra: &[(u8, &[u8])],
) {
    out.clear();
    out.resize(BOOTP_HEADER, 0);
    out[0] = 1; // BOOTREQUEST
    out[1] = 1; // Ethernet
    out[2] = 6;
    out[3] = 1; // hops: relayed once
    out[4..8].copy_from_slice(&xid.to_be_bytes());
    out[24..28].copy_from_slice(&giaddr.octets());
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

/// The fields of a reply this generator needs; None if it is not a well-formed BOOTREPLY.
struct Reply {
    xid: u32,
    msg_type: u8,
    yiaddr: [u8; 4],
    server_id: Option<[u8; 4]>,
}

fn parse(p: &[u8]) -> Option<Reply> {
    if p.len() < BOOTP_HEADER + 4 || p[0] != 2 || p[BOOTP_HEADER..BOOTP_HEADER + 4] != MAGIC {
        return None;
    }
    let xid = u32::from_be_bytes(p[4..8].try_into().ok()?);
    let yiaddr: [u8; 4] = p[16..20].try_into().ok()?;
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
            54 if len == 4 => server_id = value.try_into().ok(),
            _ => {}
        }
        i += 2 + len;
    }
    Some(Reply {
        xid,
        msg_type,
        yiaddr,
        server_id,
    })
}

/// Sends `packets` to `to` with as few `sendmmsg` calls as the kernel allows; returns how many
/// went out (a full send buffer drops the rest, counted as drops by the caller's totals).
fn send_all(socket: &UdpSocket, to: SocketAddrV4, packets: &[Vec<u8>]) -> usize {
    let transmits: Vec<Transmit> = packets
        .iter()
        .map(|p| Transmit {
            destination: to.into(),
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

fn main() {
    let o = parse_opts();
    let total = (o.rate * o.seconds) as usize;
    let socket = UdpSocket::bind(SocketAddrV4::new(o.giaddr, 67)).unwrap_or_else(|e| {
        eprintln!("dhcp-load: bind {}:67: {e}", o.giaddr);
        std::process::exit(2)
    });
    let sock2 = socket2::SockRef::from(&socket);
    let _ = sock2.set_recv_buffer_size(8 << 20);
    let _ = sock2.set_send_buffer_size(8 << 20);
    socket
        .set_read_timeout(Some(Duration::from_millis(1)))
        .unwrap_or_else(|e| {
            eprintln!("dhcp-load: {e}");
            std::process::exit(2)
        });
    let server = SocketAddrV4::new(o.server, 67);

    // Per exchange: when its REQUEST went out, whether its OFFER and ACK came.
    let mut request_sent: Vec<Option<Instant>> = vec![None; total];
    let mut offered = vec![false; total];
    let mut acked = vec![false; total];
    let mut ra_delays: Vec<Duration> = Vec::with_capacity(total);
    let mut leased = std::collections::HashSet::with_capacity(total);
    let (mut do_sent, mut do_recv, mut ra_sent, mut ra_recv) = (0usize, 0usize, 0usize, 0usize);
    let (mut naks, mut duplicates, mut send_failures) = (0usize, 0usize, 0usize);

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
        // DISCOVERs due by now (the schedule is rate x elapsed time, so a late tick catches up).
        let due = ((now - start).as_secs_f64() * o.rate as f64) as usize;
        let due = due.min(total);
        out.clear();
        while next_index < due {
            let i = next_index as u32;
            encode(
                &mut scratch,
                DISCOVER,
                i,
                mac_of(o.mac_prefix, i),
                o.giaddr,
                &[],
            );
            out.push(scratch.clone());
            next_index += 1;
        }
        if !out.is_empty() {
            let n = send_all(&socket, server, &out);
            do_sent += n;
            send_failures += out.len() - n;
        }
        // Everything that has arrived (waiting at most 1 ms for the first datagram).
        if !matches!(batch.recv(&socket), Ok(n) if n > 0) {
            continue;
        }
        let received = Instant::now();
        out.clear();
        for (datagram, _) in batch.iter() {
            let Some(reply) = parse(datagram) else {
                continue;
            };
            let i = reply.xid as usize;
            if i >= total {
                continue;
            }
            match reply.msg_type {
                OFFER if !offered[i] => {
                    offered[i] = true;
                    do_recv += 1;
                    let server_id = reply.server_id.unwrap_or(o.server.octets());
                    encode(
                        &mut scratch,
                        REQUEST,
                        reply.xid,
                        mac_of(o.mac_prefix, reply.xid),
                        o.giaddr,
                        &[(50, &reply.yiaddr), (54, &server_id)],
                    );
                    out.push(scratch.clone());
                    request_sent[i] = Some(received);
                }
                ACK if !acked[i] && request_sent[i].is_some() => {
                    acked[i] = true;
                    ra_recv += 1;
                    if let Some(t) = request_sent[i] {
                        ra_delays.push(received - t);
                    }
                    if !leased.insert(reply.yiaddr) {
                        duplicates += 1;
                    }
                }
                NAK => naks += 1,
                _ => {}
            }
        }
        if !out.is_empty() {
            let n = send_all(&socket, server, &out);
            ra_sent += n;
            send_failures += out.len() - n;
        }
    }
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
        "do_sent={do_sent} do_recv={do_recv} ra_sent={ra_sent} ra_recv={ra_recv} acks_per_s={:.0} \
         do_drop_pct={:.2} ra_drop_pct={:.2} ra_avg_ms={avg:.3} ra_p99_ms={p99:.3} naks={naks} \
         duplicates={duplicates} send_failures={send_failures} cpu_s={:.2}",
        ra_recv as f64 / o.seconds as f64,
        pct(do_sent, do_recv),
        pct(ra_sent, ra_recv),
        cpu_seconds(),
    );
}
