//! User-agent signals: a desktop browser, a phone, a crawler, and no user agent at all.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use riskgate::{Engine, RuleSet, TrackAttributes, TrackRequest};

const MAC_CHROME: &str = "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.0.0 Safari/537.36";
const WINDOWS_FIREFOX: &str =
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:121.0) Gecko/20100101 Firefox/121.0";
const IPHONE: &str = "Mozilla/5.0 (iPhone; CPU iPhone OS 17_1 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.1 Mobile/15E148 Safari/604.1";
const ANDROID: &str = "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.6099.43 Mobile Safari/537.36";
const GOOGLEBOT: &str = "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)";

/// `[ua_browser(), ua_os(), ua_device_type(), is_bot()]` for a user agent, as Rhai prints them.
fn parsed(ua: Option<&str>) -> [String; 4] {
    let rules = RuleSet::from_sources([(
        "probe",
        "throw `${ua_browser()}|${ua_os()}|${ua_device_type()}|${is_bot()}`",
    )])
    .unwrap();
    let e = Engine::builder().ruleset(rules).build().unwrap();
    let resp = e
        .track(&TrackRequest {
            user_id: "u".into(),
            action: "signIn".into(),
            attributes: TrackAttributes {
                user_agent: ua.map(Into::into),
                ..Default::default()
            },
        })
        .unwrap();
    let msg = &resp.errors[0].message;
    let fields: Vec<String> = msg
        .split("Runtime error: ")
        .last()
        .unwrap()
        .trim()
        .split('|')
        .map(str::to_owned)
        .collect();
    fields.try_into().unwrap()
}

#[test]
fn desktop_browsers() {
    assert_eq!(
        parsed(Some(MAC_CHROME)),
        ["Chrome", "Mac OSX", "desktop", "false"]
    );
    assert_eq!(
        parsed(Some(WINDOWS_FIREFOX)),
        ["Firefox", "Windows 10", "desktop", "false"]
    );
}

#[test]
fn phones() {
    assert_eq!(
        parsed(Some(IPHONE)),
        ["Safari", "iPhone", "mobile", "false"]
    );
    assert_eq!(
        parsed(Some(ANDROID)),
        ["Chrome", "Android", "mobile", "false"]
    );
}

#[test]
fn crawlers_and_missing_user_agents_are_bots() {
    let [browser, _, device, bot] = parsed(Some(GOOGLEBOT));
    assert_eq!(
        (browser.as_str(), device.as_str(), bot.as_str()),
        ("Googlebot", "crawler", "true")
    );
    assert_eq!(parsed(None), ["", "", "", "true"]);
    assert_eq!(parsed(Some("")), ["", "", "", "true"]);
    // Unrecognised but present: not a bot, nothing known.
    assert_eq!(parsed(Some("acme-app/3.2")), ["", "", "", "false"]);
}
