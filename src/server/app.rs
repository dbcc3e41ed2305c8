//! `App`: the served engine, the API secret and the server's counters, and what the server does with them
//! besides routing (reloads, metrics text). The router and the middleware are in `server/mod.rs`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use super::auth::Secret;
use super::metrics;

/// The served engine, the API secret and the server's counters. Cheap to clone.
#[derive(Clone)]
pub struct App {
    pub(super) inner: Arc<Inner>,
}

pub(super) struct Inner {
    pub(super) engine: crate::Engine,
    pub(super) secret: Secret,
    pub(super) metrics: metrics::Metrics,
    /// Whether every enabled rule of the served ruleset compiled to native code (then decisions run inline).
    pub(super) all_compiled: AtomicBool,
}

fn all_compiled(engine: &crate::Engine) -> bool {
    engine.ruleset().rules().all(|r| r.compiled || !r.enabled)
}

impl std::fmt::Debug for App {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("App")
            .field("engine", &self.inner.engine)
            .finish_non_exhaustive()
    }
}

impl App {
    /// Serves `engine` to callers that present `secret`.
    pub fn new(engine: crate::Engine, secret: Secret) -> App {
        App {
            inner: Arc::new(Inner {
                all_compiled: AtomicBool::new(all_compiled(&engine)),
                engine,
                secret,
                metrics: metrics::Metrics::new(),
            }),
        }
    }

    /// The engine being served. Replace its rules through [`App::reload_rules`] or [`App::watch_rules`] (or
    /// call [`App::rules_changed`] after swapping them on the engine), so the server knows whether they
    /// compiled to native code.
    pub fn engine(&self) -> &crate::Engine {
        &self.inner.engine
    }

    /// What `GET /metrics` would answer now.
    pub fn metrics_text(&self) -> String {
        self.inner.metrics.render(Some(&self.inner.engine))
    }

    /// Reloads the rules folder (as SIGHUP does), logs the result and counts it in `/metrics`. A ruleset that
    /// does not load never replaces the one being served.
    pub fn reload_rules(&self) -> Result<(), crate::LoadError> {
        let r = self.inner.engine.reload_rules();
        self.note_reload(&r);
        r
    }

    /// Tells the server the engine's ruleset was replaced: decisions of a ruleset with interpreted rules, which
    /// may run up to their time limit, are kept off the async workers.
    pub fn rules_changed(&self) {
        self.inner
            .all_compiled
            .store(all_compiled(&self.inner.engine), Ordering::Relaxed);
    }

    fn note_reload(&self, r: &Result<(), crate::LoadError>) {
        self.rules_changed();
        self.inner.metrics.reload(r.is_ok());
        match r {
            Ok(()) => tracing::info!(rules = self.inner.engine.ruleset().len(), "rules reloaded"),
            Err(e) => tracing::error!(error = %e, "rules not reloaded, serving the previous ones"),
        }
    }

    /// Reloads the rules whenever their folder changes (see [`Engine::watch_rules`](crate::Engine::watch_rules)),
    /// logging and counting each reload. Watching stops when the returned watcher is dropped.
    pub fn watch_rules(&self) -> Result<crate::RulesWatcher, crate::WatchError> {
        let app = self.clone();
        self.inner
            .engine
            .watch_rules(Duration::from_millis(200), move |r| app.note_reload(&r))
    }
}
