//! Connections whose client stopped reading. An answer that could not write a byte for the
//! send timeout ends its connection, so what it holds is freed: a chunk of a log, an SSE
//! stream's buffered reads (Electric 1.7.8: ~400 stalled readers pinned 3.9 GB). This is
//! nginx's `send_timeout`: the clock runs only between two writes, so a client reading at
//! any pace keeps its connection, and an idle one (nothing to send) is not affected.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::serve::Listener;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Sleep;

/// Accepts connections from `L`, each guarded by the send timeout.
pub struct SendTimeout<L> {
    listener: L,
    timeout: Duration,
}

impl<L> SendTimeout<L> {
    pub fn new(listener: L, timeout: Duration) -> SendTimeout<L> {
        SendTimeout { listener, timeout }
    }
}

impl<L: Listener> Listener for SendTimeout<L> {
    type Io = Guarded<L::Io>;
    type Addr = L::Addr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        let (io, addr) = self.listener.accept().await;
        (Guarded { io, timeout: self.timeout, stalled: None }, addr)
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        self.listener.local_addr()
    }
}

/// A connection whose writes fail once none has made progress for the timeout.
pub struct Guarded<T> {
    io: T,
    timeout: Duration,
    /// Since the first write that could not proceed, until one does.
    stalled: Option<Pin<Box<Sleep>>>,
}

impl<T> Guarded<T> {
    fn settle<R>(&mut self, cx: &mut Context<'_>, polled: Poll<io::Result<R>>) -> Poll<io::Result<R>> {
        if polled.is_ready() {
            self.stalled = None;
            return polled;
        }
        let timeout = self.timeout;
        let stalled = self.stalled.get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
        match stalled.as_mut().poll(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(()) => {
                metrics::counter!("gateway_stalled_connections_closed_total").increment(1);
                let why = format!("the client accepted no bytes for {} s", timeout.as_secs());
                Poll::Ready(Err(io::Error::new(io::ErrorKind::TimedOut, why)))
            }
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Guarded<T> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Guarded<T> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.io).poll_write(cx, buf);
        this.settle(cx, polled)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.io).poll_write_vectored(cx, bufs);
        this.settle(cx, polled)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.io).poll_flush(cx);
        this.settle(cx, polled)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    #[tokio::test]
    async fn a_write_that_makes_no_progress_fails_after_the_timeout_and_progress_resets_it() {
        let timeout = Duration::from_millis(400);
        // A pipe holding 64 bytes, read only when the test says.
        let (mut client, server) = tokio::io::duplex(64);
        let mut guarded = Guarded { io: server, timeout, stalled: None };
        guarded.write_all(&[1; 64]).await.unwrap();
        let writer = tokio::spawn(async move {
            let r = guarded.write_all(&[2; 64]).await;
            (r, guarded)
        });
        // Progress within the timeout, twice: the clock starts again each time.
        let mut buf = [0u8; 32];
        for _ in 0..2 {
            tokio::time::sleep(timeout * 3 / 4).await;
            tokio::io::AsyncReadExt::read_exact(&mut client, &mut buf).await.unwrap();
        }
        let (r, mut guarded) = writer.await.unwrap();
        r.expect("a client reading slowly keeps its connection");
        let started = std::time::Instant::now();
        let e = guarded.write_all(&[3; 64]).await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::TimedOut);
        assert!(started.elapsed() >= timeout, "{:?}", started.elapsed());
        drop(client);
    }
}
