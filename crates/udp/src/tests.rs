//! Real sockets on loopback, IPv4 and IPv6.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::time::Duration;

use super::*;

fn loopback_ifindex() -> u32 {
    std::fs::read_to_string("/sys/class/net/lo/ifindex")
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

/// A socket on the wildcard address of `ip`'s family with pktinfo on, and the loopback
/// address to reach it.
fn listener(v6: bool) -> (UdpSocket, SocketAddr) {
    let (any, lo): (IpAddr, IpAddr) = if v6 {
        (Ipv6Addr::UNSPECIFIED.into(), Ipv6Addr::LOCALHOST.into())
    } else {
        (Ipv4Addr::UNSPECIFIED.into(), Ipv4Addr::LOCALHOST.into())
    };
    let s = UdpSocket::bind(SocketAddr::new(any, 0)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    enable_pktinfo(&s, v6).unwrap();
    let port = s.local_addr().unwrap().port();
    (s, SocketAddr::new(lo, port))
}

#[test]
fn ipv4_datagrams_report_their_destination_and_interface() {
    let (rx, to) = listener(false);
    let tx = UdpSocket::bind("127.0.0.1:0").unwrap();
    tx.send_to(b"hello", to).unwrap();
    // 127.0.0.0/8 is all local: a second destination address on the same socket.
    tx.send_to(
        b"again",
        SocketAddr::new("127.0.0.2".parse().unwrap(), to.port()),
    )
    .unwrap();
    let mut batch = RecvBatch::new(8, 64);
    let mut got = Vec::new();
    while got.len() < 2 {
        batch.recv(&rx).unwrap();
        got.extend(batch.iter().map(|(b, m)| (b.to_vec(), *m)));
    }
    let lo = loopback_ifindex();
    let (bytes, meta) = &got[0];
    assert_eq!(bytes, b"hello");
    assert_eq!(meta.source, tx.local_addr().unwrap());
    assert_eq!(meta.destination, Some("127.0.0.1".parse().unwrap()));
    assert_eq!(meta.local, Some("127.0.0.1".parse().unwrap()));
    assert_eq!(meta.ifindex, Some(lo));
    assert!(!meta.truncated);
    assert_eq!(got[1].0, b"again");
    assert_eq!(got[1].1.destination, Some("127.0.0.2".parse().unwrap()));
}

#[test]
fn ipv6_datagrams_report_their_destination_and_interface() {
    let (rx, to) = listener(true);
    let tx = UdpSocket::bind("[::1]:0").unwrap();
    tx.send_to(b"hello6", to).unwrap();
    let mut buf = [0u8; 64];
    let meta = recv(&rx, &mut buf).unwrap();
    assert_eq!(&buf[..meta.len], b"hello6");
    assert_eq!(meta.source, tx.local_addr().unwrap());
    assert_eq!(meta.destination, Some(Ipv6Addr::LOCALHOST.into()));
    assert_eq!(meta.local, meta.destination);
    assert_eq!(meta.ifindex, Some(loopback_ifindex()));
}

#[test]
fn ipv4_clients_of_a_dual_stack_socket_report_their_destination() {
    let (rx, to) = listener(true);
    let tx = UdpSocket::bind("127.0.0.1:0").unwrap();
    tx.send_to(
        b"v4",
        SocketAddr::new(Ipv4Addr::LOCALHOST.into(), to.port()),
    )
    .unwrap();
    let mut buf = [0u8; 64];
    let meta = recv(&rx, &mut buf).unwrap();
    assert_eq!(
        meta.source.ip().to_canonical(),
        IpAddr::from(Ipv4Addr::LOCALHOST)
    );
    assert_eq!(
        meta.destination.map(|d| d.to_canonical()),
        Some(Ipv4Addr::LOCALHOST.into())
    );
    assert_eq!(meta.ifindex, Some(loopback_ifindex()));
}

#[test]
fn a_batch_sends_each_datagram_from_its_own_source_address_ipv4() {
    let (rx, to) = listener(false);
    let tx = UdpSocket::bind("0.0.0.0:0").unwrap();
    let lo = loopback_ifindex();
    let sources = ["127.0.0.2", "127.0.0.3", "127.0.0.4"];
    let contents = [&b"one"[..], b"two", b"three"];
    let transmits: Vec<Transmit> = sources
        .iter()
        .zip(contents)
        .enumerate()
        .map(|(i, (s, c))| Transmit {
            destination: to,
            source: Some(s.parse().unwrap()),
            // One leaves by a named interface, the others as routed.
            ifindex: if i == 1 { lo } else { 0 },
            contents: c,
        })
        .collect();
    assert_eq!(send(&tx, &transmits).unwrap(), 3);
    let mut batch = RecvBatch::new(8, 64);
    let mut got = Vec::new();
    while got.len() < 3 {
        batch.recv(&rx).unwrap();
        got.extend(batch.iter().map(|(b, m)| (b.to_vec(), m.source)));
    }
    let port = tx.local_addr().unwrap().port();
    for ((bytes, from), (s, c)) in got.iter().zip(sources.iter().zip(contents)) {
        assert_eq!(bytes, c);
        assert_eq!(*from, SocketAddr::new(s.parse().unwrap(), port));
    }
}

#[test]
fn a_batch_sends_with_source_address_and_interface_ipv6() {
    let (rx, to) = listener(true);
    let tx = UdpSocket::bind("[::]:0").unwrap();
    let t = Transmit {
        destination: to,
        source: Some(Ipv6Addr::LOCALHOST.into()),
        ifindex: loopback_ifindex(),
        contents: b"six",
    };
    let plain = Transmit {
        source: None,
        ifindex: 0,
        contents: b"routed",
        ..t
    };
    assert_eq!(send(&tx, &[t, plain]).unwrap(), 2);
    let mut batch = RecvBatch::new(4, 64);
    let mut got = Vec::new();
    while got.len() < 2 {
        batch.recv(&rx).unwrap();
        got.extend(batch.iter().map(|(b, m)| (b.to_vec(), *m)));
    }
    let from = SocketAddr::new(Ipv6Addr::LOCALHOST.into(), tx.local_addr().unwrap().port());
    assert_eq!((got[0].0.as_slice(), got[0].1.source), (&b"six"[..], from));
    assert_eq!(got[1].0, b"routed");
}

#[test]
fn a_send_to_a_foreign_source_address_fails_for_that_datagram() {
    let (_rx, to) = listener(false);
    let tx = UdpSocket::bind("0.0.0.0:0").unwrap();
    let bad = Transmit {
        destination: to,
        // Not an address of this host (test namespaces use the bottom of 198.18.0.0/15):
        // the kernel refuses to send from it, and nothing leaves.
        source: Some("198.19.255.254".parse().unwrap()),
        ifindex: 0,
        contents: b"x",
    };
    let good = Transmit {
        source: None,
        ..bad
    };
    assert!(send(&tx, &[bad, good]).is_err());
    assert_eq!(send(&tx, &[good, bad]).unwrap(), 1);
    assert_eq!(send(&tx, &[]).unwrap(), 0);
}

#[test]
fn a_datagram_longer_than_its_buffer_is_marked_truncated() {
    let (rx, to) = listener(false);
    let tx = UdpSocket::bind("127.0.0.1:0").unwrap();
    tx.send_to(&[7u8; 100], to).unwrap();
    let mut buf = [0u8; 10];
    let meta = recv(&rx, &mut buf).unwrap();
    assert!(meta.truncated);
    assert_eq!(meta.len, 10);
}

#[test]
fn a_non_blocking_receive_finds_what_is_queued_and_nothing_else() {
    let rx = UdpSocket::bind("127.0.0.1:0").unwrap();
    let tx = UdpSocket::bind("127.0.0.1:0").unwrap();
    let mut buf = [0u8; 16];
    let e = try_recv_from(&rx, &mut buf).unwrap_err();
    assert_eq!(e.kind(), io::ErrorKind::WouldBlock);
    tx.send_to(b"ack", rx.local_addr().unwrap()).unwrap();
    let (n, from) = try_recv_from(&rx, &mut buf).unwrap();
    assert_eq!((&buf[..n], from), (&b"ack"[..], tx.local_addr().unwrap()));
}

#[test]
fn the_receive_buffer_can_exceed_the_unprivileged_cap() {
    let rmem_max: usize = std::fs::read_to_string("/proc/sys/net/core/rmem_max")
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    let want = rmem_max * 4;
    set_receive_buffer(&s, want).unwrap();
    let got = socket2::SockRef::from(&s).recv_buffer_size().unwrap();
    // With CAP_NET_ADMIN (the tests run as root) SO_RCVBUFFORCE passes rmem_max; the kernel
    // reports twice what was asked (its bookkeeping overhead).
    assert!(got >= want, "asked {want}, got {got} (rmem_max {rmem_max})");
}
