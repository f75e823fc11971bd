//! sluicegate: a back-pressure control plane. Jobs submitted over REST wait
//! in SQS and are handed to a downstream only while the number of jobs it is
//! really running (tracked in Postgres from its callbacks) is under the limit.
//!
//! See ARCHITECTURE.md for the map of modules and the invariants.

/// A named crash point for the fault-injection tests: with the `failpoints`
/// feature and the point armed (`FAILPOINTS=<name>=return`), the process
/// aborts there, as if killed with `kill -9`. Without the feature it is
/// nothing.
#[macro_export]
macro_rules! fault {
    ($name:literal) => {
        #[cfg(feature = "failpoints")]
        if fail::eval($name, |_| ()).is_some() {
            eprintln!("fault point {} reached: aborting", $name);
            std::process::abort();
        }
    };
}

pub mod background;
pub mod callback_token;
pub mod cli;
pub mod config;
pub mod demo_downstream;
pub mod domain;
pub mod downstream;
pub mod drain;
pub mod enqueue;
pub mod fake_downstream;
pub mod healthcheck;
pub mod http;
pub mod lifecycle;
pub mod metrics;
pub mod pg_watch;
pub mod queue;
pub mod requeue;
pub mod server;
pub mod startup;
pub mod state;
pub mod store;
pub mod telemetry;
