//! Test harness: the real application on port 0, a fresh Postgres database
//! and a fresh SQS queue (on a real SQS-protocol server) per test, a real
//! downstream HTTP server, and a TCP proxy to cut dependencies off. All of it
//! lives in the shared test kit (`testkit/`, also used by the benchmark);
//! test modules `use crate::helpers::*`. Beside it, what only the tests
//! need: reading `/metrics` ([`scrape_metrics`], [`parse_metrics`]).

use std::collections::HashMap;

pub use sluicegate_testkit::*;

/// The Prometheus text exposition (a `/metrics` page) as sample values by
/// series: name with labels, e.g. `sluicegate_jobs_finished_total{status="succeeded"}`.
pub(crate) fn parse_metrics(text: &str) -> HashMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            Some((series.to_owned(), value.parse().ok()?))
        })
        .collect()
}

/// `GET /metrics` of `app` (a 200, in the text format), as sample values by
/// series ([`parse_metrics`]).
pub(crate) async fn scrape_metrics(app: &TestApp) -> HashMap<String, f64> {
    let r = app.http.get(app.url("/metrics")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.headers()["content-type"].to_str().unwrap().starts_with("text/plain"));
    parse_metrics(&r.text().await.unwrap())
}
