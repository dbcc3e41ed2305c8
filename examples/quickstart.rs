//! Embedding riskgate: load the bundled rules, track two actions, finish a challenge.
//!
//! Run with `cargo run --example quickstart`.

use riskgate::{Engine, State, TrackAttributes, TrackRequest};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Build once at start-up; clone the handle into every thread or task.
    let engine = Engine::builder().rules_dir("rules")?.build()?;

    let request = TrackRequest {
        user_id: "0272c312-e181-4cad-a494-43647b503a0a".into(),
        action: "signIn".into(),
        attributes: TrackAttributes {
            ip_address: Some("203.0.113.42".into()),
            email: Some("alice@example.com".into()),
            ..Default::default()
        },
    };
    let resp = engine.track(&request)?;
    println!(
        "signIn without a device: {} (rules: {:?})",
        resp.state, resp.rule_ids
    );

    if resp.state == State::ChallengeRequired {
        // Hand resp.token / resp.url to the client; when the challenge is passed, record it:
        engine.update_action(
            &request.user_id,
            &request.action,
            &resp.idempotency_key,
            State::ChallengeSucceeded,
        )?;
        if let Some(token) = &resp.token {
            let check = engine.validate_challenge(token);
            println!("challenge token valid: {}", check.is_valid);
        }
    }

    let mut withdraw = TrackRequest::new(request.user_id.clone(), "withdraw-funds");
    withdraw.attributes.device_id = Some("555c17e1-3837-4f13-81bb-131e5597e168".into());
    withdraw
        .attributes
        .custom
        .insert("amount".into(), 25_000i64.into());
    let resp = engine.track(&withdraw)?;
    match resp.state {
        State::Allow => println!("withdrawal allowed"),
        State::ChallengeRequired => println!("withdrawal needs a challenge"),
        State::Review => println!("withdrawal held for review by {:?}", resp.priority_rule_id),
        State::Block => println!("withdrawal blocked"),
        other => println!("lifecycle state {other}"),
    }
    Ok(())
}
