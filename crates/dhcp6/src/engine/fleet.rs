//! Sharing DHCPv6 clients among the live servers of a fleet, as the DHCPv4 engine does (RFC
//! 3074's hash buckets owned by rendezvous hashing over the live servers' names, see
//! `chainboot_dhcp::engine::fleet`), so that two servers on one link do not both Advertise
//! and hold an address each for one client.
//!
//! The hash key is the MAC behind the client's DUID when the engine learned it (a DUID-LL or
//! DUID-LLT, the EUI-64 link-local source, or a relay's option 79), the DUID's bytes only when
//! it did not. The same machine's UEFI firmware and iPXE send different DUIDs (edk2 a
//! DUID-UUID or DUID-LLT made at its first boot, iPXE a DUID-UUID from SMBIOS or DUID-LL), but
//! the same MAC: keyed by it, one server answers a machine from power-on to its installer, and
//! it is the same server that answers the machine's DHCPv4 (the same key in the same buckets),
//! so its events and boot stages stay with one server.
//!
//! Messages that name a server (Request, Renew, Release, Decline; option 2) are that server's
//! alone: the others count them as a live peer's (`ignored_peer_server`) when the DUID is one
//! of the live peers', or as another server's when not. Solicit, Rebind, Confirm and
//! Information-Request name none and are answered by the owner of the client's bucket only.
//! When a peer stops heart-beating its buckets move: its clients' Renews (naming its DUID)
//! go unanswered, and their Rebinds, naming no server, reach the new owner, which extends the
//! same addresses (it has loaded the peers' leases).

use chainboot_dhcp::engine::fleet::Fleet;

use super::Engine6;
use crate::facts::Facts6;
use crate::wire::{code, msg, Received};

impl Engine6 {
    /// Shares clients with the fleet's live peers (`None`: answer everyone); `peer_duids` are
    /// the DUIDs of the fleet's other servers, live or just stopped (a message naming one is a
    /// fleet server's, not a stranger's).
    pub fn set_fleet(&mut self, fleet: Option<Fleet>, peer_duids: Vec<Vec<u8>>) {
        let mut peer_duids = peer_duids;
        peer_duids.retain(|d| *d != self.server_duid);
        peer_duids.sort_unstable();
        peer_duids.dedup();
        self.fleet = fleet;
        self.peer_duids = peer_duids;
    }

    /// The fleet as last set.
    pub fn fleet(&self) -> Option<&Fleet> {
        self.fleet.as_ref()
    }

    /// Whether `duid` is a live peer's server DUID.
    pub(crate) fn is_peer_duid(&self, duid: &[u8]) -> bool {
        self.peer_duids
            .binary_search_by(|d| d.as_slice().cmp(duid))
            .is_ok()
    }

    /// The bytes a client is hashed by: the MAC behind its DUID, else the DUID.
    pub(crate) fn fleet_key(facts: &Facts6) -> Vec<u8> {
        match facts.mac {
            Some((mac, _)) => mac.0.to_vec(),
            None => facts.duid.clone(),
        }
    }

    /// Whether this server answers `rx`: always when it names a server (the named one
    /// answers; the exchange tells ours from a peer's), otherwise when the client's hash
    /// bucket is this server's.
    pub(super) fn answers(&self, rx: &Received, facts: &Facts6) -> bool {
        let Some(fleet) = &self.fleet else {
            return true;
        };
        let names_server = rx.msg.options.get(code::SERVERID).is_some();
        let shared = matches!(
            rx.msg.msg_type,
            msg::SOLICIT | msg::REBIND | msg::CONFIRM | msg::INFORMATION_REQUEST
        );
        !shared || names_server || fleet.serves(&Engine6::fleet_key(facts))
    }
}
