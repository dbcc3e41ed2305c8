//! Geography on MaxMind's test databases: country, city, ASN, anonymous networks, impossible travel, and the
//! load errors of a bad `[geoip]` section.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use riskgate::{Engine, FakeClock, RuleSet, State, TrackAttributes, TrackRequest};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

const LONDON: &str = "81.2.69.142";
const MILTON: &str = "216.160.83.56";
const LINKOPING: &str = "89.160.20.112";
const CHANGCHUN: &str = "175.16.199.7";

fn at(secs: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(1_709_283_600 + secs)
}

fn db(file: &str) -> String {
    format!("{}/tests/data/geoip/{file}", env!("CARGO_MANIFEST_DIR"))
}

fn all_dbs() -> String {
    format!(
        "[geoip]\ncity = \"{}\"\nasn = \"{}\"\nanonymous_ip = \"{}\"\n",
        db("GeoIP2-City-Test.mmdb"),
        db("GeoLite2-ASN-Test.mmdb"),
        db("GeoIP2-Anonymous-IP-Test.mmdb")
    )
}

fn req(user: &str, key: &str, ip: Option<&str>) -> TrackRequest {
    TrackRequest {
        user_id: user.into(),
        action: "signIn".into(),
        attributes: TrackAttributes {
            idempotency_key: Some(key.into()),
            ip_address: ip.map(Into::into),
            ..Default::default()
        },
    }
}

/// Evaluates `expr` for a request from `ip` and returns it as the rule's error message (a rule that throws its
/// value is the simplest way to read a signal from outside).
fn read(expr: &str, ip: Option<&str>) -> String {
    let rules = RuleSet::builder()
        .rule("probe", format!("throw `${{{expr}}}`"))
        .config_toml(all_dbs())
        .build()
        .unwrap();
    let e = Engine::builder().ruleset(rules).build().unwrap();
    let resp = e.track(&req("u", "k", ip)).unwrap();
    let msg = &resp.errors[0].message;
    msg.split("Runtime error: ")
        .last()
        .unwrap_or(msg)
        .trim()
        .to_owned()
}

#[test]
fn country_city_asn_and_anonymous_on_the_test_databases() {
    assert_eq!(read("country()", Some(LONDON)), "GB");
    assert_eq!(read("city()", Some(LONDON)), "London");
    assert_eq!(read("country()", Some(MILTON)), "US");
    assert_eq!(read("city()", Some(MILTON)), "Milton");
    assert_eq!(read("city()", Some(LINKOPING)), "Linköping");
    assert_eq!(read("country()", Some(CHANGCHUN)), "CN");
    assert_eq!(read("asn()", Some("1.0.0.1")), "15169");
    assert_eq!(read("asn()", Some("1.128.0.1")), "1221");
    assert_eq!(read("is_anonymous_ip()", Some("1.124.213.1")), "true");
    assert_eq!(read("is_anonymous_ip()", Some("186.30.236.9")), "true");
    assert_eq!(read("is_anonymous_ip()", Some(MILTON)), "false");
    // Unknown address or no address: ().
    for expr in ["country()", "city()", "asn()"] {
        assert_eq!(
            read(&format!("{expr} == ()"), Some("192.0.2.1")),
            "true",
            "{expr}"
        );
        assert_eq!(read(&format!("{expr} == ()"), None), "true", "{expr}");
    }
    assert_eq!(read("is_anonymous_ip() == ()", None), "true");
    assert_eq!(
        read("travel_speed_kmh() == ()", Some(LONDON)),
        "true",
        "no earlier location"
    );
    assert_eq!(read("is_impossible_travel()", Some(LONDON)), "false");
}

fn travel_engine() -> Engine {
    let rules = RuleSet::builder()
        .rule("travel", "if is_impossible_travel() { REVIEW }")
        .rule(
            "speed",
            "//! mode: shadow\nif travel_speed_kmh() != () && travel_speed_kmh() > 10.0 { BLOCK }",
        )
        .config_toml(all_dbs())
        .build()
        .unwrap();
    Engine::builder()
        .ruleset(rules)
        .clock(FakeClock::at(at(0)))
        .build()
        .unwrap()
}

#[test]
fn london_to_changchun_in_an_hour_is_impossible() {
    let e = travel_engine();
    assert_eq!(
        e.track_at(&req("u", "1", Some(LONDON)), at(0))
            .unwrap()
            .state,
        State::Allow
    );
    let r = e
        .track_at(&req("u", "2", Some(CHANGCHUN)), at(3_600))
        .unwrap();
    assert_eq!(r.state, State::Review);
    assert_eq!(r.shadow_rule_ids.len(), 1);
    // The reviewed action did not move the user: London is still the last known location.
    let r = e
        .track_at(&req("u", "3", Some(CHANGCHUN)), at(7_200))
        .unwrap();
    assert_eq!(r.state, State::Review, "~4000 km/h from London");
    // Another user's travel is their own.
    assert_eq!(
        e.track_at(&req("v", "1", Some(CHANGCHUN)), at(7_200))
            .unwrap()
            .state,
        State::Allow
    );
}

#[test]
fn london_to_linkoping_in_a_day_is_not() {
    let e = travel_engine();
    e.track_at(&req("u", "1", Some(LONDON)), at(0)).unwrap();
    let r = e
        .track_at(&req("u", "2", Some(LINKOPING)), at(86_400))
        .unwrap();
    assert_eq!(r.state, State::Allow);
    assert_eq!(r.shadow_rule_ids.len(), 1, "~60 km/h: moving, but possible");
    // Linköping is now the last known location: back to London within 10 minutes is impossible.
    let r = e
        .track_at(&req("u", "3", Some(LONDON)), at(87_000))
        .unwrap();
    assert_eq!(r.state, State::Review);
}

#[test]
fn a_succeeded_review_moves_the_last_known_location() {
    let e = travel_engine();
    e.track_at(&req("u", "1", Some(LONDON)), at(0)).unwrap();
    assert_eq!(
        e.track_at(&req("u", "2", Some(CHANGCHUN)), at(3_600))
            .unwrap()
            .state,
        State::Review
    );
    e.update_action("u", "signIn", "2", State::ReviewSucceeded)
        .unwrap();
    // The user really was in Changchun at 3600s: 7200s from there is fine, a jump back to London is not.
    assert_eq!(
        e.track_at(&req("u", "3", Some(CHANGCHUN)), at(7_200))
            .unwrap()
            .state,
        State::Allow
    );
    assert_eq!(
        e.track_at(&req("u", "4", Some(LONDON)), at(10_800))
            .unwrap()
            .state,
        State::Review
    );
}

#[test]
fn geography_without_its_database_is_a_load_error() {
    for (expr, key) in [
        ("country()", "city"),
        ("is_impossible_travel()", "city"),
        ("asn()", "asn"),
        ("is_anonymous_ip()", "anonymous_ip"),
    ] {
        let err = RuleSet::from_sources([("g", format!("let x = 0;\nif {expr} == 1 {{ BLOCK }}"))])
            .unwrap_err();
        let d = &err.diagnostics()[0];
        assert_eq!(d.line, 2, "{err}");
        assert!(d.message.contains(&format!("[geoip] {key}")), "{err}");
    }
}

#[test]
fn a_missing_or_wrong_database_is_a_load_error() {
    let err = RuleSet::builder()
        .rule("r", "()")
        .config_toml("default_outcome = \"ALLOW\"\n[geoip]\ncity = \"/nonexistent/City.mmdb\"\n")
        .build()
        .unwrap_err();
    let d = &err.diagnostics()[0];
    assert_eq!((d.file.as_str(), d.line), ("riskgate.toml", 3), "{err}");
    assert!(d.message.contains("/nonexistent/City.mmdb"), "{err}");
    let err = RuleSet::builder()
        .rule("r", "()")
        .config_toml(format!(
            "[geoip]\ncity = \"{}\"\n",
            db("GeoLite2-ASN-Test.mmdb")
        ))
        .build()
        .unwrap_err();
    assert!(err.to_string().contains("GeoLite2-ASN"), "{err}");
    let dir = tempfile::tempdir().unwrap();
    let junk = dir.path().join("junk.mmdb");
    std::fs::write(&junk, b"not a database").unwrap();
    let err = RuleSet::builder()
        .rule("r", "()")
        .config_toml(format!("[geoip]\nasn = \"{}\"\n", junk.display()))
        .build()
        .unwrap_err();
    assert!(err.to_string().contains("junk.mmdb"), "{err}");
}

#[test]
fn database_paths_are_relative_to_the_rules_folder() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("geo")).unwrap();
    std::fs::copy(
        db("GeoIP2-City-Test.mmdb"),
        dir.path().join("geo/city.mmdb"),
    )
    .unwrap();
    std::fs::write(
        dir.path().join("riskgate.toml"),
        "[geoip]\ncity = \"geo/city.mmdb\"\n",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("uk.rhai"),
        "if country() == \"GB\" { REVIEW }",
    )
    .unwrap();
    let e = Engine::builder()
        .rules_dir(dir.path())
        .unwrap()
        .build()
        .unwrap();
    assert_eq!(
        e.track(&req("u", "1", Some(LONDON))).unwrap().state,
        State::Review
    );
    assert_eq!(
        e.track(&req("u", "2", Some(MILTON))).unwrap().state,
        State::Allow
    );
}

#[test]
fn staying_put_keeps_the_last_known_location_fresh() {
    let e = travel_engine();
    e.track_at(&req("u", "1", Some(LONDON)), at(0)).unwrap();
    // Ten hours later, still in London (the same IP, so no new lookup is needed to refresh it).
    assert_eq!(
        e.track_at(&req("u", "2", Some(LONDON)), at(36_000))
            .unwrap()
            .state,
        State::Allow
    );
    // An hour after that, 1,400 km away: measured from the fresh London time, not the first one.
    let r = e
        .track_at(&req("u", "3", Some(LINKOPING)), at(39_600))
        .unwrap();
    assert_eq!(r.state, State::Review);
}

#[test]
fn a_returning_ip_is_placed_from_history_with_the_same_answers() {
    let rules = RuleSet::builder()
        .rule(
            "home",
            "if country() == \"GB\" && !is_new_country() && travel_speed_kmh() == 0.0 { REVIEW }",
        )
        .config_toml(all_dbs())
        .build()
        .unwrap();
    let e = Engine::builder()
        .ruleset(rules)
        .clock(FakeClock::at(at(0)))
        .build()
        .unwrap();
    assert_eq!(
        e.track_at(&req("u", "1", Some(LONDON)), at(0))
            .unwrap()
            .state,
        State::Allow
    );
    assert_eq!(
        e.track_at(&req("u", "2", Some(LONDON)), at(60))
            .unwrap()
            .state,
        State::Review
    );
    assert_eq!(
        e.track_at(&req("v", "1", Some(LONDON)), at(60))
            .unwrap()
            .state,
        State::Allow,
        "per user"
    );
}

#[test]
fn a_ruleset_that_never_asks_the_city_database_records_no_places() {
    let quiet = RuleSet::builder()
        .rule("device", "if is_new_device() { REVIEW }")
        .config_toml(all_dbs())
        .build()
        .unwrap();
    let e = Engine::builder()
        .ruleset(quiet)
        .clock(FakeClock::at(at(0)))
        .build()
        .unwrap();
    e.track_at(&req("u", "1", Some(LONDON)), at(0)).unwrap();
    e.update_action("u", "signIn", "1", State::ReviewSucceeded)
        .unwrap();
    let asking = RuleSet::builder()
        .rule("country", "if is_new_country() { CHALLENGE_REQUIRED }")
        .config_toml(all_dbs())
        .build()
        .unwrap();
    e.swap_ruleset(asking);
    // GB was never looked up, so it is not known yet; from now on allowed actions record their country.
    assert_eq!(
        e.track_at(&req("u", "2", Some(LONDON)), at(10))
            .unwrap()
            .state,
        State::ChallengeRequired
    );
    e.update_action("u", "signIn", "2", State::ChallengeSucceeded)
        .unwrap();
    assert_eq!(
        e.track_at(&req("u", "3", Some(LONDON)), at(20))
            .unwrap()
            .state,
        State::Allow
    );
}
