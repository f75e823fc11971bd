//! Flow-control keys: their settings (cap, weight) and what they hold now.

use axum::{
    Json,
    extract::{Path, State},
    http::StatusCode,
};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::{router::OpenApiRouter, routes};

use crate::{
    domain::JobKey,
    http::{
        error::{ApiError, ApiResult, Problem},
        extract::{self, ApiJson, StrictQuery},
        limits::{MAX_LIMIT, present},
    },
    state::AppState,
    store::{self, KeyInfo},
};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_keys))
        .routes(routes!(get_key, put_key, delete_key))
}

/// A flow-control key.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[schema(example = json!({"key": "tenant-a", "max_concurrency": 4, "weight": 1.0, "rate_per_second": null,
    "rate_burst": null, "queued": 120, "running": 4, "oldest_queued_at": "2026-01-15T10:00:00Z"}))]
pub struct Key {
    pub key: String,
    /// Its own cap (0 pauses the key); null: the global `key_max_concurrency`, if any.
    #[schema(required = true, minimum = 0)]
    pub max_concurrency: Option<i64>,
    /// Its share of the slots when the global limit binds (default 1).
    pub weight: f64,
    /// Rate limits are not available yet: always null.
    #[schema(required = true)]
    pub rate_per_second: Option<f64>,
    /// Rate limits are not available yet: always null.
    #[schema(required = true)]
    pub rate_burst: Option<i64>,
    /// Its jobs waiting.
    pub queued: i64,
    /// Its jobs dispatching or running.
    pub running: i64,
    /// When its oldest waiting job was submitted; null if none waits.
    #[schema(required = true)]
    pub oldest_queued_at: Option<DateTime<Utc>>,
}

impl From<KeyInfo> for Key {
    fn from(k: KeyInfo) -> Self {
        Self {
            key: k.key,
            max_concurrency: k.max_concurrency.map(i64::from),
            weight: k.weight,
            rate_per_second: None,
            rate_burst: None,
            queued: k.queued,
            running: k.running,
            oldest_queued_at: k.oldest_queued_at,
        }
    }
}

/// A page of keys, in key order.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct KeyPage {
    pub items: Vec<Key>,
    /// Pass as `cursor` to get the next page; null on the last page.
    #[schema(required = true)]
    pub next_cursor: Option<String>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct KeyListQuery {
    /// Page size, 1 to 1000 (default 100).
    #[param(value_type = Option<i64>, minimum = 1, maximum = 1000)]
    limit: Option<String>,
    /// `next_cursor` of the previous page.
    cursor: Option<String>,
}

/// A change of a key's settings: any non-empty subset; fields not named keep
/// their value.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"max_concurrency": 4, "weight": 3}))]
pub struct KeyChange {
    /// Its own cap; 0 pauses the key; null removes the cap.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<i64>, minimum = 0, maximum = 1000000)]
    pub max_concurrency: Option<Option<i64>>,
    /// 0.01 to 100.
    #[schema(minimum = 0.01, maximum = 100)]
    pub weight: Option<f64>,
    /// Not available yet: only null is accepted.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<f64>)]
    pub rate_per_second: Option<Option<f64>>,
    /// Not available yet: only null is accepted.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<i64>)]
    pub rate_burst: Option<Option<i64>>,
}

fn parse_key(raw: &str) -> ApiResult<JobKey> {
    JobKey::parse(raw).map_err(ApiError::BadRequest)
}

/// List keys
///
/// Keys that have queued or live jobs, or settings of their own.
#[utoipa::path(get, path = "/keys", tag = "keys", operation_id = "listKeys",
    params(KeyListQuery),
    responses((status = 200, description = "A page of keys", body = KeyPage)),
    security(("api_token" = [])))]
pub async fn list_keys(
    State(state): State<AppState>,
    StrictQuery(q): StrictQuery<KeyListQuery>,
) -> ApiResult<Json<KeyPage>> {
    let limit = extract::page_size(q.limit.as_deref())?;
    let after = extract::page_cursor(q.cursor.as_deref(), |c| {
        extract::cursor_text(c).filter(|k| JobKey::parse(k).is_ok())
    })?;
    let mut items = store::list_keys(&state.db, after.as_deref(), limit + 1).await?;
    let next_cursor = if items.len() as i64 > limit {
        items.truncate(limit as usize);
        items.last().map(|k| extract::encode_cursor(&k.key))
    } else {
        None
    };
    Ok(Json(KeyPage {
        items: items.into_iter().map(Key::from).collect(),
        next_cursor,
    }))
}

/// Get a key
#[utoipa::path(get, path = "/keys/{key}", tag = "keys", operation_id = "getKey",
    params(("key" = String, Path, description = "The key, percent-encoded")),
    responses(
        (status = 200, description = "The key", body = Key),
        (status = 404, description = "No jobs and no settings for this key", body = Problem, content_type = "application/problem+json"),
    ),
    security(("api_token" = [])))]
pub async fn get_key(State(state): State<AppState>, Path(raw): Path<String>) -> ApiResult<Json<Key>> {
    let key = parse_key(&raw)?;
    store::get_key(&state.db, key.as_str())
        .await?
        .map(|k| Json(k.into()))
        .ok_or_else(|| ApiError::NotFound(format!("no jobs and no settings for key {:?}", key.as_str())))
}

/// Set a key's cap or weight
///
/// Any non-empty subset of the fields; the others keep their value. A cap
/// takes effect for the next slot reservation on every replica; it is exact
/// like the global limit. Rate limits are not available yet: only null is
/// accepted for them.
#[utoipa::path(put, path = "/keys/{key}", tag = "keys", operation_id = "setKey",
    params(("key" = String, Path, description = "The key, percent-encoded")),
    request_body = KeyChange,
    responses(
        (status = 200, description = "The key now", body = Key),
        (status = 422, description = "Empty, out of range, or not available yet; nothing changed", body = Problem, content_type = "application/problem+json"),
    ),
    security(("api_token" = [])))]
pub async fn put_key(
    State(state): State<AppState>,
    Path(raw): Path<String>,
    ApiJson(body): ApiJson<KeyChange>,
) -> ApiResult<Json<Key>> {
    let key = parse_key(&raw)?;
    let cap = body
        .max_concurrency
        .map(|c| {
            c.map(|c| {
                if (0..=MAX_LIMIT).contains(&c) {
                    Ok(c as i32)
                } else {
                    Err(ApiError::Validation(format!(
                        "max_concurrency: must be between 0 and {MAX_LIMIT}, or null"
                    )))
                }
            })
            .transpose()
        })
        .transpose()?;
    if body.weight.is_some_and(|w| !(0.01..=100.0).contains(&w)) {
        return Err(ApiError::Validation("weight: must be between 0.01 and 100".into()));
    }
    if matches!(body.rate_per_second, Some(Some(_))) || matches!(body.rate_burst, Some(Some(_))) {
        return Err(ApiError::Validation(
            "rate limits are not available yet: only null is accepted".into(),
        ));
    }
    if body.max_concurrency.is_none()
        && body.weight.is_none()
        && body.rate_per_second.is_none()
        && body.rate_burst.is_none()
    {
        return Err(ApiError::Validation("name at least one field to change".into()));
    }
    let mut tx = state.db.begin().await?;
    store::put_key(&mut tx, key.as_str(), cap, body.weight).await?;
    tx.commit().await?;
    tracing::info!(key = key.as_str(), max_concurrency = ?cap, weight = ?body.weight, "key settings changed");
    if state.config.refill_on_callback {
        state.refill.notify_one();
    }
    let info = store::get_key(&state.db, key.as_str())
        .await?
        .ok_or_else(|| ApiError::Internal(anyhow::anyhow!("a key just set has settings")))?;
    Ok(Json(info.into()))
}

/// Remove a key's own settings
///
/// Its jobs are untouched; it falls back to the global `key_max_concurrency`
/// and weight 1.
#[utoipa::path(delete, path = "/keys/{key}", tag = "keys", operation_id = "deleteKey",
    params(("key" = String, Path, description = "The key, percent-encoded")),
    responses((status = 204, description = "Its settings are gone (or it had none)")),
    security(("api_token" = [])))]
pub async fn delete_key(State(state): State<AppState>, Path(raw): Path<String>) -> ApiResult<StatusCode> {
    let key = parse_key(&raw)?;
    if store::delete_key(&state.db, key.as_str()).await? && state.config.refill_on_callback {
        state.refill.notify_one();
    }
    Ok(StatusCode::NO_CONTENT)
}
