//! A labelled sign-in simulator (feature `simulate`, on with `cli`): a population of users signing in over
//! weeks, and the attackers of the risk-based-authentication literature trying to sign in as them, written as
//! the JSON lines [`replay`](crate::replay) reads, each event with a `label` (`warmup`, `genuine` or `attack`)
//! and a `model` (which behaviour or attacker produced it).
//!
//! `riskgate simulate` writes a log; `riskgate replay --labels` measures a ruleset on it. The same
//! [`Params`] (seed included) always give the same bytes.
//!
//! ```
//! use riskgate::simulate::{simulate, Params};
//!
//! let mut params = Params::default();
//! params.users = 20;
//! params.days = 14;
//! params.warmup_days = 7;
//! let mut a = Vec::new();
//! let counts = simulate(&params, &mut a)?;
//! let mut b = Vec::new();
//! simulate(&params, &mut b)?;
//! assert_eq!(a, b);
//! assert!(counts.genuine > 0 && counts.attacks > 0);
//! # Ok::<(), std::io::Error>(())
//! ```
//!
//! # The model and its assumptions
//! Every address comes from a network of MaxMind's test databases (the City database for places, the
//! Anonymous-IP database for anonymising networks, the ASN database for a few cloud ranges), so GeoIP signals
//! answer for the simulated traffic as they would for real traffic. The test databases are small: most
//! countries are one coarse IPv6 block located at the country's centre, and only a few networks carry an ASN.
//!
//! **Users.** Each user has a home country (weighted towards a few large markets), a home broadband network and
//! address (which the ISP re-assigns about once a month), a mobile network in the same country (a new address
//! from the carrier's pool at every mobile sign-in), and one to three devices (phone, computer, tablet), each a
//! device id and a browser whose version follows its vendor's release cycle (each user updates a few days
//! after release). Users sign in at their own rate (a Poisson process; the mean is `logins_per_week`, each
//! user's rate between 0.3× and 2× of it) and, after some sign-ins, move money or change their email.
//!
//! **Genuine change.** Now and then a device is replaced by a new one or its cookies are cleared (a new device
//! id: `new_device_per_month`); users travel (`trips_per_year`, two to ten days, mostly abroad), and sign in on
//! their phone (roaming on their home carrier, or on a local network) or laptop (on a local network), never
//! before a plane could have landed; a few sign in from a work or café network in their home country. New
//! users join through the whole period (`new_users_per_week`): their first sign-in has no history at all.
//!
//! **Challenges.** Every tracked event is followed by `updateAction` lines with `ifState`: a genuine user
//! completes a challenge (`CHALLENGE_SUCCEEDED`, seconds later) and passes a review (`REVIEW_SUCCEEDED`, hours
//! later); an attacker fails both.
//!
//! **Attackers** (after the warm-up, at uniformly random times, against uniformly random existing users):
//! - `naive`: from a network anywhere in the databases (anonymising networks included), a new device, a common
//!   browser;
//! - `vpn`: from a network in the victim's country, a new device, a common browser;
//! - `targeted`: knows the victim's city and browser: an address in the victim's own broadband network, the
//!   victim's usual user agent exactly (current version), a new device id;
//! - `stuffing`: credential stuffing: one address and one device try many accounts (some of them not
//!   customers at all) a few seconds apart;
//! - `bot`: scripted sign-ins from hosting, cloud and anonymising networks; most send a headless or library
//!   user agent or none, the rest a common browser's.
//!
//! No attacker of the four single-attempt models uses an address the victim itself used (networks and
//! addresses are drawn again, up to 64 times): some test networks have eight addresses, so without this an
//! attacker would often share the victim's own address, which in reality means sharing the household (outside
//! this model). A victim who has used every address of a tiny home network leaves a targeted attacker none
//! other. Credential-stuffing addresses are not checked.
//!
//! **Not modelled** (so a measurement on this log says nothing about them): attackers that have stolen a session
//! rather than a password (no sign-in to judge), what an attacker does after a sign-in that succeeded, attackers
//! that rotate residential proxies per attempt, malware on the victim's own device, shared family devices,
//! diurnal rhythms, and users who fail their own challenges.

use rand_pcg::rand_core::{Rng, SeedableRng};
use rand_pcg::Pcg64Mcg;
use serde::Serialize;
use std::io::{self, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

const DAY_MS: i64 = 86_400_000;
const HOUR_MS: i64 = 3_600_000;
const MINUTE_MS: i64 = 60_000;

/// What to simulate. Every field has a documented default ([`Params::default`]).
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct Params {
    /// The random seed: the same parameters and seed give the same bytes. Default 1.
    pub seed: u64,
    /// Users at the start. Default 1000.
    pub users: u32,
    /// Days simulated, warm-up included. Default 42.
    pub days: u32,
    /// The first days: only genuine sign-ins, labelled `warmup`, so the engine learns users as it would in its
    /// first weeks in production. Default 14.
    pub warmup_days: u32,
    /// Mean sign-ins per user per week. Default 5.
    pub logins_per_week: f64,
    /// Mean new devices (a new one, or cookies cleared) per user per month. Default 0.25.
    pub new_device_per_month: f64,
    /// Mean trips per user per year. Default 3.
    pub trips_per_year: f64,
    /// Share of sign-ins followed by withdrawals (one to three, the first at least 2.5 minutes after the sign-in,
    /// then minutes apart). Default 0.2.
    pub sensitive_share: f64,
    /// New users joining per week, as a share of the starting population. Default 0.01.
    pub new_users_per_week: f64,
    /// Naive attacker sign-ins. Default 300.
    pub naive: u32,
    /// VPN attacker sign-ins. Default 300.
    pub vpn: u32,
    /// Targeted attacker sign-ins. Default 300.
    pub targeted: u32,
    /// Credential-stuffing campaigns. Default 6.
    pub stuffing_campaigns: u32,
    /// Accounts tried per stuffing campaign. Default 50.
    pub stuffing_size: u32,
    /// Bot sign-ins. Default 300.
    pub bots: u32,
    /// The simulated period's start, in epoch milliseconds. Default 2026-01-05T00:00:00Z.
    pub start_ms: i64,
}

impl Default for Params {
    fn default() -> Self {
        Params {
            seed: 1,
            users: 1000,
            days: 42,
            warmup_days: 14,
            logins_per_week: 5.0,
            new_device_per_month: 0.25,
            trips_per_year: 3.0,
            sensitive_share: 0.2,
            new_users_per_week: 0.01,
            naive: 300,
            vpn: 300,
            targeted: 300,
            stuffing_campaigns: 6,
            stuffing_size: 50,
            bots: 300,
            start_ms: 1_767_571_200_000,
        }
    }
}

/// How many events of each label a simulation wrote.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Counts {
    /// Track lines labelled `warmup`.
    pub warmup: u64,
    /// Track lines labelled `genuine`.
    pub genuine: u64,
    /// Track lines labelled `attack`.
    pub attacks: u64,
    /// `updateAction` lines.
    pub updates: u64,
}

/// A network of the test databases: its first address, prefix length, country (`None` when the City database
/// places it nowhere) and whether the Anonymous-IP database flags it.
#[derive(Debug, Clone, Copy)]
struct Net {
    base: &'static str,
    prefix: u8,
    country: Option<&'static str>,
    lat: f64,
    lon: f64,
    /// Read by the test that checks the table against the databases.
    #[cfg_attr(not(test), allow(dead_code))]
    anonymous: bool,
}

const fn net(base: &'static str, prefix: u8, cc: &'static str, lat: f64, lon: f64) -> Net {
    Net {
        base,
        prefix,
        country: Some(cc),
        lat,
        lon,
        anonymous: false,
    }
}

const fn anon(base: &'static str, prefix: u8, country: Option<&'static str>) -> Net {
    Net {
        base,
        prefix,
        country,
        lat: 0.0,
        lon: 0.0,
        anonymous: true,
    }
}

/// Residential, mobile and business networks of the City test database (none flagged anonymous), by country.
const PLACES: &[Net] = &[
    net("216.160.83.56", 29, "US", 47.2513, -122.3149), // Milton, AS209
    net("216.160.83.64", 29, "US", 47.7511, -120.7401), // AS209
    net("214.78.120.0", 22, "US", 32.7405, -117.0935),  // San Diego, AS721
    net("149.101.100.0", 28, "US", 37.751, -97.822),    // AS6167
    net("2001:480:10::", 48, "US", 32.7203, -117.1552), // San Diego
    net("2.2.3.0", 24, "GB", 51.75, -1.25),             // Boxford
    net("2.125.160.216", 29, "GB", 51.75, -1.25),       // Boxford
    net("2a02:d3c0::", 29, "GB", 54.75844, -2.69531),
    net("2a02:d540::", 29, "GB", 54.75844, -2.69531),
    net("89.160.20.112", 28, "SE", 58.4167, 15.6167), // Linköping, AS29518
    net("89.160.20.128", 25, "SE", 58.4167, 15.6167), // Linköping, AS29518
    net("2a02:d040::", 29, "SE", 62.0, 15.0),
    net("2a02:d440::", 29, "SE", 62.0, 15.0),
    net("2a02:d180::", 29, "DE", 51.5, 10.5),
    net("2a02:d480::", 29, "DE", 51.5, 10.5),
    net("2a02:d600::", 29, "DE", 51.5, 10.5),
    net("2a02:cfc0::", 29, "FR", 46.0, 2.0),
    net("2a02:d340::", 29, "FR", 46.0, 2.0),
    net("2a02:d580::", 29, "FR", 46.0, 2.0),
    net("2001:218::", 32, "JP", 35.68536, 139.75309),
    net("2001:240::", 32, "JP", 35.68536, 139.75309),
    net("2a02:e040::", 29, "NL", 52.5, 5.75),
    net("2a02:e1c0::", 29, "NL", 52.5, 5.75),
    net("2a02:d100::", 29, "PL", 52.0, 20.0),
    net("2a02:e140::", 29, "PL", 52.0, 20.0),
    net("214.0.1.0", 24, "AU", -37.8159, 144.9669), // Melbourne, AS721
    net("214.0.0.0", 24, "SG", 1.336, 103.7716),    // Singapore, AS721
    net("2001:220::", 32, "KR", 37.0, 127.5),
    net("2001:230::", 32, "KR", 37.0, 127.5),
    net("2a02:d1c0::", 29, "IT", 42.83333, 12.83333),
    net("2a02:e2c0::", 29, "IT", 42.83333, 12.83333),
    net("2a02:d5c0::", 29, "ES", 40.0, -4.0),
    net("2a02:f4c0::", 29, "ES", 40.0, -4.0),
    net("2a02:d000::", 29, "CH", 47.00016, 8.01427),
    net("2a02:d740::", 29, "CH", 47.00016, 8.01427),
    // Countries where no simulated user lives: destinations for travel and origins for attackers.
    net("175.16.199.0", 24, "CN", 43.88, 125.3228), // Changchun
    net("2001:250::", 31, "CN", 35.0, 105.0),
    net("2a02:d0c0::", 29, "RU", 60.0, 100.0),
    net("2a02:d840::", 29, "RU", 60.0, 100.0),
    net("2a02:d2c0::", 29, "IR", 32.0, 53.0),
    net("2a02:d300::", 29, "UA", 49.0, 32.0),
    net("2a02:d980::", 29, "TR", 39.05901, 34.91155),
    net("202.196.224.0", 20, "PH", 13.0, 122.0),
    net("67.43.156.0", 24, "BT", 27.5, 90.5), // AS35908
    net("2001:2e0::", 32, "HK", 22.25, 114.16667),
    net("2001:238::", 32, "TW", 24.0, 121.0),
    net("2a02:e220::", 30, "SA", 25.0, 45.0),
    net("2a02:e900::", 29, "IE", 53.0, -8.0),
    net("2a02:d400::", 29, "HU", 47.0, 20.0),
    net("2a02:d800::", 29, "RO", 46.0, 25.0),
];

/// Networks the Anonymous-IP test database flags (VPN, Tor, hosting, public proxy), and cloud ranges of the ASN
/// database (not placed by the City database).
const ANONYMOUS: &[Net] = &[
    anon("81.2.69.160", 27, Some("GB")), // London: VPN, hosting, proxy, Tor
    anon("1.2.0.0", 16, None),           // VPN
    anon("1.124.213.1", 32, None),       // Tor exit, VPN
    anon("71.160.223.0", 24, None),      // hosting
    anon("186.30.236.0", 24, None),      // public proxy
    anon("65.0.0.0", 19, None),          // Tor exits
];

/// Cloud ranges of the ASN test database (AS15169 Google; not placed by the City database, not flagged).
const CLOUD: &[Net] = &[Net {
    base: "1.0.0.0",
    prefix: 24,
    country: None,
    lat: 0.0,
    lon: 0.0,
    anonymous: false,
}];

/// Where users live, with weights.
const HOMES: &[(&str, u32)] = &[
    ("US", 30),
    ("GB", 14),
    ("SE", 8),
    ("DE", 10),
    ("FR", 8),
    ("JP", 6),
    ("NL", 5),
    ("PL", 4),
    ("AU", 3),
    ("SG", 3),
    ("KR", 3),
    ("IT", 3),
    ("ES", 2),
    ("CH", 1),
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Phone,
    Computer,
    Tablet,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Browser {
    Chrome,
    Safari,
    Firefox,
    Edge,
    Samsung,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Os {
    Windows,
    Mac,
    Linux,
    Ios,
    Android,
}

/// A browser on an operating system; its version follows the vendor's release cycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Client {
    browser: Browser,
    os: Os,
    /// Days this installation lags behind a release before updating.
    lag_days: i64,
}

impl Client {
    /// Chrome, Edge and Firefox release every four weeks; Safari's minor versions follow the OS, about every
    /// eight weeks.
    fn user_agent(&self, day: i64) -> String {
        let d = (day - self.lag_days).max(0);
        let monthly = 143 + d / 28;
        let safari = 18 + (3 + d / 56) / 10;
        let safari_minor = (3 + d / 56) % 10;
        let ios = format!("{safari}_{safari_minor}");
        match (self.browser, self.os) {
            (Browser::Chrome, Os::Windows) => format!("Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/{monthly}.0.0.0 Safari/537.36"),
            (Browser::Chrome, Os::Mac) => format!("Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/{monthly}.0.0.0 Safari/537.36"),
            (Browser::Chrome, Os::Linux) => format!("Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/{monthly}.0.0.0 Safari/537.36"),
            (Browser::Chrome, _) => format!("Mozilla/5.0 (Linux; Android 14; K) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/{monthly}.0.0.0 Mobile Safari/537.36"),
            (Browser::Edge, _) => format!("Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/{monthly}.0.0.0 Safari/537.36 Edg/{monthly}.0.0.0"),
            (Browser::Firefox, Os::Windows) => format!("Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:{monthly}.0) Gecko/20100101 Firefox/{monthly}.0"),
            (Browser::Firefox, Os::Mac) => format!("Mozilla/5.0 (Macintosh; Intel Mac OS X 10.15; rv:{monthly}.0) Gecko/20100101 Firefox/{monthly}.0"),
            (Browser::Firefox, _) => format!("Mozilla/5.0 (X11; Linux x86_64; rv:{monthly}.0) Gecko/20100101 Firefox/{monthly}.0"),
            (Browser::Safari, Os::Ios) => format!("Mozilla/5.0 (iPhone; CPU iPhone OS {ios} like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/{safari}.{safari_minor} Mobile/15E148 Safari/604.1"),
            (Browser::Safari, _) => format!("Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/{safari}.{safari_minor} Safari/605.1.15"),
            (Browser::Samsung, _) => format!("Mozilla/5.0 (Linux; Android 14; SM-S921B) AppleWebKit/537.36 (KHTML, like Gecko) SamsungBrowser/{}.0 Chrome/{monthly}.0.0.0 Mobile Safari/537.36", 25 + d / 84),
        }
    }
}

/// User agents of scripted clients: headless browsers, HTTP libraries, command-line tools.
const BOT_AGENTS: &[&str] = &[
    "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) HeadlessChrome/143.0.0.0 Safari/537.36",
    "python-requests/2.32.3",
    "curl/8.11.1",
    "Go-http-client/1.1",
    "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)",
    "okhttp/4.12.0",
];

#[derive(Debug, Clone)]
struct Device {
    id: String,
    kind: Kind,
    client: Client,
}

#[derive(Debug, Clone)]
struct User {
    id: String,
    home: &'static str,
    broadband: Net,
    mobile: Net,
    devices: Vec<Device>,
    /// The first day the user exists (0 for the starting population).
    joined_day: i64,
}

/// One output line and when it happens (lines are written in time order, then in the order they were made).
struct Line {
    at_ms: i64,
    seq: u64,
    json: String,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct TrackLine<'a> {
    timestamp: i64,
    user_id: &'a str,
    action: &'a str,
    attributes: Attributes<'a>,
    label: &'a str,
    model: &'a str,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Attributes<'a> {
    idempotency_key: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    device_id: Option<&'a str>,
    ip_address: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    user_agent: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    custom: Option<Custom>,
}

#[derive(Serialize)]
struct Custom {
    amount: i64,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct UpdateLine<'a> {
    timestamp: i64,
    op: &'static str,
    user_id: &'a str,
    action: &'a str,
    idempotency_key: &'a str,
    state: &'static str,
    if_state: &'static str,
}

/// One simulated event, before it becomes lines.
struct Event<'a> {
    at_ms: i64,
    user: &'a str,
    action: &'a str,
    device: Option<&'a str>,
    ip: IpAddr,
    agent: Option<&'a str>,
    amount: Option<i64>,
    label: &'a str,
    model: &'a str,
}

struct Sim {
    rng: Pcg64Mcg,
    lines: Vec<Line>,
    seq: u64,
    counts: Counts,
}

impl Sim {
    fn unit(&mut self) -> f64 {
        (self.rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// A whole number in `0..n` (0 when `n` is 0).
    fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.rng.next_u64()) * u128::from(n)) >> 64) as u64
    }

    fn chance(&mut self, p: f64) -> bool {
        self.unit() < p
    }

    fn range(&mut self, lo: i64, hi: i64) -> i64 {
        lo + self.below(hi.saturating_sub(lo).max(0) as u64 + 1) as i64
    }

    fn pick<'t, T>(&mut self, items: &'t [T]) -> &'t T {
        let i = self.below(items.len() as u64) as usize;
        &items[i.min(items.len().saturating_sub(1))]
    }

    fn weighted<T: Copy>(&mut self, items: &[(T, u32)]) -> T {
        let total: u64 = items.iter().map(|i| u64::from(i.1)).sum();
        let mut r = self.below(total);
        for &(item, w) in items {
            if r < u64::from(w) {
                return item;
            }
            r -= u64::from(w);
        }
        items[items.len() - 1].0
    }

    /// Milliseconds to the next event of a Poisson process with `per_day` events a day.
    fn gap_ms(&mut self, per_day: f64) -> i64 {
        let u = self.unit().max(1e-12);
        ((-u.ln() / per_day.max(1e-9)) * DAY_MS as f64).min(1e15) as i64
    }

    fn id(&mut self, prefix: &str) -> String {
        let a = self.rng.next_u64();
        let b = self.rng.next_u64();
        format!(
            "{prefix}{:08x}-{:04x}-4{:03x}-{:04x}-{:012x}",
            a >> 32,
            (a >> 16) & 0xffff,
            a & 0xfff,
            (b >> 48) & 0x3fff | 0x8000,
            b & 0xffff_ffff_ffff
        )
    }

    /// A random address in `net`.
    fn address(&mut self, net: &Net) -> IpAddr {
        match net.base.parse::<IpAddr>() {
            Ok(IpAddr::V4(v4)) => {
                let host_bits = 32 - u32::from(net.prefix.min(32));
                let span = 1u64 << host_bits;
                let offset = self.below(span) as u32;
                IpAddr::V4(Ipv4Addr::from(u32::from(v4).wrapping_add(offset)))
            }
            Ok(IpAddr::V6(v6)) => {
                let host_bits = 128 - u32::from(net.prefix.min(128));
                let r = (u128::from(self.rng.next_u64()) << 64) | u128::from(self.rng.next_u64());
                let offset = if host_bits >= 128 {
                    r
                } else {
                    r & ((1u128 << host_bits) - 1)
                };
                IpAddr::V6(Ipv6Addr::from(u128::from(v6).wrapping_add(offset)))
            }
            Err(_) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        }
    }

    fn client(&mut self, kind: Kind) -> Client {
        let (browser, os) = match kind {
            Kind::Phone | Kind::Tablet => {
                if self.chance(0.5) {
                    (Browser::Safari, Os::Ios)
                } else if self.chance(0.8) {
                    (Browser::Chrome, Os::Android)
                } else {
                    (Browser::Samsung, Os::Android)
                }
            }
            Kind::Computer => self.weighted(&[
                ((Browser::Chrome, Os::Windows), 40),
                ((Browser::Chrome, Os::Mac), 15),
                ((Browser::Safari, Os::Mac), 12),
                ((Browser::Edge, Os::Windows), 13),
                ((Browser::Firefox, Os::Windows), 8),
                ((Browser::Firefox, Os::Linux), 4),
                ((Browser::Chrome, Os::Linux), 4),
                ((Browser::Firefox, Os::Mac), 4),
            ]),
        };
        Client {
            browser,
            os,
            lag_days: self.range(0, 10),
        }
    }

    fn device(&mut self, kind: Kind) -> Device {
        Device {
            id: self.id(""),
            kind,
            client: self.client(kind),
        }
    }

    fn networks_in(country: &str) -> Vec<Net> {
        PLACES
            .iter()
            .filter(|n| n.country == Some(country))
            .copied()
            .collect()
    }

    fn user(&mut self, n: u32, joined_day: i64) -> User {
        let home = self.weighted(HOMES);
        let nets = Self::networks_in(home);
        let broadband = *self.pick(&nets);
        let mobile = *self.pick(&nets);
        let mut devices = Vec::new();
        if self.chance(0.85) {
            devices.push(self.device(Kind::Phone));
        }
        if devices.is_empty() || self.chance(0.7) {
            devices.push(self.device(Kind::Computer));
        }
        if self.chance(0.15) {
            devices.push(self.device(Kind::Tablet));
        }
        User {
            id: format!("user-{n:06}"),
            home,
            broadband,
            mobile,
            devices,
            joined_day,
        }
    }

    fn emit(&mut self, e: &Event<'_>, key: &str) -> io::Result<()> {
        let ip = e.ip.to_string();
        let line = TrackLine {
            timestamp: e.at_ms,
            user_id: e.user,
            action: e.action,
            attributes: Attributes {
                idempotency_key: key,
                device_id: e.device,
                ip_address: &ip,
                user_agent: e.agent,
                custom: e.amount.map(|amount| Custom { amount }),
            },
            label: e.label,
            model: e.model,
        };
        let json = serde_json::to_string(&line).map_err(io::Error::other)?;
        self.push(e.at_ms, json);
        match e.label {
            "attack" => self.counts.attacks += 1,
            "warmup" => self.counts.warmup += 1,
            _ => self.counts.genuine += 1,
        }
        let genuine = e.label != "attack";
        let (challenge, review) = if genuine {
            (
                ("CHALLENGE_SUCCEEDED", self.range(15_000, 120_000)),
                ("REVIEW_SUCCEEDED", self.range(HOUR_MS / 2, 6 * HOUR_MS)),
            )
        } else {
            (
                ("CHALLENGE_FAILED", self.range(30_000, 300_000)),
                ("REVIEW_FAILED", self.range(HOUR_MS / 2, 6 * HOUR_MS)),
            )
        };
        for ((state, delay), if_state) in [(challenge, "CHALLENGE_REQUIRED"), (review, "REVIEW")] {
            let at = e.at_ms + delay;
            let update = UpdateLine {
                timestamp: at,
                op: "updateAction",
                user_id: e.user,
                action: e.action,
                idempotency_key: key,
                state,
                if_state,
            };
            let json = serde_json::to_string(&update).map_err(io::Error::other)?;
            self.push(at, json);
            self.counts.updates += 1;
        }
        Ok(())
    }

    fn push(&mut self, at_ms: i64, json: String) {
        self.seq += 1;
        self.lines.push(Line {
            at_ms,
            seq: self.seq,
            json,
        });
    }

    fn key(&mut self) -> String {
        format!("sim-{:08}", self.seq + 1)
    }
}

/// A trip: when the user leaves, arrives (no sign-in in between) and comes back, and where they are.
struct Trip {
    leave_ms: i64,
    arrive_ms: i64,
    back_ms: i64,
    net: Net,
}

/// Writes the simulated log to `out`: track lines and `updateAction` lines in time order, one per line.
pub fn simulate(p: &Params, out: &mut impl Write) -> io::Result<Counts> {
    let mut sim = Sim {
        rng: Pcg64Mcg::seed_from_u64(p.seed),
        lines: Vec::new(),
        seq: 0,
        counts: Counts::default(),
    };
    let days = i64::from(p.days.max(1));
    let warmup_ms = i64::from(p.warmup_days.min(p.days)) * DAY_MS;
    let end_ms = days * DAY_MS;
    let mut users: Vec<User> = (0..p.users).map(|n| sim.user(n, 0)).collect();
    let joiners = (f64::from(p.users) * p.new_users_per_week * days as f64 / 7.0).round() as u32;
    for n in 0..joiners {
        let day = sim.range(1, days - 1);
        let u = sim.user(p.users + n, day);
        users.push(u);
    }
    let mut used = Vec::with_capacity(users.len());
    for user in &users {
        used.push(genuine(&mut sim, p, user, warmup_ms, end_ms)?);
    }
    attacks(&mut sim, p, &users, &used, warmup_ms, end_ms)?;
    let Sim {
        mut lines, counts, ..
    } = sim;
    lines.sort_by_key(|l| (l.at_ms, l.seq));
    for l in &lines {
        out.write_all(l.json.as_bytes())?;
        out.write_all(b"\n")?;
    }
    Ok(counts)
}

fn distance_km(a: &Net, b: &Net) -> f64 {
    let (la1, lo1, la2, lo2) = (
        a.lat.to_radians(),
        a.lon.to_radians(),
        b.lat.to_radians(),
        b.lon.to_radians(),
    );
    let h = ((la2 - la1) / 2.0).sin().powi(2)
        + la1.cos() * la2.cos() * ((lo2 - lo1) / 2.0).sin().powi(2);
    2.0 * 6371.0 * h.sqrt().asin()
}

/// Simulates one user's genuine actions; returns every address the user signed in from.
fn genuine(
    sim: &mut Sim,
    p: &Params,
    u: &User,
    warmup_ms: i64,
    end_ms: i64,
) -> io::Result<Vec<IpAddr>> {
    let mut devices = u.devices.clone();
    let mut seen = vec![false; devices.len()];
    let rate = p.logins_per_week / 7.0 * (0.3 + 1.7 * sim.unit());
    let new_device_per_login = p.new_device_per_month / 30.0 / rate.max(1e-9);
    let mut home_ip = sim.address(&u.broadband);
    let mut used: Vec<IpAddr> = Vec::new();
    let mut trips = Vec::new();
    let mut t = u.joined_day * DAY_MS;
    loop {
        t += sim.gap_ms(p.trips_per_year / 365.0);
        if t >= end_ms {
            break;
        }
        let net = if sim.chance(0.8) {
            let abroad: Vec<Net> = PLACES
                .iter()
                .filter(|n| n.country != Some(u.home))
                .copied()
                .collect();
            *sim.pick(&abroad)
        } else {
            *sim.pick(&Sim::networks_in(u.home))
        };
        let flight =
            (distance_km(&u.broadband, &net) / 800.0 * HOUR_MS as f64) as i64 + 2 * HOUR_MS;
        let back = t + sim.range(2, 10) * DAY_MS;
        trips.push(Trip {
            leave_ms: t,
            arrive_ms: t + flight,
            back_ms: back,
            net,
        });
        t = back + flight;
    }
    let mut t = u.joined_day * DAY_MS + sim.range(0, DAY_MS);
    let mut first = true;
    while t < end_ms {
        let day = t / DAY_MS;
        let trip = trips.iter().find(|tr| tr.leave_ms <= t && t < tr.back_ms);
        let in_flight = trips.iter().any(|tr| {
            (tr.leave_ms <= t && t < tr.arrive_ms)
                || (tr.back_ms <= t && t < tr.back_ms + (tr.arrive_ms - tr.leave_ms))
        });
        if in_flight {
            t += sim.gap_ms(rate);
            continue;
        }
        // The ISP re-assigns the broadband address about once a month.
        if sim.chance(1.0 / (30.0 * rate).max(1.0)) {
            home_ip = sim.address(&u.broadband);
        }
        let mut new_device = false;
        if !first && sim.chance(new_device_per_login) {
            let i = sim.below(devices.len() as u64) as usize;
            if sim.chance(0.5) {
                // Cookies cleared or the app reinstalled: same browser, new id.
                devices[i].id = sim.id("");
            } else {
                let kind = devices[i].kind;
                devices[i] = sim.device(kind);
            }
            seen[i] = false;
            new_device = true;
        }
        let choices: Vec<(usize, u32)> = devices
            .iter()
            .enumerate()
            .map(|(i, d)| {
                let w = match (d.kind, trip.is_some()) {
                    (Kind::Phone, false) => 5,
                    (Kind::Computer, false) => 4,
                    (Kind::Tablet, false) => 1,
                    (Kind::Phone, true) => 7,
                    (Kind::Computer, true) => 3,
                    (Kind::Tablet, true) => 0,
                };
                (i, w)
            })
            .collect();
        let i = if new_device {
            sim.below(devices.len() as u64) as usize
        } else if choices.iter().all(|c| c.1 == 0) {
            0
        } else {
            sim.weighted(&choices)
        };
        let dev = &devices[i];
        let new_device = !seen[i];
        seen[i] = true;
        let (ip, model) = match (trip, dev.kind) {
            (Some(_), Kind::Phone) if sim.chance(0.4) => (sim.address(&u.mobile), "travel"),
            (Some(tr), _) => (sim.address(&tr.net), "travel"),
            (None, Kind::Phone) if sim.chance(0.5) => (sim.address(&u.mobile), "home"),
            (None, _) if sim.chance(0.05) => {
                let nets = Sim::networks_in(u.home);
                let net = *sim.pick(&nets);
                (sim.address(&net), "home")
            }
            (None, _) => (home_ip, "home"),
        };
        let model = if first && u.joined_day > 0 {
            "enrolment"
        } else if new_device && model == "home" {
            "new-device"
        } else {
            model
        };
        let label = if t < warmup_ms { "warmup" } else { "genuine" };
        let agent = dev.client.user_agent(day);
        let device = dev.id.clone();
        used.push(ip);
        let key = sim.key();
        sim.emit(
            &Event {
                at_ms: p.start_ms + t,
                user: &u.id,
                action: "signIn",
                device: Some(&device),
                ip,
                agent: Some(&agent),
                amount: None,
                label,
                model,
            },
            &key,
        )?;
        if sim.chance(p.sensitive_share) {
            // The first a few minutes after signing in (after any challenge), the next minutes apart.
            let mut at = t + 2 * MINUTE_MS;
            for _ in 0..sim.range(1, 3) {
                at += sim.range(MINUTE_MS / 2, 10 * MINUTE_MS);
                let amount = (10.0 * (sim.unit() * 6.0).exp()) as i64;
                let key = sim.key();
                sim.emit(
                    &Event {
                        at_ms: p.start_ms + at,
                        user: &u.id,
                        action: "withdraw-funds",
                        device: Some(&device),
                        ip,
                        agent: Some(&agent),
                        amount: Some(amount),
                        label: if at < warmup_ms { "warmup" } else { "genuine" },
                        model: "sensitive",
                    },
                    &key,
                )?;
            }
            t = at;
        }
        first = false;
        t += sim.gap_ms(rate);
    }
    used.sort_unstable();
    used.dedup();
    Ok(used)
}

/// A common browser as the population has them (attackers who do not know the victim's).
fn common_agent(sim: &mut Sim, day: i64) -> String {
    let kind = if sim.chance(0.5) {
        Kind::Phone
    } else {
        Kind::Computer
    };
    sim.client(kind).user_agent(day)
}

fn attacks(
    sim: &mut Sim,
    p: &Params,
    users: &[User],
    used: &[Vec<IpAddr>],
    warmup_ms: i64,
    end_ms: i64,
) -> io::Result<()> {
    if users.is_empty() || end_ms <= warmup_ms {
        return Ok(());
    }
    let anywhere: Vec<Net> = PLACES.iter().chain(ANONYMOUS).copied().collect();
    let hosting: Vec<Net> = ANONYMOUS.iter().chain(CLOUD).copied().collect();
    // A victim who exists at time `t`.
    let victim = |sim: &mut Sim, t: i64| -> usize {
        for _ in 0..64 {
            let i = sim.below(users.len() as u64) as usize;
            if users[i].joined_day * DAY_MS <= t {
                return i;
            }
        }
        0
    };
    let models: [(&str, u32); 4] = [
        ("naive", p.naive),
        ("vpn", p.vpn),
        ("targeted", p.targeted),
        ("bot", p.bots),
    ];
    for (model, n) in models {
        for _ in 0..n {
            let t = sim.range(warmup_ms, end_ms - 1);
            let day = t / DAY_MS;
            let vi = victim(sim, t);
            let v = &users[vi];
            let nets: Vec<Net> = match model {
                "naive" => anywhere.clone(),
                "vpn" => {
                    let mut nets = Sim::networks_in(v.home);
                    nets.extend(ANONYMOUS.iter().filter(|n| n.country == Some(v.home)));
                    nets
                }
                "targeted" => vec![v.broadband],
                _ => hosting.clone(),
            };
            // Not an address the victim used: the test networks are so small (some have 8 addresses) that an
            // attacker would otherwise share the victim's own, which means sharing the household. (A victim
            // who used every address of a tiny network leaves a targeted attacker no other.)
            let own = used.get(vi).map_or(&[][..], Vec::as_slice);
            let first = *sim.pick(&nets);
            let mut ip = sim.address(&first);
            for _ in 0..64 {
                if own.binary_search(&ip).is_err() {
                    break;
                }
                let net = *sim.pick(&nets);
                ip = sim.address(&net);
            }
            let (device, agent) = match model {
                "naive" | "vpn" => (Some(sim.id("")), Some(common_agent(sim, day))),
                // The victim's usual browser: the first device they had.
                "targeted" => (Some(sim.id("")), Some(v.devices[0].client.user_agent(day))),
                _ => {
                    let agent = if sim.chance(0.7) {
                        if sim.chance(0.15) {
                            None
                        } else {
                            Some((*sim.pick(BOT_AGENTS)).to_owned())
                        }
                    } else {
                        Some(common_agent(sim, day))
                    };
                    let device = if sim.chance(0.5) {
                        Some(sim.id(""))
                    } else {
                        None
                    };
                    (device, agent)
                }
            };
            let key = sim.key();
            sim.emit(
                &Event {
                    at_ms: p.start_ms + t,
                    user: &v.id,
                    action: "signIn",
                    device: device.as_deref(),
                    ip,
                    agent: agent.as_deref(),
                    amount: None,
                    label: "attack",
                    model,
                },
                &key,
            )?;
        }
    }
    for c in 0..p.stuffing_campaigns {
        let mut t = sim.range(warmup_ms, end_ms - 1);
        let net = *sim.pick(&anywhere);
        let ip = sim.address(&net);
        let device = sim.id("");
        let agent = common_agent(sim, t / DAY_MS);
        for k in 0..p.stuffing_size {
            t += sim.range(1_000, 20_000);
            // A leaked list holds customers and strangers alike.
            let user = if sim.chance(0.6) {
                users[victim(sim, t)].id.clone()
            } else {
                format!("stranger-{c:03}-{k:05}")
            };
            let key = sim.key();
            sim.emit(
                &Event {
                    at_ms: p.start_ms + t,
                    user: &user,
                    action: "signIn",
                    device: Some(&device),
                    ip,
                    agent: Some(&agent),
                    amount: None,
                    label: "attack",
                    model: "stuffing",
                },
                &key,
            )?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_stay_in_their_network() {
        let mut sim = Sim {
            rng: Pcg64Mcg::seed_from_u64(7),
            lines: Vec::new(),
            seq: 0,
            counts: Counts::default(),
        };
        for n in PLACES.iter().chain(ANONYMOUS).chain(CLOUD) {
            let base: IpAddr = n.base.parse().unwrap_or(IpAddr::V4(Ipv4Addr::BROADCAST));
            for _ in 0..50 {
                match (base, sim.address(n)) {
                    (IpAddr::V4(b), IpAddr::V4(a)) => {
                        let mask = u32::MAX.checked_shl(32 - u32::from(n.prefix)).unwrap_or(0);
                        assert_eq!(u32::from(a) & mask, u32::from(b), "{a} in {}", n.base);
                    }
                    (IpAddr::V6(b), IpAddr::V6(a)) => {
                        let mask = u128::MAX
                            .checked_shl(128 - u32::from(n.prefix))
                            .unwrap_or(0);
                        assert_eq!(u128::from(a) & mask, u128::from(b), "{a} in {}", n.base);
                    }
                    (b, a) => panic!("{a} and {b} differ in family"),
                }
            }
        }
    }

    /// Every network answers in the test databases as the table says: its country from the City database,
    /// its flag from the Anonymous-IP database.
    #[test]
    fn networks_answer_in_the_test_databases() {
        use crate::signals::geo::{open, Geo, Kind};
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("starter/geoip");
        let geo = Geo {
            city: open(&dir.join("GeoIP2-City-Test.mmdb"), Kind::City).ok(),
            asn: None,
            anonymous: open(
                &dir.join("GeoIP2-Anonymous-IP-Test.mmdb"),
                Kind::AnonymousIp,
            )
            .ok(),

            ..Geo::default()
        };
        assert!(geo.city.is_some() && geo.anonymous.is_some());
        let mut sim = Sim {
            rng: Pcg64Mcg::seed_from_u64(3),
            lines: Vec::new(),
            seq: 0,
            counts: Counts::default(),
        };
        for n in PLACES.iter().chain(ANONYMOUS).chain(CLOUD) {
            for _ in 0..50 {
                let ip = sim.address(n);
                let place = geo.place(ip);
                let country = place.as_ref().and_then(|p| p.country.as_deref());
                assert_eq!(country, n.country, "{ip} in {}/{}", n.base, n.prefix);
                if n.country.is_some() && !n.anonymous {
                    let (lat, lon) = place.and_then(|p| p.location).unwrap_or((f64::NAN, 0.0));
                    assert!(
                        (lat - n.lat).abs() < 0.01 && (lon - n.lon).abs() < 0.01,
                        "{ip}"
                    );
                }
                assert_eq!(geo.is_anonymous(ip).unwrap_or(false), n.anonymous, "{ip}");
            }
        }
    }
}
