//! Waits on a condition, with a deadline.

use std::time::Duration;

/// How long any wait in a test may take before it fails.
pub const DEADLINE: Duration = Duration::from_secs(30);

/// Waits until `check` holds, failing with `what` at the deadline.
pub async fn wait_until<F: std::future::Future<Output = bool>>(what: &str, mut check: impl FnMut() -> F) {
    let started = std::time::Instant::now();
    while !check().await {
        assert!(started.elapsed() < DEADLINE, "{what}: not within {DEADLINE:?}");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// Waits until at least `n` sessions wait for a lock on `table`.
pub async fn waiting_on_lock(db: &tokio_postgres::Client, table: &str, n: i64) {
    let q = "select count(*) from pg_locks where not granted and relation = $1::text::regclass";
    wait_until(&format!("{n} sessions wait on a lock on {table}"), || async {
        db.query_one(q, &[&table]).await.unwrap().get::<_, i64>(0) >= n
    })
    .await;
}
