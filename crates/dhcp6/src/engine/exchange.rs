//! One function per client message (RFC 8415 §18.3), for both modes.

use std::net::Ipv6Addr;

use chainboot_dhcp::engine::{Lease, LeaseStatus};
use chainboot_dhcp::BootDecision;

use super::pool::{ia_key, record, UNKNOWN_MAC};
use super::{Engine6, Exchange6, Handled6, Ignored6, Outcome6, Outgoing6};
use crate::config::Mode6;
use crate::facts::PXE_ENTERPRISE;
use crate::wire::{self, code, msg, status, IaNa, Writer};

/// What one IA gets in a reply.
struct IaAnswer {
    iaid: u32,
    /// Address, preferred and valid lifetime.
    addrs: Vec<(Ipv6Addr, u32, u32)>,
    status: Option<(u16, &'static str)>,
}

impl Engine6 {
    /// Dispatches by mode and message type. Messages that must name a server (RFC 8415
    /// §16: Request, Renew, Release, Decline) are ours only when they name this one (a live
    /// peer's are counted apart from an unknown server's); those that must not (Solicit,
    /// Rebind, Confirm) are dropped when they do.
    pub(super) fn exchange(&mut self, x: &Exchange6<'_>) -> Handled6 {
        let t = x.rx.msg.msg_type;
        let named = x.rx.msg.options.get(code::SERVERID);
        let needs_id = matches!(t, msg::REQUEST | msg::RENEW | msg::RELEASE | msg::DECLINE);
        let ours = named.is_some_and(|id| id == self.server_duid.as_slice());
        let refused = match t {
            msg::SOLICIT | msg::REBIND | msg::CONFIRM => named.is_some(),
            msg::INFORMATION_REQUEST => named.is_some() && !ours,
            _ => needs_id && !ours,
        };
        if refused {
            // A live peer's DUID: that server answers (and records) it.
            let peer = needs_id || t == msg::INFORMATION_REQUEST;
            let why = match named {
                Some(id) if peer && self.is_peer_duid(id) => Ignored6::PeerServer,
                _ => Ignored6::NotForUs,
            };
            return Handled6::new(Outcome6::Ignored(why));
        }
        match (self.cfg.mode, t) {
            (_, msg::INFORMATION_REQUEST) => self.inform(x),
            (Mode6::Server, msg::SOLICIT) => self.solicit(x),
            (Mode6::Server, msg::REQUEST) => self.request(x),
            (Mode6::Server, msg::RENEW | msg::REBIND) => self.extend(x),
            (Mode6::Server, msg::CONFIRM) => self.confirm(x),
            (Mode6::Server, msg::RELEASE | msg::DECLINE) => self.give_back(x),
            (Mode6::BootInfo, msg::SOLICIT | msg::REQUEST) => self.boot_info_only(x),
            _ => Handled6::new(Outcome6::Ignored(Ignored6::NotForUs)),
        }
    }

    /// Solicit: an address per IA, held for `offer_time` (Advertise), or bound at once when
    /// the client asked for Rapid Commit (Reply).
    fn solicit(&mut self, x: &Exchange6<'_>) -> Handled6 {
        let Some(sub) = x.sub else {
            return Handled6::new(Outcome6::Ignored(Ignored6::NoSubnet));
        };
        let bind = x.facts.rapid_commit && self.cfg.rapid_commit;
        let (answers, refusal) = self.assign_all(x, sub, bind);
        let assigned = answers.iter().any(|a| !a.addrs.is_empty());
        let is_boot = matches!(x.decision, BootDecision::Boot(_));
        if !assigned && !is_boot {
            return Handled6::new(Outcome6::Ignored(
                refusal.unwrap_or(Ignored6::PoolExhausted),
            ));
        }
        let mut w = self.header(x);
        if bind {
            w.opt(code::RAPID_COMMIT, &[]);
        } else {
            w.opt(code::PREFERENCE, &[self.cfg.preference]);
        }
        write_ias(&mut w, &answers, self.subnets[sub].valid);
        self.add_config(&mut w, x);
        let t = if bind { msg::REPLY } else { msg::ADVERTISE };
        self.reply(x, t, w, &answers)
    }

    /// Request: binds the addresses (the Advertised ones, or any free ones).
    fn request(&mut self, x: &Exchange6<'_>) -> Handled6 {
        let Some(sub) = x.sub else {
            return Handled6::new(Outcome6::Ignored(Ignored6::NoSubnet));
        };
        let (answers, _) = self.assign_all(x, sub, true);
        let mut w = self.header(x);
        write_ias(&mut w, &answers, self.subnets[sub].valid);
        self.add_config(&mut w, x);
        self.reply(x, msg::REPLY, w, &answers)
    }

    /// Addresses for every IA of the request; IAs that get none are answered NoAddrsAvail.
    /// Also says why the last IA was refused.
    fn assign_all(
        &mut self,
        x: &Exchange6<'_>,
        sub: usize,
        bind: bool,
    ) -> (Vec<IaAnswer>, Option<Ignored6>) {
        let mut refusal = None;
        let mut answers = Vec::new();
        let valid = self.subnets[sub].valid;
        for ia in &x.facts.ias {
            match self.assign(x, sub, ia, bind) {
                Ok(ip) => answers.push(IaAnswer {
                    iaid: ia.iaid,
                    addrs: vec![(ip, preferred(valid), valid)],
                    status: None,
                }),
                Err(why) => {
                    refusal = Some(why);
                    answers.push(no_addrs(ia.iaid));
                }
            }
        }
        (answers, refusal)
    }

    /// One IA's address, put in the table as Advertised or bound.
    fn assign(
        &mut self,
        x: &Exchange6<'_>,
        sub: usize,
        ia: &IaNa,
        bind: bool,
    ) -> Result<Ipv6Addr, Ignored6> {
        let (duid, now) = (&x.facts.duid, x.now);
        let ip = self
            .choose(sub, duid, ia.iaid, &ia.addrs, now)
            .ok_or(Ignored6::PoolExhausted)?;
        let held = self
            .lease(ip)
            .filter(|_| self.held_by(ip, duid, ia.iaid))
            .cloned();
        if !bind
            && held
                .as_ref()
                .is_some_and(|l| l.status == LeaseStatus::Bound)
        {
            // A bound client soliciting again: its lease stands; Advertise it as it is.
            return Ok(ip);
        }
        let proven = self.returning(duid, ia.iaid) || held.as_ref().is_some_and(|l| l.proven);
        if !proven && !self.unproven_room(sub, ip, now) {
            return Err(Ignored6::NewClientLimit);
        }
        let (status, life) = if bind {
            (LeaseStatus::Bound, i64::from(self.subnets[sub].valid))
        } else {
            (LeaseStatus::Offered, self.cfg.offer_time.as_secs() as i64)
        };
        self.insert(
            self.lease_for(x, ia.iaid, ip, status, now + life, proven),
            now,
        );
        Ok(ip)
    }

    fn lease_for(
        &self,
        x: &Exchange6<'_>,
        iaid: u32,
        ip: Ipv6Addr,
        status: LeaseStatus,
        expires: i64,
        proven: bool,
    ) -> Lease<Ipv6Addr> {
        Lease {
            ip,
            mac: x.facts.mac.map_or(UNKNOWN_MAC, |(m, _)| m),
            // DUID + IAID: the lease table's client identifier for one IA.
            client_id: Some([&x.facts.duid[..], &iaid.to_be_bytes()].concat()),
            hostname: None,
            status,
            expires,
            proven,
        }
    }

    /// Renew and Rebind: extends the client's bindings (the client came back: proven). An
    /// address of the client's prefix that nobody else holds is bound again (the server lost
    /// its state, RFC 8415 §18.3.4 allows it); addresses that do not belong to the link get
    /// lifetimes 0. A Renew of an unknown IA gets NoBinding; a Rebind chainboot cannot speak
    /// for gets no reply (another server may know it).
    fn extend(&mut self, x: &Exchange6<'_>) -> Handled6 {
        let rebind = x.rx.msg.msg_type == msg::REBIND;
        let Some(sub) = x.sub else {
            let why = if rebind {
                Ignored6::NoReply
            } else {
                Ignored6::NoSubnet
            };
            return Handled6::new(Outcome6::Ignored(why));
        };
        let (duid, now) = (&x.facts.duid, x.now);
        let valid = self.subnets[sub].valid;
        let mut answers = Vec::new();
        for ia in &x.facts.ias {
            let mut a = IaAnswer {
                iaid: ia.iaid,
                addrs: Vec::new(),
                status: None,
            };
            for &ip in &ia.addrs {
                let plan = &self.subnets[sub];
                let key = ia_key(duid, ia.iaid);
                let ours = plan.in_pool(ip)
                    && (self.held_by(ip, duid, ia.iaid) || self.leases.free_for(ip, &key, now));
                if ours {
                    let lease = self.lease_for(
                        x,
                        ia.iaid,
                        ip,
                        LeaseStatus::Bound,
                        now + i64::from(valid),
                        true,
                    );
                    self.insert(lease, now);
                    a.addrs.push((ip, preferred(valid), valid));
                } else if !plan.net.contains(&ip) || rebind {
                    a.addrs.push((ip, 0, 0));
                }
            }
            if a.addrs.is_empty() {
                a.status = Some((status::NO_BINDING, "no binding for this IA"));
            }
            answers.push(a);
        }
        let any_ours = answers
            .iter()
            .any(|a| a.addrs.iter().any(|(_, _, v)| *v > 0));
        if rebind && !any_ours {
            return Handled6::new(Outcome6::Ignored(Ignored6::NoReply));
        }
        let mut w = self.header(x);
        write_ias(&mut w, &answers, valid);
        self.add_config(&mut w, x);
        self.reply(x, msg::REPLY, w, &answers)
    }

    /// Confirm: are the client's addresses on its link? No reply when chainboot does not
    /// know the link or the client named no address (RFC 8415 §18.3.3).
    fn confirm(&mut self, x: &Exchange6<'_>) -> Handled6 {
        let Some(sub) = x.sub else {
            return Handled6::new(Outcome6::Ignored(Ignored6::NoReply));
        };
        let addrs: Vec<Ipv6Addr> = x.facts.ias.iter().flat_map(|ia| ia.addrs.clone()).collect();
        if addrs.is_empty() {
            return Handled6::new(Outcome6::Ignored(Ignored6::NoReply));
        }
        let mut w = self.header(x);
        if addrs.iter().all(|a| self.on_link(sub, *a)) {
            w.status(status::SUCCESS, "all addresses on link");
        } else {
            w.status(status::NOT_ON_LINK, "an address is not on this link");
        }
        self.reply(x, msg::REPLY, w, &[])
    }

    /// Release and Decline: the client's addresses go back (released: kept for the same IA;
    /// declined: out of the pool for `decline_time`). The firmware retransmits its Release
    /// until it is answered, so it always is.
    fn give_back(&mut self, x: &Exchange6<'_>) -> Handled6 {
        let decline = x.rx.msg.msg_type == msg::DECLINE;
        let (duid, now) = (&x.facts.duid, x.now);
        let mut writes = Vec::new();
        for ia in &x.facts.ias {
            for &ip in &ia.addrs {
                if !self.held_by(ip, duid, ia.iaid) {
                    continue;
                }
                let Some(mut l) = self.lease(ip).cloned() else {
                    continue;
                };
                if decline {
                    l.status = LeaseStatus::Declined;
                    l.expires = now + self.cfg.decline_time.as_secs() as i64;
                    self.quarantine(duid, ia.iaid, l.clone(), now);
                } else {
                    l.status = LeaseStatus::Released;
                    self.insert(l.clone(), now);
                }
                writes.extend(record(&l, now));
            }
        }
        let mut w = self.header(x);
        w.status(
            status::SUCCESS,
            if decline { "declined" } else { "released" },
        );
        let mut out = self.reply(x, msg::REPLY, w, &[]);
        out.lease_writes = writes;
        out
    }

    /// Information-Request (iPXE after a router advertisement with only the O flag): the
    /// boot-file URL and DNS, no address.
    fn inform(&mut self, x: &Exchange6<'_>) -> Handled6 {
        let mut w = Writer::new();
        w.opt(code::SERVERID, &self.server_duid);
        if !x.facts.duid.is_empty() {
            w.opt(code::CLIENTID, &x.facts.duid);
        }
        self.add_config(&mut w, x);
        self.reply(x, msg::REPLY, w, &[])
    }

    /// Boot-info mode (a site's own DHCPv6 server hands out addresses): boot clients get the
    /// boot-file URL and vendor class in an Advertise without IA_NA, which PXE firmware takes
    /// for a proxy offer; their Request naming chainboot gets the same in a Reply.
    fn boot_info_only(&mut self, x: &Exchange6<'_>) -> Handled6 {
        if !matches!(x.decision, BootDecision::Boot(_)) {
            return Handled6::new(Outcome6::Ignored(Ignored6::NotBootClient));
        }
        let mut w = self.header(x);
        // No Preference option here: 255 would make a client take this address-less
        // Advertise at once instead of waiting for the site server's offer of an address.
        let t = if x.rx.msg.msg_type == msg::SOLICIT {
            msg::ADVERTISE
        } else {
            msg::REPLY
        };
        self.add_config(&mut w, x);
        self.reply(x, t, w, &[])
    }

    /// Server and client identifiers, the start of every reply to a client with a DUID.
    fn header(&self, x: &Exchange6<'_>) -> Writer {
        let mut w = Writer::new();
        w.opt(code::SERVERID, &self.server_duid);
        w.opt(code::CLIENTID, &x.facts.duid);
        w
    }

    /// DNS servers of the client's prefix, and the boot answer: option 59 (the URL; TFTP
    /// ones as tftp://[addr]/name, the form edk2 parses) and, where it helps, option 16 with
    /// the vendor class the client sent. HTTP Boot firmware takes an Advertise as an HTTP
    /// offer only when its option 16 says "HTTPClient" after enterprise number 343. PXE
    /// firmware is the other way round: edk2 takes an offer whose option 16 says "PXEClient"
    /// for a BINL offer, with or without an address, and asks the server named in the URL on
    /// UDP 4011 for the boot file again, which chainboot does not serve (OVMF then gives up:
    /// "PXE-E16: No valid offer received"). So an offer with an address carries the URL
    /// alone; boot-info mode's address-less Advertise keeps "PXEClient", the mark of a proxy
    /// offer.
    fn add_config(&self, w: &mut Writer, x: &Exchange6<'_>) {
        if let Some(sub) = x.sub {
            let dns = &self.cfg.subnet[sub].dns;
            if !dns.is_empty() {
                let b: Vec<u8> = dns.iter().flat_map(|a| a.octets()).collect();
                w.opt(code::DNS_SERVERS, &b);
            }
        }
        if let BootDecision::Boot(a) = x.decision {
            w.opt(code::BOOTFILE_URL, a.url().as_bytes());
            if a.vendor_class == "PXEClient" && self.cfg.mode != Mode6::BootInfo {
                return;
            }
            let class = a.vendor_class.as_bytes();
            let mut v = PXE_ENTERPRISE.to_be_bytes().to_vec();
            v.extend_from_slice(&(class.len() as u16).to_be_bytes());
            v.extend_from_slice(class);
            w.opt(code::VENDOR_CLASS, &v);
        }
    }

    /// The reply, wrapped for the relays it came through and addressed to whoever sent the
    /// request (the client on port 546, or the nearest relay), with the writes of its bound
    /// leases.
    fn reply(&self, x: &Exchange6<'_>, t: u8, w: Writer, answers: &[IaAnswer]) -> Handled6 {
        let inner = wire::message(t, x.rx.msg.xid, &w.buf);
        let bytes = if x.rx.relays.is_empty() {
            inner
        } else {
            wire::relay_reply(&x.rx.relays, inner)
        };
        let dst = x.ingress.dst;
        let mut h = Handled6::new(Outcome6::Replied(t));
        h.outgoing.push(Outgoing6 {
            bytes,
            dest: x.ingress.src,
            ifindex: x.ingress.ifindex,
            source: (!dst.is_multicast()).then_some(dst),
            msg_type: t,
        });
        for (ip, _, valid) in answers.iter().flat_map(|a| &a.addrs) {
            if *valid == 0 {
                continue;
            }
            h.addresses.push(*ip);
            if t == msg::REPLY {
                h.lease_writes
                    .extend(self.lease(*ip).and_then(|l| record(l, x.now)));
            }
        }
        h
    }
}

fn no_addrs(iaid: u32) -> IaAnswer {
    IaAnswer {
        iaid,
        addrs: Vec::new(),
        status: Some((status::NO_ADDRS_AVAIL, "no address for this IA")),
    }
}

/// Preferred lifetime: 5/8 of the valid one (Kea's 3000 s / 4000 s ratio, roughly).
fn preferred(valid: u32) -> u32 {
    (u64::from(valid) * 5 / 8) as u32
}

/// IA_NA options (RFC 8415 §21.4): T1 half and T2 four fifths of the preferred lifetime.
fn write_ias(w: &mut Writer, answers: &[IaAnswer], valid: u32) {
    let pref = preferred(valid);
    for a in answers {
        let mut inner = Writer::new();
        for (ip, p, v) in &a.addrs {
            let mut addr = ip.octets().to_vec();
            addr.extend_from_slice(&p.to_be_bytes());
            addr.extend_from_slice(&v.to_be_bytes());
            inner.opt(code::IAADDR, &addr);
        }
        if let Some((c, m)) = a.status {
            inner.status(c, m);
        }
        let (t1, t2) = if a.addrs.is_empty() {
            (0, 0)
        } else {
            (pref / 2, (u64::from(pref) * 4 / 5) as u32)
        };
        let mut ia = a.iaid.to_be_bytes().to_vec();
        ia.extend_from_slice(&t1.to_be_bytes());
        ia.extend_from_slice(&t2.to_be_bytes());
        ia.extend_from_slice(&inner.buf);
        w.opt(code::IA_NA, &ia);
    }
}
