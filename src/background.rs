//! The background loops of a serving replica: the Postgres watcher, drains
//! on refill and on the optional ticker, the lease sweeper, the requeue sweeper, and the gauge
//! sampler (with count compaction). All stop on `state.shutdown`; the
//! application waits for them at shutdown.

use std::time::Duration;

use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::{state::AppState, store};

/// How often long-queued jobs are looked for (their messages renewed).
const REQUEUE_SWEEP: Duration = Duration::from_secs(60);
/// How often the gauges are refreshed and the count deltas folded.
const SAMPLE_INTERVAL: Duration = Duration::from_secs(10);
/// How often finished jobs past `JOB_RETENTION_SECS` are pruned.
const PRUNE_INTERVAL: Duration = Duration::from_secs(60);
/// Jobs deleted per transaction by the pruner (short locks).
pub const PRUNE_BATCH: i64 = 500;
/// Pause after a background drain failed (Postgres or SQS down).
const DRAIN_RETRY_PAUSE: Duration = Duration::from_secs(1);

/// The background loops: refill/ticker drains, the lease sweeper, the
/// window's visibility extension, the requeue sweeper, the gauge sampler
/// with count compaction, and the retention pruner. All stop on `state.shutdown`.
pub fn spawn(state: &AppState) -> TaskTracker {
    let tracker = TaskTracker::new();
    tracker.spawn(crate::pg_watch::watch(
        (*state.db.connect_options()).clone(),
        state.postgres.clone(),
        state.shutdown.clone(),
    ));
    let s = state.clone();
    tracker.spawn(async move { refill_loop(s).await });
    let s = state.clone();
    tracker.spawn(async move { lease_loop(s).await });
    let s = state.clone();
    tracker.spawn(async move { sample_loop(s).await });
    let s = state.clone();
    tracker.spawn(async move { requeue_loop(s).await });
    let s = state.clone();
    tracker.spawn(async move { extend_loop(s).await });
    if state.config.job_retention_secs > 0 {
        let s = state.clone();
        tracker.spawn(async move { prune_loop(s).await });
    }
    tracker
}

/// Drains when woken by a callback or a limit change (coalesced: wake-ups
/// during a drain collapse into one more drain) and, if configured, on the
/// `DRAIN_INTERVAL_SECS` ticker.
async fn refill_loop(state: AppState) {
    let mut ticker = state.config.drain_interval_secs.map(|s| {
        let mut t = tokio::time::interval(Duration::from_secs(s));
        t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        t
    });
    loop {
        let tick = async {
            match ticker.as_mut() {
                Some(t) => {
                    t.tick().await;
                }
                None => std::future::pending().await,
            }
        };
        let ticked = tokio::select! {
            _ = state.shutdown.cancelled() => return,
            _ = state.refill.notified() => false,
            _ = tick => true,
        };
        let span = tracing::info_span!("background", trigger = if ticked { "ticker" } else { "refill" });
        match crate::drain::refill(&state).instrument(span).await {
            Ok(r) => tracing::debug!(dispatched = r.dispatched, stop_reason = ?r.stop_reason, "background drain"),
            Err(e) => {
                tracing::warn!(error = %e, "background drain failed");
                tokio::time::sleep(DRAIN_RETRY_PAUSE).await;
            }
        }
    }
}

async fn lease_loop(state: AppState) {
    let mut t = tokio::time::interval(Duration::from_secs(state.config.lease_sweep_interval_secs));
    loop {
        tokio::select! {
            _ = state.shutdown.cancelled() => return,
            _ = t.tick() => {}
        }
        match crate::drain::reclaim(&state).await {
            Ok(0) => {}
            Ok(_) if state.config.refill_on_callback => state.refill.notify_one(),
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "lease sweep failed"),
        }
    }
}

/// Keeps the messages of jobs waiting in the intake window hidden: every
/// `drain::EXTEND_EVERY`, those about to run short are extended.
async fn extend_loop(state: AppState) {
    let mut t = tokio::time::interval(crate::drain::EXTEND_EVERY);
    t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = state.shutdown.cancelled() => return,
            _ = t.tick() => {}
        }
        if let Err(e) = crate::drain::extend_window(&state).await {
            tracing::warn!(error = %e, "extending the visibility of messages waiting in the window failed");
        }
    }
}

/// Renews the messages of jobs queued for longer than the queue keeps them.
async fn requeue_loop(state: AppState) {
    let mut older_than = state.config.requeue_after_secs.map(Duration::from_secs);
    let mut t = tokio::time::interval(REQUEUE_SWEEP);
    loop {
        tokio::select! {
            _ = state.shutdown.cancelled() => return,
            _ = t.tick() => {}
        }
        // Read from SQS until it answers (it may be down at start).
        let older_than = match older_than {
            Some(d) => d,
            None => match crate::requeue::default_requeue_after(&state.queue).await {
                Ok(d) => *older_than.insert(d),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot read the queue's retention period yet");
                    continue;
                }
            },
        };
        match crate::requeue::resend_stale(&state.db, &state.queue, older_than).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(resent = n, "renewed the SQS messages of long-queued jobs"),
            Err(e) => tracing::warn!(error = %e, "renewing old SQS messages failed"),
        }
    }
}

/// Refreshes the gauges and removes spent rows of the intake window, every
/// 10 s.
async fn sample_loop(state: AppState) {
    let mut t = tokio::time::interval(SAMPLE_INTERVAL);
    loop {
        tokio::select! {
            _ = state.shutdown.cancelled() => return,
            _ = t.tick() => {}
        }
        crate::metrics::sample(&state).await;
        if let Err(e) = store::prune_intake(&state.db).await {
            tracing::warn!(error = %e, "removing spent rows of the intake window failed");
        }
    }
}

/// Deletes finished jobs older than `JOB_RETENTION_SECS`, in small batches.
async fn prune_loop(state: AppState) {
    let mut t = tokio::time::interval(PRUNE_INTERVAL);
    loop {
        tokio::select! {
            _ = state.shutdown.cancelled() => return,
            _ = t.tick() => {}
        }
        match prune(&state).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(pruned = n, "deleted finished jobs past their retention"),
            Err(e) => tracing::warn!(error = %e, "pruning finished jobs failed"),
        }
    }
}

/// One pruning pass: batches until one comes back short (or shutdown).
pub async fn prune(state: &AppState) -> sqlx::Result<u64> {
    let older_than = state.config.job_retention_secs as f64;
    let mut total = 0;
    loop {
        let n = store::prune_finished(&state.db, older_than, PRUNE_BATCH).await?;
        total += n;
        if (n as i64) < PRUNE_BATCH || state.shutdown.is_cancelled() {
            return Ok(total);
        }
    }
}
