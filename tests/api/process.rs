//! The `sluicegate` binary as an operator runs it: configuration errors,
//! weak secrets, serving, secrets kept out of logs, graceful exit on SIGTERM.

use std::{process::Command, time::Duration};

use serde_json::json;

use crate::{
    faults::common::{BIN, Serving, serve_command, start_serving},
    helpers::*,
};

/// The settings of `sluicegate serve` on `db` and `queue`, with secrets
/// that the logs must never show.
fn base_env(db: &str, queue: &str) -> Vec<(&'static str, String)> {
    vec![
        ("DATABASE_URL", db.to_owned()),
        ("SQS_QUEUE_URL", queue.to_owned()),
        ("AWS_ENDPOINT_URL", sqs_endpoint()),
        ("AWS_ACCESS_KEY_ID", "test".to_owned()),
        ("AWS_SECRET_ACCESS_KEY", "test-secret-key-never-logged".to_owned()),
        ("AWS_SESSION_TOKEN", "test-session-token-never-logged".to_owned()),
        ("AWS_REGION", "us-east-1".to_owned()),
        ("DOWNSTREAM_URL", "http://127.0.0.1:9/".to_owned()),
        ("API_TOKENS", API_TOKEN.to_owned()),
        ("DRAIN_TOKEN", DRAIN_TOKEN.to_owned()),
        ("CALLBACK_SECRET", CALLBACK_SECRET.to_owned()),
        ("LISTEN_ADDR", "127.0.0.1:0".to_owned()),
    ]
}

#[test]
fn a_configuration_error_is_one_line_naming_the_variable() {
    let out = Command::new(BIN).arg("serve").env_clear().output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8(out.stderr).unwrap();
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert!(err.contains("DATABASE_URL"), "{err}");

    let mut env = base_env("postgres://x@127.0.0.1:1/db", "http://q");
    env.push(("MAX_CONCURRENCY", "many".to_owned()));
    let out = serve_command(&[], &env).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8(out.stderr).unwrap();
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert!(err.contains("MAX_CONCURRENCY"), "{err}");
}

#[test]
fn weak_secrets_are_refused_unless_explicitly_allowed() {
    let mut env = base_env("postgres://x@127.0.0.1:1/db", "http://q");
    env.push(("CALLBACK_SECRET", "hunter2".to_owned()));
    let out = serve_command(&[], &env).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(err.contains("CALLBACK_SECRET") && !err.contains("hunter2"), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
}

#[tokio::test]
async fn serve_keeps_secrets_out_of_logs_and_exits_cleanly_on_sigterm() {
    let db = TestDb::create().await;
    let sqs = sqs_client(&sqs_endpoint());
    let queue = create_queue(&sqs).await;
    let mut env = base_env(&db.url, &queue);
    env.extend([
        ("RUST_LOG", "trace".to_owned()),
        ("SLUICEGATE_ALLOW_WEAK_SECRETS", "true".to_owned()),
        ("API_TOKENS", format!("{API_TOKEN},weak")),
    ]);
    let Serving {
        mut child,
        base,
        mut log,
        later_log,
        ..
    } = start_serving(&[], &env);
    assert!(
        log.iter().any(|l| l.contains("WARN") && l.contains("API_TOKENS")),
        "weak secret warning: {log:?}"
    );
    let http = reqwest::Client::new();
    let r = http
        .post(format!("{base}/jobs"))
        .bearer_auth(API_TOKEN)
        .json(&json!({"payload": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let id = r.json::<serde_json::Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let r = http
        .get(format!("{base}/jobs/{id}"))
        .bearer_auth("wrong-token-that-must-not-be-logged")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let r = http
        .post(format!("{base}/jobs/{id}/callback"))
        .bearer_auth("callback-guess-not-logged")
        .json(&json!({"status": "succeeded"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(
        http.post(format!("{base}/drain"))
            .bearer_auth(DRAIN_TOKEN)
            .send()
            .await
            .unwrap()
            .status(),
        200
    );

    // SIGTERM: graceful exit with status 0.
    let status = Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status()
        .unwrap();
    assert!(status.success());
    let exit = tokio::task::spawn_blocking(move || child.wait().unwrap())
        .await
        .unwrap();
    assert!(exit.success(), "exit status {exit:?}");
    while let Ok(line) = later_log.recv_timeout(Duration::from_secs(2)) {
        log.push(line);
    }
    let all = log.join("\n");
    assert!(all.contains("shutting down"), "{all}");
    // The AWS SDK did log (its DEBUG output is kept), and signed with the
    // session token; only its TRACE output, which prints it, is capped.
    assert!(
        all.lines().any(|l| l.contains("DEBUG") && l.contains(" aws_")),
        "no DEBUG output of the AWS SDK"
    );
    let password_free_url = db.url.clone();
    for secret in [
        API_TOKEN,
        DRAIN_TOKEN,
        CALLBACK_SECRET,
        "wrong-token-that-must-not-be-logged",
        "callback-guess-not-logged",
        "test-secret-key-never-logged",
        "test-session-token-never-logged",
        password_free_url.as_str(),
    ] {
        assert!(!all.contains(secret), "a secret appears in the logs: {secret}");
    }
}

/// The resident memory of a process, in KiB.
fn vm_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[tokio::test]
async fn clients_that_never_read_do_not_grow_memory_or_lock_others_out() {
    let db = TestDb::create().await;
    let sqs = sqs_client(&sqs_endpoint());
    let queue = create_queue(&sqs).await;
    let env = base_env(&db.url, &queue);
    let Serving {
        mut child, addr, base, ..
    } = tokio::task::spawn_blocking(move || start_serving(&[], &env))
        .await
        .unwrap();
    let addr: std::net::SocketAddr = addr.parse().unwrap();
    let http = reqwest::Client::new();
    // Every asset once, so what is loaded once is in the baseline.
    for asset in [
        "swagger-ui.css",
        "swagger-ui-bundle.js",
        "swagger-ui-standalone-preset.js",
        "favicon-32x32.png",
    ] {
        let r = http.get(format!("{base}/docs/{asset}")).send().await.unwrap();
        assert_eq!(r.status(), 200);
        r.bytes().await.unwrap();
    }
    let before = vm_rss_kib(child.id());

    // 100 clients pipeline 20 requests for the 1.4 MB bundle each and never
    // read; then each tries to pipeline 850 KiB more requests, which the
    // server must not take in (it reads at most 64 KiB ahead).
    let mut sockets = Vec::new();
    for _ in 0..100 {
        sockets.push(crate::security::non_reader(addr, 20).await);
    }
    let more = "GET /docs/swagger-ui-bundle.js HTTP/1.1\r\nHost: x\r\n\r\n".repeat(16_384);
    futures::future::join_all(sockets.iter_mut().map(|s| {
        tokio::time::timeout(
            Duration::from_secs(2),
            tokio::io::AsyncWriteExt::write_all(s, more.as_bytes()),
        )
    }))
    .await;
    // Until the server has taken in what it will (the memory stops growing).
    let mut after = vm_rss_kib(child.id());
    for _ in 0..30 {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let now = vm_rss_kib(child.id());
        if now < after + 1024 {
            after = after.max(now);
            break;
        }
        after = now;
    }

    // Others are still answered.
    let r = http.get(format!("{base}/healthz")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let r = http
        .get(format!("{base}/docs/swagger-ui-bundle.js"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.bytes().await.unwrap().len() > 1_000_000);
    drop(sockets);
    child.kill().unwrap();
    child.wait().unwrap();
    let grown = after.saturating_sub(before) / 1024;
    assert!(
        grown < 40,
        "100 non-reading clients grew the resident memory by {grown} MiB ({before} KiB -> {after} KiB)"
    );
}

#[tokio::test]
async fn migrate_applies_the_schema_and_exits() {
    let db = TestDb::create().await;
    let out = Command::new(BIN)
        .arg("migrate")
        .env_clear()
        .env("DATABASE_URL", &db.url)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let pool = sqlx::PgPool::connect(&db.url).await.unwrap();
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM _sqlx_migrations")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert!(n >= 1);
    pool.close().await;
}
