//! The binding of signals to Rhai: the decision running on each thread, and one registered function per row of
//! the signal [`catalogue`].
//!
//! Registered functions read the context of the decision running on their thread (set by [`with_decision`]
//! around rule evaluation) and call the row's function, the same one compiled rules call.

use rhai::{Dynamic, EvalAltResult, ImmutableString, FLOAT, INT};
use std::cell::RefCell;
use std::rc::Rc;

use crate::signals::catalogue::{self, Call};
use crate::signals::DecisionCtx;

thread_local! {
    /// The decision running on this thread, for the Rhai functions.
    static CURRENT: RefCell<Option<Rc<DecisionCtx>>> = const { RefCell::new(None) };
}

/// Puts the previous decision (normally none) back when a decision ends, however it ends.
struct Restore(Option<Rc<DecisionCtx>>);

impl Drop for Restore {
    fn drop(&mut self) {
        let prev = self.0.take();
        CURRENT.with(|c| {
            if let Ok(mut slot) = c.try_borrow_mut() {
                *slot = prev;
            }
        });
    }
}

/// Runs `f` (rule evaluation) with `ctx` as this thread's current decision, so that signal functions called by
/// rules read it. The context is released when `f` returns (it holds the ruleset's lists and databases alive).
pub(crate) fn with_decision<R>(ctx: DecisionCtx, f: impl FnOnce(&DecisionCtx) -> R) -> R {
    let ctx = Rc::new(ctx);
    let prev = CURRENT.with(|c| {
        c.try_borrow_mut()
            .map(|mut slot| slot.replace(Rc::clone(&ctx)))
            .ok()
            .flatten()
    });
    let _restore = Restore(prev);
    f(&ctx)
}

type RhaiResult<T> = Result<T, Box<EvalAltResult>>;

fn current<T>(f: impl FnOnce(&DecisionCtx) -> Result<T, String>) -> RhaiResult<T> {
    let ctx = CURRENT
        .with(|c| c.try_borrow().ok().and_then(|slot| slot.clone()))
        .ok_or_else(|| "signals are only available while a decision runs".to_owned())?;
    f(&ctx).map_err(Into::into)
}

fn text(v: Option<&str>) -> Dynamic {
    v.map_or(Dynamic::UNIT, |s| Dynamic::from(ImmutableString::from(s)))
}

/// Registers every signal of the catalogue on a rule engine.
pub(crate) fn register(engine: &mut rhai::Engine) {
    for signal in &catalogue::SIGNALS {
        let name = signal.name;
        match signal.call {
            Call::Window(kept) => {
                engine.register_fn(name, move |w: ImmutableString| -> RhaiResult<INT> {
                    current(|ctx| {
                        crate::signals::count(ctx, name, kept, crate::signals::window(name, &w)?)
                    })
                });
            }
            Call::Flag(f) => {
                engine.register_fn(name, move || -> RhaiResult<bool> {
                    current(|ctx| Ok(f(ctx)))
                });
            }
            Call::Text(f) => {
                engine.register_fn(name, move || -> RhaiResult<Dynamic> {
                    current(|ctx| Ok(text(f(ctx))))
                });
            }
            Call::MaybeInt(f) => {
                engine.register_fn(name, move || -> RhaiResult<Dynamic> {
                    current(|ctx| Ok(f(ctx).map_or(Dynamic::UNIT, |n| Dynamic::from(n as INT))))
                });
            }
            Call::MaybeBool(f) => {
                engine.register_fn(name, move || -> RhaiResult<Dynamic> {
                    current(|ctx| Ok(f(ctx).map_or(Dynamic::UNIT, Dynamic::from)))
                });
            }
            Call::MaybeFloat(f) => {
                engine.register_fn(name, move || -> RhaiResult<Dynamic> {
                    current(|ctx| Ok(f(ctx).map_or(Dynamic::UNIT, |v| Dynamic::from(v as FLOAT))))
                });
            }
            Call::List(f) => {
                engine.register_fn(
                    name,
                    move |list: ImmutableString, value: Dynamic| -> RhaiResult<bool> {
                        current(|ctx| {
                            if value.is_unit() {
                                // An absent attribute is in no list, but the list must still exist.
                                return f(ctx, &list, "").map(|_| false);
                            }
                            let v = if let Some(s) = value.read_lock::<ImmutableString>() {
                                return f(ctx, &list, &s);
                            } else if value.is_int()
                                || value.is_float()
                                || value.is_bool()
                                || value.is_char()
                            {
                                value.to_string()
                            } else {
                                return Err(format!(
                                    "`{name}`: expected a string value, not {}",
                                    value.type_name()
                                ));
                            };
                            f(ctx, &list, &v)
                        })
                    },
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_row_is_registered_with_its_arity() {
        let engine = super::super::sandbox::new_engine(&crate::config::Limits::default());
        let registered: Vec<(String, usize)> = engine.collect_fn_metadata(
            None,
            |info| Some((info.metadata.name.to_string(), info.metadata.num_params)),
            true,
        );
        for signal in &catalogue::SIGNALS {
            let arities: Vec<usize> = registered
                .iter()
                .filter(|(n, _)| n == signal.name)
                .map(|(_, a)| *a)
                .collect();
            assert_eq!(arities, [signal.call.arity()], "`{}`", signal.name);
        }
    }
}
