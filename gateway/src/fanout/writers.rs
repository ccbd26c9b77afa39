//! Which shape logs keep an append descriptor open between batches. Reopening a log for
//! every batch costs three system calls per shape; keeping every log open would exhaust
//! file descriptors with many shapes. The most recently written ones stay open, up to a cap.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::live_shape::LiveShape;

/// How often the open descriptors of rotated logs are looked for. Visiting every open
/// writer after each batch took 15% of the gateway's CPU at 10,000 open logs; a rotated
/// log's descriptor may stay open this long.
const SWEEP_EVERY: Duration = Duration::from_secs(1);

pub struct Writers {
    cap: usize,
    batch: u64,
    open: HashMap<u64, (Arc<LiveShape>, u64)>,
    swept_at: Instant,
}

impl Writers {
    pub fn new(cap: usize) -> Writers {
        Writers { cap: cap.max(1), batch: 0, open: HashMap::new(), swept_at: Instant::now() }
    }

    /// A shape's log was written in the current batch.
    pub fn used(&mut self, shape: &Arc<LiveShape>) {
        self.open.insert(shape.id, (shape.clone(), self.batch));
    }

    /// Ends a batch: closes rotated logs (at most once per `SWEEP_EVERY`), and the least
    /// recently written ones beyond the cap.
    pub fn trim(&mut self) {
        self.batch += 1;
        if self.swept_at.elapsed() >= SWEEP_EVERY {
            self.swept_at = Instant::now();
            self.open.retain(|_, (shape, _)| {
                let gone = shape.log.version().gone;
                if gone {
                    shape.log.release_writer();
                }
                !gone
            });
        }
        if self.open.len() <= self.cap {
            return;
        }
        // Evict down to three quarters so trimming is rare, oldest first.
        let mut by_age: Vec<(u64, u64)> = self.open.iter().map(|(id, (_, used))| (*used, *id)).collect();
        by_age.sort_unstable();
        let excess = self.open.len() - self.cap * 3 / 4;
        for (_, id) in by_age.into_iter().take(excess) {
            if let Some((shape, _)) = self.open.remove(&id) {
                shape.log.release_writer();
            }
        }
    }
}
