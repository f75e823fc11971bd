//! Callbacks and heartbeats from the downstream.

use std::{sync::Arc, time::Duration};

use serde_json::{Value, json};

use crate::helpers::*;

async fn running_job(app: &TestApp, ds: &Downstream) -> (String, String) {
    let id = app.submit(json!({"n": 1})).await["id"].as_str().unwrap().to_owned();
    assert_eq!(app.drain().await["dispatched"], 1);
    let token = ds.token_for(&id);
    (id, token)
}

#[tokio::test]
async fn a_callback_finishes_the_job_and_repeats_are_idempotent() {
    let ds = Downstream::start(|_| Reply::status(202)).await;
    let app = app().downstream(&ds.url).spawn().await;
    let (id, token) = running_job(&app, &ds).await;
    let raw = r#"{"status":"succeeded","result":{"frames":12345678901234567890123,"note":"ünïcode"}}"#;
    let send = |body: &'static str| {
        app.http
            .post(app.url(&format!("/jobs/{id}/callback")))
            .bearer_auth(&token)
            .header("content-type", "application/json")
            .body(body)
            .send()
    };
    let r = send(raw).await.unwrap();
    assert_eq!(r.status(), 200);
    let text = r.text().await.unwrap();
    assert!(
        text.contains(r#""result":{"frames":12345678901234567890123,"note":"ünïcode"}"#),
        "{text}"
    );
    let job: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(job["status"], "succeeded");
    assert!(job["finished_at"].is_string());
    assert_eq!(send(raw).await.unwrap().status(), 200);
    assert_problem(send(r#"{"status":"failed","error":"late"}"#).await.unwrap(), 409).await;
    assert_eq!(app.job(&id).await["status"], "succeeded");
    let events = app.events(&id).await;
    assert_eq!(events.last().unwrap()["reason"], "callback");
    assert_eq!(events.iter().filter(|e| e["to"] == "succeeded").count(), 1);
    let s: Value = app.get("/stats").await.json().await.unwrap();
    assert_eq!((s["running"].as_i64(), s["succeeded"].as_i64()), (Some(0), Some(1)));
}

#[tokio::test]
async fn a_failed_callback_records_the_error() {
    let ds = Downstream::start(|_| Reply::status(202)).await;
    let app = app().downstream(&ds.url).spawn().await;
    let (id, token) = running_job(&app, &ds).await;
    let r = app
        .callback(&id, &token, json!({"status": "failed", "error": "out of memory"}))
        .await;
    assert_eq!(r.status(), 200);
    let job: Value = r.json().await.unwrap();
    assert_eq!(
        (job["status"].as_str(), job["error"].as_str()),
        (Some("failed"), Some("out of memory"))
    );
}

#[tokio::test]
async fn callback_tokens_open_one_job_at_its_current_attempt_only() {
    let ds = Downstream::start(|_| Reply::status(500)).await;
    let app = app().downstream(&ds.url).spawn().await;
    let id = app.submit(json!(1)).await["id"].as_str().unwrap().to_owned();
    let other = app.submit(json!(2)).await["id"].as_str().unwrap().to_owned();
    app.drain().await;
    let first = ds.token_for(&id);
    ds.set(|_| Reply::status(202));
    assert!(
        eventually(Duration::from_secs(5), || async {
            app.drain().await;
            ds.seen().iter().filter(|s| s.attempt == 2).count() == 2
        })
        .await
    );
    let second = ds.token_for(&id);
    assert_ne!(first, second);
    // An earlier attempt's token, another job's token, client and drain tokens: 401.
    for token in [first.as_str(), &ds.token_for(&other), API_TOKEN, DRAIN_TOKEN] {
        assert_problem(app.callback(&id, token, json!({"status": "succeeded"})).await, 401).await;
        let r = app.heartbeat(&id, token).await;
        assert_problem(r, 401).await;
    }
    assert_eq!(app.status_of(&id).await, "running");
    assert_eq!(
        app.callback(&id, &second, json!({"status": "succeeded"}))
            .await
            .status(),
        200
    );
}

/// A replica checks a callback's token against the attempt it last issued a
/// token for, without reading the job; the job may have moved on to a later
/// attempt on another replica since. The earlier attempt's token must still
/// be refused there (401), not taken for a callback of a job in another
/// state (409), and the current token accepted.
#[tokio::test]
async fn a_replica_that_dispatched_an_earlier_attempt_refuses_its_token_once_another_replica_dispatched_the_next() {
    let ds = Downstream::start(|_| Reply::status(500)).await;
    let a = app().downstream(&ds.url).spawn().await;
    let b = a.replica().await;
    let id = a.submit(json!(1)).await["id"].as_str().unwrap().to_owned();
    a.drain().await;
    let first = ds.token_for(&id);
    ds.set(|_| Reply::status(202));
    assert!(
        eventually(Duration::from_secs(5), || async {
            b.drain().await;
            ds.seen().iter().any(|s| s.attempt == 2)
        })
        .await
    );
    let second = ds.token_for(&id);
    assert_eq!(b.status_of(&id).await, "running");
    for token in [first.as_str(), API_TOKEN] {
        assert_problem(a.callback(&id, token, json!({"status": "succeeded"})).await, 401).await;
        assert_problem(a.heartbeat(&id, token).await, 401).await;
    }
    assert_eq!(a.status_of(&id).await, "running");
    assert_eq!(a.heartbeat(&id, &second).await.status(), 200);
    assert_eq!(
        a.callback(&id, &second, json!({"status": "succeeded"})).await.status(),
        200
    );
}

#[tokio::test]
async fn a_callback_may_arrive_before_the_submission_returns() {
    let ds = Downstream::start(|_| Reply::status(202)).await;
    let app = Arc::new(app().downstream(&ds.url).spawn().await);
    let a = app.clone();
    *ds.before_reply.lock().unwrap() = Some(Arc::new(move |s: Seen| {
        let a = a.clone();
        Box::pin(async move {
            let token = s.body["callback_token"].as_str().unwrap().to_owned();
            let r = a
                .callback(&s.job_id, &token, json!({"status": "succeeded", "result": 7}))
                .await;
            assert_eq!(r.status(), 200);
        })
    }));
    let id = app.submit(json!(1)).await["id"].as_str().unwrap().to_owned();
    let report = app.drain().await;
    assert_eq!(report["running"], 0);
    let job = app.job(&id).await;
    assert_eq!(
        (job["status"].as_str(), job["result"].as_i64()),
        (Some("succeeded"), Some(7))
    );
    assert!(job["started_at"].is_string());
    assert_eq!(
        crate::faults::common::messages_in_queue(&app).await,
        0,
        "the message is deleted (not only hidden)"
    );
    let tos: Vec<String> = app
        .events(&id)
        .await
        .iter()
        .map(|e| e["to"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(tos, vec!["queued", "dispatching", "succeeded"]);
}

#[tokio::test]
async fn bad_callback_bodies_change_nothing() {
    let ds = Downstream::start(|_| Reply::status(202)).await;
    let app = app().downstream(&ds.url).spawn().await;
    let (id, token) = running_job(&app, &ds).await;
    for body in [
        json!({"status": "done"}),
        json!({"status": "succeeded", "extra": 1}),
        json!({}),
        json!({"status": "succeeded", "error": 5}),
        // Postgres text cannot hold U+0000 (this was a 500).
        json!({"status": "failed", "error": "a\u{0}b"}),
    ] {
        assert_problem(app.callback(&id, &token, body).await, 422).await;
    }
    let r = app
        .http
        .post(app.url(&format!("/jobs/{id}/callback")))
        .bearer_auth(&token)
        .body("{")
        .header("content-type", "application/json")
        .send()
        .await
        .unwrap();
    assert_problem(r, 400).await;
    assert_eq!(app.status_of(&id).await, "running");
}

#[tokio::test]
async fn heartbeats_extend_the_lease_and_are_refused_once_finished() {
    let ds = Downstream::start(|_| Reply::status(202)).await;
    let app = app().downstream(&ds.url).spawn().await;
    let r = app.post_job(json!({"payload": 1, "timeout_secs": 2})).await;
    let id = r.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_owned();
    app.drain().await;
    let token = ds.token_for(&id);
    let beat = || app.heartbeat(&id, &token);
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(1200)).await;
        let r = beat().await;
        assert_eq!(r.status(), 200);
        assert_eq!(app.drain().await["reclaimed"], 0);
    }
    assert_eq!(app.status_of(&id).await, "running", "alive well past its 2 s timeout");
    tokio::time::sleep(Duration::from_millis(2200)).await;
    assert_eq!(app.drain().await["reclaimed"], 1);
    let job = app.job(&id).await;
    assert_eq!(job["status"], "timed_out");
    assert_problem(beat().await, 409).await;
    assert_problem(app.callback(&id, &token, json!({"status": "succeeded"})).await, 409).await;
}

#[tokio::test]
async fn a_callback_token_stops_working_an_hour_after_its_job_ended() {
    let ds = Downstream::start(|_| Reply::status(202)).await;
    let app = app().downstream(&ds.url).spawn().await;
    let id = app.submit(json!({"secret": "s3cr3t"})).await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    app.drain().await;
    let token = ds.token_for(&id);
    let done = json!({"status": "succeeded", "result": 1});
    assert_eq!(app.callback(&id, &token, done.clone()).await.status(), 200);
    // A repeat (the downstream lost the answer) is fine for a while...
    assert_eq!(app.callback(&id, &token, done.clone()).await.status(), 200);
    // ...but not for ever: the token does not read its job once the grace is over.
    sqlx::query("UPDATE jobs SET finished_at = now() - interval '61 minutes' WHERE id = $1::uuid")
        .bind(&id)
        .execute(&app.db)
        .await
        .unwrap();
    let r = app.callback(&id, &token, done).await;
    let body = assert_problem(r, 401).await;
    assert!(!body.to_string().contains("s3cr3t"));
    let r = app.heartbeat(&id, &token).await;
    assert_problem(r, 401).await;
}

#[tokio::test]
async fn a_callback_refills_the_freed_slot_at_once() {
    let ds = Downstream::start(|_| Reply::status(202)).await;
    let app = app()
        .downstream(&ds.url)
        .config(|c| {
            c.max_concurrency = 1;
            c.refill_on_callback = true;
        })
        .spawn()
        .await;
    let a = app.submit(json!("a")).await["id"].as_str().unwrap().to_owned();
    let b = app.submit(json!("b")).await["id"].as_str().unwrap().to_owned();
    assert_eq!(app.drain().await["dispatched"], 1);
    let first = ds.seen()[0].job_id.clone();
    assert_eq!(
        app.callback(&first, &ds.token_for(&first), json!({"status": "succeeded"}))
            .await
            .status(),
        200
    );
    let second = if first == a { b } else { a };
    assert!(
        eventually(Duration::from_secs(5), || async {
            app.status_of(&second).await == "running"
        })
        .await,
        "refilled without a scheduled drain"
    );
}

#[tokio::test]
async fn the_internal_ticker_drains_without_a_scheduler() {
    let ds = Downstream::start(|_| Reply::status(202)).await;
    let app = app()
        .downstream(&ds.url)
        .config(|c| c.drain_interval_secs = Some(1))
        .spawn()
        .await;
    let id = app.submit(json!(1)).await["id"].as_str().unwrap().to_owned();
    assert!(
        eventually(Duration::from_secs(5), || async {
            app.status_of(&id).await == "running"
        })
        .await
    );
}

#[tokio::test]
async fn a_heartbeat_never_shortens_a_dispatching_lease() {
    // The submission is still in flight (3 s) when a heartbeat comes for a
    // job whose own timeout (1 s) is shorter than the dispatch lease.
    let ds = Downstream::start(|_| Reply::after(Duration::from_secs(3), 202)).await;
    let app = app()
        .downstream(&ds.url)
        .config(|c| c.drain_budget_ms = 300)
        .spawn()
        .await;
    let r = app.post_job(json!({"payload": 1, "timeout_secs": 1})).await;
    let id = r.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_owned();
    app.drain().await;
    assert!(eventually(Duration::from_secs(2), || async { !ds.seen().is_empty() }).await);
    let token = ds.token_for(&id);
    let r = app.heartbeat(&id, &token).await;
    assert_eq!(r.status(), 200);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        app.drain().await["reclaimed"],
        0,
        "the slot stays held while the submission is in flight"
    );
    assert!(
        eventually(Duration::from_secs(5), || async {
            app.status_of(&id).await == "running"
        })
        .await
    );
}
