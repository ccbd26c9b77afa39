//! Shapes scoped through subqueries, end to end through the gateway: rows move in when a
//! membership appears and out when it goes, and the client always ends with exactly the
//! rows PostgreSQL's own `IN (SELECT …)` selects (docs/subqueries.md).

use testkit::{Env, Follower, Gateway, enc, oracle};

const SCHEMA: &str = "create table members (user_id text, project_id int8, primary key (user_id, project_id));
     create table todos (id int8 primary key, project_id int8, title text);
     insert into members values ('u1', 1), ('u2', 2);
     insert into todos select i, i % 4, 't' || i from generate_series(1, 40) i;";

/// u1's todos: those of the projects u1 is a member of.
const U1: &str = "project_id IN (SELECT project_id FROM members WHERE user_id = 'u1')";

/// A database with [`SCHEMA`], a gateway, and a client that has synced u1's todos.
async fn following_u1() -> (Env, Gateway, Follower) {
    let env = Env::new().await;
    env.sql(SCHEMA).await;
    let gw = env.ready_gateway().await;
    let f = synced(&gw, U1).await;
    (env, gw, f)
}

/// A client that has synced the todos `filter` selects.
async fn synced(gw: &Gateway, filter: &str) -> Follower {
    let mut f = Follower::new(gw, &format!("table=todos&where={}", enc(filter)));
    f.sync().await;
    f
}

/// Follows `filter` on todos and checks, after each statement, that the client converges to
/// what PostgreSQL selects, with nothing delivered twice and no refetch.
async fn check(env: &Env, f: &mut Follower, filter: &str, steps: &[&str]) {
    for step in steps {
        env.sql(step).await;
        let expected = oracle(&env.db, "todos", filter, "title").await;
        f.converge_to("title", &expected).await;
        assert_eq!(f.duplicates, 0, "after {step}");
        assert_eq!(f.refetches, 0, "after {step}: moves need no refetch");
    }
}

#[tokio::test]
async fn memberships_move_rows_in_and_out() {
    let (env, _gw, mut f) = following_u1().await;
    let filter = U1;
    assert_eq!(f.rows.len(), 10, "project 1's todos");
    check(
        &env,
        &mut f,
        filter,
        &[
            "insert into members values ('u1', 2)",
            "update todos set title = 'renamed' where id = 2",
            "update todos set project_id = 1 where id = 3",
            "update todos set project_id = 3 where id = 1",
            "begin; insert into members values ('u1', 7); insert into todos values (100, 7, 'new'), (101, 7, 'new2'); commit",
            "delete from members where user_id = 'u1' and project_id = 1",
            "begin; delete from members where user_id = 'u1' and project_id = 2; insert into todos values (102, 2, 'x'); commit",
            "insert into members values ('u1', 3), ('u1', 0)",
        ],
    )
    .await;
    // Rows carry their project's tag (one per project, never the value itself); each
    // removed membership came as a move-out of the tag its rows carried.
    let key = |id: &str| format!("\"public\".\"todos\"/\"{id}\"");
    let tag_of = |id: &str| f.tags[&key(id)].clone();
    assert_eq!(tag_of("4"), tag_of("8"), "todos 4 and 8 are both in project 0");
    assert_ne!(tag_of("4"), tag_of("5"));
    let hashed = |t: &Vec<String>| t.len() == 1 && t[0].len() == 32 && t[0].chars().all(|c| c.is_ascii_hexdigit());
    assert!(f.tags.values().all(hashed), "{:?}", f.tags);
    let moved_out: Vec<&str> = f
        .events
        .iter()
        .inspect(|e| assert_eq!(e["headers"]["event"], "move-out"))
        .flat_map(|e| e["headers"]["patterns"].as_array().unwrap())
        .map(|p| p["value"].as_str().unwrap())
        .collect();
    assert_eq!(moved_out.len(), 2, "projects 1 and 2 left u1's set: {:?}", f.events);
    assert!(moved_out.contains(&tag_of("13")[0].as_str()), "project 1's rows carried the tag that moved out");
    // Rows a membership brought are marked `is_move_in` (a todo updated into a project is a
    // plain insert), and each move-in ends with its query's `snapshot-end`, as Electric's.
    assert!(["6", "100", "101", "7", "4"].iter().all(|id| f.moved_in.contains(&key(id))), "{:?}", f.moved_in);
    assert!(!f.moved_in.contains(&key("3")), "{:?}", f.moved_in);
    let ends: Vec<_> = f.controls.iter().filter(|c| c["headers"]["control"] == "snapshot-end").collect();
    assert!(ends.len() >= 4, "the snapshot's and three move-ins': {:?}", f.controls);
    assert!(ends.iter().all(|c| c["headers"]["xmin"].is_string() && c["headers"]["xmax"].is_string()));
}

#[tokio::test]
async fn not_in_and_nested_subqueries_follow_their_sets() {
    let env = Env::new().await;
    env.sql(SCHEMA).await;
    env.sql(
        "create table projects (id int8 primary key, archived bool not null default false);
             insert into projects select i, false from generate_series(0, 7) i;
             alter table projects replica identity full;",
    )
    .await;
    let mut gw = env.ready_gateway().await;
    let not_in = "project_id NOT IN (SELECT project_id FROM members WHERE user_id = 'u2')";
    let mut f = synced(&gw, not_in).await;
    check(
        &env,
        &mut f,
        not_in,
        &["insert into members values ('u2', 1)", "delete from members where user_id = 'u2' and project_id = 2"],
    )
    .await;
    // A NULL entering a NOT IN set makes every other row's test unknown: all move out,
    // and back in when it leaves.
    env.sql("create table bans (user_id text, project_id int8); alter table bans replica identity full").await;
    let banned = "project_id NOT IN (SELECT project_id FROM bans WHERE user_id = 'u2')";
    let mut b = synced(&gw, banned).await;
    check(
        &env,
        &mut b,
        banned,
        &[
            "insert into bans values ('u2', 1)",
            "insert into bans values ('u2', NULL)",
            "update todos set title = 'while banned' where id = 2",
            "delete from bans where project_id IS NULL",
            "update bans set project_id = 3 where project_id = 1",
        ],
    )
    .await;
    assert!(b.rows.len() > 20, "rows came back once the NULL left: {}", b.rows.len());
    // A change to the nested set changes which members rows the outer set holds: the outer
    // set loads again and the shape's rows move, without a refetch.
    let nested = "project_id IN (SELECT project_id FROM members WHERE project_id IN (SELECT id FROM projects WHERE NOT archived))";
    let mut g = synced(&gw, nested).await;
    check(
        &env,
        &mut g,
        nested,
        &[
            "insert into members values ('u3', 3)",
            "update projects set archived = true where id = 1",
            "update projects set archived = true where id = 3",
            "begin; update projects set archived = false where id = 1; insert into todos values (200, 1, 'new in 1'); commit",
            "begin; insert into members values ('u4', 5); update projects set archived = true where id = 5; commit",
            "begin; update projects set archived = false where id in (3, 5); delete from members where project_id = 3; commit",
        ],
    )
    .await;
    // Two levels: projects are read through the featured ones.
    env.sql("create table featured (project_id int8 primary key); insert into featured values (1), (2), (4)").await;
    let deeper = "project_id IN (SELECT project_id FROM members WHERE project_id IN \
                  (SELECT id FROM projects WHERE NOT archived AND id IN (SELECT project_id FROM featured)))";
    let mut d = synced(&gw, deeper).await;
    check(
        &env,
        &mut d,
        deeper,
        &[
            "insert into featured values (6)",
            "delete from featured where project_id = 1",
            "begin; update projects set archived = true where id = 2; insert into featured values (1); commit",
            "begin; insert into members values ('u7', 4); delete from featured where project_id = 6; commit",
        ],
    )
    .await;
    // It resumes after a restart, and after a `kill -9` with both sets changed meanwhile.
    gw.restart().await;
    check(&env, &mut g, nested, &["update projects set archived = true where id = 2"]).await;
    gw.kill9();
    env.sql("begin; update projects set archived = false where id = 2; insert into members values ('u5', 6); commit")
        .await;
    env.sql("update projects set archived = true where id = 0").await;
    env.sql(
        "begin; update projects set archived = false where id = 2; delete from featured where project_id = 4; commit",
    )
    .await;
    gw.spawn_again();
    gw.ready().await;
    check(&env, &mut g, nested, &["insert into members values ('u6', 7)"]).await;
    check(&env, &mut d, deeper, &["insert into featured values (4), (7)"]).await;
}

/// Random memberships, archived projects and todo writes from two concurrent writers (so
/// transactions commit in between each other's snapshots), while clients follow six shapes
/// live (one through a nested set, one through two sets): each ends with exactly
/// PostgreSQL's rows, with nothing delivered twice.
#[tokio::test]
async fn concurrent_memberships_and_writes_end_exactly_right() {
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    let env = Env::new().await;
    env.sql(SCHEMA).await;
    env.sql("insert into todos select i, i % 10, 't' || i from generate_series(41, 200) i").await;
    env.sql(
        "create table projects (id int8 primary key, archived bool not null default false);
         insert into projects select i, false from generate_series(0, 9) i;
         alter table projects replica identity full;",
    )
    .await;
    let gw = env.ready_gateway().await;
    let filters = [
        "project_id IN (SELECT project_id FROM members WHERE user_id = 'u1')".to_string(),
        "project_id IN (SELECT project_id FROM members WHERE user_id = 'u2')".to_string(),
        "project_id NOT IN (SELECT project_id FROM members WHERE user_id = 'u3')".to_string(),
        "title LIKE 't1%' AND project_id IN (SELECT project_id FROM members WHERE user_id IN ('u1', 'u3'))".to_string(),
        // Through a nested set, and through two sets at once.
        "project_id IN (SELECT project_id FROM members WHERE user_id = 'u2' \
         AND project_id IN (SELECT id FROM projects WHERE NOT archived))"
            .to_string(),
        "project_id IN (SELECT project_id FROM members WHERE user_id = 'u1') \
         OR project_id IN (SELECT id FROM projects WHERE archived)"
            .to_string(),
    ];
    let done = Arc::new(AtomicBool::new(false));
    let mut followers = Vec::new();
    for filter in &filters {
        let mut f = synced(&gw, filter).await;
        let done = done.clone();
        followers.push(tokio::spawn(async move {
            while !done.load(Ordering::Relaxed) {
                f.live_until(|_| true).await;
                f.step(true).await;
            }
            f
        }));
    }
    let mut writers = Vec::new();
    for seed in 0..2u64 {
        let db = testkit::connect(&env.url).await;
        writers.push(tokio::spawn(async move {
            let mut rng = StdRng::seed_from_u64(seed);
            let mut next_todo = 1000 + seed as i64 * 10_000;
            for _ in 0..150 {
                let user = format!("u{}", rng.random_range(1..4));
                let project = rng.random_range(0..10);
                let todo = rng.random_range(1..200);
                let sql = match rng.random_range(0..9) {
                    0 => format!("insert into members values ('{user}', {project}) on conflict do nothing"),
                    1 => format!("delete from members where user_id = '{user}' and project_id = {project}"),
                    2 => {
                        next_todo += 1;
                        format!("insert into todos values ({next_todo}, {project}, 't{next_todo}')")
                    }
                    3 => format!("update todos set title = title || 'x' where id = {todo}"),
                    4 => format!("update todos set project_id = {project} where id = {todo}"),
                    5 => format!("delete from todos where id = {todo}"),
                    6 => format!("update projects set archived = not archived where id = {project}"),
                    7 => format!(
                        "begin; update projects set archived = not archived where id = {project}; \
                         insert into members values ('{user}', {}) on conflict do nothing; commit",
                        (project + 1) % 10
                    ),
                    _ => {
                        next_todo += 1;
                        format!(
                            "begin; insert into members values ('{user}', {project}) on conflict do nothing; \
                             insert into todos values ({next_todo}, {project}, 't{next_todo}'); \
                             update todos set project_id = {project} where id = {todo}; commit"
                        )
                    }
                };
                db.batch_execute(&sql).await.unwrap();
            }
        }));
    }
    for w in writers {
        w.await.unwrap();
    }
    done.store(true, Ordering::Relaxed);
    for (filter, f) in filters.iter().zip(followers) {
        let mut f = f.await.unwrap();
        let expected = oracle(&env.db, "todos", filter, "title").await;
        f.converge_to("title", &expected).await;
        assert_eq!(f.duplicates, 0, "{filter}");
        assert_eq!(f.refetches, 0, "{filter}: overlapping moves of one set are merged, not refetched");
    }
}

/// Queues an ACCESS EXCLUSIVE lock on `todos` behind the transactions open on it: from
/// now on every statement on `todos`, a move's query among them, waits until they end.
/// Resolves once the lock was had and given back.
fn queue_lock_on_todos(env: &Env) -> tokio::task::JoinHandle<()> {
    let url = env.url.clone();
    tokio::spawn(async move {
        let db = testkit::connect(&url).await;
        db.batch_execute("begin; lock table todos in access exclusive mode; rollback").await.unwrap();
    })
}

/// A transaction open while the move query reads lands after the moved rows, whose values
/// are older: when its commit reaches the stream before the move's marker (the query is
/// held back behind a lock request queued after the transaction), and when right after it
/// (where the marker's position and its commit record's meet).
#[tokio::test]
async fn a_write_the_move_query_did_not_see_lands_after_the_moved_rows() {
    let (env, _gw, mut f) = following_u1().await;
    let filter = U1;
    for (project, queued_lock) in [(2, true), (3, false)] {
        let late = testkit::connect(&env.url).await;
        late.batch_execute(&format!("begin; update todos set title = 'late' where project_id = {project}"))
            .await
            .unwrap();
        let blocker = queued_lock.then(|| queue_lock_on_todos(&env));
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        // The move's query takes its snapshot, then (with the lock queued) waits.
        env.sql(&format!("insert into members values ('u1', {project})")).await;
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        late.batch_execute("commit").await.unwrap();
        if let Some(b) = blocker {
            b.await.unwrap();
        }
        let expected = oracle(&env.db, "todos", filter, "title").await;
        f.converge_to("title", &expected).await;
        assert_eq!((f.duplicates, f.refetches), (0, 0));
    }
}

/// A database with [`SCHEMA`] and a JWT gateway whose rule scopes todos through the
/// caller's memberships.
async fn ruled_by_membership() -> (Env, Gateway) {
    let env = Env::new().await;
    env.sql(SCHEMA).await;
    let config = env.data_dir.with_extension("toml");
    std::fs::write(
        &config,
        r#"
[[table]]
name = "todos"
scope = "project_id IN (SELECT project_id FROM members WHERE user_id = :sub)"
write = ["insert", "update"]
"#,
    )
    .unwrap();
    let mut gw =
        env.gateway_with(&["--auth", "jwt", "--jwt-secret", crate::auth::SECRET, "--config", config.to_str().unwrap()]);
    gw.ready().await;
    (env, gw)
}

/// A rule's inner table made again under its name: the next new shape, bound from the
/// cached catalog, is refused by its snapshot with a retry that names no table (the inner
/// table is the gateway's, never the caller's to see), and the retry works.
#[tokio::test]
async fn a_changed_inner_table_is_not_named_to_a_ruled_caller() {
    let (env, gw) = ruled_by_membership().await;
    let t1 = crate::auth::token(serde_json::json!({"sub": "u1"}));
    let mut f = Follower::new(&gw, "table=todos").with_token(&t1);
    f.sync().await;
    env.sql(
        "create table members_next (like members including all); insert into members_next select * from members;
         drop table members; alter table members_next rename to members;",
    )
    .await;
    let url = format!("{}/v1/shape?table=todos&offset=-1&where={}", gw.base(), enc("id > 0"));
    let stale = testkit::get_as(&url, Some(&t1)).await;
    assert_eq!(stale.status, 503, "{}", stale.body);
    assert!(!stale.body.to_string().contains("members"), "{}", stale.body);
    assert_eq!(testkit::get_as(&url, Some(&t1)).await.status, 200);
}

/// An access rule scoped through a subquery: each user reads the todos of the projects
/// they are a member of, follows their memberships, and writes only inside them; a client's
/// own subquery (reading a table no rule covers) is refused to them.
#[tokio::test]
async fn a_rule_scoped_through_memberships_gives_each_user_their_projects() {
    use crate::auth::token;
    use crate::outbox::push;
    use serde_json::json;

    let (env, gw) = ruled_by_membership().await;
    let (t1, t2) = (token(json!({"sub": "u1"})), token(json!({"sub": "u2"})));
    let scope = |user: &str| format!("project_id IN (SELECT project_id FROM members WHERE user_id = '{user}')");
    let mut u1 = Follower::new(&gw, "table=todos").with_token(&t1);
    let mut u2 = Follower::new(&gw, "table=todos").with_token(&t2);
    for step in [
        "select 1",
        "insert into members values ('u1', 2)",
        "update todos set project_id = 3 where id = 2",
        "delete from members where user_id = 'u2' and project_id = 2",
        "insert into members values ('u2', 3)",
    ] {
        env.sql(step).await;
        u1.converge_to("title", &oracle(&env.db, "todos", &scope("u1"), "title").await).await;
        u2.converge_to("title", &oracle(&env.db, "todos", &scope("u2"), "title").await).await;
    }
    assert_eq!((u1.refetches, u2.refetches, u1.duplicates, u2.duplicates), (0, 0, 0, 0));

    let own = format!("table=todos&offset=-1&where={}", enc("project_id IN (SELECT project_id FROM members)"));
    let refused = testkit::get_as(&format!("{}/v1/shape?{own}", gw.base()), Some(&t1)).await;
    assert_eq!(refused.status, 403, "{}", refused.body);

    // u1 is a member of 1 and 2 (not 0): writes land only there.
    let batch = json!({"client_id": "c", "mutations": [
        {"id": 1, "table": "todos", "op": "insert", "value": {"id": 500, "project_id": 1, "title": "mine"}},
        {"id": 2, "table": "todos", "op": "insert", "value": {"id": 501, "project_id": 0, "title": "not mine"}},
        {"id": 3, "table": "todos", "op": "update", "key": {"id": 5}, "value": {"project_id": 0}},
        {"id": 4, "table": "todos", "op": "update", "key": {"id": 4}, "value": {"title": "theirs"}},
    ]});
    let (status, body) = push(&gw, &t1, batch).await;
    assert_eq!(status, 200, "{body}");
    let statuses: Vec<&str> =
        body["results"].as_array().unwrap().iter().map(|r| r["status"].as_str().unwrap()).collect();
    assert_eq!(statuses, ["applied", "rejected", "rejected", "conflict"], "{body}");
    u1.converge_to("title", &oracle(&env.db, "todos", &scope("u1"), "title").await).await;
    assert_eq!(u1.rows.len(), oracle(&env.db, "todos", &scope("u1"), "title").await.len());
}

/// Waits until `f` holds exactly PostgreSQL's rows for `filter`, having resumed (no
/// refetch) with nothing delivered twice.
async fn converge(env: &Env, f: &mut Follower, filter: &str) {
    f.converge_to("title", &oracle(&env.db, "todos", filter, "title").await).await;
    assert_eq!((f.refetches, f.duplicates), (0, 0), "resumed without a refetch, nothing twice");
}

/// Subquery shapes survive restarts: a restart, changes made while the gateway is down,
/// and a `kill -9` while a move's query is held back by a lock. Each time the client resumes
/// with its handle and offset and ends with exactly PostgreSQL's rows, nothing twice.
#[tokio::test]
async fn subquery_shapes_resume_after_a_restart_and_a_kill_in_the_middle_of_a_move() {
    let (env, mut gw, mut f) = following_u1().await;
    let filter = U1;
    env.sql("insert into members values ('u1', 2)").await;
    converge(&env, &mut f, filter).await;

    gw.restart().await;
    env.sql("update todos set title = 'after restart' where id = 1").await;
    converge(&env, &mut f, filter).await;

    gw.kill9();
    env.sql("insert into members values ('u1', 3); delete from members where user_id = 'u1' and project_id = 1").await;
    env.sql("update todos set title = 'while down' where id = 3").await;
    gw.spawn_again();
    gw.ready().await;
    converge(&env, &mut f, filter).await;

    // The move's query takes its snapshot, then waits behind a lock request queued after two
    // open transactions. One of them commits while the move is under way, so the shape
    // holds its change when the gateway dies: it must come again after the restart.
    let late = testkit::connect(&env.url).await;
    late.batch_execute("begin; update todos set title = 'late' where project_id = 0").await.unwrap();
    let held = testkit::connect(&env.url).await;
    held.batch_execute("begin; update todos set title = 'held' where id = 2").await.unwrap();
    let blocker = queue_lock_on_todos(&env);
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    env.sql("insert into members values ('u1', 0)").await;
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    held.batch_execute("commit").await.unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    gw.kill9();
    late.batch_execute("commit").await.unwrap();
    blocker.await.unwrap();
    gw.spawn_again();
    gw.ready().await;
    converge(&env, &mut f, filter).await;
}

/// A set whose filter fails on a new inner row (a division by zero) takes only its own
/// shapes down (refetched, then refused with the reason); another tenant's subquery shape
/// on the same tables goes on without a refetch.
#[tokio::test]
async fn a_set_that_cannot_follow_the_stream_affects_only_its_own_shapes() {
    let env = Env::new().await;
    env.sql(SCHEMA).await;
    let gw = env.ready_gateway().await;
    let fragile = "project_id IN (SELECT project_id FROM members WHERE 10 / (project_id - 7) > 0)";
    let sound = "project_id IN (SELECT project_id FROM members WHERE user_id = 'u1')";
    let f = synced(&gw, fragile).await;
    let mut g = synced(&gw, sound).await;
    env.sql("begin; insert into members values ('u9', 7); insert into members values ('u1', 2); commit").await;
    converge(&env, &mut g, sound).await;
    let refetched = testkit::get(&format!("{}/v1/shape?table=todos&where={}&offset=-1", gw.base(), enc(fragile))).await;
    assert_eq!(refetched.status, 400, "the filter now fails in PostgreSQL too: {}", refetched.body);
    let handle = f.handle.clone().unwrap();
    let old = format!("{}/v1/shape?table=todos&where={}&offset={}&handle={handle}", gw.base(), enc(fragile), f.offset);
    let old = testkit::get(&old).await;
    assert!(matches!(old.status, 400 | 409), "the fragile shape is gone: {} {}", old.status, old.body);
}

/// A move held back (its query waits behind a lock) while more changes than a hold keeps
/// arrive: the shape is refetched instead of holding memory without bound, and the client
/// ends right.
#[tokio::test]
async fn a_move_held_back_too_long_refetches_instead_of_holding_everything() {
    let (env, gw, mut f) = following_u1().await;
    let filter = U1;
    let late = testkit::connect(&env.url).await;
    late.batch_execute("begin; update todos set title = 'late' where id = 3").await.unwrap();
    // More changes than a hold keeps, in transactions small enough to arrive whole (one
    // arriving in parts refetches a moving shape at once, for another reason).
    let mut bulk = Vec::new();
    for k in 0..11 {
        let session = testkit::connect(&env.url).await;
        let first = 1000 + k * 10_000;
        let insert =
            format!("begin; insert into todos select i, 2, 'bulk' from generate_series({first}, {}) i", first + 9_999);
        session.batch_execute(&insert).await.unwrap();
        bulk.push(session);
    }
    let blocker = queue_lock_on_todos(&env);
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    env.sql("insert into members values ('u1', 3)").await;
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    for session in &bulk {
        session.batch_execute("commit").await.unwrap();
    }
    tokio::time::sleep(std::time::Duration::from_secs(3)).await;
    late.batch_execute("commit").await.unwrap();
    blocker.await.unwrap();
    f.converge_to("title", &oracle(&env.db, "todos", filter, "title").await).await;
    assert_eq!((f.refetches, f.duplicates), (1, 0));
    assert!(gw.log().contains("changes came while its rows were moving"), "{}", gw.log());
}

/// New sets waiting together are loaded at one snapshot; one whose query fails (a division
/// by zero) fails alone, and the others of its batch load.
#[tokio::test]
async fn a_set_failing_to_load_fails_alone_in_its_batch() {
    let env = Env::new().await;
    env.sql(SCHEMA).await;
    env.sql("insert into members values ('u9', 7)").await;
    let gw = env.ready_gateway().await;
    synced(&gw, U1).await; // both tables published
    let request = |filter: String| {
        let url = format!("{}/v1/shape?table=todos&where={}&offset=-1", gw.base(), enc(&filter));
        tokio::spawn(async move { testkit::get(&url).await })
    };
    let user = |u: usize| format!("project_id IN (SELECT project_id FROM members WHERE user_id = 'u{u}')");
    // Loads wait on a lock: four batches take every query slot, a fifth waits for one, and
    // the loads arriving meanwhile queue up to form one batch.
    let locker = testkit::connect(&env.url).await;
    locker.batch_execute("begin; lock table members in access exclusive mode").await.unwrap();
    let waiting_on_members = |n: i64| testkit::waiting_on_lock(&env.db, "members", n);
    let mut early = Vec::new();
    for u in 100..104 {
        early.push(request(user(u)));
        waiting_on_members(early.len() as i64).await;
    }
    early.push(request(user(104)));
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let fragile = request("project_id IN (SELECT project_id FROM members WHERE 10 / (project_id - 7) > 0)".into());
    let batch: Vec<_> = (105..110).map(|u| request(user(u))).collect();
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    locker.batch_execute("commit").await.unwrap();
    let fragile = fragile.await.unwrap();
    assert_eq!(fragile.status, 400, "its filter fails in PostgreSQL: {}", fragile.body);
    for r in early.into_iter().chain(batch) {
        let r = r.await.unwrap();
        assert_eq!(r.status, 200, "{}", r.body);
    }
}

/// PostgreSQL streams a commit once its WAL is flushed and shows it to new snapshots a moment
/// later: a move query reading in between missed the very membership it moves (the first
/// moves of a load-test run read no rows). Its snapshot must show every set change it covers.
#[tokio::test]
async fn a_move_query_reads_only_at_a_snapshot_showing_the_set_changes_it_moves() {
    use std::time::Duration;
    let env = Env::new().await;
    let db = testkit::connect(&env.url).await;
    let committed = db.query_one("select txid_current()", &[]).await.unwrap().get::<_, i64>(0) as u32;
    let snapshot = gateway::sets::snapshot_seeing(&db, &[committed], Duration::from_secs(5)).await.unwrap();
    assert!(snapshot.contains(committed));
    db.batch_execute("commit").await.unwrap();
    // A transaction no snapshot shows yet: the query waits, then fails rather than read.
    let unseen = committed.wrapping_add(1000);
    let refused = gateway::sets::snapshot_seeing(&db, &[unseen], Duration::from_millis(200)).await;
    assert!(matches!(refused, Err(gateway::sets::QueryError::NotVisible(_))), "{refused:?}");
    db.batch_execute("select 1").await.expect("the session is usable after");
}

/// A shape through two subqueries (a user's projects, or todos the user watches; and none
/// the user hid): one transaction changing two of its sets moves both at once, and after a
/// restart and a `kill -9` with both changed meanwhile, the client resumes without a refetch.
#[tokio::test]
async fn a_shape_through_several_subqueries_moves_them_together_and_resumes_after_a_restart() {
    let env = Env::new().await;
    env.sql(SCHEMA).await;
    env.sql(
        "create table watchers (user_id text, todo_id int8, primary key (user_id, todo_id));
         create table hidden (user_id text, todo_id int8, primary key (user_id, todo_id));
         insert into watchers values ('u1', 2), ('u2', 3);",
    )
    .await;
    let mut gw = env.ready_gateway().await;
    let watched = "project_id IN (SELECT project_id FROM members WHERE user_id = 'u1') \
                   OR id IN (SELECT todo_id FROM watchers WHERE user_id = 'u1')";
    let unhidden = "project_id IN (SELECT project_id FROM members WHERE user_id = 'u1') \
                    AND id NOT IN (SELECT todo_id FROM hidden WHERE user_id = 'u1')";
    let mut w = synced(&gw, watched).await;
    let mut u = synced(&gw, unhidden).await;
    let steps = [
        "begin; insert into members values ('u1', 2); insert into watchers values ('u1', 3); commit",
        "begin; delete from members where user_id = 'u1' and project_id = 1; insert into watchers values ('u1', 5); commit",
        "begin; insert into members values ('u1', 1); insert into hidden values ('u1', 5), ('u1', 6); commit",
        "begin; delete from watchers where todo_id = 3; delete from hidden where todo_id = 5; \
         insert into members values ('u1', 3); commit",
    ];
    for step in steps {
        env.sql(step).await;
        converge(&env, &mut w, watched).await;
        converge(&env, &mut u, unhidden).await;
    }

    gw.restart().await;
    env.sql("begin; insert into watchers values ('u1', 8); insert into hidden values ('u1', 9); commit").await;
    converge(&env, &mut w, watched).await;
    converge(&env, &mut u, unhidden).await;

    gw.kill9();
    env.sql("begin; delete from members where user_id = 'u1' and project_id = 2; delete from hidden where todo_id = 6; commit")
        .await;
    env.sql("insert into watchers values ('u1', 10), ('u1', 14)").await;
    gw.spawn_again();
    gw.ready().await;
    converge(&env, &mut w, watched).await;
    converge(&env, &mut u, unhidden).await;
}
