//! Decisions and rendering without sockets: config validation, precedence, every profile kind
//! rendered and parsed back, hostile facts, explain.
#![allow(clippy::unwrap_used)] // a test: a failed step is a failed test

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;

use chainboot_machine::{Arch, Mac};
use chainboot_policy::{
    validate, BootConfig, ClientFacts, GroupConfig, HttpBase, Policy, PolicyConfig, ProfileConfig,
    RawFacts, Source,
};
use chainboot_store::machines::OperatorChange;
use chainboot_store::Store;
use common::{operator, pin};
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

fn parse(toml_text: &str) -> PolicyConfig {
    let d: Doc = toml::from_str(toml_text).unwrap();
    PolicyConfig {
        profiles: d.profile,
        groups: d.group,
        boot: d.boot,
    }
}

fn problems(toml_text: &str) -> Vec<(Vec<String>, String)> {
    let c = parse(toml_text);
    validate(&c.profiles, &c.groups, &c.boot)
        .into_iter()
        .map(|i| (i.path, i.message))
        .collect()
}

fn base() -> HttpBase {
    HttpBase::new("http://198.18.0.1:8080").unwrap()
}

fn mac(s: &str) -> Mac {
    s.parse().unwrap()
}

const PROFILES: &str = r##"
[[profile]]
name = "debian-install"
description = "Debian 12 installer"
kernel = "iso:debian-12/install.amd/vmlinuz"
initrd = ["iso:debian-12/install.amd/initrd.gz", "extra/firmware.cpio.gz"]
cmdline = "auto=true priority=critical url={{ http }}/config/{{ machine.mac }}/preseed.cfg hostname={{ machine.hostname }} serial={{ machine.serial }} secret={{ machine.secret }}"

[[profile]]
name = "rescue"
kernel = "https://mirror.example/rescue/vmlinuz"
initrd = ["https://mirror.example/rescue/initrd"]
cmdline = "console=ttyS0"

[[profile]]
name = "custom"
script = """#!ipxe
echo custom for {{ machine.mac }} {{ machine.hostname }}
chain {{ http }}/files/custom.ipxe
"""

[[profile]]
name = "local"
action = "local-disk"

[[profile]]
name = "shell"
action = "shell"

[[profile]]
name = "seed"
pxelinux = "lpxelinux.0"
kernel = "seed/vmlinuz"
initrd = ["seed/initrd.img"]
cmdline = "console=ttyS0 host={{ machine.hostname }}"
"##;

fn policy(extra: &str) -> Policy {
    let cfg = parse(&format!("{PROFILES}\n{extra}"));
    Policy::new(cfg, Arc::new(Store::in_memory().unwrap())).unwrap()
}

// ---------------------------------------------------------------- iPXE script parsing

/// One iPXE script line: command and arguments (iPXE splits on whitespace).
#[derive(Debug)]
struct Line {
    cmd: String,
    args: Vec<String>,
}

/// Parses a script the way iPXE reads it, checking that only expected commands appear, every
/// `${...}` is one we wrote on purpose, and no line chains commands except our `|| goto failed`.
fn parse_ipxe(script: &str) -> Vec<Line> {
    let mut lines = script.lines();
    assert_eq!(
        lines.next(),
        Some("#!ipxe"),
        "script must start with #!ipxe:\n{script}"
    );
    let mut out = Vec::new();
    for raw in lines {
        if raw.trim().is_empty() {
            continue;
        }
        let mut words: Vec<String> = raw.split_whitespace().map(String::from).collect();
        // Our own error handling suffix.
        if words.len() >= 3 && words[words.len() - 3..] == ["||", "goto", "failed"] {
            words.truncate(words.len() - 3);
        }
        if words.len() >= 3 && words[words.len() - 3..] == ["||", "goto", "exit"] {
            words.truncate(words.len() - 3);
        }
        for w in &words {
            assert!(
                !w.contains("&&") && w != "||",
                "command chaining in {raw:?}"
            );
        }
        let cmd = words.remove(0);
        assert!(
            [
                "echo", "kernel", "initrd", "boot", "chain", "sleep", "exit", "shell", "set",
                "menu", "item", "choose", "goto"
            ]
            .contains(&cmd.as_str())
                || cmd.starts_with(':'),
            "unexpected command {cmd:?} in line {raw:?}"
        );
        let rest = words.join(" ");
        if cmd != "goto" && cmd != "chain" {
            assert!(!rest.contains("${"), "unexpected expansion in {raw:?}");
        }
        out.push(Line { cmd, args: words });
    }
    out
}

fn kernel_line(lines: &[Line]) -> &Line {
    lines
        .iter()
        .find(|l| l.cmd == "kernel")
        .expect("kernel line")
}

// ---------------------------------------------------------------- validation

#[test]
fn the_example_config_is_valid() {
    assert_eq!(
        problems(&format!(
            "{PROFILES}\n[[group]]\nname = \"rack1\"\nprofile = \"debian-install\"\nonce = true\nmatch = {{ mac = \"52:54:00:*\", arch = \"efi-x64\" }}\n[boot]\ndefault = \"menu\"\napi = \"http://127.0.0.1:9000\"\napi_timeout = \"2s\"\n"
        )),
        vec![]
    );
}

#[test]
fn unknown_profiles_and_bad_globs_are_named_by_key_path() {
    let p = problems(&format!(
        "{PROFILES}\n[[group]]\nname = \"a\"\nprofile = \"nope\"\nmatch = {{ mac = \"52:54:00:*\" }}\n[[group]]\nname = \"b\"\nprofile = \"rescue\"\nmatch = {{ mac = [\"52:54:00:12:34:56\", \"zz:*\"] }}\n[boot]\ndefault = \"missing\"\n"
    ));
    let keys: Vec<Vec<String>> = p.iter().map(|(k, _)| k.clone()).collect();
    assert!(
        keys.contains(&vec!["group".into(), "0".into(), "profile".into()]),
        "{p:?}"
    );
    assert!(
        keys.contains(&vec![
            "group".into(),
            "1".into(),
            "match".into(),
            "mac".into(),
            "1".into()
        ]),
        "{p:?}"
    );
    assert!(
        keys.contains(&vec!["boot".into(), "default".into()]),
        "{p:?}"
    );
    let msg = &p.iter().find(|(k, _)| k[0] == "boot").unwrap().1;
    assert!(
        msg.contains("missing") && msg.contains("debian-install"),
        "{msg}"
    );
}

#[test]
fn equal_specificity_overlap_is_a_config_error() {
    // mac glob vs arch: a 52:54:00 machine with efi-x64 matches both, one selector each.
    let p = problems(&format!(
        "{PROFILES}\n[[group]]\nname = \"a\"\nprofile = \"rescue\"\nmatch = {{ mac = \"52:54:00:*\" }}\n[[group]]\nname = \"b\"\nprofile = \"local\"\nmatch = {{ arch = \"efi-x64\" }}\n"
    ));
    assert_eq!(p.len(), 1, "{p:?}");
    assert_eq!(p[0].0, vec!["group", "1", "match"]);
    assert!(
        p[0].1.contains("`a`") && p[0].1.contains("`b`"),
        "{}",
        p[0].1
    );

    // Disjoint globs of equal specificity are fine; so is a more specific group.
    assert_eq!(
        problems(&format!(
            "{PROFILES}\n[[group]]\nname = \"a\"\nprofile = \"rescue\"\nmatch = {{ mac = \"52:54:00:*\" }}\n[[group]]\nname = \"b\"\nprofile = \"local\"\nmatch = {{ mac = \"52:54:01:*\" }}\n[[group]]\nname = \"c\"\nprofile = \"shell\"\nmatch = {{ mac = \"52:54:00:*\", arch = \"bios\" }}\n"
        )),
        vec![]
    );
    // Different labels of the same key never meet; two catch-alls always do.
    assert_eq!(
        problems(&format!(
            "{PROFILES}\n[[group]]\nname = \"a\"\nprofile = \"rescue\"\nmatch = {{ labels = {{ role = \"db\" }} }}\n[[group]]\nname = \"b\"\nprofile = \"local\"\nmatch = {{ labels = {{ role = \"web\" }} }}\n"
        )),
        vec![]
    );
    assert_eq!(
        problems(&format!(
            "{PROFILES}\n[[group]]\nname = \"a\"\nprofile = \"rescue\"\n[[group]]\nname = \"b\"\nprofile = \"local\"\n"
        ))
        .len(),
        1
    );
}

#[test]
fn profile_shape_errors() {
    let p = problems(
        r#"
[[profile]]
name = "two-kinds"
kernel = "vmlinuz"
action = "shell"
[[profile]]
name = "no-shebang"
script = "echo hi"
[[profile]]
name = "bad-template"
kernel = "vmlinuz"
cmdline = "x={{ machine.mac "
[[profile]]
name = "bad-asset"
kernel = "/etc/shadow"
initrd = ["ftp://x/y", "iso:/x", "a/../b"]
[[profile]]
name = "../evil"
action = "shell"
[[profile]]
name = "nothing"
"#,
    );
    let keys: Vec<String> = p.iter().map(|(k, _)| k.join(".")).collect();
    for want in [
        "profile.0",
        "profile.1.script",
        "profile.2.cmdline",
        "profile.3.kernel",
        "profile.3.initrd.0",
        "profile.3.initrd.1",
        "profile.3.initrd.2",
        "profile.4.name",
        "profile.5",
    ] {
        assert!(keys.iter().any(|k| k == want), "{want} missing in {p:#?}");
    }
}

#[test]
fn unknown_keys_are_refused_by_the_parser() {
    let r: Result<Doc, _> = toml::from_str("[[profile]]\nname = \"x\"\nkernal = \"v\"\n");
    assert!(r.unwrap_err().to_string().contains("kernal"));
    let r: Result<Doc, _> =
        toml::from_str("[[group]]\nname = \"x\"\nprofile = \"p\"\nmatch = { mca = \"x\" }\n");
    assert!(r.is_err());
    let r: Result<Doc, _> =
        toml::from_str("[[group]]\nname = \"x\"\nprofile = \"p\"\nmatch = { arch = \"amiga\" }\n");
    assert!(r.is_err());
}

// ---------------------------------------------------------------- precedence

const GROUPS: &str = r#"
[[group]]
name = "qemu"
profile = "rescue"
match = { mac = "52:54:00:*" }

[[group]]
name = "qemu-efi"
profile = "custom"
match = { mac = "52:54:00:*", arch = "efi-x64" }

[[group]]
name = "by-serial"
profile = "shell"
match = { serial = "SN-42*", arch = "bios", labels = { rack = "r1" } }

[boot]
default = "local"
"#;

#[tokio::test]
async fn most_specific_group_wins_then_pin_then_default() {
    let p = policy(GROUPS);
    let mut f = ClientFacts::new(mac("52:54:00:12:34:56"));
    let d = p.decide(&f, None, None).await.unwrap();
    assert_eq!(
        (d.profile.as_str(), &d.source),
        ("rescue", &Source::Group("qemu".into()))
    );

    f.arch = Some(Arch::EfiX64);
    let d = p.decide(&f, None, None).await.unwrap();
    assert_eq!(
        d.source,
        Source::Group("qemu-efi".into()),
        "two selectors beat one"
    );

    let other = ClientFacts::new(mac("aa:bb:cc:00:00:01"));
    let d = p.decide(&other, None, None).await.unwrap();
    assert_eq!((d.profile.as_str(), &d.source), ("local", &Source::Default));

    // Three selectors including a label, from the store.
    let store = p.store().clone();
    let m = mac("aa:bb:cc:00:00:02");
    store.machine_ensure(m, 1, "s").unwrap();
    operator(
        &store,
        m,
        OperatorChange::Labels(BTreeMap::from([("rack".into(), "r1".into())])),
    );
    let rec = store.machine(m).unwrap().unwrap();
    let f = ClientFacts::from_raw(
        m,
        &RawFacts {
            arch: Some(Arch::Bios),
            serial: Some("SN-4242"),
            ..Default::default()
        },
    );
    let d = p.decide(&f, Some(&rec), None).await.unwrap();
    assert_eq!(d.source, Source::Group("by-serial".into()));

    // A pin beats every group.
    pin(&store, m, "seed");
    let rec = store.machine(m).unwrap().unwrap();
    let d = p.decide(&f, Some(&rec), None).await.unwrap();
    assert_eq!((d.profile.as_str(), &d.source), ("seed", &Source::Pinned));
}

#[tokio::test]
async fn menu_choice_only_applies_to_menu_machines() {
    let p = policy("[boot]\ndefault = \"menu\"\n[[group]]\nname = \"g\"\nprofile = \"local\"\nmatch = { mac = \"52:54:00:*\" }\n");
    let menu_machine = ClientFacts::new(mac("aa:00:00:00:00:01"));
    let d = p.decide(&menu_machine, None, Some("rescue")).await.unwrap();
    assert_eq!(
        (d.profile.as_str(), &d.source),
        ("rescue", &Source::MenuChoice)
    );
    let grouped = ClientFacts::new(mac("52:54:00:00:00:01"));
    let d = p.decide(&grouped, None, Some("rescue")).await.unwrap();
    assert_eq!(
        d.profile, "local",
        "a grouped machine cannot pick another profile"
    );
    assert!(p.decide(&menu_machine, None, Some("nope")).await.is_err());
}

// ---------------------------------------------------------------- rendering

async fn script_for(p: &Policy, profile: &str, facts: &ClientFacts) -> String {
    let store = p.store().clone();
    store.machine_ensure(facts.mac, 1, "0123abcd").unwrap();
    pin(&store, facts.mac, profile);
    let rec = store.machine(facts.mac).unwrap().unwrap();
    p.decide(facts, Some(&rec), None)
        .await
        .unwrap()
        .try_script(&base(), 7)
        .unwrap()
}

fn node() -> ClientFacts {
    ClientFacts::from_raw(
        mac("52:54:00:12:34:56"),
        &RawFacts {
            arch: Some(Arch::EfiX64),
            hostname: Some("node1"),
            serial: Some("SN-42"),
            ..Default::default()
        },
    )
}

#[tokio::test]
async fn a_cmdline_copied_from_an_ipxe_script_keeps_naming_its_initrd() {
    let p = policy(
        r#"
[[profile]]
name = "copied"
kernel = "iso:debian-12/install.amd/vmlinuz"
initrd = ["iso:debian-12/install.amd/initrd.img", "extra/initrd.img", "x/a%24b"]
cmdline = "initrd=initrd.img vga=788 --- quiet"
"#,
    );
    let s = script_for(&p, "copied", &node()).await;
    let lines = parse_ipxe(&s);
    let k = kernel_line(&lines);
    // The cmdline's `initrd=initrd.img` names the first initrd; it is not added twice. The
    // second file of the same name, and one with a `%`, get numbered names.
    assert_eq!(
        k.args[3..],
        [
            "initrd=initrd1",
            "initrd=initrd2",
            "initrd=initrd.img",
            "vga=788",
            "---",
            "quiet"
        ],
        "{s}"
    );
    let names: Vec<&str> = lines
        .iter()
        .filter(|l| l.cmd == "initrd")
        .map(|l| l.args[1].as_str())
        .collect();
    assert_eq!(names, ["initrd.img", "initrd1", "initrd2"], "{s}");
}

#[tokio::test]
async fn kernel_profile_renders_kernel_initrd_boot_and_retry() {
    let p = policy("");
    let s = script_for(&p, "debian-install", &node()).await;
    let lines = parse_ipxe(&s);
    let k = kernel_line(&lines);
    assert_eq!(
        k.args[0..3],
        [
            "--name",
            "kernel",
            "http://198.18.0.1:8080/iso/debian-12/install.amd/vmlinuz"
        ]
    );
    // Initrds are named by their file names.
    assert_eq!(
        k.args[3..5],
        ["initrd=initrd.gz", "initrd=firmware.cpio.gz"]
    );
    assert!(
        k.args.contains(
            &"url=http://198.18.0.1:8080/config/52:54:00:12:34:56/preseed.cfg".to_string()
        ),
        "{s}"
    );
    assert!(k.args.contains(&"hostname=node1".to_string()));
    assert!(k.args.contains(&"secret=0123abcd".to_string()));
    let initrds: Vec<&Line> = lines.iter().filter(|l| l.cmd == "initrd").collect();
    assert_eq!(initrds.len(), 2);
    assert_eq!(
        initrds[0].args,
        [
            "--name",
            "initrd.gz",
            "http://198.18.0.1:8080/iso/debian-12/install.amd/initrd.gz"
        ]
    );
    assert_eq!(
        initrds[1].args[2],
        "http://198.18.0.1:8080/files/extra/firmware.cpio.gz"
    );
    assert!(lines.iter().any(|l| l.cmd == "boot"));
    assert!(lines.iter().any(|l| l.cmd == ":failed"));
    assert!(lines.iter().any(|l| l.cmd == "sleep" && l.args == ["7"]));
    assert!(lines
        .iter()
        .any(|l| l.cmd == "chain" && l.args.last().unwrap() == "http://198.18.0.1:8080/boot.ipxe"));

    let s = script_for(&p, "rescue", &node()).await;
    let k = kernel_line(&parse_ipxe(&s)).args.clone();
    assert_eq!(
        k[2], "https://mirror.example/rescue/vmlinuz",
        "absolute URLs unchanged"
    );
}

#[tokio::test]
async fn action_script_and_pxelinux_profiles_render() {
    let p = policy("");
    let s = script_for(&p, "local", &node()).await;
    let l = parse_ipxe(&s);
    assert!(
        l.iter().any(|l| l.cmd == "exit") && !l.iter().any(|l| l.cmd == "kernel"),
        "{s}"
    );

    let s = script_for(&p, "shell", &node()).await;
    assert!(parse_ipxe(&s).iter().any(|l| l.cmd == "shell"));

    let s = script_for(&p, "custom", &node()).await;
    let l = parse_ipxe(&s);
    assert_eq!(l[0].args, ["custom", "for", "52:54:00:12:34:56", "node1"]);
    assert_eq!(l[1].args, ["http://198.18.0.1:8080/files/custom.ipxe"]);

    let s = script_for(&p, "menu", &node()).await;
    let l = parse_ipxe(&s);
    let items: Vec<&Line> = l.iter().filter(|l| l.cmd == "item").collect();
    assert!(
        items
            .iter()
            .any(|i| i.args[0] == "p0" && i.args[1] == "debian-install"),
        "{s}"
    );
    assert!(l.iter().any(|l| l.cmd == "choose"));
    assert!(
        s.contains("/ipxe?mac=52%3A54%3A00%3A12%3A34%3A56&profile=rescue"),
        "{s}"
    );

    let s = script_for(&p, "seed", &node()).await;
    let l = parse_ipxe(&s);
    let sets: Vec<&Line> = l.iter().filter(|l| l.cmd == "set").collect();
    // The prefix is the loader's directory (ldlinux.c32 is loaded from there); the config is
    // an absolute URL to chainboot's per-machine route.
    assert_eq!(
        sets[0].args,
        ["210:string", "http://198.18.0.1:8080/files/"]
    );
    assert_eq!(
        sets[1].args,
        [
            "209:string",
            "http://198.18.0.1:8080/pxelinux.cfg/01-52-54-00-12-34-56"
        ]
    );
    assert!(l
        .iter()
        .any(|l| l.cmd == "chain" && l.args == ["http://198.18.0.1:8080/files/lpxelinux.0"]));

    // and its pxelinux.cfg, parsed back
    let rec = p.store().machine(node().mac).unwrap().unwrap();
    let d = p.decide(&node(), Some(&rec), None).await.unwrap();
    let cfg = d.pxelinux_cfg(&base()).unwrap().unwrap();
    let kv: Vec<(String, String)> = cfg
        .lines()
        .filter_map(|l| {
            l.trim()
                .split_once(' ')
                .map(|(k, v)| (k.to_string(), v.to_string()))
        })
        .collect();
    let get = |k: &str| {
        kv.iter()
            .find(|(kk, _)| kk == k)
            .map(|(_, v)| v.clone())
            .unwrap()
    };
    assert_eq!(get("DEFAULT"), "chainboot");
    assert_eq!(get("KERNEL"), "http://198.18.0.1:8080/files/seed/vmlinuz");
    assert_eq!(
        get("INITRD"),
        "http://198.18.0.1:8080/files/seed/initrd.img"
    );
    assert_eq!(get("APPEND"), "console=ttyS0 host=node1");
}

#[tokio::test]
async fn template_errors_become_a_retrying_script() {
    let cfg = parse(
        "[[profile]]\nname = \"broken\"\nkernel = \"vmlinuz\"\ncmdline = \"x={{ machine.nosuchfact }}\"\n[boot]\ndefault = \"broken\"\n",
    );
    let p = Policy::new(cfg, Arc::new(Store::in_memory().unwrap())).unwrap();
    let d = p.decide(&node(), None, None).await.unwrap();
    let err = d.try_script(&base(), 5).unwrap_err();
    assert!(
        err.0.contains("nosuchfact") || err.0.contains("undefined"),
        "{err}"
    );
    let s = d.script(&base(), 5);
    let l = parse_ipxe(&s);
    assert!(
        l[0].cmd == "echo" && s.contains("cannot boot 52:54:00:12:34:56"),
        "{s}"
    );
    assert!(l.iter().any(|l| l.cmd == "sleep" && l.args == ["5"]));
    assert!(!l.iter().any(|l| l.cmd == "kernel"));
}

#[tokio::test]
async fn a_cmdline_asking_for_https_gets_the_tls_port_or_is_refused_never_given_http() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("inst")).unwrap();
    std::fs::write(
        dir.path().join("inst").join("preseed.cfg"),
        "d-i preseed/include string {{ https }}/config/{{ machine.mac }}/more.cfg\n",
    )
    .unwrap();
    std::fs::write(dir.path().join("plain.cfg"), "url {{ http }}\n").unwrap();
    let cfg = parse(&format!(
        "[[profile]]\nname = \"inst\"\nkernel = \"vmlinuz\"\n\
         cmdline = \"url={{{{ https }}}}/config/{{{{ machine.mac }}}}/preseed.cfg\"\n\
         [boot]\ndefault = \"inst\"\ntemplates = \"{}\"\n",
        dir.path().display()
    ));
    let p = Policy::new(cfg, Arc::new(Store::in_memory().unwrap())).unwrap();
    let d = p.decide(&node(), None, None).await.unwrap();
    let tls = base().with_https_port(Some(8443));
    let s = d.try_script(&tls, 5).unwrap();
    let lines = parse_ipxe(&s);
    let url = "url=https://198.18.0.1:8443/config/52:54:00:12:34:56/preseed.cfg";
    assert!(kernel_line(&lines).args.iter().any(|a| a == url), "{s}");
    let pre = d
        .config_file(dir.path(), "preseed.cfg", &tls)
        .unwrap()
        .unwrap();
    assert_eq!(
        pre,
        "d-i preseed/include string https://198.18.0.1:8443/config/52:54:00:12:34:56/more.cfg\n"
    );
    // The same on a server without a TLS listener: refused, with the reason; no http:// URL.
    let err = d.try_script(&base(), 5).unwrap_err();
    assert!(
        err.0.contains("profile inst cmdline") && err.0.contains("no TLS listener"),
        "{err}"
    );
    let refused = d.script(&base(), 5);
    assert!(!refused.contains("url=http"), "{refused}");
    let err = d
        .config_file(dir.path(), "preseed.cfg", &base())
        .unwrap_err();
    assert!(
        err.0.contains("inst/preseed.cfg: ") && err.0.contains("no TLS listener"),
        "{err}"
    );
    // A template that does not ask renders as before.
    assert_eq!(
        d.config_file(dir.path(), "plain.cfg", &base())
            .unwrap()
            .unwrap(),
        "url http://198.18.0.1:8080\n"
    );
    // explain names each template that asks, and what it gets.
    let f = node();
    let text = p.explain_now(&f, &tls, None).unwrap().to_string();
    assert!(
        text.contains(
            "https: profile inst cmdline asks for {{ https }}: gets https://198.18.0.1:8443"
        ),
        "{text}"
    );
    assert!(
        text.contains("https: /config/52:54:00:12:34:56/preseed.cfg (")
            && !text.contains("plain.cfg"),
        "{text}"
    );
    let text = p.explain_now(&f, &base(), None).unwrap().to_string();
    assert!(
        text.contains(
            "https: profile inst cmdline asks for {{ https }}: refused, this server has no TLS listener"
        ),
        "{text}"
    );
}

// ---------------------------------------------------------------- hostile facts

const HOSTILE: &[&str] = &[
    "x\nkernel http://evil/k",
    "x\r\nshell",
    "${net0/mac}",
    "$${x}",
    "{{ machine.secret }}",
    "{% for x in y %}",
    "a && shell",
    "a || shell",
    "a b=c init=/bin/sh",
    "\"quoted\" 'single'",
    "#comment",
    ":label",
    "%0akernel",
    "\u{0}\u{7}\u{1b}[31m",
    "ünïcödé",
];

#[tokio::test]
async fn hostile_facts_never_escape_their_slot() {
    let p = policy("");
    let long = "A".repeat(100_000);
    let mut corpus: Vec<String> = HOSTILE.iter().map(|s| s.to_string()).collect();
    corpus.push(long);
    for (n, evil) in corpus.iter().enumerate() {
        let m = Mac([0x52, 0x54, 0, 0, 0x10, n as u8]);
        let f = ClientFacts::from_raw(
            m,
            &RawFacts {
                arch: None,
                uuid: Some(evil),
                hostname: Some(evil),
                serial: Some(evil),
                manufacturer: Some(evil),
                product: Some(evil),
                ip: Some(evil),
            },
        );
        for profile in ["debian-install", "custom", "seed", "local", "menu"] {
            let s = script_for(&p, profile, &f).await;
            let lines = parse_ipxe(&s);
            assert!(
                !s.contains("{{") && !s.contains("{%"),
                "template syntax leaked: {s}"
            );
            if profile == "debian-install" {
                let k = kernel_line(&lines);
                // --name kernel URL, 2 initrd=, 4 fixed args, url, hostname, serial, secret.
                assert_eq!(
                    k.args.len(),
                    3 + 2 + 6,
                    "kernel args changed by {evil:?}: {:?}",
                    k.args
                );
                for a in &k.args {
                    assert!(
                        !a.starts_with("init=") && !a.starts_with("b=") && a != "shell",
                        "{a} escaped: {s}"
                    );
                }
                let serial = k.args.iter().find(|a| a.starts_with("serial=")).unwrap();
                assert!(serial.len() <= "serial=".len() + 64, "{serial}");
            }
            if profile == "custom" {
                assert_eq!(lines.len(), 2, "{s}");
            }
        }
        pin(p.store(), m, "seed");
        let rec = p.store().machine(m).unwrap().unwrap();
        let d = p.decide(&f, Some(&rec), None).await.unwrap();
        let cfg = d.pxelinux_cfg(&base()).unwrap().unwrap();
        assert_eq!(
            cfg.lines().count(),
            7,
            "pxelinux.cfg lines changed by {evil:?}:\n{cfg}"
        );
    }
}

// ---------------------------------------------------------------- explain, quick mode

#[test]
fn explain_says_which_group_matched_and_why() {
    let p = policy(GROUPS);
    let mut f = ClientFacts::new(mac("52:54:00:12:34:56"));
    f.arch = Some(Arch::Bios);
    let e = p
        .explain_now(&f, &base(), None)
        .expect("no boot API involved");
    let text = e.to_string();
    assert!(
        text.contains("boots: profile rescue (group qemu)"),
        "{text}"
    );
    assert!(
        text.contains("group qemu-efi (2 selectors): does not match"),
        "{text}"
    );
    assert!(
        text.contains("- arch: wanted efi-x64, machine has bios"),
        "{text}"
    );
    assert!(text.contains("+ mac: wanted 52:54:00:*"), "{text}");
    assert!(
        text.contains("  kernel --name kernel https://mirror.example/rescue/vmlinuz"),
        "{text}"
    );
}

#[tokio::test]
async fn quick_mode_boots_local_files_through_the_policy_route() {
    let dir = tempfile::tempdir().unwrap();
    let k = dir.path().join("vmlinuz");
    let i = dir.path().join("initrd.img");
    std::fs::write(&k, b"kernel").unwrap();
    std::fs::write(&i, b"initrd").unwrap();
    let p = Policy::quick(
        &k,
        &[i],
        "console=ttyS0 {weird}",
        Arc::new(Store::in_memory().unwrap()),
    )
    .unwrap();
    let d = p.decide(&node(), None, None).await.unwrap();
    let s = d.try_script(&base(), 3).unwrap();
    let l = parse_ipxe(&s);
    let k = kernel_line(&l);
    assert_eq!(
        k.args[2],
        "http://198.18.0.1:8080/boot/52-54-00-12-34-56/kernel"
    );
    assert_eq!(
        k.args[3..],
        ["initrd=initrd.img", "console=ttyS0", "{weird}"]
    );
    assert!(Policy::quick(
        &dir.path().join("missing"),
        &[],
        "",
        Arc::new(Store::in_memory().unwrap())
    )
    .is_err());
}

#[tokio::test]
async fn reload_swaps_the_config_and_a_bad_one_keeps_the_old() {
    let p = policy("[boot]\ndefault = \"rescue\"\n");
    let f = node();
    assert_eq!(p.decide(&f, None, None).await.unwrap().profile, "rescue");
    let bad = parse(&format!(
        "{PROFILES}\n[boot]\ndefault = \"nope\"\napi = \"ftp://x\"\n"
    ));
    let problems = p.reload(bad).unwrap_err();
    assert_eq!(problems.len(), 2, "{problems:?}");
    assert_eq!(p.decide(&f, None, None).await.unwrap().profile, "rescue");
    p.reload(parse(&format!("{PROFILES}\n[boot]\ndefault = \"shell\"\n")))
        .unwrap();
    assert_eq!(p.decide(&f, None, None).await.unwrap().profile, "shell");
}
