//! The client SDK (`client-sdk/`) in real headless Chromium against this gateway: runs the
//! Node/Playwright suite in `client-sdk/tests/`.

use serde_json::json;

use crate::auth::{SECRET, token};
use testkit::{Env, node_suite};

/// `items` takes every write; `notes` rejects stale ones by its version column; `memos`
/// are each user's own (`owner = :sub`); `checked` refuses what its check constraint does;
/// `dexie` is the query suite's own; `tasks` are those of the caller's projects (`members`).
const RULES: &str = r#"
[[table]]
name = "items"
write = ["insert", "update", "delete"]

[[table]]
name = "notes"
write = ["insert", "update", "delete"]
conflict = "reject_stale"
version_column = "version"

[[table]]
name = "dexie"
write = ["insert", "update", "delete"]

[[table]]
name = "checked"
write = ["insert", "update", "delete"]

[[table]]
name = "memos"
scope = "owner = :sub"
write = ["insert", "update", "delete"]

[[table]]
name = "tasks"
scope = "project_id IN (SELECT project_id FROM members WHERE user_id = :sub)"
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sdk_mirrors_shapes_and_syncs_its_outbox_in_chromium() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../client-sdk");
    for (path, fix) in [
        ("js/pkg/sdk_bg.wasm", "build the SDK: scripts/test.sh does (build_sdk in scripts/lib/setup.sh)"),
        ("tests/node_modules/playwright-core", "run `npm ci` in client-sdk/tests (scripts/test.sh does)"),
    ] {
        assert!(root.join(path).exists(), "{} is missing: {fix}", root.join(path).display());
    }
    let env = Env::new().await;
    env.sql(
        "create table items (id int4 primary key, title text, big int8, tags text[], doc jsonb, done bool,
                             stamp text not null default 'server');
         insert into items select i, 'item ' || i, i, array['a', 'b c'], jsonb_build_object('n', i), i % 2 = 0
         from generate_series(1, 50) i;
         create table notes (id int4 primary key, body text, version int4 not null default 1);
         insert into notes values (1, 'first', 1), (2, 'second', 1);
         create table memos (id int4 primary key, owner text not null, body text);
         insert into memos values (1, 'x', 'x memo'), (2, 'y', 'y memo');
         create table checked (id int4 primary key, n int4 constraint positive check (n > 0));
         create table dexie (id int4 primary key, title text, big int8, done bool);
         insert into dexie select i, 'item ' || i, i, i % 2 = 0 from generate_series(1, 10) i;
         create table members (user_id text, project_id int4, primary key (user_id, project_id));
         insert into members values ('sdk-test', 1), ('other', 2);
         create table tasks (id int4 primary key, project_id int4, title text);
         insert into tasks select i, i % 3, 'task ' || i from generate_series(1, 12) i;",
    )
    .await;
    let config = env.data_dir.with_extension("toml");
    std::fs::write(&config, RULES).unwrap();
    let mut gw = env.gateway_with(&["--auth", "jwt", "--jwt-secret", SECRET, "--config", config.to_str().unwrap()]);
    gw.ready().await;
    let token = token(json!({"sub": "sdk-test"}));
    node_suite(
        &root.join("tests"),
        "browser.test.mjs",
        &env,
        &gw,
        vec![("TOKEN", token), ("JWT_SECRET", SECRET.to_string())],
        22,
    )
    .await;
}
