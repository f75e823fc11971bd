//! The concurrency invariant under load: three replicas on one database and
//! queue, six concurrent drain callers, a downstream that is slow, busy,
//! failing, timing out and losing callbacks, and the limit changing at
//! random (the key caps: two replicas, the caps changing).

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use rand::{Rng, SeedableRng, rngs::StdRng};
use serde_json::{Value, json};

use crate::helpers::*;

const JOBS: usize = 150;

/// What the downstream holds and what it has seen.
#[derive(Default)]
struct Ledger {
    /// job id -> attempt, for every submission it accepted and still holds
    /// (until it calls back, or loses the job).
    held: HashMap<String, i64>,
    max_held: usize,
    /// For every accepted submission: what was held right after it arrived.
    arrivals_held: Vec<Vec<(String, i64)>>,
    last_attempt: HashMap<String, i64>,
    violations: Vec<String>,
    arrivals: usize,
}

/// Records every change of the limit with the database's clock, from the
/// same transaction (and so under the same row lock) as the change.
const LIMIT_LOG: &str = "
    CREATE TABLE stress_limit_log (at timestamptz NOT NULL, max_concurrency int NOT NULL);
    INSERT INTO stress_limit_log SELECT 'epoch', max_concurrency FROM gate;
    CREATE FUNCTION stress_log_limit() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN INSERT INTO stress_limit_log VALUES (clock_timestamp(), NEW.max_concurrency); RETURN NULL; END $$;
    CREATE TRIGGER stress_log_limit AFTER UPDATE OF max_concurrency ON gate
        FOR EACH ROW EXECUTE FUNCTION stress_log_limit();";

/// When each submission (job id, attempt) was reserved, by the database's
/// clock (its `queued` -> `dispatching` event).
async fn reservation_times(db: &sqlx::PgPool) -> HashMap<(String, i64), chrono::DateTime<chrono::Utc>> {
    sqlx::query_as::<_, (String, i32, chrono::DateTime<chrono::Utc>)>(
        "SELECT job_id::text, attempt, at FROM job_events WHERE from_status = 'queued' AND to_status = 'dispatching'",
    )
    .fetch_all(db)
    .await
    .unwrap()
    .into_iter()
    .map(|(id, attempt, at)| ((id, i64::from(attempt)), at))
    .collect()
}

/// Checks every accepted arrival against the limit in force when the newest
/// of the submissions the downstream then held was reserved. Every held job
/// was live in Postgres from its reservation until the downstream let it go,
/// so at that reservation the live count was at least what was held, and the
/// reservation (under the gate lock) guaranteed it was at most the limit it
/// saw: the last change logged before it (the log and the reservation's event
/// are written under the same lock, by the database's clock).
async fn check_arrivals_against_the_limit(db: &sqlx::PgPool, arrivals: &[Vec<(String, i64)>]) -> Vec<String> {
    use chrono::{DateTime, Utc};
    let limits: Vec<(DateTime<Utc>, i32)> =
        sqlx::query_as("SELECT at, max_concurrency FROM stress_limit_log ORDER BY at")
            .fetch_all(db)
            .await
            .unwrap();
    let reserved = reservation_times(db).await;
    let mut violations = Vec::new();
    for held in arrivals {
        let newest = held
            .iter()
            .map(|(id, a)| {
                reserved
                    .get(&(id.clone(), *a))
                    .copied()
                    .expect("a held submission was reserved")
            })
            .max()
            .expect("an arrival holds at least itself");
        let limit = limits
            .iter()
            .rev()
            .find(|(at, _)| *at < newest)
            .map(|(_, l)| *l)
            .expect("the first limit is logged at the epoch");
        if held.len() as i64 > i64::from(limit) {
            violations.push(format!("held {} jobs with a limit of {limit}: {held:?}", held.len()));
        }
    }
    violations
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_limit_holds_with_three_replicas_racing_drains_and_a_hostile_downstream() {
    let ledger = Arc::new(Mutex::new(Ledger::default()));
    let rng = Arc::new(Mutex::new(StdRng::seed_from_u64(7)));
    // The downstream's own work, finished by callbacks.
    let (finish_tx, mut finish_rx) = tokio::sync::mpsc::unbounded_channel::<(Seen, Duration, bool)>();

    let (l, r) = (ledger.clone(), rng.clone());
    let ds = Downstream::start(move |s: &Seen| {
        let mut ledger = l.lock().unwrap();
        ledger.arrivals += 1;
        if ledger.held.contains_key(&s.job_id) {
            ledger.violations.push(format!(
                "{} submitted again while an earlier attempt is still held",
                s.job_id
            ));
        }
        if let Some(prev) = ledger.last_attempt.get(&s.job_id).copied() {
            if s.attempt <= prev {
                ledger
                    .violations
                    .push(format!("{} attempt went from {prev} to {}", s.job_id, s.attempt));
            }
        }
        ledger.last_attempt.insert(s.job_id.clone(), s.attempt);
        let roll: f64 = r.lock().unwrap().random();
        let latency = Duration::from_millis(r.lock().unwrap().random_range(0..150));
        let reply = |status| Reply {
            status,
            retry_after: None,
            delay: latency,
        };
        let answer = match roll {
            x if x < 0.10 => return reply(429),
            x if x < 0.18 => return reply(500),
            // Accepted after sluicegate gave up (1 s): still held and run.
            x if x < 0.22 => Reply::after(Duration::from_millis(1500), 202),
            _ => reply(202),
        };
        // Accepted: held from now until it calls back (or loses it).
        ledger.held.insert(s.job_id.clone(), s.attempt);
        ledger.max_held = ledger.max_held.max(ledger.held.len());
        let snapshot: Vec<(String, i64)> = ledger.held.iter().map(|(k, v)| (k.clone(), *v)).collect();
        ledger.arrivals_held.push(snapshot);
        let lose = roll > 0.96;
        let work = answer.delay + Duration::from_millis(r.lock().unwrap().random_range(20..400));
        finish_tx.send((s.clone(), work, lose)).unwrap();
        answer
    })
    .await;

    let a = Arc::new(
        app()
            .fast_sqs()
            .downstream(&ds.url)
            .config(|c| {
                c.max_concurrency = 4;
                c.dispatch_timeout_secs = 1;
                c.drain_budget_ms = 1500;
                c.refill_on_callback = true;
                c.lease_sweep_interval_secs = 1;
                c.max_attempts = 50;
            })
            .spawn()
            .await,
    );
    let b = Arc::new(a.replica().await);
    let c = Arc::new(a.replica().await);
    sqlx::raw_sql(LIMIT_LOG).execute(&a.db).await.unwrap();

    // The downstream's workers: call back after the work (on either replica's
    // URL, as given), or lose the job.
    let (l, cb_http) = (ledger.clone(), a.http.clone());
    let worker = tokio::spawn(async move {
        while let Some((s, work, lose)) = finish_rx.recv().await {
            let (l, http) = (l.clone(), cb_http.clone());
            tokio::spawn(async move {
                tokio::time::sleep(work).await;
                if lose {
                    l.lock().unwrap().held.remove(&s.job_id);
                    return;
                }
                let status = if work.as_millis() % 5 == 0 {
                    "failed"
                } else {
                    "succeeded"
                };
                let token = s.body["callback_token"].as_str().unwrap().to_owned();
                // Released before the callback is sent: the slot is freed by it.
                l.lock().unwrap().held.remove(&s.job_id);
                let url = s.body["callback_url"].as_str().unwrap().to_owned();
                let _ = http
                    .post(url)
                    .bearer_auth(token)
                    .json(&json!({"status": status, "error": null}))
                    .send()
                    .await;
            });
        }
    });

    let jobs: Vec<Value> = (0..JOBS)
        .map(|i| json!({"payload": {"i": i}, "timeout_secs": 4}))
        .collect();
    a.submit_batch(jobs).await;

    let deadline = Instant::now() + Duration::from_secs(120);
    let all_terminal = |app: Arc<TestApp>| async move {
        let n: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM jobs WHERE status NOT IN ('succeeded', 'failed', 'timed_out', 'cancelled')",
        )
        .fetch_one(&app.db)
        .await
        .unwrap();
        n == 0
    };

    // Six drain callers, two on each replica.
    let mut callers = Vec::new();
    for k in 0..6 {
        let app = [&a, &b, &c][k % 3].clone();
        callers.push(tokio::spawn(async move {
            let mut drains = 0;
            while Instant::now() < deadline {
                let r = app
                    .http
                    .post(app.url("/drain"))
                    .bearer_auth(DRAIN_TOKEN)
                    .send()
                    .await
                    .unwrap();
                let status = r.status();
                let report: Value = r.json().await.unwrap();
                assert_eq!(status, 200, "{report}");
                assert!(report["running"].as_i64().unwrap() <= report["limit"].as_i64().unwrap().max(8));
                drains += 1;
                if drains % 10 == 0 && all_terminal(app.clone()).await {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            drains
        }));
    }
    // Random limit changes while it runs, then a final generous limit so the
    // backlog finishes.
    let changer_app = a.clone();
    let changer = tokio::spawn(async move {
        let mut rng = StdRng::seed_from_u64(11);
        for _ in 0..15 {
            tokio::time::sleep(Duration::from_millis(300)).await;
            changer_app.set_limit(rng.random_range(0..=8)).await;
        }
        changer_app.set_limit(8).await;
    });
    changer.await.unwrap();
    let mut drains = 0;
    for c in callers {
        drains += c.await.unwrap();
    }

    // Also sample the database: live jobs never above the largest limit.
    let live: i64 = sqlx::query_scalar("SELECT count(*) FROM jobs WHERE status IN ('dispatching', 'running')")
        .fetch_one(&a.db)
        .await
        .unwrap();
    assert!(live <= 8);

    let arrivals_held = ledger.lock().unwrap().arrivals_held.clone();
    let over_limit = check_arrivals_against_the_limit(&a.db, &arrivals_held).await;
    assert!(over_limit.is_empty(), "{over_limit:?}");
    {
        let ledger_now = ledger.lock().unwrap();
        assert!(ledger_now.violations.is_empty(), "{:?}", ledger_now.violations);
        assert!(
            ledger_now.arrivals >= JOBS,
            "every job reached the downstream at least once"
        );
        assert!(
            ledger_now.max_held >= 2,
            "the test exercised concurrency (max held {})",
            ledger_now.max_held
        );
        eprintln!(
            "stress: {drains} drains, {} arrivals, max held {}",
            ledger_now.arrivals, ledger_now.max_held
        );
    }

    assert!(all_terminal(a.clone()).await, "every job ends terminal");
    // The counts in /stats equal the rows.
    let rows: HashMap<String, i64> =
        sqlx::query_as::<_, (String, i64)>("SELECT status::text, count(*) FROM jobs GROUP BY status")
            .fetch_all(&a.db)
            .await
            .unwrap()
            .into_iter()
            .collect();
    let stats: Value = a.get("/stats").await.json().await.unwrap();
    for status in ["succeeded", "failed", "timed_out", "cancelled", "queued"] {
        assert_eq!(
            stats[status].as_i64().unwrap(),
            rows.get(status).copied().unwrap_or(0),
            "{status}"
        );
    }
    assert_eq!(stats["running"], 0);
    assert_eq!(rows.values().sum::<i64>(), JOBS as i64);
    // Every state change is in the history: terminal jobs have one terminal event.
    let bad: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM jobs j WHERE (SELECT count(*) FROM job_events e WHERE e.job_id = j.id \
         AND e.to_status IN ('succeeded', 'failed', 'timed_out', 'cancelled')) <> 1",
    )
    .fetch_one(&a.db)
    .await
    .unwrap();
    assert_eq!(bad, 0);
    worker.abort();
}

/// Records every change of a key's cap with the database's clock. `PUT
/// /keys/{key}` takes the gate lock first, so the log is ordered with the
/// reservations exactly as the limit's is.
const CAP_LOG: &str = "
    CREATE TABLE stress_cap_log (at timestamptz NOT NULL, key text NOT NULL, cap int);
    CREATE FUNCTION stress_log_cap() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN INSERT INTO stress_cap_log VALUES (clock_timestamp(), NEW.key, NEW.max_concurrency); RETURN NULL; END $$;
    CREATE TRIGGER stress_log_cap AFTER INSERT OR UPDATE OF max_concurrency ON keys
        FOR EACH ROW EXECUTE FUNCTION stress_log_cap();";

/// What the downstream holds per key, and, for every accepted submission,
/// what it held of that submission's key right after it arrived.
#[derive(Default)]
struct KeyLedger {
    held: HashMap<String, (String, i64)>,
    arrivals: Vec<(String, Vec<(String, i64)>)>,
    max_held_of_a_key: usize,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn key_caps_hold_with_two_replicas_racing_drains_and_caps_changing() {
    const KEYS: [&str; 3] = ["k0", "k1", "k2"];
    let ledger = Arc::new(Mutex::new(KeyLedger::default()));
    let (finish_tx, mut finish_rx) = tokio::sync::mpsc::unbounded_channel::<(Seen, Duration)>();
    let rng = Arc::new(Mutex::new(StdRng::seed_from_u64(12)));
    let (l, r) = (ledger.clone(), rng.clone());
    let ds = Downstream::start(move |s: &Seen| {
        let key = s.body["payload"]["k"].as_str().unwrap().to_owned();
        let mut ledger = l.lock().unwrap();
        ledger.held.insert(s.job_id.clone(), (key.clone(), s.attempt));
        let of_key: Vec<(String, i64)> = ledger
            .held
            .iter()
            .filter(|(_, (k, _))| *k == key)
            .map(|(id, (_, a))| (id.clone(), *a))
            .collect();
        ledger.max_held_of_a_key = ledger.max_held_of_a_key.max(of_key.len());
        ledger.arrivals.push((key, of_key));
        let work = Duration::from_millis(r.lock().unwrap().random_range(20..150));
        finish_tx.send((s.clone(), work)).unwrap();
        Reply::status(202)
    })
    .await;
    let a = Arc::new(
        app()
            .fast_sqs()
            .downstream(&ds.url)
            .config(|c| {
                c.max_concurrency = 12;
                c.drain_budget_ms = 1500;
                c.refill_on_callback = true;
            })
            .spawn()
            .await,
    );
    let b = Arc::new(a.replica().await);
    sqlx::raw_sql(CAP_LOG).execute(&a.db).await.unwrap();
    let put_cap = |app: Arc<TestApp>, key: &'static str, cap: i64| async move {
        let r = app
            .http
            .put(app.url(&format!("/keys/{key}")))
            .bearer_auth(API_TOKEN)
            .json(&json!({"max_concurrency": cap}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    };
    for key in KEYS {
        put_cap(a.clone(), key, 2).await;
    }
    let (l, http) = (ledger.clone(), a.http.clone());
    let worker = tokio::spawn(async move {
        while let Some((s, work)) = finish_rx.recv().await {
            let (l, http) = (l.clone(), http.clone());
            tokio::spawn(async move {
                tokio::time::sleep(work).await;
                l.lock().unwrap().held.remove(&s.job_id);
                let _ = http
                    .post(s.body["callback_url"].as_str().unwrap())
                    .bearer_auth(s.body["callback_token"].as_str().unwrap())
                    .json(&json!({"status": "succeeded"}))
                    .send()
                    .await;
            });
        }
    });
    let jobs: Vec<Value> = (0..120)
        .map(|i| json!({"payload": {"k": KEYS[i % 3], "i": i}, "key": KEYS[i % 3]}))
        .collect();
    a.submit_batch(jobs).await;

    let deadline = Instant::now() + Duration::from_secs(90);
    let mut callers = Vec::new();
    for k in 0..4 {
        let app = if k % 2 == 0 { a.clone() } else { b.clone() };
        callers.push(tokio::spawn(async move {
            while Instant::now() < deadline {
                let r = app
                    .http
                    .post(app.url("/drain"))
                    .bearer_auth(DRAIN_TOKEN)
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status(), 200);
                let done: i64 = sqlx::query_scalar("SELECT count(*) FROM jobs WHERE status <> 'succeeded'")
                    .fetch_one(&app.db)
                    .await
                    .unwrap();
                if done == 0 {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }));
    }
    let changer = {
        let a = a.clone();
        tokio::spawn(async move {
            let mut rng = StdRng::seed_from_u64(5);
            for _ in 0..20 {
                tokio::time::sleep(Duration::from_millis(150)).await;
                let key = KEYS[rng.random_range(0..3)];
                put_cap(a.clone(), key, rng.random_range(0..=3)).await;
            }
            for key in KEYS {
                put_cap(a.clone(), key, 3).await;
            }
        })
    };
    changer.await.unwrap();
    for c in callers {
        c.await.unwrap();
    }
    worker.abort();

    // Every arrival against the cap of its key in force at the reservation
    // of the newest submission of that key the downstream then held.
    use chrono::{DateTime, Utc};
    let caps: Vec<(DateTime<Utc>, String, Option<i32>)> =
        sqlx::query_as("SELECT at, key, cap FROM stress_cap_log ORDER BY at")
            .fetch_all(&a.db)
            .await
            .unwrap();
    let reserved = reservation_times(&a.db).await;
    let (arrivals, max_held_of_a_key) = {
        let ledger = ledger.lock().unwrap();
        (ledger.arrivals.clone(), ledger.max_held_of_a_key)
    };
    let mut violations = Vec::new();
    for (key, held) in &arrivals {
        let newest = held
            .iter()
            .map(|(id, at)| reserved[&(id.clone(), *at)])
            .max()
            .expect("an arrival holds at least itself");
        let cap = caps
            .iter()
            .rev()
            .find(|(at, k, _)| k == key && *at < newest)
            .map(|(_, _, c)| *c)
            .expect("every key had a cap before its jobs were submitted");
        if cap.is_some_and(|c| held.len() as i64 > i64::from(c)) {
            violations.push(format!("{key} held {} with a cap of {cap:?}: {held:?}", held.len()));
        }
    }
    assert!(violations.is_empty(), "{violations:?}");
    assert!(
        max_held_of_a_key >= 2,
        "the test exercised concurrency within a key (max {max_held_of_a_key})"
    );
    let left: i64 = sqlx::query_scalar("SELECT count(*) FROM jobs WHERE status <> 'succeeded'")
        .fetch_one(&a.db)
        .await
        .unwrap();
    assert_eq!(left, 0, "every job ran to the end");
}
