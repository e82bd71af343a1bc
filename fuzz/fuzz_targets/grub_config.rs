//! GRUB configs for the signed shim → GRUB chain with hostile input, through both doors:
//! the renderer itself (`grub::kernel_config` with an arbitrary header, message and command
//! line) and the policy (`ClientFacts::from_raw` with hostile facts, `Policy::decide`,
//! `Decision::try_grub_cfg` for kernel, menu and local-disk profiles).
//!
//! Invariants: every line splits back into words the way GRUB reads them
//! (`grub::split_words`, which refuses an unquoted `$`, `;`, `|`, `&`, `{`, `}` or `#`); the
//! commands are exactly those rendered without the input; the `linux` line's arguments are
//! exactly the words of the one-line command line, each intact.
#![no_main]

use std::sync::{Arc, OnceLock};

use chainboot_machine::{Arch, Mac};
use chainboot_policy::grub::{kernel_config, split_words, GrubKernel};
use chainboot_policy::render::one_line;
use chainboot_policy::{
    BootConfig, ClientFacts, GroupConfig, HttpBase, Policy, PolicyConfig, ProfileConfig, RawFacts,
};
use chainboot_store::Store;
use libfuzzer_sys::fuzz_target;
use serde::Deserialize;

const PROFILES: &str = r##"
[[profile]]
name = "kernel"
kernel = "iso:debian-12/install.amd/vmlinuz"
initrd = ["iso:debian-12/install.amd/initrd.gz", "extra/firmware.cpio.gz"]
cmdline = "console=ttyS0 hostname={{ machine.hostname }} serial={{ machine.serial }} uuid={{ machine.uuid }} ip={{ machine.ip }} vendor={{ machine.manufacturer }} product={{ machine.product }}"
loader = "grub"

[[profile]]
name = "local"
description = "local disk"
action = "local-disk"

[[group]]
name = "g0"
profile = "kernel"
match = { mac = ["52:54:00:00:00:00"] }

[[group]]
name = "g1"
profile = "local"
match = { mac = ["52:54:00:00:00:01"] }

[boot]
default = "menu"
"##;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Doc {
    #[serde(default)]
    profile: Vec<ProfileConfig>,
    #[serde(default)]
    group: Vec<GroupConfig>,
    #[serde(default)]
    boot: BootConfig,
}

struct Fixture {
    rt: tokio::runtime::Runtime,
    policy: Policy,
    base: HttpBase,
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let d: Doc = toml::from_str(PROFILES).expect("profiles parse");
        let cfg = PolicyConfig {
            profiles: d.profile,
            groups: d.group,
            boot: d.boot,
        };
        Fixture {
            rt: tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime"),
            policy: Policy::new(cfg, Arc::new(Store::in_memory().expect("store"))).expect("policy"),
            base: HttpBase::new("http://198.18.0.1").expect("base"),
        }
    })
}

/// Each line's words, as GRUB reads them; panics on a line GRUB would read otherwise.
fn words(cfg: &str) -> Vec<Vec<String>> {
    cfg.lines()
        .map(|l| {
            let l = l.trim();
            // The block syntax this module writes itself: `menuentry TITLE {` ... `}`.
            if l == "}" {
                return vec!["}".to_string()];
            }
            let l = l.strip_suffix("; then").unwrap_or(l);
            let l = l.strip_suffix(" {").unwrap_or(l);
            split_words(l)
                .unwrap_or_else(|| panic!("line GRUB would not read as written: {l:?}\n{cfg}"))
        })
        .collect()
}

fn commands(cfg: &str) -> Vec<String> {
    words(cfg)
        .into_iter()
        .filter_map(|w| w.into_iter().next())
        .collect()
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 2 {
        return;
    }
    let text = String::from_utf8_lossy(&data[2..]);
    let mut fields = text.split('\u{1}');
    let mut next = || fields.next();

    // The renderer with arbitrary text in every slot.
    let (header, message, cmdline) = (next().unwrap_or(""), next(), next().unwrap_or(""));
    let k = |header: &str, message: Option<&str>, cmdline: &str| {
        kernel_config(
            &GrubKernel {
                mac: "52:54:00:00:00:00",
                profile: "p",
                header,
                message,
                kernel_path: "/grub/boot/52-54-00-00-00-00/kernel",
                initrd_paths: &["/grub/boot/52-54-00-00-00-00/initrd/0".to_string()],
                cmdline,
            },
            10,
        )
    };
    let hostile = k(header, message, cmdline);
    let plain = k("h", message.map(|_| "m"), "x");
    assert_eq!(commands(&hostile), commands(&plain), "{hostile}");
    let linux = words(&hostile)
        .into_iter()
        .find(|w| w.get(1).map(String::as_str) == Some("linux"))
        .expect("a linux line");
    let want: Vec<String> = one_line(cmdline)
        .split(' ')
        .filter(|a| !a.is_empty())
        .map(String::from)
        .collect();
    assert_eq!(linux[3..], want[..], "{hostile}");

    // The policy with hostile facts.
    let f = fixture();
    let mac = Mac([0x52, 0x54, 0, 0, 0, data[0] % 3]);
    let arch = if data[1] % 2 == 0 {
        Some(Arch::EfiX64)
    } else {
        None
    };
    let raw = RawFacts {
        arch,
        uuid: next(),
        hostname: next(),
        serial: next(),
        manufacturer: next(),
        product: next(),
        ip: next(),
    };
    let render = |facts: &ClientFacts| {
        let d =
            f.rt.block_on(f.policy.decide(facts, None, None))
                .expect("decision");
        d.try_grub_cfg(10, &f.base).expect("a GRUB config")
    };
    let mut plain = ClientFacts::new(mac);
    plain.arch = arch;
    let (a, b) = (render(&ClientFacts::from_raw(mac, &raw)), render(&plain));
    assert_eq!(
        commands(&a),
        commands(&b),
        "facts changed the commands\n{a}\n---\n{b}"
    );
    let count = |cfg: &str| words(cfg).iter().map(Vec::len).collect::<Vec<_>>();
    assert_eq!(
        count(&a),
        count(&b),
        "facts changed the words\n{a}\n---\n{b}"
    );
});
