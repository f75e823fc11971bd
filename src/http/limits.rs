//! The concurrency limit and the counters.

use axum::{Json, extract::State};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::{router::OpenApiRouter, routes};

use crate::{
    domain::JobStatus,
    http::error::{ApiError, ApiResult},
    http::extract::ApiJson,
    state::AppState,
    store,
};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(get_limits, put_limits))
        .routes(routes!(get_stats))
}

pub const MAX_LIMIT: i64 = 1_000_000;

/// The concurrency limit.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"max_concurrency": 10}))]
pub struct Limits {
    /// Jobs the downstream may hold at once (dispatching + running); 0 pauses dispatching.
    #[schema(minimum = 0, maximum = 1000000)]
    pub max_concurrency: i64,
}

/// Get the concurrency limit
#[utoipa::path(get, path = "/limits", tag = "limits", operation_id = "getLimits",
    responses((status = 200, description = "The limit in force", body = Limits)),
    security(("api_token" = [])))]
pub async fn get_limits(State(state): State<AppState>) -> ApiResult<Json<Limits>> {
    Ok(Json(Limits {
        max_concurrency: store::get_limit(&state.db).await?.into(),
    }))
}

/// Change the concurrency limit
///
/// Takes effect for the next slot reservation on every replica. 0 pauses
/// dispatching; lowering below the number running stops new dispatches until
/// enough jobs finish (nothing is interrupted).
#[utoipa::path(put, path = "/limits", tag = "limits", operation_id = "setLimits",
    request_body = Limits,
    responses(
        (status = 200, description = "The new limit", body = Limits),
        (status = 422, description = "Out of range", body = crate::http::error::Problem, content_type = "application/problem+json"),
    ),
    security(("api_token" = [])))]
pub async fn put_limits(State(state): State<AppState>, ApiJson(body): ApiJson<Limits>) -> ApiResult<Json<Limits>> {
    if !(0..=MAX_LIMIT).contains(&body.max_concurrency) {
        return Err(ApiError::Validation(format!(
            "max_concurrency: must be between 0 and {MAX_LIMIT}"
        )));
    }
    let limit = store::set_limit(&state.db, body.max_concurrency as i32).await?;
    metrics::gauge!(crate::metrics::LIMIT).set(f64::from(limit));
    tracing::info!(max_concurrency = limit, "limit changed");
    if state.config.refill_on_callback {
        // A raised limit leaves free slots: fill them now rather than at the next tick.
        state.refill.notify_one();
    }
    Ok(Json(Limits {
        max_concurrency: limit.into(),
    }))
}

/// Counts over all jobs, and the limit in force.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[schema(example = json!({"limit": 10, "running": 10, "queued": 250, "succeeded": 4210, "failed": 3, "timed_out": 1, "cancelled": 7, "queue_depth": 250}))]
pub struct Stats {
    /// The concurrency limit (`max_concurrency`).
    pub limit: i64,
    /// Jobs counted against the limit (dispatching + running).
    pub running: i64,
    /// Jobs waiting to be dispatched.
    pub queued: i64,
    pub succeeded: i64,
    pub failed: i64,
    pub timed_out: i64,
    pub cancelled: i64,
    /// Approximate number of visible SQS messages; null if SQS did not answer.
    #[schema(required = true)]
    pub queue_depth: Option<i64>,
}

/// Counts over all jobs
#[utoipa::path(get, path = "/stats", tag = "limits", operation_id = "getStats",
    responses((status = 200, description = "Counts over all jobs", body = Stats)),
    security(("api_token" = [])))]
pub async fn get_stats(State(state): State<AppState>) -> ApiResult<Json<Stats>> {
    let depth = tokio::time::timeout(std::time::Duration::from_secs(2), state.queue.depth());
    let (counts, limit, depth) = tokio::join!(store::counts(&state.db), store::get_limit(&state.db), depth);
    let (counts, limit) = (counts?, limit?);
    let queue_depth = depth.ok().and_then(Result::ok);
    Ok(Json(Stats {
        limit: limit.into(),
        running: counts.get(JobStatus::Dispatching) + counts.get(JobStatus::Running),
        queued: counts.get(JobStatus::Queued),
        succeeded: counts.get(JobStatus::Succeeded),
        failed: counts.get(JobStatus::Failed),
        timed_out: counts.get(JobStatus::TimedOut),
        cancelled: counts.get(JobStatus::Cancelled),
        queue_depth,
    }))
}
