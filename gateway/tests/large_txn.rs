//! Transactions larger than `--txn-memory`: written to the logs in parts as they arrive,
//! published whole at their end, surviving a `kill -9` in the middle.

use serde_json::Value;
use testkit::{Env, Follower, Gateway, ITEMS, get, metric_sum, oracle, wait_until};

/// Small enough that the tests' transactions arrive in dozens of parts (and chunks large
/// enough that clients read them in a few requests).
const PARTS: &[&str] = &["--txn-memory", "1MiB", "--chunk-bytes", "4194304"];

/// `rows` new items from id `first`, an update of items 1–10 and a delete of items 6–10,
/// in one transaction.
fn large_txn(first: u64, rows: u64) -> String {
    format!(
        "begin; insert into items select i, 'o' || (i % 2), repeat('x', 100), 0 from generate_series({first}, {}) i; \
         update items set n = n + 1 where id <= 10; delete from items where id between 6 and 10; commit;",
        first + rows - 1
    )
}

/// Runs `sql` on its own session in the background.
fn in_background(env: &Env, sql: String) -> tokio::task::JoinHandle<Result<(), tokio_postgres::Error>> {
    let url = env.url.clone();
    tokio::spawn(async move { testkit::connect(&url).await.batch_execute(&sql).await })
}

/// Waits until the gateway has passed on `n` more parts of transactions than `since`.
async fn parts_passed(gw: &Gateway, since: f64, n: f64) -> f64 {
    let base = gw.base();
    let parts = || async { metric_sum(&base, "gateway_replication_txn_parts_total", &[]).await };
    wait_until("parts of the transaction are passed on", || async { parts().await >= since + n }).await;
    parts().await
}

/// Items 1–10, and a gateway started with `args`, followed by two synced clients: of all
/// items and of org `o1`'s.
async fn followed(env: &Env, args: &[&str]) -> (Gateway, Follower, Follower) {
    env.sql(ITEMS).await;
    env.sql("insert into items select i, 'o' || (i % 2), 't', 0 from generate_series(1, 10) i").await;
    let mut gw = env.gateway_with(args);
    gw.ready().await;
    let mut all = Follower::new(&gw, "table=items");
    let mut odd = Follower::new(&gw, "table=items&where=org%3D%27o1%27");
    all.sync().await;
    odd.sync().await;
    (gw, all, odd)
}

/// Every client ends with the table's rows, each change once, never up-to-date in the
/// middle of a transaction, with no refetch.
async fn converge(env: &Env, all: &mut Follower, odd: &mut Follower) {
    for (f, filter) in [(all, "true"), (odd, "org = 'o1'")] {
        let expected = oracle(&env.db, "items", filter, "n").await;
        f.converge_to("n", &expected).await;
        assert_eq!((f.refetches, f.duplicates, f.torn), (0, 0, 0), "refetches, duplicates, torn transactions");
    }
}

/// The changes of a shape after `offset`, as a non-live client reads them until up-to-date.
async fn changes_after(gw: &Gateway, params: &str, handle: &str, offset: &str) -> Vec<Value> {
    let (mut offset, mut changes) = (offset.to_string(), Vec::new());
    loop {
        let r = get(&format!("{}/v1/shape?{params}&handle={handle}&offset={offset}", gw.base())).await;
        assert_eq!(r.status, 200, "{}", r.body);
        offset = r.headers["electric-offset"].to_str().unwrap().to_string();
        let mut up_to_date = false;
        for m in r.body.as_array().unwrap() {
            match m["headers"].get("control") {
                Some(c) => up_to_date |= c == "up-to-date",
                None => changes.push(m.clone()),
            }
        }
        if up_to_date {
            return changes;
        }
    }
}

#[tokio::test]
async fn a_transaction_larger_than_txn_memory_is_written_in_parts_and_read_as_if_whole() {
    let env = Env::new().await;
    let (gw, mut all, mut odd) = followed(&env, PARTS).await;
    // A second gateway holds the same transaction whole (its parts would be 8 MiB, more than
    // the transaction holds): both logs must read the same.
    let whole_dir = env.data_dir.with_extension("whole");
    let whole_args = ["--slot", "gateway_whole", "--txn-memory", "1GiB", "--chunk-bytes", "4194304"];
    let mut whole = Gateway::start(&env.url, &whole_dir, &whole_args);
    whole.ready().await;
    let mut reference = Follower::new(&whole, "table=items");
    reference.sync().await;
    let (handle, offset) = (all.handle.clone().unwrap(), all.offset.clone());
    let reference_at = (reference.handle.clone().unwrap(), reference.offset.clone());

    env.sql(&large_txn(11, 20_000)).await;
    converge(&env, &mut all, &mut odd).await;
    assert!(metric_sum(&gw.base(), "gateway_replication_txn_parts_total", &[]).await >= 10.0, "written in parts");
    let parted = changes_after(&gw, "table=items", &handle, &offset).await;
    wait_until("the reference gateway has the transaction", || async {
        changes_after(&whole, "table=items", &reference_at.0, &reference_at.1).await.len() == parted.len()
    })
    .await;
    let held_whole = changes_after(&whole, "table=items", &reference_at.0, &reference_at.1).await;
    assert_eq!(metric_sum(&whole.base(), "gateway_replication_txn_parts_total", &[]).await, 0.0);
    assert_eq!(parted.len(), 20_000 + 10 + 5, "the inserts, updates and deletes");
    assert!(parted == held_whole, "the same messages, ops and `last` flags as the transaction held whole");
    let last: Vec<bool> = parted.iter().map(|m| m["headers"]["last"] == true).collect();
    assert_eq!(last.iter().filter(|l| **l).count(), 1, "`last` only on the final message");
    assert!(last[last.len() - 1]);
    drop(whole);
    let _ = std::fs::remove_dir_all(&whole_dir);
}

#[tokio::test]
async fn kill_9_while_a_transaction_arrives_in_parts_loses_and_duplicates_nothing() {
    let env = Env::new().await;
    let (mut gw, mut all, mut odd) = followed(&env, PARTS).await;
    let writer = in_background(&env, large_txn(11, 120_000));
    parts_passed(&gw, 0.0, 20.0).await;
    gw.kill9();
    gw.restart().await;
    writer.await.unwrap().unwrap();
    converge(&env, &mut all, &mut odd).await;

    // A replication connection dropped in the middle: the parts written are forgotten, and
    // the transaction comes again from its start.
    let since = metric_sum(&gw.base(), "gateway_replication_txn_parts_total", &[]).await;
    let writer = in_background(&env, large_txn(200_000, 120_000));
    parts_passed(&gw, since, 20.0).await;
    env.sql("select pg_terminate_backend(pid) from pg_stat_replication").await;
    writer.await.unwrap().unwrap();
    converge(&env, &mut all, &mut odd).await;
    assert!(gw.log().contains("arriving in parts was cut off"), "the cut-off transaction was abandoned");
}
