//! c. Utilisation: sluicegate's refill on callback against the naive
//! fixed-batch schedule, on the same seeded random work.

use std::{
    fmt::Write as _,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering::SeqCst},
    },
    time::{Duration, Instant},
};

use sluicegate_testkit::{Downstream, FakeDownstream, Work};

use crate::{
    Facts, Infra, Settings, UTIL_POOL, keep,
    load::{DrainTicker, dispose, enqueue_backlog, start_app},
    med,
    stats::TABLE_HEAD,
};

#[derive(Default, Clone)]
pub struct UtilRun {
    /// Jobs held by the downstream, sampled every 10 ms: (seconds from the
    /// first drain, jobs held), for the chart.
    pub held: Vec<(f64, f64)>,
    pub utilisation: f64,
    pub makespan_s: f64,
    pub max_held: i64,
}

pub async fn utilisation_run(infra: &Infra, s: &Settings, refill: bool, seed: u64) -> UtilRun {
    let (a, b) = s.util_work_ms;
    let ds = Downstream::start_with(
        FakeDownstream::builder()
            .work(Work::UniformMs(a, b))
            .seed(seed)
            .record(false),
    )
    .await;
    let limit = s.util_limit;
    let app = start_app(infra, s, &ds.url, move |c| {
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
    let sampler = ds.sample_held(Duration::from_millis(10), stop.clone());
    let t0 = Instant::now();
    let ticker = DrainTicker::start(http.clone(), &app.base, s.util_tick);
    ds.wait_completed(n as u64, Duration::from_secs(600), "utilisation")
        .await;
    stop.store(true, SeqCst);
    let end = ds.last_done();
    ticker.stop().await;
    let samples = sampler.await.expect("the sampler");
    let held: Vec<(f64, f64)> = samples
        .iter()
        .filter(|(t, _)| *t >= t0 && *t <= end)
        .map(|(t, h)| ((*t - t0).as_secs_f64(), *h as f64))
        .collect();
    let mean = held.iter().map(|(_, h)| h).sum::<f64>() / held.len().max(1) as f64;
    let r = UtilRun {
        held,
        utilisation: mean / f64::from(limit),
        makespan_s: (end - t0).as_secs_f64(),
        max_held: ds.counters().max_held(),
    };
    dispose(app).await;
    r
}

/// The report's section.
pub fn section(o: &mut String, k: &mut Facts, s: &Settings, sluice: &[UtilRun], naive: &[UtilRun]) {
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
        k,
        "us",
        o,
        "sluicegate: mean utilisation",
        &col(sluice, |r| r.utilisation),
        3,
    );
    keep(k, "un", o, "naive: mean utilisation", &col(naive, |r| r.utilisation), 3);
    keep(k, "ms", o, "sluicegate: makespan, s", &col(sluice, |r| r.makespan_s), 2);
    keep(k, "mn", o, "naive: makespan, s", &col(naive, |r| r.makespan_s), 2);
    let pairs: Vec<(UtilRun, UtilRun)> = sluice.iter().cloned().zip(naive.iter().cloned()).collect();
    keep(
        k,
        "uratio",
        o,
        "**utilisation ratio sluicegate ÷ naive** (per run pair)",
        &pairs
            .iter()
            .map(|(a, b)| a.utilisation / b.utilisation)
            .collect::<Vec<_>>(),
        2,
    );
    keep(
        k,
        "mratio",
        o,
        "**makespan ratio naive ÷ sluicegate** (per run pair)",
        &pairs
            .iter()
            .map(|(a, b)| b.makespan_s / a.makespan_s)
            .collect::<Vec<_>>(),
        2,
    );
    keep(
        k,
        "hs",
        o,
        &format!("sluicegate: max jobs the downstream held (limit {})", s.util_limit),
        &col(sluice, |r| r.max_held as f64),
        0,
    );
    keep(
        k,
        "hn",
        o,
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
}

/// Its paragraph of the interpretation.
pub fn interpretation(p: &mut String, k: &Facts, s: &Settings) {
    let m = |key: &str| med(k, key);
    if !m("us").is_nan() {
        let _ = write!(
            p,
            "**Utilisation:** with refill on callback the downstream was kept {:.0} % busy (makespan {:.1} s) \
             against {:.0} % for the fixed schedule ({:.1} s): **{:.1}× the utilisation, {:.1}× shorter \
             makespan**. The gap is set by the tick length against the job length (a {} s tick, jobs of {}–{} \
             ms), not by the service's speed; sluicegate's shortfall from 100 % is the refill latency (callback → \
             drain → reserve from the jobs waiting in the intake window → submit; no SQS round trip while the \
             window holds as many jobs as slots are free) and the tail, when fewer jobs than slots remain. Neither policy \
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
}
