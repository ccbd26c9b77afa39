//! Pooled sessions for snapshot queries: a new shape reuses a session instead of starting a
//! PostgreSQL backend (a process fork and an authentication) of its own, which for small
//! shapes costs more than the snapshot. Their COPY output comes merged ([`CopyFrames`]).

use std::sync::Arc;

use deadpool_postgres::{Connect, Manager, ManagerConfig, Object, Pool, PoolError, RecyclingMethod};
use futures::future::BoxFuture;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::task::JoinHandle;
use tokio_postgres::{Client, Config, NoTls};

use super::copy_frames::CopyFrames;
use super::read_pacing::LowWater;
use crate::db::{self, DbError, Socket};

pub struct Sessions {
    pool: Pool,
    server: Arc<Config>,
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
            Manager::from_connect(cfg.clone(), MergedCopy, ManagerConfig { recycling_method: RecyclingMethod::Fast });
        let pool = Pool::builder(manager).max_size(size).build().map_err(|e| DbError::Pool(e.to_string()))?;
        Ok(Sessions { pool, server: Arc::new(cfg.clone()), target: db::describe(cfg) })
    }

    /// A guard that cancels `client`'s running query when dropped (unless disarmed).
    pub fn cancel_on_drop(&self, client: &Client) -> db::CancelOnDrop {
        db::CancelOnDrop::over_own_socket(client, self.server.clone())
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

/// Opens sessions whose socket is wrapped in [`CopyFrames`]. tokio-postgres hands out no
/// socket it opened, so the gateway opens it ([`db::open_socket`]); where that declines (a
/// list of hosts, a socket that failed to open) tokio-postgres connects, unwrapped, and
/// its error names the cause.
struct MergedCopy;

impl Connect for MergedCopy {
    fn connect(&self, cfg: &Config) -> BoxFuture<'_, Result<(Client, JoinHandle<()>), tokio_postgres::Error>> {
        let cfg = cfg.clone();
        Box::pin(async move {
            match db::open_socket(&cfg).await {
                Some(Socket::Tcp(socket)) => start(&cfg, socket).await,
                Some(Socket::Unix(socket)) => start(&cfg, socket).await,
                None => {
                    let (client, connection) = cfg.connect(NoTls).await?;
                    Ok((client, db::drive(connection)))
                }
            }
        })
    }
}

async fn start<S>(cfg: &Config, socket: S) -> Result<(Client, JoinHandle<()>), tokio_postgres::Error>
where
    S: AsyncRead + AsyncWrite + LowWater + Unpin + Send + 'static,
{
    let (client, connection) = cfg.connect_raw(CopyFrames::new(socket), NoTls).await?;
    Ok((client, db::drive(connection)))
}
