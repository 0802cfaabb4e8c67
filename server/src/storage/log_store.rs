//! openraft `RaftLogStorage` for one shard, on the node's shared RocksDB.
//!
//! Every durable mutation (append, vote, truncate, purge) goes through the
//! node's [`GroupCommit`] so it shares a WAL sync with concurrent writes of
//! other shards. `append` returns only after its entries are synced.
//! Appended entries also go to the shard's [`LogCache`]: replication and
//! apply read recent entries from memory, and fall back to RocksDB only for
//! older ones (a follower far behind). Reads for replication stop at
//! [`REPLICATION_READ_BYTES_MAX`], so one append message stays small enough
//! to arrive within the heartbeat interval however large the entries are.

use std::fmt::Debug;
use std::ops::Bound;
use std::ops::RangeBounds;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::MutexGuard;

use openraft::storage::LogFlushed;
use openraft::storage::RaftLogStorage;
use openraft::ErrorSubject;
use openraft::ErrorVerb;
use openraft::LogState;
use openraft::OptionalSend;
use openraft::RaftLogReader;

use super::group_commit::GroupCommit;
use super::group_commit::WriteOp;
use super::keys;
use super::log_cache::LogCache;
use super::to_raft_err;
use super::Cf;
use super::Db;
use crate::raft::types::decode;
use crate::raft::types::encode;
use crate::raft::types::Entry;
use crate::raft::types::LogId;
use crate::raft::types::StorageError;
use crate::raft::types::TypeConfig;
use crate::raft::types::Vote;

/// Most encoded bytes of entries one replication read returns (at least
/// one entry): bounds an append-entries message to a lagging follower,
/// which must arrive within the heartbeat interval.
pub const REPLICATION_READ_BYTES_MAX: usize = 4 * 1024 * 1024;

/// Log store of one shard. Clones share the same underlying storage and
/// cache.
#[derive(Clone)]
pub struct LogStore {
    shard: u64,
    db: Arc<Db>,
    gc: GroupCommit,
    cache: Arc<Mutex<LogCache>>,
}

impl LogStore {
    pub fn new(shard: u64, db: Arc<Db>, gc: GroupCommit) -> Self {
        Self {
            shard,
            db,
            gc,
            cache: Arc::new(Mutex::new(LogCache::default())),
        }
    }

    fn cache(&self) -> MutexGuard<'_, LogCache> {
        lock(&self.cache)
    }

    /// Entries `[start, end)` up to about `bytes_max`: from the cache when it
    /// holds `start`, else from RocksDB and then the cache for what RocksDB
    /// does not have yet.
    fn read_entries(&self, start: u64, end: u64, bytes_max: usize) -> Result<Vec<Entry>, StorageError> {
        if start >= end {
            return Ok(Vec::new());
        }
        {
            let cache = self.cache();
            if cache.first_index().is_some_and(|f| f <= start) {
                return Ok(cache.range(start, end, bytes_max));
            }
        }
        // Entries below the cache's first are durable in RocksDB: the cache
        // lets go of an entry only after its write is on disk.
        let (mut out, bytes) = self.read_disk(start, end, bytes_max)?;
        let next = out.last().map_or(start, |e| e.log_id.index + 1);
        if next < end && bytes < bytes_max {
            let cache = self.cache();
            // The cache may have moved on while RocksDB was read; take its
            // part only if it continues what was read, never across a gap.
            if cache.first_index().is_some_and(|f| f <= next) {
                out.extend(cache.range(next, end, bytes_max - bytes));
            }
        }
        Ok(out)
    }

    /// Entries `[start, end)` from RocksDB, up to about `bytes_max`, and
    /// their encoded size.
    fn read_disk(&self, start: u64, end: u64, bytes_max: usize) -> Result<(Vec<Entry>, usize), StorageError> {
        let mut out = Vec::new();
        let mut bytes = 0usize;
        let upper = keys::log_key(self.shard, end);
        let mut opts = rocksdb::ReadOptions::default();
        opts.set_iterate_upper_bound(upper.to_vec());
        let from = keys::log_key(self.shard, start);
        let it = self.db.raw().iterator_cf_opt(
            self.db.cf(Cf::RaftLog),
            opts,
            rocksdb::IteratorMode::From(&from, rocksdb::Direction::Forward),
        );
        let mut expect = start;
        for item in it {
            let (k, v) = item.map_err(|e| to_raft_err(ErrorSubject::Logs, ErrorVerb::Read, e))?;
            if !out.is_empty() && bytes.saturating_add(v.len()) > bytes_max {
                break;
            }
            let idx = keys::log_key_index(&k)
                .ok_or_else(|| to_raft_err(ErrorSubject::Logs, ErrorVerb::Read, "malformed log key"))?;
            let entry: Entry = decode(&v).map_err(|e| {
                to_raft_err(
                    ErrorSubject::Log(LogId::default()),
                    ErrorVerb::Read,
                    format!("decode entry {idx}: {e}"),
                )
            })?;
            debug_assert_eq!(entry.log_id.index, idx);
            if idx != expect && !out.is_empty() {
                return Err(to_raft_err(
                    ErrorSubject::Logs,
                    ErrorVerb::Read,
                    format!("hole in log of shard {}: expected {expect}, found {idx}", self.shard),
                ));
            }
            expect = idx + 1;
            bytes += v.len();
            out.push(entry);
        }
        Ok((out, bytes))
    }

    fn read_state<T: for<'de> serde::Deserialize<'de>>(&self, tag: u8) -> Result<Option<T>, StorageError> {
        let raw = self
            .db
            .get(Cf::RaftState, &keys::tagged(self.shard, tag))
            .map_err(|e| to_raft_err(ErrorSubject::Store, ErrorVerb::Read, e))?;
        match raw {
            None => Ok(None),
            Some(b) => decode(&b)
                .map(Some)
                .map_err(|e| to_raft_err(ErrorSubject::Store, ErrorVerb::Read, format!("decode raft state: {e}"))),
        }
    }

    async fn write(&self, ops: Vec<WriteOp>, subject: ErrorSubject<u64>) -> Result<(), StorageError> {
        self.gc
            .write(ops)
            .await
            .map_err(|e| to_raft_err(subject, ErrorVerb::Write, e))
    }

    fn last_purged(&self) -> Result<Option<LogId>, StorageError> {
        Ok(self.read_state::<Option<LogId>>(keys::STATE_PURGED)?.flatten())
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        let start = match range.start_bound() {
            Bound::Included(i) => *i,
            Bound::Excluded(i) => i.saturating_add(1),
            Bound::Unbounded => 0,
        };
        let end = match range.end_bound() {
            Bound::Included(i) => i.saturating_add(1),
            Bound::Excluded(i) => *i,
            Bound::Unbounded => u64::MAX,
        };
        self.read_entries(start, end, usize::MAX)
    }

    async fn limited_get_log_entries(&mut self, start: u64, end: u64) -> Result<Vec<Entry>, StorageError> {
        self.read_entries(start, end, REPLICATION_READ_BYTES_MAX)
    }
}

fn lock(m: &Mutex<LogCache>) -> MutexGuard<'_, LogCache> {
    // The cache holds no invariant a panicking holder could break halfway
    // that a reader relies on beyond what each method re-checks.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        let last_purged = self.last_purged()?;
        if let Some(last) = self.cache().last() {
            return Ok(LogState {
                last_purged_log_id: last_purged,
                last_log_id: Some(last.log_id),
            });
        }
        let prefix = keys::shard_prefix(self.shard);
        let upper = keys::log_key(self.shard, u64::MAX);
        let mut it = self.db.raw().iterator_cf(
            self.db.cf(Cf::RaftLog),
            rocksdb::IteratorMode::From(&upper, rocksdb::Direction::Reverse),
        );
        let mut last = last_purged;
        if let Some(item) = it.next() {
            let (k, v) = item.map_err(|e| to_raft_err(ErrorSubject::Logs, ErrorVerb::Read, e))?;
            if k.starts_with(&prefix) {
                let entry: Entry = decode(&v)
                    .map_err(|e| to_raft_err(ErrorSubject::Logs, ErrorVerb::Read, format!("decode last entry: {e}")))?;
                last = Some(entry.log_id);
            }
        }
        Ok(LogState {
            last_purged_log_id: last_purged,
            last_log_id: last,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), StorageError> {
        let op = WriteOp::Put(
            Cf::RaftState,
            keys::tagged(self.shard, keys::STATE_VOTE).to_vec(),
            encode(vote),
        );
        self.write(vec![op], ErrorSubject::Vote).await
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, StorageError> {
        self.read_state(keys::STATE_VOTE)
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        // Not synced: openraft tolerates a committed index that lags after a
        // crash (it is re-learned from the leader), and the next synced
        // append makes this write durable anyway, since the WAL is ordered.
        let mut batch = rocksdb::WriteBatch::default();
        batch.put_cf(
            self.db.cf(Cf::RaftState),
            keys::tagged(self.shard, keys::STATE_COMMITTED),
            encode(&committed),
        );
        self.db
            .write_unsynced(batch)
            .map_err(|e| to_raft_err(ErrorSubject::Store, ErrorVerb::Write, e))
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError> {
        Ok(self.read_state::<Option<LogId>>(keys::STATE_COMMITTED)?.flatten())
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut ops = Vec::new();
        let mut cached = Vec::new();
        for e in entries {
            let value = encode(&e);
            let bytes = value.len();
            ops.push(WriteOp::Put(
                Cf::RaftLog,
                keys::log_key(self.shard, e.log_id.index).to_vec(),
                value,
            ));
            cached.push((e, bytes));
        }
        if ops.is_empty() {
            callback.log_io_completed(Ok(()));
            return Ok(());
        }
        // Readable from the cache from here on; it may let go of them once
        // the write below is on disk.
        let seq = self.cache().append(cached);
        let res = self.write(ops, ErrorSubject::Logs).await;
        match &res {
            Ok(()) => {
                self.cache().mark_durable(seq);
                callback.log_io_completed(Ok(()));
            }
            Err(e) => callback.log_io_completed(Err(std::io::Error::other(e.to_string()))),
        }
        res
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        let op = WriteOp::DeleteRange(
            Cf::RaftLog,
            keys::log_key(self.shard, log_id.index).to_vec(),
            keys::log_key(self.shard, u64::MAX).to_vec(),
        );
        // `u64::MAX` itself is never a real index: openraft indexes are dense
        // from 0 and the log cannot reach 2^64 - 1 entries.
        // The cache goes first: once this returns, openraft may append new
        // entries at these indexes, and nobody may read the old ones.
        self.cache().truncate(log_id.index);
        self.write(vec![op], ErrorSubject::Logs).await
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        debug_assert!(self.last_purged()?.is_none_or(|p| p.index <= log_id.index));
        let ops = vec![
            WriteOp::Put(
                Cf::RaftState,
                keys::tagged(self.shard, keys::STATE_PURGED).to_vec(),
                encode(&Some(log_id)),
            ),
            WriteOp::DeleteRange(
                Cf::RaftLog,
                keys::log_key(self.shard, 0).to_vec(),
                keys::log_key(self.shard, log_id.index + 1).to_vec(),
            ),
        ];
        self.cache().purge(log_id.index);
        self.write(ops, ErrorSubject::Logs).await
    }
}

#[cfg(test)]
mod tests {
    use openraft::EntryPayload;

    use super::*;
    use crate::config::StorageConfig;
    use crate::raft::types::Command;
    use crate::raft::types::RaftRequest;

    fn entry(index: u64, value_bytes: usize) -> Entry {
        Entry {
            log_id: LogId::new(openraft::CommittedLeaderId::new(1, 1), index),
            payload: EntryPayload::Normal(RaftRequest {
                command: Command::Put {
                    key: index.to_be_bytes().to_vec(),
                    value: vec![7; value_bytes],
                },
                session: None,
                timestamp_ms: 0,
            }),
        }
    }

    fn indexes(v: &[Entry]) -> Vec<u64> {
        v.iter().map(|e| e.log_id.index).collect()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn reads_span_disk_and_cache_and_replication_reads_are_byte_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(dir.path(), &StorageConfig::default()).unwrap();
        let gc = GroupCommit::start(db.clone(), 64).unwrap();
        let mut store = LogStore::new(5, db.clone(), gc);
        // Entries 1..=8 of just under 1 MiB each on disk only (as after a restart).
        let mut batch = rocksdb::WriteBatch::default();
        for i in 1..=8 {
            batch.put_cf(
                db.cf(Cf::RaftLog),
                keys::log_key(5, i),
                encode(&entry(i, (1 << 20) - 128)),
            );
        }
        db.write_synced(batch).unwrap();
        // Entries 9..=12 in the cache and on disk.
        let mut batch = rocksdb::WriteBatch::default();
        let mut cached = Vec::new();
        for i in 9..=12 {
            let e = entry(i, 100);
            let v = encode(&e);
            batch.put_cf(db.cf(Cf::RaftLog), keys::log_key(5, i), &v);
            cached.push((e, v.len()));
        }
        db.write_synced(batch).unwrap();
        let seq = store.cache().append(cached);
        store.cache().mark_durable(seq);

        let all = store.try_get_log_entries(1..13).await.unwrap();
        assert_eq!(indexes(&all), (1..=12).collect::<Vec<_>>());
        assert_eq!(
            indexes(&store.try_get_log_entries(10..).await.unwrap()),
            vec![10, 11, 12]
        );
        let limited = store.limited_get_log_entries(1, 13).await.unwrap();
        assert_eq!(indexes(&limited), vec![1, 2, 3, 4], "4 MiB of 1 MiB entries");
        let limited = store.limited_get_log_entries(8, 13).await.unwrap();
        assert_eq!(indexes(&limited), vec![8, 9, 10, 11, 12], "disk then cache");
        // One entry over the bound still comes back alone.
        let big = entry(13, REPLICATION_READ_BYTES_MAX + 1);
        let v = encode(&big);
        let mut batch = rocksdb::WriteBatch::default();
        batch.put_cf(db.cf(Cf::RaftLog), keys::log_key(5, 13), &v);
        db.write_synced(batch).unwrap();
        let seq = store.cache().append([(big, v.len())]);
        store.cache().mark_durable(seq);
        assert_eq!(indexes(&store.limited_get_log_entries(13, 14).await.unwrap()), vec![13]);
        let state = store.get_log_state().await.unwrap();
        assert_eq!(state.last_log_id.map(|l| l.index), Some(13));
    }
}
