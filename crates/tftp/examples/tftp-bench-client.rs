//! A TFTP read client for benchmarks: N concurrent transfers, blksize and windowsize options,
//! one blocking thread per transfer (a thread per transfer keeps each receive loop a plain
//! `recv` without scheduler hops, which is what makes it faster than the servers it measures).
//!
//! ```text
//! tftp-bench-client SERVER:PORT FILE [--blksize N] [--windowsize N] [--clients N]
//!                   [--repeat N] [--timeout-ms N] [--expect-size N] [--ack-delay-us N]
//!                   [--spin 1] [--ack-work-us N]
//! ```
//! `--ack-delay-us` holds every ACK (ACK 0 after an OACK included) for that long before sending
//! it: a LAN round trip emulated at the receiver, for kernels without sch_netem.
//! `--spin 1` and `--ack-work-us` make the client behave like firmware in a virtual machine on
//! the same host (GRUB or a UEFI PXE driver polling a virtio NIC): it spins on its socket
//! instead of sleeping, so it holds a CPU for the whole transfer, and spends that much CPU time
//! on every datagram before it answers (an emulated guest's turnaround).
//! Prints one line: `clients=.. ok=.. failed=.. bytes=.. wall_s=.. mb_per_s=.. blksize=..
//! windowsize=.. p50_ms=.. max_ms=..` (blksize/windowsize as negotiated by the server).
//! Exit status 1 if any transfer failed.

use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chainboot_tftp::proto::{self, Packet};

#[derive(Clone)]
struct Opts {
    server: SocketAddr,
    file: String,
    blksize: Option<u32>,
    windowsize: Option<u32>,
    clients: usize,
    repeat: usize,
    timeout: Duration,
    expect_size: Option<u64>,
    ack_delay: Option<Duration>,
    spin: bool,
    ack_work: Option<Duration>,
}

struct Result1 {
    bytes: u64,
    elapsed: Duration,
    blksize: usize,
    windowsize: usize,
}

fn usage() -> ! {
    eprintln!(
        "usage: tftp-bench-client SERVER:PORT FILE [--blksize N] [--windowsize N] [--clients N] \
         [--repeat N] [--timeout-ms N] [--expect-size N] [--ack-delay-us N] [--spin 1] \
         [--ack-work-us N]"
    );
    std::process::exit(2)
}

fn parse_args() -> Opts {
    let mut args = std::env::args().skip(1);
    let server = args
        .next()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| usage());
    let file = args.next().unwrap_or_else(|| usage());
    let mut o = Opts {
        server,
        file,
        blksize: None,
        windowsize: None,
        clients: 1,
        repeat: 1,
        timeout: Duration::from_millis(1000),
        expect_size: None,
        ack_delay: None,
        spin: false,
        ack_work: None,
    };
    while let Some(flag) = args.next() {
        let value: u64 = args
            .next()
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| usage());
        match flag.as_str() {
            "--blksize" => o.blksize = Some(value as u32),
            "--windowsize" => o.windowsize = Some(value as u32),
            "--clients" => o.clients = value.max(1) as usize,
            "--repeat" => o.repeat = value.max(1) as usize,
            "--timeout-ms" => o.timeout = Duration::from_millis(value.max(1)),
            "--expect-size" => o.expect_size = Some(value),
            "--ack-delay-us" => o.ack_delay = Some(Duration::from_micros(value)),
            "--spin" => o.spin = value != 0,
            "--ack-work-us" => o.ack_work = Some(Duration::from_micros(value)),
            _ => usage(),
        }
    }
    o
}

/// One RFC 7440 receiver: acks every `windowsize` in-order blocks and the last one; on a gap
/// acks the last in-order block once; on silence re-acks it, at most 5 times in a row.
fn fetch(o: &Opts) -> Result<Result1, String> {
    let s = UdpSocket::bind(if o.server.is_ipv4() {
        "0.0.0.0:0"
    } else {
        "[::]:0"
    })
    .map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(o.timeout))
        .map_err(|e| e.to_string())?;
    // A whole window of large blocks must fit in the receive buffer, or the client itself
    // drops blocks and the benchmark measures its own losses.
    let _ = chainboot_udp::set_receive_buffer(&s, 8 << 20);
    let mut opts: Vec<(String, String)> = vec![("tsize".into(), "0".into())];
    if let Some(b) = o.blksize {
        opts.push(("blksize".into(), b.to_string()));
    }
    if let Some(w) = o.windowsize {
        opts.push(("windowsize".into(), w.to_string()));
    }
    let opt_refs: Vec<(&str, &str)> = opts.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect();
    let rrq = proto::encode_request(proto::OP_RRQ, &o.file, "octet", &opt_refs);
    let start = Instant::now();
    s.send_to(&rrq, o.server).map_err(|e| e.to_string())?;
    let mut buf = vec![0u8; 65536 + 4];
    let mut peer: Option<SocketAddr> = None;
    let mut blksize = 512usize;
    let mut windowsize = 1usize;
    let mut tsize: Option<u64> = None;
    let mut last_good: u16 = 0;
    let mut in_window = 0usize;
    let mut bytes = 0u64;
    let mut silent = 0;
    let mut gap_acked = false;
    let mut ack = [0u8; 4];
    loop {
        let (n, from) = match receive(&s, &mut buf, o) {
            Ok(r) => r,
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut =>
            {
                silent += 1;
                if silent > 5 {
                    return Err(format!("timed out after {bytes} bytes"));
                }
                match peer {
                    None => {
                        s.send_to(&rrq, o.server).map_err(|e| e.to_string())?;
                    }
                    Some(p) => {
                        proto::put_ack(&mut ack, last_good);
                        s.send_to(&ack, p).map_err(|e| e.to_string())?;
                        in_window = 0;
                    }
                }
                continue;
            }
            Err(e) => return Err(e.to_string()),
        };
        if let Some(p) = peer {
            if p != from {
                continue;
            }
        } else {
            peer = Some(from);
        }
        silent = 0;
        match proto::parse(&buf[..n]) {
            Ok(Packet::Oack { options }) => {
                for (k, v) in options {
                    match k.as_str() {
                        "blksize" => blksize = v.parse().unwrap_or(512),
                        "windowsize" => windowsize = v.parse().unwrap_or(1),
                        "tsize" => tsize = v.parse().ok(),
                        _ => {}
                    }
                }
                proto::put_ack(&mut ack, 0);
                work(o.ack_work);
                hold(o.ack_delay);
                s.send_to(&ack, from).map_err(|e| e.to_string())?;
            }
            Ok(Packet::Data { block, data }) => {
                if block == last_good.wrapping_add(1) {
                    last_good = block;
                    bytes += data.len() as u64;
                    in_window += 1;
                    gap_acked = false;
                    let last = data.len() < blksize;
                    if last || in_window >= windowsize {
                        proto::put_ack(&mut ack, block);
                        work(o.ack_work);
                        hold(o.ack_delay);
                        s.send_to(&ack, from).map_err(|e| e.to_string())?;
                        in_window = 0;
                    }
                    if last {
                        break;
                    }
                } else if !gap_acked && block != last_good {
                    // A gap: tell the sender where to resume, once.
                    proto::put_ack(&mut ack, last_good);
                    s.send_to(&ack, from).map_err(|e| e.to_string())?;
                    gap_acked = true;
                    in_window = 0;
                }
            }
            Ok(Packet::Error { code, message }) => {
                return Err(format!("ERROR {} {message}", code.as_u16()))
            }
            _ => {}
        }
    }
    let elapsed = start.elapsed();
    if let Some(want) = o.expect_size.or(tsize) {
        if want != bytes {
            return Err(format!("got {bytes} bytes, expected {want}"));
        }
    }
    Ok(Result1 {
        bytes,
        elapsed,
        blksize,
        windowsize,
    })
}

/// One datagram: a blocking receive, or with `--spin` a non-blocking one tried again and again
/// until the timeout.
fn receive(s: &UdpSocket, buf: &mut [u8], o: &Opts) -> std::io::Result<(usize, SocketAddr)> {
    if !o.spin {
        return s.recv_from(buf);
    }
    let until = Instant::now() + o.timeout;
    loop {
        match chainboot_udp::try_recv_from(s, buf) {
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock && Instant::now() < until => {
                std::hint::spin_loop();
            }
            other => return other,
        }
    }
}

/// Spends the emulated guest's processing time on the CPU (not asleep: a vCPU that handles a
/// datagram is running).
fn work(time: Option<Duration>) {
    if let Some(t) = time {
        let until = Instant::now() + t;
        while Instant::now() < until {
            std::hint::spin_loop();
        }
    }
}

/// Sleeps for the emulated round trip. The thread's timer slack is set to 1 ns first, so a
/// 500 µs sleep is not stretched by the default 50 µs slack.
fn hold(delay: Option<Duration>) {
    if let Some(d) = delay {
        std::thread::sleep(d);
    }
}

/// Timer slack of 1 ns for this thread, so that its emulated client delay is not rounded up
/// by 50 us (prctl PR_SET_TIMERSLACK, which nix does not wrap).
#[allow(unsafe_code)]
fn tight_timer_slack() {
    // SAFETY: prctl(PR_SET_TIMERSLACK) only changes this thread's timer slack.
    unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, 1 as libc::c_ulong) };
}

fn main() {
    let o = Arc::new(parse_args());
    let start = Instant::now();
    let mut handles = Vec::with_capacity(o.clients);
    for _ in 0..o.clients {
        let o = o.clone();
        let h = std::thread::Builder::new()
            .stack_size(256 * 1024)
            .spawn(move || {
                if o.ack_delay.is_some() {
                    tight_timer_slack();
                }
                (0..o.repeat).map(|_| fetch(&o)).collect::<Vec<_>>()
            });
        match h {
            Ok(h) => handles.push(h),
            Err(e) => {
                eprintln!("cannot start client thread: {e}");
                std::process::exit(2);
            }
        }
    }
    let mut ok = Vec::new();
    let mut failed = 0usize;
    for h in handles {
        match h.join() {
            Ok(results) => {
                for r in results {
                    match r {
                        Ok(r) => ok.push(r),
                        Err(e) => {
                            failed += 1;
                            if failed <= 5 {
                                eprintln!("transfer failed: {e}");
                            }
                        }
                    }
                }
            }
            Err(_) => failed += o.repeat,
        }
    }
    let wall = start.elapsed().as_secs_f64();
    let bytes: u64 = ok.iter().map(|r| r.bytes).sum();
    let mut times: Vec<f64> = ok.iter().map(|r| r.elapsed.as_secs_f64() * 1e3).collect();
    times.sort_by(|a, b| a.total_cmp(b));
    let p50 = times.get(times.len() / 2).copied().unwrap_or(0.0);
    let max = times.last().copied().unwrap_or(0.0);
    let (bs, ws) = ok
        .first()
        .map(|r| (r.blksize, r.windowsize))
        .unwrap_or((0, 0));
    println!(
        "clients={} ok={} failed={} bytes={} wall_s={:.4} mb_per_s={:.2} blksize={} windowsize={} p50_ms={:.2} max_ms={:.2}",
        o.clients * o.repeat,
        ok.len(),
        failed,
        bytes,
        wall,
        bytes as f64 / wall / 1e6,
        bs,
        ws,
        p50,
        max
    );
    if failed > 0 {
        std::process::exit(1);
    }
}
