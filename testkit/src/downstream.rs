//! The fake downstream on a port of its own: `sluicegate::fake_downstream`
//! (the core `sluicegate demo-downstream` runs too) with what tests and the
//! benchmark ask of it.

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering::SeqCst},
    },
    time::{Duration, Instant},
};

use sluicegate::fake_downstream::{self, Server};
pub use sluicegate::fake_downstream::{Counters, FakeDownstream, Hook, HookSlot, Reply, Seen, Work};
use tokio::task::JoinHandle;

pub mod futures_like {
    pub use sluicegate::fake_downstream::BoxFuture;
}

/// A real HTTP downstream on port 0 that records what it receives.
pub struct Downstream {
    pub url: String,
    pub seen: Arc<Mutex<Vec<Seen>>>,
    /// Called with each submission before answering (e.g. to call back first).
    pub before_reply: HookSlot,
    pub fake: FakeDownstream,
    _server: Server,
}

impl Downstream {
    /// Answers every submission as `reply` says, and does nothing more.
    pub async fn start(reply: impl Fn(&Seen) -> Reply + Send + Sync + 'static) -> Self {
        Self::start_with(FakeDownstream::builder().reply(reply)).await
    }

    /// Any fake downstream, e.g. one that works on its jobs and calls back:
    /// `Downstream::start_with(FakeDownstream::builder().work(Work::Fixed(d)))`.
    pub async fn start_with(builder: fake_downstream::Builder) -> Self {
        let fake = builder.build();
        let server = fake.spawn().await.expect("bind the downstream");
        Self {
            url: server.url.clone(),
            seen: fake.seen_log().clone(),
            before_reply: fake.before_reply().clone(),
            fake,
            _server: server,
        }
    }

    /// Replaces the reply closure.
    pub fn set(&self, reply: impl Fn(&Seen) -> Reply + Send + Sync + 'static) {
        self.fake.set_reply(reply);
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.fake.seen()
    }

    /// The callback token of the job's latest submission.
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

    /// What the downstream holds and did (jobs in simulated work).
    pub fn counters(&self) -> &Counters {
        self.fake.counters()
    }

    /// Waits until `n` jobs have been called back; panics after `timeout`.
    pub async fn wait_completed(&self, n: u64, timeout: Duration, what: &str) {
        let c = self.counters();
        let deadline = Instant::now() + timeout;
        while c.completed() < n {
            assert!(
                Instant::now() < deadline,
                "{what}: only {} of {n} jobs completed within {timeout:?} (accepted {}, callback errors {})",
                c.completed(),
                c.accepted(),
                c.callback_errors()
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// When the last job was called back.
    pub fn last_done(&self) -> Instant {
        self.counters().last_done().expect("at least one job completed")
    }

    /// Samples the number of jobs held every `every` until `stop` is set.
    pub fn sample_held(&self, every: Duration, stop: Arc<AtomicBool>) -> JoinHandle<Vec<(Instant, i64)>> {
        let fake = self.fake.clone();
        tokio::spawn(async move {
            let mut samples = Vec::new();
            let mut t = tokio::time::interval(every);
            t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            while !stop.load(SeqCst) {
                t.tick().await;
                samples.push((Instant::now(), fake.counters().held()));
            }
            samples
        })
    }
}
