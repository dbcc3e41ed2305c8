//! Challenge tokens, written once: how a token is made, hashed for lookup, compared and timed. The engine
//! makes one for each `CHALLENGE_REQUIRED` decision; the store keeps it with its action (see
//! `Store::register_token`).

use base64::Engine as _;

use crate::hash::{self, RandomSourceFailed, H128};
use crate::time::{DurationMs, EpochMs};

/// The longest text `validate_challenge` looks up; anything longer is no token of this engine's (a token is 32
/// characters).
pub(crate) const MAX_TOKEN_BYTES: usize = 128;

/// A fresh challenge token: 192 bits from the operating system's random source, base64url without padding.
pub(crate) fn new_token() -> Result<String, RandomSourceFailed> {
    let mut bytes = [0u8; 24];
    hash::fill_random(&mut bytes)?;
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
