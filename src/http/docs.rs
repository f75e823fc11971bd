//! The OpenAPI document and the interactive docs page. The page is ours; its
//! Swagger UI assets come from the `utoipa-swagger-ui` crate's vendored copy
//! (a crates.io package), embedded in the binary: no internet access needed.

use std::sync::{Arc, LazyLock};

use axum::{
    extract::Path,
    http::{StatusCode, header},
    response::{Html, IntoResponse, Response},
};
use utoipa_axum::{router::OpenApiRouter, routes};

use crate::{error::ApiError, state::AppState};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(openapi_json))
        .routes(routes!(docs))
        .routes(routes!(docs_asset))
}

/// The OpenAPI document
#[utoipa::path(get, path = "/openapi.json", tag = "operations", operation_id = "getOpenApi",
    responses((status = 200, description = "This API's OpenAPI 3.1 document", body = Object, content_type = "application/json")))]
pub async fn openapi_json() -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        crate::http::openapi_json().as_str(),
    )
        .into_response()
}

const DOCS_PAGE: &str = r##"<!doctype html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <title>sluicegate API</title>
  <link rel="stylesheet" href="docs/swagger-ui.css">
</head>
<body>
  <div id="swagger-ui"></div>
  <script src="docs/swagger-ui-bundle.js"></script>
  <script src="docs/swagger-ui-standalone-preset.js"></script>
  <script>
    window.ui = SwaggerUIBundle({
      url: "openapi.json",
      dom_id: "#swagger-ui",
      presets: [SwaggerUIBundle.presets.apis, SwaggerUIStandalonePreset],
      layout: "StandaloneLayout",
      validatorUrl: null,
      persistAuthorization: true
    });
  </script>
</body>
</html>
"##;

/// Interactive API docs
///
/// Swagger UI, served from the binary (works offline).
#[utoipa::path(get, path = "/docs", tag = "operations", operation_id = "getDocs",
    responses((status = 200, description = "HTML page", body = String, content_type = "text/html")))]
pub async fn docs() -> Html<&'static str> {
    Html(DOCS_PAGE)
}

static SWAGGER_CONFIG: LazyLock<Arc<utoipa_swagger_ui::Config<'static>>> =
    LazyLock::new(|| Arc::new(utoipa_swagger_ui::Config::from("openapi.json")));

// The assets of the docs page, for the OpenAPI document only (an enum, so
// that clients and fuzzers know the valid names); the handler takes any
// string and answers 404 for another name.
#[derive(utoipa::ToSchema)]
#[allow(dead_code)] // only describes the path parameter
enum DocsAsset {
    #[schema(rename = "swagger-ui.css")]
    SwaggerUiCss,
    #[schema(rename = "swagger-ui-bundle.js")]
    SwaggerUiBundleJs,
    #[schema(rename = "swagger-ui-standalone-preset.js")]
    SwaggerUiStandalonePresetJs,
    #[schema(rename = "favicon-32x32.png")]
    Favicon,
}

/// A static asset of the docs page
#[utoipa::path(get, path = "/docs/{file}", tag = "operations", operation_id = "getDocsAsset",
    params(("file" = inline(DocsAsset), Path, description = "Asset file name")),
    responses(
        (status = 200, description = "The asset", content(
            (String = "text/css"),
            (String = "text/javascript"),
            (String = "image/png"),
        )),
        (status = 404, description = "No such asset", body = crate::error::Problem, content_type = "application/problem+json"),
    ))]
pub async fn docs_asset(Path(file): Path<String>) -> Response {
    const ASSETS: [&str; 4] = [
        "swagger-ui.css",
        "swagger-ui-bundle.js",
        "swagger-ui-standalone-preset.js",
        "favicon-32x32.png",
    ];
    if !ASSETS.contains(&file.as_str()) {
        return ApiError::NotFound(format!("no docs asset {file}")).into_response();
    }
    match utoipa_swagger_ui::serve(&file, SWAGGER_CONFIG.clone()) {
        Ok(Some(f)) => (
            StatusCode::OK,
            [
                (header::CONTENT_TYPE, f.content_type),
                (header::CACHE_CONTROL, "public, max-age=86400".into()),
            ],
            f.bytes.into_owned(),
        )
            .into_response(),
        _ => ApiError::NotFound(format!("no docs asset {file}")).into_response(),
    }
}
