//! Load-time checks of the signal calls in a rule: literal windows are parsed (the longest sets how much
//! history is kept), literal list names must exist, geography functions need their database, and signal
//! functions must get the right number of arguments.

use rhai::{ASTNode, Expr, Position, Stmt, AST};

use crate::error::Diagnostic;
use crate::signals::catalogue::{self, Args};
use crate::signals::geo;

/// What the ruleset offers that rules may need.
pub(crate) struct Needs<'a> {
    /// The names of the ruleset's lists.
    pub lists: &'a dyn Fn(&str) -> bool,
    /// Which `[geoip]` databases are configured.
    pub geo: &'a dyn Fn(geo::Kind) -> bool,
}

/// What a ruleset's rules use, gathered over all rules.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
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
    /// Some rule calls `rba_score()` (so verified actions count their feature values).
    pub rba: bool,
    /// The known lists rules read ([`Signal::known`](catalogue::Signal::known) bits).
    pub known: u8,
    /// Which windowed signals rules call: the [`Kept::bit`](catalogue::Kept::bit) of each one's catalogue row,
    /// so history keeps only the series and sets that are read.
    pub windowed: u8,
    /// Each literal window a windowed signal is called with: its [`Kept::bit`](catalogue::Kept::bit) and the
    /// window, once each (a remote store then counts just these windows instead of fetching the series).
    pub windows: Vec<(u8, i64)>,
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
        problems.push(Diagnostic::new(
            file.to_owned(),
            pos.line().unwrap_or(0),
            pos.position().unwrap_or(0),
            message,
        ));
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
        let Some(signal) = catalogue::find(name) else {
            return true;
        };
        match signal.call.args() {
            Args::Window => {
                uses.windowed |= signal.call.kept().map_or(0, |k| k.bit());
                match args.first() {
                    Some(Expr::StringConstant(w, at)) if args.len() == 1 && !method => {
                        match crate::signals::window(name, w) {
                            Ok(w) => {
                                uses.longest_window_ms = uses.longest_window_ms.max(w.ms());
                                if let Some(tag) = signal.call.kept().map(|k| k.tag()) {
                                    let pair = (tag, w.ms());
                                    if !uses.windows.contains(&pair) {
                                        uses.windows.push(pair);
                                    }
                                }
                            }
                            Err(m) => report(*at, m),
                        }
                    }
                    _ if args.len() == 1 || method => uses.computed_window = true,
                    _ => report(
                        pos,
                        format!("`{name}` takes one argument, a window like \"10m\" or \"1h\""),
                    ),
                }
            }
            Args::None => {
                if !args.is_empty() {
                    report(pos, format!("`{name}` takes no arguments"));
                }
            }
            Args::ListValue => {
                if args.len() != 2 && !method {
                    report(
                        pos,
                        format!("`{name}` takes two arguments: a list name and a value"),
                    );
                } else if let Some(Expr::StringConstant(list, at)) = args.first() {
                    if !method && !(needs.lists)(list) {
                        report(
                            *at,
                            format!(
                                "no list named `{}`: expected `lists/{}.txt` in the rules folder",
                                crate::error::shorten(list),
                                crate::error::shorten(list)
                            ),
                        );
                    }
                }
            }
        }
        if let Some(kind) = signal.geo {
            if !(needs.geo)(kind) {
                report(
                    pos,
                    format!(
                        "`{name}` needs a GeoIP database: set `[geoip] {}` in riskgate.toml",
                        kind.key()
                    ),
                );
            }
        }
        uses.agent |= signal.agent;
        uses.places |= signal.places;
        uses.rba |= signal.rba;
        uses.known |= signal.known;
        true
    });
}

#[cfg(test)]
mod tests {
    use crate::signals::catalogue::{Call, SIGNALS};
    use crate::{Engine, RuleSet, State, TrackRequest};
    use std::time::{Duration, SystemTime};

    /// An action on `signIn` by `user` from `ip` and `device`.
    fn req(user: &str, ip: &str, device: &str) -> TrackRequest {
        let mut r = TrackRequest::new(user, "signIn");
        r.attributes.ip_address = Some(ip.into());
        r.attributes.device_id = Some(device.into());
        r
    }

    /// What each windowed signal counts, stated apart from the catalogue: after `FIRST`, the first request
    /// here must see one earlier action or member, and the second none.
    fn meaning(name: &str) -> Option<[TrackRequest; 2]> {
        Some(match name {
            "velocity" => [req("u1", "10.0.0.2", "d2"), req("u2", "10.0.0.1", "d1")],
            "velocity_ip" => [req("u2", "10.0.0.1", "d2"), req("u1", "10.0.0.2", "d1")],
            "velocity_device" => [req("u2", "10.0.0.2", "d1"), req("u1", "10.0.0.1", "d2")],
            "distinct_users_on_ip" => [req("u2", "10.0.0.1", "d2"), req("u1", "10.0.0.2", "d1")],
            "distinct_users_on_device" => {
                [req("u2", "10.0.0.2", "d1"), req("u1", "10.0.0.1", "d2")]
            }
            "distinct_devices" => [req("u1", "10.0.0.2", "d2"), req("u2", "10.0.0.1", "d1")],
            _ => return None,
        })
    }

    /// The count `name("1h")` gives `second` after `first`, by an engine whose only rule calls `name`; and how
    /// many history keys the first action left.
    fn count_after(
        name: &str,
        compile: bool,
        first: &TrackRequest,
        second: &TrackRequest,
    ) -> (State, usize) {
        // REVIEW (not ALLOW) when nothing is counted, so that nothing is made known and the only history is the
        // series or set the signal reads.
        let rules = RuleSet::builder()
            .compile_rules(compile)
            .rule(
                "only",
                format!("if {name}(\"1h\") == 1 {{ BLOCK }} else {{ REVIEW }}"),
            )
            .build()
            .unwrap();
        assert_eq!(rules.rules().all(|r| r.compiled), compile, "`{name}`");
        let engine = Engine::builder().ruleset(rules).build().unwrap();
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let state = engine.track_at(first, t0).unwrap().state;
        assert_eq!(
            state,
            State::Review,
            "`{name}` counts the first action itself"
        );
        let keys = engine.history_keys();
        let state = engine
            .track_at(second, t0 + Duration::from_secs(60))
            .unwrap()
            .state;
        (state, keys)
    }

    /// A windowed row's history kind is what history records for it and what it reads: a ruleset calling only
    /// that signal keeps exactly one series or set key, and the signal counts an earlier action by the subject
    /// its name promises, and not one by another subject.
    #[test]
    fn each_windowed_signal_keeps_the_history_it_reads() {
        let first = req("u1", "10.0.0.1", "d1");
        let mut windowed = 0;
        for signal in &SIGNALS {
            let Call::Window(_) = signal.call else {
                continue;
            };
            windowed += 1;
            let name = signal.name;
            let [same, other] =
                meaning(name).unwrap_or_else(|| panic!("say what `{name}` counts in `meaning`"));
            for compile in [true, false] {
                let (state, keys) = count_after(name, compile, &first, &same);
                assert_eq!(keys, 1, "`{name}` keeps one series or set key");
                assert_eq!(
                    state,
                    State::Block,
                    "`{name}` sees the earlier action (compiled: {compile})"
                );
                let (state, _) = count_after(name, compile, &first, &other);
                assert_eq!(
                    state,
                    State::Review,
                    "`{name}` counts another subject's action (compiled: {compile})"
                );
            }
        }
        assert_eq!(windowed, 6);
    }
}
