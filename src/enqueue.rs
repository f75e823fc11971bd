//! The submit engine, twin of the drain: jobs become durable in Postgres and
//! queued in SQS before the client hears 202.
//!
//! Crash-safe without an outbox (ARCHITECTURE.md, invariant 2): the job rows
//! are inserted in a transaction, the SQS messages are sent while it is open,
//! jobs whose message failed are deleted in that same transaction, and only
//! then is it committed. So a committed job always has a message; a message
//! whose commit failed names a job that never existed, and the drain drops it
//! after `ORPHAN_MESSAGE_GRACE_SECS`.
//!
//! Everything up to the COMMIT must happen within `ENQUEUE_TIMEOUT_SECS`;
//! past it the transaction is rolled back (and Postgres ends a session that
//! sits in the transaction longer), so a job is never committed later than
//! that after its message was sent. Start-up checks the orphan grace against
//! it.

use sqlx::{Postgres, Transaction};
use uuid::Uuid;

use crate::{
    domain::{IdempotencyKey, Job, JobSpec},
    state::AppState,
    store::{self, Inserted},
};

/// One job to submit: what was asked for, and its idempotency key.
pub struct Submit {
    pub spec: JobSpec,
    pub key: Option<IdempotencyKey>,
}

/// What became of one submitted job.
pub enum Submitted {
    /// Stored and queued (202).
    New(Job),
    /// An idempotent repeat: the job the key already names (200).
    Repeat(Job),
    /// The key already names a job submitted with another body.
    KeyReused,
    /// Its SQS message could not be sent: nothing was stored.
    NotQueued,
}

/// Why a whole enqueue failed.
#[derive(Debug, thiserror::Error)]
pub enum EnqueueError {
    /// Nothing was stored.
    #[error("database error before the commit")]
    Database(#[from] sqlx::Error),
    /// Nothing was stored: the enqueue took longer than `ENQUEUE_TIMEOUT_SECS`.
    #[error("the enqueue took longer than ENQUEUE_TIMEOUT_SECS")]
    TimedOut,
    /// The COMMIT was sent but not confirmed: the jobs may or may not be
    /// stored (and queued). Only an idempotent retry is safe.
    #[error("the commit was not confirmed: {0}")]
    OutcomeUnknown(sqlx::Error),
}

/// Stores and queues `jobs` in one transaction. Returns one result per job,
/// in input order.
#[tracing::instrument(name = "enqueue", skip_all, fields(jobs = jobs.len()))]
pub async fn enqueue(state: &AppState, jobs: &[Submit]) -> Result<Vec<Submitted>, EnqueueError> {
    // A slow SQS holds a connection per enqueue: never all of the pool.
    let _slot = state
        .enqueue_slots
        .acquire()
        .await
        .expect("the semaphore is never closed");
    let deadline = state.config.enqueue_timeout();
    let Staged {
        tx,
        inserted,
        not_queued,
    } = tokio::time::timeout(deadline, stage(state, jobs))
        .await
        .map_err(|_| EnqueueError::TimedOut)??;
    crate::fault!("enqueue-after-send");
    tx.commit().await.map_err(EnqueueError::OutcomeUnknown)?;
    let results: Vec<Submitted> = inserted
        .into_iter()
        .map(|i| match i {
            Inserted::New(job) if not_queued.contains(&job.id) => Submitted::NotQueued,
            Inserted::New(job) => Submitted::New(job),
            Inserted::Existing {
                job,
                same_request: true,
            } => Submitted::Repeat(job),
            Inserted::Existing {
                same_request: false, ..
            } => Submitted::KeyReused,
        })
        .collect();
    let queued = results.iter().filter(|r| matches!(r, Submitted::New(_))).count();
    if queued > 0 {
        state.intake.open();
    }
    metrics::counter!(crate::metrics::JOBS_ENQUEUED).increment(queued as u64);
    Ok(results)
}

/// An enqueue ready to commit: its open transaction, what the insert found
/// per job, and the new jobs whose message could not be sent (already
/// deleted in `tx`).
struct Staged {
    tx: Transaction<'static, Postgres>,
    inserted: Vec<Inserted>,
    not_queued: Vec<Uuid>,
}

async fn stage(state: &AppState, jobs: &[Submit]) -> Result<Staged, sqlx::Error> {
    let c = &state.config;
    // A session left in this transaction (a stalled process) is ended by
    // Postgres (`idle_in_transaction_session_timeout`, set on every pooled
    // connection by `startup::pool`): it can then never commit late.
    let mut tx = state.db.begin().await?;
    let new: Vec<store::NewJob> = jobs
        .iter()
        .map(|j| store::NewJob {
            id: Uuid::now_v7(),
            spec: &j.spec,
            key: j.key.as_ref(),
        })
        .collect();
    let inserted = store::insert_jobs(&mut tx, &new, c.job_timeout_secs, c.max_attempts).await?;
    let new_ids: Vec<Uuid> = inserted
        .iter()
        .filter_map(|i| match i {
            Inserted::New(job) => Some(job.id),
            Inserted::Existing { .. } => None,
        })
        .collect();
    crate::fault!("enqueue-after-insert");
    let not_queued = state.queue.send_job_ids(&new_ids).await;
    if !not_queued.is_empty() {
        store::delete_jobs(&mut tx, &not_queued).await?;
    }
    Ok(Staged {
        tx,
        inserted,
        not_queued,
    })
}
