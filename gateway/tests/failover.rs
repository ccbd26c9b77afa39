//! High availability without Kubernetes: gateways on one database and slot name. One streams
//! (it holds the slot's advisory lock on its replication session), the others stand by.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::durability::writer;
use testkit::{DEADLINE, Env, Follower, Gateway, ITEMS, current_wal, get, oracle, slot_confirmed};

/// Failover must complete within this (the bound).
const TAKEOVER: Duration = Duration::from_secs(10);

async fn assert_standing_by(gw: &Gateway) {
    gw.alive().await;
    let ready = get(&format!("{}/readyz", gw.base())).await;
    assert_eq!(ready.status, 503, "a standby is not ready: {}", ready.body);
    assert!(ready.body["message"].as_str().unwrap().contains("standby"), "{}", ready.body);
    let shape = get(&format!("{}/v1/shape?table=items&offset=-1", gw.base())).await;
    assert_eq!(shape.status, 503, "a standby serves no shapes: {}", shape.body);
    assert!(shape.headers.contains_key("retry-after"));
    let metrics = testkit::http().get(format!("{}/metrics", gw.base())).send().await.unwrap().text().await.unwrap();
    assert!(metrics.contains("gateway_leader 0"), "{metrics}");
}

#[tokio::test]
async fn a_standby_on_shared_storage_takes_over_and_clients_resume_exactly_once() {
    let env = Env::new().await;
    env.sql(ITEMS).await;
    env.sql("insert into items select i, 'o' || (i % 2), 't', 0 from generate_series(1, 50) i").await;
    let mut active = env.ready_gateway().await;
    // Same database, slot and data dir (storage both pods mount).
    let mut standby = env.gateway();
    assert_standing_by(&standby).await;

    let mut all = Follower::new(&active, "table=items");
    let mut odd = Follower::new(&active, "table=items&where=org%3D%27o1%27");
    all.sync().await;
    odd.sync().await;
    let stop = Arc::new(AtomicBool::new(false));
    let w = writer(env.url.clone(), stop.clone());
    for _ in 0..3 {
        all.step(true).await;
        odd.step(true).await;
    }
    active.kill9();
    let killed = Instant::now();
    standby.ready().await;
    let took = killed.elapsed();
    assert!(took < TAKEOVER, "the standby took {took:?} to take over; log: {}", standby.log());
    for f in [&mut all, &mut odd] {
        f.rebase(&standby);
        f.step(true).await;
    }
    // The old leader comes back as the standby.
    active.spawn_again();
    assert_standing_by(&active).await;

    stop.store(true, Ordering::Relaxed);
    assert!(w.await.unwrap() > 0);
    for (f, filter) in [(&mut all, "true"), (&mut odd, "org = 'o1'")] {
        let expected = oracle(&env.db, "items", filter, "n").await;
        f.converge_to("n", &expected).await;
        assert_eq!(f.refetches, 0, "the same handles serve after the takeover");
        assert_eq!(f.duplicates, 0, "nothing delivered twice");
    }
}

#[tokio::test]
async fn logs_that_missed_another_gateways_stream_are_refetched_never_served_with_a_gap() {
    let env = Env::new().await;
    env.sql(ITEMS).await;
    env.sql("insert into items values (1, 'o', 't', 0)").await;
    // Each gateway with its own disk, as pods with their own volumes.
    let mut first = env.ready_gateway().await;
    let mut f = Follower::new(&first, "table=items");
    f.sync().await;
    let mut second = Gateway::start(&env.url, &env.pg.root().join("second-data"), &[]);
    assert_standing_by(&second).await;
    first.kill9();
    second.ready().await;
    // Only the second gateway's logs hold this change; it acknowledges it to the slot.
    env.sql("insert into items values (2, 'o', 'while the first was down', 0)").await;
    let mut g = Follower::new(&second, "table=items");
    g.live_until(|rows| rows.len() == 2).await;
    let started = Instant::now();
    while slot_confirmed(&env.db).await < current_wal(&env.db).await {
        assert!(started.elapsed() < DEADLINE, "the second gateway never acknowledged the insert");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    second.kill9();
    first.spawn_again();
    first.ready().await;
    f.live_until(|rows| rows.len() == 2).await;
    assert_eq!(f.refetches, 1, "the first gateway's logs miss the insert: its clients refetch");
    assert!(first.log().contains("confirmed up to"), "the reason is logged: {}", first.log());
}
