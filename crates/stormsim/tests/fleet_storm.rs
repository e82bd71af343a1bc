//! A fleet on one segment: two or three `chainboot serve` processes, each in a namespace of its
//! own, joined to the clients' namespace by a bridge (198.18.0.0/20), all storing their state
//! in one throw-away PostgreSQL cluster (reached through its unix socket, which every
//! namespace sees). The storm simulator and perfdhcp (Kea's load generator, as the relay on
//! the bridge, its requests sent to every server as by a relay with one helper address per
//! server) run against all of them at once.
//!
//! Asserted: every machine boots; no address was ACKed to two clients, both in the database
//! and in every DHCP ACK seen on the bridge (captured with tcpdump), and every ACKed address is
//! the database's lease of the client it was ACKed to; the servers shared the clients (ACKs
//! came from each). With kill -9 of one server, before a storm or in its middle, every machine
//! still boots: its clients are answered by the others once they see it gone (its database
//! sessions closed; a machine whose boot it broke mid-way powers on again, as firmware
//! retries). Any server's
//! API, CLI and event stream show the whole fleet and which server did what.
//!
//! Needs root, `ip`, `tcpdump`, `perfdhcp`, the iPXE binaries and Debian's PostgreSQL server;
//! a missing piece fails the test with what is missing.

#![allow(clippy::unwrap_used)] // a test: a failed step is a failed test

use std::collections::{HashMap, HashSet};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use chainboot_dhcp::client::ReplyView;
use chainboot_dhcp::wire::MessageType;
use chainboot_testnet::postgres::PgCluster;
use chainboot_testnet::{run, Netns, Proc};

const SIM: &str = env!("CARGO_BIN_EXE_chainboot-stormsim");

fn chainboot_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("CHAINBOOT") {
        return PathBuf::from(p);
    }
    let p = Path::new(SIM).with_file_name("chainboot");
    assert!(
        p.is_file(),
        "chainboot binary not found at {} (cargo build -p chainboot, or set CHAINBOOT)",
        p.display()
    );
    p
}

/// The clients' namespace with the bridge, and one namespace per server.
struct Segment {
    client: Netns,
    servers: Vec<Netns>,
}

impl Segment {
    fn new(servers: usize) -> Segment {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let id = format!("cbfl{}x{n}", std::process::id());
        let client = Netns(format!("{id}c"));
        run(&["ip", "netns", "add", &client.0]);
        let c = client.0.clone();
        run(&["ip", "-n", &c, "link", "set", "lo", "up"]);
        run(&[
            "ip",
            "-n",
            &c,
            "link",
            "add",
            "br0",
            "type",
            "bridge",
            "forward_delay",
            "0",
        ]);
        run(&[
            "ip",
            "-n",
            &c,
            "addr",
            "add",
            "198.18.0.100/20",
            "dev",
            "br0",
        ]);
        run(&["ip", "-n", &c, "link", "set", "br0", "up"]);
        // Each simulated machine binds its leased address: the pool is local on this side.
        run(&[
            "ip",
            "-n",
            &c,
            "route",
            "add",
            "local",
            "198.18.8.0/21",
            "dev",
            "lo",
        ]);
        let mut list = Vec::new();
        for i in 0..servers {
            let ns = Netns(format!("{id}s{i}"));
            run(&["ip", "netns", "add", &ns.0]);
            let port = format!("p{i}");
            run(&[
                "ip", "-n", &ns.0, "link", "add", "vs", "type", "veth", "peer", "name", &port,
                "netns", &c,
            ]);
            run(&[
                "ip",
                "-n",
                &ns.0,
                "addr",
                "add",
                &format!("198.18.0.{}/20", i + 1),
                "dev",
                "vs",
            ]);
            run(&["ip", "-n", &ns.0, "link", "set", "vs", "up"]);
            run(&["ip", "-n", &ns.0, "link", "set", "lo", "up"]);
            run(&["ip", "-n", &c, "link", "set", &port, "master", "br0"]);
            run(&["ip", "-n", &c, "link", "set", &port, "up"]);
            list.push(ns);
        }
        Segment {
            client,
            servers: list,
        }
    }

    /// IPv6 on the segment (the documentation prefix 2001:db8:1::/64, inside these namespaces
    /// only): the clients' side 2001:db8:1::100, server `i` 2001:db8:1::`i+1`; the bridge
    /// floods multicast to every port (no MLD snooping: a server's join of ff02::1:2 must not
    /// race its first Solicit).
    fn add_ipv6(&self) {
        let c = &self.client.0;
        run(&[
            "ip",
            "-n",
            c,
            "link",
            "set",
            "br0",
            "type",
            "bridge",
            "mcast_snooping",
            "0",
        ]);
        run(&[
            "ip",
            "-n",
            c,
            "addr",
            "add",
            "2001:db8:1::100/64",
            "dev",
            "br0",
            "nodad",
        ]);
        for (i, ns) in self.servers.iter().enumerate() {
            let addr = format!("2001:db8:1::{}/64", i + 1);
            run(&[
                "ip", "-n", &ns.0, "addr", "add", &addr, "dev", "vs", "nodad",
            ]);
        }
        chainboot_testnet::wait_link_local(c, "br0");
        for ns in &self.servers {
            chainboot_testnet::wait_link_local(&ns.0, "vs");
        }
    }
}

/// The per-relay and new-client guards lifted, as for any load generator that is one relay
/// with endless new MACs (bench/dhcp does the same).
const LIFTED_GUARDS: &str = "limits = { per_relay_rate = 1000000.0, per_relay_burst = 1000000.0, \
     new_client_share = 1.0 }";

/// Lines added to every server's `[dhcp]` and `[store]` sections, and a `[dhcp6]` section.
#[derive(Default)]
struct Sections {
    dhcp: &'static str,
    store: &'static str,
    /// With one, the segment has IPv6 too ([`Segment::add_ipv6`]).
    dhcp6: &'static str,
    /// Added at the end (profiles, groups); `{dir}` is the fleet's temporary directory.
    tail: &'static str,
}

/// Server `i`'s config; `sections` are added under `[dhcp]` and `[store]`, and at the end.
fn server_config(
    dir: &Path,
    i: usize,
    db_url: &str,
    password_file: &Path,
    sections: &Sections,
) -> String {
    format!(
        r#"[server]
interfaces = ["vs"]
advertise = "198.18.0.{n}"
state_dir = "{dir}/state{i}"
[store]
backend = "postgres"
url = "{db_url}"
password_file = "{pw}"
server_name = "pxe-{i}"
connect_timeout = "1s"
{store}
[dhcp]
mode = "server"
{dhcp}
[[dhcp.subnet]]
cidr = "198.18.0.0/20"
pools = [["198.18.8.1", "198.18.15.254"]]
router = "198.18.0.1"
lease_time = "1h"
[tftp]
listen = "198.18.0.{n}:69"
[http]
listen = "198.18.0.{n}:80"
root = "{dir}/http"
[ipxe]
dir = "/usr/lib/ipxe"
[ipv6]
router_advertisements = "off"
[[profile]]
name = "storm"
kernel = "vmlinuz"
initrd = ["initrd.img"]
cmdline = "console=ttyS0"
[boot]
default = "storm"
{dhcp6}
{tail}
"#,
        n = i + 1,
        dir = dir.display(),
        pw = password_file.display(),
        store = sections.store,
        dhcp = sections.dhcp,
        dhcp6 = sections.dhcp6,
        tail = sections.tail.replace("{dir}", &dir.display().to_string()),
    )
}

/// Fields drop in this order: the servers die before their namespaces and the database go.
struct Fleet {
    servers: Vec<Proc>,
    segment: Segment,
    pg: PgCluster,
    db: String,
    logs: Vec<PathBuf>,
    dir: tempfile::TempDir,
}

impl Fleet {
    fn start(n: usize) -> Fleet {
        Fleet::start_with(n, &Sections::default())
    }

    /// `n` servers that also serve DHCPv6 with `[dhcp6]` section `dhcp6`: server `i` at
    /// 2001:db8:1::`i+1`/64 on the bridge, the clients' side at 2001:db8:1::100.
    fn start_v6(n: usize, dhcp6: &'static str) -> Fleet {
        Fleet::start_with(
            n,
            &Sections {
                dhcp6,
                ..Sections::default()
            },
        )
    }

    /// `n` servers whose `[dhcp]` and `[store]` sections have `sections` added.
    fn start_with(n: usize, sections: &Sections) -> Fleet {
        chainboot_testnet::require(&["ip", "tcpdump", "curl"]);
        assert!(
            Path::new("/usr/lib/ipxe/undionly.kpxe").is_file(),
            "missing /usr/lib/ipxe/undionly.kpxe (package ipxe)"
        );
        let cb = chainboot_bin();
        let pg = PgCluster::start();
        let url = pg.fresh_database();
        let db = url.rsplit('/').next().unwrap_or_default().to_string();
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::create_dir_all(d.join("http")).unwrap();
        let kernel: Vec<u8> = (0..262_147u32).map(|i| (i * 31 % 251) as u8).collect();
        let initrd: Vec<u8> = (0..524_309u32).map(|i| (i * 17 % 241) as u8).collect();
        std::fs::write(d.join("http/vmlinuz"), kernel).unwrap();
        std::fs::write(d.join("http/initrd.img"), initrd).unwrap();
        let segment = Segment::new(n);
        if !sections.dhcp6.is_empty() {
            segment.add_ipv6();
        }
        let password = pg.password_file();
        let mut servers = Vec::new();
        let mut logs = Vec::new();
        for (i, ns) in segment.servers.iter().enumerate() {
            let conf = d.join(format!("chainboot{i}.toml"));
            std::fs::write(
                &conf,
                server_config(d, i, &pg.socket_url(&db), &password, sections),
            )
            .unwrap();
            let log_path = d.join(format!("chainboot{i}.log"));
            let log = std::fs::File::create(&log_path).unwrap();
            servers.push(Proc(
                Command::new("ip")
                    .args(["netns", "exec", &ns.0])
                    .arg(&cb)
                    .args(["--log-level", "info", "serve", "--config"])
                    .arg(&conf)
                    .stdout(log.try_clone().unwrap())
                    .stderr(log)
                    .spawn()
                    .unwrap(),
            ));
            logs.push(log_path);
        }
        // Each server has seen every other live before the storm starts (otherwise one that
        // started first answers everyone until its next heartbeat).
        let names: Vec<String> = (0..n).map(|i| format!("\"pxe-{i}\"")).collect();
        let want = format!("live=[{}]", names.join(", "));
        let started = Instant::now();
        for (i, log) in logs.iter().enumerate() {
            loop {
                let text = std::fs::read_to_string(log).unwrap_or_default();
                if text.contains(&want) && text.contains("ready: SIGHUP") {
                    break;
                }
                if let Ok(Some(st)) = servers[i].0.try_wait() {
                    panic!("server {i} exited ({st}):\n{text}");
                }
                assert!(
                    started.elapsed() < Duration::from_secs(60),
                    "server {i} did not see the fleet ({want}) within 60 s:\n{text}"
                );
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        Fleet {
            servers,
            segment,
            pg,
            db,
            logs,
            dir,
        }
    }

    /// Waits up to 30 s for `done` to say `Ok`; fails with its last `Err` and the servers' logs.
    fn eventually(&self, mut done: impl FnMut() -> Result<(), String>) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let Err(why) = done() else { return };
            assert!(Instant::now() < deadline, "{why}\n{}", self.logs());
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn logs(&self) -> String {
        self.logs
            .iter()
            .enumerate()
            .map(|(i, l)| {
                format!(
                    "--- server {i}:\n{}",
                    std::fs::read_to_string(l).unwrap_or_default()
                )
            })
            .collect()
    }

    fn token(&self, i: usize) -> String {
        std::fs::read_to_string(self.dir.path().join(format!("state{i}/api.token")))
            .unwrap()
            .trim()
            .to_string()
    }

    /// GET on server `i`'s management API (its namespace's loopback) with its token.
    fn api(&self, i: usize, path: &str) -> serde_json::Value {
        let token = self.token(i);
        let out = Command::new("ip")
            .args(["netns", "exec", &self.segment.servers[i].0])
            .args(["curl", "-s", "--max-time", "10", "-H"])
            .arg(format!("Authorization: Bearer {token}"))
            .arg(format!("http://127.0.0.1:8079{path}"))
            .output()
            .unwrap();
        serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("{path}: {e}: {}", String::from_utf8_lossy(&out.stdout)))
    }

    /// The value of an unlabelled metric of server `i` (0 when absent).
    fn metric(&self, i: usize, name: &str) -> u64 {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.segment.servers[i].0])
            .args(["curl", "-s", "--max-time", "10", "-H"])
            .arg(format!("Authorization: Bearer {}", self.token(i)))
            .arg("http://127.0.0.1:8079/metrics")
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
            .unwrap_or(0)
    }

    /// Server `i`'s live event stream (server-sent events), written to `path` by curl until
    /// it is killed (or 5 minutes pass).
    fn follow_events(&self, i: usize, path: &Path) -> Proc {
        let out = std::fs::File::create(path).unwrap();
        Proc(
            Command::new("ip")
                .args(["netns", "exec", &self.segment.servers[i].0])
                .args(["curl", "-sN", "--max-time", "300", "-H"])
                .arg(format!("Authorization: Bearer {}", self.token(i)))
                .arg("http://127.0.0.1:8079/api/v1/events/stream")
                .stdout(out)
                .stderr(Stdio::null())
                .spawn()
                .unwrap(),
        )
    }

    /// The chainboot CLI run in server `i`'s namespace with its config: its stdout.
    fn cli(&self, i: usize, args: &[&str]) -> String {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.segment.servers[i].0])
            .arg(chainboot_bin())
            .args(args)
            .arg("--config")
            .arg(self.dir.path().join(format!("chainboot{i}.toml")))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "chainboot {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// tcpdump of the DHCP replies on the bridge, into `path`.
    fn capture(&self, path: &Path) -> Proc {
        self.capture_matching(path, &["udp", "and", "src", "port", "67"])
    }

    /// tcpdump of the packets on the bridge that `filter` matches, into `path`.
    fn capture_matching(&self, path: &Path, filter: &[&str]) -> Proc {
        let p = Proc(
            Command::new("ip")
                .args(["netns", "exec", &self.segment.client.0])
                .args([
                    "timeout", "600", "tcpdump", "-i", "br0", "-U", "-n", "-B", "8192", "-w",
                ])
                .arg(path)
                .args(filter)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap(),
        );
        // tcpdump writes its file header once the capture is open.
        let started = Instant::now();
        while std::fs::metadata(path).map_or(0, |m| m.len()) < 24 {
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "tcpdump did not start"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        p
    }

    /// Runs the simulator in the clients' namespace; its report and per-machine lines.
    fn storm(&self, machines: usize, spread: u32) -> (serde_json::Value, Vec<serde_json::Value>) {
        let sim = self.start_storm(machines, spread, 1);
        self.finish_storm(sim)
    }

    /// Starts the simulator in the clients' namespace (each machine trying `boots` boots).
    fn start_storm(&self, machines: usize, spread: u32, boots: u32) -> Proc {
        Proc(
            Command::new("ip")
                .args(["netns", "exec", &self.segment.client.0])
                .arg(SIM)
                .args(["--machines", &machines.to_string()])
                .args(["--spread", &spread.to_string()])
                .args(["--boot-attempts", &boots.to_string()])
                .args(["--deadline", "240", "--iface", "br0"])
                .arg("--per-machine")
                .arg(self.dir.path().join("per-machine.jsonl"))
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .spawn()
                .unwrap(),
        )
    }

    /// Waits for a simulator [`Fleet::start_storm`] started: its report and per-machine lines.
    fn finish_storm(&self, mut sim: Proc) -> (serde_json::Value, Vec<serde_json::Value>) {
        use std::io::Read;
        let per = self.dir.path().join("per-machine.jsonl");
        let mut stdout = Vec::new();
        if let Some(mut o) = sim.0.stdout.take() {
            o.read_to_end(&mut stdout).unwrap();
        }
        let status = sim.0.wait().unwrap();
        assert!(status.success(), "simulator failed:\n{}", self.logs());
        let rep: serde_json::Value = serde_json::from_slice(&stdout).unwrap();
        let lines = std::fs::read_to_string(&per)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        (rep, lines)
    }

    /// Bound leases in the database: address -> the client's MAC.
    fn bound_leases(&self) -> HashMap<Ipv4Addr, String> {
        self.pg
            .psql(&self.db, "SELECT ip, mac FROM leases WHERE state = 'bound'")
            .lines()
            .filter_map(|l| {
                let (ip, mac) = l.split_once('|')?;
                Some((ip.parse().ok()?, mac.to_string()))
            })
            .collect()
    }

    /// (bound leases, distinct MACs among them, distinct servers that wrote them).
    fn leases_in_database(&self) -> (u64, u64, u64) {
        let out = self.pg.psql(
            &self.db,
            "SELECT count(*), count(DISTINCT mac), count(DISTINCT server) FROM leases \
             WHERE state = 'bound'",
        );
        let v: Vec<u64> = out.trim().split('|').map(|x| x.parse().unwrap()).collect();
        (v[0], v[1], v[2])
    }
}

/// The Ethernet frames of a pcap file.
fn frames_in_capture(path: &Path) -> Vec<Vec<u8>> {
    let data = std::fs::read(path).unwrap();
    assert!(data.len() >= 24, "no pcap header");
    assert_eq!(
        &data[..4],
        &[0xd4, 0xc3, 0xb2, 0xa1],
        "little-endian microsecond pcap"
    );
    let u32_at = |b: &[u8], i: usize| u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
    let mut frames = Vec::new();
    let mut at = 24;
    // The last record may be cut short when tcpdump is killed: whole records only.
    while at + 16 <= data.len() {
        let len = u32_at(&data, at + 8) as usize;
        let start = at + 16;
        if start + len > data.len() {
            break;
        }
        frames.push(data[start..start + len].to_vec());
        at = start + len;
    }
    frames
}

/// Every DHCP ACK in a pcap file (Ethernet frames): (server address, client MAC, address).
fn acks_in_capture(path: &Path) -> Vec<(Ipv4Addr, [u8; 6], Ipv4Addr)> {
    let mut acks = Vec::new();
    for frame in frames_in_capture(path) {
        let frame = frame.as_slice();
        // Ethernet (14) + IPv4 (IHL) + UDP (8).
        if frame.len() < 14 + 20 + 8 || frame[12..14] != [0x08, 0x00] {
            continue;
        }
        let ip = &frame[14..];
        let ihl = usize::from(ip[0] & 0x0f) * 4;
        if ip[9] != 17 || ip.len() < ihl + 8 {
            continue;
        }
        let src = Ipv4Addr::new(ip[12], ip[13], ip[14], ip[15]);
        let payload = &ip[ihl + 8..];
        let Some(reply) = ReplyView::parse(payload) else {
            continue;
        };
        if reply.msg_type == Some(MessageType::Ack) && payload.len() >= 34 {
            let mut chaddr = [0u8; 6];
            chaddr.copy_from_slice(&payload[28..34]);
            acks.push((src, chaddr, reply.yiaddr));
        }
    }
    acks
}

fn mac_text(mac: &[u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// Every ACK on the wire is the database's lease: the address is bound to the client it was
/// ACKed to (an ACK leaves only after its lease is committed, and no other client took the
/// address since).
fn assert_acks_are_the_database_leases(
    acks: &[(Ipv4Addr, [u8; 6], Ipv4Addr)],
    bound: &HashMap<Ipv4Addr, String>,
) {
    for (server, mac, addr) in acks {
        assert_eq!(
            bound.get(addr).map(String::as_str),
            Some(mac_text(mac).as_str()),
            "{addr} ACKed by {server} to {}, the database says otherwise",
            mac_text(mac)
        );
    }
}

/// No address ACKed to two clients on the wire; the servers that sent ACKs.
fn assert_no_address_acked_twice(acks: &[(Ipv4Addr, [u8; 6], Ipv4Addr)]) -> HashSet<Ipv4Addr> {
    let mut holder: HashMap<Ipv4Addr, [u8; 6]> = HashMap::new();
    let mut servers = HashSet::new();
    for (server, mac, addr) in acks {
        servers.insert(*server);
        if let Some(first) = holder.insert(*addr, *mac) {
            assert_eq!(
                &first, mac,
                "{addr} ACKed to {first:02x?} and to {mac:02x?} (by {server})"
            );
        }
    }
    servers
}

fn assert_every_machine_booted(
    rep: &serde_json::Value,
    machines: &[serde_json::Value],
    n: usize,
    logs: &str,
) {
    assert_eq!(rep["machines"], n, "{rep}");
    assert_eq!(rep["failures"], 0, "{rep}\n{logs}");
    assert_eq!(rep["ok"], n, "{rep}");
    let addrs: HashSet<&str> = machines
        .iter()
        .map(|m| m["address"].as_str().unwrap_or_default())
        .collect();
    assert_eq!(addrs.len(), n, "one distinct address per machine");
}

/// The `data:` objects of a server-sent event stream, as far as it was written.
fn streamed_events(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.strip_prefix("data:"))
        .filter_map(|d| serde_json::from_str(d.trim()).ok())
        .collect()
}

#[test]
fn two_servers_on_one_segment_share_a_storm_and_never_ack_an_address_twice() {
    let fleet = Fleet::start(2);
    let pcap = fleet.dir.path().join("acks.pcap");
    let mut capture = fleet.capture(&pcap);
    // Server 1's live stream, open before the storm: it must carry server 0's events too.
    let stream = fleet.dir.path().join("stream1.txt");
    let mut follower = fleet.follow_events(1, &stream);
    let (rep, machines) = fleet.storm(60, 3);
    std::thread::sleep(Duration::from_secs(1));
    capture.kill9();
    eprintln!("storm report: {rep}");
    assert_every_machine_booted(&rep, &machines, 60, &fleet.logs());
    let acks = acks_in_capture(&pcap);
    // Two ACKs per machine (firmware and iPXE); a capture may miss a few under load.
    assert!(acks.len() >= 108, "ACKs seen on the wire: {}", acks.len());
    let senders = assert_no_address_acked_twice(&acks);
    assert_eq!(senders.len(), 2, "both servers answered: {senders:?}");
    assert_acks_are_the_database_leases(&acks, &fleet.bound_leases());
    let (bound, macs, servers) = fleet.leases_in_database();
    assert_eq!((bound, macs, servers), (60, 60, 2));

    // Server 1's stream shows what server 0 did (read from the shared database on its
    // heartbeats), each event with the server that recorded it, none twice.
    let deadline = Instant::now() + Duration::from_secs(20);
    let streamed = loop {
        let got = streamed_events(&stream);
        if got.iter().any(|e| e["server"] == "pxe-0") || Instant::now() >= deadline {
            break got;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    follower.kill9();
    let by: HashSet<&str> = streamed
        .iter()
        .filter_map(|e| e["server"].as_str())
        .collect();
    assert_eq!(
        by,
        HashSet::from(["pxe-0", "pxe-1"]),
        "server 1's stream shows the fleet: {} events",
        streamed.len()
    );
    let ids: Vec<i64> = streamed.iter().filter_map(|e| e["id"].as_i64()).collect();
    let distinct: HashSet<i64> = ids.iter().copied().collect();
    assert_eq!(ids.len(), distinct.len(), "no event streamed twice");

    // Either server's API shows the whole fleet: both servers, and events both recorded.
    let listed = fleet.api(0, "/api/v1/servers");
    assert_eq!(listed["this"], "pxe-0", "{listed}");
    let names: Vec<&str> = listed["servers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["pxe-0", "pxe-1"]);
    let addresses: Vec<&serde_json::Value> = listed["servers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| &s["addresses"])
        .collect();
    assert_eq!(
        addresses,
        [
            &serde_json::json!(["198.18.0.1"]),
            &serde_json::json!(["198.18.0.2"])
        ],
        "each server publishes the address it answers DHCP from: {listed}"
    );
    // A REQUEST that took the peer's offer is the peer's to record: counted by the other
    // server, never its event (no server here is unknown to the fleet).
    for i in 0..2 {
        let events = fleet.api(i, "/api/v1/events?kind=dhcp&limit=1000");
        let noise: Vec<&serde_json::Value> = events
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["detail"]["reason"] == "other-server")
            .collect();
        assert!(
            noise.is_empty(),
            "server {i}: {} events for another server, the first {:?}",
            noise.len(),
            noise.first()
        );
    }
    let counted: u64 = (0..2)
        .map(|i| fleet.metric(i, "chainboot_dhcp_ignored_peer_server_total"))
        .sum();
    assert!(counted > 0, "REQUESTs naming the peer are counted");
    for i in 0..2 {
        let events = fleet.api(i, "/api/v1/events?kind=dhcp&limit=1000");
        let recorders: HashSet<&str> = events
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|e| e["server"].as_str())
            .collect();
        assert_eq!(
            recorders,
            HashSet::from(["pxe-0", "pxe-1"]),
            "events of the whole fleet on server {i}"
        );
    }
    // Machines say which server last answered them: each server answered some, on either
    // server's API, and that server is the one whose ACK the machine took.
    let listed = fleet.api(1, "/api/v1/machines");
    let listed = listed.as_array().unwrap();
    assert_eq!(listed.len(), 60);
    let server_of: HashMap<Ipv4Addr, &str> = HashMap::from([
        ("198.18.0.1".parse().unwrap(), "pxe-0"),
        ("198.18.0.2".parse().unwrap(), "pxe-1"),
    ]);
    let mut last_servers = HashSet::new();
    for m in listed {
        let mac = m["mac"].as_str().unwrap();
        let last = m["last_server"].as_str();
        last_servers.insert(last.unwrap_or("-"));
        // The machine's last ACK on the wire (the capture may have missed one under load).
        if let Some((srv, _, _)) = acks.iter().rev().find(|(_, a, _)| mac_text(a) == mac) {
            assert_eq!(last, Some(server_of[srv]), "{m}");
        }
    }
    assert_eq!(last_servers, HashSet::from(["pxe-0", "pxe-1"]));
    // The CLI on server 1 shows the same: the machines table's SERVER column and each event's
    // server.
    let table = fleet.cli(1, &["machines", "list"]);
    assert!(
        table.lines().next().is_some_and(|h| h.ends_with("SERVER")),
        "{table}"
    );
    assert!(
        table.contains("pxe-0") && table.contains("pxe-1"),
        "{table}"
    );
    let lines = fleet.cli(1, &["events", "list", "--kind", "dhcp", "--limit", "1000"]);
    assert!(
        lines.contains(" pxe-0 ") && lines.contains(" pxe-1 "),
        "{lines}"
    );
    // `check` connects and reports the schema and the live servers.
    let out = Command::new(chainboot_bin())
        .args(["check", "--config"])
        .arg(fleet.dir.path().join("chainboot0.toml"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("store: postgres"), "{text}");
    assert!(
        text.contains(&format!(
            "schema version {} (current)",
            chainboot_store::SCHEMA_VERSION
        )),
        "{text}"
    );
    assert!(
        text.contains("live     pxe-0") && text.contains("live     pxe-1"),
        "{text}"
    );
}

/// Waits until server `i` logs that it watches `peer`'s presence.
fn watching(fleet: &Fleet, i: usize, peer: &str) {
    let want = format!("server={peer}");
    fleet.eventually(|| {
        let log = std::fs::read_to_string(&fleet.logs[i]).unwrap_or_default();
        if log
            .lines()
            .any(|l| l.contains("watching a peer's presence") && l.contains(&want))
        {
            Ok(())
        } else {
            Err(format!("pxe-{i} does not watch {peer}'s presence yet"))
        }
    });
}

#[test]
fn what_a_killed_server_left_unanswered_its_peer_answers_without_a_retransmission() {
    let mut fleet = Fleet::start(2);
    watching(&fleet, 0, "pxe-1");
    // Two clients of pxe-1's buckets: one DISCOVERs, one REQUESTs an address from pxe-1 (a
    // client that took its OFFER).
    let pxe1 = chainboot_dhcp::engine::fleet::Fleet::new(
        "pxe-1",
        ["pxe-0".to_string(), "pxe-1".to_string()],
    );
    let macs: Vec<[u8; 6]> = (0..=255u8)
        .map(client_mac)
        .filter(|m| pxe1.serves(m))
        .take(2)
        .collect();
    assert_eq!(macs.len(), 2);
    // pxe-1 stopped: alive to the database (its sessions and presence lock stay), deaf to its
    // clients, as a server is in the instant before it dies.
    let pid = nix::unistd::Pid::from_raw(fleet.servers[1].0.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGSTOP).unwrap();
    let (sent_tx, sent_rx) = std::sync::mpsc::channel();
    let ns = fleet.segment.client.0.clone();
    let client = std::thread::spawn(move || {
        chainboot_testnet::in_netns(&ns, move || {
            use chainboot_dhcp::client::ClientMessage;
            let s = dhcp_socket();
            let to = std::net::SocketAddrV4::new(Ipv4Addr::BROADCAST, 67);
            let discover = ClientMessage::new(PXE, MessageType::Discover, macs[0]);
            let mut request = ClientMessage::new(PXE, MessageType::Request, macs[1]);
            request.requested_ip = Some("198.18.8.200".parse().unwrap());
            request.server_id = Some("198.18.0.2".parse().unwrap());
            // Each sent once: an answer can only come from what the fleet kept.
            s.send_to(&discover.encode(), to).unwrap();
            s.send_to(&request.encode(), to).unwrap();
            sent_tx.send(()).unwrap();
            let mut got: HashMap<u32, (Option<MessageType>, Ipv4Addr)> = HashMap::new();
            let deadline = Instant::now() + Duration::from_secs(15);
            let mut buf = [0u8; 1500];
            while got.len() < 2 && Instant::now() < deadline {
                if let Ok((n, _)) = s.recv_from(&mut buf) {
                    if let Some(r) = ReplyView::parse(&buf[..n]) {
                        if r.xid == discover.xid || r.xid == request.xid {
                            got.insert(r.xid, (r.msg_type, r.opt_ip(54).unwrap_or(r.siaddr)));
                        }
                    }
                }
            }
            (
                got.get(&discover.xid).copied(),
                got.get(&request.xid).copied(),
            )
        })
    });
    sent_rx.recv().unwrap();
    // pxe-0 has left both to pxe-1 by now; then pxe-1 dies.
    std::thread::sleep(Duration::from_millis(500));
    fleet.servers[1].kill9();
    let (offer, nak) = client.join().unwrap();
    let survivor: Ipv4Addr = "198.18.0.1".parse().unwrap();
    assert_eq!(
        offer,
        Some((Some(MessageType::Offer), survivor)),
        "the DISCOVER sent once while pxe-1 was dying was answered by pxe-0:\n{}",
        fleet.logs()
    );
    assert_eq!(
        nak,
        Some((Some(MessageType::Nak), survivor)),
        "the REQUEST naming pxe-1 was told to start over by pxe-0:\n{}",
        fleet.logs()
    );
    let log = std::fs::read_to_string(&fleet.logs[0]).unwrap_or_default();
    assert!(
        log.contains("a fleet peer is gone: answering what its clients sent it"),
        "{log}"
    );
}

#[test]
fn with_one_of_three_servers_killed_every_machine_boots() {
    // A heartbeat older than a minute would be needed for the others to count pxe-1 out, and
    // their next beats are 20 s away when the fleet is up (each has just seen the others).
    let mut fleet = Fleet::start_with(
        3,
        &Sections {
            dhcp: "",
            store: "heartbeat = \"20s\"\npeer_timeout = \"60s\"",
            ..Sections::default()
        },
    );
    let pcap = fleet.dir.path().join("acks.pcap");
    let mut capture = fleet.capture(&pcap);
    watching(&fleet, 0, "pxe-1");
    watching(&fleet, 2, "pxe-1");
    // kill -9: no goodbye, its row stays fresh in the live-servers table, but its database
    // sessions closed with it, and with them its presence lock: the survivors, waiting for
    // that lock, count it out at once, not at their next beat, let alone in a minute.
    fleet.servers[1].kill9();
    let deadline = Instant::now() + Duration::from_secs(10);
    while ![&fleet.logs[0], &fleet.logs[2]].iter().all(|log| {
        std::fs::read_to_string(log)
            .unwrap_or_default()
            .contains("live=[\"pxe-0\", \"pxe-2\"]")
    }) {
        assert!(
            Instant::now() < deadline,
            "the survivors did not see pxe-1 go within 10 s (heartbeat 20 s, peer_timeout 60 s):\n{}",
            fleet.logs()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let (rep, machines) = fleet.storm(45, 2);
    std::thread::sleep(Duration::from_secs(1));
    capture.kill9();
    eprintln!("storm report: {rep}");
    assert_every_machine_booted(&rep, &machines, 45, &fleet.logs());
    let acks = acks_in_capture(&pcap);
    let senders = assert_no_address_acked_twice(&acks);
    let expected: HashSet<Ipv4Addr> = ["198.18.0.1", "198.18.0.3"]
        .iter()
        .map(|a| a.parse().unwrap())
        .collect();
    assert_eq!(senders, expected, "the two live servers answered everyone");
    let (bound, macs, _) = fleet.leases_in_database();
    assert_eq!((bound, macs), (45, 45));
    for log in [&fleet.logs[0], &fleet.logs[2]] {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        assert!(
            text.contains("live=[\"pxe-0\", \"pxe-2\"]"),
            "the survivors saw pxe-1 go:\n{text}"
        );
    }
}

#[test]
fn a_server_killed_with_kill_9_in_the_middle_of_a_storm_loses_no_machine() {
    let mut fleet = Fleet::start(3);
    let pcap = fleet.dir.path().join("acks.pcap");
    let mut capture = fleet.capture(&pcap);
    // Machines power on over 10 s; one whose boot the kill breaks (its server gone between
    // DHCP and its last download) powers on again, as firmware retries its boot.
    let started = Instant::now();
    let sim = fleet.start_storm(60, 10, 4);
    // The kill lands in the middle: once the doomed server has leased to some machines, while
    // others are still powering on.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let n: u64 = fleet
            .pg
            .psql(
                &fleet.db,
                "SELECT count(*) FROM leases WHERE server = 'pxe-1'",
            )
            .trim()
            .parse()
            .unwrap();
        if n >= 3 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "pxe-1 leased to nobody:\n{}",
            fleet.logs()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    fleet.servers[1].kill9();
    let killed_after = started.elapsed();
    let (rep, machines) = fleet.finish_storm(sim);
    std::thread::sleep(Duration::from_secs(1));
    capture.kill9();
    eprintln!("storm report: {rep} (kill -9 after {killed_after:?})");
    assert!(
        killed_after < Duration::from_secs(9),
        "the kill came {killed_after:?} after the start: machines were still to power on"
    );
    // The survivors take pxe-1's clients the moment its sessions close, so a machine need not
    // notice the kill at all: what holds is that every machine boots, no address goes to two
    // clients, and the database agrees with what went out on the wire.
    assert_every_machine_booted(&rep, &machines, 60, &fleet.logs());
    let acks = acks_in_capture(&pcap);
    let senders = assert_no_address_acked_twice(&acks);
    assert!(
        senders.contains(&"198.18.0.2".parse().unwrap()) && senders.len() == 3,
        "all three answered, the killed one before its kill: {senders:?}"
    );
    assert_acks_are_the_database_leases(&acks, &fleet.bound_leases());
    let (bound, macs, _) = fleet.leases_in_database();
    assert!(macs == 60 && bound >= 60, "{bound} leases, {macs} clients");
    for log in [&fleet.logs[0], &fleet.logs[2]] {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        assert!(
            text.contains("live=[\"pxe-0\", \"pxe-2\"]"),
            "the survivors saw pxe-1 go:\n{text}"
        );
    }
}

/// GET `url` from `local` inside namespace `ns`, as the simulator's machines do: status, body.
fn get_in(ns: &str, local: Ipv4Addr, url: &str) -> (u16, String) {
    let url = url.to_string();
    chainboot_testnet::in_netns(ns, move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let (status, body, _) = rt
            .block_on(chainboot_stormsim::http_get(local, &url, true))
            .unwrap();
        (status, String::from_utf8_lossy(&body).into_owned())
    })
}

/// The simulator's fetch of the first `cmd` line of `script` (from `script_url`) inside
/// namespace `ns`: each `||` alternative in order; the URL that answered and its length.
fn fetch_line_in(
    ns: &str,
    local: Ipv4Addr,
    script_url: &str,
    script: &str,
    cmd: &'static str,
) -> anyhow::Result<(String, u64)> {
    let (url, script) = (script_url.to_string(), script.to_string());
    chainboot_testnet::in_netns(ns, move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(chainboot_stormsim::fetch_line(local, &url, &script, cmd))
    })
}

/// Every machine boots a kernel served by the policy's `/boot/MAC/kernel` route (a local
/// file), whose URL carries a boot capability.
const LOCAL_KERNEL: &str = r#"
[[profile]]
name = "installer"
kernel = "file://{dir}/http/vmlinuz"
initrd = ["initrd.img"]
cmdline = "console=ttyS0"
[[group]]
name = "installs"
profile = "installer"
match = { mac = "*" }
"#;

#[test]
fn a_machine_whose_server_is_killed_mid_boot_fetches_the_rest_from_the_live_peer() {
    let mut fleet = Fleet::start_with(
        2,
        &Sections {
            tail: LOCAL_KERNEL,
            ..Sections::default()
        },
    );
    assert_ne!(
        fleet.token(0),
        fleet.token(1),
        "each server has a token of its own"
    );
    let client = fleet.segment.client.0.clone();
    let local: Ipv4Addr = "198.18.0.100".parse().unwrap();
    // The machine is the clients' side of the bridge: the servers' neighbour tables prove
    // that its requests come from it.
    let link: serde_json::Value =
        serde_json::from_str(&run(&["ip", "-n", &client, "-j", "link", "show", "br0"])).unwrap();
    let mac = link[0]["address"].as_str().unwrap().replace(':', "-");
    // Each server's row carries its boot base, and each names the other in its scripts.
    fleet.eventually(|| {
        let servers = fleet.api(0, "/api/v1/servers");
        let boot = |name: &str| {
            servers["servers"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|s| s["name"] == name)
                .map(|s| s["boot"]["http"].clone())
        };
        match (boot("pxe-0"), boot("pxe-1")) {
            (Some(a), Some(b)) if a == "http://198.18.0.1" && b == "http://198.18.0.2" => Ok(()),
            _ => Err(format!("boot bases not published yet: {servers}")),
        }
    });
    fleet.eventually(|| {
        let (_, stub) = get_in(&client, local, "http://198.18.0.2/boot.ipxe");
        if stub.contains(" || chain --replace --autofree http://198.18.0.1/ipxe?mac=${mac:hexhyp}&")
        {
            Ok(())
        } else {
            Err(format!(
                "server 1's stub names no alternative on server 0:\n{stub}"
            ))
        }
    });
    // The machine's script from server 1 names server 0's URLs after each of its own, the
    // kernel's boot capability (which server 0 accepts: the fleet shares its key) included.
    let script_url = format!("http://198.18.0.2/ipxe?mac={mac}");
    let (status, script) = get_in(&client, local, &script_url);
    assert_eq!(status, 200);
    let kernel: Vec<&str> = script
        .lines()
        .find(|l| l.starts_with("kernel "))
        .unwrap_or_else(|| panic!("no kernel line:\n{script}"))
        .split(" || ")
        .collect();
    let own = format!("kernel --name kernel http://198.18.0.2/boot/{mac}/kernel?cap=");
    assert!(kernel.len() == 3 && kernel[0].starts_with(&own), "{script}");
    assert!(
        kernel[0].ends_with(" initrd=initrd.img console=ttyS0"),
        "{script}"
    );
    assert_eq!(kernel[1], kernel[0].replacen("198.18.0.2", "198.18.0.1", 1));
    assert_eq!(kernel[2], "goto failed");
    for want in [
        "initrd --name initrd.img http://198.18.0.2/files/initrd.img \
         || initrd --name initrd.img http://198.18.0.1/files/initrd.img || goto failed\n"
            .to_string(),
        "chain --replace --autofree http://198.18.0.2/boot.ipxe \
         || chain --replace --autofree http://198.18.0.1/boot.ipxe\n"
            .to_string(),
    ] {
        assert!(script.contains(&want), "{want:?} not in:\n{script}");
    }
    let url_of = |fetch: &str| fetch.split_whitespace().nth(3).unwrap().to_string();
    // Before the kill, the first alternative answers.
    let (from, _) = fetch_line_in(&client, local, &script_url, &script, "kernel").unwrap();
    assert_eq!(from, url_of(kernel[0]));
    fleet.servers[1].kill9();
    // Server 1 is gone mid-boot: its kernel and initrd come from server 0, whole.
    let (from, n) = fetch_line_in(&client, local, &script_url, &script, "kernel").unwrap();
    assert_eq!((from, n), (url_of(kernel[1]), 262_147));
    let (from, n) = fetch_line_in(&client, local, &script_url, &script, "initrd").unwrap();
    assert_eq!(
        (from.as_str(), n),
        ("http://198.18.0.1/files/initrd.img", 524_309)
    );
    // Without the alternative the line fails: it was server 1's URL that could not answer.
    let own_only = script.replace(&format!(" || {}", kernel[1]), "");
    assert!(fetch_line_in(&client, local, &script_url, &own_only, "kernel").is_err());
    // The retry chain's alternative: server 0 answers the machine's stub and its own script
    // (the machine proves itself to the peer as it did to server 1).
    let (status, stub) = get_in(&client, local, "http://198.18.0.1/boot.ipxe");
    assert!(status == 200 && stub.starts_with("#!ipxe\n"), "{stub}");
    let (status, own) = get_in(&client, local, &format!("http://198.18.0.1/ipxe?mac={mac}"));
    assert!(
        status == 200
            && own.contains(&format!(
                "kernel --name kernel http://198.18.0.1/boot/{mac}/kernel?cap="
            )),
        "{own}\n{}",
        fleet.logs()
    );
}

/// perfdhcp's counts: (DISCOVERs sent, OFFERs received, REQUESTs sent, ACKs received).
fn perfdhcp_counts(out: &str) -> (u64, u64, u64, u64) {
    let mut section = "";
    let mut v = [0u64; 4];
    for line in out.lines() {
        if line.contains("Statistics for: DISCOVER-OFFER")
            || line.contains("Statistics for: SOLICIT-ADVERTISE")
        {
            section = "do";
        } else if line.contains("Statistics for: REQUEST-ACK")
            || line.contains("Statistics for: REQUEST-REPLY")
        {
            section = "ra";
        }
        let num = |p: &str| {
            line.trim()
                .strip_prefix(p)
                .and_then(|n| n.trim().parse::<u64>().ok())
        };
        match (section, num("sent packets:"), num("received packets:")) {
            ("do", Some(n), _) => v[0] = n,
            ("do", _, Some(n)) => v[1] = n,
            ("ra", Some(n), _) => v[2] = n,
            ("ra", _, Some(n)) => v[3] = n,
            _ => {}
        }
    }
    (v[0], v[1], v[2], v[3])
}

/// Where the relay's helper list listens in the clients' namespace.
const FAN_OUT: &str = "198.18.0.100:6767";

/// A relay agent's helper list: every datagram that reaches [`FAN_OUT`] in the clients'
/// namespace is sent on to port 67 of each server, as a relay with one helper address per
/// server forwards each client broadcast to all of them, until `stop` is set (at most 5
/// minutes). Returns once it listens; the thread's result is how many datagrams it forwarded.
fn fan_out(
    fleet: &Fleet,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> std::thread::JoinHandle<u64> {
    use std::sync::atomic::Ordering;
    let ns = fleet.segment.client.0.clone();
    let servers: Vec<std::net::SocketAddrV4> = (0..fleet.segment.servers.len())
        .map(|i| format!("198.18.0.{}:67", i + 1).parse().unwrap())
        .collect();
    let (ready, listening) = std::sync::mpsc::channel();
    let handle = std::thread::spawn(move || {
        chainboot_testnet::in_netns(&ns, move || {
            let sock = std::net::UdpSocket::bind(FAN_OUT).unwrap();
            sock.set_read_timeout(Some(Duration::from_millis(50)))
                .unwrap();
            ready.send(()).unwrap();
            let until = Instant::now() + Duration::from_secs(300);
            let mut buf = [0u8; 1500];
            let mut forwarded = 0;
            while !stop.load(Ordering::Relaxed) && Instant::now() < until {
                let Ok(n) = sock.recv(&mut buf) else {
                    continue;
                };
                for to in &servers {
                    if sock.send_to(&buf[..n], to).is_ok() {
                        forwarded += 1;
                    }
                }
            }
            forwarded
        })
    });
    listening
        .recv_timeout(Duration::from_secs(10))
        .expect("the fan-out listens");
    handle
}

/// perfdhcp against `n` servers: it acts as the relay on the bridge (giaddr 198.18.0.100, so
/// every server answers it by unicast) and sends every DISCOVER and REQUEST to the relay's
/// helper list ([`fan_out`]), so every server sees each one; 200 exchanges/s for 5 s over
/// 1000 client MACs.
fn perfdhcp_against_the_fleet(n: usize) {
    chainboot_testnet::require(&["perfdhcp"]);
    let fleet = Fleet::start_with(
        n,
        &Sections {
            dhcp: LIFTED_GUARDS,
            store: "",
            ..Sections::default()
        },
    );
    let pcap = fleet.dir.path().join("acks.pcap");
    let mut capture = fleet.capture(&pcap);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let helpers = fan_out(&fleet, stop.clone());
    let (fan_ip, fan_port) = FAN_OUT.split_once(':').unwrap();
    let out = Command::new("ip")
        .args(["netns", "exec", &fleet.segment.client.0])
        .args([
            "timeout", "120", "perfdhcp", "-4", "-l", "br0", "-N", fan_port,
        ])
        .args([
            "-r", "200", "-R", "1000", "-p", "5", "-d", "5", "-W", "3000000",
        ])
        .args(["-b", "mac=02:fd:00:00:00:00", fan_ip])
        .output()
        .unwrap();
    std::thread::sleep(Duration::from_secs(1));
    capture.kill9();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let forwarded = helpers.join().unwrap();
    eprintln!("the relay's helper list forwarded {forwarded} datagrams");
    // perfdhcp exits non-zero when anything was dropped: its counts decide.
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let (discovers, offers, requests, acked) = perfdhcp_counts(&text);
    eprintln!(
        "perfdhcp: {discovers} DISCOVERs, {offers} OFFERs, {requests} REQUESTs, {acked} ACKs"
    );
    assert!(
        discovers >= 500,
        "perfdhcp sent {discovers} DISCOVERs:\n{text}"
    );
    assert!(
        acked * 10 >= discovers * 8,
        "{acked} ACKs for {discovers} DISCOVERs:\n{text}\n{}",
        fleet.logs()
    );
    let acks = acks_in_capture(&pcap);
    assert!(
        acks.len() as u64 * 10 >= acked * 9,
        "ACKs seen on the wire: {} of {acked}",
        acks.len()
    );
    let senders = assert_no_address_acked_twice(&acks);
    assert_eq!(senders.len(), n, "every server answered: {senders:?}");
    assert_acks_are_the_database_leases(&acks, &fleet.bound_leases());
    let (bound, macs, servers) = fleet.leases_in_database();
    assert_eq!(bound, macs, "one address per client");
    assert_eq!(servers, n as u64, "every server wrote leases");
}

#[test]
fn two_servers_under_perfdhcp_load_never_ack_an_address_twice() {
    perfdhcp_against_the_fleet(2);
}

#[test]
fn three_servers_under_perfdhcp_load_never_ack_an_address_twice() {
    perfdhcp_against_the_fleet(3);
}

/// A firmware-like DHCP client in the clients' namespace: port 68 on the bridge, broadcast.
fn dhcp_socket() -> std::net::UdpSocket {
    let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::DGRAM, None).unwrap();
    s.set_reuse_address(true).unwrap();
    s.set_broadcast(true).unwrap();
    s.bind_device(Some(b"br0")).unwrap();
    s.bind(&std::net::SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 68).into())
        .unwrap();
    s.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    s.into()
}

/// Broadcasts `m` (again every 2 s) until a reply with its xid arrives or `wait` passes.
fn ask(
    s: &std::net::UdpSocket,
    m: &chainboot_dhcp::client::ClientMessage,
    wait: Duration,
) -> Option<ReplyView> {
    let to = std::net::SocketAddrV4::new(Ipv4Addr::BROADCAST, 67);
    let deadline = Instant::now() + wait;
    let mut buf = [0u8; 1500];
    let mut next_send = Instant::now();
    while Instant::now() < deadline {
        if Instant::now() >= next_send {
            s.send_to(&m.encode(), to).unwrap();
            next_send = Instant::now() + Duration::from_secs(2);
        }
        if let Ok((n, _)) = s.recv_from(&mut buf) {
            if let Some(r) = ReplyView::parse(&buf[..n]) {
                if r.xid == m.xid {
                    return Some(r);
                }
            }
        }
    }
    None
}

fn client_mac(i: u8) -> [u8; 6] {
    [0x52, 0x54, 0x00, 0x0d, 0x00, i]
}

/// DISCOVER, REQUEST as an ordinary client: the ACKed address, or `None` when no ACK came
/// within `wait` per step.
fn dora(s: &std::net::UdpSocket, mac: [u8; 6], wait: Duration) -> Option<Ipv4Addr> {
    dora_as(s, chainboot_dhcp::client::ClientKind::Plain, mac, wait)
}

/// The same as a client of `kind`.
fn dora_as(
    s: &std::net::UdpSocket,
    kind: chainboot_dhcp::client::ClientKind,
    mac: [u8; 6],
    wait: Duration,
) -> Option<Ipv4Addr> {
    use chainboot_dhcp::client::ClientMessage;
    let d = ClientMessage::new(kind.clone(), MessageType::Discover, mac);
    let offer = ask(s, &d, wait)?;
    let mut q = ClientMessage::new(kind, MessageType::Request, mac);
    q.requested_ip = Some(offer.yiaddr);
    q.server_id = offer.opt_ip(54);
    let ack = ask(s, &q, wait)?;
    (ack.msg_type == Some(MessageType::Ack)).then_some(ack.yiaddr)
}

/// A renewal as a PXE client at T2 sends it (REBINDING: broadcast, its address in ciaddr, no
/// server named): the reply's type. A boot client's exchanges are events (an ordinary
/// client's are only counted).
fn renew(s: &std::net::UdpSocket, mac: [u8; 6], addr: Ipv4Addr) -> Option<MessageType> {
    use chainboot_dhcp::client::ClientMessage;
    let mut q = ClientMessage::new(PXE, MessageType::Request, mac);
    q.xid ^= 0x00ff_0000;
    q.ciaddr = addr;
    ask(s, &q, Duration::from_secs(15))?.msg_type
}

const PXE: chainboot_dhcp::client::ClientKind =
    chainboot_dhcp::client::ClientKind::Firmware { arch: 0 };

fn unix_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

#[test]
fn with_the_database_stopped_30s_known_leases_are_renewed_throughout_and_new_ones_wait() {
    let fleet = Fleet::start(1);
    let ns = fleet.segment.client.0.clone();
    let leased: Vec<([u8; 6], Ipv4Addr)> = chainboot_testnet::in_netns(&ns, || {
        let s = dhcp_socket();
        (0..8u8)
            .map(|i| {
                let mac = client_mac(i);
                (
                    mac,
                    dora_as(&s, PXE, mac, Duration::from_secs(10)).expect("a lease"),
                )
            })
            .collect()
    });
    let before: i64 = fleet
        .pg
        .psql(&fleet.db, "SELECT max(updated) FROM leases")
        .trim()
        .parse()
        .unwrap();
    // Renewals must carry a later time than the leases they renew.
    std::thread::sleep(Duration::from_millis(1100));

    let outage_from = unix_ms();
    fleet.pg.stop();
    let renewing = leased.clone();
    let (renewed, newcomer) = chainboot_testnet::in_netns(&ns, move || {
        let s = dhcp_socket();
        // 30 s without the database, every client renewing every 2 s throughout.
        let until = Instant::now() + Duration::from_secs(30);
        let mut renewed: Vec<Option<MessageType>> = Vec::new();
        while Instant::now() < until {
            renewed.extend(renewing.iter().map(|(mac, addr)| renew(&s, *mac, *addr)));
            std::thread::sleep(Duration::from_secs(2));
        }
        let newcomer = dora(&s, client_mac(99), Duration::from_secs(5));
        (renewed, newcomer)
    });
    assert!(
        renewed.len() >= 8 * 10 && renewed.iter().all(|t| *t == Some(MessageType::Ack)),
        "renewals served throughout the outage: {renewed:?}\n{}",
        fleet.logs()
    );
    assert_eq!(newcomer, None, "a new lease waits for the database");
    let outage_to = unix_ms();
    let journal = fleet
        .dir
        .path()
        .join("state0")
        .join(chainboot_store::JOURNAL_FILE);
    assert!(journal.is_file(), "renewals journaled before their ACKs");

    fleet.pg.restart();
    fleet.eventually(|| {
        let renewed_rows: usize = fleet
            .pg
            .psql(
                &fleet.db,
                &format!("SELECT count(*) FROM leases WHERE updated > {before}"),
            )
            .trim()
            .parse()
            .unwrap();
        if renewed_rows == leased.len() && !journal.exists() {
            return Ok(());
        }
        Err(format!(
            "renewals not written after the database returned ({renewed_rows})"
        ))
    });
    let newcomer = chainboot_testnet::in_netns(&ns, || {
        dora(&dhcp_socket(), client_mac(99), Duration::from_secs(10))
    });
    let newcomer = newcomer.expect("served once the database is back");
    assert!(
        leased.iter().all(|(_, a)| *a != newcomer),
        "no address twice"
    );
    let (bound, macs, _) = fleet.leases_in_database();
    assert_eq!((bound, macs), (9, 9));
    // No lease lost: each client still holds its address in the database.
    let held = fleet.bound_leases();
    for (mac, addr) in &leased {
        assert_eq!(held.get(addr), Some(&mac_text(mac)), "{addr} kept");
    }
    // The events the server held while the database was away are all written, with the time
    // they happened: every renewal ACKed during the outage has its event.
    let acked_per_client: Vec<usize> = (0..leased.len())
        .map(|i| {
            renewed
                .iter()
                .skip(i)
                .step_by(leased.len())
                .filter(|t| **t == Some(MessageType::Ack))
                .count()
        })
        .collect();
    fleet.eventually(|| {
        let counted: HashMap<String, usize> = fleet
            .pg
            .psql(
                &fleet.db,
                &format!(
                    "SELECT mac, count(*) FROM events WHERE kind = 'dhcp' \
                     AND at_ms BETWEEN {outage_from} AND {outage_to} \
                     AND detail::jsonb ->> 'msg' = 'request' GROUP BY mac"
                ),
            )
            .lines()
            .filter_map(|l| {
                let (mac, n) = l.split_once('|')?;
                Some((mac.to_string(), n.parse().ok()?))
            })
            .collect();
        let missing: Vec<String> = leased
            .iter()
            .zip(&acked_per_client)
            .filter(|((mac, _), acked)| counted.get(&mac_text(mac)).copied().unwrap_or(0) < **acked)
            .map(|((mac, _), acked)| {
                format!(
                    "{}: {acked} ACKed, {:?} events",
                    mac_text(mac),
                    counted.get(&mac_text(mac))
                )
            })
            .collect();
        if missing.is_empty() {
            return Ok(());
        }
        Err(format!("held events not all written: {missing:?}"))
    });
    let log = fleet.logs();
    assert!(log.contains("state store degraded"), "{log}");
    assert!(log.contains("the database answers again"), "{log}");
}

// ---- DHCPv6 in a fleet.

/// The servers' `[dhcp6]`: stateful on the bridge's prefix, the per-DUID and new-client guards
/// lifted as for any load generator that is endless new clients.
const DHCP6: &str = r#"
[dhcp6]
mode = "server"
interfaces = ["vs"]
valid_lifetime = "1h"
limits = { per_duid_rate = 1000.0, per_duid_burst = 1000.0, new_client_share = 1.0 }
[[dhcp6.subnet]]
prefix = "2001:db8:1::/64"
pools = [["2001:db8:1::1000", "2001:db8:1::1fff"]]
"#;

/// One DHCPv6 Advertise or Reply seen on the wire.
#[derive(Debug)]
struct Reply6 {
    msg_type: u8,
    server: Vec<u8>,
    client: Vec<u8>,
    /// The IA's IAID and address, when it carries one with a valid lifetime above 0.
    ia: Option<(u32, std::net::Ipv6Addr)>,
}

/// Every DHCPv6 Advertise and Reply to a client in a pcap file.
fn replies6_in_capture(path: &Path) -> Vec<Reply6> {
    use chainboot_dhcp6::wire::{code, msg, Options};
    let mut out = Vec::new();
    for frame in frames_in_capture(path) {
        // Ethernet (14) + IPv6 (40, next header UDP) + UDP (8).
        if frame.len() < 14 + 40 + 8 + 4 || frame[12..14] != [0x86, 0xdd] || frame[14 + 6] != 17 {
            continue;
        }
        let dhcp = &frame[14 + 40 + 8..];
        if dhcp[0] != msg::ADVERTISE && dhcp[0] != msg::REPLY {
            continue;
        }
        let Ok(opts) = Options::parse(&dhcp[4..]) else {
            continue;
        };
        // IA_NA: IAID, T1, T2, then options; IAADDR: address, preferred and valid lifetimes.
        let ia = opts.get(code::IA_NA).and_then(|ia| {
            let iaid = u32::from_be_bytes(ia.get(0..4)?.try_into().ok()?);
            let inner = Options::parse(ia.get(12..)?).ok()?;
            let a = inner.get(code::IAADDR)?;
            let addr = std::net::Ipv6Addr::from(<[u8; 16]>::try_from(a.get(..16)?).ok()?);
            let valid = u32::from_be_bytes(a.get(20..24)?.try_into().ok()?);
            (valid > 0).then_some((iaid, addr))
        });
        out.push(Reply6 {
            msg_type: dhcp[0],
            server: opts.get(code::SERVERID).unwrap_or_default().to_vec(),
            client: opts.get(code::CLIENTID).unwrap_or_default().to_vec(),
            ia,
        });
    }
    out
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// perfdhcp -6 on the bridge (Solicit to ff02::1:2, which every server receives; Request to
/// the server whose Advertise it took): `clients` DUID-LLTs whose MACs follow `mac`, 50
/// exchanges/s for 4 s. Returns (Solicits sent, Advertises received, Requests sent, Replies
/// received) and perfdhcp's output.
fn perfdhcp6(fleet: &Fleet, mac: &str, clients: u32) -> ((u64, u64, u64, u64), String) {
    let out = Command::new("ip")
        .args(["netns", "exec", &fleet.segment.client.0])
        .args(["timeout", "60", "perfdhcp", "-6", "-l", "br0"])
        .args(["-r", "50", "-p", "4", "-W", "3000000"])
        .args(["-R", &clients.to_string(), "-b", &format!("mac={mac}")])
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (perfdhcp_counts(&text), text)
}

/// Every reply's client was answered by one server only, and no address was given (with a
/// valid lifetime) to two identity associations. Returns the server DUIDs that answered.
fn assert_one_server_per_client_and_no_address_twice(replies: &[Reply6]) -> HashSet<Vec<u8>> {
    let mut server_of: HashMap<&[u8], &[u8]> = HashMap::new();
    let mut holder: HashMap<std::net::Ipv6Addr, (&[u8], u32)> = HashMap::new();
    let mut servers = HashSet::new();
    for r in replies {
        servers.insert(r.server.clone());
        if let Some(first) = server_of.insert(&r.client, &r.server) {
            assert_eq!(
                first,
                r.server.as_slice(),
                "client {} answered by {} and {}",
                hex(&r.client),
                hex(first),
                hex(&r.server)
            );
        }
        if let (Some((iaid, addr)), chainboot_dhcp6::wire::msg::REPLY) = (r.ia, r.msg_type) {
            if let Some(first) = holder.insert(addr, (&r.client, iaid)) {
                assert_eq!(
                    first,
                    (r.client.as_slice(), iaid),
                    "{addr} bound to two identity associations"
                );
            }
        }
    }
    servers
}

impl Fleet {
    /// Bound DHCPv6 leases in the database: address -> (DUID in hex, IAID, server).
    fn bound_leases6(&self) -> HashMap<std::net::Ipv6Addr, (String, u32, String)> {
        self.pg
            .psql(
                &self.db,
                "SELECT ip, encode(duid, 'hex'), iaid, server FROM leases6 WHERE state = 'bound'",
            )
            .lines()
            .filter_map(|l| {
                let mut f = l.split('|');
                let ip = f.next()?.parse().ok()?;
                let duid = f.next()?.to_string();
                let iaid = f.next()?.parse().ok()?;
                Some((ip, (duid, iaid, f.next()?.to_string())))
            })
            .collect()
    }
}

/// Every Reply seen binds what the database holds: the address is the lease of the identity
/// association it was given to (a Reply leaves only after its lease is committed).
fn assert_replies_are_the_database_leases6(
    replies: &[Reply6],
    bound: &HashMap<std::net::Ipv6Addr, (String, u32, String)>,
) {
    for r in replies
        .iter()
        .filter(|r| r.msg_type == chainboot_dhcp6::wire::msg::REPLY)
    {
        let Some((iaid, addr)) = r.ia else { continue };
        let row = bound.get(&addr).map(|(d, i, _)| (d.as_str(), *i));
        assert_eq!(
            row,
            Some((hex(&r.client).as_str(), iaid)),
            "{addr} given to {} in a Reply, the database says otherwise",
            hex(&r.client)
        );
    }
}

/// The MAC of the dhclient of [`dhclient6_on_the_bridge`], and of `explain`'s client.
const DHCLIENT_MAC: [u8; 6] = [0x52, 0x54, 0, 0, 0x60, 6];

/// ISC dhclient -6 with a DUID-LL, on an interface of its own (MAC [`DHCLIENT_MAC`]) on the
/// bridge, until it holds a lease: (its address, the server DUID it took the lease from).
fn dhclient6_on_the_bridge(fleet: &Fleet) -> (std::net::Ipv6Addr, Vec<u8>) {
    let (mut client, addr, server) = dhclient6_holding_a_lease(fleet);
    client.kill9();
    (addr, server)
}

/// The same, dhclient left running (it renews at the lease's T1).
fn dhclient6_holding_a_lease(fleet: &Fleet) -> (Proc, std::net::Ipv6Addr, Vec<u8>) {
    let c = &fleet.segment.client.0;
    let d = fleet.dir.path();
    run(&[
        "ip", "-n", c, "link", "add", "d6", "type", "veth", "peer", "name", "q6",
    ]);
    run(&[
        "ip",
        "-n",
        c,
        "link",
        "set",
        "d6",
        "address",
        &mac_text(&DHCLIENT_MAC),
    ]);
    run(&["ip", "-n", c, "link", "set", "q6", "master", "br0"]);
    run(&["ip", "-n", c, "link", "set", "q6", "up"]);
    run(&["ip", "-n", c, "link", "set", "d6", "up"]);
    chainboot_testnet::wait_link_local(c, "d6");
    std::fs::write(d.join("dhclient6.conf"), "").unwrap();
    let leases = d.join("dhclient6.leases");
    let client = Proc(
        Command::new("ip")
            .args(["netns", "exec", c, "dhclient", "-6", "-d", "-D", "LL"])
            .args(["-sf", "/bin/true", "-cf"])
            .arg(d.join("dhclient6.conf"))
            .arg("-lf")
            .arg(&leases)
            .arg("-pf")
            .arg(d.join("dhclient6.pid"))
            .arg("d6")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let until = Instant::now() + Duration::from_secs(30);
    let text = loop {
        let text = std::fs::read_to_string(&leases).unwrap_or_default();
        if text.contains("iaaddr") && text.contains("dhcp6.server-id") {
            break text;
        }
        assert!(
            Instant::now() < until,
            "dhclient got no lease: {text}\n{}",
            fleet.logs()
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    let word_after = |key: &str| {
        text.lines()
            .find_map(|l| l.trim().strip_prefix(key))
            .and_then(|rest| rest.split([' ', ';']).find(|w| !w.is_empty()))
            .unwrap_or_else(|| panic!("no {key} in {text}"))
            .to_string()
    };
    let addr = word_after("iaaddr ").parse().unwrap();
    // dhclient writes option values as colon-separated hex bytes without leading zeros.
    let server = word_after("option dhcp6.server-id ")
        .split(':')
        .map(|b| u8::from_str_radix(b, 16).unwrap())
        .collect();
    (client, addr, server)
}

#[test]
fn two_servers_share_dhcpv6_clients_never_bind_an_address_twice_and_take_over_a_killed_peer() {
    chainboot_testnet::require(&["perfdhcp", "dhclient"]);
    let mut fleet = Fleet::start_v6(2, DHCP6);
    let pcap = fleet.dir.path().join("replies6.pcap");
    let mut capture = fleet.capture_matching(&pcap, &["udp", "and", "src", "port", "547"]);
    // A real client first: its lease is from the server that owns its MAC's hash bucket.
    let owner = chainboot_dhcp::engine::fleet::Fleet::new("pxe-1", ["pxe-0".to_string()])
        .owner(chainboot_dhcp::engine::fleet::bucket(&DHCLIENT_MAC))
        .to_string();
    let (addr, server_duid) = dhclient6_on_the_bridge(&fleet);
    let duids = fleet.pg.psql(
        &fleet.db,
        "SELECT server, encode(duid, 'hex') FROM dhcp6_duids ORDER BY server",
    );
    assert!(
        duids.contains(&format!("{owner}|{}", hex(&server_duid))),
        "the lease came from {owner}: {duids}"
    );
    let ((solicits, advertises, requests, replies), text) =
        perfdhcp6(&fleet, "02:fd:00:00:00:00", 100);
    std::thread::sleep(Duration::from_secs(1));
    capture.kill9();
    eprintln!("perfdhcp -6: {solicits} Solicits, {advertises} Advertises, {requests} Requests, {replies} Replies");
    assert!(solicits >= 100, "{text}");
    assert_eq!(
        (advertises, replies),
        (solicits, requests),
        "every message answered once:\n{text}\n{}",
        fleet.logs()
    );
    let seen = replies6_in_capture(&pcap);
    assert!(
        seen.len() as u64 >= (advertises + replies) * 9 / 10,
        "seen: {}",
        seen.len()
    );
    let senders = assert_one_server_per_client_and_no_address_twice(&seen);
    assert_eq!(senders.len(), 2, "both servers answered");
    let bound = fleet.bound_leases6();
    assert_replies_are_the_database_leases6(&seen, &bound);
    let dhclient_duid = [&[0u8, 3, 0, 1][..], &DHCLIENT_MAC].concat();
    let row = bound.get(&addr).expect("dhclient's lease in the database");
    assert_eq!(
        (row.0.as_str(), row.2.as_str()),
        (hex(&dhclient_duid).as_str(), owner.as_str()),
        "dhclient's lease, bound by the server that answered it"
    );
    let writers: HashSet<&str> = bound.values().map(|(_, _, s)| s.as_str()).collect();
    assert_eq!(
        writers,
        HashSet::from(["pxe-0", "pxe-1"]),
        "each bound some"
    );
    // Each left the other's clients alone: counted, not answered.
    for i in 0..2 {
        assert!(
            fleet.metric(i, "chainboot_dhcp6_ignored_peer_client_total") > 0,
            "server {i}"
        );
        assert_eq!(fleet.metric(i, "chainboot_dhcp6_lease_conflicts_total"), 0);
    }
    // Either server's API lists the fleet's DHCPv6 leases with the server that bound them.
    let listed = fleet.api(0, "/api/v1/leases");
    let v6: Vec<&serde_json::Value> = listed
        .as_array()
        .unwrap()
        .iter()
        .filter(|l| l["family"] == "ipv6" && l["state"] == "bound")
        .collect();
    assert_eq!(v6.len(), bound.len());
    for l in &v6 {
        let ip: std::net::Ipv6Addr = l["ip"].as_str().unwrap().parse().unwrap();
        assert_eq!(l["server"].as_str(), Some(bound[&ip].2.as_str()), "{l}");
    }
    // `explain --ipv6` names the fleet server that answers the MAC (dhclient's).
    let mac = DHCLIENT_MAC;
    let text = fleet.cli(
        1,
        &[
            "explain",
            "--ipv6",
            "--mac",
            "52:54:00:00:60:06",
            "--arch",
            "7",
        ],
    );
    assert!(
        text.contains(&format!(
            "live servers pxe-0, pxe-1; the client's hash bucket {} is answered by {owner}",
            chainboot_dhcp::engine::fleet::bucket(&mac)
        )),
        "{text}"
    );
    let answer = if owner == "pxe-1" {
        "outcome: advertise"
    } else {
        "outcome: ignored (peer-client)"
    };
    assert!(text.contains(answer), "{text}");

    // kill -9 of pxe-1: once its heartbeat is older than peer_timeout, pxe-0 answers every
    // client, and still binds no address to a second client, not even one pxe-1 bound.
    fleet.servers[1].kill9();
    let until = Instant::now() + Duration::from_secs(30);
    // The last change pxe-0 saw (it may have seen itself alone before pxe-1 started, too).
    let alone = || {
        std::fs::read_to_string(&fleet.logs[0])
            .unwrap_or_default()
            .lines()
            .rev()
            .find(|l| l.contains("fleet: live servers changed"))
            .is_some_and(|l| l.contains("live=[\"pxe-0\"]"))
    };
    while !alone() {
        assert!(
            Instant::now() < until,
            "pxe-0 never saw pxe-1 go:\n{}",
            fleet.logs()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let pcap2 = fleet.dir.path().join("replies6-after.pcap");
    let mut capture = fleet.capture_matching(&pcap2, &["udp", "and", "src", "port", "547"]);
    let ((solicits, advertises, requests, replies), text) =
        perfdhcp6(&fleet, "02:fd:00:00:00:00", 200);
    std::thread::sleep(Duration::from_secs(1));
    capture.kill9();
    assert!(solicits >= 100, "{text}");
    assert_eq!(
        (advertises, replies),
        (solicits, requests),
        "the survivor answers every client:\n{text}\n{}",
        fleet.logs()
    );
    let after = replies6_in_capture(&pcap2);
    let senders: HashSet<Vec<u8>> = after.iter().map(|r| r.server.clone()).collect();
    assert_eq!(senders.len(), 1, "pxe-0 alone");
    let bound_before = bound;
    for r in after
        .iter()
        .filter(|r| r.msg_type == chainboot_dhcp6::wire::msg::REPLY)
    {
        let Some((iaid, addr)) = r.ia else { continue };
        if let Some((duid, was_iaid, _)) = bound_before.get(&addr) {
            assert_eq!(
                (duid.as_str(), *was_iaid),
                (hex(&r.client).as_str(), iaid),
                "{addr}, bound before the kill, given to another client"
            );
        }
    }
    let bound = fleet.bound_leases6();
    assert_replies_are_the_database_leases6(&after, &bound);
    assert!(
        bound.values().filter(|(_, _, s)| s == "pxe-0").count()
            > bound_before
                .values()
                .filter(|(_, _, s)| s == "pxe-0")
                .count(),
        "pxe-0 took pxe-1's clients"
    );
}

#[test]
fn with_the_database_stopped_dhclient6_keeps_its_lease_by_renewing_and_new_v6_clients_wait() {
    chainboot_testnet::require(&["perfdhcp", "dhclient"]);
    // A 16 s lifetime: T1 at 5 s, so dhclient renews every 5 s.
    let short = DHCP6.replace("valid_lifetime = \"1h\"", "valid_lifetime = \"16s\"");
    assert_ne!(short, DHCP6);
    let fleet = Fleet::start_v6(1, Box::leak(short.into_boxed_str()));
    let (mut dhclient, addr, _) = dhclient6_holding_a_lease(&fleet);
    let duid = [&[0u8, 3, 0, 1][..], &DHCLIENT_MAC].concat();
    // When dhclient's lease was last written (0: no row).
    let updated = || -> i64 {
        let sql = format!("SELECT updated FROM leases6 WHERE ip = '{addr}'");
        fleet.pg.psql(&fleet.db, &sql).trim().parse().unwrap_or(0)
    };
    let before = updated();
    assert!(before > 0);
    let journal = fleet
        .dir
        .path()
        .join("state0")
        .join(chainboot_store::JOURNAL6_FILE);

    fleet.pg.stop();
    let pcap = fleet.dir.path().join("outage6.pcap");
    let mut capture = fleet.capture_matching(&pcap, &["udp", "and", "src", "port", "547"]);
    // 25 s without the database (longer than the 16 s lifetime: only renewals answered from
    // the journal keep the address), dhclient renewing every 5 s throughout; a new client
    // in the middle of it.
    std::thread::sleep(Duration::from_secs(12));
    let ((_, _, requests, replies), text) = perfdhcp6(&fleet, "02:fe:00:00:00:00", 5);
    std::thread::sleep(Duration::from_secs(9));
    capture.kill9();
    assert!(requests > 0, "{text}");
    assert_eq!(replies, 0, "a new lease waits for the database:\n{text}");
    let renewed: Vec<Reply6> = replies6_in_capture(&pcap)
        .into_iter()
        .filter(|r| r.msg_type == chainboot_dhcp6::wire::msg::REPLY && r.client == duid)
        .collect();
    assert!(
        renewed.len() >= 3 && renewed.iter().all(|r| r.ia.is_some_and(|(_, a)| a == addr)),
        "dhclient's renewals answered throughout the outage, its address kept: {renewed:?}\n{}",
        fleet.logs()
    );
    assert!(journal.is_file(), "renewals journaled before their Replies");
    assert!(fleet.metric(0, "chainboot_dhcp6_degraded_renewals_total") >= 3);
    // Stopped now, so that what the database holds after it returns is the journal's.
    dhclient.kill9();

    fleet.pg.restart();
    fleet.eventually(|| {
        let updated = updated();
        // Renewals were journaled until the outage's end, 20 s and more after the lease.
        if updated >= before + 15 && !journal.exists() {
            return Ok(());
        }
        Err(format!(
            "renewals not written after the database returned ({updated})"
        ))
    });
    let held = fleet.bound_leases6();
    assert_eq!(
        held.get(&addr).map(|(d, _, s)| (d.as_str(), s.as_str())),
        Some((hex(&duid).as_str(), "pxe-0")),
        "dhclient still holds its address"
    );
    assert_eq!(held.len(), 1, "nothing else bound in the outage: {held:?}");
    let ((solicits, advertises, requests, replies), text) =
        perfdhcp6(&fleet, "02:fe:00:00:00:00", 5);
    assert!(
        solicits > 0 && (advertises, replies) == (solicits, requests),
        "new clients served once the database is back:\n{text}"
    );
    assert_eq!(fleet.metric(0, "chainboot_dhcp6_lease_conflicts_total"), 0);
    let log = fleet.logs();
    assert!(log.contains("state store degraded"), "{log}");
    assert!(
        log.contains("lease journal: renewals made during the outage written"),
        "{log}"
    );
}
