//! The Rhai sandbox: how the engine that runs rules is configured, and how one decision's rules are evaluated.
//!
//! Limits on depth and on string/array/map sizes are Rhai's own. The operation and wall-clock limits are
//! enforced from Rhai's progress callback, which counts every operation of the running rule in a per-thread
//! counter (Rhai's own count misses callbacks run by standard functions, which get a copy of its counters) and
//! reads the clock every [`CLOCK_EVERY`] operations. `eval`, `print`, `debug`, `sleep` and module imports are
//! unavailable, closures cannot capture variables (feature `no_closure`: no shared values, so nothing to
//! contend on), and Rhai has no file, network or process access to begin with.
//!
//! Guards beyond Rhai's own limits:
//! - a limit once reached stays reached: every later operation fails at once, so a standard function that
//!   swallows its callback's errors (`sort` and `dedup` with a comparer), or a `try`/`catch`, cannot carry on,
//!   and the rule fails with that limit's message;
//! - writes to request variables are load errors ([`request_writes`]);
//! - `replace` checks the size of its result before building it, so one call cannot allocate far beyond the
//!   string size limit (16 KiB × 16 KiB = 256 MiB) and run far past the time limit;
//! - rule error messages are written and kept to at most [`MAX_RULE_ERROR_BYTES`], and a thrown value is
//!   measured with its map keys, so a rule cannot make every stored action large;
//! - a panic inside Rhai while a rule runs is caught and becomes that rule's error.
//!
//! Nested data is bounded in [`nesting`](super::nesting): interpreted rules run on a stack sized from the size
//! limits.

use rhai::{
    ASTNode, Dynamic, EvalAltResult, Expr, ImmutableString, Map, Position, Scope, Stmt, AST, FLOAT,
    INT,
};
use std::cell::{Cell, RefCell};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::{Duration, Instant};

use super::compile::Ctx;
use super::rule::Rule;
use super::vars::{self, Read, OUTCOMES, VARS};
use crate::config::Limits;
use crate::request::{CustomValue, TrackRequest};
use crate::response::{RuleErrorKind, State};
use crate::signals::DecisionCtx;

thread_local! {
    /// When the rule running on this thread must stop.
    static DEADLINE: Cell<Option<Instant>> = const { Cell::new(None) };
    /// How many operations the rule running on this thread has run, callbacks included.
    static OPS: Cell<u64> = const { Cell::new(0) };
    /// Which limit the rule running on this thread reached, if any (see [`Hit`]).
    static LIMIT_HIT: Cell<Hit> = const { Cell::new(Hit::None) };
    /// One scope per thread, refilled for each decision, so no decision allocates a new one.
    static SCOPE: RefCell<Scope<'static>> = RefCell::new(Scope::new());
}

/// How often (in operations) the progress callback reads the clock. One operation takes tens of nanoseconds
/// (a debug build: about a microsecond) and reading the clock about 20 ns, so the deadline is seen within
/// microseconds of passing, at about 1 ns per operation.
const CLOCK_EVERY: u64 = 32;

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
    e.on_progress(move |_| {
        // Rhai's own operation count (the argument) misses everything a callback does inside a standard
        // function (`for_each`, `map`, `sort` comparers, `call`): those run on a copy of the counters. Every
        // operation reaches this callback, so count them here.
        // Outside a rule (see `run`) there is no deadline and nothing to count.
        let deadline = DEADLINE.get()?;
        // Sticky: once a limit is reached every later operation stops again, so a standard function that
        // swallows its callback's error cannot carry on.
        if LIMIT_HIT.get() != Hit::None {
            return Some(Dynamic::UNIT);
        }
        let n = OPS.get() + 1;
        OPS.set(n);
        // Rhai stops the rule itself at its next operation when its own count is this far too (then the
        // error may arrive wrapped, as from inside `for_each`): record the limit now, so that the rule fails
        // with this limit's message either way; the next operation stops here if Rhai's count is behind.
        if n >= max_operations {
            LIMIT_HIT.set(Hit::Operations);
        }
        if n % CLOCK_EVERY == 0 && Instant::now() >= deadline {
            LIMIT_HIT.set(Hit::Time);
            return Some(Dynamic::UNIT);
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
    // Rhai takes a registered function to be pure (callable on a constant) unless told otherwise: these change
    // their string, so a rule must not be able to call them on a request variable.
    rhai::FuncRegistration::new("replace")
        .with_purity(false)
        .register_into_engine(
            &mut e,
            move |s: &mut ImmutableString,
                  find: &str,
                  sub: &str|
                  -> Result<(), Box<EvalAltResult>> {
                if s.is_empty() {
                    return Ok(());
                }
                check_replace(s, find, sub.len(), max_string)?;
                *s = s.replace(find, sub).into();
                Ok(())
            },
        );
    rhai::FuncRegistration::new("replace")
        .with_purity(false)
        .register_into_engine(
            &mut e,
            move |s: &mut ImmutableString,
                  find: char,
                  sub: &str|
                  -> Result<(), Box<EvalAltResult>> {
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
    super::nesting::register(&mut e);
    // Rhai's fast operators answer a comparison between a string and a number with its built-in `false` before
    // looking at registered functions: off, so that the type rules in `types.rs` apply.
    e.set_fast_operators(false);
    super::types::register(&mut e);
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

/// One result per rule of a decision, on the stack for up to 16 rules (a decision allocates no list of them).
pub(crate) type Results = smallvec::SmallVec<[RuleResult; 16]>;

/// What one rule did.
pub(crate) enum RuleResult {
    /// It returned `()`.
    NoMatch,
    /// It returned an outcome.
    Match(State),
    /// It failed: what kind of failure, and the message saying why.
    Error(RuleErrorKind, String),
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
    out: &mut Results,
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
    let pending = rules.clone();
    let ran = super::nesting::with_stack(limits, || {
        SCOPE.with(|cell| {
            let Ok(mut scope) = cell.try_borrow_mut() else {
                // Re-entered from inside a rule (impossible through the public API): use a fresh scope.
                let mut scope = Scope::new();
                run(engine, limits, &ctx, rules, out, &mut scope);
                return;
            };
            run(engine, limits, &ctx, rules, out, &mut scope);
        });
    });
    if let Err(msg) = ran {
        out.extend(pending.map(|_| RuleResult::Error(RuleErrorKind::Runtime, msg.clone())));
    }
}

fn run<'a>(
    engine: &rhai::Engine,
    limits: &Limits,
    ctx: &Ctx<'_>,
    rules: impl Iterator<Item = &'a Rule> + Clone,
    out: &mut Results,
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
        OPS.set(0);
        LIMIT_HIT.set(Hit::None);
        DEADLINE.set(Some(Instant::now() + budget));
        let result = catch_unwind(AssertUnwindSafe(|| {
            #[cfg(test)]
            if PANIC_IN_RULES.get() {
                std::panic::resume_unwind(Box::new("a panic for the test"));
            }
            engine.eval_ast_with_scope::<Dynamic>(scope, &rule.ast)
        }));
        DEADLINE.set(None);
        let hit = LIMIT_HIT.replace(Hit::None);
        scope.rewind(base);
        let result = match result {
            Ok(r) => r,
            Err(panic) => {
                out.push(RuleResult::Error(
                    RuleErrorKind::Panic,
                    truncate_message(format!("rule panicked: {}", panic_message(panic.as_ref()))),
                ));
                continue;
            }
        };
        // A limit reached is the rule's error whatever happened after it: a standard function or a
        // `try`/`catch` may have swallowed the first error, or wrapped it in another.
        let limit = match hit {
            Hit::None => None,
            Hit::Operations => Some((
                RuleErrorKind::OperationLimit,
                format!("operation limit of {} exceeded", limits.max_operations),
            )),
            Hit::Time => Some((
                RuleErrorKind::TimeLimit,
                format!("time limit of {}ms exceeded", limits.time_limit_ms),
            )),
        };
        out.push(match (result, limit) {
            (Ok(_), Some((kind, msg))) => RuleResult::Error(kind, msg),
            (Err(e), Some((kind, msg))) => RuleResult::Error(kind, at(e.position(), msg)),
            (Ok(v), None) if v.is_unit() => RuleResult::NoMatch,
            (Ok(v), None) => match v.try_cast::<State>() {
                Some(s) => RuleResult::Match(s),
                None => RuleResult::Error(
                    RuleErrorKind::WrongReturnType,
                    format!(
                        "rule returned a value that is not {} or ()",
                        vars::outcome_names()
                    ),
                ),
            },
            (Err(e), None) => {
                let (kind, msg) = describe(*e, limits);
                RuleResult::Error(kind, msg)
            }
        });
    }
}

/// Evaluates `ast` (an expression taken out of a rule, for [`explain`](super::explain)) in Rhai against `req`,
/// under the same limits as a rule, on the signals of the decision running on this thread. Its value, or the
/// error message.
pub(crate) fn eval_value(
    engine: &rhai::Engine,
    limits: &Limits,
    req: &TrackRequest,
    ast: &AST,
) -> Result<Dynamic, String> {
    let budget = Duration::from_millis(limits.time_limit_ms.unsigned_abs());
    let ran = super::nesting::with_stack(limits, || {
        let mut scope = Scope::new();
        fill_scope(&mut scope, req, vars::ALL);
        OPS.set(0);
        LIMIT_HIT.set(Hit::None);
        DEADLINE.set(Some(Instant::now() + budget));
        let result = catch_unwind(AssertUnwindSafe(|| {
            engine.eval_ast_with_scope::<Dynamic>(&mut scope, ast)
        }));
        DEADLINE.set(None);
        let hit = LIMIT_HIT.replace(Hit::None);
        match (result, hit) {
            (Err(panic), _) => Err(format!(
                "evaluation panicked: {}",
                panic_message(panic.as_ref())
            )),
            (_, Hit::Operations) => Err(format!(
                "operation limit of {} exceeded",
                limits.max_operations
            )),
            (_, Hit::Time) => Err(format!("time limit of {}ms exceeded", limits.time_limit_ms)),
            (Ok(Ok(v)), Hit::None) => Ok(v),
            (Ok(Err(e)), Hit::None) => Err(describe(*e, limits).1),
        }
    });
    ran.and_then(|r| r)
}

#[cfg(test)]
thread_local! {
    /// Makes every interpreted rule on this thread panic, as a fault in riskgate or Rhai would.
    static PANIC_IN_RULES: Cell<bool> = const { Cell::new(false) };
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

/// Where `ast` would change a request variable, each as a position and a message.
///
/// Rhai refuses `user_id = …` and mutating standard methods (`custom.clear()`) on a constant at run time, but
/// not a property or index write into a constant map (`custom.x = true`, `custom["x"] = 1`,
/// `custom.dest[0] = 'z'`), and not a write through `this` in a script function called on one in method style
/// (`custom.f()`, `custom.call(f)`). Rules cannot capture variables (feature `no_closure`) and Rhai copies
/// values on assignment and into function parameters, so these two shapes are the only ways left to change a
/// variable; refusing both at load keeps every rule seeing exactly the request, on either path (compiled or
/// interpreted). A rule's own variable named like a request variable is refused too: the name is read-only.
pub(crate) fn request_writes(ast: &AST) -> Vec<(Position, String)> {
    fn root(mut e: &Expr) -> Option<&str> {
        loop {
            match e {
                Expr::Dot(b, ..) | Expr::Index(b, ..) => e = &b.lhs,
                Expr::Variable(v, ..) => return vars::find(v.1.as_str()).map(|var| var.name),
                _ => return None,
            }
        }
    }
    let own: Vec<String> = ast.iter_functions().map(|f| f.name.to_owned()).collect();
    let binds_this = |name: &str| name == "call" || own.iter().any(|f| f == name);
    let mut found: Vec<(Position, String)> = Vec::new();
    ast.walk(&mut |path: &[ASTNode]| {
        match path.last() {
            Some(ASTNode::Stmt(Stmt::Assignment(x))) => {
                if let Some(var) = root(&x.1.lhs) {
                    found.push((
                        x.1.lhs.start_position(),
                        format!("`{var}` is part of the request and cannot be changed (copy it first: `let c = {var};`)"),
                    ));
                }
            }
            Some(ASTNode::Expr(Expr::Dot(b, _, _))) => {
                if let Some(var) = root(&b.lhs) {
                    let mut next = Some(&b.rhs);
                    while let Some(e) = next {
                        let (call, rest) = match e {
                            Expr::Dot(c, ..) | Expr::Index(c, ..) => (&c.lhs, Some(&c.rhs)),
                            other => (other, None),
                        };
                        if let Expr::MethodCall(f, pos) = call {
                            if binds_this(f.name.as_str()) {
                                found.push((
                                    *pos,
                                    format!(
                                        "`{}` cannot be called on `{var}` in method style: it could change the request (call it as `{}({var}, …)`)",
                                        f.name, f.name
                                    ),
                                ));
                            }
                        }
                        next = rest;
                    }
                }
            }
            _ => {}
        }
        true
    });
    found.sort_by_key(|(p, _)| (p.line(), p.position()));
    found.dedup_by_key(|(p, _)| *p);
    found
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

/// A rule error's kind and message, with the rule line and column where Rhai reports one.
fn describe(mut e: EvalAltResult, limits: &Limits) -> (RuleErrorKind, String) {
    let pos = e.take_position();
    let (kind, msg) = match &e {
        EvalAltResult::ErrorTooManyOperations(_) => (
            RuleErrorKind::OperationLimit,
            format!("operation limit of {} exceeded", limits.max_operations),
        ),
        EvalAltResult::ErrorTerminated(..) => (
            RuleErrorKind::TimeLimit,
            format!("time limit of {}ms exceeded", limits.time_limit_ms),
        ),
        EvalAltResult::ErrorStackOverflow(_) => (
            RuleErrorKind::DepthLimit,
            format!("call depth limit of {} exceeded", limits.max_call_depth),
        ),
        EvalAltResult::ErrorDataTooLarge(what, _) => (
            RuleErrorKind::SizeLimit,
            format!(
                "{what} exceeds its limit (strings {} bytes, arrays {} items, maps {} entries)",
                limits.max_string_size, limits.max_array_size, limits.max_map_size
            ),
        ),
        e if super::nesting::is_too_deep(e) => (RuleErrorKind::DepthLimit, bounded_display(e)),
        EvalAltResult::ErrorRuntime(v, _)
            if value_bytes(v, limits.max_string_size) > limits.max_string_size =>
        {
            (
                RuleErrorKind::SizeLimit,
                format!(
                    "thrown value exceeds its limit (strings {} bytes, map keys included)",
                    limits.max_string_size
                ),
            )
        }
        _ => (
            RuleErrorKind::Runtime,
            super::types::plain(&bounded_display(&e)),
        ),
    };
    (kind, truncate_message(at(pos, msg)))
}

/// The longest rule error message kept, in bytes: rule errors are stored with each action, so a rule that
/// throws a large value must not make every action large. A longer message is cut at a character boundary and
/// ends with `…`.
pub(crate) const MAX_RULE_ERROR_BYTES: usize = 1024;

/// `msg` cut to at most [`MAX_RULE_ERROR_BYTES`] bytes (see there).
pub(crate) fn truncate_message(mut msg: String) -> String {
    if msg.len() > MAX_RULE_ERROR_BYTES {
        let mut end = MAX_RULE_ERROR_BYTES - '…'.len_utf8();
        while !msg.is_char_boundary(end) {
            end -= 1;
        }
        msg.truncate(end);
        msg.push('…');
    }
    msg
}

/// `e` as text, written no further than just past [`MAX_RULE_ERROR_BYTES`] (then cut by
/// [`truncate_message`]), so that a thrown 16 MB map is never written out in full.
fn bounded_display(e: &EvalAltResult) -> String {
    struct Bounded(String);
    impl std::fmt::Write for Bounded {
        fn write_str(&mut self, s: &str) -> std::fmt::Result {
            let room = MAX_RULE_ERROR_BYTES + 4 - self.0.len();
            if s.len() <= room {
                self.0.push_str(s);
                return Ok(());
            }
            // Past the bound: keep whole characters up to it, plus one more byte's worth so the result is
            // longer than the bound and gets cut with `…`.
            for c in s.chars() {
                if self.0.len() > MAX_RULE_ERROR_BYTES {
                    break;
                }
                self.0.push(c);
            }
            Err(std::fmt::Error) // stops the formatting
        }
    }
    let mut out = Bounded(String::new());
    // An error here only means the text was cut.
    let _ = std::fmt::write(&mut out, format_args!("{e}"));
    out.0
}

/// The bytes of text in `v`: strings, and map keys (which Rhai's own size check leaves out), counting no
/// further than just past `stop`.
fn value_bytes(v: &Dynamic, stop: usize) -> usize {
    fn walk(v: &Dynamic, total: &mut usize, stop: usize) {
        if *total > stop {
            return;
        }
        if let Some(s) = v.read_lock::<ImmutableString>() {
            *total += s.len();
        } else if let Some(a) = v.read_lock::<rhai::Array>() {
            for x in a.iter() {
                walk(x, total, stop);
            }
        } else if let Some(m) = v.read_lock::<Map>() {
            for (k, x) in m.iter() {
                *total += k.len();
                walk(x, total, stop);
            }
        }
    }
    let mut total = 0;
    walk(v, &mut total, stop);
    total
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

    /// The one error of `source` run (interpreted) as the only rule, under `limits`.
    fn error_of(source: &str, limits: crate::SandboxLimits) -> crate::RuleError {
        let rules = crate::RuleSet::builder()
            .compile_rules(false)
            .sandbox_limits(limits)
            .rule("r", source)
            .build()
            .unwrap();
        let engine = crate::Engine::builder().ruleset(rules).build().unwrap();
        let resp = engine
            .track(&TrackRequest::new("u", "signIn").custom("n", 3))
            .unwrap();
        assert_eq!(resp.errors.len(), 1, "{source}: {:?}", resp.errors);
        resp.errors[0].clone()
    }

    /// The default limits with all the time a loaded test machine needs: only the time limit case runs out of it.
    fn roomy() -> crate::SandboxLimits {
        crate::SandboxLimits {
            time_limit: std::time::Duration::from_secs(60),
            ..Default::default()
        }
    }

    fn kind_of(source: &str) -> RuleErrorKind {
        error_of(source, roomy()).kind
    }

    #[test]
    fn every_rule_error_has_its_kind() {
        let mut tight = roomy();
        tight.time_limit = std::time::Duration::from_millis(20);
        tight.max_operations = 1_000_000_000;
        let e = error_of("loop { }", tight);
        assert_eq!(e.kind, RuleErrorKind::TimeLimit, "{}", e.message);
        assert!(
            e.message.contains("time limit of 20ms exceeded"),
            "{}",
            e.message
        );

        let mut few = roomy();
        few.max_operations = 1_000;
        let e = error_of("let i = 0; loop { i += 1; }", few);
        assert_eq!(e.kind, RuleErrorKind::OperationLimit, "{}", e.message);
        assert!(e.message.contains("operation limit of"), "{}", e.message);

        let e = error_of(r#"let s = "x"; loop { s += s; }"#, roomy());
        assert_eq!(e.kind, RuleErrorKind::SizeLimit, "{}", e.message);
        assert!(e.message.contains("exceeds its limit"), "{}", e.message);

        let e = error_of("fn f(n) { f(n + 1) } f(0)", roomy());
        assert_eq!(e.kind, RuleErrorKind::DepthLimit, "{}", e.message);
        assert!(
            e.message.contains("call depth limit of 16 exceeded"),
            "{}",
            e.message
        );

        // A literal such as `42` is refused at load; a value read from the request is not known until then.
        assert_eq!(kind_of("custom.n"), RuleErrorKind::WrongReturnType);
        assert_eq!(kind_of(r#"throw "no""#), RuleErrorKind::Runtime);
        assert_eq!(kind_of("custom.n.len()"), RuleErrorKind::Runtime);

        PANIC_IN_RULES.set(true);
        let e = error_of("ALLOW", roomy());
        PANIC_IN_RULES.set(false);
        assert_eq!(e.kind, RuleErrorKind::Panic);
        assert_eq!(e.message, "rule panicked: a panic for the test");
    }

    #[test]
    fn a_thrown_value_over_the_size_limit_is_a_size_error() {
        let mut small = roomy();
        small.max_string_size = 64;
        let e = error_of(
            r#"let m = #{}; for i in 0..10 { m["key-number-" + i] = i; } throw m;"#,
            small,
        );
        assert_eq!(e.kind, RuleErrorKind::SizeLimit, "{}", e.message);
        assert!(
            e.message.contains("thrown value exceeds its limit"),
            "{}",
            e.message
        );
    }

    #[test]
    fn kinds_are_serialised_in_snake_case_beside_the_message() {
        let e = crate::RuleError {
            rule_id: crate::RuleId::new("r"),
            kind: RuleErrorKind::WrongReturnType,
            message: "m".into(),
        };
        let v = serde_json::to_value(&e).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"ruleId": "r", "kind": "wrong_return_type", "message": "m"})
        );
        for (kind, text) in [
            (RuleErrorKind::TimeLimit, "time_limit"),
            (RuleErrorKind::OperationLimit, "operation_limit"),
            (RuleErrorKind::SizeLimit, "size_limit"),
            (RuleErrorKind::DepthLimit, "depth_limit"),
            (RuleErrorKind::Runtime, "runtime"),
            (RuleErrorKind::Panic, "panic"),
        ] {
            assert_eq!(serde_json::to_value(kind).unwrap(), text);
        }
        // An entry written before kinds existed reads as a runtime error.
        let old: crate::RuleError =
            serde_json::from_str(r#"{"ruleId":"r","message":"m"}"#).unwrap();
        assert_eq!(old.kind, RuleErrorKind::Runtime);
    }

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
