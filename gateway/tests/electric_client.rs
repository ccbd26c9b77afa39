//! The official `@electric-sql/client` (npm) against the gateway: runs the Node suite in
//! `tests/electric-client/` with a fresh PostgreSQL and gateway.

use std::process::Command;

use crate::support::Env;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn official_client_passes_its_protocol_suite() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/electric-client");
    assert!(
        dir.join("node_modules/@electric-sql/client").exists(),
        "the Node packages are missing: run `npm ci` in {} (scripts/test.sh does)",
        dir.display()
    );
    let env = Env::new().await;
    let mut gw = env.gateway_with(&["--chunk-bytes", "65536"]);
    gw.ready().await;
    let out = tokio::task::spawn_blocking({
        let (base, url, dir) = (gw.base(), env.url.clone(), dir.clone());
        move || {
            Command::new("node")
                .args(["--test", "--test-concurrency=1", "client.test.mjs"])
                .current_dir(dir)
                .env("GATEWAY_URL", base)
                .env("DATABASE_URL", url)
                .output()
                .expect("run node")
        }
    })
    .await
    .unwrap();
    let report = format!("{}\n{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "the official client's suite failed:\n{report}\ngateway log:\n{}", gw.log());
    assert!(report.contains("# pass 8") && report.contains("# fail 0"), "all eight client tests ran:\n{report}");
}
