//! The queue from the stream to the fan-out, bounded in bytes of decoded changes rather
//! than in transactions: a thousand queued transactions of a million rows each must not fit
//! where a thousand single-row ones do. Room is taken before an item is queued and given
//! back when the fan-out drops the item's [`Room`], after storing it; when the queue is
//! full the stream stops reading WAL (backpressure, never loss).

use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};

use super::txn::Decoded;

/// How `--txn-memory` is shared: what the queue holds, what one part of a large
/// transaction holds, and what the fan-out takes into one batch. Storing a batch takes a
/// few times its decoded bytes (planned and encoded messages per shape, the journal frame),
/// so batches and parts are small next to the queue.
#[derive(Clone, Copy, Debug)]
pub struct MemoryBudget {
    pub queue: usize,
    /// A transaction larger than this is passed on in parts of this size.
    pub part: usize,
    /// The fan-out stores whole transactions in batches of about this many bytes.
    pub batch: usize,
}

impl MemoryBudget {
    pub fn of(txn_memory: usize) -> MemoryBudget {
        let part = (txn_memory / 16).clamp(64 << 10, 8 << 20);
        MemoryBudget { queue: txn_memory, part, batch: 2 * part }
    }
}

/// The room an item takes in the queue, given back when dropped.
pub type Room = OwnedSemaphorePermit;

pub struct Queued {
    pub item: Decoded,
    pub room: Room,
}

pub struct Sender {
    tx: mpsc::UnboundedSender<Queued>,
    room: Arc<Semaphore>,
    capacity: u32,
}

pub struct Receiver {
    rx: mpsc::UnboundedReceiver<Queued>,
}

/// The fan-out has stopped.
#[derive(Debug)]
pub struct Closed;

/// A queue holding up to `capacity` bytes (an item larger than that waits for an empty queue).
pub fn bounded(capacity: usize) -> (Sender, Receiver) {
    let capacity = capacity.clamp(1, Semaphore::MAX_PERMITS.min(u32::MAX as usize)) as u32;
    let (tx, rx) = mpsc::unbounded_channel();
    (Sender { tx, room: Arc::new(Semaphore::new(capacity as usize)), capacity }, Receiver { rx })
}

impl Sender {
    /// Queues `item`, which holds `bytes`, once there is room for it.
    pub async fn send(&self, item: Decoded, bytes: usize) -> Result<(), Closed> {
        let want = bytes.clamp(1, self.capacity as usize) as u32;
        let room = self.room.clone().acquire_many_owned(want).await.map_err(|_| Closed)?;
        self.tx.send(Queued { item, room }).map_err(|_| Closed)
    }
}

impl Receiver {
    /// Waits for at least one item and takes up to `limit`; 0 once every sender is gone.
    pub async fn recv_many(&mut self, into: &mut Vec<Queued>, limit: usize) -> usize {
        self.rx.recv_many(into, limit).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shapes::change::Txn;
    use shapes::offset::Lsn;
    use std::time::Duration;

    fn txn(n: u64) -> Decoded {
        Decoded::Whole(Txn { xid: n as u32, commit_lsn: Lsn(n), end_lsn: Lsn(n + 1), items: vec![] })
    }

    #[tokio::test]
    async fn the_sender_waits_while_the_queued_bytes_fill_the_queue() {
        let (tx, mut rx) = bounded(1000);
        tx.send(txn(1), 600).await.unwrap();
        tx.send(txn(2), 400).await.unwrap();
        let blocked = tokio::time::timeout(Duration::from_millis(100), tx.send(txn(3), 1)).await;
        assert!(blocked.is_err(), "a full queue takes nothing more");
        let mut got = Vec::new();
        assert_eq!(rx.recv_many(&mut got, 10).await, 2);
        let blocked = tokio::time::timeout(Duration::from_millis(100), tx.send(txn(3), 1)).await;
        assert!(blocked.is_err(), "room comes back only when the fan-out is done with an item");
        got.truncate(1);
        tx.send(txn(3), 400).await.unwrap();
        drop(got);
        let mut more = Vec::new();
        rx.recv_many(&mut more, 10).await;
        assert_eq!(more.iter().map(|q| q.room.num_permits()).collect::<Vec<_>>(), vec![400]);
        drop(more);
        // An item larger than the queue waits for it to be empty, then goes alone.
        tx.send(txn(4), 5000).await.unwrap();
        let mut more = Vec::new();
        rx.recv_many(&mut more, 10).await;
        assert_eq!(more.iter().map(|q| q.room.num_permits()).collect::<Vec<_>>(), vec![1000]);
    }
}
