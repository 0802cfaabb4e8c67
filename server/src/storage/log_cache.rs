//! In-memory tail of one shard's Raft log.
//!
//! Holds the most recent entries, in index order without holes, so that
//! replication and apply read them without a RocksDB iterator (each one
//! costs a seek through the memtable and every SST level).
//!
//! Every entry remembers the group-commit write that carries it; an entry
//! leaves the front of the cache only once that write is on disk, so a read
//! that misses the cache always finds its entries in RocksDB, even if a
//! later change lets `append` return before the sync. Pure memory: it does
//! no I/O and decides nothing about consensus.

use std::collections::VecDeque;

use crate::raft::types::Entry;

/// Most entries kept per shard once they are durable.
pub const LOG_CACHE_ENTRIES_MAX: usize = 4096;
/// Most encoded bytes kept per shard once they are durable.
pub const LOG_CACHE_BYTES_MAX: usize = 8 * 1024 * 1024;

struct Cached {
    entry: Entry,
    bytes: usize,
    /// Sequence number of the append whose write carries this entry.
    append_seq: u64,
}

/// The cached tail: `entries[i]` has index `first + i`.
#[derive(Default)]
pub struct LogCache {
    entries: VecDeque<Cached>,
    bytes: usize,
    /// Sequence number of the last append handed out.
    appended_seq: u64,
    /// Every append with a sequence number up to this one is on disk.
    durable_seq: u64,
}

impl LogCache {
    /// Index of the first cached entry.
    pub fn first_index(&self) -> Option<u64> {
        self.entries.front().map(|c| c.entry.log_id.index)
    }

    /// The last cached entry.
    pub fn last(&self) -> Option<&Entry> {
        self.entries.back().map(|c| &c.entry)
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Adds entries that follow the cached ones (`encoded_bytes[i]` is the
    /// encoded size of `entries[i]`) and returns the sequence number of
    /// this append, to be passed to [`Self::mark_durable`] once its write
    /// is on disk. Entries that do not follow the cached tail (after a
    /// restart, or after everything was truncated) start a new tail.
    pub fn append(&mut self, entries: impl IntoIterator<Item = (Entry, usize)>) -> u64 {
        self.appended_seq += 1;
        let seq = self.appended_seq;
        for (entry, bytes) in entries {
            let follows = self.last().is_none_or(|l| l.log_id.index + 1 == entry.log_id.index);
            if !follows {
                // An entry at or before the tail replaces it from there on;
                // one after a gap (the log moved past the cache, e.g. by a
                // snapshot) starts a new tail: the cache never has a hole.
                self.truncate(entry.log_id.index);
                if self.last().is_some_and(|l| l.log_id.index + 1 != entry.log_id.index) {
                    self.clear();
                }
            }
            self.bytes += bytes;
            self.entries.push_back(Cached {
                entry,
                bytes,
                append_seq: seq,
            });
        }
        self.evict();
        seq
    }

    /// Sequence number of the last append handed out (0 before any).
    pub fn appended_seq(&self) -> u64 {
        self.appended_seq
    }

    /// Records that every append up to `seq` is on disk.
    pub fn mark_durable(&mut self, seq: u64) {
        assert!(seq <= self.appended_seq, "append {seq} was never handed out");
        self.durable_seq = self.durable_seq.max(seq);
        self.evict();
    }

    /// Removes the entries with index `>= index`.
    pub fn truncate(&mut self, index: u64) {
        while self.entries.back().is_some_and(|c| c.entry.log_id.index >= index) {
            if let Some(c) = self.entries.pop_back() {
                self.bytes -= c.bytes;
            }
        }
    }

    /// Removes the entries with index `<= index`.
    pub fn purge(&mut self, index: u64) {
        while self.entries.front().is_some_and(|c| c.entry.log_id.index <= index) {
            if let Some(c) = self.entries.pop_front() {
                self.bytes -= c.bytes;
            }
        }
    }

    fn clear(&mut self) {
        self.entries.clear();
        self.bytes = 0;
    }

    /// Clones of the cached entries with `start <= index < end`, in order,
    /// stopping once `bytes_max` is reached (at least one entry is returned
    /// when any is in range).
    pub fn range(&self, start: u64, end: u64, bytes_max: usize) -> Vec<Entry> {
        let Some(first) = self.first_index() else {
            return Vec::new();
        };
        let skip = usize::try_from(start.saturating_sub(first)).unwrap_or(usize::MAX);
        let mut out = Vec::new();
        let mut bytes = 0usize;
        for c in self.entries.iter().skip(skip) {
            if c.entry.log_id.index >= end || (!out.is_empty() && bytes + c.bytes > bytes_max) {
                break;
            }
            bytes += c.bytes;
            out.push(c.entry.clone());
        }
        out
    }

    /// Drops durable entries from the front while the cache is over its
    /// bounds. Entries whose write is still queued stay, whatever the size:
    /// RocksDB does not have them yet.
    fn evict(&mut self) {
        while self.entries.len() > LOG_CACHE_ENTRIES_MAX || self.bytes > LOG_CACHE_BYTES_MAX {
            match self.entries.front() {
                Some(c) if c.append_seq <= self.durable_seq => {
                    if let Some(c) = self.entries.pop_front() {
                        self.bytes -= c.bytes;
                    }
                }
                _ => break,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use openraft::EntryPayload;

    use super::*;
    use crate::raft::types::LogId;

    fn entry(term: u64, index: u64) -> (Entry, usize) {
        let e = Entry {
            log_id: LogId::new(openraft::CommittedLeaderId::new(term, 1), index),
            payload: EntryPayload::Blank,
        };
        (e, 1000)
    }

    fn indexes(v: &[Entry]) -> Vec<u64> {
        v.iter().map(|e| e.log_id.index).collect()
    }

    #[test]
    fn reads_what_was_appended_in_order() {
        let mut c = LogCache::default();
        c.append((1..=5).map(|i| entry(1, i)));
        assert_eq!(indexes(&c.range(2, 4, usize::MAX)), vec![2, 3]);
        assert_eq!(indexes(&c.range(0, 100, usize::MAX)), vec![1, 2, 3, 4, 5]);
        assert_eq!(indexes(&c.range(1, 100, 2500)), vec![1, 2], "byte bound");
        assert_eq!(indexes(&c.range(1, 100, 10)), vec![1], "at least one entry");
        assert!(c.range(6, 9, usize::MAX).is_empty());
    }

    #[test]
    fn truncation_then_append_replaces_the_tail() {
        let mut c = LogCache::default();
        c.append((1..=5).map(|i| entry(1, i)));
        c.truncate(3);
        c.append((3..=4).map(|i| entry(2, i)));
        let got = c.range(0, 10, usize::MAX);
        assert_eq!(indexes(&got), vec![1, 2, 3, 4]);
        assert_eq!(got[2].log_id.leader_id.term, 2);
        // An append that overlaps the tail (openraft's truncate came first in
        // the store, but the cache must never hold two entries per index).
        c.append([entry(3, 2)]);
        assert_eq!(indexes(&c.range(0, 10, usize::MAX)), vec![1, 2]);
    }

    #[test]
    fn purge_drops_the_front() {
        let mut c = LogCache::default();
        c.append((1..=5).map(|i| entry(1, i)));
        c.purge(3);
        assert_eq!(c.first_index(), Some(4));
        c.purge(10);
        assert!(c.is_empty());
        // A new tail can start anywhere once the cache is empty.
        c.append([entry(1, 20)]);
        assert_eq!(c.first_index(), Some(20));
    }

    #[test]
    fn entries_not_yet_durable_are_never_evicted() {
        let mut c = LogCache::default();
        let n = LOG_CACHE_ENTRIES_MAX as u64 + 100;
        let seq = c.append((1..=n).map(|i| entry(1, i)));
        assert_eq!(c.len() as u64, n, "nothing durable yet: nothing may leave");
        c.mark_durable(seq);
        assert_eq!(c.len(), LOG_CACHE_ENTRIES_MAX.min(LOG_CACHE_BYTES_MAX / 1000));
        assert_eq!(c.last().map(|e| e.log_id.index), Some(n));
        // A later append still waiting for its sync stays even when the
        // older, durable ones are evicted around it.
        let s2 = c.append((n + 1..=n + 10_000).map(|i| entry(1, i)));
        assert!(
            c.first_index().is_some_and(|f| f == n + 1),
            "only the durable front left"
        );
        c.mark_durable(s2);
        assert_eq!(c.last().map(|e| e.log_id.index), Some(n + 10_000));
        assert!(c.len() <= LOG_CACHE_ENTRIES_MAX);
    }
}
