//! e. Fairness: a small key behind a large key's backlog, and weighted
//! shares of a binding limit (issue 12's measured targets).

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt::Write as _,
    time::{Duration, Instant},
};

use axum::body::Bytes;
use serde_json::{Value, json};
use sluicegate_testkit::{API_TOKEN, Downstream, FakeDownstream, TestApp, Work};

use crate::{
    Facts, Infra, Settings, keep,
    load::{DrainTicker, dispose, enqueue_batches, metrics, sqs_ops, start_app},
    med,
    stats::{TABLE_HEAD, row},
};

/// The SQS operations the interpretation names, with their facts' keys.
const FAIR_SQS_OPS: [(&str, &str); 3] = [
    ("ReceiveMessage", "fair_sqs_ReceiveMessage"),
    ("DeleteMessageBatch", "fair_sqs_DeleteMessageBatch"),
    ("ChangeMessageVisibilityBatch", "fair_sqs_ChangeMessageVisibilityBatch"),
];

/// The schedule's tick in this scenario (refill on callback does the rest).
const TICK: Duration = Duration::from_secs(1);

#[derive(Default, Clone)]
pub struct FairRun {
    /// From the start of B's submission to B's last job finished.
    pub small_done_s: f64,
    /// B's share of the occupied slots while both weighted keys had work.
    pub weighted_share: f64,
    /// SQS requests per completed job, over the whole backlog (first run
    /// only: it waits for every job).
    pub sqs_per_job: Option<f64>,
    /// The same, by SQS operation (the drains' requests only).
    pub sqs_by_op: BTreeMap<String, f64>,
    pub max_held: i64,
}

fn keyed_body(n: usize, key: &str) -> Bytes {
    let jobs: Vec<Value> = (0..n)
        .map(|i| json!({"payload": {"n": i, "k": key}, "key": key}))
        .collect();
    Bytes::from(serde_json::to_vec(&json!({ "jobs": jobs })).expect("JSON"))
}

async fn submit_keyed(http: &reqwest::Client, base: &str, n: usize, key: &str) {
    enqueue_batches(http, base, n, |size| keyed_body(size, key)).await;
}

async fn count(app: &TestApp, sql: &str, key: &str) -> i64 {
    sqlx::query_scalar(sql)
        .bind(key)
        .fetch_one(&app.db)
        .await
        .expect("count")
}

async fn fair_app(infra: &Infra, s: &Settings, ds: &Downstream) -> TestApp {
    let limit = s.fair_limit;
    start_app(infra, s, &ds.url, move |c| {
        c.max_concurrency = limit;
    })
    .await
}

fn downstream(s: &Settings) -> sluicegate::fake_downstream::Builder {
    FakeDownstream::builder().work(Work::Fixed(s.fair_work)).record(false)
}

pub async fn fairness_run(infra: &Infra, s: &Settings, to_the_end: bool) -> FairRun {
    let http = &infra.http;
    let mut run = FairRun::default();

    // 1. Key `a` queues its backlog, then key `b` a few jobs.
    let ds = Downstream::start_with(downstream(s)).await;
    let app = fair_app(infra, s, &ds).await;
    let m0 = metrics(http, &app.base).await;
    let ticker = DrainTicker::start(http.clone(), &app.base, TICK);
    submit_keyed(http, &app.base, s.fair_big, "a").await;
    let b_started = Instant::now();
    submit_keyed(http, &app.base, s.fair_small, "b").await;
    let small = s.fair_small as i64;
    let deadline = Instant::now() + Duration::from_secs(600);
    while count(
        &app,
        "SELECT count(*) FROM jobs WHERE key = $1 AND status = 'succeeded'",
        "b",
    )
    .await
        < small
    {
        assert!(Instant::now() < deadline, "key b never finished");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    run.small_done_s = b_started.elapsed().as_secs_f64();
    if to_the_end {
        let total = (s.fair_big + s.fair_small) as u64;
        ds.wait_completed(total, Duration::from_secs(900), "fairness backlog")
            .await;
        let m1 = metrics(http, &app.base).await;
        // The submissions' own SendMessageBatch requests are not the drains'.
        let mut ops = sqs_ops(&m0, &m1);
        ops.remove("SendMessageBatch");
        run.sqs_per_job = Some(ops.values().sum::<f64>() / total as f64);
        run.sqs_by_op = ops.into_iter().map(|(op, n)| (op, n / total as f64)).collect();
    }
    ticker.stop().await;
    run.max_held = ds.counters().max_held();
    dispose(app).await;

    // 2. Weights 1 and 3, both with a backlog: the share of occupied slots.
    let ds = Downstream::start_with(downstream(s)).await;
    let app = fair_app(infra, s, &ds).await;
    let r = http
        .put(format!("{}/keys/b", app.base))
        .bearer_auth(API_TOKEN)
        .json(&json!({"weight": 3}))
        .send()
        .await
        .expect("PUT /keys/b");
    assert!(r.status().is_success());
    submit_keyed(http, &app.base, s.fair_weighted, "a").await;
    submit_keyed(http, &app.base, s.fair_weighted, "b").await;
    let ticker = DrainTicker::start(http.clone(), &app.base, TICK);
    // Sampled from the second second to the sixth, while both have work.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (mut a_slots, mut b_slots) = (0i64, 0i64);
    let live = "SELECT count(*) FROM jobs WHERE key = $1 AND status IN ('dispatching', 'running')";
    let until = Instant::now() + Duration::from_secs(5);
    while Instant::now() < until {
        a_slots += count(&app, live, "a").await;
        b_slots += count(&app, live, "b").await;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let queued = "SELECT count(*) FROM jobs WHERE key = $1 AND status = 'queued'";
    assert!(
        count(&app, queued, "a").await > 0 && count(&app, queued, "b").await > 0,
        "both keys still had work at the end of the sampling"
    );
    run.weighted_share = b_slots as f64 / (a_slots + b_slots).max(1) as f64;
    ticker.stop().await;
    run.max_held = run.max_held.max(ds.counters().max_held());
    dispose(app).await;
    run
}

/// The report's section.
pub fn section(o: &mut String, k: &mut Facts, s: &Settings, runs: &[FairRun]) {
    if runs.is_empty() {
        return;
    }
    let fair_share_s = s.fair_small as f64 * s.fair_work.as_secs_f64() / (f64::from(s.fair_limit) / 2.0);
    let _ = writeln!(
        o,
        "\n## e. Fairness across keys\n\nLimit {limit}, every job takes {work} ms downstream (callback at the end), \
         `REFILL_ON_CALLBACK=true`, `POST /drain` every second. **Backlog:** key `a` queues {big} jobs \
         (`/jobs/batch`), then key `b` {small}; measured from the start of `b`'s submission to its last job \
         `succeeded` (from Postgres). With half of the slots, `b` needs {fair:.1} s ({small} × {work} ms ÷ {half}); \
         the target is at most twice that. SQS requests per completed job: every request of the drains (receive, \
         delete, visibility) over the whole backlog, divided by the jobs, in the first run only (it waits for \
         all {total} jobs; the other runs stop once `b` is done). **Weights:** `a` weight 1 and `b` weight 3, \
         {weighted} jobs each queued before the drains start; `b`'s share of the occupied slots, sampled every \
         50 ms from the 2nd to the 6th second (both keys still had queued jobs at the end).\n",
        limit = s.fair_limit,
        work = s.fair_work.as_millis(),
        big = s.fair_big,
        small = s.fair_small,
        fair = fair_share_s,
        half = s.fair_limit / 2,
        total = s.fair_big + s.fair_small,
        weighted = s.fair_weighted,
    );
    o.push_str(TABLE_HEAD);
    let done: Vec<f64> = runs.iter().map(|r| r.small_done_s).collect();
    keep(
        k,
        "fair_small_done",
        o,
        &format!("key `b` ({} jobs) done after, s", s.fair_small),
        &done,
        2,
    );
    let ratio: Vec<f64> = done.iter().map(|d| d / fair_share_s).collect();
    keep(
        k,
        "fair_ratio",
        o,
        "**… ÷ its fair-share time** (target ≤ 2)",
        &ratio,
        2,
    );
    let share: Vec<f64> = runs.iter().map(|r| r.weighted_share).collect();
    keep(
        k,
        "fair_weighted",
        o,
        "**weight 3 vs 1: share of the slots** (target 0.75 ± 0.05)",
        &share,
        3,
    );
    let sqs: Vec<f64> = runs.iter().filter_map(|r| r.sqs_per_job).collect();
    if !sqs.is_empty() {
        keep(
            k,
            "fair_sqs",
            o,
            "**SQS requests per completed job** (drains; target ≤ 0.3)",
            &sqs,
            3,
        );
        let ops: BTreeSet<&String> = runs.iter().flat_map(|r| r.sqs_by_op.keys()).collect();
        for op in ops {
            let per_job: Vec<f64> = runs
                .iter()
                .filter(|r| r.sqs_per_job.is_some())
                .map(|r| r.sqs_by_op.get(op).copied().unwrap_or(0.0))
                .collect();
            let summary = row(o, &format!("… of which `{op}`"), &per_job, 3);
            if let Some(key) = FAIR_SQS_OPS.iter().find(|(name, _)| name == op).map(|(_, key)| *key) {
                k.insert(key, summary);
            }
        }
    }
    let held: Vec<f64> = runs.iter().map(|r| r.max_held as f64).collect();
    keep(
        k,
        "fair_max_held",
        o,
        &format!("max jobs the downstream held (limit {})", s.fair_limit),
        &held,
        0,
    );
}

pub fn interpretation(p: &mut String, k: &Facts, s: &Settings) {
    if !k.contains_key("fair_small_done") {
        return;
    }
    let op = |name: &str| k.get(name).map_or(f64::NAN, |x| x.median);
    let _ = write!(
        p,
        "**Fairness:** key `b`'s {} jobs, queued behind {} of key `a` in the same SQS queue, were done {:.2} s \
         after their submission, {:.2}× their fair-share time (2× aimed at): drains take the messages into the \
         intake window (even with every slot busy) and each freed slot goes to the key with the fewest occupied \
         slots per weight, so `b` does not wait for `a`'s backlog to be dispatched — but it waits for it to be \
         *taken in*: the emulator hands messages out in the order they were sent, so the {} ahead of `b`'s are \
         received and written into the window first, on these two cores while they also dispatch; `b`'s jobs \
         then need about 1 s at 5 slots. With weights 3 and 1 `b` held {:.3} of the occupied slots: a free slot \
         goes to the key with the lowest `(live + ½) / weight`, ties at random, so `b` holds 7 or 8 of the 10 \
         slots by turns (7.5 cannot be held). The drains spent {:.3} SQS requests per completed job ({:.3} \
         `ReceiveMessage`, {:.3} `DeleteMessageBatch`, {:.3} `ChangeMessageVisibilityBatch`): each message is \
         received and deleted once in batches of ten (refill drains' deletes wait up to 200 ms for company), \
         and only a job still waiting when its first visibility (the dispatch lease, 70 s) is about to run too \
         short to reserve it — here those of the 50 s backlog that wait longer than about 30 s — has it \
         extended, in batches of ten; the rest are receives that found SQS empty (one a second once the window \
         holds the backlog) and partial batches. ",
        s.fair_small,
        s.fair_big,
        med(k, "fair_small_done"),
        med(k, "fair_ratio"),
        s.fair_big,
        med(k, "fair_weighted"),
        med(k, "fair_sqs"),
        op("fair_sqs_ReceiveMessage"),
        op("fair_sqs_DeleteMessageBatch"),
        op("fair_sqs_ChangeMessageVisibilityBatch"),
    );
}
