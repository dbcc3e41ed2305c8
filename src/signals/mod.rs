//! Risk signals rules can call (DESIGN §6): velocity and distinct counts, known devices/IPs/countries, lists,
//! geography and user agents.
//!
//! # How a signal is computed
//! Each signal is a plain function over a [`DecisionCtx`], the state of one decision: the request's hashed keys,
//! the event time, handles to the engine's [`History`] and the ruleset's [`SignalSet`], and a memo. Each signal
//! is one row of the [`catalogue`]: the Rhai binding (`rules/binding.rs`), the load-time checks and the native
//! compiler all read that table and call the same functions, so compiled rule paths and Rhai scripts agree by
//! construction. This module knows nothing of Rhai.
//!
//! Nothing is computed until a rule asks, and each answer is memoised for the rest of the decision: a GeoIP
//! lookup happens at most once per decision, and never when no rule calls a geography function. An action from
//! the IP that placed the user's last known location is placed from history, without a lookup.
//!
//! History is what came *before* this action: [`DecisionCtx::record`] adds the action once the decision is
//! resolved, and idempotent repeats never reach it.

pub(crate) mod catalogue;
pub(crate) mod geo;
pub(crate) mod history;
pub(crate) mod lists;
pub(crate) mod rba;
mod ua;
pub(crate) mod view;

use arc_swap::ArcSwap;
use std::cell::{OnceCell, RefCell};
use std::net::IpAddr;
use std::sync::Arc;

use crate::config::{GeoipConfig, HistoryLimits as Limits};
use crate::error::Diagnostic;
use crate::time::{DurationMs, EpochMs};
pub(crate) use history::{History, Keys};
use std::path::Path;
pub(crate) use view::View;

use history::{Kept, KnownKind, Located};

/// Speeds above this many km/h are impossible travel.
pub const IMPOSSIBLE_KMH: f64 = 1000.0;

/// What signals need from a ruleset: its lists, GeoIP databases and history settings.
pub(crate) struct SignalSet {
    /// The lists, replaceable one at a time at run time.
    pub lists: ArcSwap<lists::Lists>,
    pub geo: geo::Geo,
    /// How much history the ruleset's windows need (0: none, nothing is recorded in series and sets).
    pub horizon_ms: i64,
    /// Which series and sets rules read ([`Kept::bit`] of each windowed signal called); only those are recorded.
    pub windowed: u8,
    /// Every `(kind, window)` rules count (a series' or set's kind number and the window), when all windows
    /// are literal; `None` when some window is computed at run time.
    pub windows: Option<Vec<(u8, i64)>>,
    pub limits: Limits,
    /// Some rule asks about the user agent (so decisions keep a copy of it).
    pub uses_agent: bool,
    /// Some rule asks the city database (so allowed actions record their country and location).
    pub uses_places: bool,
    /// Some rule calls `rba_score()` (so verified actions count their feature values).
    pub uses_rba: bool,
    /// The known lists rules read ([`catalogue::KNOWN_DEVICES`], [`catalogue::KNOWN_IPS`]): a remote store
    /// fetches only those.
    pub uses_known: u8,
}

impl Default for SignalSet {
    fn default() -> Self {
        SignalSet {
            lists: ArcSwap::from_pointee(lists::Lists::new()),
            geo: geo::Geo::default(),
            horizon_ms: 0,
            windowed: 0,
            windows: None,
            limits: Limits::default(),
            uses_agent: false,
            uses_places: false,
            uses_rba: false,
            uses_known: 0,
        }
    }
}

impl SignalSet {
    /// Loads a ruleset's lists (`(name, text, file)` each) and opens its `[geoip]` databases (paths relative to
    /// the rules folder `dir`, or the current directory for a ruleset built in code; `config_file` names the
    /// file `[geoip]` came from). Every problem is added to `problems`, and what failed is left out.
    ///
    /// What the rules need of signals (how much history, which series, the user agent, places) is not known
    /// yet: it is filled in once the rules are analysed.
    pub fn load(
        lists: &[(String, String, String)],
        geoip: &GeoipConfig,
        config_file: &str,
        dir: Option<&Path>,
        limits: Limits,
        problems: &mut Vec<Diagnostic>,
    ) -> SignalSet {
        let geo = geo::Geo::open_all(geoip, config_file, dir, problems);
        let mut loaded = lists::Lists::new();
        for (name, text, file) in lists {
            match lists::load(name, text, file) {
                Ok(_) if loaded.contains_key(name.as_str()) => problems.push(Diagnostic::new(
                    file.clone(),
                    0,
                    0,
                    format!("list `{name}` is given twice"),
                )),
                Ok(list) => {
                    loaded.insert(name.as_str().into(), Arc::new(list));
                }
                Err(mut d) => problems.append(&mut d),
            }
        }
        SignalSet {
            lists: ArcSwap::from_pointee(loaded),
            geo,
            limits,
            ..SignalSet::default()
        }
    }

    /// Whether the list `name` was loaded.
    pub fn has_list(&self, name: &str) -> bool {
        self.lists.load().contains_key(name)
    }

    /// Whether the GeoIP database of `kind` was opened.
    pub fn has_geo(&self, kind: geo::Kind) -> bool {
        match kind {
            geo::Kind::City => self.geo.city.is_some(),
            geo::Kind::Asn => self.geo.asn.is_some(),
            geo::Kind::AnonymousIp => self.geo.anonymous.is_some(),
        }
    }
}

/// The state of one decision that signals read: what the request is, when it happens, where history and the
/// ruleset's lists and databases are, and what has been computed so far.
///
/// Build one with [`DecisionCtx::new`] per decision; signal functions take `&DecisionCtx` and memoise into it,
/// so each signal is computed at most once per decision, and only when asked.
pub(crate) struct DecisionCtx {
    /// The event time (the `track_at` time).
    pub now: EpochMs,
    /// The request's hashed user, action, IP and device.
    pub keys: Keys,
    /// The request's IP address, canonical (an IPv4-mapped IPv6 address as its IPv4), when present and valid and
    /// the ruleset has a GeoIP database.
    pub ip: Option<IpAddr>,
    /// The request's user agent (copied only when the ruleset asks about user agents).
    ua: Option<Box<str>>,
    /// Where history is read and written (the engine's own, or a remote store's snapshot).
    pub history: View,
    pub set: Arc<SignalSet>,
    memo: Memo,
}

#[derive(Default)]
struct Memo {
    counts: RefCell<Vec<(u8, i64, i64)>>,
    known: [OnceCell<bool>; 3],
    place: OnceCell<Option<geo::Place>>,
    city: OnceCell<Option<Box<str>>>,
    asn: OnceCell<Option<u32>>,
    anonymous: OnceCell<Option<bool>>,
    travel: OnceCell<Option<f64>>,
    agent: OnceCell<ua::Agent>,
    ua_levels: OnceCell<ua::Derived>,
    lists: OnceCell<Arc<lists::Lists>>,
    rba_features: OnceCell<rba::Features>,
    rba_score: OnceCell<f64>,
}

/// What a decision leaves behind so that a later `CHALLENGE_SUCCEEDED` or `REVIEW_SUCCEEDED` can make the
/// action's device, IP and country known.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub(crate) struct Footprint {
    pub keys: Keys,
    pub ip: Option<IpAddr>,
    pub at_ms: i64,
    /// The action's feature values, when some rule calls `rba_score()`.
    pub rba: Option<rba::Features>,
}

impl DecisionCtx {
    /// The context of a decision on `req` at `now`.
    pub fn new(
        history: &Arc<History>,
        set: &Arc<SignalSet>,
        req: &crate::TrackRequest,
        now: EpochMs,
    ) -> Self {
        Self::with_view(View::Local(Arc::clone(history)), set, req, now)
    }

    /// The context of a decision whose history is `history` (see [`View`]).
    pub fn with_view(
        history: View,
        set: &Arc<SignalSet>,
        req: &crate::TrackRequest,
        now: EpochMs,
    ) -> Self {
        let a = &req.attributes;
        DecisionCtx {
            now,
            // Every IP signal keys on the address, not on how it was spelt (see `History::ip_key`).
            keys: history.keys(
                &req.user_id,
                &req.action,
                a.ip_address.as_deref(),
                a.device_id.as_deref(),
            ),
            // Parsed only for the GeoIP databases (lists parse the value they are given).
            ip: a
                .ip_address
                .as_deref()
                .filter(|_| set.geo.any())
                .and_then(|s| s.parse().ok())
                .map(lists::canonical),
            ua: if set.uses_agent {
                a.user_agent.as_deref().map(Box::from)
            } else {
                None
            },
            history,
            set: Arc::clone(set),
            memo: Memo::default(),
        }
    }

    fn count(&self, kind: u8, window_ms: i64, compute: impl FnOnce() -> i64) -> i64 {
        if let Ok(memo) = self.memo.counts.try_borrow() {
            if let Some(&(_, _, v)) = memo.iter().find(|m| m.0 == kind && m.1 == window_ms) {
                return v;
            }
        }
        let v = compute();
        if let Ok(mut memo) = self.memo.counts.try_borrow_mut() {
            memo.push((kind, window_ms, v));
        }
        v
    }

    /// The place of this action's IP. When the user's last known location was placed by this same IP, it is
    /// taken from there (one history read instead of a database lookup: a user who comes back from the same
    /// address costs nothing more).
    fn place(&self) -> Option<&geo::Place> {
        self.memo
            .place
            .get_or_init(|| {
                let ip = self.ip?;
                self.set.geo.city.as_ref()?;
                match self.last_location_here() {
                    Some(last) => Some(geo::Place {
                        country: last.country.map(|c| Box::from(c.as_str())),
                        location: Some((last.lat, last.lon)),
                    }),
                    None => self.set.geo.place(ip),
                }
            })
            .as_ref()
    }

    /// The user's last known location, if this action comes from the IP that placed it.
    fn last_location_here(&self) -> Option<Located> {
        let ip = self.keys.ip?;
        self.history
            .last_location(self.keys.user)
            .filter(|l| l.ip == ip)
    }

    /// The parsed user agent; when some rule calls `rba_score()`, its hashed levels come with it from the same
    /// cache look-up.
    fn agent(&self) -> &ua::Agent {
        self.memo.agent.get_or_init(|| {
            if !self.set.uses_rba {
                return ua::parse_cached(self.ua.as_deref());
            }
            let levels = |a: &ua::Agent, text: &str| rba::agent_levels(&self.history, a, text);
            let (agent, derived) =
                ua::parse_cached_with(self.ua.as_deref(), Some((self.history.seed_id(), levels)));
            if let Some(d) = derived {
                let _ = self.memo.ua_levels.set(d);
            }
            agent
        })
    }

    /// `rba_score()`'s hashed user-agent levels (see [`rba::agent_levels`]).
    fn ua_levels(&self) -> ua::Derived {
        if let Some(d) = self.memo.ua_levels.get() {
            return *d;
        }
        // Parsing sets the levels when the cache gives them (not through `get_or_init`: that would re-enter).
        let agent = self.agent();
        if let Some(d) = self.memo.ua_levels.get() {
            return *d;
        }
        let d = rba::agent_levels(&self.history, agent, self.ua.as_deref().unwrap_or("\0none"));
        let _ = self.memo.ua_levels.set(d);
        d
    }

    /// Adds this action to history (after its decision is resolved) and, when it ends `ALLOW`, makes its device,
    /// IP and country known. Returns what a later successful challenge or review needs.
    pub fn record(&self, state: crate::State) -> Footprint {
        self.history.record(
            &self.keys,
            self.now,
            DurationMs::from_ms(self.set.horizon_ms),
            self.set.windowed,
        );
        let verifiable = matches!(
            state,
            crate::State::Allow | crate::State::ChallengeRequired | crate::State::Review
        );
        let footprint = Footprint {
            keys: self.keys,
            ip: self.ip,
            at_ms: self.now.ms(),
            rba: (self.set.uses_rba && verifiable).then(|| rba::features(self)),
        };
        if state == crate::State::Allow {
            let place = if self.set.uses_places {
                self.place()
            } else {
                None
            };
            know(&self.history, &footprint, place);
        }
        footprint
    }
}

/// Makes an action's device, IP and country known for its user (its challenge or review succeeded later).
pub(crate) fn make_known(history: &View, set: &SignalSet, footprint: &Footprint) {
    let place = footprint
        .ip
        .filter(|_| set.uses_places)
        .and_then(|ip| set.geo.place(ip));
    know(history, footprint, place.as_ref());
}

fn know(history: &View, fp: &Footprint, place: Option<&geo::Place>) {
    let code = place.and_then(|p| p.country.as_deref());
    let country = code.map(|c| history.hash(b'c', c));
    let mut rba = [0u64; rba::LEVELS];
    let mut n = 0;
    for (slot, v) in rba.iter_mut().zip(fp.rba.iter().flat_map(|f| f.present())) {
        *slot = v;
        n += 1;
    }
    let location = place
        .and_then(|p| p.location)
        .zip(fp.keys.ip)
        .map(|((lat, lon), ip)| Located {
            lat,
            lon,
            at_ms: fp.at_ms,
            ip,
            country: code.and_then(history::CountryCode::new),
        });
    history.make_known(
        fp.keys.user,
        &history::Verified {
            device: fp.keys.device,
            ip: fp.keys.ip,
            country,
            location,
            rba: rba.get(..n).unwrap_or(&[]),
            at_ms: fp.at_ms,
        },
    );
}

/// Parses a window argument of `function`; the error names the window.
pub(crate) fn window(function: &str, window: &str) -> Result<DurationMs, String> {
    crate::duration::parse_millis(window)
        .map(DurationMs::from_ms)
        .map_err(|e| format!("`{function}`: {e}"))
}

/// What the windowed signal `function` counts over `window`: its series or set `kept` (see its catalogue
/// row). An error when no rule calls it by name (its history is not kept) or the window is longer than the
/// history kept.
pub(crate) fn count(
    ctx: &DecisionCtx,
    function: &str,
    kept: Kept,
    window: DurationMs,
) -> Result<i64, String> {
    let window_ms = window.ms();
    if ctx.set.windowed & kept.bit() == 0 {
        return Err(format!(
            "`{function}` is not called by name in any rule, so its history is not kept"
        ));
    }
    if window_ms > ctx.set.horizon_ms {
        return Err(format!(
            "`{function}`: a window of {} is longer than the history kept ({}): raise `[signals] max_window`",
            crate::duration::format_millis(window_ms),
            crate::duration::format_millis(ctx.set.horizon_ms)
        ));
    }
    Ok(ctx.count(kept.tag(), window_ms, || match kept {
        Kept::Series(k) => ctx.history.velocity(k, &ctx.keys, ctx.now, window),
        Kept::Set(k) => ctx.history.distinct(k, &ctx.keys, ctx.now, window),
    }))
}

fn is_new(ctx: &DecisionCtx, kind: KnownKind, item: Option<u64>) -> bool {
    let slot = match kind {
        KnownKind::Device => 0,
        KnownKind::Ip => 1,
        KnownKind::Country => 2,
    };
    let compute = || item.is_none_or(|i| !ctx.history.is_known(ctx.keys.user, kind, i, ctx.now));
    match ctx.memo.known.get(slot) {
        Some(cell) => *cell.get_or_init(compute),
        None => compute(),
    }
}

/// The device is not known for this user (true without a device).
pub(crate) fn is_new_device(ctx: &DecisionCtx) -> bool {
    is_new(ctx, KnownKind::Device, ctx.keys.device)
}

/// The IP address is not known for this user (true without an IP).
pub(crate) fn is_new_ip(ctx: &DecisionCtx) -> bool {
    is_new(ctx, KnownKind::Ip, ctx.keys.ip)
}

/// The IP's country is not known for this user (true when the country is unknown).
pub(crate) fn is_new_country(ctx: &DecisionCtx) -> bool {
    let country = country(ctx).map(|c| ctx.history.hash(b'c', c));
    is_new(ctx, KnownKind::Country, country)
}

/// Whether `value` is in list `name`; an error when the ruleset has no such list.
pub(crate) fn in_list(ctx: &DecisionCtx, name: &str, value: &str) -> Result<bool, String> {
    let lists = ctx.memo.lists.get_or_init(|| ctx.set.lists.load_full());
    match lists.get(name) {
        Some(list) => Ok(list.contains(value)),
        None => Err(format!(
            "`in_list`: no list named `{}` (expected `lists/{}.txt` in the rules folder)",
            crate::error::shorten(name),
            crate::error::shorten(name)
        )),
    }
}

/// The IP's ISO country code, from the city database.
pub(crate) fn country(ctx: &DecisionCtx) -> Option<&str> {
    ctx.place()?.country.as_deref()
}

/// The IP's city (English name), from the city database.
pub(crate) fn city(ctx: &DecisionCtx) -> Option<&str> {
    ctx.memo
        .city
        .get_or_init(|| ctx.ip.and_then(|ip| ctx.set.geo.city(ip)))
        .as_deref()
}

/// The IP's autonomous system number, from the ASN database.
pub(crate) fn asn(ctx: &DecisionCtx) -> Option<i64> {
    ctx.memo
        .asn
        .get_or_init(|| ctx.ip.and_then(|ip| ctx.set.geo.asn(ip)))
        .map(i64::from)
}

/// Whether the IP is an anonymous network, from the anonymous-IP database (`None` without an IP).
pub(crate) fn is_anonymous_ip(ctx: &DecisionCtx) -> Option<bool> {
    *ctx.memo
        .anonymous
        .get_or_init(|| ctx.ip.and_then(|ip| ctx.set.geo.is_anonymous(ip)))
}

/// Speed from the user's last located known action to here, in km/h (`None` when either end is unknown).
///
/// Elapsed time is taken as at least one second, so the same place twice is 0 km/h and two places at once
/// are a very large (finite) speed.
pub(crate) fn travel_speed_kmh(ctx: &DecisionCtx) -> Option<f64> {
    *ctx.memo.travel.get_or_init(|| {
        let here = ctx.place()?.location?;
        let last = ctx.history.last_location(ctx.keys.user)?;
        let km = geo::distance_km((last.lat, last.lon), here);
        let hours = (ctx.now.ms().abs_diff(last.at_ms).max(1_000) as f64) / 3_600_000.0;
        Some(km / hours)
    })
}

/// Travel faster than [`IMPOSSIBLE_KMH`] since the user's last located known action (false when unknown).
pub(crate) fn is_impossible_travel(ctx: &DecisionCtx) -> bool {
    travel_speed_kmh(ctx).is_some_and(|v| v > IMPOSSIBLE_KMH)
}

/// The user agent's browser or crawler name.
pub(crate) fn ua_browser(ctx: &DecisionCtx) -> Option<&str> {
    ctx.agent().browser.as_deref()
}

/// The user agent's operating system.
pub(crate) fn ua_os(ctx: &DecisionCtx) -> Option<&str> {
    ctx.agent().os.as_deref()
}

/// `desktop`, `mobile`, `crawler`, `appliance` or `other`.
pub(crate) fn ua_device_type(ctx: &DecisionCtx) -> Option<&'static str> {
    ctx.agent().device_type
}

/// A crawler, or no user agent at all.
pub(crate) fn is_bot(ctx: &DecisionCtx) -> bool {
    ctx.agent().bot
}

pub(crate) use rba::rba_score;
