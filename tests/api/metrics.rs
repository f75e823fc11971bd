//! GET /metrics carries every metric of the contract, moving with the work.

use std::collections::HashMap;

use serde_json::json;

use crate::helpers::*;

/// Sample values by series (name with labels), from the text exposition.
async fn scrape(app: &TestApp) -> HashMap<String, f64> {
    let r = app.http.get(app.url("/metrics")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.headers()["content-type"].to_str().unwrap().starts_with("text/plain"));
    r.text()
        .await
        .unwrap()
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            Some((series.to_owned(), value.parse().ok()?))
        })
        .collect()
}

fn get(m: &HashMap<String, f64>, series: &str) -> f64 {
    m.get(series).copied().unwrap_or(0.0)
}

#[tokio::test]
async fn metrics_follow_a_job_through_its_life() {
    let ds = Downstream::start(|_| Reply::status(202)).await;
    let app = app().downstream(&ds.url).spawn().await;
    let before = scrape(&app).await;
    let id = app.submit(json!(1)).await["id"].as_str().unwrap().to_owned();
    app.drain().await;
    let r = app
        .callback(&id, &ds.token_for(&id), json!({"status": "succeeded"}))
        .await;
    assert_eq!(r.status(), 200);
    let after = scrape(&app).await;

    // Counters are process-wide (tests share the process): they grew at least by our share.
    let grew = |series: &str, by: f64| {
        assert!(
            get(&after, series) >= get(&before, series) + by,
            "{series}: {} -> {}",
            get(&before, series),
            get(&after, series)
        );
    };
    grew("sluicegate_jobs_enqueued_total", 1.0);
    grew("sluicegate_jobs_dispatched_total", 1.0);
    grew("sluicegate_jobs_finished_total{status=\"succeeded\"}", 1.0);
    grew("sluicegate_sqs_requests_total{operation=\"SendMessageBatch\"}", 1.0);
    grew("sluicegate_sqs_requests_total{operation=\"ReceiveMessage\"}", 1.0);
    grew("sluicegate_sqs_requests_total{operation=\"DeleteMessageBatch\"}", 1.0);
    grew("sluicegate_drain_duration_seconds_count", 1.0);
    grew(
        "sluicegate_downstream_request_duration_seconds_count{outcome=\"accepted\"}",
        1.0,
    );
    grew(
        "sluicegate_http_requests_total{method=\"POST\",route=\"/jobs\",status=\"202\"}",
        1.0,
    );
    grew(
        "sluicegate_http_requests_total{method=\"POST\",route=\"/jobs/{id}/callback\",status=\"200\"}",
        1.0,
    );
    assert!(
        after
            .keys()
            .any(|k| k.starts_with("sluicegate_drain_duration_seconds_bucket{le="))
    );
    assert!(
        after
            .keys()
            .any(|k| k.starts_with("sluicegate_http_request_duration_seconds_bucket{"))
    );
    for gauge in ["sluicegate_running", "sluicegate_limit", "sluicegate_queue_depth"] {
        assert!(after.contains_key(gauge), "{gauge} missing");
    }
}
