//! The type rules of the rule language, beyond Rhai's own: an ordering comparison (`<`, `<=`, `>`, `>=`) or
//! arithmetic between a string and a number, or with `()` on either side, is a rule error instead of a quiet
//! `false`. Equality between different types stays `false` (`!=` is `true`), and `+` with a string on either
//! side stays a concatenation.
//!
//! Rhai compares values of different types as `false` in its built-in operators, so a client that sends
//! `"amount": "7000"` would walk past `custom.amount > 5000`. The refusals are registered on the engine, which
//! Rhai consults before its built-in operators once fast operators are off (see `sandbox::new_engine`). The
//! compiled path gives up on the same pairs (`compile::Cmp::apply`), so the interpreter reports the error.
//! Without fast operators an interpreted operator costs about 70 ns more (release build, measured on a loop of
//! 8,000 comparisons and additions: 1.5 ms against 2.05 ms); compiled rules do not use Rhai's operators at all.
//!
//! Also here: Rhai's internal type names translated into the rule guide's (`string`, `number`, `bool`,
//! `array`, `map`, `()`), for messages.

use rhai::{Dynamic, EvalAltResult, ImmutableString, Position, Variant, FLOAT, INT};

/// The ordering operators.
const ORDERINGS: [&str; 4] = ["<", "<=", ">", ">="];

/// The arithmetic operators.
const ARITHMETIC: [&str; 6] = ["+", "-", "*", "/", "%", "**"];

/// A rule-guide type, named as rules and messages name it.
trait Named: Variant + Clone {
    const NAME: &'static str;
}

impl Named for INT {
    const NAME: &'static str = "a number";
}
impl Named for FLOAT {
    const NAME: &'static str = "a number";
}
impl Named for ImmutableString {
    const NAME: &'static str = "a string";
}
impl Named for bool {
    const NAME: &'static str = "a bool";
}
impl Named for () {
    const NAME: &'static str = "`()`";
}

/// What a refused pair is told: how to fix it.
fn hint<A: Named, B: Named>() -> &'static str {
    if A::NAME == <()>::NAME || B::NAME == <()>::NAME {
        "a missing value is `()`: test it with `!= ()` first"
    } else {
        "convert one side first (`parse_float(s)`, `parse_int(s)` or `n.to_string()`)"
    }
}

/// Registers `op` on `(A, B)` as an error.
fn refuse<A: Named, B: Named>(e: &mut rhai::Engine, op: &'static str) {
    let message = if ORDERINGS.contains(&op) {
        format!(
            "cannot compare {} with {} using `{op}`: {}",
            A::NAME,
            B::NAME,
            hint::<A, B>()
        )
    } else {
        format!(
            "cannot apply `{op}` to {} and {}: {}",
            A::NAME,
            B::NAME,
            hint::<A, B>()
        )
    };
    e.register_fn(
        op,
        move |_: A, _: B| -> Result<Dynamic, Box<EvalAltResult>> {
            // Rhai writes an arithmetic error as its message alone (a runtime error would add "Runtime error:").
            Err(EvalAltResult::ErrorArithmetic(message.clone(), Position::NONE).into())
        },
    );
}

/// Registers `op` as an error between a string and a number (either way round), and with `()` on either side.
/// `+` with a string on either side stays Rhai's concatenation (`"key-" + i`): its result is a string, so a
/// comparison with a number after it is still an error.
fn refuse_mixed(e: &mut rhai::Engine, op: &'static str) {
    if op != "+" {
        refuse::<ImmutableString, INT>(e, op);
        refuse::<INT, ImmutableString>(e, op);
        refuse::<ImmutableString, FLOAT>(e, op);
        refuse::<FLOAT, ImmutableString>(e, op);
        refuse::<(), ImmutableString>(e, op);
        refuse::<ImmutableString, ()>(e, op);
    }
    refuse::<(), ()>(e, op);
    refuse::<(), INT>(e, op);
    refuse::<INT, ()>(e, op);
    refuse::<(), FLOAT>(e, op);
    refuse::<FLOAT, ()>(e, op);
    refuse::<(), bool>(e, op);
    refuse::<bool, ()>(e, op);
}

/// Registers the refusals on `e`. They take effect only with fast operators off: Rhai's fast path would answer
/// with its built-in `false` first.
pub(crate) fn register(e: &mut rhai::Engine) {
    for op in ORDERINGS.into_iter().chain(ARITHMETIC) {
        refuse_mixed(e, op);
    }
}

/// `msg` with Rhai's internal type names put as the rule guide names them.
pub(crate) fn plain(msg: &str) -> String {
    // Longest first: `&str | ImmutableString | String` is one string type to Rhai's messages.
    const NAMES: [(&str, &str); 10] = [
        ("Function not found", "function not found"),
        ("&str | ImmutableString | String", "string"),
        ("ImmutableString", "string"),
        ("&mut ", ""),
        ("rhai::Array", "array"),
        ("rhai::Map", "map"),
        ("i64", "number"),
        ("f64", "number"),
        ("riskgate::response::State", "outcome"),
        ("Outcome", "outcome"),
    ];
    let mut out = msg.to_owned();
    for (from, to) in NAMES {
        if out.contains(from) {
            out = out.replace(from, to);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn rhai_type_names_are_translated() {
        assert_eq!(
            super::plain("Function not found: ends_wiht (&str | ImmutableString | String, i64)"),
            "function not found: ends_wiht (string, number)"
        );
        assert_eq!(super::plain("f64 and array"), "number and array");
    }
}
