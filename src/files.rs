//! Reading ruleset files: regular files only, each kind with a size bound.
//!
//! A rules folder is trusted to hold rules, not to be well-behaved: a path that is `/dev/zero` (or a symlink to
//! it) must not grow memory, and a FIFO named `b.rhai` must not block a reload forever. So every file a ruleset
//! reads is opened without blocking (`O_NONBLOCK`, which changes nothing for a regular file), checked to be a
//! regular file on the opened handle (no window between the check and the read), and read through
//! `take(limit + 1)`, so at most one byte more than the bound is ever held.

use std::io::Read;
use std::path::Path;

/// What a ruleset reads, each with its size bound.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// A `*.rhai` rule.
    Rule,
    /// A `lists/*.txt` list.
    List,
    /// `riskgate.toml`.
    Config,
    /// A `[geoip]` MaxMind database.
    Geoip,
}

/// The largest rule file read: 1 MiB.
pub const MAX_RULE_BYTES: u64 = 1 << 20;
/// The largest list file read: 64 MiB (about 3 million addresses or ranges).
pub const MAX_LIST_BYTES: u64 = 64 << 20;
/// The largest `riskgate.toml` read: 1 MiB.
pub const MAX_CONFIG_BYTES: u64 = 1 << 20;
/// The largest GeoIP database read: 1 GiB (GeoLite2-City is about 60 MB, GeoIP2-City about 120 MB).
pub const MAX_GEOIP_BYTES: u64 = 1 << 30;

impl Kind {
    /// The most bytes a file of this kind may hold.
    pub fn limit(self) -> u64 {
        match self {
            Kind::Rule => MAX_RULE_BYTES,
            Kind::List => MAX_LIST_BYTES,
            Kind::Config => MAX_CONFIG_BYTES,
            Kind::Geoip => MAX_GEOIP_BYTES,
        }
    }

    fn what(self) -> &'static str {
        match self {
            Kind::Rule => "a rule file",
            Kind::List => "a list file",
            Kind::Config => "`riskgate.toml`",
            Kind::Geoip => "a GeoIP database",
        }
    }
}

/// Why a file was not read.
#[derive(Debug)]
pub(crate) enum ReadError {
    /// The operating system refused (not found, no permission, …).
    Io(std::io::Error),
    /// The path is not a regular file (a FIFO, a device, a socket, a folder).
    NotRegular(&'static str),
    /// The file is larger than its kind allows.
    TooLarge(u64),
}

impl ReadError {
    /// A lowercase message naming the file.
    pub fn message(&self, path: &Path, kind: Kind) -> String {
        match self {
            ReadError::Io(e) => format!("cannot read `{}`: {e}", path.display()),
            ReadError::NotRegular(t) => format!(
                "`{}` is {t}, not a regular file: {} must be a regular file",
                path.display(),
                kind.what()
            ),
            ReadError::TooLarge(limit) => format!(
                "`{}` is larger than {limit} bytes, the most {} may hold",
                path.display(),
                kind.what()
            ),
        }
    }
}

/// Opens `path` for reading without blocking on a FIFO, and checks that what was opened is a regular file.
pub(crate) fn open_regular(path: &Path) -> Result<std::fs::File, ReadError> {
    let mut options = std::fs::OpenOptions::new();
    options.read(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.custom_flags(libc::O_NONBLOCK);
    }
    let file = options.open(path).map_err(ReadError::Io)?;
    let meta = file.metadata().map_err(ReadError::Io)?;
    if meta.is_file() {
        Ok(file)
    } else {
        Err(ReadError::NotRegular(type_name(&meta)))
    }
}

fn type_name(meta: &std::fs::Metadata) -> &'static str {
    let t = meta.file_type();
    if t.is_dir() {
        return "a folder";
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt;
        if t.is_fifo() {
            return "a FIFO";
        }
        if t.is_char_device() || t.is_block_device() {
            return "a device";
        }
        if t.is_socket() {
            return "a socket";
        }
    }
    "not a regular file"
}

/// Reads at most `limit` bytes of the regular file `path`; a longer file is refused without being held.
pub(crate) fn read_bounded(path: &Path, limit: u64) -> Result<Vec<u8>, ReadError> {
    let file = open_regular(path)?;
    let hint = file.metadata().map_or(0, |m| m.len()).min(limit);
    let mut buf = Vec::with_capacity(usize::try_from(hint).unwrap_or(0));
    file.take(limit.saturating_add(1))
        .read_to_end(&mut buf)
        .map_err(ReadError::Io)?;
    if buf.len() as u64 > limit {
        return Err(ReadError::TooLarge(limit));
    }
    Ok(buf)
}

/// Reads a ruleset file of `kind` as bytes.
pub(crate) fn read(path: &Path, kind: Kind) -> Result<Vec<u8>, ReadError> {
    read_bounded(path, kind.limit())
}

/// Reads a ruleset file of `kind` as UTF-8 text.
pub(crate) fn read_text(path: &Path, kind: Kind) -> Result<String, ReadError> {
    let bytes = read(path, kind)?;
    String::from_utf8(bytes).map_err(|_| {
        ReadError::Io(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "stream did not contain valid UTF-8",
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_one_byte_over_the_limit_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x");
        std::fs::write(&p, b"12345").unwrap();
        assert_eq!(read_bounded(&p, 5).unwrap(), b"12345");
        assert!(matches!(read_bounded(&p, 4), Err(ReadError::TooLarge(4))));
    }

    #[cfg(unix)]
    #[test]
    fn devices_and_folders_are_not_regular() {
        assert!(matches!(
            read_bounded(Path::new("/dev/zero"), 1 << 20),
            Err(ReadError::NotRegular("a device"))
        ));
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(
            read_bounded(dir.path(), 10),
            Err(ReadError::NotRegular("a folder"))
        ));
    }
}
