//! The tables the where-clause tests bind against.

use crate::table::{Column, TableName, TableSchema};

fn col(name: &str, ty: &str, dims: u32, pk: Option<u32>) -> Column {
    Column {
        name: name.into(),
        type_oid: 0,
        type_name: ty.into(),
        type_sql: String::new(),
        dims,
        type_mod: -1,
        not_null: pk.is_some(),
        pk_index: pk,
    }
}

/// `memberships (item_id int8, user_id text, note text, score numeric)`, for subqueries.
pub(crate) fn memberships() -> TableSchema {
    TableSchema {
        oid: 2,
        name: TableName::new("public", "memberships"),
        columns: vec![
            col("item_id", "int8", 0, None),
            col("user_id", "text", 0, None),
            col("note", "text", 0, None),
            col("score", "numeric", 0, None),
        ],
        replica_identity_full: false,
    }
}

pub(crate) fn table() -> TableSchema {
    TableSchema {
        oid: 1,
        name: TableName::new("public", "items"),
        columns: vec![
            col("id", "int8", 0, Some(0)),
            col("title", "text", 0, None),
            col("price", "numeric", 0, None),
            col("done", "bool", 0, None),
            col("tags", "text", 1, None),
            col("due", "date", 0, None),
            col("mood", "mood", 0, None),
            col("Org", "text", 0, None),
        ],
        replica_identity_full: true,
    }
}
