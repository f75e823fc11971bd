//! A programmable fake downstream: an HTTP server that takes sluicegate's
//! submissions (`POST /`), records them, answers each as a reply closure
//! says, and — if asked to — works on the jobs it accepted for a simulated
//! while and calls them back.
//!
//! One core for three users: `sluicegate demo-downstream` (capacity, random
//! work, heartbeats, an occasional failure), and through `sluicegate-testkit`
//! the integration tests (recorded submissions, per-submission replies,
//! before-reply hooks) and the benchmark (fixed or seeded random work with
//! callbacks, counters of what it holds). `serve` never uses it.

use std::{
    future::Future,
    io,
    net::SocketAddr,
    pin::Pin,
    sync::{
        Arc, Mutex,
        atomic::{AtomicI64, AtomicU64, Ordering::SeqCst},
    },
    time::{Duration, Instant},
};

use axum::{
    Json, Router,
    body::Bytes,
    extract::State,
    http::{HeaderMap, StatusCode, header},
    response::{IntoResponse, Response},
    routing::{MethodRouter, post},
};
use rand::{Rng, SeedableRng, rngs::StdRng};
use serde_json::{Value, json};
use tokio::{net::TcpListener, task::JoinHandle};

/// One submission as the downstream saw it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub job_id: String,
    pub attempt: i64,
    pub idempotency_key: String,
    pub content_type: String,
    /// The JSON body (`Null` if it was not JSON).
    pub body: Value,
}

impl Seen {
    fn text(&self, field: &str) -> Option<String> {
        self.body[field].as_str().map(str::to_owned)
    }
}

/// What the downstream answers to one submission.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub retry_after: Option<String>,
    /// How long it waits before answering.
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

pub type BoxFuture = Pin<Box<dyn Future<Output = ()> + Send>>;
/// Decides the reply to each submission.
pub type ReplyFn = Arc<dyn Fn(&Seen) -> Reply + Send + Sync>;
/// Runs with each submission before the downstream answers it.
pub type Hook = Arc<dyn Fn(Seen) -> BoxFuture + Send + Sync>;
pub type HookSlot = Arc<Mutex<Option<Hook>>>;
/// The callback body of a job that worked for the given time.
pub type OutcomeFn = Arc<dyn Fn(&Seen, Duration) -> Value + Send + Sync>;

/// How long an accepted job works before its callback.
#[derive(Clone, Copy, Debug)]
pub enum Work {
    Fixed(Duration),
    /// Uniform in [a, b] milliseconds (from a seeded generator if the
    /// builder was given a seed).
    UniformMs(u64, u64),
}

/// What the downstream holds and did (only jobs in simulated work count).
#[derive(Debug, Default)]
pub struct Counters {
    held: AtomicI64,
    max_held: AtomicI64,
    accepted: AtomicU64,
    completed: AtomicU64,
    callback_errors: AtomicU64,
    last_done: Mutex<Option<Instant>>,
}

impl Counters {
    /// Jobs accepted and not yet called back.
    pub fn held(&self) -> i64 {
        self.held.load(SeqCst)
    }
    pub fn max_held(&self) -> i64 {
        self.max_held.load(SeqCst)
    }
    pub fn accepted(&self) -> u64 {
        self.accepted.load(SeqCst)
    }
    /// Jobs whose callback was answered 2xx.
    pub fn completed(&self) -> u64 {
        self.completed.load(SeqCst)
    }
    /// Callbacks answered non-2xx or not at all.
    pub fn callback_errors(&self) -> u64 {
        self.callback_errors.load(SeqCst)
    }
    /// When the last job was called back.
    pub fn last_done(&self) -> Option<Instant> {
        *self.last_done.lock().expect("lock")
    }
}

/// Configures a [`FakeDownstream`]; [`FakeDownstream::builder`].
pub struct Builder {
    reply: ReplyFn,
    capacity: Option<usize>,
    work: Option<Work>,
    seed: Option<u64>,
    heartbeat_every: Option<Duration>,
    outcome: OutcomeFn,
    callback_attempts: u32,
    record: bool,
}

impl Builder {
    /// The reply to each submission (default: 202 at once).
    pub fn reply(mut self, f: impl Fn(&Seen) -> Reply + Send + Sync + 'static) -> Self {
        self.reply = Arc::new(f);
        self
    }
    /// Jobs it works on at once; a 2xx reply beyond it becomes 503 +
    /// `Retry-After: 1`. Only with [`Builder::work`].
    pub fn capacity(mut self, jobs: usize) -> Self {
        self.capacity = Some(jobs);
        self
    }
    /// Work on every job answered 2xx for this long, then call it back.
    pub fn work(mut self, work: Work) -> Self {
        self.work = Some(work);
        self
    }
    /// Seeds the generator of random work times (default: random).
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = Some(seed);
        self
    }
    /// Send a heartbeat this often while a job works.
    pub fn heartbeat_every(mut self, every: Duration) -> Self {
        self.heartbeat_every = Some(every);
        self
    }
    /// The callback body (default: `{"status": "succeeded"}`).
    pub fn outcome(mut self, f: impl Fn(&Seen, Duration) -> Value + Send + Sync + 'static) -> Self {
        self.outcome = Arc::new(f);
        self
    }
    /// Tries of a callback that fails (default 20, 50 ms apart and growing).
    pub fn callback_attempts(mut self, attempts: u32) -> Self {
        self.callback_attempts = attempts.max(1);
        self
    }
    /// Keep every submission for [`FakeDownstream::seen`] (default: yes).
    pub fn record(mut self, record: bool) -> Self {
        self.record = record;
        self
    }
    pub fn build(self) -> FakeDownstream {
        let rng = match self.seed {
            Some(seed) => StdRng::seed_from_u64(seed),
            None => StdRng::from_rng(&mut rand::rng()),
        };
        FakeDownstream {
            inner: Arc::new(Inner {
                reply: Mutex::new(self.reply),
                before_reply: Arc::new(Mutex::new(None)),
                seen: Arc::new(Mutex::new(Vec::new())),
                counters: Counters::default(),
                capacity: self.capacity,
                work: self.work,
                rng: Mutex::new(rng),
                heartbeat_every: self.heartbeat_every,
                outcome: self.outcome,
                callback_attempts: self.callback_attempts,
                record: self.record,
                http: reqwest::Client::builder()
                    .pool_max_idle_per_host(256)
                    .timeout(Duration::from_secs(30))
                    .build()
                    .expect("an HTTP client"),
            }),
        }
    }
}

struct Inner {
    reply: Mutex<ReplyFn>,
    before_reply: HookSlot,
    seen: Arc<Mutex<Vec<Seen>>>,
    counters: Counters,
    capacity: Option<usize>,
    work: Option<Work>,
    rng: Mutex<StdRng>,
    heartbeat_every: Option<Duration>,
    outcome: OutcomeFn,
    callback_attempts: u32,
    record: bool,
    http: reqwest::Client,
}

/// The fake downstream's state; cheap to clone. Serve it with
/// [`FakeDownstream::router`] or [`FakeDownstream::spawn`].
#[derive(Clone)]
pub struct FakeDownstream {
    inner: Arc<Inner>,
}

/// A fake downstream serving on a port of its own; stops when dropped.
pub struct Server {
    pub url: String,
    pub addr: SocketAddr,
    task: JoinHandle<()>,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FakeDownstream {
    pub fn builder() -> Builder {
        Builder {
            reply: Arc::new(|_| Reply::status(202)),
            capacity: None,
            work: None,
            seed: None,
            heartbeat_every: None,
            outcome: Arc::new(|_, _| json!({"status": "succeeded"})),
            callback_attempts: 20,
            record: true,
        }
    }

    /// `POST /` takes the submissions.
    pub fn router(&self) -> Router {
        Router::new().route("/", self.handler())
    }

    /// The submission handler (`POST`), to mount in a router of one's own.
    pub fn handler<S: Clone + Send + Sync + 'static>(&self) -> MethodRouter<S> {
        post(submit).with_state(self.clone())
    }

    /// Serves [`FakeDownstream::router`] on a free port of 127.0.0.1.
    pub async fn spawn(&self) -> io::Result<Server> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let app = self.router();
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(Server {
            url: format!("http://{addr}/"),
            addr,
            task,
        })
    }

    /// Replaces the reply closure.
    pub fn set_reply(&self, f: impl Fn(&Seen) -> Reply + Send + Sync + 'static) {
        *self.inner.reply.lock().expect("lock") = Arc::new(f);
    }

    /// The hook run with each submission before it is answered.
    pub fn before_reply(&self) -> &HookSlot {
        &self.inner.before_reply
    }

    /// The recorded submissions, shared.
    pub fn seen_log(&self) -> &Arc<Mutex<Vec<Seen>>> {
        &self.inner.seen
    }

    /// The submissions recorded so far, oldest first.
    pub fn seen(&self) -> Vec<Seen> {
        self.inner.seen.lock().expect("lock").clone()
    }

    pub fn counters(&self) -> &Counters {
        &self.inner.counters
    }

    pub fn capacity(&self) -> Option<usize> {
        self.inner.capacity
    }

    fn work_time(&self, work: Work) -> Duration {
        match work {
            Work::Fixed(d) => d,
            Work::UniformMs(a, b) => {
                Duration::from_millis(self.inner.rng.lock().expect("lock").random_range(a..=b.max(a)))
            }
        }
    }

    /// Works on an accepted job, then calls it back.
    async fn work(self, seen: Seen, worked: Duration, callback_url: String, token: String) {
        let inner = &self.inner;
        let mut left = worked;
        if let (Some(every), Some(heartbeat_url)) = (inner.heartbeat_every, seen.text("heartbeat_url")) {
            while left > every {
                tokio::time::sleep(every).await;
                left -= every;
                let _ = inner.http.post(&heartbeat_url).bearer_auth(&token).send().await;
            }
        }
        tokio::time::sleep(left).await;
        let body = (inner.outcome)(&seen, worked);
        inner.counters.held.fetch_sub(1, SeqCst);
        for attempt in 0..inner.callback_attempts {
            match inner
                .http
                .post(&callback_url)
                .bearer_auth(&token)
                .json(&body)
                .send()
                .await
            {
                Ok(r) => {
                    tracing::info!(job_id = %seen.job_id, status = %r.status(), "called back");
                    if r.status().is_success() {
                        *inner.counters.last_done.lock().expect("lock") = Some(Instant::now());
                        inner.counters.completed.fetch_add(1, SeqCst);
                        return;
                    }
                }
                Err(e) => tracing::warn!(job_id = %seen.job_id, error = %e, "callback failed"),
            }
            inner.counters.callback_errors.fetch_add(1, SeqCst);
            if attempt + 1 < inner.callback_attempts {
                tokio::time::sleep(Duration::from_millis(50 * u64::from(attempt + 1))).await;
            }
        }
    }
}

fn header_text(headers: &HeaderMap, name: header::HeaderName) -> String {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned()
}

async fn submit(State(fake): State<FakeDownstream>, headers: HeaderMap, body: Bytes) -> Response {
    let inner = &fake.inner;
    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let seen = Seen {
        job_id: body["job_id"].as_str().unwrap_or_default().to_owned(),
        attempt: body["attempt"].as_i64().unwrap_or(-1),
        idempotency_key: header_text(&headers, header::HeaderName::from_static("idempotency-key")),
        content_type: header_text(&headers, header::CONTENT_TYPE),
        body,
    };
    if inner.record {
        inner.seen.lock().expect("lock").push(seen.clone());
    }
    let reply = (inner.reply.lock().expect("lock").clone())(&seen);
    let hook = inner.before_reply.lock().expect("lock").clone();
    if let Some(hook) = hook {
        hook(seen.clone()).await;
    }
    tokio::time::sleep(reply.delay).await;
    let status = StatusCode::from_u16(reply.status).expect("a valid status");
    if let (Some(work), true) = (inner.work, status.is_success()) {
        let (Some(callback_url), Some(token)) = (seen.text("callback_url"), seen.text("callback_token")) else {
            return StatusCode::BAD_REQUEST.into_response();
        };
        let held = inner.counters.held.fetch_add(1, SeqCst) + 1;
        if inner.capacity.is_some_and(|c| held > c as i64) {
            inner.counters.held.fetch_sub(1, SeqCst);
            tracing::info!(job_id = %seen.job_id, "full: 503");
            return (StatusCode::SERVICE_UNAVAILABLE, [(header::RETRY_AFTER, "1")], "full").into_response();
        }
        inner.counters.max_held.fetch_max(held, SeqCst);
        inner.counters.accepted.fetch_add(1, SeqCst);
        tracing::info!(job_id = %seen.job_id, attempt = seen.attempt, held, "accepted");
        let worked = fake.work_time(work);
        tokio::spawn(fake.clone().work(seen, worked, callback_url, token));
        return (status, Json(json!({"accepted": true}))).into_response();
    }
    let mut resp = status.into_response();
    if let Some(ra) = reply.retry_after {
        resp.headers_mut()
            .insert(header::RETRY_AFTER, ra.parse().expect("a header value"));
    }
    resp
}
