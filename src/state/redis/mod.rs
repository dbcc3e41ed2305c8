//! The Redis (and Redis Cluster) state store (feature `redis`): actions, tokens and signal history on a server
//! every engine shares, with the in-memory store's semantics.
//!
//! # Keys
//! Every key starts with `[store] key_prefix` and carries a hash tag, so that each script touches one slot:
//! - one user's `{u…}`: its actions (`:a:<identity>`, one string each), its series per action code (`:s1:<action>`), the
//!   devices it used (`:z6`), what it made known (`:kd`, `:ki`, `:kc`, `:kl`) and its `rba_score()` counts
//!   (`:kr`);
//! - one IP's `{i…}` and one device's `{d…}`: their series per action code (`:s2:`/`:s3:`) and the users seen
//!   with them (`:z4`/`:z5`);
//! - one token's `{t…}`: the key of its action; one `rba_score()` value's `{r…}`: its population count;
//!   `{g}`: the shared keys and the population's total.
//!
//! Users, IPs and devices are named by their seeded 64-bit history hashes (the seed is drawn by the first
//! engine and kept in `{g}:keys`, so every engine hashes alike and nothing outside can aim at a key). The same
//! value records the request fingerprint scheme the keys are used with; an engine whose scheme differs (or a
//! store from before it was recorded) is refused at `build`, since every repeat of a stored action would be a
//! conflict.
//!
//! # Round trips
//! A first decision makes two: (1) the claim of the identity with the user's, the IP's and the device's history
//! reads, pipelined with the population's; (2) the commit with the user's, the IP's and the device's history
//! writes, pipelined with the token's and the population's. A repeat makes one: a `GET` of the action when
//! this engine saw it decided (see [`recent`]), else the claim script, which answers it before any read. Reads and writes of one slot are one script, atomic; nothing is read, changed in Rust and
//! written back. On Redis Cluster, where a script touches one slot, the IP's and the device's reads are plain
//! commands in the claim's pipeline (made for repeats by claim too), and their writes scripts of their own in the
//! commit's, made even when the commit finds its lease gone; off-cluster the claim and commit scripts make
//! them, the writes only with the decision.
//!
//! # Bounds
//! Actions expire with the idempotency TTL (`PEXPIRE`, and by event time in every script, as in memory); a
//! claim expires with its lease. Series and sets are trimmed to the ruleset's horizon and `max_per_key` by the
//! script that writes them, and expire a horizon after their last write; known items and counts after
//! `known_for`. `max_keys` and `max_bytes` are the in-memory tables' bounds; on Redis, memory is bounded by
//! these expiries (and `maxmemory`).

mod conn;
mod recent;
mod scripts;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use redis::Value;

pub(crate) use self::conn::{finish, Io};
use self::conn::{Op, Pool};
use self::recent::Recent;
use self::scripts::Scripts;
use super::record::{Decided, Stored};
use super::StoreError;
use crate::config::HistoryLimits;
use crate::hash::EngineKeys;
use crate::response::State;
use crate::signals::history::{CountryCode, Located, MAX_KNOWN, MAX_RBA_VALUES};
use crate::signals::view::{Fetched, KnownWrite, Writes};
use crate::signals::{History, Keys};
use crate::store_settings::StoreSettings;

/// The Redis store of one engine.
pub(crate) struct RedisStore {
    pool: Pool,
    /// The nodes the url names (for [`RedisStore::count_actions`]).
    nodes: Vec<String>,
    /// Redis Cluster: a script touches one slot only, so the IP's and device's writes are scripts of their own.
    cluster: bool,
    scripts: Scripts,
    prefix: String,
    lease: Duration,
    /// This engine's claims are `owner:<n>`.
    owner: String,
    next: AtomicU64,
    /// Hashing with the shared seed.
    hasher: Arc<History>,
    /// The identities this engine saw decided: their repeats are one `GET` (see [`RedisStore::repeat`]).
    recent: Recent,
}

/// What a first decision's claim needs to say and read.
pub(crate) struct ClaimReq<'a> {
    pub user_id: &'a str,
    pub action: &'a str,
    pub key: &'a str,
    pub fingerprint: u128,
    pub now: i64,
    pub ttl_ms: i64,
    pub keys: &'a Keys,
    /// The ruleset's history horizon and the series and sets it reads (`SignalSet::windowed`).
    pub horizon_ms: i64,
    pub windowed: u8,
    /// `SignalSet::windows`: when given, each series and set read is counted over these windows by the store.
    pub windows: Option<&'a [(u8, i64)]>,
    pub known_for_ms: i64,
    /// Some rule asks about places (known countries, the last location) / calls `rba_score()`.
    pub places: bool,
    pub uses_rba: bool,
    /// The known lists some rule reads (`SignalSet::uses_known`).
    pub known: u8,
    /// This action's device, IP and country (hashed): the items whose being known the claim looks up.
    pub items: [Option<u64>; 3],
    /// `rba_score()`'s values whose population counts to read (empty when no rule calls it).
    pub rba: &'a [u64],
}

/// Where a read's reply is: a list of the claim script's reply, or a plain command's reply in the pipeline.
#[derive(Clone, Copy)]
enum Sourced {
    Claim(usize),
    Plain(usize),
}

/// The index among the claim script's lists of the first subject read it makes (after the user's two reads,
/// whether the device, IP and country are known, the last location and the `rba_score()` counts).
const CLAIM_SUBJECTS_AT: usize = 7;

/// The lists of the claim script's flat reply after its status: each is its length, then its items.
fn lists(v: &[Value]) -> Option<Vec<&[Value]>> {
    let mut out = Vec::with_capacity(12);
    let mut at = 0usize;
    while at < v.len() {
        let n = usize::try_from(int(v.get(at)?)?).ok()?;
        let end = at.checked_add(1)?.checked_add(n)?;
        out.push(v.get(at + 1..end)?);
        at = end;
    }
    Some(out)
}

/// A claim this engine holds on an identity.
pub(crate) struct Ticket {
    /// The claim's [`RedisStore::user_keys`] (the action key first), kept for the commit.
    keys: Vec<String>,
    /// The user and action hash `keys` are for.
    keys_for: (u64, u64),
    /// The IP's and the device's series and set keys, with the IP or device they are for.
    subjects: [Option<(u64, [String; 2])>; 2],
    owner: String,
    identity: u128,
}

impl Ticket {
    fn action_key(&self) -> &str {
        self.keys.first().map_or("", String::as_str)
    }
}

/// What a claim found.
pub(crate) enum Claim {
    /// The identity is this caller's to decide; the history it may read.
    Claimed(Ticket, Box<Fetched>),
    /// The identity is decided.
    Decided(Box<Stored>),
    /// Another caller (here or on another engine) is deciding it; the fingerprint it was claimed with.
    Pending(u128),
    /// The identity's hash is taken by another identity.
    Conflict,
}

/// How `update` went.
pub(crate) enum Update {
    Moved(Box<Stored>),
    Refused(Box<Stored>),
    Missing,
}

/// How `validate` went: the reason it is not valid (if any), the identity and the state.
pub(crate) enum Checked {
    Unknown,
    Found {
        reason: Option<crate::InvalidTokenReason>,
        user_id: String,
        action: String,
        key: String,
        state: State,
    },
}

/// The shortest native expiry of a key: every script checks expiry on the engine's clock (event time, as the
/// in-memory store does), so native TTLs only bound memory; the floor keeps replays and fake clocks, whose
/// time does not move with the server's, from losing keys that are still live by event time.
const NATIVE_TTL_FLOOR_MS: i64 = 60_000;

/// A native expiry (milliseconds, as text) for a key live `ms` by event time.
fn native(ms: i64) -> String {
    ms.max(NATIVE_TTL_FLOOR_MS).to_string()
}

fn text(v: &Value) -> Option<String> {
    match v {
        Value::BulkString(b) => String::from_utf8(b.clone()).ok(),
        Value::SimpleString(s) => Some(s.clone()),
        Value::Int(i) => Some(i.to_string()),
        Value::Okay => Some("OK".to_owned()),
        _ => None,
    }
}

/// A string reply's bytes, without copying them.
fn bytes(v: &Value) -> Option<&[u8]> {
    match v {
        Value::BulkString(b) => Some(b),
        Value::SimpleString(s) => Some(s.as_bytes()),
        _ => None,
    }
}

fn int(v: &Value) -> Option<i64> {
    match v {
        Value::Int(i) => Some(*i),
        Value::Double(d) => Some(*d as i64),
        other => {
            let t = std::str::from_utf8(bytes(other)?).ok()?;
            t.parse::<i64>()
                .ok()
                .or_else(|| t.parse::<f64>().ok().map(|f| f as i64))
        }
    }
}

fn array(v: &Value) -> &[Value] {
    match v {
        Value::Array(a) | Value::Set(a) => a,
        _ => &[],
    }
}

fn hex64(v: &str) -> Option<u64> {
    u64::from_str_radix(v, 16).ok()
}

fn hex128(v: &str) -> Option<u128> {
    u128::from_str_radix(v, 16).ok()
}

/// Appends the low `digits` hex digits of `v`, lower case and zero-padded: what `{v:0digits$x}` writes, without
/// the formatting machinery (a first decision builds about twenty keys).
fn push_hex(s: &mut String, v: u128, digits: usize) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for i in (0..digits.min(32)).rev() {
        s.push(char::from(HEX[((v >> (4 * i)) & 0xf) as usize]));
    }
}

/// `v`'s low `digits` hex digits, as [`push_hex`] writes them.
fn hex(v: u128, digits: usize) -> String {
    let mut s = String::with_capacity(digits);
    push_hex(&mut s, v, digits);
    s
}

/// `{prefix}:{<tag><hex>}`, with room for `room` more bytes.
fn tagged(prefix: &str, tag: char, v: u128, digits: usize, room: usize) -> String {
    let mut k = String::with_capacity(prefix.len() + digits + 4 + room);
    k.push_str(prefix);
    k.push_str(":{");
    k.push(tag);
    push_hex(&mut k, v, digits);
    k.push('}');
    k
}

/// The format of what the store keeps, recorded beside the shared keys: 2 keeps each action as one string
/// (1, unrecorded, kept hashes). An engine refuses a store of another format at `build`.
const STORE_FORMAT: u32 = 2;

/// How many keys [`RedisStore::user_keys`] gives: the action key and the user's seven.
const USER_KEYS: usize = 8;

fn broken(what: &str) -> StoreError {
    StoreError(format!("redis answered an unexpected {what}"))
}

/// `[member, score, …]` of hex members as (hash, score) pairs, oldest first.
fn hashed(v: &[Value]) -> Vec<(u64, i64)> {
    v.chunks(2)
        .filter_map(|c| {
            let m = std::str::from_utf8(bytes(c.first()?)?).ok()?;
            Some((hex64(m)?, int(c.get(1)?)?))
        })
        .collect()
}

/// The series times of `[member, score, …]`, sorted.
fn times(v: &[Value]) -> Vec<i64> {
    let mut t: Vec<i64> = v.chunks(2).filter_map(|c| int(c.get(1)?)).collect();
    t.sort_unstable();
    t
}

/// `count:last`.
fn count_last(v: &str) -> Option<(u64, i64)> {
    let (c, l) = v.split_once(':')?;
    Some((c.parse().ok()?, l.parse().ok()?))
}

fn identity(user_id: &str, action: &str, key: &str) -> u128 {
    crate::hash::hash_bytes(|h| {
        for part in [user_id, action, key] {
            h.extend_from_slice(&(part.len() as u32).to_le_bytes());
            h.extend_from_slice(part.as_bytes());
        }
    })
}

fn id_text(user_id: &str, action: &str, key: &str) -> String {
    serde_json::to_string(&[user_id, action, key]).unwrap_or_default()
}

fn parse_id(v: &str) -> Option<(String, String, String)> {
    let [u, a, k]: [String; 3] = serde_json::from_str(v).ok()?;
    Some((u, a, k))
}

fn state_code(s: State) -> String {
    s.to_u8().to_string()
}

fn parse_state(v: &Value) -> Option<State> {
    let n: u8 = text(v)?.parse().ok()?;
    State::ALL.into_iter().find(|s| s.to_u8() == n)
}

/// An action record as the scripts keep it: one string of `\n`-separated fields, `cr`, `lease`, `fp`, `id`
/// while it is claimed, then `st`, `su`, `th`, `te`, `tu` and `d` (the decision's JSON) once decided. No field
/// holds a raw newline (`id` and `d` are JSON).
struct Record<'a> {
    created: i64,
    /// The claimer's lease owner; empty once decided.
    lease: &'a str,
    fp: &'a str,
    id: &'a str,
    /// `st`, `su`, `d`.
    decided: Option<(&'a str, &'a str, &'a str)>,
}

impl<'a> Record<'a> {
    fn parse(v: &'a [u8]) -> Option<Self> {
        let mut f = std::str::from_utf8(v).ok()?.splitn(10, '\n');
        let created = f.next()?.parse().ok()?;
        let (lease, fp, id) = (f.next()?, f.next()?, f.next()?);
        let decided = match f.next() {
            Some(st) => {
                let su = f.next()?;
                let d = f.nth(3)?;
                Some((st, su, d))
            }
            None => None,
        };
        Some(Record {
            created,
            lease,
            fp,
            id,
            decided,
        })
    }

    /// The decided action it holds.
    fn stored(&self) -> Option<Stored> {
        let (st, su, d) = self.decided?;
        let (user_id, action, key) = parse_id(self.id)?;
        let n: u8 = st.parse().ok()?;
        Some(Stored {
            user_id,
            action,
            key,
            fingerprint: hex128(self.fp)?,
            created: self.created,
            state: State::ALL.into_iter().find(|s| s.to_u8() == n)?,
            state_updated: su.parse().unwrap_or(self.created),
            decided: serde_json::from_str(d).ok()?,
        })
    }
}

/// A stored action from `id, fp, cr, d, st, su` replies (the update script's).
fn stored(vals: &[Value]) -> Option<Stored> {
    let (user_id, action, key) = parse_id(&text(vals.first()?)?)?;
    let decided: Decided = serde_json::from_str(&text(vals.get(3)?)?).ok()?;
    let created = int(vals.get(2)?)?;
    Some(Stored {
        user_id,
        action,
        key,
        fingerprint: hex128(&text(vals.get(1)?)?)?,
        created,
        state: parse_state(vals.get(4)?)?,
        state_updated: vals.get(5).and_then(int).unwrap_or(created),
        decided,
    })
}

impl RedisStore {
    /// Connects, and agrees with every other engine on the store on the shared keys: the first engine's
    /// `keys` are kept, and every later engine's are replaced by them. Returns the keys to use.
    pub fn connect(
        settings: &StoreSettings,
        keys: EngineKeys,
        limits: HistoryLimits,
    ) -> Result<(Self, EngineKeys), StoreError> {
        let pool = Pool::new(
            &settings.nodes(),
            settings.cluster,
            settings.timeout,
            settings.connect_timeout,
        )?;
        let prefix = settings.key_prefix.clone();
        let shared_key = format!("{prefix}:{{g}}:keys");
        let mine: String = keys
            .shared_bytes()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        // The value is the keys in hex, then ` fp` and the fingerprint scheme, then ` store` and the store's
        // format: one `SET NX`, so the keys and what they were used with arrive together. A value of bare keys
        // was left by a riskgate from before the scheme was kept, one without a format by a riskgate whose
        // action records were hashes.
        let ours = crate::request::FINGERPRINT_SCHEME.to_string();
        let mut set = redis::cmd("SET");
        set.arg(&shared_key)
            .arg(format!("{mine} fp{ours} store{STORE_FORMAT}"))
            .arg("NX");
        let mut get = redis::cmd("GET");
        get.arg(&shared_key);
        let replies = pool.run_blocking(&[Op::Plain(set), Op::Plain(get)])?;
        let stored = replies
            .get(1)
            .and_then(text)
            .ok_or_else(|| broken("shared key"))?;
        let (theirs, scheme) = match stored.split_once(" fp") {
            Some((keys, scheme)) => (keys, Some(scheme)),
            None => (stored.as_str(), None),
        };
        let (scheme, format) = match scheme.map(|s| s.split_once(" store")) {
            Some(Some((scheme, format))) => (Some(scheme), Some(format)),
            Some(None) => (scheme, None),
            None => (None, None),
        };
        if scheme != Some(ours.as_str()) {
            return Err(StoreError(format!(
                "the Redis store under key prefix \"{prefix}\" holds actions fingerprinted by {}; this riskgate \
                 fingerprints with scheme {ours}, so every repeat of those actions would be refused as a \
                 conflict. Use a fresh `key_prefix` (or an emptied Redis), with every engine on it upgraded \
                 together",
                match scheme {
                    Some(s) => format!("scheme {}", crate::error::shorten(s)),
                    None => "an earlier riskgate (no scheme recorded)".to_owned(),
                }
            )));
        }
        let format_ours = STORE_FORMAT.to_string();
        if format != Some(format_ours.as_str()) {
            return Err(StoreError(format!(
                "the Redis store under key prefix \"{prefix}\" keeps its actions in {}; this riskgate keeps them \
                 in store format {STORE_FORMAT} and cannot read the others. Use a fresh `key_prefix` (or an \
                 emptied Redis), with every engine on it upgraded together",
                match format {
                    Some(f) => format!("store format {}", crate::error::shorten(f)),
                    None => "the format of an earlier riskgate (actions as hashes)".to_owned(),
                }
            )));
        }
        let mut bytes = [0u8; 24];
        for (i, b) in bytes.iter_mut().enumerate() {
            *b = theirs
                .get(2 * i..2 * i + 2)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| broken("shared key"))?;
        }
        let keys = keys.with_shared(&bytes);
        let scripts = Scripts::new();
        pool.load(&scripts.all())?;
        let mut owner = [0u8; 12];
        crate::hash::fill_random(&mut owner)
            .map_err(|_| StoreError("the random source failed".to_owned()))?;
        Ok((
            RedisStore {
                pool,
                nodes: settings.nodes(),
                cluster: settings.cluster,
                scripts,
                prefix,
                lease: settings.lease,
                owner: owner.iter().map(|b| format!("{b:02x}")).collect(),
                next: AtomicU64::new(0),
                hasher: Arc::new(History::new(limits, keys)),
                recent: Recent::new(),
            },
            keys,
        ))
    }

    /// The history that hashes with the shared seed (its tables stay empty).
    pub fn hasher(&self) -> &Arc<History> {
        &self.hasher
    }

    /// Round trips to Redis so far.
    pub fn round_trips(&self) -> u64 {
        self.pool.round_trips()
    }

    /// How many actions (decided or being decided) the store holds under this prefix, by `SCAN` of every
    /// node the url names: for tests and diagnostics, not the request path.
    pub fn count_actions(&self) -> Result<usize, StoreError> {
        let pattern = format!("{}:{{u*}}:a:*", self.prefix);
        let mut total = 0;
        for node in &self.nodes {
            let client =
                redis::Client::open(node.as_str()).map_err(|e| StoreError(e.to_string()))?;
            let mut con = client
                .get_connection_with_timeout(Duration::from_secs(2))
                .map_err(|e| StoreError(e.to_string()))?;
            let mut cursor: u64 = 0;
            loop {
                let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
                    .arg(cursor)
                    .arg("MATCH")
                    .arg(&pattern)
                    .arg("COUNT")
                    .arg(1000)
                    .query(&mut con)
                    .map_err(|e| StoreError(e.to_string()))?;
                total += keys.len();
                if next == 0 {
                    break;
                }
                cursor = next;
            }
        }
        Ok(total)
    }

    /// `{prefix}:{<tag><hex>}`: the hash-tagged part every key of one user, IP, device, token or value shares.
    fn tagged(&self, tag: char, v: u128, digits: usize, room: usize) -> String {
        tagged(&self.prefix, tag, v, digits, room)
    }

    /// `t` then `suffix`, in one allocation.
    fn suffixed(t: &str, suffix: &str) -> String {
        let mut k = String::with_capacity(t.len() + suffix.len());
        k.push_str(t);
        k.push_str(suffix);
        k
    }

    /// A series key: `t:s<n>:<action hex>`.
    fn series_key(t: &str, series: u8, action: u64) -> String {
        let mut k = String::with_capacity(t.len() + 20);
        k.push_str(t);
        k.push_str(":s");
        k.push(char::from(b'0' + series % 10));
        k.push(':');
        push_hex(&mut k, u128::from(action), 16);
        k
    }

    fn action_key(&self, user: u64, identity: u128) -> String {
        let mut k = self.tagged('u', u128::from(user), 16, 35);
        k.push_str(":a:");
        push_hex(&mut k, identity, 32);
        k
    }

    /// The action key and the user's keys after it: series, devices of the user, known devices, IPs, countries,
    /// location, rba counts.
    fn user_keys(&self, user: u64, identity: u128, action: u64) -> Vec<String> {
        let t = self.tagged('u', u128::from(user), 16, 0);
        let mut keys = Vec::with_capacity(USER_KEYS + 4);
        keys.push(self.action_key(user, identity));
        keys.push(Self::series_key(&t, 1, action));
        for suffix in [":z6", ":kd", ":ki", ":kc", ":kl", ":kr"] {
            keys.push(Self::suffixed(&t, suffix));
        }
        keys
    }

    /// An IP's (`'i'`, series 2, set 4) or device's (`'d'`, 3, 5) series and set keys.
    fn subject_keys(
        &self,
        tag: char,
        subject: u64,
        series: u8,
        set: u8,
        action: u64,
    ) -> [String; 2] {
        let t = self.tagged(tag, u128::from(subject), 16, 0);
        let mut z = Self::suffixed(&t, ":z");
        z.push(char::from(b'0' + set % 10));
        [Self::series_key(&t, series, action), z]
    }

    fn token_key(&self, token: &str) -> String {
        self.tagged('t', xxhash_rust::xxh3::xxh3_128(token.as_bytes()), 32, 0)
    }

    fn value_key(&self, v: u64) -> String {
        self.tagged('r', u128::from(v), 16, 0)
    }

    fn total_key(&self) -> String {
        format!("{}:{{g}}:rn", self.prefix)
    }

    /// Round trip 1 of a first decision: claims the identity (or finds it) and reads the history.
    pub async fn claim(&self, io: Io, c: &ClaimReq<'_>) -> Result<Claim, StoreError> {
        let identity = identity(c.user_id, c.action, c.key);
        let owner = format!(
            "{}:{}",
            self.owner,
            self.next.fetch_add(1, Ordering::Relaxed)
        );
        let lo = c.now.saturating_sub(c.horizon_ms).to_string();
        let hi = c.now.to_string();
        let kept = |bit: u8| c.horizon_ms > 0 && c.windowed & (1 << bit) != 0;
        // The windows a read is counted over, when the store counts (every window of the ruleset is literal).
        let windows = |bit: u8| -> Option<Vec<i64>> {
            c.windows
                .map(|w| w.iter().filter(|p| p.0 == bit).map(|p| p.1).collect())
        };
        let mut keys = self.user_keys(c.keys.user, identity, c.keys.action);
        let mut args = vec![
            id_text(c.user_id, c.action, c.key),
            hex(c.fingerprint, 32),
            hi.clone(),
            c.ttl_ms.to_string(),
            self.lease.as_millis().to_string(),
            owner.clone(),
        ];
        // A read as the scripts' `read` takes it: '0' none, '1' lo hi (the members), '2' hi n lo… (counts).
        let read_args = |bit: u8, args: &mut Vec<String>| match (kept(bit), windows(bit)) {
            (false, _) => args.push("0".to_owned()),
            (true, Some(ws)) => {
                args.extend(["2".to_owned(), hi.clone(), ws.len().to_string()]);
                args.extend(ws.iter().map(|w| c.now.saturating_sub(*w).to_string()));
            }
            (true, None) => args.extend(["1".to_owned(), lo.clone(), hi.clone()]),
        };
        for bit in [1u8, 6] {
            read_args(bit, &mut args);
        }
        let flag = |on: bool| if on { "1" } else { "0" }.to_owned();
        use crate::signals::catalogue::{KNOWN_DEVICES, KNOWN_IPS};
        let places = c.places || c.uses_rba;
        args.push(c.now.saturating_sub(c.known_for_ms).to_string());
        for (item, asked) in c.items.iter().zip([
            c.known & KNOWN_DEVICES != 0,
            c.known & KNOWN_IPS != 0,
            places,
        ]) {
            args.push(match item {
                Some(v) if asked => hex(u128::from(*v), 16),
                _ => String::new(),
            });
        }
        args.extend([flag(places), flag(c.uses_rba)]);
        // The IP's and device's reads: off-cluster in the claim script (so a repeat, which the script answers
        // before any read, makes none); on a cluster, plain commands, each of one key, in the same pipeline.
        let subjects = [('i', c.keys.ip, 2u8, 4u8), ('d', c.keys.device, 3, 5)].map(
            |(tag, subject, series, set)| {
                subject.map(|s| (s, self.subject_keys(tag, s, series, set, c.keys.action)))
            },
        );
        let mut subject_reads: Vec<(u8, &str)> = Vec::new();
        for (sub, series, set) in [(&subjects[0], 2u8, 4u8), (&subjects[1], 3, 5)] {
            let Some((_, [sk, zk])) = sub else { continue };
            for (bit, key) in [(series, sk), (set, zk)] {
                if kept(bit) {
                    subject_reads.push((bit, key));
                }
            }
        }
        // Where each subject read's reply is: in the claim's reply (its index there), or a plain command's (the
        // index of its first reply in the pipeline).
        let mut subject_at: Vec<Sourced> = Vec::new();
        let mut plain: Vec<Op<'_>> = Vec::new();
        if self.cluster {
            args.push("0".to_owned());
            for (bit, key) in &subject_reads {
                subject_at.push(Sourced::Plain(1 + plain.len()));
                match windows(*bit) {
                    Some(ws) => {
                        for w in ws {
                            let mut cmd = redis::cmd("ZCOUNT");
                            cmd.arg(key)
                                .arg(format!("({}", c.now.saturating_sub(w)))
                                .arg(&hi);
                            plain.push(Op::Plain(cmd));
                        }
                    }
                    None => {
                        let mut cmd = redis::cmd("ZRANGEBYSCORE");
                        cmd.arg(key)
                            .arg(format!("({lo}"))
                            .arg(&hi)
                            .arg("WITHSCORES");
                        plain.push(Op::Plain(cmd));
                    }
                }
            }
        } else {
            args.push(subject_reads.len().to_string());
            for (j, (bit, key)) in subject_reads.iter().enumerate() {
                subject_at.push(Sourced::Claim(CLAIM_SUBJECTS_AT + j));
                keys.push((*key).to_owned());
                read_args(*bit, &mut args);
            }
        }
        let mut ops = vec![Op::Script {
            script: &self.scripts.claim,
            keys,
            args,
        }];
        ops.extend(plain);
        let rba_at = ops.len();
        if !c.rba.is_empty() {
            for v in c.rba {
                let mut cmd = redis::cmd("GET");
                cmd.arg(self.value_key(*v));
                ops.push(Op::Plain(cmd));
            }
            let mut cmd = redis::cmd("GET");
            cmd.arg(self.total_key());
            ops.push(Op::Plain(cmd));
        }
        let replies = self.pool.run(io, &ops).await?;
        let first = replies.first().map(array).unwrap_or(&[]);
        let status = first.first().and_then(text).unwrap_or_default();
        match status.as_str() {
            "held" => {
                let held = first.get(1).and_then(bytes).and_then(Record::parse);
                let Some(held) = held else {
                    return Err(broken("action"));
                };
                if held.id != id_text(c.user_id, c.action, c.key) {
                    return Ok(Claim::Conflict);
                }
                if held.decided.is_none() {
                    return Ok(Claim::Pending(hex128(held.fp).unwrap_or(0)));
                }
                let Some(mut s) = held.stored() else {
                    return Err(broken("action"));
                };
                s.state_updated = s.created;
                self.recent
                    .note(identity, s.created.saturating_add(c.ttl_ms));
                return Ok(Claim::Decided(Box::new(s)));
            }
            "claimed" => {}
            _ => return Err(broken("claim")),
        }
        let lists = lists(first.get(1..).unwrap_or(&[])).ok_or_else(|| broken("claim"))?;
        let get = |i: usize| lists.get(i).copied().unwrap_or(&[]);
        let mut f = Fetched::default();
        for (i, bit) in [(0, 1u8), (1, 6)] {
            match windows(bit) {
                Some(ws) if kept(bit) => {
                    for (w, n) in ws.into_iter().zip(get(i)) {
                        f.counts.push((bit, w, int(n).unwrap_or(0)));
                    }
                }
                _ if bit == 1 => f.series[0] = times(get(i)),
                _ => f.sets[2] = hashed(get(i)),
            }
        }
        for (k, slot) in f.known.iter_mut().enumerate() {
            *slot = hashed(get(2 + k));
        }
        let loc = get(5);
        let lt = |i: usize| loc.get(i).and_then(text);
        if let (Some(lat), Some(lon), Some(at), Some(ip)) = (lt(0), lt(1), lt(2), lt(3)) {
            if let (Ok(lat), Ok(lon), Ok(at_ms), Some(ip)) =
                (lat.parse(), lon.parse(), at.parse(), hex64(&ip))
            {
                f.location = Some(Located {
                    lat,
                    lon,
                    at_ms,
                    ip,
                    country: lt(4).as_deref().and_then(CountryCode::new),
                });
            }
        }
        for (field, value) in pairs_text(get(6)) {
            if field == "n" {
                f.rba_user_actions = value.parse().unwrap_or(0);
            } else if let (Some(v), Some((count, last))) = (hex64(&field), count_last(&value)) {
                f.rba_user.push((v, count, last));
            }
        }
        for ((bit, _), at) in subject_reads.iter().zip(subject_at) {
            let bit = *bit;
            if let Some(ws) = windows(bit) {
                for (j, w) in ws.into_iter().enumerate() {
                    let n = match at {
                        Sourced::Claim(i) => get(i).get(j).and_then(int),
                        Sourced::Plain(i) => replies.get(i + j).and_then(int),
                    };
                    f.counts.push((bit, w, n.unwrap_or(0)));
                }
                continue;
            }
            let r = match at {
                Sourced::Claim(i) => get(i),
                Sourced::Plain(i) => replies.get(i).map(array).unwrap_or(&[]),
            };
            match bit {
                2 | 3 => {
                    if let Some(slot) = f.series.get_mut(usize::from(bit) - 1) {
                        *slot = times(r);
                    }
                }
                _ => {
                    if let Some(slot) = f.sets.get_mut(usize::from(bit) - 4) {
                        *slot = hashed(r);
                    }
                }
            }
        }
        if !c.rba.is_empty() {
            for (j, v) in c.rba.iter().enumerate() {
                if let Some((count, last)) = replies
                    .get(rba_at + j)
                    .and_then(text)
                    .and_then(|t| count_last(&t))
                {
                    f.rba_all.push((*v, count, last));
                }
            }
            f.rba_all_actions = replies
                .get(rba_at + c.rba.len())
                .and_then(int)
                .map_or(0, |n| n.max(0) as u64);
        }
        // The user's keys go back to the ticket for the commit (the subject keys after them are in `subjects`).
        let mut keys = match ops.into_iter().next() {
            Some(Op::Script { keys, .. }) => keys,
            _ => Vec::new(),
        };
        keys.truncate(USER_KEYS);
        Ok(Claim::Claimed(
            Ticket {
                keys,
                keys_for: (c.keys.user, c.keys.action),
                subjects,
                owner,
                identity,
            },
            Box::new(f),
        ))
    }

    /// The arguments of a [`KnownWrite`], as the scripts' `know` reads them.
    fn know_args(&self, k: &KnownWrite, known_for_ms: i64, args: &mut Vec<String>) {
        let at = k.at_ms.to_string();
        args.extend([
            at.clone(),
            k.at_ms.saturating_sub(known_for_ms).to_string(),
            native(known_for_ms),
            MAX_KNOWN.to_string(),
            MAX_RBA_VALUES.to_string(),
        ]);
        for item in [k.device, k.ip, k.country] {
            args.push(item.map_or_else(String::new, |v| hex(u128::from(v), 16)));
        }
        match &k.location {
            Some(l) => args.extend([
                "1".to_owned(),
                l.lat.to_string(),
                l.lon.to_string(),
                hex(u128::from(l.ip), 16),
                l.country
                    .map_or_else(String::new, |c| c.as_str().to_owned()),
            ]),
            None => args.push("0".to_owned()),
        }
        args.push(k.rba.len().to_string());
        args.extend(k.rba.iter().map(|v| hex(u128::from(*v), 16)));
    }

    /// The population side of a known write: one count per value and the total.
    fn population_ops<'a>(&'a self, k: &KnownWrite, known_for_ms: i64, ops: &mut Vec<Op<'a>>) {
        if k.rba.is_empty() {
            return;
        }
        for v in &k.rba {
            ops.push(Op::Script {
                script: &self.scripts.population,
                keys: vec![self.value_key(*v)],
                args: vec![k.at_ms.to_string(), native(known_for_ms)],
            });
        }
        let mut incr = redis::cmd("INCR");
        incr.arg(self.total_key());
        ops.push(Op::Plain(incr));
    }

    /// Round trip 2 of a first decision: commits it (if the claim still holds) with its history writes.
    /// `false` when the lease ran out and another caller may have decided the identity.
    #[allow(clippy::too_many_arguments)]
    pub async fn commit(
        &self,
        io: Io,
        mut ticket: Ticket,
        decided: &Decided,
        now: i64,
        ttl_ms: i64,
        token_ttl_ms: i64,
        writes: &Writes,
        limits: &HistoryLimits,
    ) -> Result<bool, StoreError> {
        let identity = ticket.identity;
        let json = serde_json::to_string(decided).map_err(|e| StoreError(e.to_string()))?;
        let token_hash = decided
            .token
            .as_deref()
            .map(|t| hex(xxhash_rust::xxh3::xxh3_128(t.as_bytes()), 32));
        // The decided record's fields after the claim's (`cr`, `lease`, `fp`, `id`): st, su, th, te, tu, d.
        let (th, te) = match token_hash {
            Some(h) => (h, decided.token_expires.to_string()),
            None => (String::new(), String::new()),
        };
        let mut decision = String::with_capacity(json.len() + th.len() + 48);
        for field in [
            state_code(decided.outcome).as_str(),
            &now.to_string(),
            &th,
            &te,
            "",
        ] {
            decision.push_str(field);
            decision.push('\n');
        }
        decision.push_str(&json);
        let mut args = vec![ticket.owner.clone(), decision, native(ttl_ms)];
        let cap = limits.max_per_key.max(1).to_string();
        let mut member = hex(ticket.identity, 32);
        member.push(':');
        member.push_str(&now.to_string());
        // Each subject's series and set keys and its `record` arguments.
        let mut subjects: Vec<([String; 2], Vec<String>)> = Vec::new();
        match writes.record {
            Some((keys, at, horizon, kept)) if horizon.ms() > 0 => {
                let at_s = at.ms().to_string();
                let cutoff = at.ms().saturating_sub(horizon.ms()).to_string();
                let ttl = native(horizon.ms());
                let section = |on: bool, m: String, args: &mut Vec<String>| {
                    if on {
                        args.extend([
                            "1".to_owned(),
                            m,
                            at_s.clone(),
                            cutoff.clone(),
                            cap.clone(),
                            ttl.clone(),
                        ]);
                    } else {
                        args.push("0".to_owned());
                    }
                };
                let bit = |b: u8| kept & (1 << b) != 0;
                section(bit(1), member.clone(), &mut args);
                section(
                    bit(6) && keys.device.is_some(),
                    keys.device
                        .map_or_else(String::new, |d| hex(u128::from(d), 16)),
                    &mut args,
                );
                for (tag, subject, series, set) in
                    [('i', keys.ip, 2u8, 4u8), ('d', keys.device, 3, 5)]
                {
                    let Some(s) = subject else { continue };
                    if !bit(series) && !bit(set) {
                        continue;
                    }
                    let mut a = Vec::new();
                    section(bit(series), member.clone(), &mut a);
                    section(bit(set), hex(u128::from(keys.user), 16), &mut a);
                    // The claim's keys when they are this subject's (they always are: one request's keys).
                    let same_action = ticket.keys_for.1 == keys.action;
                    let claimed = ticket
                        .subjects
                        .get_mut(usize::from(tag == 'd'))
                        .and_then(|k| k.take_if(|(id, _)| *id == s && same_action));
                    let sk = match claimed {
                        Some((_, sk)) => sk,
                        None => self.subject_keys(tag, s, series, set, keys.action),
                    };
                    subjects.push((sk, a));
                }
            }
            _ => args.extend(["0".to_owned(), "0".to_owned()]),
        }
        let mut ops = Vec::new();
        match &writes.known {
            Some(k) => {
                args.push("1".to_owned());
                self.know_args(k, limits.known_for_ms, &mut args);
            }
            None => args.push("0".to_owned()),
        }
        // The claim's keys, unless the record is another user's or action's (it never is: one request's keys).
        let mut keys = match writes.record.map(|r| r.0) {
            Some(k) if (k.user, k.action) != ticket.keys_for => {
                let mut fresh = self.user_keys(k.user, ticket.identity, k.action);
                if let (Some(f), Some(a)) = (fresh.first_mut(), ticket.keys.first()) {
                    f.clone_from(a);
                }
                fresh
            }
            _ => std::mem::take(&mut ticket.keys),
        };
        let token_target = decided.token.as_ref().and_then(|_| keys.first().cloned());
        let mut subject_ops: Vec<Op<'_>> = Vec::new();
        if self.cluster {
            args.push("0".to_owned());
            subject_ops.extend(subjects.into_iter().map(|(k, a)| Op::Script {
                script: &self.scripts.subject,
                keys: k.to_vec(),
                args: a,
            }));
        } else {
            args.push(subjects.len().to_string());
            for (k, a) in subjects {
                keys.extend(k);
                args.extend(a);
            }
        }
        ops.push(Op::Script {
            script: &self.scripts.commit,
            keys,
            args,
        });
        if let (Some(t), Some(target)) = (decided.token.as_deref(), token_target) {
            let mut set = redis::cmd("SET");
            set.arg(self.token_key(t))
                .arg(target)
                .arg("PX")
                .arg(native(token_ttl_ms.min(ttl_ms)));
            ops.push(Op::Plain(set));
        }
        ops.extend(subject_ops);
        if let Some(k) = &writes.known {
            self.population_ops(k, limits.known_for_ms, &mut ops);
        }
        let replies = self.pool.run(io, &ops).await?;
        let committed = replies.first().and_then(int) == Some(1);
        if committed {
            self.recent.note(identity, now.saturating_add(ttl_ms));
        }
        Ok(committed)
    }

    /// Gives up a claim (its decision could not be completed): the next call decides again.
    pub async fn release(&self, io: Io, ticket: &Ticket) -> Result<(), StoreError> {
        self.pool
            .run(
                io,
                &[Op::Script {
                    script: &self.scripts.release,
                    keys: vec![ticket.action_key().to_owned()],
                    args: vec![ticket.owner.clone()],
                }],
            )
            .await
            .map(|_| ())
    }

    /// The action stored for an identity: `Ok(None)` when there is none (or it is still being decided, or
    /// expired at `now`); one round trip.
    pub async fn get(
        &self,
        io: Io,
        user_id: &str,
        action: &str,
        key: &str,
        now: i64,
        ttl_ms: i64,
    ) -> Result<Option<Stored>, StoreError> {
        self.get_of(
            io,
            identity(user_id, action, key),
            user_id,
            action,
            key,
            now,
            ttl_ms,
        )
        .await
    }

    /// A repeat of an identity this engine saw decided (claimed and committed, or found decided, here): its
    /// action, by one `GET`, without the claim's history reads. `Ok(None)` without a round trip when the
    /// identity is not hinted, and `Ok(None)` after the `GET` when Redis no longer holds it decided and live:
    /// either way the caller claims, as it would without a hint.
    pub async fn repeat(
        &self,
        io: Io,
        user_id: &str,
        action: &str,
        key: &str,
        now: i64,
        ttl_ms: i64,
    ) -> Result<Option<Stored>, StoreError> {
        let identity = identity(user_id, action, key);
        if !self.recent.holds(identity, now) {
            return Ok(None);
        }
        self.get_of(io, identity, user_id, action, key, now, ttl_ms)
            .await
    }

    /// [`RedisStore::get`] of an identity already hashed.
    #[allow(clippy::too_many_arguments)]
    async fn get_of(
        &self,
        io: Io,
        identity: u128,
        user_id: &str,
        action: &str,
        key: &str,
        now: i64,
        ttl_ms: i64,
    ) -> Result<Option<Stored>, StoreError> {
        let user = self.hasher.hash(b'u', user_id);
        let mut cmd = redis::cmd("GET");
        cmd.arg(self.action_key(user, identity));
        let replies = self.pool.run(io, &[Op::Plain(cmd)]).await?;
        let held = replies.first().and_then(bytes).and_then(Record::parse);
        let Some(s) = held.and_then(|r| r.stored()) else {
            return Ok(None);
        };
        let live = s.created.saturating_add(ttl_ms) > now;
        Ok((live && s.user_id == user_id && s.action == action && s.key == key).then_some(s))
    }

    /// Waits for another caller's decision on an identity: polls until it is decided, or the claim is gone
    /// (its lease ran out: `Ok(None)`, the caller claims again), at most a lease and a timeout.
    pub async fn wait(
        &self,
        io: Io,
        user_id: &str,
        action: &str,
        key: &str,
        now: i64,
        ttl_ms: i64,
    ) -> Result<Option<Stored>, StoreError> {
        let user = self.hasher.hash(b'u', user_id);
        let identity = identity(user_id, action, key);
        let action_key = self.action_key(user, identity);
        let deadline = Instant::now() + self.lease + Duration::from_millis(50);
        let mut pause = Duration::from_micros(200);
        loop {
            let mut cmd = redis::cmd("GET");
            cmd.arg(&action_key);
            let replies = self.pool.run(io, &[Op::Plain(cmd)]).await?;
            let held = replies.first().and_then(bytes).and_then(Record::parse);
            if let Some(s) = held.as_ref().and_then(Record::stored) {
                self.recent.note(identity, s.created.saturating_add(ttl_ms));
                return Ok(Some(s));
            }
            // A claim holds a lease owner; a commit empties it.
            let claimed = held.as_ref().is_some_and(|r| !r.lease.is_empty());
            let live = held
                .as_ref()
                .is_some_and(|r| r.created.saturating_add(ttl_ms) > now);
            if !claimed || !live {
                return Ok(None);
            }
            if Instant::now() >= deadline {
                return Err(StoreError(
                    "another instance's decision did not arrive within the lease".to_owned(),
                ));
            }
            conn::pause(io, pause).await;
            pause = (pause * 2).min(Duration::from_millis(5));
        }
    }

    /// Moves a decided action to `to` from any of `from`; one round trip.
    #[allow(clippy::too_many_arguments)]
    pub async fn update(
        &self,
        io: Io,
        user_id: &str,
        action: &str,
        key: &str,
        to: State,
        now: i64,
        ttl_ms: i64,
    ) -> Result<Update, StoreError> {
        let user = self.hasher.hash(b'u', user_id);
        let froms: String = State::ALL
            .into_iter()
            .filter(|s| s.allowed_moves().contains(&to))
            .map(|s| format!(",{}", state_code(s)))
            .collect::<String>()
            + ",";
        let replies = self
            .pool
            .run(
                io,
                &[Op::Script {
                    script: &self.scripts.update,
                    keys: vec![self.action_key(user, identity(user_id, action, key))],
                    args: vec![now.to_string(), ttl_ms.to_string(), state_code(to), froms],
                }],
            )
            .await?;
        let r = replies.first().map(array).unwrap_or(&[]);
        let status = r.first().and_then(text).unwrap_or_default();
        let rest = r.get(1..).unwrap_or(&[]);
        let s = stored(rest).filter(|s| s.user_id == user_id && s.action == action && s.key == key);
        Ok(match (status.as_str(), s) {
            ("moved", Some(s)) => Update::Moved(Box::new(s)),
            ("refused", Some(s)) => Update::Refused(Box::new(s)),
            _ => Update::Missing,
        })
    }

    /// Writes what a verified action makes known (after a successful challenge or review); one round trip.
    pub async fn know(
        &self,
        io: Io,
        k: &KnownWrite,
        limits: &HistoryLimits,
    ) -> Result<(), StoreError> {
        let mut keys = self.user_keys(k.user, 0, 0);
        // The known keys only: devices, IPs, countries, location, rba counts.
        keys.drain(..3);
        let mut args = Vec::new();
        self.know_args(k, limits.known_for_ms, &mut args);
        let mut ops = vec![Op::Script {
            script: &self.scripts.know,
            keys,
            args,
        }];
        self.population_ops(k, limits.known_for_ms, &mut ops);
        self.pool.run(io, &ops).await.map(|_| ())
    }

    /// Checks a token (and uses it up when valid): one round trip to find its action, one to check it.
    pub async fn validate(
        &self,
        io: Io,
        token: &str,
        now: i64,
        ttl_ms: i64,
    ) -> Result<Checked, StoreError> {
        let mut get = redis::cmd("GET");
        get.arg(self.token_key(token));
        let replies = self.pool.run(io, &[Op::Plain(get)]).await?;
        let Some(action_key) = replies.first().and_then(text) else {
            return Ok(Checked::Unknown);
        };
        if !action_key.starts_with(&self.prefix) {
            return Ok(Checked::Unknown);
        }
        let th = hex(xxhash_rust::xxh3::xxh3_128(token.as_bytes()), 32);
        let replies = self
            .pool
            .run(
                io,
                &[Op::Script {
                    script: &self.scripts.validate,
                    keys: vec![action_key],
                    args: vec![
                        th,
                        now.to_string(),
                        ttl_ms.to_string(),
                        state_code(State::ChallengeSucceeded),
                    ],
                }],
            )
            .await?;
        let r = replies.first().map(array).unwrap_or(&[]);
        let status = r.first().and_then(text).unwrap_or_default();
        use crate::InvalidTokenReason as R;
        let reason = match status.as_str() {
            "valid" => None,
            "expired" => Some(R::Expired),
            "not_succeeded" => Some(R::NotSucceeded),
            "used" => Some(R::AlreadyUsed),
            _ => return Ok(Checked::Unknown),
        };
        let id = r.get(1).and_then(text).and_then(|i| parse_id(&i));
        let state = r.get(2).and_then(parse_state);
        match (id, state) {
            (Some((user_id, action, key)), Some(state)) => Ok(Checked::Found {
                reason,
                user_id,
                action,
                key,
                state,
            }),
            _ => Err(broken("token check")),
        }
    }
}

/// `[field, value, …]` (HGETALL in a script) as text pairs.
fn pairs_text(v: &[Value]) -> Vec<(String, String)> {
    v.chunks(2)
        .filter_map(|c| Some((text(c.first()?)?, text(c.get(1)?)?)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn push_hex_writes_what_format_writes() {
        let mut values = vec![0u128, 1, 0xf, 0x10, u128::from(u64::MAX), u128::MAX];
        let mut x = 0x9e37_79b9_7f4a_7c15_f39c_c060_5ced_c834_u128;
        for _ in 0..200 {
            x = x.wrapping_mul(0x2545_f491_4f6c_dd1d).rotate_left(17) ^ 0x5851;
            values.push(x);
            values.push(x >> 64);
        }
        for v in values {
            let mut s = String::new();
            push_hex(&mut s, v, 32);
            assert_eq!(s, format!("{v:032x}"));
            let mut s = String::new();
            push_hex(&mut s, v, 16);
            assert_eq!(
                s,
                format!("{:016x}", v as u64),
                "the low 16 digits of {v:x}"
            );
        }
    }

    #[test]
    fn records_read_back_as_the_scripts_write_them() {
        let id = id_text("u\n1", "signIn", "k");
        assert!(!id.contains('\n'), "{id}");
        let fp = hex(7, 32);
        // A claim: cr, lease, fp, id.
        let claim = format!("1700000000000\nowner:1\n{fp}\n{id}");
        let r = Record::parse(claim.as_bytes()).unwrap();
        assert_eq!(
            (r.created, r.lease, r.fp, r.id),
            (1700000000000, "owner:1", fp.as_str(), id.as_str())
        );
        assert!(r.decided.is_none() && r.stored().is_none());
        // Decided (the lease emptied): st, su, th, te, tu, then the decision's JSON.
        let d = r#"{"o":"ALLOW"}"#;
        let decided = format!("1700000000000\n\n{fp}\n{id}\n2\n1700000000005\nab\n9\n\n{d}");
        let r = Record::parse(decided.as_bytes()).unwrap();
        assert_eq!((r.lease, r.decided), ("", Some(("2", "1700000000005", d))));
        // Whatever else a key may hold is no record, and nothing panics.
        for bad in ["", "x", "1\n2", "abc\nl\nf\ni", "1\n\nf\ni\n2"] {
            let r = Record::parse(bad.as_bytes());
            assert!(r.as_ref().and_then(Record::stored).is_none(), "{bad}");
        }
        assert!(Record::parse(&[0xff, b'\n']).is_none());
    }

    #[test]
    fn keys_keep_their_layout() {
        let t = tagged("rg", 'u', 0xab, 16, 0);
        assert_eq!(t, "rg:{u00000000000000ab}");
        assert_eq!(
            RedisStore::series_key(&t, 1, 0x1234),
            "rg:{u00000000000000ab}:s1:0000000000001234"
        );
        assert_eq!(RedisStore::suffixed(&t, ":kd"), "rg:{u00000000000000ab}:kd");
        assert_eq!(
            tagged("p:q", 't', u128::MAX, 32, 0),
            format!("p:q:{{t{:032x}}}", u128::MAX)
        );
    }
}
