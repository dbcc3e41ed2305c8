//! Hashing, written once: the keyed identity hash, unkeyed byte hashing (xxh3), the seeded history keys, the keyed
//! request fingerprint hash (SipHash-1-3 over 64-bit words), the bucket hasher for keys that are already
//! hashes, and the engine's secret keys.
//!
//! # Keys and the random source
//! An engine draws all of its keys ([`EngineKeys`]) once, in `EngineBuilder::build`, from the operating
//! system's random source. Should that source fail, the build fails with `LoadError::RandomSource`: an engine
//! never runs with fixed or guessable keys. The keys guard against callers who choose the strings hashed (user
//! ids, idempotency keys, IPs, devices, custom values): the fingerprint key keeps a caller from aiming two
//! different requests at one fingerprint, the identity key (derived from the fingerprint key) from aiming two
//! identities at one stored action, the history seed and the bucket keys keep one from flooding a single
//! history key or hash-table bucket.
//!
//! This module imports nothing from the rest of the crate.

use std::hash::{BuildHasher, Hasher};

/// A 128-bit hash stored as two `u64`s: a `u128` aligns to 16 bytes, which pads every slot and map entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct H128([u64; 2]);

impl From<u128> for H128 {
    fn from(v: u128) -> Self {
        H128([v as u64, (v >> 64) as u64])
    }
}

impl From<[u64; 2]> for H128 {
    fn from(v: [u64; 2]) -> Self {
        H128(v)
    }
}

impl From<H128> for [u64; 2] {
    fn from(h: H128) -> Self {
        h.0
    }
}

impl std::hash::Hash for H128 {
    fn hash<S: Hasher>(&self, state: &mut S) {
        state.write_u64(self.0[0] ^ self.0[1]);
    }
}

/// The secret key of action identities (the action store's map keys): 128 bits, derived from the fingerprint
/// key ([`EngineKeys::identity`]), so it is as secret as that key and persisted with it.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) struct IdentityKey([u8; 16]);

/// Hashes an action identity with the keyed 128-bit SipHash-1-3. The store keeps no identity strings, so this
/// hash is the identity: keyed, a caller who chooses user ids and idempotency keys cannot search for two
/// identities that share it.
///
/// The message is the three lengths, a word each, then each string cut into words by [`Absorb::bytes`]: with
/// every length fixed first, the words determine the three strings, so `("ab", "c")` and `("a", "bc")` differ,
/// whatever the lengths (a request fingerprinted before validation may hold strings of any length). Built in
/// registers, with no buffer.
///
/// Snapshots (format version 3) save actions under this hash: a change to it needs a new format version.
#[inline]
pub(crate) fn identity_hash(key: &IdentityKey, user_id: &str, action: &str, idem: &str) -> H128 {
    let mut h = Sip13::keyed(key.0);
    h.word(user_id.len() as u64);
    h.word(action.len() as u64);
    h.word(idem.len() as u64);
    h.bytes(user_id.as_bytes());
    h.bytes(action.as_bytes());
    h.bytes(idem.as_bytes());
    h.finish().into()
}

/// The 128-bit xxh3 of `bytes` (unkeyed).
pub(crate) fn xxh3_128(bytes: &[u8]) -> H128 {
    xxhash_rust::xxh3::xxh3_128(bytes).into()
}

/// The 64-bit xxh3 of `bytes` (unkeyed): cache slots and change detection, never a key callers can aim at.
pub(crate) fn xxh3_64(bytes: &[u8]) -> u64 {
    xxhash_rust::xxh3::xxh3_64(bytes)
}

#[cfg(any(feature = "redis", test))]
thread_local! {
    static HASH_BUF: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// The 128-bit xxh3 of the bytes `write` lays out, hashed in one pass over a per-thread buffer: the same value
/// as feeding them to a streaming hasher piece by piece, at a fraction of the cost for short pieces.
#[cfg(any(feature = "redis", test))]
pub(crate) fn hash_bytes(write: impl FnOnce(&mut Vec<u8>)) -> u128 {
    with_buffer(write, xxhash_rust::xxh3::xxh3_128)
}

#[cfg(any(feature = "redis", test))]
fn with_buffer(write: impl FnOnce(&mut Vec<u8>), hash: impl FnOnce(&[u8]) -> u128) -> u128 {
    HASH_BUF.with(|cell| match cell.try_borrow_mut() {
        Ok(mut buf) => {
            buf.clear();
            write(&mut buf);
            let h = hash(&buf);
            // Keep the buffer from pinning a rare huge request's memory.
            if buf.capacity() > 64 * 1024 {
                *buf = Vec::new();
            }
            h
        }
        Err(_) => {
            let mut buf = Vec::new();
            write(&mut buf);
            hash(&buf)
        }
    })
}

/// The secret key of the request fingerprint (`TrackRequest::fingerprint`): 128 bits, one per engine.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) struct FingerprintKey([u8; 16]);

/// A 128-bit key as SipHash's two 64-bit halves.
fn key_words(key: &[u8; 16]) -> [u64; 2] {
    let [lo, hi] = [&key[..8], &key[8..]].map(|h| {
        let mut w = [0u8; 8];
        w.copy_from_slice(h);
        u64::from_le_bytes(w)
    });
    [lo, hi]
}

/// A sink for 64-bit words, with the one way strings are cut into them.
pub(crate) trait Absorb {
    /// Takes one word.
    fn word(&mut self, w: u64);

    /// Takes `s` as `s.len().div_ceil(8)` words. The words determine `s` only together with its length, so the
    /// caller must have written the length (or otherwise fixed it) before.
    ///
    /// The whole words are `s`'s 8-byte chunks; a shorter remainder becomes one more word: the last 8 bytes of
    /// `s` when it has more than 8 (overlapping the last chunk), otherwise its first and last 4 bytes (which
    /// overlap below 8), or, for 1 to 3 bytes, its first, middle and last byte. Given the length, each of
    /// these holds every byte it stands for, so the words still determine `s`; and no piece is carried from
    /// one string to the next.
    #[inline]
    fn bytes(&mut self, s: &[u8]) {
        let mut chunks = s.chunks_exact(8);
        for c in &mut chunks {
            let mut w = [0u8; 8];
            w.copy_from_slice(c);
            self.word(u64::from_le_bytes(w));
        }
        let rest = chunks.remainder();
        let n = rest.len();
        if n == 0 {
            return;
        }
        let last = if let Some(tail) = s.last_chunk::<8>() {
            u64::from_le_bytes(*tail)
        } else if let (Some(lo), Some(hi)) = (rest.first_chunk::<4>(), rest.last_chunk::<4>()) {
            u64::from(u32::from_le_bytes(*lo)) | u64::from(u32::from_le_bytes(*hi)) << 32
        } else {
            u64::from(rest[0]) | u64::from(rest[n / 2]) << 8 | u64::from(rest[n - 1]) << 16
        };
        self.word(last);
    }
}

/// Keyed SipHash-1-3 with a 128-bit output, fed 64-bit words: the request fingerprint's PRF.
///
/// It computes the reference SipHash-1-3 (128-bit variant) of the message made of the words it took, each as
/// its eight little-endian bytes (`tests::the_word_hasher_is_siphash_1_3` checks it against the `siphasher`
/// crate), so it is a PRF exactly as far as SipHash-1-3 is. Taking words, not bytes, leaves the layout to the
/// caller, which builds them in registers (`TrackRequest::fingerprint`): no buffer filled piece by piece, no
/// copy, no partial word carried from one piece to the next.
pub(crate) struct Sip13 {
    v0: u64,
    v1: u64,
    v2: u64,
    v3: u64,
    /// Words absorbed so far: the message length SipHash folds into its last block.
    words: u64,
}

impl Sip13 {
    /// A fresh state keyed with the fingerprint key.
    #[inline]
    pub fn new(key: &FingerprintKey) -> Self {
        Self::keyed(key.0)
    }

    /// A fresh state keyed with `key`.
    #[inline]
    fn keyed(key: [u8; 16]) -> Self {
        let [k0, k1] = key_words(&key);
        Sip13 {
            v0: k0 ^ 0x736f_6d65_7073_6575,
            // 0xee: the 128-bit variant's domain separation.
            v1: k1 ^ 0x646f_7261_6e64_6f6d ^ 0xee,
            v2: k0 ^ 0x6c79_6765_6e65_7261,
            v3: k1 ^ 0x7465_6462_7974_6573,
            words: 0,
        }
    }

    #[inline(always)]
    fn round(&mut self) {
        self.v0 = self.v0.wrapping_add(self.v1);
        self.v1 = self.v1.rotate_left(13) ^ self.v0;
        self.v0 = self.v0.rotate_left(32);
        self.v2 = self.v2.wrapping_add(self.v3);
        self.v3 = self.v3.rotate_left(16) ^ self.v2;
        self.v0 = self.v0.wrapping_add(self.v3);
        self.v3 = self.v3.rotate_left(21) ^ self.v0;
        self.v2 = self.v2.wrapping_add(self.v1);
        self.v1 = self.v1.rotate_left(17) ^ self.v2;
        self.v2 = self.v2.rotate_left(32);
    }

    /// The 128-bit hash of what was absorbed (SipHash's finalisation: the length block, then 3 rounds per half).
    #[inline]
    pub fn finish(mut self) -> u128 {
        let b = (self.words.wrapping_mul(8) & 0xff) << 56;
        self.v3 ^= b;
        self.round();
        self.v0 ^= b;
        self.v2 ^= 0xee;
        self.round();
        self.round();
        self.round();
        let h1 = self.v0 ^ self.v1 ^ self.v2 ^ self.v3;
        self.v1 ^= 0xdd;
        self.round();
        self.round();
        self.round();
        let h2 = self.v0 ^ self.v1 ^ self.v2 ^ self.v3;
        u128::from(h1) | u128::from(h2) << 64
    }
}

impl Absorb for Sip13 {
    /// One compression round per word: the "1" of SipHash-1-3.
    #[inline(always)]
    fn word(&mut self, m: u64) {
        self.v3 ^= m;
        self.round();
        self.v0 ^= m;
        self.words += 1;
    }
}

/// A seeded 64-bit xxh3, one seed per engine: the keys history stores its series and sets under.
#[derive(Clone, Copy)]
pub(crate) struct Seeded(u64);

impl Seeded {
    /// The hash of `value` under a one-byte `tag` (which keeps kinds of value apart).
    pub fn tagged(&self, tag: u8, value: &[u8]) -> u64 {
        let mut h = xxhash_rust::xxh3::Xxh3::with_seed(self.0);
        h.update(&[tag]);
        h.update(value);
        h.digest()
    }

    /// Tells seeds apart, for caches of values hashed with one (it is the seed: never let it leave the
    /// process).
    pub fn id(&self) -> u64 {
        self.0
    }

    /// The hash of `bytes` as they are.
    pub fn bytes(&self, bytes: &[u8]) -> u64 {
        xxhash_rust::xxh3::xxh3_64_with_seed(bytes, self.0)
    }

    /// A one-shot hash of `bytes` under `tag`, the tag folded into the seed (cheaper than [`Seeded::tagged`]'s
    /// streaming state on short strings; the two never need to agree).
    pub fn quick(&self, tag: u8, bytes: &[u8]) -> u64 {
        let seed = self.0 ^ u64::from(tag).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        xxhash_rust::xxh3::xxh3_64_with_seed(bytes, seed)
    }
}

/// The bucket hasher of maps whose keys are already hashes (xxh3 of an identity, a token, a history key).
///
/// Those hashes are unkeyed or their seed is shared by every map, and callers choose the strings hashed, so
/// the bucket a key lands in must not be predictable from outside: otherwise a caller could search offline
/// for keys that share the low bits hash tables index by and flood one probe sequence (hash flooding).
/// [`PreHashed::finish`] therefore passes the value through a folded multiply with two secret keys, as
/// foldhash and ahash do. It costs about a nanosecond.
#[derive(Clone, Copy)]
pub(crate) struct BucketKeys([u64; 2]);

impl BuildHasher for BucketKeys {
    type Hasher = PreHashed;
    fn build_hasher(&self) -> PreHashed {
        PreHashed {
            value: 0,
            keys: self.0,
        }
    }
}

/// The hasher [`BucketKeys`] builds: xors what it is fed into one word, then mixes it with the keys.
pub(crate) struct PreHashed {
    value: u64,
    keys: [u64; 2],
}

impl Hasher for PreHashed {
    fn finish(&self) -> u64 {
        let [k0, k1] = self.keys;
        let p = u128::from(self.value ^ k0) * u128::from(k1);
        (p as u64) ^ ((p >> 64) as u64)
    }
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut b = [0u8; 8];
            b[..chunk.len()].copy_from_slice(chunk);
            self.value ^= u64::from_le_bytes(b);
        }
    }
    fn write_u64(&mut self, v: u64) {
        self.value ^= v;
    }
    fn write_u128(&mut self, v: u128) {
        self.value ^= (v as u64) ^ ((v >> 64) as u64);
    }
}

/// A map keyed by hashes, bucketed with secret keys.
pub(crate) type PreHashedMap<K, V> = dashmap::DashMap<K, V, BucketKeys>;

/// Every secret an engine hashes with, drawn together from the operating system's random source.
#[derive(Clone, Copy)]
pub(crate) struct EngineKeys {
    pub fingerprint: FingerprintKey,
    pub history: Seeded,
    pub buckets: BucketKeys,
}

/// The operating system's random source failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RandomSourceFailed;

impl EngineKeys {
    /// Fresh keys, or the random source's failure (never fixed or derived keys in its place).
    pub fn draw() -> Result<Self, RandomSourceFailed> {
        let mut fingerprint = [0u8; 16];
        fill_random(&mut fingerprint)?;
        let word = || -> Result<u64, RandomSourceFailed> {
            let mut w = [0u8; 8];
            fill_random(&mut w)?;
            Ok(u64::from_le_bytes(w))
        };
        Ok(EngineKeys {
            fingerprint: FingerprintKey(fingerprint),
            history: Seeded(word()?),
            // An odd multiplier keeps the folded multiply a bijection of the low word.
            buckets: BucketKeys([word()?, word()? | 1]),
        })
    }
}

impl EngineKeys {
    /// The key of action identities: the fingerprint key's SipHash of a constant, so that it is persisted
    /// wherever the fingerprint key is (a state file's keys) and independent of it for every other use.
    pub fn identity(&self) -> IdentityKey {
        const LABEL: &[u8] = b"riskgate action identity key";
        let mut h = Sip13::new(&self.fingerprint);
        h.word(LABEL.len() as u64);
        h.bytes(LABEL);
        IdentityKey(h.finish().to_le_bytes())
    }

    /// The keys every engine sharing one state store must agree on (the fingerprint key and the history seed),
    /// as bytes for the store to keep.
    pub fn shared_bytes(&self) -> [u8; 24] {
        let mut b = [0u8; 24];
        b[..16].copy_from_slice(&self.fingerprint.0);
        b[16..].copy_from_slice(&self.history.0.to_le_bytes());
        b
    }

    /// These keys with the shared ones replaced by `bytes` (from [`EngineKeys::shared_bytes`] of the first
    /// engine on the store, or from a state file); the bucket keys stay this engine's own.
    pub fn with_shared(mut self, bytes: &[u8; 24]) -> Self {
        let mut f = [0u8; 16];
        f.copy_from_slice(&bytes[..16]);
        let mut h = [0u8; 8];
        h.copy_from_slice(&bytes[16..]);
        self.fingerprint = FingerprintKey(f);
        self.history = Seeded(u64::from_le_bytes(h));
        self
    }
}

#[cfg(test)]
thread_local! {
    /// Makes [`fill_random`] fail on this thread, as a broken random source would.
    pub(crate) static FAIL_RANDOM: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Fills `bytes` from the operating system's random source.
pub(crate) fn fill_random(bytes: &mut [u8]) -> Result<(), RandomSourceFailed> {
    #[cfg(test)]
    if FAIL_RANDOM.with(std::cell::Cell::get) {
        return Err(RandomSourceFailed);
    }
    getrandom::fill(bytes).map_err(|_| RandomSourceFailed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys() -> EngineKeys {
        EngineKeys::draw().unwrap()
    }

    #[test]
    fn bucket_hashes_are_keyed_and_spread_low_bits() {
        let b = keys().buckets;
        // Keys that agree in their low 20 bits (what a flooder would search for) must not share buckets.
        let buckets: std::collections::HashSet<u64> = (0u64..1000)
            .map(|i| b.hash_one(H128::from(u128::from(i << 20))) & 0xfffff)
            .collect();
        assert!(buckets.len() > 990, "{} distinct buckets", buckets.len());
        // And the mapping is not the identity, and depends on the keys: another engine buckets differently.
        assert_ne!(b.hash_one(H128::from(0u128)), 0);
        let other = keys().buckets;
        assert_ne!(
            b.hash_one(H128::from(7u128)),
            other.hash_one(H128::from(7u128))
        );
    }

    #[test]
    fn every_draw_gives_different_keys() {
        let (a, b) = (keys(), keys());
        assert!(a.fingerprint != b.fingerprint);
        assert_ne!(a.history.bytes(b"x"), b.history.bytes(b"x"));
        assert_ne!(a.buckets.0, b.buckets.0);
        assert_eq!(a.buckets.0[1] & 1, 1);
    }

    #[test]
    fn a_failed_random_source_gives_no_keys() {
        FAIL_RANDOM.with(|f| f.set(true));
        let r = EngineKeys::draw();
        FAIL_RANDOM.with(|f| f.set(false));
        assert!(matches!(r, Err(RandomSourceFailed)));
        assert!(EngineKeys::draw().is_ok());
    }

    #[test]
    fn the_word_hasher_is_siphash_1_3() {
        let key = keys().fingerprint;
        let mut words = Vec::new();
        let mut x = 0x0123_4567_89ab_cdefu64;
        // Up to 40 words: the message length byte wraps at 32 words.
        for n in 0..=40 {
            let mut h = Sip13::new(&key);
            let mut bytes = Vec::new();
            for w in &words {
                h.word(*w);
                bytes.extend_from_slice(&u64::to_le_bytes(*w));
            }
            let reference = siphasher::sip128::SipHasher13::new_with_key(&key.0).hash(&bytes);
            assert_eq!(h.finish(), reference.as_u128(), "{n} words");
            x = x.rotate_left(23).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ n;
            words.push(x);
        }
        // Keyed: another engine's secret hashes the same words differently.
        let (mut a, mut b) = (Sip13::new(&key), Sip13::new(&keys().fingerprint));
        a.word(1);
        b.word(1);
        assert_ne!(a.finish(), b.finish());
    }

    /// What `Absorb::bytes` cuts a string into.
    fn cut(s: &[u8]) -> Vec<u64> {
        struct Words(Vec<u64>);
        impl Absorb for Words {
            fn word(&mut self, w: u64) {
                self.0.push(w);
            }
        }
        let mut w = Words(Vec::new());
        w.bytes(s);
        w.0
    }

    #[test]
    fn strings_are_cut_into_words_that_hold_every_byte() {
        let word = |b: &[u8]| {
            let mut w = [0u8; 8];
            w[..b.len()].copy_from_slice(b);
            u64::from_le_bytes(w)
        };
        assert_eq!(cut(b""), Vec::<u64>::new());
        assert_eq!(cut(b"a"), [word(b"aaa")]);
        assert_eq!(cut(b"ab"), [word(b"abb")]);
        assert_eq!(cut(b"abc"), [word(b"abc")]);
        assert_eq!(cut(b"abcd"), [word(b"abcdabcd")]);
        assert_eq!(cut(b"abcdefg"), [word(b"abcddefg")]);
        assert_eq!(cut(b"abcdefgh"), [word(b"abcdefgh")]);
        assert_eq!(cut(b"abcdefghijk"), [word(b"abcdefgh"), word(b"defghijk")]);
        // Strings of one length share words only if they are equal: every string of 1 to 11 bytes over a
        // two-letter alphabet (so that any byte left out would show).
        for len in 1..=11usize {
            let mut seen = std::collections::HashMap::new();
            for bits in 0..1u32 << len {
                let s: Vec<u8> = (0..len).map(|j| b'a' + (bits >> j & 1) as u8).collect();
                let w = cut(&s);
                assert_eq!(w.len(), len.div_ceil(8));
                assert_eq!(
                    seen.insert(w, s),
                    None,
                    "two strings of {len} bytes share words"
                );
            }
        }
    }

    #[test]
    fn byte_hashing_matches_the_streaming_hasher() {
        let h = hash_bytes(|b| b.extend_from_slice(b"abc"));
        assert_eq!(h, xxhash_rust::xxh3::xxh3_128(b"abc"));
        let s = keys().history;
        let mut st = xxhash_rust::xxh3::Xxh3::with_seed(s.0);
        st.update(b"tvalue");
        assert_eq!(s.tagged(b't', b"value"), st.digest());
    }

    #[test]
    fn identity_hashes_are_keyed_and_unambiguous() {
        let k = keys();
        let id = k.identity();
        assert_ne!(
            identity_hash(&id, "ab", "c", ""),
            identity_hash(&id, "a", "bc", "")
        );
        assert_ne!(
            identity_hash(&id, "a", "b", "c"),
            identity_hash(&id, "a", "bc", "")
        );
        assert_eq!(
            identity_hash(&id, "u", "a", "k"),
            identity_hash(&k.identity(), "u", "a", "k")
        );
        // Keyed: another engine's key gives another hash, and the same keys restored give the same one.
        assert_ne!(
            identity_hash(&id, "u", "a", "k"),
            identity_hash(&keys().identity(), "u", "a", "k")
        );
        // The reference SipHash-1-3 of the length words and the strings' words as bytes: the layout snapshots
        // depend on.
        let reference = |u: &str, a: &str, i: &str| {
            let mut words = vec![u.len() as u64, a.len() as u64, i.len() as u64];
            for piece in [u, a, i] {
                words.extend(cut(piece.as_bytes()));
            }
            let bytes: Vec<u8> = words.iter().flat_map(|w| w.to_le_bytes()).collect();
            H128::from(
                siphasher::sip128::SipHasher13::new_with_key(&id.0)
                    .hash(&bytes)
                    .as_u128(),
            )
        };
        for (u, a, i) in [
            ("", "", ""),
            ("user-000001", "signIn", "bench-0000002a-deadbeef"),
            ("u", "withdraw-funds", &"k".repeat(300)),
        ] {
            assert_eq!(identity_hash(&id, u, a, i), reference(u, a, i));
        }
        let restored = keys().with_shared(&k.shared_bytes());
        assert_eq!(
            identity_hash(&restored.identity(), "u", "a", "k"),
            identity_hash(&id, "u", "a", "k")
        );
    }
}
