//! The lifecycle's status sets are the ones the SQL uses.

use sluicegate::lifecycle::{LIVE, TERMINAL};

use crate::helpers::*;

#[tokio::test]
async fn the_sql_status_sets_are_the_lifecycles() {
    let app = app().spawn().await;
    let (live, terminal) = sluicegate::store::status_sets(&app.db).await.unwrap();
    assert_eq!(live, LIVE.to_vec());
    assert_eq!(terminal, TERMINAL.to_vec());
}
