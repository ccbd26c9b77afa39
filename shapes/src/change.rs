//! Row changes and committed transactions, as decoded from the replication stream.

use bytestring::ByteString;

use crate::offset::Lsn;
use crate::where_clause::{EvalError, Row};

/// One column value of a replicated tuple.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Cell {
    Null,
    /// PostgreSQL text output; UTF-8 checked once, when the cell is made.
    Text(ByteString),
    /// An unchanged TOAST value the stream did not repeat.
    Unchanged,
}

impl Cell {
    pub fn text(s: &str) -> Cell {
        Cell::Text(ByteString::from(s))
    }

    /// A cell sharing `bytes`, or `None` when they are not UTF-8.
    pub fn from_utf8(bytes: bytes::Bytes) -> Option<Cell> {
        ByteString::try_from(bytes).ok().map(Cell::Text)
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Cell::Text(s) => Some(s),
            _ => None,
        }
    }
}

/// A tuple: one cell per column of the relation, in relation order.
pub type Tuple = Vec<Cell>;

impl Row for [Cell] {
    fn text(&self, column: usize) -> Result<Option<&str>, EvalError> {
        match self.get(column) {
            None | Some(Cell::Null) => Ok(None),
            Some(Cell::Unchanged) => Err(EvalError::Unavailable(column)),
            Some(c @ Cell::Text(_)) => Ok(c.as_str()),
        }
    }
}

/// The columns of a relation as the stream described it (pgoutput `Relation` message).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Relation {
    pub oid: u32,
    pub schema: String,
    pub name: String,
    /// `f` (full), `d` (default), `i` (index) or `n` (nothing).
    pub replica_identity: u8,
    /// (name, type oid) per column.
    pub columns: Vec<(String, u32)>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    Insert {
        new: Tuple,
    },
    /// `old` is the whole old row under REPLICA IDENTITY FULL, the old key when the key
    /// changed under a default identity, and absent otherwise.
    Update {
        old: Option<Tuple>,
        old_is_full: bool,
        new: Tuple,
    },
    /// `old` holds the whole row under REPLICA IDENTITY FULL (`old_is_full`), else only the
    /// key columns (others NULL).
    Delete {
        old: Tuple,
        old_is_full: bool,
    },
}

impl Change {
    /// The row versions the change carries, old before new: what routing looks at.
    pub fn rows(&self) -> Vec<&[Cell]> {
        match self {
            Change::Insert { new } => vec![new],
            Change::Update { old: Some(old), new, .. } => vec![old, new],
            Change::Update { old: None, new, .. } => vec![new],
            Change::Delete { old, .. } => vec![old],
        }
    }
}

/// One item of a transaction, in stream order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TxnItem {
    Change {
        relation: u32,
        change: Change,
    },
    /// The stream (re)describes a relation; a different column list is a schema change.
    Relation(Relation),
    Truncate {
        relations: Vec<u32>,
    },
    /// A position marker the gateway wrote (`pg_logical_emit_message`, not transactional):
    /// every transaction committed before it has been streamed. Alone in its `Txn`.
    Marker(String),
}

/// A committed transaction. Clients see all of its changes to a shape, or none.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Txn {
    /// The 32-bit transaction id, as clients receive it in `txids`.
    pub xid: u32,
    /// LSN of the commit record: the transaction's position in shape logs.
    pub commit_lsn: Lsn,
    /// LSN just past the commit record: what is acknowledged to PostgreSQL once stored.
    pub end_lsn: Lsn,
    pub items: Vec<TxnItem>,
}

impl Txn {
    /// A marker whose record ends at `end` (see [`TxnItem::Marker`]), carried like a
    /// transaction. The stream reports a message's end, which may be where the next commit
    /// record starts: the marker sorts just before it, so what is logged at the marker's
    /// position never hides that commit.
    pub fn marker(end: Lsn, content: String) -> Txn {
        Txn { xid: 0, commit_lsn: Lsn(end.0.saturating_sub(1)), end_lsn: end, items: vec![TxnItem::Marker(content)] }
    }

    /// The marker's content, when this is one.
    pub fn as_marker(&self) -> Option<&str> {
        match self.items.as_slice() {
            [TxnItem::Marker(content)] => Some(content),
            _ => None,
        }
    }
}
