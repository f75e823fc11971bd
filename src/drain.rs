//! The drain engine: reclaim expired leases, take received SQS messages into
//! the intake window, then move jobs from the window to the downstream while
//! `dispatching + running < limit`.
//!
//! The limit, the key caps and fairness are `store::reserve`'s business,
//! under the gate lock, never this module's: it only decides when to ask SQS
//! for messages and what to do with each message afterwards. Messages of
//! queued, due jobs stay hidden in the window (ARCHITECTURE.md, "Choosing
//! fairly: the intake window") until their job is dispatched, so a drain
//! chooses among every key's waiting jobs, not among the next ten messages
//! SQS delivers. [`drain`] is one unit of work, so tests can step it
//! deterministically.

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use rand::Rng;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tracing::Instrument;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::{
    callback_token,
    domain::WaitingOn,
    downstream::{Outcome, Submission},
    lifecycle::{JobStatus, Transition},
    queue::{Received, SQS_BATCH},
    state::AppState,
    store::{self, Reserved},
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
/// How much longer than its submission's HTTP timeout a reserved job may stay
/// `dispatching` before its slot is reclaimed (a replica died mid-submission).
const DISPATCH_LEASE_MARGIN: Duration = Duration::from_secs(60);
/// The share of `DRAIN_BUDGET_MS` after which a drain takes no more jobs.
const TAKE_JOBS_SHARE: f64 = 0.7;
/// The longest a drain waits on an SQS long poll (see [`receive`]).
const LONG_POLL: Duration = Duration::from_secs(2);
/// A message that names no job yet is hidden this long before it is looked
/// at again (its enqueue may still be committing).
const ORPHAN_RECHECK: Duration = Duration::from_secs(30);
/// The most messages the intake window holds (SQS allows 120,000 in flight
/// per standard queue). Past it, a drain receives only for free slots.
pub const WINDOW_MAX: i64 = 10_000;
/// The most keys of the window one reservation looks at. Among them the
/// fair pick is exact (every waiting key, as long as there are no more);
/// beyond, a cursor moves on to the next ones on each reservation, so that
/// the cost of a reservation does not grow with the number of keys.
pub const WINDOW_KEYS: i64 = 256;
/// How long a message whose job waits in the window is hidden once its
/// first visibility runs short (at least the dispatch lease plus four
/// [`WINDOW_MARGIN`]s), again and again while it waits ([`extend_window`]).
/// Extending counts no receive towards the queue's `maxReceiveCount`.
const WINDOW_VISIBILITY: Duration = Duration::from_secs(600);
/// Added to the dispatch lease for the least a message taken into the
/// window is hidden for ([`window_visibility`]).
const WINDOW_MARGIN: Duration = Duration::from_secs(30);
/// A job is reserved only while its receipt stays valid this much longer
/// than its submission may take (`DISPATCH_TIMEOUT_SECS`): time to act on
/// its message afterwards. A receipt that runs out all the same costs
/// nothing but requests: the message shows again, is received again, and
/// is deleted or taken in as its job's state says.
const RECEIPT_MARGIN: Duration = Duration::from_secs(15);
/// How often each replica extends the visibility of the window's messages
/// that are about to become too short for a reservation
/// ([`extend_window`]).
pub const EXTEND_EVERY: Duration = Duration::from_secs(5);
/// How long before its receipt becomes too short to reserve the job a
/// waiting message is extended: two sweeps' worth.
const EXTEND_AHEAD: Duration = Duration::from_secs(10);
/// The share of `DRAIN_BUDGET_MS` a drain with no free slot may spend taking
/// messages into the window (so that other keys' jobs behind a backlog are
/// seen before slots free up).
const INTAKE_SHARE: f64 = 0.25;
/// Receives sent at once, at most, by one turn of a drain (taking messages
/// in, or receiving for free slots and a refill ahead).
const INTAKE_RECEIVES: usize = 20;
/// After a receive came back empty, a replica with no free slot does not ask
/// SQS again for this long (unless it enqueued meanwhile): no request per
/// callback while the queue is empty. Doubled after each empty receive in a
/// row, up to [`INTAKE_IDLE_MAX`].
const INTAKE_IDLE: Duration = Duration::from_secs(1);
/// The longest the intake stays closed after empty receives in a row.
const INTAKE_IDLE_MAX: Duration = Duration::from_secs(8);
/// Added to a release delay so that SQS (whole seconds) never shows a
/// message before its job is due.
const DUE_SLACK: Duration = Duration::from_secs(1);

/// What to do with a job's SQS message once its submission is decided.
#[derive(Debug, Clone)]
enum MessageAction {
    Delete(String),
    Release(Release),
    /// Leave it hidden: it comes back when its visibility ends.
    Leave,
}

/// A message to make visible again after `delay`.
#[derive(Debug, Clone)]
struct Release {
    receipt: String,
    delay: Duration,
    /// The job that still needs this message: if SQS cannot release it (the
    /// message is gone), a fresh one is sent for it.
    job: Option<Uuid>,
    /// For a dispatched job's message: the receipt's validity. If SQS cannot
    /// release it (it is down), the message is still hidden and in hand, and
    /// the job goes back into the intake window with it.
    held_until: Option<chrono::DateTime<chrono::Utc>>,
}

struct Finished {
    /// The job and the receipt its dispatch used (its window row goes once
    /// the message is deleted or released).
    job: Uuid,
    receipt: String,
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
/// reclaimed.
fn dispatch_lease(state: &AppState) -> Duration {
    state.config.dispatch_timeout() + DISPATCH_LEASE_MARGIN
}

/// How long received messages stay hidden, and how long the window may rely
/// on their receipts.
fn window_times(state: &AppState) -> store::WindowTimes {
    store::WindowTimes {
        first_visibility_secs: message_visibility(state).as_secs_f64(),
        visibility_secs: window_visibility(state).as_secs_f64(),
        dispatch_lease_secs: dispatch_lease(state).as_secs_f64(),
        receipt_margin_secs: receipt_margin(state).as_secs_f64(),
        keys_per_reservation: WINDOW_KEYS,
    }
}

/// How much longer a receipt must stay valid for its job to be reserved.
fn receipt_margin(state: &AppState) -> Duration {
    state.config.dispatch_timeout() + RECEIPT_MARGIN
}

/// How long a message stays hidden once it has waited in the window for a
/// while, or at once if its job cannot go yet ([`extend_window`]).
fn window_visibility(state: &AppState) -> Duration {
    WINDOW_VISIBILITY.max(dispatch_lease(state) + WINDOW_MARGIN * 4)
}

/// How long a received message is hidden at first: the dispatch lease, as
/// long as its job's dispatch may take, and no longer, so that a message
/// whose receive answer was lost (an SQS cut) shows again as soon as before
/// the window. A message that goes on waiting in the window is hidden for
/// [`window_visibility`] shortly before this runs out ([`extend_window`]):
/// most jobs go before, and their messages need no extension.
fn message_visibility(state: &AppState) -> Duration {
    dispatch_lease(state)
}

/// Whether this replica asks SQS for messages when it has no free slot (see
/// [`INTAKE_IDLE`]): closed for a while after an empty receive (longer after
/// each one in a row), opened again by an enqueue here. Once reopened after
/// an empty receive, it asks with one receive, not [`INTAKE_RECEIVES`], until
/// SQS has messages again.
#[derive(Debug, Default)]
pub struct Intake {
    state: std::sync::Mutex<IntakeState>,
}

#[derive(Debug, Default)]
struct IntakeState {
    closed_until: Option<Instant>,
    /// The last receive came back empty (and nothing was enqueued here since).
    found_empty: bool,
    /// How long the last empty receive closed it for.
    idle: Duration,
}

impl Intake {
    fn lock(&self) -> std::sync::MutexGuard<'_, IntakeState> {
        self.state.lock().expect("never poisoned")
    }

    /// A receive came back empty: closed for [`INTAKE_IDLE`], or twice as
    /// long as last time if the previous receive was empty too.
    fn found_nothing(&self) {
        let mut s = self.lock();
        s.idle = if s.found_empty {
            (s.idle * 2).clamp(INTAKE_IDLE, INTAKE_IDLE_MAX)
        } else {
            INTAKE_IDLE
        };
        s.closed_until = Some(Instant::now() + s.idle);
        s.found_empty = true;
    }

    /// A receive brought messages.
    fn found_messages(&self) {
        self.lock().found_empty = false;
    }

    fn is_open(&self) -> bool {
        self.lock().closed_until.is_none_or(|t| Instant::now() >= t)
    }

    fn found_empty(&self) -> bool {
        self.lock().found_empty
    }

    /// New messages were just sent.
    pub fn open(&self) {
        *self.lock() = IntakeState::default();
    }
}

/// One drain: answers within `DRAIN_BUDGET_MS`. Submissions still in flight
/// then go on in the background (tracked by `state.tasks`). Its messages are
/// deleted before it answers (`POST /drain`).
pub async fn drain(state: &AppState) -> anyhow::Result<DrainReport> {
    run(state, false).await
}

/// A drain started by this replica itself (a callback freed a slot, or the
/// ticker): as [`drain`], but its deletes that do not fill a batch of ten
/// wait a moment for the next drain's (`Queue::delete_soon`), since such
/// drains come one per callback and each finishes one or two jobs.
pub async fn refill(state: &AppState) -> anyhow::Result<DrainReport> {
    run(state, true).await
}

#[tracing::instrument(name = "drain", skip_all)]
async fn run(state: &AppState, linger: bool) -> anyhow::Result<DrainReport> {
    let started = Instant::now();
    let budget = state.config.drain_budget();
    let margin = (budget / 10).min(Duration::from_millis(300));
    let answer_by = started + budget - margin;
    let stop_taking_by = started + budget.mul_f64(TAKE_JOBS_SHARE);

    let intake_until = started + budget.mul_f64(INTAKE_SHARE);

    let reclaimed = reclaim(state).await?;

    let (tx, mut rx) = mpsc::unbounded_channel::<Finished>();
    let mut in_flight = 0usize;
    let mut tally = Tally {
        linger,
        ..Tally::default()
    };
    let mut long_poll_next = false;

    // A failure (Postgres or SQS down) stops taking jobs but not the rest:
    // the submissions under way are waited for and the messages already
    // sorted are acted on, so that none stays hidden for a whole lease.
    let stopped: anyhow::Result<StopReason> = loop {
        while let Ok(f) = rx.try_recv() {
            in_flight -= 1;
            tally.add(f);
        }
        if tally.busy {
            break Ok(StopReason::DownstreamBusy);
        }
        if Instant::now() >= stop_taking_by {
            break Ok(StopReason::TimeBudget);
        }
        let gate = match store::gate_state(&state.db, WINDOW_MAX).await {
            Ok(gate) => gate,
            Err(e) => break Err(e.into()),
        };
        if gate.busy {
            break Ok(StopReason::DownstreamBusy);
        }
        let free = (i64::from(gate.limit) - gate.live).max(0);
        let intake_open = Instant::now() < intake_until && state.intake.is_open();
        let messages = match next_ask(&gate, intake_open, state.intake.found_empty(), long_poll_next) {
            Ask::Stop => break Ok(StopReason::AtCapacity),
            Ask::Nothing => Ok(Vec::new()),
            Ask::LongPoll => long_poll(state, stop_taking_by).await,
            Ask::Receive(batches) => receive(state, batches).await,
        };
        let messages = match messages {
            Ok(m) => m,
            Err(e) => break Err(e),
        };
        if free == 0 && messages.is_empty() {
            break Ok(StopReason::AtCapacity);
        }
        // The long poll was the last chance (or the window is full): the
        // window had nothing that may go, and SQS nothing more.
        if long_poll_next && messages.is_empty() {
            break Ok(StopReason::QueueEmpty);
        }
        // Nothing received and nothing in the window: no reservation to try.
        if messages.is_empty() && gate.window == 0 {
            long_poll_next = true;
            continue;
        }
        let received = messages.len();
        let receipts: Vec<String> = messages.iter().map(|m| m.receipt.clone()).collect();
        let sorted = match reserve_for(state, messages, free).await {
            Ok(sorted) => sorted,
            Err(e) => {
                // Nothing was reserved or taken in: show these messages again at once.
                tally.release.extend(receipts.into_iter().map(|receipt| Release {
                    receipt,
                    delay: Duration::ZERO,
                    job: None,
                    held_until: None,
                }));
                break Err(e);
            }
        };
        tally.delete.extend(sorted.delete);
        tally.release.extend(sorted.release);
        for (job, receipt) in sorted.reserved {
            in_flight += 1;
            let (state, tx) = (state.clone(), tx.clone());
            state.tasks.clone().spawn(
                async move {
                    let finished = dispatch(&state, job, receipt).await;
                    // Once the drain has answered, the task acts on the message itself.
                    if let Err(mpsc::error::SendError(f)) = tx.send(finished) {
                        let mut own = Tally {
                            linger,
                            ..Tally::default()
                        };
                        own.add(f);
                        own.act_on_messages(&state).await;
                    }
                }
                .in_current_span(),
            );
        }
        if sorted.busy {
            break Ok(StopReason::DownstreamBusy);
        }
        // Slots left although the window was offered them: it has nothing
        // more that may go now. More may be in SQS if this receive brought
        // messages; after an empty one, one long poll settles it.
        long_poll_next = free > 0 && sorted.slots_left > 0 && received == 0;
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
    let stop_reason = stopped?;

    let stop_reason = if tally.busy {
        StopReason::DownstreamBusy
    } else {
        stop_reason
    };
    let (limit, live) = store::capacity(&state.db).await?;
    metrics::gauge!(crate::metrics::RUNNING).set(live as f64);
    metrics::gauge!(crate::metrics::LIMIT).set(f64::from(limit));
    metrics::gauge!(crate::metrics::EFFECTIVE_CONCURRENCY).set(f64::from(limit));
    metrics::histogram!(crate::metrics::DRAIN_DURATION).record(started.elapsed().as_secs_f64());
    Ok(DrainReport {
        dispatched: tally.accepted + in_flight as i64,
        reclaimed: reclaimed as i64,
        running: live,
        limit: limit.into(),
        stop_reason,
    })
}

/// What a drain asks SQS for next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ask {
    /// No free slot and no taking in: the drain is done.
    Stop,
    /// Nothing: the free slots are offered to the window alone.
    Nothing,
    /// One long poll (see [`long_poll`]).
    LongPoll,
    /// This many receives of ten, sent at once.
    Receive(usize),
}

/// With free slots, fill them from the window when as many jobs wait there;
/// otherwise receive for them and a refill's worth ahead (a long poll only
/// when the window had nothing left that may go). Without, keep taking messages into the window
/// while `intake_open` (this drain's intake share of its budget, and SQS not
/// found empty in the last [`INTAKE_IDLE`]): other keys' jobs may wait behind
/// a backlog. A full window takes no more: jobs further back in SQS are seen
/// as it empties. Paused (limit 0): no slot will free up, and messages held
/// in the window for days would only be received again and again.
fn next_ask(gate: &store::GateState, intake_open: bool, found_empty: bool, long_poll_next: bool) -> Ask {
    let free = (i64::from(gate.limit) - gate.live).max(0);
    let room = gate.window < WINDOW_MAX;
    let take_in = room && gate.limit > 0 && intake_open;
    if free == 0 && !take_in {
        Ask::Stop
    } else if !room {
        Ask::Nothing
    } else if long_poll_next {
        Ask::LongPoll
    } else if free > 0 && gate.waiting > 0 && (!intake_open || gate.waiting >= free) {
        // Jobs wait in the window: a freed slot is filled from it at once,
        // without waiting for an SQS round trip (the window is topped up on
        // the next turn, while no slot is free), and not at all while SQS
        // came back empty a moment ago or this drain has spent its intake
        // share (no receive per freed slot). If none of the waiting jobs may
        // go now, the long poll settles it.
        Ask::Nothing
    } else if found_empty {
        // SQS was empty the last time: one receive to see whether it still
        // is (not ten empty ones a second).
        Ask::Receive(1)
    } else if free == 0 {
        // Only taking in: several receives at once, so that a backlog
        // reaches the window (and the keys behind it are seen) quickly.
        Ask::Receive(((WINDOW_MAX - gate.window) as usize / SQS_BATCH).clamp(1, INTAKE_RECEIVES))
    } else {
        // Fewer jobs wait than slots are free: receive for the free slots
        // and for a refill's worth ahead (the limit), less what waits, in
        // receives of ten sent at once, so that the next freed slots find
        // their jobs in the window.
        let want = free + i64::from(gate.limit) - gate.waiting;
        Ask::Receive((want.max(1) as usize).div_ceil(SQS_BATCH).clamp(1, INTAKE_RECEIVES))
    }
}

/// Receives up to `batches` × 10 messages (short polls, sent at once),
/// hidden for [`message_visibility`]. An empty answer closes the intake of
/// this replica for a while (see [`Intake`]).
async fn receive(state: &AppState, batches: usize) -> anyhow::Result<Vec<Received>> {
    let visibility = message_visibility(state);
    let answers =
        futures::future::join_all((0..batches).map(|_| state.queue.receive(SQS_BATCH, visibility, Duration::ZERO)))
            .await;
    let mut messages = Vec::new();
    let (mut empty, mut failed) = (false, None);
    for answer in answers {
        match answer {
            Ok(batch) => {
                empty |= batch.is_empty();
                messages.extend(batch);
            }
            Err(e) => failed = Some(e),
        }
    }
    // Messages some receives brought are used even if another failed (they
    // would stay hidden for a whole visibility otherwise).
    match failed {
        Some(e) if messages.is_empty() => return Err(e),
        Some(e) => tracing::warn!(error = %e, "one of the receives failed"),
        None => {}
    }
    if empty {
        state.intake.found_nothing();
    } else {
        state.intake.found_messages();
    }
    Ok(messages)
}

/// After an empty short poll, with free slots and nothing in the window that
/// may go. A short poll asks only a sample of SQS's servers and can come
/// back empty while a small queue holds messages; so if Postgres knows a
/// queued, due job whose message is not in the window, one long poll (which
/// asks every server, and returns as soon as a message is there) follows,
/// for as long as the drain may still take jobs, at most [`LONG_POLL`].
async fn long_poll(state: &AppState, stop_taking_by: Instant) -> anyhow::Result<Vec<Received>> {
    let wait = stop_taking_by.saturating_duration_since(Instant::now()).min(LONG_POLL);
    if wait < Duration::from_secs(1) || !store::any_queued_due(&state.db).await? {
        return Ok(Vec::new());
    }
    state.queue.receive(SQS_BATCH, message_visibility(state), wait).await
}

/// What the submissions of one drain came to, and what to do with their
/// messages (done in batches before the drain answers).
#[derive(Default)]
struct Tally {
    accepted: i64,
    busy: bool,
    delete: Vec<String>,
    release: Vec<Release>,
    /// Jobs whose dispatch deleted or released their message, with the
    /// receipt it used: they leave the intake window.
    leave: Vec<(Uuid, String)>,
    /// Deletes may wait a moment to fill a batch (see [`refill`]).
    linger: bool,
}

impl Tally {
    fn add(&mut self, f: Finished) {
        match f.outcome {
            Outcome::Accepted(_) => self.accepted += 1,
            Outcome::Busy { .. } => self.busy = true,
            _ => {}
        }
        match f.action {
            MessageAction::Delete(m) => {
                self.delete.push(m);
                self.leave.push((f.job, f.receipt));
            }
            MessageAction::Release(r) => {
                self.release.push(r);
                self.leave.push((f.job, f.receipt));
            }
            MessageAction::Leave => {}
        }
    }

    /// Deletes and releases the messages, in batches. A message SQS cannot
    /// release may be gone (a purge, the retention period): its job, still
    /// waiting for it, gets a fresh one.
    async fn act_on_messages(&self, state: &AppState) {
        // Out of the window first (only rows still holding the receipt used):
        // once released, a message may be taken in again by another drain.
        if let Err(e) = store::leave_intake(&state.db, &self.leave).await {
            tracing::warn!(error = %e, "could not remove dispatched jobs from the intake window");
        }
        let receipts: Vec<(String, Duration)> = self.release.iter().map(|r| (r.receipt.clone(), r.delay)).collect();
        let delete = async {
            if self.linger {
                state.queue.delete_soon(&self.delete, &state.tasks).await;
            } else {
                state.queue.delete(&self.delete).await;
            }
        };
        let ((), failed) = tokio::join!(delete, state.queue.release(&receipts));
        let failed: Vec<&Release> = failed.iter().filter_map(|&i| self.release.get(i)).collect();
        let back: Vec<(Uuid, store::Receipt)> = failed
            .iter()
            .filter_map(|r| {
                let until = r.held_until?;
                let job = r.job?;
                let receipt = store::Receipt {
                    handle: r.receipt.clone(),
                    expires_at: until,
                };
                Some((job, receipt))
            })
            .collect();
        if let Err(e) = store::back_into_window(&state.db, &back).await {
            tracing::warn!(error = %e, "could not put jobs back into the intake window");
        }
        let resend: Vec<(Uuid, Duration)> = failed.iter().filter_map(|r| r.job.map(|job| (job, r.delay))).collect();
        if !resend.is_empty() {
            resend_messages(state, &resend).await;
        }
    }
}

/// Sends a fresh message for jobs whose message could not be released.
async fn resend_messages(state: &AppState, jobs: &[(Uuid, Duration)]) {
    for (job, _) in jobs {
        tracing::warn!(job_id = %job, "the job's SQS message is gone; sending a fresh one");
    }
    let failed = state.queue.send_delayed(jobs).await;
    let sent: Vec<Uuid> = jobs
        .iter()
        .map(|(id, _)| *id)
        .filter(|id| !failed.contains(id))
        .collect();
    metrics::counter!(crate::metrics::MESSAGES_RESENT, "reason" => "release_failed").increment(sent.len() as u64);
    if let Err(e) = store::mark_enqueued(&state.db, &sent).await {
        tracing::warn!(error = %e, "could not record the re-sent messages");
    }
    for job in failed {
        tracing::error!(job_id = %job, "could not send a fresh SQS message; the requeue sweeper will");
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
            metrics::counter!(crate::metrics::JOBS_FINISHED, "status" => status.as_str()).increment(n as u64);
        }
    }
    if total > 0 {
        tracing::info!(reclaimed = total, "reclaimed the slots of expired leases");
    }
    Ok(total)
}

/// The received messages, sorted: the jobs that got a slot (with their
/// message's receipt), the messages to delete or release (those not taken
/// into the window), and what the reservation found.
struct Sorted {
    reserved: Vec<(Reserved, store::Receipt)>,
    delete: Vec<String>,
    release: Vec<Release>,
    /// A `Retry-After` is in force: nothing was reserved.
    busy: bool,
    /// Free slots the window could not fill.
    slots_left: i64,
}

/// Counts a job that could not go, by why (`waiting_on`).
fn held(reason: WaitingOn, n: usize) {
    let label = serde_json::to_value(reason)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default();
    metrics::counter!(crate::metrics::JOBS_HELD, "reason" => label).increment(n as u64);
}

/// Takes the received messages into the window, reserves up to `free` slots
/// from the whole window, and sorts the messages that did not go in.
async fn reserve_for(state: &AppState, messages: Vec<Received>, free: i64) -> anyhow::Result<Sorted> {
    let offers: Vec<store::Offer> = messages
        .iter()
        .filter_map(|m| {
            m.job_id.map(|job| store::Offer {
                job,
                receipt: &m.receipt,
            })
        })
        .collect();
    let times = window_times(state);
    let reservation = store::reserve(&state.db, &offers, &times, free).await?;
    let taken: std::collections::HashSet<Uuid> = reservation.taken_in.iter().map(|t| t.job).collect();
    // Jobs that cannot go yet (a back-off, a dispatch under way): their
    // rows are pending until their messages are hidden for the window's
    // visibility. The others wait with the visibility they were received
    // with, extended only if they are still waiting when it runs short.
    let not_ready: std::collections::HashSet<Uuid> = reservation
        .taken_in
        .iter()
        .filter(|t| !t.ready)
        .map(|t| t.job)
        .collect();
    let reserved_ids: std::collections::HashSet<Uuid> = reservation.jobs.iter().map(|(r, _)| r.id()).collect();
    let waiting = reservation
        .taken_in
        .iter()
        .filter(|t| t.ready && !reserved_ids.contains(&t.job))
        .count();
    if waiting > 0 {
        let why = match (reservation.busy_until, reservation.slots_left) {
            (Some(_), _) => WaitingOn::DownstreamBusy,
            (None, 0) => WaitingOn::GlobalLimit,
            (None, _) => WaitingOn::KeyLimit,
        };
        held(why, waiting);
    }
    let backing_off = reservation.taken_in.iter().filter(|t| !t.ready).count();
    if backing_off > 0 {
        held(WaitingOn::RetryBackoff, backing_off);
    }
    // Only messages not taken in need their job's state (usually none). If it
    // cannot be read, they are left alone (they come back after their
    // visibility timeout).
    let others: Vec<Uuid> = offers.iter().map(|o| o.job).filter(|id| !taken.contains(id)).collect();
    let states: Option<HashMap<Uuid, JobStatus>> = if others.is_empty() {
        Some(HashMap::new())
    } else {
        match store::statuses_of(&state.db, &others).await {
            Ok(statuses) => Some(statuses),
            Err(e) => {
                tracing::warn!(error = %e, "could not read the state of received jobs; leaving their messages");
                None
            }
        }
    };

    let mut sorted = Sorted {
        reserved: reservation.jobs,
        delete: Vec::new(),
        release: Vec::new(),
        busy: reservation.busy_until.is_some(),
        slots_left: reservation.slots_left,
    };
    let mut waiting_receipts: Vec<(String, Duration)> = Vec::new();
    let mut waiting_jobs: Vec<Uuid> = Vec::new();
    let now = chrono::Utc::now();
    let orphan_grace = Duration::from_secs(state.config.orphan_message_grace_secs);
    for m in messages {
        let Some(id) = m.job_id else {
            tracing::warn!("deleting an SQS message that does not name a job");
            sorted.delete.push(m.receipt);
            continue;
        };
        // In the window: reserved now, its dispatch acts on the message;
        // not ready, the message is hidden for the window's visibility now;
        // ready, it is extended later if it is still waiting then.
        if taken.contains(&id) {
            if not_ready.contains(&id) {
                waiting_jobs.push(id);
                waiting_receipts.push((m.receipt, window_visibility(state)));
            }
            continue;
        }
        let Some(states) = &states else { continue };
        let release = |delay: Duration, job: Option<Uuid>| Release {
            receipt: m.receipt.clone(),
            delay,
            job,
            held_until: None,
        };
        match states.get(&id) {
            None => {
                let age = m.sent_at.map(|t| (now - t).to_std().unwrap_or_default());
                if age.is_none_or(|a| a >= orphan_grace) {
                    tracing::warn!(job_id = %id, "deleting an SQS message whose job does not exist");
                    sorted.delete.push(m.receipt);
                } else {
                    sorted.release.push(release(ORPHAN_RECHECK, None));
                }
            }
            Some(status) if status.needs_no_message() => sorted.delete.push(m.receipt),
            // Queued or dispatching, yet not taken in: its state changed
            // between the two statements. Shown again at once.
            Some(_) => sorted.release.push(release(Duration::ZERO, Some(id))),
        }
    }
    extend(state, waiting_jobs, waiting_receipts, &times).await;
    Ok(sorted)
}

/// Hides the messages of these jobs' pending window rows for the window's
/// visibility, then opens the rows to every drain (`store::window_ready`).
/// While pending, no drain reserves them (and hands their message back
/// before the extension, which would then hide it for the whole window
/// visibility with no row left to dispatch its job). A message whose
/// extension failed keeps its visibility and its row stays pending: it
/// shows again and is taken in anew (with its new receipt). Returns how
/// many rows were opened.
async fn extend(
    state: &AppState,
    waiting_jobs: Vec<Uuid>,
    waiting_receipts: Vec<(String, Duration)>,
    times: &store::WindowTimes,
) -> usize {
    if waiting_receipts.is_empty() {
        return 0;
    }
    let failed: std::collections::HashSet<usize> = state.queue.release(&waiting_receipts).await.into_iter().collect();
    if !failed.is_empty() {
        tracing::warn!(
            messages = failed.len(),
            "could not extend the visibility of messages waiting in the window"
        );
    }
    let extended: Vec<(Uuid, String)> = waiting_jobs
        .into_iter()
        .zip(waiting_receipts)
        .enumerate()
        .filter(|(i, _)| !failed.contains(i))
        .map(|(_, (job, (receipt, _)))| (job, receipt))
        .collect();
    match store::window_ready(&state.db, &extended, times).await {
        Ok(()) => extended.len(),
        Err(e) => {
            // Rather than leave them hidden for the window's visibility with
            // rows no drain may use: shown again at once, taken in anew.
            tracing::warn!(error = %e, "could not open waiting jobs to every drain; releasing their messages");
            let now: Vec<(String, Duration)> = extended.into_iter().map(|(_, r)| (r, Duration::ZERO)).collect();
            state.queue.release(&now).await;
            0
        }
    }
}

/// Extends the visibility of the window's messages whose receipts are about
/// to become too short to reserve their jobs (within [`EXTEND_AHEAD`]),
/// every [`EXTEND_EVERY`] on each replica: their rows are claimed (made
/// pending, so that no drain reserves them meanwhile), their messages hidden
/// for the window's visibility, their rows opened again with the new
/// expiry. Returns how many were extended and opened again.
pub async fn extend_window(state: &AppState) -> anyhow::Result<usize> {
    let times = window_times(state);
    let within = receipt_margin(state) + EXTEND_AHEAD;
    let mut total = 0;
    loop {
        let claimed = store::claim_expiring(&state.db, within.as_secs_f64(), EXTEND_CLAIM).await?;
        let n = claimed.len();
        let (jobs, receipts): (Vec<Uuid>, Vec<(String, Duration)>) = claimed
            .into_iter()
            .map(|(job, receipt)| (job, (receipt, window_visibility(state))))
            .unzip();
        total += extend(state, jobs, receipts, &times).await;
        if (n as i64) < EXTEND_CLAIM || state.shutdown.is_cancelled() {
            return Ok(total);
        }
    }
}

/// The most window rows one claim of [`extend_window`] takes.
const EXTEND_CLAIM: i64 = 500;

/// Submits one reserved job and records what the downstream said.
#[tracing::instrument(name = "dispatch", skip_all, fields(job_id = %job.id(), attempt = job.attempt.attempt))]
async fn dispatch(state: &AppState, job: Reserved, held: store::Receipt) -> Finished {
    let receipt = held.handle;
    let base = state.config.public_base_url();
    let id = job.id();
    let submission = Submission {
        attempt: job.attempt,
        payload: &job.payload,
        callback_url: format!("{base}/jobs/{id}/callback"),
        heartbeat_url: format!("{base}/jobs/{id}/heartbeat"),
        callback_token: callback_token::issue(&state.config.callback_secret, job.attempt),
    };
    state.issued.record(job.attempt);
    crate::fault!("drain-after-reserve");
    let outcome = state.downstream.submit(&submission).await;
    if matches!(outcome, Outcome::Accepted(_)) {
        crate::fault!("drain-after-accept");
    }
    let reason = outcome.reason();
    let (t, after) = decide(state, &job, &outcome, &reason).await;
    let receipt_used = receipt.clone();
    let action = match apply_with_retry(state, id, &t).await {
        Applied::Done(done) => {
            if done.status == JobStatus::Running {
                crate::fault!("drain-after-running");
            }
            tracing::debug!(status = done.status.as_str(), %reason, "submission recorded");
            if done.status.is_terminal() {
                metrics::counter!(crate::metrics::JOBS_FINISHED, "status" => done.status.as_str()).increment(1);
            }
            match after {
                Some(delay) => MessageAction::Release(Release {
                    receipt,
                    delay,
                    job: Some(id),
                    held_until: Some(held.expires_at),
                }),
                None => MessageAction::Delete(receipt),
            }
        }
        // The job moved on meanwhile (a callback or heartbeat arrived first,
        // or its lease was reclaimed): keep the message only if the job may
        // still need it.
        Applied::MovedOn => match store::status_of(&state.db, id).await {
            Ok(Some(s)) if s.needs_no_message() => MessageAction::Delete(receipt),
            _ => MessageAction::Leave,
        },
        // Postgres is unreachable: the job stays `dispatching` until its lease
        // runs out; its message comes back by itself.
        Applied::Unrecorded => MessageAction::Leave,
    };
    Finished {
        job: id,
        receipt: receipt_used,
        action,
        outcome,
    }
}

/// The state change an outcome calls for (the contract's downstream table;
/// see `lifecycle`), and, if the job's message must stay, after how long it
/// shows again (`None`: delete it).
async fn decide<'a>(
    state: &AppState,
    job: &Reserved,
    outcome: &'a Outcome,
    reason: &'a str,
) -> (Transition<'a>, Option<Duration>) {
    let attempt = job.attempt;
    match outcome {
        Outcome::Accepted(_) => {
            metrics::counter!(crate::metrics::JOBS_DISPATCHED).increment(1);
            (Transition::accepted(attempt, reason), None)
        }
        Outcome::Busy {
            retry_after,
            capped_from,
            ..
        } => {
            let delay = retry_after.unwrap_or_default();
            if let Some(asked) = capped_from {
                metrics::counter!(crate::metrics::RETRY_AFTER_CAPPED).increment(1);
                tracing::warn!(
                    asked_secs = asked.as_secs(),
                    "the downstream's Retry-After is longer than the longest honoured; cut"
                );
            }
            if !delay.is_zero() {
                // The downstream said when to come back: no replica sends
                // anything before then.
                if let Err(e) = store::pause_downstream(&state.db, delay.as_secs_f64()).await {
                    tracing::warn!(error = %e, "could not record the downstream's Retry-After");
                }
            }
            (Transition::busy(attempt, reason, delay), Some(delay))
        }
        Outcome::Rejected { detail, .. } => (Transition::rejected(attempt, reason, detail), None),
        Outcome::Transient { reason } if job.attempts_used >= job.max_attempts => {
            (Transition::out_of_attempts(attempt, reason), None)
        }
        Outcome::Transient { reason } => {
            let delay = backoff(job.attempts_used);
            (Transition::retry(attempt, reason, delay), Some(delay))
        }
        // The downstream may be running it: the job keeps its slot with the
        // lease of a running job; its message shows again when that lease
        // ends (then the job is `queued` again, or settled).
        Outcome::Unknown { reason } => (
            Transition::outcome_unknown(attempt, reason),
            Some(Duration::from_secs(job.timeout_secs.max(0) as u64) + DUE_SLACK),
        ),
    }
}

/// What became of recording a submission's outcome.
enum Applied {
    Done(crate::domain::Job),
    /// The job was no longer at that attempt in `dispatching`.
    MovedOn,
    /// Postgres stayed unreachable through the retries.
    Unrecorded,
}

/// Applies a transition, retrying briefly through a Postgres blip.
async fn apply_with_retry(state: &AppState, id: Uuid, t: &Transition<'_>) -> Applied {
    let mut delay = Duration::from_millis(100);
    for _ in 0..5 {
        match store::transition(&state.db, id, t).await {
            Ok(Some(job)) => return Applied::Done(job),
            Ok(None) => return Applied::MovedOn,
            Err(e) => {
                tracing::warn!(error = %e, "recording a submission outcome failed; retrying");
                tokio::time::sleep(delay).await;
                delay *= 2;
            }
        }
    }
    tracing::error!("could not record a submission outcome; the lease will reclaim the slot");
    Applied::Unrecorded
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

    fn gate(limit: i32, live: i64, window: i64, waiting: i64) -> store::GateState {
        store::GateState {
            limit,
            live,
            busy: false,
            window,
            waiting,
        }
    }

    #[test]
    fn free_slots_are_filled_from_the_window_first_and_received_for_with_a_refill_ahead() {
        // Nothing waits: receive for the 5 free slots and the limit ahead
        // (15 messages: two receives), intake open or not.
        assert_eq!(next_ask(&gate(10, 5, 0, 0), true, false, false), Ask::Receive(2));
        assert_eq!(next_ask(&gate(10, 5, 0, 0), false, false, false), Ask::Receive(2));
        // Only reserved rows in the window: they cannot fill a slot.
        assert_eq!(next_ask(&gate(10, 5, 5, 0), false, false, false), Ask::Receive(2));
        // Limit 50, all free, 12 wait: 88 more, nine receives at once.
        assert_eq!(next_ask(&gate(50, 0, 12, 12), true, false, false), Ask::Receive(9));
        // Never more than INTAKE_RECEIVES at once.
        assert_eq!(
            next_ask(&gate(500, 0, 0, 0), true, false, false),
            Ask::Receive(INTAKE_RECEIVES)
        );
        // As many wait as slots are free: no SQS round trip before they go.
        assert_eq!(next_ask(&gate(10, 5, 50, 5), true, false, false), Ask::Nothing);
        assert_eq!(next_ask(&gate(10, 5, 50, 20), true, false, false), Ask::Nothing);
        // Fewer wait: SQS is asked while the intake is open, not after an
        // empty receive (one request per freed slot otherwise).
        assert_eq!(next_ask(&gate(10, 5, 50, 3), true, false, false), Ask::Receive(2));
        assert_eq!(next_ask(&gate(10, 5, 50, 3), false, false, false), Ask::Nothing);
        // The window had nothing that may go: the long poll settles it.
        assert_eq!(next_ask(&gate(10, 5, 50, 20), false, false, true), Ask::LongPoll);
        assert_eq!(next_ask(&gate(10, 5, 50, 20), true, false, true), Ask::LongPoll);
    }

    #[test]
    fn without_free_slots_a_drain_only_takes_messages_in_while_its_intake_is_open() {
        assert_eq!(next_ask(&gate(10, 10, 0, 0), false, false, false), Ask::Stop);
        assert_eq!(
            next_ask(&gate(10, 10, 0, 0), true, false, false),
            Ask::Receive(INTAKE_RECEIVES)
        );
        // Nearly full window: only what fits.
        assert_eq!(
            next_ask(&gate(10, 10, WINDOW_MAX - 25, 20), true, false, false),
            Ask::Receive(2)
        );
        // Full window: nothing more, with or without free slots.
        assert_eq!(next_ask(&gate(10, 10, WINDOW_MAX, 20), true, false, false), Ask::Stop);
        assert_eq!(next_ask(&gate(10, 5, WINDOW_MAX, 20), true, false, false), Ask::Nothing);
        // SQS was empty the last time: one receive to see if it still is.
        assert_eq!(next_ask(&gate(10, 10, 0, 0), true, true, false), Ask::Receive(1));
        assert_eq!(next_ask(&gate(10, 5, 0, 0), true, true, false), Ask::Receive(1));
        // Paused: nothing is taken in.
        assert_eq!(next_ask(&gate(0, 0, 0, 0), true, false, false), Ask::Stop);
    }

    #[test]
    fn empty_receives_in_a_row_close_the_intake_for_longer_each_time_and_an_enqueue_opens_it() {
        let intake = Intake::default();
        assert!(intake.is_open() && !intake.found_empty());
        let closed_for = |intake: &Intake| {
            intake
                .lock()
                .closed_until
                .expect("closed")
                .saturating_duration_since(Instant::now())
        };
        intake.found_nothing();
        assert!(!intake.is_open() && intake.found_empty());
        assert!(closed_for(&intake) <= INTAKE_IDLE && closed_for(&intake) > INTAKE_IDLE / 2);
        intake.found_nothing();
        assert!(closed_for(&intake) > INTAKE_IDLE * 3 / 2);
        for _ in 0..10 {
            intake.found_nothing();
        }
        assert!(closed_for(&intake) <= INTAKE_IDLE_MAX && closed_for(&intake) > INTAKE_IDLE_MAX / 2);
        // Messages found: the next empty receive closes it for the shortest time again.
        intake.found_messages();
        intake.found_nothing();
        assert!(closed_for(&intake) <= INTAKE_IDLE);
        intake.open();
        assert!(intake.is_open() && !intake.found_empty());
    }
}
