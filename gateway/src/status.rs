//! Health the HTTP layer reports: is replication connected, and if not, why.

use std::sync::Mutex;

#[derive(Debug, Default)]
pub struct Status {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    replication_connected: bool,
    last_error: Option<String>,
}

impl Status {
    pub fn set_replication(&self, connected: bool, error: Option<String>) {
        let mut i = self.inner.lock().unwrap();
        i.replication_connected = connected;
        if error.is_some() || connected {
            i.last_error = error;
        }
    }

    /// `Ok` when ready to serve, else the reason.
    pub fn readiness(&self) -> Result<(), String> {
        let i = self.inner.lock().unwrap();
        if i.replication_connected {
            Ok(())
        } else {
            Err(match &i.last_error {
                Some(e) => format!("replication is not connected: {e}"),
                None => "replication is starting".into(),
            })
        }
    }
}
