//! Redis servers the tests start themselves, on free loopback ports, and stop: one server, or a 3-master
//! cluster. Each runs under a watchdog that stops it when the test process exits, however it exits.
//!
//! `RISKGATE_TEST_STORE=redis` (or `cluster`) makes every engine the shared helpers build use one such server
//! (or cluster) with a key prefix of its own: the stateful suites then run against Redis unchanged. Without
//! redis-server on the machine they run in memory and say, once, how to run them on Redis.

use riskgate::StoreSettings;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The command that runs the Redis suites.
pub const HOW: &str = "bash .ci/redis-suites (installs redis-server with apt-get when missing)";

/// Whether redis-server can be run here.
pub fn available() -> bool {
    Command::new("redis-server")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Prints, once per test binary, that the Redis suites were skipped and how to run them.
pub fn say_skipped() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        say(&format!(
            "redis suites skipped: redis-server is not installed; to run them: {HOW}"
        ));
    });
}

/// Writes `line` to the real standard error: the test harness captures `eprintln!`, and this line must show.
pub fn say(line: &str) {
    let _ = writeln!(std::io::stderr(), "{line}");
}

/// A free loopback port whose cluster bus port (port + 10000) is free too.
pub fn free_port() -> u16 {
    loop {
        let Ok(l) = TcpListener::bind("127.0.0.1:0") else {
            continue;
        };
        let port = l.local_addr().map(|a| a.port()).unwrap_or(0);
        if port == 0 || port > 55_000 {
            continue;
        }
        if TcpListener::bind(("127.0.0.1", port + 10_000)).is_ok() {
            return port;
        }
    }
}

/// Sends one inline command and returns the reply's first line.
pub fn command(port: u16, cmd: &str) -> Option<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    s.write_all(format!("{cmd}\r\n").as_bytes()).ok()?;
    let mut buf = [0u8; 4096];
    let n = s.read(&mut buf).ok()?;
    Some(String::from_utf8_lossy(&buf[..n]).trim().to_owned())
}

/// One redis-server of the tests'.
pub struct Server {
    pub port: u16,
    dir: PathBuf,
    extra: Vec<String>,
    child: Option<Child>,
}

impl Server {
    /// A server with no persistence; `None` when redis-server is not installed.
    pub fn start() -> Option<Server> {
        Server::start_with(&[])
    }

    /// A server with extra `redis-server` arguments (`--appendonly yes`, `--cluster-enabled yes`, …).
    pub fn start_with(extra: &[&str]) -> Option<Server> {
        if !available() {
            say_skipped();
            return None;
        }
        static N: AtomicU64 = AtomicU64::new(0);
        let dir = std::env::temp_dir().join(format!(
            "riskgate-redis-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).ok()?;
        let mut s = Server {
            port: free_port(),
            dir,
            extra: extra.iter().map(|e| (*e).to_owned()).collect(),
            child: None,
        };
        s.launch();
        Some(s)
    }

    fn launch(&mut self) {
        let args = format!(
            "--port {} --bind 127.0.0.1 --dir {} --save '' --daemonize no --loglevel warning {}",
            self.port,
            self.dir.display(),
            self.extra.join(" ")
        );
        // The watchdog: stops the server when this test process is gone, however it ended.
        let script = format!(
            "redis-server {args} & r=$!; while kill -0 {pid} 2>/dev/null && kill -0 $r 2>/dev/null; do sleep 0.2; done; kill $r 2>/dev/null; wait $r",
            pid = std::process::id()
        );
        let child = Command::new("sh")
            .arg("-c")
            .arg(script)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start redis-server");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if command(self.port, "PING").is_some_and(|r| r.contains("PONG")) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("redis-server on port {} did not start", self.port);
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Store settings on this server with a key prefix no other engine has.
    pub fn settings(&self) -> StoreSettings {
        StoreSettings::redis(self.url()).key_prefix(fresh_prefix())
    }

    /// Stops the server (`SHUTDOWN`: with AOF on, what it acknowledged is on disk).
    pub fn stop(&mut self) {
        let _ = command(self.port, "SHUTDOWN");
        if let Some(mut c) = self.child.take() {
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline {
                if c.try_wait().ok().flatten().is_some() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Kills the server with SIGKILL, as a crash would: nothing is written on the way out.
    pub fn kill_hard(&mut self) {
        let pid = command(self.port, "INFO server").and_then(|info| {
            info.lines()
                .find_map(|l| l.strip_prefix("process_id:"))
                .and_then(|p| p.trim().parse::<u32>().ok())
        });
        if let Some(pid) = pid {
            let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
        }
        if let Some(mut c) = self.child.take() {
            let _ = c.wait();
        }
    }

    /// Starts a stopped or killed server again on the same port and folder (its AOF, if any, is read back).
    pub fn relaunch(&mut self) {
        self.launch();
    }

    /// Starts the server again on the same port and folder.
    pub fn restart(&mut self) {
        self.stop();
        self.launch();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A 3-master Redis Cluster of the tests'.
pub struct Cluster {
    pub nodes: Vec<Server>,
}

impl Cluster {
    /// Three `--cluster-enabled yes` servers joined with `redis-cli --cluster create`; `None` when
    /// redis-server is not installed.
    pub fn start() -> Option<Cluster> {
        let mut nodes = Vec::new();
        for _ in 0..3 {
            nodes.push(Server::start_with(&[
                "--cluster-enabled yes",
                "--cluster-config-file nodes.conf",
                "--cluster-node-timeout 5000",
            ])?);
        }
        let addrs: Vec<String> = nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        let out = Command::new("redis-cli")
            .arg("--cluster")
            .arg("create")
            .args(&addrs)
            .arg("--cluster-yes")
            .output()
            .expect("run redis-cli --cluster create");
        assert!(
            out.status.success(),
            "redis-cli --cluster create: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            let ok = nodes.iter().all(|n| {
                command(n.port, "CLUSTER INFO").is_some_and(|i| i.contains("cluster_state:ok"))
            });
            if ok {
                return Some(Cluster { nodes });
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("the cluster did not come up");
    }

    pub fn url(&self) -> String {
        self.nodes
            .iter()
            .map(|n| n.url())
            .collect::<Vec<_>>()
            .join(",")
    }

    pub fn settings(&self) -> StoreSettings {
        StoreSettings::redis(self.url())
            .cluster(true)
            .key_prefix(fresh_prefix())
    }
}

/// A key prefix no other engine of this run has.
pub fn fresh_prefix() -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    format!(
        "t{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// The lease of the suites' engines: longer than their slowest rules (seconds under a loaded debug build),
/// since a decision must finish within its lease to be stored.
const SUITE_LEASE: Duration = Duration::from_secs(30);

/// The store `RISKGATE_TEST_STORE` asks for: `None` for memory (the default), or settings with a fresh key
/// prefix on this process's shared server (`redis`) or cluster (`cluster`).
pub fn test_store() -> Option<StoreSettings> {
    static SERVER: OnceLock<Option<Server>> = OnceLock::new();
    static CLUSTER: OnceLock<Option<Cluster>> = OnceLock::new();
    match std::env::var("RISKGATE_TEST_STORE").as_deref() {
        Ok("redis") => SERVER.get_or_init(Server::start).as_ref().map(|s| {
            s.settings()
                .timeout(Duration::from_secs(2))
                .connect_timeout(Duration::from_secs(2))
                .lease(SUITE_LEASE)
        }),
        Ok("cluster") => CLUSTER.get_or_init(Cluster::start).as_ref().map(|c| {
            c.settings()
                .timeout(Duration::from_secs(2))
                .connect_timeout(Duration::from_secs(2))
                .lease(SUITE_LEASE)
        }),
        _ => None,
    }
}

/// Whether this run's engines are on Redis.
pub fn on_redis() -> bool {
    matches!(
        std::env::var("RISKGATE_TEST_STORE").as_deref(),
        Ok("redis" | "cluster")
    ) && available()
}
