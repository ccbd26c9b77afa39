//! The client SDK (`client-sdk/`) in real headless Chromium against this gateway: runs the
//! Node/Playwright suite in `client-sdk/tests/`.

use crate::support::{Env, node_suite};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sdk_mirrors_shapes_into_indexeddb_in_chromium() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../client-sdk");
    for (path, fix) in [
        ("js/pkg/sdk_bg.wasm", "build the SDK: scripts/test.sh does (build_sdk in scripts/lib/setup.sh)"),
        ("tests/node_modules/playwright-core", "run `npm ci` in client-sdk/tests (scripts/test.sh does)"),
    ] {
        assert!(root.join(path).exists(), "{} is missing: {fix}", root.join(path).display());
    }
    let env = Env::new().await;
    env.sql(
        "create table items (id int4 primary key, title text, big int8, tags text[], doc jsonb, done bool);
         insert into items select i, 'item ' || i, i, array['a', 'b c'], jsonb_build_object('n', i), i % 2 = 0
         from generate_series(1, 50) i",
    )
    .await;
    let gw = env.ready_gateway().await;
    node_suite(&root.join("tests"), "browser.test.mjs", &env, &gw, Vec::new(), 4).await;
}
