//! Client endpoints for jobs: submit (one or a batch), read, list, history,
//! cancel. Submitting is the `enqueue` engine's work; this module turns its
//! results into answers.

use axum::{
    Json,
    extract::State,
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::{router::OpenApiRouter, routes};
use uuid::Uuid;

use crate::{
    domain::{IdempotencyKey, Job, JobEvent, JobKey, JobSpec, JobStatus},
    enqueue::{self, EnqueueError, Submit, Submitted},
    http::error::{ApiError, ApiResult, Problem},
    http::extract::{self, ApiJson, JobId, StrictQuery, parse_json},
    lifecycle::Transition,
    state::AppState,
    store,
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
    /// Flow-control key (a tenant, a model, ...): 1 to 128 visible ASCII
    /// characters; default `default`.
    #[schema(min_length = 1, max_length = 128, pattern = "^[!-~]{1,128}$")]
    pub key: Option<String>,
    /// Seconds the job is ordered ahead of its submission time, within its
    /// key (−3600 to 3600; default 0).
    #[schema(minimum = -3600, maximum = 3600)]
    pub priority: Option<i64>,
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
    /// Flow-control key: 1 to 128 visible ASCII characters; default `default`.
    #[schema(min_length = 1, max_length = 128, pattern = "^[!-~]{1,128}$")]
    pub key: Option<String>,
    /// Seconds the job is ordered ahead of its submission time, within its
    /// key (−3600 to 3600; default 0).
    #[schema(minimum = -3600, maximum = 3600)]
    pub priority: Option<i64>,
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

/// The answer when COMMIT was sent but not confirmed: the jobs may be stored
/// (and queued) or not. Only an idempotent retry is safe.
pub const UNKNOWN_OUTCOME: &str = "the database did not confirm storing the job, so it may or may not have \
    been stored and queued; retry with the same Idempotency-Key (a stored job is then returned with 200, \
    not created twice). A retry without one may create a second job.";

impl From<EnqueueError> for ApiError {
    fn from(e: EnqueueError) -> Self {
        match e {
            EnqueueError::Database(e) => e.into(),
            EnqueueError::TimedOut => ApiError::Unavailable {
                detail: "storing and queueing the job took too long (ENQUEUE_TIMEOUT_SECS); nothing was stored, \
                         retry later"
                    .into(),
                retry_after_secs: 5,
                cause: None,
            },
            EnqueueError::OutcomeUnknown(e) => ApiError::unavailable(UNKNOWN_OUTCOME, e),
            EnqueueError::Abandoned => ApiError::unavailable(UNKNOWN_OUTCOME, e),
        }
    }
}

/// Submits the valid items (`Err` items are passed through) and gives each
/// its answer: the job with 202 (new) or 200 (idempotent repeat), or a problem.
async fn submit(
    state: &AppState,
    items: Vec<Result<Submit, ApiError>>,
) -> ApiResult<Vec<Result<(StatusCode, Job), ApiError>>> {
    let valid: Vec<Submit> = Vec::with_capacity(items.len());
    let (valid, mut answers) = items
        .into_iter()
        .fold((valid, Vec::new()), |(mut valid, mut answers), item| {
            match item {
                Ok(s) => {
                    valid.push(s);
                    answers.push(None);
                }
                Err(e) => answers.push(Some(Err(e))),
            }
            (valid, answers)
        });
    // One submission shares an enqueue with those arriving meanwhile.
    let mut results = if valid.len() == 1 {
        let one = valid.into_iter().next().expect("one");
        vec![enqueue::enqueue_one(state, one).await?]
    } else {
        enqueue::enqueue(state, &valid).await?
    }
    .into_iter();
    for answer in answers.iter_mut().filter(|a| a.is_none()) {
        *answer = Some(match results.next().expect("one result per valid item") {
            Submitted::New(job) => Ok((StatusCode::ACCEPTED, job)),
            Submitted::Repeat(job) => Ok((StatusCode::OK, job)),
            Submitted::KeyReused => Err(ApiError::IdempotencyKeyReused(
                "this Idempotency-Key was already used with a different request body".into(),
            )),
            Submitted::NotQueued => Err(ApiError::Unavailable {
                detail: "the queue is unavailable; the job was not accepted, retry later".into(),
                retry_after_secs: 5,
                cause: None,
            }),
        });
    }
    let mut answers: Vec<Result<(StatusCode, Job), ApiError>> =
        answers.into_iter().map(|a| a.expect("every item answered")).collect();
    // New jobs come with their reason (`insert_jobs` reads it); idempotent
    // repeats that are still queued need it read.
    store::explain_waiting(
        &state.db,
        answers
            .iter_mut()
            .filter_map(|a| a.as_mut().ok().map(|(_, job)| job))
            .filter(|job| job.status == JobStatus::Queued && job.waiting_on.is_none()),
    )
    .await?;
    Ok(answers)
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
    let spec = JobSpec::with_flow(
        body.payload,
        body.timeout_secs,
        body.max_attempts,
        body.key.as_deref(),
        body.priority,
    )
    .map_err(ApiError::Validation)?;
    let mut results = submit(&state, vec![Ok(Submit { spec, key })]).await?;
    let (status, job) = results.pop().expect("one result per item")?;
    Ok(job_response(status, job))
}

fn parse_batch_item(raw: &RawValue) -> Result<Submit, ApiError> {
    let item: BatchJob = parse_json(raw.get().as_bytes())?;
    let key = item
        .idempotency_key
        .as_deref()
        .map(IdempotencyKey::parse)
        .transpose()
        .map_err(ApiError::Validation)?;
    let spec = JobSpec::with_flow(
        item.payload,
        item.timeout_secs,
        item.max_attempts,
        item.key.as_deref(),
        item.priority,
    )
    .map_err(ApiError::Validation)?;
    Ok(Submit { spec, key })
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
    let results = submit(&state, items).await?;
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
    let mut job = store::get_job(&state.db, id).await?.ok_or_else(|| not_found(id))?;
    store::explain_waiting(&state.db, [&mut job]).await?;
    Ok(Json(job))
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
    /// Only jobs of this flow-control key.
    #[param(value_type = Option<String>, min_length = 1, max_length = 128, pattern = "^[!-~]{1,128}$")]
    key: Option<String>,
}

/// A page ends early once the payloads, results and errors of its jobs
/// would pass this many bytes of JSON text (it always holds at least one
/// job), so that no page is a response of hundreds of megabytes.
pub const MAX_PAGE_BYTES: i64 = 4 * 1024 * 1024;

fn encode_cursor(job: &Job) -> String {
    extract::encode_cursor(&format!("{}|{}", job.created_at.timestamp_micros(), job.id))
}

fn decode_cursor(s: &str) -> Option<(DateTime<Utc>, Uuid)> {
    let raw = extract::cursor_text(s)?;
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
    let limit = extract::page_size(q.limit.as_deref())?;
    let after = extract::page_cursor(q.cursor.as_deref(), decode_cursor)?;
    let key = q
        .key
        .as_deref()
        .map(|k| JobKey::parse(k).map_err(ApiError::BadRequest))
        .transpose()?;
    let mut page = store::list_jobs(
        &state.db,
        status,
        key.as_ref().map(JobKey::as_str),
        after,
        limit,
        MAX_PAGE_BYTES,
    )
    .await?;
    store::explain_waiting(&state.db, &mut page.jobs).await?;
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
    if let Some(job) = store::transition(&state.db, id, &Transition::cancelled()).await? {
        metrics::counter!(crate::metrics::JOBS_FINISHED, "status" => "cancelled").increment(1);
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
            key: "default".into(),
            priority: 0,
            waiting_on: None,
            not_before: None,
            available_at: DateTime::from_timestamp_micros(0).unwrap(),
        };
        assert_eq!(decode_cursor(&encode_cursor(&job)), Some((job.created_at, job.id)));
        assert_eq!(decode_cursor("nope"), None);
        assert_eq!(decode_cursor(&extract::encode_cursor("12|not-a-uuid")), None);
    }
}
