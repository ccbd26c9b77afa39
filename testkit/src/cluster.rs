//! One test's PostgreSQL: a throwaway cluster with logical WAL, a client session on it, and
//! the data dir a gateway beside it writes to; plus what tests ask PostgreSQL itself.

use std::collections::BTreeMap;
use std::path::PathBuf;

use gateway::devdb::{DevOptions, DevPostgres};
use serde_json::Value;

use crate::process::Gateway;

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
