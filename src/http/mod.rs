//! The HTTP API: one module per resource, each with its own router, merged
//! here with the middleware stack. Routes are registered through utoipa-axum,
//! so the OpenAPI document cannot forget one.

pub mod callbacks;
pub mod docs;
pub mod drain;
pub mod extract;
pub mod health;
pub mod jobs;
pub mod limits;
mod middleware;

use std::{sync::LazyLock, time::Duration};

use axum::{Router, error_handling::HandleErrorLayer, extract::DefaultBodyLimit};
use tower::ServiceBuilder;
use tower_http::{
    catch_panic::CatchPanicLayer,
    request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer},
    sensitive_headers::SetSensitiveRequestHeadersLayer,
    timeout::TimeoutLayer,
};
use utoipa::{
    Modify, OpenApi,
    openapi::{
        self,
        security::{Http, HttpAuthScheme, SecurityScheme},
    },
};
use utoipa_axum::router::OpenApiRouter;

use crate::{error::Problem, state::AppState};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "sluicegate",
        description = "Back pressure for a downstream that can only run N jobs at once. Clients submit jobs; \
                       jobs wait in SQS; `POST /drain` hands them to the downstream only while the number of \
                       jobs it is really running (known from its callbacks) is under the limit.\n\n\
                       Every error is an RFC 9457 problem (`application/problem+json`).",
        license(name = "Apache-2.0", identifier = "Apache-2.0"),
    ),
    tags(
        (name = "jobs", description = "Submit and follow jobs (API token)"),
        (name = "limits", description = "The concurrency limit and counts (API token)"),
        (name = "drain", description = "The scheduler's entry point (drain token)"),
        (name = "downstream", description = "Called by the downstream (per-job callback token)"),
        (name = "operations", description = "Probes, metrics and documentation (open)"),
    ),
    components(schemas(Problem)),
    modifiers(&SecuritySchemes, &CommonErrors),
)]
struct ApiDoc;

struct SecuritySchemes;

impl Modify for SecuritySchemes {
    fn modify(&self, doc: &mut openapi::OpenApi) {
        let components = doc.components.get_or_insert_with(Default::default);
        let bearer = |desc: &str| {
            let mut http = Http::new(HttpAuthScheme::Bearer);
            http.description = Some(desc.to_owned());
            SecurityScheme::Http(http)
        };
        components.add_security_scheme("api_token", bearer("A client token from `API_TOKENS`."));
        components.add_security_scheme(
            "drain_token",
            bearer("The `DRAIN_TOKEN` sent by the EventBridge connection."),
        );
        components.add_security_scheme(
            "callback_token",
            bearer("The `callback_token` sluicegate sent with this job's current attempt."),
        );
    }
}

/// Adds the problem responses every operation of a kind can give, so each
/// operation documents them without repeating them in every annotation.
struct CommonErrors;

impl Modify for CommonErrors {
    fn modify(&self, doc: &mut openapi::OpenApi) {
        use openapi::{ContentBuilder, Ref, ResponseBuilder};
        let problem = |desc: &str| {
            ResponseBuilder::new()
                .description(desc)
                .content(
                    "application/problem+json",
                    ContentBuilder::new()
                        .schema(Some(Ref::from_schema_name("Problem")))
                        .build(),
                )
                .build()
        };
        for (path, item) in doc.paths.paths.iter_mut() {
            let ops = [
                item.get.as_mut(),
                item.put.as_mut(),
                item.post.as_mut(),
                item.delete.as_mut(),
                item.patch.as_mut(),
            ];
            for op in ops.into_iter().flatten() {
                let secured = op.security.as_ref().is_some_and(|s| !s.is_empty());
                let has_body = op.request_body.is_some();
                let has_params = op.parameters.as_ref().is_some_and(|p| !p.is_empty());
                let r = &mut op.responses.responses;
                let mut add = |code: &str, desc: &str| {
                    r.entry(code.to_owned()).or_insert_with(|| problem(desc).into());
                };
                if has_body || has_params {
                    add("400", "Malformed request (JSON syntax, query or path parameter)");
                }
                if secured {
                    add("401", "Missing or invalid credentials");
                }
                if has_body {
                    add("413", "Request body too large");
                    add("415", "The body is not JSON");
                    add("422", "Invalid request body");
                }
                if path != "/healthz" && path != "/metrics" {
                    add(
                        "503",
                        "Overloaded or a dependency is unavailable; retry after `Retry-After`",
                    );
                }
                add("500", "Internal error (details are logged, never returned)");
            }
        }
    }
}

/// All routes with their OpenAPI description (no state yet).
fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .merge(jobs::router())
        .merge(callbacks::router())
        .merge(drain::router())
        .merge(limits::router())
        .merge(health::router())
        .merge(health::readiness_router())
        .merge(docs::router())
}

/// The OpenAPI document of the API.
pub fn openapi() -> openapi::OpenApi {
    routes().into_openapi()
}

static OPENAPI_JSON: LazyLock<String> = LazyLock::new(|| {
    let mut s = openapi().to_pretty_json().expect("the OpenAPI document serialises");
    s.push('\n');
    s
});

/// The OpenAPI document as served and committed in `openapi/openapi.json`.
pub fn openapi_json() -> &'static String {
    &OPENAPI_JSON
}

/// The application's router with its middleware.
pub fn router(state: AppState) -> Router {
    let c = &state.config;
    let client = OpenApiRouter::new()
        .merge(jobs::router())
        .merge(limits::router())
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            crate::auth::require_api_token,
        ));
    let scheduler = drain::router().route_layer(axum::middleware::from_fn_with_state(
        state.clone(),
        crate::auth::require_drain_token,
    ));
    // Everything but liveness and metrics is behind the in-flight cap.
    let shed = OpenApiRouter::new()
        .merge(client)
        .merge(scheduler)
        .merge(callbacks::router())
        .merge(health::readiness_router())
        .merge(docs::router())
        .layer(
            ServiceBuilder::new()
                .layer(HandleErrorLayer::new(middleware::overloaded))
                .load_shed()
                .concurrency_limit(c.max_in_flight_requests as usize),
        );
    let (app, _) = OpenApiRouter::new()
        .merge(shed)
        .merge(health::router())
        .split_for_parts();

    app.fallback(middleware::not_found)
        .layer(DefaultBodyLimit::max(c.max_body_bytes as usize))
        .layer(
            ServiceBuilder::new()
                .layer(SetSensitiveRequestHeadersLayer::new([
                    axum::http::header::AUTHORIZATION,
                ]))
                .layer(SetRequestIdLayer::x_request_id(MakeRequestUuid))
                .layer(PropagateRequestIdLayer::x_request_id())
                .layer(middleware::trace_layer())
                .layer(axum::middleware::from_fn(middleware::problem_for_bare_errors))
                .layer(axum::middleware::from_fn(middleware::record_metrics))
                .layer(CatchPanicLayer::custom(middleware::panic_response))
                .layer(TimeoutLayer::with_status_code(
                    axum::http::StatusCode::REQUEST_TIMEOUT,
                    Duration::from_secs(c.request_timeout_secs),
                )),
        )
        .with_state(state)
}
