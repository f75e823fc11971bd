//! Issue 11: the fault-injection suite. Each protection named in
//! ARCHITECTURE.md's invariants gets a test that fails when the protection is
//! removed (docs/reliability.md records what breaking each one showed), and
//! the dependencies are cut, killed and restarted for real.

pub(crate) mod common;
// Needs the binary built with the crash points (`--features failpoints`,
// which scripts/test passes).
#[cfg(feature = "failpoints")]
mod crash;
mod downstream;
mod load;
mod pg_restart;
mod protections;
mod soak;
mod sqs_cut;
