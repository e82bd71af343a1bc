//! `chainboot serve`: builds every enabled server from the config and runs them until SIGINT or
//! SIGTERM; in-flight transfers then get a few seconds to finish.

use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use std::sync::Arc;

use chainboot_events::EventLog;
use chainboot_ops::{routes as ops_routes, MachineEvents, Metrics, Observers, OpsState};
use chainboot_ra::{RaMode, RaServer, RaStats};
use futures::FutureExt;
use serde_json::json;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use anyhow::Context;
use chainboot_api::ApiAuth;
use chainboot_content::Root;
use chainboot_dhcp::{DhcpServer, ServerOptions};
use chainboot_http::{static_routes, HttpServer, StaticContent};
use chainboot_iso::IsoLibrary;
use chainboot_policy::http::{boot_routes, operator_routes};
use chainboot_policy::{HttpBase, PeerBases, Policy, PolicyState, TftpResolver};
use chainboot_store::limit::NewMachineLimiter;
use chainboot_store::Store;
use chainboot_tftp::TftpServer;

use crate::config::signed::SignedBinaries;
use crate::identity::{BootingMachines, HostAddressBook, NeighbourTable};
use crate::ipxe::IpxeBinaries;
use crate::resolver::{FirstStages, GrubAssets, PolicyLoader, TftpNamespace};
use crate::tls::Tls;
use crate::{config, interfaces};

/// How long in-flight transfers may run after a stop signal.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// `chainboot boot`: one kernel for every machine, instead of the config's profiles.
#[derive(Debug, Clone)]
pub struct QuickBoot {
    pub kernel: std::path::PathBuf,
    pub initrd: Vec<std::path::PathBuf>,
    pub cmdline: String,
}

pub fn run(path: Option<&Path>, quick: Option<QuickBoot>) -> ExitCode {
    let (cfg, source) = match config::load(path) {
        Ok(c) => c,
        Err(problems) => {
            for p in &problems.0 {
                error!("{p}");
            }
            eprintln!("{problems}");
            return ExitCode::from(1);
        }
    };
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match rt.block_on(serve(cfg, source, quick)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            error!("{e:#}");
            eprintln!("chainboot: {e:#}");
            ExitCode::from(1)
        }
    }
}

/// What every server shares: state, content, the boot policy and the observers.
struct Shared {
    store: Arc<Store>,
    events: Arc<EventLog>,
    /// iPXE's binaries and the signed chains' files.
    first_stages: Arc<FirstStages>,
    isos: Arc<IsoLibrary>,
    policy: Arc<Policy>,
    /// The URL scripts rendered for TFTP clients point at (no Host header to go by).
    base: HttpBase,
    token: String,
    auth: ApiAuth,
    observers: Arc<Observers>,
    /// The kernel's IPv4 neighbour table, asked one address at a time by the identity checks
    /// and the event log.
    neighbours: Arc<NeighbourTable>,
    /// The live fleet peers' boot listeners (the fleet loop publishes, scripts name them).
    peers: PeerBases,
}

/// The event log over the store. Boot clients' DHCP requests make machine records too, through
/// a limiter of their own with the same [machines] rates and half the table: a flood of forged
/// DHCP requests (any host can name any MAC) can neither use up the budget of machines that
/// prove themselves on /ipxe nor fill the table they need.
fn start_event_log(cfg: &config::Config, store: &Arc<Store>) -> Arc<EventLog> {
    let dhcp_records = chainboot_store::limit::MachineLimits {
        max_records: (cfg.machines.max_records / 2).max(1),
        ..cfg.machines.clone()
    };
    EventLog::start_recording_machines(
        store.clone(),
        cfg.events.clone(),
        Arc::new(NewMachineLimiter::new(
            dhcp_records,
            std::time::Instant::now(),
        )),
    )
}

/// The store, the event log, the iPXE binaries, the ISO images, the boot policy and the API
/// token, in the order they depend on each other.
fn open_shared(
    cfg: &config::Config,
    ifaces: &[interfaces::Interface],
    quick: Option<&QuickBoot>,
) -> anyhow::Result<Shared> {
    let store = Arc::new(
        Store::from_config(&cfg.store, &cfg.server.state_dir).with_context(|| {
            match cfg.store.backend {
                chainboot_store::StoreBackend::Sqlite => {
                    format!("[server] state_dir {}", cfg.server.state_dir.display())
                }
                chainboot_store::StoreBackend::Postgres => "[store] postgres".to_string(),
            }
        })?,
    );
    let events = start_event_log(cfg, &store);
    let neighbours = Arc::new(NeighbourTable::new(&interfaces::list().unwrap_or_default()));
    events.use_neighbours(neighbours.clone());
    let ipxe = Arc::new(IpxeBinaries::locate(&cfg.ipxe));
    for (name, path) in ipxe.found() {
        info!(binary = name, path = %path.display(), "iPXE first stage available");
    }
    let signed = Arc::new(SignedBinaries::locate(&cfg.secure_boot));
    for (name, path) in signed.found() {
        info!(binary = name, path = %path.display(), "Secure Boot chain file available (secureboot/)");
    }
    let first_stages = Arc::new(FirstStages { ipxe, signed });
    let isos = Arc::new(
        IsoLibrary::open(&cfg.iso).map_err(|e| anyhow::anyhow!("a required ISO image: {e}"))?,
    );
    for st in isos.status() {
        match &st.result {
            Ok((scheme, entries)) => {
                info!(iso = %st.name, path = %st.path.display(), ?scheme, entries, "ISO image indexed")
            }
            Err(e) => warn!(iso = %st.name, "ISO image not available: {e}"),
        }
    }
    // The advertised address, or the first served interface's.
    let http_port = cfg.http_port();
    let base_ip = cfg
        .server
        .advertise_addr()
        .or_else(|| ifaces.iter().find_map(|i| i.ipv4.first().map(|a| a.0)))
        .unwrap_or(std::net::Ipv4Addr::LOCALHOST);
    // The configured TLS port (the boot listener's, as bound, replaces it for HTTP requests).
    let base = HttpBase::new(&if http_port == 80 {
        format!("http://{base_ip}")
    } else {
        format!("http://{base_ip}:{http_port}")
    })
    .map_err(anyhow::Error::msg)?
    .with_https_port(cfg.boot_settings().https_port);
    let policy = match quick {
        Some(q) => {
            info!(kernel = %q.kernel.display(), "quick mode: every machine boots this kernel");
            Policy::quick(&q.kernel, &q.initrd, &q.cmdline, store.clone())
        }
        None => Policy::new(cfg.policy(), store.clone()),
    };
    let policy = Arc::new(policy.map_err(|problems| {
        let text: Vec<String> = problems.iter().map(ToString::to_string).collect();
        anyhow::anyhow!("boot policy: {}", text.join("; "))
    })?);
    let token = cfg
        .api
        .load_or_create_token(&cfg.server.state_dir)
        .context("API token")?;
    let token_path = cfg.api.token_path(&cfg.server.state_dir);
    chainboot_store::restrict_permissions(&token_path, chainboot_store::PRIVATE_FILE_MODE)
        .with_context(|| format!("API token {}", token_path.display()))?;
    let auth = ApiAuth::new(&token, cfg.api.read_requires_token);
    let observers = Arc::new(Observers {
        events: events.clone(),
        metrics: Arc::new(Metrics::default()),
        policy: policy.clone(),
    });
    Ok(Shared {
        store,
        events,
        first_stages,
        isos,
        policy,
        base,
        token,
        auth,
        observers,
        neighbours,
        peers: PeerBases::new(),
    })
}

type Tasks = JoinSet<(&'static str, std::io::Result<()>)>;

/// IPv6 router advertisements (iPXE's "Configuring" wait), one responder per interface.
fn start_ra(
    cfg: &config::Config,
    ifaces: &[interfaces::Interface],
    tasks: &mut Tasks,
    shutdown: &CancellationToken,
) -> Arc<RaStats> {
    let ra_stats = Arc::new(RaStats::default());
    if cfg.ipv6.router_advertisements == RaMode::Off {
        return ra_stats;
    }
    let advertisement = advertisement_for(cfg);
    for iface in ifaces {
        if let Ok(mut list) = ra_stats.interfaces.lock() {
            list.push(iface.name.clone());
        }
        let state = chainboot_ra::ipv6_state(&iface.name);
        if let Some(problem) = state.problem(&iface.name) {
            warn!(interface = %iface.name, "{problem}");
        }
        if matches!(state, chainboot_ra::Ipv6State::Disabled(_)) {
            continue;
        }
        match RaServer::bind(&iface.name, &cfg.ipv6, &advertisement, ra_stats.clone()) {
            Ok(server) => {
                let token = shutdown.clone();
                tasks.spawn(async move { ("ipv6-ra", server.run(token).await) });
            }
            Err(e) => {
                warn!(interface = %iface.name, "not answering IPv6 router solicitations: {e}")
            }
        }
    }
    ra_stats
}

/// The router advertisement matching `[dhcp6]`: with chainboot handing out addresses, M and O
/// with the DHCPv6 prefixes on-link; boot information only, O (iPXE then asks for it with an
/// Information-Request); DHCPv6 off, the empty advertisement that only ends iPXE's wait.
fn advertisement_for(cfg: &config::Config) -> chainboot_ra::Advertisement {
    use chainboot_dhcp6::Mode6;
    let lifetime = u16::try_from(cfg.ipv6.router_lifetime.as_secs()).unwrap_or(u16::MAX);
    match cfg.dhcp6.mode {
        Mode6::Off => chainboot_ra::Advertisement::default(),
        Mode6::BootInfo => chainboot_ra::Advertisement {
            other: true,
            router_lifetime: lifetime,
            ..Default::default()
        },
        Mode6::Server => chainboot_ra::Advertisement {
            managed: true,
            other: true,
            router_lifetime: lifetime,
            prefixes: cfg
                .dhcp6
                .subnet
                .iter()
                .map(|s| {
                    let valid = s
                        .valid_lifetime
                        .unwrap_or(cfg.dhcp6.valid_lifetime)
                        .as_secs();
                    let valid = u32::try_from(valid).unwrap_or(u32::MAX - 1);
                    (
                        s.prefix.network(),
                        s.prefix.prefix_len(),
                        valid,
                        valid / 8 * 5,
                    )
                })
                .collect(),
        },
    }
}

/// TFTP over the generated files, the iPXE binaries, the ISO images and `[tftp] root`.
fn bind_tftp(cfg: &config::Config, sh: &Shared) -> anyhow::Result<TftpServer> {
    let tftp_root = match &cfg.tftp.root {
        Some(dir) => Some(Arc::new(
            Root::new(dir).with_context(|| format!("[tftp] root {}", dir.display()))?,
        )),
        None => None,
    };
    let http_root = match &cfg.http.root {
        Some(dir) => Some(Arc::new(
            Root::new(dir).with_context(|| format!("[http] root {}", dir.display()))?,
        )),
        None => None,
    };
    let policy_tftp: Arc<dyn chainboot_content::Resolver> = Arc::new(
        TftpResolver::new(sh.policy.clone(), sh.base.clone())?
            .with_peer_bases(sh.peers.clone())
            .with_assets(Arc::new(GrubAssets {
                files: http_root,
                isos: sh.isos.clone(),
            })),
    );
    let tftp_namespace = Arc::new(TftpNamespace {
        generated: vec![policy_tftp],
        first_stages: sh.first_stages.clone(),
        isos: Some(sh.isos.clone()),
        root: tftp_root,
    });
    let tftp = TftpServer::bind(&cfg.tftp, tftp_namespace)
        .with_context(|| format!("TFTP cannot listen on {}", cfg.tftp.listen))?
        .with_observer(sh.observers.clone())
        .with_vouch(Arc::new(BootingMachines(sh.policy.clone())));
    info!(listen = %tftp.local_addr(), "TFTP listening");
    Ok(tftp)
}

/// DHCP; and, since the DHCP engine knows who holds which address, the policy's identity
/// checks (it acts for a MAC only on requests from that machine).
fn bind_dhcp(
    cfg: &config::Config,
    sh: &Shared,
    dhcp6: &chainboot_dhcp6::Dhcp6Server,
) -> anyhow::Result<DhcpServer> {
    let dhcp = DhcpServer::bind(
        cfg.dhcp.clone(),
        boot_settings(cfg, sh),
        sh.store.clone(),
        ServerOptions {
            interfaces: cfg.server.interfaces.clone(),
            observer: sh.observers.clone(),
        },
    )?;
    info!(mode = ?cfg.dhcp.mode, "DHCP ready");
    sh.policy.set_access(
        Arc::new(HostAddressBook {
            dhcp: (cfg.dhcp.mode == chainboot_dhcp::config::Mode::Server).then(|| dhcp.engine()),
            dhcp6: (cfg.dhcp6.mode == chainboot_dhcp6::Mode6::Server).then(|| dhcp6.engine()),
            neighbours: sh.neighbours.clone(),
        }),
        &capability_secret(sh)?,
    );
    Ok(dhcp)
}

/// What boot capabilities are keyed by: the API token; in a fleet the secret its servers
/// share through the database, so that a capability one server put in a machine's script is
/// good on the peer the machine goes on to when that server dies mid-boot.
fn capability_secret(sh: &Shared) -> anyhow::Result<String> {
    if !sh.store.is_shared() {
        return Ok(sh.token.clone());
    }
    chainboot_store::servers::fleet_secret(
        &sh.store,
        chainboot_store::servers::BOOT_CAPABILITY_SECRET,
        || {
            let mut bytes = [0u8; 32];
            rand::fill(&mut bytes);
            bytes.iter().map(|b| format!("{b:02x}")).collect()
        },
    )
    .context("the fleet's boot capability key")
}

/// `[boot]` for both DHCP servers, with the boot policy choosing each firmware client's loader
/// (groups' and profiles' `loader`, and Secure Boot refusals the event log saw).
fn boot_settings(cfg: &config::Config, sh: &Shared) -> chainboot_dhcp::BootSettings {
    let mut boot = cfg.boot_settings();
    boot.loaders.chooser = Some(Arc::new(PolicyLoader {
        policy: sh.policy.clone(),
        events: Some(sh.events.clone()),
    }));
    boot
}

/// DHCPv6 (`[dhcp6]`; bound but idle in mode `off`).
fn bind_dhcp6(cfg: &config::Config, sh: &Shared) -> anyhow::Result<chainboot_dhcp6::Dhcp6Server> {
    let dhcp6 = chainboot_dhcp6::Dhcp6Server::bind(
        cfg.dhcp6.clone(),
        boot_settings(cfg, sh),
        sh.store.clone(),
        sh.observers.clone(),
    )?;
    if cfg.dhcp6.mode != chainboot_dhcp6::Mode6::Off {
        info!(mode = ?cfg.dhcp6.mode, "DHCPv6 ready");
    }
    Ok(dhcp6)
}

/// The boot listener's router (static content and the machine routes) and the management
/// listener's (the operator's API, dashboard, metrics).
fn routers(
    cfg: &config::Config,
    sh: &Shared,
    ops: OpsState,
    https_port: Option<u16>,
) -> anyhow::Result<(axum::Router, axum::Router)> {
    let files = match &cfg.http.root {
        Some(dir) => Some(Arc::new(
            Root::new(dir).with_context(|| format!("[http] root {}", dir.display()))?,
        )),
        None => None,
    };
    let policy_state = PolicyState::new(sh.policy.clone(), sh.auth.clone(), sh.base.clone())
        .with_https_port(https_port)
        .with_peer_bases(sh.peers.clone())
        .with_hooks(Arc::new(MachineEvents {
            events: sh.events.clone(),
            store: sh.store.clone(),
            metrics: sh.observers.metrics.clone(),
        }))
        .with_limiter(Arc::new(NewMachineLimiter::new(
            cfg.machines.clone(),
            std::time::Instant::now(),
        )));
    let mut boot = static_routes(StaticContent {
        files,
        ipxe_bin: sh.first_stages.clone(),
        isos: sh.isos.clone(),
        listing: cfg.http.listing,
    })
    .merge(boot_routes(policy_state.clone()));
    if cfg.api.on_boot_listener {
        // Shared with the boot network: the token for everything, reads included.
        let strict = sh.auth.token_only();
        boot = boot
            .merge(operator_routes(
                policy_state.clone().with_auth(strict.clone()),
            ))
            .merge(ops_routes(OpsState {
                auth: strict,
                ..ops.clone()
            }));
    }
    let management = operator_routes(policy_state).merge(ops_routes(ops));
    Ok((boot, management))
}

async fn serve(
    cfg: config::Config,
    source: config::Source,
    quick: Option<QuickBoot>,
) -> anyhow::Result<()> {
    info!(config = %source, "chainboot starting");
    let started = std::time::Instant::now();
    let shutdown = CancellationToken::new();
    let mut tasks: Tasks = JoinSet::new();
    let ifaces = interfaces::select(&cfg.server.interfaces)?;
    let sh = open_shared(&cfg, &ifaces, quick.as_ref())?;
    preflight(&cfg, &source, &sh.isos).map_err(anyhow::Error::msg)?;
    tokio::spawn(expire_unproven_machines(
        sh.store.clone(),
        cfg.machines.unproven_expiry,
        shutdown.clone(),
    ));
    let ra_stats = start_ra(&cfg, &ifaces, &mut tasks, &shutdown);
    let servers = Servers::bind(&cfg, &sh, &ifaces)?;
    let fleet = start_fleet(&cfg, &sh, &servers, &ifaces, &shutdown);
    // SIGHUP hands a new [dhcp] to the same engine.
    let reloadable_dhcp = servers.dhcp.engine();
    let info = server_info(&cfg, &source, &ifaces, &servers.http, quick.is_some());
    let ops = ops_state(&cfg, &sh, &servers, ra_stats, info, started);
    let tls = servers.spawn(&cfg, &sh, ops, &mut tasks, &shutdown)?;
    let mut signals = Signals::new()?;
    let reloader = Reloader::spawn(
        source.clone(),
        cfg.clone(),
        sh.policy.clone(),
        reloadable_dhcp,
        sh.isos.clone(),
        quick.is_some(),
    )?;
    // From here on a SIGHUP reloads instead of ending the process (tests wait for this line).
    info!("ready: SIGHUP reloads the config, SIGINT or SIGTERM stops");
    crate::service_manager::ready();
    let result = until_stopped(&mut signals, &mut tasks, &tls, &reloader).await;
    shutdown.cancel();
    drain(&cfg, tasks, &sh.events, fleet).await;
    info!("chainboot stopped");
    result
}

/// Every server bound to its sockets, not running yet.
struct Servers {
    tftp: TftpServer,
    dhcp6: chainboot_dhcp6::Dhcp6Server,
    dhcp: DhcpServer,
    tls: Tls,
    /// The boot listener.
    http: HttpServer,
}

impl Servers {
    /// TFTP, DHCPv6, DHCP (whose identity checks need DHCPv6's leases), TLS and the boot
    /// listener, in that order.
    fn bind(
        cfg: &config::Config,
        sh: &Shared,
        ifaces: &[interfaces::Interface],
    ) -> anyhow::Result<Servers> {
        let tftp = bind_tftp(cfg, sh)?;
        let dhcp6 = bind_dhcp6(cfg, sh)?;
        let dhcp = bind_dhcp(cfg, sh, &dhcp6)?;
        let tls = Tls::start(cfg, ifaces)?;
        let http = bind_http(cfg, sh, &tls)?;
        Ok(Servers {
            tftp,
            dhcp6,
            dhcp,
            tls,
            http,
        })
    }

    /// Puts the routers on their listeners and runs every server as a task of `tasks` until
    /// `shutdown`. The TLS state is handed back: SIGHUP re-reads its certificates.
    fn spawn(
        self,
        cfg: &config::Config,
        sh: &Shared,
        ops: OpsState,
        tasks: &mut Tasks,
        shutdown: &CancellationToken,
    ) -> anyhow::Result<Tls> {
        let https_port = self.http.tls_local_addrs().first().map(|a| a.port());
        let (mut router, management) = routers(cfg, sh, ops, https_port)?;
        if let Some(lab) = &self.tls.lab {
            router = router.merge(chainboot_http::lab::ca_routes(lab));
        }
        self.tls.watch(shutdown);
        if let Some(server) = bind_management(cfg, self.tls.api.clone())? {
            let token = shutdown.clone();
            tasks.spawn(async move { ("api", server.run(management, token).await) });
        }
        for (name, fut) in [
            ("tftp", self.tftp.run(shutdown.clone()).boxed()),
            ("http", self.http.run(router, shutdown.clone()).boxed()),
            (
                "dhcp",
                self.dhcp
                    .run(shutdown.clone())
                    .map(|r| r.map_err(std::io::Error::other))
                    .boxed(),
            ),
            (
                "dhcp6",
                self.dhcp6
                    .run(shutdown.clone())
                    .map(|r| r.map_err(std::io::Error::other))
                    .boxed(),
            ),
        ] {
            tasks.spawn(async move { (name, fut.await) });
        }
        Ok(self.tls)
    }
}

/// The boot listener: HTTP, and HTTPS where `[http] tls_listen` says.
fn bind_http(cfg: &config::Config, sh: &Shared, tls: &Tls) -> anyhow::Result<HttpServer> {
    // Many short answers, no long-lived ones: half-close spares each request a read buffer.
    let mut http = HttpServer::bind(&cfg.http)
        .context("HTTP cannot listen")?
        .with_observer(sh.observers.clone())
        .with_half_close();
    if let Some(t) = &tls.http {
        http = http.with_tls(t.clone());
    }
    for addr in http.local_addrs() {
        info!(listen = %addr, "HTTP listening");
    }
    for addr in http.tls_local_addrs() {
        info!(listen = %addr, "HTTPS listening");
    }
    Ok(http)
}

/// On the fleet's PostgreSQL store: the loop that heartbeats, shares the DHCP and DHCPv6
/// clients and pools with the live peers and loads their leases.
fn start_fleet(
    cfg: &config::Config,
    sh: &Shared,
    servers: &Servers,
    ifaces: &[interfaces::Interface],
    shutdown: &CancellationToken,
) -> Option<tokio::task::JoinHandle<()>> {
    if cfg.store.backend != chainboot_store::StoreBackend::Postgres {
        return None;
    }
    let engine = (cfg.dhcp.mode != chainboot_dhcp::Mode::Off)
        .then(|| (servers.dhcp.engine(), servers.dhcp.takeover()));
    let engine6 = (cfg.dhcp6.mode != chainboot_dhcp6::Mode6::Off)
        .then(|| (servers.dhcp6.engine(), servers.dhcp6.takeover()));
    // The server identifier of a reply is the address of the interface it leaves from.
    let addresses = ifaces
        .iter()
        .flat_map(|i| i.ipv4.iter().map(|(a, _)| *a))
        .collect();
    // Where machines reach this server's boot listener (the TLS port as bound, as the script
    // routes say it), for the peers' scripts to name.
    sh.store
        .set_boot_base(Some(chainboot_store::servers::BootBase {
            http: sh.base.to_string(),
            https_port: servers
                .http
                .tls_local_addrs()
                .first()
                .map(|a| a.port())
                .filter(|p| *p != 0),
        }));
    let member = crate::fleet::Member {
        engine,
        engine6,
        addresses,
        peer_bases: sh.peers.clone(),
    };
    Some(tokio::spawn(crate::fleet::run(
        sh.store.clone(),
        member,
        sh.events.clone(),
        cfg.store.clone(),
        shutdown.clone(),
    )))
}

/// What the API's `/api/v1/info` says about this server.
fn server_info(
    cfg: &config::Config,
    source: &config::Source,
    ifaces: &[interfaces::Interface],
    http: &HttpServer,
    quick: bool,
) -> serde_json::Value {
    let addrs = |a: Vec<std::net::SocketAddr>| a.iter().map(|a| a.to_string()).collect::<Vec<_>>();
    json!({
        "config": source.to_string(),
        "dhcp_mode": format!("{:?}", cfg.dhcp.mode).to_lowercase(),
        "dhcp6_mode": format!("{:?}", cfg.dhcp6.mode).to_lowercase(),
        "interfaces": ifaces.iter().map(|i| &i.name).collect::<Vec<_>>(),
        "tftp": cfg.tftp.listen.to_string(),
        "http": addrs(http.local_addrs()),
        "https": addrs(http.tls_local_addrs()),
        "quick_mode": quick,
    })
}

/// The operator's view of the running servers: their counters and engines for the API and
/// `/metrics`.
fn ops_state(
    cfg: &config::Config,
    sh: &Shared,
    servers: &Servers,
    ra: Arc<RaStats>,
    info: serde_json::Value,
    started: std::time::Instant,
) -> OpsState {
    OpsState {
        store: sh.store.clone(),
        events: sh.events.clone(),
        metrics: sh.observers.metrics.clone(),
        dhcp_counters: Some(servers.dhcp.counters()),
        dhcp_engine: Some(servers.dhcp.engine()),
        dhcp6_counters: (cfg.dhcp6.mode != chainboot_dhcp6::Mode6::Off)
            .then(|| servers.dhcp6.counters()),
        tftp: Some(servers.tftp.stats()),
        http: Some(servers.http.stats()),
        ra: Some(ra),
        info: Arc::new(info),
        started,
        peer_timeout: cfg.store.peer_timeout,
        auth: sh.auth.clone(),
    }
}

/// Waits for SIGINT or SIGTERM (`Ok`) or a server that ends (`Err`); a SIGHUP re-reads the
/// TLS certificates and asks the reloader for the config.
async fn until_stopped(
    signals: &mut Signals,
    tasks: &mut Tasks,
    tls: &Tls,
    reloader: &Reloader,
) -> anyhow::Result<()> {
    loop {
        tokio::select! {
            sig = signals.next() => match sig {
                Signal::Stop(name) => {
                    info!("{name}: shutting down");
                    crate::service_manager::stopping();
                    return Ok(());
                }
                Signal::Reload => {
                    tls.reload();
                    reloader.request()
                }
            },
            Some(done) = tasks.join_next() => return match done {
                Ok((name, Ok(()))) => Err(anyhow::anyhow!("{name} server stopped unexpectedly")),
                Ok((name, Err(e))) => Err(anyhow::anyhow!("{name} server failed: {e}")),
                Err(e) => Err(anyhow::anyhow!("a server task panicked: {e}")),
            },
        }
    }
}

/// After shutdown: in-flight transfers get a grace period, then everything is dropped; the
/// event log writes what it holds and the fleet loop ends.
async fn drain(
    cfg: &config::Config,
    mut tasks: Tasks,
    events: &EventLog,
    fleet: Option<tokio::task::JoinHandle<()>>,
) {
    let grace = cfg.tftp.shutdown_grace.max(SHUTDOWN_GRACE) + Duration::from_secs(1);
    let all_done = async { while tasks.join_next().await.is_some() {} };
    if tokio::time::timeout(grace, all_done).await.is_err() {
        warn!("some transfers did not finish within {grace:?}; stopping anyway");
    }
    events.flush(Duration::from_secs(2));
    if let Some(fleet) = fleet {
        let _ = fleet.await;
    }
}

/// Forgets unproven machine records (see `Store::machine_prune_unproven`) once a minute.
async fn expire_unproven_machines(
    store: Arc<Store>,
    expiry: Duration,
    shutdown: CancellationToken,
) {
    let mut every = tokio::time::interval(Duration::from_secs(60));
    loop {
        tokio::select! {
            _ = every.tick() => {}
            _ = shutdown.cancelled() => return,
        }
        let store = store.clone();
        let older_than = chainboot_events::now_ms() - expiry.as_millis() as i64;
        match tokio::task::spawn_blocking(move || store.machine_prune_unproven(older_than)).await {
            Ok(Ok(0)) => {}
            Ok(Ok(n)) => info!(forgotten = n, "unproven machine records expired"),
            Ok(Err(e)) => warn!("expiring unproven machines failed: {e}"),
            Err(e) => warn!("expiring unproven machines: task failed: {e}"),
        }
    }
}

/// The management listener (`[api] listen`): the operator's API, dashboard, event stream and
/// metrics, off the boot network. Its limits are the boot listener's.
fn bind_management(
    cfg: &config::Config,
    tls: Option<Arc<chainboot_http::TlsServer>>,
) -> anyhow::Result<Option<HttpServer>> {
    if cfg.api.listen.is_empty() {
        return Ok(None);
    }
    let mut http = cfg.http.clone();
    let addrs =
        chainboot_http::Listen::Many(cfg.api.listen.iter().map(|a| a.to_string()).collect());
    // With [api] tls every management address speaks TLS only.
    (http.listen, http.tls_listen, http.tls) = match &tls {
        Some(_) => (
            chainboot_http::Listen::Many(Vec::new()),
            addrs,
            cfg.api.tls.clone(),
        ),
        None => (addrs, chainboot_http::Listen::Many(Vec::new()), None),
    };
    // Which URLs boot clients get is the boot listener's business; here it would only fail
    // validation on a management listener without TLS.
    http.https_for_http_boot = false;
    // Operator traffic: one serving thread is plenty.
    let mut server = HttpServer::bind(&http)
        .context("the API cannot listen ([api] listen)")?
        .with_threads(1);
    if let Some(tls) = tls {
        server = server.with_tls(tls);
    }
    for addr in server.local_addrs() {
        info!(listen = %addr, "API listening");
    }
    for addr in server.tls_local_addrs() {
        info!(listen = %addr, tls = true, "API listening");
    }
    Ok(Some(server))
}

enum Signal {
    Stop(&'static str),
    Reload,
}

struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
}

impl Signals {
    fn new() -> std::io::Result<Signals> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(Signals {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
            hup: signal(SignalKind::hangup())?,
        })
    }

    async fn next(&mut self) -> Signal {
        tokio::select! {
            _ = self.term.recv() => Signal::Stop("SIGTERM"),
            _ = self.int.recv() => Signal::Stop("SIGINT"),
            _ = self.hup.recv() => Signal::Reload,
        }
    }
}

/// SIGHUP's reload, on a thread of its own: reading the file and compiling the policy never
/// hold up the signal loop (a config on a hung mount must not stall SIGTERM). One reload runs
/// at a time; SIGHUPs that arrive meanwhile fold into one more reload after it, which reads the
/// file as it is then, so the last change is never missed.
struct Reloader {
    queue: std::sync::mpsc::SyncSender<()>,
}

impl Reloader {
    fn spawn(
        source: config::Source,
        current: config::Config,
        policy: Arc<Policy>,
        dhcp: Arc<parking_lot::Mutex<chainboot_dhcp::Engine>>,
        isos: Arc<IsoLibrary>,
        quick: bool,
    ) -> std::io::Result<Reloader> {
        let (queue, requests) = std::sync::mpsc::sync_channel::<()>(1);
        std::thread::Builder::new()
            .name("config-reload".into())
            .spawn(move || {
                let mut current = current;
                // Ends when the server drops the `Reloader`.
                while requests.recv().is_ok() {
                    reload(&source, &mut current, &policy, &dhcp, &isos, quick);
                }
            })?;
        Ok(Reloader { queue })
    }

    fn request(&self) {
        use std::sync::mpsc::TrySendError;
        match self.queue.try_send(()) {
            Ok(()) => {}
            Err(TrySendError::Full(())) => {
                info!("SIGHUP: a reload is already pending; it will read the file as it is then")
            }
            Err(TrySendError::Disconnected(())) => {
                error!("SIGHUP: the reload thread has stopped; restart to change the config")
            }
        }
    }
}

/// SIGHUP: re-read the config file. A config with any problem is refused as a whole and the
/// running one stays. The boot policy (profiles, groups, `[boot]`) and `[dhcp]` (subnets,
/// pools, hosts, options, limits; not its mode or ports, which are sockets) change live; other
/// sections (listen addresses, ...) are reported as needing a restart.
fn reload(
    source: &config::Source,
    current: &mut config::Config,
    policy: &Policy,
    dhcp: &parking_lot::Mutex<chainboot_dhcp::Engine>,
    isos: &IsoLibrary,
    quick: bool,
) {
    let config::Source::File(path) = source else {
        warn!("SIGHUP: running on the embedded default; there is no file to reload");
        return;
    };
    let new = match config::load(Some(path)) {
        Ok((c, _)) => c,
        Err(problems) => {
            error!(
                "SIGHUP: {} refused, still serving the previous config: {problems}",
                path.display()
            );
            return;
        }
    };
    let changed = config::changed_sections(current, &new);
    if changed.is_empty() {
        info!("SIGHUP: {} reloaded, nothing changed", path.display());
        return;
    }
    // [dhcp] is live unless the sockets would change.
    let dhcp_live = new.dhcp.mode == current.dhcp.mode && new.dhcp.ports == current.dhcp.ports;
    let (live, restart): (Vec<&str>, Vec<&str>) = changed
        .iter()
        .partition(|s| matches!(**s, "profile" | "group" | "boot") || (**s == "dhcp" && dhcp_live));
    if live.contains(&"dhcp") {
        dhcp.lock().reconfigure(new.dhcp.clone());
        current.dhcp = new.dhcp.clone();
    }
    let policy_changed = live.iter().any(|s| *s != "dhcp");
    if policy_changed && !quick {
        if let Err(e) = preflight(&new, source, isos) {
            error!("SIGHUP: boot policy refused, still serving the previous one: {e}");
            return;
        }
        if let Err(problems) = policy.reload(new.policy()) {
            let problems: Vec<String> = problems.iter().map(ToString::to_string).collect();
            error!(
                "SIGHUP: boot policy refused, still serving the previous one: {}",
                problems.join("; ")
            );
            return;
        }
        current.profile = new.profile.clone();
        current.group = new.group.clone();
        current.boot = new.boot.clone();
    }
    if !live.is_empty() {
        info!(sections = ?live, "SIGHUP: config reloaded; these sections changed and are live");
    }
    if !restart.is_empty() {
        warn!(sections = ?restart, "SIGHUP: these sections changed but take effect only after a restart");
    }
}

/// Resolves what the config's profiles refer to (assets, `/config` files, templates) and logs
/// each problem loudly: a machine booting such a profile fails. `Err` when a reference into a
/// `required` ISO image fails: the operator said the server is useless without it.
fn preflight(
    cfg: &config::Config,
    source: &config::Source,
    isos: &IsoLibrary,
) -> Result<(), String> {
    let (file, text) = config::preflight::source_text(source);
    let mut required = Vec::new();
    for f in config::preflight::check(cfg, &file, &text, isos) {
        match f.level {
            config::preflight::Level::Error => {
                error!("a machine booting this will fail: {}", f.problem)
            }
            config::preflight::Level::Warning => warn!("{}", f.problem),
        }
        if f.required {
            required.push(f.problem.to_string());
        }
    }
    if required.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "a reference into a required ISO image does not resolve: {}",
            required.join("; ")
        ))
    }
}
