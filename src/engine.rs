//! The [`Engine`]: a shared handle that decides tracked actions, and its [`EngineBuilder`].
//!
//! One decision reads top to bottom in [`Engine::track_at`]: validate → store lookup (a repeat returns here) →
//! rules → resolve → record → respond.

// Without feature `redis` the store has one variant, and the matches that pick it cannot fail.
#![cfg_attr(not(feature = "redis"), allow(clippy::infallible_destructuring_match))]

use arc_swap::ArcSwap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use crate::clock::{to_millis, Clock, SystemClock};
use crate::config::{Config, OnConflict, OnRuleError};
use crate::counter::Striped;
use crate::decide;
use crate::error::{LoadError, TrackError};
use crate::explain::Explanation;
use crate::hash::{EngineKeys, FingerprintKey, H128};
use crate::request::TrackRequest;
use crate::rules::{self, sandbox, RuleSet};
use crate::settings::{Overrides, SandboxLimits};
use crate::signals::{self, DecisionCtx, History};
#[cfg(feature = "redis")]
use crate::state::redis::{finish, Io};
use crate::state::Backend;
use crate::stats::{self, Stats};
use crate::store::{Decided, Found, Slot, Store};
#[cfg(feature = "redis")]
use crate::store_settings::OnStoreError;
use crate::store_settings::{StoreBackend, StoreSettings};
use crate::time::{DurationMs, EpochMs};
use crate::token;
use crate::{
    ActionRecord, InvalidTokenReason, State, TrackResponse, TrackView, ValidateChallengeResponse,
};

/// The risk-decision engine. Cheap to clone: clones share rules, stored actions and history.
///
/// # Thread safety
/// `Engine` is `Send + Sync`; clone it into every thread or task that tracks actions. Decisions on different
/// identities run in parallel without a global lock.
///
/// # Concurrent calls
/// Concurrent `track` calls with the same (`userId`, `action`, `idempotencyKey`) are coalesced: the rules run
/// once, in the first caller, while the others wait for that decision and all return the same action (the same
/// token included). No lock on the store is held while rules run, and callers with other identities never wait.
/// [`decisions`](Engine::decisions) counts rule evaluations.
///
/// This holds while the action is retained. If the store evicts an action (it is full) while the action is
/// still being decided, the callers already waiting still get its decision, but the store no longer holds it or
/// its token: a later call with that identity is a new action. Size `[idempotency] capacity` above the number
/// of actions tracked within the TTL and this never happens.
///
/// An action being decided is not visible to [`get_action`](Engine::get_action),
/// [`update_action`](Engine::update_action) or [`validate_challenge`](Engine::validate_challenge) until its
/// decision is complete.
///
/// # Reloads
/// [`swap_ruleset`](Engine::swap_ruleset) and [`reload_rules`](Engine::reload_rules) replace the ruleset
/// atomically: a decision already running finishes on the ruleset it started with, and every decision that
/// starts after the swap sees the new one. A ruleset that fails to load never replaces the current one.
///
/// ```
/// use riskgate::{Engine, RuleSet, State, TrackRequest};
///
/// let engine = Engine::builder()
///     .ruleset(RuleSet::from_sources([("no-device", "if device_id == () { CHALLENGE_REQUIRED }")])?)
///     .build()?;
/// let resp = engine.track(&TrackRequest::new("user-1", "signIn"))?;
/// assert_eq!(resp.state, State::ChallengeRequired);
/// assert_eq!(resp.rule_ids, ["no-device"]);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone)]
pub struct Engine {
    shared: Arc<Shared>,
}

struct Shared {
    ruleset: ArcSwap<Loaded>,
    /// Where actions are kept (the state-store seam, `state/mod.rs`).
    state: Backend,
    /// The store's settings, fixed when the engine was built.
    store_settings: StoreSettings,
    /// The secret of this engine's request fingerprints (see `TrackRequest::fingerprint`).
    fingerprint_key: FingerprintKey,
    /// What signals remember of past actions; kept across ruleset swaps.
    history: Arc<History>,
    /// Durable state (`[store] path`): the journal every change is written to, and its files.
    durable: Option<crate::durable::Durable>,
    clock: Arc<dyn Clock>,
    rules_dir: Option<PathBuf>,
    reload: Mutex<()>,
    /// Held by `swap_ruleset` while it installs a ruleset, so that concurrent swaps leave `repeat_ttl` (and the
    /// store's capacity) set from the ruleset that stays installed.
    swap: Mutex<()>,
    /// The installed ruleset's `[idempotency] ttl` in milliseconds, for the repeat fast path, which answers a
    /// repeat without loading the ruleset. A repeat racing a swap may use either set's TTL, as it may see either
    /// set.
    repeat_ttl: AtomicI64,
    /// Rule evaluations, striped per thread (every decision adds one).
    decisions: Striped,
    /// Decisions by state, evaluation time, and the per-rule counts of replaced rulesets.
    stats: stats::Counters,
    /// The builder's settings, applied over every ruleset's `riskgate.toml`.
    overrides: Overrides,
    /// The builder's sandbox limits, for every folder the engine loads.
    sandbox_limits: Option<SandboxLimits>,
}

/// A ruleset as the engine uses it: the rules, and their configuration with the builder's settings applied.
/// Derefs to the rules, so `loaded.config` is the effective configuration and everything else is the set's.
struct Loaded {
    set: Arc<rules::Inner>,
    config: Config,
    /// Per-rule counts of decisions on this ruleset (see `stats.rs`).
    counters: Arc<stats::RuleCounters>,
}

impl Loaded {
    fn new(set: Arc<rules::Inner>, overrides: &Overrides) -> Self {
        Loaded {
            config: overrides.apply(&set.config),
            counters: Arc::new(stats::RuleCounters::new(
                set.rules.iter().map(|r| r.id.clone()).collect(),
            )),
            set,
        }
    }
}

impl std::ops::Deref for Loaded {
    type Target = rules::Inner;
    fn deref(&self) -> &rules::Inner {
        &self.set
    }
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("rules", &self.shared.ruleset.load().rules.len())
            .field("stored_actions", &self.stored_actions())
            .finish_non_exhaustive()
    }
}

/// Builds an [`Engine`]. Give it a ruleset (from a folder or in code); everything else has a default.
///
/// # Settings in code and `riskgate.toml`
/// The setters below ([`idempotency_capacity`](EngineBuilder::idempotency_capacity),
/// [`idempotency_ttl`](EngineBuilder::idempotency_ttl), [`on_conflict`](EngineBuilder::on_conflict),
/// [`token_ttl`](EngineBuilder::token_ttl), [`on_rule_error`](EngineBuilder::on_rule_error),
/// [`default_outcome`](EngineBuilder::default_outcome),
/// [`action_default_outcome`](EngineBuilder::action_default_outcome),
/// [`sandbox_limits`](EngineBuilder::sandbox_limits)) set in code what the rules folder's `riskgate.toml` sets
/// as text. A setting made in code wins over the file, for every ruleset the engine uses: the first, every
/// [`reload_rules`](Engine::reload_rules) and every [`swap_ruleset`](Engine::swap_ruleset). What is not set in
/// code comes from the file, and what neither sets has its documented default. Out-of-range values fail
/// [`build`](EngineBuilder::build) with [`LoadError::InvalidSetting`].
///
/// ```
/// use riskgate::{Engine, OnConflict, RuleSet, State, TrackRequest};
/// use std::time::Duration;
///
/// let engine = Engine::builder()
///     .ruleset(RuleSet::from_sources([("r", "if custom.amount > 100 { REVIEW }")])?)
///     .idempotency_ttl(Duration::from_secs(3600))
///     .on_conflict(OnConflict::Replay)
///     .default_outcome(State::Allow)
///     .build()?;
/// let first = engine.track(&TrackRequest::new("u1", "pay").idempotency_key("k1").custom("amount", 500))?;
/// let again = engine.track(&TrackRequest::new("u1", "pay").idempotency_key("k1").custom("amount", 1))?;
/// assert_eq!(again.state, State::Review, "a conflicting repeat replays the stored action");
/// # assert_eq!(first, again);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[must_use]
#[derive(Default)]
pub struct EngineBuilder {
    ruleset: Option<RuleSet>,
    rules_dir: Option<PathBuf>,
    clock: Option<Arc<dyn Clock>>,
    overrides: Overrides,
    sandbox_limits: Option<SandboxLimits>,
    store: Option<StoreSettings>,
    /// Whether the ruleset was loaded by [`EngineBuilder::rules_dir`] (and so can be loaded again with other
    /// limits), and under which limits.
    loaded_here: Option<Option<SandboxLimits>>,
}

impl EngineBuilder {
    /// Loads the ruleset from `dir` now (see [`RuleSet::from_dir`]); [`Engine::reload_rules`] reloads from it.
    ///
    /// The folder is loaded under the [`sandbox_limits`](EngineBuilder::sandbox_limits) set so far; limits set
    /// later make [`build`](EngineBuilder::build) load it again with them.
    pub fn rules_dir(mut self, dir: impl Into<PathBuf>) -> Result<Self, LoadError> {
        let dir = dir.into();
        self.ruleset = Some(load_dir(&dir, self.sandbox_limits)?);
        self.rules_dir = Some(dir);
        self.loaded_here = Some(self.sandbox_limits);
        Ok(self)
    }

    /// Uses an already loaded ruleset. Reloading needs a folder: [`Engine::reload_rules`] uses the set's own
    /// folder if it was loaded from one.
    pub fn ruleset(mut self, ruleset: RuleSet) -> Self {
        self.rules_dir = ruleset.dir().map(PathBuf::from);
        self.ruleset = Some(ruleset);
        self.loaded_here = None;
        self
    }

    /// How many actions the store keeps at most (`[idempotency] capacity`, default 1 000 000); the oldest is
    /// evicted first. At least 1.
    pub fn idempotency_capacity(mut self, capacity: usize) -> Self {
        self.overrides.capacity = Some(capacity);
        self
    }

    /// How long an action is kept for repeats and lifecycle calls (`[idempotency] ttl`, default 24 hours).
    /// Whole milliseconds, from 1ms to 10 years.
    pub fn idempotency_ttl(mut self, ttl: Duration) -> Self {
        self.overrides.idempotency_ttl = Some(ttl);
        self
    }

    /// What a repeated idempotency key with different attributes does (`[idempotency] on_conflict`, default
    /// [`OnConflict::Error`]).
    pub fn on_conflict(mut self, on_conflict: OnConflict) -> Self {
        self.overrides.on_conflict = Some(on_conflict);
        self
    }

    /// How long a challenge token stays valid (`[challenge] token_ttl`, default 10 minutes). Whole
    /// milliseconds, from 1ms to 10 years.
    pub fn token_ttl(mut self, ttl: Duration) -> Self {
        self.overrides.token_ttl = Some(ttl);
        self
    }

    /// What a failing rule counts as (`on_rule_error`, default `CHALLENGE_REQUIRED`). The outcome must be
    /// one of the four decisions.
    pub fn on_rule_error(mut self, on_rule_error: OnRuleError) -> Self {
        self.overrides.on_rule_error = Some(on_rule_error);
        self
    }

    /// The outcome when no enforce rule matches (`default_outcome`, default `ALLOW`); must be one of the four
    /// decisions. An action's own default (`[actions.<code>] default_outcome` or
    /// [`action_default_outcome`](EngineBuilder::action_default_outcome)) still applies to that action.
    pub fn default_outcome(mut self, outcome: State) -> Self {
        self.overrides.default_outcome = Some(outcome);
        self
    }

    /// The outcome when no enforce rule matches for action code `action` (`[actions.<code>]
    /// default_outcome`); must be one of the four decisions.
    pub fn action_default_outcome(mut self, action: impl Into<String>, outcome: State) -> Self {
        self.overrides
            .action_defaults
            .insert(action.into(), outcome);
        self
    }

    /// The sandbox every rule runs in (the `[limits]` table), for the rules folder this builder loads
    /// ([`rules_dir`](EngineBuilder::rules_dir)) and every [`reload_rules`](Engine::reload_rules).
    ///
    /// A [`RuleSet`] built elsewhere was compiled with its own limits: give them to
    /// [`RuleSetBuilder::sandbox_limits`](crate::RuleSetBuilder::sandbox_limits). Building an engine from
    /// [`ruleset`](EngineBuilder::ruleset) with this set is refused ([`LoadError::InvalidSetting`]), and a
    /// ruleset passed to [`swap_ruleset`](Engine::swap_ruleset) keeps its own.
    pub fn sandbox_limits(mut self, limits: SandboxLimits) -> Self {
        self.sandbox_limits = Some(limits);
        self
    }

    /// `[store]` of the ruleset given so far (the in-memory store's settings without one), for a caller that
    /// changes part of it (as `--store` does) before [`store`](EngineBuilder::store).
    pub fn ruleset_store_settings(&self) -> StoreSettings {
        self.ruleset
            .as_ref()
            .map(|r| r.store_settings().clone())
            .unwrap_or_default()
    }

    /// Where the engine keeps actions, tokens and signal history (`[store]` in `riskgate.toml`; the default
    /// is in memory). With [`StoreSettings::redis`] (feature `redis`) every engine on the same Redis, in this
    /// process or others, shares one view: see the README's "Running several instances". Set in code, it wins
    /// over the file; the store is chosen once, at [`build`](EngineBuilder::build), which connects to it.
    pub fn store(mut self, settings: StoreSettings) -> Self {
        self.store = Some(settings);
        self
    }

    /// Uses `clock` for the current time (the default is [`SystemClock`]); see [`FakeClock`](crate::FakeClock)
    /// for tests.
    pub fn clock(mut self, clock: impl Clock) -> Self {
        self.clock = Some(Arc::new(clock));
        self
    }

    /// Builds the engine.
    pub fn build(self) -> Result<Engine, LoadError> {
        self.overrides.check()?;
        let mut ruleset = self.ruleset.ok_or(LoadError::NoRuleset)?;
        if let Some(limits) = self.sandbox_limits {
            match (&self.loaded_here, &self.rules_dir) {
                (Some(applied), _) if *applied == Some(limits) => {}
                (Some(_), Some(dir)) => ruleset = load_dir(dir, Some(limits))?,
                _ => {
                    return Err(LoadError::InvalidSetting {
                        setting: "sandbox_limits",
                        reason: "applies to the rules folder the engine loads (`rules_dir`); a ruleset built \
                                 elsewhere has its own: set them with `RuleSetBuilder::sandbox_limits`"
                            .to_owned(),
                    })
                }
            }
        }
        let loaded = Loaded::new(ruleset.inner, &self.overrides);
        // Every key is drawn once, here: a broken random source fails the build, never weakens the keys.
        let keys = EngineKeys::draw().map_err(|_| LoadError::RandomSource)?;
        let store_settings = self
            .store
            .clone()
            .unwrap_or_else(|| loaded.config.store.clone());
        store_settings
            .check()
            .map_err(|(setting, reason)| LoadError::InvalidSetting { setting, reason })?;
        let mut restored = None;
        let (state, keys) = match store_settings.backend {
            StoreBackend::Memory if store_settings.path.is_some() => {
                let o = crate::durable::open(&store_settings, keys, params(&loaded))?;
                restored = Some((o.history, o.durable));
                (Backend::Memory(o.store), o.keys)
            }
            StoreBackend::Memory => (
                Backend::Memory(Store::new(loaded.config.capacity, &keys)),
                keys,
            ),
            #[cfg(feature = "redis")]
            StoreBackend::Redis => {
                let (r, keys) = crate::state::redis::RedisStore::connect(
                    &store_settings,
                    keys,
                    loaded.signals.limits,
                )
                .map_err(|e| LoadError::Store(e.0))?;
                (Backend::Redis(Box::new(r)), keys)
            }
            #[cfg(not(feature = "redis"))]
            StoreBackend::Redis => {
                return Err(LoadError::Store(
                    "`backend = \"redis\"` needs riskgate built with feature `redis`".to_owned(),
                ))
            }
        };
        let (history, durable) = match restored {
            Some((h, d)) => (Arc::new(h), Some(d)),
            None => (Arc::new(History::new(loaded.signals.limits, keys)), None),
        };
        let repeat_ttl = AtomicI64::new(loaded.config.idempotency_ttl.ms());
        Ok(Engine {
            shared: Arc::new(Shared {
                ruleset: ArcSwap::from_pointee(loaded),
                state,
                store_settings,
                fingerprint_key: keys.fingerprint,
                history,
                durable,
                clock: self.clock.unwrap_or_else(|| Arc::new(SystemClock)),
                rules_dir: self.rules_dir,
                reload: Mutex::new(()),
                swap: Mutex::new(()),
                repeat_ttl,
                decisions: Striped::default(),
                stats: stats::Counters::default(),
                overrides: self.overrides,
                sandbox_limits: self.sandbox_limits,
            }),
        })
    }
}

impl Engine {
    /// Starts building an engine.
    pub fn builder() -> EngineBuilder {
        EngineBuilder::default()
    }

    /// Decides an action now (on the engine's clock). See [`track_at`](Engine::track_at).
    pub fn track(&self, req: &TrackRequest) -> Result<TrackResponse, TrackError> {
        self.track_at(req, self.shared.clock.now())
    }

    /// [`track`](Engine::track), handing `f` a borrowed [`TrackView`] of the action instead of an owned
    /// response, and returning what `f` returns. A repeat answered this way allocates nothing and writes no
    /// memory shared with other threads (the view reads the stored action in place); `track` is this with
    /// [`TrackView::to_response`].
    ///
    /// `f` runs while the action is pinned in the store (memory the store removes meanwhile is freed after it
    /// returns): keep it short, and copy out what must outlive it.
    ///
    /// ```
    /// use riskgate::{Engine, RuleSet, State, TrackRequest};
    ///
    /// let engine = Engine::builder()
    ///     .ruleset(RuleSet::from_sources([("big", "if custom.amount > 100 { BLOCK }")])?)
    ///     .build()?;
    /// let req = TrackRequest::new("u1", "withdraw").idempotency_key("k1").custom("amount", 500);
    /// let first = engine.track_with(&req, |v| (v.state(), v.rule_ids().len()))?;
    /// assert_eq!(first, (State::Block, 1));
    /// // The repeat reads the stored action in place.
    /// assert!(engine.track_with(&req, |v| v.rule_ids()[0] == *"big")?);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn track_with<R>(
        &self,
        req: &TrackRequest,
        f: impl FnOnce(&TrackView<'_>) -> R,
    ) -> Result<R, TrackError> {
        self.track_with_at(req, self.shared.clock.now(), f)
    }

    /// [`track_with`](Engine::track_with) for an action that happened at `at` (see
    /// [`track_at`](Engine::track_at)).
    pub fn track_with_at<R>(
        &self,
        req: &TrackRequest,
        at: SystemTime,
        f: impl FnOnce(&TrackView<'_>) -> R,
    ) -> Result<R, TrackError> {
        let now = event_time(at)?;
        match &self.shared.state {
            Backend::Memory(store) => self.track_memory(store, req, now, f),
            #[cfg(feature = "redis")]
            Backend::Redis(r) => self
                .track_remote(r, &self.shared.ruleset.load(), req, now)
                .map(|resp| f(&TrackView::owned(&resp))),
        }
    }

    /// Decides an action that happened at `at`: the time velocity windows, retention and token expiry are
    /// measured from (for replays, backtests and tests).
    ///
    /// The first call for an identity validates the request, evaluates every enabled rule for the action
    /// against the history before it, stores the action and returns the decision. A repeat with the same user,
    /// action and idempotency key returns the stored action (its current state) without evaluating rules or
    /// counting in any signal; a repeat with different attributes is refused with
    /// [`TrackError::IdempotencyConflict`] (unless `[idempotency] on_conflict = "replay"`).
    ///
    /// Event times range from 1970-01-01T00:00:00Z to 9999-12-31T23:59:59.999Z, the same range replay accepts
    /// for its RFC 3339 and epoch-millisecond timestamps; a time outside it is refused with
    /// [`TrackError::InvalidRequest`] on `timestamp`, and nothing is stored.
    ///
    /// Rule failures never make this return `Err`: they are reported in the response's `errors`.
    pub fn track_at(
        &self,
        req: &TrackRequest,
        at: SystemTime,
    ) -> Result<TrackResponse, TrackError> {
        self.track_with_at(req, at, |v| v.to_response())
    }

    /// `track_at` on the in-memory store.
    fn track_memory<R>(
        &self,
        store: &Store,
        req: &TrackRequest,
        now: EpochMs,
        f: impl FnOnce(&TrackView<'_>) -> R,
    ) -> Result<R, TrackError> {
        let guard = store.guard();
        // The identity, hashed once: by the repeat fast path when the request has a key.
        let mut known = None;
        // The repeat fast path. A stored action with this identity and this fingerprint was tracked with the same
        // attributes, which passed validation then: validating them again (most of what a repeat would cost)
        // cannot fail, so a decided repeat is answered before it. Anything else takes the full path below. It
        // needs nothing of the ruleset but the TTL, read from `repeat_ttl` rather than by loading the ruleset.
        if let Some(key) = req.attributes.idempotency_key.as_deref() {
            let id = store.key(&req.user_id, &req.action, key);
            known = Some(id);
            let ttl = DurationMs::from_ms(self.shared.repeat_ttl.load(Ordering::Relaxed));
            if let Some(slot) = store.get(&guard, id, now, ttl) {
                if slot.fingerprint == req.fingerprint(&self.shared.fingerprint_key).into() {
                    if let Some(decided) = slot.decided.get() {
                        return answer(store, id, key, slot, decided, f);
                    }
                }
            }
        }
        let rs = self.shared.ruleset.load();
        let cfg = &rs.config;
        req.validate()?;
        cfg.custom.check(&req.attributes.custom)?;
        // Computed again when the fast path found the action but not a decided match (a conflict, or a first
        // decision still running): keeping the fast path's value measured 7 instructions dearer on every repeat.
        let fingerprint = req.fingerprint(&self.shared.fingerprint_key).into();
        let generated;
        let key = match &req.attributes.idempotency_key {
            Some(k) => k.as_str(),
            None => {
                generated = uuid::Uuid::new_v4().to_string();
                generated.as_str()
            }
        };
        let id = known.unwrap_or_else(|| store.key(&req.user_id, &req.action, key));
        let slot = match store.get_or_insert(&guard, id, fingerprint, now, cfg.idempotency_ttl) {
            Found::New(slot) => slot,
            Found::Existing(slot)
                if slot.fingerprint == fingerprint || cfg.on_conflict == OnConflict::Replay =>
            {
                slot
            }
            Found::Existing(_) => {
                return Err(TrackError::IdempotencyConflict {
                    user_id: req.user_id.clone(),
                    action: req.action.clone(),
                    idempotency_key: key.to_owned(),
                })
            }
        };
        let mut decided_here = false;
        let decided = slot.decided.get_or_init(|| {
            decided_here = true;
            self.decide(&rs, req, key, now, slot)
        });
        if decided_here {
            // Registered once the decision holding the token is set (see `Store::register_token`).
            store.register_token(id, slot);
        }
        answer(store, id, key, slot, decided, f)
    }

    /// Runs the rules for a new action (its idempotency key `key`) and fixes its first decision.
    fn decide(
        &self,
        rs: &Loaded,
        req: &TrackRequest,
        key: &str,
        now: EpochMs,
        slot: &Slot,
    ) -> Decided {
        let ctx = DecisionCtx::new(&self.shared.history, &rs.signals, req, now);
        let (decision, footprint) = self.evaluate(rs, req, ctx);
        slot.init_state(decision.state);
        let (token, url) = challenge(rs, req, decision.state);
        let identity = (req.user_id.as_str(), req.action.as_str(), key);
        let decided = Decided::new(
            decision,
            identity,
            token,
            token::expires_at(now, rs.config.token_ttl),
            url,
            footprint,
        );
        // Journaled before the decision is visible, so every later change to the action follows it.
        if let Some(d) = &self.shared.durable {
            d.journal().action(identity, slot, &decided);
        }
        decided
    }

    /// Evaluates the rules for a new action on `ctx`, resolves them, counts the decision and records the action
    /// in history.
    // Inlined into both callers so the context is built in place, not moved (measured: the in-memory first
    // decision costs the same instructions as before the store seam).
    #[inline(always)]
    fn evaluate(
        &self,
        rs: &Loaded,
        req: &TrackRequest,
        ctx: DecisionCtx,
    ) -> (decide::Decision, signals::Footprint) {
        self.shared.decisions.incr();
        let idx = rs.rules_for(&req.action);
        // No user, IP, device, key or token in the span: only what the action is and what it decided.
        #[cfg(feature = "tracing")]
        let _span =
            tracing::debug_span!("riskgate.decide", action = %req.action, rules = idx.len())
                .entered();
        let started = std::time::Instant::now();
        rules::binding::with_decision(ctx, |ctx| {
            let mut results = sandbox::Results::new();
            sandbox::evaluate(
                &rs.engine,
                &rs.config.limits,
                req,
                ctx,
                idx.iter().map(|&i| &rs.rules[i]),
                &mut results,
            );
            rs.counters.record(idx, &results);
            let decision = decide::resolve(
                &rs.config,
                &req.action,
                idx.iter().map(|&i| &rs.rules[i]),
                &mut results,
            );
            self.shared.stats.record(decision.state, started);
            #[cfg(feature = "tracing")]
            tracing::debug!(
                state = decision.state.as_str(),
                priority_rule_id = decision.priority_rule_id.as_ref().map(|r| r.to_string()),
                errors = decision.errors.len(),
                "decided"
            );
            let footprint = ctx.record(decision.state);
            (decision, footprint)
        })
    }

    /// Explains what [`track`](Engine::track) would decide for `req` now (on the engine's clock). See
    /// [`explain_at`](Engine::explain_at).
    pub fn explain(&self, req: &TrackRequest) -> Result<Explanation, TrackError> {
        self.explain_at(req, self.shared.clock.now())
    }

    /// A dry run of [`track_at`](Engine::track_at): evaluates every enabled rule for the action against the
    /// history as it is, resolves the decision, and returns it with a trace of each rule (matched or not, its
    /// outcome or error, time taken, the signals, variables and `custom` keys it reads with their values, and
    /// the value of each operand of its top-level conditions). See [`RuleTrace`](crate::RuleTrace).
    ///
    /// Nothing is recorded: no history, no stored action, no token, and [`decisions`](Engine::decisions) does
    /// not count it. The store is not consulted either: a request whose identity was already tracked is
    /// evaluated as if it were new. The request is validated as `track` validates it.
    ///
    /// ```
    /// use riskgate::{Engine, RuleSet, State, TrackRequest};
    ///
    /// let engine = Engine::builder()
    ///     .ruleset(RuleSet::from_sources([("busy", r#"if velocity("10m") > 1 { BLOCK }"#)])?)
    ///     .build()?;
    /// engine.track(&TrackRequest::new("u1", "signIn"))?;
    /// let why = engine.explain(&TrackRequest::new("u1", "signIn"))?;
    /// assert_eq!(why.state, State::Allow);
    /// let rule = &why.rules[0];
    /// assert!(!rule.matched);
    /// assert_eq!(rule.signals[0].expr, r#"velocity("10m")"#);
    /// assert_eq!(rule.signals[0].value, 1);
    /// assert_eq!(rule.comparisons[0].expr, r#"velocity("10m") > 1"#);
    /// assert_eq!(rule.comparisons[0].value, false);
    /// assert_eq!(engine.decisions(), 1, "explaining decides nothing");
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn explain_at(
        &self,
        req: &TrackRequest,
        at: SystemTime,
    ) -> Result<Explanation, TrackError> {
        let now = event_time(at)?;
        req.validate()?;
        let rs = self.shared.ruleset.load();
        let idx = rs.rules_for(&req.action);
        let ctx = DecisionCtx::new(&self.shared.history, &rs.signals, req, now);
        Ok(rules::binding::with_decision(ctx, |ctx| {
            let mut results = sandbox::Results::new();
            let mut traces = Vec::with_capacity(idx.len());
            for &i in idx {
                let rule = &rs.rules[i];
                let started = std::time::Instant::now();
                sandbox::evaluate(
                    &rs.engine,
                    &rs.config.limits,
                    req,
                    ctx,
                    std::iter::once(rule),
                    &mut results,
                );
                let time_ns = u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX);
                traces.push(rules::explain::trace(
                    &rs.engine,
                    &rs.config.limits,
                    req,
                    ctx,
                    rule,
                    results.last(),
                    time_ns,
                ));
            }
            let d = decide::resolve(
                &rs.config,
                &req.action,
                idx.iter().map(|&i| &rs.rules[i]),
                &mut results,
            );
            Explanation {
                state: d.state,
                rule_ids: d.rule_ids.into_vec(),
                priority_rule_id: d.priority_rule_id,
                shadow_rule_ids: d.shadow_rule_ids,
                errors: d.errors,
                rules: traces,
            }
        }))
    }

    /// Evaluates one rule expression for `req` at `at` (`velocity("10m")`, `is_new_device()`,
    /// `custom.amount > 100`), as a rule of the current ruleset would see it: in the rules' sandbox, against the
    /// history before the action. Nothing is recorded. The value is JSON (`null` for `()`; an outcome as its
    /// name). A request that fails validation, an expression that does not parse or fails (such as a signal
    /// whose history no rule keeps) is [`TrackError::InvalidRequest`].
    ///
    /// ```
    /// use riskgate::{Engine, RuleSet, TrackRequest};
    ///
    /// let engine = Engine::builder()
    ///     .ruleset(RuleSet::from_sources([("busy", r#"if velocity("1h") > 5 { BLOCK }"#)])?)
    ///     .build()?;
    /// let req = TrackRequest::new("u1", "signIn");
    /// engine.track(&req)?;
    /// let now = std::time::SystemTime::now();
    /// assert_eq!(engine.evaluate_at(&req, r#"velocity("10m")"#, now)?, 1);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn evaluate_at(
        &self,
        req: &TrackRequest,
        expression: &str,
        at: SystemTime,
    ) -> Result<serde_json::Value, TrackError> {
        let now = event_time(at)?;
        req.validate()?;
        let rs = self.shared.ruleset.load();
        let ctx = DecisionCtx::new(&self.shared.history, &rs.signals, req, now);
        rules::binding::with_decision(ctx, |_| {
            rules::explain::evaluate_source(&rs.engine, &rs.config.limits, req, expression)
        })
        .map_err(|reason| TrackError::invalid("expression", &reason))
    }

    /// The stored action with this identity, if it is still retained.
    pub fn get_action(
        &self,
        user_id: &str,
        action: &str,
        idempotency_key: &str,
    ) -> Option<ActionRecord> {
        let now = EpochMs::from_ms(to_millis(self.shared.clock.now()));
        let ttl = self.shared.ruleset.load().config.idempotency_ttl;
        let store = match &self.shared.state {
            Backend::Memory(store) => store,
            #[cfg(feature = "redis")]
            Backend::Redis(r) => {
                let get = r.get(
                    Io::Blocking,
                    user_id,
                    action,
                    idempotency_key,
                    now.ms(),
                    ttl.ms(),
                );
                return finish(get)
                    .and_then(Result::ok)
                    .flatten()
                    .map(|s| s.record());
            }
        };
        let guard = store.guard();
        let slot = store.get(
            &guard,
            store.key(user_id, action, idempotency_key),
            now,
            ttl,
        )?;
        let decided = slot.decided.get().filter(|d| complete(d))?;
        Some(record((user_id, action, idempotency_key), slot, decided))
    }

    /// Moves a stored action to `new_state`: `CHALLENGE_REQUIRED` → `CHALLENGE_SUCCEEDED` or
    /// `CHALLENGE_FAILED`; `REVIEW` → `REVIEW_SUCCEEDED` or `REVIEW_FAILED`.
    ///
    /// Any other move is refused with [`TrackError::InvalidTransition`], an unknown action with
    /// [`TrackError::ActionNotFound`]; either way nothing changes.
    pub fn update_action(
        &self,
        user_id: &str,
        action: &str,
        idempotency_key: &str,
        new_state: State,
    ) -> Result<ActionRecord, TrackError> {
        let now = EpochMs::from_ms(to_millis(self.shared.clock.now()));
        let ttl = self.shared.ruleset.load().config.idempotency_ttl;
        let not_found = || TrackError::ActionNotFound {
            user_id: user_id.to_owned(),
            action: action.to_owned(),
            idempotency_key: idempotency_key.to_owned(),
        };
        let store = match &self.shared.state {
            Backend::Memory(store) => store,
            #[cfg(feature = "redis")]
            Backend::Redis(r) => {
                let update = self.update_remote(
                    r,
                    Io::Blocking,
                    user_id,
                    action,
                    idempotency_key,
                    new_state,
                    now,
                );
                return finish(update).unwrap_or_else(|| Err(suspended()));
            }
        };
        let guard = store.guard();
        let identity = (user_id, action, idempotency_key);
        let slot = store
            .get(
                &guard,
                store.key(user_id, action, idempotency_key),
                now,
                ttl,
            )
            .ok_or_else(not_found)?;
        let decided = slot
            .decided
            .get()
            .filter(|d| complete(d))
            .ok_or_else(not_found)?;
        let from = slot.state();
        if !from.allowed_moves().contains(&new_state) || !slot.transition(from, new_state, now) {
            // Report the state the refusal was decided on: after a lost race it is the winner's.
            let current = slot.state();
            return Err(TrackError::InvalidTransition {
                from: current,
                to: new_state,
                allowed: current.allowed_moves(),
            });
        }
        if let Some(d) = &self.shared.durable {
            d.journal().transition(identity, new_state, now);
        }
        if matches!(
            new_state,
            State::ChallengeSucceeded | State::ReviewSucceeded
        ) {
            let rs = self.shared.ruleset.load();
            if let Some(footprint) = decided.footprint() {
                let history = signals::View::Local(Arc::clone(&self.shared.history));
                signals::make_known(&history, &rs.signals, footprint);
            }
        }
        Ok(record(identity, slot, decided))
    }

    /// Checks a challenge token: valid only when it is unexpired, its action reached `CHALLENGE_SUCCEEDED`,
    /// and it was not validated before. The action's identity and state are returned either way.
    pub fn validate_challenge(&self, token: &str) -> ValidateChallengeResponse {
        let now = EpochMs::from_ms(to_millis(self.shared.clock.now()));
        let ttl = self.shared.ruleset.load().config.idempotency_ttl;
        let invalid = |reason| ValidateChallengeResponse {
            is_valid: false,
            state: None,
            user_id: None,
            action: None,
            idempotency_key: None,
            reason: Some(reason),
        };
        if token.is_empty() || token.len() > token::MAX_TOKEN_BYTES {
            return invalid(InvalidTokenReason::UnknownToken);
        }
        let store = match &self.shared.state {
            Backend::Memory(store) => store,
            #[cfg(feature = "redis")]
            Backend::Redis(r) => {
                return finish(remote_validate(r, Io::Blocking, token, now, ttl))
                    .unwrap_or_else(store_unavailable)
            }
        };
        let guard = store.guard();
        let Some(slot) = store.by_token(&guard, token, now, ttl) else {
            return invalid(InvalidTokenReason::UnknownToken);
        };
        // An action with a token keeps its identity.
        let Some((decided, identity)) = slot.decided.get().and_then(|d| Some((d, d.identity()?)))
        else {
            return invalid(InvalidTokenReason::UnknownToken);
        };
        let state = slot.state();
        // Expiry first, then the state, and only then is the token used up: checking a pending, failed or
        // expired token never spends it.
        let reason = if token::is_expired(decided.token_expires(), now) {
            Some(InvalidTokenReason::Expired)
        } else if state != State::ChallengeSucceeded {
            Some(InvalidTokenReason::NotSucceeded)
        } else if !slot.use_token() {
            Some(InvalidTokenReason::AlreadyUsed)
        } else {
            if let Some(d) = &self.shared.durable {
                d.journal().token_used(identity);
            }
            None
        };
        ValidateChallengeResponse {
            is_valid: reason.is_none(),
            state: Some(state),
            user_id: Some(identity.0.to_owned()),
            action: Some(identity.1.to_owned()),
            idempotency_key: Some(identity.2.to_owned()),
            reason,
        }
    }

    /// Replaces the ruleset atomically (see [Reloads](Engine#reloads)). Stored actions and history are kept;
    /// the new set's `[idempotency]` and `[challenge]` settings apply from now on.
    ///
    /// Settings made on the [`EngineBuilder`] still override the new set's `riskgate.toml`; its sandbox limits
    /// are the set's own.
    pub fn swap_ruleset(&self, ruleset: RuleSet) {
        let loaded = Loaded::new(ruleset.inner, &self.shared.overrides);
        // A poisoned lock only means another swap panicked; what it guards is set again below.
        let _swap = self.shared.swap.lock().unwrap_or_else(|p| p.into_inner());
        self.shared
            .repeat_ttl
            .store(loaded.config.idempotency_ttl.ms(), Ordering::Relaxed);
        match &self.shared.state {
            Backend::Memory(store) => store.set_capacity(loaded.config.capacity),
            #[cfg(feature = "redis")]
            Backend::Redis(_) => {}
        }
        self.shared.history.set_limits(loaded.signals.limits);
        if let Some(d) = &self.shared.durable {
            d.set_params(params(&loaded));
        }
        let old = self.shared.ruleset.swap(Arc::new(loaded));
        self.shared.stats.retire(Arc::clone(&old.counters));
    }

    /// Reloads the ruleset from the folder the engine was built from. If the folder no longer loads, the error
    /// is returned and the current ruleset stays.
    pub fn reload_rules(&self) -> Result<(), LoadError> {
        let dir = self
            .shared
            .rules_dir
            .as_ref()
            .ok_or(LoadError::NoRulesDir)?;
        // One reload at a time, so that two reloads cannot finish in the wrong order.
        let _guard = self.shared.reload.lock();
        let ruleset = load_dir(dir, self.shared.sandbox_limits)?;
        self.swap_ruleset(ruleset);
        Ok(())
    }

    /// [`reload_rules`](Engine::reload_rules) with a check between loading and swapping: the loaded ruleset (or
    /// its error) counts only if `settled` says the folder did not change meanwhile; `None` when it did.
    #[cfg(feature = "watch")]
    pub(crate) fn reload_settled(
        &self,
        settled: impl FnOnce() -> bool,
    ) -> Option<Result<(), LoadError>> {
        let Some(dir) = self.shared.rules_dir.as_ref() else {
            return Some(Err(LoadError::NoRulesDir));
        };
        let loaded = RuleSet::from_dir(dir);
        if !settled() {
            return None;
        }
        let ruleset = match loaded {
            Ok(r) => r,
            Err(e) => return Some(Err(e)),
        };
        let _guard = self.shared.reload.lock();
        self.swap_ruleset(ruleset);
        Some(Ok(()))
    }

    /// Replaces list `name` of the current ruleset with `text` (the `rules/lists/<name>.txt` format), atomically:
    /// a decision sees either the old list or the new one, never a mix. A list that does not parse is refused
    /// and the old one stays. A list the ruleset did not have is added.
    ///
    /// The change lasts until the ruleset is replaced: [`reload_rules`](Engine::reload_rules) reads the list
    /// files again.
    ///
    /// ```
    /// use riskgate::{Engine, RuleSet, State, TrackAttributes, TrackRequest};
    ///
    /// let rules = RuleSet::builder()
    ///     .list("blocked-ips", "")
    ///     .rule("blocked", r#"if in_list("blocked-ips", ip_address) { BLOCK }"#)
    ///     .build()?;
    /// let engine = Engine::builder().ruleset(rules).build()?;
    /// engine.replace_list("blocked-ips", "203.0.113.0/24\n")?;
    /// let req = TrackRequest {
    ///     user_id: "u1".into(),
    ///     action: "signIn".into(),
    ///     attributes: TrackAttributes { ip_address: Some("203.0.113.9".into()), ..Default::default() },
    /// };
    /// assert_eq!(engine.track(&req)?.state, State::Block);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn replace_list(&self, name: &str, text: &str) -> Result<(), LoadError> {
        let file = format!("lists/{name}.txt");
        let list = Arc::new(signals::lists::load(name, text, &file).map_err(LoadError::Invalid)?);
        // Not while a reload is swapping rulesets, so the new list lands in the ruleset that stays.
        let _guard = self.shared.reload.lock();
        let rs = self.shared.ruleset.load();
        rs.signals.lists.rcu(|old| {
            let mut lists = signals::lists::Lists::clone(old);
            lists.insert(name.into(), Arc::clone(&list));
            lists
        });
        Ok(())
    }

    /// How many keys the signal history holds now, over its three tables (velocity series, distinct sets and
    /// known devices): each table holds at most `[signals] max_keys`.
    pub fn history_keys(&self) -> usize {
        self.shared.history.len()
    }

    /// The bytes the signal history accounts for now, over its three tables: each key's slots and its entries
    /// on the heap, with the allocator's overhead. Each table holds at most `[signals] max_bytes`.
    pub fn history_bytes(&self) -> usize {
        self.shared.history.bytes()
    }

    /// Writes everything to the durable state (`[store] path`): every change so far is synced to the journal,
    /// then a snapshot of the whole state is written and this waits for it. Dropping the last clone of the
    /// engine does the same. Without `[store] path` there is nothing to write.
    ///
    /// # Errors
    /// The write that failed (the disk full, the folder gone). The changes it held stay buffered and are written
    /// by the next sync or `flush` once the disk has room. Changes counted in
    /// [`DurableStats::dropped`](crate::DurableStats::dropped) are not written by any flush.
    ///
    /// ```
    /// use riskgate::{Engine, RuleSet, StoreSettings, TrackRequest};
    ///
    /// let dir = std::env::temp_dir().join(format!("riskgate-doc-flush-{}", std::process::id()));
    /// std::fs::create_dir_all(&dir)?;
    /// let store = StoreSettings::file(dir.join("state"));
    /// let rules = RuleSet::from_sources([("r", "ALLOW")])?;
    /// let engine = Engine::builder().ruleset(rules.clone()).store(store.clone()).build()?;
    /// engine.track(&TrackRequest::new("u1", "signIn").idempotency_key("k1"))?;
    /// engine.flush()?;
    /// drop(engine);
    /// let again = Engine::builder().ruleset(rules).store(store).build()?;
    /// assert!(again.get_action("u1", "signIn", "k1").is_some());
    /// # drop(again); std::fs::remove_dir_all(&dir)?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn flush(&self) -> std::io::Result<()> {
        match &self.shared.durable {
            Some(d) => d.flush(),
            None => Ok(()),
        }
    }

    /// What durable state (`[store] path`) has written, dropped and recovered; `None` without it.
    pub fn durable_stats(&self) -> Option<crate::DurableStats> {
        self.shared.durable.as_ref().map(|d| d.stats())
    }

    /// The ruleset in use now.
    pub fn ruleset(&self) -> RuleSet {
        RuleSet {
            inner: Arc::clone(&self.shared.ruleset.load().set),
        }
    }

    /// How many actions the store holds now (expired ones may still count until they are evicted). On a remote
    /// store this scans it (for tests and diagnostics: it costs a round trip per thousand keys).
    pub fn stored_actions(&self) -> usize {
        match &self.shared.state {
            Backend::Memory(store) => store.len(),
            #[cfg(feature = "redis")]
            Backend::Redis(r) => r.count_actions().unwrap_or(0),
        }
    }

    /// How many times this engine has evaluated the rules: once per new action. Repeats (idempotent calls,
    /// including concurrent ones coalesced into one decision), conflicts and refused requests do not count.
    ///
    /// With [`stored_actions`](Engine::stored_actions) this tells how often callers repeat, and lets a test
    /// check that concurrent calls with one identity decided once.
    ///
    /// ```
    /// use riskgate::{Engine, RuleSet, TrackRequest};
    ///
    /// let engine = Engine::builder().ruleset(RuleSet::from_sources([("r", "ALLOW")])?).build()?;
    /// let mut req = TrackRequest::new("user-1", "signIn");
    /// req.attributes.idempotency_key = Some("k1".into());
    /// engine.track(&req)?;
    /// engine.track(&req)?; // a repeat: the stored action, no evaluation
    /// assert_eq!(engine.decisions(), 1);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn decisions(&self) -> u64 {
        self.shared.decisions.get()
    }

    /// Counts since the engine was built: first decisions by state, per rule (over every ruleset it has used)
    /// how often it matched and failed, and the time spent evaluating rules. See [`Stats`] (and, with feature
    /// `metrics`, [`Stats::publish`]).
    ///
    /// The counters are spread over per-thread stripes so that decisions on different cores do not write one
    /// shared cache line; a snapshot sums them, and is exact once the decisions it counts have finished.
    ///
    /// ```
    /// use riskgate::{Engine, RuleSet, TrackRequest};
    ///
    /// let engine = Engine::builder()
    ///     .ruleset(RuleSet::from_sources([("no-device", "if device_id == () { BLOCK }")])?)
    ///     .build()?;
    /// engine.track(&TrackRequest::new("u1", "signIn"))?;
    /// let stats = engine.stats();
    /// assert_eq!((stats.decisions, stats.by_state.block), (1, 1));
    /// assert_eq!(stats.rules["no-device"].matches, 1);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn stats(&self) -> Stats {
        self.shared
            .stats
            .snapshot(&self.shared.ruleset.load().counters)
    }
}

/// Calls that may wait on a remote store, for async callers.
///
/// With the in-memory store every call is a few microseconds of CPU and these simply run it. With a remote
/// store (`[store] backend = "redis"`) a call waits on one or two round trips (and, for an identity another
/// instance is deciding, up to `[store] lease`): these await it on the runtime, so a web handler never blocks
/// its runtime's worker threads. The round trips of every concurrent async caller share one multiplexed
/// connection (one per cluster node), pipelined together. Use them from async code (with a remote store they
/// need a tokio runtime with I/O and time enabled); use the sync calls from threads.
///
/// ```
/// use riskgate::{Engine, RuleSet, State, TrackRequest};
///
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let engine = Engine::builder().ruleset(RuleSet::from_sources([("r", "REVIEW")])?).build()?;
/// let req = TrackRequest::new("u1", "signIn").idempotency_key("k1");
/// let resp = futures_lite_block_on(engine.track_async(&req))?;
/// assert_eq!(resp.state, State::Review);
/// # Ok(()) }
/// # fn futures_lite_block_on<F: std::future::Future>(f: F) -> F::Output {
/// #     let waker = std::task::Waker::noop();
/// #     let mut cx = std::task::Context::from_waker(&waker);
/// #     let mut f = std::pin::pin!(f);
/// #     loop { if let std::task::Poll::Ready(v) = f.as_mut().poll(&mut cx) { return v; } }
/// # }
/// ```
impl Engine {
    /// [`track`](Engine::track), without blocking an async runtime on a remote store.
    pub async fn track_async(&self, req: &TrackRequest) -> Result<TrackResponse, TrackError> {
        #[cfg(feature = "redis")]
        if let Backend::Redis(r) = &self.shared.state {
            let now = event_time(self.shared.clock.now())?;
            let rs = self.shared.ruleset.load_full();
            return self.track_remote_io(r, Io::Async, &rs, req, now).await;
        }
        self.track(req)
    }

    /// [`get_action`](Engine::get_action), without blocking an async runtime on a remote store.
    pub async fn get_action_async(
        &self,
        user_id: &str,
        action: &str,
        idempotency_key: &str,
    ) -> Option<ActionRecord> {
        #[cfg(feature = "redis")]
        if let Backend::Redis(r) = &self.shared.state {
            let now = EpochMs::from_ms(to_millis(self.shared.clock.now()));
            let ttl = self.shared.ruleset.load().config.idempotency_ttl;
            return r
                .get(
                    Io::Async,
                    user_id,
                    action,
                    idempotency_key,
                    now.ms(),
                    ttl.ms(),
                )
                .await
                .ok()
                .flatten()
                .map(|s| s.record());
        }
        self.get_action(user_id, action, idempotency_key)
    }

    /// [`update_action`](Engine::update_action), without blocking an async runtime on a remote store.
    pub async fn update_action_async(
        &self,
        user_id: &str,
        action: &str,
        idempotency_key: &str,
        new_state: State,
    ) -> Result<ActionRecord, TrackError> {
        #[cfg(feature = "redis")]
        if let Backend::Redis(r) = &self.shared.state {
            let now = EpochMs::from_ms(to_millis(self.shared.clock.now()));
            return self
                .update_remote(
                    r,
                    Io::Async,
                    user_id,
                    action,
                    idempotency_key,
                    new_state,
                    now,
                )
                .await;
        }
        self.update_action(user_id, action, idempotency_key, new_state)
    }

    /// [`validate_challenge`](Engine::validate_challenge), without blocking an async runtime on a remote store.
    pub async fn validate_challenge_async(&self, token: &str) -> ValidateChallengeResponse {
        #[cfg(feature = "redis")]
        if let Backend::Redis(r) = &self.shared.state {
            if token.is_empty() || token.len() > token::MAX_TOKEN_BYTES {
                return self.validate_challenge(token);
            }
            let now = EpochMs::from_ms(to_millis(self.shared.clock.now()));
            let ttl = self.shared.ruleset.load().config.idempotency_ttl;
            return remote_validate(r, Io::Async, token, now, ttl).await;
        }
        self.validate_challenge(token)
    }

    /// Round trips this engine has made to its remote store (0 in memory): what each call costs, measured.
    pub fn store_round_trips(&self) -> u64 {
        match &self.shared.state {
            Backend::Memory(_) => 0,
            #[cfg(feature = "redis")]
            Backend::Redis(r) => r.round_trips(),
        }
    }

    /// The store's settings, as the engine was built with them.
    pub fn store_settings(&self) -> &StoreSettings {
        &self.shared.store_settings
    }
}

/// The error of a blocking store call whose future did not finish in one poll (it always does).
#[cfg(feature = "redis")]
fn suspended() -> TrackError {
    TrackError::Store("a blocking store call was suspended".to_owned())
}

#[cfg(feature = "redis")]
fn store_unavailable() -> ValidateChallengeResponse {
    ValidateChallengeResponse {
        is_valid: false,
        state: None,
        user_id: None,
        action: None,
        idempotency_key: None,
        reason: Some(InvalidTokenReason::StoreUnavailable),
    }
}

/// `validate_challenge` on a remote store.
#[cfg(feature = "redis")]
async fn remote_validate(
    r: &crate::state::redis::RedisStore,
    io: Io,
    token: &str,
    now: EpochMs,
    ttl: crate::time::DurationMs,
) -> ValidateChallengeResponse {
    use crate::state::redis::Checked;
    match r.validate(io, token, now.ms(), ttl.ms()).await {
        Err(_) => store_unavailable(),
        Ok(Checked::Unknown) => ValidateChallengeResponse {
            reason: Some(InvalidTokenReason::UnknownToken),
            ..store_unavailable()
        },
        Ok(Checked::Found {
            reason,
            user_id,
            action,
            key,
            state,
        }) => ValidateChallengeResponse {
            is_valid: reason.is_none(),
            state: Some(state),
            user_id: Some(user_id),
            action: Some(action),
            idempotency_key: Some(key),
            reason,
        },
    }
}

/// The first decision on a remote store: claim and read (round trip 1), rules, commit and write (round
/// trip 2); a repeat is answered by one round trip (a `GET` when this engine saw it decided).
#[cfg(feature = "redis")]
impl Engine {
    fn track_remote(
        &self,
        r: &crate::state::redis::RedisStore,
        rs: &Loaded,
        req: &TrackRequest,
        now: EpochMs,
    ) -> Result<TrackResponse, TrackError> {
        finish(self.track_remote_io(r, Io::Blocking, rs, req, now))
            .unwrap_or_else(|| Err(suspended()))
    }

    /// [`Engine::track_remote`], waiting on Redis as `io` says.
    async fn track_remote_io(
        &self,
        r: &crate::state::redis::RedisStore,
        io: Io,
        rs: &Loaded,
        req: &TrackRequest,
        now: EpochMs,
    ) -> Result<TrackResponse, TrackError> {
        req.validate()?;
        rs.config.custom.check(&req.attributes.custom)?;
        let generated;
        let key = match &req.attributes.idempotency_key {
            Some(k) => k.as_str(),
            None => {
                generated = uuid::Uuid::new_v4().to_string();
                generated.as_str()
            }
        };
        match self.decide_remote(r, io, rs, req, key, now).await {
            Ok(answer) => answer,
            Err(e) => match self.shared.store_settings.on_store_error {
                OnStoreError::Error => Err(TrackError::Store(e.0)),
                OnStoreError::Outcome(state) => {
                    let mut resp = TrackResponse::new(state, key);
                    resp.store_error = Some(e.0);
                    Ok(resp)
                }
            },
        }
    }

    async fn decide_remote(
        &self,
        r: &crate::state::redis::RedisStore,
        io: Io,
        rs: &Loaded,
        req: &TrackRequest,
        key: &str,
        now: EpochMs,
    ) -> Result<Result<TrackResponse, TrackError>, crate::state::StoreError> {
        use crate::state::record;
        use crate::state::redis::{Claim, ClaimReq};
        use crate::state::StoreError;
        let cfg = &rs.config;
        let limits = rs.signals.limits;
        let fingerprint = req.fingerprint(&self.shared.fingerprint_key);
        let conflict = || {
            Ok(Err(TrackError::IdempotencyConflict {
                user_id: req.user_id.clone(),
                action: req.action.clone(),
                idempotency_key: key.to_owned(),
            }))
        };
        let ttl_ms = cfg.idempotency_ttl.ms();
        let replay = cfg.on_conflict == OnConflict::Replay;
        // A repeat of an action this engine saw decided: one `GET`, before the claim's history reads are built.
        if req.attributes.idempotency_key.is_some() {
            if let Some(s) = r
                .repeat(io, &req.user_id, &req.action, key, now.ms(), ttl_ms)
                .await?
            {
                if s.fingerprint != fingerprint && !replay {
                    return conflict();
                }
                return Ok(Ok(s.response()));
            }
        }
        let snapshot = Arc::new(signals::view::Snapshot::new(
            Arc::clone(r.hasher()),
            limits.known_for_ms,
        ));
        let ctx = DecisionCtx::with_view(
            signals::View::Snapshot(Arc::clone(&snapshot)),
            &rs.signals,
            req,
            now,
        );
        // `rba_score()` reads the population's counts of this action's values: they are asked for with the claim.
        let rba: Vec<u64> = if rs.signals.uses_rba {
            signals::rba::features(&ctx).present().collect()
        } else {
            Vec::new()
        };
        let keys = ctx.keys;
        // Whether this action's device, IP and country are known is looked up with the claim.
        let country = if rs.signals.uses_places || rs.signals.uses_rba {
            signals::country(&ctx).map(|c| ctx.history.hash(b'c', c))
        } else {
            None
        };
        let items = [keys.device, keys.ip, country];
        let mut ctx = Some(ctx);
        // A claim that vanishes while waited on (its claimer died and its lease ran out) is claimed again; a
        // few times at most, each bounded by the lease.
        for _ in 0..4 {
            let claim = r
                .claim(
                    io,
                    &ClaimReq {
                        user_id: &req.user_id,
                        action: &req.action,
                        key,
                        fingerprint,
                        now: now.ms(),
                        ttl_ms,
                        keys: &keys,
                        horizon_ms: rs.signals.horizon_ms,
                        windowed: rs.signals.windowed,
                        windows: rs.signals.windows.as_deref(),
                        known_for_ms: limits.known_for_ms,
                        places: rs.signals.uses_places,
                        uses_rba: rs.signals.uses_rba,
                        known: rs.signals.uses_known,
                        items,
                        rba: &rba,
                    },
                )
                .await?;
            match claim {
                Claim::Conflict => return conflict(),
                Claim::Decided(s) => {
                    if s.fingerprint != fingerprint && !replay {
                        return conflict();
                    }
                    return Ok(Ok(s.response()));
                }
                Claim::Pending(fp) => {
                    if fp != fingerprint && !replay {
                        return conflict();
                    }
                    if let Some(s) = r
                        .wait(io, &req.user_id, &req.action, key, now.ms(), ttl_ms)
                        .await?
                    {
                        return Ok(Ok(s.response()));
                    }
                }
                Claim::Claimed(ticket, fetched) => {
                    let Some(ctx) = ctx.take() else {
                        return Err(StoreError("claimed twice".to_owned()));
                    };
                    snapshot.fill(*fetched);
                    let (decision, footprint) = self.evaluate(rs, req, ctx);
                    let (token, url) = challenge(rs, req, decision.state);
                    if decision.state == State::ChallengeRequired && token.is_none() {
                        r.release(io, &ticket).await?;
                        return Ok(Err(TrackError::RandomSource));
                    }
                    let decided = record::Decided::new(
                        decision,
                        token,
                        token::expires_at(now, cfg.token_ttl).ms(),
                        url,
                        &footprint,
                    );
                    let writes = snapshot.take_writes();
                    let committed = r
                        .commit(
                            io,
                            ticket,
                            &decided,
                            now.ms(),
                            ttl_ms,
                            cfg.token_ttl.ms(),
                            &writes,
                            &limits,
                        )
                        .await?;
                    if committed {
                        let stored = record::Stored {
                            user_id: req.user_id.clone(),
                            action: req.action.clone(),
                            key: key.to_owned(),
                            fingerprint,
                            created: now.ms(),
                            state: decided.outcome,
                            state_updated: now.ms(),
                            decided,
                        };
                        return Ok(Ok(stored.response()));
                    }
                    // The lease ran out before the commit: another caller may have decided; theirs stands.
                    return match r
                        .wait(io, &req.user_id, &req.action, key, now.ms(), ttl_ms)
                        .await?
                    {
                        Some(s) => Ok(Ok(s.response())),
                        None => Err(StoreError(
                            "the decision outlasted `[store] lease` and was not stored".to_owned(),
                        )),
                    };
                }
            }
        }
        Err(StoreError(
            "the identity was claimed and abandoned repeatedly".to_owned(),
        ))
    }

    #[allow(clippy::too_many_arguments)]
    async fn update_remote(
        &self,
        r: &crate::state::redis::RedisStore,
        io: Io,
        user_id: &str,
        action: &str,
        idempotency_key: &str,
        new_state: State,
        now: EpochMs,
    ) -> Result<ActionRecord, TrackError> {
        use crate::state::redis::Update;
        let rs = self.shared.ruleset.load_full();
        let ttl = rs.config.idempotency_ttl;
        let moved = r
            .update(
                io,
                user_id,
                action,
                idempotency_key,
                new_state,
                now.ms(),
                ttl.ms(),
            )
            .await
            .map_err(|e| TrackError::Store(e.0))?;
        let s = match moved {
            Update::Missing => {
                return Err(TrackError::ActionNotFound {
                    user_id: user_id.to_owned(),
                    action: action.to_owned(),
                    idempotency_key: idempotency_key.to_owned(),
                })
            }
            Update::Refused(s) => {
                return Err(TrackError::InvalidTransition {
                    from: s.state,
                    to: new_state,
                    allowed: s.state.allowed_moves(),
                })
            }
            Update::Moved(s) => s,
        };
        if matches!(
            new_state,
            State::ChallengeSucceeded | State::ReviewSucceeded
        ) {
            if let Some(fp) = &s.decided.footprint {
                let limits = rs.signals.limits;
                let snapshot = Arc::new(signals::view::Snapshot::new(
                    Arc::clone(r.hasher()),
                    limits.known_for_ms,
                ));
                let view = signals::View::Snapshot(Arc::clone(&snapshot));
                signals::make_known(&view, &rs.signals, &fp.footprint());
                if let Some(k) = snapshot.take_writes().known {
                    r.know(io, &k, &limits)
                        .await
                        .map_err(|e| TrackError::Store(e.0))?;
                }
            }
        }
        Ok(s.record())
    }
}

/// `at` as an event time, refused outside the range replay accepts.
fn event_time(at: SystemTime) -> Result<EpochMs, TrackError> {
    let now_ms = to_millis(at);
    Ok(EpochMs::from_ms(crate::clock::check_event_ms(
        i128::from(now_ms),
        || format!("{now_ms} ms since the epoch"),
    )?))
}

/// What durable state holds its files to, from a ruleset.
fn params(loaded: &Loaded) -> crate::durable::Params {
    crate::durable::Params {
        capacity: loaded.config.capacity,
        ttl: loaded.config.idempotency_ttl,
        limits: loaded.signals.limits,
        horizon_ms: loaded.signals.horizon_ms,
    }
}

/// Loads the rules folder `dir`, under `limits` when given.
fn load_dir(dir: &std::path::Path, limits: Option<SandboxLimits>) -> Result<RuleSet, LoadError> {
    match limits {
        Some(l) => RuleSet::builder().rules_dir(dir)?.sandbox_limits(l).build(),
        None => RuleSet::from_dir(dir),
    }
}

/// Whether a decided action can be answered: a `CHALLENGE_REQUIRED` without a token (the random source
/// failed while deciding it) cannot, and is withdrawn.
fn complete(d: &Decided) -> bool {
    d.outcome() != State::ChallengeRequired || d.token().is_some()
}

/// The response to `track` for a decided action, stored under `id` with idempotency key `key`. A challenge
/// that got no token is an error, never a `CHALLENGE_REQUIRED` the client cannot complete: the action leaves
/// the store, so a retry decides again.
fn answer<R>(
    store: &Store,
    id: H128,
    key: &str,
    slot: &Slot,
    d: &Decided,
    f: impl FnOnce(&TrackView<'_>) -> R,
) -> Result<R, TrackError> {
    if !complete(d) {
        store.withdraw(id, slot);
        return Err(TrackError::RandomSource);
    }
    Ok(f(&TrackView::stored(slot, d, key)))
}

/// The record of a stored action whose identity is (`user_id`, `action`, `key`).
fn record(identity: (&str, &str, &str), slot: &Slot, d: &Decided) -> ActionRecord {
    let (user_id, action, key) = identity;
    ActionRecord {
        user_id: user_id.to_owned(),
        action: action.to_owned(),
        idempotency_key: key.to_owned(),
        state: slot.state(),
        outcome: d.outcome(),
        rule_ids: d.rule_ids().to_vec(),
        priority_rule_id: d.priority_rule_id().cloned(),
        created_at: crate::clock::from_millis(slot.created.ms()),
        state_updated_at: crate::clock::from_millis(slot.state_updated().ms()),
    }
}

/// The token (and challenge url) of a decision in `state`. A failed random source leaves a challenge without a
/// token, which the caller turns into an error.
fn challenge(rs: &Loaded, req: &TrackRequest, state: State) -> (Option<String>, Option<String>) {
    let token = (state == State::ChallengeRequired)
        .then(token::new_token)
        .and_then(Result::ok);
    let url = match (&token, &rs.config.challenge_url) {
        (Some(t), Some(base)) => Some(challenge_url(
            base,
            t,
            req.attributes.redirect_url.as_deref(),
        )),
        _ => None,
    };
    (token, url)
}

/// `base` with `token` (and `redirectUrl`) added as query parameters.
fn challenge_url(base: &str, token: &str, redirect: Option<&str>) -> String {
    let mut url = String::with_capacity(base.len() + token.len() + 64);
    url.push_str(base);
    url.push(if base.contains('?') { '&' } else { '?' });
    url.push_str("token=");
    url.push_str(token);
    if let Some(r) = redirect {
        url.push_str("&redirectUrl=");
        for b in r.bytes() {
            if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
                url.push(char::from(b));
            } else {
                url.push_str(&format!("%{b:02X}"));
            }
        }
    }
    url
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::TrackError;

    #[test]
    fn a_failed_random_source_is_an_error_and_a_retry_decides_again() {
        let e = Engine::builder()
            .ruleset(RuleSet::from_sources([("c", "CHALLENGE_REQUIRED")]).unwrap())
            .build()
            .unwrap();
        let req = TrackRequest::new("u1", "signIn").idempotency_key("k1");
        crate::hash::FAIL_RANDOM.with(|f| f.set(true));
        let err = e.track(&req).unwrap_err();
        // A repeat while the source is still broken decides again and fails again: never a tokenless challenge.
        let again = e.track(&req).unwrap_err();
        crate::hash::FAIL_RANDOM.with(|f| f.set(false));
        assert_eq!(err, TrackError::RandomSource);
        assert_eq!(again, TrackError::RandomSource);
        assert_eq!((err.code(), err.http_status()), ("random_source", 503));
        assert_eq!(e.decisions(), 2);
        assert_eq!(e.stored_actions(), 0, "the failed action is withdrawn");
        assert_eq!(e.get_action("u1", "signIn", "k1"), None);
        assert!(matches!(
            e.update_action("u1", "signIn", "k1", State::ChallengeSucceeded),
            Err(TrackError::ActionNotFound { .. })
        ));
        let ok = e.track(&req).unwrap();
        assert_eq!(ok.state, State::ChallengeRequired);
        assert!(ok.token.is_some());
        assert_eq!(e.decisions(), 3);
        // Other outcomes never need the random source.
        let allow = Engine::builder()
            .ruleset(RuleSet::from_sources([("a", "ALLOW")]).unwrap())
            .build()
            .unwrap();
        crate::hash::FAIL_RANDOM.with(|f| f.set(true));
        let r = allow.track(&req);
        crate::hash::FAIL_RANDOM.with(|f| f.set(false));
        assert_eq!(r.unwrap().state, State::Allow);
    }

    #[test]
    fn a_failed_random_source_fails_the_build_and_never_weakens_the_keys() {
        let builder =
            || Engine::builder().ruleset(RuleSet::from_sources([("a", "ALLOW")]).unwrap());
        crate::hash::FAIL_RANDOM.with(|f| f.set(true));
        let r = builder().build();
        crate::hash::FAIL_RANDOM.with(|f| f.set(false));
        let err = r.err().unwrap();
        assert!(matches!(err, LoadError::RandomSource), "{err:?}");
        assert_eq!(
            err.to_string(),
            "the operating system's random source failed: cannot draw the engine's secret keys"
        );
        assert!(builder().build().is_ok());
    }

    #[test]
    fn every_engine_fingerprints_with_its_own_secret() {
        let build = || {
            Engine::builder()
                .ruleset(RuleSet::from_sources([("r", "ALLOW")]).unwrap())
                .build()
                .unwrap()
        };
        let (a, b) = (build(), build());
        assert!(a.shared.fingerprint_key != b.shared.fingerprint_key);
        let mut req = TrackRequest::new("u", "signIn");
        req.attributes.user_agent = Some("MM".into());
        let fa = req.fingerprint(&a.shared.fingerprint_key);
        // Stable within one engine, and a different value on the other: nothing outside an engine can
        // compute its fingerprints.
        assert_eq!(fa, req.fingerprint(&a.shared.fingerprint_key));
        assert_ne!(fa, req.fingerprint(&b.shared.fingerprint_key));
        // Clones share the engine, and so its secret.
        assert!(a.clone().shared.fingerprint_key == a.shared.fingerprint_key);
    }

    #[test]
    fn challenge_url_encodes_the_redirect() {
        assert_eq!(
            super::challenge_url("https://x.test/c", "tok", Some("https://app.test/a?b=1")),
            "https://x.test/c?token=tok&redirectUrl=https%3A%2F%2Fapp.test%2Fa%3Fb%3D1"
        );
        assert_eq!(
            super::challenge_url("https://x.test/c?v=2", "tok", None),
            "https://x.test/c?v=2&token=tok"
        );
    }
}
