//! What a [`Replayer`](super::Replayer) writes for the random parts of a decision: challenge tokens and the
//! idempotency keys the engine generates for requests without one. Kept as they are, two replays of one log
//! differ in exactly those places; redacted or seeded, they diff cleanly.

use std::collections::{HashMap, VecDeque};
use xxhash_rust::xxh3::xxh3_64_with_seed;

/// How a [`Replayer`](super::Replayer) writes challenge tokens (see [`Replayer::tokens`](super::Replayer::tokens)).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Tokens {
    /// The engine's tokens and generated idempotency keys, as they are (random).
    #[default]
    Keep,
    /// Tokens (and the `url` carrying them) written as `<redacted>`; a request without an idempotency key gets
    /// one made from its line number (`replay-` and 16 hex digits), the same on every run.
    Redact,
    /// Tokens written as stand-ins made from this seed and the line number (`tok-` and 16 hex digits), and
    /// missing idempotency keys made as for `Redact` from the seed. A later `validateChallenge` line may name
    /// a stand-in: it is handed to the engine as the real token.
    Seeded(u64),
}

/// The most stand-ins kept for `validateChallenge` lines to name; the oldest is forgotten first.
pub const MAX_STAND_INS: usize = 65_536;

const REDACTED: &str = "<redacted>";

#[derive(Debug, Default)]
pub(super) struct StandIns {
    pub(super) mode: Tokens,
    real: HashMap<String, String>,
    order: VecDeque<String>,
}

impl StandIns {
    fn seed(&self) -> Option<u64> {
        match self.mode {
            Tokens::Keep => None,
            Tokens::Redact => Some(0),
            Tokens::Seeded(s) => Some(s),
        }
    }

    /// The idempotency key for line `line` of a request that has none, unless tokens are kept.
    pub(super) fn key(&self, line: u64) -> Option<String> {
        let seed = self.seed()?;
        Some(format!(
            "replay-{:016x}",
            xxh3_64_with_seed(&line.to_le_bytes(), seed)
        ))
    }

    /// Replaces the token of a response decided on line `line` (and the token inside its `url`).
    pub(super) fn hide(&mut self, token: &mut Option<String>, url: &mut Option<String>, line: u64) {
        let Some(real) = token.take() else { return };
        let shown = match self.mode {
            Tokens::Keep => {
                *token = Some(real);
                return;
            }
            Tokens::Redact => REDACTED.to_owned(),
            Tokens::Seeded(seed) => {
                let s = format!(
                    "tok-{:016x}",
                    xxh3_64_with_seed(&line.to_le_bytes(), seed ^ 0x746f_6b65_6e73)
                );
                if self.order.len() >= MAX_STAND_INS {
                    if let Some(old) = self.order.pop_front() {
                        self.real.remove(&old);
                    }
                }
                if self.real.insert(s.clone(), real.clone()).is_none() {
                    self.order.push_back(s.clone());
                }
                s
            }
        };
        if let Some(u) = url.as_mut() {
            *u = u.replace(&real, &shown);
        }
        *token = Some(shown);
    }

    /// The token a `validateChallenge` line means: the real one behind a stand-in, or the text as given.
    pub(super) fn real<'a>(&'a self, given: &'a str) -> &'a str {
        self.real.get(given).map_or(given, String::as_str)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeded_stand_ins_are_stable_and_map_back() {
        let mut a = StandIns {
            mode: Tokens::Seeded(7),
            ..StandIns::default()
        };
        let mut t = Some("real-token".to_owned());
        let mut u = Some("https://x/c?token=real-token".to_owned());
        a.hide(&mut t, &mut u, 3);
        let shown = t.clone().unwrap();
        assert!(shown.starts_with("tok-") && shown.len() == 20, "{shown}");
        assert_eq!(
            u.as_deref(),
            Some(format!("https://x/c?token={shown}").as_str())
        );
        assert_eq!(a.real(&shown), "real-token");
        assert_eq!(a.real("other"), "other");
        let mut b = StandIns {
            mode: Tokens::Seeded(7),
            ..StandIns::default()
        };
        let mut t2 = Some("another-random-token".to_owned());
        b.hide(&mut t2, &mut None, 3);
        assert_eq!(t2, t);
        assert_eq!(a.key(3), b.key(3));
        assert_ne!(a.key(3), a.key(4));
    }

    #[test]
    fn redacted_tokens_and_kept_tokens() {
        let mut r = StandIns {
            mode: Tokens::Redact,
            ..StandIns::default()
        };
        let mut t = Some("secret".to_owned());
        let mut u = Some("https://x/?t=secret".to_owned());
        r.hide(&mut t, &mut u, 1);
        assert_eq!(t.as_deref(), Some("<redacted>"));
        assert_eq!(u.as_deref(), Some("https://x/?t=<redacted>"));
        assert_eq!(r.real("<redacted>"), "<redacted>");
        let mut k = StandIns::default();
        let mut t = Some("secret".to_owned());
        k.hide(&mut t, &mut None, 1);
        assert_eq!((t.as_deref(), k.key(1)), (Some("secret"), None));
    }

    #[test]
    fn stand_ins_are_bounded() {
        let mut s = StandIns {
            mode: Tokens::Seeded(1),
            ..StandIns::default()
        };
        for line in 0..(MAX_STAND_INS as u64 + 10) {
            let mut t = Some(format!("t{line}"));
            s.hide(&mut t, &mut None, line);
        }
        assert_eq!(
            (s.real.len(), s.order.len()),
            (MAX_STAND_INS, MAX_STAND_INS)
        );
    }
}
