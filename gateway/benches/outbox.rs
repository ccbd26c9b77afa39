//! Outbox: (1) mutations/s of 100-mutation batches pushed by 16 concurrent clients, against
//! the same rows inserted with plain multi-row `INSERT`s over 16 tokio-postgres sessions in
//! the same run (rounds alternate; median ratio; target ≥ 0.5); (2) push → echo latency
//! through an SSE subscription at a steady 500 mutations/s (target p99 ≤ 100 ms). PostgreSQL
//! runs with fsync and synchronous commits on, as in production.
//! Run: `cargo bench -p gateway --bench outbox`.

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{env_or, median};
use testkit::{Env, Gateway};

const BATCH: usize = 100;

#[tokio::main]
async fn main() {
    let rounds: usize = env_or("BENCH_ROUNDS", 3);
    let clients: usize = env_or("BENCH_CLIENTS", 16);
    let batches: usize = env_or("BENCH_BATCHES", 40);
    // Durable commits as in production: with synchronous_commit off, WAL reaches the
    // replication stream only at the WAL writer's next flush (up to 200 ms later).
    let env = Env::with(gateway::devdb::DevOptions { fsync: true, ..Default::default() }).await;
    // `echoes` is followed for the latency part: a fresh table, as a shape on `items` (millions
    // of rows by then) would first take its snapshot, and changes wait for it.
    env.sql("create table items (id int8 primary key, org text not null, title text, n int4); create table echoes (like items including all)").await;
    let mut gw =
        Gateway::start(&env.url, &env.data_dir, &["--long-poll-timeout-ms", "20000", "--sse-timeout-s", "120"]);
    gw.ready().await;
    let base = gw.base();
    let http = reqwest::Client::new();

    println!("outbox: {clients} clients × {batches} batches of {BATCH} inserts per round, {rounds} interleaved rounds");
    let mut ratios = Vec::new();
    let mut next_id = 0i64;
    for round in 0..rounds {
        let start = next_id;
        next_id += (clients * batches * BATCH) as i64;
        caught_up(&env, &base).await;
        let plain = plain_inserts(&env.url, clients, batches, start).await;
        let start = next_id;
        next_id += (clients * batches * BATCH) as i64;
        caught_up(&env, &base).await;
        let pushed = outbox_pushes(&http, &base, clients, batches, start, round).await;
        let ratio = pushed / plain;
        println!("  round {round}: plain INSERT {plain:.0} rows/s, outbox {pushed:.0} mutations/s, ratio {ratio:.2}");
        ratios.push(ratio);
    }
    println!("outbox: median ratio outbox / plain INSERT = {:.2} (target ≥ 0.5)", median(ratios));

    let echo = echo_latency(&env, &http, &base, next_id).await;
    println!(
        "outbox: push → echo over SSE at 500 mutations/s: p50 {:.1} ms, p99 {:.1} ms over {} mutations (target p99 ≤ 100 ms); the push's own answer: p50 {:.1} ms, p99 {:.1} ms",
        echo.p50, echo.p99, echo.n, echo.push_p50, echo.push_p99
    );
    gw.terminate();
}

/// Waits until the gateway has streamed all WAL written so far, so neither side of a round
/// pays for decoding the other's rows.
async fn caught_up(env: &Env, base: &str) {
    let lsn: String = env.db.query_one("select pg_current_wal_insert_lsn()::text", &[]).await.unwrap().get(0);
    common::wait_flushed(base, lsn.parse().unwrap()).await;
}

fn row(id: i64) -> (i64, String, String, i32) {
    (id, format!("org{}", id % 10), format!("title {id}"), (id % 1000) as i32)
}

/// Rows/s of `clients` sessions each inserting `batches` multi-row INSERTs of BATCH rows.
async fn plain_inserts(url: &str, clients: usize, batches: usize, start: i64) -> f64 {
    let mut sessions = Vec::new();
    for _ in 0..clients {
        sessions.push(testkit::connect(url).await);
    }
    let values: Vec<String> =
        (0..BATCH).map(|i| format!("(${}, ${}, ${}, ${})", 4 * i + 1, 4 * i + 2, 4 * i + 3, 4 * i + 4)).collect();
    let sql = format!("insert into items (id, org, title, n) values {}", values.join(", "));
    let t = Instant::now();
    futures::future::join_all(sessions.iter().enumerate().map(|(c, db)| {
        let sql = sql.clone();
        async move {
            let stmt = db.prepare(&sql).await.unwrap();
            for b in 0..batches {
                let rows: Vec<_> = (0..BATCH).map(|i| row(start + ((c * batches + b) * BATCH + i) as i64)).collect();
                type Param<'a> = &'a (dyn tokio_postgres::types::ToSql + Sync);
                let mut params: Vec<Param> = Vec::with_capacity(4 * BATCH);
                for r in &rows {
                    params.extend::<[Param; 4]>([&r.0, &r.1, &r.2, &r.3]);
                }
                db.execute(&stmt, &params).await.unwrap();
            }
        }
    }))
    .await;
    (clients * batches * BATCH) as f64 / t.elapsed().as_secs_f64()
}

/// Pushes one batch body; returns the response body.
async fn push(http: &reqwest::Client, base: &str, body: String) -> bytes::Bytes {
    let r = http
        .post(format!("{base}/v1/outbox"))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    r.bytes().await.unwrap()
}

/// A batch of `size` inserts into `table` of rows `first…`, mutation ids from `first_id`.
fn batch_body(table: &str, client: &str, first: i64, size: usize, first_id: u64) -> String {
    let mutations: Vec<serde_json::Value> = (0..size as i64)
        .map(|i| {
            let (id, org, title, n) = row(first + i);
            serde_json::json!({"id": first_id + i as u64, "table": table, "op": "insert",
                "value": {"id": id, "org": org, "title": title, "n": n}})
        })
        .collect();
    serde_json::json!({"client_id": client, "mutations": mutations}).to_string()
}

/// Mutations/s of `clients` HTTP clients each pushing `batches` batches of BATCH inserts.
async fn outbox_pushes(
    http: &reqwest::Client,
    base: &str,
    clients: usize,
    batches: usize,
    start: i64,
    round: usize,
) -> f64 {
    // Bodies are built before the clock starts, as the plain side's rows cost next to nothing.
    let bodies: Vec<Vec<String>> = (0..clients)
        .map(|c| {
            (0..batches)
                .map(|b| {
                    batch_body(
                        "items",
                        &format!("bench-{round}-{c}"),
                        start + ((c * batches + b) * BATCH) as i64,
                        BATCH,
                        (b * BATCH + 1) as u64,
                    )
                })
                .collect()
        })
        .collect();
    let t = Instant::now();
    futures::future::join_all(bodies.into_iter().map(|bodies| async move {
        for body in bodies {
            let body = push(http, base, body).await;
            let applied = memchr::memmem::find_iter(&body, b"\"applied\"").count();
            assert_eq!(applied, BATCH, "{}", String::from_utf8_lossy(&body));
        }
    }))
    .await;
    (clients * batches * BATCH) as f64 / t.elapsed().as_secs_f64()
}

/// Latencies in ms: push sent → change received over SSE, and push sent → push answered
/// (PostgreSQL's commit and the gateway's work, for reference).
struct Echo {
    p50: f64,
    p99: f64,
    n: usize,
    push_p50: f64,
    push_p99: f64,
}

/// Pushes 10-mutation batches 50 times a second for 10 s while an SSE subscriber follows the
/// table.
async fn echo_latency(env: &Env, http: &reqwest::Client, base: &str, start: i64) -> Echo {
    // Measure from a caught-up gateway, and a checkpointed database: the rounds above left
    // WAL for the stream to read and dirty pages whose flush would stall commits.
    caught_up(env, base).await;
    env.sql("checkpoint").await;
    let first = http.get(format!("{base}/v1/shape?table=echoes&offset=now")).send().await.unwrap();
    let handle = first.headers()["electric-handle"].to_str().unwrap().to_string();
    let offset = first.headers()["electric-offset"].to_str().unwrap().to_string();
    let sent: Arc<Mutex<HashMap<i64, Instant>>> = Default::default();
    let latencies: Arc<Mutex<Vec<f64>>> = Default::default();
    let pushes: Arc<Mutex<Vec<f64>>> = Default::default();
    let expected = 50 * 10 * 10;
    // A raw socket reads the stream, so no client library's buffering is measured.
    let reader = {
        let (sent, latencies) = (sent.clone(), latencies.clone());
        let addr = base.trim_start_matches("http://").to_string();
        let path = format!("/v1/shape?table=echoes&handle={handle}&offset={offset}&live=true&live_sse=true&cursor=");
        tokio::spawn(async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let mut socket = tokio::net::TcpStream::connect(&addr).await.unwrap();
            socket.set_nodelay(true).unwrap();
            socket.write_all(format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\n\r\n").as_bytes()).await.unwrap();
            let mut buf = vec![0u8; 1 << 16];
            let mut pending: Vec<u8> = Vec::new();
            loop {
                let n = socket.read(&mut buf).await.unwrap();
                if n == 0 {
                    return;
                }
                let now = Instant::now();
                pending.extend_from_slice(&buf[..n]);
                let complete = pending.iter().rposition(|b| *b == b'\n').map_or(0, |p| p + 1);
                for line in String::from_utf8_lossy(&pending[..complete]).lines() {
                    let Some(data) = line.strip_prefix("data:") else { continue };
                    let Ok(m) = serde_json::from_str::<serde_json::Value>(data.trim()) else { continue };
                    if let Some(id) = m["value"]["id"].as_str().and_then(|s| s.parse::<i64>().ok())
                        && let Some(at) = sent.lock().unwrap().remove(&id)
                    {
                        let mut l = latencies.lock().unwrap();
                        l.push(now.duration_since(at).as_secs_f64() * 1000.0);
                        if l.len() >= expected {
                            return;
                        }
                    }
                }
                pending.drain(..complete);
            }
        })
    };
    let mut tick = tokio::time::interval(Duration::from_millis(20));
    for b in 0..500usize {
        tick.tick().await;
        let first = start + (b * 10) as i64;
        // A client pushes its batches one after another; these overlap when a push is slow,
        // so each batch comes from its own client.
        let body = batch_body("echoes", &format!("echo-{b}"), first, 10, 1);
        {
            let now = Instant::now();
            let mut s = sent.lock().unwrap();
            for i in 0..10 {
                s.insert(first + i, now);
            }
        }
        let (http, base, pushes) = (http.clone(), base.to_string(), pushes.clone());
        tokio::spawn(async move {
            let t = Instant::now();
            push(&http, &base, body).await;
            pushes.lock().unwrap().push(t.elapsed().as_secs_f64() * 1000.0);
        });
    }
    let _ = tokio::time::timeout(Duration::from_secs(30), reader).await;
    let pick = |l: &Mutex<Vec<f64>>, q: f64| {
        let mut l = l.lock().unwrap().clone();
        l.sort_by(|a, b| a.total_cmp(b));
        l.get(((l.len() as f64 - 1.0) * q).round() as usize).copied().unwrap_or(f64::NAN)
    };
    Echo {
        p50: pick(&latencies, 0.5),
        p99: pick(&latencies, 0.99),
        n: latencies.lock().unwrap().len(),
        push_p50: pick(&pushes, 0.5),
        push_p99: pick(&pushes, 0.99),
    }
}
