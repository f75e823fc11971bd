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
