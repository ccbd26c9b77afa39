//! Admission control and request limits: past each bound a clear answer, never a pile-up.

use testkit::{Env, ITEMS, get, get_as, metric_sum};

#[tokio::test]
async fn a_herd_asking_for_one_new_shape_triggers_one_snapshot() {
    let env = Env::new().await;
    env.sql(ITEMS).await;
    env.sql("insert into items select i, 'o', 't', i from generate_series(1, 1000) i").await;
    let gw = env.ready_gateway().await;
    let url = format!("{}/v1/shape?table=items&where=n%20%3E%2010&offset=-1", gw.base());
    let herd: Vec<_> = (0..40).map(|_| tokio::spawn(get_owned(url.clone()))).collect();
    let mut handles = std::collections::BTreeSet::new();
    for r in herd {
        let r = r.await.unwrap();
        assert_eq!(r.status, 200, "{}", r.body);
        handles.insert(r.headers["electric-handle"].to_str().unwrap().to_string());
    }
    assert_eq!(handles.len(), 1, "one shape for everyone");
    assert_eq!(
        metric_sum(&gw.base(), "gateway_shapes_created_total", &[]).await,
        1.0,
        "one snapshot, not one per client"
    );
    // The herd is answered from the first chunk, which may come before the snapshot ends.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !gw.log().contains("snapshot complete") && std::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(gw.log().matches("snapshot complete").count(), 1);
}

async fn get_owned(url: String) -> testkit::Response {
    get(&url).await
}

#[tokio::test]
async fn snapshots_past_the_bound_wait_their_turn_with_503_and_retry_after() {
    let env = Env::new().await;
    env.sql(ITEMS).await;
    env.sql("insert into items select i, 'o', 't', i from generate_series(1, 10) i").await;
    let gw = env.gateway_with(&["--max-concurrent-snapshots", "1"]);
    let mut gw = gw;
    gw.ready().await;
    let shape = |filter: &str| format!("{}/v1/shape?table=items&where={filter}&offset=-1", gw.base());
    // Publishes the table with full replica identity, so later shapes only snapshot.
    assert_eq!(get(&shape("n%3E0")).await.status, 200);
    // A transaction holding the table keeps the next snapshot (and its permit) waiting.
    let blocker = testkit::connect(&env.url).await;
    blocker.batch_execute("begin; lock table items in access exclusive mode").await.unwrap();
    let first = tokio::spawn(get_owned(shape("n%3D1")));
    testkit::waiting_on_lock(&env.db, "items", 1).await;
    let refused = get(&shape("n%3D2")).await;
    assert_eq!(refused.status, 503, "{}", refused.body);
    assert!(refused.headers.contains_key("retry-after"));
    assert!(refused.body["message"].as_str().unwrap().contains("--max-concurrent-snapshots"), "{}", refused.body);
    // Existing shapes are served meanwhile.
    let existing = get(&format!("{}/v1/shape?table=items&where=n%3E0&offset=-1", gw.base())).await;
    assert_eq!(existing.status, 200);
    blocker.batch_execute("commit").await.unwrap();
    assert_eq!(first.await.unwrap().status, 200);
    assert_eq!(get(&shape("n%3D2")).await.status, 200, "admitted once the first snapshot ended");
}

/// Snapshot sessions are pooled: one whose snapshot was abandoned mid-query (its shape
/// deleted) is closed, not handed to the next shape inside its aborted transaction.
#[tokio::test]
async fn a_snapshot_abandoned_mid_query_leaves_no_session_behind_for_the_next_shape() {
    let env = Env::new().await;
    env.sql(ITEMS).await;
    env.sql("insert into items select i, 'o', 't', i from generate_series(1, 10) i").await;
    let mut gw = env.gateway_with(&["--max-concurrent-snapshots", "1"]);
    gw.ready().await;
    let shape = |filter: &str| format!("{}/v1/shape?table=items&where={filter}&offset=-1", gw.base());
    assert_eq!(get(&shape("n%3E0")).await.status, 200, "the pool's one session is open and idle");
    let blocker = testkit::connect(&env.url).await;
    blocker.batch_execute("begin; lock table items in access exclusive mode").await.unwrap();
    let abandoned = tokio::spawn(get_owned(shape("n%3D1")));
    testkit::waiting_on_lock(&env.db, "items", 1).await;
    let deleted = testkit::http().delete(format!("{}/v1/shape?table=items", gw.base())).send().await.unwrap();
    assert!(deleted.status().is_success(), "{}", deleted.status());
    blocker.batch_execute("commit").await.unwrap();
    let _ = abandoned.await;
    let next = get(&shape("n%3D2")).await;
    assert_eq!(next.status, 200, "{}", next.body);
    assert_eq!(next.body.as_array().map(|rows| rows.iter().filter(|m| m.get("key").is_some()).count()), Some(1));
}

#[tokio::test]
async fn a_burst_of_new_shapes_waits_for_slots_and_one_tenant_cannot_take_them_all() {
    use crate::auth::{SCHEMA, SECRET, jwt_gateway, token};
    use serde_json::json;
    let env = Env::new().await;
    env.sql(SCHEMA).await;
    // Four slots: a quarter, one, per tenant.
    let gw = jwt_gateway(&env, &["--jwt-secret", SECRET, "--max-concurrent-snapshots", "4"]).await;
    let shape = |filter: &str| format!("{}/v1/shape?table=todos&offset=-1&where={}", gw.base(), testkit::enc(filter));
    let org = |i: usize| token(json!({ "org_id": format!("org{i}") }));
    assert_eq!(get_as(&shape("id > 0"), Some(&org(0))).await.status, 200, "todos published");
    // Twelve tenants' new shapes at once, past the four slots: each waits its turn.
    let burst: Vec<_> = (0..12)
        .map(|i| {
            let (url, t) = (shape("id > 1"), org(i));
            tokio::spawn(async move { get_as(&url, Some(&t)).await })
        })
        .collect();
    for r in burst {
        let r = r.await.unwrap();
        assert_eq!(r.status, 200, "{}", r.body);
    }
    // One tenant's snapshot, held by a lock, is its whole share: its next new shape is
    // refused at once, and another tenant's still gets a slot.
    let blocker = testkit::connect(&env.url).await;
    blocker.batch_execute("begin; lock table todos in access exclusive mode").await.unwrap();
    let waiting = |n: i64| testkit::waiting_on_lock(&env.db, "todos", n);
    let (url, t) = (shape("id = 1"), org(1));
    let held = tokio::spawn(async move { get_as(&url, Some(&t)).await });
    waiting(1).await;
    let refused = get_as(&shape("id = 2"), Some(&org(1))).await;
    assert_eq!(refused.status, 503, "{}", refused.body);
    assert!(refused.body["message"].as_str().unwrap().contains("your scope"), "{}", refused.body);
    let (url, t) = (shape("id = 3"), org(2));
    let other = tokio::spawn(async move { get_as(&url, Some(&t)).await });
    waiting(2).await;
    blocker.batch_execute("commit").await.unwrap();
    assert_eq!(held.await.unwrap().status, 200);
    assert_eq!(other.await.unwrap().status, 200);
}

#[tokio::test]
async fn live_connections_and_shapes_per_table_are_bounded() {
    let env = Env::new().await;
    env.sql(ITEMS).await;
    let mut gw = env.gateway_with(&["--max-live-connections", "2", "--max-shapes-per-table", "2"]);
    gw.ready().await;
    let initial = get(&format!("{}/v1/shape?table=items&offset=-1", gw.base())).await;
    let handle = initial.headers["electric-handle"].to_str().unwrap().to_string();
    let offset = initial.headers["electric-offset"].to_str().unwrap().to_string();
    let live = format!("{}/v1/shape?table=items&handle={handle}&offset={offset}&live=true", gw.base());
    let waiting: Vec<_> = (0..2).map(|_| tokio::spawn(get_owned(live.clone()))).collect();
    let base = gw.base();
    testkit::wait_until("both long-polls are held", || {
        let base = base.clone();
        async move { testkit::metric_sum(&base, "gateway_subscribers", &["long_poll"]).await >= 2.0 }
    })
    .await;
    let refused = get(&live).await;
    assert_eq!(refused.status, 503, "{}", refused.body);
    assert!(refused.headers.contains_key("retry-after"));
    assert!(refused.body["message"].as_str().unwrap().contains("--max-live-connections"));
    let sse = get(&format!("{live}&live_sse=true")).await;
    assert_eq!(sse.status, 503, "SSE counts too: {}", sse.body);
    for w in waiting {
        assert_eq!(w.await.unwrap().status, 200, "the admitted ones are answered as usual");
    }
    assert_eq!(get(&live).await.status, 200, "room again once they ended");

    assert_eq!(get(&format!("{}/v1/shape?table=items&where=n%3D1&offset=-1", gw.base())).await.status, 200);
    let third = get(&format!("{}/v1/shape?table=items&where=n%3D2&offset=-1", gw.base())).await;
    assert_eq!(third.status, 429, "{}", third.body);
    assert_eq!(third.body["error"], "too_many");
    assert!(third.body["message"].as_str().unwrap().contains("--max-shapes-per-table"));
}

#[tokio::test]
async fn a_where_past_its_limit_is_a_400_naming_where() {
    // (Oversized targets and headers, refused before any work, are tested in process:
    // `http::tests`.)
    let env = Env::new().await;
    env.sql(ITEMS).await;
    let gw = env.ready_gateway().await;
    let where_too_long = format!("{}/v1/shape?table=items&offset=-1&where={}", gw.base(), "n%3D1%20or%20".repeat(1300));
    let r = get(&where_too_long).await;
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(testkit::reason(&r.body).contains("where"), "{}", r.body);
}

#[tokio::test]
async fn a_stalled_subscriber_slows_no_one() {
    use tokio::io::AsyncWriteExt;
    let env = Env::new().await;
    env.sql(ITEMS).await;
    let mut gw = env.gateway_with(&["--chunk-bytes", "262144", "--send-timeout-s", "3"]);
    gw.ready().await;
    let mut follower = testkit::Follower::new(&gw, "table=items");
    follower.sync().await;
    // SSE streams whose clients never read: their sockets fill, then their bounded buffers.
    let initial = get(&format!("{}/v1/shape?table=items&offset=-1", gw.base())).await;
    let handle = initial.headers["electric-handle"].to_str().unwrap().to_string();
    let offset = initial.headers["electric-offset"].to_str().unwrap().to_string();
    let mut stalled = Vec::new();
    for _ in 0..4 {
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", gw.port())).await.unwrap();
        let request = format!(
            "GET /v1/shape?table=items&handle={handle}&offset={offset}&live=true&live_sse=true HTTP/1.1\r\nhost: x\r\naccept: text/event-stream\r\n\r\n"
        );
        s.write_all(request.as_bytes()).await.unwrap();
        stalled.push(s);
    }
    // About 40 MB of changes flow past them; the reading client gets every one.
    for batch in 0..20 {
        env.sql(&format!(
            "insert into items select i, 'o', repeat(md5(i::text), 64), 0 from generate_series({}, {}) i",
            batch * 1000 + 1,
            batch * 1000 + 1000
        ))
        .await;
    }
    follower.live_until(|rows| rows.len() == 20_000).await;
    assert_eq!(follower.duplicates, 0);
    // What the stalled streams hold is freed: once no byte went out for the send timeout,
    // their connections are closed.
    let base = gw.base();
    testkit::wait_until("the stalled connections are closed", || async {
        metric_sum(&base, "gateway_stalled_connections_closed_total", &[]).await >= 4.0
    })
    .await;
    drop(stalled);
}
