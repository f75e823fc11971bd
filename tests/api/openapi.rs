//! The committed OpenAPI document (`openapi/openapi.json`) is the contract
//! clients are generated from: it must be exactly what the code describes,
//! what the binary prints and what the server serves, and it must describe
//! every route. The docs page must work with no internet access.

use std::collections::BTreeSet;

use reqwest::Method;
use serde_json::Value;

use crate::helpers::*;

const SPEC_PATH: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/openapi/openapi.json");
const HINT: &str = "run `cargo run -q -- openapi > openapi/openapi.json` and review the change";

fn committed() -> String {
    std::fs::read_to_string(SPEC_PATH).unwrap_or_else(|e| panic!("cannot read {SPEC_PATH} ({e}): {HINT}"))
}

/// Panics with the first differing lines (and a little context) unless
/// `actual` (from `source`) equals the committed document byte for byte.
fn assert_same_as_committed(source: &str, actual: &str) {
    let expected = committed();
    if actual == expected {
        return;
    }
    panic!(
        "{source} differs from openapi/openapi.json:\n{}\n{HINT}",
        line_diff(&expected, actual)
    );
}

/// The first differing line of two texts with up to 3 lines of context
/// before and 6 after, as `-` (committed) and `+` (actual) lines.
fn line_diff(expected: &str, actual: &str) -> String {
    let (e, a): (Vec<&str>, Vec<&str>) = (expected.lines().collect(), actual.lines().collect());
    let Some(first) = (0..e.len().max(a.len())).find(|&i| e.get(i) != a.get(i)) else {
        return "the texts differ only in line endings or trailing bytes".to_owned();
    };
    let mut out = format!("first difference at line {}:\n", first + 1);
    for (i, line) in e.iter().enumerate().take(first).skip(first.saturating_sub(3)) {
        out.push_str(&format!("  {:>5} | {line}\n", i + 1));
    }
    for (i, line) in e.iter().enumerate().skip(first).take(6) {
        out.push_str(&format!("- {:>5} | {line}\n", i + 1));
    }
    if e.len() <= first {
        out.push_str("- (end of file)\n");
    }
    for (i, line) in a.iter().enumerate().skip(first).take(6) {
        out.push_str(&format!("+ {:>5} | {line}\n", i + 1));
    }
    if a.len() <= first {
        out.push_str("+ (end of output)\n");
    }
    out.push_str(&format!("({} lines committed, {} lines now)", e.len(), a.len()));
    out
}

#[test]
fn line_diff_shows_the_first_difference_with_context() {
    let diff = line_diff("a\nb\nc\nd\ne\n", "a\nb\nc\nX\ne\n");
    assert!(diff.contains("line 4"), "{diff}");
    assert!(diff.contains("      3 | c"), "{diff}");
    assert!(diff.contains("-     4 | d"), "{diff}");
    assert!(diff.contains("+     4 | X"), "{diff}");
    let diff = line_diff("a\n", "a\nb\n");
    assert!(
        diff.contains("+     2 | b") && diff.contains("- (end of file)"),
        "{diff}"
    );
}

#[test]
fn committed_document_matches_the_code() {
    assert_same_as_committed("sluicegate::http::openapi_json()", sluicegate::http::openapi_json());
}

#[test]
fn openapi_subcommand_prints_the_committed_document() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_sluicegate"))
        .arg("openapi")
        .output()
        .expect("the sluicegate binary runs");
    assert!(
        out.status.success(),
        "`sluicegate openapi` failed: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).expect("the document is UTF-8");
    assert_same_as_committed("the output of `sluicegate openapi`", &stdout);
}

#[tokio::test]
async fn served_document_is_the_committed_one() {
    let app = app().spawn().await;
    let r = app.http.get(app.url("/openapi.json")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let ct = r.headers()["content-type"].to_str().unwrap().to_owned();
    assert!(ct.starts_with("application/json"), "content type {ct}");
    let body = r.bytes().await.unwrap();
    let body = std::str::from_utf8(&body).expect("the document is UTF-8");
    assert_same_as_committed("GET /openapi.json", body);
}

/// `href="..."` and `src="..."` values of an HTML page.
fn referenced_urls(html: &str) -> BTreeSet<String> {
    let mut urls = BTreeSet::new();
    for attr in ["href=\"", "src=\""] {
        for (at, _) in html.match_indices(attr) {
            let rest = &html[at + attr.len()..];
            urls.insert(rest[..rest.find('"').unwrap()].to_owned());
        }
    }
    urls
}

#[tokio::test]
async fn docs_page_works_offline() {
    let app = app().spawn().await;
    let r = app.http.get(app.url("/docs")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let ct = r.headers()["content-type"].to_str().unwrap().to_owned();
    assert!(ct.starts_with("text/html"), "content type {ct}");
    let page = r.text().await.unwrap();
    for scheme in ["http://", "https://"] {
        assert!(
            !page.to_ascii_lowercase().contains(scheme),
            "the docs page references an {scheme} URL: it must work offline\n{page}"
        );
    }
    let assets = [
        "docs/swagger-ui.css",
        "docs/swagger-ui-bundle.js",
        "docs/swagger-ui-standalone-preset.js",
    ];
    assert_eq!(
        referenced_urls(&page),
        assets.iter().map(|a| a.to_string()).collect::<BTreeSet<_>>(),
        "the assets the page loads"
    );
    // Relative to `/docs`, as a browser resolves them.
    let page_url = reqwest::Url::parse(&app.url("/docs")).unwrap();
    for asset in assets {
        let url = page_url.join(asset).unwrap();
        let r = app.http.get(url.clone()).send().await.unwrap();
        assert_eq!(r.status(), 200, "{url}");
        let ct = r.headers()["content-type"].to_str().unwrap().to_owned();
        let want = if asset.ends_with(".css") {
            "text/css"
        } else {
            "javascript"
        };
        assert!(ct.contains(want), "{url}: content type {ct}");
        assert!(!r.bytes().await.unwrap().is_empty(), "{url} is empty");
    }
    // The page loads the document from `openapi.json`, relative to it too.
    assert!(page.contains(r#"url: "openapi.json""#), "{page}");
    let r = app
        .http
        .get(page_url.join("openapi.json").unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // `/docs/` sends the browser to the page (its relative links need the
    // address without the slash).
    let r = app.http.get(app.url("/docs/")).send().await.unwrap();
    assert_eq!(r.status(), 308);
    let to = page_url
        .join("/docs/")
        .unwrap()
        .join(r.headers()["location"].to_str().unwrap())
        .unwrap();
    assert_eq!(to, page_url);
    let r = reqwest::get(app.url("/docs/")).await.unwrap();
    assert_eq!((r.status().as_u16(), r.url().clone()), (200, page_url.clone()));
    assert_eq!(r.text().await.unwrap(), page);
    // Anything else under /docs/ is a 404 problem.
    assert_problem(app.http.get(app.url("/docs/index.html")).send().await.unwrap(), 404).await;
}

/// Every route of CONTRACT.md, and the docs page's assets.
const CONTRACT_ROUTES: [(&str, &str); 23] = [
    ("POST", "/jobs"),
    ("GET", "/jobs/{id}"),
    ("POST", "/jobs/batch"),
    ("GET", "/jobs"),
    ("GET", "/jobs/{id}/events"),
    ("POST", "/jobs/{id}/cancel"),
    ("POST", "/jobs/{id}/callback"),
    ("POST", "/jobs/{id}/heartbeat"),
    ("POST", "/drain"),
    ("GET", "/stats"),
    ("GET", "/limits"),
    ("PUT", "/limits"),
    ("GET", "/limits/history"),
    ("GET", "/keys"),
    ("GET", "/keys/{key}"),
    ("PUT", "/keys/{key}"),
    ("DELETE", "/keys/{key}"),
    ("GET", "/healthz"),
    ("GET", "/readyz"),
    ("GET", "/metrics"),
    ("GET", "/openapi.json"),
    ("GET", "/docs"),
    // Not in CONTRACT.md's table: the assets of the docs page.
    ("GET", "/docs/{file}"),
];

const METHODS: [&str; 5] = ["GET", "POST", "PUT", "PATCH", "DELETE"];

fn spec_routes(doc: &Value) -> BTreeSet<(String, String)> {
    let mut routes = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for method in METHODS {
            if item.get(method.to_ascii_lowercase()).is_some() {
                routes.insert((method.to_owned(), path.clone()));
            }
        }
    }
    routes
}

#[tokio::test]
async fn every_route_is_in_the_document_and_served() {
    let doc: Value = serde_json::from_str(&committed()).unwrap();
    let spec = spec_routes(&doc);
    let expected: BTreeSet<(String, String)> = CONTRACT_ROUTES
        .iter()
        .map(|(m, p)| (m.to_string(), p.to_string()))
        .collect();
    assert_eq!(spec, expected, "the document's routes against CONTRACT.md");

    // Each documented route is served (no credentials: 401 at worst, never
    // 404 or 405), and on each documented path the undocumented methods are
    // not (405, given credentials that pass the path's auth layer).
    let app = app().spawn().await;
    let paths: BTreeSet<&String> = spec.iter().map(|(_, p)| p).collect();
    for path in paths {
        let concrete = path
            .replace("{id}", &uuid::Uuid::new_v4().to_string())
            .replace("{file}", "swagger-ui.css");
        for method in METHODS {
            let documented = spec.contains(&(method.to_owned(), path.clone()));
            let mut req = app
                .http
                .request(Method::from_bytes(method.as_bytes()).unwrap(), app.url(&concrete));
            if !documented {
                req = req.bearer_auth(if path == "/drain" { DRAIN_TOKEN } else { API_TOKEN });
            }
            let status = req.send().await.unwrap().status().as_u16();
            if documented {
                assert!(
                    ![404, 405].contains(&status),
                    "{method} {concrete} is documented but answered {status}"
                );
            } else {
                assert_eq!(
                    status, 405,
                    "{method} {concrete} is not documented but answered {status}"
                );
            }
        }
    }
}

#[test]
fn operations_are_documented_for_generated_clients() {
    let doc: Value = serde_json::from_str(&committed()).unwrap();
    assert_eq!(doc["openapi"], "3.1.0");
    let schemes = doc["components"]["securitySchemes"].as_object().unwrap();
    for name in ["api_token", "drain_token", "callback_token"] {
        assert_eq!(schemes[name]["type"], "http", "{name}");
        assert_eq!(schemes[name]["scheme"], "bearer", "{name}");
    }
    let mut ids = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            let id = op["operationId"]
                .as_str()
                .unwrap_or_else(|| panic!("{method} {path}: no operationId"));
            assert!(
                id.chars().next().unwrap().is_ascii_lowercase() && id.chars().all(|c| c.is_ascii_alphanumeric()),
                "{method} {path}: operationId {id} is not camelCase"
            );
            assert!(ids.insert(id.to_owned()), "operationId {id} is used twice");
            assert!(
                op["tags"].as_array().is_some_and(|t| t.len() == 1),
                "{method} {path}: one tag"
            );
            assert!(op["summary"].is_string(), "{method} {path}: no summary");
            let responses = op["responses"].as_object().unwrap();
            for (code, response) in responses {
                if !code.starts_with('2') {
                    let schema = &response["content"]["application/problem+json"]["schema"]["$ref"];
                    assert_eq!(
                        schema, "#/components/schemas/Problem",
                        "{method} {path} {code}: errors are problem+json"
                    );
                }
            }
            assert!(responses.contains_key("500"), "{method} {path}: no 500");
            let secured = op.get("security").is_some();
            assert_eq!(
                secured,
                responses.contains_key("401"),
                "{method} {path}: 401 iff secured"
            );
        }
    }
    // Fields the contract says are always present, null when unset.
    let schemas = &doc["components"]["schemas"];
    let required = |name: &str| -> BTreeSet<String> {
        schemas[name]["required"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap().to_owned())
            .collect()
    };
    let all = |names: &[&str]| names.iter().map(|n| n.to_string()).collect::<BTreeSet<_>>();
    let job_fields = [
        "id",
        "status",
        "payload",
        "attempts",
        "created_at",
        "started_at",
        "finished_at",
        "result",
        "error",
        "key",
        "priority",
        "waiting_on",
        "not_before",
    ];
    assert_eq!(required("Job"), all(&job_fields));
    assert_eq!(
        required("Limits"),
        all(&[
            "max_concurrency",
            "effective_concurrency",
            "key_max_concurrency",
            "rate_per_second",
            "rate_burst",
            "adaptive",
            "adaptive_min"
        ])
    );
    assert_eq!(
        required("Key"),
        all(&[
            "key",
            "max_concurrency",
            "weight",
            "rate_per_second",
            "rate_burst",
            "queued",
            "running",
            "oldest_queued_at"
        ])
    );
    assert_eq!(required("JobPage"), all(&["items", "next_cursor"]));
    assert_eq!(required("BatchItem"), all(&["status", "job", "problem"]));
    assert_eq!(required("JobEvent"), all(&["at", "from", "to", "attempt", "reason"]));
    assert!(required("Stats").contains("queue_depth"));
    assert_eq!(required("Problem"), all(&["type", "title", "status", "detail"]));
    // Nullable the OpenAPI 3.1 way (a `null` type), any-JSON as `{}`-like
    // schemas with no type.
    let job = &schemas["Job"]["properties"];
    for field in ["started_at", "finished_at", "error"] {
        assert!(
            job[field]["type"]
                .as_array()
                .is_some_and(|t| t.contains(&"null".into())),
            "Job.{field} is not nullable: {}",
            job[field]
        );
    }
    for field in ["payload", "result"] {
        assert!(
            job[field].get("type").is_none(),
            "Job.{field} must accept any JSON: {}",
            job[field]
        );
    }
    for (schema, field) in [("BatchItem", "job"), ("BatchItem", "problem"), ("JobEvent", "from")] {
        let one_of = schemas[schema]["properties"][field]["oneOf"].as_array().unwrap();
        assert!(
            one_of.contains(&serde_json::json!({"type": "null"})),
            "{schema}.{field}"
        );
    }
    for (schema, field) in [("JobPage", "next_cursor"), ("Stats", "queue_depth")] {
        let ty = schemas[schema]["properties"][field]["type"].as_array().unwrap();
        assert!(ty.contains(&"null".into()), "{schema}.{field}");
    }
}
