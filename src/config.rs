//! `riskgate.toml`: default outcomes, rule-error handling, sandbox limits, retention and challenges.
//!
//! Every key is optional; an unknown key or a bad value is a load error with its line and column.

use serde::Deserialize;
use std::collections::BTreeMap;

use crate::duration::parse_millis;
use crate::error::{Diagnostic, LoadError, TrackError};
use crate::request::CustomValue;
use crate::server_settings::{ServerFile, ServerSettings};
use crate::store_settings::{StoreFile, StoreSettings};
use crate::time::DurationMs;
use crate::State;

/// What a failing rule counts as: `on_rule_error` in `riskgate.toml`, or
/// [`EngineBuilder::on_rule_error`](crate::EngineBuilder::on_rule_error). The default counts it as
/// `CHALLENGE_REQUIRED`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum OnRuleError {
    /// The rule counts as having returned this outcome.
    Outcome(State),
    /// The rule is left out of the decision (it is still reported in `errors`).
    Skip,
}

/// What a repeated idempotency key with different attributes does: `[idempotency] on_conflict` in
/// `riskgate.toml`, or [`EngineBuilder::on_conflict`](crate::EngineBuilder::on_conflict). The default is
/// `Error`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum OnConflict {
    /// Refuse with `idempotency_conflict`.
    Error,
    /// Return the stored action, as Authsignal does.
    Replay,
}

/// The Rhai sandbox limits applied to every rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Limits {
    pub max_operations: u64,
    pub max_call_depth: usize,
    pub max_expr_depth: usize,
    pub max_function_expr_depth: usize,
    pub max_string_size: usize,
    pub max_array_size: usize,
    pub max_map_size: usize,
    pub time_limit_ms: i64,
}

/// The largest `[limits] max_call_depth` accepted (see [`Config::parse`]).
pub(crate) const MAX_CALL_DEPTH: usize = 32;
/// The largest `[limits] max_expr_depth` accepted.
pub(crate) const MAX_EXPR_DEPTH: usize = 128;
/// The largest `[limits] max_function_expr_depth` accepted.
pub(crate) const MAX_FUNCTION_EXPR_DEPTH: usize = 64;
/// The largest `[limits] max_array_size` accepted: with [`MAX_MAP_SIZE`], it bounds how deep data can nest,
/// and so the stack interpreted rules run on (`rules/nesting.rs`).
pub(crate) const MAX_ARRAY_SIZE: usize = 8192;
/// The largest `[limits] max_map_size` accepted.
pub(crate) const MAX_MAP_SIZE: usize = 8192;

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_operations: 50_000,
            max_call_depth: 16,
            max_expr_depth: 64,
            max_function_expr_depth: 32,
            max_string_size: 16 * 1024,
            max_array_size: 1024,
            max_map_size: 1024,
            time_limit_ms: 10,
        }
    }
}

/// A parsed `riskgate.toml`.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Config {
    pub default_outcome: State,
    pub action_defaults: BTreeMap<String, State>,
    pub on_rule_error: OnRuleError,
    pub limits: Limits,
    pub idempotency_ttl: DurationMs,
    pub capacity: usize,
    pub on_conflict: OnConflict,
    pub token_ttl: DurationMs,
    pub challenge_url: Option<String>,
    pub signals: SignalsConfig,
    pub geoip: GeoipConfig,
    /// `[server]`: read by `riskgate serve`.
    pub server: ServerSettings,
    /// `[store]`: read when an engine is built.
    pub store: StoreSettings,
    /// `[custom]`: the declared types of custom attributes.
    pub custom: CustomSchema,
    /// Every `[actions.<code>]` table, with its line and column (for the check that some rule uses it).
    pub action_tables: Vec<(String, usize, usize)>,
}

/// The type `[custom]` declares for a custom attribute.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CustomType {
    String,
    Number,
    Bool,
}

impl CustomType {
    fn parse(v: &str) -> Option<CustomType> {
        Some(match v {
            "string" => CustomType::String,
            "number" => CustomType::Number,
            "bool" => CustomType::Bool,
            _ => return None,
        })
    }

    fn name(self) -> &'static str {
        match self {
            CustomType::String => "a string",
            CustomType::Number => "a number",
            CustomType::Bool => "a bool",
        }
    }

    fn fits(self, v: &CustomValue) -> bool {
        matches!(
            (self, v),
            (CustomType::String, CustomValue::String(_))
                | (
                    CustomType::Number,
                    CustomValue::Int(_) | CustomValue::Float(_)
                )
                | (CustomType::Bool, CustomValue::Bool(_))
        )
    }
}

/// One declared custom attribute.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct CustomField {
    pub ty: CustomType,
    pub required: bool,
}

/// `[custom]` in `riskgate.toml`: each custom attribute's type, optionally required. Empty when the file has
/// no `[custom]` table; then any custom attribute is accepted and rules may read any key.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct CustomSchema(BTreeMap<String, CustomField>);

impl CustomSchema {
    pub(crate) fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub(crate) fn get(&self, key: &str) -> Option<&CustomField> {
        self.0.get(key)
    }

    pub(crate) fn keys(&self) -> impl Iterator<Item = &str> {
        self.0.keys().map(String::as_str)
    }

    /// Refuses a request whose custom attributes do not fit: a declared key of another type, or a required
    /// key missing. Undeclared keys are accepted (rules cannot read them by name).
    pub(crate) fn check(&self, custom: &BTreeMap<String, CustomValue>) -> Result<(), TrackError> {
        for (key, field) in &self.0 {
            match custom.get(key) {
                Some(v) if !field.ty.fits(v) => {
                    return Err(TrackError::invalid(
                        format!("attributes.custom.{key}"),
                        format!(
                            "must be {} (`[custom]` in riskgate.toml), not {}",
                            field.ty.name(),
                            match v {
                                CustomValue::String(_) => "a string",
                                CustomValue::Int(_) | CustomValue::Float(_) => "a number",
                                CustomValue::Bool(_) => "a bool",
                            }
                        ),
                    ))
                }
                None if field.required => {
                    return Err(TrackError::invalid(
                        format!("attributes.custom.{key}"),
                        format!(
                            "is required (`[custom]` in riskgate.toml): expected {}",
                            field.ty.name()
                        ),
                    ))
                }
                _ => {}
            }
        }
        Ok(())
    }
}

/// `[signals]`: how much history signals keep.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SignalsConfig {
    pub limits: HistoryLimits,
    pub max_window_ms: i64,
}

/// The history limits in force (from the current ruleset's `[signals]`): what `signals::History` may hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct HistoryLimits {
    pub max_keys: usize,
    pub max_bytes: usize,
    pub max_per_key: usize,
    pub known_for_ms: i64,
}

/// The most entries one insert evicts (expired or over capacity), in the action store and in each history
/// table. Each insert adds one, so a store over its capacity shrinks by `EVICT_PER_INSERT - 1` per new action
/// until it is back at the capacity, and no single caller pays for a large backlog.
pub(crate) const EVICT_PER_INSERT: usize = 16;

/// `[signals] max_bytes` by default: 128 MiB per table, so at most 384 MiB for all of history.
pub(crate) const DEFAULT_HISTORY_MAX_BYTES: usize = 128 << 20;

impl Default for HistoryLimits {
    fn default() -> Self {
        HistoryLimits {
            max_keys: 1_000_000,
            max_bytes: DEFAULT_HISTORY_MAX_BYTES,
            max_per_key: 1_000,
            known_for_ms: 90 * 86_400_000,
        }
    }
}

impl Default for SignalsConfig {
    fn default() -> Self {
        SignalsConfig {
            limits: HistoryLimits::default(),
            max_window_ms: 7 * 86_400_000,
        }
    }
}

/// `[geoip]`: MaxMind database paths as written (relative to the rules folder), each with its line and column.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct GeoipConfig {
    pub city: Option<(String, usize, usize)>,
    pub asn: Option<(String, usize, usize)>,
    pub anonymous_ip: Option<(String, usize, usize)>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            default_outcome: State::Allow,
            action_defaults: BTreeMap::new(),
            on_rule_error: OnRuleError::Outcome(State::ChallengeRequired),
            limits: Limits::default(),
            idempotency_ttl: DurationMs::from_ms(24 * 3_600_000),
            capacity: 1_000_000,
            on_conflict: OnConflict::Error,
            token_ttl: DurationMs::from_ms(10 * 60_000),
            challenge_url: None,
            signals: SignalsConfig::default(),
            geoip: GeoipConfig::default(),
            server: ServerSettings::default(),
            store: StoreSettings::default(),
            custom: CustomSchema::default(),
            action_tables: Vec::new(),
        }
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct File {
    default_outcome: Option<String>,
    on_rule_error: Option<String>,
    #[serde(default)]
    actions: BTreeMap<String, ActionFile>,
    #[serde(default)]
    limits: LimitsFile,
    #[serde(default)]
    idempotency: IdempotencyFile,
    #[serde(default)]
    challenge: ChallengeFile,
    #[serde(default)]
    signals: SignalsFile,
    #[serde(default)]
    geoip: GeoipFile,
    #[serde(default)]
    server: ServerFile,
    #[serde(default)]
    store: StoreFile,
    #[serde(default)]
    custom: BTreeMap<String, toml::Value>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct SignalsFile {
    max_keys: Option<usize>,
    max_bytes: Option<usize>,
    max_per_key: Option<usize>,
    max_window: Option<String>,
    known_for: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct GeoipFile {
    city: Option<String>,
    asn: Option<String>,
    anonymous_ip: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct ActionFile {
    default_outcome: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct LimitsFile {
    max_operations: Option<u64>,
    max_call_depth: Option<usize>,
    max_expr_depth: Option<usize>,
    max_function_expr_depth: Option<usize>,
    max_string_size: Option<usize>,
    max_array_size: Option<usize>,
    max_map_size: Option<usize>,
    time_limit: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct IdempotencyFile {
    ttl: Option<String>,
    capacity: Option<usize>,
    on_conflict: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct ChallengeFile {
    token_ttl: Option<String>,
    url: Option<String>,
}

impl Config {
    /// Parses `riskgate.toml` text; `file` names it in diagnostics.
    pub(crate) fn parse(text: &str, file: &str) -> Result<Config, LoadError> {
        let parsed: File = toml::from_str(text).map_err(|e| {
            let (line, column) = e.span().map_or((0, 0), |s| line_col(text, s.start));
            let mut message = e.message().trim_end().to_owned();
            if message.is_empty() {
                // The toml crate gives no message for some characters it refuses (a control character in a
                // comment, for one): name the character instead of reporting nothing.
                let at = e
                    .span()
                    .and_then(|s| text.get(s.start..))
                    .and_then(|t| t.chars().next());
                message = match at {
                    Some(c) => format!("invalid TOML: unexpected character `{}`", c.escape_debug()),
                    None => "invalid TOML".to_owned(),
                };
            }
            LoadError::one(file, line, column, message)
        })?;
        let mut problems = Vec::new();
        let mut fail = |key: &str, message: String| {
            let (line, column) = find_key(text, key);
            problems.push(Diagnostic::new(file.to_owned(), line, column, message));
        };
        let mut cfg = Config::default();
        if let Some(v) = &parsed.default_outcome {
            match decision(v) {
                Ok(s) => cfg.default_outcome = s,
                Err(m) => fail("default_outcome", format!("`default_outcome`: {m}")),
            }
        }
        if let Some(v) = &parsed.on_rule_error {
            if v == "skip" {
                cfg.on_rule_error = OnRuleError::Skip;
            } else {
                match decision(v) {
                    Ok(s) => cfg.on_rule_error = OnRuleError::Outcome(s),
                    Err(m) => fail(
                        "on_rule_error",
                        format!("`on_rule_error`: {m}, or \"skip\""),
                    ),
                }
            }
        }
        for (code, a) in &parsed.actions {
            let (line, column) = find_key(text, code);
            cfg.action_tables.push((code.clone(), line, column));
            if !crate::request::is_action_code(code) {
                fail(
                    code,
                    format!(
                        "`[actions.{code}]`: not an action code: expected 1-64 of [a-zA-Z0-9_-]"
                    ),
                );
                continue;
            }
            if let Some(v) = &a.default_outcome {
                match decision(v) {
                    Ok(s) => {
                        cfg.action_defaults.insert(code.clone(), s);
                    }
                    Err(m) => fail(code, format!("`[actions.{code}] default_outcome`: {m}")),
                }
            }
        }
        let l = &parsed.limits;
        let d = Limits::default();
        cfg.limits = Limits {
            max_operations: l.max_operations.unwrap_or(d.max_operations),
            max_call_depth: l.max_call_depth.unwrap_or(d.max_call_depth),
            max_expr_depth: l.max_expr_depth.unwrap_or(d.max_expr_depth),
            max_function_expr_depth: l
                .max_function_expr_depth
                .unwrap_or(d.max_function_expr_depth),
            max_string_size: l.max_string_size.unwrap_or(d.max_string_size),
            max_array_size: l.max_array_size.unwrap_or(d.max_array_size),
            max_map_size: l.max_map_size.unwrap_or(d.max_map_size),
            time_limit_ms: d.time_limit_ms,
        };
        // Zero would mean "unlimited" to Rhai: refuse it, the sandbox is always on.
        for (key, v) in [
            ("max_operations", cfg.limits.max_operations as usize),
            ("max_call_depth", cfg.limits.max_call_depth),
            ("max_expr_depth", cfg.limits.max_expr_depth),
            (
                "max_function_expr_depth",
                cfg.limits.max_function_expr_depth,
            ),
            ("max_string_size", cfg.limits.max_string_size),
            ("max_array_size", cfg.limits.max_array_size),
            ("max_map_size", cfg.limits.max_map_size),
        ] {
            if v == 0 {
                fail(
                    key,
                    format!(
                        "`[limits] {key}` must be at least 1: the sandbox cannot be turned off"
                    ),
                );
            }
        }
        // Rhai recurses on the host's stack: deeper limits than these can overflow a 2 MiB thread (Rust's
        // default for spawned threads) and abort the process, while parsing or running a rule. Measured on a
        // 2 MiB thread: debug builds overflow past about 300 expression levels or 80 call levels; these caps are
        // half of that or less, with every cap reached at once (`tests/loading.rs`).
        for (key, v, cap) in [
            ("max_call_depth", cfg.limits.max_call_depth, MAX_CALL_DEPTH),
            ("max_expr_depth", cfg.limits.max_expr_depth, MAX_EXPR_DEPTH),
            (
                "max_function_expr_depth",
                cfg.limits.max_function_expr_depth,
                MAX_FUNCTION_EXPR_DEPTH,
            ),
        ] {
            if v > cap {
                fail(
                    key,
                    format!("`[limits] {key}` must be at most {cap}: deeper rules could overflow the stack"),
                );
            }
        }
        // Data nests at most `max_array_size + max_map_size` levels deep, and interpreted rules get a stack in
        // proportion (`rules/nesting.rs`): these caps keep it to 66 MiB of address space per thread.
        for (key, v, cap) in [
            ("max_array_size", cfg.limits.max_array_size, MAX_ARRAY_SIZE),
            ("max_map_size", cfg.limits.max_map_size, MAX_MAP_SIZE),
        ] {
            if v > cap {
                fail(key, format!("`[limits] {key}` must be at most {cap}"));
            }
        }
        if let Some(v) = &l.time_limit {
            match parse_millis(v) {
                Ok(ms) if ms <= 60_000 => cfg.limits.time_limit_ms = ms,
                Ok(_) => fail(
                    "time_limit",
                    "`[limits] time_limit` must be at most 60s".to_owned(),
                ),
                Err(m) => fail("time_limit", format!("`[limits] time_limit`: {m}")),
            }
        }
        let i = &parsed.idempotency;
        if let Some(v) = &i.ttl {
            match parse_millis(v) {
                Ok(ms) => cfg.idempotency_ttl = DurationMs::from_ms(ms),
                Err(m) => fail("ttl", format!("`[idempotency] ttl`: {m}")),
            }
        }
        if let Some(c) = i.capacity {
            if c == 0 {
                fail(
                    "capacity",
                    "`[idempotency] capacity` must be at least 1".to_owned(),
                );
            } else {
                cfg.capacity = c;
            }
        }
        match i.on_conflict.as_deref() {
            None | Some("error") => {}
            Some("replay") => cfg.on_conflict = OnConflict::Replay,
            Some(other) => fail(
                "on_conflict",
                format!(
                    "`[idempotency] on_conflict`: expected \"error\" or \"replay\", not `{other}`"
                ),
            ),
        }
        let c = &parsed.challenge;
        if let Some(v) = &c.token_ttl {
            match parse_millis(v) {
                Ok(ms) => cfg.token_ttl = DurationMs::from_ms(ms),
                Err(m) => fail("token_ttl", format!("`[challenge] token_ttl`: {m}")),
            }
        }
        if let Some(u) = &c.url {
            match check_challenge_url(u) {
                Ok(()) => cfg.challenge_url = Some(u.clone()),
                Err(m) => fail("url", m),
            }
        }
        let sg = &parsed.signals;
        for (key, v, slot) in [
            ("max_keys", sg.max_keys, &mut cfg.signals.limits.max_keys),
            ("max_bytes", sg.max_bytes, &mut cfg.signals.limits.max_bytes),
            (
                "max_per_key",
                sg.max_per_key,
                &mut cfg.signals.limits.max_per_key,
            ),
        ] {
            match v {
                Some(0) => fail(key, format!("`[signals] {key}` must be at least 1")),
                Some(n) => *slot = n,
                None => {}
            }
        }
        if let Some(v) = &sg.max_window {
            match parse_millis(v) {
                Ok(ms) => cfg.signals.max_window_ms = ms,
                Err(m) => fail("max_window", format!("`[signals] max_window`: {m}")),
            }
        }
        if let Some(v) = &sg.known_for {
            match parse_millis(v) {
                Ok(ms) => cfg.signals.limits.known_for_ms = ms,
                Err(m) => fail("known_for", format!("`[signals] known_for`: {m}")),
            }
        }
        let g = &parsed.geoip;
        for (key, v, slot) in [
            ("city", &g.city, &mut cfg.geoip.city),
            ("asn", &g.asn, &mut cfg.geoip.asn),
            ("anonymous_ip", &g.anonymous_ip, &mut cfg.geoip.anonymous_ip),
        ] {
            if let Some(path) = v {
                let (line, column) = find_key(text, key);
                *slot = Some((path.clone(), line, column));
            }
        }
        for (key, v) in &parsed.custom {
            match custom_field(v) {
                Ok(field) => {
                    cfg.custom.0.insert(key.clone(), field);
                }
                Err(m) => fail(
                    key,
                    format!("`[custom] {}`: {m}", crate::error::shorten(key)),
                ),
            }
        }
        cfg.server = parsed.server.resolve(&mut fail);
        cfg.store = parsed.store.resolve(&mut fail);
        if problems.is_empty() {
            Ok(cfg)
        } else {
            Err(LoadError::Invalid(problems))
        }
    }

    /// The default outcome for `action`.
    pub(crate) fn default_for(&self, action: &str) -> State {
        self.action_defaults
            .get(action)
            .copied()
            .unwrap_or(self.default_outcome)
    }
}

/// Parses one of the four decision names.
pub(crate) fn decision(v: &str) -> Result<State, String> {
    match State::from_wire(v) {
        Some(s) if s.is_decision() => Ok(s),
        _ => Err(format!(
            "expected \"ALLOW\", \"CHALLENGE_REQUIRED\", \"REVIEW\" or \"BLOCK\", not `{}`",
            crate::error::shorten(v)
        )),
    }
}

/// One `[custom]` entry: `"number"`, or `{ type = "number", required = true }`.
fn custom_field(v: &toml::Value) -> Result<CustomField, String> {
    const EXPECTED: &str =
        "expected \"string\", \"number\" or \"bool\", or `{ type = \"number\", required = true }`";
    let ty = |t: &str| {
        CustomType::parse(t)
            .ok_or_else(|| format!("unknown type `{}`: {EXPECTED}", crate::error::shorten(t)))
    };
    match v {
        toml::Value::String(t) => Ok(CustomField {
            ty: ty(t)?,
            required: false,
        }),
        toml::Value::Table(t) => {
            if let Some(k) = t.keys().find(|k| *k != "type" && *k != "required") {
                return Err(format!(
                    "unknown key `{}`: expected `type` and `required`",
                    crate::error::shorten(k)
                ));
            }
            let Some(toml::Value::String(name)) = t.get("type") else {
                return Err(format!("`type` must be given as a string: {EXPECTED}"));
            };
            let required = match t.get("required") {
                None => false,
                Some(toml::Value::Boolean(b)) => *b,
                Some(_) => return Err("`required` must be `true` or `false`".to_owned()),
            };
            Ok(CustomField {
                ty: ty(name)?,
                required,
            })
        }
        _ => Err(EXPECTED.to_owned()),
    }
}

/// 1-based line and column of byte offset `at`.
pub(crate) fn line_col(text: &str, at: usize) -> (usize, usize) {
    let at = at.min(text.len());
    let before = text.get(..at).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}

/// Where `key` first appears as a TOML key (for values that parse but do not validate).
fn find_key(text: &str, key: &str) -> (usize, usize) {
    for (n, line) in text.lines().enumerate() {
        let t = line.trim_start();
        let indent = line.len() - t.len();
        let is_key = t.strip_prefix(key).is_some_and(|rest| {
            let rest = rest.trim_start();
            rest.starts_with('=') || rest.starts_with(']') || rest.starts_with('.')
        });
        let is_table = t
            .strip_prefix("[actions.")
            .is_some_and(|rest| rest.trim_matches(|c| c == '"' || c == ']') == key);
        if is_key || is_table {
            return (n + 1, indent + 1);
        }
    }
    (0, 0)
}

/// Checks `[challenge] url`: an `http(s)://` URL with a host, no fragment (the token is appended to the query,
/// and would otherwise land in the fragment, which never reaches the server), and nothing that could split a
/// header or a log line (control characters, spaces).
fn check_challenge_url(u: &str) -> Result<(), String> {
    use crate::error::shorten;
    let bad = |what: String| Err(format!("`[challenge] url` `{}` {what}", shorten(u)));
    let Some(rest) = u
        .strip_prefix("https://")
        .or_else(|| u.strip_prefix("http://"))
    else {
        return Err(format!(
            "`[challenge] url` must start with https:// or http://, not `{}`",
            shorten(u)
        ));
    };
    if let Some(c) = u.chars().find(|c| c.is_control()) {
        return bad(format!(
            "contains the control character `{}`",
            c.escape_default()
        ));
    }
    if u.contains(' ') {
        return bad("contains a space".to_owned());
    }
    if u.contains('#') {
        return bad("has a fragment (`#…`): the token would land in it".to_owned());
    }
    let authority = rest.split(['/', '?']).next().unwrap_or("");
    // The host follows any `user@`; a bracketed IPv6 address may itself contain colons.
    let host_port = authority.rsplit('@').next().unwrap_or("");
    let (host, port) = match host_port.strip_prefix('[') {
        Some(v6) => match v6.split_once(']') {
            Some((addr, after)) => (&host_port[..addr.len() + 2], after.strip_prefix(':')),
            None => return bad(format!("has an invalid host `{}`", shorten(host_port))),
        },
        None => match host_port.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (host_port, None),
        },
    };
    if host.is_empty() {
        return bad("has no host".to_owned());
    }
    let valid_host = match host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        Some(addr) => addr.parse::<std::net::Ipv6Addr>().is_ok(),
        None => host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b'%')),
    };
    if !valid_host {
        return bad(format!("has an invalid host `{}`", shorten(host)));
    }
    if let Some(p) = port {
        if !p.is_empty() && (!p.bytes().all(|b| b.is_ascii_digit()) || p.parse::<u16>().is_err()) {
            return bad(format!("has an invalid port `{}`", shorten(p)));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_file_parses() {
        let cfg = Config::parse(
            r#"
default_outcome = "ALLOW"
on_rule_error = "skip"
[actions.withdraw-funds]
default_outcome = "CHALLENGE_REQUIRED"
[limits]
max_operations = 1000
time_limit = "50ms"
[idempotency]
ttl = "1h"
capacity = 10
on_conflict = "replay"
[challenge]
token_ttl = "5m"
url = "https://example.com/challenge"
"#,
            "riskgate.toml",
        )
        .unwrap();
        assert_eq!(cfg.on_rule_error, OnRuleError::Skip);
        assert_eq!(cfg.default_for("withdraw-funds"), State::ChallengeRequired);
        assert_eq!(cfg.default_for("signIn"), State::Allow);
        assert_eq!(cfg.limits.max_operations, 1000);
        assert_eq!(cfg.limits.time_limit_ms, 50);
        assert_eq!(cfg.idempotency_ttl.ms(), 3_600_000);
        assert_eq!(cfg.capacity, 10);
        assert_eq!(cfg.on_conflict, OnConflict::Replay);
        assert_eq!(cfg.token_ttl.ms(), 300_000);
    }

    #[test]
    fn a_control_character_in_a_comment_is_named() {
        // Found by the `config_toml` fuzz target: the toml crate's message for it is empty.
        let e = Config::parse("# a \u{1} b\nx = 1\n", "riskgate.toml").unwrap_err();
        assert_eq!(
            e.to_string(),
            "riskgate.toml:1:5: invalid TOML: unexpected character `\\u{1}`"
        );
    }

    #[test]
    fn unknown_keys_and_bad_values_say_where() {
        let e =
            Config::parse("default_outcome = \"ALLOW\"\nfoo = 1\n", "riskgate.toml").unwrap_err();
        let d = &e.diagnostics()[0];
        assert_eq!((d.line, d.column), (2, 1), "{e}");
        assert!(d.message.contains("unknown field `foo`"), "{e}");
        let e = Config::parse("\n[limits]\ntime_limit = \"fast\"\n", "riskgate.toml").unwrap_err();
        assert_eq!(
            e.to_string().lines().next().unwrap_or(""),
            e.diagnostics()[0].to_string()
        );
        assert!(
            e.to_string()
                .starts_with("riskgate.toml:3:1: `[limits] time_limit`"),
            "{e}"
        );
        let e = Config::parse("on_rule_error = \"maybe\"\n", "riskgate.toml").unwrap_err();
        assert!(e.to_string().starts_with("riskgate.toml:1:1:"), "{e}");
        let e = Config::parse("[limits]\nmax_operations = 0\n", "riskgate.toml").unwrap_err();
        assert!(e.to_string().contains("cannot be turned off"), "{e}");
    }
}
