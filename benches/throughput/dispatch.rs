//! b. Dispatch throughput: a backlog drained through a downstream that calls
//! back after a fixed time.

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    sync::atomic::{AtomicUsize, Ordering},
    time::{Duration, Instant},
};

use axum::body::Bytes;
use serde_json::{Value, json};
use sluicegate::config::Config;
use sluicegate_testkit::{Downstream, FakeDownstream, Work};

use crate::{
    Facts, Infra, Settings,
    cpu::{CpuUse, cpu_rows},
    keep,
    load::{DrainTicker, db_stats, delta, dispose, enqueue_backlog, enqueue_batches, metrics, sqs_ops, start_app},
    med,
    stats::{TABLE_HEAD, row, summarize},
};

#[derive(Default)]
pub struct DispatchRun {
    pub jobs_per_s: f64,
    pub makespan_s: f64,
    pub sqs_per_job: f64,
    pub sqs_ops_per_job: BTreeMap<String, f64>,
    pub drains_per_job: f64,
    /// Postgres transactions, rows inserted, updated, deleted, per job.
    pub pg_per_job: [f64; 4],
    pub max_held: i64,
    pub drain_calls: u64,
    pub drain_failures: u64,
    pub callback_errors: u64,
    pub cpu: CpuUse,
    /// The same backlog spread over [`KEYS`] keys.
    pub keyed: Keyed,
}

/// Keys the backlog is spread over in the keyed run.
const KEYS: usize = 100;

/// What the keyed run is compared on.
#[derive(Default, Clone, Copy)]
pub struct Keyed {
    pub jobs_per_s: f64,
    pub pg_tx_per_job: f64,
    pub max_held: i64,
}

/// One run without keys (every job in the default key), then one with the
/// backlog spread over [`KEYS`] keys.
pub async fn dispatch_run(infra: &Infra, s: &Settings) -> DispatchRun {
    let mut run = dispatch_once(infra, s, None).await;
    let keyed = dispatch_once(infra, s, Some(KEYS)).await;
    run.keyed = Keyed {
        jobs_per_s: keyed.jobs_per_s,
        pg_tx_per_job: keyed.pg_per_job[0],
        max_held: keyed.max_held,
    };
    run
}

/// b's downstream (it accepts at once and calls back after
/// `dispatch_work`) and its service settings (limit `dispatch_limit`,
/// refill on callback); h uses them too.
pub async fn dispatch_setup(s: &Settings) -> (Downstream, impl Fn(&mut Config) + Clone + Send + 'static) {
    let ds = Downstream::start_with(
        FakeDownstream::builder()
            .work(Work::Fixed(s.dispatch_work))
            .record(false),
    )
    .await;
    let limit = s.dispatch_limit;
    let configure = move |c: &mut Config| {
        c.max_concurrency = limit;
        c.refill_on_callback = true;
    };
    (ds, configure)
}

async fn dispatch_once(infra: &Infra, s: &Settings, keys: Option<usize>) -> DispatchRun {
    let (ds, configure) = dispatch_setup(s).await;
    let http = &infra.http;
    let n = s.dispatch_jobs;
    // Queue the backlog with one instance, then measure with a fresh one, so
    // that Postgres' statistics (reported by backends at the latest when they
    // exit) separate the two phases.
    let mut first = start_app(infra, s, &ds.url, configure).await;
    match keys {
        None => {
            enqueue_backlog(http, &first.base, n, "dispatch").await;
        }
        Some(keys) => {
            let next = AtomicUsize::new(0);
            enqueue_batches(http, &first.base, n, |size| {
                let jobs: Vec<Value> = (0..size)
                    .map(|_| {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        json!({"payload": {"n": i, "bench": "dispatch"}, "key": format!("k{:03}", i % keys)})
                    })
                    .collect();
                Bytes::from(serde_json::to_vec(&json!({ "jobs": jobs })).expect("JSON"))
            })
            .await;
        }
    }
    first.stop().await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let db_name = first.test_db.name.clone();
    let pg0 = db_stats(&db_name).await;
    let mut app = first.replica().await;

    let m0 = metrics(http, &app.base).await;
    let cpu0 = infra.cpu.snap(None);
    let t0 = Instant::now();
    let ticker = DrainTicker::start(http.clone(), &app.base, Duration::from_secs(1));
    ds.wait_completed(n as u64, Duration::from_secs(300), "dispatch").await;
    let cpu = infra.cpu.since(cpu0, None);
    let makespan = ds.last_done() - t0;
    let (drain_calls, drain_failures) = ticker.stop().await;
    // Drains delete their messages after their submissions returned: let the
    // last ones finish before counting SQS requests.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let m1 = metrics(http, &app.base).await;
    app.stop().await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let pg1 = db_stats(&db_name).await;
    drop(app);
    dispose(first).await;

    let per_job = |x: f64| x / n as f64;
    let ops = sqs_ops(&m0, &m1);
    let total: f64 = ops.values().sum();
    DispatchRun {
        jobs_per_s: n as f64 / makespan.as_secs_f64(),
        makespan_s: makespan.as_secs_f64(),
        sqs_per_job: per_job(total),
        sqs_ops_per_job: ops.into_iter().map(|(k, v)| (k, per_job(v))).collect(),
        drains_per_job: per_job(delta(&m0, &m1, "sluicegate_drain_duration_seconds_count")),
        pg_per_job: std::array::from_fn(|i| per_job(pg1[i] - pg0[i])),
        max_held: ds.counters().max_held(),
        drain_calls,
        drain_failures,
        callback_errors: ds.counters().callback_errors(),
        cpu,
        keyed: Keyed::default(),
    }
}

/// The report's section.
pub fn section(o: &mut String, k: &mut Facts, s: &Settings, dis: &[DispatchRun]) {
    // b.
    let _ = writeln!(
        o,
        "\n## b. Dispatch throughput\n\nA backlog of {} jobs (queued through `/jobs/batch` by a first instance, \
         which is then stopped), limit {}, `REFILL_ON_CALLBACK=true`, `POST /drain` once per second by the bench, \
         against a second instance on the same database and queue. The downstream accepts at once (202) and calls \
         back `succeeded` {} ms later. Time runs from the first drain to the last callback. SQS requests are the \
         delta of `sluicegate_sqs_requests_total` over that time (from `GET /metrics`), drains the delta of \
         `sluicegate_drain_duration_seconds_count` (scheduled and refill drains), Postgres figures the delta of \
         `pg_stat_database` for the run's database (the second instance's whole life). Each run is done twice: \
         every job in the default key, then the same backlog spread over {KEYS} keys (issue 12: Postgres \
         transactions per job with keys at most 10 % above without).\n",
        s.dispatch_jobs,
        s.dispatch_limit,
        s.dispatch_work.as_millis()
    );
    o.push_str(TABLE_HEAD);
    let col = |f: fn(&DispatchRun) -> f64| dis.iter().map(f).collect::<Vec<_>>();
    keep(
        k,
        "djobs",
        o,
        "**jobs completed per second**",
        &col(|r| r.jobs_per_s),
        0,
    );
    row(o, "time to empty the backlog, s", &col(|r| r.makespan_s), 2);
    keep(
        k,
        "sqs",
        o,
        "**SQS requests per job** (all operations)",
        &col(|r| r.sqs_per_job),
        3,
    );
    let ops: Vec<String> = dis
        .iter()
        .flat_map(|r| r.sqs_ops_per_job.keys().cloned())
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .filter(|op| dis.iter().any(|r| r.sqs_ops_per_job.get(op).is_some_and(|v| *v != 0.0)))
        .collect();
    for op in &ops {
        let xs: Vec<f64> = dis
            .iter()
            .map(|r| r.sqs_ops_per_job.get(op).copied().unwrap_or(0.0))
            .collect();
        row(o, &format!("… `{op}` per job"), &xs, 3);
    }
    keep(k, "drains", o, "drains per job", &col(|r| r.drains_per_job), 4);
    keep(
        k,
        "pg_tx",
        o,
        "Postgres transactions per job",
        &col(|r| r.pg_per_job[0]),
        2,
    );
    keep(
        k,
        "pg_ins",
        o,
        "Postgres rows inserted per job",
        &col(|r| r.pg_per_job[1]),
        2,
    );
    keep(
        k,
        "pg_upd",
        o,
        "Postgres rows updated per job",
        &col(|r| r.pg_per_job[2]),
        2,
    );
    row(o, "Postgres rows deleted per job", &col(|r| r.pg_per_job[3]), 2);
    keep(
        k,
        "keyed_djobs",
        o,
        &format!("the same backlog in {KEYS} keys: jobs completed per second"),
        &col(|r| r.keyed.jobs_per_s),
        0,
    );
    keep(
        k,
        "keyed_pg_tx",
        o,
        &format!("… in {KEYS} keys: Postgres transactions per job"),
        &col(|r| r.keyed.pg_tx_per_job),
        2,
    );
    keep(
        k,
        "keyed_pg_ratio",
        o,
        "**… ÷ without keys** (target ≤ 1.10)",
        &col(|r| r.keyed.pg_tx_per_job / r.pg_per_job[0]),
        3,
    );
    row(o, "scheduled `/drain` calls", &col(|r| r.drain_calls as f64), 0);
    row(o, "failed `/drain` calls", &col(|r| r.drain_failures as f64), 0);
    row(
        o,
        "callback retries (non-2xx or error)",
        &col(|r| r.callback_errors as f64),
        0,
    );
    keep(
        k,
        "dheld",
        o,
        &format!("max jobs the downstream held (limit {}; both runs)", s.dispatch_limit),
        &col(|r| r.max_held.max(r.keyed.max_held) as f64),
        0,
    );
    cpu_rows(o, "dispatch", &dis.iter().map(|r| r.cpu).collect::<Vec<_>>(), false);
    k.insert("b_pg", summarize(&col(|r| r.cpu.postgres)));
    k.insert("b_own", summarize(&col(|r| r.cpu.own)));
    k.insert("b_em", summarize(&col(|r| r.cpu.emulator)));
    k.insert("b_machine", summarize(&col(|r| r.cpu.machine)));
}

/// Its paragraph of the interpretation.
pub fn interpretation(p: &mut String, k: &Facts, s: &Settings) {
    let m = |key: &str| med(k, key);
    if !m("djobs").is_nan() {
        let held = k.get("dheld").map_or(f64::NAN, |x| x.max);
        let limit_bound = held >= f64::from(s.dispatch_limit);
        let _ = write!(
            p,
            "**Dispatch:** {:.0} jobs/s with {} ms jobs; the downstream held at most {held:.0} of {} slots, so {} \
             One drain turn fills the free slots from the intake window alone while as many jobs wait there, \
             and otherwise receives for the free slots and a refill's worth ahead (up to twenty `ReceiveMessage` \
             of ten at once); it runs six Postgres round trips one after another (the gate state: limit, \
             live count, Retry-After, the window's size and how many wait in one query; BEGIN with its \
             settings / gate lock / take the messages into the intake window / reserve from the whole window / \
             COMMIT); each job then costs two more statements (the outcome transition and the callback's \
             transition: the callback's token is checked against the attempt this replica issued it for, so \
             the job is not read first) and a share of one per drain (the window rows of the dispatched jobs \
             removed): {:.2} Postgres \
             transactions, {:.1} rows inserted (`job_events`, `intake`; the per-status counts are updated in place, one row per \
             statement and status) and {:.1} \
             rows updated per job, and Postgres was again the largest CPU user ({:.2} cores; emulator {:.2}, bench process \
             {:.2}, machine {:.2}). SQS is cheap: {:.3} requests per job, i.e. full batches of 10 for receive \
             and delete, because a refill drain keeps looping for 70 % of `DRAIN_BUDGET_MS` and the callbacks \
             that arrive meanwhile coalesce into one more drain ({:.4} drains per job). ",
            m("djobs"),
            s.dispatch_work.as_millis(),
            s.dispatch_limit,
            if limit_bound {
                "the limit was reached and bounds the rate."
            } else {
                "the limit was never the constraint: the service's own dispatch pipeline was."
            },
            m("pg_tx"),
            m("pg_ins"),
            m("pg_upd"),
            m("b_pg"),
            m("b_em"),
            m("b_own"),
            m("b_machine"),
            m("sqs"),
            m("drains"),
        );
    }
}
