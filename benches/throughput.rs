//! Performance and memory benchmarks. Writes `bench/REPORT.md`.
//!
//! Run it with `scripts/bench` (it installs and starts the local-aws-sqs
//! emulator, checks Postgres and builds the release binary first), or by hand:
//!
//! ```sh
//! SLUICEGATE_BENCH_SQS_ENDPOINT=http://127.0.0.1:<port> cargo bench --bench throughput
//! ```
//!
//! Like the integration tests, it starts what it needs itself: a fresh
//! Postgres database and SQS queue per run, a downstream HTTP server on port 0
//! and the real application (in this process for a–c; the release binary as
//! a subprocess for the memory benchmark d). Every number is measured over
//! several runs and reported as median, min and max.
//!
//! Knobs (environment, all optional): `SLUICEGATE_BENCH_RUNS` (5),
//! `SLUICEGATE_BENCH_ENQUEUE_SECS` (3), `SLUICEGATE_BENCH_DISPATCH_JOBS`
//! (2000), `SLUICEGATE_BENCH_UTIL_JOBS` (500), `SLUICEGATE_BENCH_MEM_JOBS`
//! (20000), `SLUICEGATE_BENCH_MEM_RUNS` (3), `SLUICEGATE_BENCH_POOL`
//! (`DATABASE_POOL_SIZE` of the in-process service, 20),
//! `SLUICEGATE_BENCH_ONLY` (which benchmarks, `abcd`), `SLUICEGATE_BENCH_BIN`
//! (the release binary; default `<target dir>/release/sluicegate`),
//! `SLUICEGATE_BENCH_SQS_PID` (the emulator's pid, for CPU accounting),
//! `TEST_DATABASE_URL` (default postgres://postgres@127.0.0.1:5432/postgres).

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    str::FromStr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering::SeqCst},
    },
    time::{Duration, Instant},
};

use aws_sdk_sqs::Client as SqsClient;
use axum::{Router, body::Bytes, extract::State, http::StatusCode, routing::post};
use futures::{StreamExt, future::join_all, stream};
use rand::{Rng, SeedableRng, rngs::StdRng};
use serde_json::{Value, json};
use sluicegate::{
    config::{Config, Secret, SecretList},
    startup::Application,
};
use sqlx::{Connection, PgConnection};
use tokio::{net::TcpListener, task::JoinHandle};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

const API_TOKEN: &str = "bench-api-token-0123456789";
const DRAIN_TOKEN: &str = "bench-drain-token-0123456789";
const CALLBACK_SECRET: &str = "bench-callback-secret-0123456789abcdef0123456789";
const BATCH: usize = 500;
/// Pool size of the instances of benchmark c.
const UTIL_POOL: u32 = 8;

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --all-targets` runs bench
    // targets without it: do nothing then (this is not a test).
    if !std::env::args().any(|a| a == "--bench") {
        eprintln!("benches/throughput: not run outside `cargo bench` (see scripts/bench)");
        return;
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    rt.block_on(run());
}

// ------------------------------------------------------------- settings

struct Settings {
    runs: usize,
    enqueue_secs: f64,
    single_clients: usize,
    batch_clients: usize,
    dispatch_jobs: usize,
    dispatch_limit: u32,
    dispatch_work: Duration,
    util_jobs: usize,
    util_limit: u32,
    util_tick: Duration,
    util_work_ms: (u64, u64),
    mem_jobs: usize,
    mem_runs: usize,
    mem_limit: u32,
    pool: u32,
    /// Which benchmarks to run (a, b, c, d).
    only: String,
    /// Knobs set in the environment, for the reproduce command.
    overrides: Vec<String>,
}

fn knob<T: FromStr>(name: &str, default: T, overrides: &mut Vec<String>) -> T {
    match std::env::var(name) {
        Ok(v) => {
            let parsed = v
                .parse()
                .unwrap_or_else(|_| panic!("{name}={v:?} is not a valid value"));
            overrides.push(format!("{name}={v}"));
            parsed
        }
        Err(_) => default,
    }
}

impl Settings {
    fn from_env() -> Self {
        let mut o = Vec::new();
        let runs = knob("SLUICEGATE_BENCH_RUNS", 5usize, &mut o).max(1);
        let enqueue_secs = knob("SLUICEGATE_BENCH_ENQUEUE_SECS", 3.0f64, &mut o);
        let dispatch_jobs = knob("SLUICEGATE_BENCH_DISPATCH_JOBS", 2000usize, &mut o);
        let util_jobs = knob("SLUICEGATE_BENCH_UTIL_JOBS", 500usize, &mut o);
        let mem_jobs = knob("SLUICEGATE_BENCH_MEM_JOBS", 20_000usize, &mut o);
        let mem_runs = knob("SLUICEGATE_BENCH_MEM_RUNS", 3usize, &mut o).max(1);
        let pool = knob("SLUICEGATE_BENCH_POOL", 20u32, &mut o);
        let only = knob("SLUICEGATE_BENCH_ONLY", "abcd".to_owned(), &mut o);
        Self {
            runs,
            enqueue_secs,
            single_clients: 32,
            batch_clients: 4,
            dispatch_jobs,
            dispatch_limit: 50,
            dispatch_work: Duration::from_millis(10),
            util_jobs,
            util_limit: 10,
            util_tick: Duration::from_secs(2),
            util_work_ms: (200, 600),
            mem_jobs,
            mem_runs,
            mem_limit: 100,
            pool,
            only,
            overrides: o,
        }
    }
}

// ------------------------------------------------------------- statistics

#[derive(Clone, Copy, Debug, Default)]
struct Summary {
    median: f64,
    min: f64,
    max: f64,
}

fn summarize(xs: &[f64]) -> Summary {
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
fn percentile(samples: &mut [f64], p: f64) -> f64 {
    if samples.is_empty() {
        return f64::NAN;
    }
    samples.sort_by(f64::total_cmp);
    let rank = ((p / 100.0) * samples.len() as f64).ceil().max(1.0) as usize;
    samples[rank.min(samples.len()) - 1]
}

fn fmt_num(x: f64, decimals: usize) -> String {
    if x.is_nan() {
        "n/a".into()
    } else {
        format!("{x:.decimals$}")
    }
}

/// A table row: metric, median, min, max (each with `decimals`).
fn row(out: &mut String, metric: &str, xs: &[f64], decimals: usize) -> Summary {
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

const TABLE_HEAD: &str = "| metric | median | min | max |\n| --- | ---: | ---: | ---: |\n";

// ------------------------------------------------------------- CPU accounting

/// CPU time (in clock ticks) of the processes involved, and of the machine.
#[derive(Clone, Copy, Default)]
struct CpuSnap {
    own: u64,
    postgres: u64,
    emulator: u64,
    child: u64,
    machine_busy: u64,
    machine_total: u64,
}

/// CPU used over an interval, in cores (1.0 = one core busy all the time).
#[derive(Clone, Copy, Default, Debug)]
struct CpuUse {
    own: f64,
    postgres: f64,
    emulator: f64,
    child: f64,
    machine: f64,
}

struct CpuMeter {
    ticks_per_sec: f64,
    cores: f64,
    emulator_pid: Option<u32>,
}

fn proc_ticks(stat: &str) -> Option<u64> {
    // Fields after the command (which may hold spaces) end with ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15; `rest` starts at field 3.
    Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
}

fn pid_ticks(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| proc_ticks(&s))
        .unwrap_or(0)
}

fn postgres_ticks() -> u64 {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return 0;
    };
    dir.filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().bytes().all(|b| b.is_ascii_digit()))
        .filter_map(|e| std::fs::read_to_string(e.path().join("stat")).ok())
        .filter(|s| s.contains("(postgres)"))
        .filter_map(|s| proc_ticks(&s))
        .sum()
}

impl CpuMeter {
    fn new(emulator_pid: Option<u32>) -> Self {
        let ticks_per_sec = run_cmd("getconf", &["CLK_TCK"])
            .and_then(|s| s.parse().ok())
            .unwrap_or(100.0);
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
        Self {
            ticks_per_sec,
            cores,
            emulator_pid,
        }
    }

    fn snap(&self, child: Option<u32>) -> (Instant, CpuSnap) {
        let (mut busy, mut total) = (0, 0);
        if let Ok(s) = std::fs::read_to_string("/proc/stat") {
            if let Some(line) = s.lines().next() {
                let v: Vec<u64> = line.split_whitespace().skip(1).filter_map(|x| x.parse().ok()).collect();
                total = v.iter().take(8).sum();
                let idle = v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0);
                busy = total - idle;
            }
        }
        let snap = CpuSnap {
            own: std::fs::read_to_string("/proc/self/stat")
                .ok()
                .and_then(|s| proc_ticks(&s))
                .unwrap_or(0),
            postgres: postgres_ticks(),
            emulator: self.emulator_pid.map_or(0, pid_ticks),
            child: child.map_or(0, pid_ticks),
            machine_busy: busy,
            machine_total: total,
        };
        (Instant::now(), snap)
    }

    fn since(&self, start: (Instant, CpuSnap), child: Option<u32>) -> CpuUse {
        let (t1, b) = self.snap(child);
        let (t0, a) = start;
        let secs = (t1 - t0).as_secs_f64().max(1e-9);
        let cores = |x: u64, y: u64| y.saturating_sub(x) as f64 / self.ticks_per_sec / secs;
        let machine_total = b.machine_total.saturating_sub(a.machine_total).max(1) as f64;
        CpuUse {
            own: cores(a.own, b.own),
            postgres: cores(a.postgres, b.postgres),
            emulator: if self.emulator_pid.is_some() {
                cores(a.emulator, b.emulator)
            } else {
                f64::NAN
            },
            child: cores(a.child, b.child),
            machine: b.machine_busy.saturating_sub(a.machine_busy) as f64 / machine_total * self.cores,
        }
    }
}

fn cpu_rows(out: &mut String, label: &str, uses: &[CpuUse], with_child: bool) {
    let pick = |f: fn(&CpuUse) -> f64| uses.iter().map(f).collect::<Vec<_>>();
    if with_child {
        row(
            out,
            &format!("{label}: sluicegate process, cores"),
            &pick(|c| c.child),
            2,
        );
        row(
            out,
            &format!("{label}: bench process (load + downstream), cores"),
            &pick(|c| c.own),
            2,
        );
    } else {
        row(
            out,
            &format!("{label}: bench process (service + load + downstream), cores"),
            &pick(|c| c.own),
            2,
        );
    }
    row(
        out,
        &format!("{label}: all postgres processes, cores"),
        &pick(|c| c.postgres),
        2,
    );
    row(
        out,
        &format!("{label}: SQS emulator (node), cores"),
        &pick(|c| c.emulator),
        2,
    );
    row(
        out,
        &format!("{label}: whole machine, cores busy"),
        &pick(|c| c.machine),
        2,
    );
}

// ------------------------------------------------------------- infrastructure

struct Infra {
    admin_url: String,
    sqs_endpoint: String,
    sqs: SqsClient,
    http: reqwest::Client,
    cpu: CpuMeter,
}

fn sqs_client(endpoint: &str) -> SqsClient {
    let conf = aws_sdk_sqs::Config::builder()
        .behavior_version(aws_sdk_sqs::config::BehaviorVersion::latest())
        .region(aws_sdk_sqs::config::Region::new("us-east-1"))
        .credentials_provider(aws_sdk_sqs::config::Credentials::new(
            "test", "test", None, None, "bench",
        ))
        .endpoint_url(endpoint)
        .timeout_config(
            aws_sdk_sqs::config::timeout::TimeoutConfig::builder()
                .operation_attempt_timeout(Duration::from_secs(5))
                .connect_timeout(Duration::from_secs(2))
                .build(),
        )
        .build();
    SqsClient::from_conf(conf)
}

impl Infra {
    async fn new() -> Self {
        let admin_url =
            std::env::var("TEST_DATABASE_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
        let sqs_endpoint = std::env::var("SLUICEGATE_BENCH_SQS_ENDPOINT").expect(
            "SLUICEGATE_BENCH_SQS_ENDPOINT is not set: run scripts/bench, or start `scripts/sqs-emulator local DIR` \
             and export its endpoint",
        );
        let emulator_pid = std::env::var("SLUICEGATE_BENCH_SQS_PID")
            .ok()
            .and_then(|p| p.trim().parse().ok());
        let http = reqwest::Client::builder()
            .pool_max_idle_per_host(256)
            .timeout(Duration::from_secs(60))
            .build()
            .expect("an HTTP client");
        let infra = Self {
            sqs: sqs_client(&sqs_endpoint),
            admin_url,
            sqs_endpoint,
            http,
            cpu: CpuMeter::new(emulator_pid),
        };
        // Databases left behind by an interrupted earlier run (named after
        // the pid of the bench that made them; another bench may be running).
        let mut conn = infra.admin().await;
        let stale: Vec<String> =
            sqlx::query_scalar("SELECT datname::text FROM pg_database WHERE datname LIKE 'sg_bench_%'")
                .fetch_all(&mut conn)
                .await
                .expect("list databases");
        for name in stale {
            let owner = name
                .trim_start_matches("sg_bench_")
                .split('_')
                .next()
                .unwrap_or_default();
            if owner.is_empty() || Path::new("/proc").join(owner).exists() {
                continue;
            }
            let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
                .execute(&mut conn)
                .await;
        }
        infra
    }

    async fn admin(&self) -> PgConnection {
        PgConnection::connect(&self.admin_url)
            .await
            .expect("Postgres is reachable (TEST_DATABASE_URL, default postgres://postgres@127.0.0.1:5432/postgres)")
    }

    /// A fresh database: (name, url).
    async fn create_db(&self) -> (String, String) {
        let name = format!("sg_bench_{}_{}", std::process::id(), Uuid::new_v4().simple());
        let mut conn = self.admin().await;
        sqlx::query(&format!("CREATE DATABASE \"{name}\""))
            .execute(&mut conn)
            .await
            .expect("create database");
        let mut url = reqwest::Url::parse(&self.admin_url).expect("a database URL");
        url.set_path(&name);
        (name, url.to_string())
    }

    async fn drop_db(&self, name: &str) {
        let mut conn = self.admin().await;
        let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
            .execute(&mut conn)
            .await;
    }

    async fn create_queue(&self) -> String {
        let name = format!("sg-bench-{}", Uuid::new_v4().simple());
        self.sqs
            .create_queue()
            .queue_name(name)
            .send()
            .await
            .expect("create an SQS queue on the emulator")
            .queue_url()
            .expect("a queue URL")
            .to_owned()
    }

    async fn delete_queue(&self, url: &str) {
        let _ = self.sqs.delete_queue().queue_url(url).send().await;
    }
}

fn config(database_url: &str, queue_url: &str, downstream_url: &str) -> Config {
    Config {
        database_url: Secret::new(database_url),
        sqs_queue_url: queue_url.to_owned(),
        aws_endpoint_url: None,
        downstream_url: downstream_url.parse().expect("a downstream URL"),
        public_base_url: None,
        listen_addr: "127.0.0.1:0".parse().expect("an address"),
        max_concurrency: 10,
        job_timeout_secs: 900,
        dispatch_timeout_secs: 10,
        drain_budget_ms: 4000,
        max_attempts: 5,
        refill_on_callback: true,
        drain_interval_secs: None,
        api_tokens: SecretList::new([API_TOKEN]),
        drain_token: SecretList::new([DRAIN_TOKEN]),
        callback_secret: SecretList::new([CALLBACK_SECRET]),
        max_body_bytes: 262_144,
        // Far above what the load generators send at once: nothing is shed.
        max_in_flight_requests: 8192,
        request_timeout_secs: 30,
        header_read_timeout_secs: 10,
        write_timeout_secs: 30,
        max_connections: 8192,
        database_pool_size: 20,
        lease_sweep_interval_secs: 15,
        enqueue_timeout_secs: 15,
        orphan_message_grace_secs: 120,
        requeue_after_secs: None,
        job_retention_secs: 7 * 24 * 3600,
        allow_weak_secrets: false,
    }
}

/// A fresh database and queue.
struct Store {
    db_name: String,
    db_url: String,
    queue_url: String,
}

async fn new_store(infra: &Infra) -> Store {
    let (db_name, db_url) = infra.create_db().await;
    let queue_url = infra.create_queue().await;
    Store {
        db_name,
        db_url,
        queue_url,
    }
}

async fn drop_store(infra: &Infra, store: Store) {
    infra.drop_db(&store.db_name).await;
    infra.delete_queue(&store.queue_url).await;
}

/// `(transactions committed, rows inserted, updated, deleted)` of a database
/// (Postgres' own statistics; a backend reports them at the latest when it exits).
async fn db_stats(infra: &Infra, db_name: &str) -> [f64; 4] {
    let mut conn = infra.admin().await;
    let row: (i64, i64, i64, i64) = sqlx::query_as(
        "SELECT xact_commit, tup_inserted, tup_updated, tup_deleted FROM pg_stat_database WHERE datname = $1",
    )
    .bind(db_name)
    .fetch_one(&mut conn)
    .await
    .expect("pg_stat_database");
    [row.0 as f64, row.1 as f64, row.2 as f64, row.3 as f64]
}

/// The real application, in this process, on port 0.
struct App {
    base: String,
    shutdown: CancellationToken,
    server: JoinHandle<()>,
}

async fn start_app(
    infra: &Infra,
    s: &Settings,
    store: &Store,
    downstream_url: &str,
    migrate: bool,
    configure: impl FnOnce(&mut Config),
) -> App {
    let mut c = config(&store.db_url, &store.queue_url, downstream_url);
    c.database_pool_size = s.pool;
    configure(&mut c);
    let app = Application::build_with(c, sqs_client(&infra.sqs_endpoint), migrate)
        .await
        .expect("the application builds");
    let base = format!("http://{}", app.local_addr());
    let shutdown = CancellationToken::new();
    let stop = shutdown.clone();
    let server = tokio::spawn(async move {
        if let Err(e) = app.run_until(stop.cancelled_owned()).await {
            eprintln!("the application failed: {e:#}");
        }
    });
    App { base, shutdown, server }
}

/// Stops the application gracefully (its pool is closed when it returns).
async fn stop_app(app: App) {
    app.shutdown.cancel();
    let _ = app.server.await;
}

// ------------------------------------------------------------- downstream

#[derive(Clone, Copy)]
enum Work {
    Fixed(Duration),
    /// Uniform in [a, b] milliseconds, from a seeded generator.
    UniformMs(u64, u64),
}

struct DsState {
    work: Work,
    rng: Mutex<StdRng>,
    held: AtomicI64,
    max_held: AtomicI64,
    accepted: AtomicU64,
    completed: AtomicU64,
    callback_errors: AtomicU64,
    last_done: Mutex<Option<Instant>>,
    http: reqwest::Client,
}

/// A downstream that accepts every submission at once (202), works on it for
/// a while and calls back `succeeded`. A job is held from its acceptance
/// until just before its callback is sent (the callback frees the slot).
struct Downstream {
    url: String,
    st: Arc<DsState>,
    task: JoinHandle<()>,
}

async fn accept(State(st): State<Arc<DsState>>, body: Bytes) -> StatusCode {
    let Ok(sub) = serde_json::from_slice::<Value>(&body) else {
        return StatusCode::BAD_REQUEST;
    };
    let (Some(url), Some(token)) = (sub["callback_url"].as_str(), sub["callback_token"].as_str()) else {
        return StatusCode::BAD_REQUEST;
    };
    let (url, token) = (url.to_owned(), token.to_owned());
    let held = st.held.fetch_add(1, SeqCst) + 1;
    st.max_held.fetch_max(held, SeqCst);
    st.accepted.fetch_add(1, SeqCst);
    let work = match st.work {
        Work::Fixed(d) => d,
        Work::UniformMs(a, b) => Duration::from_millis(st.rng.lock().expect("rng").random_range(a..=b)),
    };
    tokio::spawn(async move {
        tokio::time::sleep(work).await;
        st.held.fetch_sub(1, SeqCst);
        for attempt in 0..20 {
            let r = st
                .http
                .post(&url)
                .bearer_auth(&token)
                .json(&json!({"status": "succeeded"}))
                .send()
                .await;
            match r {
                Ok(r) if r.status().is_success() => {
                    *st.last_done.lock().expect("lock") = Some(Instant::now());
                    st.completed.fetch_add(1, SeqCst);
                    return;
                }
                _ => {
                    st.callback_errors.fetch_add(1, SeqCst);
                    tokio::time::sleep(Duration::from_millis(50 * (attempt + 1))).await;
                }
            }
        }
    });
    StatusCode::ACCEPTED
}

impl Downstream {
    async fn start(work: Work, seed: u64) -> Self {
        let st = Arc::new(DsState {
            work,
            rng: Mutex::new(StdRng::seed_from_u64(seed)),
            held: AtomicI64::new(0),
            max_held: AtomicI64::new(0),
            accepted: AtomicU64::new(0),
            completed: AtomicU64::new(0),
            callback_errors: AtomicU64::new(0),
            last_done: Mutex::new(None),
            http: reqwest::Client::builder()
                .pool_max_idle_per_host(256)
                .timeout(Duration::from_secs(30))
                .build()
                .expect("an HTTP client"),
        });
        let app = Router::new().route("/", post(accept)).with_state(st.clone());
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind the downstream");
        let url = format!("http://{}/", listener.local_addr().expect("an address"));
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self { url, st, task }
    }

    fn completed(&self) -> u64 {
        self.st.completed.load(SeqCst)
    }

    /// Waits until `n` jobs have been called back; panics after `timeout`.
    async fn wait_completed(&self, n: u64, timeout: Duration, what: &str) {
        let deadline = Instant::now() + timeout;
        while self.completed() < n {
            assert!(
                Instant::now() < deadline,
                "{what}: only {} of {n} jobs completed within {timeout:?} (accepted {}, callback errors {})",
                self.completed(),
                self.st.accepted.load(SeqCst),
                self.st.callback_errors.load(SeqCst)
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    fn last_done(&self) -> Instant {
        self.st
            .last_done
            .lock()
            .expect("lock")
            .expect("at least one job completed")
    }

    /// Samples the number of jobs held every `every` until `stop` is set.
    fn sample(&self, every: Duration, stop: Arc<AtomicBool>) -> JoinHandle<Vec<(Instant, i64)>> {
        let st = self.st.clone();
        tokio::spawn(async move {
            let mut samples = Vec::new();
            let mut t = tokio::time::interval(every);
            t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            while !stop.load(SeqCst) {
                t.tick().await;
                samples.push((Instant::now(), st.held.load(SeqCst)));
            }
            samples
        })
    }
}

impl Drop for Downstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

// ------------------------------------------------------------- load helpers

/// Calls `POST /drain` every `every`, like a schedule: each call runs on its
/// own, so a slow drain does not delay the next tick.
struct DrainTicker {
    stop: CancellationToken,
    task: JoinHandle<(u64, u64)>,
}

impl DrainTicker {
    fn start(http: reqwest::Client, base: &str, every: Duration) -> Self {
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
    async fn stop(self) -> (u64, u64) {
        self.stop.cancel();
        self.task.await.unwrap_or_default()
    }
}

fn batch_body(n: usize, tag: &str) -> Bytes {
    let jobs: Vec<Value> = (0..n).map(|i| json!({"payload": {"n": i, "bench": tag}})).collect();
    Bytes::from(serde_json::to_vec(&json!({ "jobs": jobs })).expect("JSON"))
}

/// Posts one batch; the number of jobs accepted (202), or None on failure.
async fn post_batch(http: &reqwest::Client, base: &str, body: Bytes) -> Option<u64> {
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
async fn enqueue_backlog(http: &reqwest::Client, base: &str, n: usize, tag: &str) -> Duration {
    let started = Instant::now();
    let sizes: Vec<usize> = (0..n.div_ceil(BATCH)).map(|i| BATCH.min(n - i * BATCH)).collect();
    let accepted: u64 = stream::iter(sizes)
        .map(|size| async move {
            post_batch(http, base, batch_body(size, tag))
                .await
                .expect("a batch is accepted")
        })
        .buffer_unordered(4)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .sum();
    assert_eq!(accepted, n as u64, "every job of the backlog is queued");
    started.elapsed()
}

/// `GET /metrics`, as `name{labels}` -> value.
async fn metrics(http: &reqwest::Client, base: &str) -> BTreeMap<String, f64> {
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

fn delta(a: &BTreeMap<String, f64>, b: &BTreeMap<String, f64>, key: &str) -> f64 {
    b.get(key).copied().unwrap_or(0.0) - a.get(key).copied().unwrap_or(0.0)
}

/// SQS requests by operation between two scrapes.
fn sqs_ops(a: &BTreeMap<String, f64>, b: &BTreeMap<String, f64>) -> BTreeMap<String, f64> {
    b.keys()
        .filter_map(|k| {
            let op = k
                .strip_prefix("sluicegate_sqs_requests_total{operation=\"")?
                .strip_suffix("\"}")?;
            Some((op.to_owned(), delta(a, b, k)))
        })
        .collect()
}

// ------------------------------------------------------------- a. enqueue

#[derive(Default)]
struct EnqueueRun {
    single_rps: f64,
    single_p50: f64,
    single_p99: f64,
    single_errors: u64,
    batch_jobs_per_s: f64,
    batch_p50: f64,
    batch_p99: f64,
    batch_errors: u64,
    cpu_single: CpuUse,
    cpu_batch: CpuUse,
    /// SQS requests per accepted job.
    single_sqs_per_job: f64,
    batch_sqs_per_job: f64,
}

/// `clients` loops posting single jobs until `deadline`: (ok, errors, latencies in ms).
async fn single_load(http: &reqwest::Client, base: &str, clients: usize, secs: f64) -> (u64, u64, Vec<f64>, Duration) {
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

async fn enqueue_run(infra: &Infra, s: &Settings) -> EnqueueRun {
    let ds = Downstream::start(Work::Fixed(Duration::ZERO), 0).await;
    let store = new_store(infra).await;
    let app = start_app(infra, s, &store, &ds.url, true, |c| c.refill_on_callback = false).await;
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
    stop_app(app).await;
    drop_store(infra, store).await;
    r
}

// ------------------------------------------------------------- b. dispatch

#[derive(Default)]
struct DispatchRun {
    jobs_per_s: f64,
    makespan_s: f64,
    sqs_per_job: f64,
    sqs_ops_per_job: BTreeMap<String, f64>,
    drains_per_job: f64,
    /// Postgres transactions, rows inserted, updated, deleted, per job.
    pg_per_job: [f64; 4],
    max_held: i64,
    drain_calls: u64,
    drain_failures: u64,
    callback_errors: u64,
    cpu: CpuUse,
}

async fn dispatch_run(infra: &Infra, s: &Settings) -> DispatchRun {
    let ds = Downstream::start(Work::Fixed(s.dispatch_work), 0).await;
    let limit = s.dispatch_limit;
    let configure = |c: &mut Config| {
        c.max_concurrency = limit;
        c.refill_on_callback = true;
    };
    let store = new_store(infra).await;
    let http = &infra.http;
    let n = s.dispatch_jobs;
    // Queue the backlog with one instance, then measure with a fresh one, so
    // that Postgres' statistics (reported by backends at the latest when they
    // exit) separate the two phases.
    let app = start_app(infra, s, &store, &ds.url, true, configure).await;
    enqueue_backlog(http, &app.base, n, "dispatch").await;
    stop_app(app).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let pg0 = db_stats(infra, &store.db_name).await;
    let app = start_app(infra, s, &store, &ds.url, false, configure).await;

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
    stop_app(app).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let pg1 = db_stats(infra, &store.db_name).await;
    drop_store(infra, store).await;

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
        max_held: ds.st.max_held.load(SeqCst),
        drain_calls,
        drain_failures,
        callback_errors: ds.st.callback_errors.load(SeqCst),
        cpu,
    }
}

// ------------------------------------------------------------- c. utilisation

#[derive(Default, Clone, Copy)]
struct UtilRun {
    utilisation: f64,
    makespan_s: f64,
    max_held: i64,
}

async fn utilisation_run(infra: &Infra, s: &Settings, refill: bool, seed: u64) -> UtilRun {
    let (a, b) = s.util_work_ms;
    let ds = Downstream::start(Work::UniformMs(a, b), seed).await;
    let limit = s.util_limit;
    let store = new_store(infra).await;
    let app = start_app(infra, s, &store, &ds.url, true, |c| {
        c.max_concurrency = limit;
        c.refill_on_callback = refill;
        // Up to six instances run at once here: stay well inside the
        // server's max_connections (other users share it).
        c.database_pool_size = c.database_pool_size.min(UTIL_POOL);
    })
    .await;
    let http = &infra.http;
    let n = s.util_jobs;
    enqueue_backlog(http, &app.base, n, if refill { "sluicegate" } else { "naive" }).await;
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = ds.sample(Duration::from_millis(10), stop.clone());
    let t0 = Instant::now();
    let ticker = DrainTicker::start(http.clone(), &app.base, s.util_tick);
    ds.wait_completed(n as u64, Duration::from_secs(600), "utilisation")
        .await;
    stop.store(true, SeqCst);
    let end = ds.last_done();
    ticker.stop().await;
    let samples = sampler.await.expect("the sampler");
    let held: Vec<f64> = samples
        .iter()
        .filter(|(t, _)| *t >= t0 && *t <= end)
        .map(|(_, h)| *h as f64)
        .collect();
    let mean = held.iter().sum::<f64>() / held.len().max(1) as f64;
    let r = UtilRun {
        utilisation: mean / f64::from(limit),
        makespan_s: (end - t0).as_secs_f64(),
        max_held: ds.st.max_held.load(SeqCst),
    };
    stop_app(app).await;
    drop_store(infra, store).await;
    r
}

// ------------------------------------------------------------- d. memory

#[derive(Default, Clone, Copy)]
struct MemRun {
    hwm_idle_mib: f64,
    hwm_enqueued_mib: f64,
    hwm_drained_mib: f64,
    rss_end_mib: f64,
    rss_progress: [f64; 4],
    /// Median latency of `GET /stats` after start and after the drain.
    stats_idle_ms: f64,
    stats_after_ms: f64,
    /// Rows in `job_count_deltas` after the drain.
    delta_rows: f64,
    enqueue_jobs_per_s: f64,
    drain_jobs_per_s: f64,
    max_held: i64,
    cpu_drain: CpuUse,
}

fn proc_status_kib(pid: u32, field: &str) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse::<f64>().ok())
        })
        .unwrap_or(f64::NAN)
}

/// Median of 9 `GET /stats` calls, in ms.
async fn stats_latency_ms(http: &reqwest::Client, base: &str) -> f64 {
    let mut lat = Vec::new();
    for _ in 0..9 {
        let t = Instant::now();
        let ok = http
            .get(format!("{base}/stats"))
            .bearer_auth(API_TOKEN)
            .send()
            .await
            .is_ok_and(|r| r.status().is_success());
        if ok {
            lat.push(t.elapsed().as_secs_f64() * 1e3);
        }
    }
    percentile(&mut lat, 50.0)
}

/// Kills the subprocess if the bench unwinds before stopping it.
struct ChildGuard(Option<Child>);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

async fn memory_run(infra: &Infra, s: &Settings, bin: &Path, run: usize) -> MemRun {
    let ds = Downstream::start(Work::Fixed(Duration::from_millis(5)), 0).await;
    let (db_name, db_url) = infra.create_db().await;
    let queue_url = infra.create_queue().await;
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let log_path = std::env::temp_dir().join(format!("sluicegate-bench-serve-{}-{run}.log", std::process::id()));
    let log = std::fs::File::create(&log_path).expect("a log file");
    let mut cmd = Command::new(bin);
    cmd.arg("serve")
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("HOME", std::env::var("HOME").unwrap_or_else(|_| "/tmp".into()))
        .env("DATABASE_URL", &db_url)
        .env("SQS_QUEUE_URL", &queue_url)
        .env("AWS_ENDPOINT_URL", &infra.sqs_endpoint)
        .env("AWS_REGION", "us-east-1")
        .env("AWS_ACCESS_KEY_ID", "test")
        .env("AWS_SECRET_ACCESS_KEY", "test")
        .env("DOWNSTREAM_URL", &ds.url)
        .env("LISTEN_ADDR", format!("127.0.0.1:{port}"))
        .env("MAX_CONCURRENCY", s.mem_limit.to_string())
        .env("REFILL_ON_CALLBACK", "true")
        .env("MAX_IN_FLIGHT_REQUESTS", "8192")
        .env("API_TOKENS", API_TOKEN)
        .env("DRAIN_TOKEN", DRAIN_TOKEN)
        .env("CALLBACK_SECRET", CALLBACK_SECRET)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("log"))
        .stderr(log);
    let mut guard = ChildGuard(Some(cmd.spawn().expect("start the release binary")));
    let pid = guard.0.as_ref().expect("child").id();
    let http = &infra.http;
    let up = Instant::now();
    loop {
        if let Ok(r) = http.get(format!("{base}/healthz")).send().await {
            if r.status().is_success() {
                break;
            }
        }
        if let Some(status) = guard.0.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
            let log = std::fs::read_to_string(&log_path).unwrap_or_default();
            panic!("sluicegate serve exited with {status}:\n{log}");
        }
        assert!(
            up.elapsed() < Duration::from_secs(60),
            "sluicegate serve did not come up"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Idle after start (migrations done, pools lazily opened).
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mib = |kib: f64| kib / 1024.0;
    let hwm_idle = mib(proc_status_kib(pid, "VmHWM:"));
    let stats_idle_ms = stats_latency_ms(http, &base).await;
    let n = s.mem_jobs;
    let enq = enqueue_backlog(http, &base, n, "memory").await;
    let hwm_enqueued = mib(proc_status_kib(pid, "VmHWM:"));
    let cpu0 = infra.cpu.snap(Some(pid));
    let t0 = Instant::now();
    let ticker = DrainTicker::start(http.clone(), &base, Duration::from_secs(1));
    // VmRSS when a quarter, half, three quarters and all of the jobs are
    // done: steady growth with the number of jobs would be a leak.
    let mut rss_progress = [f64::NAN; 4];
    let mut next = 0;
    while next < 4 {
        if ds.completed() >= (n as u64 * (next as u64 + 1)).div_ceil(4) {
            rss_progress[next] = mib(proc_status_kib(pid, "VmRSS:"));
            next += 1;
            continue;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(600),
            "memory: only {} of {n} jobs completed",
            ds.completed()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let cpu_drain = infra.cpu.since(cpu0, Some(pid));
    let drain = ds.last_done() - t0;
    ticker.stop().await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let stats_after_ms = stats_latency_ms(http, &base).await;
    let delta_rows = match PgConnection::connect(&db_url).await {
        Ok(mut c) => sqlx::query_scalar::<_, i64>("SELECT count(*) FROM job_count_deltas")
            .fetch_one(&mut c)
            .await
            .map_or(f64::NAN, |n| n as f64),
        Err(_) => f64::NAN,
    };
    let r = MemRun {
        hwm_idle_mib: hwm_idle,
        hwm_enqueued_mib: hwm_enqueued,
        hwm_drained_mib: mib(proc_status_kib(pid, "VmHWM:")),
        rss_end_mib: mib(proc_status_kib(pid, "VmRSS:")),
        rss_progress,
        stats_idle_ms,
        stats_after_ms,
        delta_rows,
        enqueue_jobs_per_s: n as f64 / enq.as_secs_f64(),
        drain_jobs_per_s: n as f64 / drain.as_secs_f64(),
        max_held: ds.st.max_held.load(SeqCst),
        cpu_drain,
    };
    // Graceful stop (SIGTERM), as in production.
    let _ = Command::new("kill").args(["-TERM", &pid.to_string()]).status();
    let stopped = Instant::now();
    if let Some(c) = guard.0.as_mut() {
        while stopped.elapsed() < Duration::from_secs(20) {
            if c.try_wait().ok().flatten().is_some() {
                guard.0 = None;
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    drop(guard);
    let _ = std::fs::remove_file(&log_path);
    infra.drop_db(&db_name).await;
    infra.delete_queue(&queue_url).await;
    r
}

/// The release binary, and whether it is older than the sources.
fn release_binary() -> Option<(PathBuf, bool)> {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    let bin = match std::env::var_os("SLUICEGATE_BENCH_BIN") {
        Some(p) => PathBuf::from(p),
        None => {
            let target = std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| manifest.join("target"), PathBuf::from);
            let target = if target.is_relative() {
                manifest.join(target)
            } else {
                target
            };
            target.join("release").join("sluicegate")
        }
    };
    let built = std::fs::metadata(&bin).and_then(|m| m.modified()).ok()?;
    let stale = ["src", "migrations", "src/http"].iter().any(|d| {
        std::fs::read_dir(manifest.join(d)).is_ok_and(|rd| {
            rd.filter_map(Result::ok)
                .filter_map(|e| e.metadata().and_then(|m| m.modified()).ok())
                .any(|t| t > built)
        })
    });
    Some((bin, stale))
}

// ------------------------------------------------------------- the report

fn run_cmd(cmd: &str, args: &[&str]) -> Option<String> {
    let out = Command::new(cmd).args(args).stderr(Stdio::null()).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

fn machine_facts(pg_version: &str) -> Vec<(&'static str, String)> {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map_or("unknown".to_owned(), |(_, v)| v.trim().to_owned());
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let mem_kib: f64 = meminfo
        .lines()
        .find(|l| l.starts_with("MemTotal:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(f64::NAN);
    let manifest = env!("CARGO_MANIFEST_DIR");
    let commit = run_cmd("git", &["-C", manifest, "rev-parse", "HEAD"]).unwrap_or_else(|| "unknown".into());
    let dirty = run_cmd(
        "git",
        &["-C", manifest, "status", "--porcelain", "--untracked-files=no"],
    )
    .is_some_and(|s| !s.is_empty());
    let emulator =
        std::fs::read_to_string(Path::new(manifest).join("tools/sqs/node_modules/local-aws-sqs/package.json"))
            .ok()
            .and_then(|s| serde_json::from_str::<Value>(&s).ok())
            .and_then(|v| v["version"].as_str().map(str::to_owned))
            .map_or("local-aws-sqs".to_owned(), |v| format!("local-aws-sqs {v}"));
    let node = run_cmd("node", &["--version"]).unwrap_or_else(|| "node ?".into());
    let loadavg = std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default();
    vec![
        (
            "date (UTC)",
            run_cmd("date", &["-u", "+%Y-%m-%d %H:%M:%S"]).unwrap_or_default(),
        ),
        (
            "git commit",
            format!(
                "{commit}{}",
                if dirty {
                    " (with uncommitted changes to tracked files)"
                } else {
                    ""
                }
            ),
        ),
        ("nproc", run_cmd("nproc", &[]).unwrap_or_default()),
        ("CPU model", model),
        ("memory", format!("{:.1} GiB", mem_kib / 1024.0 / 1024.0)),
        ("kernel", run_cmd("uname", &["-sr"]).unwrap_or_default()),
        ("load average at start (1/5/15 min)", loadavg),
        ("rustc", run_cmd("rustc", &["--version"]).unwrap_or_default()),
        ("Postgres", pg_version.to_owned()),
        ("SQS emulator", format!("{emulator} on Node {node}")),
    ]
}

fn reproduce_command(s: &Settings) -> String {
    let mut parts = Vec::new();
    if let Ok(t) = std::env::var("CARGO_TARGET_DIR") {
        parts.push(format!("CARGO_TARGET_DIR={t}"));
    }
    parts.extend(s.overrides.iter().cloned());
    parts.push("scripts/bench".into());
    parts.join(" ")
}

async fn run() {
    let s = Settings::from_env();
    let infra = Infra::new().await;
    let started = Instant::now();
    let mut conn = infra.admin().await;
    let mut pg_version = String::new();
    for (i, setting) in [
        "server_version",
        "synchronous_commit",
        "fsync",
        "shared_buffers",
        "max_connections",
    ]
    .iter()
    .enumerate()
    {
        let v: String = sqlx::query_scalar(&format!("SHOW {setting}"))
            .fetch_one(&mut conn)
            .await
            .unwrap_or_default();
        if i == 0 {
            pg_version = v;
        } else {
            let _ = write!(pg_version, "; {setting}={v}");
        }
    }
    drop(conn);
    let facts = machine_facts(&pg_version);
    let binary = release_binary();

    let runs = |which: char| if s.only.contains(which) { s.runs } else { 0 };
    eprintln!("a. enqueue: {} runs", runs('a'));
    let mut enq = Vec::new();
    for i in 0..runs('a') {
        let r = enqueue_run(&infra, &s).await;
        eprintln!(
            "   run {}: single {:.0} req/s (p50 {:.1} ms, p99 {:.1} ms), batch {:.0} jobs/s",
            i + 1,
            r.single_rps,
            r.single_p50,
            r.single_p99,
            r.batch_jobs_per_s
        );
        enq.push(r);
    }

    eprintln!("b. dispatch: {} runs of {} jobs", runs('b'), s.dispatch_jobs);
    let mut dis = Vec::new();
    for i in 0..runs('b') {
        let r = dispatch_run(&infra, &s).await;
        eprintln!(
            "   run {}: {:.0} jobs/s, {:.2} SQS requests/job, {:.2} drains/job, max held {}",
            i + 1,
            r.jobs_per_s,
            r.sqs_per_job,
            r.drains_per_job,
            r.max_held
        );
        dis.push(r);
    }

    // The naive policy is bound by its ticks (~limit jobs per tick), not by
    // CPU: its runs go on concurrently with each other and with the
    // sluicegate runs, which run one after another.
    eprintln!(
        "c. utilisation: {} runs of each policy, {} jobs",
        runs('c'),
        s.util_jobs
    );
    let naive = {
        let infra = &infra;
        let s = &s;
        join_all((0..runs('c')).map(|i| async move {
            tokio::time::sleep(Duration::from_millis(300 * i as u64)).await;
            utilisation_run(infra, s, false, 1000 + i as u64).await
        }))
    };
    let sluice = async {
        let mut out = Vec::new();
        for i in 0..runs('c') {
            let r = utilisation_run(&infra, &s, true, 1000 + i as u64).await;
            eprintln!(
                "   sluicegate run {}: utilisation {:.3}, makespan {:.1} s, max held {}",
                i + 1,
                r.utilisation,
                r.makespan_s,
                r.max_held
            );
            out.push(r);
        }
        out
    };
    let (naive, sluice) = tokio::join!(naive, sluice);
    for (i, r) in naive.iter().enumerate() {
        eprintln!(
            "   naive run {}: utilisation {:.3}, makespan {:.1} s, max held {}",
            i + 1,
            r.utilisation,
            r.makespan_s,
            r.max_held
        );
    }

    let mut mem = Vec::new();
    if let (Some((bin, _)), true) = (&binary, s.only.contains('d')) {
        eprintln!(
            "d. memory: {} runs of {} jobs ({})",
            s.mem_runs,
            s.mem_jobs,
            bin.display()
        );
        for i in 0..s.mem_runs {
            let r = memory_run(&infra, &s, bin, i).await;
            eprintln!(
                "   run {}: VmHWM idle {:.1} MiB, after enqueue {:.1} MiB, after drain {:.1} MiB",
                i + 1,
                r.hwm_idle_mib,
                r.hwm_enqueued_mib,
                r.hwm_drained_mib
            );
            mem.push(r);
        }
    } else {
        eprintln!("d. memory: skipped, no release binary (scripts/bench builds it)");
    }

    let mut facts = facts;
    facts.push((
        "load average at the end (1/5/15 min)",
        std::fs::read_to_string("/proc/loadavg")
            .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
            .unwrap_or_default(),
    ));
    let report = render(
        &s,
        &facts,
        &enq,
        &dis,
        &sluice,
        &naive,
        &mem,
        binary.as_ref(),
        started.elapsed(),
    );
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("bench").join("REPORT.md");
    std::fs::create_dir_all(path.parent().expect("a parent")).expect("create bench/");
    std::fs::write(&path, report).expect("write the report");
    eprintln!("wrote {} in {:.0} s", path.display(), started.elapsed().as_secs_f64());
}

/// Named summaries, for the interpretation.
type Facts = BTreeMap<&'static str, Summary>;

/// Writes a table row and remembers its summary under `key`.
fn keep(k: &mut Facts, key: &'static str, out: &mut String, metric: &str, xs: &[f64], decimals: usize) {
    k.insert(key, row(out, metric, xs, decimals));
}

fn med(k: &Facts, key: &str) -> f64 {
    k.get(key).map_or(f64::NAN, |s| s.median)
}

#[allow(clippy::too_many_arguments)]
fn render(
    s: &Settings,
    facts: &[(&str, String)],
    enq: &[EnqueueRun],
    dis: &[DispatchRun],
    sluice: &[UtilRun],
    naive: &[UtilRun],
    mem: &[MemRun],
    binary: Option<&(PathBuf, bool)>,
    took: Duration,
) -> String {
    let mut o = String::new();
    let mut k = Facts::new();
    let _ = writeln!(o, "# sluicegate benchmarks\n");
    let _ = writeln!(
        o,
        "Written by `benches/throughput.rs` (`cargo bench --bench throughput`, `harness = false`) in {:.0} s. \
         Every figure is the median of {} runs (memory: {}) with the minimum and maximum. The machine is shared \
         with other engineers' builds and tests, so absolute numbers are noisy; the ratios are the robust part. \
         The CPU rows say where the time went during the measured interval, in cores (CPU-seconds per second); \
         \"all postgres processes\" and \"whole machine\" include other users of the same machine.\n",
        took.as_secs_f64(),
        s.runs,
        s.mem_runs
    );
    let _ = writeln!(o, "## Machine\n\n| | |\n| --- | --- |");
    for (key, v) in facts {
        let _ = writeln!(o, "| {key} | {v} |");
    }
    let _ = writeln!(
        o,
        "\n## Reproduce\n\n```sh\n{}\n```\n\n`scripts/bench` installs the tools, starts local-aws-sqs (and stops it on \
         exit), checks Postgres, builds the release binary and runs `cargo bench --locked --bench throughput`. \
         Knobs: `SLUICEGATE_BENCH_RUNS`, `SLUICEGATE_BENCH_ENQUEUE_SECS`, `SLUICEGATE_BENCH_DISPATCH_JOBS`, \
         `SLUICEGATE_BENCH_UTIL_JOBS`, `SLUICEGATE_BENCH_MEM_JOBS`, `SLUICEGATE_BENCH_MEM_RUNS`, \
         `SLUICEGATE_BENCH_POOL`, `SLUICEGATE_BENCH_ONLY` (see the top of `benches/throughput.rs`).\n",
        reproduce_command(s)
    );

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
        &mut k,
        "single",
        &mut o,
        "single `POST /jobs`: requests/s",
        &col(|r| r.single_rps),
        0,
    );
    keep(
        &mut k,
        "sp50",
        &mut o,
        "single: p50 latency, ms",
        &col(|r| r.single_p50),
        1,
    );
    keep(
        &mut k,
        "sp99",
        &mut o,
        "single: p99 latency, ms",
        &col(|r| r.single_p99),
        1,
    );
    row(&mut o, "single: failed requests", &col(|r| r.single_errors as f64), 0);
    keep(
        &mut k,
        "batch",
        &mut o,
        "batch `POST /jobs/batch`: jobs/s",
        &col(|r| r.batch_jobs_per_s),
        0,
    );
    keep(
        &mut k,
        "bp50",
        &mut o,
        "batch: p50 latency per request, ms",
        &col(|r| r.batch_p50),
        1,
    );
    row(&mut o, "batch: p99 latency per request, ms", &col(|r| r.batch_p99), 1);
    row(&mut o, "batch: failed jobs", &col(|r| r.batch_errors as f64), 0);
    row(
        &mut o,
        "single: SQS requests per job",
        &col(|r| r.single_sqs_per_job),
        3,
    );
    row(&mut o, "batch: SQS requests per job", &col(|r| r.batch_sqs_per_job), 3);
    keep(
        &mut k,
        "ratio_ab",
        &mut o,
        "**ratio batch jobs/s ÷ single requests/s** (per run)",
        &col(|r| r.batch_jobs_per_s / r.single_rps),
        2,
    );
    cpu_rows(
        &mut o,
        "single",
        &enq.iter().map(|r| r.cpu_single).collect::<Vec<_>>(),
        false,
    );
    cpu_rows(
        &mut o,
        "batch",
        &enq.iter().map(|r| r.cpu_batch).collect::<Vec<_>>(),
        false,
    );
    k.insert("a_pg_single", summarize(&col(|r| r.cpu_single.postgres)));
    k.insert("a_own_single", summarize(&col(|r| r.cpu_single.own)));
    k.insert("a_em_single", summarize(&col(|r| r.cpu_single.emulator)));
    k.insert("a_machine_single", summarize(&col(|r| r.cpu_single.machine)));
    k.insert("a_pg_batch", summarize(&col(|r| r.cpu_batch.postgres)));

    // b.
    let _ = writeln!(
        o,
        "\n## b. Dispatch throughput\n\nA backlog of {} jobs (queued through `/jobs/batch` by a first instance, \
         which is then stopped), limit {}, `REFILL_ON_CALLBACK=true`, `POST /drain` once per second by the bench, \
         against a second instance on the same database and queue. The downstream accepts at once (202) and calls \
         back `succeeded` {} ms later. Time runs from the first drain to the last callback. SQS requests are the \
         delta of `sluicegate_sqs_requests_total` over that time (from `GET /metrics`), drains the delta of \
         `sluicegate_drain_duration_seconds_count` (scheduled and refill drains), Postgres figures the delta of \
         `pg_stat_database` for the run's database (the second instance's whole life).\n",
        s.dispatch_jobs,
        s.dispatch_limit,
        s.dispatch_work.as_millis()
    );
    o.push_str(TABLE_HEAD);
    let col = |f: fn(&DispatchRun) -> f64| dis.iter().map(f).collect::<Vec<_>>();
    keep(
        &mut k,
        "djobs",
        &mut o,
        "**jobs completed per second**",
        &col(|r| r.jobs_per_s),
        0,
    );
    row(&mut o, "time to empty the backlog, s", &col(|r| r.makespan_s), 2);
    keep(
        &mut k,
        "sqs",
        &mut o,
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
        row(&mut o, &format!("… `{op}` per job"), &xs, 3);
    }
    keep(
        &mut k,
        "drains",
        &mut o,
        "drains per job",
        &col(|r| r.drains_per_job),
        4,
    );
    keep(
        &mut k,
        "pg_tx",
        &mut o,
        "Postgres transactions per job",
        &col(|r| r.pg_per_job[0]),
        2,
    );
    keep(
        &mut k,
        "pg_ins",
        &mut o,
        "Postgres rows inserted per job",
        &col(|r| r.pg_per_job[1]),
        2,
    );
    keep(
        &mut k,
        "pg_upd",
        &mut o,
        "Postgres rows updated per job",
        &col(|r| r.pg_per_job[2]),
        2,
    );
    row(&mut o, "Postgres rows deleted per job", &col(|r| r.pg_per_job[3]), 2);
    row(&mut o, "scheduled `/drain` calls", &col(|r| r.drain_calls as f64), 0);
    row(&mut o, "failed `/drain` calls", &col(|r| r.drain_failures as f64), 0);
    row(
        &mut o,
        "callback retries (non-2xx or error)",
        &col(|r| r.callback_errors as f64),
        0,
    );
    keep(
        &mut k,
        "dheld",
        &mut o,
        &format!("max jobs the downstream held (limit {})", s.dispatch_limit),
        &col(|r| r.max_held as f64),
        0,
    );
    cpu_rows(
        &mut o,
        "dispatch",
        &dis.iter().map(|r| r.cpu).collect::<Vec<_>>(),
        false,
    );
    k.insert("b_pg", summarize(&col(|r| r.cpu.postgres)));
    k.insert("b_own", summarize(&col(|r| r.cpu.own)));
    k.insert("b_em", summarize(&col(|r| r.cpu.emulator)));
    k.insert("b_machine", summarize(&col(|r| r.cpu.machine)));

    // c.
    let _ = writeln!(
        o,
        "\n## c. Utilisation: sluicegate vs the naive fixed-batch schedule\n\nThe same downstream for both: every \
         job takes a uniformly random {}–{} ms (the same seeded sequence of durations for both policies in a \
         run pair), limit {}, {} queued jobs, `POST /drain` every {} s by the bench. **sluicegate**: \
         `REFILL_ON_CALLBACK=true`, so a callback that frees a slot starts a drain at once. **naive** (the AWS \
         sample's scheduled Lambda that submits a fixed batch per tick, blind to what is running): emulated with \
         sluicegate's own drain and `REFILL_ON_CALLBACK=false`, so a slot freed between ticks stays idle until \
         the next tick. Utilisation = mean of (jobs held ÷ limit), sampled by the downstream every 10 ms from \
         the first tick to the last callback; makespan = that same interval. The naive runs are bound by their \
         ticks, not by CPU, so they run concurrently with each other and with the sluicegate runs (which run one \
         after another); every instance has `DATABASE_POOL_SIZE={UTIL_POOL}` so that the six instances stay \
         inside the server's `max_connections`.\n",
        s.util_work_ms.0,
        s.util_work_ms.1,
        s.util_limit,
        s.util_jobs,
        s.util_tick.as_secs()
    );
    o.push_str(TABLE_HEAD);
    let col = |v: &[UtilRun], f: fn(&UtilRun) -> f64| v.iter().map(f).collect::<Vec<_>>();
    keep(
        &mut k,
        "us",
        &mut o,
        "sluicegate: mean utilisation",
        &col(sluice, |r| r.utilisation),
        3,
    );
    keep(
        &mut k,
        "un",
        &mut o,
        "naive: mean utilisation",
        &col(naive, |r| r.utilisation),
        3,
    );
    keep(
        &mut k,
        "ms",
        &mut o,
        "sluicegate: makespan, s",
        &col(sluice, |r| r.makespan_s),
        2,
    );
    keep(
        &mut k,
        "mn",
        &mut o,
        "naive: makespan, s",
        &col(naive, |r| r.makespan_s),
        2,
    );
    let pairs: Vec<(UtilRun, UtilRun)> = sluice.iter().copied().zip(naive.iter().copied()).collect();
    keep(
        &mut k,
        "uratio",
        &mut o,
        "**utilisation ratio sluicegate ÷ naive** (per run pair)",
        &pairs
            .iter()
            .map(|(a, b)| a.utilisation / b.utilisation)
            .collect::<Vec<_>>(),
        2,
    );
    keep(
        &mut k,
        "mratio",
        &mut o,
        "**makespan ratio naive ÷ sluicegate** (per run pair)",
        &pairs
            .iter()
            .map(|(a, b)| b.makespan_s / a.makespan_s)
            .collect::<Vec<_>>(),
        2,
    );
    keep(
        &mut k,
        "hs",
        &mut o,
        &format!("sluicegate: max jobs the downstream held (limit {})", s.util_limit),
        &col(sluice, |r| r.max_held as f64),
        0,
    );
    keep(
        &mut k,
        "hn",
        &mut o,
        &format!("naive: max jobs the downstream held (limit {})", s.util_limit),
        &col(naive, |r| r.max_held as f64),
        0,
    );
    let mean_ms = (s.util_work_ms.0 + s.util_work_ms.1) as f64 / 2.0;
    let ideal = s.util_jobs as f64 * mean_ms / 1000.0 / f64::from(s.util_limit);
    let ticks = s.util_jobs.div_ceil(s.util_limit.max(1) as usize);
    let _ = writeln!(
        o,
        "\nFor scale: perfectly packed, the work takes about {ideal:.1} s (mean job {mean_ms:.0} ms × {} jobs ÷ \
         limit {}); the naive schedule needs {ticks} ticks, i.e. about {:.0} s, and can use at most about {:.2} \
         of the capacity (mean job ÷ tick).",
        s.util_jobs,
        s.util_limit,
        (ticks - 1) as f64 * s.util_tick.as_secs_f64() + mean_ms / 1000.0,
        mean_ms / 1000.0 / s.util_tick.as_secs_f64(),
    );
    let limit_ok = dis.iter().all(|r| r.max_held <= i64::from(s.dispatch_limit))
        && sluice
            .iter()
            .chain(naive)
            .all(|r| r.max_held <= i64::from(s.util_limit))
        && mem.iter().all(|r| r.max_held <= i64::from(s.mem_limit));
    let _ = writeln!(
        o,
        "\nThe downstream's own count never exceeded the limit in any run of b, c and d: **{}**.",
        if limit_ok {
            "yes"
        } else {
            "NO — the limit was exceeded"
        }
    );

    // d.
    let _ = writeln!(o, "\n## d. Memory (release binary)\n");
    match binary {
        Some((bin, stale)) if !mem.is_empty() => {
            let _ = writeln!(
                o,
                "`{} serve` as a subprocess (`RUST_LOG=warn`, `MAX_CONCURRENCY={}`, `REFILL_ON_CALLBACK=true`, \
                 `MAX_IN_FLIGHT_REQUESTS=8192`, everything else default), a fresh database and queue per run. {} \
                 jobs pushed through `/jobs/batch` ({} per request, 4 at a time), then drained by `POST /drain` once \
                 per second through a downstream that calls back after 5 ms. VmHWM (peak resident set) and VmRSS \
                 from `/proc/<pid>/status`.{}\n",
                bin.display(),
                s.mem_limit,
                s.mem_jobs,
                BATCH,
                if *stale {
                    " **Warning: the binary is older than some source files.**"
                } else {
                    ""
                }
            );
            o.push_str(TABLE_HEAD);
            let col = |f: fn(&MemRun) -> f64| mem.iter().map(f).collect::<Vec<_>>();
            keep(
                &mut k,
                "idle",
                &mut o,
                "VmHWM after start (idle), MiB",
                &col(|r| r.hwm_idle_mib),
                1,
            );
            keep(
                &mut k,
                "enq_hwm",
                &mut o,
                "VmHWM after enqueueing, MiB",
                &col(|r| r.hwm_enqueued_mib),
                1,
            );
            keep(
                &mut k,
                "peak",
                &mut o,
                "**VmHWM after draining (peak), MiB**",
                &col(|r| r.hwm_drained_mib),
                1,
            );
            for (q, label) in ["25 %", "50 %", "75 %", "100 %"].iter().enumerate() {
                let xs: Vec<f64> = mem.iter().map(|r| r.rss_progress[q]).collect();
                let key = ["rss25", "rss50", "rss75", "rss100"][q];
                keep(
                    &mut k,
                    key,
                    &mut o,
                    &format!("VmRSS with {label} of the jobs drained, MiB"),
                    &xs,
                    1,
                );
            }
            row(
                &mut o,
                "VmRSS at the end (0.5 s later), MiB",
                &col(|r| r.rss_end_mib),
                1,
            );
            row(&mut o, "enqueue, jobs/s", &col(|r| r.enqueue_jobs_per_s), 0);
            keep(
                &mut k,
                "mdrain",
                &mut o,
                "drain, jobs/s",
                &col(|r| r.drain_jobs_per_s),
                0,
            );
            keep(
                &mut k,
                "stats0",
                &mut o,
                "`GET /stats` p50 after start, ms",
                &col(|r| r.stats_idle_ms),
                1,
            );
            keep(
                &mut k,
                "stats1",
                &mut o,
                "`GET /stats` p50 after the drain, ms",
                &col(|r| r.stats_after_ms),
                1,
            );
            keep(
                &mut k,
                "delta_rows",
                &mut o,
                "rows in `job_count_deltas` after the drain",
                &col(|r| r.delta_rows),
                0,
            );
            row(
                &mut o,
                &format!("max jobs the downstream held (limit {})", s.mem_limit),
                &col(|r| r.max_held as f64),
                0,
            );
            cpu_rows(
                &mut o,
                "drain",
                &mem.iter().map(|r| r.cpu_drain).collect::<Vec<_>>(),
                true,
            );
        }
        _ => {
            let _ = writeln!(
                o,
                "Not measured: no release binary was found (build it with `cargo build --release`, or run \
                 `scripts/bench`)."
            );
        }
    }

    let _ = writeln!(o, "\n## Interpretation\n\n{}", interpretation(&k, s));
    o
}

fn interpretation(k: &Facts, s: &Settings) -> String {
    let m = |key: &str| med(k, key);
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut p = format!(
        "Everything runs on one {cores}-core machine — service, Postgres, the Node SQS emulator and the load \
         generator, next to other engineers' builds — so the absolute numbers are CPU-bound on a shared box. "
    );
    if !m("single").is_nan() {
        let _ = write!(
            p,
            "**Enqueue:** each `POST /jobs` is one Postgres transaction (BEGIN, one insert of job + event, \
             a one-entry `SendMessageBatch` while the transaction stays open, COMMIT with its WAL flush); at \
             {:.0} requests/s the machine was {:.2} of {cores} cores busy (Postgres {:.2}, emulator {:.2}, bench \
             process {:.2}); the clients run a closed loop, so the latency mirrors the rate (p50 {:.1} ms against \
             {} clients ÷ {:.0} requests/s = {:.1} ms by Little's law). Batching amortises the HTTP request, the commit and SQS (50 `SendMessageBatch` \
             of 10, sent concurrently): {:.0} jobs/s, **{:.1}× the single rate**; a batch inserts its {BATCH} jobs \
             and their events in one statement ({:.1} ms per request = {:.2} ms per job), with Postgres the \
             largest CPU user ({:.2} cores). ",
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
    if !m("djobs").is_nan() {
        let held = k.get("dheld").map_or(f64::NAN, |x| x.max);
        let limit_bound = held >= f64::from(s.dispatch_limit);
        let _ = write!(
            p,
            "**Dispatch:** {:.0} jobs/s with {} ms jobs; the downstream held at most {held:.0} of {} slots, so {} \
             One drain loop takes at most 10 messages per iteration and runs five Postgres round trips one \
             after another for them (the gate state: limit, live count and Retry-After in one query; BEGIN / \
             gate lock / reserve / COMMIT) besides the `ReceiveMessage`; each job then costs three more statements \
             (the outcome transition, the callback's credential lookup and its transition): {:.2} Postgres \
             transactions, {:.1} rows inserted (3 `job_events` + 6 `job_count_deltas`) and {:.1} rows updated \
             per job, and Postgres was again the largest CPU user ({:.2} cores; emulator {:.2}, bench process \
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
    if !m("us").is_nan() {
        let _ = write!(
            p,
            "**Utilisation:** with refill on callback the downstream was kept {:.0} % busy (makespan {:.1} s) \
             against {:.0} % for the fixed schedule ({:.1} s): **{:.1}× the utilisation, {:.1}× shorter \
             makespan**. The gap is set by the tick length against the job length (a {} s tick, jobs of {}–{} \
             ms), not by the service's speed; sluicegate's shortfall from 100 % is the refill latency (callback → \
             drain → receive → reserve → submit) and the tail, when fewer jobs than slots remain. Neither policy \
             ever exceeded the limit (max held {:.0} and {:.0} of {}). ",
            m("us") * 100.0,
            m("ms"),
            m("un") * 100.0,
            m("mn"),
            m("uratio"),
            m("mratio"),
            s.util_tick.as_secs(),
            s.util_work_ms.0,
            s.util_work_ms.1,
            k.get("hs").map_or(f64::NAN, |x| x.max),
            k.get("hn").map_or(f64::NAN, |x| x.max),
            s.util_limit,
        );
    }
    if !m("peak").is_nan() {
        let growth = m("rss100") - m("rss25");
        let _ = write!(
            p,
            "**Memory:** the release binary starts at about {:.0} MiB, reaches {:.0} MiB while taking {} jobs in \
             batches of {BATCH} (request bodies and responses, 4 at a time) and peaks at {:.0} MiB while draining \
             them at {:.0} jobs/s; VmRSS moved by {growth:+.1} MiB between a quarter and all of the jobs drained, \
             so memory follows concurrency (requests in flight, pools, allocator arenas), not the number of jobs \
             processed — the jobs live in Postgres and SQS, not in the process. `GET /stats` took {:.1} ms after \
             start and {:.1} ms after the drain: it sums `job_count_deltas`, which held {:.0} rows by then (a \
             trigger appends one row per insert and two per status change, and each replica compacts the table \
             every 10 s), so its cost grows with the throughput of the last seconds.",
            m("idle"),
            m("enq_hwm"),
            s.mem_jobs,
            m("peak"),
            m("mdrain"),
            m("stats0"),
            m("stats1"),
            m("delta_rows"),
        );
    }
    p.trim_end().to_owned()
}
