//! The Node suites (the official `@electric-sql/client`, the SDK in Chromium), run as child
//! processes and checked for every test passing.

use std::process::Command;

use crate::cluster::Env;
use crate::process::Gateway;

/// Runs the Node test file `file` in `dir` against `gw` and `env`'s database (as
/// `GATEWAY_URL`, `DATABASE_URL` and `PSQL`, plus `extra`), and checks that all `tests`
/// of it ran and passed.
pub async fn node_suite(
    dir: &std::path::Path,
    file: &str,
    env: &Env,
    gw: &Gateway,
    extra: Vec<(&'static str, String)>,
    tests: usize,
) {
    let mut vars = vec![("GATEWAY_URL", gw.base()), ("DATABASE_URL", env.url.clone())];
    vars.extend(extra);
    run_node_suite(dir, file, vars, tests, || gw.log()).await;
}

/// Runs `node --test file` in `dir` with `vars` (and `PSQL`); expects `tests` passing tests.
pub async fn run_node_suite(
    dir: &std::path::Path,
    file: &str,
    vars: Vec<(&'static str, String)>,
    tests: usize,
    log: impl FnOnce() -> String,
) {
    let psql = gateway::devdb::find_binaries().expect("PostgreSQL binaries").join("psql");
    let out = tokio::task::spawn_blocking({
        let (dir, file) = (dir.to_path_buf(), file.to_string());
        move || {
            Command::new("node")
                .args(["--test", "--test-concurrency=1", &file])
                .current_dir(dir)
                .env("PSQL", psql)
                .envs(vars)
                .output()
                .expect("run node")
        }
    })
    .await
    .unwrap();
    let report = format!("{}\n{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "the Node suite {file} failed:\n{report}\ngateway log:\n{}", log());
    assert!(
        report.contains(&format!("# pass {tests}")) && report.contains("# fail 0"),
        "all {tests} tests of {file} ran:\n{report}"
    );
}
