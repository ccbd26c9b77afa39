//! `gateway demo`: a throwaway PostgreSQL with the demo schema, and `serve` against it.
//! Ctrl-C stops both and removes the temporary directory.

use std::net::SocketAddr;

use tokio_util::sync::CancellationToken;

use crate::config::{AuthMode, ServeConfig};
use crate::devdb::{DevOptions, DevPostgres};

/// The demo schema and rows (`sql/demo.sql`), built into the binary.
pub const DEMO_SQL: &str = include_str!("../../sql/demo.sql");

#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error(transparent)]
    DevDb(#[from] crate::devdb::DevDbError),
    #[error("loading sql/demo.sql: {0}")]
    Load(#[from] tokio_postgres::Error),
    #[error(transparent)]
    Db(#[from] crate::db::DbError),
    #[error(transparent)]
    Serve(#[from] crate::StartError),
}

pub async fn run(listen: SocketAddr, shutdown: CancellationToken) -> Result<(), DemoError> {
    if !listen.ip().is_loopback() {
        tracing::warn!(%listen, "the demo reads without tokens; it listens on a non-loopback address only because you asked");
    }
    println!("starting a throwaway PostgreSQL …");
    let pg = tokio::task::spawn_blocking(|| DevPostgres::start(&DevOptions::default()))
        .await
        .map_err(std::io::Error::other)
        .map_err(crate::devdb::DevDbError::from)??;
    let url = pg.url("postgres");
    let client = crate::db::connect(&crate::db::parse_url(&url)?).await?;
    client.batch_execute(DEMO_SQL).await?;
    drop(client);

    let base = format!("http://{listen}");
    println!();
    println!("gateway demo is running: PostgreSQL at {url}");
    println!();
    println!("  snapshot of one org's todos:");
    println!("    curl -i '{base}/v1/shape?table=todos&offset=-1&where=org_id%3D%27acme%27'");
    println!("  then follow it live (use the electric-handle and electric-offset headers you got):");
    println!(
        "    curl -i '{base}/v1/shape?table=todos&where=org_id%3D%27acme%27&handle=<handle>&offset=<offset>&live=true'"
    );
    println!("  and change a row in another terminal:");
    println!("    psql '{url}' -c \"update todos set done = true where org_id = 'acme'\"");
    println!();
    println!("Ctrl-C stops everything and removes the temporary database.");

    let cfg = ServeConfig {
        config: None,
        database_url: url,
        listen,
        data_dir: pg.root().join("gateway-data"),
        slot: "gateway".into(),
        publication: "gateway".into(),
        auth: if listen.ip().is_loopback() { AuthMode::None } else { AuthMode::Jwt },
        long_poll_timeout_ms: 20_000,
        sse_timeout_s: 60,
        chunk_bytes: 10 * 1024 * 1024,
        jwt_secret: None,
        jwt_public_key: None,
        jwt_jwks: None,
        jwt_issuer: None,
        jwt_audience: None,
        cors_origins: vec!["*".into()],
        max_retained_wal: 1 << 30,
        wal_budget_action: crate::config::BudgetAction::Stop,
        rules: Vec::new(),
    };
    let result = crate::serve(cfg, shutdown).await;
    drop(pg);
    result.map_err(DemoError::from)
}
