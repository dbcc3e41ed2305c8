//! Watching the rules folder and reloading it on change (feature `watch`).
//!
//! [`Engine::watch_rules`] starts an OS file watcher (inotify, FSEvents, ReadDirectoryChangesW through the
//! `notify` crate) on the folder the engine was built from, and a thread that reloads after the folder has
//! settled: an editor's save or a `git pull` that touches many files leads to one reload, not one per file.
//!
//! # Partial writes
//! A prefix of a rule can be a different valid rule (`if custom.ok == true { ALLOW }` is a prefix of
//! `… { ALLOW } else { BLOCK }`), so no check of the loaded rules can tell a half-written file. The watcher
//! waits instead: for the folder to be quiet for the debounce time, then loads it, then waits the debounce
//! time again, and swaps the new rules in only if no change arrived meanwhile and every file the loader reads
//! has the same length, modification time and content hash as before the load. A writer pausing for up to
//! about twice the debounce time mid-file is waited for. A longer pause can still expose a prefix, which is
//! why the safe way to change a rule is to write it under a name the loader skips (a hidden name such as
//! `.new-device.rhai.tmp`, or outside the folder on the same filesystem) and rename it into place: a rename is
//! atomic, so a reload sees the old file or the new one.
//!
//! A reload that fails (a syntax error, a bad `riskgate.toml`, a list that does not parse) leaves the working
//! ruleset in place, exactly as [`Engine::reload_rules`] does; the callback hears of each attempt either way,
//! so it can log the error.

use std::path::{Path, PathBuf};
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
    /// ruleset: `on_reload` gets the error and decisions go on with the rules they had. A reload happens only
    /// once the files have settled: quiet for `debounce`, loaded, and unchanged (length, modification time,
    /// content hash) one more `debounce` later; if they keep changing for thirty `debounce` periods,
    /// `on_reload` gets an error saying so and the working rules stay until the next change.
    ///
    /// A writer that pauses mid-file for longer than about twice `debounce` can still have a prefix loaded
    /// (a prefix of a rule can be a valid rule): write each file under a name the loader skips (hidden, such
    /// as `.rule.rhai.tmp`, or outside the folder on the same filesystem) and rename it into place.
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
            .spawn({
                let dir = dir.clone();
                move || run(&engine, &dir, &rx, debounce, on_reload)
            })
            .map_err(WatchError::Thread)?;
        Ok(RulesWatcher {
            watcher: Some(watcher),
            stop: tx,
            thread: Some(thread),
            dir,
        })
    }
}

/// What one input file held: its length, modification time and a hash of its content, or why it could not be
/// read.
type Seen = Result<(u64, Option<std::time::SystemTime>, u64), String>;

/// The state of every file a reload reads (see [`crate::rules::inputs`]).
fn snapshot(dir: &Path) -> Vec<(PathBuf, Seen)> {
    let files = match crate::rules::inputs(dir) {
        Ok(f) => f,
        Err(e) => return vec![(dir.to_path_buf(), Err(e.to_string()))],
    };
    files
        .into_iter()
        .map(|path| {
            let seen = std::fs::metadata(&path)
                .map_err(|e| e.to_string())
                .and_then(|meta| {
                    // Bounded and non-blocking, like the loader itself (the list bound is the largest).
                    let bytes = crate::files::read(&path, crate::files::Kind::List)
                        .map_err(|e| e.message(&path, crate::files::Kind::List))?;
                    Ok((
                        meta.len(),
                        meta.modified().ok(),
                        crate::hash::xxh3_64(&bytes),
                    ))
                });
            (path, seen)
        })
        .collect()
}

/// How `wait_quiet` ended.
enum Quiet {
    /// No change for the whole debounce time (or changes kept coming for `longest`).
    Yes,
    Stop,
}

/// Waits until no change has arrived for `debounce`, but at most `longest`.
fn wait_quiet(rx: &mpsc::Receiver<Msg>, debounce: Duration, longest: Duration) -> Quiet {
    let first = Instant::now();
    loop {
        let left = longest.saturating_sub(first.elapsed());
        if left.is_zero() {
            return Quiet::Yes;
        }
        match rx.recv_timeout(debounce.min(left)) {
            Ok(Msg::Changed) => continue,
            Ok(Msg::Stop) | Err(RecvTimeoutError::Disconnected) => return Quiet::Stop,
            Err(RecvTimeoutError::Timeout) => return Quiet::Yes,
        }
    }
}

fn run(
    engine: &Engine,
    dir: &Path,
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
        // Reload only a settled folder: quiet for `debounce`, then loaded, then, one `debounce` later, no
        // change seen and every input file the same (length, time and content) as before the load. A writer
        // still writing (even one pausing longer than `debounce` between writes, up to twice it) is waited
        // for, so a half-written file is not loaded.
        let since = Instant::now();
        loop {
            if let Quiet::Stop = wait_quiet(rx, debounce, longest) {
                return;
            }
            let before = snapshot(dir);
            let mut stop = false;
            let outcome = engine.reload_settled(|| {
                match rx.recv_timeout(debounce) {
                    Ok(Msg::Changed) => return false,
                    Ok(Msg::Stop) | Err(RecvTimeoutError::Disconnected) => {
                        stop = true;
                        return false;
                    }
                    Err(RecvTimeoutError::Timeout) => {}
                }
                snapshot(dir) == before
            });
            if stop {
                return;
            }
            if let Some(result) = outcome {
                on_reload(result);
                break;
            }
            if since.elapsed() >= longest.saturating_mul(3) {
                // Say so rather than stay silent; the next change tries again.
                on_reload(Err(LoadError::one(
                    dir.display().to_string(),
                    0,
                    0,
                    format!(
                        "the rules kept changing for {} ms, so they were not reloaded: write each file under a \
                         name the loader skips and rename it into place",
                        since.elapsed().as_millis()
                    ),
                )));
                break;
            }
        }
    }
}
