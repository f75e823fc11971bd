//! Postgres crashed and restarted under load, for real: a throwaway cluster
//! (tests/api/pg_cluster.rs) stopped with `pg_ctl stop -m immediate` while
//! clients submit, the scheduler drains and the downstream calls back, then
//! started again.

use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use sluicegate::config::Secret;

use super::load::{self, Load, Sample};
use crate::{helpers::*, pg_cluster::PgCluster};

/// Longer than the pool's 5 s `acquire_timeout` (src/startup.rs): a request
/// that waited for the pool instead of failing fast would show.
const OUTAGE: Duration = Duration::from_secs(8);
const NEED_POSTGRES: [&str; 3] = ["POST /jobs", "GET /stats", "POST /drain"];

struct Outage {
    samples: Vec<Sample>,
    down: Instant,
    restart: Instant,
    up: Instant,
    report: String,
}

impl Outage {
    fn route(&self, route: &'static str) -> impl Iterator<Item = &Sample> {
        self.samples.iter().filter(move |s| s.route == route)
    }
    /// Requests that started while Postgres was down, at least `margin`
    /// before it came back.
    fn during(&self, route: &'static str, margin: Duration) -> Vec<&Sample> {
        self.route(route)
            .filter(|s| s.started >= self.down && s.started + margin <= self.restart)
            .collect()
    }
    /// Requests in flight at some point while Postgres was down.
    fn overlapping(&self, route: &'static str) -> Vec<&Sample> {
        self.route(route)
            .filter(|s| s.started <= self.restart && s.started + s.latency >= self.down)
            .collect()
    }
    /// Requests answered while Postgres was down (from 100 ms after the kill).
    fn answered_during(&self, route: &'static str) -> Vec<&Sample> {
        self.route(route)
            .filter(|s| {
                let end = s.started + s.latency;
                end >= self.down + Duration::from_millis(100) && end <= self.restart
            })
            .collect()
    }
}

/// Runs the service on a throwaway cluster under load, kills Postgres for
/// [`OUTAGE`], starts it again, and checks that every job that got a 202 is
/// there and ends terminal (or queued with its message).
async fn kill_postgres_under_load() -> Outage {
    let cluster = Arc::new(tokio::task::spawn_blocking(PgCluster::start).await.unwrap());
    let url = cluster.url("postgres");
    let base = Arc::new(Mutex::new(String::new()));
    let ds = load::calling_back_downstream(base.clone()).await;
    let u = url.clone();
    let app = app()
        .downstream(&ds.url)
        .config(move |c| {
            c.database_url = Secret::new(&u);
            c.max_concurrency = 50;
            c.drain_budget_ms = 1500;
            c.dispatch_timeout_secs = 2;
        })
        .spawn()
        .await;
    *base.lock().unwrap() = app.base.clone();
    let db = sqlx::PgPool::connect(&url).await.unwrap();

    let load = Load::start(&app.base, 4);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let c = cluster.clone();
    tokio::task::spawn_blocking(move || c.stop_immediate()).await.unwrap();
    let down = Instant::now();
    tokio::time::sleep(OUTAGE).await;
    let restart = Instant::now();
    let c = cluster.clone();
    tokio::task::spawn_blocking(move || c.start_server()).await.unwrap();
    let up = Instant::now();
    tokio::time::sleep(Duration::from_secs(8)).await;
    let record = load.stop().await;
    let mut o = Outage {
        samples: record.samples,
        down,
        restart,
        up,
        report: format!(
            "postgres down for {:?}, start took {:?}\n",
            restart - down,
            up - restart
        ),
    };
    for route in NEED_POSTGRES {
        let timeline: Vec<String> = o
            .overlapping(route)
            .iter()
            .map(|s| {
                let at = s.started.saturating_duration_since(down).as_secs_f64()
                    - down.saturating_duration_since(s.started).as_secs_f64();
                format!("{at:+.1}s:{}:{:.1}s", s.status, s.latency.as_secs_f64())
            })
            .collect();
        o.report += &format!("{route} in flight during the outage (start:status:latency): {timeline:?}\n");
        let during = o.during(route, Duration::ZERO);
        let mut lat: Vec<Duration> = during.iter().map(|s| s.latency).collect();
        let answers: std::collections::BTreeMap<u16, usize> = during.iter().fold(Default::default(), |mut m, s| {
            *m.entry(s.status).or_default() += 1;
            m
        });
        o.report += &format!(
            "{route}: {} requests started during the outage, p99 {:?}, max {:?}, answers {answers:?}\n",
            during.len(),
            load::p99(&mut lat),
            lat.last().copied().unwrap_or_default(),
        );
    }
    eprintln!("{}", o.report);

    // Every job that got a 202 is there and ends terminal (or queued with its message).
    let left = load::settle(&app, &db, &record.accepted, Duration::from_secs(60)).await;
    assert!(!record.accepted.is_empty());
    assert!(
        left.is_empty(),
        "jobs neither terminal nor queued with a message: {left:?}"
    );
    o
}

/// No job lost; `/readyz` names Postgres; while Postgres is down every
/// request that needs it fails fast (503 + Retry-After, p99 at most 1 s:
/// none waits out the pool's acquire timeout); the service recovers by
/// itself within 5 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_killed_and_restarted_under_load() {
    let o = kill_postgres_under_load().await;
    let report = &o.report;
    for route in NEED_POSTGRES {
        // Answered while Postgres was down: 503 + Retry-After.
        let answered = o.answered_during(route);
        assert!(!answered.is_empty(), "{route}: no answer during the outage\n{report}");
        for s in answered {
            assert!(
                s.status == 503 && s.retry_after,
                "{route}: {} {}\n{report}",
                s.status,
                s.body
            );
        }
        // In flight at some point of the outage: 503 + Retry-After, or
        // served before it or once Postgres is back; fast either way.
        let overlapping = o.overlapping(route);
        for s in &overlapping {
            assert!(
                (s.status == 503 && s.retry_after) || (200..300).contains(&s.status),
                "{route}: {} {}",
                s.status,
                s.body
            );
        }
        // Time spent waiting once the outage began: a request already
        // under way when Postgres died (a drain runs for most of its
        // budget) is judged by how fast it answered after the kill.
        let mut latencies: Vec<Duration> = overlapping
            .iter()
            .map(|s| (s.started + s.latency).saturating_duration_since(s.started.max(o.down)))
            .collect();
        assert!(
            load::p99(&mut latencies) <= Duration::from_secs(1),
            "{route}: p99 over 1 s\n{report}"
        );
    }
    let readyz = o.during("GET /readyz", Duration::from_secs(2));
    assert!(!readyz.is_empty());
    for s in readyz {
        assert!(
            s.status == 503 && s.body.contains("postgres"),
            "/readyz: {} {}",
            s.status,
            s.body
        );
    }
    // Recovery: the service comes back by itself within 5 s.
    let recovered = o.up + Duration::from_secs(5);
    let first_202 = o
        .route("POST /jobs")
        .filter(|s| s.started >= o.up && s.status == 202)
        .map(|s| s.started + s.latency - o.up)
        .min();
    assert!(first_202.is_some_and(|d| d <= Duration::from_secs(5)), "{report}");
    let readyz_back = o
        .route("GET /readyz")
        .filter(|s| s.started >= o.up && s.status == 200)
        .map(|s| s.started + s.latency - o.up)
        .min();
    assert!(readyz_back.is_some_and(|d| d <= Duration::from_secs(5)), "{report}");
    for s in o.samples.iter().filter(|s| s.started >= recovered) {
        assert!(
            (200..300).contains(&s.status),
            "after recovery: {} {} {}",
            s.route,
            s.status,
            s.body
        );
    }
}
