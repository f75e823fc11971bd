//! Crash at every step: the `sluicegate` binary, built with the `failpoints`
//! feature (scripts/test enables it), is run with one crash point armed
//! (`FAILPOINTS=<point>=return`: the `fault!` macro then aborts the process,
//! as `kill -9` would) and driven to it, then restarted unarmed; it does the
//! recovery, with another replica (in-process, on the same database and
//! queue) receiving the downstream's callbacks. Afterwards:
//! - every job that got a 202 ends terminal, or queued with a message;
//! - the downstream never held more than the limit;
//! - no attempt was submitted while an earlier one of its job was held;
//! - the live rows equal the `running` that `/stats` reports;
//! - every job's event history explains its status, step by step.

use std::{
    collections::HashMap,
    os::unix::process::ExitStatusExt,
    process::{Child, Command},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use serde_json::{Value, json};

use super::common::*;
use crate::helpers::*;

const LIMIT: usize = 2;

#[derive(Default)]
struct Ledger {
    /// Accepted and not yet called back: job -> attempt.
    held: HashMap<String, i64>,
    max_held: usize,
    violations: Vec<String>,
}

/// A downstream that accepts every job and (unless told not to) calls back
/// `succeeded` to `callback_url` after 100 ms, retrying for a minute.
struct Ds {
    ds: Downstream,
    ledger: Arc<Mutex<Ledger>>,
    calls_back: Arc<AtomicBool>,
}

async fn downstream() -> Ds {
    let ledger = Arc::new(Mutex::new(Ledger::default()));
    let calls_back = Arc::new(AtomicBool::new(true));
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Seen>();
    let l = ledger.clone();
    let ds = Downstream::start(move |s| {
        let mut l = l.lock().unwrap();
        if let Some(a) = l.held.get(&s.job_id) {
            let v = format!("{} attempt {} submitted while attempt {a} is held", s.job_id, s.attempt);
            l.violations.push(v);
        }
        l.held.insert(s.job_id.clone(), s.attempt);
        l.max_held = l.max_held.max(l.held.len());
        let _ = tx.send(s.clone());
        Reply::status(202)
    })
    .await;
    let (l, cb) = (ledger.clone(), calls_back.clone());
    tokio::spawn(async move {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .build()
            .unwrap();
        while let Some(s) = rx.recv().await {
            if !cb.load(Ordering::SeqCst) {
                continue;
            }
            let (http, l) = (http.clone(), l.clone());
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(100)).await;
                let url = s.body["callback_url"].as_str().unwrap().to_owned();
                let token = s.body["callback_token"].as_str().unwrap().to_owned();
                let deadline = Instant::now() + Duration::from_secs(60);
                while Instant::now() < deadline {
                    let r = http
                        .post(&url)
                        .bearer_auth(&token)
                        .json(&json!({"status": "succeeded"}))
                        .send()
                        .await;
                    if let Ok(200 | 401 | 409) = r.map(|r| r.status().as_u16()) {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                l.lock().unwrap().held.remove(&s.job_id);
            });
        }
    });
    Ds { ds, ledger, calls_back }
}

/// Starts the binary with `point` armed (or none: a restart); returns it and
/// its base URL. Its callback URLs name the in-process replica (as behind a
/// load balancer).
fn spawn_armed(app: &TestApp, downstream: &str, point: Option<&str>) -> (Child, String) {
    let mut env = vec![
        ("MAX_CONCURRENCY", LIMIT.to_string()),
        ("DISPATCH_TIMEOUT_SECS", "1".to_owned()),
        ("REFILL_ON_CALLBACK", "false".to_owned()),
        ("LEASE_SWEEP_INTERVAL_SECS", "3600".to_owned()),
    ];
    if let Some(point) = point {
        env.push(("FAILPOINTS", format!("{point}=return")));
    }
    spawn_binary(app, downstream, &env)
}

/// The binary restarted after the crash, stopped (SIGTERM) at the end.
struct Restarted {
    child: Child,
    base: String,
}

impl Restarted {
    fn start(app: &TestApp, downstream: &str) -> Self {
        let (child, base) = spawn_armed(app, downstream, None);
        Self { child, base }
    }

    async fn drain(&self, http: &reqwest::Client) {
        let r = http
            .post(format!("{}/drain", self.base))
            .bearer_auth(DRAIN_TOKEN)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    }
}

impl Drop for Restarted {
    fn drop(&mut self) {
        let _ = Command::new("kill").arg(self.child.id().to_string()).status();
        let _ = self.child.wait();
    }
}

/// Waits for the armed binary to die, and checks it died at the point.
async fn assert_aborted(mut child: Child) {
    let status = tokio::task::spawn_blocking(move || {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("the armed binary did not reach its crash point");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    })
    .await
    .unwrap();
    assert_eq!(status.signal(), Some(libc_sigabrt()), "{status:?}");
}

fn libc_sigabrt() -> i32 {
    6
}

async fn submit_via(http: &reqwest::Client, base: &str, payload: Value) -> reqwest::Result<reqwest::Response> {
    http.post(format!("{base}/jobs"))
        .bearer_auth(API_TOKEN)
        .json(&json!({ "payload": payload }))
        .send()
        .await
}

/// After the crash and the recovery (drains by the restarted binary): the
/// five checks of this module.
async fn check_aftermath(app: &TestApp, restarted: &Restarted, ds: &Ds, accepted: &[String]) {
    // Let the downstream's callbacks land, then let time pass for the jobs
    // nobody has (a crash before the submission): their dispatch lease ends.
    wait_for("the downstream's callbacks land", Duration::from_secs(30), || async {
        ds.ledger.lock().unwrap().held.is_empty()
    })
    .await;
    sqlx::query("UPDATE jobs SET lease_expires_at = now() - interval '1 second' WHERE status = 'dispatching'")
        .execute(&app.db)
        .await
        .unwrap();
    for _ in 0..3 {
        restarted.drain(&app.http).await;
        wait_for("the downstream's callbacks land", Duration::from_secs(30), || async {
            ds.ledger.lock().unwrap().held.is_empty()
        })
        .await;
    }

    // Every 202'd job is terminal, or queued with a message.
    let statuses: Vec<(String, String)> =
        sqlx::query_as("SELECT id::text, status::text FROM jobs WHERE id = ANY($1::uuid[])")
            .bind(accepted)
            .fetch_all(&app.db)
            .await
            .unwrap();
    assert_eq!(statuses.len(), accepted.len(), "a 202'd job is missing");
    let queued = statuses.iter().filter(|(_, s)| s == "queued").count() as i64;
    for (id, s) in &statuses {
        assert!(
            ["succeeded", "failed", "timed_out", "cancelled", "queued"].contains(&s.as_str()),
            "{id} is {s}"
        );
    }
    assert!(
        messages_in_queue(app).await >= queued,
        "{queued} queued jobs, fewer messages"
    );
    // The downstream never held more than the limit, nor a job twice.
    let (max_held, violations) = {
        let l = ds.ledger.lock().unwrap();
        (l.max_held, l.violations.clone())
    };
    assert!(max_held <= LIMIT, "the downstream held {max_held}");
    assert!(violations.is_empty(), "{violations:?}");
    // Live rows equal /stats' running.
    let live: i64 = sqlx::query_scalar("SELECT count(*) FROM jobs WHERE status IN ('dispatching', 'running')")
        .fetch_one(&app.db)
        .await
        .unwrap();
    let stats: Value = app.get("/stats").await.json().await.unwrap();
    assert_eq!(stats["running"], live);
    // Every job's history explains its status, one step after the other.
    let all: Vec<(String, String)> = sqlx::query_as("SELECT id::text, status::text FROM jobs")
        .fetch_all(&app.db)
        .await
        .unwrap();
    for (id, status) in all {
        let events = app.events(&id).await;
        assert_eq!(events[0]["from"], Value::Null, "{id}: {events:?}");
        for w in events.windows(2) {
            assert_eq!(w[1]["from"], w[0]["to"], "{id}: {events:?}");
        }
        assert_eq!(events.last().unwrap()["to"], status.as_str(), "{id}: {events:?}");
    }
}

async fn setup() -> (Ds, TestApp) {
    let ds = downstream().await;
    let app = app()
        .downstream(&ds.ds.url)
        .config(|c| {
            c.max_concurrency = LIMIT as u32;
            c.dispatch_timeout_secs = 1;
        })
        .spawn()
        .await;
    (ds, app)
}

/// Crash points on the way of a job from the queue to the downstream: the
/// armed binary drains and dies there; the other replica carries on.
async fn crash_in_a_drain(point: &str) {
    let (ds, app) = setup().await;
    let mut accepted = Vec::new();
    for i in 0..3 {
        accepted.push(id_of(&app.submit(json!(i)).await));
    }
    let (child, base) = spawn_armed(&app, &ds.ds.url, Some(point));
    let r = app
        .http
        .post(format!("{base}/drain"))
        .bearer_auth(DRAIN_TOKEN)
        .send()
        .await;
    assert!(r.is_err(), "the drain answered: {:?}", r.map(|r| r.status()));
    assert_aborted(child).await;
    let restarted = Restarted::start(&app, &ds.ds.url);
    check_aftermath(&app, &restarted, &ds, &accepted).await;
}

#[tokio::test]
async fn crash_after_the_reservation_before_the_submission() {
    crash_in_a_drain("drain-after-reserve").await;
}

#[tokio::test]
async fn crash_after_the_downstream_accepted_before_running_is_recorded() {
    crash_in_a_drain("drain-after-accept").await;
}

#[tokio::test]
async fn crash_after_running_is_recorded_before_the_message_is_deleted() {
    crash_in_a_drain("drain-after-running").await;
}

/// Crash points inside an enqueue: the client gets no answer, and no job
/// that could be dispatched without its message (or vice versa) is left.
async fn crash_in_an_enqueue(point: &str) {
    let (ds, app) = setup().await;
    let mut accepted = vec![id_of(&app.submit(json!("before")).await)];
    let (child, base) = spawn_armed(&app, &ds.ds.url, Some(point));
    let r = submit_via(&app.http, &base, json!("crashed")).await;
    assert!(r.is_err(), "the enqueue answered: {:?}", r.map(|r| r.status()));
    assert_aborted(child).await;
    // The transaction never committed: no job.
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM jobs WHERE payload::text = '\"crashed\"'")
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert_eq!(n, 0, "a job of a crashed enqueue was stored");
    // Restarted, it takes jobs again.
    let restarted = Restarted::start(&app, &ds.ds.url);
    let r = submit_via(&app.http, &restarted.base, json!("after")).await.unwrap();
    assert_eq!(r.status(), 202);
    accepted.push(id_of(&r.json().await.unwrap()));
    check_aftermath(&app, &restarted, &ds, &accepted).await;
    assert!(ds.ds.seen().iter().all(|s| s.body["payload"] != "crashed"));
}

#[tokio::test]
async fn crash_in_an_enqueue_after_the_insert_before_the_send() {
    crash_in_an_enqueue("enqueue-after-insert").await;
}

#[tokio::test]
async fn crash_in_an_enqueue_after_the_send_before_the_commit() {
    crash_in_an_enqueue("enqueue-after-send").await;
}

/// A callback applied, then the replica dies before answering: the
/// downstream's retry (on another replica) gets 200, and the job is done.
#[tokio::test]
async fn crash_in_a_callback_after_the_update() {
    let (ds, app) = setup().await;
    ds.calls_back.store(false, Ordering::SeqCst);
    let id = id_of(&app.submit(json!(1)).await);
    assert_eq!(app.drain().await["dispatched"], 1);
    let (child, base) = spawn_armed(&app, &ds.ds.url, Some("callback-after-update"));
    let token = ds.ds.token_for(&id);
    let r = app
        .http
        .post(format!("{base}/jobs/{id}/callback"))
        .bearer_auth(&token)
        .json(&json!({"status": "succeeded"}))
        .send()
        .await;
    assert!(r.is_err(), "the callback answered: {:?}", r.map(|r| r.status()));
    assert_aborted(child).await;
    assert_eq!(app.status_of(&id).await, "succeeded");
    // The downstream, having heard nothing, retries on the restarted replica.
    let restarted = Restarted::start(&app, &ds.ds.url);
    let r = app
        .http
        .post(format!("{}/jobs/{id}/callback", restarted.base))
        .bearer_auth(&token)
        .json(&json!({"status": "succeeded"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    ds.ledger.lock().unwrap().held.clear();
    check_aftermath(&app, &restarted, &ds, &[id]).await;
}
