//! sluicegate's test kit: what the integration tests (`tests/api/`, through
//! `tests/api/helpers.rs`) and the benchmark (`benches/throughput/`) stand on.
//!
//! - [`TestDb`]: a fresh Postgres database, dropped with its owner, named
//!   `sg_test_r<run>_<id>` (`scripts/test` cleans up after dead runs by it).
//! - [`SqsEmulator`], [`sqs_client`], [`create_queue`]: an SQS-protocol
//!   server (the tests get theirs from `scripts/test`; the benchmark may start
//!   one), clients for it, a fresh queue.
//! - [`base_config`], [`app()`], [`TestApp`]: the real application on port 0
//!   with a fresh database and queue, and replicas of it.
//! - [`Downstream`]: the fake downstream (`sluicegate::fake_downstream`, the
//!   core `sluicegate demo-downstream` also runs) on a port of its own.
//! - [`Proxy`]: a TCP proxy that cuts a dependency off and brings it back.
//! - [`reserve_ids`]: a drain's reservation without SQS; [`take_into_window`]
//!   (or [`take_in`], then [`mark_ready`]): jobs taken into the intake window
//!   as drains would, with [`made_up_receipt`]s and [`window_times`].
//! - [`eventually`], [`assert_problem`].

mod app;
mod check;
mod config;
mod db;
mod downstream;
mod emulator;
mod proxy;
mod reserve;
mod sqs;

pub use app::{Builder, TestApp, app};
pub use check::{assert_problem, eventually};
pub use config::{API_TOKEN, CALLBACK_SECRET, DRAIN_TOKEN, base_config};
pub use db::{TestDb, admin_url, drop_stale_databases, postgres_addr};
pub use downstream::{Counters, Downstream, FakeDownstream, Hook, HookSlot, Reply, Seen, Work, futures_like};
pub use emulator::{Emulator, SqsEmulator};
pub use proxy::{Proxy, addr_of};
pub use reserve::{made_up_receipt, mark_ready, reserve_ids, take_in, take_into_window, window_times};
pub use sqs::{create_queue, fast_sqs_endpoint, sqs_client, sqs_endpoint};
