//! Waiting and asserting.

use std::time::Duration;

use reqwest::Response;
use serde_json::Value;

/// Polls `f` until it returns true or `timeout` passes.
pub async fn eventually<F, Fut>(timeout: Duration, mut f: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if f().await {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Asserts an RFC 9457 problem with this status; returns its body.
pub async fn assert_problem(r: Response, status: u16) -> Value {
    assert_eq!(r.status().as_u16(), status, "unexpected status");
    let ct = r
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    assert!(ct.starts_with("application/problem+json"), "content type {ct}");
    let body: Value = r.json().await.unwrap();
    for field in ["type", "title", "status", "detail"] {
        assert!(body.get(field).is_some(), "problem without {field}: {body}");
    }
    assert_eq!(body["status"], status);
    body
}
