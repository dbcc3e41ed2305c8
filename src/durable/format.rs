//! The byte layout of riskgate's state files: little-endian fixed-width fields, length-prefixed strings, a
//! file header (magic, format version, header checksum) and checksummed frames.
//!
//! Checksums are 64-bit xxh3 (already in the tree for hashing): a flipped bit or a torn write changes it with
//! probability 1 − 2⁻⁶⁴, and it checks a snapshot at several GB/s.

use crate::hash::xxh3_64;

/// The format version this riskgate writes. It reads this one and every version from [`OLDEST_VERSION`]; a
/// file with another version is refused, naming both.
///
/// - 3: request fingerprints are SipHash-1-3 over a word encoding of the attributes
///   (`TrackRequest::fingerprint`), and the store key a snapshot saves an action under is the same word
///   hasher over the identity (`hash::identity_hash`).
/// - 2: a snapshot saves an action without a challenge token under its key in the store (the keyed hash of
///   its identity) instead of its identity strings; fingerprints and store keys hashed from byte buffers.
/// - 1: the first.
///
/// Versions 1 and 2 are refused rather than read: their fingerprints (and version 2's store keys) would no
/// longer match a repeat of the same request, so every repeat of their actions would be refused as a conflict
/// or decided again.
pub(crate) const VERSION: u32 = 3;

/// The oldest format version this riskgate reads.
pub(crate) const OLDEST_VERSION: u32 = 3;

/// The first eight bytes of a snapshot file.
pub(crate) const SNAPSHOT_MAGIC: [u8; 8] = *b"RGSNAP\r\n";
/// The first eight bytes of a journal file.
pub(crate) const JOURNAL_MAGIC: [u8; 8] = *b"RGJRNL\r\n";

/// The bytes of a file header: magic, version, generation, checksum of the first 20.
pub(crate) const HEADER_LEN: usize = 8 + 4 + 8 + 8;

/// The bytes in front of each frame's payload: its length (u32), a check of the length (u32), and the
/// payload's checksum (u64). The length check tells a damaged length (refused) from a frame whose write was cut
/// short (the torn tail a crash leaves).
pub(crate) const FRAME_HEAD: usize = 4 + 4 + 8;

fn len_check(len: u32) -> u32 {
    (xxh3_64(&len.to_le_bytes()) >> 32) as u32
}

/// What is wrong with a file, said so that an operator can act on it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Damaged(pub String);

impl Damaged {
    pub fn new(msg: impl Into<String>) -> Self {
        Damaged(msg.into())
    }
}

/// A file header.
pub(crate) fn header(magic: [u8; 8], generation: u64) -> [u8; HEADER_LEN] {
    header_version(magic, generation, VERSION)
}

/// A file header saying format version `version`.
pub(crate) fn header_version(magic: [u8; 8], generation: u64, version: u32) -> [u8; HEADER_LEN] {
    let mut h = [0u8; HEADER_LEN];
    h[..8].copy_from_slice(&magic);
    h[8..12].copy_from_slice(&version.to_le_bytes());
    h[12..20].copy_from_slice(&generation.to_le_bytes());
    let sum = xxh3_64(&h[..20]);
    h[20..].copy_from_slice(&sum.to_le_bytes());
    h
}

/// Checks a file's header and returns its generation.
pub(crate) fn read_header(bytes: &[u8], magic: [u8; 8], what: &str) -> Result<u64, Damaged> {
    read_header_version(bytes, magic, what).map(|(generation, _)| generation)
}

/// Checks a file's header and returns its generation and format version.
pub(crate) fn read_header_version(
    bytes: &[u8],
    magic: [u8; 8],
    what: &str,
) -> Result<(u64, u32), Damaged> {
    let h = bytes.get(..HEADER_LEN).ok_or_else(|| {
        Damaged::new(format!(
            "truncated: {} bytes, shorter than a {what} header",
            bytes.len()
        ))
    })?;
    if h[..8] != magic {
        return Err(Damaged::new(format!(
            "not a riskgate {what} (its first bytes are not the {what} magic)"
        )));
    }
    let version = u32::from_le_bytes([h[8], h[9], h[10], h[11]]);
    let sum = u64::from_le_bytes(h[20..28].try_into().unwrap_or_default());
    if sum != xxh3_64(&h[..20]) {
        return Err(Damaged::new(format!(
            "the {what} header's checksum does not match: the file is damaged"
        )));
    }
    if !(OLDEST_VERSION..=VERSION).contains(&version) {
        let reads = if OLDEST_VERSION == VERSION {
            format!("version {VERSION}")
        } else {
            format!("version {OLDEST_VERSION} to version {VERSION}")
        };
        return Err(Damaged::new(format!(
            "written in state format version {version}; this riskgate reads {reads} only (nothing was loaded \
             or changed)"
        )));
    }
    let generation = u64::from_le_bytes(h[12..20].try_into().unwrap_or_default());
    Ok((generation, version))
}

/// Appends a frame holding `payload` (at most 4 GiB).
#[cfg(test)]
pub(crate) fn frame(out: &mut Vec<u8>, payload: &[u8]) {
    frame_head(out, payload);
    out.extend_from_slice(payload);
}

/// Appends the head of a frame holding `payload` (its length, the length's check, its checksum).
pub(crate) fn frame_head(out: &mut Vec<u8>, payload: &[u8]) {
    let len = payload.len() as u32;
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&len_check(len).to_le_bytes());
    out.extend_from_slice(&xxh3_64(payload).to_le_bytes());
}

/// How a journal's frames end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Tail {
    /// Every frame is whole.
    Clean,
    /// The last frame is incomplete or fails its checksum with nothing after it: what a crash in the middle of a
    /// write leaves. Its records (never synced, so never acknowledged as durable) are not replayed.
    Torn { at: usize },
}

/// Calls `each` with every frame's payload after the header; a damaged frame followed by more bytes is an error.
pub(crate) fn frames<'a>(
    bytes: &'a [u8],
    mut each: impl FnMut(&'a [u8]) -> Result<(), Damaged>,
) -> Result<Tail, Damaged> {
    let mut at = HEADER_LEN;
    while at < bytes.len() {
        let Some(head) = bytes.get(at..at + FRAME_HEAD) else {
            return Ok(Tail::Torn { at });
        };
        let word = |i: usize| u32::from_le_bytes([head[i], head[i + 1], head[i + 2], head[i + 3]]);
        let len = word(0);
        if word(4) != len_check(len) {
            return Err(Damaged::new(format!(
                "the frame at byte {at} has a damaged length: the file is damaged"
            )));
        }
        let sum = u64::from_le_bytes(head[8..16].try_into().unwrap_or_default());
        let end = at + FRAME_HEAD + len as usize;
        let Some(payload) = bytes.get(at + FRAME_HEAD..end) else {
            return Ok(Tail::Torn { at });
        };
        if xxh3_64(payload) != sum {
            if end == bytes.len() {
                return Ok(Tail::Torn { at });
            }
            return Err(Damaged::new(format!(
                "the frame at byte {at} fails its checksum and more records follow it: the file is damaged"
            )));
        }
        each(payload)?;
        at = end;
    }
    Ok(Tail::Clean)
}

/// Little-endian field writers over a byte buffer.
pub(crate) trait Put {
    fn u8(&mut self, v: u8);
    fn u32(&mut self, v: u32);
    fn u64(&mut self, v: u64);
    fn i64(&mut self, v: i64);
    fn f64(&mut self, v: f64);
    fn bytes(&mut self, b: &[u8]);
    fn str(&mut self, s: &str);
}

impl Put for Vec<u8> {
    #[inline]
    fn u8(&mut self, v: u8) {
        self.push(v);
    }
    #[inline]
    fn u32(&mut self, v: u32) {
        self.extend_from_slice(&v.to_le_bytes());
    }
    #[inline]
    fn u64(&mut self, v: u64) {
        self.extend_from_slice(&v.to_le_bytes());
    }
    #[inline]
    fn i64(&mut self, v: i64) {
        self.extend_from_slice(&v.to_le_bytes());
    }
    #[inline]
    fn f64(&mut self, v: f64) {
        self.extend_from_slice(&v.to_bits().to_le_bytes());
    }
    #[inline]
    fn bytes(&mut self, b: &[u8]) {
        self.extend_from_slice(b);
    }
    /// A string of at most 4 GiB: its length (u32), then its bytes.
    #[inline]
    fn str(&mut self, s: &str) {
        self.u32(s.len() as u32);
        self.extend_from_slice(s.as_bytes());
    }
}

/// Reads fields back, failing (never panicking) on a short or malformed buffer.
pub(crate) struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

fn short() -> Damaged {
    Damaged::new("a record ends early: the file is damaged")
}

impl<'a> Reader<'a> {
    pub fn new(bytes: &'a [u8]) -> Self {
        Reader { bytes, at: 0 }
    }

    pub fn is_empty(&self) -> bool {
        self.at >= self.bytes.len()
    }

    #[inline]
    fn take<const N: usize>(&mut self) -> Result<[u8; N], Damaged> {
        let b = self.bytes.get(self.at..self.at + N).ok_or_else(short)?;
        self.at += N;
        b.try_into().map_err(|_| short())
    }

    #[inline]
    pub fn u8(&mut self) -> Result<u8, Damaged> {
        Ok(self.take::<1>()?[0])
    }
    #[inline]
    pub fn u32(&mut self) -> Result<u32, Damaged> {
        Ok(u32::from_le_bytes(self.take()?))
    }
    #[inline]
    pub fn u64(&mut self) -> Result<u64, Damaged> {
        Ok(u64::from_le_bytes(self.take()?))
    }
    #[inline]
    pub fn i64(&mut self) -> Result<i64, Damaged> {
        Ok(i64::from_le_bytes(self.take()?))
    }
    #[inline]
    pub fn f64(&mut self) -> Result<f64, Damaged> {
        Ok(f64::from_bits(self.u64()?))
    }
    pub fn bytes(&mut self, n: usize) -> Result<&'a [u8], Damaged> {
        let b = self
            .bytes
            .get(self.at..self.at.saturating_add(n))
            .ok_or_else(short)?;
        self.at += n;
        Ok(b)
    }
    pub fn str(&mut self) -> Result<&'a str, Damaged> {
        let n = self.u32()? as usize;
        std::str::from_utf8(self.bytes(n)?)
            .map_err(|_| Damaged::new("a string is not UTF-8: the file is damaged"))
    }
    /// A count of items that each take at least `min_bytes`: refused when the rest of the buffer cannot hold
    /// them, so a damaged count never makes a loader reserve memory the file does not back.
    pub fn count(&mut self, min_bytes: usize) -> Result<usize, Damaged> {
        let n = self.u32()? as usize;
        if n.saturating_mul(min_bytes.max(1)) > self.bytes.len() - self.at.min(self.bytes.len()) {
            return Err(short());
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_header_round_trips_and_another_version_is_named() {
        let h = header(JOURNAL_MAGIC, 7);
        assert_eq!(read_header(&h, JOURNAL_MAGIC, "journal"), Ok(7));
        assert!(read_header(&h, SNAPSHOT_MAGIC, "snapshot").is_err());
        let mut other = h;
        other[8..12].copy_from_slice(&9u32.to_le_bytes());
        let sum = xxh3_64(&other[..20]);
        other[20..].copy_from_slice(&sum.to_le_bytes());
        let e = read_header(&other, JOURNAL_MAGIC, "journal").unwrap_err();
        assert!(
            e.0.contains("version 9") && e.0.contains(&format!("version {VERSION}")),
            "{}",
            e.0
        );
        // Every version from the oldest read is read, and says which it is.
        for v in OLDEST_VERSION..=VERSION {
            let h = header_version(SNAPSHOT_MAGIC, 3, v);
            assert_eq!(
                read_header_version(&h, SNAPSHOT_MAGIC, "snapshot"),
                Ok((3, v))
            );
        }
        let newer = header_version(SNAPSHOT_MAGIC, 3, VERSION + 1);
        assert!(read_header(&newer, SNAPSHOT_MAGIC, "snapshot").is_err());
        let older = header_version(SNAPSHOT_MAGIC, 3, OLDEST_VERSION - 1);
        assert!(read_header(&older, SNAPSHOT_MAGIC, "snapshot").is_err());
    }

    #[test]
    fn a_torn_last_frame_is_the_tail_and_a_bad_middle_frame_is_damage() {
        let mut f = header(JOURNAL_MAGIC, 1).to_vec();
        frame(&mut f, b"one");
        frame(&mut f, b"two");
        let mut seen = Vec::new();
        let tail = frames(&f, |p| {
            seen.push(p.to_vec());
            Ok(())
        });
        assert_eq!(tail, Ok(Tail::Clean));
        assert_eq!(seen, [b"one".to_vec(), b"two".to_vec()]);
        for cut in HEADER_LEN + 1..f.len() {
            assert!(frames(&f[..cut], |_| Ok(())).is_ok(), "cut at {cut}");
        }
        let mut bad = f.clone();
        bad[HEADER_LEN + FRAME_HEAD] ^= 1;
        assert!(frames(&bad, |_| Ok(())).is_err());
        let last = f.len() - 1;
        let mut torn = f;
        torn[last] ^= 1;
        assert!(matches!(frames(&torn, |_| Ok(())), Ok(Tail::Torn { .. })));
    }

    #[test]
    fn a_reader_never_reads_past_its_end() {
        let mut r = Reader::new(&[1, 0, 0]);
        assert!(r.u32().is_err());
        let mut b = Vec::new();
        b.u32(1_000_000);
        assert!(Reader::new(&b).count(8).is_err());
    }
}
