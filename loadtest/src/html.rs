//! The HTML report: one self-contained file (no script, no external resources) with the
//! verdict, the summary tables and inline SVG line charts of the time series.

use crate::report::{Report, Sample};
use std::fmt::Write as _;

const WIDTH: f64 = 760.0;
const HEIGHT: f64 = 220.0;
const MARGIN_LEFT: f64 = 64.0;
const MARGIN_RIGHT: f64 = 16.0;
const MARGIN_TOP: f64 = 28.0;
const MARGIN_BOTTOM: f64 = 30.0;
const COLOURS: [&str; 5] = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e"];

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// A series: its name and (x, y) points.
type Series<'a> = (&'a str, Vec<(f64, f64)>);

/// "Nice" round step for about `ticks` ticks over `span`.
fn nice_step(span: f64, ticks: f64) -> f64 {
    if span <= 0.0 || !span.is_finite() {
        return 1.0;
    }
    let raw = span / ticks;
    let magnitude = 10f64.powf(raw.log10().floor());
    let normalized = raw / magnitude;
    let nice = if normalized <= 1.0 {
        1.0
    } else if normalized <= 2.0 {
        2.0
    } else if normalized <= 5.0 {
        5.0
    } else {
        10.0
    };
    nice * magnitude
}

fn short(v: f64) -> String {
    if v.abs() >= 1e6 {
        format!("{:.1}M", v / 1e6)
    } else if v.abs() >= 1e4 {
        format!("{:.0}k", v / 1e3)
    } else if v.fract() == 0.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.1}")
    }
}

/// One line chart as inline SVG.
pub fn line_chart(title: &str, unit: &str, series: &[Series<'_>]) -> String {
    let points = series.iter().flat_map(|(_, p)| p.iter());
    let (mut x_max, mut y_max) = (0.0f64, 0.0f64);
    for (x, y) in points {
        x_max = x_max.max(*x);
        y_max = y_max.max(*y);
    }
    let x_max = if x_max > 0.0 { x_max } else { 1.0 };
    let y_step = nice_step(if y_max > 0.0 { y_max } else { 1.0 }, 4.0);
    let y_top = (y_max / y_step).ceil().max(1.0) * y_step;
    let plot_w = WIDTH - MARGIN_LEFT - MARGIN_RIGHT;
    let plot_h = HEIGHT - MARGIN_TOP - MARGIN_BOTTOM;
    let sx = |x: f64| MARGIN_LEFT + plot_w * x / x_max;
    let sy = |y: f64| MARGIN_TOP + plot_h * (1.0 - y / y_top);
    let mut svg = String::new();
    let _ = write!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" aria-label="{t}"><text x="{MARGIN_LEFT}" y="16" font-size="13" font-weight="bold">{t}</text>"#,
        t = escape(title)
    );
    // Horizontal grid and y labels.
    let mut y = 0.0;
    while y <= y_top + y_step / 2.0 {
        let py = sy(y);
        let _ = write!(
            svg,
            r##"<line x1="{MARGIN_LEFT}" y1="{py:.1}" x2="{:.1}" y2="{py:.1}" stroke="#ddd"/><text x="{:.1}" y="{:.1}" font-size="10" text-anchor="end">{}</text>"##,
            WIDTH - MARGIN_RIGHT,
            MARGIN_LEFT - 4.0,
            py + 3.0,
            short(y)
        );
        y += y_step;
    }
    // X labels (seconds).
    let x_step = nice_step(x_max, 8.0);
    let mut x = 0.0;
    while x <= x_max + 1e-9 {
        let _ = write!(
            svg,
            r#"<text x="{:.1}" y="{:.1}" font-size="10" text-anchor="middle">{}s</text>"#,
            sx(x),
            HEIGHT - MARGIN_BOTTOM + 14.0,
            short(x)
        );
        x += x_step;
    }
    let _ = write!(
        svg,
        r#"<text x="4" y="{:.1}" font-size="10">{}</text>"#,
        MARGIN_TOP - 6.0,
        escape(unit)
    );
    for (i, (name, pts)) in series.iter().enumerate() {
        let colour = COLOURS[i % COLOURS.len()];
        if !pts.is_empty() {
            let path: Vec<String> = pts
                .iter()
                .map(|(x, y)| format!("{:.1},{:.1}", sx(*x), sy(*y)))
                .collect();
            let _ = write!(
                svg,
                r#"<polyline fill="none" stroke="{colour}" stroke-width="1.6" points="{}"/>"#,
                path.join(" ")
            );
        }
        // Legend on the right of the title line, one 130 px slot per series.
        let lx = WIDTH - MARGIN_RIGHT - 130.0 * (series.len() - i) as f64;
        let _ = write!(
            svg,
            r#"<rect x="{lx:.1}" y="7" width="10" height="10" fill="{colour}"/><text x="{:.1}" y="16" font-size="11">{}</text>"#,
            lx + 14.0,
            escape(name)
        );
    }
    svg.push_str("</svg>");
    svg
}

fn series<'a>(
    name: &'a str,
    samples: &[Sample],
    value: impl Fn(&Sample) -> Option<f64>,
) -> Series<'a> {
    (
        name,
        samples
            .iter()
            .filter_map(|s| value(s).map(|v| (s.t_s, v)))
            .collect(),
    )
}

/// The whole HTML report.
pub fn render(report: &Report) -> String {
    let t = &report.timeline;
    let mut html = String::new();
    let verdict = if report.passed { "PASSED" } else { "FAILED" };
    let colour = if report.passed { "#2ca02c" } else { "#d62728" };
    let _ = write!(
        html,
        "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>ferry-loadtest: {name}</title>\
         <style>body{{font-family:sans-serif;margin:24px;max-width:820px}}table{{border-collapse:collapse;margin:8px 0 16px}}\
         td,th{{border:1px solid #ccc;padding:3px 8px;text-align:right;font-size:13px}}th{{background:#f3f3f3}}\
         td:first-child,th:first-child{{text-align:left}}.pass{{color:#2ca02c}}.fail{{color:#d62728}}</style></head><body>\
         <h1>Scenario <code>{name}</code>: <span style=\"color:{colour}\">{verdict}</span></h1><p>{desc}</p>\
         <p>{dur:.1} s, targets {targets}; {cores} cores, {mem:.1} GiB; schema_version {schema}; {tool}</p>",
        name = escape(&report.scenario.name),
        desc = escape(&report.scenario.description),
        dur = report.duration_s,
        targets = escape(&report.targets.join(", ")),
        cores = report.machine.cores,
        mem = report.machine.mem_gib,
        schema = report.schema_version,
        tool = escape(&report.tool),
    );
    if !report.thresholds.is_empty() {
        html.push_str(
            "<h2>Thresholds</h2><table><tr><th>threshold</th><th>measured</th><th>result</th></tr>",
        );
        for th in &report.thresholds {
            let _ = write!(
                html,
                "<tr><td><code>{}</code></td><td>{}</td><td class=\"{}\">{}</td></tr>",
                escape(&th.expression),
                th.value.map_or("no data".to_owned(), |v| format!("{v:.3}")),
                if th.passed { "pass" } else { "fail" },
                if th.passed { "PASS" } else { "FAIL" }
            );
        }
        html.push_str("</table>");
    }
    html.push_str("<h2>Latency (ms)</h2><table><tr><th>metric</th><th>count</th><th>p50</th><th>p90</th><th>p99</th><th>p99.9</th><th>max</th></tr>");
    for (name, p) in &report.latencies {
        let _ = write!(
            html,
            "<tr><td>{}</td><td>{}</td><td>{:.2}</td><td>{:.2}</td><td>{:.2}</td><td>{:.2}</td><td>{:.2}</td></tr>",
            escape(name),
            p.count,
            p.p50_ms,
            p.p90_ms,
            p.p99_ms,
            p.p999_ms,
            p.max_ms
        );
    }
    html.push_str("</table>");
    for sale in &report.sales {
        let _ = write!(
            html,
            "<h2>Flash sale <code>{}</code> in <code>{}</code></h2><p>{} units, limit {} per buyer, \
             ¥{:.2}</p><table><tr><th>final answer</th><th>presses</th></tr>",
            escape(&sale.sale),
            escape(&sale.room),
            sale.quantity,
            sale.per_buyer_limit,
            sale.price_cny as f64 / 100.0
        );
        for (answer, n) in &sale.outcomes {
            let _ = write!(html, "<tr><td>{}</td><td>{n}</td></tr>", escape(answer));
        }
        html.push_str("</table>");
        let rows: Vec<(String, String)> = [
            serde_json::to_value(&sale.stream),
            serde_json::to_value(&sale.stock),
            serde_json::to_value(&sale.verdicts),
        ]
        .into_iter()
        .filter_map(Result::ok)
        .filter_map(|v| v.as_object().cloned())
        .flatten()
        .map(|(k, v)| (k, v.to_string()))
        .collect();
        if !rows.is_empty() {
            html.push_str("<table><tr><th>stream, stock and verdicts</th><th>value</th></tr>");
            for (k, v) in rows {
                let _ = write!(
                    html,
                    "<tr><td>{}</td><td>{}</td></tr>",
                    escape(&k),
                    escape(&v)
                );
            }
            html.push_str("</table>");
        }
        if let Some(e) = &sale.error {
            let _ = write!(html, "<p class=\"fail\">{}</p>", escape(e));
        }
    }
    if let Some(video) = &report.video {
        let layers: Vec<String> = video
            .simulcast
            .iter()
            .map(|l| format!("{} {} bit/s", escape(&l.rid), l.bitrate_bps))
            .collect();
        let _ = write!(
            html,
            "<h2>Video</h2><p>Synthetic {} at {} bit/s, {} fps{}{}; a gap over {} ms between \
             frames is a freeze; served by {}.</p>",
            escape(&video.codec),
            video.bitrate_bps,
            video.fps,
            if layers.is_empty() {
                String::new()
            } else {
                format!(", simulcast {}", layers.join(", "))
            },
            if video.audio { ", with audio" } else { "" },
            video.freeze_threshold_ms,
            escape(&video.target)
        );
        if !video.publishers.is_empty() {
            html.push_str(
                "<table><tr><th>publisher in</th><th>connected</th><th>frames</th>\
                 <th>keyframes</th><th>packets</th><th>bytes</th><th>keyframe requests</th></tr>",
            );
            for p in &video.publishers {
                let _ = write!(
                    html,
                    "<tr><td>{}</td><td class=\"{}\">{}</td><td>{}</td><td>{}</td><td>{}</td>\
                     <td>{}</td><td>{}</td></tr>",
                    escape(&p.room),
                    if p.connected { "pass" } else { "fail" },
                    if p.connected { "yes" } else { "no" },
                    p.video_frames,
                    p.keyframes,
                    p.packets,
                    p.bytes,
                    p.keyframe_requests
                );
                if let Some(e) = &p.error {
                    let _ = write!(
                        html,
                        "<tr><td colspan=\"7\" class=\"fail\">{}</td></tr>",
                        escape(e)
                    );
                }
            }
            html.push_str("</table>");
        }
        let rows: Vec<(&str, f64)> = crate::thresholds::VIDEO_METRICS
            .iter()
            .filter_map(|name| report.metrics.get(*name).map(|v| (*name, *v)))
            .collect();
        if !rows.is_empty() {
            html.push_str("<table><tr><th>subscribers</th><th>value</th></tr>");
            for (name, v) in rows {
                let _ = write!(html, "<tr><td>{name}</td><td>{v:.3}</td></tr>");
            }
            html.push_str("</table>");
        }
    }
    html.push_str("<h2>Charts</h2>");
    html.push_str(&line_chart(
        "Connections",
        "clients",
        &[
            series("open connections", t, |s| Some(s.connections as f64)),
            series("viewers joined", t, |s| Some(s.viewers_joined as f64)),
        ],
    ));
    html.push_str(&line_chart(
        "Joins and errors",
        "per s",
        &[
            series("joins/s", t, |s| Some(s.joins_per_s)),
            series("join failures/s", t, |s| Some(s.join_failures_per_s)),
            series("errors/s", t, |s| Some(s.errors_per_s)),
        ],
    ));
    html.push_str(&line_chart(
        "Throughput",
        "per s",
        &[
            series("deliveries/s", t, |s| Some(s.deliveries_per_s)),
            series("comments/s", t, |s| Some(s.comments_per_s)),
        ],
    ));
    html.push_str(&line_chart(
        "Comment latency (send schedule → receiver)",
        "ms",
        &[
            series("p50", t, |s| s.comment_latency_p50_ms),
            series("p99", t, |s| s.comment_latency_p99_ms),
            series("p99.9", t, |s| s.comment_latency_p999_ms),
        ],
    ));
    html.push_str(&line_chart(
        "Join time (arrival → join reply)",
        "ms",
        &[
            series("p50", t, |s| s.join_p50_ms),
            series("p99", t, |s| s.join_p99_ms),
        ],
    ));
    if !report.sales.is_empty() {
        html.push_str(&line_chart(
            "Buy presses answered",
            "per s",
            &[series("answers/s", t, |s| Some(s.buys_per_s))],
        ));
        html.push_str(&line_chart(
            "Buy latency (intended press → final answer)",
            "ms",
            &[
                series("p50", t, |s| s.buy_p50_ms),
                series("p99", t, |s| s.buy_p99_ms),
            ],
        ));
    }
    if report.video.is_some() {
        html.push_str(&line_chart(
            "Video subscribers receiving",
            "subscribers",
            &[series("receiving video", t, |s| {
                Some(s.video_subscribers as f64)
            })],
        ));
        html.push_str(&line_chart(
            "Video frames and freezes",
            "per s",
            &[
                series("frames/s (all subscribers)", t, |s| {
                    Some(s.video_frames_per_s)
                }),
                series("freezes/s", t, |s| Some(s.video_freezes_per_s)),
            ],
        ));
        html.push_str(&line_chart(
            "Time to first frame (arrival → first complete frame)",
            "ms",
            &[
                series("p50", t, |s| s.video_ttff_p50_ms),
                series("p99", t, |s| s.video_ttff_p99_ms),
            ],
        ));
    }
    if t.iter().any(|s| s.server_cpu_pct.is_some()) {
        html.push_str(&line_chart(
            "Server process",
            "% CPU / MiB",
            &[
                series("CPU % (100 = one core)", t, |s| s.server_cpu_pct),
                series("RSS MiB", t, |s| s.server_rss_mib),
            ],
        ));
    }
    html.push_str("<h2>All metrics</h2><table><tr><th>metric</th><th>value</th></tr>");
    for (k, v) in &report.metrics {
        let _ = write!(html, "<tr><td>{}</td><td>{v:.3}</td></tr>", escape(k));
    }
    html.push_str("</table>");
    if !report.errors.is_empty() {
        html.push_str("<h2>Errors</h2><table><tr><th>kind</th><th>count</th></tr>");
        for (k, v) in &report.errors {
            let _ = write!(html, "<tr><td>{}</td><td>{v}</td></tr>", escape(k));
        }
        html.push_str("</table>");
    }
    for note in &report.notes {
        let _ = write!(html, "<p>Note: {}</p>", escape(note));
    }
    html.push_str("</body></html>\n");
    html
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::tests::sample_report;

    #[test]
    fn html_is_self_contained_with_svg_charts() {
        let mut report = sample_report();
        report.scenario.name = "<script>".into();
        report.timeline = (0..5)
            .map(|i| Sample {
                t_s: i as f64,
                connections: i * 10,
                comment_latency_p99_ms: Some(i as f64 * 1.5),
                ..Sample::default()
            })
            .collect();
        let html = render(&report);
        assert!(html.contains("<svg") && html.contains("<polyline"));
        assert!(
            !html.contains("<script"),
            "no script, and names are escaped"
        );
        assert!(!html.contains("src="), "no external resources");
        assert!(html.contains("&lt;script&gt;"));
        // The sample report's flash sale: its answers and verdicts, and the buy charts.
        assert!(html.contains("Flash sale <code>s1</code>"), "{html}");
        assert!(html.contains("lost_reservations") && html.contains("Buy latency"));
        // Its video: the publisher table and the three video charts.
        assert!(
            html.contains("<h2>Video</h2>") && html.contains("video-0"),
            "{html}"
        );
        assert!(html.contains("simulcast l 150000 bit/s"), "{html}");
        for chart in [
            "Video subscribers receiving",
            "Video frames and freezes",
            "Time to first frame",
        ] {
            assert!(html.contains(chart), "{chart}");
        }
        report.video = None;
        assert!(!render(&report).contains("Time to first frame"));
    }

    #[test]
    fn nice_steps_are_round() {
        assert_eq!(nice_step(100.0, 4.0), 50.0);
        assert_eq!(nice_step(7.0, 4.0), 2.0);
        assert_eq!(nice_step(0.0, 4.0), 1.0);
    }
}
