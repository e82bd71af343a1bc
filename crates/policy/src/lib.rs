//! chainboot's boot policy: what each machine boots, decided per machine and rendered
//! per machine.
//!
//! - [`config`]: `[[profile]]`, `[[group]]`, `[boot]`, `[api]` as plain data;
//! - [`validate`]: their semantic checks, every problem at once;
//! - [`facts`]: what a client says about itself, sanitised at the door;
//! - [`select`]: which group a machine belongs to (the most specific wins);
//! - [`policy`]: [`Policy`], the decision (pinned > group > pixiecore API > default),
//!   boot-once, `explain`, quick mode;
//! - [`render`]: iPXE scripts, PXELINUX configs, templates (pure functions);
//! - [`grub`]: GRUB configs for the signed shim → GRUB chain (pure functions);
//! - [`pixiecore`]: the pixiecore API boot backend;
//! - [`http`]: the axum routes (`/boot.ipxe`, `/ipxe`, `/boot/...`, `/config/...`,
//!   `/pxelinux.cfg/...`, the machine part of API v1);
//! - [`machine_event`]: the bounded fields a machine may report about itself;
//! - [`paging`]: list responses streamed page by page, bounded by count and bytes;
//! - [`peers`]: the live fleet peers' boot listeners, alternatives in generated scripts;
//! - [`tftp`]: a [`chainboot_content::Resolver`] for `boot.ipxe` and `pxelinux.cfg/` over TFTP.

pub mod access;
pub mod config;
pub mod facts;
pub mod glob;
pub mod grub;
pub mod http;
pub mod machine_event;
pub mod paging;
pub mod peers;
pub mod pixiecore;
pub mod policy;
pub mod render;
pub mod select;
pub mod tftp;
pub mod validate;

pub use config::{
    ApiConfig, AssetRef, BootConfig, GroupConfig, MatchConfig, ProfileAction, ProfileConfig,
};
pub use facts::{ClientFacts, RawFacts};
pub use http::{routes, MachineHooks, PolicyState};
pub use peers::PeerBases;
pub use policy::{Decision, Explanation, Policy, PolicyConfig, Source};
pub use render::HttpBase;
pub use tftp::TftpResolver;
pub use validate::validate;

/// `n` random bytes as lower-case hex (API tokens, per-machine secrets).
pub(crate) fn random_hex(n: usize) -> String {
    let mut bytes = vec![0u8; n];
    rand::fill(&mut bytes[..]);
    hex::encode(bytes)
}

/// Milliseconds since the Unix epoch (the store's time unit).
pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
