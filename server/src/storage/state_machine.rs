//! openraft `RaftStateMachine` of one shard: applies committed commands to
//! the shard's data, keeps the exactly-once session table, builds and
//! installs snapshots.
//!
//! Every apply call writes data, sessions and the applied state (applied log
//! id, membership, state-machine clock) in one RocksDB write batch, so a crash
//! never leaves data and applied index disagreeing. The batch is not synced:
//! its entries are already durable in the Raft log and are replayed after a
//! crash, and RocksDB's WAL is ordered, so the next synced write (every log
//! append is one) makes it durable too.
//!
//! This module decides what a command does to the data. It does not route or
//! validate requests (that is the edge's job) and does no network I/O.

use std::collections::BTreeMap;
use std::collections::HashMap;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use openraft::storage::RaftStateMachine;
use openraft::EntryPayload;
use openraft::ErrorSubject;
use openraft::ErrorVerb;
use openraft::OptionalSend;
use openraft::RaftSnapshotBuilder;
use serde::Deserialize;
use serde::Serialize;
use tokio::io::AsyncWriteExt;
use tokio::sync::oneshot;
use tokio::sync::watch;

use super::hosted;
use super::hosted::HostedRanges;
use super::keys;
use super::snapshot;
use super::snapshot::RecordTag;
use super::snapshot_files;
use super::snapshot_files::SnapshotFiles;
use super::to_raft_err;
use super::Cf;
use super::Db;
use crate::raft::types::decode;
use crate::raft::types::encode;
use crate::raft::types::Command;
use crate::raft::types::Entry;
use crate::raft::types::LogId;
use crate::raft::types::RaftRequest;
use crate::raft::types::RaftResponse;
use crate::raft::types::SessionId;
use crate::raft::types::Snapshot;
use crate::raft::types::SnapshotMeta;
use crate::raft::types::StorageError;
use crate::raft::types::StoredMembership;
use crate::raft::types::TypeConfig;
use crate::ring::token_of;
use crate::ring::ClusterLayout;
use crate::ring::TokenRange;
use crate::ring::META_SHARD_ID;

/// Most results a session keeps per shard: a client may have this many
/// writes to one shard in flight; beyond it the oldest result is forgotten
/// (a retry of it is then refused as stale, never applied twice).
pub const SESSION_RESPONSES_MAX: usize = 256;
/// A snapshot install writes its records in batches of about this size.
pub const INSTALL_BATCH_BYTES_MAX: usize = 4 * 1024 * 1024;
/// Expired sessions are deleted physically every this many applied entries.
pub const SESSION_GC_INTERVAL_ENTRIES: u64 = 4096;
/// Most expired sessions deleted by one GC pass (bounds the pass's batch).
pub const SESSION_GC_BATCH_MAX: usize = 10_000;

/// Applied state persisted in `meta` under `(shard, 'a')`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct AppliedState {
    last_applied: Option<LogId>,
    membership: StoredMembership,
    /// Largest leader timestamp applied so far (ms since the Unix epoch).
    clock_ms: u64,
}

/// One client's entry in the session table of a shard.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionRecord {
    /// Sequences below this are complete: their results are forgotten and a
    /// retry of one is refused as stale.
    pub low: u64,
    /// State-machine clock when the last write of this client applied.
    pub last_ms: u64,
    /// Results of the applied sequences `>= low`, answered to retries.
    pub responses: BTreeMap<u64, RaftResponse>,
}

impl SessionRecord {
    /// The highest sequence applied, reported with STALE_SEQUENCE.
    fn last_sequence(&self) -> u64 {
        self.responses
            .keys()
            .next_back()
            .copied()
            .unwrap_or(self.low.saturating_sub(1))
    }
}

/// Counters shared with the node.
#[derive(Debug, Default)]
pub struct SmStats {
    pub snapshots_built: AtomicU64,
    pub snapshots_installed: AtomicU64,
}

/// The state machine of one shard. Clones share nothing mutable except the
/// database and counters; openraft owns exactly one.
pub struct ShardStateMachine {
    shard: u64,
    db: Arc<Db>,
    ranges: Vec<TokenRange>,
    /// `ranges`, as of the last applied entry, for the node's reads.
    applied_ranges: AppliedRanges,
    session_ttl_ms: u64,
    state: AppliedState,
    stats: Arc<SmStats>,
    /// Metadata group only: the installed cluster layout.
    layout_tx: watch::Sender<Option<ClusterLayout>>,
    files: SnapshotFiles,
    /// The file the snapshot being received is written to.
    receiving: Option<String>,
    /// Writes that file back to disk while it is received.
    receiving_writeback: Option<snapshot_files::WritebackGuard>,
    /// Ranges of the other shards on this node: never written by this one.
    hosted: Arc<HostedRanges>,
}

impl ShardStateMachine {
    /// Opens the state machine of `shard`, resuming from what is on disk.
    /// `hosted` is the node's map of its shards' ranges (see
    /// [`HostedRanges`]; an empty one for a shard alone on its node).
    pub fn open(
        shard: u64,
        db: Arc<Db>,
        ranges: Vec<TokenRange>,
        session_ttl_ms: u64,
        stats: Arc<SmStats>,
        hosted: Arc<HostedRanges>,
    ) -> Result<Self, StorageError> {
        assert!(session_ttl_ms > 0);
        let state = read_meta(&db, &keys::tagged(shard, keys::META_APPLIED), "applied state")?.unwrap_or_default();
        // A data shard's ranges come from its seed or its last snapshot
        // (see `seed`). A replica that has neither yet gets a snapshot
        // before it applies any entry: until then the layout's (current)
        // ranges are a placeholder, never used to decide an entry.
        let ranges = read_meta(&db, &keys::tagged(shard, keys::META_RANGES), "ranges")?.unwrap_or(ranges);
        let layout = if shard == META_SHARD_ID {
            read_layout(&db)?
        } else {
            None
        };
        let (layout_tx, _) = watch::channel(layout);
        let files = SnapshotFiles::open(db.root(), shard)
            .map_err(|e| to_raft_err(ErrorSubject::StateMachine, ErrorVerb::Read, e))?;
        let mut sm = Self {
            shard,
            db,
            applied_ranges: AppliedRanges::new(ranges.clone()),
            ranges,
            session_ttl_ms,
            state,
            stats,
            layout_tx,
            files,
            receiving: None,
            receiving_writeback: None,
            hosted,
        };
        // A crash in the middle of installing a snapshot: finish the job
        // from the file before anyone reads this shard.
        let marker: Option<(SnapshotMeta, String)> = read_meta(
            &sm.db,
            &keys::tagged(shard, keys::META_INSTALLING),
            "snapshot install marker",
        )?;
        if let Some((meta, name)) = marker {
            tracing::warn!(shard, snapshot = %meta.snapshot_id, "redoing an interrupted snapshot install");
            sm.apply_snapshot_file(&meta, &name)?;
        }
        sm.forget_other_snapshots();
        Ok(sm)
    }

    /// Watches the cluster layout installed through the metadata group.
    pub fn subscribe_layout(&self) -> watch::Receiver<Option<ClusterLayout>> {
        self.layout_tx.subscribe()
    }

    /// The ranges in force: changed by a split earlier in this apply batch.
    fn ranges_now<'a>(&'a self, overlay: &'a Overlay) -> &'a [TokenRange] {
        overlay.ranges.as_deref().unwrap_or(&self.ranges)
    }

    fn owns(&self, overlay: &Overlay, key: &[u8]) -> bool {
        let t = token_of(key);
        self.ranges_now(overlay).iter().any(|r| r.contains(t))
    }

    /// Whether this is a shard born from a split (applied at log index 0)
    /// that has no snapshot yet.
    pub fn is_unsnapshotted_seed(&self) -> Result<bool, StorageError> {
        let seed = self
            .state
            .last_applied
            .is_some_and(|l| l.index == 0 && l.leader_id.term == 0);
        Ok(seed && self.shard != META_SHARD_ID && self.read_current_snapshot()?.is_none())
    }

    /// The token ranges this shard owns now.
    pub fn ranges(&self) -> &[TokenRange] {
        &self.ranges
    }

    /// A view of the ranges that follows every applied entry.
    pub fn applied_ranges(&self) -> AppliedRanges {
        self.applied_ranges.clone()
    }

    fn set_ranges(&mut self, ranges: Vec<TokenRange>) {
        self.applied_ranges.set(ranges.clone());
        self.ranges = ranges;
    }

    /// Splits the tokens `>= at` off into `new_shard` (see `Command::Split`).
    /// The caller flushed every earlier entry, so the database is current.
    fn split(
        &self,
        batch: &mut rocksdb::WriteBatch,
        overlay: &mut Overlay,
        at: u64,
        new_shard: u64,
    ) -> Result<RaftResponse, StorageError> {
        let rd = |e: String| to_raft_err(ErrorSubject::StateMachine, ErrorVerb::Read, e);
        let reject = |reason: String| Ok(RaftResponse::Rejected { reason });
        let [range] = self.ranges_now(overlay) else {
            return reject(format!("shard {} owns several ranges; only one can split", self.shard));
        };
        let range = *range;
        if range.end == Some(at) {
            // Applied before (a retried proposal): nothing to do.
            return Ok(RaftResponse::Done);
        }
        if !(range.start < at && range.contains(at)) {
            return reject(format!("token {at} is not strictly inside {range:?}"));
        }
        if new_shard == META_SHARD_ID || new_shard == self.shard || new_shard == keys::NODE_RECORDS {
            return reject(format!("{new_shard} cannot be the new shard's id"));
        }
        let left = vec![TokenRange {
            start: range.start,
            end: Some(at),
        }];
        let right = vec![TokenRange {
            start: at,
            end: range.end,
        }];
        let meta = self.db.cf(Cf::Meta);
        // The new shard may already live on this node with state of its
        // own: this replica is lagging, or was re-created and replays its
        // history, and the new shard got its data from its own leader. Then
        // its state must not be overwritten with this older one: the right
        // half only leaves this shard's key index.
        let hosted_here = self.hosted.hosts(new_shard);
        // Or the layout already placed the new shard on other nodes (this
        // replica replays a split it missed): seeding it here would leave
        // an orphan, so the right half's rows are dropped instead.
        let placed_elsewhere = !hosted_here && self.hosted.knows(new_shard);
        let seed_new = !hosted_here && !placed_elsewhere;
        // Key index: the right half's keys move to the new shard.
        let index = self.db.cf(Cf::KeyIndex);
        let upper = keys::shard_prefix(self.shard + 1).to_vec();
        let mut opts = rocksdb::ReadOptions::default();
        opts.set_iterate_upper_bound(upper);
        let from = keys::shard_prefix(self.shard);
        let it = self.db.raw().iterator_cf_opt(
            index,
            opts,
            rocksdb::IteratorMode::From(&from, rocksdb::Direction::Forward),
        );
        let mut moved = 0u64;
        for item in it {
            let (k, _) = item.map_err(|e| rd(e.into_string()))?;
            let key = &k[8..];
            if right[0].contains(token_of(key)) {
                batch.delete_cf(index, &k);
                if seed_new {
                    batch.put_cf(index, keys::index_key(new_shard, key), b"");
                }
                moved += 1;
            }
        }
        batch.put_cf(meta, keys::tagged(self.shard, keys::META_RANGES), encode(&left));
        overlay.ranges = Some(left);
        if placed_elsewhere {
            // No shard on this node owns these rows any more.
            let data = self.db.cf(Cf::Data);
            for r in hosted::subtract(&right, &overlay.foreign) {
                let (from, to) = keys::data_range(r.start, r.end);
                batch.delete_range_cf(data, from, to);
            }
            tracing::info!(
                shard = self.shard,
                new_shard,
                at,
                "shard split replayed; the new shard lives on other nodes"
            );
            return Ok(RaftResponse::Done);
        }
        if !seed_new {
            tracing::info!(
                shard = self.shard,
                new_shard,
                at,
                "shard split replayed; the new shard already has its own replica here"
            );
            return Ok(RaftResponse::Done);
        }
        // Sessions: both halves keep every client's record, so a retry
        // finds its result whichever half now owns the key.
        let prefix = keys::tagged(self.shard, keys::META_SESSION);
        let it = self
            .db
            .raw()
            .iterator_cf(meta, rocksdb::IteratorMode::From(&prefix, rocksdb::Direction::Forward));
        for item in it {
            let (k, v) = item.map_err(|e| rd(e.into_string()))?;
            if !k.starts_with(&prefix) {
                break;
            }
            let mut nk = keys::tagged(new_shard, keys::META_SESSION).to_vec();
            nk.extend_from_slice(&k[prefix.len()..]);
            batch.put_cf(meta, nk, &v);
        }
        seed(
            &self.db,
            batch,
            new_shard,
            self.state.membership.membership().clone(),
            &right,
            self.state.clock_ms,
        );
        tracing::info!(shard = self.shard, new_shard, at, keys_moved = moved, "shard split");
        Ok(RaftResponse::Done)
    }

    fn load_session(&self, overlay: &Overlay, client_id: &[u8; 16]) -> Result<Option<SessionRecord>, StorageError> {
        if let Some(v) = overlay.sessions.get(client_id) {
            return Ok(Some(v.clone()));
        }
        read_meta(&self.db, &keys::session_key(self.shard, client_id), "session")
    }

    fn read_value(&self, overlay: &Overlay, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError> {
        let dk = keys::data_key(token_of(key), key);
        if let Some(v) = overlay.data.get(&dk) {
            return Ok(v.clone());
        }
        self.db
            .get(Cf::Data, &dk)
            .map_err(|e| to_raft_err(ErrorSubject::StateMachine, ErrorVerb::Read, e))
    }

    fn put(&self, batch: &mut rocksdb::WriteBatch, overlay: &mut Overlay, key: &[u8], value: &[u8]) {
        if overlay.foreign(token_of(key)) {
            // Replaying history from before a split: the key is another
            // local shard's now.
            return;
        }
        let dk = keys::data_key(token_of(key), key);
        batch.put_cf(self.db.cf(Cf::Data), &dk, value);
        batch.put_cf(self.db.cf(Cf::KeyIndex), keys::index_key(self.shard, key), b"");
        overlay.data.insert(dk, Some(value.to_vec()));
    }

    fn delete(&self, batch: &mut rocksdb::WriteBatch, overlay: &mut Overlay, key: &[u8]) {
        if overlay.foreign(token_of(key)) {
            return;
        }
        let dk = keys::data_key(token_of(key), key);
        batch.delete_cf(self.db.cf(Cf::Data), &dk);
        batch.delete_cf(self.db.cf(Cf::KeyIndex), keys::index_key(self.shard, key));
        overlay.data.insert(dk, None);
    }

    /// Applies one command; deterministic given the same prior state.
    fn execute(
        &self,
        batch: &mut rocksdb::WriteBatch,
        overlay: &mut Overlay,
        cmd: &Command,
    ) -> Result<RaftResponse, StorageError> {
        if self.shard == META_SHARD_ID {
            return match cmd {
                Command::InitCluster(layout) => {
                    if overlay.layout.is_none() && self.layout_tx.borrow().is_none() {
                        batch.put_cf(
                            self.db.cf(Cf::Meta),
                            keys::tagged(META_SHARD_ID, keys::META_LAYOUT),
                            encode(layout),
                        );
                        overlay.layout = Some(layout.clone());
                    }
                    Ok(RaftResponse::Done)
                }
                Command::UpdateLayout { expected_epoch, layout } => {
                    let current = overlay.layout.clone().or_else(|| self.layout_tx.borrow().clone());
                    let current_epoch = current.as_ref().map_or(0, |l| l.epoch);
                    // Deterministic on every replica: depends only on the
                    // applied layout and the command.
                    let valid = current.is_some()
                        && current_epoch == *expected_epoch
                        && layout.epoch == expected_epoch + 1
                        && layout.check().is_ok();
                    if !valid {
                        return Ok(RaftResponse::Layout {
                            applied: false,
                            epoch: current_epoch,
                        });
                    }
                    batch.put_cf(
                        self.db.cf(Cf::Meta),
                        keys::tagged(META_SHARD_ID, keys::META_LAYOUT),
                        encode(layout),
                    );
                    overlay.layout = Some(layout.clone());
                    Ok(RaftResponse::Layout {
                        applied: true,
                        epoch: layout.epoch,
                    })
                }
                _ => Ok(RaftResponse::Rejected {
                    reason: "data command sent to the metadata group".into(),
                }),
            };
        }
        let keys_of = |c: &Command| -> Vec<Vec<u8>> {
            match c {
                Command::Put { key, .. } | Command::Delete { key } | Command::CompareAndSwap { key, .. } => {
                    vec![key.clone()]
                }
                Command::BatchPut { pairs } => pairs.iter().map(|(k, _)| k.clone()).collect(),
                Command::InitCluster(_)
                | Command::UpdateLayout { .. }
                | Command::Split { .. }
                | Command::Multi { .. } => vec![],
            }
        };
        if let Some(k) = keys_of(cmd).iter().find(|k| !self.owns(overlay, k)) {
            return Ok(RaftResponse::Rejected {
                reason: format!("shard {} does not own key {}", self.shard, hex::encode(k)),
            });
        }
        Ok(match cmd {
            Command::Put { key, value } => {
                self.put(batch, overlay, key, value);
                RaftResponse::Done
            }
            Command::Delete { key } => {
                let existed = self.read_value(overlay, key)?.is_some();
                if existed {
                    self.delete(batch, overlay, key);
                }
                RaftResponse::Deleted { existed }
            }
            Command::CompareAndSwap {
                key,
                expected,
                new_value,
            } => {
                let current = self.read_value(overlay, key)?;
                let succeeded = current == *expected;
                if succeeded {
                    match new_value {
                        Some(v) => self.put(batch, overlay, key, v),
                        None => self.delete(batch, overlay, key),
                    }
                }
                RaftResponse::Swapped {
                    succeeded,
                    previous: current,
                }
            }
            Command::BatchPut { pairs } => {
                for (k, v) in pairs {
                    self.put(batch, overlay, k, v);
                }
                RaftResponse::Done
            }
            Command::Split { at, new_shard } => return self.split(batch, overlay, *at, *new_shard),
            Command::InitCluster(_) | Command::UpdateLayout { .. } => RaftResponse::Rejected {
                reason: "cluster layout sent to a data shard".into(),
            },
            // `apply_request` takes a merged entry apart; one inside another
            // is not valid.
            Command::Multi { .. } => RaftResponse::Rejected {
                reason: "a merged entry inside a merged entry".into(),
            },
        })
    }

    /// Applies a request with exactly-once session handling; a `Multi`
    /// part by part, each with its own session.
    fn apply_request(
        &self,
        batch: &mut rocksdb::WriteBatch,
        overlay: &mut Overlay,
        req: &RaftRequest,
        clock_ms: u64,
    ) -> Result<RaftResponse, StorageError> {
        let Command::Multi { parts } = &req.command else {
            return self.apply_with_session(batch, overlay, &req.command, req.session, clock_ms);
        };
        if req.session.is_some() || self.shard == META_SHARD_ID {
            return Ok(RaftResponse::Rejected {
                reason: "a merged entry carries its sessions in its parts, and only on data shards".into(),
            });
        }
        let mut responses = Vec::with_capacity(parts.len());
        for part in parts {
            let response = match &part.command {
                Command::Put { .. } | Command::BatchPut { .. } => {
                    self.apply_with_session(batch, overlay, &part.command, part.session, clock_ms)?
                }
                _ => RaftResponse::Rejected {
                    reason: "only puts may share a merged entry".into(),
                },
            };
            responses.push(response);
        }
        debug_assert_eq!(responses.len(), parts.len());
        Ok(RaftResponse::Multi { responses })
    }

    /// Applies one command with exactly-once session handling.
    fn apply_with_session(
        &self,
        batch: &mut rocksdb::WriteBatch,
        overlay: &mut Overlay,
        command: &Command,
        session: Option<SessionId>,
        clock_ms: u64,
    ) -> Result<RaftResponse, StorageError> {
        let Some(SessionId {
            client_id,
            sequence,
            first_incomplete,
        }) = session
        else {
            return self.execute(batch, overlay, command);
        };
        assert!(sequence > 0, "validated at the edge");
        // 0 = one write in flight: everything before this one is complete.
        let floor = if first_incomplete == 0 {
            sequence
        } else {
            first_incomplete.min(sequence)
        };
        let live = |r: &SessionRecord| clock_ms.saturating_sub(r.last_ms) <= self.session_ttl_ms;
        let mut rec = match self.load_session(overlay, &client_id)? {
            Some(r) if live(&r) => r,
            // Unknown or expired client: a fresh session.
            _ => SessionRecord {
                low: 0,
                last_ms: clock_ms,
                responses: BTreeMap::new(),
            },
        };
        if sequence < rec.low {
            return Ok(RaftResponse::StaleSequence {
                last_sequence: rec.last_sequence(),
            });
        }
        if let Some(r) = rec.responses.get(&sequence) {
            return Ok(r.clone());
        }
        let response = self.execute(batch, overlay, command)?;
        if matches!(response, RaftResponse::Rejected { .. }) {
            // Nothing was applied, so there is nothing to answer a retry
            // with: the client re-routes the rejected keys after a split
            // and retries the same sequence with the keys still here, which
            // must then apply, not get this rejection again (found by t71:
            // a coalesced batch retried for a minute).
            return Ok(response);
        }
        rec.low = rec.low.max(floor);
        let low = rec.low;
        rec.responses.retain(|s, _| *s >= low);
        rec.responses.insert(sequence, response.clone());
        while rec.responses.len() > SESSION_RESPONSES_MAX {
            if let Some((oldest, _)) = rec.responses.pop_first() {
                rec.low = oldest + 1;
            }
        }
        rec.last_ms = clock_ms;
        debug_assert!(rec.responses.keys().all(|s| *s >= rec.low));
        // Written once per applied batch by `write_sessions`, however many
        // of the batch's entries came from this client.
        overlay.sessions.insert(client_id, rec);
        Ok(response)
    }

    /// Puts every session record the batch changed (all of
    /// `overlay.sessions`: only changed records go there).
    fn write_sessions(&self, batch: &mut rocksdb::WriteBatch, overlay: &Overlay) {
        for (client_id, rec) in &overlay.sessions {
            batch.put_cf(
                self.db.cf(Cf::Meta),
                keys::session_key(self.shard, client_id),
                encode(rec),
            );
        }
    }

    /// Deletes sessions idle for longer than the TTL.
    fn gc_sessions(
        &self,
        batch: &mut rocksdb::WriteBatch,
        overlay: &Overlay,
        clock_ms: u64,
    ) -> Result<(), StorageError> {
        let prefix = keys::tagged(self.shard, keys::META_SESSION);
        let it = self.db.raw().prefix_iterator_cf(self.db.cf(Cf::Meta), prefix);
        let mut deleted = 0usize;
        for item in it {
            let (k, v) = item.map_err(|e| to_raft_err(ErrorSubject::StateMachine, ErrorVerb::Read, e))?;
            if !k.starts_with(&prefix) || deleted >= SESSION_GC_BATCH_MAX {
                break;
            }
            let Ok(rec) = decode::<SessionRecord>(&v) else { continue };
            let id: Option<[u8; 16]> = k.get(9..).and_then(|s| s.try_into().ok());
            if id.is_some_and(|id| overlay.sessions.contains_key(&id)) {
                continue;
            }
            if clock_ms.saturating_sub(rec.last_ms) > self.session_ttl_ms {
                batch.delete_cf(self.db.cf(Cf::Meta), &k);
                deleted += 1;
            }
        }
        Ok(())
    }

    /// Writes `batch` with the sessions the overlay changed and the applied
    /// state, and takes the overlay's new ranges (after a split), which
    /// readers see before the write (see [`AppliedRanges`]).
    fn write_applied(&mut self, mut batch: rocksdb::WriteBatch, overlay: &mut Overlay) -> Result<(), StorageError> {
        self.write_sessions(&mut batch, overlay);
        self.save_applied(&mut batch);
        let ranges = overlay.ranges.take();
        if let Some(r) = &ranges {
            self.applied_ranges.set(r.clone());
        }
        self.db
            .write_unsynced(batch)
            .map_err(|e| to_raft_err(ErrorSubject::StateMachine, ErrorVerb::Write, e))?;
        if let Some(r) = ranges {
            self.ranges = r;
        }
        Ok(())
    }

    fn save_applied(&self, batch: &mut rocksdb::WriteBatch) {
        batch.put_cf(
            self.db.cf(Cf::Meta),
            keys::tagged(self.shard, keys::META_APPLIED),
            encode(&self.state),
        );
    }

    fn read_current_snapshot(&self) -> Result<Option<(SnapshotMeta, String)>, StorageError> {
        read_meta(
            &self.db,
            &keys::tagged(self.shard, keys::META_SNAPSHOT),
            "stored snapshot",
        )
    }

    /// Deletes every snapshot file but the current one.
    fn forget_other_snapshots(&self) {
        match self.read_current_snapshot() {
            Ok(cur) => {
                let keep: Vec<&str> = cur.iter().map(|(_, n)| n.as_str()).collect();
                self.files.remove_all_except(&keep);
            }
            Err(e) => tracing::warn!(shard = self.shard, error = %e, "cannot read the current snapshot record"),
        }
    }

    /// Replaces the shard's state with the (already verified) snapshot file
    /// `name`. Crash-safe: the install marker written before the first
    /// batch is removed in the same batch as the new applied state, and
    /// `open` redoes an install whose marker it finds. Blocking I/O.
    fn apply_snapshot_file(&mut self, meta: &SnapshotMeta, name: &str) -> Result<(), StorageError> {
        let sub = || ErrorSubject::Snapshot(Some(meta.signature()));
        let rd = |e: String| to_raft_err(sub(), ErrorVerb::Read, e);
        let wr = |e: super::StorageError| to_raft_err(sub(), ErrorVerb::Write, e);
        // Readers of this replica refuse from here until the install is
        // done: in between, its data is partly the old and partly the
        // snapshot's. A failed install leaves them refusing.
        self.applied_ranges.begin_install();
        let path = self.files.path(name);
        let file = std::fs::File::open(&path).map_err(|e| rd(format!("{}: {e}", path.display())))?;
        let mut reader = snapshot::SnapshotReader::new(file).map_err(|e| rd(e.to_string()))?;
        // A data shard's snapshot starts with the ranges it covers: only
        // they are replaced (after a split this replica may still believe it
        // owns more, and the rest belongs to the new shard).
        let mut first = reader.next_record().map_err(|e| rd(e.to_string()))?;
        if let Some((RecordTag::Ranges, _, v)) = &first {
            let r: Vec<TokenRange> = decode(v).map_err(|e| rd(format!("snapshot ranges record: {e}")))?;
            self.set_ranges(r);
            first = None;
        }
        let first = first.map(Ok);

        // First batch: clear the shard's data, key index and sessions. Not
        // in ranges other shards on this node own now: a snapshot from
        // before a split covers the split-off half too.
        let foreign = self.hosted.others(self.shard);
        let mut batch = rocksdb::WriteBatch::default();
        let data = self.db.cf(Cf::Data);
        for r in &hosted::subtract(&self.ranges, &foreign) {
            let from = r.start.to_be_bytes().to_vec();
            match r.end {
                Some(end) => batch.delete_range_cf(data, from, end.to_be_bytes().to_vec()),
                None => {
                    // delete_range needs an exclusive end: cover every key
                    // starting with token u64::MAX explicitly.
                    batch.delete_range_cf(data, from, u64::MAX.to_be_bytes().to_vec());
                    let it = self.db.raw().prefix_iterator_cf(data, u64::MAX.to_be_bytes());
                    for item in it {
                        let (k, _) = item.map_err(|e| rd(e.to_string()))?;
                        if !k.starts_with(&u64::MAX.to_be_bytes()) {
                            break;
                        }
                        batch.delete_cf(data, &k);
                    }
                }
            }
        }
        let index_from = keys::shard_prefix(self.shard).to_vec();
        let index_to = keys::shard_prefix(self.shard + 1).to_vec();
        batch.delete_range_cf(self.db.cf(Cf::KeyIndex), index_from, index_to);
        let sess = keys::tagged(self.shard, keys::META_SESSION);
        let sess_end = keys::tagged(self.shard, keys::META_SESSION + 1);
        batch.delete_range_cf(self.db.cf(Cf::Meta), sess.to_vec(), sess_end.to_vec());

        let mut clock_ms = 0;
        let mut layout = None;
        // The data goes to SST files that are ingested at the end; the key
        // index, sessions and deletions (small) go through write batches.
        let db = self.db.clone();
        let mut ingest = snapshot_files::IngestFiles::new(&self.files, db.sst_options());
        let records = first
            .into_iter()
            .chain(std::iter::from_fn(|| reader.next_record().transpose()));
        for record in records {
            let (tag, k, v) = record.map_err(|e| rd(e.to_string()))?;
            match tag {
                RecordTag::Data if foreign.iter().any(|r| r.contains(token_of(&k))) => {}
                RecordTag::Data => {
                    ingest.put(&keys::data_key(token_of(&k), &k), &v).map_err(wr)?;
                    batch.put_cf(self.db.cf(Cf::KeyIndex), keys::index_key(self.shard, &k), b"");
                }
                RecordTag::Ranges => return Err(rd("snapshot ranges record out of place".into())),
                RecordTag::Session => {
                    let id: [u8; 16] = k[..]
                        .try_into()
                        .map_err(|_| rd("snapshot session record with a bad client id".into()))?;
                    batch.put_cf(self.db.cf(Cf::Meta), keys::session_key(self.shard, &id), &v);
                }
                RecordTag::Clock => {
                    let b: [u8; 8] = v[..]
                        .try_into()
                        .map_err(|_| rd("snapshot clock record of the wrong size".into()))?;
                    clock_ms = u64::from_be_bytes(b);
                }
                RecordTag::Layout => {
                    let l: ClusterLayout = decode(&v).map_err(|e| rd(format!("snapshot layout record: {e}")))?;
                    batch.put_cf(self.db.cf(Cf::Meta), keys::tagged(META_SHARD_ID, keys::META_LAYOUT), &v);
                    layout = Some(l);
                }
            }
            if batch.size_in_bytes() >= INSTALL_BATCH_BYTES_MAX {
                self.db.write_without_wal(std::mem::take(&mut batch)).map_err(wr)?;
            }
        }
        // The batches went to the memtables without the WAL, so the WAL is
        // not written twice and no client write's sync waits for them. The
        // data is ingested after the deletions (so it is newer than them),
        // then the rest is flushed to SST files, all before the batch below
        // records the install as done: until then the install marker makes
        // a restart redo it from the file.
        self.db.write_without_wal(std::mem::take(&mut batch)).map_err(wr)?;
        if crate::failpoint::fire(crate::failpoint::SNAPSHOT_INSTALL_SLOW) {
            tracing::warn!(
                shard = self.shard,
                "failpoint: pausing in the middle of a snapshot install"
            );
            std::thread::sleep(std::time::Duration::from_millis(
                crate::failpoint::SNAPSHOT_INSTALL_SLOW_MS,
            ));
        }
        let sst = ingest.finish().map_err(wr)?;
        let ingested = self.db.ingest(Cf::Data, &sst);
        self.files.remove_ingest_files();
        ingested.map_err(wr)?;
        self.db.flush(&[Cf::Data, Cf::KeyIndex, Cf::Meta]).map_err(wr)?;
        self.state = AppliedState {
            last_applied: meta.last_log_id,
            membership: meta.last_membership.clone(),
            clock_ms,
        };
        self.save_applied(&mut batch);
        if self.shard != META_SHARD_ID {
            batch.put_cf(
                self.db.cf(Cf::Meta),
                keys::tagged(self.shard, keys::META_RANGES),
                encode(&self.ranges),
            );
        }
        batch.put_cf(
            self.db.cf(Cf::Meta),
            keys::tagged(self.shard, keys::META_SNAPSHOT),
            encode(&(meta, name)),
        );
        batch.delete_cf(self.db.cf(Cf::Meta), keys::tagged(self.shard, keys::META_INSTALLING));
        self.db.write_unsynced(batch).map_err(wr)?;
        self.applied_ranges.end_install();
        if layout.is_some() {
            self.layout_tx.send_replace(layout);
        }
        Ok(())
    }
}

/// Writes into `batch` the state of a data shard that starts without any
/// log entry: as if it had installed a snapshot at log id 0 holding
/// `membership` and `ranges`, with its log purged up to there (plus
/// whatever data, key index and sessions the caller writes alongside).
///
/// Why every data shard starts this way (at bootstrap and at a split): a
/// replica that lacks this state must get a snapshot from its leader, which
/// carries the ranges the shard had at the snapshot's index. Replaying the
/// log from index 0 instead would decide ownership with ranges the replica
/// cannot know (the layout has only the current ones) and diverge on any
/// entry from before a later split.
pub fn seed(
    db: &Db,
    batch: &mut rocksdb::WriteBatch,
    shard: u64,
    membership: openraft::Membership<crate::raft::types::NodeId, openraft::BasicNode>,
    ranges: &[TokenRange],
    clock_ms: u64,
) {
    assert_ne!(shard, META_SHARD_ID, "the metadata group replays its log from index 0");
    assert!(!ranges.is_empty(), "a data shard owns at least one token range");
    let zero = LogId::new(openraft::CommittedLeaderId::new(0, 0), 0);
    let state = AppliedState {
        last_applied: Some(zero),
        membership: StoredMembership::new(Some(zero), membership),
        clock_ms,
    };
    let meta = db.cf(Cf::Meta);
    batch.put_cf(meta, keys::tagged(shard, keys::META_APPLIED), encode(&state));
    batch.put_cf(meta, keys::tagged(shard, keys::META_RANGES), encode(&ranges.to_vec()));
    let raft_state = db.cf(Cf::RaftState);
    batch.put_cf(raft_state, keys::tagged(shard, keys::STATE_PURGED), encode(&Some(zero)));
    batch.put_cf(
        raft_state,
        keys::tagged(shard, keys::STATE_COMMITTED),
        encode(&Some(zero)),
    );
}

/// Runs a long synchronous job (checking or installing a snapshot of a
/// large shard takes seconds) without stalling the tokio worker's other
/// tasks: on a multi-threaded runtime the worker hands its queue to another
/// thread first. Other runtimes (unit tests) run it in place.
fn off_the_runtime<R>(job: impl FnOnce() -> R) -> R {
    match tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor()) {
        Ok(tokio::runtime::RuntimeFlavor::MultiThread) => tokio::task::block_in_place(job),
        _ => job(),
    }
}

/// The token ranges a shard's state machine owns as of its last applied
/// entry, shared with the node: a read that passed the shard's read barrier
/// checks its key here, so a stale layout never makes a shard answer for a
/// key it gave away in a split. Ranges only shrink while a replica runs,
/// and a split publishes its smaller ranges before it writes the moved key
/// index: a reader that takes a RocksDB snapshot and then finds the old
/// ranges here knows its snapshot predates the split.
///
/// A snapshot install is not atomic either (old data deleted, new data
/// ingested, then the applied state written), so the ranges also carry an
/// install generation, odd while an install runs: a reader takes it before
/// reading and checks it after ([`AppliedRanges::read_generation`],
/// [`AppliedRanges::unchanged_since`]), and refuses when an install ran in
/// between or runs still.
#[derive(Debug, Clone, Default)]
pub struct AppliedRanges(Arc<RangesInner>);

#[derive(Debug, Default)]
struct RangesInner {
    ranges: std::sync::RwLock<Vec<TokenRange>>,
    installs: AtomicU64,
}

impl AppliedRanges {
    fn new(ranges: Vec<TokenRange>) -> Self {
        Self(Arc::new(RangesInner {
            ranges: std::sync::RwLock::new(ranges),
            ..RangesInner::default()
        }))
    }

    fn set(&self, ranges: Vec<TokenRange>) {
        *self.0.ranges.write().unwrap_or_else(|p| p.into_inner()) = ranges;
    }

    /// Whether `token` is in the ranges.
    pub fn contains(&self, token: u64) -> bool {
        self.0
            .ranges
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .any(|r| r.contains(token))
    }

    /// The ranges now.
    pub fn get(&self) -> Vec<TokenRange> {
        self.0.ranges.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Marks an install as running (a retry after a failed one continues
    /// the same odd generation).
    fn begin_install(&self) {
        let _ = self
            .0
            .installs
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |g| Some(g | 1));
    }

    fn end_install(&self) {
        let was = self.0.installs.fetch_add(1, Ordering::SeqCst);
        assert!(!was.is_multiple_of(2), "install generation {was} ended without a start");
    }

    /// Whether an install runs, or the last one failed and none has
    /// succeeded since: the replica's data is torn and it refuses reads.
    pub fn installing(&self) -> bool {
        !self.0.installs.load(Ordering::SeqCst).is_multiple_of(2)
    }

    /// The install generation to check after a read, or `None` while an
    /// install runs (the data is torn: do not read).
    pub fn read_generation(&self) -> Option<u64> {
        let g = self.0.installs.load(Ordering::SeqCst);
        g.is_multiple_of(2).then_some(g)
    }

    /// Whether no install started since `read_generation` returned
    /// `generation`: reads done in between saw no install's partial state.
    pub fn unchanged_since(&self, generation: u64) -> bool {
        std::sync::atomic::fence(Ordering::SeqCst);
        self.0.installs.load(Ordering::SeqCst) == generation
    }
}

/// Values written earlier in the same apply batch (a `WriteBatch` cannot be
/// read back).
#[derive(Default)]
struct Overlay {
    data: HashMap<Vec<u8>, Option<Vec<u8>>>,
    sessions: HashMap<[u8; 16], SessionRecord>,
    layout: Option<ClusterLayout>,
    /// New ranges of this shard after a split in this batch.
    ranges: Option<Vec<TokenRange>>,
    /// Ranges other shards on this node own (read once per batch): puts
    /// and deletes there are skipped (see [`HostedRanges`]).
    foreign: Vec<TokenRange>,
}

impl Overlay {
    fn for_shard(hosted: &HostedRanges, shard: u64) -> Self {
        Overlay {
            foreign: hosted.others(shard),
            ..Overlay::default()
        }
    }

    fn foreign(&self, token: u64) -> bool {
        self.foreign.iter().any(|r| r.contains(token))
    }
}

/// Reads and decodes one `meta` record; `what` names it in errors.
fn read_meta<T: for<'de> Deserialize<'de>>(db: &Db, key: &[u8], what: &str) -> Result<Option<T>, StorageError> {
    let raw = db
        .get(Cf::Meta, key)
        .map_err(|e| to_raft_err(ErrorSubject::StateMachine, ErrorVerb::Read, e))?;
    raw.map(|b| decode(&b)).transpose().map_err(|e| {
        to_raft_err(
            ErrorSubject::StateMachine,
            ErrorVerb::Read,
            format!("decode {what}: {e}"),
        )
    })
}

fn read_layout(db: &Db) -> Result<Option<ClusterLayout>, StorageError> {
    read_meta(db, &keys::tagged(META_SHARD_ID, keys::META_LAYOUT), "layout")
}

/// Finishes a snapshot whose RocksDB view was taken when openraft asked
/// for the builder; the file is written by a thread of its own.
pub struct ShardSnapshotBuilder {
    shard: u64,
    db: Arc<Db>,
    meta: SnapshotMeta,
    name: String,
    files: SnapshotFiles,
    written: Option<oneshot::Receiver<Result<u64, super::StorageError>>>,
    stats: Arc<SmStats>,
}

impl RaftSnapshotBuilder<TypeConfig> for ShardSnapshotBuilder {
    async fn build_snapshot(&mut self) -> Result<Snapshot, StorageError> {
        let err = |e: String| to_raft_err(ErrorSubject::Snapshot(None), ErrorVerb::Write, e);
        let written = self
            .written
            .take()
            .ok_or_else(|| err("snapshot builder used twice".into()))?;
        let bytes = written
            .await
            .map_err(|_| err("snapshot writer thread died".into()))?
            .map_err(|e| err(e.to_string()))?;
        let mut batch = rocksdb::WriteBatch::default();
        batch.put_cf(
            self.db.cf(Cf::Meta),
            keys::tagged(self.shard, keys::META_SNAPSHOT),
            encode(&(&self.meta, &self.name)),
        );
        // Unsynced is enough: the log is purged only by a later synced
        // write, which makes this one durable first (the WAL is ordered).
        self.db.write_unsynced(batch).map_err(|e| err(e.to_string()))?;
        self.files.remove_all_except(&[&self.name]);
        self.stats.snapshots_built.fetch_add(1, Ordering::Relaxed);
        tracing::info!(shard = self.shard, snapshot = %self.meta.snapshot_id, bytes, "snapshot built");
        let path = self.files.path(&self.name);
        let f = tokio::fs::File::open(&path)
            .await
            .map_err(|e| err(format!("{}: {e}", path.display())))?;
        Ok(Snapshot {
            meta: self.meta.clone(),
            snapshot: Box::new(f),
        })
    }
}

impl RaftStateMachine<TypeConfig> for ShardStateMachine {
    type SnapshotBuilder = ShardSnapshotBuilder;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), StorageError> {
        Ok((self.state.last_applied, self.state.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<RaftResponse>, StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut batch = rocksdb::WriteBatch::default();
        let mut overlay = Overlay::for_shard(&self.hosted, self.shard);
        let mut responses = Vec::new();
        let mut gc_due = false;
        for entry in entries {
            debug_assert!(self.state.last_applied.is_none_or(|a| a.index < entry.log_id.index));
            let splits = matches!(
                &entry.payload,
                EntryPayload::Normal(RaftRequest {
                    command: Command::Split { .. },
                    ..
                })
            );
            if splits && self.shard != META_SHARD_ID {
                // A split reads the key index and sessions from the
                // database: write everything applied before it first.
                self.write_applied(std::mem::take(&mut batch), &mut overlay)?;
                overlay = Overlay::for_shard(&self.hosted, self.shard);
            }
            let before = self.state.last_applied.map_or(0, |l| l.index);
            self.state.last_applied = Some(entry.log_id);
            gc_due |= before / SESSION_GC_INTERVAL_ENTRIES != entry.log_id.index / SESSION_GC_INTERVAL_ENTRIES;
            let resp = match &entry.payload {
                EntryPayload::Blank => RaftResponse::Done,
                EntryPayload::Membership(m) => {
                    self.state.membership = StoredMembership::new(Some(entry.log_id), m.clone());
                    RaftResponse::Done
                }
                EntryPayload::Normal(req) => {
                    self.state.clock_ms = self.state.clock_ms.max(req.timestamp_ms);
                    self.apply_request(&mut batch, &mut overlay, req, self.state.clock_ms)?
                }
            };
            responses.push(resp);
        }
        if gc_due {
            self.gc_sessions(&mut batch, &overlay, self.state.clock_ms)?;
        }
        self.write_applied(batch, &mut overlay)?;
        if let Some(l) = overlay.layout {
            self.layout_tx.send_replace(Some(l));
        }
        Ok(responses)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        let last = self.state.last_applied;
        let meta = SnapshotMeta {
            last_log_id: last,
            last_membership: self.state.membership.clone(),
            snapshot_id: format!(
                "{}-{}-{}",
                self.shard,
                last.map_or(0, |l| l.leader_id.term),
                last.map_or(0, |l| l.index)
            ),
        };
        let name = snapshot_files::snapshot_name(last.map_or(0, |l| l.leader_id.term), last.map_or(0, |l| l.index));
        // The writer thread takes the RocksDB snapshot and tells us; we wait
        // only for that (while no entry applies), so the view matches
        // `last_applied` exactly, and the file is written meanwhile.
        let (taken_tx, taken_rx) = std::sync::mpsc::sync_channel::<()>(1);
        let (done_tx, done_rx) = oneshot::channel();
        let db = self.db.clone();
        let files = self.files.clone();
        let (shard, ranges, clock_ms) = (self.shard, self.ranges.clone(), self.state.clock_ms);
        let layout = self.layout_tx.borrow().clone();
        let file_name = name.clone();
        let spawned = std::thread::Builder::new()
            .name(format!("ringkv-snapshot-{shard}"))
            .spawn(move || {
                let snap = db.raw().snapshot();
                let _ = taken_tx.send(());
                let content = snapshot_files::SnapshotContent {
                    shard,
                    ranges: &ranges,
                    clock_ms,
                    layout: layout.as_ref().filter(|_| shard == META_SHARD_ID),
                };
                let _ = done_tx.send(snapshot_files::write_snapshot(&db, &snap, &content, &files, &file_name));
            });
        let written = match spawned {
            Ok(_) => {
                // Err only if the thread died before taking the snapshot;
                // build_snapshot then reports the dropped sender.
                let _ = taken_rx.recv();
                Some(done_rx)
            }
            Err(e) => {
                tracing::error!(shard = self.shard, error = %e, "cannot start the snapshot writer thread");
                None
            }
        };
        ShardSnapshotBuilder {
            shard: self.shard,
            db: self.db.clone(),
            meta,
            name,
            files: self.files.clone(),
            written,
            stats: self.stats.clone(),
        }
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<tokio::fs::File>, StorageError> {
        let (name, f) = self
            .files
            .new_incoming()
            .map_err(|e| to_raft_err(ErrorSubject::Snapshot(None), ErrorVerb::Write, e))?;
        if let Some(old) = self.receiving.replace(name) {
            // An abandoned transfer.
            let _ = std::fs::remove_file(self.files.path(&old));
        }
        self.receiving_writeback = f.try_clone().ok().map(snapshot_files::start_writeback);
        Ok(Box::new(tokio::fs::File::from_std(f)))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: Box<tokio::fs::File>,
    ) -> Result<(), StorageError> {
        let sub = || ErrorSubject::Snapshot(Some(meta.signature()));
        let err = |verb, e: String| to_raft_err(sub(), verb, e);
        let mut f = *snapshot;
        f.flush().await.map_err(|e| err(ErrorVerb::Write, e.to_string()))?;
        f.sync_all().await.map_err(|e| err(ErrorVerb::Write, e.to_string()))?;
        let mut src = f.into_std().await;
        // Normally openraft hands back the file `begin_receiving_snapshot`
        // made; anything else (another snapshot's file) is copied into a
        // new incoming file first, so the install always has its own file.
        let receiving = self.receiving.take();
        self.receiving_writeback = None;
        let same_file = |name: &String| {
            use std::os::unix::fs::MetadataExt;
            let (Ok(a), Ok(b)) = (src.metadata(), std::fs::metadata(self.files.path(name))) else {
                return false;
            };
            a.dev() == b.dev() && a.ino() == b.ino()
        };
        let incoming = match receiving {
            Some(name) if same_file(&name) => name,
            other => {
                if let Some(stale) = other {
                    let _ = std::fs::remove_file(self.files.path(&stale));
                }
                let (name, mut copy) = self
                    .files
                    .new_incoming()
                    .map_err(|e| err(ErrorVerb::Write, e.to_string()))?;
                std::io::Seek::seek(&mut src, std::io::SeekFrom::Start(0))
                    .and_then(|_| std::io::copy(&mut src, &mut copy))
                    .and_then(|_| copy.sync_all())
                    .map_err(|e| err(ErrorVerb::Write, format!("copy received snapshot: {e}")))?;
                name
            }
        };
        drop(src);
        // Check the whole file before touching anything.
        let path = self.files.path(&incoming);
        let file = std::fs::File::open(&path).map_err(|e| err(ErrorVerb::Read, format!("{}: {e}", path.display())))?;
        if let Err(e) = off_the_runtime(|| snapshot::verify(file)) {
            let _ = std::fs::remove_file(&path);
            return Err(err(ErrorVerb::Read, e.to_string()));
        }
        let last = meta.last_log_id;
        let name = snapshot_files::snapshot_name(last.map_or(0, |l| l.leader_id.term), last.map_or(0, |l| l.index));
        self.files
            .publish(&incoming, &name)
            .map_err(|e| err(ErrorVerb::Write, e.to_string()))?;
        let mut marker = rocksdb::WriteBatch::default();
        marker.put_cf(
            self.db.cf(Cf::Meta),
            keys::tagged(self.shard, keys::META_INSTALLING),
            encode(&(meta, &name)),
        );
        self.db
            .write_synced(marker)
            .map_err(|e| err(ErrorVerb::Write, e.to_string()))?;
        off_the_runtime(|| self.apply_snapshot_file(meta, &name))?;
        self.forget_other_snapshots();
        self.stats.snapshots_installed.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot>, StorageError> {
        let Some((meta, name)) = self.read_current_snapshot()? else {
            return Ok(None);
        };
        let path = self.files.path(&name);
        let f = tokio::fs::File::open(&path).await.map_err(|e| {
            to_raft_err(
                ErrorSubject::Snapshot(Some(meta.signature())),
                ErrorVerb::Read,
                format!("{}: {e}", path.display()),
            )
        })?;
        Ok(Some(Snapshot {
            meta,
            snapshot: Box::new(f),
        }))
    }
}

#[cfg(test)]
mod tests {
    use openraft::CommittedLeaderId;

    use super::*;

    use crate::config::StorageConfig;

    const TTL_MS: u64 = 1_000;

    #[test]
    fn a_read_overlapping_a_snapshot_install_is_refused() {
        let r = AppliedRanges::new(vec![]);
        let before = r.read_generation().expect("no install yet");
        assert!(r.unchanged_since(before) && !r.installing());
        r.begin_install();
        assert!(r.installing());
        assert_eq!(r.read_generation(), None, "torn data must not be read");
        assert!(!r.unchanged_since(before), "a read that saw the install start");
        // A retry after a failed install continues the same install.
        r.begin_install();
        r.end_install();
        assert!(!r.installing());
        let after = r.read_generation().expect("install done");
        assert!(!r.unchanged_since(before), "a read that spanned the whole install");
        assert!(r.unchanged_since(after));
    }

    struct Fixture {
        _dir: tempfile::TempDir,
        db: Arc<Db>,
        sm: ShardStateMachine,
        index: u64,
    }

    fn open_sm(shard: u64, db: Arc<Db>, ranges: Vec<TokenRange>, hosted: Arc<HostedRanges>) -> ShardStateMachine {
        ShardStateMachine::open(shard, db, ranges, TTL_MS, Arc::new(SmStats::default()), hosted).unwrap()
    }

    fn whole_ring() -> Vec<TokenRange> {
        vec![TokenRange { start: 0, end: None }]
    }

    fn fixture(ranges: Vec<TokenRange>) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(dir.path(), &StorageConfig::default()).unwrap();
        let sm = open_sm(1, db.clone(), ranges, Arc::default());
        Fixture {
            _dir: dir,
            db,
            sm,
            index: 0,
        }
    }

    fn req(command: Command, session: Option<(u8, u64)>, timestamp_ms: u64) -> RaftRequest {
        RaftRequest {
            command,
            session: session.map(|(id, sequence)| SessionId {
                client_id: [id; 16],
                sequence,
                first_incomplete: 0,
            }),
            timestamp_ms,
        }
    }

    fn put(k: &str, v: &str) -> Command {
        Command::Put {
            key: k.into(),
            value: v.into(),
        }
    }

    /// A key below `at`, one at or above it, and a `BatchPut` of both
    /// (values "l" and "h").
    fn batch_across(prefix: &str, at: u64) -> (String, String, Command) {
        let names: Vec<String> = (0..64).map(|i| format!("{prefix}-{i}")).collect();
        let high = names.iter().find(|k| token_of(k.as_bytes()) >= at).unwrap().clone();
        let low = names.iter().find(|k| token_of(k.as_bytes()) < at).unwrap().clone();
        let batch = Command::BatchPut {
            pairs: vec![
                (low.as_bytes().to_vec(), b"l".to_vec()),
                (high.as_bytes().to_vec(), b"h".to_vec()),
            ],
        };
        (low, high, batch)
    }

    fn cas(k: &str, expected: Option<&str>, new: Option<&str>) -> Command {
        Command::CompareAndSwap {
            key: k.into(),
            expected: expected.map(Into::into),
            new_value: new.map(Into::into),
        }
    }

    impl Fixture {
        async fn apply(&mut self, reqs: Vec<RaftRequest>) -> Vec<RaftResponse> {
            let entries: Vec<Entry> = reqs
                .into_iter()
                .map(|r| {
                    self.index += 1;
                    Entry {
                        log_id: LogId::new(CommittedLeaderId::new(1, 1), self.index),
                        payload: EntryPayload::Normal(r),
                    }
                })
                .collect();
            self.sm.apply(entries).await.unwrap()
        }

        fn value(&self, k: &str) -> Option<Vec<u8>> {
            self.db
                .get(Cf::Data, &keys::data_key(token_of(k.as_bytes()), k.as_bytes()))
                .unwrap()
        }
    }

    #[tokio::test]
    async fn a_split_hands_the_upper_half_to_the_new_shard_at_one_index() {
        let mut f = fixture(whole_ring());
        let at = 1u64 << 63;
        let applied_ranges = f.sm.applied_ranges();
        assert!(applied_ranges.contains(at));
        let keys: Vec<String> = (0..64).map(|i| format!("split-{i}")).collect();
        let high: Vec<&String> = keys.iter().filter(|k| token_of(k.as_bytes()) >= at).collect();
        assert!(!high.is_empty() && high.len() < keys.len());
        // Writes, the split and a write after it in one batch.
        let mut reqs: Vec<RaftRequest> = keys.iter().map(|k| req(put(k, "v"), Some((7, 1)), 10)).collect();
        reqs.truncate(1);
        reqs.extend(keys.iter().skip(1).map(|k| req(put(k, "v"), None, 10)));
        reqs.push(req(Command::Split { at, new_shard: 9 }, None, 11));
        reqs.push(req(put(high[0], "late"), None, 12));
        let out = f.apply(reqs).await;
        assert_eq!(out[keys.len()], RaftResponse::Done);
        assert!(!applied_ranges.contains(at), "reads see the split once it applied");
        assert!(applied_ranges.contains(at - 1));
        assert!(
            matches!(out[keys.len() + 1], RaftResponse::Rejected { .. }),
            "the old shard must refuse keys it gave away, also later in the same batch"
        );
        assert_eq!(
            f.sm.ranges(),
            &[TokenRange {
                start: 0,
                end: Some(at)
            }]
        );
        // Key index moved, data in place, sessions copied, new shard seeded.
        let index_of = |shard: u64| -> Vec<Vec<u8>> {
            f.db.raw()
                .prefix_iterator_cf(f.db.cf(Cf::KeyIndex), keys::shard_prefix(shard))
                .map(|i| i.unwrap().0.to_vec())
                .take_while(|k| k.starts_with(&keys::shard_prefix(shard)))
                .map(|k| k[8..].to_vec())
                .collect()
        };
        assert_eq!(index_of(9).len(), high.len());
        assert_eq!(index_of(1).len(), keys.len() - high.len());
        assert_eq!(f.value(high[0]).as_deref(), Some(&b"v"[..]));
        assert!(f.db.get(Cf::Meta, &keys::session_key(9, &[7; 16])).unwrap().is_some());
        let right: Vec<TokenRange> = read_meta(&f.db, &keys::tagged(9, keys::META_RANGES), "ranges")
            .unwrap()
            .unwrap();
        assert_eq!(right, vec![TokenRange { start: at, end: None }]);
        // A retried split is a no-op; the new shard's state machine opens.
        assert_eq!(
            f.apply(vec![req(Command::Split { at, new_shard: 9 }, None, 13)]).await,
            vec![RaftResponse::Done]
        );
        let mut n = open_sm(9, f.db.clone(), vec![], Arc::default());
        assert_eq!(n.ranges(), &right[..]);
        let (applied, _) = n.applied_state().await.unwrap();
        assert_eq!(applied.map(|l| l.index), Some(0));
        // Reopening the old shard keeps the narrowed range.
        drop(f.sm);
        let old = open_sm(1, f.db.clone(), whole_ring(), Arc::default());
        assert_eq!(
            old.ranges(),
            &[TokenRange {
                start: 0,
                end: Some(at)
            }]
        );
    }

    #[tokio::test]
    async fn a_replayed_history_leaves_a_hosted_new_shard_alone() {
        // Shard 1 is re-created on a node that already hosts shard 9, split
        // off it earlier, and replays its log from before the split.
        let at = 1u64 << 63;
        let mut f = fixture(whole_ring());
        let hosted = Arc::new(HostedRanges::default());
        hosted.set_shard(9, vec![TokenRange { start: at, end: None }]);
        f.sm = open_sm(1, f.db.clone(), whole_ring(), hosted);
        let high = (0..64)
            .map(|i| format!("replay-{i}"))
            .find(|k| token_of(k.as_bytes()) >= at)
            .unwrap();
        // Shard 9's own state on this node: a newer value and its applied id.
        let mut b = rocksdb::WriteBatch::default();
        b.put_cf(
            f.db.cf(Cf::Data),
            keys::data_key(token_of(high.as_bytes()), high.as_bytes()),
            b"newer",
        );
        b.put_cf(f.db.cf(Cf::Meta), keys::tagged(9, keys::META_APPLIED), b"nine's own");
        f.db.write_synced(b).unwrap();
        let out = f
            .apply(vec![
                req(put(&high, "before-split"), None, 10),
                req(Command::Split { at, new_shard: 9 }, None, 11),
            ])
            .await;
        assert_eq!(out, vec![RaftResponse::Done, RaftResponse::Done]);
        assert_eq!(f.value(&high).as_deref(), Some(&b"newer"[..]));
        assert_eq!(
            f.db.get(Cf::Meta, &keys::tagged(9, keys::META_APPLIED))
                .unwrap()
                .as_deref(),
            Some(&b"nine's own"[..])
        );
        assert_eq!(
            f.sm.ranges(),
            &[TokenRange {
                start: 0,
                end: Some(at)
            }]
        );
        assert!(
            f.db.raw()
                .prefix_iterator_cf(f.db.cf(Cf::KeyIndex), keys::shard_prefix(9))
                .next()
                .is_none_or(|i| !i.unwrap().0.starts_with(&keys::shard_prefix(9))),
            "no key index entries seeded for shard 9"
        );
    }

    #[tokio::test]
    async fn a_replayed_split_whose_new_shard_lives_elsewhere_seeds_nothing() {
        // Shard 1 is re-created on a node that does not host shard 9, which
        // the layout already has (placed on other nodes), and replays the
        // split from a state before it.
        let at = 1u64 << 63;
        let mut f = fixture(whole_ring());
        let hosted = Arc::new(HostedRanges::default());
        hosted.set_shard(1, whole_ring());
        hosted.set_known(9);
        f.sm = open_sm(1, f.db.clone(), whole_ring(), hosted);
        // One entry spanning the split point, as a coalesced batch is: it
        // must apply whole, as it did on the replicas that saw it in time.
        let (low, high, batch) = batch_across("elsewhere", at);
        let (low, high) = (low.as_str(), high.as_str());
        let out = f
            .apply(vec![
                req(batch, Some((3, 1)), 10),
                req(Command::Split { at, new_shard: 9 }, None, 11),
            ])
            .await;
        assert!(!matches!(out[0], RaftResponse::Rejected { .. }), "{out:?}");
        assert_eq!(out[1], RaftResponse::Done);
        assert_eq!(f.value(low).as_deref(), Some(&b"l"[..]));
        assert_eq!(f.value(high), None, "no shard here owns the right half any more");
        for key in [keys::tagged(9, keys::META_APPLIED), keys::tagged(9, keys::META_RANGES)] {
            assert!(f.db.get(Cf::Meta, &key).unwrap().is_none(), "no orphan seed of shard 9");
        }
        assert!(f.db.get(Cf::Meta, &keys::session_key(9, &[3; 16])).unwrap().is_none());
        assert!(f
            .db
            .get(Cf::RaftState, &keys::tagged(9, keys::STATE_PURGED))
            .unwrap()
            .is_none());
        assert_eq!(
            f.sm.ranges(),
            &[TokenRange {
                start: 0,
                end: Some(at)
            }]
        );
    }

    #[tokio::test]
    async fn a_rejected_sequence_applies_when_retried_with_owned_keys() {
        let at = 1u64 << 63;
        let mut f = fixture(vec![TokenRange {
            start: 0,
            end: Some(at),
        }]);
        let (low, _, both) = batch_across("rejected", at);
        let low = low.as_str();
        let out = f.apply(vec![req(both, Some((5, 1)), 10)]).await;
        assert!(matches!(out[0], RaftResponse::Rejected { .. }), "{out:?}");
        assert_eq!(f.value(low), None);
        // The client sends the key it gave away elsewhere and retries the
        // same sequence with the rest.
        let out = f.apply(vec![req(put(low, "l"), Some((5, 1)), 11)]).await;
        assert_eq!(out, vec![RaftResponse::Done]);
        assert_eq!(f.value(low).as_deref(), Some(&b"l"[..]));
        // Now answered from the session, not applied again.
        let out = f.apply(vec![req(put(low, "again"), Some((5, 1)), 12)]).await;
        assert_eq!(out, vec![RaftResponse::Done]);
        assert_eq!(f.value(low).as_deref(), Some(&b"l"[..]));
    }

    #[tokio::test]
    async fn a_merged_entry_refuses_only_the_parts_a_split_took_away() {
        // The leader merged three callers' puts without sessions; a split
        // gave one caller's key away before the entry applied.
        let at = 1u64 << 63;
        let mut f = fixture(vec![TokenRange {
            start: 0,
            end: Some(at),
        }]);
        let (low, high, both) = batch_across("merged", at);
        let part = |command| crate::raft::types::Part { command, session: None };
        let multi = Command::Multi {
            parts: vec![part(put(&low, "1")), part(both), part(put(&high, "3"))],
        };
        let out = f.apply(vec![req(multi, None, 10)]).await;
        let RaftResponse::Multi { responses } = &out[0] else {
            panic!("{out:?}");
        };
        assert_eq!(responses[0], RaftResponse::Done);
        // A caller's own batch stays all-or-nothing.
        assert!(matches!(responses[1], RaftResponse::Rejected { .. }), "{responses:?}");
        assert!(matches!(responses[2], RaftResponse::Rejected { .. }), "{responses:?}");
        assert_eq!(f.value(&low).as_deref(), Some(&b"1"[..]), "the owned part applied");
        assert_eq!(f.value(&high), None);
    }

    #[tokio::test]
    async fn commands_apply_and_reads_see_earlier_entries_of_the_same_batch() {
        let mut f = fixture(whole_ring());
        let out = f
            .apply(vec![
                req(put("a", "1"), None, 10),
                req(cas("a", Some("1"), Some("2")), None, 10),
                req(Command::Delete { key: "b".into() }, None, 10),
                req(cas("b", None, Some("x")), None, 10),
                req(cas("b", Some("x"), None), None, 10),
            ])
            .await;
        assert_eq!(out[0], RaftResponse::Done);
        assert_eq!(
            out[1],
            RaftResponse::Swapped {
                succeeded: true,
                previous: Some(b"1".to_vec())
            }
        );
        assert_eq!(out[2], RaftResponse::Deleted { existed: false });
        assert_eq!(
            out[3],
            RaftResponse::Swapped {
                succeeded: true,
                previous: None
            }
        );
        assert_eq!(
            out[4],
            RaftResponse::Swapped {
                succeeded: true,
                previous: Some(b"x".to_vec())
            }
        );
        assert_eq!(f.value("a"), Some(b"2".to_vec()));
        assert_eq!(f.value("b"), None);
        // Applied state survives a reopen.
        let again = open_sm(1, f.db.clone(), whole_ring(), Arc::default());
        assert_eq!(again.state.last_applied.map(|l| l.index), Some(5));
        assert_eq!(again.state.clock_ms, 10);
    }

    #[tokio::test]
    async fn sessions_answer_retries_refuse_old_sequences_and_expire() {
        let mut f = fixture(whole_ring());
        let first = f.apply(vec![req(cas("k", None, Some("v")), Some((7, 1)), 100)]).await;
        assert_eq!(
            first[0],
            RaftResponse::Swapped {
                succeeded: true,
                previous: None
            }
        );
        // The retry is answered from the table: a second apply would fail.
        let retry = f.apply(vec![req(cas("k", None, Some("v")), Some((7, 1)), 200)]).await;
        assert_eq!(retry, first);
        let next = f.apply(vec![req(put("k", "w"), Some((7, 2)), 300)]).await;
        assert_eq!(next[0], RaftResponse::Done);
        let old = f.apply(vec![req(put("k", "old"), Some((7, 1)), 300)]).await;
        assert_eq!(old[0], RaftResponse::StaleSequence { last_sequence: 2 });
        assert_eq!(f.value("k"), Some(b"w".to_vec()));
        // Another client is independent.
        let other = f.apply(vec![req(cas("k", None, Some("z")), Some((8, 1)), 300)]).await;
        assert_eq!(
            other[0],
            RaftResponse::Swapped {
                succeeded: false,
                previous: Some(b"w".to_vec())
            }
        );
        // After the TTL (by log timestamps) client 7 is forgotten: sequence 1
        // is applied as new.
        let late = f
            .apply(vec![req(put("k", "late"), Some((7, 1)), 300 + TTL_MS + 1)])
            .await;
        assert_eq!(late[0], RaftResponse::Done);
        assert_eq!(f.value("k"), Some(b"late".to_vec()));
    }

    #[tokio::test]
    async fn a_merged_entry_applies_each_part_with_its_own_session() {
        let mut f = fixture(whole_ring());
        let part = |command, session: Option<(u8, u64)>| crate::raft::types::Part {
            command,
            session: req(Command::BatchPut { pairs: vec![] }, session, 0).session,
        };
        // Client 1's sequence 1 was applied on its own before.
        let earlier = f.apply(vec![req(put("a", "1"), Some((1, 1)), 10)]).await;
        assert_eq!(earlier[0], RaftResponse::Done);
        let multi = Command::Multi {
            parts: vec![
                // A retry of it: answered from the session, not applied.
                part(put("a", "retried"), Some((1, 1))),
                part(put("b", "2"), Some((2, 1))),
                part(
                    Command::BatchPut {
                        pairs: vec![(b"c".to_vec(), b"3".to_vec()), (b"d".to_vec(), b"4".to_vec())],
                    },
                    None,
                ),
                // Only puts may be merged; the others still apply.
                part(cas("b", None, Some("x")), Some((3, 1))),
                // Client 2 again, in the same entry: its own next sequence.
                part(put("b", "5"), Some((2, 2))),
            ],
        };
        let out = f.apply(vec![req(multi.clone(), None, 20)]).await;
        let RaftResponse::Multi { responses } = &out[0] else {
            panic!("a merged entry answers part by part: {out:?}");
        };
        assert_eq!(responses.len(), 5);
        assert_eq!(
            responses[..3],
            [RaftResponse::Done, RaftResponse::Done, RaftResponse::Done]
        );
        assert!(
            matches!(responses[3], RaftResponse::Rejected { .. }),
            "{:?}",
            responses[3]
        );
        assert_eq!(responses[4], RaftResponse::Done);
        assert_eq!(f.value("a"), Some(b"1".to_vec()));
        assert_eq!(f.value("b"), Some(b"5".to_vec()));
        assert_eq!(f.value("d"), Some(b"4".to_vec()));
        // The same entry applied again (every caller retried, merged once
        // more): no sessioned part is applied twice. Client 2's sequence 1
        // is older than its session's floor now (sequence 2 said 1 was
        // complete), so it is refused as stale.
        f.apply(vec![req(put("b", "6"), Some((9, 1)), 30)]).await;
        let again = f.apply(vec![req(multi, None, 40)]).await;
        let RaftResponse::Multi { responses: again } = &again[0] else {
            panic!("{again:?}");
        };
        assert_eq!(again[0], RaftResponse::Done);
        assert_eq!(again[1], RaftResponse::StaleSequence { last_sequence: 2 });
        assert_eq!(again[4], RaftResponse::Done);
        assert_eq!(f.value("a"), Some(b"1".to_vec()), "client 1's retry was applied");
        assert_eq!(f.value("b"), Some(b"6".to_vec()), "client 2's parts were applied twice");
        // A merged entry with a session of its own is not valid.
        let bad = f
            .apply(vec![req(Command::Multi { parts: vec![] }, Some((4, 1)), 50)])
            .await;
        assert!(matches!(bad[0], RaftResponse::Rejected { .. }), "{bad:?}");
    }

    fn windowed(id: u8, sequence: u64, first_incomplete: u64) -> Option<SessionId> {
        Some(SessionId {
            client_id: [id; 16],
            sequence,
            first_incomplete,
        })
    }

    #[tokio::test]
    async fn concurrent_sequences_are_each_applied_once_in_any_order() {
        let mut f = fixture(whole_ring());
        let r = |cmd, session| RaftRequest {
            command: cmd,
            session,
            timestamp_ms: 10,
        };
        // Sequences 1..=3 in flight at once, applied out of order.
        let out = f
            .apply(vec![
                r(cas("c", None, Some("a")), windowed(3, 3, 1)),
                r(cas("c", Some("a"), Some("b")), windowed(3, 1, 1)),
                r(put("d", "x"), windowed(3, 2, 1)),
            ])
            .await;
        assert_eq!(
            out[0],
            RaftResponse::Swapped {
                succeeded: true,
                previous: None
            }
        );
        assert!(matches!(out[1], RaftResponse::Swapped { succeeded: true, .. }));
        // Retries of all three are answered, none applied again.
        let again = f
            .apply(vec![
                r(cas("c", None, Some("a")), windowed(3, 3, 1)),
                r(cas("c", Some("a"), Some("b")), windowed(3, 1, 1)),
            ])
            .await;
        assert_eq!(again, out[..2].to_vec());
        assert_eq!(f.value("c"), Some(b"b".to_vec()));
        // The client got replies up to 3: results below 4 may be forgotten.
        f.apply(vec![r(put("e", "y"), windowed(3, 4, 4))]).await;
        let stale = f.apply(vec![r(put("c", "zzz"), windowed(3, 2, 2))]).await;
        assert_eq!(stale[0], RaftResponse::StaleSequence { last_sequence: 4 });
        assert_eq!(f.value("c"), Some(b"b".to_vec()));
    }

    #[tokio::test]
    async fn the_window_is_bounded_and_forgets_the_oldest() {
        let mut f = fixture(whole_ring());
        let n = SESSION_RESPONSES_MAX as u64 + 10;
        let reqs = (1..=n)
            .map(|s| RaftRequest {
                command: put("w", "v"),
                session: windowed(4, s, 1),
                timestamp_ms: 1,
            })
            .collect();
        f.apply(reqs).await;
        let rec = f.sm.load_session(&Overlay::default(), &[4; 16]).unwrap().unwrap();
        assert_eq!(rec.responses.len(), SESSION_RESPONSES_MAX);
        assert_eq!(rec.low, 11);
        let old = f.apply(vec![req(put("w", "again"), Some((4, 5)), 2)]).await;
        assert!(matches!(old[0], RaftResponse::StaleSequence { .. }));
    }

    #[tokio::test]
    async fn keys_outside_the_shard_are_rejected_everywhere_alike() {
        let token = token_of(b"k");
        let mut f = fixture(vec![TokenRange {
            start: token.wrapping_add(1),
            end: None,
        }]);
        let out = f.apply(vec![req(put("k", "v"), None, 1)]).await;
        assert!(matches!(out[0], RaftResponse::Rejected { .. }), "{out:?}");
        assert_eq!(f.value("k"), None);
    }

    #[tokio::test]
    async fn snapshot_round_trips_and_corruption_is_refused() {
        let mut a = fixture(whole_ring());
        a.apply(vec![
            req(put("x", "1"), Some((1, 5)), 50),
            req(put("y", "2"), None, 60),
            req(
                Command::BatchPut {
                    pairs: vec![(b"z".to_vec(), b"3".to_vec()), (vec![0xff; 40], b"4".to_vec())],
                },
                None,
                70,
            ),
        ])
        .await;
        let mut snap = a.sm.get_snapshot_builder().await.build_snapshot().await.unwrap();
        let mut bytes = Vec::new();
        tokio::io::AsyncReadExt::read_to_end(&mut *snap.snapshot, &mut bytes)
            .await
            .unwrap();
        assert!(bytes.starts_with(b"RKVS"));
        assert_eq!(a.sm.stats.snapshots_built.load(Ordering::Relaxed), 1);
        let stored = a.sm.get_current_snapshot().await.unwrap().expect("stored snapshot");
        assert_eq!(stored.meta, snap.meta);

        let mut b = fixture(whole_ring());
        b.apply(vec![req(put("stale", "gone"), None, 1)]).await;
        // Receive the way openraft does: into the file begin_receiving gave.
        async fn receive(sm: &mut ShardStateMachine, bytes: &[u8]) -> Box<tokio::fs::File> {
            let mut f = sm.begin_receiving_snapshot().await.unwrap();
            f.write_all(bytes).await.unwrap();
            f
        }
        let mut bad = bytes.clone();
        let mid = bad.len() / 2;
        bad[mid] ^= 1;
        let f = receive(&mut b.sm, &bad).await;
        assert!(b.sm.install_snapshot(&snap.meta, f).await.is_err());
        assert_eq!(
            b.value("stale"),
            Some(b"gone".to_vec()),
            "a refused snapshot changes nothing"
        );

        let f = receive(&mut b.sm, &bytes).await;
        b.sm.install_snapshot(&snap.meta, f).await.unwrap();
        assert!(b.sm.get_current_snapshot().await.unwrap().is_some());
        assert_eq!(b.value("stale"), None);
        assert_eq!(b.value("x"), Some(b"1".to_vec()));
        assert_eq!(b.value("z"), Some(b"3".to_vec()));
        let (applied, _) = b.sm.applied_state().await.unwrap();
        assert_eq!(applied, snap.meta.last_log_id);
        assert_eq!(b.sm.state.clock_ms, 70);
        // The session table travelled too: a retry is answered, not applied.
        b.index = applied.map_or(0, |l| l.index);
        let retry = b.apply(vec![req(put("x", "again"), Some((1, 5)), 80)]).await;
        assert_eq!(retry[0], RaftResponse::Done);
        assert_eq!(b.value("x"), Some(b"1".to_vec()));
        // The key index was rebuilt for Scan.
        let idx = b.db.get(Cf::KeyIndex, &keys::index_key(1, b"y")).unwrap();
        assert!(idx.is_some());
        assert!(b.db.get(Cf::KeyIndex, &keys::index_key(1, b"stale")).unwrap().is_none());
        // Only the current snapshot file is kept.
        let files = std::fs::read_dir(b.db.root().join("snapshots/shard-1"))
            .unwrap()
            .count();
        assert_eq!(files, 1);
    }

    #[tokio::test]
    async fn an_interrupted_install_is_finished_at_open() {
        let mut a = fixture(whole_ring());
        a.apply(vec![req(put("k", "v"), None, 5)]).await;
        let snap = a.sm.get_snapshot_builder().await.build_snapshot().await.unwrap();
        let (_, name) = a.sm.read_current_snapshot().unwrap().unwrap();
        // Simulate a crash right after the marker was written on another
        // replica: the marker names the published file, data not applied.
        let mut b = fixture(whole_ring());
        let dst = b.sm.files.path(&name);
        std::fs::copy(a.sm.files.path(&name), &dst).unwrap();
        let mut marker = rocksdb::WriteBatch::default();
        marker.put_cf(
            b.db.cf(Cf::Meta),
            keys::tagged(1, keys::META_INSTALLING),
            encode(&(&snap.meta, &name)),
        );
        b.db.write_synced(marker).unwrap();
        b.sm = open_sm(1, b.db.clone(), whole_ring(), Arc::default());
        assert_eq!(b.sm.state.last_applied, snap.meta.last_log_id);
        assert_eq!(b.value("k"), Some(b"v".to_vec()));
        assert!(b
            .db
            .get(Cf::Meta, &keys::tagged(1, keys::META_INSTALLING))
            .unwrap()
            .is_none());
    }
}
