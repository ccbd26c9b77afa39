//! Subqueries agree with PostgreSQL: random data with NULLs, random filters through
//! `IN` / `NOT IN` subqueries (nested, row form, combined with AND/OR/NOT); the rows our
//! evaluator selects against sets loaded from PostgreSQL equal the rows PostgreSQL selects
//! with the client's text and with our rendered SQL.

use std::collections::{BTreeSet, HashMap};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use shapes::change::Cell;
use shapes::subquery_set::{RowWithSets, SetKey, SetLookup, SubquerySet};
use shapes::table::TableName;
use shapes::value::SqlType;
use shapes::where_clause::{BindOptions, SetView, Subquery, parse_where_with_tables};
use testkit::Env;

use crate::filters::predicate;

/// The sets of one filter's subqueries, by their SQL.
struct Loaded(HashMap<String, SubquerySet>);

impl SetLookup for Loaded {
    fn set(&self, subquery: &Subquery) -> Option<&SubquerySet> {
        self.0.get(subquery.to_sql())
    }
}

fn user(rng: &mut StdRng) -> String {
    format!("'u{}'", rng.random_range(0..5))
}

fn atom(rng: &mut StdRng) -> String {
    let not = if rng.random_bool(0.3) { "NOT " } else { "" };
    match rng.random_range(0..7) {
        0 => format!("project_id {not}IN (SELECT project_id FROM members WHERE user_id = {})", user(rng)),
        1 => format!("project_id {not}IN (SELECT project_id FROM members WHERE role = 'admin')"),
        2 => format!("project_id {not}IN (SELECT id FROM projects WHERE archived)"),
        3 => format!(
            "project_id {not}IN (SELECT project_id FROM members WHERE user_id IN (SELECT owner FROM todos WHERE id < {}))",
            rng.random_range(0..30)
        ),
        4 => format!("(project_id, owner) {not}IN (SELECT project_id, user_id FROM members)"),
        5 => format!("owner {not}IN (SELECT user_id FROM members WHERE project_id = {})", rng.random_range(0..8)),
        _ => format!("id > {}", rng.random_range(0..30)),
    }
}

#[tokio::test]
async fn subquery_filters_agree_with_postgres() {
    let env = Env::new().await;
    env.sql(
        "create table projects (id int8 primary key, archived bool);
         create table members (user_id text, project_id int8, role text);
         create table todos (id int4 primary key, project_id int8, owner text);",
    )
    .await;
    let mut rng = StdRng::seed_from_u64(0x5b9);
    let null_or = |rng: &mut StdRng, v: String| if rng.random_bool(0.15) { "NULL".to_string() } else { v };
    for id in 0..8 {
        let archived = rng.random_bool(0.3).to_string();
        let archived = null_or(&mut rng, archived);
        env.sql(&format!("insert into projects values ({id}, {archived})")).await;
    }
    for _ in 0..25 {
        let (u, p) = (user(&mut rng), rng.random_range(0..9).to_string());
        let (u, p) = (null_or(&mut rng, u), null_or(&mut rng, p));
        let role = if rng.random_bool(0.3) { "'admin'" } else { "'member'" };
        env.sql(&format!("insert into members values ({u}, {p}, {role})")).await;
    }
    for id in 0..30 {
        let (p, o) = (rng.random_range(0..9).to_string(), user(&mut rng));
        let (p, o) = (null_or(&mut rng, p), null_or(&mut rng, o));
        env.sql(&format!("insert into todos values ({id}, {p}, {o})")).await;
    }
    let mut catalog = Vec::new();
    for table in ["projects", "members", "todos"] {
        catalog.push(gateway::db::table_schema(&env.db, &TableName::new("public", table)).await.unwrap().unwrap());
    }
    let todos = catalog[2].clone();
    let rows: Vec<Vec<Cell>> = env
        .db
        .query("select id::text, project_id::text, owner from todos", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| (0..3).map(|i| r.get::<_, Option<String>>(i).map(|s| Cell::text(&s)).unwrap_or(Cell::Null)).collect())
        .collect();
    let selected = |sql: String| {
        let db = &env.db;
        async move {
            db.query(&format!("select id from todos where {sql}"), &[])
                .await
                .map(|r| r.iter().map(|r| r.get::<_, i32>(0)).collect::<BTreeSet<i32>>())
        }
    };
    let (mut checked, mut viewed_checks) = (0, 0);
    for _ in 0..400 {
        let text = predicate(&mut rng, 3, atom);
        let expr = match parse_where_with_tables(&text, &todos, &catalog, &HashMap::new(), BindOptions::default()) {
            Ok(e) => e,
            Err(e) => panic!("{text}: {e}"),
        };
        let mut sets = HashMap::new();
        for subquery in expr.subqueries() {
            sets.insert(subquery.to_sql().to_string(), gateway::sets::load(&env.db, subquery).await.unwrap());
        }
        let sets = Loaded(sets);
        let ours: BTreeSet<i32> = rows
            .iter()
            .filter(|row| {
                let row = RowWithSets { row: row.as_slice(), sets: &sets };
                expr.matches(&row).unwrap_or_else(|e| panic!("{text}: {e}"))
            })
            .map(|row| row[0].as_str().unwrap().parse().unwrap())
            .collect();
        let by_text = selected(text.clone()).await.unwrap_or_else(|e| panic!("{text}: {e}"));
        let by_render = selected(expr.to_sql()).await.unwrap_or_else(|e| panic!("{}: {e}", expr.to_sql()));
        assert_eq!(ours, by_text, "{text}");
        assert_eq!(by_render, by_text, "rendered: {}", expr.to_sql());

        // The set as it was before a change (some values gone, others there), rendered
        // while PostgreSQL's subquery yields the set after: what a move-in query reads.
        checked += 1;
        let Some(subquery) = expr.subqueries().first().map(|s| (*s).clone()) else { continue };
        let after = &sets.0[subquery.to_sql()];
        let without: Vec<SetKey> =
            after.values().filter(|v| !v.contains(&None) && rng.random_bool(0.5)).cloned().collect();
        let with: Vec<SetKey> = (0..rng.random_range(0..3))
            .map(|_| {
                let value = |ty: &SqlType, rng: &mut StdRng| match ty {
                    SqlType::Text => Some(format!("u{}", rng.random_range(0..5))),
                    _ => Some(rng.random_range(0..9).to_string()),
                };
                subquery.columns.iter().map(|(_, _, ty)| value(ty, &mut rng)).collect()
            })
            .collect();
        let before =
            SubquerySet::from_rows(after.values().filter(|v| !without.contains(v)).cloned().chain(with.clone()));
        let mut seen =
            Loaded(sets.0.iter().map(|(k, v)| (k.clone(), SubquerySet::from_rows(v.values().cloned()))).collect());
        seen.0.insert(subquery.to_sql().to_string(), before);
        let ours: BTreeSet<i32> = rows
            .iter()
            .filter(|row| expr.matches(&RowWithSets { row: row.as_slice(), sets: &seen }).unwrap())
            .map(|row| row[0].as_str().unwrap().parse().unwrap())
            .collect();
        let view = SetView { subquery: &subquery, without: &without, with: &with };
        let viewed = expr.to_sql_viewing(std::slice::from_ref(&view));
        assert_eq!(selected(viewed.clone()).await.unwrap_or_else(|e| panic!("{viewed}: {e}")), ours, "{viewed}");
        viewed_checks += 1;
    }
    assert_eq!(checked, 400);
    assert!(viewed_checks > 300, "{viewed_checks} filters with a subquery");
}

/// One row of `members`, as the test keeps it.
#[derive(Clone)]
struct Member {
    id: i32,
    user: Option<String>,
    project: Option<i64>,
    role: &'static str,
}

impl Member {
    fn tuple(&self) -> Vec<Cell> {
        let text = |v: Option<String>| v.map(|s| Cell::text(&s)).unwrap_or(Cell::Null);
        vec![
            Cell::text(&self.id.to_string()),
            text(self.user.clone()),
            text(self.project.map(|p| p.to_string())),
            Cell::text(self.role),
        ]
    }

    fn sql_values(&self) -> String {
        let q = |v: Option<String>| v.map(|s| format!("'{s}'")).unwrap_or("NULL".into());
        format!(
            "{}, {}, {}, '{}'",
            self.id,
            q(self.user.clone()),
            self.project.map_or("NULL".into(), |p| p.to_string()),
            self.role
        )
    }
}

fn random_member(rng: &mut StdRng, id: i32) -> Member {
    Member {
        id,
        user: rng.random_bool(0.85).then(|| format!("u{}", rng.random_range(0..4))),
        project: rng.random_bool(0.85).then(|| rng.random_range(0..6)),
        role: if rng.random_bool(0.3) { "admin" } else { "member" },
    }
}

/// Sets kept from transactions equal sets loaded afresh after each one, and their deltas
/// are exactly the values that appeared and disappeared.
#[tokio::test]
async fn sets_kept_from_transactions_equal_sets_loaded_afresh() {
    use shapes::change::{Change, Txn, TxnItem};
    use shapes::offset::Lsn;
    use shapes::set_registry::SetRegistry;

    let env = Env::new().await;
    env.sql(
        "create table members (id int4 primary key, user_id text, project_id int8, role text);
         create table todos (id int4 primary key, project_id int8, owner text);",
    )
    .await;
    let catalog = vec![
        gateway::db::table_schema(&env.db, &TableName::new("public", "members")).await.unwrap().unwrap(),
        gateway::db::table_schema(&env.db, &TableName::new("public", "todos")).await.unwrap().unwrap(),
    ];
    let members_oid = catalog[0].oid;
    let mut rng = StdRng::seed_from_u64(0x5e75);
    let mut rows: Vec<Member> = (0..12).map(|id| random_member(&mut rng, id)).collect();
    for m in &rows {
        env.sql(&format!("insert into members values ({})", m.sql_values())).await;
    }
    let filters = [
        "project_id IN (SELECT project_id FROM members WHERE user_id = 'u0')",
        "project_id IN (SELECT project_id FROM members WHERE user_id = 'u1' OR role = 'admin')",
        "project_id NOT IN (SELECT project_id FROM members WHERE role = 'admin')",
        "(project_id, owner) IN (SELECT project_id, user_id FROM members)",
        "owner IN (SELECT user_id FROM members WHERE project_id = 2)",
        "owner IN (SELECT user_id FROM members WHERE project_id IS NULL)",
    ];
    let mut registry = SetRegistry::default();
    let mut kept = Vec::new();
    for text in filters {
        let e = parse_where_with_tables(text, &catalog[1], &catalog, &HashMap::new(), BindOptions::default()).unwrap();
        let subquery = e.subqueries()[0].clone();
        let loaded = gateway::sets::load(&env.db, &subquery).await.unwrap();
        let (id, _) = registry.acquire(&subquery, members_oid);
        registry.finish_load(id, loaded, |_| true).unwrap();
        kept.push((id, subquery));
    }
    let mut next_id = 100;
    for round in 0..150 {
        let mut sql = vec!["begin".to_string()];
        let mut items = Vec::new();
        for _ in 0..rng.random_range(1..4) {
            let change = match rng.random_range(0..3) {
                0 => {
                    let m = random_member(&mut rng, next_id);
                    next_id += 1;
                    sql.push(format!("insert into members values ({})", m.sql_values()));
                    let change = Change::Insert { new: m.tuple() };
                    rows.push(m);
                    change
                }
                1 if !rows.is_empty() => {
                    let i = rng.random_range(0..rows.len());
                    let old = rows[i].clone();
                    let new = random_member(&mut rng, old.id);
                    sql.push(format!(
                        "update members set (id, user_id, project_id, role) = ({}) where id = {}",
                        new.sql_values(),
                        old.id
                    ));
                    rows[i] = new.clone();
                    Change::Update { old: Some(old.tuple()), old_is_full: true, new: new.tuple() }
                }
                _ if !rows.is_empty() => {
                    let old = rows.remove(rng.random_range(0..rows.len()));
                    sql.push(format!("delete from members where id = {}", old.id));
                    Change::Delete { old: old.tuple(), old_is_full: true }
                }
                _ => continue,
            };
            items.push(TxnItem::Change { relation: members_oid, change });
        }
        sql.push("commit".into());
        env.sql(&sql.join(";\n")).await;
        let before: Vec<BTreeSet<Vec<Option<String>>>> =
            kept.iter().map(|(id, _)| registry.get(*id).unwrap().values().cloned().collect()).collect();
        let txn = Txn { xid: round, commit_lsn: Lsn(u64::from(round)), end_lsn: Lsn(u64::from(round) + 1), items };
        let applied = registry.apply(&txn);
        assert!(applied.failed.is_empty());
        let deltas = applied.deltas;
        for (n, (id, subquery)) in kept.iter().enumerate() {
            let fresh = gateway::sets::load(&env.db, subquery).await.unwrap();
            assert_eq!(registry.get(*id).unwrap(), &fresh, "round {round}: {}", subquery.to_sql());
            let after: BTreeSet<_> = fresh.values().cloned().collect();
            let entered: Vec<_> = after.difference(&before[n]).cloned().collect();
            let left: Vec<_> = before[n].difference(&after).cloned().collect();
            let delta = deltas.iter().find(|(d, _)| d == id).map(|(_, d)| (d.entered.clone(), d.left.clone()));
            assert_eq!(delta.unwrap_or_default(), (entered, left), "round {round}: {}", subquery.to_sql());
            for value in before[n].union(&after) {
                assert_eq!(
                    registry.holders(value).contains(id),
                    after.contains(value),
                    "round {round}: who holds {value:?}"
                );
            }
        }
    }
}
