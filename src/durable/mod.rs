//! Durable state for the in-memory store (`[store] path`): snapshots plus a checksummed write-ahead journal.
//!
//! # Files
//! `PATH` is the snapshot: a header (magic, format version, the journal generation it covers, a checksum) and
//! three checksummed frames (the engine's hashing keys and latest event time; every live action; every live
//! history key). An action is saved under its key in the store (the keyed hash of its identity, which the
//! saved keys reproduce), with its identity strings only when it has a challenge token (format version 3;
//! files of versions 1 and 2, whose fingerprints no longer match, are refused). `PATH.journal.N` holds the changes made since generation `N - 1`'s snapshot, in frames of
//! records; `PATH.tmp` is a snapshot being written; `PATH.lock` is held locked while an engine has the state
//! open (a second engine on the path is refused).
//!
//! # Writing
//! The decision path appends a record to an in-memory buffer ([`journal::Journal`]) and never waits on disk.
//! A writer thread drains the buffer every `sync_interval` into the current journal as one frame, then
//! `fdatasync`s it: a crash loses at most the changes of the last interval. A write that fails (a full disk)
//! is cut off the file again before the next one, and its records go back into the buffer for the next sync.
//! Every `snapshot_interval`, on
//! [`Durable::flush`] and when the engine is dropped, the journal moves to a new generation and the snapshot
//! is rebuilt *from the files* (the old snapshot plus the journals it does not cover, loaded into a private
//! state on a background thread), written to `PATH.tmp`, synced, renamed over `PATH` and the folder synced;
//! then the journals it covers are deleted. Building from the files, not from the live maps, makes each
//! snapshot exactly "everything up to generation N": no change made while it is written can be in it twice.
//!
//! # Loading
//! The snapshot is read whole, checked, and its actions and history decoded on two threads; then every later
//! journal is replayed in order. A journal whose last frame is incomplete is what a crash in the middle of a
//! write leaves: everything before it loads, and [`DurableStats::recovered`] says so. Any other damage (a bad
//! checksum with frames after it, a truncated or altered snapshot, an unknown format version) is refused,
//! or with `on_corrupt = "empty"` the files are set aside (renamed `*.damaged-<ms>`) and the engine starts
//! empty. Nothing is ever half-loaded.

pub(crate) mod format;
pub(crate) mod journal;
mod snapshot;

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::config::HistoryLimits;
use crate::error::LoadError;
use crate::hash::EngineKeys;
use crate::signals::History;
use crate::store::Store;
use crate::store_settings::{OnCorrupt, StoreSettings};
use crate::time::DurationMs;
use format::Damaged;
pub(crate) use journal::Journal;

/// What the files are held to: the limits in force (the current ruleset's), applied when a snapshot is built.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Params {
    pub capacity: usize,
    pub ttl: DurationMs,
    pub limits: HistoryLimits,
    /// The ruleset's longest window: series and sets idle this long are not written back.
    pub horizon_ms: i64,
}

/// What durable state has done since the engine was built ([`Engine::durable_stats`](crate::Engine::durable_stats)).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct DurableStats {
    /// Changes not journaled because the buffer of unwritten changes was full (`[store] journal_buffer`): the
    /// disk did not keep up. (A failed write whose changes no longer fit back in the buffer counts once.) They
    /// are in memory but never reach the files, which snapshots are rebuilt from: a restart loses them.
    pub dropped: u64,
    /// Journal bytes written.
    pub journal_bytes: u64,
    /// `fdatasync`s of the journal.
    pub syncs: u64,
    /// Snapshots written.
    pub snapshots: u64,
    /// The bytes of the last snapshot written or loaded.
    pub snapshot_bytes: u64,
    /// What loading found and set right: a journal whose last frame a crash cut short, or damaged files set
    /// aside under `on_corrupt = "empty"`.
    pub recovered: Option<String>,
    /// The last write that failed (the disk full, the folder gone), if any.
    pub last_error: Option<String>,
}

/// The journal file being appended to.
struct Sink {
    file: File,
    generation: u64,
    /// The bytes of whole, synced frames (and the header): where the next frame goes.
    len: u64,
    /// A write failed part-way (a full disk): the file may hold part of a frame past `len`.
    cut: bool,
}

impl Sink {
    fn new(file: File, generation: u64) -> Self {
        Sink {
            file,
            generation,
            len: format::HEADER_LEN as u64,
            cut: false,
        }
    }

    /// Appends one frame and syncs it. What a failed write left past the last whole frame is cut off before the
    /// next one, so a partial frame never has frames after it (which would make the file damaged, or hide
    /// those frames as a torn tail).
    fn append(&mut self, payload: &[u8]) -> io::Result<()> {
        if self.cut {
            self.file.set_len(self.len)?;
            self.file.seek(SeekFrom::Start(self.len))?;
            self.cut = false;
        }
        let written = write_frame(&mut self.file, payload).and_then(|()| self.file.sync_data());
        match written {
            Ok(()) => self.len += (format::FRAME_HEAD + payload.len()) as u64,
            Err(_) => self.cut = true,
        }
        written
    }
}

/// The durable side of one engine: its journal buffer, writer thread and files.
pub(crate) struct Durable {
    inner: Arc<Inner>,
    writer: Mutex<Option<JoinHandle<()>>>,
    /// `PATH.lock`, held locked until the last snapshot is written (a field, so it is released after `drop`).
    _lock: File,
}

struct Inner {
    path: PathBuf,
    keys: EngineKeys,
    journal: Arc<Journal>,
    sink: Mutex<Sink>,
    /// The drained buffer, kept so its capacity is reused.
    spare: Mutex<Vec<u8>>,
    params: Mutex<Params>,
    sync_interval: Duration,
    snapshot_interval: Duration,
    /// `[store] journal_buffer`.
    journal_buffer_bytes: usize,
    stop: Mutex<bool>,
    wake: Condvar,
    /// One snapshot at a time.
    compacting: Mutex<()>,
    compactor: Mutex<Option<JoinHandle<()>>>,
    busy: AtomicBool,
    /// Some journal holds records no snapshot covers yet (set when a frame is written, cleared when a snapshot
    /// moves the journal on): a snapshot with nothing new to cover is skipped.
    unsnapshotted: AtomicBool,
    journal_bytes: AtomicU64,
    syncs: AtomicU64,
    snapshots: AtomicU64,
    snapshot_bytes: AtomicU64,
    recovered: Option<String>,
    last_error: Mutex<Option<String>>,
}

/// An engine's state as loaded from its files.
pub(crate) struct Opened {
    pub keys: EngineKeys,
    pub store: Store,
    pub history: History,
    pub durable: Durable,
}

fn journal_path(path: &Path, generation: u64) -> PathBuf {
    let mut p = path.as_os_str().to_owned();
    p.push(format!(".journal.{generation}"));
    PathBuf::from(p)
}

fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut p = path.as_os_str().to_owned();
    p.push(suffix);
    PathBuf::from(p)
}

/// The journal generations beside `path`, oldest first.
fn journals(path: &Path) -> io::Result<Vec<u64>> {
    let dir = parent(path);
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let prefix = format!("{name}.journal.");
    let mut gens = Vec::new();
    match fs::read_dir(&dir) {
        Ok(entries) => {
            for e in entries {
                let e = e?;
                let n = e.file_name();
                let n = n.to_string_lossy();
                if let Some(g) = n.strip_prefix(&prefix).and_then(|g| g.parse::<u64>().ok()) {
                    gens.push(g);
                }
            }
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    gens.sort_unstable();
    Ok(gens)
}

fn parent(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// Opens `PATH.lock` and locks it (on Unix, an advisory `flock`), so a second engine on one path, in this
/// process or another, is refused instead of writing over the first one's journal. The operating system
/// releases the lock when the file is closed or the process ends, however it ends: a crash leaves no stale lock.
fn lock(path: &Path) -> Result<File, String> {
    let lock_path = with_suffix(path, ".lock");
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&lock_path)
        .map_err(|e| format!("cannot open `{}`: {e}", lock_path.display()))?;
    #[cfg(unix)]
    match rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => {}
        Err(rustix::io::Errno::WOULDBLOCK) => {
            return Err(format!(
                "another engine, in this process or another, has this state open (`{}` is locked): one \
                 engine per path",
                lock_path.display()
            ))
        }
        Err(e) => {
            return Err(format!(
                "cannot lock `{}`: {}",
                lock_path.display(),
                io::Error::from(e)
            ))
        }
    }
    Ok(file)
}

/// Creates a file only this user can read (a snapshot holds the engine's hashing keys).
fn create(path: &Path) -> io::Result<File> {
    let mut o = OpenOptions::new();
    o.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        o.mode(0o600);
    }
    o.open(path)
}

fn sync_dir(path: &Path) -> io::Result<()> {
    File::open(parent(path))?.sync_all()
}

/// The snapshot's bytes, `None` when there is none.
fn read_snapshot(path: &Path) -> io::Result<Option<Vec<u8>>> {
    read_state_file(path)
}

/// A state file's bytes, `None` when there is none. Only a regular file is read: a FIFO at the path would block
/// the build forever, a device such as `/dev/zero` would grow memory without end.
fn read_state_file(path: &Path) -> io::Result<Option<Vec<u8>>> {
    use crate::files::ReadError;
    let mut file = match crate::files::open_regular(path) {
        Ok(f) => f,
        Err(ReadError::Io(e)) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(ReadError::Io(e)) => return Err(e),
        Err(ReadError::NotRegular(what)) => {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "`{}` is {what}, not a regular file: a state file must be a regular file",
                    path.display()
                ),
            ))
        }
        Err(ReadError::TooLarge(limit)) => {
            return Err(io::Error::other(format!("larger than {limit} bytes")))
        }
    };
    let hint = file.metadata().map_or(0, |m| m.len()).min(1 << 30);
    let mut bytes = Vec::with_capacity(usize::try_from(hint).unwrap_or(0));
    file.read_to_end(&mut bytes)?;
    Ok(Some(bytes))
}

/// Why loading failed: a file could not be read (always refused), or its contents are damaged.
enum Failure {
    Io(PathBuf, io::Error),
    Damaged(PathBuf, Damaged),
}

/// The files' contents, decoded into `store` and `history`; the latest event time and what was recovered.
fn load_into(
    path: &Path,
    read: Option<Option<Vec<u8>>>,
    store: &Store,
    history: &History,
    params: &Params,
    up_to: u64,
) -> Result<Loaded, Failure> {
    let bytes = match read {
        Some(b) => b,
        None => read_snapshot(path).map_err(|e| Failure::Io(path.to_path_buf(), e))?,
    };
    let mut loaded = Loaded::default();
    let mut target = journal::Target {
        store,
        history,
        ttl: params.ttl,
        latest_ms: 0,
        ids: journal::RuleIds::default(),
    };
    if let Some(bytes) = &bytes {
        let meta = snapshot::read(bytes, store, history, params)
            .map_err(|d| Failure::Damaged(path.to_path_buf(), d))?;
        target.latest_ms = meta.latest_ms;
        loaded.generation = meta.generation;
        loaded.had_snapshot = true;
        loaded.snapshot_bytes = bytes.len() as u64;
    }
    let gens = journals(path).map_err(|e| Failure::Io(parent(path), e))?;
    if let (None, Some(&g)) = (&bytes, gens.first()) {
        // Every journal follows a snapshot, which is written first: without it, the journals' records (keyed
        // with the snapshot's hashing keys) would be replayed under new keys, as garbage.
        return Err(Failure::Damaged(
            journal_path(path, g),
            Damaged::new(format!(
                "this journal is here but the snapshot it follows, `{}`, is not: it cannot be replayed without \
                 the snapshot's keys",
                path.display()
            )),
        ));
    }
    for g in gens
        .into_iter()
        .filter(|&g| g > loaded.generation && g <= up_to)
    {
        let jp = journal_path(path, g);
        let jb = match read_state_file(&jp) {
            Ok(Some(b)) => b,
            Ok(None) => continue,
            Err(e) => return Err(Failure::Io(jp, e)),
        };
        let damaged = |d: Damaged| Failure::Damaged(jp.clone(), d);
        let header_gen =
            format::read_header(&jb, format::JOURNAL_MAGIC, "journal").or_else(|d| {
                // A journal cut short before its header was whole holds nothing (a crash right after creating it).
                if jb.len() < format::HEADER_LEN
                    && format::JOURNAL_MAGIC.starts_with(&jb[..jb.len().min(8)])
                {
                    Ok(g)
                } else {
                    Err(damaged(d))
                }
            })?;
        if header_gen != g {
            return Err(damaged(Damaged::new(format!(
                "its header says generation {header_gen}, its name {g}"
            ))));
        }
        let tail = format::frames(&jb, |payload| {
            loaded.records += journal::replay(payload, &mut target)?;
            Ok(())
        })
        .map_err(damaged)?;
        if let format::Tail::Torn { at } = tail {
            loaded.recovered = Some(format!(
                "`{}`: its last {} bytes, from byte {at}, are an incomplete write (a crash while writing); \
                 every record before them was loaded",
                jp.display(),
                jb.len() - at
            ));
        }
        loaded.journals.push(g);
        loaded.max_generation = loaded.max_generation.max(g);
    }
    loaded.max_generation = loaded.max_generation.max(loaded.generation);
    loaded.latest_ms = target.latest_ms;
    Ok(loaded)
}

#[derive(Default)]
struct Loaded {
    had_snapshot: bool,
    generation: u64,
    max_generation: u64,
    journals: Vec<u64>,
    records: usize,
    latest_ms: i64,
    snapshot_bytes: u64,
    recovered: Option<String>,
}

fn fresh(keys: EngineKeys, params: &Params) -> (Store, History) {
    (
        Store::new(params.capacity, &keys),
        History::new(params.limits, keys),
    )
}

/// Loads the state at `settings.path` (creating it when there is none) and starts journaling to it.
pub(crate) fn open(
    settings: &StoreSettings,
    keys: EngineKeys,
    params: Params,
) -> Result<Opened, LoadError> {
    let path = settings.path.clone().unwrap_or_default();
    let refuse = |p: PathBuf, reason: String| LoadError::StateFile { path: p, reason };
    // Before anything is read: another engine on this path would be writing it meanwhile.
    let lock = lock(&path).map_err(|reason| refuse(path.clone(), reason))?;
    // The keys first: a snapshot's hashing keys are the ones its history was keyed with.
    let bytes = read_snapshot(&path).map_err(|e| refuse(path.clone(), e.to_string()))?;
    let saved = match &bytes {
        Some(b) => snapshot::read_keys(b, keys).map(Some),
        None => Ok(None),
    };
    let attempt = saved
        .map_err(|d| Failure::Damaged(path.clone(), d))
        .and_then(|k| {
            let keys = k.unwrap_or(keys);
            let (store, history) = fresh(keys, &params);
            load_into(&path, Some(bytes), &store, &history, &params, u64::MAX)
                .map(|l| (keys, store, history, l))
        });
    let (keys, store, history, loaded) = match attempt {
        Ok(x) => x,
        Err(Failure::Io(p, e)) => return Err(refuse(p, e.to_string())),
        Err(Failure::Damaged(p, d)) => match settings.on_corrupt {
            OnCorrupt::Refuse => {
                return Err(refuse(
                    p,
                    format!(
                    "{} (`[store] on_corrupt = \"empty\"` sets the files aside and starts empty)",
                    d.0
                ),
                ))
            }
            OnCorrupt::Empty => {
                let aside = set_aside(&path).map_err(|e| refuse(path.clone(), e.to_string()))?;
                let (store, history) = fresh(keys, &params);
                let loaded = Loaded {
                    recovered: Some(format!(
                        "`{}` was damaged ({}): set aside as `*{aside}`, started empty",
                        p.display(),
                        d.0
                    )),
                    ..Loaded::default()
                };
                (keys, store, history, loaded)
            }
        },
    };
    let io_err = |e: io::Error| refuse(path.clone(), e.to_string());
    let generation = loaded.max_generation + 1;
    if !loaded.had_snapshot {
        // A new state: its snapshot (empty, with the keys) comes first, so every journal has keys to replay with.
        snapshot::write(&path, 0, &keys, &store, &history, 0, &params).map_err(io_err)?;
    }
    let sink = Sink::new(new_journal(&path, generation).map_err(io_err)?, generation);
    let journal = Arc::new(Journal::new(settings.journal_buffer));
    history.set_journal(Arc::clone(&journal));
    let inner = Arc::new(Inner {
        path: path.clone(),
        keys,
        journal,
        sink: Mutex::new(sink),
        spare: Mutex::new(Vec::new()),
        params: Mutex::new(params),
        sync_interval: settings.sync_interval,
        snapshot_interval: settings.snapshot_interval,
        journal_buffer_bytes: settings.journal_buffer,
        stop: Mutex::new(false),
        wake: Condvar::new(),
        compacting: Mutex::new(()),
        compactor: Mutex::new(None),
        busy: AtomicBool::new(false),
        unsnapshotted: AtomicBool::new(loaded.records > 0),
        journal_bytes: AtomicU64::new(0),
        syncs: AtomicU64::new(0),
        snapshots: AtomicU64::new(0),
        snapshot_bytes: AtomicU64::new(loaded.snapshot_bytes),
        recovered: loaded.recovered,
        last_error: Mutex::new(None),
    });
    let w = Arc::clone(&inner);
    let writer = std::thread::Builder::new()
        .name("riskgate-journal".into())
        .spawn(move || w.run())
        .map_err(io_err)?;
    if loaded.records > 0 {
        // Fold the replayed journals into a snapshot, off the caller's thread.
        inner.start_snapshot();
    } else {
        // Journals with no records (a shutdown or crash right after one began) hold nothing to keep.
        for &g in &loaded.journals {
            let _ = fs::remove_file(journal_path(&inner.path, g));
        }
    }
    Ok(Opened {
        keys,
        store,
        history,
        durable: Durable {
            inner,
            writer: Mutex::new(Some(writer)),
            _lock: lock,
        },
    })
}

/// Renames every state file at `path` with a `.damaged-<ms>` suffix; returns the suffix.
fn set_aside(path: &Path) -> io::Result<String> {
    let ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    let suffix = format!(".damaged-{ms}");
    let mut files = vec![path.to_path_buf()];
    files.extend(journals(path)?.into_iter().map(|g| journal_path(path, g)));
    for f in files {
        match fs::rename(&f, with_suffix(&f, &suffix)) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    sync_dir(path)?;
    Ok(suffix)
}

fn new_journal(path: &Path, generation: u64) -> io::Result<File> {
    let mut f = create(&journal_path(path, generation))?;
    f.write_all(&format::header(format::JOURNAL_MAGIC, generation))?;
    f.sync_data()?;
    sync_dir(path)?;
    Ok(f)
}

impl Inner {
    fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
        m.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn note_error(&self, e: &io::Error) {
        *Self::lock(&self.last_error) = Some(e.to_string());
    }

    /// The writer thread: sync every interval, snapshot every snapshot interval, until stopped.
    fn run(self: Arc<Self>) {
        let mut last_snapshot = Instant::now();
        loop {
            {
                let stop = Self::lock(&self.stop);
                if *stop {
                    return;
                }
                let (stop, _) = self
                    .wake
                    .wait_timeout(stop, self.sync_interval)
                    .unwrap_or_else(|p| p.into_inner());
                if *stop {
                    return;
                }
            }
            if let Err(e) = self.sync() {
                self.note_error(&e);
            }
            if last_snapshot.elapsed() >= self.snapshot_interval {
                last_snapshot = Instant::now();
                self.start_snapshot();
            }
        }
    }

    /// Writes every buffered change to the current journal as one frame, and syncs it.
    fn sync(&self) -> io::Result<()> {
        let mut sink = Self::lock(&self.sink);
        self.sync_into(&mut sink)
    }

    fn sync_into(&self, sink: &mut Sink) -> io::Result<()> {
        let mut spare = Self::lock(&self.spare);
        {
            let mut buf = Self::lock(&self.journal.buf);
            if buf.is_empty() {
                return Ok(());
            }
            std::mem::swap(&mut *buf, &mut *spare);
        }
        let result = sink.append(&spare);
        if result.is_ok() {
            self.unsnapshotted.store(true, Ordering::Release);
            self.journal_bytes
                .fetch_add((spare.len() + format::FRAME_HEAD) as u64, Ordering::Relaxed);
            self.syncs.fetch_add(1, Ordering::Relaxed);
        } else {
            // The disk may have room again by the next sync: the records go back in front of the newer ones,
            // within the buffer's bound; past it they are lost to disk (they stay in memory) and counted.
            let mut buf = Self::lock(&self.journal.buf);
            if spare.len() + buf.len() <= self.journal_buffer_bytes {
                spare.extend_from_slice(&buf);
                std::mem::swap(&mut *buf, &mut *spare);
            } else {
                self.journal.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
        spare.clear();
        // The two buffers keep their capacity from one interval to the next: shrinking and growing them again
        // each interval copied megabytes and made the allocator consolidate under the decision path's own
        // allocations (BENCHMARKS.md, "Durable state"). Only a buffer grown past the bound shrinks.
        if spare.capacity() > self.journal_buffer_bytes {
            spare.shrink_to(self.journal_buffer_bytes);
        }
        result
    }

    /// Starts a snapshot on a background thread, unless one is running.
    fn start_snapshot(self: &Arc<Self>) {
        if self.busy.swap(true, Ordering::AcqRel) {
            return;
        }
        let me = Arc::clone(self);
        let spawned = std::thread::Builder::new()
            .name("riskgate-snapshot".into())
            .spawn(move || {
                if let Err(e) = me.snapshot() {
                    me.note_error(&e);
                }
                me.busy.store(false, Ordering::Release);
            });
        match spawned {
            Ok(h) => {
                if let Some(old) = Self::lock(&self.compactor).replace(h) {
                    let _ = old.join();
                }
            }
            Err(e) => {
                self.busy.store(false, Ordering::Release);
                self.note_error(&e);
            }
        }
    }

    /// Moves the journal to a new generation, then rebuilds the snapshot from the files up to the old one.
    fn snapshot(&self) -> io::Result<()> {
        let _one = Self::lock(&self.compacting);
        let covered = {
            let mut sink = Self::lock(&self.sink);
            self.sync_into(&mut sink)?;
            if !self.unsnapshotted.swap(false, Ordering::AcqRel) {
                return Ok(());
            }
            let next = sink.generation + 1;
            let file = new_journal(&self.path, next)
                .inspect_err(|_| self.unsnapshotted.store(true, Ordering::Release))?;
            std::mem::replace(&mut *sink, Sink::new(file, next)).generation
        };
        // Until this snapshot is written, the journals it would cover are still needed by the next one.
        self.write_snapshot(covered)
            .inspect_err(|_| self.unsnapshotted.store(true, Ordering::Release))
    }

    /// Rebuilds the snapshot from the files up to journal generation `covered`, then deletes those journals.
    fn write_snapshot(&self, covered: u64) -> io::Result<()> {
        let params = *Self::lock(&self.params);
        let (store, history) = fresh(self.keys, &params);
        let loaded = match load_into(&self.path, None, &store, &history, &params, covered) {
            Ok(l) => l,
            Err(Failure::Io(p, e)) => {
                return Err(io::Error::new(e.kind(), format!("{}: {e}", p.display())))
            }
            Err(Failure::Damaged(p, d)) => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("{}: {}", p.display(), d.0),
                ))
            }
        };
        let bytes = snapshot::write(
            &self.path,
            covered,
            &self.keys,
            &store,
            &history,
            loaded.latest_ms,
            &params,
        )?;
        self.snapshots.fetch_add(1, Ordering::Relaxed);
        self.snapshot_bytes.store(bytes, Ordering::Relaxed);
        for g in journals(&self.path)?.into_iter().filter(|&g| g <= covered) {
            match fs::remove_file(journal_path(&self.path, g)) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
        sync_dir(&self.path)
    }
}

/// Writes one frame: its head, then its payload (a crash between them leaves a torn tail, never damage).
pub(super) fn write_frame(file: &mut File, payload: &[u8]) -> io::Result<()> {
    let mut head = Vec::with_capacity(format::FRAME_HEAD);
    format::frame_head(&mut head, payload);
    file.write_all(&head)?;
    file.write_all(payload)
}

impl Durable {
    /// Where every change is journaled.
    pub fn journal(&self) -> &Journal {
        &self.inner.journal
    }

    /// The limits snapshots are built with from now on.
    pub fn set_params(&self, params: Params) {
        *Inner::lock(&self.inner.params) = params;
    }

    /// Writes every change so far to the journal and syncs it, then writes a snapshot and waits for it.
    pub fn flush(&self) -> io::Result<()> {
        self.inner.sync()?;
        if let Some(h) = Inner::lock(&self.inner.compactor).take() {
            let _ = h.join();
        }
        self.inner.snapshot()
    }

    pub fn stats(&self) -> DurableStats {
        let i = &self.inner;
        DurableStats {
            dropped: i.journal.dropped.load(Ordering::Relaxed),
            journal_bytes: i.journal_bytes.load(Ordering::Relaxed),
            syncs: i.syncs.load(Ordering::Relaxed),
            snapshots: i.snapshots.load(Ordering::Relaxed),
            snapshot_bytes: i.snapshot_bytes.load(Ordering::Relaxed),
            recovered: i.recovered.clone(),
            last_error: Inner::lock(&i.last_error).clone(),
        }
    }
}

impl Drop for Durable {
    /// A clean shutdown: stop the writer, then journal and snapshot everything.
    fn drop(&mut self) {
        *Inner::lock(&self.inner.stop) = true;
        self.inner.wake.notify_all();
        if let Some(h) = Inner::lock(&self.writer).take() {
            let _ = h.join();
        }
        if let Err(e) = self.flush() {
            self.inner.note_error(&e);
        }
    }
}
