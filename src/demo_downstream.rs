//! A demo downstream for trying sluicegate out: it accepts submissions up to
//! its own capacity (503 + Retry-After beyond it), works on each job for a
//! random time, sends heartbeats for long jobs, and calls back `succeeded`
//! or, now and then, `failed`. `GET /` shows what it is doing (jobs held
//! against its capacity, accepted and finished since it started).
//! The server is `crate::fake_downstream`, configured here.

use std::{net::SocketAddr, time::Duration};

use axum::{Json, Router, extract::State};
use rand::Rng;
use serde_json::json;

use crate::fake_downstream::{FakeDownstream, Work};

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
    fake: FakeDownstream,
}

/// Up to `capacity` jobs at once (503 + `Retry-After: 1` beyond), each
/// working a random time with a heartbeat every 5 s (keeping a long job's
/// lease alive), then one callback: `failed` at `failure_rate`.
fn fake_downstream(args: &DemoArgs) -> FakeDownstream {
    let failure_rate = args.failure_rate.clamp(0.0, 1.0);
    FakeDownstream::builder()
        .capacity(args.capacity)
        .work(Work::UniformMs(args.min_ms, args.max_ms))
        .heartbeat_every(Duration::from_secs(5))
        .outcome(move |_, worked| {
            if rand::rng().random_bool(failure_rate) {
                json!({"status": "failed", "error": "demo: simulated failure"})
            } else {
                json!({"status": "succeeded", "result": {"worked_ms": worked.as_millis() as u64}})
            }
        })
        .callback_attempts(1)
        .record(false)
        .build()
}

pub async fn run(args: DemoArgs) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(args.listen).await?;
    tracing::info!(addr = %listener.local_addr()?, capacity = args.capacity, "demo downstream listening");
    let demo = Demo {
        fake: fake_downstream(&args),
        args,
    };
    let app = Router::new()
        .route("/", demo.fake.handler().get(status))
        .with_state(demo);
    axum::serve(listener, app).await?;
    Ok(())
}

/// What it is doing: the jobs it holds against its capacity, and how many it
/// accepted and finished since it started.
async fn status(State(demo): State<Demo>) -> Json<serde_json::Value> {
    let c = demo.fake.counters();
    Json(json!({
        "held": c.held(),
        "capacity": demo.args.capacity,
        "max_held": c.max_held(),
        "accepted": c.accepted(),
        "finished": c.completed(),
        "callback_errors": c.callback_errors(),
        "job_ms": [demo.args.min_ms, demo.args.max_ms.max(demo.args.min_ms)],
        "failure_rate": demo.args.failure_rate,
    }))
}
