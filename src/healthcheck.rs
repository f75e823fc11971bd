//! `sluicegate healthcheck`: a container health probe that needs no curl.
//! It GETs the liveness endpoint of the server in the same container and
//! succeeds only on 200, within a fixed deadline.

use std::{net::SocketAddr, time::Duration};

use anyhow::{Context, bail};

/// The whole probe (connect, request, answer) ends within this.
pub const DEADLINE: Duration = Duration::from_secs(3);

/// Default address when `LISTEN_ADDR` is unset (the same as `serve`'s).
const DEFAULT_LISTEN_ADDR: &str = "127.0.0.1:8080";

/// Probes `url`, or `/healthz` on the port of `LISTEN_ADDR` when none is
/// given. Ok only if the answer is 200 within [`DEADLINE`].
pub async fn run(url: Option<String>) -> anyhow::Result<()> {
    let url = match url {
        Some(url) => url,
        None => default_url(std::env::var("LISTEN_ADDR").ok().as_deref())?,
    };
    let client = reqwest::Client::builder()
        .timeout(DEADLINE)
        .connect_timeout(DEADLINE)
        .build()
        .context("healthcheck: building the HTTP client")?;
    let status = tokio::time::timeout(DEADLINE, client.get(&url).send())
        .await
        .with_context(|| format!("healthcheck: {url} did not answer within {}s", DEADLINE.as_secs()))?
        .context("healthcheck")?
        .status();
    if status != reqwest::StatusCode::OK {
        bail!("healthcheck: GET {url} answered {status}");
    }
    Ok(())
}

/// `http://127.0.0.1:<port>/healthz` for a server bound to all interfaces
/// (or with no `LISTEN_ADDR`); a server bound to one address is asked there.
pub fn default_url(listen_addr: Option<&str>) -> anyhow::Result<String> {
    let raw = listen_addr.unwrap_or(DEFAULT_LISTEN_ADDR);
    let addr: SocketAddr = raw
        .parse()
        .map_err(|_| anyhow::anyhow!("LISTEN_ADDR: not a socket address (expected host:port)"))?;
    let host = if addr.ip().is_unspecified() {
        "127.0.0.1".to_owned()
    } else if addr.is_ipv6() {
        format!("[{}]", addr.ip())
    } else {
        addr.ip().to_string()
    };
    Ok(format!("http://{host}:{}/healthz", addr.port()))
}

#[cfg(test)]
mod tests {
    use tokio::{
        io::{AsyncReadExt, AsyncWriteExt},
        net::TcpListener,
    };

    use super::*;

    #[test]
    fn the_default_url_follows_listen_addr() {
        let url = |a| default_url(a).unwrap();
        assert_eq!(url(None), "http://127.0.0.1:8080/healthz");
        assert_eq!(url(Some("0.0.0.0:8080")), "http://127.0.0.1:8080/healthz");
        assert_eq!(url(Some("[::]:9000")), "http://127.0.0.1:9000/healthz");
        assert_eq!(url(Some("10.0.0.7:81")), "http://10.0.0.7:81/healthz");
        assert_eq!(url(Some("[::1]:81")), "http://[::1]:81/healthz");
        assert!(default_url(Some("localhost")).is_err());
    }

    /// A one-connection server answering `status_line`, or never answering.
    async fn server(status_line: Option<&'static str>) -> String {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut conn, _) = listener.accept().await.unwrap();
            let mut buf = [0u8; 1024];
            let _ = conn.read(&mut buf).await;
            match status_line {
                Some(line) => {
                    let response = format!("HTTP/1.1 {line}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
                    let _ = conn.write_all(response.as_bytes()).await;
                }
                None => tokio::time::sleep(Duration::from_secs(30)).await,
            }
        });
        format!("http://{addr}/healthz")
    }

    #[tokio::test]
    async fn succeeds_on_200_only() {
        assert!(run(Some(server(Some("200 OK")).await)).await.is_ok());
        assert!(run(Some(server(Some("503 Service Unavailable")).await)).await.is_err());
        assert!(run(Some(server(Some("204 No Content")).await)).await.is_err());
    }

    #[tokio::test]
    async fn fails_when_nothing_listens() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        drop(listener);
        assert!(run(Some(format!("http://127.0.0.1:{port}/healthz"))).await.is_err());
    }

    #[tokio::test]
    async fn gives_up_on_a_silent_server_within_the_deadline() {
        let started = std::time::Instant::now();
        assert!(run(Some(server(None).await)).await.is_err());
        assert!(started.elapsed() < DEADLINE + Duration::from_millis(500));
    }
}
