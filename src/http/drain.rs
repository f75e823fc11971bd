//! `POST /drain`, called by the EventBridge schedule (API destination).

use axum::{
    Json,
    extract::{Request, State},
};
use tracing::Instrument;
use utoipa_axum::{router::OpenApiRouter, routes};

use crate::{
    drain::{self, DrainReport},
    http::error::{ApiError, ApiResult},
    http::extract::body_bytes,
    state::AppState,
};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(drain_queue))
}

/// Hand queued jobs to the downstream
///
/// Reclaims expired leases, then submits queued jobs while the downstream
/// has free slots. Answers within `DRAIN_BUDGET_MS`; submissions still in
/// flight finish in the background. Safe to call concurrently from any number
/// of replicas. The body (the EventBridge event) is optional and ignored, but
/// if present it must be JSON.
#[utoipa::path(post, path = "/drain", tag = "drain", operation_id = "drainQueue",
    request_body(content = Option<serde_json::Value>, description = "The EventBridge event (any JSON, ignored), or no body at all"),
    responses((status = 200, description = "What this drain did", body = DrainReport)),
    security(("drain_token" = [])))]
pub async fn drain_queue(State(state): State<AppState>, req: Request) -> ApiResult<Json<DrainReport>> {
    let body = body_bytes(req, &state).await?;
    if !body.iter().all(u8::is_ascii_whitespace) {
        serde_json::from_slice::<serde::de::IgnoredAny>(&body)
            .map_err(|e| ApiError::BadRequest(format!("the body must be empty or JSON: {e}")))?;
    }
    let limit = state.config.drain_budget() + std::time::Duration::from_millis(500);
    // Run in its own task: if the client goes away or a dependency hangs, the
    // drain is not cancelled half-way (it finishes what it started).
    let task = {
        let state = state.clone();
        // In the request's span, so that the drain's log lines keep its request id.
        state
            .tasks
            .clone()
            .spawn(async move { drain::drain(&state).await }.in_current_span())
    };
    match tokio::time::timeout(limit, task).await {
        Ok(Ok(Ok(report))) => Ok(Json(report)),
        Ok(Err(join)) => Err(ApiError::Internal(join.into())),
        Ok(Ok(Err(e))) => Err(ApiError::unavailable(
            "a dependency (Postgres or SQS) is unavailable; nothing was lost",
            e,
        )),
        Err(_) => Err(ApiError::Unavailable {
            detail: "a dependency did not answer within the drain budget; nothing was lost".into(),
            retry_after_secs: 5,
            cause: None,
        }),
    }
}
