//! Nested data in rules: nothing a rule does with arrays and maps nested inside each other can overflow the
//! host's stack.
//!
//! Rhai recurses once per nesting level in many places: comparing (`==`, `!=`, and `in`, `contains`,
//! `index_of`, `dedup` through them), printing (`to_string`, `to_debug`, `print`, `debug`, string
//! interpolation, `+` with a string, a thrown value's message), `to_json`, `switch` (hashing), and in the
//! value itself (clone, drop, and the size check after each change). Three guards together bound all of it:
//!
//! - **depth is bounded by the size limits.** Rhai's size check counts every nested element in total, so a
//!   value nests at most `max_array_size + max_map_size` levels ([`data_depth_bound`]). The only way to hide
//!   data from that count, a curried function pointer (`Fn("f").curry(a)`), is refused at load time
//!   ([`curry_calls`]);
//! - **the operations with large frames refuse deep data.** Comparing, printing and `to_json` of arrays and maps
//!   are registered here over Rhai's own (the engine's functions take precedence over its packages): they give
//!   the same results, and fail the rule with a clear message past [`MAX_DATA_DEPTH`] levels;
//! - **interpreted rules run on a stack sized for the rest** ([`with_stack`]): clone, drop, hashing and the size
//!   check take a small frame per level, and get [`STACK_PER_LEVEL`] bytes for each level the limits allow, on
//!   top of what the depth limits on source code were measured against.

use rhai::{
    ASTNode, Array, Dynamic, EvalAltResult, Expr, FnPtr, ImmutableString, Map, NativeCallContext,
    Position, Stmt, AST,
};

use corosensei::stack::DefaultStack;
use std::cell::RefCell;

use crate::config::Limits;

/// The deepest nesting of arrays and maps that comparing, printing and `to_json` accept. Deeper data still
/// builds, drops and copies (within the size limits); those operations fail the rule instead.
pub(crate) const MAX_DATA_DEPTH: usize = 64;

/// Stack bytes allowed for each level of nesting the limits allow. Measured on a 2 MiB thread in a debug build,
/// the costliest remaining operation per level (dropping or copying nested maps) takes about 1.4 KiB.
const STACK_PER_LEVEL: usize = 4 * 1024;

/// Stack allowed for everything but nested data: what the caps on expression and call depth were measured
/// against (Rust's default for spawned threads).
const STACK_BASE: usize = 2 * 1024 * 1024;

/// The deepest a value can nest under `limits`: each level is one array item or map entry, and Rhai's size
/// check counts them in total.
pub(crate) fn data_depth_bound(limits: &Limits) -> usize {
    limits
        .max_array_size
        .saturating_add(limits.max_map_size)
        .saturating_add(1)
}

/// The stack interpreted rules need under `limits`.
pub(crate) fn stack_size(limits: &Limits) -> usize {
    data_depth_bound(limits)
        .saturating_mul(STACK_PER_LEVEL)
        .saturating_add(STACK_BASE)
}

thread_local! {
    /// This thread's rule stack and its usable size, kept between decisions: mapping a new one for each decision
    /// would cost a system call and fresh page faults every time.
    static STACK: RefCell<Option<(usize, DefaultStack)>> = const { RefCell::new(None) };
}

/// Runs `f` on this thread's rule stack, of at least [`stack_size`] bytes (mapped on first use, and again when
/// `limits` need more). `Err` if that stack cannot be mapped; then `f` does not run.
pub(crate) fn with_stack<R>(limits: &Limits, f: impl FnOnce() -> R) -> Result<R, String> {
    let size = stack_size(limits);
    STACK.with(|cell| {
        let Ok(mut slot) = cell.try_borrow_mut() else {
            // Re-entered from inside a rule (impossible through the public API): already on the rule stack.
            return Ok(f());
        };
        if slot.as_ref().is_none_or(|(have, _)| *have < size) {
            // Unmap the old stack first, so that two are never held at once.
            *slot = None;
            let stack = DefaultStack::new(size)
                .map_err(|e| format!("cannot map a stack of {size} bytes for rules: {e}"))?;
            *slot = Some((size, stack));
        }
        match slot.as_mut() {
            Some((_, stack)) => Ok(corosensei::on_stack(stack, f)),
            None => Err("no stack for rules".to_owned()),
        }
    })
}

/// Registers the depth-checked comparisons, printing and `to_json` of arrays and maps on `e`.
pub(crate) fn register(e: &mut rhai::Engine) {
    e.register_fn(
        "==",
        |ctx: NativeCallContext, a: &mut Array, mut b: Array| arrays_equal(&ctx, a, &mut b, 1),
    );
    e.register_fn(
        "!=",
        |ctx: NativeCallContext, a: &mut Array, mut b: Array| {
            arrays_equal(&ctx, a, &mut b, 1).map(|eq| !eq)
        },
    );
    e.register_fn("==", |ctx: NativeCallContext, a: &mut Map, mut b: Map| {
        maps_equal(&ctx, a, &mut b, 1)
    });
    e.register_fn("!=", |ctx: NativeCallContext, a: &mut Map, mut b: Map| {
        maps_equal(&ctx, a, &mut b, 1).map(|eq| !eq)
    });
    for name in ["to_string", "to_debug", "print", "debug"] {
        e.register_fn(name, |ctx: NativeCallContext, a: &mut Array| {
            let mut out = String::new();
            write_array(&ctx, a, &mut out, 1).map(|()| ImmutableString::from(out))
        });
        e.register_fn(name, |ctx: NativeCallContext, m: &mut Map| {
            let mut out = String::new();
            write_map(&ctx, m, &mut out, 1).map(|()| ImmutableString::from(out))
        });
    }
    e.register_fn(
        "to_json",
        |m: &mut Map| -> Result<String, Box<EvalAltResult>> {
            check_depth(m.values(), 1, "serialised")?;
            Ok(rhai::format_map_as_json(m))
        },
    );
}

/// Where `ast` curries a function pointer (`f.curry(x)`, `curry(f, x)`, or one Rhai's optimiser already
/// curried from constants), each as a position and a message.
pub(crate) fn curry_calls(ast: &AST) -> Vec<(Position, String)> {
    let mut found = Vec::new();
    ast.walk(&mut |path: &[ASTNode]| {
        let pos = match path.last() {
            Some(
                ASTNode::Expr(Expr::FnCall(f, pos) | Expr::MethodCall(f, pos))
                | ASTNode::Stmt(Stmt::FnCall(f, pos)),
            ) if f.name.as_str() == "curry" => *pos,
            Some(ASTNode::Expr(Expr::DynamicConstant(v, pos)))
                if v.read_lock::<FnPtr>().is_some_and(|f| f.is_curried()) =>
            {
                *pos
            }
            _ => return true,
        };
        found.push((
            pos,
            "`curry` is not available in rules: curried values would escape the size limits"
                .to_owned(),
        ));
        true
    });
    found
}

/// How every depth error of this module begins (see [`is_too_deep`]).
const TOO_DEEP: &str = "arrays and maps nested deeper than";

fn too_deep(what: &str) -> Box<EvalAltResult> {
    EvalAltResult::ErrorRuntime(
        format!("{TOO_DEEP} {MAX_DATA_DEPTH} levels cannot be {what}").into(),
        Position::NONE,
    )
    .into()
}

/// Whether `e` is this module's refusal of data nested past [`MAX_DATA_DEPTH`] (a depth limit, not a
/// rule's own error).
pub(super) fn is_too_deep(e: &EvalAltResult) -> bool {
    matches!(e, EvalAltResult::ErrorRuntime(v, _)
        if v.read_lock::<rhai::ImmutableString>().is_some_and(|s| s.starts_with(TOO_DEEP)))
}

/// Fails if any of `values` (at nesting level `level`) holds arrays or maps past [`MAX_DATA_DEPTH`].
fn check_depth<'a>(
    values: impl Iterator<Item = &'a Dynamic>,
    level: usize,
    what: &str,
) -> Result<(), Box<EvalAltResult>> {
    if level > MAX_DATA_DEPTH {
        return Err(too_deep(what));
    }
    for v in values {
        if let Some(a) = v.read_lock::<Array>() {
            check_depth(a.iter(), level + 1, what)?;
        } else if let Some(m) = v.read_lock::<Map>() {
            check_depth(m.values(), level + 1, what)?;
        }
    }
    Ok(())
}

/// `==` on two values inside arrays or maps at nesting level `level`: arrays and maps here, everything else
/// through the engine's own `==`, as Rhai's standard library does.
fn values_equal(
    ctx: &NativeCallContext,
    a: &mut Dynamic,
    b: &mut Dynamic,
    level: usize,
) -> Result<bool, Box<EvalAltResult>> {
    if a.is_array() && b.is_array() {
        if let (Some(mut x), Some(mut y)) = (a.write_lock::<Array>(), b.write_lock::<Array>()) {
            return arrays_equal(ctx, &mut x, &mut y, level + 1);
        }
    }
    if a.is_map() && b.is_map() {
        if let (Some(mut x), Some(mut y)) = (a.write_lock::<Map>(), b.write_lock::<Map>()) {
            return maps_equal(ctx, &mut x, &mut y, level + 1);
        }
    }
    let same_type = a.type_id() == b.type_id();
    match ctx.call_native_fn_raw("==", true, &mut [a, b]) {
        Ok(r) => Ok(r.as_bool().unwrap_or(false)),
        Err(e) if !same_type && matches!(*e, EvalAltResult::ErrorFunctionNotFound(..)) => Ok(false),
        Err(e) => Err(e),
    }
}

fn arrays_equal(
    ctx: &NativeCallContext,
    a: &mut Array,
    b: &mut Array,
    level: usize,
) -> Result<bool, Box<EvalAltResult>> {
    if level > MAX_DATA_DEPTH {
        return Err(too_deep("compared"));
    }
    if a.len() != b.len() {
        return Ok(false);
    }
    for (x, y) in a.iter_mut().zip(b.iter_mut()) {
        if !values_equal(ctx, x, y, level)? {
            return Ok(false);
        }
    }
    Ok(true)
}

fn maps_equal(
    ctx: &NativeCallContext,
    a: &mut Map,
    b: &mut Map,
    level: usize,
) -> Result<bool, Box<EvalAltResult>> {
    if level > MAX_DATA_DEPTH {
        return Err(too_deep("compared"));
    }
    if a.len() != b.len() {
        return Ok(false);
    }
    for (k, x) in a.iter_mut() {
        let Some(y) = b.get_mut(k) else {
            return Ok(false);
        };
        if !values_equal(ctx, x, y, level)? {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Writes `a` (at nesting level `level`) as Rhai's standard library does: `[1, "x", [2]]`.
fn write_array(
    ctx: &NativeCallContext,
    a: &mut Array,
    out: &mut String,
    level: usize,
) -> Result<(), Box<EvalAltResult>> {
    if level > MAX_DATA_DEPTH {
        return Err(too_deep("printed"));
    }
    out.push('[');
    for (i, x) in a.iter_mut().enumerate() {
        if i > 0 {
            out.push_str(", ");
        }
        write_value(ctx, x, out, level)?;
    }
    out.push(']');
    Ok(())
}

/// Writes `m` (at nesting level `level`) as Rhai's standard library does: `#{"a": 1, "b": [2]}`.
fn write_map(
    ctx: &NativeCallContext,
    m: &mut Map,
    out: &mut String,
    level: usize,
) -> Result<(), Box<EvalAltResult>> {
    if level > MAX_DATA_DEPTH {
        return Err(too_deep("printed"));
    }
    out.push_str("#{");
    for (i, (k, v)) in m.iter_mut().enumerate() {
        if i > 0 {
            out.push_str(", ");
        }
        out.push_str(&format!("{k:?}: "));
        write_value(ctx, v, out, level)?;
    }
    out.push('}');
    Ok(())
}

/// Writes one value inside an array or map: arrays and maps here, everything else with its `to_debug`.
fn write_value(
    ctx: &NativeCallContext,
    v: &mut Dynamic,
    out: &mut String,
    level: usize,
) -> Result<(), Box<EvalAltResult>> {
    if v.is_array() {
        if let Some(mut a) = v.write_lock::<Array>() {
            return write_array(ctx, &mut a, out, level + 1);
        }
    }
    if v.is_map() {
        if let Some(mut m) = v.write_lock::<Map>() {
            return write_map(ctx, &mut m, out, level + 1);
        }
    }
    let engine = ctx.engine();
    match ctx.call_native_fn_raw("to_debug", true, &mut [v]) {
        Ok(r) if r.is_string() => out.push_str(&r.into_immutable_string().unwrap_or_default()),
        Ok(r) => out.push_str(engine.map_type_name(r.type_name())),
        Err(_) => out.push_str(engine.map_type_name(&format!("{v:?}"))),
    }
    Ok(())
}
