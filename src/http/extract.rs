//! Extractors that turn every malformed input into a problem response.

use axum::{
    body::Bytes,
    extract::{FromRequest, FromRequestParts, Request},
    http::{header, request::Parts},
};
use serde::de::DeserializeOwned;
use uuid::Uuid;

use crate::http::error::ApiError;

/// A JSON body: `Content-Type: application/json` (or `+json`) required,
/// syntax errors -> 400, type errors and unknown fields -> 422, too large -> 413.
pub struct ApiJson<T>(pub T);

pub fn is_json_content_type(parts_headers: &axum::http::HeaderMap) -> bool {
    let Some(ct) = parts_headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let mime = ct.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    mime == "application/json" || (mime.starts_with("application/") && mime.ends_with("+json"))
}

/// Reads the whole body within the configured limit.
pub async fn body_bytes<S: Send + Sync>(req: Request, state: &S) -> Result<Bytes, ApiError> {
    Bytes::from_request(req, state).await.map_err(|e| {
        if e.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::PayloadTooLarge
        } else {
            ApiError::BadRequest("could not read the request body".into())
        }
    })
}

pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    // Every body this API takes is a JSON object. serde would also fill a
    // struct from an array of its fields in order (`[1, null]`): refuse that.
    if bytes.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'[')
        && serde_json::from_slice::<serde::de::IgnoredAny>(bytes).is_ok()
    {
        return Err(ApiError::Validation(
            "invalid request body: expected a JSON object, got an array".into(),
        ));
    }
    serde_json::from_slice(bytes).map_err(|e| match e.classify() {
        serde_json::error::Category::Data => ApiError::Validation(format!("invalid request body: {e}")),
        // Valid JSON whose number no field can hold (e.g. 1e400) is a bad value, not bad syntax.
        _ if e.to_string().starts_with("number out of range") => {
            ApiError::Validation(format!("invalid request body: {e}"))
        }
        _ => ApiError::BadRequest(format!("malformed JSON: {e}")),
    })
}

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        if !is_json_content_type(req.headers()) {
            return Err(ApiError::UnsupportedMediaType(
                "the request body must be JSON (Content-Type: application/json)".into(),
            ));
        }
        let bytes = body_bytes(req, state).await?;
        parse_json(&bytes).map(ApiJson)
    }
}

/// The `{id}` of a job route: a UUID, or 400.
pub struct JobId(pub Uuid);

impl<S: Send + Sync> FromRequestParts<S> for JobId {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let axum::extract::Path(raw) = axum::extract::Path::<String>::from_request_parts(parts, state)
            .await
            .map_err(|_| ApiError::BadRequest("missing job id".into()))?;
        Uuid::parse_str(&raw)
            .map(JobId)
            .map_err(|_| ApiError::BadRequest("the job id is not a valid UUID".into()))
    }
}

/// Query parameters with strict parsing: unknown parameters and bad values -> 400.
pub struct StrictQuery<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for StrictQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        let query = parts.uri.query().unwrap_or("");
        serde_urlencoded::from_str(query)
            .map(StrictQuery)
            .map_err(|e| ApiError::BadRequest(format!("invalid query: {e}")))
    }
}

/// Page size of a list when `limit` is not given.
pub const DEFAULT_PAGE: i64 = 100;
/// The largest `limit` of a list.
pub const MAX_PAGE: i64 = 1000;

/// The `limit` query value of a list: 1 to [`MAX_PAGE`], [`DEFAULT_PAGE`]
/// when absent; anything else -> 400.
pub fn page_size(raw: Option<&str>) -> Result<i64, ApiError> {
    match raw {
        None => Ok(DEFAULT_PAGE),
        Some(l) => l
            .parse::<i64>()
            .ok()
            .filter(|l| (1..=MAX_PAGE).contains(l))
            .ok_or_else(|| ApiError::BadRequest(format!("limit: must be an integer from 1 to {MAX_PAGE}"))),
    }
}

/// A list's `next_cursor`: its position as opaque text (URL-safe base64).
pub fn encode_cursor(position: &str) -> String {
    use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
    URL_SAFE_NO_PAD.encode(position)
}

/// The position a cursor of [`encode_cursor`] holds, if it holds text.
pub fn cursor_text(cursor: &str) -> Option<String> {
    use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
    String::from_utf8(URL_SAFE_NO_PAD.decode(cursor).ok()?).ok()
}

/// The `cursor` query value of a list, read by `parse` (`None`: not a
/// cursor this API returned -> 400); absent -> `None`.
pub fn page_cursor<T>(raw: Option<&str>, parse: impl FnOnce(&str) -> Option<T>) -> Result<Option<T>, ApiError> {
    raw.map(|c| parse(c).ok_or_else(|| ApiError::BadRequest("cursor: not a cursor this API returned".into())))
        .transpose()
}
