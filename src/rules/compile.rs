//! Native compilation of the common rule subset.
//!
//! At load time each rule's Rhai AST is walked once. A rule written only with the common subset (comparisons,
//! `&&`/`||`/`!`, `if`/`else` and `return`, `let`/`const` variables, request variables and `custom.field`, the
//! string methods `starts_with`, `ends_with`, `contains`, `len`, `is_empty` and `split(…).pop()`, `in` on a
//! literal array, numeric, string and bool literals, `()`, the outcome constants, and the signal functions)
//! becomes a tree of Rust closures that reads the request directly: no `Scope`, no `Dynamic`, no allocation.
//! Signal calls go to the same functions the Rhai-registered ones call, with the same per-decision memo. Any
//! other rule runs in Rhai's interpreter as before.
//!
//! # Same results as Rhai
//! The closures follow Rhai's own rules for every value they produce: comparisons between different
//! non-numeric types are `false` (`!=` is `true`), `()` equals only `()`, an integer compared with a float is
//! compared as a float, a string's `len` counts characters, a missing `custom` field reads as `()`.
//!
//! Where Rhai would raise an error (a method on `()`, `&&` on a non-bool, an ordering between outcomes or
//! between a string and a number or with `()` (the type rules of `types.rs`), a rule whose value is not an
//! outcome or `()`), or where the closures are not sure, they give up and the rule is
//! evaluated by Rhai's interpreter instead, so errors keep Rhai's exact messages and positions. Giving up is
//! always safe because rules have no side effects. `tests/differential.rs` checks both paths against each other
//! on generated rules and requests.

use rhai::{Dynamic, Expr, ImmutableString, Stmt, StmtBlock, AST, INT};
use std::cell::Cell;

use super::vars::{self, Read};
use crate::config::Limits;
use crate::request::{CustomValue, TrackRequest, MAX_CUSTOM_STRING_BYTES, MAX_LONG_FIELD_BYTES};
use crate::signals::catalogue::{self, Call};
use crate::signals::{self, DecisionCtx};
use crate::State;

/// How many `let` variables holding run-time values a compiled rule may have.
const LOCALS: usize = 8;

/// How many distinct `custom` fields of one ruleset get a per-decision slot (see [`CustomSlots`]); a
/// ruleset reading more looks the rest up at each read.
const CUSTOM_SLOTS: usize = 16;

/// The `custom` fields a ruleset's compiled rules read, one slot each: each field is looked up in the
/// request once per decision, on its first read, and every later read of it (in any rule) indexes the slot.
///
/// INVARIANT: the rules evaluated with one [`Ctx`] were all compiled with one `CustomSlots` (one ruleset
/// load), so a slot number means one field.
#[derive(Default)]
pub(crate) struct CustomSlots(Vec<Box<str>>);

impl CustomSlots {
    /// The slot of `key`, handed out on its first use; `None` when every slot is taken.
    fn slot(&mut self, key: &str) -> Option<usize> {
        if let Some(i) = self.0.iter().position(|k| &**k == key) {
            return Some(i);
        }
        if self.0.len() == CUSTOM_SLOTS {
            return None;
        }
        self.0.push(key.into());
        Some(self.0.len() - 1)
    }
}

/// What a compiled rule reads: the request under decision, its signals, and the rule's `let` variables.
pub(crate) struct Ctx<'a> {
    pub req: &'a TrackRequest,
    pub signals: &'a DecisionCtx,
    /// The `custom` fields read so far in this decision, by [`CustomSlots`] slot.
    custom: [Cell<Option<Val<'a>>>; CUSTOM_SLOTS],
    // INVARIANT: a rule reads a slot only after its own `let` wrote it (bindings are resolved lexically at
    // compile time), so what an earlier rule left there is never seen.
    locals: [Cell<Val<'a>>; LOCALS],
}

impl<'a> Ctx<'a> {
    pub fn new(req: &'a TrackRequest, signals: &'a DecisionCtx) -> Self {
        Ctx {
            req,
            signals,
            custom: std::array::from_fn(|_| Cell::new(None)),
            locals: std::array::from_fn(|_| Cell::new(Val::Unit)),
        }
    }

    /// `custom.<key>`, looked up once per decision when it has a slot.
    fn custom(&self, slot: Option<usize>, key: &str) -> Val<'a> {
        let Some(cell) = slot.and_then(|i| self.custom.get(i)) else {
            return custom_val(self.req, key);
        };
        if let Some(v) = cell.get() {
            return v;
        }
        let v = custom_val(self.req, key);
        cell.set(Some(v));
        v
    }
}

/// A value while a compiled rule runs. Strings are borrowed from the request or its signals.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Val<'a> {
    Unit,
    Bool(bool),
    Int(INT),
    Float(f64),
    Str(&'a str),
    Outcome(State),
}

/// How a statement finished: it produced a value, or `return`ed one from the rule.
enum Flow<'a> {
    Next(Val<'a>),
    Return(Val<'a>),
}

/// `None` means "ask Rhai": the closures met something whose result only the interpreter can give.
type ExprFn = Box<dyn for<'a> Fn(&Ctx<'a>) -> Option<Val<'a>> + Send + Sync>;
type StmtFn = Box<dyn for<'a> Fn(&Ctx<'a>) -> Option<Flow<'a>> + Send + Sync>;

/// A rule compiled to native closures.
pub(crate) struct Compiled {
    body: StmtFn,
}

impl Compiled {
    /// Runs the rule: `Some(None)` for no match, `Some(Some(state))` for a match, `None` when the interpreter
    /// must decide (an error, or a value that is neither an outcome nor `()`).
    pub fn eval(&self, ctx: &Ctx<'_>) -> Option<Option<State>> {
        let v = match (self.body)(ctx)? {
            Flow::Next(v) | Flow::Return(v) => v,
        };
        match v {
            Val::Unit => Some(None),
            Val::Outcome(s) => Some(Some(s)),
            _ => None,
        }
    }
}

/// Compiles `ast` if it is in the subset and cannot reach a sandbox limit; `None` leaves it to Rhai.
pub(crate) fn compile(ast: &AST, limits: &Limits, custom: &mut CustomSlots) -> Option<Compiled> {
    if ast.has_functions() {
        return None;
    }
    // Strings a rule can see are capped by request validation; if the configured limit is lower, Rhai may
    // refuse them, so such rules stay with Rhai.
    let longest = MAX_LONG_FIELD_BYTES.max(MAX_CUSTOM_STRING_BYTES);
    if limits.max_string_size != 0 && limits.max_string_size < longest {
        return None;
    }
    let mut c = Compiler {
        nodes: 0,
        limits,
        scope: Vec::new(),
        slots: 0,
        custom,
    };
    let body = c.block(ast.statements())?;
    // A compiled rule has no loops, so Rhai would count at most a few operations per node: keep well inside
    // the operation limit so that no rule compiles that Rhai would stop.
    let bound = c.nodes.saturating_mul(4).saturating_add(16);
    if limits.max_operations != 0 && bound as u64 > limits.max_operations {
        return None;
    }
    Some(Compiled { body })
}

/// A constant known at load time.
#[derive(Debug, Clone, PartialEq)]
enum Konst {
    Unit,
    Bool(bool),
    Int(INT),
    Float(f64),
    Str(Box<str>),
    Outcome(State),
    Array(Vec<Konst>),
}

impl Konst {
    fn from_dynamic(d: &Dynamic) -> Option<Konst> {
        if d.is_unit() {
            Some(Konst::Unit)
        } else if let Ok(b) = d.as_bool() {
            Some(Konst::Bool(b))
        } else if let Ok(i) = d.as_int() {
            Some(Konst::Int(i))
        } else if let Ok(f) = d.as_float() {
            Some(Konst::Float(f))
        } else if d.is_string() {
            Some(Konst::Str(
                d.clone().into_immutable_string().ok()?.as_str().into(),
            ))
        } else if let Some(s) = d.clone().try_cast::<State>() {
            Some(Konst::Outcome(s))
        } else if d.is_array() {
            let items = d.clone().into_array().ok()?;
            items
                .iter()
                .map(Konst::from_dynamic)
                .collect::<Option<_>>()
                .map(Konst::Array)
        } else {
            None
        }
    }

    /// The constant as a value; strings and arrays have no borrowed form.
    fn scalar(&self) -> Option<Val<'static>> {
        Some(match *self {
            Konst::Unit => Val::Unit,
            Konst::Bool(b) => Val::Bool(b),
            Konst::Int(i) => Val::Int(i),
            Konst::Float(f) => Val::Float(f),
            Konst::Outcome(s) => Val::Outcome(s),
            Konst::Str(_) | Konst::Array(_) => return None,
        })
    }

    fn val(&self) -> Option<Val<'_>> {
        match self {
            Konst::Str(s) => Some(Val::Str(s)),
            k => k.scalar(),
        }
    }
}

/// An expression being compiled: a constant, or code to run.
enum Code {
    Const(Konst),
    Run(ExprFn),
}

impl Code {
    fn into_fn(self) -> Option<ExprFn> {
        match self {
            Code::Run(f) => Some(f),
            Code::Const(k) => {
                let v = k.scalar()?;
                Some(Box::new(move |_: &Ctx<'_>| Some(v)))
            }
        }
    }
}

/// The comparison operators, as Rhai applies them.
#[derive(Debug, Clone, Copy)]
enum Cmp {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

impl Cmp {
    fn parse(name: &str) -> Option<Cmp> {
        Some(match name {
            "==" => Cmp::Eq,
            "!=" => Cmp::Ne,
            "<" => Cmp::Lt,
            "<=" => Cmp::Le,
            ">" => Cmp::Gt,
            ">=" => Cmp::Ge,
            _ => return None,
        })
    }

    fn ord(self, o: std::cmp::Ordering) -> bool {
        use std::cmp::Ordering::*;
        match self {
            Cmp::Eq => o == Equal,
            Cmp::Ne => o != Equal,
            Cmp::Lt => o == Less,
            Cmp::Le => o != Greater,
            Cmp::Gt => o == Greater,
            Cmp::Ge => o != Less,
        }
    }

    fn float(self, a: f64, b: f64) -> bool {
        match self {
            Cmp::Eq => a == b,
            Cmp::Ne => a != b,
            Cmp::Lt => a < b,
            Cmp::Le => a <= b,
            Cmp::Gt => a > b,
            Cmp::Ge => a >= b,
        }
    }

    /// `a op b` with Rhai's built-in operators; `None` where Rhai would raise an error.
    fn apply(self, a: Val<'_>, b: Val<'_>) -> Option<bool> {
        use Val::*;
        Some(match (a, b) {
            (Int(x), Int(y)) => self.ord(x.cmp(&y)),
            (Float(x), Float(y)) => self.float(x, y),
            (Int(x), Float(y)) => self.float(x as f64, y),
            (Float(x), Int(y)) => self.float(x, y as f64),
            (Str(x), Str(y)) => self.ord(x.cmp(y)),
            // An ordering between a string and a number, or with `()`, is a rule error (`rules/types.rs`).
            (Str(_), Int(_) | Float(_)) | (Int(_) | Float(_), Str(_)) | (Unit, _) | (_, Unit)
                if !matches!(self, Cmp::Eq | Cmp::Ne) =>
            {
                return None
            }
            (Bool(x), Bool(y)) => self.ord(x.cmp(&y)),
            // `() == ()` is true; every other operator on two units is false.
            (Unit, Unit) => matches!(self, Cmp::Eq),
            // Outcomes have only the `==` and `!=` riskgate registers.
            (Outcome(x), Outcome(y)) => match self {
                Cmp::Eq => x == y,
                Cmp::Ne => x != y,
                _ => return None,
            },
            // Different types, not both numeric: every comparison is false, `!=` is true.
            _ => matches!(self, Cmp::Ne),
        })
    }
}

/// `f op k` (`k op f` when `flipped`), specialised at compile time by the constant's type: a value of that
/// type is compared directly, exactly as [`Cmp::apply`]'s arm for the pair does; a value of any other type goes
/// through `Cmp::apply` itself, so the semantics stay written once.
fn against(op: Cmp, f: ExprFn, k: Konst, flipped: bool) -> Option<Code> {
    k.val()?;
    fn general(op: Cmp, v: Val<'_>, k: Val<'_>, flipped: bool) -> Option<Val<'static>> {
        if flipped {
            op.apply(k, v)
        } else {
            op.apply(v, k)
        }
        .map(Val::Bool)
    }
    Some(Code::Run(match k {
        Konst::Int(i) => Box::new(move |ctx: &Ctx<'_>| match f(ctx)? {
            Val::Int(x) => Some(Val::Bool(op.ord(if flipped {
                i.cmp(&x)
            } else {
                x.cmp(&i)
            }))),
            v => general(op, v, Val::Int(i), flipped),
        }),
        Konst::Float(y) => Box::new(move |ctx: &Ctx<'_>| match f(ctx)? {
            Val::Float(x) => Some(Val::Bool(if flipped {
                op.float(y, x)
            } else {
                op.float(x, y)
            })),
            v => general(op, v, Val::Float(y), flipped),
        }),
        Konst::Str(s) => Box::new(move |ctx: &Ctx<'_>| match f(ctx)? {
            Val::Str(x) => Some(Val::Bool(op.ord(if flipped {
                (*s).cmp(x)
            } else {
                x.cmp(&*s)
            }))),
            v => general(op, v, Val::Str(&s), flipped),
        }),
        k => Box::new(move |ctx: &Ctx<'_>| general(op, f(ctx)?, k.val()?, flipped)),
    }))
}

/// Rhai's `contains` on an array: its `==` against each item in turn (so `2 in [2.0]` and `() in [()]` hold,
/// and an item of another type never matches).
fn array_contains(items: &[Konst], v: Val<'_>) -> Option<bool> {
    for item in items {
        if Cmp::Eq.apply(item.val()?, v)? {
            return Some(true);
        }
    }
    Some(false)
}

fn custom_val<'a>(req: &'a TrackRequest, key: &str) -> Val<'a> {
    match req.attributes.custom.get(key) {
        None => Val::Unit,
        Some(CustomValue::String(s)) => Val::Str(s),
        Some(CustomValue::Int(i)) => Val::Int(*i),
        Some(CustomValue::Float(f)) => Val::Float(*f),
        Some(CustomValue::Bool(b)) => Val::Bool(*b),
    }
}

/// What a `let` name stands for: a value known at load time, or a run-time slot in [`Ctx`].
enum Binding {
    Const(Konst),
    Slot(usize),
}

struct Compiler<'l> {
    nodes: usize,
    limits: &'l Limits,
    /// The `let` bindings visible at this point, innermost last.
    scope: Vec<(ImmutableString, Binding)>,
    /// Run-time slots handed out so far.
    slots: usize,
    /// The ruleset's `custom` field slots.
    custom: &'l mut CustomSlots,
}

impl Compiler<'_> {
    fn block(&mut self, stmts: &[Stmt]) -> Option<StmtFn> {
        // A block's `let` bindings end with it.
        let depth = self.scope.len();
        let parts = stmts
            .iter()
            .map(|s| self.stmt(s))
            .collect::<Option<Vec<_>>>();
        self.scope.truncate(depth);
        let mut parts = parts?;
        Some(match parts.len() {
            0 => Box::new(|_: &Ctx<'_>| Some(Flow::Next(Val::Unit))),
            1 => parts.pop()?,
            _ => Box::new(move |ctx: &Ctx<'_>| {
                let mut last = Val::Unit;
                for p in &parts {
                    match p(ctx)? {
                        Flow::Next(v) => last = v,
                        r @ Flow::Return(_) => return Some(r),
                    }
                }
                Some(Flow::Next(last))
            }),
        })
    }

    fn stmt_block(&mut self, b: &StmtBlock) -> Option<StmtFn> {
        self.block(b.statements())
    }

    fn stmt(&mut self, s: &Stmt) -> Option<StmtFn> {
        self.nodes += 1;
        Some(match s {
            Stmt::Noop(_) => Box::new(|_: &Ctx<'_>| Some(Flow::Next(Val::Unit))),
            Stmt::Expr(e) => {
                let f = self.expr(e)?.into_fn()?;
                Box::new(move |ctx: &Ctx<'_>| f(ctx).map(Flow::Next))
            }
            Stmt::FnCall(call, _) => {
                let f = self.call(call)?.into_fn()?;
                Box::new(move |ctx: &Ctx<'_>| f(ctx).map(Flow::Next))
            }
            Stmt::Block(b) => self.stmt_block(b)?,
            Stmt::If(flow, _) => {
                let cond = self.expr(&flow.expr)?.into_fn()?;
                let then = self.stmt_block(&flow.body)?;
                let other = self.stmt_block(&flow.branch)?;
                Box::new(move |ctx: &Ctx<'_>| match cond(ctx)? {
                    Val::Bool(true) => then(ctx),
                    Val::Bool(false) => other(ctx),
                    _ => None,
                })
            }
            // `let` and `const`.
            Stmt::Var(v, flags, _) if (*flags - rhai::ASTFlags::CONSTANT).is_empty() => {
                let name = v.0.name.clone();
                match self.expr(&v.1)? {
                    Code::Const(k) => {
                        if let Konst::Array(items) = &k {
                            if self.limits.max_array_size != 0
                                && items.len() > self.limits.max_array_size
                            {
                                return None;
                            }
                        }
                        self.scope.push((name, Binding::Const(k)));
                        Box::new(|_: &Ctx<'_>| Some(Flow::Next(Val::Unit)))
                    }
                    Code::Run(f) => {
                        let slot = self.slots;
                        if slot >= LOCALS {
                            return None;
                        }
                        self.slots += 1;
                        self.scope.push((name, Binding::Slot(slot)));
                        Box::new(move |ctx: &Ctx<'_>| {
                            let v = f(ctx)?;
                            ctx.locals.get(slot)?.set(v);
                            Some(Flow::Next(Val::Unit))
                        })
                    }
                }
            }
            // `return` (not `throw`, which sets a flag).
            Stmt::Return(e, flags, _) if flags.is_empty() => match e {
                None => Box::new(|_: &Ctx<'_>| Some(Flow::Return(Val::Unit))),
                Some(e) => {
                    let f = self.expr(e)?.into_fn()?;
                    Box::new(move |ctx: &Ctx<'_>| f(ctx).map(Flow::Return))
                }
            },
            _ => return None,
        })
    }

    fn expr(&mut self, e: &Expr) -> Option<Code> {
        self.nodes += 1;
        Some(match e {
            Expr::DynamicConstant(d, _) => Code::Const(Konst::from_dynamic(d)?),
            Expr::BoolConstant(b, _) => Code::Const(Konst::Bool(*b)),
            Expr::IntegerConstant(i, _) => Code::Const(Konst::Int(*i)),
            Expr::FloatConstant(f, _) => Code::Const(Konst::Float(**f)),
            Expr::StringConstant(s, _) => Code::Const(Konst::Str(s.as_str().into())),
            Expr::Unit(_) => Code::Const(Konst::Unit),
            Expr::Array(items, _) => {
                if self.limits.max_array_size != 0 && items.len() > self.limits.max_array_size {
                    return None;
                }
                let mut out = Vec::with_capacity(items.len());
                for item in items.iter() {
                    match self.expr(item)? {
                        Code::Const(k) => out.push(k),
                        Code::Run(_) => return None,
                    }
                }
                Code::Const(Konst::Array(out))
            }
            Expr::Variable(v, _, _) => {
                let name: &ImmutableString = &v.1;
                let local = self.scope.iter().rev().find(|(n, _)| n == name);
                if let Some((_, binding)) = local {
                    match binding {
                        Binding::Const(k) => Code::Const(k.clone()),
                        &Binding::Slot(slot) => Code::Run(Box::new(move |ctx: &Ctx<'_>| {
                            Some(ctx.locals.get(slot)?.get())
                        })),
                    }
                } else if let Some(s) = vars::outcome(name) {
                    Code::Const(Konst::Outcome(s))
                } else {
                    let Read::Text(get) = vars::find(name)?.read else {
                        return None;
                    };
                    Code::Run(Box::new(move |ctx: &Ctx<'_>| {
                        Some(get(ctx.req).map_or(Val::Unit, Val::Str))
                    }))
                }
            }
            Expr::Stmt(b) => {
                let f = self.stmt_block(b)?;
                // A `return` inside an expression block ends the whole rule: leave that to Rhai.
                Code::Run(Box::new(move |ctx: &Ctx<'_>| match f(ctx)? {
                    Flow::Next(v) => Some(v),
                    Flow::Return(_) => None,
                }))
            }
            Expr::And(parts, _) | Expr::Or(parts, _) => {
                let is_and = matches!(e, Expr::And(..));
                let fs = parts
                    .iter()
                    .map(|p| self.expr(p).and_then(Code::into_fn))
                    .collect::<Option<Vec<_>>>()?;
                Code::Run(Box::new(move |ctx: &Ctx<'_>| {
                    for f in &fs {
                        match f(ctx)? {
                            Val::Bool(b) if b != is_and => return Some(Val::Bool(b)),
                            Val::Bool(_) => {}
                            _ => return None,
                        }
                    }
                    Some(Val::Bool(is_and))
                }))
            }
            Expr::FnCall(call, _) => self.call(call)?,
            Expr::Dot(bin, flags, _) if flags.is_empty() => self.dot(&bin.lhs, &bin.rhs)?,
            _ => return None,
        })
    }

    /// `lhs.rhs`: a `custom` field, or a string method on a value.
    fn dot(&mut self, lhs: &Expr, rhs: &Expr) -> Option<Code> {
        self.nodes += 1;
        let is_custom = matches!(lhs, Expr::Variable(v, _, _) if v.1.as_str() == vars::CUSTOM)
            && !self.scope.iter().any(|(n, _)| n.as_str() == vars::CUSTOM);
        match (is_custom, rhs) {
            (true, Expr::Property(p, _)) => {
                let key: Box<str> = p.2.as_str().into();
                let slot = self.custom.slot(&key);
                Some(Code::Run(Box::new(move |ctx: &Ctx<'_>| {
                    Some(ctx.custom(slot, &key))
                })))
            }
            (true, Expr::Dot(inner, flags, _)) if flags.is_empty() => {
                let Expr::Property(p, _) = &inner.lhs else {
                    return None;
                };
                let key: Box<str> = p.2.as_str().into();
                let slot = self.custom.slot(&key);
                let field = Code::Run(Box::new(move |ctx: &Ctx<'_>| Some(ctx.custom(slot, &key))));
                self.chain(field, &inner.rhs)
            }
            (false, _) => {
                let recv = self.expr(lhs)?;
                self.chain(recv, rhs)
            }
            _ => None,
        }
    }

    /// Applies a method call (or a further chain) to an already compiled receiver.
    fn chain(&mut self, recv: Code, rhs: &Expr) -> Option<Code> {
        match rhs {
            Expr::MethodCall(call, _) => self.method(recv, call),
            Expr::Dot(bin, flags, _) if flags.is_empty() => {
                let Expr::MethodCall(call, _) = &bin.lhs else {
                    return None;
                };
                if let Expr::MethodCall(next, _) = &bin.rhs {
                    if call.name.as_str() == "split"
                        && next.name.as_str() == "pop"
                        && next.args.is_empty()
                    {
                        return self.split_pop(recv, call);
                    }
                }
                let first = self.method(recv, call)?;
                self.chain(first, &bin.rhs)
            }
            _ => None,
        }
    }

    /// `s.split(delimiter).pop()`: the last piece, without building the array.
    fn split_pop(&mut self, recv: Code, call: &rhai::FnCallExpr) -> Option<Code> {
        self.nodes += 2;
        let [arg] = call.args.as_slice() else {
            return None;
        };
        let Code::Const(Konst::Str(delim)) = self.expr(arg)? else {
            return None;
        };
        let max = self.limits.max_array_size;
        if let Code::Const(Konst::Str(s)) = &recv {
            // Both known at load time: fold it, unless Rhai would refuse the array.
            let pieces = if delim.is_empty() {
                s.chars().count() + 2
            } else {
                s.matches(&*delim).count() + 1
            };
            if max != 0 && pieces > max {
                return None;
            }
            return Some(Code::Const(Konst::Str(s.split(&*delim).last()?.into())));
        }
        let recv = recv.into_fn()?;
        Some(Code::Run(Box::new(move |ctx: &Ctx<'_>| {
            let Val::Str(s) = recv(ctx)? else {
                return None;
            };
            // Rhai refuses to build an array over the size limit: leave that error to it.
            if max != 0 && s.len() + 2 > max {
                let pieces = if delim.is_empty() {
                    s.chars().count() + 2
                } else {
                    s.matches(&*delim).count() + 1
                };
                if pieces > max {
                    return None;
                }
            }
            // Rhai's `split` gives `[s]` for an empty `s` or a missing delimiter, and `str::split` otherwise;
            // either way the last piece is `str::split`'s last.
            s.split(&*delim).last().map(Val::Str)
        })))
    }

    /// A string method on a string known at load time (a `let` bound to a literal).
    fn const_str_method(&mut self, s: Box<str>, call: &rhai::FnCallExpr) -> Option<Code> {
        let which = match call.name.as_str() {
            "len" | "is_empty" if call.args.is_empty() => {
                return Some(Code::Const(if call.name.as_str() == "len" {
                    Konst::Int(INT::try_from(s.chars().count()).unwrap_or(INT::MAX))
                } else {
                    Konst::Bool(s.is_empty())
                }));
            }
            "starts_with" => 0u8,
            "ends_with" => 1,
            "contains" => 2,
            _ => return None,
        };
        let [arg] = call.args.as_slice() else {
            return None;
        };
        let test = move |s: &str, p: &str| match which {
            0 => s.starts_with(p),
            1 => s.ends_with(p),
            _ => s.contains(p),
        };
        Some(match self.expr(arg)? {
            Code::Const(Konst::Str(p)) => Code::Const(Konst::Bool(test(&s, &p))),
            // Another type: whatever Rhai says (an error, or a method this subset does not model).
            Code::Const(_) => Code::Run(Box::new(|_: &Ctx<'_>| None)),
            Code::Run(a) => Code::Run(Box::new(move |ctx: &Ctx<'_>| match a(ctx)? {
                Val::Str(p) => Some(Val::Bool(test(&s, p))),
                _ => None,
            })),
        })
    }

    fn method(&mut self, recv: Code, call: &rhai::FnCallExpr) -> Option<Code> {
        self.nodes += 1;
        if let Code::Const(Konst::Str(s)) = recv {
            return self.const_str_method(s, call);
        }
        let recv = recv.into_fn()?;
        match (call.name.as_str(), call.args.as_slice()) {
            ("len", []) => Some(Code::Run(Box::new(move |ctx: &Ctx<'_>| match recv(ctx)? {
                Val::Str(s) => Some(Val::Int(
                    INT::try_from(s.chars().count()).unwrap_or(INT::MAX),
                )),
                _ => None,
            }))),
            ("is_empty", []) => Some(Code::Run(Box::new(move |ctx: &Ctx<'_>| match recv(ctx)? {
                Val::Str(s) => Some(Val::Bool(s.is_empty())),
                _ => None,
            }))),
            (m @ ("starts_with" | "ends_with" | "contains"), [arg]) => {
                let which = match m {
                    "starts_with" => 0u8,
                    "ends_with" => 1,
                    _ => 2,
                };
                let test = move |s: &str, p: &str| match which {
                    0 => s.starts_with(p),
                    1 => s.ends_with(p),
                    _ => s.contains(p),
                };
                match self.expr(arg)? {
                    Code::Const(Konst::Str(p)) => {
                        Some(Code::Run(Box::new(move |ctx: &Ctx<'_>| match recv(ctx)? {
                            Val::Str(s) => Some(Val::Bool(test(s, &p))),
                            _ => None,
                        })))
                    }
                    Code::Const(_) => None,
                    Code::Run(a) => Some(Code::Run(Box::new(move |ctx: &Ctx<'_>| {
                        match (recv(ctx)?, a(ctx)?) {
                            (Val::Str(s), Val::Str(p)) => Some(Val::Bool(test(s, p))),
                            _ => None,
                        }
                    }))),
                }
            }
            _ => None,
        }
    }

    /// A function call: an operator, `!`, or `in` (which Rhai parses as `contains(array, value)`).
    fn call(&mut self, call: &rhai::FnCallExpr) -> Option<Code> {
        if call.capture_parent_scope {
            return None;
        }
        let name = call.name.as_str();
        let args = call.args.as_slice();
        if let (Some(op), [a, b]) = (Cmp::parse(name), args) {
            if !call.is_operator_call() {
                return None;
            }
            return self.compare(op, a, b);
        }
        match (name, args) {
            ("!", [a]) if call.is_operator_call() => {
                let f = self.expr(a)?.into_fn()?;
                Some(Code::Run(Box::new(move |ctx: &Ctx<'_>| match f(ctx)? {
                    Val::Bool(b) => Some(Val::Bool(!b)),
                    _ => None,
                })))
            }
            ("contains", [list, item]) => {
                let Code::Const(Konst::Array(items)) = self.expr(list)? else {
                    return None;
                };
                let item = self.expr(item)?;
                match item {
                    Code::Const(k) => match array_contains(&items, k.val()?) {
                        Some(b) => Some(Code::Const(Konst::Bool(b))),
                        None => Some(Code::Run(Box::new(|_: &Ctx<'_>| None))),
                    },
                    Code::Run(f) => Some(Code::Run(Box::new(move |ctx: &Ctx<'_>| {
                        array_contains(&items, f(ctx)?).map(Val::Bool)
                    }))),
                }
            }
            _ => self.signal(name, args),
        }
    }

    /// A call to a signal function: its catalogue row says how to call it and what it returns (the Rhai side of
    /// each is in `binding.rs`).
    fn signal(&mut self, name: &str, args: &[Expr]) -> Option<Code> {
        let signal = catalogue::find(name)?;
        Some(match (signal.call, args) {
            (Call::Window(kept), [w]) => {
                // A window that does not parse is an error only Rhai reports.
                let Code::Const(Konst::Str(w)) = self.expr(w)? else {
                    return None;
                };
                let ms = signals::window(name, &w).ok()?;
                let name = signal.name;
                Code::Run(Box::new(move |ctx: &Ctx<'_>| {
                    signals::count(ctx.signals, name, kept, ms)
                        .ok()
                        .map(Val::Int)
                }))
            }
            (Call::Flag(f), []) => Code::Run(Box::new(move |ctx: &Ctx<'_>| {
                Some(Val::Bool(f(ctx.signals)))
            })),
            (Call::Text(f), []) => Code::Run(Box::new(move |ctx: &Ctx<'_>| {
                Some(f(ctx.signals).map_or(Val::Unit, Val::Str))
            })),
            (Call::MaybeInt(f), []) => Code::Run(Box::new(move |ctx: &Ctx<'_>| {
                Some(f(ctx.signals).map_or(Val::Unit, Val::Int))
            })),
            (Call::MaybeBool(f), []) => Code::Run(Box::new(move |ctx: &Ctx<'_>| {
                Some(f(ctx.signals).map_or(Val::Unit, Val::Bool))
            })),
            (Call::MaybeFloat(f), []) => Code::Run(Box::new(move |ctx: &Ctx<'_>| {
                Some(f(ctx.signals).map_or(Val::Unit, Val::Float))
            })),
            (Call::List(f), [list, value]) => {
                let Code::Const(Konst::Str(list)) = self.expr(list)? else {
                    return None;
                };
                let value = match self.expr(value)? {
                    Code::Const(Konst::Str(v)) => {
                        return Some(Code::Run(Box::new(move |ctx: &Ctx<'_>| {
                            f(ctx.signals, &list, &v).ok().map(Val::Bool)
                        })))
                    }
                    code => code.into_fn()?,
                };
                Code::Run(Box::new(move |ctx: &Ctx<'_>| {
                    let found = match value(ctx)? {
                        Val::Str(v) => f(ctx.signals, &list, v),
                        // An absent attribute is in no list, but the list must still exist.
                        Val::Unit => f(ctx.signals, &list, "").map(|_| false),
                        // Numbers are looked up by Rhai's own formatting of them.
                        _ => return None,
                    };
                    found.ok().map(Val::Bool)
                }))
            }
            _ => return None,
        })
    }

    fn compare(&mut self, op: Cmp, a: &Expr, b: &Expr) -> Option<Code> {
        let (a, b) = (self.expr(a)?, self.expr(b)?);
        Some(match (a, b) {
            (Code::Const(x), Code::Const(y)) => match op.apply(x.val()?, y.val()?) {
                Some(b) => Code::Const(Konst::Bool(b)),
                // An error every time it runs (an ordering between outcomes): Rhai's to report.
                None => Code::Run(Box::new(|_: &Ctx<'_>| None)),
            },
            (Code::Run(f), Code::Const(k)) => against(op, f, k, false)?,
            (Code::Const(k), Code::Run(f)) => against(op, f, k, true)?,
            (Code::Run(f), Code::Run(g)) => Code::Run(Box::new(move |ctx: &Ctx<'_>| {
                op.apply(f(ctx)?, g(ctx)?).map(Val::Bool)
            })),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn compiled(src: &str) -> Option<Compiled> {
        let limits = Limits::default();
        let engine = super::super::sandbox::new_engine(&limits);
        let ast = engine
            .compile_with_scope(&super::super::sandbox::compile_scope(), src)
            .unwrap();
        compile(&ast, &limits, &mut CustomSlots::default())
    }

    fn run(src: &str, req: &TrackRequest) -> Option<Option<State>> {
        let history = std::sync::Arc::new(signals::History::new(
            crate::config::HistoryLimits::default(),
            crate::hash::EngineKeys::draw().unwrap(),
        ));
        let set = std::sync::Arc::new(signals::SignalSet::default());
        let signals = DecisionCtx::new(&history, &set, req, crate::time::EpochMs::from_ms(0));
        compiled(src).unwrap().eval(&Ctx::new(req, &signals))
    }

    #[test]
    fn custom_fields_share_slots_across_rules_and_overflow_to_look_ups() {
        let limits = Limits::default();
        let engine = super::super::sandbox::new_engine(&limits);
        let mut slots = CustomSlots::default();
        let mut rule = |src: &str| {
            let ast = engine
                .compile_with_scope(&super::super::sandbox::compile_scope(), src)
                .unwrap();
            compile(&ast, &limits, &mut slots).unwrap()
        };
        // Fill every slot with fields no request below has, then two rules on fields past the last slot.
        let filler: Vec<Compiled> = (0..CUSTOM_SLOTS)
            .map(|i| rule(&format!("if custom.f{i} != () {{ BLOCK }}")))
            .collect();
        let amount = rule("if custom.amount > 100 { REVIEW }");
        let both = rule(r#"if custom.amount > 100 && custom.currency == "EUR" { BLOCK }"#);
        let first = rule("if custom.f0 == () { ALLOW }");
        assert_eq!(slots.0.len(), CUSTOM_SLOTS);
        let history = std::sync::Arc::new(signals::History::new(
            crate::config::HistoryLimits::default(),
            crate::hash::EngineKeys::draw().unwrap(),
        ));
        let set = std::sync::Arc::new(signals::SignalSet::default());
        for (amount_v, currency, want_review, want_block) in [
            (500, "EUR", Some(State::Review), Some(State::Block)),
            (500, "USD", Some(State::Review), None),
            (50, "EUR", None, None),
        ] {
            let req = TrackRequest::new("u", "a")
                .custom("amount", amount_v)
                .custom("currency", currency);
            let signals = DecisionCtx::new(&history, &set, &req, crate::time::EpochMs::from_ms(0));
            // One context for every rule, as a decision has: a slot read by one rule is read again by the next.
            let ctx = Ctx::new(&req, &signals);
            for f in &filler {
                assert_eq!(f.eval(&ctx), Some(None));
            }
            assert_eq!(amount.eval(&ctx), Some(want_review));
            assert_eq!(both.eval(&ctx), Some(want_block));
            assert_eq!(first.eval(&ctx), Some(Some(State::Allow)));
            assert_eq!(ctx.custom[0].get(), Some(Val::Unit));
        }
    }

    #[test]
    fn the_common_subset_compiles() {
        for src in [
            "if custom.trusted_tester == true { ALLOW }",
            "if device_id == () { CHALLENGE_REQUIRED }",
            "if custom.amount != () && custom.amount > 100000 { BLOCK }",
            r#"if ip_address.starts_with("10.") || email.ends_with("@x.io") { BLOCK } else { REVIEW }"#,
            r#"if custom.destination in ["crypto", "gift"] { REVIEW }"#,
            r#"if !(user_agent.len() > 3) { return BLOCK; } ()"#,
            r#"if velocity("10m") > 5 || is_new_device() && country() != "NZ" { REVIEW }"#,
            r#"if in_list("blocked_ips", ip_address) { BLOCK }"#,
            "let d = [\"a.io\"]; if email != () { let x = email.split(\"@\").pop(); if x in d { BLOCK } }",
        ] {
            assert!(compiled(src).is_some(), "{src}");
        }
    }

    #[test]
    fn the_rest_is_left_to_rhai() {
        for src in [
            "let x = 1; x += 1; if x > 0 { BLOCK }",
            "let a = 1; let b = 2; let c = 3; let d = 4; let e = 5; let f = 6; let g = 7; let h = 8; \
             let i = user_id; let j = user_id; let k = user_id; let l = user_id; let m = user_id; \
             let n = user_id; let o = user_id; let p = user_id; let q = user_id; ()",
            r#"if email.split("@").len() == 2 { BLOCK }"#,
            "fn f() { 1 } if f() == 1 { BLOCK }",
            "while true {}",
            r#"if custom["a"] == 1 { BLOCK }"#,
            "throw \"no\"",
            r#"if velocity("ten minutes") > 5 { BLOCK }"#,
        ] {
            assert!(compiled(src).is_none(), "{src}");
        }
    }

    #[test]
    fn values_follow_rhai() {
        let mut req = TrackRequest::new("u", "signIn");
        req.attributes.custom.insert("amount".into(), 2.5f64.into());
        req.attributes.email = Some("a@b.io".into());
        assert_eq!(
            run("if custom.amount > 2 { BLOCK }", &req),
            Some(Some(State::Block))
        );
        // An ordering with `()` is a rule error: the interpreter's to report.
        assert_eq!(run("if custom.missing > 2 { BLOCK }", &req), None);
        assert_eq!(run("if custom.missing == 2 { BLOCK }", &req), Some(None));
        assert_eq!(
            run("if device_id != \"x\" { REVIEW }", &req),
            Some(Some(State::Review))
        );
        assert_eq!(
            run("if email.len() == 6 { ALLOW }", &req),
            Some(Some(State::Allow))
        );
        // Errors and non-outcome values are the interpreter's to report.
        assert_eq!(run("if device_id.len() > 1 { BLOCK }", &req), None);
        assert_eq!(run("if custom.amount { BLOCK }", &req), None);
        assert_eq!(run("42", &req), None);
    }
}
