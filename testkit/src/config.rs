//! The configuration every test and benchmark instance starts from.

use sluicegate::config::{Config, Secret, SecretList};

pub const API_TOKEN: &str = "test-api-token-0123456789";
pub const DRAIN_TOKEN: &str = "test-drain-token-0123456789";
pub const CALLBACK_SECRET: &str = "test-callback-secret-0123456789abcdef0123456789";

/// A valid configuration on port 0 with the test tokens. Tests step drains
/// themselves (`refill_on_callback` off) and the lease sweeper stays idle.
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
