//! Building replies: boot fields, address and subnet options, where a reply goes (RFC 2131
//! §4.1), and the encoded datagram.

use std::net::{Ipv4Addr, SocketAddrV4};

use chainboot_machine::Mac;
use chainboot_store::leases::LeaseRecord;

use super::{Client, Destination, DropReason, Engine, Exchange, Handled, Outcome, Outgoing};
use crate::boot::{BootAnswer, BootDecision};
use crate::wire::{code, MessageType, Reply, Request};

const PXE_DISCOVERY_CONTROL_SKIP: [u8; 4] = [6, 1, 8, 255];
const IPXE_NO_PXEDHCP: [u8; 3] = [176, 1, 1];

/// Encodes `r` (a `t`) for `x`'s client and addresses it: the reply leaves by the interface the
/// request came in on, from the address it was sent to. `lease_writes`: what must be durable
/// before it is sent.
pub(super) fn finish(
    x: &Exchange<'_>,
    r: Reply,
    t: MessageType,
    dest: Destination,
    lease_writes: Vec<LeaseRecord>,
) -> Handled {
    // The address offered or acknowledged, if any (other replies leave yiaddr empty).
    let address = Some(r.msg.yiaddr()).filter(|a| !a.is_unspecified());
    let Some(bytes) = r.encode(x.req.max_reply_len()) else {
        return Handled::new(Outcome::Dropped(DropReason::ReplyTooLarge));
    };
    let mut h = Handled::new(Outcome::Replied(t));
    h.outgoing.push(Outgoing {
        bytes,
        dest,
        ifindex: x.ingress.ifindex,
        source: x.ingress.local_addr,
        msg_type: t,
    });
    h.lease_writes = lease_writes;
    h.address = address;
    h
}

impl Engine {
    /// Boot fields and options for a boot client. `with_address`: the same reply hands out
    /// the address, so iPXE may skip waiting for ProxyDHCP (option 175.176 saves iPXE about
    /// two seconds of waiting).
    pub(super) fn add_boot(
        &self,
        r: &mut Reply,
        x: &Exchange<'_>,
        a: &BootAnswer,
        with_address: bool,
    ) {
        let (req, facts) = (x.req, x.facts);
        // siaddr always: iPXE ignores a ProxyDHCP reply without it.
        if let std::net::IpAddr::V4(next_server) = a.next_server {
            r.msg.set_siaddr(next_server);
        }
        if a.file.len() < 128 {
            r.msg.set_fname_str(&a.file);
        }
        r.push(code::VENDOR_CLASS, a.vendor_class.as_bytes().to_vec());
        if let Some(uuid) = &facts.uuid {
            // Echo 97 when sent; some Intel ROMs never send it (pixiecore#21).
            r.push(code::CLIENT_UUID, uuid.clone());
        }
        if a.vendor_class == "PXEClient" && !facts.is_ipxe {
            // 43: PXE_DISCOVERY_CONTROL = 8, "use the boot file, skip boot server discovery".
            r.push(code::VENDOR_SPECIFIC, PXE_DISCOVERY_CONTROL_SKIP.to_vec());
        }
        if a.file.len() >= 128 || req.requested(code::BOOTFILE) {
            r.push(code::BOOTFILE, a.file.as_bytes().to_vec());
        }
        if facts.is_ipxe && with_address {
            r.push(code::IPXE, IPXE_NO_PXEDHCP.to_vec());
        }
    }

    /// A NAK saying `why` (RFC 2131 §4.3.2).
    pub(super) fn nak(&self, x: &Exchange<'_>, why: &str) -> Handled {
        let req = x.req;
        let mut r = Reply::to(req, MessageType::Nak);
        r.push(code::SERVER_ID, x.ingress.local_addr.octets().to_vec());
        r.push(code::MESSAGE, why.as_bytes().to_vec());
        if let Some(ri) = req.opt(code::RELAY_AGENT) {
            r.push(code::RELAY_AGENT, ri.to_vec());
        }
        if !req.header.giaddr().is_unspecified() {
            // RFC 2131 §4.3.2: a relayed NAK sets the broadcast bit for the relay.
            r.msg.set_flags(r.msg.flags().set_broadcast());
        }
        r.mark_essential();
        let dest = self.server_destination(req, None, true);
        finish(x, r, MessageType::Nak, dest, Vec::new())
    }

    /// Where a server-mode reply goes (RFC 2131 §4.1).
    pub(super) fn server_destination(
        &self,
        req: &Request,
        yiaddr: Option<Ipv4Addr>,
        nak: bool,
    ) -> Destination {
        let h = &req.header;
        let client_port = self.cfg.ports.client;
        if !h.giaddr().is_unspecified() {
            return Destination::Unicast(SocketAddrV4::new(h.giaddr(), self.cfg.ports.server));
        }
        if nak {
            return Destination::Broadcast { port: client_port };
        }
        if !h.ciaddr().is_unspecified() {
            return Destination::Unicast(SocketAddrV4::new(h.ciaddr(), client_port));
        }
        if h.flags().broadcast() {
            return Destination::Broadcast { port: client_port };
        }
        match (yiaddr, h.hlen() == 6, Mac::from_slice(h.chaddr())) {
            (Some(ip), true, Some(mac)) => Destination::UnicastNoArp {
                addr: SocketAddrV4::new(ip, client_port),
                mac,
            },
            _ => Destination::Broadcast { port: client_port },
        }
    }

    /// The subnet's configuration options (after the essential ones: they are the first to
    /// go when the reply would not fit).
    pub(super) fn add_subnet_options(&self, r: &mut Reply, sub: usize, mac: Mac) {
        let s = &self.cfg.subnet[self.subnets[sub].index];
        let net = self.subnets[sub].net;
        r.push(code::SUBNET_MASK, net.netmask().octets().to_vec());
        if let Some(router) = s.router {
            r.push(code::ROUTER, router.octets().to_vec());
        }
        let ips = |v: &[Ipv4Addr]| v.iter().flat_map(|i| i.octets()).collect::<Vec<u8>>();
        if !s.dns.is_empty() {
            r.push(code::DNS, ips(&s.dns));
        }
        if let Some(&hi) = self.hosts.get(&mac) {
            if let Some(name) = &self.cfg.host[hi].hostname {
                r.push(code::HOSTNAME, name.as_bytes().to_vec());
            }
        }
        if let Some(d) = &s.domain {
            r.push(code::DOMAIN, d.as_bytes().to_vec());
        }
        if let Some(mtu) = s.mtu {
            r.push(code::MTU, mtu.to_be_bytes().to_vec());
        }
        r.push(
            code::BROADCAST,
            s.broadcast.unwrap_or(net.broadcast()).octets().to_vec(),
        );
        if !s.ntp.is_empty() {
            r.push(code::NTP, ips(&s.ntp));
        }
        if let Some(t) = &s.tftp_server {
            r.push(code::TFTP_SERVER, t.as_bytes().to_vec());
        }
        if let Some(f) = &s.boot_file {
            r.push(code::BOOTFILE, f.as_bytes().to_vec());
        }
        // Global options first, so that a subnet's own option with the same code replaces it.
        for o in self.cfg.options.iter().chain(&s.options) {
            if let Ok(v) = o.value() {
                r.push(o.code, v);
            }
        }
    }

    /// An OFFER or ACK (`t`) of `ip` to client `c`, carrying `writes` (durable first).
    pub(super) fn address_reply(
        &self,
        x: &Exchange<'_>,
        c: &Client,
        t: MessageType,
        ip: Ipv4Addr,
        writes: Vec<LeaseRecord>,
    ) -> Handled {
        let (req, ingress, sub) = (x.req, x.ingress, c.sub);
        // The offer or lease for `ip` was just recorded, with whether its client is proven.
        let proven = self.leases.get(ip).is_some_and(|l| l.proven);
        let secs = self
            .cfg
            .lease_time_for(&self.cfg.subnet[self.subnets[sub].index], proven)
            .as_secs();
        let lease = u32::try_from(secs).unwrap_or(u32::MAX);
        let mut r = Reply::to(req, t);
        r.msg.set_yiaddr(ip);
        r.msg.set_siaddr(ingress.local_addr);
        r.push(code::SERVER_ID, ingress.local_addr.octets().to_vec());
        r.push(code::LEASE_TIME, lease.to_be_bytes().to_vec());
        r.push(code::RENEWAL_T1, (lease / 2).to_be_bytes().to_vec());
        r.push(code::REBINDING_T2, (lease / 8 * 7).to_be_bytes().to_vec());
        if let Some(ri) = req.opt(code::RELAY_AGENT) {
            // RFC 3046 §2.2: echo option 82 to the relay.
            r.push(code::RELAY_AGENT, ri.to_vec());
        }
        let mac = x.facts.mac.unwrap_or(Mac([0; 6]));
        r.push(
            code::SUBNET_MASK,
            self.subnets[sub].net.netmask().octets().to_vec(),
        );
        if let Some(router) = self.cfg.subnet[self.subnets[sub].index].router {
            r.push(code::ROUTER, router.octets().to_vec());
        }
        if let BootDecision::Boot(a) = x.decision {
            self.add_boot(&mut r, x, a, true);
        }
        r.mark_essential();
        self.add_subnet_options(&mut r, sub, mac);
        let dest = self.server_destination(req, Some(ip), false);
        finish(x, r, t, dest, writes)
    }
}
