//! `--report FILE.html`: one self-contained page (no network fetch: its Content-Security-Policy allows no
//! source but the page itself) with SVG charts drawn here: decisions over event time stacked by state, hits per
//! rule (both rulesets side by side on a backtest), the decision latency histogram, the changed-decision table
//! and, with `--rba-sweep`, catch rate against friction per `rba_score()` threshold.
//!
//! The charts are a few dozen SVG rectangles and lines each, so they are written by hand rather than with a
//! plotting library; every text that comes from the log or the rules is HTML-escaped. A short inline script
//! only checks that each chart laid out (it marks `<body data-charts-rendered="N">`), which the browser test
//! reads.

use riskgate::replay::Labels;
use std::fmt::Write as _;

use super::compare::Changes;
use super::replay::sweep_point;
use super::stats::human;
use super::summary::{width_text, Summary, STATES};

/// Fill colours per state, in [`STATES`] order.
const STATE_COLOURS: [&str; 4] = ["#43a047", "#fb8c00", "#1e88e5", "#e53935"];
/// Fill colours of the base and the other ruleset.
const SIDE_COLOURS: [&str; 2] = ["#546e7a", "#8e24aa"];
const WIDTH: f64 = 900.0;

/// What a report shows.
pub struct Report<'a> {
    pub title: String,
    /// The (base) ruleset's name and summary.
    pub base: (&'a str, &'a Summary),
    /// On a backtest, the other ruleset.
    pub other: Option<(&'a str, &'a Summary)>,
    pub changes: Option<&'a Changes>,
    pub sweep: Option<&'a [(f64, Labels)]>,
}

/// Escapes text for HTML content and attribute values.
pub fn esc(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&#39;"),
            c => o.push(c),
        }
    }
    o
}

fn utc(ms: i64) -> String {
    let fmt = time::macros::format_description!("[year]-[month]-[day] [hour]:[minute]:[second]");
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .ok()
        .and_then(|t| t.format(&fmt).ok())
        .unwrap_or_else(|| ms.to_string())
}

fn legend(out: &mut String, items: &[(&str, &str)]) {
    out.push_str("<p class=\"legend\">");
    for (name, colour) in items {
        let _ = write!(
            out,
            "<span><i style=\"background:{colour}\"></i>{}</span>",
            esc(name)
        );
    }
    out.push_str("</p>\n");
}

/// A round number at or above `v`, for an axis's top.
fn nice(v: f64) -> f64 {
    if v <= 0.0 {
        return 1.0;
    }
    let p = 10f64.powf(v.log10().floor());
    for m in [1.0, 1.5, 2.0, 2.5, 3.0, 4.0, 5.0, 6.0, 8.0, 10.0] {
        if v <= m * p {
            return m * p;
        }
    }
    10.0 * p
}

/// The y axis: grid lines and labels at 0, ½ and the top.
fn y_axis(
    out: &mut String,
    x0: f64,
    x1: f64,
    y0: f64,
    h: f64,
    top: f64,
    fmt: &dyn Fn(f64) -> String,
) {
    for i in 0..=2 {
        let v = top * f64::from(i) / 2.0;
        let y = y0 + h - h * f64::from(i) / 2.0;
        let _ = write!(
            out,
            "<line x1=\"{x0}\" y1=\"{y:.1}\" x2=\"{x1}\" y2=\"{y:.1}\" class=\"grid\"/>\
             <text x=\"{:.1}\" y=\"{:.1}\" class=\"tick\" text-anchor=\"end\">{}</text>",
            x0 - 4.0,
            y + 4.0,
            esc(&fmt(v))
        );
    }
}

fn count_label(v: f64) -> String {
    if v >= 1e6 {
        format!("{:.1}M", v / 1e6)
    } else if v >= 1e3 {
        format!("{:.1}k", v / 1e3)
    } else {
        format!("{v:.0}")
    }
}

/// Decisions over event time, stacked by state.
fn timeline(out: &mut String, name: &str, s: &Summary) {
    let bins = s.timeline.bins();
    let _ = writeln!(out, "<h3>{}</h3>", esc(name));
    if bins.is_empty() {
        out.push_str("<p>no decision had an event time</p>\n");
        return;
    }
    let (x0, y0, h) = (60.0, 10.0, 200.0);
    let pw = WIDTH - x0 - 10.0;
    let max = bins
        .iter()
        .map(|(_, c)| c.iter().sum::<u64>())
        .max()
        .unwrap_or(0);
    let top = nice(max as f64);
    let bw = pw / bins.len() as f64;
    let _ = write!(
        out,
        "<svg class=\"chart\" data-chart=\"timeline\" viewBox=\"0 0 {WIDTH} 250\" width=\"{WIDTH}\" height=\"250\" role=\"img\">\
         <title>decisions over event time, stacked by state ({})</title>",
        esc(name)
    );
    y_axis(out, x0, x0 + pw, y0, h, top, &count_label);
    for (i, (start, counts)) in bins.iter().enumerate() {
        let x = x0 + bw * i as f64;
        let mut y = y0 + h;
        for (st, &n) in counts.iter().enumerate() {
            if n == 0 {
                continue;
            }
            let bh = h * n as f64 / top;
            y -= bh;
            let _ = write!(
                out,
                "<rect x=\"{x:.2}\" y=\"{y:.2}\" width=\"{:.2}\" height=\"{bh:.2}\" fill=\"{}\">\
                 <title>{} from {}: {n} {}</title></rect>",
                (bw - 1.0).max(0.5),
                STATE_COLOURS[st],
                width_text(s.timeline.width_ms()),
                esc(&utc(*start)),
                STATES[st]
            );
        }
    }
    let ticks = [0, bins.len() / 2, bins.len() - 1];
    for (k, &i) in ticks.iter().enumerate() {
        let anchor = ["start", "middle", "end"][k];
        let x = x0 + bw * i as f64 + if k == 2 { bw } else { 0.0 };
        let _ = write!(
            out,
            "<text x=\"{x:.1}\" y=\"{:.1}\" class=\"tick\" text-anchor=\"{anchor}\">{} UTC</text>",
            y0 + h + 18.0,
            esc(&utc(bins[i].0))
        );
    }
    let _ = write!(
        out,
        "<text x=\"{:.1}\" y=\"245\" class=\"tick\" text-anchor=\"middle\">decisions per {} of event time</text>",
        x0 + pw / 2.0,
        width_text(s.timeline.width_ms())
    );
    out.push_str("</svg>\n");
}

/// Hits per rule (enforce and shadow matches over decisions), one bar per ruleset.
fn rule_hits(out: &mut String, sides: &[(&str, &Summary)]) {
    let mut ids: Vec<&str> = sides
        .iter()
        .flat_map(|(_, s)| s.rules.keys().map(String::as_str))
        .collect();
    ids.sort_unstable();
    ids.dedup();
    let hits = |s: &Summary, id: &str| s.rules.get(id).map(|c| c[0] + c[2]);
    // Busiest first, so the rules that matter are at the top.
    ids.sort_by_key(|id| {
        std::cmp::Reverse(
            sides
                .iter()
                .filter_map(|(_, s)| hits(s, id))
                .max()
                .unwrap_or(0),
        )
    });
    if ids.is_empty() {
        out.push_str("<p>no rules</p>\n");
        return;
    }
    let max = ids
        .iter()
        .flat_map(|id| sides.iter().filter_map(|(_, s)| hits(s, id)))
        .max()
        .unwrap_or(0);
    let top = nice(max as f64);
    let bar = 12.0;
    let row = bar * sides.len() as f64 + 6.0;
    let (x0, y0) = (280.0, 24.0);
    let pw = WIDTH - x0 - 60.0;
    let height = y0 + row * ids.len() as f64 + 10.0;
    let _ = write!(
        out,
        "<svg class=\"chart\" data-chart=\"rules\" viewBox=\"0 0 {WIDTH} {height:.0}\" width=\"{WIDTH}\" height=\"{height:.0}\" role=\"img\">\
         <title>hits per rule</title>"
    );
    for i in 0..=2 {
        let v = top * f64::from(i) / 2.0;
        let x = x0 + pw * f64::from(i) / 2.0;
        let _ = write!(
            out,
            "<line x1=\"{x:.1}\" y1=\"{:.1}\" x2=\"{x:.1}\" y2=\"{:.1}\" class=\"grid\"/>\
             <text x=\"{x:.1}\" y=\"14\" class=\"tick\" text-anchor=\"middle\">{}</text>",
            y0 - 4.0,
            height - 6.0,
            count_label(v)
        );
    }
    for (r, id) in ids.iter().enumerate() {
        let y = y0 + row * r as f64;
        let shown: String = id.chars().take(44).collect();
        let _ = write!(
            out,
            "<text x=\"{:.1}\" y=\"{:.1}\" class=\"label\" text-anchor=\"end\">{}</text>",
            x0 - 6.0,
            y + row / 2.0 + 1.0,
            esc(&shown)
        );
        for (k, (name, s)) in sides.iter().enumerate() {
            let by = y + bar * k as f64;
            match hits(s, id) {
                Some(n) => {
                    let w = pw * n as f64 / top;
                    let _ = write!(
                        out,
                        "<rect x=\"{x0}\" y=\"{by:.1}\" width=\"{w:.2}\" height=\"{:.1}\" fill=\"{}\">\
                         <title>{}: {n} hits in {}</title></rect>\
                         <text x=\"{:.1}\" y=\"{:.1}\" class=\"value\">{n}</text>",
                        bar - 1.0,
                        SIDE_COLOURS[k % 2],
                        esc(id),
                        esc(name),
                        x0 + w + 3.0,
                        by + bar - 1.5
                    );
                }
                None => {
                    let _ = write!(
                        out,
                        "<text x=\"{:.1}\" y=\"{:.1}\" class=\"value\">not in {}</text>",
                        x0 + 3.0,
                        by + bar - 1.5,
                        esc(name)
                    );
                }
            }
        }
    }
    out.push_str("</svg>\n");
}

/// Decision latency in half-octave bins, one bar per ruleset.
fn latency(out: &mut String, sides: &[(&str, &Summary)]) {
    // Bin k holds durations up to 2^(k/2) ns.
    let key = |ns: u64| ((ns.max(1) as f64).log2() * 2.0).ceil() as i64;
    let per_side: Vec<std::collections::BTreeMap<i64, u64>> = sides
        .iter()
        .map(|(_, s)| {
            let mut m = std::collections::BTreeMap::new();
            for (_, hi, n) in s.latency.buckets() {
                *m.entry(key(hi)).or_default() += n;
            }
            m
        })
        .collect();
    let lo = per_side
        .iter()
        .filter_map(|m| m.keys().next().copied())
        .min();
    let hi = per_side
        .iter()
        .filter_map(|m| m.keys().next_back().copied())
        .max();
    let (Some(lo), Some(hi)) = (lo, hi) else {
        out.push_str("<p>no decision was timed</p>\n");
        return;
    };
    let max = per_side
        .iter()
        .flat_map(|m| m.values().copied())
        .max()
        .unwrap_or(0);
    let top = nice(max as f64);
    let n = (hi - lo + 1) as f64;
    let (x0, y0, h) = (60.0, 10.0, 200.0);
    let pw = WIDTH - x0 - 10.0;
    let gw = pw / n;
    let bw = (gw - 2.0) / sides.len() as f64;
    let _ = write!(
        out,
        "<svg class=\"chart\" data-chart=\"latency\" viewBox=\"0 0 {WIDTH} 245\" width=\"{WIDTH}\" height=\"245\" role=\"img\">\
         <title>decision latency histogram</title>"
    );
    y_axis(out, x0, x0 + pw, y0, h, top, &count_label);
    let bound = |k: i64| {
        human(std::time::Duration::from_nanos(
            2f64.powf(k as f64 / 2.0).round() as u64,
        ))
    };
    for k in lo..=hi {
        let gx = x0 + gw * (k - lo) as f64;
        for (si, m) in per_side.iter().enumerate() {
            let c = m.get(&k).copied().unwrap_or(0);
            if c == 0 {
                continue;
            }
            let bh = h * c as f64 / top;
            let _ = write!(
                out,
                "<rect x=\"{:.2}\" y=\"{:.2}\" width=\"{:.2}\" height=\"{bh:.2}\" fill=\"{}\">\
                 <title>{}: {c} decisions from {} to {}</title></rect>",
                gx + 1.0 + bw * si as f64,
                y0 + h - bh,
                bw.max(0.5),
                SIDE_COLOURS[si % 2],
                esc(sides[si].0),
                bound(k - 1),
                bound(k)
            );
        }
        let every = ((n / 10.0).ceil() as i64).max(1);
        if (k - lo) % every == 0 {
            let _ = write!(
                out,
                "<text x=\"{:.1}\" y=\"{:.1}\" class=\"tick\" text-anchor=\"middle\">≤{}</text>",
                gx + gw / 2.0,
                y0 + h + 16.0,
                bound(k)
            );
        }
    }
    let _ = writeln!(
        out,
        "<text x=\"{:.1}\" y=\"242\" class=\"tick\" text-anchor=\"middle\">time inside track, per decision</text></svg>",
        x0 + pw / 2.0
    );
}

/// Catch rate and friction per `rba_score()` threshold.
fn sweep(out: &mut String, rows: &[(f64, Labels)]) {
    if rows.is_empty() {
        return;
    }
    let (x0, y0, h) = (60.0, 10.0, 200.0);
    let pw = WIDTH - x0 - 70.0;
    // Friction is usually a few percent: it gets its own scale, on the right, so its changes show.
    let top_f = nice(
        rows.iter()
            .map(|(_, l)| sweep_point(l).1)
            .fold(0.0, f64::max),
    )
    .min(1.0);
    let step = if rows.len() > 1 {
        pw / (rows.len() - 1) as f64
    } else {
        0.0
    };
    let _ = write!(
        out,
        "<svg class=\"chart\" data-chart=\"sweep\" viewBox=\"0 0 {WIDTH} 250\" width=\"{WIDTH}\" height=\"250\" role=\"img\">\
         <title>rba_score() threshold sweep: catch rate and friction</title>"
    );
    y_axis(out, x0, x0 + pw, y0, h, 1.0, &|v| {
        format!("{:.0}%", 100.0 * v)
    });
    for i in 0..=2 {
        let v = top_f * f64::from(i) / 2.0;
        let _ = write!(
            out,
            "<text x=\"{:.1}\" y=\"{:.1}\" class=\"tick\" fill=\"#1e88e5\" style=\"fill:#1e88e5\">{}%</text>",
            x0 + pw + 6.0,
            y0 + h - h * f64::from(i) / 2.0 + 4.0,
            (100.0 * v * 100.0).round() / 100.0
        );
    }
    type Series<'a> = (&'a str, &'a str, f64, Box<dyn Fn(&Labels) -> f64>);
    let series: [Series; 2] = [
        (
            "caught",
            "#e53935",
            1.0,
            Box::new(|l: &Labels| sweep_point(l).0),
        ),
        (
            "friction",
            "#1e88e5",
            top_f,
            Box::new(|l: &Labels| sweep_point(l).1),
        ),
    ];
    for (name, colour, top, f) in &series {
        let pts: Vec<(f64, f64, f64, f64)> = rows
            .iter()
            .enumerate()
            .map(|(i, (t, l))| {
                let v = f(l);
                (x0 + step * i as f64, y0 + h - h * v / top, *t, v)
            })
            .collect();
        let path: Vec<String> = pts
            .iter()
            .map(|p| format!("{:.1},{:.1}", p.0, p.1))
            .collect();
        let _ = write!(
            out,
            "<polyline points=\"{}\" fill=\"none\" stroke=\"{colour}\" stroke-width=\"2\"/>",
            path.join(" ")
        );
        for (x, y, t, v) in pts {
            let _ = write!(
                out,
                "<circle cx=\"{x:.1}\" cy=\"{y:.1}\" r=\"3.5\" fill=\"{colour}\"><title>threshold {t}: {name} {:.2}%</title></circle>",
                100.0 * v
            );
        }
    }
    for (i, (t, _)) in rows.iter().enumerate() {
        let _ = write!(
            out,
            "<text x=\"{:.1}\" y=\"{:.1}\" class=\"tick\" text-anchor=\"middle\">{t}</text>",
            x0 + step * i as f64,
            y0 + h + 16.0
        );
    }
    let _ = writeln!(
        out,
        "<text x=\"{:.1}\" y=\"245\" class=\"tick\" text-anchor=\"middle\">threshold T of `if rba_score() &gt;= T {{ CHALLENGE_REQUIRED }}`</text></svg>",
        x0 + pw / 2.0
    );
    out.push_str("<table><tr><th>threshold</th><th>caught</th><th>friction</th></tr>");
    for (t, l) in rows {
        let _ = write!(
            out,
            "<tr><td>{t}</td><td>{:.2}%</td><td>{:.2}%</td></tr>",
            100.0 * sweep_point(l).0,
            100.0 * sweep_point(l).1
        );
    }
    out.push_str("</table>\n");
}

fn changes_table(out: &mut String, c: &Changes, names: (&str, &str)) {
    let _ = writeln!(
        out,
        "<p>{} decisions compared, {} changed.</p>",
        c.compared, c.changed
    );
    if c.groups.is_empty() {
        return;
    }
    let _ = write!(
        out,
        "<table class=\"changes\"><tr><th>{} → {}</th><th>count</th><th>line</th><th>userId</th><th>action</th>\
         <th>deciding rule in {}</th><th>deciding rule in {}</th></tr>",
        esc(names.0),
        esc(names.1),
        esc(names.0),
        esc(names.1)
    );
    for ((from, to), g) in c.sorted() {
        let span = g.examples.len().max(1);
        let _ = write!(
            out,
            "<tr><td rowspan=\"{span}\">{} → {}</td><td rowspan=\"{span}\">{}</td>",
            esc(from),
            esc(to),
            g.count
        );
        if g.examples.is_empty() {
            out.push_str("<td colspan=\"5\"></td></tr>");
        }
        for (i, e) in g.examples.iter().enumerate() {
            if i > 0 {
                out.push_str("<tr>");
            }
            let _ = write!(
                out,
                "<td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                e.line,
                esc(&e.user_id),
                esc(&e.action),
                esc(e.from_rule.as_deref().unwrap_or("(default)")),
                esc(e.to_rule.as_deref().unwrap_or("(default)"))
            );
        }
    }
    out.push_str("</table>\n");
}

fn counts_table(out: &mut String, sides: &[(&str, &Summary)]) {
    out.push_str("<table><tr><th></th>");
    for (name, _) in sides {
        let _ = write!(out, "<th>{}</th>", esc(name));
    }
    out.push_str("</tr>");
    let mut row = |label: &str, f: &dyn Fn(&Summary) -> String| {
        let _ = write!(out, "<tr><th>{}</th>", esc(label));
        for (_, s) in sides {
            let _ = write!(out, "<td>{}</td>", esc(&f(s)));
        }
        out.push_str("</tr>");
    };
    row("lines", &|s| s.lines.to_string());
    row("decisions", &|s| s.decisions.to_string());
    row("idempotent repeats", &|s| s.repeats.to_string());
    row("operations", &|s| s.operations.to_string());
    row("refused", &|s| s.refused().to_string());
    for (i, st) in STATES.iter().enumerate() {
        row(st, &|s| s.states[i].to_string());
    }
    row("p50 / p99 decision latency", &|s| {
        if s.latency.count() == 0 {
            "-".to_owned()
        } else {
            format!(
                "{} / {}",
                human(s.latency.quantile(0.5)),
                human(s.latency.quantile(0.99))
            )
        }
    });
    if sides.iter().any(|(_, s)| !s.confusion.is_empty()) {
        row("catch rate (attacks not allowed)", &|s| {
            format!("{:.2}%", 100.0 * s.confusion.catch_rate())
        });
        row("friction (genuine not allowed)", &|s| {
            format!("{:.2}%", 100.0 * s.confusion.friction())
        });
        row("attack → caught / allowed", &|s| {
            format!("{} / {}", s.confusion.caught, s.confusion.missed)
        });
        row("genuine → caught / allowed", &|s| {
            format!("{} / {}", s.confusion.challenged, s.confusion.allowed)
        });
    }
    out.push_str("</table>\n");
}

const STYLE: &str = "body{font:14px system-ui,sans-serif;margin:24px auto;max-width:940px;color:#222}\
h1{font-size:20px}h2{font-size:16px;margin-top:28px;border-bottom:1px solid #ddd}h3{font-size:14px}\
table{border-collapse:collapse;margin:8px 0}td,th{border:1px solid #ddd;padding:3px 8px;text-align:right}\
th{background:#f5f5f5}.changes td{text-align:left}svg{display:block;background:#fff}\
.grid{stroke:#e0e0e0}.tick,.value{font-size:11px;fill:#555}.label{font-size:12px;fill:#222}\
.legend span{margin-right:14px}.legend i{display:inline-block;width:10px;height:10px;margin-right:4px}";

/// Checks that every chart laid out with a size, and says so on `<body>`; a chart that did not is logged.
const CHECK: &str = "(function(){var ok=0,all=document.querySelectorAll('svg.chart');\
for(var i=0;i<all.length;i++){var b=all[i].getBBox();if(b.width>0&&b.height>0){ok++;}\
else{console.error('chart '+all[i].getAttribute('data-chart')+' has no size');}}\
document.body.setAttribute('data-charts-rendered',String(ok));})();";

impl Report<'_> {
    /// The whole page.
    pub fn html(&self) -> String {
        let mut sides = vec![self.base];
        sides.extend(self.other);
        let mut o = String::new();
        let _ = write!(
            o,
            "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
             <meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; style-src 'unsafe-inline'; script-src 'unsafe-inline'\">\
             <title>{}</title><style>{STYLE}</style></head><body>\n<h1>{}</h1>\n",
            esc(&self.title),
            esc(&self.title)
        );
        o.push_str("<h2>Summary</h2>\n");
        counts_table(&mut o, &sides);
        o.push_str("<h2>Decisions over event time</h2>\n");
        let states: Vec<(&str, &str)> = STATES.iter().copied().zip(STATE_COLOURS).collect();
        legend(&mut o, &states);
        for (name, s) in &sides {
            timeline(&mut o, name, s);
        }
        let side_legend: Vec<(&str, &str)> =
            sides.iter().map(|(n, _)| *n).zip(SIDE_COLOURS).collect();
        o.push_str("<h2>Hits per rule</h2>\n<p>Enforce and shadow matches over decisions (idempotent repeats are not hits).</p>\n");
        legend(&mut o, &side_legend);
        rule_hits(&mut o, &sides);
        o.push_str("<h2>Decision latency</h2>\n");
        legend(&mut o, &side_legend);
        latency(&mut o, &sides);
        o.push_str("<h2>Changed decisions</h2>\n");
        match (self.changes, self.other) {
            (Some(c), Some((other, _))) => changes_table(&mut o, c, (self.base.0, other)),
            _ => o.push_str(
                "<p>Not a backtest: run <code>riskgate replay --compare OTHER_RULES_DIR EVENTS --report FILE.html</code> to compare two rulesets.</p>\n",
            ),
        }
        if let Some(rows) = self.sweep {
            o.push_str("<h2>rba_score() threshold sweep</h2>\n");
            legend(
                &mut o,
                &[
                    ("caught (attacks, left scale)", "#e53935"),
                    ("friction (genuine, right scale)", "#1e88e5"),
                ],
            );
            sweep(&mut o, rows);
        }
        let _ = write!(o, "<script>{CHECK}</script>\n</body></html>\n");
        o
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_markup() {
        assert_eq!(
            esc("<b a=\"x\">'&'</b>"),
            "&lt;b a=&quot;x&quot;&gt;&#39;&amp;&#39;&lt;/b&gt;"
        );
    }

    #[test]
    fn nice_tops() {
        assert_eq!(nice(0.0), 1.0);
        assert_eq!(nice(7.0), 8.0);
        assert_eq!(nice(9.0), 10.0);
        assert_eq!(nice(11.0), 15.0);
        assert_eq!(nice(240.0), 250.0);
        assert_eq!(nice(2600.0), 3000.0);
    }

    #[test]
    fn an_empty_replay_still_makes_a_page_without_fetches() {
        let s = Summary::default();
        let page = Report {
            title: "t <x>".into(),
            base: ("rules", &s),
            other: None,
            changes: None,
            sweep: None,
        }
        .html();
        assert!(page.contains("<title>t &lt;x&gt;</title>"));
        assert!(page.contains("default-src 'none'"));
        for fetch in ["src=", "href=", "url(", "@import"] {
            assert!(!page.contains(fetch), "{fetch}");
        }
    }
}
