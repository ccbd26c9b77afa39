//! Where Electric's own client test suite found the gateway answering differently: DELETE by
//! handle, foreign handles, error bodies, cache lifetimes; and shape creation that fails or
//! is cancelled half-way (a locked or dropped table) without wedging the catalog session.

use std::time::Duration;

use serde_json::json;

use testkit::{Env, Follower, Gateway, ITEMS, get};

/// A gateway on an empty `items` table, and a client synced to the table's shape.
async fn synced_items() -> (Env, Gateway, Follower) {
    let env = Env::new().await;
    env.sql(ITEMS).await;
    let gw = env.ready_gateway().await;
    let mut f = Follower::new(&gw, "table=items");
    f.sync().await;
    (env, gw, f)
}

#[tokio::test]
async fn a_handle_alone_deletes_its_shape_and_any_other_handle_is_a_409() {
    let (_env, gw, f) = synced_items().await;
    let handle = f.handle.clone().unwrap();
    let base = gw.base();

    // A handle that is not the shape's (even one the gateway would never hand out) is
    // answered as a stale one: 409, the current handle, must-refetch.
    for foreign in ["test-handle", "1-2", "..%2F..%2Fetc"] {
        let r = get(&format!("{base}/v1/shape?table=items&offset=0_0&handle={foreign}")).await;
        assert_eq!(r.status, 409, "{foreign}: {}", r.body);
        assert_eq!(r.headers["electric-handle"].to_str().unwrap(), handle);
        assert_eq!(r.body, json!([{"headers": {"control": "must-refetch"}}]));
    }

    let http = testkit::http();
    let unknown = http.delete(format!("{base}/v1/shape?handle=1-1")).send().await.unwrap();
    assert_eq!(unknown.status(), 404);
    let deleted = http.delete(format!("{base}/v1/shape?handle={handle}")).send().await.unwrap();
    assert_eq!(deleted.status(), 202);
    assert!(deleted.bytes().await.unwrap().is_empty());
    let after = get(&format!("{base}/v1/shape?table=items&offset={}&handle={handle}", f.offset)).await;
    assert_eq!(after.status, 409, "{}", after.body);
    assert_ne!(after.headers["electric-handle"].to_str().unwrap(), handle, "a new shape serves the definition");
}

#[tokio::test]
async fn invalid_requests_answer_in_electrics_shape() {
    let env = Env::new().await;
    env.sql(ITEMS).await;
    let gw = env.ready_gateway().await;
    let r = get(&format!("{}/v1/shape?table=items&offset=-1&where=1%20x%201", gw.base())).await;
    assert_eq!(r.status, 400);
    assert_eq!(r.body["message"], "Invalid request", "{}", r.body);
    assert_eq!(
        r.body,
        json!({"message": "Invalid request", "errors": {"where": ["At location 17: syntax error at or near \"x\""]}}),
        "exactly Electric's body"
    );
    let missing = get(&format!("{}/v1/shape?table=nope&offset=-1", gw.base())).await;
    assert_eq!(missing.status, 400);
    assert!(missing.body["errors"]["table"][0].as_str().unwrap().contains("does not exist"), "{}", missing.body);
}

#[tokio::test]
async fn catch_up_answers_live_as_long_as_configured() {
    let env = Env::new().await;
    env.sql(ITEMS).await;
    env.sql("insert into items values (1, 'o', 't', 1)").await;
    let mut gw = env.gateway_with(&["--cache-max-age", "1", "--cache-stale-age", "3"]);
    gw.ready().await;
    let first = get(&format!("{}/v1/shape?table=items&offset=-1", gw.base())).await;
    let handle = first.headers["electric-handle"].to_str().unwrap();
    let catch_up = get(&format!("{}/v1/shape?table=items&offset=0_0&handle={handle}", gw.base())).await;
    assert_eq!(catch_up.headers["cache-control"], "public, max-age=1, stale-while-revalidate=3");
    let now = get(&format!("{}/v1/shape?table=items&offset=now", gw.base())).await;
    assert_eq!(now.headers["cache-control"], "public, max-age=1, stale-while-revalidate=3");
}

#[tokio::test]
async fn a_cancelled_creation_on_a_locked_table_that_is_then_dropped_leaves_shapes_working() {
    let env = Env::new().await;
    env.sql(&format!("{ITEMS} create table other (id int8 primary key);")).await;
    let gw = env.ready_gateway().await;
    let base = gw.base();
    // Another session holds the table; a new shape on it waits to publish it, and its
    // client gives up.
    let locker = testkit::connect(&env.url).await;
    locker.batch_execute("begin; lock table items in access exclusive mode").await.unwrap();
    let impatient = reqwest::Client::builder().timeout(Duration::from_millis(1500)).build().unwrap();
    let gave_up = impatient.get(format!("{base}/v1/shape?table=items&offset=-1")).send().await;
    assert!(gave_up.is_err(), "the request waited on the lock: {gave_up:?}");
    locker.batch_execute("drop table items; commit").await.unwrap();

    // The catalog session is not left inside a failed transaction: shapes are created.
    let other = get(&format!("{base}/v1/shape?table=other&offset=-1")).await;
    assert_eq!(other.status, 200, "{}", other.body);
    let gone = get(&format!("{base}/v1/shape?table=items&offset=-1")).await;
    assert_eq!(gone.status, 400, "a dropped table is the request's problem: {}", gone.body);
}

#[tokio::test]
async fn a_table_dropped_under_a_deleted_shape_answers_its_streams_409() {
    let (env, gw, f) = synced_items().await;
    let handle = f.handle.clone().unwrap();
    let deleted = testkit::http().delete(format!("{}/v1/shape?handle={handle}", gw.base())).send().await.unwrap();
    assert_eq!(deleted.status(), 202);
    env.sql("drop table items").await;
    let live = get(&format!("{}/v1/shape?table=items&offset={}&handle={handle}&live=true", gw.base(), f.offset)).await;
    assert_eq!(live.status, 409, "as any rotated shape: {}", live.body);
    assert!(!live.headers.contains_key("electric-handle"), "no shape serves a dropped table");
}

#[tokio::test]
async fn deleting_a_shape_stops_its_snapshot_query() {
    let (env, gw, _f) = synced_items().await;
    let base = gw.base();
    // The table is published already; a lock holds the next shape's snapshot at its COPY.
    let locker = testkit::connect(&env.url).await;
    locker.batch_execute("begin; lock table items in access exclusive mode").await.unwrap();
    let url = format!("{base}/v1/shape?table=items&offset=-1&where=n%20%3E%201");
    let waiting = tokio::spawn(async move { get(&url).await });
    let copying = "select count(*) from pg_stat_activity where query ilike 'copy%' and wait_event_type = 'Lock'";
    testkit::wait_until("the snapshot waits on the lock", || async {
        env.db.query_one(copying, &[]).await.unwrap().get::<_, i64>(0) == 1
    })
    .await;

    let deleted = testkit::http().delete(format!("{base}/v1/shape?table=items")).send().await.unwrap();
    assert_eq!(deleted.status(), 202);
    // The snapshot's session is closed: its query no longer waits (it would until the lock
    // is released if the snapshot ran on, detached).
    testkit::wait_until("the snapshot query ends", || async {
        env.db.query_one(copying, &[]).await.unwrap().get::<_, i64>(0) == 0
    })
    .await;
    assert_eq!(waiting.await.unwrap().status, 503, "its request learns that the shape is gone");
    locker.batch_execute("commit").await.unwrap();
}

/// A new shape is bound from the gateway's cached catalog when its table is already
/// published; its snapshot checks the table is still the one it was bound with.
#[tokio::test]
async fn a_shape_bound_from_a_stale_catalog_is_made_again_from_a_fresh_read() {
    let (env, gw, _f) = synced_items().await;
    let base = gw.base();
    // A column dropped, and no write since, so the stream has not said so: the shape
    // naming it is refused once the catalog is read afresh, not before.
    env.sql("alter table items drop column n").await;
    let url = format!("{base}/v1/shape?table=items&offset=-1&columns=id,n");
    let stale = get(&url).await;
    assert_eq!(stale.status, 503, "the cached catalog still has n: {}", stale.body);
    let fresh = get(&url).await;
    assert_eq!(fresh.status, 400, "{}", fresh.body);
    assert!(fresh.body.to_string().contains("not found on the table: n"), "{}", fresh.body);

    // The table dropped and made again with the same columns: another table (oid), whose
    // changes a shape bound to the old one would never see.
    env.sql("drop table items; create table items (id int8 primary key, org text not null, title text)").await;
    let url = format!("{base}/v1/shape?table=items&offset=-1&where={}", testkit::enc("org = 'a'"));
    assert_eq!(get(&url).await.status, 503, "bound from the cache, refused by its snapshot");
    let mut f = Follower::new(&gw, &format!("table=items&where={}", testkit::enc("org = 'a'")));
    f.sync().await;
    env.sql("insert into items values (1, 'a', 'after')").await;
    f.converge_to("title", &[("1".to_string(), json!("after"))].into()).await;
}

/// The table's replica identity turned back to default (old rows no longer sent): the next
/// filtered shape is not made from the cached table but from a fresh read, which sets it to
/// full again (a filtered shape must see rows leave its filter).
#[tokio::test]
async fn a_replica_identity_changed_under_the_cache_is_read_afresh() {
    let (env, gw, mut f) = synced_items().await;
    env.sql("alter table items replica identity default; insert into items values (1, 'a', 't', 1)").await;
    // The unfiltered shape has the insert: the stream's new relation for the table is read.
    f.converge_to("title", &[("1".to_string(), json!("t"))].into()).await;
    let filtered = format!("{}/v1/shape?table=items&offset=-1&where={}", gw.base(), testkit::enc("n > 2"));
    assert_eq!(get(&filtered).await.status, 200);
    let identity = "select relreplident::text from pg_class where oid = 'items'::regclass";
    assert_eq!(env.db.query_one(identity, &[]).await.unwrap().get::<_, String>(0), "f");
}
