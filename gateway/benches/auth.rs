//! Auth overhead: long-poll requests per second through `--auth jwt` (a token per caller,
//! verified once and then cached, scope bound per request) against the same requests to a
//! `--auth none` gateway on the same database, filtering the same rows with a client `where`.
//! Rounds alternate between the two; the median ratio is printed. Target: ≥ 0.9.
//! Run: `cargo bench -p gateway --bench auth`.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::{env_or, median};
use futures::StreamExt;
use testkit::{Env, Gateway};

const SECRET: &str = "bench-secret-0123456789-0123456789";
const ORGS: usize = 10;

/// One request a worker repeats: URL and optional token.
type Target = (String, Option<String>);

#[tokio::main]
async fn main() {
    let rounds: usize = env_or("BENCH_ROUNDS", 5);
    let seconds: f64 = env_or("BENCH_ROUND_SECS", 2.0);
    let workers: usize = env_or("BENCH_WORKERS", 16);
    let env = Env::new().await;
    env.sql("create table todos (id int8 primary key, org_id text not null, title text)").await;
    env.sql("insert into todos select g, 'org' || (g % 10), 't' || g from generate_series(1, 10000) g").await;
    let config = env.data_dir.with_extension("toml");
    std::fs::write(&config, "[[table]]\nname = \"todos\"\nscope = \"org_id = :org_id\"\n").unwrap();
    let mut open = Gateway::start(&env.url, &env.data_dir, &["--long-poll-timeout-ms", "20000"]);
    let jwt_dir = env.data_dir.with_extension("jwt");
    let mut jwt = Gateway::start(
        &env.url,
        &jwt_dir,
        &[
            "--auth",
            "jwt",
            "--jwt-secret",
            SECRET,
            "--config",
            config.to_str().unwrap(),
            "--slot",
            "gateway_bench_jwt",
            "--publication",
            "bench_jwt",
            "--long-poll-timeout-ms",
            "20000",
        ],
    );
    open.ready().await;
    jwt.ready().await;

    let exp = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() + 3600;
    let tokens: Vec<String> = (0..100)
        .map(|i| {
            let claims =
                serde_json::json!({"org_id": format!("org{}", i % ORGS), "sub": format!("user{i}"), "exp": exp});
            jsonwebtoken::encode(
                &jsonwebtoken::Header::default(),
                &claims,
                &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
            )
            .unwrap()
        })
        .collect();
    let client = reqwest::Client::new();
    // Each org's shape on both gateways, positioned after its snapshot; then a few changes,
    // so a live request at that position answers at once.
    let mut open_targets = Vec::new();
    let mut jwt_targets = Vec::new();
    for (org, org_token) in tokens.iter().enumerate().take(ORGS) {
        let filter = format!("where=org_id+%3D+%27org{org}%27");
        let (h, o) = settle(&client, &format!("{}/v1/shape?table=todos&{filter}", open.base()), None).await;
        open_targets
            .push(format!("{}/v1/shape?table=todos&{filter}&handle={h}&offset={o}&live=true&cursor=", open.base()));
        let (h, o) = settle(&client, &format!("{}/v1/shape?table=todos", jwt.base()), Some(org_token)).await;
        jwt_targets.push(format!("{}/v1/shape?table=todos&handle={h}&offset={o}&live=true&cursor=", jwt.base()));
    }
    env.sql("update todos set title = title || '!' where id <= 100").await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let open_work: Vec<Target> = (0..100).map(|i| (open_targets[i % ORGS].clone(), None)).collect();
    let jwt_work: Vec<Target> = (0..100).map(|i| (jwt_targets[i % ORGS].clone(), Some(tokens[i].clone()))).collect();

    println!("auth: long-poll requests/s, {workers} workers, {rounds} interleaved rounds of {seconds} s");
    let mut ratios = Vec::new();
    for round in 0..rounds {
        let reference = rate(&client, &open_work, workers, seconds).await;
        let with_auth = rate(&client, &jwt_work, workers, seconds).await;
        let ratio = with_auth / reference;
        println!("  round {round}: --auth none {reference:.0}/s, --auth jwt {with_auth:.0}/s, ratio {ratio:.2}");
        ratios.push(ratio);
    }
    println!("auth: median ratio jwt / none = {:.2} (target ≥ 0.9)", median(ratios));
    open.terminate();
    jwt.terminate();
}

/// Follows a shape to its first up-to-date; returns its handle and offset.
async fn settle(client: &reqwest::Client, url: &str, token: Option<&str>) -> (String, String) {
    let (mut handle, mut offset) = (String::new(), "-1".to_string());
    loop {
        let handle_param = if handle.is_empty() { String::new() } else { format!("&handle={handle}") };
        let mut req = client.get(format!("{url}&offset={offset}{handle_param}"));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        let r = req.send().await.unwrap();
        assert_eq!(r.status(), 200, "{url}");
        handle = r.headers()["electric-handle"].to_str().unwrap().to_string();
        offset = r.headers()["electric-offset"].to_str().unwrap().to_string();
        let done = r.headers().contains_key("electric-up-to-date");
        r.bytes().await.unwrap();
        if done {
            return (handle, offset);
        }
    }
}

/// Completed requests per second over `seconds`, `workers` at a time.
async fn rate(client: &reqwest::Client, work: &[Target], workers: usize, seconds: f64) -> f64 {
    let done = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs_f64(seconds);
    let started = Instant::now();
    futures::stream::iter(0..workers)
        .for_each_concurrent(workers, |w| {
            let (client, done) = (client.clone(), done.clone());
            async move {
                let mut i = w;
                while Instant::now() < deadline {
                    let (url, token) = &work[i % work.len()];
                    let mut req = client.get(url);
                    if let Some(t) = token {
                        req = req.bearer_auth(t);
                    }
                    let r = req.send().await.unwrap();
                    assert_eq!(r.status(), 200);
                    r.bytes().await.unwrap();
                    done.fetch_add(1, Ordering::Relaxed);
                    i += workers;
                }
            }
        })
        .await;
    done.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64()
}
