//! Reserving slots without SQS, for tests of the store's invariants.

use sluicegate::store::{self, Offer, Reservation, WindowTimes};
use sqlx::PgPool;
use uuid::Uuid;

/// Offers `ids` to the intake window (as if their messages had just been
/// received, with made-up receipts) and reserves as many slots as the
/// limits allow, exactly as a drain does.
pub async fn reserve_ids(db: &PgPool, ids: &[Uuid]) -> sqlx::Result<Reservation> {
    let receipts: Vec<String> = ids.iter().map(|id| format!("test-receipt-{id}")).collect();
    let offers: Vec<Offer> = ids
        .iter()
        .zip(&receipts)
        .map(|(&job, receipt)| Offer { job, receipt })
        .collect();
    let times = WindowTimes {
        visibility_secs: 300.0,
        dispatch_lease_secs: 70.0,
        receipt_margin_secs: 100.0,
        keys_per_reservation: sluicegate::drain::WINDOW_KEYS,
    };
    store::reserve(db, &offers, &times, i64::from(i32::MAX)).await
}
