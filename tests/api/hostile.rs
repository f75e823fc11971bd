//! Who may call what, and hostile bodies on every route that takes one:
//! table-driven, asserting status, problem body and an unchanged database.

use serde_json::{Value, json};

use crate::helpers::*;

#[derive(Clone, Copy, Debug, PartialEq)]
enum Cred {
    None,
    Wrong,
    Api,
    Drain,
    CallbackOfThisJob,
    CallbackOfOtherJob,
}

const CREDS: [Cred; 6] = [
    Cred::None,
    Cred::Wrong,
    Cred::Api,
    Cred::Drain,
    Cred::CallbackOfThisJob,
    Cred::CallbackOfOtherJob,
];

/// A digest of everything a request could change.
async fn snapshot(app: &TestApp) -> String {
    sqlx::query_scalar(
        "SELECT md5(coalesce((SELECT string_agg(j::text, '|' ORDER BY id) FROM jobs j), '') \
         || coalesce((SELECT string_agg(e::text, '|' ORDER BY id) FROM job_events e), '') \
         || (SELECT max_concurrency::text FROM gate))",
    )
    .fetch_one(&app.db)
    .await
    .unwrap()
}

#[tokio::test]
async fn every_route_admits_exactly_its_credential() {
    let ds = Downstream::start(|_| Reply::status(202)).await;
    let app = app().downstream(&ds.url).spawn().await;
    let job = app.submit(json!("mine")).await["id"].as_str().unwrap().to_owned();
    let other = app.submit(json!("other")).await["id"].as_str().unwrap().to_owned();
    app.drain().await;
    let token = |id: &str| ds.token_for(id);

    // (method, path, body, the credential that may call it: None = open)
    let routes: Vec<(&str, String, Value, Option<Cred>)> = vec![
        ("POST", "/jobs".into(), json!({"payload": 1}), Some(Cred::Api)),
        (
            "POST",
            "/jobs/batch".into(),
            json!({"jobs": [{"payload": 1}]}),
            Some(Cred::Api),
        ),
        ("GET", "/jobs".into(), Value::Null, Some(Cred::Api)),
        ("GET", format!("/jobs/{job}"), Value::Null, Some(Cred::Api)),
        ("GET", format!("/jobs/{job}/events"), Value::Null, Some(Cred::Api)),
        ("POST", format!("/jobs/{job}/cancel"), Value::Null, Some(Cred::Api)),
        ("GET", "/stats".into(), Value::Null, Some(Cred::Api)),
        ("GET", "/limits".into(), Value::Null, Some(Cred::Api)),
        ("PUT", "/limits".into(), json!({"max_concurrency": 10}), Some(Cred::Api)),
        ("POST", "/drain".into(), Value::Null, Some(Cred::Drain)),
        (
            "POST",
            format!("/jobs/{job}/heartbeat"),
            Value::Null,
            Some(Cred::CallbackOfThisJob),
        ),
        ("GET", "/healthz".into(), Value::Null, None),
        ("GET", "/readyz".into(), Value::Null, None),
        ("GET", "/metrics".into(), Value::Null, None),
        ("GET", "/openapi.json".into(), Value::Null, None),
        ("GET", "/docs".into(), Value::Null, None),
    ];
    for (method, path, body, allowed) in &routes {
        for cred in CREDS {
            let mut req = app.http.request(method.parse().unwrap(), app.url(path));
            if !body.is_null() {
                req = req.json(body);
            }
            let bearer = match cred {
                Cred::None => None,
                Cred::Wrong => Some("not-a-real-token-at-all".to_owned()),
                Cred::Api => Some(API_TOKEN.to_owned()),
                Cred::Drain => Some(DRAIN_TOKEN.to_owned()),
                Cred::CallbackOfThisJob => Some(token(&job)),
                Cred::CallbackOfOtherJob => Some(token(&other)),
            };
            if let Some(b) = bearer {
                req = req.bearer_auth(b);
            }
            let before = snapshot(&app).await;
            let r = req.send().await.unwrap();
            let admitted = allowed.is_none_or(|a| a == cred);
            if admitted {
                assert_ne!(r.status(), 401, "{method} {path} with {cred:?}");
            } else {
                assert!(
                    r.headers().contains_key("www-authenticate"),
                    "{method} {path} with {cred:?}"
                );
                assert_problem(r, 401).await;
                assert_eq!(
                    snapshot(&app).await,
                    before,
                    "{method} {path} with {cred:?} changed something"
                );
            }
        }
    }
    // The callback last, since it finishes the job.
    for cred in CREDS {
        if cred == Cred::CallbackOfThisJob {
            continue;
        }
        let before = snapshot(&app).await;
        let mut req = app
            .http
            .post(app.url(&format!("/jobs/{job}/callback")))
            .json(&json!({"status": "succeeded"}));
        match cred {
            Cred::Wrong => req = req.bearer_auth("not-a-real-token-at-all"),
            Cred::Api => req = req.bearer_auth(API_TOKEN),
            Cred::Drain => req = req.bearer_auth(DRAIN_TOKEN),
            Cred::CallbackOfOtherJob => req = req.bearer_auth(token(&other)),
            _ => {}
        }
        assert_problem(req.send().await.unwrap(), 401).await;
        assert_eq!(snapshot(&app).await, before);
    }
    assert_eq!(
        app.callback(&job, &token(&job), json!({"status": "succeeded"}))
            .await
            .status(),
        200
    );
}

#[tokio::test]
async fn hostile_bodies_on_every_body_route_change_nothing() {
    let ds = Downstream::start(|_| Reply::status(202)).await;
    let app = app().downstream(&ds.url).spawn().await;
    let job = app.submit(json!(1)).await["id"].as_str().unwrap().to_owned();
    app.drain().await;
    let cb = ds.token_for(&job);
    let deep = format!("{}1{}", "[".repeat(100), "]".repeat(100));
    let huge_number = format!("1{}", "0".repeat(5000));
    // (raw body, content type, expected status for: jobs, batch, limits, callback, keys)
    let bodies: Vec<(Vec<u8>, &str, [u16; 5])> = vec![
        (b"{".to_vec(), "application/json", [400, 400, 400, 400, 400]),
        (vec![0xc3, 0x28], "application/json", [400, 400, 400, 400, 400]),
        (b"null".to_vec(), "application/json", [422, 422, 422, 422, 422]),
        // An array of the fields, in order, is not an object.
        (b"[null, null]".to_vec(), "application/json", [422, 422, 422, 422, 422]),
        (b" [1]".to_vec(), "application/json", [422, 422, 422, 422, 422]),
        (b"\"string\"".to_vec(), "application/json", [422, 422, 422, 422, 422]),
        (b"{\"a\":1}".to_vec(), "text/plain", [415, 415, 415, 415, 415]),
        (b"{\"a\":1}".to_vec(), "application/xml", [415, 415, 415, 415, 415]),
        (
            format!("{{\"payload\": {deep}, \"jobs\": {deep}, \"max_concurrency\": {deep}, \"status\": {deep}}}")
                .into_bytes(),
            "application/json",
            [422, 422, 422, 422, 422],
        ),
        (
            format!("{{\"max_concurrency\": {huge_number}}}").into_bytes(),
            "application/json",
            [422, 422, 422, 422, 422],
        ),
        (
            b"{\"status\":\"succeeded\",\"status\":\"failed\"}".to_vec(),
            "application/json",
            [422, 422, 422, 422, 422],
        ),
        (
            b"{\"payload\":1,\"timeout_secs\":-1}".to_vec(),
            "application/json",
            [422, 422, 422, 422, 422],
        ),
        (
            b"{\"jobs\":[{\"payload\":1}],\"x\":1}".to_vec(),
            "application/json",
            [422, 422, 422, 422, 422],
        ),
        (
            b"{\"max_concurrency\":1e3}".to_vec(),
            "application/json",
            [422, 422, 422, 422, 422],
        ),
    ];
    let routes: [(&str, String, String); 5] = [
        ("POST", "/jobs".into(), API_TOKEN.into()),
        ("POST", "/jobs/batch".into(), API_TOKEN.into()),
        ("PUT", "/limits".into(), API_TOKEN.into()),
        ("POST", format!("/jobs/{job}/callback"), cb.clone()),
        ("PUT", "/keys/tenant".into(), API_TOKEN.into()),
    ];
    let before = snapshot(&app).await;
    for (body, ct, expected) in &bodies {
        for (i, (method, path, token)) in routes.iter().enumerate() {
            let r = app
                .http
                .request(method.parse().unwrap(), app.url(path))
                .bearer_auth(token)
                .header("content-type", *ct)
                .body(body.clone())
                .send()
                .await
                .unwrap();
            let got = r.status().as_u16();
            assert_eq!(
                got,
                expected[i],
                "{method} {path} {ct} {:?}",
                String::from_utf8_lossy(&body[..body.len().min(50)])
            );
            assert_problem(r, expected[i]).await;
        }
    }
    assert_eq!(snapshot(&app).await, before, "hostile bodies changed something");
    assert!(app.receive_all(1).await.is_empty(), "nothing was queued");
}
