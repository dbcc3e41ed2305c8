//! Many engines, one Redis: single-flight across engines and processes, leases, exact counts and one view of
//! actions and tokens across instances, round trips and keys per call, faults (stopped, slow and restarted
//! servers), a 3-master cluster, and the async entry points. Every server is started here, on free loopback
//! ports (tests/common/redis.rs).
//!
//! Without feature `redis`, or without redis-server installed, this prints one line saying the suites were
//! skipped and how to run them.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

#[test]
fn redis_suites_run_or_say_how() {
    if !cfg!(feature = "redis") {
        common::redis::say(&format!(
            "redis suites skipped: riskgate was built without feature `redis`; to run them: {}",
            common::redis::HOW
        ));
    } else if !common::redis::available() {
        common::redis::say_skipped();
    }
}

#[cfg(feature = "redis")]
mod on_redis {
    use super::common;
    use super::common::redis::{command, Cluster, Server};
    use riskgate::{
        Engine, EngineBuilder, FakeClock, InvalidTokenReason, OnStoreError, RuleSet, State,
        StoreSettings, TrackError, TrackRequest,
    };
    use std::io::{BufRead, BufReader, Write};
    use std::process::{Command, Stdio};
    use std::sync::{Arc, Barrier};
    use std::time::{Duration, Instant};

    /// Rules reading every kind of history: velocity by user, IP and device, distinct counts, known devices
    /// and IPs, and `rba_score()`.
    const RULES: &[(&str, &str)] = &[
        ("fast", r#"if velocity("1h") >= 4 { BLOCK }"#),
        ("ip-busy", r#"if velocity_ip("1h") >= 6 { REVIEW }"#),
        ("dev-busy", r#"if velocity_device("1h") >= 5 { REVIEW }"#),
        (
            "shared-ip",
            r#"if distinct_users_on_ip("1h") >= 3 { REVIEW }"#,
        ),
        (
            "shared-dev",
            r#"if distinct_users_on_device("1h") >= 2 { REVIEW }"#,
        ),
        (
            "many-devs",
            r#"if distinct_devices("1h") >= 3 { CHALLENGE_REQUIRED }"#,
        ),
        (
            "new-dev",
            r#"if device_id != () && is_new_device() { CHALLENGE_REQUIRED }"#,
        ),
        (
            "new-ip",
            r#"//! mode: shadow
if ip_address != () && is_new_ip() { REVIEW }"#,
        ),
        (
            "odd",
            r#"//! mode: shadow
if rba_score() > 50.0 { REVIEW }"#,
        ),
    ];

    fn rules() -> RuleSet {
        common::ruleset(RULES, "")
    }

    fn engine_on(settings: StoreSettings, clock: &FakeClock) -> Engine {
        Engine::builder()
            .ruleset(rules())
            .clock(clock.clone())
            .store(settings)
            .build()
            .unwrap()
    }

    fn server() -> Option<Server> {
        Server::start()
    }

    /// Generous timeouts for a loaded machine; the fault tests set their own.
    fn patient(s: StoreSettings) -> StoreSettings {
        s.timeout(Duration::from_secs(2))
            .connect_timeout(Duration::from_secs(2))
    }

    #[test]
    fn concurrent_first_calls_on_different_engines_decide_once() {
        let Some(srv) = server() else { return };
        let settings = patient(srv.settings());
        let clock = common::clock();
        let engines: Vec<Engine> = (0..8)
            .map(|_| {
                Engine::builder()
                    .ruleset(common::ruleset(
                        &[(
                            "c",
                            "let i = 0; while i < 2000 { i += 1; } CHALLENGE_REQUIRED",
                        )],
                        "[limits]\nmax_operations = 1000000\ntime_limit = \"5s\"",
                    ))
                    .clock(clock.clone())
                    .store(settings.clone())
                    .build()
                    .unwrap()
            })
            .collect();
        for round in 0..5 {
            let barrier = Arc::new(Barrier::new(engines.len()));
            let key = format!("k{round}");
            let handles: Vec<_> = engines
                .iter()
                .map(|e| {
                    let (e, b, key) = (e.clone(), Arc::clone(&barrier), key.clone());
                    std::thread::spawn(move || {
                        b.wait();
                        e.track(&common::keyed(&key)).unwrap()
                    })
                })
                .collect();
            let answers: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
            assert!(
                answers.iter().all(|a| a == &answers[0]),
                "one answer, one token"
            );
            assert!(answers[0].token.is_some());
            assert_eq!(answers[0].store_error, None);
            let decided: u64 = engines.iter().map(Engine::decisions).sum();
            assert_eq!(decided, round + 1, "the rules ran once per identity");
        }
    }

    #[test]
    fn counts_known_items_tokens_and_updates_are_one_view_across_engines() {
        let Some(srv) = server() else { return };
        let clock = common::clock();
        let settings = patient(srv.settings());
        let (a, b) = (
            engine_on(settings.clone(), &clock),
            engine_on(settings, &clock),
        );
        let memory = Engine::builder()
            .ruleset(rules())
            .clock(clock.clone())
            .build()
            .unwrap();
        // Velocity, distinct and known counts are exact across instances: alternating engines answer as one
        // in-memory engine does.
        let mut n = 0;
        for user in ["u1", "u2", "u3"] {
            for i in 0..5 {
                n += 1;
                let r = common::req(user, "signIn")
                    .idempotency_key(format!("{user}-{i}"))
                    .ip(format!("203.0.113.{}", i % 2))
                    .device(format!("d{}", i % 3));
                clock.advance(Duration::from_secs(10));
                let on = if n % 2 == 0 { &a } else { &b };
                let got = on.track(&r).unwrap();
                let want = memory.track(&r).unwrap();
                assert_eq!(
                    (got.state, &got.rule_ids, &got.shadow_rule_ids),
                    (want.state, &want.rule_ids, &want.shadow_rule_ids),
                    "event {n}"
                );
            }
        }
        // A device made known on one engine is known on the other.
        let ok = common::req("v", "signIn")
            .idempotency_key("v1")
            .device("dv");
        let first = a.track(&ok).unwrap();
        assert_eq!(first.state, State::ChallengeRequired);
        let rec = b
            .update_action("v", "signIn", "v1", State::ChallengeSucceeded)
            .unwrap();
        assert_eq!(rec.state, State::ChallengeSucceeded);
        // The update is seen everywhere: get_action and repeats on the other engine.
        assert_eq!(
            a.get_action("v", "signIn", "v1").unwrap().state,
            State::ChallengeSucceeded
        );
        assert_eq!(a.track(&ok).unwrap().state, State::ChallengeSucceeded);
        let again = common::req("v", "signIn")
            .idempotency_key("v2")
            .device("dv");
        assert_eq!(a.track(&again).unwrap().rule_ids, Vec::<String>::new());
        // The token validates once, on any instance.
        let token = first.token.unwrap();
        assert!(b.validate_challenge(&token).is_valid);
        let used = a.validate_challenge(&token);
        assert_eq!(used.reason, Some(InvalidTokenReason::AlreadyUsed));
        assert_eq!(used.user_id.as_deref(), Some("v"));
        assert_eq!(
            b.validate_challenge("nope").reason,
            Some(InvalidTokenReason::UnknownToken)
        );
        // A conflicting repeat is refused on another engine too.
        let other = common::req("v", "signIn")
            .idempotency_key("v1")
            .device("else");
        assert!(matches!(
            b.track(&other),
            Err(TrackError::IdempotencyConflict { .. })
        ));
    }

    /// The JSON of a replay output line without what is random (tokens, urls, generated keys).
    fn stable(line: &str) -> serde_json::Value {
        let mut v: serde_json::Value = serde_json::from_str(line).unwrap();
        if let Some(o) = v.as_object_mut() {
            o.remove("token");
            o.remove("url");
        }
        v
    }

    fn event_log() -> Vec<String> {
        let mut lines = Vec::new();
        let mut t = 1_709_251_200_000i64;
        for i in 0..120 {
            t += 7_000;
            let user = format!("user{}", i % 7);
            let key = format!("k{}", i / 2); // every event is tracked twice: once new, once a repeat
            let attrs = serde_json::json!({
                "idempotencyKey": format!("{user}-{key}"),
                "ipAddress": format!("198.51.100.{}", i % 5),
                "deviceId": format!("dev{}", i % 4),
                "userAgent": "Mozilla/5.0 (X11; Linux x86_64) Firefox/120.0",
            });
            lines.push(
                serde_json::json!({"timestamp": t, "userId": user, "action": "signIn", "attributes": attrs})
                    .to_string(),
            );
            if i % 9 == 4 {
                lines.push(
                    serde_json::json!({"timestamp": t + 1, "op": "updateAction", "userId": user,
                        "action": "signIn", "idempotencyKey": format!("{user}-{key}"),
                        "state": "CHALLENGE_SUCCEEDED", "ifState": "CHALLENGE_REQUIRED"})
                    .to_string(),
                );
            }
        }
        lines
    }

    fn rules_dir(extra_config: &str) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for (id, src) in RULES {
            common::write(dir.path(), &format!("{id}.rhai"), src);
        }
        common::write(dir.path(), "riskgate.toml", extra_config);
        dir
    }

    /// A `riskgate replay` process reading from a pipe.
    struct Replay {
        child: std::process::Child,
        out: BufReader<std::process::ChildStdout>,
    }

    impl Replay {
        fn start(rules: &std::path::Path, store: &str) -> Replay {
            let mut child = Command::new(env!("CARGO_BIN_EXE_riskgate"))
                .args(["replay", "--rules"])
                .arg(rules)
                .args(["--store", store, "-"])
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()
                .unwrap();
            let out = BufReader::new(child.stdout.take().unwrap());
            Replay { child, out }
        }

        fn line(&mut self, line: &str) -> String {
            let stdin = self.child.stdin.as_mut().unwrap();
            writeln!(stdin, "{line}").unwrap();
            stdin.flush().unwrap();
            let mut out = String::new();
            self.out.read_line(&mut out).unwrap();
            out
        }
    }

    impl Drop for Replay {
        fn drop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }

    #[test]
    fn two_processes_replaying_interleaved_halves_equal_one_in_memory_engine() {
        let Some(srv) = server() else { return };
        let prefix = common::redis::fresh_prefix();
        let dir = rules_dir(&format!(
            "[store]\nkey_prefix = \"{prefix}\"\ntimeout = \"2s\"\nconnect_timeout = \"2s\"\n"
        ));
        let log = event_log();
        let whole = common::replay(dir.path(), &log.join("\n"));
        let (mut a, mut b) = (
            Replay::start(dir.path(), &srv.url()),
            Replay::start(dir.path(), &srv.url()),
        );
        for (i, line) in log.iter().enumerate() {
            let out = if i % 2 == 0 {
                a.line(line)
            } else {
                b.line(line)
            };
            let mut want = whole[i].clone();
            if let Some(o) = want.as_object_mut() {
                o.remove("token");
                o.remove("url");
            }
            assert_eq!(stable(&out), want, "line {}: {line}", i + 1);
        }
    }

    #[test]
    fn a_claimer_killed_mid_decision_holds_the_identity_only_until_its_lease_expires() {
        let Some(srv) = server() else { return };
        let prefix = common::redis::fresh_prefix();
        let dir = tempfile::tempdir().unwrap();
        common::write(
            dir.path(),
            "slow.rhai",
            "let i = 0; while i < 100000000 { i += 1; } BLOCK",
        );
        common::write(
            dir.path(),
            "riskgate.toml",
            &format!(
                "[limits]\nmax_operations = 1000000000\ntime_limit = \"60s\"\n[store]\nkey_prefix = \"{prefix}\"\nlease = \"1500ms\"\ntimeout = \"2s\"\n"
            ),
        );
        let line = r#"{"timestamp":1709251200000,"userId":"u1","action":"signIn","attributes":{"idempotencyKey":"k1"}}"#;
        let mut claimer = Command::new(env!("CARGO_BIN_EXE_riskgate"))
            .args(["replay", "--rules"])
            .arg(dir.path())
            .args(["--store", &srv.url(), "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        writeln!(claimer.stdin.as_mut().unwrap(), "{line}").unwrap();
        let settings = patient(srv.settings())
            .key_prefix(prefix)
            .lease(Duration::from_millis(1500));
        let clock = FakeClock::at(std::time::UNIX_EPOCH + Duration::from_millis(1_709_251_200_000));
        let e = Engine::builder()
            .ruleset(common::ruleset(&[("fast", "REVIEW")], ""))
            .clock(clock)
            .store(settings)
            .build()
            .unwrap();
        // Wait until the claim is in Redis, then kill its process mid-decision.
        let deadline = Instant::now() + Duration::from_secs(20);
        while e.stored_actions() == 0 {
            assert!(Instant::now() < deadline, "the claimer never claimed");
            std::thread::sleep(Duration::from_millis(5));
        }
        claimer.kill().unwrap();
        claimer.wait().unwrap();
        let killed = Instant::now();
        let r = common::req("u1", "signIn").idempotency_key("k1");
        let got = e.track(&r).unwrap();
        let waited = killed.elapsed();
        assert_eq!(got.store_error, None);
        assert_eq!(
            got.state,
            State::Review,
            "decided here, once the lease ran out"
        );
        assert_eq!(e.decisions(), 1);
        assert!(waited < Duration::from_millis(1500 + 1000), "{waited:?}");
        // Decided for good: a repeat is the stored action, everywhere.
        assert_eq!(e.track(&r).unwrap().state, State::Review);
        assert_eq!(e.decisions(), 1);
    }

    /// A decision that outlasts its lease is not stored: the identity goes to the next claimer, whose decision
    /// every caller gets. Off-cluster its history is not written either (one script commits the decision and
    /// every write, only while the lease holds); on a cluster the IP's and device's writes are scripts of their
    /// own, so there the slow decision's IP action still counts.
    #[test]
    fn a_decision_outlasting_its_lease_is_not_stored_and_off_cluster_writes_no_history() {
        let Some(srv) = server() else { return };
        let prefix = common::redis::fresh_prefix();
        let settings = patient(srv.settings())
            .key_prefix(prefix)
            .lease(Duration::from_millis(200));
        let t0 = std::time::UNIX_EPOCH + Duration::from_millis(1_709_251_200_000);
        // The slow engine's rule runs into its 1 s time limit: its decision is ready long after the lease.
        let slow = Engine::builder()
            .ruleset(common::ruleset(
                &[
                    ("spin", "let i = 0; while true { i += 1; } BLOCK"),
                    ("ip", r#"if velocity_ip("1h") > 100 { BLOCK }"#),
                ],
                "[limits]\nmax_operations = 1000000000\ntime_limit = \"1s\"\n",
            ))
            .clock(FakeClock::at(t0))
            .store(settings.clone())
            .build()
            .unwrap();
        let quick = Engine::builder()
            .ruleset(common::ruleset(
                &[
                    ("mark", r#"if user_id == "u1" { REVIEW }"#),
                    ("ip", r#"if velocity_ip("1h") >= 2 { BLOCK }"#),
                ],
                "",
            ))
            .clock(FakeClock::at(t0 + Duration::from_millis(10)))
            .store(settings)
            .build()
            .unwrap();
        let r = common::req("u1", "signIn")
            .idempotency_key("k1")
            .ip("192.0.2.7");
        std::thread::scope(|s| {
            let slow_call = s.spawn(|| slow.track(&r).unwrap());
            let deadline = Instant::now() + Duration::from_secs(10);
            while quick.stored_actions() == 0 {
                assert!(Instant::now() < deadline, "the slow engine never claimed");
                std::thread::sleep(Duration::from_millis(2));
            }
            // Waits for the slow engine's lease to run out, then decides the identity itself.
            let mine = quick.track(&r).unwrap();
            assert_eq!(mine.store_error, None);
            assert_eq!(mine.state, State::Review);
            let theirs = slow_call.join().unwrap();
            assert_eq!(theirs.store_error, None);
            assert_eq!(
                theirs.state,
                State::Review,
                "the stored decision, not the late one"
            );
        });
        assert_eq!(quick.decisions(), 1);
        // Another action from the IP: the quick engine's decision counts; the late one's did not write.
        let next = common::req("u2", "signIn")
            .idempotency_key("k2")
            .ip("192.0.2.7");
        assert_eq!(quick.track(&next).unwrap().state, State::Allow);
    }

    #[test]
    fn round_trips_per_call() {
        let Some(srv) = server() else { return };
        let clock = common::clock();
        let e = engine_on(patient(srv.settings()), &clock);
        let rt = |f: &dyn Fn()| {
            let before = e.store_round_trips();
            f();
            e.store_round_trips() - before
        };
        let r = common::req("u", "signIn")
            .idempotency_key("k")
            .ip("192.0.2.1")
            .device("d1");
        let first = rt(&|| assert_eq!(e.track(&r).unwrap().state, State::ChallengeRequired));
        let repeat = rt(&|| assert_eq!(e.track(&r).unwrap().state, State::ChallengeRequired));
        let unkeyed = rt(&|| {
            e.track(&common::req("u", "signIn").ip("192.0.2.1"))
                .unwrap();
        });
        let get = rt(&|| assert!(e.get_action("u", "signIn", "k").is_some()));
        let token = e.track(&r).unwrap().token.unwrap();
        let update = rt(&|| {
            e.update_action("u", "signIn", "k", State::ChallengeSucceeded)
                .unwrap();
        });
        let validate = rt(&|| assert!(e.validate_challenge(&token).is_valid));
        eprintln!(
            "round trips: first {first}, repeat {repeat}, unkeyed {unkeyed}, get {get}, update to succeeded {update}, validate {validate}"
        );
        assert_eq!((first, repeat, unkeyed, get), (2, 1, 2, 1));
        assert_eq!((update, validate), (2, 2));
    }

    /// How many times the server ran `cmd` (lowercase), from `INFO commandstats`.
    fn calls(port: u16, cmd: &str) -> u64 {
        let out = Command::new("redis-cli")
            .args(["-p", &port.to_string(), "INFO", "commandstats"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .find_map(|l| l.strip_prefix(&format!("cmdstat_{cmd}:calls=")))
            .and_then(|v| v.split(',').next()?.parse().ok())
            .unwrap_or(0)
    }

    #[test]
    fn a_repeat_on_the_deciding_engine_is_one_get_of_what_redis_holds_now() {
        let Some(srv) = server() else { return };
        let clock = common::clock();
        let settings = patient(srv.settings());
        let a = engine_on(settings.clone(), &clock);
        let b = engine_on(settings, &clock);
        // A call's answer, its round trips and the scripts the server ran for it.
        let call = |e: &Engine, r: &TrackRequest| {
            let (trips, scripts) = (e.store_round_trips(), calls(srv.port, "evalsha"));
            let got = e.track(r);
            (
                got,
                e.store_round_trips() - trips,
                calls(srv.port, "evalsha") - scripts,
            )
        };
        let r = common::req("u", "signIn")
            .idempotency_key("k")
            .ip("192.0.2.1")
            .device("d1");
        let (first, trips, _) = call(&a, &r);
        let first = first.unwrap();
        assert_eq!((first.state, trips), (State::ChallengeRequired, 2));
        // The deciding engine's repeat: one GET, no script.
        let (again, trips, scripts) = call(&a, &r);
        assert_eq!((again.unwrap(), trips, scripts), (first.clone(), 1, 0));
        // Another engine's first repeat is its claim script (one round trip); its next is a GET too.
        let (again, trips, scripts) = call(&b, &r);
        assert_eq!((again.unwrap(), trips, scripts), (first.clone(), 1, 1));
        let (_, trips, scripts) = call(&b, &r);
        assert_eq!((trips, scripts), (1, 0));
        // What the GET answers is what Redis holds now: a state another engine moved it to.
        b.update_action("u", "signIn", "k", State::ChallengeSucceeded)
            .unwrap();
        let (again, trips, scripts) = call(&a, &r);
        assert_eq!(
            (again.unwrap().state, trips, scripts),
            (State::ChallengeSucceeded, 1, 0)
        );
        // Other attributes under the same key are a conflict, found by the GET.
        let (other, trips, scripts) = call(&a, &r.clone().device("d2"));
        assert!(
            matches!(other, Err(TrackError::IdempotencyConflict { .. })),
            "{other:?}"
        );
        assert_eq!((trips, scripts), (1, 0));
        // An action Redis lost (deleted here, as a flush or an eviction would) is decided again: the GET finds
        // nothing and the claim follows, one round trip more than a first decision.
        let gone = command(
            srv.port,
            "EVAL \"for _, k in ipairs(redis.call('KEYS', '*:a:*')) do redis.call('DEL', k) end return 1\" 0",
        )
        .unwrap();
        assert_eq!(gone, ":1");
        let decided = a.decisions();
        let (again, trips, _) = call(&a, &r);
        let again = again.unwrap();
        assert_eq!(trips, 3);
        assert_eq!(a.decisions(), decided + 1, "decided again");
        assert_ne!(again.token, first.token);
        // Past its TTL by event time, no engine asks: the identity's next call is a first decision.
        clock.advance(Duration::from_secs(24 * 3600));
        let (_, trips, _) = call(&a, &r);
        assert_eq!(trips, 2);
        assert_eq!(a.decisions(), decided + 2);
    }

    /// The integer a `GET` of `key` reads (0 when the key is missing).
    fn get_int(port: u16, key: &str) -> i64 {
        let reply = command(port, &format!("GET {key}")).unwrap();
        reply
            .lines()
            .last()
            .and_then(|l| l.parse().ok())
            .unwrap_or(0)
    }

    #[test]
    fn a_store_of_another_fingerprint_scheme_or_format_is_refused() {
        let Some(srv) = server() else { return };
        let clock = common::clock();
        let build = |prefix: &str| {
            Engine::builder()
                .ruleset(rules())
                .clock(clock.clone())
                .store(patient(srv.settings().key_prefix(prefix)))
                .build()
        };
        // The first engine records its scheme beside the keys; a second one agrees with it.
        let first = build("scheme").unwrap();
        first
            .track(&common::req("u1", "signIn").idempotency_key("k"))
            .unwrap();
        assert!(build("scheme").is_ok());
        let recorded = command(srv.port, "GET scheme:{g}:keys").unwrap();
        let value = recorded.lines().last().unwrap().to_owned();
        let (keys, scheme) = value.split_once(" fp").unwrap();
        assert_eq!((keys.len(), scheme), (48, "3 store2"), "{value}");
        // A store an earlier riskgate made (its keys, no scheme), and one another scheme made: refused at
        // build, naming the way out, and left as they were.
        assert_eq!(
            command(srv.port, &format!("SET scheme:{{g}}:keys {keys}")).unwrap(),
            "+OK"
        );
        let Err(e) = build("scheme") else {
            panic!("a store with no scheme was taken")
        };
        let msg = e.to_string();
        assert!(
            msg.contains("no scheme recorded") && msg.contains("key_prefix"),
            "{msg}"
        );
        let left = command(srv.port, "GET scheme:{g}:keys").unwrap();
        assert_eq!(left.lines().last(), Some(keys), "{left}");
        assert_eq!(
            command(srv.port, &format!("SET scheme:{{g}}:keys \"{keys} fp2\"")).unwrap(),
            "+OK"
        );
        let Err(e) = build("scheme") else {
            panic!("a store of another scheme was taken")
        };
        assert!(e.to_string().contains("scheme 2"), "{e}");
        // One of this scheme whose actions are in another format (an earlier riskgate's hashes, or a later
        // format): refused too, and left as it was.
        for (value, says) in [
            (format!("{keys} fp3"), "actions as hashes"),
            (format!("{keys} fp3 store9"), "store format 9"),
        ] {
            assert_eq!(
                command(srv.port, &format!("SET scheme:{{g}}:keys \"{value}\"")).unwrap(),
                "+OK"
            );
            let Err(e) = build("scheme") else {
                panic!("a store of another format was taken: {value}")
            };
            assert!(
                e.to_string().contains(says) && e.to_string().contains("key_prefix"),
                "{e}"
            );
            let left = command(srv.port, "GET scheme:{g}:keys").unwrap();
            assert_eq!(left.lines().last(), Some(value.as_str()), "{left}");
        }
        // A fresh prefix on the same server is fine.
        assert!(build("scheme-fresh").is_ok());
    }

    #[test]
    fn thread_callers_count_exactly_once_across_a_script_flush() {
        let Some(srv) = server() else { return };
        let clock = common::clock();
        let e = engine_on(patient(srv.settings().key_prefix("flush")), &clock);
        let memory = Engine::builder()
            .ruleset(rules())
            .clock(clock.clone())
            .build()
            .unwrap();
        // Allowed actions, which teach `rba_score()` their IPs.
        let event = |i: usize| {
            common::req(&format!("fu{i}"), "signIn")
                .idempotency_key("k")
                .ip(format!("198.18.2.{i}"))
        };
        let decide = |i: usize| {
            clock.advance(Duration::from_secs(5));
            let got = e.track(&event(i)).unwrap();
            let want = memory.track(&event(i)).unwrap();
            assert_eq!(got.store_error, None, "event {i}");
            assert_eq!(
                (got.state, &got.rule_ids, &got.shadow_rule_ids),
                (want.state, &want.rule_ids, &want.shadow_rule_ids),
                "event {i}"
            );
        };
        // `rba_score()`'s population total: a plain `INCR` in the commit's pipeline, one per decision.
        let total = || get_int(srv.port, "flush:{g}:rn");
        for i in 0..3 {
            decide(i);
        }
        assert_eq!(total(), 3);
        for i in 3..6 {
            assert!(command(srv.port, "SCRIPT FLUSH").unwrap().contains("OK"));
            let before = e.store_round_trips();
            decide(i);
            // Each of the two round trips meets `NOSCRIPT` once: its scripts are sent again, nothing else.
            assert_eq!(e.store_round_trips() - before, 4, "event {i}");
            assert_eq!(total(), i as i64 + 1, "event {i}: counted more than once");
        }
        // The history the scripts wrote is counted once too: the next decisions equal memory's.
        for i in 6..10 {
            decide(i);
        }
        assert_eq!(total(), 10);
    }

    fn info_field(port: u16, section: &str, field: &str) -> i64 {
        let out = Command::new("redis-cli")
            .args(["-p", &port.to_string(), "INFO", section])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{field}:")))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    }

    fn dbsize(port: u16) -> i64 {
        command(port, "DBSIZE")
            .and_then(|r| r.trim_start_matches(':').parse().ok())
            .unwrap_or(0)
    }

    #[test]
    fn keys_and_bytes_per_action_are_bounded() {
        let Some(srv) = server() else { return };
        let clock = common::clock();
        let e = engine_on(patient(srv.settings()), &clock);
        let (keys0, bytes0) = (
            dbsize(srv.port),
            info_field(srv.port, "memory", "used_memory"),
        );
        const USERS: usize = 200;
        const PER_USER: usize = 5;
        for u in 0..USERS {
            for i in 0..PER_USER {
                clock.advance(Duration::from_millis(10));
                let r = common::req(&format!("user{u}"), "signIn")
                    .idempotency_key(format!("k{i}"))
                    .ip(format!("10.0.{}.{}", u % 50, i))
                    .device(format!("dev{u}"));
                e.track(&r).unwrap();
            }
        }
        let actions = (USERS * PER_USER) as i64;
        let keys = dbsize(srv.port) - keys0;
        let bytes = info_field(srv.port, "memory", "used_memory") - bytes0;
        eprintln!(
            "{actions} actions of {USERS} users: {keys} keys ({:.2} per action), {bytes} bytes ({} per action)",
            keys as f64 / actions as f64,
            bytes / actions
        );
        // Each action is one string; its user, IPs and device share their series, sets and known lists.
        assert!(keys <= actions + 6 * USERS as i64 + 4 * 250 + 16, "{keys}");
        assert!(bytes / actions < 4096, "{bytes}");
    }

    #[test]
    fn a_stopped_server_never_hangs_a_caller_and_service_recovers() {
        let Some(mut srv) = server() else { return };
        let clock = common::clock();
        let fast = srv
            .settings()
            .timeout(Duration::from_millis(50))
            .connect_timeout(Duration::from_millis(50));
        let outcome = engine_on(fast.clone(), &clock);
        let erroring = engine_on(fast.on_store_error(OnStoreError::Error), &clock);
        let r = common::req("u", "signIn").idempotency_key("k");
        assert_eq!(outcome.track(&r).unwrap().store_error, None);
        srv.stop();
        for _ in 0..3 {
            let t = Instant::now();
            let down = outcome
                .track(&common::req("u", "signIn").idempotency_key("k2"))
                .unwrap();
            assert!(
                t.elapsed() < Duration::from_millis(500),
                "{:?}",
                t.elapsed()
            );
            assert_eq!(
                down.state,
                State::ChallengeRequired,
                "`on_store_error`'s outcome"
            );
            assert!(down.store_error.as_deref().unwrap().contains("redis"));
            assert!(down.token.is_none());
            let t = Instant::now();
            let err = erroring.track(&r).unwrap_err();
            assert!(t.elapsed() < Duration::from_millis(500));
            assert_eq!((err.code(), err.http_status()), ("store_unavailable", 503));
            assert_eq!(
                outcome.validate_challenge("t").reason,
                Some(InvalidTokenReason::StoreUnavailable)
            );
            assert_eq!(
                outcome
                    .update_action("u", "signIn", "k", State::ChallengeSucceeded)
                    .unwrap_err()
                    .code(),
                "store_unavailable"
            );
            assert_eq!(outcome.get_action("u", "signIn", "k"), None);
        }
        srv.restart();
        // The server came back empty (no persistence): the engine reconnects by itself.
        let back = outcome
            .track(&common::req("u", "signIn").idempotency_key("k3"))
            .unwrap();
        assert_eq!(back.store_error, None);
        assert!(outcome.get_action("u", "signIn", "k3").is_some());
    }

    #[test]
    fn a_slow_server_times_out_each_call() {
        let Some(srv) = Server::start_with(&["--enable-debug-command yes"]) else {
            return;
        };
        let clock = common::clock();
        let e = engine_on(
            srv.settings()
                .timeout(Duration::from_millis(50))
                .connect_timeout(Duration::from_millis(50)),
            &clock,
        );
        e.track(&common::keyed("warm")).unwrap();
        let port = srv.port;
        let sleeper = std::thread::spawn(move || command(port, "DEBUG SLEEP 1"));
        std::thread::sleep(Duration::from_millis(100));
        let t = Instant::now();
        let slow = e.track(&common::keyed("slow")).unwrap();
        assert!(
            t.elapsed() < Duration::from_millis(400),
            "{:?}",
            t.elapsed()
        );
        assert!(
            slow.store_error.as_deref().unwrap().contains("timed out"),
            "{slow:?}"
        );
        sleeper.join().unwrap();
        assert_eq!(e.track(&common::keyed("after")).unwrap().store_error, None);
    }

    #[test]
    fn no_completed_action_is_lost_when_an_aof_server_is_killed_under_load() {
        let Some(mut srv) = Server::start_with(&["--appendonly yes", "--appendfsync always"])
        else {
            return;
        };
        let clock = common::clock();
        let settings = srv
            .settings()
            .timeout(Duration::from_millis(200))
            .connect_timeout(Duration::from_millis(100));
        let e = engine_on(settings, &clock);
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let workers: Vec<_> = (0..4)
            .map(|w| {
                let (e, stop) = (e.clone(), Arc::clone(&stop));
                std::thread::spawn(move || {
                    let mut done = Vec::new();
                    let mut failed = 0;
                    let mut i = 0;
                    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                        i += 1;
                        let key = format!("w{w}-{i}");
                        match e.track(&common::req(&format!("u{w}"), "pay").idempotency_key(&key)) {
                            Ok(r) if r.store_error.is_none() => {
                                done.push((format!("u{w}"), key, r.state))
                            }
                            _ => failed += 1,
                        }
                    }
                    (done, failed)
                })
            })
            .collect();
        std::thread::sleep(Duration::from_millis(400));
        srv.kill_hard();
        std::thread::sleep(Duration::from_millis(200));
        srv.relaunch();
        std::thread::sleep(Duration::from_millis(400));
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let mut completed = 0;
        let mut failed_total = 0;
        for w in workers {
            let (done, failed) = w.join().unwrap();
            failed_total += failed;
            for (user, key, state) in done {
                completed += 1;
                let rec = e.get_action(&user, "pay", &key);
                assert_eq!(rec.map(|r| r.state), Some(state), "{user} {key} was lost");
            }
        }
        eprintln!("{completed} completed actions kept across the kill; {failed_total} calls failed while it was down");
        assert!(completed > 0 && failed_total > 0);
    }

    #[test]
    fn a_three_master_cluster_keeps_one_view() {
        let Some(cluster) = Cluster::start() else {
            return;
        };
        let clock = common::clock();
        let settings = patient(cluster.settings());
        let (a, b) = (
            engine_on(settings.clone(), &clock),
            engine_on(settings, &clock),
        );
        let memory = Engine::builder()
            .ruleset(rules())
            .clock(clock.clone())
            .build()
            .unwrap();
        for i in 0..24 {
            let user = format!("cu{}", i % 4);
            let r = common::req(&user, "signIn")
                .idempotency_key(format!("k{i}"))
                .ip(format!("198.18.0.{}", i % 3))
                .device(format!("cd{}", i % 5));
            clock.advance(Duration::from_secs(5));
            let got = if i % 2 == 0 { &a } else { &b }.track(&r).unwrap();
            let want = memory.track(&r).unwrap();
            assert_eq!(
                (got.state, &got.rule_ids),
                (want.state, &want.rule_ids),
                "event {i}"
            );
            assert_eq!(got.store_error, None);
            // A repeat on the other engine is the same action.
            let again = if i % 2 == 0 { &b } else { &a }.track(&r).unwrap();
            assert_eq!(again, got);
        }
        let before = a.store_round_trips();
        let c = a
            .track(
                &common::req("cz", "signIn")
                    .idempotency_key("z")
                    .device("new"),
            )
            .unwrap();
        assert_eq!(a.store_round_trips() - before, 2);
        let token = c.token.unwrap();
        b.update_action("cz", "signIn", "z", State::ChallengeSucceeded)
            .unwrap();
        assert!(a.validate_challenge(&token).is_valid);
        assert_eq!(
            b.validate_challenge(&token).reason,
            Some(InvalidTokenReason::AlreadyUsed)
        );
        assert_eq!(a.stored_actions(), 25);
    }

    #[test]
    fn the_async_entry_points_run_under_tokio() {
        let Some(srv) = server() else { return };
        let e = Engine::builder()
            .ruleset(common::ruleset(&[("c", "CHALLENGE_REQUIRED")], ""))
            .clock(common::clock())
            .store(patient(srv.settings()))
            .build()
            .unwrap();
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let mut tasks = Vec::new();
            for i in 0..32 {
                let e = e.clone();
                tasks.push(tokio::spawn(async move {
                    let same = common::req("a", "signIn").idempotency_key("same");
                    let own = common::req("a", "signIn").idempotency_key(format!("own{i}"));
                    let x = e.track_async(&same).await.unwrap();
                    let y = e.track_async(&own).await.unwrap();
                    (x, y)
                }));
            }
            let mut firsts = Vec::new();
            for t in tasks {
                let (x, y) = t.await.unwrap();
                assert_eq!(y.store_error, None);
                firsts.push(x);
            }
            assert!(firsts.iter().all(|x| x == &firsts[0]));
            assert_eq!(e.decisions(), 33);
            let token = firsts[0].token.clone().unwrap();
            let rec = e
                .update_action_async("a", "signIn", "same", State::ChallengeSucceeded)
                .await
                .unwrap();
            assert_eq!(rec.state, State::ChallengeSucceeded);
            let got = e.get_action_async("a", "signIn", "same").await.unwrap();
            assert_eq!(got.state, State::ChallengeSucceeded);
            assert!(e.validate_challenge_async(&token).await.is_valid);
        });
    }

    /// Async callers' rules on IP and user velocity, from `k0`, `k1`, … of one user on one IP.
    async fn async_sequence(e: &Engine, from: usize, to: usize) -> Vec<State> {
        let mut states = Vec::new();
        for i in from..to {
            let r = common::req("au", "signIn")
                .idempotency_key(format!("k{i}"))
                .ip("198.18.1.1");
            let resp = e.track_async(&r).await.unwrap();
            assert_eq!(resp.store_error, None);
            states.push(resp.state);
        }
        states
    }

    fn async_engine(settings: StoreSettings) -> Engine {
        Engine::builder()
            .ruleset(common::ruleset(
                &[
                    ("u", r#"if velocity("1h") >= 3 { BLOCK }"#),
                    ("ip", r#"if velocity_ip("10m") >= 2 { REVIEW }"#),
                ],
                "",
            ))
            .clock(common::clock())
            .store(settings)
            .build()
            .unwrap()
    }

    fn tokio() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap()
    }

    #[test]
    fn async_callers_count_exactly_across_a_script_flush_and_recover_after_a_restart() {
        let Some(mut srv) = server() else { return };
        let e = async_engine(
            srv.settings()
                .timeout(Duration::from_millis(200))
                .connect_timeout(Duration::from_millis(200)),
        );
        tokio().block_on(async {
            assert_eq!(async_sequence(&e, 0, 2).await, [State::Allow, State::Allow]);
            assert!(command(srv.port, "SCRIPT FLUSH").unwrap().contains("OK"));
            let before = e.store_round_trips();
            // The commit after the flush meets `NOSCRIPT`: its scripts are sent again, once.
            assert_eq!(
                async_sequence(&e, 2, 4).await,
                [State::Review, State::Block]
            );
            assert!(
                e.store_round_trips() - before <= 4 + 2,
                "{}",
                e.store_round_trips() - before
            );
            srv.restart();
            // The shared connection died with the server: the first calls fail fast, then one reconnects.
            let t = Instant::now();
            loop {
                let r = common::req("other", "signIn")
                    .idempotency_key(format!("r{}", t.elapsed().as_nanos()));
                let resp = e.track_async(&r).await.unwrap();
                if resp.store_error.is_none() {
                    break;
                }
                assert!(t.elapsed() < Duration::from_secs(10), "no recovery");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            // The restarted server kept nothing (no persistence): the user starts again.
            assert_eq!(
                async_sequence(&e, 10, 12).await,
                [State::Allow, State::Allow]
            );
        });
    }

    #[test]
    fn async_callers_on_a_cluster_share_one_view_with_thread_callers() {
        let Some(cluster) = Cluster::start() else {
            return;
        };
        let e = async_engine(patient(cluster.settings()));
        let states = tokio().block_on(async_sequence(&e, 0, 3));
        assert_eq!(states, [State::Allow, State::Allow, State::Review]);
        // A thread caller on the same engine repeats an async caller's decision and counts after it.
        let again = e
            .track(
                &common::req("au", "signIn")
                    .idempotency_key("k1")
                    .ip("198.18.1.1"),
            )
            .unwrap();
        assert_eq!(again.state, State::Allow);
        let next = e
            .track(
                &common::req("au", "signIn")
                    .idempotency_key("k3")
                    .ip("198.18.1.1"),
            )
            .unwrap();
        assert_eq!(next.state, State::Block);
        assert_eq!(e.decisions(), 4);
    }

    #[test]
    fn store_settings_come_from_riskgate_toml_and_are_checked() {
        let Some(srv) = server() else { return };
        let toml = format!(
            "[store]\nbackend = \"redis\"\nurl = \"{}\"\nkey_prefix = \"{}\"\ntimeout = \"30ms\"\non_store_error = \"BLOCK\"\n",
            srv.url(),
            common::redis::fresh_prefix()
        );
        let e = Engine::builder()
            .ruleset(common::ruleset(&[("r", "ALLOW")], &toml))
            .build()
            .unwrap();
        assert_eq!(e.store_settings().timeout, Duration::from_millis(30));
        assert_eq!(
            e.store_settings().on_store_error,
            OnStoreError::Outcome(State::Block)
        );
        assert_eq!(e.store_round_trips(), 2, "the shared keys, the scripts");
        e.track(&common::keyed("k")).unwrap();
        assert_eq!(e.store_round_trips(), 4, "claim, commit");
        let bad = RuleSet::builder()
            .config_toml("[store]\nbackend = \"redis\"\nurl = \"http://x\"\n")
            .rule("r", "ALLOW")
            .build()
            .unwrap_err();
        assert!(bad.to_string().contains("`[store] url`"), "{bad}");
        let bad = RuleSet::builder()
            .config_toml("[store]\non_store_error = \"MAYBE\"\n")
            .rule("r", "ALLOW")
            .build()
            .unwrap_err();
        assert!(bad.to_string().contains("on_store_error"), "{bad}");
        let unreachable: EngineBuilder = Engine::builder()
            .ruleset(common::ruleset(&[("r", "ALLOW")], ""))
            .store(
                StoreSettings::redis("redis://127.0.0.1:1")
                    .connect_timeout(Duration::from_millis(50)),
            );
        let err = unreachable.build().unwrap_err();
        assert!(
            err.to_string()
                .starts_with("the state store: redis unreachable"),
            "{err}"
        );
    }
}
