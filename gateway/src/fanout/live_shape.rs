//! One live shape: its log, its message encoder, and the visibility buffer that holds stream
//! transactions until its snapshot says which of them it already contains.

use std::io;
use std::path::Path;
use std::sync::Mutex;

use shapes::change::Txn;
use shapes::durable::write_atomically;
use shapes::log::ShapeLog;
use shapes::offset::LogOffset;
use shapes::shape::{Shape, ShapeHandle, ShapeKey, ShapeSpec};
use shapes::table::TableSchema;
use shapes::wire::{LiveHeaders, MessageEncoder, schema_header};

use super::plan::Planned;

/// `pg_current_snapshot()` of a shape's snapshot transaction.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SnapshotInfo {
    pub xmin: u64,
    pub xmax: u64,
    pub xip: Vec<u64>,
}

impl SnapshotInfo {
    /// Parses `xmin:xmax:xip,xip`.
    pub fn parse(s: &str) -> Option<SnapshotInfo> {
        let mut parts = s.splitn(3, ':');
        let xmin = parts.next()?.parse().ok()?;
        let xmax = parts.next()?.parse().ok()?;
        let xip = match parts.next()? {
            "" => Vec::new(),
            list => list.split(',').map(|x| x.parse().ok()).collect::<Option<_>>()?,
        };
        Some(SnapshotInfo { xmin, xmax, xip })
    }

    /// Whether the snapshot already contains the effects of transaction `xid` (32-bit, as the
    /// stream reports it; compared modulo 2^32 like PostgreSQL does).
    pub fn contains(&self, xid: u32) -> bool {
        let precedes = |a: u32, b: u32| (a.wrapping_sub(b) as i32) < 0;
        precedes(xid, self.xmin as u32)
            || (precedes(xid, self.xmax as u32) && !self.xip.iter().any(|x| *x as u32 == xid))
    }
}

/// One transaction's encoded entries for one shape.
pub type TxnEntries = Vec<(LogOffset, Vec<u8>)>;

/// Stream transactions held until the snapshot's visibility is known: their entries, or
/// why the shape could not evaluate them.
type PendingTxn = (u32, Result<TxnEntries, String>);

enum Visibility {
    Pending(Vec<PendingTxn>),
    Known(SnapshotInfo),
}

/// Why a shape's snapshot cannot be followed by its stream.
#[derive(Debug, thiserror::Error)]
pub enum Unservable {
    /// A change after the snapshot could not be evaluated for the shape.
    #[error("a change could not be evaluated: {0}")]
    Unreadable(String),
    #[error(transparent)]
    Io(#[from] io::Error),
}

/// What `shape.json` records of a shape, so it survives a restart.
#[derive(serde::Serialize, serde::Deserialize)]
pub(super) struct ShapeMeta {
    pub(super) handle: ShapeHandle,
    pub(super) spec: ShapeSpec,
    pub(super) table: TableSchema,
    pub(super) snapshot: SnapshotInfo,
}

impl ShapeMeta {
    /// The record in the shape directory `dir`; `None` when there is none.
    pub(super) fn read(dir: &Path) -> io::Result<Option<ShapeMeta>> {
        match std::fs::read(dir.join("shape.json")) {
            Ok(b) => serde_json::from_slice(&b).map(Some).map_err(io::Error::other),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }
}

/// Why a shape's snapshot failed, for requests waiting on it.
#[derive(Clone, Debug)]
pub struct ShapeFailure {
    /// The filter or data is at fault (a 400), not the server.
    pub client_error: bool,
    pub message: String,
}

pub struct LiveShape {
    pub id: u64,
    pub handle: ShapeHandle,
    pub key: ShapeKey,
    pub shape: Shape,
    pub log: ShapeLog,
    pub encoder: MessageEncoder,
    pub schema_header: String,
    visibility: Mutex<Visibility>,
    failure: Mutex<Option<ShapeFailure>>,
}

impl LiveShape {
    /// A shape with its log; `snapshot` is known for a shape loaded from disk, and comes
    /// later ([`LiveShape::set_snapshot`]) for a new one.
    pub(super) fn new(
        id: u64,
        handle: ShapeHandle,
        shape: Shape,
        log: ShapeLog,
        snapshot: Option<SnapshotInfo>,
    ) -> Self {
        let visibility = match snapshot {
            Some(snapshot) => Visibility::Known(snapshot),
            None => Visibility::Pending(Vec::new()),
        };
        LiveShape {
            id,
            handle,
            key: shape.key(),
            encoder: MessageEncoder::new(&shape.table),
            schema_header: schema_header(&shape.table, &shape.selected),
            shape,
            log,
            visibility: Mutex::new(visibility),
            failure: Mutex::new(None),
        }
    }

    /// Encodes one transaction's planned messages. Returns them for the caller to append,
    /// or `None` when the snapshot already holds the transaction, the log already has it
    /// (a replay after restart), or the snapshot is still pending (then they are held here).
    pub fn admit(&self, txn: &Txn, planned: &[Planned]) -> Option<TxnEntries> {
        let mut vis = self.visibility.lock().unwrap();
        let held = self.holds(&vis, txn);
        match &mut *vis {
            Visibility::Known(_) if held => None,
            Visibility::Known(_) => Some(self.encode(txn, planned)),
            Visibility::Pending(buffer) => {
                buffer.push((txn.xid, Ok(self.encode(txn, planned))));
                None
            }
        }
    }

    /// A transaction whose changes this shape could not evaluate (`why`). Returns why the
    /// shape must go now; `None` when its snapshot already holds the transaction (nothing
    /// of it is to be sent), or when that is not known yet: the snapshot then decides
    /// ([`LiveShape::set_snapshot`]).
    pub fn admit_unreadable(&self, txn: &Txn, why: String) -> Option<String> {
        let mut vis = self.visibility.lock().unwrap();
        let held = self.holds(&vis, txn);
        match &mut *vis {
            Visibility::Known(_) if held => None,
            Visibility::Known(_) => Some(why),
            Visibility::Pending(buffer) => {
                buffer.push((txn.xid, Err(why)));
                None
            }
        }
    }

    /// Whether the snapshot or the log already has `txn`.
    fn holds(&self, vis: &Visibility, txn: &Txn) -> bool {
        matches!(vis, Visibility::Known(snap) if snap.contains(txn.xid) || txn.commit_lsn <= self.log.written_lsn())
    }

    fn encode(&self, txn: &Txn, planned: &[Planned]) -> TxnEntries {
        let mut out = Vec::with_capacity(planned.len());
        let mut op = 0u64;
        for (i, p) in planned.iter().enumerate() {
            // A key change's insert sits right after its delete; other changes step by 2.
            if i > 0 {
                op += if planned[i - 1].key_change_to.is_some() { 1 } else { 2 - (op % 2) };
            }
            let headers = LiveHeaders {
                txid: txn.xid,
                lsn: txn.commit_lsn,
                op_position: op,
                last: i + 1 == planned.len(),
                key_change_to: p.key_change_to.as_deref(),
                key_change_from: p.key_change_from.as_deref(),
            };
            let mut msg = Vec::with_capacity(256);
            let fields = p.value.iter().map(|(c, v)| (*c, v.as_str()));
            let old: Option<Vec<(usize, Option<&str>)>> =
                p.old_value.as_ref().map(|o| o.iter().map(|(c, v)| (*c, v.as_str())).collect());
            self.encoder.write_change(&mut msg, p.op, &p.key, fields, old.as_deref(), Some(headers));
            out.push((LogOffset::change(txn.commit_lsn, op), msg));
        }
        out
    }

    /// The snapshot's visibility is known: stream transactions it already contains are
    /// dropped, the rest are written, and from now on transactions go straight to the log.
    /// When one of the rest could not be evaluated, nothing is written and the error says
    /// why the shape must go.
    pub fn set_snapshot(&self, snap: SnapshotInfo) -> Result<(), Unservable> {
        let mut vis = self.visibility.lock().unwrap();
        if let Visibility::Pending(buffer) = &mut *vis {
            let kept: Vec<TxnEntries> = std::mem::take(buffer)
                .into_iter()
                .filter(|(xid, _)| !snap.contains(*xid))
                .map(|(_, e)| e)
                .collect::<Result<_, String>>()
                .map_err(Unservable::Unreadable)?;
            self.log.append(&kept)?;
        }
        *vis = Visibility::Known(snap);
        drop(vis);
        self.log.sync_and_publish()?;
        // The fan-out decides which logs keep a descriptor open (`fanout::writers`).
        self.log.release_writer();
        Ok(())
    }

    /// Records the shape so it survives a restart (before the snapshot is marked complete).
    pub fn persist(&self, snapshot: SnapshotInfo) -> io::Result<()> {
        let meta = ShapeMeta {
            handle: self.handle.clone(),
            spec: self.shape.spec.clone(),
            table: self.shape.table.clone(),
            snapshot,
        };
        write_atomically(&self.log.dir().join("shape.json"), &serde_json::to_vec(&meta).map_err(io::Error::other)?)
    }

    pub fn fail(&self, failure: ShapeFailure) {
        *self.failure.lock().unwrap() = Some(failure);
        self.log.mark_gone();
    }

    pub fn failure(&self) -> Option<ShapeFailure> {
        self.failure.lock().unwrap().clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshot_visibility_follows_postgres_rules() {
        let s = SnapshotInfo::parse("100:105:101,103").unwrap();
        assert!(s.contains(99));
        assert!(!s.contains(101), "in progress at snapshot time");
        assert!(s.contains(102));
        assert!(!s.contains(105), "started after the snapshot");
        assert!(!s.contains(200));
        assert_eq!(SnapshotInfo::parse("5:5:").unwrap().xip, Vec::<u64>::new());
        let wrapped = SnapshotInfo { xmin: (1u64 << 32) + 5, xmax: (1u64 << 32) + 10, xip: vec![] };
        assert!(wrapped.contains(u32::MAX - 3), "xids before the wrap precede xmin");
        assert!(!wrapped.contains(12));
    }
}
