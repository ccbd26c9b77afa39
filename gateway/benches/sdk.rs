//! The client SDK in headless Chromium: rows/s mirrored into IndexedDB for a 100,000-row
//! snapshot against a hand-written reference (fetch the same shape and put the rows in one
//! IndexedDB transaction, no typing), local-write → visible-in-another-tab latency against
//! a bare BroadcastChannel message, and the bundle size. The browser side is
//! `client-sdk/tests/mirror.bench.mjs`. Run: `cargo bench -p gateway --bench sdk` (after
//! `scripts/test.sh` or `build_sdk` built the SDK).

mod common;

use common::env_or;
use testkit::{Env, Gateway};

#[tokio::main]
async fn main() {
    let rows: u64 = env_or("BENCH_ROWS", 100_000);
    let rounds: u64 = env_or("BENCH_ROUNDS", 3);
    let sdk = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../client-sdk");
    assert!(sdk.join("js/pkg/sdk_bg.wasm").exists(), "build the SDK first: scripts/test.sh does (build_sdk)");
    let env = Env::new().await;
    env.sql("create table wide (id int4 primary key, title text, big int8, amount float8, done bool, note text)").await;
    env.sql(&format!(
        "insert into wide select g, 'row ' || g, g * 1000, g / 7.0, g % 2 = 0, repeat('x', 40) from generate_series(1, {rows}) g"
    ))
    .await;
    let mut gw = Gateway::start(&env.url, &env.data_dir, &["--chunk-bytes", "10485760"]);
    gw.ready().await;
    let status = std::process::Command::new("node")
        .arg("mirror.bench.mjs")
        .current_dir(sdk.join("tests"))
        .env("GATEWAY_URL", gw.base())
        .env("BENCH_ROWS", rows.to_string())
        .env("BENCH_ROUNDS", rounds.to_string())
        .status()
        .expect("run node");
    assert!(status.success(), "the browser benchmark failed; gateway log:\n{}", gw.log());
}
