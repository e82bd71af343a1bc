//! A bare chainboot HTTP server for bench/http/run.sh: `[http] root` under /files/ and one
//! ISO image under /iso/bench/, nothing else (no DHCP/TFTP, no access-log subscriber, as
//! nginx runs with `access_log off` in the same benchmark).
//!
//! Usage: http-bench-server LISTEN_ADDR ROOT_DIR ISO_PATH

use std::sync::Arc;

use chainboot_content::Root;
use chainboot_http::{static_routes, HttpConfig, HttpServer, Listen, StaticContent};
use chainboot_iso::{IsoConfig, IsoLibrary};
use tokio_util::sync::CancellationToken;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let [_, listen, root, iso] = args.as_slice() else {
        return Err("usage: http-bench-server LISTEN_ADDR ROOT_DIR ISO_PATH".into());
    };
    let config = HttpConfig {
        listen: Listen::One(listen.clone()),
        root: Some(root.into()),
        ..HttpConfig::default()
    };
    let isos = IsoLibrary::open(&[IsoConfig {
        name: "bench".into(),
        path: iso.into(),
        required: true,
    }])?;
    let server = HttpServer::bind(&config)?;
    let router = static_routes(StaticContent {
        files: Some(Arc::new(Root::new(root)?)),
        ipxe_bin: Arc::new(Root::new(root)?),
        isos: Arc::new(isos),
        listing: false,
    });
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async move {
        let stop = CancellationToken::new();
        let s2 = stop.clone();
        tokio::spawn(async move {
            let _ = tokio::signal::ctrl_c().await;
            s2.cancel();
        });
        eprintln!("listening on {:?}", server.local_addrs());
        server.run(router, stop).await
    })?;
    Ok(())
}
