//! The results: `summary.json` (a stable schema, see loadtest/README.md), a self-contained
//! `report.html` with its plots drawn as inline SVG, and a few lines on the terminal.

use std::fmt::Write as _;
use std::path::Path;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::args::{Client, Load};
use crate::record::{Recorded, Recorder, Sample, Second};

/// The version of `summary.json`'s layout.
const SCHEMA: u32 = 1;

/// Missing, duplicated and foreign events over all subscribers; in the memberships
/// scenario also rows still held that should have moved out (`stale`).
#[derive(Debug, Default, Clone, Copy, serde::Serialize)]
pub struct Completeness {
    pub missing: u64,
    pub duplicated: u64,
    pub foreign: u64,
    pub stale: u64,
}

#[derive(Debug, Serialize)]
pub struct Summary {
    pub schema: u32,
    /// No event missing, duplicated or foreign, and no HTTP error.
    pub pass: bool,
    pub failures: Vec<String>,
    pub load: Load,
    pub subscribers_up_to_date: usize,
    pub catch_up_s: f64,
    pub connect_ms: Spread,
    pub written: u64,
    pub write_rate: f64,
    /// Events the subscribers should have received (each row × the subscribers of its
    /// scope); memberships: rows the users should hold at the end.
    pub expected: u64,
    /// Events received; memberships: rows the users hold at the end.
    pub delivered: u64,
    pub missing: u64,
    pub duplicated: u64,
    pub foreign: u64,
    pub stale: u64,
    /// Send (just before the INSERT) → the subscriber has the event, over every event.
    pub latency_ms: Latency,
    /// Send → PostgreSQL answered the INSERT's commit, over every write: the part of the
    /// latency that is PostgreSQL's.
    pub commit_ms: Latency,
    /// PostgreSQL answered the commit → the subscriber has the event, over every event (0
    /// when the event arrived first): the gateway's and the subscriber's part.
    pub delivery_ms: Latency,
    pub events_per_s: f64,
    pub reconnects: u64,
    /// 503 answers with `Retry-After` (new shapes past the snapshot slots), retried.
    pub busy_retries: u64,
    pub http_errors: u64,
    pub gateway: GatewayStats,
    pub tester: TesterStats,
    pub machine: MachineStats,
    /// The memberships scenario's own figures.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memberships: Option<MembershipStats>,
}

#[derive(Debug, Default, Serialize)]
pub struct MembershipStats {
    /// Joins and leaves committed, and their rate.
    pub changes: u64,
    pub change_rate: f64,
    /// Joins whose moved-in rows reached their user.
    pub move_ins: u64,
    /// Join sent (just before its INSERT) → its user has the project's rows.
    pub move_in_latency_ms: Latency,
}

#[derive(Debug, Default, Serialize)]
pub struct Latency {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
    pub mean: f64,
}

#[derive(Debug, Default, Serialize)]
pub struct Spread {
    pub p50: f64,
    pub p99: f64,
    pub max: f64,
}

/// Only known when `loadtest local` started the gateway (memory, CPU) or it serves /metrics (lag).
#[derive(Debug, Default, Serialize)]
pub struct GatewayStats {
    pub rss_mb_max: Option<f64>,
    pub cpu_percent_mean: Option<f64>,
    pub replication_lag_s_max: Option<f64>,
}

/// The load tester's own cost, which shares the machine when it runs beside the gateway.
#[derive(Debug, Default, Serialize)]
pub struct TesterStats {
    pub cpu_percent_mean: Option<f64>,
}

/// The machine's CPU its hypervisor took while writing (`steal`), in percent of all of it:
/// seconds where it took much are seconds where everything on the machine ran slower.
#[derive(Debug, Default, Serialize)]
pub struct MachineStats {
    pub steal_percent_mean: Option<f64>,
    pub steal_percent_max: Option<f64>,
}

pub struct Inputs<'a> {
    pub load: &'a Load,
    pub recorder: &'a Recorder,
    pub recorded: &'a Recorded,
    pub catch_up: Duration,
    pub write_secs: f64,
    pub written: u64,
    pub expected: u64,
    /// Rows held at the end, in the memberships scenario (else the events counted).
    pub held: Option<u64>,
    /// Membership changes committed, in the memberships scenario.
    pub membership_changes: Option<u64>,
    pub completeness: Completeness,
    pub connects: Vec<Duration>,
    /// Why the drain stopped waiting, when it timed out (what is missing may be late).
    pub unsettled: Option<String>,
}

fn latency(h: &Histogram<u64>) -> Latency {
    let ms = |v: u64| v as f64 / 1000.0;
    Latency {
        p50: ms(h.value_at_quantile(0.5)),
        p90: ms(h.value_at_quantile(0.9)),
        p99: ms(h.value_at_quantile(0.99)),
        p999: ms(h.value_at_quantile(0.999)),
        max: ms(h.max()),
        mean: h.mean() / 1000.0,
    }
}

pub fn summarize(i: Inputs<'_>) -> Summary {
    use std::sync::atomic::Ordering::Relaxed;
    let r = i.recorder;
    let samples = &i.recorded.samples;
    let mut connects: Vec<f64> = i.connects.iter().map(|d| d.as_secs_f64() * 1000.0).collect();
    connects.sort_by(f64::total_cmp);
    let at = |q: f64| connects.get(((connects.len() as f64 - 1.0) * q).round() as usize).copied().unwrap_or(0.0);
    let max_of = |f: fn(&Sample) -> Option<f64>| samples.iter().filter_map(f).reduce(f64::max);
    let while_writing =
        |f: fn(&Sample) -> Option<f64>| -> Vec<f64> { samples.iter().filter(|s| s.t >= 0.0).filter_map(f).collect() };
    let mean_while_writing = |f: fn(&Sample) -> Option<f64>| {
        let values = while_writing(f);
        (!values.is_empty()).then(|| values.iter().sum::<f64>() / values.len() as f64)
    };
    let max_while_writing = |f: fn(&Sample) -> Option<f64>| while_writing(f).into_iter().reduce(f64::max);
    let (events, http_errors) = (r.delivered.load(Relaxed), r.http_errors.load(Relaxed));
    let c = i.completeness;
    let mut failures = Vec::new();
    for (n, what) in [
        (c.missing, "missing events"),
        (c.duplicated, "duplicated events"),
        (c.foreign, "foreign events"),
        (c.stale, "stale rows (they should have moved out)"),
    ] {
        if n > 0 {
            failures.push(format!("{n} {what}"));
        }
    }
    if http_errors > 0 {
        failures.push(format!("{http_errors} HTTP errors ({})", r.errors().join("; ")));
    }
    if let Some(why) = &i.unsettled
        && !failures.is_empty()
    {
        failures.push(why.clone());
    }
    Summary {
        schema: SCHEMA,
        pass: failures.is_empty(),
        failures,
        load: i.load.clone(),
        subscribers_up_to_date: r.up_to_date.load(Relaxed),
        catch_up_s: i.catch_up.as_secs_f64(),
        connect_ms: Spread { p50: at(0.5), p99: at(0.99), max: connects.last().copied().unwrap_or(0.0) },
        written: i.written,
        write_rate: i.written as f64 / i.write_secs.max(f64::EPSILON),
        expected: i.expected,
        delivered: i.held.unwrap_or(events),
        missing: c.missing,
        duplicated: c.duplicated,
        foreign: c.foreign,
        stale: c.stale,
        latency_ms: latency(&i.recorded.total),
        commit_ms: latency(&i.recorded.commit_total),
        delivery_ms: latency(&i.recorded.delivery_total),
        events_per_s: events as f64 / i.write_secs.max(f64::EPSILON),
        reconnects: r.reconnects.load(Relaxed),
        busy_retries: r.busy.load(Relaxed),
        http_errors,
        gateway: GatewayStats {
            rss_mb_max: max_of(|s| s.gateway_rss_mb),
            cpu_percent_mean: mean_while_writing(|s| s.gateway_cpu_percent),
            replication_lag_s_max: max_of(|s| s.replication_lag_s),
        },
        tester: TesterStats { cpu_percent_mean: mean_while_writing(|s| s.tester_cpu_percent) },
        machine: MachineStats {
            steal_percent_mean: mean_while_writing(|s| s.machine_steal_percent),
            steal_percent_max: max_while_writing(|s| s.machine_steal_percent),
        },
        memberships: i.membership_changes.map(|changes| MembershipStats {
            changes,
            change_rate: changes as f64 / i.write_secs.max(f64::EPSILON),
            move_ins: i.recorded.move_in_total.len(),
            move_in_latency_ms: latency(&i.recorded.move_in_total),
        }),
    }
}

/// Writes `summary.json` and `report.html` into `dir`.
pub fn write(dir: &Path, summary: &Summary, recorded: &Recorded) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let json = serde_json::to_string_pretty(summary).map_err(std::io::Error::other)?;
    std::fs::write(dir.join("summary.json"), json + "\n")?;
    std::fs::write(dir.join("report.html"), html(summary, recorded))
}

/// ", plus N idle connections" when the run held any.
fn idle_note(s: &Summary) -> String {
    match s.load.idle_connections {
        0 => String::new(),
        n => format!(", plus {n} idle SSE connections"),
    }
}

/// Who subscribed to what, and what was written.
fn load_line(s: &Summary) -> String {
    let who = match &s.memberships {
        None => format!("{} subscribers over {} scopes", s.load.subscribers, s.load.scopes),
        Some(m) => format!(
            "{} users, each in {} of {} projects, {} membership changes at {:.0}/s,",
            s.load.subscribers, s.load.memberships_per_user, s.load.scopes, m.changes, m.change_rate
        ),
    };
    let client = match s.load.client {
        Client::Ours => "",
        Client::Official => ", the official client in Node",
    };
    format!("{who} ({}{client}){}, {} rows at {:.0}/s", s.load.mode.name(), idle_note(s), s.written, s.write_rate)
}

/// What arrived against what should have.
fn completeness_line(s: &Summary) -> String {
    match s.memberships {
        None => format!(
            "delivered {}/{} events ({:.0}/s): missing {}, duplicated {}, foreign {}",
            s.delivered, s.expected, s.events_per_s, s.missing, s.duplicated, s.foreign
        ),
        Some(_) => format!(
            "users hold {}/{} rows at the end ({:.0} write events/s): missing {}, stale {}, duplicated {}, foreign {}",
            s.delivered, s.expected, s.events_per_s, s.missing, s.stale, s.duplicated, s.foreign
        ),
    }
}

fn percentiles(l: &Latency) -> String {
    format!("p50 {:.1} ms, p90 {:.1}, p99 {:.1}, p99.9 {:.1}, max {:.1}", l.p50, l.p90, l.p99, l.p999, l.max)
}

pub fn print(s: &Summary, dir: &Path) {
    println!("{}: {}", if s.pass { "PASS" } else { "FAIL" }, load_line(s));
    println!(
        "  {}; reconnects {}, busy retries {}, HTTP errors {}",
        completeness_line(s),
        s.reconnects,
        s.busy_retries,
        s.http_errors
    );
    println!("  latency send → client: {}", percentiles(&s.latency_ms));
    println!("  of which send → PostgreSQL's commit: {}", percentiles(&s.commit_ms));
    println!("  commit answered → client: {}", percentiles(&s.delivery_ms));
    if let Some(m) = &s.memberships {
        println!("  move-in join → rows at the client: {} ({} joins)", percentiles(&m.move_in_latency_ms), m.move_ins);
    }
    println!(
        "  catch-up {:.1}s (connect p50 {:.0} ms, p99 {:.0} ms); gateway RSS max {}, CPU mean {} (tester {}), replication lag max {}",
        s.catch_up_s,
        s.connect_ms.p50,
        s.connect_ms.p99,
        s.gateway.rss_mb_max.map_or("–".into(), |v| format!("{v:.0} MB")),
        s.gateway.cpu_percent_mean.map_or("–".into(), |v| format!("{v:.0}%")),
        s.tester.cpu_percent_mean.map_or("–".into(), |v| format!("{v:.0}%")),
        s.gateway.replication_lag_s_max.map_or("–".into(), |v| format!("{v:.2}s"))
    );
    if let Some(mean) = s.machine.steal_percent_mean {
        let max = s.machine.steal_percent_max.unwrap_or(mean);
        println!("  machine CPU taken by its hypervisor while writing (steal): mean {mean:.0}%, max {max:.0}%");
    }
    println!("  report: {}", dir.join("report.html").display());
}

fn html(s: &Summary, r: &Recorded) -> String {
    let ms = |h: &Histogram<u64>, q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    let at = |i: usize| i as f64 + 0.5;
    let percentile = |of: fn(&Second) -> &Histogram<u64>, q: f64| -> Vec<(f64, f64)> {
        let seconds = r.seconds.iter().enumerate().filter(|(_, x)| !of(x).is_empty());
        seconds.map(|(i, x)| (at(i), ms(of(x), q))).collect()
    };
    let quantiles = |title: &str, of: fn(&Second) -> &Histogram<u64>, extra: Option<Series<'_>>| {
        let lines = [("p50", "#2b7bb9", 0.5), ("p90", "#e09b2d", 0.9), ("p99", "#c0392b", 0.99)];
        let mut series: Vec<Series<'_>> =
            lines.iter().map(|&(name, color, q)| (name, color, percentile(of, q))).collect();
        series.extend(extra);
        line_chart(title, "ms", &series)
    };
    let commit_p99 = ("commit p99", "#7f8c8d", percentile(|x| &x.commit, 0.99));
    let latency_chart =
        quantiles("Latency over time (send → client; grey: PostgreSQL's commit)", |x| &x.latency, Some(commit_p99));
    let move_in_chart = match s.memberships {
        Some(_) => quantiles("Move-in latency over time (join → rows at the client)", |x| &x.move_in, None),
        None => String::new(),
    };
    let rate_chart = line_chart(
        "Events delivered per second",
        "events/s",
        &[("events/s", "#2b7bb9", r.seconds.iter().enumerate().map(|(i, x)| (at(i), x.delivered as f64)).collect())],
    );
    let connected_chart = line_chart(
        "Subscribers connected (t < 0: catching up)",
        "subscribers",
        &[("connected", "#27ae60", r.samples.iter().map(|x| (x.t, x.connected as f64)).collect())],
    );
    let rss: Vec<(f64, f64)> = r.samples.iter().filter_map(|x| Some((x.t, x.gateway_rss_mb?))).collect();
    let steal: Vec<(f64, f64)> = r.samples.iter().filter_map(|x| Some((x.t, x.machine_steal_percent?))).collect();
    let steal_chart = line_chart("Machine CPU taken by the hypervisor (steal)", "%", &[("steal", "#7f8c8d", steal)]);
    let rss_chart = if rss.is_empty() {
        String::new()
    } else {
        line_chart("Gateway memory (RSS)", "MB", &[("RSS", "#8e44ad", rss)])
    };
    let (labels, counts) = histogram_buckets(&r.total);
    let histogram_chart = bar_chart("Latency histogram (all events)", &labels, &counts);
    let l = &s.latency_ms;
    let verdict = if s.pass {
        "<b class=pass>PASS</b>".to_string()
    } else {
        format!("<b class=fail>FAIL</b>: {}", escape(&s.failures.join("; ")))
    };
    let mut rows = vec![
        ("load", load_line(s)),
        ("written for", format!("{:.0}s", s.load.duration.as_secs_f64())),
        ("completeness", completeness_line(s)),
        ("latency send → client", percentiles(l)),
        ("of which send → PostgreSQL's commit", percentiles(&s.commit_ms)),
        ("commit answered → client", percentiles(&s.delivery_ms)),
    ];
    if let Some(m) = &s.memberships {
        rows.push(("move-in join → rows", format!("{} ({} joins)", percentiles(&m.move_in_latency_ms), m.move_ins)));
    }
    rows.extend([
        (
            "catch-up, connect p50 / p99",
            format!("{:.1}s, {:.0} / {:.0} ms", s.catch_up_s, s.connect_ms.p50, s.connect_ms.p99),
        ),
        ("reconnects, busy retries, HTTP errors", format!("{}, {}, {}", s.reconnects, s.busy_retries, s.http_errors)),
        (
            "gateway RSS max, CPU mean",
            format!(
                "{}, {}",
                s.gateway.rss_mb_max.map_or("–".into(), |v| format!("{v:.0} MB")),
                s.gateway.cpu_percent_mean.map_or("–".into(), |v| format!("{v:.0}% of a core"))
            ),
        ),
        ("load tester CPU mean", s.tester.cpu_percent_mean.map_or("–".into(), |v| format!("{v:.0}% of a core"))),
        ("replication lag max", s.gateway.replication_lag_s_max.map_or("–".into(), |v| format!("{v:.2} s"))),
        (
            "machine CPU steal, mean / max",
            match (s.machine.steal_percent_mean, s.machine.steal_percent_max) {
                (Some(mean), Some(max)) => format!("{mean:.0}% / {max:.0}% (taken by the hypervisor while writing)"),
                _ => "–".into(),
            },
        ),
    ]);
    let table: String = rows.iter().map(|(k, v)| format!("<tr><th>{k}</th><td>{}</td></tr>", escape(v))).collect();
    format!(
        r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>loadtest report</title>
<style>
body {{ font: 14px/1.4 system-ui, sans-serif; margin: 2rem auto; max-width: 60rem; color: #222; }}
table {{ border-collapse: collapse; margin: 1rem 0 2rem; }}
th {{ text-align: left; font-weight: normal; color: #555; padding: .2rem 1.5rem .2rem 0; }}
.pass {{ color: #1e7e34; }} .fail {{ color: #b02a1e; }}
.charts {{ display: grid; grid-template-columns: 1fr 1fr; gap: 1.5rem; }}
svg text {{ font: 11px system-ui, sans-serif; fill: #444; }}
</style></head><body>
<h1>Scoped fan-out: {verdict}</h1>
<table>{table}</table>
<div class="charts">{latency_chart}{move_in_chart}{histogram_chart}{rate_chart}{connected_chart}{rss_chart}{steal_chart}</div>
</body></html>
"#
    )
}

/// Counts per latency range, in ms.
fn histogram_buckets(h: &Histogram<u64>) -> (Vec<String>, Vec<u64>) {
    const EDGES_MS: [u64; 11] = [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000];
    let mut labels = Vec::new();
    let mut counts = Vec::new();
    let mut low = 0u64;
    for &edge in &EDGES_MS {
        labels.push(format!("<{edge}"));
        counts.push(h.count_between(low * 1000, edge * 1000 - 1));
        low = edge;
    }
    labels.push(format!("≥{low}"));
    counts.push(h.count_between(low * 1000, u64::MAX));
    (labels, counts)
}

const WIDTH: f64 = 440.0;
const HEIGHT: f64 = 240.0;
const LEFT: f64 = 52.0;
const BOTTOM: f64 = 30.0;
const TOP: f64 = 40.0;

/// A line chart with axes, five ticks each, and a legend.
/// A named line: its name, colour and points.
type Series<'a> = (&'a str, &'a str, Vec<(f64, f64)>);

fn line_chart(title: &str, unit: &str, series: &[Series<'_>]) -> String {
    let points = series.iter().flat_map(|(_, _, p)| p.iter());
    let (mut x0, mut x1, mut y1) = (f64::MAX, f64::MIN, 0.0f64);
    for &(x, y) in points {
        (x0, x1, y1) = (x0.min(x), x1.max(x), y1.max(y));
    }
    if x0 > x1 {
        (x0, x1) = (0.0, 1.0);
    }
    if (x1 - x0).abs() < f64::EPSILON {
        x1 = x0 + 1.0;
    }
    let y1 = nice_ceiling(y1);
    let sx = |x: f64| LEFT + (x - x0) / (x1 - x0) * (WIDTH - LEFT - 10.0);
    let sy = |y: f64| HEIGHT - BOTTOM - y / y1 * (HEIGHT - BOTTOM - TOP);
    let mut svg = frame(title);
    y_grid(&mut svg, y1, sy);
    for i in 0..=4 {
        let x = x0 + (x1 - x0) * f64::from(i) / 4.0;
        let (px, label_y) = (sx(x), HEIGHT - BOTTOM + 14.0);
        let _ = write!(svg, r#"<text x="{px:.1}" y="{label_y}" text-anchor="middle">{x:.0}s</text>"#);
    }
    let _ = write!(svg, r#"<text x="4" y="{}">{}</text>"#, TOP - 10.0, escape(unit));
    for (n, (name, color, points)) in series.iter().enumerate() {
        let path: Vec<String> = points.iter().map(|&(x, y)| format!("{:.1},{:.1}", sx(x), sy(y))).collect();
        let _ =
            write!(svg, r#"<polyline fill="none" stroke="{color}" stroke-width="1.6" points="{}"/>"#, path.join(" "));
        let lx = WIDTH - 70.0 * (series.len() - n) as f64;
        let _ = write!(
            svg,
            r#"<rect x="{lx}" y="20" width="10" height="10" fill="{color}"/><text x="{}" y="29">{}</text>"#,
            lx + 14.0,
            escape(name)
        );
    }
    svg + "</svg>"
}

fn bar_chart(title: &str, labels: &[String], counts: &[u64]) -> String {
    let top = nice_ceiling(counts.iter().copied().max().unwrap_or(0) as f64);
    let step = (WIDTH - LEFT - 10.0) / labels.len().max(1) as f64;
    let sy = |y: f64| HEIGHT - BOTTOM - y / top * (HEIGHT - BOTTOM - TOP);
    let mut svg = frame(title);
    y_grid(&mut svg, top, sy);
    for (i, (label, &count)) in labels.iter().zip(counts).enumerate() {
        let x = LEFT + step * i as f64;
        let _ = write!(
            svg,
            r##"<rect x="{:.1}" y="{:.1}" width="{:.1}" height="{:.1}" fill="#2b7bb9"><title>{label} ms: {count}</title></rect><text x="{:.1}" y="{}" text-anchor="middle">{}</text>"##,
            x + 2.0,
            sy(count as f64),
            step - 4.0,
            HEIGHT - BOTTOM - sy(count as f64),
            x + step / 2.0,
            HEIGHT - BOTTOM + 14.0,
            escape(label)
        );
    }
    let _ = write!(svg, r#"<text x="{:.1}" y="{}" text-anchor="middle">ms</text>"#, WIDTH / 2.0, HEIGHT - 2.0);
    svg + "</svg>"
}

/// Five horizontal grid lines from 0 to `top`, labelled.
fn y_grid(svg: &mut String, top: f64, sy: impl Fn(f64) -> f64) {
    for i in 0..=4 {
        let y = top * f64::from(i) / 4.0;
        let (right, ty, label_x, tick) = (WIDTH - 10.0, sy(y), LEFT - 4.0, short(y));
        let _ = write!(
            svg,
            r##"<line x1="{LEFT}" x2="{right}" y1="{ty:.1}" y2="{ty:.1}" stroke="#eee"/><text x="{label_x}" y="{:.1}" text-anchor="end">{tick}</text>"##,
            ty + 4.0
        );
    }
}

fn frame(title: &str) -> String {
    let (title, axis_y, right) = (escape(title), HEIGHT - BOTTOM, WIDTH - 10.0);
    format!(
        r##"<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {WIDTH} {HEIGHT}" width="100%"><text x="{LEFT}" y="14" font-weight="bold">{title}</text><line x1="{LEFT}" x2="{LEFT}" y1="{TOP}" y2="{axis_y}" stroke="#999"/><line x1="{LEFT}" x2="{right}" y1="{axis_y}" y2="{axis_y}" stroke="#999"/>"##
    )
}

/// The next round number at or above `v` (1, 2 or 5 × 10ⁿ).
fn nice_ceiling(v: f64) -> f64 {
    if v <= 0.0 {
        return 1.0;
    }
    let magnitude = 10f64.powf(v.log10().floor());
    [1.0, 2.0, 5.0, 10.0].iter().map(|m| m * magnitude).find(|&c| c >= v).unwrap_or(10.0 * magnitude)
}

fn short(v: f64) -> String {
    if v >= 10_000.0 {
        format!("{:.0}k", v / 1000.0)
    } else if v >= 10.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.1}")
    }
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn axes_end_on_round_numbers() {
        assert_eq!(nice_ceiling(0.0), 1.0);
        assert_eq!(nice_ceiling(7.3), 10.0);
        assert_eq!(nice_ceiling(130.0), 200.0);
        assert_eq!(nice_ceiling(0.04), 0.05);
    }

    #[test]
    fn charts_are_well_formed_svg() {
        let chart = line_chart("t <x>", "ms", &[("p50", "#000", vec![(0.5, 1.0), (1.5, 3.0)])]);
        assert!(chart.starts_with("<svg") && chart.ends_with("</svg>") && chart.contains("t &lt;x&gt;"));
        assert!(chart.contains("<polyline"));
        let mut h = crate::record::histogram();
        h.record(1500).unwrap();
        h.record(250_000).unwrap();
        let (labels, counts) = histogram_buckets(&h);
        assert_eq!(counts.iter().sum::<u64>(), 2);
        assert_eq!(labels.len(), counts.len());
    }
}
