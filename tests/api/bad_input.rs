//! Bad input gets a 4xx problem and changes nothing.

use serde_json::json;

use crate::helpers::*;

async fn raw(app: &TestApp, method: &str, path: &str, content_type: Option<&str>, body: Vec<u8>) -> reqwest::Response {
    let mut req = app
        .http
        .request(method.parse().unwrap(), app.url(path))
        .bearer_auth(API_TOKEN)
        .body(body);
    if let Some(ct) = content_type {
        req = req.header("content-type", ct);
    }
    req.send().await.unwrap()
}

#[tokio::test]
async fn malformed_bodies_are_refused() {
    let app = app().spawn().await;
    let json_ct = Some("application/json");
    // (method, path, content type, body, expected status)
    type Case<'a> = (&'a str, &'a str, Option<&'a str>, Vec<u8>, u16);
    let cases: Vec<Case> = vec![
        ("POST", "/jobs", json_ct, b"{\"payload\": ".to_vec(), 400),
        ("POST", "/jobs", json_ct, b"not json".to_vec(), 400),
        (
            "POST",
            "/jobs",
            json_ct,
            vec![b'{', b'"', 0xff, 0xfe, b'"', b':', b'1', b'}'],
            400,
        ),
        ("POST", "/jobs", json_ct, b"".to_vec(), 400),
        ("POST", "/jobs", Some("text/plain"), b"{\"payload\": 1}".to_vec(), 415),
        ("POST", "/jobs", None, b"{\"payload\": 1}".to_vec(), 415),
        (
            "POST",
            "/jobs",
            json_ct,
            b"{\"payload\": 1, \"extra\": 2}".to_vec(),
            422,
        ),
        ("POST", "/jobs", json_ct, b"{}".to_vec(), 422),
        (
            "POST",
            "/jobs",
            json_ct,
            b"{\"payload\": 1, \"timeout_secs\": \"10\"}".to_vec(),
            422,
        ),
        (
            "POST",
            "/jobs",
            json_ct,
            b"{\"payload\": 1, \"timeout_secs\": 0}".to_vec(),
            422,
        ),
        (
            "POST",
            "/jobs",
            json_ct,
            b"{\"payload\": 1, \"max_attempts\": 1e400}".to_vec(),
            422,
        ),
        (
            "POST",
            "/jobs",
            json_ct,
            b"{\"payload\": 1, \"max_attempts\": 99999999999999999999}".to_vec(),
            422,
        ),
        (
            "POST",
            "/jobs",
            json_ct,
            b"{\"payload\": 1, \"payload\": 2}".to_vec(),
            422,
        ),
        ("POST", "/jobs", json_ct, b"[1]".to_vec(), 422),
        (
            "POST",
            "/jobs",
            json_ct,
            format!("{{\"payload\": {}1{}}}", "[".repeat(200), "]".repeat(200)).into_bytes(),
            422,
        ),
        (
            "POST",
            "/jobs",
            json_ct,
            format!("{{\"payload\": {}1{}}}", "[".repeat(100), "]".repeat(100)).into_bytes(),
            422,
        ),
        (
            "POST",
            "/jobs",
            json_ct,
            format!("{{\"payload\": \"{}\"}}", "x".repeat(300_000)).into_bytes(),
            413,
        ),
        ("POST", "/jobs/batch", json_ct, b"{\"jobs\": [".to_vec(), 400),
        ("PUT", "/limits", json_ct, b"{\"max_concurrency\": }".to_vec(), 400),
        (
            "PUT",
            "/limits",
            Some("application/x-www-form-urlencoded"),
            b"max_concurrency=5".to_vec(),
            415,
        ),
    ];
    for (method, path, ct, body, status) in cases {
        let r = raw(&app, method, path, ct, body.clone()).await;
        let got = r.status().as_u16();
        assert_eq!(
            got,
            status,
            "{method} {path} {ct:?} {:?}",
            String::from_utf8_lossy(&body[..body.len().min(60)])
        );
        assert_problem(r, status).await;
    }
    assert_eq!(app.job_count().await, 0);
    let limit: i32 = sqlx::query_scalar("SELECT max_concurrency FROM gate")
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert_eq!(limit, 10);
    assert!(app.receive_all(30).await.is_empty());
}

#[tokio::test]
async fn bad_ids_queries_and_headers_are_refused() {
    let app = app().spawn().await;
    for path in ["/jobs/not-a-uuid", "/jobs/123/events", "/jobs/%00/cancel"] {
        let method = if path.ends_with("cancel") { "POST" } else { "GET" };
        let r = raw(&app, method, path, None, vec![]).await;
        assert_problem(r, 400).await;
    }
    for q in [
        "limit=0",
        "limit=1001",
        "limit=abc",
        "limit=-5",
        "status=done",
        "cursor=zzz",
        "unknown=1",
        "limit=1&limit=2",
    ] {
        assert_problem(app.get(&format!("/jobs?{q}")).await, 400).await;
    }
    for key in ["", "has space", &"k".repeat(256)] {
        let r = app
            .http
            .post(app.url("/jobs"))
            .bearer_auth(API_TOKEN)
            .header("Idempotency-Key", key)
            .json(&json!({"payload": 1}))
            .send()
            .await
            .unwrap();
        assert_problem(r, 400).await;
    }
    assert_eq!(app.job_count().await, 0);
}

#[tokio::test]
async fn unknown_routes_and_methods_get_problems() {
    let app = app().spawn().await;
    assert_problem(app.get("/nope").await, 404).await;
    let r = app
        .http
        .delete(app.url("/jobs"))
        .bearer_auth(API_TOKEN)
        .send()
        .await
        .unwrap();
    assert_problem(r, 405).await;
}
