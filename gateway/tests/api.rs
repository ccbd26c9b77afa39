//! The HTTP surface: errors, headers, 409s, SSE, the OpenAPI document.

use futures::StreamExt;
use serde_json::Value;

use testkit::{Env, Follower, ITEMS, get, reason};

#[tokio::test]
async fn bad_requests_get_json_errors_that_name_the_fix() {
    let env = Env::new().await;
    env.sql(ITEMS).await;
    let gw = env.ready_gateway().await;
    let cases = [
        ("table=items", 400, "offset"),
        ("offset=-1", 400, "table"),
        ("table=nope&offset=-1", 400, "does not exist"),
        ("table=items&offset=12", 400, "offset"),
        ("table=items&offset=-1&where=nope%3D1", 400, "unknown column"),
        ("table=items&offset=-1&where=id%3D(select%201)", 400, "subquery"),
        ("table=items&offset=-1&where=id%3D1%3B%20drop%20table%20items", 400, "syntax"),
        ("table=items&offset=-1&where=title%3D%27x%27)%20or%20(1%3D1", 400, "syntax"),
        ("table=items&offset=-1&where=id%3D%241", 400, "params[1]"),
        ("table=items&offset=-1&columns=title", 400, "primary key"),
        ("table=items&offset=-1&columns=id,zzz", 400, "not found"),
        ("table=items&offset=0_0", 400, "handle"),
        ("table=items&offset=-1&live=true", 400, "live"),
    ];
    for (q, status, needle) in cases {
        let r = get(&format!("{}/v1/shape?{q}", gw.base())).await;
        assert_eq!(r.status, status, "{q}: {}", r.body);
        let msg = reason(&r.body).to_lowercase();
        assert!(msg.contains(&needle.to_lowercase()), "{q}: {msg}");
        assert_eq!(r.body["message"], "Invalid request", "{q}: Electric's body");
        assert_eq!(r.headers["cache-control"], "no-store");
    }
    let count: i64 = env.db.query_one("select count(*) from items", &[]).await.unwrap().get(0);
    assert_eq!(count, 0);
    let tables: i64 =
        env.db.query_one("select count(*) from pg_tables where tablename = 'items'", &[]).await.unwrap().get(0);
    assert_eq!(tables, 1, "injection attempts reached nothing");
}

#[tokio::test]
async fn protocol_headers_etags_and_409s() {
    let env = Env::new().await;
    env.sql(ITEMS).await;
    let gw = env.ready_gateway().await;
    let r = get(&format!("{}/v1/shape?table=items&offset=-1", gw.base())).await;
    assert_eq!(r.status, 200);
    let handle = r.headers["electric-handle"].to_str().unwrap().to_string();
    assert_eq!(r.headers["electric-offset"], "0_0");
    assert!(r.headers.contains_key("electric-schema"));
    assert!(r.headers["access-control-expose-headers"].to_str().unwrap().contains("electric-handle"));
    assert!(
        r.body.as_array().unwrap().iter().all(|m| m["headers"]["control"] != "up-to-date"),
        "no up-to-date on offset=-1"
    );
    assert_eq!(r.body.as_array().unwrap().last().unwrap()["headers"]["control"], "snapshot-end");

    // Same definition, different spelling: same handle.
    let again = get(&format!("{}/v1/shape?table=public.ITEMS&offset=-1&where=", gw.base())).await;
    assert_eq!(again.headers["electric-handle"].to_str().unwrap(), handle);

    let etag = r.headers["etag"].to_str().unwrap().to_string();
    let client = testkit::http();
    let cached = client
        .get(format!("{}/v1/shape?table=items&offset=-1", gw.base()))
        .header("if-none-match", etag)
        .send()
        .await
        .unwrap();
    assert_eq!(cached.status(), 304);

    let stale = get(&format!("{}/v1/shape?table=items&offset=0_0&handle=1-2", gw.base())).await;
    assert_eq!(stale.status, 409);
    assert_eq!(stale.headers["electric-handle"].to_str().unwrap(), handle);
    assert_eq!(stale.body, serde_json::json!([{"headers": {"control": "must-refetch"}}]));

    let live = get(&format!("{}/v1/shape?table=items&offset=0_inf&handle={handle}&live=true&cursor=", gw.base())).await;
    assert_eq!(live.status, 200, "a timed-out long-poll is a 200");
    assert!(live.headers.contains_key("electric-cursor"));
    assert!(live.headers.contains_key("electric-up-to-date"));
    assert_eq!(live.headers["electric-offset"], "0_inf");

    let del =
        testkit::http().delete(format!("{}/v1/shape?table=items&handle={handle}", gw.base())).send().await.unwrap();
    assert_eq!(del.status(), 202);
    let gone = get(&format!("{}/v1/shape?table=items&offset=0_inf&handle={handle}", gw.base())).await;
    assert_eq!(gone.status, 409);
    assert_ne!(gone.headers["electric-handle"].to_str().unwrap(), handle, "a new handle, never the old one");
}

#[tokio::test]
async fn snapshot_chunks_are_json_arrays_with_exact_lengths_holding_each_row_once() {
    let env = Env::new().await;
    env.sql(ITEMS).await;
    env.sql("insert into items select i, 'o', repeat('t', 400), 0 from generate_series(1, 12000) i").await;
    // Chunks of 1 MiB: the first ones are served from memory while the snapshot is written
    // (in 1 MiB blocks, by its writer thread), the others from the file.
    let mut gw = env.gateway_with(&["--chunk-bytes", "1048576"]);
    gw.ready().await;
    let (mut offset, mut handle, mut ids) = ("-1".to_string(), String::new(), Vec::new());
    let mut chunks = 0;
    loop {
        let r =
            reqwest::get(format!("{}/v1/shape?table=items&offset={offset}&handle={handle}", gw.base())).await.unwrap();
        assert_eq!(r.status(), 200);
        offset = r.headers()["electric-offset"].to_str().unwrap().to_string();
        handle = r.headers()["electric-handle"].to_str().unwrap().to_string();
        let length: Option<u64> = r.headers().get("content-length").map(|v| v.to_str().unwrap().parse().unwrap());
        let up_to_date = r.headers().contains_key("electric-up-to-date");
        let body = r.bytes().await.unwrap();
        let messages: Vec<Value> = serde_json::from_slice(&body).expect("a JSON array");
        ids.extend(messages.iter().filter_map(|m| m["value"]["id"].as_str().map(str::to_string)));
        if up_to_date {
            break;
        }
        assert_eq!(length, Some(body.len() as u64), "chunk {chunks} says its length");
        chunks += 1;
    }
    assert!(chunks > 3, "{chunks} chunks");
    ids.sort_by_key(|id| id.parse::<u32>().unwrap());
    assert_eq!(ids, (1..=12000).map(|i| i.to_string()).collect::<Vec<_>>());
}

#[tokio::test]
async fn a_gateway_reaching_postgres_by_its_unix_socket_snapshots_and_streams() {
    // Snapshot sessions open their socket themselves (to merge COPY output): a Unix socket
    // must work as it does for tokio-postgres.
    let env = Env::new().await;
    env.sql(ITEMS).await;
    env.sql("insert into items select i, 'o', 't', 0 from generate_series(1, 500) i").await;
    let url = format!("host={} port={} user=postgres dbname=postgres", env.pg.root().display(), env.pg.port());
    let mut gw = testkit::Gateway::start(&url, &env.data_dir, &[]);
    gw.ready().await;
    let mut follower = Follower::new(&gw, "table=items");
    follower.sync().await;
    assert_eq!(follower.rows.len(), 500);
    env.sql("insert into items values (501, 'o', 't', 0)").await;
    follower.live_until(|rows| rows.len() == 501).await;
}

#[tokio::test]
async fn an_idle_shape_resumes_from_the_global_last_seen_lsn() {
    let env = Env::new().await;
    env.sql(ITEMS).await;
    env.sql("create table other (id int4 primary key)").await;
    let gw = env.ready_gateway().await;
    let base = gw.base();
    let idle = get(&format!("{base}/v1/shape?table=items&offset=-1")).await;
    let handle = idle.headers["electric-handle"].to_str().unwrap().to_string();
    assert_eq!(get(&format!("{base}/v1/shape?table=other&offset=-1")).await.status, 200);
    env.sql("insert into other values (1)").await;
    // A transaction on another table moves the global position; this shape's log stays put.
    let lsn = loop {
        let r = get(&format!("{base}/v1/shape?table=items&offset=0_inf&handle={handle}&live=true&cursor=")).await;
        let seen = r.body.as_array().unwrap().iter().find_map(|m| m["headers"]["global_last_seen_lsn"].as_str());
        if let Some(lsn) = seen.filter(|l| *l != "0") {
            break lsn.to_string();
        }
    };
    let resumed = get(&format!("{base}/v1/shape?table=items&offset={lsn}_0&handle={handle}&live=true&cursor=")).await;
    assert_eq!(resumed.status, 200, "`<global_last_seen_lsn>_0` is a valid resume point: {:?}", resumed.body);
    env.sql("insert into items (id, org, title) values (9001, 'o', 'after')").await;
    let next = get(&format!("{base}/v1/shape?table=items&offset={lsn}_0&handle={handle}&live=true&cursor=")).await;
    assert!(next.body.to_string().contains("9001"), "the next change comes after it: {}", next.body);
}

#[tokio::test]
async fn sse_streams_each_message_and_up_to_date() {
    let env = Env::new().await;
    env.sql(ITEMS).await;
    let gw = env.ready_gateway().await;
    let mut f = Follower::new(&gw, "table=items");
    f.sync().await;
    let url = format!(
        "{}/v1/shape?table=items&offset={}&handle={}&live=true&live_sse=true&cursor=",
        gw.base(),
        f.offset,
        f.handle.clone().unwrap()
    );
    let resp = testkit::http().get(url).header("accept", "text/event-stream").send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    assert!(resp.headers().contains_key("electric-cursor"));
    let mut stream = resp.bytes_stream();
    // Nothing new: nothing is sent (Electric sends only keep-alives), since the client
    // already holds its up-to-date and would take another for a new batch.
    let quiet = tokio::time::timeout(std::time::Duration::from_secs(1), stream.next()).await;
    assert!(quiet.is_err(), "an idle stream sent {quiet:?}");
    env.sql("insert into items values (1, 'o', 'a', 1), (2, 'o', 'b', 2)").await;
    let mut text = String::new();
    let mut events: Vec<Value> = Vec::new();
    let deadline = tokio::time::Instant::now() + testkit::DEADLINE;
    while events.last().is_none_or(|e| e["headers"]["control"] != "up-to-date") {
        let chunk = tokio::time::timeout_at(deadline, stream.next())
            .await
            .expect("events in time")
            .expect("stream open")
            .unwrap();
        text.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(end) = text.find("\n\n") {
            let event: String = text.drain(..end + 2).collect();
            for line in event.lines() {
                if let Some(data) = line.strip_prefix("data: ").or_else(|| line.strip_prefix("data:")) {
                    events.push(serde_json::from_str(data).unwrap());
                }
            }
        }
    }
    assert_eq!(events.len(), 3, "the transaction's two rows, then one up-to-date: {events:?}");
    assert!(events.iter().filter(|e| e.get("key").is_some()).all(|e| e["headers"]["operation"] == "insert"));
}

#[tokio::test]
async fn every_documented_route_answers() {
    let env = Env::new().await;
    let gw = env.ready_gateway().await;
    let spec = get(&format!("{}/v1/openapi.json", gw.base())).await.body;
    for (path, ops) in spec["paths"].as_object().unwrap() {
        for method in ops.as_object().unwrap().keys() {
            let r = testkit::http()
                .request(method.to_uppercase().parse().unwrap(), format!("{}{path}", gw.base()))
                .send()
                .await
                .unwrap();
            assert_ne!(r.status(), 404, "{method} {path} is documented but not routed");
        }
    }
    assert_eq!(get(&format!("{}/v1/health", gw.base())).await.body["status"], "active");
    assert_eq!(get(&format!("{}/nope", gw.base())).await.status, 404);
}

#[tokio::test]
async fn demo_serves_each_org_its_todos_with_printed_tokens_and_cleans_up_on_ctrl_c() {
    use std::io::BufRead;
    gateway::install_tls_provider();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_gateway"))
        .args(["demo", "--listen", &format!("127.0.0.1:{port}")])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // A failing assertion still stops the demo (and its database).
    struct StopOnDrop(u32);
    impl Drop for StopOnDrop {
        fn drop(&mut self) {
            let _ = std::process::Command::new("kill").args(["-INT", &self.0.to_string()]).status();
        }
    }
    let _stop = StopOnDrop(child.id());
    // What the demo prints, up to its last line.
    let stdout = child.stdout.take().unwrap();
    let printed: Vec<String> = tokio::task::spawn_blocking(move || {
        let mut lines = Vec::new();
        for line in std::io::BufReader::new(stdout).lines() {
            let line = line.unwrap();
            let last = line.starts_with("Ctrl-C stops everything");
            lines.push(line);
            if last {
                break;
            }
        }
        lines
    })
    .await
    .unwrap();
    let find = |prefix: &str| {
        printed
            .iter()
            .find_map(|l| l.trim().strip_prefix(prefix))
            .map(str::to_string)
            .unwrap_or_else(|| panic!("the demo prints {prefix:?}: {printed:?}"))
    };
    let (acme, globex, pg_url) =
        (find("acme token: "), find("globex token: "), find("gateway demo is running: PostgreSQL at "));
    let base = format!("http://127.0.0.1:{port}");
    let url = format!("{base}/v1/shape?table=todos&offset=-1");
    let started = std::time::Instant::now();
    let rows = |token: String| {
        let url = url.clone();
        async move {
            loop {
                let r = testkit::get_as(&url, Some(&token)).await;
                if r.status == 200 {
                    let orgs: Vec<String> = r
                        .body
                        .as_array()
                        .unwrap()
                        .iter()
                        .filter_map(|m| m["value"]["org_id"].as_str())
                        .map(str::to_string)
                        .collect();
                    return orgs;
                }
                assert!(started.elapsed() < testkit::DEADLINE, "demo never served: {} {}", r.status, r.body);
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
        }
    };
    assert_eq!(rows(acme).await, vec!["acme"; 3], "acme's token sees acme's todos only");
    assert_eq!(rows(globex).await, vec!["globex"; 2]);
    assert_eq!(get(&url).await.status, 401, "the demo needs a token");
    assert_eq!(find("demo page: "), format!("{base}/demo"));
    let config = get(&format!("{base}/demo/config.json")).await.body;
    assert!(config["tokens"]["globex"].is_string(), "the page gets the orgs' tokens: {config}");
    for outside in ["/demo/js/..%2F..%2FCargo.toml", "/demo/Cargo.toml", "/demo/js/package.json"] {
        assert_eq!(get(&format!("{base}{outside}")).await.status, 404, "{outside} is not served");
    }
    // The example app, driven in Chromium.
    let sdk = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../client-sdk");
    let vars = vec![("DEMO_URL", base.clone()), ("DATABASE_URL", pg_url.clone())];
    testkit::run_node_suite(&sdk.join("tests"), "example.test.mjs", vars, 1, String::new).await;

    std::process::Command::new("kill").args(["-INT", &child.id().to_string()]).status().unwrap();
    let status = child.wait().unwrap();
    assert!(status.success(), "demo exits cleanly on Ctrl-C");
    assert!(tokio_postgres::connect(&pg_url, tokio_postgres::NoTls).await.is_err(), "the throwaway database is gone");
}

#[tokio::test]
async fn a_table_the_gateway_may_not_publish_gets_a_403_with_the_sql_to_run() {
    let env = Env::new().await;
    env.sql(ITEMS).await;
    env.sql("create role gw login replication; grant create on database postgres to gw; grant select on items to gw")
        .await;
    let url = env.url.replace("postgres@", "gw@");
    let mut gw = testkit::Gateway::start(&url, &env.data_dir, &[]);
    gw.ready().await;
    let r = get(&format!("{}/v1/shape?table=items&offset=-1", gw.base())).await;
    assert_eq!(r.status, 403, "{}", r.body);
    let msg = r.body["message"].as_str().unwrap();
    assert!(msg.contains("alter publication"), "{msg}");

    // Once a DBA publishes it (with full identity), the same request works.
    env.sql("alter table items replica identity full; alter publication gateway add table items").await;
    env.sql("insert into items values (1, 'o', 't', 1)").await;
    let mut f = Follower::new(&gw, "table=items&where=org%3D%27o%27");
    f.sync().await;
    assert_eq!(f.rows.len(), 1);
}

#[tokio::test]
async fn gateways_with_their_own_slot_publication_and_data_dir_share_a_database() {
    let env = Env::new().await;
    env.sql(ITEMS).await;
    let other_dir = env.data_dir.with_file_name("other-data");
    let mut a = env.gateway();
    let mut b = testkit::Gateway::start(&env.url, &other_dir, &["--slot", "gateway_second", "--publication", "second"]);
    a.ready().await;
    b.ready().await;
    let mut fa = Follower::new(&a, "table=items");
    let mut fb = Follower::new(&b, "table=items&where=org%3D%27b%27");
    fa.sync().await;
    fb.sync().await;
    env.sql("insert into items values (1, 'a', 't', 1), (2, 'b', 't', 2)").await;
    fa.live_until(|rows| rows.len() == 2).await;
    fb.live_until(|rows| rows.len() == 1).await;
    let slots: i64 =
        env.db.query_one("select count(*) from pg_replication_slots where active", &[]).await.unwrap().get(0);
    assert_eq!(slots, 2);
}

#[tokio::test]
async fn subset_snapshots_narrow_order_and_page_a_shape() {
    let env = Env::new().await;
    env.sql(ITEMS).await;
    env.sql("insert into items select i, 'o' || (i % 2), 't' || i, i from generate_series(1, 30) i").await;
    let gw = env.ready_gateway().await;
    let shape = "table=items&where=org%3D%27o1%27&log=changes_only";
    let first = get(&format!("{}/v1/shape?{shape}&offset=-1", gw.base())).await;
    assert_eq!(first.status, 200);
    let handle = first.headers["electric-handle"].to_str().unwrap().to_string();

    let sub = get(&format!(
        "{}/v1/shape?{shape}&offset=0_0&handle={handle}&subset__where=n+%3E+%241&subset__params=%7B%221%22%3A10%7D&subset__order_by=n+desc&subset__limit=3&subset__offset=1",
        gw.base()
    ))
    .await;
    assert_eq!(sub.status, 200, "{}", sub.body);
    assert_eq!(sub.headers["electric-snapshot"], "true");
    assert_eq!(sub.headers["cache-control"], "no-cache");
    assert_eq!(sub.headers["electric-offset"], "0_0", "the client's position is handed back unchanged");
    assert!(sub.headers.contains_key("electric-schema"));
    let n: Vec<i64> = sub.body["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["value"]["n"].as_str().unwrap().parse().unwrap())
        .collect();
    assert_eq!(n, vec![27, 25, 23], "the shape's filter, the subset's, its order and its page");
    let meta = &sub.body["metadata"];
    let mark = meta["snapshot_mark"].as_u64().unwrap();
    assert!(meta["xmin"].is_string() && meta["xmax"].is_string() && meta["xip_list"].is_array());
    assert!(meta["database_lsn"].as_str().unwrap().parse::<u64>().unwrap() > 0);
    for m in sub.body["data"].as_array().unwrap() {
        assert_eq!(m["headers"]["operation"], "insert");
        assert_eq!(m["headers"]["snapshot_mark"].as_u64(), Some(mark));
    }

    // The same subset in a POST body; nested under "subset" is accepted too.
    let posted = testkit::http()
        .post(format!("{}/v1/shape?{shape}&offset=0_0&handle={handle}", gw.base()))
        .header("content-type", "application/json")
        .body(
            r#"{"subset": {"where": "n > $1", "params": {"1": "10"}, "order_by": "n DESC", "limit": 3, "offset": 1}}"#,
        )
        .send()
        .await
        .unwrap();
    assert_eq!(posted.status(), 200);
    let body: Value = serde_json::from_slice(&posted.bytes().await.unwrap()).unwrap();
    assert_eq!(body["data"].as_array().unwrap().len(), 3);
    assert_eq!(body["data"][0]["value"]["n"], "27");

    let cases = [
        ("subset__limit=2", "order_by is required"),
        ("subset__order_by=lower(title)", "only column names"),
        ("subset__where=nope+%3D+1", "unknown column"),
        ("subset__where=n+%3D+(select+1)", "subquery"),
        ("subset__where=n+IN+(select+n+from+items)", "subquery"),
        ("subset__where=n+%3E+%241", "params[1]"),
        ("subset__where=1%2F(n-n)+%3D+1", "division by zero"),
    ];
    for (q, needle) in cases {
        let r = get(&format!("{}/v1/shape?{shape}&offset=0_0&handle={handle}&{q}", gw.base())).await;
        assert_eq!(r.status, 400, "{q}: {}", r.body);
        let msg = reason(&r.body);
        assert!(msg.contains(needle), "{q}: {msg}");
    }
    let stale =
        get(&format!("{}/v1/shape?{shape}&offset=0_0&handle=1-2&subset__limit=1&subset__order_by=id", gw.base())).await;
    assert_eq!(stale.status, 409);
}
