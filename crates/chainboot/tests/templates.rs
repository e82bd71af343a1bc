//! Installer files through the binary's real HTTP server, fetched with curl: a preseed full of
//! shell syntax is served byte for byte (`.raw`), a `.marked` file has only its marked parts
//! rendered, `{% raw %}` keeps text literal in an ordinary template, and every template keeps
//! its final newline. `{{ https }}`: the TLS listener's URL with one (curl fetches it over TLS),
//! refused by the server, `check` and `explain` without one.

#![allow(clippy::unwrap_used)] // a test: a failed step is a failed test

mod common;

use std::process::Command;

use common::*;

const MAC: &str = "52:54:00:00:18:03";

/// curl's body bytes and status (exit status checked: the exchange completed).
fn get(url: &str) -> (String, Vec<u8>) {
    get_with(&[], url)
}

/// curl with `extra` arguments: body and status (exit status checked).
fn get_with(extra: &[&str], url: &str) -> (String, Vec<u8>) {
    let out = Command::new("curl")
        .args([
            "-sS",
            "--noproxy",
            "*",
            "--max-time",
            "20",
            "-D",
            "/dev/stderr",
        ])
        .args(extra)
        .args(["-o", "-", url])
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

/// A preseed that fetches its late script over TLS, and the script itself.
fn https_templates(dir: &std::path::Path) -> std::path::PathBuf {
    let templates = dir.join("templates");
    std::fs::create_dir_all(&templates).unwrap();
    std::fs::write(
        templates.join("preseed.cfg"),
        "d-i preseed/late_command string in-target wget -O /tmp/late.sh {{ https }}/config/{{ machine.mac }}/late.sh\n",
    )
    .unwrap();
    std::fs::write(
        templates.join("late.sh"),
        "echo late for {{ machine.mac }} from {{ http }}\n",
    )
    .unwrap();
    templates
}

#[test]
fn a_template_asking_for_https_gets_the_tls_listeners_url_and_curl_fetches_it() {
    let dir = tempfile::tempdir().unwrap();
    let templates = https_templates(dir.path());
    let (cfg, _) = loopback_config(
        dir.path(),
        &format!("templates = \"{}\"\n", templates.display()),
    );
    let text = std::fs::read_to_string(&cfg).unwrap().replacen(
        "[http]\n",
        "[http]\ntls_listen = \"127.0.0.1:0\"\ntls = \"lab\"\n",
        1,
    );
    std::fs::write(&cfg, text).unwrap();
    let mut server = Server::start_in(None, &cfg, dir.path().join("log"));
    let http = server.listening("HTTP");
    let https = server.listening("HTTPS");
    let (status, _) = get(&format!("http://{http}/ipxe?mac={MAC}&platform=efi"));
    assert_eq!(status, "200");

    // Fetched over plain HTTP, the preseed names the TLS listener: same host, its port.
    let (status, body) = get(&format!("http://{http}/config/{MAC}/preseed.cfg"));
    let preseed = String::from_utf8(body).unwrap();
    assert_eq!(status, "200", "{preseed}");
    let want = format!("https://{https}/config/{MAC}/late.sh");
    let url = preseed
        .split_whitespace()
        .find(|w| w.starts_with("https://"))
        .unwrap_or_else(|| panic!("no https:// URL in {preseed}"));
    assert_eq!(url, want, "{preseed}");
    // The installer's fetch: curl over TLS, verified with the lab CA chainboot made.
    let ca = dir.path().join("state/tls/ca.crt");
    let (status, body) = get_with(&["--cacert", ca.to_str().unwrap()], url);
    assert_eq!(status, "200");
    assert_eq!(
        String::from_utf8(body).unwrap(),
        format!("echo late for {MAC} from https://{https}\n"),
        "a template fetched over TLS sees its own base as {{{{ http }}}}"
    );
}

#[test]
fn without_a_tls_listener_a_template_asking_for_https_is_refused_by_serve_check_and_explain() {
    let dir = tempfile::tempdir().unwrap();
    let templates = https_templates(dir.path());
    let (cfg, _) = loopback_config(
        dir.path(),
        &format!(
            "templates = \"{}\"\n[[profile]]\nname = \"inst\"\nkernel = \"vmlinuz\"\n\
             cmdline = \"url={{{{ https }}}}/config/{{{{ machine.mac }}}}/preseed.cfg\"\n",
            templates.display()
        ),
    );
    let c = cfg.to_str().unwrap();
    let (code, out) = chainboot(&["check", "--config", c]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains(
            "preseed.cfg: the template asks for {{ https }}, but this server has no TLS listener"
        ),
        "{out}"
    );
    assert!(out.contains("profile[2].cmdline"), "{out}");
    assert!(!out.contains("late.sh"), "late.sh asks for nothing: {out}");
    let explain = |c: &str| {
        let (code, out) = chainboot(&[
            "explain",
            "-c",
            c,
            "--mac",
            MAC,
            "--arch",
            "efi-x64",
            "--server-ip",
            "198.18.0.1",
        ]);
        assert_eq!(code, 0, "{out}");
        out
    };
    let out = explain(c);
    assert!(
        out.contains(&format!("https: /config/{MAC}/preseed.cfg (")) && out.contains("refused"),
        "{out}"
    );

    let mut server = Server::start_in(None, &cfg, dir.path().join("log"));
    let http = server.listening("HTTP");
    let (status, _) = get(&format!("http://{http}/ipxe?mac={MAC}&platform=efi"));
    assert_eq!(status, "200");
    let (status, body) = get(&format!("http://{http}/config/{MAC}/preseed.cfg"));
    let body = String::from_utf8(body).unwrap();
    assert_eq!(status, "500", "{body}");
    assert!(
        body.contains("no TLS listener") && !body.contains("wget"),
        "{body}"
    );
    let (status, _) = get(&format!("http://{http}/config/{MAC}/late.sh"));
    assert_eq!(status, "200");
    drop(server);

    // With a TLS listener configured, explain says what the template gets.
    let text = std::fs::read_to_string(&cfg).unwrap().replacen(
        "[http]\n",
        "[http]\ntls_listen = \"127.0.0.1:8443\"\ntls = \"lab\"\n",
        1,
    );
    std::fs::write(&cfg, text).unwrap();
    let out = explain(c);
    assert!(
        out.contains(&format!(
            "https: /config/{MAC}/preseed.cfg ({}) asks for {{{{ https }}}}: gets https://198.18.0.1:8443",
            templates.join("preseed.cfg").display()
        )),
        "{out}"
    );
}
