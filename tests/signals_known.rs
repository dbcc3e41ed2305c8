//! Known devices, IPs and countries: what makes them known (ALLOW, CHALLENGE_SUCCEEDED, REVIEW_SUCCEEDED) and
//! what never does (a blocked attempt, a failed challenge, a pending one), per user.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use riskgate::{Engine, FakeClock, RuleSet, State, TrackAttributes, TrackRequest};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

fn at(secs: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(1_709_283_600 + secs)
}

fn geoip(file: &str) -> String {
    format!("{}/tests/data/geoip/{file}", env!("CARGO_MANIFEST_DIR"))
}

fn req(user: &str, key: &str, ip: Option<&str>, device: Option<&str>) -> TrackRequest {
    TrackRequest {
        user_id: user.into(),
        action: "signIn".into(),
        attributes: TrackAttributes {
            idempotency_key: Some(key.into()),
            ip_address: ip.map(Into::into),
            device_id: device.map(Into::into),
            ..Default::default()
        },
    }
}

/// Challenges a new device, blocks when `custom.block` is set, reviews when `custom.review` is set.
fn engine() -> Engine {
    let rules = RuleSet::builder()
        .rule(
            "block",
            "//! priority: 1\nif custom.block == true { BLOCK }",
        )
        .rule(
            "review",
            "//! priority: 2\nif custom.review == true { REVIEW }",
        )
        .rule(
            "new-device",
            "//! priority: 10\nif is_new_device() { CHALLENGE_REQUIRED }",
        )
        .rule(
            "new-ip",
            "//! priority: 20\n//! mode: shadow\nif is_new_ip() { CHALLENGE_REQUIRED }",
        )
        .build()
        .unwrap();
    common::with_test_store(Engine::builder())
        .ruleset(rules)
        .clock(FakeClock::at(at(0)))
        .build()
        .unwrap()
}

fn with(mut r: TrackRequest, flag: &str) -> TrackRequest {
    r.attributes.custom.insert(flag.into(), true.into());
    r
}

#[test]
fn an_allowed_action_makes_its_device_known() {
    let rules = RuleSet::from_sources([("new", "if is_new_device() { REVIEW }")]).unwrap();
    let e = common::with_test_store(Engine::builder())
        .ruleset(rules)
        .clock(FakeClock::at(at(0)))
        .build()
        .unwrap();
    // REVIEW is not a success: the device stays new until a review succeeds.
    let first = e
        .track_at(&req("u", "k1", None, Some("d1")), at(0))
        .unwrap();
    assert_eq!(first.state, State::Review);
    assert_eq!(
        e.track_at(&req("u", "k2", None, Some("d1")), at(1))
            .unwrap()
            .state,
        State::Review
    );
    e.update_action("u", "signIn", "k2", State::ReviewSucceeded)
        .unwrap();
    assert_eq!(
        e.track_at(&req("u", "k3", None, Some("d1")), at(2))
            .unwrap()
            .state,
        State::Allow
    );
    // Known for that user only.
    assert_eq!(
        e.track_at(&req("v", "k1", None, Some("d1")), at(3))
            .unwrap()
            .state,
        State::Review
    );
    // No device at all is new.
    assert_eq!(
        e.track_at(&req("u", "k4", None, None), at(4))
            .unwrap()
            .state,
        State::Review
    );
}

#[test]
fn a_blocked_device_stays_new() {
    let e = engine();
    for i in 0..5 {
        let r = with(
            req("victim", &format!("b{i}"), None, Some("attacker")),
            "block",
        );
        assert_eq!(e.track_at(&r, at(i)).unwrap().state, State::Block);
    }
    let r = req("victim", "later", None, Some("attacker"));
    assert_eq!(
        e.track_at(&r, at(10)).unwrap().state,
        State::ChallengeRequired
    );
}

#[test]
fn a_challenge_succeeded_device_becomes_known_and_a_failed_one_does_not() {
    let e = engine();
    let r = req("u", "c1", Some("203.0.113.5"), Some("phone"));
    assert_eq!(
        e.track_at(&r, at(0)).unwrap().state,
        State::ChallengeRequired
    );
    // Still pending: still new.
    let again = e
        .track_at(&req("u", "c2", None, Some("phone")), at(1))
        .unwrap();
    assert_eq!(again.state, State::ChallengeRequired);
    e.update_action("u", "signIn", "c2", State::ChallengeFailed)
        .unwrap();
    let third = e
        .track_at(&req("u", "c3", None, Some("phone")), at(2))
        .unwrap();
    assert_eq!(
        third.state,
        State::ChallengeRequired,
        "a failed challenge proves nothing"
    );
    e.update_action("u", "signIn", "c1", State::ChallengeSucceeded)
        .unwrap();
    let known = e
        .track_at(&req("u", "c4", Some("203.0.113.5"), Some("phone")), at(3))
        .unwrap();
    assert_eq!(known.state, State::Allow);
    assert!(
        known.shadow_rule_ids.is_empty(),
        "the IP of the succeeded challenge is known too"
    );
    // A refused transition changes nothing.
    assert!(e
        .update_action("u", "signIn", "c3", State::ReviewSucceeded)
        .is_err());
}

#[test]
fn ips_are_known_per_user() {
    let e = engine();
    let r = req("u", "k1", Some("198.51.100.1"), Some("d"));
    e.track_at(&r, at(0)).unwrap();
    e.update_action("u", "signIn", "k1", State::ChallengeSucceeded)
        .unwrap();
    let same = e
        .track_at(&req("u", "k2", Some("198.51.100.1"), Some("d")), at(1))
        .unwrap();
    assert!(same.shadow_rule_ids.is_empty());
    let other_ip = e
        .track_at(&req("u", "k3", Some("198.51.100.2"), Some("d")), at(2))
        .unwrap();
    assert_eq!(other_ip.state, State::Allow);
    assert_eq!(other_ip.shadow_rule_ids.len(), 1);
    let other_user = e
        .track_at(&req("w", "k1", Some("198.51.100.1"), Some("d")), at(3))
        .unwrap();
    assert_eq!(other_user.state, State::ChallengeRequired);
    assert_eq!(other_user.shadow_rule_ids.len(), 1);
}

#[test]
fn a_review_succeeded_action_makes_its_country_known() {
    let rules = RuleSet::builder()
        .rule(
            "review",
            "//! priority: 1\nif custom.review == true { REVIEW }",
        )
        .rule(
            "new-country",
            "//! priority: 5\nif is_new_country() { CHALLENGE_REQUIRED }",
        )
        .config_toml(format!(
            "[geoip]\ncity = \"{}\"\n",
            geoip("GeoIP2-City-Test.mmdb")
        ))
        .build()
        .unwrap();
    let e = common::with_test_store(Engine::builder())
        .ruleset(rules)
        .clock(FakeClock::at(at(0)))
        .build()
        .unwrap();
    let london = Some("81.2.69.142");
    let r = with(req("u", "k1", london, Some("d")), "review");
    assert_eq!(e.track_at(&r, at(0)).unwrap().state, State::Review);
    assert_eq!(
        e.track_at(&req("u", "k2", london, Some("d")), at(1))
            .unwrap()
            .state,
        State::ChallengeRequired,
        "GB is still new while the review is pending"
    );
    e.update_action("u", "signIn", "k1", State::ReviewSucceeded)
        .unwrap();
    // Another London address: same country, so not new.
    let r = req("u", "k3", Some("81.2.69.160"), Some("d"));
    assert_eq!(e.track_at(&r, at(2)).unwrap().state, State::Allow);
    let sweden = req("u", "k4", Some("89.160.20.112"), Some("d"));
    assert_eq!(
        e.track_at(&sweden, at(3)).unwrap().state,
        State::ChallengeRequired
    );
    // An address the database does not know has no country: new.
    let unknown = req("u", "k5", Some("192.0.2.1"), Some("d"));
    assert_eq!(
        e.track_at(&unknown, at(4)).unwrap().state,
        State::ChallengeRequired
    );
}

#[test]
fn known_devices_survive_a_ruleset_swap() {
    let e = engine();
    e.track_at(&req("u", "k1", None, Some("d")), at(0)).unwrap();
    e.update_action("u", "signIn", "k1", State::ChallengeSucceeded)
        .unwrap();
    e.swap_ruleset(RuleSet::from_sources([("n", "if is_new_device() { BLOCK }")]).unwrap());
    assert_eq!(
        e.track_at(&req("u", "k2", None, Some("d")), at(1))
            .unwrap()
            .state,
        State::Allow
    );
    assert_eq!(
        e.track_at(&req("u", "k3", None, Some("e")), at(2))
            .unwrap()
            .state,
        State::Block
    );
}

#[test]
fn a_device_not_seen_for_known_for_is_new_again() {
    let rules = RuleSet::builder()
        .rule("new", "if is_new_device() { CHALLENGE_REQUIRED }")
        .config_toml("[signals]\nknown_for = \"30d\"\n")
        .build()
        .unwrap();
    let e = common::with_test_store(Engine::builder())
        .ruleset(rules)
        .clock(FakeClock::at(at(0)))
        .build()
        .unwrap();
    let day = 86_400;
    e.track_at(&req("u", "k0", None, Some("d")), at(0)).unwrap();
    e.update_action("u", "signIn", "k0", State::ChallengeSucceeded)
        .unwrap();
    // Used again (and allowed) on day 20: known until day 50.
    let r = e
        .track_at(&req("u", "k1", None, Some("d")), at(20 * day))
        .unwrap();
    assert_eq!(r.state, State::Allow);
    let r = e
        .track_at(&req("u", "k2", None, Some("d")), at(49 * day))
        .unwrap();
    assert_eq!(r.state, State::Allow);
    let r = e
        .track_at(&req("u", "k3", None, Some("d")), at(80 * day))
        .unwrap();
    assert_eq!(r.state, State::ChallengeRequired, "31 days unseen");
}

#[test]
fn a_known_ip_is_known_however_it_is_spelt() {
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
        for (first, known) in spellings.iter().enumerate() {
            let e = engine();
            let r = req("u", "k0", Some(known), Some("d"));
            e.track_at(&r, at(0)).unwrap();
            e.update_action("u", "signIn", "k0", State::ChallengeSucceeded)
                .unwrap();
            for (i, ip) in spellings.iter().enumerate() {
                let r = req("u", &format!("k{}", i + 1), Some(ip), Some("d"));
                let resp = e.track_at(&r, at(1 + i as u64)).unwrap();
                assert!(
                    resp.shadow_rule_ids.is_empty(),
                    "made known as {known} (spelling {first}), new as {ip}"
                );
            }
            // A different address is still new.
            let other = req("u", "other", Some("1.2.3.5"), Some("d"));
            assert_eq!(e.track_at(&other, at(99)).unwrap().shadow_rule_ids.len(), 1);
        }
    }
}

#[test]
fn geography_and_travel_read_a_mapped_address_as_its_ipv4() {
    // 81.2.69.142 is London in MaxMind's test database; 175.16.199.1 is Changchun.
    let rules = RuleSet::builder()
        .config_toml(format!(
            "[geoip]\ncity = \"{}\"\n",
            geoip("GeoIP2-City-Test.mmdb")
        ))
        .rule(
            "gb",
            r#"if country() == "GB" && !is_new_country() { ALLOW }"#,
        )
        .rule("far", "if is_impossible_travel() { REVIEW }")
        .build()
        .unwrap();
    let e = common::with_test_store(Engine::builder())
        .ruleset(rules)
        .build()
        .unwrap();
    let london = [
        "81.2.69.142",
        "::ffff:81.2.69.142",
        "::ffff:5102:458e",
        "0:0:0:0:0:FFFF:5102:458E",
    ];
    let first = e
        .track_at(&req("u", "k0", Some(london[0]), None), at(0))
        .unwrap();
    assert_eq!(first.state, State::Allow);
    for (i, ip) in london.iter().enumerate() {
        let r = e
            .track_at(
                &req("u", &format!("k{}", i + 1), Some(ip), None),
                at(60 + i as u64),
            )
            .unwrap();
        let ids: Vec<String> = r.rule_ids.iter().map(|x| x.to_string()).collect();
        assert_eq!(ids, ["gb"], "{ip}: known country, no travel");
    }
    // Changchun a minute later, spelt as a mapped address, is impossible travel.
    let r = e
        .track_at(&req("u", "far", Some("::ffff:af10:c701"), None), at(120))
        .unwrap();
    assert_eq!(r.state, State::Review);
}
