//! The boot policy: which profile a machine boots, and why.
//!
//! Precedence, decided in one place:
//! 1. a profile pinned to the machine through the API;
//! 2. the most specific matching `[[group]]` (for a `once` group whose machine has installed:
//!    `local-disk` until re-armed);
//! 3. the pixiecore API (`[boot] api`), when configured: its answer is final for machines no
//!    group claims (a non-200 means "do not boot", as in pixiecore);
//! 4. `[boot] default` (a profile or `menu`).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use chainboot_content::CleanPath;
use chainboot_machine::{Loader, Mac};
use chainboot_store::machines::MachineRecord;
use chainboot_store::Store;
use minijinja::Environment;
use parking_lot::Mutex;

use crate::access::{AddressBook, Capabilities, Gate, NoAddresses, Proof, Refusal};
use crate::config::{AssetRef, BootConfig, GroupConfig, Issue, ProfileAction, ProfileConfig};
use crate::facts::ClientFacts;
use crate::pixiecore::{self, ApiBoot};
use crate::render::{self, HttpBase, KernelBoot, ProfileVars, TemplateVars};
use crate::select::{best_group, CompiledGroup, SelectorOutcome};
use crate::validate::validate;

/// The policy's config: `[[profile]]`, `[[group]]`, `[boot]`.
#[derive(Debug, Clone, Default)]
pub struct PolicyConfig {
    pub profiles: Vec<ProfileConfig>,
    pub groups: Vec<GroupConfig>,
    pub boot: BootConfig,
}

/// A validated config with its templates compiled.
pub(crate) struct Compiled {
    pub(crate) cfg: PolicyConfig,
    by_name: HashMap<String, usize>,
    groups: Vec<CompiledGroup>,
    env: Environment<'static>,
    /// The profile templates (by name in `env`) that refer to `{{ https }}`: on a server
    /// without a TLS listener they are refused before rendering.
    asks_https: HashSet<String>,
}

fn tpl_name(profile: &str, what: &str) -> String {
    format!("profile/{profile}/{what}")
}

impl Compiled {
    fn new(cfg: PolicyConfig) -> Result<Compiled, Vec<Issue>> {
        let problems = validate(&cfg.profiles, &cfg.groups, &cfg.boot);
        if !problems.is_empty() {
            return Err(problems);
        }
        let mut env = render::new_env();
        let mut asks_https = HashSet::new();
        for p in &cfg.profiles {
            for (what, src) in [
                ("cmdline", &p.cmdline),
                ("script", &p.script),
                ("pxelinux", &p.pxelinux_config),
            ] {
                if let Some(src) = src {
                    let name = tpl_name(&p.name, what);
                    env.add_template_owned(name.clone(), src.clone())
                        .map_err(|e| {
                            vec![Issue::new(
                                vec!["profile".into(), p.name.clone(), what.into()],
                                e.to_string(),
                            )]
                        })?;
                    if env
                        .get_template(&name)
                        .is_ok_and(|t| render::asks_for_https(&t))
                    {
                        asks_https.insert(name);
                    }
                }
            }
        }
        let groups = cfg
            .groups
            .iter()
            .enumerate()
            .map(|(i, g)| CompiledGroup::compile(i, g))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|(f, j, e)| {
                vec![Issue::new(vec!["group".into(), f.into(), j.to_string()], e)]
            })?;
        let by_name = cfg
            .profiles
            .iter()
            .enumerate()
            .map(|(i, p)| (p.name.clone(), i))
            .collect();
        Ok(Compiled {
            cfg,
            by_name,
            groups,
            env,
            asks_https,
        })
    }

    fn profile(&self, name: &str) -> Option<ProfileRef<'_>> {
        if let Some(&i) = self.by_name.get(name) {
            return Some(ProfileRef::Config(&self.cfg.profiles[i]));
        }
        match name {
            "menu" => Some(ProfileRef::Builtin(ProfileAction::Menu)),
            "local-disk" => Some(ProfileRef::Builtin(ProfileAction::LocalDisk)),
            _ => None,
        }
    }
}

enum ProfileRef<'a> {
    Config(&'a ProfileConfig),
    Builtin(ProfileAction),
}

/// Why a machine got its profile.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// Pinned through the API.
    Pinned,
    /// The named group matched.
    Group(String),
    /// A `once` group matched but the machine already installed.
    OnceDone { group: String, reason: String },
    /// The pixiecore API answered 200.
    Api,
    /// No group matched; `[boot] default`.
    Default,
    /// Picked from the menu.
    MenuChoice,
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Pinned => write!(f, "pinned through the API"),
            Source::Group(g) => write!(f, "group {g}"),
            Source::OnceDone { group, reason } => {
                write!(f, "group {group} is boot-once and the machine already installed ({reason}); boots local disk until re-armed")
            }
            Source::Api => write!(f, "boot API"),
            Source::Default => write!(f, "[boot] default"),
            Source::MenuChoice => write!(f, "chosen from the menu"),
        }
    }
}

/// What every decision for one request is made from: the config at the time, the request's
/// facts over the stored ones, the machine's labels and secret, and every group's verdict.
struct Grounds {
    compiled: Arc<Compiled>,
    facts: ClientFacts,
    labels: BTreeMap<String, String>,
    secret: String,
    groups: Vec<(String, usize, Vec<SelectorOutcome>)>,
}

impl Grounds {
    fn new(
        compiled: Arc<Compiled>,
        facts: &ClientFacts,
        stored: Option<&MachineRecord>,
    ) -> Grounds {
        let mut facts = facts.clone();
        if let Some(r) = stored {
            facts.merge_stored(&r.facts);
        }
        let labels = stored.map(|r| r.labels.clone()).unwrap_or_default();
        let secret = stored.map(|r| r.secret.clone()).unwrap_or_default();
        let groups = compiled
            .groups
            .iter()
            .map(|g| {
                (
                    compiled.cfg.groups[g.index].name.clone(),
                    g.specificity,
                    g.evaluate(&facts, &labels),
                )
            })
            .collect();
        Grounds {
            compiled,
            facts,
            labels,
            secret,
            groups,
        }
    }

    fn decision(
        &self,
        profile: &str,
        source: Source,
        once_group: Option<String>,
        kind: Kind,
    ) -> Decision {
        Decision {
            facts: self.facts.clone(),
            labels: self.labels.clone(),
            secret: self.secret.clone(),
            profile: profile.to_string(),
            source,
            once_group,
            groups: self.groups.clone(),
            kind,
            compiled: self.compiled.clone(),
            request_facts: None,
            made_at: Instant::now(),
            script_cache: Arc::new(OnceLock::new()),
            cap: None,
        }
    }

    /// The decision for profile `name` (configured or built in).
    fn by_name(
        &self,
        name: &str,
        source: Source,
        once_group: Option<String>,
    ) -> Result<Decision, BootError> {
        let kind = match self.compiled.profile(name) {
            Some(ProfileRef::Config(p)) => match p.action {
                Some(a) => Kind::Builtin(a),
                None => Kind::Config,
            },
            Some(ProfileRef::Builtin(a)) => Kind::Builtin(a),
            None => {
                return Err(BootError(format!(
                    "profile {name} ({source}) does not exist in the config"
                )))
            }
        };
        Ok(self.decision(name, source, once_group, kind))
    }

    /// The decision of the group that matched best: its profile; for a `once` group, the
    /// local disk once the machine has installed.
    fn by_group(
        &self,
        group: &GroupConfig,
        ambiguous: bool,
        stored: Option<&MachineRecord>,
    ) -> Result<Decision, BootError> {
        if ambiguous {
            tracing::warn!(mac = %self.facts.mac, group = %group.name, "several groups of equal specificity match; config not validated?");
        }
        let source = Source::Group(group.name.clone());
        match (group.once, stored.and_then(|r| r.installed_ms)) {
            (true, Some(_)) => {
                let reason = stored
                    .and_then(|r| r.installed_reason.clone())
                    .unwrap_or_else(|| "installed".into());
                let source = Source::OnceDone {
                    group: group.name.clone(),
                    reason,
                };
                let kind = Kind::Builtin(ProfileAction::LocalDisk);
                Ok(self.decision("local-disk", source, None, kind))
            }
            (true, None) => self.by_name(&group.profile, source, Some(group.name.clone())),
            (false, _) => self.by_name(&group.profile, source, None),
        }
    }
}

/// What was decided, with everything needed to render it later.
#[derive(Clone)]
pub struct Decision {
    pub facts: ClientFacts,
    pub labels: BTreeMap<String, String>,
    secret: String,
    pub profile: String,
    pub source: Source,
    /// Set when the machine is in a `once` group and has not installed yet: fetching the
    /// kernel marks it installed.
    pub once_group: Option<String>,
    /// Every group's selectors for this machine (for `explain`).
    pub groups: Vec<(String, usize, Vec<SelectorOutcome>)>,
    kind: Kind,
    compiled: Arc<Compiled>,
    /// The facts of the `/ipxe` request this decision answered (fast path, see `fresh_for`).
    request_facts: Option<ClientFacts>,
    made_at: Instant,
    /// The rendered script for one base URL, so that repeated requests skip rendering.
    script_cache: Arc<OnceLock<(HttpBase, String)>>,
    /// The boot capability put into the `/boot/MAC/...` URLs of this decision's script and
    /// offered to templates, so the machine's later fetches prove themselves from anywhere.
    cap: Option<String>,
}

impl fmt::Debug for Decision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Decision")
            .field("mac", &self.facts.mac)
            .field("profile", &self.profile)
            .field("source", &self.source)
            .field("once_group", &self.once_group)
            .finish()
    }
}

#[derive(Clone)]
enum Kind {
    Config,
    Builtin(ProfileAction),
    Api(ApiBoot),
}

/// One of a decision's files that goes through the policy's `/boot/MAC/...` route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AssetSlot {
    Kernel,
    Initrd(usize),
    /// pixiecore `{{ URL "..." }}` in a cmdline.
    Url(usize),
    /// The PXELINUX loader.
    Loader,
}

impl AssetSlot {
    pub fn path(self, mac: Mac) -> String {
        let m = mac.hyphenated();
        match self {
            AssetSlot::Kernel => format!("/boot/{m}/kernel"),
            AssetSlot::Initrd(i) => format!("/boot/{m}/initrd/{i}"),
            AssetSlot::Url(i) => format!("/boot/{m}/url/{i}"),
            AssetSlot::Loader => format!("/boot/{m}/loader"),
        }
    }
}

/// A decision, or the one thing it still needs from outside.
#[derive(Debug)]
pub enum Decided {
    Done(Box<Decision>),
    /// No group matched and `[boot] api` is set: the pixiecore API decides; fetch its answer
    /// and decide again with it.
    NeedsBootApi(BootApiQuestion),
}

/// What to ask the pixiecore API.
#[derive(Debug, Clone)]
pub struct BootApiQuestion {
    pub api: String,
    pub mac: Mac,
    pub timeout: Duration,
}

impl BootApiQuestion {
    /// Asks the API (the only I/O a decision can need).
    pub async fn fetch(&self, client: &reqwest::Client) -> Result<ApiBoot, BootError> {
        pixiecore::ask(client, &self.api, self.mac, self.timeout)
            .await
            .map_err(|e| BootError(e.to_string()))
    }
}

/// Why a machine cannot boot right now; rendered as an iPXE script that says so and retries.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct BootError(pub String);

/// The boot policy. Reloadable: [`Policy::reload`] swaps the config atomically; decisions in
/// flight finish with the config they started with.
pub struct Policy {
    current: ArcSwap<Compiled>,
    store: Arc<Store>,
    client: reqwest::Client,
    /// The last decision per machine, for the `/boot/MAC/...` asset routes (bounded).
    recent: Mutex<HashMap<Mac, Arc<Decision>>>,
    /// Who holds which address (set once the DHCP server exists; until then nothing is known
    /// and only loopback and trusted networks pass).
    book: OnceLock<Arc<dyn AddressBook>>,
    /// Boot capabilities, keyed from the API token (a random key until it is set).
    caps: OnceLock<Capabilities>,
}

/// Machines remembered in `recent` before it is cleared.
const RECENT_MAX: usize = 16_384;

impl Policy {
    /// Builds a policy; every config problem is returned at once.
    pub fn new(cfg: PolicyConfig, store: Arc<Store>) -> Result<Policy, Vec<Issue>> {
        let compiled = Compiled::new(cfg)?;
        Ok(Policy {
            current: ArcSwap::from_pointee(compiled),
            store,
            client: reqwest::Client::builder()
                .connect_timeout(std::time::Duration::from_secs(5))
                .build()
                .unwrap_or_default(),
            recent: Mutex::new(HashMap::new()),
            book: OnceLock::new(),
            caps: OnceLock::new(),
        })
    }

    /// Connects the policy to what the host knows about addresses and keys its boot
    /// capabilities from `secret`: the API token, or in a fleet the secret its servers share
    /// (so that each accepts the capabilities the others put in scripts). Called once at
    /// start; later calls change nothing.
    pub fn set_access(&self, book: Arc<dyn AddressBook>, secret: &str) {
        let _ = self.book.set(book);
        let _ = self.caps.set(Capabilities::new(secret));
    }

    fn caps(&self) -> &Capabilities {
        self.caps
            .get_or_init(|| Capabilities::new(&crate::random_hex(32)))
    }

    /// Whether a request from `peer` presenting `cap` may act for `mac` (see [`crate::access`]).
    pub fn verify(
        &self,
        mac: Mac,
        peer: Option<std::net::IpAddr>,
        cap: Option<&str>,
    ) -> Result<Proof, Refusal> {
        let compiled = self.current.load();
        let none = NoAddresses;
        let book: &dyn AddressBook = match self.book.get() {
            Some(b) => b.as_ref(),
            None => &none,
        };
        Gate {
            book,
            caps: self.caps(),
            trusted: &compiled.cfg.boot.trusted_networks,
        }
        .verify(mac, peer, cap, std::time::SystemTime::now())
    }

    /// Whether `ip` is `mac`'s own address by the strict rule for evidence that may change
    /// what a machine boots without any request of its own (a Secure Boot refusal): see
    /// [`crate::access::own_address`]. `Err` says why not.
    pub fn own_address(&self, mac: Mac, ip: std::net::IpAddr) -> Result<(), String> {
        match self.book.get() {
            Some(book) => crate::access::own_address(book.as_ref(), mac, ip),
            None => Err("this server has no address book (no identity checks)".into()),
        }
    }

    /// The machine booting from `ip` (a bound lease of this host's DHCP server, not
    /// contradicted by the neighbour table): see [`crate::access::booting_machine_at`].
    pub fn booting_machine_at(&self, ip: std::net::IpAddr) -> Option<Mac> {
        crate::access::booting_machine_at(self.book.get()?.as_ref(), ip)
    }

    /// A boot capability for `mac` (and one profile, for a menu choice).
    pub fn capability(&self, mac: Mac, profile: Option<&str>) -> String {
        let lifetime = self.current.load().cfg.boot.capability_lifetime;
        self.caps()
            .issue(mac, profile, std::time::SystemTime::now(), lifetime)
    }

    /// Quick mode (`chainboot boot KERNEL [INITRD...] --cmdline S`): every machine boots these
    /// local files, served by the policy's `/boot/MAC/...` routes. `cmdline` is used literally.
    pub fn quick(
        kernel: &std::path::Path,
        initrds: &[std::path::PathBuf],
        cmdline: &str,
        store: Arc<Store>,
    ) -> Result<Policy, Vec<Issue>> {
        let abs = |p: &std::path::Path| -> Result<String, Vec<Issue>> {
            let p = std::path::absolute(p)
                .map_err(|e| vec![Issue::at(&["quick"], format!("{}: {e}", p.display()))])?;
            if !p.is_file() {
                return Err(vec![Issue::at(
                    &["quick"],
                    format!("{} is not a readable file", p.display()),
                )]);
            }
            Ok(format!("file://{}", p.display()))
        };
        let profile = ProfileConfig {
            name: "quick".into(),
            description: Some("chainboot boot (quick mode)".into()),
            kernel: Some(abs(kernel)?),
            initrd: initrds.iter().map(|p| abs(p)).collect::<Result<_, _>>()?,
            // Literal: wrap in a raw block so braces in the user's cmdline are not template syntax.
            cmdline: (!cmdline.is_empty()).then(|| format!("{{% raw %}}{cmdline}{{% endraw %}}")),
            script: None,
            action: None,
            pxelinux: None,
            pxelinux_config: None,
            loader: None,
        };
        Policy::new(
            PolicyConfig {
                profiles: vec![profile],
                groups: vec![],
                boot: BootConfig {
                    default: "quick".into(),
                    ..BootConfig::default()
                },
            },
            store,
        )
    }

    /// The chain a firmware client starts with, from what its DHCP packet tells (`facts`:
    /// MAC, architecture, hostname; the selectors on UUID, serial and labels cannot match
    /// yet): its group's `loader`, else the `loader` of the profile its group (or
    /// `[boot] default`) names, else `[boot] loader` for its architecture. `None`: iPXE.
    /// No I/O: the DHCP engine asks it for every firmware packet.
    pub fn loader_for(&self, facts: &ClientFacts) -> Option<(Loader, String)> {
        let compiled = self.current.load();
        let no_labels = BTreeMap::new();
        let (profile, via) = match best_group(&compiled.groups, facts, &no_labels) {
            Some((g, _)) => {
                let group = &compiled.cfg.groups[g.index];
                if let Some(l) = group.loader {
                    return Some((l, format!("group {}", group.name)));
                }
                (group.profile.as_str(), format!("group {}", group.name))
            }
            None => (
                compiled.cfg.boot.default.as_str(),
                "[boot] default".to_string(),
            ),
        };
        if let Some(ProfileRef::Config(p)) = compiled.profile(profile) {
            if let Some(l) = p.loader {
                return Some((l, format!("profile {} ({via})", p.name)));
            }
        }
        let arch = facts.arch?;
        compiled
            .cfg
            .boot
            .loader
            .get(&arch)
            .map(|l| (*l, format!("[boot] loader for {arch}")))
    }

    /// The `https_boot` of the group a machine falls in, and why; `None` when its group does
    /// not say (then `[http] https_for_http_boot` decides). Answers without I/O, like
    /// [`Policy::loader_for`]: the DHCP engine asks it.
    pub fn https_boot_for(&self, facts: &ClientFacts) -> Option<(bool, String)> {
        let compiled = self.current.load();
        let no_labels = BTreeMap::new();
        let (g, _) = best_group(&compiled.groups, facts, &no_labels)?;
        let group = &compiled.cfg.groups[g.index];
        group
            .https_boot
            .map(|on| (on, format!("group {} says https_boot = {on}", group.name)))
    }

    /// `[boot] secure_boot_fallback`: the chain for machines whose firmware refused the
    /// unsigned first stage.
    pub fn secure_boot_fallback(&self) -> Option<Loader> {
        self.current.load().cfg.boot.secure_boot_fallback
    }

    /// Replaces the config (after validating it); on error the old config stays.
    pub fn reload(&self, cfg: PolicyConfig) -> Result<(), Vec<Issue>> {
        let compiled = Compiled::new(cfg)?;
        self.current.store(Arc::new(compiled));
        self.recent.lock().clear();
        Ok(())
    }

    /// The store the policy records machines in.
    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }

    /// The current config.
    pub fn config(&self) -> PolicyConfig {
        self.current.load().cfg.clone()
    }

    /// True if `name` is a profile (configured or built in: `menu`, `local-disk`).
    pub fn has_profile(&self, name: &str) -> bool {
        self.current.load().profile(name).is_some()
    }

    /// Decides what `facts.mac` boots. `stored` is the machine's record (pinned profile,
    /// labels, boot-once state, secret); `None` for a machine never seen (explain).
    /// `chosen` is a profile picked from the menu; honoured only when the machine's decision
    /// is the menu. Asks the pixiecore API when the decision needs it.
    pub async fn decide(
        &self,
        facts: &ClientFacts,
        stored: Option<&MachineRecord>,
        chosen: Option<&str>,
    ) -> Result<Decision, BootError> {
        match self.decide_now(facts, stored, chosen, None)? {
            Decided::Done(d) => Ok(*d),
            Decided::NeedsBootApi(ask) => {
                let answer = ask.fetch(&self.client).await?;
                match self.decide_now(facts, stored, chosen, Some(answer))? {
                    Decided::Done(d) => Ok(*d),
                    Decided::NeedsBootApi(_) => {
                        Err(BootError("the boot API's answer was not used".into()))
                    }
                }
            }
        }
    }

    /// The decision without I/O: everything comes from the config, the facts and the stored
    /// record, except the pixiecore API's answer, which the caller fetches when asked for
    /// ([`Decided::NeedsBootApi`]) and passes back in as `api_answer`.
    pub fn decide_now(
        &self,
        facts: &ClientFacts,
        stored: Option<&MachineRecord>,
        chosen: Option<&str>,
        api_answer: Option<ApiBoot>,
    ) -> Result<Decided, BootError> {
        let grounds = Grounds::new(self.current.load_full(), facts, stored);
        let compiled = &grounds.compiled;
        let decision = if let Some(pinned) = stored.and_then(|r| r.pinned_profile.as_deref()) {
            grounds.by_name(pinned, Source::Pinned, None)?
        } else if let Some((g, ambiguous)) =
            best_group(&compiled.groups, &grounds.facts, &grounds.labels)
        {
            grounds.by_group(&compiled.cfg.groups[g.index], ambiguous, stored)?
        } else if let Some(api) = &compiled.cfg.boot.api {
            let Some(boot) = api_answer else {
                return Ok(Decided::NeedsBootApi(BootApiQuestion {
                    api: api.clone(),
                    mac: grounds.facts.mac,
                    timeout: compiled.cfg.boot.api_timeout,
                }));
            };
            grounds.decision("boot-api", Source::Api, None, Kind::Api(boot))
        } else {
            grounds.by_name(&compiled.cfg.boot.default, Source::Default, None)?
        };
        if let (Kind::Builtin(ProfileAction::Menu), Some(choice)) = (&decision.kind, chosen) {
            if choice != "menu" {
                return grounds
                    .by_name(choice, Source::MenuChoice, None)
                    .map(|d| Decided::Done(Box::new(d)));
            }
        }
        Ok(Decided::Done(Box::new(decision)))
    }

    /// Remembers a decision for the machine's asset routes.
    pub fn remember(&self, d: &Decision) -> Arc<Decision> {
        let d = Arc::new(d.clone());
        let mut recent = self.recent.lock();
        if recent.len() >= RECENT_MAX {
            recent.clear();
        }
        recent.insert(d.facts.mac, d.clone());
        d
    }

    /// Drops the remembered decision (after the API changed the machine's state).
    pub fn forget_recent(&self, mac: Mac) {
        self.recent.lock().remove(&mac);
    }

    /// Keeps the remembered decision for the boot in progress (its asset routes, and the
    /// observers that tell its initrd from a plain file) but never answers `/ipxe` from it
    /// again: a boot-once machine's kernel fetch changed what its next boot gets, while the
    /// initrd of this boot still follows.
    pub fn stale_recent(&self, mac: Mac) {
        let mut recent = self.recent.lock();
        if let Some(d) = recent.get(&mac) {
            let mut d = (**d).clone();
            d.request_facts = None;
            recent.insert(mac, Arc::new(d));
        }
    }

    /// The last decision made for `mac` by `/ipxe`, if any.
    pub fn recent(&self, mac: Mac) -> Option<Arc<Decision>> {
        self.recent.lock().get(&mac).cloned()
    }

    /// Retry delay in seconds for error scripts.
    pub fn retry_secs(&self) -> u64 {
        self.current.load().cfg.boot.retry_delay.as_secs().max(1)
    }

    /// The templates folder, if configured.
    pub fn templates_dir(&self) -> Option<std::path::PathBuf> {
        self.current.load().cfg.boot.templates.clone()
    }

    /// What `chainboot explain` prints (without the DHCP part): decision, why, script. No I/O
    /// but the store: when the decision needs the pixiecore API, the question comes back and
    /// the caller asks again with the answer (`api_answer`; an `Err` is the API's failure).
    pub fn explain_now(
        &self,
        facts: &ClientFacts,
        base: &HttpBase,
        api_answer: Option<Result<ApiBoot, BootError>>,
    ) -> Result<Explanation, BootApiQuestion> {
        let stored = self.store.machine(facts.mac).ok().flatten();
        let decided = match api_answer {
            Some(Err(e)) => Err(e),
            Some(Ok(answer)) => self.decide_now(facts, stored.as_ref(), None, Some(answer)),
            None => self.decide_now(facts, stored.as_ref(), None, None),
        };
        let retry = self.retry_secs();
        Ok(match decided {
            Ok(Decided::Done(d)) => Explanation {
                mac: facts.mac,
                decision: Some(d.summary()),
                groups: d.groups.clone(),
                https: d.https_asks(base, self.templates_dir().as_deref()),
                script: d.script(base, retry),
                error: None,
            },
            Ok(Decided::NeedsBootApi(q)) => return Err(q),
            Err(e) => Explanation {
                mac: facts.mac,
                decision: None,
                groups: vec![],
                https: vec![],
                script: render::error_script(Some(&facts.mac.to_string()), &e.0, base, retry),
                error: Some(e.0),
            },
        })
    }
}

/// The answer to `chainboot explain`.
#[derive(Debug, Clone)]
pub struct Explanation {
    pub mac: Mac,
    /// "profile X (group Y)".
    pub decision: Option<String>,
    /// (group, specificity, selector outcomes), in config order.
    pub groups: Vec<(String, usize, Vec<SelectorOutcome>)>,
    /// The templates that ask for `{{ https }}` and what they get ([`Decision::https_asks`]).
    pub https: Vec<String>,
    /// The script the machine would get.
    pub script: String,
    /// Why it cannot boot, if it cannot.
    pub error: Option<String>,
}

impl fmt::Display for Explanation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "machine {}", self.mac)?;
        match (&self.decision, &self.error) {
            (Some(d), _) => writeln!(f, "boots: {d}")?,
            (None, Some(e)) => writeln!(f, "cannot boot: {e}")?,
            (None, None) => {}
        }
        for (name, spec, outcomes) in &self.groups {
            let matched = outcomes.iter().all(|o| o.matched);
            writeln!(
                f,
                "  group {name} ({spec} selector{}): {}",
                if *spec == 1 { "" } else { "s" },
                if matched { "matches" } else { "does not match" }
            )?;
            for o in outcomes {
                writeln!(
                    f,
                    "    {} {}: wanted {}, machine has {}",
                    if o.matched { "+" } else { "-" },
                    o.selector,
                    o.wanted,
                    o.got
                )?;
            }
        }
        for line in &self.https {
            writeln!(f, "https: {line}")?;
        }
        writeln!(f, "script:")?;
        for line in self.script.lines() {
            writeln!(f, "  {line}")?;
        }
        Ok(())
    }
}

/// How long `/ipxe` may answer a machine from its remembered decision. Every state change that
/// goes through this server (API writes, boot-once kernel fetches, config reloads) drops the
/// remembered decision at once; this bound only limits how stale `last_seen` gets. A server of
/// a fleet never answers from it: the other servers' changes do not pass through it.
pub const DECISION_FRESH: Duration = Duration::from_secs(60);

/// How many files of one templates folder `explain` reads for [`Decision::https_asks`].
pub const EXPLAIN_TEMPLATE_FILES: usize = 1000;
/// The largest template file `explain` reads for [`Decision::https_asks`] (larger ones are
/// served as they are anyway: `check` tells the operator to name them `.raw`).
pub const EXPLAIN_TEMPLATE_BYTES: u64 = 16 << 20;

impl Decision {
    /// Marks the decision as the answer to an `/ipxe` request with these facts.
    pub(crate) fn answered(mut self, facts: ClientFacts) -> Decision {
        self.request_facts = Some(facts);
        self
    }

    /// Puts `cap` into the decision's asset URLs and template variables.
    pub(crate) fn with_capability(mut self, cap: String) -> Decision {
        self.cap = Some(cap);
        self.script_cache = Arc::new(OnceLock::new());
        self
    }

    /// `/boot/MAC/...` for `slot`, with the capability when there is one.
    fn slot_path(&self, slot: AssetSlot) -> String {
        let path = slot.path(self.facts.mac);
        match &self.cap {
            Some(c) => format!("{path}?cap={}", render::encode(c)),
            None => path,
        }
    }

    /// True if a new `/ipxe` request with `facts` may be answered from this decision without
    /// asking the store: same facts, recent, and not from the boot API (whose answers can
    /// change at any time without chainboot knowing).
    pub fn fresh_for(&self, facts: &ClientFacts) -> bool {
        self.request_facts.as_ref() == Some(facts)
            && self.source != Source::Api
            && self.made_at.elapsed() < DECISION_FRESH
    }

    /// [`Decision::script`], rendered once per base URL.
    pub fn cached_script(&self, base: &HttpBase, retry_secs: u64) -> String {
        if let Some((b, s)) = self.script_cache.get() {
            if b == base {
                return s.clone();
            }
        }
        let s = self.script(base, retry_secs);
        let _ = self.script_cache.set((base.clone(), s.clone()));
        s
    }

    /// "profile X (why)".
    pub fn summary(&self) -> String {
        format!("profile {} ({})", self.profile, self.source)
    }

    fn vars(&self, base: &HttpBase) -> TemplateVars {
        let description = match self.compiled.profile(&self.profile) {
            Some(ProfileRef::Config(p)) => p.description.clone().unwrap_or_default(),
            _ => String::new(),
        };
        let mut vars = TemplateVars::new(
            &self.facts,
            &self.labels,
            &self.secret,
            ProfileVars {
                name: self.profile.clone(),
                description,
            },
            base,
        );
        vars.machine.cap = self.cap.clone().unwrap_or_default();
        vars
    }

    fn config_profile(&self) -> Option<&ProfileConfig> {
        match (&self.kind, self.compiled.profile(&self.profile)) {
            (Kind::Config, Some(ProfileRef::Config(p))) => Some(p),
            _ => None,
        }
    }

    /// The file behind one of the decision's `/boot/MAC/...` slots.
    pub fn asset(&self, slot: AssetSlot) -> Option<AssetRef> {
        if let Kind::Api(ApiBoot::Kernel {
            kernel,
            initrd,
            urls,
            ..
        }) = &self.kind
        {
            return match slot {
                AssetSlot::Kernel => Some(kernel.clone()),
                AssetSlot::Initrd(i) => initrd.get(i).cloned(),
                AssetSlot::Url(i) => urls.get(i).cloned(),
                AssetSlot::Loader => None,
            };
        }
        let p = self.config_profile()?;
        let parse = |s: &String| AssetRef::parse(s).ok();
        match slot {
            AssetSlot::Kernel => p.kernel.as_ref().and_then(parse),
            AssetSlot::Initrd(i) => p.initrd.get(i).and_then(parse),
            AssetSlot::Loader => p.pxelinux.as_ref().and_then(parse),
            AssetSlot::Url(_) => None,
        }
    }

    /// Which of the decision's kernel, initrds and loader a static route served: `path`
    /// inside the ISO image `iso`, or under `[http] root` when `iso` is `None`. What an
    /// observer asks to tell a machine's kernel from any file.
    pub fn slot_of_file(&self, iso: Option<&str>, path: &CleanPath) -> Option<AssetSlot> {
        let is = |slot| match (self.asset(slot), iso) {
            (Some(AssetRef::Files(p)), None) => p == *path,
            (Some(AssetRef::Iso { name, path: p }), Some(i)) => name == i && p == *path,
            _ => false,
        };
        if is(AssetSlot::Kernel) {
            return Some(AssetSlot::Kernel);
        }
        let initrds = (0..).map(AssetSlot::Initrd);
        let initrds = initrds.take_while(|s| self.asset(*s).is_some());
        if let Some(slot) = initrds.into_iter().find(|s| is(*s)) {
            return Some(slot);
        }
        is(AssetSlot::Loader).then_some(AssetSlot::Loader)
    }

    fn url(&self, slot: AssetSlot, base: &HttpBase) -> Result<String, BootError> {
        let asset = self
            .asset(slot)
            .ok_or_else(|| BootError(format!("profile {} has no {slot:?}", self.profile)))?;
        // Boot-once kernels go through the policy route, which records the fetch.
        let via_policy = slot == AssetSlot::Kernel && self.once_group.is_some();
        Ok(render::asset_url(
            &asset,
            base,
            &self.slot_path(slot),
            via_policy,
        ))
    }

    fn kernel_urls(
        &self,
        base: &HttpBase,
        n_initrd: usize,
    ) -> Result<(String, Vec<String>), BootError> {
        let k = self.url(AssetSlot::Kernel, base)?;
        let i = (0..n_initrd)
            .map(|i| self.url(AssetSlot::Initrd(i), base))
            .collect::<Result<Vec<_>, _>>()?;
        Ok((k, i))
    }

    fn render_tpl(&self, what: &str, base: &HttpBase) -> Result<Option<String>, BootError> {
        let name = tpl_name(&self.profile, what);
        let Ok(t) = self.compiled.env.get_template(&name) else {
            return Ok(None);
        };
        if base.https().is_none() && self.compiled.asks_https.contains(&name) {
            return Err(BootError(format!(
                "profile {} {what}: {}",
                self.profile,
                render::NO_TLS_FOR_HTTPS
            )));
        }
        t.render(self.vars(base)).map(Some).map_err(|e| {
            BootError(format!(
                "profile {} {what}: template error: {e:#}",
                self.profile
            ))
        })
    }

    fn header(&self) -> String {
        format!("{} boots {}", self.facts.mac, self.summary())
    }

    /// The machine's iPXE script, or why it cannot have one.
    pub fn try_script(&self, base: &HttpBase, retry_secs: u64) -> Result<String, BootError> {
        let mac = self.facts.mac.to_string();
        let header = self.header();
        match &self.kind {
            Kind::Builtin(ProfileAction::Menu) => {
                Ok(render::menu_script(&mac, &self.menu_items(), base))
            }
            Kind::Builtin(a) => Ok(render::action_script(*a, &header)),
            Kind::Api(ApiBoot::Script(s)) => Ok(s.clone()),
            Kind::Api(ApiBoot::Kernel {
                initrd,
                cmdline,
                urls,
                message,
                ..
            }) => {
                let (k, i) = self.kernel_urls(base, initrd.len())?;
                let names = render::initrd_names(
                    &initrd.iter().map(AssetRef::file_name).collect::<Vec<_>>(),
                );
                let mut cmd = cmdline.clone();
                for n in 0..urls.len() {
                    cmd = cmd.replace(
                        &format!("{{URL:{n}}}"),
                        &format!("{base}{}", self.slot_path(AssetSlot::Url(n))),
                    );
                }
                Ok(render::kernel_script(
                    &KernelBoot {
                        mac: &mac,
                        profile: &self.profile,
                        header: &header,
                        message: message.as_deref(),
                        kernel_url: &k,
                        initrd_urls: &i,
                        initrd_names: &names,
                        cmdline: &cmd,
                    },
                    base,
                    retry_secs,
                ))
            }
            Kind::Config => {
                let p = self
                    .config_profile()
                    .ok_or_else(|| BootError(format!("profile {} vanished", self.profile)))?;
                if p.script.is_some() {
                    let s = self.render_tpl("script", base)?.unwrap_or_default();
                    if !s.trim_start().starts_with("#!ipxe") {
                        return Err(BootError(format!(
                            "profile {}: rendered script does not start with #!ipxe",
                            p.name
                        )));
                    }
                    return Ok(s);
                }
                if p.pxelinux.is_some() {
                    let loader = self.url(AssetSlot::Loader, base)?;
                    return Ok(render::pxelinux_script(
                        &self.facts.mac.pxelinux_name(),
                        &header,
                        &loader,
                        base,
                        retry_secs,
                    ));
                }
                let cmdline = self.render_tpl("cmdline", base)?.unwrap_or_default();
                let (k, i) = self.kernel_urls(base, p.initrd.len())?;
                let names = render::initrd_names(&profile_initrd_files(p));
                Ok(render::kernel_script(
                    &KernelBoot {
                        mac: &mac,
                        profile: &p.name,
                        header: &header,
                        message: None,
                        kernel_url: &k,
                        initrd_urls: &i,
                        initrd_names: &names,
                        cmdline: &cmdline,
                    },
                    base,
                    retry_secs,
                ))
            }
        }
    }

    /// The profiles a menu offers (name, description), in config order.
    fn menu_items(&self) -> Vec<(String, String)> {
        self.compiled
            .cfg
            .profiles
            .iter()
            .filter(|p| p.action != Some(ProfileAction::Menu))
            .map(|p| (p.name.clone(), p.description.clone().unwrap_or_default()))
            .collect()
    }

    /// The profile a menu choice of this decision names (`grub/menu/<mac>/<index>.cfg`).
    pub fn menu_choice(&self, index: usize) -> Option<String> {
        self.menu_items().into_iter().nth(index).map(|(n, _)| n)
    }

    /// The TFTP path GRUB loads one of this decision's assets from (absolute on its root).
    fn grub_path(&self, slot: AssetSlot) -> Result<String, BootError> {
        match self.asset(slot) {
            Some(AssetRef::Url(u) | AssetRef::Proxy(u)) => Err(BootError(format!(
                "profile {}: {u} is a URL, and the signed GRUB fetches only over TFTP (use a path under [http] root, iso:NAME/path or file:///)",
                self.profile
            ))),
            Some(_) => Ok(format!("/{}{}", crate::grub::PREFIX_DIR, slot.path(self.facts.mac))),
            None => Err(BootError(format!("profile {} has no {slot:?}", self.profile))),
        }
    }

    /// The machine's GRUB config (the signed shim → GRUB chain), or why it cannot have one.
    /// Same decision as [`Decision::try_script`], told in GRUB's language.
    pub fn try_grub_cfg(&self, retry_secs: u64, base: &HttpBase) -> Result<String, BootError> {
        let mac = self.facts.mac.to_string();
        let header = self.header();
        let cannot = |what: &str| {
            Err(BootError(format!(
                "profile {} is {what}, which GRUB cannot run (give this machine the ipxe loader, or another profile)",
                self.profile
            )))
        };
        match &self.kind {
            Kind::Builtin(ProfileAction::Menu) => {
                Ok(crate::grub::menu_config(&mac, &self.menu_items()))
            }
            Kind::Builtin(ProfileAction::LocalDisk) => Ok(crate::grub::local_disk_config(&header)),
            Kind::Builtin(ProfileAction::Shell) => Ok(crate::grub::shell_config(&header)),
            Kind::Api(ApiBoot::Script(_)) => cannot("the boot API's iPXE script"),
            Kind::Api(ApiBoot::Kernel {
                initrd,
                cmdline,
                urls,
                message,
                ..
            }) => {
                let kernel = self.grub_path(AssetSlot::Kernel)?;
                let initrds = (0..initrd.len())
                    .map(|i| self.grub_path(AssetSlot::Initrd(i)))
                    .collect::<Result<Vec<_>, _>>()?;
                let mut cmd = cmdline.clone();
                for n in 0..urls.len() {
                    cmd = cmd.replace(
                        &format!("{{URL:{n}}}"),
                        &format!("{base}{}", self.slot_path(AssetSlot::Url(n))),
                    );
                }
                Ok(crate::grub::kernel_config(
                    &crate::grub::GrubKernel {
                        mac: &mac,
                        profile: &self.profile,
                        header: &header,
                        message: message.as_deref(),
                        kernel_path: &kernel,
                        initrd_paths: &initrds,
                        cmdline: &cmd,
                    },
                    retry_secs,
                ))
            }
            Kind::Config => {
                let p = self
                    .config_profile()
                    .ok_or_else(|| BootError(format!("profile {} vanished", self.profile)))?;
                if p.script.is_some() {
                    return cannot("an iPXE script");
                }
                if p.pxelinux.is_some() {
                    return cannot("a PXELINUX profile");
                }
                let cmdline = self.render_tpl("cmdline", base)?.unwrap_or_default();
                let kernel = self.grub_path(AssetSlot::Kernel)?;
                let initrds = (0..p.initrd.len())
                    .map(|i| self.grub_path(AssetSlot::Initrd(i)))
                    .collect::<Result<Vec<_>, _>>()?;
                Ok(crate::grub::kernel_config(
                    &crate::grub::GrubKernel {
                        mac: &mac,
                        profile: &p.name,
                        header: &header,
                        message: None,
                        kernel_path: &kernel,
                        initrd_paths: &initrds,
                        cmdline: &cmdline,
                    },
                    retry_secs,
                ))
            }
        }
    }

    /// The machine's GRUB config; on any problem, one that prints why and retries.
    pub fn grub_cfg(&self, retry_secs: u64, base: &HttpBase) -> String {
        self.try_grub_cfg(retry_secs, base).unwrap_or_else(|e| {
            tracing::warn!(mac = %self.facts.mac, profile = %self.profile, error = %e, "cannot render GRUB config");
            crate::grub::error_config(&self.facts.mac.to_string(), &e.0, retry_secs)
        })
    }

    /// The machine's iPXE script; on any problem, a script that prints why and retries.
    pub fn script(&self, base: &HttpBase, retry_secs: u64) -> String {
        match self.try_script(base, retry_secs) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(mac = %self.facts.mac, profile = %self.profile, error = %e, "cannot render boot script");
                render::error_script(Some(&self.facts.mac.to_string()), &e.0, base, retry_secs)
            }
        }
    }

    /// The machine's `pxelinux.cfg`, if its profile is a PXELINUX profile.
    pub fn pxelinux_cfg(&self, base: &HttpBase) -> Result<Option<String>, BootError> {
        let Some(p) = self.config_profile() else {
            return Ok(None);
        };
        if p.pxelinux.is_none() {
            return Ok(None);
        }
        if let Some(text) = self.render_tpl("pxelinux", base)? {
            return Ok(Some(text));
        }
        let cmdline = self.render_tpl("cmdline", base)?.unwrap_or_default();
        let (k, i) = self.kernel_urls(base, p.initrd.len())?;
        Ok(Some(render::pxelinux_cfg(&k, &i, &cmdline)))
    }

    /// Renders `templates/<profile>/<name>` (or `templates/<name>`) for this machine:
    /// preseed, kickstart, autoinstall, cloud-init. `<name>.marked` renders only its marked
    /// parts, `<name>.raw` is served untouched ([`render::FileKind`]). `Ok(None)` when no such
    /// file exists.
    pub fn config_file(
        &self,
        templates: &std::path::Path,
        name: &str,
        base: &HttpBase,
    ) -> Result<Option<String>, BootError> {
        if !crate::config::valid_name(name) {
            return Ok(None);
        }
        let found = [templates.join(&self.profile), templates.to_path_buf()]
            .into_iter()
            .flat_map(|dir| {
                render::FileKind::candidates(name)
                    .into_iter()
                    .map(move |(kind, file)| (kind, dir.join(file)))
            })
            .find(|(_, p)| p.is_file());
        let Some((kind, path)) = found else {
            return Ok(None);
        };
        let src = std::fs::read_to_string(&path)
            .map_err(|e| BootError(format!("{}: {e}", path.display())))?;
        let Some(env) = kind.env() else {
            return Ok(Some(src));
        };
        let t = env
            .template_from_str(&src)
            .map_err(|e| BootError(render::file_error(&path, kind, &src, &e)))?;
        if base.https().is_none() && render::asks_for_https(&t) {
            return Err(BootError(format!(
                "{}: {}",
                path.display(),
                render::NO_TLS_FOR_HTTPS
            )));
        }
        t.render(self.vars(base))
            .map(Some)
            .map_err(|e| BootError(render::file_error(&path, kind, &src, &e)))
    }

    /// What `explain` says about `{{ https }}`: each template of this decision's profile that
    /// asks for it (its cmdline, script and pxelinux templates, and the files of the templates
    /// folder it is served from, the profile's own before the shared ones) and what it gets.
    /// Reads at most [`EXPLAIN_TEMPLATE_FILES`] files of [`EXPLAIN_TEMPLATE_BYTES`] per folder.
    pub fn https_asks(&self, base: &HttpBase, templates: Option<&std::path::Path>) -> Vec<String> {
        let mut asking: Vec<String> = ["cmdline", "script", "pxelinux"]
            .into_iter()
            .filter(|what| {
                self.compiled
                    .asks_https
                    .contains(&tpl_name(&self.profile, what))
            })
            .map(|what| format!("profile {} {what}", self.profile))
            .collect();
        let mut served = HashSet::new();
        for dir in templates
            .into_iter()
            .flat_map(|t| [t.join(&self.profile), t.to_path_buf()])
        {
            let Ok(entries) = std::fs::read_dir(&dir) else {
                continue;
            };
            let mut files: Vec<_> = entries
                .flatten()
                .take(EXPLAIN_TEMPLATE_FILES)
                .map(|e| e.path())
                .collect();
            files.sort();
            for path in files {
                let small = std::fs::metadata(&path)
                    .is_ok_and(|m| m.is_file() && m.len() <= EXPLAIN_TEMPLATE_BYTES);
                let Some(file_name) = path.file_name().map(|n| n.to_string_lossy().into_owned())
                else {
                    continue;
                };
                let (kind, name) = render::FileKind::of(&file_name);
                if !small || !served.insert(name.to_string()) {
                    continue;
                }
                let asks = std::fs::read_to_string(&path)
                    .is_ok_and(|src| render::file_asks_for_https(kind, &src));
                if asks {
                    asking.push(format!(
                        "/config/{}/{name} ({})",
                        self.facts.mac,
                        path.display()
                    ));
                }
            }
        }
        let verdict = match base.https() {
            Some(url) => format!("gets {url} (the boot listener's TLS port)"),
            None => {
                "refused, this server has no TLS listener ([http] tls_listen and tls)".to_string()
            }
        };
        asking
            .into_iter()
            .map(|what| format!("{what} asks for {{{{ https }}}}: {verdict}"))
            .collect()
    }
}

/// The file names of a profile's initrds (for [`render::initrd_names`]).
pub fn profile_initrd_files(p: &crate::config::ProfileConfig) -> Vec<Option<String>> {
    p.initrd
        .iter()
        .map(|s| AssetRef::parse(s).ok().and_then(|a| a.file_name()))
        .collect()
}
