//! The utilisation chart (scenario c): jobs held by the downstream over
//! time, sluicegate against the naive fixed-tick schedule, as a small SVG
//! written beside the report (no plotting dependency: two polylines); and
//! the plain line chart of i's retention run (table size over time).

use std::fmt::Write as _;

/// Width of a time bucket: the held counts sampled every 10 ms are averaged
/// over it.
const BUCKET_S: f64 = 0.25;
const WIDTH: f64 = 800.0;
const HEIGHT: f64 = 290.0;
const LEFT: f64 = 48.0;
const RIGHT: f64 = 16.0;
const TOP: f64 = 56.0;
const BOTTOM: f64 = 40.0;

/// One policy's line: its name, colour and samples (seconds from the first
/// tick, jobs held).
pub struct Line<'a> {
    pub name: &'a str,
    pub colour: &'a str,
    pub samples: &'a [(f64, f64)],
}

/// Averages samples over [`BUCKET_S`] buckets.
fn buckets(samples: &[(f64, f64)]) -> Vec<(f64, f64)> {
    let mut out: Vec<(f64, f64, usize)> = Vec::new();
    for &(t, held) in samples {
        let b = (t / BUCKET_S).floor();
        match out.last_mut() {
            Some((last, sum, n)) if *last == b => {
                *sum += held;
                *n += 1;
            }
            _ => out.push((b, held, 1)),
        }
    }
    out.into_iter()
        .map(|(b, sum, n)| ((b + 0.5) * BUCKET_S, sum / n as f64))
        .collect()
}

/// An SVG's opening: its size, a white background, the title, and the two
/// axes (the time axis at height `y0`, to `x_end`).
fn open_svg(title: &str, y0: f64, x_end: f64) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(s, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(s, r#"<text x="{LEFT}" y="18" font-size="13">{title}</text>"#);
    let _ = writeln!(
        s,
        r##"<line x1="{LEFT}" y1="{y0}" x2="{x_end}" y2="{y0}" stroke="#444"/>"##
    );
    let _ = writeln!(
        s,
        r##"<line x1="{LEFT}" y1="{TOP}" x2="{LEFT}" y2="{y0}" stroke="#444"/>"##
    );
    s
}

/// An SVG's end: each line as a polyline of `points` (in the picture's
/// coordinates), its legend in one row under the title, `legend_step`
/// apart, and the closing tag.
fn close_svg(mut s: String, lines: &[Line], legend_step: f64, points: impl Fn(&Line) -> Vec<(f64, f64)>) -> String {
    for (i, line) in lines.iter().enumerate() {
        let points: Vec<String> = points(line)
            .iter()
            .map(|&(px, py)| format!("{px:.1},{py:.1}"))
            .collect();
        let _ = writeln!(
            s,
            r#"<polyline fill="none" stroke="{}" stroke-width="1.5" points="{}"/>"#,
            line.colour,
            points.join(" ")
        );
        let lx = LEFT + legend_step * i as f64;
        let _ = writeln!(
            s,
            r#"<line x1="{}" y1="34" x2="{}" y2="34" stroke="{}" stroke-width="3"/><text x="{}" y="38">{}</text>"#,
            lx,
            lx + 20.0,
            line.colour,
            lx + 26.0,
            line.name
        );
    }
    s.push_str("</svg>\n");
    s
}

/// The SVG: held jobs (0 to `limit`) against time, one line per policy.
pub fn utilisation_svg(title: &str, limit: f64, lines: &[Line]) -> String {
    let t_max = lines
        .iter()
        .flat_map(|l| l.samples.iter().map(|(t, _)| *t))
        .fold(1.0f64, f64::max)
        .ceil();
    let (plot_w, plot_h) = (WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM);
    let x = |t: f64| LEFT + t / t_max * plot_w;
    let y = |held: f64| TOP + (1.0 - held / limit) * plot_h;
    let mut s = open_svg(title, y(0.0), x(t_max));
    // The limit, and ticks.
    let _ = writeln!(
        s,
        r##"<line x1="{LEFT}" y1="{}" x2="{}" y2="{}" stroke="#999" stroke-dasharray="4 3"/><text x="{}" y="{}" text-anchor="end" fill="#666">limit {limit}</text>"##,
        y(limit),
        x(t_max),
        y(limit),
        x(t_max),
        y(limit) - 4.0
    );
    for held in [0.0, limit / 2.0, limit] {
        let _ = writeln!(
            s,
            r#"<text x="{}" y="{}" text-anchor="end">{held}</text>"#,
            LEFT - 6.0,
            y(held) + 4.0
        );
    }
    let step = if t_max > 60.0 {
        20.0
    } else if t_max > 20.0 {
        10.0
    } else {
        2.0
    };
    let mut t = 0.0;
    while t <= t_max {
        let _ = writeln!(
            s,
            r#"<text x="{}" y="{}" text-anchor="middle">{t}</text>"#,
            x(t),
            y(0.0) + 16.0
        );
        t += step;
    }
    let _ = writeln!(
        s,
        r#"<text x="{}" y="{}" text-anchor="middle">seconds from the first drain (jobs held by the downstream, mean per {} ms)</text>"#,
        LEFT + plot_w / 2.0,
        HEIGHT - 6.0,
        BUCKET_S * 1000.0
    );
    close_svg(s, lines, 280.0, |line| {
        buckets(line.samples).iter().map(|&(t, held)| (x(t), y(held))).collect()
    })
}

/// A plain line chart of samples as they are (no buckets): values from 0 to
/// the largest (rounded up to a whole `y_unit` step) against seconds. For
/// i's retention run (`bench/retention.svg`): table size over time.
pub fn series_svg(title: &str, y_label: &str, x_label: &str, lines: &[Line]) -> String {
    let t_max = lines
        .iter()
        .flat_map(|l| l.samples.iter().map(|(t, _)| *t))
        .fold(1.0f64, f64::max)
        .ceil();
    let top = lines
        .iter()
        .flat_map(|l| l.samples.iter().map(|(_, v)| *v))
        .fold(0.0f64, f64::max);
    // A round top: 1, 2 or 5 times a power of ten.
    let mag = 10f64.powf(top.max(1e-9).log10().floor());
    let y_max = [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * mag)
        .find(|m| *m >= top)
        .unwrap_or(10.0 * mag);
    let (plot_w, plot_h) = (WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM);
    let x = |t: f64| LEFT + t / t_max * plot_w;
    let y = |v: f64| TOP + (1.0 - v / y_max) * plot_h;
    let mut s = open_svg(title, y(0.0), x(t_max));
    for v in [0.0, y_max / 2.0, y_max] {
        let _ = writeln!(
            s,
            r#"<text x="{}" y="{}" text-anchor="end">{v}</text>"#,
            LEFT - 6.0,
            y(v) + 4.0
        );
    }
    let _ = writeln!(
        s,
        r##"<text x="{LEFT}" y="{}" fill="#666">{y_label}</text>"##,
        TOP - 6.0
    );
    let step = if t_max > 300.0 {
        60.0
    } else if t_max > 60.0 {
        20.0
    } else {
        2.0
    };
    let mut t = 0.0;
    while t <= t_max {
        let _ = writeln!(
            s,
            r#"<text x="{}" y="{}" text-anchor="middle">{t}</text>"#,
            x(t),
            y(0.0) + 16.0
        );
        t += step;
    }
    let _ = writeln!(
        s,
        r#"<text x="{}" y="{}" text-anchor="middle">{x_label}</text>"#,
        LEFT + plot_w / 2.0,
        HEIGHT - 6.0
    );
    close_svg(s, lines, 250.0, |line| {
        line.samples.iter().map(|&(t, v)| (x(t), y(v))).collect()
    })
}
