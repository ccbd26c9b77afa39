//! What the gateway's tests and benchmarks stand on: a throwaway PostgreSQL per test (copied
//! from one `initdb`'d template), the real `gateway` binary as a child process, and clients
//! that speak the shape protocol. Every wait here has a deadline; none is a bare sleep.

mod cluster;
mod follower;
mod http;
mod node;
mod process;
mod wait;

pub use cluster::{Env, ITEMS, connect, current_wal, oracle, slot_confirmed};
pub use follower::{Follower, column_of};
pub use http::{Response, enc, get, get_as, http, metric_sum, reason};
pub use node::{node_suite, run_node_suite};
pub use process::{Gateway, free_port, gateway_binary};
pub use wait::{DEADLINE, wait_until, waiting_on_lock};
