//! Process limits: every shape log keeps files open and every live client holds a socket,
//! so the soft open-files limit (often 1024) is raised to the hard limit at start.

use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};

/// Raises the soft open-files limit to the hard limit; returns the limit in effect.
pub fn raise_open_files() -> Option<u64> {
    let limit = getrlimit(Resource::Nofile);
    if limit.current == limit.maximum {
        return limit.current;
    }
    match setrlimit(Resource::Nofile, Rlimit { current: limit.maximum, maximum: limit.maximum }) {
        Ok(()) => limit.maximum,
        Err(e) => {
            tracing::warn!(error = %e, soft = ?limit.current, "could not raise the open-files limit; many shapes or clients may fail with 'too many open files'");
            limit.current
        }
    }
}
