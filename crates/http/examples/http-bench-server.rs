//! A bare chainboot HTTP server for bench/http/run.sh: `[http] root` under /files/ and one
//! ISO image under /iso/bench/, nothing else (no DHCP/TFTP, no access-log subscriber, as
//! nginx runs with `access_log off` in the same benchmark).
//!
//! `/gen/1k` answers 1 KB generated per request through `content_response`, the path a
//! rendered iPXE script takes (the target: script req/s >= 0.8x nginx small static file).
//!
//! Usage: http-bench-server LISTEN_ADDR ROOT_DIR ISO_PATH

use std::sync::Arc;

use axum::http::{HeaderMap, Method};
use chainboot_content::{Content, Root};
use chainboot_http::{
    content_response, static_routes, HttpConfig, HttpServer, Listen, StaticContent,
};
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
        // Every benchmark connection comes from 127.0.0.1.
        max_connections_per_client: HttpConfig::default().max_connections,
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
    })
    .route(
        "/gen/1k",
        axum::routing::get(|method: Method, headers: HeaderMap| async move {
            // Rendered per request, as a boot script would be.
            let mut script = String::with_capacity(1024);
            script.push_str("#!ipxe\n");
            while script.len() < 1000 {
                script.push_str("echo generated line for the benchmark\n");
            }
            script.truncate(1023);
            script.push('\n');
            content_response(&method, &headers, Content::from_bytes(script), "text/plain")
        }),
    );
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
