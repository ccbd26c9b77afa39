//! The data dir as a whole: which process owns it, and how far its shape logs reach.
//!
//! - `lock`: an exclusive file lock, so two gateways never write the same logs (standbys
//!   that share the directory with the active one wait for it; a misconfigured second
//!   gateway is refused).
//! - `slot`: the slot whose changes the logs hold. A gateway of another slot finding the
//!   directory locked is refused at once, without waiting for it to be let go.
//! - `position`: the LSN through which the logs hold every change. It is recorded before
//!   that LSN is acknowledged to PostgreSQL, so at start a slot confirmed past it means
//!   someone else streamed from the slot meanwhile (another gateway with its own disk, or
//!   this directory is an old copy): the logs miss changes and every shape is refetched.
//!   Beside it, the newest LSN readers were told of (`global_last_seen_lsn`), which
//!   read-serving standbys on the same directory tell theirs.
//! - `leader`: the URL where the gateway holding the lock serves, for standbys to forward
//!   what they cannot serve themselves.

use std::fs::{File, OpenOptions, TryLockError};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::Duration;

use shapes::offset::Lsn;

/// The record's fixed size: two LSNs as text, space-padded (one sector: written whole).
const RECORD_LEN: usize = 64;

/// The data dir, held exclusively while this value lives.
#[derive(Debug)]
pub struct DataDir {
    _lock: File,
    position: File,
    /// The recorded position when opened (`None`: none recorded yet).
    pub stored_through: Option<Lsn>,
}

#[derive(Debug, thiserror::Error)]
pub enum DataDirError {
    #[error(
        "data dir {path} is in use by another gateway process; give each gateway its own --data-dir, or let standbys share it only with the one active gateway"
    )]
    InUse { path: String },
    #[error(
        "data dir {path} holds the logs of slot {theirs:?}, streamed by another gateway process; this gateway streams slot {ours:?}: give it its own --data-dir"
    )]
    OtherSlot { path: String, theirs: String, ours: String },
    #[error("data dir {path}: {source}")]
    Io { path: String, source: io::Error },
}

impl DataDir {
    /// Creates `dir` when missing and takes its lock for `slot`, waiting up to `wait` for
    /// another process of the same slot to let go (a gateway that just lost the slot
    /// finishing its last batch).
    pub async fn open(dir: &Path, slot: &str, wait: Duration) -> Result<DataDir, DataDirError> {
        let path = dir.display().to_string();
        let io_err = |source| DataDirError::Io { path: path.clone(), source };
        std::fs::create_dir_all(dir).map_err(io_err)?;
        let lock =
            OpenOptions::new().create(true).truncate(false).write(true).open(dir.join("lock")).map_err(io_err)?;
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            match lock.try_lock() {
                Ok(()) => break,
                Err(TryLockError::WouldBlock) => {
                    if let Ok(theirs) = std::fs::read_to_string(dir.join("slot"))
                        && theirs != slot
                    {
                        return Err(DataDirError::OtherSlot { path: path.clone(), theirs, ours: slot.to_string() });
                    }
                    if tokio::time::Instant::now() >= deadline {
                        return Err(DataDirError::InUse { path: path.clone() });
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(TryLockError::Error(e)) => return Err(io_err(e)),
            }
        }
        std::fs::write(dir.join("slot"), slot).map_err(io_err)?;
        let position = OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(dir.join("position"))
            .map_err(io_err)?;
        let stored_through = read_record(&position).map_err(io_err)?.map(|r| r.stored_through);
        Ok(DataDir { _lock: lock, position, stored_through })
    }

    /// Durably records that the logs hold every change through `lsn`, and that readers were
    /// told of changes up to `seen`.
    pub fn record(&self, lsn: Lsn, seen: Lsn) -> io::Result<()> {
        let text = format!("{:<width$}", format!("{lsn} {seen}"), width = RECORD_LEN - 1) + "\n";
        self.position.write_all_at(text.as_bytes(), 0)?;
        self.position.sync_data()
    }

    /// Says where this gateway serves (`--advertise-url`), for standbys to forward to.
    pub fn record_leader(&self, dir: &Path, url: &str) -> io::Result<()> {
        shapes::durable::write_atomically(&dir.join("leader"), url.as_bytes())
    }

    /// Why the stored logs cannot be trusted against a slot confirmed up to `confirmed`
    /// (`slot_created`: the slot is new), if they cannot.
    pub fn stale_logs(&self, confirmed: Lsn, slot_created: bool) -> Option<String> {
        if slot_created {
            return Some("the replication slot was created anew".into());
        }
        match self.stored_through {
            None => Some("the data dir records no position (written by an older gateway or damaged)".into()),
            Some(stored) if stored < confirmed => Some(format!(
                "the logs reach {stored} but the slot was confirmed up to {confirmed} (another gateway streamed from it, or the data dir is an old copy)"
            )),
            Some(_) => None,
        }
    }
}

/// What the position record says (see the module's notes).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Recorded {
    pub stored_through: Lsn,
    /// Absent from records of older gateways: then the stored position.
    pub seen: Lsn,
}

fn read_record(position: &File) -> io::Result<Option<Recorded>> {
    let mut record = [0u8; RECORD_LEN];
    let read = position.read_at(&mut record, 0)?;
    let text = std::str::from_utf8(&record[..read]).unwrap_or_default();
    let mut lsns = text.split_whitespace().map(|t| t.parse::<Lsn>().ok());
    let Some(Some(stored_through)) = lsns.next() else { return Ok(None) };
    let seen = lsns.next().flatten().unwrap_or(stored_through);
    Ok(Some(Recorded { stored_through, seen }))
}

/// What another process sharing `dir` has to say, read without its lock: a read-serving
/// standby follows the gateway that holds it.
pub struct Shared;

impl Shared {
    /// Whether a process holds `dir`'s lock for `slot` now (the standby then shares its
    /// logs; on a volume of its own, no one does).
    pub fn held_for(dir: &Path, slot: &str) -> bool {
        let Ok(lock) = File::open(dir.join("lock")) else { return false };
        let ours = std::fs::read_to_string(dir.join("slot")).is_ok_and(|theirs| theirs == slot);
        match lock.try_lock_shared() {
            Ok(()) => false,
            Err(TryLockError::WouldBlock) => ours,
            Err(TryLockError::Error(_)) => false,
        }
    }

    /// The position record as the holder last wrote it.
    pub fn recorded(dir: &Path) -> io::Result<Option<Recorded>> {
        match File::open(dir.join("position")) {
            Ok(f) => read_record(&f),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Where the holder serves, as it said at start.
    pub fn leader_url(dir: &Path) -> Option<String> {
        std::fs::read_to_string(dir.join("leader")).ok().map(|u| u.trim().to_string()).filter(|u| !u.is_empty())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn one_process_at_a_time_and_the_position_survives_reopening() {
        let dir = std::env::temp_dir().join(format!("gateway-data-dir-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let first = DataDir::open(&dir, "gateway", Duration::ZERO).await.unwrap();
        assert_eq!(first.stored_through, None);
        assert!(first.stale_logs(Lsn(10), false).is_some(), "no record: not trusted");
        first.record(Lsn(500), Lsn(480)).unwrap();
        assert!(Shared::held_for(&dir, "gateway"), "a standby sees the lock held");
        assert!(!Shared::held_for(&dir, "gateway_other"), "but not for another slot");
        assert_eq!(Shared::recorded(&dir).unwrap(), Some(Recorded { stored_through: Lsn(500), seen: Lsn(480) }));
        // File locks are per open file description, so a second open in one process conflicts too.
        let second = DataDir::open(&dir, "gateway", Duration::from_millis(200)).await;
        assert!(matches!(second, Err(DataDirError::InUse { .. })), "{second:?}");
        let other = DataDir::open(&dir, "gateway_other", Duration::from_secs(60)).await;
        assert!(matches!(other, Err(DataDirError::OtherSlot { .. })), "another slot is refused at once: {other:?}");
        drop(first);
        assert!(!Shared::held_for(&dir, "gateway"), "let go");
        let reopened = DataDir::open(&dir, "gateway", Duration::ZERO).await.unwrap();
        assert_eq!(reopened.stored_through, Some(Lsn(500)));
        assert_eq!(reopened.stale_logs(Lsn(500), false), None);
        assert!(reopened.stale_logs(Lsn(501), false).unwrap().contains("confirmed up to"));
        assert!(reopened.stale_logs(Lsn(400), true).is_some(), "a new slot: nothing before it is known");
        std::fs::remove_dir_all(dir).unwrap();
    }
}
