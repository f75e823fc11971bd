//! The drain engine: reclaim expired leases, then move queued jobs from SQS
//! to the downstream while `dispatching + running < limit`.
//!
//! The limit is enforced by `store::reserve`, under the gate lock, never
//! here: this module only decides how many messages to ask SQS for and what
//! to do with each message afterwards. [`drain`] is one unit of work, so tests
//! can step it deterministically.

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use rand::Rng;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::{
    callback_token,
    domain::JobStatus,
    downstream::{Outcome, Submission},
    queue::{Received, SQS_BATCH},
    state::AppState,
    store::{self, Reserved, Transition},
};

/// Why a drain stopped taking jobs: `at_capacity` (no free slot),
/// `queue_empty`, `time_budget` (`DRAIN_BUDGET_MS` ran out) or
/// `downstream_busy` (the downstream answered 429 or 503).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum StopReason {
    AtCapacity,
    QueueEmpty,
    TimeBudget,
    DownstreamBusy,
}

/// The answer of `POST /drain`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[schema(example = json!({"dispatched": 3, "reclaimed": 0, "running": 10, "limit": 10, "stop_reason": "at_capacity"}))]
pub struct DrainReport {
    /// Jobs handed to the downstream by this drain: accepted (2xx), or still
    /// being submitted when the time budget ran out.
    pub dispatched: i64,
    /// Slots freed because a lease ran out.
    pub reclaimed: i64,
    /// Jobs dispatching or running when the drain answered.
    pub running: i64,
    /// The concurrency limit in force.
    pub limit: i64,
    pub stop_reason: StopReason,
}

/// Retry back-off after a failed attempt: `BASE * 2^(attempt-1)`, capped,
/// with jitter in [50%, 100%].
const BACKOFF_BASE: Duration = Duration::from_secs(1);
const BACKOFF_CAP: Duration = Duration::from_secs(300);

/// What to do with a job's SQS message once its submission is decided.
#[derive(Debug, Clone)]
enum MessageAction {
    Delete(String),
    Release(String, Duration),
    /// Leave it hidden: it comes back when its visibility ends.
    Leave,
}

struct Finished {
    action: MessageAction,
    outcome: Outcome,
}

pub fn backoff(attempt: i32) -> Duration {
    let exp = BACKOFF_BASE
        .saturating_mul(1u32 << (attempt.clamp(1, 20) - 1) as u32)
        .min(BACKOFF_CAP);
    exp.mul_f64(rand::rng().random_range(0.5..=1.0))
}

/// How long a reserved job may stay `dispatching` before its slot is
/// reclaimed, and how long a received message stays hidden.
fn dispatch_lease(state: &AppState) -> Duration {
    state.config.dispatch_timeout() + Duration::from_secs(60)
}

/// One drain: answers within `DRAIN_BUDGET_MS`. Submissions still in flight
/// then go on in the background (tracked by `state.tasks`).
pub async fn drain(state: &AppState) -> anyhow::Result<DrainReport> {
    let started = Instant::now();
    let budget = state.config.drain_budget();
    let margin = (budget / 10).min(Duration::from_millis(300));
    let answer_by = started + budget - margin;
    let stop_taking_by = started + budget.mul_f64(0.7);

    let reclaimed = reclaim(state).await?;

    let (tx, mut rx) = mpsc::unbounded_channel::<Finished>();
    let mut in_flight = 0usize;
    let mut tally = Tally::default();

    let stop_reason = loop {
        while let Ok(f) = rx.try_recv() {
            in_flight -= 1;
            tally.add(f);
        }
        if tally.busy {
            break StopReason::DownstreamBusy;
        }
        if Instant::now() >= stop_taking_by {
            break StopReason::TimeBudget;
        }
        let gate = store::gate_state(&state.db).await?;
        if gate.busy {
            break StopReason::DownstreamBusy;
        }
        let free = (i64::from(gate.limit) - gate.live).max(0) as usize;
        if free == 0 {
            break StopReason::AtCapacity;
        }
        let messages = state.queue.receive(free.min(SQS_BATCH), dispatch_lease(state)).await?;
        if messages.is_empty() {
            break StopReason::QueueEmpty;
        }
        let (reserved, short_of_capacity) = reserve_for(state, messages, &mut tally.delete, &mut tally.release).await?;
        for (job, receipt) in reserved {
            in_flight += 1;
            let (state, tx) = (state.clone(), tx.clone());
            state.tasks.clone().spawn(async move {
                let finished = dispatch(&state, job, receipt).await;
                // Once the drain has answered, the task acts on the message itself.
                if let Err(mpsc::error::SendError(f)) = tx.send(finished) {
                    let mut own = Tally::default();
                    own.add(f);
                    own.act_on_messages(&state).await;
                }
            });
        }
        if short_of_capacity {
            break StopReason::AtCapacity;
        }
    };
    drop(tx);

    // Wait for the submissions under way, as long as the budget allows.
    while in_flight > 0 {
        match tokio::time::timeout_at(answer_by.into(), rx.recv()).await {
            Ok(Some(f)) => {
                in_flight -= 1;
                tally.add(f);
            }
            Ok(None) | Err(_) => break,
        }
    }
    rx.close();
    while let Ok(f) = rx.try_recv() {
        in_flight -= 1;
        tally.add(f);
    }
    tally.act_on_messages(state).await;

    let stop_reason = if tally.busy {
        StopReason::DownstreamBusy
    } else {
        stop_reason
    };
    let (limit, live) = store::capacity(&state.db).await?;
    metrics::gauge!("sluicegate_running").set(live as f64);
    metrics::gauge!("sluicegate_limit").set(f64::from(limit));
    metrics::histogram!("sluicegate_drain_duration_seconds").record(started.elapsed().as_secs_f64());
    Ok(DrainReport {
        dispatched: tally.accepted + in_flight as i64,
        reclaimed: reclaimed as i64,
        running: live,
        limit: limit.into(),
        stop_reason,
    })
}

/// What the submissions of one drain came to, and what to do with their
/// messages (done in batches before the drain answers).
#[derive(Default)]
struct Tally {
    accepted: i64,
    busy: bool,
    delete: Vec<String>,
    release: Vec<(String, Duration)>,
}

impl Tally {
    fn add(&mut self, f: Finished) {
        match f.outcome {
            Outcome::Accepted(_) => self.accepted += 1,
            Outcome::Busy { .. } => self.busy = true,
            _ => {}
        }
        match f.action {
            MessageAction::Delete(m) => self.delete.push(m),
            MessageAction::Release(m, delay) => self.release.push((m, delay)),
            MessageAction::Leave => {}
        }
    }

    /// Deletes and releases the messages, in batches.
    async fn act_on_messages(&self, state: &AppState) {
        tokio::join!(state.queue.delete(&self.delete), state.queue.release(&self.release));
    }
}

/// Frees the slots of expired leases (see `store::reclaim_expired`), counts
/// the jobs that ended, and returns how many slots were freed.
pub async fn reclaim(state: &AppState) -> anyhow::Result<u64> {
    let by_status = store::reclaim_expired(&state.db).await?;
    let mut total = 0;
    for (status, n) in by_status {
        total += n as u64;
        if status.is_terminal() {
            metrics::counter!("sluicegate_jobs_finished_total", "status" => status.as_str()).increment(n as u64);
        }
    }
    if total > 0 {
        tracing::info!(reclaimed = total, "reclaimed the slots of expired leases");
    }
    Ok(total)
}

/// Reserves slots for the received messages' jobs. Returns the reserved jobs
/// with their message, and whether capacity ran out before every due job got
/// a slot. Messages that need no dispatch are sorted into delete/release.
async fn reserve_for(
    state: &AppState,
    messages: Vec<Received>,
    to_delete: &mut Vec<String>,
    to_release: &mut Vec<(String, Duration)>,
) -> anyhow::Result<(Vec<(Reserved, String)>, bool)> {
    let ids: Vec<Uuid> = messages.iter().filter_map(|m| m.job_id).collect();
    let reserved = store::reserve(&state.db, &ids, dispatch_lease(state).as_secs_f64()).await?;
    // Only messages whose job was not reserved need its state (usually none).
    let others: Vec<Uuid> = ids
        .iter()
        .copied()
        .filter(|id| !reserved.iter().any(|r| r.id == *id))
        .collect();
    // The reserved jobs are live now: whatever happens next, they get
    // dispatched. If the other jobs' states cannot be read, their messages
    // are left alone (they come back after their visibility timeout).
    let states: Option<HashMap<Uuid, (JobStatus, chrono::DateTime<chrono::Utc>)>> = if others.is_empty() {
        Some(HashMap::new())
    } else {
        match store::due_states(&state.db, &others).await {
            Ok(rows) => Some(rows.into_iter().map(|(id, s, at)| (id, (s, at))).collect()),
            Err(e) => {
                tracing::warn!(error = %e, "could not read the state of received jobs; leaving their messages");
                None
            }
        }
    };

    let mut receipts: HashMap<Uuid, String> = HashMap::new();
    let mut short_of_capacity = false;
    let now = chrono::Utc::now();
    let orphan_grace = Duration::from_secs(state.config.orphan_message_grace_secs);
    for m in messages {
        let Some(id) = m.job_id else {
            tracing::warn!("deleting an SQS message that does not name a job");
            to_delete.push(m.receipt);
            continue;
        };
        if reserved.iter().any(|r| r.id == id) {
            // A second delivery of a reserved job's message is left alone:
            // the dispatch acts on the first one.
            receipts.entry(id).or_insert(m.receipt);
            continue;
        }
        let Some(states) = &states else { continue };
        match states.get(&id) {
            None => {
                let age = m.sent_at.map(|t| (now - t).to_std().unwrap_or_default());
                if age.is_none_or(|a| a >= orphan_grace) {
                    tracing::warn!(job_id = %id, "deleting an SQS message whose job does not exist");
                    to_delete.push(m.receipt);
                } else {
                    to_release.push((m.receipt, Duration::from_secs(30)));
                }
            }
            // Dispatched (or being dispatched) under another message: a
            // duplicate delivery. Its own receipt is handled by that dispatch.
            Some((JobStatus::Dispatching, _)) => {}
            Some((s, _)) if s.is_terminal() || *s == JobStatus::Running => to_delete.push(m.receipt),
            Some((_, due)) if *due > now => {
                let wait = (*due - now).to_std().unwrap_or_default();
                to_release.push((m.receipt, wait + Duration::from_millis(999)));
            }
            Some(_) => {
                // Queued and due, but no slot was left for it.
                short_of_capacity = true;
                to_release.push((m.receipt, Duration::ZERO));
            }
        }
    }
    let reserved = reserved
        .into_iter()
        .map(|r| {
            let receipt = receipts.remove(&r.id).expect("a reserved job came from a message");
            (r, receipt)
        })
        .collect();
    Ok((reserved, short_of_capacity))
}

/// Submits one reserved job and records what the downstream said.
async fn dispatch(state: &AppState, job: Reserved, receipt: String) -> Finished {
    let base = state.config.public_base_url();
    let submission = Submission {
        job_id: job.id,
        attempt: job.attempt,
        payload: &job.payload,
        callback_url: format!("{base}/jobs/{}/callback", job.id),
        heartbeat_url: format!("{base}/jobs/{}/heartbeat", job.id),
        callback_token: callback_token::issue(&state.config.callback_secret, job.id, job.attempt),
    };
    let outcome = state.downstream.submit(&submission).await;
    let reason = outcome.reason();
    let from = [JobStatus::Dispatching];
    let mut t = Transition::new(&from, JobStatus::Queued, &reason);
    t.attempt = Some(job.attempt);
    let mut release_after = None;
    match &outcome {
        Outcome::Accepted(_) => {
            metrics::counter!("sluicegate_jobs_dispatched_total").increment(1);
            t.to = JobStatus::Running;
        }
        Outcome::Busy { retry_after, .. } => {
            let delay = retry_after.unwrap_or_default();
            if !delay.is_zero() {
                // The downstream said when to come back: no replica sends
                // anything before then.
                if let Err(e) = store::pause_downstream(&state.db, delay.as_secs_f64()).await {
                    tracing::warn!(error = %e, "could not record the downstream's Retry-After");
                }
            }
            t.attempts_delta = -1;
            t.delay_secs = delay.as_secs_f64();
            release_after = Some(delay);
        }
        Outcome::Rejected { detail, .. } => {
            t.to = JobStatus::Failed;
            t.error = Some(detail);
        }
        Outcome::Transient { reason } => {
            t.error = Some(reason);
            if job.attempt >= job.max_attempts {
                t.to = JobStatus::Failed;
            } else {
                let delay = backoff(job.attempt);
                t.delay_secs = delay.as_secs_f64();
                release_after = Some(delay);
            }
        }
    }
    let action = match apply_with_retry(state, job.id, &t).await {
        Some(Some(done)) => {
            if done.status.is_terminal() {
                metrics::counter!("sluicegate_jobs_finished_total", "status" => done.status.as_str()).increment(1);
            }
            match release_after {
                Some(delay) => MessageAction::Release(receipt, delay),
                None => MessageAction::Delete(receipt),
            }
        }
        // The job moved on meanwhile (a callback arrived first, or its lease
        // was reclaimed): keep the message only if the job may still need it.
        Some(None) => match store::attempt_of(&state.db, job.id).await {
            Ok(Some((_, s))) if s.is_terminal() || s == JobStatus::Running => MessageAction::Delete(receipt),
            _ => MessageAction::Leave,
        },
        // Postgres is unreachable: the job stays `dispatching` until its lease
        // runs out; its message comes back by itself.
        None => MessageAction::Leave,
    };
    Finished { action, outcome }
}

/// Applies a transition, retrying briefly through a Postgres blip.
/// `None`: Postgres stayed unreachable.
async fn apply_with_retry(state: &AppState, id: Uuid, t: &Transition<'_>) -> Option<Option<crate::domain::Job>> {
    let mut delay = Duration::from_millis(100);
    for _ in 0..5 {
        match store::transition(&state.db, id, t).await {
            Ok(r) => return Some(r),
            Err(e) => {
                tracing::warn!(job_id = %id, error = %e, "recording a submission outcome failed; retrying");
                tokio::time::sleep(delay).await;
                delay *= 2;
            }
        }
    }
    tracing::error!(job_id = %id, "could not record a submission outcome; the lease will reclaim the slot");
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_is_capped() {
        for _ in 0..100 {
            let d1 = backoff(1);
            assert!(d1 >= Duration::from_millis(500) && d1 <= Duration::from_secs(1));
            let d4 = backoff(4);
            assert!(d4 >= Duration::from_secs(4) && d4 <= Duration::from_secs(8));
            assert!(backoff(30) <= BACKOFF_CAP);
            assert!(backoff(30) >= BACKOFF_CAP / 2);
        }
    }
}
