//! The filter evaluator agrees with PostgreSQL: random rows, random predicates; for each,
//! the rows our evaluator selects equal the rows PostgreSQL selects with the client's text
//! and with our rendered SQL.

use std::collections::{BTreeSet, HashMap};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use shapes::change::Cell;
use shapes::table::TableName;
use shapes::where_clause::{BindOptions, parse_where};

use testkit::Env;

fn pick<'a>(rng: &mut StdRng, xs: &[&'a str]) -> &'a str {
    xs[rng.random_range(0..xs.len())]
}

fn atom(rng: &mut StdRng) -> String {
    let op = pick(rng, &["=", "<>", "<", "<=", ">", ">="]);
    let int = rng.random_range(-5..15);
    let num = format!("{}.{}", rng.random_range(-5..15), rng.random_range(0..100));
    let hour = rng.random_range(0..24);
    match rng.random_range(0..38) {
        // Without spaces, `i>-3` must lex as PostgreSQL lexes it.
        0 => {
            if rng.random_bool(0.5) {
                format!("i {op} {int}")
            } else {
                format!("i{op}{int}")
            }
        }
        1 => format!("f {op} {}", rng.random_range(-50..150) as f64 / 10.0),
        2 => format!("n {op} {}.{}", rng.random_range(-5..15), rng.random_range(0..100)),
        3 => format!("t {op} '{}'", pick(rng, &["a", "ab", "b", "B", "ba", "", "zz"])),
        4 => format!(
            "t {} '{}'{}",
            pick(rng, &["LIKE", "ILIKE", "NOT LIKE", "NOT ILIKE"]),
            pick(rng, &["a%", "%b", "_", "%", "A%", "a_", "a!%", "!_b"]),
            pick(rng, &["", " ESCAPE '!'", " ESCAPE ''"])
        ),
        5 => pick(rng, &["b", "NOT b", "b IS TRUE", "b IS NOT FALSE", "b IS UNKNOWN", "b = false"]).to_string(),
        6 => format!("{} IS {}NULL", pick(rng, &["i", "t", "b", "d", "a"]), pick(rng, &["", "NOT "])),
        7 => format!("i {}IN ({}, {}, {})", pick(rng, &["", "NOT "]), int, int + 2, pick(rng, &["NULL", "7", "1"])),
        8 => {
            let (lo, hi) = if rng.random_bool(0.5) { (int, int + 4) } else { (int + 4, int) };
            let kind = pick(rng, &["", "SYMMETRIC ", "ASYMMETRIC "]);
            format!("i {}BETWEEN {kind}{lo} AND {hi}", pick(rng, &["", "NOT "]))
        }
        9 => format!("d {op} '2024-01-{:02}'", rng.random_range(1..28)),
        10 => format!("ts {op} '2024-01-10 {:02}:00:00+00'", rng.random_range(0..24)),
        11 => format!("{int} = ANY(a)"),
        12 => format!("i + {int} {op} f"),
        13 => format!("lower(t) {op} '{}'", pick(rng, &["a", "b", "ab"])),
        14 => format!("coalesce(i, {int}) {op} 3"),
        15 => format!("i % 3 = {}", rng.random_range(0..3)),
        16 => format!("a {} ARRAY[{int}, {}]", pick(rng, &["@>", "<@", "&&"]), int + 1),
        17 => format!("n {} {num} {op} {num}", pick(rng, &["+", "-", "*"])),
        18 => format!("n {} {} {op} {num}", pick(rng, &["/", "%"]), pick(rng, &["3", "7", "0.3", "-2.5"])),
        19 => format!("{} {op} {num}", pick(rng, &["-n", "@ n", "@ i", "-(n * 3)"])),
        20 => format!("i {} {} {op} {int}", pick(rng, &["&", "|", "#"]), rng.random_range(1..8)),
        21 => format!("~i {op} {int}"),
        22 => format!("{} {op} {num}", pick(rng, &["i ^ 2", "f ^ 2", "|/ (@ f)", "||/ f", "|/ (@ i)"])),
        23 => format!(
            "d {} {} {op} '2024-01-{:02}'",
            pick(rng, &["+", "-"]),
            rng.random_range(0..10),
            rng.random_range(1..28)
        ),
        24 => format!("d - DATE '2024-01-10' {op} {int}"),
        25 => format!(
            "{} @> ARRAY[{int}]",
            pick(rng, &["a || ARRAY[3]", "array_append(a, 4)", "array_prepend(5, a)", "array_cat(a, a)"])
        ),
        26 => format!("{int} = ANY(a || {})", pick(rng, &["NULL::int4", "1", "ARRAY[2, NULL]"])),
        27 => format!("array_ndims(a) {}", pick(rng, &["= 1", "IS NULL", "> 0"])),
        28 => format!("n / {num} {op} {num}"),
        29 => format!(
            "ts {} INTERVAL '{} hours' {op} '2024-01-10 {hour:02}:00:00+00'",
            pick(rng, &["+", "-"]),
            rng.random_range(0..30)
        ),
        30 => format!(
            "d + '{}'::interval {op} '2024-01-{:02} {hour:02}:00'",
            pick(rng, &["1 mon", "-1 day", "36 hours", "1 mon -3 days"]),
            rng.random_range(1..28)
        ),
        31 => format!("ts - '2024-01-10 00:00+00' {op} '{hour} hours'"),
        32 => format!("iv {op} '{}'", pick(rng, &["1 day", "30 days", "1 mon", "-02:00:00", "0", "1 mon -1 day"])),
        33 => format!(
            "{}(iv)::text LIKE '%{}%'",
            pick(rng, &["justify_days", "justify_hours", "justify_interval", ""]),
            pick(rng, &["mon", "day", ":", "-", "+"])
        ),
        34 => format!("ts + iv {op} '2024-01-11 {hour:02}:00+00'"),
        35 => format!(
            "{} {op} '2024-01-10 {hour:02}:00'",
            pick(
                rng,
                &[
                    "timezone('UTC', ts)",
                    "ts AT TIME ZONE INTERVAL '05:30'",
                    "(ts AT TIME ZONE 'UTC') AT TIME ZONE 'UTC'"
                ]
            )
        ),
        36 => format!("tm {} iv {op} '{hour:02}:30'", pick(rng, &["+", "-"])),
        _ => format!("i IS DISTINCT FROM {}", pick(rng, &["NULL", "3"])),
    }
}

/// A random boolean combination, `depth` deep at most, of atoms `atom` draws.
pub(crate) fn predicate(rng: &mut StdRng, depth: u32, atom: fn(&mut StdRng) -> String) -> String {
    if depth == 0 || rng.random_bool(0.4) {
        return atom(rng);
    }
    match rng.random_range(0..3) {
        0 => format!("({} AND {})", predicate(rng, depth - 1, atom), predicate(rng, depth - 1, atom)),
        1 => format!("({} OR {})", predicate(rng, depth - 1, atom), predicate(rng, depth - 1, atom)),
        _ => format!("NOT ({})", predicate(rng, depth - 1, atom)),
    }
}

#[tokio::test]
async fn evaluator_and_renderer_agree_with_postgres_on_random_filters() {
    let env = Env::new().await;
    env.sql("create table p (id int4 primary key, i int4, f float8, n numeric, t text, b bool, d date, ts timestamptz, a int4[], iv interval, tm time)").await;
    let mut rng = StdRng::seed_from_u64(0x5ea5);
    for id in 0..60 {
        let null = |rng: &mut StdRng, v: String| {
            if rng.random_bool(0.15) { "NULL".to_string() } else { v }
        };
        macro_rules! nullable {
            ($e:expr) => {{
                let v = $e;
                null(&mut rng, v)
            }};
        }
        let i = nullable!(rng.random_range(-5..15).to_string());
        let f = nullable!(format!("{}", rng.random_range(-50..150) as f64 / 10.0));
        let n = nullable!(format!("{}.{}", rng.random_range(-5..15), rng.random_range(0..100)));
        let t = nullable!(format!("'{}'", pick(&mut rng, &["a", "ab", "b", "B", "ba", "", "Abc", "zz"])));
        let b = nullable!(pick(&mut rng, &["true", "false"]).to_string());
        let d = nullable!(format!("'2024-01-{:02}'", rng.random_range(1..28)));
        let ts = nullable!(format!("'2024-01-10 {:02}:30:00+00'", rng.random_range(0..24)));
        let a = nullable!(match rng.random_range(0..4) {
            0 => "'{}'".to_string(),
            _ => format!("'{{{},{},NULL}}'", rng.random_range(-5..15), rng.random_range(-5..15)),
        });
        let iv = nullable!(format!(
            "'{}'",
            pick(
                &mut rng,
                &[
                    "1 day",
                    "30 days",
                    "1 mon",
                    "-02:00:00",
                    "00:00:00",
                    "1 mon -1 day",
                    "36:30:00",
                    "-1 days +02:00:00",
                    "1 year 2 mons",
                    "45 days 30:00:00"
                ]
            )
        ));
        let tm = nullable!(format!("'{:02}:{:02}'", rng.random_range(0..24), rng.random_range(0..60)));
        env.sql(&format!("insert into p values ({id}, {i}, {f}, {n}, {t}, {b}, {d}, {ts}, {a}, {iv}, {tm})")).await;
    }
    let schema = gateway::db::table_schema(&env.db, &TableName::new("public", "p")).await.unwrap().unwrap();
    env.sql("set timezone = 'UTC'; set datestyle = 'ISO, DMY'; set extra_float_digits = 1").await;
    let cols: Vec<String> = schema.columns.iter().map(|c| format!("{}::text", c.name)).collect();
    let rows: Vec<Vec<Cell>> = env
        .db
        .query(&format!("select {} from p", cols.join(", ")), &[])
        .await
        .unwrap()
        .iter()
        .map(|r| {
            (0..cols.len())
                .map(|i| r.get::<_, Option<String>>(i).map(|s| Cell::text(&s)).unwrap_or(Cell::Null))
                .collect()
        })
        .collect();
    let ids = |sql: String| {
        let db = &env.db;
        async move { db.query(&sql, &[]).await.map(|r| r.iter().map(|r| r.get::<_, i32>(0)).collect::<BTreeSet<i32>>()) }
    };
    let options = BindOptions { text_sorts_bytewise: true };
    let mut checked = 0;
    for _ in 0..600 {
        let text = predicate(&mut rng, 3, atom);
        let expr = parse_where(&text, &schema, &HashMap::new(), options).unwrap_or_else(|e| panic!("{text}: {e}"));
        let Ok(by_pg) = ids(format!("select id from p where {text}")).await else {
            continue;
        };
        let mut ours = BTreeSet::new();
        for row in &rows {
            if expr.matches(row.as_slice()).unwrap_or_else(|e| panic!("{text}: {e}")) {
                ours.insert(row[0].as_str().unwrap().parse::<i32>().unwrap());
            }
        }
        assert_eq!(ours, by_pg, "evaluator disagrees with PostgreSQL on: {text}");
        let rendered = ids(format!("select id from p where {}", expr.to_sql()))
            .await
            .unwrap_or_else(|e| panic!("{}: {e}", expr.to_sql()));
        assert_eq!(rendered, by_pg, "rendered SQL disagrees: {text} → {}", expr.to_sql());
        checked += 1;
    }
    assert!(checked > 400, "most predicates must be checkable, got {checked}");
}
