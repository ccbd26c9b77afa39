//! Ingest: how fast the gateway stores a replication backlog, against `pg_recvlogical`
//! (pgoutput) consuming the same backlog in the same run.
//!
//! For each round: a reference slot is created, a backlog of `BENCH_ROWS` rows is written
//! (in transactions of `BENCH_TXN_ROWS` rows) while the gateway is stopped; then
//! `pg_recvlogical` consumes it to the end, and the gateway is started and timed until it
//! has stored (fsync'd) and acknowledged all of it. Rounds interleave the two; the median
//! ratio is reported. Run: `cargo bench -p gateway --bench ingest`.
//!
//! `BENCH_MODE=sweep` asks whether catch-up depends on how long the shape's log already is:
//! the log is grown to each size of `BENCH_SWEEP` (entries, default 0, 1,000,000 and
//! 5,000,000), and at each the same backlog is timed until a long-polling client of the
//! shape has every row, against `pg_recvlogical` on the same backlog.

mod common;

use std::time::Instant;

use common::{env_or, median, recvlogical_seconds, secs, wait_flushed};
use futures::StreamExt;
use shapes::offset::Lsn;
use testkit::{Env, Gateway};

#[tokio::main]
async fn main() {
    let rows: u64 = env_or("BENCH_ROWS", 1_000_000);
    let txn_rows: u64 = env_or("BENCH_TXN_ROWS", 1000);
    let rounds: usize = env_or("BENCH_ROUNDS", 3);
    let many: u64 = env_or("BENCH_SHAPES", 10_000);
    if std::env::var("BENCH_MODE").as_deref() == Ok("sweep") {
        let sizes = std::env::var("BENCH_SWEEP").unwrap_or_else(|_| "0,1000000,5000000".into());
        let sizes: Vec<u64> = sizes.split(',').map(|s| s.trim().parse().expect("BENCH_SWEEP: sizes")).collect();
        return sweep(rows, txn_rows, rounds, sizes).await;
    }
    let modes: Vec<(String, u64)> = match std::env::var("BENCH_MODE").as_deref() {
        Ok("one") => vec![("1 shape".into(), 1)],
        Ok("many") => vec![(format!("{many} shapes"), many)],
        _ => vec![("1 shape".into(), 1), (format!("{many} shapes"), many)],
    };
    println!("ingest: {rows} rows in transactions of {txn_rows}, {rounds} interleaved rounds");
    for (label, shapes) in modes {
        let ratio = bench(rows, txn_rows, rounds, shapes).await;
        println!("ingest [{label}]: gateway / pg_recvlogical rate, median of {rounds}: {ratio:.2}");
    }
}

async fn bench(rows: u64, txn_rows: u64, rounds: usize, shapes: u64) -> f64 {
    let env = Env::new().await;
    env.sql("create table bench (id int8 primary key, scope int4 not null, payload text not null)").await;
    let mut gw = Gateway::start(&env.url, &env.data_dir, &["--chunk-bytes", "10485760"]);
    gw.ready().await;
    let started = Instant::now();
    let client = reqwest::Client::new();
    let base = gw.base();
    futures::stream::iter(0..shapes)
        .map(|i| {
            let q = if shapes == 1 { "table=bench".to_string() } else { format!("table=bench&where=scope%3D{i}") };
            let (client, base) = (client.clone(), base.clone());
            async move {
                let r = client.get(format!("{base}/v1/shape?{q}&offset=-1")).send().await.unwrap();
                assert_eq!(r.status(), 200);
            }
        })
        .buffer_unordered(16)
        .collect::<Vec<_>>()
        .await;
    println!("  created {shapes} shape(s) in {:.1}s", secs(started.elapsed()));
    gw.terminate();

    let mut ratios = Vec::new();
    for round in 0..rounds as u64 {
        env.sql("select pg_create_logical_replication_slot('reference', 'pgoutput')").await;
        let target = write_backlog(&env, round * rows, rows, txn_rows, shapes.max(1), -1 - round as i64).await;

        let reference = recvlogical_seconds(&env.url, "reference", target);

        let t = Instant::now();
        gw.spawn_again();
        wait_flushed(&gw.base(), target).await;
        let ours = secs(t.elapsed());
        gw.terminate();
        env.sql("select pg_drop_replication_slot('reference')").await;

        let ratio = reference / ours;
        println!(
            "  round {}: pg_recvlogical {:.0} rows/s ({reference:.2}s), gateway {:.0} rows/s ({ours:.2}s), ratio {ratio:.2}",
            round + 1,
            rows as f64 / reference,
            rows as f64 / ours
        );
        ratios.push(ratio);
    }
    median(ratios)
}

/// Inserts rows `first..first + rows` in transactions of `txn_rows` (one statement, so the
/// writing is quick), then a marker row `marker` in a transaction of its own; returns the
/// WAL position before the marker, the end of the backlog.
async fn write_backlog(env: &Env, first: u64, rows: u64, txn_rows: u64, scopes: u64, marker: i64) -> Lsn {
    let last = first + rows - 1;
    env.sql(&format!(
        "do $$ begin for s in {first}..{last} by {txn_rows} loop \
         insert into bench select g, g % {scopes}, md5(g::text) from generate_series(s, least(s + {txn_rows} - 1, {last})) g; \
         commit; end loop; end $$"
    ))
    .await;
    let target: String = env.db.query_one("select pg_current_wal_insert_lsn()::text", &[]).await.unwrap().get(0);
    env.sql(&format!("insert into bench values ({marker}, 0, 'end')")).await;
    target.parse().unwrap()
}

async fn sweep(rows: u64, txn_rows: u64, rounds: usize, sizes: Vec<u64>) {
    println!(
        "ingest sweep: {rows} rows in transactions of {txn_rows} into a log of {sizes:?} entries, {rounds} rounds each"
    );
    let env = Env::new().await;
    env.sql("create table bench (id int8 primary key, scope int4 not null, payload text not null)").await;
    let mut gw = Gateway::start(&env.url, &env.data_dir, &["--chunk-bytes", "10485760"]);
    gw.ready().await;
    let client = reqwest::Client::new();
    let r = client.get(format!("{}/v1/shape?table=bench&offset=-1", gw.base())).send().await.unwrap();
    let handle = r.headers()["electric-handle"].to_str().unwrap().to_string();
    let (mut next_id, mut entries, mut marker) = (0u64, 0u64, -1i64);
    let mut medians = Vec::new();
    for size in sizes {
        // Grow the log (in big transactions: the growing is not what is measured).
        while entries < size {
            let n = (size - entries).min(1_000_000);
            write_backlog(&env, next_id, n, 10_000, 1, marker).await;
            (next_id, entries, marker) = (next_id + n, entries + n + 1, marker - 1);
            // Past the marker too: a round's `offset=now` must follow every row written so
            // far, or the marker arrives in the round as a row too many.
            let written: String =
                env.db.query_one("select pg_current_wal_insert_lsn()::text", &[]).await.unwrap().get(0);
            wait_flushed(&gw.base(), written.parse().unwrap()).await;
        }
        let (mut ratios, mut times) = (Vec::new(), Vec::new());
        for round in 0..rounds {
            let r = client
                .get(format!("{}/v1/shape?table=bench&handle={handle}&offset=now", gw.base()))
                .send()
                .await
                .unwrap();
            let offset = r.headers()["electric-offset"].to_str().unwrap().to_string();
            gw.terminate();
            env.sql("select pg_create_logical_replication_slot('reference', 'pgoutput')").await;
            let target = write_backlog(&env, next_id, rows, txn_rows, 1, marker).await;
            (next_id, marker) = (next_id + rows, marker - 1);
            let reference = recvlogical_seconds(&env.url, "reference", target);

            let t = Instant::now();
            gw.spawn_again();
            let bodies = long_poll_until(&client, &gw.base(), &handle, offset, rows + 1).await;
            let ours = secs(t.elapsed());
            // Checked after the clock stops: parsing 300,000 messages is the client's work.
            let (received, twice) = inserted_ids(&bodies);
            assert_eq!(twice, 0, "no row arrived twice");
            assert_eq!(received, rows + 1, "every row arrived");
            entries += rows + 1;
            env.sql("select pg_drop_replication_slot('reference')").await;
            let ratio = reference / ours;
            println!(
                "  log of {size} entries, round {}: pg_recvlogical {reference:.2}s, gateway to a long-polling client {ours:.2}s, ratio {ratio:.2}",
                round + 1
            );
            ratios.push(ratio);
            times.push(ours);
        }
        let (ratio, time) = (median(ratios), median(times));
        println!("ingest sweep [log of {size} entries]: median ratio {ratio:.2}, median gateway time {time:.2}s");
        medians.push(ratio);
    }
    let (lo, hi) = medians.iter().fold((f64::MAX, 0f64), |(lo, hi), r| (lo.min(*r), hi.max(*r)));
    println!("ingest sweep: the median ratios differ by {:.0}% (largest over smallest)", (hi / lo - 1.0) * 100.0);
}

/// Long-polls the shape from `offset` until `expected` inserts have arrived (retrying while
/// the gateway starts); returns the bodies as received.
async fn long_poll_until(
    client: &reqwest::Client,
    base: &str,
    handle: &str,
    mut offset: String,
    expected: u64,
) -> Vec<bytes::Bytes> {
    let (mut received, mut live, mut bodies) = (0u64, false, Vec::new());
    while received < expected {
        let url = format!(
            "{base}/v1/shape?table=bench&handle={handle}&offset={offset}{}",
            if live { "&live=true" } else { "" }
        );
        let Ok(r) = client.get(url).send().await else {
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            continue;
        };
        if r.status() != 200 && r.status() != 204 {
            assert!(r.status().is_server_error(), "unexpected {}", r.status());
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            continue;
        }
        offset = r.headers()["electric-offset"].to_str().unwrap().to_string();
        live = r.headers().contains_key("electric-up-to-date");
        let body = r.bytes().await.unwrap();
        received += memchr::memmem::find_iter(&body, b"\"operation\":\"insert\"").count() as u64;
        bodies.push(body);
    }
    bodies
}

/// How many inserts `bodies` hold, and how many of those repeat a row's id.
fn inserted_ids(bodies: &[bytes::Bytes]) -> (u64, u64) {
    let (mut received, mut twice, mut ids) = (0u64, 0u64, std::collections::HashSet::new());
    for body in bodies {
        let messages: Vec<serde_json::Value> = serde_json::from_slice(body).unwrap();
        for m in messages.iter().filter(|m| m["headers"]["operation"] == "insert") {
            received += 1;
            twice += u64::from(!ids.insert(m["value"]["id"].as_str().unwrap_or_default().to_string()));
        }
    }
    (received, twice)
}
