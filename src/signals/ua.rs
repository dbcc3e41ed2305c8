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

/// How many parsed user agents each thread remembers (direct-mapped by hash; a user agent is at most
/// `MAX_LONG_FIELD_BYTES`, so the cache holds at most a few hundred kilobytes per thread).
const CACHE_SLOTS: usize = 128;

/// One remembered user agent and what it parsed to.
type Cached = Option<(Box<str>, Agent)>;

thread_local! {
    static CACHE: std::cell::RefCell<Vec<Cached>> = std::cell::RefCell::new(vec![None; CACHE_SLOTS]);
}

/// [`parse`], remembering recent results: parsing costs microseconds, and the same few user agents recur.
pub(crate) fn parse_cached(ua: Option<&str>) -> Agent {
    let Some(text) = ua else {
        return parse(None);
    };
    let slot = (crate::hash::xxh3_64(text.as_bytes()) % CACHE_SLOTS as u64) as usize;
    let hit = CACHE.with(|c| {
        let c = c.try_borrow().ok()?;
        match c.get(slot)? {
            Some((k, agent)) if &**k == text => Some(agent.clone()),
            _ => None,
        }
    });
    if let Some(agent) = hit {
        return agent;
    }
    let agent = parse(ua);
    CACHE.with(|c| {
        if let Ok(mut c) = c.try_borrow_mut() {
            if let Some(entry) = c.get_mut(slot) {
                *entry = Some((Box::from(text), agent.clone()));
            }
        }
    });
    agent
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
}
