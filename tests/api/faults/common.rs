//! Small helpers shared by the fault tests (kept out of helpers.rs, which is
//! moving into a shared test kit).
#![allow(dead_code)]

use std::{
    io::{BufRead, BufReader},
    process::{Child, Command, Stdio},
    sync::mpsc::Receiver,
    time::{Duration, Instant},
};

use aws_sdk_sqs::types::QueueAttributeName;
use serde_json::Value;

use crate::helpers::*;

/// Messages in the queue, visible or not (both emulators count exactly): a
/// message hidden for a minute still shows here. SQS and moto count hidden
/// messages only in `ApproximateNumberOfMessagesNotVisible`; local-aws-sqs
/// counts them in `ApproximateNumberOfMessages` too (scripts/test runs it at
/// `SLUICEGATE_TEST_FAST_SQS_ENDPOINT`).
pub async fn messages_in_queue(app: &TestApp) -> i64 {
    let local = std::env::var("SLUICEGATE_TEST_FAST_SQS_ENDPOINT").is_ok_and(|fast| fast == app.sqs_endpoint);
    if local {
        queue_counts(app, &[QueueAttributeName::ApproximateNumberOfMessages]).await
    } else {
        queue_counts(
            app,
            &[
                QueueAttributeName::ApproximateNumberOfMessages,
                QueueAttributeName::ApproximateNumberOfMessagesNotVisible,
            ],
        )
        .await
    }
}

/// Messages received and neither deleted nor visible again.
pub async fn messages_in_flight(app: &TestApp) -> i64 {
    queue_counts(app, &[QueueAttributeName::ApproximateNumberOfMessagesNotVisible]).await
}

/// The sum of these counts of the queue's attributes.
async fn queue_counts(app: &TestApp, names: &[QueueAttributeName]) -> i64 {
    let out = app
        .sqs
        .get_queue_attributes()
        .queue_url(&app.queue_url)
        .set_attribute_names(Some(names.to_vec()))
        .send()
        .await
        .unwrap();
    let attrs = out.attributes().cloned().unwrap_or_default();
    names
        .iter()
        .map(|k| attrs.get(k).and_then(|v| v.parse::<i64>().ok()).unwrap_or(0))
        .sum()
}

/// The id of a submitted job.
pub fn id_of(job: &Value) -> String {
    job["id"].as_str().unwrap().to_owned()
}

/// The database's view of a job: status and attempt (the fencing number).
pub async fn row(app: &TestApp, id: &str) -> (String, i32) {
    sqlx::query_as("SELECT status::text, attempts FROM jobs WHERE id = $1::uuid")
        .bind(id)
        .fetch_one(&app.db)
        .await
        .unwrap()
}

/// Backends of this test's database waiting for a lock.
pub async fn lock_waiters(app: &TestApp) -> i64 {
    sqlx::query_scalar(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'",
    )
    .fetch_one(&app.db)
    .await
    .unwrap()
}

/// Polls until `f` holds, panicking with `what` after `timeout`.
pub async fn wait_for<F, Fut>(what: &str, timeout: Duration, f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    assert!(eventually(timeout, f).await, "timed out waiting for: {what}");
}

/// Receives and deletes every message (as SQS does after the retention
/// period).
pub async fn delete_all_messages(app: &TestApp) {
    loop {
        let out = app
            .sqs
            .receive_message()
            .queue_url(&app.queue_url)
            .max_number_of_messages(10)
            .visibility_timeout(30)
            .send()
            .await
            .unwrap();
        if out.messages().is_empty() {
            return;
        }
        for m in out.messages() {
            app.sqs
                .delete_message()
                .queue_url(&app.queue_url)
                .receipt_handle(m.receipt_handle().unwrap())
                .send()
                .await
                .unwrap();
        }
    }
}

/// The `sluicegate` binary of this build (with the crash points when the
/// tests run with `--features failpoints`).
pub const BIN: &str = env!("CARGO_BIN_EXE_sluicegate");

/// `sluicegate serve` with `args` after `serve`, and `env` for its whole
/// environment, and `PATH`: nothing of the tests' own environment reaches
/// it. A later entry of `env` wins over an earlier one of the same name.
pub fn serve_command(args: &[&str], env: &[(&str, String)]) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.arg("serve")
        .args(args)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default());
    for (name, value) in env {
        cmd.env(name, value);
    }
    cmd
}

/// A `sluicegate serve` started by [`start_serving`], listening.
pub struct Serving {
    pub child: Child,
    /// The address it listens on, as its log names it (`addr=`).
    pub addr: String,
    /// `http://` and [`Serving::addr`].
    pub base: String,
    /// Its log (stderr) up to the line naming its address, that one last.
    pub log: Vec<String>,
    /// The lines of its log after those, as they come; disconnected once it
    /// has exited and every line was received. Dropped, the log is still
    /// read (and dropped).
    pub later_log: Receiver<String>,
}

/// Starts `sluicegate serve` with `args` and `env` (see [`serve_command`]),
/// its stdout dropped, and reads its log (stderr) until a line names the
/// address it listens on (`addr=`); panics with the log if none does within
/// 30 s.
pub fn start_serving(args: &[&str], env: &[(&str, String)]) -> Serving {
    let mut child = serve_command(args, env)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let mut log = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    let addr = loop {
        let line = rx
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .unwrap_or_else(|_| panic!("the binary did not start: {log:?}"));
        log.push(line.clone());
        if let Some(rest) = line.split("addr=").nth(1) {
            break rest.split_whitespace().next().unwrap().to_owned();
        }
    };
    Serving {
        child,
        base: format!("http://{addr}"),
        addr,
        log,
        later_log: rx,
    }
}

/// Starts the binary on `app`'s database and queue (no migrations), its
/// callback URLs naming `app` (as behind a load balancer), with `env` on top
/// of those settings; returns it and its base URL once it listens. Its log
/// is read and dropped.
pub fn spawn_binary(app: &TestApp, downstream: &str, env: &[(&str, String)]) -> (Child, String) {
    let mut all = vec![
        ("DATABASE_URL", app.test_db.url.clone()),
        ("SQS_QUEUE_URL", app.queue_url.clone()),
        ("AWS_ENDPOINT_URL", app.sqs_endpoint.clone()),
        ("AWS_ACCESS_KEY_ID", "test".to_owned()),
        ("AWS_SECRET_ACCESS_KEY", "test".to_owned()),
        ("AWS_REGION", "us-east-1".to_owned()),
        ("DOWNSTREAM_URL", downstream.to_owned()),
        ("PUBLIC_BASE_URL", app.base.clone()),
        ("API_TOKENS", API_TOKEN.to_owned()),
        ("DRAIN_TOKEN", DRAIN_TOKEN.to_owned()),
        ("CALLBACK_SECRET", CALLBACK_SECRET.to_owned()),
        ("LISTEN_ADDR", "127.0.0.1:0".to_owned()),
    ];
    all.extend_from_slice(env);
    let serving = start_serving(&["--no-migrate"], &all);
    (serving.child, serving.base)
}
