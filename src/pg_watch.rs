//! Whether Postgres is reachable, known without waiting for the pool.
//!
//! While Postgres is down, the pool keeps retrying refused connections until
//! its `acquire_timeout` (5 s): every request would hang that long. A
//! watcher keeps one connection of its own, outside the pool, and checks it
//! every [`PERIOD`]. When the check fails and a fresh connection cannot be
//! made either, Postgres is *down*: requests that need it answer 503 with
//! `Retry-After` at once, and those already waiting are answered too
//! (`http::middleware::fail_fast_without_postgres`). The first check that
//! connects again ends it. See docs/reliability.md, finding 1.

use std::{sync::Arc, time::Duration};

use sqlx::{Connection, PgConnection, postgres::PgConnectOptions};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// How often the watcher checks Postgres, whether it is up or down.
pub const PERIOD: Duration = Duration::from_millis(250);
/// How long one check (a connect, or a `SELECT 1` on the kept connection)
/// may take before it counts as failed. Long enough that a busy Postgres is
/// not taken for a dead one; a refused connection fails at once anyway.
pub const CHECK_TIMEOUT: Duration = Duration::from_secs(2);

/// Shared between the watcher and the request middleware: `true` while
/// Postgres is down.
#[derive(Clone)]
pub struct PgHealth {
    down: Arc<watch::Sender<bool>>,
}

impl Default for PgHealth {
    fn default() -> Self {
        Self {
            down: Arc::new(watch::Sender::new(false)),
        }
    }
}

impl PgHealth {
    pub fn is_down(&self) -> bool {
        *self.down.borrow()
    }

    /// Resolves once Postgres is found down (at once if it is).
    pub async fn gone_down(&self) {
        let mut rx = self.down.subscribe();
        // The sender lives as long as `self`: the wait cannot end with an error.
        let _ = rx.wait_for(|down| *down).await;
    }

    fn set(&self, down: bool) {
        let changed = self.down.send_if_modified(|d| std::mem::replace(d, down) != down);
        if changed {
            metrics::gauge!(crate::metrics::POSTGRES_UP).set(if down { 0.0 } else { 1.0 });
            if down {
                tracing::warn!("Postgres is unreachable: requests that need it answer 503 until it is back");
            } else {
                tracing::info!("Postgres is reachable again");
            }
        }
    }
}

/// Checks Postgres every [`PERIOD`] until `shutdown`, and records the result
/// in `health`.
pub async fn watch(options: PgConnectOptions, health: PgHealth, shutdown: CancellationToken) {
    metrics::gauge!(crate::metrics::POSTGRES_UP).set(1.0);
    let mut conn: Option<PgConnection> = None;
    let mut tick = tokio::time::interval(PERIOD);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tick.tick() => {}
        }
        let up = check(&options, &mut conn).await;
        health.set(!up);
    }
    if let Some(c) = conn {
        let _ = c.close().await;
    }
}

/// Pings the kept connection; if that fails (or there is none), connects
/// afresh. Postgres is up if either works.
async fn check(options: &PgConnectOptions, conn: &mut Option<PgConnection>) -> bool {
    if let Some(c) = conn.as_mut() {
        if matches!(tokio::time::timeout(CHECK_TIMEOUT, c.ping()).await, Ok(Ok(()))) {
            return true;
        }
        // Broken (a restart ends every session) or hung: drop it.
        *conn = None;
    }
    match tokio::time::timeout(CHECK_TIMEOUT, PgConnection::connect_with(options)).await {
        Ok(Ok(c)) => {
            *conn = Some(c);
            true
        }
        _ => false,
    }
}
