//! The realistic workload `riskgate bench` runs by default and `benches/riskgate.rs` measures its headline
//! groups on (it includes this file with `#[path]`, so both measure exactly the same stream).
//!
//! - [`requests`]: `n` distinct actions (one idempotency key each) in a shuffled order, over `n / 4` users and
//!   two action codes. Every request carries an IP, a device id, a user agent, an idempotency key and five
//!   `custom` attributes (`amount`, `currency`, `destination`, `channel`, `attempts`).
//! - [`RULES`] (and [`with_rules`], which adds them to a builder): ten rules over those attributes, with several `custom` reads and string tests, all in the
//!   subset riskgate compiles to native code. About 15% of the stream's decisions are challenges.
//! - [`native`]: the same ten rules written by hand as Rust closures, the floor a rule engine is measured
//!   against.
//!
//! The stream is a pure function of `n` (a fixed-seed splitmix64), so every run and every build sees the same
//! requests. It uses only riskgate's public API.

use riskgate::{CustomValue, RuleSetBuilder, State, TrackAttributes, TrackRequest};

/// `b` with the ten [`RULES`] added.
pub fn with_rules(b: RuleSetBuilder) -> RuleSetBuilder {
    RULES.iter().fold(b, |b, (id, src)| b.rule(*id, *src))
}

/// The ten rules: (id, source). Ids sort in evaluation order.
pub const RULES: [(&str, &str); 10] = [
    (
        "r01-crypto-amount",
        "if custom.destination == \"crypto\" && custom.amount > 100 { CHALLENGE_REQUIRED }",
    ),
    ("r02-private-ip", "if ip_address.starts_with(\"10.\") { BLOCK }"),
    (
        "r03-api-script",
        "if custom.channel == \"api\" && user_agent.contains(\"curl\") { BLOCK }",
    ),
    ("r04-large-amount", "if custom.amount > 90000 { REVIEW }"),
    (
        "r05-currency",
        "if custom.currency in [\"KPW\", \"IRR\", \"SYP\"] { BLOCK }",
    ),
    (
        "r06-no-device",
        "if device_id == () || device_id.len() < 8 { CHALLENGE_REQUIRED }",
    ),
    (
        "r07-gift-card",
        "if custom.destination == \"gift-card\" && custom.currency != \"USD\" { REVIEW }",
    ),
    ("r08-retries", "if custom.attempts > 3 { CHALLENGE_REQUIRED }"),
    (
        "r09-headless",
        "if user_agent.starts_with(\"HeadlessChrome\") { BLOCK }",
    ),
    (
        "r10-shadow-web",
        "//! mode: shadow\nif custom.channel == \"web\" && user_agent.contains(\"Safari\") { ALLOW }",
    ),
];

const USER_AGENTS: [&str; 6] = [
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.0 \
     Safari/605.1.15",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.0.0 \
     Safari/537.36",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_1 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) \
     Version/17.1 Mobile/15E148 Safari/604.1",
    "Mozilla/5.0 (X11; Linux x86_64; rv:121.0) Gecko/20100101 Firefox/121.0",
    "okhttp/4.12.0",
    "curl/8.4.0",
];
const CURRENCIES: [&str; 6] = ["USD", "EUR", "GBP", "JPY", "BRL", "IRR"];
const DESTINATIONS: [&str; 5] = ["bank", "card", "wallet", "crypto", "gift-card"];
const CHANNELS: [&str; 3] = ["web", "app", "api"];

/// splitmix64: a tiny, fixed, well-mixed generator (the workload must not depend on a crate's stream).
struct Mix(u64);

impl Mix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn pick<'a>(&mut self, of: &[&'a str]) -> &'a str {
        of[self.below(of.len() as u64) as usize]
    }
}

/// `n` distinct actions, shuffled; see the module docs. `tag` is folded into every idempotency key, so two
/// streams with different tags never share an identity (a benchmark uses one for the store it fills and one
/// for the first decisions it times).
pub fn requests(n: usize, tag: &str) -> Vec<TrackRequest> {
    let users = (n / 4).max(1);
    let mut rng = Mix(0x5EED_0000_0000_0001);
    // Per-user fixed parts: a device, a home IP, a user agent.
    let profiles: Vec<(String, String, &str)> = (0..users)
        .map(|u| {
            let d = rng.next();
            let device = format!(
                "{:08x}-{:04x}-4{:03x}-{:04x}-{:012x}",
                d as u32,
                (d >> 32) as u16,
                (d >> 48) & 0xfff,
                rng.below(0x10000),
                rng.next() & 0xffff_ffff_ffff
            );
            // One user in a hundred signs in from a private address.
            let first = if u % 100 == 7 {
                10
            } else {
                11 + rng.below(200)
            };
            let ip = format!(
                "{first}.{}.{}.{}",
                rng.below(256),
                rng.below(256),
                1 + rng.below(254)
            );
            (device, ip, rng.pick(&USER_AGENTS))
        })
        .collect();
    let mut out: Vec<TrackRequest> = (0..n)
        .map(|i| {
            let u = i % users;
            let (device, ip, ua) = &profiles[u];
            let action = if i % 3 == 0 {
                "withdraw-funds"
            } else {
                "signIn"
            };
            let mut attributes = TrackAttributes {
                device_id: Some(device.clone()),
                ip_address: Some(ip.clone()),
                user_agent: Some((*ua).to_owned()),
                idempotency_key: Some(format!("{tag}-{i:08x}-{:08x}", rng.next() as u32)),
                ..Default::default()
            };
            let amount = match rng.below(100) {
                0..=59 => rng.below(1_000),
                60..=97 => 1_000 + rng.below(20_000),
                _ => 90_000 + rng.below(100_000),
            };
            let destination = match rng.below(100) {
                0..=11 => "crypto",
                12..=15 => "gift-card",
                _ => rng.pick(&DESTINATIONS[..3]),
            };
            let attempts = match rng.below(100) {
                0..=4 => 4 + rng.below(3),
                _ => rng.below(3),
            };
            let custom = &mut attributes.custom;
            custom.insert("amount".into(), CustomValue::Int(amount as i64));
            custom.insert("currency".into(), rng.pick(&CURRENCIES).into());
            custom.insert("destination".into(), destination.into());
            custom.insert("channel".into(), rng.pick(&CHANNELS).into());
            custom.insert("attempts".into(), CustomValue::Int(attempts as i64));
            TrackRequest {
                user_id: format!("user-{u:06}"),
                action: action.into(),
                attributes,
            }
        })
        .collect();
    // Fisher–Yates: distinct identities in a shuffled order.
    for i in (1..out.len()).rev() {
        let j = rng.below(i as u64 + 1) as usize;
        out.swap(i, j);
    }
    out
}

#[allow(dead_code)] // used by benches/riskgate.rs
fn custom_int(r: &TrackRequest, k: &str) -> Option<i64> {
    match r.attributes.custom.get(k)? {
        CustomValue::Int(i) => Some(*i),
        _ => None,
    }
}

#[allow(dead_code)] // used by benches/riskgate.rs
fn custom_str<'a>(r: &'a TrackRequest, k: &str) -> Option<&'a str> {
    match r.attributes.custom.get(k)? {
        CustomValue::String(s) => Some(s),
        _ => None,
    }
}

/// A rule written by hand: the state it matches with, or `None`.
#[allow(dead_code)] // used by benches/riskgate.rs
pub type NativeRule = fn(&TrackRequest) -> Option<State>;

/// [`RULES`] written by hand as Rust closures, in the same order (the shadow rule included).
#[allow(dead_code)] // used by benches/riskgate.rs
pub fn native() -> [NativeRule; 10] {
    fn ua(r: &TrackRequest) -> &str {
        r.attributes.user_agent.as_deref().unwrap_or("")
    }
    [
        |r| {
            (custom_str(r, "destination") == Some("crypto")
                && custom_int(r, "amount").is_some_and(|a| a > 100))
            .then_some(State::ChallengeRequired)
        },
        |r| {
            r.attributes
                .ip_address
                .as_deref()
                .is_some_and(|ip| ip.starts_with("10."))
                .then_some(State::Block)
        },
        |r| {
            (custom_str(r, "channel") == Some("api") && ua(r).contains("curl"))
                .then_some(State::Block)
        },
        |r| {
            custom_int(r, "amount")
                .is_some_and(|a| a > 90_000)
                .then_some(State::Review)
        },
        |r| {
            custom_str(r, "currency")
                .is_some_and(|c| ["KPW", "IRR", "SYP"].contains(&c))
                .then_some(State::Block)
        },
        |r| {
            r.attributes
                .device_id
                .as_deref()
                .is_none_or(|d| d.chars().count() < 8)
                .then_some(State::ChallengeRequired)
        },
        |r| {
            (custom_str(r, "destination") == Some("gift-card")
                && custom_str(r, "currency") != Some("USD"))
            .then_some(State::Review)
        },
        |r| {
            custom_int(r, "attempts")
                .is_some_and(|a| a > 3)
                .then_some(State::ChallengeRequired)
        },
        |r| ua(r).starts_with("HeadlessChrome").then_some(State::Block),
        |r| {
            (custom_str(r, "channel") == Some("web") && ua(r).contains("Safari"))
                .then_some(State::Allow)
        },
    ]
}

#[allow(dead_code)] // used by the command line only
/// The stream as JSON lines, the format `riskgate replay` and `riskgate bench` read.
pub fn jsonl(requests: &[TrackRequest]) -> Vec<u8> {
    let mut out = Vec::with_capacity(requests.len() * 420);
    for r in requests {
        if serde_json::to_writer(&mut out, r).is_ok() {
            out.push(b'\n');
        }
    }
    out
}
