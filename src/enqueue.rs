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
//!
//! Single submissions that arrive together share one enqueue (group
//! commit, [`enqueue_one`]): one transaction and one `SendMessageBatch` for
//! up to ten of them. Nobody waits for company: a submission goes at once
//! if an enqueue slot of the group is free, and those that arrive while all
//! are busy go together in the next one. The promise is unchanged: each
//! client hears 202 only after its job is committed and its message sent.

use std::{collections::HashSet, sync::Arc};

use sqlx::{Postgres, Transaction};
use tokio::sync::{Semaphore, mpsc, oneshot};
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

/// Why a whole enqueue failed (shared by every submission of a group).
#[derive(Debug, Clone, thiserror::Error)]
pub enum EnqueueError {
    /// Nothing was stored.
    #[error("database error before the commit")]
    Database(Arc<sqlx::Error>),
    /// Nothing was stored: the enqueue took longer than `ENQUEUE_TIMEOUT_SECS`.
    #[error("the enqueue took longer than ENQUEUE_TIMEOUT_SECS")]
    TimedOut,
    /// The COMMIT was sent but not confirmed: the jobs may or may not be
    /// stored (and queued). Only an idempotent retry is safe.
    #[error("the commit was not confirmed: {0}")]
    OutcomeUnknown(Arc<sqlx::Error>),
    /// The group's enqueue ended without an answer (its task died): as
    /// unknown as an unconfirmed COMMIT.
    #[error("the enqueue ended without an answer")]
    Abandoned,
}

impl From<sqlx::Error> for EnqueueError {
    fn from(e: sqlx::Error) -> Self {
        EnqueueError::Database(Arc::new(e))
    }
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
    tx.commit()
        .await
        .map_err(|e| EnqueueError::OutcomeUnknown(Arc::new(e)))?;
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

/// The most single submissions one group's enqueue takes: one
/// `SendMessageBatch`.
const GROUP_MAX: usize = 10;
/// Group enqueues in flight at once. While all are, single submissions wait
/// and go together in the next one: with 32 clients, about 8 per
/// transaction.
const GROUP_FLUSHES: usize = 4;

/// Stores and queues one submission, in a group with the single submissions
/// that arrive meanwhile (see the module's documentation).
pub async fn enqueue_one(state: &AppState, submit: Submit) -> Result<Submitted, EnqueueError> {
    let (reply, answer) = oneshot::channel();
    state.groups.send(state, Waiting { submit, reply });
    answer.await.unwrap_or(Err(EnqueueError::Abandoned))
}

/// The queue of single submissions waiting for a group's enqueue.
pub struct Groups {
    tx: mpsc::UnboundedSender<Waiting>,
    /// Taken by the first submission, which starts the loop ([`run_groups`]).
    rx: std::sync::Mutex<Option<mpsc::UnboundedReceiver<Waiting>>>,
}

impl Default for Groups {
    fn default() -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        Groups {
            tx,
            rx: std::sync::Mutex::new(Some(rx)),
        }
    }
}

impl Groups {
    fn send(&self, state: &AppState, w: Waiting) {
        if let Some(rx) = self.rx.lock().expect("never poisoned").take() {
            tokio::spawn(run_groups(state.clone(), rx));
        }
        // The loop holds a clone of the state, hence of this sender: the
        // channel stays open as long as the loop runs.
        let _ = self.tx.send(w);
    }
}

struct Waiting {
    submit: Submit,
    reply: oneshot::Sender<Result<Submitted, EnqueueError>>,
}

/// Forms groups: the first waiting submission and those behind it (up to
/// [`GROUP_MAX`]), as soon as one of [`GROUP_FLUSHES`] is free. Two
/// submissions with the same idempotency key never share a group (the
/// second goes in the next one, and is then a repeat).
async fn run_groups(state: AppState, mut rx: mpsc::UnboundedReceiver<Waiting>) {
    let flushes = Arc::new(Semaphore::new(GROUP_FLUSHES));
    let mut carried: Option<Waiting> = None;
    loop {
        let first = match carried.take() {
            Some(w) => w,
            None => match rx.recv().await {
                Some(w) => w,
                None => return,
            },
        };
        let permit = flushes.clone().acquire_owned().await.expect("never closed");
        let mut keys = HashSet::new();
        let mut group = Vec::with_capacity(GROUP_MAX);
        let mut next = Some(first);
        while let Some(w) = next.take() {
            if let Some(key) = &w.submit.key
                && !keys.insert(key.as_str().to_owned())
            {
                carried = Some(w);
                break;
            }
            // Its client has gone: nothing to store for it.
            if !w.reply.is_closed() {
                group.push(w);
            }
            if group.len() < GROUP_MAX {
                next = rx.try_recv().ok();
            }
        }
        if group.is_empty() {
            continue;
        }
        let state = state.clone();
        tokio::spawn(async move {
            flush(&state, group).await;
            drop(permit);
        });
    }
}

/// One group's enqueue; every submission of it gets its own answer.
async fn flush(state: &AppState, group: Vec<Waiting>) {
    let (submits, replies): (Vec<Submit>, Vec<_>) = group.into_iter().map(|w| (w.submit, w.reply)).unzip();
    match enqueue(state, &submits).await {
        Ok(results) => {
            for (reply, result) in replies.into_iter().zip(results) {
                let _ = reply.send(Ok(result));
            }
        }
        Err(e) => {
            for reply in replies {
                let _ = reply.send(Err(e.clone()));
            }
        }
    }
}
