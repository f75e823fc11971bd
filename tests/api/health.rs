use std::time::Duration;

use serde_json::Value;

use crate::helpers::*;

#[tokio::test]
async fn liveness_and_readiness_are_open() {
    let app = app().spawn().await;
    let r = app.http.get(app.url("/healthz")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let r = app.http.get(app.url("/readyz")).send().await.unwrap();
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn readiness_names_sqs_when_it_is_down() {
    let proxy = Proxy::start(addr_of(&sqs_endpoint())).await;
    let app = app().app_sqs_endpoint(format!("http://{}", proxy.addr)).spawn().await;
    assert_eq!(app.http.get(app.url("/readyz")).send().await.unwrap().status(), 200);
    proxy.set_down(true).await;
    let body = assert_problem(app.http.get(app.url("/readyz")).send().await.unwrap(), 503).await;
    let detail = body["detail"].as_str().unwrap();
    assert!(detail.contains("sqs") && !detail.contains("postgres"), "{detail}");
    proxy.set_down(false).await;
    assert!(
        eventually(Duration::from_secs(10), || async {
            app.http.get(app.url("/readyz")).send().await.unwrap().status() == 200
        })
        .await
    );
}

#[tokio::test]
async fn readiness_names_postgres_when_it_is_down() {
    let proxy = Proxy::start(postgres_addr()).await;
    let app = app().db_port(proxy.addr.port()).spawn().await;
    assert_eq!(app.http.get(app.url("/readyz")).send().await.unwrap().status(), 200);
    proxy.set_down(true).await;
    let body: Value = assert_problem(app.http.get(app.url("/readyz")).send().await.unwrap(), 503).await;
    let detail = body["detail"].as_str().unwrap();
    assert!(detail.contains("postgres") && !detail.contains("sqs"), "{detail}");
    // Liveness does not depend on Postgres.
    assert_eq!(app.http.get(app.url("/healthz")).send().await.unwrap().status(), 200);
    proxy.set_down(false).await;
    assert!(
        eventually(Duration::from_secs(10), || async {
            app.http.get(app.url("/readyz")).send().await.unwrap().status() == 200
        })
        .await
    );
}

/// While Postgres is down, a request that needs it is answered 503 with
/// `Retry-After` at once (the watcher, `pg_watch`), not after the pool's 5 s
/// acquire timeout; once Postgres is back, requests are served again.
#[tokio::test]
async fn requests_fail_fast_while_postgres_is_down() {
    let proxy = Proxy::start(postgres_addr()).await;
    let app = app().db_port(proxy.addr.port()).spawn().await;
    let stats = || app.http.get(app.url("/stats")).bearer_auth(API_TOKEN).send();
    assert_eq!(stats().await.unwrap().status(), 200);
    proxy.set_down(true).await;
    assert!(
        eventually(Duration::from_secs(5), || async { app.state.postgres.is_down() }).await,
        "the watcher did not find Postgres down"
    );
    let started = std::time::Instant::now();
    let r = stats().await.unwrap();
    let took = started.elapsed();
    assert_eq!(r.headers()["retry-after"], "1");
    let body = assert_problem(r, 503).await;
    assert!(body["detail"].as_str().unwrap().contains("Postgres"), "{body}");
    assert!(took < Duration::from_secs(1), "answered after {took:?}");
    // Liveness and the open documents do not need Postgres.
    assert_eq!(app.http.get(app.url("/healthz")).send().await.unwrap().status(), 200);
    assert_eq!(
        app.http.get(app.url("/openapi.json")).send().await.unwrap().status(),
        200
    );
    proxy.set_down(false).await;
    assert!(
        eventually(Duration::from_secs(5), || async {
            stats().await.unwrap().status() == 200
        })
        .await,
        "not served again after Postgres came back"
    );
}
