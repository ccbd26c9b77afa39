//! Subqueries agree with PostgreSQL: random data with NULLs, random filters through
//! `IN` / `NOT IN` subqueries (nested, row form, combined with AND/OR/NOT); the rows our
//! evaluator selects against sets loaded from PostgreSQL equal the rows PostgreSQL selects
//! with the client's text and with our rendered SQL.

use std::collections::{BTreeSet, HashMap};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use shapes::change::Cell;
use shapes::subquery_set::{RowWithSets, SetLookup, SubquerySet};
use shapes::table::TableName;
use shapes::where_clause::{BindOptions, Subquery, parse_where_with_tables};
use testkit::Env;

/// The sets of one filter's subqueries, by their SQL.
struct Loaded(HashMap<String, SubquerySet>);

impl SetLookup for Loaded {
    fn set(&self, subquery: &Subquery) -> Option<&SubquerySet> {
        self.0.get(&subquery.to_sql())
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

fn predicate(rng: &mut StdRng, depth: u32) -> String {
    if depth == 0 || rng.random_bool(0.4) {
        return atom(rng);
    }
    match rng.random_range(0..3) {
        0 => format!("({} AND {})", predicate(rng, depth - 1), predicate(rng, depth - 1)),
        1 => format!("({} OR {})", predicate(rng, depth - 1), predicate(rng, depth - 1)),
        _ => format!("NOT ({})", predicate(rng, depth - 1)),
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
    let mut checked = 0;
    for _ in 0..400 {
        let text = predicate(&mut rng, 3);
        let expr = match parse_where_with_tables(&text, &todos, &catalog, &HashMap::new(), BindOptions::default()) {
            Ok(e) => e,
            Err(e) => panic!("{text}: {e}"),
        };
        let mut sets = HashMap::new();
        for subquery in expr.subqueries() {
            sets.insert(subquery.to_sql(), gateway::sets::load(&env.db, subquery).await.unwrap());
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
        checked += 1;
    }
    assert_eq!(checked, 400);
}
