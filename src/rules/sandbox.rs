//! The Rhai sandbox: how the engine that runs rules is configured, and how one decision's rules are evaluated.
//!
//! Limits (operations, call depth, expression depth, string/array/map sizes) are Rhai's own; the wall-clock
//! limit is checked from Rhai's progress callback against a per-thread deadline. `eval`, `print`, `debug`,
//! `sleep` and module imports are unavailable, and Rhai has no file, network or process access to begin with.
//!
//! Three guards go beyond Rhai's own limits:
//! - a limit reached inside a standard function that swallows its callback's errors (`sort` and `dedup` with
//!   a comparer) still fails the rule, rather than letting it finish as if nothing happened;
//! - `replace` checks the size of its result before building it, so one call cannot allocate far beyond the
//!   string size limit (16 KiB × 16 KiB = 256 MiB) and run far past the time limit;
//! - a panic inside Rhai while a rule runs is caught and becomes that rule's error.

use rhai::{
    ASTNode, Dynamic, EvalAltResult, Expr, ImmutableString, Map, Position, Scope, Stmt, AST, FLOAT,
    INT,
};
use std::cell::{Cell, RefCell};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::{Duration, Instant};

use super::compile::Ctx;
use super::vars::{self, Read, OUTCOMES, VARS};
use super::Rule;
use crate::config::Limits;
use crate::request::{CustomValue, TrackRequest};
use crate::signals::DecisionCtx;
use crate::State;

thread_local! {
    /// When the rule running on this thread must stop.
    static DEADLINE: Cell<Option<Instant>> = const { Cell::new(None) };
    /// Which limit the rule running on this thread reached, if any (see [`Hit`]).
    static LIMIT_HIT: Cell<Hit> = const { Cell::new(Hit::None) };
    /// One scope per thread, refilled for each decision, so no decision allocates a new one.
    static SCOPE: RefCell<Scope<'static>> = RefCell::new(Scope::new());
}

/// A limit reached by the rule running on this thread.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Hit {
    None,
    Operations,
    Time,
}

/// Builds the Rhai engine for a ruleset with `limits`.
pub(crate) fn new_engine(limits: &Limits) -> rhai::Engine {
    // Rhai's standard library is built once per process and shared by every ruleset: building it takes most of
    // a ruleset load (~0.8 ms), and it holds no state.
    static STANDARD: std::sync::OnceLock<rhai::Shared<rhai::Module>> = std::sync::OnceLock::new();
    let mut e = rhai::Engine::new_raw();
    e.register_global_module(
        STANDARD
            .get_or_init(|| {
                rhai::packages::Package::as_shared_module(&rhai::packages::StandardPackage::new())
            })
            .clone(),
    );
    e.set_max_operations(limits.max_operations);
    e.set_max_call_levels(limits.max_call_depth);
    e.set_max_expr_depths(limits.max_expr_depth, limits.max_function_expr_depth);
    e.set_max_string_size(limits.max_string_size);
    e.set_max_array_size(limits.max_array_size);
    e.set_max_map_size(limits.max_map_size);
    e.set_strict_variables(true);
    e.disable_symbol("eval");
    e.on_print(|_| {});
    e.on_debug(|_, _, _| {});
    let max_operations = limits.max_operations;
    e.on_progress(move |ops| {
        // Rhai stops the rule itself one operation later; recording it here catches the case where a
        // standard function swallows that error (see `run`).
        if ops >= max_operations {
            LIMIT_HIT.set(Hit::Operations);
        }
        // Reading the clock costs ~20 ns: do it every 256 operations.
        if ops % 256 == 0 {
            if let Some(deadline) = DEADLINE.get() {
                if Instant::now() >= deadline {
                    LIMIT_HIT.set(Hit::Time);
                    return Some(Dynamic::UNIT);
                }
            }
        }
        None
    });
    // `sleep` would block the host's thread past any time limit (and `sleep(1e300)` panics): refuse it.
    e.register_fn("sleep", |_: INT| -> Result<(), Box<EvalAltResult>> {
        Err(unavailable("sleep"))
    });
    e.register_fn("sleep", |_: FLOAT| -> Result<(), Box<EvalAltResult>> {
        Err(unavailable("sleep"))
    });
    let max_string = limits.max_string_size;
    e.register_fn(
        "replace",
        move |s: &mut ImmutableString, find: &str, sub: &str| -> Result<(), Box<EvalAltResult>> {
            if s.is_empty() {
                return Ok(());
            }
            check_replace(s, find, sub.len(), max_string)?;
            *s = s.replace(find, sub).into();
            Ok(())
        },
    );
    e.register_fn(
        "replace",
        move |s: &mut ImmutableString, find: char, sub: &str| -> Result<(), Box<EvalAltResult>> {
            if s.is_empty() {
                return Ok(());
            }
            let mut buf = [0u8; 4];
            check_replace(s, find.encode_utf8(&mut buf), sub.len(), max_string)?;
            *s = s.replace(find, sub).into();
            Ok(())
        },
    );
    e.register_type_with_name::<State>("Outcome")
        .register_fn("==", |a: State, b: State| a == b)
        .register_fn("!=", |a: State, b: State| a != b)
        .register_fn("to_string", |s: &mut State| s.as_str().to_owned())
        .register_fn("to_debug", |s: &mut State| s.as_str().to_owned());
    super::binding::register(&mut e);
    e
}

fn unavailable(name: &str) -> Box<EvalAltResult> {
    EvalAltResult::ErrorRuntime(
        format!("`{name}` is not available in rules").into(),
        Position::NONE,
    )
    .into()
}

/// Refuses a `replace` whose result would be longer than `max` bytes, before building it.
fn check_replace(
    s: &str,
    find: &str,
    sub_len: usize,
    max: usize,
) -> Result<(), Box<EvalAltResult>> {
    if sub_len <= find.len() {
        return Ok(());
    }
    // An empty pattern matches between every character and at both ends.
    let matches = if find.is_empty() {
        s.chars().count() + 1
    } else {
        s.matches(find).count()
    };
    let grown = matches.saturating_mul(sub_len - find.len());
    if s.len().saturating_add(grown) > max {
        return Err(
            EvalAltResult::ErrorDataTooLarge("Length of string".into(), Position::NONE).into(),
        );
    }
    Ok(())
}

/// A load-time parse error's message, saying plainly when a rule reached for something the sandbox leaves out.
pub(crate) fn explain_parse_error(e: &rhai::ParseErrorType) -> String {
    let msg = e.to_string();
    for (word, what) in [
        ("import", "rules cannot load modules"),
        ("export", "rules cannot export to modules"),
        ("eval", "rules cannot evaluate code built at run time"),
    ] {
        if msg == format!("'{word}' is a reserved keyword")
            || msg == format!("reserved keyword '{word}' is disabled")
        {
            return format!("`{word}` is not available in rules: {what}");
        }
    }
    msg
}

/// The scope rules are compiled against: outcome constants, and every request variable (so that strict variable
/// checking catches a misspelt name at load time).
pub(crate) fn compile_scope() -> Scope<'static> {
    let mut scope = Scope::new();
    for state in OUTCOMES {
        scope.push_constant(state.as_str(), state);
    }
    for var in &VARS {
        scope.push(var.name, ());
    }
    scope
}

/// What one rule did.
pub(crate) enum RuleResult {
    /// It returned `()`.
    NoMatch,
    /// It returned an outcome.
    Match(State),
    /// It failed; the message says why.
    Error(String),
}

/// Evaluates `rules` (in order) against `req`, writing one result per rule into `out`.
///
/// A rule compiled to native code runs as such; the rest, and any compiled rule that meets a case only the
/// interpreter can settle (see [`compile`](super::compile)), run in Rhai. The scope Rhai needs is filled once
/// per decision, and only if some rule needs it. Each rule sees the request as constants (so no rule can change
/// what a later rule sees) and its own variables are dropped before the next rule runs.
pub(crate) fn evaluate<'a>(
    engine: &rhai::Engine,
    limits: &Limits,
    req: &TrackRequest,
    signals: &DecisionCtx,
    rules: impl Iterator<Item = &'a Rule> + Clone,
    out: &mut Vec<RuleResult>,
) {
    let ctx = Ctx::new(req, signals);
    let mut rules = rules.peekable();
    // The fast path: compiled rules, for as long as they settle.
    while let Some(rule) = rules.peek() {
        let Some(result) = rule.compiled.as_ref().and_then(|c| c.eval(&ctx)) else {
            break;
        };
        out.push(match result {
            Some(s) => RuleResult::Match(s),
            None => RuleResult::NoMatch,
        });
        rules.next();
    }
    if rules.peek().is_none() {
        return;
    }
    SCOPE.with(|cell| {
        let Ok(mut scope) = cell.try_borrow_mut() else {
            // Re-entered from inside a rule (impossible through the public API): use a fresh scope.
            let mut scope = Scope::new();
            run(engine, limits, &ctx, rules, out, &mut scope);
            return;
        };
        run(engine, limits, &ctx, rules, out, &mut scope);
    });
}

fn run<'a>(
    engine: &rhai::Engine,
    limits: &Limits,
    ctx: &Ctx<'_>,
    rules: impl Iterator<Item = &'a Rule> + Clone,
    out: &mut Vec<RuleResult>,
    scope: &mut Scope<'static>,
) {
    // Only the variables some remaining rule reads: building `custom` or a string nobody reads is most of
    // what filling the scope costs.
    let vars = rules.clone().fold(0, |m, r| m | r.vars);
    fill_scope(scope, ctx.req, vars);
    let base = scope.len();
    let budget = Duration::from_millis(limits.time_limit_ms.unsigned_abs());
    for rule in rules {
        if let Some(result) = rule.compiled.as_ref().and_then(|c| c.eval(ctx)) {
            out.push(match result {
                Some(s) => RuleResult::Match(s),
                None => RuleResult::NoMatch,
            });
            continue;
        }
        DEADLINE.set(Some(Instant::now() + budget));
        LIMIT_HIT.set(Hit::None);
        let result = catch_unwind(AssertUnwindSafe(|| {
            engine.eval_ast_with_scope::<Dynamic>(scope, &rule.ast)
        }));
        DEADLINE.set(None);
        let hit = LIMIT_HIT.replace(Hit::None);
        scope.rewind(base);
        let result = match result {
            Ok(r) => r,
            Err(panic) => {
                out.push(RuleResult::Error(format!(
                    "rule panicked: {}",
                    panic_message(panic.as_ref())
                )));
                continue;
            }
        };
        out.push(match result {
            // A limit was reached but the error was swallowed by a standard function: still a failure.
            Ok(_) if hit == Hit::Operations => RuleResult::Error(format!(
                "operation limit of {} exceeded",
                limits.max_operations
            )),
            Ok(_) if hit == Hit::Time => {
                RuleResult::Error(format!("time limit of {}ms exceeded", limits.time_limit_ms))
            }
            Ok(v) if v.is_unit() => RuleResult::NoMatch,
            Ok(v) => match v.try_cast::<State>() {
                Some(s) => RuleResult::Match(s),
                None => RuleResult::Error(format!(
                    "rule returned a value that is not {} or ()",
                    vars::outcome_names()
                )),
            },
            Err(e) => RuleResult::Error(describe(*e, limits)),
        });
    }
}

fn panic_message(p: &(dyn std::any::Any + Send)) -> &str {
    p.downcast_ref::<&str>()
        .copied()
        .or_else(|| p.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("unknown panic")
}

/// The request variables a rule reads, as a bit set over [`VARS`]: every one of them if the rule could read
/// variables in a way a walk of its syntax tree does not show (`is_def_var`, functions).
pub(crate) fn vars_used(ast: &AST) -> u16 {
    let all = vars::ALL;
    if ast.has_functions() {
        return all;
    }
    let mut used = 0u16;
    ast.walk(&mut |path: &[ASTNode]| {
        match path.last() {
            Some(ASTNode::Expr(Expr::Variable(v, _, _))) => {
                if let Some(bit) = vars::bit(v.1.as_str()) {
                    used |= bit;
                }
            }
            Some(ASTNode::Expr(Expr::FnCall(f, _) | Expr::MethodCall(f, _)))
            | Some(ASTNode::Stmt(Stmt::FnCall(f, _)))
                if f.name.as_str() == "is_def_var" =>
            {
                used = all;
            }
            _ => {}
        }
        true
    });
    used
}

/// Fills `scope` for one decision: the outcome constants (kept from the previous decision on this thread when
/// they are still there), then the request variables in `vars` (a set from [`vars_used`]).
fn fill_scope(scope: &mut Scope<'static>, req: &TrackRequest, vars: u16) {
    // INVARIANT: this is the only writer of the per-thread scope, and the outcomes it pushes first are
    // constants, so a scope holding at least that many entries starts with them.
    if scope.len() >= OUTCOMES.len() {
        scope.rewind(OUTCOMES.len());
    } else {
        scope.clear();
        for state in OUTCOMES {
            scope.push_constant(state.as_str(), state);
        }
    }
    let a = &req.attributes;
    for (i, var) in VARS.iter().enumerate() {
        let Read::Text(read) = var.read else { continue };
        let name = var.name;
        if vars & (1 << i) == 0 {
            continue;
        }
        match read(req) {
            Some(s) => scope.push_constant(name, ImmutableString::from(s)),
            None => scope.push_constant(name, ()),
        };
    }
    if vars & vars::CUSTOM_BIT != 0 {
        let mut custom = Map::new();
        for (k, v) in &a.custom {
            let v = match v {
                CustomValue::String(s) => Dynamic::from(ImmutableString::from(s.as_str())),
                CustomValue::Int(i) => Dynamic::from(*i as INT),
                CustomValue::Float(f) => Dynamic::from(*f as FLOAT),
                CustomValue::Bool(b) => Dynamic::from(*b),
            };
            custom.insert(k.as_str().into(), v);
        }
        scope.push_constant(vars::CUSTOM, custom);
    }
}

/// A rule error's message, with the rule line and column where Rhai reports one.
fn describe(mut e: EvalAltResult, limits: &Limits) -> String {
    let pos = e.take_position();
    let msg = match &e {
        EvalAltResult::ErrorTooManyOperations(_) => {
            format!("operation limit of {} exceeded", limits.max_operations)
        }
        EvalAltResult::ErrorTerminated(..) => {
            format!("time limit of {}ms exceeded", limits.time_limit_ms)
        }
        EvalAltResult::ErrorStackOverflow(_) => {
            format!("call depth limit of {} exceeded", limits.max_call_depth)
        }
        EvalAltResult::ErrorDataTooLarge(what, _) => format!(
            "{what} exceeds its limit (strings {} bytes, arrays {} items, maps {} entries)",
            limits.max_string_size, limits.max_array_size, limits.max_map_size
        ),
        _ => e.to_string(),
    };
    at(pos, msg)
}

fn at(pos: Position, msg: String) -> String {
    match (pos.line(), pos.position()) {
        (Some(l), Some(c)) => format!("{l}:{c}: {msg}"),
        (Some(l), None) => format!("{l}: {msg}"),
        _ => msg,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(src: &str) -> Vec<&'static str> {
        let engine = new_engine(&Limits::default());
        let ast = engine.compile_with_scope(&compile_scope(), src).unwrap();
        let used = vars_used(&ast);
        VARS.iter()
            .enumerate()
            .filter(|(i, _)| used & (1 << i) != 0)
            .map(|(_, v)| v.name)
            .collect()
    }

    fn every_var() -> Vec<&'static str> {
        VARS.iter().map(|v| v.name).collect()
    }

    #[test]
    fn the_scope_holds_what_rules_read() {
        assert_eq!(vars("if email != () { BLOCK }"), ["email"]);
        assert_eq!(
            vars(r#"let d = `${custom.a}:${user_id}`; if d == "" { BLOCK }"#),
            ["user_id", "custom"]
        );
        assert_eq!(vars("BLOCK"), Vec::<&str>::new());
        // Anything that could read a variable by name gets every one.
        assert_eq!(vars(r#"if is_def_var("email") { BLOCK }"#), every_var());
        assert_eq!(vars("fn f() { 1 } if f() == 1 { BLOCK }"), every_var());
    }
}
