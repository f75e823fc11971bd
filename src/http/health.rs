//! Probes and metrics: open endpoints, no credentials.

use std::time::Duration;

use axum::{Json, extract::State, http::header, response::IntoResponse};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::{router::OpenApiRouter, routes};

use crate::{http::error::ApiError, state::AppState};

/// Liveness and Prometheus metrics: never shed under load.
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(healthz)).routes(routes!(metrics))
}

/// Readiness: behind the in-flight cap, so an overloaded replica reports it.
pub fn readiness_router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(readyz))
}

/// A probe's answer.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[schema(example = json!({"status": "ok"}))]
pub struct Health {
    /// `ok`
    pub status: String,
}

/// Liveness
///
/// The process is up; no dependency is checked.
#[utoipa::path(get, path = "/healthz", tag = "operations", operation_id = "getHealth",
    responses((status = 200, description = "Alive", body = Health)))]
pub async fn healthz() -> Json<Health> {
    Json(Health { status: "ok".into() })
}

/// Readiness
///
/// Postgres and SQS are reachable. 503 names what is down.
#[utoipa::path(get, path = "/readyz", tag = "operations", operation_id = "getReadiness",
    responses(
        (status = 200, description = "Ready", body = Health),
        (status = 503, description = "A dependency is down (named in `detail`)", body = crate::http::error::Problem, content_type = "application/problem+json",
            headers(("Retry-After" = u32, description = "Seconds to wait before asking again"))),
    ))]
pub async fn readyz(State(state): State<AppState>) -> Result<Json<Health>, ApiError> {
    let timeout = Duration::from_secs(2);
    // While the watcher knows Postgres is down, say so without waiting for
    // the pool.
    let pg = async {
        !state.postgres.is_down()
            && matches!(
                tokio::time::timeout(timeout, crate::store::ping(&state.db)).await,
                Ok(Ok(_))
            )
    };
    let sqs = tokio::time::timeout(timeout, state.queue.depth());
    let (pg_up, sqs) = tokio::join!(pg, sqs);
    let mut down = Vec::new();
    if !pg_up {
        down.push("postgres");
    }
    if !matches!(sqs, Ok(Ok(_))) {
        down.push("sqs");
    }
    if down.is_empty() {
        Ok(Json(Health { status: "ok".into() }))
    } else {
        Err(ApiError::Unavailable {
            detail: format!("not ready: {} unreachable", down.join(" and ")),
            retry_after_secs: 5,
            cause: None,
        })
    }
}

/// Prometheus metrics
#[utoipa::path(get, path = "/metrics", tag = "operations", operation_id = "getMetrics",
    responses((status = 200, description = "Prometheus text exposition format", body = String, content_type = "text/plain; version=0.0.4")))]
pub async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")],
        state.metrics.render(),
    )
}
