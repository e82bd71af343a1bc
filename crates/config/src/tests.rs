use super::*;
use serde::Deserialize;

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
struct Tftp {
    listen: String,
    root: Option<String>,
    #[serde(deserialize_with = "deserialize_duration")]
    timeout: std::time::Duration,
}

#[derive(Debug, Deserialize, Default, PartialEq)]
enum EfiX64 {
    #[default]
    #[serde(rename = "ipxe.efi")]
    IpxeEfi,
    #[serde(rename = "snponly.efi")]
    SnponlyEfi,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
struct Ipxe {
    efi_x64: EfiX64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Profile {
    name: String,
    kernel: Option<String>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
struct Doc {
    server: ServerConfig,
    tftp: Tftp,
    ipxe: Ipxe,
    profile: Vec<Profile>,
}

impl Validate for Doc {
    fn validate(&self) -> Vec<Issue> {
        let mut out = under(&["server"], self.server.validate());
        for (i, p) in self.profile.iter().enumerate() {
            if p.kernel.is_none() {
                out.push(Issue::new(
                    vec!["profile".into(), i.to_string(), "name".into()],
                    format!("profile `{}` has no kernel", p.name),
                ));
            }
        }
        out
    }
}

fn load(text: &str) -> Result<Doc, Problems> {
    load_str(Path::new("test.toml"), text)
}

#[test]
fn a_good_config_loads() {
    let d = load(
        "[server]\nadvertise = \"198.18.0.1\"\n[tftp]\nlisten = \"127.0.0.1:69\"\ntimeout = \"2s\"\n\
         [[profile]]\nname = \"a\"\nkernel = \"k\"\n",
    )
    .unwrap();
    assert_eq!(d.tftp.timeout, std::time::Duration::from_secs(2));
    assert_eq!(
        d.server.advertise_addr(),
        Some("198.18.0.1".parse().unwrap())
    );
    assert_eq!(d.profile.len(), 1);
}

#[test]
fn every_unknown_key_is_reported_with_line_and_suggestion() {
    let text = "[server]\nadvertize = \"auto\"\n\n[tftp]\nlisten = \"x\"\nrot = \"/srv\"\n[bogus]\na = 1\n";
    let p = load(text).unwrap_err().0;
    assert_eq!(p.len(), 3, "{p:?}");
    assert_eq!((p[0].line, p[0].key.as_str()), (2, "server.advertize"));
    assert!(
        p[0].message.contains("did you mean `advertise`?"),
        "{}",
        p[0].message
    );
    assert_eq!((p[1].line, p[1].key.as_str()), (6, "tftp.rot"));
    assert!(
        p[1].message.contains("did you mean `root`?"),
        "{}",
        p[1].message
    );
    assert_eq!((p[2].line, p[2].key.as_str()), (7, "bogus"));
    assert!(p[0]
        .to_string()
        .starts_with("test.toml:2:1: server.advertize: unknown field"));
}

#[test]
fn type_errors_in_arrays_of_tables_are_located() {
    let text = "[[profile]]\nname = \"a\"\nkernel = \"k\"\n[[profile]]\nname = 5\nkernel = \"k\"\n[tftp]\ntimeout = \"soon\"\n";
    let p = load(text).unwrap_err().0;
    assert_eq!(p.len(), 2, "{p:?}");
    assert_eq!((p[0].line, p[0].key.as_str()), (5, "profile[1].name"));
    assert_eq!((p[1].line, p[1].key.as_str()), (8, "tftp.timeout"));
    assert!(p[1].message.contains("not a duration"), "{}", p[1].message);
}

#[test]
fn bad_enum_values_get_suggestions() {
    let p = load("[ipxe]\nefi_x64 = \"snponly.ef\"\n").unwrap_err().0;
    assert_eq!(p.len(), 1);
    assert!(
        p[0].message.contains("did you mean `snponly.efi`?"),
        "{}",
        p[0].message
    );
}

#[test]
fn semantic_problems_point_at_their_keys() {
    let text = "[server]\nadvertise = \"nowhere\"\n[[profile]]\nname = \"a\"\n";
    let p = load(text).unwrap_err().0;
    assert_eq!(p.len(), 2, "{p:?}");
    assert_eq!((p[0].line, p[0].key.as_str()), (2, "server.advertise"));
    assert_eq!((p[1].line, p[1].key.as_str()), (4, "profile[0].name"));
}

#[test]
fn broken_toml_is_one_clear_problem() {
    let p = load("[server\nx = 1\n").unwrap_err().0;
    assert_eq!(p.len(), 1);
    assert_eq!(p[0].line, 1);
    assert!(
        p[0].message.starts_with("not valid TOML"),
        "{}",
        p[0].message
    );
}

#[test]
fn unreadable_file_names_the_file() {
    let err = load_file::<Doc>(Path::new("/nonexistent/chainboot.toml")).unwrap_err();
    assert!(err
        .to_string()
        .contains("/nonexistent/chainboot.toml: cannot read"));
}

#[test]
fn durations_parse() {
    assert_eq!(parse_duration("12h").unwrap().as_secs(), 43200);
    assert_eq!(parse_duration("90").unwrap().as_secs(), 90);
    assert_eq!(parse_duration("1h 30m").unwrap().as_secs(), 5400);
    assert!(parse_duration("soon").is_err());
}

fn refusal(path: &Path) -> String {
    let started = std::time::Instant::now();
    let err = load_file::<Doc>(path).unwrap_err();
    assert!(
        started.elapsed() < std::time::Duration::from_secs(2),
        "{} took {:?}",
        path.display(),
        started.elapsed()
    );
    assert_eq!(err.0.len(), 1, "{err}");
    err.0[0].message.clone()
}

#[test]
fn a_fifo_a_device_or_a_directory_as_config_is_refused_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("fifo.toml");
    let made = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap();
    assert!(made.success(), "mkfifo {}", fifo.display());
    // Nobody ever writes to it: a plain read would wait forever.
    let m = refusal(&fifo);
    assert!(m.contains("a FIFO") && m.contains("regular file"), "{m}");
    let m = refusal(Path::new("/dev/zero"));
    assert!(m.contains("a character device"), "{m}");
    let m = refusal(dir.path());
    assert!(m.contains("a directory"), "{m}");
}

#[test]
fn a_config_larger_than_the_cap_is_refused_without_reading_it_whole() {
    let dir = tempfile::tempdir().unwrap();
    let big = dir.path().join("big.toml");
    let f = std::fs::File::create(&big).unwrap();
    // Sparse: 1 GiB of zeros costs no disk.
    f.set_len(1 << 30).unwrap();
    let m = refusal(&big);
    assert!(m.contains("larger than 4194304 bytes"), "{m}");
    // At the cap it is read (and then fails as TOML, not as a size).
    let at_cap = dir.path().join("cap.toml");
    let mut text = "# padding\n".repeat((MAX_CONFIG_BYTES as usize) / 10);
    text.truncate(MAX_CONFIG_BYTES as usize);
    std::fs::write(&at_cap, &text).unwrap();
    assert!(load_file::<Doc>(&at_cap).is_ok());
    // Symlinks to a regular file are fine.
    let link = dir.path().join("link.toml");
    std::os::unix::fs::symlink(&at_cap, &link).unwrap();
    assert!(load_file::<Doc>(&link).is_ok());
}
