//! Properties of the action store, checked against a model: for any interleaving of tracks, updates, lookups,
//! token checks and clock moves, every answer is the model's, a repeat returns what `get_action` returns, and
//! the store never holds more than its capacity.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use proptest::prelude::*;
use riskgate::{Engine, FakeClock, RuleSet, State, TrackError, TrackRequest, TrackResponse};
use std::collections::VecDeque;
use std::time::Duration;

const TTL_MS: u64 = 1_000;
const TOKEN_TTL_MS: u64 = 700;

const ALL: [State; 8] = State::ALL;

#[derive(Debug, Clone)]
enum Op {
    /// Track (user, key; `None` lets the engine generate one) with decision `d` (0 ALLOW, 1 CHALLENGE, 2 REVIEW,
    /// 3 BLOCK).
    Track {
        user: u8,
        key: Option<u8>,
        d: u8,
    },
    Update {
        user: u8,
        key: u8,
        to: usize,
    },
    Get {
        user: u8,
        key: u8,
    },
    /// Validate the n-th token issued so far (modulo their number).
    Validate(usize),
    Advance(u64),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0u8..3, prop::option::weighted(0.9, 0u8..6), 0u8..4)
            .prop_map(|(user, key, d)| Op::Track { user, key, d }),
        3 => (0u8..3, 0u8..6, 0usize..8).prop_map(|(user, key, to)| Op::Update { user, key, to }),
        2 => (0u8..3, 0u8..6).prop_map(|(user, key)| Op::Get { user, key }),
        2 => any::<usize>().prop_map(Op::Validate),
        2 => (0u64..600).prop_map(Op::Advance),
    ]
}

/// One action as the model keeps it.
#[derive(Debug, Clone)]
struct Action {
    user: String,
    key: String,
    generation: usize,
    d: u8,
    created_ms: u64,
    state: State,
    first: TrackResponse,
    token_used: bool,
}

#[derive(Default)]
struct Model {
    /// In insertion order: the front is the oldest.
    actions: VecDeque<Action>,
    /// Every token issued: (token, the generation of its action).
    tokens: Vec<(String, usize)>,
    generations: usize,
}

impl Model {
    fn live(&mut self, user: &str, key: &str, now: u64) -> Option<&mut Action> {
        self.actions
            .iter_mut()
            .find(|a| a.user == user && a.key == key && a.created_ms + TTL_MS > now)
    }
}

fn decision(d: u8) -> State {
    [
        State::Allow,
        State::ChallengeRequired,
        State::Review,
        State::Block,
    ][usize::from(d)]
}

fn allowed(from: State, to: State) -> bool {
    matches!(
        (from, to),
        (
            State::ChallengeRequired,
            State::ChallengeSucceeded | State::ChallengeFailed
        ) | (State::Review, State::ReviewSucceeded | State::ReviewFailed)
    )
}

fn request(user: &str, key: Option<&str>, d: u8) -> TrackRequest {
    let mut r = TrackRequest::new(user, "signIn");
    r.attributes.idempotency_key = key.map(Into::into);
    r.attributes.custom.insert("d".into(), i64::from(d).into());
    r
}

fn run(capacity: usize, ops: &[Op]) -> Result<(), TestCaseError> {
    let rules = RuleSet::builder()
        .rule(
            "decide",
            "let d = custom.d; if d == 1 { CHALLENGE_REQUIRED } else if d == 2 { REVIEW } else if d == 3 { BLOCK }",
        )
        .config_toml(format!(
            "[idempotency]\nttl = \"{TTL_MS}ms\"\ncapacity = {capacity}\n[challenge]\ntoken_ttl = \"{TOKEN_TTL_MS}ms\""
        ))
        .build()
        .unwrap();
    let clock = FakeClock::default();
    let e = common::with_test_store(Engine::builder())
        .ruleset(rules)
        .clock(clock.clone())
        .build()
        .unwrap();
    let mut m = Model::default();
    // Capacity is the in-memory store's bound; on Redis only the TTL retires actions.
    let model_capacity = if common::in_memory() {
        capacity
    } else {
        usize::MAX
    };
    let mut now = 0u64;
    let mut generated = 0usize;
    for op in ops {
        match *op {
            Op::Track { user, key, d } => {
                let user = format!("u{user}");
                let key = key.map(|k| format!("k{k}"));
                let req = request(&user, key.as_deref(), d);
                let got = e.track(&req);
                let existing = key.as_deref().and_then(|k| m.live(&user, k, now)).cloned();
                match existing {
                    Some(a) if a.d == d => {
                        let got = got.unwrap();
                        let mut expected = a.first.clone();
                        expected.state = a.state;
                        prop_assert_eq!(&got, &expected);
                    }
                    Some(a) => {
                        prop_assert_eq!(
                            got.unwrap_err(),
                            TrackError::IdempotencyConflict {
                                user_id: user.clone(),
                                action: "signIn".into(),
                                idempotency_key: a.key.clone(),
                            }
                        );
                    }
                    None => {
                        let got = got.unwrap();
                        prop_assert_eq!(got.state, decision(d));
                        prop_assert_eq!(got.token.is_some(), d == 1);
                        if key.is_none() {
                            generated += 1;
                        } else {
                            prop_assert_eq!(Some(&got.idempotency_key), key.as_ref());
                        }
                        // The model's store: the expired action under this identity (if any) is replaced; then
                        // the oldest go while expired or over capacity.
                        m.actions
                            .retain(|a| !(a.user == user && a.key == got.idempotency_key));
                        m.generations += 1;
                        if let Some(t) = &got.token {
                            m.tokens.push((t.clone(), m.generations));
                        }
                        m.actions.push_back(Action {
                            user: user.clone(),
                            key: got.idempotency_key.clone(),
                            generation: m.generations,
                            d,
                            created_ms: now,
                            state: got.state,
                            first: got.clone(),
                            token_used: false,
                        });
                        while let Some(front) = m.actions.front() {
                            if m.actions.len() > model_capacity || front.created_ms + TTL_MS <= now
                            {
                                m.actions.pop_front();
                            } else {
                                break;
                            }
                        }
                    }
                }
                // The property: a repeat returns what get_action returns.
                if let Some(a) = key.as_deref().and_then(|k| m.live(&user, k, now)).cloned() {
                    let record = e.get_action(&user, "signIn", &a.key).unwrap();
                    let repeat = e.track(&request(&user, Some(&a.key), a.d)).unwrap();
                    prop_assert_eq!(repeat.state, record.state);
                    prop_assert_eq!(&repeat.idempotency_key, &record.idempotency_key);
                    prop_assert_eq!(&repeat.rule_ids, &record.rule_ids);
                    prop_assert_eq!(&repeat.priority_rule_id, &record.priority_rule_id);
                    prop_assert_eq!(record.outcome, decision(a.d));
                }
            }
            Op::Update { user, key, to } => {
                let (user, key, to) = (format!("u{user}"), format!("k{key}"), ALL[to]);
                let got = e.update_action(&user, "signIn", &key, to);
                match m.live(&user, &key, now) {
                    None => prop_assert_eq!(got.unwrap_err().code(), "action_not_found"),
                    Some(a) if allowed(a.state, to) => {
                        a.state = to;
                        prop_assert_eq!(got.unwrap().state, to);
                    }
                    Some(a) => {
                        let err = got.unwrap_err();
                        prop_assert_eq!(err.code(), "invalid_transition");
                        let from = match err {
                            TrackError::InvalidTransition { from, .. } => Some(from),
                            _ => None,
                        };
                        prop_assert_eq!(from, Some(a.state));
                    }
                }
            }
            Op::Get { user, key } => {
                let (user, key) = (format!("u{user}"), format!("k{key}"));
                let got = e.get_action(&user, "signIn", &key);
                match m.live(&user, &key, now) {
                    None => prop_assert_eq!(got, None),
                    Some(a) => {
                        let got = got.unwrap();
                        prop_assert_eq!(got.state, a.state);
                        prop_assert_eq!(got.outcome, decision(a.d));
                        prop_assert_eq!(&got.rule_ids, &a.first.rule_ids);
                    }
                }
            }
            Op::Validate(n) => {
                if m.tokens.is_empty() {
                    continue;
                }
                let (token, generation) = m.tokens[n % m.tokens.len()].clone();
                let got = e.validate_challenge(&token);
                let action = m
                    .actions
                    .iter_mut()
                    .find(|a| a.generation == generation && a.created_ms + TTL_MS > now);
                let expected = match action {
                    None => "unknown_token",
                    Some(a) if a.created_ms + TOKEN_TTL_MS <= now => "expired",
                    Some(a) if a.state != State::ChallengeSucceeded => "not_succeeded",
                    Some(a) if a.token_used => "already_used",
                    Some(a) => {
                        a.token_used = true;
                        "valid"
                    }
                };
                prop_assert_eq!(got.reason.map_or("valid", |r| r.as_str()), expected);
                prop_assert_eq!(got.is_valid, expected == "valid");
            }
            Op::Advance(ms) => {
                now += ms;
                clock.advance(Duration::from_millis(ms));
            }
        }
        // Counting what is stored holds in memory, where an expired action leaves at the next insert; Redis
        // drops it on the wall clock, which these tests' fake clock does not move.
        if common::in_memory() {
            prop_assert!(e.stored_actions() <= capacity);
            prop_assert_eq!(e.stored_actions(), m.actions.len());
        }
    }
    prop_assert_eq!(e.decisions(), m.generations as u64);
    prop_assert!(generated <= m.generations);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn the_store_behaves_like_its_model(capacity in 1usize..8, ops in prop::collection::vec(op(), 1..80)) {
        run(capacity, &ops)?;
    }
}
