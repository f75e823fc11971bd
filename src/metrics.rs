//! The Prometheus recorder (installed once per process) and the gauges
//! sampled from the database and the queue.

use std::sync::OnceLock;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::{state::AppState, store};

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

// Every metric's name, defined once (described in `describe()`).
pub const JOBS_ENQUEUED: &str = "sluicegate_jobs_enqueued_total";
pub const JOBS_DISPATCHED: &str = "sluicegate_jobs_dispatched_total";
/// `{status}`
pub const JOBS_FINISHED: &str = "sluicegate_jobs_finished_total";
pub const RUNNING: &str = "sluicegate_running";
pub const LIMIT: &str = "sluicegate_limit";
/// The limit enforced (`max_concurrency` until the adaptive limit exists).
pub const EFFECTIVE_CONCURRENCY: &str = "sluicegate_effective_concurrency";
/// `{reason}`: a received job that could not go, by its `waiting_on` reason.
pub const JOBS_HELD: &str = "sluicegate_jobs_held_total";
pub const QUEUE_DEPTH: &str = "sluicegate_queue_depth";
/// `{key}`: live jobs of a key with settings of its own (sampled).
pub const KEY_RUNNING: &str = "sluicegate_key_running";
/// `{key}`: queued jobs of a key with settings of its own (sampled).
pub const KEY_QUEUED: &str = "sluicegate_key_queued";
pub const DRAIN_DURATION: &str = "sluicegate_drain_duration_seconds";
/// `{outcome}`
pub const DOWNSTREAM_DURATION: &str = "sluicegate_downstream_request_duration_seconds";
/// `{method,route,status}`
pub const HTTP_REQUESTS: &str = "sluicegate_http_requests_total";
/// `{method,route,status}`
pub const HTTP_DURATION: &str = "sluicegate_http_request_duration_seconds";
pub const HTTP_SHED: &str = "sluicegate_http_requests_shed_total";
pub const HTTP_CONNECTIONS_REFUSED: &str = "sluicegate_http_connections_refused_total";
/// `sluicegate_sqs_requests_total{operation}`: every HTTP request to SQS.
pub const SQS_REQUESTS: &str = "sluicegate_sqs_requests_total";
/// `sluicegate_messages_resent_total{reason}`: fresh SQS messages sent for
/// queued jobs whose message was gone or old.
pub const MESSAGES_RESENT: &str = "sluicegate_messages_resent_total";
/// `sluicegate_retry_after_capped_total`: downstream `Retry-After`s longer
/// than the longest honoured.
pub const RETRY_AFTER_CAPPED: &str = "sluicegate_retry_after_capped_total";
/// `sluicegate_postgres_up`: 1 while Postgres answers the watcher
/// (`pg_watch`), 0 while requests that need it are refused.
pub const POSTGRES_UP: &str = "sluicegate_postgres_up";

const DURATION_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// Installs the global recorder on first use and returns its handle.
pub fn recorder() -> PrometheusHandle {
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), DURATION_BUCKETS)
                .expect("buckets are not empty")
                .build_recorder();
            let handle = recorder.handle();
            // Another recorder may already be installed (e.g. by an embedding
            // program); then ours still renders what it records itself.
            let _ = metrics::set_global_recorder(recorder);
            describe();
            handle
        })
        .clone()
}

fn describe() {
    use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
    describe_counter!(JOBS_ENQUEUED, "Jobs accepted and queued");
    describe_counter!(JOBS_DISPATCHED, "Submissions the downstream accepted (2xx)");
    describe_counter!(JOBS_FINISHED, "Jobs that reached a terminal status, by status");
    describe_gauge!(RUNNING, "Jobs counted against the limit (dispatching + running)");
    describe_gauge!(LIMIT, "The concurrency limit");
    describe_gauge!(
        EFFECTIVE_CONCURRENCY,
        "The limit enforced (max_concurrency; the adaptive limit is not available yet)"
    );
    describe_counter!(
        JOBS_HELD,
        "Received jobs that could not be dispatched, by waiting_on reason"
    );
    describe_gauge!(QUEUE_DEPTH, "Approximate visible messages in the SQS queue");
    describe_gauge!(
        POSTGRES_UP,
        "1 while Postgres is reachable; 0 while requests that need it answer 503 at once"
    );
    describe_gauge!(
        KEY_RUNNING,
        "Jobs dispatching or running, per key with settings of its own (others have no series)"
    );
    describe_gauge!(
        KEY_QUEUED,
        "Queued jobs, per key with settings of its own (others have no series)"
    );
    describe_counter!(
        SQS_REQUESTS,
        "HTTP requests to SQS (each retry of the SDK counts), by operation"
    );
    describe_counter!(
        MESSAGES_RESENT,
        "Fresh SQS messages sent for queued jobs whose message was gone (release_failed) or old (stale)"
    );
    describe_counter!(
        RETRY_AFTER_CAPPED,
        "Downstream Retry-After values longer than the longest honoured (cut to it)"
    );
    describe_histogram!(DRAIN_DURATION, Unit::Seconds, "Duration of one drain");
    describe_histogram!(
        DOWNSTREAM_DURATION,
        Unit::Seconds,
        "Duration of one submission to the downstream, by outcome"
    );
    describe_counter!(HTTP_REQUESTS, "HTTP requests, by method, route and status");
    describe_histogram!(
        HTTP_DURATION,
        Unit::Seconds,
        "HTTP request latency, by method, route and status"
    );
    describe_counter!(HTTP_SHED, "Requests refused because too many were in flight");
    describe_counter!(
        HTTP_CONNECTIONS_REFUSED,
        "Connections closed at once because MAX_CONNECTIONS were open"
    );
    // Every counter without labels is shown from the start, at 0, so that
    // dashboards and alerts see 0 rather than nothing until the first event.
    // Labelled ones (finished{status}, sqs_requests{operation},
    // messages_resent{reason}, http_requests{method,route,status}) appear
    // with their first event.
    for name in [
        JOBS_ENQUEUED,
        JOBS_DISPATCHED,
        HTTP_SHED,
        HTTP_CONNECTIONS_REFUSED,
        RETRY_AFTER_CAPPED,
    ] {
        metrics::counter!(name).increment(0);
    }
}

/// Refreshes the gauges that mirror shared state (every replica reports the
/// same values, read from Postgres and SQS).
pub async fn sample(state: &AppState) {
    if let Ok((limit, live)) = store::capacity(&state.db).await {
        metrics::gauge!(RUNNING).set(live as f64);
        metrics::gauge!(LIMIT).set(f64::from(limit));
        metrics::gauge!(EFFECTIVE_CONCURRENCY).set(f64::from(limit));
    }
    if let Ok(depth) = state.queue.depth().await {
        metrics::gauge!(QUEUE_DEPTH).set(depth as f64);
    }
    sample_keys(state).await;
}

/// The per-key gauges, only for keys with settings of their own, so that a
/// million tenants do not make a million series. A key whose settings were
/// removed reads 0 (a series cannot be withdrawn from the recorder).
async fn sample_keys(state: &AppState) {
    let Ok(keys) = store::key_gauges(&state.db).await else {
        return;
    };
    let mut had = state.keys_with_gauges.lock().expect("never poisoned");
    let now: std::collections::BTreeSet<String> = keys.iter().map(|k| k.key.clone()).collect();
    for gone in had.difference(&now) {
        metrics::gauge!(KEY_RUNNING, "key" => gone.clone()).set(0.0);
        metrics::gauge!(KEY_QUEUED, "key" => gone.clone()).set(0.0);
    }
    for k in keys {
        metrics::gauge!(KEY_RUNNING, "key" => k.key.clone()).set(k.running as f64);
        metrics::gauge!(KEY_QUEUED, "key" => k.key).set(k.queued as f64);
    }
    had.extend(now);
}
