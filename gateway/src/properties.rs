//! Property tests of what the gateway parses from outside (the fuzz harness; cargo-fuzz
//! needs a nightly toolchain and libFuzzer, which these machines lack): truncated pgoutput
//! messages (arbitrary bytes: `replication::decode`'s own tests), outbox batches and their planning, the config file and its access rules. No
//! input may panic; client values never become SQL text. PROPTEST_CASES bounds the cases.

use bytes::Bytes;
use proptest::prelude::*;
use serde_json::{Map, Value};

use crate::auth::ColumnSet;
use crate::auth::rules::AccessRules;
use crate::config::ConfigFile;
use crate::outbox::plan;
use crate::outbox::{Batch, Op};
use crate::replication::decode::decode;

fn cases() -> u32 {
    std::env::var("PROPTEST_CASES").ok().and_then(|c| c.parse().ok()).unwrap_or(2000)
}

/// JSON of any shape, a few levels deep.
fn json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
        "\\PC{0,16}".prop_map(Value::String),
    ];
    leaf.prop_recursive(3, 32, 6, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            proptest::collection::btree_map("[a-z_]{1,8}|id|op|key|value|mutations|client_id", inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// A column-name-to-value map that may name real columns, unknown ones, or hostile text.
fn row_map() -> impl Strategy<Value = Map<String, Value>> {
    proptest::collection::btree_map("id|org|Body|version|nope|\"id\"|id; drop table x|\\PC{0,6}", json(), 0..5)
        .prop_map(|m| m.into_iter().collect())
}

/// A mutation's key, value or base: mostly an object of columns, sometimes any JSON.
fn fields() -> impl Strategy<Value = Value> {
    prop_oneof![3 => row_map().prop_map(Value::Object), 1 => json()]
}

/// Any JSON body pushed to the outbox, through the router as a client sends it (no
/// database: what is refused is refused before one is reached, and the rest finds none),
/// gets a JSON answer, never a panic's 500.
#[test]
fn any_json_body_pushed_gets_a_json_answer_never_a_panic() {
    use crate::http::tests::{push, send, state};
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let (state, _dir) = state();
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig { cases: cases(), ..Default::default() });
    let outcome = runner.run(&json(), |body| {
        let (status, _, answer) = runtime.block_on(send(&state, push(&body.to_string())));
        prop_assert_ne!(status.as_u16(), 500, "{}", answer);
        prop_assert!(answer.is_object(), "{} answered {}", status, answer);
        if !status.is_success() {
            prop_assert!(answer["message"].is_string(), "{} answered {}", status, answer);
        }
        Ok(())
    });
    outcome.unwrap();
}

/// A marker that must never appear in generated SQL when it came from a client value.
const MARK: &str = "zq'\"x;--";

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), ..ProptestConfig::default() })]

    #[test]
    fn truncated_real_messages_fail_cleanly(cut in 0usize..64) {
        // An Insert of relation 16384 with two text columns, cut anywhere.
        let mut m = vec![b'I', 0, 0, 0x40, 0, b'N', 0, 2, b't', 0, 0, 0, 1, b'1', b't', 0, 0, 0, 2, b'a', b'b'];
        m.truncate(cut.min(m.len()));
        let _ = decode(Bytes::from(m));
    }

    #[test]
    fn any_batch_shaped_body_is_checked_mutation_by_mutation_never_a_panic(
        mutations in proptest::collection::vec(("insert|update|upsert|delete|\\PC{0,6}", fields(), fields(), fields()), 0..4),
    ) {
        let mutations: Vec<Value> = mutations
            .into_iter()
            .enumerate()
            .map(|(i, (op, key, value, base))| serde_json::json!({"id": i + 1, "table": "notes", "op": op, "key": key, "value": value, "base": base}))
            .collect();
        let body = serde_json::json!({"client_id": "c", "mutations": mutations}).to_string();
        if let Ok(batch) = serde_json::from_str::<Batch>(&body) {
            let target = plan::tests::target(plan::tests::table(), None, ColumnSet::all(), Some("version"));
            for m in &batch.mutations {
                if let Some(op) = Op::parse(&m.op)
                    && let Ok(write) = plan::check(&target, op, m.key.as_ref(), m.value.as_ref(), m.base.as_ref())
                {
                    let _ = (write.statement(), write.current_row());
                }
            }
        }
    }

    #[test]
    fn client_values_never_become_sql_text(
        op in prop::sample::select(vec![Op::Insert, Op::Update, Op::Delete, Op::Upsert]),
        key in row_map(),
        value in row_map(),
        base in row_map(),
        marked in any::<bool>(),
    ) {
        let mark = |mut m: Map<String, Value>| {
            if marked {
                for v in m.values_mut() {
                    *v = Value::String(MARK.into());
                }
            }
            m
        };
        let [key, value, base] = [key, value, base].map(|m| plan::tests::obj(Value::Object(mark(m))));
        let target = plan::tests::target(plan::tests::table(), None, ColumnSet::all(), Some("version"));
        if let Ok(write) = plan::check(&target, op, Some(&key), Some(&value), Some(&base)) {
            let statement = write.statement();
            prop_assert!(!statement.sql.contains(MARK), "{}", statement.sql);
            let current = write.current_row();
            prop_assert!(!current.sql.contains(MARK), "{}", current.sql);
        }
    }

    #[test]
    fn any_config_text_is_read_or_refused_never_a_panic(text in "\\PC{0,300}") {
        let _ = ConfigFile::parse(&text, "fuzz.toml");
    }

    #[test]
    fn any_access_rule_compiles_or_is_refused_never_a_panic(
        name in "[a-z]{1,6}(\\.[a-z]{1,6})?|\\PC{0,10}",
        scope in "[a-z_]{1,6} (=|IN|<>) :[a-z_]{1,6}|\\PC{0,40}",
        columns in proptest::collection::vec("[a-z]{1,6}|\\PC{0,4}", 0..4),
        conflict in "last_write_wins|reject_stale|\\PC{0,6}",
    ) {
        let text = format!(
            "[[table]]\nname = {}\nscope = {}\ncolumns = {}\nconflict = {}\nversion_column = \"v\"\n",
            toml::Value::String(name),
            toml::Value::String(scope),
            toml::Value::Array(columns.into_iter().map(toml::Value::String).collect()),
            toml::Value::String(conflict),
        );
        if let Ok(file) = ConfigFile::parse(&text, "fuzz.toml") {
            let _ = AccessRules::compile(&file.rules);
        }
    }
}
