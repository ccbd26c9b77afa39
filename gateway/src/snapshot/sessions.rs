//! Pooled sessions for snapshot queries: a new shape reuses a session instead of starting a
//! PostgreSQL backend (a process fork and an authentication) of its own, which for small
//! shapes costs more than the snapshot.

use deadpool_postgres::{Manager, ManagerConfig, Object, Pool, PoolError, RecyclingMethod};
use tokio_postgres::{Client, Config, NoTls};

use crate::db::{self, DbError};

pub struct Sessions {
    pool: Pool,
    /// Where the sessions go, for connection errors.
    target: String,
}

/// A session taken from the pool. Dropped without [`Session::release`] (its task was
/// cancelled mid-query, or a query failed), it is closed rather than returned: it may be
/// inside a transaction or a COPY.
pub struct Session(Option<Object>);

impl Sessions {
    /// At most `size` sessions, each opened when first needed.
    pub fn new(cfg: &Config, size: usize) -> Result<Sessions, DbError> {
        let manager =
            Manager::from_config(cfg.clone(), NoTls, ManagerConfig { recycling_method: RecyclingMethod::Fast });
        let pool = Pool::builder(manager).max_size(size).build().map_err(|e| DbError::Pool(e.to_string()))?;
        Ok(Sessions { pool, target: db::describe(cfg) })
    }

    pub async fn get(&self) -> Result<Session, DbError> {
        let object = self.pool.get().await.map_err(|e| match e {
            PoolError::Backend(source) => DbError::Connect { target: self.target.clone(), source },
            other => DbError::Pool(other.to_string()),
        })?;
        Ok(Session(Some(object)))
    }
}

impl Session {
    pub fn client(&self) -> Result<&Client, DbError> {
        self.0.as_deref().map(|c| &**c).ok_or_else(|| DbError::Pool("the session was released".into()))
    }

    /// The session is idle, outside any transaction: back to the pool.
    pub fn release(mut self) {
        self.0.take();
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        if let Some(object) = self.0.take() {
            // Detached from the pool, the client closes its connection as it drops here.
            drop(Object::take(object));
        }
    }
}
