//! Parses a shape request's query string exactly as the official client writes it:
//! sorted parameters, `+` for spaces, `params[n]`, always-quoted `columns`, bare `live`,
//! empty `cursor`, and unknown parameters ignored.

use shapes::offset::LogOffset;
use std::collections::HashMap;

use shapes::shape::{LogMode, Replica, ShapeSpec, parse_columns};
use shapes::subset::SubsetSpec;
use shapes::table::TableName;
use shapes::where_clause::MAX_WHERE_LEN;

use super::error::ApiError;
use crate::auth::Access;

/// Most `params[n]` accepted.
const MAX_PARAMS: usize = 100;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RequestOffset {
    /// `-1`: start with the snapshot.
    Start,
    /// `now`: skip the snapshot rows.
    Now,
    At(LogOffset),
}

#[derive(Debug)]
pub struct ShapeRequest {
    pub table: TableName,
    pub spec: ShapeSpec,
    pub offset: RequestOffset,
    /// As the client sent it (compared, never used as a name).
    pub handle: Option<String>,
    pub live: bool,
    pub sse: bool,
    pub cursor: u64,
    /// Set when any `subset__*` parameter is present: a subset snapshot, not a log read.
    /// Boxed: a waiting long-poll holds its request, and has none.
    pub subset: Option<Box<SubsetSpec>>,
    /// What the caller may read (set after authentication).
    pub access: Access,
    /// The last instant the caller's token is honoured; nothing is sent after it.
    pub valid_until: Option<std::time::SystemTime>,
    /// The request's `If-None-Match`: all a shape's answer needs of its headers, so a
    /// waiting long-poll holds no copy of them.
    pub if_none_match: Option<axum::http::HeaderValue>,
}

fn flag(v: &str) -> bool {
    v != "false"
}

/// The shape definition part alone (for DELETE): table and spec.
pub fn parse_definition(pairs: &[(String, String)]) -> Result<(TableName, ShapeSpec), ApiError> {
    let get = |k: &str| param(pairs, k);
    let table = match get("table") {
        None | Some("") => {
            return Err(ApiError::invalid("table", "can't be blank; pass table=<name> or schema.name"));
        }
        Some(t) => TableName::parse(t).map_err(|e| ApiError::invalid("table", e))?,
    };
    let where_text = get("where").filter(|w| !w.trim().is_empty()).map(str::to_string);
    if where_text.as_ref().is_some_and(|w| w.len() > MAX_WHERE_LEN) {
        return Err(ApiError::invalid("where", format!("is longer than {MAX_WHERE_LEN} bytes")));
    }
    let mut params: Vec<(usize, String)> = Vec::new();
    for (k, v) in pairs {
        if let Some(inner) = k.strip_prefix("params[").and_then(|r| r.strip_suffix(']')) {
            let n: usize =
                inner.parse().map_err(|_| ApiError::invalid("params", "Parameters can only use numbers as keys"))?;
            params.retain(|(m, _)| *m != n);
            params.push((n, v.clone()));
        }
    }
    params.sort();
    if params.len() > MAX_PARAMS {
        return Err(ApiError::invalid("params", format!("at most {MAX_PARAMS} parameters are accepted")));
    }
    if params.iter().enumerate().any(|(i, (n, _))| *n != i + 1) {
        return Err(ApiError::invalid("params", "Parameters must be numbered sequentially, starting from 1"));
    }
    let columns = match get("columns") {
        None => None,
        Some(c) => Some(parse_columns(c).map_err(|e| ApiError::invalid("columns", e))?),
    };
    let replica = get("replica")
        .map(str::parse::<Replica>)
        .transpose()
        .map_err(|e| ApiError::invalid("replica", e))?
        .unwrap_or_default();
    let log =
        get("log").map(str::parse::<LogMode>).transpose().map_err(|e| ApiError::invalid("log", e))?.unwrap_or_default();
    Ok((table, ShapeSpec { where_text, params, columns, replica, log, scope: None }))
}

/// The value of parameter `k`; the last one wins when repeated.
pub fn param<'a>(pairs: &'a [(String, String)], k: &str) -> Option<&'a str> {
    pairs.iter().rev().find(|(n, _)| n == k).map(|(_, v)| v.as_str())
}

pub fn pairs(raw: Option<&str>) -> Vec<(String, String)> {
    form_urlencoded::parse(raw.unwrap_or("").as_bytes()).into_owned().collect()
}

pub fn parse(raw: Option<&str>) -> Result<ShapeRequest, ApiError> {
    let pairs = pairs(raw);
    let get = |k: &str| param(&pairs, k);
    let offset = match get("offset") {
        None => {
            return Err(ApiError::invalid("offset", "can't be blank; start with offset=-1"));
        }
        Some("-1") => RequestOffset::Start,
        Some("now") => RequestOffset::Now,
        Some(o) => RequestOffset::At(o.parse().map_err(|_| {
            ApiError::invalid("offset", "has invalid format (use -1, now, or an electric-offset value)")
        })?),
    };
    let live = get("live").is_some_and(flag);
    let sse = match get("live_sse").or(get("experimental_live_sse")) {
        Some(v) => flag(v),
        None => false,
    };
    match offset {
        RequestOffset::Start if live => {
            return Err(ApiError::invalid("live", "can't be true when offset == -1"));
        }
        RequestOffset::Now if live => {
            return Err(ApiError::invalid("live", "can't be true when offset is 'now'"));
        }
        _ => {}
    }
    if sse && !live {
        return Err(ApiError::invalid("live_sse", "can't be true unless live is also true"));
    }
    let handle = match (offset, get("handle")) {
        (RequestOffset::Start | RequestOffset::Now, _) => None,
        (_, None | Some("")) => {
            return Err(ApiError::invalid("handle", "can't be blank when offset != -1"));
        }
        // Only ever compared with the shape's, so any text will do: one that is not the
        // shape's current handle (even a malformed one) is answered 409, as in Electric.
        (_, Some(h)) => Some(h.to_string()),
    };
    let cursor = get("cursor").and_then(|c| c.parse().ok()).unwrap_or(0);
    let (table, spec) = parse_definition(&pairs)?;
    let subset = parse_subset_query(&pairs)?;
    if subset.is_some() && (live || sse) {
        return Err(ApiError::invalid("live", "subset snapshots are a stable view of data; drop live"));
    }
    Ok(ShapeRequest {
        table,
        spec,
        offset,
        handle,
        live,
        sse,
        cursor,
        subset: subset.map(Box::new),
        access: Access::default(),
        valid_until: None,
        if_none_match: None,
    })
}

/// The `subset__*` parameters of a GET subset snapshot, `None` when there are none.
fn parse_subset_query(pairs: &[(String, String)]) -> Result<Option<SubsetSpec>, ApiError> {
    if !pairs.iter().any(|(k, _)| k.starts_with("subset__")) {
        return Ok(None);
    }
    let get = |k: &str| param(pairs, k);
    let number = |k: &'static str| -> Result<Option<u64>, ApiError> {
        get(k)
            .map(|v| v.parse().map_err(|_| ApiError::invalid("subset", format!("{k}: must be a whole number ≥ 0"))))
            .transpose()
    };
    let params = match get("subset__params") {
        None | Some("") => HashMap::new(),
        Some(json) => subset_params(
            &serde_json::from_str(json)
                .map_err(|e| ApiError::invalid("subset", format!("params: not a JSON object: {e}")))?,
        )?,
    };
    Ok(Some(SubsetSpec {
        where_text: get("subset__where").map(str::to_string),
        params,
        order_by: get("subset__order_by").map(str::to_string),
        limit: number("subset__limit")?,
        offset: number("subset__offset")?,
    }))
}

/// The JSON body of `POST /v1/shape`: the subset's fields, at the top or under `"subset"`.
pub fn parse_subset_body(body: &[u8]) -> Result<SubsetSpec, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(SubsetSpec::default());
    }
    let value: serde_json::Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::invalid("body", format!("Invalid JSON in request body: {e}")))?;
    let obj = value.as_object().ok_or_else(|| ApiError::invalid("body", "Request body must be a JSON object"))?;
    let obj = match obj.get("subset") {
        Some(serde_json::Value::Object(inner)) => inner,
        _ => obj,
    };
    let text = |k: &str| -> Result<Option<String>, ApiError> {
        match obj.get(k) {
            None | Some(serde_json::Value::Null) => Ok(None),
            Some(serde_json::Value::String(s)) => Ok(Some(s.clone())),
            Some(_) => Err(ApiError::invalid("subset", format!("{k}: must be a string"))),
        }
    };
    let number = |k: &str| -> Result<Option<u64>, ApiError> {
        match obj.get(k) {
            None | Some(serde_json::Value::Null) => Ok(None),
            Some(v) => v
                .as_u64()
                .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
                .map(Some)
                .ok_or_else(|| ApiError::invalid("subset", format!("{k}: must be a whole number ≥ 0"))),
        }
    };
    Ok(SubsetSpec {
        where_text: text("where")?,
        params: match obj.get("params") {
            None | Some(serde_json::Value::Null) => HashMap::new(),
            Some(v) => subset_params(v)?,
        },
        order_by: text("order_by")?,
        limit: number("limit")?,
        offset: number("offset")?,
    })
}

/// `{"1": "v", "2": 3}` → `$1`, `$2` values as text.
fn subset_params(value: &serde_json::Value) -> Result<HashMap<usize, String>, ApiError> {
    let obj = value.as_object().ok_or_else(|| ApiError::invalid("subset", "params: must be a JSON object"))?;
    if obj.len() > MAX_PARAMS {
        return Err(ApiError::invalid("subset", format!("params: at most {MAX_PARAMS} are accepted")));
    }
    obj.iter()
        .map(|(k, v)| {
            let n: usize = k.parse().map_err(|_| ApiError::invalid("subset", "params: keys must be numbers"))?;
            let text = match v {
                serde_json::Value::String(s) => s.clone(),
                serde_json::Value::Number(n) => n.to_string(),
                serde_json::Value::Bool(b) => b.to_string(),
                _ => return Err(ApiError::invalid("subset", format!("params: ${n} must be a string or a number"))),
            };
            Ok((n, text))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_official_clients_query_style() {
        let r = parse(Some("columns=%22id%22%2C%22Title%22&cursor=&handle=12-34&live&log=full&offset=5_2&params%5B1%5D=a+b&table=foo&where=x%3D%241&cache-buster=1")).unwrap();
        assert_eq!(r.table, TableName::new("public", "foo"));
        assert_eq!(r.spec.columns, Some(vec!["id".into(), "Title".into()]));
        assert_eq!(r.spec.params, vec![(1, "a b".into())]);
        assert!(r.live && !r.sse);
        assert_eq!(r.offset, RequestOffset::At("5_2".parse().unwrap()));
        assert!(r.subset.is_none());
    }

    #[test]
    fn subsets_come_from_the_query_or_a_json_body() {
        let r = parse(Some("offset=-1&subset__limit=5&subset__order_by=id+desc&subset__params=%7B%221%22%3A3%7D&subset__where=x+%3E+%241&table=t")).unwrap();
        let s = r.subset.unwrap();
        assert_eq!(
            (s.limit, s.order_by.as_deref(), s.where_text.as_deref()),
            (Some(5), Some("id desc"), Some("x > $1"))
        );
        assert_eq!(s.params, HashMap::from([(1, "3".to_string())]));
        let body = parse_subset_body(br#"{"subset":{"where":"x = $1","params":{"1":"a"},"limit":"2","order_by":"x"}}"#)
            .unwrap();
        assert_eq!((body.limit, body.params.get(&1).map(String::as_str)), (Some(2), Some("a")));
        assert_eq!(parse_subset_body(b"  ").unwrap(), SubsetSpec::default());
        for bad in [&b"[1]"[..], b"{", br#"{"limit":-1}"#, br#"{"where":3}"#] {
            assert!(parse_subset_body(bad).is_err(), "{}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn protocol_violations_name_the_parameter() {
        let field = |q: &str| match parse(Some(q)) {
            Err(ApiError::Invalid { field, .. }) => field,
            other => panic!("{q}: {other:?}"),
        };
        assert_eq!(field("offset=-1"), "table");
        assert_eq!(field("table=t"), "offset");
        assert_eq!(field("table=t&offset=1_2_3"), "offset");
        assert_eq!(field("table=t&offset=-1&live=true"), "live");
        assert_eq!(field("table=t&offset=0_0"), "handle");
        assert_eq!(field("table=t&offset=0_0&handle=1-2&live_sse=true"), "live_sse");
        assert_eq!(field("table=t&offset=-1&params[2]=x"), "params");
        assert_eq!(field("table=t&offset=-1&params[a]=x"), "params");
        assert_eq!(field("table=t&offset=-1&replica=half"), "replica");
        assert_eq!(field("table=t&offset=0_0&handle=1-2&live&subset__limit=1"), "live");
        assert_eq!(field("table=t&offset=-1&subset__limit=x"), "subset");
        assert_eq!(field("table=t&offset=-1&subset__params=%5B1%5D"), "subset");
    }
}
