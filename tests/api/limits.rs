use serde_json::{Value, json};

use crate::helpers::*;

#[tokio::test]
async fn the_limit_is_seeded_once_and_changed_through_the_api() {
    let app = app().config(|c| c.max_concurrency = 7).spawn().await;
    let v: Value = app.get("/limits").await.json().await.unwrap();
    assert_eq!(
        (v["max_concurrency"].as_i64(), v["effective_concurrency"].as_i64()),
        (Some(7), Some(7))
    );
    app.set_limit(3).await;
    let v: Value = app.get("/limits").await.json().await.unwrap();
    assert_eq!(
        (v["max_concurrency"].as_i64(), v["effective_concurrency"].as_i64()),
        (Some(3), Some(3))
    );
    // A replica started with another MAX_CONCURRENCY does not reseed it.
    let mut replica_config = app.config.clone();
    replica_config.max_concurrency = 50;
    sluicegate::store::seed_limit(&app.db, replica_config.max_concurrency)
        .await
        .unwrap();
    let v: Value = app.get("/limits").await.json().await.unwrap();
    assert_eq!(v["max_concurrency"], 3);
    app.set_limit(0).await;
    let s: Value = app.get("/stats").await.json().await.unwrap();
    assert_eq!(s["limit"], 0);
}

#[tokio::test]
async fn bad_limits_are_refused_and_change_nothing() {
    let app = app().spawn().await;
    for body in [
        json!({"max_concurrency": -1}),
        json!({"max_concurrency": "5"}),
        json!({"max_concurrency": 1.5}),
        json!({"max_concurrency": 2_000_000}),
        json!({}),
        json!({"max_concurrency": 5, "x": 1}),
        json!(null),
    ] {
        let r = app
            .http
            .put(app.url("/limits"))
            .bearer_auth(API_TOKEN)
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_problem(r, 422).await;
    }
    let v: Value = app.get("/limits").await.json().await.unwrap();
    assert_eq!(v["max_concurrency"], 10);
}

#[tokio::test]
async fn the_limit_history_lists_every_setting_newest_first_in_pages() {
    let app = app().spawn().await;
    let history = |query: &'static str| {
        let app = &app;
        async move {
            let r = app.get(&format!("/limits/history{query}")).await;
            assert_eq!(r.status(), 200);
            r.json::<Value>().await.unwrap()
        }
    };
    let first = history("").await;
    assert_eq!(first["items"].as_array().unwrap().len(), 1, "{first}");
    assert_eq!(first["items"][0]["max_concurrency"], 10);
    assert_eq!(first["items"][0]["effective_concurrency"], 10);
    assert_eq!(first["items"][0]["reason"], "config");
    assert!(first["next_cursor"].is_null());
    app.set_limit(3).await;
    // A change that does not set the limit is not an entry.
    let r = app
        .http
        .put(app.url("/limits"))
        .bearer_auth(API_TOKEN)
        .json(&json!({"key_max_concurrency": 2}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    app.set_limit(7).await;
    let all = history("").await;
    let seen: Vec<(i64, String)> = all["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| {
            (
                i["max_concurrency"].as_i64().unwrap(),
                i["reason"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        seen,
        vec![(7, "api".to_owned()), (3, "api".to_owned()), (10, "config".to_owned())]
    );
    assert!(all["items"][0]["at"].as_str().unwrap() >= all["items"][1]["at"].as_str().unwrap());
    // Pages of one, following next_cursor.
    let mut pages = Vec::new();
    let mut next = String::new();
    loop {
        let r = app.get(&format!("/limits/history?limit=1{next}")).await;
        assert_eq!(r.status(), 200);
        let page: Value = r.json().await.unwrap();
        pages.push(page["items"][0]["max_concurrency"].as_i64().unwrap());
        match page["next_cursor"].as_str() {
            Some(c) => next = format!("&cursor={c}"),
            None => break,
        }
    }
    assert_eq!(pages, vec![7, 3, 10]);
    for bad in ["?limit=0", "?limit=1001", "?limit=x", "?cursor=nope", "?colour=red"] {
        assert_problem(app.get(&format!("/limits/history{bad}")).await, 400).await;
    }
    let r = app.http.get(app.url("/limits/history")).send().await.unwrap();
    assert_eq!(r.status(), 401);
}
