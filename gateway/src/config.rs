//! `gateway serve` settings: flags, each also read from its environment variable and from
//! the `--config` TOML file (keys are the flag names without `--`), in that order of
//! precedence; the file also holds the `[[table]]` access rules.

use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::auth::rules::TableRule;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum AuthMode {
    /// No tokens: every published table is readable. Loopback only; for development and tests.
    None,
    /// `Authorization: Bearer <JWT>`.
    Jwt,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// What the gateway does when its slot holds the whole WAL budget.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum BudgetAction {
    /// Exit with an error; the slot and the shape logs stay for a restart.
    Stop,
    /// Drop and recreate the slot, releasing the WAL; every shape is refetched.
    RecreateSlot,
}

#[derive(Clone, Debug, clap::Args)]
pub struct ServeConfig {
    /// TOML file with settings (these flags' names as keys) and [[table]] access rules.
    #[arg(long, env = "GATEWAY_CONFIG")]
    pub config: Option<PathBuf>,
    /// PostgreSQL connection URL.
    #[arg(long, env = "DATABASE_URL")]
    pub database_url: String,
    /// Address to listen on.
    #[arg(long, env = "GATEWAY_LISTEN", default_value = "127.0.0.1:3000")]
    pub listen: SocketAddr,
    /// Where shape logs are stored. Standbys that share it with the leader (one volume, a
    /// ReadWriteMany one across nodes) serve reads of the leader's shapes.
    #[arg(long, env = "GATEWAY_DATA_DIR", default_value = "./gateway-data")]
    pub data_dir: PathBuf,
    /// The URL other gateways reach this one at (standbys sharing the data dir forward new
    /// shapes to the leader there). Default: `http://` and the `--listen` address, with
    /// `127.0.0.1` for an unspecified IP.
    #[arg(long, env = "GATEWAY_ADVERTISE_URL")]
    pub advertise_url: Option<String>,
    /// Logical replication slot name; it starts with `gateway`, so the gateway never
    /// mistakes (or drops) a slot it did not create.
    #[arg(long, env = "GATEWAY_SLOT", default_value = "gateway", value_parser = parse_slot_name)]
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
    /// A connection whose client accepts no bytes of an answer for this long is closed (s),
    /// freeing what the answer holds; the clock runs only between two writes (nginx's
    /// `send_timeout`).
    #[arg(long, env = "GATEWAY_SEND_TIMEOUT_S", default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..))]
    pub send_timeout_s: u64,
    /// `max-age` of catch-up answers (non-live reads after the first chunk, `offset=now`), in
    /// seconds: how long browsers and caches may serve them without asking (Electric's
    /// ELECTRIC_CACHE_MAX_AGE).
    #[arg(long, env = "GATEWAY_CACHE_MAX_AGE", default_value_t = 60)]
    pub cache_max_age: u32,
    /// `stale-while-revalidate` of catch-up answers, in seconds: how long after max-age a
    /// stale copy may be served while it is refreshed (Electric's ELECTRIC_CACHE_STALE_AGE).
    #[arg(long, env = "GATEWAY_CACHE_STALE_AGE", default_value_t = 300)]
    pub cache_stale_age: u32,
    /// Bytes of messages per chunk of a shape log (the CDN-cacheable unit).
    #[arg(long, env = "GATEWAY_CHUNK_BYTES", default_value_t = 10 * 1024 * 1024)]
    pub chunk_bytes: u64,
    /// Memory for decoded changes waiting for the fan-out (e.g. 64MiB): a transaction up to
    /// this size is held whole; a larger one is written to the shape logs in parts as it
    /// arrives and published at its end, so memory stays bounded whatever its size.
    #[arg(long, env = "GATEWAY_TXN_MEMORY", default_value = "64MiB", value_parser = parse_bytes)]
    pub txn_memory: u64,
    /// HMAC secret for HS256/384/512 tokens.
    #[arg(long, env = "GATEWAY_JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<String>,
    /// PEM public key file for RS*/PS*, ES256/384 or EdDSA tokens.
    #[arg(long, env = "GATEWAY_JWT_PUBLIC_KEY")]
    pub jwt_public_key: Option<PathBuf>,
    /// JWKS file or http(s) URL; keys are chosen by `kid` and reloaded every 10 minutes.
    #[arg(long, env = "GATEWAY_JWT_JWKS")]
    pub jwt_jwks: Option<String>,
    /// Required `iss` of tokens.
    #[arg(long, env = "GATEWAY_JWT_ISSUER")]
    pub jwt_issuer: Option<String>,
    /// Required `aud` of tokens.
    #[arg(long, env = "GATEWAY_JWT_AUDIENCE")]
    pub jwt_audience: Option<String>,
    /// Clock skew tolerated on a token's exp, nbf and iat (s). A token is honoured until exp
    /// plus this: requests are accepted and live streams (SSE, long-polls) end by then.
    #[arg(long, env = "GATEWAY_JWT_LEEWAY_S", default_value_t = crate::auth::token::DEFAULT_LEEWAY_SECS)]
    pub jwt_leeway_s: u64,
    /// Let shared caches store answers to authenticated requests (`public`, `s-maxage`).
    /// Only behind a cache that keys on the Authorization header, like the chart's nginx
    /// tier; otherwise such answers are `private`, since a CDN that ignores `Vary` would
    /// hand one caller's rows to another.
    #[arg(long, env = "GATEWAY_SHARED_CACHE_BY_CALLER")]
    pub shared_cache_by_caller: bool,
    /// Origins browsers may call from, comma-separated; `*` allows any (without credentials).
    #[arg(long, env = "GATEWAY_CORS_ORIGINS", value_delimiter = ',', default_value = "*")]
    pub cors_origins: Vec<String>,
    /// WAL our slot may hold on the server before the budget acts (e.g. 512MB, 1GB, 2GiB):
    /// at half it warns, at three quarters new shapes wait, at the full budget
    /// `--wal-budget-action` applies.
    #[arg(long, env = "GATEWAY_MAX_RETAINED_WAL", default_value = "1GB", value_parser = parse_bytes)]
    pub max_retained_wal: u64,
    /// At the full WAL budget: `stop` (exit with an error, keeping the slot and the logs) or
    /// `recreate-slot` (drop the slot and start a new one; every shape is refetched).
    #[arg(long, env = "GATEWAY_WAL_BUDGET_ACTION", value_enum, default_value = "stop")]
    pub wal_budget_action: BudgetAction,
    /// Seconds without a transaction after which the gateway writes a heartbeat to the WAL
    /// (`pg_logical_emit_message`), so its slot keeps moving on a quiet database.
    #[arg(long, env = "GATEWAY_HEARTBEAT_S", default_value_t = 60)]
    pub heartbeat_s: u64,
    /// New shapes whose snapshot may run at once; past it, creating one answers 503 with
    /// `retry-after` (existing shapes are served as usual). Also the most PostgreSQL
    /// sessions kept open for snapshots, reused from one new shape to the next.
    #[arg(long, env = "GATEWAY_MAX_CONCURRENT_SNAPSHOTS", default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_concurrent_snapshots: u32,
    /// Live requests (long-polls and SSE streams) held at once; past it, 503 with `retry-after`.
    #[arg(long, env = "GATEWAY_MAX_LIVE_CONNECTIONS", default_value_t = 50_000, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_live_connections: u32,
    /// Shapes one table may have; past it, creating another answers 429.
    #[arg(long, env = "GATEWAY_MAX_SHAPES_PER_TABLE", default_value_t = 50_000, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_shapes_per_table: u32,
    /// Shapes of one table one scope may have (the table's rule scope bound to a caller's
    /// claims: a tenant, a user); past it, creating another answers 429. Keep it well under
    /// --max-shapes-per-table, so no tenant can use up a table's shapes.
    #[arg(long, env = "GATEWAY_MAX_SHAPES_PER_SCOPE", default_value_t = 1_000, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_shapes_per_scope: u32,
    /// Log lines as `text` (for people) or `json` (one object per line, for collectors).
    #[arg(long, env = "GATEWAY_LOG_FORMAT", value_enum, default_value = "text")]
    pub log_format: LogFormat,
    /// Print the effective settings (flags > environment > config file > defaults, secrets
    /// redacted) and exit.
    #[arg(long)]
    pub print_config: bool,
    /// The `[[table]]` access rules of the config file.
    #[arg(skip)]
    pub rules: Vec<TableRule>,
    /// The site served at `/demo/` (`gateway demo` sets it).
    #[arg(skip)]
    pub demo: Option<std::sync::Arc<crate::demo::site::DemoSite>>,
}

impl ServeConfig {
    pub fn long_poll_timeout(&self) -> Duration {
        Duration::from_millis(self.long_poll_timeout_ms)
    }

    pub fn sse_timeout(&self) -> Duration {
        Duration::from_secs(self.sse_timeout_s)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config file {path}: {problem}")]
    File { path: String, problem: String },
}

/// What a config file holds.
#[derive(Debug, Default)]
pub struct ConfigFile {
    /// `serve` settings by flag name, as the flag's text value.
    pub settings: Vec<(String, String)>,
    pub rules: Vec<TableRule>,
}

impl ConfigFile {
    /// Reads and checks a config file: every key must be a `serve` flag or `table`.
    pub fn read(path: &Path) -> Result<ConfigFile, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError::File { path: path.display().to_string(), problem: e.to_string() })?;
        ConfigFile::parse(&text, &path.display().to_string())
    }

    /// Checks a config file's text; `origin` names it in errors.
    pub fn parse(text: &str, origin: &str) -> Result<ConfigFile, ConfigError> {
        let fail = |problem: String| ConfigError::File { path: origin.to_string(), problem };
        let mut doc: toml::Table = toml::from_str(text).map_err(|e| fail(e.to_string()))?;
        let rules = match doc.remove("table") {
            None => Vec::new(),
            Some(t) => t.try_into().map_err(|e: toml::de::Error| fail(format!("[[table]]: {}", e.message())))?,
        };
        let known = serve_flags();
        let mut settings = Vec::new();
        for (key, value) in doc {
            let name = key.replace('_', "-");
            if !known.contains(&name) || name == "config" {
                return Err(fail(format!(
                    "unknown setting {key:?}; settings are the serve flags: {}",
                    known.join(", ")
                )));
            }
            let text = match value {
                toml::Value::String(s) => s,
                toml::Value::Integer(i) => i.to_string(),
                toml::Value::Boolean(b) => b.to_string(),
                toml::Value::Array(items) => items
                    .iter()
                    .map(|v| v.as_str().map(str::to_string).unwrap_or_else(|| v.to_string()))
                    .collect::<Vec<_>>()
                    .join(","),
                other => return Err(fail(format!("{key}: unsupported value {other}"))),
            };
            settings.push((name, text));
        }
        Ok(ConfigFile { settings, rules })
    }

    /// The `serve` command with this file's settings as defaults: flags and environment
    /// variables still win.
    pub fn apply(&self, mut serve: clap::Command) -> clap::Command {
        for (name, value) in &self.settings {
            let id = serve.get_arguments().find(|a| a.get_long() == Some(name.as_str())).map(|a| a.get_id().clone());
            if let Some(id) = id {
                let value = value.clone();
                serve = serve.mut_arg(id, |a| a.default_value(value));
            }
        }
        serve
    }
}

/// Settings whose values are never printed.
const SECRETS: &[&str] = &["jwt-secret"];

/// The effective settings as a config file (TOML), each with where its value came from;
/// secrets and the database password redacted.
pub fn effective(matches: &clap::ArgMatches, file: Option<&ConfigFile>, rules: &[TableRule]) -> String {
    use clap::Args;
    use clap::parser::ValueSource;
    let mut out = String::new();
    for arg in ServeConfig::augment_args(clap::Command::new("serve")).get_arguments() {
        let (Some(long), id) = (arg.get_long(), arg.get_id().as_str()) else { continue };
        if ["config", "print-config"].contains(&long) {
            continue;
        }
        let Some(values) = matches.get_raw(id) else { continue };
        let text: Vec<String> = values.map(|v| v.to_string_lossy().into_owned()).collect();
        let mut value = text.join(",");
        if SECRETS.contains(&long) {
            value = "<redacted>".into();
        } else if long == "database-url" {
            value = redact_password(&value);
        }
        let in_file = file.is_some_and(|f| f.settings.iter().any(|(k, _)| k == long));
        let source = match matches.value_source(id) {
            Some(ValueSource::CommandLine) => "flag",
            Some(ValueSource::EnvVariable) => "environment",
            _ if in_file => "config file",
            _ => "default",
        };
        let key = long.replace('-', "_");
        out.push_str(&format!("{key} = {}  # {source}\n", toml::Value::String(value)));
    }
    for rule in rules {
        let table = toml::Table::try_from(rule).unwrap_or_default();
        out.push_str(&format!("\n[[table]]\n{table}"));
    }
    out
}

/// A connection URL with its password replaced.
fn redact_password(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else { return url.to_string() };
    let Some((userinfo, host)) = rest.rsplit_once('@') else { return url.to_string() };
    match userinfo.split_once(':') {
        Some((user, _)) => format!("{scheme}://{user}:<redacted>@{host}"),
        None => url.to_string(),
    }
}

/// The prefix of every slot the gateway creates.
pub const SLOT_PREFIX: &str = "gateway";

/// A slot name PostgreSQL accepts (lower-case letters, digits, `_`; at most 63) that
/// starts with [`SLOT_PREFIX`].
pub fn parse_slot_name(text: &str) -> Result<String, String> {
    let valid = text.len() <= 63 && text.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    if !valid {
        return Err(format!("{text:?}: slot names are lower-case letters, digits and _, at most 63"));
    }
    if !text.starts_with(SLOT_PREFIX) {
        return Err(format!(
            "{text:?} must start with {SLOT_PREFIX:?} (e.g. {SLOT_PREFIX}_{text}), so the gateway only ever touches its own slots"
        ));
    }
    Ok(text.to_string())
}

/// A size in bytes: a number with an optional unit, `kB`/`MB`/`GB`/`TB` (1024-based, as
/// PostgreSQL reads them) or `KiB`/`MiB`/`GiB`/`TiB`.
pub fn parse_bytes(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    let n: u64 = number.parse().map_err(|_| format!("{text:?} is not a size; write e.g. 512MB or 2GB"))?;
    let shift = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "kb" | "kib" => 10,
        "mb" | "mib" => 20,
        "gb" | "gib" => 30,
        "tb" | "tib" => 40,
        other => return Err(format!("unknown unit {other:?} in {text:?}; use kB, MB, GB or TB")),
    };
    n.checked_mul(1 << shift).ok_or_else(|| format!("{text:?} is too large"))
}

/// The long names of `serve`'s flags.
fn serve_flags() -> Vec<String> {
    use clap::Args;
    ServeConfig::augment_args(clap::Command::new("serve"))
        .get_arguments()
        .filter_map(|a| a.get_long().map(str::to_string))
        .collect()
}

/// `--config FILE` (or `GATEWAY_CONFIG`) from the raw arguments, before clap parses them.
pub fn config_path(args: &[OsString]) -> Option<PathBuf> {
    let mut it = args.iter().map(|a| a.to_string_lossy());
    while let Some(a) = it.next() {
        if a == "--config" {
            return it.next().map(|p| PathBuf::from(p.as_ref()));
        }
        if let Some(p) = a.strip_prefix("--config=") {
            return Some(PathBuf::from(p));
        }
    }
    std::env::var_os("GATEWAY_CONFIG").map(PathBuf::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(redact_password("postgres://app:s3cr@t@db:5432/x"), "postgres://app:<redacted>@db:5432/x");
        assert_eq!(redact_password("postgres://app@db/x"), "postgres://app@db/x");
    }

    #[test]
    fn slot_names_carry_the_prefix() {
        assert_eq!(parse_slot_name("gateway_eu").as_deref(), Ok("gateway_eu"));
        assert!(parse_slot_name("debezium").unwrap_err().contains("must start with \"gateway\""));
        assert!(parse_slot_name("Gateway-1").unwrap_err().contains("lower-case"));
    }

    #[test]
    fn sizes_read_like_postgresql_settings() {
        assert_eq!(parse_bytes("1GB"), Ok(1 << 30));
        assert_eq!(parse_bytes("512 MiB"), Ok(512 << 20));
        assert_eq!(parse_bytes("4096"), Ok(4096));
        assert!(parse_bytes("1 parsec").unwrap_err().contains("unknown unit"));
        assert!(parse_bytes("lots").unwrap_err().contains("not a size"));
    }

    #[test]
    fn a_config_file_holds_settings_and_rules() {
        let dir = std::env::temp_dir().join(format!("gateway-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("gateway.toml");
        std::fs::write(
            &path,
            "listen = \"127.0.0.1:4000\"\nlong_poll_timeout_ms = 5000\ncors-origins = [\"https://a\", \"https://b\"]\n\n[[table]]\nname = \"public.todos\"\nscope = \"org_id = :org_id\"\n",
        )
        .unwrap();
        let file = ConfigFile::read(&path).unwrap();
        assert_eq!(file.rules.len(), 1);
        assert!(file.settings.contains(&("long-poll-timeout-ms".into(), "5000".into())));
        assert!(file.settings.contains(&("cors-origins".into(), "https://a,https://b".into())));
        std::fs::write(&path, "lisen = 1").unwrap();
        assert!(ConfigFile::read(&path).unwrap_err().to_string().contains("unknown setting \"lisen\""));
        std::fs::write(&path, "[[table]]\nname = \"t\"\nscop = \"x\"").unwrap();
        assert!(ConfigFile::read(&path).unwrap_err().to_string().contains("[[table]]"));
        std::fs::remove_dir_all(dir).unwrap();
    }
}
