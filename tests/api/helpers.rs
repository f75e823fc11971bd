//! Test harness: the real application on port 0, a fresh Postgres database
//! and a fresh SQS queue (on a real SQS-protocol server) per test, a real
//! downstream HTTP server, and a TCP proxy to cut dependencies off. All of it
//! lives in the shared test kit (`testkit/`, also used by the benchmark);
//! test modules `use crate::helpers::*`.

pub use sluicegate_testkit::*;
