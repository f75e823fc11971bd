//! Re-sends the SQS message of queued jobs that have not been sent for a
//! long time. SQS drops a message after the queue's retention period (4 days
//! by default) and an operator may purge a queue: without this, such a job
//! would stay `queued` in Postgres forever. A duplicate message is harmless
//! (a job is only reserved from `queued`; the drain drops stale messages).

use std::time::Duration;

use sqlx::PgPool;

use crate::{queue::Queue, store};

/// Jobs re-sent per transaction.
const BATCH: i64 = 500;

/// Sends a new message for every queued job last sent more than `older_than`
/// ago. Returns how many messages were sent.
pub async fn resend_stale(db: &PgPool, queue: &Queue, older_than: Duration) -> anyhow::Result<u64> {
    let mut sent = 0;
    loop {
        let mut tx = db.begin().await?;
        // Locked (SKIP LOCKED) until commit, so two replicas never re-send
        // the same job at once; the send happens while the rows are locked,
        // as in enqueueing.
        let ids = store::stale_queued(&mut tx, older_than.as_secs_f64(), BATCH).await?;
        if ids.is_empty() {
            return Ok(sent);
        }
        let failed = queue.send_job_ids(&ids).await;
        let ok: Vec<_> = ids.iter().copied().filter(|id| !failed.contains(id)).collect();
        store::mark_enqueued(&mut tx, &ok).await?;
        tx.commit().await?;
        sent += ok.len() as u64;
        if !failed.is_empty() {
            anyhow::bail!(
                "SQS refused {} of {} re-sent messages; will retry",
                failed.len(),
                ids.len()
            );
        }
        if (ids.len() as i64) < BATCH {
            return Ok(sent);
        }
    }
}

/// Half the queue's retention period, so a message is renewed well before
/// SQS would drop it; two days if SQS does not say.
pub async fn default_requeue_after(queue: &Queue) -> Duration {
    match queue.retention().await {
        Ok(retention) => retention / 2,
        Err(e) => {
            tracing::warn!(error = %e, "could not read the queue's retention period; assuming 4 days");
            Duration::from_secs(2 * 24 * 3600)
        }
    }
}
