//! Connections to Redis or Redis Cluster: a small pool of blocking connections, each round trip a pipeline with
//! a timeout, scripts sent by SHA and sent whole once after a `NOSCRIPT`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use redis::{Cmd, Value};

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
                let mut c = if whole {
                    let mut c = redis::cmd("EVAL");
                    c.arg(script.src);
                    c
                } else {
                    let mut c = redis::cmd("EVALSHA");
                    c.arg(&script.sha);
                    c
                };
                c.arg(keys.len()).arg(keys).arg(args);
                c
            }
        }
    }
}

enum Client {
    Single(redis::Client),
    Cluster(redis::cluster::ClusterClient),
}

enum Conn {
    Single(redis::Connection),
    Cluster(Box<redis::cluster::ClusterConnection>),
}

/// The connection pool of one store.
pub(crate) struct Pool {
    client: Client,
    idle: Mutex<Vec<Conn>>,
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
                Ok(Conn::Single(con))
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

    fn query(con: &mut Conn, cmds: &[Cmd]) -> redis::RedisResult<Vec<Value>> {
        match con {
            Conn::Single(c) => {
                let mut p = redis::pipe();
                for cmd in cmds {
                    p.add_command(cmd.clone());
                }
                p.query(c)
            }
            Conn::Cluster(c) => {
                let mut p = redis::cluster::cluster_pipe();
                for cmd in cmds {
                    p.add_command(cmd.clone());
                }
                p.query(c)
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
            Conn::Single(c) => {
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
    pub fn run(&self, ops: &[Op<'_>]) -> Result<Vec<Value>, StoreError> {
        if ops.is_empty() {
            return Ok(Vec::new());
        }
        self.round_trips.fetch_add(1, Ordering::Relaxed);
        let mut con = self.take().map_err(|e| store_error(&e))?;
        let cmds: Vec<Cmd> = ops.iter().map(|o| o.cmd(false)).collect();
        let result = match Self::query(&mut con, &cmds) {
            Err(e) if noscript(&e) => {
                // The server lost its script cache (a restart, `SCRIPT FLUSH`, a failover): send them whole,
                // which loads them again.
                self.round_trips.fetch_add(1, Ordering::Relaxed);
                let whole: Vec<Cmd> = ops.iter().map(|o| o.cmd(true)).collect();
                Self::query(&mut con, &whole)
            }
            r => r,
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
