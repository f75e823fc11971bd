//! A queued job whose message SQS no longer has (retention, purge) is sent
//! again, and is then dispatched like any other.

use std::{process::Command, time::Duration};

use serde_json::json;

use crate::helpers::*;

async fn purge(app: &TestApp) {
    // Purging is asynchronous in SQS; receiving everything is immediate.
    let gone = app.receive_all(3600).await;
    assert_eq!(gone.len(), 1);
}

#[tokio::test]
async fn a_job_whose_message_was_lost_is_resent_and_dispatched() {
    let ds = Downstream::start(|_| Reply::status(202)).await;
    let app = app().downstream(&ds.url).spawn().await;
    let id = app.submit(json!(1)).await["id"].as_str().unwrap().to_owned();
    purge(&app).await;
    assert_eq!(app.drain().await["stop_reason"], "queue_empty");
    assert_eq!(app.status_of(&id).await, "queued");

    // Not yet old enough: nothing is sent.
    let sent = sluicegate::requeue::resend_stale(&app.db, &app.state.queue, Duration::from_secs(3600))
        .await
        .unwrap();
    assert_eq!(sent, 0);
    let sent = sluicegate::requeue::resend_stale(&app.db, &app.state.queue, Duration::ZERO)
        .await
        .unwrap();
    assert_eq!(sent, 1);
    // Its clock restarts: not sent twice in a row.
    tokio::time::sleep(Duration::from_millis(50)).await;
    let sent = sluicegate::requeue::resend_stale(&app.db, &app.state.queue, Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(sent, 0);
    assert_eq!(app.drain().await["dispatched"], 1);
    assert_eq!(app.status_of(&id).await, "running");
    // Finished jobs are never re-sent.
    let sent = sluicegate::requeue::resend_stale(&app.db, &app.state.queue, Duration::ZERO)
        .await
        .unwrap();
    assert_eq!(sent, 0);
}

#[tokio::test]
async fn the_requeue_command_resends_after_a_purge() {
    let ds = Downstream::start(|_| Reply::status(202)).await;
    let app = app().downstream(&ds.url).spawn().await;
    let id = app.submit(json!(1)).await["id"].as_str().unwrap().to_owned();
    purge(&app).await;
    let out = Command::new(env!("CARGO_BIN_EXE_sluicegate"))
        .arg("requeue")
        .env_clear()
        .env("DATABASE_URL", &app.test_db.url)
        .env("SQS_QUEUE_URL", &app.queue_url)
        .env("AWS_ENDPOINT_URL", sqs_endpoint())
        .env("AWS_ACCESS_KEY_ID", "test")
        .env("AWS_SECRET_ACCESS_KEY", "test")
        .env("AWS_REGION", "us-east-1")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("1 queued jobs"));
    assert_eq!(app.drain().await["dispatched"], 1);
    assert_eq!(app.status_of(&id).await, "running");
}

#[tokio::test]
async fn requeue_with_no_age_ends_after_sending_each_job_once() {
    // With more queued jobs than one batch, a cut-off that moved with the
    // clock found the jobs it had just re-sent, for ever.
    let app = app().fast_sqs().spawn().await;
    for n in [500, 100] {
        let jobs = (0..n).map(|i| json!({"payload": i})).collect();
        app.submit_batch(jobs).await;
    }
    let sent = tokio::time::timeout(
        Duration::from_secs(60),
        sluicegate::requeue::resend_stale(&app.db, &app.state.queue, Duration::ZERO),
    )
    .await
    .expect("requeue ends")
    .unwrap();
    assert_eq!(sent, 600);
    // Each job now has its original message and exactly one fresh one.
    let mut bodies = app.receive_all(3600).await;
    bodies.sort();
    assert_eq!(bodies.len(), 1200);
    bodies.dedup();
    assert_eq!(bodies.len(), 600);
}
