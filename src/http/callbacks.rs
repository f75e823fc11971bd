//! The downstream's side: callbacks and heartbeats, authenticated by the
//! per-job, per-attempt callback token.

use axum::{
    Json,
    extract::{FromRequestParts, State},
    http::request::Parts,
};
use serde::Deserialize;
use serde_json::value::RawValue;
use utoipa::ToSchema;
use utoipa_axum::{router::OpenApiRouter, routes};
use uuid::Uuid;

use crate::{
    callback_token,
    domain::Job,
    http::auth::bearer,
    http::error::{ApiError, ApiResult, Problem},
    http::extract::ApiJson,
    lifecycle::{AttemptRef, JobStatus, Transition},
    state::AppState,
    store,
};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(callback))
        .routes(routes!(heartbeat))
}

/// How long after its job ended a callback token still works (for a
/// downstream repeating a callback whose answer it lost). After that it is
/// refused like any wrong token, so a leaked token does not read its job for
/// ever.
pub const CALLBACK_TOKEN_GRACE: chrono::TimeDelta = chrono::TimeDelta::hours(1);

/// A caller holding the callback token of job `id` at its current attempt,
/// while the job is live or ended less than [`CALLBACK_TOKEN_GRACE`] ago.
/// Anything else, an unknown job or a malformed id included, is 401: the
/// answer never tells whether a job exists.
///
/// When this replica issued the job's last token (`AppState::issued`, a
/// hint) and the token matches that attempt, the job is not read first: the
/// handler's statement is fenced by the attempt anyway, and only if it
/// changes nothing is the job read, to tell a stale or expired token (401)
/// from a job in another state ([`CallbackCaller::confirm`]).
pub struct CallbackCaller {
    pub attempt: AttemptRef,
    /// The token, while it is checked against the hint only.
    unconfirmed: Option<String>,
}

impl CallbackCaller {
    /// Checks the token against the job as Postgres has it now, if that has
    /// not been done yet: the current attempt, and the grace after its end.
    pub async fn confirm(&self, state: &AppState) -> Result<(), ApiError> {
        match &self.unconfirmed {
            None => Ok(()),
            Some(token) => checked(state, self.attempt.job, token).await.map(|_| ()),
        }
    }
}

/// The job's current attempt, if `token` is its token and the job is live or
/// ended within the grace; else 401.
async fn checked(state: &AppState, id: Uuid, token: &str) -> Result<AttemptRef, ApiError> {
    let denied = ApiError::Unauthorized { invalid_token: true };
    let Some(job) = store::credential_state(&state.db, id).await? else {
        return Err(denied);
    };
    if job.attempt.attempt < 1 || !callback_token::verify(&state.config.callback_secret, job.attempt, token) {
        return Err(denied);
    }
    if job
        .finished_at
        .is_some_and(|at| chrono::Utc::now() - at > CALLBACK_TOKEN_GRACE)
    {
        return Err(denied);
    }
    Ok(job.attempt)
}

impl FromRequestParts<AppState> for CallbackCaller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        let Some(token) = bearer(&parts.headers).map(str::to_owned) else {
            return Err(ApiError::Unauthorized { invalid_token: false });
        };
        let denied = ApiError::Unauthorized { invalid_token: true };
        let axum::extract::Path(raw) = axum::extract::Path::<String>::from_request_parts(parts, state)
            .await
            .map_err(|_| denied)?;
        let denied = ApiError::Unauthorized { invalid_token: true };
        let Ok(id) = Uuid::parse_str(&raw) else {
            return Err(denied);
        };
        if let Some(attempt) = state.issued.get(id)
            && callback_token::verify(&state.config.callback_secret, attempt, &token)
        {
            return Ok(CallbackCaller {
                attempt,
                unconfirmed: Some(token),
            });
        }
        let attempt = checked(state, id, &token).await?;
        Ok(CallbackCaller {
            attempt,
            unconfirmed: None,
        })
    }
}

/// The final status the downstream reports.
#[derive(Debug, Clone, Copy, Deserialize, ToSchema, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum FinalStatus {
    Succeeded,
    Failed,
}

/// How the job ended, as the downstream reports it.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"status": "succeeded", "result": {"frames": 1200}}))]
pub struct CallbackBody {
    pub status: FinalStatus,
    /// Any JSON, stored and returned verbatim as the job's `result`.
    #[schema(value_type = Option<serde_json::Value>)]
    pub result: Option<Box<RawValue>>,
    /// What went wrong, shown as the job's `error` (at most 10000 bytes, no NUL character).
    #[schema(max_length = 10000, pattern = "^[^\\x00]*$")]
    pub error: Option<String>,
}

pub const MAX_ERROR_LEN: usize = 10_000;

/// Report the end of a job (downstream)
///
/// Accepted while the job is `dispatching` (the downstream may answer before
/// its submission returns) or `running`. Repeating the same final status is a
/// no-op (200); a different one is 409.
#[utoipa::path(post, path = "/jobs/{id}/callback", tag = "downstream", operation_id = "reportJobResult",
    params(("id" = Uuid, Path, description = "Job id")),
    request_body = CallbackBody,
    responses(
        (status = 200, description = "The finished job", body = Job),
        (status = 409, description = "The job already ended differently, or is not live", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid body", body = Problem, content_type = "application/problem+json"),
    ),
    security(("callback_token" = [])))]
#[tracing::instrument(name = "callback", skip_all, fields(job_id = %caller.attempt.job, attempt = caller.attempt.attempt))]
pub async fn callback(
    State(state): State<AppState>,
    caller: CallbackCaller,
    ApiJson(body): ApiJson<CallbackBody>,
) -> ApiResult<Json<Job>> {
    if body.error.as_ref().is_some_and(|e| e.len() > MAX_ERROR_LEN) {
        return Err(ApiError::Validation(format!("error: at most {MAX_ERROR_LEN} bytes")));
    }
    // Postgres text cannot hold U+0000: refuse it here rather than fail the write.
    if body.error.as_ref().is_some_and(|e| e.contains('\0')) {
        return Err(ApiError::Validation(
            "error: must not contain a NUL character (U+0000)".into(),
        ));
    }
    if body
        .result
        .as_ref()
        .is_some_and(|r| crate::domain::nesting_depth(r.get()) > crate::domain::MAX_NESTING)
    {
        return Err(ApiError::Validation(format!(
            "result: nested deeper than {} levels",
            crate::domain::MAX_NESTING
        )));
    }
    let to = match body.status {
        FinalStatus::Succeeded => JobStatus::Succeeded,
        FinalStatus::Failed => JobStatus::Failed,
    };
    let id = caller.attempt.job;
    let t = Transition::callback(caller.attempt, to, body.result.as_deref(), body.error.as_deref());
    if let Some(job) = store::transition(&state.db, id, &t).await? {
        crate::fault!("callback-after-update");
        metrics::counter!(crate::metrics::JOBS_FINISHED, "status" => to.as_str()).increment(1);
        state.issued.forget(id);
        if state.config.refill_on_callback {
            state.refill.notify_one();
        }
        return Ok(Json(job));
    }
    caller.confirm(&state).await?;
    let job = store::get_job(&state.db, id)
        .await?
        .ok_or(ApiError::Unauthorized { invalid_token: true })?;
    if job.status == to {
        Ok(Json(job))
    } else {
        Err(ApiError::Conflict(format!(
            "the job is {}; it cannot become {}",
            job.status.as_str(),
            to.as_str()
        )))
    }
}

/// Extend a job's lease (downstream)
///
/// Pushes the lease of a `dispatching` or `running` job out by its timeout
/// (never shortening it). A `dispatching` job becomes `running`: the
/// downstream has it.
#[utoipa::path(post, path = "/jobs/{id}/heartbeat", tag = "downstream", operation_id = "heartbeatJob",
    params(("id" = Uuid, Path, description = "Job id")),
    responses(
        (status = 200, description = "The job, lease extended", body = Job),
        (status = 409, description = "The job is not dispatching or running", body = Problem, content_type = "application/problem+json"),
    ),
    security(("callback_token" = [])))]
#[tracing::instrument(name = "heartbeat", skip_all, fields(job_id = %caller.attempt.job, attempt = caller.attempt.attempt))]
pub async fn heartbeat(State(state): State<AppState>, caller: CallbackCaller) -> ApiResult<Json<Job>> {
    if let Some(job) = store::heartbeat(&state.db, caller.attempt).await? {
        return Ok(Json(job));
    }
    caller.confirm(&state).await?;
    let status = store::status_of(&state.db, caller.attempt.job)
        .await?
        .map_or("gone", JobStatus::as_str);
    Err(ApiError::Conflict(format!(
        "the job is {status}; only a dispatching or running job has a lease"
    )))
}
