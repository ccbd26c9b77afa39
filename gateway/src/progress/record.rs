//! The data dir's position record, kept behind the fan-out's durable position: a position
//! is acknowledged to PostgreSQL only once the data dir recorded it.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::{AckState, RecordPace};
use crate::data_dir::DataDir;
use crate::status::Status;

/// How often the position is recorded at most: one small fsync per interval, and the
/// acknowledged position trails the durable one by about this much.
const RECORD_EVERY: Duration = Duration::from_millis(200);
/// What fails, in `/readyz`, when the position cannot be recorded.
const RECORDING: &str = "recording the data dir's position";

/// Records the fan-out's durable position at most every [`RECORD_EVERY`] and only then
/// lets it be acknowledged to PostgreSQL. A failed record (a full disk) is retried, with
/// the gateway not ready meanwhile; nothing more is acknowledged until it succeeds. Runs
/// until its owner ([`crate::tasks`]) stops it.
pub async fn record_positions(dir: Arc<DataDir>, ack: Arc<AckState>, status: Arc<Status>) {
    let mut durable = ack.subscribe_durable();
    let mut pace = RecordPace::new(RECORD_EVERY);
    loop {
        let now = Instant::now().into_std();
        let Some(at) = pace.next_record(ack.durable(), ack.acknowledgeable(), now) else {
            if durable.changed().await.is_err() {
                return;
            }
            continue;
        };
        tokio::time::sleep_until(Instant::from_std(at)).await;
        let attempt = Instant::now().into_std();
        match record_now(&dir, &ack).await {
            Ok(()) => {
                if pace.recorded(attempt) {
                    tracing::info!("the data dir's position is recorded again; acknowledging resumes");
                    status.set_storage_error(RECORDING, None);
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot record the data dir's position; retrying");
                status.set_storage_error(RECORDING, Some(e.to_string()));
                pace.failed(attempt);
            }
        }
    }
}

/// Records the durable position now and lets it be acknowledged (also used at shutdown).
pub async fn record_now(dir: &Arc<DataDir>, ack: &Arc<AckState>) -> io::Result<()> {
    let (lsn, seen) = (ack.durable(), ack.seen());
    let d = dir.clone();
    tokio::task::spawn_blocking(move || d.record(lsn, seen)).await.map_err(io::Error::other)??;
    ack.note_recorded(lsn);
    Ok(())
}
