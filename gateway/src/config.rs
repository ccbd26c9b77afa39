//! `gateway serve` settings: flags, each also read from its environment variable.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum AuthMode {
    /// No tokens: every published table is readable. Loopback only; for development and tests.
    None,
    /// `Authorization: Bearer <JWT>`.
    Jwt,
}

#[derive(Clone, Debug, clap::Args)]
pub struct ServeConfig {
    /// PostgreSQL connection URL.
    #[arg(long, env = "DATABASE_URL")]
    pub database_url: String,
    /// Address to listen on.
    #[arg(long, env = "GATEWAY_LISTEN", default_value = "127.0.0.1:3000")]
    pub listen: SocketAddr,
    /// Where shape logs are stored.
    #[arg(long, env = "GATEWAY_DATA_DIR", default_value = "./gateway-data")]
    pub data_dir: PathBuf,
    /// Logical replication slot name.
    #[arg(long, env = "GATEWAY_SLOT", default_value = "gateway")]
    pub slot: String,
    /// Publication name.
    #[arg(long, env = "GATEWAY_PUBLICATION", default_value = "gateway")]
    pub publication: String,
    /// Who may read: `none` (loopback only) or `jwt`.
    #[arg(long, env = "GATEWAY_AUTH", value_enum, default_value = "jwt")]
    pub auth: AuthMode,
    /// How long a live long-poll is held before answering up-to-date (ms; keep under 45 s).
    #[arg(long, env = "GATEWAY_LONG_POLL_TIMEOUT_MS", default_value_t = 20_000)]
    pub long_poll_timeout_ms: u64,
    /// How long an SSE response stays open (s).
    #[arg(long, env = "GATEWAY_SSE_TIMEOUT_S", default_value_t = 60)]
    pub sse_timeout_s: u64,
    /// Bytes of messages per chunk of a shape log (the CDN-cacheable unit).
    #[arg(long, env = "GATEWAY_CHUNK_BYTES", default_value_t = 10 * 1024 * 1024)]
    pub chunk_bytes: u64,
}

impl ServeConfig {
    pub fn long_poll_timeout(&self) -> Duration {
        Duration::from_millis(self.long_poll_timeout_ms)
    }

    pub fn sse_timeout(&self) -> Duration {
        Duration::from_secs(self.sse_timeout_s)
    }
}
