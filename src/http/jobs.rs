//! Client endpoints for jobs: submit (one or a batch), read, list, history,
//! cancel.
//!
//! Enqueueing is crash-safe without an outbox: the job rows are inserted in a
//! transaction, the SQS messages are sent while it is open, jobs whose message
//! failed are deleted in that same transaction, and only then is it committed.
//! So a committed job always has a message; a message whose commit failed
//! names a job that never existed, and the drain drops it (ARCHITECTURE.md).

use axum::{
    Json,
    extract::State,
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::{router::OpenApiRouter, routes};
use uuid::Uuid;

use crate::{
    domain::{IdempotencyKey, Job, JobEvent, JobSpec, JobStatus},
    error::{ApiError, ApiResult, Problem},
    http::extract::{ApiJson, JobId, StrictQuery, parse_json},
    state::AppState,
    store::{self, Inserted, Transition},
};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(submit_job, list_jobs))
        .routes(routes!(submit_batch))
        .routes(routes!(get_job))
        .routes(routes!(job_events))
        .routes(routes!(cancel_job))
}

/// A job to run.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"payload": {"video": "s3://bucket/clip.mp4"}, "timeout_secs": 600, "max_attempts": 3}))]
pub struct SubmitJob {
    /// Any JSON; handed to the downstream verbatim.
    #[schema(value_type = serde_json::Value)]
    pub payload: Box<RawValue>,
    /// Lease of the running job, in seconds (default `JOB_TIMEOUT_SECS`).
    #[schema(minimum = 1, maximum = 604800)]
    pub timeout_secs: Option<i64>,
    /// Submissions tried before the job fails (default `MAX_ATTEMPTS`).
    #[schema(minimum = 1, maximum = 100)]
    pub max_attempts: Option<i64>,
}

/// One job of a batch.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"payload": {"video": "s3://bucket/clip.mp4"}, "idempotency_key": "clip-42"}))]
pub struct BatchJob {
    /// Any JSON; handed to the downstream verbatim.
    #[schema(value_type = serde_json::Value)]
    pub payload: Box<RawValue>,
    /// Lease of the running job, in seconds (default `JOB_TIMEOUT_SECS`).
    #[schema(minimum = 1, maximum = 604800)]
    pub timeout_secs: Option<i64>,
    /// Submissions tried before the job fails (default `MAX_ATTEMPTS`).
    #[schema(minimum = 1, maximum = 100)]
    pub max_attempts: Option<i64>,
    /// Same meaning as the `Idempotency-Key` header of `POST /jobs`: 1 to
    /// 255 visible ASCII characters.
    #[schema(min_length = 1, max_length = 255, pattern = "^[!-~]+$")]
    pub idempotency_key: Option<String>,
}

/// Jobs to submit together.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SubmitBatch {
    /// 1 to 500 jobs, each validated, stored and queued on its own.
    #[schema(value_type = Vec<BatchJob>, min_items = 1, max_items = 500)]
    pub jobs: Vec<Box<RawValue>>,
}

pub const MAX_BATCH: usize = 500;

/// The result of one item of a batch. Exactly one of `job` and `problem` is
/// non-null.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct BatchItem {
    /// 202 (queued), 200 (idempotent repeat) or the 4xx/5xx of the item's problem.
    #[schema(minimum = 100, maximum = 599)]
    pub status: u16,
    /// The job, if the item was accepted (202 or 200); null otherwise.
    #[schema(required = true)]
    pub job: Option<Job>,
    /// Why the item was refused; null if it was accepted.
    #[schema(required = true)]
    pub problem: Option<Problem>,
}

/// The results of a batch, one per submitted job, in request order.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct BatchResult {
    pub items: Vec<BatchItem>,
}

/// A page of jobs, newest first.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct JobPage {
    pub items: Vec<Job>,
    /// Pass as `cursor` to get the next page; null on the last page. A page
    /// may hold fewer than `limit` jobs and still have a next page (pages are
    /// also bounded to about 4 MiB of payloads, results and errors).
    #[schema(required = true)]
    pub next_cursor: Option<String>,
}

/// A job's state changes, oldest first.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct JobEvents {
    pub items: Vec<JobEvent>,
}

struct Pending {
    spec: JobSpec,
    key: Option<IdempotencyKey>,
}

/// The answer when COMMIT was sent but not confirmed: the jobs may be stored
/// (and queued) or not. Only an idempotent retry is safe.
pub const UNKNOWN_OUTCOME: &str = "the database did not confirm storing the job, so it may or may not have \
    been stored and queued; retry with the same Idempotency-Key (a stored job is then returned with 200, \
    not created twice). A retry without one may create a second job.";

/// Stores and queues jobs. Returns, per input, the job and whether it is new
/// (202) or an idempotent repeat (200), or the item's error.
///
/// Everything up to the COMMIT must happen within `ENQUEUE_TIMEOUT_SECS`;
/// past it the transaction is rolled back (and Postgres ends a session that
/// sits in the transaction longer), so a job is never committed later than
/// that after its message was sent. `ORPHAN_MESSAGE_GRACE_SECS` is checked
/// against it at start-up (ARCHITECTURE.md, invariant 2).
async fn enqueue(
    state: &AppState,
    items: Vec<Result<Pending, ApiError>>,
) -> ApiResult<Vec<Result<(StatusCode, Job), ApiError>>> {
    let _slot = state
        .enqueue_slots
        .acquire()
        .await
        .expect("the semaphore is never closed");
    let deadline = state.config.enqueue_timeout();
    let staged = tokio::time::timeout(deadline, stage(state, items, deadline))
        .await
        .map_err(|_| ApiError::Unavailable {
            detail: "storing and queueing the job took too long (ENQUEUE_TIMEOUT_SECS); nothing was stored, \
                     retry later"
                .into(),
            retry_after_secs: 5,
            cause: None,
        })??;
    let Staged { tx, results, failed } = staged;
    tx.commit()
        .await
        .map_err(|e| ApiError::unavailable(UNKNOWN_OUTCOME, e))?;
    let queued = results
        .iter()
        .filter(|r| matches!(r, Ok((StatusCode::ACCEPTED, job)) if !failed.contains(&job.id)))
        .count();
    metrics::counter!("sluicegate_jobs_enqueued_total").increment(queued as u64);
    Ok(results
        .into_iter()
        .map(|r| match r {
            Ok((_, job)) if failed.contains(&job.id) => Err(ApiError::Unavailable {
                detail: "the queue is unavailable; the job was not accepted, retry later".into(),
                retry_after_secs: 5,
                cause: None,
            }),
            other => other,
        })
        .collect())
}

/// An enqueue ready to commit: its open transaction, the result per input,
/// and the new jobs whose message could not be sent (deleted in `tx`).
struct Staged {
    tx: sqlx::Transaction<'static, sqlx::Postgres>,
    results: Vec<Result<(StatusCode, Job), ApiError>>,
    failed: Vec<Uuid>,
}

/// Inserts the jobs, sends their messages while the transaction is open, and
/// deletes (in it) the jobs whose message failed.
async fn stage(
    state: &AppState,
    items: Vec<Result<Pending, ApiError>>,
    deadline: std::time::Duration,
) -> ApiResult<Staged> {
    let c = &state.config;
    let mut tx = state.db.begin().await?;
    // A session left in this transaction (a stalled process) is ended by
    // Postgres: the transaction can then never commit late.
    sqlx::query(&format!(
        "SET LOCAL idle_in_transaction_session_timeout = {}",
        deadline.as_millis()
    ))
    .execute(&mut *tx)
    .await?;
    let new: Vec<store::NewJob> = items
        .iter()
        .filter_map(|item| item.as_ref().ok())
        .map(|p| store::NewJob {
            id: Uuid::now_v7(),
            spec: &p.spec,
            key: p.key.as_ref(),
        })
        .collect();
    let mut inserted = store::insert_jobs(&mut tx, &new, c.job_timeout_secs, c.max_attempts)
        .await?
        .into_iter();
    let mut new_ids = Vec::new();
    let mut results = Vec::with_capacity(items.len());
    for item in items {
        if let Err(e) = item {
            results.push(Err(e));
            continue;
        }
        results.push(match inserted.next().expect("one result per valid item") {
            Inserted::New(job) => {
                new_ids.push(job.id);
                Ok((StatusCode::ACCEPTED, job))
            }
            Inserted::Existing {
                job,
                same_request: true,
            } => Ok((StatusCode::OK, job)),
            Inserted::Existing {
                same_request: false, ..
            } => Err(ApiError::IdempotencyKeyReused(
                "this Idempotency-Key was already used with a different request body".into(),
            )),
        });
    }
    let failed = state.queue.send_job_ids(&new_ids).await;
    if !failed.is_empty() {
        store::delete_jobs(&mut tx, &failed).await?;
    }
    Ok(Staged { tx, results, failed })
}

fn idempotency_header(headers: &HeaderMap) -> ApiResult<Option<IdempotencyKey>> {
    match headers.get("idempotency-key") {
        None => Ok(None),
        Some(v) => {
            let s = v
                .to_str()
                .map_err(|_| ApiError::BadRequest("Idempotency-Key must be visible ASCII".into()))?;
            IdempotencyKey::parse(s).map(Some).map_err(ApiError::BadRequest)
        }
    }
}

fn job_response(status: StatusCode, job: Job) -> Response {
    let location = HeaderValue::from_str(&format!("/jobs/{}", job.id)).expect("a UUID path is a valid header");
    (status, [(header::LOCATION, location)], Json(job)).into_response()
}

/// Submit a job
///
/// The job is stored in Postgres and queued in SQS before the answer. With an
/// `Idempotency-Key`, a repeat of the same request returns the same job (200).
#[utoipa::path(post, path = "/jobs", tag = "jobs", operation_id = "submitJob",
    params(("Idempotency-Key" = Option<String>, Header, nullable = false, min_length = 1, max_length = 255, pattern = "^[!-~]+$",
        description = "Makes retries safe: 1 to 255 visible ASCII characters")),
    request_body = SubmitJob,
    responses(
        (status = 202, description = "Queued", body = Job, headers(("Location" = String, description = "/jobs/{id}"))),
        (status = 200, description = "Idempotent repeat: the job created by the first request", body = Job, headers(("Location" = String, description = "/jobs/{id}"))),
        (status = 422, description = "Invalid job, or Idempotency-Key reused with another body", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "Postgres or SQS is unavailable or overloaded. Nothing was stored, unless `detail` says the outcome is unknown (the database did not confirm the commit): then the job may exist, and only a retry with the same `Idempotency-Key` is safe", body = Problem, content_type = "application/problem+json",
            headers(("Retry-After" = u32, description = "Seconds to wait before retrying"))),
    ),
    security(("api_token" = [])))]
pub async fn submit_job(
    State(state): State<AppState>,
    headers: HeaderMap,
    ApiJson(body): ApiJson<SubmitJob>,
) -> ApiResult<Response> {
    let key = idempotency_header(&headers)?;
    let spec = JobSpec::new(body.payload, body.timeout_secs, body.max_attempts).map_err(ApiError::Validation)?;
    let mut results = enqueue(&state, vec![Ok(Pending { spec, key })]).await?;
    let (status, job) = results.pop().expect("one result per item")?;
    Ok(job_response(status, job))
}

fn parse_batch_item(raw: &RawValue) -> Result<Pending, ApiError> {
    let item: BatchJob = parse_json(raw.get().as_bytes())?;
    let key = item
        .idempotency_key
        .as_deref()
        .map(IdempotencyKey::parse)
        .transpose()
        .map_err(ApiError::Validation)?;
    let spec = JobSpec::new(item.payload, item.timeout_secs, item.max_attempts).map_err(ApiError::Validation)?;
    Ok(Pending { spec, key })
}

/// Submit up to 500 jobs
///
/// Each item is validated, stored and queued on its own; the results come in
/// request order. Only a malformed envelope fails the whole request.
#[utoipa::path(post, path = "/jobs/batch", tag = "jobs", operation_id = "submitJobs",
    request_body = SubmitBatch,
    responses(
        (status = 200, description = "One result per item, in request order", body = BatchResult),
        (status = 422, description = "Malformed envelope (not 1 to 500 jobs)", body = Problem, content_type = "application/problem+json"),
    ),
    security(("api_token" = [])))]
pub async fn submit_batch(
    State(state): State<AppState>,
    ApiJson(body): ApiJson<SubmitBatch>,
) -> ApiResult<Json<BatchResult>> {
    if body.jobs.is_empty() || body.jobs.len() > MAX_BATCH {
        return Err(ApiError::Validation(format!(
            "jobs: must hold 1 to {MAX_BATCH} items, got {}",
            body.jobs.len()
        )));
    }
    let items = body.jobs.iter().map(|raw| parse_batch_item(raw)).collect();
    let results = enqueue(&state, items).await?;
    let items = results
        .into_iter()
        .map(|r| match r {
            Ok((status, job)) => BatchItem {
                status: status.as_u16(),
                job: Some(job),
                problem: None,
            },
            Err(e) => {
                let problem = e.problem();
                BatchItem {
                    status: problem.status,
                    job: None,
                    problem: Some(problem),
                }
            }
        })
        .collect();
    Ok(Json(BatchResult { items }))
}

/// Get a job
#[utoipa::path(get, path = "/jobs/{id}", tag = "jobs", operation_id = "getJob",
    params(("id" = Uuid, Path, description = "Job id")),
    responses(
        (status = 200, description = "The job", body = Job),
        (status = 404, description = "No such job", body = Problem, content_type = "application/problem+json"),
    ),
    security(("api_token" = [])))]
pub async fn get_job(State(state): State<AppState>, JobId(id): JobId) -> ApiResult<Json<Job>> {
    store::get_job(&state.db, id)
        .await?
        .map(Json)
        .ok_or_else(|| not_found(id))
}

fn not_found(id: Uuid) -> ApiError {
    ApiError::NotFound(format!("no job {id}"))
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// Only jobs in this status.
    #[param(value_type = Option<JobStatus>)]
    status: Option<String>,
    /// Page size, 1 to 1000 (default 100). A page may hold fewer jobs: it
    /// ends early once its jobs' payloads, results and errors pass 4 MiB of
    /// JSON text (always at least one job); `next_cursor` then continues.
    #[param(value_type = Option<i64>, minimum = 1, maximum = 1000)]
    limit: Option<String>,
    /// `next_cursor` of the previous page.
    cursor: Option<String>,
}

pub const DEFAULT_PAGE: i64 = 100;
pub const MAX_PAGE: i64 = 1000;
/// A page ends early once the payloads, results and errors of its jobs
/// would pass this many bytes of JSON text (it always holds at least one
/// job), so that no page is a response of hundreds of megabytes.
pub const MAX_PAGE_BYTES: i64 = 4 * 1024 * 1024;

fn encode_cursor(job: &Job) -> String {
    URL_SAFE_NO_PAD.encode(format!("{}|{}", job.created_at.timestamp_micros(), job.id))
}

fn decode_cursor(s: &str) -> Option<(DateTime<Utc>, Uuid)> {
    let raw = String::from_utf8(URL_SAFE_NO_PAD.decode(s).ok()?).ok()?;
    let (micros, id) = raw.split_once('|')?;
    Some((
        DateTime::from_timestamp_micros(micros.parse().ok()?)?,
        Uuid::parse_str(id).ok()?,
    ))
}

/// List jobs, newest first
///
/// Keyset pagination: pages stay stable while new jobs arrive. A page holds
/// at most `limit` jobs and ends early once their payloads, results and
/// errors pass 4 MiB (at least one job per page); follow `next_cursor`
/// until it is null.
#[utoipa::path(get, path = "/jobs", tag = "jobs", operation_id = "listJobs",
    params(ListQuery),
    responses((status = 200, description = "A page of jobs", body = JobPage)),
    security(("api_token" = [])))]
pub async fn list_jobs(
    State(state): State<AppState>,
    StrictQuery(q): StrictQuery<ListQuery>,
) -> ApiResult<Json<JobPage>> {
    let status = q
        .status
        .as_deref()
        .map(|s| JobStatus::parse(s).ok_or_else(|| ApiError::BadRequest(format!("status: unknown status {s:?}"))))
        .transpose()?;
    let limit = match q.limit.as_deref() {
        None => DEFAULT_PAGE,
        Some(l) => l
            .parse::<i64>()
            .ok()
            .filter(|l| (1..=MAX_PAGE).contains(l))
            .ok_or_else(|| ApiError::BadRequest(format!("limit: must be an integer from 1 to {MAX_PAGE}")))?,
    };
    let after = q
        .cursor
        .as_deref()
        .map(|c| decode_cursor(c).ok_or_else(|| ApiError::BadRequest("cursor: not a cursor this API returned".into())))
        .transpose()?;
    let page = store::list_jobs(&state.db, status, after, limit, MAX_PAGE_BYTES).await?;
    let next_cursor = if page.more {
        page.jobs.last().map(encode_cursor)
    } else {
        None
    };
    Ok(Json(JobPage {
        items: page.jobs,
        next_cursor,
    }))
}

/// A job's history
///
/// Every state change, oldest first, with why it happened.
#[utoipa::path(get, path = "/jobs/{id}/events", tag = "jobs", operation_id = "getJobEvents",
    params(("id" = Uuid, Path, description = "Job id")),
    responses(
        (status = 200, description = "State changes, oldest first", body = JobEvents),
        (status = 404, description = "No such job", body = Problem, content_type = "application/problem+json"),
    ),
    security(("api_token" = [])))]
pub async fn job_events(State(state): State<AppState>, JobId(id): JobId) -> ApiResult<Json<JobEvents>> {
    let items = store::job_events(&state.db, id).await?;
    // Every job has at least its `submitted` event.
    if items.is_empty() {
        return Err(not_found(id));
    }
    Ok(Json(JobEvents { items }))
}

/// Cancel a queued job
#[utoipa::path(post, path = "/jobs/{id}/cancel", tag = "jobs", operation_id = "cancelJob",
    params(("id" = Uuid, Path, description = "Job id")),
    responses(
        (status = 200, description = "Cancelled", body = Job),
        (status = 404, description = "No such job", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The job is not queued", body = Problem, content_type = "application/problem+json"),
    ),
    security(("api_token" = [])))]
pub async fn cancel_job(State(state): State<AppState>, JobId(id): JobId) -> ApiResult<Json<Job>> {
    let t = Transition::new(&[JobStatus::Queued], JobStatus::Cancelled, "cancelled by client");
    if let Some(job) = store::transition(&state.db, id, &t).await? {
        metrics::counter!("sluicegate_jobs_finished_total", "status" => "cancelled").increment(1);
        return Ok(Json(job));
    }
    match store::get_job(&state.db, id).await? {
        None => Err(not_found(id)),
        Some(job) => Err(ApiError::Conflict(format!(
            "the job is {}; only a queued job can be cancelled",
            job.status.as_str()
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_reject_garbage() {
        let job = Job {
            id: Uuid::now_v7(),
            status: JobStatus::Queued,
            payload: RawValue::from_string("1".into()).unwrap(),
            attempts: 0,
            created_at: DateTime::from_timestamp_micros(1_780_000_000_123_456).unwrap(),
            started_at: None,
            finished_at: None,
            result: None,
            error: None,
        };
        assert_eq!(decode_cursor(&encode_cursor(&job)), Some((job.created_at, job.id)));
        assert_eq!(decode_cursor("nope"), None);
        assert_eq!(decode_cursor(&URL_SAFE_NO_PAD.encode("12|not-a-uuid")), None);
    }
}
