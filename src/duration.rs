//! Duration strings as rules and `riskgate.toml` write them: `"250ms"`, `"30s"`, `"10m"`, `"1h"`, `"7d"`.

/// Parses a duration string into milliseconds: a positive whole number followed by `ms`, `s`, `m`, `h` or `d`.
/// The result is at most 10 years.
pub(crate) fn parse_millis(s: &str) -> Result<i64, String> {
    const MAX_MS: i64 = 10 * 365 * 24 * 3_600_000;
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let unit_ms: i64 = match unit {
        "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => return Err(bad(s)),
    };
    let n: i64 = num.parse().map_err(|_| bad(s))?;
    match n.checked_mul(unit_ms) {
        Some(ms) if ms > 0 && ms <= MAX_MS => Ok(ms),
        Some(0) => Err(format!(
            "invalid duration `{}`: must be more than zero",
            crate::error::shorten(s)
        )),
        _ => Err(format!(
            "invalid duration `{}`: at most 10 years",
            crate::error::shorten(s)
        )),
    }
}

/// Formats milliseconds in the largest unit that divides them exactly (`"7d"`, `"90m"`, `"250ms"`).
pub(crate) fn format_millis(ms: i64) -> String {
    for (unit, size) in [
        ("d", 86_400_000),
        ("h", 3_600_000),
        ("m", 60_000),
        ("s", 1_000),
    ] {
        if ms != 0 && ms % size == 0 {
            return format!("{}{unit}", ms / size);
        }
    }
    format!("{ms}ms")
}

fn bad(s: &str) -> String {
    format!(
        "invalid duration `{}`: expected a whole number and a unit, like \"30s\", \"10m\", \"1h\" or \"7d\"",
        crate::error::shorten(s)
    )
}

#[cfg(test)]
mod tests {
    use super::{format_millis, parse_millis};

    #[test]
    fn formats_in_the_largest_exact_unit() {
        assert_eq!(format_millis(604_800_000), "7d");
        assert_eq!(format_millis(5_400_000), "90m");
        assert_eq!(format_millis(1_500), "1500ms");
        assert_eq!(format_millis(0), "0ms");
    }

    #[test]
    fn parses_units_and_refuses_the_rest() {
        assert_eq!(parse_millis("250ms"), Ok(250));
        assert_eq!(parse_millis("30s"), Ok(30_000));
        assert_eq!(parse_millis("10m"), Ok(600_000));
        assert_eq!(parse_millis("1h"), Ok(3_600_000));
        assert_eq!(parse_millis("7d"), Ok(604_800_000));
        for bad in [
            "",
            "h",
            "1",
            "1.5h",
            "-1h",
            "0s",
            "1w",
            "1 h",
            "99999999999999999999d",
            "4000d",
        ] {
            assert!(parse_millis(bad).is_err(), "{bad}");
        }
    }
}
