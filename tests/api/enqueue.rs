//! Submitting jobs: durable in Postgres and queued in SQS before 202.

use std::time::Duration;

use serde_json::{Value, json};

use crate::helpers::*;

#[tokio::test]
async fn a_submitted_job_is_stored_and_its_id_queued() {
    let app = app().spawn().await;
    let r = app
        .post_job(json!({"payload": {"video": "a.mp4", "n": 3}, "timeout_secs": 60, "max_attempts": 2}))
        .await;
    assert_eq!(r.status(), 202);
    let location = r.headers()["location"].to_str().unwrap().to_owned();
    let job: Value = r.json().await.unwrap();
    let id = job["id"].as_str().unwrap();
    assert_eq!(location, format!("/jobs/{id}"));
    assert_eq!(job["status"], "queued");
    assert_eq!(job["payload"], json!({"video": "a.mp4", "n": 3}));
    assert_eq!(job["attempts"], 0);
    assert!(job["created_at"].as_str().unwrap().contains('T'));
    for f in ["started_at", "finished_at", "result", "error"] {
        assert!(job[f].is_null(), "{f}");
    }
    assert_eq!(app.job(id).await, job);
    let (timeout, attempts): (i32, i32) = sqlx::query_as("SELECT timeout_secs, max_attempts FROM jobs")
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert_eq!((timeout, attempts), (60, 2));
    // The message carries the job id only.
    assert_eq!(app.receive_all(30).await, vec![id.to_owned()]);
    let events = app.events(id).await;
    assert_eq!(events.len(), 1);
    assert_eq!(events[0]["from"], Value::Null);
    assert_eq!(events[0]["to"], "queued");
    assert_eq!(events[0]["reason"], "submitted");
}

#[tokio::test]
async fn payloads_come_back_verbatim() {
    let app = app().spawn().await;
    let raw =
        r#"{"payload":{"big":123456789012345678901234567890,"f":1.0000000000000000001,"z":"é☃\u0000","k":[1,2]}}"#;
    let r = app
        .http
        .post(app.url("/jobs"))
        .bearer_auth(API_TOKEN)
        .header("content-type", "application/json")
        .body(raw)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let text = r.text().await.unwrap();
    assert!(
        text.contains(
            r#""payload":{"big":123456789012345678901234567890,"f":1.0000000000000000001,"z":"é☃\u0000","k":[1,2]}"#
        ),
        "{text}"
    );
}

#[tokio::test]
async fn idempotency_key_returns_the_same_job_or_refuses_another_body() {
    let app = app().spawn().await;
    let send = |body: Value, key: &'static str| {
        let app = &app;
        async move {
            app.http
                .post(app.url("/jobs"))
                .bearer_auth(API_TOKEN)
                .header("Idempotency-Key", key)
                .json(&body)
                .send()
                .await
                .unwrap()
        }
    };
    let first = send(json!({"payload": {"a": 1}}), "order-1").await;
    assert_eq!(first.status(), 202);
    let first: Value = first.json().await.unwrap();
    let again = send(json!({"payload": {"a": 1}}), "order-1").await;
    assert_eq!(again.status(), 200);
    assert!(again.headers().get("location").is_some());
    let again: Value = again.json().await.unwrap();
    assert_eq!(again["id"], first["id"]);
    let other = send(json!({"payload": {"a": 2}}), "order-1").await;
    assert_problem(other, 422).await;
    assert_eq!(app.job_count().await, 1);
    assert_eq!(app.receive_all(30).await.len(), 1, "a repeat queues nothing");
    // Concurrent repeats of a new key make one job.
    let results = futures::future::join_all((0..8).map(|_| send(json!({"payload": "same"}), "order-2"))).await;
    let mut ids = Vec::new();
    for r in results {
        assert!(r.status() == 202 || r.status() == 200);
        ids.push(r.json::<Value>().await.unwrap()["id"].clone());
    }
    ids.dedup();
    assert_eq!(ids.len(), 1);
    assert_eq!(app.job_count().await, 2);
}

/// Group commit: single submissions that arrive while the group's enqueues
/// are busy share the next one (one transaction, one `SendMessageBatch`),
/// and each still hears 202 only with its job stored and queued. Rows
/// written by one transaction share its `xmin`.
#[tokio::test]
async fn concurrent_single_submissions_share_transactions() {
    let app = app().spawn().await;
    let n = 40;
    let answers = futures::future::join_all((0..n).map(|i| app.post_job(json!({"payload": {"i": i}})))).await;
    let mut ids = Vec::new();
    for r in answers {
        assert_eq!(r.status(), 202);
        ids.push(r.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_owned());
    }
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), n, "one job per submission");
    let transactions: i64 = sqlx::query_scalar("SELECT count(DISTINCT xmin::text) FROM jobs")
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert!(
        transactions <= n as i64 / 2,
        "{transactions} transactions for {n} concurrent submissions"
    );
    let mut queued: Vec<String> = app.receive_all(60).await;
    queued.sort();
    assert_eq!(queued, ids, "every job's id is queued");
}

#[tokio::test]
async fn a_batch_validates_stores_and_queues_each_item_in_order() {
    let app = app().spawn().await;
    let body = json!({"jobs": [
        {"payload": 1},
        {"payload": 2, "bogus": true},
        {"payload": 3, "idempotency_key": "k1"},
        {"payload": 3, "idempotency_key": "k1"},
        {"payload": 4, "idempotency_key": "k1"},
        {"timeout_secs": 5},
        {"payload": 5, "max_attempts": 0},
        "not an object",
    ]});
    let r = app
        .http
        .post(app.url("/jobs/batch"))
        .bearer_auth(API_TOKEN)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    let items = v["items"].as_array().unwrap();
    let statuses: Vec<u64> = items.iter().map(|i| i["status"].as_u64().unwrap()).collect();
    assert_eq!(statuses, vec![202, 422, 202, 200, 422, 422, 422, 422]);
    assert_eq!(items[2]["job"]["id"], items[3]["job"]["id"]);
    assert_eq!(items[0]["job"]["payload"], 1);
    assert!(items[0]["problem"].is_null());
    assert!(items[1]["job"].is_null() && items[1]["problem"]["status"] == 422);
    assert_eq!(app.job_count().await, 2);
    let mut queued = app.receive_all(30).await;
    queued.sort();
    let mut expected = vec![
        items[0]["job"]["id"].as_str().unwrap().to_owned(),
        items[2]["job"]["id"].as_str().unwrap().to_owned(),
    ];
    expected.sort();
    assert_eq!(queued, expected);
}

#[tokio::test]
async fn a_malformed_batch_envelope_fails_whole() {
    let app = app().spawn().await;
    let post = |body: Value| {
        app.http
            .post(app.url("/jobs/batch"))
            .bearer_auth(API_TOKEN)
            .json(&body)
            .send()
    };
    assert_problem(post(json!({"jobs": []})).await.unwrap(), 422).await;
    let too_many: Vec<Value> = (0..501).map(|i| json!({"payload": i})).collect();
    assert_problem(post(json!({"jobs": too_many})).await.unwrap(), 422).await;
    assert_problem(post(json!({"jobs": {}})).await.unwrap(), 422).await;
    assert_problem(post(json!({"items": []})).await.unwrap(), 422).await;
    assert_problem(post(json!([1])).await.unwrap(), 422).await;
    assert_eq!(app.job_count().await, 0);
}

#[tokio::test]
async fn a_full_batch_of_500_is_accepted() {
    let app = app().fast_sqs().spawn().await;
    let jobs: Vec<Value> = (0..500).map(|i| json!({"payload": {"i": i}})).collect();
    let v = app.submit_batch(jobs).await;
    let items = v["items"].as_array().unwrap();
    assert_eq!(items.len(), 500);
    for (i, item) in items.iter().enumerate() {
        assert_eq!(item["status"], 202);
        assert_eq!(item["job"]["payload"]["i"], i);
    }
    assert_eq!(app.job_count().await, 500);
    assert_eq!(app.receive_all(60).await.len(), 500);
}

#[tokio::test]
async fn sqs_down_during_submit_gives_503_and_stores_nothing() {
    let proxy = Proxy::start(addr_of(&sqs_endpoint())).await;
    let app = app().app_sqs_endpoint(format!("http://{}", proxy.addr)).spawn().await;
    proxy.set_down(true).await;
    let r = app.post_job(json!({"payload": 1})).await;
    assert!(r.headers().get("retry-after").is_some());
    assert_problem(r, 503).await;
    let r = app
        .http
        .post(app.url("/jobs/batch"))
        .bearer_auth(API_TOKEN)
        .json(&json!({"jobs": [{"payload": 1}]}))
        .send()
        .await
        .unwrap();
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["items"][0]["status"], 503);
    assert_eq!(app.job_count().await, 0, "no job without its message");
    proxy.set_down(false).await;
    assert!(
        eventually(Duration::from_secs(10), || async {
            app.post_job(json!({"payload": 2})).await.status() == 202
        })
        .await
    );
    assert_eq!(app.job_count().await, 1);
}

#[tokio::test]
async fn postgres_down_during_submit_gives_503_and_queues_nothing_that_could_run() {
    let proxy = Proxy::start(postgres_addr()).await;
    let app = app().db_port(proxy.addr.port()).spawn().await;
    proxy.set_down(true).await;
    let r = app.post_job(json!({"payload": 1})).await;
    assert_problem(r, 503).await;
    proxy.set_down(false).await;
    // Whatever reached SQS names no job, so a drain can never dispatch it.
    for body in app.receive_all(30).await {
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM jobs WHERE id = $1::uuid")
            .bind(&body)
            .fetch_one(&app.db)
            .await
            .unwrap();
        assert_eq!(n, 0);
    }
    assert_eq!(app.job_count().await, 0);
}

/// A Postgres proxy that, once armed, lets the next COMMIT through and then
/// cuts the connection before its answer comes back: the commit happens, the
/// client never learns it.
async fn commit_answer_cutter() -> (std::net::SocketAddr, std::sync::Arc<std::sync::atomic::AtomicBool>) {
    use std::sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    };
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let armed = Arc::new(AtomicBool::new(false));
    let a = armed.clone();
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let armed = a.clone();
            tokio::spawn(async move {
                let Ok(server) = tokio::net::TcpStream::connect(postgres_addr()).await else {
                    return;
                };
                let (mut cr, mut cw) = client.into_split();
                let (mut sr, mut sw) = server.into_split();
                let down = tokio::spawn(async move { tokio::io::copy(&mut sr, &mut cw).await });
                let mut buf = vec![0u8; 64 * 1024];
                while let Ok(n) = cr.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                    let commit = buf[..n].windows(6).any(|w| w == b"COMMIT");
                    if commit && armed.swap(false, Ordering::SeqCst) {
                        // Stop relaying answers, send the COMMIT, let
                        // Postgres commit, then drop the connection.
                        down.abort();
                        let _ = sw.write_all(&buf[..n]).await;
                        tokio::time::sleep(Duration::from_millis(300)).await;
                        break;
                    }
                    if sw.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    (addr, armed)
}

#[tokio::test]
async fn a_lost_commit_answer_says_the_outcome_is_unknown_and_a_keyed_retry_is_safe() {
    let (proxy, armed) = commit_answer_cutter().await;
    // In clear text, so that the proxy can see the COMMIT go by.
    let app = app()
        .db_port(proxy.port())
        .config(|c| {
            let url = format!("{}?sslmode=disable", c.database_url.expose());
            c.database_url = sluicegate::config::Secret::new(url);
        })
        .spawn()
        .await;
    armed.store(true, std::sync::atomic::Ordering::SeqCst);
    let submit = || {
        app.http
            .post(app.url("/jobs"))
            .bearer_auth(API_TOKEN)
            .header("Idempotency-Key", "order-7")
            .json(&json!({"payload": {"n": 7}}))
            .send()
    };
    let problem = assert_problem(submit().await.unwrap(), 503).await;
    let detail = problem["detail"].as_str().unwrap();
    assert!(detail.contains("may or may not have been stored"), "{detail}");
    assert!(detail.contains("same Idempotency-Key"), "{detail}");
    // It was in fact stored (and queued): the retry returns it, not a second
    // job. (The proxy may still be handing Postgres the COMMIT.)
    assert!(eventually(Duration::from_secs(3), || async { app.job_count().await == 1 }).await);
    let r = submit().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(app.job_count().await, 1);
    let id = r.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_owned();
    assert_eq!(app.receive_all(30).await, vec![id]);
}

#[tokio::test]
async fn a_stalled_sqs_send_is_cut_at_the_enqueue_timeout_and_stores_nothing() {
    // An SQS endpoint that accepts connections and never answers.
    let hole = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = hole.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = hole.accept().await {
            held.push(s);
        }
    });
    let app = app()
        .app_sqs_endpoint(format!("http://{addr}"))
        .config(|c| c.enqueue_timeout_secs = 1)
        .spawn()
        .await;
    let started = std::time::Instant::now();
    let r = app.post_job(json!({"payload": 1})).await;
    let problem = assert_problem(r, 503).await;
    assert!(
        started.elapsed() < Duration::from_millis(2500),
        "answered at the enqueue timeout, not the SDK's: {:?}",
        started.elapsed()
    );
    assert!(problem["detail"].as_str().unwrap().contains("nothing was stored"));
    assert_eq!(app.job_count().await, 0);
}

#[tokio::test]
async fn the_service_pool_ends_a_transaction_left_idle_past_the_enqueue_timeout_and_has_no_jit() {
    // What keeps a stalled enqueue from committing late: Postgres ends any
    // session of the service's pool that sits in a transaction longer than
    // ENQUEUE_TIMEOUT_SECS.
    let db = TestDb::create().await;
    let mut config = base_config(&db.url, "http://127.0.0.1:9/q", "http://127.0.0.1:9/");
    config.enqueue_timeout_secs = 1;
    let pool = sluicegate::startup::pool(&config).unwrap();
    let jit: String = sqlx::query_scalar("SHOW jit").fetch_one(&pool).await.unwrap();
    assert_eq!(jit, "off", "no JIT compilation of the service's short queries");
    let mut tx = pool.begin().await.unwrap();
    sqlx::query("SELECT 1").execute(&mut *tx).await.unwrap();
    tokio::time::sleep(Duration::from_millis(1600)).await;
    let err = sqlx::query("SELECT 1").execute(&mut *tx).await.unwrap_err();
    assert!(
        err.to_string().contains("idle-in-transaction") || err.as_database_error().is_none(),
        "{err}"
    );
    drop(tx);
    // A transaction that keeps talking is not affected.
    let mut tx = pool.begin().await.unwrap();
    for _ in 0..4 {
        tokio::time::sleep(Duration::from_millis(400)).await;
        sqlx::query("SELECT 1").execute(&mut *tx).await.unwrap();
    }
    tx.commit().await.unwrap();
}
