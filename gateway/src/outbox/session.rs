//! A batch's transaction on a pooled session. Its `BEGIN` travels with the first statement
//! instead of waiting a round trip of its own (tokio-postgres's transaction waits for it),
//! and a transaction that ends without `COMMIT` (an error, a cancelled request) is rolled
//! back before the session goes back to the pool, or the session is closed.

use std::future::Future;
use std::ops::Deref;

use deadpool_postgres::{ClientWrapper, Object};

pub struct BatchTx {
    /// `None` once committed or rolled back.
    session: Option<Object>,
}

impl BatchTx {
    pub fn new(session: Object) -> BatchTx {
        BatchTx { session: Some(session) }
    }

    /// Begins the transaction and runs `first` (built on this transaction, not yet polled)
    /// in it, pipelined: the two are polled in order, so `BEGIN` is sent before anything
    /// `first` sends.
    pub async fn begin_with<T>(
        &self,
        first: impl Future<Output = Result<T, tokio_postgres::Error>>,
    ) -> Result<T, tokio_postgres::Error> {
        let (_, value) = futures::future::try_join(self.batch_execute("BEGIN"), first).await?;
        Ok(value)
    }

    pub async fn commit(mut self) -> Result<(), tokio_postgres::Error> {
        self.end("COMMIT").await
    }

    pub async fn rollback(mut self) -> Result<(), tokio_postgres::Error> {
        self.end("ROLLBACK").await
    }

    async fn end(&mut self, command: &str) -> Result<(), tokio_postgres::Error> {
        let result = self.batch_execute(command).await;
        if result.is_ok() {
            self.session = None;
        }
        result
    }
}

impl Deref for BatchTx {
    type Target = ClientWrapper;

    fn deref(&self) -> &ClientWrapper {
        self.session.as_ref().expect("a transaction's session is there until it ends")
    }
}

impl Drop for BatchTx {
    fn drop(&mut self) {
        let Some(session) = self.session.take() else { return };
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                runtime.spawn(async move {
                    if session.batch_execute("ROLLBACK").await.is_err() {
                        // Closed instead of pooled: its state is unknown.
                        drop(Object::take(session));
                    }
                });
            }
            Err(_) => drop(Object::take(session)),
        }
    }
}
