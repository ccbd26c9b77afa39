//! Groups decoded messages into whole transactions: nothing of a transaction leaves here
//! before its Commit.

use shapes::change::{Txn, TxnItem};
use shapes::offset::Lsn;

use super::decode::Message;

#[derive(Debug, Default)]
pub struct TxnAssembler {
    open: Option<Txn>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SequenceError {
    #[error("a change arrived outside a transaction")]
    ChangeOutsideTxn,
    #[error("a commit arrived without a begin")]
    CommitWithoutBegin,
}

impl TxnAssembler {
    pub fn begin(&mut self, xid: u32) {
        // A Begin while open means the previous transaction was abandoned by a reconnect.
        self.open = Some(Txn { xid, commit_lsn: Lsn(0), end_lsn: Lsn(0), items: Vec::new() });
    }

    pub fn is_open(&self) -> bool {
        self.open.is_some()
    }

    pub fn push(&mut self, m: Message) -> Result<(), SequenceError> {
        let item = match m {
            Message::Relation(r) => TxnItem::Relation(r),
            Message::Change { relation, change } => TxnItem::Change { relation, change },
            Message::Truncate { relations } => TxnItem::Truncate { relations },
            Message::Ignored => return Ok(()),
        };
        self.open.as_mut().ok_or(SequenceError::ChangeOutsideTxn)?.items.push(item);
        Ok(())
    }

    pub fn commit(&mut self, commit_lsn: Lsn, end_lsn: Lsn) -> Result<Txn, SequenceError> {
        let mut txn = self.open.take().ok_or(SequenceError::CommitWithoutBegin)?;
        txn.commit_lsn = commit_lsn;
        txn.end_lsn = end_lsn;
        Ok(txn)
    }

    /// Forgets a partial transaction (the connection dropped; it will be resent).
    pub fn reset(&mut self) {
        self.open = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shapes::change::{Cell, Change};

    #[test]
    fn a_transaction_is_emitted_whole_at_commit() {
        let mut a = TxnAssembler::default();
        assert_eq!(a.push(Message::Truncate { relations: vec![1] }), Err(SequenceError::ChangeOutsideTxn));
        a.begin(7);
        a.push(Message::Change { relation: 1, change: Change::Insert { new: vec![Cell::Null] } }).unwrap();
        a.push(Message::Ignored).unwrap();
        let t = a.commit(Lsn(10), Lsn(11)).unwrap();
        assert_eq!((t.xid, t.items.len(), t.end_lsn), (7, 1, Lsn(11)));
        assert_eq!(a.commit(Lsn(12), Lsn(13)), Err(SequenceError::CommitWithoutBegin));
    }
}
