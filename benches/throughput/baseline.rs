//! g. Side by side with a baseline: this release binary and another one
//! (`SLUICEGATE_BENCH_BASELINE`, e.g. built from an earlier commit), run one
//! after the other in pairs as subprocesses on the same workloads, so that
//! issue 13's targets read as ratios measured in one bench run on one
//! machine: the downstream kept full under a backlog, dispatch throughput
//! with short jobs and the service's CPU per job, and concurrent single
//! submissions.

use std::{
    fmt::Write as _,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use sluicegate_testkit::{Downstream, FakeDownstream, Work};

use crate::{
    Facts, Infra, Settings,
    enqueue::single_load,
    keep,
    load::{DrainTicker, enqueue_backlog, metrics, sqs_ops},
    med,
    serve::serve,
    stats::{TABLE_HEAD, percentile},
};

/// The limit of both workloads (issue 13: "limit 50").
pub const LIMIT: u32 = 50;

/// One binary's figures in one run.
#[derive(Debug, Default, Clone, Copy)]
pub struct SideRun {
    /// Jobs of 100 ms: the mean number of jobs the downstream held while
    /// jobs waited, as a share of the limit.
    pub held_share: f64,
    /// Jobs of 100 ms: jobs completed per second.
    pub slow_jobs_per_s: f64,
    /// Jobs of 10 ms: jobs completed per second.
    pub fast_jobs_per_s: f64,
    /// Jobs of 10 ms: the service process's CPU per job, ms.
    pub cpu_ms_per_job: f64,
    /// 32 clients submitting one job per request: 202s per second.
    pub single_rps: f64,
    /// The same: SQS requests per accepted job.
    pub single_sqs_per_job: f64,
    /// One client: p50 latency of a submission, ms.
    pub single_p50_1: f64,
}

/// The baseline binary, if one is given.
pub fn baseline_binary() -> Option<PathBuf> {
    std::env::var_os("SLUICEGATE_BENCH_BASELINE").map(PathBuf::from)
}

/// A backlog of `jobs` drained at limit [`LIMIT`] through a downstream
/// whose jobs take `work`: (mean held ÷ limit while jobs waited, jobs/s,
/// the service's CPU ms per job).
async fn backlog(infra: &Infra, bin: &Path, work: Duration, jobs: usize, tag: &str) -> (f64, f64, f64) {
    let ds = Downstream::start_with(FakeDownstream::builder().work(Work::Fixed(work)).record(false)).await;
    let served = serve(
        infra,
        bin,
        &ds.url,
        &[
            ("MAX_CONCURRENCY", LIMIT.to_string()),
            ("REFILL_ON_CALLBACK", "true".into()),
            ("MAX_IN_FLIGHT_REQUESTS", "8192".into()),
        ],
        tag,
    )
    .await;
    enqueue_backlog(&infra.http, &served.base, jobs, tag).await;
    let cpu0 = infra.cpu.snap(Some(served.pid));
    let t0 = Instant::now();
    // As EventBridge would, once a second; callbacks refill in between.
    let ticker = DrainTicker::start(infra.http.clone(), &served.base, Duration::from_secs(1));
    let (mut held_sum, mut samples) = (0.0, 0u64);
    loop {
        let c = ds.counters();
        let done = c.completed();
        if done as usize >= jobs {
            break;
        }
        // Jobs wait while fewer than all of them are done or held.
        if (done as usize) + (c.held() as usize) < jobs {
            held_sum += c.held() as f64;
            samples += 1;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(600),
            "g: only {done} of {jobs} jobs completed"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let cpu = infra.cpu.since(cpu0, Some(served.pid));
    // `since` gives cores over the interval up to now.
    let cpu_secs = cpu.child * t0.elapsed().as_secs_f64();
    let secs = (ds.counters().last_done().unwrap_or_else(Instant::now) - t0).as_secs_f64();
    ticker.stop().await;
    served.stop().await;
    let held_share = held_sum / samples.max(1) as f64 / f64::from(LIMIT);
    let cpu_ms_per_job = cpu_secs * 1e3 / jobs as f64;
    (held_share, jobs as f64 / secs, cpu_ms_per_job)
}

/// Single submissions: 32 clients for `secs` (202s per second, SQS requests
/// per job), then one client for `secs` (p50 latency).
async fn singles(infra: &Infra, bin: &Path, secs: f64, tag: &str) -> (f64, f64, f64) {
    let ds = Downstream::start_with(
        FakeDownstream::builder()
            .work(Work::Fixed(Duration::ZERO))
            .record(false),
    )
    .await;
    // No drains: only submissions are measured.
    let served = serve(infra, bin, &ds.url, &[("MAX_CONCURRENCY", "0".into())], tag).await;
    let m0 = metrics(&infra.http, &served.base).await;
    let (ok, _, _, took) = single_load(&infra.http, &served.base, 32, secs).await;
    let m1 = metrics(&infra.http, &served.base).await;
    let sends: f64 = sqs_ops(&m0, &m1)
        .iter()
        .filter(|(op, _)| op.starts_with("SendMessage"))
        .map(|(_, n)| n)
        .sum();
    let (_, _, mut lat, _) = single_load(&infra.http, &served.base, 1, secs).await;
    served.stop().await;
    (
        ok as f64 / took.as_secs_f64(),
        sends / ok.max(1) as f64,
        percentile(&mut lat, 50.0),
    )
}

/// One run of every workload on `bin`.
pub async fn side_run(infra: &Infra, s: &Settings, bin: &Path, tag: &str) -> SideRun {
    let (held_share, slow_jobs_per_s, _) = backlog(
        infra,
        bin,
        Duration::from_millis(100),
        s.side_jobs,
        &format!("{tag}-slow"),
    )
    .await;
    let (_, fast_jobs_per_s, cpu_ms_per_job) = backlog(
        infra,
        bin,
        Duration::from_millis(10),
        s.side_jobs,
        &format!("{tag}-fast"),
    )
    .await;
    let (single_rps, single_sqs_per_job, single_p50_1) =
        singles(infra, bin, s.enqueue_secs, &format!("{tag}-single")).await;
    SideRun {
        held_share,
        slow_jobs_per_s,
        fast_jobs_per_s,
        cpu_ms_per_job,
        single_rps,
        single_sqs_per_job,
        single_p50_1,
    }
}

/// The report's section: each binary's medians, then the ratios.
pub fn section(
    o: &mut String,
    k: &mut Facts,
    s: &Settings,
    ours: &[SideRun],
    theirs: &[SideRun],
    baseline: Option<&Path>,
) {
    let _ = writeln!(o, "\n## g. Side by side with a baseline binary\n");
    let Some(baseline) = baseline.filter(|_| !ours.is_empty() && !theirs.is_empty()) else {
        let _ = writeln!(
            o,
            "Not measured: set `SLUICEGATE_BENCH_BASELINE` to a release binary of another commit (see the \
             README's benchmark section for building one)."
        );
        return;
    };
    let _ = writeln!(
        o,
        "This release binary and `{}`, each as a subprocess with a fresh database and queue, one after the other \
         in {} pairs (the binaries alternate). Workloads: {} queued jobs drained at limit {LIMIT} (`POST /drain` \
         once a second, refill on callback) through a downstream whose jobs take 100 ms, then 10 ms; then 32 \
         clients submitting one job per request for {:.0} s with no drains, then one client for as long.\n",
        baseline.display(),
        ours.len(),
        s.side_jobs,
        s.enqueue_secs
    );
    for (who, runs, ours_side) in [("this binary", ours, true), ("the baseline", theirs, false)] {
        let _ = writeln!(o, "\n{who}:\n");
        o.push_str(TABLE_HEAD);
        for f in FIGURES {
            let key = if ours_side { f.ours } else { f.base };
            keep(
                k,
                key,
                o,
                f.label,
                &runs.iter().map(f.value).collect::<Vec<_>>(),
                f.digits,
            );
        }
    }
    let _ = writeln!(o, "\nRatios of the medians (this binary ÷ the baseline):\n");
    let _ = writeln!(o, "| figure | ratio |\n| --- | ---: |");
    for f in FIGURES {
        let _ = writeln!(o, "| {} | {:.2} |", f.label, med(k, f.ours) / med(k, f.base));
    }
}

/// A figure of the section: its label, how to read it off a run, and the
/// keys its medians are kept under.
struct Figure {
    ours: &'static str,
    base: &'static str,
    label: &'static str,
    value: fn(&SideRun) -> f64,
    digits: usize,
}

const FIGURES: [Figure; 7] = [
    Figure {
        ours: "side_ours_held",
        base: "side_base_held",
        label: "100 ms jobs: mean held ÷ limit while jobs waited",
        value: |r| r.held_share,
        digits: 3,
    },
    Figure {
        ours: "side_ours_slow",
        base: "side_base_slow",
        label: "100 ms jobs: jobs/s",
        value: |r| r.slow_jobs_per_s,
        digits: 0,
    },
    Figure {
        ours: "side_ours_fast",
        base: "side_base_fast",
        label: "10 ms jobs: jobs/s",
        value: |r| r.fast_jobs_per_s,
        digits: 0,
    },
    Figure {
        ours: "side_ours_cpu",
        base: "side_base_cpu",
        label: "10 ms jobs: sluicegate CPU per job, ms",
        value: |r| r.cpu_ms_per_job,
        digits: 3,
    },
    Figure {
        ours: "side_ours_rps",
        base: "side_base_rps",
        label: "32 clients, single submissions: 202/s",
        value: |r| r.single_rps,
        digits: 0,
    },
    Figure {
        ours: "side_ours_sqs",
        base: "side_base_sqs",
        label: "32 clients: SQS requests per job",
        value: |r| r.single_sqs_per_job,
        digits: 3,
    },
    Figure {
        ours: "side_ours_p50",
        base: "side_base_p50",
        label: "1 client: p50 latency, ms",
        value: |r| r.single_p50_1,
        digits: 2,
    },
];

/// Its paragraph of the interpretation.
pub fn interpretation(p: &mut String, k: &Facts) {
    let m = |key: &str| med(k, key);
    if m("side_ours_held").is_nan() || m("side_base_held").is_nan() {
        return;
    }
    let _ = write!(
        p,
        "**Side by side (g):** under a backlog of 100 ms jobs at limit {LIMIT} the downstream held {:.3} of the \
         limit on average with this binary and {:.3} with the baseline; with 10 ms jobs it completed {:.0} against \
         {:.0} jobs/s ({:.2}×), at {:.3} against {:.3} ms of the service's CPU per job. 32 clients submitting \
         single jobs got {:.0} against {:.0} accepted per second ({:.2}×) at {:.3} against {:.3} SQS requests per \
         job; one client's p50 was {:.2} against {:.2} ms. ",
        m("side_ours_held"),
        m("side_base_held"),
        m("side_ours_fast"),
        m("side_base_fast"),
        m("side_ours_fast") / m("side_base_fast"),
        m("side_ours_cpu"),
        m("side_base_cpu"),
        m("side_ours_rps"),
        m("side_base_rps"),
        m("side_ours_rps") / m("side_base_rps"),
        m("side_ours_sqs"),
        m("side_base_sqs"),
        m("side_ours_p50"),
        m("side_base_p50"),
    );
}
