//! The outbox: local writes on their way to the gateway, and what each answer does to them.
//! No I/O: the browser layer stores the entries in IndexedDB and applies these transitions.
//!
//! A row with writes in flight is shown as the server's row with those writes replayed
//! over it ([`replay`]). When the last of them has come back through the stream (its
//! `txid` echoed), or was refused, the row shown is the server's again.

use std::collections::HashSet;

use std::borrow::Cow;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use shapes::contract::{self, Batch, BatchResult, Mutation};

/// Most mutations sent in one push.
pub const MAX_PUSH: usize = 100;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Op {
    /// Insert or replace the whole row.
    Put,
    /// Insert a new row; a row with its key is refused, here and by the gateway.
    Add,
    /// Change some columns of an existing row.
    Update,
    Delete,
}

impl Op {
    /// The outbox protocol's op for it.
    pub fn wire(self) -> contract::Op {
        match self {
            Op::Put => contract::Op::Upsert,
            Op::Add => contract::Op::Insert,
            Op::Update => contract::Op::Update,
            Op::Delete => contract::Op::Delete,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Not yet applied by the gateway (never sent, or to be retried).
    Pending,
    /// Applied by the gateway in transaction `txid`.
    Synced,
    /// Refused by the gateway (conflict, rejected, or an atomic batch aborted).
    Failed,
    /// Given up after `max_retries` failed pushes.
    Abandoned,
}

impl Status {
    /// Its name, as the entries the app reads carry it.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Pending => "pending",
            Status::Synced => "synced",
            Status::Failed => "failed",
            Status::Abandoned => "abandoned",
        }
    }
}

/// One local write.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    /// The write's local id, handed to the app.
    pub id: String,
    /// Its id in the gateway's ledger: integers counting up by one per client, given when
    /// the write is first pushed (so they follow push order) and kept for its retries.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mutation_id: Option<u64>,
    pub shape: String,
    pub op: Op,
    /// The mutation as `POST /v1/outbox` takes it.
    pub mutation: Value,
    /// Writes of one `transaction()` share a batch: pushed together, atomically.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch: Option<String>,
    pub status: Status,
    #[serde(default)]
    pub attempts: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub txid: Option<u64>,
    /// Whether the row shown includes this write (network-first writes wait until applied).
    pub local: bool,
    /// Whether the write came back through the stream (or waiting for it ended).
    #[serde(default)]
    pub echoed: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The server's row, when a conflict returned it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub row: Option<Value>,
    /// Milliseconds since the epoch.
    pub created_ms: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub synced_ms: Option<f64>,
}

impl Entry {
    /// Whether the row shown still carries this write.
    pub fn outstanding(&self) -> bool {
        self.local
            && match self.status {
                Status::Pending => true,
                Status::Synced => !self.echoed,
                Status::Failed | Status::Abandoned => false,
            }
    }

    /// Whether nothing more will happen to it.
    pub fn settled(&self) -> bool {
        !self.outstanding() && self.status != Status::Pending
    }
}

/// A row that local writes can be replayed on.
pub trait Row: Clone {
    /// Overwrites the columns `partial` has.
    fn merge(&mut self, partial: &Self);
}

/// A write as replayed on the row shown.
pub enum Local<R> {
    Put(R),
    Update(R),
    Delete,
}

/// The row shown: the server's row (`None`: no such row) with the outstanding writes
/// replayed over it in order. An update of a missing row changes nothing, as on the server.
pub fn replay<'a, R: Row + 'a>(server: Option<R>, writes: impl IntoIterator<Item = &'a Local<R>>) -> Option<R> {
    writes.into_iter().fold(server, |row, write| match write {
        Local::Put(r) => Some(r.clone()),
        Local::Update(partial) => row.map(|mut r| {
            r.merge(partial);
            r
        }),
        Local::Delete => None,
    })
}

/// The next push: which entries (indexes into the slice given) and the request body.
#[derive(Debug, PartialEq)]
pub struct Push {
    pub entries: Vec<usize>,
    pub body: Value,
}

/// The next push from `entries` (in the order they were written): the oldest pending
/// write and those after it, so the gateway applies them in order. A `transaction()`
/// batch goes alone and atomic. Writes pushed for the first time get mutation ids from
/// `next_id`, which moves past them: store both before sending, so a retry sends the same.
pub fn next_push(client_id: &str, entries: &mut [Entry], next_id: &mut u64) -> Option<Push> {
    let first = entries.iter().position(|e| e.status == Status::Pending)?;
    let batch = entries[first].batch.clone();
    let chosen: Vec<usize> = match &batch {
        Some(b) => entries.iter().enumerate().filter(|(_, e)| e.batch.as_ref() == Some(b)).map(|(i, _)| i).collect(),
        None => (first..entries.len())
            .take_while(|&i| entries[i].batch.is_none())
            .filter(|&i| entries[i].status == Status::Pending)
            .take(MAX_PUSH)
            .collect(),
    };
    for &i in &chosen {
        entries[i].mutation_id.get_or_insert_with(|| {
            *next_id += 1;
            *next_id - 1
        });
    }
    let entries = &*entries;
    let mutations = chosen
        .iter()
        .map(|&i| sent_mutation(&entries[i].mutation, entries[i].mutation_id.unwrap_or_default()))
        .collect();
    let batch = Batch { client_id: client_id.into(), atomic: batch.is_some(), mutations };
    let body = serde_json::to_value(batch).expect("a batch is JSON");
    Some(Push { entries: chosen, body })
}

/// A stored mutation (`table`, `op` and its columns) as the batch carries it, with its id.
fn sent_mutation(stored: &Value, id: u64) -> Mutation<'_, Map<String, Value>> {
    let text = |name: &str| Cow::Borrowed(stored.get(name).and_then(Value::as_str).unwrap_or_default());
    let columns = |name: &str| stored.get(name).and_then(Value::as_object).cloned();
    Mutation {
        id,
        table: text("table"),
        op: text("op"),
        key: columns("key"),
        value: columns("value"),
        base: columns("base"),
    }
}

/// The gateway's ledger has applied this client's mutations only up to `expected - 1` (a
/// 409 `out_of_order`: e.g. the ledger row was pruned): the pending writes, none of which
/// it applied, take ids from `expected` in write order. Returns the next free id.
pub fn renumber(entries: &mut [Entry], expected: u64) -> u64 {
    let mut next = expected;
    for entry in entries.iter_mut().filter(|e| e.status == Status::Pending) {
        entry.mutation_id = Some(next);
        next += 1;
    }
    next
}

/// Takes the gateway's answer for the pushed `entries`.
pub fn settle(entries: &mut [Entry], response: &BatchResult, now_ms: f64) {
    for entry in entries.iter_mut() {
        let Some(result) = response.results.iter().find(|r| Some(r.id) == entry.mutation_id) else {
            fail(entry, Status::Failed, "the gateway's answer had no result for this write".into(), None);
            continue;
        };
        // A duplicate is the first answer again: a retry after a lost response. One from
        // before the client's last batch comes without it: it was applied, long ago.
        let (answer, txid) = match (result.status, &result.first) {
            (contract::Status::Duplicate, Some(first)) => (&first.result, first.txid.as_deref()),
            (contract::Status::Duplicate, None) => (result, None),
            _ => (result, response.txid.as_deref()),
        };
        match answer.status {
            contract::Status::Applied | contract::Status::Duplicate => {
                entry.status = Status::Synced;
                entry.txid = txid.and_then(|t| t.parse().ok());
                entry.synced_ms = Some(now_ms);
                entry.error = None;
                // A network-first write is shown from now on, until its echo.
                entry.local = true;
                entry.echoed = entry.txid.is_none();
            }
            contract::Status::Aborted => {
                let why = answer.error.clone().unwrap_or_else(|| "another write of its transaction was refused".into());
                fail(entry, Status::Failed, format!("aborted: {why}"), None);
            }
            other => {
                let name = other.as_str();
                let why = answer.error.clone().unwrap_or_else(|| format!("the gateway answered {name}"));
                fail(entry, Status::Failed, format!("{name}: {why}"), answer.row.clone());
            }
        }
    }
}

/// Why a push did not get an answer per write.
#[derive(Debug, PartialEq)]
pub enum PushFailure {
    /// No connection: wait for it; this counts as no attempt.
    Offline,
    /// The gateway could not apply them now (429, 5xx): try again later.
    Retry(String),
    /// The gateway refused the request itself (a 4xx): trying again cannot help.
    Refused(String),
}

/// Takes a failed push of `entries`; after `max_retries` attempts an entry is abandoned.
pub fn failed_push(entries: &mut [Entry], failure: &PushFailure, max_retries: u32) {
    for entry in entries.iter_mut() {
        match failure {
            PushFailure::Offline => {}
            PushFailure::Retry(why) => {
                entry.attempts += 1;
                entry.error = Some(why.clone());
                if entry.attempts >= max_retries {
                    let why = format!("given up after {} attempts: {why}", entry.attempts);
                    fail(entry, Status::Abandoned, why, None);
                }
            }
            PushFailure::Refused(why) => fail(entry, Status::Failed, why.clone(), None),
        }
    }
}

/// Makes a failed or abandoned write pending again, as a new one: it gets a new mutation
/// id when pushed (the gateway's ledger keeps the refusal under the old one), and the row
/// shown carries it again.
pub fn retry(entry: &mut Entry) {
    entry.status = Status::Pending;
    entry.mutation_id = None;
    entry.attempts = 0;
    entry.error = None;
    entry.row = None;
    entry.txid = None;
    entry.echoed = false;
    entry.synced_ms = None;
}

fn fail(entry: &mut Entry, status: Status, error: String, row: Option<Value>) {
    entry.status = status;
    entry.error = Some(error);
    entry.row = row;
}

/// Marks the synced writes of `shape` whose transaction came back through its stream;
/// returns the indexes of those marked.
pub fn echo(entries: &mut [Entry], shape: &str, txids: &HashSet<u64>) -> Vec<usize> {
    let mut marked = Vec::new();
    for (i, e) in entries.iter_mut().enumerate() {
        if e.shape == shape
            && e.outstanding()
            && e.status == Status::Synced
            && e.txid.is_some_and(|t| txids.contains(&t))
        {
            e.echoed = true;
            marked.push(i);
        }
    }
    marked
}

/// Stops waiting for the echo of writes synced more than `timeout_ms` ago: they made no
/// change inside their shape (e.g. a row written outside it), so the server's row is right.
pub fn expire(entries: &mut [Entry], now_ms: f64, timeout_ms: f64) -> Vec<usize> {
    let mut marked = Vec::new();
    for (i, e) in entries.iter_mut().enumerate() {
        if e.outstanding() && e.status == Status::Synced && e.synced_ms.is_some_and(|t| now_ms - t >= timeout_ms) {
            e.echoed = true;
            marked.push(i);
        }
    }
    marked
}

/// How many writes are in each state.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Stats {
    pub pending: usize,
    pub synced: usize,
    pub failed: usize,
    pub abandoned: usize,
}

pub fn stats<'a>(entries: impl IntoIterator<Item = &'a Entry>) -> Stats {
    let mut s = Stats::default();
    for e in entries {
        match e.status {
            Status::Pending => s.pending += 1,
            Status::Synced => s.synced += 1,
            Status::Failed => s.failed += 1,
            Status::Abandoned => s.abandoned += 1,
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    impl Row for Map<String, Value> {
        fn merge(&mut self, partial: &Self) {
            for (k, v) in partial {
                self.insert(k.clone(), v.clone());
            }
        }
    }

    fn row(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    fn entry(id: &str, op: Op, batch: Option<&str>) -> Entry {
        Entry {
            id: id.into(),
            mutation_id: None,
            shape: "todos".into(),
            op,
            mutation: json!({"id": id, "table": "todos", "op": op.wire().as_str()}),
            batch: batch.map(str::to_string),
            status: Status::Pending,
            attempts: 0,
            txid: None,
            local: true,
            echoed: false,
            error: None,
            row: None,
            created_ms: 0.0,
            synced_ms: None,
        }
    }

    fn response(v: Value) -> BatchResult {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn the_row_shown_is_the_server_row_with_outstanding_writes_replayed() {
        let server = Some(row(json!({"id": 1, "title": "a", "done": false})));
        let writes = [Local::Update(row(json!({"done": true}))), Local::Update(row(json!({"title": "b"})))];
        assert_eq!(replay(server.clone(), &writes), Some(row(json!({"id": 1, "title": "b", "done": true}))));
        let deleted_then_put = [Local::Delete, Local::Put(row(json!({"id": 1, "title": "c"})))];
        assert_eq!(replay(server, &deleted_then_put), Some(row(json!({"id": 1, "title": "c"}))));
        assert_eq!(replay(None, &[Local::Update(row(json!({"done": true})))]), None, "no row to update");
        assert_eq!(replay::<Map<String, Value>>(None, &[]), None);
    }

    #[test]
    fn pushes_go_in_write_order_and_a_transaction_goes_alone_and_atomic() {
        let mut entries =
            vec![entry("a", Op::Put, None), entry("b", Op::Update, None), entry("t1", Op::Put, Some("tx"))];
        entries.push(entry("t2", Op::Delete, Some("tx")));
        entries.push(entry("c", Op::Delete, None));
        let mut next = 1;
        let push = next_push("client", &mut entries, &mut next).unwrap();
        assert_eq!(push.entries, vec![0, 1], "stops before the transaction");
        assert_eq!(push.body["atomic"], false);
        assert_eq!(push.body["mutations"][1]["op"], "update");
        assert_eq!(
            (push.body["mutations"][0]["id"].clone(), push.body["mutations"][1]["id"].clone()),
            (json!(1), json!(2))
        );
        // A retry sends the same ids.
        let again = next_push("client", &mut entries, &mut next).unwrap();
        assert_eq!((again.body["mutations"][1]["id"].clone(), next), (json!(2), 3));
        entries[0].status = Status::Synced;
        entries[1].status = Status::Synced;
        let push = next_push("client", &mut entries, &mut next).unwrap();
        assert_eq!((push.entries, push.body["atomic"].clone()), (vec![2, 3], json!(true)));
        assert_eq!(push.body["mutations"][0]["id"], 3, "ids follow push order");
        entries[2].status = Status::Failed;
        entries[3].status = Status::Failed;
        assert_eq!(next_push("client", &mut entries, &mut next).unwrap().entries, vec![4]);
        assert_eq!(entries[4].mutation_id, Some(5));
        entries[4].status = Status::Synced;
        assert_eq!(next_push("client", &mut entries, &mut next), None);
        let mut many: Vec<Entry> = (0..MAX_PUSH + 5).map(|i| entry(&i.to_string(), Op::Put, None)).collect();
        assert_eq!(next_push("client", &mut many, &mut next).unwrap().entries.len(), MAX_PUSH);
    }

    #[test]
    fn an_out_of_order_answer_renumbers_the_pending_writes_from_the_expected_id() {
        let mut entries = vec![entry("a", Op::Put, None), entry("b", Op::Put, None), entry("c", Op::Put, None)];
        entries[0].status = Status::Synced;
        entries[0].mutation_id = Some(40);
        let mut next = 41;
        next_push("client", &mut entries, &mut next).unwrap();
        assert_eq!(renumber(&mut entries, 1), 3);
        assert_eq!(entries.iter().map(|e| e.mutation_id).collect::<Vec<_>>(), [Some(40), Some(1), Some(2)]);
    }

    #[test]
    fn answers_settle_each_write_and_a_duplicate_takes_the_first_answer() {
        let mut pushed = vec![entry("a", Op::Put, None), entry("b", Op::Update, None), entry("c", Op::Delete, None)];
        pushed.push(entry("d", Op::Put, None));
        pushed.push(entry("e", Op::Put, None));
        pushed[3].local = false; // network-first
        let mut next = 1;
        next_push("client", &mut pushed, &mut next).unwrap();
        let answer = response(json!({"txid": "748", "results": [
            {"id": 1, "status": "applied"},
            {"id": 2, "status": "conflict", "error": "the row changed since base.version", "row": {"id": 2}},
            {"id": 3, "status": "duplicate", "first": {"id": 3, "status": "applied", "txid": "700"}},
            {"id": 4, "status": "applied"},
            {"id": 5, "status": "duplicate"}]}));
        settle(&mut pushed, &answer, 5.0);
        assert_eq!((pushed[0].status, pushed[0].txid, pushed[0].outstanding()), (Status::Synced, Some(748), true));
        assert_eq!(pushed[1].status, Status::Failed);
        assert_eq!(pushed[1].row, Some(json!({"id": 2})));
        assert!(pushed[1].error.as_deref().unwrap().starts_with("conflict: the row changed"));
        assert!(!pushed[1].outstanding(), "a refused write leaves the row to the server");
        assert_eq!((pushed[2].status, pushed[2].txid), (Status::Synced, Some(700)));
        assert!(pushed[3].local && pushed[3].outstanding(), "a network-first write is shown once applied");
        assert_eq!(pushed[4].status, Status::Synced);
        assert!(pushed[4].settled(), "an old duplicate has no transaction to wait for");

        let mut tx = vec![entry("t1", Op::Put, Some("x")), entry("t2", Op::Put, Some("x"))];
        next_push("client", &mut tx, &mut next).unwrap();
        let answer = response(json!({"results": [
            {"id": 6, "status": "aborted"}, {"id": 7, "status": "rejected", "error": "outside your scope"}]}));
        settle(&mut tx, &answer, 5.0);
        assert!(tx.iter().all(|e| e.status == Status::Failed && e.settled()));
        assert!(tx[0].error.as_deref().unwrap().starts_with("aborted"));
    }

    #[test]
    fn failed_pushes_count_attempts_but_not_while_offline() {
        let mut pushed = vec![entry("a", Op::Put, None)];
        failed_push(&mut pushed, &PushFailure::Offline, 3);
        assert_eq!((pushed[0].attempts, pushed[0].status), (0, Status::Pending));
        failed_push(&mut pushed, &PushFailure::Retry("503".into()), 3);
        failed_push(&mut pushed, &PushFailure::Retry("503".into()), 3);
        assert_eq!((pushed[0].attempts, pushed[0].status), (2, Status::Pending));
        failed_push(&mut pushed, &PushFailure::Retry("503".into()), 3);
        assert_eq!(pushed[0].status, Status::Abandoned);
        assert!(pushed[0].error.as_deref().unwrap().contains("after 3 attempts"));
        let mut refused = vec![entry("b", Op::Put, None)];
        failed_push(&mut refused, &PushFailure::Refused("403: no write on todos".into()), 3);
        assert_eq!(refused[0].status, Status::Failed);
    }

    #[test]
    fn an_echo_or_the_timeout_ends_the_wait_for_a_synced_write() {
        let mut entries = vec![entry("a", Op::Put, None), entry("b", Op::Put, None), entry("c", Op::Put, None)];
        for (i, e) in entries.iter_mut().enumerate() {
            e.mutation_id = Some(i as u64 + 1);
        }
        settle(
            &mut entries[..2],
            &response(
                json!({"txid": "9", "results": [{"id": 1, "status": "applied"}, {"id": 2, "status": "applied"}]}),
            ),
            1000.0,
        );
        assert_eq!(echo(&mut entries, "other-shape", &HashSet::from([9])), Vec::<usize>::new());
        assert_eq!(echo(&mut entries, "todos", &HashSet::from([8])), Vec::<usize>::new());
        assert_eq!(echo(&mut entries, "todos", &HashSet::from([9])), vec![0, 1]);
        assert!(entries[0].settled() && !entries[2].settled());
        assert_eq!(echo(&mut entries, "todos", &HashSet::from([9])), Vec::<usize>::new(), "once");

        settle(
            &mut entries[2..],
            &response(json!({"txid": "10", "results": [{"id": 3, "status": "applied"}]})),
            1000.0,
        );
        assert_eq!(expire(&mut entries, 1500.0, 1000.0), Vec::<usize>::new());
        assert_eq!(expire(&mut entries, 2000.0, 1000.0), vec![2]);
        assert_eq!(stats(&entries), Stats { synced: 3, ..Stats::default() });
    }

    #[test]
    fn a_retried_write_is_pushed_again_under_a_new_mutation_id() {
        let mut entries = vec![entry("a", Op::Put, None)];
        let mut next_id = 1;
        next_push("c", &mut entries, &mut next_id).unwrap();
        failed_push(&mut entries, &PushFailure::Refused("422: check".into()), 10);
        assert_eq!((entries[0].status, entries[0].mutation_id), (Status::Failed, Some(1)));
        assert!(!entries[0].outstanding(), "a failed write no longer shows");
        retry(&mut entries[0]);
        assert!(entries[0].outstanding(), "a retried write shows again");
        let push = next_push("c", &mut entries, &mut next_id).unwrap();
        assert_eq!(push.body["mutations"][0]["id"], 2, "{}", push.body);
        assert_eq!((entries[0].attempts, &entries[0].error), (0, &None));
    }

    #[test]
    fn status_names_are_the_serialized_ones() {
        for status in [Status::Pending, Status::Synced, Status::Failed, Status::Abandoned] {
            assert_eq!(serde_json::to_value(status).unwrap(), status.as_str());
        }
    }
}
