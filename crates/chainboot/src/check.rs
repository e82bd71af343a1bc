//! `chainboot check`: every problem in the config at once, or a summary of what would be
//! served and from where.

use std::path::Path;
use std::process::ExitCode;

use crate::config;
use crate::ipxe::IpxeBinaries;

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
    let mut errors = 0usize;
    println!("config: {source}");
    println!("state_dir: {}", cfg.server.state_dir.display());
    println!(
        "advertise: {}",
        cfg.server.advertise_addr().map_or_else(
            || "auto (address of the interface each request arrives on)".to_string(),
            |a| a.to_string()
        )
    );
    let bins = IpxeBinaries::locate(&cfg.ipxe);
    let dirs: Vec<String> = bins
        .searched
        .iter()
        .map(|d| d.display().to_string())
        .collect();
    println!("iPXE binaries (searched {}):", dirs.join(", "));
    for (name, path) in bins.found() {
        println!("  ok       {name:<16} {}", path.display());
    }
    for known in bins.missing() {
        println!(
            "  missing  {:<16} for {}; get it from {}",
            known.name, known.for_whom, known.package
        );
    }
    let wanted = ["undionly.kpxe", cfg.ipxe.efi_x64_name()];
    for name in wanted {
        if !bins.has(name) {
            println!("error: {name} is needed and was not found");
            errors += 1;
        }
    }
    if !cfg.iso.is_empty() {
        println!("ISO images:");
        let isos = chainboot_iso::IsoLibrary::new(&cfg.iso);
        for st in isos.status() {
            match &st.result {
                Ok((scheme, entries)) => println!(
                    "  ok       {:<16} {} ({entries} entries, {scheme:?} names)",
                    st.name,
                    st.path.display()
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
                    errors += 1;
                }
            }
        }
    }
    let profiles = cfg.profile.len();
    let groups = cfg.group.len();
    println!(
        "boot policy: {profiles} profile{}, {groups} group{}, default {}",
        if profiles == 1 { "" } else { "s" },
        if groups == 1 { "" } else { "s" },
        cfg.boot.default
    );
    println!("DHCP: {:?} mode", cfg.dhcp.mode);
    if errors > 0 {
        println!(
            "{errors} problem{} found",
            if errors == 1 { "" } else { "s" }
        );
        return ExitCode::from(1);
    }
    println!("ok");
    ExitCode::SUCCESS
}
