//! a. Enqueue: `POST /jobs` and `POST /jobs/batch` under closed-loop load.

use std::{
    fmt::Write as _,
    time::{Duration, Instant},
};

use axum::http::StatusCode;
use futures::future::join_all;
use serde_json::json;
use sluicegate_testkit::{API_TOKEN, Downstream, FakeDownstream, Work};

use crate::{
    BATCH, Facts, Infra, Settings,
    cpu::{CpuUse, cpu_rows},
    keep,
    load::{batch_body, dispose, metrics, post_batch, sqs_ops, start_app},
    med,
    stats::{TABLE_HEAD, percentile, row, summarize},
};

#[derive(Default)]
pub struct EnqueueRun {
    pub single_rps: f64,
    pub single_p50: f64,
    pub single_p99: f64,
    pub single_errors: u64,
    pub batch_jobs_per_s: f64,
    pub batch_p50: f64,
    pub batch_p99: f64,
    pub batch_errors: u64,
    pub cpu_single: CpuUse,
    pub cpu_batch: CpuUse,
    /// SQS requests per accepted job.
    pub single_sqs_per_job: f64,
    pub batch_sqs_per_job: f64,
}

/// `clients` loops posting single jobs until `deadline`: (ok, errors, latencies in ms).
pub async fn single_load(
    http: &reqwest::Client,
    base: &str,
    clients: usize,
    secs: f64,
) -> (u64, u64, Vec<f64>, Duration) {
    let started = Instant::now();
    let deadline = started + Duration::from_secs_f64(secs);
    let tasks: Vec<_> = (0..clients)
        .map(|c| {
            let (http, url) = (http.clone(), format!("{base}/jobs"));
            tokio::spawn(async move {
                let (mut ok, mut err, mut lat) = (0u64, 0u64, Vec::new());
                let mut i = 0u64;
                while Instant::now() < deadline {
                    let body = serde_json::to_vec(&json!({"payload": {"client": c, "n": i}})).expect("JSON");
                    i += 1;
                    let t = Instant::now();
                    let r = http
                        .post(&url)
                        .bearer_auth(API_TOKEN)
                        .header("content-type", "application/json")
                        .body(body)
                        .send()
                        .await;
                    match r {
                        Ok(r) if r.status() == StatusCode::ACCEPTED => {
                            let _ = r.bytes().await;
                            lat.push(t.elapsed().as_secs_f64() * 1e3);
                            ok += 1;
                        }
                        _ => err += 1,
                    }
                }
                (ok, err, lat)
            })
        })
        .collect();
    let (mut ok, mut err, mut lat) = (0, 0, Vec::new());
    for t in join_all(tasks).await {
        let (o, e, l) = t.expect("a client task");
        ok += o;
        err += e;
        lat.extend(l);
    }
    (ok, err, lat, started.elapsed())
}

async fn batch_load(http: &reqwest::Client, base: &str, clients: usize, secs: f64) -> (u64, u64, Vec<f64>, Duration) {
    let started = Instant::now();
    let deadline = started + Duration::from_secs_f64(secs);
    let body = batch_body(BATCH, "batch");
    let tasks: Vec<_> = (0..clients)
        .map(|_| {
            let (http, base, body) = (http.clone(), base.to_owned(), body.clone());
            tokio::spawn(async move {
                let (mut jobs, mut err, mut lat) = (0u64, 0u64, Vec::new());
                while Instant::now() < deadline {
                    let t = Instant::now();
                    match post_batch(&http, &base, body.clone()).await {
                        Some(n) => {
                            lat.push(t.elapsed().as_secs_f64() * 1e3);
                            jobs += n;
                            err += BATCH as u64 - n;
                        }
                        None => err += BATCH as u64,
                    }
                }
                (jobs, err, lat)
            })
        })
        .collect();
    let (mut jobs, mut err, mut lat) = (0, 0, Vec::new());
    for t in join_all(tasks).await {
        let (j, e, l) = t.expect("a client task");
        jobs += j;
        err += e;
        lat.extend(l);
    }
    (jobs, err, lat, started.elapsed())
}

pub async fn enqueue_run(infra: &Infra, s: &Settings) -> EnqueueRun {
    let ds = Downstream::start_with(
        FakeDownstream::builder()
            .work(Work::Fixed(Duration::ZERO))
            .record(false),
    )
    .await;
    let app = start_app(infra, s, &ds.url, |c| c.refill_on_callback = false).await;
    let http = &infra.http;
    // Warm up: connections, the pool, prepared statements.
    let _ = single_load(http, &app.base, s.single_clients, 0.5).await;

    let m0 = metrics(http, &app.base).await;
    let cpu0 = infra.cpu.snap(None);
    let (ok, err, mut lat, elapsed) = single_load(http, &app.base, s.single_clients, s.enqueue_secs).await;
    let cpu_single = infra.cpu.since(cpu0, None);
    let m1 = metrics(http, &app.base).await;
    let sqs_requests = |a, b| sqs_ops(a, b).values().sum::<f64>();
    let mut r = EnqueueRun {
        single_rps: ok as f64 / elapsed.as_secs_f64(),
        single_p50: percentile(&mut lat, 50.0),
        single_p99: percentile(&mut lat, 99.0),
        single_errors: err,
        cpu_single,
        single_sqs_per_job: sqs_requests(&m0, &m1) / ok.max(1) as f64,
        ..Default::default()
    };

    let cpu0 = infra.cpu.snap(None);
    let (jobs, err, mut lat, elapsed) = batch_load(http, &app.base, s.batch_clients, s.enqueue_secs).await;
    r.cpu_batch = infra.cpu.since(cpu0, None);
    r.batch_jobs_per_s = jobs as f64 / elapsed.as_secs_f64();
    r.batch_p50 = percentile(&mut lat, 50.0);
    r.batch_p99 = percentile(&mut lat, 99.0);
    r.batch_errors = err;
    let m2 = metrics(http, &app.base).await;
    r.batch_sqs_per_job = sqs_requests(&m1, &m2) / jobs.max(1) as f64;
    dispose(app).await;
    r
}

/// The report's section.
pub fn section(o: &mut String, k: &mut Facts, s: &Settings, enq: &[EnqueueRun]) {
    // a.
    let _ = writeln!(
        o,
        "## a. Enqueue\n\nThe service in the bench process (bench profile = release), a fresh database and queue \
         per run, `DATABASE_POOL_SIZE={}`. Single: {} concurrent clients loop on `POST /jobs` for {} s (after a \
         0.5 s warm-up). Batch: {} concurrent clients loop on `POST /jobs/batch` with {} jobs per request for {} s. \
         The load generator shares the process (and the 2 cores) with the service.\n",
        s.pool, s.single_clients, s.enqueue_secs, s.batch_clients, BATCH, s.enqueue_secs
    );
    o.push_str(TABLE_HEAD);
    let col = |f: fn(&EnqueueRun) -> f64| enq.iter().map(f).collect::<Vec<_>>();
    keep(
        k,
        "single",
        o,
        "single `POST /jobs`: requests/s",
        &col(|r| r.single_rps),
        0,
    );
    keep(k, "sp50", o, "single: p50 latency, ms", &col(|r| r.single_p50), 1);
    keep(k, "sp99", o, "single: p99 latency, ms", &col(|r| r.single_p99), 1);
    row(o, "single: failed requests", &col(|r| r.single_errors as f64), 0);
    keep(
        k,
        "batch",
        o,
        "batch `POST /jobs/batch`: jobs/s",
        &col(|r| r.batch_jobs_per_s),
        0,
    );
    keep(
        k,
        "bp50",
        o,
        "batch: p50 latency per request, ms",
        &col(|r| r.batch_p50),
        1,
    );
    row(o, "batch: p99 latency per request, ms", &col(|r| r.batch_p99), 1);
    row(o, "batch: failed jobs", &col(|r| r.batch_errors as f64), 0);
    keep(
        k,
        "single_sqs",
        o,
        "single: SQS requests per job",
        &col(|r| r.single_sqs_per_job),
        3,
    );
    row(o, "batch: SQS requests per job", &col(|r| r.batch_sqs_per_job), 3);
    keep(
        k,
        "ratio_ab",
        o,
        "**ratio batch jobs/s ÷ single requests/s** (per run)",
        &col(|r| r.batch_jobs_per_s / r.single_rps),
        2,
    );
    cpu_rows(
        o,
        "single",
        &enq.iter().map(|r| r.cpu_single).collect::<Vec<_>>(),
        false,
    );
    cpu_rows(o, "batch", &enq.iter().map(|r| r.cpu_batch).collect::<Vec<_>>(), false);
    k.insert("a_pg_single", summarize(&col(|r| r.cpu_single.postgres)));
    k.insert("a_own_single", summarize(&col(|r| r.cpu_single.own)));
    k.insert("a_em_single", summarize(&col(|r| r.cpu_single.emulator)));
    k.insert("a_machine_single", summarize(&col(|r| r.cpu_single.machine)));
    k.insert("a_pg_batch", summarize(&col(|r| r.cpu_batch.postgres)));
}

/// Its paragraph of the interpretation.
pub fn interpretation(p: &mut String, k: &Facts, s: &Settings, cores: usize) {
    let m = |key: &str| med(k, key);
    if !m("single").is_nan() {
        let _ = write!(
            p,
            "**Enqueue:** concurrent single `POST /jobs` share their enqueues (group commit: those that arrive \
             while the four group enqueues are busy go together in the next, one transaction — BEGIN, one insert \
             of the jobs and their events, a `SendMessageBatch` while it stays open, COMMIT with its WAL flush — \
             for up to ten), hence {:.3} SQS requests per job; at \
             {:.0} requests/s the machine was {:.2} of {cores} cores busy (Postgres {:.2}, emulator {:.2}, bench \
             process {:.2}); the clients run a closed loop, so the latency mirrors the rate (p50 {:.1} ms against \
             {} clients ÷ {:.0} requests/s = {:.1} ms by Little's law). Batching amortises the HTTP request, the commit and SQS (50 `SendMessageBatch` \
             of 10, sent concurrently): {:.0} jobs/s, **{:.1}× the single rate**; a batch inserts its {BATCH} jobs \
             and their events in one statement ({:.1} ms per request = {:.2} ms per job), with Postgres the \
             largest CPU user ({:.2} cores). ",
            m("single_sqs"),
            m("single"),
            m("a_machine_single"),
            m("a_pg_single"),
            m("a_em_single"),
            m("a_own_single"),
            m("sp50"),
            s.single_clients,
            m("single"),
            s.single_clients as f64 / m("single") * 1000.0,
            m("batch"),
            m("ratio_ab"),
            m("bp50"),
            m("bp50") / BATCH as f64,
            m("a_pg_batch"),
        );
    }
}
