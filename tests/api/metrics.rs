//! GET /metrics carries every metric of the contract, moving with the work.

use std::{collections::HashMap, time::Duration};

use serde_json::json;

use crate::helpers::*;

fn get(m: &HashMap<String, f64>, series: &str) -> f64 {
    m.get(series).copied().unwrap_or(0.0)
}

#[tokio::test]
async fn metrics_follow_a_job_through_its_life() {
    let ds = Downstream::start(|_| Reply::status(202)).await;
    let app = app().downstream(&ds.url).spawn().await;
    let before = scrape_metrics(&app).await;
    let id = app.submit(json!(1)).await["id"].as_str().unwrap().to_owned();
    app.drain().await;
    let r = app
        .callback(&id, &ds.token_for(&id), json!({"status": "succeeded"}))
        .await;
    assert_eq!(r.status(), 200);
    let after = scrape_metrics(&app).await;

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

/// Sum of every series of `name` on a `/metrics` page.
fn total(page: &str, name: &str) -> f64 {
    parse_metrics(page)
        .into_iter()
        .filter(|(series, _)| series.starts_with(name))
        .map(|(_, value)| value)
        .sum()
}

#[tokio::test]
async fn every_sqs_request_is_counted_the_sdks_retries_included() {
    // An SQS endpoint that answers every request with 500 (the SDK retries
    // each operation) and counts what it receives. The binary runs in its
    // own process, so its counters are its own.
    use std::sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    };
    let hits = Arc::new(AtomicUsize::new(0));
    let h = hits.clone();
    let failing = axum::Router::new().fallback(move || {
        h.fetch_add(1, Ordering::SeqCst);
        async { axum::http::StatusCode::INTERNAL_SERVER_ERROR }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let sqs = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, failing).await.unwrap() });

    let db = TestDb::create().await;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_sluicegate"))
        .arg("serve")
        .env_clear()
        .env("DATABASE_URL", &db.url)
        .env("SQS_QUEUE_URL", format!("{sqs}/000000000000/jobs"))
        .env("AWS_ENDPOINT_URL", &sqs)
        .env("AWS_ACCESS_KEY_ID", "test")
        .env("AWS_SECRET_ACCESS_KEY", "test")
        .env("AWS_REGION", "us-east-1")
        .env("DOWNSTREAM_URL", "http://127.0.0.1:9/")
        .env("API_TOKENS", API_TOKEN)
        .env("DRAIN_TOKEN", DRAIN_TOKEN)
        .env("CALLBACK_SECRET", CALLBACK_SECRET)
        .env("REQUEUE_AFTER_SECS", "3600")
        .env("LISTEN_ADDR", format!("127.0.0.1:{port}"))
        .kill_on_drop(true)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let http = reqwest::Client::new();
    let metrics_url = format!("http://127.0.0.1:{port}/metrics");
    // The gauge sampler asks SQS for the queue depth at start: one call,
    // several requests. Compare at a moment when nothing is in flight.
    let matched = eventually(Duration::from_secs(20), || async {
        let before = hits.load(Ordering::SeqCst);
        let Ok(r) = http.get(&metrics_url).send().await else {
            return false;
        };
        let page = r.text().await.unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
        let after = hits.load(Ordering::SeqCst);
        before == after && before >= 2 && total(&page, "sluicegate_sqs_requests_total") == before as f64
    })
    .await;
    let page = http.get(&metrics_url).send().await.unwrap().text().await.unwrap();
    let _ = child.kill().await;
    assert!(
        matched,
        "SQS saw {} requests; /metrics counted {}",
        hits.load(Ordering::SeqCst),
        total(&page, "sluicegate_sqs_requests_total")
    );
    assert!(page.contains("sluicegate_sqs_requests_total{operation=\"GetQueueAttributes\"}"));
}

/// Exact values, on a process of its own. The tests above share one
/// process, so one recorder: there a counter can only be checked for
/// growth. The binary, started fresh, must count exactly what it did.
#[tokio::test]
async fn a_fresh_process_counts_exactly_what_it_did() {
    use crate::faults::common::spawn_binary;

    let ds = Downstream::start(|_| Reply::status(202)).await;
    let mut app = app().downstream(&ds.url).spawn().await;
    // The database and queue are ready; only the binary serves from here.
    app.stop().await;
    let (mut child, base) = spawn_binary(&app, &ds.url, &[("REFILL_ON_CALLBACK", "false".to_owned())]);
    let http = reqwest::Client::new();
    let mut ids = Vec::new();
    for n in 0..2 {
        let r = http
            .post(format!("{base}/jobs"))
            .bearer_auth(API_TOKEN)
            .json(&json!({"payload": n}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 202);
        ids.push(
            r.json::<serde_json::Value>().await.unwrap()["id"]
                .as_str()
                .unwrap()
                .to_owned(),
        );
    }
    let r = http
        .post(format!("{base}/drain"))
        .bearer_auth(DRAIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = http
        .post(format!("{base}/jobs/{}/callback", ids[0]))
        .bearer_auth(ds.token_for(&ids[0]))
        .json(&json!({"status": "succeeded"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    let scrape = || async {
        let text = http
            .get(format!("{base}/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let m = parse_metrics(&text);
        (text, m)
    };
    // The second submission may still be finishing after the drain answered.
    let (mut text, mut m) = scrape().await;
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while get(&m, "sluicegate_jobs_dispatched_total") < 2.0 && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
        (text, m) = scrape().await;
    }
    let _ = child.kill();
    let _ = child.wait();
    let exactly = |series: &str, want: f64| assert_eq!(get(&m, series), want, "{series}\n{text}");
    exactly("sluicegate_jobs_enqueued_total", 2.0);
    exactly("sluicegate_jobs_dispatched_total", 2.0);
    exactly("sluicegate_jobs_finished_total{status=\"succeeded\"}", 1.0);
    exactly(
        "sluicegate_http_requests_total{method=\"POST\",route=\"/jobs\",status=\"202\"}",
        2.0,
    );
    exactly(
        "sluicegate_http_requests_total{method=\"POST\",route=\"/drain\",status=\"200\"}",
        1.0,
    );
    exactly(
        "sluicegate_http_requests_total{method=\"POST\",route=\"/jobs/{id}/callback\",status=\"200\"}",
        1.0,
    );
    exactly("sluicegate_drain_duration_seconds_count", 1.0);
    exactly(
        "sluicegate_downstream_request_duration_seconds_count{outcome=\"accepted\"}",
        2.0,
    );
    exactly("sluicegate_postgres_up", 1.0);
    exactly("sluicegate_http_requests_shed_total", 0.0);
}

/// `GET /stats` reports the queue depth SQS gives, but reuses a reading less
/// than a second old while this replica has not changed the queue: a
/// dashboard polling a quiet queue costs neither a request to SQS per poll
/// nor that round trip's latency. The readiness probe and the gauge sampler
/// always ask (and refresh the reading).
#[tokio::test]
async fn the_queue_depth_of_stats_is_reused_for_a_second() {
    let app = app().spawn().await;
    let send = || async {
        app.sqs
            .send_message()
            .queue_url(&app.queue_url)
            .message_body("not-a-job")
            .send()
            .await
            .unwrap();
    };
    send().await;
    let queue = &app.state.queue;
    let first = queue.depth().await.unwrap();
    assert_eq!(first, 1);
    send().await;
    // A reading younger than the age allowed is reused...
    assert_eq!(queue.recent_depth(Duration::from_secs(3600)).await.unwrap(), first);
    // ...an older one is not, and the new one is kept.
    assert_eq!(queue.recent_depth(Duration::ZERO).await.unwrap(), 2);
    assert_eq!(queue.recent_depth(Duration::from_secs(3600)).await.unwrap(), 2);
    // GET /stats reads through it.
    let stats: serde_json::Value = app.get("/stats").await.json().await.unwrap();
    assert_eq!(stats["queue_depth"], 2);
    // What this replica does to the queue itself is never hidden by the
    // reuse: a submission (a send) makes the next reading fresh.
    app.submit(json!(1)).await;
    let stats: serde_json::Value = app.get("/stats").await.json().await.unwrap();
    assert_eq!(stats["queue_depth"], 3);
}
