//! The boot policy's semantic checks over profiles, groups and `[boot]` together. Apart from
//! [`crate::config`] (plain data at the bottom): checking templates and compiling groups
//! needs the renderer and the selector, which themselves read the config types.

use std::collections::HashMap;
use std::time::Duration;

use chainboot_machine::{Arch, Loader};

use crate::config::{
    key, valid_name, AssetRef, BootConfig, GroupConfig, Issue, ProfileAction, ProfileConfig,
};

/// Checks profiles, groups and `[boot]` together. Every problem is reported, not just the
/// first. Two groups that could both match one machine with the same specificity are an
/// error: precedence must never depend on file order.
pub fn validate(
    profiles: &[ProfileConfig],
    groups: &[GroupConfig],
    boot: &BootConfig,
) -> Vec<Issue> {
    let mut out: Vec<Issue> = Vec::new();
    let names = check_profiles(profiles, &mut out);
    let profile_exists = |n: &str| names.contains_key(n) || n == "menu" || n == "local-disk";
    check_groups(groups, profiles, &profile_exists, &mut out);
    check_boot(boot, profiles, &profile_exists, &mut out);
    check_grub_reach(profiles, groups, boot, &mut out);
    out
}

/// Profiles (by index) that a machine may boot through a loader for which `uses` is true:
/// those whose own `loader` is one, those named by a group (or `[boot] default`) whose
/// machines start it, and every profile of a menu they reach. A machine starts a loader
/// when its group says so, else its profile, else `[boot] loader` for an architecture the
/// group admits (with no group: `[boot] default` and every architecture).
pub fn profiles_reached_by(
    profiles: &[ProfileConfig],
    groups: &[GroupConfig],
    boot: &BootConfig,
    uses: &dyn Fn(Loader) -> bool,
) -> Vec<(usize, String)> {
    let by_name = |n: &str| profiles.iter().position(|p| p.name == n);
    let arch_default = |arches: &[Arch]| {
        boot.loader
            .iter()
            .find(|(a, l)| {
                uses(**l) && l.available_for(**a) && (arches.is_empty() || arches.contains(a))
            })
            .map(|(a, l)| format!("[boot] loader for {a} is {l}"))
    };
    let mut reached: Vec<(usize, String)> = Vec::new();
    let add = |i: usize, why: String, reached: &mut Vec<(usize, String)>| {
        if !reached.iter().any(|(j, _)| *j == i) {
            reached.push((i, why));
        }
    };
    for (i, p) in profiles.iter().enumerate() {
        if p.loader.is_some_and(uses) {
            add(
                i,
                format!("its loader is {}", p.loader.unwrap_or_default()),
                &mut reached,
            );
        }
    }
    let mut entries: Vec<(&str, String)> = Vec::new();
    for g in groups {
        let own = by_name(&g.profile).and_then(|i| profiles[i].loader);
        let why = match g.loader.or(own) {
            Some(l) if uses(l) => Some(format!("group {} starts {l}", g.name)),
            Some(_) => None,
            None => arch_default(&g.selectors.arch).map(|w| format!("group {}: {w}", g.name)),
        };
        if let Some(why) = why {
            entries.push((g.profile.as_str(), why));
        }
    }
    if let Some(l) = boot.secure_boot_fallback.filter(|l| uses(*l)) {
        // Any machine may be refused and fall back, whatever its group.
        for g in groups {
            entries.push((
                g.profile.as_str(),
                format!("[boot] secure_boot_fallback is {l}"),
            ));
        }
        entries.push((
            boot.default.as_str(),
            format!("[boot] secure_boot_fallback is {l}"),
        ));
    }
    let default_own = by_name(&boot.default).and_then(|i| profiles[i].loader);
    if default_own.is_none() {
        if let Some(w) = arch_default(&[]) {
            entries.push((boot.default.as_str(), format!("[boot] default: {w}")));
        }
    }
    for (name, why) in entries {
        let menu = name == "menu"
            || by_name(name).is_some_and(|i| profiles[i].action == Some(ProfileAction::Menu));
        if menu {
            for (i, p) in profiles.iter().enumerate() {
                if p.action != Some(ProfileAction::Menu) {
                    add(i, format!("{why} and its menu offers it"), &mut reached);
                }
            }
        } else if let Some(i) = by_name(name) {
            add(i, why, &mut reached);
        }
    }
    reached.sort_by_key(|(i, _)| *i);
    reached
}

/// A profile a machine may boot through GRUB must be one GRUB can run: no iPXE script, no
/// PXELINUX, no asset GRUB would have to fetch over HTTP.
fn check_grub_reach(
    profiles: &[ProfileConfig],
    groups: &[GroupConfig],
    boot: &BootConfig,
    out: &mut Vec<Issue>,
) {
    if boot.secure_boot_fallback == Some(Loader::Ipxe) {
        out.push(Issue::new(
            key(&["boot", "secure_boot_fallback"]),
            "the fallback for machines that refuse the unsigned first stage must be a signed chain: grub or ipxe-shim".into(),
        ));
    }
    for (arch, loader) in &boot.loader {
        if !loader.available_for(*arch) {
            out.push(Issue::new(
                key(&["boot", "loader", arch.name()]),
                format!("there is no {arch} build of the {loader} chain (signed chains exist for efi-x64)"),
            ));
        }
    }
    for (i, why) in profiles_reached_by(profiles, groups, boot, &|l| l == Loader::Grub) {
        let p = &profiles[i];
        let idx = i.to_string();
        let mut bad = |k: &str, what: &str| {
            out.push(Issue::new(
                key(&["profile", &idx, k]),
                format!(
                    "profile {} may boot through GRUB ({why}), and {what}; give those machines the ipxe loader or another profile",
                    p.name
                ),
            ))
        };
        if p.script.is_some() {
            bad("script", "GRUB cannot run an iPXE script");
        }
        if p.pxelinux.is_some() {
            bad("pxelinux", "GRUB cannot run PXELINUX");
        }
        let urls = p
            .kernel
            .iter()
            .map(|k| ("kernel", k))
            .chain(p.initrd.iter().map(|r| ("initrd", r)))
            .filter(|(_, r)| matches!(AssetRef::parse(r), Ok(AssetRef::Url(_))));
        for (k, r) in urls.collect::<Vec<_>>() {
            bad(
                k,
                &format!("`{r}` is a URL, and the signed GRUB fetches only over TFTP"),
            );
        }
    }
}

/// Each profile on its own; the names seen (with their index) for the other checks.
fn check_profiles<'a>(
    profiles: &'a [ProfileConfig],
    out: &mut Vec<Issue>,
) -> HashMap<&'a str, usize> {
    let mut names: HashMap<&str, usize> = HashMap::new();
    for (i, p) in profiles.iter().enumerate() {
        let idx = i.to_string();
        check_profile_name(p, &idx, out);
        if let Some(first) = names.insert(&p.name, i) {
            out.push(Issue::new(
                key(&["profile", &idx, "name"]),
                format!("profile `{}` is already defined as profile {first}", p.name),
            ));
        }
        check_profile_kind(p, &idx, out);
        check_profile_values(p, &idx, out);
    }
    names
}

/// A profile's name: the allowed characters, and `menu` only for the menu.
fn check_profile_name(p: &ProfileConfig, idx: &str, out: &mut Vec<Issue>) {
    let at = key(&["profile", idx, "name"]);
    if !valid_name(&p.name) {
        out.push(Issue::new(
            at,
            format!(
                "profile name `{}` must be 1-64 characters of A-Z a-z 0-9 - _ .",
                p.name
            ),
        ));
    } else if p.name == "menu" && p.action != Some(ProfileAction::Menu) {
        out.push(Issue::new(
            at,
            "`menu` is reserved for the built-in profile menu".into(),
        ));
    }
}

/// What a profile boots: exactly one of kernel, script, action or pxelinux, and only the
/// keys that go with it.
fn check_profile_kind(p: &ProfileConfig, idx: &str, out: &mut Vec<Issue>) {
    let at = |k: &str| key(&["profile", idx, k]);
    let kinds = [
        p.kernel.is_some() && p.pxelinux.is_none(),
        p.script.is_some(),
        p.action.is_some(),
        p.pxelinux.is_some(),
    ];
    match kinds.iter().filter(|k| **k).count() {
        0 => out.push(Issue::new(
            key(&["profile", idx]),
            "profile needs one of kernel, script, action or pxelinux".into(),
        )),
        1 => {}
        _ => out.push(Issue::new(
            key(&["profile", idx]),
            "profile must have only one of kernel, script, action or pxelinux (pxelinux may use kernel/initrd/cmdline for its generated config)".into(),
        )),
    }
    if p.kernel.is_none() && p.pxelinux.is_none() {
        if !p.initrd.is_empty() {
            out.push(Issue::new(at("initrd"), "initrd without kernel".into()));
        }
        if p.cmdline.is_some() {
            out.push(Issue::new(at("cmdline"), "cmdline without kernel".into()));
        }
    }
    if p.pxelinux_config.is_some() && p.pxelinux.is_none() {
        out.push(Issue::new(
            at("pxelinux_config"),
            "pxelinux_config needs pxelinux (the loader)".into(),
        ));
    }
    if p.pxelinux.is_some() && p.pxelinux_config.is_none() && p.kernel.is_none() {
        out.push(Issue::new(
            at("pxelinux"),
            "a pxelinux profile needs pxelinux_config or kernel (to generate the config)".into(),
        ));
    }
}

/// A profile's values: asset references that parse, templates that compile, scripts that
/// are iPXE scripts.
fn check_profile_values(p: &ProfileConfig, idx: &str, out: &mut Vec<Issue>) {
    let at = |k: &str| key(&["profile", idx, k]);
    for (k, v) in [("kernel", &p.kernel), ("pxelinux", &p.pxelinux)] {
        if let Some(v) = v {
            if let Err(e) = AssetRef::parse(v) {
                out.push(Issue::new(at(k), e));
            }
        }
    }
    for (j, r) in p.initrd.iter().enumerate() {
        if let Err(e) = AssetRef::parse(r) {
            out.push(Issue::new(
                key(&["profile", idx, "initrd", &j.to_string()]),
                e,
            ));
        }
    }
    for (k, v) in [
        ("cmdline", &p.cmdline),
        ("script", &p.script),
        ("pxelinux_config", &p.pxelinux_config),
    ] {
        if let Some(v) = v {
            if let Err(e) = crate::render::check_template(v) {
                out.push(Issue::new(at(k), e));
            }
        }
    }
    if let Some(s) = &p.script {
        if !s.trim_start().starts_with("#!ipxe") {
            out.push(Issue::new(
                at("script"),
                "an iPXE script must start with `#!ipxe`".into(),
            ));
        }
    }
}

/// Each group, and every pair of groups that could match one machine with equal weight.
fn check_groups(
    groups: &[GroupConfig],
    profiles: &[ProfileConfig],
    profile_exists: &dyn Fn(&str) -> bool,
    out: &mut Vec<Issue>,
) {
    let mut group_names: HashMap<&str, usize> = HashMap::new();
    let mut compiled = Vec::new();
    for (i, g) in groups.iter().enumerate() {
        let idx = i.to_string();
        let at = |k: &str| key(&["group", &idx, k]);
        if !valid_name(&g.name) {
            out.push(Issue::new(
                at("name"),
                format!(
                    "group name `{}` must be 1-64 characters of A-Z a-z 0-9 - _ .",
                    g.name
                ),
            ));
        }
        if let Some(first) = group_names.insert(&g.name, i) {
            out.push(Issue::new(
                at("name"),
                format!("group `{}` is already defined as group {first}", g.name),
            ));
        }
        if !profile_exists(&g.profile) {
            out.push(Issue::new(
                at("profile"),
                unknown_profile(&g.profile, profiles),
            ));
        }
        match crate::select::CompiledGroup::compile(i, g) {
            Ok(c) => compiled.push(c),
            Err((field, j, e)) => out.push(Issue::new(
                key(&["group", &idx, "match", field, &j.to_string()]),
                e,
            )),
        }
    }
    for (a_i, a) in compiled.iter().enumerate() {
        for b in &compiled[a_i + 1..] {
            if a.specificity == b.specificity && a.may_overlap(b) {
                out.push(Issue::new(
                    key(&["group", &b.index.to_string(), "match"]),
                    format!(
                        "groups `{}` and `{}` can both match the same machine with the same number of selectors ({}); add a selector to the one that should win, or make them disjoint",
                        groups[a.index].name, groups[b.index].name, a.specificity
                    ),
                ));
            }
        }
    }
}

fn check_boot(
    boot: &BootConfig,
    profiles: &[ProfileConfig],
    profile_exists: &dyn Fn(&str) -> bool,
    out: &mut Vec<Issue>,
) {
    if !profile_exists(&boot.default) {
        out.push(Issue::new(
            key(&["boot", "default"]),
            unknown_profile(&boot.default, profiles),
        ));
    }
    if let Some(api) = &boot.api {
        match reqwest::Url::parse(api) {
            Ok(u) if matches!(u.scheme(), "http" | "https") && u.host_str().is_some() => {}
            Ok(_) => out.push(Issue::new(
                key(&["boot", "api"]),
                format!("`{api}`: the boot API must be an http(s) URL"),
            )),
            Err(e) => out.push(Issue::new(key(&["boot", "api"]), format!("`{api}`: {e}"))),
        }
    }
    if boot.api_timeout.is_zero() {
        out.push(Issue::new(
            key(&["boot", "api_timeout"]),
            "must be more than 0".into(),
        ));
    }
    if boot.retry_delay.is_zero() || boot.retry_delay > Duration::from_secs(3600) {
        out.push(Issue::new(
            key(&["boot", "retry_delay"]),
            "must be between 1s and 1h".into(),
        ));
    }
}

fn unknown_profile(name: &str, profiles: &[ProfileConfig]) -> String {
    let known: Vec<&str> = profiles.iter().map(|p| p.name.as_str()).collect();
    format!(
        "unknown profile `{name}` (known: {}; built in: menu, local-disk)",
        if known.is_empty() {
            "none".to_string()
        } else {
            known.join(", ")
        }
    )
}
