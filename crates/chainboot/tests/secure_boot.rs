//! The signed chains as a client and an operator meet them: `check` on kernels signed with
//! `sbsign` and unsigned ones, and a live server handing out shim, GRUB, GRUB's configs and the
//! kernel over TFTP to atftp's client, the way shim and GRUB fetch them.

mod common;

use std::path::Path;
use std::process::Command;

use common::*;

/// A copy of `src` signed with OVMF's snakeoil test key (standing for a site's own key).
fn sbsign(dir: &Path, src: &Path, out: &Path) {
    let key = dir.join("snakeoil.key");
    if !key.exists() {
        let st = Command::new("openssl")
            .args(["pkey", "-in", "/usr/share/ovmf/PkKek-1-snakeoil.key"])
            .args(["-passin", "pass:snakeoil", "-out"])
            .arg(&key)
            .status()
            .expect("openssl");
        assert!(st.success(), "decrypting the snakeoil key (package ovmf)");
    }
    let st = Command::new("sbsign")
        .arg("--key")
        .arg(&key)
        .args(["--cert", "/usr/share/ovmf/PkKek-1-snakeoil.pem", "--output"])
        .arg(out)
        .arg(src)
        .output()
        .expect("sbsign (package sbsigntool)");
    assert!(st.status.success(), "{st:?}");
}

/// atftp, because tftp-hpa's client reads the colons of `grub/mac/52:54:...` as `host:file`.
fn tftp_get(host: &str, port: &str, path: &str, out: &Path) -> bool {
    let _ = std::fs::remove_file(out);
    Command::new("atftp")
        .args(["--get", "-r", path, "-l"])
        .arg(out)
        .args([host, port])
        .output()
        .expect("atftp (package atftp)")
        .status
        .success()
        && out.exists()
}

#[test]
fn check_warns_about_unsigned_kernels_only_where_a_signed_chain_reaches_them() {
    let dir = tempfile::tempdir().unwrap();
    let www = dir.path().join("www");
    std::fs::create_dir_all(&www).unwrap();
    // iPXE's EFI build is an unsigned PE image, like an unsigned kernel's EFI stub.
    std::fs::copy("/usr/lib/ipxe/ipxe.efi", www.join("unsigned.efi")).unwrap();
    sbsign(
        dir.path(),
        &www.join("unsigned.efi"),
        &www.join("signed.efi"),
    );
    std::fs::write(www.join("not-pe"), b"#!/bin/sh\n").unwrap();
    let (cfg, _) = loopback_config(
        dir.path(),
        "[[profile]]\nname = \"sb-unsigned\"\nkernel = \"unsigned.efi\"\nloader = \"grub\"\n\
         [[profile]]\nname = \"sb-signed\"\nkernel = \"signed.efi\"\nloader = \"grub\"\n\
         [[profile]]\nname = \"sb-shim\"\nkernel = \"not-pe\"\nloader = \"ipxe-shim\"\n\
         [[profile]]\nname = \"plain\"\nkernel = \"unsigned.efi\"\n",
    );
    let (code, out) = chainboot(&["check", "--config", cfg.to_str().unwrap()]);
    assert_eq!(code, 0, "warnings only:\n{out}");
    let warned = |p: usize| {
        out.lines()
            .any(|l| l.contains("warning") && l.contains(&format!("profile[{p}].kernel")))
    };
    assert!(warned(2), "unsigned kernel on the grub chain:\n{out}");
    assert!(
        out.contains("without a signature (no certificate table)"),
        "{out}"
    );
    assert!(!warned(3), "sbsign'd kernel:\n{out}");
    assert!(warned(4), "not a PE file:\n{out}");
    assert!(out.contains("not a PE file"), "{out}");
    assert!(!warned(5), "no signed chain reaches it:\n{out}");
}

#[test]
fn check_refuses_an_ipxe_script_that_grub_would_have_to_run() {
    let dir = tempfile::tempdir().unwrap();
    let (cfg, _) = loopback_config(
        dir.path(),
        "[[profile]]\nname = \"custom\"\nscript = \"#!ipxe\\nshell\\n\"\n\
         [[group]]\nname = \"sb\"\nprofile = \"custom\"\nloader = \"grub\"\nmatch = { mac = \"52:54:00:*\" }\n",
    );
    let (code, out) = chainboot(&["check", "--config", cfg.to_str().unwrap()]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("profile[2].script")
            && out.contains("GRUB cannot run an iPXE script")
            && out.contains("group sb starts grub"),
        "{out}"
    );
}

#[test]
fn tftp_serves_shim_grub_the_grub_configs_and_the_kernel_as_shim_and_grub_ask() {
    let dir = tempfile::tempdir().unwrap();
    let shim = "/usr/lib/shim/shimx64.efi.signed";
    let grub = "/usr/lib/grub/x86_64-efi-signed/grubnetx64.efi.signed";
    for f in [shim, grub] {
        assert!(
            Path::new(f).exists(),
            "{f} missing (packages shim-signed, grub-efi-amd64-signed; bash .ci/install-deps)"
        );
    }
    let (cfg, _) = loopback_config(
        dir.path(),
        "[[group]]\nname = \"sb\"\nprofile = \"linux\"\nloader = \"grub\"\nmatch = { mac = \"52:54:00:*\" }\n",
    );
    let mut server = Server::start_in(None, &cfg, dir.path().join("log"));
    let tftp = server.listening("TFTP");
    let (host, port) = tftp.rsplit_once(':').unwrap();
    let out = dir.path().join("out");
    for (path, real) in [
        ("secureboot/shimx64.efi", shim),
        ("secureboot/grubx64.efi", grub),
    ] {
        assert!(tftp_get(host, port, path, &out), "{path}");
        assert!(
            std::fs::read(&out).unwrap() == std::fs::read(real).unwrap(),
            "{path} is not {real} byte for byte"
        );
    }
    // The stub under both names GRUB tries, then the machine's own config (loopback is
    // trusted to act for any MAC, as a machine is for its own).
    for path in ["grub/x86_64-efi/grub.cfg", "grub/grub.cfg"] {
        assert!(tftp_get(host, port, path, &out), "{path}");
        let stub = std::fs::read_to_string(&out).unwrap();
        assert!(
            stub.contains("configfile \"${prefix}/mac/${net_default_mac}.cfg\""),
            "{stub}"
        );
    }
    assert!(tftp_get(host, port, "grub/mac/52:54:00:00:00:07.cfg", &out));
    let cfg = std::fs::read_to_string(&out).unwrap();
    assert!(
        cfg.contains("if linux '/grub/boot/52-54-00-00-00-07/kernel' 'console=ttyS0'; then"),
        "{cfg}"
    );
    // The kernel GRUB is pointed at comes from [http] root, over TFTP.
    assert!(tftp_get(
        host,
        port,
        "grub/boot/52-54-00-00-00-07/kernel",
        &out
    ));
    assert_eq!(std::fs::read(&out).unwrap(), b"kernel");
    // Nothing else under secureboot/ or grub/.
    assert!(!tftp_get(host, port, "secureboot/../chainboot.toml", &out));
    assert!(!tftp_get(host, port, "secureboot/ipxe.efi", &out));
    assert!(!tftp_get(
        host,
        port,
        "grub/boot/52-54-00-00-00-07/initrd/9",
        &out
    ));
}

#[test]
fn explain_shows_the_signed_chain_a_machine_starts_and_why() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("explain.toml");
    std::fs::write(
        &cfg,
        format!(
            "[server]\nstate_dir = \"{}\"\n[dhcp]\nmode = \"proxy\"\n\
             [[profile]]\nname = \"linux\"\nkernel = \"file:///boot/vmlinuz\"\n\
             [[group]]\nname = \"sb\"\nprofile = \"linux\"\nloader = \"grub\"\nmatch = {{ mac = \"52:54:00:00:01:*\" }}\n\
             [boot]\ndefault = \"local-disk\"\n",
            dir.path().join("state").display()
        ),
    )
    .unwrap();
    let cfg = cfg.to_str().unwrap();
    let explain = |mac: &str, arch: &str| {
        let (code, out) = chainboot(&["explain", "--mac", mac, "--arch", arch, "--config", cfg]);
        assert_eq!(code, 0, "{out}");
        out
    };
    let out = explain("52:54:00:00:01:01", "efi-x64");
    assert!(out.contains("file \"secureboot/shimx64.efi\""), "{out}");
    assert!(out.contains("loader: grub (group sb)"), "{out}");
    let out = explain("52:54:00:00:02:01", "efi-x64");
    assert!(out.contains("file \"snponly.efi\""), "{out}");
    assert!(out.contains("loader: ipxe"), "{out}");
    // The group's loader is for x86-64 UEFI: its BIOS machines keep iPXE.
    let out = explain("52:54:00:00:01:02", "bios");
    assert!(out.contains("file \"undionly.kpxe\""), "{out}");
}

#[test]
fn explain_shows_a_remembered_refusal_and_only_a_proven_one_switches_the_loader() {
    use chainboot_store::firmware::{Observations, SecureBootMark, Sighting};
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let (proven, unproven) = ("52:54:00:00:03:01", "52:54:00:00:03:02");
    {
        // What a running server left in its store: two machines seen over DHCP, one refusal
        // proven from the machine's own address, one only observed.
        let store = chainboot_store::Store::open(&state).unwrap();
        let seen = |mac: &str| Sighting {
            mac: mac.parse().unwrap(),
            at_ms: chainboot_events::now_ms(),
            arch: Some("efi-x64".into()),
            vendor_class: Some("PXEClient:Arch:00007:UNDI:003016".into()),
            uuid: None,
            create_with_secret: Some("s".into()),
        };
        let mark = |proven: bool| SecureBootMark {
            proven,
            at_ms: chainboot_events::now_ms(),
            why: "silence".into(),
        };
        store
            .machines_observe(&Observations {
                sightings: vec![seen(proven), seen(unproven)],
                stages: vec![],
                secure_boot: vec![
                    (proven.parse().unwrap(), mark(true)),
                    (unproven.parse().unwrap(), mark(false)),
                ],
            })
            .unwrap();
    }
    let cfg = dir.path().join("explain.toml");
    std::fs::write(
        &cfg,
        format!(
            "[server]\nstate_dir = \"{}\"\n[dhcp]\nmode = \"proxy\"\n\
             [boot]\ndefault = \"local-disk\"\nsecure_boot_fallback = \"grub\"\n",
            state.display()
        ),
    )
    .unwrap();
    let explain = |mac: &str| {
        let (code, out) = chainboot(&[
            "explain",
            "--mac",
            mac,
            "--arch",
            "efi-x64",
            "--config",
            cfg.to_str().unwrap(),
        ]);
        assert_eq!(code, 0, "{out}");
        out
    };
    let out = explain(proven);
    assert!(
        out.contains("Secure Boot: its firmware refused the unsigned first stage (silence")
            && out.contains("proven): [boot] secure_boot_fallback applies"),
        "{out}"
    );
    assert!(
        out.contains("its firmware said over DHCP: arch efi-x64"),
        "{out}"
    );
    assert!(out.contains("file \"secureboot/shimx64.efi\""), "{out}");
    let out = explain(unproven);
    assert!(
        out.contains("unproven): a fetch did not come from its own address"),
        "{out}"
    );
    assert!(out.contains("file \"snponly.efi\""), "{out}");
}
