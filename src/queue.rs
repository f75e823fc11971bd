//! The SQS queue jobs wait in. Messages carry only the job id; the job itself
//! lives in Postgres. Every SQS API request, each retry of the SDK included,
//! is counted in `sluicegate_sqs_requests_total{operation}` (an interceptor on
//! the client, see [`CountRequests`]).

use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use aws_sdk_sqs::{
    Client,
    config::{ConfigBag, Intercept, RuntimeComponents, interceptors::BeforeTransmitInterceptorContextRef},
    types::{
        ChangeMessageVisibilityBatchRequestEntry, DeleteMessageBatchRequestEntry, MessageSystemAttributeName,
        QueueAttributeName, SendMessageBatchRequestEntry,
    },
};
use chrono::{DateTime, Utc};
use futures::future::join_all;
use tokio::sync::Semaphore;
use tokio_util::task::TaskTracker;
use uuid::Uuid;

/// SQS accepts at most 10 entries per batch request and per receive.
pub const SQS_BATCH: usize = 10;
/// SQS caps a visibility timeout at 12 hours.
pub const MAX_VISIBILITY_SECS: i32 = 43_200;
/// SQS caps a message's delay at 15 minutes.
pub const MAX_DELAY_SECS: i32 = 900;
/// SQS caps a long poll at 20 seconds.
pub const MAX_WAIT_SECS: i32 = 20;
/// How long a delete given to [`Queue::delete_soon`] waits for company to
/// fill a batch of ten.
pub const DELETE_LINGER: Duration = Duration::from_millis(200);
/// At most this many `SendMessageBatch` requests are under way at once in a
/// replica, whatever the number of submissions: a `/jobs/batch` of 500 jobs
/// is 50 of them, and without a cap four such requests at once opened 200
/// connections to SQS, each kept in the client's pool with its buffers
/// (about 19 KiB each, more with TLS). 32 requests of ten keep SQS busy:
/// at SQS's typical 10–20 ms per request that is 16,000 messages/s or more.
pub const MAX_CONCURRENT_SENDS: usize = 32;

#[derive(Clone)]
pub struct Queue {
    client: Client,
    url: String,
    lingering: Arc<Mutex<Lingering>>,
    /// The last depth SQS reported (see [`Queue::recent_depth`]).
    depth: Arc<Mutex<DepthReading>>,
    /// Permits for `SendMessageBatch` requests ([`MAX_CONCURRENT_SENDS`]).
    sends: Arc<Semaphore>,
}

/// The last depth SQS reported, and when; `changes` counts this replica's
/// changes to the queue, so that a reading asked for before one of them is
/// not kept after it.
#[derive(Default)]
struct DepthReading {
    changes: u64,
    last: Option<(Instant, i64)>,
}

/// Deletes waiting for company (see [`Queue::delete_soon`]).
#[derive(Default)]
struct Lingering {
    receipts: Vec<String>,
    /// A task will send what is left after [`DELETE_LINGER`].
    armed: bool,
}

/// A received message.
#[derive(Debug, Clone)]
pub struct Received {
    /// `None` when the body is not a job id (a foreign or corrupt message).
    pub job_id: Option<Uuid>,
    pub receipt: String,
    pub sent_at: Option<DateTime<Utc>>,
}

/// Counts every HTTP request the SDK sends to SQS (each attempt of an
/// operation, so the SDK's own retries are counted), by operation name.
#[derive(Debug)]
pub struct CountRequests;

impl Intercept for CountRequests {
    fn name(&self) -> &'static str {
        "sluicegate::CountRequests"
    }

    fn read_before_transmit(
        &self,
        _context: &BeforeTransmitInterceptorContextRef<'_>,
        _components: &RuntimeComponents,
        cfg: &mut ConfigBag,
    ) -> Result<(), aws_sdk_sqs::error::BoxError> {
        let operation = cfg
            .load::<aws_smithy_runtime_api::client::orchestrator::Metadata>()
            .map_or("unknown", |m| m.name())
            .to_owned();
        metrics::counter!(crate::metrics::SQS_REQUESTS, "operation" => operation).increment(1);
        Ok(())
    }
}

impl Queue {
    /// Wraps `client`, adding the request counter to it.
    pub fn new(client: Client, url: impl Into<String>) -> Self {
        let conf = client.config().to_builder().interceptor(CountRequests).build();
        Self {
            client: Client::from_conf(conf),
            url: url.into(),
            lingering: Arc::default(),
            depth: Arc::default(),
            sends: Arc::new(Semaphore::new(MAX_CONCURRENT_SENDS)),
        }
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    /// Sends one message per job id, in batches of 10 sent concurrently (at
    /// most [`MAX_CONCURRENT_SENDS`] at once in this replica).
    /// Returns the ids whose message could not be sent.
    pub async fn send_job_ids(&self, ids: &[Uuid]) -> Vec<Uuid> {
        let delayed: Vec<(Uuid, Duration)> = ids.iter().map(|id| (*id, Duration::ZERO)).collect();
        self.send_delayed(&delayed).await
    }

    /// Sends one message per job id, each visible after its delay (at most
    /// 15 minutes: a job due later gets its message back from the drain with
    /// the rest of the wait). Returns the ids whose message could not be sent.
    pub async fn send_delayed(&self, jobs: &[(Uuid, Duration)]) -> Vec<Uuid> {
        self.depth_changed(!jobs.is_empty());
        let sends = jobs.chunks(SQS_BATCH).map(|chunk| async move {
            let entries: Vec<_> = chunk
                .iter()
                .enumerate()
                .map(|(i, (id, delay))| {
                    SendMessageBatchRequestEntry::builder()
                        .id(i.to_string())
                        .message_body(id.to_string())
                        .delay_seconds(ceil_secs(*delay).min(MAX_DELAY_SECS))
                        .build()
                        .expect("id and body are set")
                })
                .collect();
            let _permit = self.sends.acquire().await.expect("the semaphore is never closed");
            match self
                .client
                .send_message_batch()
                .queue_url(&self.url)
                .set_entries(Some(entries))
                .send()
                .await
            {
                Ok(out) => out
                    .failed()
                    .iter()
                    .filter_map(|f| {
                        f.id()
                            .parse::<usize>()
                            .ok()
                            .and_then(|i| chunk.get(i).map(|(id, _)| *id))
                    })
                    .collect::<Vec<_>>(),
                Err(e) => {
                    tracing::warn!(error = %aws_sdk_sqs::error::DisplayErrorContext(&e), "SendMessageBatch failed");
                    chunk.iter().map(|(id, _)| *id).collect()
                }
            }
        });
        join_all(sends).await.into_iter().flatten().collect()
    }

    /// Receives up to `max` (1..=10) messages, hiding them for `visibility`.
    /// `wait` zero is a short poll (it asks a sample of SQS's servers and may
    /// miss messages of a small queue); longer is a long poll of that many
    /// whole seconds (every server is asked; it returns as soon as there is
    /// a message).
    pub async fn receive(&self, max: usize, visibility: Duration, wait: Duration) -> anyhow::Result<Vec<Received>> {
        // SentTimestamp is asked for under both names: some SQS-compatible
        // servers (local-aws-sqs) know only the older `AttributeNames`.
        #[allow(deprecated)]
        let out = self
            .client
            .receive_message()
            .attribute_names(QueueAttributeName::from("SentTimestamp"))
            .queue_url(&self.url)
            .max_number_of_messages(max.clamp(1, SQS_BATCH) as i32)
            .visibility_timeout(visibility.as_secs().clamp(1, MAX_VISIBILITY_SECS as u64) as i32)
            .wait_time_seconds((wait.as_secs() as i32).min(MAX_WAIT_SECS))
            .message_system_attribute_names(MessageSystemAttributeName::SentTimestamp)
            .send()
            .await
            .map_err(|e| anyhow::anyhow!("ReceiveMessage: {}", aws_sdk_sqs::error::DisplayErrorContext(&e)))?;
        self.depth_changed(!out.messages().is_empty());
        Ok(out
            .messages()
            .iter()
            .filter_map(|m| {
                let receipt = m.receipt_handle()?.to_owned();
                let job_id = m.body().and_then(|b| Uuid::parse_str(b.trim()).ok());
                let sent_at = m
                    .attributes()
                    .and_then(|a| a.get(&MessageSystemAttributeName::SentTimestamp))
                    .and_then(|t| t.parse::<i64>().ok())
                    .and_then(DateTime::from_timestamp_millis);
                Some(Received {
                    job_id,
                    receipt,
                    sent_at,
                })
            })
            .collect())
    }

    /// Deletes messages, in batches of 10. Failures are logged: a message
    /// that survives is received again and then recognised as stale.
    pub async fn delete(&self, receipts: &[String]) {
        self.depth_changed(!receipts.is_empty());
        let deletes = receipts.chunks(SQS_BATCH).map(|chunk| async move {
            let entries: Vec<_> = chunk
                .iter()
                .enumerate()
                .map(|(i, r)| {
                    DeleteMessageBatchRequestEntry::builder()
                        .id(i.to_string())
                        .receipt_handle(r)
                        .build()
                        .expect("set")
                })
                .collect();
            match self
                .client
                .delete_message_batch()
                .queue_url(&self.url)
                .set_entries(Some(entries))
                .send()
                .await
            {
                Ok(out) if !out.failed().is_empty() => {
                    tracing::warn!(
                        failed = out.failed().len(),
                        "some SQS deletes failed; those messages will come back and be dropped then"
                    )
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(error = %aws_sdk_sqs::error::DisplayErrorContext(&e), "DeleteMessageBatch failed")
                }
            }
        });
        join_all(deletes).await;
    }

    /// Deletes messages in full batches of ten, sending what is left over
    /// within [`DELETE_LINGER`], together with whatever else is given to
    /// this replica's queue meanwhile: drains that each finish one or two
    /// jobs (a refill per callback) then still delete ten at a time. The
    /// late batch is sent by a task in `tasks` (graceful shutdown waits for
    /// it); if the process dies first, those messages come back and are
    /// deleted then (their jobs need no message any more). Returns how many
    /// were sent at once.
    pub async fn delete_soon(&self, receipts: &[String], tasks: &TaskTracker) -> usize {
        let (now, arm) = {
            let mut l = self.lingering.lock().expect("never poisoned");
            l.receipts.extend_from_slice(receipts);
            let full = l.receipts.len() / SQS_BATCH * SQS_BATCH;
            let now: Vec<String> = l.receipts.drain(..full).collect();
            let arm = !l.receipts.is_empty() && !l.armed;
            l.armed |= arm;
            (now, arm)
        };
        if arm {
            let queue = self.clone();
            tasks.spawn(async move {
                tokio::time::sleep(DELETE_LINGER).await;
                let rest = {
                    let mut l = queue.lingering.lock().expect("never poisoned");
                    l.armed = false;
                    std::mem::take(&mut l.receipts)
                };
                queue.delete(&rest).await;
            });
        }
        self.delete(&now).await;
        now.len()
    }

    /// Makes messages visible again after `delay` (zero: now). Returns the
    /// indexes (into `receipts`) of the messages SQS says it could not
    /// change: such a message may be gone (a purge, retention), and the
    /// caller must send a new one if its job still needs it. A failure of the
    /// whole request is logged: its messages reappear when their current
    /// visibility ends.
    pub async fn release(&self, receipts: &[(String, Duration)]) -> Vec<usize> {
        self.depth_changed(!receipts.is_empty());
        let changes = receipts.chunks(SQS_BATCH).enumerate().map(|(n, chunk)| async move {
            let entries: Vec<_> = chunk
                .iter()
                .enumerate()
                .map(|(i, (r, delay))| {
                    ChangeMessageVisibilityBatchRequestEntry::builder()
                        .id(i.to_string())
                        .receipt_handle(r)
                        .visibility_timeout(ceil_secs(*delay))
                        .build()
                        .expect("set")
                })
                .collect();
            match self
                .client
                .change_message_visibility_batch()
                .queue_url(&self.url)
                .set_entries(Some(entries))
                .send()
                .await
            {
                Ok(out) => out
                    .failed()
                    .iter()
                    .filter_map(|f| {
                        tracing::warn!(code = f.code(), message = f.message(), "SQS could not release a message");
                        f.id().parse::<usize>().ok().filter(|i| *i < chunk.len())
                    })
                    .map(|i| n * SQS_BATCH + i)
                    .collect(),
                Err(e) => {
                    tracing::warn!(error = %aws_sdk_sqs::error::DisplayErrorContext(&e), "ChangeMessageVisibilityBatch failed");
                    Vec::new()
                }
            }
        });
        join_all(changes).await.into_iter().flatten().collect()
    }

    /// The queue's message retention period.
    pub async fn retention(&self) -> anyhow::Result<Duration> {
        self.attribute(QueueAttributeName::MessageRetentionPeriod)
            .await
            .map(Duration::from_secs)
    }

    /// Approximate number of visible messages, asked of SQS now.
    pub async fn depth(&self) -> anyhow::Result<i64> {
        let asked_after = self.depth.lock().expect("never poisoned").changes;
        let depth = self
            .attribute(QueueAttributeName::ApproximateNumberOfMessages)
            .await
            .map(|n| n as i64)?;
        let mut reading = self.depth.lock().expect("never poisoned");
        // Kept only if this replica changed nothing while the request ran
        // (the answer may predate that change).
        if reading.changes == asked_after {
            reading.last = Some((Instant::now(), depth));
        }
        Ok(depth)
    }

    /// This replica changed what the queue holds: the last depth read is
    /// no longer reused, nor one asked for before now.
    fn depth_changed(&self, changed: bool) {
        if changed {
            let mut reading = self.depth.lock().expect("never poisoned");
            reading.changes += 1;
            reading.last = None;
        }
    }

    /// As [`Queue::depth`], but a depth SQS reported less than `max_age` ago
    /// is reused, unless this replica has sent, received, deleted or
    /// released messages since: the figure is approximate anyway (SQS's own
    /// counts lag, and other replicas' work shows up to `max_age` late), and
    /// a dashboard polling `GET /stats` of a quiet queue should cost neither
    /// a request to SQS per poll nor the round trip's latency.
    pub async fn recent_depth(&self, max_age: Duration) -> anyhow::Result<i64> {
        let last = self.depth.lock().expect("never poisoned").last;
        match last {
            Some((at, depth)) if at.elapsed() < max_age => Ok(depth),
            _ => self.depth().await,
        }
    }

    /// One numeric attribute of the queue.
    async fn attribute(&self, name: QueueAttributeName) -> anyhow::Result<u64> {
        let out = self
            .client
            .get_queue_attributes()
            .queue_url(&self.url)
            .attribute_names(name.clone())
            .send()
            .await
            .map_err(|e| anyhow::anyhow!("GetQueueAttributes: {}", aws_sdk_sqs::error::DisplayErrorContext(&e)))?;
        out.attributes()
            .and_then(|a| a.get(&name))
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| anyhow::anyhow!("GetQueueAttributes: no {}", name.as_str()))
    }
}

/// SQS counts visibility in whole seconds: round up, so that a message never
/// comes back before the job is due.
fn ceil_secs(d: Duration) -> i32 {
    let secs = d.as_secs() + u64::from(d.subsec_nanos() > 0);
    secs.min(MAX_VISIBILITY_SECS as u64) as i32
}

/// Builds the SQS client through the standard AWS SDK chain (region,
/// credentials, `AWS_ENDPOINT_URL`), with an explicit endpoint if given.
pub async fn sqs_client(endpoint_url: Option<&str>, queue_url: &str) -> Client {
    let timeouts = aws_config::timeout::TimeoutConfig::builder()
        .connect_timeout(Duration::from_secs(2))
        .operation_attempt_timeout(Duration::from_secs(5))
        .operation_timeout(Duration::from_secs(12))
        .build();
    let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest()).timeout_config(timeouts);
    if let Some(url) = endpoint_url {
        loader = loader.endpoint_url(url);
    }
    let sdk = loader.load().await;
    let mut conf = aws_sdk_sqs::config::Builder::from(&sdk);
    if sdk.region().is_none() {
        // No AWS_REGION: take it from an AWS queue URL
        // (https://sqs.<region>.amazonaws.com/...); emulators accept any.
        conf = conf.region(aws_sdk_sqs::config::Region::new(region_of_queue_url(queue_url)));
    }
    Client::from_conf(conf.build())
}

fn region_of_queue_url(queue_url: &str) -> String {
    reqwest::Url::parse(queue_url)
        .ok()
        .and_then(|u| {
            let host = u.host_str()?.to_owned();
            let mut parts = host.split('.');
            (parts.next() == Some("sqs"))
                .then(|| parts.next().map(str::to_owned))
                .flatten()
        })
        .filter(|r| r.contains('-'))
        .unwrap_or_else(|| "us-east-1".to_owned())
}

#[cfg(test)]
mod tests {
    use std::{
        sync::{
            Arc,
            atomic::{AtomicUsize, Ordering::SeqCst},
        },
        time::Duration,
    };

    use axum::{Json, Router, body::Bytes, extract::State, routing::post};
    use serde_json::{Value, json};
    use uuid::Uuid;

    /// Requests under way at the stand-in, and the most seen at once.
    #[derive(Default)]
    struct Concurrency {
        now: AtomicUsize,
        max: AtomicUsize,
        requests: AtomicUsize,
    }

    /// A stand-in for SQS's `SendMessageBatch` (JSON protocol) that takes
    /// 20 ms per request and accepts every entry.
    async fn send_message_batch(State(c): State<Arc<Concurrency>>, body: Bytes) -> Json<Value> {
        // The SDK sends `application/x-amz-json-1.0`, which `Json` refuses.
        let body: Value = serde_json::from_slice(&body).expect("a JSON request");
        let now = c.now.fetch_add(1, SeqCst) + 1;
        c.max.fetch_max(now, SeqCst);
        c.requests.fetch_add(1, SeqCst);
        tokio::time::sleep(Duration::from_millis(20)).await;
        c.now.fetch_sub(1, SeqCst);
        let ok: Vec<Value> = body["Entries"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|e| json!({"Id": e["Id"], "MessageId": Uuid::new_v4().to_string(), "MD5OfMessageBody": "0"}))
            .collect();
        Json(json!({ "Successful": ok, "Failed": [] }))
    }

    #[tokio::test]
    async fn sends_are_capped_at_once_however_many_batches_are_asked_for() {
        let c = Arc::new(Concurrency::default());
        let app = Router::new().route("/", post(send_message_batch)).with_state(c.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        let conf = aws_sdk_sqs::Config::builder()
            .behavior_version(aws_sdk_sqs::config::BehaviorVersion::latest())
            .region(aws_sdk_sqs::config::Region::new("us-east-1"))
            .credentials_provider(aws_sdk_sqs::config::Credentials::new("t", "t", None, None, "test"))
            .endpoint_url(&endpoint)
            .build();
        let queue = super::Queue::new(aws_sdk_sqs::Client::from_conf(conf), format!("{endpoint}/000/jobs"));
        // Four submissions of 500 jobs at once: 200 batches of ten.
        let ids: Vec<Uuid> = (0..500).map(|_| Uuid::new_v4()).collect();
        let failed = futures::future::join_all((0..4).map(|_| queue.send_job_ids(&ids))).await;
        assert!(failed.iter().all(Vec::is_empty), "every message was sent");
        assert_eq!(c.requests.load(SeqCst), 200);
        let max = c.max.load(SeqCst);
        assert!(max <= super::MAX_CONCURRENT_SENDS, "{max} sends at once");
        // Still sent side by side, not one after another.
        assert!(max >= super::MAX_CONCURRENT_SENDS / 2, "only {max} sends at once");
    }

    #[test]
    fn region_comes_from_aws_queue_urls() {
        assert_eq!(
            super::region_of_queue_url("https://sqs.eu-west-3.amazonaws.com/123/jobs"),
            "eu-west-3"
        );
        assert_eq!(
            super::region_of_queue_url("http://127.0.0.1:4566/000000000000/jobs"),
            "us-east-1"
        );
    }
}
