//! The trace of one rule for [`Engine::explain`](crate::Engine::explain): the signals, variables and `custom`
//! keys it reads and the operands of its top-level conditions, each with its value for the request.
//!
//! Values are found by walking the rule's syntax tree and evaluating each expression on its own, in the same
//! sandbox and on the same decision's signals (memoised, so a signal reads what the rule read). Rules have no
//! side effects, so this changes nothing. An expression that reads a variable the rule defines itself is not
//! evaluated: its value depends on where in the rule it is read.

use rhai::{ASTNode, Dynamic, Expr, Stmt, AST};
use std::fmt::Write;

use super::rule::Rule;
use super::sandbox;
use super::vars::{self, Read, VARS};
use crate::config::Limits;
use crate::explain::Value;
use crate::request::{CustomValue, TrackRequest};
use crate::signals::catalogue::SIGNALS;
use crate::State;

/// How many expressions of each kind a trace lists per rule at most (a rule is at most a few hundred lines).
const MAX_ENTRIES: usize = 64;

/// What [`reads`] finds in a rule.
pub(crate) struct Reads {
    pub signals: Vec<Value>,
    pub variables: Vec<Value>,
    pub custom: Vec<Value>,
    pub comparisons: Vec<Value>,
    /// The rule calls `rba_score()`.
    pub rba: bool,
}

/// Everything `rule` reads, with values for `req`, evaluated on the decision running on this thread.
pub(crate) fn reads(
    engine: &rhai::Engine,
    limits: &Limits,
    req: &TrackRequest,
    rule: &Rule,
) -> Reads {
    let mut calls: Vec<Expr> = Vec::new();
    let mut custom: Vec<String> = Vec::new();
    rule.ast.walk(&mut |path: &[ASTNode]| {
        match path.last() {
            Some(ASTNode::Expr(e @ Expr::FnCall(f, _))) => {
                let known = SIGNALS
                    .iter()
                    .any(|s| s.name == f.name.as_str() && s.call.arity() == f.args.len());
                if known && calls.len() < MAX_ENTRIES {
                    calls.push((*e).clone());
                }
            }
            Some(ASTNode::Expr(Expr::Dot(b, ..) | Expr::Index(b, ..))) => {
                let key = match &b.rhs {
                    Expr::Property(p, _) => Some(p.2.to_string()),
                    Expr::StringConstant(s, _) => Some(s.to_string()),
                    _ => None,
                };
                if let (Expr::Variable(v, ..), Some(key)) = (&b.lhs, key) {
                    if v.1.as_str() == vars::CUSTOM
                        && !custom.contains(&key)
                        && custom.len() < MAX_ENTRIES
                    {
                        custom.push(key);
                    }
                }
            }
            _ => {}
        }
        true
    });
    let mut signals: Vec<Value> = Vec::new();
    for call in &calls {
        let expr = render(call);
        if !signals.iter().any(|s| s.expr == expr) {
            signals.push(evaluate(engine, limits, req, call, expr));
        }
    }
    let variables = VARS
        .iter()
        .enumerate()
        .filter(|(i, _)| rule.vars & (1 << i) != 0)
        .filter_map(|(_, var)| match var.read {
            Read::Text(read) => Some(Value {
                expr: var.name.to_owned(),
                value: read(req).map_or(serde_json::Value::Null, |s| s.into()),
                error: None,
            }),
            Read::Custom => None,
        })
        .collect();
    let custom = custom
        .into_iter()
        .map(|key| Value {
            value: req
                .attributes
                .custom
                .get(&key)
                .map_or(serde_json::Value::Null, custom_json),
            expr: if is_identifier(&key) {
                format!("custom.{key}")
            } else {
                format!("custom[{key:?}]")
            },
            error: None,
        })
        .collect();
    let mut comparisons = Vec::new();
    for stmt in rule.ast.statements() {
        conditions(stmt, &mut |e| {
            if comparisons.len() < MAX_ENTRIES {
                comparisons.push(evaluate(engine, limits, req, e, render(e)));
            }
        });
    }
    Reads {
        rba: signals.iter().any(|s| s.expr == "rba_score()"),
        signals,
        variables,
        custom,
        comparisons,
    }
}

/// Calls `f` on each operand of the `&&`/`||` chain of `stmt`'s condition if it is an `if` (and of its
/// `else if`s), or on the whole condition.
fn conditions(stmt: &Stmt, f: &mut impl FnMut(&Expr)) {
    let Stmt::If(flow, _) = stmt else { return };
    match &flow.expr {
        Expr::And(parts, _) | Expr::Or(parts, _) => parts.iter().for_each(&mut *f),
        e => f(e),
    }
    if let [next] = flow.branch.statements() {
        conditions(next, f);
    }
}

/// Evaluates `e` on its own (see the module docs); `expr` is how it is printed.
fn evaluate(
    engine: &rhai::Engine,
    limits: &Limits,
    req: &TrackRequest,
    e: &Expr,
    expr: String,
) -> Value {
    if let Some(local) = local_variable(e) {
        return Value {
            expr,
            value: serde_json::Value::Null,
            error: Some(format!("reads the rule's own variable `{local}`")),
        };
    }
    let ast = AST::new([Stmt::Expr(Box::new(e.clone()))], rhai::Module::new());
    match sandbox::eval_value(engine, limits, req, &ast) {
        Ok(v) => Value {
            expr,
            value: dynamic_json(&v),
            error: None,
        },
        Err(message) => Value {
            expr,
            value: serde_json::Value::Null,
            error: Some(message),
        },
    }
}

/// A variable `e` reads that is neither a request variable nor an outcome constant.
fn local_variable(e: &Expr) -> Option<String> {
    let mut found = None;
    let stmt = Stmt::Expr(Box::new(e.clone()));
    let ast = AST::new([stmt], rhai::Module::new());
    ast.walk(&mut |path: &[ASTNode]| {
        if let Some(ASTNode::Expr(Expr::Variable(v, ..))) = path.last() {
            let name = v.1.as_str();
            let outcome = vars::OUTCOMES.iter().any(|s| s.as_str() == name);
            if vars::bit(name).is_none() && !outcome {
                found = Some(name.to_owned());
                return false;
            }
        }
        true
    });
    found
}

fn is_identifier(s: &str) -> bool {
    let mut chars = s.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn custom_json(v: &CustomValue) -> serde_json::Value {
    serde_json::to_value(v).unwrap_or(serde_json::Value::Null)
}

/// A rule value as JSON: `()` is `null`, an outcome its name, anything else not a scalar its printed form.
fn dynamic_json(v: &Dynamic) -> serde_json::Value {
    if v.is_unit() {
        serde_json::Value::Null
    } else if let Ok(b) = v.as_bool() {
        b.into()
    } else if let Ok(i) = v.as_int() {
        i.into()
    } else if let Ok(f) = v.as_float() {
        serde_json::Number::from_f64(f).map_or(serde_json::Value::Null, serde_json::Value::Number)
    } else if let Some(s) = v.read_lock::<rhai::ImmutableString>() {
        s.as_str().into()
    } else if let Some(s) = v.read_lock::<State>() {
        s.as_str().into()
    } else {
        crate::error::shorten(&v.to_string()).into()
    }
}

/// `e` printed as rule source (close to how it was written; `…` for what this printer does not know).
pub(crate) fn render(e: &Expr) -> String {
    let mut out = String::new();
    write_expr(e, &mut out, 0);
    out
}

fn write_expr(e: &Expr, out: &mut String, depth: usize) {
    if depth > 32 || out.len() > 512 {
        out.push('…');
        return;
    }
    let d = depth + 1;
    match e {
        Expr::BoolConstant(b, _) => {
            let _ = write!(out, "{b}");
        }
        Expr::IntegerConstant(i, _) => {
            let _ = write!(out, "{i}");
        }
        Expr::FloatConstant(f, _) => {
            let _ = write!(out, "{f}");
        }
        Expr::CharConstant(c, _) => {
            let _ = write!(out, "{c:?}");
        }
        Expr::StringConstant(s, _) => {
            let _ = write!(out, "{:?}", s.as_str());
        }
        Expr::Unit(_) => out.push_str("()"),
        Expr::Variable(v, ..) => out.push_str(v.1.as_str()),
        Expr::Property(p, _) => out.push_str(p.2.as_str()),
        Expr::Array(items, _) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                write_expr(item, out, d);
            }
            out.push(']');
        }
        Expr::Dot(b, ..) => {
            write_expr(&b.lhs, out, d);
            out.push('.');
            write_expr(&b.rhs, out, d);
        }
        Expr::Index(b, ..) => {
            write_expr(&b.lhs, out, d);
            out.push('[');
            write_expr(&b.rhs, out, d);
            out.push(']');
        }
        Expr::FnCall(f, _) | Expr::MethodCall(f, _) => {
            let op = f.op_token.as_ref().map(|t| t.literal_syntax());
            match (op, f.args.as_slice()) {
                (Some(op), [a, b]) => {
                    write_operand(a, out, d);
                    let _ = write!(out, " {op} ");
                    write_operand(b, out, d);
                }
                (Some(op), [a]) => {
                    out.push_str(op);
                    write_operand(a, out, d);
                }
                _ => {
                    out.push_str(f.name.as_str());
                    out.push('(');
                    for (i, arg) in f.args.iter().enumerate() {
                        if i > 0 {
                            out.push_str(", ");
                        }
                        write_expr(arg, out, d);
                    }
                    out.push(')');
                }
            }
        }
        Expr::And(parts, _) | Expr::Or(parts, _) => {
            let op = if matches!(e, Expr::And(..)) {
                " && "
            } else {
                " || "
            };
            for (i, part) in parts.iter().enumerate() {
                if i > 0 {
                    out.push_str(op);
                }
                write_operand(part, out, d);
            }
        }
        _ => out.push('…'),
    }
}

/// An operand, in parentheses when it is itself an operator expression.
fn write_operand(e: &Expr, out: &mut String, depth: usize) {
    let nested = match e {
        Expr::And(..) | Expr::Or(..) => true,
        Expr::FnCall(f, _) => f.op_token.is_some(),
        _ => false,
    };
    if nested {
        out.push('(');
    }
    write_expr(e, out, depth);
    if nested {
        out.push(')');
    }
}

/// The trace of `rule` after it ran with `result`, in `time_ns`.
pub(crate) fn trace(
    engine: &rhai::Engine,
    limits: &Limits,
    req: &TrackRequest,
    ctx: &crate::signals::DecisionCtx,
    rule: &Rule,
    result: Option<&sandbox::RuleResult>,
    time_ns: u64,
) -> crate::explain::RuleTrace {
    let (outcome, error) = match result {
        Some(sandbox::RuleResult::Match(s)) => (Some(*s), None),
        Some(sandbox::RuleResult::Error(kind, message)) => (
            None,
            Some(crate::RuleError {
                rule_id: rule.id.clone(),
                kind: *kind,
                message: message.clone(),
            }),
        ),
        Some(sandbox::RuleResult::NoMatch) | None => (None, None),
    };
    let r = reads(engine, limits, req, rule);
    let rba = if r.rba {
        crate::signals::rba::CHAIN_NAMES
            .iter()
            .zip(crate::signals::rba::factors(ctx))
            .filter_map(|(&chain, f)| Some(crate::explain::RbaFactor { chain, factor: f? }))
            .collect()
    } else {
        Vec::new()
    };
    crate::explain::RuleTrace {
        rule_id: rule.id.clone(),
        mode: rule.meta.mode,
        priority: rule.meta.priority,
        compiled: rule.compiled.is_some(),
        matched: outcome.is_some(),
        outcome,
        error,
        time_ns,
        signals: r.signals,
        variables: r.variables,
        custom: r.custom,
        comparisons: r.comparisons,
        rba,
    }
}

/// The longest expression [`evaluate_source`] parses, in bytes.
const MAX_EXPRESSION_BYTES: usize = 4096;

/// Parses `source` as one expression and evaluates it (see [`Engine::evaluate_at`](crate::Engine::evaluate_at)).
pub(crate) fn evaluate_source(
    engine: &rhai::Engine,
    limits: &Limits,
    req: &TrackRequest,
    source: &str,
) -> Result<serde_json::Value, String> {
    if source.len() > MAX_EXPRESSION_BYTES {
        return Err(format!(
            "is {} bytes, at most {MAX_EXPRESSION_BYTES} are allowed",
            source.len()
        ));
    }
    let ast = engine
        .compile_expression_with_scope(&sandbox::compile_scope(), source)
        .map_err(|e| {
            format!(
                "`{}` does not parse: {}",
                crate::error::shorten(source),
                sandbox::explain_parse_error(e.err_type())
            )
        })?;
    sandbox::eval_value(engine, limits, req, &ast)
        .map(|v| dynamic_json(&v))
        .map_err(|e| format!("`{}`: {e}", crate::error::shorten(source)))
}
