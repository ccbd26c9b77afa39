//! Read-serving standbys. A gateway waiting for the slot on the leader's data dir (one
//! volume, ReadWriteMany across nodes) serves `GET /v1/shape` for the leader's shapes from
//! the leader's own logs meanwhile, so read capacity grows with replicas while one process
//! streams from the slot. It writes nothing there:
//!
//! - the journal's frames (`shapes::journal::tail`) say what the leader wrote to which log,
//!   with the bytes: each followed log's view grows by them, whole transactions only;
//! - the shapes directory is read again every second (and on a miss): new shapes are loaded
//!   once their snapshots are complete, dropped ones answer 409;
//! - the position record tells it the newest LSN the leader's readers were told of, so
//!   clients get the same `global_last_seen_lsn` wherever they land.
//!
//! Handles and offsets are the leader's, so a client moves between replicas freely. New
//! shapes and `DELETE` are forwarded to the leader (`http::forward`); outbox writes and
//! subsets are served here (they are PostgreSQL's business). When the leader goes, a standby
//! takes the slot: it stops following, opens the data dir as the leader (journal replay,
//! recovery) and serves on the same address; its clients reconnect and resume.

use std::io;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use shapes::journal::tail::{JournalTail, Tailed, Written};
use shapes::log::Followed;
use shapes::offset::Lsn;
use shapes::where_clause::BindOptions;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::config::ServeConfig;
use crate::data_dir::Shared;
use crate::fanout::registry::Registry;
use crate::http::AppState;
use crate::http::forward::Leader;
use crate::progress::AckState;
use crate::shape_set::ShapeSet;
use crate::status::Status;
use crate::tasks::Tasks;
use crate::{StartError, TASKS_GRACE};

/// How often the journal is read: what a follower's subscribers wait beyond the leader's
/// (half of it on average); a read that finds nothing costs two system calls.
const POLL: Duration = Duration::from_millis(2);
/// How often the position record is read (it changes at most every 200 ms).
const POSITION_EVERY: Duration = Duration::from_millis(50);
/// How often the shapes directory is read again for new and dropped shapes.
const RESCAN: Duration = Duration::from_secs(1);
/// What fails, in `/readyz`, when the leader's files cannot be read.
const FOLLOWING: &str = "following the leader's logs";

/// A standby serving reads; [`Following::stop`] ends it.
pub struct Following {
    cancel: CancellationToken,
    server: tokio::task::JoinHandle<io::Result<()>>,
    follower: tokio::task::JoinHandle<()>,
    tasks: Tasks,
}

impl Following {
    /// Follows the data dir of `cfg` and serves reads of its shapes on `listener`.
    pub async fn start(
        cfg: &ServeConfig,
        listener: TcpListener,
        shutdown: &CancellationToken,
    ) -> Result<Following, StartError> {
        let db_cfg = crate::db::parse_url(&cfg.database_url)?;
        let client = crate::db::connect(&db_cfg).await?;
        let bind = BindOptions { text_sorts_bytewise: crate::db::text_sorts_bytewise(&client).await? };
        let auth = Arc::new(crate::build_auth(cfg, &client, bind).await?);
        drop(client);
        let data_err = |source| StartError::DataDir { path: cfg.data_dir.display().to_string(), source };
        // The tail starts before the logs open: what it reads may not be in their files yet.
        let tail = JournalTail::start(&cfg.data_dir).map_err(data_err)?;
        let registry = Arc::new(Registry::open_following(&cfg.data_dir, cfg.chunk_bytes, bind).map_err(data_err)?);
        let (ack, status) = (Arc::new(AckState::new(Lsn(0))), Arc::new(Status::default()));
        status.set_following();
        let cancel = shutdown.child_token();
        let tasks = Tasks::new(cancel.clone());
        let follower = {
            let (dir, registry, ack, status, cancel) =
                (cfg.data_dir.clone(), registry.clone(), ack.clone(), status.clone(), cancel.clone());
            tokio::task::spawn_blocking(move || follow(dir, tail, &registry, &ack, &status, &cancel))
        };
        let outbox = Arc::new(crate::build_outbox(&db_cfg, bind).await?);
        let shapes = ShapeSet::new(
            registry.clone(),
            db_cfg,
            cfg.publication.clone(),
            status.clone(),
            crate::shape_limits(cfg),
            tasks.clone(),
        )?
        .following();
        crate::refresh_keys(&auth, &tasks);
        let state =
            AppState::new(crate::http_settings(cfg), Arc::new(shapes), ack, status, auth, outbox, tasks.clone())
                .following(Leader::new(cfg.data_dir.clone()));
        tracing::info!(shapes = registry.len(), "standby: serving reads of the leader's shapes");
        let server = crate::serve_http(listener, crate::http::app(state), cfg, cancel.clone());
        Ok(Following { cancel, server, follower, tasks })
    }

    /// Stops serving: open requests end (their clients resume wherever they land next).
    pub async fn stop(self) {
        self.cancel.cancel();
        let _ = self.server.await;
        let _ = self.follower.await;
        self.tasks.shutdown(TASKS_GRACE).await;
    }
}

/// Follows the leader's files until `cancel`: reads the journal, the shapes directory and the
/// position record, and makes what they say visible.
fn follow(
    dir: PathBuf,
    mut tail: JournalTail,
    registry: &Registry,
    ack: &AckState,
    status: &Status,
    cancel: &CancellationToken,
) {
    let (mut scanned, mut positioned) = (Instant::now(), Instant::now());
    while !cancel.is_cancelled() {
        let due = |last: &mut Instant, every: Duration| {
            let due = last.elapsed() >= every;
            if due {
                *last = Instant::now();
            }
            due
        };
        let (rescan, position) = (due(&mut scanned, RESCAN), due(&mut positioned, POSITION_EVERY));
        match step(&dir, &mut tail, registry, ack, rescan, position) {
            Ok(()) => status.set_storage_error(FOLLOWING, None),
            Err(e) => {
                tracing::warn!(error = %e, "standby: cannot read the leader's files; retrying");
                status.set_storage_error(FOLLOWING, Some(e.to_string()));
            }
        }
        std::thread::sleep(POLL);
    }
}

fn step(
    dir: &std::path::Path,
    tail: &mut JournalTail,
    registry: &Registry,
    ack: &AckState,
    rescan: bool,
    position: bool,
) -> io::Result<()> {
    // The tail has moved past what it returned: a record that fails is skipped, not retried
    // (its log's next record finds the gap and reads the file again), and the rest go on.
    match tail.poll()? {
        Tailed::Records(written) => {
            for w in written {
                if let Err(e) = apply(registry, &w) {
                    tracing::warn!(log = %w.path.display(), error = %e, "standby: a journal record was not applied");
                }
            }
        }
        Tailed::Lost => {
            tracing::warn!("standby: fell behind the leader's journal; reading every log again");
            for shape in registry.all() {
                if let Err(e) = reload(&shape.log) {
                    tracing::warn!(handle = %shape.handle, error = %e, "standby: a log could not be read again");
                }
            }
        }
    }
    if rescan {
        registry.follow_dirs()?;
    }
    if position && let Some(recorded) = Shared::recorded(dir)? {
        ack.note_durable(recorded.stored_through, recorded.seen);
    }
    Ok(())
}

/// Extends the view of the log a journal record wrote to (loading its shape if new).
fn apply(registry: &Registry, w: &Written) -> io::Result<()> {
    let Some(shape) = registry.followed_log(&w.path)? else { return Ok(()) };
    match shape.log.follow(w.at, &w.bytes) {
        Ok(Followed::Taken) => Ok(()),
        Ok(Followed::Gap) => {
            metrics::counter!("gateway_follower_log_reloads_total").increment(1);
            reload(&shape.log)
        }
        // The leader dropped the shape: the next directory read forgets it.
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// Reads a followed log's file again; a log the leader removed meanwhile needs nothing.
fn reload(log: &shapes::log::ShapeLog) -> io::Result<()> {
    match log.reload_following() {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}
