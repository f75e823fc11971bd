//! A demo downstream for trying sluicegate out: it accepts submissions up to
//! its own capacity (503 + Retry-After beyond it), works on each job for a
//! random time, sends heartbeats for long jobs, and calls back `succeeded`
//! or, now and then, `failed`. `GET /` shows what it is doing: the jobs it
//! holds against its capacity, and how many it accepted, refused as full,
//! and finished (succeeded or failed) since it started.

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
    time::Duration,
};

use axum::{
    Json, Router,
    extract::State,
    http::{StatusCode, header},
    response::{IntoResponse, Response},
    routing::post,
};
use rand::Rng;
use serde::Deserialize;
use serde_json::json;

#[derive(clap::Args, Debug, Clone)]
pub struct DemoArgs {
    /// Address to listen on.
    #[arg(long, env = "DEMO_LISTEN_ADDR", default_value = "127.0.0.1:9000")]
    pub listen: SocketAddr,
    /// Jobs it can hold at once; more get 503.
    #[arg(long, env = "DEMO_CAPACITY", default_value_t = 5)]
    pub capacity: usize,
    /// Shortest time a job takes, in milliseconds.
    #[arg(long, env = "DEMO_MIN_MS", default_value_t = 1000)]
    pub min_ms: u64,
    /// Longest time a job takes, in milliseconds.
    #[arg(long, env = "DEMO_MAX_MS", default_value_t = 8000)]
    pub max_ms: u64,
    /// Share of jobs that end `failed` (0.0 to 1.0).
    #[arg(long, env = "DEMO_FAILURE_RATE", default_value_t = 0.1)]
    pub failure_rate: f64,
}

#[derive(Clone)]
struct Demo {
    args: DemoArgs,
    held: Arc<AtomicUsize>,
    counts: Arc<Counts>,
    http: reqwest::Client,
}

/// Totals since start, for `GET /`.
#[derive(Default)]
struct Counts {
    accepted: AtomicU64,
    refused_full: AtomicU64,
    succeeded: AtomicU64,
    failed: AtomicU64,
}

#[derive(Deserialize)]
struct Submission {
    job_id: String,
    attempt: i64,
    callback_url: String,
    heartbeat_url: String,
    callback_token: String,
}

pub async fn run(args: DemoArgs) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(args.listen).await?;
    tracing::info!(addr = %listener.local_addr()?, capacity = args.capacity, "demo downstream listening");
    let demo = Demo {
        args,
        held: Arc::new(AtomicUsize::new(0)),
        counts: Arc::new(Counts::default()),
        http: reqwest::Client::new(),
    };
    let app = Router::new().route("/", post(submit).get(status)).with_state(demo);
    axum::serve(listener, app).await?;
    Ok(())
}

async fn status(State(demo): State<Demo>) -> Json<serde_json::Value> {
    let c = &demo.counts;
    Json(json!({
        "held": demo.held.load(Ordering::SeqCst),
        "capacity": demo.args.capacity,
        "accepted": c.accepted.load(Ordering::SeqCst),
        "refused_full": c.refused_full.load(Ordering::SeqCst),
        "succeeded": c.succeeded.load(Ordering::SeqCst),
        "failed": c.failed.load(Ordering::SeqCst),
        "job_ms": [demo.args.min_ms, demo.args.max_ms.max(demo.args.min_ms)],
        "failure_rate": demo.args.failure_rate,
    }))
}

async fn submit(State(demo): State<Demo>, Json(s): Json<Submission>) -> Response {
    let held = demo.held.fetch_add(1, Ordering::SeqCst);
    if held >= demo.args.capacity {
        demo.held.fetch_sub(1, Ordering::SeqCst);
        demo.counts.refused_full.fetch_add(1, Ordering::SeqCst);
        tracing::info!(job_id = %s.job_id, "full: 503");
        return (StatusCode::SERVICE_UNAVAILABLE, [(header::RETRY_AFTER, "1")], "full").into_response();
    }
    demo.counts.accepted.fetch_add(1, Ordering::SeqCst);
    tracing::info!(job_id = %s.job_id, attempt = s.attempt, held = held + 1, "accepted");
    tokio::spawn(work(demo, s));
    (StatusCode::ACCEPTED, Json(json!({"accepted": true}))).into_response()
}

async fn work(demo: Demo, s: Submission) {
    let (ms, fail) = {
        let mut rng = rand::rng();
        let hi = demo.args.max_ms.max(demo.args.min_ms);
        (
            rng.random_range(demo.args.min_ms..=hi),
            rng.random_bool(demo.args.failure_rate.clamp(0.0, 1.0)),
        )
    };
    let mut left = Duration::from_millis(ms);
    // A heartbeat every 5 s keeps a long job's lease alive.
    while left > Duration::from_secs(5) {
        tokio::time::sleep(Duration::from_secs(5)).await;
        left -= Duration::from_secs(5);
        let _ = demo
            .http
            .post(&s.heartbeat_url)
            .bearer_auth(&s.callback_token)
            .send()
            .await;
    }
    tokio::time::sleep(left).await;
    let body = if fail {
        json!({"status": "failed", "error": "demo: simulated failure"})
    } else {
        json!({"status": "succeeded", "result": {"worked_ms": ms}})
    };
    demo.held.fetch_sub(1, Ordering::SeqCst);
    let done = if fail {
        &demo.counts.failed
    } else {
        &demo.counts.succeeded
    };
    done.fetch_add(1, Ordering::SeqCst);
    match demo
        .http
        .post(&s.callback_url)
        .bearer_auth(&s.callback_token)
        .json(&body)
        .send()
        .await
    {
        Ok(r) => tracing::info!(job_id = %s.job_id, status = %r.status(), "called back"),
        Err(e) => tracing::warn!(job_id = %s.job_id, error = %e, "callback failed"),
    }
}
