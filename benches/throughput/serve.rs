//! A release binary (this one, or a baseline's) serving as a subprocess: a
//! fresh database and queue, the benchmark's settings in its environment,
//! started, waited for and stopped gracefully. Scenarios d and g run on it.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use sluicegate_testkit::{API_TOKEN, CALLBACK_SECRET, DRAIN_TOKEN, TestDb, create_queue, sqs_client};

use crate::Infra;

/// Kills the subprocess if the bench unwinds before stopping it.
struct ChildGuard(Option<Child>);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// A field of `/proc/<pid>/status`, in KiB.
pub fn proc_status_kib(pid: u32, field: &str) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse::<f64>().ok())
        })
        .unwrap_or(f64::NAN)
}

/// `sluicegate serve` running as a subprocess.
pub struct Served {
    pub pid: u32,
    /// `http://127.0.0.1:<port>`.
    pub base: String,
    pub db_url: String,
    guard: ChildGuard,
    log_path: PathBuf,
    db: TestDb,
    sqs: aws_sdk_sqs::Client,
    queue_url: String,
}

/// Starts `bin serve` against a fresh database and queue and `downstream`,
/// with the tokens of the test kit, `RUST_LOG=warn` and `env` (everything
/// else default), and waits until `/healthz` answers.
pub async fn serve(infra: &Infra, bin: &Path, downstream: &str, env: &[(&str, String)], tag: &str) -> Served {
    let db = TestDb::create().await;
    let db_url = db.url.clone();
    let sqs = sqs_client(&infra.sqs_endpoint);
    let queue_url = create_queue(&sqs).await;
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let log_path = std::env::temp_dir().join(format!("sluicegate-bench-serve-{}-{tag}.log", std::process::id()));
    let log = std::fs::File::create(&log_path).expect("a log file");
    let mut cmd = Command::new(bin);
    cmd.arg("serve")
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("HOME", std::env::var("HOME").unwrap_or_else(|_| "/tmp".into()))
        .env("DATABASE_URL", &db_url)
        .env("SQS_QUEUE_URL", &queue_url)
        .env("AWS_ENDPOINT_URL", &infra.sqs_endpoint)
        .env("AWS_REGION", "us-east-1")
        .env("AWS_ACCESS_KEY_ID", "test")
        .env("AWS_SECRET_ACCESS_KEY", "test")
        .env("DOWNSTREAM_URL", downstream)
        .env("LISTEN_ADDR", format!("127.0.0.1:{port}"))
        .env("API_TOKENS", API_TOKEN)
        .env("DRAIN_TOKEN", DRAIN_TOKEN)
        .env("CALLBACK_SECRET", CALLBACK_SECRET)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("log"))
        .stderr(log);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut guard = ChildGuard(Some(cmd.spawn().expect("start the release binary")));
    let pid = guard.0.as_ref().expect("child").id();
    let up = Instant::now();
    loop {
        if let Ok(r) = infra.http.get(format!("{base}/healthz")).send().await
            && r.status().is_success()
        {
            break;
        }
        if let Some(status) = guard.0.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
            let log = std::fs::read_to_string(&log_path).unwrap_or_default();
            panic!("{} serve exited with {status}:\n{log}", bin.display());
        }
        assert!(
            up.elapsed() < Duration::from_secs(60),
            "{} serve did not come up",
            bin.display()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Served {
        pid,
        base,
        db_url,
        guard,
        log_path,
        db,
        sqs,
        queue_url,
    }
}

impl Served {
    /// A graceful stop (SIGTERM), as in production; then the database and
    /// the queue go.
    pub async fn stop(mut self) {
        let _ = Command::new("kill").args(["-TERM", &self.pid.to_string()]).status();
        let stopped = Instant::now();
        if let Some(c) = self.guard.0.as_mut() {
            while stopped.elapsed() < Duration::from_secs(20) {
                if c.try_wait().ok().flatten().is_some() {
                    self.guard.0 = None;
                    break;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        drop(self.guard);
        let _ = std::fs::remove_file(&self.log_path);
        let _ = self.sqs.delete_queue().queue_url(&self.queue_url).send().await;
        let db = self.db;
        let _ = tokio::task::spawn_blocking(move || drop(db)).await;
    }
}
