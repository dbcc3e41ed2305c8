//! Challenge tokens, written once: how a token is made, hashed for lookup, compared and timed. The engine
//! makes one for each `CHALLENGE_REQUIRED` decision; the store keeps it with its action (see
//! `Store::register_token`).

use base64::Engine as _;
use rand::rngs::ChaCha20Rng;
use rand::{Rng as _, SeedableRng as _};
use std::cell::RefCell;

use crate::hash::{self, RandomSourceFailed, H128};
use crate::time::{DurationMs, EpochMs};

/// The longest text `validate_challenge` looks up; anything longer is no token of this engine's (a token is 32
/// characters).
pub(crate) const MAX_TOKEN_BYTES: usize = 128;

/// How many tokens a thread's generator makes before it draws a fresh seed from the operating system.
const TOKENS_PER_SEED: u32 = 4096;

thread_local! {
    /// This thread's token generator and how many tokens it made since it was seeded.
    static TOKEN_RNG: RefCell<Option<(ChaCha20Rng, u32)>> = const { RefCell::new(None) };
}

/// A fresh challenge token: 192 random bits, base64url without padding.
///
/// The bits come from a ChaCha20 generator per thread (a CSPRNG: its output cannot be predicted or told from
/// random without the key), keyed with 256 bits from the operating system's random source and re-keyed from
/// it every [`TOKENS_PER_SEED`] tokens, so no token costs a system call of its own. A random source that fails
/// when a seed is drawn fails the token (the engine then reports `TrackError::RandomSource`); no token is ever
/// made from a fixed or reused seed.
pub(crate) fn new_token() -> Result<String, RandomSourceFailed> {
    let mut bytes = [0u8; 24];
    let drawn = TOKEN_RNG.try_with(|cell| -> Result<bool, RandomSourceFailed> {
        let Ok(mut state) = cell.try_borrow_mut() else {
            return Ok(false);
        };
        if state.as_ref().is_none_or(|(_, n)| *n >= TOKENS_PER_SEED) {
            let mut seed = [0u8; 32];
            hash::fill_random(&mut seed)?;
            *state = Some((ChaCha20Rng::from_seed(seed), 0));
        }
        match state.as_mut() {
            Some((rng, n)) => {
                rng.fill_bytes(&mut bytes);
                *n += 1;
                Ok(true)
            }
            None => Ok(false),
        }
    });
    // Outside a thread's lifetime (a thread-local destructor), straight from the operating system.
    if !matches!(drawn, Ok(Ok(true))) {
        if let Ok(Err(e)) = drawn {
            return Err(e);
        }
        hash::fill_random(&mut bytes)?;
    }
    Ok(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes))
}

/// The hash a token is looked up by.
pub(crate) fn token_hash(token: &str) -> H128 {
    hash::xxh3_128(token.as_bytes())
}

/// Whether two tokens are equal, compared in constant time (for equal lengths).
pub(crate) fn same_token(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// When a token made at `now` with `[challenge] token_ttl` expires.
pub(crate) fn expires_at(now: EpochMs, ttl: DurationMs) -> EpochMs {
    now.plus(ttl)
}

/// Whether a token that expires at `expires` has expired at `now`.
pub(crate) fn is_expired(expires: EpochMs, now: EpochMs) -> bool {
    now >= expires
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_thread_reseeds_and_never_repeats_a_token() {
        let mut seen = std::collections::HashSet::new();
        for _ in 0..2 * TOKENS_PER_SEED + 3 {
            assert!(seen.insert(new_token().unwrap()));
        }
        // Threads have generators of their own, keyed apart.
        let other: Vec<String> =
            std::thread::spawn(|| (0..100).map(|_| new_token().unwrap()).collect())
                .join()
                .unwrap();
        assert!(other.iter().all(|t| !seen.contains(t)));
    }

    #[test]
    fn tokens_are_random_url_safe_and_compared_whole() {
        let (a, b) = (new_token().unwrap(), new_token().unwrap());
        assert_ne!(a, b);
        assert_eq!(a.len(), 32);
        assert!(a.len() <= MAX_TOKEN_BYTES);
        assert!(a
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_'));
        assert!(same_token(&a, &a.clone()));
        assert!(!same_token(&a, &b));
        assert!(!same_token(&a, &a[..31]));
        assert_eq!(token_hash(&a), token_hash(&a.clone()));
        assert_ne!(token_hash(&a), token_hash(&b));
    }

    #[test]
    fn a_failed_random_source_makes_no_token() {
        hash::FAIL_RANDOM.with(|f| f.set(true));
        let r = new_token();
        hash::FAIL_RANDOM.with(|f| f.set(false));
        assert_eq!(r, Err(RandomSourceFailed));
    }

    #[test]
    fn a_token_expires_exactly_at_its_ttl() {
        let at = expires_at(EpochMs::from_ms(1_000), DurationMs::from_ms(300_000));
        assert!(!is_expired(at, EpochMs::from_ms(300_999)));
        assert!(is_expired(at, EpochMs::from_ms(301_000)));
    }
}
