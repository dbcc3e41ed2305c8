//! Geography from MaxMind databases (`[geoip]` in `riskgate.toml`), and great-circle distances for travel.
//!
//! Databases are read into memory when the ruleset loads; a lookup is a walk of the database's search tree
//! plus decoding of the few fields rules can ask for.

use maxminddb::{geoip2, path, Reader};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::config::GeoipConfig;
use crate::error::Diagnostic;

/// The MaxMind databases a ruleset uses.
#[derive(Default)]
pub(crate) struct Geo {
    pub city: Option<Reader<Vec<u8>>>,
    pub asn: Option<Reader<Vec<u8>>>,
    pub anonymous: Option<Reader<Vec<u8>>>,
    /// Recent answers of `asn` (it lives and goes with the databases, so a reload starts it empty; without an
    /// ASN database it holds nothing).
    pub asn_cache: AsnCache,
}

/// How many addresses [`AsnCache`] remembers (direct-mapped, 32 bytes each: 128 KB per ruleset).
const ASN_CACHE_SLOTS: usize = 4096;

/// A lock-free, direct-mapped memory of recent address → ASN answers, shared by every thread deciding with one
/// ruleset: a walk of the ASN database's tree and the decoding of its record cost about 700 instructions, and a
/// user's addresses recur.
///
/// An entry is for one address, or for a whole network (an IPv4 /24, an IPv6 /48) when the database's answer
/// for the address came from a network at least that wide, so the answer is the same for every address in it:
/// a mobile user's addresses differ on each sign-in, but within a few such networks.
///
/// Each slot is a tiny sequence lock: a version (odd while a writer fills the slot) and the address (IPv4 as
/// its IPv4-mapped IPv6 form, a network as its first address) with its answer and its prefix length. A reader
/// that sees the version change, or odd, misses and looks the address up; a writer that finds the slot busy
/// skips remembering. So a hit is always the answer for the address or network asked; entries that share a
/// slot only evict each other.
pub(crate) struct AsnCache(Box<[AsnSlot]>);

#[derive(Default)]
struct AsnSlot {
    version: AtomicU64,
    hi: AtomicU64,
    lo: AtomicU64,
    /// 0 for an empty slot; otherwise the prefix length of the entry ([`EXACT`] for one address) shifted by
    /// [`PREFIX_SHIFT`], or'd with 1 for "the database has no ASN for it" or else with the ASN plus 2.
    answer: AtomicU64,
}

/// The prefix length of an entry for one address (IPv4 addresses are keyed in their IPv6 form).
const EXACT: u8 = 128;
/// The prefix length of an entry for an IPv4 /24, in the IPv6 form of the address.
const V4_NETWORK: u8 = 96 + 24;
/// The prefix length of an entry for an IPv6 /48.
const V6_NETWORK: u8 = 48;
/// Where an entry's prefix length sits in [`AsnSlot::answer`] (above any ASN plus 2).
const PREFIX_SHIFT: u32 = 40;

/// The first address of `ip`'s network of `prefix` bits.
fn network(ip: u128, prefix: u8) -> u128 {
    ip.checked_shr(128 - u32::from(prefix))
        .and_then(|n| n.checked_shl(128 - u32::from(prefix)))
        .unwrap_or(0)
}

/// Empty, and remembering nothing (for a ruleset without an ASN database: no memory spent).
impl Default for AsnCache {
    fn default() -> Self {
        AsnCache(Box::default())
    }
}

impl AsnCache {
    /// A cache of [`ASN_CACHE_SLOTS`] slots.
    fn new() -> Self {
        AsnCache((0..ASN_CACHE_SLOTS).map(|_| AsnSlot::default()).collect())
    }

    fn slot(&self, ip: u128) -> Option<&AsnSlot> {
        let folded = (ip as u64) ^ ((ip >> 64) as u64).rotate_left(29);
        // Fibonacci hashing: the top bits of the product pick the slot.
        let i = (folded.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 52) as usize;
        self.0.get(i % ASN_CACHE_SLOTS)
    }

    /// The remembered answer for `ip` (an address when `prefix` is [`EXACT`], else the first address of a
    /// network of `prefix` bits): `Some(answer)` on a hit.
    fn get(&self, ip: u128, prefix: u8) -> Option<Option<u32>> {
        let s = self.slot(ip)?;
        let v = s.version.load(Ordering::Acquire);
        if v % 2 == 1 {
            return None;
        }
        let (hi, lo, answer) = (
            s.hi.load(Ordering::Relaxed),
            s.lo.load(Ordering::Relaxed),
            s.answer.load(Ordering::Relaxed),
        );
        std::sync::atomic::fence(Ordering::Acquire);
        if s.version.load(Ordering::Relaxed) != v
            || answer >> PREFIX_SHIFT != u64::from(prefix)
            || (u128::from(hi) << 64 | u128::from(lo)) != ip
        {
            return None;
        }
        Some(match answer & ((1 << PREFIX_SHIFT) - 1) {
            1 => None,
            n => u32::try_from(n.saturating_sub(2)).ok(),
        })
    }

    fn put(&self, ip: u128, prefix: u8, number: Option<u32>) {
        let Some(s) = self.slot(ip) else { return };
        let v = s.version.load(Ordering::Relaxed);
        if v % 2 == 1
            || s.version
                .compare_exchange(v, v + 1, Ordering::Acquire, Ordering::Relaxed)
                .is_err()
        {
            return;
        }
        std::sync::atomic::fence(Ordering::Release);
        s.hi.store((ip >> 64) as u64, Ordering::Relaxed);
        s.lo.store(ip as u64, Ordering::Relaxed);
        s.answer.store(
            u64::from(prefix) << PREFIX_SHIFT | number.map_or(1, |n| u64::from(n) + 2),
            Ordering::Relaxed,
        );
        s.version.store(v + 2, Ordering::Release);
    }
}

/// What the city database says about an address.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Place {
    /// ISO 3166-1 alpha-2 code.
    pub country: Option<Box<str>>,
    /// Latitude and longitude, in degrees.
    pub location: Option<(f64, f64)>,
}

/// Which database a `[geoip]` key names, and the database types it accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    City,
    Asn,
    AnonymousIp,
}

impl Kind {
    pub fn key(self) -> &'static str {
        match self {
            Kind::City => "city",
            Kind::Asn => "asn",
            Kind::AnonymousIp => "anonymous_ip",
        }
    }

    fn accepts(self, database_type: &str) -> bool {
        match self {
            Kind::City => ["City", "Country", "Enterprise"]
                .iter()
                .any(|t| database_type.contains(t)),
            Kind::Asn => database_type.contains("ASN") || database_type.contains("ISP"),
            Kind::AnonymousIp => database_type.contains("Anonymous-IP"),
        }
    }
}

impl Geo {
    /// Opens the `[geoip]` databases, with paths relative to the rules folder (or the current directory for a
    /// ruleset built in code). A database that cannot be opened is a problem on its `[geoip]` line in `file`.
    pub fn open_all(
        geoip: &GeoipConfig,
        file: &str,
        dir: Option<&Path>,
        problems: &mut Vec<Diagnostic>,
    ) -> Geo {
        let mut one = |entry: &Option<(String, usize, usize)>, kind: Kind| {
            let (path, line, column) = entry.as_ref()?;
            let full = match dir {
                Some(d) => d.join(path),
                None => PathBuf::from(path),
            };
            open(&full, kind)
                .map_err(|message| {
                    problems.push(Diagnostic::new(file.to_owned(), *line, *column, message))
                })
                .ok()
        };
        // Opened in this order, so that problems are reported in it.
        let city = one(&geoip.city, Kind::City);
        let asn = one(&geoip.asn, Kind::Asn);
        let anonymous = one(&geoip.anonymous_ip, Kind::AnonymousIp);
        Geo {
            city,
            asn_cache: if asn.is_some() {
                AsnCache::new()
            } else {
                AsnCache::default()
            },
            asn,
            anonymous,
        }
    }
}

/// Opens a database and checks it is of the kind its key names.
pub(crate) fn open(path: &Path, kind: Kind) -> Result<Reader<Vec<u8>>, String> {
    let bytes = crate::files::read(path, crate::files::Kind::Geoip).map_err(|e| match e {
        crate::files::ReadError::Io(e) => format!(
            "`[geoip] {}`: cannot open `{}`: {e}",
            kind.key(),
            path.display()
        ),
        other => format!(
            "`[geoip] {}`: {}",
            kind.key(),
            other.message(path, crate::files::Kind::Geoip)
        ),
    })?;
    let reader = Reader::from_source(bytes).map_err(|e| {
        format!(
            "`[geoip] {}`: cannot open `{}`: {e}",
            kind.key(),
            path.display()
        )
    })?;
    let t = reader.metadata().database_type.clone();
    if !kind.accepts(&t) {
        return Err(format!(
            "`[geoip] {}`: `{}` is a `{t}` database, not a {} database",
            kind.key(),
            path.display(),
            match kind {
                Kind::City => "City or Country",
                Kind::Asn => "ASN or ISP",
                Kind::AnonymousIp => "Anonymous IP",
            }
        ));
    }
    Ok(reader)
}

impl Geo {
    /// Whether any database is configured.
    pub fn any(&self) -> bool {
        self.city.is_some() || self.asn.is_some() || self.anonymous.is_some()
    }

    /// The place of `ip`, if the city database has it.
    ///
    /// Only the fields rules use are decoded (`decode_path`): a lookup costs about a third of decoding the whole
    /// record with its names in every language. The city name is read separately, by [`Geo::city`].
    pub fn place(&self, ip: IpAddr) -> Option<Place> {
        let r = self.city.as_ref()?.lookup(ip).ok()?;
        if !r.has_data() {
            return None;
        }
        let text = |p: &[maxminddb::PathElement<'_>]| -> Option<Box<str>> {
            r.decode_path::<&str>(p).ok().flatten().map(Box::from)
        };
        let number = |p: &[maxminddb::PathElement<'_>]| -> Option<f64> {
            r.decode_path::<f64>(p)
                .ok()
                .flatten()
                .filter(|v| v.is_finite())
        };
        let lat = number(&path!["location", "latitude"]);
        let lon = number(&path!["location", "longitude"]);
        Some(Place {
            country: text(&path!["country", "iso_code"]),
            location: lat.zip(lon),
        })
    }

    /// The English name of the city of `ip`, if the city database has it.
    pub fn city(&self, ip: IpAddr) -> Option<Box<str>> {
        let r = self.city.as_ref()?.lookup(ip).ok()?;
        let name: Option<&str> = r.decode_path(&path!["city", "names", "en"]).ok()?;
        name.map(Box::from)
    }

    /// The autonomous system number of `ip`, if the ASN database has it. Answers are remembered in
    /// [`Geo::asn_cache`], for the address's whole /24 (IPv4) or /48 (IPv6) when the database says the same for
    /// all of it.
    pub fn asn(&self, ip: IpAddr) -> Option<u32> {
        let db = self.asn.as_ref()?;
        let (key, wide) = match ip {
            IpAddr::V4(a) => (u128::from(a.to_ipv6_mapped()), V4_NETWORK),
            IpAddr::V6(a) => (u128::from(a), V6_NETWORK),
        };
        let net = network(key, wide);
        if let Some(hit) = self.asn_cache.get(net, wide) {
            return hit;
        }
        if let Some(hit) = self.asn_cache.get(key, EXACT) {
            return hit;
        }
        let Ok(r) = db.lookup(ip) else {
            self.asn_cache.put(key, EXACT, None);
            return None;
        };
        let number = r
            .decode_path::<u32>(&path!["autonomous_system_number"])
            .ok()
            .flatten();
        // The tree's answer came from a network of this many bits, in the family of the address looked up.
        let from = r
            .network()
            .ok()
            .filter(|n| n.is_ipv4() == ip.is_ipv4())
            .map(|n| n.prefix() + if ip.is_ipv4() { 96 } else { 0 });
        if from.is_some_and(|bits| bits <= wide) {
            self.asn_cache.put(net, wide, number);
        } else {
            self.asn_cache.put(key, EXACT, number);
        }
        number
    }

    /// Whether `ip` is an anonymous network (VPN, proxy, hosting, Tor exit); `None` without the database.
    pub fn is_anonymous(&self, ip: IpAddr) -> Option<bool> {
        let db = self.anonymous.as_ref()?;
        let Ok(r) = db.lookup(ip) else {
            return Some(false);
        };
        let a: Option<geoip2::AnonymousIp> = r.decode().ok().flatten();
        Some(a.is_some_and(|a| {
            a.is_anonymous.unwrap_or(false)
                || a.is_anonymous_vpn.unwrap_or(false)
                || a.is_public_proxy.unwrap_or(false)
                || a.is_tor_exit_node.unwrap_or(false)
                || a.is_residential_proxy.unwrap_or(false)
                || a.is_hosting_provider.unwrap_or(false)
        }))
    }
}

/// Mean Earth radius (IUGG), in km.
const EARTH_RADIUS_KM: f64 = 6371.0088;

/// Great-circle distance between two points given in degrees, in km (haversine formula).
pub(crate) fn distance_km(a: (f64, f64), b: (f64, f64)) -> f64 {
    let (lat1, lon1) = (a.0.to_radians(), a.1.to_radians());
    let (lat2, lon2) = (b.0.to_radians(), b.1.to_radians());
    let h = ((lat2 - lat1) / 2.0).sin().powi(2)
        + lat1.cos() * lat2.cos() * ((lon2 - lon1) / 2.0).sin().powi(2);
    2.0 * EARTH_RADIUS_KM * h.sqrt().min(1.0).asin()
}

#[cfg(test)]
mod tests {
    use super::{distance_km, network, AsnCache, Geo, Kind, EXACT, V4_NETWORK};
    use maxminddb::path;
    use std::net::IpAddr;

    #[test]
    fn a_cached_asn_is_the_databases_answer_for_every_address() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("starter/geoip");
        let geo = Geo {
            asn: super::open(&dir.join("GeoLite2-ASN-Test.mmdb"), Kind::Asn).ok(),
            asn_cache: AsnCache::new(),
            ..Geo::default()
        };
        let Some(db) = geo.asn.as_ref() else {
            panic!("the test ASN database opens");
        };
        let direct = |ip: IpAddr| {
            db.lookup(ip).ok().and_then(|r| {
                r.decode_path::<u32>(&path!["autonomous_system_number"])
                    .ok()
                    .flatten()
            })
        };
        // Addresses at, inside, and just past the edges of the database's networks, each asked twice (the
        // second answer from the cache), and in an order that fills networks before their neighbours.
        let mut addresses = Vec::new();
        for n in db
            .networks(Default::default())
            .into_iter()
            .flatten()
            .flatten()
        {
            let Ok(net) = n.network() else { continue };
            match net.network() {
                IpAddr::V4(a) => {
                    let a = u32::from(a);
                    for d in [0, 1, 255, 256, 300] {
                        addresses.push(IpAddr::V4(a.wrapping_add(d).into()));
                        addresses.push(IpAddr::V4(a.wrapping_sub(d).into()));
                    }
                }
                IpAddr::V6(a) => {
                    let a = u128::from(a);
                    for d in [0, 1, 1 << 70, 1 << 80, 3 << 79] {
                        addresses.push(IpAddr::V6(a.wrapping_add(d).into()));
                        addresses.push(IpAddr::V6(a.wrapping_sub(d).into()));
                    }
                }
            }
        }
        assert!(addresses.len() > 100, "{}", addresses.len());
        let mut found = 0;
        for round in 0..2 {
            for ip in &addresses {
                let want = direct(*ip);
                found += usize::from(want.is_some());
                assert_eq!(geo.asn(*ip), want, "{ip} (round {round})");
            }
        }
        assert!(found > 0);
    }

    #[test]
    fn the_asn_cache_answers_only_for_its_own_address() {
        let c = super::AsnCache::new();
        let (a, b) = (0xffff_0102_0304u128, 0x2001_0db8_u128 << 96);
        assert_eq!(c.get(a, EXACT), None);
        c.put(a, EXACT, Some(209));
        c.put(b, EXACT, None);
        assert_eq!(c.get(a, EXACT), Some(Some(209)));
        assert_eq!(c.get(b, EXACT), Some(None), "no ASN is an answer too");
        // An address's entry is not its network's, nor the other way round.
        assert_eq!(c.get(a, V4_NETWORK), None);
        let net = network(a, V4_NETWORK);
        assert_eq!(net, 0xffff_0102_0300);
        c.put(net, V4_NETWORK, Some(7));
        assert_eq!(c.get(net, EXACT), None);
        assert_eq!(c.get(net, V4_NETWORK), Some(Some(7)));
        // Thousands of addresses through 4,096 slots: every hit is the address's own answer.
        for i in 0..20_000u128 {
            c.put(i << 40, EXACT, u32::try_from(i).ok());
        }
        for i in 0..20_000u128 {
            if let Some(answer) = c.get(i << 40, EXACT) {
                assert_eq!(answer, u32::try_from(i).ok());
            }
        }
        // Every ASN fits, the largest too; an empty cache remembers nothing.
        c.put(7, EXACT, Some(u32::MAX));
        assert_eq!(c.get(7, EXACT), Some(Some(u32::MAX)));
        let empty = super::AsnCache::default();
        empty.put(a, EXACT, Some(1));
        assert_eq!(empty.get(a, EXACT), None);
    }

    #[test]
    fn known_distances() {
        let london = (51.5142, -0.0931);
        let changchun = (43.88, 125.3228);
        let d = distance_km(london, changchun);
        assert!((7_500.0..8_500.0).contains(&d), "{d}");
        assert!(distance_km(london, london) < 1e-9);
        let antipode = distance_km((0.0, 0.0), (0.0, 180.0));
        assert!((antipode - 20_015.1).abs() < 1.0, "{antipode}");
    }
}
