//! The ARP entry calls against a real kernel: an entry written with `set_arp_entry` is read
//! back by `arp_entry` and seen by `ip neigh`; an address without an entry reads as none.
//! Runs in a namespace of its own (198.18.0.0/15 only).

use std::net::{Ipv4Addr, UdpSocket};

use chainboot_testnet::{in_netns, require, run, Topology};

#[test]
fn an_arp_entry_written_is_read_back_and_absent_ones_are_none() {
    require(&["ip"]);
    let topo = Topology::new("arp", None);
    let mac = [0x02, 0x00, 0x5e, 0x10, 0x20, 0x30];
    let (written, absent, wrong_dev) = in_netns(&topo.srv, move || {
        let socket = UdpSocket::bind("198.18.0.1:0").expect("bind in the namespace");
        let target = Ipv4Addr::new(198, 18, 0, 9);
        chainboot_udp::set_arp_entry(&socket, "vs", target, mac).expect("SIOCSARP");
        (
            chainboot_udp::arp_entry(&socket, "vs", target).expect("SIOCGARP"),
            chainboot_udp::arp_entry(&socket, "vs", Ipv4Addr::new(198, 18, 0, 10))
                .expect("SIOCGARP of an address without an entry"),
            chainboot_udp::arp_entry(&socket, "nonexistent0", target),
        )
    });
    assert_eq!(written, Some(mac));
    assert_eq!(absent, None);
    assert!(
        wrong_dev.is_err(),
        "an interface that does not exist is an error, not an empty entry: {wrong_dev:?}"
    );
    let neigh = run(&["ip", "-n", &topo.srv, "neigh", "show", "dev", "vs"]);
    assert!(
        neigh.contains("198.18.0.9 lladdr 02:00:5e:10:20:30"),
        "the kernel holds the entry: {neigh}"
    );
}
