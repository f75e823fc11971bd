//! Deterministic tests of protections that no other test would miss: each
//! one fails when its protection is taken out of the code (the evidence is in
//! docs/reliability.md, "Protection removed, test fails").

use std::{sync::Arc, time::Duration};

use serde_json::json;
use sluicegate::{
    lifecycle::{AttemptRef, JobStatus, Transition},
    store,
};
use sqlx::{Connection, PgConnection};
use uuid::Uuid;

use super::common::*;
use crate::helpers::*;

fn uuid(id: &str) -> Uuid {
    Uuid::parse_str(id).unwrap()
}

/// Invariant 1: `store::reserve` counts the live jobs under the gate row
/// lock. The test holds that lock, and the two jobs' rows as well: without
/// the gate lock both reservations would count the live jobs (none) and then
/// wait on their job's row, so both would reserve once let go. With it, the
/// second counts only after the first committed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gate_lock_lets_only_one_of_two_racing_reservations_through() {
    let app = app().config(|c| c.max_concurrency = 1).spawn().await;
    let a = uuid(&id_of(&app.submit(json!("a")).await));
    let b = uuid(&id_of(&app.submit(json!("b")).await));

    let mut holder = PgConnection::connect(&app.test_db.url).await.unwrap();
    let mut tx = holder.begin().await.unwrap();
    sqlx::query("SELECT 1 FROM gate FOR UPDATE")
        .execute(&mut *tx)
        .await
        .unwrap();
    sqlx::query("SELECT 1 FROM jobs WHERE id = ANY($1) FOR UPDATE")
        .bind(vec![a, b])
        .execute(&mut *tx)
        .await
        .unwrap();

    let reserve = |id: Uuid| {
        let db = app.state.db.clone();
        tokio::spawn(async move { reserve_ids(&db, &[id]).await })
    };
    let (ra, rb) = (reserve(a), reserve(b));
    wait_for("both reservations wait for a lock", Duration::from_secs(10), || async {
        lock_waiters(&app).await >= 2
    })
    .await;
    assert!(!ra.is_finished() && !rb.is_finished());
    tx.commit().await.unwrap();

    let (ra, rb) = (ra.await.unwrap().unwrap(), rb.await.unwrap().unwrap());
    assert_eq!(
        ra.jobs.len() + rb.jobs.len(),
        1,
        "two reservations racing for one slot both got it"
    );
    let live: i64 = sqlx::query_scalar("SELECT count(*) FROM jobs WHERE status IN ('dispatching', 'running')")
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert_eq!(live, 1);
}

/// Invariant 3: the message is deleted only after Postgres says the job is
/// `running`. Postgres is cut between the downstream's 2xx and the write of
/// `running`: the message must survive (and the job stay `dispatching`, then
/// be reclaimed to `queued`), not vanish with the job stuck.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_cut_between_the_2xx_and_running_keeps_the_message() {
    let proxy = Arc::new(Proxy::start("127.0.0.1:5432".parse().unwrap()).await);
    let ds = Downstream::start(|_| Reply::status(202)).await;
    let app = app()
        .downstream(&ds.url)
        .db_port(proxy.addr.port())
        .config(|c| c.dispatch_timeout_secs = 1)
        .spawn()
        .await;
    let id = id_of(&app.submit(json!(1)).await);
    assert_eq!(messages_in_queue(&app).await, 1);

    // The downstream takes the job, and Postgres goes away before it says so.
    let p = proxy.clone();
    *ds.before_reply.lock().unwrap() = Some(Arc::new(move |_| {
        let p = p.clone();
        Box::pin(async move { p.set_down(true).await })
    }));
    let r = app
        .http
        .post(app.url("/drain"))
        .bearer_auth(DRAIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503, "the drain could not finish without Postgres");
    // The submission gives up recording its outcome (it retries for ~3 s).
    wait_for("the submission task ends", Duration::from_secs(15), || async {
        app.state.tasks.is_empty()
    })
    .await;
    assert_eq!(ds.seen().len(), 1);
    proxy.set_down(false).await;
    wait_for("the replica finds Postgres back", Duration::from_secs(5), || async {
        !app.state.postgres.is_down()
    })
    .await;

    assert_eq!(
        row(&app, &id).await.0,
        "dispatching",
        "the job keeps its slot: it may be running"
    );
    assert_eq!(
        messages_in_queue(&app).await,
        1,
        "the message of a job not yet recorded as running was deleted: the job would be lost"
    );
    // When the dispatch lease runs out, the job goes back to the queue: its
    // message, still hidden in the intake window, carries it to its next
    // attempt at once; once that is running, the message goes.
    *ds.before_reply.lock().unwrap() = None;
    sqlx::query("UPDATE jobs SET lease_expires_at = now() - interval '1 second' WHERE id = $1::uuid")
        .bind(&id)
        .execute(&app.db)
        .await
        .unwrap();
    let report = app.drain().await;
    assert_eq!(report["reclaimed"], 1);
    assert_eq!(report["dispatched"], 1);
    let reasons: Vec<String> = app
        .events(&id)
        .await
        .iter()
        .map(|e| e["reason"].as_str().unwrap().to_owned())
        .collect();
    assert!(reasons.iter().any(|r| r == "dispatch lease expired"), "{reasons:?}");
    assert_eq!(row(&app, &id).await.0, "running");
    assert_eq!(ds.seen().len(), 2);
    assert_eq!(ds.seen()[1].attempt, 2);
    assert_eq!(messages_in_queue(&app).await, 0);
}

/// Invariant 4: `store::transition` applies an outcome only at its attempt,
/// in SQL (a callback token is checked before, but the job can move to the
/// next attempt between that check and the write).
#[tokio::test]
async fn a_transition_for_an_old_attempt_changes_nothing() {
    let app = app().spawn().await;
    let id = uuid(&id_of(&app.submit(json!(1)).await));
    let db = &app.state.db;
    let first = reserve_ids(db, &[id]).await.unwrap().jobs.remove(0).0.attempt;
    assert_eq!(first, AttemptRef::new(id, 1));
    let t = Transition::retry(first, "downstream 500", Duration::ZERO);
    assert_eq!(
        store::transition(db, id, &t).await.unwrap().unwrap().status,
        JobStatus::Queued
    );
    let second = reserve_ids(db, &[id]).await.unwrap().jobs.remove(0).0.attempt;
    assert_eq!(second, AttemptRef::new(id, 2));
    let events = app.events(&id.to_string()).await.len();

    // Every late outcome or callback of attempt 1 finds the job dispatching
    // at attempt 2: each is refused.
    let late = [
        Transition::accepted(first, "downstream 202"),
        Transition::callback(first, JobStatus::Succeeded, None, None),
        Transition::callback(first, JobStatus::Failed, None, Some("late")),
        Transition::retry(first, "downstream 500", Duration::ZERO),
        Transition::rejected(first, "downstream 422", "late"),
        Transition::out_of_attempts(first, "downstream 500"),
        Transition::outcome_unknown(first, "downstream timeout: outcome unknown"),
        Transition::busy(first, "downstream 503", Duration::ZERO),
    ];
    for t in &late {
        let applied = store::transition(db, id, t).await.unwrap();
        assert!(applied.is_none(), "attempt 1's {:?} was applied to attempt 2", t.reason);
    }
    assert_eq!(row(&app, &id.to_string()).await, ("dispatching".to_owned(), 2));
    assert_eq!(app.events(&id.to_string()).await.len(), events, "no event written");

    // The current attempt's outcome is applied.
    let t = Transition::accepted(second, "downstream 202");
    assert_eq!(
        store::transition(db, id, &t).await.unwrap().unwrap().status,
        JobStatus::Running
    );
}

/// `dispatching` holds a slot: `/stats`' `running` counts it.
#[tokio::test]
async fn stats_running_counts_dispatching_jobs() {
    let app = app().spawn().await;
    let a = uuid(&id_of(&app.submit(json!("a")).await));
    let b = uuid(&id_of(&app.submit(json!("b")).await));
    let db = &app.state.db;
    let reserved = reserve_ids(db, &[a, b]).await.unwrap().jobs;
    assert_eq!(reserved.len(), 2);
    let s = stats(&app).await;
    assert_eq!((s["running"].as_i64(), s["queued"].as_i64()), (Some(2), Some(0)), "{s}");
    // One of them running: still two live.
    let t = Transition::accepted(AttemptRef::new(a, 1), "downstream 202");
    store::transition(db, a, &t).await.unwrap().unwrap();
    let s = stats(&app).await;
    assert_eq!(s["running"], 2, "{s}");
}

/// REFILL_ON_CALLBACK: raising the limit starts a drain at once, with no
/// `/drain` call.
#[tokio::test]
async fn raising_the_limit_refills_without_a_drain_call() {
    let ds = Downstream::start(|_| Reply::status(202)).await;
    let app = app()
        .downstream(&ds.url)
        .config(|c| {
            c.max_concurrency = 1;
            c.refill_on_callback = true;
        })
        .spawn()
        .await;
    app.submit(json!("a")).await;
    app.submit(json!("b")).await;
    assert_eq!(app.drain().await["dispatched"], 1);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(ds.seen().len(), 1);
    app.set_limit(2).await;
    wait_for(
        "the second job is submitted after the raise",
        Duration::from_secs(10),
        || async { ds.seen().len() == 2 },
    )
    .await;
}

/// REFILL_ON_CALLBACK: a lease reclaimed by the background sweeper starts a
/// drain at once, with no `/drain` call.
#[tokio::test]
async fn a_lease_reclaimed_by_the_sweeper_refills_without_a_drain_call() {
    let ds = Downstream::start(|_| Reply::status(202)).await;
    let app = app()
        .downstream(&ds.url)
        .config(|c| {
            c.max_concurrency = 1;
            c.refill_on_callback = true;
            c.lease_sweep_interval_secs = 1;
        })
        .spawn()
        .await;
    let lost = app
        .post_job(json!({"payload": "lost", "timeout_secs": 1}))
        .await
        .json::<serde_json::Value>()
        .await
        .unwrap();
    assert_eq!(app.drain().await["dispatched"], 1);
    let next = id_of(&app.submit(json!("next")).await);
    wait_for(
        "the next job is submitted after the reclaim",
        Duration::from_secs(10),
        || async { ds.seen().iter().any(|s| s.job_id == next) },
    )
    .await;
    assert_eq!(app.status_of(&id_of(&lost)).await, "timed_out");
}

/// The background requeue loop renews the message of a job queued longer
/// than REQUEUE_AFTER_SECS. The loop ticks every 60 s, the first tick at
/// start: a replica started with `requeue_after_secs: Some(60)` after the
/// job's message went missing and its `enqueued_at` was set two hours back
/// runs it once, at once (no minute-long sleep). A job sent 30 s ago is left
/// alone (the threshold is the configured one).
#[tokio::test]
async fn the_requeue_loop_renews_the_message_of_a_long_queued_job() {
    let ds = Downstream::start(|_| Reply::status(202)).await;
    let mut app = app().downstream(&ds.url).spawn().await;
    let old = id_of(&app.submit(json!("old")).await);
    let recent = id_of(&app.submit(json!("recent")).await);
    // Both messages are gone (retention): receive and delete them.
    delete_all_messages(&app).await;
    assert_eq!(messages_in_queue(&app).await, 0);
    for (id, age) in [(&old, "2 hours"), (&recent, "30 seconds")] {
        sqlx::query("UPDATE jobs SET enqueued_at = now() - $2::interval WHERE id = $1::uuid")
            .bind(id)
            .bind(age)
            .execute(&app.db)
            .await
            .unwrap();
    }

    app.config.requeue_after_secs = Some(60);
    let replica = app.replica().await;
    wait_for("a fresh message for the old job", Duration::from_secs(10), || async {
        messages_in_queue(&app).await >= 1
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let bodies = app.receive_all(1).await;
    assert_eq!(bodies, vec![old.clone()], "only the job older than 60 s is renewed");
    let renewed: bool =
        sqlx::query_scalar("SELECT enqueued_at > now() - interval '1 minute' FROM jobs WHERE id = $1::uuid")
            .bind(&old)
            .fetch_one(&app.db)
            .await
            .unwrap();
    assert!(renewed, "the renewal is recorded");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(replica.drain().await["dispatched"], 1);
    assert_eq!(app.status_of(&old).await, "running");
    assert_eq!(app.status_of(&recent).await, "queued");
}

async fn stats(app: &TestApp) -> serde_json::Value {
    app.get("/stats").await.json().await.unwrap()
}

/// Invariant 9: a job taken into the intake window may go at once, from any
/// drain; but once its row is claimed for the extension of its message's
/// visibility (`store::claim_expiring`), no drain reserves it until the
/// extension is recorded (`window_ready`). Otherwise a drain could release
/// the message (a back-off) before the extension, which would then hide it
/// for the window's whole visibility with no row left to dispatch its job.
#[tokio::test]
async fn a_job_whose_message_is_being_extended_waits_for_the_extension_before_a_drain_reserves_it() {
    let app = app().config(|c| c.max_concurrency = 1).spawn().await;
    let id = uuid(&id_of(&app.submit(json!("waits")).await));
    let db = &app.state.db;
    let times = window_times();
    // The first drain has no free slot: it only takes the message in.
    let first = take_in(db, &[id], &times).await.unwrap();
    assert_eq!(first.taken_in.len(), 1);
    assert!(first.jobs.is_empty());
    // Its receipt runs short: claimed for an extension.
    let claimed = store::claim_expiring(db, 3600.0, 10).await.unwrap();
    assert_eq!(claimed, vec![(id, made_up_receipt(id))]);
    assert!(
        store::claim_expiring(db, 3600.0, 10).await.unwrap().is_empty(),
        "a row is claimed once"
    );
    // A slot is free for another drain, which received nothing: the job
    // must not go before the extension is recorded.
    let other = store::reserve(db, &[], &times, 1).await.unwrap();
    assert!(
        other.jobs.is_empty(),
        "another drain reserved a job whose message was being extended"
    );
    // Extended: now any drain may reserve it.
    mark_ready(db, &[id]).await.unwrap();
    let other = store::reserve(db, &[], &times, 1).await.unwrap();
    assert_eq!(other.jobs.len(), 1);
    assert_eq!(other.jobs[0].0.id(), id);
    assert_eq!(other.jobs[0].1.handle, made_up_receipt(id));
}

/// Invariant 9, the cost side: a message taken into the window keeps the
/// visibility it was received with, and any drain may reserve its job at
/// once; only when that runs short is it extended, by the sweep every
/// replica runs (`drain::extend_window`), with its real receipt.
#[tokio::test]
async fn a_waiting_message_is_extended_only_when_its_receipt_runs_short() {
    let ds = Downstream::start(|_| Reply::status(202)).await;
    let app = app()
        .downstream(&ds.url)
        .config(|c| c.max_concurrency = 1)
        .spawn()
        .await;
    app.submit(json!("holds the slot")).await;
    assert_eq!(app.drain().await["dispatched"], 1);
    let id = uuid(&id_of(&app.submit(json!("waits")).await));
    assert_eq!(app.drain().await["stop_reason"], "at_capacity");
    let row = || async {
        sqlx::query_as::<_, (bool, f64)>(
            "SELECT pending, extract(epoch FROM expires_at - now())::float8 FROM intake WHERE job_id = $1",
        )
        .bind(id)
        .fetch_one(&app.state.db)
        .await
        .unwrap()
    };
    let (pending, left) = row().await;
    assert!(!pending, "a job that may go waits for no extension");
    assert!(
        left < 70.0,
        "received for the dispatch lease only, not extended: {left} s left"
    );
    assert_eq!(
        sluicegate::drain::extend_window(&app.state).await.unwrap(),
        0,
        "nothing runs short yet"
    );
    // Time passes: the receipt has 20 s left, less than the 5 s dispatch
    // timeout, the 15 s receipt margin and the 10 s of sweeps ahead.
    sqlx::query("UPDATE intake SET expires_at = now() + interval '20 seconds' WHERE job_id = $1")
        .bind(id)
        .execute(&app.state.db)
        .await
        .unwrap();
    assert_eq!(sluicegate::drain::extend_window(&app.state).await.unwrap(), 1);
    let (pending, left) = row().await;
    assert!(!pending);
    assert!(left > 250.0, "hidden for the window's visibility now: {left} s left");
}

/// A job whose message SQS could not release (a back-off after a 5xx, while
/// SQS was cut) goes back into the intake window with the receipt it held,
/// so that it can go again before that message shows again.
#[tokio::test]
async fn a_message_that_could_not_be_released_keeps_its_job_in_the_window() {
    let app = app().spawn().await;
    let id = uuid(&id_of(&app.submit(json!("held")).await));
    let db = &app.state.db;
    let held = store::Receipt {
        handle: "receipt-still-held".to_owned(),
        expires_at: chrono::Utc::now() + chrono::Duration::seconds(300),
    };
    store::back_into_window(db, &[(id, held)]).await.unwrap();
    let r = store::reserve(db, &[], &window_times(), 1).await.unwrap();
    assert_eq!(r.jobs.len(), 1, "the job is not in the window");
    assert_eq!(r.jobs[0].0.id(), id);
    assert_eq!(r.jobs[0].1.handle, "receipt-still-held");
}
