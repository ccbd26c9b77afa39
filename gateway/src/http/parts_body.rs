//! A response body sent as the parts it is held in (a snapshot chunk's written blocks),
//! never copied into one buffer, with its exact length known up front (`content-length`).

use std::collections::VecDeque;
use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Frame, SizeHint};

pub struct PartsBody {
    parts: VecDeque<Bytes>,
    remaining: u64,
}

impl PartsBody {
    pub fn new(parts: Vec<Bytes>) -> PartsBody {
        let remaining = parts.iter().map(|p| p.len() as u64).sum();
        PartsBody { parts: parts.into(), remaining }
    }
}

impl http_body::Body for PartsBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let this = self.get_mut();
        let part = this.parts.pop_front();
        if let Some(p) = &part {
            this.remaining -= p.len() as u64;
        }
        Poll::Ready(part.map(|p| Ok(Frame::data(p))))
    }

    fn is_end_stream(&self) -> bool {
        self.remaining == 0
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.remaining)
    }
}
