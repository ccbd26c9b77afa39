//! Following one shape over the Electric shape protocol: which request comes next, and
//! what a response means. No I/O: the browser layer sends the requests and stores what
//! [`ShapeStream::on_response`] hands back. Changes are handed back only at `up-to-date`,
//! whole, so a store applies a transaction all at once or not at all.

use std::borrow::Cow;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::values::Schema;

/// What to sync: the shape's definition as the gateway takes it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShapeDefinition {
    pub table: String,
    #[serde(default, rename = "where", skip_serializing_if = "Option::is_none")]
    pub where_clause: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub columns: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub params: Vec<String>,
}

/// Where a shape's mirror stands: stored with its rows, so a reload resumes here.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Position {
    pub handle: Option<String>,
    pub offset: String,
    /// Whether the mirror has been up to date once: later requests are live.
    pub live: bool,
    pub schema: Option<Schema>,
}

impl Default for Position {
    fn default() -> Position {
        Position { handle: None, offset: "-1".into(), live: false, schema: None }
    }
}

pub use shapes::contract::Operation;

/// One row change, with its values still as PostgreSQL text.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Change {
    pub key: String,
    pub operation: Operation,
    pub value: Map<String, Value>,
    /// The transaction that made it (absent for snapshot rows).
    pub txid: Option<u64>,
    /// A row a subquery shape gained because its set changed (`is_move_in`), not because
    /// the row itself was written.
    #[serde(default)]
    pub move_in: bool,
}

/// What a response asks of the store.
#[derive(Debug, PartialEq)]
pub enum Outcome {
    /// Nothing to store yet (a chunk of a larger batch); send the next request.
    Continue,
    /// Apply these changes and the new position in one transaction.
    Apply(Vec<Change>),
    /// The shape was replaced: clear its rows and start over from the position given.
    Refetch,
}

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    /// The gateway refused the request; `retry` says whether the same request may succeed
    /// later (429, 5xx) or needs a change (4xx: the message says which).
    #[error("the gateway answered {status}: {message}")]
    Status { status: u16, message: String, retry: bool },
    #[error("the gateway's response is not the shape protocol: {0}")]
    Malformed(String),
}

/// A response as the protocol needs it.
#[derive(Debug, Default)]
pub struct Response<'a> {
    pub status: u16,
    pub handle: Option<&'a str>,
    pub offset: Option<&'a str>,
    pub cursor: Option<&'a str>,
    pub schema: Option<&'a str>,
    pub body: &'a str,
}

/// One message of a response body or an SSE event, read without building a JSON tree for
/// its headers (a busy stream passes many through here).
#[derive(Deserialize)]
struct Message<'a> {
    #[serde(default, borrow)]
    key: Option<Cow<'a, str>>,
    #[serde(default)]
    value: Option<Map<String, Value>>,
    #[serde(default, borrow)]
    headers: Headers<'a>,
}

#[derive(Default, Deserialize)]
struct Headers<'a> {
    #[serde(default, borrow)]
    control: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    operation: Option<Cow<'a, str>>,
    #[serde(default)]
    txids: Vec<Value>,
    #[serde(default, borrow)]
    lsn: Option<Cow<'a, str>>,
    #[serde(default)]
    op_position: Option<u64>,
    #[serde(default, borrow)]
    global_last_seen_lsn: Option<Cow<'a, str>>,
    #[serde(default)]
    is_move_in: bool,
}

/// The state of following one shape.
#[derive(Debug, Default)]
pub struct ShapeStream {
    pub position: Position,
    cursor: Option<String>,
    /// Changes received since the last `up-to-date`.
    pending: Vec<Change>,
    /// `(lsn, op_position)` of the last change received.
    last_change: Option<(u64, u64)>,
}

impl ShapeStream {
    /// Resumes from a stored position. The first request of a session catches up without
    /// `live` (as Electric's client does), so it answers at once with what is new and an
    /// `up-to-date`; a live request with nothing new waits (SSE sends nothing at all).
    pub fn resume(position: Position) -> ShapeStream {
        ShapeStream { position: Position { live: false, ..position }, ..Default::default() }
    }

    /// After a failure the next request catches up without `live`, as a resumed stream
    /// does: it answers at once, so the mirror knows it is current again.
    pub fn reconnect(&mut self) {
        self.position.live = false;
    }

    /// The next request's query parameters.
    pub fn query(&self, shape: &ShapeDefinition) -> Vec<(String, String)> {
        let mut q = vec![("table".to_string(), shape.table.clone())];
        if let Some(w) = &shape.where_clause {
            q.push(("where".into(), w.clone()));
        }
        if let Some(c) = &shape.columns {
            q.push(("columns".into(), c.join(",")));
        }
        for (i, p) in shape.params.iter().enumerate() {
            q.push((format!("params[{}]", i + 1), p.clone()));
        }
        q.push(("offset".into(), self.position.offset.clone()));
        if let Some(h) = &self.position.handle {
            q.push(("handle".into(), h.clone()));
        }
        if self.position.live {
            q.push(("live".into(), "true".into()));
            q.push(("cursor".into(), self.cursor.clone().unwrap_or_default()));
        }
        q
    }

    /// Takes one long-poll response.
    pub fn on_response(&mut self, r: &Response<'_>) -> Result<Outcome, ProtocolError> {
        match r.status {
            200 => {}
            409 => {
                self.restart(r.handle);
                return Ok(Outcome::Refetch);
            }
            status => {
                return Err(ProtocolError::Status {
                    status,
                    message: error_message(r.body),
                    retry: status == 429 || status >= 500,
                });
            }
        }
        if let Some(h) = r.handle {
            self.position.handle = Some(h.to_string());
        }
        if let Some(c) = r.cursor {
            self.cursor = Some(c.to_string());
        }
        if let Some(s) = r.schema {
            let schema =
                serde_json::from_str(s).map_err(|e| ProtocolError::Malformed(format!("electric-schema: {e}")))?;
            self.position.schema = Some(schema);
        }
        let messages: Vec<Message<'_>> = if r.body.trim().is_empty() {
            Vec::new()
        } else {
            serde_json::from_str(r.body).map_err(|e| ProtocolError::Malformed(format!("body: {e}")))?
        };
        let mut up_to_date = false;
        for m in messages {
            up_to_date |= self.take(m)?;
        }
        let offset = r.offset.ok_or_else(|| ProtocolError::Malformed("no electric-offset header".into()))?;
        self.position.offset = offset.to_string();
        Ok(self.settle(up_to_date))
    }

    /// Takes the headers of a live SSE response (its events follow).
    pub fn on_events_open(&mut self, cursor: Option<&str>) {
        if let Some(c) = cursor {
            self.cursor = Some(c.to_string());
        }
    }

    /// Takes one message of a live SSE stream; `offset` is only known from `up-to-date`.
    pub fn on_event(&mut self, data: &str) -> Result<Outcome, ProtocolError> {
        let m: Message<'_> = serde_json::from_str(data).map_err(|e| ProtocolError::Malformed(format!("event: {e}")))?;
        let lsn = m.headers.global_last_seen_lsn.as_deref().and_then(|l| l.parse::<u64>().ok());
        if m.headers.control.as_deref() == Some("must-refetch") {
            self.restart(None);
            return Ok(Outcome::Refetch);
        }
        let up_to_date = self.take(m)?;
        if up_to_date && let Some(lsn) = lsn {
            // SSE carries no offset per event: the position is the last change's own
            // (`<lsn>_<op_position>`), or `<lsn>_0` past it, so nothing is delivered twice.
            let (tx, op) = self.last_change.filter(|&(tx, _)| tx >= lsn).unwrap_or((lsn, 0));
            self.position.offset = format!("{tx}_{op}");
        }
        Ok(self.settle(up_to_date))
    }

    /// Buffers a change; `true` for `up-to-date`.
    fn take(&mut self, m: Message<'_>) -> Result<bool, ProtocolError> {
        let headers = &m.headers;
        if let Some(control) = &headers.control {
            return Ok(control == "up-to-date");
        }
        let Some(key) = m.key else { return Ok(false) };
        let operation = match headers.operation.as_deref() {
            Some("insert") => Operation::Insert,
            Some("update") => Operation::Update,
            Some("delete") => Operation::Delete,
            other => return Err(ProtocolError::Malformed(format!("unknown operation {other:?}"))),
        };
        let value = m.value.unwrap_or_default();
        let txid = headers.txids.first().and_then(Value::as_u64);
        if let (Some(lsn), Some(op)) = (headers.lsn.as_deref().and_then(|l| l.parse().ok()), headers.op_position) {
            self.last_change = Some((lsn, op));
        }
        self.pending.push(Change { key: key.into_owned(), operation, value, txid, move_in: headers.is_move_in });
        Ok(false)
    }

    fn settle(&mut self, up_to_date: bool) -> Outcome {
        if !up_to_date {
            return Outcome::Continue;
        }
        self.position.live = true;
        Outcome::Apply(std::mem::take(&mut self.pending))
    }

    /// Back to the start of a shape (with the replacement's handle when known).
    fn restart(&mut self, handle: Option<&str>) {
        self.position = Position { handle: handle.map(str::to_string), ..Position::default() };
        self.cursor = None;
        self.pending.clear();
        self.last_change = None;
    }
}

/// The `message` of a JSON error body with what its `errors` say of each parameter (a 400
/// says only "Invalid request" in `message`, as Electric's do), or the body itself.
pub fn error_message(body: &str) -> String {
    let Some(message) = serde_json::from_str::<Value>(body).ok().filter(|v| v["message"].is_string()) else {
        return body.chars().take(500).collect();
    };
    let mut out = message["message"].as_str().unwrap_or_default().to_string();
    for (param, said) in message["errors"].as_object().into_iter().flatten() {
        let said: Vec<&str> = said.as_array().into_iter().flatten().filter_map(Value::as_str).collect();
        out.push_str(&format!("; {param}: {}", said.join("; ")));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn after_a_failure_the_stream_catches_up_before_it_goes_live_again() {
        let live = Position { handle: Some("1-2".into()), offset: "5_0".into(), live: true, schema: None };
        let mut stream = ShapeStream { position: live, ..Default::default() };
        let shape = ShapeDefinition { table: "items".into(), ..Default::default() };
        assert!(stream.query(&shape).iter().any(|(k, _)| k == "live"));
        stream.reconnect();
        let query = stream.query(&shape);
        assert!(!query.iter().any(|(k, _)| k == "live"), "{query:?}");
        assert!(query.contains(&("offset".into(), "5_0".into())), "from where it was: {query:?}");
    }

    #[test]
    fn a_resumed_stream_catches_up_before_it_goes_live() {
        let stored = Position { handle: Some("1-2".into()), offset: "5_0".into(), live: true, schema: None };
        let query = ShapeStream::resume(stored).query(&todos());
        assert!(query.contains(&("offset".to_string(), "5_0".to_string())));
        assert!(!query.iter().any(|(k, _)| k == "live"), "{query:?}");
    }

    #[test]
    fn error_messages_carry_what_each_parameter_got_wrong() {
        let invalid = r#"{"message":"Invalid request","errors":{"where":["syntax error at x"]}}"#;
        assert_eq!(error_message(invalid), "Invalid request; where: syntax error at x");
        assert_eq!(error_message(r#"{"message":"no access"}"#), "no access");
        assert_eq!(error_message("plain text"), "plain text");
    }

    fn todos() -> ShapeDefinition {
        ShapeDefinition {
            table: "todos".into(),
            where_clause: Some("done = $1".into()),
            params: vec!["false".into()],
            ..Default::default()
        }
    }

    fn ok<'a>(offset: &'a str, body: &'a str) -> Response<'a> {
        Response { status: 200, handle: Some("h1"), offset: Some(offset), body, ..Default::default() }
    }

    const ROW: &str =
        r#"{"key":"\"public\".\"todos\"/\"1\"","value":{"id":"1","title":"a"},"headers":{"operation":"insert"}}"#;
    const UP_TO_DATE: &str = r#"{"headers":{"control":"up-to-date","global_last_seen_lsn":"42"}}"#;

    #[test]
    fn a_snapshot_in_chunks_is_applied_once_whole_then_the_stream_goes_live() {
        let mut s = ShapeStream::default();
        let q = s.query(&todos());
        assert!(q.contains(&("offset".into(), "-1".into())) && q.contains(&("params[1]".into(), "false".into())));
        assert!(!q.iter().any(|(k, _)| k == "live"));
        let body = format!("[{ROW}]");
        let first = Response { schema: Some(r#"{"id":{"type":"int4","pk_index":0}}"#), ..ok("0_0", &body) };
        assert_eq!(s.on_response(&first), Ok(Outcome::Continue), "no up-to-date: keep it for now");
        let Ok(Outcome::Apply(changes)) = s.on_response(&ok("0_inf", &format!("[{UP_TO_DATE}]"))) else { panic!() };
        assert_eq!(changes.len(), 1);
        assert_eq!(changes[0].value["title"], "a");
        assert_eq!(s.position.offset, "0_inf");
        assert!(s.position.schema.is_some());
        let q = s.query(&todos());
        assert!(q.contains(&("live".into(), "true".into())) && q.contains(&("handle".into(), "h1".into())));
    }

    #[test]
    fn live_changes_carry_their_txid_and_a_409_restarts_with_the_new_handle() {
        let mut s = ShapeStream::resume(Position {
            handle: Some("h1".into()),
            offset: "0_inf".into(),
            live: true,
            schema: None,
        });
        let update = r#"{"key":"k","value":{"id":"1","done":"t"},"headers":{"operation":"update","txids":[755],"lsn":"9","op_position":0,"last":true}}"#;
        let Ok(Outcome::Apply(changes)) = s.on_response(&ok("9_0", &format!("[{update},{UP_TO_DATE}]"))) else {
            panic!()
        };
        assert_eq!((changes[0].operation, changes[0].txid), (Operation::Update, Some(755)));
        let gone = Response {
            status: 409,
            handle: Some("h2"),
            body: r#"[{"headers":{"control":"must-refetch"}}]"#,
            ..Default::default()
        };
        assert_eq!(s.on_response(&gone), Ok(Outcome::Refetch));
        assert_eq!(s.position, Position { handle: Some("h2".into()), ..Position::default() });
    }

    #[test]
    fn move_ins_are_marked_and_move_events_and_snapshot_ends_pass_by() {
        let mut s = ShapeStream::default();
        let moved =
            r#"{"key":"k2","value":{"id":"2"},"headers":{"operation":"insert","is_move_in":true,"tags":["t"]}}"#;
        let event = r#"{"headers":{"event":"move-out","patterns":[{"pos":0,"value":"t"}],"txids":[7]}}"#;
        let end = r#"{"headers":{"control":"snapshot-end","xmin":"1","xmax":"2","xip_list":[]}}"#;
        let body = format!("[{ROW},{event},{moved},{end},{UP_TO_DATE}]");
        let Ok(Outcome::Apply(changes)) = s.on_response(&ok("1_0", &body)) else { panic!("applied") };
        assert_eq!(
            changes.iter().map(|c| (c.key.as_str(), c.move_in)).collect::<Vec<_>>(),
            [(r#""public"."todos"/"1""#, false), ("k2", true)]
        );
    }

    #[test]
    fn sse_events_advance_the_offset_from_up_to_date() {
        let mut s = ShapeStream::resume(Position {
            handle: Some("h".into()),
            offset: "0_inf".into(),
            live: true,
            schema: None,
        });
        assert_eq!(s.on_event(ROW), Ok(Outcome::Continue));
        let Ok(Outcome::Apply(changes)) = s.on_event(UP_TO_DATE) else { panic!() };
        assert_eq!(changes.len(), 1);
        assert_eq!(s.position.offset, "42_0");
        let second = r#"{"key":"k","value":{"id":"2"},"headers":{"operation":"insert","txids":[7],"lsn":"50","op_position":4,"last":true}}"#;
        assert_eq!(s.on_event(second), Ok(Outcome::Continue));
        let Ok(Outcome::Apply(_)) = s.on_event(r#"{"headers":{"control":"up-to-date","global_last_seen_lsn":"50"}}"#)
        else {
            panic!()
        };
        assert_eq!(s.position.offset, "50_4", "the last change's own offset: a reconnect skips all of it");
    }

    #[test]
    fn errors_say_whether_a_retry_can_help() {
        let mut s = ShapeStream::default();
        let bad = Response {
            status: 400,
            body: r#"{"error":"invalid_request","message":"where: no column \"x\""}"#,
            ..Default::default()
        };
        assert_eq!(
            s.on_response(&bad),
            Err(ProtocolError::Status { status: 400, message: "where: no column \"x\"".into(), retry: false })
        );
        let busy = Response { status: 503, body: "", ..Default::default() };
        assert!(matches!(s.on_response(&busy), Err(ProtocolError::Status { retry: true, .. })));
        assert!(matches!(s.on_response(&ok("0_0", "{}")), Err(ProtocolError::Malformed(_))));
    }
}
