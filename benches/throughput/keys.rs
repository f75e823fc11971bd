//! f. Keys at scale (issue 12): the part of a drain whose cost depends on
//! how many keys have queued work — the fair reservation, `store::reserve`
//! — timed on a window of the same number of jobs, all in one key and then
//! each in its own key.

use std::{
    fmt::Write as _,
    sync::atomic::{AtomicUsize, Ordering},
    time::{Duration, Instant},
};

use axum::body::Bytes;
use serde_json::{Value, json};
use sluicegate::{
    drain::WINDOW_KEYS,
    store::{self, WindowTimes},
};
use sluicegate_testkit::{Downstream, FakeDownstream, take_into_window, window_times};
use uuid::Uuid;

use crate::{
    Facts, Infra, Settings, keep,
    load::{dispose, enqueue_batches, start_app},
    med,
    stats::TABLE_HEAD,
};

/// Reservations timed per window.
const RESERVATIONS: usize = 30;
/// Slots each reservation fills (a drain's free slots).
const SLOTS: i64 = 10;

#[derive(Default, Clone, Copy)]
pub struct KeysRun {
    /// Median reservation with every job in one key, ms.
    pub one_key_ms: f64,
    /// Median reservation with every job in its own key, ms.
    pub many_keys_ms: f64,
    /// Median whole drain (of [`SLOTS`] free slots) with every job in one
    /// key, ms.
    pub one_key_drain_ms: f64,
    /// The same with every job in its own key, ms.
    pub many_keys_drain_ms: f64,
    /// The same, looking at every key (as before `WINDOW_KEYS`), ms.
    pub many_keys_all_ms: f64,
}

pub async fn keys_run(infra: &Infra, s: &Settings) -> KeysRun {
    let all = s.scale_keys as i64;
    let one = measure(infra, s, 1, WINDOW_KEYS, true).await;
    let many = measure(infra, s, s.scale_keys, WINDOW_KEYS, true).await;
    KeysRun {
        one_key_ms: one.reservation_ms,
        many_keys_ms: many.reservation_ms,
        one_key_drain_ms: one.drain_ms,
        many_keys_drain_ms: many.drain_ms,
        many_keys_all_ms: measure(infra, s, s.scale_keys, all, false).await.reservation_ms,
    }
}

struct Medians {
    reservation_ms: f64,
    drain_ms: f64,
}

fn median_ms(mut took: Vec<Duration>) -> f64 {
    took.sort();
    took[took.len() / 2].as_secs_f64() * 1000.0
}

/// Queues `s.scale_keys` jobs spread over `keys` keys, takes them all into
/// the intake window as drains would (made-up receipts: SQS plays no part
/// in this statement), and times reservations of [`SLOTS`] slots, each
/// looking at `keys_per_reservation` keys at most. Then, if `drains`, times
/// whole drains (`drain::drain`, as `POST /drain` runs it) with [`SLOTS`]
/// free slots each, dispatching to a downstream that accepts at once; the
/// queue is purged first, so that they fill their slots from the window.
async fn measure(infra: &Infra, s: &Settings, keys: usize, keys_per_reservation: i64, drains: bool) -> Medians {
    let ds = Downstream::start_with(FakeDownstream::builder().record(false)).await;
    // No refill drains: raising the limit would start one, racing the drain
    // timed here for its slots.
    let app = start_app(infra, s, &ds.url, |c| {
        c.max_concurrency = 100_000;
        c.refill_on_callback = false;
    })
    .await;
    let next = AtomicUsize::new(0);
    let n = s.scale_keys;
    enqueue_batches(&app.http, &app.base, n, |size| {
        let jobs: Vec<Value> = (0..size)
            .map(|_| {
                let i = next.fetch_add(1, Ordering::Relaxed);
                json!({"payload": {"n": i}, "key": format!("k{:05}", i % keys)})
            })
            .collect();
        Bytes::from(serde_json::to_vec(&json!({ "jobs": jobs })).expect("JSON"))
    })
    .await;
    let db = &app.state.db;
    let ids: Vec<Uuid> = sqlx::query_scalar("SELECT id FROM jobs")
        .fetch_all(db)
        .await
        .expect("ids");
    let times = WindowTimes {
        visibility_secs: 600.0,
        keys_per_reservation,
        ..window_times()
    };
    let taken = take_into_window(db, &ids, &times).await.expect("take in");
    assert_eq!(taken.taken_in.len(), n);
    let _ = sqlx::query("ANALYZE").execute(db).await;
    let mut took: Vec<Duration> = Vec::with_capacity(RESERVATIONS);
    for _ in 0..RESERVATIONS {
        let started = Instant::now();
        let r = store::reserve(db, &[], &times, SLOTS).await.expect("reserve");
        took.push(started.elapsed());
        assert_eq!(r.jobs.len() as i64, SLOTS, "every reservation fills its slots");
    }
    let reservation_ms = median_ms(took);
    let mut drain_ms = f64::NAN;
    if drains {
        app.sqs
            .purge_queue()
            .queue_url(&app.queue_url)
            .send()
            .await
            .expect("purge the queue");
        let mut live = RESERVATIONS as i64 * SLOTS;
        let mut took: Vec<Duration> = Vec::with_capacity(RESERVATIONS);
        // As many drains as the jobs left allow (a smoke run has few).
        let drains = RESERVATIONS.min((n - RESERVATIONS * SLOTS as usize) / SLOTS as usize);
        for _ in 0..drains {
            app.set_limit(live + SLOTS).await;
            let started = Instant::now();
            let report = sluicegate::drain::drain(&app.state).await.expect("drain");
            took.push(started.elapsed());
            assert_eq!(report.dispatched, SLOTS, "every drain fills its slots: {report:?}");
            live += SLOTS;
        }
        drain_ms = median_ms(took);
    }
    dispose(app).await;
    Medians {
        reservation_ms,
        drain_ms,
    }
}

pub fn section(o: &mut String, k: &mut Facts, s: &Settings, runs: &[KeysRun]) {
    if runs.is_empty() {
        return;
    }
    let _ = writeln!(
        o,
        "\n## f. Keys at scale\n\nThe part of a drain whose cost depends on how many keys have queued work is the \
         fair reservation (`store::reserve`, under the gate lock). {n} queued jobs are taken into the intake window \
         as drains would take them (made-up receipts), all in one key, then each in its own key; then \
         {RESERVATIONS} reservations of {SLOTS} slots each are timed (median per run). A reservation looks at \
         {WINDOW_KEYS} keys at most (`WINDOW_KEYS`, a cursor moving on); the row \"every key\" lifts that bound, \
         as before it existed. Then, in the same windows, {RESERVATIONS} whole drains (`drain::drain`, as \
         `POST /drain` runs it, the limit raised by {SLOTS} before each) that each fill {SLOTS} slots from the \
         window and submit to a downstream that accepts at once (the queue purged first, so no message is \
         received). The target is on these: with {n} keys, a drain within 1.5× of one key.\n",
        n = s.scale_keys,
    );
    o.push_str(TABLE_HEAD);
    let one: Vec<f64> = runs.iter().map(|r| r.one_key_ms).collect();
    keep(k, "keys_one", o, "reservation, one key, ms", &one, 2);
    let many: Vec<f64> = runs.iter().map(|r| r.many_keys_ms).collect();
    keep(
        k,
        "keys_many",
        o,
        &format!("reservation, {} keys, ms", s.scale_keys),
        &many,
        2,
    );
    let ratio: Vec<f64> = runs.iter().map(|r| r.many_keys_ms / r.one_key_ms).collect();
    keep(k, "keys_ratio", o, "… ÷ one key", &ratio, 2);
    let one_drain: Vec<f64> = runs.iter().map(|r| r.one_key_drain_ms).collect();
    keep(k, "keys_one_drain", o, "whole drain, one key, ms", &one_drain, 2);
    let many_drain: Vec<f64> = runs.iter().map(|r| r.many_keys_drain_ms).collect();
    keep(
        k,
        "keys_many_drain",
        o,
        &format!("whole drain, {} keys, ms", s.scale_keys),
        &many_drain,
        2,
    );
    let drain_ratio: Vec<f64> = runs.iter().map(|r| r.many_keys_drain_ms / r.one_key_drain_ms).collect();
    keep(
        k,
        "keys_drain_ratio",
        o,
        "**whole drain: … ÷ one key** (target ≤ 1.5)",
        &drain_ratio,
        2,
    );
    let all: Vec<f64> = runs.iter().map(|r| r.many_keys_all_ms).collect();
    keep(
        k,
        "keys_all",
        o,
        &format!("reservation, {} keys, looking at every key, ms", s.scale_keys),
        &all,
        2,
    );
    let ratio_all: Vec<f64> = runs.iter().map(|r| r.many_keys_all_ms / r.one_key_ms).collect();
    keep(k, "keys_all_ratio", o, "… ÷ one key", &ratio_all, 2);
}

pub fn interpretation(p: &mut String, k: &Facts, s: &Settings) {
    if !k.contains_key("keys_ratio") {
        return;
    }
    let _ = write!(
        p,
        "**Keys at scale:** a whole drain of {SLOTS} slots took {:.2} ms with {} keys waiting against {:.2} ms \
         with one, {:.2}×; the reservation alone {:.2} against {:.2} ms ({:.2}×), its extra cost a probe per key \
         looked at; looking at every key, as it did before `WINDOW_KEYS`, it took {:.2} ms ({:.1}×). Up to \
         {WINDOW_KEYS} keys with a job that may go the fair pick is exact; beyond, each reservation is exact among \
         the {WINDOW_KEYS} keys after the cursor, and the cursor moves on. ",
        med(k, "keys_many_drain"),
        s.scale_keys,
        med(k, "keys_one_drain"),
        med(k, "keys_drain_ratio"),
        med(k, "keys_many"),
        med(k, "keys_one"),
        med(k, "keys_ratio"),
        med(k, "keys_all"),
        med(k, "keys_all_ratio"),
    );
}
