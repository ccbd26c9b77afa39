//! The gateway: how changes move from PostgreSQL to clients.
//!
//! One change travels: `replication::stream` (pgoutput) → `replication::decode` →
//! `replication::txn` (whole transactions, bounded channel) → `fanout` (route, encode,
//! append, group fsync, publish, acknowledge) → `http::shape` / `http::sse` (read the log
//! from the client's offset and send the stored bytes).

pub mod auth;
pub mod config;
pub mod data_dir;
pub mod db;
pub mod demo;
pub mod devdb;
pub mod fair_queue;
pub mod fanout;
pub mod follow;
pub mod http;
pub mod limits;
pub mod log_lines;
pub mod outbox;
pub mod preflight;
pub mod progress;
#[cfg(test)]
mod properties;
pub mod replication;
pub mod sets;
pub mod shape_set;
pub mod snapshot;
pub mod status;
pub mod tasks;
pub mod telemetry;

use std::sync::Arc;

use shapes::journal::Journal;
use shapes::offset::Lsn;
use shapes::where_clause::BindOptions;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::config::{AuthMode, ServeConfig};
use crate::data_dir::DataDir;
use crate::fanout::registry::Registry;
use crate::http::{AppState, HttpSettings};
use crate::progress::AckState;
use crate::replication::stream::{Candidate, Leadership, StreamSettings};
use crate::replication::{ReplicationError, slot};
use crate::shape_set::ShapeSet;
use crate::shape_set::admission::ShapeLimits;
use crate::status::Status;
use crate::tasks::Tasks;

/// How long the server may take to release our slot after the stream stopped.
const SLOT_RELEASE: std::time::Duration = std::time::Duration::from_secs(30);
/// How long a gateway that just became the leader waits for the previous one to let go of
/// a shared data dir (it finishes at most one batch once it lost the slot).
const DATA_DIR_RELEASE: std::time::Duration = std::time::Duration::from_secs(30);
/// How often a standby asks for the leader lock.
const STANDBY_POLL: std::time::Duration = std::time::Duration::from_secs(1);
/// PostgreSQL sessions applying outbox batches at once; more batches wait for one.
const OUTBOX_CONNECTIONS: usize = 16;
/// How long shutdown waits for background tasks (snapshots, SSE producers) to end.
pub(crate) const TASKS_GRACE: std::time::Duration = std::time::Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("--auth none is for development only and needs a loopback --listen address (got {0})")]
    NoneAuthNotLoopback(std::net::SocketAddr),
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    #[error(transparent)]
    Keys(#[from] auth::keys::KeyError),
    #[error(transparent)]
    Rule(#[from] auth::rules::RuleError),
    #[error(transparent)]
    Db(#[from] db::DbError),
    #[error(transparent)]
    Replication(#[from] ReplicationError),
    #[error("data dir {path}: {source}")]
    DataDir { path: String, source: std::io::Error },
    #[error(transparent)]
    DataDirLock(#[from] data_dir::DataDirError),
    #[error("cannot listen on {addr}: {source}")]
    Listen { addr: std::net::SocketAddr, source: std::io::Error },
    #[error("shape storage failed: {0}")]
    Storage(std::io::Error),
    #[error("the database is not ready for the gateway (`gateway check-db` shows the same):\n{0}")]
    Preflight(preflight::Report),
    #[error(transparent)]
    WalBudget(#[from] replication::monitor::BudgetError),
    #[error("internal task failed: {0}")]
    Crashed(String),
}

/// How one run of the server ended without an error.
enum Ended {
    /// Shut down on request.
    Shutdown,
    /// The WAL budget was exceeded and `--wal-budget-action recreate-slot` is set.
    RecreateSlot,
    /// Another gateway took the slot over while this one reconnected: stand by.
    LostLeadership,
}

/// Installs ring as the process's TLS provider (JWKS over https). Call before building
/// any HTTP client; calling it again is harmless.
pub fn install_tls_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// The token verifier and access rules; every rule is checked against its table, so a
/// broken rule stops the gateway at start, naming the rule and the problem.
async fn build_auth(
    cfg: &ServeConfig,
    client: &tokio_postgres::Client,
    bind: BindOptions,
) -> Result<auth::Auth, StartError> {
    if cfg.auth == AuthMode::None {
        return Ok(auth::Auth::none());
    }
    let keys = auth::keys::KeySource::from_settings(
        cfg.jwt_secret.as_deref(),
        cfg.jwt_public_key.as_ref(),
        cfg.jwt_jwks.as_deref(),
    )?;
    if let auth::keys::KeySource::Jwks(jwks) = &keys {
        let count = jwks.load().await?;
        tracing::info!(keys = count, "JWKS loaded");
    }
    let rules = auth::rules::AccessRules::compile(&cfg.rules)?;
    for (index, rule) in cfg.rules.iter().enumerate() {
        let fail = |problem: String| auth::rules::RuleError { index: index + 1, name: rule.name.clone(), problem };
        let table = shapes::table::TableName::parse(&rule.name).map_err(&fail)?;
        let schema = db::table_schema(client, &table)
            .await?
            .ok_or_else(|| fail(format!("table {} does not exist", table.quoted())))?;
        // A scope's subqueries name other tables: read each, then check again.
        let mut catalog = Vec::new();
        loop {
            match rules.check_table(&schema, &catalog, bind) {
                Ok(()) => break,
                Err(auth::rules::RuleCheck::Invalid(problem)) => return Err(fail(problem).into()),
                Err(auth::rules::RuleCheck::NeedsTable(inner)) => catalog.push(
                    db::table_schema(client, &inner)
                        .await?
                        .ok_or_else(|| fail(format!("scope: table {} does not exist", inner.quoted())))?,
                ),
            }
        }
    }
    if cfg.rules.is_empty() {
        tracing::warn!("--auth jwt without [[table]] rules: only admin tokens can read anything");
    }
    let verifier = auth::token::Verifier::new(keys, cfg.jwt_issuer.clone(), cfg.jwt_audience.clone(), cfg.jwt_leeway_s);
    Ok(auth::Auth::jwt(verifier, rules))
}

/// The outbox's connection pool, with its ledger created when missing and allowed.
async fn build_outbox(db_cfg: &tokio_postgres::Config, bind: BindOptions) -> Result<outbox::apply::Outbox, StartError> {
    let manager = deadpool_postgres::Manager::from_config(
        db_cfg.clone(),
        tokio_postgres::NoTls,
        deadpool_postgres::ManagerConfig { recycling_method: deadpool_postgres::RecyclingMethod::Fast },
    );
    let pool = deadpool_postgres::Pool::builder(manager)
        .max_size(OUTBOX_CONNECTIONS)
        .build()
        .map_err(|e| StartError::Crashed(format!("outbox pool: {e}")))?;
    let client = db::connect(db_cfg).await?;
    if let Err(problem) = outbox::ledger::ensure(&client).await {
        tracing::warn!(%problem, "POST /v1/outbox answers 503 until the ledger exists");
    }
    Ok(outbox::apply::Outbox { pool, tables: Default::default(), bind })
}

/// Runs `gateway serve` until `shutdown` is cancelled or a fatal error.
pub async fn serve(cfg: ServeConfig, shutdown: CancellationToken) -> Result<(), StartError> {
    // Once bound, the address stays: a standby taking over, or a run after the slot was
    // recreated, answers where clients already connect (the port given for `--listen …:0`).
    let mut listen = cfg.listen;
    loop {
        match serve_once(&cfg, &mut listen, shutdown.clone()).await? {
            Ended::Shutdown => return Ok(()),
            Ended::LostLeadership => {
                tracing::warn!(slot = %cfg.slot, "another gateway took over the slot; standing by")
            }
            Ended::RecreateSlot => {
                // Everything that used the slot has stopped: drop it; the next run creates
                // a new one at the current WAL position and rotates every shape.
                let client = db::connect(&db::parse_url(&cfg.database_url)?).await?;
                slot::drop_slot(&client, &cfg.slot, SLOT_RELEASE).await?;
                tracing::warn!(slot = %cfg.slot, "dropped the replication slot to release WAL; every shape will be refetched");
            }
        }
    }
}

async fn serve_once(
    cfg: &ServeConfig,
    listen: &mut std::net::SocketAddr,
    shutdown: CancellationToken,
) -> Result<Ended, StartError> {
    match cfg.auth {
        AuthMode::None if !cfg.listen.ip().is_loopback() => {
            return Err(StartError::NoneAuthNotLoopback(cfg.listen));
        }
        AuthMode::None => {
            tracing::warn!("--auth none: every published table is readable without a token (development only)")
        }
        AuthMode::Jwt => {}
    }
    let metrics = telemetry::recorder();
    let open_files = limits::raise_open_files();
    tracing::info!(open_files = ?open_files, "open-files limit");
    let db_cfg = db::parse_url(&cfg.database_url)?;
    let client = db::connect(&db_cfg).await?;
    let report = preflight::check(cfg, &client).await?;
    for finding in report.findings.iter().filter(|f| f.severity == preflight::Severity::Warning) {
        tracing::warn!(fix = finding.fix.as_deref().unwrap_or_default(), "{}", finding.message);
    }
    if report.has_blockers() {
        return Err(StartError::Preflight(report.only_blockers()));
    }
    let budget = replication::queue::MemoryBudget::of(cfg.txn_memory as usize);
    let stream_settings = StreamSettings {
        db: db_cfg.clone(),
        slot: cfg.slot.clone(),
        publication: cfg.publication.clone(),
        part_bytes: budget.part,
    };
    let Some(leadership) = lead(cfg, listen, &stream_settings, &shutdown).await? else {
        return Ok(Ended::Shutdown);
    };
    metrics::gauge!("gateway_leader").set(1.0);
    // The data dir is ours before anything is created in PostgreSQL: a gateway pointed at a
    // directory another one uses stops here, leaving no slot behind to hold WAL.
    let data_err = |source| StartError::DataDir { path: cfg.data_dir.display().to_string(), source };
    let data_dir = Arc::new(DataDir::open(&cfg.data_dir, &cfg.slot, DATA_DIR_RELEASE).await?);
    slot::ensure_publication(&client, &cfg.publication).await?;
    // Read after taking the lock: the previous leader may have advanced it until it stopped.
    let slot_state = slot::ensure_slot(&client, &cfg.slot).await?;
    let bind = BindOptions { text_sorts_bytewise: db::text_sorts_bytewise(&client).await? };
    let auth = Arc::new(build_auth(cfg, &client, bind).await?);
    drop(client);

    let acknowledged = data_dir.stored_through.unwrap_or_default();
    // Before any log is opened: what a crash left unsynced in the logs comes back from it.
    let (journal, replayed) = Journal::open(&cfg.data_dir).map_err(data_err)?;
    if replayed.frames > 0 {
        tracing::info!(
            frames = replayed.frames,
            records = replayed.records,
            skipped = replayed.skipped,
            torn = replayed.torn,
            "journal replayed into the shape logs"
        );
    }
    let (jobs_tx, jobs_rx) = mpsc::unbounded_channel();
    let registry =
        Arc::new(Registry::open(&cfg.data_dir, cfg.chunk_bytes, bind, acknowledged, jobs_tx).map_err(data_err)?);
    metrics::gauge!("gateway_shapes").set(registry.len() as f64);
    if let Some(reason) = data_dir.stale_logs(slot_state.confirmed, slot_state.created) {
        // The logs may miss changes before the slot's position: every client refetches.
        if !registry.is_empty() {
            registry.rotate_all(&reason);
        }
        data_dir.record(slot_state.confirmed, slot_state.confirmed).map_err(data_err)?;
    }
    let ack = Arc::new(AckState::new(slot_state.confirmed));
    let status = Arc::new(Status::default());
    let cancel = shutdown.child_token();
    // Background tasks with no result to wait for; shutdown cancels them and waits.
    let tasks = Tasks::new(cancel.clone());

    let (txn_tx, txn_rx) = replication::queue::bounded(budget.queue);
    // The stream stops last, so it can report the position the fan-out ended at.
    let stream_cancel = CancellationToken::new();
    let mut replication = tokio::spawn(replication::stream::run(
        stream_settings,
        leadership,
        txn_tx,
        ack.clone(),
        status.clone(),
        stream_cancel.clone(),
    ));
    // Append descriptors kept open: a quarter of the limit, the rest is for clients.
    let open_writers = (open_files.unwrap_or(1024) / 4).clamp(64, 65_536) as usize;
    let mut fanout = tokio::spawn(fanout::run(
        txn_rx,
        journal,
        registry.clone(),
        ack.clone(),
        status.clone(),
        open_writers,
        budget.batch,
        cancel.clone(),
    ));
    tasks.spawn(progress::record::record_positions(data_dir.clone(), ack.clone(), status.clone()));
    tasks.spawn(sets::run(db_cfg.clone(), registry.clone(), jobs_rx));
    let monitor = replication::monitor::Monitor {
        db: db_cfg.clone(),
        slot: cfg.slot.clone(),
        budget: cfg.max_retained_wal,
        action: cfg.wal_budget_action,
        heartbeat_after: std::time::Duration::from_secs(cfg.heartbeat_s),
        ack: ack.clone(),
        status: status.clone(),
    };
    let mut monitor = tokio::spawn(monitor.run(cancel.clone()));
    tasks.spawn(telemetry::upkeep(metrics, cfg.data_dir.clone()));

    tracing::info!(origins = %cfg.cors_origins.join(","), "browsers may call from");
    let outbox = Arc::new(build_outbox(&db_cfg, bind).await?);
    let shapes = ShapeSet::new(
        registry.clone(),
        db_cfg,
        cfg.publication.clone(),
        status.clone(),
        shape_limits(cfg),
        tasks.clone(),
    )?;
    refresh_keys(&auth, &tasks);
    let settings = http_settings(cfg);
    let state = AppState::new(settings, Arc::new(shapes), ack.clone(), status, auth, outbox, tasks.clone());
    let listener = TcpListener::bind(*listen).await.map_err(|source| StartError::Listen { addr: *listen, source })?;
    *listen = listener.local_addr().unwrap_or(*listen);
    let advertised = advertise_url(cfg, *listen);
    if let Err(e) = data_dir.record_leader(&cfg.data_dir, &advertised) {
        tracing::warn!(error = %e, "could not record where this gateway serves; standbys cannot forward to it");
    }
    tracing::info!(%listen, %advertised, pid = std::process::id(), "serving shapes");
    let mut server = serve_http(listener, http::app(state), cfg, cancel.clone());

    // Whichever ends first decides; the rest are stopped through the shared token.
    let (mut replication_done, mut fanout_done, mut server_done) = (false, false, false);
    let outcome: Result<Ended, StartError> = tokio::select! {
        r = &mut replication => {
            replication_done = true;
            match r {
                Ok(Err(ReplicationError::LostLeadership { .. })) => Ok(Ended::LostLeadership),
                Ok(result) => result.map(|()| Ended::Shutdown).map_err(StartError::from),
                Err(panic) => Err(StartError::Crashed(format!("replication: {panic}"))),
            }
        }
        r = &mut monitor => match r {
            Ok(Ok(())) => Ok(Ended::Shutdown),
            Ok(Err(replication::monitor::BudgetError::Recreate { .. })) => Ok(Ended::RecreateSlot),
            Ok(Err(e)) => Err(e.into()),
            Err(panic) => Err(StartError::Crashed(format!("slot monitor: {panic}"))),
        },
        r = &mut fanout => {
            fanout_done = true;
            match r {
                // Not shutting down: the stream ended and closed the channel; its result decides.
                Ok(Ok(())) if !cancel.is_cancelled() => {
                    replication_done = true;
                    match (&mut replication).await {
                        Ok(result) => result.map(|()| Ended::Shutdown).map_err(StartError::from),
                        Err(panic) => Err(StartError::Crashed(format!("replication: {panic}"))),
                    }
                }
                Ok(result) => result.map(|()| Ended::Shutdown).map_err(StartError::Storage),
                Err(panic) => Err(StartError::Crashed(format!("fan-out: {panic}"))),
            }
        }
        _ = &mut server => {
            server_done = true;
            Ok(Ended::Shutdown)
        }
    };
    cancel.cancel();
    // The fan-out finishes its batch first, so the stream can report the final position.
    if !fanout_done {
        let _ = fanout.await;
    }
    if outcome.is_ok() {
        let registry = registry.clone();
        let _ = tokio::task::spawn_blocking(move || registry.checkpoint_all()).await;
    }
    // What the fan-out made durable is recorded, so the stream may report it at the end.
    if let Err(e) = progress::record::record_now(&data_dir, &ack).await {
        tracing::warn!(error = %e, "could not record the final position; PostgreSQL will resend from the last one");
    }
    stream_cancel.cancel();
    if !replication_done {
        let _ = replication.await;
    }
    if !server_done {
        let _ = server.await;
    }
    let stragglers = tasks.shutdown(TASKS_GRACE).await;
    if stragglers > 0 {
        tracing::warn!(tasks = stragglers, "background tasks still running at shutdown were dropped");
    }
    tracing::info!(flushed = %ack.durable(), "stopped");
    outcome
}

/// The HTTP layer's settings from the flags.
fn http_settings(cfg: &ServeConfig) -> HttpSettings {
    HttpSettings {
        cors: http::Cors::new(&cfg.cors_origins),
        shared_cache_by_caller: cfg.shared_cache_by_caller,
        long_poll_timeout: cfg.long_poll_timeout(),
        sse_timeout: cfg.sse_timeout(),
        sse_keepalive: std::time::Duration::from_secs(21).min(cfg.sse_timeout()),
        cache_catch_up: format!(
            "public, max-age={}, stale-while-revalidate={}",
            cfg.cache_max_age, cfg.cache_stale_age
        ),
        demo: cfg.demo.clone(),
        max_live_connections: cfg.max_live_connections as usize,
    }
}

fn shape_limits(cfg: &ServeConfig) -> ShapeLimits {
    ShapeLimits {
        max_concurrent_snapshots: cfg.max_concurrent_snapshots as usize,
        max_shapes_per_table: cfg.max_shapes_per_table as usize,
        max_shapes_per_scope: cfg.max_shapes_per_scope as usize,
    }
}

/// Keeps a JWKS fresh while `tasks` run.
fn refresh_keys(auth: &Arc<auth::Auth>, tasks: &Tasks) {
    if let Some(auth::keys::KeySource::Jwks(_)) = auth.verifier().map(|v| v.keys()) {
        let auth = auth.clone();
        tasks.spawn(async move {
            if let Some(auth::keys::KeySource::Jwks(jwks)) = auth.verifier().map(|v| v.keys()) {
                jwks.refresh().await;
            }
        });
    }
}

/// Where other gateways reach this one (`--advertise-url`).
fn advertise_url(cfg: &ServeConfig, listen: std::net::SocketAddr) -> String {
    cfg.advertise_url.clone().unwrap_or_else(|| {
        let mut addr = listen;
        if addr.ip().is_unspecified() {
            addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
        }
        format!("http://{addr}")
    })
}

/// Serves `app` on `listener` until `cancel`.
fn serve_http(
    listener: TcpListener,
    app: axum::Router,
    cfg: &ServeConfig,
    cancel: CancellationToken,
) -> tokio::task::JoinHandle<std::io::Result<()>> {
    // Live responses are many small writes: without TCP_NODELAY, Nagle's algorithm holds
    // each one until the client's delayed ACK, adding tens of milliseconds per event.
    let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "TCP_NODELAY not set");
        }
    });
    let listener = http::send_timeout::SendTimeout::new(listener, std::time::Duration::from_secs(cfg.send_timeout_s));
    tokio::spawn(async move {
        axum::serve(listener, app.into_make_service()).with_graceful_shutdown(cancel.cancelled_owned()).await
    })
}

/// What a gateway serves while another streams from the slot.
enum Standby {
    /// On a data dir of its own: alive, not ready, 503 for the API.
    Waiting(CancellationToken, tokio::task::JoinHandle<std::io::Result<()>>),
    /// On the leader's data dir: reads of the leader's shapes.
    Following(follow::Following),
}

impl Standby {
    async fn start(
        cfg: &ServeConfig,
        listen: &mut std::net::SocketAddr,
        shutdown: &CancellationToken,
        shared: bool,
    ) -> Result<Standby, StartError> {
        let listener =
            TcpListener::bind(*listen).await.map_err(|source| StartError::Listen { addr: *listen, source })?;
        *listen = listener.local_addr().unwrap_or(*listen);
        let pid = std::process::id();
        if shared {
            tracing::info!(slot = %cfg.slot, %listen, pid, "another gateway streams from the slot into this data dir: serving reads of its shapes");
            return Ok(Standby::Following(follow::Following::start(cfg, listener, shutdown).await?));
        }
        tracing::info!(slot = %cfg.slot, %listen, pid, "another gateway streams from the slot: standing by");
        let (cancel, app) = (shutdown.child_token(), http::health::standby_app(cfg.slot.clone()));
        let stop = cancel.clone();
        let server = tokio::spawn(async move {
            axum::serve(listener, app.into_make_service()).with_graceful_shutdown(stop.cancelled_owned()).await
        });
        Ok(Standby::Waiting(cancel, server))
    }

    async fn stop(self) {
        match self {
            Standby::Waiting(cancel, server) => {
                cancel.cancel();
                let _ = server.await;
            }
            Standby::Following(following) => following.stop().await,
        }
    }
}

/// Becomes the gateway that streams from the slot, or waits as a standby until it can:
/// meanwhile `/healthz` answers on `listen`, and either the API answers 503 (`/readyz`
/// too) or, on the leader's data dir, reads of the leader's shapes are served (`follow`).
/// `None`: shut down while waiting.
async fn lead(
    cfg: &ServeConfig,
    listen: &mut std::net::SocketAddr,
    settings: &StreamSettings,
    shutdown: &CancellationToken,
) -> Result<Option<Leadership>, StartError> {
    // The first answer decides whether a standby server is needed at all.
    let mut waiting: Option<Candidate> = None;
    let mut standby: Option<Standby> = None;
    let leadership = loop {
        let attempt = match waiting.take() {
            Some(c) => c.try_lock().await,
            None => Candidate::lock(settings, Lsn(0), Lsn(0)).await,
        };
        match attempt {
            Ok(Ok(leadership)) => break Some(leadership),
            Ok(Err(candidate)) => waiting = Some(candidate),
            // A broken session is replaced on the next round; only fatal errors stop the wait.
            Err(e) if e.is_transient() && standby.is_some() => {
                tracing::warn!(error = %e, "standby: replication session lost; reconnecting")
            }
            Err(e) => return Err(e.into()),
        }
        // Following once the leader holds this data dir; a follower stays one until it leads.
        let shared = data_dir::Shared::held_for(&cfg.data_dir, &cfg.slot);
        if standby.is_none() || (shared && matches!(standby, Some(Standby::Waiting(..)))) {
            metrics::gauge!("gateway_leader").set(0.0);
            if let Some(old) = standby.take() {
                old.stop().await;
            }
            standby = Some(match Standby::start(cfg, listen, shutdown, shared).await {
                Ok(started) => started,
                Err(e) if shared => {
                    tracing::warn!(error = %e, "standby: cannot serve reads of the leader's shapes; waiting instead");
                    Standby::start(cfg, listen, shutdown, false).await?
                }
                Err(e) => return Err(e),
            });
        }
        tokio::select! {
            _ = tokio::time::sleep(STANDBY_POLL) => {}
            _ = shutdown.cancelled() => break None,
        }
    };
    if let Some(standby) = standby {
        standby.stop().await;
        if leadership.is_some() {
            tracing::info!(slot = %cfg.slot, "took over the slot");
        }
    }
    Ok(leadership)
}
