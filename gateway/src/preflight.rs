//! `gateway check-db`: everything the gateway needs from PostgreSQL, checked up front. Each
//! problem says what is wrong, why it matters and the SQL or setting that fixes it.
//! `serve` runs the same checks and refuses to start on a blocker.

use std::fmt;

use shapes::table::{TableName, quote_ident};
use tokio_postgres::Client;

use crate::config::ServeConfig;
use crate::db::DbError;

/// The oldest PostgreSQL the gateway supports.
const MIN_SERVER_VERSION: i32 = 140_000;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Severity {
    /// Fine; said so the report shows what was checked.
    Ok,
    /// Works, with a risk or a limit worth knowing.
    Warning,
    /// The gateway cannot run until this is fixed.
    Blocker,
}

#[derive(Clone, Debug)]
pub struct Finding {
    pub severity: Severity,
    /// What was checked and what was found.
    pub message: String,
    /// Why it matters (problems only).
    pub why: Option<String>,
    /// The SQL or setting that fixes it.
    pub fix: Option<String>,
}

impl Finding {
    fn ok(message: impl Into<String>) -> Finding {
        Finding { severity: Severity::Ok, message: message.into(), why: None, fix: None }
    }

    fn problem(severity: Severity, message: impl Into<String>, why: &str, fix: impl Into<String>) -> Finding {
        Finding { severity, message: message.into(), why: Some(why.to_string()), fix: Some(fix.into()) }
    }
}

#[derive(Clone, Debug, Default)]
pub struct Report {
    pub findings: Vec<Finding>,
}

impl Report {
    pub fn blockers(&self) -> impl Iterator<Item = &Finding> {
        self.findings.iter().filter(|f| f.severity == Severity::Blocker)
    }

    /// The same report without what is fine or only a warning.
    pub fn only_blockers(&self) -> Report {
        Report { findings: self.blockers().cloned().collect() }
    }

    pub fn has_blockers(&self) -> bool {
        self.blockers().next().is_some()
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for finding in &self.findings {
            let mark = match finding.severity {
                Severity::Ok => "ok     ",
                Severity::Warning => "WARNING",
                Severity::Blocker => "BLOCKER",
            };
            writeln!(f, "{mark} {}", finding.message)?;
            if let Some(why) = &finding.why {
                writeln!(f, "        why: {why}")?;
            }
            if let Some(fix) = &finding.fix {
                writeln!(f, "        fix: {fix}")?;
            }
        }
        let blockers = self.blockers().count();
        let warnings = self.findings.iter().filter(|f| f.severity == Severity::Warning).count();
        write!(f, "{blockers} blocker(s), {warnings} warning(s)")
    }
}

/// Connects to `cfg`'s database and checks it.
pub async fn run(cfg: &ServeConfig) -> Result<Report, DbError> {
    let client = crate::db::connect(&crate::db::parse_url(&cfg.database_url)?).await?;
    check(cfg, &client).await
}

/// Runs every check against the database `cfg` names.
pub async fn check(cfg: &ServeConfig, client: &Client) -> Result<Report, DbError> {
    let mut report = Report::default();
    let out = &mut report.findings;
    server(client, out).await?;
    let role = role(client, out).await?;
    publication(client, &cfg.publication, &role, out).await?;
    let mut tables: Vec<String> = cfg.rules.iter().map(|r| r.name.clone()).collect();
    tables.sort();
    tables.dedup();
    for name in &tables {
        table(client, name, &cfg.publication, &role, out).await?;
    }
    slot(client, &cfg.slot, out).await?;
    ledger(client, &role, out).await?;
    Ok(report)
}

async fn server(client: &Client, out: &mut Vec<Finding>) -> Result<(), DbError> {
    let r = client
        .query_one(
            "select current_setting('server_version_num')::int, current_setting('server_version'),
                    current_setting('wal_level'),
                    current_setting('max_replication_slots')::int, (select count(*)::int from pg_replication_slots),
                    current_setting('max_wal_senders')::int, (select count(*)::int from pg_stat_replication),
                    current_setting('max_slot_wal_keep_size')",
            &[],
        )
        .await?;
    let (num, version, wal_level): (i32, String, String) = (r.get(0), r.get(1), r.get(2));
    if num < MIN_SERVER_VERSION {
        out.push(Finding::problem(
            Severity::Blocker,
            format!("PostgreSQL {version}"),
            "the gateway needs PostgreSQL 14 or newer (pgoutput protocol 2, pg_current_xact_id)",
            "upgrade PostgreSQL to 14 or newer",
        ));
    } else {
        out.push(Finding::ok(format!("PostgreSQL {version}")));
    }
    if wal_level == "logical" {
        out.push(Finding::ok("wal_level = logical"));
    } else {
        out.push(Finding::problem(
            Severity::Blocker,
            format!("wal_level = {wal_level}"),
            "logical replication, which the gateway tails, needs wal_level = logical",
            "ALTER SYSTEM SET wal_level = logical; then restart PostgreSQL",
        ));
    }
    let (slots_max, slots_used, senders_max, senders_used): (i32, i32, i32, i32) =
        (r.get(3), r.get(4), r.get(5), r.get(6));
    let headroom = |what: &str, setting: &str, used: i32, max: i32| {
        if used < max {
            Finding::ok(format!("{what}: {used} of {setting} = {max} in use"))
        } else {
            Finding::problem(
                Severity::Blocker,
                format!("{what}: all {max} in use"),
                "the gateway needs one for itself",
                format!("ALTER SYSTEM SET {setting} = {}; then restart PostgreSQL", max + 4),
            )
        }
    };
    out.push(headroom("replication slots", "max_replication_slots", slots_used, slots_max));
    out.push(headroom("WAL senders", "max_wal_senders", senders_used, senders_max));
    let keep: String = r.get(7);
    if keep == "-1" {
        out.push(Finding::problem(
            Severity::Warning,
            "max_slot_wal_keep_size is unlimited",
            "a slot whose consumer stalls keeps WAL until the disk fills; the gateway's --max-retained-wal guards its own slot, and a server limit is the backstop",
            "ALTER SYSTEM SET max_slot_wal_keep_size = '10GB'; SELECT pg_reload_conf();  -- more than --max-retained-wal",
        ));
    } else {
        out.push(Finding::ok(format!("max_slot_wal_keep_size = {keep}")));
    }
    Ok(())
}

/// What the gateway's role may do.
struct Role {
    name: String,
    superuser: bool,
    may_create_in_db: bool,
}

async fn role(client: &Client, out: &mut Vec<Finding>) -> Result<Role, DbError> {
    let r = client
        .query_one(
            "select current_user::text, rolsuper, rolreplication, has_database_privilege(current_database(), 'CREATE')
             from pg_roles where rolname = current_user",
            &[],
        )
        .await?;
    let role = Role { name: r.get(0), superuser: r.get(1), may_create_in_db: r.get(3) };
    let replication: bool = r.get(2);
    if role.superuser || replication {
        out.push(Finding::ok(format!("role {} may open replication connections", role.name)));
    } else {
        out.push(Finding::problem(
            Severity::Blocker,
            format!("role {} lacks REPLICATION", role.name),
            "the gateway streams changes over a replication connection",
            format!("ALTER ROLE {} WITH REPLICATION;  -- or run sql/setup.sql", quote_ident(&role.name)),
        ));
    }
    Ok(role)
}

async fn publication(client: &Client, name: &str, role: &Role, out: &mut Vec<Finding>) -> Result<(), DbError> {
    let exists = client.query_opt("select 1 from pg_publication where pubname = $1", &[&name]).await?.is_some();
    if exists {
        out.push(Finding::ok(format!("publication {name:?} exists")));
    } else if role.superuser || role.may_create_in_db {
        out.push(Finding::ok(format!("publication {name:?} is missing; the gateway creates it")));
    } else {
        out.push(Finding::problem(
            Severity::Blocker,
            format!("publication {name:?} is missing and role {} may not create it", role.name),
            "changes reach the gateway only for tables in its publication",
            format!("CREATE PUBLICATION {};  -- or run sql/setup.sql", quote_ident(name)),
        ));
    }
    Ok(())
}

async fn table(
    client: &Client,
    name: &str,
    publication: &str,
    role: &Role,
    out: &mut Vec<Finding>,
) -> Result<(), DbError> {
    let Ok(table) = TableName::parse(name) else {
        out.push(Finding::problem(
            Severity::Blocker,
            format!("[[table]] {name:?} is not a table name"),
            "rules name tables as schema.table",
            "fix the name in the config file",
        ));
        return Ok(());
    };
    let row = client
        .query_opt(
            "select c.relreplident::text,
                    exists(select 1 from pg_index i where i.indrelid = c.oid and i.indisprimary),
                    has_table_privilege(c.oid, 'SELECT'), pg_has_role(c.relowner, 'USAGE'),
                    exists(select 1 from pg_publication_tables p
                           where p.pubname = $3 and p.schemaname = n.nspname and p.tablename = c.relname)
             from pg_class c join pg_namespace n on n.oid = c.relnamespace
             where n.nspname = $1 and c.relname = $2 and c.relkind in ('r', 'p')",
            &[&table.schema, &table.name, &publication],
        )
        .await?;
    let quoted = table.quoted();
    let Some(r) = row else {
        out.push(Finding::problem(
            Severity::Blocker,
            format!("table {quoted} does not exist"),
            "a [[table]] rule names it",
            "create the table, or fix the rule's name in the config file",
        ));
        return Ok(());
    };
    let (identity, has_pk, may_select, owns, published): (String, bool, bool, bool, bool) =
        (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4));
    let may_alter = role.superuser || owns;
    if !may_select {
        out.push(Finding::problem(
            Severity::Blocker,
            format!("role {} may not read {quoted}", role.name),
            "snapshots read the table",
            format!("GRANT SELECT ON {quoted} TO {};", quote_ident(&role.name)),
        ));
    }
    if published {
        out.push(Finding::ok(format!("{quoted} is in publication {publication:?}")));
    } else if may_alter {
        out.push(Finding::ok(format!("{quoted} is not published yet; the gateway adds it on its first shape")));
    } else {
        out.push(Finding::problem(
            Severity::Blocker,
            format!("{quoted} is not in publication {publication:?} and role {} may not add it", role.name),
            "its changes would never reach the gateway",
            format!("ALTER PUBLICATION {} ADD TABLE {quoted};", quote_ident(publication)),
        ));
    }
    if !has_pk {
        out.push(Finding::problem(
            Severity::Warning,
            format!("{quoted} has no primary key"),
            "rows are keyed by all their columns, and outbox writes address rows by primary key (they are refused)",
            format!("ALTER TABLE {quoted} ADD PRIMARY KEY (…);"),
        ));
    }
    if identity == "f" {
        out.push(Finding::ok(format!("{quoted} has REPLICA IDENTITY FULL")));
    } else if !may_alter {
        out.push(Finding::problem(
            Severity::Warning,
            format!("{quoted} has REPLICA IDENTITY {} and the role may not change it", identity_name(&identity)),
            "updates then carry no old row: filtered shapes cannot see a row leave their filter, and an unchanged TOASTed value is only known when the shape stored the row before",
            format!("ALTER TABLE {quoted} REPLICA IDENTITY FULL;"),
        ));
    } else {
        out.push(Finding::ok(format!(
            "{quoted} has REPLICA IDENTITY {}; the gateway sets FULL when a filtered shape needs old rows",
            identity_name(&identity)
        )));
    }
    Ok(())
}

fn identity_name(code: &str) -> &'static str {
    match code {
        "d" => "DEFAULT",
        "n" => "NOTHING",
        "i" => "USING INDEX",
        _ => "FULL",
    }
}

async fn slot(client: &Client, name: &str, out: &mut Vec<Finding>) -> Result<(), DbError> {
    let Some(info) = crate::replication::slot::describe(client, name).await? else {
        out.push(Finding::ok(format!("replication slot {name:?} is missing; the gateway creates it")));
        return Ok(());
    };
    if !info.is_ours() {
        out.push(Finding::problem(
            Severity::Blocker,
            format!("replication slot {name:?} belongs to another plugin or database"),
            "the gateway only uses a pgoutput slot of this database it created itself",
            "choose another --slot",
        ));
        return Ok(());
    }
    if info.is_lost() {
        out.push(Finding::problem(
            Severity::Blocker,
            format!("replication slot {name:?} is lost (its WAL was removed)"),
            "changes since the gateway last ran are gone; shapes must be refetched",
            format!("SELECT pg_drop_replication_slot('{name}');  -- and start the gateway with an empty --data-dir"),
        ));
        return Ok(());
    }
    let mut message = format!(
        "replication slot {name:?}: wal_status {}, retained WAL {} bytes",
        info.wal_status.as_deref().unwrap_or("unknown"),
        info.retained_wal_bytes
    );
    if let Some(safe) = info.safe_wal_bytes {
        message.push_str(&format!(", {safe} bytes before it is invalidated"));
    }
    match info.active_pid {
        Some(pid) => out.push(Finding::problem(
            Severity::Warning,
            format!("{message}; in use by process {pid}"),
            "another gateway streams from it (or one stopped a moment ago); a gateway started with the same --slot waits as its standby",
            "nothing, for a standby; otherwise give each gateway its own --slot, --publication and --data-dir",
        )),
        None => out.push(Finding::ok(message)),
    }
    Ok(())
}

async fn ledger(client: &Client, role: &Role, out: &mut Vec<Finding>) -> Result<(), DbError> {
    let exists: bool = client.query_one("select to_regclass('gateway.clients') is not null", &[]).await?.get(0);
    if exists {
        out.push(Finding::ok("outbox ledger gateway.clients exists"));
    } else if role.superuser || role.may_create_in_db {
        out.push(Finding::ok("outbox ledger gateway.clients is missing; the gateway creates it"));
    } else {
        out.push(Finding::problem(
            Severity::Warning,
            "outbox ledger gateway.clients is missing and the role may not create it",
            "POST /v1/outbox answers 503 until it exists",
            "run sql/setup.sql as a superuser",
        ));
    }
    Ok(())
}
