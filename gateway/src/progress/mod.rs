//! The position acknowledged to PostgreSQL. Invariant: the acknowledged (flush) LSN never
//! passes a transaction whose shape-log entries are not yet durable.
//!
//! The stream notes what it hands to the fan-out; the fan-out notes what it made durable;
//! when both agree and the stream is idle, keepalive positions can be acknowledged too
//! (so a quiet publication does not pin WAL). A durable position is acknowledged once the
//! data dir recorded it ([`record`]).

pub mod record;

use std::sync::Mutex;
use std::time::{Duration, Instant};

use shapes::offset::Lsn;
use tokio::sync::watch;

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Positions {
    /// End LSN of the last transaction handed to the fan-out.
    enqueued_end: Lsn,
    /// End LSN up to which everything handed over is durable.
    durable_end: Lsn,
    /// Commit LSN of the last durable transaction: the `global_last_seen_lsn` clients see.
    seen: Lsn,
    /// Bytes the stream has delivered, stored or not.
    received: u64,
}

#[derive(Debug)]
pub struct AckState {
    positions: Mutex<Positions>,
    durable: watch::Sender<Lsn>,
    /// Durable and recorded in the data dir: what may be acknowledged.
    recorded: watch::Sender<Lsn>,
}

impl AckState {
    /// Starts from the slot's confirmed position.
    pub fn new(confirmed: Lsn) -> AckState {
        let p = Positions { enqueued_end: confirmed, durable_end: confirmed, seen: confirmed, received: 0 };
        AckState {
            positions: Mutex::new(p),
            durable: watch::channel(confirmed).0,
            recorded: watch::channel(confirmed).0,
        }
    }

    pub fn note_enqueued(&self, end: Lsn) {
        let mut p = self.positions.lock().unwrap();
        p.enqueued_end = p.enqueued_end.max(end);
    }

    /// The fan-out made every transaction up to `end` durable; `commit` is the last one's
    /// commit LSN.
    pub fn note_durable(&self, end: Lsn, commit: Lsn) {
        let mut p = self.positions.lock().unwrap();
        p.durable_end = p.durable_end.max(end);
        p.seen = p.seen.max(commit);
        let d = p.durable_end;
        drop(p);
        self.durable.send_if_modified(|v| std::mem::replace(v, d) != d);
    }

    /// A keepalive says the server sent everything up to `wal_end`. If no transaction is in
    /// flight (`stream_idle`) and the fan-out has stored all it was given, nothing before
    /// `wal_end` is owed, so it may be acknowledged.
    pub fn note_idle_position(&self, wal_end: Lsn, stream_idle: bool) {
        let mut p = self.positions.lock().unwrap();
        if !stream_idle || p.durable_end < p.enqueued_end || wal_end <= p.durable_end {
            return;
        }
        p.enqueued_end = wal_end;
        p.durable_end = wal_end;
        p.seen = p.seen.max(wal_end);
        drop(p);
        self.durable.send_replace(wal_end);
    }

    pub fn durable(&self) -> Lsn {
        self.positions.lock().unwrap().durable_end
    }

    /// The stream delivered `bytes` more (a message of a transaction under way counts: its
    /// position may be far behind, where the transaction began).
    pub fn note_received(&self, bytes: usize) {
        self.positions.lock().unwrap().received += bytes as u64;
    }

    /// How far the gateway has come: what the fan-out stored, and how much the stream
    /// delivered. While it changes the gateway is not stalled, however much WAL its slot holds.
    pub fn progress(&self) -> (Lsn, u64) {
        let p = self.positions.lock().unwrap();
        (p.durable_end, p.received)
    }

    /// The newest LSN whose effects are visible to readers.
    pub fn seen(&self) -> Lsn {
        self.positions.lock().unwrap().seen
    }

    pub fn subscribe_durable(&self) -> watch::Receiver<Lsn> {
        self.durable.subscribe()
    }

    /// The data dir recorded that its logs hold everything through `lsn`.
    pub fn note_recorded(&self, lsn: Lsn) {
        self.recorded.send_if_modified(|v| {
            let raise = lsn > *v;
            if raise {
                *v = lsn;
            }
            raise
        });
    }

    /// The position that may be acknowledged to PostgreSQL.
    pub fn acknowledgeable(&self) -> Lsn {
        *self.recorded.borrow()
    }

    pub fn subscribe_acknowledgeable(&self) -> watch::Receiver<Lsn> {
        self.recorded.subscribe()
    }
}

/// When the data dir records the durable position: at most once per interval (one small
/// fsync each), promptly after a quiet spell, and again after a failed attempt. Pure: the
/// caller passes the positions and the clock in.
#[derive(Debug)]
pub struct RecordPace {
    every: Duration,
    last_attempt: Option<Instant>,
    retrying: bool,
}

impl RecordPace {
    pub fn new(every: Duration) -> RecordPace {
        RecordPace { every, last_attempt: None, retrying: false }
    }

    /// When to record `durable`, with `recorded` already recorded: `None` while there is
    /// nothing new and no failed attempt to repeat.
    pub fn next_record(&self, durable: Lsn, recorded: Lsn, now: Instant) -> Option<Instant> {
        if durable <= recorded && !self.retrying {
            return None;
        }
        Some(self.last_attempt.map_or(now, |last| (last + self.every).max(now)))
    }

    /// An attempt at `at` succeeded; `true` when it ended a run of failures.
    pub fn recorded(&mut self, at: Instant) -> bool {
        self.last_attempt = Some(at);
        std::mem::take(&mut self.retrying)
    }

    pub fn failed(&mut self, at: Instant) {
        self.last_attempt = Some(at);
        self.retrying = true;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_at_most_once_per_interval_and_retries_failures() {
        let every = Duration::from_millis(200);
        let t0 = Instant::now();
        let ms = |n: u64| t0 + Duration::from_millis(n);
        let mut pace = RecordPace::new(every);
        assert_eq!(pace.next_record(Lsn(100), Lsn(100), t0), None, "nothing new");
        assert_eq!(pace.next_record(Lsn(150), Lsn(100), t0), Some(t0), "the first record is at once");
        assert!(!pace.recorded(t0));
        assert_eq!(pace.next_record(Lsn(150), Lsn(150), ms(50)), None);
        assert_eq!(pace.next_record(Lsn(160), Lsn(150), ms(50)), Some(ms(200)), "not before the interval");
        assert_eq!(pace.next_record(Lsn(160), Lsn(150), ms(900)), Some(ms(900)), "after a quiet spell, at once");
        pace.failed(ms(900));
        assert_eq!(pace.next_record(Lsn(150), Lsn(150), ms(950)), Some(ms(1100)), "a failure is retried");
        assert!(pace.recorded(ms(1100)), "the failures ended");
        assert_eq!(pace.next_record(Lsn(150), Lsn(150), ms(1100)), None);
    }

    #[test]
    fn idle_keepalives_advance_only_when_nothing_is_owed() {
        let a = AckState::new(Lsn(100));
        a.note_enqueued(Lsn(200));
        a.note_idle_position(Lsn(300), true);
        assert_eq!(a.durable(), Lsn(100), "transaction 200 is not durable yet");
        a.note_durable(Lsn(200), Lsn(190));
        assert_eq!((a.durable(), a.seen()), (Lsn(200), Lsn(190)));
        a.note_idle_position(Lsn(300), false);
        assert_eq!(a.durable(), Lsn(200), "a transaction is open");
        a.note_idle_position(Lsn(300), true);
        assert_eq!(a.durable(), Lsn(300));
        a.note_durable(Lsn(250), Lsn(240));
        assert_eq!(a.durable(), Lsn(300), "never moves backwards");
    }
}
