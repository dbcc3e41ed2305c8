//! Loading rulesets: ids from paths, metadata, and load errors that say file:line:column.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use riskgate::{LoadError, Mode, RuleSet};
use std::fs;
use std::path::Path;

fn write(dir: &Path, rel: &str, text: &str) {
    let p = dir.join(rel);
    fs::create_dir_all(p.parent().unwrap()).unwrap();
    fs::write(p, text).unwrap();
}

fn messages(e: &LoadError) -> Vec<String> {
    e.diagnostics().iter().map(|d| d.to_string()).collect()
}

#[test]
fn rule_ids_come_from_paths_and_lists_and_hidden_files_are_skipped() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    write(d, "top.rhai", "ALLOW");
    write(d, "withdraw/new-device.rhai", "//! priority: 10\n//! actions: withdraw-funds\n//! mode: shadow\n//! description: d\nBLOCK");
    write(d, "a/b/c/deep.rhai", "()");
    write(d, "lists/not-a-rule.rhai", "this is not rhai at all (");
    write(d, ".hidden/skip.rhai", "nor is this (");
    write(d, "notes.txt", "not a rule");
    let set = RuleSet::from_dir(d).unwrap();
    let ids: Vec<String> = set.rules().map(|r| r.id.to_string()).collect();
    assert_eq!(ids, ["a/b/c/deep", "top", "withdraw/new-device"]);
    let r = set.rules().find(|r| r.id == "withdraw/new-device").unwrap();
    assert_eq!(r.priority, 10);
    assert_eq!(r.actions, Some(vec!["withdraw-funds".to_owned()]));
    assert_eq!(r.mode, Mode::Shadow);
    assert_eq!(r.description.as_deref(), Some("d"));
    let top = set.rules().find(|r| r.id == "top").unwrap();
    assert_eq!(
        (top.priority, top.mode, top.actions.clone()),
        (50, Mode::Enforce, None)
    );
}

#[test]
fn a_syntax_error_names_file_line_and_column() {
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "withdraw/new-device.rhai",
        "//! priority: 10\n\nif device_id == () {\n    BLOCK\n",
    );
    let e = RuleSet::from_dir(dir.path()).unwrap_err();
    let d = &e.diagnostics()[0];
    assert!(d.file.ends_with("withdraw/new-device.rhai"), "{}", d.file);
    assert_eq!(d.line, 5, "{e}");
    assert!(d.column >= 1, "{e}");
    assert!(e.to_string().contains("withdraw/new-device.rhai:5:"), "{e}");
}

#[test]
fn an_unknown_variable_is_a_load_error() {
    let e = RuleSet::from_sources([("typo", "if ip_adress == () { BLOCK }")]).unwrap_err();
    let msgs = messages(&e);
    assert_eq!(msgs.len(), 1);
    assert!(msgs[0].starts_with("typo:1:4:"), "{msgs:?}");
    assert!(msgs[0].contains("ip_adress"), "{msgs:?}");
}

#[test]
fn bad_metadata_is_a_load_error_with_position() {
    let e = RuleSet::from_sources([
        ("a", "//! priority: 100\nALLOW"),
        ("b", "//! colour: red\nALLOW"),
        ("c", "//! mode: loud\nALLOW"),
        ("d", "//! actions: sign in\nALLOW"),
    ])
    .unwrap_err();
    let msgs = messages(&e);
    assert_eq!(msgs.len(), 4, "every problem is reported: {msgs:?}");
    assert!(
        msgs[0].starts_with("a:1:15: invalid priority `100`"),
        "{msgs:?}"
    );
    assert!(
        msgs[1].starts_with("b:1:5: unknown metadata key `colour`"),
        "{msgs:?}"
    );
    assert!(
        msgs[2].starts_with("c:1:11: invalid mode `loud`"),
        "{msgs:?}"
    );
    assert!(
        msgs[3].starts_with("d:1:14: invalid action code `sign in`"),
        "{msgs:?}"
    );
}

#[test]
fn every_broken_file_is_reported_at_once() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "one.rhai", "BLOCK +");
    write(dir.path(), "two.rhai", "//! priority: x\nBLOCK");
    write(dir.path(), "fine.rhai", "BLOCK");
    write(dir.path(), "riskgate.toml", "default_outcome = \"NOPE\"\n");
    let e = RuleSet::from_dir(dir.path()).unwrap_err();
    let files: Vec<&str> = e
        .diagnostics()
        .iter()
        .map(|d| d.file.rsplit('/').next().unwrap())
        .collect();
    assert_eq!(files, ["riskgate.toml", "one.rhai", "two.rhai"], "{e}");
}

#[test]
fn config_errors_name_the_line() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "r.rhai", "ALLOW");
    write(
        dir.path(),
        "riskgate.toml",
        "default_outcome = \"ALLOW\"\n\n[limits]\nmax_operatons = 5\n",
    );
    let e = RuleSet::from_dir(dir.path()).unwrap_err();
    let m = messages(&e);
    assert!(
        m[0].contains("riskgate.toml:4:1:") && m[0].contains("max_operatons"),
        "{m:?}"
    );
}

#[test]
fn import_and_eval_are_not_available() {
    let e = RuleSet::from_sources([("imp", "import \"os\" as os;\nALLOW")]).unwrap_err();
    assert!(e.to_string().starts_with("imp:1:"), "{e}");
    let e = RuleSet::from_sources([("ev", "eval(\"BLOCK\")")]).unwrap_err();
    assert!(e.to_string().contains("eval"), "{e}");
}

#[test]
fn rule_ids_given_in_code_are_checked() {
    for bad in ["", "a//b", "../x", "/abs"] {
        assert!(RuleSet::from_sources([(bad, "ALLOW")]).is_err(), "{bad:?}");
    }
    let e = RuleSet::from_sources([("same", "ALLOW"), ("same", "BLOCK")]).unwrap_err();
    assert!(e.to_string().contains("twice"), "{e}");
}

#[test]
fn a_missing_folder_is_an_io_error() {
    let e = RuleSet::from_dir("/nonexistent/riskgate-rules").unwrap_err();
    assert!(matches!(e, LoadError::Io { .. }), "{e:?}");
    assert!(e.to_string().contains("/nonexistent/riskgate-rules"), "{e}");
}

#[test]
fn the_bundled_ruleset_loads() {
    let set = RuleSet::from_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/rules")).unwrap();
    assert!(set.len() >= 5, "{set:?}");
}

#[test]
fn an_unknown_function_is_a_load_error_with_a_suggestion() {
    let e = RuleSet::from_sources([(
        "typo",
        "//! priority: 5\nif is_new_devise() { CHALLENGE_REQUIRED }",
    )])
    .unwrap_err();
    let m = messages(&e);
    assert_eq!(m.len(), 1, "{m:?}");
    assert!(
        m[0].starts_with(
            "typo:2:4: unknown function `is_new_devise`: did you mean `is_new_device`?"
        ),
        "{m:?}"
    );
    let e = RuleSet::from_sources([("arity", "if velocity() > 3 { BLOCK }")]).unwrap_err();
    assert!(
        e.to_string()
            .ends_with("arity:1:4: `velocity` takes one argument, a window like \"10m\" or \"1h\""),
        "{e}"
    );
    let e =
        RuleSet::from_sources([("nothing-like-it", "if qqqqqqqqqqqq() { BLOCK }")]).unwrap_err();
    assert!(
        e.to_string().ends_with("unknown function `qqqqqqqqqqqq`"),
        "{e}"
    );
}

#[test]
fn known_functions_of_every_kind_load() {
    RuleSet::from_sources([(
        "kinds",
        r#"
        fn big(x) { x > 10 }
        let double = |x| x * 2;
        let n = parse_int("12");
        if big(n) && double.call(n) == 24 && max(1, 2) == 2 && type_of(n) == "i64"
            && email != () && email.ends_with("@x.test") && starts_with("ab", "a") { REVIEW }
        "#,
    )])
    .unwrap();
}

#[test]
fn a_dangerous_challenge_url_is_refused_at_load() {
    let load = |url: &str| {
        // A TOML basic string: control characters written as escapes.
        let quoted = toml_string(url);
        RuleSet::builder()
            .rule("r", "ALLOW")
            .config_toml(format!("[challenge]\nurl = {quoted}\n"))
            .build()
    };
    let cases: &[(&str, &str)] = &[
        (
            "https://",
            "`[challenge] url` `https://` has no host",
        ),
        (
            "https:///challenge",
            "`[challenge] url` `https:///challenge` has no host",
        ),
        (
            "https://?x=1",
            "`[challenge] url` `https://?x=1` has no host",
        ),
        (
            "http://user@/c",
            "`[challenge] url` `http://user@/c` has no host",
        ),
        (
            "https://:443/c",
            "`[challenge] url` `https://:443/c` has no host",
        ),
        (
            "https://auth.example.com/c\r\nSet-Cookie: a=b",
            "`[challenge] url` `https://auth.example.com/c\\r\\nSet-Cookie: a=b` contains the control character `\\r`",
        ),
        (
            "https://auth.example.com/c\n",
            "`[challenge] url` `https://auth.example.com/c\\n` contains the control character `\\n`",
        ),
        (
            "https://auth.example.com/c\u{85}",
            "`[challenge] url` `https://auth.example.com/c\\u{85}` contains the control character `\\u{85}`",
        ),
        (
            "https://auth.example.com/a b",
            "`[challenge] url` `https://auth.example.com/a b` contains a space",
        ),
        (
            "https://auth.example.com/c#",
            "`[challenge] url` `https://auth.example.com/c#` has a fragment (`#…`): the token would land in it",
        ),
        (
            "https://auth.example.com/c#done",
            "`[challenge] url` `https://auth.example.com/c#done` has a fragment (`#…`): the token would land in it",
        ),
        (
            "https://auth.example.com:99999/c",
            "`[challenge] url` `https://auth.example.com:99999/c` has an invalid port `99999`",
        ),
        (
            "https://auth.example.com:x/c",
            "`[challenge] url` `https://auth.example.com:x/c` has an invalid port `x`",
        ),
        (
            "https://auth.exa<mple.com/c",
            "`[challenge] url` `https://auth.exa<mple.com/c` has an invalid host `auth.exa<mple.com`",
        ),
        (
            "ftp://auth.example.com/c",
            "`[challenge] url` must start with https:// or http://, not `ftp://auth.example.com/c`",
        ),
    ];
    for (url, message) in cases {
        let e = load(url).unwrap_err();
        assert_eq!(
            messages(&e),
            [format!("riskgate.toml:2:1: {message}")],
            "{url:?}"
        );
    }
    for url in [
        "https://auth.example.com/challenge",
        "http://localhost:8080/c?v=2",
        "https://[2001:db8::1]:8443/c",
        "https://auth.example.com",
        "https://auth.example.com?x=%20",
    ] {
        let set = load(url).unwrap_or_else(|e| panic!("{url:?}: {e}"));
        assert_eq!(set.len(), 1);
    }
}

/// `v` as a TOML basic string, with control characters escaped.
fn toml_string(v: &str) -> String {
    let mut out = String::from("\"");
    for c in v.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => out.push_str(&format!("\\u{:04X}", u32::from(c))),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Runs `f` on a thread and fails the test if it has not returned within `secs` (a blocked read would
/// otherwise hang the whole test run).
fn within<T: Send + 'static>(secs: u64, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(std::time::Duration::from_secs(secs))
        .expect("loading blocked")
}

#[cfg(unix)]
fn mkfifo(path: &Path) {
    let ok = std::process::Command::new("mkfifo")
        .arg(path)
        .status()
        .unwrap()
        .success();
    assert!(ok, "mkfifo {}", path.display());
}

#[cfg(unix)]
#[test]
fn a_fifo_rule_file_is_refused_without_blocking() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "a.rhai", "ALLOW");
    mkfifo(&dir.path().join("b.rhai"));
    let d = dir.path().to_path_buf();
    let e = within(10, move || RuleSet::from_dir(&d)).unwrap_err();
    let m = e.to_string();
    assert!(
        m.contains("b.rhai") && m.contains("is a FIFO, not a regular file"),
        "{m}"
    );

    // An engine built from the folder before the FIFO appeared: `reload_rules` refuses at once, and
    // `replace_list` behind it is not held up.
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "a.rhai", "ALLOW");
    let engine = riskgate::Engine::builder()
        .rules_dir(dir.path())
        .unwrap()
        .build()
        .unwrap();
    mkfifo(&dir.path().join("b.rhai"));
    let e2 = engine.clone();
    let reloaded = within(10, move || e2.reload_rules());
    assert!(
        reloaded.unwrap_err().to_string().contains("is a FIFO"),
        "reload refuses the FIFO"
    );
    let e3 = engine.clone();
    within(10, move || e3.replace_list("blocked", "203.0.113.0/24\n")).unwrap();
}

#[cfg(unix)]
#[test]
fn dev_zero_behind_any_ruleset_path_is_refused_without_growing_memory() {
    use std::os::unix::fs::symlink;
    let cases: [(&str, &str); 3] = [
        ("zero.rhai", "a rule file must be a regular file"),
        ("lists/zero.txt", "a list file must be a regular file"),
        ("riskgate.toml", "`riskgate.toml` must be a regular file"),
    ];
    for (rel, expect) in cases {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "a.rhai", "ALLOW");
        let p = dir.path().join(rel);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        symlink("/dev/zero", &p).unwrap();
        let d = dir.path().to_path_buf();
        let e = within(10, move || RuleSet::from_dir(&d)).unwrap_err();
        let m = e.to_string();
        assert!(
            m.contains("is a device") && m.contains(expect),
            "{rel}: {m}"
        );
    }
    // A GeoIP database path.
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "a.rhai", "if country() == \"GB\" { REVIEW }");
    write(
        dir.path(),
        "riskgate.toml",
        "[geoip]\ncity = \"zero.mmdb\"\n",
    );
    symlink("/dev/zero", dir.path().join("zero.mmdb")).unwrap();
    let d = dir.path().to_path_buf();
    let e = within(10, move || RuleSet::from_dir(&d)).unwrap_err();
    let m = messages(&e);
    assert!(
        m[0].contains("riskgate.toml:2:1: `[geoip] city`")
            && m[0].contains(
                "is a device, not a regular file: a GeoIP database must be a regular file"
            ),
        "{m:?}"
    );
}

#[test]
fn an_oversized_rule_or_config_file_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    // One byte over 1 MiB, of a comment (a valid rule if it were read).
    let mut big = String::from("ALLOW\n");
    big.push_str(&"/".repeat((1 << 20) - big.len() + 1));
    write(dir.path(), "big.rhai", &big);
    let e = RuleSet::from_dir(dir.path()).unwrap_err();
    let m = e.to_string();
    assert!(
        m.contains("big.rhai")
            && m.contains("is larger than 1048576 bytes, the most a rule file may hold"),
        "{m}"
    );
    // Exactly the limit loads.
    big.pop();
    write(dir.path(), "big.rhai", &big);
    RuleSet::from_dir(dir.path()).unwrap();

    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "a.rhai", "ALLOW");
    let mut toml = String::from("default_outcome = \"ALLOW\"\n");
    toml.push_str(&"#".repeat(1 << 20));
    write(dir.path(), "riskgate.toml", &toml);
    let m = RuleSet::from_dir(dir.path()).unwrap_err().to_string();
    assert!(m.contains("the most `riskgate.toml` may hold"), "{m}");
}

/// Depth limits above the caps are load errors naming the cap: Rhai recurses on the host's stack, and deeper
/// limits let a rule overflow it and abort the process.
#[test]
fn depth_limits_above_their_caps_are_load_errors() {
    for (key, value, cap) in [
        ("max_call_depth", 1_000_000, 32),
        ("max_call_depth", 33, 32),
        ("max_expr_depth", 10_010, 128),
        ("max_function_expr_depth", 65, 64),
    ] {
        let e = RuleSet::builder()
            .rule("r", "ALLOW")
            .config_toml(format!("[limits]\n{key} = {value}\n"))
            .build()
            .unwrap_err();
        assert_eq!(
            messages(&e),
            [format!(
                "riskgate.toml:2:1: `[limits] {key}` must be at most {cap}: deeper rules could overflow the stack"
            )]
        );
    }
}

/// On a 2 MiB thread (Rust's default for spawned threads), with every depth limit at its cap: recursion to the
/// call depth limit through a function body nested as deep as allowed is a rule error, the deepest nesting
/// that loads evaluates, and 10,000 nested parentheses are a load error. None of it overflows the stack.
#[test]
fn depth_limits_at_their_caps_are_safe_on_a_2_mib_thread() {
    let config = "on_rule_error = \"BLOCK\"\n[limits]\nmax_call_depth = 32\nmax_expr_depth = 128\nmax_function_expr_depth = 64\nmax_operations = 100000000\ntime_limit = \"60s\"\n";
    let nested = |n: usize, inner: &str| format!("{}{inner}{}", "(".repeat(n), ")".repeat(n));
    let run = move || {
        let loads = |src: &str| {
            RuleSet::builder()
                .rule("r", src)
                .config_toml(config)
                .build()
                .is_ok()
        };
        // The deepest nesting each limit lets through.
        let top = (1..200)
            .take_while(|&n| loads(&format!("if {} == 1 {{ BLOCK }}", nested(n, "1"))))
            .last()
            .unwrap();
        let body = (1..200)
            .take_while(|&n| loads(&format!("fn f(x) {{ {} }} f(0)", nested(n, "f(x + 1)"))))
            .last()
            .unwrap();
        assert!(top > 20 && body > 10, "{top} {body}");
        let rules = RuleSet::builder()
            .compile_rules(false)
            .rule(
                "nested",
                format!("if {} == 1 {{ BLOCK }}", nested(top, "1")),
            )
            .rule(
                "recurse",
                format!("fn f(x) {{ {} }} f(0)", nested(body, "f(x + 1)")),
            )
            .config_toml(config)
            .build()
            .unwrap();
        let engine = riskgate::Engine::builder().ruleset(rules).build().unwrap();
        let resp = engine
            .track(&riskgate::TrackRequest::new("u", "signIn"))
            .unwrap();
        assert_eq!(resp.errors.len(), 1, "{resp:?}");
        assert_eq!(resp.errors[0].rule_id, "recurse");
        assert!(
            resp.errors[0]
                .message
                .contains("call depth limit of 32 exceeded"),
            "{resp:?}"
        );
        assert_eq!(resp.rule_ids, ["nested", "recurse"]);
        // Far past the expression depth: a load error, from the parser's own depth check.
        let e = RuleSet::builder()
            .rule("deep", nested(10_000, "1"))
            .config_toml(config)
            .build()
            .unwrap_err();
        assert!(e.to_string().starts_with("deep:1:"), "{e}");
    };
    std::thread::Builder::new()
        .stack_size(2 << 20)
        .spawn(run)
        .unwrap()
        .join()
        .unwrap();
}
