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
//!   one shape: the snapshot chunks, then the live changes. The **journal**
//!   ([`journal::Journal`]) makes a batch's appends to many logs durable with one sync.
//! - **contract** ([`contract`]): what the gateway and its clients exchange besides shape
//!   messages: change operations, outbox batches and their answers. The only module built
//!   without the `server` feature (the browser SDK's build).
//! - **routing index** ([`index::RoutingIndex`]): finds the shapes a change may touch
//!   without looking at every shape.
//! - **subquery set** ([`subquery_set::SubquerySet`]): the values one bound subquery of a
//!   filter yields, kept from the stream; values enter and leave it (docs/subqueries.md).
//!   The **set registry** ([`set_registry::SetRegistry`]) shares one set among equal
//!   subqueries and routes each change to the sets it may touch.

#[cfg(feature = "server")]
pub mod change;
pub mod contract;
#[cfg(feature = "server")]
pub mod datetime;
#[cfg(feature = "server")]
pub mod durable;
#[cfg(feature = "server")]
pub mod index;
#[cfg(feature = "server")]
pub mod journal;
#[cfg(feature = "server")]
pub mod log;
#[cfg(feature = "server")]
pub mod numeric;
#[cfg(feature = "server")]
pub mod offset;
#[cfg(feature = "server")]
pub mod set_registry;
#[cfg(feature = "server")]
pub mod shape;
#[cfg(feature = "server")]
pub mod subquery_set;
#[cfg(feature = "server")]
pub mod subset;
#[cfg(feature = "server")]
pub mod table;
#[cfg(feature = "server")]
pub mod value;
#[cfg(feature = "server")]
pub mod where_clause;
#[cfg(feature = "server")]
pub mod wire;
