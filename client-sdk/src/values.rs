//! Row values from PostgreSQL text to app types, by the shape's `electric-schema`, as the
//! official client parses them: int2/int4/float4/float8 → number, int8 → bigint, bool →
//! boolean, json/jsonb → parsed JSON, arrays element by element; everything else (numeric,
//! dates, uuid, enums, bytea) stays text.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// One column of `electric-schema`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ColumnType {
    #[serde(rename = "type")]
    pub type_name: String,
    #[serde(default)]
    pub dims: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pk_index: Option<u32>,
}

/// Column name → type, as the gateway sends it.
pub type Schema = BTreeMap<String, ColumnType>;

/// The primary-key columns of a schema, in key order.
pub fn key_columns(schema: &Schema) -> Vec<(&str, &ColumnType)> {
    let mut columns: Vec<(u32, &str, &ColumnType)> =
        schema.iter().filter_map(|(name, ty)| ty.pk_index.map(|i| (i, name.as_str(), ty))).collect();
    columns.sort_by_key(|(i, ..)| *i);
    columns.into_iter().map(|(_, name, ty)| (name, ty)).collect()
}

/// A parsed value.
#[derive(Clone, Debug, PartialEq)]
pub enum Typed {
    Null,
    Bool(bool),
    Number(f64),
    /// An int8, as decimal text (JavaScript numbers cannot hold every int8).
    BigInt(String),
    Text(String),
    Json(serde_json::Value),
    Array(Vec<Typed>),
}

/// An int8 as an IndexedDB key, which a bigint cannot be: decimal text of the value offset
/// to unsigned and zero-padded to 20 digits, so keys sort as the numbers do. Values
/// outside int8's range are clamped to it (they can only be query bounds).
pub fn int8_index_key(decimal: &str) -> Option<String> {
    // Flipping the sign bit offsets two's complement by 2^63.
    let (negative, digits) = match decimal.strip_prefix('-') {
        Some(digits) => (true, digits),
        None => (false, decimal),
    };
    let shifted = match decimal.parse::<i64>() {
        Ok(n) => (n as u64) ^ (1 << 63),
        Err(_) if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) => {
            if negative {
                0
            } else {
                u64::MAX
            }
        }
        Err(_) => return None,
    };
    Some(format!("{shifted:020}"))
}

/// Parses one value (`None` is SQL NULL).
pub fn parse(text: Option<&str>, ty: &ColumnType) -> Typed {
    match text {
        None => Typed::Null,
        Some(t) if ty.dims > 0 => match parse_array(t) {
            Some(items) => Typed::Array(items.into_iter().map(|item| parse_array_item(item, ty)).collect()),
            None => Typed::Text(t.to_string()),
        },
        Some(t) => scalar(t, &ty.type_name),
    }
}

fn scalar(text: &str, type_name: &str) -> Typed {
    match type_name {
        "int2" | "int4" | "float4" | "float8" => match text {
            "Infinity" => Typed::Number(f64::INFINITY),
            "-Infinity" => Typed::Number(f64::NEG_INFINITY),
            _ => text.parse().map(Typed::Number).unwrap_or_else(|_| Typed::Text(text.to_string())),
        },
        "int8" => Typed::BigInt(text.to_string()),
        "bool" => Typed::Bool(text == "t" || text == "true"),
        "json" | "jsonb" => {
            serde_json::from_str(text).map(Typed::Json).unwrap_or_else(|_| Typed::Text(text.to_string()))
        }
        _ => Typed::Text(text.to_string()),
    }
}

/// An element of a parsed array literal.
#[derive(Debug, PartialEq)]
enum Item {
    Null,
    Text(String),
    Nested(Vec<Item>),
}

fn parse_array_item(item: Item, ty: &ColumnType) -> Typed {
    match item {
        Item::Null => Typed::Null,
        Item::Text(t) => scalar(&t, &ty.type_name),
        Item::Nested(items) => Typed::Array(items.into_iter().map(|i| parse_array_item(i, ty)).collect()),
    }
}

/// A PostgreSQL array literal (`{1,"a b",NULL,{2,3}}`) into its elements; `None` when it
/// is not one.
fn parse_array(text: &str) -> Option<Vec<Item>> {
    // A literal with explicit bounds (`[0:1]={…}`) starts at its `=`.
    let text = text.find('=').filter(|_| text.starts_with('[')).map_or(text, |i| &text[i + 1..]);
    let mut chars = text.chars().peekable();
    let items = parse_braces(&mut chars)?;
    chars.next().is_none().then_some(items)
}

fn parse_braces(chars: &mut std::iter::Peekable<std::str::Chars<'_>>) -> Option<Vec<Item>> {
    if chars.next()? != '{' {
        return None;
    }
    let mut items = Vec::new();
    if chars.peek() == Some(&'}') {
        chars.next();
        return Some(items);
    }
    loop {
        let item = match chars.peek()? {
            '{' => Item::Nested(parse_braces(chars)?),
            '"' => {
                chars.next();
                let mut s = String::new();
                loop {
                    match chars.next()? {
                        '\\' => s.push(chars.next()?),
                        '"' => break,
                        c => s.push(c),
                    }
                }
                Item::Text(s)
            }
            _ => {
                let mut s = String::new();
                while let Some(&c) = chars.peek() {
                    if c == ',' || c == '}' {
                        break;
                    }
                    s.push(c);
                    chars.next();
                }
                if s.eq_ignore_ascii_case("NULL") { Item::Null } else { Item::Text(s) }
            }
        };
        items.push(item);
        match chars.next()? {
            ',' => continue,
            '}' => return Some(items),
            _ => return None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ty(name: &str, dims: u32) -> ColumnType {
        ColumnType { type_name: name.into(), dims, pk_index: None }
    }

    #[test]
    fn key_columns_come_in_key_order() {
        let pk = |i| ColumnType { pk_index: Some(i), ..ty("int4", 0) };
        let schema = Schema::from([("b".into(), pk(0)), ("a".into(), pk(1)), ("c".into(), ty("text", 0))]);
        assert_eq!(key_columns(&schema).iter().map(|(n, _)| *n).collect::<Vec<_>>(), ["b", "a"]);
    }

    #[test]
    fn scalars_parse_as_the_official_client_does() {
        assert_eq!(parse(Some("42"), &ty("int4", 0)), Typed::Number(42.0));
        assert_eq!(parse(Some("9223372036854775807"), &ty("int8", 0)), Typed::BigInt("9223372036854775807".into()));
        assert_eq!(parse(Some("t"), &ty("bool", 0)), Typed::Bool(true));
        assert_eq!(parse(Some("false"), &ty("bool", 0)), Typed::Bool(false));
        assert_eq!(parse(Some("-Infinity"), &ty("float8", 0)), Typed::Number(f64::NEG_INFINITY));
        assert_eq!(parse(Some(r#"{"a": [1]}"#), &ty("jsonb", 0)), Typed::Json(serde_json::json!({"a": [1]})));
        assert_eq!(parse(Some("12.50"), &ty("numeric", 0)), Typed::Text("12.50".into()));
        assert_eq!(parse(None, &ty("int4", 0)), Typed::Null);
    }

    #[test]
    fn int8_index_keys_sort_as_the_numbers_do() {
        let numbers = ["-9223372036854775808", "-10", "-9", "-1", "0", "1", "9", "10", "9223372036854775807"];
        let keys: Vec<String> = numbers.iter().map(|n| int8_index_key(n).unwrap()).collect();
        assert!(keys.windows(2).all(|w| w[0] < w[1]), "{keys:?}");
        assert!(keys.iter().all(|k| k.len() == 20));
        assert_eq!(int8_index_key("-99999999999999999999").as_deref(), Some("00000000000000000000"), "clamped");
        assert_eq!(int8_index_key("99999999999999999999").as_deref(), Some("18446744073709551615"), "clamped");
        assert_eq!(int8_index_key("1.5"), None);
    }

    #[test]
    fn arrays_parse_element_by_element() {
        let t = |s: &str| Typed::Text(s.into());
        assert_eq!(
            parse(Some(r#"{a,"b c","d\"e",NULL,"NULL"}"#), &ty("text", 1)),
            Typed::Array(vec![t("a"), t("b c"), t("d\"e"), Typed::Null, t("NULL")])
        );
        assert_eq!(
            parse(Some("{{1,2},{3,4}}"), &ty("int4", 2)),
            Typed::Array(vec![
                Typed::Array(vec![Typed::Number(1.0), Typed::Number(2.0)]),
                Typed::Array(vec![Typed::Number(3.0), Typed::Number(4.0)])
            ])
        );
        assert_eq!(parse(Some("{}"), &ty("int4", 1)), Typed::Array(vec![]));
        assert_eq!(
            parse(Some("[0:1]={t,f}"), &ty("bool", 1)),
            Typed::Array(vec![Typed::Bool(true), Typed::Bool(false)])
        );
        assert_eq!(parse(Some("{1,2"), &ty("int4", 1)), Typed::Text("{1,2".into()), "not an array: kept as text");
    }
}
