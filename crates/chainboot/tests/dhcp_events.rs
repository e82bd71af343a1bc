//! What a DHCP exchange leaves behind: `chainboot serve` in DHCP server mode in a server
//! namespace, busybox udhcpc in a client namespace (veth, 198.18.24.0/24). An ordinary client
//! (no PXE vendor class) gets its lease and is counted in the metrics, but writes no event: the
//! event log is the boot timelines, and a DHCP server's ordinary clients would otherwise cost a
//! store write per packet. A PXE client's exchange is an event.
#![allow(clippy::unwrap_used)] // a test: a failed step is a failed test

mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;

fn config(dir: &Path) -> String {
    format!(
        "[server]\ninterfaces = [\"srv0\"]\nstate_dir = \"{}\"\n\
         [ipv6]\nrouter_advertisements = \"off\"\n\
         [tftp]\nlisten = \"198.18.24.1:0\"\n\
         [http]\nlisten = \"198.18.24.1:0\"\n\
         [api]\nlisten = \"127.0.0.1:0\"\nread_requires_token = false\n\
         [dhcp]\nmode = \"server\"\n\
         [[dhcp.subnet]]\ncidr = \"198.18.24.0/24\"\npools = [[\"198.18.24.100\", \"198.18.24.110\"]]\n",
        dir.join("state").display(),
    )
}

/// One DORA with busybox udhcpc in `ns` from MAC `mac`, with udhcpc's extra `args`; the
/// address it was given.
fn lease(ns: &str, dir: &Path, mac: &str, args: &str) -> String {
    sh(&format!("ip -n {ns} link set cli0 address {mac}"));
    udhcpc_lease(ns, dir, args)
}

/// GET on the management listener, which listens on the server namespace's loopback.
fn api_get(ns: &str, api: &str, path: &str) -> String {
    let out = Command::new("ip")
        .args(["netns", "exec", ns, "curl", "-s", "--max-time", "10"])
        .arg(format!("http://{api}{path}"))
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn dhcp_events(ns: &str, api: &str) -> Vec<serde_json::Value> {
    let text = api_get(ns, api, "/api/v1/events?kind=dhcp");
    let v: serde_json::Value =
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"));
    v.as_array().cloned().unwrap_or_default()
}

#[test]
fn ordinary_dhcp_clients_are_counted_but_write_no_event_and_pxe_clients_do() {
    require_root_and(&["ip", "busybox", "curl"]);
    let net = NetPair::new("de", 24);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("chainboot.toml");
    std::fs::write(&path, config(dir.path())).unwrap();
    let mut server = Server::start_in(Some(&net.server), &path, dir.path().join("log"));
    let api = server.listening("API");
    server.wait_for_log("DHCP ready", Duration::from_secs(20));

    let ordinary = "02:00:00:00:24:01";
    lease(&net.client, dir.path(), ordinary, "");
    let pxe = "02:00:00:00:24:02";
    lease(
        &net.client,
        dir.path(),
        pxe,
        "-V PXEClient:Arch:00000:UNDI:002001 -x 0x5d:0000",
    );

    // The PXE client's events come after the ordinary client's in the writer's queue: once
    // they are in, the ordinary client's would be too. Its DISCOVER and REQUEST may be
    // written by two batches (the ACK waits for the lease's commit): wait for both.
    let deadline = Instant::now() + Duration::from_secs(10);
    let of =
        |events: &[serde_json::Value], mac: &str| events.iter().filter(|e| e["mac"] == mac).count();
    let events = loop {
        let events = dhcp_events(&net.server, &api);
        if of(&events, pxe) >= 2 || Instant::now() > deadline {
            break events;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let of = |mac: &str| of(&events, mac);
    assert!(
        of(pxe) >= 2,
        "DISCOVER and REQUEST of the PXE client: {events:?}"
    );
    assert_eq!(of(ordinary), 0, "{events:?}");

    // Both are counted.
    let metrics = api_get(&net.server, &api, "/metrics");
    for (client, msg, outcome) in [
        ("other", "discover", "offer"),
        ("other", "request", "ack"),
        ("pxe", "discover", "offer"),
    ] {
        let line = format!(
            "chainboot_dhcp_exchanges_total{{type=\"{msg}\",client=\"{client}\",outcome=\"{outcome}\"}} 1"
        );
        assert!(metrics.contains(&line), "no `{line}` in:\n{metrics}");
    }
}

/// `GET /api/v1/machines`, parsed.
fn machines(ns: &str, api: &str) -> Vec<serde_json::Value> {
    let text = api_get(ns, api, "/api/v1/machines");
    let v: serde_json::Value =
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"));
    v.as_array().cloned().unwrap_or_default()
}

/// Waits until the machine list has `mac` with `stage` (the event writer records in batches).
fn machine_at_stage(ns: &str, api: &str, mac: &str, stage: &str) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let list = machines(ns, api);
        if let Some(m) = list.iter().find(|m| m["mac"] == mac) {
            if m["firmware"]["stage"] == stage {
                return m.clone();
            }
        }
        assert!(
            Instant::now() < deadline,
            "{mac} never listed at stage {stage}: {list:#?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_boot_client_is_listed_from_its_first_dhcp_packet_with_what_it_said_and_how_far_it_got() {
    require_root_and(&["ip", "busybox", "curl", "tftp"]);
    let net = NetPair::new("dm", 26);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("chainboot.toml");
    std::fs::write(&path, config(dir.path()).replace(".24.", ".26.")).unwrap();
    let mut server = Server::start_in(Some(&net.server), &path, dir.path().join("log"));
    let api = server.listening("API");
    let tftp = server.listening("TFTP");
    server.wait_for_log("DHCP ready", Duration::from_secs(20));

    // BIOS PXE firmware with its SMBIOS UUID (option 97: type 0 and 16 bytes).
    let pxe = "02:00:00:00:26:01";
    let uuid = "8d7a0e6c000040008000000000000026";
    let (ip, file) = {
        sh(&format!("ip -n {} link set cli0 address {pxe}", net.client));
        udhcpc_answer(
            &net.client,
            dir.path(),
            "cli0",
            &format!("-V PXEClient:Arch:00000:UNDI:002001 -x 0x5d:0000 -x 0x61:00{uuid}"),
        )
    };
    assert_eq!(file, "undionly.kpxe");
    let m = machine_at_stage(&net.server, &api, pxe, "firmware-dhcp");
    assert_eq!(m["firmware"]["arch"], "bios", "{m:#}");
    assert_eq!(
        m["firmware"]["vendor_class"], "PXEClient:Arch:00000:UNDI:002001",
        "{m:#}"
    );
    assert_eq!(
        m["firmware"]["uuid"], "8d7a0e6c-0000-4000-8000-000000000026",
        "{m:#}"
    );
    // What DHCP said is shown, not taken as the machine's facts (anyone can send it).
    assert!(m["facts"]["uuid"].is_null(), "{m:#}");

    // The first stage over TFTP, from the address it was given: it got that far, and no
    // further (it never asked for its script).
    sh(&format!(
        "ip -n {c} addr flush dev cli0 && ip -n {c} addr add {ip}/24 dev cli0",
        c = net.client
    ));
    assert!(tftp_get_in(&net.client, &tftp, "undionly.kpxe"));
    machine_at_stage(&net.server, &api, pxe, "first-stage");

    // An ordinary DHCP client is not a machine chainboot boots: not listed.
    let ordinary = "02:00:00:00:26:02";
    sh(&format!(
        "ip -n {} link set cli0 address {ordinary}",
        net.client
    ));
    udhcpc_answer(&net.client, dir.path(), "cli0", "");
    // Ordered after the ordinary client's packets in the writer's queue: a second PXE
    // request of the first machine; once it is written, the ordinary one would be too.
    sh(&format!("ip -n {} link set cli0 address {pxe}", net.client));
    udhcpc_answer(
        &net.client,
        dir.path(),
        "cli0",
        "-V PXEClient:Arch:00000:UNDI:002001 -x 0x5d:0000",
    );
    machine_at_stage(&net.server, &api, pxe, "firmware-dhcp");
    let list = machines(&net.server, &api);
    assert!(!list.iter().any(|m| m["mac"] == ordinary), "{list:#?}");
}
