//! Watching the rules folder and reloading it on change (feature `watch`).
//!
//! [`Engine::watch_rules`] starts an OS file watcher (inotify, FSEvents, ReadDirectoryChangesW through the
//! `notify` crate) on the folder the engine was built from, and a thread that reloads after the folder has
//! been quiet for the debounce time: an editor's save or a `git pull` that touches many files leads to one
//! reload, not one per file. A reload that fails (a syntax error, a bad `riskgate.toml`, a list that does not
//! parse, a half-written file) leaves the working ruleset in place, exactly as [`Engine::reload_rules`] does;
//! the callback hears of each attempt either way, so it can log the error.

use std::path::PathBuf;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use notify::event::{AccessKind, AccessMode, EventKind};
use notify::{RecursiveMode, Watcher};

use crate::{Engine, LoadError};

/// Why watching could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WatchError {
    /// The engine's ruleset was not loaded from a folder, so there is nothing to watch.
    #[error("this engine was not built from a rules folder, so there is nothing to watch")]
    NoRulesDir,
    /// The operating system's file watcher refused.
    #[error("cannot watch `{}`: {source}", path.display())]
    Notify {
        /// The folder.
        path: PathBuf,
        /// The watcher's error.
        source: notify::Error,
    },
    /// The thread that reloads could not be started.
    #[error("cannot start the rules watcher thread: {0}")]
    Thread(std::io::Error),
}

/// Watches an engine's rules folder; dropping it stops watching (and waits for a reload in progress).
///
/// The watcher holds a clone of the [`Engine`] for as long as it lives.
#[must_use = "the folder is watched only while the RulesWatcher is alive"]
pub struct RulesWatcher {
    watcher: Option<notify::RecommendedWatcher>,
    stop: mpsc::Sender<Msg>,
    thread: Option<JoinHandle<()>>,
    dir: PathBuf,
}

impl std::fmt::Debug for RulesWatcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RulesWatcher")
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

enum Msg {
    Changed,
    Stop,
}

impl RulesWatcher {
    /// The folder being watched.
    pub fn dir(&self) -> &std::path::Path {
        &self.dir
    }
}

impl Drop for RulesWatcher {
    fn drop(&mut self) {
        // Stop the OS watcher first, so no event arrives after the thread is told to stop.
        drop(self.watcher.take());
        let _ = self.stop.send(Msg::Stop);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Engine {
    /// Reloads the rules folder whenever it changes, once it has been quiet for `debounce` (200 ms is a good
    /// default), and reports each reload's result to `on_reload`.
    ///
    /// A change that does not load (see [`reload_rules`](Engine::reload_rules)) never replaces the working
    /// ruleset: `on_reload` gets the error and decisions go on with the rules they had. While changes keep
    /// coming, a reload still happens at least every ten `debounce` periods.
    ///
    /// ```no_run
    /// # #[cfg(feature = "watch")] {
    /// use std::time::Duration;
    ///
    /// let engine = riskgate::Engine::builder().rules_dir("rules")?.build()?;
    /// let _watcher = engine.watch_rules(Duration::from_millis(200), |result| {
    ///     if let Err(e) = result {
    ///         eprintln!("rules not reloaded, keeping the current ones:\n{e}");
    ///     }
    /// })?;
    /// // … serve requests; the rules follow the folder until `_watcher` is dropped.
    /// # }
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    /// [`WatchError::NoRulesDir`] when the engine's ruleset was not loaded from a folder, and
    /// [`WatchError::Notify`] when the operating system refuses to watch it.
    pub fn watch_rules<F>(
        &self,
        debounce: Duration,
        on_reload: F,
    ) -> Result<RulesWatcher, WatchError>
    where
        F: FnMut(Result<(), LoadError>) + Send + 'static,
    {
        let dir = self
            .ruleset()
            .dir()
            .map(PathBuf::from)
            .ok_or(WatchError::NoRulesDir)?;
        let (tx, rx) = mpsc::channel::<Msg>();
        let events = tx.clone();
        let mut watcher =
            notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
                let relevant = match &event {
                    // Reading the files to reload them must not trigger another reload.
                    Ok(e) => match e.kind {
                        EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
                        EventKind::Access(_) => false,
                        _ => true,
                    },
                    // An error from the OS watcher (an overflowed queue, say): changes may have been missed.
                    Err(_) => true,
                };
                if relevant {
                    let _ = events.send(Msg::Changed);
                }
            })
            .map_err(|source| WatchError::Notify {
                path: dir.clone(),
                source,
            })?;
        watcher
            .watch(&dir, RecursiveMode::Recursive)
            .map_err(|source| WatchError::Notify {
                path: dir.clone(),
                source,
            })?;
        let engine = self.clone();
        let thread = std::thread::Builder::new()
            .name("riskgate-rules-watcher".into())
            .spawn(move || run(&engine, &rx, debounce, on_reload))
            .map_err(WatchError::Thread)?;
        Ok(RulesWatcher {
            watcher: Some(watcher),
            stop: tx,
            thread: Some(thread),
            dir,
        })
    }
}

fn run(
    engine: &Engine,
    rx: &mpsc::Receiver<Msg>,
    debounce: Duration,
    mut on_reload: impl FnMut(Result<(), LoadError>),
) {
    let longest = debounce.saturating_mul(10);
    loop {
        match rx.recv() {
            Ok(Msg::Changed) => {}
            Ok(Msg::Stop) | Err(_) => return,
        }
        // Wait for the folder to be quiet, but not forever.
        let first = Instant::now();
        loop {
            let left = longest.saturating_sub(first.elapsed());
            if left.is_zero() {
                break;
            }
            match rx.recv_timeout(debounce.min(left)) {
                Ok(Msg::Changed) => continue,
                Ok(Msg::Stop) | Err(RecvTimeoutError::Disconnected) => return,
                Err(RecvTimeoutError::Timeout) => break,
            }
        }
        on_reload(engine.reload_rules());
    }
}
