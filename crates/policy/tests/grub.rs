//! The signed shim → GRUB chain on the policy's side, without sockets: which loader a machine
//! starts, which profiles `check` refuses for GRUB, and GRUB configs rendered and split back
//! into words the way GRUB reads them, hostile facts included.
#![allow(clippy::unwrap_used)] // a test: a failed step is a failed test

mod common;

use std::sync::Arc;

use chainboot_machine::{Arch, Loader, Mac};
use chainboot_policy::grub::split_words;
use chainboot_policy::{
    validate, BootConfig, ClientFacts, GroupConfig, HttpBase, Policy, PolicyConfig, ProfileConfig,
    RawFacts,
};
use chainboot_store::Store;
use common::pin;
use serde::Deserialize;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Doc {
    #[serde(default)]
    profile: Vec<ProfileConfig>,
    #[serde(default)]
    group: Vec<GroupConfig>,
    #[serde(default)]
    boot: BootConfig,
}

fn parse(text: &str) -> PolicyConfig {
    let d: Doc = toml::from_str(text).unwrap();
    PolicyConfig {
        profiles: d.profile,
        groups: d.group,
        boot: d.boot,
    }
}

fn problems(text: &str) -> Vec<(String, String)> {
    let c = parse(text);
    validate(&c.profiles, &c.groups, &c.boot)
        .into_iter()
        .map(|i| (i.path.join("."), i.message))
        .collect()
}

fn policy(text: &str) -> Policy {
    Policy::new(parse(text), Arc::new(Store::in_memory().unwrap())).unwrap()
}

fn base() -> HttpBase {
    HttpBase::new("http://198.18.0.1").unwrap()
}

fn facts(mac: &str, arch: Arch, hostname: Option<&str>) -> ClientFacts {
    ClientFacts::from_raw(
        mac.parse().unwrap(),
        &RawFacts {
            arch: Some(arch),
            hostname,
            ..Default::default()
        },
    )
}

const PROFILES: &str = r##"
[[profile]]
name = "debian"
description = "Debian, signed kernel"
kernel = "debian/vmlinuz"
initrd = ["iso:debian-12/install.amd/initrd.gz"]
cmdline = "console=ttyS0 hostname={{ machine.hostname }} serial={{ machine.serial }}"

[[profile]]
name = "custom"
script = "#!ipxe\necho hi\n"

[[profile]]
name = "web"
kernel = "https://mirror.example/vmlinuz"

[[profile]]
name = "local"
action = "local-disk"
"##;

#[test]
fn a_group_loader_beats_its_profiles_which_beats_the_arch_default() {
    let p = policy(&format!(
        r#"{PROFILES}
[[profile]]
name = "signed"
kernel = "debian/vmlinuz"
loader = "ipxe-shim"

[[group]]
name = "rack1"
profile = "debian"
loader = "grub"
match = {{ mac = "52:54:00:00:01:*" }}

[[group]]
name = "rack2"
profile = "signed"
match = {{ mac = "52:54:00:00:02:*" }}

[boot]
default = "local"
loader = {{ efi-x64 = "grub" }}
"#
    ));
    let pick = |mac: &str| p.loader_for(&facts(mac, Arch::EfiX64, None));
    assert_eq!(
        pick("52:54:00:00:01:01"),
        Some((Loader::Grub, "group rack1".into()))
    );
    assert_eq!(
        pick("52:54:00:00:02:01"),
        Some((Loader::IpxeShim, "profile signed (group rack2)".into()))
    );
    assert_eq!(
        pick("52:54:00:00:03:01"),
        Some((Loader::Grub, "[boot] loader for efi-x64".into()))
    );
    assert_eq!(
        p.loader_for(&facts("52:54:00:00:03:01", Arch::Bios, None)),
        None
    );
}

#[test]
fn check_refuses_profiles_grub_cannot_run_only_where_grub_can_reach_them() {
    // Nothing starts GRUB: no problem with the script profile.
    assert_eq!(problems(PROFILES), vec![]);
    // The menu is the default and efi-x64 starts GRUB: the menu offers every profile.
    let p = problems(&format!(
        "{PROFILES}\n[boot]\ndefault = \"menu\"\nloader = {{ efi-x64 = \"grub\" }}\n"
    ));
    let keys: Vec<&str> = p.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(keys, ["profile.1.script", "profile.2.kernel"], "{p:?}");
    assert!(
        p[0].1.contains("GRUB cannot run an iPXE script"),
        "{}",
        p[0].1
    );
    assert!(p[0].1.contains("[boot] default"), "{}", p[0].1);
    assert!(p[1].1.contains("fetches only over TFTP"), "{}", p[1].1);
    // A BIOS-only group is not reached by the efi-x64 default; a grub group is.
    let p = problems(&format!(
        r#"{PROFILES}
[[group]]
name = "old"
profile = "custom"
match = {{ arch = "bios" }}

[[group]]
name = "sb"
profile = "custom"
loader = "grub"
match = {{ mac = "52:54:00:*", arch = "efi-x64" }}

[boot]
default = "local"
loader = {{ efi-x64 = "grub", bios = "grub" }}
"#
    ));
    let keys: Vec<&str> = p.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(keys, ["boot.loader.bios", "profile.1.script"], "{p:?}");
    assert!(p[1].1.contains("group sb starts grub"), "{}", p[1].1);
}

#[tokio::test]
async fn grub_config_loads_kernel_and_initrd_over_tftp_with_every_argument_quoted() {
    let p = policy(&format!("{PROFILES}\n[boot]\ndefault = \"debian\"\n"));
    let f = facts("52:54:00:12:34:56", Arch::EfiX64, Some("node1"));
    let d = p.decide(&f, None, None).await.unwrap();
    let cfg = d.try_grub_cfg(7, &base()).unwrap();
    let lines: Vec<Vec<String>> = cfg
        .lines()
        .map(|l| split_words(l.trim().trim_end_matches("; then")).expect(l))
        .collect();
    let linux = lines
        .iter()
        .find(|w| w.get(1).map(String::as_str) == Some("linux"));
    assert_eq!(
        linux.unwrap()[2..],
        [
            "/grub/boot/52-54-00-12-34-56/kernel",
            "console=ttyS0",
            "hostname=node1",
            "serial="
        ]
    );
    let initrd = lines
        .iter()
        .find(|w| w.get(1).map(String::as_str) == Some("initrd"));
    assert_eq!(
        initrd.unwrap()[2..],
        ["/grub/boot/52-54-00-12-34-56/initrd/0"]
    );
    assert!(cfg.contains("sleep 7\n"), "{cfg}");
}

#[tokio::test]
async fn profiles_grub_cannot_run_give_a_config_that_says_why_and_retries() {
    let p = policy(PROFILES);
    let m: Mac = "52:54:00:12:34:57".parse().unwrap();
    let store = p.store().clone();
    store.machine_ensure(m, 1, "0123abcd").unwrap();
    for (profile, why) in [
        ("custom", "is an iPXE script, which GRUB cannot run"),
        ("web", "fetches only over TFTP"),
    ] {
        pin(&store, m, profile);
        let rec = store.machine(m).unwrap().unwrap();
        let d = p
            .decide(&ClientFacts::new(m), Some(&rec), None)
            .await
            .unwrap();
        let cfg = d.grub_cfg(5, &base());
        let first = split_words(cfg.lines().next().unwrap()).unwrap();
        assert_eq!(first[0], "echo");
        assert!(first[1].contains(why), "{cfg}");
        assert!(
            cfg.ends_with("configfile \"${prefix}/x86_64-efi/grub.cfg\"\n"),
            "{cfg}"
        );
    }
}

#[tokio::test]
async fn hostile_facts_never_add_a_grub_command_or_kernel_argument() {
    let p = policy(&format!("{PROFILES}\n[boot]\ndefault = \"debian\"\n"));
    let hostile = [
        "x\nlinux /evil",
        "a' ; reboot ; echo '",
        "${prefix}",
        "$(reboot)",
        "a b=c init=/bin/sh",
        "} menuentry x {",
        "\"dq\" 'sq' \\",
        "#comment",
        "\u{0}\u{7}\u{1b}[31m",
    ];
    for (n, evil) in hostile.iter().enumerate() {
        let f = ClientFacts::from_raw(
            Mac([0x52, 0x54, 0, 0, 0x20, n as u8]),
            &RawFacts {
                arch: Some(Arch::EfiX64),
                hostname: Some(evil),
                serial: Some(evil),
                ..Default::default()
            },
        );
        let d = p.decide(&f, None, None).await.unwrap();
        let cfg = d.try_grub_cfg(7, &base()).unwrap();
        let commands: Vec<String> = cfg
            .lines()
            .map(|l| split_words(l.trim().trim_end_matches("; then")).expect(l)[0].clone())
            .collect();
        assert_eq!(
            commands,
            [
                "echo",
                "if",
                "if",
                "boot",
                "fi",
                "fi",
                "echo",
                "echo",
                "sleep",
                "configfile"
            ],
            "{evil:?}:\n{cfg}"
        );
        let linux = split_words(cfg.lines().nth(1).unwrap().trim_end_matches("; then")).unwrap();
        assert_eq!(linux.len(), 2 + 1 + 3, "{evil:?}: {linux:?}");
    }
}

#[test]
fn the_secure_boot_fallback_must_be_signed_and_counts_as_reaching_every_group() {
    let p = problems(&format!(
        "{PROFILES}\n[boot]\ndefault = \"local\"\nsecure_boot_fallback = \"ipxe\"\n"
    ));
    assert_eq!(p.len(), 1, "{p:?}");
    assert_eq!(p[0].0, "boot.secure_boot_fallback");
    let p = problems(&format!(
        "{PROFILES}\n[[group]]\nname = \"g\"\nprofile = \"custom\"\nmatch = {{ mac = \"52:54:00:*\" }}\n\
         [boot]\ndefault = \"local\"\nsecure_boot_fallback = \"grub\"\n"
    ));
    let keys: Vec<&str> = p.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(keys, ["profile.1.script"], "{p:?}");
    assert!(p[0].1.contains("secure_boot_fallback"), "{}", p[0].1);
}
