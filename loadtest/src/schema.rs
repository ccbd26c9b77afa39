//! The tables a run writes to and the gateway rule that scopes them, per scenario.

use crate::args::{Load, Scenario};

/// Rows each project starts with in the memberships scenario, so every join moves rows in.
pub const SEED_ROWS_PER_PROJECT: usize = 5;

/// The memberships table beside `table`.
pub fn members_table(load: &Load) -> String {
    format!("{}_members", load.table)
}

/// The gateway's rule for the scenario (TOML), which `local` writes and `run` expects.
pub fn rule(load: &Load) -> String {
    let (table, col) = (&load.table, &load.scope_column);
    let scope = match load.scenario {
        Scenario::Scopes => format!("{col} = :{col}"),
        Scenario::Memberships => {
            format!("{col} IN (SELECT {col} FROM {} WHERE user_id = :sub)", members_table(load))
        }
    };
    format!("[[table]]\nname = \"{table}\"\nscope = \"{scope}\"\n")
}

/// Creates the tables when missing (the memberships table too, and the projects' seed rows
/// once, in that scenario); returns the first id the run will write.
pub async fn prepare(db: &tokio_postgres::Client, load: &Load) -> Result<u64, tokio_postgres::Error> {
    let (table, col) = (&load.table, &load.scope_column);
    db.batch_execute(&format!(
        "create table if not exists {table} (id bigserial primary key, {col} text not null, sent_us int8 not null, payload text)"
    ))
    .await?;
    if load.scenario == Scenario::Memberships {
        // The primary key covers both columns: a deleted membership's WAL record names its
        // project, which is what the gateway's kept sets need.
        db.batch_execute(&format!(
            "create table if not exists {members} (user_id text not null, {col} text not null, primary key (user_id, {col}));
             insert into {table} ({col}, sent_us, payload)
               select 's' || p, 0, 'seed' from generate_series(0, {last}) p, generate_series(1, {SEED_ROWS_PER_PROJECT})
               where not exists (select from {table} where payload = 'seed');",
            members = members_table(load),
            last = load.scopes.saturating_sub(1),
        ))
        .await?;
    }
    let next: i64 = db.query_one(&format!("select coalesce(max(id), 0) + 1 from {table}"), &[]).await?.get(0);
    Ok(next as u64)
}

/// The scope value of scope `i` (the writer's and the tokens').
pub fn scope_name(i: usize) -> String {
    format!("s{i}")
}

/// The `i` of [`scope_name`]`(i)`.
pub fn scope_index(name: &str) -> Option<usize> {
    name.strip_prefix('s')?.parse().ok()
}

/// The `sub` claim of user `i` (memberships scenario).
pub fn user_name(i: usize) -> String {
    format!("u{i}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        load: Load,
    }

    #[test]
    fn each_scenario_has_its_rule() {
        let load = |args: &[&str]| Cli::parse_from([&["x"], args].concat()).load;
        assert_eq!(rule(&load(&[])), "[[table]]\nname = \"loadtest_events\"\nscope = \"scope = :scope\"\n");
        assert!(
            rule(&load(&["--scenario", "memberships"]))
                .contains("scope IN (SELECT scope FROM loadtest_events_members WHERE user_id = :sub)")
        );
    }
}
