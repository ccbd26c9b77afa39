//! Health the HTTP layer reports: is replication connected, and if not, why; when the
//! stream last delivered a transaction.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;

/// PostgreSQL timestamps count microseconds from 2000-01-01.
const PG_EPOCH_UNIX_SECS: u64 = 946_684_800;

#[derive(Debug, Default)]
pub struct Status {
    inner: Mutex<Inner>,
    /// Unix milliseconds of the last transaction received (0: none yet).
    last_commit_ms: AtomicU64,
    /// How old that transaction was on arrival, in microseconds.
    last_commit_age_us: AtomicU64,
}

#[derive(Debug, Default)]
struct Inner {
    /// A read-serving standby: it follows the leader's logs instead of the stream.
    following: bool,
    replication_connected: bool,
    last_error: Option<String>,
    slot: Option<SlotHealth>,
    /// Why shape storage is failing (a full disk, an I/O error), by what failed, while it is.
    storage_errors: std::collections::BTreeMap<&'static str, String>,
}

impl Status {
    pub fn set_replication(&self, connected: bool, error: Option<String>) {
        let mut i = self.inner.lock().unwrap();
        i.replication_connected = connected;
        metrics::gauge!("gateway_replication_connected").set(if connected { 1.0 } else { 0.0 });
        if error.is_some() || connected {
            i.last_error = error;
        }
    }

    /// A transaction arrived from the stream: counts it and how old it was on arrival.
    pub fn note_commit(&self, commit_time_micros: i64, changes: usize) {
        let now = SystemTime::now();
        let committed = UNIX_EPOCH
            + Duration::from_secs(PG_EPOCH_UNIX_SECS)
            + Duration::from_micros(commit_time_micros.max(0) as u64);
        let age = now.duration_since(committed).unwrap_or_default();
        metrics::counter!("gateway_replication_transactions_total").increment(1);
        metrics::counter!("gateway_replication_changes_total").increment(changes as u64);
        metrics::gauge!("gateway_replication_lag_seconds").set(age.as_secs_f64());
        let ms = now.duration_since(UNIX_EPOCH).unwrap_or_default().as_millis() as u64;
        self.last_commit_ms.store(ms, Ordering::Relaxed);
        self.last_commit_age_us.store(age.as_micros() as u64, Ordering::Relaxed);
    }

    /// How old the last received transaction was when it arrived (commit to receipt).
    pub fn last_commit_age(&self) -> Option<Duration> {
        (self.last_commit_ms.load(Ordering::Relaxed) > 0)
            .then(|| Duration::from_micros(self.last_commit_age_us.load(Ordering::Relaxed)))
    }

    /// Time since the stream last delivered a transaction; `None` before the first.
    pub fn since_last_commit(&self) -> Option<Duration> {
        let ms = self.last_commit_ms.load(Ordering::Relaxed);
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
        (ms > 0).then(|| now.saturating_sub(Duration::from_millis(ms)))
    }

    /// Storing `what` failed (`Some`: why) or works again (`None`). Each part of the
    /// storage reports for itself, so one recovering does not hide another still failing.
    pub fn set_storage_error(&self, what: &'static str, error: Option<String>) {
        let mut i = self.inner.lock().unwrap();
        match error {
            Some(e) => i.storage_errors.insert(what, e),
            None => i.storage_errors.remove(what),
        };
        metrics::gauge!("gateway_storage_failing").set(if i.storage_errors.is_empty() { 0.0 } else { 1.0 });
    }

    /// Whether storing shape logs fails now.
    pub fn storage_failing(&self) -> bool {
        !self.inner.lock().unwrap().storage_errors.is_empty()
    }

    pub fn set_slot(&self, health: SlotHealth) {
        self.inner.lock().unwrap().slot = Some(health);
    }

    /// The slot as last checked.
    pub fn slot(&self) -> Option<SlotHealth> {
        self.inner.lock().unwrap().slot.clone()
    }

    /// Why new shapes must wait, when the WAL budget says so.
    /// Marks this gateway a read-serving standby (see `follow`).
    pub fn set_following(&self) {
        self.inner.lock().unwrap().following = true;
    }

    /// `leader` (streams from the slot) or `follower` (serves reads of the leader's logs).
    pub fn role(&self) -> &'static str {
        if self.inner.lock().unwrap().following { "follower" } else { "leader" }
    }

    pub fn new_shapes_paused(&self) -> Option<String> {
        let i = self.inner.lock().unwrap();
        let slot = i.slot.as_ref().filter(|s| s.stage >= Stage::PauseNewShapes)?;
        Some(format!(
            "new shapes are paused: the replication slot holds {} bytes of WAL, three quarters of --max-retained-wal; existing shapes keep working",
            slot.retained_wal_bytes
        ))
    }

    /// `Ok` when ready to serve, else the reason.
    pub fn readiness(&self) -> Result<(), String> {
        let i = self.inner.lock().unwrap();
        if let Some((what, e)) = i.storage_errors.iter().next() {
            return Err(format!(
                "shape storage is failing ({what}: {e}); nothing new is acknowledged to PostgreSQL until it works again, what is stored is still served"
            ));
        }
        if let Some(slot) = i.slot.as_ref().filter(|s| s.stage == Stage::Exceeded) {
            return Err(format!(
                "the replication slot holds {} bytes of WAL, over --max-retained-wal",
                slot.retained_wal_bytes
            ));
        }
        if i.following || i.replication_connected {
            Ok(())
        } else {
            Err(match &i.last_error {
                Some(e) => format!("replication is not connected: {e}"),
                None => "replication is starting".into(),
            })
        }
    }
}

/// What the server says about our slot, as `/readyz` shows it.
#[derive(Clone, Debug, Default, Serialize)]
pub struct SlotHealth {
    /// WAL the server keeps for the slot (current position − restart_lsn).
    pub retained_wal_bytes: i64,
    /// WAL that may still be written before the slot is invalidated (`max_slot_wal_keep_size`).
    pub safe_wal_bytes: Option<i64>,
    /// `wal_status` of the slot: reserved, extended, unreserved or lost.
    pub wal_status: Option<String>,
    /// WAL written by the server that our logs do not hold yet.
    pub lag_bytes: i64,
    /// How old the newest received transaction was when it arrived.
    pub lag_seconds: Option<f64>,
    /// Seconds since the stream delivered a transaction.
    pub seconds_since_last_commit: Option<f64>,
    pub stage: Stage,
}

/// How full the WAL budget is.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Stage {
    #[default]
    Ok,
    /// Half the budget: logged.
    Warn,
    /// Three quarters: new shapes wait (their snapshots would add load while WAL piles up).
    PauseNewShapes,
    /// The whole budget: `--wal-budget-action` applies.
    Exceeded,
}

impl Stage {
    pub(crate) const ALL: [Stage; 4] = [Stage::Ok, Stage::Warn, Stage::PauseNewShapes, Stage::Exceeded];

    pub fn of(retained: i64, budget: u64) -> Stage {
        let retained = retained.max(0) as u128 * 4;
        let budget = budget as u128;
        if retained >= budget * 4 {
            Stage::Exceeded
        } else if retained >= budget * 3 {
            Stage::PauseNewShapes
        } else if retained >= budget * 2 {
            Stage::Warn
        } else {
            Stage::Ok
        }
    }

    pub(crate) fn level(self) -> f64 {
        match self {
            Stage::Ok => 0.0,
            Stage::Warn => 1.0,
            Stage::PauseNewShapes => 2.0,
            Stage::Exceeded => 3.0,
        }
    }
}
