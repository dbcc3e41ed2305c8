//! The `//!` metadata block at the top of a rule file.

use crate::error::Diagnostic;

/// Whether a rule decides (`enforce`) or is only reported (`shadow`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Mode {
    /// The rule's outcome takes part in the decision.
    Enforce,
    /// The rule is evaluated and reported in `shadowRuleIds`, but never changes the state.
    Shadow,
}

impl Mode {
    /// `"enforce"` or `"shadow"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Enforce => "enforce",
            Mode::Shadow => "shadow",
        }
    }
}

/// The metadata of one rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Meta {
    pub priority: u8,
    pub actions: Option<Vec<String>>,
    pub mode: Mode,
    pub enabled: bool,
    pub description: Option<String>,
    /// Where each of `actions` is written: line and column.
    pub action_places: Vec<(usize, usize)>,
}

impl Default for Meta {
    fn default() -> Self {
        Meta {
            priority: 50,
            actions: None,
            mode: Mode::Enforce,
            enabled: true,
            description: None,
            action_places: Vec::new(),
        }
    }
}

/// Parses the leading run of `//!` lines (blank lines may stand between them). Every problem is reported.
pub(crate) fn parse(source: &str, file: &str) -> Result<Meta, Vec<Diagnostic>> {
    let mut meta = Meta::default();
    let mut seen: Vec<&str> = Vec::new();
    let mut problems = Vec::new();
    let mut fail = |line: usize, column: usize, message: String| {
        problems.push(Diagnostic::new(file.to_owned(), line, column, message))
    };
    let mut lines = source.lines().enumerate();
    for (n, raw) in lines.by_ref() {
        let line_no = n + 1;
        let trimmed = raw.trim_start();
        if trimmed.is_empty() {
            continue;
        }
        let Some(body) = trimmed.strip_prefix("//!") else {
            break;
        };
        let body_col = raw.len() - trimmed.len() + 4;
        if body.trim().is_empty() {
            continue;
        }
        let Some((key, value)) = body.split_once(':') else {
            fail(
                line_no,
                body_col,
                "expected `key: value` in rule metadata (keys: priority, actions, mode, enabled, description)".into(),
            );
            continue;
        };
        let key_col = body_col + (body.len() - body.trim_start().len());
        let key = key.trim();
        let value_col =
            body_col + key.len() + 1 + (body.len() - body.trim_start().len()) + leading_ws(value);
        let value = value.trim();
        if seen.contains(&key) {
            fail(
                line_no,
                key_col,
                format!("metadata key `{key}` is given twice"),
            );
            continue;
        }
        match key {
            "priority" => match value.parse::<u8>() {
                Ok(p) if p <= 99 => meta.priority = p,
                _ => fail(
                    line_no,
                    value_col,
                    format!("invalid priority `{value}`: expected a whole number from 0 to 99"),
                ),
            },
            "actions" => {
                let mut codes = Vec::new();
                let mut offset = 0;
                for piece in value.split(',') {
                    let code = piece.trim();
                    let col = value_col + offset + leading_ws(piece);
                    offset += piece.len() + 1;
                    if crate::request::is_action_code(code) {
                        codes.push(code.to_owned());
                        meta.action_places.push((line_no, col));
                    } else {
                        fail(
                            line_no,
                            value_col,
                            format!("invalid action code `{code}` in `actions`: expected 1-64 of [a-zA-Z0-9_-]"),
                        );
                    }
                }
                meta.actions = Some(codes);
            }
            "mode" => match value {
                "enforce" => meta.mode = Mode::Enforce,
                "shadow" => meta.mode = Mode::Shadow,
                _ => fail(
                    line_no,
                    value_col,
                    format!("invalid mode `{value}`: expected `enforce` or `shadow`"),
                ),
            },
            "enabled" => match value {
                "true" => meta.enabled = true,
                "false" => meta.enabled = false,
                _ => fail(line_no, value_col, format!("invalid enabled `{value}`: expected `true` or `false`")),
            },
            "description" => meta.description = Some(value.to_owned()),
            other => fail(
                line_no,
                key_col,
                format!("unknown metadata key `{other}`: expected priority, actions, mode, enabled or description"),
            ),
        }
        seen.push(key);
    }
    // A `//!` line after the first line of code would be silently ignored (the rule would run with the
    // defaults), so it is an error. Inside a multi-line string it is not metadata, but such a string starting a
    // line with `//!` is too unlikely to be worth parsing the rule for.
    for (n, raw) in lines {
        let trimmed = raw.trim_start();
        if trimmed.starts_with("//!") {
            problems.push(
                Diagnostic::new(
                    file,
                    n + 1,
                    raw.len() - trimmed.len() + 1,
                    "rule metadata after the first line of code is ignored: move this `//!` line to the top of the file",
                )
                .with_code("metadata_after_code"),
            );
        }
    }
    if problems.is_empty() {
        Ok(meta)
    } else {
        Err(problems)
    }
}

fn leading_ws(s: &str) -> usize {
    s.len() - s.trim_start().len()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_every_key() {
        let m = parse(
            "//! priority: 10\n//! actions: withdraw-funds, signIn\n\n//! mode: shadow\n//! description: new device\nBLOCK\n// priority: 3\n",
            "r.rhai",
        )
        .unwrap();
        assert_eq!(m.priority, 10);
        assert_eq!(
            m.actions,
            Some(vec!["withdraw-funds".to_owned(), "signIn".to_owned()])
        );
        assert_eq!(m.mode, Mode::Shadow);
        assert_eq!(m.description.as_deref(), Some("new device"));
        assert_eq!(parse("BLOCK", "r.rhai").unwrap(), Meta::default());
    }

    #[test]
    fn bad_metadata_says_where() {
        let e = parse(
            "//! priority: 100\n//! colour: red\n//! mode: loud\n//! actions: a b\n",
            "r.rhai",
        )
        .unwrap_err();
        let at: Vec<(usize, usize)> = e.iter().map(|d| (d.line, d.column)).collect();
        assert_eq!(at, vec![(1, 15), (2, 5), (3, 11), (4, 14)], "{e:?}");
        assert!(e[0].message.contains("0 to 99"));
        assert!(e[1].message.contains("unknown metadata key `colour`"));
        let e = parse("//! priority: 1\n//! priority: 2\n", "r.rhai").unwrap_err();
        assert!(e[0].message.contains("twice"));
        // After code, a `//!` line would be ignored: it is an error instead.
        let e = parse("//! priority: 1\nBLOCK\n  //! priority: 3\n", "r.rhai").unwrap_err();
        assert_eq!((e.len(), e[0].line, e[0].column), (1, 3, 3), "{e:?}");
        assert_eq!(e[0].code, "metadata_after_code");
    }
}
