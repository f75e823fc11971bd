//! The application state shared by handlers and background tasks.

use std::sync::Arc;

use metrics_exporter_prometheus::PrometheusHandle;
use sqlx::PgPool;
use tokio::sync::{Notify, Semaphore};
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use crate::{config::Config, downstream::Downstream, queue::Queue};

#[derive(Clone)]
pub struct AppState {
    pub config: Arc<Config>,
    pub db: PgPool,
    pub queue: Queue,
    pub downstream: Downstream,
    /// Submissions still in flight after their drain answered; graceful
    /// shutdown waits for them.
    pub tasks: TaskTracker,
    /// Wakes the refill task (coalesced: one permit at most).
    pub refill: Arc<Notify>,
    pub metrics: PrometheusHandle,
    /// Enqueue transactions in flight at once (each holds a Postgres
    /// connection while it sends to SQS; a slow SQS must not take the whole
    /// pool from callbacks and drains).
    pub enqueue_slots: Arc<Semaphore>,
    /// Single submissions waiting to share an enqueue (group commit).
    pub groups: Arc<crate::enqueue::Groups>,
    /// Whether drains with no free slot take messages into the window.
    pub intake: Arc<crate::drain::Intake>,
    /// Keys given gauges by the sampler (`metrics::sample`).
    pub keys_with_gauges: Arc<std::sync::Mutex<std::collections::BTreeSet<String>>>,
    /// The attempts of the callback tokens this replica issued lately (a
    /// hint that spares a callback one read).
    pub issued: Arc<crate::callback_token::Issued>,
    /// Whether Postgres is down (kept by `pg_watch`).
    pub postgres: crate::pg_watch::PgHealth,
    /// Cancelled when the process shuts down.
    pub shutdown: CancellationToken,
}
