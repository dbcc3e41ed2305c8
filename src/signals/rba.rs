//! `rba_score()`: how unusual this action's features are for this user compared with the whole population,
//! after Freeman et al., "Who Are You? A Statistical Approach to Measuring User Authenticity" (NDSS 2016).
//!
//! # The formula
//! The features are four chains, each from its most specific level to its most general:
//!
//! | chain | levels |
//! |---|---|
//! | network | IP address → ASN (`[geoip] asn`) → country (`[geoip] city`) |
//! | browser | user-agent string → browser and major version → browser → operating system |
//! | device | device id |
//! | device type | `desktop`, `mobile`, … (parsed from the user agent) |
//!
//! A level the databases or the parser cannot tell (no ASN database, an address it does not know, an
//! unrecognised user agent) is left out of its chain; an absent IP address, user agent or device id is a value
//! of its own ("none").
//!
//! With `N` the verified actions of all users, `G(v)` those with value `v`, `n` the user's verified actions and
//! `c(v)` the user's with value `v`, for a chain whose levels here are `v₀ … v_m` (most specific first):
//!
//! ```text
//! population:  P(v₀)      = (G(v₀) + 1) / (N + 1)
//! user, top:   Pᵤ(v_m)    = (c(v_m) + κ · (G(v_m) + 1) / (N + 1)) / (n + κ)
//! user, below: Pᵤ(v_i)    = (c(v_i) + κ · Pᵤ(v_i+1) · (G(v_i) + 1) / (G(v_i+1) + 1)) / (c(v_i+1) + κ)
//! score        = Π over chains of P(v₀) / Pᵤ(v₀)
//! ```
//!
//! with κ = [`KAPPA`]. So the user's own frequency of a value is smoothed towards the population's share of it
//! *within its parent* (an IP never used by this user is only as surprising as an unseen address in an ASN the
//! user does use), and a user with no history scores about 1 in every chain. A score well below 1 is a user
//! behaving as they usually do; above 1, the action looks more like anyone else than like this user. Each
//! `Pᵤ` is capped at 1.
//!
//! # What is counted
//! Counts come only from verified actions: those that end `ALLOW`, `CHALLENGE_SUCCEEDED` or `REVIEW_SUCCEEDED`,
//! as for "known" devices. They are kept only when some rule calls `rba_score()`, within `[signals]`: per user
//! at most [`super::history::MAX_RBA_VALUES`] values (the least recently seen goes first), population values in
//! their own table under `max_keys` and `max_bytes`, and a value not seen within `known_for` stops counting.
//! The score itself is computed only when a rule calls it, once per decision.
//!
//! # Cost
//! About 2,250 instructions per call on a simulated sign-in log (BENCHMARKS.md has the breakdown): one look-up
//! of the user and one probe per value of the index kept with their counts, the nine population counts read
//! under one epoch guard of a lock-free map, the ASN from a per-ruleset cache of recent addresses and networks
//! (a database lookup on a miss), the user agent's level hashes from the per-thread parse cache, and the
//! formula.

use super::DecisionCtx;

/// How many feature values one action has (the levels of all four chains).
pub(crate) const LEVELS: usize = 9;

/// The weight κ of the population's estimate against the user's own counts (Dirichlet smoothing): with κ = 1, a
/// user with `n` verified actions gives a value they have never used `1 / (n + 1)` of their probability mass,
/// shared out by the population's frequencies.
pub const KAPPA: f64 = 1.0;

/// Where each chain's levels sit in [`Features::values`].
const CHAINS: [std::ops::Range<usize>; 4] = [0..3, 3..7, 7..8, 8..9];

/// An action's feature values (hashed), each present or not.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Features {
    values: [u64; LEVELS],
    present: u16,
}

impl Features {
    fn set(&mut self, level: usize, value: Option<u64>) {
        if let (Some(v), Some(slot)) = (value, self.values.get_mut(level)) {
            *slot = v;
            self.present |= 1 << level;
        }
    }

    fn has(&self, level: usize) -> bool {
        self.present & (1 << level) != 0
    }

    /// The values and the bits of those present, for a store to keep.
    #[cfg(feature = "redis")]
    pub fn parts(&self) -> ([u64; LEVELS], u16) {
        (self.values, self.present)
    }

    /// Features from [`Features::parts`] (values past [`LEVELS`] are ignored, missing ones are absent).
    #[cfg(feature = "redis")]
    pub fn from_parts(values: &[u64], present: u16) -> Self {
        let mut f = Features::default();
        for (slot, v) in f.values.iter_mut().zip(values) {
            *slot = *v;
        }
        f.present = present & ((1 << values.len().min(LEVELS)) - 1);
        f
    }

    /// The present values, for counting.
    /// The values and the bit set of those present, as the state files keep them.
    pub fn to_raw(self) -> ([u64; LEVELS], u16) {
        (self.values, self.present)
    }

    /// Features as [`Features::to_raw`] gave them.
    pub fn from_raw(values: [u64; LEVELS], present: u16) -> Self {
        Features { values, present }
    }

    pub fn present(&self) -> impl Iterator<Item = u64> + '_ {
        (0..LEVELS)
            .filter(|&l| self.has(l))
            .filter_map(|l| self.values.get(l).copied())
    }
}

/// This action's feature values.
pub(crate) fn features(ctx: &DecisionCtx) -> Features {
    *ctx.memo.rba_features.get_or_init(|| {
        let h = &ctx.history;
        let mut f = Features::default();
        let none = |tag: u8| h.quick_hash(tag, "\0none");
        f.set(
            0,
            Some(ctx.keys.ip.map_or_else(|| none(b'I'), |ip| h.mix(b'I', ip))),
        );
        f.set(1, super::asn(ctx).map(|a| h.mix(b'A', a as u64)));
        f.set(2, super::country(ctx).map(|c| h.quick_hash(b'C', c)));
        let [ua, version, browser, os, device_type] = ctx.ua_levels();
        f.set(3, ua);
        f.set(4, version);
        f.set(5, browser);
        f.set(6, os);
        f.set(
            7,
            Some(
                ctx.keys
                    .device
                    .map_or_else(|| none(b'D'), |d| h.mix(b'D', d)),
            ),
        );
        f.set(8, device_type);
        f
    })
}

/// The hashed user-agent levels of an action whose user agent is `text` and parses to `agent`: the string,
/// browser and version, browser, OS, device type. Computed once per user agent and seed per thread: the parse
/// cache keeps them ([`super::ua::parse_cached_with`]).
pub(crate) fn agent_levels(
    h: &super::View,
    agent: &super::ua::Agent,
    text: &str,
) -> super::ua::Derived {
    let browser = agent.browser.as_deref();
    let version = agent.version.as_deref().unwrap_or("");
    [
        Some(h.quick_hash(b'U', text)),
        browser.map(|b| h.quick_hash2(b'V', b, version)),
        browser.map(|b| h.quick_hash(b'B', b)),
        agent.os.as_deref().map(|o| h.quick_hash(b'O', o)),
        agent.device_type.map(|t| h.quick_hash(b'T', t)),
    ]
}

/// The score of this action (see the [module docs](self)). Never inlined, so that a profiler can count it alone
/// (`valgrind --tool=callgrind --toggle-collect='riskgate::signals::rba::rba_score'`); it runs once per decision.
#[inline(never)]
pub(crate) fn rba_score(ctx: &DecisionCtx) -> f64 {
    *ctx.memo.rba_score.get_or_init(|| {
        let f = features(ctx);
        let c = ctx
            .history
            .rba_counts(ctx.keys.user, &f.values, f.present, ctx.now);
        score(&f, &c)
    })
}

/// The chains' names, in [`CHAINS`] order.
pub(crate) const CHAIN_NAMES: [&str; 4] = ["network", "browser", "device", "deviceType"];

/// Each chain's factor of this action's score (`None` for a chain with no level present): the score is their
/// product. For explaining a decision; reads the same memoised features and counts as [`rba_score`].
pub(crate) fn factors(ctx: &DecisionCtx) -> [Option<f64>; 4] {
    let f = features(ctx);
    let c = ctx
        .history
        .rba_counts(ctx.keys.user, &f.values, f.present, ctx.now);
    chain_factors(&f, &c)
}

/// The formula, over counts already read.
pub(crate) fn score(f: &Features, c: &super::history::RbaCounts) -> f64 {
    let mut total = 1.0;
    for factor in chain_factors(f, c).into_iter().flatten() {
        total *= factor;
    }
    total
}

/// Each chain's `P(v₀) / Pᵤ(v₀)`, `None` for a chain none of whose levels is present.
///
/// Walks each chain once from its most general present level to its most specific, with the same arithmetic
/// as the formula in the module docs.
fn chain_factors(f: &Features, c: &super::history::RbaCounts) -> [Option<f64>; 4] {
    let n_all = c.all_actions as f64;
    let pop = |g: f64| (g + 1.0) / (n_all + 1.0);
    let mut out = [None; 4];
    for (chain, slot) in CHAINS.into_iter().zip(out.iter_mut()) {
        // (the population's count, the user's count) of the level above the current one, and Pᵤ there.
        let mut above: Option<(f64, f64)> = None;
        let mut pu = 1.0;
        for l in chain.rev().filter(|&l| f.has(l)) {
            let (Some(&g), Some(&u)) = (c.all.get(l), c.user.get(l)) else {
                continue;
            };
            let (g, u) = (g as f64, u as f64);
            pu = match above {
                None => ((u + KAPPA * pop(g)) / (c.user_actions as f64 + KAPPA)).min(1.0),
                Some((g_above, u_above)) => {
                    let within = ((g + 1.0) / (g_above + 1.0)).min(1.0);
                    ((u + KAPPA * pu * within) / (u_above + KAPPA)).min(1.0)
                }
            };
            above = Some((g, u));
        }
        if let Some((g, _)) = above {
            *slot = Some(pop(g) / pu.max(f64::MIN_POSITIVE));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::super::{geo, DecisionCtx, History, Limits, SignalSet};
    use super::rba_score;
    use crate::time::EpochMs;
    use crate::{State, TrackRequest};
    use std::sync::Arc;

    const CHROME_WIN: &str = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/143.0.0.0 Safari/537.36";
    const FIREFOX_LINUX: &str =
        "Mozilla/5.0 (X11; Linux x86_64; rv:143.0) Gecko/20100101 Firefox/143.0";

    struct World {
        history: Arc<History>,
        set: Arc<SignalSet>,
        now: i64,
    }

    impl World {
        fn new() -> World {
            let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("starter/geoip");
            let geo = geo::Geo {
                city: geo::open(&dir.join("GeoIP2-City-Test.mmdb"), geo::Kind::City).ok(),
                asn: geo::open(&dir.join("GeoLite2-ASN-Test.mmdb"), geo::Kind::Asn).ok(),
                anonymous: None,

                ..geo::Geo::default()
            };
            assert!(geo.city.is_some() && geo.asn.is_some());
            World {
                history: Arc::new(History::new(
                    Limits::default(),
                    crate::hash::EngineKeys::draw().unwrap(),
                )),
                set: Arc::new(SignalSet {
                    geo,
                    uses_agent: true,
                    uses_places: true,
                    uses_rba: true,
                    ..SignalSet::default()
                }),
                now: 1_000_000,
            }
        }

        /// The score of a sign-in, and then records it as `state`.
        fn sign_in(&mut self, user: &str, ip: &str, device: &str, ua: &str, state: State) -> f64 {
            self.now += 60_000;
            let req = TrackRequest::new(user, "signIn")
                .ip(ip)
                .device(device)
                .user_agent(ua);
            let ctx = DecisionCtx::new(&self.history, &self.set, &req, EpochMs::from_ms(self.now));
            let score = rba_score(&ctx);
            ctx.record(state);
            score
        }

        /// Four sign-ins of `alice` from Milton (AS209, US) on Chrome/Windows, two of `bob` from Linköping
        /// (AS29518, SE) on Firefox/Linux: N = 6 verified actions.
        fn populated() -> World {
            let mut w = World::new();
            for _ in 0..4 {
                w.sign_in(
                    "alice",
                    "216.160.83.58",
                    "d-alice",
                    CHROME_WIN,
                    State::Allow,
                );
            }
            for _ in 0..2 {
                w.sign_in("bob", "89.160.20.115", "d-bob", FIREFOX_LINUX, State::Allow);
            }
            w
        }
    }

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() <= 1e-9 * b.abs().max(1.0)
    }

    // Hand-computed pieces, for alice (n = 4) among N = 6 verified actions.
    /// A chain whose every level alice always had (G = c = 4 at each level, κ = 1): top
    /// (4 + 5/7) / 5, each level below (4 + Pᵤ · 5/5) / 5, population 5/7.
    fn usual_chain(levels: usize) -> f64 {
        let mut pu = (4.0 + 5.0 / 7.0) / 5.0;
        for _ in 1..levels {
            pu = (4.0 + pu) / 5.0;
        }
        (5.0 / 7.0) / pu
    }
    /// Device type `desktop`: all six actions (G = 6), alice's four: Pᵤ = (4 + 7/7) / 5 = 1.
    const DESKTOP: f64 = 1.0;

    #[test]
    fn a_known_user_scores_low() {
        let mut w = World::populated();
        let s = w.sign_in(
            "alice",
            "216.160.83.58",
            "d-alice",
            CHROME_WIN,
            State::Allow,
        );
        let expected = usual_chain(3) * usual_chain(4) * usual_chain(1) * DESKTOP;
        assert!(close(s, expected), "{s} vs {expected}");
        assert!(s < 0.5);
    }

    #[test]
    fn a_new_device_at_home_is_smoothed_by_the_population() {
        let mut w = World::populated();
        let s = w.sign_in("alice", "216.160.83.58", "d-new", CHROME_WIN, State::Allow);
        // Device never seen by anyone: Pᵤ = (0 + 1 · 1/7) / 5, population 1/7: the ratio is n + κ = 5.
        let device = (1.0 / 7.0) / ((1.0 / 7.0) / 5.0);
        let expected = usual_chain(3) * usual_chain(4) * device * DESKTOP;
        assert!(close(s, expected), "{s} vs {expected}");
    }

    #[test]
    fn a_new_country_backs_off_to_the_population() {
        let mut w = World::populated();
        // Changchun: the ASN database does not know it, so the network chain is IP → country.
        let s = w.sign_in("alice", "175.16.199.5", "d-alice", CHROME_WIN, State::Allow);
        // Country CN: Pᵤ = (0 + 1/7) / 5; IP within CN: (0 + Pᵤ · 1/1) / (0 + 1); population 1/7.
        let pu_country = (1.0 / 7.0) / 5.0;
        let network = (1.0 / 7.0) / pu_country;
        let expected = network * usual_chain(4) * usual_chain(1) * DESKTOP;
        assert!(close(s, expected), "{s} vs {expected}");
        assert!(s > 1.0);
    }

    #[test]
    fn a_never_seen_asn_in_a_known_country() {
        let mut w = World::populated();
        // 149.101.100.5: US like Milton, but AS6167, which nobody has used.
        let s = w.sign_in(
            "alice",
            "149.101.100.5",
            "d-alice",
            CHROME_WIN,
            State::Allow,
        );
        let pu_us = (4.0 + 5.0 / 7.0) / 5.0;
        // ASN within US: population share (0 + 1) / (4 + 1); alice has no action in it.
        let pu_asn = (0.0 + pu_us * (1.0 / 5.0)) / (4.0 + 1.0);
        // IP within the ASN: (0 + 1) / (0 + 1); alice has no action in the ASN either.
        let pu_ip = (0.0 + pu_asn * 1.0) / (0.0 + 1.0);
        let network = (1.0 / 7.0) / pu_ip;
        let expected = network * usual_chain(4) * usual_chain(1) * DESKTOP;
        assert!(close(s, expected), "{s} vs {expected}");
        // Less surprising than a new country, more than home.
        let home = usual_chain(3) * usual_chain(4) * usual_chain(1) * DESKTOP;
        assert!(
            s > home && s < (1.0 / 7.0) / ((1.0 / 7.0) / 5.0) * usual_chain(4) * usual_chain(1)
        );
    }

    #[test]
    fn a_user_without_history_scores_one() {
        let mut w = World::populated();
        let s = w.sign_in(
            "carol",
            "216.160.83.58",
            "d-alice",
            CHROME_WIN,
            State::Allow,
        );
        assert!(close(s, 1.0), "{s}");
    }

    #[test]
    fn only_verified_actions_count() {
        let mut w = World::populated();
        // A challenged, never completed action from a new device changes nothing.
        let first = w.sign_in(
            "alice",
            "216.160.83.58",
            "d-new",
            CHROME_WIN,
            State::ChallengeRequired,
        );
        let again = w.sign_in("alice", "216.160.83.58", "d-new", CHROME_WIN, State::Block);
        assert!(close(first, again), "{first} vs {again}");
        let third = w.sign_in("alice", "216.160.83.58", "d-new", CHROME_WIN, State::Allow);
        assert!(close(first, third));
        // Now it counts: the device is alice's (c = 1 of n = 5).
        let after = w.sign_in("alice", "216.160.83.58", "d-new", CHROME_WIN, State::Allow);
        assert!(after < first / 2.0, "{after} vs {first}");
    }
}
