//! What a loaded config refers to, resolved before any machine asks: every asset reference a
//! profile can reach (`iso:NAME/path` against the indexed images, files under `[http] root`,
//! `file:///` paths), the per-machine files its command line names under `/config/`, and every
//! template in `[boot] templates`. `check` prints these as errors; `serve` logs them at start
//! and on reload, and refuses a config whose reference into a `required` image fails.

use std::path::{Path, PathBuf};

use chainboot_config::{problem_at, Problem};
use chainboot_content::{ResolveError, Root};
use chainboot_iso::IsoLibrary;
use chainboot_policy::render::{self, FileKind};
use chainboot_policy::AssetRef;

use crate::Config;

/// How bad a finding is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    /// A machine booting this will fail.
    Error,
    /// Probably wrong, but it may work.
    Warning,
}

/// One thing a machine would trip over, located at the config key that causes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    pub level: Level,
    pub problem: Problem,
    /// It is a reference into an `[[iso]]` marked `required`: the server does not start (or
    /// reload) with it.
    pub required: bool,
}

/// Files looked at in `[boot] templates` at most (the folder is the operator's; the bound
/// keeps a mistaken `templates = "/"` from walking a whole disk).
const MAX_TEMPLATE_FILES: usize = 10_000;
/// Folder depth looked into.
const MAX_TEMPLATE_DEPTH: usize = 8;
/// Template files larger than this are reported instead of read.
const MAX_TEMPLATE_BYTES: u64 = 16 << 20;

/// The config's file name and text as loaded from `source` (for lines in findings).
pub fn source_text(source: &crate::Source) -> (PathBuf, String) {
    match source {
        crate::Source::File(p) => (p.clone(), std::fs::read_to_string(p).unwrap_or_default()),
        crate::Source::Embedded => (
            PathBuf::from("(embedded default)"),
            crate::EMBEDDED_DEFAULT.to_string(),
        ),
    }
}

/// Resolves everything `cfg` refers to. `file` and `text` are the config's path and text (for
/// lines in messages); `isos` the indexed images.
pub fn check(cfg: &Config, file: &Path, text: &str, isos: &IsoLibrary) -> Vec<Finding> {
    let mut out = Vec::new();
    let mut push = |level: Level, key: Vec<String>, message: String, required: bool| {
        out.push(Finding {
            level,
            problem: problem_at(file, text, &key, message),
            required,
        });
    };
    let root = cfg.http.root.as_ref().map(|r| (r, Root::new(r)));
    let https = cfg.boot_settings().https_port.is_some();
    for (i, p) in cfg.profile.iter().enumerate() {
        let key = |rest: &[&str]| {
            let mut k = vec!["profile".to_string(), i.to_string()];
            k.extend(rest.iter().map(|s| s.to_string()));
            k
        };
        for (what, src) in [
            ("cmdline", &p.cmdline),
            ("script", &p.script),
            ("pxelinux_config", &p.pxelinux_config),
        ] {
            let asks = src
                .as_deref()
                .is_some_and(|src| render::file_asks_for_https(FileKind::Template, src));
            if asks && !https {
                let message = render::NO_TLS_FOR_HTTPS.to_string();
                push(Level::Error, key(&[what]), message, false);
            }
        }
        let mut refs: Vec<(Vec<String>, &str)> = Vec::new();
        if let Some(k) = &p.kernel {
            refs.push((key(&["kernel"]), k));
        }
        if let Some(l) = &p.pxelinux {
            refs.push((key(&["pxelinux"]), l));
        }
        for (j, r) in p.initrd.iter().enumerate() {
            refs.push((key(&["initrd", &j.to_string()]), r));
        }
        for (k, r) in refs {
            if let Err((message, required)) = resolve(cfg, root.as_ref(), isos, r) {
                push(Level::Error, k, message, required);
            }
        }
        let Some(cmdline) = &p.cmdline else {
            continue;
        };
        let names = render::initrd_names(&chainboot_policy::policy::profile_initrd_files(p));
        for given in render::cmdline_initrds(cmdline) {
            if given.contains('{') || names.iter().any(|n| n == given) {
                continue;
            }
            let has = if names.is_empty() {
                "this profile has no initrd".to_string()
            } else {
                format!("its initrds are named {}", names.join(", "))
            };
            push(
                Level::Warning,
                key(&["cmdline"]),
                format!(
                    "`initrd={given}` names no initrd of this profile ({has}); a UEFI kernel \
                     stops with \"EFI stub: Failed to open file: {given}\" (remove it: chainboot \
                     passes each initrd by name)"
                ),
                false,
            );
        }
        for name in config_files(cmdline) {
            if let Err(message) = config_file_exists(cfg, &p.name, name) {
                push(Level::Error, key(&["cmdline"]), message, false);
            }
        }
    }
    for (key, message) in unsigned_kernels(cfg, root.as_ref(), isos) {
        push(Level::Warning, key, message, false);
    }
    if let Some(dir) = &cfg.boot.templates {
        for message in check_templates(dir, https) {
            push(
                Level::Error,
                vec!["boot".into(), "templates".into()],
                message,
                false,
            );
        }
    }
    out
}

/// A warning (key, message) for each kernel without an Authenticode signature in a profile
/// that a signed (Secure Boot) chain can reach.
fn unsigned_kernels(
    cfg: &Config,
    root: Option<&(&PathBuf, std::io::Result<Root>)>,
    isos: &IsoLibrary,
) -> Vec<(Vec<String>, String)> {
    let mut out = Vec::new();
    let signed_reach = chainboot_policy::validate::profiles_reached_by(
        &cfg.profile,
        &cfg.group,
        &cfg.boot,
        &|l| l.is_signed(),
    );
    for (i, why) in signed_reach {
        let Some(kernel) = &cfg.profile[i].kernel else {
            continue;
        };
        let Some(bytes) = read_asset(cfg, root, isos, kernel) else {
            continue;
        };
        let problem = match authenticode_signed(&bytes) {
            Ok(true) => continue,
            Ok(false) => "is a PE file without a signature (no certificate table)".to_string(),
            Err(e) => format!("is {e}"),
        };
        out.push((
            vec!["profile".into(), i.to_string(), "kernel".into()],
            format!(
                "`{kernel}` {problem}: profile {} may boot under Secure Boot ({why}), where an \
                 unsigned kernel is refused; use a kernel signed by a key the machines trust \
                 (sbverify --list shows it)",
                cfg.profile[i].name
            ),
        ));
    }
    out
}

/// Kernels larger than this are not read for their signature (a Linux kernel is ~10-15 MiB).
const MAX_KERNEL_BYTES: u64 = 256 << 20;

/// The bytes of an asset chainboot serves itself (`[http] root`, ISO image, `file:///`);
/// `None` for URLs and for what cannot be read (reported on its own by [`resolve`]).
fn read_asset(
    cfg: &Config,
    root: Option<&(&PathBuf, std::io::Result<Root>)>,
    isos: &IsoLibrary,
    reference: &str,
) -> Option<Vec<u8>> {
    let content = match AssetRef::parse(reference).ok()? {
        AssetRef::Files(path) => match root {
            Some((_, Ok(root))) => root.open(&path).ok()?,
            _ => return None,
        },
        AssetRef::Iso { name, path } => {
            cfg.iso.iter().find(|i| i.name == name)?;
            isos.image(&name).ok()?.content(&path).ok()?
        }
        AssetRef::Local(path) => {
            chainboot_content::Content::from_file(std::fs::File::open(path).ok()?).ok()?
        }
        AssetRef::Url(_) | AssetRef::Proxy(_) => return None,
    };
    if content.len() > MAX_KERNEL_BYTES {
        return None;
    }
    let mut bytes = vec![0u8; usize::try_from(content.len()).ok()?];
    let mut at = 0;
    while at < bytes.len() {
        match content.read_at(at as u64, &mut bytes[at..]) {
            Ok(0) | Err(_) => return None,
            Ok(n) => at += n,
        }
    }
    Some(bytes)
}

/// Whether a PE image (an EFI binary, a Linux kernel's EFI stub) carries an Authenticode
/// signature: a non-empty certificate table in its data directories, which is where
/// `sbsign` puts it and what firmware and shim verify. `Err` names what the file is instead.
pub fn authenticode_signed(data: &[u8]) -> Result<bool, String> {
    use object::pe::IMAGE_DIRECTORY_ENTRY_SECURITY;
    use object::read::pe::ImageNtHeaders;
    fn signed<H: ImageNtHeaders>(data: &[u8]) -> Result<bool, String> {
        let pe = object::read::pe::PeFile::<H>::parse(data)
            .map_err(|e| format!("not a readable PE file ({e})"))?;
        Ok(pe
            .data_directory(IMAGE_DIRECTORY_ENTRY_SECURITY)
            .is_some_and(|d| d.size.get(object::LittleEndian) > 0))
    }
    match object::FileKind::parse(data) {
        Ok(object::FileKind::Pe64) => signed::<object::pe::ImageNtHeaders64>(data),
        Ok(object::FileKind::Pe32) => signed::<object::pe::ImageNtHeaders32>(data),
        _ => Err("not a PE file (no EFI stub: UEFI firmware cannot verify or start it)".into()),
    }
}

/// Resolves one asset reference as the servers will: `Err((why, in a required image))`.
fn resolve(
    cfg: &Config,
    root: Option<&(&PathBuf, std::io::Result<Root>)>,
    isos: &IsoLibrary,
    reference: &str,
) -> Result<(), (String, bool)> {
    let Ok(asset) = AssetRef::parse(reference) else {
        // The loader has reported it already.
        return Ok(());
    };
    match asset {
        AssetRef::Files(path) => match root {
            None => Err((
                format!("`{reference}` is a path under [http] root, and [http] root is not set"),
                false,
            )),
            Some((dir, Err(e))) => Err((
                format!("`{reference}`: [http] root {}: {e}", dir.display()),
                false,
            )),
            Some((dir, Ok(root))) => match root.open(&path) {
                Ok(_) => Ok(()),
                Err(e) => Err((
                    format!(
                        "`{reference}`: {} under [http] root {}",
                        why(&e),
                        dir.display()
                    ),
                    false,
                )),
            },
        },
        AssetRef::Iso { name, path } => {
            let Some(iso) = cfg.iso.iter().find(|i| i.name == name) else {
                let known: Vec<&str> = cfg.iso.iter().map(|i| i.name.as_str()).collect();
                return Err((
                    format!(
                        "`{reference}`: there is no [[iso]] named `{name}` ({})",
                        if known.is_empty() {
                            "none is configured".to_string()
                        } else {
                            format!("configured: {}", known.join(", "))
                        }
                    ),
                    false,
                ));
            };
            let image = match isos.image(&name) {
                Ok(i) => i,
                Err(e) => {
                    return Err((
                        format!(
                            "`{reference}`: iso {name} ({}) is not available: {e}",
                            iso.path.display()
                        ),
                        iso.required,
                    ))
                }
            };
            match image.content(&path) {
                Ok(_) => Ok(()),
                Err(e) => {
                    let hint = closest(&image.files(), &path.as_string())
                        .map(|c| format!("; did you mean `iso:{name}/{c}`?"))
                        .unwrap_or_default();
                    Err((
                        format!(
                            "`{reference}`: {} in iso {name} ({}){hint}",
                            why(&e),
                            iso.path.display()
                        ),
                        iso.required,
                    ))
                }
            }
        }
        AssetRef::Local(path) => {
            if path.is_file() {
                Ok(())
            } else {
                Err((format!("`{reference}`: no such file"), false))
            }
        }
        // Fetched by iPXE or relayed from elsewhere: not resolvable from here.
        AssetRef::Url(_) | AssetRef::Proxy(_) => Ok(()),
    }
}

fn why(e: &ResolveError) -> String {
    match e {
        ResolveError::NotFound => "no such file".into(),
        ResolveError::IsDirectory => "a folder, not a file".into(),
        other => other.to_string(),
    }
}

/// The image's file most like `wanted` (a typo, another folder), if one is close enough.
fn closest(files: &[(String, u64)], wanted: &str) -> Option<String> {
    let wanted = wanted.to_lowercase();
    let file_name = wanted.rsplit('/').next().unwrap_or(&wanted);
    files
        .iter()
        .map(|(f, _)| {
            let lower = f.to_lowercase();
            let whole = strsim::normalized_levenshtein(&lower, &wanted);
            let same_name = lower.rsplit('/').next() == Some(file_name);
            (if same_name { whole.max(0.8) } else { whole }, f)
        })
        .filter(|(score, _)| *score >= 0.7)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, f)| f.clone())
}

/// The NAMEs of `/config/{{ machine.mac }}/NAME` URLs in a command line (the MAC part may be
/// a template expression with spaces; the name ends at whitespace).
fn config_files(cmdline: &str) -> Vec<&str> {
    cmdline
        .match_indices("/config/")
        .filter_map(|(i, m)| {
            let rest = &cmdline[i + m.len()..];
            let after_mac = &rest[rest.find('/')? + 1..];
            after_mac.split_whitespace().next()
        })
        .filter(|n| !n.is_empty() && !n.contains(['{', '}', '%', '?', '&', '/']))
        .collect()
}

fn config_file_exists(cfg: &Config, profile: &str, name: &str) -> Result<(), String> {
    let Some(dir) = &cfg.boot.templates else {
        return Err(format!(
            "names /config/.../{name}, but [boot] templates is not set: it would be a 404"
        ));
    };
    let found = [dir.join(profile), dir.clone()].iter().any(|d| {
        FileKind::candidates(name)
            .iter()
            .any(|(_, f)| d.join(f).is_file())
    });
    if found {
        Ok(())
    } else {
        Err(format!(
            "names /config/.../{name}, and neither {0}/{profile}/ nor {0}/ has {name}, \
             {name}.marked or {name}.raw: it would be a 404",
            dir.display()
        ))
    }
}

/// Compiles every template of the folder (`.raw` files and `pxelinux.cfg/`, served as they
/// are, excepted): one message per file that does not compile, with its line, or that asks for
/// `{{ https }}` on a server without a TLS listener (`https` false).
pub fn check_templates(dir: &Path, https: bool) -> Vec<String> {
    let mut out = Vec::new();
    let mut seen = 0usize;
    let mut stack = vec![(dir.to_path_buf(), 0usize)];
    while let Some((d, depth)) = stack.pop() {
        let entries = match std::fs::read_dir(&d) {
            Ok(e) => e,
            Err(e) => {
                out.push(format!("{}: {e}", d.display()));
                continue;
            }
        };
        let mut entries: Vec<_> = entries.flatten().collect();
        entries.sort_by_key(|e| e.file_name());
        for entry in entries {
            let path = entry.path();
            let Ok(meta) = std::fs::metadata(&path) else {
                continue;
            };
            if meta.is_dir() {
                let top_pxelinux = depth == 0 && entry.file_name() == "pxelinux.cfg";
                if !top_pxelinux && depth + 1 < MAX_TEMPLATE_DEPTH {
                    stack.push((path, depth + 1));
                }
                continue;
            }
            seen += 1;
            if seen > MAX_TEMPLATE_FILES {
                out.push(format!(
                    "{}: more than {MAX_TEMPLATE_FILES} files; the rest were not checked",
                    dir.display()
                ));
                return out;
            }
            let name = entry.file_name().to_string_lossy().into_owned();
            let (kind, _) = FileKind::of(&name);
            if kind == FileKind::Raw {
                continue;
            }
            if meta.len() > MAX_TEMPLATE_BYTES {
                out.push(format!(
                    "{}: {} bytes is over {MAX_TEMPLATE_BYTES} for a template (name it {name}.raw to serve it as it is)",
                    path.display(),
                    meta.len()
                ));
                continue;
            }
            match std::fs::read_to_string(&path) {
                Ok(src) => {
                    if let Err(e) = render::check_file(&path, kind, &src, https) {
                        out.push(e);
                    }
                }
                Err(e) => out.push(format!("{}: {e}", path.display())),
            }
        }
    }
    out
}
