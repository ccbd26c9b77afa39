//! Snapshot: 1,000,000 narrow rows to a client through `offset=-1` and the following chunks,
//! against `psql -c "COPY (SELECT …) TO STDOUT"` in the same run. Each round uses a new
//! shape (a different filter that selects every row), so each round runs a new snapshot.
//! Run: `cargo bench -p gateway --bench snapshot`.

mod common;

use std::time::Instant;

use common::{cpu_seconds, env_or, machine_idle_seconds, median, postgres_cpu_seconds, secs};
use testkit::{Env, Gateway};

#[tokio::main]
async fn main() {
    let rows: u64 = env_or("BENCH_ROWS", 1_000_000);
    let rounds: i64 = env_or("BENCH_ROUNDS", 7);
    let env = Env::new().await;
    env.sql("create table narrow (id int8 primary key, v int4)").await;
    env.sql(&format!("insert into narrow select g, g % 1000 from generate_series(1, {rows}) g")).await;
    env.sql("vacuum analyze narrow").await;
    let mut gw = Gateway::start(&env.url, &env.data_dir, &["--chunk-bytes", "10485760"]);
    gw.ready().await;
    let psql = gateway::devdb::find_binaries().unwrap().join("psql");
    let client = reqwest::Client::new();
    println!("snapshot: {rows} rows, {rounds} interleaved rounds");
    let mut ratios = Vec::new();
    for round in 0..rounds {
        let filter = format!("id > {}", -round);
        let pg_cpu = postgres_cpu_seconds();
        let t = Instant::now();
        let out = std::process::Command::new(&psql)
            .args([&env.url, "-Atc", &format!("copy (select id, v from narrow where {filter}) to stdout")])
            .stdout(std::process::Stdio::null())
            .status()
            .unwrap();
        assert!(out.success());
        let reference = secs(t.elapsed());
        let reference_pg_cpu = postgres_cpu_seconds() - pg_cpu;
        let (pg_cpu, gw_cpu, own_cpu, idle) = (
            postgres_cpu_seconds(),
            cpu_seconds(gw.pid().unwrap()),
            cpu_seconds(std::process::id()),
            machine_idle_seconds(),
        );

        let t = Instant::now();
        // Kept as received and counted after the clock stops: psql's reference only receives.
        let mut bodies = Vec::new();
        let mut offset = "-1".to_string();
        let mut handle = String::new();
        loop {
            let url = format!(
                "{}/v1/shape?table=narrow&where={}&offset={offset}{}",
                gw.base(),
                filter.replace(' ', "%20").replace('>', "%3E"),
                if handle.is_empty() { String::new() } else { format!("&handle={handle}") }
            );
            let r = client.get(url).send().await.unwrap();
            assert_eq!(r.status(), 200);
            offset = r.headers()["electric-offset"].to_str().unwrap().to_string();
            handle = r.headers()["electric-handle"].to_str().unwrap().to_string();
            let done = r.headers().contains_key("electric-up-to-date");
            let (mut r, mut body) = (r, Vec::new());
            while let Some(chunk) = r.chunk().await.unwrap() {
                body.push(chunk);
            }
            bodies.push(body);
            if done {
                break;
            }
        }
        let ours = secs(t.elapsed());
        let (pg_cpu, gw_cpu, own_cpu, idle) = (
            postgres_cpu_seconds() - pg_cpu,
            cpu_seconds(gw.pid().unwrap()) - gw_cpu,
            cpu_seconds(std::process::id()) - own_cpu,
            machine_idle_seconds() - idle,
        );
        let bodies: Vec<Vec<u8>> = bodies.into_iter().map(|parts| parts.concat()).collect();
        let bytes: usize = bodies.iter().map(Vec::len).sum();
        let received: usize = bodies.iter().map(|b| memchr::memmem::find_iter(b, b"{\"key\":").count()).sum();
        let log = gw.log();
        let server_ms = log
            .lines()
            .rev()
            .find(|l| l.contains("snapshot complete"))
            .and_then(|l| l.split("ms=").nth(1))
            .map(|m| m.chars().take_while(char::is_ascii_digit).collect::<String>())
            .unwrap_or_default();
        assert_eq!(received as u64, rows, "every row arrived");
        let ratio = reference / ours;
        println!(
            "  round {}: psql COPY {:.0} rows/s ({reference:.2}s, PostgreSQL CPU {reference_pg_cpu:.2}s), gateway {:.0} rows/s ({ours:.2}s, {} MiB of JSON, snapshot done in {server_ms} ms, CPU: gateway {gw_cpu:.2}s, PostgreSQL {pg_cpu:.2}s, this client {own_cpu:.2}s, cores idle {idle:.2}s), ratio {ratio:.2}",
            round + 1,
            rows as f64 / reference,
            rows as f64 / ours,
            bytes / (1 << 20)
        );
        ratios.push(ratio);
        // The round's shape goes before the next round. Its 134 MiB would otherwise stay in
        // the page cache, and each round would take new pages from memory never touched
        // since boot, which on this VM costs the writer 5× a recycled page (`dd` of a new
        // 134 MiB file: 0.22 s of system CPU against 0.04–0.07 s): a long-running server's
        // page cache recycles pages instead.
        let deleted = client.delete(format!("{}/v1/shape?handle={handle}", gw.base())).send().await.unwrap();
        assert_eq!(deleted.status(), 202);
        let dir = env.data_dir.join("shapes").join(&handle);
        while dir.exists() {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    }
    println!("snapshot: gateway / psql COPY rate, median of {rounds}: {:.2}", median(ratios));
}
