//! A shape follower that speaks the protocol the way the official client does and
//! materializes rows like its `Shape` class.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::time::Instant;

use serde_json::{Map, Value};

use crate::DEADLINE;
use crate::process::Gateway;

/// Follows one shape by long-polling and materializes it.
pub struct Follower {
    pub base: String,
    pub params: String,
    pub handle: Option<String>,
    pub offset: String,
    cursor: String,
    pub rows: BTreeMap<String, Map<String, Value>>,
    pub refetches: usize,
    /// (lsn, op_position) of every live change applied, to catch duplicates.
    seen: HashSet<(String, u64)>,
    pub duplicates: usize,
    /// Answers that said up-to-date in the middle of a transaction (their last change did
    /// not carry `last`): a client would show part of a transaction.
    pub torn: usize,
    pub schema: Option<Value>,
    pub token: Option<String>,
    /// Event messages received (`move-out`), in order.
    pub events: Vec<Value>,
    /// The `tags` each key last came with (kept after a delete).
    pub tags: BTreeMap<String, Vec<String>>,
    /// Control messages other than `up-to-date` (`snapshot-end`), in order.
    pub controls: Vec<Value>,
    /// Keys that arrived as inserts marked `is_move_in`.
    pub moved_in: BTreeSet<String>,
}

impl Follower {
    pub fn new(gateway: &Gateway, params: &str) -> Follower {
        Follower {
            base: gateway.base(),
            params: params.into(),
            handle: None,
            offset: "-1".into(),
            cursor: String::new(),
            rows: BTreeMap::new(),
            refetches: 0,
            seen: HashSet::new(),
            duplicates: 0,
            torn: 0,
            schema: None,
            token: None,
            events: Vec::new(),
            tags: BTreeMap::new(),
            controls: Vec::new(),
            moved_in: BTreeSet::new(),
        }
    }

    /// Sends `token` as a bearer token on every request.
    pub fn with_token(mut self, token: &str) -> Follower {
        self.token = Some(token.into());
        self
    }

    /// Points the follower at another gateway (same data), keeping handle and offset.
    pub fn rebase(&mut self, gateway: &Gateway) {
        self.base = gateway.base();
    }

    fn url(&self, live: bool) -> String {
        let mut u = format!("{}/v1/shape?{}&offset={}", self.base, self.params, self.offset);
        if let Some(h) = &self.handle {
            u.push_str(&format!("&handle={h}"));
        }
        if live {
            u.push_str(&format!("&live=true&cursor={}", self.cursor));
        }
        u
    }

    /// One request; applies its messages. Returns whether it ended with up-to-date.
    pub async fn step(&mut self, live: bool) -> bool {
        self.try_step(live).await.unwrap_or_else(|e| panic!("{e}"))
    }

    /// [`Follower::step`], where a gateway that cannot answer (unreachable, or a 503 while
    /// a standby takes over) is an error the caller may meet by trying another one.
    pub async fn try_step(&mut self, live: bool) -> Result<bool, String> {
        let mut req = crate::http::http().get(self.url(live));
        if let Some(t) = &self.token {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        let sent = req.send().await.map_err(|e| format!("{}: {e}", self.base))?;
        let (status, headers) = (sent.status().as_u16(), sent.headers().clone());
        let bytes = sent.bytes().await.map_err(|e| format!("{}: {e}", self.base))?;
        let r = crate::http::Response { status, headers, body: serde_json::from_slice(&bytes).unwrap_or(Value::Null) };
        match r.status {
            502..=504 => return Err(format!("{}: status {}: {}", self.base, r.status, r.body)),
            200 => {}
            409 => {
                self.handle = r.headers.get("electric-handle").map(|h| h.to_str().unwrap().to_string());
                self.offset = "-1".into();
                self.rows.clear();
                self.seen.clear();
                self.refetches += 1;
                return Ok(false);
            }
            s => panic!("status {s}: {}", r.body),
        }
        let h = |k: &str| r.headers.get(k).map(|v| v.to_str().unwrap().to_string());
        self.handle = Some(h("electric-handle").expect("electric-handle"));
        self.offset = h("electric-offset").expect("electric-offset");
        if live {
            self.cursor = h("electric-cursor").expect("electric-cursor on live responses");
        } else {
            self.schema = Some(
                serde_json::from_str(&h("electric-schema").expect("electric-schema on non-live responses")).unwrap(),
            );
        }
        let mut up_to_date = false;
        let mut ends_txn = None;
        for m in r.body.as_array().expect("array body") {
            let headers = &m["headers"];
            if headers["control"] == "up-to-date" {
                assert!(headers["global_last_seen_lsn"].is_string());
                up_to_date = true;
                continue;
            }
            if headers.get("control").is_some() {
                self.controls.push(m.clone());
                continue;
            }
            if headers.get("event").is_some() {
                self.events.push(m.clone());
                continue;
            }
            if let (Some(lsn), Some(op)) = (headers["lsn"].as_str(), headers["op_position"].as_u64()) {
                ends_txn = Some(headers["last"] == true);
                if !self.seen.insert((lsn.to_string(), op)) {
                    self.duplicates += 1;
                    continue;
                }
            }
            let key = m["key"].as_str().unwrap().to_string();
            if let Some(tags) = headers["tags"].as_array() {
                self.tags.insert(key.clone(), tags.iter().map(|t| t.as_str().unwrap().to_string()).collect());
            }
            if headers["is_move_in"] == true {
                assert_eq!(headers["operation"], "insert", "only inserts move in");
                self.moved_in.insert(key.clone());
            }
            let value = m["value"].as_object().unwrap().clone();
            match headers["operation"].as_str().unwrap() {
                "insert" => {
                    self.rows.insert(key, value);
                }
                "update" => {
                    let row = self
                        .rows
                        .get_mut(&key)
                        .unwrap_or_else(|| panic!("update for a row the client does not hold: {key}"));
                    row.extend(value);
                }
                "delete" => {
                    self.rows.remove(&key);
                }
                op => panic!("unknown operation {op}"),
            }
        }
        if up_to_date && ends_txn == Some(false) {
            self.torn += 1;
        }
        Ok(up_to_date)
    }

    /// Catches up with non-live requests until up-to-date.
    pub async fn sync(&mut self) {
        let started = Instant::now();
        while !self.step(false).await {
            assert!(started.elapsed() < DEADLINE, "no up-to-date within the deadline");
        }
    }

    /// Long-polls until `done(rows)` holds.
    pub async fn live_until(&mut self, done: impl Fn(&BTreeMap<String, Map<String, Value>>) -> bool) {
        let started = Instant::now();
        while !done(&self.rows) {
            assert!(started.elapsed() < DEADLINE, "live state never reached; rows: {:?}", self.rows);
            if self.offset == "-1" {
                self.sync().await;
            } else {
                self.step(true).await;
            }
        }
    }

    /// The rows as (id → value of `col`), for comparisons.
    pub fn column(&self, id: &str, col: &str) -> BTreeMap<String, Value> {
        column_of(&self.rows, id, col)
    }

    /// Long-polls until the shape's `col` by `id` equals `expected` (usually from [`oracle`]).
    pub async fn converge_to(&mut self, col: &str, expected: &BTreeMap<String, Value>) {
        self.live_until(|rows| column_of(rows, "id", col) == *expected).await;
    }
}

/// The rows as (id → value of `col`).
pub fn column_of(rows: &BTreeMap<String, Map<String, Value>>, id: &str, col: &str) -> BTreeMap<String, Value> {
    rows.values().map(|r| (r[id].as_str().unwrap().to_string(), r.get(col).cloned().unwrap_or(Value::Null))).collect()
}
