//! `gateway`: wiring only.

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};
use gateway::config::LogFormat;
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
#[command(name = "gateway", version, about = "Postgres-native sync gateway (Electric shape protocol)")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Tail logical replication and serve shapes.
    Serve(Box<gateway::config::ServeConfig>),
    /// Check that the database is ready for the gateway; each problem comes with its fix.
    /// Takes serve's flags and config file. Exit 1 on blockers.
    CheckDb(Box<gateway::config::ServeConfig>),
    /// The gateway's replication slot.
    Slot {
        #[command(subcommand)]
        action: SlotAction,
    },
    /// Start a throwaway PostgreSQL with demo data and serve it (Ctrl-C cleans up).
    Demo {
        #[arg(long, default_value = "127.0.0.1:3000")]
        listen: std::net::SocketAddr,
        /// The client SDK folder (built), whose example app the demo page is.
        #[arg(long, default_value = gateway::demo::SDK_DIR)]
        sdk_dir: std::path::PathBuf,
    },
}

#[derive(Subcommand)]
enum SlotAction {
    /// Drop the slot (stop the gateway first), e.g. when uninstalling. Takes serve's flags
    /// and config file.
    Drop {
        #[command(flatten)]
        cfg: Box<gateway::config::ServeConfig>,
        /// Drop the publication too.
        #[arg(long)]
        drop_publication: bool,
        /// Wait up to this many seconds for a gateway that is stopping to let go of the slot
        /// (as when uninstalling while its pods terminate).
        #[arg(long, default_value_t = 0)]
        wait_s: u64,
    },
}

/// Blocking file reads and batch writes run on at most this many threads, so a crowd of
/// clients catching up queues instead of spawning a thread (and its stack) each.
const MAX_BLOCKING_THREADS: usize = 32;

/// Requests allocate many small, short-lived values (JSON, SQL text, results); glibc's
/// allocator spent about a fifth of the outbox's CPU in a profile, mimalloc far less.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> anyhow::Result<()> {
    gateway::install_tls_provider();
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .max_blocking_threads(MAX_BLOCKING_THREADS)
        .build()?
        .block_on(run())
}

/// Logs go to stderr; stdout is for what commands print for people (the demo's lines).
fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    let logs = tracing_subscriber::fmt().with_writer(std::io::stderr).with_env_filter(filter);
    match format {
        LogFormat::Text => logs.with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr())).init(),
        LogFormat::Json => logs.json().flatten_event(true).init(),
    }
    gateway::telemetry::log_panics();
}

async fn run() -> anyhow::Result<()> {
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let file = gateway::config::config_path(&args).map(|p| gateway::config::ConfigFile::read(&p)).transpose()?;
    let mut command = Cli::command();
    if let Some(file) = &file {
        for name in ["serve", "check-db"] {
            command = command.mut_subcommand(name, |c| file.apply(c));
        }
        command = command.mut_subcommand("slot", |slot| slot.mut_subcommand("drop", |c| file.apply(c)));
    }
    let matches = command.get_matches_from(args);
    let mut cli = Cli::from_arg_matches(&matches)?;
    let cfg = match &mut cli.command {
        Command::Serve(cfg) | Command::CheckDb(cfg) | Command::Slot { action: SlotAction::Drop { cfg, .. } } => {
            Some(cfg)
        }
        Command::Demo { .. } => None,
    };
    init_logging(cfg.as_ref().map_or(LogFormat::Text, |c| c.log_format));
    if let (Some(cfg), Some(file)) = (cfg, &file) {
        cfg.rules = file.rules.clone();
    }
    if let (Command::Serve(cfg), Some(("serve", serve))) = (&cli.command, matches.subcommand())
        && cfg.print_config
    {
        print!("{}", gateway::config::effective(serve, file.as_ref(), &cfg.rules));
        return Ok(());
    }
    let shutdown = CancellationToken::new();
    let signal = shutdown.clone();
    tokio::spawn(async move {
        let mut term =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("signal handler");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {},
            _ = term.recv() => {},
        }
        tracing::info!("shutting down");
        signal.cancel();
    });
    match cli.command {
        Command::Serve(cfg) => gateway::serve(*cfg, shutdown).await?,
        Command::CheckDb(cfg) => {
            let report = gateway::preflight::run(&cfg).await?;
            println!("{report}");
            if report.has_blockers() {
                std::process::exit(1);
            }
        }
        Command::Slot { action: SlotAction::Drop { cfg, drop_publication, wait_s } } => {
            let wait = std::time::Duration::from_secs(wait_s);
            println!("{}", gateway::replication::slot::uninstall(&cfg, drop_publication, wait).await?);
        }
        Command::Demo { listen, sdk_dir } => gateway::demo::run(listen, sdk_dir, shutdown).await?,
    }
    Ok(())
}
