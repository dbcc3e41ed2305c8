//! Replaying an event log: one JSON line in, one JSON line out, as `riskgate replay` does.
//!
//! A line is a track request (`{"userId","action","attributes"}`) with an optional `"timestamp"` (RFC 3339 or
//! epoch milliseconds, both from 1970-01-01T00:00:00Z to 9999-12-31T23:59:59.999Z; the wall clock when absent),
//! or an operation: `{"op":"updateAction","userId","action",
//! "idempotencyKey","state"}`, `{"op":"getAction",…}` or `{"op":"validateChallenge","token"}`, with an optional
//! `"timestamp"` too (the time of the line before when absent). The output line is the response JSON, or
//! `{"line":N,"error":{"code":"…","message":"…"}}` for a line that is refused.
//!
//! A [`Replayer`] owns an engine whose clock it sets to each line's timestamp, so replaying a log is
//! deterministic (challenge tokens and generated idempotency keys aside, which are random).
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
}

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
        Ok(Replayer { engine, clock })
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
        let mut latency = None;
        Some(match self.handle(text, &mut latency) {
            Ok((json, outcome)) => Output {
                json,
                outcome,
                track_latency: latency,
            },
            Err(e) => refused(number, e, latency),
        })
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
        &self,
        text: &str,
        latency: &mut Option<Duration>,
    ) -> Result<(String, Outcome), TrackError> {
        let mut obj: Map<String, Value> = match parse_line(text)? {
            Value::Object(m) => m,
            _ => return Err(invalid("line", "expected a JSON object")),
        };
        let at = match obj.remove("timestamp") {
            Some(v) => parse_timestamp(&v)?,
            // An operation without a timestamp happens when the line before it did, so that a log of past events
            // followed by `getAction` still finds its action, however long ago the log was written.
            None if obj.contains_key("op") => crate::Clock::now(&self.clock),
            None => SystemTime::now(),
        };
        self.clock.set(at);
        let op = match obj.remove("op") {
            None => None,
            Some(Value::String(op)) => Some(op),
            Some(_) => return Err(invalid("op", "expected a string")),
        };
        let engine = &self.engine;
        let Some(op) = op else {
            let req: TrackRequest = from_value(obj)?;
            let started = Instant::now();
            let resp = engine.track_at(&req, at);
            *latency = Some(started.elapsed());
            let resp = resp?;
            return Ok((to_json(&resp)?, Outcome::Tracked(resp)));
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
                to_json(&engine.validate_challenge(&token))?
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

fn refused(number: u64, e: TrackError, latency: Option<Duration>) -> Output {
    let message = serde_json::to_string(&e.to_string()).unwrap_or_else(|_| "\"\"".to_owned());
    Output {
        json: format!(
            r#"{{"line":{number},"error":{{"code":"{}","message":{message}}}}}"#,
            e.code()
        ),
        outcome: Outcome::Refused(e),
        track_latency: latency,
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
