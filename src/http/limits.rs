//! The concurrency limit and the counters.

use axum::{Json, extract::State};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::{router::OpenApiRouter, routes};

use crate::{
    domain::JobStatus,
    http::error::{ApiError, ApiResult},
    http::extract::{self, ApiJson, StrictQuery},
    state::AppState,
    store,
};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(get_limits, put_limits))
        .routes(routes!(get_limit_history))
        .routes(routes!(get_stats))
}

pub const MAX_LIMIT: i64 = 1_000_000;

/// The limits in force.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[schema(example = json!({"max_concurrency": 10, "effective_concurrency": 10, "key_max_concurrency": null,
    "rate_per_second": null, "rate_burst": null, "adaptive": false, "adaptive_min": 1}))]
pub struct Limits {
    /// Jobs the downstream may hold at once (dispatching + running); 0 pauses dispatching.
    #[schema(minimum = 0, maximum = 1000000)]
    pub max_concurrency: i64,
    /// The limit enforced: `max_concurrency` (the adaptive limit is not available yet).
    #[schema(minimum = 0)]
    pub effective_concurrency: i64,
    /// The cap of every key without one of its own; null: none.
    #[schema(required = true, minimum = 0, maximum = 1000000)]
    pub key_max_concurrency: Option<i64>,
    /// Global rate limit: not available yet, always null.
    #[schema(required = true)]
    pub rate_per_second: Option<f64>,
    /// Global rate burst: not available yet, always null.
    #[schema(required = true)]
    pub rate_burst: Option<i64>,
    /// The adaptive limit: not available yet, always false.
    pub adaptive: bool,
    /// The adaptive limit's floor: 1 while it is not available.
    pub adaptive_min: i64,
}

impl From<store::LimitSettings> for Limits {
    fn from(l: store::LimitSettings) -> Self {
        Self {
            max_concurrency: l.max_concurrency.into(),
            effective_concurrency: l.max_concurrency.into(),
            key_max_concurrency: l.key_max_concurrency.map(i64::from),
            rate_per_second: None,
            rate_burst: None,
            adaptive: false,
            adaptive_min: 1,
        }
    }
}

/// A change of the limits: any non-empty subset of the fields; fields not
/// named keep their value; `null` clears a nullable one.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"max_concurrency": 20, "key_max_concurrency": 5}))]
pub struct LimitsChange {
    /// 0 pauses dispatching.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<i64>, minimum = 0, maximum = 1000000)]
    pub max_concurrency: Option<Option<i64>>,
    /// The cap of every key without one of its own; null removes it.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<i64>, minimum = 0, maximum = 1000000)]
    pub key_max_concurrency: Option<Option<i64>>,
    /// Not available yet: only null is accepted.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<f64>)]
    pub rate_per_second: Option<Option<f64>>,
    /// Not available yet: only null is accepted.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<i64>)]
    pub rate_burst: Option<Option<i64>>,
    /// Not available yet: only false is accepted.
    pub adaptive: Option<bool>,
    /// Not available yet: only 1 is accepted.
    pub adaptive_min: Option<i64>,
}

/// A field that is present (even as `null`) becomes `Some(..)`; an absent
/// one stays `None` (`#[serde(default)]`).
pub(crate) fn present<'de, D, T>(d: D) -> Result<Option<Option<T>>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(d).map(Some)
}

fn limit_value(field: &str, v: i64) -> ApiResult<i32> {
    if (0..=MAX_LIMIT).contains(&v) {
        Ok(v as i32)
    } else {
        Err(ApiError::Validation(format!(
            "{field}: must be between 0 and {MAX_LIMIT}"
        )))
    }
}

/// Get the limits
#[utoipa::path(get, path = "/limits", tag = "limits", operation_id = "getLimits",
    responses((status = 200, description = "The limits in force", body = Limits)),
    security(("api_token" = [])))]
pub async fn get_limits(State(state): State<AppState>) -> ApiResult<Json<Limits>> {
    Ok(Json(store::limit_settings(&state.db).await?.into()))
}

/// Change the limits
///
/// Any non-empty subset of the fields; the others keep their value. Takes
/// effect for the next slot reservation on every replica. `max_concurrency`
/// 0 pauses dispatching; lowering it below the number running stops new
/// dispatches until enough jobs finish (nothing is interrupted).
/// `key_max_concurrency` caps every key without a cap of its own. Rate
/// limits and the adaptive limit are not available yet: only their neutral
/// values (null, false, 1) are accepted.
#[utoipa::path(put, path = "/limits", tag = "limits", operation_id = "setLimits",
    request_body = LimitsChange,
    responses(
        (status = 200, description = "The limits now", body = Limits),
        (status = 422, description = "Empty, out of range, or not available yet; nothing changed", body = crate::http::error::Problem, content_type = "application/problem+json"),
    ),
    security(("api_token" = [])))]
pub async fn put_limits(
    State(state): State<AppState>,
    ApiJson(body): ApiJson<LimitsChange>,
) -> ApiResult<Json<Limits>> {
    let max = match body.max_concurrency {
        None => None,
        Some(None) => return Err(ApiError::Validation("max_concurrency: must not be null".into())),
        Some(Some(v)) => Some(limit_value("max_concurrency", v)?),
    };
    let key_max = body
        .key_max_concurrency
        .map(|v| v.map(|v| limit_value("key_max_concurrency", v)).transpose())
        .transpose()?;
    if matches!(body.rate_per_second, Some(Some(_))) || matches!(body.rate_burst, Some(Some(_))) {
        return Err(ApiError::Validation(
            "rate limits are not available yet: only null is accepted".into(),
        ));
    }
    if body.adaptive == Some(true) || body.adaptive_min.is_some_and(|m| m != 1) {
        return Err(ApiError::Validation("the adaptive limit is not available yet".into()));
    }
    let named = [
        body.max_concurrency.is_some(),
        body.key_max_concurrency.is_some(),
        body.rate_per_second.is_some(),
        body.rate_burst.is_some(),
        body.adaptive.is_some(),
        body.adaptive_min.is_some(),
    ];
    if !named.contains(&true) {
        return Err(ApiError::Validation("name at least one field to change".into()));
    }
    let limits = store::update_limits(&state.db, max, key_max).await?;
    metrics::gauge!(crate::metrics::LIMIT).set(f64::from(limits.max_concurrency));
    metrics::gauge!(crate::metrics::EFFECTIVE_CONCURRENCY).set(f64::from(limits.max_concurrency));
    tracing::info!(max_concurrency = limits.max_concurrency, key_max_concurrency = ?limits.key_max_concurrency, "limits changed");
    if state.config.refill_on_callback {
        // A raised limit leaves free slots: fill them now rather than at the next tick.
        state.refill.notify_one();
    }
    Ok(Json(limits.into()))
}

/// One change of the limit.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[schema(example = json!({"at": "2026-11-27T10:00:00Z", "max_concurrency": 20, "effective_concurrency": 20, "reason": "api"}))]
pub struct LimitChange {
    pub at: DateTime<Utc>,
    pub max_concurrency: i64,
    /// The limit enforced from then on (equal to `max_concurrency` while the
    /// adaptive limit is not available).
    pub effective_concurrency: i64,
    /// Who set it: `api` (`PUT /limits`) or `config` (`MAX_CONCURRENCY`,
    /// when the database had no limit yet).
    pub reason: String,
}

/// A page of the limit's history, newest first.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct LimitHistoryPage {
    pub items: Vec<LimitChange>,
    /// Pass as `cursor` to get the next (older) page; null on the last page.
    #[schema(required = true)]
    pub next_cursor: Option<String>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct HistoryQuery {
    /// Page size, 1 to 1000 (default 100).
    #[param(value_type = Option<i64>, minimum = 1, maximum = 1000)]
    limit: Option<String>,
    /// `next_cursor` of the previous page.
    cursor: Option<String>,
}

/// The limit's history
///
/// Every setting of the limit, newest first: each `PUT /limits` that names
/// `max_concurrency` (reason `api`), and the first limit, from
/// `MAX_CONCURRENCY` (reason `config`).
#[utoipa::path(get, path = "/limits/history", tag = "limits", operation_id = "getLimitHistory",
    params(HistoryQuery),
    responses(
        (status = 200, description = "A page of the history", body = LimitHistoryPage),
        (status = 400, description = "Bad `limit` or `cursor`", body = crate::http::error::Problem, content_type = "application/problem+json"),
    ),
    security(("api_token" = [])))]
pub async fn get_limit_history(
    State(state): State<AppState>,
    StrictQuery(q): StrictQuery<HistoryQuery>,
) -> ApiResult<Json<LimitHistoryPage>> {
    let limit = extract::page_size(q.limit.as_deref())?;
    let before = extract::page_cursor(q.cursor.as_deref(), |c| {
        extract::cursor_text(c)
            .and_then(|s| s.parse::<i64>().ok())
            .filter(|id| *id > 0)
    })?;
    let mut rows = store::limit_history(&state.db, before, limit + 1).await?;
    let next_cursor = if rows.len() as i64 > limit {
        rows.truncate(limit as usize);
        rows.last().map(|r| extract::encode_cursor(&r.id.to_string()))
    } else {
        None
    };
    Ok(Json(LimitHistoryPage {
        items: rows
            .into_iter()
            .map(|r| LimitChange {
                at: r.at,
                max_concurrency: r.max_concurrency.into(),
                effective_concurrency: r.effective_concurrency.into(),
                reason: r.reason,
            })
            .collect(),
        next_cursor,
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

/// How old a queue depth `GET /stats` may reuse (`Queue::recent_depth`: only
/// while this replica has not changed the queue since it was read).
pub const STATS_DEPTH_MAX_AGE: std::time::Duration = std::time::Duration::from_secs(1);

/// Counts over all jobs
#[utoipa::path(get, path = "/stats", tag = "limits", operation_id = "getStats",
    responses((status = 200, description = "Counts over all jobs", body = Stats)),
    security(("api_token" = [])))]
pub async fn get_stats(State(state): State<AppState>) -> ApiResult<Json<Stats>> {
    let depth = tokio::time::timeout(
        std::time::Duration::from_secs(2),
        state.queue.recent_depth(STATS_DEPTH_MAX_AGE),
    );
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
