//! Operating chainboot: what every machine is doing, and changing it without editing
//! files.
//!
//! - [`observe`]: hooks the DHCP, TFTP and HTTP servers call; they record events (keyed by
//!   MAC) in the event log and fill histograms;
//! - [`api`]: `/api/v1/leases`, `/api/v1/events` (+ `/stream`, Server-Sent Events),
//!   `/api/v1/machines/MAC/timeline`, `/api/v1/info`, `/metrics`, `/healthz`;
//! - [`dashboard`]: `/`, a page embedded in the binary;
//! - [`metrics`]: the Prometheus text renderer and histograms.

// Handlers return `Result<_, Response>` to answer early with an error response; the size of
// `Response` is axum's and the error path is cold.
#![allow(clippy::result_large_err)]

pub mod api;
pub mod dashboard;
pub mod metrics;
pub mod observe;
pub mod timelines;

pub use api::{render_metrics, routes, OpsState};
pub use observe::{MachineEvents, Metrics, Observers};
pub use timelines::machine_timeline;
