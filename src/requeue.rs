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
    // One cut-off for the whole run: a job whose message is re-sent here is
    // marked sent now, after the cut-off, so it is not found again (with a
    // cut-off that moved with the clock, `--older-than-secs 0` would find
    // the jobs it has just re-sent, for ever).
    let sent_before = store::now_minus(db, older_than.as_secs_f64()).await?;
    let mut sent = 0;
    loop {
        // No row lock is held while sending (a slow SQS must not stall the
        // drains): two replicas may now and then send the same job twice,
        // which is harmless.
        let ids = store::stale_queued(db, sent_before, BATCH).await?;
        if ids.is_empty() {
            return Ok(sent);
        }
        let failed = queue.send_job_ids(&ids).await;
        let ok: Vec<_> = ids.iter().copied().filter(|id| !failed.contains(id)).collect();
        store::mark_enqueued(db, &ok).await?;
        metrics::counter!(crate::metrics::MESSAGES_RESENT, "reason" => "stale").increment(ok.len() as u64);
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
/// SQS would drop it.
pub async fn default_requeue_after(queue: &Queue) -> anyhow::Result<Duration> {
    Ok(queue.retention().await? / 2)
}
