//! Connections per client address (`[http] max_connections_per_client`).

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Connections open per client address, across every listener (`[http]
/// max_connections_per_client`), so that one host cannot hold every connection slot.
pub(crate) struct PerClient {
    limit: usize,
    open: parking_lot::Mutex<HashMap<IpAddr, usize>>,
    /// When the last refusal was logged, and refusals since (logged at most every
    /// [`REFUSAL_LOG_INTERVAL`]: a flood of refusals must not become a flood of log lines).
    log: parking_lot::Mutex<(Option<Instant>, u64)>,
}

const REFUSAL_LOG_INTERVAL: Duration = Duration::from_secs(10);

/// One connection's place in its client's count; given back on drop.
pub(crate) struct ClientSlot {
    owner: Arc<PerClient>,
    ip: IpAddr,
}

impl PerClient {
    pub(crate) fn new(limit: usize) -> PerClient {
        PerClient {
            limit: limit.max(1),
            open: parking_lot::Mutex::new(HashMap::new()),
            log: parking_lot::Mutex::new((None, 0)),
        }
    }

    /// A slot for a connection from `peer`, or `None` when it already has `limit` open.
    pub(crate) fn claim(self: &Arc<Self>, peer: SocketAddr) -> Option<ClientSlot> {
        // An IPv4 client of a dual-stack listener is the same host as over IPv4.
        let ip = peer.ip().to_canonical();
        let mut open = self.open.lock();
        let n = open.entry(ip).or_insert(0);
        if *n >= self.limit {
            return None;
        }
        *n += 1;
        Some(ClientSlot {
            owner: self.clone(),
            ip,
        })
    }

    pub(crate) fn log_refusal(&self, peer: SocketAddr) {
        let mut log = self.log.lock();
        log.1 += 1;
        if log.0.is_some_and(|t| t.elapsed() < REFUSAL_LOG_INTERVAL) {
            return;
        }
        tracing::warn!(
            target: "chainboot::http",
            client = %peer.ip(),
            limit = self.limit,
            refused = log.1,
            "connections refused: client at [http] max_connections_per_client (count since the last such line)"
        );
        *log = (Some(Instant::now()), 0);
    }
}

impl Drop for ClientSlot {
    fn drop(&mut self) {
        let mut open = self.owner.open.lock();
        if let Some(n) = open.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.ip);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_address_counts_once_whichever_family_it_arrives_in_and_slots_come_back() {
        let per = Arc::new(PerClient::new(2));
        let v4: SocketAddr = "127.0.0.1:1000".parse().unwrap();
        let mapped: SocketAddr = "[::ffff:127.0.0.1]:1001".parse().unwrap();
        let other: SocketAddr = "127.0.0.2:1000".parse().unwrap();
        let a = per.claim(v4).unwrap();
        let _b = per.claim(mapped).unwrap();
        assert!(per.claim(v4).is_none(), "the third from one address");
        assert!(
            per.claim(other).is_some(),
            "another address is not affected"
        );
        drop(a);
        assert!(per.claim(mapped).is_some(), "a slot given back is reusable");
        assert!(per.open.lock().len() <= 2);
    }
}
