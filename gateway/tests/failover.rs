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

/// A standby on the leader's data dir serves reads: ready, as a follower.
async fn assert_following(gw: &Gateway) {
    gw.becomes("follower").await;
    let metrics = testkit::http().get(format!("{}/metrics", gw.base())).send().await.unwrap().text().await.unwrap();
    assert!(metrics.contains("gateway_leader 0"), "{metrics}");
}

#[tokio::test]
async fn a_standby_on_shared_storage_serves_reads_takes_over_and_clients_resume_exactly_once() {
    let env = Env::new().await;
    env.sql(ITEMS).await;
    env.sql("insert into items select i, 'o' || (i % 2), 't', 0 from generate_series(1, 50) i").await;
    let mut active = env.ready_gateway().await;
    // Same database, slot and data dir (storage both pods mount).
    let standby = env.gateway();
    assert_following(&standby).await;

    // A request a gateway forwarded is never forwarded again (a stale leader record naming
    // a standby must not loop): the standby answers it 503 instead.
    let forwarded = testkit::http()
        .get(format!("{}/v1/shape?table=items&where=n%20%3E%2010&offset=-1", standby.base()))
        .header("x-gateway-forwarded", "1")
        .send()
        .await
        .unwrap();
    assert_eq!(forwarded.status(), 503, "a forwarded request is not forwarded again");
    assert!(forwarded.headers().contains_key("retry-after"));
    let mut all = Follower::new(&active, "table=items");
    // Made through the standby: it forwards a new shape to the leader, then serves it.
    let mut odd = Follower::new(&standby, "table=items&where=org%3D%27o1%27");
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
    standby.becomes("leader").await;
    let took = killed.elapsed();
    assert!(took < TAKEOVER, "the standby took {took:?} to take over; log: {}", standby.log());
    for f in [&mut all, &mut odd] {
        f.rebase(&standby);
        f.step(true).await;
    }
    // The old leader comes back as a standby serving reads.
    active.spawn_again();
    assert_following(&active).await;
    all.rebase(&active);

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

/// Which of `gateways` a subscriber asks next, after `base` failed.
fn next_base(gateways: &[String], base: &str) -> String {
    let i = gateways.iter().position(|g| g == base).unwrap_or(0);
    gateways[(i + 1) % gateways.len()].clone()
}

#[tokio::test]
async fn three_hundred_subscribers_over_a_leader_and_two_read_serving_standbys_miss_nothing_when_the_leader_dies() {
    let env = Env::new().await;
    env.sql(ITEMS).await;
    env.sql("insert into items select i, 'o' || (i % 10), 't', 0 from generate_series(1, 50) i").await;
    let mut leader = env.ready_gateway().await;
    let standbys = [env.gateway(), env.gateway()];
    for s in &standbys {
        assert_following(s).await;
    }
    let gateways = [leader.base(), standbys[0].base(), standbys[1].base()];
    // 300 subscribers of ten scopes, a hundred on each gateway; the standbys forward the
    // first request of each new shape to the leader.
    let mut subscribers = Vec::new();
    for i in 0..300 {
        let on = [&leader, &standbys[0], &standbys[1]][i % 3];
        let mut f = Follower::new(on, &format!("table=items&where=org%3D%27o{}%27", i % 10));
        f.sync().await;
        subscribers.push(f);
    }
    let stop = Arc::new(AtomicBool::new(false));
    let writes = writer(env.url.clone(), stop.clone());
    let done = Arc::new(AtomicBool::new(false));
    let mut running = Vec::new();
    for mut f in subscribers {
        let (done, gateways) = (done.clone(), gateways.clone());
        running.push(tokio::spawn(async move {
            let mut failures = 0;
            while !done.load(Ordering::Relaxed) {
                if let Err(e) = f.try_step(true).await {
                    // The gateway is gone or taking over: ask the next, as a Service would route.
                    failures += 1;
                    assert!(failures < 2_000, "no gateway answered: {e}");
                    f.base = next_base(&gateways, &f.base);
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
            f
        }));
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    for s in &standbys {
        // The standbys serve their subscribers themselves: only some first requests went on.
        let served =
            testkit::metric_sum(&s.base(), "gateway_http_requests_total", &["/v1/shape", "status=\"200\""]).await;
        let forwarded = testkit::metric_sum(&s.base(), "gateway_forwarded_requests_total", &[]).await;
        assert!(served >= 200.0 && forwarded <= 100.0, "served {served}, forwarded {forwarded}");
    }
    leader.kill9();
    let killed = Instant::now();
    let new_leader = loop {
        let mut found = None;
        for (i, s) in standbys.iter().enumerate() {
            if s.role().await.as_deref() == Some("leader") {
                found = Some(i);
            }
        }
        if let Some(i) = found {
            break i;
        }
        assert!(killed.elapsed() < TAKEOVER, "no standby took over within {TAKEOVER:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop.store(true, Ordering::Relaxed);
    assert!(writes.await.unwrap() > 0);
    done.store(true, Ordering::Relaxed);
    let mut expected = std::collections::HashMap::new();
    for org in 0..10 {
        expected.insert(org, oracle(&env.db, "items", &format!("org = 'o{org}'"), "n").await);
    }
    let leader_base = standbys[new_leader].base();
    for (i, task) in running.into_iter().enumerate() {
        let mut f = task.await.unwrap();
        if f.base == gateways[0] {
            f.base = leader_base.clone();
        }
        f.converge_to("n", &expected[&(i % 10)]).await;
        assert_eq!(f.refetches, 0, "subscriber {i} kept its handle and offset");
        assert_eq!(f.duplicates, 0, "subscriber {i} got a change twice");
        assert_eq!(f.torn, 0, "subscriber {i} saw part of a transaction");
    }
}
