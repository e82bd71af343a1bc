//! Installer files through the binary's real HTTP server, fetched with curl: a preseed full of
//! shell syntax is served byte for byte (`.raw`), a `.marked` file has only its marked parts
//! rendered, `{% raw %}` keeps text literal in an ordinary template, and every template keeps
//! its final newline.

mod common;

use std::process::Command;

use common::*;

const MAC: &str = "52:54:00:00:18:03";

/// curl's body bytes and status (exit status checked: the exchange completed).
fn get(url: &str) -> (String, Vec<u8>) {
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "20", "-D", "/dev/stderr", "-o", "-"])
        .arg(url)
        .output()
        .expect("curl (bash .ci/install-deps installs it)");
    assert!(
        out.status.success(),
        "{url}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let head = String::from_utf8_lossy(&out.stderr).into_owned();
    let status = head.split_whitespace().nth(1).unwrap_or("").to_string();
    (status, out.stdout)
}

/// A preseed as people write them: shell lengths, brace expansions, Jinja-looking text.
const PRESEED: &str = "d-i debian-installer/locale string en_US\n\
d-i preseed/late_command string in-target sh -c 'x=abc; echo ${#x} ${x%%b*} {a,b}'\n\
d-i preseed/early_command string echo '{{ not a template }}' '{% neither %}' '{# nor #}'\n";

#[test]
fn installer_files_are_served_untouched_marked_only_or_rendered_with_their_final_newline() {
    let dir = tempfile::tempdir().unwrap();
    let templates = dir.path().join("templates");
    std::fs::create_dir_all(&templates).unwrap();
    std::fs::write(templates.join("preseed.cfg.raw"), PRESEED).unwrap();
    std::fs::write(
        templates.join("late.sh.marked"),
        "#!/bin/sh\nx=abc; echo ${#x} {{ y }} {%x%}\n\
         curl -d '{\"event\": \"installed\"}' '{{@ machine.events_url @}}'{#@ gone @#}\n",
    )
    .unwrap();
    std::fs::write(
        templates.join("ks.cfg"),
        "# {{ machine.mac }}\n%post\n{% raw %}echo ${#x} {{ y }}{% endraw %}\n%end\n",
    )
    .unwrap();
    std::fs::write(templates.join("lines.txt"), "line1\nline2\n").unwrap();
    let (cfg, _) = loopback_config(
        dir.path(),
        &format!("templates = \"{}\"\n", templates.display()),
    );
    let mut server = Server::start_in(None, &cfg, dir.path().join("log"));
    let http = server.listening("HTTP");
    let url = |name: &str| format!("http://{http}/config/{MAC}/{name}");
    // The machine is known once iPXE has asked for its script.
    let (status, _) = get(&format!("http://{http}/ipxe?mac={MAC}&platform=efi"));
    assert_eq!(status, "200");

    let (status, body) = get(&url("preseed.cfg"));
    assert_eq!(status, "200", "{}", String::from_utf8_lossy(&body));
    assert_eq!(
        body,
        PRESEED.as_bytes(),
        "the preseed is served byte for byte"
    );

    let (status, body) = get(&url("late.sh"));
    assert_eq!(status, "200", "{}", String::from_utf8_lossy(&body));
    let text = String::from_utf8(body).unwrap();
    assert!(
        text.starts_with("#!/bin/sh\nx=abc; echo ${#x} {{ y }} {%x%}\ncurl -d '{\"event\": \"installed\"}' 'http://"),
        "{text}"
    );
    assert!(
        text.contains(&format!("/api/v1/machines/{MAC}/events?secret=")),
        "{text}"
    );
    assert!(text.ends_with("'\n") && !text.contains("gone"), "{text:?}");

    let (status, body) = get(&url("ks.cfg"));
    assert_eq!(status, "200");
    assert_eq!(
        String::from_utf8(body).unwrap(),
        format!("# {MAC}\n%post\necho ${{#x}} {{{{ y }}}}\n%end\n")
    );

    let (status, body) = get(&url("lines.txt"));
    assert_eq!(status, "200");
    assert_eq!(body, b"line1\nline2\n", "12 bytes, final newline kept");
}
