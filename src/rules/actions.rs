//! The load-time warning for an action code that is probably misspelt: one named in a rule's `//! actions:` or
//! in a `[actions.<code>]` table, and nowhere else — no other rule or table names it, no rule compares `action`
//! with it, and it is not one of the [`KNOWN_ACTIONS`]. Such a rule or table never matches what callers send
//! (`paymnet`, `signin` beside `signIn`). A warning, not an error: a new action is named once at first.

use rhai::{ASTNode, Expr, Stmt, AST};
use std::collections::{BTreeMap, BTreeSet};

use super::functions::nearest;
use crate::config::Config;
use crate::error::Diagnostic;

/// Action codes riskgate's documentation and example rules use; naming one of them alone is not a warning.
pub(crate) const KNOWN_ACTIONS: [&str; 4] = ["signIn", "signUp", "withdraw-funds", "change-email"];

/// One place an action code is named.
pub(crate) struct Named {
    pub code: String,
    pub file: String,
    pub line: usize,
    pub column: usize,
}

/// Adds to `out` every string that `ast` compares the `action` variable with (`action == "payment"`,
/// `action in ["a", "b"]`).
pub(crate) fn compared_codes(ast: &AST, out: &mut BTreeSet<String>) {
    let is_action = |e: &Expr| matches!(e, Expr::Variable(v, ..) if v.1.as_str() == "action");
    ast.walk(&mut |path| {
        let call = match path.last() {
            Some(ASTNode::Expr(Expr::FnCall(call, _)))
            | Some(ASTNode::Stmt(Stmt::FnCall(call, _))) => call,
            _ => return true,
        };
        match (call.name.as_str(), call.args.as_slice()) {
            ("==" | "!=", [a, b]) => {
                for (x, y) in [(a, b), (b, a)] {
                    if let (true, Expr::StringConstant(s, _)) = (is_action(x), y) {
                        out.insert(s.to_string());
                    }
                }
            }
            ("contains", [Expr::Array(items, _), x]) if is_action(x) => {
                for item in items.iter() {
                    if let Expr::StringConstant(s, _) = item {
                        out.insert(s.to_string());
                    }
                }
            }
            ("contains", [Expr::DynamicConstant(d, _), x]) if is_action(x) => {
                if let Ok(items) = d.as_array_ref() {
                    for item in items.iter() {
                        if let Ok(s) = item.as_immutable_string_ref() {
                            out.insert(s.to_string());
                        }
                    }
                }
            }
            _ => {}
        }
        true
    });
}

/// The warnings for codes in `named` (rules' `//! actions:`) and `config`'s `[actions.<code>]` tables that are
/// named only once, and not in `compared` or [`KNOWN_ACTIONS`].
pub(crate) fn unused_codes(
    mut named: Vec<Named>,
    compared: &BTreeSet<String>,
    config: &Config,
    config_file: &str,
) -> Vec<Diagnostic> {
    for (code, line, column) in &config.action_tables {
        named.push(Named {
            code: code.clone(),
            file: config_file.to_owned(),
            line: *line,
            column: *column,
        });
    }
    let mut count: BTreeMap<&str, usize> = BTreeMap::new();
    for n in &named {
        *count.entry(n.code.as_str()).or_default() += 1;
    }
    let used = |code: &str| {
        count.get(code).copied().unwrap_or(0) > 1
            || compared.contains(code)
            || KNOWN_ACTIONS.contains(&code)
    };
    let others: BTreeSet<&str> = count
        .keys()
        .copied()
        .chain(compared.iter().map(String::as_str))
        .chain(KNOWN_ACTIONS)
        .collect();
    let mut out = Vec::new();
    for n in &named {
        if used(&n.code) {
            continue;
        }
        let code = crate::error::shorten(&n.code);
        // A different case is the likeliest slip (`signin` for `signIn`), then a typo.
        let near = others
            .iter()
            .copied()
            .find(|o| *o != n.code && o.eq_ignore_ascii_case(&n.code))
            .or_else(|| nearest(&n.code, others.iter().copied()));
        let mut message = format!(
            "action code `{code}` is named only here: no other rule, `[actions]` table or known action uses it"
        );
        if let Some(s) = near {
            message.push_str(&format!(" (did you mean `{s}`?)"));
        }
        let mut d = Diagnostic::new(&n.file, n.line, n.column, message)
            .with_code("unknown_action")
            .warning();
        d.suggestion = near.map(str::to_owned);
        out.push(d);
    }
    out
}
