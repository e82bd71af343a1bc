//! Rendering with hostile client facts: every profile kind (kernel + cmdline template, raw
//! script template, PXELINUX, actions) rendered for facts taken from the input, through the
//! public path (`ClientFacts::from_raw`, `Policy::decide`, `Decision::script`).
//!
//! Invariant (differential): the script rendered with the hostile facts has exactly as many
//! lines, `${`, `{{`, `&&` and `||` as the script rendered for the same machine with no facts:
//! a fact never adds a command, an expansion or a chain outside its slot.
#![no_main]

use std::sync::{Arc, OnceLock};

use chainboot_machine::{Arch, Mac};
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
cmdline = "auto=true url={{ http }}/config/{{ machine.mac }}/preseed.cfg hostname={{ machine.hostname }} serial={{ machine.serial }} uuid={{ machine.uuid }} ip={{ machine.ip }} vendor={{ machine.manufacturer }} product={{ machine.product }} arch={{ machine.arch }} secret={{ machine.secret }}"

[[profile]]
name = "script"
script = """#!ipxe
echo custom for {{ machine.mac }} {{ machine.hostname }} {{ machine.serial }}
set vendor {{ machine.manufacturer }}
chain {{ http }}/files/custom.ipxe?uuid={{ machine.uuid }}&product={{ machine.product }}&ip={{ machine.ip }}
"""

[[profile]]
name = "seed"
pxelinux = "lpxelinux.0"
kernel = "seed/vmlinuz"
initrd = ["seed/initrd.img"]
cmdline = "console=ttyS0 host={{ machine.hostname }} sn={{ machine.serial }} p={{ machine.product }}"

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
profile = "script"
match = { mac = ["52:54:00:00:00:01"] }

[[group]]
name = "g2"
profile = "seed"
match = { mac = ["52:54:00:00:00:02"] }

[[group]]
name = "g3"
profile = "local"
match = { mac = ["52:54:00:00:00:03"] }

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
        let store = Arc::new(Store::in_memory().expect("in-memory store"));
        Fixture {
            rt: tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime"),
            policy: Policy::new(cfg, store).expect("policy"),
            base: HttpBase::new("http://198.18.0.1:8080").expect("base"),
        }
    })
}

fn shape(s: &str) -> [usize; 5] {
    [
        s.matches('\n').count(),
        s.matches("${").count(),
        s.matches("{{").count(),
        s.matches("&&").count(),
        s.matches("||").count(),
    ]
}

fn render(f: &Fixture, facts: &ClientFacts) -> (String, Option<String>) {
    let d =
        f.rt.block_on(f.policy.decide(facts, None, None))
            .expect("decision");
    let script = d.script(&f.base, 10);
    let pxe = d.pxelinux_cfg(&f.base).ok().flatten();
    (script, pxe)
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 2 {
        return;
    }
    let f = fixture();
    let mac = Mac([0x52, 0x54, 0, 0, 0, data[0] % 5]);
    let arch = match data[1] % 6 {
        0 => None,
        1 => Some(Arch::Bios),
        2 => Some(Arch::EfiX64),
        3 => Some(Arch::EfiIa32),
        4 => Some(Arch::EfiArm64),
        _ => Some(Arch::EfiArm32),
    };
    let text = String::from_utf8_lossy(&data[2..]);
    let mut fields = text.split('\u{1}');
    let mut next = || fields.next();
    let raw = RawFacts {
        arch,
        uuid: next(),
        hostname: next(),
        serial: next(),
        manufacturer: next(),
        product: next(),
        ip: next(),
    };
    let hostile = ClientFacts::from_raw(mac, &raw);
    let mut plain = ClientFacts::new(mac);
    plain.arch = arch;
    let (s1, p1) = render(f, &hostile);
    let (s2, p2) = render(f, &plain);
    assert!(s1.starts_with("#!ipxe\n"), "script header:\n{s1}");
    assert_eq!(
        shape(&s1),
        shape(&s2),
        "facts changed the script's shape\n--- hostile:\n{s1}\n--- plain:\n{s2}\nfacts: {hostile:?}"
    );
    assert_eq!(p1.is_some(), p2.is_some());
    if let (Some(a), Some(b)) = (p1, p2) {
        assert_eq!(
            shape(&a),
            shape(&b),
            "facts changed the pxelinux config\n{a}\n---\n{b}"
        );
    }
});
