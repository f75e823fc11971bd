//! The SQS server cut off under load (a TCP proxy between the service and
//! the emulator refuses and drops every connection), then brought back.

use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use super::load::{self, Load, Sample};
use crate::helpers::*;

const CUT: Duration = Duration::from_secs(6);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sqs_cut_under_load_loses_no_job_and_drains_resume() {
    let proxy = Proxy::start(addr_of(&fast_sqs_endpoint())).await;
    let base = Arc::new(Mutex::new(String::new()));
    let ds = load::calling_back_downstream(base.clone()).await;
    let app = app()
        .fast_sqs()
        .app_sqs_endpoint(format!("http://{}", proxy.addr))
        .downstream(&ds.url)
        .config(|c| {
            // Room for every job: a message released at capacity while SQS
            // is cut stays hidden for a dispatch lease (61 s), which would
            // only slow the test down.
            c.max_concurrency = 200;
            c.drain_budget_ms = 1500;
            c.dispatch_timeout_secs = 1;
            c.refill_on_callback = true;
        })
        .spawn()
        .await;
    *base.lock().unwrap() = app.base.clone();

    let load = Load::start(&app.base, 4);
    tokio::time::sleep(Duration::from_secs(2)).await;
    proxy.set_down(true).await;
    let down = Instant::now();
    tokio::time::sleep(CUT).await;
    let restored = Instant::now();
    proxy.set_down(false).await;
    tokio::time::sleep(Duration::from_secs(8)).await;
    let record = load.stop().await;

    let answered_during = |route: &'static str| -> Vec<&Sample> {
        record
            .samples
            .iter()
            .filter(|s| s.route == route)
            .filter(|s| {
                let end = s.started + s.latency;
                end >= down + Duration::from_millis(200) && end <= restored
            })
            .collect()
    };
    let mut report = String::new();
    for route in ["POST /jobs", "POST /drain", "GET /readyz", "GET /stats"] {
        let answers: std::collections::BTreeMap<u16, usize> =
            answered_during(route).iter().fold(Default::default(), |mut m, s| {
                *m.entry(s.status).or_default() += 1;
                m
            });
        let mut lat: Vec<Duration> = answered_during(route).iter().map(|s| s.latency).collect();
        report += &format!(
            "{route}: answered during the cut {answers:?}, p99 {:?}\n",
            load::p99(&mut lat)
        );
    }
    eprintln!("{report}{} jobs accepted", record.accepted.len());

    // POST /jobs acknowledges nothing it could not queue: 503 + Retry-After.
    let jobs = answered_during("POST /jobs");
    assert!(!jobs.is_empty(), "{report}");
    for s in &jobs {
        assert!(
            s.status == 503 && s.retry_after,
            "POST /jobs: {} {}\n{report}",
            s.status,
            s.body
        );
    }
    // /readyz says what is down.
    let readyz = answered_during("GET /readyz");
    assert!(!readyz.is_empty());
    for s in readyz {
        assert!(
            s.status == 503 && s.body.contains("sqs") && !s.body.contains("postgres"),
            "{}",
            s.body
        );
    }
    // Drains resume by themselves: scheduled ones succeed again within 5 s
    // of the end of the cut, and every later one succeeds.
    let back = restored + Duration::from_secs(5);
    let drains_after: Vec<&Sample> = record
        .samples
        .iter()
        .filter(|s| s.route == "POST /drain" && s.started >= back)
        .collect();
    assert!(!drains_after.is_empty());
    for s in drains_after {
        assert_eq!(s.status, 200, "a drain after the cut: {}", s.body);
    }
    // Every job that got a 202 has its message or is running / finished:
    // all of them end terminal (jobs whose message was lost would stay queued).
    let left = load::settle(&app, &app.db, &record.accepted, Duration::from_secs(60)).await;
    assert!(
        left.is_empty(),
        "jobs neither terminal nor queued with a message: {left:?}"
    );
    let dispatched_after: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM job_events WHERE to_status = 'running' AND at > now() - interval '10 seconds'",
    )
    .fetch_one(&app.db)
    .await
    .unwrap();
    eprintln!("jobs started in the last 10 s: {dispatched_after}");
}
