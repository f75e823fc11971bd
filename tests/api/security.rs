//! The server protects itself: slow clients, floods, oversized headers.

use std::time::{Duration, Instant};

use serde_json::json;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

use crate::helpers::*;

/// Reads until the server closes the connection or answers; returns what it sent.
async fn read_response(stream: &mut TcpStream, limit: Duration) -> Option<String> {
    let mut buf = vec![0u8; 4096];
    match tokio::time::timeout(limit, stream.read(&mut buf)).await {
        Ok(Ok(n)) => Some(String::from_utf8_lossy(&buf[..n]).into_owned()),
        Ok(Err(_)) => Some(String::new()),
        Err(_) => None,
    }
}

#[tokio::test]
async fn a_client_that_never_finishes_its_headers_is_cut_off() {
    let app = app().config(|c| c.header_read_timeout_secs = 1).spawn().await;
    let mut s = TcpStream::connect(app.addr).await.unwrap();
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        .await
        .unwrap();
    let started = Instant::now();
    let answer = read_response(&mut s, Duration::from_secs(5)).await;
    assert!(answer.is_some(), "the connection was left open");
    assert!(started.elapsed() < Duration::from_secs(3));
    // The server is fine afterwards.
    assert_eq!(app.http.get(app.url("/healthz")).send().await.unwrap().status(), 200);
}

#[tokio::test]
async fn a_client_that_sends_nothing_is_cut_off() {
    let app = app().config(|c| c.header_read_timeout_secs = 1).spawn().await;
    let mut s = TcpStream::connect(app.addr).await.unwrap();
    let started = Instant::now();
    let answer = read_response(&mut s, Duration::from_secs(5)).await;
    assert!(answer.is_some(), "a silent connection was left open");
    assert!(started.elapsed() < Duration::from_secs(3));
}

#[tokio::test]
async fn a_body_that_never_arrives_times_out_with_a_problem() {
    let app = app().config(|c| c.request_timeout_secs = 1).spawn().await;
    let mut s = TcpStream::connect(app.addr).await.unwrap();
    let head = format!(
        "POST /jobs HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {API_TOKEN}\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{{\"payload\""
    );
    s.write_all(head.as_bytes()).await.unwrap();
    let answer = read_response(&mut s, Duration::from_secs(5)).await.expect("answered");
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("application/problem+json"), "{answer}");
    assert_eq!(app.job_count().await, 0);
}

#[tokio::test]
async fn a_flood_beyond_the_in_flight_cap_gets_fast_503s_and_the_service_recovers() {
    let app = app().config(|c| c.max_in_flight_requests = 4).spawn().await;
    // Four requests that hold their slot: headers sent, body still coming.
    let mut holders = Vec::new();
    for _ in 0..4 {
        let mut s = TcpStream::connect(app.addr).await.unwrap();
        let head = format!(
            "POST /jobs HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {API_TOKEN}\r\nContent-Type: application/json\r\nContent-Length: 20\r\n\r\n{{"
        );
        s.write_all(head.as_bytes()).await.unwrap();
        holders.push(s);
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let started = Instant::now();
    let flood =
        futures::future::join_all((0..50).map(|_| app.http.get(app.url("/stats")).bearer_auth(API_TOKEN).send())).await;
    let elapsed = started.elapsed();
    let mut shed = 0;
    for r in flood {
        let r = r.unwrap();
        if r.status() == 503 {
            assert_eq!(r.headers()["retry-after"], "1");
            assert_problem(r, 503).await;
            shed += 1;
        }
    }
    assert_eq!(shed, 50, "every request beyond the cap is shed");
    assert!(elapsed < Duration::from_secs(2), "shedding is fast: {elapsed:?}");
    // Liveness and metrics are not behind the cap.
    assert_eq!(app.http.get(app.url("/healthz")).send().await.unwrap().status(), 200);
    let metrics = app
        .http
        .get(app.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(metrics.contains("sluicegate_http_requests_shed_total"));
    drop(holders);
    assert!(
        eventually(Duration::from_secs(5), || async {
            app.http.get(app.url("/readyz")).send().await.unwrap().status() == 200
        })
        .await
    );
    assert_eq!(app.get("/stats").await.status(), 200);
    assert_eq!(app.job_count().await, 0);
}

#[tokio::test]
async fn oversized_headers_are_refused() {
    let app = app().spawn().await;
    let r = app
        .http
        .get(app.url("/stats"))
        .bearer_auth(API_TOKEN)
        .header("x-big", "a".repeat(100_000))
        .send()
        .await;
    assert_problem(r.unwrap(), 431).await;
    let r = app
        .http
        .post(app.url("/jobs"))
        .bearer_auth(API_TOKEN)
        .header("Idempotency-Key", "k".repeat(10_000))
        .json(&json!({"payload": 1}))
        .send()
        .await
        .unwrap();
    assert_problem(r, 400).await;
    assert_eq!(app.job_count().await, 0);
    assert_eq!(app.http.get(app.url("/healthz")).send().await.unwrap().status(), 200);
}
