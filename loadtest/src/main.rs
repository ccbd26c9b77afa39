//! `loadtest`: measures scoped fan-out. N subscribers over M scopes follow their scope's
//! shape with the shape protocol; a writer commits rows to random scopes; every delivered
//! event is checked (missing, duplicated, foreign) and timed from its send to the client.
//! `run` targets a gateway you started; `local` starts a throwaway PostgreSQL and gateway.

mod args;
mod cpu_limit;
mod local;
mod memberships;
mod official;
mod procfs;
mod record;
mod report;
mod scenario;
mod schema;
mod subscriber;
mod writer;

use clap::Parser;

/// The tester allocates for every event it parses; it should cost the machine it shares with
/// the gateway as little as it can.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(name = "loadtest", version, about = "Load tester for the gateway's scoped fan-out")]
enum Cli {
    /// Against a running gateway and its database.
    Run(args::RunArgs),
    /// Starts its own throwaway PostgreSQL and gateway, then runs.
    Local(args::LocalArgs),
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    gateway::install_tls_provider();
    let outcome = match Cli::parse() {
        Cli::Run(a) => scenario::run(a, None).await,
        Cli::Local(a) => local::run(a).await,
    };
    match outcome {
        Ok(summary) if summary.pass => std::process::ExitCode::SUCCESS,
        Ok(summary) => {
            eprintln!("loadtest: FAILED: {}", summary.failures.join("; "));
            std::process::ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("loadtest: {e}");
            std::process::ExitCode::from(2)
        }
    }
}
