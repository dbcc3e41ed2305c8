//! Lists: loading from `rules/lists/`, CIDR ranges (v4 and v6) and exact strings, load errors with their place,
//! and replacing a list at run time atomically.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use riskgate::{Engine, RuleSet, State, TrackAttributes, TrackRequest};
use std::fs;

fn req(user: &str, ip: Option<&str>, email: Option<&str>) -> TrackRequest {
    TrackRequest {
        user_id: user.into(),
        action: "signIn".into(),
        attributes: TrackAttributes {
            ip_address: ip.map(Into::into),
            email: email.map(Into::into),
            ..Default::default()
        },
    }
}

fn state(e: &Engine, r: &TrackRequest) -> State {
    e.track(r).unwrap().state
}

fn folder(rules: &[(&str, &str)], lists: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for (id, src) in rules {
        let path = dir.path().join(format!("{id}.rhai"));
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, src).unwrap();
    }
    fs::create_dir_all(dir.path().join("lists")).unwrap();
    for (name, text) in lists {
        fs::write(dir.path().join("lists").join(format!("{name}.txt")), text).unwrap();
    }
    dir
}

#[test]
fn lists_load_from_the_rules_folder_with_ranges_and_exact_entries() {
    let dir = folder(
        &[
            (
                "network/blocked",
                r#"if in_list("blocked-networks", ip_address) { BLOCK }"#,
            ),
            (
                "signin/vip",
                r#"//! priority: 1
if in_list("vip-emails", email) { ALLOW }"#,
            ),
        ],
        &[
            (
                "blocked-networks",
                "# bad networks\n203.0.113.0/24\n198.51.100.7\n2001:db8:bad::/48 # v6\n",
            ),
            ("vip-emails", "ceo@example.com\n"),
        ],
    );
    let e = Engine::builder()
        .rules_dir(dir.path())
        .unwrap()
        .build()
        .unwrap();
    assert_eq!(
        state(&e, &req("u", Some("203.0.113.77"), None)),
        State::Block
    );
    assert_eq!(
        state(&e, &req("u", Some("203.0.114.77"), None)),
        State::Allow
    );
    assert_eq!(
        state(&e, &req("u", Some("198.51.100.7"), None)),
        State::Block
    );
    assert_eq!(
        state(&e, &req("u", Some("198.51.100.8"), None)),
        State::Allow
    );
    assert_eq!(
        state(&e, &req("u", Some("2001:db8:bad:1::9"), None)),
        State::Block
    );
    assert_eq!(
        state(&e, &req("u", Some("2001:db8:bae::1"), None)),
        State::Allow
    );
    assert_eq!(
        state(&e, &req("u", Some("::ffff:203.0.113.1"), None)),
        State::Block
    );
    assert_eq!(
        state(&e, &req("u", None, None)),
        State::Allow,
        "no IP is in no list"
    );
    // Exact strings: the strongest rule lets the CEO through even from a blocked network.
    assert_eq!(
        state(&e, &req("u", Some("203.0.113.1"), Some("ceo@example.com"))),
        State::Allow
    );
    assert_eq!(
        state(&e, &req("u", Some("203.0.113.1"), Some("CEO@example.com"))),
        State::Block
    );
}

#[test]
fn a_list_named_by_a_rule_but_missing_is_a_load_error_with_its_place() {
    let dir = folder(
        &[(
            "signin/tor",
            "let x = 1;\nif in_list(\"tor-exits\", ip_address) { BLOCK }",
        )],
        &[],
    );
    let err = RuleSet::from_dir(dir.path()).unwrap_err();
    let d = &err.diagnostics()[0];
    assert!(d.file.ends_with("tor.rhai"), "{err}");
    assert_eq!((d.line, d.column), (2, 12), "{err}");
    assert!(d.message.contains("`tor-exits`"), "{err}");
}

#[test]
fn a_bad_list_entry_is_a_load_error_with_its_place() {
    let dir = folder(&[("r", "()")], &[("nets", "10.0.0.0/8\n\n  10.1.0.0/40\n")]);
    let err = RuleSet::from_dir(dir.path()).unwrap_err();
    let d = &err.diagnostics()[0];
    assert!(d.file.ends_with("lists/nets.txt"), "{err}");
    assert_eq!((d.line, d.column), (3, 3), "{err}");
    assert!(d.message.contains("`10.1.0.0/40`"), "{err}");
}

#[test]
fn a_computed_list_name_that_does_not_exist_is_a_rule_error() {
    let rules = RuleSet::from_sources([(
        "r",
        r#"let name = "black" + "list"; if in_list(name, ip_address) { BLOCK }"#,
    )])
    .unwrap();
    let e = Engine::builder().ruleset(rules).build().unwrap();
    let resp = e.track(&req("u", Some("192.0.2.1"), None)).unwrap();
    assert!(
        resp.errors[0].message.contains("`blacklist`"),
        "{:?}",
        resp.errors
    );
}

#[test]
fn values_that_are_not_strings() {
    let rules = RuleSet::builder()
        .list("ids", "42\ntrue\n")
        .rule("n", "if in_list(\"ids\", custom.n) { REVIEW }")
        .build()
        .unwrap();
    let e = Engine::builder().ruleset(rules).build().unwrap();
    let mut r = req("u", None, None);
    assert_eq!(state(&e, &r), State::Allow, "() is in no list");
    r.attributes.custom.insert("n".into(), 42i64.into());
    assert_eq!(state(&e, &r), State::Review);
    r.attributes.custom.insert("n".into(), true.into());
    assert_eq!(state(&e, &r), State::Review);
    r.attributes.custom.insert("n".into(), 43i64.into());
    assert_eq!(state(&e, &r), State::Allow);
}

#[test]
fn a_list_is_replaced_at_run_time_and_a_bad_one_is_refused() {
    let rules = RuleSet::builder()
        .list("blocked", "192.0.2.0/24\n")
        .rule("b", r#"if in_list("blocked", ip_address) { BLOCK }"#)
        .build()
        .unwrap();
    let e = Engine::builder().ruleset(rules).build().unwrap();
    let old = req("u", Some("192.0.2.1"), None);
    let new = req("u", Some("2001:db8::1"), None);
    assert_eq!(
        (state(&e, &old), state(&e, &new)),
        (State::Block, State::Allow)
    );
    e.replace_list("blocked", "2001:db8::/32\n").unwrap();
    assert_eq!(
        (state(&e, &old), state(&e, &new)),
        (State::Allow, State::Block)
    );
    let err = e
        .replace_list("blocked", "192.0.2.0/24\n300.1.1.1/8\n")
        .unwrap_err();
    assert_eq!(err.diagnostics()[0].line, 2, "{err}");
    assert_eq!(
        (state(&e, &old), state(&e, &new)),
        (State::Allow, State::Block),
        "the old list stays"
    );
    assert!(e.replace_list("../etc/passwd", "x").is_err());
}

#[test]
fn a_decision_sees_one_version_of_a_list_while_it_is_replaced() {
    let rules = RuleSet::builder()
        .list("l", "")
        .rule(
            "torn",
            r#"let a = in_list("l", "192.0.2.1"); let b = in_list("l", "one"); if a != b { BLOCK }"#,
        )
        .build()
        .unwrap();
    let e = Engine::builder().ruleset(rules).build().unwrap();
    let stop = std::sync::atomic::AtomicBool::new(false);
    let stop = &stop;
    std::thread::scope(|s| {
        let writer = e.clone();
        s.spawn(move || {
            let mut full = true;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                writer
                    .replace_list("l", if full { "192.0.2.0/24\none\n" } else { "" })
                    .unwrap();
                full = !full;
            }
        });
        for i in 0..3_000 {
            let r = req(&format!("u{i}"), None, None);
            assert_eq!(
                state(&e, &r),
                State::Allow,
                "decision {i} saw half a replacement"
            );
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
    });
}

#[test]
fn a_hundred_thousand_ranges_load_and_match() {
    let mut text = String::new();
    for i in 0..100_000u32 {
        // Every other /28 in 10.0.0.0/8: 100,000 separate ranges.
        let base = i * 32;
        text.push_str(&format!(
            "10.{}.{}.{}/28\n",
            (base >> 16) & 255,
            (base >> 8) & 255,
            base & 255
        ));
    }
    let rules = RuleSet::builder()
        .list("big", text)
        .rule("b", r#"if in_list("big", ip_address) { BLOCK }"#)
        .build()
        .unwrap();
    let e = Engine::builder().ruleset(rules).build().unwrap();
    assert_eq!(state(&e, &req("u", Some("10.0.0.15"), None)), State::Block);
    assert_eq!(state(&e, &req("u", Some("10.0.0.16"), None)), State::Allow);
    let last = 99_999u32 * 32;
    let ip = format!(
        "10.{}.{}.{}",
        (last >> 16) & 255,
        (last >> 8) & 255,
        (last & 255) + 3
    );
    assert_eq!(state(&e, &req("u", Some(&ip), None)), State::Block);
    assert_eq!(state(&e, &req("u", Some("11.0.0.1"), None)), State::Allow);
}

#[test]
fn an_address_in_a_list_matches_however_it_is_spelt() {
    let v4 = [
        "1.2.3.4",
        "::ffff:1.2.3.4",
        "::ffff:102:304",
        "0:0:0:0:0:ffff:1.2.3.4",
        "::FFFF:0102:0304",
        "0000:0000:0000:0000:0000:ffff:0102:0304",
    ];
    let v6 = [
        "2001:db8::1",
        "2001:DB8::1",
        "2001:0db8::1",
        "2001:db8:0:0:0:0:0:1",
        "2001:0db8:0000:0000:0000:0000:0000:0001",
        "2001:db8::0:1",
        "2001:db8:0::1",
        "2001:0DB8:0:0::0:0001",
    ];
    for spellings in [&v4[..], &v6[..]] {
        // Each spelling as the list entry, each spelling as the request's address.
        for entry in spellings {
            let rules = RuleSet::builder()
                .list("blocked", format!("{entry}\n"))
                .rule("b", r#"if in_list("blocked", ip_address) { BLOCK }"#)
                .build()
                .unwrap();
            let e = Engine::builder().ruleset(rules).build().unwrap();
            for ip in spellings {
                assert_eq!(
                    state(&e, &req("u", Some(ip), None)),
                    State::Block,
                    "{entry} vs {ip}"
                );
            }
            assert_eq!(state(&e, &req("u", Some("1.2.3.5"), None)), State::Allow);
            assert_eq!(
                state(&e, &req("u", Some("2001:db8::2"), None)),
                State::Allow
            );
        }
    }
    // The deprecated IPv4-compatible `::1.2.3.4` is an IPv6 address, not 1.2.3.4.
    let rules = RuleSet::builder()
        .list("blocked", "1.2.3.4\n")
        .rule("b", r#"if in_list("blocked", ip_address) { BLOCK }"#)
        .build()
        .unwrap();
    let e = Engine::builder().ruleset(rules).build().unwrap();
    assert_eq!(state(&e, &req("u", Some("::1.2.3.4"), None)), State::Allow);
}
