//! A boot over IPv6 only, step by step with real clients: `chainboot serve` with `[dhcp6]` in
//! server mode, TFTP and HTTP on `[::]`, in a server namespace; in the client namespace ISC
//! `dhclient -6` dressed first as UEFI PXEv6 firmware, then as iPXE (user class "iPXE"), and
//! curl fetching exactly the URLs option 59 named (tftp:// and http:// with bracketed
//! literals), then the script chain from the address DHCPv6 leased. Addresses from
//! 2001:db8::/32 inside the namespaces only.
#![allow(clippy::unwrap_used)] // a test: a failed step is a failed test

mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;

const SERVER6: &str = "2001:db8:25::1";

fn config(dir: &Path) -> String {
    format!(
        "[server]\ninterfaces = [\"srv0\"]\nstate_dir = \"{}\"\n\
         [ipv6]\nrouter_advertisements = \"off\"\n\
         [tftp]\nlisten = \"[::]:69\"\n\
         [http]\nlisten = \"[::]:80\"\n\
         [api]\nlisten = \"127.0.0.1:0\"\nread_requires_token = false\n\
         [dhcp]\nmode = \"off\"\n\
         [dhcp6]\nmode = \"server\"\ninterfaces = [\"srv0\"]\n\
         [[dhcp6.subnet]]\nprefix = \"2001:db8:25::/64\"\npools = [[\"2001:db8:25::100\", \"2001:db8:25::1ff\"]]\n",
        dir.join("state").display(),
    )
}

/// dhclient.conf: architecture 7, vendor class "PXEClient" (enterprise 343, as raw bytes:
/// dhclient cannot read the record form back from its own lease file), and for iPXE its user
/// class; asks for option 59.
fn dhclient_conf(ipxe: bool) -> String {
    let vendor: Vec<u8> = [
        &343u32.to_be_bytes()[..],
        &32u16.to_be_bytes(),
        b"PXEClient:Arch:00007:UNDI:003000",
    ]
    .concat();
    let hex = |b: &[u8]| {
        b.iter()
            .map(|x| format!("{x:02x}"))
            .collect::<Vec<_>>()
            .join(":")
    };
    let mut c = format!(
        "option dhcp6.pxe-arch code 61 = unsigned integer 16;\n\
         option dhcp6.pxe-vendor code 16 = string;\n\
         option dhcp6.pxe-user code 15 = string;\n\
         option dhcp6.pxe-url code 59 = string;\n\
         send dhcp6.pxe-arch 7;\n\
         send dhcp6.pxe-vendor {};\n\
         request dhcp6.pxe-url;\n",
        hex(&vendor)
    );
    if ipxe {
        c.push_str(&format!("send dhcp6.pxe-user {};\n", hex(b"\x00\x04iPXE")));
    }
    c
}

/// One stateful DHCPv6 exchange with dhclient in `ns`: (leased address, option 59).
fn dhcpv6(ns: &str, dir: &Path, name: &str, ipxe: bool) -> (String, String) {
    let conf = dir.join(format!("{name}.conf"));
    let leases = dir.join(format!("{name}.leases"));
    std::fs::write(&conf, dhclient_conf(ipxe)).expect("dhclient.conf");
    let child = Command::new("ip")
        .args([
            "netns",
            "exec",
            ns,
            "dhclient",
            "-6",
            "-d",
            "-D",
            "LL",
            "-sf",
            "/bin/true",
        ])
        .arg("-cf")
        .arg(&conf)
        .arg("-lf")
        .arg(&leases)
        .arg("-pf")
        .arg(dir.join(format!("{name}.pid")))
        .arg("cli0")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("dhclient");
    let _client = Server::adopt(child, dir.join(format!("{name}.log")));
    let until = Instant::now() + Duration::from_secs(30);
    let text = loop {
        let text = std::fs::read_to_string(&leases).unwrap_or_default();
        if text.contains("iaaddr") && text.contains("pxe-url") {
            break text;
        }
        assert!(Instant::now() < until, "{name}: no lease: {text}");
        std::thread::sleep(Duration::from_millis(200));
    };
    let after = |key: &str| {
        let at = text.find(key).unwrap_or_else(|| panic!("{key} in {text}")) + key.len();
        text[at..]
            .trim_start()
            .split([' ', ';', '{', '\n'])
            .next()
            .unwrap_or_default()
            .trim_matches('"')
            .to_string()
    };
    (after("iaaddr"), after("pxe-url"))
}

fn curl(ns: &str, url: &str, out: Option<&Path>) -> String {
    let mut c = Command::new("ip");
    c.args([
        "netns",
        "exec",
        ns,
        "curl",
        "-g",
        "-s",
        "-f",
        "--max-time",
        "20",
    ]);
    if let Some(o) = out {
        c.arg("-o").arg(o);
    }
    let o = c.arg(url).output().expect("curl");
    assert!(o.status.success(), "curl {url}: {o:?}");
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// `chainboot leases list` run in `ns` against the API at `api`: its table.
fn leases_list(ns: &str, config: &Path, api: &str) -> String {
    let out = Command::new("ip")
        .args(["netns", "exec", ns])
        .arg(chainboot_bin())
        .args(["leases", "-c"])
        .arg(config)
        .args(["--server", &format!("http://{api}"), "list"])
        .output()
        .expect("chainboot leases list");
    assert!(out.status.success(), "{out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The hardware address of `cli0` in `ns` (what dhclient's DUID-LL is made of).
fn cli0_mac(ns: &str) -> String {
    let out = sh(&format!("ip -n {ns} link show cli0"));
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .skip_while(|w| *w != "link/ether")
        .nth(1)
        .unwrap_or_else(|| panic!("no link/ether address on cli0 in {ns}"))
        .to_string()
}

/// What firmware does with its DHCPv6 lease: the address on its interface (a /128), and the
/// prefix on-link (a router advertisement says so; off in these tests).
fn use_lease6(ns: &str, addr: &str, prefix: &str) {
    sh(&format!(
        "ip -n {ns} -6 addr add {addr}/128 dev cli0 nodad && ip -n {ns} -6 route add {prefix} dev cli0"
    ));
}

#[test]
fn ipv6_only_pxe_then_ipxe_get_bracketed_urls_that_work_over_tftp_and_http() {
    require_root_and(&["ip", "dhclient", "curl"]);
    let net = NetPair::new("v6b", 25);
    sh(&format!(
        "ip -n {} addr add {SERVER6}/64 dev srv0 nodad",
        net.server
    ));
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("chainboot.toml");
    std::fs::write(&path, config(dir.path())).unwrap();
    let mut server = Server::start_in(Some(&net.server), &path, dir.path().join("log"));
    let api = server.listening("API");
    server.wait_for_log("DHCPv6 ready", Duration::from_secs(20));
    server.wait_for_log("ready: SIGHUP", Duration::from_secs(20));

    // Firmware: an address and the first stage as a tftp:// URL, fetched over TFTP on IPv6.
    let (addr, url) = dhcpv6(&net.client, dir.path(), "pxe", false);
    assert_eq!(url, format!("tftp://[{SERVER6}]/snponly.efi"));
    use_lease6(&net.client, &addr, "2001:db8:25::/64");
    let first_stage = dir.path().join("snponly.efi");
    curl(&net.client, &url, Some(&first_stage));
    let size = std::fs::metadata(&first_stage).unwrap().len();
    assert!(size > 100_000, "snponly.efi over TFTP/IPv6: {size} bytes");

    // iPXE: its own address and the script URL, never the first stage again.
    let (addr, url) = dhcpv6(&net.client, dir.path(), "ipxe", true);
    assert_eq!(url, format!("http://[{SERVER6}]/boot.ipxe"));
    // iPXE's own lease replaces the firmware's address.
    sh(&format!(
        "ip -n {c} -6 addr flush dev cli0 scope global && ip -n {c} -6 addr add {addr}/128 dev cli0 nodad && ip -n {c} -6 route replace 2001:db8:25::/64 dev cli0",
        c = net.client
    ));
    let stub = curl(&net.client, &url, None);
    let chain = format!("http://[{SERVER6}]/ipxe?mac=");
    assert!(stub.contains(&chain), "{stub}");
    // The chained request from the leased address: proven by the DHCPv6 lease (the MAC came
    // from dhclient's DUID-LL), so the machine's own script, not a refusal.
    let mac = cli0_mac(&net.client).replace(':', "-");
    let script = curl(
        &net.client,
        &format!("{chain}{mac}&buildarch=x86_64&platform=efi"),
        None,
    );
    assert!(script.starts_with("#!ipxe"), "{script}");
    assert!(
        script.contains("menu chainboot"),
        "the machine's menu, not a refusal: {script}"
    );

    // One machine in the event log: its DHCPv6 exchanges as firmware and as iPXE, and the
    // first stage it fetched over TFTP/IPv6, all under the MAC behind its DUID.
    let mac = mac.replace('-', ":");
    let events = curl(
        &net.server,
        &format!("http://{api}/api/v1/events?mac={mac}"),
        None,
    );
    let events: serde_json::Value = serde_json::from_str(&events).expect("events JSON");
    let events = events.as_array().cloned().unwrap_or_default();
    let has = |kind: &str, key: &str, value: &str| {
        events
            .iter()
            .any(|e| e["kind"] == kind && e["detail"][key] == value && e["mac"] == mac.as_str())
    };
    assert!(has("dhcp", "family", "ipv6"), "{events:#?}");
    assert!(has("dhcp", "client", "pxe"), "{events:#?}");
    assert!(has("dhcp", "client", "ipxe"), "{events:#?}");
    assert!(has("tftp", "path", "snponly.efi"), "{events:#?}");
}

#[test]
fn pxev6_firmware_whose_group_starts_grub_gets_shim_in_option_59_and_fetches_it() {
    require_root_and(&["ip", "dhclient", "curl"]);
    let shim = "/usr/lib/shim/shimx64.efi.signed";
    assert!(
        Path::new(shim).exists(),
        "{shim} missing (package shim-signed; bash .ci/install-deps)"
    );
    let net = NetPair::new("v6s", 27);
    let server6 = "2001:db8:27::1";
    sh(&format!(
        "ip -n {} addr add {server6}/64 dev srv0 nodad",
        net.server
    ));
    let mac = cli0_mac(&net.client);
    let dir = tempfile::tempdir().unwrap();
    let www = dir.path().join("www");
    std::fs::create_dir_all(&www).unwrap();
    std::fs::write(www.join("vmlinuz"), b"kernel").unwrap();
    let cfg = config(dir.path())
        .replace("2001:db8:25:", "2001:db8:27:")
        .replace(
            "[http]\nlisten = \"[::]:80\"\n",
            &format!(
                "[http]\nlisten = \"[::]:80\"\nroot = \"{}\"\n",
                www.display()
            ),
        )
        + &format!(
            "[[profile]]\nname = \"linux\"\nkernel = \"vmlinuz\"\n\
             [[group]]\nname = \"sb\"\nprofile = \"linux\"\nloader = \"grub\"\n\
             match = {{ mac = [\"{mac}\"] }}\n"
        );
    let path = dir.path().join("chainboot.toml");
    std::fs::write(&path, cfg).unwrap();
    let mut server = Server::start_in(Some(&net.server), &path, dir.path().join("log"));
    server.wait_for_log("DHCPv6 ready", Duration::from_secs(20));
    server.wait_for_log("ready: SIGHUP", Duration::from_secs(20));

    let (addr, url) = dhcpv6(&net.client, dir.path(), "pxe", false);
    assert_eq!(url, format!("tftp://[{server6}]/secureboot/shimx64.efi"));
    use_lease6(&net.client, &addr, "2001:db8:27::/64");
    let got = dir.path().join("shim.efi");
    curl(&net.client, &url, Some(&got));
    assert!(
        std::fs::read(&got).unwrap() == std::fs::read(shim).unwrap(),
        "option 59's file is not Debian's signed shim byte for byte"
    );
}

#[test]
fn the_api_and_the_cli_list_dhcpv6_leases_with_duid_iaid_and_mac_beside_the_dhcpv4_ones() {
    require_root_and(&["ip", "dhclient", "busybox", "curl"]);
    let net = NetPair::new("v6l", 41);
    let server6 = "2001:db8:41::1";
    sh(&format!(
        "ip -n {} addr add {server6}/64 dev srv0 nodad",
        net.server
    ));
    let dir = tempfile::tempdir().unwrap();
    // Both families served on the one link: DHCPv4 addresses from 198.18.41.0/24 as well.
    let cfg = config(dir.path())
        .replace("2001:db8:25:", "2001:db8:41:")
        .replace(
            "[dhcp6]\nmode = \"server\"\n",
            "[dhcp6]\nmode = \"server\"\nvalid_lifetime = \"1h\"\n",
        )
        .replace(
            "[dhcp]\nmode = \"off\"\n",
            "[dhcp]\nmode = \"server\"\n[[dhcp.subnet]]\ncidr = \"198.18.41.0/24\"\n\
             pools = [[\"198.18.41.100\", \"198.18.41.110\"]]\n",
        )
        + "[store]\nserver_name = \"pxe-41\"\n";
    let path = dir.path().join("chainboot.toml");
    std::fs::write(&path, cfg).unwrap();
    let mut server = Server::start_in(Some(&net.server), &path, dir.path().join("log"));
    let api = server.listening("API");
    server.wait_for_log("DHCPv6 ready", Duration::from_secs(20));
    server.wait_for_log("ready: SIGHUP", Duration::from_secs(20));

    let v4 = udhcpc_lease(&net.client, dir.path(), "");
    let (v6, _) = dhcpv6(&net.client, dir.path(), "pxe", false);
    let mac = cli0_mac(&net.client);

    let text = curl(&net.server, &format!("http://{api}/api/v1/leases"), None);
    let leases: serde_json::Value = serde_json::from_str(&text).expect("leases JSON");
    let leases = leases.as_array().cloned().unwrap_or_default();
    let find = |ip: &str| {
        leases
            .iter()
            .find(|l| l["ip"] == ip)
            .unwrap_or_else(|| panic!("no lease of {ip} in {leases:#?}"))
            .clone()
    };
    let l4 = find(&v4);
    assert_eq!(l4["family"], "ipv4", "{l4:#}");
    assert_eq!(l4["mac"], mac.as_str(), "{l4:#}");
    assert_eq!(l4["state"], "bound", "{l4:#}");
    let l6 = find(&v6);
    assert_eq!(l6["family"], "ipv6", "{l6:#}");
    assert_eq!(l6["state"], "bound", "{l6:#}");
    // dhclient -D LL: a DUID-LL (type 3, Ethernet) of cli0's address; the MAC learned from it.
    assert_eq!(l6["duid"], format!("00:03:00:01:{mac}").as_str(), "{l6:#}");
    assert_eq!(l6["mac"], mac.as_str(), "{l6:#}");
    assert!(l6["iaid"].is_u64(), "{l6:#}");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let expires = l6["expires"].as_i64().unwrap_or_default();
    assert!(
        (now + 3600 - 120..=now + 3600 + 5).contains(&expires),
        "the valid lifetime (1h) from the exchange: {l6:#}"
    );
    assert_eq!(l6["server"], "pxe-41", "this server's name: {l6:#}");
    assert_eq!(leases.len(), 2, "one lease per family: {leases:#?}");

    // The CLI's table: both, the DHCPv6 one with its DUID and IAID.
    let table = leases_list(&net.server, &path, &api);
    let row = |ip: &str| {
        table
            .lines()
            .find(|l| l.starts_with(&format!("{ip} ")))
            .unwrap_or_else(|| panic!("no row for {ip}:\n{table}"))
            .to_string()
    };
    assert!(row(&v4).contains(&mac), "{table}");
    let r6 = row(&v6);
    assert!(
        r6.contains(&mac)
            && r6.contains(&format!("00:03:00:01:{mac} iaid "))
            && r6.contains("bound"),
        "{table}"
    );
}

/// A pool bigger than a page of the leases list: 1200 DHCPv4 leases (from 198.18.44.0) and
/// `v6` DHCPv6 ones, bound for an hour.
fn big_pool(
    v6: u32,
) -> (
    Vec<chainboot_store::leases::LeaseRecord>,
    Vec<chainboot_store::leases6::Lease6Record>,
) {
    use chainboot_store::leases::{LeaseRecord, LeaseState};
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let v4 = (0..1200u32)
        .map(|i| LeaseRecord {
            ip: std::net::Ipv4Addr::from(u32::from(std::net::Ipv4Addr::new(198, 18, 44, 0)) + i),
            mac: format!("52:54:00:44:{:02x}:{:02x}", i >> 8, i & 0xff),
            client_id: None,
            hostname: Some(format!("node{i}")),
            state: LeaseState::Bound,
            expires: now + 3600,
            updated: now,
        })
        .collect();
    let v6 = (0..v6)
        .map(|i| chainboot_store::leases6::Lease6Record {
            ip: format!("2001:db8:43::{:x}", 0x1000 + i).parse().unwrap(),
            duid: vec![0, 3, 0, 1, 0x52, 0x54, 0, 0x46, (i >> 8) as u8, i as u8],
            iaid: i,
            mac: None,
            state: LeaseState::Bound,
            expires: now + 3600,
            updated: now,
            server: None,
        })
        .collect();
    (v4, v6)
}

/// Starts the server of config `path` in `ns` (its log in `dir`) over a store holding `v4` and
/// `v6`, and walks its leases list ([`walk_lease_pages`]): the IPv4 leases in address order,
/// then the IPv6 ones in the order of their address text. Returns the server and its API.
fn serve_and_walk_lease_pages(
    ns: &str,
    path: &Path,
    dir: &Path,
    v4: &[chainboot_store::leases::LeaseRecord],
    v6: &[chainboot_store::leases6::Lease6Record],
) -> (Server, String) {
    let mut server = Server::start_in(Some(ns), path, dir.join("log"));
    let api = server.listening("API");
    server.wait_for_log("ready: SIGHUP", Duration::from_secs(20));
    let mut v6_text: Vec<String> = v6.iter().map(|l| l.ip.to_string()).collect();
    v6_text.sort();
    let expected: Vec<String> = v4.iter().map(|l| l.ip.to_string()).chain(v6_text).collect();
    walk_lease_pages(ns, path, &api, &expected);
    (server, api)
}

/// The API of the server in `ns` at `api` (config `path`) pages through exactly `expected`
/// (addresses, in order; the first 1000 IPv4), and so does the CLI.
fn walk_lease_pages(ns: &str, path: &Path, api: &str, expected: &[String]) {
    let get = |query: &str| -> Vec<serde_json::Value> {
        let text = curl(ns, &format!("http://{api}/api/v1/leases{query}"), None);
        serde_json::from_str(&text).expect("leases JSON")
    };
    // Without a limit, one page is 1000: the first 1000 IPv4 leases in address order.
    let first = get("");
    assert_eq!(first.len(), 1000);
    assert!(first.iter().all(|l| l["family"] == "ipv4"));
    assert_eq!(first[0]["ip"], expected[0].as_str());
    assert_eq!(first[999]["ip"], expected[999].as_str());

    // Pages of 500 from the last address of each (the third crosses into IPv6, if any).
    let mut all: Vec<serde_json::Value> = Vec::new();
    let mut sizes = Vec::new();
    let mut after = String::new();
    loop {
        let q = if after.is_empty() {
            "?limit=500".to_string()
        } else {
            format!("?limit=500&after={after}")
        };
        let page = get(&q);
        sizes.push(page.len());
        let Some(last) = page.last() else { break };
        after = last["ip"].as_str().unwrap().to_string();
        all.extend(page);
        assert!(sizes.len() < 10, "the cursor does not advance: {sizes:?}");
    }
    let mut want: Vec<usize> = expected.chunks(500).map(<[String]>::len).collect();
    want.push(0);
    assert_eq!(sizes, want);
    let ips: Vec<&str> = all.iter().map(|l| l["ip"].as_str().unwrap()).collect();
    assert_eq!(ips, expected, "each lease once, IPv4 by address then IPv6");

    // A limit over the cap is the cap; what does not parse is refused, naming the parameter.
    assert_eq!(get("?limit=5000").len(), 1000);
    for (query, word) in [("limit=-1", "limit"), ("after=node7", "after")] {
        let out = sh(&format!(
            "ip netns exec {ns} curl -s -w ' %{{http_code}}' 'http://{api}/api/v1/leases?{query}'"
        ));
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            text.ends_with(" 400") && text.contains(&format!("{{\"error\":\"{word}: ")),
            "{query}: {text}"
        );
    }

    // The CLI follows the pages: every lease is a row.
    let table = leases_list(ns, path, api);
    assert_eq!(
        table.lines().count(),
        1 + expected.len(),
        "a header and a row each"
    );
    assert!(table.contains("node1199"), "{table}");
}

/// The DHCPv4 server part of the paging tests' config.
const DHCP4_43: &str = "[dhcp]\nmode = \"server\"\n[[dhcp.subnet]]\ncidr = \"198.18.43.0/24\"\n\
                        pools = [[\"198.18.43.100\", \"198.18.43.110\"]]\n";

#[test]
fn the_leases_list_pages_through_more_leases_than_one_page_across_both_families() {
    require_root_and(&["ip", "curl"]);
    let net = NetPair::new("v6p", 43);
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path())
        .replace("2001:db8:25:", "2001:db8:43:")
        .replace("[dhcp]\nmode = \"off\"\n", DHCP4_43);
    let path = dir.path().join("chainboot.toml");
    std::fs::write(&path, cfg).unwrap();
    // A pool bigger than a page, in the store before the server starts (it loads the DHCPv4
    // leases into its engine, and lists the DHCPv6 ones from the store): 1200 + 300.
    let (v4, v6) = big_pool(300);
    {
        let store = chainboot_store::Store::open(&dir.path().join("state")).unwrap();
        chainboot_store::leases::save_batch(&store, &v4).unwrap();
        chainboot_store::leases6::save_batch(&store, &v6).unwrap();
    }
    let (_server, api) = serve_and_walk_lease_pages(&net.server, &path, dir.path(), &v4, &v6);
    let leases = leases_list(&net.server, &path, &api);
    assert!(leases.contains("2001:db8:43::112b "), "{leases}");
}

#[test]
fn on_postgresql_the_leases_list_pages_through_more_leases_than_one_page_across_both_families() {
    require_root_and(&["ip", "curl"]);
    let pg = chainboot_testnet::postgres::PgCluster::start();
    let url = pg.fresh_database();
    let db = url.rsplit('/').next().unwrap().to_string();
    let net = NetPair::new("v4pg", 44);
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path())
        .replace("2001:db8:25:", "2001:db8:44:")
        .replace("[dhcp]\nmode = \"off\"\n", DHCP4_43)
        + &format!(
            "[store]\nbackend = \"postgres\"\nurl = \"{}\"\npassword_file = \"{}\"\n\
             server_name = \"pxe-44\"\n",
            pg.socket_url(&db),
            pg.password_file().display()
        );
    let path = dir.path().join("chainboot.toml");
    std::fs::write(&path, cfg).unwrap();
    let (v4, v6) = big_pool(300);
    {
        let store = chainboot_store::Store::from_config(
            &chainboot_store::StoreConfig {
                backend: chainboot_store::StoreBackend::Postgres,
                url: Some(url),
                password_file: Some(pg.password_file()),
                server_name: Some("pxe-44".into()),
                ..Default::default()
            },
            &dir.path().join("state"),
        )
        .unwrap();
        assert!(chainboot_store::leases::save_batch(&store, &v4)
            .unwrap()
            .is_empty());
        assert!(chainboot_store::leases6::save_batch(&store, &v6)
            .unwrap()
            .is_empty());
    }
    // The DHCPv6 leases in the order of their address text, byte by byte, as on SQLite.
    serve_and_walk_lease_pages(&net.server, &path, dir.path(), &v4, &v6);
}
