//! `[server]` in `riskgate.toml`: how `riskgate serve` listens, its limits and its logs.
//!
//! Parsed with the rest of the file (an unknown key or a bad value is a load error with its line and column,
//! with or without the `server` feature), and read once when `riskgate serve` starts: a reload changes the
//! rules, never the listening address or the limits.

use serde::Deserialize;
use std::time::Duration;

use crate::duration::parse_millis;

/// The settings of `riskgate serve`, from `[server]` in `riskgate.toml`; every key is optional.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerSettings {
    /// `listen`: the address to listen on (`--listen` overrides it). Default `127.0.0.1:8080`.
    pub listen: String,
    /// `max_body_bytes`: the largest request body accepted; a larger one gets 413. Default 65536.
    pub max_body_bytes: usize,
    /// `max_header_bytes`: the most bytes of request line and headers read; more gets 431. Default 16384,
    /// at least 8192.
    pub max_header_bytes: usize,
    /// `header_timeout`: how long a client may take to send the request line and headers (and how long an
    /// idle keep-alive connection is kept); then the connection is closed. Default `"10s"`.
    pub header_timeout: Duration,
    /// `request_timeout`: how long one request may take, reading its body included; then 408. Default `"10s"`.
    pub request_timeout: Duration,
    /// `max_concurrent_requests`: requests handled at once; more are refused with 503 at once. Default 1024.
    pub max_concurrent_requests: usize,
    /// `max_connections`: open connections; a connection beyond it is closed when accepted. Default 4096.
    pub max_connections: usize,
    /// `shutdown_timeout`: how long SIGTERM waits for requests in flight before exiting. Default `"30s"`.
    pub shutdown_timeout: Duration,
    /// `watch`: reload the rules when the folder changes. Default true.
    pub watch: bool,
    /// `log_format`: `"json"` (one JSON object a line, the default) or `"text"`.
    pub log_format: LogFormat,
    /// `log_level`: `"error"`, `"warn"`, `"info"` (the default, one line per request), `"debug"` or `"trace"`.
    pub log_level: String,
}

/// How `riskgate serve` writes its logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// One JSON object a line.
    Json,
    /// Human-readable lines.
    Text,
}

impl Default for ServerSettings {
    fn default() -> Self {
        ServerSettings {
            listen: "127.0.0.1:8080".to_owned(),
            max_body_bytes: 64 * 1024,
            max_header_bytes: 16 * 1024,
            header_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(10),
            max_concurrent_requests: 1024,
            max_connections: 4096,
            shutdown_timeout: Duration::from_secs(30),
            watch: true,
            log_format: LogFormat::Json,
            log_level: "info".to_owned(),
        }
    }
}

/// `[server]` as written.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(crate) struct ServerFile {
    listen: Option<String>,
    max_body_bytes: Option<usize>,
    max_header_bytes: Option<usize>,
    header_timeout: Option<String>,
    request_timeout: Option<String>,
    max_concurrent_requests: Option<usize>,
    max_connections: Option<usize>,
    shutdown_timeout: Option<String>,
    watch: Option<bool>,
    log_format: Option<String>,
    log_level: Option<String>,
}

impl ServerFile {
    /// Checks the values; `fail(key, message)` hears of each bad one.
    pub(crate) fn resolve(&self, fail: &mut dyn FnMut(&str, String)) -> ServerSettings {
        let mut s = ServerSettings::default();
        if let Some(v) = &self.listen {
            if v.parse::<std::net::SocketAddr>().is_ok() {
                s.listen.clone_from(v);
            } else {
                fail(
                    "listen",
                    format!(
                        "`[server] listen`: `{}` is not an address and port such as 127.0.0.1:8080",
                        crate::error::shorten(v)
                    ),
                );
            }
        }
        for (key, v, slot, min) in [
            (
                "max_body_bytes",
                self.max_body_bytes,
                &mut s.max_body_bytes,
                1,
            ),
            (
                "max_header_bytes",
                self.max_header_bytes,
                &mut s.max_header_bytes,
                8192,
            ),
            (
                "max_concurrent_requests",
                self.max_concurrent_requests,
                &mut s.max_concurrent_requests,
                1,
            ),
            (
                "max_connections",
                self.max_connections,
                &mut s.max_connections,
                1,
            ),
        ] {
            match v {
                Some(n) if n < min => fail(key, format!("`[server] {key}` must be at least {min}")),
                Some(n) => *slot = n,
                None => {}
            }
        }
        for (key, v, slot) in [
            (
                "header_timeout",
                &self.header_timeout,
                &mut s.header_timeout,
            ),
            (
                "request_timeout",
                &self.request_timeout,
                &mut s.request_timeout,
            ),
            (
                "shutdown_timeout",
                &self.shutdown_timeout,
                &mut s.shutdown_timeout,
            ),
        ] {
            if let Some(v) = v {
                match parse_millis(v) {
                    Ok(ms) => *slot = Duration::from_millis(ms.unsigned_abs()),
                    Err(m) => fail(key, format!("`[server] {key}`: {m}")),
                }
            }
        }
        if let Some(w) = self.watch {
            s.watch = w;
        }
        match self.log_format.as_deref() {
            None | Some("json") => {}
            Some("text") => s.log_format = LogFormat::Text,
            Some(other) => fail(
                "log_format",
                format!(
                    "`[server] log_format`: expected \"json\" or \"text\", not `{}`",
                    crate::error::shorten(other)
                ),
            ),
        }
        if let Some(l) = &self.log_level {
            if ["error", "warn", "info", "debug", "trace"].contains(&l.as_str()) {
                s.log_level.clone_from(l);
            } else {
                fail(
                    "log_level",
                    format!(
                        "`[server] log_level`: expected \"error\", \"warn\", \"info\", \"debug\" or \"trace\", not `{}`",
                        crate::error::shorten(l)
                    ),
                );
            }
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_key_parses_and_bad_values_are_named() {
        let f: ServerFile = toml::from_str(
            "listen = \"0.0.0.0:9000\"\nmax_body_bytes = 10\nmax_header_bytes = 9000\nheader_timeout = \"2s\"\n\
             request_timeout = \"250ms\"\nmax_concurrent_requests = 8\nmax_connections = 16\n\
             shutdown_timeout = \"1m\"\nwatch = false\nlog_format = \"text\"\nlog_level = \"warn\"\n",
        )
        .unwrap();
        let mut problems = Vec::new();
        let s = f.resolve(&mut |k, m| problems.push((k.to_owned(), m)));
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(s.listen, "0.0.0.0:9000");
        assert_eq!((s.max_body_bytes, s.max_header_bytes), (10, 9000));
        assert_eq!(s.request_timeout, Duration::from_millis(250));
        assert_eq!(s.shutdown_timeout, Duration::from_secs(60));
        assert_eq!((s.max_concurrent_requests, s.max_connections), (8, 16));
        assert!(!s.watch);
        assert_eq!(
            (s.log_format, s.log_level.as_str()),
            (LogFormat::Text, "warn")
        );
        let f: ServerFile = toml::from_str(
            "listen = \"localhost\"\nmax_body_bytes = 0\nheader_timeout = \"soon\"\nlog_format = \"xml\"\nlog_level = \"loud\"\n",
        )
        .unwrap();
        let mut keys = Vec::new();
        let s = f.resolve(&mut |k, _| keys.push(k.to_owned()));
        assert_eq!(
            keys,
            [
                "listen",
                "max_body_bytes",
                "header_timeout",
                "log_format",
                "log_level"
            ]
        );
        assert_eq!(s, ServerSettings::default());
        assert!(toml::from_str::<ServerFile>("port = 1").is_err());
    }
}
