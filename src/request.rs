//! The request wire types ([`TrackRequest`], [`TrackAttributes`], [`CustomValue`]) and their validation.
//!
//! Field names follow Authsignal's `track` JSON (camelCase). Validation bounds every field, so nothing a caller
//! sends can grow the engine's memory beyond what is documented here.

use serde::{de, Deserialize, Deserializer, Serialize};
use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;

use crate::error::{shorten, TrackError};
use crate::hash::{Absorb, FingerprintKey, Sip13};

/// The longest `userId`, `idempotencyKey`, `deviceId`, `username` and `email` accepted, in bytes.
pub const MAX_ID_BYTES: usize = 255;
/// The longest `userAgent` and `redirectUrl` accepted, in bytes.
pub const MAX_LONG_FIELD_BYTES: usize = 2048;
/// The longest `phoneNumber` accepted, in bytes.
pub const MAX_PHONE_BYTES: usize = 32;
/// The most entries `custom` may hold.
pub const MAX_CUSTOM_ENTRIES: usize = 64;
/// The longest `custom` key accepted, in bytes.
pub const MAX_CUSTOM_KEY_BYTES: usize = 64;
/// The longest `custom` string value accepted, in bytes.
pub const MAX_CUSTOM_STRING_BYTES: usize = 1024;

/// One call of [`Engine::track`](crate::Engine::track): who did what, with which attributes.
///
/// ```
/// let req: riskgate::TrackRequest = serde_json::from_str(
///     r#"{"userId":"u1","action":"signIn","attributes":{"ipAddress":"203.0.113.7"}}"#,
/// ).unwrap();
/// assert_eq!(req.attributes.ip_address.as_deref(), Some("203.0.113.7"));
/// ```
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TrackRequest {
    /// The user's id in the application: 1 to 255 bytes, no control characters.
    pub user_id: String,
    /// The action code: 1 to 64 of `[a-zA-Z0-9_-]` (`signIn`, `withdraw-funds`).
    pub action: String,
    /// What is known about the action.
    #[serde(default)]
    pub attributes: TrackAttributes,
}

/// The attributes of a tracked action. Every field is optional.
///
/// Two calls with the same user, action and `idempotency_key` are the same action: the second must carry the
/// same attributes (see [`Engine::track`](crate::Engine::track)).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TrackAttributes {
    /// Identifies the action together with the user and action code; generated (UUID v4) when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<String>,
    /// The device's id, as the application knows it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_id: Option<String>,
    /// The client's IP address, IPv4 or IPv6.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip_address: Option<String>,
    /// The client's `User-Agent` header (may be empty).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_agent: Option<String>,
    /// Where the client goes after a challenge; carried into the challenge `url`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redirect_url: Option<String>,
    /// The user's email address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    /// The user's phone number.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phone_number: Option<String>,
    /// The user's username.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    /// Application-specific values rules can read as `custom.<key>`.
    #[serde(
        default,
        skip_serializing_if = "BTreeMap::is_empty",
        deserialize_with = "unique_custom"
    )]
    pub custom: BTreeMap<String, CustomValue>,
}

/// A value in [`TrackAttributes::custom`]: a string, a number or a bool.
///
/// Rules see an `Int` as a Rhai integer, a `Float` as a float, and so on. JSON integers become `Int`; other JSON
/// numbers become `Float`. Objects, arrays and `null` are refused.
#[derive(Debug, Clone, PartialEq)]
pub enum CustomValue {
    /// A string.
    String(String),
    /// An integer.
    Int(i64),
    /// A floating-point number (must be finite).
    Float(f64),
    /// A bool.
    Bool(bool),
}

impl From<&str> for CustomValue {
    fn from(v: &str) -> Self {
        CustomValue::String(v.to_owned())
    }
}
impl From<String> for CustomValue {
    fn from(v: String) -> Self {
        CustomValue::String(v)
    }
}
impl From<i64> for CustomValue {
    fn from(v: i64) -> Self {
        CustomValue::Int(v)
    }
}
impl From<f64> for CustomValue {
    fn from(v: f64) -> Self {
        CustomValue::Float(v)
    }
}
impl From<bool> for CustomValue {
    fn from(v: bool) -> Self {
        CustomValue::Bool(v)
    }
}

/// Integers that always fit in an `i64` become [`CustomValue::Int`].
macro_rules! from_narrow_int {
    ($($t:ty),*) => {$(
        impl From<$t> for CustomValue {
            fn from(v: $t) -> Self {
                CustomValue::Int(i64::from(v))
            }
        }
    )*};
}
from_narrow_int!(i8, i16, i32, u8, u16, u32);

/// Integers that may not fit in an `i64`: [`CustomValue::Int`] when they fit, otherwise a
/// [`CustomValue::Float`] of the same magnitude (rounded to the nearest `f64`), as JSON integers beyond `i64`
/// are read. A `u64` amount in cents fits as an `Int` up to 2^63 - 1.
macro_rules! from_wide_int {
    ($($t:ty),*) => {$(
        impl From<$t> for CustomValue {
            fn from(v: $t) -> Self {
                i64::try_from(v).map_or(CustomValue::Float(v as f64), CustomValue::Int)
            }
        }
    )*};
}
from_wide_int!(u64, usize, isize, i128, u128);

impl From<f32> for CustomValue {
    fn from(v: f32) -> Self {
        CustomValue::Float(f64::from(v))
    }
}
impl From<char> for CustomValue {
    fn from(v: char) -> Self {
        CustomValue::String(v.to_string())
    }
}

impl Serialize for CustomValue {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            CustomValue::String(v) => s.serialize_str(v),
            CustomValue::Int(v) => s.serialize_i64(*v),
            CustomValue::Float(v) => s.serialize_f64(*v),
            CustomValue::Bool(v) => s.serialize_bool(*v),
        }
    }
}

impl<'de> Deserialize<'de> for CustomValue {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> de::Visitor<'de> for V {
            type Value = CustomValue;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string, number or bool")
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<CustomValue, E> {
                Ok(CustomValue::Bool(v))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<CustomValue, E> {
                Ok(CustomValue::Int(v))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<CustomValue, E> {
                // Integers beyond i64 keep their magnitude as a float rather than failing.
                Ok(i64::try_from(v).map_or(CustomValue::Float(v as f64), CustomValue::Int))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<CustomValue, E> {
                Ok(CustomValue::Float(v))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<CustomValue, E> {
                Ok(CustomValue::String(v.to_owned()))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<CustomValue, E> {
                Ok(CustomValue::String(v))
            }
        }
        d.deserialize_any(V)
    }
}

/// `custom` as a map whose keys are unique: a duplicate is refused like a duplicate field, never silently
/// replaced by its last value.
fn unique_custom<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<BTreeMap<String, CustomValue>, D::Error> {
    struct V;
    impl<'de> de::Visitor<'de> for V {
        type Value = BTreeMap<String, CustomValue>;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a map of strings, numbers and bools")
        }
        fn visit_map<A: de::MapAccess<'de>>(self, mut m: A) -> Result<Self::Value, A::Error> {
            let mut out = BTreeMap::new();
            while let Some(k) = m.next_key::<String>()? {
                if out.contains_key(&k) {
                    return Err(duplicate_key(&k));
                }
                let v = m.next_value::<CustomValue>()?;
                out.insert(k, v);
            }
            Ok(out)
        }
    }
    d.deserialize_map(V)
}

/// The error for a key that appears twice in one JSON object: the words serde uses for a duplicate field, so
/// that every duplicate is reported (and classified) alike.
pub(crate) fn duplicate_key<E: de::Error>(key: &str) -> E {
    E::custom(format!("duplicate field `{}`", shorten(key)))
}

/// Whether a serde error is a duplicate key (see [`duplicate_key`]).
pub(crate) fn is_duplicate_key(message: &str) -> bool {
    message.starts_with("duplicate field `")
}

impl TrackRequest {
    /// A request for `user_id` doing `action`, with no attributes.
    pub fn new(user_id: impl Into<String>, action: impl Into<String>) -> Self {
        TrackRequest {
            user_id: user_id.into(),
            action: action.into(),
            attributes: TrackAttributes::default(),
        }
    }

    /// Parses a request from its JSON wire form.
    ///
    /// Malformed JSON, including a key given twice in one object (at the top, in `attributes` or in `custom`), is
    /// [`TrackError::InvalidJson`] naming the key; well-formed JSON with a wrong field (a number for `userId`,
    /// an unknown attribute, an object in `custom`) is [`TrackError::InvalidRequest`] naming the field. The
    /// request is not validated further here: [`Engine::track`](crate::Engine::track) does that.
    pub fn from_json(json: &str) -> Result<Self, TrackError> {
        from_json_str(json)
    }

    /// Checks every field against the documented bounds, without touching any engine.
    ///
    /// [`Engine::track`](crate::Engine::track) calls this first; it is public so that applications can refuse a
    /// bad request early with the same message.
    pub fn validate(&self) -> Result<(), TrackError> {
        check_id("userId", &self.user_id, MAX_ID_BYTES)?;
        check_action(&self.action)?;
        let a = &self.attributes;
        opt(&a.idempotency_key, |v| {
            check_id("attributes.idempotencyKey", v, MAX_ID_BYTES)
        })?;
        opt(&a.device_id, |v| {
            check_id("attributes.deviceId", v, MAX_ID_BYTES)
        })?;
        opt(&a.ip_address, |v| parse_ip(v).map(|_| ()))?;
        opt(&a.user_agent, |v| {
            check_text("attributes.userAgent", v, MAX_LONG_FIELD_BYTES, true)
        })?;
        opt(&a.redirect_url, |v| {
            check_text("attributes.redirectUrl", v, MAX_LONG_FIELD_BYTES, false)
        })?;
        opt(&a.email, |v| {
            check_text("attributes.email", v, MAX_ID_BYTES, false)
        })?;
        opt(&a.phone_number, |v| {
            check_text("attributes.phoneNumber", v, MAX_PHONE_BYTES, false)
        })?;
        opt(&a.username, |v| {
            check_text("attributes.username", v, MAX_ID_BYTES, false)
        })?;
        if a.custom.len() > MAX_CUSTOM_ENTRIES {
            return Err(TrackError::invalid(
                "attributes.custom",
                format!(
                    "has {} entries, at most {MAX_CUSTOM_ENTRIES} are allowed",
                    a.custom.len()
                ),
            ));
        }
        for (k, v) in &a.custom {
            if k.is_empty() || k.len() > MAX_CUSTOM_KEY_BYTES || find_control(k).is_some() {
                return Err(TrackError::invalid(
                    "attributes.custom",
                    format!(
                        "key `{}` must be 1 to {MAX_CUSTOM_KEY_BYTES} bytes without control characters",
                        shorten(k)
                    ),
                ));
            }
            match v {
                CustomValue::String(s) if s.len() > MAX_CUSTOM_STRING_BYTES => {
                    return Err(TrackError::invalid(
                        format!("attributes.custom.{k}"),
                        format!(
                            "is {} bytes, at most {MAX_CUSTOM_STRING_BYTES} are allowed",
                            s.len()
                        ),
                    ))
                }
                CustomValue::Float(f) if !f.is_finite() => {
                    return Err(TrackError::invalid(
                        format!("attributes.custom.{k}"),
                        format!("must be a finite number, not `{f}`"),
                    ))
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// A 128-bit fingerprint of everything in the request except the idempotency key (and the user and action,
    /// which are the rest of the identity), used to refuse a reused key that carries a different request.
    ///
    /// Two requests may share a fingerprint only if they are equal or the hash collides, so the encoding is
    /// injective and the hash is keyed:
    /// - the attributes are laid out as 64-bit words that determine them (`TrackAttributes::encode`): every
    ///   field has a fixed place, a presence mark and its length in a header, every custom entry a header
    ///   with its key's length, a type tag and a string's length (so `1`, `1.0` and `"1"` differ, an empty
    ///   string differs from an absent one, and no choice of strings can shift one field into another's);
    /// - the words go through SipHash-1-3 with a 128-bit secret drawn per engine (`hash::Sip13`,
    ///   `hash::FingerprintKey`): SipHash is a pseudorandom function, so a caller who does not know the secret
    ///   cannot aim a collision however the values are chosen, and fingerprints a reader sees (in a state file
    ///   or in Redis) tell nothing about the secret or about other requests' fingerprints (an unkeyed or
    ///   public-secret hash such as xxh3 can be made to collide by construction).
    ///
    /// It hashes the request where it lies, a word at a time, with no buffer in between: for the realistic
    /// stream's requests, about 30 words.
    pub(crate) fn fingerprint(&self, key: &FingerprintKey) -> u128 {
        let mut h = Sip13::new(key);
        self.attributes.encode(&mut h);
        h.finish()
    }
}

/// A header slot that holds this instead of a length (or a count) says the value did not fit: it follows as a
/// word of its own. No validated request needs one (every length and count is bounded far below), but the
/// repeat fast path fingerprints a request before validating it, and the encoding stays injective for any.
const LONG16: u64 = 0xffff;
/// [`LONG16`] for a custom key's 8-bit length.
const LONG8: u64 = 0xff;
/// [`LONG16`] for a custom string's 32-bit length.
const LONG32: u64 = 0xffff_ffff;

/// The type tags of custom values (an entry header's second byte), each with its own layout.
mod tag {
    /// A string: its length in the header's bits 16..48, its bytes after the key.
    pub const STRING: u64 = 1;
    /// A string of at most [`SHORT_STRING_BYTES`] bytes: its length in bits 16..24, its bytes in 24..64.
    pub const SHORT_STRING: u64 = 2;
    /// An integer within 48 bits: its two's complement in bits 16..64.
    pub const SHORT_INT: u64 = 3;
    /// Any other integer: a word after the key.
    pub const INT: u64 = 4;
    /// A float: its bits, a word after the key.
    pub const FLOAT: u64 = 5;
    /// A bool: bit 16.
    pub const BOOL: u64 = 6;
    /// The longest string held in the header.
    pub const SHORT_STRING_BYTES: usize = 5;
}

/// The version of [`TrackRequest::fingerprint`]'s encoding, recorded in a shared (Redis) store by the first
/// engine on it: an engine with another refuses the store, since its stored fingerprints would not match.
/// A change to the encoding needs a new one (and a new state format version).
#[cfg(feature = "redis")]
pub(crate) const FINGERPRINT_SCHEME: u32 = 3;

impl TrackAttributes {
    /// The seven text fields the fingerprint covers, in the order it encodes them.
    #[inline]
    fn text_fields(&self) -> [&Option<String>; 7] {
        [
            &self.device_id,
            &self.ip_address,
            &self.user_agent,
            &self.redirect_url,
            &self.email,
            &self.phone_number,
            &self.username,
        ]
    }

    /// Reads one byte of every cache line the encoding will read, before it starts: these loads depend on
    /// nothing else, so the processor overlaps their cache misses, where the hash's own loads, each behind the
    /// rounds of the strings before it, would wait for them one after another (measured: a repeat whose request
    /// is not in cache took longer with the word encoding than with the old buffer, whose copies overlapped).
    #[inline]
    fn touch(&self) {
        let mut t = 0u8;
        // The first line of each string (the hash reads on from there in order, which the processor's own
        // prefetching follows).
        let mut lines = |s: &[u8]| {
            if let Some(b) = s.first() {
                t ^= *b;
            }
        };
        for f in self.text_fields().into_iter().flatten() {
            lines(f.as_bytes());
        }
        for (k, v) in &self.custom {
            lines(k.as_bytes());
            if let CustomValue::String(s) = v {
                lines(s.as_bytes());
            }
        }
        std::hint::black_box(t);
    }
}

/// What follows an entry's key.
enum Tail<'a> {
    None,
    Word(u64),
    Bytes(&'a [u8]),
}

/// Up to [`tag::SHORT_STRING_BYTES`] bytes in 40 bits, as `Absorb::bytes` cuts a remainder (first, middle and
/// last byte; or the first four and the last): given the length, every byte is there.
fn short_bytes(s: &[u8]) -> u64 {
    match s {
        [] => 0,
        [a, .., z] if s.len() >= 4 => {
            u64::from(*a)
                | u64::from(s[1]) << 8
                | u64::from(s[2]) << 16
                | u64::from(s[3]) << 24
                | u64::from(*z) << 32
        }
        [a, ..] => u64::from(*a) | u64::from(s[s.len() / 2]) << 8 | u64::from(s[s.len() - 1]) << 16,
    }
}

impl TrackAttributes {
    /// Lays out what the fingerprint covers (everything but the idempotency key) as 64-bit words, injectively:
    /// the words determine the attributes. In order:
    /// 1. two header words: the seven text fields' 16-bit slots (`0` absent, else length + 1, or [`LONG16`])
    ///    in field order, then the number of custom entries (16 bits, or [`LONG16`]);
    /// 2. the length (or count) of every slot holding [`LONG16`], a word each, in the same order;
    /// 3. each present field's bytes (`Absorb::bytes`: length / 8 words, rounded up);
    /// 4. each custom entry in key order: a header word (the key's length in 8 bits, a type tag in the next 8
    ///    and, by the tag ([`tag`]), a string's length, or a short string, a short integer or a bool itself,
    ///    in the other 48); the key's length and then the string's as a word each if they did not fit
    ///    ([`LONG8`], [`LONG32`]); the key's bytes; then the string's bytes, or the integer or the float's
    ///    bits as a word, for the tags that keep them out of the header.
    ///
    /// Reading them back field by field (`tests::decode`) gives the attributes again, so two requests that
    /// differ anywhere (`1`, `1.0` and `"1"`; an empty string and an absent one; shifted boundaries) differ in
    /// their words. The realistic stream's requests take about 30 words.
    fn encode(&self, out: &mut impl Absorb) {
        self.touch();
        let fields = self.text_fields();
        let slots = fields.map(|f| f.as_ref().map_or(0, |s| (s.len() as u64 + 1).min(LONG16)));
        let count = (self.custom.len() as u64).min(LONG16);
        out.word(slots[0] | slots[1] << 16 | slots[2] << 32 | slots[3] << 48);
        out.word(slots[4] | slots[5] << 16 | slots[6] << 32 | count << 48);
        if slots.contains(&LONG16) || count == LONG16 {
            for (f, slot) in fields.iter().zip(slots) {
                if let (Some(s), LONG16) = (f, slot) {
                    out.word(s.len() as u64);
                }
            }
            if count == LONG16 {
                out.word(self.custom.len() as u64);
            }
        }
        for s in fields.into_iter().flatten() {
            out.bytes(s.as_bytes());
        }
        const SHORT_INT: std::ops::Range<i64> = -(1 << 47)..1 << 47;
        for (k, v) in &self.custom {
            let klen = (k.len() as u64).min(LONG8);
            let (tag, held, tail) = match v {
                CustomValue::String(s) if s.len() <= tag::SHORT_STRING_BYTES => (
                    tag::SHORT_STRING,
                    s.len() as u64 | short_bytes(s.as_bytes()) << 8,
                    Tail::None,
                ),
                CustomValue::String(s) => (
                    tag::STRING,
                    (s.len() as u64).min(LONG32),
                    Tail::Bytes(s.as_bytes()),
                ),
                CustomValue::Int(i) if SHORT_INT.contains(i) => {
                    (tag::SHORT_INT, *i as u64 & ((1 << 48) - 1), Tail::None)
                }
                CustomValue::Int(i) => (tag::INT, 0, Tail::Word(*i as u64)),
                CustomValue::Float(f) => (tag::FLOAT, 0, Tail::Word(f.to_bits())),
                CustomValue::Bool(b) => (tag::BOOL, u64::from(*b), Tail::None),
            };
            out.word(klen | tag << 8 | held << 16);
            if klen == LONG8 {
                out.word(k.len() as u64);
            }
            if let (Tail::Bytes(s), LONG32) = (&tail, held) {
                out.word(s.len() as u64);
            }
            out.bytes(k.as_bytes());
            match tail {
                Tail::None => {}
                Tail::Word(w) => out.word(w),
                Tail::Bytes(s) => out.bytes(s),
            }
        }
    }
}

/// Builds a request in code: `TrackRequest::new(user, action)` then one call per attribute.
///
/// ```
/// use riskgate::{CustomValue, TrackRequest};
///
/// let req = TrackRequest::new("user-1", "withdraw-funds")
///     .idempotency_key("order-17")
///     .ip("203.0.113.7")
///     .device("dev-1")
///     .user_agent("Mozilla/5.0")
///     .email("a@example.com")
///     .custom("amount", 4200u64)
///     .custom("currency", "EUR");
/// assert_eq!(req.attributes.custom["amount"], CustomValue::Int(4200));
/// assert!(req.validate().is_ok());
/// ```
impl TrackRequest {
    /// Sets `attributes.idempotencyKey`.
    pub fn idempotency_key(mut self, key: impl Into<String>) -> Self {
        self.attributes.idempotency_key = Some(key.into());
        self
    }

    /// Sets `attributes.deviceId`.
    pub fn device(mut self, device_id: impl Into<String>) -> Self {
        self.attributes.device_id = Some(device_id.into());
        self
    }

    /// Sets `attributes.ipAddress`; takes a string or an [`IpAddr`].
    pub fn ip(mut self, ip_address: impl ToString) -> Self {
        self.attributes.ip_address = Some(ip_address.to_string());
        self
    }

    /// Sets `attributes.userAgent`.
    pub fn user_agent(mut self, user_agent: impl Into<String>) -> Self {
        self.attributes.user_agent = Some(user_agent.into());
        self
    }

    /// Sets `attributes.redirectUrl`.
    pub fn redirect_url(mut self, redirect_url: impl Into<String>) -> Self {
        self.attributes.redirect_url = Some(redirect_url.into());
        self
    }

    /// Sets `attributes.email`.
    pub fn email(mut self, email: impl Into<String>) -> Self {
        self.attributes.email = Some(email.into());
        self
    }

    /// Sets `attributes.phoneNumber`.
    pub fn phone_number(mut self, phone_number: impl Into<String>) -> Self {
        self.attributes.phone_number = Some(phone_number.into());
        self
    }

    /// Sets `attributes.username`.
    pub fn username(mut self, username: impl Into<String>) -> Self {
        self.attributes.username = Some(username.into());
        self
    }

    /// Sets `custom.<key>` (what rules read as `custom.key`), replacing an earlier value.
    pub fn custom(mut self, key: impl Into<String>, value: impl Into<CustomValue>) -> Self {
        self.attributes.insert_custom(key, value);
        self
    }
}

impl TrackAttributes {
    /// Sets `custom.<key>`, returning the value it replaces.
    ///
    /// ```
    /// let mut a = riskgate::TrackAttributes::default();
    /// a.insert_custom("amount", 4200u32);
    /// a.insert_custom("vip", true);
    /// assert_eq!(a.custom.len(), 2);
    /// ```
    pub fn insert_custom(
        &mut self,
        key: impl Into<String>,
        value: impl Into<CustomValue>,
    ) -> Option<CustomValue> {
        self.custom.insert(key.into(), value.into())
    }
}

fn opt(
    v: &Option<String>,
    f: impl FnOnce(&str) -> Result<(), TrackError>,
) -> Result<(), TrackError> {
    v.as_deref().map_or(Ok(()), f)
}

/// Parses and classifies a JSON document as `T`: syntax errors are `invalid_json`, shape errors
/// `invalid_request` naming the field path.
pub(crate) fn from_json_str<T: de::DeserializeOwned>(json: &str) -> Result<T, TrackError> {
    let de = &mut serde_json::Deserializer::from_str(json);
    match serde_path_to_error::deserialize::<_, T>(&mut *de) {
        // Anything but whitespace after the document is malformed JSON, as `serde_json::from_str` has it.
        Ok(v) => de
            .end()
            .map(|()| v)
            .map_err(|e| TrackError::InvalidJson(e.to_string())),
        Err(e) => {
            let path = e.path().to_string();
            let inner = e.into_inner();
            Err(classify_json_error(&path, &inner))
        }
    }
}

/// Classifies a serde_json error: syntax errors are `invalid_json`, shape errors `invalid_request`.
pub(crate) fn classify_json_error(path: &str, e: &serde_json::Error) -> TrackError {
    use serde_json::error::Category;
    match e.classify() {
        // A key given twice makes the document ambiguous (parsers disagree on which value wins): malformed, as
        // RFC 8259's interoperability advice and I-JSON have it, whichever object it is in.
        Category::Data if is_duplicate_key(&e.to_string()) => {
            let message = e.to_string();
            TrackError::InvalidJson(match path {
                "." | "" => message,
                _ => match message.find(" at line ") {
                    Some(i) => format!("{} in `{path}`{}", &message[..i], &message[i..]),
                    None => format!("{message} in `{path}`"),
                },
            })
        }
        Category::Data => {
            let field = if path == "." || path.is_empty() {
                "request".to_owned()
            } else {
                path.to_owned()
            };
            TrackError::invalid(field, strip_position(&e.to_string()))
        }
        Category::Syntax | Category::Eof | Category::Io => TrackError::InvalidJson(e.to_string()),
    }
}

fn strip_position(msg: &str) -> String {
    match msg.find(" at line ") {
        Some(i) => msg[..i].to_owned(),
        None => msg.to_owned(),
    }
}

fn check_id(field: &str, v: &str, max: usize) -> Result<(), TrackError> {
    if v.is_empty() {
        return Err(TrackError::invalid(field, "must not be empty"));
    }
    check_text(field, v, max, false)
}

fn check_text(field: &str, v: &str, max: usize, may_be_empty: bool) -> Result<(), TrackError> {
    if v.is_empty() && !may_be_empty {
        return Err(TrackError::invalid(
            field,
            "must not be empty; leave the field out instead",
        ));
    }
    if v.len() > max {
        return Err(TrackError::invalid(
            field,
            format!("is {} bytes, at most {max} are allowed", v.len()),
        ));
    }
    if let Some(c) = find_control(v) {
        return Err(TrackError::invalid(
            field,
            format!("contains the control character {:?}", c),
        ));
    }
    Ok(())
}

/// The first control character in `v` (Unicode category Cc: U+0000–U+001F and U+007F–U+009F).
///
/// Scans bytes first, since that is most of what a repeat costs: C0 controls and DEL are single bytes, and the
/// C1 controls are the only characters whose UTF-8 form starts with 0xC2 followed by 0x80–0x9F.
fn find_control(v: &str) -> Option<char> {
    // Branch-free, so the compiler can compare many bytes at a time.
    let suspect = v.as_bytes().iter().fold(false, |acc, &b| {
        acc | (b < 0x20) | (b == 0x7f) | (b == 0xc2)
    });
    if suspect {
        v.chars().find(|c| c.is_control())
    } else {
        None
    }
}

fn check_action(v: &str) -> Result<(), TrackError> {
    if is_action_code(v) {
        Ok(())
    } else {
        Err(TrackError::invalid(
            "action",
            format!(
                "`{}` is not an action code: expected 1-64 of [a-zA-Z0-9_-]",
                shorten(v)
            ),
        ))
    }
}

/// Whether `v` matches `^[a-zA-Z0-9_-]{1,64}$`.
pub(crate) fn is_action_code(v: &str) -> bool {
    !v.is_empty()
        && v.len() <= 64
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// Parses `attributes.ipAddress`.
pub(crate) fn parse_ip(v: &str) -> Result<IpAddr, TrackError> {
    v.parse::<IpAddr>().map_err(|_| {
        TrackError::invalid(
            "attributes.ipAddress",
            format!("`{}` is not an IPv4 or IPv6 address", shorten(v)),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_number_type_converts() {
        assert_eq!(CustomValue::from(-5i8), CustomValue::Int(-5));
        assert_eq!(CustomValue::from(-5i16), CustomValue::Int(-5));
        assert_eq!(CustomValue::from(-5i32), CustomValue::Int(-5));
        assert_eq!(CustomValue::from(200u8), CustomValue::Int(200));
        assert_eq!(CustomValue::from(60_000u16), CustomValue::Int(60_000));
        assert_eq!(CustomValue::from(u32::MAX), CustomValue::Int(4_294_967_295));
        assert_eq!(CustomValue::from(4200u64), CustomValue::Int(4200));
        assert_eq!(CustomValue::from(7usize), CustomValue::Int(7));
        assert_eq!(CustomValue::from(-7isize), CustomValue::Int(-7));
        assert_eq!(CustomValue::from(-7i128), CustomValue::Int(-7));
        assert_eq!(
            CustomValue::from(i64::MAX as u64),
            CustomValue::Int(i64::MAX)
        );
        // Beyond i64: the magnitude as a float, as JSON reads it.
        assert_eq!(
            CustomValue::from(u64::MAX),
            CustomValue::Float(u64::MAX as f64)
        );
        assert_eq!(
            CustomValue::from(u128::MAX),
            CustomValue::Float(u128::MAX as f64)
        );
        let json: TrackAttributes =
            serde_json::from_str(&format!(r#"{{"custom":{{"a":{}}}}}"#, u64::MAX)).unwrap();
        assert_eq!(json.custom["a"], CustomValue::from(u64::MAX));
        assert_eq!(CustomValue::from(1.5f32), CustomValue::Float(1.5));
        assert_eq!(CustomValue::from('x'), CustomValue::String("x".into()));
    }

    #[test]
    fn the_builder_sets_every_attribute() {
        let req = TrackRequest::new("u", "signIn")
            .idempotency_key("k")
            .device("d")
            .ip(IpAddr::from([203, 0, 113, 7]))
            .user_agent("ua")
            .redirect_url("https://app.test/")
            .email("e@x.test")
            .phone_number("+100")
            .username("name")
            .custom("n", 1u8)
            .custom("n", 2u16);
        let expected = TrackAttributes {
            idempotency_key: Some("k".into()),
            device_id: Some("d".into()),
            ip_address: Some("203.0.113.7".into()),
            user_agent: Some("ua".into()),
            redirect_url: Some("https://app.test/".into()),
            email: Some("e@x.test".into()),
            phone_number: Some("+100".into()),
            username: Some("name".into()),
            custom: BTreeMap::from([("n".to_owned(), CustomValue::Int(2))]),
        };
        assert_eq!(req.attributes, expected);
        assert_eq!((req.user_id.as_str(), req.action.as_str()), ("u", "signIn"));
        let mut a = TrackAttributes::default();
        assert_eq!(a.insert_custom("n", 1), None);
        assert_eq!(a.insert_custom("n", "x"), Some(CustomValue::Int(1)));
    }

    #[test]
    fn custom_values_parse_by_type() {
        let a: TrackAttributes =
            serde_json::from_str(r#"{"custom":{"a":"x","b":2,"c":2.5,"d":true}}"#).unwrap();
        assert_eq!(a.custom["a"], CustomValue::from("x"));
        assert_eq!(a.custom["b"], CustomValue::Int(2));
        assert_eq!(a.custom["c"], CustomValue::Float(2.5));
        assert_eq!(a.custom["d"], CustomValue::Bool(true));
    }

    #[test]
    fn fingerprint_ignores_only_the_key() {
        let k = crate::hash::EngineKeys::draw().unwrap().fingerprint;
        let mut a = TrackRequest::new("u", "signIn");
        a.attributes.device_id = Some("d".into());
        let mut b = a.clone();
        b.attributes.idempotency_key = Some("k".into());
        assert_eq!(a.fingerprint(&k), b.fingerprint(&k));
        b.attributes.custom.insert("x".into(), 1i64.into());
        assert_ne!(a.fingerprint(&k), b.fingerprint(&k));
        let mut c = a.clone();
        c.attributes.device_id = None;
        c.attributes.ip_address = Some("d".into());
        assert_ne!(a.fingerprint(&k), c.fingerprint(&k));
    }

    #[test]
    fn fingerprints_tell_apart_fields_that_would_run_together() {
        let k = crate::hash::EngineKeys::draw().unwrap().fingerprint;
        // Requests whose fields would run together without the presence tags, lengths and type tags.
        let shifted = [
            TrackRequest::new("u", "a"),
            TrackRequest::new("u", "a").device("ab"),
            TrackRequest::new("u", "a").device("a").ip("b"),
            TrackRequest::new("u", "a").ip("ab"),
            TrackRequest::new("u", "a").ip(""),
            TrackRequest::new("u", "a").custom("ab", "c"),
            TrackRequest::new("u", "a").custom("a", "bc"),
            TrackRequest::new("u", "a").custom("a", 1i64),
            TrackRequest::new("u", "a").custom("a", 1.0),
            TrackRequest::new("u", "a").custom("a", "1"),
            TrackRequest::new("u", "a").custom("a", true),
            TrackRequest::new("u", "a").custom("a", false),
            TrackRequest::new("u", "a").custom("a", "").custom("b", ""),
            TrackRequest::new("u", "a").custom("a", "b"),
        ];
        let fps: std::collections::HashSet<u128> =
            shifted.iter().map(|r| r.fingerprint(&k)).collect();
        assert_eq!(fps.len(), shifted.len());
    }

    /// The encoding's words, kept to be read back.
    impl Absorb for Vec<u64> {
        fn word(&mut self, w: u64) {
            self.push(w);
        }
    }

    fn words(a: &TrackAttributes) -> Vec<u64> {
        let mut w = Vec::new();
        a.encode(&mut w);
        w
    }

    /// `len` bytes from the words `Absorb::bytes` made of them.
    fn read_bytes(w: &mut impl Iterator<Item = u64>, len: usize) -> Option<Vec<u8>> {
        let mut out = Vec::with_capacity(len);
        for _ in 0..len / 8 {
            out.extend_from_slice(&w.next()?.to_le_bytes());
        }
        let n = len % 8;
        if n > 0 {
            let last = w.next()?.to_le_bytes();
            if len > 8 {
                out.extend_from_slice(&last[8 - n..]);
            } else if n >= 4 {
                out.extend_from_slice(&last[..4]);
                out.extend_from_slice(&last[12 - n..]);
            } else {
                out.push(last[0]);
                out.extend_from_slice(&last[4 - n..3]);
            }
        }
        Some(out)
    }

    fn read_string(w: &mut impl Iterator<Item = u64>, len: usize) -> Option<String> {
        String::from_utf8(read_bytes(w, len)?).ok()
    }

    /// Reads [`TrackAttributes::encode`]'s words back, field by field; `None` if words are missing or left over.
    fn decode(words: &[u64]) -> Option<TrackAttributes> {
        let mut w = words.iter().copied();
        let (h0, h1) = (w.next()?, w.next()?);
        let mut slots: Vec<u64> = (0..4).map(|i| h0 >> (16 * i) & LONG16).collect();
        slots.extend((0..3).map(|i| h1 >> (16 * i) & LONG16));
        let mut count = h1 >> 48;
        // A present field's length: its slot, or the word after the headers.
        let mut lens = Vec::new();
        for s in &slots {
            lens.push(match *s {
                0 => None,
                LONG16 => Some(w.next()? as usize),
                s => Some(s as usize - 1),
            });
        }
        if count == LONG16 {
            count = w.next()?;
        }
        let mut fields = Vec::new();
        for len in lens {
            fields.push(match len {
                None => None,
                Some(len) => Some(read_string(&mut w, len)?),
            });
        }
        let mut custom = BTreeMap::new();
        for _ in 0..count {
            let h = w.next()?;
            let (mut klen, t, held) = (h & LONG8, h >> 8 & 0xff, h >> 16);
            if klen == LONG8 {
                klen = w.next()?;
            }
            let slen = match (t, held) {
                (tag::STRING, LONG32) => w.next()?,
                _ => held,
            };
            let k = read_string(&mut w, klen as usize)?;
            let v = match t {
                tag::STRING => CustomValue::String(read_string(&mut w, slen as usize)?),
                tag::SHORT_STRING => {
                    let len = (held & 0xff) as usize;
                    let word = held >> 8;
                    // Up to 3 bytes: the first, middle and last are the string's bytes in order; 4 or 5:
                    // the first four, then the last.
                    let mut b: Vec<u8> = (0..len.min(4)).map(|i| (word >> (8 * i)) as u8).collect();
                    if len == 5 {
                        b.push((word >> 32) as u8);
                    }
                    CustomValue::String(String::from_utf8(b).ok()?)
                }
                tag::SHORT_INT => CustomValue::Int(((held << 16) as i64) >> 16),
                tag::INT => CustomValue::Int(w.next()? as i64),
                tag::FLOAT => CustomValue::Float(f64::from_bits(w.next()?)),
                tag::BOOL => CustomValue::Bool(held == 1),
                _ => return None,
            };
            custom.insert(k, v);
        }
        if w.next().is_some() {
            return None;
        }
        let mut f = fields.into_iter();
        Some(TrackAttributes {
            idempotency_key: None,
            device_id: f.next()?,
            ip_address: f.next()?,
            user_agent: f.next()?,
            redirect_url: f.next()?,
            email: f.next()?,
            phone_number: f.next()?,
            username: f.next()?,
            custom,
        })
    }

    /// Equal field by field, floats by their bits (`-0.0` is not `0.0` to the fingerprint).
    fn same_bits(a: &TrackAttributes, b: &TrackAttributes) -> bool {
        format!("{a:?}") == format!("{b:?}")
    }

    #[test]
    fn the_encoding_reads_back() {
        let mut all = Vec::new();
        // Every remainder of a string's last word, in every field and in custom keys and values.
        for len in 0..=25 {
            let s = "abcdefghijklmnopqrstuvwxyz"[..len].to_owned();
            let mut a = TrackAttributes {
                device_id: Some(s.clone()),
                user_agent: Some(s.repeat(3)),
                username: Some(s.clone()),
                ..Default::default()
            };
            a.custom
                .insert(format!("k{s}"), CustomValue::String(s.clone()));
            a.custom.insert(s.clone(), CustomValue::Int(len as i64));
            all.push(a);
        }
        let mut typed = TrackAttributes::default();
        for (i, v) in [
            CustomValue::Int(i64::MIN),
            CustomValue::Int(i64::MAX),
            CustomValue::Int(-1),
            // Either side of the integers held in the header.
            CustomValue::Int(1 << 47),
            CustomValue::Int((1 << 47) - 1),
            CustomValue::Int(-(1 << 47)),
            CustomValue::Int(-(1 << 47) - 1),
            CustomValue::Float(-0.0),
            CustomValue::Float(0.0),
            CustomValue::Float(f64::MAX),
            CustomValue::Bool(true),
            CustomValue::Bool(false),
            CustomValue::String(String::new()),
            CustomValue::String("é☃".into()),
        ]
        .into_iter()
        .enumerate()
        {
            typed.custom.insert(format!("v{i}"), v);
        }
        all.push(typed);
        all.push(TrackAttributes {
            ip_address: Some(String::new()),
            redirect_url: Some("https://a.test/".into()),
            email: Some("a@x.test".into()),
            phone_number: Some("+15550100".into()),
            ..Default::default()
        });
        for a in &all {
            let back = decode(&words(a)).expect("decodes");
            assert!(same_bits(&back, a), "{a:?} read back as {back:?}");
        }
        // A realistic request (the bench stream's shape) takes 29 words and none of the escapes.
        let r = TrackRequest::new("user-000001", "withdraw-funds")
            .device("8d1f0b3e-5a2c-4e7f-9b61-0c2d4e6f8a10")
            .ip("203.0.113.7")
            .user_agent("Mozilla/5.0 (X11; Linux x86_64; rv:121.0) Gecko/20100101 Firefox/121.0")
            .custom("amount", 4200)
            .custom("currency", "EUR")
            .custom("destination", "bank")
            .custom("channel", "web")
            .custom("attempts", 1);
        assert_eq!(words(&r.attributes).len(), 29);
    }

    #[test]
    fn over_long_values_take_the_escapes_and_still_read_back() {
        // Longer than any validated request: the repeat fast path fingerprints before validating.
        let mut a = TrackAttributes {
            user_agent: Some("u".repeat(70_000)),
            email: Some("e".repeat(0xfffe)),
            phone_number: Some("p".repeat(0xfffd)),
            ..Default::default()
        };
        for i in 0..0xffff {
            a.custom
                .insert(format!("{i:05}"), CustomValue::Bool(i % 2 == 0));
        }
        a.custom.insert("k".repeat(300), CustomValue::Int(7));
        let w = words(&a);
        assert_eq!(w[0] >> 32 & LONG16, LONG16);
        assert_eq!(w[1] >> 48, LONG16);
        assert!(same_bits(&decode(&w).expect("decodes"), &a));
        // The escape and the largest slot that fits are told apart.
        let mut b = a.clone();
        b.phone_number = Some("p".repeat(0xfffe));
        assert_ne!(words(&a), words(&b));
    }

    mod any {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            #[test]
            fn any_attributes_read_back(
                fields in prop::collection::vec(prop::option::of(".{0,20}"), 7),
                custom in prop::collection::btree_map(
                    ".{0,12}",
                    prop_oneof![
                        ".{0,20}".prop_map(CustomValue::String),
                        any::<i64>().prop_map(CustomValue::Int),
                        any::<f64>().prop_map(CustomValue::Float),
                        any::<bool>().prop_map(CustomValue::Bool),
                    ],
                    0..6,
                ),
            ) {
                let mut f = fields.into_iter();
                let a = TrackAttributes {
                    idempotency_key: None,
                    device_id: f.next().flatten(),
                    ip_address: f.next().flatten(),
                    user_agent: f.next().flatten(),
                    redirect_url: f.next().flatten(),
                    email: f.next().flatten(),
                    phone_number: f.next().flatten(),
                    username: f.next().flatten(),
                    custom,
                };
                let back = decode(&words(&a));
                prop_assert!(back.as_ref().is_some_and(|b| same_bits(b, &a)), "{:?} read back as {:?}", a, back);
            }
        }
    }

    #[test]
    fn json_errors_are_classified() {
        let e = TrackRequest::from_json("{").unwrap_err();
        assert_eq!(e.code(), "invalid_json");
        let e = TrackRequest::from_json(r#"{"userId":1,"action":"a"}"#).unwrap_err();
        assert!(
            matches!(&e, TrackError::InvalidRequest { field, .. } if field == "userId"),
            "{e:?}"
        );
        let e = TrackRequest::from_json(
            r#"{"userId":"u","action":"a","attributes":{"custom":{"k":[1]}}}"#,
        )
        .unwrap_err();
        assert!(
            matches!(&e, TrackError::InvalidRequest { field, .. } if field == "attributes.custom.k"),
            "{e:?}"
        );
    }

    #[test]
    fn control_characters_are_found_wherever_they_are() {
        let plain = "Mozilla/5.0 (X11; Linux x86_64) ü € 𝄞 AppleWebKit/537.36";
        assert_eq!(find_control(plain), None);
        for c in ['\0', '\n', '\u{1f}', '\u{7f}', '\u{80}', '\u{9f}'] {
            for at in [0, 7, 8, 15, 16, plain.len()] {
                let mut s = plain.to_owned();
                s.insert(at, c);
                assert_eq!(find_control(&s), Some(c), "{c:?} at {at}");
            }
        }
        // Bytes around the tested ones are not controls.
        for c in ['\u{20}', '\u{7e}', '\u{a0}', 'Â', 'Ÿ'] {
            assert_eq!(find_control(&format!("abcdefgh{c}ijklmnop")), None, "{c:?}");
        }
    }
}
