//! Ingest: how fast the gateway stores a replication backlog, against `pg_recvlogical`
//! (pgoutput) consuming the same backlog in the same run.
//!
//! For each round: a reference slot is created, a backlog of `BENCH_ROWS` rows is written
//! (in transactions of `BENCH_TXN_ROWS` rows) while the gateway is stopped; then
//! `pg_recvlogical` consumes it to the end, and the gateway is started and timed until it
//! has stored (fsync'd) and acknowledged all of it. Rounds interleave the two; the median
//! ratio is reported. Run: `cargo bench -p gateway --bench ingest`.

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
        let first = round * rows;
        for start in (first..first + rows).step_by(txn_rows as usize) {
            let end = (start + txn_rows).min(first + rows) - 1;
            env.sql(&format!(
                "insert into bench select g, g % {}, md5(g::text) from generate_series({start}, {end}) g",
                shapes.max(1)
            ))
            .await;
        }
        // Everything up to here is the backlog; a final marker lets pg_recvlogical stop.
        let target: String = env.db.query_one("select pg_current_wal_insert_lsn()::text", &[]).await.unwrap().get(0);
        env.sql(&format!("insert into bench values ({}, 0, 'end')", -1 - round as i64)).await;
        let target: Lsn = target.parse().unwrap();

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
