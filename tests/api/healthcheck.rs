//! `sluicegate healthcheck`, the image's HEALTHCHECK: exit 0 on 200 from
//! `/healthz` on the port of LISTEN_ADDR (or `--url`), 1 otherwise.

use std::process::Command;

use axum::{Router, http::StatusCode, routing::get};

const BIN: &str = env!("CARGO_BIN_EXE_sluicegate");

/// A server answering `status` on /healthz; returns its port.
async fn serve(status: StatusCode) -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let app = Router::new().route("/healthz", get(move || async move { status }));
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    port
}

async fn healthcheck(listen_addr: &str, args: &[&str]) -> Option<i32> {
    let mut cmd = Command::new(BIN);
    cmd.arg("healthcheck")
        .args(args)
        .env_clear()
        .env("LISTEN_ADDR", listen_addr);
    tokio::task::spawn_blocking(move || cmd.output().unwrap().status.code())
        .await
        .unwrap()
}

#[tokio::test]
async fn exits_0_when_healthz_answers_200_on_the_port_of_listen_addr() {
    let port = serve(StatusCode::OK).await;
    assert_eq!(healthcheck(&format!("0.0.0.0:{port}"), &[]).await, Some(0));
}

#[tokio::test]
async fn exits_1_on_another_status_or_nothing_listening() {
    let port = serve(StatusCode::SERVICE_UNAVAILABLE).await;
    assert_eq!(healthcheck(&format!("0.0.0.0:{port}"), &[]).await, Some(1));
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    assert_eq!(healthcheck(&format!("0.0.0.0:{closed}"), &[]).await, Some(1));
}

#[tokio::test]
async fn url_overrides_listen_addr() {
    let port = serve(StatusCode::OK).await;
    let url = format!("http://127.0.0.1:{port}/healthz");
    assert_eq!(healthcheck("0.0.0.0:1", &["--url", &url]).await, Some(0));
}
