//! Operating the gateway: `/metrics` carries every documented metric with bounded labels,
//! and the WAL budget acts in stages when the slot holds too much WAL.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::auth::{SCHEMA, SECRET, jwt_gateway, token};
use crate::faults::SmallDisk;
use testkit::{Env, Gateway, Response, connect, current_wal, get_as, metric_sum, slot_confirmed};

#[tokio::test]
async fn metrics_carry_every_documented_name_and_no_client_values() {
    let env = Env::new().await;
    env.sql(SCHEMA).await;
    let gw = jwt_gateway(&env, &["--jwt-secret", SECRET]).await;
    let base = gw.base();
    let org = token(json!({"org_id": "org3"}));
    let admin = token(json!({"gateway_admin": true, "sub": "ops"}));

    let first = get_as(&format!("{base}/v1/shape?table=todos&offset=-1"), Some(&org)).await;
    assert_eq!(first.status, 200);
    let (handle, offset) = (header(&first, "electric-handle"), header(&first, "electric-offset"));
    // A live long-poll that times out (1.5 s in tests) makes a subscriber for a while.
    let live =
        get_as(&format!("{base}/v1/shape?table=todos&handle={handle}&offset={offset}&live=true"), Some(&org)).await;
    assert_eq!(live.status, 200);
    assert_eq!(get_as(&format!("{base}/v1/shape?table=todos&offset=-1"), None).await.status, 401);
    let push = testkit::http()
        .post(format!("{base}/v1/outbox"))
        .bearer_auth(&admin)
        .header("content-type", "application/json")
        .body(
            json!({"client_id": "ops", "mutations": [
                {"id": 1, "table": "todos", "op": "update", "key": {"id": 3}, "value": {"title": "x"}},
                {"id": 2, "table": "no_such_table_e5c1", "op": "delete", "key": {"id": 1}}]})
            .to_string(),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(push.status(), 200);

    // The fan-out's series appear once it has stored a transaction.
    env.sql("update todos set title = 'y' where id = 4").await;
    let started = std::time::Instant::now();
    let text = loop {
        let text = testkit::http().get(format!("{base}/metrics")).send().await.unwrap().text().await.unwrap();
        let missing = gateway::telemetry::METRICS.iter().find(|(name, ..)| !text.contains(name));
        match missing {
            None => break text,
            Some((name, ..)) if started.elapsed() > testkit::DEADLINE => {
                panic!("{name} missing from /metrics:\n{text}")
            }
            Some(_) => tokio::time::sleep(std::time::Duration::from_millis(50)).await,
        }
    };
    assert!(text.contains(r#"route="/v1/shape""#), "requests are labelled by route pattern:\n{text}");
    assert!(text.contains(r#"reason="missing""#), "auth failures carry their reason:\n{text}");
    assert!(text.contains(r#"table="unknown""#), "unknown tables do not become labels:\n{text}");
    for private in ["org3", "no_such_table_e5c1", org.as_str(), admin.as_str()] {
        assert!(!text.contains(private), "/metrics leaks {private:?}");
    }
}

fn header(r: &Response, name: &str) -> String {
    r.headers[name].to_str().unwrap().to_string()
}

/// The WAL budget stage, as `/readyz` reports it.
async fn stage(base: &str) -> Option<String> {
    let r = testkit::http().get(format!("{base}/readyz")).send().await.ok()?;
    let body: Value = serde_json::from_slice(&r.bytes().await.ok()?).ok()?;
    body["slot"]["stage"].as_str().map(str::to_string)
}

#[tokio::test]
async fn the_wal_budget_warns_then_pauses_new_shapes_then_stops_or_recreates_the_slot() {
    let env = Env::new().await;
    env.sql("create table filler (id serial primary key, pad text); create table later (id int primary key)").await;
    let budget = ["--max-retained-wal", "16MB"];
    // The data dir is on a small disk, so that the gateway can be stalled (its disk filled);
    // large enough that its own logs and journal do not fill it before that.
    let disk = SmallDisk::mount(&env.pg.root().join("small-disk"), "512m");
    let data_dir = disk.0.join("data");
    let mut gw = Gateway::start(&env.url, &data_dir, &budget);
    gw.ready().await;
    let base = gw.base();
    let old = get_as(&format!("{base}/v1/shape?table=filler&offset=-1"), None).await;
    assert_eq!(old.status, 200);
    // An open transaction keeps the slot's restart position, so all WAL written after it
    // stays on the server, as it would behind a stalled gateway.
    let holder = connect(&env.url).await;
    holder.batch_execute("begin; insert into filler (pad) values ('hold')").await.unwrap();
    let fill = "insert into filler (pad) select repeat(md5(i::text), 32) from generate_series(1, 1000) i";
    let started = Instant::now();
    let mut seen = Vec::new();
    // Filled to ~80% of the budget and no further: the monitor samples every few seconds,
    // and a fast machine would otherwise write past the whole budget between two samples.
    let retained =
        "select (pg_current_wal_lsn() - restart_lsn)::int8 from pg_replication_slots where slot_name = 'gateway'";
    while stage(&base).await.as_deref() != Some("pause_new_shapes") {
        assert!(started.elapsed() < Duration::from_secs(120), "stages seen: {seen:?}; log: {}", gw.log());
        if env.db.query_one(retained, &[]).await.unwrap().get::<_, i64>(0) < 13 << 20 {
            env.sql(fill).await;
        }
        if let Some(s) = stage(&base).await
            && seen.last() != Some(&s)
        {
            seen.push(s);
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert!(gw.log().contains("over half the WAL budget"), "the warning stage is logged: {}", gw.log());
    let paused = get_as(&format!("{base}/v1/shape?table=later&offset=-1"), None).await;
    assert_eq!(paused.status, 503, "{}", paused.body);
    assert!(paused.body.to_string().contains("new shapes are paused"), "{}", paused.body);
    let published = "select count(*) from pg_publication_tables where pubname = 'gateway' and tablename = 'later'";
    let later_published = env.db.query_one(published, &[]).await.unwrap().get::<_, i64>(0);
    assert_eq!(later_published, 0, "a refused new shape changes nothing: its table is not published");
    assert_eq!(get_as(&format!("{base}/v1/shape?table=filler&offset=-1"), None).await.status, 200);
    let metrics = testkit::http().get(format!("{base}/metrics")).send().await.unwrap().text().await.unwrap();
    assert!(metrics.contains("gateway_wal_budget_stage 2"), "{metrics}");

    // The whole budget while the gateway keeps consuming the stream (the open transaction
    // holds the WAL, not the gateway): stopping would free nothing, so it stays up, saying so.
    let started = Instant::now();
    while !gw.log().contains("still consuming the stream") {
        assert!(started.elapsed() < Duration::from_secs(120), "no busy warning; log: {}", gw.log());
        assert_eq!(gw.exit_code(), None, "a gateway still consuming stopped: {}", gw.log());
        env.sql(fill).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    // Stalled (its disk full: it stores nothing and reads no further), the gateway stops
    // with the default action and says why.
    let filler = disk.fill();
    let started = Instant::now();
    while gw.exit_code().is_none() {
        assert!(started.elapsed() < Duration::from_secs(120), "gateway did not stop; log: {}", gw.log());
        env.sql(fill).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert_eq!(gw.exit_code(), Some(1));
    assert!(gw.log().contains("--wal-budget-action recreate-slot"), "{}", gw.log());

    // With recreate-slot, the gateway drops the slot, makes a new one once the holder is
    // gone, and every shape is refetched.
    std::fs::remove_file(filler).unwrap();
    let mut gw = Gateway::start(&env.url, &data_dir, &[budget[0], budget[1], "--wal-budget-action", "recreate-slot"]);
    let started = Instant::now();
    while !gw.log().contains("dropped the replication slot") {
        assert!(started.elapsed() < Duration::from_secs(60), "slot not dropped; log: {}", gw.log());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    holder.batch_execute("commit").await.unwrap();
    gw.ready().await;
    let base = gw.base();
    let stale = get_as(
        &format!(
            "{base}/v1/shape?table=filler&handle={}&offset={}",
            header(&old, "electric-handle"),
            header(&old, "electric-offset")
        ),
        None,
    )
    .await;
    assert_eq!(stale.status, 409, "shapes are refetched after the slot is recreated: {}", stale.body);
    assert_eq!(get_as(&format!("{base}/v1/shape?table=later&offset=-1"), None).await.status, 200);
}

/// Runs `gateway check-db` with `args`; returns its exit code and what it printed.
fn check_db(args: &[&str]) -> (i32, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_gateway")).arg("check-db").args(args).output().unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.code().unwrap_or(-1), text)
}

#[tokio::test]
async fn check_db_reports_each_problem_with_its_fix_and_serve_refuses_blockers() {
    let env = Env::with(gateway::devdb::DevOptions {
        settings: vec![("wal_level".into(), "replica".into())],
        ..Default::default()
    })
    .await;
    env.sql("create table nopk (a int); create role weak login; grant select on nopk to weak").await;
    let config = env.data_dir.with_extension("toml");
    std::fs::write(&config, "[[table]]\nname = \"public.nopk\"\n").unwrap();
    let weak = env.url.replacen("postgres://postgres@", "postgres://weak@", 1);
    let (code, text) = check_db(&["--database-url", &weak, "--config", config.to_str().unwrap()]);
    assert_eq!(code, 1, "{text}");
    for expected in [
        "BLOCKER wal_level = replica",
        "fix: ALTER SYSTEM SET wal_level = logical",
        "BLOCKER role weak lacks REPLICATION",
        "fix: ALTER ROLE \"weak\" WITH REPLICATION",
        "BLOCKER publication \"gateway\" is missing",
        "fix: CREATE PUBLICATION \"gateway\"",
        "WARNING \"public\".\"nopk\" has no primary key",
        "fix: ALTER TABLE \"public\".\"nopk\" ADD PRIMARY KEY",
        "WARNING max_slot_wal_keep_size is unlimited",
    ] {
        assert!(text.contains(expected), "{expected:?} missing from:\n{text}");
    }

    let mut gw = testkit::Gateway::start(&weak, &env.data_dir, &["--config", config.to_str().unwrap()]);
    assert_eq!(gw.exit_within(Duration::from_secs(30)).await, Some(1), "serve started despite blockers: {}", gw.log());
    assert!(gw.log().contains("BLOCKER wal_level = replica"), "{}", gw.log());
    assert!(!gw.log().contains("ok      PostgreSQL"), "serve names only the blockers: {}", gw.log());
}

#[tokio::test]
async fn check_db_passes_a_ready_database() {
    let env = Env::new().await;
    env.sql("create table items (id int primary key)").await;
    let config = env.data_dir.with_extension("toml");
    std::fs::write(&config, "[[table]]\nname = \"public.items\"\n").unwrap();
    let (code, text) = check_db(&["--database-url", &env.url, "--config", config.to_str().unwrap()]);
    assert_eq!(code, 0, "{text}");
    assert!(text.contains("0 blocker(s)"), "{text}");
    assert!(text.contains("is not published yet; the gateway adds it"), "{text}");
}

#[tokio::test]
async fn slot_drop_removes_only_our_stopped_slot_and_on_request_the_publication() {
    let env = Env::new().await;
    env.sql("select pg_create_logical_replication_slot('someone_else', 'pgoutput')").await;
    let mut gw = env.ready_gateway().await;
    let run = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_gateway")).args(args).output().unwrap();
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        (out.status.success(), text)
    };
    let (ok, text) = run(&["slot", "drop", "--database-url", &env.url]);
    assert!(!ok && text.contains("stop the gateway that streams from it first"), "{text}");
    let (ok, text) = run(&["slot", "drop", "--database-url", &env.url, "--slot", "someone_else"]);
    assert!(!ok && text.contains("must start with \"gateway\""), "{text}");
    gw.terminate();
    // The gateway has exited; PostgreSQL's walsender for it may take a moment longer.
    let (ok, text) = run(&["slot", "drop", "--database-url", &env.url, "--drop-publication", "--wait-s", "10"]);
    assert!(ok, "{text}");
    assert!(text.contains("dropped replication slot \"gateway\"; dropped publication \"gateway\""), "{text}");
    let slots: Vec<String> = env
        .db
        .query("select slot_name::text from pg_replication_slots", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(slots, vec!["someone_else".to_string()]);
    let publications: i64 = env.db.query_one("select count(*) from pg_publication", &[]).await.unwrap().get(0);
    assert_eq!(publications, 0);
    let (ok, text) = run(&["slot", "drop", "--database-url", &env.url]);
    assert!(ok && text.contains("nothing to drop"), "{text}");
}

#[test]
fn print_config_shows_each_setting_with_its_source_and_hides_secrets() {
    let dir = std::env::temp_dir().join(format!("gateway-print-config-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("gateway.toml");
    std::fs::write(&file, "listen = \"127.0.0.1:4000\"\nsse_timeout_s = 90\n[[table]]\nname = \"public.todos\"\nscope = \"org_id = :org_id\"\n").unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_gateway"))
        .args(["serve", "--print-config", "--config", file.to_str().unwrap()])
        .args(["--database-url", "postgres://app:hunter2@db/app", "--jwt-secret", "very-secret"])
        .env("GATEWAY_SSE_TIMEOUT_S", "30")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}{}", String::from_utf8_lossy(&out.stderr));
    for expected in [
        "database_url = \"postgres://app:<redacted>@db/app\"  # flag",
        "listen = \"127.0.0.1:4000\"  # config file",
        "sse_timeout_s = \"30\"  # environment",
        "slot = \"gateway\"  # default",
        "jwt_secret = \"<redacted>\"  # flag",
        "[[table]]\nname = \"public.todos\"",
    ] {
        assert!(text.contains(expected), "{expected:?} missing from:\n{text}");
    }
    assert!(!text.contains("hunter2") && !text.contains("very-secret"), "{text}");
    std::fs::remove_dir_all(dir).unwrap();
}

#[tokio::test]
async fn heartbeats_keep_the_slot_moving_on_a_quiet_database() {
    let env = Env::new().await;
    let mut gw = env.gateway_with(&["--heartbeat-s", "1"]);
    gw.ready().await;
    // First the slot catches up with what start-up wrote.
    let started = Instant::now();
    while slot_confirmed(&env.db).await < current_wal(&env.db).await {
        assert!(started.elapsed() < Duration::from_secs(20), "the slot never caught up; log: {}", gw.log());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let before = slot_confirmed(&env.db).await;
    // Nothing writes now: heartbeats (one per 5 s check) add WAL and, once acknowledged,
    // move the slot.
    let started = Instant::now();
    while metric_sum(&gw.base(), "gateway_heartbeats_total", &[]).await < 1.0 || slot_confirmed(&env.db).await <= before
    {
        assert!(started.elapsed() < Duration::from_secs(30), "no heartbeat moved the slot; log: {}", gw.log());
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
