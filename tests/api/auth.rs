//! Who may call what: three credentials, three doors.

use reqwest::Method;
use serde_json::json;

use crate::helpers::*;

const CLIENT_ROUTES: &[(&str, &str)] = &[
    ("POST", "/jobs"),
    ("GET", "/jobs"),
    ("POST", "/jobs/batch"),
    ("GET", "/jobs/00000000-0000-0000-0000-000000000000"),
    ("GET", "/jobs/00000000-0000-0000-0000-000000000000/events"),
    ("POST", "/jobs/00000000-0000-0000-0000-000000000000/cancel"),
    ("GET", "/stats"),
    ("GET", "/limits"),
    ("PUT", "/limits"),
];

async fn call(app: &TestApp, method: &str, path: &str, token: Option<&str>) -> reqwest::Response {
    let mut req = app
        .http
        .request(Method::from_bytes(method.as_bytes()).unwrap(), app.url(path))
        .json(&json!({}));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    req.send().await.unwrap()
}

#[tokio::test]
async fn client_routes_need_an_api_token() {
    let app = app().spawn().await;
    for (method, path) in CLIENT_ROUTES {
        for token in [None, Some("wrong-token-wrong-token"), Some(DRAIN_TOKEN)] {
            let r = call(&app, method, path, token).await;
            let www = r
                .headers()
                .get("www-authenticate")
                .map(|v| v.to_str().unwrap().to_owned());
            assert_problem(r, 401).await;
            assert!(
                www.is_some_and(|v| v.starts_with("Bearer")),
                "{method} {path}: no WWW-Authenticate"
            );
        }
    }
    // The scheme must be Bearer.
    let r = app
        .http
        .get(app.url("/stats"))
        .basic_auth("user", Some(API_TOKEN))
        .send()
        .await
        .unwrap();
    assert_problem(r, 401).await;
    assert_eq!(app.job_count().await, 0);
}

#[tokio::test]
async fn drain_needs_the_drain_token() {
    let app = app().spawn().await;
    for token in [None, Some(API_TOKEN), Some("wrong-token-wrong-token")] {
        assert_problem(call(&app, "POST", "/drain", token).await, 401).await;
    }
    let r = app
        .http
        .post(app.url("/drain"))
        .bearer_auth(DRAIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn callbacks_never_accept_client_or_drain_tokens_and_never_reveal_jobs() {
    let app = app().spawn().await;
    let job = app.submit(json!(1)).await;
    let id = job["id"].as_str().unwrap();
    let unknown = uuid::Uuid::new_v4().to_string();
    for path in [
        format!("/jobs/{id}/callback"),
        format!("/jobs/{unknown}/callback"),
        "/jobs/not-a-uuid/callback".into(),
        format!("/jobs/{id}/heartbeat"),
        format!("/jobs/{unknown}/heartbeat"),
    ] {
        for token in [None, Some(API_TOKEN), Some(DRAIN_TOKEN), Some("made-up-token")] {
            let r = call(&app, "POST", &path, token).await;
            assert_problem(r, 401).await;
        }
    }
    assert_eq!(app.status_of(id).await, "queued");
}

#[tokio::test]
async fn open_routes_need_no_token() {
    let app = app().spawn().await;
    for path in ["/healthz", "/readyz", "/metrics", "/openapi.json", "/docs"] {
        let r = app.http.get(app.url(path)).send().await.unwrap();
        assert_eq!(r.status(), 200, "{path}");
    }
}
