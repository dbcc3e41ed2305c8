//! The binding of signals to Rhai: the decision running on each thread, and the registered signal functions.
//!
//! Registered functions read the context of the decision running on their thread (set by [`with_decision`]
//! around rule evaluation) and call the same functions compiled rules call.

use rhai::{Dynamic, EvalAltResult, ImmutableString, FLOAT, INT};
use std::cell::RefCell;
use std::rc::Rc;

use crate::signals::*;

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

/// Registers the signal functions on a rule engine.
pub(crate) fn register(engine: &mut rhai::Engine) {
    type Windowed = fn(&DecisionCtx, i64) -> Result<i64, String>;
    let windowed: [(&'static str, Windowed); 6] = [
        ("velocity", velocity),
        ("velocity_ip", velocity_ip),
        ("velocity_device", velocity_device),
        ("distinct_users_on_ip", distinct_users_on_ip),
        ("distinct_users_on_device", distinct_users_on_device),
        ("distinct_devices", distinct_devices),
    ];
    for (name, f) in windowed {
        engine.register_fn(name, move |w: ImmutableString| -> RhaiResult<INT> {
            current(|ctx| f(ctx, window(name, &w)?))
        });
    }
    type Flag = fn(&DecisionCtx) -> bool;
    let flags: [(&'static str, Flag); 5] = [
        ("is_new_device", is_new_device),
        ("is_new_ip", is_new_ip),
        ("is_new_country", is_new_country),
        ("is_impossible_travel", is_impossible_travel),
        ("is_bot", is_bot),
    ];
    for (name, f) in flags {
        engine.register_fn(name, move || -> RhaiResult<bool> {
            current(|ctx| Ok(f(ctx)))
        });
    }
    type Text = fn(&DecisionCtx) -> Option<&str>;
    let texts: [(&'static str, Text); 4] = [
        ("country", country),
        ("city", city),
        ("ua_browser", ua_browser),
        ("ua_os", ua_os),
    ];
    for (name, f) in texts {
        engine.register_fn(name, move || -> RhaiResult<Dynamic> {
            current(|ctx| Ok(text(f(ctx))))
        });
    }
    engine.register_fn("ua_device_type", || -> RhaiResult<Dynamic> {
        current(|ctx| Ok(text(ua_device_type(ctx))))
    });
    engine.register_fn("asn", || -> RhaiResult<Dynamic> {
        current(|ctx| Ok(asn(ctx).map_or(Dynamic::UNIT, |n| Dynamic::from(n as INT))))
    });
    engine.register_fn("is_anonymous_ip", || -> RhaiResult<Dynamic> {
        current(|ctx| Ok(is_anonymous_ip(ctx).map_or(Dynamic::UNIT, Dynamic::from)))
    });
    engine.register_fn("travel_speed_kmh", || -> RhaiResult<Dynamic> {
        current(
            |ctx| Ok(travel_speed_kmh(ctx).map_or(Dynamic::UNIT, |v| Dynamic::from(v as FLOAT))),
        )
    });
    engine.register_fn(
        "in_list",
        |name: ImmutableString, value: Dynamic| -> RhaiResult<bool> {
            current(|ctx| {
                if value.is_unit() {
                    // An absent attribute is in no list, but the list must still exist.
                    return in_list(ctx, &name, "").map(|_| false);
                }
                let v = if let Some(s) = value.read_lock::<ImmutableString>() {
                    return in_list(ctx, &name, &s);
                } else if value.is_int() || value.is_float() || value.is_bool() || value.is_char() {
                    value.to_string()
                } else {
                    return Err(format!(
                        "`in_list`: expected a string value, not {}",
                        value.type_name()
                    ));
                };
                in_list(ctx, &name, &v)
            })
        },
    );
}
