//! chainboot's TFTP server.
//!
//! - [`proto`]: the wire format (RFC 1350 packets, RFC 2347 options), strict and total.
//! - [`transfer`]: one read transfer as a sans-IO state machine: option negotiation
//!   (RFC 2348 blksize, RFC 2349 tsize/timeout, RFC 7440 windowsize), windows, resends,
//!   wrap-around, timeouts. No sockets, no clock.
//! - `admission`: who may start a transfer (`[tftp]` limits, the unproven share, the
//!   per-prefix cap and the booting machines a [`Vouch`] admits over it), sans-IO.
//! - [`server`]: the tokio driver: the listening socket, one socket per transfer (the server's
//!   TID), limits, path resolution through `chainboot_content`, logs and counters. It reads
//!   file data ahead in 32 KiB (or one window) chunks and sends each window with one
//!   `sendmmsg`. Transfer sockets wait for readability only (`socket`): one reactor wake-up
//!   per ACK, not two. Lock-step transfers run on a thread of their own, which polls for the
//!   next ACK for a few tens of microseconds when the client answers that fast, no other task
//!   waits for a CPU, and polling measurably shortens the turnaround (`busy_poll`,
//!   `runnable`).
//!
//! Small files (first stages) are read whole once and shared by every transfer of them
//! (`filecache`): a boot storm's thousands of transfers of one `ipxe.efi` hold no copies.
//!
//! The binary builds a [`TftpServer`] from the `[tftp]` section ([`TftpConfig`]) and a
//! `chainboot_content::Resolver`, then calls [`TftpServer::run`] with a cancellation token.

mod admission;
mod batch;
mod busy_poll;
mod config;
mod filecache;
pub mod proto;
mod readahead;
mod resolve_pool;
mod runnable;
pub mod server;
mod socket;
pub mod transfer;

pub use admission::{NoVouch, Vouch};
pub use config::TftpConfig;
pub use server::{
    TftpServer, TftpStats, TftpStatsSnapshot, TransferObserver, TransferStart, TransferSummary,
};
pub use transfer::{Outcome, Transfer, TransferSettings};
