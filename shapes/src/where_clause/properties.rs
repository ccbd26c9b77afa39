//! Property tests of the where-clause language (the fuzz harness; cargo-fuzz needs a
//! nightly toolchain and libFuzzer, which these machines lack). Client text of any shape
//! must never panic the parser or the evaluator; what parses must render back to SQL that
//! parses to the same expression and evaluates the same way. The seed corpus
//! (`shapes/tests/corpus/where.txt`, scope-escape attempts and oddities) runs every time;
//! PROPTEST_CASES bounds the generated cases.

use std::collections::HashMap;

use proptest::prelude::*;

use super::EvalError;
use super::eval::Row;
use super::fixture::table;
use super::{BindOptions, parse_where};

#[derive(Debug)]
struct TextRow(Vec<Option<String>>);

impl Row for TextRow {
    fn text(&self, column: usize) -> Result<Option<&str>, EvalError> {
        Ok(self.0.get(column).and_then(|v| v.as_deref()))
    }
}

fn params() -> HashMap<usize, String> {
    HashMap::from([(1, "42".to_string()), (2, "x".to_string())])
}

fn options() -> BindOptions {
    BindOptions { text_sorts_bytewise: true }
}

/// Values a row of the test table may hold, valid or not for the column's type.
fn cell() -> impl Strategy<Value = Option<String>> {
    prop_oneof![
        Just(None),
        "-?[0-9]{1,20}(\\.[0-9]{1,5})?".prop_map(Some),
        "[ -~]{0,12}".prop_map(Some),
        Just(Some("t".into())),
        Just(Some("{a,\"b c\",NULL}".into())),
        Just(Some("2024-02-29".into())),
    ]
}

fn row() -> impl Strategy<Value = TextRow> {
    proptest::collection::vec(cell(), 8).prop_map(TextRow)
}

/// Expressions built from the grammar, over the test table's columns.
fn expr() -> impl Strategy<Value = String> {
    let leaf = prop_oneof![
        ("(id|price)", "(=|<>|<|<=|>|>=)", "-?[0-9]{1,6}(\\.[0-9]{1,3})?").prop_map(|(c, o, v)| format!("{c} {o} {v}")),
        ("(title|\"Org\")", "(=|<>|<|>)", "[a-zA-Z0-9 ']{0,8}")
            .prop_map(|(c, o, v)| format!("{c} {o} '{}'", v.replace('\'', "''"))),
        "(title|\"Org\") (NOT )?(LIKE|ILIKE) '[a-z%_]{0,5}'",
        "(id|title|price|done|tags|due) IS (NOT )?NULL",
        "done( = (true|false))?",
        "id (NOT )?IN \\((1|2|3)(, (4|5)){0,3}\\)",
        "id (NOT )?BETWEEN -?[0-9]{1,3} AND [0-9]{1,3}",
        "'[a-c]' = ANY\\(tags\\)",
        "tags @> ARRAY\\['a'\\]",
        "due (<|>=) '2024-0[1-9]-1[0-9]'",
        "(id|price) (\\+|-|\\*) [1-9] > [0-9]{1,2}",
        "id = \\$1",
        "lower\\(title\\) = '[a-z]{0,4}'",
        "length\\(title\\) > [0-9]",
    ];
    leaf.prop_recursive(4, 24, 2, |inner| {
        prop_oneof![
            (inner.clone(), "(AND|OR)", inner.clone()).prop_map(|(a, op, b)| format!("({a}) {op} ({b})")),
            inner.prop_map(|e| format!("NOT ({e})")),
        ]
    })
}

fn cases() -> u32 {
    std::env::var("PROPTEST_CASES").ok().and_then(|c| c.parse().ok()).unwrap_or(2000)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), ..ProptestConfig::default() })]

    #[test]
    fn any_text_is_refused_or_bound_never_a_panic(text in "\\PC{0,200}") {
        let _ = parse_where(&text, &table(), &params(), options());
    }

    #[test]
    fn token_soup_is_refused_or_bound_and_evaluates_never_a_panic(
        tokens in proptest::collection::vec(proptest::sample::select(vec![
            "id", "title", "price", "done", "tags", "due", "mood", "\"Org\"", "=", "<>", "<", ">=", "AND", "OR", "NOT",
            "(", ")", ",", "IN", "BETWEEN", "LIKE", "ILIKE", "IS", "NULL", "TRUE", "'x'", "1", "-", "+", "*", "/", "%",
            "::", "int", "text", "ANY", "ALL", "ARRAY[", "]", "$1", "$2", "$9", "lower(", "coalesce(", "||", "DISTINCT",
            "FROM", "select", ";", "--", "/*",
        ]), 0..40),
        cells in row(),
    ) {
        if let Ok(e) = parse_where(&tokens.join(" "), &table(), &params(), options()) {
            let _ = e.eval(&cells);
        }
    }

    #[test]
    fn what_binds_renders_back_to_the_same_filter(text in expr(), cells in row()) {
        let e = parse_where(&text, &table(), &params(), options());
        prop_assume!(e.is_ok());
        let e = e.unwrap();
        let sql = e.to_sql();
        let again = parse_where(&sql, &table(), &HashMap::new(), options())
            .unwrap_or_else(|err| panic!("{text:?} rendered as {sql:?}, which does not parse: {err}"));
        prop_assert_eq!(&again, &e, "rendered as {}", sql);
        prop_assert_eq!(again.eval(&cells), e.eval(&cells));
    }
}

#[test]
fn the_seed_corpus_is_refused_or_bound_never_a_panic() {
    let corpus = include_str!("../../tests/corpus/where.txt");
    let mut bound = 0;
    for line in corpus.lines().filter(|l| !l.is_empty() && !l.starts_with('#')) {
        if let Ok(e) = parse_where(line, &table(), &params(), options()) {
            bound += 1;
            let _ = e.eval(&TextRow(vec![None; 8]));
            let _ = e.eval(&TextRow(vec![Some("1".into()); 8]));
        }
    }
    assert!(bound > 0, "the corpus holds valid filters too");
}
