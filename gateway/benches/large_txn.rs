//! One large transaction: first a check at full size (`BENCH_CHECK_ROWS`, 3,000,000 rows,
//! over 1 GB decoded, with `--txn-memory 64MiB`): `kill -9` while its parts are stored, two
//! subscribers that must get every row of their shape exactly once, and the gateway's peak
//! RSS under 400 MiB, else the run fails. (It is here, not among the integration tests,
//! because a debug build takes minutes over it; those test the same paths at 120,000 rows.)
//!
//! Then how fast the gateway stores such a transaction, in MiB/s of WAL, against
//! `pg_recvlogical` (pgoutput) consuming the same transaction in the same run, and the
//! gateway's peak memory while it does.
//!
//! Each round writes one transaction of `BENCH_ROWS` rows (~300 bytes each) while the
//! gateway is stopped; `pg_recvlogical` consumes it from its own slot, then the gateway is
//! started and timed until it has stored and acknowledged it (both shapes: all rows, and
//! half of them). Rounds interleave the two; the median ratio is reported. Run:
//! `cargo bench -p gateway --bench large_txn`.

mod common;

use std::time::Instant;

use std::time::Duration;

use common::{env_or, median, peak_rss_kib, recvlogical_seconds, secs, wait_flushed};
use serde_json::Value;
use shapes::offset::Lsn;
use testkit::{Env, Gateway, metric_sum};

const TABLE: &str = "create table big (id int8 primary key, org int4 not null, body text not null)";
/// Peak RSS the check allows.
const PEAK_LIMIT_MIB: f64 = 400.0;

/// One transaction inserting rows `first..first + rows` (each ~330 bytes).
fn insert(first: u64, rows: u64) -> String {
    format!(
        "insert into big select g, g % 2, repeat(md5(g::text), 9) from generate_series({first}, {}) g",
        first + rows - 1
    )
}

/// Samples a process's peak RSS (MiB) until it exits.
fn watch_peak(pid: u32) -> tokio::task::JoinHandle<f64> {
    tokio::spawn(async move {
        let mut peak = 0;
        while let Some(now) = Some(peak_rss_kib(pid)).filter(|kib| *kib > 0) {
            peak = peak.max(now);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        peak as f64 / 1024.0
    })
}

/// A subscriber counting the rows it receives: each id must come once.
struct Counter {
    base: String,
    params: &'static str,
    handle: Option<String>,
    offset: String,
    cursor: String,
    seen: Vec<bool>,
    rows: u64,
    duplicates: u64,
}

impl Counter {
    fn new(gw: &Gateway, params: &'static str, ids: u64) -> Counter {
        Counter {
            base: gw.base(),
            params,
            handle: None,
            offset: "-1".into(),
            cursor: String::new(),
            seen: vec![false; ids as usize],
            rows: 0,
            duplicates: 0,
        }
    }

    /// Follows the shape (riding out a restarting gateway) until it holds `rows` rows.
    async fn follow_until(&mut self, rows: u64, deadline: Duration) {
        let started = Instant::now();
        let client = reqwest::Client::new();
        while self.rows < rows || self.handle.is_none() {
            assert!(started.elapsed() < deadline, "{}: {} of {rows} rows after {deadline:?}", self.params, self.rows);
            let mut url = format!("{}/v1/shape?{}&offset={}", self.base, self.params, self.offset);
            if let Some(h) = &self.handle {
                url.push_str(&format!("&handle={h}&live=true&cursor={}", self.cursor));
            }
            let Ok(r) = client.get(&url).send().await else {
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            };
            if r.status().is_server_error() {
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
            assert_eq!(r.status(), 200, "{}: no refetch expected", self.params);
            let header = |k: &str| r.headers().get(k).map(|v| v.to_str().unwrap().to_string());
            self.handle = header("electric-handle");
            self.offset = header("electric-offset").unwrap();
            self.cursor = header("electric-cursor").unwrap_or_default();
            let Ok(body) = r.bytes().await else { continue };
            let messages: Vec<Value> = serde_json::from_slice(&body).unwrap();
            for m in messages.iter().filter(|m| m["headers"]["operation"] == "insert") {
                let id: usize = m["value"]["id"].as_str().unwrap().parse().unwrap();
                if std::mem::replace(&mut self.seen[id], true) {
                    self.duplicates += 1;
                } else {
                    self.rows += 1;
                }
            }
        }
    }
}

/// The check at full size (see the top of this file).
async fn check(rows: u64, txn_memory: &str) {
    println!("check: one transaction of {rows} rows, --txn-memory {txn_memory}, kill -9 while it is stored");
    let env = Env::new().await;
    env.sql(TABLE).await;
    let mut gw = Gateway::start(&env.url, &env.data_dir, &["--chunk-bytes", "10485760", "--txn-memory", txn_memory]);
    gw.ready().await;
    let mut all = Counter::new(&gw, "table=big", rows);
    let mut odd = Counter::new(&gw, "table=big&where=org%3D1", rows);
    all.follow_until(0, Duration::from_secs(30)).await;
    odd.follow_until(0, Duration::from_secs(30)).await;
    let url = env.url.clone();
    let writer = tokio::spawn(async move { testkit::connect(&url).await.batch_execute(&insert(0, rows)).await });
    let first_peak = watch_peak(gw.pid().unwrap());
    let base = gw.base();
    let started = Instant::now();
    loop {
        let parts = metric_sum(&base, "gateway_replication_txn_parts_total", &[]).await;
        if parts >= 50.0 {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(600), "the transaction never arrived in parts");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    gw.kill9();
    gw.restart().await;
    writer.await.unwrap().unwrap();
    let second_peak = watch_peak(gw.pid().unwrap());
    let t = Instant::now();
    all.follow_until(rows, Duration::from_secs(900)).await;
    odd.follow_until(rows / 2, Duration::from_secs(900)).await;
    let stored = secs(t.elapsed());
    gw.terminate();
    let peak = first_peak.await.unwrap().max(second_peak.await.unwrap());
    println!(
        "check: after kill -9 and restart, both subscribers have every row ({} and {}) in {stored:.0}s; duplicates {} and {}; peak RSS {peak:.0} MiB",
        all.rows, odd.rows, all.duplicates, odd.duplicates
    );
    assert_eq!((all.duplicates, odd.duplicates), (0, 0), "a row came twice");
    assert_eq!((all.rows, odd.rows), (rows, rows / 2));
    assert!(peak < PEAK_LIMIT_MIB, "peak RSS {peak:.0} MiB is over {PEAK_LIMIT_MIB} MiB");
    println!("check: passed");
}

async fn wal_position(env: &Env) -> Lsn {
    let text: String = env.db.query_one("select pg_current_wal_insert_lsn()::text", &[]).await.unwrap().get(0);
    text.parse().unwrap()
}

#[tokio::main]
async fn main() {
    let rows: u64 = env_or("BENCH_ROWS", 1_000_000);
    let rounds: u64 = env_or("BENCH_ROUNDS", 3);
    let txn_memory: String = env_or("BENCH_TXN_MEMORY", "64MiB".to_string());
    let check_rows: u64 = env_or("BENCH_CHECK_ROWS", 3_000_000);
    if check_rows > 0 {
        check(check_rows, &txn_memory).await;
    }
    println!(
        "large transaction: {rows} rows in one transaction, --txn-memory {txn_memory}, {rounds} interleaved rounds"
    );
    let env = Env::new().await;
    env.sql(TABLE).await;
    let args = ["--chunk-bytes", "10485760", "--txn-memory", &txn_memory];
    let mut gw = Gateway::start(&env.url, &env.data_dir, &args);
    gw.ready().await;
    for q in ["table=big", "table=big&where=org%3D1"] {
        let r = testkit::get(&format!("{}/v1/shape?{q}&offset=-1", gw.base())).await;
        assert_eq!(r.status, 200, "{}", r.body);
    }
    gw.terminate();

    let (mut ratios, mut peaks) = (Vec::new(), Vec::new());
    for round in 0..rounds {
        env.sql("select pg_create_logical_replication_slot('reference', 'pgoutput')").await;
        let before = wal_position(&env).await;
        let first = round * rows;
        env.sql(&insert(first, rows)).await;
        let target = wal_position(&env).await;
        let mib = (target.0 - before.0) as f64 / (1024.0 * 1024.0);

        let reference = recvlogical_seconds(&env.url, "reference", target);

        let t = Instant::now();
        gw.spawn_again();
        let peak = watch_peak(gw.pid().unwrap());
        wait_flushed(&gw.base(), target).await;
        let ours = secs(t.elapsed());
        gw.terminate();
        let peak_mib = peak.await.unwrap();
        env.sql("select pg_drop_replication_slot('reference')").await;

        let ratio = reference / ours;
        println!(
            "  round {}: {mib:.0} MiB of WAL; pg_recvlogical {:.1} MiB/s ({reference:.1}s), gateway {:.1} MiB/s ({ours:.1}s), ratio {ratio:.2}; gateway peak RSS {peak_mib:.0} MiB",
            round + 1,
            mib / reference,
            mib / ours,
        );
        ratios.push(ratio);
        peaks.push(peak_mib);
    }
    println!(
        "large transaction: gateway / pg_recvlogical rate, median of {rounds}: {:.2}; peak RSS median {:.0} MiB (max {:.0})",
        median(ratios),
        median(peaks.clone()),
        peaks.iter().cloned().fold(0.0, f64::max)
    );
}
