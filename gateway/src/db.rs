//! Ordinary SQL sessions and catalog reads. Every session pins the settings that make text
//! output identical to what logical replication sends (ISO dates, UTC, hex bytea).

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use shapes::table::{Column, TableName, TableSchema};
use tokio::net::{TcpStream, UnixStream};
use tokio_postgres::config::Host;
use tokio_postgres::{Client, Config, NoTls};

/// Session settings shared by snapshot and replication sessions.
pub const SESSION_OPTIONS: &str = "-c DateStyle=ISO,DMY -c TimeZone=UTC -c IntervalStyle=iso_8601 \
     -c extra_float_digits=1 -c bytea_output=hex -c standard_conforming_strings=on";

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("invalid database URL: {0} (expected postgres://user:password@host:port/database)")]
    BadUrl(String),
    #[error("cannot connect to PostgreSQL at {target}: {source}")]
    Connect { target: String, source: tokio_postgres::Error },
    #[error("{}", query_error_text(.0))]
    Query(#[from] tokio_postgres::Error),
    /// A pooled session could not be had for another reason than connecting.
    #[error("session pool: {0}")]
    Pool(String),
}

/// PostgreSQL's own message when there is one (tokio-postgres alone says "db error").
fn query_error_text(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => match db.detail() {
            Some(detail) => format!("{} ({detail})", db.message()),
            None => db.message().to_string(),
        },
        None => e.to_string(),
    }
}

/// What a client may learn from a statement PostgreSQL refused: a reason of ours for its
/// SQLSTATE, naming the constraint, and the column when `may_name` allows it. PostgreSQL's
/// own text never passes: its message, DETAIL and HINT can hold row values (a duplicate
/// key, "Failing row contains (…)", hidden columns, another tenant's data).
pub fn client_reason(e: &tokio_postgres::Error, may_name: impl Fn(&str) -> bool) -> String {
    let Some(db) = e.as_db_error() else { return "the database session failed; retry".into() };
    let code = db.code().code();
    let constraint = db.constraint().map(|c| format!(" (constraint {c:?})")).unwrap_or_default();
    let reason = match code {
        "23505" => format!("the key or a unique value is already taken{constraint}"),
        "23502" => match db.column().filter(|c| may_name(c)) {
            Some(c) => format!("column {c:?} must not be null"),
            None => "a column outside what you may write must not be null; the table needs a default for it".into(),
        },
        "23514" => format!("the row fails a check{constraint}"),
        "23503" => format!("the row refers to a row that does not exist, or a row refers to it{constraint}"),
        "23P01" => format!("the row conflicts with another row{constraint}"),
        "22001" => "a value is too long for its column".into(),
        "22003" => "a number is out of range for its type".into(),
        "22007" | "22008" => "a date or time is malformed or out of range".into(),
        "22012" => "division by zero".into(),
        "22P02" => "a value is not valid input for its type".into(),
        "22021" | "22P05" => "a value holds a character the database cannot store".into(),
        "2202E" => "an array subscript is out of range".into(),
        "2201B" => "a regular expression is invalid".into(),
        "22023" => "a value is outside what its function accepts".into(),
        c if c.starts_with("22") => "a value is invalid where it is used".into(),
        "P0001" => "refused by a trigger or rule of the database".into(),
        c if c.starts_with("42") => "the statement no longer fits the table, which changed; retry".into(),
        _ => "the database refused it".into(),
    };
    format!("{reason} [SQLSTATE {code}]")
}

impl DbError {
    /// Errors worth retrying: the server went away or is starting.
    pub fn is_transient(&self) -> bool {
        match self {
            DbError::BadUrl(_) | DbError::Pool(_) => false,
            DbError::Connect { .. } => true,
            DbError::Query(e) => e.is_closed() || e.as_db_error().is_none(),
        }
    }
}

pub fn parse_url(url: &str) -> Result<Config, DbError> {
    let mut cfg = Config::from_str(url).map_err(|e| DbError::BadUrl(e.to_string()))?;
    cfg.options(SESSION_OPTIONS);
    cfg.application_name("gateway");
    Ok(cfg)
}

/// Opens a session; its connection task runs until the client is dropped.
pub async fn connect(cfg: &Config) -> Result<Client, DbError> {
    let target = describe(cfg);
    let (client, conn) = cfg.connect(NoTls).await.map_err(|source| DbError::Connect { target, source })?;
    drive(conn);
    Ok(client)
}

/// Runs a session's connection task until its client is dropped or the connection fails.
pub fn drive(
    connection: impl std::future::Future<Output = Result<(), tokio_postgres::Error>> + Send + 'static,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!(error = %e, "database session ended");
        }
    })
}

/// Cancels the session's running query when dropped, unless disarmed: a task whose future
/// is dropped (its shape went, the gateway stops) closes its connection, but a query waiting
/// on a lock would run on until the lock is released.
pub struct CancelOnDrop {
    token: Option<tokio_postgres::CancelToken>,
    /// For a session on a socket the gateway opened ([`open_socket`]): tokio-postgres knows
    /// no address to send its cancel request to, so it goes over a socket opened the same way.
    server: Option<Arc<Config>>,
}

impl CancelOnDrop {
    pub fn new(client: &Client) -> CancelOnDrop {
        CancelOnDrop { token: Some(client.cancel_token()), server: None }
    }

    /// For a session connected over a socket from [`open_socket`] with `server`.
    pub fn over_own_socket(client: &Client, server: Arc<Config>) -> CancelOnDrop {
        CancelOnDrop { token: Some(client.cancel_token()), server: Some(server) }
    }

    /// The work finished: nothing to cancel.
    pub fn disarm(mut self) {
        self.token = None;
    }
}

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        if let Some(token) = self.token.take()
            && let Ok(runtime) = tokio::runtime::Handle::try_current()
        {
            let server = self.server.take();
            runtime.spawn(async move {
                let socket = match &server {
                    Some(server) => open_socket(server).await,
                    None => None,
                };
                let cancelled = match socket {
                    Some(Socket::Tcp(socket)) => token.cancel_query_raw(socket, NoTls).await,
                    Some(Socket::Unix(socket)) => token.cancel_query_raw(socket, NoTls).await,
                    None => token.cancel_query(NoTls).await,
                };
                if let Err(e) = cancelled {
                    tracing::debug!(error = %e, "cancelling an abandoned query");
                }
            });
        }
    }
}

/// The first host of a connection config: a name, or a Unix socket directory.
pub fn host(cfg: &Config) -> String {
    match cfg.get_hosts().first() {
        Some(tokio_postgres::config::Host::Tcp(h)) => h.clone(),
        Some(tokio_postgres::config::Host::Unix(p)) => p.display().to_string(),
        None => "localhost".into(),
    }
}

/// `host:port/db` without credentials, for messages.
pub fn describe(cfg: &Config) -> String {
    let host = host(cfg);
    let port = cfg.get_ports().first().copied().unwrap_or(5432);
    format!("{host}:{port}/{}", cfg.get_dbname().unwrap_or("postgres"))
}

const TABLE_COLUMNS: &str = "
select c.oid, c.relreplident::text, a.attname::text,
       a.atttypid, coalesce(et.typname, t.typname)::text,
       case when et.oid is not null then greatest(a.attndims, 1) else 0 end::int4,
       a.atttypmod, a.attnotnull,
       array_position(i.indkey::int2[], a.attnum)::int4,
       format_type(a.atttypid, a.atttypmod)
from pg_class c
join pg_namespace n on n.oid = c.relnamespace
join pg_attribute a on a.attrelid = c.oid and a.attnum > 0 and not a.attisdropped and a.attgenerated = ''
join pg_type t on t.oid = a.atttypid
left join pg_type et on et.oid = t.typelem and t.typcategory = 'A'
left join pg_index i on i.indrelid = c.oid and i.indisprimary
where n.nspname = $1 and c.relname = $2 and c.relkind in ('r', 'p')
order by a.attnum";

/// Reads a table's columns in replication order; `None` when no such table exists.
pub async fn table_schema(
    client: &impl tokio_postgres::GenericClient,
    name: &TableName,
) -> Result<Option<TableSchema>, DbError> {
    let rows = client.query(TABLE_COLUMNS, &[&name.schema, &name.name]).await?;
    let Some(first) = rows.first() else {
        return Ok(None);
    };
    let oid: u32 = first.get(0);
    let identity: String = first.get(1);
    let columns = rows
        .iter()
        .map(|r| Column {
            name: r.get(2),
            type_oid: r.get(3),
            type_name: r.get(4),
            dims: r.get::<_, i32>(5) as u32,
            type_mod: r.get(6),
            not_null: r.get(7),
            pk_index: r.get::<_, Option<i32>>(8).map(|p| p as u32),
            type_sql: r.get(9),
        })
        .collect();
    Ok(Some(TableSchema { oid, name: name.clone(), columns, replica_identity_full: identity == "f" }))
}

/// Whether the database sorts text bytewise, so filters may order text in Rust.
pub async fn text_sorts_bytewise(client: &Client) -> Result<bool, DbError> {
    let row =
        client.query_one("select datcollate::text from pg_database where datname = current_database()", &[]).await?;
    let collate: String = row.get(0);
    Ok(matches!(collate.as_str(), "C" | "POSIX" | "C.UTF-8" | "C.utf8" | "ucs_basic"))
}

/// A socket to PostgreSQL opened by the gateway.
pub enum Socket {
    Tcp(TcpStream),
    Unix(UnixStream),
}

/// The socket to the config's one host and port, opened and set up as tokio-postgres would,
/// for connections that wrap it ([`Config::connect_raw`]); `None` for a list of hosts (tried
/// in turn, with `target_session_attrs`) and for a socket that fails to open: those are left
/// to tokio-postgres, whose error then names the cause.
pub async fn open_socket(cfg: &Config) -> Option<Socket> {
    let ([host], [] | [_]) = (cfg.get_hosts(), cfg.get_ports()) else { return None };
    if cfg.get_hostaddrs().len() > 1 {
        return None;
    }
    let port = cfg.get_ports().first().copied().unwrap_or(5432);
    let timeout = cfg.get_connect_timeout().copied().unwrap_or(Duration::MAX);
    let opened = async {
        match host {
            Host::Unix(dir) => UnixStream::connect(dir.join(format!(".s.PGSQL.{port}"))).await.map(Socket::Unix),
            Host::Tcp(name) => {
                let socket = match cfg.get_hostaddrs().first() {
                    Some(addr) => TcpStream::connect((*addr, port)).await?,
                    None => TcpStream::connect((name.as_str(), port)).await?,
                };
                socket.set_nodelay(true)?;
                if cfg.get_keepalives() {
                    let keepalive = socket2::TcpKeepalive::new().with_time(cfg.get_keepalives_idle());
                    socket2::SockRef::from(&socket).set_tcp_keepalive(&keepalive)?;
                }
                Ok(Socket::Tcp(socket))
            }
        }
    };
    tokio::time::timeout(timeout, opened).await.ok()?.ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_socket_is_opened_here_for_one_host_and_left_to_tokio_postgres_for_several() {
        let tcp = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = tcp.local_addr().unwrap().port();
        let dir = std::env::temp_dir().join(format!("db-socket-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let _unix = tokio::net::UnixListener::bind(dir.join(format!(".s.PGSQL.{port}"))).unwrap();
        let config = |s: String| s.parse::<Config>().unwrap();

        let one_tcp = config(format!("host=127.0.0.1 port={port} user=u"));
        assert!(matches!(open_socket(&one_tcp).await, Some(Socket::Tcp(_))));
        let one_unix = config(format!("host={} port={port} user=u", dir.display()));
        assert!(matches!(open_socket(&one_unix).await, Some(Socket::Unix(_))));
        let several = config(format!("host=127.0.0.1,127.0.0.2 port={port} user=u"));
        assert!(open_socket(&several).await.is_none(), "tried in turn by tokio-postgres");
        drop(tcp);
        assert!(open_socket(&one_tcp).await.is_none(), "refused: tokio-postgres reports why");
        std::fs::remove_dir_all(dir).unwrap();
    }
}
