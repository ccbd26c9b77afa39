//! `POST /v1/outbox`: every op and status, idempotent retries, scope escapes, atomic
//! batches, conflict modes, types, the txid echo, and exactly-once across a `kill -9`.

use std::time::Duration;

use futures::StreamExt;
use serde_json::{Value, json};

use crate::auth::{SECRET, token};
use testkit::{Env, Follower, Gateway};

const SCHEMA: &str = "
create table todos (id int8 primary key, org_id text not null, title text, done bool default false, secret text);
insert into todos values (1, 'org1', 'one', false, 'x'), (2, 'org2', 'two', false, 'y');
create table notes (id int4 primary key, org_id text not null, body text, version int4 not null default 1);
insert into notes values (1, 'org1', 'first', 1);
create table kinds (id uuid primary key, n numeric, b bool, at timestamptz, doc jsonb, tags text[], nums int4[], t text);
create table events (id bigserial primary key, client text not null, n int4 not null);
";

const RULES: &str = r#"
[[table]]
name = "todos"
scope = "org_id = :org_id"
columns = ["id", "org_id", "title", "done"]
write = ["insert", "update", "delete"]

[[table]]
name = "notes"
scope = "org_id = :org_id"
write = ["insert", "update", "delete"]
conflict = "reject_stale"
version_column = "version"

[[table]]
name = "kinds"
write = ["insert", "update", "delete"]

[[table]]
name = "events"
write = ["insert"]
"#;

async fn gateway(env: &Env) -> Gateway {
    let config = env.data_dir.with_extension("toml");
    std::fs::write(&config, RULES).unwrap();
    let mut gw = env.gateway_with(&["--auth", "jwt", "--jwt-secret", SECRET, "--config", config.to_str().unwrap()]);
    gw.ready().await;
    gw
}

pub async fn push(gw: &Gateway, token: &str, batch: Value) -> (u16, Value) {
    let r = testkit::http()
        .post(format!("{}/v1/outbox", gw.base()))
        .bearer_auth(token)
        .header("content-type", "application/json")
        .body(batch.to_string())
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, serde_json::from_slice(&r.bytes().await.unwrap()).unwrap_or(Value::Null))
}

fn statuses(body: &Value) -> Vec<String> {
    body["results"].as_array().unwrap().iter().map(|r| r["status"].as_str().unwrap().to_string()).collect()
}

#[tokio::test]
async fn every_op_and_status_and_a_retry_applies_once() {
    let env = Env::new().await;
    env.sql(SCHEMA).await;
    let gw = gateway(&env).await;
    let a = token(json!({"org_id": "org1"}));
    let batch = json!({"client_id": "tab-1", "mutations": [
        {"id": 1, "table": "todos", "op": "insert", "value": {"id": 10, "org_id": "org1", "title": "new"}},
        {"id": 2, "table": "todos", "op": "update", "key": {"id": 1}, "value": {"done": true}},
        {"id": 3, "table": "public.todos", "op": "upsert", "value": {"id": 11, "org_id": "org1", "title": "up"}},
        {"id": 4, "table": "todos", "op": "delete", "key": {"id": 10}},
        {"id": 5, "table": "todos", "op": "delete", "key": {"id": 999}},
        {"id": 6, "table": "todos", "op": "update", "key": {"id": 999}, "value": {"title": "ghost"}},
        {"id": 7, "table": "todos", "op": "insert", "value": {"id": 12, "org_id": "org2", "title": "escape"}},
        {"id": 8, "table": "todos", "op": "update", "key": {"id": 1}, "value": {"org_id": "org2"}},
        {"id": 9, "table": "todos", "op": "update", "key": {"id": 2}, "value": {"title": "theirs"}},
        {"id": 10, "table": "todos", "op": "delete", "key": {"id": 2}},
        {"id": 11, "table": "todos", "op": "update", "key": {"id": 1}, "value": {"secret": "mine"}},
        {"id": 12, "table": "todos", "op": "insert", "value": {"id": "not-a-number", "org_id": "org1"}},
        {"id": 13, "table": "todos", "op": "merge", "value": {"id": 13}},
        {"id": 14, "table": "nope", "op": "insert", "value": {"id": 1}},
        {"id": 15, "table": "todos", "op": "insert", "value": {"id": 14, "org_id": "org1", "colour": "red"}},
        {"id": 16, "table": "events", "op": "delete", "key": {"id": 1}},
    ]});
    let (status, body) = push(&gw, &a, batch.clone()).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["results"][2]["status"], "applied", "{}", body["results"][2]);
    assert_eq!(
        statuses(&body),
        [
            "applied", "applied", "applied", "applied", "applied", "conflict", "rejected", "rejected", "conflict",
            "applied", "rejected", "rejected", "rejected", "rejected", "rejected", "rejected"
        ]
    );
    let r = &body["results"];
    assert_eq!(r[5]["row"], Value::Null, "updating a missing row is a conflict with row: null");
    assert!(r[5].as_object().unwrap().contains_key("row"));
    // Another scope's row answers as a missing one (nothing is written): no key probing.
    assert_eq!((&r[8]["row"], &r[8]["error"]), (&r[5]["row"], &r[5]["error"]));
    for (i, needle) in [
        (6, "outside your scope"),
        (7, "outside your scope"),
        (10, "not writable"),
        (11, "not valid input for its type"),
        (12, "unknown op"),
        (13, "no access rule"),
        (14, "no column \"colour\""),
        (15, "does not allow delete"),
    ] {
        let err = r[i]["error"].as_str().unwrap_or_default();
        assert!(err.contains(needle), "result {i}: {err}");
    }
    assert!(body["txid"].as_str().unwrap().parse::<u32>().is_ok());
    let rows = |sql: &'static str| {
        let db = &env.db;
        async move { db.query(sql, &[]).await.unwrap().iter().map(|r| r.get::<_, String>(0)).collect::<Vec<_>>() }
    };
    let state = "select id || ':' || org_id || ':' || coalesce(title, '') || ':' || done from todos order by id";
    let expected = ["1:org1:one:true", "2:org2:two:false", "11:org1:up:false"];
    assert_eq!(rows(state).await, expected);

    // The same batch again: every mutation is a duplicate with its first result, and
    // nothing is written twice.
    let (status, again) = push(&gw, &a, batch).await;
    assert_eq!(status, 200);
    assert!(statuses(&again).iter().all(|s| s == "duplicate"), "{again}");
    assert_eq!(again["results"][0]["first"]["status"], "applied");
    assert_eq!(again["results"][0]["first"]["txid"], body["txid"]);
    assert_eq!(again["results"][6]["first"]["status"], "rejected");
    assert_eq!(rows(state).await, expected);
}

#[tokio::test]
async fn a_batch_of_inserts_applies_in_one_statement_only_whole_and_in_scope() {
    let env = Env::new().await;
    env.sql(SCHEMA).await;
    let gw = gateway(&env).await;
    let a = token(json!({"org_id": "org1"}));
    let insert = |id: u64, row: i64, org: &str| json!({"id": id, "table": "todos", "op": "insert", "value": {"id": row, "org_id": org, "title": "t"}});
    let count = |sql: &'static str| {
        let db = &env.db;
        async move { db.query_one(sql, &[]).await.unwrap().get::<_, i64>(0) }
    };
    // A new client's first batch, then its next: both applied whole, with their txids.
    for (first, rows) in [(1u64, 20i64), (3, 30)] {
        let batch =
            json!({"client_id": "c", "mutations": [insert(first, rows, "org1"), insert(first + 1, rows + 1, "org1")]});
        let (status, body) = push(&gw, &a, batch).await;
        assert_eq!((status, statuses(&body)), (200, vec!["applied".to_string(), "applied".to_string()]), "{body}");
        assert!(body["txid"].as_str().unwrap().parse::<u32>().is_ok(), "{body}");
    }
    // One row outside the scope: the others still apply, that one alone is refused, and
    // nothing of org2 is written.
    let mixed =
        json!({"client_id": "c", "mutations": [insert(5, 40, "org1"), insert(6, 41, "org2"), insert(7, 42, "org1")]});
    let (_, body) = push(&gw, &a, mixed.clone()).await;
    assert_eq!(statuses(&body), ["applied", "rejected", "applied"], "{body}");
    assert_eq!(count("select count(*) from todos where org_id = 'org2' and id >= 20").await, 0);
    // A row already there: the batch is decided mutation by mutation, the ledger moves on.
    let taken = json!({"client_id": "c", "mutations": [insert(8, 20, "org1"), insert(9, 43, "org1")]});
    let (_, body) = push(&gw, &a, taken.clone()).await;
    assert_eq!(statuses(&body), ["rejected", "applied"], "{body}");
    // Retried, each batch is all duplicates (the last one with its first results); nothing
    // is written twice.
    let (_, again) = push(&gw, &a, taken).await;
    assert_eq!(statuses(&again), ["duplicate", "duplicate"], "{again}");
    assert_eq!(again["results"][0]["first"]["status"], "rejected", "{again}");
    assert_eq!(again["results"][1]["first"]["status"], "applied", "{again}");
    let (_, again) = push(&gw, &a, mixed).await;
    assert_eq!(statuses(&again), ["duplicate", "duplicate", "duplicate"], "{again}");
    let retried = json!({"client_id": "c", "mutations": [insert(3, 30, "org1"), insert(4, 31, "org1")]});
    let (_, again) = push(&gw, &a, retried).await;
    assert_eq!(statuses(&again), ["duplicate", "duplicate"], "{again}");
    assert_eq!(count("select count(*) from todos where id >= 20").await, 7);
    // Out of order: nothing written, the expected id told.
    let (status, body) = push(&gw, &a, json!({"client_id": "c", "mutations": [insert(11, 50, "org1")]})).await;
    assert_eq!((status, body["expected"].as_u64()), (409, Some(10)), "{body}");
    assert_eq!(count("select count(*) from todos where id = 50").await, 0);
}

#[tokio::test]
async fn atomic_batches_apply_whole_or_not_at_all() {
    let env = Env::new().await;
    env.sql(SCHEMA).await;
    let gw = gateway(&env).await;
    let a = token(json!({"org_id": "org1"}));
    let aborted = json!({"client_id": "c", "atomic": true, "mutations": [
        {"id": 1, "table": "todos", "op": "insert", "value": {"id": 20, "org_id": "org1"}},
        {"id": 2, "table": "todos", "op": "insert", "value": {"id": 21, "org_id": "org2"}},
        {"id": 3, "table": "todos", "op": "update", "key": {"id": 1}, "value": {"title": "t"}},
    ]});
    let (_, body) = push(&gw, &a, aborted.clone()).await;
    assert_eq!(statuses(&body), ["aborted", "rejected", "aborted"]);
    assert!(body["results"][0]["error"].as_str().unwrap().contains("mutation 2 "), "{body}");
    assert!(body.get("txid").is_none(), "nothing committed");
    let n: i64 =
        env.db.query_one("select count(*) from todos where id in (20, 21) or title = 't'", &[]).await.unwrap().get(0);
    assert_eq!(n, 0);
    // An aborted batch still used its ids: pushed again, it answers as it did.
    let (_, again) = push(&gw, &a, aborted).await;
    assert_eq!(statuses(&again), ["duplicate", "duplicate", "duplicate"]);
    assert_eq!(again["results"][1]["first"]["status"], "rejected", "{again}");
    // Fixed, under the next ids: it applies.
    let (_, body) = push(
        &gw,
        &a,
        json!({"client_id": "c", "atomic": true, "mutations": [
            {"id": 4, "table": "todos", "op": "insert", "value": {"id": 20, "org_id": "org1"}},
            {"id": 5, "table": "todos", "op": "update", "key": {"id": 1}, "value": {"title": "t"}},
        ]}),
    )
    .await;
    assert_eq!(statuses(&body), ["applied", "applied"]);
}

#[tokio::test]
async fn stale_writes_conflict_and_last_writer_wins_elsewhere() {
    let env = Env::new().await;
    env.sql(SCHEMA).await;
    let gw = gateway(&env).await;
    let a = token(json!({"org_id": "org1"}));
    // Two clients edit note 1, both based on version 1: one wins, the other sees the row.
    let edit = |client: &str, body: &str| {
        json!({"client_id": client, "mutations": [
            {"id": 1, "table": "notes", "op": "update", "key": {"id": 1}, "value": {"body": body}, "base": {"version": 1}}
        ]})
    };
    let (r1, r2) = tokio::join!(push(&gw, &a, edit("c1", "from c1")), push(&gw, &a, edit("c2", "from c2")));
    let mut outcomes = [statuses(&r1.1)[0].clone(), statuses(&r2.1)[0].clone()];
    outcomes.sort();
    assert_eq!(outcomes, ["applied", "conflict"]);
    let loser = if statuses(&r1.1)[0] == "conflict" { &r1.1 } else { &r2.1 };
    assert_eq!(loser["results"][0]["row"]["version"], 2, "the conflict shows the server's row: {loser}");
    let row = env.db.query_one("select body, version from notes where id = 1", &[]).await.unwrap();
    assert_eq!(row.get::<_, i32>(1), 2, "accepted writes bump the version");
    let (_, missing_base) = push(
        &gw,
        &a,
        json!({"client_id": "c3", "mutations": [
            {"id": 1, "table": "notes", "op": "update", "key": {"id": 1}, "value": {"body": "no base"}}
        ]}),
    )
    .await;
    assert!(missing_base["results"][0]["error"].as_str().unwrap().contains("base.version"));

    // Last write wins on todos: both apply, in commit order.
    let set = |client: &str, title: &str| json!({"client_id": client, "mutations": [{"id": 2, "table": "todos", "op": "update", "key": {"id": 1}, "value": {"title": title}}]});
    let (r1, r2) = tokio::join!(push(&gw, &a, set("c1", "a")), push(&gw, &a, set("c2", "b")));
    assert_eq!((statuses(&r1.1)[0].as_str(), statuses(&r2.1)[0].as_str()), ("applied", "applied"));
}

#[tokio::test]
async fn values_of_every_type_land_as_their_column_types() {
    let env = Env::new().await;
    env.sql(SCHEMA).await;
    let gw = gateway(&env).await;
    let a = token(json!({"org_id": "org1"}));
    let id = "0b6f7a7e-6f7e-4c3e-9a53-2a1f0c7b9d11";
    let (_, body) = push(
        &gw,
        &a,
        json!({"client_id": "types", "mutations": [
            {"id": 1, "table": "kinds", "op": "insert", "value": {
                "id": id, "n": "12345678901234567890.123", "b": true, "at": "2024-05-06T07:08:09.123+02:00",
                "doc": {"k": [1, "two", null]}, "tags": ["a", "b c", "q\"uote", null], "nums": [1, 2, 3], "t": null
            }},
            {"id": 2, "table": "kinds", "op": "update", "key": {"id": id}, "value": {"n": 1.5}},
        ]}),
    )
    .await;
    assert_eq!(statuses(&body), ["applied", "applied"], "{body}");
    let row = env
        .db
        .query_one(
            "select n::text, b, (at at time zone 'UTC')::text, doc::text, tags::text, nums::text, t is null from kinds",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "1.5");
    assert!(row.get::<_, bool>(1));
    assert_eq!(row.get::<_, String>(2), "2024-05-06 05:08:09.123");
    assert_eq!(row.get::<_, String>(3), r#"{"k": [1, "two", null]}"#);
    assert_eq!(row.get::<_, String>(4), r#"{a,"b c","q\"uote",NULL}"#);
    assert_eq!(row.get::<_, String>(5), "{1,2,3}");
    assert!(row.get::<_, bool>(6));

    // A column added after the table was first written is writable at once.
    env.sql("alter table kinds add column extra text").await;
    let (_, body) = push(
        &gw,
        &a,
        json!({"client_id": "types", "mutations": [
            {"id": 3, "table": "kinds", "op": "update", "key": {"id": id}, "value": {"extra": "new column"}},
        ]}),
    )
    .await;
    assert_eq!(statuses(&body), ["applied"], "{body}");
}

#[tokio::test]
async fn a_pushed_write_comes_back_through_the_stream_with_its_txid() {
    let env = Env::new().await;
    env.sql(SCHEMA).await;
    let gw = gateway(&env).await;
    let a = token(json!({"org_id": "org1"}));
    let mut follower = Follower::new(&gw, "table=todos").with_token(&a);
    follower.sync().await;
    let (_, body) = push(
        &gw,
        &a,
        json!({"client_id": "echo", "mutations": [
            {"id": 1, "table": "todos", "op": "insert", "value": {"id": 30, "org_id": "org1", "title": "echo"}}
        ]}),
    )
    .await;
    let txid: u64 = body["txid"].as_str().unwrap().parse().unwrap();
    // Read live until the change appears, and check its txids.
    let url = |f: &Follower| {
        format!(
            "{}/v1/shape?table=todos&offset={}&handle={}&live=true&cursor=",
            gw.base(),
            f.offset,
            f.handle.clone().unwrap()
        )
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let r = testkit::get_as(&url(&follower), Some(&a)).await;
        follower.offset = r.headers["electric-offset"].to_str().unwrap().to_string();
        let hit = r.body.as_array().unwrap().iter().find(|m| m["value"]["title"] == "echo");
        if let Some(m) = hit {
            assert_eq!(m["headers"]["txids"], json!([txid]));
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the write never came back");
    }
}

#[tokio::test]
async fn bad_batches_get_a_clear_4xx() {
    let env = Env::new().await;
    env.sql(SCHEMA).await;
    let gw = gateway(&env).await;
    let a = token(json!({"org_id": "org1"}));
    let raw = |body: String| {
        let client = testkit::http();
        let (url, a) = (format!("{}/v1/outbox", gw.base()), a.clone());
        async move {
            let r = client.post(url).bearer_auth(a).body(body).send().await.unwrap();
            (r.status().as_u16(), String::from_utf8_lossy(&r.bytes().await.unwrap()).to_string())
        }
    };
    let (s, b) = raw("{\"client_id\": \"x\", \"mutations\": [".into()).await;
    assert_eq!(s, 400);
    assert!(b.contains("line 1 column"), "{b}");
    let many: Vec<Value> = (0..1001)
        .map(|i| json!({"id": i + 1, "table": "events", "op": "insert", "value": {"client": "x", "n": i}}))
        .collect();
    let (s, b) = raw(json!({"client_id": "x", "mutations": many}).to_string()).await;
    assert_eq!(s, 413, "{b}");
    let (s, _) = raw("x".repeat(9 << 20)).await;
    assert_eq!(s, 413);
    let (s, b) = raw(json!({"client_id": "", "mutations": []}).to_string()).await;
    assert_eq!(s, 400, "{b}");
    let r = testkit::http().post(format!("{}/v1/outbox", gw.base())).body("{}").send().await.unwrap();
    assert_eq!(r.status(), 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_committed_before_a_crash_is_a_duplicate_when_retried() {
    let env = Env::new().await;
    env.sql(SCHEMA).await;
    let mut gw = gateway(&env).await;
    let a = token(json!({"org_id": "org1"}));
    // One client per batch, so the batches may race each other.
    let batch = |b: usize| {
        let mutations: Vec<Value> = (0..20)
            .map(|i| json!({"id": i + 1, "table": "events", "op": "insert", "value": {"client": "crash", "n": i}}))
            .collect();
        json!({"client_id": format!("crash-{b}"), "mutations": mutations})
    };
    // Push many batches and kill -9 the gateway once some have been answered, so others
    // are in flight: committed or not, unanswered.
    const BATCHES: usize = 200;
    let base = gw.base();
    let answered = std::sync::atomic::AtomicUsize::new(0);
    let inflight = futures::stream::iter(0..BATCHES)
        .map(|b| {
            let (base, a, body, answered) = (base.clone(), a.clone(), batch(b).to_string(), &answered);
            async move {
                let status = testkit::http()
                    .post(format!("{base}/v1/outbox"))
                    .bearer_auth(a)
                    .header("content-type", "application/json")
                    .body(body)
                    .send()
                    .await
                    .ok()
                    .map(|r| r.status().as_u16());
                answered.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                status
            }
        })
        .buffer_unordered(8)
        .collect::<Vec<_>>();
    let killer = async {
        while answered.load(std::sync::atomic::Ordering::SeqCst) < 10 {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        gw.kill9();
    };
    let (answers, ()) = tokio::join!(inflight, killer);
    assert!(answers.iter().any(Option::is_none), "the kill interrupted some pushes");
    gw.restart().await;
    // The client retries every batch it did not see answered (here: all of them).
    for b in 0..BATCHES {
        let (status, body) = push(&gw, &a, batch(b)).await;
        assert_eq!(status, 200, "{body}");
        assert!(statuses(&body).iter().all(|s| s == "applied" || s == "duplicate"), "{body}");
    }
    let n: i64 = env.db.query_one("select count(*) from events", &[]).await.unwrap().get(0);
    assert_eq!(n as usize, BATCHES * 20, "every mutation exactly once");
}

#[tokio::test]
async fn setup_sql_runs_twice_and_is_enough_for_a_least_privilege_gateway() {
    let env = Env::new().await;
    env.sql(SCHEMA).await;
    // The first ledger, as an older gateway left it: kept aside, no longer read.
    env.sql("create schema gateway; create table gateway.mutations (client_id text, mutation_id text, result jsonb, txid bigint, primary key (client_id, mutation_id)); insert into gateway.mutations values ('c', 'm1', '{}', 1)").await;
    // The per-client ledger as its first release made it, before it kept each batch's first id.
    env.sql("create table gateway.clients (subject text, client_id text, last_mutation_id bigint not null default 0, last_txid bigint, last_results jsonb not null default '[]', updated_at timestamptz not null default now(), primary key (subject, client_id))").await;
    let psql = gateway::devdb::find_binaries().unwrap().join("psql");
    let setup = concat!(env!("CARGO_MANIFEST_DIR"), "/../sql/setup.sql");
    for _ in 0..2 {
        let out = std::process::Command::new(&psql)
            .args([env.url.as_str(), "-v", "ON_ERROR_STOP=1", "-q", "-f", setup])
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }
    let kept: i64 = env.db.query_one("select count(*) from gateway.mutations_v1", &[]).await.unwrap().get(0);
    assert_eq!(kept, 1, "the old ledger is renamed, not dropped");
    let upgraded: bool = env
        .db
        .query_one("select exists (select 1 from pg_attribute where attrelid = 'gateway.clients'::regclass and attname = 'last_batch_from')", &[])
        .await
        .unwrap()
        .get(0);
    assert!(upgraded, "setup.sql adds the ledger's newer columns");
    assert!(env.db.query_one("select to_regclass('gateway.mutations') is null", &[]).await.unwrap().get::<_, bool>(0));
    // What the DBA adds for the tables the rules name (the gateway may not, as it owns none).
    env.sql("alter publication gateway add table todos, events, kinds, notes; alter table todos replica identity full; grant insert, update, delete on todos to gateway;").await;
    let url = env.url.replacen("postgres://postgres@", "postgres://gateway@", 1);
    assert_ne!(url, env.url, "the test URL names the postgres role: {}", env.url);
    let config = env.data_dir.with_extension("toml");
    std::fs::write(&config, RULES).unwrap();
    let mut gw = Gateway::start(
        &url,
        &env.data_dir,
        &["--auth", "jwt", "--jwt-secret", SECRET, "--config", config.to_str().unwrap()],
    );
    gw.ready().await;
    let a = token(json!({"org_id": "org1"}));
    let (status, body) = push(
        &gw,
        &a,
        json!({"client_id": "least", "mutations": [
            {"id": 1, "table": "todos", "op": "update", "key": {"id": 1}, "value": {"title": "by gateway role"}}
        ]}),
    )
    .await;
    assert_eq!((status, statuses(&body)), (200, vec!["applied".to_string()]), "{body}\n{}", gw.log());
    let mut follower = Follower::new(&gw, "table=todos").with_token(&a);
    follower.sync().await;
    assert!(follower.rows.values().any(|r| r["title"] == "by gateway role"));
}
