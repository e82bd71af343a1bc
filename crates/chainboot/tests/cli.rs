//! The binary's commands, run as a user runs them: `check` on good and broken configs,
//! `explain`, `dhcp-config`, and `machines` against a live `serve` on loopback.

mod common;

use std::process::Command;
use std::time::Duration;

use common::*;

#[test]
fn check_reports_every_problem_with_file_line_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(
        &path,
        "[server]\nadvertize = \"auto\"\n[tftp]\nlisten = \"127.0.0.1:69\"\nrot = \"/srv\"\n[dhcp]\nmode = \"sever\"\n",
    )
    .unwrap();
    let (code, out) = chainboot(&["check", "--config", path.to_str().unwrap()]);
    assert_eq!(code, 1, "{out}");
    let file = path.display().to_string();
    assert!(
        out.contains(&format!("{file}:2:1: server.advertize")),
        "{out}"
    );
    assert!(out.contains("did you mean `advertise`?"), "{out}");
    assert!(out.contains(&format!("{file}:5:1: tftp.rot")), "{out}");
    assert!(
        out.contains(&format!("{file}:7:")) && out.contains("dhcp.mode"),
        "{out}"
    );
    assert!(out.contains("3 problems found"), "{out}");
}

#[test]
fn check_accepts_a_good_config_and_lists_ipxe_binaries() {
    let dir = tempfile::tempdir().unwrap();
    let bins = dir.path().join("ipxe");
    std::fs::create_dir_all(&bins).unwrap();
    for b in ["undionly.kpxe", "snponly.efi"] {
        std::fs::write(bins.join(b), b"x").unwrap();
    }
    let (cfg, _) = loopback_config(
        dir.path(),
        &format!("[ipxe]\ndir = \"{}\"\n", bins.display()),
    );
    let (code, out) = chainboot(&["check", "--config", cfg.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("ok       undionly.kpxe"), "{out}");
    assert!(out.contains("missing  ipxe.efi"), "{out}");
}

/// Builds an ISO of `src` with xorriso: Rock Ridge names, or plain ISO 9660 ones.
fn make_iso(src: &std::path::Path, iso: &std::path::Path, rock_ridge: bool) {
    let onoff = if rock_ridge { "on" } else { "off" };
    let st = Command::new("xorriso")
        .args(["-rockridge", onoff, "-joliet", "off", "-outdev"])
        .arg(iso)
        .arg("-map")
        .arg(src)
        .arg("/")
        .output()
        .expect("xorriso (bash .ci/install-deps installs it)");
    assert!(
        st.status.success(),
        "{}",
        String::from_utf8_lossy(&st.stderr)
    );
}

#[test]
fn check_resolves_every_asset_and_template_a_profile_can_reach() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let src = d.join("src");
    std::fs::create_dir_all(src.join("install.amd")).unwrap();
    std::fs::write(src.join("install.amd/vmlinuz"), b"kernel").unwrap();
    std::fs::write(src.join("install.amd/initrd.gz"), b"initrd").unwrap();
    make_iso(&src, &d.join("debian.iso"), true);
    make_iso(&src, &d.join("plain.iso"), false);
    let www = d.join("www");
    std::fs::create_dir_all(&www).unwrap();
    std::fs::write(www.join("vmlinuz"), b"k").unwrap();
    let templates = d.join("templates");
    std::fs::create_dir_all(templates.join("pxelinux.cfg")).unwrap();
    std::fs::write(
        templates.join("preseed.cfg"),
        "d-i x string y\nd-i preseed/late_command string sh -c 'x=abc; echo ${#x}'\nd-i z\n",
    )
    .unwrap();
    std::fs::write(templates.join("ok.cfg.raw"), "{{ ${#x}").unwrap();
    std::fs::write(
        templates.join("user-data.marked"),
        "a: {{@ machine.mac @}}\n",
    )
    .unwrap();
    std::fs::write(templates.join("pxelinux.cfg/default"), "{% not a template").unwrap();
    let bins = d.join("ipxe");
    let real = d.join("real");
    std::fs::create_dir_all(&bins).unwrap();
    std::fs::create_dir_all(&real).unwrap();
    std::fs::write(bins.join("undionly.kpxe"), b"x").unwrap();
    std::fs::write(real.join("snponly.efi"), b"x").unwrap();
    std::os::unix::fs::symlink(real.join("snponly.efi"), bins.join("snponly.efi")).unwrap();
    let cfg = d.join("chainboot.toml");
    let text = format!(
        r#"[server]
state_dir = "{state}"
[dhcp]
mode = "off"
[http]
listen = "127.0.0.1:0"
root = "{www}"
[ipxe]
dir = "{bins}"
[[iso]]
name = "debian"
path = "{d}/debian.iso"
[[iso]]
name = "plain"
path = "{d}/plain.iso"
[[profile]]
name = "typo"
kernel = "iso:debian/install.amd/vmlinuz-typo"
initrd = ["iso:nosuchiso/initrd.gz"]
[[profile]]
name = "files"
kernel = "nosuch/vmlinuz"
initrd = ["file:///nonexistent/initramfs", "iso:plain/install.amd/initrd.gz"]
cmdline = "initrd=initrd.img url={{{{ http }}}}/config/{{{{ machine.mac }}}}/missing.cfg"
[[profile]]
name = "good"
kernel = "iso:plain/install.amd/vmlinuz"
initrd = ["iso:debian/INSTALL.AMD/initrd.gz"]
cmdline = "initrd=initrd.gz url={{{{ http }}}}/config/{{{{ machine.mac }}}}/preseed.cfg u={{{{ http }}}}/config/{{{{ machine.mac }}}}/user-data"
[boot]
default = "good"
templates = "{templates}"
"#,
        state = d.join("state").display(),
        www = www.display(),
        bins = bins.display(),
        d = d.display(),
        templates = templates.display(),
    );
    std::fs::write(&cfg, &text).unwrap();
    let line = |needle: &str| text.lines().position(|l| l.contains(needle)).unwrap() + 1;
    let file = cfg.display().to_string();
    let (code, out) = chainboot(&["check", "--config", &file]);
    assert_eq!(code, 1, "{out}");
    let has = |s: &str| assert!(out.contains(s), "missing {s:?} in:\n{out}");
    // A typo in a path inside an image, with the name it probably meant.
    has(&format!("{file}:{}:1: profile[0].kernel: `iso:debian/install.amd/vmlinuz-typo`: no such file in iso debian", line("vmlinuz-typo")));
    has("did you mean `iso:debian/install.amd/vmlinuz`?");
    has(&format!("{file}:{}:", line("nosuchiso")));
    has("there is no [[iso]] named `nosuchiso` (configured: debian, plain)");
    has(&format!(
        "{file}:{}:1: profile[1].kernel: `nosuch/vmlinuz`: no such file under [http] root",
        line("nosuch/vmlinuz")
    ));
    has("`file:///nonexistent/initramfs`: no such file");
    has("missing.cfg, and neither");
    // A template that does not parse: its own file and line.
    has(&format!(
        "{}:2: template error",
        templates.join("preseed.cfg").display()
    ));
    // `initrd=` naming none of the profile's initrds is a warning; one that names one is fine.
    has(&format!("warning: {file}:{}:1: profile[1].cmdline: `initrd=initrd.img` names no initrd of this profile (its initrds are named initramfs, initrd.gz)", line("initrd=initrd.img")));
    assert_eq!(out.matches("warning: ").count(), 1, "{out}");
    // Everything else resolves: the plain ISO's mangled names, the .marked and .raw files, the
    // static pxelinux.cfg folder.
    assert!(!out.contains("profile[2]"), "{out}");
    assert!(
        !out.contains("ok.cfg.raw") && !out.contains("pxelinux.cfg/default"),
        "{out}"
    );
    has("6 problems found");
    // The iPXE binaries as found in the folder, with where a symlink leads; no Rust debug text.
    has(&format!(
        "ok       snponly.efi      {} (-> {})",
        bins.join("snponly.efi").display(),
        real.join("snponly.efi").display()
    ));
    has("missing  ipxe-i386.efi    for 32-bit x86 UEFI firmware: not packaged by Debian; build");
    has("DHCP: off mode");
    has("Rock Ridge names");
    assert!(!out.contains("get it from"), "{out}");
    assert!(
        !out.contains("RockRidge") && !out.contains("Off mode"),
        "{out}"
    );
}

#[test]
fn a_semantic_error_in_a_profile_points_at_its_line() {
    let dir = tempfile::tempdir().unwrap();
    let (cfg, _) = loopback_config(
        dir.path(),
        "[[group]]\nname = \"g\"\nprofile = \"nosuch\"\nmatch = { mac = \"52:54:00:*\" }\n",
    );
    let (code, out) = chainboot(&["check", "--config", cfg.to_str().unwrap()]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("group[0].profile") && out.contains("nosuch"),
        "{out}"
    );
}

#[test]
fn explain_shows_the_dhcp_answer_and_the_script_for_each_client_kind() {
    let dir = tempfile::tempdir().unwrap();
    let (cfg, _) = loopback_config(dir.path(), "");
    // proxy mode for the DHCP part
    let text = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace("mode = \"off\"", "mode = \"proxy\"");
    std::fs::write(&cfg, text).unwrap();
    let c = cfg.to_str().unwrap();
    let (code, out) = chainboot(&[
        "explain",
        "-c",
        c,
        "--mac",
        "52:54:00:00:00:01",
        "--arch",
        "bios",
        "--server-ip",
        "198.18.0.1",
    ]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("file \"undionly.kpxe\""), "{out}");
    // Words, not Rust debug text.
    assert!(out.contains("outcome: offer\n"), "{out}");
    assert!(out.contains("(proxy mode"), "{out}");
    assert!(out.contains("255.255.255.255:68 (broadcast)"), "{out}");
    for debug in ["Replied(", "Broadcast {", "Some(", "Proxy mode", "[0x"] {
        assert!(!out.contains(debug), "{debug} in: {out}");
    }
    assert!(out.contains("boots: profile linux"), "{out}");
    assert!(
        out.contains("kernel --name kernel http://198.18.0.1:"),
        "{out}"
    );
    let (_, out) = chainboot(&[
        "explain",
        "-c",
        c,
        "--mac",
        "52:54:00:00:00:01",
        "--arch",
        "7",
        "--server-ip",
        "198.18.0.1",
    ]);
    assert!(out.contains("file \"snponly.efi\""), "{out}");
    let (_, out) = chainboot(&[
        "explain",
        "-c",
        c,
        "--mac",
        "52:54:00:00:00:01",
        "--arch",
        "7",
        "--user-class",
        "iPXE",
        "--server-ip",
        "198.18.0.1",
    ]);
    assert!(
        out.contains("/boot.ipxe\""),
        "iPXE gets the script URL, never the first stage: {out}"
    );
    let (_, out) = chainboot(&[
        "explain",
        "-c",
        c,
        "--mac",
        "52:54:00:00:00:01",
        "--arch",
        "bios",
        "--user-class",
        "iPXE",
        "--no-http",
        "--server-ip",
        "198.18.0.1",
    ]);
    assert!(out.contains("file \"boot.ipxe\""), "{out}");
    let (_, out) = chainboot(&[
        "explain",
        "-c",
        c,
        "--mac",
        "52:54:00:00:00:01",
        "--arch",
        "16",
        "--server-ip",
        "198.18.0.1",
    ]);
    assert!(
        out.contains("HTTPClient") && out.contains("/ipxe-bin/snponly.efi"),
        "{out}"
    );
    let (_, out) = chainboot(&[
        "explain",
        "-c",
        c,
        "--mac",
        "52:54:00:00:00:01",
        "--arch",
        "1",
        "--server-ip",
        "198.18.0.1",
    ]);
    assert!(out.contains("outcome: refused (unknown-arch)"), "{out}");
}

#[test]
fn explain_ipv6_shows_the_dhcpv6_answer_with_a_bracketed_url_and_the_machine() {
    let dir = tempfile::tempdir().unwrap();
    let (cfg, _) = loopback_config(dir.path(), "");
    let mut text = std::fs::read_to_string(&cfg).unwrap();
    text.push_str(
        "\n[dhcp6]\nmode = \"server\"\n[[dhcp6.subnet]]\nprefix = \"2001:db8:1::/64\"\npools = [[\"2001:db8:1::1000\", \"2001:db8:1::1fff\"]]\n",
    );
    std::fs::write(&cfg, text).unwrap();
    let c = cfg.to_str().unwrap();
    let (_, out) = chainboot(&["check", "-c", c]);
    assert!(
        out.contains("DHCPv6: server mode, prefixes 2001:db8:1::/64"),
        "{out}"
    );
    let args = ["explain", "-c", c, "--ipv6", "--mac", "52:54:00:00:00:01"];
    let (code, out) = chainboot(&[&args[..], &["--arch", "7"]].concat());
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("DHCPv6 (server mode, Solicit received on 2001:db8:1::1)"),
        "{out}"
    );
    assert!(
        out.contains("option 59 \"tftp://[2001:db8:1::1]/snponly.efi\""),
        "{out}"
    );
    assert!(out.contains("outcome: advertise\n"), "{out}");
    assert!(
        out.contains("machine: 52:54:00:00:00:01 (MAC from its DUID)"),
        "{out}"
    );
    assert!(out.contains("addresses [2001:db8:1::"), "{out}");
    for debug in ["Replied(", "Some(", "Server mode", "Duid"] {
        assert!(!out.contains(debug), "{debug} in: {out}");
    }
    let (_, out) = chainboot(&[&args[..], &["--arch", "7", "--user-class", "iPXE"]].concat());
    assert!(out.contains("option 59 \"http://[2001:db8:1::1]:"), "{out}");
    assert!(out.contains("/boot.ipxe\""), "{out}");
    assert!(
        out.contains("kernel --name kernel http://[2001:db8:1::1]:"),
        "the script's URLs: {out}"
    );
}

#[test]
fn the_kea_dhcp6_snippet_is_accepted_by_kea_dhcp6() {
    let dir = tempfile::tempdir().unwrap();
    let (cfg, _) = loopback_config(dir.path(), "");
    let (code, snippet) = chainboot(&[
        "dhcp-config",
        "kea",
        "--ipv6",
        "2001:db8::1",
        "-c",
        cfg.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{snippet}");
    assert!(
        snippet.contains("tftp://[2001:db8::1]/snponly.efi"),
        "{snippet}"
    );
    let kea = dir.path().join("kea6.json");
    std::fs::write(
        &kea,
        format!(
            "{{ \"Dhcp6\": {{ \"interfaces-config\": {{ \"interfaces\": [] }},\n\
             \"lease-database\": {{ \"type\": \"memfile\", \"persist\": false }},\n{snippet} }} }}"
        ),
    )
    .unwrap();
    // `kea-dhcp6 -t` parses and checks a configuration without serving.
    let out = std::process::Command::new("kea-dhcp6")
        .arg("-t")
        .arg(&kea)
        .output()
        .expect("kea-dhcp6 (package kea-dhcp6-server, .ci/install-deps)");
    let log =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && !log.contains("ERROR"), "{log}");
    let (code, out) = chainboot(&["dhcp-config", "isc", "--ipv6", "2001:db8::1"]);
    assert_eq!(code, 2, "kea only: {out}");
}

#[test]
fn dhcp_config_prints_a_snippet_for_each_server() {
    for (kind, needle) in [
        ("isc", "user-class"),
        ("dnsmasq", "dhcp-match"),
        ("kea", "client-classes"),
    ] {
        let (code, out) = chainboot(&["dhcp-config", kind, "--server-ip", "198.18.0.1"]);
        assert_eq!(code, 0, "{out}");
        assert!(out.contains(needle), "{kind}: {out}");
        assert!(out.contains("198.18.0.1"), "{kind}: {out}");
    }
    let (code, out) = chainboot(&["dhcp-config", "isc"]);
    assert_eq!(code, 2, "no address known: {out}");
}

#[test]
fn machines_commands_round_trip_through_a_running_server() {
    let dir = tempfile::tempdir().unwrap();
    let (cfg, _) = loopback_config(dir.path(), "");
    let mut server = Server::start_in(None, &cfg, dir.path().join("log"));
    let http = server.listening("HTTP");
    // A machine fetches its script: it is now known.
    let out = Command::new("curl")
        .args(["-sf", &format!("http://{http}/ipxe?mac=52-54-00-aa-bb-cc&platform=pcbios&buildarch=i386&hostname=node7")])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("#!ipxe"));
    let c = cfg.to_str().unwrap();
    let url = format!("http://{}", server.listening("API"));
    let (code, out) = chainboot(&["machines", "-c", c, "--server", &url, "list"]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("52:54:00:aa:bb:cc") && out.contains("node7") && out.contains("bios"),
        "{out}"
    );
    let (code, out) = chainboot(&[
        "machines",
        "-c",
        c,
        "--server",
        &url,
        "set-profile",
        "52:54:00:aa:bb:cc",
        "rescue",
    ]);
    assert_eq!(code, 0, "{out}");
    let (_, out) = chainboot(&[
        "machines",
        "-c",
        c,
        "--server",
        &url,
        "--json",
        "show",
        "52:54:00:aa:bb:cc",
    ]);
    assert!(out.contains("\"pinned_profile\": \"rescue\""), "{out}");
    // Writes need the token: a wrong one is refused and changes nothing.
    let (code, out) = chainboot(&[
        "machines",
        "-c",
        c,
        "--server",
        &url,
        "--token",
        "wrong",
        "set-profile",
        "52:54:00:aa:bb:cc",
        "linux",
    ]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("401"), "{out}");
    let (code, out) = chainboot(&[
        "machines",
        "-c",
        c,
        "--server",
        &url,
        "set-profile",
        "52:54:00:aa:bb:cc",
        "--unpin",
    ]);
    assert_eq!(code, 0, "{out}");
    let (_, out) = chainboot(&[
        "machines",
        "-c",
        c,
        "--server",
        &url,
        "--json",
        "show",
        "52:54:00:aa:bb:cc",
    ]);
    assert!(out.contains("\"pinned_profile\": null"), "{out}");
    let (code, _) = chainboot(&[
        "machines",
        "-c",
        c,
        "--server",
        &url,
        "forget",
        "52:54:00:aa:bb:cc",
    ]);
    assert_eq!(code, 0);
    let (_, out) = chainboot(&["machines", "-c", c, "--server", &url, "list"]);
    assert!(!out.contains("52:54:00:aa:bb:cc"), "{out}");
    server.signal("TERM");
    assert!(
        server
            .wait_exit(Duration::from_secs(10))
            .is_some_and(|s| s.success()),
        "{}",
        server.log_text()
    );
}

#[test]
fn boot_quick_mode_serves_one_kernel_to_every_machine() {
    let dir = tempfile::tempdir().unwrap();
    let (cfg, _) = loopback_config(dir.path(), "");
    let kernel = dir.path().join("my-kernel");
    let initrd = dir.path().join("my-initrd");
    std::fs::write(&kernel, vec![7u8; 300_000]).unwrap();
    std::fs::write(&initrd, vec![9u8; 123_457]).unwrap();
    let log = dir.path().join("log");
    let logf = std::fs::File::create(&log).unwrap();
    let child = Command::new(chainboot_bin())
        .args(["boot", "--cmdline", "console=ttyS0 quick={{x}}", "--config"])
        .arg(&cfg)
        .arg(&kernel)
        .arg(&initrd)
        .stderr(logf)
        .spawn()
        .unwrap();
    let mut server = Server::adopt(child, log);
    let http = server.listening("HTTP");
    let script = Command::new("curl")
        .args([
            "-sf",
            &format!("http://{http}/ipxe?mac=52-54-00-00-30-01&platform=efi&buildarch=x86_64"),
        ])
        .output()
        .unwrap();
    let script = String::from_utf8_lossy(&script.stdout).into_owned();
    // The command line is literal (no template expansion), the files come from chainboot.
    assert!(script.contains("console=ttyS0 quick={{x}}"), "{script}");
    let urls: Vec<&str> = script
        .split_whitespace()
        .filter(|w| w.starts_with("http://") && w.contains("/boot/"))
        .collect();
    assert_eq!(urls.len(), 2, "kernel and initrd URLs: {script}");
    for (url, want) in urls.iter().zip([
        std::fs::read(&kernel).unwrap(),
        std::fs::read(&initrd).unwrap(),
    ]) {
        let body = Command::new("curl").args(["-sfL", url]).output().unwrap();
        assert!(body.stdout == want, "{url} differs");
    }
}

#[test]
fn rearm_lets_a_boot_once_machine_install_again() {
    let dir = tempfile::tempdir().unwrap();
    let (cfg, _) = loopback_config(
        dir.path(),
        "[[group]]\nname = \"installers\"\nprofile = \"rescue\"\nonce = true\nmatch = { mac = [\"52:54:00:00:40:*\"] }\n",
    );
    let mut server = Server::start_in(None, &cfg, dir.path().join("log"));
    let http = server.listening("HTTP");
    let url = format!("http://{http}");
    let script = || {
        let out = Command::new("curl")
            .args([
                "-sf",
                &format!("{url}/ipxe?mac=52-54-00-00-40-01&platform=pcbios&buildarch=i386"),
            ])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let first = script();
    assert!(first.contains("boots profile rescue"), "{first}");
    // Fetching the kernel finishes the install: the machine now boots its local disk.
    let kernel_url = first
        .split_whitespace()
        .find(|w| w.starts_with("http://") && w.contains("/kernel?cap="))
        .unwrap_or_else(|| panic!("no kernel URL: {first}"))
        .to_string();
    let st = Command::new("curl")
        .args(["-sfL", "-o", "/dev/null", &kernel_url])
        .status()
        .unwrap();
    assert!(st.success());
    let after = script();
    assert!(
        after.contains("boots profile local-disk") && after.contains("\nexit"),
        "{after}"
    );
    let c = cfg.to_str().unwrap();
    let api = format!("http://{}", server.listening("API"));
    let (code, out) = chainboot(&[
        "machines",
        "-c",
        c,
        "--server",
        &api,
        "rearm",
        "52:54:00:00:40:01",
    ]);
    assert_eq!(code, 0, "{out}");
    assert!(script().contains("boots profile rescue"));
}

#[test]
fn serve_warns_about_unresolvable_assets_and_refuses_them_in_a_required_image() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let src = d.join("src");
    std::fs::create_dir_all(src.join("install.amd")).unwrap();
    std::fs::write(src.join("install.amd/vmlinuz"), b"kernel").unwrap();
    make_iso(&src, &d.join("debian.iso"), true);
    let iso = |required: bool| {
        format!(
            "[[iso]]\nname = \"debian\"\npath = \"{}\"\nrequired = {required}\n\
             [[profile]]\nname = \"d-i\"\nkernel = \"iso:debian/install.amd/vmlinuz-typo\"\n",
            d.join("debian.iso").display()
        )
    };
    // Not required: the server starts, and says loudly what will fail.
    let (cfg, _) = loopback_config(d, "");
    let base = std::fs::read_to_string(&cfg).unwrap();
    std::fs::write(&cfg, format!("{base}{}", iso(false))).unwrap();
    let mut server = Server::start_in(None, &cfg, d.join("log"));
    server.wait_for_log("ready: SIGHUP reloads", Duration::from_secs(20));
    server.wait_for_log("a machine booting this will fail", Duration::from_secs(10));
    assert!(server.log_text().contains("vmlinuz-typo"));
    // A reload that makes the image required is refused; the server keeps serving.
    std::fs::write(
        &cfg,
        format!("{base}{}", iso(true)).replace("vmlinuz-typo", "vmlinuz-typo2"),
    )
    .unwrap();
    server.signal("HUP");
    server.wait_for_log("SIGHUP: boot policy refused", Duration::from_secs(10));
    assert!(server.log_text().contains("required ISO image"));
    drop(server);
    // Required from the start: the server does not start, and says why.
    let (code, out) = chainboot(&["serve", "--config", cfg.to_str().unwrap()]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("a reference into a required ISO image does not resolve")
            && out.contains("vmlinuz-typo2"),
        "{out}"
    );
}
