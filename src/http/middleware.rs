//! Cross-cutting HTTP behaviour: load shedding, problem responses for errors
//! produced outside handlers, panics, request metrics and tracing.

use std::{any::Any, time::Instant};

use axum::{
    BoxError,
    body::Body,
    extract::{MatchedPath, Request, State},
    http::{StatusCode, header},
    middleware::Next,
    response::{IntoResponse, Response},
};
use tower_http::{
    classify::{ServerErrorsAsFailures, SharedClassifier},
    trace::{DefaultOnResponse, TraceLayer},
};
use tracing::Level;

use crate::{
    http::error::{ApiError, Problem, problem_response},
    state::AppState,
};

/// The answer to a request shed by the in-flight cap: an immediate 503 with
/// `Retry-After`, instead of an unbounded queue in front of Postgres.
pub async fn overloaded(_: BoxError) -> ApiError {
    metrics::counter!(crate::metrics::HTTP_SHED).increment(1);
    ApiError::Unavailable {
        detail: "too many requests in flight; retry shortly".into(),
        retry_after_secs: 1,
        cause: None,
    }
}

/// How long a client should wait before retrying while Postgres is down.
const POSTGRES_DOWN_RETRY_AFTER_SECS: u32 = 1;

/// For routes that need Postgres: while the watcher (`pg_watch`) finds it
/// down, answer 503 with `Retry-After` at once instead of waiting for the
/// pool's acquire timeout; a request already waiting is answered as soon as
/// Postgres is found down. Dropping the handler there is safe: drains run in
/// their own task, and a job is acknowledged only after its COMMIT.
pub async fn fail_fast_without_postgres(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let down = || {
        ApiError::Unavailable {
            detail: "Postgres is unreachable; nothing was changed".into(),
            retry_after_secs: POSTGRES_DOWN_RETRY_AFTER_SECS,
            cause: None,
        }
        .into_response()
    };
    if state.postgres.is_down() {
        return down();
    }
    tokio::select! {
        biased;
        response = next.run(req) => response,
        _ = state.postgres.gone_down() => down(),
    }
}

/// Total size of a request's headers accepted, names and values together.
pub const MAX_HEADER_BYTES: usize = 64 * 1024;

/// Refuses requests whose headers are larger than [`MAX_HEADER_BYTES`] (431).
pub async fn limit_header_size(req: Request, next: Next) -> Response {
    let size: usize = req.headers().iter().map(|(n, v)| n.as_str().len() + v.len()).sum();
    if size > MAX_HEADER_BYTES {
        let detail = format!("request headers are larger than {MAX_HEADER_BYTES} bytes");
        return problem_response(&Problem::new(StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE, None, detail));
    }
    next.run(req).await
}

pub async fn not_found() -> ApiError {
    ApiError::NotFound("no such route".into())
}

/// Errors made by the framework or by tower layers (405, 408, ...) come
/// without a body: give them an RFC 9457 body like every other error.
pub async fn problem_for_bare_errors(req: Request, next: Next) -> Response {
    let response = next.run(req).await;
    let status = response.status();
    let is_problem = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/problem+json"));
    if !(status.is_client_error() || status.is_server_error()) || is_problem {
        return response;
    }
    let detail = match status {
        StatusCode::METHOD_NOT_ALLOWED => "this method is not allowed on this route",
        StatusCode::REQUEST_TIMEOUT => "the request took too long",
        StatusCode::PAYLOAD_TOO_LARGE => "the request body is too large",
        _ => status.canonical_reason().unwrap_or("error"),
    };
    let mut fixed = problem_response(&Problem::new(status, None, detail));
    for (name, value) in response.headers() {
        if name != header::CONTENT_TYPE && name != header::CONTENT_LENGTH {
            fixed.headers_mut().insert(name.clone(), value.clone());
        }
    }
    fixed
}

pub fn panic_response(err: Box<dyn Any + Send + 'static>) -> Response {
    // The panic message may hold data: log it, never return it.
    let msg = err
        .downcast_ref::<String>()
        .map(String::as_str)
        .or_else(|| err.downcast_ref::<&str>().copied())
        .unwrap_or("(no message)");
    tracing::error!(panic = msg, "a request handler panicked");
    ApiError::Internal(anyhow::anyhow!("handler panicked")).into_response()
}

/// `sluicegate_http_requests_total{method,route,status}` and
/// `sluicegate_http_request_duration_seconds{method,route,status}`.
pub async fn record_metrics(req: Request, next: Next) -> Response {
    let started = Instant::now();
    // Only standard methods become label values: arbitrary ones would make
    // a new series each (unbounded memory, for anyone without a token).
    let method = match req.method().as_str() {
        m @ ("GET" | "HEAD" | "POST" | "PUT" | "PATCH" | "DELETE" | "OPTIONS") => m.to_owned(),
        _ => "other".to_owned(),
    };
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let response = next.run(req).await;
    let labels = [
        ("method", method),
        ("route", route),
        ("status", response.status().as_u16().to_string()),
    ];
    metrics::counter!(crate::metrics::HTTP_REQUESTS, &labels).increment(1);
    metrics::histogram!(crate::metrics::HTTP_DURATION, &labels).record(started.elapsed().as_secs_f64());
    response
}

type Trace = TraceLayer<
    SharedClassifier<ServerErrorsAsFailures>,
    fn(&Request<Body>) -> tracing::Span,
    tower_http::trace::DefaultOnRequest,
    DefaultOnResponse,
>;

fn make_span(req: &Request<Body>) -> tracing::Span {
    let request_id = req
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("-");
    // The path only: query strings and headers (Authorization) are not logged.
    tracing::info_span!("http", method = %req.method(), path = %req.uri().path(), request_id = %request_id)
}

pub fn trace_layer() -> Trace {
    TraceLayer::new_for_http()
        .make_span_with(make_span as fn(&Request<Body>) -> tracing::Span)
        .on_response(DefaultOnResponse::new().level(Level::INFO))
}

#[cfg(test)]
mod tests {
    use axum::{Router, body::Body, http::Request, routing::get};
    use tower::ServiceExt;
    use tower_http::catch_panic::CatchPanicLayer;

    #[tokio::test]
    async fn a_panicking_handler_gives_a_500_problem_without_its_message() {
        async fn boom() -> &'static str {
            panic!("secret detail from the panic")
        }
        let app = Router::new()
            .route("/", get(boom))
            .layer(CatchPanicLayer::custom(super::panic_response));
        let r = app
            .oneshot(Request::get("/").body(Body::empty()).unwrap())
            .await
            .unwrap();
        assert_eq!(r.status(), 500);
        assert_eq!(r.headers()["content-type"], "application/problem+json");
        let body = axum::body::to_bytes(r.into_body(), 10_000).await.unwrap();
        let text = String::from_utf8(body.to_vec()).unwrap();
        assert!(!text.contains("secret detail"), "{text}");
        assert!(text.contains("\"status\":500"), "{text}");
    }
}
