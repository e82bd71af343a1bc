//! chainboot-dhcp: the DHCP side of chainboot.
//!
//! - [`boot`]: the boot decision (which file/URL for which client), in one place;
//! - [`wire`]: DHCP messages on top of dhcproto (option overload, padding, option 57);
//! - [`engine`]: the sans-IO proxyDHCP / authoritative DHCP engine with its lease table;
//! - [`config`]: the `[dhcp]` config section and its validation;
//! - [`snippet`]: config snippets for ISC dhcpd, dnsmasq and Kea (`chainboot dhcp-config`);
//! - [`driver`]: the UDP driver DHCPv4 and DHCPv6 share (receive threads, group commit),
//!   generic over the engine;
//! - [`server`]: DHCPv4 on the driver (sockets, IP_PKTINFO, ARP, the fleet's lease rules).

pub mod boot;
pub mod client;
pub mod config;
pub mod driver;
pub mod engine;
pub mod server;
pub mod snippet;
pub mod wire;

pub use boot::{
    decide, first_stage_name, BootDecision, BootSettings, ChooseLoader, EfiX64Binary, LoaderChoice,
    PacketFacts,
};
pub use config::{DhcpConfig, Mode};
pub use driver::{DhcpError, DhcpObserver, NoObserver};
pub use engine::{Engine, Handled, Ingress, Outgoing};
pub use server::{DhcpServer, ServerOptions};
pub use snippet::{snippet, SnippetKind};
