//! The OpenAPI document and the interactive docs page. The page is ours; its
//! Swagger UI assets come from the `utoipa-swagger-ui` crate's vendored copy
//! (a crates.io package), embedded in the binary: no internet access needed.

use std::{
    borrow::Cow,
    sync::{Arc, LazyLock},
};

use axum::{
    Extension,
    body::Bytes,
    extract::Path,
    http::{HeaderValue, StatusCode, header},
    response::{Html, IntoResponse, Redirect, Response},
    routing::get,
};
use utoipa_axum::{router::OpenApiRouter, routes};

use crate::{http::error::ApiError, state::AppState};

/// The OpenAPI document's JSON, handed to [`openapi_json`] by the router
/// that is built from the same list of routes (`http::router`).
#[derive(Clone, Copy)]
pub struct OpenApiJson(pub &'static str);

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(openapi_json))
        .routes(routes!(docs))
        .routes(routes!(docs_asset))
        // `/docs/` is the docs page's address with a trailing slash, not an
        // operation of its own: a redirect, left out of the document.
        .route("/docs/", get(docs_slash))
}

/// `/docs/` → `/docs` (relative, so it works behind a path prefix; the
/// page's own relative links need the address without the slash).
async fn docs_slash() -> Redirect {
    Redirect::permanent("../docs")
}

/// The OpenAPI document
#[utoipa::path(get, path = "/openapi.json", tag = "operations", operation_id = "getOpenApi",
    responses((status = 200, description = "This API's OpenAPI 3.1 document", body = Object, content_type = "application/json")))]
pub async fn openapi_json(Extension(doc): Extension<OpenApiJson>) -> Response {
    ([(header::CONTENT_TYPE, "application/json")], doc.0).into_response()
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

/// The assets of the docs page, loaded once and kept for the life of the
/// process, so that a request clones a `Bytes` (a pointer) instead of
/// copying 1.4 MB: `utoipa_swagger_ui::serve` returns the embedded file
/// borrowed in release builds but read into a fresh `Vec` in debug builds,
/// so an owned one is leaked once (four files, about 1.8 MB in all).
static ASSETS: LazyLock<Vec<Asset>> = LazyLock::new(|| {
    let config = Arc::new(utoipa_swagger_ui::Config::from("openapi.json"));
    ASSET_NAMES
        .iter()
        .map(|&name| {
            let file = utoipa_swagger_ui::serve(name, config.clone())
                .ok()
                .flatten()
                .unwrap_or_else(|| panic!("utoipa-swagger-ui embeds {name}"));
            let bytes: &'static [u8] = match file.bytes {
                Cow::Borrowed(b) => b,
                Cow::Owned(v) => Vec::leak(v),
            };
            Asset {
                name,
                content_type: HeaderValue::from_str(&file.content_type).expect("a MIME type is a header value"),
                bytes: Bytes::from_static(bytes),
            }
        })
        .collect()
});

const ASSET_NAMES: [&str; 4] = [
    "swagger-ui.css",
    "swagger-ui-bundle.js",
    "swagger-ui-standalone-preset.js",
    "favicon-32x32.png",
];

struct Asset {
    name: &'static str,
    content_type: HeaderValue,
    bytes: Bytes,
}

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
        (status = 404, description = "No such asset", body = crate::http::error::Problem, content_type = "application/problem+json"),
    ))]
pub async fn docs_asset(Path(file): Path<String>) -> Response {
    match ASSETS.iter().find(|a| a.name == file) {
        Some(asset) => (
            StatusCode::OK,
            [
                (header::CONTENT_TYPE, asset.content_type.clone()),
                (header::CACHE_CONTROL, HeaderValue::from_static("public, max-age=86400")),
            ],
            asset.bytes.clone(),
        )
            .into_response(),
        None => ApiError::NotFound(format!("no docs asset {file}")).into_response(),
    }
}
