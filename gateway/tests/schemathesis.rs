//! schemathesis (PyPI) against `/v1/openapi.json` on a live gateway: generated requests,
//! valid and broken, to every endpoint. No answer may be a 5xx, and every error is JSON.
//! `scripts/test.sh` installs it and sets SCHEMATHESIS; `SCHEMATHESIS_MAX_TIME` bounds it.

use std::process::Command;

use testkit::{Env, ITEMS};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generated_requests_never_get_a_5xx_and_errors_are_json() {
    let env = Env::new().await;
    env.sql(ITEMS).await;
    env.sql("insert into items select i, 'o' || (i % 3), 't', i from generate_series(1, 30) i").await;
    let gw = env.ready_gateway().await;
    let st = std::env::var("SCHEMATHESIS").unwrap_or_else(|_| "st".into());
    let max_time = std::env::var("SCHEMATHESIS_MAX_TIME").unwrap_or_else(|_| "60".into());
    let junit = env.pg.root().join("schemathesis.xml");
    let out = tokio::task::block_in_place(|| {
        Command::new(&st)
            // Its cache of crashes goes beside the test's cluster, not into the source tree.
            .current_dir(env.pg.root())
            .args(["run", &format!("{}/v1/openapi.json", gw.base())])
            .args(["--checks", "not_a_server_error,content_type_conformance"])
            .args(["--max-time", &max_time, "--workers", "2", "--seed", "1"])
            .args(["--suppress-health-check", "all", "--no-color", "--report", "junit"])
            .arg("--report-junit-path")
            .arg(&junit)
            .output()
            .unwrap_or_else(|e| panic!("{st}: {e}; scripts/test.sh installs schemathesis and sets SCHEMATHESIS"))
    });
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    // Judged by the checks' verdicts: a `<failure>` is a 5xx or a non-JSON error from the
    // gateway; an `<error>` is the tool failing to generate a case (shown, not fatal).
    let report = std::fs::read_to_string(&junit).unwrap_or_else(|e| panic!("no junit report ({e}):\n{text}"));
    let failures = report.matches("<failure").count();
    assert_eq!(failures, 0, "schemathesis found failures:\n{text}\ngateway log:\n{}", gw.log());
    let operations = report.matches("<testcase").count();
    assert!(operations >= 8, "every operation was exercised: {operations}\n{text}");
    if report.contains("<error") {
        eprintln!("schemathesis could not generate some cases (tool errors, not the gateway's):\n{text}");
    }
}
