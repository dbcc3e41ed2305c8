//! User agents, parsed with `woothee` (a maintained, data-driven parser shared with other languages).

use std::sync::Arc;

/// What rules can ask about a user agent. Its strings are shared (`Arc`), so that a decision takes a copy of a
/// cached parse without allocating.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Agent {
    /// The browser or crawler name (`Chrome`, `Safari`, `Googlebot`), if recognised.
    pub browser: Option<Arc<str>>,
    /// The browser's major version (`143` of `143.0.0.0`), if recognised.
    pub version: Option<Arc<str>>,
    /// The operating system (`Mac OSX`, `Windows 10`, `iPhone`, `Android`), if recognised.
    pub os: Option<Arc<str>>,
    /// `desktop`, `mobile`, `crawler`, `appliance` or `other`, if recognised.
    pub device_type: Option<&'static str>,
    /// A crawler, or an empty user agent.
    pub bot: bool,
}

/// How many parsed user agents each thread remembers (two-way set-associative by hash, the more recently used
/// of each pair first; a user agent is at most `MAX_LONG_FIELD_BYTES`, so the cache holds at most a few hundred
/// kilobytes per thread).
const CACHE_SLOTS: usize = 128;

/// Values a caller derives from one user agent and its parse under one hash seed (`rba_score()`'s user-agent
/// levels), remembered with the parse.
pub(crate) type Derived = [Option<u64>; 5];

/// One remembered user agent, what it parsed to, and what was last derived from it (with the seed's id).
#[derive(Clone)]
struct Entry {
    text: Box<str>,
    agent: Agent,
    derived: Option<(u64, Derived)>,
}

type Cached = Option<Entry>;

thread_local! {
    static CACHE: std::cell::RefCell<Vec<Cached>> =
        std::cell::RefCell::new((0..CACHE_SLOTS).map(|_| None).collect());
}

/// [`parse`], remembering recent results: parsing costs microseconds, and the same few user agents recur.
pub(crate) fn parse_cached(ua: Option<&str>) -> Agent {
    parse_cached_with(ua, None::<(u64, fn(&Agent, &str) -> Derived)>).0
}

/// [`parse_cached`], and with `derive = Some((seed_id, f))` also `f(agent, text)` (`text` is `"\0none"`
/// without a user agent), remembered next to the parse for that seed, so that a recurring user agent costs one
/// cache look-up for both.
pub(crate) fn parse_cached_with<F: FnOnce(&Agent, &str) -> Derived>(
    ua: Option<&str>,
    derive: Option<(u64, F)>,
) -> (Agent, Option<Derived>) {
    let Some(text) = ua else {
        let agent = parse(None);
        let derived = derive.map(|(_, f)| f(&agent, "\0none"));
        return (agent, derived);
    };
    let seed_id = derive.as_ref().map(|d| d.0);
    let first = (crate::hash::xxh3_64(text.as_bytes()) % CACHE_SLOTS as u64) as usize & !1;
    let hit = CACHE.with(|c| {
        let mut c = c.try_borrow_mut().ok()?;
        let way = (first..first + 2).find(|&i| {
            c.get(i)
                .and_then(Option::as_ref)
                .is_some_and(|e| &*e.text == text)
        })?;
        if way != first {
            c.swap(first, way);
        }
        let e = c.get(first)?.as_ref()?;
        let derived = e.derived.filter(|d| Some(d.0) == seed_id).map(|d| d.1);
        Some((e.agent.clone(), derived))
    });
    let agent = match hit {
        // Nothing more to remember: the parse was cached and what was asked for with it, if anything, too.
        Some((agent, derived)) if derived.is_some() || seed_id.is_none() => {
            return (agent, derived)
        }
        Some((agent, _)) => agent,
        None => parse(ua),
    };
    let derived = derive.map(|(_, f)| f(&agent, text));
    let entry = Entry {
        text: Box::from(text),
        agent: agent.clone(),
        derived: seed_id.zip(derived),
    };
    CACHE.with(|c| {
        if let Ok(mut c) = c.try_borrow_mut() {
            match c.get(first).and_then(Option::as_ref) {
                Some(e) if &*e.text == text => {}
                // The pair's more recent entry moves to second place.
                _ => c.swap(first, first + 1),
            }
            if let Some(slot) = c.get_mut(first) {
                *slot = Some(entry);
            }
        }
    });
    (agent, derived)
}

/// Parses a user agent; `None` and blank strings are bots with nothing else known.
pub(crate) fn parse(ua: Option<&str>) -> Agent {
    let ua = ua.map(str::trim).unwrap_or("");
    if ua.is_empty() {
        return Agent {
            bot: true,
            ..Agent::default()
        };
    }
    let Some(r) = woothee::parser::Parser::new().parse(ua) else {
        return Agent::default();
    };
    let known =
        |s: &str| (!s.is_empty() && s != woothee::woothee::VALUE_UNKNOWN).then(|| Arc::from(s));
    let device_type = match r.category {
        "pc" => Some("desktop"),
        "smartphone" | "mobilephone" => Some("mobile"),
        "crawler" => Some("crawler"),
        "appliance" => Some("appliance"),
        "misc" => Some("other"),
        _ => None,
    };
    let major = r.version.split('.').next().unwrap_or("");
    Agent {
        browser: known(r.name),
        version: known(major),
        os: known(r.os),
        device_type,
        bot: r.category == "crawler",
    }
}

#[cfg(test)]
mod tests {
    use super::parse;

    #[test]
    fn desktop_phone_crawler_and_empty() {
        let mac = parse(Some("Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.0.0 Safari/537.36"));
        assert_eq!(mac.browser.as_deref(), Some("Chrome"));
        assert_eq!(mac.version.as_deref(), Some("120"));
        assert_eq!(mac.os.as_deref(), Some("Mac OSX"));
        assert_eq!(mac.device_type, Some("desktop"));
        assert!(!mac.bot);
        let phone = parse(Some("Mozilla/5.0 (iPhone; CPU iPhone OS 17_0 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.0 Mobile/15E148 Safari/604.1"));
        assert_eq!(phone.device_type, Some("mobile"));
        assert_eq!(phone.os.as_deref(), Some("iPhone"));
        let bot = parse(Some(
            "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)",
        ));
        assert!(bot.bot);
        assert_eq!(bot.device_type, Some("crawler"));
        assert!(parse(None).bot && parse(Some("  ")).bot);
        let odd = parse(Some("my-script/0.1"));
        assert!(!odd.bot);
        assert_eq!(odd.browser, None);
    }

    #[test]
    fn the_cache_gives_what_parsing_gives() {
        for ua in [
            None,
            Some(""),
            Some("curl/8.0"),
            Some("Mozilla/5.0 (iPhone; CPU iPhone OS 17_0 like Mac OS X)"),
        ] {
            assert_eq!(super::parse_cached(ua), parse(ua));
            assert_eq!(super::parse_cached(ua), parse(ua));
        }
    }

    #[test]
    fn derived_values_are_remembered_per_seed() {
        let derive = |n: u64| {
            move |a: &super::Agent, t: &str| {
                [
                    Some(n),
                    Some(t.len() as u64),
                    a.browser.as_ref().map(|_| 1),
                    None,
                    None,
                ]
            }
        };
        let ua = Some("Mozilla/5.0 (X11; Linux x86_64; rv:143.0) Gecko/20100101 Firefox/143.0");
        let (a, d) = super::parse_cached_with(ua, Some((1, derive(10))));
        assert_eq!(a, parse(ua));
        let len = ua.map_or(0, |t| t.len() as u64);
        assert_eq!(d, Some([Some(10), Some(len), Some(1), None, None]));
        // Remembered for seed 1 (a different function is not called), computed afresh for seed 2.
        let (_, d) = super::parse_cached_with(ua, Some((1, derive(99))));
        assert_eq!(d.and_then(|d| d[0]), Some(10));
        let (_, d) = super::parse_cached_with(ua, Some((2, derive(20))));
        assert_eq!(d.and_then(|d| d[0]), Some(20));
        let (_, d) = super::parse_cached_with(None, Some((2, derive(30))));
        assert_eq!(d.and_then(|d| d[1]), Some(5));
        // Many user agents sharing the cache: each still parses as it should.
        for i in 0..1_000 {
            let text = format!("Mozilla/5.0 (Windows NT 10.0) Chrome/{i}.0.0.0 Safari/537.36");
            let (a, d) = super::parse_cached_with(Some(&text), Some((1, derive(i))));
            assert_eq!(a, parse(Some(&text)));
            assert_eq!(d.and_then(|d| d[0]), Some(i));
        }
    }
}
