//! Serves the policy routes alone on 127.0.0.1, for benchmarks (`bench/script-rps.sh`) and for
//! poking at scripts with curl. Usage: `policy_server PORT STATE_DIR`.
//!
//! Config: one kernel profile with a templated cmdline, a group matching 52:54:00:*, menu
//! default. The API token is `bench`.

use std::net::SocketAddr;
use std::sync::Arc;

use chainboot_policy::{
    routes, BootConfig, GroupConfig, HttpBase, MatchConfig, Policy, PolicyConfig, PolicyState,
    ProfileConfig,
};
use chainboot_store::Store;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let port: u16 = args
        .next()
        .ok_or("usage: policy_server PORT STATE_DIR")?
        .parse()?;
    let state_dir = args.next().ok_or("usage: policy_server PORT STATE_DIR")?;
    let store = Arc::new(Store::open(state_dir.as_ref())?);
    let cfg = PolicyConfig {
        profiles: vec![ProfileConfig {
            name: "install".into(),
            description: Some("Debian installer".into()),
            kernel: Some("iso:debian-12/install.amd/vmlinuz".into()),
            initrd: vec!["iso:debian-12/install.amd/initrd.gz".into()],
            cmdline: Some("auto=true priority=critical url={{ http }}/config/{{ machine.mac }}/preseed.cfg hostname={{ machine.hostname }}".into()),
            script: None,
            action: None,
            pxelinux: None,
            pxelinux_config: None,
            loader: None,
        }],
        groups: vec![GroupConfig {
            name: "qemu".into(),
            profile: "install".into(),
            once: false,
            selectors: MatchConfig {
                mac: vec!["52:54:00:*".into()],
                ..MatchConfig::default()
            },
            loader: None,
            https_boot: None,
        }],
        boot: BootConfig::default(),
    };
    let policy = Arc::new(Policy::new(cfg, store).map_err(|p| format!("{p:?}"))?);
    let state = PolicyState::new(
        policy,
        chainboot_api::ApiAuth::new("bench", false),
        HttpBase::new(&format!("http://127.0.0.1:{port}"))?,
    );
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
    eprintln!("policy routes on http://127.0.0.1:{port}");
    axum::serve(
        listener,
        routes(state).into_make_service_with_connect_info::<SocketAddr>(),
    )
    .await?;
    Ok(())
}
