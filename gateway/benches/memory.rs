//! Memory: gateway RSS per idle shape and per idle long-poll and SSE subscriber, measured
//! as the RSS growth over a warmed-up baseline (a first batch or wave) divided by the count.
//! Targets: ≤ 8 KiB each.
//! Last, what a stalled reader pins (a client that asked for a chunk of a backlog, or opened
//! an SSE stream behind one, and stopped reading), and that `--send-timeout-s` frees it.
//! First, what a kept subquery set costs per value (the same structures the gateway keeps,
//! built in this process, measured by its own RSS growth).
//! Run: `cargo bench -p gateway --bench memory`.

mod common;

use std::time::Duration;

use common::{env_or, rss_kib};
use futures::StreamExt;
use testkit::{Env, Gateway};

/// RSS growth per value of kept subquery sets: `sets` sets of `values` values each (like
/// `project_id IN (SELECT project_id FROM members WHERE user_id = :sub)` per user).
fn set_bytes_per_value(sets: usize, values: usize) -> f64 {
    use shapes::set_registry::SetRegistry;
    use shapes::subquery_set::SubquerySet;
    use shapes::table::{Column, TableName, TableSchema};
    use shapes::where_clause::{BindOptions, parse_where_with_tables};

    let column = Column::scalar;
    let todos = TableSchema {
        oid: 1,
        name: TableName::new("public", "todos"),
        columns: vec![column("id", "int8", Some(0)), column("project_id", "int8", None)],
        replica_identity_full: true,
    };
    let members = TableSchema {
        oid: 2,
        name: TableName::new("public", "members"),
        columns: vec![column("user_id", "text", Some(0)), column("project_id", "int8", Some(1))],
        replica_identity_full: true,
    };
    let catalog = vec![members];
    let params = std::collections::HashMap::new();
    let mut registry = SetRegistry::default();
    let before = rss_kib(std::process::id());
    for user in 0..sets {
        let filter = format!("project_id IN (SELECT project_id FROM members WHERE user_id = 'user-{user}')");
        let e = parse_where_with_tables(&filter, &todos, &catalog, &params, BindOptions::default()).unwrap();
        let (id, _) = registry.acquire(e.subqueries()[0], 2);
        let rows = (0..values).map(|v| vec![Some(((user * 7 + v * 13) % 2_000_000).to_string())]);
        registry.finish_load(id, SubquerySet::from_rows(rows), |_| true).unwrap();
    }
    let after = rss_kib(std::process::id());
    let per_value = (after.saturating_sub(before)) as f64 * 1024.0 / (sets * values) as f64;
    std::hint::black_box(&registry);
    per_value
}

#[tokio::main]
async fn main() {
    for (sets, values) in [(10_000, 5), (1, 1_000_000)] {
        println!(
            "memory: subquery sets: {sets} sets of {values} values: {:.0} bytes per value (set, routing index and SQL key included)",
            set_bytes_per_value(sets, values)
        );
    }
    let shapes: u64 = env_or("BENCH_SHAPES", 5000);
    let subscribers: u64 = env_or("BENCH_SUBSCRIBERS", 2000);
    let env = Env::new().await;
    env.sql("create table t (id int8 primary key, scope int4 not null); insert into t select g, g from generate_series(1, 10) g").await;
    let mut gw = Gateway::start(&env.url, &env.data_dir, &["--long-poll-timeout-ms", "30000", "--sse-timeout-s", "60"]);
    gw.ready().await;
    let pid = gw.pid().unwrap();
    let client = reqwest::Client::builder().pool_max_idle_per_host(usize::MAX).build().unwrap();
    let base = gw.base();
    let create = |range: std::ops::Range<u64>| {
        let (client, base) = (client.clone(), base.clone());
        futures::stream::iter(range)
            .map(move |i| {
                let (client, base) = (client.clone(), base.clone());
                async move {
                    let r = client
                        .get(format!("{base}/v1/shape?table=t&where=scope%3D{i}&offset=-1"))
                        .send()
                        .await
                        .unwrap();
                    assert_eq!(r.status(), 200);
                    (i, r.headers()["electric-handle"].to_str().unwrap().to_string())
                }
            })
            .buffer_unordered(16)
            .collect::<Vec<_>>()
    };
    // Warm up allocators and caches with a first batch, then measure the next one.
    create(0..500).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = rss_kib(pid);
    let handles = create(500..500 + shapes).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after = rss_kib(pid);
    let per_shape = (after.saturating_sub(before)) as f64 * 1024.0 / shapes as f64;
    println!(
        "memory: {shapes} idle shapes: RSS {before} KiB → {after} KiB, {:.0} bytes per shape (target ≤ 8192)",
        per_shape
    );

    // HTTP/1.1: one connection per subscriber. HTTP/2: subscribers share connections as
    // browsers and proxies multiplex them (100 streams per connection, under hyper's 200).
    // Each mode runs in a freshly started gateway so freed memory of one does not hide the next.
    // Like the shapes above, a first wave warms up (the allocator's pages for each size on
    // each thread, the runtime's tables: a one-time growth of ~10 MB with mimalloc), and the
    // next wave's growth is the cost of each further subscriber, the figure for the target.
    for (mode, sse, multiplexed) in
        [("long-poll (HTTP/1.1)", false, false), ("long-poll (HTTP/2)", false, true), ("SSE (HTTP/1.1)", true, false)]
    {
        gw.terminate();
        gw.spawn_again();
        gw.ready().await;
        let pid = gw.pid().unwrap();
        let base = gw.base();
        tokio::time::sleep(Duration::from_millis(500)).await;
        let mut rss = vec![rss_kib(pid)];
        let mut holding = vec![0.0];
        let mut held = Vec::new();
        for _wave in 0..2 {
            let h2: Vec<reqwest::Client> = (0..subscribers.div_ceil(100))
                .map(|_| reqwest::Client::builder().http2_prior_knowledge().build().unwrap())
                .collect();
            for (i, (scope, h)) in handles.iter().cycle().take(subscribers as usize).enumerate() {
                let sse_param = if sse { "&live_sse=true" } else { "" };
                let url = format!(
                    "{base}/v1/shape?table=t&where=scope%3D{scope}&offset=0_inf&handle={h}&live=true&cursor={sse_param}"
                );
                let c = if multiplexed { h2[i % h2.len()].clone() } else { reqwest::Client::new() };
                held.push(tokio::spawn(async move {
                    let r = c.get(url).send().await.unwrap();
                    assert_eq!(r.status(), 200);
                    // Hold the response open (SSE) or wait for the long-poll to end.
                    let mut s = r.bytes_stream();
                    while s.next().await.is_some() {}
                }));
            }
            tokio::time::sleep(Duration::from_secs(3)).await;
            rss.push(rss_kib(pid));
            // Divided by the subscribers the gateway holds (its own count, read after the
            // RSS: rendering the metrics allocates too).
            holding.push(testkit::metric_sum(&base, "gateway_subscribers", &[]).await);
            let wave = holding[holding.len() - 1] - holding[holding.len() - 2];
            assert!(wave >= subscribers as f64 * 0.9, "only {wave} of {subscribers} subscribers were held after 3 s");
        }
        let per = |w: usize| (rss[w + 1].saturating_sub(rss[w])) as f64 * 1024.0 / (holding[w + 1] - holding[w]);
        println!(
            "memory: idle {mode} subscribers: RSS {} KiB → {} KiB with {subscribers} ({:.0} bytes each, first growth included) → {} KiB with {} more: {:.0} bytes per subscriber (target ≤ 8192)",
            rss[0],
            rss[1],
            per(0),
            rss[2],
            subscribers,
            per(1)
        );
        for h in held {
            h.abort();
        }
    }
    // What an HTTP/1.1 connection costs before any request: hyper's connection task and read
    // buffer and our accept loop's wrapper. A subscriber's figure less this is the request's
    // own state (handler, shape read position, timers).
    gw.terminate();
    gw.spawn_again();
    gw.ready().await;
    let pid = gw.pid().unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = rss_kib(pid);
    let mut idle = Vec::new();
    for _ in 0..subscribers {
        idle.push(tokio::net::TcpStream::connect(("127.0.0.1", gw.port())).await.unwrap());
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let after = rss_kib(pid);
    let per = (after.saturating_sub(before)) as f64 * 1024.0 / subscribers as f64;
    println!(
        "memory: {subscribers} HTTP/1.1 connections with no request yet: RSS {before} KiB → {after} KiB, {per:.0} bytes per connection"
    );
    drop(idle);
    gw.terminate();
    stalled_readers(env_or("BENCH_STALLED", 64)).await;
}

/// RSS growth per stalled reader: `readers` long-polls, then as many SSE streams, each at
/// its own position in a backlog of 1 MiB chunks, whose clients never read; and how many
/// the send timeout closed.
async fn stalled_readers(readers: usize) {
    use tokio::io::AsyncWriteExt;
    let env = Env::new().await;
    env.sql("create table big (id int8 primary key, body text not null)").await;
    let send_timeout = 10;
    let args = ["--chunk-bytes", "1048576", "--send-timeout-s", "10", "--sse-timeout-s", "600"];
    let mut gw = Gateway::start(&env.url, &env.data_dir, &args);
    gw.ready().await;
    let base = gw.base();
    let first = testkit::get(&format!("{base}/v1/shape?table=big&offset=-1")).await;
    let handle = first.headers["electric-handle"].to_str().unwrap().to_string();
    let mut offset = first.headers["electric-offset"].to_str().unwrap().to_string();
    for batch in 0..readers as u64 {
        let (from, to) = (batch * 1000, batch * 1000 + 999);
        env.sql(&format!("insert into big select g, repeat(md5(g::text), 32) from generate_series({from}, {to}) g"))
            .await;
    }
    // Where each chunk starts: one non-live answer per chunk.
    let mut starts = Vec::new();
    while starts.len() < readers {
        let r = testkit::get(&format!("{base}/v1/shape?table=big&handle={handle}&offset={offset}")).await;
        starts.push(offset.clone());
        offset = r.headers["electric-offset"].to_str().unwrap().to_string();
        if r.headers.contains_key("electric-up-to-date") {
            break;
        }
    }
    let pid = gw.pid().unwrap();
    for (kind, live) in [("long-polls", ""), ("SSE streams", "&live=true&live_sse=true")] {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let closed_before = testkit::metric_sum(&base, "gateway_stalled_connections_closed_total", &[]).await;
        let before = rss_kib(pid);
        let mut held = Vec::new();
        for start in &starts {
            let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", gw.port())).await.unwrap();
            let request =
                format!("GET /v1/shape?table=big&handle={handle}&offset={start}{live} HTTP/1.1\r\nhost: x\r\n\r\n");
            stream.write_all(request.as_bytes()).await.unwrap();
            held.push(stream);
        }
        tokio::time::sleep(Duration::from_secs(3)).await;
        let stalled = rss_kib(pid);
        let per = (stalled.saturating_sub(before)) as f64 / 1024.0 / held.len() as f64;
        tokio::time::sleep(Duration::from_secs(send_timeout + 5)).await;
        let closed = testkit::metric_sum(&base, "gateway_stalled_connections_closed_total", &[]).await - closed_before;
        let after = rss_kib(pid);
        println!(
            "memory: {} stalled {kind}, each at its own 1 MiB chunk of a backlog: RSS {before} KiB → {stalled} KiB, {per:.2} MiB each (reads in flight included); the {send_timeout} s send timeout closed {closed} (the others' answers had gone whole into the kernel's socket buffers): RSS {after} KiB",
            held.len()
        );
        drop(held);
    }
    gw.terminate();
}
