//! `gateway demo`: a throwaway PostgreSQL with the demo schema, access rules scoped by org,
//! tokens for two orgs, the client SDK's example app showing both orgs live ([`site`]), and
//! `serve` against it all.
//! Ctrl-C stops everything and removes the temporary directory.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use clap::{Args, FromArgMatches};
use tokio_util::sync::CancellationToken;

use crate::config::{ConfigFile, ServeConfig};
use crate::devdb::{DevOptions, DevPostgres};

pub mod site;

/// The `client-sdk/` folder of the checkout this binary was built from.
pub const SDK_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../client-sdk");

/// The demo schema and rows (`sql/demo.sql`), built into the binary.
pub const DEMO_SQL: &str = include_str!("../../../sql/demo.sql");
/// Each org sees its own todos and its own org row; todos are writable in scope.
const RULES: &str = r#"
[[table]]
name = "public.todos"
scope = "org_id = :org_id"
write = ["insert", "update", "delete"]

[[table]]
name = "public.orgs"
scope = "id = :org_id"
"#;
/// The orgs of `sql/demo.sql` that get a token.
const ORGS: [&str; 2] = ["acme", "globex"];
/// How long demo tokens last.
const TOKEN_LIFETIME: Duration = Duration::from_secs(24 * 3600);

#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error(transparent)]
    DevDb(#[from] crate::devdb::DevDbError),
    #[error("loading sql/demo.sql: {0}")]
    Load(#[from] tokio_postgres::Error),
    #[error(transparent)]
    Db(#[from] crate::db::DbError),
    #[error("writing the demo config: {0}")]
    Config(String),
    #[error(transparent)]
    Serve(#[from] crate::StartError),
}

/// An HS256 token for one org of the demo.
fn token(secret: &str, org: &str) -> Result<String, DemoError> {
    let exp = (SystemTime::now() + TOKEN_LIFETIME).duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
    let claims = serde_json::json!({"sub": format!("demo-{org}"), "org_id": org, "exp": exp});
    let key = jsonwebtoken::EncodingKey::from_secret(secret.as_bytes());
    jsonwebtoken::encode(&jsonwebtoken::Header::default(), &claims, &key).map_err(|e| DemoError::Config(e.to_string()))
}

/// `serve`'s settings for the demo, with every default `serve` has.
fn serve_config(url: &str, listen: SocketAddr, pg: &DevPostgres, secret: &str) -> Result<ServeConfig, DemoError> {
    let rules_path = pg.root().join("demo.toml");
    std::fs::write(&rules_path, RULES).map_err(|e| DemoError::Config(e.to_string()))?;
    let rules = ConfigFile::read(&rules_path).map_err(|e| DemoError::Config(e.to_string()))?.rules;
    let data_dir = pg.root().join("gateway-data");
    let args = [
        "serve",
        "--database-url",
        url,
        "--listen",
        &listen.to_string(),
        "--data-dir",
        &data_dir.to_string_lossy(),
        "--auth",
        "jwt",
        "--jwt-secret",
        secret,
    ]
    .map(String::from);
    let matches = ServeConfig::augment_args(clap::Command::new("serve"))
        .try_get_matches_from(args)
        .map_err(|e| DemoError::Config(e.to_string()))?;
    let mut cfg = ServeConfig::from_arg_matches(&matches).map_err(|e| DemoError::Config(e.to_string()))?;
    cfg.rules = rules;
    Ok(cfg)
}

pub async fn run(listen: SocketAddr, sdk_dir: PathBuf, shutdown: CancellationToken) -> Result<(), DemoError> {
    println!("starting a throwaway PostgreSQL …");
    let pg = tokio::task::spawn_blocking(|| DevPostgres::start(&DevOptions::default()))
        .await
        .map_err(std::io::Error::other)
        .map_err(crate::devdb::DevDbError::from)??;
    let url = pg.url("postgres");
    let client = crate::db::connect(&crate::db::parse_url(&url)?).await?;
    client.batch_execute(DEMO_SQL).await?;
    drop(client);

    let secret = format!("{:032x}{:032x}", rand::random::<u128>(), rand::random::<u128>());
    let tokens: Vec<(&str, String)> =
        ORGS.iter().map(|org| Ok((*org, token(&secret, org)?))).collect::<Result<_, DemoError>>()?;
    let by_org: serde_json::Map<String, serde_json::Value> =
        tokens.iter().map(|(org, t)| (org.to_string(), serde_json::Value::from(t.as_str()))).collect();
    let base = format!("http://{listen}");
    let site = site::DemoSite { sdk_dir, config: serde_json::json!({ "url": base, "tokens": by_org }).to_string() };
    if !site.sdk_built() {
        println!(
            "note: the client SDK is not built in {}: the demo page needs it (scripts/demo.sh builds it)",
            site.sdk_dir.display()
        );
    }
    let mut cfg = serve_config(&url, listen, &pg, &secret)?;
    cfg.demo = Some(std::sync::Arc::new(site));

    // Printed once the gateway answers, so every line works when it appears.
    let ready = wait_until_ready(base.clone(), shutdown.clone());
    tokio::spawn(async move {
        if ready.await {
            print_welcome(&base, &url, &tokens);
        }
    });
    let result = crate::serve(cfg, shutdown).await;
    drop(pg);
    result.map_err(DemoError::from)
}

/// Waits until `/readyz` answers 200; `false` when the demo stops first.
async fn wait_until_ready(base: String, shutdown: CancellationToken) -> bool {
    let http = reqwest::Client::new();
    while !shutdown.is_cancelled() {
        if http.get(format!("{base}/readyz")).send().await.is_ok_and(|r| r.status().is_success()) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

fn print_welcome(base: &str, url: &str, tokens: &[(&str, String)]) {
    println!();
    println!("gateway demo is running: PostgreSQL at {url}");
    println!();
    println!("  demo page: {base}/demo");
    for (org, token) in tokens {
        println!("  {org} token: {token}");
    }
    let (org, token) = &tokens[0];
    println!();
    println!("  {org}'s todos (its token scopes the rows; no token is a 401):");
    println!("    curl -i -H 'Authorization: Bearer {token}' '{base}/v1/shape?table=todos&offset=-1'");
    println!("  then follow them live (use the electric-handle and electric-offset headers you got):");
    println!(
        "    curl -i -H 'Authorization: Bearer {token}' '{base}/v1/shape?table=todos&handle=<handle>&offset=<offset>&live=true'"
    );
    println!("  and change rows in another terminal:");
    println!("    psql '{url}' -c \"update todos set done = true where org_id = '{org}'\"");
    println!();
    println!("Ctrl-C stops everything and removes the temporary database.");
}
