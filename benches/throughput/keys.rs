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
    store::{self, Offer, WindowTimes},
};
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
    /// The same, looking at every key (as before `WINDOW_KEYS`), ms.
    pub many_keys_all_ms: f64,
}

pub async fn keys_run(infra: &Infra, s: &Settings) -> KeysRun {
    let all = s.scale_keys as i64;
    KeysRun {
        one_key_ms: median_reservation(infra, s, 1, WINDOW_KEYS).await,
        many_keys_ms: median_reservation(infra, s, s.scale_keys, WINDOW_KEYS).await,
        many_keys_all_ms: median_reservation(infra, s, s.scale_keys, all).await,
    }
}

/// Queues `s.scale_keys` jobs spread over `keys` keys, takes them all into
/// the intake window as drains would (made-up receipts: SQS plays no part
/// in this statement), and times reservations of [`SLOTS`] slots, each
/// looking at `keys_per_reservation` keys at most.
async fn median_reservation(infra: &Infra, s: &Settings, keys: usize, keys_per_reservation: i64) -> f64 {
    let app = start_app(infra, s, "http://127.0.0.1:9/unused", |c| c.max_concurrency = 100_000).await;
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
    let receipts: Vec<String> = ids.iter().map(|id| format!("bench-{id}")).collect();
    let offers: Vec<Offer> = ids
        .iter()
        .zip(&receipts)
        .map(|(&job, receipt)| Offer { job, receipt })
        .collect();
    let times = WindowTimes {
        visibility_secs: 600.0,
        dispatch_lease_secs: 70.0,
        receipt_margin_secs: 100.0,
        keys_per_reservation,
    };
    let taken = store::reserve(db, &offers, &times, 0).await.expect("take in");
    assert_eq!(taken.taken_in.len(), n);
    let ready: Vec<(Uuid, String)> = ids.iter().copied().zip(receipts.iter().cloned()).collect();
    store::window_ready(db, &ready).await.expect("window ready");
    let _ = sqlx::query("ANALYZE").execute(db).await;
    let mut took: Vec<Duration> = Vec::with_capacity(RESERVATIONS);
    for _ in 0..RESERVATIONS {
        let started = Instant::now();
        let r = store::reserve(db, &[], &times, SLOTS).await.expect("reserve");
        took.push(started.elapsed());
        assert_eq!(r.jobs.len() as i64, SLOTS, "every reservation fills its slots");
    }
    took.sort();
    dispose(app).await;
    took[took.len() / 2].as_secs_f64() * 1000.0
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
         as before it existed. The target: with {n} keys, within 1.5× of one key.\n",
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
    keep(k, "keys_ratio", o, "**… ÷ one key** (target ≤ 1.5)", &ratio, 2);
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
        "**Keys at scale:** a reservation took {:.2} ms with {} keys waiting against {:.2} ms with one, {:.2}×; \
         looking at every key, as it did before `WINDOW_KEYS`, it took {:.2} ms ({:.1}×). Up to {WINDOW_KEYS} \
         waiting keys the fair pick is exact; beyond, each reservation is exact among the {WINDOW_KEYS} keys after \
         the cursor, and the cursor moves on. ",
        med(k, "keys_many"),
        s.scale_keys,
        med(k, "keys_one"),
        med(k, "keys_ratio"),
        med(k, "keys_all"),
        med(k, "keys_all_ratio"),
    );
}
