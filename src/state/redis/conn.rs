//! Connections to Redis or Redis Cluster, each round trip a pipeline with a timeout, scripts sent by SHA; after a
//! `NOSCRIPT` only the scripts that met it are sent again, whole, once. Thread callers ([`Io::Blocking`]) take a
//! connection of a small pool of blocking ones; async callers ([`Io::Async`]) share one multiplexed connection
//! (per cluster node), on which the round trips of every concurrent caller are pipelined together.

use std::borrow::Borrow;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use redis::{Cmd, ConnectionLike, Value};

use super::scripts::Script;
use crate::state::StoreError;

/// At most this many idle connections are kept; more callers at once open their own and drop them after.
const MAX_IDLE: usize = 64;

/// One command of a round trip: a script (by SHA, or whole after a `NOSCRIPT`) or a plain command.
pub(crate) enum Op<'a> {
    Script {
        script: &'a Script,
        keys: Vec<String>,
        args: Vec<String>,
    },
    Plain(Cmd),
}

impl Op<'_> {
    fn cmd(&self, whole: bool) -> Cmd {
        match self {
            Op::Plain(c) => c.clone(),
            Op::Script { script, keys, args } => {
                // Sized up front: a claim or commit has some thirty arguments, which would grow the buffer
                // several times.
                let body = if whole { script.src } else { &script.sha };
                let data =
                    keys.iter().chain(args).map(String::len).sum::<usize>() + body.len() + 16;
                let mut c = Cmd::with_capacity(3 + keys.len() + args.len(), data);
                self.fill(whole, &mut c);
                c
            }
        }
    }

    /// Writes a script's command into `c` (empty).
    fn fill(&self, whole: bool, c: &mut Cmd) {
        if let Op::Script { script, keys, args } = self {
            let (name, body) = if whole {
                ("EVAL", script.src)
            } else {
                ("EVALSHA", script.sha.as_str())
            };
            c.arg(name).arg(body).arg(keys.len()).arg(keys).arg(args);
        }
    }

    /// Appends this command, encoded for the wire, to `out`; a script's is written through `scratch`, whose
    /// buffers are reused from one round trip to the next.
    fn pack(&self, whole: bool, scratch: &mut Cmd, out: &mut Vec<u8>) {
        match self {
            Op::Plain(c) => c.write_packed_command(out),
            Op::Script { .. } => {
                scratch.clear();
                self.fill(whole, scratch);
                scratch.write_packed_command(out);
            }
        }
    }
}

/// Above this many bytes a blocking connection's send buffers are not kept for the next round trip (one
/// whole-script `EVAL` after a `NOSCRIPT` is about 10 KB; a decision's round trip about 2 KB).
const KEEP_BUFFER: usize = 64 * 1024;

/// A blocking connection's send buffers: its commands are encoded into them without allocating.
#[derive(Default)]
struct Packer {
    scratch: Cmd,
    out: Vec<u8>,
}

/// How a store call waits on Redis.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Io {
    /// Blocking the calling thread (the sync API): the call's future is ready on its first poll.
    Blocking,
    /// As a future on the tokio runtime that polls it (the async API).
    Async,
}

/// Runs a store call made with [`Io::Blocking`] to its end on this thread. Every wait in such a call blocks
/// the thread, so its future finishes in one poll; `None` if it did not (it never does).
pub(crate) fn finish<F: Future>(f: F) -> Option<F::Output> {
    let mut cx = Context::from_waker(Waker::noop());
    match std::pin::pin!(f).poll(&mut cx) {
        Poll::Ready(v) => Some(v),
        Poll::Pending => None,
    }
}

/// Waits `d`, as `io` waits.
pub(crate) async fn pause(io: Io, d: Duration) {
    match io {
        Io::Blocking => std::thread::sleep(d),
        Io::Async => tokio::time::sleep(d).await,
    }
}

/// The shared connection of async callers (cheap to clone: a handle on its driver task).
#[derive(Clone)]
enum Shared {
    Single(redis::aio::MultiplexedConnection),
    Cluster(redis::cluster_async::ClusterConnection),
}

// One per store, so the variants' sizes do not matter.
#[allow(clippy::large_enum_variant)]
enum Client {
    Single(redis::Client),
    Cluster(redis::cluster::ClusterClient),
}

enum Conn {
    Single(redis::Connection, Box<Packer>),
    Cluster(Box<redis::cluster::ClusterConnection>),
}

/// The connection a round trip goes on.
enum Via<'a> {
    Blocking(&'a mut Conn),
    Async(&'a Shared),
}

/// The connection pool of one store.
pub(crate) struct Pool {
    client: Client,
    idle: Mutex<Vec<Conn>>,
    /// The async callers' connection, opened by the first of them and dropped when it fails.
    shared: Mutex<Option<Shared>>,
    timeout: Duration,
    connect_timeout: Duration,
    round_trips: AtomicU64,
}

/// A redis-rs error as a store error: its kind and message (never the url, which may hold a password).
fn store_error(e: &redis::RedisError) -> StoreError {
    let kind = if e.is_timeout() {
        "timed out"
    } else if e.is_io_error() || e.is_connection_dropped() || e.is_connection_refusal() {
        "unreachable"
    } else {
        "refused"
    };
    StoreError(format!(
        "redis {kind}: {}",
        crate::error::shorten(&e.to_string())
    ))
}

/// A reply of a pipeline run with `ignore_errors`: a server's error reply as an error.
fn server_error(v: Value) -> redis::RedisResult<Value> {
    match v {
        Value::ServerError(e) => Err(redis::RedisError::from(e)),
        v => Ok(v),
    }
}

fn noscript(e: &redis::RedisError) -> bool {
    matches!(
        e.kind(),
        redis::ErrorKind::Server(redis::ServerErrorKind::NoScript)
    )
}

impl Pool {
    pub fn new(
        nodes: &[String],
        cluster: bool,
        timeout: Duration,
        connect_timeout: Duration,
    ) -> Result<Self, StoreError> {
        let client = if cluster {
            let c = redis::cluster::ClusterClientBuilder::new(nodes.iter().map(String::as_str))
                .connection_timeout(connect_timeout)
                .response_timeout(timeout)
                .retries(1)
                .min_retry_wait(1)
                .max_retry_wait(timeout.as_millis().try_into().unwrap_or(u64::MAX))
                .build()
                .map_err(|e| store_error(&e))?;
            Client::Cluster(c)
        } else {
            let url = nodes.first().map(String::as_str).unwrap_or("");
            Client::Single(redis::Client::open(url).map_err(|e| store_error(&e))?)
        };
        Ok(Pool {
            client,
            idle: Mutex::new(Vec::new()),
            shared: Mutex::new(None),
            timeout,
            connect_timeout,
            round_trips: AtomicU64::new(0),
        })
    }

    /// Round trips made so far (a pipeline is one; a retry after `NOSCRIPT` is another).
    pub fn round_trips(&self) -> u64 {
        self.round_trips.load(Ordering::Relaxed)
    }

    fn open(&self) -> redis::RedisResult<Conn> {
        match &self.client {
            Client::Single(c) => {
                let con = c.get_connection_with_timeout(self.connect_timeout)?;
                con.set_read_timeout(Some(self.timeout))?;
                con.set_write_timeout(Some(self.timeout))?;
                Ok(Conn::Single(con, Box::default()))
            }
            Client::Cluster(c) => {
                let con = c.get_connection()?;
                con.set_read_timeout(Some(self.timeout))?;
                con.set_write_timeout(Some(self.timeout))?;
                Ok(Conn::Cluster(Box::new(con)))
            }
        }
    }

    fn take(&self) -> redis::RedisResult<Conn> {
        let idle = self.idle.lock().ok().and_then(|mut i| i.pop());
        match idle {
            Some(c) => Ok(c),
            None => self.open(),
        }
    }

    fn put(&self, con: Conn) {
        if let Ok(mut idle) = self.idle.lock() {
            if idle.len() < MAX_IDLE {
                idle.push(con);
            }
        }
    }

    /// Sends `cmds` as one pipeline on a blocking connection: one reply or error per command, in order. On a
    /// cluster (one pipeline per node) redis-rs gives no replies when any command failed: the first error for
    /// the whole round trip.
    fn query<'o, O: Borrow<Op<'o>>>(
        con: &mut Conn,
        ops: &[O],
        whole: bool,
    ) -> redis::RedisResult<Vec<redis::RedisResult<Value>>> {
        match con {
            Conn::Single(c, p) => {
                p.out.clear();
                for o in ops {
                    o.borrow().pack(whole, &mut p.scratch, &mut p.out);
                }
                let sent = c.req_packed_commands(&p.out, 0, ops.len());
                if p.out.capacity() > KEEP_BUFFER {
                    **p = Packer::default();
                }
                Ok(sent?.into_iter().map(server_error).collect())
            }
            Conn::Cluster(c) => {
                let mut p = redis::cluster::cluster_pipe();
                for o in ops {
                    p.add_command(o.borrow().cmd(whole));
                }
                let replies: Vec<Value> = p.query(c)?;
                Ok(replies.into_iter().map(Ok).collect())
            }
        }
    }

    /// Loads `scripts` into every node's script cache (one pipeline on a server; on a cluster each `SCRIPT
    /// LOAD` goes to every master), so that first calls do not pay for a `NOSCRIPT`.
    pub fn load(&self, scripts: &[&Script]) -> Result<(), StoreError> {
        self.round_trips.fetch_add(1, Ordering::Relaxed);
        let mut con = self.take().map_err(|e| store_error(&e))?;
        let mut loads = scripts.iter().map(|s| {
            let mut c = redis::cmd("SCRIPT");
            c.arg("LOAD").arg(s.src);
            c
        });
        let result = match &mut con {
            Conn::Single(c, _) => {
                let mut p = redis::pipe();
                for l in loads {
                    p.add_command(l);
                }
                p.query::<Vec<Value>>(c).map(|_| ())
            }
            Conn::Cluster(c) => loads.try_for_each(|l| l.query::<Value>(&mut **c).map(|_| ())),
        };
        match result {
            Ok(()) => {
                self.put(con);
                Ok(())
            }
            Err(e) => Err(store_error(&e)),
        }
    }

    /// Runs `ops` as one round trip and returns their replies in order. A failed connection is dropped (the
    /// next call opens a new one), so the store recovers by itself when Redis comes back.
    pub async fn run(&self, io: Io, ops: &[Op<'_>]) -> Result<Vec<Value>, StoreError> {
        match io {
            Io::Blocking => self.run_blocking(ops),
            Io::Async => self.run_async(ops).await,
        }
    }

    /// The async callers' connection: the shared one, or a new one that becomes it. Callers that find none at
    /// once each open one (each within the connect timeout, none waits for another); the last kept wins.
    async fn shared(&self) -> redis::RedisResult<Shared> {
        if let Some(s) = self.shared.lock().ok().and_then(|s| s.clone()) {
            return Ok(s);
        }
        let open = async {
            match &self.client {
                Client::Single(c) => {
                    let config = redis::AsyncConnectionConfig::new()
                        .set_connection_timeout(Some(self.connect_timeout))
                        .set_response_timeout(Some(self.timeout));
                    c.get_multiplexed_async_connection_with_config(&config)
                        .await
                        .map(Shared::Single)
                }
                Client::Cluster(c) => c.get_async_connection().await.map(Shared::Cluster),
            }
        };
        let s = tokio::time::timeout(self.connect_timeout + self.timeout, open)
            .await
            .map_err(|_| {
                redis::RedisError::from(std::io::Error::from(std::io::ErrorKind::TimedOut))
            })??;
        if let Ok(mut slot) = self.shared.lock() {
            *slot = Some(s.clone());
        }
        Ok(s)
    }

    /// Sends `cmds` at once on the shared connection: one reply or error per command, in order. On a server,
    /// one pipeline; on a cluster, each command to its slot's node, all in flight together.
    async fn send_shared(
        &self,
        con: &Shared,
        cmds: Vec<Cmd>,
    ) -> redis::RedisResult<Vec<redis::RedisResult<Value>>> {
        let sent = async {
            match con {
                Shared::Single(c) => {
                    let mut p = redis::pipe();
                    p.ignore_errors();
                    for cmd in cmds {
                        p.add_command(cmd);
                    }
                    let replies: Vec<Value> = p.query_async(&mut c.clone()).await?;
                    Ok(replies.into_iter().map(server_error).collect())
                }
                Shared::Cluster(c) => {
                    let calls: Vec<_> = cmds
                        .into_iter()
                        .map(|cmd| {
                            let mut c = c.clone();
                            tokio::spawn(async move { cmd.query_async::<Value>(&mut c).await })
                        })
                        .collect();
                    let mut replies = Vec::with_capacity(calls.len());
                    for call in calls {
                        replies.push(call.await.unwrap_or_else(|e| {
                            Err(redis::RedisError::from(std::io::Error::other(
                                e.to_string(),
                            )))
                        }));
                    }
                    Ok(replies)
                }
            }
        };
        // The connection's own response timeout bounds each command; this bounds the whole round trip.
        tokio::time::timeout(self.timeout + self.timeout, sent)
            .await
            .map_err(|_| {
                redis::RedisError::from(std::io::Error::from(std::io::ErrorKind::TimedOut))
            })?
    }

    /// Sends `cmds` at once on `via`: one reply or error per command, in order.
    async fn send<'o, O: Borrow<Op<'o>>>(
        &self,
        via: &mut Via<'_>,
        ops: &[O],
        whole: bool,
    ) -> redis::RedisResult<Vec<redis::RedisResult<Value>>> {
        match via {
            Via::Blocking(con) => Self::query(con, ops, whole),
            Via::Async(con) => {
                let cmds = ops.iter().map(|o| o.borrow().cmd(whole)).collect();
                self.send_shared(con, cmds).await
            }
        }
    }

    /// One round trip of `ops` on `via` (counted by the caller), scripts by SHA. If the server lost its script
    /// cache (a restart, `SCRIPT FLUSH`, a failover), only the scripts that met a `NOSCRIPT` are sent again,
    /// whole (which loads them again): no other command of the round trip runs twice.
    async fn round_trip(
        &self,
        via: &mut Via<'_>,
        ops: &[Op<'_>],
    ) -> redis::RedisResult<Vec<Value>> {
        let mut replies = self.send(via, ops, false).await?;
        let lost: Vec<usize> = replies
            .iter()
            .enumerate()
            .filter(|(_, r)| matches!(r, Err(e) if noscript(e)))
            .map(|(i, _)| i)
            .collect();
        if !lost.is_empty() {
            self.round_trips.fetch_add(1, Ordering::Relaxed);
            let again: Vec<&Op<'_>> = lost.iter().filter_map(|&i| ops.get(i)).collect();
            for (i, r) in lost.into_iter().zip(self.send(via, &again, true).await?) {
                if let Some(slot) = replies.get_mut(i) {
                    *slot = r;
                }
            }
        }
        replies.into_iter().collect()
    }

    /// [`Pool::run`] on the shared connection.
    async fn run_async(&self, ops: &[Op<'_>]) -> Result<Vec<Value>, StoreError> {
        if ops.is_empty() {
            return Ok(Vec::new());
        }
        self.round_trips.fetch_add(1, Ordering::Relaxed);
        let result = async {
            let con = self.shared().await?;
            self.round_trip(&mut Via::Async(&con), ops).await
        }
        .await;
        result.map_err(|e| {
            if e.is_unrecoverable_error()
                || e.is_io_error()
                || e.is_timeout()
                || e.is_connection_dropped()
            {
                // The next call opens a new connection.
                if let Ok(mut slot) = self.shared.lock() {
                    *slot = None;
                }
            }
            store_error(&e)
        })
    }

    /// A round trip on a blocking cluster connection. Its pipeline gives no replies when a command failed, so
    /// after a `NOSCRIPT` the whole round trip is sent again, scripts whole: a plain command in it runs twice.
    fn round_trip_cluster(&self, con: &mut Conn, ops: &[Op<'_>]) -> redis::RedisResult<Vec<Value>> {
        let replies = match Self::query(con, ops, false) {
            Err(e)
                if e.clone().into_server_errors().is_some_and(|errs| {
                    errs.iter()
                        .any(|(_, s)| s.kind() == Some(redis::ServerErrorKind::NoScript))
                }) || noscript(&e) =>
            {
                self.round_trips.fetch_add(1, Ordering::Relaxed);
                Self::query(con, ops, true)?
            }
            r => r?,
        };
        replies.into_iter().collect()
    }

    /// [`Pool::run`] on a pooled blocking connection.
    pub fn run_blocking(&self, ops: &[Op<'_>]) -> Result<Vec<Value>, StoreError> {
        if ops.is_empty() {
            return Ok(Vec::new());
        }
        self.round_trips.fetch_add(1, Ordering::Relaxed);
        let mut con = self.take().map_err(|e| store_error(&e))?;
        let result = if let Conn::Cluster(_) = con {
            self.round_trip_cluster(&mut con, ops)
        } else {
            // Every wait on a blocking connection blocks this thread: the round trip finishes in one poll.
            finish(self.round_trip(&mut Via::Blocking(&mut con), ops)).unwrap_or_else(|| {
                Err(redis::RedisError::from(std::io::Error::other(
                    "a blocking round trip was suspended",
                )))
            })
        };
        match result {
            Ok(v) => {
                self.put(con);
                Ok(v)
            }
            Err(e) => Err(store_error(&e)),
        }
    }
}
