//! `chainboot check`: every problem in the config at once, or a summary of what would be
//! served and from where.

use std::path::Path;
use std::process::ExitCode;

use crate::config;
use crate::ipxe::IpxeBinaries;

/// Errors and warnings found so far.
#[derive(Default)]
struct Tally {
    errors: usize,
    warnings: usize,
}

pub fn run(path: Option<&Path>) -> ExitCode {
    let (cfg, source) = match config::load(path) {
        Ok(c) => c,
        Err(problems) => {
            for p in &problems.0 {
                println!("error: {p}");
            }
            println!(
                "{} problem{} found",
                problems.0.len(),
                if problems.0.len() == 1 { "" } else { "s" }
            );
            return ExitCode::from(1);
        }
    };
    let mut t = Tally::default();
    println!("config: {source}");
    println!("state_dir: {}", cfg.server.state_dir.display());
    println!(
        "advertise: {}",
        cfg.server.advertise_addr().map_or_else(
            || "auto (address of the interface each request arrives on)".to_string(),
            |a| a.to_string()
        )
    );
    print_ipxe(&cfg, &mut t);
    let isos = chainboot_iso::IsoLibrary::new(&cfg.iso);
    print_isos(&cfg, &isos, &mut t);
    print_servers(&cfg);
    t.errors += print_store(&cfg);
    print_tls(&cfg);
    print_ipv6(&cfg, &mut t);
    print_host(&cfg, &mut t);
    // What profiles refer to, resolved now rather than at a machine's boot.
    let (file, text) = config::preflight::source_text(&source);
    for f in &config::preflight::check(&cfg, &file, &text, &isos) {
        match f.level {
            config::preflight::Level::Error => {
                t.errors += 1;
                println!("error: {}", f.problem);
            }
            config::preflight::Level::Warning => {
                t.warnings += 1;
                println!("warning: {}", f.problem);
            }
        }
    }
    if t.warnings > 0 {
        println!(
            "{} warning{}",
            t.warnings,
            if t.warnings == 1 { "" } else { "s" }
        );
    }
    if t.errors > 0 {
        println!(
            "{} problem{} found",
            t.errors,
            if t.errors == 1 { "" } else { "s" }
        );
        return ExitCode::from(1);
    }
    println!("ok");
    ExitCode::SUCCESS
}

/// The iPXE binaries found and missing; an error for each one the config needs and lacks.
fn print_ipxe(cfg: &config::Config, t: &mut Tally) {
    let bins = IpxeBinaries::locate(&cfg.ipxe);
    let dirs: Vec<String> = bins
        .searched
        .iter()
        .map(|d| d.display().to_string())
        .collect();
    println!("iPXE binaries (searched {}):", dirs.join(", "));
    for (name, path, real) in bins.found_with_links() {
        if path == real {
            println!("  ok       {name:<16} {}", path.display());
        } else {
            println!(
                "  ok       {name:<16} {} (-> {})",
                path.display(),
                real.display()
            );
        }
    }
    for known in bins.missing() {
        println!(
            "  missing  {:<16} for {}: {}",
            known.name, known.for_whom, known.package
        );
    }
    for name in ["undionly.kpxe", cfg.ipxe.efi_x64_name()] {
        if !bins.has(name) {
            println!("error: {name} is needed and was not found");
            t.errors += 1;
        }
    }
}

/// Each `[[iso]]` image indexed, or why not (an error).
fn print_isos(cfg: &config::Config, isos: &chainboot_iso::IsoLibrary, t: &mut Tally) {
    if cfg.iso.is_empty() {
        return;
    }
    println!("ISO images:");
    for st in isos.status() {
        match &st.result {
            Ok((scheme, entries)) => println!(
                "  ok       {:<16} {} ({entries} entries, {})",
                st.name,
                st.path.display(),
                match scheme {
                    chainboot_iso::NameScheme::RockRidge => "Rock Ridge names",
                    chainboot_iso::NameScheme::Joliet => "Joliet names",
                    chainboot_iso::NameScheme::Iso9660 =>
                        "plain ISO 9660 names, matched in their upper-case 8.3 forms",
                }
            ),
            Err(e) => {
                println!(
                    "error: iso {}: {e}{}",
                    st.name,
                    if st.required {
                        " (required: the server will not start)"
                    } else {
                        " (the server starts without it)"
                    }
                );
                t.errors += 1;
            }
        }
    }
}

/// The boot policy's size and the DHCP and DHCPv6 modes.
fn print_servers(cfg: &config::Config) {
    let profiles = cfg.profile.len();
    let groups = cfg.group.len();
    println!(
        "boot policy: {profiles} profile{}, {groups} group{}, default {}",
        if profiles == 1 { "" } else { "s" },
        if groups == 1 { "" } else { "s" },
        cfg.boot.default
    );
    let mode = match cfg.dhcp.mode {
        chainboot_dhcp::Mode::Proxy => "proxy",
        chainboot_dhcp::Mode::Server => "server",
        chainboot_dhcp::Mode::Off => "off",
    };
    println!("DHCP: {mode} mode");
    if cfg.dhcp6.mode != chainboot_dhcp6::Mode6::Off {
        let prefixes: Vec<String> = cfg
            .dhcp6
            .subnet
            .iter()
            .map(|s| s.prefix.to_string())
            .collect();
        println!(
            "DHCPv6: {} mode, prefixes {}",
            cfg.dhcp6.mode.as_str(),
            if prefixes.is_empty() {
                "none".to_string()
            } else {
                prefixes.join(", ")
            }
        );
    }
}

/// Whether router advertisements can be sent on each boot interface (a warning if not).
fn print_ipv6(cfg: &config::Config, t: &mut Tally) {
    if cfg.ipv6.router_advertisements == chainboot_ra::RaMode::Off {
        return;
    }
    match crate::interfaces::select(&cfg.server.interfaces) {
        Ok(list) => {
            for iface in list {
                match chainboot_ra::ipv6_state(&iface.name).problem(&iface.name) {
                    Some(p) => {
                        t.warnings += 1;
                        println!("warning: {p}");
                    }
                    None => println!(
                        "IPv6 on {}: router solicitations will be answered",
                        iface.name
                    ),
                }
            }
        }
        Err(e) => println!("warning: [server] interfaces: {e}"),
    }
}

/// The host's cheap checks (`chainboot doctor` has them all): warnings here, since `check`
/// also runs beside a running server or as another user than the service's.
fn print_host(cfg: &config::Config, t: &mut Tally) {
    let mut host = crate::doctor::check_ports(cfg);
    host.push(crate::doctor::check_state_dir(cfg));
    host.push(crate::doctor::check_clock());
    for mut f in host {
        if f.level >= crate::doctor::Level::Warning {
            t.warnings += 1;
            f.level = crate::doctor::Level::Warning;
            println!("{}", f.check_line());
        }
    }
}

/// The store: SQLite's file, or PostgreSQL connected to (without migrating anything), its
/// schema version and the live servers of the fleet. Returns the number of errors.
fn print_store(cfg: &config::Config) -> usize {
    use chainboot_store::{servers, Store, SCHEMA_VERSION};
    let store = match Store::inspect(&cfg.store) {
        Ok(None) => {
            println!(
                "store: sqlite {}",
                cfg.server
                    .state_dir
                    .join(chainboot_store::DB_FILE)
                    .display()
            );
            return 0;
        }
        Ok(Some(store)) => store,
        Err(e) => {
            println!("error: [store] {e}");
            return 1;
        }
    };
    println!(
        "store: postgres {} (this server: {})",
        store.location(),
        store.server_name()
    );
    match store.compatible_schema() {
        Ok(v) if v == SCHEMA_VERSION => println!("  schema version {v} (current)"),
        Ok(0) => println!("  schema version 0 (empty database: created at the first start)"),
        Ok(v) => println!("  schema version {v} (migrated to {SCHEMA_VERSION} at the next start)"),
        Err(e) => {
            println!("error: [store] {e}");
            return 1;
        }
    }
    let within = cfg.store.peer_timeout.as_millis() as i64;
    match servers::all(&store) {
        Ok(list) if list.is_empty() => println!("  live servers: none"),
        Ok(list) => {
            println!("  servers (live: heartbeat within {within} ms, connected):");
            for s in list {
                println!(
                    "    {:<8} {:<24} version {}, last heartbeat {} ms ago{}",
                    if s.is_live(within) { "live" } else { "silent" },
                    s.name,
                    s.version,
                    s.age_ms,
                    if s.connected { "" } else { ", no session open" }
                );
            }
        }
        // A database not yet migrated has no table of servers.
        Err(_) => println!("  live servers: none (no servers table yet)"),
    }
    0
}

/// Which listeners speak TLS and with what certificate (the files were checked by the config
/// load already: a bad pair never gets here).
fn print_tls(cfg: &config::Config) {
    use chainboot_http::TlsSource;
    let http = Some(&cfg.http.tls).filter(|_| !cfg.http.tls_listen.as_list().is_empty());
    let api = Some(&cfg.api.tls).filter(|_| !cfg.api.listen.is_empty());
    for (name, source) in [("http", http), ("api", api)] {
        match source.and_then(|s| s.as_ref()) {
            None => {}
            Some(TlsSource::Lab) => {
                let ca = cfg.server.state_dir.join("tls").join("ca.crt");
                match chainboot_http::tls_client::file_fingerprint(&ca) {
                    Ok(sha) => println!("TLS {name}: lab CA {} (sha256 {sha})", ca.display()),
                    Err(_) => println!(
                        "TLS {name}: lab CA, made in {} at first start",
                        ca.display()
                    ),
                }
            }
            Some(TlsSource::Files(f)) => match chainboot_http::tls::load_pair(f) {
                Ok((_, info)) => println!(
                    "TLS {name}: {} serial {} sha256 {} valid until {}",
                    f.cert.display(),
                    info.serial,
                    info.sha256,
                    info.not_after
                ),
                Err(e) => println!("TLS {name}: {e}"),
            },
        }
    }
    if let Some(ca) = &cfg.api.client_ca {
        println!(
            "TLS api: client certificates required, signed by {}",
            ca.display()
        );
    }
}
