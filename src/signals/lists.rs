//! Lists rules test values against with `in_list(name, value)`: `rules/lists/<name>.txt`.
//!
//! One entry a line; `#` starts a comment (whole line or the rest of one); blank lines are ignored. An entry
//! that parses as an IP address or a CIDR range (`203.0.113.0/24`, `2001:db8::/32`) matches every address in
//! it; any other entry matches that exact string. IP ranges are merged into a sorted table of disjoint ranges
//! at load, so a lookup is a binary search: O(log n), no scan, whatever the list's size.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::sync::Arc;

use crate::error::Diagnostic;

/// The most bytes a list name may have.
const MAX_NAME_BYTES: usize = 64;

/// One loaded list.
#[derive(Debug, Default)]
pub(crate) struct List {
    exact: HashSet<Box<str>>,
    v4: Ranges<u32>,
    v6: Ranges<u128>,
}

/// Disjoint, sorted, non-adjacent inclusive ranges.
#[derive(Debug, Default)]
struct Ranges<T> {
    starts: Vec<T>,
    ends: Vec<T>,
}

impl<T: Copy + Ord + One> Ranges<T> {
    fn build(mut raw: Vec<(T, T)>) -> Self {
        raw.sort_unstable();
        let mut starts: Vec<T> = Vec::with_capacity(raw.len());
        let mut ends: Vec<T> = Vec::with_capacity(raw.len());
        for (s, e) in raw {
            match ends.last_mut() {
                Some(last) if s <= last.saturating_inc() => {
                    if e > *last {
                        *last = e;
                    }
                }
                _ => {
                    starts.push(s);
                    ends.push(e);
                }
            }
        }
        Ranges { starts, ends }
    }

    fn contains(&self, v: T) -> bool {
        // The last range starting at or before `v` is the only one that can hold it.
        let i = self.starts.partition_point(|&s| s <= v);
        i > 0 && self.ends.get(i - 1).is_some_and(|&e| v <= e)
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.starts.len()
    }
}

trait One: Sized {
    fn saturating_inc(&self) -> Self;
}
impl One for u32 {
    fn saturating_inc(&self) -> Self {
        self.saturating_add(1)
    }
}
impl One for u128 {
    fn saturating_inc(&self) -> Self {
        self.saturating_add(1)
    }
}

impl List {
    /// Parses a list. Problems are reported as `(line, column, message)`.
    pub fn parse(text: &str) -> Result<List, Vec<(usize, usize, String)>> {
        let mut exact = HashSet::new();
        let mut v4 = Vec::new();
        let mut v6 = Vec::new();
        let mut problems = Vec::new();
        for (n, raw) in text.lines().enumerate() {
            let content = raw.split('#').next().unwrap_or("");
            let entry = content.trim();
            if entry.is_empty() {
                continue;
            }
            let column = raw.len() - raw.trim_start().len() + 1;
            match parse_entry(entry) {
                Ok(Entry::V4(s, e)) => v4.push((s, e)),
                Ok(Entry::V6(s, e)) => v6.push((s, e)),
                Ok(Entry::Exact) => {
                    exact.insert(Box::from(entry));
                }
                Err(m) => problems.push((n + 1, column, m)),
            }
        }
        if problems.is_empty() {
            Ok(List {
                exact,
                v4: Ranges::build(v4),
                v6: Ranges::build(v6),
            })
        } else {
            Err(problems)
        }
    }

    /// Whether `value` is in the list: an IP address matches the ranges, anything else the exact entries.
    pub fn contains(&self, value: &str) -> bool {
        match value.parse::<IpAddr>() {
            Ok(ip) => self.contains_ip(ip),
            Err(_) => self.exact.contains(value),
        }
    }

    /// Whether an address is in one of the list's ranges (an IPv4-mapped IPv6 address counts as IPv4).
    pub fn contains_ip(&self, ip: IpAddr) -> bool {
        match canonical(ip) {
            IpAddr::V4(a) => self.v4.contains(u32::from(a)),
            IpAddr::V6(a) => self.v6.contains(u128::from(a)),
        }
    }
}

/// An IPv4-mapped IPv6 address (`::ffff:a.b.c.d`, in any spelling) as its IPv4 `a.b.c.d`; any other address
/// unchanged. Every signal that keys on an IP uses this form, so an address is one key however it is written.
///
/// The deprecated IPv4-compatible form (`::a.b.c.d`, RFC 4291 §2.5.5.1) is left as the IPv6 address it is:
/// it is not used on the wire, and reading it as IPv4 would also turn `::1` into `0.0.0.1`.
pub(crate) fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(a) => match a.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(a),
        },
        v4 => v4,
    }
}

enum Entry {
    V4(u32, u32),
    V6(u128, u128),
    Exact,
}

fn parse_entry(entry: &str) -> Result<Entry, String> {
    let (addr, prefix) = match entry.split_once('/') {
        Some((a, p)) => (a, Some(p)),
        None => (entry, None),
    };
    let Ok(ip) = addr.parse::<IpAddr>() else {
        return match prefix {
            // `something/24` that is not an address is most likely a mistyped range.
            Some(_) if addr.contains(['.', ':']) && !addr.contains(char::is_alphabetic) => Err(
                format!("invalid CIDR range `{}`: not an IP address", short(entry)),
            ),
            _ => Ok(Entry::Exact),
        };
    };
    let ip = canonical(ip);
    let max = if ip.is_ipv4() { 32 } else { 128 };
    let bits = match prefix {
        None => max,
        Some(p) => match p.parse::<u32>() {
            Ok(b) if b <= max && !p.starts_with('+') => b,
            _ => {
                return Err(format!(
                    "invalid CIDR range `{}`: the prefix length must be 0-{max}",
                    short(entry)
                ))
            }
        },
    };
    Ok(match ip {
        IpAddr::V4(a) => {
            let mask = u32::MAX.checked_shl(32 - bits).unwrap_or(0);
            let start = u32::from(a) & mask;
            Entry::V4(start, start | !mask)
        }
        IpAddr::V6(a) => {
            let mask = u128::MAX.checked_shl(128 - bits).unwrap_or(0);
            let start = u128::from(a) & mask;
            Entry::V6(start, start | !mask)
        }
    })
}

fn short(s: &str) -> String {
    crate::error::shorten(s)
}

/// Every list of a ruleset, by name.
pub(crate) type Lists = HashMap<Box<str>, Arc<List>>;

/// Checks a list name: 1-64 of `[A-Za-z0-9_.-]`, not starting with a dot.
pub(crate) fn check_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= MAX_NAME_BYTES
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "invalid list name `{}`: expected 1-{MAX_NAME_BYTES} of [A-Za-z0-9_.-]",
            short(name)
        ))
    }
}

/// Parses list `name` from `text`; `file` names it in diagnostics.
pub(crate) fn load(name: &str, text: &str, file: &str) -> Result<List, Vec<Diagnostic>> {
    let diag = |line, column, message| Diagnostic::new(file.to_owned(), line, column, message);
    check_name(name).map_err(|m| vec![diag(0, 0, m)])?;
    List::parse(text).map_err(|p| p.into_iter().map(|(l, c, m)| diag(l, c, m)).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidr_v4_v6_and_exact_entries() {
        let l = List::parse(
            "# tor exits\n203.0.113.0/24\n198.51.100.7 # one host\n2001:db8::/32\n\nmallory@example.com\n10.0.0.0/8\n10.1.0.0/16\n",
        )
        .unwrap();
        assert!(l.contains("203.0.113.200"));
        assert!(!l.contains("203.0.114.1"));
        assert!(l.contains("198.51.100.7"));
        assert!(!l.contains("198.51.100.8"));
        assert!(l.contains("2001:db8:ffff::1"));
        assert!(!l.contains("2001:db9::1"));
        assert!(l.contains("::ffff:203.0.113.9"));
        assert!(l.contains("mallory@example.com"));
        assert!(!l.contains("Mallory@example.com"));
        assert!(l.contains("10.1.2.3"));
        assert_eq!(l.v4.len(), 3, "10.1/16 merges into 10/8");
    }

    #[test]
    fn whole_space_and_host_bits() {
        let l = List::parse("0.0.0.0/0\n::/0\n").unwrap();
        assert!(l.contains("255.255.255.255") && l.contains("ffff::1"));
        let l = List::parse("192.0.2.77/24\n").unwrap();
        assert!(l.contains("192.0.2.1"));
    }

    #[test]
    fn bad_ranges_say_where() {
        let e = List::parse("ok\n  192.0.2.0/33\n2001:db8::/129\n1.2.3/8\n").unwrap_err();
        let at: Vec<(usize, usize)> = e.iter().map(|p| (p.0, p.1)).collect();
        assert_eq!(at, [(2, 3), (3, 1), (4, 1)]);
        assert!(e[0].2.contains("`192.0.2.0/33`"), "{}", e[0].2);
    }

    #[test]
    fn names_are_checked() {
        assert!(check_name("tor-exits").is_ok());
        for bad in ["", "../x", ".hidden", "a b", "a/b"] {
            assert!(check_name(bad).is_err(), "{bad}");
        }
    }
}
