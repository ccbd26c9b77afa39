//! Parses a shape request's query string exactly as the official client writes it:
//! sorted parameters, `+` for spaces, `params[n]`, always-quoted `columns`, bare `live`,
//! empty `cursor`, and unknown parameters ignored.

use shapes::offset::LogOffset;
use shapes::shape::{LogMode, Replica, ShapeHandle, ShapeSpec, parse_columns};
use shapes::table::TableName;
use shapes::where_clause::MAX_WHERE_LEN;

use super::error::ApiError;

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
    pub handle: Option<ShapeHandle>,
    pub live: bool,
    pub sse: bool,
    pub cursor: u64,
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
    Ok((table, ShapeSpec { where_text, params, columns, replica, log }))
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
        (_, Some(h)) => Some(h.parse().map_err(|e: String| ApiError::invalid("handle", e))?),
    };
    let cursor = get("cursor").and_then(|c| c.parse().ok()).unwrap_or(0);
    let (table, spec) = parse_definition(&pairs)?;
    Ok(ShapeRequest { table, spec, offset, handle, live, sse, cursor })
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
        assert_eq!(field("table=t&offset=0_0&handle=../../etc"), "handle");
    }
}
