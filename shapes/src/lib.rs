//! What is synced.
//!
//! Glossary:
//! - **table schema** ([`table::TableSchema`]): a published table's columns as PostgreSQL
//!   reports them, in the order logical replication sends them.
//! - **shape** ([`shape::ShapeDef`]): a table, an optional row filter (`where`), a column
//!   list and a replica mode. Two equal definitions are one shape with one log.
//! - **change** ([`change::Change`]): one row insert, update or delete, decoded from WAL.
//! - **transaction** ([`change::Txn`]): the changes of one committed PostgreSQL
//!   transaction; clients see a transaction whole or not at all.
//! - **offset** ([`offset::LogOffset`]): a position in a shape log, `<lsn>_<op>`.
//! - **shape log** ([`log::ShapeLog`]): the durable, append-only list of wire messages of
//!   one shape: the snapshot chunks, then the live changes.
//! - **routing index** ([`index::RoutingIndex`]): finds the shapes a change may touch
//!   without looking at every shape.

pub mod change;
pub mod datetime;
pub mod durable;
pub mod index;
pub mod log;
pub mod numeric;
pub mod offset;
pub mod shape;
pub mod subset;
pub mod table;
pub mod value;
pub mod where_clause;
pub mod wire;
