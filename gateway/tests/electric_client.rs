//! The official `@electric-sql/client` (npm) against the gateway: runs the Node suites in
//! `tests/electric-client/` with a fresh PostgreSQL and gateway.

use serde_json::json;

use crate::auth::{SCHEMA, SECRET, jwt_gateway, token};
use testkit::{Env, Gateway, node_suite};

/// Runs one Node test file of `tests/electric-client/` against `gw`.
async fn run_suite(env: &Env, gw: &Gateway, file: &str, extra: Vec<(&'static str, String)>, tests: usize) {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/electric-client");
    assert!(
        dir.join("node_modules/@electric-sql/client").exists(),
        "the Node packages are missing: run `npm ci` in {} (scripts/test.sh does)",
        dir.display()
    );
    node_suite(&dir, file, env, gw, extra, tests).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn official_client_passes_its_protocol_suite() {
    let env = Env::new().await;
    let mut gw = env.gateway_with(&["--chunk-bytes", "65536"]);
    gw.ready().await;
    run_suite(&env, &gw, "client.test.mjs", Vec::new(), 11).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn official_client_with_a_token_reads_only_its_scope() {
    let env = Env::new().await;
    env.sql(SCHEMA).await;
    let gw = jwt_gateway(&env, &["--jwt-secret", SECRET, "--chunk-bytes", "65536"]).await;
    let tokens = vec![("TOKEN_A", token(json!({"org_id": "org1"}))), ("TOKEN_B", token(json!({"org_id": "org2"})))];
    run_suite(&env, &gw, "auth.test.mjs", tokens, 2).await;
}
