//! The HTML report of `riskgate replay --report` and of the backtest, checked as a file (self-contained, every
//! chart present, text escaped) and opened in a real headless Chromium: it lays out every chart and logs
//! nothing to the console (a blocked fetch or a script error would be logged).
//!
//! The browser half needs Debian's `chromium` (`apt-get install chromium`; `.ci/run` installs it when
//! missing), or a binary named by `RISKGATE_CHROMIUM`. Without one it prints a line saying so and passes, unless
//! `RISKGATE_REQUIRE_CHROMIUM=1` (as in CI) makes that a failure. Run it with `cargo test --test report`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn rules(dir: &Path) -> (String, String) {
    let a = dir.join("a");
    let b = dir.join("b");
    fs::create_dir_all(&a).unwrap();
    fs::create_dir_all(&b).unwrap();
    fs::write(
        a.join("big.rhai"),
        "//! priority: 10\nif custom.amount > 1000 { REVIEW }\n",
    )
    .unwrap();
    // A rule id with markup in it would break the page unless escaped; file names cannot carry `<`, but a
    // user id can, and the changed-decision table shows user ids.
    fs::write(
        b.join("big.rhai"),
        "//! priority: 10\nif custom.amount > 500 { BLOCK }\n",
    )
    .unwrap();
    fs::write(
        b.join("no-device.rhai"),
        "//! priority: 20\nif device_id == () { CHALLENGE_REQUIRED }\n",
    )
    .unwrap();
    (a.display().to_string(), b.display().to_string())
}

/// Two hours of payments, a few hundred lines, labelled.
fn log(dir: &Path) -> String {
    let mut lines = Vec::new();
    for i in 0..400u64 {
        let user = if i == 7 {
            "<script>alert(1)</script>".to_owned()
        } else {
            format!("u{}", i % 37)
        };
        let amount = [20, 80, 600, 1500, 30][(i % 5) as usize];
        let device = if i % 9 == 0 {
            String::new()
        } else {
            format!(r#","deviceId":"d{}""#, i % 37)
        };
        let label = if amount > 1000 || i % 9 == 0 {
            "fraud"
        } else {
            "genuine"
        };
        lines.push(format!(
            r#"{{"timestamp":{},"userId":{},"action":"pay","attributes":{{"idempotencyKey":"k{i}"{device},"ipAddress":"81.2.69.{}","custom":{{"amount":{amount}}}}},"label":"{label}"}}"#,
            1_709_251_200_000u64 + i * 18_000,
            serde_json::to_string(&user).unwrap(),
            i % 200
        ));
    }
    let path = dir.join("events.jsonl");
    fs::write(&path, lines.join("\n") + "\n").unwrap();
    path.display().to_string()
}

fn riskgate(args: &[&str]) {
    let out = common::riskgate().args(args).output().unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The charts a page holds, by `data-chart`.
fn charts(page: &str) -> Vec<&str> {
    page.match_indices("<svg class=\"chart\" data-chart=\"")
        .map(|(i, m)| {
            let rest = &page[i + m.len()..];
            &rest[..rest.find('"').unwrap()]
        })
        .collect()
}

fn check_file(page: &str) {
    for fetch in ["src=", "href=", "url(", "@import", "http://", "https://"] {
        assert!(
            !page.contains(fetch),
            "the page must fetch nothing: `{fetch}`"
        );
    }
    assert!(page.contains("Content-Security-Policy"));
    assert!(!page.contains("<script>alert"), "user ids are escaped");
}

fn chromium() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("RISKGATE_CHROMIUM") {
        return Some(PathBuf::from(p));
    }
    let path = std::env::var_os("PATH")?;
    for dir in std::env::split_paths(&path) {
        for name in ["chromium", "chromium-browser"] {
            let p = dir.join(name);
            if p.is_file() {
                return Some(p);
            }
        }
    }
    None
}

/// Runs headless Chromium on `page` with `extra` flags; returns (stdout, stderr).
fn browse(chromium: &Path, page: &Path, extra: &[String]) -> (String, String) {
    let profile = tempfile::tempdir().unwrap();
    let mut child = Command::new(chromium)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--enable-logging=stderr",
            "--v=0",
            "--window-size=1000,2400",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .args(extra)
        .arg(format!("file://{}", page.display()))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("chromium did not finish within 120s");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let out = child.wait_with_output().unwrap();
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn check_in_browser(page: &Path, n_charts: usize, screenshot: &Path) {
    let Some(chromium) = chromium() else {
        if std::env::var_os("RISKGATE_REQUIRE_CHROMIUM").is_some() {
            panic!("RISKGATE_REQUIRE_CHROMIUM is set but no chromium was found on PATH");
        }
        println!(
            "skipped the browser check: no `chromium` on PATH (apt-get install chromium, then `cargo test --test report`)"
        );
        return;
    };
    let (dom, log) = browse(&chromium, page, &["--dump-dom".to_owned()]);
    assert!(
        dom.contains(&format!("data-charts-rendered=\"{n_charts}\"")),
        "every chart laid out with a size: {}",
        &dom[..dom.len().min(400)]
    );
    let console: Vec<&str> = log.lines().filter(|l| l.contains(":CONSOLE")).collect();
    assert!(console.is_empty(), "console messages: {console:#?}");
    let (_, log) = browse(
        &chromium,
        page,
        &[format!("--screenshot={}", screenshot.display())],
    );
    let png = fs::read(screenshot).unwrap_or_else(|e| panic!("no screenshot ({e}): {log}"));
    assert!(
        png.starts_with(b"\x89PNG") && png.len() > 20_000,
        "{}",
        png.len()
    );
    println!("screenshot: {}", screenshot.display());
}

#[test]
fn the_backtest_report_renders_every_chart_in_chromium() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = rules(dir.path());
    let events = log(dir.path());
    let report = dir.path().join("backtest.html");
    riskgate(&[
        "replay",
        "--rules",
        &a,
        "--compare",
        &b,
        &events,
        "--rba-sweep=0.5,1,2,5",
        "--report",
        report.to_str().unwrap(),
    ]);
    let page = fs::read_to_string(&report).unwrap();
    check_file(&page);
    assert_eq!(
        charts(&page),
        ["timeline", "timeline", "rules", "latency", "sweep"]
    );
    assert!(page.contains("&lt;script&gt;alert(1)&lt;/script&gt;"));
    // The changed-decision table: 600 and 1500 are blocked by the other rules, and 1500 was REVIEW.
    assert!(
        page.contains("REVIEW → BLOCK</td><td rowspan=\"5\">80</td>"),
        "{page}"
    );
    let shot = Path::new(env!("CARGO_TARGET_TMPDIR")).join("backtest-report.png");
    check_in_browser(&report, 5, &shot);
}

#[test]
fn the_replay_report_renders_in_chromium() {
    let dir = tempfile::tempdir().unwrap();
    let (a, _) = rules(dir.path());
    let events = log(dir.path());
    let report = dir.path().join("replay.html");
    riskgate(&[
        "replay",
        "--rules",
        &a,
        &events,
        "--report",
        report.to_str().unwrap(),
    ]);
    let page = fs::read_to_string(&report).unwrap();
    check_file(&page);
    assert_eq!(charts(&page), ["timeline", "rules", "latency"]);
    assert!(page.contains("Not a backtest"));
    let shot = Path::new(env!("CARGO_TARGET_TMPDIR")).join("replay-report.png");
    check_in_browser(&report, 3, &shot);
}
