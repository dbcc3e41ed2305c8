//! Load-time check that every function a rule calls, plainly or in method style, exists with that many
//! arguments, so that a misspelt signal (`is_new_devise()`) or method (`email.ends_wiht("x")`) is a load error
//! with its line and column and a did-you-mean, instead of a rule error on every decision.
//!
//! Also here: the nearest known name to a misspelt one ([`nearest`]), which variables and `custom` keys use too.

use rhai::{ASTNode, Expr, Stmt, AST};
use std::collections::{HashMap, HashSet};

use crate::error::Diagnostic;
use crate::signals::catalogue;

/// Rhai keywords that are called like functions but are not registered ones.
const KEYWORD_FUNCTIONS: [&str; 9] = [
    "Fn",
    "call",
    "curry",
    "type_of",
    "is_def_var",
    "is_def_fn",
    "is_shared",
    "print",
    "debug",
];

/// The functions a rule engine offers: name → the argument counts it is registered with.
pub(crate) struct Known(HashMap<String, HashSet<usize>>);

impl Known {
    /// Every function registered on `engine`, standard library included, and every signal of the catalogue
    /// with the arity its row gives.
    pub(crate) fn of(engine: &rhai::Engine) -> Known {
        let mut map: HashMap<String, HashSet<usize>> = HashMap::new();
        for (name, arity) in engine.collect_fn_metadata(
            None,
            |info| Some((info.metadata.name.to_string(), info.metadata.num_params)),
            true,
        ) {
            map.entry(name).or_default().insert(arity);
        }
        for signal in &catalogue::SIGNALS {
            map.entry(signal.name.to_owned())
                .or_default()
                .insert(signal.call.arity());
        }
        Known(map)
    }

    /// Reports every call in `ast`, plain or in method style (`email.ends_with("x")`), to a function that
    /// neither the engine nor the rule defines with that many arguments.
    pub(crate) fn check(&self, ast: &AST, file: &str, problems: &mut Vec<Diagnostic>) {
        let mut own: HashMap<String, HashSet<usize>> = HashMap::new();
        for f in ast.iter_functions() {
            own.entry(f.name.to_owned())
                .or_default()
                .insert(f.params.len());
        }
        // A variable holding a function pointer can be called like a function: leave those names alone.
        let mut variables: HashSet<String> = HashSet::new();
        ast.walk(&mut |path| {
            if let Some(ASTNode::Stmt(Stmt::Var(x, ..))) = path.last() {
                variables.insert(x.0.name.to_string());
            }
            true
        });
        ast.walk(&mut |path| {
            let (call, pos, method) = match path.last() {
                Some(ASTNode::Expr(Expr::FnCall(call, pos)))
                | Some(ASTNode::Stmt(Stmt::FnCall(call, pos))) => (call, *pos, false),
                Some(ASTNode::Expr(Expr::MethodCall(call, pos))) => (call, *pos, true),
                _ => return true,
            };
            let name = call.name.as_str();
            if call.op_token.is_some()
                || !name.starts_with(|c: char| c.is_alphabetic() || c == '_')
                || KEYWORD_FUNCTIONS.contains(&name)
                || (!method && variables.contains(name))
            {
                return true;
            }
            // A signal called plainly with the wrong arguments is reported by `analyze`, which says what they
            // should be.
            if !method && catalogue::find(name).is_some() {
                return true;
            }
            let n = call.args.len();
            // A method call passes its receiver first; a rule's own function called in method style binds it
            // to `this` instead.
            let registered = if method { n + 1 } else { n };
            if self.0.get(name).is_some_and(|a| a.contains(&registered))
                || own.get(name).is_some_and(|a| a.contains(&n))
            {
                return true;
            }
            let mut arities: Vec<usize> = self
                .0
                .get(name)
                .into_iter()
                .flatten()
                .filter_map(|&a| if method { a.checked_sub(1) } else { Some(a) })
                .chain(own.get(name).into_iter().flatten().copied())
                .collect();
            arities.sort_unstable();
            arities.dedup();
            let what = if method { "method" } else { "function" };
            let mut suggestion = None;
            let (code, message) = if !arities.is_empty() {
                let takes: Vec<String> = arities.iter().map(ToString::to_string).collect();
                (
                    "wrong_arity",
                    format!(
                        "`{name}` is called with {n} argument{}, but takes {}",
                        if n == 1 { "" } else { "s" },
                        takes.join(" or ")
                    ),
                )
            } else if method && self.0.contains_key(name) {
                (
                    "not_a_method",
                    format!("`{name}` takes no value before the dot: call it as `{name}()`"),
                )
            } else {
                let near = if method {
                    self.closest_method(name, n + 1)
                } else {
                    self.closest(name, &own)
                };
                match near {
                    Some(s) => {
                        suggestion = Some(s.to_owned());
                        (
                            if method {
                                "unknown_method"
                            } else {
                                "unknown_function"
                            },
                            format!("unknown {what} `{name}`: did you mean `{s}`?"),
                        )
                    }
                    None => (
                        if method {
                            "unknown_method"
                        } else {
                            "unknown_function"
                        },
                        format!("unknown {what} `{name}`"),
                    ),
                }
            };
            let mut d = Diagnostic::new(
                file,
                pos.line().unwrap_or(0),
                pos.position().unwrap_or(0),
                message,
            )
            .with_code(code);
            d.suggestion = suggestion;
            problems.push(d);
            true
        });
    }

    /// The known method nearest to `name` among those taking `arity` arguments (receiver included), or among
    /// all methods when none of those is close.
    fn closest_method(&self, name: &str, arity: usize) -> Option<&str> {
        let limit = (name.chars().count() / 3).clamp(1, 3);
        let near = |want: Option<usize>| {
            self.0
                .iter()
                .filter(|(_, a)| want.map_or(a.iter().any(|&n| n > 0), |w| a.contains(&w)))
                .map(|(k, _)| (distance(name, k), k))
                .filter(|(d, _)| *d <= limit)
                .min()
                .map(|(_, k)| k.as_str())
        };
        near(Some(arity)).or_else(|| near(None))
    }

    /// The known name nearest to `name`, if it is close enough to be a likely typo.
    fn closest<'a>(
        &'a self,
        name: &str,
        own: &'a HashMap<String, HashSet<usize>>,
    ) -> Option<&'a str> {
        let limit = (name.chars().count() / 3).clamp(1, 3);
        self.0
            .keys()
            .chain(own.keys())
            .map(|k| (distance(name, k), k))
            .filter(|(d, _)| *d <= limit)
            .min()
            .map(|(_, k)| k.as_str())
    }
}

/// The name among `candidates` nearest to `name`, if it is close enough to be a likely typo (at most a third
/// of its characters differ, and at most three).
pub(crate) fn nearest<'a>(
    name: &str,
    candidates: impl IntoIterator<Item = &'a str>,
) -> Option<&'a str> {
    let limit = (name.chars().count() / 3).clamp(1, 3);
    candidates
        .into_iter()
        .filter(|c| *c != name)
        .map(|c| (distance(name, c), c))
        .filter(|(d, _)| *d <= limit)
        .min()
        .map(|(_, c)| c)
}

/// Edit distance between two short names: insertions, deletions, substitutions and swaps of two neighbours
/// (`emial` is one edit from `email`) each count one.
fn distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    // Three rows of the optimal-string-alignment table: two back, one back, this one.
    let mut two: Vec<usize> = vec![0; b.len() + 1];
    let mut one: Vec<usize> = (0..=b.len()).collect();
    let mut row: Vec<usize> = vec![0; b.len() + 1];
    for i in 1..=a.len() {
        row[0] = i;
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut d = (one[j] + 1).min(row[j - 1] + 1).min(one[j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                d = d.min(two[j - 2] + 1);
            }
            row[j] = d;
        }
        std::mem::swap(&mut two, &mut one);
        std::mem::swap(&mut one, &mut row);
    }
    one[b.len()]
}

#[cfg(test)]
mod tests {
    #[test]
    fn distance_counts_edits() {
        assert_eq!(super::distance("velocity", "velocity"), 0);
        assert_eq!(super::distance("veloctiy", "velocity"), 1);
        assert_eq!(super::distance("emial", "email"), 1);
        assert_eq!(super::distance("ends_wiht", "ends_with"), 1);
        assert_eq!(super::distance("kitten", "sitting"), 3);
        assert_eq!(super::distance("is_new_devise", "is_new_device"), 1);
        assert_eq!(super::distance("", "abc"), 3);
    }
}
