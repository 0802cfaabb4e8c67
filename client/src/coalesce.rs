//! Request coalescing: concurrent [`crate::Client::put`] calls bound for
//! one shard leave as one `BatchPut` request, which the shard's leader
//! proposes as one Raft entry; concurrent [`crate::Client::get`] calls of
//! one shard and consistency leave as one `BatchGet`, one read barrier.
//!
//! Owns the queues (one per shard, or per shard and consistency) and the
//! decision of what to send when: a request waits in its queue; whenever
//! the queue has fewer than `in_flight_max` batches in flight, everything
//! queued (up to the batch bounds) leaves as the next batch. A lone request
//! under light load waits for nothing; under load a batch holds whatever
//! queued while the previous ones were in flight, so requests, log entries
//! and applies grow with the load instead of multiplying.
//!
//! Does no I/O and knows nothing of sessions or retries: the client sends
//! the batches it is handed (a put batch takes one sequence and is retried
//! as a unit) and reports each one's end with [`Queues::finish`].

use std::collections::HashMap;
use std::collections::VecDeque;
use std::hash::Hash;

/// Most requests waiting in all queues of one kind (puts, gets) of one
/// client together; a request arriving at a full queue is sent on its own.
pub(crate) const QUEUED_REQUESTS_MAX: usize = 16 * 1024;

/// Bounds of coalescing, from [`crate::Config`].
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    /// Most requests in one batch.
    pub keys_max: usize,
    /// A batch stops growing once its requests reach this many bytes (a
    /// single bigger request still goes, alone).
    pub bytes_max: usize,
    /// Batches of one queue in flight at once.
    pub in_flight_max: usize,
}

#[derive(Debug)]
struct ShardQueue<T> {
    waiting: VecDeque<(T, usize)>,
    in_flight: usize,
}

/// Every queue with requests waiting or in flight, by key `K` (the shard,
/// or the shard and what else a batch must share).
#[derive(Debug)]
pub(crate) struct Queues<K, T> {
    limits: Limits,
    shards: HashMap<K, ShardQueue<T>>,
    queued: usize,
}

impl<K: Hash + Eq + Copy + std::fmt::Debug, T> Queues<K, T> {
    pub fn new(limits: Limits) -> Self {
        assert!(limits.keys_max >= 1 && limits.in_flight_max >= 1 && limits.bytes_max >= 1);
        Self {
            limits,
            shards: HashMap::new(),
            queued: 0,
        }
    }

    /// Queues a request of `bytes` bytes under `shard`. Returns the batch
    /// to send now, if the queue has a free slot, or gives the request back
    /// when every queue together is full ([`QUEUED_REQUESTS_MAX`]). A batch
    /// returned here is always the pushed request alone: requests wait only
    /// while every slot is taken, and a freed slot takes them at once.
    pub fn push(&mut self, shard: K, item: T, bytes: usize) -> Result<Option<Vec<T>>, T> {
        if self.queued >= QUEUED_REQUESTS_MAX {
            return Err(item);
        }
        let q = self.shards.entry(shard).or_insert_with(|| ShardQueue {
            waiting: VecDeque::new(),
            in_flight: 0,
        });
        q.waiting.push_back((item, bytes));
        self.queued += 1;
        Ok(self.take(shard))
    }

    /// Records that a batch of `shard` ended; returns the next batch to
    /// send in its slot, if requests are waiting.
    pub fn finish(&mut self, shard: K) -> Option<Vec<T>> {
        let q = self.shards.get_mut(&shard);
        assert!(
            q.as_ref().is_some_and(|q| q.in_flight > 0),
            "finish of queue {shard:?} without a batch in flight"
        );
        if let Some(q) = q {
            q.in_flight -= 1;
        }
        self.take(shard)
    }

    /// Requests waiting in every queue.
    pub fn queued(&self) -> usize {
        self.queued
    }

    fn take(&mut self, shard: K) -> Option<Vec<T>> {
        let limits = self.limits;
        let q = self.shards.get_mut(&shard)?;
        if q.waiting.is_empty() {
            if q.in_flight == 0 {
                self.shards.remove(&shard);
            }
            return None;
        }
        if q.in_flight >= limits.in_flight_max {
            return None;
        }
        let mut batch = Vec::new();
        let mut bytes = 0usize;
        while batch.len() < limits.keys_max {
            match q.waiting.front() {
                Some((_, b)) if !batch.is_empty() && bytes + b > limits.bytes_max => break,
                Some(_) => {}
                None => break,
            }
            let Some((item, b)) = q.waiting.pop_front() else { break };
            bytes += b;
            batch.push(item);
        }
        assert!(!batch.is_empty());
        q.in_flight += 1;
        self.queued -= batch.len();
        assert!(
            q.waiting.is_empty() || q.in_flight == limits.in_flight_max,
            "requests wait only while every slot is taken"
        );
        Some(batch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(keys_max: usize, bytes_max: usize, in_flight_max: usize) -> Limits {
        Limits {
            keys_max,
            bytes_max,
            in_flight_max,
        }
    }

    #[test]
    fn a_lone_put_leaves_at_once() {
        let mut q = Queues::new(limits(8, 1000, 1));
        assert_eq!(q.push(1, "a", 10), Ok(Some(vec!["a"])));
        assert_eq!(q.queued(), 0);
        assert_eq!(q.finish(1), None);
        assert!(q.shards.is_empty(), "an idle shard's queue is dropped");
    }

    #[test]
    fn puts_queue_behind_a_full_shard_and_leave_together() {
        let mut q = Queues::new(limits(8, 1000, 1));
        assert_eq!(q.push(1, 0, 10), Ok(Some(vec![0])));
        for i in 1..=3 {
            assert_eq!(q.push(1, i, 10), Ok(None));
        }
        // Another shard has its own slot.
        assert_eq!(q.push(2, 9, 10), Ok(Some(vec![9])));
        assert_eq!(q.queued(), 3);
        assert_eq!(q.finish(1), Some(vec![1, 2, 3]));
        assert_eq!(q.finish(1), None);
        assert_eq!(q.finish(2), None);
        assert_eq!(q.queued(), 0);
    }

    #[test]
    fn batches_respect_key_and_byte_bounds_in_order() {
        let mut q = Queues::new(limits(3, 100, 1));
        assert_eq!(q.push(1, 0, 1), Ok(Some(vec![0])));
        for (i, b) in [(1, 10), (2, 10), (3, 10), (4, 10), (5, 90), (6, 500), (7, 1)] {
            assert_eq!(q.push(1, i, b), Ok(None));
        }
        assert_eq!(q.finish(1), Some(vec![1, 2, 3]), "three keys at most");
        assert_eq!(q.finish(1), Some(vec![4, 5]), "100 bytes at most");
        assert_eq!(q.finish(1), Some(vec![6]), "a bigger put goes alone");
        assert_eq!(q.finish(1), Some(vec![7]));
        assert_eq!(q.finish(1), None);
    }

    #[test]
    fn several_batches_of_a_shard_fly_at_once() {
        let mut q = Queues::new(limits(4, 1000, 2));
        assert_eq!(q.push(1, 0, 1), Ok(Some(vec![0])));
        assert_eq!(q.push(1, 1, 1), Ok(Some(vec![1])));
        assert_eq!(q.push(1, 2, 1), Ok(None));
        assert_eq!(q.finish(1), Some(vec![2]));
    }

    #[test]
    fn a_full_queue_gives_the_put_back() {
        let mut q = Queues::new(limits(4, 1000, 1));
        assert_eq!(q.push(1, 0, 1), Ok(Some(vec![0])));
        for i in 0..QUEUED_REQUESTS_MAX {
            assert_eq!(q.push(1, i + 1, 1), Ok(None));
        }
        assert_eq!(q.push(2, 7, 1), Err(7));
        assert!(q.finish(1).is_some());
        assert!(q.push(2, 7, 1).is_ok());
    }

    #[test]
    #[should_panic(expected = "without a batch in flight")]
    fn finish_without_a_batch_is_a_bug() {
        let mut q: Queues<u64, u8> = Queues::new(limits(4, 1000, 1));
        q.finish(3);
    }
}
