//! Reading, listing, history and cancelling jobs.

use std::collections::HashSet;

use serde_json::{Value, json};

use crate::helpers::*;

#[tokio::test]
async fn unknown_job_is_404() {
    let app = app().spawn().await;
    let id = uuid::Uuid::new_v4();
    assert_problem(app.get(&format!("/jobs/{id}")).await, 404).await;
    assert_problem(app.get(&format!("/jobs/{id}/events")).await, 404).await;
    let r = app.cancel(&id.to_string()).await;
    assert_problem(r, 404).await;
}

async fn page(app: &TestApp, query: &str) -> (Vec<String>, Option<String>) {
    let r = app.get(&format!("/jobs?{query}")).await;
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    let ids = v["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["id"].as_str().unwrap().to_owned())
        .collect();
    (ids, v["next_cursor"].as_str().map(str::to_owned))
}

#[tokio::test]
async fn listing_is_newest_first_and_pages_stay_stable_while_jobs_arrive() {
    let app = app().spawn().await;
    let mut created = Vec::new();
    for i in 0..7 {
        created.push(app.submit(json!(i)).await["id"].as_str().unwrap().to_owned());
    }
    let (all, next) = page(&app, "").await;
    assert_eq!(next, None);
    let newest_first: Vec<String> = created.iter().rev().cloned().collect();
    assert_eq!(all, newest_first);

    let mut seen = Vec::new();
    let (ids, mut cursor) = page(&app, "limit=3").await;
    seen.extend(ids);
    while let Some(c) = cursor {
        // New jobs arriving between pages do not shift the pages.
        app.submit(json!("late")).await;
        let (ids, next) = page(&app, &format!("limit=3&cursor={c}")).await;
        seen.extend(ids);
        cursor = next;
    }
    assert_eq!(seen, newest_first);
    assert_eq!(seen.iter().collect::<HashSet<_>>().len(), 7);
}

#[tokio::test]
async fn listing_filters_by_status() {
    let app = app().spawn().await;
    let a = app.submit(json!("a")).await["id"].as_str().unwrap().to_owned();
    let b = app.submit(json!("b")).await["id"].as_str().unwrap().to_owned();
    let r = app.cancel(&a).await;
    assert_eq!(r.status(), 200);
    assert_eq!(page(&app, "status=cancelled").await.0, vec![a]);
    assert_eq!(page(&app, "status=queued").await.0, vec![b]);
    assert!(page(&app, "status=running&limit=1000").await.0.is_empty());
}

#[tokio::test]
async fn cancel_works_only_from_queued() {
    let app = app().spawn().await;
    for status in [
        "dispatching",
        "running",
        "succeeded",
        "failed",
        "timed_out",
        "cancelled",
    ] {
        let id = app.submit(json!(status)).await["id"].as_str().unwrap().to_owned();
        sqlx::query("UPDATE jobs SET status = $1::job_status WHERE id = $2::uuid")
            .bind(status)
            .bind(&id)
            .execute(&app.db)
            .await
            .unwrap();
        let r = app.cancel(&id).await;
        let p = assert_problem(r, 409).await;
        assert!(p["detail"].as_str().unwrap().contains(status), "{p}");
        assert_eq!(app.status_of(&id).await, status);
    }
    let id = app.submit(json!("q")).await["id"].as_str().unwrap().to_owned();
    let r = app.cancel(&id).await;
    assert_eq!(r.status(), 200);
    let job: Value = r.json().await.unwrap();
    assert_eq!(job["status"], "cancelled");
    assert!(job["finished_at"].is_string());
    let events = app.events(&id).await;
    assert_eq!(events.len(), 2);
    assert_eq!(events[1]["from"], "queued");
    assert_eq!(events[1]["to"], "cancelled");
    assert_eq!(events[1]["reason"], "cancelled by client");
}

#[tokio::test]
async fn stats_count_every_job() {
    let app = app().spawn().await;
    let mut ids = Vec::new();
    for i in 0..5 {
        ids.push(app.submit(json!(i)).await["id"].as_str().unwrap().to_owned());
    }
    app.http
        .post(app.url(&format!("/jobs/{}/cancel", ids[0])))
        .bearer_auth(API_TOKEN)
        .send()
        .await
        .unwrap();
    sqlx::query("UPDATE jobs SET status = 'running' WHERE id = $1::uuid")
        .bind(&ids[1])
        .execute(&app.db)
        .await
        .unwrap();
    sqlx::query("UPDATE jobs SET status = 'succeeded' WHERE id = $1::uuid")
        .bind(&ids[2])
        .execute(&app.db)
        .await
        .unwrap();
    let check = || async {
        let s: Value = app.get("/stats").await.json().await.unwrap();
        assert_eq!(s["limit"], 10);
        assert_eq!(s["queued"], 2);
        assert_eq!(s["running"], 1);
        assert_eq!(s["succeeded"], 1);
        assert_eq!(s["failed"], 0);
        assert_eq!(s["timed_out"], 0);
        assert_eq!(s["cancelled"], 1);
        assert_eq!(s["queue_depth"], 5);
    };
    check().await;
    // A replica of the previous version, during a rolling upgrade, reads the
    // counts as deltas and compacts them now and then: the same counts, and
    // its compaction changes nothing.
    let old_replica = || async {
        let rows: Vec<(String, i64)> = sqlx::query_as(
            "SELECT status::text, sum(delta)::bigint FROM job_count_deltas GROUP BY status HAVING sum(delta) <> 0 \
             ORDER BY status::text",
        )
        .fetch_all(&app.db)
        .await
        .unwrap();
        rows
    };
    let expected: Vec<(String, i64)> = [("cancelled", 1), ("queued", 2), ("running", 1), ("succeeded", 1)]
        .into_iter()
        .map(|(s, n)| (s.to_owned(), n))
        .collect();
    assert_eq!(old_replica().await, expected);
    sqlx::query("SELECT compact_job_counts()")
        .execute(&app.db)
        .await
        .unwrap();
    assert_eq!(old_replica().await, expected);
    check().await;
}

/// A JSON string of about `len` bytes that Postgres cannot compress.
fn random_text(len: usize) -> String {
    let mut s = String::with_capacity(len + 32);
    while s.len() < len {
        s.push_str(&uuid::Uuid::new_v4().simple().to_string());
    }
    s
}

#[tokio::test]
async fn a_page_is_bounded_in_bytes_and_paging_returns_every_job_once() {
    const BUDGET: usize = 4 * 1024 * 1024;
    let app = app().config(|c| c.max_body_bytes = 8 * 1024 * 1024).spawn().await;
    // The oldest job alone is larger than a page's budget; then 30 jobs of
    // 200 KB (6 MB in all), half of them very compressible (the stored
    // size says little about the size of the text).
    let mut created = vec![
        app.submit(json!(random_text(5_000_000))).await["id"]
            .as_str()
            .unwrap()
            .to_owned(),
    ];
    for i in 0..30 {
        let text = if i % 2 == 0 {
            random_text(200_000)
        } else {
            "a".repeat(200_000)
        };
        created.push(app.submit(json!(text)).await["id"].as_str().unwrap().to_owned());
    }
    let newest_first: Vec<String> = created.iter().rev().cloned().collect();

    let mut seen = Vec::new();
    let mut sizes = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let query = match &cursor {
            Some(c) => format!("/jobs?limit=1000&cursor={c}"),
            None => "/jobs?limit=1000".to_owned(),
        };
        let r = app.get(&query).await;
        assert_eq!(r.status(), 200);
        let body = r.bytes().await.unwrap();
        let page: Value = serde_json::from_slice(&body).unwrap();
        let items = page["items"].as_array().unwrap();
        assert!(!items.is_empty(), "a page holds at least one job");
        if items.len() > 1 {
            // The budget, plus the few hundred bytes of each job's other fields.
            assert!(
                body.len() < BUDGET + 64 * 1024,
                "a page of {} jobs is {} bytes",
                items.len(),
                body.len()
            );
        }
        sizes.push(items.len());
        seen.extend(items.iter().map(|j| j["id"].as_str().unwrap().to_owned()));
        cursor = page["next_cursor"].as_str().map(str::to_owned);
        if cursor.is_none() {
            break;
        }
        assert!(sizes.len() < 40, "paging does not end");
    }
    assert_eq!(seen, newest_first, "every job exactly once, newest first");
    // 20 jobs of 200 KB fit in 4 MiB, 21 do not; the large job is alone.
    assert_eq!(sizes, [20, 10, 1]);
}

#[tokio::test]
async fn finished_jobs_past_their_retention_are_pruned_with_their_history() {
    let app = app().config(|c| c.job_retention_secs = 60).spawn().await;
    let mut ids = Vec::new();
    for i in 0..3 {
        ids.push(app.submit(json!(i)).await["id"].as_str().unwrap().to_owned());
    }
    for id in &ids[..2] {
        let r = app.cancel(id).await;
        assert_eq!(r.status(), 200);
    }
    // One finished two minutes ago, one just now, one still queued.
    sqlx::query("UPDATE jobs SET finished_at = now() - interval '2 minutes' WHERE id = $1::uuid")
        .bind(&ids[0])
        .execute(&app.db)
        .await
        .unwrap();
    assert_eq!(sluicegate::background::prune(&app.state).await.unwrap(), 1);
    assert_problem(app.get(&format!("/jobs/{}", ids[0])).await, 404).await;
    assert_problem(app.get(&format!("/jobs/{}/events", ids[0])).await, 404).await;
    assert_eq!(app.status_of(&ids[1]).await, "cancelled");
    assert_eq!(app.status_of(&ids[2]).await, "queued");
    let stats: Value = app.get("/stats").await.json().await.unwrap();
    assert_eq!(
        (stats["cancelled"].as_i64(), stats["queued"].as_i64()),
        (Some(1), Some(1))
    );
    assert_eq!(sluicegate::background::prune(&app.state).await.unwrap(), 0);
}
