//! SQS clients and queues on an emulator.

use std::time::Duration;

use aws_sdk_sqs::Client as SqsClient;
use uuid::Uuid;

/// The general suite's SQS server (moto by default), from `scripts/test`.
pub fn sqs_endpoint() -> String {
    std::env::var("SLUICEGATE_TEST_SQS_ENDPOINT")
        .expect("SLUICEGATE_TEST_SQS_ENDPOINT is not set: run the tests with scripts/test")
}

/// The fast local-aws-sqs (stress tests), from `scripts/test`.
pub fn fast_sqs_endpoint() -> String {
    std::env::var("SLUICEGATE_TEST_FAST_SQS_ENDPOINT").unwrap_or_else(|_| sqs_endpoint())
}

/// A client of the SQS server at `endpoint` with dummy credentials.
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

/// A fresh standard queue; its URL.
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
