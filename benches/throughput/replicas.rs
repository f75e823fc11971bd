//! h. Replicas: the dispatch of b with 1, 2 and 4 instances on one database
//! and one queue (issue 13, target 5: how it scales, and where it stops).
//! Every reservation takes the one gate row's lock, so the replicas share
//! that; on this machine they also share its two cores with Postgres, the
//! emulator and the bench.

use std::{
    fmt::Write as _,
    time::{Duration, Instant},
};

use crate::{
    Facts, Infra, Settings,
    dispatch::dispatch_setup,
    keep,
    load::{DrainTicker, dispose, enqueue_backlog, start_app},
    med,
    stats::TABLE_HEAD,
};

/// The numbers of replicas measured.
pub const REPLICAS: [usize; 3] = [1, 2, 4];

/// Jobs completed per second with each number of replicas in [`REPLICAS`],
/// and the most the downstream held in any of them.
#[derive(Debug, Default, Clone)]
pub struct ReplicasRun {
    pub jobs_per_s: [f64; 3],
    pub max_held: i64,
}

pub async fn replicas_run(infra: &Infra, s: &Settings) -> ReplicasRun {
    let mut run = ReplicasRun::default();
    for (i, &n_replicas) in REPLICAS.iter().enumerate() {
        let (ds, configure) = dispatch_setup(s).await;
        let n = s.dispatch_jobs;
        let mut first = start_app(infra, s, &ds.url, configure).await;
        enqueue_backlog(&infra.http, &first.base, n, "replicas").await;
        first.stop().await;
        let mut replicas = Vec::new();
        for _ in 0..n_replicas {
            replicas.push(first.replica().await);
        }
        let t0 = Instant::now();
        // Each replica is drained once a second, as if EventBridge's calls
        // were spread over them; callbacks refill the replica that
        // submitted the job.
        let tickers: Vec<DrainTicker> = replicas
            .iter()
            .map(|r| DrainTicker::start(infra.http.clone(), &r.base, Duration::from_secs(1)))
            .collect();
        ds.wait_completed(n as u64, Duration::from_secs(300), "replicas").await;
        run.jobs_per_s[i] = n as f64 / (ds.last_done() - t0).as_secs_f64();
        run.max_held = run.max_held.max(ds.counters().max_held());
        for t in tickers {
            t.stop().await;
        }
        for mut r in replicas {
            r.stop().await;
            let _ = tokio::task::spawn_blocking(move || drop(r)).await;
        }
        dispose(first).await;
    }
    run
}

/// The report's section.
pub fn section(o: &mut String, k: &mut Facts, s: &Settings, runs: &[ReplicasRun]) {
    if runs.is_empty() {
        return;
    }
    let _ = writeln!(
        o,
        "\n## h. Replicas\n\nThe dispatch of b (a backlog of {} jobs, limit {}, {} ms jobs, refill on callback) \
         drained by 1, 2 and 4 instances in this process on one database and one queue, each called with \
         `POST /drain` once a second. Time runs from the first drain to the last callback.\n",
        s.dispatch_jobs,
        s.dispatch_limit,
        s.dispatch_work.as_millis()
    );
    o.push_str(TABLE_HEAD);
    const KEYS: [&str; 3] = ["rep1", "rep2", "rep4"];
    for (i, n) in REPLICAS.iter().enumerate() {
        keep(
            k,
            KEYS[i],
            o,
            &format!(
                "{n} replica{}: jobs completed per second",
                if *n == 1 { "" } else { "s" }
            ),
            &runs.iter().map(|r| r.jobs_per_s[i]).collect::<Vec<_>>(),
            0,
        );
    }
    let _ = writeln!(
        o,
        "\nThe downstream held at most {} (limit {}).",
        runs.iter().map(|r| r.max_held).max().unwrap_or(0),
        s.dispatch_limit
    );
}

/// Its paragraph of the interpretation.
pub fn interpretation(p: &mut String, k: &Facts) {
    let m = |key: &str| med(k, key);
    if m("rep1").is_nan() {
        return;
    }
    let _ = write!(
        p,
        "**Replicas (h):** 1, 2 and 4 instances completed {:.0}, {:.0} and {:.0} jobs/s ({:.2}× and {:.2}× one): \
         on two cores shared with Postgres and the emulator, more replicas add drains and connections but no \
         CPU, and every reservation queues for the one gate row, so this machine shows where it stops rather \
         than how far it would go on separate hosts. ",
        m("rep1"),
        m("rep2"),
        m("rep4"),
        m("rep2") / m("rep1"),
        m("rep4") / m("rep1"),
    );
}
