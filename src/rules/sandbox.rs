//! The Rhai sandbox: how the engine that runs rules is configured, and how one decision's rules are evaluated.
//!
//! Limits (operations, call depth, expression depth, string/array/map sizes) are Rhai's own; the wall-clock
//! limit is checked from Rhai's progress callback against a per-thread deadline. `eval`, `print`, `debug` and
//! module imports are unavailable, and Rhai has no file, network or process access to begin with.

use rhai::{Dynamic, EvalAltResult, ImmutableString, Map, Position, Scope, FLOAT, INT};
use std::cell::{Cell, RefCell};
use std::time::{Duration, Instant};

use super::compile::Ctx;
use super::Rule;
use crate::config::Limits;
use crate::request::{CustomValue, TrackRequest};
use crate::State;

/// The request variables every rule sees, in scope order.
pub(crate) const REQUEST_VARS: [&str; 10] = [
    "user_id",
    "action",
    "ip_address",
    "device_id",
    "user_agent",
    "email",
    "phone_number",
    "username",
    "redirect_url",
    "custom",
];

const OUTCOMES: [(&str, State); 4] = [
    ("ALLOW", State::Allow),
    ("CHALLENGE_REQUIRED", State::ChallengeRequired),
    ("REVIEW", State::Review),
    ("BLOCK", State::Block),
];

thread_local! {
    /// When the rule running on this thread must stop.
    static DEADLINE: Cell<Option<Instant>> = const { Cell::new(None) };
    /// One scope per thread, refilled for each decision, so no decision allocates a new one.
    static SCOPE: RefCell<Scope<'static>> = RefCell::new(Scope::new());
}

/// Builds the Rhai engine for a ruleset with `limits`.
pub(crate) fn new_engine(limits: &Limits) -> rhai::Engine {
    let mut e = rhai::Engine::new_raw();
    e.register_global_module(rhai::packages::Package::as_shared_module(
        &rhai::packages::StandardPackage::new(),
    ));
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
    e.on_progress(|ops| {
        // Reading the clock costs ~20 ns: do it every 256 operations.
        if ops % 256 == 0 {
            if let Some(deadline) = DEADLINE.get() {
                if Instant::now() >= deadline {
                    return Some(Dynamic::UNIT);
                }
            }
        }
        None
    });
    e.register_type_with_name::<State>("Outcome")
        .register_fn("==", |a: State, b: State| a == b)
        .register_fn("!=", |a: State, b: State| a != b)
        .register_fn("to_string", |s: &mut State| s.as_str().to_owned())
        .register_fn("to_debug", |s: &mut State| s.as_str().to_owned());
    crate::signals::register(&mut e);
    e
}

/// The scope rules are compiled against: outcome constants, and every request variable (so that strict variable
/// checking catches a misspelt name at load time).
pub(crate) fn compile_scope() -> Scope<'static> {
    let mut scope = Scope::new();
    for (name, state) in OUTCOMES {
        scope.push_constant(name, state);
    }
    for name in REQUEST_VARS {
        scope.push(name, ());
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
    rules: impl Iterator<Item = &'a Rule>,
    out: &mut Vec<RuleResult>,
) {
    let ctx = Ctx { req };
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
    rules: impl Iterator<Item = &'a Rule>,
    out: &mut Vec<RuleResult>,
    scope: &mut Scope<'static>,
) {
    fill_scope(scope, ctx.req);
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
        let result = engine.eval_ast_with_scope::<Dynamic>(scope, &rule.ast);
        DEADLINE.set(None);
        scope.rewind(base);
        out.push(match result {
            Ok(v) if v.is_unit() => RuleResult::NoMatch,
            Ok(v) => match v.try_cast::<State>() {
                Some(s) => RuleResult::Match(s),
                None => RuleResult::Error(
                    "rule returned a value that is not ALLOW, CHALLENGE_REQUIRED, REVIEW, BLOCK or ()".to_owned(),
                ),
            },
            Err(e) => RuleResult::Error(describe(*e, limits)),
        });
    }
}

fn fill_scope(scope: &mut Scope<'static>, req: &TrackRequest) {
    scope.clear();
    for (name, state) in OUTCOMES {
        scope.push_constant(name, state);
    }
    let a = &req.attributes;
    scope.push_constant("user_id", ImmutableString::from(req.user_id.as_str()));
    scope.push_constant("action", ImmutableString::from(req.action.as_str()));
    for (name, v) in [
        ("ip_address", &a.ip_address),
        ("device_id", &a.device_id),
        ("user_agent", &a.user_agent),
        ("email", &a.email),
        ("phone_number", &a.phone_number),
        ("username", &a.username),
        ("redirect_url", &a.redirect_url),
    ] {
        match v {
            Some(s) => scope.push_constant(name, ImmutableString::from(s.as_str())),
            None => scope.push_constant(name, ()),
        };
    }
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
    scope.push_constant("custom", custom);
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
