//! Performance and memory benchmarks. Writes `bench/REPORT.md` and, from
//! scenario c, `bench/utilisation.svg` (from i, `bench/retention.svg`).
//!
//! Run it with `scripts/bench` (it installs the tools, starts the local-aws-sqs
//! emulator, checks Postgres and builds the release binary first), or by hand:
//!
//! ```sh
//! cargo bench --bench throughput
//! ```
//!
//! (by hand it starts local-aws-sqs itself, through the test kit's
//! `SqsEmulator`, unless `SLUICEGATE_BENCH_SQS_ENDPOINT` names a running one).
//!
//! Like the integration tests, it stands on the test kit (`testkit/`): a fresh
//! Postgres database and SQS queue per run, the fake downstream on port 0
//! and the real application (in this process for a–c, e, f and i; the release
//! binary as a subprocess, `serve`, for the memory benchmark d and, beside a
//! baseline binary, for g). Every number is measured over
//! several runs and reported as median, min and max. One file per scenario
//! (`enqueue`, `dispatch`, `utilisation`, `fairness`, `keys`, `memory`,
//! `baseline`, `replicas`, `scale`: the run, its section of
//! the report and its paragraph of the interpretation); `load` holds what
//! they share, `stats` and `cpu` the arithmetic and the CPU accounting,
//! `machine` the facts the report opens with.
//!
//! Knobs (environment, all optional): `SLUICEGATE_BENCH_RUNS` (5),
//! `SLUICEGATE_BENCH_ENQUEUE_SECS` (3), `SLUICEGATE_BENCH_DISPATCH_JOBS`
//! (2000), `SLUICEGATE_BENCH_UTIL_JOBS` (500), `SLUICEGATE_BENCH_MEM_JOBS`
//! (20000), `SLUICEGATE_BENCH_MEM_RUNS` (3), `SLUICEGATE_BENCH_POOL`
//! (`DATABASE_POOL_SIZE` of the in-process service, 20),
//! `SLUICEGATE_BENCH_FAIR_RUNS` (3), `SLUICEGATE_BENCH_FAIR_JOBS` (the
//! large key's backlog in e, 5000), `SLUICEGATE_BENCH_KEYS` (jobs and keys
//! in f, 10000), `SLUICEGATE_BENCH_SIDE_JOBS` (each backlog in g, 3000),
//! `SLUICEGATE_BENCH_BASELINE` (a release binary to run side by side with
//! this one in g; without it g is not run), `SLUICEGATE_BENCH_SCALE_ROWS`
//! (finished jobs in i's large database, 10000000; the small one has
//! 10000), `SLUICEGATE_BENCH_RETENTION_RUN_SECS` (the length of i's
//! retention run, 360),
//! `SLUICEGATE_BENCH_ONLY` (which benchmarks, `abcdefgh`; add `i` for scale
//! and retention: a 10-million-job database, about 12 GB and half an hour),
//! `SLUICEGATE_BENCH_SMOKE`
//! (`1`: smaller defaults for every size above, one run each, and a failed
//! exit if the limit was exceeded; `scripts/bench --smoke`),
//! `SLUICEGATE_BENCH_REPORT` (where the report goes, `bench/REPORT.md`),
//! `SLUICEGATE_BENCH_BIN`
//! (the release binary; default `<target dir>/release/sluicegate`),
//! `SLUICEGATE_BENCH_SQS_ENDPOINT` (a running SQS emulator; default: start
//! one), `SLUICEGATE_BENCH_SQS_PID` (that emulator's pid, for CPU
//! accounting), `TEST_DATABASE_URL` (default
//! postgres://postgres@127.0.0.1:5432/postgres).

mod baseline;
mod chart;
mod cpu;
mod dispatch;
mod enqueue;
mod fairness;
mod keys;
mod load;
mod machine;
mod memory;
mod replicas;
mod scale;
mod serve;
mod stats;
mod utilisation;

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    path::{Path, PathBuf},
    str::FromStr,
    time::{Duration, Instant},
};

use futures::future::join_all;
use sluicegate_testkit::{Emulator, SqsEmulator, drop_stale_databases};

use crate::{
    cpu::CpuMeter,
    dispatch::DispatchRun,
    enqueue::EnqueueRun,
    fairness::FairRun,
    machine::{machine_facts, reproduce_command},
    memory::MemRun,
    stats::{Summary, row},
    utilisation::UtilRun,
};

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

// ------------------------------------------------------------- settings

pub struct Settings {
    pub runs: usize,
    pub enqueue_secs: f64,
    pub single_clients: usize,
    pub batch_clients: usize,
    pub dispatch_jobs: usize,
    pub dispatch_limit: u32,
    pub dispatch_work: Duration,
    pub util_jobs: usize,
    pub util_limit: u32,
    pub util_tick: Duration,
    pub util_work_ms: (u64, u64),
    pub mem_jobs: usize,
    pub mem_runs: usize,
    pub mem_limit: u32,
    pub fair_runs: usize,
    pub fair_big: usize,
    pub fair_small: usize,
    pub fair_weighted: usize,
    pub fair_limit: u32,
    pub fair_work: Duration,
    /// Jobs (and keys) in f.
    pub scale_keys: usize,
    /// Queued jobs of each backlog in g.
    pub side_jobs: usize,
    /// Finished jobs in i's large database.
    pub scale_rows: usize,
    /// Length of i's retention run, s.
    pub retention_run_secs: f64,
    pub pool: u32,
    /// Which benchmarks to run (a, b, c, d, e, f, g, h, i; g only with a
    /// baseline binary).
    pub only: String,
    /// A smoke run (`SLUICEGATE_BENCH_SMOKE=1`, `scripts/bench --smoke`):
    /// small sizes, one run each, and a failed exit if an invariant broke.
    pub smoke: bool,
    /// Where the report goes (`SLUICEGATE_BENCH_REPORT`; default
    /// `bench/REPORT.md`).
    pub report: PathBuf,
    /// Knobs set in the environment, for the reproduce command.
    pub overrides: Vec<String>,
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
        let smoke = knob("SLUICEGATE_BENCH_SMOKE", 0u8, &mut o) == 1;
        // A smoke run's defaults: seconds, not minutes (the knobs still win).
        let small = |full: usize, smoke_size: usize| if smoke { smoke_size } else { full };
        let runs = knob("SLUICEGATE_BENCH_RUNS", small(5, 1), &mut o).max(1);
        let enqueue_secs = knob(
            "SLUICEGATE_BENCH_ENQUEUE_SECS",
            if smoke { 1.0 } else { 3.0f64 },
            &mut o,
        );
        let dispatch_jobs = knob("SLUICEGATE_BENCH_DISPATCH_JOBS", small(2000, 300), &mut o);
        let util_jobs = knob("SLUICEGATE_BENCH_UTIL_JOBS", small(500, 60), &mut o);
        let mem_jobs = knob("SLUICEGATE_BENCH_MEM_JOBS", small(20_000, 2000), &mut o);
        let mem_runs = knob("SLUICEGATE_BENCH_MEM_RUNS", small(3, 1), &mut o).max(1);
        let pool = knob("SLUICEGATE_BENCH_POOL", 20u32, &mut o);
        let fair_runs = knob("SLUICEGATE_BENCH_FAIR_RUNS", small(3, 1), &mut o).max(1);
        let fair_big = knob("SLUICEGATE_BENCH_FAIR_JOBS", small(5000, 500), &mut o);
        let scale_keys = knob("SLUICEGATE_BENCH_KEYS", small(10_000, 1000), &mut o);
        let side_jobs = knob("SLUICEGATE_BENCH_SIDE_JOBS", small(3000, 300), &mut o);
        let scale_rows = knob("SLUICEGATE_BENCH_SCALE_ROWS", small(10_000_000, 20_000), &mut o);
        let retention_run_secs = knob(
            "SLUICEGATE_BENCH_RETENTION_RUN_SECS",
            if smoke { 10.0 } else { 360.0f64 },
            &mut o,
        );
        let only = knob("SLUICEGATE_BENCH_ONLY", "abcdefgh".to_owned(), &mut o);
        let report = knob(
            "SLUICEGATE_BENCH_REPORT",
            Path::new(env!("CARGO_MANIFEST_DIR")).join("bench").join("REPORT.md"),
            &mut o,
        );
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
            fair_runs,
            fair_big,
            fair_small: 50,
            fair_weighted: 1000,
            fair_limit: 10,
            fair_work: Duration::from_millis(100),
            scale_keys,
            side_jobs,
            scale_rows,
            retention_run_secs,
            pool,
            only,
            smoke,
            report,
            overrides: o,
        }
    }
}

// ------------------------------------------------------------- infrastructure

/// What every scenario uses: the SQS emulator, an HTTP client for the load,
/// the CPU meter.
pub struct Infra {
    pub sqs_endpoint: String,
    pub http: reqwest::Client,
    pub cpu: CpuMeter,
    /// The emulator this process started (none if it was given one).
    _emulator: Option<SqsEmulator>,
}

impl Infra {
    async fn new() -> Self {
        // Databases left behind by interrupted earlier runs (named after the
        // pid of the run that made them; another may be running).
        drop_stale_databases().await;
        let (sqs_endpoint, emulator) = match std::env::var("SLUICEGATE_BENCH_SQS_ENDPOINT") {
            Ok(endpoint) => (endpoint, None),
            Err(_) => {
                let emulator = SqsEmulator::start(Path::new(env!("CARGO_MANIFEST_DIR")), Emulator::Local).expect(
                    "start local-aws-sqs (run scripts/install-tools, or set SLUICEGATE_BENCH_SQS_ENDPOINT to a \
                     running emulator)",
                );
                eprintln!("SQS emulator: {} (pid {})", emulator.endpoint, emulator.pid);
                (emulator.endpoint.clone(), Some(emulator))
            }
        };
        let emulator_pid = std::env::var("SLUICEGATE_BENCH_SQS_PID")
            .ok()
            .and_then(|p| p.trim().parse().ok())
            .or(emulator.as_ref().map(|e| e.pid));
        let http = reqwest::Client::builder()
            .pool_max_idle_per_host(256)
            .timeout(Duration::from_secs(60))
            .build()
            .expect("an HTTP client");
        Self {
            sqs_endpoint,
            http,
            cpu: CpuMeter::new(emulator_pid),
            _emulator: emulator,
        }
    }
}

// ------------------------------------------------------------- the run

async fn run() {
    let s = Settings::from_env();
    let infra = Infra::new().await;
    let started = Instant::now();
    let mut conn = load::admin().await;
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
    let binary = memory::release_binary();

    let runs = |which: char| if s.only.contains(which) { s.runs } else { 0 };
    eprintln!("a. enqueue: {} runs", runs('a'));
    let mut enq = Vec::new();
    for i in 0..runs('a') {
        let r = enqueue::enqueue_run(&infra, &s).await;
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
        let r = dispatch::dispatch_run(&infra, &s).await;
        eprintln!(
            "   run {}: {:.0} jobs/s, {:.2} SQS requests/job, {:.2} drains/job, max held {}; {:.2} / {:.2} Postgres \
             transactions per job without / with keys",
            i + 1,
            r.jobs_per_s,
            r.sqs_per_job,
            r.drains_per_job,
            r.max_held,
            r.pg_per_job[0],
            r.keyed.pg_tx_per_job
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
            utilisation::utilisation_run(infra, s, false, 1000 + i as u64).await
        }))
    };
    let sluice = async {
        let mut out = Vec::new();
        for i in 0..runs('c') {
            let r = utilisation::utilisation_run(&infra, &s, true, 1000 + i as u64).await;
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

    let mut fair = Vec::new();
    if s.only.contains('e') {
        eprintln!("e. fairness: {} runs, a backlog of {} jobs", s.fair_runs, s.fair_big);
        for i in 0..s.fair_runs {
            let r = fairness::fairness_run(&infra, &s, i == 0).await;
            eprintln!(
                "   run {}: key b done after {:.2} s, weighted share {:.3}, SQS/job {:?}, max held {}",
                i + 1,
                r.small_done_s,
                r.weighted_share,
                r.sqs_per_job,
                r.max_held
            );
            fair.push(r);
        }
    }

    let mut scale = Vec::new();
    eprintln!("f. keys at scale: {} runs, {} keys", runs('f'), s.scale_keys);
    for i in 0..runs('f') {
        let r = keys::keys_run(&infra, &s).await;
        eprintln!(
            "   run {}: reservation {:.2} ms with one key, {:.2} ms with {} keys; drain {:.2} / {:.2} ms",
            i + 1,
            r.one_key_ms,
            r.many_keys_ms,
            s.scale_keys,
            r.one_key_drain_ms,
            r.many_keys_drain_ms
        );
        scale.push(r);
    }

    eprintln!("h. replicas: {} runs of 1, 2 and 4 replicas", runs('h'));
    let mut reps = Vec::new();
    for i in 0..runs('h') {
        let r = replicas::replicas_run(&infra, &s).await;
        eprintln!("   run {}: {:?} jobs/s, max held {}", i + 1, r.jobs_per_s, r.max_held);
        reps.push(r);
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
            let r = memory::memory_run(&infra, &s, bin, i).await;
            eprintln!(
                "   run {}: VmHWM idle {:.1} MiB, after enqueue {:.1} MiB, after drain {:.1} MiB",
                i + 1,
                r.hwm_idle_mib,
                r.hwm_enqueued_mib,
                r.hwm_drained_mib
            );
            mem.push(r);
        }
    } else if !s.only.contains('d') {
        eprintln!("d. memory: not asked for (SLUICEGATE_BENCH_ONLY)");
    } else {
        eprintln!("d. memory: skipped, no release binary (scripts/bench builds it)");
    }

    let baseline = baseline::baseline_binary();
    let (mut ours, mut theirs) = (Vec::new(), Vec::new());
    match (&binary, &baseline, s.only.contains('g')) {
        (Some((bin, _)), Some(base), true) => {
            eprintln!(
                "g. side by side: {} pairs, {} and {}",
                s.runs,
                bin.display(),
                base.display()
            );
            for i in 0..s.runs {
                // The binaries alternate which goes first.
                let mut pair = [(bin.as_path(), "ours"), (base.as_path(), "base")];
                if i % 2 == 1 {
                    pair.reverse();
                }
                for (b, who) in pair {
                    let r = baseline::side_run(&infra, &s, b, &format!("{who}-{i}")).await;
                    eprintln!("   run {} ({who}): {r:?}", i + 1);
                    if who == "ours" {
                        ours.push(r);
                    } else {
                        theirs.push(r);
                    }
                }
            }
        }
        (_, None, true) => eprintln!("g. side by side: no baseline (SLUICEGATE_BENCH_BASELINE)"),
        (None, _, true) => eprintln!("g. side by side: skipped, no release binary"),
        _ => eprintln!("g. side by side: not asked for (SLUICEGATE_BENCH_ONLY)"),
    }

    let (mut at_scale, mut retention) = (None, None);
    if s.only.contains('i') {
        eprintln!(
            "i. scale and retention: {} and {} finished jobs, {} runs; then {:.0} s of steady load with retention",
            scale::BASE_ROWS,
            s.scale_rows,
            s.runs,
            s.retention_run_secs
        );
        at_scale = Some(scale::scale_run(&infra, &s).await);
        retention = Some(scale::retention_run(&infra, &s).await);
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
        &fair,
        &scale,
        &reps,
        &mem,
        binary.as_ref(),
        (&ours, &theirs, baseline.as_deref()),
        (at_scale.as_ref(), retention.as_ref()),
        started.elapsed(),
    );
    let path = &s.report;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).expect("create the report's directory");
    }
    std::fs::write(path, report).expect("write the report");
    eprintln!("wrote {} in {:.0} s", path.display(), started.elapsed().as_secs_f64());
    if let (Some(ours), Some(theirs)) = (sluice.first(), naive.first()) {
        let chart = path.with_file_name("utilisation.svg");
        let title = format!(
            "c. Jobs held: limit {}, {} jobs of {}–{} ms, a drain every {} s (first run pair)",
            s.util_limit,
            s.util_jobs,
            s.util_work_ms.0,
            s.util_work_ms.1,
            s.util_tick.as_secs()
        );
        let svg = chart::utilisation_svg(
            &title,
            f64::from(s.util_limit),
            &[
                chart::Line {
                    name: "sluicegate (refill on callback)",
                    colour: "#1f6feb",
                    samples: &ours.held,
                },
                chart::Line {
                    name: "naive (a fixed batch per tick)",
                    colour: "#d1242f",
                    samples: &theirs.held,
                },
            ],
        );
        std::fs::write(&chart, svg).expect("write the chart");
        eprintln!("wrote {}", chart.display());
    }
    if let Some(r) = &retention {
        let chart = path.with_file_name("retention.svg");
        std::fs::write(&chart, scale::chart(r)).expect("write the chart");
        eprintln!("wrote {}", chart.display());
    }
    if s.smoke {
        // The invariants a smoke run stands for (each scenario also asserts
        // its own: every job done, every drain and reservation filled).
        assert!(
            limit_held(&s, &dis, &sluice, &naive, &fair, &reps, &mem),
            "smoke: the downstream held more jobs than the limit"
        );
        eprintln!("smoke: the limit held in every scenario");
    }
}

/// Whether the downstream's own count stayed within the limit in every run.
fn limit_held(
    s: &Settings,
    dis: &[DispatchRun],
    sluice: &[UtilRun],
    naive: &[UtilRun],
    fair: &[FairRun],
    reps: &[replicas::ReplicasRun],
    mem: &[MemRun],
) -> bool {
    dis.iter()
        .all(|r| r.max_held.max(r.keyed.max_held) <= i64::from(s.dispatch_limit))
        && fair.iter().all(|r| r.max_held <= i64::from(s.fair_limit))
        && sluice
            .iter()
            .chain(naive)
            .all(|r| r.max_held <= i64::from(s.util_limit))
        && mem.iter().all(|r| r.max_held <= i64::from(s.mem_limit))
        && reps.iter().all(|r| r.max_held <= i64::from(s.dispatch_limit))
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
    fair: &[FairRun],
    scale: &[keys::KeysRun],
    reps: &[replicas::ReplicasRun],
    mem: &[MemRun],
    binary: Option<&(PathBuf, bool)>,
    side: (&[baseline::SideRun], &[baseline::SideRun], Option<&Path>),
    at_scale: (Option<&scale::ScaleResult>, Option<&scale::Retention>),
    took: Duration,
) -> String {
    let mut o = String::new();
    let mut k = Facts::new();
    let _ = writeln!(o, "# sluicegate benchmarks\n");
    let _ = writeln!(
        o,
        "Written by `benches/throughput/` (`cargo bench --bench throughput`, `harness = false`) in {:.0} s. \
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
         `SLUICEGATE_BENCH_POOL`, `SLUICEGATE_BENCH_FAIR_RUNS`, `SLUICEGATE_BENCH_FAIR_JOBS`, `SLUICEGATE_BENCH_KEYS`, \
         `SLUICEGATE_BENCH_SIDE_JOBS`, `SLUICEGATE_BENCH_BASELINE`, `SLUICEGATE_BENCH_SCALE_ROWS`, \
         `SLUICEGATE_BENCH_RETENTION_RUN_SECS`, `SLUICEGATE_BENCH_ONLY` (see the top of \
         `benches/throughput/main.rs`).\n",
        reproduce_command(s)
    );

    enqueue::section(&mut o, &mut k, s, enq);
    dispatch::section(&mut o, &mut k, s, dis);
    utilisation::section(&mut o, &mut k, s, sluice, naive);
    fairness::section(&mut o, &mut k, s, fair);
    keys::section(&mut o, &mut k, s, scale);
    replicas::section(&mut o, &mut k, s, reps);
    let limit_ok = limit_held(s, dis, sluice, naive, fair, reps, mem);
    let _ = writeln!(
        o,
        "\nThe downstream's own count never exceeded the limit in any run of b, c, d, e and h: **{}**.",
        if limit_ok {
            "yes"
        } else {
            "NO — the limit was exceeded"
        }
    );

    memory::section(&mut o, &mut k, s, mem, binary);
    baseline::section(&mut o, &mut k, s, side.0, side.1, side.2);
    scale::section(&mut o, &mut k, s, at_scale.0, at_scale.1);

    let _ = writeln!(o, "\n## Interpretation\n\n{}", interpretation(&k, s));
    o
}

fn interpretation(k: &Facts, s: &Settings) -> String {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut p = format!(
        "Everything runs on one {cores}-core machine — service, Postgres, the Node SQS emulator and the load \
         generator, next to other engineers' builds — so the absolute numbers are CPU-bound on a shared box. "
    );
    enqueue::interpretation(&mut p, k, s, cores);
    dispatch::interpretation(&mut p, k, s);
    utilisation::interpretation(&mut p, k, s);
    fairness::interpretation(&mut p, k, s);
    keys::interpretation(&mut p, k, s);
    replicas::interpretation(&mut p, k);
    memory::interpretation(&mut p, k, s);
    baseline::interpretation(&mut p, k);
    scale::interpretation(&mut p, k, s);
    p.trim_end().to_owned()
}
