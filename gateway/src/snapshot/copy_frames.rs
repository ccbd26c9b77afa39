//! COPY output in a message per read instead of a message per row.
//!
//! PostgreSQL sends `COPY … TO STDOUT` as one CopyData message per row, and tokio-postgres
//! handles each on its own (a parse, a reference-counted buffer, a poll of the reader): for
//! narrow rows that was a third of a snapshot's CPU in the gateway. Between the socket and
//! tokio-postgres, [`CopyFrames`] merges each run of consecutive CopyData messages that one
//! read brought into a single CopyData message carrying their bytes in order. COPY's output
//! is a byte stream, so its reader sees the same bytes; every other message passes as it
//! came, in order. What the client writes goes straight to the socket. While a long COPY
//! streams in, the socket wakes its reader less often ([`ReadPacing`]).

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, BytesMut};
use postgres_protocol::message::backend::Header;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::read_pacing::{LONG_COPY, LowWater, ReadPacing};

/// How much is read from the socket at a time (more than a paced reader waits for).
const READ: usize = 256 * 1024;
const COPY_DATA: u8 = b'd';
/// A message's tag and length, the length counting itself.
const HEADER: usize = 5;
/// Merged messages end past this size. tokio-util's `Framed`, under tokio-postgres, reads
/// into 8 KiB buffers and grows one by another 8 KiB (copying what it holds) each time a
/// message does not fit: merged messages much larger made the gateway slower, not faster.
const MERGED_MAX: usize = 4 * 1024;

/// A PostgreSQL connection's stream whose server messages come with CopyData runs merged.
pub struct CopyFrames<S> {
    inner: S,
    /// Read from the socket, not yet a whole message.
    raw: BytesMut,
    /// Whole messages, merged, for the reader.
    merged: BytesMut,
    /// CopyData bytes since the last other message.
    copy_run: usize,
    pacing: ReadPacing,
}

impl<S> CopyFrames<S> {
    pub fn new(inner: S) -> CopyFrames<S> {
        CopyFrames { inner, raw: BytesMut::new(), merged: BytesMut::new(), copy_run: 0, pacing: ReadPacing::default() }
    }

    /// Moves `raw`'s whole messages to `merged`, each run of CopyData messages as one; true
    /// when a COPY's output ended.
    fn merge(&mut self) -> bool {
        let mut ended = false;
        let mut at = 0;
        // Where the CopyData message being extended starts in `merged`.
        let mut run: Option<usize> = None;
        loop {
            let header = match Header::parse(&self.raw[at..]) {
                Ok(Some(header)) => header,
                Ok(None) => break,
                // A malformed length: handed on as it is, for tokio-postgres to report.
                Err(_) => {
                    end_run(&mut self.merged, run.take());
                    self.merged.extend_from_slice(&self.raw[at..]);
                    at = self.raw.len();
                    break;
                }
            };
            let len = header.len() as usize + 1;
            let Some(message) = self.raw.get(at..at + len) else { break };
            if header.tag() == COPY_DATA {
                self.copy_run += len - HEADER;
                if run.is_some_and(|start| self.merged.len() - start + len > MERGED_MAX) {
                    end_run(&mut self.merged, run.take());
                }
                let merged = &mut self.merged;
                run.get_or_insert_with(|| {
                    merged.extend_from_slice(&[COPY_DATA, 0, 0, 0, 0]);
                    merged.len() - HEADER
                });
                merged.extend_from_slice(&message[HEADER..]);
            } else {
                end_run(&mut self.merged, run.take());
                self.merged.extend_from_slice(message);
                ended |= std::mem::take(&mut self.copy_run) > 0;
            }
            at += len;
        }
        end_run(&mut self.merged, run);
        self.raw.advance(at);
        ended
    }
}

/// Writes the length of the CopyData message at `start` in `merged`, now that its bytes are in.
fn end_run(merged: &mut BytesMut, start: Option<usize>) {
    if let Some(start) = start {
        // At most one read and one message (PostgreSQL sends none past 1 GiB): under 2 GiB.
        let len = (merged.len() - start - 1) as u32;
        merged[start + 1..start + HEADER].copy_from_slice(&len.to_be_bytes());
    }
}

impl<S: AsyncRead + LowWater + Unpin> AsyncRead for CopyFrames<S> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        while this.merged.is_empty() {
            this.raw.reserve(READ);
            let before = this.raw.len();
            if tokio_util::io::poll_read_buf(Pin::new(&mut this.inner), cx, &mut this.raw)?.is_pending() {
                this.pacing.idle(&this.inner, this.copy_run >= LONG_COPY, cx)?;
                return Poll::Pending;
            }
            if this.raw.len() == before {
                // The end of the stream: a partial message is handed on for the reader to
                // find incomplete, as it would without this adapter.
                let rest = this.raw.split();
                this.merged.extend_from_slice(&rest);
                break;
            }
            this.pacing.read();
            if this.merge() {
                this.pacing.copy_ended(&this.inner)?;
            }
        }
        let n = this.merged.len().min(buf.remaining());
        buf.put_slice(&this.merged[..n]);
        this.merged.advance(n);
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for CopyFrames<S> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

/// A server message: its tag, length and body.
#[cfg(test)]
pub(super) fn message(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut m = vec![tag];
    m.extend_from_slice(&(body.len() as u32 + 4).to_be_bytes());
    m.extend_from_slice(body);
    m
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, DuplexStream};

    use super::*;

    impl LowWater for DuplexStream {
        fn set_low_water(&self, _bytes: usize) -> io::Result<bool> {
            Ok(false)
        }
    }

    /// Reads everything `wire` sends, written to the socket in pieces of `piece` bytes.
    async fn read_all(wire: &[u8], piece: usize) -> Vec<u8> {
        let pieces: Vec<Vec<u8>> = wire.chunks(piece).map(<[u8]>::to_vec).collect();
        let (mut socket, server) = tokio::io::duplex(wire.len().max(1));
        tokio::spawn(async move {
            use tokio::io::AsyncWriteExt;
            for p in pieces {
                socket.write_all(&p).await.unwrap();
                tokio::task::yield_now().await;
            }
        });
        let mut out = Vec::new();
        CopyFrames::new(server).read_to_end(&mut out).await.unwrap();
        out
    }

    #[tokio::test]
    async fn runs_of_copy_data_become_one_message_and_others_pass_unchanged() {
        let mut wire = message(b'H', &[0, 0, 0]);
        for row in ["1\ta\n", "2\tb\n", "3\tc\n"] {
            wire.extend(message(b'd', row.as_bytes()));
        }
        wire.extend(message(b'c', b""));
        wire.extend(message(b'C', b"COPY 3\0"));
        let mut expected = message(b'H', &[0, 0, 0]);
        expected.extend(message(b'd', b"1\ta\n2\tb\n3\tc\n"));
        expected.extend(message(b'c', b""));
        expected.extend(message(b'C', b"COPY 3\0"));
        assert_eq!(read_all(&wire, wire.len()).await, expected);
    }

    #[tokio::test]
    async fn the_copy_bytes_are_the_same_however_the_socket_splits_them() {
        let rows: Vec<String> = (0..2000).map(|i| format!("{i}\t{}\n", "x".repeat(i % 37))).collect();
        let mut wire = Vec::new();
        for row in &rows {
            wire.extend(message(b'd', row.as_bytes()));
        }
        wire.extend(message(b'c', b""));
        for piece in [1, 3, 7, 64, 1000, wire.len()] {
            let out = read_all(&wire, piece).await;
            // Walk the merged messages: CopyData payloads concatenated, then CopyDone.
            let (mut at, mut payload, mut tags) = (0, Vec::new(), Vec::new());
            while at < out.len() {
                let len = u32::from_be_bytes(out[at + 1..at + 5].try_into().unwrap()) as usize;
                tags.push(out[at]);
                if out[at] == b'd' {
                    assert!(len < MERGED_MAX, "a merged message of {} bytes", 1 + len);
                    payload.extend_from_slice(&out[at + 5..at + 1 + len]);
                }
                at += 1 + len;
            }
            assert_eq!(at, out.len(), "whole messages, piece {piece}");
            assert_eq!(payload, rows.concat().into_bytes(), "piece {piece}");
            assert_eq!(tags.last(), Some(&b'c'));
            let most = 2 + wire.len() / piece.min(MERGED_MAX - HEADER - 40);
            assert!(tags.len() <= most, "merged: {} messages for pieces of {piece}", tags.len());
        }
    }

    #[tokio::test]
    async fn a_stream_ending_mid_message_hands_on_the_partial_message() {
        let mut wire = message(b'd', b"1\n");
        let partial = &message(b'd', b"22\n")[..4];
        wire.extend_from_slice(partial);
        let mut expected = message(b'd', b"1\n");
        expected.extend_from_slice(partial);
        assert_eq!(read_all(&wire, 2).await, expected);
    }

    #[tokio::test]
    async fn a_malformed_length_is_handed_on_unmerged() {
        let mut wire = message(b'd', b"1\n");
        wire.extend_from_slice(&[b'd', 0, 0, 0, 1, 9, 9]);
        let mut expected = message(b'd', b"1\n");
        expected.extend_from_slice(&[b'd', 0, 0, 0, 1, 9, 9]);
        assert_eq!(read_all(&wire, wire.len()).await, expected);
    }
}
