//! Leases: a job lost downstream frees its slot; a replica dying
//! mid-submission loses no job.

use std::time::Duration;

use serde_json::{Value, json};

use crate::helpers::*;

#[tokio::test]
async fn an_expired_lease_frees_the_slot_for_the_next_job() {
    let ds = Downstream::start(|_| Reply::status(202)).await;
    let app = app()
        .downstream(&ds.url)
        .config(|c| c.max_concurrency = 1)
        .spawn()
        .await;
    let lost = app
        .post_job(json!({"payload": "lost", "timeout_secs": 1}))
        .await
        .json::<Value>()
        .await
        .unwrap();
    let lost = lost["id"].as_str().unwrap().to_owned();
    let next = app.submit(json!("next")).await["id"].as_str().unwrap().to_owned();
    assert_eq!(app.drain().await["dispatched"], 1);
    assert_eq!(app.drain().await["stop_reason"], "at_capacity");
    tokio::time::sleep(Duration::from_millis(1300)).await;
    let report = app.drain().await;
    assert_eq!(
        (report["reclaimed"].as_i64(), report["dispatched"].as_i64()),
        (Some(1), Some(1))
    );
    let job = app.job(&lost).await;
    assert_eq!(job["status"], "timed_out");
    assert!(job["error"].as_str().unwrap().contains("lease expired"));
    assert_eq!(app.events(&lost).await.last().unwrap()["reason"], "lease expired");
    assert_eq!(app.status_of(&next).await, "running");
}

#[tokio::test]
async fn the_lease_sweeper_reclaims_without_a_drain() {
    let ds = Downstream::start(|_| Reply::status(202)).await;
    let app = app()
        .downstream(&ds.url)
        .config(|c| c.lease_sweep_interval_secs = 1)
        .spawn()
        .await;
    let id = app
        .post_job(json!({"payload": 1, "timeout_secs": 1}))
        .await
        .json::<Value>()
        .await
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    app.drain().await;
    assert!(
        eventually(Duration::from_secs(5), || async {
            app.status_of(&id).await == "timed_out"
        })
        .await
    );
}

#[tokio::test]
async fn a_submission_cut_off_mid_way_is_requeued_and_sent_again() {
    let ds = Downstream::start(|_| Reply::status(202)).await;
    let app = app().downstream(&ds.url).spawn().await;
    let id = app.submit(json!(1)).await["id"].as_str().unwrap().to_owned();
    // What a replica that died after reserving the slot leaves behind: a
    // dispatching job whose lease ran out, and its message still in SQS.
    sqlx::query("UPDATE jobs SET status = 'dispatching', attempts = 1, lease_expires_at = now() - interval '1 second' WHERE id = $1::uuid")
        .bind(&id)
        .execute(&app.db)
        .await
        .unwrap();
    let report = app.drain().await;
    assert_eq!(
        (report["reclaimed"].as_i64(), report["dispatched"].as_i64()),
        (Some(1), Some(1))
    );
    let job = app.job(&id).await;
    assert_eq!(
        (job["status"].as_str(), job["attempts"].as_i64()),
        (Some("running"), Some(2))
    );
    assert_eq!(ds.seen()[0].idempotency_key, format!("{id}:2"));
}

#[tokio::test]
async fn graceful_shutdown_finishes_submissions_in_flight() {
    let ds = Downstream::start(|_| Reply::after(Duration::from_millis(1500), 202)).await;
    let mut app = app()
        .downstream(&ds.url)
        .config(|c| c.drain_budget_ms = 300)
        .spawn()
        .await;
    let id = app.submit(json!(1)).await["id"].as_str().unwrap().to_owned();
    assert_eq!(app.drain().await["dispatched"], 1);
    app.stop().await;
    let status: String = sqlx::query_scalar("SELECT status::text FROM jobs WHERE id = $1::uuid")
        .bind(&id)
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert_eq!(status, "running", "the submission in flight was finished before exit");
}
