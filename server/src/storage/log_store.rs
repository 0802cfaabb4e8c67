//! openraft `RaftLogStorage` for one shard, on the node's shared RocksDB.
//!
//! Every durable mutation (append, vote, truncate, purge) goes through the
//! node's [`GroupCommit`] so it shares a WAL sync with concurrent writes of
//! other shards. `append` returns only after its entries are synced, which
//! also makes them readable, as openraft requires.

use std::fmt::Debug;
use std::ops::Bound;
use std::ops::RangeBounds;
use std::sync::Arc;

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

/// Log store of one shard. Clones share the same underlying storage.
#[derive(Clone)]
pub struct LogStore {
    shard: u64,
    db: Arc<Db>,
    gc: GroupCommit,
}

impl LogStore {
    pub fn new(shard: u64, db: Arc<Db>, gc: GroupCommit) -> Self {
        Self { shard, db, gc }
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
            Bound::Included(i) => Some(i.saturating_add(1)),
            Bound::Excluded(i) => Some(*i),
            Bound::Unbounded => None,
        };
        let mut out = Vec::new();
        let upper = keys::log_key(self.shard, end.unwrap_or(u64::MAX));
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
            out.push(entry);
        }
        Ok(out)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        let last_purged = self.last_purged()?;
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
        let ops: Vec<WriteOp> = entries
            .into_iter()
            .map(|e| {
                WriteOp::Put(
                    Cf::RaftLog,
                    keys::log_key(self.shard, e.log_id.index).to_vec(),
                    encode(&e),
                )
            })
            .collect();
        let res = self.write(ops, ErrorSubject::Logs).await;
        match &res {
            Ok(()) => callback.log_io_completed(Ok(())),
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
        self.write(ops, ErrorSubject::Logs).await
    }
}
