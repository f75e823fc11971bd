//! One error type for the HTTP API, rendered as RFC 9457 problem details.
//! 5xx causes are logged and never shown to the client.

use axum::{
    http::{HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use serde::Serialize;
use utoipa::ToSchema;

/// An RFC 9457 problem document (`application/problem+json`).
#[derive(Debug, Clone, Serialize, serde::Deserialize, ToSchema, PartialEq)]
#[schema(example = json!({"type": "urn:sluicegate:problem:validation", "title": "Unprocessable Content", "status": 422, "detail": "payload: missing field `payload`"}))]
pub struct Problem {
    /// A URI naming the kind of problem (`about:blank` when the status says it all).
    #[serde(rename = "type")]
    pub type_: String,
    /// A short summary of the kind of problem.
    pub title: String,
    /// The HTTP status code.
    #[schema(minimum = 100, maximum = 599)]
    pub status: u16,
    /// What went wrong with this request.
    pub detail: String,
}

impl Problem {
    pub fn new(status: StatusCode, kind: Option<&str>, detail: impl Into<String>) -> Self {
        Self {
            type_: kind.map_or_else(|| "about:blank".to_owned(), |k| format!("urn:sluicegate:problem:{k}")),
            title: status.canonical_reason().unwrap_or("Error").to_owned(),
            status: status.as_u16(),
            detail: detail.into(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// Malformed request: bad JSON syntax, bad query, bad path parameter.
    #[error("{0}")]
    BadRequest(String),
    /// Well-formed but invalid: wrong types, unknown fields, out-of-range values.
    #[error("{0}")]
    Validation(String),
    #[error("{0}")]
    IdempotencyKeyReused(String),
    #[error("missing or invalid credentials")]
    Unauthorized { invalid_token: bool },
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("the request body is larger than this server accepts (MAX_BODY_BYTES)")]
    PayloadTooLarge,
    #[error("{0}")]
    UnsupportedMediaType(String),
    /// A dependency (Postgres, SQS) is unavailable; the client may retry.
    #[error("{detail}")]
    Unavailable {
        detail: String,
        retry_after_secs: u32,
        cause: Option<anyhow::Error>,
    },
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

impl ApiError {
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::Validation(_) | ApiError::IdempotencyKeyReused(_) => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::Unauthorized { .. } => StatusCode::UNAUTHORIZED,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::Unavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    pub fn problem(&self) -> Problem {
        let status = self.status();
        let kind = match self {
            ApiError::BadRequest(_) => Some("bad-request"),
            ApiError::Validation(_) => Some("validation"),
            ApiError::IdempotencyKeyReused(_) => Some("idempotency-key-reused"),
            ApiError::Conflict(_) => Some("invalid-state"),
            ApiError::Unavailable { .. } => Some("unavailable"),
            _ => None,
        };
        let detail = match self {
            ApiError::Internal(_) => "an internal error occurred; it has been logged".to_owned(),
            other => other.to_string(),
        };
        Problem::new(status, kind, detail)
    }

    pub fn unavailable(detail: impl Into<String>, cause: impl Into<anyhow::Error>) -> Self {
        ApiError::Unavailable {
            detail: detail.into(),
            retry_after_secs: 5,
            cause: Some(cause.into()),
        }
    }
}

impl From<sqlx::Error> for ApiError {
    fn from(e: sqlx::Error) -> Self {
        std::sync::Arc::new(e).into()
    }
}

/// A database error shared by several requests (a group's enqueue).
impl From<std::sync::Arc<sqlx::Error>> for ApiError {
    fn from(e: std::sync::Arc<sqlx::Error>) -> Self {
        match &*e {
            // The database is unreachable, or the connection broke mid-way.
            sqlx::Error::PoolTimedOut
            | sqlx::Error::Io(_)
            | sqlx::Error::PoolClosed
            | sqlx::Error::Tls(_)
            | sqlx::Error::Protocol(_)
            | sqlx::Error::WorkerCrashed => ApiError::unavailable("the database is unavailable; retry later", e),
            // Failover, shutdown, overload and serialization/deadlock aborts:
            // transient, the client may retry.
            sqlx::Error::Database(db) if db.code().is_some_and(|c| is_transient_sqlstate(&c)) => {
                ApiError::unavailable("the database is busy or failing over; retry later", e)
            }
            _ => ApiError::Internal(e.into()),
        }
    }
}

/// SQLSTATE classes 08 (connection), 40 (transaction rollback: deadlock,
/// serialization), 53 (insufficient resources), 57 (operator intervention:
/// shutdown), and 25006 (read-only transaction, during a failover).
fn is_transient_sqlstate(code: &str) -> bool {
    ["08", "40", "53", "57"].iter().any(|class| code.starts_with(class)) || code == "25006"
}

/// Writes a problem response with the right content type.
pub fn problem_response(problem: &Problem) -> Response {
    let status = StatusCode::from_u16(problem.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let body = serde_json::to_vec(problem).expect("a problem always serialises");
    (
        status,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        )],
        body,
    )
        .into_response()
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        match &self {
            ApiError::Internal(cause) => tracing::error!(error = ?cause, "request failed"),
            ApiError::Unavailable {
                cause: Some(cause),
                detail,
                ..
            } => {
                tracing::warn!(error = %cause, %detail, "dependency unavailable")
            }
            _ => {}
        }
        let mut response = problem_response(&self.problem());
        match &self {
            ApiError::Unauthorized { invalid_token } => {
                let value = if *invalid_token {
                    r#"Bearer realm="sluicegate", error="invalid_token""#
                } else {
                    r#"Bearer realm="sluicegate""#
                };
                response
                    .headers_mut()
                    .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static(value));
            }
            ApiError::Unavailable { retry_after_secs, .. } => {
                response
                    .headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from(*retry_after_secs));
            }
            _ => {}
        }
        response
    }
}

pub type ApiResult<T> = Result<T, ApiError>;
