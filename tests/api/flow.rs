//! Flow control (contract, "Flow control (version 2)"): keys, priority,
//! exact per-key caps, `waiting_on`, `/keys` and the v2 `/limits`.

use std::{collections::HashMap, time::Duration};

use serde_json::{Value, json};

use crate::helpers::*;

fn id_of(job: &Value) -> String {
    job["id"].as_str().unwrap().to_owned()
}

async fn put(app: &TestApp, path: &str, body: Value) -> reqwest::Response {
    app.http
        .put(app.url(path))
        .bearer_auth(API_TOKEN)
        .json(&body)
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn key_and_priority_are_stored_returned_filtered_and_validated() {
    let app = app().spawn().await;
    let plain = app.submit(json!(1)).await;
    assert_eq!(
        (plain["key"].as_str(), plain["priority"].as_i64()),
        (Some("default"), Some(0))
    );
    assert_eq!(plain["waiting_on"], "queue");
    assert!(plain["not_before"].is_null());
    let r = app
        .post_job(json!({"payload": 2, "key": "tenant-a", "priority": -30}))
        .await;
    assert_eq!(r.status(), 202);
    let a = r.json::<Value>().await.unwrap();
    assert_eq!(
        (a["key"].as_str(), a["priority"].as_i64()),
        (Some("tenant-a"), Some(-30))
    );
    let batch = app
        .submit_batch(vec![
            json!({"payload": 3, "key": "tenant-b", "priority": 3600}),
            json!({"payload": 4, "key": "has space"}),
            json!({"payload": 5, "priority": 3601}),
        ])
        .await;
    assert_eq!(batch["items"][0]["status"], 202);
    assert_eq!(batch["items"][0]["job"]["key"], "tenant-b");
    assert_eq!(batch["items"][1]["status"], 422);
    assert_eq!(batch["items"][2]["status"], 422);
    for bad in [json!(""), json!("x".repeat(129)), json!("é"), json!(7)] {
        let r = app.post_job(json!({"payload": 1, "key": bad})).await;
        assert_problem(r, 422).await;
    }
    for bad in [json!(-3601), json!(1.5), json!("0")] {
        let r = app.post_job(json!({"payload": 1, "priority": bad})).await;
        assert_problem(r, 422).await;
    }
    assert_eq!(app.job_count().await, 3, "bad submissions stored nothing");
    let page: Value = app.get("/jobs?key=tenant-a").await.json().await.unwrap();
    let ids: Vec<String> = page["items"].as_array().unwrap().iter().map(id_of).collect();
    assert_eq!(ids, vec![id_of(&a)]);
    assert_problem(app.get("/jobs?key=has%20space").await, 400).await;
}

#[tokio::test]
async fn an_idempotent_repeat_must_name_the_same_key_and_priority() {
    let app = app().spawn().await;
    let send = |body: Value| {
        app.http
            .post(app.url("/jobs"))
            .bearer_auth(API_TOKEN)
            .header("Idempotency-Key", "k-1")
            .json(&body)
            .send()
    };
    assert_eq!(send(json!({"payload": 1, "key": "a"})).await.unwrap().status(), 202);
    assert_eq!(send(json!({"payload": 1, "key": "a"})).await.unwrap().status(), 200);
    assert_problem(send(json!({"payload": 1, "key": "b"})).await.unwrap(), 422).await;
    assert_problem(
        send(json!({"payload": 1, "key": "a", "priority": 5})).await.unwrap(),
        422,
    )
    .await;
}

/// How many submissions the downstream got per key (the payloads name it).
fn per_key(ds: &Downstream) -> HashMap<String, usize> {
    ds.seen().iter().fold(HashMap::new(), |mut m, s| {
        *m.entry(s.body["payload"]["k"].as_str().unwrap().to_owned())
            .or_default() += 1;
        m
    })
}

#[tokio::test]
async fn a_key_never_holds_more_than_its_cap_and_never_blocks_the_others() {
    let ds = Downstream::start(|_| Reply::status(202)).await;
    let app = app().downstream(&ds.url).spawn().await;
    assert_eq!(
        put(&app, "/keys/tenant-a", json!({"max_concurrency": 2}))
            .await
            .status(),
        200
    );
    let jobs: Vec<Value> = (0..6)
        .map(|i| json!({"payload": {"k": "tenant-a", "i": i}, "key": "tenant-a"}))
        .chain((0..3).map(|i| json!({"payload": {"k": "tenant-b", "i": i}, "key": "tenant-b"})))
        .collect();
    app.submit_batch(jobs).await;
    for _ in 0..3 {
        app.drain().await;
    }
    let held = per_key(&ds);
    assert_eq!(held.get("tenant-a").copied(), Some(2), "{held:?}");
    assert_eq!(held.get("tenant-b").copied(), Some(3), "{held:?}");
    let key: Value = app.get("/keys/tenant-a").await.json().await.unwrap();
    assert_eq!((key["running"].as_i64(), key["queued"].as_i64()), (Some(2), Some(4)));
    assert_eq!(key["max_concurrency"], 2);
    let waiting: Value = app.get("/jobs?key=tenant-a&status=queued").await.json().await.unwrap();
    assert!(
        waiting["items"]
            .as_array()
            .unwrap()
            .iter()
            .all(|j| j["waiting_on"] == "key_limit"),
        "{waiting}"
    );
    let metrics = scrape_metrics(&app).await;
    assert!(
        metrics.contains_key("sluicegate_jobs_held_total{reason=\"key_limit\"}"),
        "held jobs are counted by reason"
    );
    assert!(metrics.contains_key("sluicegate_effective_concurrency"));
    // Cap 0 pauses the key; removing its settings lifts the cap.
    assert_eq!(
        put(&app, "/keys/tenant-a", json!({"max_concurrency": 0}))
            .await
            .status(),
        200
    );
    tokio::time::sleep(Duration::from_millis(2100)).await;
    app.drain().await;
    assert_eq!(ds.seen().len(), 5);
    let r = app
        .http
        .delete(app.url("/keys/tenant-a"))
        .bearer_auth(API_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    assert!(
        eventually(Duration::from_secs(6), || async {
            app.drain().await;
            ds.seen().len() == 9
        })
        .await
    );
    // A global cap for keys without their own.
    let limits: Value = put(&app, "/limits", json!({"key_max_concurrency": 1}))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(limits["key_max_concurrency"], 1);
    assert_eq!(limits["max_concurrency"], 10, "fields not named keep their value");
}

#[tokio::test]
async fn waiting_on_says_why_a_queued_job_waits() {
    let ds = Downstream::start(|_| Reply::status(202)).await;
    let app = app()
        .downstream(&ds.url)
        .config(|c| c.max_concurrency = 1)
        .spawn()
        .await;
    let a = id_of(&app.submit(json!(1)).await);
    let b = id_of(&app.submit(json!(2)).await);
    app.drain().await;
    let job = app.job(&a).await;
    assert!(job["waiting_on"].is_null() && job["not_before"].is_null(), "{job}");
    assert_eq!(app.job(&b).await["waiting_on"], "global_limit");
    app.set_limit(0).await;
    assert_eq!(app.job(&b).await["waiting_on"], "paused");
    app.set_limit(5).await;
    sqlx::query("UPDATE gate SET busy_until = now() + interval '30 seconds'")
        .execute(&app.db)
        .await
        .unwrap();
    let job = app.job(&b).await;
    assert_eq!(job["waiting_on"], "downstream_busy");
    assert!(job["not_before"].is_string());
    sqlx::query("UPDATE gate SET busy_until = NULL")
        .execute(&app.db)
        .await
        .unwrap();
    sqlx::query("UPDATE jobs SET available_at = now() + interval '1 minute' WHERE id = $1::uuid")
        .bind(&b)
        .execute(&app.db)
        .await
        .unwrap();
    let job = app.job(&b).await;
    assert_eq!(job["waiting_on"], "retry_backoff");
    assert!(job["not_before"].is_string());
}

#[tokio::test]
async fn a_submitted_job_says_at_once_why_it_waits() {
    // The 202 (and a batch item, and an idempotent repeat) carries the same
    // reason GET /jobs/{id} gives.
    let ds = Downstream::start(|_| Reply::status(202)).await;
    let app = app()
        .downstream(&ds.url)
        .config(|c| c.max_concurrency = 2)
        .spawn()
        .await;
    assert_eq!(app.submit(json!(1)).await["waiting_on"], "queue");
    put(&app, "/keys/capped", json!({"max_concurrency": 1})).await;
    app.post_job(json!({"payload": 0, "key": "capped"})).await;
    app.drain().await;
    let r = app.post_job(json!({"payload": 1, "key": "capped"})).await;
    assert_eq!(r.status(), 202);
    let job: Value = r.json().await.unwrap();
    assert_eq!(job["waiting_on"], "key_limit", "{job}");
    assert_eq!(app.job(&id_of(&job)).await["waiting_on"], "key_limit");
    // Two jobs live now (the limit): another key waits on the global limit.
    let batch = app
        .submit_batch(vec![
            json!({"payload": 2, "key": "free"}),
            json!({"payload": 3, "key": "capped"}),
        ])
        .await;
    assert_eq!(batch["items"][0]["job"]["waiting_on"], "global_limit", "{batch}");
    assert_eq!(batch["items"][1]["job"]["waiting_on"], "key_limit", "{batch}");
    app.set_limit(0).await;
    let submit_keyed = || {
        app.http
            .post(app.url("/jobs"))
            .bearer_auth(API_TOKEN)
            .header("Idempotency-Key", "same-job")
            .json(&json!({"payload": 4}))
            .send()
    };
    let first = submit_keyed().await.unwrap();
    assert_eq!(first.status(), 202);
    assert_eq!(first.json::<Value>().await.unwrap()["waiting_on"], "paused");
    app.set_limit(5).await;
    let repeat = submit_keyed().await.unwrap();
    assert_eq!(repeat.status(), 200);
    assert_eq!(repeat.json::<Value>().await.unwrap()["waiting_on"], "queue");
}

#[tokio::test]
async fn keys_and_limits_endpoints_follow_the_contract() {
    let app = app().spawn().await;
    assert_problem(app.get("/keys/nobody").await, 404).await;
    let key: Value = put(&app, "/keys/tenant%2Fa", json!({"weight": 3}))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        key,
        json!({"key": "tenant/a", "max_concurrency": null, "weight": 3.0, "rate_per_second": null,
               "rate_burst": null, "queued": 0, "running": 0, "oldest_queued_at": null})
    );
    for bad in [
        json!({}),
        json!({"weight": 0}),
        json!({"weight": 101}),
        json!({"max_concurrency": -1}),
        json!({"colour": "red"}),
        json!({"rate_per_second": 5}),
    ] {
        assert_problem(put(&app, "/keys/tenant%2Fa", bad).await, 422).await;
    }
    let key: Value = app.get("/keys/tenant%2Fa").await.json().await.unwrap();
    assert_eq!(key["weight"], 3.0, "refused changes changed nothing");
    app.post_job(json!({"payload": 1, "key": "tenant-b"})).await;
    let page: Value = app.get("/keys?limit=1").await.json().await.unwrap();
    assert_eq!(page["items"][0]["key"], "tenant-b");
    let cursor = page["next_cursor"].as_str().unwrap().to_owned();
    let page: Value = app
        .get(&format!("/keys?limit=1&cursor={cursor}"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(page["items"][0]["key"], "tenant/a");
    assert!(page["next_cursor"].is_null());

    let limits: Value = app.get("/limits").await.json().await.unwrap();
    assert_eq!(
        limits,
        json!({"max_concurrency": 10, "effective_concurrency": 10, "key_max_concurrency": null,
               "rate_per_second": null, "rate_burst": null, "adaptive": false, "adaptive_min": 1})
    );
    for bad in [
        json!({}),
        json!({"max_concurrency": null}),
        json!({"effective_concurrency": 3}),
        json!({"key_max_concurrency": -2}),
        json!({"adaptive": true}),
    ] {
        assert_problem(put(&app, "/limits", bad).await, 422).await;
    }
    let limits: Value = put(&app, "/limits", json!({"key_max_concurrency": 4}))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        (
            limits["max_concurrency"].as_i64(),
            limits["key_max_concurrency"].as_i64()
        ),
        (Some(10), Some(4))
    );
    let limits: Value = put(&app, "/limits", json!({"key_max_concurrency": null}))
        .await
        .json()
        .await
        .unwrap();
    assert!(limits["key_max_concurrency"].is_null());
}

/// Jobs in the intake window, per key.
async fn in_window(app: &TestApp, key: &str) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM intake WHERE key = $1")
        .bind(key)
        .fetch_one(&app.db)
        .await
        .unwrap()
}

fn jobs_of(key: &str, n: usize) -> Vec<Value> {
    (0..n)
        .map(|i| json!({"payload": {"k": key, "i": i}, "key": key}))
        .collect()
}

/// Every slot busy: the limit is 1 and a job of its own key holds it (the
/// downstream never calls back). Drains with no free slot take messages
/// into the intake window (not while paused: limit 0).
async fn occupy_the_only_slot(app: &TestApp) {
    app.set_limit(1).await;
    app.post_job(json!({"payload": {"k": "blocker"}, "key": "blocker"}))
        .await;
    assert_eq!(app.drain().await["dispatched"], 1);
}

/// With every slot busy, drains take every message into the intake window;
/// then the limit opens. What the drain dispatches then is chosen from the
/// whole window.
async fn take_all_in(app: &TestApp, keys: &[(&str, i64)]) {
    for _ in 0..40 {
        let mut all = true;
        for (key, n) in keys {
            all &= in_window(app, key).await == *n;
        }
        if all {
            return;
        }
        assert_eq!(app.drain().await["stop_reason"], "at_capacity");
    }
    panic!("the intake window never held every message");
}

#[tokio::test]
async fn a_small_key_is_not_stuck_behind_a_large_keys_backlog() {
    // One standard queue: 300 messages of `big`, then 5 of `small`. A drain
    // that dispatched the next messages SQS delivers would give every slot to
    // `big` until its backlog was gone; the window gives `small` its share.
    let ds = Downstream::start(|_| Reply::status(202)).await;
    let app = app().fast_sqs().downstream(&ds.url).spawn().await;
    occupy_the_only_slot(&app).await;
    for _ in 0..3 {
        app.submit_batch(jobs_of("big", 100)).await;
    }
    app.submit_batch(jobs_of("small", 5)).await;
    take_all_in(&app, &[("big", 300), ("small", 5)]).await;
    app.set_limit(1 + 4).await;
    app.drain().await;
    let held = per_key(&ds);
    assert_eq!(held.get("small").copied(), Some(2), "{held:?}");
    assert_eq!(held.get("big").copied(), Some(2), "{held:?}");
    // The jobs left wait in the window: none of their messages went back.
    assert_eq!(in_window(&app, "big").await + in_window(&app, "small").await, 301);
}

#[tokio::test]
async fn weights_share_the_slots_of_a_binding_limit() {
    let ds = Downstream::start(|_| Reply::status(202)).await;
    let app = app().downstream(&ds.url).spawn().await;
    occupy_the_only_slot(&app).await;
    assert_eq!(put(&app, "/keys/heavy", json!({"weight": 3})).await.status(), 200);
    app.submit_batch(jobs_of("light", 20)).await;
    app.submit_batch(jobs_of("heavy", 20)).await;
    take_all_in(&app, &[("light", 20), ("heavy", 20)]).await;
    app.set_limit(1 + 8).await;
    app.drain().await;
    let held = per_key(&ds);
    // Weighted shares of the 8 slots: 6 and 2.
    assert_eq!(
        (held.get("heavy").copied(), held.get("light").copied()),
        (Some(6), Some(2)),
        "{held:?}"
    );
}

/// A fractional share is rounded neither up nor down by habit: with weights
/// 1 and 4, the light key holding 1 slot and the heavy one 6, the next slot
/// goes to the light key (`(1 + ½) / 1 < (6 + ½) / 4`). Divisors `live + 1`
/// would give it to the heavy key (`2 / 1 > 7 / 4`): the heavier key would
/// keep the rounding.
#[tokio::test]
async fn the_next_slot_goes_to_the_key_furthest_below_its_weighted_share() {
    let ds = Downstream::start(|_| Reply::status(202)).await;
    let app = app().downstream(&ds.url).spawn().await;
    occupy_the_only_slot(&app).await;
    assert_eq!(put(&app, "/keys/heavy", json!({"weight": 4})).await.status(), 200);
    app.submit_batch(jobs_of("light", 1)).await;
    app.submit_batch(jobs_of("heavy", 6)).await;
    take_all_in(&app, &[("light", 1), ("heavy", 6)]).await;
    app.set_limit(1 + 7).await;
    assert_eq!(app.drain().await["dispatched"], 7);
    app.submit_batch(jobs_of("light", 3)).await;
    app.submit_batch(jobs_of("heavy", 3)).await;
    take_all_in(&app, &[("light", 3), ("heavy", 3)]).await;
    app.set_limit(1 + 8).await;
    assert_eq!(app.drain().await["dispatched"], 1);
    let held = per_key(&ds);
    assert_eq!(
        (held.get("heavy").copied(), held.get("light").copied()),
        (Some(6), Some(2)),
        "{held:?}"
    );
}

#[tokio::test]
async fn priority_moves_a_job_ahead_within_its_key_by_at_most_its_seconds() {
    let ds = Downstream::start(|_| Reply::status(202)).await;
    let app = app().downstream(&ds.url).spawn().await;
    occupy_the_only_slot(&app).await;
    let late = |i: i64, priority: i64| json!({"payload": {"k": "t", "i": i}, "key": "t", "priority": priority});
    let mut batch: Vec<Value> = (0..4).map(|i| late(i, 0)).collect();
    batch.insert(0, late(-1, -3600));
    app.submit_batch(batch).await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    // Submitted a second after the others: ahead of them only with a
    // priority of more than that second.
    app.submit_batch(vec![late(10, 3600), late(11, 0)]).await;
    take_all_in(&app, &[("t", 7)]).await;
    app.set_limit(1 + 1).await;
    let mut order = Vec::new();
    for _ in 0..7 {
        app.drain().await;
        let s = ds.seen().last().unwrap().clone();
        order.push(s.body["payload"]["i"].as_i64().unwrap());
        let token = s.body["callback_token"].as_str().unwrap().to_owned();
        let r = app.callback(&s.job_id, &token, json!({"status": "succeeded"})).await;
        assert_eq!(r.status(), 200);
    }
    assert_eq!(order, vec![10, 0, 1, 2, 3, 11, -1]);
}

#[tokio::test]
async fn keys_with_settings_have_gauges_and_no_other_key_does() {
    let ds = Downstream::start(|_| Reply::status(202)).await;
    let app = app().downstream(&ds.url).spawn().await;
    let suffix = uuid::Uuid::new_v4().simple().to_string();
    let (capped, plain) = (format!("gauged-{suffix}"), format!("plain-{suffix}"));
    assert_eq!(
        put(&app, &format!("/keys/{capped}"), json!({"max_concurrency": 1}))
            .await
            .status(),
        200
    );
    app.submit_batch(jobs_of(&capped, 3)).await;
    app.submit_batch(jobs_of(&plain, 2)).await;
    app.drain().await;
    sluicegate::metrics::sample(&app.state).await;
    let text = app.get("/metrics").await.text().await.unwrap();
    let m = parse_metrics(&text);
    let running = format!("sluicegate_key_running{{key=\"{capped}\"}}");
    let queued = format!("sluicegate_key_queued{{key=\"{capped}\"}}");
    assert_eq!(m.get(&running), Some(&1.0), "{text}");
    assert_eq!(m.get(&queued), Some(&2.0), "{text}");
    assert!(!text.contains(&plain), "a key without settings has no series");
    // Its settings removed, the key's gauges read 0.
    let r = app
        .http
        .delete(app.url(&format!("/keys/{capped}")))
        .bearer_auth(API_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    sluicegate::metrics::sample(&app.state).await;
    let text = app.get("/metrics").await.text().await.unwrap();
    assert_eq!(parse_metrics(&text).get(&queued), Some(&0.0), "{text}");
}

/// With more keys waiting than one reservation looks at (`WINDOW_KEYS`;
/// two here), the cursor moves on: a key beyond the first ones gets its
/// turn on the next reservation, not once the keys before it in key order
/// have run dry.
#[tokio::test]
async fn with_more_keys_than_a_reservation_looks_at_every_key_gets_its_turn() {
    let app = app().config(|c| c.max_concurrency = 100).spawn().await;
    // `c` first (the oldest job), then three each for `a` and `b`.
    let mut ids = vec![id_of(
        &app.post_job(json!({"payload": 0, "key": "c"}))
            .await
            .json()
            .await
            .unwrap(),
    )];
    for key in ["a", "b"] {
        for n in 0..3 {
            let job: Value = app
                .post_job(json!({"payload": n, "key": key}))
                .await
                .json()
                .await
                .unwrap();
            ids.push(id_of(&job));
        }
    }
    let ids: Vec<uuid::Uuid> = ids.iter().map(|id| id.parse().unwrap()).collect();
    let times = sluicegate::store::WindowTimes {
        keys_per_reservation: 2,
        ..window_times()
    };
    let db = &app.state.db;
    take_into_window(db, &ids, &times).await.unwrap();

    // One slot per reservation, the jobs kept running.
    let mut order = Vec::new();
    for _ in 0..ids.len() {
        let r = sluicegate::store::reserve(db, &[], &times, 1).await.unwrap();
        assert_eq!(r.jobs.len(), 1);
        let job = r.jobs[0].0.id();
        let key: String = sqlx::query_scalar("SELECT key FROM jobs WHERE id = $1")
            .bind(job)
            .fetch_one(db)
            .await
            .unwrap();
        order.push(key);
    }
    // Looking at `a` and `b` only, `c` would come last (7th). The first
    // reservation looks at `a` and `b`, the second at `c` and `a`: `c` goes
    // then, or (a tie with `a`, broken at random) the third.
    let c_at = order.iter().position(|k| k == "c").unwrap();
    assert!(c_at <= 2, "key c waited behind the keys before it: {order:?}");
    let mut sorted = order.clone();
    sorted.sort();
    assert_eq!(sorted, ["a", "a", "a", "b", "b", "b", "c"], "every job went once");
}

/// An enqueue opens this replica's intake at once: after an empty receive
/// a replica at capacity stops taking messages in for a second, but a job
/// submitted meanwhile is taken into the window by the next drain.
#[tokio::test]
async fn an_enqueue_reopens_the_intake_of_a_replica_at_capacity() {
    let ds = Downstream::start(|_| Reply::status(202)).await;
    let app = app().downstream(&ds.url).spawn().await;
    occupy_the_only_slot(&app).await;
    // Nothing left to take in: the intake closes after this empty receive.
    assert_eq!(app.drain().await["stop_reason"], "at_capacity");
    app.post_job(json!({"payload": 1, "key": "late"})).await;
    app.drain().await;
    assert_eq!(
        in_window(&app, "late").await,
        1,
        "the drain right after the submission did not take the job in"
    );
}
