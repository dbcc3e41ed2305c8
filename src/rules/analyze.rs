//! Load-time checks of the signal calls in a rule: literal windows are parsed (the longest sets how much
//! history is kept), literal list names must exist, geography functions need their database, and signal
//! functions must get the right number of arguments.

use rhai::{ASTNode, Expr, Position, Stmt, AST};

use crate::error::Diagnostic;

/// Signal functions that take a window string.
const WINDOWED: [&str; 6] = [
    "velocity",
    "velocity_ip",
    "velocity_device",
    "distinct_users_on_ip",
    "distinct_users_on_device",
    "distinct_devices",
];

/// Signal functions that take no argument, with the `[geoip]` database each needs.
const NULLARY: [(&str, Option<crate::signals::geo::Kind>); 13] = {
    use crate::signals::geo::Kind::{AnonymousIp, Asn, City};
    [
        ("is_new_device", None),
        ("is_new_ip", None),
        ("is_new_country", Some(City)),
        ("country", Some(City)),
        ("city", Some(City)),
        ("asn", Some(Asn)),
        ("is_anonymous_ip", Some(AnonymousIp)),
        ("travel_speed_kmh", Some(City)),
        ("is_impossible_travel", Some(City)),
        ("ua_browser", None),
        ("ua_os", None),
        ("ua_device_type", None),
        ("is_bot", None),
    ]
};

const UA: [&str; 4] = ["ua_browser", "ua_os", "ua_device_type", "is_bot"];

/// What the ruleset offers that rules may need.
pub(crate) struct Needs<'a> {
    /// The names of the ruleset's lists.
    pub lists: &'a dyn Fn(&str) -> bool,
    /// Which `[geoip]` databases are configured.
    pub geo: &'a dyn Fn(crate::signals::geo::Kind) -> bool,
}

/// What a ruleset's rules use, gathered over all rules.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Uses {
    /// The longest literal window.
    pub longest_window_ms: i64,
    /// Some window is computed at run time (so `[signals] max_window` of history is kept).
    pub computed_window: bool,
    /// Some rule asks about the user agent.
    pub agent: bool,
    /// Some rule asks the city database (`country()`, `city()`, `is_new_country()`, travel): known countries
    /// and locations are recorded only then, so a ruleset that never asks never looks an IP up.
    pub places: bool,
    /// Which windowed signals rules call: bit `1 << k` for the `k`-th of [`WINDOWED`] counted from 1 (the
    /// values of `SeriesKind` and `SetKind`), so history keeps only the series and sets that are read.
    pub windowed: u8,
}

/// Checks the signal calls in `ast` (rule file `file`), adding to `uses` and `problems`.
pub(crate) fn analyze(
    ast: &AST,
    file: &str,
    needs: &Needs<'_>,
    uses: &mut Uses,
    problems: &mut Vec<Diagnostic>,
) {
    let mut report = |pos: Position, message: String| {
        problems.push(Diagnostic {
            file: file.to_owned(),
            line: pos.line().unwrap_or(0),
            column: pos.position().unwrap_or(0),
            message,
        });
    };
    ast.walk(&mut |path| {
        let (call, pos, method) = match path.last() {
            Some(ASTNode::Expr(Expr::FnCall(call, pos)))
            | Some(ASTNode::Stmt(Stmt::FnCall(call, pos))) => (call, *pos, false),
            Some(ASTNode::Expr(Expr::MethodCall(call, pos))) => (call, *pos, true),
            _ => return true,
        };
        let name = call.name.as_str();
        let args = &call.args;
        if let Some(i) = WINDOWED.iter().position(|w| *w == name) {
            uses.windowed |= 1 << (i + 1);
            match args.first() {
                Some(Expr::StringConstant(w, at)) if args.len() == 1 && !method => {
                    match crate::signals::window(name, w) {
                        Ok(ms) => uses.longest_window_ms = uses.longest_window_ms.max(ms),
                        Err(m) => report(*at, m),
                    }
                }
                _ if args.len() == 1 || method => uses.computed_window = true,
                _ => report(
                    pos,
                    format!("`{name}` takes one argument, a window like \"10m\" or \"1h\""),
                ),
            }
        } else if let Some((_, db)) = NULLARY.iter().find(|(n, _)| *n == name) {
            if !args.is_empty() {
                report(pos, format!("`{name}` takes no arguments"));
            }
            if let Some(kind) = db {
                if !(needs.geo)(*kind) {
                    report(
                        pos,
                        format!(
                            "`{name}` needs a GeoIP database: set `[geoip] {}` in riskgate.toml",
                            kind.key()
                        ),
                    );
                }
            }
            uses.agent |= UA.contains(&name);
            uses.places |= *db == Some(crate::signals::geo::Kind::City);
        } else if name == "in_list" {
            if args.len() != 2 && !method {
                report(
                    pos,
                    "`in_list` takes two arguments: a list name and a value".to_owned(),
                );
            } else if let Some(Expr::StringConstant(list, at)) = args.first() {
                if !method && !(needs.lists)(list) {
                    report(
                        *at,
                        format!(
                            "no list named `{}`: expected `lists/{}.txt` in the rules folder",
                            crate::request::shorten(list),
                            crate::request::shorten(list)
                        ),
                    );
                }
            }
        }
        true
    });
}
