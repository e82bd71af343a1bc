//! SIGHUP reloads `[dhcp]` live: `chainboot serve` in a server namespace, busybox udhcpc in a
//! client namespace (veth, 198.18.23.0/24). A lease from the first pool; the file gets another
//! pool; after SIGHUP the same client (whose old address is now outside the pool) gets one from
//! the new pool, with no restart. A change of mode still asks for a restart.

mod common;

use std::path::Path;
use std::time::Duration;

use common::*;

fn config(dir: &Path, pool: (&str, &str), mode: &str) -> String {
    format!(
        "[server]\ninterfaces = [\"srv0\"]\nstate_dir = \"{}\"\n\
         [ipv6]\nrouter_advertisements = \"off\"\n\
         [tftp]\nlisten = \"198.18.23.1:0\"\n\
         [http]\nlisten = \"198.18.23.1:0\"\n\
         [dhcp]\nmode = \"{mode}\"\n\
         [[dhcp.subnet]]\ncidr = \"198.18.23.0/24\"\npools = [[\"{}\", \"{}\"]]\n",
        dir.join("state").display(),
        pool.0,
        pool.1
    )
}

#[test]
fn sighup_applies_a_new_dhcp_pool_without_a_restart() {
    require_root_and(&["ip", "busybox"]);
    let net = NetPair::new("dr", 23);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("chainboot.toml");
    std::fs::write(
        &path,
        config(dir.path(), ("198.18.23.100", "198.18.23.110"), "server"),
    )
    .unwrap();
    let mut server = Server::start_in(Some(&net.server), &path, dir.path().join("log"));
    server.wait_for_log("DHCP ready", Duration::from_secs(20));
    let first = udhcpc_lease(&net.client, dir.path(), "");
    assert_eq!(first, "198.18.23.100");

    std::fs::write(
        &path,
        config(dir.path(), ("198.18.23.200", "198.18.23.210"), "server"),
    )
    .unwrap();
    server.signal("HUP");
    server.wait_for_log("changed and are live", Duration::from_secs(10));
    let log = server.log_text();
    assert!(log.contains("dhcp"), "{log}");
    assert!(!log.contains("only after a restart"), "{log}");
    let second = udhcpc_lease(&net.client, dir.path(), "");
    assert_eq!(second, "198.18.23.200");

    // The mode is the sockets': that still takes a restart, and nothing changes meanwhile.
    std::fs::write(
        &path,
        config(dir.path(), ("198.18.23.200", "198.18.23.210"), "proxy"),
    )
    .unwrap();
    server.signal("HUP");
    server.wait_for_log("only after a restart", Duration::from_secs(10));
    assert_eq!(udhcpc_lease(&net.client, dir.path(), ""), "198.18.23.200");
}
