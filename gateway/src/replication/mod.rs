//! Logical replication: the slot and publication ([`slot`]), the pgoutput stream
//! ([`stream`], the only module that knows the transport crate), decoding ([`decode`]) and
//! whole-transaction assembly ([`txn`]).

pub mod decode;
pub mod monitor;
pub mod queue;
pub mod slot;
pub mod stream;
pub mod txn;

use crate::db::DbError;

#[derive(Debug, thiserror::Error)]
pub enum ReplicationError {
    #[error(
        "wal_level is {0}, but logical replication needs wal_level = logical: run `ALTER SYSTEM SET wal_level = logical;` and restart PostgreSQL"
    )]
    WalLevel(String),
    #[error(
        "replication slot {slot:?} is lost ({detail}); drop it with `SELECT pg_drop_replication_slot('{slot}');` and restart the gateway with an empty --data-dir (clients will refetch)"
    )]
    SlotInvalidated { slot: String, detail: String },
    #[error("replication slot {slot:?} is in use by process {pid}: stop the gateway that streams from it first")]
    SlotInUse { slot: String, pid: i32 },
    #[error("replication slot {slot:?} uses plugin {plugin:?} or another database; choose another --slot")]
    SlotMismatch { slot: String, plugin: String },
    #[error("the role may not {what}: {detail}. Run as a superuser: {fix}")]
    Privilege { what: String, detail: String, fix: String },
    /// The table went away while it was being published.
    #[error("table {0} does not exist")]
    TableGone(String),
    /// Another session held a lock on the table for longer than the gateway waits.
    #[error("could not {0}: the table is locked by another session; retry")]
    TableBusy(String),
    #[error(
        "publication {0:?} was dropped; recreate it with `CREATE PUBLICATION \"{0}\";` or restart the gateway to have it created"
    )]
    PublicationDropped(String),
    #[error("cannot decode the replication stream: {0}")]
    Decode(#[from] decode::DecodeError),
    #[error("replication stream out of order: {0}")]
    Sequence(#[from] txn::SequenceError),
    #[error(
        "another gateway took over replication slot {slot:?} while this one was reconnecting; this one becomes a standby"
    )]
    LostLeadership { slot: String },
    #[error("replication connection: {0}")]
    Transport(String),
    #[error(transparent)]
    Db(#[from] DbError),
}

impl ReplicationError {
    /// Transient errors are retried with backoff; the rest stop the gateway.
    pub fn is_transient(&self) -> bool {
        match self {
            ReplicationError::Transport(_) => true,
            ReplicationError::Db(e) => e.is_transient(),
            _ => false,
        }
    }
}
