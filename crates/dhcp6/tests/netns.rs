//! The DHCPv6 server with real clients in network namespaces: ISC dhclient -6 dressed as UEFI
//! PXE firmware (vendor class 343 "PXEClient", architecture 7) and perfdhcp -6. The server
//! runs in-process on a thread inside the server namespace; addresses come from the IPv6
//! documentation prefix 2001:db8::/32 inside the namespaces only.
//!
//! Needs root and isc-dhcp-client, isc-dhcp-relay and kea-admin (perfdhcp) from
//! .ci/install-deps.

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chainboot_dhcp::{BootSettings, DhcpObserver};
use chainboot_dhcp6::{Dhcp6Config, Dhcp6Server, Handled6, Ingress6, Outcome6};
use chainboot_store::leases::LeaseState;
use chainboot_store::leases6::load_all;
use chainboot_store::Store;
use chainboot_testnet::{in_netns, require, run, wait_link_local, Proc, Topology};
use parking_lot::Mutex;
use tokio_util::sync::CancellationToken;

const CONFIG: &str = r#"
mode = "server"
valid_lifetime = "1h"
interfaces = ["vs"]
limits = { per_duid_rate = 1000.0, per_duid_burst = 1000.0 }
[[subnet]]
prefix = "2001:db8:1::/64"
pools = [["2001:db8:1::1000", "2001:db8:1::1fff"]]
dns = ["2001:db8:1::53"]
[[subnet]]
prefix = "2001:db8:2::/64"
pools = [["2001:db8:2::1000", "2001:db8:2::1fff"]]
"#;

/// Every exchange's message type and outcome, in order.
#[derive(Default)]
struct Seen(Mutex<Vec<(u8, Outcome6)>>);

impl DhcpObserver<Ingress6, Handled6> for Seen {
    fn exchange(&self, _: &Ingress6, h: &Handled6, _: Duration) {
        let t = h.request.as_ref().map_or(0, |(t, _)| *t);
        self.0.lock().push((t, h.outcome));
    }
}

/// The namespaces with 2001:db8:1::1/64 on the server side, and the server running there
/// until the returned token is cancelled (the thread is joined through the handle).
fn start(
    dir: &Path,
    seen: Arc<Seen>,
) -> (Topology, CancellationToken, std::thread::JoinHandle<()>) {
    let topo = Topology::new("cbd6", None);
    run(&[
        "ip",
        "-n",
        &topo.srv,
        "addr",
        "add",
        "2001:db8:1::1/64",
        "dev",
        "vs",
        "nodad",
    ]);
    wait_link_local(&topo.srv, "vs");
    wait_link_local(&topo.cli, "vc");
    let cfg: Dhcp6Config = toml::from_str(CONFIG).expect("the test config");
    let token = CancellationToken::new();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let (ns, state, stop) = (topo.srv.clone(), dir.join("state"), token.clone());
    let handle = std::thread::spawn(move || {
        in_netns(&ns, move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime");
            let store = Arc::new(Store::open(&state).expect("the store"));
            let server = Dhcp6Server::bind(cfg, BootSettings::default(), store, seen);
            let server = match server {
                Ok(s) => s,
                Err(e) => {
                    let _ = ready_tx.send(Err(e.to_string()));
                    return;
                }
            };
            let _ = ready_tx.send(Ok(()));
            rt.block_on(server.run(stop)).expect("the server runs");
        })
    });
    ready_rx
        .recv_timeout(Duration::from_secs(10))
        .expect("server thread")
        .expect("server bound");
    (topo, token, handle)
}

fn stop(token: CancellationToken, handle: std::thread::JoinHandle<()>) {
    token.cancel();
    handle.join().expect("the server thread");
}

/// dhclient.conf making ISC dhclient look like OVMF's PXEv6 client.
const DHCLIENT_PXE: &str = r#"
option dhcp6.pxe-arch code 61 = unsigned integer 16;
option dhcp6.pxe-vendor code 16 = string;
option dhcp6.pxe-url code 59 = string;
send dhcp6.pxe-arch 7;
# Enterprise 343, length 32, "PXEClient:Arch:00007:UNDI:003000" (as raw bytes: dhclient
# cannot read back the record form from its own lease file).
send dhcp6.pxe-vendor 00:00:01:57:00:20:50:58:45:43:6c:69:65:6e:74:3a:41:72:63:68:3a:30:30:30:30:37:3a:55:4e:44:49:3a:30:30:33:30:30:30;
request dhcp6.pxe-url, dhcp6.name-servers;
"#;

fn dhclient(ns: &str, dir: &Path, extra: &[&str]) -> Command {
    let mut c = Command::new("ip");
    c.args([
        "netns",
        "exec",
        ns,
        "dhclient",
        "-6",
        "-v",
        "-D",
        "LL",
        "-sf",
        "/bin/true",
    ]);
    c.arg("-cf").arg(dir.join("dhclient.conf"));
    c.arg("-lf").arg(dir.join("dhclient6.leases"));
    c.arg("-pf").arg(dir.join("dhclient6.pid"));
    c.args(extra);
    c.arg("vc");
    c
}

fn mac_of(ns: &str, dev: &str) -> String {
    let out = run(&["ip", "-n", ns, "link", "show", "dev", dev]);
    out.split_whitespace()
        .skip_while(|w| *w != "link/ether")
        .nth(1)
        .expect("a MAC")
        .to_string()
}

#[test]
fn dhclient_as_pxe_firmware_gets_an_address_and_the_tftp_url_and_the_lease_is_durable() {
    require(&["ip", "dhclient"]);
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("dhclient.conf"), DHCLIENT_PXE).unwrap();
    let seen = Arc::new(Seen::default());
    let (topo, token, handle) = start(dir.path(), seen.clone());
    let lease_file = dir.path().join("dhclient6.leases");
    let mut client = Proc(
        dhclient(&topo.cli, dir.path(), &["-d"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let until = Instant::now() + Duration::from_secs(30);
    let leases = loop {
        let text = std::fs::read_to_string(&lease_file).unwrap_or_default();
        if text.contains("iaaddr") {
            break text;
        }
        assert!(Instant::now() < until, "dhclient got no lease: {text}");
        std::thread::sleep(Duration::from_millis(200));
    };
    client.kill9();
    assert!(leases.contains("iaaddr 2001:db8:1::1"), "{leases}");
    assert!(
        leases.contains(r#"pxe-url "tftp://[2001:db8:1::1]/snponly.efi""#),
        "{leases}"
    );
    let state = dir.path().join("state");
    let stored = load_all(&Store::open(&state).unwrap()).unwrap();
    assert_eq!(stored.len(), 1, "{stored:?}");
    assert_eq!(stored[0].state, LeaseState::Bound);
    assert_eq!(
        stored[0].mac.as_deref(),
        Some(mac_of(&topo.cli, "vc").as_str()),
        "the MAC learned from dhclient's DUID-LL"
    );
    assert!(leases.contains(&stored[0].ip.to_string()), "{leases}");

    // Both exchanges answered, nothing else seen (`dhclient -r` would test Release, but
    // Debian's dhclient 4.4.3 logs its Release and exits without sending it: perfdhcp below
    // releases instead).
    let seen = seen.0.lock().clone();
    assert_eq!(seen, [(1, Outcome6::Replied(2)), (3, Outcome6::Replied(7))]);
    stop(token, handle);
}

#[test]
fn a_client_behind_isc_dhcrelay_gets_an_address_of_the_relays_link() {
    require(&["ip", "dhclient", "dhcrelay"]);
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("dhclient.conf"), DHCLIENT_PXE).unwrap();
    let seen = Arc::new(Seen::default());
    let (topo, token, handle) = start(dir.path(), seen.clone());
    // The client namespace of the topology is the relay's: upstream `vc` on the server's
    // link, downstream `rc` on a link of its own (2001:db8:2::/64) with the client behind it.
    let client = chainboot_testnet::Netns(format!("{}r", topo.cli));
    run(&["ip", "netns", "add", &client.0]);
    run(&[
        "ip", "-n", &topo.cli, "link", "add", "rc", "type", "veth", "peer", "name", "vc", "netns",
        &client.0,
    ]);
    run(&[
        "ip",
        "-n",
        &topo.cli,
        "addr",
        "add",
        "2001:db8:1::fe/64",
        "dev",
        "vc",
        "nodad",
    ]);
    run(&[
        "ip",
        "-n",
        &topo.cli,
        "addr",
        "add",
        "2001:db8:2::1/64",
        "dev",
        "rc",
        "nodad",
    ]);
    run(&["ip", "-n", &topo.cli, "link", "set", "rc", "up"]);
    run(&["ip", "-n", &client.0, "link", "set", "vc", "up"]);
    run(&["ip", "-n", &client.0, "link", "set", "lo", "up"]);
    wait_link_local(&topo.cli, "rc");
    wait_link_local(&client.0, "vc");
    let _relay = Proc(
        Command::new("ip")
            .args(["netns", "exec", &topo.cli, "dhcrelay", "-6", "-d", "-q"])
            .arg("-pf")
            .arg(dir.path().join("dhcrelay.pid"))
            .args(["-l", "rc", "-u", "2001:db8:1::1%vc"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("dhcrelay"),
    );
    let lease_file = dir.path().join("dhclient6.leases");
    let mut dhclient = Proc(
        dhclient(&client.0, dir.path(), &["-d"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let until = Instant::now() + Duration::from_secs(30);
    let leases = loop {
        let text = std::fs::read_to_string(&lease_file).unwrap_or_default();
        if text.contains("iaaddr") {
            break text;
        }
        assert!(
            Instant::now() < until,
            "no lease through the relay: {text} {:?}",
            seen.0.lock()
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    dhclient.kill9();
    assert!(
        leases.contains("iaaddr 2001:db8:2::1"),
        "the relay's link: {leases}"
    );
    assert!(
        leases.contains(r#"pxe-url "tftp://[2001:db8:1::1]/snponly.efi""#),
        "the address the relay sent to: {leases}"
    );
    let stored = load_all(&Store::open(&dir.path().join("state")).unwrap()).unwrap();
    assert_eq!(
        stored[0].mac.as_deref(),
        Some(mac_of(&client.0, "vc").as_str()),
        "{stored:?}"
    );
    stop(token, handle);
}

#[test]
fn perfdhcp_exchanges_and_releases_all_complete() {
    require(&["ip", "perfdhcp"]);
    let dir = tempfile::tempdir().unwrap();
    let (topo, token, handle) = start(dir.path(), Arc::new(Seen::default()));
    // 200 clients at 100/s, Solicit-Advertise-Request-Reply each; bounded in time.
    let out = Command::new("ip")
        .args([
            "netns", "exec", &topo.cli, "timeout", "60", "perfdhcp", "-6", "-l", "vc",
        ])
        .args([
            "-r", "100", "-R", "200", "-n", "200", "-p", "20", "-W", "3000000", "-F", "100",
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let counted = |label: &str| -> Vec<u64> {
        text.lines()
            .filter(|l| l.trim_start().starts_with(label))
            .filter_map(|l| l.split(':').nth(1)?.split_whitespace().next()?.parse().ok())
            .collect()
    };
    let sent = counted("sent packets");
    let received = counted("received packets");
    assert_eq!(sent.len(), 3, "Solicit, Request, Release: {text}");
    assert_eq!(sent, received, "every message answered: {text}");
    assert!(sent[0] >= 150 && sent[2] > 0, "{text}");
    let stored = load_all(&Store::open(&dir.path().join("state")).unwrap()).unwrap();
    assert_eq!(stored.len() as u64, received[1], "one lease per Reply");
    let released = stored
        .iter()
        .filter(|l| l.state == LeaseState::Released)
        .count() as u64;
    assert_eq!(released, received[2], "each answered Release is stored");
    stop(token, handle);
}
