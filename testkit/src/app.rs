//! The real application on port 0, with a fresh database and queue.

use std::{net::SocketAddr, sync::Arc};

use aws_sdk_sqs::Client as SqsClient;
use reqwest::{Response, StatusCode};
use serde_json::{Value, json};
use sluicegate::{config::Config, startup::Application};
use sqlx::PgPool;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::{API_TOKEN, DRAIN_TOKEN, TestDb, base_config, create_queue, fast_sqs_endpoint, sqs_client, sqs_endpoint};

/// The application under test, stopped when dropped.
pub struct TestApp {
    pub base: String,
    pub addr: SocketAddr,
    pub http: reqwest::Client,
    pub db: PgPool,
    pub sqs: SqsClient,
    pub sqs_endpoint: String,
    pub queue_url: String,
    pub config: Config,
    pub state: sluicegate::state::AppState,
    shutdown: CancellationToken,
    server: Option<JoinHandle<anyhow::Result<()>>>,
    pub test_db: Arc<TestDb>,
}

type Configure = Box<dyn FnOnce(&mut Config) + Send>;

pub struct Builder {
    configure: Vec<Configure>,
    fast_sqs: bool,
    sqs_endpoint: Option<String>,
    sqs_endpoint_for_app: Option<String>,
    downstream: Option<String>,
    db_port: Option<u16>,
}

/// Starts describing a [`TestApp`]; `.spawn()` starts it.
pub fn app() -> Builder {
    Builder {
        configure: Vec::new(),
        fast_sqs: false,
        sqs_endpoint: None,
        sqs_endpoint_for_app: None,
        downstream: None,
        db_port: None,
    }
}

impl Builder {
    pub fn config(mut self, f: impl FnOnce(&mut Config) + Send + 'static) -> Self {
        self.configure.push(Box::new(f));
        self
    }
    /// Use local-aws-sqs (fast with large queues).
    pub fn fast_sqs(mut self) -> Self {
        self.fast_sqs = true;
        self
    }
    /// Use the SQS server at `endpoint` (the benchmark's), not the test
    /// suite's.
    pub fn sqs_endpoint(mut self, endpoint: &str) -> Self {
        self.sqs_endpoint = Some(endpoint.to_owned());
        self
    }
    /// The app talks to SQS through this endpoint (e.g. a proxy), the test
    /// through the real one.
    pub fn app_sqs_endpoint(mut self, endpoint: String) -> Self {
        self.sqs_endpoint_for_app = Some(endpoint);
        self
    }
    /// The app reaches Postgres on this port of 127.0.0.1 (e.g. a proxy).
    pub fn db_port(mut self, port: u16) -> Self {
        self.db_port = Some(port);
        self
    }
    pub fn downstream(mut self, url: &str) -> Self {
        self.downstream = Some(url.to_owned());
        self
    }
    pub async fn spawn(self) -> TestApp {
        let endpoint = if let Some(endpoint) = self.sqs_endpoint {
            endpoint
        } else if self.fast_sqs {
            fast_sqs_endpoint()
        } else {
            sqs_endpoint()
        };
        let sqs = sqs_client(&endpoint);
        let queue_url = create_queue(&sqs).await;
        let test_db = Arc::new(TestDb::create().await);
        let downstream = self.downstream.unwrap_or_else(|| "http://127.0.0.1:9/unused".into());
        let mut db_url = reqwest::Url::parse(&test_db.url).unwrap();
        if let Some(port) = self.db_port {
            db_url.set_host(Some("127.0.0.1")).unwrap();
            db_url.set_port(Some(port)).unwrap();
        }
        let mut config = base_config(db_url.as_str(), &queue_url, &downstream);
        for f in self.configure {
            f(&mut config);
        }
        let app_endpoint = self.sqs_endpoint_for_app.unwrap_or_else(|| endpoint.clone());
        start(config, sqs_client(&app_endpoint), sqs, endpoint, test_db, true).await
    }
}

async fn start(
    config: Config,
    app_sqs: SqsClient,
    sqs: SqsClient,
    sqs_endpoint: String,
    test_db: Arc<TestDb>,
    migrate: bool,
) -> TestApp {
    let application = Application::build_with(config, app_sqs, migrate)
        .await
        .expect("the application builds");
    let addr = application.local_addr();
    let state = application.state().clone();
    let config = (*state.config).clone();
    let shutdown = CancellationToken::new();
    let server = tokio::spawn(application.run_until(shutdown.clone().cancelled_owned()));
    // Lazy: a benchmark reading the database's statistics sees only the app.
    let db = PgPool::connect_lazy(&test_db.url).unwrap();
    TestApp {
        base: format!("http://{addr}"),
        addr,
        http: reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap(),
        db,
        sqs,
        sqs_endpoint,
        queue_url: config.sqs_queue_url.clone(),
        config,
        state,
        shutdown,
        server: Some(server),
        test_db,
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

impl TestApp {
    /// Another replica on the same database and queue.
    pub async fn replica(&self) -> TestApp {
        let mut config = self.config.clone();
        config.listen_addr = "127.0.0.1:0".parse().unwrap();
        config.public_base_url = None;
        start(
            config,
            sqs_client(&self.sqs_endpoint),
            sqs_client(&self.sqs_endpoint),
            self.sqs_endpoint.clone(),
            self.test_db.clone(),
            false,
        )
        .await
    }

    /// Stops the server gracefully and waits for it.
    pub async fn stop(&mut self) {
        self.shutdown.cancel();
        if let Some(s) = self.server.take() {
            s.await.unwrap().unwrap();
        }
    }

    /// Deletes the queue (an emulator keeps every queue in memory).
    pub async fn delete_queue(&self) {
        let _ = self.sqs.delete_queue().queue_url(&self.queue_url).send().await;
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub async fn post_job(&self, body: Value) -> Response {
        self.http
            .post(self.url("/jobs"))
            .bearer_auth(API_TOKEN)
            .json(&body)
            .send()
            .await
            .unwrap()
    }

    /// Submits a job and returns it (asserting 202).
    pub async fn submit(&self, payload: Value) -> Value {
        let r = self.post_job(json!({ "payload": payload })).await;
        assert_eq!(r.status(), StatusCode::ACCEPTED, "{}", r.text().await.unwrap());
        r.json().await.unwrap()
    }

    /// POST /jobs/batch with these items (asserting 200); returns the body.
    pub async fn submit_batch(&self, jobs: Vec<Value>) -> Value {
        let r = self
            .http
            .post(self.url("/jobs/batch"))
            .bearer_auth(API_TOKEN)
            .json(&json!({ "jobs": jobs }))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        r.json().await.unwrap()
    }

    pub async fn get(&self, path: &str) -> Response {
        self.http
            .get(self.url(path))
            .bearer_auth(API_TOKEN)
            .send()
            .await
            .unwrap()
    }

    pub async fn job(&self, id: &str) -> Value {
        let r = self.get(&format!("/jobs/{id}")).await;
        assert_eq!(r.status(), StatusCode::OK);
        r.json().await.unwrap()
    }

    pub async fn drain(&self) -> Value {
        let r = self
            .http
            .post(self.url("/drain"))
            .bearer_auth(DRAIN_TOKEN)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK, "{}", r.text().await.unwrap());
        r.json().await.unwrap()
    }

    pub async fn set_limit(&self, n: i64) {
        let r = self
            .http
            .put(self.url("/limits"))
            .bearer_auth(API_TOKEN)
            .json(&json!({ "max_concurrency": n }))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK);
    }

    pub async fn callback(&self, id: &str, token: &str, body: Value) -> Response {
        self.http
            .post(self.url(&format!("/jobs/{id}/callback")))
            .bearer_auth(token)
            .json(&body)
            .send()
            .await
            .unwrap()
    }

    /// `POST /jobs/{id}/cancel` with the client token.
    pub async fn cancel(&self, id: &str) -> Response {
        self.http
            .post(self.url(&format!("/jobs/{id}/cancel")))
            .bearer_auth(API_TOKEN)
            .send()
            .await
            .unwrap()
    }

    /// `POST /jobs/{id}/heartbeat` with this (callback) token.
    pub async fn heartbeat(&self, id: &str, token: &str) -> Response {
        self.http
            .post(self.url(&format!("/jobs/{id}/heartbeat")))
            .bearer_auth(token)
            .send()
            .await
            .unwrap()
    }

    pub async fn job_count(&self) -> i64 {
        sqlx::query_scalar("SELECT count(*) FROM jobs")
            .fetch_one(&self.db)
            .await
            .unwrap()
    }

    pub async fn events(&self, id: &str) -> Vec<Value> {
        let r = self.get(&format!("/jobs/{id}/events")).await;
        assert_eq!(r.status(), StatusCode::OK);
        let v: Value = r.json().await.unwrap();
        v["items"].as_array().unwrap().clone()
    }

    /// All visible messages' bodies (makes them invisible for `hide` seconds).
    pub async fn receive_all(&self, hide: i32) -> Vec<String> {
        let mut bodies = Vec::new();
        loop {
            let out = self
                .sqs
                .receive_message()
                .queue_url(&self.queue_url)
                .max_number_of_messages(10)
                .visibility_timeout(hide)
                .send()
                .await
                .unwrap();
            if out.messages().is_empty() {
                return bodies;
            }
            bodies.extend(out.messages().iter().filter_map(|m| m.body().map(str::to_owned)));
        }
    }

    pub async fn send_raw_message(&self, body: &str) {
        self.sqs
            .send_message()
            .queue_url(&self.queue_url)
            .message_body(body)
            .send()
            .await
            .unwrap();
    }

    pub async fn status_of(&self, id: &str) -> String {
        self.job(id).await["status"].as_str().unwrap().to_owned()
    }
}
