//! Groups decoded messages into transactions. A transaction that fits in one part (the
//! queue's memory budget sets its size) is passed on whole at its Commit. A larger one is passed
//! on in parts as it arrives, so the
//! gateway never holds it whole: pgoutput (protocol version 1) sends a transaction only once
//! it has committed, so every part is final; the fan-out writes the parts unpublished and
//! publishes them with the last one. If the connection drops in the middle, the parts sent
//! are void ([`Decoded::Abandoned`]) and PostgreSQL sends the transaction again.

use shapes::change::{Txn, TxnItem};
use shapes::offset::Lsn;

use super::decode::Message;

/// What the assembler passes on to the fan-out.
#[derive(Debug, PartialEq, Eq)]
pub enum Decoded {
    /// A whole transaction, or a position marker.
    Whole(Txn),
    /// Changes of a transaction too large to hold whole, in order; `end_lsn` is set on the
    /// last part only.
    Part { txn: Txn, last: bool },
    /// The transaction whose parts were passed on will not be finished on this connection.
    Abandoned,
}

/// Memory a decoded item takes beyond its message's bytes (the item, its vector, and each
/// cell's handle on the shared buffer): what the byte bounds count.
const ITEM_OVERHEAD: usize = 96;
const CELL_OVERHEAD: usize = 40;

/// The bytes `m` holds while queued: its message's bytes and the decoded structure.
pub fn held_bytes(m: &Message, message_len: usize) -> usize {
    let cells = match m {
        Message::Change { change, .. } => change.rows().iter().map(|r| r.len()).sum(),
        _ => 0,
    };
    message_len + ITEM_OVERHEAD + cells * CELL_OVERHEAD
}

#[derive(Debug)]
pub struct TxnAssembler {
    open: Option<Open>,
    /// Past this many held bytes a transaction is passed on in parts of about this many.
    part_bytes: usize,
}

#[derive(Debug)]
struct Open {
    txn: Txn,
    /// Bytes held by `txn.items`.
    bytes: usize,
    /// Items in all parts passed on, and whether any was.
    passed: usize,
    in_parts: bool,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SequenceError {
    #[error("a change arrived outside a transaction")]
    ChangeOutsideTxn,
    #[error("a commit arrived without a begin")]
    CommitWithoutBegin,
}

impl TxnAssembler {
    /// Holds transactions of up to `part_bytes` whole; larger ones go in parts of that size.
    pub fn new(part_bytes: usize) -> TxnAssembler {
        TxnAssembler { open: None, part_bytes }
    }

    /// Starts transaction `xid`, whose commit record is at `commit_lsn`. A Begin while one
    /// is open means the previous one was abandoned (a reconnect): see [`Self::reset`].
    pub fn begin(&mut self, xid: u32, commit_lsn: Lsn) -> Option<Decoded> {
        let abandoned = self.reset();
        let txn = Txn { xid, commit_lsn, end_lsn: Lsn(0), items: Vec::new() };
        self.open = Some(Open { txn, bytes: 0, passed: 0, in_parts: false });
        abandoned
    }

    pub fn is_open(&self) -> bool {
        self.open.is_some()
    }

    /// Adds a message of `message_len` bytes; returns a part to pass on (and the bytes it
    /// holds) once the open transaction holds more than it may.
    pub fn push(&mut self, m: Message, message_len: usize) -> Result<Option<(Decoded, usize)>, SequenceError> {
        let open = self.open.as_mut().ok_or(SequenceError::ChangeOutsideTxn)?;
        let bytes = held_bytes(&m, message_len);
        let item = match m {
            Message::Relation(r) => TxnItem::Relation(r),
            Message::Change { relation, change } => TxnItem::Change { relation, change },
            Message::Truncate { relations } => TxnItem::Truncate { relations },
            Message::Ignored => return Ok(None),
        };
        open.txn.items.push(item);
        open.bytes += bytes;
        if open.bytes <= self.part_bytes {
            return Ok(None);
        }
        open.in_parts = true;
        open.passed += open.txn.items.len();
        let held = std::mem::take(&mut open.bytes);
        let items = std::mem::take(&mut open.txn.items);
        Ok(Some((Decoded::Part { txn: Txn { items, ..open.txn.clone() }, last: false }, held)))
    }

    /// Ends the open transaction: the whole of it, or its last part. Also returns the
    /// number of changes it held and the bytes the returned value holds.
    pub fn commit(&mut self, end_lsn: Lsn) -> Result<(Decoded, usize, usize), SequenceError> {
        let Open { mut txn, bytes, passed, in_parts } = self.open.take().ok_or(SequenceError::CommitWithoutBegin)?;
        txn.end_lsn = end_lsn;
        let count = passed + txn.items.len();
        let decoded = if in_parts { Decoded::Part { txn, last: true } } else { Decoded::Whole(txn) };
        Ok((decoded, count, bytes))
    }

    /// Forgets a partial transaction (the connection dropped; it will be resent). Returns
    /// [`Decoded::Abandoned`] when parts of it were passed on.
    pub fn reset(&mut self) -> Option<Decoded> {
        self.open.take().filter(|o| o.in_parts).map(|_| Decoded::Abandoned)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shapes::change::{Cell, Change};

    fn insert(text: &str) -> Message {
        Message::Change { relation: 1, change: Change::Insert { new: vec![Cell::text(text)] } }
    }

    #[test]
    fn a_transaction_within_the_budget_is_passed_on_whole_at_commit() {
        let mut a = TxnAssembler::new(1 << 20);
        assert_eq!(a.push(Message::Truncate { relations: vec![1] }, 9), Err(SequenceError::ChangeOutsideTxn));
        assert_eq!(a.begin(7, Lsn(10)), None);
        assert_eq!(a.push(insert("a"), 20).unwrap(), None);
        assert_eq!(a.push(Message::Ignored, 5).unwrap(), None);
        let (Decoded::Whole(t), count, _) = a.commit(Lsn(11)).unwrap() else { panic!("whole") };
        assert_eq!((t.xid, t.items.len(), t.commit_lsn, t.end_lsn, count), (7, 1, Lsn(10), Lsn(11), 1));
        assert_eq!(a.commit(Lsn(13)).unwrap_err(), SequenceError::CommitWithoutBegin);
    }

    #[test]
    fn a_larger_transaction_is_passed_on_in_bounded_parts_in_order() {
        let budget = 1 << 20;
        let mut a = TxnAssembler::new(budget);
        a.begin(9, Lsn(100));
        let mut parts = Vec::new();
        let n = 100_000;
        for i in 0..n {
            if let Some((part, held)) = a.push(insert(&i.to_string()), 30).unwrap() {
                assert!(held <= budget + held_bytes(&insert("99999"), 30), "a part holds {held} bytes");
                parts.push(part);
            }
        }
        let (last, count, _) = a.commit(Lsn(101)).unwrap();
        parts.push(last);
        assert_eq!(count, n);
        assert!(parts.len() > 2, "{} parts", parts.len());
        let mut seen = 0;
        for (i, part) in parts.iter().enumerate() {
            let Decoded::Part { txn, last } = part else { panic!("a part") };
            assert_eq!((txn.xid, txn.commit_lsn, *last), (9, Lsn(100), i + 1 == parts.len()));
            assert_eq!(txn.end_lsn, if *last { Lsn(101) } else { Lsn(0) });
            for item in &txn.items {
                let TxnItem::Change { change: Change::Insert { new }, .. } = item else { panic!() };
                assert_eq!(new[0], Cell::text(&seen.to_string()), "in stream order");
                seen += 1;
            }
        }
        assert_eq!(seen, n);
    }

    #[test]
    fn a_transaction_cut_off_after_parts_were_passed_on_is_abandoned() {
        let mut a = TxnAssembler::new(1 << 10);
        a.begin(1, Lsn(5));
        assert_eq!(a.reset(), None, "nothing passed on: nothing to void");
        a.begin(2, Lsn(6));
        let mut passed = false;
        for i in 0..100 {
            passed |= a.push(insert(&i.to_string()), 30).unwrap().is_some();
        }
        assert!(passed);
        assert_eq!(a.begin(3, Lsn(7)), Some(Decoded::Abandoned));
    }
}
