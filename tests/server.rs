//! `riskgate serve` end to end: the binary on a free loopback port, driven over raw HTTP/1.1 — every endpoint in
//! the Authsignal SDKs' wire form, and the hostile cases (oversized and slow requests, invalid UTF-8, `..` and
//! `%00` in paths, a 10,000-key `custom`, concurrent same-key tracks, wrong secrets, signals).
//!
//! Needs `--features server`; without it this file only says so.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[cfg(feature = "server")]
mod common;

#[cfg(not(feature = "server"))]
#[test]
fn server_tests_need_the_server_feature() {
    use std::io::Write;
    // Written past the test harness's capture, so a plain `cargo test` says what it skipped.
    let _ = writeln!(
        std::io::stderr(),
        "tests/server.rs: skipped, needs the `server` feature: run `cargo test --features server --test server` \
         (the SDK scripts in tests/sdk/ run in .ci/run)"
    );
}

#[cfg(feature = "server")]
mod serve {
    use base64::Engine as _;
    use std::io::{BufRead, BufReader, Read, Write};
    use std::net::{SocketAddr, TcpStream};
    use std::path::Path;
    use std::process::{Child, Command, Stdio};
    use std::sync::{Arc, Mutex};
    use std::time::{Duration, Instant};

    const SECRET: &str = "sk_test_0123456789abcdef";

    const OUTCOME_RULE: &str = r#"//! description: the outcome the test asks for in `custom.outcome`
if custom.outcome == "challenge" { CHALLENGE_REQUIRED }
else if custom.outcome == "review" { REVIEW }
else if custom.outcome == "block" { BLOCK }
"#;

    /// A running `riskgate serve` on a temporary rules folder.
    struct Server {
        child: Child,
        addr: SocketAddr,
        logs: Arc<Mutex<Vec<String>>>,
        dir: tempfile::TempDir,
    }

    impl Drop for Server {
        fn drop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }

    struct Resp {
        status: u16,
        headers: String,
        body: String,
    }

    impl Resp {
        fn json(&self) -> serde_json::Value {
            serde_json::from_str(&self.body)
                .unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
        }
        /// The SDKs' error fields.
        fn error(&self) -> (u16, String) {
            let v = self.json();
            assert_eq!(v["error"], v["errorCode"], "{}", self.body);
            assert!(
                v["errorDescription"]
                    .as_str()
                    .is_some_and(|d| !d.is_empty()),
                "{}",
                self.body
            );
            (
                self.status,
                v["errorCode"].as_str().unwrap_or("").to_owned(),
            )
        }
    }

    fn start(server_toml: &str, extra_rules: &[(&str, &str)]) -> Server {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("outcome.rhai"), OUTCOME_RULE).unwrap();
        for (name, src) in extra_rules {
            std::fs::write(dir.path().join(name), src).unwrap();
        }
        std::fs::write(
            dir.path().join("riskgate.toml"),
            format!("default_outcome = \"ALLOW\"\n{server_toml}\n"),
        )
        .unwrap();
        start_in(dir)
    }

    fn start_in(dir: tempfile::TempDir) -> Server {
        start_with(dir, &[])
    }

    /// `riskgate serve` on `dir` with `extra` arguments.
    fn start_with(dir: tempfile::TempDir, extra: &[&str]) -> Server {
        let mut child = crate::common::riskgate()
            .args(["serve", "--listen", "127.0.0.1:0", "--rules"])
            .arg(dir.path())
            .args(extra)
            .env("RISKGATE_SECRET", SECRET)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let logs = Arc::new(Mutex::new(Vec::new()));
        let stderr = child.stderr.take().unwrap();
        let sink = Arc::clone(&logs);
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                sink.lock().unwrap().push(line);
            }
        });
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        stdout.read_line(&mut line).unwrap();
        let addr = line
            .trim()
            .strip_prefix("listening on http://")
            .unwrap_or_else(|| panic!("no address in {line:?}; logs: {:?}", logs.lock().unwrap()))
            .parse()
            .unwrap();
        Server {
            child,
            addr,
            logs,
            dir,
        }
    }

    fn basic(secret: &str) -> String {
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("{secret}:"))
        )
    }

    impl Server {
        /// Sends one request on a new connection and reads the whole response.
        fn raw(&self, request: &[u8]) -> Resp {
            let mut s = TcpStream::connect(self.addr).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
            s.write_all(request).unwrap();
            read_response(&mut s)
        }

        fn call(&self, method: &str, path: &str, auth: Option<&str>, body: &[u8]) -> Resp {
            let mut req = format!(
                "{method} {path} HTTP/1.1\r\nHost: riskgate\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n",
                body.len()
            )
            .into_bytes();
            if let Some(a) = auth {
                req.extend_from_slice(format!("Authorization: {a}\r\n").as_bytes());
            }
            req.extend_from_slice(b"\r\n");
            req.extend_from_slice(body);
            self.raw(&req)
        }

        fn api(&self, method: &str, path: &str, body: &str) -> Resp {
            self.call(method, path, Some(&basic(SECRET)), body.as_bytes())
        }

        fn track(&self, user: &str, action: &str, body: &str) -> Resp {
            self.api("POST", &format!("/v1/users/{user}/actions/{action}"), body)
        }

        fn metric(&self, name: &str) -> f64 {
            let r = self.call("GET", "/metrics", None, b"");
            assert_eq!(r.status, 200);
            r.body
                .lines()
                .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
                .unwrap_or(0.0)
        }

        fn evaluations(&self) -> f64 {
            self.metric("riskgate_rule_evaluations_total")
        }

        fn logs(&self) -> String {
            self.logs.lock().unwrap().join("\n")
        }

        fn signal(&self, sig: &str) {
            let ok = Command::new("kill")
                .arg(format!("-{sig}"))
                .arg(self.child.id().to_string())
                .status()
                .unwrap()
                .success();
            assert!(ok, "kill -{sig}");
        }
    }

    fn read_response(s: &mut TcpStream) -> Resp {
        let mut buf = Vec::new();
        let _ = s.read_to_end(&mut buf);
        let text = String::from_utf8_lossy(&buf).into_owned();
        let (head, body) = text
            .split_once("\r\n\r\n")
            .unwrap_or_else(|| panic!("no response: {text:?}"));
        let status = head
            .split(' ')
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or_else(|| panic!("no status: {head:?}"));
        Resp {
            status,
            headers: head.to_ascii_lowercase(),
            body: body.to_owned(),
        }
    }

    #[test]
    fn every_endpoint_answers_in_the_sdk_wire_form() {
        let s = start("", &[]);
        for (outcome, state) in [
            ("", "ALLOW"),
            ("challenge", "CHALLENGE_REQUIRED"),
            ("review", "REVIEW_REQUIRED"),
            ("block", "BLOCK"),
        ] {
            let r = s.track(
                "u1",
                "signIn",
                &format!(r#"{{"ipAddress":"203.0.113.9","custom":{{"outcome":"{outcome}"}}}}"#),
            );
            assert_eq!(r.status, 200, "{}", r.body);
            assert!(
                r.headers.contains("content-type: application/json\r\n"),
                "{}",
                r.headers
            );
            let v = r.json();
            assert_eq!(v["state"], state, "{v}");
            assert_eq!(v["isEnrolled"], false);
            assert_eq!(v["token"].is_string(), state == "CHALLENGE_REQUIRED", "{v}");
            assert_eq!(v["idempotencyKey"].as_str().map(str::len), Some(36), "{v}");
        }
        // snake_case attributes, as the Python SDK passes them through.
        let r = s.track(
            "u1",
            "withdraw-funds",
            r#"{"idempotency_key":"k1","ip_address":"203.0.113.9","custom":{"outcome":"challenge"}}"#,
        );
        let first = r.json();
        assert_eq!(first["idempotencyKey"], "k1", "{first}");
        let token = first["token"].as_str().unwrap().to_owned();
        let repeat = s
            .track(
                "u1",
                "withdraw-funds",
                r#"{"idempotencyKey":"k1","ipAddress":"203.0.113.9","custom":{"outcome":"challenge"}}"#,
            )
            .json();
        assert_eq!(repeat["token"], token.as_str(), "{repeat}");
        let conflict = s.track(
            "u1",
            "withdraw-funds",
            r#"{"idempotencyKey":"k1","custom":{"outcome":"block"}}"#,
        );
        assert_eq!(conflict.error(), (409, "idempotency_conflict".into()));

        let got = s.api("GET", "/v1/users/u1/actions/withdraw-funds/k1", "");
        let v = got.json();
        assert_eq!(got.status, 200);
        assert_eq!(v["state"], "CHALLENGE_REQUIRED");
        assert_eq!(v["rules"][0]["ruleId"], "outcome", "{v}");
        assert!(v["createdAt"].is_string() && v["stateUpdatedAt"].is_string());
        let missing = s.api("GET", "/v1/users/u1/actions/withdraw-funds/nope", "");
        assert_eq!(missing.error(), (404, "action_not_found".into()));

        let pending = s.api("POST", "/v1/validate", &format!(r#"{{"token":"{token}"}}"#));
        assert_eq!(pending.json()["isValid"], false, "{}", pending.body);
        assert_eq!(pending.json()["state"], "CHALLENGE_REQUIRED");

        let bad_state = s.api(
            "PATCH",
            "/v1/users/u1/actions/withdraw-funds/k1",
            r#"{"state":"ALLOW"}"#,
        );
        assert_eq!(bad_state.error(), (409, "invalid_transition".into()));
        let unknown_state = s.api(
            "PATCH",
            "/v1/users/u1/actions/withdraw-funds/k1",
            r#"{"state":"MAYBE"}"#,
        );
        assert_eq!(unknown_state.error(), (400, "invalid_request".into()));
        let updated = s.api(
            "PATCH",
            "/v1/users/u1/actions/withdraw-funds/k1",
            r#"{"state":"CHALLENGE_SUCCEEDED"}"#,
        );
        assert_eq!(
            updated.json()["state"],
            "CHALLENGE_SUCCEEDED",
            "{}",
            updated.body
        );

        // A token presented for another user is not valid for it (and is used up).
        let valid = s.api(
            "POST",
            "/v1/validate",
            &format!(r#"{{"token":"{token}","userId":"u1","action":"withdraw-funds"}}"#),
        );
        let v = valid.json();
        assert_eq!(v["isValid"], true, "{v}");
        assert_eq!(v["action"], "withdraw-funds");
        assert_eq!(v["actionCode"], "withdraw-funds");
        assert_eq!(v["userId"], "u1");
        assert_eq!(v["idempotencyKey"], "k1");
        let again = s.api("POST", "/v1/validate", &format!(r#"{{"token":"{token}"}}"#));
        assert_eq!(again.json()["isValid"], false);
        assert_eq!(again.json()["error"], "already_used");
        let review = s
            .track(
                "u2",
                "signIn",
                r#"{"idempotencyKey":"r","custom":{"outcome":"review"}}"#,
            )
            .json();
        assert_eq!(review["state"], "REVIEW_REQUIRED");
        let reviewed = s.api(
            "PATCH",
            "/v1/users/u2/actions/signIn/r",
            r#"{"state":"REVIEW_SUCCEEDED"}"#,
        );
        assert_eq!(reviewed.json()["state"], "REVIEW_SUCCEEDED");
        assert_eq!(reviewed.json()["outcome"], "REVIEW_REQUIRED");

        let health = s.call("GET", "/health", None, b"");
        assert_eq!(
            (health.status, health.json()["rules"].as_u64()),
            (200, Some(1))
        );
        let m = s.call("GET", "/metrics", None, b"").body;
        for line in [
            "riskgate_decisions_total{action=\"signIn\",state=\"REVIEW_REQUIRED\"} 2",
            "riskgate_decisions_total{action=\"withdraw-funds\",state=\"CHALLENGE_REQUIRED\"} 2",
            "riskgate_rule_hits_total{rule=\"outcome\",mode=\"enforce\"} 6",
            "riskgate_http_responses_total{route=\"track\",status=\"409\"} 1",
            "riskgate_rule_evaluations_total 6",
            "riskgate_track_duration_seconds_count 7",
        ] {
            assert!(m.contains(line), "no `{line}` in\n{m}");
        }
    }

    #[test]
    fn a_wrong_or_missing_secret_is_401_and_changes_nothing() {
        let s = start("", &[]);
        let t = s
            .track(
                "u",
                "signIn",
                r#"{"idempotencyKey":"k","custom":{"outcome":"challenge"}}"#,
            )
            .json();
        let token = t["token"].as_str().unwrap().to_owned();
        let before = s.evaluations();
        let wrong = basic("sk_test_0123456789abcdeX");
        let longer = basic(&format!("{SECRET}0"));
        let prefix = basic(&SECRET[..10]);
        for auth in [
            None,
            Some(wrong.as_str()),
            Some(longer.as_str()),
            Some(prefix.as_str()),
            Some("Bearer sk_test_0123456789abcdef"),
            Some("Basic not base64!"),
        ] {
            for (method, path, body) in [
                (
                    "POST",
                    "/v1/users/u/actions/signIn",
                    r#"{"idempotencyKey":"k2"}"#,
                ),
                (
                    "PATCH",
                    "/v1/users/u/actions/signIn/k",
                    r#"{"state":"CHALLENGE_SUCCEEDED"}"#,
                ),
                ("GET", "/v1/users/u/actions/signIn/k", ""),
                ("POST", "/v1/validate", r#"{"token":"x"}"#),
            ] {
                let r = s.call(method, path, auth, body.as_bytes());
                assert_eq!(
                    r.error(),
                    (401, "unauthorized".into()),
                    "{method} {path} {auth:?}"
                );
                assert!(
                    r.headers.contains("www-authenticate: basic"),
                    "{}",
                    r.headers
                );
            }
        }
        assert_eq!(s.evaluations(), before);
        let got = s.api("GET", "/v1/users/u/actions/signIn/k", "").json();
        assert_eq!(got["state"], "CHALLENGE_REQUIRED", "{got}");
        assert_eq!(
            s.api("GET", "/v1/users/u/actions/signIn/k2", "").status,
            404
        );
        let pending = s.api("POST", "/v1/validate", &format!(r#"{{"token":"{token}"}}"#));
        assert_eq!(pending.json()["state"], "CHALLENGE_REQUIRED");
    }

    #[test]
    fn malformed_requests_get_clear_4xx_and_never_reach_the_engine() {
        let s = start("", &[]);
        let auth = basic(SECRET);
        let before = s.evaluations();
        let cases: Vec<(&str, String, Vec<u8>, u16, &str)> = vec![
            (
                "POST",
                "/v1/users/u/actions/signIn".into(),
                b"{".to_vec(),
                400,
                "invalid_json",
            ),
            (
                "POST",
                "/v1/users/u/actions/signIn".into(),
                b"[1]".to_vec(),
                400,
                "invalid_request",
            ),
            (
                "POST",
                "/v1/users/u/actions/signIn".into(),
                b"{} {}".to_vec(),
                400,
                "invalid_json",
            ),
            (
                "POST",
                "/v1/users/u/actions/signIn".into(),
                b"{\"email\":\"a\xffb\"}".to_vec(),
                400,
                "invalid_json",
            ),
            (
                "POST",
                "/v1/users/u/actions/signIn".into(),
                b"\xfe\xff{}".to_vec(),
                400,
                "invalid_json",
            ),
            (
                "POST",
                "/v1/users/u/actions/signIn".into(),
                br#"{"colour":"red"}"#.to_vec(),
                400,
                "invalid_request",
            ),
            (
                "POST",
                "/v1/users/u/actions/signIn".into(),
                br#"{"ipAddress":"999.1.1.1"}"#.to_vec(),
                400,
                "invalid_request",
            ),
            (
                "POST",
                "/v1/users/u/actions/signIn".into(),
                br#"{"custom":{"a":{"b":1}}}"#.to_vec(),
                400,
                "invalid_request",
            ),
            (
                "POST",
                "/v1/users/u/actions/sign.in".into(),
                b"{}".to_vec(),
                400,
                "invalid_request",
            ),
            (
                "POST",
                format!("/v1/users/u/actions/{}", "a".repeat(65)),
                b"{}".to_vec(),
                400,
                "invalid_request",
            ),
            (
                "POST",
                "/v1/users/../actions/signIn".into(),
                b"{}".to_vec(),
                400,
                "invalid_request",
            ),
            (
                "POST",
                "/v1/users/%2e%2e/actions/signIn".into(),
                b"{}".to_vec(),
                400,
                "invalid_request",
            ),
            (
                "POST",
                "/v1/users/u/actions/..".into(),
                b"{}".to_vec(),
                400,
                "invalid_request",
            ),
            (
                "POST",
                "/v1/users/%00/actions/signIn".into(),
                b"{}".to_vec(),
                400,
                "invalid_request",
            ),
            (
                "POST",
                "/v1/users/a%00b/actions/signIn".into(),
                b"{}".to_vec(),
                400,
                "invalid_request",
            ),
            (
                "POST",
                "/v1/users/%ff/actions/signIn".into(),
                b"{}".to_vec(),
                400,
                "invalid_request",
            ),
            (
                "GET",
                "/v1/users/u/actions/signIn/%00".into(),
                Vec::new(),
                400,
                "invalid_request",
            ),
            (
                "GET",
                "/v1/users/u/actions/signIn/..".into(),
                Vec::new(),
                400,
                "invalid_request",
            ),
            (
                "GET",
                "/v1/users/u/actions/bad!code/k".into(),
                Vec::new(),
                400,
                "invalid_request",
            ),
            (
                "PATCH",
                "/v1/users/u/actions/signIn/k".into(),
                b"{}".to_vec(),
                400,
                "invalid_request",
            ),
            (
                "PATCH",
                "/v1/users/u/actions/signIn/k".into(),
                br#"{"state":1}"#.to_vec(),
                400,
                "invalid_request",
            ),
            (
                "POST",
                "/v1/validate".into(),
                b"{}".to_vec(),
                400,
                "invalid_request",
            ),
            (
                "POST",
                "/v1/validate".into(),
                b"nope".to_vec(),
                400,
                "invalid_json",
            ),
            (
                "GET",
                "/v1/users/u/actions".into(),
                Vec::new(),
                404,
                "not_found",
            ),
            (
                "GET",
                "/v1/users/u/actions/signIn/k/extra".into(),
                Vec::new(),
                404,
                "not_found",
            ),
            (
                "DELETE",
                "/v1/users/u/actions/signIn".into(),
                Vec::new(),
                405,
                "method_not_allowed",
            ),
            ("GET", "/".into(), Vec::new(), 404, "not_found"),
        ];
        for (method, path, body, status, code) in cases {
            let r = s.call(method, &path, Some(&auth), &body);
            assert_eq!(
                r.error(),
                (status, code.to_owned()),
                "{method} {path} {:?}: {}",
                String::from_utf8_lossy(&body),
                r.body
            );
        }
        // A 10,000-key `custom` (about 150 KB, under a raised body limit) is refused whole.
        let custom: Vec<String> = (0..10_000).map(|i| format!("\"key{i:05}\":{i}")).collect();
        let body = format!(
            r#"{{"idempotencyKey":"big","custom":{{{}}}}}"#,
            custom.join(",")
        );
        let r = s.call(
            "POST",
            "/v1/users/u/actions/signIn",
            Some(&auth),
            body.as_bytes(),
        );
        // The default body limit refuses it before parsing.
        assert_eq!(r.error(), (413, "payload_too_large".into()));
        assert_eq!(s.evaluations(), before);
        assert_eq!(s.metric("riskgate_stored_actions"), 0.0);
    }

    #[test]
    fn a_ten_thousand_key_custom_within_the_body_limit_is_refused_by_validation() {
        let s = start("[server]\nmax_body_bytes = 1048576", &[]);
        let custom: Vec<String> = (0..10_000).map(|i| format!("\"key{i:05}\":{i}")).collect();
        let body = format!(
            r#"{{"idempotencyKey":"big","custom":{{{}}}}}"#,
            custom.join(",")
        );
        assert!(body.len() > 64 * 1024);
        let started = Instant::now();
        let r = s.track("u", "signIn", &body);
        assert_eq!(r.error(), (400, "invalid_request".into()), "{}", r.body);
        assert!(r.json()["errorDescription"]
            .as_str()
            .unwrap()
            .contains("attributes.custom"));
        assert!(started.elapsed() < Duration::from_secs(5));
        assert_eq!(s.evaluations(), 0.0);
        assert_eq!(
            s.api("GET", "/v1/users/u/actions/signIn/big", "").status,
            404
        );
    }

    #[test]
    fn oversized_bodies_and_headers_are_refused() {
        let s = start("[server]\nmax_body_bytes = 4096", &[]);
        let big = format!(r#"{{"email":"{}"}}"#, "a".repeat(8000));
        let r = s.track("u", "signIn", &big);
        assert_eq!(r.error(), (413, "payload_too_large".into()));
        // Without a length up front (chunked), the limit holds while reading.
        let chunk = "a".repeat(3000);
        let mut req = format!(
            "POST /v1/users/u/actions/signIn HTTP/1.1\r\nHost: x\r\nConnection: close\r\nAuthorization: {}\r\nTransfer-Encoding: chunked\r\n\r\n",
            basic(SECRET)
        );
        for _ in 0..3 {
            req.push_str(&format!("{:x}\r\n{chunk}\r\n", chunk.len()));
        }
        req.push_str("0\r\n\r\n");
        assert_eq!(s.raw(req.as_bytes()).status, 413);
        let req = format!(
            "GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\nX-Big: {}\r\n\r\n",
            "b".repeat(64 * 1024)
        );
        let mut c = TcpStream::connect(s.addr).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let _ = c.write_all(req.as_bytes());
        let mut buf = Vec::new();
        let _ = c.read_to_end(&mut buf);
        let text = String::from_utf8_lossy(&buf);
        assert!(text.starts_with("HTTP/1.1 431"), "{text:?}");
        assert_eq!(s.evaluations(), 0.0);
        assert_eq!(s.call("GET", "/health", None, b"").status, 200);
    }

    #[test]
    fn slow_clients_are_cut_off() {
        let s = start(
            "[server]\nheader_timeout = \"1s\"\nrequest_timeout = \"1s\"",
            &[],
        );
        // Headers that never finish: the connection is closed.
        let mut c = TcpStream::connect(s.addr).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        c.write_all(b"POST /v1/users/u/actions/signIn HTTP/1.1\r\nHost: x\r\nX-Slow: ")
            .unwrap();
        let started = Instant::now();
        let mut buf = Vec::new();
        let _ = c.read_to_end(&mut buf);
        let took = started.elapsed();
        assert!(took < Duration::from_secs(5), "held for {took:?}");
        assert!(
            buf.is_empty() || String::from_utf8_lossy(&buf).starts_with("HTTP/1.1 408"),
            "{:?}",
            String::from_utf8_lossy(&buf)
        );
        // A body that never finishes: 408, and nothing tracked.
        let mut c = TcpStream::connect(s.addr).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        c.write_all(
            format!(
                "POST /v1/users/u/actions/signIn HTTP/1.1\r\nHost: x\r\nAuthorization: {}\r\nContent-Length: 100\r\n\r\n{{\"idem",
                basic(SECRET)
            )
            .as_bytes(),
        )
        .unwrap();
        let started = Instant::now();
        let r = read_response(&mut c);
        assert!(started.elapsed() < Duration::from_secs(5));
        assert_eq!(r.error(), (408, "request_timeout".into()));
        // An idle keep-alive connection is closed too.
        let mut c = TcpStream::connect(s.addr).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        c.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        let started = Instant::now();
        let mut buf = Vec::new();
        let _ = c.read_to_end(&mut buf);
        assert!(String::from_utf8_lossy(&buf).starts_with("HTTP/1.1 200"));
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "idle connection kept"
        );
        assert_eq!(s.evaluations(), 0.0);
        assert_eq!(s.call("GET", "/health", None, b"").status, 200);
    }

    #[test]
    fn concurrent_same_key_tracks_are_evaluated_once() {
        let s = Arc::new(start("", &[]));
        let barrier = Arc::new(std::sync::Barrier::new(32));
        let handles: Vec<_> = (0..32)
            .map(|_| {
                let s = Arc::clone(&s);
                let barrier = Arc::clone(&barrier);
                std::thread::spawn(move || {
                    barrier.wait();
                    s.track(
                        "same-user",
                        "withdraw-funds",
                        r#"{"idempotencyKey":"once","custom":{"outcome":"challenge"}}"#,
                    )
                })
            })
            .collect();
        let tokens: Vec<String> = handles
            .into_iter()
            .map(|h| {
                let r = h.join().unwrap();
                assert_eq!(r.status, 200, "{}", r.body);
                r.json()["token"].as_str().unwrap().to_owned()
            })
            .collect();
        assert!(tokens.iter().all(|t| *t == tokens[0]), "{tokens:?}");
        assert_eq!(s.evaluations(), 1.0);
        assert_eq!(
            s.metric(
                "riskgate_decisions_total{action=\"withdraw-funds\",state=\"CHALLENGE_REQUIRED\"}"
            ),
            32.0
        );
        let got = s.api("GET", "/v1/users/same-user/actions/withdraw-funds/once", "");
        assert_eq!(got.json()["state"], "CHALLENGE_REQUIRED");
    }

    #[test]
    fn logs_are_structured_and_never_hold_tokens_or_secrets() {
        let s = start("", &[]);
        let t = s
            .track(
                "log-user",
                "signIn",
                r#"{"idempotencyKey":"k","custom":{"outcome":"challenge"}}"#,
            )
            .json();
        let token = t["token"].as_str().unwrap().to_owned();
        s.api(
            "PATCH",
            "/v1/users/log-user/actions/signIn/k",
            r#"{"state":"CHALLENGE_SUCCEEDED"}"#,
        );
        s.api("POST", "/v1/validate", &format!(r#"{{"token":"{token}"}}"#));
        s.api(
            "POST",
            "/v1/validate",
            &format!(r#"{{"token":"{token}","extra":1}}"#),
        );
        s.call(
            "GET",
            "/v1/users/log-user/actions/signIn/k",
            Some(&basic("sk_guess_123")),
            b"",
        );
        // Wait for the request lines to arrive.
        let deadline = Instant::now() + Duration::from_secs(5);
        while s.logs().matches("\"message\":\"request\"").count() < 5 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        let logs = s.logs();
        assert!(!logs.contains(&token), "token in logs:\n{logs}");
        assert!(!logs.contains(SECRET), "secret in logs:\n{logs}");
        assert!(
            !logs.contains("sk_guess_123"),
            "guessed secret in logs:\n{logs}"
        );
        assert!(
            !logs.to_ascii_lowercase().contains("authorization"),
            "{logs}"
        );
        let lines: Vec<serde_json::Value> = logs
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
            .collect();
        let track = lines
            .iter()
            .find(|l| l["route"] == "track")
            .unwrap_or_else(|| panic!("no track line in\n{logs}"));
        assert_eq!(track["state"], "CHALLENGE_REQUIRED");
        assert_eq!(track["user_id"], "log-user");
        assert_eq!(track["status"], 200);
        assert!(track["micros"].is_u64());
        assert!(lines.iter().any(|l| l["route"] == "get_action"
            && l["status"] == 401
            && l["error"] == "unauthorized"));
    }

    fn set_outcome_rule(dir: &Path, src: &str) {
        // Write then rename, as a deploy would, so a reload never sees half a file.
        let tmp = dir.join(".outcome.tmp");
        std::fs::write(&tmp, src).unwrap();
        std::fs::rename(&tmp, dir.join("outcome.rhai")).unwrap();
    }

    fn state_of(s: &Server, user: &str) -> String {
        s.track(user, "signIn", "{}").json()["state"]
            .as_str()
            .unwrap_or("")
            .to_owned()
    }

    #[test]
    fn sighup_reloads_and_a_broken_ruleset_is_never_served() {
        let s = start("[server]\nwatch = false", &[]);
        assert_eq!(state_of(&s, "a"), "ALLOW");
        set_outcome_rule(s.dir.path(), "BLOCK\n");
        s.signal("HUP");
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut n = 0;
        while state_of(&s, &format!("b{n}")) != "BLOCK" {
            assert!(Instant::now() < deadline, "SIGHUP did not reload");
            std::thread::sleep(Duration::from_millis(50));
            n += 1;
        }
        set_outcome_rule(s.dir.path(), "if ( { BLOCK\n");
        s.signal("HUP");
        let deadline = Instant::now() + Duration::from_secs(10);
        while s.metric("riskgate_rules_reloads_total{result=\"error\"}") < 1.0 {
            assert!(Instant::now() < deadline, "no failed reload counted");
            std::thread::sleep(Duration::from_millis(50));
        }
        assert_eq!(state_of(&s, "c"), "BLOCK");
        assert_eq!(s.call("GET", "/health", None, b"").status, 200);
        assert!(s.logs().contains("rules not reloaded"), "{}", s.logs());
    }

    #[test]
    fn a_folder_change_reloads_the_rules() {
        let s = start("", &[]);
        assert_eq!(state_of(&s, "a"), "ALLOW");
        set_outcome_rule(s.dir.path(), "REVIEW\n");
        let deadline = Instant::now() + Duration::from_secs(15);
        let mut n = 0;
        while state_of(&s, &format!("w{n}")) != "REVIEW_REQUIRED" {
            assert!(Instant::now() < deadline, "the watch did not reload");
            std::thread::sleep(Duration::from_millis(100));
            n += 1;
        }
    }

    /// A rule that keeps the engine busy for about a second (until its time limit).
    const SLOW_RULE: &str =
        "//! actions: slow\nlet i = 0;\nwhile i < 1000000000 { i += 1; }\nALLOW\n";
    const SLOW_LIMITS: &str =
        "on_rule_error = \"BLOCK\"\n[limits]\nmax_operations = 4000000000\ntime_limit = \"1s\"\n";

    #[test]
    fn sigterm_drains_requests_in_flight() {
        let s = start(
            &format!("{SLOW_LIMITS}[server]\nwatch = false"),
            &[("slow.rhai", SLOW_RULE)],
        );
        let addr = s.addr;
        let auth = basic(SECRET);
        let slow = std::thread::spawn(move || {
            let mut c = TcpStream::connect(addr).unwrap();
            c.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
            c.write_all(
                format!(
                    "POST /v1/users/u/actions/slow HTTP/1.1\r\nHost: x\r\nConnection: close\r\nAuthorization: {auth}\r\nContent-Length: 2\r\n\r\n{{}}"
                )
                .as_bytes(),
            )
            .unwrap();
            read_response(&mut c)
        });
        std::thread::sleep(Duration::from_millis(300));
        s.signal("TERM");
        let r = slow.join().unwrap();
        assert_eq!(r.status, 200, "{}", r.body);
        // The rule ran out of time: it failed, and a failure counts as BLOCK here.
        assert_eq!(r.json()["state"], "BLOCK", "{}", r.body);
        let mut s = s;
        let deadline = Instant::now() + Duration::from_secs(10);
        let status = loop {
            if let Some(st) = s.child.try_wait().unwrap() {
                break st;
            }
            assert!(Instant::now() < deadline, "did not exit after SIGTERM");
            std::thread::sleep(Duration::from_millis(20));
        };
        assert!(status.success(), "{status:?}");
        assert!(
            TcpStream::connect(s.addr).is_err(),
            "still accepting after SIGTERM"
        );
    }

    #[test]
    fn requests_beyond_the_concurrency_limit_get_503() {
        let s = Arc::new(start(
            &format!("{SLOW_LIMITS}[server]\nmax_concurrent_requests = 1"),
            &[("slow.rhai", SLOW_RULE)],
        ));
        let busy = {
            let s = Arc::clone(&s);
            std::thread::spawn(move || s.track("u", "slow", "{}"))
        };
        std::thread::sleep(Duration::from_millis(300));
        let refused = s.track("v", "signIn", "{}");
        assert_eq!(refused.error(), (503, "server_busy".into()));
        assert_eq!(busy.join().unwrap().status, 200);
        assert_eq!(s.track("w", "signIn", "{}").status, 200);
    }

    #[test]
    fn slow_interpreted_rules_do_not_stall_other_requests() {
        let s = Arc::new(start(SLOW_LIMITS, &[("slow.rhai", SLOW_RULE)]));
        // More slow decisions at once than the runtime has workers.
        let slow: Vec<_> = (0..8)
            .map(|i| {
                let s = Arc::clone(&s);
                std::thread::spawn(move || s.track(&format!("slow-{i}"), "slow", "{}"))
            })
            .collect();
        std::thread::sleep(Duration::from_millis(200));
        let started = Instant::now();
        assert_eq!(s.call("GET", "/health", None, b"").status, 200);
        let took = started.elapsed();
        for h in slow {
            assert_eq!(h.join().unwrap().status, 200);
        }
        assert!(
            took < Duration::from_millis(500),
            "health waited {took:?} behind slow rules"
        );
    }

    #[test]
    fn the_secret_comes_from_a_file_or_the_environment_only() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("r.rhai"), "ALLOW").unwrap();
        let out = crate::common::riskgate()
            .args(["serve", "--listen", "127.0.0.1:0", "--rules"])
            .arg(dir.path())
            .env_remove("RISKGATE_SECRET")
            .output()
            .unwrap();
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("no API secret"), "{err}");
        let out = crate::common::riskgate()
            .args(["serve", "--secret", "x"])
            .output()
            .unwrap();
        assert!(
            !out.status.success(),
            "a secret on the command line is refused"
        );
        let secret_file = dir.path().join("secret");
        std::fs::write(&secret_file, "sk_from_file\n").unwrap();
        let mut child = crate::common::riskgate()
            .args(["serve", "--listen", "127.0.0.1:0", "--secret-file"])
            .arg(&secret_file)
            .arg("--rules")
            .arg(dir.path())
            .env("RISKGATE_SECRET", "sk_from_env")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let addr: SocketAddr = line
            .trim()
            .trim_start_matches("listening on http://")
            .parse()
            .unwrap();
        let s = Server {
            child,
            addr,
            logs: Arc::default(),
            dir,
        };
        let ok = s.call(
            "POST",
            "/v1/users/u/actions/a",
            Some(&basic("sk_from_file")),
            b"{}",
        );
        assert_eq!(ok.status, 200, "{}", ok.body);
        let env = s.call(
            "POST",
            "/v1/users/u/actions/a",
            Some(&basic("sk_from_env")),
            b"{}",
        );
        assert_eq!(env.status, 401, "the file wins over the environment");
    }

    #[test]
    fn bad_server_settings_are_load_errors_with_their_line() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("r.rhai"), "ALLOW").unwrap();
        std::fs::write(
            dir.path().join("riskgate.toml"),
            "[server]\nlisten = \"127.0.0.1:0\"\nmax_header_bytes = 10\n",
        )
        .unwrap();
        let out = crate::common::riskgate()
            .args(["check", "--rules"])
            .arg(dir.path())
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success());
        assert!(
            err.contains("riskgate.toml:3:1: `[server] max_header_bytes` must be at least 8192"),
            "{err}"
        );
    }

    /// Two servers on one redis-server: an action tracked on one is read, updated and validated on the other,
    /// every call awaiting Redis on the server's async workers.
    #[cfg(feature = "redis")]
    #[test]
    fn two_servers_on_one_redis_share_actions_and_tokens() {
        let Some(redis) = crate::common::redis::Server::start() else {
            crate::common::redis::say_skipped();
            return;
        };
        let url = redis.url();
        let folder = || {
            let dir = tempfile::tempdir().unwrap();
            std::fs::write(dir.path().join("outcome.rhai"), OUTCOME_RULE).unwrap();
            std::fs::write(
                dir.path().join("riskgate.toml"),
                "default_outcome = \"ALLOW\"\n[store]\ntimeout = \"2s\"\nconnect_timeout = \"2s\"\n",
            )
            .unwrap();
            dir
        };
        let (a, b) = (
            start_with(folder(), &["--store", &url]),
            start_with(folder(), &["--store", &url]),
        );
        let path = "/v1/users/ru/actions/withdraw-funds/rk";
        let tracked = a.track(
            "ru",
            "withdraw-funds",
            r#"{"idempotencyKey":"rk","custom":{"outcome":"challenge"}}"#,
        );
        assert_eq!(tracked.status, 200, "{}", tracked.body);
        let token = tracked.json()["token"].as_str().unwrap().to_owned();
        let got = b.api("GET", path, "");
        assert_eq!(got.status, 200, "{}", got.body);
        assert_eq!(got.json()["state"], "CHALLENGE_REQUIRED", "{}", got.body);
        assert_eq!(got.json()["rules"][0]["ruleId"], "outcome", "{}", got.body);
        let missing = b.api("GET", "/v1/users/ru/actions/withdraw-funds/nope", "");
        assert_eq!(missing.error(), (404, "action_not_found".into()));
        let pending = a.api("POST", "/v1/validate", &format!(r#"{{"token":"{token}"}}"#));
        assert_eq!(pending.json()["isValid"], false, "{}", pending.body);
        let updated = b.api("PATCH", path, r#"{"state":"CHALLENGE_SUCCEEDED"}"#);
        assert_eq!(updated.status, 200, "{}", updated.body);
        assert_eq!(updated.json()["state"], "CHALLENGE_SUCCEEDED");
        let got = a.api("GET", path, "");
        assert_eq!(got.json()["state"], "CHALLENGE_SUCCEEDED", "{}", got.body);
        let bad = a.api("PATCH", path, r#"{"state":"CHALLENGE_FAILED"}"#);
        assert_eq!(bad.error(), (409, "invalid_transition".into()));
        let valid = a.api("POST", "/v1/validate", &format!(r#"{{"token":"{token}"}}"#));
        assert_eq!(valid.json()["isValid"], true, "{}", valid.body);
        let again = b.api("POST", "/v1/validate", &format!(r#"{{"token":"{token}"}}"#));
        assert_eq!(again.json()["error"], "already_used", "{}", again.body);
        // The action lives in Redis, not in either process.
        let keys = crate::common::redis::command(redis.port, "DBSIZE").unwrap();
        assert_ne!(keys, ":0", "{keys}");
    }
}
