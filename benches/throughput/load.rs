//! What the scenarios share: the service started through the test kit with
//! the benchmark's configuration, the drain schedule, the load generators'
//! building blocks, and readings of `GET /metrics` and Postgres' statistics.

use std::{
    collections::BTreeMap,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering::SeqCst},
    },
    time::{Duration, Instant},
};

use axum::{body::Bytes, http::StatusCode};
use futures::{StreamExt, future::join_all, stream};
use serde_json::{Value, json};
use sluicegate::config::Config;
use sluicegate_testkit::{API_TOKEN, DRAIN_TOKEN, TestApp, admin_url, app};
use sqlx::{Connection, PgConnection};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::{BATCH, Infra, Settings};

/// The maintenance database (`TEST_DATABASE_URL`).
pub async fn admin() -> PgConnection {
    PgConnection::connect(&admin_url())
        .await
        .expect("Postgres is reachable (TEST_DATABASE_URL, default postgres://postgres@127.0.0.1:5432/postgres)")
}

/// The benchmark's changes to the test kit's configuration: drains refill on
/// callbacks, nothing is shed, the pool is `SLUICEGATE_BENCH_POOL`.
fn bench_config(c: &mut Config, pool: u32) {
    c.dispatch_timeout_secs = 10;
    c.refill_on_callback = true;
    // Far above what the load generators send at once: nothing is shed.
    c.max_in_flight_requests = 8192;
    c.max_connections = 8192;
    c.database_pool_size = pool;
    c.lease_sweep_interval_secs = 15;
}

/// The real application, in this process, on port 0, with a fresh database
/// and queue (the test kit's `TestApp`).
pub async fn start_app(
    infra: &Infra,
    s: &Settings,
    downstream_url: &str,
    configure: impl FnOnce(&mut Config) + Send + 'static,
) -> TestApp {
    let pool = s.pool;
    app()
        .sqs_endpoint(&infra.sqs_endpoint)
        .downstream(downstream_url)
        .config(move |c| bench_config(c, pool))
        .config(configure)
        .spawn()
        .await
}

/// Stops the application gracefully (its pool is closed when it returns),
/// deletes its queue and drops its database (off the async threads).
pub async fn dispose(mut app: TestApp) {
    app.stop().await;
    app.delete_queue().await;
    let _ = tokio::task::spawn_blocking(move || drop(app)).await;
}

/// `(transactions committed, rows inserted, updated, deleted)` of a database
/// (Postgres' own statistics; a backend reports them at the latest when it exits).
pub async fn db_stats(db_name: &str) -> [f64; 4] {
    let mut conn = admin().await;
    let row: (i64, i64, i64, i64) = sqlx::query_as(
        "SELECT xact_commit, tup_inserted, tup_updated, tup_deleted FROM pg_stat_database WHERE datname = $1",
    )
    .bind(db_name)
    .fetch_one(&mut conn)
    .await
    .expect("pg_stat_database");
    [row.0 as f64, row.1 as f64, row.2 as f64, row.3 as f64]
}

/// Calls `POST /drain` every `every`, like a schedule: each call runs on its
/// own, so a slow drain does not delay the next tick.
pub struct DrainTicker {
    stop: CancellationToken,
    task: JoinHandle<(u64, u64)>,
}

impl DrainTicker {
    pub fn start(http: reqwest::Client, base: &str, every: Duration) -> Self {
        let stop = CancellationToken::new();
        let url = format!("{base}/drain");
        let s = stop.clone();
        let task = tokio::spawn(async move {
            let calls = Arc::new(AtomicU64::new(0));
            let failures = Arc::new(AtomicU64::new(0));
            let mut inflight = Vec::new();
            let mut t = tokio::time::interval(every);
            loop {
                tokio::select! {
                    _ = s.cancelled() => break,
                    _ = t.tick() => {}
                }
                let (http, url, calls, failures) = (http.clone(), url.clone(), calls.clone(), failures.clone());
                inflight.push(tokio::spawn(async move {
                    calls.fetch_add(1, SeqCst);
                    match http.post(&url).bearer_auth(DRAIN_TOKEN).send().await {
                        Ok(r) if r.status() == StatusCode::OK => {}
                        _ => {
                            failures.fetch_add(1, SeqCst);
                        }
                    }
                }));
            }
            join_all(inflight).await;
            (calls.load(SeqCst), failures.load(SeqCst))
        });
        Self { stop, task }
    }

    /// Stops ticking, waits for the calls under way; (calls, failures).
    pub async fn stop(self) -> (u64, u64) {
        self.stop.cancel();
        self.task.await.unwrap_or_default()
    }
}

pub fn batch_body(n: usize, tag: &str) -> Bytes {
    let jobs: Vec<Value> = (0..n).map(|i| json!({"payload": {"n": i, "bench": tag}})).collect();
    Bytes::from(serde_json::to_vec(&json!({ "jobs": jobs })).expect("JSON"))
}

/// Posts one batch; the number of jobs accepted (202), or None on failure.
pub async fn post_batch(http: &reqwest::Client, base: &str, body: Bytes) -> Option<u64> {
    let r = http
        .post(format!("{base}/jobs/batch"))
        .bearer_auth(API_TOKEN)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .ok()?;
    if r.status() != StatusCode::OK {
        return None;
    }
    let v: Value = r.json().await.ok()?;
    Some(v["items"].as_array()?.iter().filter(|i| i["status"] == 202).count() as u64)
}

/// Queues `n` jobs through `/jobs/batch` (4 requests at a time).
pub async fn enqueue_backlog(http: &reqwest::Client, base: &str, n: usize, tag: &str) -> Duration {
    enqueue_batches(http, base, n, |size| batch_body(size, tag)).await
}

/// Queues `n` jobs through `/jobs/batch`, in batches of up to 500 whose
/// bodies `body(size)` writes, 4 requests at a time.
pub async fn enqueue_batches(http: &reqwest::Client, base: &str, n: usize, body: impl Fn(usize) -> Bytes) -> Duration {
    let started = Instant::now();
    let sizes: Vec<usize> = (0..n.div_ceil(BATCH)).map(|i| BATCH.min(n - i * BATCH)).collect();
    let body = &body;
    let accepted: u64 = stream::iter(sizes)
        .map(|size| async move { post_batch(http, base, body(size)).await.expect("a batch is accepted") })
        .buffer_unordered(4)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .sum();
    assert_eq!(accepted, n as u64, "every job of the backlog is queued");
    started.elapsed()
}

/// `GET /metrics`, as `name{labels}` -> value.
pub async fn metrics(http: &reqwest::Client, base: &str) -> BTreeMap<String, f64> {
    let text = http
        .get(format!("{base}/metrics"))
        .send()
        .await
        .expect("GET /metrics")
        .text()
        .await
        .expect("metrics text");
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| {
            let (k, v) = l.rsplit_once(' ')?;
            Some((k.to_owned(), v.parse().ok()?))
        })
        .collect()
}

pub fn delta(a: &BTreeMap<String, f64>, b: &BTreeMap<String, f64>, key: &str) -> f64 {
    b.get(key).copied().unwrap_or(0.0) - a.get(key).copied().unwrap_or(0.0)
}

/// SQS requests by operation between two scrapes.
pub fn sqs_ops(a: &BTreeMap<String, f64>, b: &BTreeMap<String, f64>) -> BTreeMap<String, f64> {
    b.keys()
        .filter_map(|k| {
            let op = k
                .strip_prefix("sluicegate_sqs_requests_total{operation=\"")?
                .strip_suffix("\"}")?;
            Some((op.to_owned(), delta(a, b, k)))
        })
        .collect()
}
