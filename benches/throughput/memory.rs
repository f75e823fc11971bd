//! d. Memory: the release binary as a subprocess, its peak and resident set
//! while it takes and drains a large backlog.

use std::{
    fmt::Write as _,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use sluicegate_testkit::{API_TOKEN, Downstream, FakeDownstream, Work};
use sqlx::{Connection, PgConnection};

use crate::{
    BATCH, Facts, Infra, Settings,
    cpu::{CpuUse, cpu_rows},
    keep,
    load::{DrainTicker, enqueue_backlog},
    med,
    serve::{proc_status_kib, serve},
    stats::{TABLE_HEAD, percentile, row},
};

#[derive(Default, Clone, Copy)]
pub struct MemRun {
    pub hwm_idle_mib: f64,
    pub hwm_enqueued_mib: f64,
    pub hwm_drained_mib: f64,
    pub rss_end_mib: f64,
    pub rss_progress: [f64; 4],
    /// Median latency of `GET /stats` after start and after the drain.
    pub stats_idle_ms: f64,
    pub stats_after_ms: f64,
    /// Rows in `job_counts` after the drain.
    pub delta_rows: f64,
    pub enqueue_jobs_per_s: f64,
    pub drain_jobs_per_s: f64,
    pub max_held: i64,
    pub cpu_drain: CpuUse,
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

pub async fn memory_run(infra: &Infra, s: &Settings, bin: &Path, run: usize) -> MemRun {
    let ds = Downstream::start_with(
        FakeDownstream::builder()
            .work(Work::Fixed(Duration::from_millis(5)))
            .record(false),
    )
    .await;
    let served = serve(
        infra,
        bin,
        &ds.url,
        &[
            ("MAX_CONCURRENCY", s.mem_limit.to_string()),
            ("REFILL_ON_CALLBACK", "true".into()),
            ("MAX_IN_FLIGHT_REQUESTS", "8192".into()),
        ],
        &format!("memory-{run}"),
    )
    .await;
    let (pid, base, db_url) = (served.pid, served.base.clone(), served.db_url.clone());
    let http = &infra.http;
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
        if ds.counters().completed() >= (n as u64 * (next as u64 + 1)).div_ceil(4) {
            rss_progress[next] = mib(proc_status_kib(pid, "VmRSS:"));
            next += 1;
            continue;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(600),
            "memory: only {} of {n} jobs completed",
            ds.counters().completed()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let cpu_drain = infra.cpu.since(cpu0, Some(pid));
    let drain = ds.last_done() - t0;
    ticker.stop().await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let stats_after_ms = stats_latency_ms(http, &base).await;
    let delta_rows = match PgConnection::connect(&db_url).await {
        Ok(mut c) => sqlx::query_scalar::<_, i64>("SELECT count(*) FROM job_counts")
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
        max_held: ds.counters().max_held(),
        cpu_drain,
    };
    served.stop().await;
    r
}

/// The release binary, and whether it is older than the sources.
pub fn release_binary() -> Option<(PathBuf, bool)> {
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

/// The report's section.
pub fn section(o: &mut String, k: &mut Facts, s: &Settings, mem: &[MemRun], binary: Option<&(PathBuf, bool)>) {
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
                k,
                "idle",
                o,
                "VmHWM after start (idle), MiB",
                &col(|r| r.hwm_idle_mib),
                1,
            );
            keep(
                k,
                "enq_hwm",
                o,
                "VmHWM after enqueueing, MiB",
                &col(|r| r.hwm_enqueued_mib),
                1,
            );
            keep(
                k,
                "peak",
                o,
                "**VmHWM after draining (peak), MiB**",
                &col(|r| r.hwm_drained_mib),
                1,
            );
            for (q, label) in ["25 %", "50 %", "75 %", "100 %"].iter().enumerate() {
                let xs: Vec<f64> = mem.iter().map(|r| r.rss_progress[q]).collect();
                let key = ["rss25", "rss50", "rss75", "rss100"][q];
                keep(
                    k,
                    key,
                    o,
                    &format!("VmRSS with {label} of the jobs drained, MiB"),
                    &xs,
                    1,
                );
            }
            row(o, "VmRSS at the end (0.5 s later), MiB", &col(|r| r.rss_end_mib), 1);
            row(o, "enqueue, jobs/s", &col(|r| r.enqueue_jobs_per_s), 0);
            keep(k, "mdrain", o, "drain, jobs/s", &col(|r| r.drain_jobs_per_s), 0);
            keep(
                k,
                "stats0",
                o,
                "`GET /stats` p50 after start, ms",
                &col(|r| r.stats_idle_ms),
                1,
            );
            keep(
                k,
                "stats1",
                o,
                "`GET /stats` p50 after the drain, ms",
                &col(|r| r.stats_after_ms),
                1,
            );
            keep(
                k,
                "delta_rows",
                o,
                "rows in `job_counts` after the drain",
                &col(|r| r.delta_rows),
                0,
            );
            row(
                o,
                &format!("max jobs the downstream held (limit {})", s.mem_limit),
                &col(|r| r.max_held as f64),
                0,
            );
            cpu_rows(o, "drain", &mem.iter().map(|r| r.cpu_drain).collect::<Vec<_>>(), true);
        }
        _ => {
            let _ = writeln!(
                o,
                "Not measured: no release binary was found (build it with `cargo build --release`, or run \
                 `scripts/bench`)."
            );
        }
    }
}

/// Its paragraph of the interpretation.
pub fn interpretation(p: &mut String, k: &Facts, s: &Settings) {
    let m = |key: &str| med(k, key);
    if !m("peak").is_nan() {
        let growth = m("rss100") - m("rss25");
        let _ = write!(
            p,
            "**Memory:** the release binary starts at about {:.0} MiB, reaches {:.0} MiB while taking {} jobs in \
             batches of {BATCH} (request bodies and responses, 4 at a time) and peaks at {:.0} MiB while draining \
             them at {:.0} jobs/s; VmRSS moved by {growth:+.1} MiB between a quarter and all of the jobs drained, \
             so memory follows concurrency (requests in flight, pools, allocator arenas), not the number of jobs \
             processed — the jobs live in Postgres and SQS, not in the process. `GET /stats` took {:.1} ms after \
             start and {:.1} ms after the drain: it sums `job_counts`, which held {:.0} rows by then (a statement \
             trigger adds each statement's net change per status to the row of its connection's slot, 64 \
             slots at most), so its cost follows neither the throughput nor the number of jobs.",
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
}
