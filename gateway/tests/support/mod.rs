//! Test support: a throwaway PostgreSQL per test, the real `gateway` binary as a child
//! process, and a shape follower that speaks the protocol the way the official client does
//! and materializes rows like its `Shape` class.

#![allow(dead_code)]

use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use gateway::devdb::{DevOptions, DevPostgres};
use serde_json::{Map, Value};

pub const DEADLINE: Duration = Duration::from_secs(30);

/// The table most tests use.
pub const ITEMS: &str = "create table items (id int8 primary key, org text not null, title text, n int4);";

/// One test's database and its gateway data dir.
pub struct Env {
    pub pg: DevPostgres,
    pub url: String,
    pub db: tokio_postgres::Client,
    pub data_dir: PathBuf,
}

impl Env {
    pub async fn new() -> Env {
        Env::with(DevOptions::default()).await
    }

    /// A cluster with the given options (e.g. `fsync` on, as in production).
    pub async fn with(options: DevOptions) -> Env {
        gateway::install_tls_provider();
        let pg =
            tokio::task::spawn_blocking(move || DevPostgres::start(&options)).await.unwrap().expect("start postgres");
        let url = pg.url("postgres");
        let db = connect(&url).await;
        let data_dir = pg.root().join("gateway-data");
        Env { pg, url, db, data_dir }
    }

    pub async fn sql(&self, sql: &str) {
        self.db.batch_execute(sql).await.unwrap_or_else(|e| panic!("{sql}: {e:?}"));
    }

    /// Reconnects after a PostgreSQL restart.
    pub async fn reconnect(&mut self) {
        self.db = connect(&self.url).await;
    }

    pub fn gateway(&self) -> Gateway {
        Gateway::start(&self.url, &self.data_dir, &[])
    }

    /// A gateway with test defaults, once it is ready.
    pub async fn ready_gateway(&self) -> Gateway {
        let mut gw = self.gateway();
        gw.ready().await;
        gw
    }

    pub fn gateway_with(&self, args: &[&str]) -> Gateway {
        Gateway::start(&self.url, &self.data_dir, args)
    }
}

pub async fn connect(url: &str) -> tokio_postgres::Client {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls).await.expect("connect");
    tokio::spawn(conn);
    client
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// The gateway binary, run as a child process so tests can kill -9 it.
pub struct Gateway {
    child: Option<Child>,
    pub port: u16,
    url: String,
    data_dir: PathBuf,
    extra: Vec<String>,
}

impl Gateway {
    pub fn start(db_url: &str, data_dir: &std::path::Path, extra: &[&str]) -> Gateway {
        let mut g = Gateway {
            child: None,
            port: free_port(),
            url: db_url.into(),
            data_dir: data_dir.into(),
            extra: extra.iter().map(|s| s.to_string()).collect(),
        };
        g.spawn();
        g
    }

    fn spawn(&mut self) {
        let log =
            std::fs::OpenOptions::new().create(true).append(true).open(self.data_dir.with_extension("log")).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_gateway"))
            .args(["serve", "--database-url", &self.url])
            .args(if self.extra.iter().any(|a| a == "--auth") { &[][..] } else { &["--auth", "none"][..] })
            .args(["--listen", &format!("127.0.0.1:{}", self.port)])
            .args(["--data-dir", &self.data_dir.to_string_lossy()])
            .args(self.default_args())
            .args(&self.extra)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn gateway");
        self.child = Some(child);
    }

    /// Test defaults (short timeouts, small chunks) unless `extra` sets the flag itself.
    fn default_args(&self) -> Vec<&'static str> {
        [("--long-poll-timeout-ms", "1500"), ("--sse-timeout-s", "5"), ("--chunk-bytes", "4096")]
            .into_iter()
            .filter(|(flag, _)| !self.extra.iter().any(|a| a == flag))
            .flat_map(|(flag, value)| [flag, value])
            .collect()
    }

    /// Waits up to `limit` for the process to end on its own; then its exit code.
    pub async fn exit_within(&mut self, limit: Duration) -> Option<i32> {
        let started = Instant::now();
        while self.exit_code().is_none() && started.elapsed() < limit {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        self.exit_code()
    }

    /// The exit code, once the process has ended on its own.
    pub fn exit_code(&mut self) -> Option<i32> {
        self.child.as_mut().and_then(|c| c.try_wait().unwrap()).map(|s| s.code().unwrap_or(-1))
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Starts the gateway again after [`Gateway::terminate`] or [`Gateway::kill9`].
    pub fn spawn_again(&mut self) {
        self.kill9();
        self.spawn();
    }

    pub fn base(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Waits until `/readyz` answers 200.
    pub async fn ready(&mut self) {
        let started = Instant::now();
        loop {
            if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().unwrap()) {
                panic!("gateway exited early with {status}; log: {}", self.log());
            }
            if let Ok(r) = reqwest::get(format!("{}/readyz", self.base())).await
                && r.status() == 200
            {
                return;
            }
            assert!(started.elapsed() < DEADLINE, "gateway not ready; log: {}", self.log());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until `/healthz` answers (a standby is alive but never ready).
    pub async fn alive(&self) {
        let started = Instant::now();
        loop {
            if let Ok(r) = reqwest::get(format!("{}/healthz", self.base())).await
                && r.status() == 200
            {
                return;
            }
            assert!(started.elapsed() < DEADLINE, "no /healthz; log: {}", self.log());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.data_dir.with_extension("log")).unwrap_or_default()
    }

    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM and wait; returns the exit code.
    pub fn terminate(&mut self) -> Option<i32> {
        let mut c = self.child.take()?;
        Command::new("kill").args(["-TERM", &c.id().to_string()]).status().unwrap();
        let started = Instant::now();
        loop {
            if let Some(s) = c.try_wait().unwrap() {
                return s.code();
            }
            assert!(started.elapsed() < DEADLINE, "gateway did not stop on SIGTERM");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub async fn restart(&mut self) {
        self.kill9();
        self.spawn();
        self.ready().await;
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// What a response told the follower.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub body: Value,
}

/// An error body's reason: its message and, for a 400 (Electric's shape: `message` is
/// "Invalid request"), what `errors` says of each parameter.
pub fn reason(body: &Value) -> String {
    let mut out = body["message"].as_str().unwrap_or_default().to_string();
    for (param, said) in body["errors"].as_object().into_iter().flatten() {
        out.push_str(&format!("; {param}: {said}"));
    }
    out
}

pub async fn get(url: &str) -> Response {
    get_as(url, None).await
}

/// A GET with `Authorization: Bearer <token>` when a token is given.
pub async fn get_as(url: &str, token: Option<&str>) -> Response {
    let mut req = reqwest::Client::new().get(url);
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    let r = req.send().await.expect("request");
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    let bytes = r.bytes().await.unwrap();
    let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    Response { status, headers, body }
}

/// Follows one shape by long-polling and materializes it.
pub struct Follower {
    base: String,
    pub params: String,
    pub handle: Option<String>,
    pub offset: String,
    cursor: String,
    pub rows: BTreeMap<String, Map<String, Value>>,
    pub refetches: usize,
    /// (lsn, op_position) of every live change applied, to catch duplicates.
    seen: HashSet<(String, u64)>,
    pub duplicates: usize,
    pub schema: Option<Value>,
    pub token: Option<String>,
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
            schema: None,
            token: None,
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
        let r = get_as(&self.url(live), self.token.as_deref()).await;
        match r.status {
            200 => {}
            409 => {
                self.handle = r.headers.get("electric-handle").map(|h| h.to_str().unwrap().to_string());
                self.offset = "-1".into();
                self.rows.clear();
                self.seen.clear();
                self.refetches += 1;
                return false;
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
        for m in r.body.as_array().expect("array body") {
            let headers = &m["headers"];
            if headers["control"] == "up-to-date" {
                assert!(headers["global_last_seen_lsn"].is_string());
                up_to_date = true;
                continue;
            }
            if headers.get("control").is_some() {
                continue;
            }
            if let (Some(lsn), Some(op)) = (headers["lsn"].as_str(), headers["op_position"].as_u64())
                && !self.seen.insert((lsn.to_string(), op))
            {
                self.duplicates += 1;
                continue;
            }
            let key = m["key"].as_str().unwrap().to_string();
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
        up_to_date
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

/// The test slot's confirmed position.
pub async fn slot_confirmed(db: &tokio_postgres::Client) -> shapes::offset::Lsn {
    let sql = "select confirmed_flush_lsn::text from pg_replication_slots where slot_name = 'gateway'";
    db.query_one(sql, &[]).await.unwrap().get::<_, String>(0).parse().unwrap()
}

/// PostgreSQL's current WAL position: the insert position, past every record written so
/// far. (Test clusters commit asynchronously, so the write position `pg_current_wal_lsn()`
/// can still lag behind a transaction that has just committed.)
pub async fn current_wal(db: &tokio_postgres::Client) -> shapes::offset::Lsn {
    db.query_one("select pg_current_wal_insert_lsn()::text", &[]).await.unwrap().get::<_, String>(0).parse().unwrap()
}

/// The sum of a metric's samples on `/metrics` whose line holds every one of `labels`.
pub async fn metric_sum(base: &str, name: &str, labels: &[&str]) -> f64 {
    let text = reqwest::get(format!("{base}/metrics")).await.unwrap().text().await.unwrap();
    text.lines()
        .filter(|l| l.split(['{', ' ']).next() == Some(name) && labels.iter().all(|label| l.contains(label)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Waits until `check` holds, failing with `what` at the deadline.
pub async fn wait_until<F: std::future::Future<Output = bool>>(what: &str, mut check: impl FnMut() -> F) {
    let started = std::time::Instant::now();
    while !check().await {
        assert!(started.elapsed() < DEADLINE, "{what}: not within {DEADLINE:?}");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// `select id, col from table where filter` as the same map, from PostgreSQL itself.
pub async fn oracle(db: &tokio_postgres::Client, table: &str, filter: &str, col: &str) -> BTreeMap<String, Value> {
    let sql = format!("select id::text, {col}::text from {table} where {filter}");
    db.query(&sql, &[])
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get::<_, String>(0), r.get::<_, Option<String>>(1).map(Value::String).unwrap_or(Value::Null)))
        .collect()
}

/// Runs the Node test file `file` in `dir` against `gw` and `env`'s database (as
/// `GATEWAY_URL`, `DATABASE_URL` and `PSQL`, plus `extra`), and checks that all `tests`
/// of it ran and passed.
pub async fn node_suite(
    dir: &std::path::Path,
    file: &str,
    env: &Env,
    gw: &Gateway,
    extra: Vec<(&'static str, String)>,
    tests: usize,
) {
    let mut vars = vec![("GATEWAY_URL", gw.base()), ("DATABASE_URL", env.url.clone())];
    vars.extend(extra);
    run_node_suite(dir, file, vars, tests, || gw.log()).await;
}

/// Runs `node --test file` in `dir` with `vars` (and `PSQL`); expects `tests` passing tests.
pub async fn run_node_suite(
    dir: &std::path::Path,
    file: &str,
    vars: Vec<(&'static str, String)>,
    tests: usize,
    log: impl FnOnce() -> String,
) {
    let psql = gateway::devdb::find_binaries().expect("PostgreSQL binaries").join("psql");
    let out = tokio::task::spawn_blocking({
        let (dir, file) = (dir.to_path_buf(), file.to_string());
        move || {
            Command::new("node")
                .args(["--test", "--test-concurrency=1", &file])
                .current_dir(dir)
                .env("PSQL", psql)
                .envs(vars)
                .output()
                .expect("run node")
        }
    })
    .await
    .unwrap();
    let report = format!("{}\n{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "the Node suite {file} failed:\n{report}\ngateway log:\n{}", log());
    assert!(
        report.contains(&format!("# pass {tests}")) && report.contains("# fail 0"),
        "all {tests} tests of {file} ran:\n{report}"
    );
}
