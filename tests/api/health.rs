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
