//! The downstream misbehaving: a storm of 5xx answers, and a downstream that
//! accepts jobs and then "crashes" (never calls back).

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use serde_json::json;

use super::common::*;
use crate::helpers::*;

const JOBS: usize = 20;
const LIMIT: i64 = 4;
const STORM: Duration = Duration::from_secs(6);

#[derive(Default)]
struct Ledger {
    /// Every submission: job, attempt, when.
    arrivals: Vec<(String, i64, Instant)>,
    /// Accepted and not yet called back: job -> (attempt, callback token).
    held: HashMap<String, (i64, String)>,
    violations: Vec<String>,
}

async fn live(app: &TestApp) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM jobs WHERE status IN ('dispatching', 'running')")
        .fetch_one(&app.db)
        .await
        .unwrap()
}

/// A 5xx storm: the service backs off (no hot loop, whatever the drain
/// schedule), leaks no slot, and never submits a live attempt twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_5xx_storm_is_met_with_back_off_and_leaks_no_slot() {
    let ledger = Arc::new(Mutex::new(Ledger::default()));
    let storm = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let (l, st) = (ledger.clone(), storm.clone());
    let ds = Downstream::start(move |s| {
        let mut l = l.lock().unwrap();
        l.arrivals.push((s.job_id.clone(), s.attempt, Instant::now()));
        if l.held.contains_key(&s.job_id) {
            l.violations
                .push(format!("{} submitted again while attempt held", s.job_id));
        }
        if st.load(std::sync::atomic::Ordering::SeqCst) {
            return Reply::status(500);
        }
        let token = s.body["callback_token"].as_str().unwrap().to_owned();
        l.held.insert(s.job_id.clone(), (s.attempt, token));
        Reply::status(202)
    })
    .await;
    let app = app()
        .downstream(&ds.url)
        .config(|c| {
            c.max_concurrency = LIMIT as u32;
            c.max_attempts = 20;
            c.refill_on_callback = true;
            c.drain_interval_secs = Some(1);
            c.drain_budget_ms = 1500;
        })
        .spawn()
        .await;
    let jobs: Vec<_> = (0..JOBS).map(|i| json!({"payload": i})).collect();
    app.submit_batch(jobs).await;

    // A scheduler far more eager than EventBridge, on top of the ticker.
    let started = Instant::now();
    let scheduler = {
        let (http, url) = (app.http.clone(), app.url("/drain"));
        tokio::spawn(async move {
            while started.elapsed() < STORM {
                let _ = http.post(&url).bearer_auth(DRAIN_TOKEN).send().await;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    };
    scheduler.await.unwrap();
    storm.store(false, std::sync::atomic::Ordering::SeqCst);
    let arrivals = ledger.lock().unwrap().arrivals.clone();

    // Submissions per second during the storm.
    let mut per_second = vec![0usize; STORM.as_secs() as usize + 1];
    for (_, _, at) in &arrivals {
        let s = at.saturating_duration_since(started).as_secs() as usize;
        if s < per_second.len() {
            per_second[s] += 1;
        }
    }
    eprintln!("submissions per second during the 5xx storm: {per_second:?}");
    // Back-off: a job's n-th retry waits at least half of 2^(n-1) s.
    let mut by_job: HashMap<&str, Vec<Instant>> = HashMap::new();
    for (job, _, at) in &arrivals {
        by_job.entry(job).or_default().push(*at);
    }
    for (job, times) in &by_job {
        for (n, w) in times.windows(2).enumerate() {
            let min = Duration::from_millis(500) * 2u32.pow(n as u32);
            // Minus a little: the release delay is rounded to whole seconds
            // by SQS, but the due time is exact.
            assert!(
                w[1] - w[0] >= min.mul_f64(0.9),
                "job {job}: retry {} after {:?} (back-off at least {min:?})",
                n + 1,
                w[1] - w[0]
            );
        }
    }
    // With that back-off, at most 1 + log2(storm) submissions per job.
    assert!(
        arrivals.len() <= JOBS * 5,
        "{} submissions of {JOBS} jobs in {STORM:?}: a hot loop",
        arrivals.len()
    );
    assert!(per_second.iter().all(|&n| n <= 2 * JOBS), "{per_second:?}");

    // After the storm: the downstream holds jobs; what Postgres counts live
    // is exactly what the downstream holds (no slot leaked by the failures).
    for round in 0..3 {
        wait_for("the downstream holds the limit", Duration::from_secs(30), || async {
            ledger.lock().unwrap().held.len() as i64 == LIMIT
        })
        .await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(
            live(&app).await,
            ledger.lock().unwrap().held.len() as i64,
            "round {round}"
        );
        let held: Vec<(String, (i64, String))> = ledger.lock().unwrap().held.drain().collect();
        for (job, (_, token)) in held {
            let r = app.callback(&job, &token, json!({"status": "succeeded"})).await;
            assert_eq!(r.status(), 200);
        }
    }
    let l = ledger.lock().unwrap();
    assert!(l.violations.is_empty(), "{:?}", l.violations);
}

/// A downstream that accepts and then never calls back (it crashed): the
/// leases reclaim the slots, and the next jobs go.
#[tokio::test]
async fn a_downstream_that_accepts_and_goes_silent_gets_its_slots_reclaimed() {
    let ds = Downstream::start(|_| Reply::status(202)).await;
    let app = app()
        .downstream(&ds.url)
        .config(|c| {
            c.max_concurrency = 2;
            c.refill_on_callback = true;
            c.lease_sweep_interval_secs = 1;
        })
        .spawn()
        .await;
    let mut ids = Vec::new();
    for i in 0..6 {
        let r = app.post_job(json!({"payload": i, "timeout_secs": 1})).await;
        ids.push(id_of(&r.json().await.unwrap()));
    }
    app.drain().await;
    let mut max_live = 0;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        max_live = max_live.max(live(&app).await);
        let mut done = true;
        for id in &ids {
            done &= row(&app, id).await.0 == "timed_out";
        }
        if done {
            break;
        }
        assert!(Instant::now() < deadline, "not every job timed out");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(max_live <= 2, "{max_live} live with a limit of 2");
    let seen = ds.seen();
    assert_eq!(seen.len(), 6, "each job submitted once: {seen:?}");
    for id in &ids {
        assert_eq!(app.events(id).await.last().unwrap()["reason"], "lease expired");
    }
}
