//! The server protects itself: slow clients, floods, oversized headers.

use std::time::{Duration, Instant};

use serde_json::json;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpSocket, TcpStream},
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

/// A client that pipelines `n` requests for the 1.4 MB docs bundle and never
/// reads an answer (a small receive buffer, so the server's writes stall at
/// once rather than after the kernel has buffered megabytes).
pub async fn non_reader(addr: std::net::SocketAddr, n: usize) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut s = socket.connect(addr).await.unwrap();
    let requests = "GET /docs/swagger-ui-bundle.js HTTP/1.1\r\nHost: x\r\n\r\n".repeat(n);
    s.write_all(requests.as_bytes()).await.unwrap();
    s
}

#[tokio::test]
async fn clients_that_never_read_their_answers_cannot_lock_others_out() {
    let ds = Downstream::start(|_| Reply::status(202)).await;
    let app = app()
        .downstream(&ds.url)
        .config(|c| {
            c.max_connections = 5;
            c.write_timeout_secs = 2;
        })
        .spawn()
        .await;
    // A client that keeps no idle connection: one would hold a slot of
    // the cap until the header-read timeout closes it.
    let fresh = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let r = fresh
        .post(app.url("/jobs"))
        .bearer_auth(API_TOKEN)
        .json(&json!({"payload": 1}))
        .send()
        .await
        .unwrap();
    let id = r.json::<serde_json::Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let r = fresh
        .post(app.url("/drain"))
        .bearer_auth(DRAIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.json::<serde_json::Value>().await.unwrap()["dispatched"], 1);
    let token = ds.token_for(&id);
    let mut blockers = Vec::new();
    for _ in 0..5 {
        blockers.push(non_reader(app.addr, 20).await);
    }
    // Each is being answered (peeking reads nothing: no progress).
    for s in &blockers {
        let peeked = tokio::time::timeout(Duration::from_secs(5), s.peek(&mut [0u8; 16])).await;
        assert!(matches!(peeked, Ok(Ok(n)) if n > 0), "a non-reader is not answered");
    }
    assert!(
        fresh.get(app.url("/healthz")).send().await.is_err(),
        "the non-readers hold every connection"
    );
    // Their stalled writes time out and free the connections: a client and
    // the downstream's callback get through (retrying while the last
    // non-readers are being cut off).
    let started = Instant::now();
    assert!(
        eventually(Duration::from_secs(10), || async {
            matches!(fresh.get(app.url("/healthz")).send().await, Ok(r) if r.status() == 200)
        })
        .await,
        "the non-readers still lock everyone out"
    );
    let callback = || {
        fresh
            .post(app.url(&format!("/jobs/{id}/callback")))
            .bearer_auth(&token)
            .json(&json!({"status": "succeeded"}))
            .send()
    };
    assert!(
        eventually(Duration::from_secs(5), || async {
            matches!(callback().await, Ok(r) if r.status() == 200)
        })
        .await,
        "the callback does not get through"
    );
    assert!(started.elapsed() < Duration::from_secs(6), "{:?}", started.elapsed());
    drop(blockers);
}

#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed_after_the_header_read_timeout() {
    let app = app().config(|c| c.header_read_timeout_secs = 1).spawn().await;
    let mut s = TcpStream::connect(app.addr).await.unwrap();
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
    let started = Instant::now();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    // Read the answer, then keep reading: the server must close the idle
    // connection (read returns 0) instead of holding it open.
    let closed = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "an idle keep-alive connection was left open");
    assert!(String::from_utf8_lossy(&got).starts_with("HTTP/1.1 200"));
    assert!(started.elapsed() < Duration::from_secs(3), "{:?}", started.elapsed());
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
    let metrics = scrape_metrics(&app).await;
    assert!(metrics.contains_key("sluicegate_http_requests_shed_total"));
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
