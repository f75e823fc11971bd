//! i. Scale and retention (issue 13, target 6). **Scale:** the service on
//! a database of [`BASE_ROWS`] finished jobs and on one of
//! `SLUICEGATE_BENCH_SCALE_ROWS` (filled in SQL, with their events, as the
//! service would have written them), the same requests timed on both:
//! single submissions, drains, `GET /stats`, `GET /jobs`. **Retention:** a
//! steady load for `SLUICEGATE_BENCH_RETENTION_RUN_SECS` with
//! `JOB_RETENTION_SECS` short, beside the same load keeping everything, the
//! size of `jobs` and `job_events` sampled as it goes.

use std::{
    fmt::Write as _,
    time::{Duration, Instant},
};

use axum::{body::Bytes, http::StatusCode};
use futures::{StreamExt, future::join_all, stream};
use serde_json::{Value, json};
use sluicegate::background::PRUNE_BATCH;
use sluicegate_testkit::{API_TOKEN, DRAIN_TOKEN, Downstream, FakeDownstream, Reply, TestApp, Work};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crate::{
    Facts, Infra, Settings,
    chart::{self, Line},
    load::{DrainTicker, admin, dispose, post_batch, start_app},
    med,
    stats::{Summary, fmt_num, percentile, summarize},
};

/// Finished jobs in the reference database (the target compares with it).
pub const BASE_ROWS: usize = 10_000;
/// Jobs inserted per fill statement (with their events).
const FILL_CHUNK: usize = 100_000;
/// The filled jobs were created over this many seconds, ending an hour ago:
/// all of them newer than the default `JOB_RETENTION_SECS` (7 days), so the
/// service's pruner keeps them.
const FILL_SPAN_SECS: f64 = 6.0 * 24.0 * 3600.0;
/// Flow-control keys of the filled jobs: a fifth in `default`, the rest
/// spread over `tenant-00` … `tenant-39` (as in the fill's SQL).
const FILL_KEYS: usize = 40;
/// Single `POST /jobs` timed per run and database; they are then the backlog
/// of the drains.
const SUBMITS: usize = 400;
/// The limit: each timed drain dispatches this many jobs.
const DRAIN_LIMIT: u32 = 50;
/// Calls of each read endpoint per run and database (fewer if they are slow,
/// see [`READ_BUDGET`]).
const READS: usize = 50;
/// Time one endpoint's reads may take per run and database; at least
/// [`MIN_READS`] are made whatever it takes.
const READ_BUDGET: Duration = Duration::from_secs(20);
const MIN_READS: usize = 5;

/// What is timed, in the report's order.
pub const OPS: [&str; 6] = [
    "`POST /jobs` (one job)",
    "`POST /drain` (dispatches 50 of a backlog)",
    "`GET /stats`",
    "`GET /jobs` (first page)",
    "`GET /jobs?status=queued` (none queued)",
    "`GET /jobs?key=tenant-07`",
];
/// The read endpoints (the last four of [`OPS`]).
const READ_PATHS: [&str; 4] = ["/stats", "/jobs", "/jobs?status=queued", "/jobs?key=tenant-07"];

/// `JOB_RETENTION_SECS` of the retention run.
pub const RETENTION_SECS: u64 = 10;
/// The service's `background::PRUNE_INTERVAL` (private there): how often a
/// replica prunes. Not configurable, so the retention run lasts several of them.
const PRUNE_INTERVAL_SECS: u64 = 60;
/// The retention run's load: a `POST /jobs/batch` of this many jobs …
const RET_BATCH: usize = 10;
/// … this often (50 jobs/s per instance).
const RET_EVERY: Duration = Duration::from_millis(200);
/// Its downstream: limit, and the time a job works before its callback.
const RET_LIMIT: u32 = 20;
const RET_WORK: Duration = Duration::from_millis(20);
/// Pool of each retention instance (up to three run at once).
const RET_POOL: u32 = 8;
/// How often the tables are measured.
const SAMPLE_EVERY: Duration = Duration::from_secs(5);
/// A size whose mean over the last third of the run is within this factor
/// of its mean over the middle third has levelled off.
const FLAT: f64 = 1.1;
/// Rows of the sample table in the report: one every this many samples.
const TABLE_EVERY: usize = 6;

// ------------------------------------------------------------- scale

/// One database's fill.
#[derive(Clone, Copy, Default)]
pub struct Fill {
    /// The inserts (jobs, events, the per-status counts by the triggers).
    pub insert_s: f64,
    /// `VACUUM (ANALYZE)` afterwards.
    pub vacuum_s: f64,
    pub jobs: i64,
    pub events: i64,
    /// `pg_total_relation_size` (heap, indexes, TOAST), MiB.
    pub jobs_mib: f64,
    pub events_mib: f64,
    pub db_mib: f64,
}

/// p50 and p90 of one operation in one run, ms.
#[derive(Clone, Copy, Default)]
pub struct Pct {
    pub p50: f64,
    pub p90: f64,
}

/// One run: every operation on the small and on the large database, their
/// calls interleaved.
#[derive(Clone, Copy, Default)]
pub struct ScaleRun {
    pub small: [Pct; 6],
    pub large: [Pct; 6],
    /// Reads made per endpoint on each database (fewer than [`READS`] when
    /// they were slow).
    pub large_reads: [usize; 4],
}

pub struct ScaleResult {
    pub fills: [Fill; 2],
    pub runs: Vec<ScaleRun>,
}

/// Inserts jobs `$1..=$2` of `$3` (finished, created over
/// [`FILL_SPAN_SECS`] from `to_timestamp($5)`) and their events, in one
/// statement. Statuses: 90 % succeeded, 6 % failed, 2 % timed out, 2 %
/// cancelled; ids are UUIDv7 of their creation time (as the service makes
/// them); a quarter have an `Idempotency-Key` and its request hash. Events
/// are those the service writes for that life: submitted, reserved,
/// accepted (`downstream 202`), then the callback or the expired lease; a
/// cancelled job's are submitted and cancelled. The statement triggers on
/// `jobs` keep `job_counts` as for any insert.
const FILL_SQL: &str = r#"
WITH ins AS (
  INSERT INTO jobs (id, status, payload, result, error, attempts, max_attempts, timeout_secs,
                    idempotency_key, request_hash, created_at, started_at, finished_at, available_at,
                    lease_expires_at, enqueued_at, busy_refusals, key, priority)
  SELECT
    (lpad(to_hex((extract(epoch FROM g.created_at) * 1000)::bigint), 12, '0') || '7' || substr(g.h, 1, 3)
       || '8' || substr(g.h, 4, 15))::uuid,
    g.status, g.payload::json,
    CASE g.status WHEN 'succeeded' THEN format('{"output":"s3://bench/out/%s.bin","ms":%s}', g.i, g.work_ms)::json END,
    CASE g.status WHEN 'failed' THEN 'worker exited with status 1'
                  WHEN 'timed_out' THEN 'lease expired: no callback or heartbeat in time' END,
    CASE g.status WHEN 'cancelled' THEN 0 ELSE 1 END, 5, 900,
    CASE WHEN g.u % 4 = 0 THEN 'req-' || g.h END,
    CASE WHEN g.u % 4 = 0 THEN decode(g.h || md5(g.h), 'hex') END,
    g.created_at,
    CASE WHEN g.status <> 'cancelled' THEN g.started_at END,
    g.finished_at, g.finished_at, NULL, g.created_at, 0, g.key, 0
  FROM (
    SELECT s.*,
           CASE WHEN s.status = 'cancelled' THEN s.created_at + make_interval(secs => 5 + s.u % 60)
                WHEN s.status = 'timed_out' THEN s.started_at + interval '900 s'
                ELSE s.started_at + make_interval(secs => s.work_ms / 1000.0) END AS finished_at
    FROM (
      SELECT i, h, u, created_at, payload, key, work_ms,
             created_at + make_interval(secs => 0.02 + (u % 1000) / 1000.0) AS started_at,
             CASE WHEN u % 100 < 90 THEN 'succeeded' WHEN u % 100 < 96 THEN 'failed'
                  WHEN u % 100 < 98 THEN 'timed_out' ELSE 'cancelled' END::job_status AS status
      FROM (
        SELECT i, md5(i::text || $4::text) AS h, abs(hashint8(i)) AS u,
               to_timestamp($5::float8) + (i::float8 / $3::bigint) * make_interval(secs => $6::float8) AS created_at,
               format('{"input":"s3://bench/in/%s.bin","params":{"quality":"high","n":%s}}', i, i) AS payload,
               CASE WHEN abs(hashint8extended(i, 1)) % 5 = 0 THEN 'default'
                    ELSE 'tenant-' || lpad((abs(hashint8extended(i, 2)) % $7::int)::text, 2, '0') END AS key,
               200 + abs(hashint8extended(i, 3)) % 60000 AS work_ms
        FROM generate_series($1::bigint, $2::bigint) AS i) r) s) g
  RETURNING id, status, created_at, started_at, finished_at)
INSERT INTO job_events (job_id, at, from_status, to_status, attempt, reason)
SELECT ins.id, e.at, e.from_status, e.to_status, e.attempt, e.reason
FROM ins, LATERAL (VALUES
  (0, ins.created_at, NULL::job_status, 'queued'::job_status, 0, 'submitted'),
  (1, ins.started_at - interval '2 ms', 'queued', 'dispatching', 1, 'slot reserved by drain'),
  (2, ins.started_at, 'dispatching', 'running', 1, 'downstream 202'),
  (3, ins.finished_at, 'running', ins.status, 1,
      CASE ins.status WHEN 'timed_out' THEN 'lease expired' ELSE 'callback' END),
  (9, ins.finished_at, 'queued', 'cancelled', 0, 'cancelled by client')
) AS e(n, at, from_status, to_status, attempt, reason)
WHERE CASE WHEN ins.status = 'cancelled' THEN e.n IN (0, 9) ELSE e.n <> 9 END
ORDER BY ins.created_at, e.n
"#;

fn mib(bytes: f64) -> f64 {
    bytes / 1024.0 / 1024.0
}

fn ms_since(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1e3
}

/// Fills the (fresh, migrated) database with `rows` finished jobs, then
/// `VACUUM (ANALYZE)`: a table autovacuum has visited.
async fn fill(db: &PgPool, rows: usize) -> Fill {
    let t0: f64 = sqlx::query_scalar("SELECT extract(epoch FROM now())::float8 - $1 - 3600")
        .bind(FILL_SPAN_SECS)
        .fetch_one(db)
        .await
        .expect("now");
    let salt = rows.to_string();
    let started = Instant::now();
    let mut lo = 1;
    while lo <= rows {
        let hi = (lo + FILL_CHUNK - 1).min(rows);
        sqlx::query(FILL_SQL)
            .bind(lo as i64)
            .bind(hi as i64)
            .bind(rows as i64)
            .bind(&salt)
            .bind(t0)
            .bind(FILL_SPAN_SECS)
            .bind(FILL_KEYS as i32)
            .execute(db)
            .await
            .expect("fill jobs and events");
        if hi % 1_000_000 == 0 && hi < rows {
            eprintln!(
                "   filled {hi} of {rows} jobs in {:.0} s",
                started.elapsed().as_secs_f64()
            );
        }
        lo = hi + 1;
    }
    let insert_s = started.elapsed().as_secs_f64();
    let started = Instant::now();
    sqlx::query("VACUUM (ANALYZE)").execute(db).await.expect("VACUUM");
    let vacuum_s = started.elapsed().as_secs_f64();
    let (jobs, events, counted): (i64, i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM jobs), (SELECT count(*) FROM job_events),
                (SELECT coalesce(sum(n), 0)::bigint FROM job_counts)",
    )
    .fetch_one(db)
    .await
    .expect("count");
    assert_eq!(jobs, rows as i64, "every job of the fill is there");
    assert_eq!(counted, jobs, "job_counts agrees with the rows after the fill");
    let (j, e, d): (i64, i64, i64) = sqlx::query_as(
        "SELECT pg_total_relation_size('jobs'), pg_total_relation_size('job_events'),
                pg_database_size(current_database())",
    )
    .fetch_one(db)
    .await
    .expect("sizes");
    Fill {
        insert_s,
        vacuum_s,
        jobs,
        events,
        jobs_mib: mib(j as f64),
        events_mib: mib(e as f64),
        db_mib: mib(d as f64),
    }
}

fn pct(mut xs: Vec<f64>) -> Pct {
    Pct {
        p50: percentile(&mut xs, 50.0),
        p90: percentile(&mut xs, 90.0),
    }
}

async fn get_ok(http: &reqwest::Client, url: &str) -> f64 {
    let t = Instant::now();
    let r = http.get(url).bearer_auth(API_TOKEN).send().await.expect("GET");
    assert_eq!(r.status(), StatusCode::OK, "GET {url}");
    let _ = r.bytes().await.expect("the body");
    ms_since(t)
}

/// Which instance goes first in the `i`-th pair of calls: the small and the
/// large database take turns.
fn order(i: usize) -> [usize; 2] {
    if i % 2 == 0 { [0, 1] } else { [1, 0] }
}

/// One `POST /jobs`, ms.
async fn submit(http: &reqwest::Client, app: &TestApp, tag: &str, i: usize) -> f64 {
    let body = json!({
        "payload": {"input": format!("s3://bench/in/{tag}-{i}.bin"), "params": {"quality": "high"}},
        "key": format!("tenant-{:02}", i % FILL_KEYS),
    });
    let t = Instant::now();
    let r = http
        .post(format!("{}/jobs", app.base))
        .bearer_auth(API_TOKEN)
        .json(&body)
        .send()
        .await
        .expect("POST /jobs");
    assert_eq!(r.status(), StatusCode::ACCEPTED, "POST /jobs");
    let _ = r.bytes().await;
    ms_since(t)
}

/// One `POST /drain` (timed, ms) that must fill the [`DRAIN_LIMIT`] free
/// slots; then the callbacks of the jobs it dispatched (untimed), which
/// free the slots again.
async fn drain_once(http: &reqwest::Client, app: &TestApp, ds: &Downstream) -> f64 {
    let seen = ds.seen().len();
    let t = Instant::now();
    let r = http
        .post(format!("{}/drain", app.base))
        .bearer_auth(DRAIN_TOKEN)
        .send()
        .await
        .expect("POST /drain");
    assert_eq!(r.status(), StatusCode::OK, "POST /drain");
    let report: Value = r.json().await.expect("the drain's report");
    let took = ms_since(t);
    assert_eq!(
        report["dispatched"],
        json!(DRAIN_LIMIT),
        "every drain fills its slots: {report}"
    );
    let submitted = ds.seen();
    assert_eq!(
        submitted.len(),
        seen + DRAIN_LIMIT as usize,
        "the downstream got the drain's jobs"
    );
    let called: Vec<StatusCode> = stream::iter(&submitted[seen..])
        .map(|job| async move {
            let token = job.body["callback_token"].as_str().expect("a callback token");
            let body =
                json!({"status": "succeeded", "result": {"output": format!("s3://bench/out/{}.bin", job.job_id)}});
            app.callback(&job.job_id, token, body).await.status()
        })
        .buffer_unordered(8)
        .collect()
        .await;
    assert!(called.iter().all(StatusCode::is_success), "callbacks: {called:?}");
    took
}

/// One run on both instances, their calls interleaved one by one (the
/// machine's background load falls on both alike): [`SUBMITS`] single
/// submissions to each, the drains that dispatch them ([`DRAIN_LIMIT`]
/// each: the downstream holds the jobs, and the bench calls them back,
/// untimed, before the next drain), then the reads (the queue empty again).
async fn measure(http: &reqwest::Client, apps: &[(TestApp, Downstream)], tag: &str) -> ScaleRun {
    let mut lat: [[Vec<f64>; 6]; 2] = Default::default();
    for i in 0..SUBMITS {
        for which in order(i) {
            lat[which][0].push(submit(http, &apps[which].0, tag, i).await);
        }
    }
    for d in 0..SUBMITS / DRAIN_LIMIT as usize {
        for which in order(d) {
            let (app, ds) = &apps[which];
            lat[which][1].push(drain_once(http, app, ds).await);
        }
    }
    let mut run = ScaleRun::default();
    for (j, path) in READ_PATHS.iter().enumerate() {
        let started = Instant::now();
        let mut n = 0;
        while n < READS && (n < MIN_READS || started.elapsed() < READ_BUDGET) {
            for which in order(n) {
                lat[which][2 + j].push(get_ok(http, &format!("{}{path}", apps[which].0.base)).await);
            }
            n += 1;
        }
        run.large_reads[j] = n;
    }
    let [small, large] = lat;
    run.small = small.map(pct);
    run.large = large.map(pct);
    run
}

async fn scale_app(infra: &Infra, s: &Settings) -> (TestApp, Downstream) {
    // Accepts and holds every job (a drain stops when its slots are full);
    // the bench calls back.
    let ds = Downstream::start(|_| Reply::status(202)).await;
    // Drains only when the bench asks (timed); the default retention, so
    // the pruner runs as in production (and finds nothing to prune).
    let app = start_app(infra, s, &ds.url, |c| {
        c.max_concurrency = DRAIN_LIMIT;
        c.refill_on_callback = false;
    })
    .await;
    (app, ds)
}

/// Fills a database of [`BASE_ROWS`] and one of `s.scale_rows` finished
/// jobs, then times the same operations on both, `s.runs` times.
pub async fn scale_run(infra: &Infra, s: &Settings) -> ScaleResult {
    let http = &infra.http;
    let mut apps = Vec::new();
    let mut fills = [Fill::default(); 2];
    for (i, rows) in [BASE_ROWS, s.scale_rows].into_iter().enumerate() {
        let (app, ds) = scale_app(infra, s).await;
        // The test kit's own pool: no settings of the service's (its
        // statements may take minutes).
        let f = fill(&app.db, rows).await;
        eprintln!(
            "   filled {rows} jobs ({} events) in {:.0} s + VACUUM (ANALYZE) {:.0} s: jobs {:.0} MiB, \
             job_events {:.0} MiB",
            f.events, f.insert_s, f.vacuum_s, f.jobs_mib, f.events_mib
        );
        fills[i] = f;
        // Warm up: connections, prepared statements.
        for path in READ_PATHS {
            for _ in 0..3 {
                get_ok(http, &format!("{}{path}", app.base)).await;
            }
        }
        apps.push((app, ds));
    }
    let mut runs = Vec::new();
    for r in 0..s.runs {
        let run = measure(http, &apps, &format!("r{r}")).await;
        eprintln!(
            "   run {}: p50 ms {} → {}",
            r + 1,
            run.small
                .iter()
                .map(|p| format!("{:.2}", p.p50))
                .collect::<Vec<_>>()
                .join(" / "),
            run.large
                .iter()
                .map(|p| format!("{:.2}", p.p50))
                .collect::<Vec<_>>()
                .join(" / "),
        );
        runs.push(run);
    }
    for (app, _ds) in apps {
        dispose(app).await;
    }
    ScaleResult { fills, runs }
}

// ------------------------------------------------------------- retention

/// One sample of an instance's tables.
#[derive(Clone, Copy, Default)]
pub struct Sample {
    /// Seconds from the start of the run.
    pub t: f64,
    pub jobs: i64,
    pub events: i64,
    /// `pg_total_relation_size` of `jobs` and `job_events`, MiB.
    pub jobs_mib: f64,
    pub events_mib: f64,
}

impl Sample {
    fn total_mib(&self) -> f64 {
        self.jobs_mib + self.events_mib
    }
}

/// One instance of the retention run.
pub struct Variant {
    pub name: String,
    pub retention_secs: u64,
    /// Whether the bench vacuumed its tables as autovacuum would (the
    /// server's autovacuum being off).
    pub standin: bool,
    pub samples: Vec<Sample>,
    pub submitted: u64,
    pub failed_batches: u64,
    pub completed: u64,
    pub max_held: i64,
    pub vacuums: u64,
    pub analyzes: u64,
    /// `POST /jobs/batch` latencies, ms: p50, p99, max.
    pub batch_ms: [f64; 3],
}

pub struct Retention {
    /// The server's `autovacuum` setting.
    pub autovacuum: bool,
    pub secs: f64,
    pub variants: Vec<Variant>,
}

/// The server's autovacuum thresholds (`pg_settings`), which the stand-in
/// applies when the server's own autovacuum is off.
#[derive(Clone, Copy)]
struct Autovacuum {
    naptime: Duration,
    vac_threshold: f64,
    vac_scale: f64,
    ins_threshold: f64,
    ins_scale: f64,
    analyze_threshold: f64,
    analyze_scale: f64,
}

async fn autovacuum_settings() -> (bool, Autovacuum) {
    let mut conn = admin().await;
    let rows: Vec<(String, String)> =
        sqlx::query_as("SELECT name::text, setting::text FROM pg_settings WHERE name LIKE 'autovacuum%'")
            .fetch_all(&mut conn)
            .await
            .expect("pg_settings");
    let get = |name: &str| -> f64 {
        rows.iter()
            .find(|(n, _)| n == name)
            .and_then(|(_, v)| v.parse().ok())
            .unwrap_or_else(|| panic!("pg_settings has {name}"))
    };
    let on = rows.iter().any(|(n, v)| n == "autovacuum" && v == "on");
    (
        on,
        Autovacuum {
            naptime: Duration::from_secs_f64(get("autovacuum_naptime")),
            vac_threshold: get("autovacuum_vacuum_threshold"),
            vac_scale: get("autovacuum_vacuum_scale_factor"),
            ins_threshold: get("autovacuum_vacuum_insert_threshold"),
            ins_scale: get("autovacuum_vacuum_insert_scale_factor"),
            analyze_threshold: get("autovacuum_analyze_threshold"),
            analyze_scale: get("autovacuum_analyze_scale_factor"),
        },
    )
}

/// What autovacuum would do to this database: every naptime, `VACUUM` the
/// tables whose dead (or newly inserted) rows pass its thresholds, `ANALYZE`
/// those changed enough. (Unthrottled: a manual VACUUM has no cost delay.)
/// The first visit comes half a naptime after the start: autovacuum's
/// phase is arbitrary, and this one falls between the pruner's passes
/// rather than on them. Returns (vacuums, analyzes).
async fn autovacuum_standin(db: PgPool, av: Autovacuum, stop: CancellationToken) -> (u64, u64) {
    let mut t = tokio::time::interval_at(tokio::time::Instant::now() + av.naptime / 2, av.naptime);
    let (mut vacuums, mut analyzes) = (0, 0);
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = t.tick() => {}
        }
        let Ok(tables) = sqlx::query_as::<_, (String, i64, i64, i64, f64)>(
            "SELECT s.relname::text, s.n_dead_tup, s.n_ins_since_vacuum, s.n_mod_since_analyze,
                    greatest(c.reltuples, 0)::float8
             FROM pg_stat_user_tables s JOIN pg_class c ON c.oid = s.relid",
        )
        .fetch_all(&db)
        .await
        else {
            continue;
        };
        for (rel, dead, inserted, modified, tuples) in tables {
            let vacuum = dead as f64 > av.vac_threshold + av.vac_scale * tuples
                || inserted as f64 > av.ins_threshold + av.ins_scale * tuples;
            let analyze = modified as f64 > av.analyze_threshold + av.analyze_scale * tuples;
            let sql = match (vacuum, analyze) {
                (true, true) => format!("VACUUM (ANALYZE) \"{rel}\""),
                (true, false) => format!("VACUUM \"{rel}\""),
                (false, true) => format!("ANALYZE \"{rel}\""),
                (false, false) => continue,
            };
            if sqlx::query(&sql).execute(&db).await.is_ok() {
                vacuums += u64::from(vacuum);
                analyzes += u64::from(analyze);
            }
        }
    }
    (vacuums, analyzes)
}

async fn sample(db: &PgPool, t: f64) -> Sample {
    let (jobs, events, j, e): (i64, i64, i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM jobs), (SELECT count(*) FROM job_events),
                pg_total_relation_size('jobs'), pg_total_relation_size('job_events')",
    )
    .fetch_one(db)
    .await
    .expect("a sample of the tables");
    Sample {
        t,
        jobs,
        events,
        jobs_mib: mib(j as f64),
        events_mib: mib(e as f64),
    }
}

/// Posts a batch of [`RET_BATCH`] jobs every [`RET_EVERY`] (each on its
/// own, so a slow one does not delay the next) until `stop`: (jobs
/// accepted, failed batches, latencies in ms).
async fn steady_load(http: reqwest::Client, base: String, stop: CancellationToken) -> (u64, u64, Vec<f64>) {
    let mut t = tokio::time::interval(RET_EVERY);
    let mut inflight = Vec::new();
    let mut n = 0usize;
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = t.tick() => {}
        }
        let jobs: Vec<Value> = (0..RET_BATCH)
            .map(|_| {
                n += 1;
                json!({"payload": {"input": format!("s3://bench/in/{n}.bin")}, "key": format!("tenant-{:02}", n % 8)})
            })
            .collect();
        let body = Bytes::from(serde_json::to_vec(&json!({ "jobs": jobs })).expect("JSON"));
        let (http, base) = (http.clone(), base.clone());
        inflight.push(tokio::spawn(async move {
            let t = Instant::now();
            let accepted = post_batch(&http, &base, body).await;
            (accepted, ms_since(t))
        }));
    }
    let (mut ok, mut failed, mut lat) = (0, 0, Vec::new());
    for r in join_all(inflight).await {
        match r {
            Ok((Some(n), ms)) => {
                ok += n;
                lat.push(ms);
            }
            _ => failed += 1,
        }
    }
    (ok, failed, lat)
}

async fn retention_variant(
    infra: &Infra,
    s: &Settings,
    name: String,
    retention_secs: u64,
    standin: Option<Autovacuum>,
) -> Variant {
    let ds = Downstream::start_with(FakeDownstream::builder().work(Work::Fixed(RET_WORK)).record(false)).await;
    let app = start_app(infra, s, &ds.url, move |c| {
        c.max_concurrency = RET_LIMIT;
        c.refill_on_callback = true;
        c.job_retention_secs = retention_secs;
        c.database_pool_size = RET_POOL;
    })
    .await;
    let run = Duration::from_secs_f64(s.retention_run_secs);
    let stop = CancellationToken::new();
    let started = Instant::now();
    let ticker = DrainTicker::start(infra.http.clone(), &app.base, Duration::from_secs(1));
    let load = tokio::spawn(steady_load(infra.http.clone(), app.base.clone(), stop.clone()));
    let vacuum = standin.map(|av| tokio::spawn(autovacuum_standin(app.db.clone(), av, stop.clone())));
    let mut samples = Vec::new();
    let mut t = tokio::time::interval(SAMPLE_EVERY);
    loop {
        t.tick().await;
        let at = started.elapsed();
        samples.push(sample(&app.db, at.as_secs_f64()).await);
        if at + SAMPLE_EVERY > run + Duration::from_millis(100) {
            break;
        }
    }
    stop.cancel();
    let (submitted, failed_batches, mut lat) = load.await.expect("the load");
    let (vacuums, analyzes) = match vacuum {
        Some(v) => v.await.expect("the vacuum stand-in"),
        None => (0, 0),
    };
    ticker.stop().await;
    let batch_ms = [
        percentile(&mut lat, 50.0),
        percentile(&mut lat, 99.0),
        lat.iter().copied().fold(f64::NAN, f64::max),
    ];
    let v = Variant {
        name,
        retention_secs,
        standin: standin.is_some(),
        samples,
        submitted,
        failed_batches,
        completed: ds.counters().completed(),
        max_held: ds.counters().max_held(),
        vacuums,
        analyzes,
        batch_ms,
    };
    dispose(app).await;
    assert!(
        v.max_held <= i64::from(RET_LIMIT),
        "i: the downstream held {} jobs, limit {RET_LIMIT}",
        v.max_held
    );
    v
}

/// The retention run: the same steady load on two (three) instances at
/// once, one with `JOB_RETENTION_SECS` = [`RETENTION_SECS`], one keeping
/// everything, and — when the server's autovacuum is off and the bench
/// stands in for it — one with retention and no vacuum at all.
pub async fn retention_run(infra: &Infra, s: &Settings) -> Retention {
    let (autovacuum, av) = autovacuum_settings().await;
    let standin = (!autovacuum).then_some(av);
    let mut variants = vec![
        (format!("retention {RETENTION_SECS} s"), RETENTION_SECS, standin),
        ("retention 0 (keeps everything)".to_owned(), 0, standin),
    ];
    if !autovacuum {
        variants.push((format!("retention {RETENTION_SECS} s, no vacuum"), RETENTION_SECS, None));
    }
    let variants = join_all(
        variants
            .into_iter()
            .map(|(name, secs, standin)| retention_variant(infra, s, name, secs, standin)),
    )
    .await;
    for v in &variants {
        let last = v.samples.last().copied().unwrap_or_default();
        eprintln!(
            "   {}: {} jobs submitted, {} rows at the end, jobs + job_events {:.1} MiB (max {:.1})",
            v.name,
            v.submitted,
            last.jobs,
            last.total_mib(),
            v.samples.iter().map(Sample::total_mib).fold(0.0, f64::max)
        );
    }
    Retention {
        autovacuum,
        secs: s.retention_run_secs,
        variants,
    }
}

/// Flatness of a variant's total size: mean over the middle and the last
/// third of the run, their ratio, the maximum, and the growth over the last
/// third (least squares, MiB per minute).
#[derive(Clone, Copy, Default)]
pub struct Level {
    pub middle: f64,
    pub last: f64,
    pub ratio: f64,
    pub max: f64,
    pub slope_per_min: f64,
}

pub fn level(samples: &[Sample], secs: f64) -> Level {
    let third = |from: f64, to: f64| -> Vec<(f64, f64)> {
        samples
            .iter()
            .filter(|x| x.t >= from && x.t <= to)
            .map(|x| (x.t, x.total_mib()))
            .collect()
    };
    let mean = |xs: &[(f64, f64)]| xs.iter().map(|x| x.1).sum::<f64>() / xs.len() as f64;
    let middle = third(secs / 3.0, 2.0 * secs / 3.0);
    let last = third(2.0 * secs / 3.0, secs + 1.0);
    let slope = {
        let n = last.len() as f64;
        let (mt, my) = (last.iter().map(|x| x.0).sum::<f64>() / n, mean(&last));
        let cov: f64 = last.iter().map(|x| (x.0 - mt) * (x.1 - my)).sum();
        let var: f64 = last.iter().map(|x| (x.0 - mt).powi(2)).sum();
        cov / var * 60.0
    };
    Level {
        middle: mean(&middle),
        last: mean(&last),
        ratio: mean(&last) / mean(&middle),
        max: samples.iter().map(Sample::total_mib).fold(f64::NAN, f64::max),
        slope_per_min: slope,
    }
}

// ------------------------------------------------------------- report

/// `retention.svg`: the size of `jobs` and `job_events` together over the
/// retention run, one line per instance.
pub fn chart(r: &Retention) -> String {
    const COLOURS: [&str; 3] = ["#1f6feb", "#d1242f", "#9a6700"];
    let series: Vec<Vec<(f64, f64)>> = r
        .variants
        .iter()
        .map(|v| v.samples.iter().map(|x| (x.t, x.total_mib())).collect())
        .collect();
    let lines: Vec<Line> = r
        .variants
        .iter()
        .zip(&series)
        .zip(COLOURS.iter().cycle())
        .map(|((v, samples), colour)| Line {
            name: &v.name,
            colour,
            samples,
        })
        .collect();
    chart::series_svg(
        &format!(
            "i. Size of jobs + job_events (MiB) under a steady {:.0} jobs/s; pruned every {PRUNE_INTERVAL_SECS} s",
            RET_BATCH as f64 / RET_EVERY.as_secs_f64()
        ),
        "MiB",
        "seconds from the start of the load",
        &lines,
    )
}

/// Facts keys per operation: p50 on the small and the large database, the
/// ratio of the p50s, the ratio of the p90s.
const K_SMALL: [&str; 6] = ["i_s0", "i_s1", "i_s2", "i_s3", "i_s4", "i_s5"];
const K_LARGE: [&str; 6] = ["i_l0", "i_l1", "i_l2", "i_l3", "i_l4", "i_l5"];
const K_RATIO: [&str; 6] = ["i_r0", "i_r1", "i_r2", "i_r3", "i_r4", "i_r5"];
const K_RATIO90: [&str; 6] = ["i_q0", "i_q1", "i_q2", "i_q3", "i_q4", "i_q5"];
/// Facts keys per retention variant (its order in the run).
const K_LAST: [&str; 3] = ["i_v0_last", "i_v1_last", "i_v2_last"];
const K_MIDDLE: [&str; 3] = ["i_v0_mid", "i_v1_mid", "i_v2_mid"];
const K_LEVEL: [&str; 3] = ["i_v0_ratio", "i_v1_ratio", "i_v2_ratio"];
const K_SLOPE: [&str; 3] = ["i_v0_slope", "i_v1_slope", "i_v2_slope"];
const K_MAX: [&str; 3] = ["i_v0_max", "i_v1_max", "i_v2_max"];

/// A row of the fill table: label, value, decimals, facts keys (small, large).
type FillRow = (&'static str, fn(&Fill) -> f64, usize, [&'static str; 2]);

fn one(x: f64) -> Summary {
    summarize(&[x])
}

/// "median (min–max)".
fn cell(sm: Summary, decimals: usize) -> String {
    if sm.min == sm.max || sm.min.is_nan() {
        fmt_num(sm.median, decimals)
    } else {
        format!(
            "{} ({}–{})",
            fmt_num(sm.median, decimals),
            fmt_num(sm.min, decimals),
            fmt_num(sm.max, decimals)
        )
    }
}

fn count(n: usize) -> String {
    match n {
        n if n >= 1_000_000 && n % 1_000_000 == 0 => format!("{}M", n / 1_000_000),
        n if n >= 1_000 && n % 1_000 == 0 => format!("{}k", n / 1_000),
        n => n.to_string(),
    }
}

pub fn section(o: &mut String, k: &mut Facts, s: &Settings, scale: Option<&ScaleResult>, ret: Option<&Retention>) {
    if scale.is_none() && ret.is_none() {
        return;
    }
    let (small, large) = (count(BASE_ROWS), count(s.scale_rows));
    let _ = writeln!(o, "\n## i. Scale and retention\n");
    if let Some(sc) = scale {
        let _ = writeln!(
            o,
            "**Scale.** Two fresh databases, filled in SQL before the service is asked anything (one \
             `INSERT … SELECT generate_series` of {FILL_CHUNK} jobs and their events per statement, then `VACUUM \
             (ANALYZE)`, as autovacuum would have left them): {BASE_ROWS} and {} finished jobs, created over the \
             past six days (newer than the default `JOB_RETENTION_SECS` of 7 days: the service's pruner runs and \
             keeps them), 90 % succeeded, 6 % failed, 2 % timed out, 2 % cancelled, UUIDv7 ids of their creation \
             time, a fifth in key `default` and the rest over `tenant-00` … `tenant-{:02}`, a quarter with an \
             `Idempotency-Key`; each with the events the service writes for that life (submitted, reserved, \
             `downstream 202`, callback or lease expired; cancelled: submitted, cancelled) and `job_counts` kept \
             by the statement triggers as for any insert. The service runs in the bench process on each (the \
             defaults of a–c, limit {DRAIN_LIMIT}, no refill on callback), and each run does the same on both, \
             one client, the two databases' calls interleaved one by one (small, large, large, small, …: the \
             machine's background load falls on both alike): {SUBMITS} single `POST /jobs` each, then `POST \
             /drain` until they are all dispatched — {} drains on each, every one filling the {DRAIN_LIMIT} \
             slots (the downstream accepts at once and holds the jobs; the bench calls them back, untimed, before \
             the next drain), so the time is one drain's: reclaim, receive, take into the intake window, reserve, \
             submit {DRAIN_LIMIT}, record the outcomes — then {READS} calls of each read on each (fewer if they \
             take over {} s; at least {MIN_READS}), the queue empty again. p50 and p90 per run and database; the \
             table shows the median over {} runs (min–max of the ratio, which is taken per run). The target: p50 \
             on {large} within **1.2×** of {small}.\n",
            s.scale_rows,
            FILL_KEYS - 1,
            SUBMITS / DRAIN_LIMIT as usize,
            READ_BUDGET.as_secs(),
            sc.runs.len(),
        );
        let _ = writeln!(o, "| fill | {small} jobs | {large} jobs |\n| --- | ---: | ---: |");
        let [a, b] = &sc.fills;
        let rows: [FillRow; 7] = [
            ("rows in `jobs`", |f| f.jobs as f64, 0, ["i_jobs0", "i_jobs1"]),
            ("rows in `job_events`", |f| f.events as f64, 0, ["i_ev0", "i_ev1"]),
            ("inserts, s", |f| f.insert_s, 1, ["i_fill0", "i_fill1"]),
            ("`VACUUM (ANALYZE)`, s", |f| f.vacuum_s, 1, ["i_vac0", "i_vac1"]),
            (
                "`jobs`: total size (heap, indexes, TOAST), MiB",
                |f| f.jobs_mib,
                1,
                ["i_jmib0", "i_jmib1"],
            ),
            (
                "`job_events`: total size, MiB",
                |f| f.events_mib,
                1,
                ["i_emib0", "i_emib1"],
            ),
            ("database size, MiB", |f| f.db_mib, 1, ["i_dmib0", "i_dmib1"]),
        ];
        for (label, f, d, keys) in rows {
            let _ = writeln!(o, "| {label} | {} | {} |", fmt_num(f(a), d), fmt_num(f(b), d));
            k.insert(keys[0], one(f(a)));
            k.insert(keys[1], one(f(b)));
        }
        let _ = writeln!(
            o,
            "\n| operation | p50 {small}, ms | p50 {large}, ms | **p50 {large} ÷ {small}** (target ≤ 1.2) | p90 \
             {small}, ms | p90 {large}, ms | p90 {large} ÷ {small} |\n| --- | ---: | ---: | ---: | ---: | ---: | \
             ---: |"
        );
        for (i, op) in OPS.iter().enumerate() {
            let col = |f: &dyn Fn(&ScaleRun) -> f64| sc.runs.iter().map(f).collect::<Vec<f64>>();
            let s50 = summarize(&col(&|r| r.small[i].p50));
            let l50 = summarize(&col(&|r| r.large[i].p50));
            let r50 = summarize(&col(&|r| r.large[i].p50 / r.small[i].p50));
            let s90 = summarize(&col(&|r| r.small[i].p90));
            let l90 = summarize(&col(&|r| r.large[i].p90));
            let r90 = summarize(&col(&|r| r.large[i].p90 / r.small[i].p90));
            let verdict = if r50.median <= 1.2 { "" } else { " **missed**" };
            let _ = writeln!(
                o,
                "| {op} | {} | {} | **{}**{verdict} | {} | {} | {} |",
                fmt_num(s50.median, 2),
                fmt_num(l50.median, 2),
                cell(r50, 2),
                fmt_num(s90.median, 2),
                fmt_num(l90.median, 2),
                cell(r90, 2),
            );
            k.insert(K_SMALL[i], s50);
            k.insert(K_LARGE[i], l50);
            k.insert(K_RATIO[i], r50);
            k.insert(K_RATIO90[i], r90);
        }
        let few: Vec<String> = (0..4)
            .filter_map(|j| {
                let min = sc.runs.iter().map(|r| r.large_reads[j]).min()?;
                (min < READS).then(|| format!("`{}`: {min} on {large}", READ_PATHS[j]))
            })
            .collect();
        if !few.is_empty() {
            let _ = writeln!(
                o,
                "\nReads cut short by the {} s budget (fewest per run): {}.",
                READ_BUDGET.as_secs(),
                few.join(", ")
            );
        }
    }
    if let Some(r) = ret {
        retention_section(o, k, r);
    }
}

fn retention_section(o: &mut String, k: &mut Facts, r: &Retention) {
    let vacuum_note = if r.autovacuum {
        "This server runs autovacuum, which tends every instance's tables as it would in production.".to_owned()
    } else {
        "This server runs with `autovacuum = off` (a CI setting; production Postgres has it on), and \
         deleted rows' space is reused only after a `VACUUM`: so the bench stands in for autovacuum on the \
         first two instances — every `autovacuum_naptime` (from half of one after the start, between the \
         pruner's passes) it runs `VACUUM` on each table whose dead (or newly inserted) rows pass the server's \
         own autovacuum thresholds, and `ANALYZE` likewise (unthrottled, unlike autovacuum) — and the third, \
         with retention but no vacuum at all, shows what happens without it."
            .to_owned()
    };
    let _ = writeln!(
        o,
        "\n**Retention.** {} instances at once for {:.0} s, each on a fresh database with the same steady load: \
         `POST /jobs/batch` of {RET_BATCH} jobs every {} ms ({:.0} jobs/s), `POST /drain` every second and \
         refill on callback, limit {RET_LIMIT}, a downstream calling back after {} ms. One with \
         `JOB_RETENTION_SECS={RETENTION_SECS}`, one with 0 (keeps everything). The service prunes every \
         {PRUNE_INTERVAL_SECS} s (`PRUNE_INTERVAL`, not configurable), in batches of {PRUNE_BATCH} jobs, so a \
         finished job stays between {RETENTION_SECS} and {} s. {vacuum_note} `pg_total_relation_size` of `jobs` \
         and of `job_events` (heap, indexes, TOAST) and their row counts every {} s.\n",
        r.variants.len(),
        r.secs,
        RET_EVERY.as_millis(),
        RET_BATCH as f64 / RET_EVERY.as_secs_f64(),
        RET_WORK.as_millis(),
        RETENTION_SECS + PRUNE_INTERVAL_SECS,
        SAMPLE_EVERY.as_secs(),
    );
    // The samples (every TABLE_EVERY-th, and the last).
    let _ = write!(o, "| s |");
    for v in &r.variants {
        let _ = write!(o, " {}: rows in `jobs` / MiB |", v.name);
    }
    let _ = write!(o, "\n| ---: |");
    for _ in &r.variants {
        let _ = write!(o, " ---: |");
    }
    let _ = writeln!(o);
    let n = r.variants.iter().map(|v| v.samples.len()).min().unwrap_or(0);
    for i in (0..n).filter(|i| i % TABLE_EVERY == 0 || *i == n - 1) {
        let _ = write!(o, "| {:.0} |", r.variants[0].samples[i].t);
        for v in &r.variants {
            let x = v.samples[i];
            let _ = write!(o, " {} / {:.1} |", x.jobs, x.total_mib());
        }
        let _ = writeln!(o);
    }
    let _ = write!(o, "\n| | ");
    let names: Vec<&str> = r.variants.iter().map(|v| v.name.as_str()).collect();
    let _ = writeln!(o, "{} |", names.join(" | "));
    let _ = write!(o, "| --- |");
    for _ in &r.variants {
        let _ = write!(o, " ---: |");
    }
    let _ = writeln!(o);
    let levels: Vec<Level> = r.variants.iter().map(|v| level(&v.samples, r.secs)).collect();
    let line = |o: &mut String, label: &str, f: &dyn Fn(usize, &Variant) -> String| {
        let cells: Vec<String> = r.variants.iter().enumerate().map(|(i, v)| f(i, v)).collect();
        let _ = writeln!(o, "| {label} | {} |", cells.join(" | "));
    };
    line(o, "`JOB_RETENTION_SECS`", &|_, v| v.retention_secs.to_string());
    line(o, "jobs accepted (failed batches)", &|_, v| {
        format!("{} ({})", v.submitted, v.failed_batches)
    });
    line(o, "jobs completed", &|_, v| v.completed.to_string());
    line(o, "rows in `jobs` / `job_events` at the end", &|_, v| {
        let x = v.samples.last().copied().unwrap_or_default();
        format!("{} / {}", x.jobs, x.events)
    });
    line(o, "`jobs` / `job_events` at the end, MiB", &|_, v| {
        let x = v.samples.last().copied().unwrap_or_default();
        format!("{:.1} / {:.1}", x.jobs_mib, x.events_mib)
    });
    line(o, "both, mean over the middle third, MiB", &|i, _| {
        format!("{:.1}", levels[i].middle)
    });
    line(o, "both, mean over the last third, MiB", &|i, _| {
        format!("{:.1}", levels[i].last)
    });
    line(o, "**last third ÷ middle third**", &|i, _| {
        format!("**{:.2}**", levels[i].ratio)
    });
    line(o, "growth over the last third, MiB/min", &|i, _| {
        if levels[i].slope_per_min.is_finite() {
            format!("{:+.2}", levels[i].slope_per_min)
        } else {
            "n/a".to_owned()
        }
    });
    line(o, "both, max, MiB", &|i, _| format!("{:.1}", levels[i].max));
    line(o, "`VACUUM` / `ANALYZE` by the stand-in", &|_, v| {
        if v.standin {
            format!("{} / {}", v.vacuums, v.analyzes)
        } else if r.autovacuum {
            "autovacuum".to_owned()
        } else {
            "none".to_owned()
        }
    });
    line(o, "`POST /jobs/batch` p50 / p99 / max, ms", &|_, v| {
        format!("{:.1} / {:.1} / {:.1}", v.batch_ms[0], v.batch_ms[1], v.batch_ms[2])
    });
    line(
        o,
        &format!("max jobs the downstream held (limit {RET_LIMIT})"),
        &|_, v| v.max_held.to_string(),
    );
    for (i, l) in levels.iter().enumerate().take(3) {
        k.insert(K_LAST[i], one(l.last));
        k.insert(K_MIDDLE[i], one(l.middle));
        k.insert(K_LEVEL[i], one(l.ratio));
        k.insert(K_SLOPE[i], one(l.slope_per_min));
        k.insert(K_MAX[i], one(l.max));
    }
    k.insert("i_ret_secs", one(r.secs));
    k.insert("i_standin", one(if r.autovacuum { 0.0 } else { 1.0 }));
}

pub fn interpretation(p: &mut String, k: &Facts, s: &Settings) {
    let m = |key: &str| med(k, key);
    let (small, large) = (count(BASE_ROWS), count(s.scale_rows));
    if k.contains_key(K_RATIO[0]) {
        let ratios: Vec<String> = OPS
            .iter()
            .enumerate()
            .map(|(i, op)| {
                format!(
                    "{op} {:.2} → {:.2} ms ({:.2}×)",
                    m(K_SMALL[i]),
                    m(K_LARGE[i]),
                    m(K_RATIO[i])
                )
            })
            .collect();
        let missed: Vec<&str> = OPS
            .iter()
            .enumerate()
            .filter(|(i, _)| m(K_RATIO[*i]).is_nan() || m(K_RATIO[*i]) > 1.2)
            .map(|(_, op)| *op)
            .collect();
        let _ = write!(
            p,
            "**Scale:** {large} finished jobs ({:.0} MiB of `jobs` and {:.0} MiB of `job_events`, {:.0} event \
             rows; filled in {:.0} s plus {:.0} s of `VACUUM (ANALYZE)`) against {small}, p50: {}. {} ",
            m("i_jmib1"),
            m("i_emib1"),
            m("i_ev1"),
            m("i_fill1"),
            m("i_vac1"),
            ratios.join("; "),
            if missed.is_empty() {
                "Every one is within the 1.2× target.".to_owned()
            } else {
                format!("Over the 1.2× target: {}.", missed.join(", "))
            }
        );
    }
    if k.contains_key(K_LEVEL[0]) && m("i_ret_secs") < 3.0 * PRUNE_INTERVAL_SECS as f64 {
        let _ = write!(
            p,
            "**Retention:** the run lasted {:.0} s, less than three of the service's {PRUNE_INTERVAL_SECS} s \
             prune intervals: too short to tell whether the size levels off (`SLUICEGATE_BENCH_RETENTION_RUN_SECS`). ",
            m("i_ret_secs")
        );
    } else if k.contains_key(K_LEVEL[0]) {
        let flat = |i: usize| {
            if m(K_LEVEL[i]) <= FLAT {
                "levelled off"
            } else {
                "was still growing"
            }
        };
        let _ = write!(
            p,
            "**Retention:** with `JOB_RETENTION_SECS={RETENTION_SECS}` the size of the two tables {}: {:.1} MiB \
             on average over the last third of the {:.0} s run against {:.1} MiB over the middle third ({:.2}×; \
             {:+.2} MiB per minute over the last third; at most {:.1} MiB), while the same load keeping \
             everything grew from {:.1} to {:.1} MiB ({:.2}×, {:+.2} MiB per minute). ",
            flat(0),
            m(K_LAST[0]),
            m("i_ret_secs"),
            m(K_MIDDLE[0]),
            m(K_LEVEL[0]),
            m(K_SLOPE[0]),
            m(K_MAX[0]),
            m(K_MIDDLE[1]),
            m(K_LAST[1]),
            m(K_LEVEL[1]),
            m(K_SLOPE[1]),
        );
        if m("i_standin") == 1.0 && k.contains_key(K_LEVEL[2]) {
            let _ = write!(
                p,
                "That is with the bench standing in for autovacuum, which is off on this server; with retention \
                 and no vacuum at all the size {} ({:.1} → {:.1} MiB, {:.2}×, {:+.2} MiB per minute): the pruner \
                 deletes rows, but Postgres reuses their space only after a vacuum, so the service relies on \
                 autovacuum for a flat size. ",
                flat(2),
                m(K_MIDDLE[2]),
                m(K_LAST[2]),
                m(K_LEVEL[2]),
                m(K_SLOPE[2]),
            );
        }
    }
}
