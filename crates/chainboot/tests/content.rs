//! The binary's content namespace, end to end over real clients: files inside an ISO image
//! reach TFTP (`iso/NAME/path`, for PXELINUX without HTTP) and HTTP (`/iso/NAME/path`) with the
//! same bytes as the source tree, and the iPXE binaries are served over both.

mod common;

use std::process::Command;

use common::*;

#[test]
fn iso_files_and_ipxe_binaries_are_identical_over_tftp_and_http() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    std::fs::create_dir_all(src.join("install.amd/deep/er")).unwrap();
    let kernel: Vec<u8> = (0..700_000u32).map(|i| (i * 7 + i / 251) as u8).collect();
    std::fs::write(src.join("install.amd/vmlinuz"), &kernel).unwrap();
    std::fs::write(
        src.join("install.amd/deep/er/initrd.gz"),
        vec![42u8; 100_001],
    )
    .unwrap();
    let iso = dir.path().join("test.iso");
    let st = Command::new("xorriso")
        .args(["-as", "mkisofs", "-R", "-J", "-quiet", "-o"])
        .arg(&iso)
        .arg(&src)
        .status()
        .expect("xorriso (bash .ci/install-deps installs it)");
    assert!(st.success());
    let (cfg, _) = loopback_config(
        dir.path(),
        &format!(
            "[[iso]]\nname = \"deb\"\npath = \"{}\"\nrequired = true\n",
            iso.display()
        ),
    );
    let mut server = Server::start_in(None, &cfg, dir.path().join("log"));
    let http = server.listening("HTTP");
    let tftp = server.listening("TFTP");
    let (host, port) = tftp.rsplit_once(':').unwrap();
    let out = dir.path().join("out");
    for (path, want) in [
        ("install.amd/vmlinuz", kernel.clone()),
        ("install.amd/deep/er/initrd.gz", vec![42u8; 100_001]),
    ] {
        let _ = std::fs::remove_file(&out);
        let st = Command::new("tftp")
            .args([
                host,
                port,
                "-m",
                "binary",
                "-c",
                "get",
                &format!("iso/deb/{path}"),
            ])
            .arg(&out)
            .status()
            .unwrap();
        assert!(st.success());
        assert!(
            std::fs::read(&out).unwrap() == want,
            "TFTP iso/deb/{path} differs"
        );
        let body = Command::new("curl")
            .args(["-sf", &format!("http://{http}/iso/deb/{path}")])
            .output()
            .unwrap();
        assert!(body.status.success());
        assert!(body.stdout == want, "HTTP /iso/deb/{path} differs");
    }
    // The first stage, by name, over both.
    let bins = ["undionly.kpxe", "ipxe.efi"];
    for b in bins {
        let Ok(real) = std::fs::read(format!("/usr/lib/ipxe/{b}")) else {
            panic!("/usr/lib/ipxe/{b} missing (package ipxe; bash .ci/install-deps)");
        };
        let _ = std::fs::remove_file(&out);
        let st = Command::new("tftp")
            .args([host, port, "-m", "binary", "-c", "get", b])
            .arg(&out)
            .status()
            .unwrap();
        assert!(st.success());
        assert!(std::fs::read(&out).unwrap() == real, "TFTP {b} differs");
        let body = Command::new("curl")
            .args(["-sf", &format!("http://{http}/ipxe-bin/{b}")])
            .output()
            .unwrap();
        assert!(body.stdout == real, "HTTP /ipxe-bin/{b} differs");
    }
    // Outside every root: refused over TFTP.
    let st = Command::new("tftp")
        .args([
            host,
            port,
            "-m",
            "binary",
            "-c",
            "get",
            "iso/deb/../../etc/passwd",
        ])
        .arg(&out)
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&st.stdout).contains("Error")
            || String::from_utf8_lossy(&st.stderr).contains("Error")
    );
}
