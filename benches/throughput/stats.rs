//! Median, min and max over runs; percentiles; report table rows.

use std::fmt::Write as _;

#[derive(Clone, Copy, Debug, Default)]
pub struct Summary {
    pub median: f64,
    pub min: f64,
    pub max: f64,
}

pub fn summarize(xs: &[f64]) -> Summary {
    let mut v: Vec<f64> = xs.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return Summary {
            median: f64::NAN,
            min: f64::NAN,
            max: f64::NAN,
        };
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    let median = if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    };
    Summary {
        median,
        min: v[0],
        max: v[n - 1],
    }
}

/// Nearest-rank percentile of unsorted samples.
pub fn percentile(samples: &mut [f64], p: f64) -> f64 {
    if samples.is_empty() {
        return f64::NAN;
    }
    samples.sort_by(f64::total_cmp);
    let rank = ((p / 100.0) * samples.len() as f64).ceil().max(1.0) as usize;
    samples[rank.min(samples.len()) - 1]
}

pub fn fmt_num(x: f64, decimals: usize) -> String {
    if x.is_nan() {
        "n/a".into()
    } else {
        format!("{x:.decimals$}")
    }
}

/// A table row: metric, median, min, max (each with `decimals`).
pub fn row(out: &mut String, metric: &str, xs: &[f64], decimals: usize) -> Summary {
    let s = summarize(xs);
    let _ = writeln!(
        out,
        "| {metric} | {} | {} | {} |",
        fmt_num(s.median, decimals),
        fmt_num(s.min, decimals),
        fmt_num(s.max, decimals)
    );
    s
}

pub const TABLE_HEAD: &str = "| metric | median | min | max |\n| --- | ---: | ---: | ---: |\n";
