//! The request wire types ([`TrackRequest`], [`TrackAttributes`], [`CustomValue`]) and their validation.
//!
//! Field names follow Authsignal's `track` JSON (camelCase). Validation bounds every field, so nothing a caller
//! sends can grow the engine's memory beyond what is documented here.

use serde::{de, Deserialize, Deserializer, Serialize};
use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;

use crate::error::{shorten, TrackError};
use crate::hash::{keyed_hash, FingerprintKey};

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
    /// - every field has a fixed place and a presence tag, every string its length before it, every custom
    ///   entry its key (length first) and a type tag before its value (so `1`, `1.0` and `"1"` differ, and no
    ///   choice of strings can shift one field into another's bytes);
    /// - the bytes go through SipHash-1-3 with a 128-bit secret drawn per engine (`hash::FingerprintKey`): a
    ///   caller who does not know the secret cannot aim a collision, however the values are chosen (an
    ///   unkeyed or public-secret hash such as xxh3 can be made to collide by construction).
    pub(crate) fn fingerprint(&self, key: &FingerprintKey) -> u128 {
        keyed_hash(key, |h| {
            let a = &self.attributes;
            for f in [
                &a.device_id,
                &a.ip_address,
                &a.user_agent,
                &a.redirect_url,
                &a.email,
                &a.phone_number,
                &a.username,
            ] {
                match f {
                    None => h.push(0),
                    Some(s) => {
                        h.push(1);
                        h.extend_from_slice(&(s.len() as u64).to_le_bytes());
                        h.extend_from_slice(s.as_bytes());
                    }
                }
            }
            h.extend_from_slice(&(a.custom.len() as u64).to_le_bytes());
            for (k, v) in &a.custom {
                h.extend_from_slice(&(k.len() as u64).to_le_bytes());
                h.extend_from_slice(k.as_bytes());
                match v {
                    CustomValue::String(s) => {
                        h.push(2);
                        h.extend_from_slice(&(s.len() as u64).to_le_bytes());
                        h.extend_from_slice(s.as_bytes());
                    }
                    CustomValue::Int(i) => {
                        h.push(3);
                        h.extend_from_slice(&i.to_le_bytes());
                    }
                    CustomValue::Float(f) => {
                        h.push(4);
                        h.extend_from_slice(&f.to_bits().to_le_bytes());
                    }
                    CustomValue::Bool(b) => h.extend_from_slice(&[5, u8::from(*b)]),
                }
            }
        })
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
