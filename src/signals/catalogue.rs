//! The signal catalogue: one row per function rules can call, and everything riskgate needs to know about it.
//!
//! The Rhai binding (`rules/binding.rs`), the load-time checks (`rules/analyze.rs`), the known-function check
//! (`rules/functions.rs`) and the native compiler (`rules/compile.rs`) all read [`SIGNALS`]; none of them
//! names a signal.
//!
//! # Adding a signal
//! Write the function in `signals/mod.rs` (a plain function over a [`DecisionCtx`]; memoise into the context
//! if it is costly), and add its row here. The row's [`Call`] variant gives both the argument shape and what
//! the function returns, so the binding and the compiler need nothing new. A windowed signal has no function
//! of its own: it counts the series or set its row names, and that same field decides what history keeps. Its
//! kind is a new [`SeriesKind`] or [`SetKind`] (with its key in `History::series_key` / `set_key` and its
//! member in `History::record`). Then document it in the README's Signals table.

use super::geo::Kind as Geo;
pub(crate) use super::history::Kept;
use super::history::{SeriesKind, SetKind};
use super::DecisionCtx;

/// How a signal is called and what it returns. The variant fixes both the argument shape ([`Call::args`]) and
/// the value's type, so a row cannot say one thing and its function do another, and the Rhai binding and the
/// native compiler handle every row of one variant alike.
#[derive(Clone, Copy)]
pub(crate) enum Call {
    /// `name("10m")`: an integer count over a window, from the history named.
    Window(Kept),
    /// `name()`: a bool.
    Flag(fn(&DecisionCtx) -> bool),
    /// `name()`: a string, or `()` when unknown.
    Text(for<'c> fn(&'c DecisionCtx) -> Option<&'c str>),
    /// `name()`: an integer, or `()` when unknown.
    MaybeInt(fn(&DecisionCtx) -> Option<i64>),
    /// `name()`: a bool, or `()` when unknown.
    MaybeBool(fn(&DecisionCtx) -> Option<bool>),
    /// `name()`: a float, or `()` when unknown.
    MaybeFloat(fn(&DecisionCtx) -> Option<f64>),
    /// `name("list", value)`: whether the value is in the named list (an error when there is no such list).
    List(fn(&DecisionCtx, &str, &str) -> Result<bool, String>),
}

/// The arguments a signal takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Args {
    /// One window string.
    Window,
    /// None.
    None,
    /// A list name and a value.
    ListValue,
}

impl Call {
    pub fn args(self) -> Args {
        match self {
            Call::Window(_) => Args::Window,
            Call::List(_) => Args::ListValue,
            Call::Flag(_)
            | Call::Text(_)
            | Call::MaybeInt(_)
            | Call::MaybeBool(_)
            | Call::MaybeFloat(_) => Args::None,
        }
    }

    /// How many arguments a call takes.
    pub fn arity(self) -> usize {
        match self.args() {
            Args::Window => 1,
            Args::None => 0,
            Args::ListValue => 2,
        }
    }

    /// The history a call counts, if it is windowed.
    pub fn kept(self) -> Option<Kept> {
        match self {
            Call::Window(k) => Some(k),
            _ => None,
        }
    }
}

/// One signal function.
pub(crate) struct Signal {
    /// The name rules call it by.
    pub name: &'static str,
    pub call: Call,
    /// The `[geoip]` database it needs (a load error without it).
    pub geo: Option<Geo>,
    /// It reads the user agent (so decisions keep a copy of it).
    pub agent: bool,
    /// It reads places from the city database (so allowed actions record their country and location).
    pub places: bool,
    /// It reads the feature counts of verified actions (so those actions count their feature values).
    pub rba: bool,
    /// The known lists it reads: [`KNOWN_DEVICES`], [`KNOWN_IPS`] (known countries go with `places`).
    pub known: u8,
}

/// [`Signal::known`]: the user's known devices.
pub(crate) const KNOWN_DEVICES: u8 = 1;
/// [`Signal::known`]: the user's known IP addresses.
pub(crate) const KNOWN_IPS: u8 = 2;

const fn row(name: &'static str, call: Call) -> Signal {
    Signal {
        name,
        call,
        geo: None,
        agent: false,
        places: false,
        rba: false,
        known: 0,
    }
}

const fn placed(name: &'static str, call: Call) -> Signal {
    Signal {
        geo: Some(Geo::City),
        places: true,
        ..row(name, call)
    }
}

const fn agent(name: &'static str, call: Call) -> Signal {
    Signal {
        agent: true,
        ..row(name, call)
    }
}

/// Every signal rules can call (DESIGN §6).
pub(crate) const SIGNALS: [Signal; 21] = {
    use super::*;
    use Call::*;
    use Kept::{Series, Set};
    [
        // This user's earlier actions with this action code.
        row("velocity", Window(Series(SeriesKind::User))),
        // Earlier actions with this action code from this IP, any user (0 without an IP).
        row("velocity_ip", Window(Series(SeriesKind::Ip))),
        // Earlier actions with this action code from this device, any user (0 without a device).
        row("velocity_device", Window(Series(SeriesKind::Device))),
        // Distinct users seen from this IP (0 without an IP).
        row("distinct_users_on_ip", Window(Set(SetKind::UsersOnIp))),
        // Distinct users seen from this device (0 without a device).
        row(
            "distinct_users_on_device",
            Window(Set(SetKind::UsersOnDevice)),
        ),
        // Distinct devices this user acted from.
        row("distinct_devices", Window(Set(SetKind::DevicesOfUser))),
        Signal {
            known: KNOWN_DEVICES,
            ..row("is_new_device", Flag(is_new_device))
        },
        Signal {
            known: KNOWN_IPS,
            ..row("is_new_ip", Flag(is_new_ip))
        },
        placed("is_new_country", Flag(is_new_country)),
        placed("country", Text(country)),
        placed("city", Text(city)),
        Signal {
            geo: Some(Geo::Asn),
            ..row("asn", MaybeInt(asn))
        },
        Signal {
            geo: Some(Geo::AnonymousIp),
            ..row("is_anonymous_ip", MaybeBool(is_anonymous_ip))
        },
        placed("travel_speed_kmh", MaybeFloat(travel_speed_kmh)),
        placed("is_impossible_travel", Flag(is_impossible_travel)),
        agent("ua_browser", Text(ua_browser)),
        agent("ua_os", Text(ua_os)),
        agent("ua_device_type", Text(ua_device_type)),
        agent("is_bot", Flag(is_bot)),
        // How unusual this action's network, browser and device are among the user's verified actions
        // compared with everyone's (`signals/rba.rs`). It reads the user agent, and the country when `[geoip]
        // city` is set: with known locations recorded, an action from the address that placed the user last
        // time is placed without a lookup. It requires no database.
        Signal {
            agent: true,
            places: true,
            rba: true,
            ..row("rba_score", MaybeFloat(|c| Some(rba_score(c))))
        },
        row("in_list", List(in_list)),
    ]
};

/// The signal called `name`.
pub(crate) fn find(name: &str) -> Option<&'static Signal> {
    SIGNALS.iter().find(|s| s.name == name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_history_tags_are_unique() {
        for (i, s) in SIGNALS.iter().enumerate() {
            assert!(
                SIGNALS[..i].iter().all(|t| t.name != s.name),
                "`{}` twice",
                s.name
            );
            if let Some(k) = s.call.kept() {
                // Tags are bits of one set, shared by series and sets.
                assert!(
                    SIGNALS[..i]
                        .iter()
                        .all(|t| t.call.kept().map(Kept::tag) != Some(k.tag())),
                    "`{}` has the history tag of an earlier row",
                    s.name
                );
                // Kept kinds are bits of a `u8`.
                assert!(k.tag() < 8, "`{}`", s.name);
            }
        }
    }

    #[test]
    fn places_are_read_from_the_city_database() {
        for s in &SIGNALS {
            if s.places {
                // `rba_score()` is the one signal that records places without requiring the City database: it
                // reads the country when one is configured and scores without it otherwise.
                let needs = if s.rba { None } else { Some(Geo::City) };
                assert_eq!(s.geo, needs, "`{}`", s.name);
            }
        }
        let rba: Vec<_> = SIGNALS.iter().filter(|s| s.rba).map(|s| s.name).collect();
        assert_eq!(rba, ["rba_score"]);
    }
}
