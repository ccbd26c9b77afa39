//! Work from many tenants for a few slots: each key (a tenant's scope) has its own queue,
//! keys take turns, and a key runs at most its share of the slots at once, so one tenant's
//! burst neither goes first nor holds every slot while others wait.

use std::collections::{HashMap, VecDeque};
use std::hash::Hash;

pub struct FairQueue<K, T> {
    waiting: HashMap<K, VecDeque<T>>,
    /// Keys with waiting work, in the order they get their next turn.
    turn: VecDeque<K>,
    running: HashMap<K, usize>,
    /// Most items of one key running at once.
    share: usize,
    /// A key with no share limit (work of no tenant: unscoped callers).
    unlimited: K,
}

impl<K: Hash + Eq + Clone, T> FairQueue<K, T> {
    pub fn new(share: usize, unlimited: K) -> FairQueue<K, T> {
        FairQueue {
            waiting: HashMap::new(),
            turn: VecDeque::new(),
            running: HashMap::new(),
            share: share.max(1),
            unlimited,
        }
    }

    pub fn push(&mut self, key: K, item: T) {
        let queue = self.waiting.entry(key.clone()).or_default();
        if queue.is_empty() {
            self.turn.push_back(key);
        }
        queue.push_back(item);
    }

    /// The next item of the first key in turn that is below its share; it counts as running
    /// until [`FairQueue::done`].
    pub fn pop(&mut self) -> Option<(K, T)> {
        let at = self
            .turn
            .iter()
            .position(|k| *k == self.unlimited || self.running.get(k).copied().unwrap_or(0) < self.share)?;
        let key = self.turn.remove(at)?;
        let queue = self.waiting.get_mut(&key)?;
        let item = queue.pop_front()?;
        if queue.is_empty() {
            self.waiting.remove(&key);
        } else {
            self.turn.push_back(key.clone());
        }
        *self.running.entry(key.clone()).or_default() += 1;
        Some((key, item))
    }

    /// An item of `key` ended.
    pub fn done(&mut self, key: &K) {
        if let Some(n) = self.running.get_mut(key) {
            *n -= 1;
            if *n == 0 {
                self.running.remove(key);
            }
        }
    }

    pub fn is_empty(&self) -> bool {
        self.turn.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_take_turns_and_none_runs_past_its_share() {
        let mut q = FairQueue::new(2, None);
        for i in 0..10 {
            q.push(Some("a"), i);
        }
        q.push(Some("b"), 100);
        let first: Vec<_> = std::iter::from_fn(|| q.pop()).collect();
        assert_eq!(first, [(Some("a"), 0), (Some("b"), 100), (Some("a"), 1)], "a's burst holds two slots at most");
        q.done(&Some("a"));
        assert_eq!(q.pop(), Some((Some("a"), 2)));
        assert_eq!(q.pop(), None);
    }

    #[test]
    fn the_unlimited_key_has_no_share() {
        let mut q = FairQueue::new(1, None);
        for i in 0..3 {
            q.push(None::<&str>, i);
        }
        assert_eq!(std::iter::from_fn(|| q.pop()).count(), 3);
        assert!(q.is_empty());
    }
}
