//! The job lifecycle, in one place: every state, every transition a job can
//! take, why it takes it (the reason written to its history) and what it does
//! besides changing the status (slot taken or freed, lease set, attempt used).
//!
//! ```text
//!             reserve (drain, under the gate lock)
//!   queued ───────────────────────────────────────▶ dispatching ──accepted──▶ running
//!     ▲  │                                            │  │  │  ▲                 │ │ │
//!     │  └─cancelled──▶ cancelled                     │  │  │  └─outcome unknown  │ │ └─heartbeat (lease extended)
//!     │                                               │  │  │    (lease = timeout)│ │
//!     ├──────────busy (429/503, no attempt used)──────┘  │  └─heartbeat─▶ running │ └─lease expired──▶ timed_out
//!     ├──────────retry (5xx, refused; back-off)──────────┤                        │
//!     └──────────dispatch lease expired──────────────────┤                        │
//!                         rejected (4xx), out of attempts ─▶ failed               │
//!                                   callback (from dispatching or running) ──────▶ succeeded | failed
//! ```
//!
//! | transition | from | to | reason | besides the status |
//! | --- | --- | --- | --- | --- |
//! | [`Transition::submitted`] (insert) | — | queued | `submitted` | |
//! | reserve (`store::reserve`) | queued | dispatching | [`reasons::RESERVED`] | takes a slot; new attempt number; dispatch lease |
//! | [`Transition::accepted`] | dispatching | running | `downstream 2xx` | lease = the job's timeout; `started_at` |
//! | [`Transition::busy`] | dispatching | queued | `downstream 429/503` | frees the slot; no attempt used; due after `Retry-After` |
//! | [`Transition::rejected`] | dispatching | failed | `downstream 4xx` | frees the slot; ends the job |
//! | [`Transition::retry`] | dispatching | queued | `downstream 5xx`, `... connection error` | frees the slot; attempt used; due after a back-off |
//! | [`Transition::out_of_attempts`] | dispatching | failed | as `retry` | frees the slot; ends the job |
//! | [`Transition::outcome_unknown`] | dispatching | dispatching | `downstream timeout: outcome unknown`, ... | keeps the slot; lease = the job's timeout |
//! | heartbeat (`store::heartbeat`) | dispatching, running | running | [`reasons::HEARTBEAT`] | lease pushed out by the job's timeout; `started_at` |
//! | [`Transition::callback`] | dispatching, running | succeeded, failed | [`reasons::CALLBACK`] | frees the slot; ends the job; `started_at` |
//! | [`Transition::cancelled`] | queued | cancelled | [`reasons::CANCELLED`] | ends the job |
//! | reclaim (`store::reclaim_expired`) | running | timed_out | [`reasons::LEASE_EXPIRED`] | frees the slot; ends the job |
//! | reclaim (`store::reclaim_expired`) | dispatching | queued, or failed when out of attempts | [`reasons::DISPATCH_LEASE_EXPIRED`] | frees the slot; the attempt stays used |
//!
//! Transitions are applied by `store::transition` only if the job is in one
//! of `from` and, when an [`AttemptRef`] is given, at that attempt: a late
//! answer or callback of an earlier attempt changes nothing (fencing).

use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use utoipa::ToSchema;
use uuid::Uuid;

/// Where a job is in its life. `dispatching` and `running` count against the
/// limit; `succeeded`, `failed`, `timed_out` and `cancelled` are terminal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, sqlx::Type, ToSchema)]
#[sqlx(type_name = "job_status", rename_all = "snake_case")]
#[serde(rename_all = "snake_case")]
pub enum JobStatus {
    Queued,
    Dispatching,
    Running,
    Succeeded,
    Failed,
    TimedOut,
    Cancelled,
}

/// The statuses that hold a slot. The SQL uses the same set through the
/// function `live_statuses()` (a migration); a test checks they agree.
pub const LIVE: [JobStatus; 2] = [JobStatus::Dispatching, JobStatus::Running];

/// The statuses a job never leaves.
pub const TERMINAL: [JobStatus; 4] = [
    JobStatus::Succeeded,
    JobStatus::Failed,
    JobStatus::TimedOut,
    JobStatus::Cancelled,
];

impl JobStatus {
    pub const ALL: [JobStatus; 7] = [
        JobStatus::Queued,
        JobStatus::Dispatching,
        JobStatus::Running,
        JobStatus::Succeeded,
        JobStatus::Failed,
        JobStatus::TimedOut,
        JobStatus::Cancelled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            JobStatus::Queued => "queued",
            JobStatus::Dispatching => "dispatching",
            JobStatus::Running => "running",
            JobStatus::Succeeded => "succeeded",
            JobStatus::Failed => "failed",
            JobStatus::TimedOut => "timed_out",
            JobStatus::Cancelled => "cancelled",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|st| st.as_str() == s)
    }

    pub fn is_terminal(self) -> bool {
        TERMINAL.contains(&self)
    }

    pub fn is_live(self) -> bool {
        LIVE.contains(&self)
    }

    /// The downstream has the job or is done with it: its SQS message is no
    /// longer needed.
    pub fn needs_no_message(self) -> bool {
        self == JobStatus::Running || self.is_terminal()
    }
}

/// One submission of one job: the fencing token. The callback token, the
/// downstream's `Idempotency-Key` (`<job>:<attempt>`) and every state change
/// caused by the submission name it; a new submission has a new number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct AttemptRef {
    pub job: Uuid,
    pub attempt: i32,
}

impl AttemptRef {
    pub fn new(job: Uuid, attempt: i32) -> Self {
        Self { job, attempt }
    }

    /// The downstream's `Idempotency-Key` for this submission.
    pub fn idempotency_key(&self) -> String {
        format!("{}:{}", self.job, self.attempt)
    }
}

impl std::fmt::Display for AttemptRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.job, self.attempt)
    }
}

/// Reasons written to a job's history by the transitions that are not
/// named after a downstream answer.
pub mod reasons {
    pub const SUBMITTED: &str = "submitted";
    pub const RESERVED: &str = "slot reserved by drain";
    pub const HEARTBEAT: &str = "heartbeat";
    pub const CALLBACK: &str = "callback";
    pub const CANCELLED: &str = "cancelled by client";
    pub const LEASE_EXPIRED: &str = "lease expired";
    pub const DISPATCH_LEASE_EXPIRED: &str = "dispatch lease expired";
    /// The `error` of a job whose running lease ran out.
    pub const LEASE_EXPIRED_ERROR: &str = "lease expired: no callback or heartbeat in time";
    /// The `error` of a job whose dispatch lease ran out.
    pub const DISPATCH_LEASE_EXPIRED_ERROR: &str =
        "dispatch lease expired: no answer, callback or heartbeat for the submission";
}

/// What a transition does to the lease of the job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lease {
    /// The job leaves the live set: no lease.
    Clear,
    /// The lease of a running job: now + the job's `timeout_secs`.
    JobTimeout,
}

/// One change of a job's state, named by its cause. Build it with one of the
/// constructors; `store::transition` applies it.
#[derive(Debug, Clone)]
pub struct Transition<'a> {
    /// Applied only from one of these.
    pub from: &'static [JobStatus],
    /// Applied only at this attempt (`None`: any).
    pub attempt: Option<AttemptRef>,
    pub to: JobStatus,
    /// Written to the job's history.
    pub reason: &'a str,
    /// The job's `error` afterwards (`None` clears it).
    pub error: Option<&'a str>,
    /// The downstream's result, kept if `None`.
    pub result: Option<&'a RawValue>,
    /// The downstream refused the submission (429/503): it uses no attempt.
    pub busy_refusal: bool,
    /// The downstream ran (or runs) the job: `started_at` is set if unset.
    pub started: bool,
    pub lease: Lease,
    /// For `queued`: how long before the job may be dispatched again.
    pub delay: Duration,
}

const DISPATCHING: &[JobStatus] = &[JobStatus::Dispatching];
const LIVE_FROM: &[JobStatus] = &LIVE;
const QUEUED: &[JobStatus] = &[JobStatus::Queued];

impl<'a> Transition<'a> {
    fn base(from: &'static [JobStatus], attempt: Option<AttemptRef>, to: JobStatus, reason: &'a str) -> Self {
        Self {
            from,
            attempt,
            to,
            reason,
            error: None,
            result: None,
            busy_refusal: false,
            started: false,
            lease: if to.is_live() { Lease::JobTimeout } else { Lease::Clear },
            delay: Duration::ZERO,
        }
    }

    /// The reason of the first event of every job (written by the insert).
    pub const fn submitted() -> &'static str {
        reasons::SUBMITTED
    }

    /// The downstream answered 2xx: it runs the job.
    pub fn accepted(attempt: AttemptRef, reason: &'a str) -> Self {
        Self {
            started: true,
            ..Self::base(DISPATCHING, Some(attempt), JobStatus::Running, reason)
        }
    }

    /// The downstream answered 429/503: full. Back to the queue without using
    /// an attempt, due after its `Retry-After` (zero if none).
    pub fn busy(attempt: AttemptRef, reason: &'a str, retry_after: Duration) -> Self {
        Self {
            busy_refusal: true,
            delay: retry_after,
            ..Self::base(DISPATCHING, Some(attempt), JobStatus::Queued, reason)
        }
    }

    /// The downstream rejected the job for good (another 4xx).
    pub fn rejected(attempt: AttemptRef, reason: &'a str, detail: &'a str) -> Self {
        Self {
            error: Some(detail),
            ..Self::base(DISPATCHING, Some(attempt), JobStatus::Failed, reason)
        }
    }

    /// The submission failed without reaching the job (5xx, connection
    /// refused): the attempt is used; back to the queue after `backoff`.
    pub fn retry(attempt: AttemptRef, reason: &'a str, backoff: Duration) -> Self {
        Self {
            error: Some(reason),
            delay: backoff,
            ..Self::base(DISPATCHING, Some(attempt), JobStatus::Queued, reason)
        }
    }

    /// As [`Transition::retry`], but that was the job's last attempt.
    pub fn out_of_attempts(attempt: AttemptRef, reason: &'a str) -> Self {
        Self {
            error: Some(reason),
            ..Self::base(DISPATCHING, Some(attempt), JobStatus::Failed, reason)
        }
    }

    /// No answer in time, or the connection lost after sending: the
    /// downstream may be running the job. It keeps its slot, with the lease
    /// of a running job; news (heartbeat, callback) or the end of that lease
    /// settles it.
    pub fn outcome_unknown(attempt: AttemptRef, reason: &'a str) -> Self {
        Self {
            error: Some(reason),
            ..Self::base(DISPATCHING, Some(attempt), JobStatus::Dispatching, reason)
        }
    }

    /// The downstream reports the end (possibly before its answer to the
    /// submission came back).
    pub fn callback(attempt: AttemptRef, to: JobStatus, result: Option<&'a RawValue>, error: Option<&'a str>) -> Self {
        debug_assert!(matches!(to, JobStatus::Succeeded | JobStatus::Failed));
        Self {
            result,
            error,
            started: true,
            ..Self::base(LIVE_FROM, Some(attempt), to, reasons::CALLBACK)
        }
    }

    /// A client cancels a job that is still waiting.
    pub fn cancelled() -> Self {
        Self::base(QUEUED, None, JobStatus::Cancelled, reasons::CANCELLED)
    }

    /// The job leaves the live set: its slot is freed.
    pub fn frees_slot(&self) -> bool {
        self.from.iter().all(|s| s.is_live()) && !self.to.is_live()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attempt() -> AttemptRef {
        AttemptRef::new(Uuid::now_v7(), 3)
    }

    #[test]
    fn status_names_round_trip() {
        for s in JobStatus::ALL {
            assert_eq!(JobStatus::parse(s.as_str()), Some(s));
            assert_eq!(serde_json::to_string(&s).unwrap(), format!("\"{}\"", s.as_str()));
        }
        assert_eq!(JobStatus::parse("QUEUED"), None);
        assert_eq!(JobStatus::ALL.iter().filter(|s| s.is_live()).count(), 2);
        assert_eq!(JobStatus::ALL.iter().filter(|s| s.is_terminal()).count(), 4);
        assert!(JobStatus::ALL.iter().all(|s| !(s.is_live() && s.is_terminal())));
    }

    #[test]
    fn the_effects_of_each_transition() {
        let a = attempt();
        let t = Transition::accepted(a, "downstream 202");
        assert_eq!(
            (t.to, t.lease, t.started, t.frees_slot()),
            (JobStatus::Running, Lease::JobTimeout, true, false)
        );
        let t = Transition::busy(a, "downstream 429", Duration::from_secs(7));
        assert_eq!(
            (t.to, t.busy_refusal, t.delay, t.frees_slot()),
            (JobStatus::Queued, true, Duration::from_secs(7), true)
        );
        let t = Transition::retry(a, "downstream 500", Duration::from_secs(2));
        assert_eq!(
            (t.to, t.busy_refusal, t.error),
            (JobStatus::Queued, false, Some("downstream 500"))
        );
        let t = Transition::rejected(a, "downstream 422", "no");
        assert_eq!((t.to, t.started, t.lease), (JobStatus::Failed, false, Lease::Clear));
        let t = Transition::out_of_attempts(a, "downstream 500");
        assert_eq!((t.to, t.started), (JobStatus::Failed, false));
        let t = Transition::outcome_unknown(a, "downstream timeout: outcome unknown");
        assert_eq!(
            (t.to, t.lease, t.frees_slot(), t.started),
            (JobStatus::Dispatching, Lease::JobTimeout, false, false)
        );
        let t = Transition::callback(a, JobStatus::Succeeded, None, None);
        assert_eq!((t.from, t.started, t.frees_slot()), (&LIVE[..], true, true));
        let t = Transition::cancelled();
        assert_eq!(
            (t.from, t.attempt, t.frees_slot()),
            (&[JobStatus::Queued][..], None, false)
        );
    }

    #[test]
    fn an_attempt_names_its_idempotency_key() {
        let a = attempt();
        assert_eq!(a.idempotency_key(), format!("{}:3", a.job));
        assert_eq!(a.to_string(), a.idempotency_key());
    }
}
