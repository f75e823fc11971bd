//! The HTTP API: one module per resource, each with its own router, merged
//! here with the middleware stack. Routes are registered through utoipa-axum,
//! so the OpenAPI document cannot forget one.

pub mod auth;
pub mod callbacks;
pub mod docs;
pub mod drain;
pub mod error;
pub mod extract;
pub mod health;
pub mod jobs;
pub mod keys;
pub mod limits;
mod middleware;

use std::{sync::LazyLock, time::Duration};

use axum::{Extension, Router, error_handling::HandleErrorLayer, extract::DefaultBodyLimit};
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

use crate::{http::error::Problem, state::AppState};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "sluicegate",
        description = "Back pressure for a downstream that can only run N jobs at once. Clients submit jobs; \
                       jobs wait in SQS; `POST /drain` hands them to the downstream only while the number of \
                       jobs it is really running (known from its callbacks) is under the limit.\n\n\
                       Every error is an RFC 9457 problem (`application/problem+json`).\n\n\
                       ## The downstream protocol\n\n\
                       A job is submitted with `POST <DOWNSTREAM_URL>`, header `Idempotency-Key: <job id>:<attempt>` \
                       and body `{job_id, attempt, payload, callback_url, heartbeat_url, callback_token}`. \
                       Every submission has its own `attempt` number (and so its own key and token). What the \
                       answer does:\n\n\
                       | downstream answers | the job |\n|---|---|\n\
                       | 2xx | `running`; its SQS message is deleted |\n\
                       | 429 or 503 | `queued` again without using an attempt; no submission to the downstream before \
                       its `Retry-After` (at most 3600 s); the drain stops with `downstream_busy` |\n\
                       | other 4xx | `failed` (rejected) |\n\
                       | 5xx, connection refused | an attempt is used; `queued` again after an exponential back-off; \
                       after `max_attempts`, `failed` |\n\
                       | timeout, connection lost after sending | outcome unknown: it keeps its slot with the lease of a \
                       running job (`timeout_secs`); a callback or heartbeat settles it; if the lease ends without \
                       news it is `queued` again for its next attempt (one attempt used). So a slow downstream never \
                       holds more than the limit. |\n\n\
                       The downstream ends a job with `POST /jobs/{id}/callback` and may extend its lease with \
                       `POST /jobs/{id}/heartbeat`, both with the `callback_token` of the current attempt. A job \
                       whose lease runs out may still be running downstream: it is then submitted again under a new \
                       attempt, and a downstream that remembers the `Idempotency-Key`s it has run can tell.",
        license(name = "Apache-2.0", identifier = "Apache-2.0"),
    ),
    tags(
        (name = "jobs", description = "Submit and follow jobs (API token)"),
        (name = "limits", description = "The concurrency limit and counts (API token)"),
        (name = "keys", description = "Flow-control keys: caps and weights (API token)"),
        (name = "drain", description = "The scheduler's entry point (drain token)"),
        (name = "downstream", description = "Called by the downstream (per-job callback token)"),
        (name = "operations", description = "Probes, metrics and documentation (open)"),
    ),
    components(schemas(Problem)),
    modifiers(&SecuritySchemes),
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
/// operation documents them without repeating them in every annotation. It
/// must run on the merged document (see `openapi()`): the modifiers of
/// `ApiDoc` run before the routes are added.
struct CommonErrors;

impl Modify for CommonErrors {
    fn modify(&self, doc: &mut openapi::OpenApi) {
        use openapi::{
            ContentBuilder, ObjectBuilder, Ref, Required, ResponseBuilder, Type, header::HeaderBuilder,
            path::ParameterIn, security::SecurityRequirement,
        };
        let problem = |desc: &str| {
            ResponseBuilder::new().description(desc).content(
                "application/problem+json",
                ContentBuilder::new()
                    .schema(Some(Ref::from_schema_name("Problem")))
                    .build(),
            )
        };
        let header = |ty: Type, desc: &str| {
            HeaderBuilder::new()
                .schema(ObjectBuilder::new().schema_type(ty))
                .description(Some(desc))
                .build()
        };
        let callback_token = SecurityRequirement::new("callback_token", Vec::<String>::new());
        for (path, item) in doc.paths.paths.iter_mut() {
            let ops = [
                item.get.as_mut(),
                item.put.as_mut(),
                item.post.as_mut(),
                item.delete.as_mut(),
                item.patch.as_mut(),
            ];
            for op in ops.into_iter().flatten() {
                let security = op.security.as_deref().unwrap_or_default();
                let secured = !security.is_empty();
                // The callback token's extractor answers 401 for a malformed
                // job id too: it never tells whether a job exists.
                let by_callback_token = security.contains(&callback_token);
                let has_body = op.request_body.is_some();
                // A required body is a typed JSON body (415 if not JSON, 422
                // if invalid); an optional one (`/drain`) is only checked for
                // JSON syntax.
                let typed_body = op
                    .request_body
                    .as_ref()
                    .is_some_and(|b| matches!(b.required, Some(Required::True)));
                let params = op.parameters.as_deref().unwrap_or_default();
                let has_path_params = params.iter().any(|p| p.parameter_in == ParameterIn::Path);
                let has_other_params = params.iter().any(|p| p.parameter_in != ParameterIn::Path);
                let r = &mut op.responses.responses;
                let mut add = |code: &str, response: ResponseBuilder| {
                    r.entry(code.to_owned()).or_insert_with(|| response.build().into());
                };
                if has_body || has_other_params || (has_path_params && !by_callback_token) {
                    add(
                        "400",
                        problem("Malformed request (JSON syntax, query, header or path parameter)"),
                    );
                }
                if secured {
                    let desc = if by_callback_token {
                        "Missing or invalid credentials: not the callback token of this job's current \
                         attempt (also the answer for an unknown job or a malformed id)"
                    } else {
                        "Missing or invalid credentials"
                    };
                    add(
                        "401",
                        problem(desc).header(
                            "WWW-Authenticate",
                            header(
                                Type::String,
                                "`Bearer realm=\"sluicegate\"`, with `error=\"invalid_token\"` for a wrong token",
                            ),
                        ),
                    );
                }
                if has_body {
                    add(
                        "408",
                        problem("The request (its body included) took longer than `REQUEST_TIMEOUT_SECS`"),
                    );
                    add("413", problem("Request body too large (`MAX_BODY_BYTES`)"));
                }
                if typed_body {
                    add(
                        "415",
                        problem("The body is not JSON (`Content-Type: application/json`)"),
                    );
                    add(
                        "422",
                        problem("Invalid request body (wrong types, unknown fields, out-of-range values)"),
                    );
                }
                if path != "/healthz" && path != "/metrics" {
                    add(
                        "503",
                        problem("Overloaded or a dependency is unavailable; retry after `Retry-After`")
                            .header("Retry-After", header(Type::Integer, "Seconds to wait before retrying")),
                    );
                }
                add("500", problem("Internal error (details are logged, never returned)"));
            }
        }
    }
}

/// Who may call a group of routes.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Access {
    /// A client token (`API_TOKENS`).
    Client,
    /// The drain token (`DRAIN_TOKEN`).
    Scheduler,
    /// The callback token of the job's current attempt (checked by the
    /// handlers' `CallbackCaller` extractor).
    Downstream,
    /// Anyone; behind the in-flight cap.
    Open,
    /// Anyone; never shed (liveness and metrics).
    Liveness,
}

/// Every route, with who may call it: the one list that both the OpenAPI
/// document and the router are built from.
fn resources() -> [(Access, OpenApiRouter<AppState>); 8] {
    [
        (Access::Client, jobs::router()),
        (Access::Client, keys::router()),
        (Access::Client, limits::router()),
        (Access::Scheduler, drain::router()),
        (Access::Downstream, callbacks::router()),
        (Access::Open, health::readiness_router()),
        (Access::Open, docs::router()),
        (Access::Liveness, health::router()),
    ]
}

/// All routes with their OpenAPI description (no state yet).
fn routes() -> OpenApiRouter<AppState> {
    resources()
        .into_iter()
        .fold(OpenApiRouter::with_openapi(ApiDoc::openapi()), |all, (_, r)| {
            all.merge(r)
        })
}

/// The OpenAPI document of the API.
pub fn openapi() -> openapi::OpenApi {
    let mut doc = routes().into_openapi();
    CommonErrors.modify(&mut doc);
    doc
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
    // Everything but liveness and metrics is behind one in-flight cap for the
    // whole router (a layer on a Router would give each route its own cap).
    let (mut capped, mut open) = (OpenApiRouter::new(), OpenApiRouter::new());
    for (access, routes) in resources() {
        let routes = match access {
            Access::Client | Access::Scheduler | Access::Downstream => routes.route_layer(
                axum::middleware::from_fn_with_state(state.clone(), middleware::fail_fast_without_postgres),
            ),
            Access::Open | Access::Liveness => routes,
        };
        match access {
            Access::Client => {
                capped = capped.merge(routes.route_layer(axum::middleware::from_fn_with_state(
                    state.clone(),
                    auth::require_api_token,
                )))
            }
            Access::Scheduler => {
                capped = capped.merge(routes.route_layer(axum::middleware::from_fn_with_state(
                    state.clone(),
                    auth::require_drain_token,
                )))
            }
            Access::Downstream | Access::Open => capped = capped.merge(routes),
            Access::Liveness => open = open.merge(routes),
        }
    }
    let (capped, _) = capped.split_for_parts();
    let capped = capped
        .fallback(middleware::not_found)
        .layer(axum::middleware::from_fn(middleware::record_metrics))
        .layer(Extension(docs::OpenApiJson(openapi_json().as_str())))
        .with_state(state.clone());
    let capped = ServiceBuilder::new()
        .layer(HandleErrorLayer::new(middleware::overloaded))
        .load_shed()
        .concurrency_limit(c.max_in_flight_requests as usize)
        .service(capped);
    let (open, _) = open.split_for_parts();
    let app = open
        .layer(axum::middleware::from_fn(middleware::record_metrics))
        .fallback_service(capped);

    app.layer(DefaultBodyLimit::max(c.max_body_bytes as usize))
        .layer(
            ServiceBuilder::new()
                .layer(SetSensitiveRequestHeadersLayer::new([
                    axum::http::header::AUTHORIZATION,
                ]))
                .layer(SetRequestIdLayer::x_request_id(MakeRequestUuid))
                .layer(PropagateRequestIdLayer::x_request_id())
                .layer(middleware::trace_layer())
                .layer(axum::middleware::from_fn(middleware::problem_for_bare_errors))
                .layer(axum::middleware::from_fn(middleware::limit_header_size))
                .layer(CatchPanicLayer::custom(middleware::panic_response))
                .layer(TimeoutLayer::with_status_code(
                    axum::http::StatusCode::REQUEST_TIMEOUT,
                    Duration::from_secs(c.request_timeout_secs),
                )),
        )
        .with_state(state)
}
