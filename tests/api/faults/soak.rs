//! The soak (issue 11): steady load with a fault every [`FAULT_EVERY`], for
//! `SOAK_SECS` (default 600). Not in `.ci/run`; `scripts/soak` runs it and
//! `docs/reliability.md` holds the figures of a run.
//!
//! Three replicas on one throwaway Postgres cluster (so that it can be
//! restarted) and one SQS emulator behind a proxy (so that it can be cut):
//! - `app`, in process, which receives the downstream's callbacks;
//! - binary A, never killed: its memory and open files are the series;
//! - binary B, killed with SIGKILL and restarted on its port as a fault.
//!
//! Clients submit through A and B (50 jobs/s each), the scheduler drains
//! both every 100 ms, and the downstream fails as real ones do: 2% 5xx, 1%
//! 429 with `Retry-After`, 1% callbacks lost (the lease reclaims them). The
//! faults: Postgres stopped for 3 s, SQS cut for 5 s, a 5 s storm of 5xx,
//! 5 s of submissions that hang past the dispatch timeout, B killed.
//!
//! Afterwards, as after every fault test: every job that got a 202 is
//! terminal or queued with its message; the downstream never held more than
//! the limit; no job was submitted while the downstream held it; `/stats`'
//! `running` equals the live rows. And the series stay flat: A's memory and
//! open files, and Postgres's connections.

use std::{
    collections::HashSet,
    fmt::Write as _,
    process::Child,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU8, Ordering::SeqCst},
    },
    time::{Duration, Instant},
};

use rand::Rng;
use serde_json::json;
use sluicegate::config::Secret;

use super::{
    common::*,
    load::{self, Load},
};
use crate::{helpers::*, pg_cluster::PgCluster};

const LIMIT: i64 = 30;
const FAULT_EVERY: Duration = Duration::from_secs(30);
const SAMPLE_EVERY: Duration = Duration::from_secs(10);
/// Leases short enough that lost callbacks and hung submissions come back
/// within the soak.
const JOB_TIMEOUT_SECS: u32 = 10;
const DISPATCH_TIMEOUT_SECS: u32 = 2;
const POOL_SIZE: u32 = 10;

const NORMAL: u8 = 0;
const STORM: u8 = 1;
const HANG: u8 = 2;

/// What the downstream holds, by its own account.
#[derive(Default)]
struct Ledger {
    held: HashSet<String>,
    max_held: usize,
    violations: Vec<String>,
}

struct Soak {
    cluster: Arc<PgCluster>,
    proxy: Proxy,
    mode: Arc<AtomicU8>,
    app: TestApp,
    ds_url: String,
    b: Child,
    b_base: String,
}

impl Soak {
    fn binary_env(&self) -> Vec<(&'static str, String)> {
        binary_env(&self.cluster, &self.proxy)
    }

    async fn inject(&mut self, fault: usize) -> &'static str {
        match fault {
            0 => {
                let c = self.cluster.clone();
                tokio::task::spawn_blocking(move || c.stop_immediate()).await.unwrap();
                tokio::time::sleep(Duration::from_secs(3)).await;
                let c = self.cluster.clone();
                tokio::task::spawn_blocking(move || c.start_server()).await.unwrap();
                "postgres stopped 3 s"
            }
            1 => {
                self.proxy.set_down(true).await;
                tokio::time::sleep(Duration::from_secs(5)).await;
                self.proxy.set_down(false).await;
                "sqs cut 5 s"
            }
            2 => {
                self.mode.store(STORM, SeqCst);
                tokio::time::sleep(Duration::from_secs(5)).await;
                self.mode.store(NORMAL, SeqCst);
                "downstream 5xx 5 s"
            }
            3 => {
                self.mode.store(HANG, SeqCst);
                tokio::time::sleep(Duration::from_secs(5)).await;
                self.mode.store(NORMAL, SeqCst);
                "downstream hangs 5 s"
            }
            _ => {
                let _ = self.b.kill();
                let _ = self.b.wait();
                tokio::time::sleep(Duration::from_secs(2)).await;
                let mut env = self.binary_env();
                env.push(("LISTEN_ADDR", self.b_base.trim_start_matches("http://").to_owned()));
                let (child, base) = spawn_binary(&self.app, &self.ds_url, &env);
                assert_eq!(base, self.b_base);
                self.b = child;
                "replica B killed"
            }
        }
    }
}

fn binary_env(cluster: &PgCluster, proxy: &Proxy) -> Vec<(&'static str, String)> {
    vec![
        ("DATABASE_URL", cluster.url("postgres")),
        ("AWS_ENDPOINT_URL", format!("http://{}", proxy.addr)),
        ("MAX_CONCURRENCY", LIMIT.to_string()),
        ("DISPATCH_TIMEOUT_SECS", DISPATCH_TIMEOUT_SECS.to_string()),
        ("JOB_TIMEOUT_SECS", JOB_TIMEOUT_SECS.to_string()),
        ("LEASE_SWEEP_INTERVAL_SECS", "2".into()),
        ("DATABASE_POOL_SIZE", POOL_SIZE.to_string()),
        ("DRAIN_BUDGET_MS", "1500".into()),
    ]
}

/// Resident memory (KiB) and open files of a process, from /proc.
fn rss_and_fds(pid: u32) -> (u64, usize) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let rss = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0);
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count());
    (rss, fds)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "the 10-minute soak: scripts/soak"]
async fn soak() {
    let secs: u64 = std::env::var("SOAK_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(600);
    let cluster = Arc::new(tokio::task::spawn_blocking(PgCluster::start).await.unwrap());
    let url = cluster.url("postgres");
    let proxy = Proxy::start(addr_of(&fast_sqs_endpoint())).await;

    // The downstream: realistic failure rates, and its own ledger.
    let mode = Arc::new(AtomicU8::new(NORMAL));
    let ledger = Arc::new(Mutex::new(Ledger::default()));
    let (m, l) = (mode.clone(), ledger.clone());
    let hang = Duration::from_secs(u64::from(DISPATCH_TIMEOUT_SECS) + 1);
    let (l2, lost) = (ledger.clone(), Arc::new(Mutex::new(HashSet::<String>::new())));
    let lost2 = lost.clone();
    let ds = Downstream::start_with(
        FakeDownstream::builder()
            .work(Work::UniformMs(50, 300))
            .record(false)
            .callback_attempts(20)
            .reply(move |s| {
                let roll: f64 = rand::rng().random();
                match m.load(SeqCst) {
                    STORM => return Reply::status(500),
                    // Answered after the dispatch timeout: sluicegate has
                    // given up (outcome unknown) and the job never ran.
                    HANG => return Reply::after(hang, 503),
                    _ => {}
                }
                if roll < 0.02 {
                    return Reply::status(500);
                }
                if roll < 0.03 {
                    return Reply {
                        retry_after: Some("1".into()),
                        ..Reply::status(429)
                    };
                }
                let mut l = l.lock().unwrap();
                if !l.held.insert(s.job_id.clone()) {
                    let v = format!(
                        "{} attempt {} submitted while the downstream holds it",
                        s.job_id, s.attempt
                    );
                    l.violations.push(v);
                }
                l.max_held = l.max_held.max(l.held.len());
                if roll < 0.04 {
                    lost.lock().unwrap().insert(s.job_id.clone());
                }
                Reply::status(202)
            })
            .outcome(move |s, _| {
                l2.lock().unwrap().held.remove(&s.job_id);
                if lost2.lock().unwrap().remove(&s.job_id) {
                    // Not a valid outcome: every attempt of this callback is
                    // refused (422), so it is lost and the lease reclaims it.
                    json!({"status": "lost"})
                } else {
                    json!({"status": "succeeded"})
                }
            }),
    )
    .await;

    let u = url.clone();
    let app = app()
        .fast_sqs()
        .app_sqs_endpoint(format!("http://{}", proxy.addr))
        .downstream(&ds.url)
        .config(move |c| {
            c.database_url = Secret::new(&u);
            c.max_concurrency = LIMIT as u32;
            c.dispatch_timeout_secs = DISPATCH_TIMEOUT_SECS;
            c.job_timeout_secs = JOB_TIMEOUT_SECS;
            c.lease_sweep_interval_secs = 2;
            c.database_pool_size = POOL_SIZE;
            c.drain_budget_ms = 1500;
        })
        .spawn()
        .await;
    let db = sqlx::PgPool::connect(&url).await.unwrap();
    let env = binary_env(&cluster, &proxy);
    let (mut a, a_base) = spawn_binary(&app, &ds.url, &env);
    let (b, b_base) = spawn_binary(&app, &ds.url, &env);
    let mut soak = Soak {
        cluster,
        proxy,
        mode,
        app,
        ds_url: ds.url.clone(),
        b,
        b_base: b_base.clone(),
    };

    // 16 jobs a second on each: below what the three replicas drain here
    // with faults and Retry-After pauses (about 43 a second), so that the
    // run ends without a backlog (one client pausing 20 ms after each
    // answer submitted up to 50 a second, and left a 10,000-job backlog
    // that 180 s of settling could not drain).
    let load_a = Load::start_every(&a_base, 1, Duration::from_millis(60));
    let load_b = Load::start_every(&b_base, 1, Duration::from_millis(60));
    let started = Instant::now();
    let mut report = String::new();
    writeln!(
        report,
        "| t (s) | A's RSS (MiB) | A's open files | Postgres connections | jobs accepted | jobs called back | downstream holds | fault |\n| ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |"
    )
    .unwrap();
    let mut series: Vec<(f64, f64, usize, i64)> = Vec::new();
    let mut next_fault = started + FAULT_EVERY;
    let mut next_sample = started;
    let mut faults = Vec::new();
    let mut last_fault = "";
    while started.elapsed() < Duration::from_secs(secs) {
        if Instant::now() >= next_sample {
            next_sample += SAMPLE_EVERY;
            let (rss, fds) = rss_and_fds(a.id());
            let conns: i64 =
                sqlx::query_scalar("SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend'")
                    .fetch_one(&db)
                    .await
                    .unwrap_or(-1);
            let accepted = load_a.record.lock().unwrap().accepted.len() + load_b.record.lock().unwrap().accepted.len();
            let t = started.elapsed().as_secs_f64();
            let rss_mib = rss as f64 / 1024.0;
            series.push((t, rss_mib, fds, conns));
            let line = format!(
                "| {t:.0} | {rss_mib:.1} | {fds} | {conns} | {accepted} | {} | {} | {last_fault} |",
                ds.fake.counters().completed(),
                ledger.lock().unwrap().held.len(),
            );
            eprintln!("{line}");
            writeln!(report, "{line}").unwrap();
            last_fault = "";
        }
        if Instant::now() >= next_fault {
            next_fault += FAULT_EVERY;
            let fault = rand::rng().random_range(0..5);
            let what = soak.inject(fault).await;
            faults.push(what);
            last_fault = what;
            continue;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let rec_a = load_a.stop().await;
    let rec_b = load_b.stop().await;
    soak.mode.store(NORMAL, SeqCst);
    let accepted: Vec<String> = rec_a.accepted.iter().chain(&rec_b.accepted).cloned().collect();

    // Every job that got a 202 ends terminal (or queued with its message).
    let left = load::settle(&soak.app, &db, &accepted, Duration::from_secs(180)).await;
    let stats = soak.app.get("/stats").await.json::<serde_json::Value>().await.unwrap();
    let live: i64 = sqlx::query_scalar("SELECT count(*) FROM jobs WHERE status IN ('dispatching', 'running')")
        .fetch_one(&db)
        .await
        .unwrap();
    let (rss_end, fds_end) = rss_and_fds(a.id());
    let _ = a.kill();
    let _ = a.wait();
    let _ = soak.b.kill();
    let _ = soak.b.wait();

    let (max_held, violations) = {
        let l = ledger.lock().unwrap();
        (l.max_held, l.violations.clone())
    };
    let n = series.len();
    let third = (n / 3).max(1);
    let early = &series[..third.min(n)];
    let late = &series[n - third.min(n)..];
    let rss = |s: &[(f64, f64, usize, i64)]| median(s.iter().map(|x| x.1).collect());
    let fds = |s: &[(f64, f64, usize, i64)]| median(s.iter().map(|x| x.2 as f64).collect());
    let max_conns = series.iter().map(|x| x.3).max().unwrap_or(0);
    let summary = format!(
        "soak: {secs} s, {} jobs accepted, {} called back, {} faults ({faults:?}); \
         downstream held at most {} (limit {LIMIT}), {} violations; \
         A's RSS median {:.1} MiB in the first third, {:.1} MiB in the last, {rss_end} KiB at the end; \
         A's open files median {} then {}, {fds_end} at the end; Postgres connections at most {max_conns}; \
         /stats running {} with {live} live rows; {} jobs neither terminal nor queued with a message",
        accepted.len(),
        ds.fake.counters().completed(),
        faults.len(),
        max_held,
        violations.len(),
        rss(early),
        rss(late),
        fds(early),
        fds(late),
        stats["running"],
        left.len(),
    );
    eprintln!("{summary}");
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/soak-report.md");
    std::fs::write(&path, format!("{report}\n{summary}\n")).unwrap();
    eprintln!("series written to {}", path.display());

    if !left.is_empty() {
        // What each one went through, and whether its message may only be
        // hidden (in flight) rather than gone.
        let hidden = messages_in_queue(&soak.app).await;
        let mut why = format!("{} messages in the queue, visible or not\n", hidden);
        for (id, status) in &left {
            let events: Vec<(String, String, i32, String)> = sqlx::query_as(
                "SELECT to_char(at, 'HH24:MI:SS.MS'), to_status::text, attempt, reason FROM job_events
                 WHERE job_id = $1::uuid ORDER BY id",
            )
            .bind(id)
            .fetch_all(&db)
            .await
            .unwrap_or_default();
            let window: Option<(bool, bool, String)> = sqlx::query_as(
                "SELECT reserved, pending, to_char(expires_at, 'HH24:MI:SS') FROM intake WHERE job_id = $1::uuid",
            )
            .bind(id)
            .fetch_optional(&db)
            .await
            .unwrap_or_default();
            writeln!(why, "{id} {status}: window row {window:?}, events {events:?}").unwrap();
        }
        panic!("jobs neither terminal nor queued with a visible message:\n{why}");
    }
    assert!(max_held as i64 <= LIMIT, "{summary}");
    assert!(violations.is_empty(), "{violations:?}");
    assert_eq!(stats["running"].as_i64(), Some(live), "{summary}");
    // Flat: what the last third holds is within a margin of the first.
    assert!(rss(late) <= rss(early) * 1.5 + 8.0, "A's memory grew: {summary}");
    assert!(fds(late) <= fds(early) + 16.0, "A's open files grew: {summary}");
    // Three replicas' pools, their watchers and this test's pool.
    assert!(max_conns <= i64::from(3 * (POOL_SIZE + 1)) + 5, "{summary}");
}
