//! Attacks by a caller holding a valid token for org A, one test per class (the table in
//! docs/reliability.md names them). Each fails without its defence: the assertion is what
//! the undefended gateway did.

use std::time::{Duration, Instant};

use futures::StreamExt;
use serde_json::{Value, json};

use crate::auth::{SECRET, now, token};
use crate::outbox::push;
use testkit::{Env, Gateway, enc, get_as};

const SCHEMA: &str = "
create table todos (id int8 primary key, org_id text, title text not null, done bool default false,
                    secret text, constraint title_short check (length(title) < 100));
insert into todos values (1, 'A', 'a1', false, 'hush-A1'), (2, 'B', 'b1', false, 'hush-B1');
create table probe (id int4 primary key, org_id text, n int4, t text, d date, arr int4[], p text);
insert into probe values
  (1, 'A', 1, '1', '2000-01-01', '{1}', 'a'),
  (2, 'B', 42, 'not a number', '5874897-12-31', '{{1,2}}', 'ab');
create table stale (id int4 primary key, org_id text not null, body text, version int4 not null default 1);
insert into stale values (1, 'A', 'first', 3);
create table nokey (org_id text, title text, secret text);
";

const RULES: &str = r#"
[[table]]
name = "todos"
scope = "org_id = :org_id"
columns = ["id", "org_id", "title", "done"]
write = ["insert", "update", "delete"]

[[table]]
name = "probe"
scope = "org_id IN :orgs"

[[table]]
name = "stale"
scope = "org_id = :org_id"
write = ["insert", "update", "delete"]
conflict = "reject_stale"
version_column = "version"
"#;

async fn gateway(env: &Env, extra: &[&str]) -> Gateway {
    env.sql(SCHEMA).await;
    let config = env.data_dir.with_extension("toml");
    std::fs::write(&config, RULES).unwrap();
    let mut args = vec!["--auth", "jwt", "--jwt-secret", SECRET, "--config", config.to_str().unwrap()];
    args.extend_from_slice(extra);
    let mut gw = env.gateway_with(&args);
    gw.ready().await;
    gw
}

fn org_a() -> String {
    // Eight orgs, none of them B: the attacker's scope is wide but never reaches B's rows.
    token(json!({"org_id": "A", "orgs": ["A", "C", "D", "E", "F", "G", "H", "I"], "sub": "alice"}))
}

fn result(body: &Value) -> &Value {
    &body["results"][0]
}

/// Class 1: PostgreSQL's DETAIL ("Failing row contains (…)") named hidden columns' values.
#[tokio::test]
async fn outbox_errors_never_echo_row_values() {
    let env = Env::new().await;
    let gw = gateway(&env, &[]).await;
    let a = org_a();
    for (id, value, names) in [
        (1, json!({"title": null}), "\"title\" must not be null"),
        (2, json!({"title": "x".repeat(200)}), "title_short"),
    ] {
        let batch = json!({"client_id": "c", "mutations": [
            {"id": id, "table": "todos", "op": "update", "key": {"id": 1}, "value": value}]});
        let (status, body) = push(&gw, &a, batch).await;
        assert_eq!(status, 200, "{body}");
        let r = result(&body);
        assert_eq!(r["status"], "rejected", "{body}");
        let error = r["error"].as_str().unwrap();
        assert!(error.contains(names), "the reason names the constraint or column: {error}");
        assert!(!error.contains("hush") && !error.contains("Failing row"), "row values leaked: {error}");
    }
}

/// Class 2: a client filter that fails on some values told A about B's rows (scope and
/// filter were plain quals, evaluated in the planner's order).
#[tokio::test]
async fn client_expressions_never_run_outside_the_scope() {
    let env = Env::new().await;
    let gw = gateway(&env, &[]).await;
    let a = org_a();
    // Each fails on B's row only (1 / 0, 'not a number'::int4, 42 * 10^8 > int4, the last
    // date + 1, a 2-D array joined to a 1-D one, the square root of -1). Regular
    // expressions are not in the filter language at all.
    let constructs = [
        ("division", "(1 / (n - 42)) > 0"),
        ("cast", "CAST(t AS int4) > 0"),
        ("overflow", "n * 100000000 > 0"),
        ("date range", "d + 1 > '1999-01-01'"),
        ("array bounds", "array_ndims(arr || ARRAY[3]) > 0"),
        ("square root", "|/ (41 - n) >= 0"),
    ];
    let base = gw.base();
    for (what, filter) in constructs {
        let shape = get_as(&format!("{base}/v1/shape?table=probe&offset=-1&where={}", enc(filter)), Some(&a)).await;
        let subset = get_as(
            &format!("{base}/v1/shape?table=probe&offset=-1&subset__where={}&subset__order_by=id", enc(filter)),
            Some(&a),
        )
        .await;
        let post = testkit::http()
            .post(format!("{base}/v1/shape?table=probe&offset=-1"))
            .bearer_auth(&a)
            .header("content-type", "application/json")
            .body(json!({"where": filter, "order_by": "id"}).to_string())
            .send()
            .await
            .unwrap();
        for (how, status, body) in [
            ("shape", shape.status, shape.body.to_string()),
            ("subset", subset.status, subset.body.to_string()),
            ("post", post.status().as_u16(), post.text().await.unwrap()),
        ] {
            // Whatever the answer, it is not an error caused by B's row.
            assert_eq!(status, 200, "{what} via {how}: {body}");
            assert!(!body.contains("\"B\""), "{what} via {how}: {body}");
        }
    }
    // An error on A's own rows is told in the gateway's words, never PostgreSQL's (whose
    // message quotes the value).
    env.sql("insert into probe values (5, 'A', 1, 'quoted-value', '2000-01-01', '{1}', 'a')").await;
    let own =
        get_as(&format!("{base}/v1/shape?table=probe&offset=-1&where={}", enc("CAST(t AS int4) > -1")), Some(&a)).await;
    assert_eq!(own.status, 400, "{}", own.body);
    assert!(!own.body.to_string().contains("quoted-value"), "{}", own.body);
    assert!(own.body.to_string().contains("not valid input"), "{}", own.body);
    // Live: a row no scope admits (org_id NULL) with the poison value must not make A's
    // shape fail (evaluating A's filter on it would, and the shape would be rotated).
    let first =
        get_as(&format!("{base}/v1/shape?table=probe&offset=-1&where={}", enc(constructs[0].1)), Some(&a)).await;
    let handle = first.headers["electric-handle"].to_str().unwrap().to_string();
    env.sql("insert into probe values (3, null, 42, 'x', '2000-01-01', '{1}', 'a'); insert into probe values (4, 'A', 43, '2', '2000-01-01', '{1}', 'a')").await;
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut offset = first.headers["electric-offset"].to_str().unwrap().to_string();
    loop {
        let live = get_as(
            &format!(
                "{base}/v1/shape?table=probe&offset={offset}&handle={handle}&live=true&where={}",
                enc(constructs[0].1)
            ),
            Some(&a),
        )
        .await;
        assert_eq!(live.status, 200, "A's shape was not disturbed by a row outside its scope: {}", live.body);
        offset = live.headers["electric-offset"].to_str().unwrap().to_string();
        if live.body.to_string().contains("\"4\"") {
            break;
        }
        assert!(Instant::now() < deadline, "A's own row never arrived");
    }
}

/// Class 3: ordering a subset by a hidden column ranked rows by it.
#[tokio::test]
async fn ordering_by_a_hidden_column_is_refused() {
    let env = Env::new().await;
    let gw = gateway(&env, &[]).await;
    let a = org_a();
    let url = format!("{}/v1/shape?table=todos&offset=-1&subset__order_by=secret+desc&subset__limit=1", gw.base());
    let r = get_as(&url, Some(&a)).await;
    assert_eq!(r.status, 403, "{}", r.body);
    assert!(r.body["message"].as_str().unwrap().contains("\"secret\""), "{}", r.body);
    let post = testkit::http()
        .post(format!("{}/v1/shape?table=todos&offset=-1", gw.base()))
        .bearer_auth(&a)
        .header("content-type", "application/json")
        .body(json!({"order_by": "secret", "limit": 1}).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(post.status(), 403);
}

/// Class 4: without a primary key a row's key is every column, hidden ones included.
#[tokio::test]
async fn a_rule_cannot_hide_columns_of_a_table_without_a_primary_key() {
    let env = Env::new().await;
    env.sql(SCHEMA).await;
    let config = env.data_dir.with_extension("toml");
    std::fs::write(
        &config,
        "[[table]]\nname = \"nokey\"\nscope = \"org_id = :org_id\"\ncolumns = [\"org_id\", \"title\"]\n",
    )
    .unwrap();
    let mut gw = env.gateway_with(&["--auth", "jwt", "--jwt-secret", SECRET, "--config", config.to_str().unwrap()]);
    assert_eq!(gw.exit_within(Duration::from_secs(20)).await, Some(1), "{}", gw.log());
    assert!(gw.log().contains("add a primary key to the table or drop columns"), "{}", gw.log());
}

/// Class 5: a stream behind a large backlog, read slowly, went on past its token.
#[tokio::test]
async fn a_stream_behind_its_backlog_ends_with_its_token() {
    let env = Env::new().await;
    let gw = gateway(&env, &["--jwt-leeway-s", "1", "--sse-timeout-s", "120", "--chunk-bytes", "1048576"]).await;
    let t = token(json!({"org_id": "A", "exp": now() + 4}));
    let first = get_as(&format!("{}/v1/shape?table=todos&offset=-1", gw.base()), Some(&t)).await;
    let handle = first.headers["electric-handle"].to_str().unwrap().to_string();
    let offset = first.headers["electric-offset"].to_str().unwrap().to_string();
    // A backlog of ~30 MB in 15 transactions, then a row written after the token stopped
    // being honoured.
    for k in 0..15 {
        let (from, to) = (10 + k * 10_000, 9 + (k + 1) * 10_000);
        env.sql(&format!(
            "insert into todos select i, 'A', repeat('x', 90), false, 'h' from generate_series({from}, {to}) i"
        ))
        .await;
    }
    let url = format!("{}/v1/shape?table=todos&offset={offset}&handle={handle}&live=true&live_sse=true", gw.base());
    let resp = testkit::http().get(url).bearer_auth(&t).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let valid_until = now() + 5;
    let writer = {
        let url = env.url.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(valid_until.saturating_sub(now()) + 1)).await;
            let db = testkit::connect(&url).await;
            db.batch_execute("insert into todos values (1000000, 'A', 'late', false, 'h')").await.unwrap();
        })
    };
    let mut body = resp.bytes_stream();
    let mut seen = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(90), async {
        while let Some(chunk) = body.next().await {
            seen.extend_from_slice(&chunk.unwrap());
            tokio::time::sleep(Duration::from_millis(5)).await; // a slow reader
        }
    })
    .await;
    writer.await.unwrap();
    assert!(read.is_ok(), "the stream did not end");
    let text = String::from_utf8_lossy(&seen);
    assert!(!text.contains("late"), "a row written after the token's end was delivered");
}

/// Class 6: the ledger was keyed by client-chosen (client_id, mutation id) alone: B
/// replaying A's ids got A's results, and B claiming A's next id first made A's real write
/// a "duplicate" that was never applied.
#[tokio::test]
async fn the_outbox_ledger_belongs_to_its_caller() {
    let env = Env::new().await;
    let gw = gateway(&env, &[]).await;
    let alice = org_a();
    let bob = token(json!({"org_id": "B", "sub": "bob"}));
    let write = |id: u64, key: i64, title: &str, org: &str| {
        json!({"client_id": "tab-1", "mutations": [
            {"id": id, "table": "todos", "op": "upsert", "value": {"id": key, "org_id": org, "title": title}}]})
    };
    // B claims the client id and mutation id A is about to use.
    let (_, claimed) = push(&gw, &bob, write(1, 20, "bob's", "B")).await;
    assert_eq!(result(&claimed)["status"], "applied", "{claimed}");
    let (_, mine) = push(&gw, &alice, write(1, 10, "alice's", "A")).await;
    assert_eq!(result(&mine)["status"], "applied", "A's write is A's, whatever B sent: {mine}");
    // B replays A's ids: its own ledger, never A's results.
    let (_, replay) = push(&gw, &bob, write(1, 10, "bob's", "B")).await;
    assert_eq!(result(&replay)["status"], "duplicate", "{replay}");
    assert_eq!(result(&replay)["first"]["status"], "applied");
    assert!(!replay.to_string().contains("alice"), "{replay}");
    let db = testkit::connect(&env.url).await;
    let title = |id: i64| {
        let db = &db;
        async move { db.query_one("select title from todos where id = $1", &[&id]).await.unwrap().get::<_, String>(0) }
    };
    assert_eq!((title(10).await, title(20).await), ("alice's".to_string(), "bob's".to_string()));
    // A gap is refused whole, naming the next id; a batch's ids are consecutive.
    let (status, gap) = push(&gw, &alice, write(5, 11, "skipped", "A")).await;
    assert_eq!((status, &gap["error"], &gap["expected"]), (409, &json!("out_of_order"), &json!(2)), "{gap}");
    let split = json!({"client_id": "tab-1", "mutations": [
        {"id": 2, "table": "todos", "op": "delete", "key": {"id": 10}},
        {"id": 4, "table": "todos", "op": "delete", "key": {"id": 10}}]});
    assert_eq!(push(&gw, &alice, split).await.0, 400);
    assert_eq!(title(10).await, "alice's", "nothing of a refused batch applies");
    // Writes need a subject.
    let anonymous = token(json!({"org_id": "A", "sub": null}));
    let (status, body) = push(&gw, &anonymous, write(1, 12, "who?", "A")).await;
    assert_eq!(status, 403, "{body}");
}

/// Class 7: an upsert without `base` overwrote a row of a `reject_stale` table.
#[tokio::test]
async fn an_upsert_without_base_cannot_overwrite_a_checked_row() {
    let env = Env::new().await;
    let gw = gateway(&env, &[]).await;
    let a = org_a();
    let batch = json!({"client_id": "c", "mutations": [
        {"id": 1, "table": "stale", "op": "upsert", "value": {"id": 1, "org_id": "A", "body": "blind"}},
        {"id": 2, "table": "stale", "op": "upsert", "value": {"id": 2, "org_id": "A", "body": "new row"}}]});
    let (status, body) = push(&gw, &a, batch).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["results"][0]["status"], "conflict", "{body}");
    assert_eq!(body["results"][0]["row"]["version"], 3, "{body}");
    assert_eq!(body["results"][1]["status"], "applied", "an upsert may still create a row: {body}");
    let db = testkit::connect(&env.url).await;
    let row = db.query_one("select body, version from stale where id = 1", &[]).await.unwrap();
    assert_eq!((row.get::<_, String>(0), row.get::<_, i32>(1)), ("first".to_string(), 3));
}

/// Class 8: a write to a row whose scope column is NULL, and an `exp` past the clock's
/// range, panicked the handler and closed the connection without an answer.
#[tokio::test]
async fn no_panic_reaches_a_socket() {
    let env = Env::new().await;
    let gw = gateway(&env, &[]).await;
    env.sql("insert into todos values (3, null, 'orphan', false, 'h')").await;
    let a = org_a();
    let batch = json!({"client_id": "c", "mutations": [
        {"id": 1, "table": "todos", "op": "update", "key": {"id": 3}, "value": {"title": "mine"}},
        {"id": 2, "table": "todos", "op": "insert", "value": {"id": 4, "title": "no org"}}]});
    let (status, body) = push(&gw, &a, batch).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["results"][0]["status"], "conflict", "as a missing row: {body}");
    assert_eq!(body["results"][1]["status"], "rejected", "a row outside the scope: {body}");
    for exp in [json!(u64::MAX), json!(253_402_300_800u64), json!(1e300)] {
        let t = token(json!({"org_id": "A", "exp": exp}));
        let r = get_as(&format!("{}/v1/shape?table=todos&offset=-1", gw.base()), Some(&t)).await;
        assert_eq!(r.status, 401, "exp {exp}: {}", r.body);
        assert!(r.body["message"].is_string(), "a JSON reason: {}", r.body);
    }
    assert!(!gw.log().contains("panic"), "{}", gw.log());
}

/// Class 9: one tenant filled --max-shapes-per-table and locked the others out.
#[tokio::test]
async fn one_tenant_cannot_use_up_a_tables_shapes() {
    let env = Env::new().await;
    let gw = gateway(&env, &["--max-shapes-per-table", "20", "--max-shapes-per-scope", "5"]).await;
    let a = org_a();
    let b = token(json!({"org_id": "B"}));
    let shape = |k: usize| format!("{}/v1/shape?table=todos&offset=-1&where={}", gw.base(), enc(&format!("id <> {k}")));
    for k in 0..5 {
        assert_eq!(get_as(&shape(k), Some(&a)).await.status, 200);
    }
    let refused = get_as(&shape(5), Some(&a)).await;
    assert_eq!(refused.status, 429, "{}", refused.body);
    assert!(refused.body["message"].as_str().unwrap().contains("your scope"), "{}", refused.body);
    assert_eq!(get_as(&shape(0), Some(&b)).await.status, 200, "B's shapes are B's own");
}

/// Class 10: "outside your scope" for B's key, "applied" for a free one, told A which keys
/// B holds; a duplicate key's DETAIL echoed the key.
#[tokio::test]
async fn keys_outside_the_scope_answer_as_missing_ones() {
    let env = Env::new().await;
    let gw = gateway(&env, &[]).await;
    let a = org_a();
    let answer = |op: &str, id: i64| {
        let value = if op == "update" { json!({"title": "t"}) } else { Value::Null };
        let client = format!("{op}-{id}");
        json!({"client_id": client, "mutations": [{"id": 1, "table": "todos", "op": op, "key": {"id": id}, "value": value}]})
    };
    for op in ["update", "delete"] {
        let (_, theirs) = push(&gw, &a, answer(op, 2)).await;
        let (_, free) = push(&gw, &a, answer(op, 99)).await;
        let strip =
            |v: &Value| json!({"status": result(v)["status"], "error": result(v)["error"], "row": result(v)["row"]});
        assert_eq!(strip(&theirs), strip(&free), "{op}: B's key answers as a missing one");
    }
    let insert = json!({"client_id": "insert", "mutations": [
        {"id": 1, "table": "todos", "op": "insert", "value": {"id": 2, "org_id": "A", "title": "taken"}}]});
    let (_, body) = push(&gw, &a, insert).await;
    let error = result(&body)["error"].as_str().unwrap();
    assert!(!error.contains("(id)=(2)") && !error.contains("Key"), "{error}");
    let db = testkit::connect(&env.url).await;
    assert_eq!(db.query_one("select count(*) from todos where id = 2", &[]).await.unwrap().get::<_, i64>(0), 1);
}

/// Class 11: a second gateway on a busy data dir created its slot, then gave up, leaving
/// the slot to hold WAL.
#[tokio::test]
async fn a_gateway_refused_its_data_dir_leaves_no_slot_behind() {
    let env = Env::new().await;
    let _first = gateway(&env, &[]).await;
    let config = env.data_dir.with_extension("toml");
    let mut second = Gateway::start(
        &env.url,
        &env.data_dir,
        &["--auth", "jwt", "--jwt-secret", SECRET, "--config", config.to_str().unwrap(), "--slot", "gateway_second"],
    );
    assert_eq!(second.exit_within(Duration::from_secs(60)).await, Some(1));
    assert!(second.log().contains("gateway_second"), "the error names the slots: {}", second.log());
    let db = testkit::connect(&env.url).await;
    let slots: i64 = db
        .query_one("select count(*) from pg_replication_slots where slot_name = 'gateway_second'", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(slots, 0, "no slot was created");
}

/// Class 12: authenticated answers were `public, s-maxage=…`, storable by any shared cache.
#[tokio::test]
async fn authenticated_answers_stay_out_of_shared_caches_unless_vouched_for() {
    let env = Env::new().await;
    let gw = gateway(&env, &[]).await;
    let a = org_a();
    let first = get_as(&format!("{}/v1/shape?table=todos&offset=-1", gw.base()), Some(&a)).await;
    let cache = first.headers["cache-control"].to_str().unwrap();
    assert!(cache.starts_with("private") && !cache.contains("s-maxage") && !cache.contains("public"), "{cache}");
    let (handle, offset) =
        (first.headers["electric-handle"].to_str().unwrap(), first.headers["electric-offset"].to_str().unwrap());
    let live = get_as(&format!("{}/v1/shape?table=todos&offset={offset}&handle={handle}", gw.base()), Some(&a)).await;
    assert!(live.headers["cache-control"].to_str().unwrap().starts_with("private"));
    let refetch = get_as(&format!("{}/v1/shape?table=todos&offset={offset}&handle=1-1", gw.base()), Some(&a)).await;
    assert_eq!(refetch.status, 409);
    assert!(refetch.headers["cache-control"].to_str().unwrap().starts_with("private"));
}

/// Class 13: a NUL character reached PostgreSQL and came back as a 503 outage.
#[tokio::test]
async fn nul_characters_are_input_errors_not_outages() {
    let env = Env::new().await;
    let gw = gateway(&env, &[]).await;
    let a = org_a();
    let base = gw.base();
    for query in [
        "table=todos%00&offset=-1",
        "table=todos&offset=-1&where=title+%3D+%27a%00%27",
        "table=todos&offset=-1&where=title+%3D+%241&params%5B1%5D=a%00",
        "table=todos&offset=-1&subset__where=title+%3D+%27%00%27",
        "table=probe&offset=-1&where=p+%3D+%241&params%5B1%5D=%00",
    ] {
        let r = get_as(&format!("{base}/v1/shape?{query}"), Some(&a)).await;
        assert!((400..500).contains(&r.status), "{query}: {} {}", r.status, r.body);
    }
    let nul = "a\u{0}b";
    let batches = [
        json!({"client_id": nul, "mutations": [{"id": 1, "table": "todos", "op": "delete", "key": {"id": 1}}]}),
        json!({"client_id": "c", "mutations": [{"id": nul, "table": "todos", "op": "delete", "key": {"id": 1}}]}),
    ];
    for batch in batches {
        let (status, body) = push(&gw, &a, batch).await;
        assert_eq!(status, 400, "{body}");
    }
    let value = json!({"client_id": "c", "mutations": [
        {"id": 1, "table": "todos", "op": "insert", "value": {"id": 5, "org_id": "A", "title": nul}}]});
    let (status, body) = push(&gw, &a, value).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(result(&body)["status"], "rejected");
    assert!(result(&body)["error"].as_str().unwrap().contains("NUL"), "{body}");
}

/// Class 14: a request spelled as an earlier one finds its shape without binding its filter
/// again; the caller's right to read the columns the filter reads must still be checked.
/// Here an admin made a shape filtering on a hidden column, and a ruled caller asks for it.
#[tokio::test]
async fn a_shape_made_by_a_caller_who_may_read_more_stays_closed_to_one_who_may_not() {
    let env = Env::new().await;
    env.sql(SCHEMA).await;
    let config = env.data_dir.with_extension("toml");
    std::fs::write(&config, "[[table]]\nname = \"todos\"\ncolumns = [\"id\", \"org_id\", \"title\", \"done\"]\n")
        .unwrap();
    let mut gw = env.gateway_with(&["--auth", "jwt", "--jwt-secret", SECRET, "--config", config.to_str().unwrap()]);
    gw.ready().await;
    // The columns the rule lists, so that both callers' definitions are the same.
    let url = format!(
        "{}/v1/shape?table=todos&offset=-1&columns=id,org_id,title,done&where={}",
        gw.base(),
        enc("secret LIKE 'hush-A%'")
    );
    let admin = token(json!({"gateway_admin": true, "sub": "ops"}));
    let made = get_as(&url, Some(&admin)).await;
    assert_eq!(made.status, 200, "{}", made.body);
    let mallory = token(json!({"sub": "mallory"}));
    for attempt in 0..2 {
        let r = get_as(&url, Some(&mallory)).await;
        assert_eq!(r.status, 403, "attempt {attempt}: {}", r.body);
        assert!(r.body["message"].as_str().unwrap().contains("\"secret\""), "{}", r.body);
    }
}

/// Class: a stored value breaking out of its JSON string. Numbers, dates and the like are
/// written without an escape scan; after `ALTER COLUMN … TYPE text` (which streams nothing
/// until a row changes) a new shape bound from the cached catalog must not encode the
/// now-text values as numbers. The undefended gateway answered broken JSON (release) or
/// failed every retry (debug, its assertion).
#[tokio::test]
async fn a_column_whose_type_changed_unseen_never_lets_a_value_break_out_of_its_json_string() {
    let env = Env::new().await;
    env.sql("create table counters (id int8 primary key, n int8 not null); insert into counters values (1, 7)").await;
    let mut gw = env.gateway_with(&[]);
    gw.ready().await;
    let base = gw.base();
    // Caches the table's columns, `n` an int8.
    assert_eq!(testkit::get(&format!("{base}/v1/shape?table=counters&offset=-1")).await.status, 200);
    env.sql(r#"alter table counters alter column n type text using (n::text || '","id":"666')"#).await;
    let url = format!("{base}/v1/shape?table=counters&offset=-1&where={}", enc("id > 0"));
    let deadline = Instant::now() + Duration::from_secs(10);
    let body = loop {
        let r = testkit::get(&url).await;
        if r.status == 200 {
            break r.body;
        }
        assert!(Instant::now() < deadline, "the new shape never answered: {} {}", r.status, r.body);
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let rows: Vec<&Value> = body.as_array().expect("a JSON array").iter().filter(|m| m.get("key").is_some()).collect();
    assert_eq!(rows.len(), 1, "{body}");
    assert_eq!(rows[0]["value"]["n"], r#"7","id":"666"#, "{body}");
    assert_eq!(rows[0]["value"]["id"], "1", "{body}");
}
