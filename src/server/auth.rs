//! The API secret and HTTP Basic authentication, as Authsignal does it: the secret is the username, the
//! password is empty (and ignored).

use base64::Engine as _;
use std::path::Path;
use subtle::ConstantTimeEq;

/// The environment variable `riskgate serve` reads the API secret from when no `--secret-file` is given.
pub const SECRET_ENV: &str = "RISKGATE_SECRET";

/// The longest secret accepted, in bytes.
const MAX_SECRET_BYTES: usize = 1024;

/// The API secret every `/v1` request must carry. `Debug` never prints it.
#[derive(Clone)]
pub struct Secret(Vec<u8>);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

impl Secret {
    /// A secret from its text: 1 to 1024 bytes, no control characters, no `:` (it travels as a Basic
    /// username, which ends at the first `:`).
    pub fn new(text: &str) -> Result<Secret, String> {
        if text.is_empty() {
            return Err("the API secret is empty".to_owned());
        }
        if text.len() > MAX_SECRET_BYTES {
            return Err(format!(
                "the API secret is {} bytes, at most {MAX_SECRET_BYTES} are allowed",
                text.len()
            ));
        }
        if text.chars().any(|c| c.is_control() || c == ':') {
            return Err("the API secret must not contain control characters or `:`".to_owned());
        }
        Ok(Secret(text.as_bytes().to_vec()))
    }

    /// Reads the secret from a file; one trailing newline is dropped. The file must be a regular file of at
    /// most the secret's bound plus a line ending: a device, a FIFO or a large file is refused without being
    /// read whole.
    pub fn from_file(path: &Path) -> Result<Secret, String> {
        let limit = MAX_SECRET_BYTES as u64 + 2;
        let bytes = crate::files::read_bounded(path, limit).map_err(|e| match e {
            crate::files::ReadError::Io(e) => {
                format!("cannot read the secret file `{}`: {e}", path.display())
            }
            crate::files::ReadError::NotRegular(t) => format!(
                "the secret file `{}` is {t}: it must be a regular file",
                path.display()
            ),
            crate::files::ReadError::TooLarge(_) => format!(
                "the secret file `{}` is larger than {limit} bytes: the API secret is at most \
                 {MAX_SECRET_BYTES} bytes",
                path.display()
            ),
        })?;
        let text = String::from_utf8(bytes)
            .map_err(|_| format!("the secret file `{}` is not UTF-8", path.display()))?;
        let text = text
            .strip_suffix('\n')
            .map(|t| t.strip_suffix('\r').unwrap_or(t))
            .unwrap_or(&text);
        Secret::new(text).map_err(|e| format!("`{}`: {e}", path.display()))
    }

    /// Reads the secret from `RISKGATE_SECRET`.
    pub fn from_env() -> Result<Secret, String> {
        match std::env::var(SECRET_ENV) {
            Ok(v) => Secret::new(&v).map_err(|e| format!("`{SECRET_ENV}`: {e}")),
            Err(std::env::VarError::NotPresent) => Err(format!(
                "no API secret: give `--secret-file PATH` or set `{SECRET_ENV}`"
            )),
            Err(std::env::VarError::NotUnicode(_)) => Err(format!("`{SECRET_ENV}` is not UTF-8")),
        }
    }

    /// Whether `given` is the secret. Takes the same time for every `given` of a length: every byte of the
    /// secret is compared, and a shorter or longer `given` is compared against padding.
    pub fn matches(&self, given: &[u8]) -> bool {
        let mut same = given.len().ct_eq(&self.0.len());
        for (i, &b) in self.0.iter().enumerate() {
            let g = given.get(i).copied().unwrap_or(0);
            same &= g.ct_eq(&b);
        }
        same.into()
    }
}

/// The username of an `Authorization: Basic …` header value, if it is one.
pub(crate) fn basic_username(value: &[u8]) -> Option<Vec<u8>> {
    let (scheme, rest) = value.split_at_checked(6)?;
    if !scheme.eq_ignore_ascii_case(b"basic ") {
        return None;
    }
    let rest = rest.trim_ascii();
    if rest.len() > 4 * MAX_SECRET_BYTES {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(rest)
        .ok()?;
    let end = decoded
        .iter()
        .position(|&b| b == b':')
        .unwrap_or(decoded.len());
    let mut user = decoded;
    user.truncate(end);
    Some(user)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_secret_file_is_read_within_its_bound() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("secret");
        std::fs::write(&p, format!("{}\r\n", "s".repeat(MAX_SECRET_BYTES))).unwrap();
        assert!(Secret::from_file(&p)
            .unwrap()
            .matches("s".repeat(MAX_SECRET_BYTES).as_bytes()));
        std::fs::write(&p, "s".repeat(10 * MAX_SECRET_BYTES)).unwrap();
        let err = Secret::from_file(&p).unwrap_err();
        assert!(err.contains("larger than 1026 bytes"), "{err}");
        std::fs::write(&p, [0xff, 0xfe]).unwrap();
        assert!(Secret::from_file(&p).unwrap_err().contains("not UTF-8"));
        #[cfg(unix)]
        {
            let err = Secret::from_file(Path::new("/dev/zero")).unwrap_err();
            assert!(err.contains("a device"), "{err}");
        }
    }

    #[test]
    fn only_the_exact_secret_matches() {
        let s = Secret::new("sk_test_123").unwrap();
        assert!(s.matches(b"sk_test_123"));
        for bad in [
            &b""[..],
            b"sk_test_12",
            b"sk_test_1234",
            b"SK_test_123",
            b"sk_test_124",
        ] {
            assert!(!s.matches(bad), "{bad:?}");
        }
    }

    #[test]
    fn basic_headers_are_read_as_authsignal_sends_them() {
        let h = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode("sk:")
        );
        assert_eq!(basic_username(h.as_bytes()).as_deref(), Some(&b"sk"[..]));
        let h = format!(
            "basic {}",
            base64::engine::general_purpose::STANDARD.encode("sk")
        );
        assert_eq!(basic_username(h.as_bytes()).as_deref(), Some(&b"sk"[..]));
        assert_eq!(basic_username(b"Bearer abc"), None);
        assert_eq!(basic_username(b"Basic !!!"), None);
        assert_eq!(basic_username(b"Basic"), None);
    }

    #[test]
    fn bad_secrets_are_refused_and_never_printed() {
        assert!(Secret::new("").is_err());
        assert!(Secret::new("a:b").is_err());
        assert!(Secret::new("a\nb").is_err());
        assert!(!format!("{:?}", Secret::new("hunter2").unwrap()).contains("hunter2"));
    }
}
