//! Load-time checks of ordinary rule mistakes that Rhai itself accepts or reports poorly: a literal returned
//! where an outcome belongs (`"REVIEW"`), a `custom` key the `[custom]` schema does not declare, and parse
//! errors placed where the mistake is (an unclosed block at its opening token, a misspelt variable with a
//! did-you-mean).

use rhai::{Expr, ParseErrorType, Position, Stmt, AST};

use super::functions::nearest;
use super::vars::{self, OUTCOMES, VARS};
use crate::config::CustomSchema;
use crate::error::Diagnostic;
use crate::State;

fn at(file: &str, pos: Position, message: String) -> Diagnostic {
    Diagnostic::new(
        file,
        pos.line().unwrap_or(0),
        pos.position().unwrap_or(0),
        message,
    )
}

/// The diagnostic for a rule that does not parse: Rhai's error, with the opening token of an unclosed block as
/// its place, a did-you-mean for a misspelt variable, and the rule guide's type names.
pub(crate) fn parse_error(file: &str, source: &str, e: &rhai::ParseError) -> Diagnostic {
    match &*e.0 {
        ParseErrorType::VariableUndefined(name) => {
            let names = VARS
                .iter()
                .map(|v| v.name)
                .chain(OUTCOMES.iter().map(|s| s.as_str()));
            let d = at(file, e.1, String::new()).with_code("unknown_variable");
            match nearest(name, names) {
                Some(s) => Diagnostic {
                    message: format!("unknown variable `{name}`: did you mean `{s}`?"),
                    ..d.with_suggestion(s)
                },
                None => Diagnostic {
                    message: format!("unknown variable `{name}`"),
                    ..d
                },
            }
        }
        ParseErrorType::MissingToken(token, what) => {
            let close = token.chars().next().filter(|_| token.chars().count() == 1);
            match close.and_then(|c| unclosed(source, c)) {
                Some((open, line, column)) => Diagnostic::new(
                    file,
                    line,
                    column,
                    format!("unclosed `{open}`: expected `{token}` {what}"),
                )
                .with_code("unclosed"),
                None => at(
                    file,
                    e.1,
                    super::types::plain(&super::sandbox::explain_parse_error(&e.0)),
                )
                .with_code("parse_error"),
            }
        }
        other => at(
            file,
            e.1,
            super::types::plain(&super::sandbox::explain_parse_error(other)),
        )
        .with_code("parse_error"),
    }
}

/// Where the innermost bracket that `close` would close is opened and never closed in `source` (strings,
/// characters, comments and string interpolation skipped), as the opening character, line and column.
fn unclosed(source: &str, close: char) -> Option<(char, usize, usize)> {
    let open = match close {
        '}' => '{',
        ')' => '(',
        ']' => '[',
        _ => return None,
    };
    #[derive(Clone, Copy, PartialEq)]
    enum Mode {
        Code,
        Str(char),
        Backtick,
    }
    // Each open bracket, and `$` for a `${` inside a backtick string (closed by `}` back into the string).
    let mut brackets: Vec<(char, usize, usize)> = Vec::new();
    let mut modes = vec![Mode::Code];
    let (mut line, mut column) = (1usize, 0usize);
    let mut chars = source.chars().peekable();
    let mut comment_depth = 0usize;
    let mut line_comment = false;
    while let Some(c) = chars.next() {
        column += 1;
        if c == '\n' {
            line += 1;
            column = 0;
            line_comment = false;
            continue;
        }
        if line_comment {
            continue;
        }
        if comment_depth > 0 {
            if c == '*' && chars.peek() == Some(&'/') {
                chars.next();
                column += 1;
                comment_depth -= 1;
            } else if c == '/' && chars.peek() == Some(&'*') {
                chars.next();
                column += 1;
                comment_depth += 1;
            }
            continue;
        }
        let mode = *modes.last()?;
        match mode {
            Mode::Str(q) => {
                if c == '\\' {
                    chars.next();
                    column += 1;
                } else if c == q {
                    modes.pop();
                }
            }
            Mode::Backtick => {
                if c == '`' {
                    modes.pop();
                } else if c == '$' && chars.peek() == Some(&'{') {
                    chars.next();
                    column += 1;
                    brackets.push(('$', line, column));
                    modes.push(Mode::Code);
                }
            }
            Mode::Code => match c {
                '/' if chars.peek() == Some(&'/') => line_comment = true,
                '/' if chars.peek() == Some(&'*') => {
                    chars.next();
                    column += 1;
                    comment_depth = 1;
                }
                '"' | '\'' => modes.push(Mode::Str(c)),
                '`' => modes.push(Mode::Backtick),
                '{' | '(' | '[' => brackets.push((c, line, column)),
                '}' | ')' | ']' => {
                    let opened = brackets.pop()?;
                    if opened.0 == '$' {
                        if c != '}' {
                            return None;
                        }
                        modes.pop();
                    }
                }
                _ => {}
            },
        }
    }
    brackets.into_iter().rev().find(|b| b.0 == open)
}

/// Reports every literal a rule can finish with, or `return`s, that is not an outcome or `()` (outside its
/// functions, whose values are theirs): `"REVIEW"` is a string, not the outcome `REVIEW`.
pub(crate) fn literal_returns(ast: &AST, file: &str, problems: &mut Vec<Diagnostic>) {
    let mut found = Vec::new();
    block_value(ast.statements(), &mut found);
    for stmt in ast.statements() {
        returns(stmt, &mut found);
    }
    found.sort_by_key(|(p, _)| (p.line(), p.position()));
    found.dedup_by_key(|(p, _)| *p);
    for (pos, literal) in found {
        let outcome = literal
            .trim_matches('"')
            .to_ascii_uppercase()
            .replace(['-', ' '], "_");
        let outcome = match outcome.as_str() {
            "REVIEW_REQUIRED" => Some(State::Review),
            o => vars::outcome(o),
        };
        let d = at(file, pos, String::new()).with_code("literal_return");
        problems.push(match outcome {
            Some(s) if literal.starts_with('"') => Diagnostic {
                message: format!(
                    "the rule returns the string {literal}, not an outcome: write `{}` without quotes",
                    s.as_str()
                ),
                ..d.with_suggestion(s.as_str())
            },
            _ => Diagnostic {
                message: format!(
                    "the rule returns `{literal}`, which is not an outcome: return one of {} when it matches, or `()` when it does not",
                    vars::outcome_names()
                ),
                ..d
            },
        });
    }
}

/// A literal that is not an outcome or `()`, as the rule writes it.
fn literal(e: &Expr) -> Option<String> {
    Some(match e {
        Expr::StringConstant(s, _) => format!("\"{}\"", crate::error::shorten(s)),
        Expr::IntegerConstant(i, _) => i.to_string(),
        Expr::FloatConstant(f, _) => f.to_string(),
        Expr::BoolConstant(b, _) => b.to_string(),
        Expr::CharConstant(c, _) => format!("'{c}'"),
        Expr::DynamicConstant(d, _) if !d.is_unit() && !d.is::<State>() => {
            crate::error::shorten(&d.to_string())
        }
        Expr::Array(..) => "[…]".to_owned(),
        Expr::Map(..) => "#{…}".to_owned(),
        Expr::InterpolatedString(..) => "`…`".to_owned(),
        _ => return None,
    })
}

/// The literals a block can finish with.
fn block_value(stmts: &[Stmt], found: &mut Vec<(Position, String)>) {
    let Some(last) = stmts.last() else { return };
    match last {
        Stmt::Expr(e) => match &**e {
            Expr::Stmt(b) => block_value(b.statements(), found),
            e => {
                if let Some(l) = literal(e) {
                    found.push((e.start_position(), l));
                }
            }
        },
        Stmt::Block(b) => block_value(b.statements(), found),
        Stmt::If(flow, _) => {
            block_value(flow.body.statements(), found);
            block_value(flow.branch.statements(), found);
        }
        _ => {}
    }
}

/// The literals `stmt` (and what it holds) `return`s.
fn returns(stmt: &Stmt, found: &mut Vec<(Position, String)>) {
    let mut path = Vec::new();
    stmt.walk(&mut path, &mut |path: &[rhai::ASTNode]| {
        if let Some(rhai::ASTNode::Stmt(Stmt::Return(Some(e), flags, _))) = path.last() {
            // `throw` sets a flag: what it throws is an error, not a value.
            if flags.is_empty() {
                if let Some(l) = literal(e) {
                    found.push((e.start_position(), l));
                }
            }
        }
        true
    });
}

/// Reports every `custom.key` (and `custom["key"]`) whose key `schema` does not declare, with a did-you-mean.
pub(crate) fn custom_keys(
    ast: &AST,
    file: &str,
    schema: &CustomSchema,
    problems: &mut Vec<Diagnostic>,
) {
    if schema.is_empty() {
        return;
    }
    ast.walk(&mut |path| {
        let (lhs, rhs) = match path.last() {
            Some(rhai::ASTNode::Expr(Expr::Dot(b, ..) | Expr::Index(b, ..))) => (&b.lhs, &b.rhs),
            _ => return true,
        };
        let Expr::Variable(v, ..) = lhs else {
            return true;
        };
        if v.1.as_str() != vars::CUSTOM {
            return true;
        }
        // The first step of the chain: `custom.a.b` is a `Dot` whose right side starts with `a`.
        let first = match rhs {
            Expr::Dot(b, ..) | Expr::Index(b, ..) => &b.lhs,
            other => other,
        };
        let (key, pos) = match first {
            Expr::Property(p, pos) => (p.2.as_str(), *pos),
            Expr::StringConstant(s, pos) if matches!(path.last(), Some(rhai::ASTNode::Expr(Expr::Index(..)))) => {
                (s.as_str(), *pos)
            }
            _ => return true,
        };
        if schema.get(key).is_some() {
            return true;
        }
        let declared: Vec<&str> = schema.keys().collect();
        let d = at(file, pos, String::new()).with_code("unknown_custom_key");
        let list = declared
            .iter()
            .map(|k| format!("`{k}`"))
            .collect::<Vec<_>>()
            .join(", ");
        let key = crate::error::shorten(key);
        problems.push(match nearest(&key, declared.iter().copied()) {
            Some(s) => Diagnostic {
                message: format!(
                    "unknown custom attribute `{key}`: did you mean `{s}`? (`[custom]` declares {list})"
                ),
                ..d.with_suggestion(s)
            },
            None => Diagnostic {
                message: format!(
                    "unknown custom attribute `{key}`: `[custom]` in riskgate.toml declares {list}"
                ),
                ..d
            },
        });
        true
    });
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_unclosed_bracket_is_found() {
        let u = |s: &str, c| super::unclosed(s, c);
        assert_eq!(u("if a {\n  BLOCK\n", '}'), Some(('{', 1, 6)));
        assert_eq!(
            u("if a { if b { BLOCK }\n// }\n\"}\" ", '}'),
            Some(('{', 1, 6))
        );
        assert_eq!(u("let s = `${x}`; if (a { }", ')'), Some(('(', 1, 20)));
        assert_eq!(u("if a { BLOCK }", '}'), None);
        assert_eq!(u("/* { /* { */ */ f(", ')'), Some(('(', 1, 18)));
    }
}
