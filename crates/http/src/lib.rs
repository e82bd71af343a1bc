//! chainboot's HTTP server.
//!
//! Everything after iPXE's second DHCP comes over HTTP: boot scripts, kernels, initrds, files
//! inside ISO images, per-machine configs. This crate provides
//! - [`content_response`]: a [`chainboot_content::Content`] as a response with everything
//!   iPXE and curl expect (Content-Length always, single ranges, validators, conditional
//!   requests), streamed by positioned reads, or on plain HTTP from the page cache with
//!   `sendfile` (`sendfile` module); other crates use it for generated content too;
//! - [`static_routes`]: `/files/...` (`[http] root`), `/ipxe-bin/NAME`, `/iso/NAME/...`, with
//!   request paths percent-decoded once and then held to the same rules as TFTP
//!   ([`chainboot_content::CleanPath`]);
//! - [`HttpServer`]: listeners, connection cap, header/idle/body/request/send
//!   timeouts (slowloris, stalled readers), keep-alive,
//!   one access-log line per response and [`HttpStats`] counters, an [`HttpObserver`] hook.
//! - [`tls`]: HTTPS listeners beside the plain ones (rustls), certificate pairs checked and
//!   reloaded in place; [`lab`]: a CA of the server's own; [`tls_client`]: the client side.
//!
//! ```no_run
//! # async fn demo(isos: std::sync::Arc<chainboot_iso::IsoLibrary>,
//! #               ipxe: std::sync::Arc<dyn chainboot_content::Resolver>) -> std::io::Result<()> {
//! use chainboot_http::{static_routes, HttpConfig, HttpServer, StaticContent};
//! let config = HttpConfig::default();
//! let server = HttpServer::bind(&config)?;
//! let router = static_routes(StaticContent { files: None, ipxe_bin: ipxe, isos, listing: false });
//! server.run(router, tokio_util::sync::CancellationToken::new()).await
//! # }
//! ```

mod config;
mod ffdhe;
pub mod lab;
mod per_client;
mod response;
mod routes;
mod sendfile;
mod server;
mod small_files;
mod stats;
pub mod tls;
pub mod tls_client;

pub use config::{AccessLog, HttpConfig, HttpConfigError, Listen};
pub use response::{content_response, CHUNK};
pub use routes::{served_as, serving, static_routes, StaticContent};
pub use server::HttpServer;
pub use stats::{AccessRecord, HttpObserver, HttpStats, NoObserver, StaticFile};
pub use tls::{TlsError, TlsFiles, TlsServer, TlsSource};
