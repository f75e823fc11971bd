//! All SQL lives here, checked against the schema at compile time (sqlx's
//! `query!` macros; the `.sqlx/` cache lets builds run without a database,
//! `SQLX_OFFLINE=true`). Functions take `impl PgExecutor` so that they work on
//! the pool or inside a transaction.
//!
//! Every change of a job's status goes through a statement that also writes
//! the job's event (a data-modifying CTE), so history and state never diverge.
//! Which changes exist, and what each does, is `lifecycle`'s business: this
//! module applies them. Status sets are the SQL functions `live_statuses()`
//! and `terminal_statuses()` (the lifecycle's `LIVE` and `TERMINAL`).

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use serde_json::value::RawValue;
use sqlx::{PgExecutor, PgPool, Postgres, Transaction};
use uuid::Uuid;

use crate::{
    domain::{DEFAULT_KEY, IdempotencyKey, Job, JobEvent, JobSpec, WaitingOn},
    lifecycle::{AttemptRef, JobStatus, Lease, Transition, reasons},
};

/// A job as read from SQL. Every query that returns jobs selects these
/// columns; `attempts` is the number of attempts used (`attempts -
/// busy_refusals`: submissions refused with 429/503 use none).
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
    key: String,
    priority: i32,
    available_at: DateTime<Utc>,
}

/// A [`JobRow`] from a `query!` record that selects the job columns (and
/// perhaps more).
macro_rules! job_row {
    ($r:expr) => {
        JobRow {
            id: $r.id,
            status: $r.status,
            payload: $r.payload,
            attempts: $r.attempts,
            created_at: $r.created_at,
            started_at: $r.started_at,
            finished_at: $r.finished_at,
            result: $r.result,
            error: $r.error,
            key: $r.key,
            priority: $r.priority,
            available_at: $r.available_at,
        }
    };
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
            key: r.key,
            priority: r.priority,
            // Filled in, for queued jobs, by `explain_waiting`.
            waiting_on: None,
            not_before: None,
            available_at: r.available_at,
        }
    }
}

/// Is Postgres there? (readiness)
pub async fn ping(ex: impl PgExecutor<'_>) -> sqlx::Result<()> {
    sqlx::query!("SELECT 1 AS one").fetch_one(ex).await?;
    Ok(())
}

// ---------------------------------------------------------------- the limit

/// Creates the limit from `MAX_CONCURRENCY` if the database has none yet.
pub async fn seed_limit(ex: impl PgExecutor<'_>, max_concurrency: u32) -> sqlx::Result<()> {
    sqlx::query!(
        "WITH seeded AS (
           INSERT INTO gate (id, max_concurrency) VALUES (TRUE, $1) ON CONFLICT (id) DO NOTHING
           RETURNING max_concurrency)
         INSERT INTO limit_history (max_concurrency, effective_concurrency, reason)
         SELECT max_concurrency, max_concurrency, $2 FROM seeded",
        max_concurrency as i32,
        LIMIT_SET_BY_CONFIG,
    )
    .execute(ex)
    .await?;
    Ok(())
}

/// `limit_history.reason` of the first limit, from `MAX_CONCURRENCY`.
pub const LIMIT_SET_BY_CONFIG: &str = "config";
/// `limit_history.reason` of a limit set by `PUT /limits`.
pub const LIMIT_SET_BY_API: &str = "api";

/// One entry of the limit's history.
#[derive(Debug, Clone)]
pub struct LimitChange {
    pub id: i64,
    pub at: DateTime<Utc>,
    pub max_concurrency: i32,
    pub effective_concurrency: i32,
    pub reason: String,
}

/// The limit's history, newest first, before the entry `before` (a page).
pub async fn limit_history(ex: impl PgExecutor<'_>, before: Option<i64>, limit: i64) -> sqlx::Result<Vec<LimitChange>> {
    sqlx::query_as!(
        LimitChange,
        "SELECT id, at, max_concurrency, effective_concurrency, reason FROM limit_history
         WHERE $1::bigint IS NULL OR id < $1 ORDER BY id DESC LIMIT $2",
        before,
        limit
    )
    .fetch_all(ex)
    .await
}

pub async fn get_limit(ex: impl PgExecutor<'_>) -> sqlx::Result<i32> {
    sqlx::query_scalar!("SELECT max_concurrency FROM gate")
        .fetch_one(ex)
        .await
}

/// `(limit, live)`: the limit and the number of jobs holding a slot.
pub async fn capacity(ex: impl PgExecutor<'_>) -> sqlx::Result<(i32, i64)> {
    let r = sqlx::query!(
        r#"SELECT (SELECT max_concurrency FROM gate) AS "limit!",
                  (SELECT count(*) FROM jobs WHERE status = ANY(live_statuses())) AS "live!""#
    )
    .fetch_one(ex)
    .await?;
    Ok((r.limit, r.live))
}

/// What a drain needs to know before asking SQS for more, in one round trip.
#[derive(Debug, Clone, Copy)]
pub struct GateState {
    pub limit: i32,
    /// Jobs holding a slot.
    pub live: i64,
    /// The downstream asked (with Retry-After) not to be sent anything yet.
    pub busy: bool,
    /// Messages in the intake window (counted up to the `window_max` asked).
    pub window: i64,
    /// How many of them wait for a slot (neither reserved nor pending),
    /// counted up to twice the limit (all a drain's ask needs to know).
    pub waiting: i64,
}

pub async fn gate_state(ex: impl PgExecutor<'_>, window_max: i64) -> sqlx::Result<GateState> {
    sqlx::query_as!(
        GateState,
        r#"SELECT max_concurrency AS "limit!", coalesce(busy_until > now(), false) AS "busy!",
                  (SELECT count(*) FROM jobs WHERE status = ANY(live_statuses())) AS "live!",
                  (SELECT count(*) FROM (SELECT 1 FROM intake WHERE expires_at > now() LIMIT $1) w) AS "window!",
                  (SELECT count(*) FROM (SELECT 1 FROM intake WHERE NOT reserved AND NOT pending AND expires_at > now()
                                         LIMIT 2 * max_concurrency) w) AS "waiting!"
           FROM gate"#,
        window_max
    )
    .fetch_one(ex)
    .await
}

/// Records a Retry-After: nothing is submitted before `now + secs` (an
/// earlier, longer pause is kept).
pub async fn pause_downstream(ex: impl PgExecutor<'_>, secs: f64) -> sqlx::Result<()> {
    sqlx::query!(
        "UPDATE gate SET busy_until = GREATEST(coalesce(busy_until, now()), now() + make_interval(secs => $1))",
        secs
    )
    .execute(ex)
    .await?;
    Ok(())
}

/// The limits the API shows and changes (`GET/PUT /limits`).
#[derive(Debug, Clone, Copy)]
pub struct LimitSettings {
    pub max_concurrency: i32,
    pub key_max_concurrency: Option<i32>,
}

pub async fn limit_settings(ex: impl PgExecutor<'_>) -> sqlx::Result<LimitSettings> {
    sqlx::query_as!(LimitSettings, "SELECT max_concurrency, key_max_concurrency FROM gate")
        .fetch_one(ex)
        .await
}

/// Changes the limits named (`Some`); for `key_max_concurrency`, `Some(None)`
/// clears it. Takes the gate lock, so it is ordered with reservations.
pub async fn update_limits(
    ex: impl PgExecutor<'_>,
    max_concurrency: Option<i32>,
    key_max_concurrency: Option<Option<i32>>,
) -> sqlx::Result<LimitSettings> {
    // A PUT that sets max_concurrency is an entry of the history (in the
    // same statement, so under the gate's row lock, in order).
    sqlx::query_as!(
        LimitSettings,
        r#"WITH upd AS (
             UPDATE gate SET max_concurrency = coalesce($1, max_concurrency),
                             key_max_concurrency = CASE WHEN $2 THEN $3 ELSE key_max_concurrency END,
                             updated_at = now()
             RETURNING max_concurrency, key_max_concurrency),
           hist AS (
             INSERT INTO limit_history (max_concurrency, effective_concurrency, reason)
             SELECT max_concurrency, max_concurrency, $4 FROM upd WHERE $1::int IS NOT NULL)
           SELECT max_concurrency AS "max_concurrency!", key_max_concurrency FROM upd"#,
        max_concurrency,
        key_max_concurrency.is_some(),
        key_max_concurrency.flatten(),
        LIMIT_SET_BY_API,
    )
    .fetch_one(ex)
    .await
}

// ------------------------------------------------------------------ keys

/// A key: its own settings (if any) and its jobs now.
#[derive(Debug, Clone)]
pub struct KeyInfo {
    pub key: String,
    pub max_concurrency: Option<i32>,
    pub weight: f64,
    pub queued: i64,
    pub running: i64,
    pub oldest_queued_at: Option<DateTime<Utc>>,
}

/// One key, if it has jobs or settings of its own.
pub async fn get_key(ex: impl PgExecutor<'_>, key: &str) -> sqlx::Result<Option<KeyInfo>> {
    sqlx::query_as!(
        KeyInfo,
        r#"SELECT $1::text AS "key!", k.max_concurrency, coalesce(k.weight, 1) AS "weight!",
                  (SELECT count(*) FROM jobs WHERE key = $1 AND status = 'queued') AS "queued!",
                  (SELECT count(*) FROM jobs WHERE key = $1 AND status = ANY(live_statuses())) AS "running!",
                  (SELECT min(created_at) FROM jobs WHERE key = $1 AND status = 'queued') AS oldest_queued_at
           FROM (SELECT 1) one LEFT JOIN keys k ON k.key = $1
           WHERE k.key IS NOT NULL OR EXISTS (SELECT 1 FROM jobs WHERE key = $1)"#,
        key
    )
    .fetch_optional(ex)
    .await
}

/// Keys with queued or live jobs or settings of their own, in key order,
/// after `after`.
pub async fn list_keys(ex: impl PgExecutor<'_>, after: Option<&str>, limit: i64) -> sqlx::Result<Vec<KeyInfo>> {
    sqlx::query_as!(
        KeyInfo,
        r#"WITH names AS (
             SELECT key FROM keys
             UNION
             SELECT DISTINCT key FROM jobs WHERE status = 'queued' OR status = ANY(live_statuses()))
           SELECT n.key AS "key!", k.max_concurrency, coalesce(k.weight, 1) AS "weight!",
                  (SELECT count(*) FROM jobs WHERE key = n.key AND status = 'queued') AS "queued!",
                  (SELECT count(*) FROM jobs WHERE key = n.key AND status = ANY(live_statuses())) AS "running!",
                  (SELECT min(created_at) FROM jobs WHERE key = n.key AND status = 'queued') AS oldest_queued_at
           FROM names n LEFT JOIN keys k ON k.key = n.key
           WHERE $1::text IS NULL OR n.key > $1
           ORDER BY n.key LIMIT $2"#,
        after,
        limit
    )
    .fetch_all(ex)
    .await
}

/// Creates or changes a key's settings: fields given (`Some`) change, the
/// others keep their value; `max_concurrency: Some(None)` clears the cap.
/// Takes the gate lock, so a new cap is ordered with reservations.
pub async fn put_key(
    tx: &mut Transaction<'_, Postgres>,
    key: &str,
    max_concurrency: Option<Option<i32>>,
    weight: Option<f64>,
) -> sqlx::Result<()> {
    sqlx::query!("SELECT 1 AS one FROM gate FOR UPDATE")
        .fetch_one(&mut **tx)
        .await?;
    sqlx::query!(
        "INSERT INTO keys (key, max_concurrency, weight) VALUES ($1, $3, coalesce($4::float8, 1))
         ON CONFLICT (key) DO UPDATE SET
           max_concurrency = CASE WHEN $2 THEN $3 ELSE keys.max_concurrency END,
           weight = coalesce($4, keys.weight),
           updated_at = now()",
        key,
        max_concurrency.is_some(),
        max_concurrency.flatten(),
        weight,
    )
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// A key with settings of its own and what it holds (the per-key gauges).
pub struct KeyGauge {
    pub key: String,
    pub queued: i64,
    pub running: i64,
}

/// Queued and live jobs of every key with settings of its own (counted from
/// the queued and the live jobs, not from each key's history).
pub async fn key_gauges(ex: impl PgExecutor<'_>) -> sqlx::Result<Vec<KeyGauge>> {
    sqlx::query_as!(
        KeyGauge,
        r#"SELECT k.key AS "key!", coalesce(q.n, 0) AS "queued!", coalesce(l.n, 0) AS "running!"
           FROM keys k
           LEFT JOIN (SELECT key, count(*) AS n FROM jobs WHERE status = 'queued' GROUP BY key) q ON q.key = k.key
           LEFT JOIN (SELECT key, count(*) AS n FROM jobs WHERE status = ANY(live_statuses()) GROUP BY key) l
                  ON l.key = k.key
           ORDER BY k.key"#
    )
    .fetch_all(ex)
    .await
}

/// Removes a key's own settings; whether it had any.
pub async fn delete_key(ex: impl PgExecutor<'_>, key: &str) -> sqlx::Result<bool> {
    Ok(sqlx::query!("DELETE FROM keys WHERE key = $1", key)
        .execute(ex)
        .await?
        .rows_affected()
        > 0)
}

// ------------------------------------------------------- why jobs wait

/// What decides whether a queued job could go now, besides its key: the
/// limit, the live count and the downstream's Retry-After.
struct GateNow {
    limit: i32,
    live: i64,
    busy_until: Option<DateTime<Utc>>,
    now: DateTime<Utc>,
}

/// A key's cap (its own, else the gate's default, else none) and live count.
#[derive(Debug, Clone, Copy, Default)]
struct KeyRoom {
    cap: Option<i32>,
    live: i64,
}

impl GateNow {
    /// Why `job` (if queued) is waiting, and until when if that is known.
    fn explain(&self, job: &Job, key: KeyRoom) -> (Option<WaitingOn>, Option<DateTime<Utc>>) {
        if job.status != JobStatus::Queued {
            return (None, None);
        }
        if self.limit == 0 {
            (Some(WaitingOn::Paused), None)
        } else if let Some(until) = self.busy_until {
            (Some(WaitingOn::DownstreamBusy), Some(until))
        } else if job.available_at > self.now {
            (Some(WaitingOn::RetryBackoff), Some(job.available_at))
        } else if key.cap.is_some_and(|cap| key.live >= i64::from(cap)) {
            (Some(WaitingOn::KeyLimit), None)
        } else if self.live >= i64::from(self.limit) {
            (Some(WaitingOn::GlobalLimit), None)
        } else {
            (Some(WaitingOn::Queue), None)
        }
    }
}

/// Fills in `waiting_on` and `not_before` of the queued jobs among `jobs`
/// (one query, and none when no job is queued).
pub async fn explain_waiting<'j>(
    ex: impl PgExecutor<'_>,
    jobs: impl IntoIterator<Item = &'j mut Job>,
) -> sqlx::Result<()> {
    let mut jobs: Vec<&mut Job> = jobs.into_iter().collect();
    let mut keys: Vec<String> = jobs
        .iter()
        .filter(|j| j.status == JobStatus::Queued)
        .map(|j| j.key.clone())
        .collect();
    if keys.is_empty() {
        return Ok(());
    }
    keys.sort();
    keys.dedup();
    let r = sqlx::query!(
        r#"SELECT g.max_concurrency, CASE WHEN g.busy_until > now() THEN g.busy_until END AS busy_until,
                  now() AS "now!",
                  (SELECT count(*) FROM jobs WHERE status = ANY(live_statuses())) AS "live!",
                  ARRAY(SELECT coalesce(k.max_concurrency, g.key_max_concurrency)
                        FROM unnest($1::text[]) WITH ORDINALITY u(key, o) LEFT JOIN keys k ON k.key = u.key
                        ORDER BY u.o) AS "caps!: Vec<Option<i32>>",
                  ARRAY(SELECT (SELECT count(*) FROM jobs l WHERE l.key = u.key AND l.status = ANY(live_statuses()))
                        FROM unnest($1::text[]) WITH ORDINALITY u(key, o) ORDER BY u.o) AS "lives!: Vec<i64>"
           FROM gate g"#,
        &keys
    )
    .fetch_one(ex)
    .await?;
    let now = GateNow {
        limit: r.max_concurrency,
        live: r.live,
        busy_until: r.busy_until,
        now: r.now,
    };
    let rooms: HashMap<String, KeyRoom> = keys
        .into_iter()
        .zip(r.caps.into_iter().zip(r.lives))
        .map(|(key, (cap, live))| (key, KeyRoom { cap, live }))
        .collect();
    for job in jobs.iter_mut() {
        let room = rooms.get(&job.key).copied().unwrap_or_default();
        (job.waiting_on, job.not_before) = now.explain(job, room);
    }
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
    let ids: Vec<Uuid> = jobs.iter().map(|j| j.id).collect();
    let payloads: Vec<String> = jobs.iter().map(|j| j.spec.payload.get().to_owned()).collect();
    let timeouts: Vec<i32> = jobs
        .iter()
        .map(|j| j.spec.timeout_secs.unwrap_or(default_timeout_secs) as i32)
        .collect();
    let max_attempts: Vec<i32> = jobs
        .iter()
        .map(|j| j.spec.max_attempts.unwrap_or(default_max_attempts) as i32)
        .collect();
    let keys: Vec<Option<String>> = jobs.iter().map(|j| j.key.map(|k| k.as_str().to_owned())).collect();
    let flow_keys: Vec<String> = jobs.iter().map(|j| j.spec.key.as_str().to_owned()).collect();
    let priorities: Vec<i32> = jobs.iter().map(|j| j.spec.priority).collect();
    // The statement also reads why the new jobs wait (the same facts as
    // `explain_waiting`, in the same snapshot): no second round trip. Only
    // for the first item's key (a single submission's, and usually a
    // batch's): facts per key of the input, like joins, would make Postgres
    // plan the statement anew on every call (0.4 ms each).
    let rows = sqlx::query!(
        r#"WITH input AS (
             SELECT * FROM unnest($1::uuid[], $2::text[], $3::int[], $4::int[], $5::text[], $6::bytea[],
                                  $8::text[], $9::int[])
               WITH ORDINALITY AS t(id, payload, timeout_secs, max_attempts, idempotency_key, request_hash,
                                    key, priority, ord)),
           ins AS (
             INSERT INTO jobs (id, payload, timeout_secs, max_attempts, idempotency_key, request_hash, key, priority)
             SELECT id, payload::json, timeout_secs, max_attempts, idempotency_key, request_hash, key, priority
             FROM input ORDER BY idempotency_key, ord
             ON CONFLICT (idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING
             RETURNING *),
           ev AS (INSERT INTO job_events (job_id, from_status, to_status, attempt, reason)
                  SELECT id, NULL, status, 0, $7 FROM ins)
           -- Scalar subqueries (each run once), not joins: joined to the
           -- inserted rows they would make Postgres plan the statement anew
           -- on every call (its generic plan then looks dearer).
           SELECT i.id AS "id!", i.status AS "status!: JobStatus", i.payload::text AS "payload!",
                  i.attempts - i.busy_refusals AS "attempts!", i.created_at AS "created_at!", i.started_at,
                  i.finished_at, i.result::text AS result, i.error, i.key AS "key!", i.priority AS "priority!",
                  i.available_at AS "available_at!",
                  (SELECT max_concurrency FROM gate) AS "limit!",
                  (SELECT CASE WHEN busy_until > now() THEN busy_until END FROM gate) AS busy_until,
                  now() AS "now!",
                  (SELECT count(*) FROM jobs WHERE status = ANY(live_statuses())) AS "live!",
                  CASE WHEN i.key = $10 THEN
                    (SELECT coalesce(k.max_concurrency, g.key_max_concurrency)
                     FROM gate g LEFT JOIN keys k ON k.key = $10) END AS key_cap,
                  CASE WHEN i.key = $10 THEN
                    (SELECT count(*) FROM jobs l WHERE l.key = $10 AND l.status = ANY(live_statuses())) END
                    AS "key_live?"
           FROM ins i"#,
        &ids,
        &payloads,
        &timeouts,
        &max_attempts,
        &keys as &[Option<String>],
        &fingerprints as &[Option<Vec<u8>>],
        Transition::submitted(),
        &flow_keys,
        &priorities,
        flow_keys.first().map(String::as_str).unwrap_or(DEFAULT_KEY),
    )
    .fetch_all(&mut **tx)
    .await?;
    let mut inserted: HashMap<Uuid, Job> = HashMap::with_capacity(rows.len());
    for r in rows {
        let now = GateNow {
            limit: r.limit,
            live: r.live,
            busy_until: r.busy_until,
            now: r.now,
        };
        let key_room = r.key_live.map(|live| KeyRoom { cap: r.key_cap, live });
        let mut job = Job::from(job_row!(r));
        // Jobs of other keys than the first are explained by the caller.
        if let Some(room) = key_room {
            (job.waiting_on, job.not_before) = now.explain(&job, room);
        }
        inserted.insert(job.id, job);
    }

    // Items that inserted nothing: their key was taken (before, or earlier in this input).
    let taken: Vec<String> = jobs
        .iter()
        .filter(|j| !inserted.contains_key(&j.id))
        .filter_map(|j| j.key.map(|k| k.as_str().to_owned()))
        .collect();
    let mut holders: HashMap<String, (Job, Option<Vec<u8>>)> = HashMap::new();
    if !taken.is_empty() {
        let rows = sqlx::query!(
            r#"SELECT id, status AS "status: JobStatus", payload::text AS "payload!",
                      attempts - busy_refusals AS "attempts!", created_at, started_at, finished_at,
                      result::text AS result, error, key, priority, available_at, idempotency_key AS "idempotency_key!", request_hash
               FROM jobs WHERE idempotency_key = ANY($1)"#,
            &taken
        )
        .fetch_all(&mut **tx)
        .await?;
        for r in rows {
            let job = job_row!(r).into();
            holders.insert(r.idempotency_key, (job, r.request_hash));
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
        key: job.key.clone(),
        ..*job
    }
}

/// Removes jobs whose SQS message could not be sent, within the transaction
/// that inserted them (so they never become visible).
pub async fn delete_jobs(tx: &mut Transaction<'_, Postgres>, ids: &[Uuid]) -> sqlx::Result<()> {
    sqlx::query!("DELETE FROM jobs WHERE id = ANY($1)", ids)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

// ---------------------------------------------------------------- reading

pub async fn get_job(ex: impl PgExecutor<'_>, id: Uuid) -> sqlx::Result<Option<Job>> {
    Ok(sqlx::query_as!(
        JobRow,
        r#"SELECT id, status AS "status: JobStatus", payload::text AS "payload!",
                  attempts - busy_refusals AS "attempts!", created_at, started_at, finished_at,
                  result::text AS result, error, key, priority, available_at
           FROM jobs WHERE id = $1"#,
        id
    )
    .fetch_optional(ex)
    .await?
    .map(Job::from))
}

/// A page of [`list_jobs`]: the jobs, and whether more match after them.
pub struct JobsPage {
    pub jobs: Vec<Job>,
    pub more: bool,
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
    key: Option<&str>,
    after: Option<(DateTime<Utc>, Uuid)>,
    limit: i64,
    max_bytes: i64,
) -> sqlx::Result<JobsPage> {
    let rows = sqlx::query!(
        r#"WITH candidates AS (
               SELECT id, payload, result, error, row_number() OVER w AS n,
                      sum(greatest(pg_column_size(payload) - 4, 0)
                          + coalesce(greatest(pg_column_size(result) - 4, 0), 0)
                          + coalesce(greatest(pg_column_size(error) - 4, 0), 0)) OVER w AS at_least
               FROM jobs
               WHERE ($1::job_status IS NULL OR status = $1)
                 AND ($2::timestamptz IS NULL OR (created_at, id) < ($2, $3))
                 AND ($6::text IS NULL OR key = $6)
               WINDOW w AS (ORDER BY created_at DESC, id DESC ROWS UNBOUNDED PRECEDING)
               ORDER BY created_at DESC, id DESC LIMIT $4::bigint + 1
           ), sized AS (
               SELECT id, n, sum(octet_length(payload::text) + coalesce(octet_length(result::text), 0)
                                 + coalesce(octet_length(error), 0))
                             OVER (ORDER BY n ROWS UNBOUNDED PRECEDING) AS bytes
               FROM candidates WHERE n <= $4 AND (n = 1 OR at_least <= $5)
           ), page AS (
               SELECT id FROM sized WHERE n = 1 OR bytes <= $5
           )
           SELECT id, status AS "status: JobStatus", payload::text AS "payload!",
                  attempts - busy_refusals AS "attempts!", created_at, started_at, finished_at,
                  result::text AS result, error, key, priority, available_at,
                  (SELECT count(*) FROM candidates) > (SELECT count(*) FROM page) AS "more!"
           FROM jobs WHERE id = ANY(ARRAY(SELECT id FROM page))
           ORDER BY created_at DESC, id DESC"#,
        status as Option<JobStatus>,
        after.map(|a| a.0),
        after.map(|a| a.1),
        limit,
        max_bytes,
        key
    )
    .fetch_all(ex)
    .await?;
    let more = rows.first().is_some_and(|r| r.more);
    let jobs = rows.into_iter().map(|r| Job::from(job_row!(r))).collect();
    Ok(JobsPage { jobs, more })
}

pub async fn job_events(ex: impl PgExecutor<'_>, id: Uuid) -> sqlx::Result<Vec<JobEvent>> {
    sqlx::query_as!(
        JobEvent,
        r#"SELECT at, from_status AS "from: JobStatus", to_status AS "to: JobStatus", attempt, reason
           FROM job_events WHERE job_id = $1 ORDER BY id"#,
        id
    )
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

/// Jobs per status, from the counts a trigger keeps per status in 64 slots
/// (`job_counts`): no scan of the jobs table, the same cost whatever the
/// throughput or the number of jobs.
pub async fn counts(ex: impl PgExecutor<'_>) -> sqlx::Result<Counts> {
    let rows =
        sqlx::query!(r#"SELECT status AS "status: JobStatus", sum(n)::bigint AS "n!" FROM job_counts GROUP BY status"#)
            .fetch_all(ex)
            .await?;
    Ok(Counts {
        by_status: rows.into_iter().map(|r| (r.status, r.n)).collect(),
    })
}

// ------------------------------------------------------------ transitions

/// Applies `t` (see `lifecycle`) to job `id`; `None` if the job is not in a
/// state (or at the attempt) it applies to.
pub async fn transition(ex: impl PgExecutor<'_>, id: Uuid, t: &Transition<'_>) -> sqlx::Result<Option<Job>> {
    debug_assert!(t.attempt.is_none_or(|a| a.job == id));
    Ok(sqlx::query_as!(
        JobRow,
        r#"WITH prev AS (
             SELECT id, status FROM jobs
             WHERE id = $1 AND ($2::int IS NULL OR attempts = $2) AND status = ANY($3::job_status[])
             FOR UPDATE),
           upd AS (
             UPDATE jobs j SET
               status = $4,
               busy_refusals = j.busy_refusals + $8::int,
               error = $6,
               result = COALESCE($7::text::json, j.result),
               started_at = CASE WHEN $10 THEN COALESCE(j.started_at, now()) ELSE j.started_at END,
               finished_at = CASE WHEN $4 = ANY(terminal_statuses()) THEN now() END,
               lease_expires_at = CASE WHEN $11 THEN now() + make_interval(secs => j.timeout_secs) END,
               available_at = now() + make_interval(secs => $9)
             FROM prev WHERE j.id = prev.id
             RETURNING j.*, prev.status AS from_status),
           ev AS (INSERT INTO job_events (job_id, from_status, to_status, attempt, reason)
                  SELECT id, from_status, status, attempts, $5 FROM upd),
           -- Back to the queue: its message is released, so it leaves the
           -- intake window (and enters again only with a new delivery).
           out_of_window AS (DELETE FROM intake WHERE job_id = $1 AND $4 = 'queued'::job_status
                             AND EXISTS (SELECT 1 FROM upd))
           SELECT id AS "id!", status AS "status!: JobStatus", payload::text AS "payload!",
                  attempts - busy_refusals AS "attempts!", created_at AS "created_at!", started_at, finished_at,
                  result::text AS result, error, key AS "key!", priority AS "priority!", available_at AS "available_at!"
           FROM upd"#,
        id,
        t.attempt.map(|a| a.attempt),
        t.from as &[JobStatus],
        t.to as JobStatus,
        t.reason,
        t.error,
        t.result.map(RawValue::get),
        i32::from(t.busy_refusal),
        t.delay.as_secs_f64(),
        t.started,
        t.lease == Lease::JobTimeout,
    )
    .fetch_optional(ex)
    .await?
    .map(Job::from))
}

/// Extends the lease of a live job at this attempt by its timeout (never
/// shortening it). A heartbeat is news from the downstream: a `dispatching`
/// job (its submission still in flight, or its outcome unknown) becomes
/// `running`, with an event.
pub async fn heartbeat(ex: impl PgExecutor<'_>, attempt: AttemptRef) -> sqlx::Result<Option<Job>> {
    Ok(sqlx::query_as!(
        JobRow,
        r#"WITH prev AS (
             SELECT id, status FROM jobs
             WHERE id = $1 AND attempts = $2 AND status = ANY(live_statuses()) FOR UPDATE),
           upd AS (
             UPDATE jobs j SET status = 'running', started_at = COALESCE(j.started_at, now()),
               lease_expires_at = GREATEST(j.lease_expires_at, now() + make_interval(secs => j.timeout_secs))
             FROM prev WHERE j.id = prev.id
             RETURNING j.*, prev.status AS from_status),
           ev AS (INSERT INTO job_events (job_id, from_status, to_status, attempt, reason)
                  SELECT id, from_status, status, attempts, $3 FROM upd WHERE from_status <> status)
           SELECT id AS "id!", status AS "status!: JobStatus", payload::text AS "payload!",
                  attempts - busy_refusals AS "attempts!", created_at AS "created_at!", started_at, finished_at,
                  result::text AS result, error, key AS "key!", priority AS "priority!", available_at AS "available_at!"
           FROM upd"#,
        attempt.job,
        attempt.attempt,
        reasons::HEARTBEAT,
    )
    .fetch_optional(ex)
    .await?
    .map(Job::from))
}

/// The job's current attempt, its status and when it finished: what a
/// callback credential is checked against.
pub struct CredentialState {
    pub attempt: AttemptRef,
    pub status: JobStatus,
    pub finished_at: Option<DateTime<Utc>>,
}

pub async fn credential_state(ex: impl PgExecutor<'_>, id: Uuid) -> sqlx::Result<Option<CredentialState>> {
    let row = sqlx::query!(
        r#"SELECT attempts, status AS "status: JobStatus", finished_at FROM jobs WHERE id = $1"#,
        id
    )
    .fetch_optional(ex)
    .await?;
    Ok(row.map(|r| CredentialState {
        attempt: AttemptRef::new(id, r.attempts),
        status: r.status,
        finished_at: r.finished_at,
    }))
}

/// The status of a job, if it exists.
pub async fn status_of(ex: impl PgExecutor<'_>, id: Uuid) -> sqlx::Result<Option<JobStatus>> {
    sqlx::query_scalar!(r#"SELECT status AS "status: JobStatus" FROM jobs WHERE id = $1"#, id)
        .fetch_optional(ex)
        .await
}

// ----------------------------------------------------------- the drain

/// A job whose slot was reserved: it is now `dispatching` at `attempt`.
#[derive(Debug)]
pub struct Reserved {
    /// The job and the number of this submission (the fencing token).
    pub attempt: AttemptRef,
    /// Attempts used, this one included (busy refusals use none).
    pub attempts_used: i32,
    pub payload: Box<RawValue>,
    pub max_attempts: i32,
    /// The lease of the running job, in seconds.
    pub timeout_secs: i32,
}

impl Reserved {
    pub fn id(&self) -> Uuid {
        self.attempt.job
    }
}

/// The result of one reservation: the jobs that got a slot, and, if the
/// downstream asked not to be sent anything yet (a `Retry-After` in force),
/// until when.
#[derive(Debug)]
pub struct Reservation {
    /// The reserved jobs, each with the receipt of its message.
    pub jobs: Vec<(Reserved, Receipt)>,
    pub busy_until: Option<DateTime<Utc>>,
    /// Of the received messages offered, the jobs now in the intake window;
    /// the drain does nothing more with their messages.
    pub taken_in: Vec<TakenIn>,
    /// Free slots left after this reservation (the window had nothing more
    /// that may go: empty, or its keys at their caps).
    pub slots_left: i64,
}

/// The receipt of a message in the intake window, and until when it is
/// valid (the message's visibility timeout).
#[derive(Debug, Clone)]
pub struct Receipt {
    pub handle: String,
    pub expires_at: DateTime<Utc>,
}

/// A received message of a job, offered to the intake window.
pub struct Offer<'a> {
    pub job: Uuid,
    pub receipt: &'a str,
}

/// Takes received messages into the intake window (those of queued and
/// dispatching jobs, see `take_in`), then reserves slots for up to
/// `max` jobs of the whole window, marking them `dispatching`. This is the
/// only place a job becomes live, and it runs under the gate lock: the live
/// counts read here cannot be changed by another reservation until this
/// transaction commits. While a downstream's `Retry-After` is in force
/// (`gate.busy_until`, written under the same lock) nothing is reserved,
/// whatever a drain saw before.
///
/// Fairness: each key may take `cap - live` more (its own cap, else the
/// gate's `key_max_concurrency`, else no cap); the slots are given out by
/// weighted share of occupied slots — `(live + n - 1/2) / weight` for a
/// key's n-th waiting job (Sainte-Laguë's divisors: `live + n` would hand
/// the heavier key the rounding every time: 8 of 10 slots for weights 1:3),
/// ties between keys broken at random (so a half slot is held half
/// of the time, not always by the same key) — and within a key by
/// `created_at - priority`. Only a
/// key's first `free` jobs are looked at (an index range per key, the keys
/// found by a loose index scan), so a reservation costs the same whatever
/// the backlog of one key.
pub async fn reserve(pool: &PgPool, offers: &[Offer<'_>], window: &WindowTimes, max: i64) -> sqlx::Result<Reservation> {
    // The argument below needs READ COMMITTED whatever the server's default
    // (under REPEATABLE READ the count would miss reservations committed
    // while this one waited for the lock).
    // The reservation's statements use their cached generic plans: chosen by
    // cost, Postgres would plan the fair pick anew on every call (1.2 ms,
    // under the gate lock). A generic plan cannot know that the pick is at
    // most `max` rows, and joined it to `jobs` and `intake` by hash, reading
    // every row of both: 18 ms per reservation with 10,000 queued jobs
    // (EXPLAIN ANALYZE), growing with the tables. Every join here is a few
    // rows against a primary key, so nested loops it is: 0.7 ms. The BEGIN
    // and all the settings in one round trip (no arguments: the simple
    // query protocol).
    let mut tx = pool
        .begin_with(
            "BEGIN ISOLATION LEVEL READ COMMITTED; SET LOCAL plan_cache_mode = force_generic_plan; \
             SET LOCAL enable_hashjoin = off; SET LOCAL enable_mergejoin = off",
        )
        .await?;
    // Statement 1 takes the lock (and reads the latest Retry-After); the
    // next ones start after it is granted, so their snapshots see every
    // reservation committed before.
    if max <= 0 {
        // Taking messages in needs no lock: only reserving does.
        let taken_in = take_in(&mut tx, offers, window).await?;
        tx.commit().await?;
        return Ok(Reservation {
            jobs: Vec::new(),
            busy_until: None,
            taken_in,
            slots_left: 0,
        });
    }
    let busy_until =
        sqlx::query_scalar!("SELECT CASE WHEN busy_until > now() THEN busy_until END FROM gate FOR UPDATE")
            .fetch_one(&mut *tx)
            .await?;
    let taken_in = take_in(&mut tx, offers, window).await?;
    // Rows this transaction took in are still pending (their messages are
    // hidden for the first, short visibility only): this reservation may
    // take them, no other may until `window_ready`.
    let taken_ids: Vec<Uuid> = taken_in.iter().map(|t| t.job).collect();
    if busy_until.is_some() {
        tx.commit().await?;
        return Ok(Reservation {
            jobs: Vec::new(),
            busy_until,
            taken_in,
            slots_left: 0,
        });
    }
    let rows = sqlx::query!(
        r#"WITH RECURSIVE
           free AS (
             SELECT GREATEST(g.max_concurrency
                    - (SELECT count(*) FROM jobs WHERE status = ANY(live_statuses())), 0) AS n,
                    g.key_max_concurrency AS default_cap
             FROM gate g),
           -- The keys looked at, each with its first job that may go now
           -- (not reserved, its receipt valid long enough, not pending unless
           -- this transaction took it in, its job queued and due): at most $6
           -- keys, in key order from just after the cursor, wrapping around.
           -- A loose index scan: one probe per key, whatever its backlog.
           after_cursor AS (
             (SELECT i.key, i.turn_at, i.job_id, 1::bigint AS n FROM intake i
              WHERE i.key > (SELECT key_cursor FROM gate) AND NOT i.reserved
                AND i.expires_at > now() + make_interval(secs => $4) AND (NOT i.pending OR i.job_id = ANY($5))
                AND (SELECT j.status = 'queued' AND j.available_at <= now() FROM jobs j WHERE j.id = i.job_id)
              ORDER BY i.key, i.turn_at, i.job_id LIMIT 1)
             UNION ALL
             SELECT h.key, h.turn_at, h.job_id, a.n + 1
             FROM after_cursor a CROSS JOIN LATERAL (
               SELECT i.key, i.turn_at, i.job_id FROM intake i
               WHERE i.key > a.key AND NOT i.reserved
                 AND i.expires_at > now() + make_interval(secs => $4) AND (NOT i.pending OR i.job_id = ANY($5))
                 AND (SELECT j.status = 'queued' AND j.available_at <= now() FROM jobs j WHERE j.id = i.job_id)
               ORDER BY i.key, i.turn_at, i.job_id LIMIT 1) h
             WHERE a.n < $6),
           up_to_cursor AS (
             (SELECT i.key, i.turn_at, i.job_id, 1::bigint AS n FROM intake i
              WHERE i.key <= (SELECT key_cursor FROM gate) AND NOT i.reserved
                AND i.expires_at > now() + make_interval(secs => $4) AND (NOT i.pending OR i.job_id = ANY($5))
                AND (SELECT j.status = 'queued' AND j.available_at <= now() FROM jobs j WHERE j.id = i.job_id)
                AND (SELECT count(*) FROM after_cursor) < $6
              ORDER BY i.key, i.turn_at, i.job_id LIMIT 1)
             UNION ALL
             SELECT h.key, h.turn_at, h.job_id, u.n + 1
             FROM up_to_cursor u CROSS JOIN LATERAL (
               SELECT i.key, i.turn_at, i.job_id FROM intake i
               WHERE i.key > u.key AND i.key <= (SELECT key_cursor FROM gate) AND NOT i.reserved
                 AND i.expires_at > now() + make_interval(secs => $4) AND (NOT i.pending OR i.job_id = ANY($5))
                 AND (SELECT j.status = 'queued' AND j.available_at <= now() FROM jobs j WHERE j.id = i.job_id)
               ORDER BY i.key, i.turn_at, i.job_id LIMIT 1) h
             WHERE u.n + (SELECT count(*) FROM after_cursor) < $6),
           heads AS (
             SELECT key, turn_at, job_id FROM after_cursor
             UNION ALL
             SELECT key, turn_at, job_id FROM up_to_cursor),
           -- More keys than that: the next reservation starts after the last
           -- one looked at.
           moved AS (
             UPDATE gate SET key_cursor = c.next
             FROM (SELECT CASE WHEN (SELECT count(*) FROM heads) >= $6
                               THEN coalesce((SELECT max(key) FROM up_to_cursor), (SELECT max(key) FROM after_cursor))
                               ELSE '' END AS next) c
             WHERE gate.key_cursor IS DISTINCT FROM c.next),
           -- Each key's live jobs counted by an index probe (a join to all
           -- live jobs grouped by key would be a nested loop over both).
           room AS (
             SELECT h.key, h.turn_at, h.job_id, coalesce(k.max_concurrency, f.default_cap) AS cap,
                    coalesce(k.weight, 1) AS weight,
                    (SELECT count(*) FROM jobs j WHERE j.key = h.key AND j.status = ANY(live_statuses())) AS live,
                    LEAST(f.n, $1) AS free, random() AS tie
             FROM heads h CROSS JOIN free f LEFT JOIN keys k ON k.key = h.key),
           -- Only the keys whose first job would win a slot can win any: a
           -- key's later jobs come after its first. So at most `free` keys,
           -- the best by their first job, are looked into further.
           best AS (
             SELECT * FROM room WHERE cap IS NULL OR live < cap
             ORDER BY (live + 0.5) / weight, tie
             LIMIT (SELECT LEAST(n, $1) FROM free)),
           cand AS MATERIALIZED (
             SELECT c.job_id, c.turn_at, c.receipt, c.expires_at, (r.live + c.n - 0.5) / r.weight AS share, r.tie
             FROM best r CROSS JOIN LATERAL (
               -- A key's jobs that may go, in turn, each checked by its primary
               -- key (a subquery, so no plan joins the window to a scan of jobs).
               SELECT i.job_id, i.turn_at, i.receipt, i.expires_at,
                      row_number() OVER (ORDER BY i.turn_at, i.job_id) AS n
               FROM intake i
               WHERE i.key = r.key AND NOT i.reserved AND i.expires_at > now() + make_interval(secs => $4)
                 AND (NOT i.pending OR i.job_id = ANY($5))
                 AND (SELECT j.status = 'queued' AND j.available_at <= now() FROM jobs j WHERE j.id = i.job_id)
               ORDER BY i.turn_at, i.job_id
               LIMIT CASE WHEN r.cap IS NULL THEN r.free ELSE LEAST(r.free, GREATEST(r.cap - r.live, 0)) END) c),
           picked AS (
             SELECT j.id, c.receipt, c.expires_at FROM cand c JOIN jobs j ON j.id = c.job_id
             WHERE j.status = 'queued' AND j.available_at <= now()
             ORDER BY c.share, c.tie, c.turn_at, j.id LIMIT LEAST((SELECT n FROM free), $1)
             FOR UPDATE OF j),
           upd AS (
             UPDATE jobs j SET status = 'dispatching', attempts = j.attempts + 1,
                    lease_expires_at = now() + make_interval(secs => $2)
             FROM picked WHERE j.id = picked.id
             RETURNING j.id, j.attempts, j.attempts - j.busy_refusals AS used, j.payload::text AS payload,
                       j.max_attempts, j.timeout_secs, picked.receipt, picked.expires_at),
           ev AS (INSERT INTO job_events (job_id, from_status, to_status, attempt, reason)
                  SELECT id, 'queued', 'dispatching', attempts, $3 FROM upd),
           -- Reserved: its dispatch acts on the message (and if the lease sends
           -- the job back, the row serves again, as any reserved row does).
           held AS (UPDATE intake SET reserved = true, pending = false FROM upd WHERE intake.job_id = upd.id)
           SELECT id AS "id?", attempts AS "attempts?", used AS "used?", payload AS "payload?",
                  max_attempts AS "max_attempts?", timeout_secs AS "timeout_secs?", receipt AS "receipt?",
                  expires_at AS "expires_at?", NULL::bigint AS "free?"
           FROM upd
           UNION ALL
           SELECT NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, n FROM free"#,
        max,
        window.dispatch_lease_secs,
        reasons::RESERVED,
        window.receipt_margin_secs,
        &taken_ids,
        window.keys_per_reservation,
    )
    .fetch_all(&mut *tx)
    .await?;
    tx.commit().await?;
    let mut reservation = Reservation {
        jobs: Vec::new(),
        busy_until,
        taken_in,
        slots_left: 0,
    };
    let mut free = 0;
    for r in rows {
        if let Some(n) = r.free {
            free = n.min(max);
            continue;
        }
        let (
            Some(id),
            Some(attempt),
            Some(used),
            Some(payload),
            Some(max_attempts),
            Some(timeout_secs),
            Some(handle),
            Some(expires_at),
        ) = (
            r.id,
            r.attempts,
            r.used,
            r.payload,
            r.max_attempts,
            r.timeout_secs,
            r.receipt,
            r.expires_at,
        )
        else {
            unreachable!("a reserved row has every column");
        };
        let job = Reserved {
            attempt: AttemptRef::new(id, attempt),
            attempts_used: used,
            payload: RawValue::from_string(payload).expect("a json column holds valid JSON"),
            max_attempts,
            timeout_secs,
        };
        reservation.jobs.push((job, Receipt { handle, expires_at }));
    }
    reservation.slots_left = (free - reservation.jobs.len() as i64).max(0);
    Ok(reservation)
}

/// How long the intake window may rely on a message's receipt.
#[derive(Debug, Clone, Copy)]
pub struct WindowTimes {
    /// The visibility timeout messages were received with.
    pub first_visibility_secs: f64,
    /// The visibility timeout of a message extended while its job waits in
    /// the window.
    pub visibility_secs: f64,
    /// A reserved job's dispatch lease.
    pub dispatch_lease_secs: f64,
    /// The most keys of the window one reservation looks at (`WINDOW_KEYS`
    /// in the drain): the fair pick is exact among them, and a cursor in
    /// the gate row moves on to the next ones.
    pub keys_per_reservation: i64,
    /// A job is reserved only if its receipt stays valid at least this much
    /// longer (enough for the submission and the message action after it).
    pub receipt_margin_secs: f64,
}

/// A job taken into the intake window, and whether it could go now (it is
/// `queued` and due: not waiting out a back-off or still `dispatching`).
#[derive(Debug, Clone, Copy)]
pub struct TakenIn {
    pub job: Uuid,
    pub ready: bool,
}

/// Takes the offered messages of queued or dispatching jobs into the intake
/// window (a job already there gets the newer receipt). A queued job not yet
/// due waits there for its time; a dispatching one (its submission's
/// outcome unknown, or its replica gone) is there when its lease sends it
/// back to the queue. Messages of other jobs are not taken in. The rows of
/// jobs that cannot go now are pending (the drain extends their messages
/// at once, then `window_ready`); the others may be reserved by any drain
/// at once, for as long as their first visibility allows.
async fn take_in(
    tx: &mut Transaction<'_, Postgres>,
    offers: &[Offer<'_>],
    window: &WindowTimes,
) -> sqlx::Result<Vec<TakenIn>> {
    if offers.is_empty() {
        return Ok(Vec::new());
    }
    // One row per job (a message delivered twice in one batch: the later
    // receipt), or the upsert would touch a row twice.
    let mut latest: HashMap<Uuid, &str> = HashMap::with_capacity(offers.len());
    for o in offers {
        latest.insert(o.job, o.receipt);
    }
    let (ids, receipts): (Vec<Uuid>, Vec<String>) = latest.into_iter().map(|(id, r)| (id, r.to_owned())).unzip();
    let rows = sqlx::query!(
        r#"WITH src AS (
             SELECT j.id, j.key, j.created_at - make_interval(secs => j.priority) AS turn_at, r.receipt,
                    j.status = 'queued' AND j.available_at <= now() AS ready, j.status = 'dispatching' AS reserved
             FROM unnest($1::uuid[], $2::text[]) AS r(id, receipt) JOIN jobs j ON j.id = r.id
             WHERE j.status IN ('queued', 'dispatching')),
           ins AS (
             INSERT INTO intake (job_id, key, turn_at, receipt, expires_at, reserved, pending)
             SELECT id, key, turn_at, receipt, now() + make_interval(secs => $3), reserved, NOT ready FROM src
             ON CONFLICT (job_id) DO UPDATE
               SET receipt = EXCLUDED.receipt, expires_at = EXCLUDED.expires_at, reserved = EXCLUDED.reserved,
                   pending = EXCLUDED.pending
             RETURNING job_id)
           SELECT ins.job_id, src.ready AS "ready!" FROM ins JOIN src ON src.id = ins.job_id"#,
        &ids,
        &receipts,
        window.first_visibility_secs - RECEIPT_SLACK_SECS,
    )
    .fetch_all(&mut **tx)
    .await?;
    Ok(rows
        .into_iter()
        .map(|r| TakenIn {
            job: r.job_id,
            ready: r.ready,
        })
        .collect())
}

/// Counted off a receipt's validity: the message was received a moment
/// before its row is written.
const RECEIPT_SLACK_SECS: f64 = 5.0;

/// Removes jobs from the intake window once the drain has deleted or
/// released their messages: each row only if it still holds the receipt
/// used (a newer delivery taken in meanwhile stays).
pub async fn leave_intake(ex: impl PgExecutor<'_>, left: &[(Uuid, String)]) -> sqlx::Result<()> {
    if left.is_empty() {
        return Ok(());
    }
    let (ids, receipts): (Vec<Uuid>, Vec<String>) = left.iter().cloned().unzip();
    sqlx::query!(
        "DELETE FROM intake i USING unnest($1::uuid[], $2::text[]) AS l(id, receipt)
         WHERE i.job_id = l.id AND i.receipt = l.receipt",
        &ids,
        &receipts
    )
    .execute(ex)
    .await?;
    Ok(())
}

/// Opens pending window rows to every drain once their messages are hidden
/// for the window's visibility (which their expiry now says): each row only
/// if it still holds that receipt.
pub async fn window_ready(
    ex: impl PgExecutor<'_>,
    extended: &[(Uuid, String)],
    window: &WindowTimes,
) -> sqlx::Result<()> {
    if extended.is_empty() {
        return Ok(());
    }
    let (ids, receipts): (Vec<Uuid>, Vec<String>) = extended.iter().cloned().unzip();
    sqlx::query!(
        "UPDATE intake i SET pending = false, expires_at = now() + make_interval(secs => $3)
         FROM unnest($1::uuid[], $2::text[]) AS e(id, receipt)
         WHERE i.job_id = e.id AND i.receipt = e.receipt AND i.pending",
        &ids,
        &receipts,
        window.visibility_secs - RECEIPT_SLACK_SECS,
    )
    .execute(ex)
    .await?;
    Ok(())
}

/// Claims up to `limit` window rows waiting with a receipt that expires
/// within `within_secs` (and has not yet), for their messages' visibility to
/// be extended: they are made pending, so no drain reserves them meanwhile,
/// and `window_ready` opens them again. Replicas claim different rows.
pub async fn claim_expiring(
    ex: impl PgExecutor<'_>,
    within_secs: f64,
    limit: i64,
) -> sqlx::Result<Vec<(Uuid, String)>> {
    let rows = sqlx::query!(
        "UPDATE intake SET pending = true
         WHERE job_id IN (SELECT job_id FROM intake
                          WHERE NOT reserved AND NOT pending
                            AND expires_at > now() AND expires_at < now() + make_interval(secs => $1)
                          ORDER BY expires_at LIMIT $2 FOR UPDATE SKIP LOCKED)
         RETURNING job_id, receipt",
        within_secs,
        limit
    )
    .fetch_all(ex)
    .await?;
    Ok(rows.into_iter().map(|r| (r.job_id, r.receipt)).collect())
}

/// Puts queued (or still dispatching) jobs back into the intake window with the receipt they
/// held: SQS could not release their message, so it is still hidden and in
/// hand until the receipt expires.
pub async fn back_into_window(ex: impl PgExecutor<'_>, held: &[(Uuid, Receipt)]) -> sqlx::Result<()> {
    if held.is_empty() {
        return Ok(());
    }
    let ids: Vec<Uuid> = held.iter().map(|(id, _)| *id).collect();
    let handles: Vec<String> = held.iter().map(|(_, r)| r.handle.clone()).collect();
    let until: Vec<DateTime<Utc>> = held.iter().map(|(_, r)| r.expires_at).collect();
    sqlx::query!(
        "INSERT INTO intake (job_id, key, turn_at, receipt, expires_at, reserved, pending)
         SELECT j.id, j.key, j.created_at - make_interval(secs => j.priority), h.receipt, h.until,
                j.status = 'dispatching', false
         FROM unnest($1::uuid[], $2::text[], $3::timestamptz[]) AS h(id, receipt, until) JOIN jobs j ON j.id = h.id
         WHERE j.status IN ('queued', 'dispatching')
         ON CONFLICT (job_id) DO NOTHING",
        &ids,
        &handles,
        &until
    )
    .execute(ex)
    .await?;
    Ok(())
}

/// Removes window rows that can no longer serve: receipts past their
/// visibility (the message shows again and is taken in anew) and jobs that
/// finished. Returns how many went.
pub async fn prune_intake(ex: impl PgExecutor<'_>) -> sqlx::Result<u64> {
    Ok(sqlx::query!(
        "DELETE FROM intake i USING jobs j
         WHERE j.id = i.job_id AND (i.expires_at < now() OR j.status = ANY(terminal_statuses()))"
    )
    .execute(ex)
    .await?
    .rows_affected())
}

/// The status of each of these jobs that exists (a received message's job,
/// when it was not taken into the intake window).
pub async fn statuses_of(ex: impl PgExecutor<'_>, ids: &[Uuid]) -> sqlx::Result<HashMap<Uuid, JobStatus>> {
    let rows = sqlx::query!(
        r#"SELECT id, status AS "status: JobStatus" FROM jobs WHERE id = ANY($1)"#,
        ids
    )
    .fetch_all(ex)
    .await?;
    Ok(rows.into_iter().map(|r| (r.id, r.status)).collect())
}

/// Whether any queued job is due now whose message is not in the intake
/// window (so it should be receivable).
pub async fn any_queued_due(ex: impl PgExecutor<'_>) -> sqlx::Result<bool> {
    sqlx::query_scalar!(
        r#"SELECT EXISTS (SELECT 1 FROM jobs j WHERE j.status = 'queued' AND j.available_at <= now()
                            AND NOT EXISTS (SELECT 1 FROM intake i WHERE i.job_id = j.id AND i.expires_at > now()))
               AS "due!""#
    )
    .fetch_one(ex)
    .await
}

/// Frees the slots of live jobs whose lease ran out: a running job becomes
/// `timed_out`; a `dispatching` one (its replica died mid-submission, or its
/// submission's outcome stayed unknown) goes back to `queued` (its SQS message
/// was never deleted) or, out of attempts, `failed`. Returns how many jobs
/// went to each status.
pub async fn reclaim_expired(ex: impl PgExecutor<'_>) -> sqlx::Result<Vec<(JobStatus, i64)>> {
    let rows = sqlx::query!(
        r#"WITH expired AS (
             SELECT id, status FROM jobs
             WHERE status = ANY(live_statuses()) AND lease_expires_at < now()
             FOR UPDATE SKIP LOCKED),
           upd AS (
             UPDATE jobs j SET
               status = CASE WHEN e.status = 'running' THEN 'timed_out'::job_status
                             WHEN j.attempts - j.busy_refusals >= j.max_attempts THEN 'failed'::job_status
                             ELSE 'queued'::job_status END,
               error = CASE WHEN e.status = 'running' THEN $1 ELSE $2 END,
               finished_at = CASE WHEN e.status = 'running' OR j.attempts - j.busy_refusals >= j.max_attempts
                                  THEN now() END,
               lease_expires_at = NULL,
               available_at = now()
             FROM expired e WHERE j.id = e.id
             RETURNING j.id, e.status AS from_status, j.status, j.attempts),
           ev AS (INSERT INTO job_events (job_id, from_status, to_status, attempt, reason)
                  SELECT id, from_status, status, attempts,
                         CASE WHEN from_status = 'running' THEN $3 ELSE $4 END
                  FROM upd),
           -- Back in the queue with its message still in hand: in the window again.
           back AS (UPDATE intake SET reserved = false FROM upd
                    WHERE intake.job_id = upd.id AND upd.status = 'queued')
           SELECT status AS "status!: JobStatus", count(*) AS "n!" FROM upd GROUP BY status"#,
        reasons::LEASE_EXPIRED_ERROR,
        reasons::DISPATCH_LEASE_EXPIRED_ERROR,
        reasons::LEASE_EXPIRED,
        reasons::DISPATCH_LEASE_EXPIRED,
    )
    .fetch_all(ex)
    .await?;
    Ok(rows.into_iter().map(|r| (r.status, r.n)).collect())
}

/// The database's clock minus `secs`: a fixed cut-off for one requeue run.
pub async fn now_minus(ex: impl PgExecutor<'_>, secs: f64) -> sqlx::Result<DateTime<Utc>> {
    sqlx::query_scalar!(r#"SELECT now() - make_interval(secs => $1) AS "at!""#, secs)
        .fetch_one(ex)
        .await
}

/// Queued jobs whose message was last sent before `sent_before` and is not
/// in the intake window, oldest first. A job whose message is re-sent moves past the cut-off, so a loop
/// over this with a fixed cut-off ends.
pub async fn stale_queued(ex: impl PgExecutor<'_>, sent_before: DateTime<Utc>, limit: i64) -> sqlx::Result<Vec<Uuid>> {
    sqlx::query_scalar!(
        "SELECT id FROM jobs j WHERE status = 'queued' AND enqueued_at < $1
           AND NOT EXISTS (SELECT 1 FROM intake i WHERE i.job_id = j.id AND i.expires_at > now())
         ORDER BY enqueued_at, id LIMIT $2",
        sent_before,
        limit
    )
    .fetch_all(ex)
    .await
}

/// Records that these jobs' messages were just sent.
pub async fn mark_enqueued(ex: impl PgExecutor<'_>, ids: &[Uuid]) -> sqlx::Result<()> {
    sqlx::query!("UPDATE jobs SET enqueued_at = now() WHERE id = ANY($1)", ids)
        .execute(ex)
        .await?;
    Ok(())
}

/// Deletes up to `batch` jobs that finished before `now - older_than_secs`
/// (their events go with them), oldest first, skipping rows another
/// transaction holds. Returns how many went. Small batches keep the locks
/// short; the caller loops while a batch comes back full.
pub async fn prune_finished(ex: impl PgExecutor<'_>, older_than_secs: f64, batch: i64) -> sqlx::Result<u64> {
    Ok(sqlx::query!(
        "DELETE FROM jobs WHERE id IN (
           SELECT id FROM jobs
           WHERE finished_at IS NOT NULL AND finished_at < now() - make_interval(secs => $1)
             AND status = ANY(terminal_statuses())
           ORDER BY finished_at LIMIT $2
           FOR UPDATE SKIP LOCKED)",
        older_than_secs,
        batch
    )
    .execute(ex)
    .await?
    .rows_affected())
}

/// Jobs per status counted from the rows (for checks and tests; `counts` is
/// the fast path).
pub async fn count_rows(ex: impl PgExecutor<'_>) -> sqlx::Result<Vec<(JobStatus, i64)>> {
    let rows = sqlx::query!(r#"SELECT status AS "status: JobStatus", count(*) AS "n!" FROM jobs GROUP BY status"#)
        .fetch_all(ex)
        .await?;
    Ok(rows.into_iter().map(|r| (r.status, r.n)).collect())
}

/// The SQL side of the lifecycle's status sets, for the test that keeps the
/// two in step.
pub async fn status_sets(ex: impl PgExecutor<'_>) -> sqlx::Result<(Vec<JobStatus>, Vec<JobStatus>)> {
    let r = sqlx::query!(
        r#"SELECT live_statuses() AS "live!: Vec<JobStatus>", terminal_statuses() AS "terminal!: Vec<JobStatus>""#
    )
    .fetch_one(ex)
    .await?;
    Ok((r.live, r.terminal))
}
