//! Rulesets: loading `*.rhai` files and `riskgate.toml` from a folder (or from sources), reading their
//! metadata, and compiling each rule once.

mod actions;
mod analyze;
pub(crate) mod binding;
pub(crate) mod compile;
pub(crate) mod explain;
mod functions;
mod meta;
mod mistakes;
mod nesting;
mod rule;
pub(crate) mod sandbox;
mod types;
pub(crate) mod vars;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub use meta::Mode;
pub(crate) use rule::Rule;

use crate::config::Config;
use crate::error::{Diagnostic, LoadError};
use crate::files;
use crate::RuleId;

/// The deepest folder nesting read under a rules folder (guards against symlink loops).
const MAX_DEPTH: usize = 16;

/// A compiled, validated set of rules with its configuration. Cheap to clone (shared).
///
/// Load one with [`RuleSet::from_dir`] or [`RuleSet::from_sources`], or assemble one with
/// [`RuleSet::builder`]; hand it to [`EngineBuilder::ruleset`](crate::EngineBuilder::ruleset) or
/// [`Engine::swap_ruleset`](crate::Engine::swap_ruleset).
///
/// ```
/// let rules = riskgate::RuleSet::from_sources([
///     ("block-tor", r#"//! priority: 1
///         if custom.tor == true { BLOCK }"#),
/// ])?;
/// assert_eq!(rules.rules().next().map(|r| r.id.to_string()), Some("block-tor".to_owned()));
/// # Ok::<(), riskgate::LoadError>(())
/// ```
#[derive(Clone)]
pub struct RuleSet {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub engine: rhai::Engine,
    pub rules: Vec<Rule>,
    /// Rules that apply to each action code named in some rule's `actions`, in evaluation order.
    pub by_action: HashMap<String, Vec<usize>>,
    /// Rules that apply to an action code no rule names (those without `actions`).
    pub for_any_action: Vec<usize>,
    pub config: Config,
    pub dir: Option<PathBuf>,
    /// Lists, GeoIP databases and history settings for signals.
    pub signals: Arc<crate::signals::SignalSet>,
    /// What loading found that is probably a mistake but does not stop the set loading.
    pub warnings: Vec<Diagnostic>,
}

impl RuleSet {
    /// `[server]` from this set's `riskgate.toml` (the defaults when it has none).
    pub fn server_settings(&self) -> &crate::ServerSettings {
        &self.inner.config.server
    }

    /// `[store]` from this set's `riskgate.toml` (the in-memory store when it has none).
    pub fn store_settings(&self) -> &crate::StoreSettings {
        &self.inner.config.store
    }
}

/// What a ruleset says about one of its rules (for listings such as `riskgate check`).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct RuleInfo {
    /// The rule id.
    pub id: RuleId,
    /// 0–99, lower is stronger.
    pub priority: u8,
    /// The action codes the rule applies to; `None` for every action.
    pub actions: Option<Vec<String>>,
    /// Enforce or shadow.
    pub mode: Mode,
    /// Whether the rule is evaluated at all (`//! enabled: false` turns it off).
    pub enabled: bool,
    /// The rule's description.
    pub description: Option<String>,
    /// Whether the rule runs as native code (it is in the compiled subset) rather than in Rhai's interpreter.
    /// Both give the same results; see [`RuleSetBuilder::compile_rules`].
    pub compiled: bool,
}

impl std::fmt::Debug for RuleSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RuleSet")
            .field(
                "rules",
                &self
                    .inner
                    .rules
                    .iter()
                    .map(|r| r.id.as_str())
                    .collect::<Vec<_>>(),
            )
            .field("dir", &self.inner.dir)
            .finish_non_exhaustive()
    }
}

impl RuleSet {
    /// Loads every `*.rhai` file under `dir` (recursively, except under `dir/lists/` and hidden entries), and
    /// `dir/riskgate.toml` if present.
    ///
    /// Every problem in every file is reported, each as `file:line:column: message`.
    pub fn from_dir(dir: impl AsRef<Path>) -> Result<RuleSet, LoadError> {
        RuleSet::builder().rules_dir(dir)?.build()
    }

    /// Compiles rules given as `(rule id, source)` pairs, with the default configuration.
    pub fn from_sources<I, K, V>(sources: I) -> Result<RuleSet, LoadError>
    where
        I: IntoIterator<Item = (K, V)>,
        K: Into<String>,
        V: Into<String>,
    {
        let mut b = RuleSet::builder();
        for (id, src) in sources {
            b = b.rule(id, src);
        }
        b.build()
    }

    /// Starts a ruleset assembled in code.
    pub fn builder() -> RuleSetBuilder {
        RuleSetBuilder::default()
    }

    /// The rules, in id order.
    pub fn rules(&self) -> impl Iterator<Item = RuleInfo> + '_ {
        self.inner.rules.iter().map(|r| RuleInfo {
            id: r.id.clone(),
            priority: r.meta.priority,
            actions: r.meta.actions.clone(),
            mode: r.meta.mode,
            enabled: r.meta.enabled,
            description: r.meta.description.clone(),
            compiled: r.compiled.is_some(),
        })
    }

    /// How many rules the set holds (enabled or not).
    pub fn len(&self) -> usize {
        self.inner.rules.len()
    }

    /// Whether the set holds no rules.
    pub fn is_empty(&self) -> bool {
        self.inner.rules.is_empty()
    }

    /// What loading found that is probably a mistake but did not stop the set loading, such as an action code
    /// in `//! actions:` or `[actions.<code>]` that nothing else names (`paymnet` beside `payment`).
    /// `riskgate check` prints them, and fails on them with `--strict`.
    ///
    /// ```
    /// let rules = riskgate::RuleSet::builder()
    ///     .rule("a", "//! actions: payment, paymnet\nBLOCK")
    ///     .rule("b", "//! actions: payment\nREVIEW")
    ///     .build()?;
    /// let w = rules.warnings();
    /// assert_eq!(w.len(), 1);
    /// assert_eq!(w[0].to_string(), "a:1:23: warning: action code `paymnet` is named only here: no other rule, `[actions]` table or known action uses it (did you mean `payment`?)");
    /// # Ok::<(), riskgate::LoadError>(())
    /// ```
    pub fn warnings(&self) -> &[Diagnostic] {
        &self.inner.warnings
    }

    /// The folder this set was loaded from, if any.
    pub fn dir(&self) -> Option<&Path> {
        self.inner.dir.as_deref()
    }
}

impl Inner {
    /// The indices of the enabled rules that apply to `action`, in evaluation order.
    pub(crate) fn rules_for(&self, action: &str) -> &[usize] {
        self.by_action.get(action).unwrap_or(&self.for_any_action)
    }
}

/// Assembles a [`RuleSet`] from sources and configuration text.
///
/// ```
/// let rules = riskgate::RuleSet::builder()
///     .rule("big-withdrawal", "if custom.amount > 10000 { REVIEW }")
///     .config_toml("default_outcome = \"ALLOW\"")
///     .build()?;
/// assert_eq!(rules.len(), 1);
/// # Ok::<(), riskgate::LoadError>(())
/// ```
#[must_use]
pub struct RuleSetBuilder {
    sources: Vec<(String, String, String)>,
    lists: Vec<(String, String, String)>,
    config: Option<(String, String)>,
    dir: Option<PathBuf>,
    compile: bool,
    limits: Option<crate::SandboxLimits>,
}

impl Default for RuleSetBuilder {
    fn default() -> Self {
        RuleSetBuilder {
            sources: Vec::new(),
            lists: Vec::new(),
            config: None,
            dir: None,
            compile: true,
            limits: None,
        }
    }
}

impl RuleSetBuilder {
    /// Reads every `*.rhai` file under `dir` (recursively, except under `dir/lists/` and hidden entries) as a
    /// rule, `dir/lists/*.txt` as lists, and `dir/riskgate.toml` if present, as [`RuleSet::from_dir`] does. Rules and configuration added
    /// afterwards are added to (or replace) what was read.
    pub fn rules_dir(mut self, dir: impl AsRef<Path>) -> Result<Self, LoadError> {
        let dir = dir.as_ref();
        let mut files = Vec::new();
        collect(dir, dir, 0, &mut files)?;
        files.sort();
        for (id, path) in files {
            let source = read_text(&path, files::Kind::Rule)?;
            self.push(id, source, path.display().to_string());
        }
        let lists = dir.join("lists");
        match std::fs::read_dir(&lists) {
            Ok(entries) => {
                let mut found = Vec::new();
                for entry in entries {
                    let entry = entry.map_err(|source| LoadError::Io {
                        path: lists.clone(),
                        source,
                    })?;
                    let path = entry.path();
                    let name = entry.file_name().to_string_lossy().into_owned();
                    if let Some(stem) = name.strip_suffix(".txt") {
                        if !stem.starts_with('.') {
                            found.push((stem.to_owned(), path));
                        }
                    }
                }
                found.sort();
                for (name, path) in found {
                    let text = read_text(&path, files::Kind::List)?;
                    self.lists.push((name, text, path.display().to_string()));
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => {
                return Err(LoadError::Io {
                    path: lists,
                    source,
                })
            }
        }
        let toml = dir.join("riskgate.toml");
        match files::read_text(&toml, files::Kind::Config) {
            Ok(text) => {
                self.config = Some((text, toml.display().to_string()));
            }
            Err(files::ReadError::Io(e)) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(load_error(&toml, files::Kind::Config, e)),
        }
        self.dir = Some(dir.to_path_buf());
        Ok(self)
    }

    /// Whether rules in the common subset (comparisons, boolean logic, `if`/`else`, request variables and
    /// `custom` fields, string methods, `in` on literal arrays, outcome constants) are compiled to native code
    /// at load time (the default), or every rule runs in Rhai's interpreter.
    ///
    /// Both give the same results; compiled rules decide several times faster. Turning compilation off is
    /// for measuring the difference and for checking one path against the other.
    pub fn compile_rules(mut self, on: bool) -> Self {
        self.compile = on;
        self
    }

    /// Runs the rules under `limits`, in place of the `[limits]` table of `riskgate.toml` (whether the file
    /// comes before or after this call). Out-of-range limits fail [`build`](RuleSetBuilder::build) with
    /// [`LoadError::InvalidSetting`].
    pub fn sandbox_limits(mut self, limits: crate::SandboxLimits) -> Self {
        self.limits = Some(limits);
        self
    }

    /// Adds a rule with id `id` (diagnostics name it as the file).
    pub fn rule(mut self, id: impl Into<String>, source: impl Into<String>) -> Self {
        let id = id.into();
        let file = id.clone();
        self.push(id, source.into(), file);
        self
    }

    /// Uses `text` as the ruleset's `riskgate.toml`.
    pub fn config_toml(mut self, text: impl Into<String>) -> Self {
        self.config = Some((text.into(), "riskgate.toml".to_owned()));
        self
    }

    /// Adds list `name` (what `in_list("name", value)` reads) with `text` in the `lists/<name>.txt` format: one
    /// entry a line, `#` comments, IP addresses and CIDR ranges or exact strings.
    ///
    /// ```
    /// let rules = riskgate::RuleSet::builder()
    ///     .list("tor-exits", "# exit relays\n185.220.100.0/22\n2a0b:f4c0::/32\n")
    ///     .rule("block-tor", r#"if in_list("tor-exits", ip_address) { BLOCK }"#)
    ///     .build()?;
    /// assert_eq!(rules.len(), 1);
    /// # Ok::<(), riskgate::LoadError>(())
    /// ```
    pub fn list(mut self, name: impl Into<String>, text: impl Into<String>) -> Self {
        let name = name.into();
        let file = format!("lists/{name}.txt");
        self.lists.push((name, text.into(), file));
        self
    }

    fn push(&mut self, id: String, source: String, file: String) {
        self.sources.push((id, source, file));
    }

    /// Compiles every rule; every problem found is reported.
    pub fn build(self) -> Result<RuleSet, LoadError> {
        let mut problems: Vec<Diagnostic> = Vec::new();
        let limits = self
            .limits
            .map(crate::SandboxLimits::to_limits)
            .transpose()?;
        let mut config = match &self.config {
            Some((text, file)) => match Config::parse(text, file) {
                Ok(c) => c,
                Err(e) => {
                    problems.extend(e.diagnostics().iter().cloned());
                    Config::default()
                }
            },
            None => Config::default(),
        };
        if let Some(l) = limits {
            config.limits = l;
        }
        let config_file = self
            .config
            .as_ref()
            .map_or("riskgate.toml", |c| c.1.as_str());
        let mut signals = crate::signals::SignalSet::load(
            &self.lists,
            &config.geoip,
            config_file,
            self.dir.as_deref(),
            config.signals.limits,
            &mut problems,
        );
        let mut uses = analyze::Uses::default();
        // A list or database that failed to load was reported already: rules calling it are not reported again.
        let has_list =
            |name: &str| signals.has_list(name) || self.lists.iter().any(|l| l.0 == name);
        let geoip = &config.geoip;
        let has_geo = |kind| {
            signals.has_geo(kind)
                || match kind {
                    crate::signals::geo::Kind::City => geoip.city.is_some(),
                    crate::signals::geo::Kind::Asn => geoip.asn.is_some(),
                    crate::signals::geo::Kind::AnonymousIp => geoip.anonymous_ip.is_some(),
                }
        };
        let needs = analyze::Needs {
            lists: &has_list,
            geo: &has_geo,
        };
        let engine = sandbox::new_engine(&config.limits);
        let scope = sandbox::compile_scope();
        let known = functions::Known::of(&engine);
        let mut rules: Vec<Rule> = Vec::with_capacity(self.sources.len());
        // One set of `custom` slots for every compiled rule of this ruleset.
        let mut custom_slots = compile::CustomSlots::default();
        let mut named: Vec<actions::Named> = Vec::new();
        let mut compared = std::collections::BTreeSet::new();
        let mut sources = self.sources;
        sources.sort_by(|a, b| a.0.cmp(&b.0));
        for (id, source, file) in sources {
            if let Err(m) = check_rule_id(&id) {
                problems.push(Diagnostic::new(file, 0, 0, m));
                continue;
            }
            if rules.iter().any(|r| r.id.as_str() == id) {
                problems.push(Diagnostic::new(
                    file,
                    0,
                    0,
                    format!("rule id `{id}` is given twice"),
                ));
                continue;
            }
            let before = problems.len();
            let meta = match meta::parse(&source, &file) {
                Ok(m) => Some(m),
                Err(mut d) => {
                    problems.append(&mut d);
                    None
                }
            };
            match engine.compile_with_scope(&scope, &source) {
                Ok(ast) => {
                    known.check(&ast, &file, &mut problems);
                    mistakes::literal_returns(&ast, &file, &mut problems);
                    mistakes::custom_keys(&ast, &file, &config.custom, &mut problems);
                    for (pos, message) in sandbox::request_writes(&ast)
                        .into_iter()
                        .chain(nesting::curry_calls(&ast))
                    {
                        problems.push(Diagnostic::new(
                            file.clone(),
                            pos.line().unwrap_or(0),
                            pos.position().unwrap_or(0),
                            message,
                        ));
                    }
                    analyze::analyze(&ast, &file, &needs, &mut uses, &mut problems);
                    actions::compared_codes(&ast, &mut compared);
                    if let Some(meta) = meta {
                        for (code, &(line, column)) in
                            meta.actions.iter().flatten().zip(&meta.action_places)
                        {
                            named.push(actions::Named {
                                code: code.clone(),
                                file: file.clone(),
                                line,
                                column,
                            });
                        }
                        let compiled = if self.compile {
                            compile::compile(&ast, &config.limits, &mut custom_slots)
                        } else {
                            None
                        };
                        let vars = sandbox::vars_used(&ast);
                        rules.push(Rule {
                            id: RuleId::new(&id),
                            meta,
                            ast,
                            compiled,
                            vars,
                        });
                    }
                }
                Err(e) => problems.push(mistakes::parse_error(&file, &source, &e)),
            }
            // In the order they appear in the file; one mistake, one diagnostic: a later check reporting the same
            // place again is a follow-on.
            problems[before..].sort_by_key(|d| (d.line, d.column));
            let mut seen: Vec<(usize, usize)> = Vec::new();
            let mut i = before;
            while i < problems.len() {
                let at = (problems[i].line, problems[i].column);
                if at.0 != 0 && seen.contains(&at) {
                    problems.remove(i);
                } else {
                    seen.push(at);
                    i += 1;
                }
            }
        }
        if !problems.is_empty() {
            return Err(LoadError::Invalid(problems));
        }
        let warnings = actions::unused_codes(named, &compared, &config, config_file);
        let (by_action, for_any_action) = index_by_action(&rules);
        let computed = if uses.computed_window {
            config.signals.max_window_ms
        } else {
            0
        };
        signals.horizon_ms = uses.longest_window_ms.max(computed);
        signals.windowed = uses.windowed;
        signals.windows = if uses.computed_window {
            None
        } else {
            Some(uses.windows)
        };
        signals.uses_agent = uses.agent;
        signals.uses_places = uses.places;
        signals.uses_rba = uses.rba;
        signals.uses_known = uses.known;
        Ok(RuleSet {
            inner: Arc::new(Inner {
                engine,
                rules,
                by_action,
                for_any_action,
                config,
                dir: self.dir,
                signals: Arc::new(signals),
                warnings,
            }),
        })
    }
}

/// Reads a ruleset file as text: a regular file of at most its kind's size (see [`files`]).
fn read_text(path: &Path, kind: files::Kind) -> Result<String, LoadError> {
    files::read_text(path, kind).map_err(|e| load_error(path, kind, e))
}

/// An operating-system error stays [`LoadError::Io`]; a file of the wrong type or size is a diagnostic on it.
fn load_error(path: &Path, kind: files::Kind, e: files::ReadError) -> LoadError {
    match e {
        files::ReadError::Io(source) => LoadError::Io {
            path: path.to_path_buf(),
            source,
        },
        other => LoadError::one(path.display().to_string(), 0, 0, other.message(path, kind)),
    }
}

fn check_rule_id(id: &str) -> Result<(), String> {
    let ok = !id.is_empty()
        && id.len() <= 255
        && id
            .split('/')
            .all(|part| !part.is_empty() && part != "." && part != "..")
        && !id.chars().any(char::is_control);
    if ok {
        Ok(())
    } else {
        Err(format!(
            "invalid rule id `{}`: expected 1-255 bytes of `/`-separated names",
            crate::error::shorten(id)
        ))
    }
}

fn index_by_action(rules: &[Rule]) -> (HashMap<String, Vec<usize>>, Vec<usize>) {
    let any: Vec<usize> = (0..rules.len())
        .filter(|&i| rules[i].meta.enabled && rules[i].meta.actions.is_none())
        .collect();
    let mut by_action: HashMap<String, Vec<usize>> = HashMap::new();
    for r in rules {
        for code in r.meta.actions.iter().flatten() {
            by_action.entry(code.clone()).or_default();
        }
    }
    for (code, list) in by_action.iter_mut() {
        *list = (0..rules.len())
            .filter(|&i| {
                let m = &rules[i].meta;
                m.enabled
                    && m.actions
                        .as_ref()
                        .is_none_or(|a| a.iter().any(|c| c == code))
            })
            .collect();
    }
    (by_action, any)
}

/// Every file [`RuleSetBuilder::rules_dir`] reads from `dir` (rules, lists, `riskgate.toml`; not the GeoIP
/// databases), sorted: what the folder watcher checks for a stable state before a reload.
#[cfg(feature = "watch")]
pub(crate) fn inputs(dir: &Path) -> Result<Vec<PathBuf>, LoadError> {
    let mut rules = Vec::new();
    collect(dir, dir, 0, &mut rules)?;
    let mut out: Vec<PathBuf> = rules.into_iter().map(|(_, p)| p).collect();
    if let Ok(entries) = std::fs::read_dir(dir.join("lists")) {
        for entry in entries.flatten() {
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if name.ends_with(".txt") && !name.starts_with('.') {
                out.push(entry.path());
            }
        }
    }
    out.push(dir.join("riskgate.toml"));
    out.sort();
    Ok(out)
}

/// Collects `(rule id, path)` for every rule file under `dir`.
fn collect(
    root: &Path,
    dir: &Path,
    depth: usize,
    out: &mut Vec<(String, PathBuf)>,
) -> Result<(), LoadError> {
    if depth > MAX_DEPTH {
        return Err(LoadError::one(
            dir.display().to_string(),
            0,
            0,
            format!("rules are nested more than {MAX_DEPTH} folders deep"),
        ));
    }
    let entries = std::fs::read_dir(dir).map_err(|source| LoadError::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    for entry in entries {
        let entry = entry.map_err(|source| LoadError::Io {
            path: dir.to_path_buf(),
            source,
        })?;
        let path = entry.path();
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with('.') || (depth == 0 && name == "lists") {
            continue;
        }
        let meta = std::fs::metadata(&path).map_err(|source| LoadError::Io {
            path: path.clone(),
            source,
        })?;
        if meta.is_dir() {
            collect(root, &path, depth + 1, out)?;
        } else if let Some(stem) = name.strip_suffix(".rhai") {
            let rel = path.parent().and_then(|p| p.strip_prefix(root).ok());
            let mut id = String::new();
            for part in rel.into_iter().flat_map(|p| p.components()) {
                id.push_str(&part.as_os_str().to_string_lossy());
                id.push('/');
            }
            id.push_str(stem);
            out.push((id, path));
        }
    }
    Ok(())
}
