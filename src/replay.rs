//! Replaying an event log: one JSON line in, one JSON line out, as `riskgate replay` does.
//!
//! A line is a track request (`{"userId","action","attributes"}`) with an optional `"timestamp"` (RFC 3339 or
//! epoch milliseconds, both from 1970-01-01T00:00:00Z to 9999-12-31T23:59:59.999Z; the wall clock when absent),
//! or an operation: `{"op":"updateAction","userId","action",
//! "idempotencyKey","state"}`, `{"op":"getAction",…}` or `{"op":"validateChallenge","token"}`, with an optional
//! `"timestamp"` too (the time of the line before when absent). The output line is the response JSON, or
//! `{"line":N,"error":{"code":"…","message":"…"}}` for a line that is refused.
//!
//! Two additions make labelled logs (such as `riskgate simulate` writes) replayable:
//! - any line may carry `"label"` and `"model"` (strings of at most [`MAX_LABEL_BYTES`] bytes, such as
//!   `"label":"attack","model":"vpn"`): they are not part of the request, the output line does not change, and
//!   [`Output::label`] carries them so that a [`Labels`] tally can measure catch rate and friction per label
//!   and model;
//! - `updateAction` takes an optional `"ifState"`: the update applies only when the action is in that state
//!   (`"ifState":"CHALLENGE_REQUIRED"` completes a challenge only if one was asked); otherwise the output line is
//!   the unchanged action, as `getAction` returns it.
//!
//! A [`Replayer`] owns an engine whose clock it sets to each line's timestamp, so replaying a log is
//! deterministic (challenge tokens and generated idempotency keys aside, which are random unless
//! [`Replayer::tokens`] redacts them or makes them from a seed).
//!
//! ```
//! use riskgate::{replay::Replayer, Engine, RuleSet};
//!
//! let rules = RuleSet::from_sources([("no-device", "if device_id == () { CHALLENGE_REQUIRED }")])?;
//! let mut replayer = Replayer::new(Engine::builder().ruleset(rules))?;
//! let out = replayer
//!     .line(1, br#"{"timestamp":0,"userId":"u1","action":"signIn","attributes":{"idempotencyKey":"k1","deviceId":"d1"}}"#)
//!     .ok_or("a blank line")?;
//! assert_eq!(out.json, r#"{"state":"ALLOW","idempotencyKey":"k1","ruleIds":[]}"#);
//! let out = replayer.line(2, b"{").ok_or("a blank line")?;
//! assert!(out.json.starts_with(r#"{"line":2,"error":{"code":"invalid_json","#));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use serde::Serialize;
use serde_json::{Map, Value};
use std::time::{Duration, Instant, SystemTime};

mod tokens;
pub use tokens::{Tokens, MAX_STAND_INS};

use crate::{
    Engine, EngineBuilder, FakeClock, LoadError, State, TrackError, TrackRequest, TrackResponse,
};

/// The longest input line a [`Replayer`] parses, in bytes; a longer one is refused unread.
pub const MAX_LINE_BYTES: usize = 1024 * 1024;

/// Drives an [`Engine`] from JSON lines. See the [module docs](self).
#[derive(Debug)]
pub struct Replayer {
    engine: Engine,
    clock: FakeClock,
    /// Add each new decision's trace to its output line (`riskgate replay --trace`).
    trace: bool,
    tokens: tokens::StandIns,
}

/// The longest `"label"` or `"model"` a line may carry, in bytes.
pub const MAX_LABEL_BYTES: usize = 64;

/// What one replayed line produced.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Output {
    /// The output line (without a line ending).
    pub json: String,
    /// What happened.
    pub outcome: Outcome,
    /// How long `track` took, when the line reached it (whether it decided or was refused).
    pub track_latency: Option<Duration>,
    /// The line's `"label"` and `"model"`, when it carried a label (and was valid JSON).
    pub label: Option<Label>,
    /// The line number it was handed with.
    pub line: u64,
    /// The line's `userId` and `action`, when it named them as strings (and was valid JSON).
    pub user_id: Option<String>,
    /// See [`user_id`](Self::user_id).
    pub action: Option<String>,
    /// The line's event time in epoch milliseconds, when it reached the engine.
    pub at_ms: Option<i64>,
    /// For [`Outcome::Tracked`]: the line was an idempotent repeat, answered with the stored action without
    /// deciding again (as [`Engine::decisions`] counts).
    pub repeat: bool,
}

/// A line's `"label"` (`genuine`, `attack`, …) and optional `"model"` (which behaviour or attacker).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[non_exhaustive]
pub struct Label {
    /// The label.
    pub label: String,
    /// The model, if given.
    pub model: Option<String>,
    /// The action code, for a track line.
    pub action: Option<String>,
}

/// What a replayed line did.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum Outcome {
    /// A track request was decided (or a repeat returned its stored action).
    Tracked(TrackResponse),
    /// An operation (`updateAction`, `getAction`, `validateChallenge`) succeeded.
    Operation,
    /// The line was refused; the output line carries this error.
    Refused(TrackError),
}

impl Replayer {
    /// Builds the engine from `builder` with a clock the replayer controls (any clock set on the builder is
    /// replaced).
    pub fn new(builder: EngineBuilder) -> Result<Replayer, LoadError> {
        let clock = FakeClock::at(SystemTime::now());
        let engine = builder.clock(clock.clone()).build()?;
        Ok(Replayer {
            engine,
            clock,
            trace: false,
            tokens: tokens::StandIns::default(),
        })
    }

    /// Sets how challenge tokens and generated idempotency keys are written (by default, as they are).
    ///
    /// ```
    /// use riskgate::{replay::{Replayer, Tokens}, Engine, RuleSet};
    ///
    /// let rules = RuleSet::from_sources([("always", "CHALLENGE_REQUIRED")])?;
    /// let line = br#"{"timestamp":0,"userId":"u1","action":"signIn"}"#;
    /// let mut a = Replayer::new(Engine::builder().ruleset(rules.clone()))?.tokens(Tokens::Seeded(1));
    /// let mut b = Replayer::new(Engine::builder().ruleset(rules))?.tokens(Tokens::Seeded(1));
    /// let (x, y) = (a.line(1, line).ok_or("blank")?, b.line(1, line).ok_or("blank")?);
    /// assert_eq!(x.json, y.json);
    /// assert!(x.json.contains(r#""token":"tok-"#) && x.json.contains(r#""idempotencyKey":"replay-"#));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    #[must_use]
    pub fn tokens(mut self, mode: Tokens) -> Replayer {
        self.tokens.mode = mode;
        self
    }

    /// With `on`, the output line of each track request that the rules decide carries `"trace"`: the
    /// [`RuleTrace`](crate::RuleTrace)s of [`Engine::explain_at`] for that request, taken just before it was
    /// decided (so on the same history). A repeat, which the rules do not decide again, carries none.
    pub fn set_trace(&mut self, on: bool) {
        self.trace = on;
    }

    /// Explains line `number` instead of replaying it (`riskgate explain`): the output line is the
    /// [`Explanation`](crate::Explanation) JSON of a track request, as [`Engine::explain_at`] gives it at the
    /// line's timestamp (the wall clock when absent), or the error line of [`line`](Replayer::line). Nothing is
    /// recorded, so every line is explained against the engine as it is. Operations (`"op"`) are refused:
    /// they change stored actions. `None` for a blank line.
    pub fn explain_line(&self, number: u64, line: &[u8]) -> Option<String> {
        if line.len() > MAX_LINE_BYTES {
            return Some(self.too_long(number, line.len()).json);
        }
        if line.iter().all(u8::is_ascii_whitespace) {
            return None;
        }
        let explained = std::str::from_utf8(line)
            .map_err(|_| TrackError::InvalidJson("the line is not valid UTF-8".into()))
            .and_then(|text| {
                let mut obj: Map<String, Value> = match parse_line(text)? {
                    Value::Object(m) => m,
                    _ => return Err(invalid("line", "expected a JSON object")),
                };
                if obj.contains_key("op") {
                    return Err(invalid(
                        "op",
                        "operations change stored actions: explain takes track requests only",
                    ));
                }
                take_label(&mut obj, "model")?;
                take_label(&mut obj, "label")?;
                let at = match obj.remove("timestamp") {
                    Some(v) => parse_timestamp(&v)?,
                    None => SystemTime::now(),
                };
                let req: TrackRequest = from_value(obj)?;
                to_json(&self.engine.explain_at(&req, at)?)
            });
        Some(explained.unwrap_or_else(|e| refused(number, e, None).json))
    }

    /// The engine lines are replayed into.
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// Handles line `number` (1-based, used in error lines). `None` for a blank line, which produces no output.
    ///
    /// A line longer than [`MAX_LINE_BYTES`] is refused without being parsed.
    pub fn line(&mut self, number: u64, line: &[u8]) -> Option<Output> {
        if line.len() > MAX_LINE_BYTES {
            return Some(self.too_long(number, line.len()));
        }
        if line.iter().all(u8::is_ascii_whitespace) {
            return None;
        }
        let Ok(text) = std::str::from_utf8(line) else {
            return Some(refused(
                number,
                TrackError::InvalidJson("the line is not valid UTF-8".into()),
                None,
            ));
        };
        let mut seen = Seen::default();
        let before = self.engine.decisions();
        let result = self.handle(number, text, &mut seen);
        let mut out = match result {
            Ok((json, outcome)) => Output {
                json,
                outcome,
                track_latency: seen.latency,
                label: None,
                line: number,
                user_id: None,
                action: None,
                at_ms: None,
                repeat: false,
            },
            Err(e) => refused(number, e, seen.latency),
        };
        out.repeat =
            matches!(out.outcome, Outcome::Tracked(_)) && self.engine.decisions() == before;
        out.label = seen.label;
        out.user_id = seen.user_id;
        out.action = seen.action;
        out.at_ms = seen.at_ms;
        Some(out)
    }

    /// The output for line `number` when it was `len` bytes, over [`MAX_LINE_BYTES`], and was skipped unread
    /// (for readers that bound the line before it reaches memory).
    pub fn too_long(&self, number: u64, len: usize) -> Output {
        refused(
            number,
            TrackError::InvalidRequest {
                field: "line".into(),
                reason: format!("is {len} bytes, at most {MAX_LINE_BYTES} are allowed"),
            },
            None,
        )
    }

    fn handle(
        &mut self,
        number: u64,
        text: &str,
        seen: &mut Seen,
    ) -> Result<(String, Outcome), TrackError> {
        let mut obj: Map<String, Value> = match parse_line(text)? {
            Value::Object(m) => m,
            _ => return Err(invalid("line", "expected a JSON object")),
        };
        for (key, slot) in [("userId", &mut seen.user_id), ("action", &mut seen.action)] {
            if let Some(Value::String(v)) = obj.get(key) {
                *slot = Some(v.clone());
            }
        }
        let model = take_label(&mut obj, "model")?;
        seen.label = take_label(&mut obj, "label")?.map(|label| Label {
            label,
            model,
            action: match (obj.get("op"), obj.get("action")) {
                (None, Some(Value::String(a))) => Some(a.clone()),
                _ => None,
            },
        });
        let at = match obj.remove("timestamp") {
            Some(v) => parse_timestamp(&v)?,
            // An operation without a timestamp happens when the line before it did, so that a log of past events
            // followed by `getAction` still finds its action, however long ago the log was written.
            None if obj.contains_key("op") => crate::Clock::now(&self.clock),
            None => SystemTime::now(),
        };
        self.clock.set(at);
        seen.at_ms = at
            .duration_since(std::time::UNIX_EPOCH)
            .ok()
            .and_then(|d| i64::try_from(d.as_millis()).ok());
        let op = match obj.remove("op") {
            None => None,
            Some(Value::String(op)) => Some(op),
            Some(_) => return Err(invalid("op", "expected a string")),
        };
        let engine = &self.engine;
        let Some(op) = op else {
            let mut req: TrackRequest = from_value(obj)?;
            if req.attributes.idempotency_key.is_none() {
                req.attributes.idempotency_key = self.tokens.key(number);
            }
            let trace = match self.trace {
                true => Some((engine.explain_at(&req, at)?.rules, engine.decisions())),
                false => None,
            };
            let started = Instant::now();
            let resp = engine.track_at(&req, at);
            seen.latency = Some(started.elapsed());
            let mut resp = resp?;
            self.tokens.hide(&mut resp.token, &mut resp.url, number);
            let json = match trace {
                Some((rules, before)) if engine.decisions() != before => {
                    // The response's own fields first, in their usual order, then the trace.
                    let mut json = to_json(&resp)?;
                    json.pop();
                    json.push_str(r#","trace":"#);
                    json.push_str(&to_json(&rules)?);
                    json.push('}');
                    json
                }
                _ => to_json(&resp)?,
            };
            return Ok((json, Outcome::Tracked(resp)));
        };
        let json = match op.as_str() {
            "updateAction" => {
                let a: ActionArgs = from_value(obj.clone())?;
                let state = match obj.get("state") {
                    Some(Value::String(v)) => v
                        .parse::<State>()
                        .map_err(|m| invalid("state", &m.to_string()))?,
                    _ => return Err(invalid("state", "expected a state name")),
                };
                let if_state = match obj.get("ifState") {
                    None => None,
                    Some(Value::String(v)) => Some(
                        v.parse::<State>()
                            .map_err(|m| invalid("ifState", &m.to_string()))?,
                    ),
                    Some(_) => return Err(invalid("ifState", "expected a state name")),
                };
                if let Some(want) = if_state {
                    let current = engine
                        .get_action(&a.user_id, &a.action, &a.idempotency_key)
                        .ok_or_else(|| TrackError::ActionNotFound {
                            user_id: a.user_id.clone(),
                            action: a.action.clone(),
                            idempotency_key: a.idempotency_key.clone(),
                        })?;
                    if current.state != want {
                        return Ok((to_json(&current)?, Outcome::Operation));
                    }
                }
                to_json(&engine.update_action(&a.user_id, &a.action, &a.idempotency_key, state)?)?
            }
            "getAction" => {
                let a: ActionArgs = from_value(obj)?;
                match engine.get_action(&a.user_id, &a.action, &a.idempotency_key) {
                    Some(r) => to_json(&r)?,
                    None => {
                        return Err(TrackError::ActionNotFound {
                            user_id: a.user_id,
                            action: a.action,
                            idempotency_key: a.idempotency_key,
                        })
                    }
                }
            }
            "validateChallenge" => {
                let token = match obj.get("token") {
                    Some(Value::String(t)) => t.clone(),
                    _ => return Err(invalid("token", "expected a string")),
                };
                to_json(&engine.validate_challenge(self.tokens.real(&token)))?
            }
            other => {
                return Err(invalid(
                    "op",
                    &format!(
                    "unknown operation `{}`: expected updateAction, getAction or validateChallenge",
                    crate::error::shorten(other)
                ),
                ))
            }
        };
        Ok((json, Outcome::Operation))
    }
}

/// Parses a line as one JSON value with unique keys. Every failure is `invalid_json`; a duplicate key is named
/// with the object it is in, as [`TrackRequest::from_json`] names it.
fn parse_line(text: &str) -> Result<Value, TrackError> {
    let de = &mut serde_json::Deserializer::from_str(text);
    match serde_path_to_error::deserialize::<_, Unique>(&mut *de) {
        Ok(Unique(v)) => de
            .end()
            .map(|()| v)
            .map_err(|e| TrackError::InvalidJson(e.to_string())),
        Err(e) => {
            let path = e.path().to_string();
            let inner = e.into_inner();
            Err(match crate::request::classify_json_error(&path, &inner) {
                json @ TrackError::InvalidJson(_) => json,
                _ => TrackError::InvalidJson(inner.to_string()),
            })
        }
    }
}

/// A JSON value whose objects, at every depth, have unique keys: a line with a key given twice (`userId`, `op`,
/// `timestamp`, a `custom` key, …) is malformed, as [`TrackRequest::from_json`] has it, rather than read with
/// whichever value came last.
struct Unique(Value);

impl<'de> serde::Deserialize<'de> for Unique {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(UniqueVisitor).map(Unique)
    }
}

struct UniqueVisitor;

impl<'de> serde::de::Visitor<'de> for UniqueVisitor {
    type Value = Value;
    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }
    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }
    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut out = Vec::new();
        while let Some(Unique(v)) = seq.next_element()? {
            out.push(v);
        }
        Ok(Value::Array(out))
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut m: A) -> Result<Value, A::Error> {
        let mut out = Map::new();
        while let Some(k) = m.next_key::<String>()? {
            if out.contains_key(&k) {
                return Err(crate::request::duplicate_key(&k));
            }
            let Unique(v) = m.next_value()?;
            out.insert(k, v);
        }
        Ok(Value::Object(out))
    }
}

/// What [`Replayer::handle`] learnt of a line besides its answer.
#[derive(Default)]
struct Seen {
    latency: Option<Duration>,
    label: Option<Label>,
    user_id: Option<String>,
    action: Option<String>,
    at_ms: Option<i64>,
}

fn refused(number: u64, e: TrackError, latency: Option<Duration>) -> Output {
    let message = serde_json::to_string(&e.to_string()).unwrap_or_else(|_| "\"\"".to_owned());
    Output {
        json: format!(
            r#"{{"line":{number},"error":{{"code":"{}","message":{message}}}}}"#,
            e.code()
        ),
        outcome: Outcome::Refused(e),
        track_latency: latency,
        label: None,
        line: number,
        user_id: None,
        action: None,
        at_ms: None,
        repeat: false,
    }
}

/// Removes `key` (`"label"` or `"model"`) from a line: a string of 1 to [`MAX_LABEL_BYTES`] bytes without control
/// characters.
fn take_label(obj: &mut Map<String, Value>, key: &str) -> Result<Option<String>, TrackError> {
    match obj.remove(key) {
        None => Ok(None),
        Some(Value::String(s))
            if !s.is_empty() && s.len() <= MAX_LABEL_BYTES && !s.chars().any(char::is_control) =>
        {
            Ok(Some(s))
        }
        Some(_) => Err(invalid(
            key,
            &format!(
                "expected a string of 1 to {MAX_LABEL_BYTES} bytes without control characters"
            ),
        )),
    }
}

/// The most distinct (label, model) rows a [`Labels`] tally keeps; further ones are counted under `(other)`.
pub const MAX_LABEL_ROWS: usize = 256;

/// Decisions per label and model, for measuring a ruleset on a labelled log.
///
/// A tracked line counts under its label and model by its first decision (a repeat that comes back
/// `CHALLENGE_SUCCEEDED` counts as a challenge). For the labels `attack` and `fraud`, *caught* is the share of
/// decisions that are not `ALLOW` (`BLOCK`, `CHALLENGE_REQUIRED` or `REVIEW`); for any other label,
/// *friction* is the same share (genuine users who were not simply allowed).
///
/// ```
/// use riskgate::{replay::{Labels, Replayer}, Engine, RuleSet};
///
/// let rules = RuleSet::from_sources([("far", r#"if ip_address == "203.0.113.9" { BLOCK }"#)])?;
/// let mut replayer = Replayer::new(Engine::builder().ruleset(rules))?;
/// let mut labels = Labels::default();
/// for (n, line) in [
///     r#"{"timestamp":0,"userId":"u1","action":"signIn","attributes":{"ipAddress":"198.51.100.1"},"label":"genuine"}"#,
///     r#"{"timestamp":1,"userId":"u1","action":"signIn","attributes":{"ipAddress":"203.0.113.9"},"label":"attack","model":"naive"}"#,
/// ].iter().enumerate() {
///     let out = replayer.line(n as u64 + 1, line.as_bytes()).ok_or("a blank line")?;
///     labels.record(&out);
/// }
/// let attack = labels.total("attack");
/// assert_eq!((attack.events, attack.caught()), (1, 1));
/// assert_eq!(labels.total("genuine").caught(), 0);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, Default)]
pub struct Labels {
    rows: std::collections::BTreeMap<(String, String), Tally>,
    /// The same decisions per (label, action code).
    actions: std::collections::BTreeMap<(String, String), Tally>,
}

/// Decisions of one row of a [`Labels`] tally.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Tally {
    /// Tracked lines.
    pub events: u64,
    /// First decisions `ALLOW`.
    pub allow: u64,
    /// First decisions `CHALLENGE_REQUIRED`.
    pub challenge: u64,
    /// First decisions `REVIEW`.
    pub review: u64,
    /// First decisions `BLOCK`.
    pub block: u64,
    /// Lines refused (not decided).
    pub refused: u64,
}

impl Tally {
    /// Decisions other than `ALLOW`.
    pub fn caught(&self) -> u64 {
        self.challenge + self.review + self.block
    }

    /// [`caught`](Self::caught) as a share of decisions (0 when there are none).
    pub fn rate(&self) -> f64 {
        let decided = self.allow + self.caught();
        if decided == 0 {
            0.0
        } else {
            self.caught() as f64 / decided as f64
        }
    }

    fn add(&mut self, o: &Tally) {
        self.events += o.events;
        self.allow += o.allow;
        self.challenge += o.challenge;
        self.review += o.review;
        self.block += o.block;
        self.refused += o.refused;
    }
}

impl Labels {
    /// Counts one replayed line (lines without a label and operations are not counted).
    pub fn record(&mut self, out: &Output) {
        let Some(label) = &out.label else { return };
        let mut one = Tally::default();
        match &out.outcome {
            Outcome::Tracked(resp) => {
                one.events = 1;
                match resp.state {
                    State::Allow => one.allow = 1,
                    State::ChallengeRequired
                    | State::ChallengeSucceeded
                    | State::ChallengeFailed => one.challenge = 1,
                    State::Review | State::ReviewSucceeded | State::ReviewFailed => one.review = 1,
                    State::Block => one.block = 1,
                }
            }
            Outcome::Refused(_) => one.refused = 1,
            Outcome::Operation => return,
        }
        for (map, second) in [
            (&mut self.rows, label.model.clone()),
            (&mut self.actions, label.action.clone()),
        ] {
            let mut key = (label.label.clone(), second.unwrap_or_default());
            if !map.contains_key(&key) && map.len() >= MAX_LABEL_ROWS {
                key = ("(other)".to_owned(), String::new());
            }
            map.entry(key).or_default().add(&one);
        }
    }

    /// All decisions of one label on one action code.
    pub fn action_total(&self, label: &str, action: &str) -> Tally {
        self.actions
            .get(&(label.to_owned(), action.to_owned()))
            .copied()
            .unwrap_or_default()
    }

    /// Every (label, model) row, sorted; the model is empty for lines without one.
    pub fn rows(&self) -> impl Iterator<Item = (&str, &str, &Tally)> {
        self.rows
            .iter()
            .map(|((l, m), t)| (l.as_str(), m.as_str(), t))
    }

    /// All rows of one label together.
    pub fn total(&self, label: &str) -> Tally {
        let mut t = Tally::default();
        for (_, _, row) in self.rows().filter(|r| r.0 == label) {
            t.add(row);
        }
        t
    }

    /// Whether any labelled line was counted.
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// The table: one row per label and model, one per label and action code (`[signIn]`), then one total per
    /// label, with the share caught (label `attack`) or the friction (every other label).
    pub fn table(&self) -> String {
        use std::fmt::Write as _;
        let mut s = String::new();
        let _ = writeln!(
            s,
            "{:<10} {:<16} {:>8} {:>8} {:>9} {:>8} {:>8} {:>8}  share not allowed",
            "label", "model", "events", "ALLOW", "CHALLENGE", "REVIEW", "BLOCK", "refused"
        );
        let mut line = |label: &str, model: &str, t: &Tally| {
            let what = if label == "attack" || label == "fraud" {
                "caught"
            } else {
                "friction"
            };
            let _ = writeln!(
                s,
                "{label:<10} {model:<16} {:>8} {:>8} {:>9} {:>8} {:>8} {:>8}  {:>6.2}% {what}",
                t.events,
                t.allow,
                t.challenge,
                t.review,
                t.block,
                t.refused,
                100.0 * t.rate()
            );
        };
        for (l, m, t) in self.rows() {
            line(l, m, t);
        }
        for ((l, a), t) in &self.actions {
            line(l, &format!("[{a}]"), t);
        }
        let mut labels: Vec<&str> = self.rows().map(|r| r.0).collect();
        labels.dedup();
        for l in labels {
            line(l, "(all)", &self.total(l));
        }
        s
    }

    /// The tally as JSON: `{"rows":[{"label","model","events","allow","challenge","review","block","refused",
    /// "rate"}…]}` (`model` is `null` for lines without one; `rate` is caught or friction, 0 to 1).
    pub fn to_json(&self) -> String {
        let rows: Vec<Value> = self
            .rows()
            .map(|(l, m, t)| {
                serde_json::json!({
                    "label": l,
                    "model": if m.is_empty() { Value::Null } else { Value::from(m) },
                    "events": t.events,
                    "allow": t.allow,
                    "challenge": t.challenge,
                    "review": t.review,
                    "block": t.block,
                    "refused": t.refused,
                    "rate": t.rate(),
                })
            })
            .collect();
        serde_json::json!({ "rows": rows }).to_string()
    }
}

#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct ActionArgs {
    user_id: String,
    action: String,
    idempotency_key: String,
    #[serde(default, rename = "state")]
    _state: Option<Value>,
    #[serde(default, rename = "ifState")]
    _if_state: Option<Value>,
}

fn invalid(field: &str, reason: &str) -> TrackError {
    TrackError::invalid(field, reason)
}

fn from_value<T: serde::de::DeserializeOwned>(obj: Map<String, Value>) -> Result<T, TrackError> {
    serde_path_to_error::deserialize(Value::Object(obj)).map_err(|e| {
        let path = e.path().to_string();
        let field = if path == "." {
            "request".to_owned()
        } else {
            path
        };
        invalid(&field, &e.inner().to_string())
    })
}

fn to_json<T: Serialize>(v: &T) -> Result<String, TrackError> {
    serde_json::to_string(v).map_err(|e| TrackError::InvalidJson(e.to_string()))
}

/// An event time: epoch milliseconds or RFC 3339, within the range [`Engine::track_at`] documents.
fn parse_timestamp(v: &Value) -> Result<SystemTime, TrackError> {
    let ms = match v {
        Value::Number(n) => match (n.as_i64(), n.as_u64()) {
            (Some(ms), _) => crate::clock::check_event_ms(i128::from(ms), || n.to_string())?,
            (None, Some(ms)) => crate::clock::check_event_ms(i128::from(ms), || n.to_string())?,
            (None, None) => {
                return Err(invalid(
                    "timestamp",
                    "epoch milliseconds must be a non-negative whole number",
                ))
            }
        },
        Value::String(s) => {
            let t = time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
                .map_err(|_| {
                    invalid(
                        "timestamp",
                        &format!(
                            "`{}` is not an RFC 3339 timestamp",
                            crate::error::shorten(s)
                        ),
                    )
                })?;
            crate::clock::check_event_ms(t.unix_timestamp_nanos().div_euclid(1_000_000), || {
                s.clone()
            })?
        }
        _ => {
            return Err(invalid(
                "timestamp",
                "expected an RFC 3339 string or epoch milliseconds",
            ))
        }
    };
    Ok(crate::clock::from_millis(ms))
}
