//! Command-line settings.

use std::path::PathBuf;
use std::time::Duration;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    Sse,
    LongPoll,
    /// Half the subscribers on each.
    Mixed,
}

impl Mode {
    pub fn name(self) -> &'static str {
        match self {
            Mode::Sse => "sse",
            Mode::LongPoll => "long-poll",
            Mode::Mixed => "mixed",
        }
    }
}

/// What follows the shapes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Client {
    /// The load tester's own subscribers (the client SDK's protocol state machine).
    Ours,
    /// The official `@electric-sql/client` in Node (scopes scenario; `npm ci` in
    /// `loadtest/official-client` first).
    Official,
}

/// Who sees which rows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Scenario {
    /// Each subscriber's token carries its scope: rule `scope = :scope`.
    Scopes,
    /// Each subscriber is a user who sees the rows of the scopes (projects) they are a member
    /// of, through a subquery on `<table>_members`; memberships change while rows are written.
    Memberships,
}

/// What is measured, wherever the gateway runs.
#[derive(Clone, Debug, clap::Args, serde::Serialize)]
pub struct Load {
    #[arg(long, value_enum, default_value = "scopes")]
    pub scenario: Scenario,
    /// Distinct scopes (one shape each); projects in the memberships scenario.
    #[arg(long, default_value_t = 100)]
    pub scopes: usize,
    /// Subscribers, spread evenly over the scopes; users (one subscriber each) in the
    /// memberships scenario.
    #[arg(long, default_value_t = 1000)]
    pub subscribers: usize,
    /// Rows written per second, each to a random scope.
    #[arg(long, default_value_t = 100.0)]
    pub write_rate: f64,
    /// How long to write, e.g. `60s`, `2m`.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    #[serde(serialize_with = "as_secs")]
    pub duration: Duration,
    #[arg(long, value_enum, default_value = "sse")]
    pub mode: Mode,
    /// Who the subscribers are: ours, or the official client in Node (`sse` or `long-poll`).
    #[arg(long, value_enum, default_value = "ours")]
    pub client: Client,
    /// The scoped table (created when missing).
    #[arg(long, default_value = "loadtest_events")]
    pub table: String,
    /// Its scope column; tokens carry a claim of the same name.
    #[arg(long, default_value = "scope")]
    pub scope_column: String,
    /// Idle SSE connections held besides the subscribers, on a scope that gets no writes
    /// (they must receive nothing): what holding many quiet clients costs.
    #[arg(long, default_value_t = 0)]
    pub idle_connections: usize,
    /// Connect subscribers through this URL (a proxy or cache) instead of the gateway's;
    /// several, comma-separated, take the subscribers in turn (gateways sharing a data dir).
    #[arg(long)]
    pub through: Option<String>,
    /// Where to write summary.json and report.html (default: loadtest-results/<time>).
    #[arg(long)]
    #[serde(skip)]
    pub out: Option<PathBuf>,
    /// Memberships scenario: the projects each user is a member of at the start.
    #[arg(long, default_value_t = 5)]
    pub memberships_per_user: usize,
    /// Memberships scenario: membership changes a second (half joins, half leaves), each its
    /// own transaction, beside the row writes.
    #[arg(long, default_value_t = 50.0)]
    pub membership_rate: f64,
    /// Most seconds to wait after the writes for the last events.
    #[arg(long, default_value = "15s", value_parser = parse_duration)]
    #[serde(serialize_with = "as_secs")]
    pub drain: Duration,
}

#[derive(Clone, Debug, clap::Args)]
pub struct RunArgs {
    /// The gateway's base URL (loopback or the project's own test hosts).
    #[arg(long)]
    pub gateway: String,
    /// The gateway's database, for the writer.
    #[arg(long)]
    pub database_url: String,
    /// The gateway's HS256 secret, to mint one token per scope. The gateway needs a rule
    /// `[[table]] name = "<table>"  scope = "<scope_column> = :<scope_column>"`.
    #[arg(long, env = "LOADTEST_JWT_SECRET")]
    pub jwt_secret: String,
    #[command(flatten)]
    pub load: Load,
}

#[derive(Clone, Debug, clap::Args)]
pub struct LocalArgs {
    /// The gateway binary (default: the one beside this binary).
    #[arg(long)]
    pub gateway_bin: Option<PathBuf>,
    /// Gateway processes on one data dir: one streams, the others serve reads of its shapes;
    /// subscribers are spread over all of them.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=16))]
    pub gateways: u64,
    /// CPUs each gateway process may use (e.g. 0.25), as a pod's CPU limit: each gets its
    /// own cgroup quota, so several gateways on one machine each bring their own share.
    #[arg(long)]
    pub gateway_cpu: Option<f64>,
    #[command(flatten)]
    pub load: Load,
}

/// `90`, `90s`, `2m`, `500ms`.
fn parse_duration(s: &str) -> Result<Duration, String> {
    let (number, unit) = s.find(|c: char| !c.is_ascii_digit() && c != '.').map_or((s, "s"), |i| s.split_at(i));
    let n: f64 = number.parse().map_err(|_| format!("{s:?} is not a duration: use e.g. 30s, 2m or 500ms"))?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" => n,
        "m" => n * 60.0,
        _ => return Err(format!("{s:?}: unknown unit {unit:?}; use ms, s or m")),
    };
    Ok(Duration::from_secs_f64(secs))
}

fn as_secs<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_as_people_write_them() {
        assert_eq!(parse_duration("60s"), Ok(Duration::from_secs(60)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("10"), Ok(Duration::from_secs(10)));
        assert!(parse_duration("1h").is_err() && parse_duration("fast").is_err());
    }
}
