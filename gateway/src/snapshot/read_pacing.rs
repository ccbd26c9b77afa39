//! Fewer wake-ups while a long COPY streams in.
//!
//! PostgreSQL writes COPY output to its socket 8 KiB at a time, and each write woke the
//! reader: ~1,200 wake-ups of the gateway's runtime for a million narrow rows. On a machine
//! short of cores each could take the core the COPY runs on (its backend was preempted as
//! often). Once a COPY has brought [`LONG_COPY`] bytes, the socket's receive low-water mark
//! (`SO_RCVLOWAT`) is raised, so the kernel wakes the reader when [`LOW_WATER`] bytes wait
//! rather than at every write. A COPY's end is shorter than that: if nothing wakes the
//! reader within [`STALL`], the mark drops back to one byte (the kernel then signals what
//! is queued at once) until the next read. When the COPY ends, the mark drops back before
//! the session's next query.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::Context;
use std::time::Duration;

use tokio::time::{Instant, Sleep};

/// CopyData bytes after which a COPY counts as long.
pub(super) const LONG_COPY: usize = 1 << 20;
/// What a long COPY's reader waits for (about 2 ms of PostgreSQL's output of narrow rows).
const LOW_WATER: usize = 128 * 1024;
/// How long the reader waits for [`LOW_WATER`] bytes before it takes what there is.
const STALL: Duration = Duration::from_millis(3);

/// A socket whose reader can ask to be woken only once a number of bytes has arrived.
pub trait LowWater {
    /// Sets the receive low-water mark. False where readiness ignores it (Unix sockets):
    /// there a reader would only wait for its timer.
    fn set_low_water(&self, bytes: usize) -> io::Result<bool>;
}

impl LowWater for tokio::net::TcpStream {
    #[allow(unsafe_code)]
    fn set_low_water(&self, bytes: usize) -> io::Result<bool> {
        use std::os::fd::{AsFd, AsRawFd};
        // Neither rustix nor socket2 sets this option.
        let value = libc::c_int::try_from(bytes).unwrap_or(libc::c_int::MAX);
        let fd = self.as_fd();
        // SAFETY: setsockopt reads `size_of::<c_int>()` bytes at a pointer to a live c_int,
        // for a descriptor borrowed for the call.
        let set = unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVLOWAT,
                (&raw const value).cast(),
                size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if set == 0 { Ok(true) } else { Err(io::Error::last_os_error()) }
    }
}

impl LowWater for tokio::net::UnixStream {
    fn set_low_water(&self, _bytes: usize) -> io::Result<bool> {
        Ok(false)
    }
}

/// Where a socket's low-water mark stands.
#[derive(Default)]
pub(super) enum ReadPacing {
    /// One byte, the socket's default: every write wakes the reader.
    #[default]
    Eager,
    /// [`LOW_WATER`] bytes, or the timer.
    Raised(Pin<Box<Sleep>>),
    /// The timer fired: one byte until the next read.
    Stalled,
    /// The socket has no low-water mark to raise.
    Off,
}

impl ReadPacing {
    /// The socket had nothing to read; `long_copy` tells whether a long COPY is under way.
    /// Registers the timer with `cx` while the mark is raised.
    pub(super) fn idle(&mut self, socket: &impl LowWater, long_copy: bool, cx: &mut Context<'_>) -> io::Result<()> {
        if matches!(self, ReadPacing::Eager) && long_copy {
            *self = match socket.set_low_water(LOW_WATER) {
                Ok(true) => ReadPacing::Raised(Box::pin(tokio::time::sleep(STALL))),
                Ok(false) => ReadPacing::Off,
                Err(e) => {
                    tracing::debug!(error = %e, "the snapshot session's receive low-water mark cannot be set");
                    ReadPacing::Off
                }
            };
        }
        if let ReadPacing::Raised(timer) = self
            && timer.as_mut().poll(cx).is_ready()
        {
            socket.set_low_water(1)?;
            *self = ReadPacing::Stalled;
        }
        Ok(())
    }

    /// A read brought bytes: a raised mark waits afresh, a stalled one may rise again.
    pub(super) fn read(&mut self) {
        match self {
            ReadPacing::Raised(timer) => timer.as_mut().reset(Instant::now() + STALL),
            ReadPacing::Stalled => *self = ReadPacing::Eager,
            ReadPacing::Eager | ReadPacing::Off => {}
        }
    }

    /// The COPY ended: the session's next replies are small.
    pub(super) fn copy_ended(&mut self, socket: &impl LowWater) -> io::Result<()> {
        match self {
            ReadPacing::Raised(_) => {
                socket.set_low_water(1)?;
                *self = ReadPacing::Eager;
            }
            ReadPacing::Stalled => *self = ReadPacing::Eager,
            ReadPacing::Eager | ReadPacing::Off => {}
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};
    use std::task::Poll;

    use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt, DuplexStream, ReadBuf};

    use super::super::copy_frames::{CopyFrames, message};
    use super::*;

    /// An in-memory socket that records the low-water marks set on it.
    struct Recorded {
        inner: DuplexStream,
        marks: Arc<Mutex<Vec<usize>>>,
    }

    impl LowWater for Recorded {
        fn set_low_water(&self, bytes: usize) -> io::Result<bool> {
            self.marks.lock().unwrap().push(bytes);
            Ok(true)
        }
    }

    impl AsyncRead for Recorded {
        fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
            Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
        }
    }

    /// CopyData messages of 8 KiB (as PostgreSQL sends them) carrying `bytes` in all.
    fn copy_data(bytes: usize) -> Vec<u8> {
        let row = [b'x'; 8187];
        (0..bytes / row.len()).flat_map(|_| message(b'd', &row)).collect()
    }

    fn copy_end() -> Vec<u8> {
        [message(b'c', b""), message(b'C', b"COPY 1\0"), message(b'Z', b"I")].concat()
    }

    async fn wait_for(marks: &Mutex<Vec<usize>>, what: &str, done: impl Fn(&[usize]) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !done(&marks.lock().unwrap()) {
            assert!(Instant::now() < deadline, "{what}: marks {:?}", marks.lock().unwrap());
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    #[tokio::test]
    async fn a_long_copy_raises_the_mark_and_a_stall_or_its_end_lowers_it() {
        let (mut server, inner) = tokio::io::duplex(64 * 1024);
        let marks = Arc::new(Mutex::new(Vec::new()));
        let mut reader = CopyFrames::new(Recorded { inner, marks: marks.clone() });
        let reading = tokio::spawn(async move {
            let mut out = Vec::new();
            reader.read_to_end(&mut out).await.map(|_| out)
        });
        server.write_all(&message(b'H', &[0, 0, 0])).await.unwrap();
        server.write_all(&copy_data(LONG_COPY / 2)).await.unwrap();
        tokio::time::sleep(STALL * 5).await;
        assert!(marks.lock().unwrap().is_empty(), "a short COPY's reader is woken by every write");

        server.write_all(&copy_data(LONG_COPY)).await.unwrap();
        // Raised, then lowered by a stall (on a busy machine the writer may stall mid-way too).
        wait_for(&marks, "a long COPY's reader waits for more, then takes what there is", |m| {
            m.first() == Some(&LOW_WATER) && m.last() == Some(&1)
        })
        .await;

        server.write_all(&copy_data(LONG_COPY)).await.unwrap();
        server.write_all(&copy_end()).await.unwrap();
        drop(server);
        let out = reading.await.unwrap().unwrap();
        assert!(out.ends_with(&copy_end()), "every message arrived");
        let marks = marks.lock().unwrap();
        assert!(marks.len() >= 4, "the mark rose again: {marks:?}");
        let alternating = marks.iter().enumerate().all(|(i, &m)| m == if i % 2 == 0 { LOW_WATER } else { 1 });
        assert!(alternating && marks.last() == Some(&1), "raised, then lowered by a stall or the end: {marks:?}");
    }

    /// Over TCP, a raised mark really holds back the COPY's last bytes: only the timer lets
    /// the reader see them (without it this test hangs), whether they come after a pause
    /// longer than the timer, shorter, or at once.
    #[tokio::test]
    async fn over_tcp_the_end_of_a_long_copy_arrives_after_any_pause() {
        for pause in [Duration::ZERO, Duration::from_millis(1), STALL * 10] {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let client = tokio::net::TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
            let (mut server, _) = listener.accept().await.unwrap();
            let (hold, held) = tokio::sync::oneshot::channel::<()>();
            tokio::spawn(async move {
                server.write_all(&copy_data(2 * LONG_COPY)).await.unwrap();
                tokio::time::sleep(pause).await;
                server.write_all(&copy_end()).await.unwrap();
                let _ = held.await; // the connection stays open, as a session's does
            });
            let mut reader = CopyFrames::new(client);
            let mut out = Vec::new();
            let read = tokio::time::timeout(Duration::from_secs(20), async {
                while !out.ends_with(&copy_end()) {
                    let mut buf = [0; 64 * 1024];
                    let n = reader.read(&mut buf).await.unwrap();
                    assert!(n > 0, "the stream ended early");
                    out.extend_from_slice(&buf[..n]);
                }
            })
            .await;
            assert!(read.is_ok(), "after a pause of {pause:?} the COPY's end never arrived");
            drop(hold);
        }
    }
}
