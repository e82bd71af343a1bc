//! One function per message type and mode: proxyDHCP, the PXE boot server port, and the
//! authoritative server's DISCOVER, REQUEST, DECLINE, RELEASE and INFORM.

use std::net::{Ipv4Addr, SocketAddrV4};

use chainboot_machine::Mac;

use super::counters::bump;
use super::leases::{ClientKey, Lease, LeaseStatus};
use super::reply::finish;
use super::{Client, Destination, Engine, Exchange, Handled, Ignored, Outcome};
use crate::boot::{BootAnswer, BootDecision, NoBoot};
use crate::config::usable;
use crate::wire::{code, MessageType, Reply};

/// Why a REQUEST gets no lease.
enum Refused {
    Ignored(Ignored),
    /// A NAK with this message.
    Nak(&'static str),
}

impl Engine {
    /// The boot answer, or why the client gets none (an unknown architecture is logged).
    fn boot_answer<'a>(&mut self, x: &Exchange<'a>) -> Result<&'a BootAnswer, Ignored> {
        match x.decision {
            BootDecision::Boot(a) => Ok(a),
            BootDecision::NoBoot(NoBoot::UnknownArch { value }) => {
                self.note_unknown_arch(x.facts, *value);
                Err(Ignored::UnknownArch)
            }
            BootDecision::NoBoot(NoBoot::NotBootClient) => Err(Ignored::NotBootClient),
        }
    }

    /// Proxy mode on the DHCP port: boot information only, never an address.
    pub(super) fn proxy(&mut self, x: &Exchange<'_>) -> Handled {
        let answer = match self.boot_answer(x) {
            Ok(a) => a,
            Err(why) => return Handled::new(Outcome::Ignored(why)),
        };
        let (req, ingress) = (x.req, x.ingress);
        let reply_type = match req.msg_type {
            MessageType::Discover => MessageType::Offer,
            // A REQUEST addressed to us on port 67 (some ROMs do not use 4011).
            MessageType::Request if req.opt_ip(code::SERVER_ID) == Some(ingress.local_addr) => {
                MessageType::Ack
            }
            _ => return Handled::new(Outcome::Ignored(Ignored::NoReply)),
        };
        let mut r = Reply::to(req, reply_type);
        r.push(code::SERVER_ID, ingress.local_addr.octets().to_vec());
        self.add_boot(&mut r, x, answer, false);
        r.mark_essential();
        let ports = self.cfg.ports;
        let dest = if !req.header.giaddr().is_unspecified() {
            Destination::Unicast(SocketAddrV4::new(req.header.giaddr(), ports.server))
        } else if !req.header.ciaddr().is_unspecified() {
            Destination::Unicast(SocketAddrV4::new(req.header.ciaddr(), ports.client))
        } else {
            Destination::Broadcast { port: ports.client }
        };
        finish(x, r, reply_type, dest, Vec::new())
    }

    /// The PXE boot server port (4011): REQUEST/INFORM from a client that already has an
    /// address, answered with an ACK holding the file (UEFI builds that insist on it).
    pub(super) fn boot_server(&mut self, x: &Exchange<'_>) -> Handled {
        let (req, ingress) = (x.req, x.ingress);
        if !matches!(req.msg_type, MessageType::Request | MessageType::Inform) {
            return Handled::new(Outcome::Ignored(Ignored::NoReply));
        }
        let answer = match self.boot_answer(x) {
            Ok(a) => a,
            Err(why) => return Handled::new(Outcome::Ignored(why)),
        };
        let mut r = Reply::to(req, MessageType::Ack);
        r.msg.set_ciaddr(req.header.ciaddr());
        r.push(code::SERVER_ID, ingress.local_addr.octets().to_vec());
        self.add_boot(&mut r, x, answer, false);
        r.mark_essential();
        let client_port = self.cfg.ports.client;
        let dest = if !ingress.src.ip().is_unspecified() {
            Destination::Unicast(ingress.src)
        } else if !req.header.ciaddr().is_unspecified() {
            Destination::Unicast(SocketAddrV4::new(req.header.ciaddr(), client_port))
        } else {
            Destination::Broadcast { port: client_port }
        };
        finish(x, r, MessageType::Ack, dest, Vec::new())
    }

    /// Server mode: addresses and boot information.
    pub(super) fn server(&mut self, x: &Exchange<'_>) -> Handled {
        let (req, now) = (x.req, x.now);
        let Some(sub) = self.subnet_for(req, x.ingress) else {
            return Handled::new(Outcome::Ignored(Ignored::NoSubnet));
        };
        let mac = x
            .facts
            .mac
            .unwrap_or_else(|| Mac::from_slice(req.header.chaddr()).unwrap_or(Mac([0; 6])));
        let key = ClientKey::of(req.opt(code::CLIENT_ID), mac);
        if let BootDecision::NoBoot(NoBoot::UnknownArch { value }) = x.decision {
            // Still a DHCP client that deserves an address; it just gets no boot file.
            self.note_unknown_arch(x.facts, *value);
        }
        // Starvation guard: offers and leases lapsed by now stop counting before we decide.
        self.expire_unproven(sub, now);
        let c = Client { sub, mac, key };
        match req.msg_type {
            MessageType::Discover => self.discover(x, &c),
            MessageType::Request => self.request(x, &c),
            MessageType::Decline => self.decline(x, &c),
            MessageType::Release => self.release(x, &c),
            MessageType::Inform => self.inform(x, &c),
            _ => Handled::new(Outcome::Ignored(Ignored::NoReply)),
        }
    }

    /// A server identifier (option 54) other than ours: the message is for another server, a
    /// live peer of the fleet or not.
    fn for_other_server(&self, x: &Exchange<'_>) -> Option<Ignored> {
        let named = x
            .req
            .opt_ip(code::SERVER_ID)
            .filter(|s| *s != x.ingress.local_addr)?;
        // A live peer of the fleet answers it (or one that stopped lately, whose clients its
        // bucket's new owner sends back to the start); any other server on the segment is
        // worth an event (a rogue DHCP server).
        Some(
            if self
                .fleet
                .as_ref()
                .is_some_and(|f| f.is_peer(named) || f.is_departed(named))
            {
                Ignored::PeerServer
            } else {
                Ignored::OtherServer
            },
        )
    }

    /// Whether the REQUEST chose the OFFER of a fleet server that has stopped since, and the
    /// client's bucket is now this server's (so one server of the fleet tells it to start
    /// over, not every one).
    fn departed_server_chosen(&self, x: &Exchange<'_>) -> bool {
        let (Some(fleet), Some(named)) = (&self.fleet, x.req.opt_ip(code::SERVER_ID)) else {
            return false;
        };
        named != x.ingress.local_addr
            && fleet.is_departed(named)
            && fleet.serves(x.req.header.chaddr())
    }

    /// DISCOVER: an offer, held for the client for `offer_time`.
    fn discover(&mut self, x: &Exchange<'_>, c: &Client) -> Handled {
        let now = x.now;
        let requested = x.req.opt_ip(code::REQUESTED_IP);
        let Some(ip) = self.choose_address(c.sub, &c.key, c.mac, requested, now) else {
            let net = self.subnets[c.sub].net;
            tracing::warn!(subnet = %net, mac = %c.mac, "dhcp: pool exhausted, no address to offer");
            return Handled::new(Outcome::Ignored(Ignored::PoolExhausted));
        };
        // A second DORA (iPXE after the firmware) proves the client: a boot storm is
        // limited only while its machines are in their first DORA.
        let proven = self.returning(&c.key, c.mac, c.sub);
        if !proven && !self.unproven_room(c.sub, ip, now) {
            return Handled::new(Outcome::Ignored(Ignored::NewClientLimit));
        }
        let keep_bound = self
            .leases
            .get(ip)
            .is_some_and(|l| l.key() == c.key && l.status == LeaseStatus::Bound && l.expires > now);
        if keep_bound {
            if let Some(l) = self.leases.get_mut(ip) {
                l.proven |= proven;
            }
            self.account(ip, now);
        } else {
            let offer = Lease {
                ip,
                mac: c.mac,
                client_id: x.req.opt(code::CLIENT_ID).map(<[u8]>::to_vec),
                hostname: x.facts.hostname.clone(),
                status: LeaseStatus::Offered,
                expires: now + self.cfg.offer_time.as_secs() as i64,
                proven,
            };
            self.insert(offer, now);
        }
        self.address_reply(x, c, MessageType::Offer, ip, Vec::new())
    }

    /// REQUEST: the address it may have (and whether the client is proven), or the answer
    /// that ends the exchange; then the lease, written before the ACK goes out.
    fn request(&mut self, x: &Exchange<'_>, c: &Client) -> Handled {
        let granted = if x.req.opt_ip(code::SERVER_ID).is_some() {
            self.selecting(x, c)
        } else {
            self.init_reboot_or_renew(x, c)
        };
        let (ip, proven) = match granted {
            Ok(g) => g,
            Err(Refused::Ignored(why)) => return Handled::new(Outcome::Ignored(why)),
            Err(Refused::Nak(why)) => return self.nak(x, why),
        };
        let now = x.now;
        let secs = self
            .cfg
            .lease_time_for(&self.cfg.subnet[self.subnets[c.sub].index], proven)
            .as_secs() as i64;
        let lease = Lease {
            ip,
            mac: c.mac,
            client_id: x.req.opt(code::CLIENT_ID).map(<[u8]>::to_vec),
            hostname: x.facts.hostname.clone(),
            status: LeaseStatus::Bound,
            expires: now + secs,
            proven,
        };
        let rec = lease.record(now).into_iter().collect();
        self.insert(lease, now);
        self.address_reply(x, c, MessageType::Ack, ip, rec)
    }

    /// The address a REQUEST names: option 50, else ciaddr.
    fn requested_address(x: &Exchange<'_>) -> Option<Ipv4Addr> {
        let ciaddr = x.req.header.ciaddr();
        x.req
            .opt_ip(code::REQUESTED_IP)
            .or((!ciaddr.is_unspecified()).then_some(ciaddr))
    }

    /// REQUEST in SELECTING state (RFC 2131 §4.3.2): the client took an offer, ours or not.
    fn selecting(&mut self, x: &Exchange<'_>, c: &Client) -> Result<(Ipv4Addr, bool), Refused> {
        let now = x.now;
        if self.departed_server_chosen(x) {
            bump(&self.counters.nak_departed_server);
            return Err(Refused::Nak("the server you chose has stopped; start over"));
        }
        if let Some(other) = self.for_other_server(x) {
            if let Some(ip) = self.leases.withdraw_offer(&c.key) {
                self.account(ip, now);
            }
            return Err(Refused::Ignored(other));
        }
        let Some(ip) = Self::requested_address(x) else {
            return Err(Refused::Nak("no requested address"));
        };
        let reserved = self.reservation(c.mac, c.sub) == Some(ip);
        if !(self.leases.held_by(ip, &c.key) || reserved) {
            return Err(Refused::Nak("address not offered to you"));
        }
        // Proven at the DISCOVER or not at all: a retransmitted REQUEST is no return.
        let proven = reserved || self.leases.get(ip).is_some_and(|l| l.proven);
        // Its offer may have lapsed (and stopped counting) in the meantime.
        if !proven && !self.unproven_room(c.sub, ip, now) {
            return Err(Refused::Ignored(Ignored::NewClientLimit));
        }
        Ok((ip, proven))
    }

    /// REQUEST in INIT-REBOOT (requested, no ciaddr) or RENEWING/REBINDING (ciaddr) state.
    fn init_reboot_or_renew(
        &mut self,
        x: &Exchange<'_>,
        c: &Client,
    ) -> Result<(Ipv4Addr, bool), Refused> {
        let Some(ip) = Self::requested_address(x) else {
            return Err(Refused::Ignored(Ignored::NoReply));
        };
        if !usable(&self.subnets[c.sub].net, ip) {
            return Err(Refused::Nak("wrong network"));
        }
        match self.reservation(c.mac, c.sub) {
            Some(r) if r != ip => Err(Refused::Nak("you have a reserved address")),
            Some(_) => Ok((ip, true)),
            None => {
                if !self.adoptable(c.sub, ip, &c.key, x.now) {
                    return Err(Refused::Nak("address not available"));
                }
                // Renewing, rebinding or rebooting into the lease it was given is the return
                // that proves a client; claiming an address it was never given (or only
                // offered) is not.
                let proven = self.returning(&c.key, c.mac, c.sub);
                if !proven && !self.unproven_room(c.sub, ip, x.now) {
                    return Err(Refused::Ignored(Ignored::NewClientLimit));
                }
                Ok((ip, proven))
            }
        }
    }

    /// DECLINE: the client found its address in use; quarantined for `decline_time`.
    fn decline(&mut self, x: &Exchange<'_>, c: &Client) -> Handled {
        if let Some(other) = self.for_other_server(x) {
            return Handled::new(Outcome::Ignored(other));
        }
        let now = x.now;
        let mut h = Handled::new(Outcome::Ignored(Ignored::NoReply));
        let Some(ip) = x.req.opt_ip(code::REQUESTED_IP) else {
            return h;
        };
        // Only a current offer or lease can be declined: quarantining a lapsed one would let
        // an unproven client hold an address beyond the guard's cap.
        let current = self.leases.get(ip).is_some_and(|l| l.expires > now);
        if !(self.leases.held_by(ip, &c.key) && current) {
            return h;
        }
        tracing::warn!(%ip, mac = %c.mac, "dhcp: client declined address (in use by another host); quarantined");
        // An unproven client's decline keeps counting for the quarantine: otherwise DISCOVER +
        // DECLINE per made-up MAC would empty the pool for decline_time without ever reaching
        // the cap.
        let proven = self.leases.get(ip).is_some_and(|l| l.proven);
        let declined = Lease {
            ip,
            mac: c.mac,
            client_id: None,
            hostname: None,
            status: LeaseStatus::Declined,
            expires: now + self.cfg.decline_time.as_secs() as i64,
            proven,
        };
        h.lease_writes.extend(declined.record(now));
        self.leases.decline(&c.key, declined);
        self.account(ip, now);
        h
    }

    /// RELEASE: the client gives its lease back.
    fn release(&mut self, x: &Exchange<'_>, c: &Client) -> Handled {
        if let Some(other) = self.for_other_server(x) {
            return Handled::new(Outcome::Ignored(other));
        }
        let (now, ciaddr) = (x.now, x.req.header.ciaddr());
        let mut h = Handled::new(Outcome::Ignored(Ignored::NoReply));
        if let Some(l) = self.leases.get_mut(ciaddr) {
            if l.key() == c.key && l.status == LeaseStatus::Bound {
                l.status = LeaseStatus::Released;
                l.expires = now;
                h.lease_writes.extend(l.record(now));
            }
        }
        self.account(ciaddr, now);
        h
    }

    /// INFORM (RFC 2131 §4.3.5): configuration only; no lease, no yiaddr, reply to ciaddr.
    fn inform(&mut self, x: &Exchange<'_>, c: &Client) -> Handled {
        let req = x.req;
        let mut r = Reply::to(req, MessageType::Ack);
        r.msg.set_ciaddr(req.header.ciaddr());
        r.push(code::SERVER_ID, x.ingress.local_addr.octets().to_vec());
        r.mark_essential();
        self.add_subnet_options(&mut r, c.sub, c.mac);
        if let BootDecision::Boot(a) = x.decision {
            self.add_boot(&mut r, x, a, false);
        }
        let dest = self.server_destination(req, None, false);
        finish(x, r, MessageType::Ack, dest, Vec::new())
    }
}
