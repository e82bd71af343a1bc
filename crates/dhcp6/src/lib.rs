//! chainboot-dhcp6: the DHCPv6 side of chainboot, in the DHCPv4 side's shape.
//!
//! - [`client`]: client messages as firmware builds them (tests, `explain`, fuzz seeds);
//! - [`wire`]: DHCPv6 messages, relay envelopes (bounded nesting) and reply encoding;
//! - [`duid`]: the MAC behind a DUID, a link-local address or a relay's option 79;
//! - [`facts`]: what a request says about its client, in the boot decision's shape;
//! - [`engine`]: the sans-IO engine (stateful IA_NA or boot information only) on the
//!   DHCPv4 engine's lease table, starvation guard, rate limits and boot decision;
//! - [`config`]: the `[dhcp6]` section and its validation;
//! - [`snippet`]: Kea's `Dhcp6` client classes for the same boot answers;
//! - [`server`]: DHCPv6 on chainboot-dhcp's driver (UDP 547, ff02::1:2, group-committed
//!   leases).

pub mod client;
pub mod config;
pub mod duid;
pub mod engine;
pub mod facts;
pub mod server;
pub mod snippet;
pub mod wire;

pub use config::{Dhcp6Config, Mode6};
pub use engine::{Counters6, Engine6, Handled6, Ignored6, Ingress6, Outcome6, Outgoing6};
pub use facts::Facts6;
pub use server::Dhcp6Server;
