//! Reserving slots and filling the intake window without SQS, for tests of
//! the store's invariants (and the benchmark's timing of reservations).

use sluicegate::store::{self, Offer, Reservation, WindowTimes};
use sqlx::PgPool;
use uuid::Uuid;

/// The made-up receipt these helpers give job `id`'s message.
pub fn made_up_receipt(id: Uuid) -> String {
    format!("test-receipt-{id}")
}

/// The usual made-up window times, as a drain has them with the test
/// config's 5 s dispatch timeout: messages received with a visibility of
/// 65 s (the dispatch lease), extended to five minutes while they wait, a
/// 20 s receipt margin, and
/// `WINDOW_KEYS` keys looked at per reservation, as in a drain. Change a
/// field with `WindowTimes { keys_per_reservation: 2, ..window_times() }`.
pub fn window_times() -> WindowTimes {
    WindowTimes {
        first_visibility_secs: 65.0,
        visibility_secs: 300.0,
        dispatch_lease_secs: 65.0,
        receipt_margin_secs: 20.0,
        keys_per_reservation: sluicegate::drain::WINDOW_KEYS,
    }
}

/// Offers `ids`' messages (as if just received, with made-up receipts) to
/// the intake window and reserves up to `max` slots: `store::reserve`.
async fn offer(db: &PgPool, ids: &[Uuid], times: &WindowTimes, max: i64) -> sqlx::Result<Reservation> {
    let receipts: Vec<String> = ids.iter().map(|&id| made_up_receipt(id)).collect();
    let offers: Vec<Offer> = ids
        .iter()
        .zip(&receipts)
        .map(|(&job, receipt)| Offer { job, receipt })
        .collect();
    store::reserve(db, &offers, times, max).await
}

/// Offers `ids` to the intake window (as if their messages had just been
/// received, with made-up receipts) and reserves as many slots as the
/// limits allow, exactly as a drain does.
pub async fn reserve_ids(db: &PgPool, ids: &[Uuid]) -> sqlx::Result<Reservation> {
    offer(db, ids, &window_times(), i64::from(i32::MAX)).await
}

/// Takes `ids` into the intake window as a drain with no free slot does
/// (their messages just received, with [`made_up_receipt`]s): the rows of
/// jobs that may go now serve any reservation at once; those of jobs that
/// cannot (a back-off, a dispatch under way) are pending until
/// [`mark_ready`]. Returns the reservation, whose `taken_in` names the jobs
/// taken in.
pub async fn take_in(db: &PgPool, ids: &[Uuid], times: &WindowTimes) -> sqlx::Result<Reservation> {
    offer(db, ids, times, 0).await
}

/// Opens the pending rows of `ids` (taken in by [`take_in`], or claimed by
/// `store::claim_expiring`) to every drain, as a drain does once it has
/// extended their messages' visibility (`store::window_ready`).
pub async fn mark_ready(db: &PgPool, ids: &[Uuid]) -> sqlx::Result<()> {
    let ready: Vec<(Uuid, String)> = ids.iter().map(|&id| (id, made_up_receipt(id))).collect();
    store::window_ready(db, &ready, &window_times()).await
}

/// Takes `ids` into the intake window as drains would and marks them ready
/// ([`take_in`], then [`mark_ready`]): any reservation may take them from
/// there, with their [`made_up_receipt`]s. Returns the take-in's
/// reservation (its `taken_in`: the jobs taken in).
pub async fn take_into_window(db: &PgPool, ids: &[Uuid], times: &WindowTimes) -> sqlx::Result<Reservation> {
    let taken = take_in(db, ids, times).await?;
    mark_ready(db, ids).await?;
    Ok(taken)
}
