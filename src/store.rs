//! All SQL lives here. Functions take `impl PgExecutor` so that they work on
//! the pool or inside a transaction.
//!
//! Every change of a job's status goes through a statement that also writes
//! the job's event (a data-modifying CTE), so history and state never diverge.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use serde_json::value::RawValue;
use sqlx::{PgExecutor, PgPool, Postgres, Transaction};
use uuid::Uuid;

use crate::domain::{IdempotencyKey, Job, JobEvent, JobSpec, JobStatus};

/// The columns of a [`Job`]. `attempts` there is the number of attempts used:
/// submissions refused with 429/503 (`busy_refusals`) use none.
const JOB_COLUMNS: &str = "id, status, payload::text AS payload, attempts - busy_refusals AS attempts, created_at, \
                           started_at, finished_at, result::text AS result, error";

#[derive(sqlx::FromRow)]
struct JobRow {
    id: Uuid,
    status: JobStatus,
    payload: String,
    attempts: i32,
    created_at: DateTime<Utc>,
    started_at: Option<DateTime<Utc>>,
    finished_at: Option<DateTime<Utc>>,
    result: Option<String>,
    error: Option<String>,
}

impl From<JobRow> for Job {
    fn from(r: JobRow) -> Self {
        // The columns are of type json: Postgres has already validated them.
        let raw = |s: String| RawValue::from_string(s).expect("a json column holds valid JSON");
        Job {
            id: r.id,
            status: r.status,
            payload: raw(r.payload),
            attempts: r.attempts,
            created_at: r.created_at,
            started_at: r.started_at,
            finished_at: r.finished_at,
            result: r.result.map(raw),
            error: r.error,
        }
    }
}

// ---------------------------------------------------------------- the limit

/// Creates the limit from `MAX_CONCURRENCY` if the database has none yet.
pub async fn seed_limit(ex: impl PgExecutor<'_>, max_concurrency: u32) -> sqlx::Result<()> {
    sqlx::query("INSERT INTO gate (id, max_concurrency) VALUES (TRUE, $1) ON CONFLICT (id) DO NOTHING")
        .bind(max_concurrency as i32)
        .execute(ex)
        .await?;
    Ok(())
}

pub async fn get_limit(ex: impl PgExecutor<'_>) -> sqlx::Result<i32> {
    sqlx::query_scalar("SELECT max_concurrency FROM gate")
        .fetch_one(ex)
        .await
}

/// Changes the limit. Takes the gate lock, so it is ordered with reservations.
pub async fn set_limit(ex: impl PgExecutor<'_>, max_concurrency: i32) -> sqlx::Result<i32> {
    sqlx::query_scalar("UPDATE gate SET max_concurrency = $1, updated_at = now() RETURNING max_concurrency")
        .bind(max_concurrency)
        .fetch_one(ex)
        .await
}

/// `(limit, live)`: the limit and the number of jobs dispatching or running.
pub async fn capacity(ex: impl PgExecutor<'_>) -> sqlx::Result<(i32, i64)> {
    sqlx::query_as(
        "SELECT (SELECT max_concurrency FROM gate), \
                (SELECT count(*) FROM jobs WHERE status IN ('dispatching', 'running'))",
    )
    .fetch_one(ex)
    .await
}

/// What a drain needs to know before asking SQS for more, in one round trip.
#[derive(Debug, Clone, Copy, sqlx::FromRow)]
pub struct GateState {
    pub limit: i32,
    /// Jobs dispatching or running.
    pub live: i64,
    /// The downstream asked (with Retry-After) not to be sent anything yet.
    pub busy: bool,
}

pub async fn gate_state(ex: impl PgExecutor<'_>) -> sqlx::Result<GateState> {
    sqlx::query_as(
        "SELECT max_concurrency AS limit, coalesce(busy_until > now(), false) AS busy, \
                (SELECT count(*) FROM jobs WHERE status IN ('dispatching', 'running')) AS live \
         FROM gate",
    )
    .fetch_one(ex)
    .await
}

/// Records a Retry-After: nothing is submitted before `now + secs` (an
/// earlier, longer pause is kept).
pub async fn pause_downstream(ex: impl PgExecutor<'_>, secs: f64) -> sqlx::Result<()> {
    sqlx::query(
        "UPDATE gate SET busy_until = GREATEST(coalesce(busy_until, now()), now() + make_interval(secs => $1))",
    )
    .bind(secs)
    .execute(ex)
    .await?;
    Ok(())
}

// ------------------------------------------------------------- enqueueing

pub enum Inserted {
    New(Job),
    /// The idempotency key was already used; `same_request` tells whether
    /// for the same body.
    Existing {
        job: Job,
        same_request: bool,
    },
}

/// A job to insert: its new id, what was submitted, and its idempotency key.
pub struct NewJob<'a> {
    pub id: Uuid,
    pub spec: &'a JobSpec,
    pub key: Option<&'a IdempotencyKey>,
}

/// Inserts queued jobs and their first events in one statement, or finds the
/// job that already holds an item's idempotency key (a concurrent insert of
/// the same key is waited for). Results come in input order; within the
/// input, a repeated key goes to its first item. Rows go in in key order, so
/// two batches sharing keys lock them in the same order (no deadlock).
pub async fn insert_jobs(
    tx: &mut Transaction<'_, Postgres>,
    jobs: &[NewJob<'_>],
    default_timeout_secs: u32,
    default_max_attempts: u32,
) -> sqlx::Result<Vec<Inserted>> {
    let fingerprints: Vec<Option<Vec<u8>>> = jobs.iter().map(|j| j.key.map(|_| j.spec.fingerprint())).collect();
    let sql = format!(
        "WITH input AS ( \
           SELECT * FROM unnest($1::uuid[], $2::text[], $3::int[], $4::int[], $5::text[], $6::bytea[]) \
             WITH ORDINALITY AS t(id, payload, timeout_secs, max_attempts, idempotency_key, request_hash, ord)), \
         ins AS ( \
           INSERT INTO jobs (id, payload, timeout_secs, max_attempts, idempotency_key, request_hash) \
           SELECT id, payload::json, timeout_secs, max_attempts, idempotency_key, request_hash \
           FROM input ORDER BY idempotency_key, ord \
           ON CONFLICT (idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING \
           RETURNING *), \
         ev AS (INSERT INTO job_events (job_id, from_status, to_status, attempt, reason) \
                SELECT id, NULL, status, 0, 'submitted' FROM ins) \
         SELECT {JOB_COLUMNS} FROM ins"
    );
    let rows: Vec<JobRow> = sqlx::query_as(&sql)
        .bind(jobs.iter().map(|j| j.id).collect::<Vec<_>>())
        .bind(jobs.iter().map(|j| j.spec.payload.get()).collect::<Vec<_>>())
        .bind(
            jobs.iter()
                .map(|j| j.spec.timeout_secs.unwrap_or(default_timeout_secs) as i32)
                .collect::<Vec<_>>(),
        )
        .bind(
            jobs.iter()
                .map(|j| j.spec.max_attempts.unwrap_or(default_max_attempts) as i32)
                .collect::<Vec<_>>(),
        )
        .bind(
            jobs.iter()
                .map(|j| j.key.map(IdempotencyKey::as_str))
                .collect::<Vec<_>>(),
        )
        .bind(&fingerprints)
        .fetch_all(&mut **tx)
        .await?;
    let mut inserted: HashMap<Uuid, Job> = rows.into_iter().map(|r| (r.id, Job::from(r))).collect();

    // Items that inserted nothing: their key was taken (before, or earlier in this input).
    let taken: Vec<&str> = jobs
        .iter()
        .filter(|j| !inserted.contains_key(&j.id))
        .filter_map(|j| j.key.map(IdempotencyKey::as_str))
        .collect();
    let mut holders: HashMap<String, (Job, Option<Vec<u8>>)> = HashMap::new();
    if !taken.is_empty() {
        use sqlx::{FromRow, Row};
        let sql =
            format!("SELECT {JOB_COLUMNS}, idempotency_key, request_hash FROM jobs WHERE idempotency_key = ANY($1)");
        for r in sqlx::query(&sql).bind(&taken).fetch_all(&mut **tx).await? {
            let key: String = r.try_get("idempotency_key")?;
            holders.insert(key, (JobRow::from_row(&r)?.into(), r.try_get("request_hash")?));
        }
    }
    let mut out = Vec::with_capacity(jobs.len());
    for (j, fingerprint) in jobs.iter().zip(fingerprints) {
        if let Some(job) = inserted.remove(&j.id) {
            out.push(Inserted::New(job));
            continue;
        }
        let key = j.key.expect("only an idempotency key can conflict").as_str();
        let (job, hash) = holders.get(key).ok_or(sqlx::Error::RowNotFound)?;
        out.push(Inserted::Existing {
            job: clone_job(job),
            same_request: *hash == fingerprint,
        });
    }
    Ok(out)
}

fn clone_job(job: &Job) -> Job {
    let raw = |r: &RawValue| RawValue::from_string(r.get().to_owned()).expect("already valid JSON");
    Job {
        payload: raw(&job.payload),
        result: job.result.as_deref().map(raw),
        error: job.error.clone(),
        ..*job
    }
}

/// Removes jobs whose SQS message could not be sent, within the transaction
/// that inserted them (so they never become visible).
pub async fn delete_jobs(tx: &mut Transaction<'_, Postgres>, ids: &[Uuid]) -> sqlx::Result<()> {
    sqlx::query("DELETE FROM jobs WHERE id = ANY($1)")
        .bind(ids)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

// ---------------------------------------------------------------- reading

pub async fn get_job(ex: impl PgExecutor<'_>, id: Uuid) -> sqlx::Result<Option<Job>> {
    let sql = format!("SELECT {JOB_COLUMNS} FROM jobs WHERE id = $1");
    Ok(sqlx::query_as::<_, JobRow>(&sql)
        .bind(id)
        .fetch_optional(ex)
        .await?
        .map(Job::from))
}

/// A page of [`list_jobs`]: the jobs, and whether more match after them.
pub struct JobsPage {
    pub jobs: Vec<Job>,
    pub more: bool,
}

#[derive(sqlx::FromRow)]
struct PageRow {
    #[sqlx(flatten)]
    job: JobRow,
    more: bool,
}

/// Newest first; `after` is the `(created_at, id)` of the last job of the
/// previous page (keyset pagination: stable while jobs are inserted). At
/// most `limit` jobs, and after the first only as many as keep the text of
/// their payloads, results and errors within `max_bytes`.
///
/// One statement. Of the next `limit + 1` jobs (the extra one says whether
/// there is more), a running sum of stored sizes (`pg_column_size`, cheap:
/// a toasted value's header; never more than the text's length + 4) first
/// drops the jobs that cannot fit; the exact text lengths (json → text is an
/// I/O conversion, which reads the value) are summed only for the rest; then
/// only the jobs of the page are read in full.
pub async fn list_jobs(
    ex: impl PgExecutor<'_>,
    status: Option<JobStatus>,
    after: Option<(DateTime<Utc>, Uuid)>,
    limit: i64,
    max_bytes: i64,
) -> sqlx::Result<JobsPage> {
    let sql = format!(
        "WITH candidates AS ( \
             SELECT id, payload, result, error, row_number() OVER w AS n, \
                    sum(greatest(pg_column_size(payload) - 4, 0) \
                        + coalesce(greatest(pg_column_size(result) - 4, 0), 0) \
                        + coalesce(greatest(pg_column_size(error) - 4, 0), 0)) OVER w AS at_least \
             FROM jobs \
             WHERE ($1::job_status IS NULL OR status = $1) \
               AND ($2::timestamptz IS NULL OR (created_at, id) < ($2, $3)) \
             WINDOW w AS (ORDER BY created_at DESC, id DESC ROWS UNBOUNDED PRECEDING) \
             ORDER BY created_at DESC, id DESC LIMIT $4 + 1 \
         ), sized AS ( \
             SELECT id, n, sum(octet_length(payload::text) + coalesce(octet_length(result::text), 0) \
                               + coalesce(octet_length(error), 0)) \
                           OVER (ORDER BY n ROWS UNBOUNDED PRECEDING) AS bytes \
             FROM candidates WHERE n <= $4 AND (n = 1 OR at_least <= $5) \
         ), page AS ( \
             SELECT id FROM sized WHERE n = 1 OR bytes <= $5 \
         ) \
         SELECT {JOB_COLUMNS}, (SELECT count(*) FROM candidates) > (SELECT count(*) FROM page) AS more \
         FROM jobs WHERE id = ANY(ARRAY(SELECT id FROM page)) \
         ORDER BY created_at DESC, id DESC"
    );
    let rows = sqlx::query_as::<_, PageRow>(&sql)
        .bind(status)
        .bind(after.map(|a| a.0))
        .bind(after.map(|a| a.1))
        .bind(limit)
        .bind(max_bytes)
        .fetch_all(ex)
        .await?;
    let more = rows.first().is_some_and(|r| r.more);
    Ok(JobsPage {
        jobs: rows.into_iter().map(|r| Job::from(r.job)).collect(),
        more,
    })
}

pub async fn job_events(ex: impl PgExecutor<'_>, id: Uuid) -> sqlx::Result<Vec<JobEvent>> {
    sqlx::query_as(
        "SELECT at, from_status AS \"from\", to_status AS \"to\", attempt, reason \
         FROM job_events WHERE job_id = $1 ORDER BY id",
    )
    .bind(id)
    .fetch_all(ex)
    .await
}

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Counts {
    pub by_status: Vec<(JobStatus, i64)>,
}

impl Counts {
    pub fn get(&self, status: JobStatus) -> i64 {
        self.by_status.iter().find(|(s, _)| *s == status).map_or(0, |(_, n)| *n)
    }
}

/// Jobs per status, from the appended deltas (no scan of the jobs table).
pub async fn counts(ex: impl PgExecutor<'_>) -> sqlx::Result<Counts> {
    let rows: Vec<(JobStatus, i64)> =
        sqlx::query_as("SELECT status, sum(delta)::bigint FROM job_count_deltas GROUP BY status")
            .fetch_all(ex)
            .await?;
    Ok(Counts { by_status: rows })
}

/// Folds the per-status deltas into one row per status.
pub async fn compact_counts(ex: impl PgExecutor<'_>) -> sqlx::Result<()> {
    sqlx::query("SELECT compact_job_counts()").execute(ex).await?;
    Ok(())
}

// ------------------------------------------------------------ transitions

/// One change of a job's state, applied only if the job is in one of `from`
/// (and, when given, at that attempt): the attempt number fences off stale
/// actors, such as the callback of an earlier attempt.
pub struct Transition<'a> {
    pub from: &'a [JobStatus],
    pub attempt: Option<i32>,
    pub to: JobStatus,
    pub reason: &'a str,
    pub error: Option<&'a str>,
    pub result: Option<&'a RawValue>,
    /// The downstream refused the submission with 429/503: it uses no
    /// attempt (`busy_refusals` is incremented; the attempt number is not
    /// reused, so every submission keeps its own Idempotency-Key and token).
    pub busy_refusal: bool,
    /// The downstream ran (or runs) the job: `started_at` is set if unset.
    pub started: bool,
    /// For `queued`: seconds before the job may be dispatched again.
    pub delay_secs: f64,
}

impl<'a> Transition<'a> {
    pub fn new(from: &'a [JobStatus], to: JobStatus, reason: &'a str) -> Self {
        Self {
            from,
            attempt: None,
            to,
            reason,
            error: None,
            result: None,
            busy_refusal: false,
            started: false,
            delay_secs: 0.0,
        }
    }
}

/// Applies `t` to job `id`; `None` if the job is not in a state it applies to.
/// A job that is (still) live afterwards gets the lease of a running job, its
/// `timeout_secs`: `running`, or `dispatching` after a submission whose
/// outcome is unknown.
pub async fn transition(ex: impl PgExecutor<'_>, id: Uuid, t: &Transition<'_>) -> sqlx::Result<Option<Job>> {
    let sql = format!(
        "WITH prev AS ( \
           SELECT id, status FROM jobs \
           WHERE id = $1 AND ($2::int IS NULL OR attempts = $2) AND status = ANY($3::job_status[]) \
           FOR UPDATE), \
         upd AS ( \
           UPDATE jobs j SET \
             status = $4, \
             busy_refusals = j.busy_refusals + $8::int, \
             error = $6, \
             result = COALESCE($7::text::json, j.result), \
             started_at = CASE WHEN $10 THEN COALESCE(j.started_at, now()) ELSE j.started_at END, \
             finished_at = CASE WHEN $4 IN ('succeeded', 'failed', 'timed_out', 'cancelled') THEN now() END, \
             lease_expires_at = CASE WHEN $4 IN ('dispatching', 'running') \
                                     THEN now() + make_interval(secs => j.timeout_secs) END, \
             available_at = now() + make_interval(secs => $9) \
           FROM prev WHERE j.id = prev.id \
           RETURNING j.*, prev.status AS from_status), \
         ev AS (INSERT INTO job_events (job_id, from_status, to_status, attempt, reason) \
                SELECT id, from_status, status, attempts, $5 FROM upd) \
         SELECT {JOB_COLUMNS} FROM upd"
    );
    let row = sqlx::query_as::<_, JobRow>(&sql)
        .bind(id)
        .bind(t.attempt)
        .bind(t.from)
        .bind(t.to)
        .bind(t.reason)
        .bind(t.error)
        .bind(t.result.map(RawValue::get))
        .bind(i32::from(t.busy_refusal))
        .bind(t.delay_secs)
        .bind(t.started)
        .fetch_optional(ex)
        .await?;
    Ok(row.map(Job::from))
}

/// Extends the lease of a live job at this attempt by its timeout (never
/// shortening it). A heartbeat is news from the downstream: a `dispatching`
/// job (its submission still in flight, or its outcome unknown) becomes
/// `running`, with an event.
pub async fn heartbeat(ex: impl PgExecutor<'_>, id: Uuid, attempt: i32) -> sqlx::Result<Option<Job>> {
    let sql = format!(
        "WITH prev AS ( \
           SELECT id, status FROM jobs \
           WHERE id = $1 AND attempts = $2 AND status IN ('dispatching', 'running') FOR UPDATE), \
         upd AS ( \
           UPDATE jobs j SET status = 'running', started_at = COALESCE(j.started_at, now()), \
             lease_expires_at = GREATEST(j.lease_expires_at, now() + make_interval(secs => j.timeout_secs)) \
           FROM prev WHERE j.id = prev.id \
           RETURNING j.*, prev.status AS from_status), \
         ev AS (INSERT INTO job_events (job_id, from_status, to_status, attempt, reason) \
                SELECT id, from_status, status, attempts, 'heartbeat' FROM upd WHERE from_status <> status) \
         SELECT {JOB_COLUMNS} FROM upd"
    );
    Ok(sqlx::query_as::<_, JobRow>(&sql)
        .bind(id)
        .bind(attempt)
        .fetch_optional(ex)
        .await?
        .map(Job::from))
}

/// The attempt a live credential must be for, and the job's status.
pub async fn attempt_of(ex: impl PgExecutor<'_>, id: Uuid) -> sqlx::Result<Option<(i32, JobStatus)>> {
    sqlx::query_as("SELECT attempts, status FROM jobs WHERE id = $1")
        .bind(id)
        .fetch_optional(ex)
        .await
}

/// What a callback credential is checked against: the job's current
/// attempt, its status and when it finished.
pub struct CredentialState {
    pub attempt: i32,
    pub status: JobStatus,
    pub finished_at: Option<DateTime<Utc>>,
}

pub async fn credential_state(ex: impl PgExecutor<'_>, id: Uuid) -> sqlx::Result<Option<CredentialState>> {
    let row: Option<(i32, JobStatus, Option<DateTime<Utc>>)> =
        sqlx::query_as("SELECT attempts, status, finished_at FROM jobs WHERE id = $1")
            .bind(id)
            .fetch_optional(ex)
            .await?;
    Ok(row.map(|(attempt, status, finished_at)| CredentialState {
        attempt,
        status,
        finished_at,
    }))
}

// ----------------------------------------------------------- the drain

/// A job whose slot was reserved: it is now `dispatching` at `attempt`.
#[derive(Debug)]
pub struct Reserved {
    pub id: Uuid,
    /// The number of this submission (the fencing token).
    pub attempt: i32,
    /// Attempts used, this one included (busy refusals use none).
    pub attempts_used: i32,
    pub payload: Box<RawValue>,
    pub max_attempts: i32,
    /// The lease of the running job, in seconds.
    pub timeout_secs: i32,
}

/// The result of one reservation: the jobs that got a slot, and, if the
/// downstream asked not to be sent anything yet (a `Retry-After` in force),
/// until when.
#[derive(Debug)]
pub struct Reservation {
    pub jobs: Vec<Reserved>,
    pub busy_until: Option<DateTime<Utc>>,
}

/// Reserves slots for as many of `candidates` (queued and due) as the limit
/// allows, marking them `dispatching`. This is the only place a job becomes
/// live, and it runs under the gate lock: the live count read here cannot be
/// changed by another reservation until this transaction commits. While a
/// downstream's `Retry-After` is in force (`gate.busy_until`, written under
/// the same lock) nothing is reserved, whatever a drain saw before.
pub async fn reserve(pool: &PgPool, candidates: &[Uuid], dispatch_lease_secs: f64) -> sqlx::Result<Reservation> {
    let mut tx = pool.begin().await?;
    // The argument below needs READ COMMITTED whatever the server's default
    // (under REPEATABLE READ the count would miss reservations committed
    // while this one waited for the lock).
    sqlx::query("SET TRANSACTION ISOLATION LEVEL READ COMMITTED")
        .execute(&mut *tx)
        .await?;
    // Statement 1 takes the lock (and reads the latest Retry-After); statement
    // 2 starts after it is granted, so its snapshot sees every reservation
    // committed before.
    let busy_until: Option<DateTime<Utc>> =
        sqlx::query_scalar("SELECT CASE WHEN busy_until > now() THEN busy_until END FROM gate FOR UPDATE")
            .fetch_one(&mut *tx)
            .await?;
    if busy_until.is_some() {
        tx.commit().await?;
        return Ok(Reservation {
            jobs: Vec::new(),
            busy_until,
        });
    }
    let rows: Vec<(Uuid, i32, i32, String, i32, i32)> = sqlx::query_as(
        "WITH free AS ( \
           SELECT GREATEST((SELECT max_concurrency FROM gate) \
                  - (SELECT count(*) FROM jobs WHERE status IN ('dispatching', 'running')), 0) AS n), \
         picked AS ( \
           SELECT id FROM jobs \
           WHERE id = ANY($1) AND status = 'queued' AND available_at <= now() \
           ORDER BY created_at, id LIMIT (SELECT n FROM free) \
           FOR UPDATE), \
         upd AS ( \
           UPDATE jobs j SET status = 'dispatching', attempts = j.attempts + 1, \
                  lease_expires_at = now() + make_interval(secs => $2) \
           FROM picked WHERE j.id = picked.id \
           RETURNING j.id, j.attempts, j.attempts - j.busy_refusals AS used, j.payload::text AS payload, \
                     j.max_attempts, j.timeout_secs), \
         ev AS (INSERT INTO job_events (job_id, from_status, to_status, attempt, reason) \
                SELECT id, 'queued', 'dispatching', attempts, 'slot reserved by drain' FROM upd) \
         SELECT id, attempts, used, payload, max_attempts, timeout_secs FROM upd",
    )
    .bind(candidates)
    .bind(dispatch_lease_secs)
    .fetch_all(&mut *tx)
    .await?;
    tx.commit().await?;
    let jobs = rows
        .into_iter()
        .map(
            |(id, attempt, attempts_used, payload, max_attempts, timeout_secs)| Reserved {
                id,
                attempt,
                attempts_used,
                payload: RawValue::from_string(payload).expect("a json column holds valid JSON"),
                max_attempts,
                timeout_secs,
            },
        )
        .collect();
    Ok(Reservation { jobs, busy_until })
}

/// What a drain needs to know of a received message's job.
#[derive(Debug, Clone, Copy, sqlx::FromRow)]
pub struct DueState {
    pub id: Uuid,
    pub status: JobStatus,
    /// Earliest next dispatch (back-off, Retry-After).
    pub available_at: DateTime<Utc>,
    /// While live: when its slot is reclaimed without news.
    pub lease_expires_at: Option<DateTime<Utc>>,
}

/// Status, due time and lease of the jobs named by received messages.
pub async fn due_states(ex: impl PgExecutor<'_>, ids: &[Uuid]) -> sqlx::Result<Vec<DueState>> {
    sqlx::query_as("SELECT id, status, available_at, lease_expires_at FROM jobs WHERE id = ANY($1)")
        .bind(ids)
        .fetch_all(ex)
        .await
}

/// Whether any queued job is due now (its message should be receivable).
pub async fn any_queued_due(ex: impl PgExecutor<'_>) -> sqlx::Result<bool> {
    sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM jobs WHERE status = 'queued' AND available_at <= now())")
        .fetch_one(ex)
        .await
}

/// Frees the slots of live jobs whose lease ran out: a running job becomes
/// `timed_out`; a job stuck in `dispatching` (its replica died mid-submission)
/// goes back to `queued` (its SQS message was never deleted) or, out of
/// attempts, `failed`. Returns how many jobs went to each status.
pub async fn reclaim_expired(ex: impl PgExecutor<'_>) -> sqlx::Result<Vec<(JobStatus, i64)>> {
    sqlx::query_as(
        "WITH expired AS ( \
           SELECT id, status FROM jobs \
           WHERE status IN ('dispatching', 'running') AND lease_expires_at < now() \
           FOR UPDATE SKIP LOCKED), \
         upd AS ( \
           UPDATE jobs j SET \
             status = CASE WHEN e.status = 'running' THEN 'timed_out'::job_status \
                           WHEN j.attempts - j.busy_refusals >= j.max_attempts THEN 'failed'::job_status \
                           ELSE 'queued'::job_status END, \
             error = CASE WHEN e.status = 'running' THEN 'lease expired: no callback or heartbeat in time' \
                          ELSE 'dispatch lease expired: no answer, callback or heartbeat for the submission' END, \
             finished_at = CASE WHEN e.status = 'running' OR j.attempts - j.busy_refusals >= j.max_attempts \
                                THEN now() END, \
             lease_expires_at = NULL, \
             available_at = now() \
           FROM expired e WHERE j.id = e.id \
           RETURNING j.id, e.status AS from_status, j.status, j.attempts), \
         ev AS (INSERT INTO job_events (job_id, from_status, to_status, attempt, reason) \
                SELECT id, from_status, status, attempts, \
                       CASE WHEN from_status = 'running' THEN 'lease expired' ELSE 'dispatch lease expired' END \
                FROM upd) \
         SELECT status, count(*) FROM upd GROUP BY status",
    )
    .fetch_all(ex)
    .await
}

/// The database's clock minus `secs`: a fixed cut-off for one requeue run.
pub async fn now_minus(ex: impl PgExecutor<'_>, secs: f64) -> sqlx::Result<DateTime<Utc>> {
    sqlx::query_scalar("SELECT now() - make_interval(secs => $1)")
        .bind(secs)
        .fetch_one(ex)
        .await
}

/// Queued jobs whose message was last sent before `sent_before`, oldest
/// first. A job whose message is re-sent moves past the cut-off, so a loop
/// over this with a fixed cut-off ends.
pub async fn stale_queued(ex: impl PgExecutor<'_>, sent_before: DateTime<Utc>, limit: i64) -> sqlx::Result<Vec<Uuid>> {
    sqlx::query_scalar(
        "SELECT id FROM jobs WHERE status = 'queued' AND enqueued_at < $1 \
         ORDER BY enqueued_at, id LIMIT $2",
    )
    .bind(sent_before)
    .bind(limit)
    .fetch_all(ex)
    .await
}

/// Records that these jobs' messages were just sent.
pub async fn mark_enqueued(ex: impl PgExecutor<'_>, ids: &[Uuid]) -> sqlx::Result<()> {
    sqlx::query("UPDATE jobs SET enqueued_at = now() WHERE id = ANY($1)")
        .bind(ids)
        .execute(ex)
        .await?;
    Ok(())
}

/// Jobs per status counted from the rows (for checks and tests; `counts` is
/// the fast path).
pub async fn count_rows(ex: impl PgExecutor<'_>) -> sqlx::Result<Vec<(JobStatus, i64)>> {
    sqlx::query_as("SELECT status, count(*) FROM jobs GROUP BY status")
        .fetch_all(ex)
        .await
}
