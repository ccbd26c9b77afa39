//! Wire messages of the Electric shape protocol, encoded once per shape and stored as the
//! exact bytes clients receive.

use std::io::Write;

use bytes::Bytes;

use crate::contract::Operation;
use crate::log::LiveRead;
use crate::offset::Lsn;
use crate::table::TableSchema;

/// Bytes JSON strings must escape: `"`, `\\` and control characters.
const NEEDS_ESCAPE: [bool; 256] = {
    let mut t = [false; 256];
    let mut i = 0;
    while i < 0x20 {
        t[i] = true;
        i += 1;
    }
    t[b'"' as usize] = true;
    t[b'\\' as usize] = true;
    t
};

/// Writes `s` as a JSON string. Runs of ordinary bytes are copied as they are.
fn json_str(out: &mut Vec<u8>, s: &str) {
    out.reserve(s.len() + 2);
    out.push(b'"');
    json_escape(out, s);
    out.push(b'"');
}

/// Writes the JSON-escaped content of `s`, without quotes.
fn json_escape(out: &mut Vec<u8>, s: &str) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let bytes = s.as_bytes();
    let mut run = 0;
    while let Some(i) = bytes[run..].iter().position(|&b| NEEDS_ESCAPE[b as usize]).map(|p| run + p) {
        out.extend_from_slice(&bytes[run..i]);
        match bytes[i] {
            b'"' => out.extend_from_slice(b"\\\""),
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            b'\t' => out.extend_from_slice(b"\\t"),
            b => out.extend_from_slice(&[b'\\', b'u', b'0', b'0', HEX[(b >> 4) as usize], HEX[(b & 0xf) as usize]]),
        }
        run = i + 1;
    }
    out.extend_from_slice(&bytes[run..]);
}

/// Escapes a key component: `/` doubles (and `.` doubles in names) so keys split unambiguously.
fn key_part(out: &mut String, s: &str, dots: bool) {
    if !s.bytes().any(|b| b == b'/' || (dots && b == b'.')) {
        out.push_str(s);
        return;
    }
    for c in s.chars() {
        match c {
            '/' => out.push_str("//"),
            '.' if dots => out.push_str(".."),
            c => out.push(c),
        }
    }
}

/// Replication metadata of a live change.
#[derive(Clone, Copy, Debug)]
pub struct LiveHeaders<'a> {
    pub txid: u32,
    pub lsn: Lsn,
    pub op_position: u64,
    pub last: bool,
    pub key_change_to: Option<&'a str>,
    pub key_change_from: Option<&'a str>,
}

/// Encodes the change messages of one shape; the per-table parts are computed once.
#[derive(Clone, Debug)]
pub struct MessageEncoder {
    key_prefix: String,
    /// `{"key":"` and the key prefix, JSON-escaped: the start of every snapshot message.
    snapshot_start: Vec<u8>,
    relation: Vec<u8>,
    /// `"name":"` per table column, JSON-escaped: a label and its string value's opening
    /// quote, one copy (`label` is all but the quote).
    column_labels: Vec<Vec<u8>>,
    /// Per table column: its values' text never needs a JSON escape.
    plain: Vec<bool>,
    /// What ends every snapshot row's message after its value object: its headers. A
    /// million-row snapshot writes these bytes a million times, in one copy each.
    snapshot_insert_end: Vec<u8>,
}

/// Built-in types (by oid, which no user type can take) whose text output is digits,
/// letters, signs, `.`, `-`, `:`, `+` and spaces: never a byte JSON escapes. bool, int8,
/// int2, int4, oid, float4, float8, date, time, timestamp, timestamptz, interval, numeric,
/// uuid.
fn text_needs_no_escape(type_oid: u32) -> bool {
    matches!(type_oid, 16 | 20 | 21 | 23 | 26 | 700 | 701 | 1082 | 1083 | 1114 | 1184 | 1186 | 1700 | 2950)
}

impl MessageEncoder {
    pub fn new(table: &TableSchema) -> Self {
        let mut key_prefix = String::from("\"");
        key_part(&mut key_prefix, &table.name.schema, true);
        key_prefix.push_str("\".\"");
        key_part(&mut key_prefix, &table.name.name, true);
        key_prefix.push('"');
        let mut relation = b"[".to_vec();
        json_str(&mut relation, &table.name.schema);
        relation.push(b',');
        json_str(&mut relation, &table.name.name);
        relation.push(b']');
        let column_labels = table
            .columns
            .iter()
            .map(|c| {
                let mut v = Vec::new();
                json_str(&mut v, &c.name);
                v.extend_from_slice(b":\"");
                v
            })
            .collect();
        let mut snapshot_insert_end = b"},\"headers\":{\"operation\":\"insert\",\"relation\":".to_vec();
        snapshot_insert_end.extend_from_slice(&relation);
        snapshot_insert_end.extend_from_slice(b"}}");
        let mut snapshot_start = b"{\"key\":\"".to_vec();
        json_escape(&mut snapshot_start, &key_prefix);
        let plain = table.columns.iter().map(|c| c.dims == 0 && text_needs_no_escape(c.type_oid)).collect();
        MessageEncoder { key_prefix, snapshot_start, relation, column_labels, plain, snapshot_insert_end }
    }

    /// The row key: `"schema"."table"/"pk1"/"pk2"`, NULL parts as `_`.
    pub fn key<'a>(&self, values: impl IntoIterator<Item = Option<&'a str>>) -> String {
        let mut key = String::new();
        self.key_into(&mut key, values);
        key
    }

    /// [`MessageEncoder::key`] into a reused buffer.
    pub fn key_into<'a>(&self, key: &mut String, values: impl IntoIterator<Item = Option<&'a str>>) {
        key.clear();
        key.push_str(&self.key_prefix);
        for v in values {
            match v {
                None => key.push_str("/_"),
                Some(v) => {
                    key.push_str("/\"");
                    key_part(key, v, false);
                    key.push('"');
                }
            }
        }
    }

    /// Writes one change message. `value` and `old_value` list (column index, text) pairs.
    pub fn write_change<'a>(
        &self,
        out: &mut Vec<u8>,
        op: Operation,
        key: &str,
        value: impl IntoIterator<Item = (usize, Option<&'a str>)>,
        old_value: Option<&[(usize, Option<&'a str>)]>,
        live: Option<LiveHeaders<'_>>,
    ) {
        out.extend_from_slice(b"{\"key\":");
        json_str(out, key);
        self.write_rest(out, op, value, old_value, live);
    }

    /// A snapshot row's insert message, with its key written straight from the key values.
    pub fn write_snapshot_insert<'a>(
        &self,
        out: &mut Vec<u8>,
        key_values: impl IntoIterator<Item = Option<&'a str>>,
        value: impl IntoIterator<Item = (usize, Option<&'a str>)>,
    ) {
        out.extend_from_slice(&self.snapshot_start);
        for v in key_values {
            match v {
                None => out.extend_from_slice(b"/_"),
                Some(v) => {
                    out.extend_from_slice(b"/\\\"");
                    // Most key values (numbers, uuids) need neither escape: no buffer per row.
                    if v.bytes().any(|b| b == b'/' || NEEDS_ESCAPE[b as usize]) {
                        let mut part = String::new();
                        key_part(&mut part, v, false);
                        json_escape(out, &part);
                    } else {
                        out.extend_from_slice(v.as_bytes());
                    }
                    out.extend_from_slice(b"\\\"");
                }
            }
        }
        out.extend_from_slice(b"\",\"value\":");
        self.write_fields(out, value);
        out.extend_from_slice(&self.snapshot_insert_end);
    }

    /// Everything after the key: value, old value, headers.
    fn write_rest<'a>(
        &self,
        out: &mut Vec<u8>,
        op: Operation,
        value: impl IntoIterator<Item = (usize, Option<&'a str>)>,
        old_value: Option<&[(usize, Option<&'a str>)]>,
        live: Option<LiveHeaders<'_>>,
    ) {
        out.extend_from_slice(b",\"value\":");
        self.write_object(out, value);
        if let Some(old) = old_value {
            out.extend_from_slice(b",\"old_value\":");
            self.write_object(out, old.iter().copied());
        }
        out.extend_from_slice(b",\"headers\":{\"operation\":\"");
        out.extend_from_slice(op.as_str().as_bytes());
        out.extend_from_slice(b"\",\"relation\":");
        out.extend_from_slice(&self.relation);
        if let Some(h) = live {
            let _ = write!(out, ",\"txids\":[{}],\"lsn\":\"{}\",\"op_position\":{}", h.txid, h.lsn.0, h.op_position);
            if let Some(to) = h.key_change_to {
                out.extend_from_slice(b",\"key_change_to\":");
                json_str(out, to);
            }
            if let Some(from) = h.key_change_from {
                out.extend_from_slice(b",\"key_change_from\":");
                json_str(out, from);
            }
            if h.last {
                out.extend_from_slice(b",\"last\":true");
            }
        }
        out.extend_from_slice(b"}}");
    }

    fn write_object<'a>(&self, out: &mut Vec<u8>, fields: impl IntoIterator<Item = (usize, Option<&'a str>)>) {
        self.write_fields(out, fields);
        out.push(b'}');
    }

    /// An object's opening brace and fields, without the closing one.
    fn write_fields<'a>(&self, out: &mut Vec<u8>, fields: impl IntoIterator<Item = (usize, Option<&'a str>)>) {
        out.push(b'{');
        for (i, (col, v)) in fields.into_iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            let label = &self.column_labels[col];
            match v {
                Some(s) if self.plain[col] => {
                    debug_assert!(!s.bytes().any(|b| NEEDS_ESCAPE[b as usize]), "{s:?} needs an escape");
                    out.extend_from_slice(label);
                    out.extend_from_slice(s.as_bytes());
                    out.push(b'"');
                }
                // The label without its value's opening quote.
                None => {
                    out.extend_from_slice(&label[..label.len() - 1]);
                    out.extend_from_slice(b"null");
                }
                Some(s) => {
                    out.extend_from_slice(&label[..label.len() - 1]);
                    json_str(out, s);
                }
            }
        }
    }
}

/// Adds `,"name":value` (value already JSON) to an encoded message's headers, which end it.
fn add_header(message: &mut Vec<u8>, field: &[u8]) {
    debug_assert!(message.ends_with(b"}}"));
    let at = message.len() - 2;
    message.splice(at..at, field.iter().copied());
}

/// Adds `tags` (and `removed_tags`) to an encoded change: the reasons the row is in a shape
/// whose filter tests a subquery, as `@electric-sql/client` declares them.
pub fn add_tags(message: &mut Vec<u8>, tags: &[String], removed: &[String]) {
    let mut field = Vec::new();
    for (name, list) in [(&b",\"tags\":["[..], tags), (&b",\"removed_tags\":["[..], removed)] {
        if list.is_empty() {
            continue;
        }
        field.extend_from_slice(name);
        for (i, tag) in list.iter().enumerate() {
            if i > 0 {
                field.push(b',');
            }
            json_str(&mut field, tag);
        }
        field.push(b']');
    }
    add_header(message, &field);
}

/// A `move-out` event: rows tagged with any of `tags` (at tag position 0) left the shape in
/// transaction `txid`.
pub fn move_out_event(tags: &[String], txid: u32) -> Vec<u8> {
    let mut out = b"{\"headers\":{\"event\":\"move-out\",\"patterns\":[".to_vec();
    for (i, tag) in tags.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(b"{\"pos\":0,\"value\":");
        json_str(&mut out, tag);
        out.push(b'}');
    }
    let _ = write!(out, "],\"txids\":[{txid}]}}}}");
    out
}

/// Marks a row a move query brought into the shape (`is_move_in`).
pub fn mark_move_in(message: &mut Vec<u8>) {
    add_header(message, b",\"is_move_in\":true");
}

/// Sets the `last` flag on an encoded live change.
pub fn mark_last(message: &mut Vec<u8>) {
    add_header(message, b",\"last\":true");
}

/// Tags a subset snapshot row with the subset's `snapshot_mark`.
pub fn mark_snapshot(message: &mut Vec<u8>, mark: u32) {
    add_header(message, format!(",\"snapshot_mark\":{mark}").as_bytes());
}

/// The `metadata` object of a subset snapshot response.
pub fn subset_metadata(xmin: u64, xmax: u64, xip: &[u64], mark: u32, database_lsn: Lsn) -> Vec<u8> {
    let xip: Vec<String> = xip.iter().map(|x| format!("\"{x}\"")).collect();
    format!(
        r#"{{"xmin":"{xmin}","xmax":"{xmax}","xip_list":[{}],"snapshot_mark":{mark},"database_lsn":"{}"}}"#,
        xip.join(","),
        database_lsn.0
    )
    .into_bytes()
}

/// Appends one SSE event carrying `data`; a line break in the data continues it on another
/// `data:` line, as the SSE format requires (compact JSON has none, but the framing must not
/// depend on that).
pub fn write_sse_event(out: &mut Vec<u8>, data: &[u8]) {
    for line in data.split(|&b| b == b'\n') {
        out.extend_from_slice(b"data: ");
        out.extend_from_slice(line.strip_suffix(b"\r").unwrap_or(line));
        out.push(b'\n');
    }
    out.push(b'\n');
}

/// A live read as one `data:` event per message, framed once and shared by every reader
/// of that read.
pub fn sse_events(read: &LiveRead) -> Bytes {
    read.framed_once(|read| {
        let mut out = Vec::with_capacity(read.body.len() + read.messages.len() * 8);
        read.each_message().for_each(|message| write_sse_event(&mut out, message));
        out
    })
}

pub fn up_to_date(global_last_seen_lsn: Lsn) -> Vec<u8> {
    format!(r#"{{"headers":{{"control":"up-to-date","global_last_seen_lsn":"{}"}}}}"#, global_last_seen_lsn.0)
        .into_bytes()
}

pub const MUST_REFETCH: &str = r#"[{"headers":{"control":"must-refetch"}}]"#;

/// `snapshot-end` with the snapshot's `pg_current_snapshot()` (xid8 values as strings).
pub fn snapshot_end(xmin: u64, xmax: u64, xip: &[u64]) -> Vec<u8> {
    let xip: Vec<String> = xip.iter().map(|x| format!("\"{x}\"")).collect();
    format!(
        r#"{{"headers":{{"control":"snapshot-end","xmin":"{xmin}","xmax":"{xmax}","xip_list":[{}]}}}}"#,
        xip.join(",")
    )
    .into_bytes()
}

/// The `electric-schema` header value for the selected columns.
pub fn schema_header(table: &TableSchema, selected: &[usize]) -> String {
    let mut obj = serde_json::Map::new();
    for &i in selected {
        let c = &table.columns[i];
        let mut col = serde_json::Map::new();
        col.insert("type".into(), c.type_name.clone().into());
        if c.dims > 0 {
            col.insert("dims".into(), c.dims.into());
        }
        if let Some(p) = c.pk_index {
            col.insert("pk_index".into(), p.into());
        }
        if c.not_null {
            col.insert("not_null".into(), true.into());
        }
        type_modifiers(&mut col, &c.type_name, c.type_mod);
        obj.insert(c.name.clone(), col.into());
    }
    serde_json::Value::Object(obj).to_string()
}

fn type_modifiers(col: &mut serde_json::Map<String, serde_json::Value>, ty: &str, typmod: i32) {
    if typmod < 0 {
        return;
    }
    match ty {
        "varchar" | "text" => {
            col.insert("max_length".into(), (typmod - 4).into());
        }
        "bpchar" | "bit" | "varbit" => {
            col.insert("length".into(), (if ty == "bpchar" { typmod - 4 } else { typmod }).into());
        }
        "time" | "timetz" | "timestamp" | "timestamptz" => {
            col.insert("precision".into(), typmod.into());
        }
        "numeric" => {
            let m = typmod - 4;
            col.insert("precision".into(), ((m >> 16) & 0xffff).into());
            col.insert("scale".into(), (((m & 0x7ff) ^ 1024) - 1024).into());
        }
        "interval" => {
            let precision = typmod & 0xffff;
            if precision != 0xffff {
                col.insert("precision".into(), precision.into());
            }
            let fields = (typmod >> 16) & 0x7fff;
            if let Some(name) = interval_fields(fields) {
                col.insert("fields".into(), name.into());
            }
        }
        _ => {
            col.insert("type_mod".into(), typmod.into());
        }
    }
}

/// PostgreSQL's interval field masks (datetime.h) by name.
fn interval_fields(mask: i32) -> Option<&'static str> {
    const YEAR: i32 = 1 << 2;
    const MONTH: i32 = 1 << 1;
    const DAY: i32 = 1 << 3;
    const HOUR: i32 = 1 << 10;
    const MINUTE: i32 = 1 << 11;
    const SECOND: i32 = 1 << 12;
    Some(match mask {
        m if m == YEAR => "YEAR",
        m if m == MONTH => "MONTH",
        m if m == DAY => "DAY",
        m if m == HOUR => "HOUR",
        m if m == MINUTE => "MINUTE",
        m if m == SECOND => "SECOND",
        m if m == YEAR | MONTH => "YEAR TO MONTH",
        m if m == DAY | HOUR => "DAY TO HOUR",
        m if m == DAY | HOUR | MINUTE => "DAY TO MINUTE",
        m if m == DAY | HOUR | MINUTE | SECOND => "DAY TO SECOND",
        m if m == HOUR | MINUTE => "HOUR TO MINUTE",
        m if m == HOUR | MINUTE | SECOND => "HOUR TO SECOND",
        m if m == MINUTE | SECOND => "MINUTE TO SECOND",
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::table::{Column, TableName};

    fn table() -> TableSchema {
        TableSchema {
            oid: 1,
            name: TableName::new("public", "a.b/c"),
            columns: vec![
                Column {
                    name: "id".into(),
                    type_oid: 20,
                    type_name: "int8".into(),
                    type_sql: String::new(),
                    dims: 0,
                    type_mod: -1,
                    not_null: true,
                    pk_index: Some(0),
                },
                Column {
                    name: "title".into(),
                    type_oid: 1043,
                    type_name: "varchar".into(),
                    type_sql: String::new(),
                    dims: 0,
                    type_mod: 259,
                    not_null: false,
                    pk_index: None,
                },
                Column {
                    name: "tags".into(),
                    type_oid: 1009,
                    type_name: "text".into(),
                    type_sql: String::new(),
                    dims: 1,
                    type_mod: -1,
                    not_null: false,
                    pk_index: None,
                },
            ],
            replica_identity_full: false,
        }
    }

    #[test]
    fn strings_are_escaped_only_when_needed() {
        for s in ["plain", "quote \"", "back\\slash", "new\nline", "tab\t", "ünï", "\u{1}"] {
            let mut out = Vec::new();
            json_str(&mut out, s);
            assert_eq!(serde_json::from_slice::<String>(&out).unwrap(), s);
        }
    }

    proptest::proptest! {
        #[test]
        fn any_string_round_trips_through_json(s in "\\PC*|[\\x00-\\x1f\"\\\\]*") {
            let mut out = Vec::new();
            json_str(&mut out, &s);
            proptest::prop_assert_eq!(serde_json::from_slice::<String>(&out).unwrap(), s);
        }
    }

    #[test]
    fn snapshot_inserts_match_general_messages() {
        let e = MessageEncoder::new(&table());
        for id in ["1", "a/b", "q\"uote", "back\\slash"] {
            for value in [[(0, Some("7")), (1, Some(id))], [(0, None), (1, Some(id))], [(0, Some("7")), (1, None)]] {
                let mut general = Vec::new();
                e.write_change(&mut general, Operation::Insert, &e.key([Some(id)]), value, None, None);
                let mut fast = Vec::new();
                e.write_snapshot_insert(&mut fast, [Some(id)], value);
                assert_eq!(String::from_utf8(fast).unwrap(), String::from_utf8(general).unwrap());
            }
        }
        let mut null_key = Vec::new();
        e.write_snapshot_insert(&mut null_key, [None], [(0, None)]);
        let v: serde_json::Value = serde_json::from_slice(&null_key).unwrap();
        assert_eq!(v["key"], e.key([None]));
    }

    #[test]
    fn keys_escape_separators() {
        let e = MessageEncoder::new(&table());
        assert_eq!(e.key([Some("1/2")]), r#""public"."a..b//c"/"1//2""#);
        assert_eq!(e.key([None]), r#""public"."a..b//c"/_"#);
    }

    #[test]
    fn live_messages_carry_replication_headers() {
        let e = MessageEncoder::new(&table());
        let mut out = Vec::new();
        let h = LiveHeaders {
            txid: 755,
            lsn: Lsn(27344208),
            op_position: 0,
            last: false,
            key_change_to: None,
            key_change_from: None,
        };
        e.write_change(&mut out, Operation::Insert, "k", [(0, Some("1")), (1, None)], None, Some(h));
        mark_last(&mut out);
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["value"], serde_json::json!({"id": "1", "title": null}));
        assert_eq!(v["headers"]["txids"], serde_json::json!([755]));
        assert_eq!(v["headers"]["lsn"], "27344208");
        assert_eq!(v["headers"]["last"], true);
        assert_eq!(v["headers"]["relation"], serde_json::json!(["public", "a.b/c"]));
    }

    #[test]
    fn schema_header_describes_selected_columns() {
        let s: serde_json::Value = serde_json::from_str(&schema_header(&table(), &[0, 1, 2])).unwrap();
        assert_eq!(s["id"], serde_json::json!({"type": "int8", "pk_index": 0, "not_null": true}));
        assert_eq!(s["title"], serde_json::json!({"type": "varchar", "max_length": 255}));
        assert_eq!(s["tags"], serde_json::json!({"type": "text", "dims": 1}));
    }

    #[test]
    fn a_read_becomes_one_sse_event_per_message() {
        let mut read = LiveRead::default();
        read.body = b"{\"a\":1},{\"b\":2}".to_vec();
        read.messages = vec![(0, 7), (8, 15)];
        assert_eq!(&sse_events(&read)[..], b"data: {\"a\":1}\n\ndata: {\"b\":2}\n\n");
        let mut out = Vec::new();
        write_sse_event(&mut out, b"one\r\ntwo");
        assert_eq!(out, b"data: one\ndata: two\n\n", "a line break in the data continues on a new data line");
    }
}
