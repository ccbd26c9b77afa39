//! Reading shapes: snapshot, live changes, filters, types, transactions, TOAST, rotation.

use serde_json::Value;

use testkit::{Env, Follower, ITEMS, get, oracle};

#[tokio::test]
async fn rows_follow_the_filter_through_inserts_updates_moves_and_deletes() {
    let env = Env::new().await;
    env.sql(ITEMS).await;
    env.sql("insert into items select i, 'o' || (i % 3), 't' || i, i from generate_series(1, 30) i").await;
    let gw = env.ready_gateway().await;
    let mut f = Follower::new(&gw, "table=items&where=org%20%3D%20%27o1%27");
    f.sync().await;
    assert_eq!(f.column("id", "title"), oracle(&env.db, "items", "org = 'o1'", "title").await);

    env.sql("insert into items values (100, 'o1', 'new', 1), (101, 'o2', 'other', 1)").await;
    env.sql("update items set title = 'changed' where id = 1").await; // o1, stays in
    env.sql("update items set org = 'o1' where id = 2").await; // moves in
    env.sql("update items set org = 'o0' where id = 4").await; // moves out
    env.sql("delete from items where id = 7").await;
    let expected = oracle(&env.db, "items", "org = 'o1'", "title").await;
    f.converge_to("title", &expected).await;
    assert_eq!(f.rows[r#""public"."items"/"2""#]["n"], "2", "a row moving in arrives whole");
    assert_eq!(f.duplicates, 0);
}

#[tokio::test]
async fn every_type_class_arrives_as_postgres_text_in_snapshot_and_live() {
    let env = Env::new().await;
    env.sql(
        "create type mood as enum ('sad', 'ok', 'happy');
         create table t (id uuid primary key, i2 int2, i8 int8, f4 float4, f8 float8, num numeric(10,2), b bool,
           txt text, vc varchar(20), ch char(4), js json, jb jsonb, by bytea, d date, tm time, ts timestamp,
           tz timestamptz, iv interval, arr int4[], tarr text[], m mood);",
    )
    .await;
    let values = "('a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', 1, 9223372036854775807, 1.5, 4.25, 12.30, true,
        'quote\" back\\ slash', 'v', 'ab', '{\"a\": 1}', '{\"b\": [1, 2]}', '\\x0001ff', '2024-02-29', '13:14:15.5',
        '2024-01-02 03:04:05.123', '2024-01-02 03:04:05+02', '1 day 2 hours', '{1,2,NULL}', '{\"a b\",c}', 'happy')";
    env.sql(&format!("insert into t values {values}")).await;
    let gw = env.ready_gateway().await;
    let mut f = Follower::new(&gw, "table=t");
    f.sync().await;
    let schema = f.schema.clone().unwrap();
    assert_eq!(schema["id"], serde_json::json!({"type": "uuid", "pk_index": 0, "not_null": true}));
    assert_eq!(schema["arr"]["type"], "int4");
    assert_eq!(schema["arr"]["dims"], 1);
    assert_eq!(schema["num"]["precision"], 10);
    assert_eq!(schema["vc"]["max_length"], 20);
    assert_eq!(schema["m"]["type"], "mood");
    let snapshot_row = f.rows.values().next().unwrap().clone();

    env.sql(&format!("insert into t values {}", values.replacen("a0eebc99", "b0eebc99", 1))).await;
    f.live_until(|rows| rows.len() == 2).await;
    let live_row = f.rows.values().find(|r| r["id"].as_str().unwrap().starts_with('b')).unwrap().clone();

    // bpchar keeps its padding on the wire (its output function pads; a cast to text would trim).
    assert_eq!(snapshot_row["ch"], "ab  ");
    assert_eq!(live_row["ch"], "ab  ");
    let cols =
        ["i2", "i8", "f4", "f8", "num", "txt", "vc", "js", "jb", "by", "d", "tm", "ts", "tz", "iv", "arr", "tarr", "m"];
    let sql =
        format!("select {} from t limit 1", cols.iter().map(|c| format!("{c}::text")).collect::<Vec<_>>().join(", "));
    env.sql("set timezone = 'UTC'; set intervalstyle = 'iso_8601'").await;
    let row = env.db.query_one(&sql, &[]).await.unwrap();
    for (i, c) in cols.iter().enumerate() {
        let pg: Option<String> = row.get(i);
        let pg = Value::String(pg.unwrap());
        assert_eq!(snapshot_row[*c], pg, "snapshot {c}");
        assert_eq!(live_row[*c], pg, "live {c}");
    }
    assert!(matches!(snapshot_row["b"].as_str(), Some("t" | "true")));
    assert!(matches!(live_row["b"].as_str(), Some("t" | "true")));
}

#[tokio::test]
async fn a_transaction_arrives_whole_with_last_on_its_final_change() {
    let env = Env::new().await;
    env.sql(ITEMS).await;
    let gw = env.ready_gateway().await;
    let mut f = Follower::new(&gw, "table=items");
    f.sync().await;
    env.sql("begin; insert into items select i, 'o', 't', i from generate_series(1, 50) i; update items set n = 0 where id = 3; delete from items where id = 4; commit;").await;
    // Responses end at chunk boundaries; the transaction is complete at the up-to-date.
    let mut msgs: Vec<Value> = Vec::new();
    let mut live = true;
    while msgs.last().is_none_or(|m| m["headers"]["control"] != "up-to-date") {
        let url = format!(
            "{}/v1/shape?table=items&offset={}&handle={}&cursor={}",
            gw.base(),
            f.offset,
            f.handle.clone().unwrap(),
            if live { "&live=true" } else { "" }
        );
        let r = get(&url).await;
        f.offset = r.headers["electric-offset"].to_str().unwrap().to_string();
        msgs.extend(r.body.as_array().unwrap().iter().cloned());
        live = false;
    }
    let changes: Vec<&Value> = msgs.iter().filter(|m| m.get("key").is_some()).collect();
    assert_eq!(changes.len(), 52, "the whole transaction before the up-to-date");
    assert!(
        msgs.iter().filter(|m| m["headers"]["control"] == "up-to-date").count() == 1,
        "no up-to-date inside a transaction"
    );
    let xids: std::collections::HashSet<_> = changes.iter().map(|m| m["headers"]["txids"].to_string()).collect();
    assert_eq!(xids.len(), 1);
    assert!(changes[..51].iter().all(|m| m["headers"].get("last").is_none()));
    assert_eq!(changes[51]["headers"]["last"], true);
    let lsn = changes[0]["headers"]["lsn"].as_str().unwrap();
    let utd = msgs.last().unwrap();
    assert_eq!(utd["headers"]["control"], "up-to-date");
    assert!(
        utd["headers"]["global_last_seen_lsn"].as_str().unwrap().parse::<u64>().unwrap() >= lsn.parse::<u64>().unwrap()
    );
    let ops: Vec<u64> = changes.iter().map(|m| m["headers"]["op_position"].as_u64().unwrap()).collect();
    assert!(ops.windows(2).all(|w| w[0] < w[1]));
}

#[tokio::test]
async fn unchanged_toast_values_are_filled_from_the_old_row() {
    let env = Env::new().await;
    env.sql("create table docs (id int4 primary key, org text, body text)").await;
    // Random text does not compress, so it is stored out of line (TOAST).
    env.sql("insert into docs select 1, 'a', string_agg(md5(random()::text), '') from generate_series(1, 400)").await;
    let gw = env.ready_gateway().await;
    let mut f = Follower::new(&gw, "table=docs&where=org%3D%27b%27");
    f.sync().await;
    assert!(f.rows.is_empty());
    env.sql("update docs set org = 'b' where id = 1").await; // body unchanged: 'u' in the stream
    f.live_until(|rows| !rows.is_empty()).await;
    let body: String = env.db.query_one("select body from docs", &[]).await.unwrap().get(0);
    let row = f.rows.values().next().unwrap();
    assert_eq!(row["body"].as_str().unwrap(), body, "the TOAST value is the real one");
    assert_eq!(body.len(), 12800);
}

#[tokio::test]
async fn writes_racing_the_snapshot_are_neither_lost_nor_duplicated() {
    let env = Env::new().await;
    env.sql(ITEMS).await;
    env.sql("insert into items select i, 'o', 't', 0 from generate_series(1, 2000) i").await;
    let mut gw = env.gateway_with(&["--chunk-bytes", "1000000"]);
    gw.ready().await;
    let writer_db = testkit::connect(&env.url).await;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let written = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let (stop_w, written_w) = (stop.clone(), written.clone());
    let writer = tokio::spawn(async move {
        let mut i = 0;
        while !stop_w.load(std::sync::atomic::Ordering::Relaxed) {
            i += 1;
            writer_db
                .batch_execute(&format!(
                    "insert into items values ({}, 'o', 'w', 0); update items set n = n + 1 where id = {}",
                    10_000 + i,
                    1 + i % 2000
                ))
                .await
                .unwrap();
            written_w.store(i, std::sync::atomic::Ordering::Relaxed);
        }
    });
    // Each snapshot starts while writes go on: a few are committed before each one.
    let writes_past = |n: usize| {
        let written = written.clone();
        let at = written.load(std::sync::atomic::Ordering::Relaxed);
        testkit::wait_until("the writer is writing", move || {
            let written = written.clone();
            async move { written.load(std::sync::atomic::Ordering::Relaxed) >= at + n }
        })
    };
    writes_past(5).await;
    let mut followers: Vec<Follower> = (0..3)
        .map(|i| {
            Follower::new(&gw, &format!("table=items&columns=id,n,title&replica={}", ["default", "full", "default"][i]))
        })
        .collect();
    for f in &mut followers {
        f.sync().await;
        writes_past(3).await;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    writer.await.unwrap();
    let expected = oracle(&env.db, "items", "true", "n").await;
    for f in &mut followers {
        f.converge_to("n", &expected).await;
        assert_eq!(f.duplicates, 0);
    }
}

#[tokio::test]
async fn equality_shapes_each_receive_exactly_their_rows() {
    let env = Env::new().await;
    env.sql(ITEMS).await;
    let gw = env.ready_gateway().await;
    let mut followers: Vec<Follower> =
        (0..40).map(|i| Follower::new(&gw, &format!("table=items&where=org%3D%27o{i}%27"))).collect();
    for f in &mut followers {
        f.sync().await;
    }
    env.sql("insert into items select i, 'o' || (i % 40), 't', i from generate_series(1, 400) i").await;
    for (i, f) in followers.iter_mut().enumerate() {
        f.live_until(|rows| rows.len() >= 10).await;
        assert_eq!(f.rows.len(), 10);
        assert!(f.rows.values().all(|r| r["org"] == format!("o{i}")), "a foreign row reached shape {i}");
    }
}

#[tokio::test]
async fn truncate_and_column_changes_rotate_shapes() {
    let env = Env::new().await;
    env.sql(ITEMS).await;
    env.sql("insert into items values (1, 'o', 't', 1)").await;
    let gw = env.ready_gateway().await;
    let mut f = Follower::new(&gw, "table=items");
    f.sync().await;
    let first = f.handle.clone().unwrap();
    env.sql("truncate items; insert into items values (2, 'o', 't', 2)").await;
    f.live_until(|rows| rows.len() == 1 && rows.keys().next().unwrap().ends_with("\"2\"")).await;
    assert!(f.refetches >= 1);
    let second = f.handle.clone().unwrap();
    assert_ne!(first, second, "a rotated shape gets a new handle");

    env.sql("alter table items add column extra text default 'x'; insert into items values (3, 'o', 't', 3)").await;
    f.live_until(|rows| rows.len() == 2 && rows.values().all(|r| r.get("extra").is_some())).await;
    assert_ne!(f.handle.clone().unwrap(), second);
    assert_eq!(f.schema.as_ref().unwrap()["extra"]["type"], "text");
}

#[tokio::test]
async fn a_change_the_snapshot_already_holds_never_rotates_the_shape() {
    let env = Env::new().await;
    env.sql(ITEMS).await;
    let gw = env.ready_gateway().await;
    let mut busy = Follower::new(&gw, "table=items");
    busy.sync().await;
    // The stream is kept busy with a large transaction; behind it, a row the new shape's
    // filter cannot evaluate (n = 42 divides by zero) comes and goes before the shape is
    // asked for. Its snapshot holds that transaction, so the stream must not evaluate it.
    env.sql("insert into items select i, 'o', 't', 1 from generate_series(1, 200000) i").await;
    env.sql("begin; insert into items values (0, 'o', 'poison', 42); delete from items where id = 0; commit").await;
    let mut f = Follower::new(&gw, "table=items&where=(1%20%2F%20(n%20-%2042))%20%3E%200");
    f.sync().await;
    let handle = f.handle.clone().unwrap();
    env.sql("insert into items values (300000, 'o', 'after', 43)").await;
    f.live_until(|rows| rows.contains_key(r#""public"."items"/"300000""#)).await;
    assert_eq!(f.handle.clone().unwrap(), handle, "the shape was rotated by a change its snapshot held");
    assert_eq!(f.refetches, 0);
}
