//! Integration tests: the real gateway binary against a real PostgreSQL (one throwaway
//! cluster per test), driven through the shape protocol.

mod api;
mod attacks;
mod auth;
mod cache_tier;
mod chaos;
mod durability;
mod electric_client;
mod escapes;
mod failover;
mod faults;
mod filters;
mod http2;
mod large_txn;
mod layout;
mod operations;
mod outbox;
mod overload;
mod parity;
mod relational;
mod schemathesis;
mod sdk;
mod subqueries;
mod sync;
