//! The drain and the downstream protocol: every outcome of the table.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::helpers::*;

fn id_of(job: &Value) -> String {
    job["id"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn an_accepted_submission_makes_the_job_running_and_deletes_its_message() {
    let ds = Downstream::start(|_| Reply::status(202)).await;
    let app = app().downstream(&ds.url).spawn().await;
    let id = id_of(&app.submit(json!({"x": 1})).await);
    let report = app.drain().await;
    assert_eq!(
        report,
        json!({"dispatched": 1, "reclaimed": 0, "running": 1, "limit": 10, "stop_reason": "queue_empty"})
    );

    let seen = ds.seen();
    assert_eq!(seen.len(), 1);
    let s = &seen[0];
    assert_eq!(s.content_type, "application/json");
    assert_eq!(s.idempotency_key, format!("{id}:1"));
    assert_eq!(s.body["job_id"], id.as_str());
    assert_eq!(s.body["attempt"], 1);
    assert_eq!(s.body["payload"], json!({"x": 1}));
    assert_eq!(s.body["callback_url"], app.url(&format!("/jobs/{id}/callback")));
    assert_eq!(s.body["heartbeat_url"], app.url(&format!("/jobs/{id}/heartbeat")));
    assert!(s.body["callback_token"].as_str().is_some_and(|t| t.len() >= 32));

    let job = app.job(&id).await;
    assert_eq!(job["status"], "running");
    assert_eq!(job["attempts"], 1);
    assert!(job["started_at"].is_string());
    assert!(app.receive_all(1).await.is_empty(), "the message is deleted");
    let reasons: Vec<(Value, Value, String)> = app
        .events(&id)
        .await
        .iter()
        .map(|e| {
            (
                e["from"].clone(),
                e["to"].clone(),
                e["reason"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(reasons[0], (Value::Null, json!("queued"), "submitted".to_owned()));
    assert_eq!(
        (reasons[1].0.clone(), reasons[1].1.clone()),
        (json!("queued"), json!("dispatching"))
    );
    assert_eq!(
        reasons[2],
        (json!("dispatching"), json!("running"), "downstream 202".to_owned())
    );
}

#[tokio::test]
async fn a_busy_downstream_gets_the_job_back_without_an_attempt_honouring_retry_after() {
    let ds = Downstream::start(|_| Reply {
        status: 503,
        retry_after: Some("2".into()),
        delay: Duration::ZERO,
    })
    .await;
    let app = app().downstream(&ds.url).spawn().await;
    let id = id_of(&app.submit(json!(1)).await);
    let report = app.drain().await;
    assert_eq!(report["stop_reason"], "downstream_busy");
    assert_eq!(report["dispatched"], 0);
    assert_eq!(report["running"], 0);
    let job = app.job(&id).await;
    assert_eq!(job["status"], "queued");
    assert_eq!(job["attempts"], 0);
    let last = app.events(&id).await.pop().unwrap();
    assert_eq!(
        (last["from"].as_str(), last["to"].as_str(), last["reason"].as_str()),
        (Some("dispatching"), Some("queued"), Some("downstream 503"))
    );

    ds.set(|_| Reply::status(202));
    // Nothing is sent before Retry-After has passed, not even another job.
    let other = id_of(&app.submit(json!(2)).await);
    let report = app.drain().await;
    assert_eq!(report["dispatched"], 0);
    assert_eq!(report["stop_reason"], "downstream_busy");
    assert_eq!(ds.seen().len(), 1);
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let report = app.drain().await;
    assert_eq!(report["dispatched"], 2);
    assert_eq!(app.status_of(&other).await, "running");
    let job = app.job(&id).await;
    assert_eq!(
        (job["status"].as_str(), job["attempts"].as_i64()),
        (Some("running"), Some(1))
    );
}

#[tokio::test]
async fn a_429_without_retry_after_is_retried_at_the_next_drain_as_a_new_submission() {
    let ds = Downstream::start(|_| Reply::status(429)).await;
    let app = app().downstream(&ds.url).spawn().await;
    let r = app.post_job(json!({"payload": 1, "max_attempts": 1})).await;
    let id = id_of(&r.json().await.unwrap());
    assert_eq!(app.drain().await["stop_reason"], "downstream_busy");
    let refused_token = ds.token_for(&id);
    ds.set(|_| Reply::status(200));
    assert_eq!(app.drain().await["dispatched"], 1);
    assert_eq!(app.status_of(&id).await, "running");
    // Each submission has its own attempt number, Idempotency-Key and token...
    assert_eq!(ds.seen().iter().map(|s| s.attempt).collect::<Vec<_>>(), vec![1, 2]);
    assert_eq!(
        ds.seen().iter().map(|s| s.idempotency_key.clone()).collect::<Vec<_>>(),
        vec![format!("{id}:1"), format!("{id}:2")]
    );
    // ...so the refused submission's token cannot finish the job...
    assert_problem(
        app.callback(&id, &refused_token, json!({"status": "succeeded"})).await,
        401,
    )
    .await;
    // ...and the refusal used no attempt: one of one is used.
    let job = app.job(&id).await;
    assert_eq!(
        (job["status"].as_str(), job["attempts"].as_i64()),
        (Some("running"), Some(1))
    );
    let r = app
        .callback(&id, &ds.token_for(&id), json!({"status": "succeeded"}))
        .await;
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn another_4xx_fails_the_job_and_deletes_its_message() {
    let ds = Downstream::start(|_| Reply::status(422)).await;
    let app = app().downstream(&ds.url).spawn().await;
    let id = id_of(&app.submit(json!(1)).await);
    let report = app.drain().await;
    assert_eq!(report["dispatched"], 0);
    assert_eq!(report["stop_reason"], "queue_empty");
    let job = app.job(&id).await;
    assert_eq!(job["status"], "failed");
    assert_eq!(job["attempts"], 1);
    assert!(job["error"].as_str().unwrap().contains("422"));
    assert!(job["finished_at"].is_string());
    assert!(job["started_at"].is_null(), "a rejected job never ran");
    assert!(app.receive_all(1).await.is_empty());
    assert_eq!(app.events(&id).await.last().unwrap()["reason"], "downstream 422");
}

#[tokio::test]
async fn server_errors_are_retried_with_backoff_then_fail() {
    let ds = Downstream::start(|_| Reply::status(500)).await;
    let app = app().downstream(&ds.url).spawn().await;
    let r = app.post_job(json!({"payload": 1, "max_attempts": 2})).await;
    let id = id_of(&r.json().await.unwrap());
    app.drain().await;
    let job = app.job(&id).await;
    assert_eq!(
        (job["status"].as_str(), job["attempts"].as_i64()),
        (Some("queued"), Some(1))
    );
    assert_eq!(job["error"], "downstream 500");
    // Backed off: not retried at once.
    app.drain().await;
    assert_eq!(ds.seen().len(), 1);
    let started = Instant::now();
    assert!(
        eventually(Duration::from_secs(5), || async {
            app.drain().await;
            ds.seen().len() == 2
        })
        .await
    );
    assert!(
        started.elapsed() >= Duration::from_millis(300),
        "retried after a back-off"
    );
    let job = app.job(&id).await;
    assert_eq!(
        (job["status"].as_str(), job["attempts"].as_i64()),
        (Some("failed"), Some(2))
    );
    assert!(job["started_at"].is_null(), "a job that only met errors never ran");
    assert_eq!(
        ds.seen().iter().map(|s| s.idempotency_key.clone()).collect::<Vec<_>>(),
        vec![format!("{id}:1"), format!("{id}:2")]
    );
    assert!(app.receive_all(1).await.is_empty());
}

#[tokio::test]
async fn a_refused_connection_uses_an_attempt_and_is_retried() {
    let app = crate::helpers::app().downstream("http://127.0.0.1:9/").spawn().await;
    let id = id_of(&app.submit(json!(1)).await);
    let report = app.drain().await;
    assert_eq!(report["running"], 0, "nothing reached the downstream: the slot is free");
    let job = app.job(&id).await;
    assert_eq!(
        (job["status"].as_str(), job["attempts"].as_i64()),
        (Some("queued"), Some(1)),
        "{report} {:#?}",
        app.events(&id).await
    );
    assert_eq!(job["error"], "downstream connection error");
}

#[tokio::test]
async fn a_timed_out_submission_keeps_its_slot_until_its_lease_ends() {
    // The downstream answers after sluicegate gave up: it may be running the
    // job, so the job keeps its slot, for the lease of a running job.
    let ds = Downstream::start(|_| Reply::after(Duration::from_secs(3), 202)).await;
    let app = app()
        .downstream(&ds.url)
        .config(|c| {
            c.dispatch_timeout_secs = 1;
            c.max_concurrency = 1;
        })
        .spawn()
        .await;
    let r = app.post_job(json!({"payload": 1, "timeout_secs": 2})).await;
    let id = id_of(&r.json().await.unwrap());
    let other = id_of(&app.submit(json!(2)).await);
    app.drain().await;
    let job = app.job(&id).await;
    assert_eq!(
        (job["status"].as_str(), job["attempts"].as_i64(), job["error"].as_str()),
        (
            Some("dispatching"),
            Some(1),
            Some("downstream timeout: outcome unknown")
        )
    );
    assert!(job["started_at"].is_null());
    let last = app.events(&id).await.pop().unwrap();
    assert_eq!(
        (last["from"].as_str(), last["to"].as_str(), last["reason"].as_str()),
        (
            Some("dispatching"),
            Some("dispatching"),
            Some("downstream timeout: outcome unknown")
        )
    );
    // The slot stays taken: the other job waits.
    let report = app.drain().await;
    assert_eq!(
        (report["running"].as_i64(), report["dispatched"].as_i64()),
        (Some(1), Some(0))
    );
    assert_eq!(app.status_of(&other).await, "queued");
    assert_eq!(ds.seen().len(), 1);
    let r = app.cancel(&other).await;
    assert_eq!(r.status(), 200);
    // No news by the end of its lease (2 s): queued again, the attempt used,
    // and then submitted again under the next attempt.
    ds.set(|_| Reply::status(202));
    assert!(
        eventually(Duration::from_secs(8), || async {
            app.drain().await;
            ds.seen().iter().any(|s| s.job_id == id && s.attempt == 2)
        })
        .await
    );
    let reasons: Vec<String> = app
        .events(&id)
        .await
        .iter()
        .map(|e| e["reason"].as_str().unwrap().to_owned())
        .collect();
    assert!(reasons.contains(&"dispatch lease expired".to_owned()), "{reasons:?}");
    assert_eq!(ds.seen()[0].idempotency_key, format!("{id}:1"));
    assert!(ds.seen().iter().any(|s| s.idempotency_key == format!("{id}:2")));
}

#[tokio::test]
async fn news_from_the_downstream_settles_a_timed_out_submission() {
    let ds = Downstream::start(|_| Reply::after(Duration::from_secs(2), 202)).await;
    let app = app()
        .downstream(&ds.url)
        .config(|c| c.dispatch_timeout_secs = 1)
        .spawn()
        .await;
    let id = id_of(&app.submit(json!(1)).await);
    app.drain().await;
    assert_eq!(app.status_of(&id).await, "dispatching");
    let token = ds.token_for(&id);
    // A heartbeat says the downstream has it...
    let r = app.heartbeat(&id, &token).await;
    assert_eq!(r.status(), 200);
    let job = app.job(&id).await;
    assert_eq!(job["status"], "running");
    assert!(job["started_at"].is_string());
    assert_eq!(app.events(&id).await.pop().unwrap()["reason"], "heartbeat");
    // ...and its callback ends it; the message is then dropped, never sent again.
    let r = app.callback(&id, &token, json!({"status": "succeeded"})).await;
    assert_eq!(r.status(), 200);
    assert_eq!(app.job(&id).await["attempts"], 1);
    assert_eq!(ds.seen().len(), 1);
}

/// What the slow downstream below holds, checked at every arrival.
#[derive(Default)]
struct Held {
    now: std::collections::HashSet<String>,
    max: usize,
    resubmitted_while_held: Vec<String>,
}

#[tokio::test]
async fn a_slow_downstream_never_holds_more_than_the_limit() {
    // It answers 202 after the client gave up (1.5 s > 1 s) and keeps each
    // job 2 s before calling back: every submission it accepted counts.
    use std::sync::{Arc, Mutex};
    let held = Arc::new(Mutex::new(Held::default()));
    let h = held.clone();
    let ds = Downstream::start(move |s: &Seen| {
        let mut held = h.lock().unwrap();
        if !held.now.insert(s.job_id.clone()) {
            held.resubmitted_while_held.push(s.job_id.clone());
        }
        held.max = held.max.max(held.now.len());
        Reply::after(Duration::from_millis(1500), 202)
    })
    .await;
    let app = Arc::new(
        app()
            .downstream(&ds.url)
            .config(|c| {
                c.dispatch_timeout_secs = 1;
                c.max_concurrency = 2;
                c.drain_budget_ms = 600;
            })
            .spawn()
            .await,
    );
    let (a, h) = (app.clone(), held.clone());
    *ds.before_reply.lock().unwrap() = Some(Arc::new(move |s: Seen| {
        let (a, h) = (a.clone(), h.clone());
        Box::pin(async move {
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_secs(2)).await;
                h.lock().unwrap().now.remove(&s.job_id);
                let token = s.body["callback_token"].as_str().unwrap().to_owned();
                a.callback(&s.job_id, &token, json!({"status": "succeeded"})).await;
            });
        })
    }));
    let jobs: Vec<Value> = (0..6).map(|i| json!({"payload": i})).collect();
    app.submit_batch(jobs).await;
    let done = eventually(Duration::from_secs(40), || async {
        app.drain().await;
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM jobs WHERE status <> 'succeeded'")
            .fetch_one(&app.db)
            .await
            .unwrap();
        n == 0
    })
    .await;
    let held = held.lock().unwrap();
    assert!(
        held.resubmitted_while_held.is_empty(),
        "{:?}",
        held.resubmitted_while_held
    );
    assert!(held.max <= 2, "the downstream held {} jobs with a limit of 2", held.max);
    assert_eq!(held.max, 2, "the test kept the downstream busy");
    assert!(done, "every job finished");
    assert_eq!(ds.seen().len(), 6, "each job was submitted once");
}

#[tokio::test]
async fn the_drain_answers_within_its_budget_and_finishes_in_the_background() {
    // The downstream takes 5 s; the drain's budget is 800 ms. The bound
    // checked is far from both, so that a loaded machine cannot fail it:
    // the drain answered long before the submission did.
    let ds = Downstream::start(|_| Reply::after(Duration::from_secs(5), 202)).await;
    let app = app()
        .downstream(&ds.url)
        .config(|c| {
            c.drain_budget_ms = 800;
            c.dispatch_timeout_secs = 10;
        })
        .spawn()
        .await;
    let id = id_of(&app.submit(json!(1)).await);
    let started = Instant::now();
    let report = app.drain().await;
    assert!(started.elapsed() < Duration::from_secs(3), "{:?}", started.elapsed());
    assert_eq!(report["dispatched"], 1, "still being submitted counts");
    assert_eq!(report["running"], 1, "a dispatching job holds its slot");
    assert_eq!(app.status_of(&id).await, "dispatching");
    assert!(
        eventually(Duration::from_secs(10), || async {
            app.status_of(&id).await == "running"
        })
        .await
    );
    assert!(eventually(Duration::from_secs(5), || async { app.receive_all(1).await.is_empty() }).await);
}

#[tokio::test]
async fn the_limit_caps_what_is_dispatched() {
    let ds = Downstream::start(|_| Reply::status(202)).await;
    let app = app()
        .downstream(&ds.url)
        .config(|c| c.max_concurrency = 3)
        .spawn()
        .await;
    let mut ids = Vec::new();
    for i in 0..6 {
        ids.push(id_of(&app.submit(json!(i)).await));
    }
    let report = app.drain().await;
    assert_eq!(
        report,
        json!({"dispatched": 3, "reclaimed": 0, "running": 3, "limit": 3, "stop_reason": "at_capacity"})
    );
    assert_eq!(app.drain().await["dispatched"], 0);
    assert_eq!(ds.seen().len(), 3);

    // Lowering below the number running stops new dispatches...
    app.set_limit(1).await;
    let held: Vec<String> = ds.seen().iter().map(|s| s.job_id.clone()).collect();
    let r = app
        .callback(&held[0], &ds.token_for(&held[0]), json!({"status": "succeeded"}))
        .await;
    assert_eq!(r.status(), 200);
    let report = app.drain().await;
    assert_eq!(
        (
            report["dispatched"].as_i64(),
            report["running"].as_i64(),
            report["stop_reason"].as_str()
        ),
        (Some(0), Some(2), Some("at_capacity"))
    );
    // ...0 pauses...
    app.set_limit(0).await;
    for h in &held[1..] {
        app.callback(h, &ds.token_for(h), json!({"status": "failed", "error": "x"}))
            .await;
    }
    let report = app.drain().await;
    assert_eq!(
        (
            report["dispatched"].as_i64(),
            report["running"].as_i64(),
            report["stop_reason"].as_str()
        ),
        (Some(0), Some(0), Some("at_capacity"))
    );
    // ...and raising it lets the rest through.
    app.set_limit(5).await;
    let report = app.drain().await;
    assert_eq!(
        (report["dispatched"].as_i64(), report["stop_reason"].as_str()),
        (Some(3), Some("queue_empty"))
    );
    assert_eq!(ds.seen().len(), 6);
}

#[tokio::test]
async fn messages_of_unknown_finished_or_cancelled_jobs_are_dropped_never_dispatched() {
    let ds = Downstream::start(|_| Reply::status(202)).await;
    let app = app()
        .downstream(&ds.url)
        .config(|c| c.orphan_message_grace_secs = 0)
        .spawn()
        .await;
    let cancelled = id_of(&app.submit(json!(1)).await);
    let r = app.cancel(&cancelled).await;
    assert_eq!(r.status(), 200);
    app.send_raw_message(&uuid::Uuid::new_v4().to_string()).await;
    app.send_raw_message("not a job id").await;
    let report = app.drain().await;
    assert_eq!(report["dispatched"], 0);
    assert_eq!(report["stop_reason"], "queue_empty");
    assert!(ds.seen().is_empty());
    assert!(app.receive_all(1).await.is_empty(), "all three messages are deleted");
    assert_eq!(app.status_of(&cancelled).await, "cancelled");
}

#[tokio::test]
async fn a_young_message_of_an_unknown_job_is_kept_for_its_grace_period() {
    let ds = Downstream::start(|_| Reply::status(202)).await;
    let app = app().downstream(&ds.url).spawn().await;
    app.send_raw_message(&uuid::Uuid::new_v4().to_string()).await;
    app.drain().await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    // Hidden for a while, not deleted: it comes back after its visibility.
    assert!(app.receive_all(1).await.is_empty(), "not visible");
    assert_eq!(
        crate::faults::common::messages_in_flight(&app).await,
        1,
        "still in the queue"
    );
}

#[tokio::test]
async fn bad_drain_bodies_are_refused_and_eventbridge_events_accepted() {
    let app = app().spawn().await;
    let post = |body: &'static str, ct: &'static str| {
        app.http
            .post(app.url("/drain"))
            .bearer_auth(DRAIN_TOKEN)
            .header("content-type", ct)
            .body(body)
            .send()
    };
    assert_eq!(post("", "application/json").await.unwrap().status(), 200);
    let event = r#"{"version":"0","id":"x","detail-type":"Scheduled Event","source":"aws.events","time":"2026-11-26T00:00:00Z","region":"us-east-1","resources":[],"detail":{}}"#;
    assert_eq!(
        post(event, "application/json; charset=utf-8").await.unwrap().status(),
        200
    );
    assert_problem(post("{not json", "application/json").await.unwrap(), 400).await;
}

#[tokio::test]
async fn a_reservation_honours_a_retry_after_recorded_after_the_drain_looked() {
    // What another replica's 429 leaves while this drain waits on SQS: the
    // reservation itself, under the gate lock, must see it.
    let app = app().spawn().await;
    let id = id_of(&app.submit(json!(1)).await);
    sqlx::query("UPDATE gate SET busy_until = now() + interval '30 seconds'")
        .execute(&app.db)
        .await
        .unwrap();
    let uuid: uuid::Uuid = id.parse().unwrap();
    let r = reserve_ids(&app.state.db, &[uuid]).await.unwrap();
    assert!(r.jobs.is_empty(), "nothing is reserved while Retry-After is in force");
    assert!(r.busy_until.is_some());
    assert_eq!(app.status_of(&id).await, "queued");
    sqlx::query("UPDATE gate SET busy_until = NULL")
        .execute(&app.db)
        .await
        .unwrap();
    let r = reserve_ids(&app.state.db, &[uuid]).await.unwrap();
    assert_eq!(r.jobs.len(), 1);
}

/// A reservation says how many free slots it left: a drain then knows
/// whether a job that did not go waits on the global limit (none left) or
/// on its key's cap, and whether a long poll for more work makes sense.
#[tokio::test]
async fn a_reservation_says_how_many_free_slots_it_left() {
    let app = app().config(|c| c.max_concurrency = 3).spawn().await;
    let r = app
        .http
        .put(app.url("/keys/k"))
        .bearer_auth(API_TOKEN)
        .json(&json!({"max_concurrency": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let mut ids = Vec::new();
    for n in 0..2 {
        ids.push(id_of(
            &app.post_job(json!({"payload": n, "key": "k"}))
                .await
                .json()
                .await
                .unwrap(),
        ));
    }
    let ids: Vec<uuid::Uuid> = ids.iter().map(|id| id.parse().unwrap()).collect();
    // Key cap 1: one of the two goes, and two of the three slots stay free.
    let r = reserve_ids(&app.state.db, &ids).await.unwrap();
    assert_eq!(r.jobs.len(), 1);
    assert_eq!(r.slots_left, 2, "3 free slots, 1 used");
    // Limit 1, now taken: nothing goes and no slot is left.
    app.set_limit(1).await;
    let r = reserve_ids(&app.state.db, &ids).await.unwrap();
    assert!(r.jobs.is_empty());
    assert_eq!(r.slots_left, 0);
}

#[tokio::test]
async fn a_retry_after_longer_than_the_cap_is_cut_and_says_so() {
    let ds = Downstream::start(|_| Reply {
        status: 503,
        retry_after: Some("7200".into()),
        delay: Duration::ZERO,
    })
    .await;
    let app = app().downstream(&ds.url).spawn().await;
    let id = id_of(&app.submit(json!(1)).await);
    assert_eq!(app.drain().await["stop_reason"], "downstream_busy");
    let last = app.events(&id).await.pop().unwrap();
    assert_eq!(last["reason"], "downstream 503 (Retry-After of 7200 s cut to 3600 s)");
    let paused_for: f64 = sqlx::query_scalar("SELECT extract(epoch FROM busy_until - now())::float8 FROM gate")
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert!((3590.0..=3600.0).contains(&paused_for), "{paused_for}");
}

#[tokio::test]
async fn a_job_whose_message_was_purged_gets_a_fresh_one_when_it_goes_back_to_the_queue() {
    use std::sync::Arc;
    let ds = Downstream::start(|_| Reply::status(429)).await;
    let app = Arc::new(app().downstream(&ds.url).spawn().await);
    let a = app.clone();
    // An operator purges the queue while the job is being submitted.
    *ds.before_reply.lock().unwrap() = Some(Arc::new(move |_| {
        let a = a.clone();
        Box::pin(async move {
            a.sqs.purge_queue().queue_url(&a.queue_url).send().await.unwrap();
        })
    }));
    let id = id_of(&app.submit(json!(1)).await);
    assert_eq!(app.drain().await["stop_reason"], "downstream_busy");
    assert_eq!(app.status_of(&id).await, "queued");
    // Its message could not be released (gone): a fresh one was sent.
    assert_eq!(
        crate::faults::common::messages_in_queue(&app).await,
        1,
        "no fresh message was sent for the job"
    );
    *ds.before_reply.lock().unwrap() = None;
    ds.set(|_| Reply::status(202));
    assert!(
        eventually(Duration::from_secs(5), || async {
            app.drain().await;
            app.status_of(&id).await == "running"
        })
        .await,
        "the job got a fresh message and was dispatched"
    );
}

/// A job sent back to the queue while its submission was in flight (its
/// lease reclaimed) still needs its message: when the downstream's answer
/// finds the job moved on, the message is kept, not deleted.
#[tokio::test]
async fn a_job_reclaimed_during_its_submission_keeps_its_message() {
    use std::sync::Arc;
    let ds = Downstream::start(|_| Reply::status(202)).await;
    let app = Arc::new(app().downstream(&ds.url).spawn().await);
    let a = app.clone();
    *ds.before_reply.lock().unwrap() = Some(Arc::new(move |s: Seen| {
        let a = a.clone();
        Box::pin(async move {
            sqlx::query("UPDATE jobs SET lease_expires_at = now() - interval '1 second' WHERE id = $1::uuid")
                .bind(&s.job_id)
                .execute(&a.db)
                .await
                .unwrap();
            sluicegate::store::reclaim_expired(&a.db).await.unwrap();
        })
    }));
    let id = id_of(&app.submit(json!(1)).await);
    app.drain().await;
    assert_eq!(app.status_of(&id).await, "queued", "the lease sent it back");
    assert_eq!(
        crate::faults::common::messages_in_queue(&app).await,
        1,
        "the message of a job back in the queue was deleted"
    );
}

#[tokio::test]
async fn an_empty_short_poll_is_not_believed_while_postgres_knows_a_due_job() {
    // On real SQS a short poll samples a few servers and can miss the
    // messages of a small queue. Here the message is hidden for a second
    // instead: the drain must not give up on a queue Postgres says is not empty.
    let ds = Downstream::start(|_| Reply::status(202)).await;
    let app = app().downstream(&ds.url).spawn().await;
    let id = id_of(&app.submit(json!(1)).await);
    assert_eq!(app.receive_all(1).await, vec![id.clone()]);
    let report = app.drain().await;
    assert_eq!(report["dispatched"], 1, "{report}");
    assert_eq!(app.status_of(&id).await, "running");
    // With nothing due, an empty queue is believed at once.
    let started = Instant::now();
    assert_eq!(app.drain().await["stop_reason"], "queue_empty");
    assert!(
        started.elapsed() < Duration::from_millis(900),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn lingering_deletes_go_out_ten_at_a_time_and_the_rest_within_the_linger() {
    let app = app().spawn().await;
    let ids: Vec<uuid::Uuid> = (0..13).map(|_| uuid::Uuid::new_v4()).collect();
    assert!(app.state.queue.send_job_ids(&ids).await.is_empty());
    let mut receipts = Vec::new();
    while receipts.len() < ids.len() {
        let got = app
            .state
            .queue
            .receive(10, Duration::from_secs(3600), Duration::from_secs(1))
            .await
            .unwrap();
        receipts.extend(got.into_iter().map(|m| m.receipt));
    }
    let queue = &app.state.queue;
    let tasks = &app.state.tasks;
    assert_eq!(crate::faults::common::messages_in_flight(&app).await, 13);

    // Three: they wait for company.
    assert_eq!(queue.delete_soon(&receipts[..3], tasks).await, 0);
    // Ten more: a batch of ten goes at once, three still wait ...
    let sent = Instant::now();
    assert_eq!(queue.delete_soon(&receipts[3..], tasks).await, 10);
    let left = crate::faults::common::messages_in_flight(&app).await;
    if sent.elapsed() < sluicegate::queue::DELETE_LINGER {
        assert_eq!(left, 3);
    }
    // ... and go within the linger.
    tokio::time::sleep(sluicegate::queue::DELETE_LINGER + Duration::from_millis(300)).await;
    assert_eq!(crate::faults::common::messages_in_flight(&app).await, 0);
}
