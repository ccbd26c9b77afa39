//! New shapes: how fast a crowd of clients with distinct small filters gets its first
//! snapshots, against the same queries run straight on PostgreSQL in the same run.
//!
//! A table of `BENCH_ROWS` rows has an index on `scope`; each shape is `scope = i` (about
//! ten rows). `BENCH_CLIENTS` clients ask for `BENCH_SHAPES` new shapes until every one has
//! answered up-to-date from `offset=-1`. The reference runs each shape's query as
//! `COPY (select … where scope = i) TO STDOUT` over as many pooled sessions as the gateway
//! has snapshot slots, each in its own REPEATABLE READ transaction as a snapshot needs.
//! Rounds interleave the two (each gateway round uses new filters); the median ratio is
//! reported. Run: `cargo bench -p gateway --bench new_shapes`.
//!
//! Making a shape makes a directory and three files. Where the filesystem is ext4 without a
//! journal (as on the machines these figures come from), allocating an inode skips those
//! freed in the last 5–35 s, one lookup each: a run within half a minute of removing many
//! files (another run's clean-up, a test suite) measures that too.

mod common;

use std::time::Instant;

use common::{env_or, median, secs};
use futures::StreamExt;
use testkit::{Env, Gateway};

/// The gateway's default `--max-concurrent-snapshots`, the reference's session count.
const SESSIONS: usize = 16;

#[tokio::main]
async fn main() {
    let rows: u64 = env_or("BENCH_ROWS", 100_000);
    let shapes: u64 = env_or("BENCH_SHAPES", 10_000);
    let clients: usize = env_or("BENCH_CLIENTS", 64);
    let rounds: u64 = env_or("BENCH_ROUNDS", 3);
    let env = Env::new().await;
    env.sql("create table small (id int8 primary key, scope int4 not null, payload text not null)").await;
    env.sql("create index on small (scope)").await;
    let scopes = rows / 10;
    env.sql(&format!("insert into small select g, g % {scopes}, md5(g::text) from generate_series(1, {rows}) g")).await;
    env.sql("vacuum analyze small").await;
    let mut gw = Gateway::start(&env.url, &env.data_dir, &[]);
    gw.ready().await;
    let client = reqwest::Client::new();
    println!("new shapes: {shapes} shapes of ~10 rows from {clients} clients, {rounds} interleaved rounds");
    let (mut ratios, mut rates) = (Vec::new(), Vec::new());
    for round in 0..rounds {
        // Distinct filters each round: `scope = i` for a fresh range of i, wrapping over the
        // table's scopes with a no-op term so the shape is new.
        let filter = move |i: u64| format!("scope = {} and id > {}", (round * shapes + i) % scopes, -1 - round as i64);

        let t = Instant::now();
        reference(&env.url, shapes, &filter).await;
        let reference = secs(t.elapsed());

        let t = Instant::now();
        let base = gw.base();
        let received: usize = futures::stream::iter(0..shapes)
            .map(|i| first_snapshot(&client, &base, filter(i)))
            .buffer_unordered(clients)
            .fold(0, |n, rows| async move { n + rows })
            .await;
        let ours = secs(t.elapsed());
        assert_eq!(received as u64, shapes * 10, "every shape's rows arrived");
        let ratio = reference / ours;
        println!(
            "  round {}: PostgreSQL {:.0} queries/s ({reference:.2}s), gateway {:.0} shapes/s ({ours:.2}s), ratio {ratio:.2}",
            round + 1,
            shapes as f64 / reference,
            shapes as f64 / ours
        );
        ratios.push(ratio);
        rates.push(shapes as f64 / ours);
    }
    println!(
        "new shapes: median of {rounds}: {:.0} shapes/s; gateway shapes/s over PostgreSQL queries/s {:.2}",
        median(rates),
        median(ratios)
    );
}

/// The rows of one new shape, following its snapshot chunks until up-to-date; a 503 (all
/// snapshot slots busy) is retried as the official client does.
async fn first_snapshot(client: &reqwest::Client, base: &str, filter: String) -> usize {
    let filter: String = form_urlencoded::byte_serialize(filter.as_bytes()).collect();
    let (mut offset, mut handle) = ("-1".to_string(), String::new());
    let mut rows = 0;
    loop {
        let handle_param = if handle.is_empty() { String::new() } else { format!("&handle={handle}") };
        let r = client
            .get(format!("{base}/v1/shape?table=small&where={filter}&offset={offset}{handle_param}"))
            .send()
            .await
            .unwrap();
        if r.status() == 503 {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            continue;
        }
        assert_eq!(r.status(), 200);
        offset = r.headers()["electric-offset"].to_str().unwrap().to_string();
        handle = r.headers()["electric-handle"].to_str().unwrap().to_string();
        let done = r.headers().contains_key("electric-up-to-date");
        rows += memchr::memmem::find_iter(&r.bytes().await.unwrap(), b"\"operation\":\"insert\"").count();
        if done {
            return rows;
        }
    }
}

/// Each filter's rows straight from PostgreSQL: `SESSIONS` sessions, one REPEATABLE READ
/// transaction and one `COPY … TO STDOUT` per filter.
async fn reference(url: &str, shapes: u64, filter: &(impl Fn(u64) -> String + Sync)) {
    let mut sessions = Vec::new();
    for _ in 0..SESSIONS {
        let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls).await.unwrap();
        tokio::spawn(conn);
        sessions.push(client);
    }
    let next = std::sync::atomic::AtomicU64::new(0);
    futures::future::join_all(sessions.iter().map(|s| async {
        loop {
            let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            if i >= shapes {
                return;
            }
            s.batch_execute("begin isolation level repeatable read read only").await.unwrap();
            s.query_one("select pg_current_snapshot()::text", &[]).await.unwrap();
            let copy = format!("copy (select id, scope, payload from small where {}) to stdout", filter(i));
            let stream = s.copy_out(copy.as_str()).await.unwrap();
            let bytes: usize = stream.map(|c| c.unwrap().len()).fold(0, |a, b| async move { a + b }).await;
            assert!(bytes > 0);
            s.batch_execute("commit").await.unwrap();
        }
    }))
    .await;
}
