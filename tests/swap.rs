//! Swapping and reloading rulesets: atomic, and a ruleset that fails to load never replaces the working one.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use riskgate::{Engine, LoadError, RuleSet, State, TrackRequest};
use std::fs;

fn req(key: &str) -> TrackRequest {
    let mut r = TrackRequest::new("user-1", "signIn");
    r.attributes.idempotency_key = Some(key.into());
    r
}

#[test]
fn swap_ruleset_changes_later_decisions_and_keeps_stored_actions() {
    let e = Engine::builder()
        .ruleset(RuleSet::from_sources([("v1", "REVIEW")]).unwrap())
        .build()
        .unwrap();
    assert_eq!(e.track(&req("a")).unwrap().state, State::Review);
    e.swap_ruleset(RuleSet::from_sources([("v2", "BLOCK")]).unwrap());
    let resp = e.track(&req("b")).unwrap();
    assert_eq!(resp.state, State::Block);
    assert_eq!(resp.rule_ids, ["v2"]);
    // The action decided before the swap is still the same action.
    let again = e.track(&req("a")).unwrap();
    assert_eq!(again.state, State::Review);
    assert_eq!(again.rule_ids, ["v1"]);
}

#[test]
fn reload_reads_the_folder_again_and_a_broken_folder_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("r.rhai"), "REVIEW").unwrap();
    let e = Engine::builder()
        .rules_dir(dir.path())
        .unwrap()
        .build()
        .unwrap();
    assert_eq!(e.track(&req("1")).unwrap().state, State::Review);

    fs::write(dir.path().join("r.rhai"), "BLOCK").unwrap();
    e.reload_rules().unwrap();
    assert_eq!(e.track(&req("2")).unwrap().state, State::Block);

    // A syntax error in one file and a bad config: the whole reload is refused.
    fs::write(dir.path().join("r.rhai"), "ALLOW").unwrap();
    fs::write(dir.path().join("broken.rhai"), "if {").unwrap();
    let err = e.reload_rules().unwrap_err();
    assert!(err.to_string().contains("broken.rhai:1:"), "{err}");
    assert_eq!(
        e.track(&req("3")).unwrap().state,
        State::Block,
        "the old ruleset stays whole"
    );
    assert_eq!(e.ruleset().len(), 1);

    fs::remove_file(dir.path().join("broken.rhai")).unwrap();
    fs::write(
        dir.path().join("riskgate.toml"),
        "on_rule_error = \"sometimes\"\n",
    )
    .unwrap();
    assert!(e.reload_rules().is_err());
    assert_eq!(e.track(&req("4")).unwrap().state, State::Block);

    fs::remove_file(dir.path().join("riskgate.toml")).unwrap();
    e.reload_rules().unwrap();
    assert_eq!(e.track(&req("5")).unwrap().state, State::Allow);
}

#[test]
fn reload_needs_a_folder() {
    let e = Engine::builder()
        .ruleset(RuleSet::from_sources([("r", "ALLOW")]).unwrap())
        .build()
        .unwrap();
    assert!(matches!(e.reload_rules(), Err(LoadError::NoRulesDir)));
    assert!(matches!(
        Engine::builder().build(),
        Err(LoadError::NoRuleset)
    ));
}

#[test]
fn engine_is_send_sync_and_clones_share_state() {
    fn assert_send_sync<T: Send + Sync + Clone>() {}
    assert_send_sync::<Engine>();
    let e = Engine::builder()
        .ruleset(RuleSet::from_sources([("r", "REVIEW")]).unwrap())
        .build()
        .unwrap();
    let e2 = e.clone();
    e2.swap_ruleset(RuleSet::from_sources([("r", "BLOCK")]).unwrap());
    assert_eq!(e.track(&req("x")).unwrap().state, State::Block);
    assert_eq!(e2.stored_actions(), 1);
}

#[test]
fn in_flight_decisions_finish_on_the_ruleset_they_started_with() {
    // Rules that take a while, swapped many times while threads decide: every response's rule ids come from
    // one ruleset generation, never a mix.
    let make = |g: u32| {
        RuleSet::from_sources([
            (
                format!("g{g}/a"),
                "let i = 0; while i < 200 { i += 1; } REVIEW".to_owned(),
            ),
            (
                format!("g{g}/b"),
                "let i = 0; while i < 200 { i += 1; } BLOCK".to_owned(),
            ),
        ])
        .unwrap()
    };
    let e = Engine::builder().ruleset(make(0)).build().unwrap();
    std::thread::scope(|s| {
        for t in 0..2 {
            let e = e.clone();
            s.spawn(move || {
                for i in 0..300 {
                    let resp = e.track(&req(&format!("{t}-{i}"))).unwrap();
                    let gens: Vec<&str> = resp
                        .rule_ids
                        .iter()
                        .map(|id| id.split('/').next().unwrap())
                        .collect();
                    assert_eq!(gens.len(), 2);
                    assert_eq!(gens[0], gens[1], "mixed rulesets: {:?}", resp.rule_ids);
                }
            });
        }
        for g in 1..50 {
            e.swap_ruleset(make(g));
        }
    });
}
