//! openraft `RaftLogStorage` for one shard, on the node's shared RocksDB.
//!
//! Every durable mutation (append, vote, truncate, purge) goes through the
//! node's [`GroupCommit`] so it shares a WAL sync with concurrent writes of
//! other shards. `append` returns only after its entries are synced, except
//! on a leader that overlaps its sync with replication (see [`LogSync`]).
//! Appended entries also go to the shard's [`LogCache`]: replication and
//! apply read recent entries from memory, and fall back to RocksDB only for
//! older ones (a follower far behind). Reads for replication stop at
//! [`REPLICATION_READ_BYTES_MAX`], so one append message stays small enough
//! to arrive within the heartbeat interval however large the entries are.

use std::fmt::Debug;
use std::ops::Bound;
use std::ops::RangeBounds;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::MutexGuard;
use std::time::Duration;

use openraft::storage::LogFlushed;
use openraft::storage::RaftLogStorage;
use openraft::ErrorSubject;
use openraft::ErrorVerb;
use openraft::LogState;
use openraft::OptionalSend;
use openraft::RaftLogReader;

use super::group_commit::Fault;
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
use crate::raft::types::NodeId;
use crate::raft::types::StorageError;
use crate::raft::types::TypeConfig;
use crate::raft::types::Vote;

/// Most encoded bytes of entries one replication read returns (at least
/// one entry): bounds an append-entries message to a lagging follower,
/// which must arrive within the heartbeat interval.
pub const REPLICATION_READ_BYTES_MAX: usize = 4 * 1024 * 1024;

/// How far a shard's appends are on disk, shared by its log store and its
/// network.
///
/// A leader that overlaps its own WAL sync with replication
/// (`raft.overlap_leader_sync`) tells openraft its append is flushed once
/// the write is queued, so that openraft replicates the entries while the
/// leader syncs them. openraft then counts the leader's own copy towards
/// the commit quorum before it is on disk. What keeps that safe: the
/// network hands openraft a follower's acceptance of an append only after
/// every append the leader had queued when it sent that message is on its
/// own disk ([`LogSync::wait_durable`]). So no entry commits before the
/// leader and the acknowledging followers, a quorum, have it on disk, just
/// as when the leader synced first; a leader that crashes before its sync
/// has had nothing committed that it could lose. That argument needs a
/// follower in every commit quorum, so a group whose only voter is this
/// node syncs first ([`QuorumView`]). Followers always sync before they
/// answer. Sequence numbers are the log cache's: appends of a
/// shard are queued in that order, and one batch of the group commit never
/// lands before an earlier one, so "every append up to `n` is on disk" is
/// one number.
#[derive(Clone)]
pub struct LogSync {
    cache: Arc<Mutex<LogCache>>,
    durable: tokio::sync::watch::Receiver<u64>,
}

impl LogSync {
    /// Sequence number of the last append handed to the store.
    pub fn appended(&self) -> u64 {
        lock(&self.cache).appended_seq()
    }

    /// Waits until every append up to `seq` is on disk, at most `timeout`;
    /// false when it is not by then.
    pub async fn wait_durable(&self, seq: u64, timeout: Duration) -> bool {
        let mut rx = self.durable.clone();
        if *rx.borrow() >= seq {
            return true;
        }
        // Bound to a local: the `Ref` in the result borrows `rx` and must be
        // dropped before it.
        let reached = matches!(
            tokio::time::timeout(timeout, rx.wait_for(|d| *d >= seq)).await,
            Ok(Ok(_))
        );
        reached
    }
}

/// Whether a commit of this shard needs a replica other than this one: only
/// then may a leader's append be reported before its sync, because only then
/// does a follower's (gated) acceptance stand between the append and its
/// commit. A group whose voters are this node alone commits on the leader's
/// own flush, which must therefore be real.
#[derive(Default)]
struct QuorumView {
    /// From openraft's metrics: whether the effective membership's voters
    /// span more than one node; `None` until first reported.
    reported: Option<bool>,
    /// The same for the last membership entry appended and not truncated:
    /// a leader's new membership takes effect when appended, before the
    /// metrics show it.
    appended: Option<(LogId, bool)>,
}

impl QuorumView {
    fn needs_a_peer(&self) -> bool {
        self.reported == Some(true) && self.appended.is_none_or(|(_, multi)| multi)
    }
}

/// Whether `m`'s voters, over all its joint configurations, are more than
/// one node. A configuration of one voter other than the leader also needs
/// a peer, but is counted as one node: that only errs towards syncing first.
fn spans_nodes(m: &openraft::Membership<NodeId, openraft::BasicNode>) -> bool {
    m.voter_ids().nth(1).is_some()
}

/// Feeds a shard's effective membership, as openraft's metrics report it,
/// to its log store (see [`QuorumView`]).
#[derive(Clone)]
pub struct MembershipFeed(Arc<Mutex<QuorumView>>);

impl MembershipFeed {
    pub fn report(&self, m: &openraft::Membership<NodeId, openraft::BasicNode>) {
        lock(&self.0).reported = Some(spans_nodes(m));
    }
}

/// Log store of one shard. Clones share the same underlying storage and
/// cache.
#[derive(Clone)]
pub struct LogStore {
    shard: u64,
    db: Arc<Db>,
    gc: GroupCommit,
    cache: Arc<Mutex<LogCache>>,
    /// Every append up to this sequence number is on disk.
    durable: Arc<tokio::sync::watch::Sender<u64>>,
    /// This node, when its leader appends may return before their sync
    /// ([`LogSync`]); `None`: every append waits for its sync.
    overlap_as: Option<NodeId>,
    /// The last vote saved or read: whose entries count as this node's own
    /// leader appends.
    vote: Arc<Mutex<Option<Vote>>>,
    /// Whether a commit needs another replica: the leader may skip the sync
    /// wait only when it does.
    quorum: Arc<Mutex<QuorumView>>,
}

impl LogStore {
    pub fn new(shard: u64, db: Arc<Db>, gc: GroupCommit) -> Self {
        Self {
            shard,
            db,
            gc,
            cache: Arc::new(Mutex::new(LogCache::default())),
            durable: Arc::new(tokio::sync::watch::channel(0).0),
            overlap_as: None,
            vote: Arc::new(Mutex::new(None)),
            quorum: Arc::new(Mutex::new(QuorumView::default())),
        }
    }

    /// Lets the appends node `local_id` makes as this shard's leader return
    /// once queued, before their sync ([`LogSync`] says why that is safe
    /// and what the network must do for it).
    pub fn overlapping_leader_sync(mut self, local_id: NodeId) -> Self {
        self.overlap_as = Some(local_id);
        self
    }

    /// The handle the shard's network waits on before it passes on a
    /// follower's acceptance.
    pub fn sync_progress(&self) -> LogSync {
        LogSync {
            cache: self.cache.clone(),
            durable: self.durable.subscribe(),
        }
    }

    /// The handle through which the node reports the shard's membership.
    pub fn membership_feed(&self) -> MembershipFeed {
        MembershipFeed(self.quorum.clone())
    }

    /// Whether entries stamped with `leader` are this node's own appends as
    /// the shard's established leader, which may return before their sync.
    fn own_leader_id(&self) -> Option<openraft::LeaderId<NodeId>> {
        let me = self.overlap_as?;
        let vote = (*lock(&self.vote))?;
        (vote.is_committed() && vote.leader_id().node_id == me).then_some(*vote.leader_id())
    }

    fn set_durable(durable: &tokio::sync::watch::Sender<u64>, seq: u64) {
        durable.send_if_modified(|d| {
            let newer = seq > *d;
            if newer {
                *d = seq;
            }
            newer
        });
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

/// The vote a node opens with after a restart: a committed vote (a leader
/// was established in that term) becomes a plain vote for the same leader
/// in that term (see `read_vote`). For a follower that changes nothing it
/// acts on: its leader's next append carries the committed vote again.
fn as_restarted(v: Vote) -> Vote {
    if !v.is_committed() {
        return v;
    }
    let demoted = Vote::new(v.leader_id().term, v.leader_id().node_id);
    debug_assert!(!demoted.is_committed() && demoted.leader_id() == v.leader_id());
    demoted
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // The cache holds no invariant a panicking holder could break halfway
    // that a reader relies on beyond what each method re-checks; the vote
    // and the quorum view are plain values, each replaced whole.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl LogStore {
    /// A leader's own append: reports it flushed once queued, and records
    /// it durable when its sync returns ([`LogSync`]).
    async fn append_before_sync(
        &self,
        ops: Vec<WriteOp>,
        seq: u64,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError> {
        use crate::failpoint;
        let fault = Fault {
            hold: if failpoint::fire(failpoint::STORAGE_LEADER_SYNC_SLOW) {
                Duration::from_millis(failpoint::STORAGE_LEADER_SYNC_SLOW_MS)
            } else {
                Duration::ZERO
            },
            fail: failpoint::fire(failpoint::STORAGE_LEADER_SYNC_FAIL),
        };
        let synced = match self.gc.submit(ops, fault).await {
            Ok(s) => s,
            Err(e) => {
                callback.log_io_completed(Err(std::io::Error::other(e.to_string())));
                return Err(to_raft_err(ErrorSubject::Logs, ErrorVerb::Write, e));
            }
        };
        self.gc.stats.appends_before_sync.fetch_add(1, Ordering::Relaxed);
        callback.log_io_completed(Ok(()));
        let (cache, durable, shard) = (self.cache.clone(), self.durable.clone(), self.shard);
        tokio::spawn(async move {
            match synced.await {
                Ok(Ok(())) => {
                    lock(&cache).mark_durable(seq);
                    Self::set_durable(&durable, seq);
                }
                failed => {
                    // openraft already counts these entries as this node's
                    // flushed log and cannot take that back. Stop the node,
                    // as etcd does when its WAL fails: nothing of it was
                    // acknowledged (no follower reply is passed on before
                    // this sync), and a restart recovers from what is on
                    // disk.
                    tracing::error!(shard, outcome = ?failed, "a leader's log append failed after it was queued; aborting");
                    std::process::abort();
                }
            }
        });
        Ok(())
    }
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
        self.write(vec![op], ErrorSubject::Vote).await?;
        *lock(&self.vote) = Some(*vote);
        Ok(())
    }

    /// openraft reads the vote once, when the group opens. A committed vote
    /// is handed back uncommitted: were it this node's own, openraft 0.9
    /// would resume as leader of the same term at once
    /// (`Engine::startup`), and with its appends reported before their
    /// sync ([`LogSync`]) a leader that crashed may have sent followers
    /// entries that never reached its own disk. Resumed in that term, it
    /// would append different entries under the same log ids, which the
    /// followers take for the ones they hold (same log id, same entry):
    /// the replicas would apply different commands at one index and an
    /// acknowledged write could vanish with the next leader (found by
    /// Jepsen under kill). Uncommitted, it is the vote the node cast in
    /// that term; the node leads again only after it wins an election,
    /// always for a higher term, so its log ids are new. Like etcd's raft,
    /// a node restarts as a follower.
    async fn read_vote(&mut self) -> Result<Option<Vote>, StorageError> {
        let stored: Option<Vote> = self.read_state(keys::STATE_VOTE)?;
        let vote = stored.map(as_restarted);
        *lock(&self.vote) = vote;
        Ok(vote)
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
        let own = self.own_leader_id();
        let mut all_own = own.is_some();
        let mut ops = Vec::new();
        let mut cached = Vec::new();
        for e in entries {
            all_own &= own.is_some_and(|l| e.log_id.leader_id == l);
            if let openraft::EntryPayload::Membership(m) = &e.payload {
                lock(&self.quorum).appended = Some((e.log_id, spans_nodes(m)));
            }
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
        if all_own && lock(&self.quorum).needs_a_peer() {
            return self.append_before_sync(ops, seq, callback).await;
        }
        let res = self.write(ops, ErrorSubject::Logs).await;
        match &res {
            Ok(()) => {
                self.cache().mark_durable(seq);
                Self::set_durable(&self.durable, seq);
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
        {
            let mut view = lock(&self.quorum);
            if view.appended.is_some_and(|(m, _)| m.index >= log_id.index) {
                view.appended = None;
            }
        }
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

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn only_an_established_leaders_own_entries_skip_the_sync_wait() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(dir.path(), &StorageConfig::default()).unwrap();
        let gc = GroupCommit::start(db.clone(), 64).unwrap();
        let mut plain = LogStore::new(5, db.clone(), gc.clone());
        plain.save_vote(&Vote::new_committed(2, 1)).await.unwrap();
        assert_eq!(plain.own_leader_id(), None, "overlap off");

        let mut store = LogStore::new(6, db.clone(), gc).overlapping_leader_sync(1);
        assert_eq!(store.own_leader_id(), None, "no vote yet");
        store.save_vote(&Vote::new(2, 1)).await.unwrap();
        assert_eq!(store.own_leader_id(), None, "a candidate's vote");
        store.save_vote(&Vote::new_committed(2, 1)).await.unwrap();
        assert_eq!(store.own_leader_id(), Some(openraft::LeaderId::new(2, 1)));
        store.save_vote(&Vote::new_committed(3, 2)).await.unwrap();
        assert_eq!(store.own_leader_id(), None, "another node leads");
        // After a restart the vote comes from disk, no longer committed: the
        // node that led term 3 must win a later term before it leads again,
        // so none of its entries skip the sync wait until then.
        let mut reopened = LogStore::new(6, db.clone(), store.gc.clone()).overlapping_leader_sync(2);
        assert_eq!(reopened.read_vote().await.unwrap(), Some(Vote::new(3, 2)));
        assert_eq!(reopened.own_leader_id(), None, "a restarted leader is a follower");
        reopened.save_vote(&Vote::new_committed(4, 2)).await.unwrap();
        assert_eq!(reopened.own_leader_id(), Some(openraft::LeaderId::new(4, 2)));
    }

    #[test]
    fn a_restart_keeps_the_term_and_the_vote_but_not_the_leadership() {
        assert_eq!(as_restarted(Vote::new_committed(7, 2)), Vote::new(7, 2));
        assert_eq!(
            as_restarted(Vote::new(7, 2)),
            Vote::new(7, 2),
            "a candidate's vote stays"
        );
        assert_eq!(
            as_restarted(Vote::new_committed(7, 3)),
            Vote::new(7, 3),
            "another leader's"
        );
        // The restarted vote still accepts the leader it names, whose next
        // append carries the committed vote.
        let restarted = as_restarted(Vote::new_committed(7, 2));
        assert!(Vote::new_committed(7, 2) > restarted);
        assert!(restarted < Vote::new_committed(7, 2) && restarted <= Vote::new(7, 2));
    }

    #[test]
    fn a_group_whose_only_voter_is_this_node_syncs_first() {
        use std::collections::BTreeSet;
        let node = |id| (id, openraft::BasicNode::new(format!("127.0.0.1:{id}")));
        let members = |configs: Vec<Vec<u64>>| {
            let nodes: std::collections::BTreeMap<_, _> = configs.iter().flatten().map(|&id| node(id)).collect();
            openraft::Membership::new(configs.into_iter().map(BTreeSet::from_iter).collect(), nodes)
        };
        let (one, three) = (members(vec![vec![1]]), members(vec![vec![1, 2, 3]]));
        let shrinking = members(vec![vec![1, 2, 3], vec![1]]);
        assert!(!spans_nodes(&one));
        assert!(spans_nodes(&three));
        assert!(spans_nodes(&shrinking), "the joint config still needs a peer");

        let mut view = QuorumView::default();
        assert!(!view.needs_a_peer(), "unknown until reported");
        view.reported = Some(spans_nodes(&three));
        assert!(view.needs_a_peer());
        // A leader's new membership counts from its append, before the
        // metrics catch up.
        view.appended = Some((entry(9, 0).log_id, spans_nodes(&one)));
        assert!(!view.needs_a_peer(), "shrunk to this node alone");
        view.appended = Some((entry(10, 0).log_id, spans_nodes(&shrinking)));
        assert!(view.needs_a_peer());
        view.reported = Some(spans_nodes(&one));
        assert!(!view.needs_a_peer(), "the metrics say one voter");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_sync_gate_waits_for_every_append_up_to_its_number() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(dir.path(), &StorageConfig::default()).unwrap();
        let gc = GroupCommit::start(db.clone(), 64).unwrap();
        let store = LogStore::new(5, db, gc);
        let sync = store.sync_progress();
        assert_eq!(sync.appended(), 0);
        assert!(sync.wait_durable(0, Duration::ZERO).await, "nothing appended");
        let first = store.cache().append([(entry(1, 10), 50)]);
        let second = store.cache().append([(entry(2, 10), 50)]);
        assert_eq!((sync.appended(), first, second), (2, 1, 2));
        assert!(!sync.wait_durable(second, Duration::from_millis(20)).await);
        let waiter = {
            let sync = sync.clone();
            tokio::spawn(async move { sync.wait_durable(second, Duration::from_secs(30)).await })
        };
        LogStore::set_durable(&store.durable, first);
        assert!(sync.wait_durable(first, Duration::ZERO).await);
        assert!(!sync.wait_durable(second, Duration::from_millis(20)).await);
        LogStore::set_durable(&store.durable, second);
        assert!(waiter.await.unwrap(), "woken once the later append is durable");
        // A late report of an earlier append does not move it back.
        LogStore::set_durable(&store.durable, first);
        assert!(sync.wait_durable(second, Duration::ZERO).await);
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
