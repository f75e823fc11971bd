//! Test harness: the real application on port 0, a fresh Postgres database
//! and a fresh SQS queue (on a real SQS-protocol server) per test, a real
//! downstream HTTP server, and a TCP proxy to cut dependencies off.
// Not every test module uses every helper.
#![allow(dead_code)]

use std::{
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicI64, Ordering},
    },
    time::Duration,
};

use aws_sdk_sqs::Client as SqsClient;
use reqwest::{Response, StatusCode};
use serde_json::{Value, json};
use sluicegate::{
    config::{Config, Secret, SecretList},
    startup::Application,
};
use sqlx::{Connection, PgConnection, PgPool};
use tokio::{net::TcpListener, task::JoinHandle};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

pub const API_TOKEN: &str = "test-api-token-0123456789";
pub const DRAIN_TOKEN: &str = "test-drain-token-0123456789";
pub const CALLBACK_SECRET: &str = "test-callback-secret-0123456789abcdef0123456789";

fn admin_url() -> String {
    std::env::var("TEST_DATABASE_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

/// Where the test Postgres listens (the host and port of TEST_DATABASE_URL:
/// scripts/test may have started one of its own on another port), for the
/// proxies that cut it off.
pub fn postgres_addr() -> SocketAddr {
    use std::net::ToSocketAddrs;
    let url = reqwest::Url::parse(&admin_url()).expect("TEST_DATABASE_URL is a URL");
    let host = url.host_str().unwrap_or("127.0.0.1").trim_matches(['[', ']']);
    (host, url.port().unwrap_or(5432))
        .to_socket_addrs()
        .expect("the host of TEST_DATABASE_URL resolves")
        .next()
        .expect("the host of TEST_DATABASE_URL has an address")
}

pub fn sqs_endpoint() -> String {
    std::env::var("SLUICEGATE_TEST_SQS_ENDPOINT")
        .expect("SLUICEGATE_TEST_SQS_ENDPOINT is not set: run the tests with scripts/test")
}

pub fn fast_sqs_endpoint() -> String {
    std::env::var("SLUICEGATE_TEST_FAST_SQS_ENDPOINT").unwrap_or_else(|_| sqs_endpoint())
}

/// A database of its own, dropped with the test.
pub struct TestDb {
    pub name: String,
    pub url: String,
}

impl TestDb {
    pub async fn create() -> Self {
        let admin = admin_url();
        // The run's pid in the name lets scripts/test clean up after runs
        // that are gone without touching those still running.
        let run = std::env::var("SLUICEGATE_TEST_RUN").unwrap_or_else(|_| std::process::id().to_string());
        let name = format!("sg_test_r{run}_{}", Uuid::new_v4().simple());
        let mut conn = PgConnection::connect(&admin)
            .await
            .expect("Postgres is reachable (see TEST_DATABASE_URL)");
        sqlx::query(&format!("CREATE DATABASE \"{name}\""))
            .execute(&mut conn)
            .await
            .unwrap();
        let mut url = reqwest::Url::parse(&admin).unwrap();
        url.set_path(&name);
        Self {
            name,
            url: url.to_string(),
        }
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let (name, admin) = (self.name.clone(), admin_url());
        // Drop runs outside async context: use a thread with its own runtime.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                if let Ok(mut conn) = PgConnection::connect(&admin).await {
                    let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
                        .execute(&mut conn)
                        .await;
                }
            });
        })
        .join();
    }
}

pub fn sqs_client(endpoint: &str) -> SqsClient {
    let conf = aws_sdk_sqs::Config::builder()
        .behavior_version(aws_sdk_sqs::config::BehaviorVersion::latest())
        .region(aws_sdk_sqs::config::Region::new("us-east-1"))
        .credentials_provider(aws_sdk_sqs::config::Credentials::new(
            "test", "test", None, None, "tests",
        ))
        .endpoint_url(endpoint)
        .timeout_config(
            aws_sdk_sqs::config::timeout::TimeoutConfig::builder()
                .operation_attempt_timeout(Duration::from_secs(5))
                .connect_timeout(Duration::from_secs(2))
                .build(),
        )
        .build();
    SqsClient::from_conf(conf)
}

pub async fn create_queue(sqs: &SqsClient) -> String {
    let name = format!("sg-test-{}", Uuid::new_v4().simple());
    sqs.create_queue()
        .queue_name(name)
        .send()
        .await
        .expect("create queue")
        .queue_url()
        .unwrap()
        .to_owned()
}

pub fn base_config(database_url: &str, queue_url: &str, downstream_url: &str) -> Config {
    Config {
        database_url: Secret::new(database_url),
        sqs_queue_url: queue_url.to_owned(),
        aws_endpoint_url: None,
        downstream_url: downstream_url.parse().unwrap(),
        public_base_url: None,
        listen_addr: "127.0.0.1:0".parse().unwrap(),
        max_concurrency: 10,
        job_timeout_secs: 900,
        dispatch_timeout_secs: 5,
        drain_budget_ms: 4000,
        max_attempts: 5,
        // Tests step drains themselves unless they ask for background ones.
        refill_on_callback: false,
        drain_interval_secs: None,
        api_tokens: SecretList::new([API_TOKEN]),
        drain_token: SecretList::new([DRAIN_TOKEN]),
        callback_secret: SecretList::new([CALLBACK_SECRET]),
        max_body_bytes: 262_144,
        max_in_flight_requests: 512,
        request_timeout_secs: 30,
        header_read_timeout_secs: 10,
        write_timeout_secs: 30,
        max_connections: 4096,
        database_pool_size: 10,
        lease_sweep_interval_secs: 3600,
        enqueue_timeout_secs: 15,
        orphan_message_grace_secs: 120,
        requeue_after_secs: None,
        job_retention_secs: 7 * 24 * 3600,
        allow_weak_secrets: false,
    }
}

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
    sqs_endpoint_for_app: Option<String>,
    downstream: Option<String>,
    db_port: Option<u16>,
}

pub fn app() -> Builder {
    Builder {
        configure: Vec::new(),
        fast_sqs: false,
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
        let endpoint = if self.fast_sqs {
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
    let db = PgPool::connect(&test_db.url).await.unwrap();
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

/// Polls `f` until it returns true or `timeout` passes.
pub async fn eventually<F, Fut>(timeout: Duration, mut f: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if f().await {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub async fn assert_problem(r: Response, status: u16) -> Value {
    assert_eq!(r.status().as_u16(), status, "unexpected status");
    let ct = r
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    assert!(ct.starts_with("application/problem+json"), "content type {ct}");
    let body: Value = r.json().await.unwrap();
    for field in ["type", "title", "status", "detail"] {
        assert!(body.get(field).is_some(), "problem without {field}: {body}");
    }
    assert_eq!(body["status"], status);
    body
}

// ------------------------------------------------------------ downstream

/// One submission as the downstream saw it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub job_id: String,
    pub attempt: i64,
    pub idempotency_key: String,
    pub content_type: String,
    pub body: Value,
}

/// What the test downstream answers.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub retry_after: Option<String>,
    pub delay: Duration,
}

impl Reply {
    pub fn status(status: u16) -> Self {
        Self::after(Duration::ZERO, status)
    }
    /// Answers `status` after `delay`.
    pub fn after(delay: Duration, status: u16) -> Self {
        Self {
            status,
            retry_after: None,
            delay,
        }
    }
}

type Behaviour = Arc<dyn Fn(&Seen) -> Reply + Send + Sync>;
/// Runs with each submission before the downstream answers it.
pub type Hook = Arc<dyn Fn(Seen) -> futures_like::BoxFuture + Send + Sync>;
type HookSlot = Arc<Mutex<Option<Hook>>>;

/// A real HTTP downstream on port 0 that records what it receives.
pub struct Downstream {
    pub url: String,
    pub seen: Arc<Mutex<Vec<Seen>>>,
    behaviour: Arc<Mutex<Behaviour>>,
    /// Called with each submission before answering (e.g. to call back first).
    pub before_reply: HookSlot,
    _task: JoinHandle<()>,
}

pub mod futures_like {
    pub type BoxFuture = std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>;
}

impl Downstream {
    pub async fn start(reply: impl Fn(&Seen) -> Reply + Send + Sync + 'static) -> Self {
        use axum::{Router, body::Bytes, extract::State, http::HeaderMap, response::IntoResponse, routing::post};
        let seen = Arc::new(Mutex::new(Vec::new()));
        let behaviour: Arc<Mutex<Behaviour>> = Arc::new(Mutex::new(Arc::new(reply)));
        let before_reply: HookSlot = Arc::new(Mutex::new(None));
        type St = (Arc<Mutex<Vec<Seen>>>, Arc<Mutex<Behaviour>>, HookSlot);
        async fn handle(
            State((seen, behaviour, before)): State<St>,
            headers: HeaderMap,
            body: Bytes,
        ) -> axum::response::Response {
            let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
            let s = Seen {
                job_id: body["job_id"].as_str().unwrap_or_default().to_owned(),
                attempt: body["attempt"].as_i64().unwrap_or(-1),
                idempotency_key: headers
                    .get("idempotency-key")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default()
                    .to_owned(),
                content_type: headers
                    .get("content-type")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default()
                    .to_owned(),
                body,
            };
            seen.lock().unwrap().push(s.clone());
            let reply = (behaviour.lock().unwrap().clone())(&s);
            let hook = before.lock().unwrap().clone();
            if let Some(hook) = hook {
                hook(s.clone()).await;
            }
            tokio::time::sleep(reply.delay).await;
            let mut resp = axum::http::StatusCode::from_u16(reply.status).unwrap().into_response();
            if let Some(ra) = reply.retry_after {
                resp.headers_mut().insert("retry-after", ra.parse().unwrap());
            }
            resp
        }
        let app =
            Router::new()
                .route("/", post(handle))
                .with_state((seen.clone(), behaviour.clone(), before_reply.clone()));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/", listener.local_addr().unwrap());
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        Self {
            url,
            seen,
            behaviour,
            before_reply,
            _task: task,
        }
    }

    pub fn set(&self, reply: impl Fn(&Seen) -> Reply + Send + Sync + 'static) {
        *self.behaviour.lock().unwrap() = Arc::new(reply);
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    pub fn token_for(&self, job_id: &str) -> String {
        self.seen()
            .iter()
            .rev()
            .find(|s| s.job_id == job_id)
            .expect("the job was submitted")
            .body["callback_token"]
            .as_str()
            .unwrap()
            .to_owned()
    }
}

// ----------------------------------------------------------------- proxy

/// A TCP proxy that can cut a dependency off (refusing and dropping
/// connections) and bring it back.
pub struct Proxy {
    pub addr: SocketAddr,
    down: Arc<AtomicBool>,
    generation: Arc<AtomicI64>,
    _task: JoinHandle<()>,
}

impl Proxy {
    pub async fn start(target: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let down = Arc::new(AtomicBool::new(false));
        let generation = Arc::new(AtomicI64::new(0));
        let (d, g) = (down.clone(), generation.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut inbound, _)) = listener.accept().await else {
                    continue;
                };
                if d.load(Ordering::SeqCst) {
                    drop(inbound);
                    continue;
                }
                let (d, g) = (d.clone(), g.clone());
                let my_gen = g.load(Ordering::SeqCst);
                tokio::spawn(async move {
                    let Ok(mut outbound) = tokio::net::TcpStream::connect(target).await else {
                        return;
                    };
                    let copy = tokio::io::copy_bidirectional(&mut inbound, &mut outbound);
                    let cut = async {
                        while !d.load(Ordering::SeqCst) && g.load(Ordering::SeqCst) == my_gen {
                            tokio::time::sleep(Duration::from_millis(20)).await;
                        }
                    };
                    tokio::select! { _ = copy => {}, _ = cut => {} }
                });
            }
        });
        Self {
            addr,
            down,
            generation,
            _task: task,
        }
    }

    /// Cuts the dependency off (or brings it back); returns once open
    /// connections are cut.
    pub async fn set_down(&self, down: bool) {
        self.down.store(down, Ordering::SeqCst);
        self.generation.fetch_add(1, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

pub fn addr_of(url: &str) -> SocketAddr {
    let u = reqwest::Url::parse(url).unwrap();
    let host = u.host_str().unwrap();
    format!("{}:{}", host, u.port_or_known_default().unwrap())
        .parse()
        .unwrap()
}
