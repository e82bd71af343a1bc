//! GRUB configs for machines on the signed shim → GRUB chain. Pure functions: no I/O.
//!
//! The distribution's signed network GRUB (Debian's `grubnetx64.efi.signed`) has the built-in
//! prefix `/grub` on the TFTP server it came from and sources `$prefix/x86_64-efi/grub.cfg`,
//! else `$prefix/grub.cfg`. It has TFTP but no HTTP client, and under Secure Boot it loads no
//! module from outside its own image, so everything it reads comes over TFTP. Both names get
//! the same stub ([`stub_config`]), which sources the machine's own config by its MAC
//! (`grub/mac/<mac>.cfg`, GRUB's `$net_default_mac`); that one is rendered from the policy's
//! decision like an iPXE script. The kernel and initrds come from `grub/boot/<mac>/...`.
//!
//! Quoting: GRUB's script language expands `$` and splits words like a shell; inside single
//! quotes nothing is special and a quote cannot be escaped, so every word that carries
//! configured or learned text is single-quoted with each `'` written as `'\''` ([`quote`]),
//! and command lines are cut to one line first ([`crate::render::one_line`]). No fact,
//! template output or API answer can add a command, a kernel argument or end a quote.

use crate::render::{echo_text, one_line};

/// The TFTP folder GRUB's prefix points at.
pub const PREFIX_DIR: &str = "grub";

/// `s` as one GRUB word that is taken literally.
pub fn quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('\'');
    for c in s.chars() {
        if c == '\'' {
            out.push_str("'\\''");
        } else if c.is_control() {
            // A newline ends a command even inside quotes in GRUB's lexer; other control
            // bytes have no business in a config line.
            out.push(' ');
        } else {
            out.push(c);
        }
    }
    out.push('\'');
    out
}

/// Splits one line of a config this module wrote back into its words, undoing [`quote`]:
/// plain words end at whitespace, `'...'` is literal, `\x` outside quotes is `x`, `"..."`
/// (only this module's own `${prefix}` paths) is kept as written. `None` for what is never
/// written outside quotes (an unterminated quote, `$`, `;`, `|`, `&`, `{`, `}`, `#`). Tests and the fuzz target use it to check that a line has exactly the
/// words it was rendered from.
pub fn split_words(line: &str) -> Option<Vec<String>> {
    let mut words = Vec::new();
    let mut cur: Option<String> = None;
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            ' ' | '\t' => {
                if let Some(w) = cur.take() {
                    words.push(w);
                }
            }
            '\'' => {
                let w = cur.get_or_insert_with(String::new);
                loop {
                    match chars.next()? {
                        '\'' => break,
                        c => w.push(c),
                    }
                }
            }
            '"' => {
                let w = cur.get_or_insert_with(String::new);
                loop {
                    match chars.next()? {
                        '"' => break,
                        c => w.push(c),
                    }
                }
            }
            '\\' => cur.get_or_insert_with(String::new).push(chars.next()?),
            '$' | ';' | '|' | '&' | '{' | '}' | '#' | '\n' | '\r' => return None,
            c => cur.get_or_insert_with(String::new).push(c),
        }
    }
    if let Some(w) = cur {
        words.push(w);
    }
    Some(words)
}

/// `grub/x86_64-efi/grub.cfg` and `grub/grub.cfg`: the same for every machine; sources the
/// machine's own config, and when there is none (no decision yet, refused, server away)
/// waits and starts over, so a machine never stops at GRUB's prompt without a reason.
pub fn stub_config(retry_secs: u64) -> String {
    format!(
        "echo 'chainboot: loading the config of this machine'\n\
         configfile \"${{prefix}}/mac/${{net_default_mac}}.cfg\"\n\
         echo 'chainboot: no config for this machine (see the server log)'\n{}",
        retry_tail(retry_secs)
    )
}

fn retry_tail(retry_secs: u64) -> String {
    format!(
        "echo 'chainboot: retrying in {retry_secs} seconds'\nsleep {retry_secs}\nconfigfile \"${{prefix}}/x86_64-efi/grub.cfg\"\n"
    )
}

/// `echo` of a message, in the character set of iPXE's echo (so the console reads the same
/// whichever chain the machine took), quoted.
fn echo(out: &mut String, text: &str) {
    out.push_str("echo ");
    out.push_str(&quote(&format!("chainboot: {}", echo_text(text))));
    out.push('\n');
}

/// The config of a machine that cannot boot right now: why, then a retry.
pub fn error_config(mac: &str, reason: &str, retry_secs: u64) -> String {
    let mut out = String::new();
    echo(&mut out, &format!("cannot boot {mac}: {reason}"));
    out.push_str(&retry_tail(retry_secs));
    out
}

/// A kernel boot through GRUB. Paths are absolute on GRUB's TFTP root.
pub struct GrubKernel<'a> {
    pub mac: &'a str,
    pub profile: &'a str,
    pub header: &'a str,
    pub message: Option<&'a str>,
    pub kernel_path: &'a str,
    pub initrd_paths: &'a [String],
    pub cmdline: &'a str,
}

/// `linux` + `initrd` + `boot`, each step checked: a missing file or a kernel the firmware's
/// keys refuse ends in a message naming the likely cause, and a retry.
pub fn kernel_config(k: &GrubKernel<'_>, retry_secs: u64) -> String {
    let mut out = String::new();
    echo(&mut out, k.header);
    if let Some(m) = k.message {
        echo(&mut out, m);
    }
    let mut linux = format!("linux {}", quote(k.kernel_path));
    for arg in one_line(k.cmdline).split(' ').filter(|a| !a.is_empty()) {
        linux.push(' ');
        linux.push_str(&quote(arg));
    }
    out.push_str(&format!("if {linux}; then\n"));
    if k.initrd_paths.is_empty() {
        out.push_str("  boot\n");
    } else {
        let paths: Vec<String> = k.initrd_paths.iter().map(|p| quote(p)).collect();
        out.push_str(&format!(
            "  if initrd {}; then\n    boot\n  fi\n",
            paths.join(" ")
        ));
    }
    out.push_str("fi\n");
    echo(
        &mut out,
        &format!(
            "booting profile {} failed for {}: a file is missing, or Secure Boot refused a kernel not signed by a key this machine trusts (see the server log)",
            k.profile, k.mac
        ),
    );
    out.push_str(&retry_tail(retry_secs));
    out
}

/// Local disk: GRUB's `exit` returns to the firmware, which tries its next boot option.
pub fn local_disk_config(header: &str) -> String {
    let mut out = String::new();
    echo(&mut out, header);
    echo(&mut out, "booting from local disk");
    out.push_str("exit\n");
    out
}

/// The GRUB command line (the iPXE shell's counterpart): the config ends, GRUB prompts.
pub fn shell_config(header: &str) -> String {
    let mut out = String::new();
    echo(&mut out, header);
    echo(&mut out, "GRUB command line");
    out
}

/// A menu of `profiles` (name, description): entry `i` sources `grub/menu/<mac>/<i>.cfg`,
/// the config of that choice. Entries are named by index in paths, so no name reaches one.
pub fn menu_config(mac: &str, profiles: &[(String, String)]) -> String {
    let mut out = String::from("set timeout=-1\n");
    echo(&mut out, &format!("choose what {mac} boots"));
    for (i, (name, desc)) in profiles.iter().enumerate() {
        let title = if desc.is_empty() {
            name.clone()
        } else {
            format!("{name} - {desc}")
        };
        out.push_str(&format!(
            "menuentry {} {{\n  configfile \"${{prefix}}/menu/{}/{i}.cfg\"\n}}\n",
            quote(&echo_text(&title)),
            menu_dir_name(mac),
        ));
    }
    out.push_str("menuentry 'Boot from local disk' {\n  exit\n}\n");
    out
}

/// The folder name of a machine's menu choices: its MAC with hyphens, which carries no
/// character GRUB treats specially.
fn menu_dir_name(mac: &str) -> String {
    mac.chars()
        .map(|c| if c.is_ascii_hexdigit() { c } else { '-' })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words_of(cfg: &str, first: &str) -> Vec<String> {
        let line = cfg
            .lines()
            .map(str::trim)
            .find(|l| l.starts_with(first))
            .unwrap_or_else(|| panic!("no {first} line in {cfg}"));
        split_words(line.trim_end_matches("; then")).expect("a line quote() wrote")
    }

    #[test]
    fn quoted_words_come_back_unchanged_whatever_they_hold() {
        for s in [
            "plain",
            "it's",
            "a b",
            "$(x) ${y}",
            "'",
            "''",
            "\\",
            "a;b|c&&d#e{f}",
            "",
        ] {
            assert_eq!(split_words(&quote(s)), Some(vec![s.to_string()]), "{s}");
        }
        assert_eq!(quote("a\nb"), "'a b'");
    }

    #[test]
    fn kernel_arguments_stay_arguments_and_cannot_add_commands() {
        let cmdline = "console=ttyS0 x='; reboot; echo ' ${prefix} $(id) \n boot\rquiet a'b";
        let cfg = kernel_config(
            &GrubKernel {
                mac: "52:54:00:00:00:01",
                profile: "p",
                header: "h'; reboot",
                message: None,
                kernel_path: "/grub/boot/52-54-00-00-00-01/kernel",
                initrd_paths: &["/grub/boot/52-54-00-00-00-01/initrd/0".into()],
                cmdline,
            },
            10,
        );
        let words = words_of(&cfg, "if linux ");
        let want: Vec<String> = ["if", "linux", "/grub/boot/52-54-00-00-00-01/kernel"]
            .into_iter()
            .map(String::from)
            .chain(one_line(cmdline).split(' ').map(String::from))
            .collect();
        assert_eq!(words, want);
        // The commands, in order, are exactly these; nothing the input said became one.
        let commands: Vec<String> = cfg
            .lines()
            .filter_map(|l| {
                split_words(l.trim().trim_end_matches("; then")).and_then(|w| w.into_iter().next())
            })
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
            ]
        );
    }

    #[test]
    fn stub_sources_the_machines_config_by_mac_and_retries() {
        let s = stub_config(10);
        assert!(
            s.contains("configfile \"${prefix}/mac/${net_default_mac}.cfg\""),
            "{s}"
        );
        assert!(
            s.ends_with("configfile \"${prefix}/x86_64-efi/grub.cfg\"\n"),
            "{s}"
        );
    }

    #[test]
    fn menu_entries_point_at_choices_by_index() {
        let m = menu_config(
            "52:54:00:00:00:01",
            &[
                ("debian".into(), "it's } { $x".into()),
                ("b".into(), String::new()),
            ],
        );
        assert!(
            m.contains("configfile \"${prefix}/menu/52-54-00-00-00-01/0.cfg\""),
            "{m}"
        );
        assert!(
            m.contains("configfile \"${prefix}/menu/52-54-00-00-00-01/1.cfg\""),
            "{m}"
        );
        let title = m.lines().find(|l| l.contains("debian")).unwrap();
        assert!(!title.contains('$') && !title.contains("} {"), "{title}");
    }

    #[test]
    fn error_and_local_disk_configs_say_why() {
        let e = error_config("52:54:00:00:00:01", "profile x is an iPXE script", 5);
        assert!(
            e.starts_with(
                "echo 'chainboot: cannot boot 52:54:00:00:00:01: profile x is an iPXE script'\n"
            ),
            "{e}"
        );
        assert!(e.contains("sleep 5\n"));
        assert!(local_disk_config("h").ends_with("exit\n"));
    }
}
