//! Load-time check that every function a rule calls exists with that many arguments, so that a misspelt
//! signal (`is_new_devise()`) is a load error with its line and column instead of a rule error on every
//! decision.

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

    /// Reports every plain call in `ast` to a function that neither the engine nor the rule defines.
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
            let (call, pos) = match path.last() {
                Some(ASTNode::Expr(Expr::FnCall(call, pos)))
                | Some(ASTNode::Stmt(Stmt::FnCall(call, pos))) => (call, *pos),
                _ => return true,
            };
            let name = call.name.as_str();
            if call.op_token.is_some()
                || !name.starts_with(|c: char| c.is_alphabetic() || c == '_')
                || KEYWORD_FUNCTIONS.contains(&name)
                || variables.contains(name)
            {
                return true;
            }
            let n = call.args.len();
            let has =
                |m: &HashMap<String, HashSet<usize>>| m.get(name).is_some_and(|a| a.contains(&n));
            if has(&self.0) || has(&own) {
                return true;
            }
            let arities: Vec<usize> = {
                let mut v: Vec<usize> = self
                    .0
                    .get(name)
                    .into_iter()
                    .chain(own.get(name))
                    .flatten()
                    .copied()
                    .collect();
                v.sort_unstable();
                v.dedup();
                v
            };
            let message = if arities.is_empty() {
                match self.closest(name, &own) {
                    Some(s) => format!("unknown function `{name}`: did you mean `{s}`?"),
                    None => format!("unknown function `{name}`"),
                }
            } else {
                let takes: Vec<String> = arities.iter().map(ToString::to_string).collect();
                format!(
                    "`{name}` is called with {n} argument{}, but takes {}",
                    if n == 1 { "" } else { "s" },
                    takes.join(" or ")
                )
            };
            problems.push(Diagnostic::new(
                file.to_owned(),
                pos.line().unwrap_or(0),
                pos.position().unwrap_or(0),
                message,
            ));
            true
        });
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

/// Levenshtein distance between two short names.
fn distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let cur = row[j + 1];
            row[j + 1] = if ca == *cb {
                prev
            } else {
                1 + prev.min(cur).min(row[j])
            };
            prev = cur;
        }
    }
    row[b.len()]
}

#[cfg(test)]
mod tests {
    #[test]
    fn distance_counts_edits() {
        assert_eq!(super::distance("velocity", "velocity"), 0);
        assert_eq!(super::distance("veloctiy", "velocity"), 2);
        assert_eq!(super::distance("is_new_devise", "is_new_device"), 1);
        assert_eq!(super::distance("", "abc"), 3);
    }
}
