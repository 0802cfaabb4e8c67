//! Keeps a node's hosted Raft groups in line with the cluster layout, and
//! the node-local halves of placement: joining a cluster, learning newer
//! layouts, opening and deleting shard replicas, reading and changing a
//! shard's Raft membership on its leader, and committing layout changes on
//! the metadata leader.
//!
//! Decides nothing about placement (see `placement`): it carries out what
//! the layout says and what the metadata leader asks.

use std::collections::BTreeMap;
use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;
use std::time::Instant;

use openraft::error::ChangeMembershipError;
use openraft::error::ClientWriteError;
use openraft::error::RaftError;
use openraft::BasicNode;
use openraft::ChangeMembers;
use ringkv_proto::v1::admin_client::AdminClient;
use ringkv_proto::v1::raft_transport_client::RaftTransportClient;
use ringkv_proto::v1::AddNodeRequest;
use ringkv_proto::v1::FetchLayoutRequest;
use ringkv_proto::v1::MembershipAction;
use ringkv_proto::v1::ShardMembershipRequest;
use ringkv_proto::v1::ShardMembershipResponse;
use tokio::sync::watch;

use super::Node;
use super::NodeError;
use super::Shard;
use crate::config::Config;
use crate::error::ServerError;
use crate::failpoint;
use crate::placement::MembershipView;
use crate::placement::PlacementError;
use crate::raft::lease::Lease;
use crate::raft::network::NetworkFactory;
use crate::raft::network::PeerPool;
use crate::raft::openraft_config;
use crate::raft::read_index::ReadIndex;
use crate::raft::types::decode;
use crate::raft::types::encode;
use crate::raft::types::Command;
use crate::raft::types::Raft;
use crate::raft::types::RaftResponse;
use crate::ring::ClusterLayout;
use crate::ring::ShardInfo;
use crate::ring::META_SHARD_ID;
use crate::storage::group_commit::GroupCommit;
use crate::storage::group_commit::WriteOp;
use crate::storage::hosted::HostedRanges;
use crate::storage::keys;
use crate::storage::log_store::LogStore;
use crate::storage::state_machine::ShardStateMachine;
use crate::storage::state_machine::SmStats;
use crate::storage::Cf;
use crate::storage::Db;

/// Attempts of a joining node to register with the cluster.
const JOIN_ATTEMPTS_MAX: u32 = 60;
/// Pause between join attempts.
const JOIN_RETRY_MS: u64 = 1_000;
/// Pseudo node id of the join seed's connection in the peer pool (its real
/// id is not known before the layout arrives).
const JOIN_SEED_PEER_ID: u64 = u64::MAX;
/// Longest a layout long poll waits on the answering node.
pub const LAYOUT_POLL_WAIT_MS_MAX: u64 = 10_000;
/// Long poll asked for by a node that is not a metadata member.
const LAYOUT_POLL_WAIT_MS: u64 = 2_000;
/// Pause after a failed layout poll before asking the next member.
const LAYOUT_POLL_RETRY_MS: u64 = 200;
/// Longest a membership change may take on the shard leader.
const MEMBERSHIP_CHANGE_TIMEOUT_MS: u64 = 10_000;
/// Compare-and-swap attempts of one layout change on the metadata leader.
const LAYOUT_CAS_ATTEMPTS_MAX: u32 = 8;
/// Longest a leadership hand-off waits for its target to hold every entry.
const HAND_OFF_CATCH_UP_MS: u64 = 5_000;
/// Election timeouts a hand-off waits for its target to win.
const HAND_OFF_ELECTIONS: u64 = 3;
/// Hops a forwarded Admin call may take to reach the metadata leader.
pub const META_FORWARD_HOPS_MAX: u32 = 3;

/// What every state machine of a node shares.
pub(super) struct SmShared {
    pub stats: Arc<SmStats>,
    pub hosted: Arc<HostedRanges>,
}

/// Opens (creating if new) the Raft group of one shard on this node.
/// Returns the shard, the metadata layout watch (metadata group only) and
/// whether the group had never been initialized.
pub(super) async fn open_group(
    id: u64,
    cfg: &Config,
    db: &Arc<Db>,
    gc: &GroupCommit,
    pool: &Arc<PeerPool>,
    sm: &SmShared,
    group: GroupToOpen,
) -> Result<(Arc<Shard>, Option<watch::Receiver<Option<ClusterLayout>>>, GroupStart), NodeError> {
    let GroupToOpen {
        info,
        bootstrap_members,
    } = group;
    let SmShared {
        stats: sm_stats,
        hosted,
    } = sm;
    let config = openraft_config(info.id, &cfg.raft).map_err(|e| NodeError::Raft(e.to_string()))?;
    let mut log = LogStore::new(info.id, db.clone(), gc.clone());
    if cfg.raft.overlap_leader_sync {
        log = log.overlapping_leader_sync(id);
    }
    let sync = log.sync_progress();
    let membership_feed = log.membership_feed();
    // A group with a vote or any log entry was initialized before.
    let uninitialized = {
        use openraft::storage::RaftLogStorage;
        let state = log.get_log_state().await.map_err(|e| NodeError::Raft(e.to_string()))?;
        let mut vote = log.read_vote().await.map_err(|e| NodeError::Raft(e.to_string()))?;
        if vote.is_none() && state.last_log_id.is_none() {
            // A replica this node held before: start from its last vote.
            let tomb = db
                .get(Cf::Meta, &keys::tagged(info.id, keys::META_VOTE_TOMBSTONE))
                .map_err(|e| NodeError::Raft(e.to_string()))?;
            if let Some(raw) = tomb {
                let t: crate::raft::types::Vote =
                    decode(&raw).map_err(|e| NodeError::Raft(format!("shard {}: vote tombstone: {e}", info.id)))?;
                assert!(!t.committed, "a tombstone vote is never committed");
                log.save_vote(&t).await.map_err(|e| NodeError::Raft(e.to_string()))?;
                tracing::info!(shard = info.id, vote = %t, "re-created replica starts from its old vote");
                vote = Some(t);
            }
        }
        state.last_log_id.is_none() && vote.is_none()
    };
    // A data shard of a new cluster starts from a seed at log index 0, not
    // from an initialized log (see `storage::state_machine::seed`).
    let seeded = match bootstrap_members {
        Some(members) if uninitialized && info.id != META_SHARD_ID => {
            let voters: BTreeSet<u64> = members.keys().copied().collect();
            assert!(voters.contains(&id), "a bootstrap seed is written only on a replica");
            let membership = openraft::Membership::new(vec![voters], members);
            let mut batch = rocksdb::WriteBatch::default();
            crate::storage::state_machine::seed(db, &mut batch, info.id, membership, &info.ranges, 0);
            db.write_synced(batch).map_err(|e| NodeError::Raft(e.to_string()))?;
            tracing::info!(shard = info.id, "seeded a new shard at log index 0");
            true
        }
        _ => false,
    };
    let start = match (uninitialized, seeded) {
        (_, true) => GroupStart::Seeded,
        (true, false) => GroupStart::Empty,
        (false, false) => GroupStart::Resumed,
    };
    let mut sm = ShardStateMachine::open(
        info.id,
        db.clone(),
        info.ranges.clone(),
        cfg.sessions.ttl_ms,
        sm_stats.clone(),
        hosted.clone(),
    )
    .map_err(|e| NodeError::Raft(e.to_string()))?;
    // A seed never opened before has acknowledged no leader yet.
    let fresh_seed = sm.is_unsnapshotted_seed().map_err(|e| NodeError::Raft(e.to_string()))?;
    if fresh_seed {
        // Born from a split with its log "purged" up to index 0: a replica
        // that lacks the state must get a snapshot, so one must exist
        // before this replica can lead.
        use openraft::storage::RaftSnapshotBuilder;
        use openraft::storage::RaftStateMachine;
        let mut builder = sm.get_snapshot_builder().await;
        builder
            .build_snapshot()
            .await
            .map_err(|e| NodeError::Raft(format!("shard {}: snapshot of the split-off state: {e}", info.id)))?;
    }
    let meta = (info.id == META_SHARD_ID).then(|| sm.subscribe_layout());
    let applied_ranges = sm.applied_ranges();
    let lease = Arc::new(Lease::default());
    let net = NetworkFactory {
        shard: info.id,
        pool: pool.clone(),
        lease: lease.clone(),
        sync,
    };
    let raft = Raft::new(id, config, net, log, sm)
        .await
        .map_err(|e| NodeError::Raft(format!("shard {}: {e}", info.id)))?;
    tokio::spawn(follow_metrics(info.id, raft.clone(), membership_feed));
    let reads = ReadIndex::new(raft.clone());
    let shard = Arc::new(Shard {
        id: info.id,
        info,
        raft,
        reads,
        lease,
        applied_ranges,
        votes_withheld_until: cfg
            .raft
            .lease()
            .votes_withheld_until(!uninitialized && !fresh_seed, Instant::now()),
    });
    Ok((shard, meta, start))
}

/// A group for [`open_group`] to open.
pub(super) struct GroupToOpen {
    pub info: ShardInfo,
    /// A new cluster's node only: the shard's voters, to seed a data shard
    /// that has no state yet.
    pub bootstrap_members: Option<BTreeMap<u64, BasicNode>>,
}

/// What [`open_group`] found on disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum GroupStart {
    /// Raft history: the group resumes.
    Resumed,
    /// Nothing: the metadata group of a new cluster, or a replica that gets
    /// its state from the leader.
    Empty,
    /// A data shard of a new cluster, seeded just now.
    Seeded,
}

/// Follows openraft's metrics of this replica of `shard` until the group
/// shuts down:
/// - logs every term or leader it sees, with its applied and last log
///   index: the shard id openraft's own election logs lack, and enough to
///   tell whether a new leader still had entries to apply;
/// - reports each effective membership to the shard's log store, which
///   overlaps a leader's sync only while a commit needs another replica.
async fn follow_metrics(shard: u64, raft: Raft, feed: crate::storage::log_store::MembershipFeed) {
    let mut rx = raft.metrics();
    drop(raft);
    let mut last = None;
    loop {
        let (term, leader, applied, last_log) = {
            let m = rx.borrow_and_update();
            feed.report(m.membership_config.membership());
            (
                m.current_term,
                m.current_leader,
                m.last_applied.map(|l| l.index),
                m.last_log_index,
            )
        };
        if last != Some((term, leader)) {
            last = Some((term, leader));
            tracing::info!(shard, term, leader = ?leader, applied = ?applied, last_log = ?last_log, "shard leadership seen");
        }
        if rx.changed().await.is_err() {
            return;
        }
    }
}

/// Registers this node with the cluster that has members at `cfg.join`
/// and returns a layout that names it. Each attempt asks the next address
/// of `join` in turn (a host name is resolved at every attempt, its
/// addresses taken in turn), so the join goes through while some of them
/// are down or not resolvable yet.
///
/// Refuses ([`NodeError::AlreadyMember`]) when the cluster already names
/// this node before it asked to be added: only a node with an empty data
/// dir joins, and a member with an empty data dir has lost the votes and
/// log entries the others may count on. Two checks: the seed's layout
/// (which may lag the metadata group), then the metadata leader's answer
/// to the first AddNode (`added` false: the layout already had it).
pub(super) async fn join_cluster(
    cfg: &Config,
    pool: &Arc<PeerPool>,
    admin_token: Option<&str>,
) -> Result<ClusterLayout, NodeError> {
    let seeds = cfg.join_seeds()?;
    assert!(!seeds.is_empty(), "parse_join returns at least one address");
    let mut last_error = String::new();
    // Once an AddNode went out it may have been applied, whatever its
    // answer: from then on the layout naming this node is this join's doing.
    let mut asked = false;
    for attempt in 0..JOIN_ATTEMPTS_MAX as usize {
        let via = &seeds[attempt % seeds.len()];
        match join_attempt(cfg, pool, admin_token, via, attempt / seeds.len(), &mut asked).await {
            Attempt::Joined(l) => return Ok(l),
            Attempt::Refused(e) => return Err(e),
            Attempt::Retry(e) => last_error = e,
        }
        tracing::info!(attempt = attempt + 1, error = %last_error, "joining: retrying");
        tokio::time::sleep(Duration::from_millis(JOIN_RETRY_MS)).await;
    }
    Err(NodeError::Raft(format!(
        "could not join through {} after {JOIN_ATTEMPTS_MAX} attempts: {last_error}",
        cfg.join
    )))
}

/// How one join attempt ended.
enum Attempt {
    Joined(ClusterLayout),
    Refused(NodeError),
    /// Worth another attempt, for this reason.
    Retry(String),
}

/// One join attempt through the seed `via`, on its `visit`-th use.
async fn join_attempt(
    cfg: &Config,
    pool: &Arc<PeerPool>,
    admin_token: Option<&str>,
    via: &str,
    visit: usize,
    asked: &mut bool,
) -> Attempt {
    let target = match seed_addr(via, visit).await {
        Ok(t) => t,
        Err(e) => return Attempt::Retry(e),
    };
    // One pseudo id for whichever seed is asked: the pool replaces the
    // connection when the address changes.
    let seed = match pool.peer(JOIN_SEED_PEER_ID, &target) {
        Ok(s) => s,
        Err(e) => return Attempt::Refused(NodeError::Raft(format!("join {via} ({target}): {e}"))),
    };
    // This attempt sends the join's first AddNode: nothing this process
    // did can have added the node yet.
    let first = !*asked;
    if first && crate::failpoint::fire(crate::failpoint::NODE_JOIN_SKIP_LAYOUT_CHECK) {
        tracing::warn!("failpoint: joining without checking the seed's layout");
    } else if first {
        match fetch_layout(&seed.channel, cfg.node_id, 0, 0).await {
            Ok(Polled { layout: Some(l), .. }) => {
                if let Some(a) = l.nodes.get(&cfg.node_id) {
                    return Attempt::Refused(NodeError::AlreadyMember {
                        id: cfg.node_id,
                        addr: a.clone(),
                        epoch: l.epoch,
                    });
                }
            }
            Ok(Polled { layout: None, .. }) => return Attempt::Retry(format!("{via} has no layout yet")),
            Err(e) => return Attempt::Retry(format!("{via}: {e}")),
        }
    }
    *asked = true;
    let addr = cfg.advertise_addr();
    let req = add_node_request(cfg.node_id, &addr, &cfg.zone, admin_token);
    match AdminClient::new(seed.channel.clone()).add_node(req).await {
        Ok(r) => {
            let r = r.into_inner();
            if first && !r.added {
                // The metadata leader's layout already named this node at
                // this address: the seed's lagged, or this process did not
                // add it. A later AddNode may only repeat this join's own.
                return Attempt::Refused(NodeError::AlreadyMember {
                    id: cfg.node_id,
                    addr,
                    epoch: r.epoch,
                });
            }
            let epoch = r.epoch;
            match fetch_layout(&seed.channel, cfg.node_id, 0, 0).await {
                Ok(Polled { layout: Some(l), .. }) if l.epoch >= epoch && l.nodes.get(&cfg.node_id) == Some(&addr) => {
                    Attempt::Joined(l)
                }
                Ok(_) => Attempt::Retry(format!("{via} does not know the new layout yet")),
                Err(e) => Attempt::Retry(format!("{via}: {e}")),
            }
        }
        Err(status)
            if matches!(
                status.code(),
                tonic::Code::FailedPrecondition | tonic::Code::Unauthenticated
            ) =>
        {
            Attempt::Refused(NodeError::Raft(format!("join refused by {via}: {}", status.message())))
        }
        Err(status) => Attempt::Retry(format!("{via}: {}", status.message())),
    }
}

/// `Admin/AddNode` of node `id` at `addr` in `zone`, with the Admin token
/// when the cluster uses one.
fn add_node_request(id: u64, addr: &str, zone: &str, admin_token: Option<&str>) -> tonic::Request<AddNodeRequest> {
    let mut req = tonic::Request::new(AddNodeRequest {
        node_id: id,
        addr: addr.to_string(),
        zone: zone.to_string(),
    });
    if let Some(t) = admin_token {
        if let Ok(v) = format!("Bearer {t}").parse() {
            req.metadata_mut().insert("authorization", v);
        }
    }
    req.set_timeout(Duration::from_secs(10));
    req
}

/// The address to dial for the join seed `via` on its `visit`-th use:
/// `via` itself when it is `ip:port`, else one of the addresses its host
/// name resolves to now, each in turn.
async fn seed_addr(via: &str, visit: usize) -> Result<String, String> {
    if via.parse::<std::net::SocketAddr>().is_ok() {
        return Ok(via.to_string());
    }
    let addrs: Vec<std::net::SocketAddr> = tokio::net::lookup_host(via)
        .await
        .map_err(|e| format!("resolve {via}: {e}"))?
        .collect();
    if addrs.is_empty() {
        return Err(format!("{via} resolves to no address"));
    }
    Ok(addrs[visit % addrs.len()].to_string())
}

/// What a peer answered to a layout poll.
pub struct Polled {
    /// Its layout, if newer than the epoch asked about.
    pub layout: Option<ClusterLayout>,
    /// Shards it leads, with their approximate sizes in bytes.
    pub leading: Vec<(u64, u64)>,
}

/// One layout long poll to a peer.
pub async fn fetch_layout(
    channel: &tonic::transport::Channel,
    from_node: u64,
    known_epoch: u64,
    wait_ms: u64,
) -> Result<Polled, String> {
    let mut req = tonic::Request::new(FetchLayoutRequest {
        from_node,
        known_epoch,
        wait_ms,
    });
    req.set_timeout(Duration::from_millis(wait_ms + 5_000));
    let resp = RaftTransportClient::new(channel.clone())
        .max_decoding_message_size(64 * 1024 * 1024)
        .fetch_layout(req)
        .await
        .map_err(|s| s.message().to_string())?
        .into_inner();
    let layout = if resp.layout.is_empty() {
        None
    } else {
        Some(decode::<ClusterLayout>(&resp.layout).map_err(|e| format!("undecodable layout: {e}"))?)
    };
    let sizes = resp.leading_bytes.iter().copied().chain(std::iter::repeat(0));
    Ok(Polled {
        layout,
        leading: resp.leading.iter().copied().zip(sizes).collect(),
    })
}

impl Node {
    /// Answers a layout long poll: waits up to `wait_ms` for a layout newer
    /// than `known_epoch`.
    pub async fn layout_after(&self, known_epoch: u64, wait_ms: u64) -> Option<Arc<ClusterLayout>> {
        let mut rx = self.subscribe_layout();
        let wait = Duration::from_millis(wait_ms.min(LAYOUT_POLL_WAIT_MS_MAX));
        let newer = tokio::time::timeout(wait, rx.wait_for(|l| l.epoch > known_epoch)).await;
        match newer {
            Ok(Ok(l)) => Some(l.clone()),
            _ => None,
        }
    }

    /// Approximate bytes of each shard in [`Self::leading`], same order.
    pub fn leading_sizes(&self) -> Vec<u64> {
        let layout = self.layout();
        self.leading()
            .iter()
            .map(|id| layout.shards.get(id).map_or(0, |s| self.approximate_bytes(&s.ranges)))
            .collect()
    }

    /// Shards this node currently leads.
    pub fn leading(&self) -> Vec<u64> {
        self.shard_list()
            .iter()
            .filter(|s| s.id != META_SHARD_ID && s.raft.metrics().borrow().current_leader == Some(self.id))
            .map(|s| s.id)
            .collect()
    }

    /// Adopts `layout` if it is newer than the current one: records it,
    /// routes with it, and opens or deletes replicas to match it. Runs to
    /// the end in a task of its own even when the caller is dropped (an
    /// admin RPC whose client gave up, on the metadata leader): once the
    /// node routes with a layout, adopting the same epoch again is a no-op,
    /// so replicas left unreconciled would stay so until the next change.
    pub async fn adopt_layout(self: &Arc<Self>, layout: ClusterLayout) -> Result<(), ServerError> {
        if layout.epoch <= self.epoch() {
            return Ok(());
        }
        let node = self.clone();
        tokio::spawn(async move { node.adopt_layout_to_the_end(layout).await })
            .await
            .map_err(|e| ServerError::Internal(format!("adopting a layout: {e}")))?
    }

    async fn adopt_layout_to_the_end(self: &Arc<Self>, layout: ClusterLayout) -> Result<(), ServerError> {
        if let Err(e) = layout.check() {
            return Err(ServerError::Internal(format!("refusing an inconsistent layout: {e}")));
        }
        let _g = self.reconcile_lock.lock().await;
        if layout.epoch <= self.epoch() {
            return Ok(());
        }
        let rec = super::BootstrapRecord {
            node_id: self.id,
            layout: layout.clone(),
        };
        let record_key = keys::tagged(keys::NODE_RECORDS, keys::NODE_BOOTSTRAP);
        self.gc
            .write(vec![WriteOp::Put(Cf::Meta, record_key.to_vec(), encode(&rec))])
            .await?;
        let epoch = layout.epoch;
        let moving = !layout.ops.is_empty();
        self.layout.send_replace(Arc::new(layout));
        tracing::info!(epoch, "adopted a new cluster layout");
        if moving && failpoint::fire(failpoint::NODE_ADOPT_MOVE_SLOW) {
            tokio::time::sleep(Duration::from_millis(failpoint::NODE_ADOPT_MOVE_SLOW_MS)).await;
        }
        self.reconcile_locked().await
    }

    /// Opens groups the layout assigns to this node and deletes the ones it
    /// no longer does. The caller holds `reconcile_lock`.
    async fn reconcile_locked(self: &Arc<Self>) -> Result<(), ServerError> {
        let layout = self.layout();
        // Before any group opens or replays: see `HostedRanges`.
        self.hosted_ranges.set_from(&layout, self.id);
        let desired = crate::placement::hosted_by(&layout, self.id);
        let hosted: BTreeSet<u64> = self.shard_list().iter().map(|s| s.id).collect();
        for id in desired.difference(&hosted).copied().filter(|id| *id != META_SHARD_ID) {
            let info = super::group_info(&layout, id);
            let (shard, _, _) = open_group(
                self.id,
                &self.cfg,
                &self.db,
                &self.gc,
                &self.pool,
                &SmShared {
                    stats: self.sm_stats.clone(),
                    hosted: self.hosted_ranges.clone(),
                },
                GroupToOpen {
                    info,
                    bootstrap_members: None,
                },
            )
            .await
            .map_err(|e| ServerError::Internal(format!("opening shard {id}: {e}")))?;
            self.shards.write().unwrap_or_else(|p| p.into_inner()).insert(id, shard);
            tracing::info!(
                shard = id,
                epoch = layout.epoch,
                "opened a replica (awaiting data from the leader)"
            );
        }
        for id in hosted.difference(&desired).copied().filter(|id| *id != META_SHARD_ID) {
            // Unregistered before its data is deleted: a read that passed
            // its barrier just before checks the registration afterwards
            // (`Node::read_replica`).
            let removed = self.shards.write().unwrap_or_else(|p| p.into_inner()).remove(&id);
            if let Some(shard) = removed {
                if let Err(e) = shard.raft.shutdown().await {
                    tracing::warn!(shard = id, error = %e, "raft shutdown of a removed replica");
                }
                // The layout's ranges are current (a split may have
                // narrowed the ones the group was opened with).
                let ranges = layout
                    .shards
                    .get(&id)
                    .map_or(shard.info.ranges.clone(), |s| s.ranges.clone());
                self.delete_shard_data(id, &ranges).await?;
                tracing::info!(
                    shard = id,
                    epoch = layout.epoch,
                    "removed the replica and deleted its data"
                );
            }
        }
        Ok(())
    }

    /// Deletes everything of `shard_id` on this node: log, Raft state,
    /// applied state, sessions, key index, data in `ranges`, snapshot files.
    async fn delete_shard_data(&self, shard_id: u64, ranges: &[crate::ring::TokenRange]) -> Result<(), ServerError> {
        assert_ne!(shard_id, META_SHARD_ID, "the metadata group is never deleted");
        let (from, to) = (
            keys::shard_prefix(shard_id).to_vec(),
            keys::shard_prefix(shard_id + 1).to_vec(),
        );
        let mut ops: Vec<WriteOp> = [Cf::RaftLog, Cf::RaftState, Cf::Meta, Cf::KeyIndex]
            .into_iter()
            .map(|cf| WriteOp::DeleteRange(cf, from.clone(), to.clone()))
            .collect();
        // After the deletions in the same batch, so it survives them.
        if let Some(t) = self.vote_tombstone(shard_id)? {
            ops.push(WriteOp::Put(
                Cf::Meta,
                keys::tagged(shard_id, keys::META_VOTE_TOMBSTONE).to_vec(),
                encode(&t),
            ));
        }
        // Data is keyed by token: delete only ranges no hosted shard owns
        // (never the case in a consistent layout; checked anyway).
        let layout = self.layout();
        let owned: Vec<crate::ring::TokenRange> = self
            .shard_list()
            .iter()
            .filter(|s| s.id != shard_id && s.id != META_SHARD_ID)
            .flat_map(|s| {
                layout
                    .shards
                    .get(&s.id)
                    .map_or(s.info.ranges.clone(), |i| i.ranges.clone())
            })
            .collect();
        for r in ranges {
            let overlaps = owned
                .iter()
                .any(|o| o.start < r.end.unwrap_or(u64::MAX) && r.start < o.end.unwrap_or(u64::MAX));
            if overlaps {
                tracing::error!(
                    shard = shard_id,
                    ?r,
                    "not deleting data of a range another hosted shard owns"
                );
                continue;
            }
            let (a, b) = keys::data_range(r.start, r.end);
            ops.push(WriteOp::DeleteRange(Cf::Data, a, b));
        }
        self.gc.write(ops).await?;
        let dir = crate::storage::snapshot_files::SnapshotFiles::dir(self.db.root(), shard_id);
        if let Err(e) = std::fs::remove_dir_all(&dir) {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!(shard = shard_id, error = %e, "removing snapshot files");
            }
        }
        Ok(())
    }

    /// The vote a replica of `shard_id` deleted now leaves behind: its
    /// current vote (or the tombstone of an earlier deletion), uncommitted.
    ///
    /// Why: a replica deleted here and later re-added would otherwise start
    /// with no vote and an empty log, and so accept any leader or candidate
    /// of any term. A stale leader of an old configuration that still
    /// lists this node as a voter (cut off since, and not yet aware of the
    /// newer terms) could then count this node toward a quorum, for reads
    /// and commits. Starting from the old vote, such a replica refuses
    /// every term before the one it had reached; the transport also keeps
    /// it from voting until it is a voter again (`raft::refuses_votes`).
    fn vote_tombstone(&self, shard_id: u64) -> Result<Option<crate::raft::types::Vote>, ServerError> {
        let current = self.db.get(Cf::RaftState, &keys::tagged(shard_id, keys::STATE_VOTE))?;
        let earlier = self
            .db
            .get(Cf::Meta, &keys::tagged(shard_id, keys::META_VOTE_TOMBSTONE))?;
        let Some(raw) = current.or(earlier) else {
            return Ok(None);
        };
        let vote: crate::raft::types::Vote =
            decode(&raw).map_err(|e| ServerError::Storage(format!("shard {shard_id}: undecodable vote: {e}")))?;
        Ok(Some(crate::raft::types::Vote {
            committed: false,
            ..vote
        }))
    }

    /// Reads or changes the Raft membership of `shard_id`; must run on its
    /// leader.
    pub async fn shard_membership(&self, req: ShardMembershipRequest) -> Result<ShardMembershipResponse, ServerError> {
        let shard = self.hosted(req.shard_id)?;
        let action = MembershipAction::try_from(req.action)
            .map_err(|_| ServerError::InvalidArgument(format!("unknown membership action {}", req.action)))?;
        let changes_members = matches!(
            action,
            MembershipAction::AddLearner
                | MembershipAction::SetVoters
                | MembershipAction::RemoveLearner
                | MembershipAction::Split
        );
        if req.shard_id == META_SHARD_ID && changes_members {
            return Err(ServerError::InvalidArgument(
                "the metadata group's membership cannot be changed".into(),
            ));
        }
        if action == MembershipAction::Campaign {
            let (m, leader) = {
                let metrics = shard.raft.metrics().borrow().clone();
                (metrics.membership_config.clone(), metrics.current_leader)
            };
            if !m.membership().voter_ids().any(|v| v == self.id) {
                return Err(ServerError::Precondition(format!(
                    "node {} is not a voter of shard {}",
                    self.id, req.shard_id
                )));
            }
            if leader == Some(self.id) {
                // Already won (a repeated request): campaigning again would
                // only depose ourselves.
                return Ok(ShardMembershipResponse::default());
            }
            // Never depose a leader we still hear from: within its lease
            // (openraft's, one election_timeout_ms_max since its last
            // message) a campaign would only disrupt a working shard. A
            // hand-off waits the lease out before it asks; a candidate
            // refused for its shorter log asks only once we refused it,
            // which openraft does after the lease ran out.
            let lease = Duration::from_millis(self.cfg.raft.election_timeout_ms_max);
            let heard_for = shard
                .raft
                .with_raft_state(|st| {
                    st.vote_ref()
                        .is_committed()
                        .then(|| st.vote_last_modified().map(|t| t.elapsed()))
                        .flatten()
                })
                .await
                .map_err(|e| ServerError::ShardUnavailable {
                    shard_id: req.shard_id,
                    reason: e.to_string(),
                })?;
            if heard_for.is_some_and(|d| d < lease) {
                return Err(ServerError::Precondition(format!(
                    "node {} heard from the leader of shard {} {} ms ago, within its lease",
                    self.id,
                    req.shard_id,
                    heard_for.map_or(0, |d| d.as_millis())
                )));
            }
            shard
                .raft
                .trigger()
                .elect()
                .await
                .map_err(|e| ServerError::ShardUnavailable {
                    shard_id: req.shard_id,
                    reason: e.to_string(),
                })?;
            return Ok(ShardMembershipResponse::default());
        }
        if action == MembershipAction::Split {
            let [new_shard] = req.nodes[..] else {
                return Err(ServerError::InvalidArgument("SPLIT names exactly the new shard".into()));
            };
            let deadline = Instant::now() + Duration::from_millis(MEMBERSHIP_CHANGE_TIMEOUT_MS);
            let cmd = Command::Split {
                at: req.split_token,
                new_shard,
            };
            match self.write(req.shard_id, cmd, None, deadline).await? {
                RaftResponse::Done => {}
                other => {
                    return Err(ServerError::Precondition(format!(
                        "shard {} refused the split: {other:?}",
                        req.shard_id
                    )))
                }
            }
        }
        if action == MembershipAction::TransferLeader {
            let [to] = req.nodes[..] else {
                return Err(ServerError::InvalidArgument(
                    "TRANSFER_LEADER names exactly one node".into(),
                ));
            };
            self.transfer_leader(&shard, to).await?;
        }
        let deadline = Instant::now() + Duration::from_millis(MEMBERSHIP_CHANGE_TIMEOUT_MS);
        self.ensure_leader(&shard, deadline).await.or_else(|e| match e {
            // After a hand-off the answer comes from the old leader.
            ServerError::NotLeader { .. } if action == MembershipAction::TransferLeader => Ok(()),
            e => Err(e),
        })?;
        let change: Option<ChangeMembers<u64, BasicNode>> = match action {
            MembershipAction::Read
            | MembershipAction::TransferLeader
            | MembershipAction::Campaign
            | MembershipAction::Split => None,
            MembershipAction::AddLearner => {
                let [node] = req.nodes[..] else {
                    return Err(ServerError::InvalidArgument(
                        "ADD_LEARNER names exactly one node".into(),
                    ));
                };
                if req.addr.is_empty() {
                    return Err(ServerError::InvalidArgument(
                        "ADD_LEARNER needs the node's address".into(),
                    ));
                }
                Some(ChangeMembers::AddNodes(BTreeMap::from([(
                    node,
                    BasicNode::new(&req.addr),
                )])))
            }
            MembershipAction::SetVoters => {
                let voters: BTreeSet<u64> = req.nodes.iter().copied().collect();
                if voters.is_empty() || voters.len() != req.nodes.len() {
                    return Err(ServerError::InvalidArgument(
                        "SET_VOTERS needs distinct node ids".into(),
                    ));
                }
                Some(ChangeMembers::ReplaceAllVoters(voters))
            }
            MembershipAction::RemoveLearner => {
                let [node] = req.nodes[..] else {
                    return Err(ServerError::InvalidArgument(
                        "REMOVE_LEARNER names exactly one node".into(),
                    ));
                };
                let m = shard.raft.metrics().borrow().membership_config.clone();
                if m.membership().voter_ids().any(|v| v == node) {
                    return Err(ServerError::Precondition(format!(
                        "node {node} is a voter of shard {}, not a learner",
                        req.shard_id
                    )));
                }
                Some(ChangeMembers::RemoveNodes(BTreeSet::from([node])))
            }
        };
        if let Some(change) = change {
            // retain = false: a voter replaced by SET_VOTERS leaves the group.
            let res = tokio::time::timeout_at(deadline.into(), shard.raft.change_membership(change, false)).await;
            match res {
                Err(_) => {
                    return Err(ServerError::DeadlineExceeded(format!(
                        "membership change of shard {} still in progress",
                        req.shard_id
                    )))
                }
                Ok(Ok(_)) => {}
                Ok(Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f)))) => {
                    return Err(ServerError::NotLeader {
                        node_id: self.id,
                        shard_id: req.shard_id,
                        leader_id: f.leader_id,
                        leader_addr: f.leader_node.map(|n| n.addr),
                    })
                }
                Ok(Err(RaftError::APIError(ClientWriteError::ChangeMembershipError(e)))) => {
                    return Err(match e {
                        ChangeMembershipError::InProgress(_) => ServerError::ShardUnavailable {
                            shard_id: req.shard_id,
                            reason: format!("a membership change is in progress: {e}"),
                        },
                        other => ServerError::Precondition(other.to_string()),
                    })
                }
                Ok(Err(RaftError::Fatal(e))) => {
                    return Err(ServerError::ShardUnavailable {
                        shard_id: req.shard_id,
                        reason: e.to_string(),
                    })
                }
            }
        }
        let m = shard.raft.metrics().borrow().clone();
        let membership = m.membership_config.membership();
        let joint = membership.get_joint_config();
        let mut resp = ShardMembershipResponse {
            leader: m.current_leader.unwrap_or(0),
            voters: joint.last().map(|c| c.iter().copied().collect()).unwrap_or_default(),
            learners: membership.learner_ids().collect(),
            joint: joint.len() > 1,
            last_log_index: m.last_log_index.unwrap_or(0),
            approximate_bytes: self
                .layout()
                .shards
                .get(&req.shard_id)
                .map_or(0, |s| self.approximate_bytes(&s.ranges)),
            ..Default::default()
        };
        if let Some(repl) = &m.replication {
            for (node, matched) in repl.iter() {
                if let Some(log_id) = matched {
                    resp.matched_nodes.push(*node);
                    resp.matched_index.push(log_id.index);
                }
            }
        }
        Ok(resp)
    }

    /// Hands the leadership of `shard` (led here) to its voter `to`.
    ///
    /// openraft 0.9 has no leader transfer, so this runs an ordinary
    /// election that `to` is sure to win: the shard stops taking requests
    /// here and stops heartbeats, waits until `to` holds every entry, waits
    /// out the followers' leader lease (`election_timeout_ms_max`; before
    /// it expires they refuse to vote), then tells `to` to campaign. The
    /// other followers' own timers fire only an election timeout later, and
    /// `to` has the longest log, so it wins. Unsafe shortcuts (granting `to`
    /// a vote no quorum gave) are deliberately not used. Costs the shard
    /// about one lease of unavailability. On failure the leadership stays.
    pub async fn transfer_leader(&self, shard: &Shard, to: u64) -> Result<(), ServerError> {
        let shard_id = shard.id;
        let m = shard.raft.metrics().borrow().clone();
        if m.current_leader != Some(self.id) {
            return Err(ServerError::NotLeader {
                node_id: self.id,
                shard_id,
                leader_id: m.current_leader,
                leader_addr: m.current_leader.and_then(|l| self.addr_of(l)),
            });
        }
        if to == self.id {
            return Ok(());
        }
        let membership = m.membership_config.membership().clone();
        if membership.get_joint_config().len() > 1 || !membership.voter_ids().any(|v| v == to) {
            return Err(ServerError::Precondition(format!(
                "node {to} is not a voter of shard {shard_id} (or a membership change is in progress)"
            )));
        }
        let addr = self
            .addr_of(to)
            .ok_or_else(|| ServerError::Precondition(format!("node {to} has no address")))?;
        {
            let mut t = self.transfers.lock().unwrap_or_else(|p| p.into_inner());
            if t.contains_key(&shard_id) {
                return Err(ServerError::Precondition(format!(
                    "a leadership hand-off of shard {shard_id} is already in progress"
                )));
            }
            t.insert(shard_id, to);
        }
        shard.raft.runtime_config().heartbeat(false);
        // Undone however this future ends: the caller (an RPC handler) may
        // be dropped mid hand-off when its deadline passes. A hand-off left
        // registered would make this node refuse the shard's requests for
        // as long as it leads it, with heartbeats off.
        let _undo = HandOffUndo { node: self, shard };
        let res = self.hand_off(shard, to, &addr).await;
        match &res {
            Ok(()) => tracing::info!(shard = shard_id, to, "leadership handed off"),
            Err(e) => tracing::warn!(shard = shard_id, to, error = %e, "leadership hand-off failed"),
        }
        res
    }

    /// Before a shutdown: hands every leadership of this node (metadata
    /// group included) to the most caught-up other voter, all at once.
    /// Returns how many were handed off, of how many led. Bounded by
    /// `transfer_leader`'s own waits (catch-up, one lease, a few election
    /// timeouts).
    pub async fn hand_off_leaderships(&self) -> (usize, usize) {
        let led: Vec<(Arc<Shard>, u64)> = self
            .shard_list()
            .into_iter()
            .filter_map(|s| {
                let m = s.raft.metrics().borrow().clone();
                if m.current_leader != Some(self.id) {
                    return None;
                }
                let voters: Vec<u64> = m.membership_config.membership().voter_ids().collect();
                let matched = |n: &u64| {
                    m.replication
                        .as_ref()
                        .and_then(|r| r.get(n).cloned().flatten())
                        .map_or(0, |l| l.index)
                };
                let to = voters
                    .iter()
                    .filter(|v| **v != self.id)
                    .max_by_key(|v| (matched(v), **v))
                    .copied()?;
                Some((s, to))
            })
            .collect();
        let handed = futures::future::join_all(led.iter().map(|(s, to)| self.transfer_leader(s, *to))).await;
        (handed.iter().filter(|r| r.is_ok()).count(), led.len())
    }

    async fn hand_off(&self, shard: &Shard, to: u64, addr: &str) -> Result<(), ServerError> {
        let r = &self.cfg.raft;
        let unavailable = |reason: String| ServerError::ShardUnavailable {
            shard_id: shard.id,
            reason,
        };
        let caught_up = shard
            .raft
            .wait(Some(Duration::from_millis(HAND_OFF_CATCH_UP_MS)))
            .metrics(
                |m| {
                    let last = m.last_log_index;
                    m.replication
                        .as_ref()
                        .and_then(|r| r.get(&to).cloned().flatten())
                        .is_some_and(|matched| Some(matched.index) == last)
                },
                "hand-off target caught up",
            )
            .await;
        if caught_up.is_err() {
            return Err(unavailable(format!("node {to} did not catch up for the hand-off")));
        }
        // The followers refuse votes until the lease of the last heartbeat
        // they received has run out.
        tokio::time::sleep(Duration::from_millis(
            r.election_timeout_ms_max + r.heartbeat_interval_ms,
        ))
        .await;
        let req = ShardMembershipRequest {
            shard_id: shard.id,
            action: MembershipAction::Campaign as i32,
            ..Default::default()
        };
        let peer = self.pool.peer(to, addr).map_err(ServerError::Internal)?;
        let mut rpc = tonic::Request::new(req);
        rpc.set_timeout(Duration::from_millis(r.election_timeout_ms_max));
        RaftTransportClient::new(peer.channel.clone())
            .shard_membership(rpc)
            .await
            .map_err(|s| unavailable(format!("node {to} refused to campaign: {}", s.message())))?;
        shard
            .raft
            .wait(Some(Duration::from_millis(
                HAND_OFF_ELECTIONS * r.election_timeout_ms_max,
            )))
            .metrics(|m| m.current_leader == Some(to), "hand-off target leads")
            .await
            .map(|_| ())
            .map_err(|_| unavailable(format!("node {to} did not win the election")))
    }

    /// RocksDB's estimate of the bytes of data in `ranges`.
    pub fn approximate_bytes(&self, ranges: &[crate::ring::TokenRange]) -> u64 {
        let bounds: Vec<(Vec<u8>, Vec<u8>)> = ranges.iter().map(|r| keys::data_range(r.start, r.end)).collect();
        let rs: Vec<rocksdb::Range> = bounds.iter().map(|(a, b)| rocksdb::Range::new(a, b)).collect();
        self.db
            .raw()
            .get_approximate_sizes_cf(self.db.cf(Cf::Data), &rs)
            .iter()
            .sum()
    }

    /// The metadata group's leader, when this node is a member and knows it.
    pub fn meta_leader(&self) -> Option<u64> {
        let meta = self.shard(META_SHARD_ID)?;
        let leader = meta.raft.metrics().borrow().current_leader;
        leader
    }

    pub fn is_meta_leader(&self) -> bool {
        self.meta_leader() == Some(self.id)
    }

    /// The layout committed in the metadata group, read on its leader after
    /// a linearizable barrier so a compare-and-swap starts from the latest.
    pub async fn committed_layout(&self) -> Result<ClusterLayout, ServerError> {
        let deadline = Instant::now() + Duration::from_millis(self.cfg.raft.leader_wait_ms);
        self.read_barrier(META_SHARD_ID, super::ReadConsistency::Linearizable, deadline)
            .await?;
        self.meta_layout
            .as_ref()
            .and_then(|rx| rx.borrow().clone())
            .ok_or_else(|| ServerError::ShardUnavailable {
                shard_id: META_SHARD_ID,
                reason: "the metadata group has no layout yet".into(),
            })
    }

    /// Changes the layout on the metadata leader: `f` computes the next
    /// layout from the committed one (`None` = nothing to change), which is
    /// committed if no other change came first (else `f` runs again).
    /// Returns the layout in force afterwards.
    pub async fn change_layout(
        self: &Arc<Self>,
        f: impl Fn(&ClusterLayout) -> Result<Option<ClusterLayout>, PlacementError>,
    ) -> Result<ClusterLayout, ServerError> {
        for _ in 0..LAYOUT_CAS_ATTEMPTS_MAX {
            let current = self.committed_layout().await?;
            let Some(next) = f(&current)? else {
                return Ok(current);
            };
            assert_eq!(next.epoch, current.epoch + 1, "placement must bump the epoch by one");
            let deadline = Instant::now() + Duration::from_millis(self.cfg.raft.leader_wait_ms);
            let cmd = Command::UpdateLayout {
                expected_epoch: current.epoch,
                layout: next.clone(),
            };
            match self.write(META_SHARD_ID, cmd, None, deadline).await? {
                RaftResponse::Layout { applied: true, .. } => {
                    self.adopt_layout(next.clone()).await?;
                    return Ok(next);
                }
                RaftResponse::Layout { applied: false, epoch } => {
                    tracing::info!(
                        expected = current.epoch,
                        found = epoch,
                        "layout changed meanwhile; retrying"
                    );
                }
                other => return Err(ServerError::Internal(format!("unexpected metadata response {other:?}"))),
            }
        }
        Err(ServerError::ShardUnavailable {
            shard_id: META_SHARD_ID,
            reason: format!("the layout kept changing during {LAYOUT_CAS_ATTEMPTS_MAX} attempts"),
        })
    }
}

/// Records this node's configured zone in the layout when it differs
/// (bootstrap nodes, or a relabelled node), through the metadata leader.
pub(super) async fn register_zone(node: Arc<Node>) {
    let zone = node.cfg.zone.clone();
    let addr = node.cfg.advertise_addr();
    for _ in 0..JOIN_ATTEMPTS_MAX {
        if node.layout().zone_of(node.id).unwrap_or("") == zone {
            return;
        }
        if node.is_meta_leader() {
            let id = node.id;
            match node
                .change_layout(|l| crate::placement::add_node(l, id, &addr, &zone))
                .await
            {
                Ok(_) => return,
                Err(e) => tracing::info!(error = %e, "recording this node's zone; retrying"),
            }
        } else if let Some((leader, leader_addr)) = node
            .meta_leader()
            .or_else(|| node.layout().meta_replicas.first().copied())
            .and_then(|l| node.addr_of(l).map(|a| (l, a)))
        {
            let res = match node.pool.peer(leader, &leader_addr) {
                Ok(peer) => {
                    let req = add_node_request(node.id, &addr, &zone, node.admin_token.as_deref());
                    AdminClient::new(peer.channel.clone())
                        .add_node(req)
                        .await
                        .map(|_| ())
                        .map_err(|s| s.message().to_string())
                }
                Err(e) => Err(e),
            };
            if let Err(e) = res {
                tracing::info!(error = %e, "recording this node's zone; retrying");
            }
        }
        tokio::time::sleep(Duration::from_millis(JOIN_RETRY_MS)).await;
    }
    tracing::warn!(zone = %zone, "could not record this node's zone in the layout");
}

/// Keeps this node's layout current: from the local metadata replica when
/// this node is a member, else by long polls to the members.
pub(super) async fn sync_layout(node: Arc<Node>) {
    if let Some(mut rx) = node.meta_layout.clone() {
        loop {
            let latest = rx.borrow_and_update().clone();
            if let Some(l) = latest {
                if !l.ops.is_empty() && failpoint::fire(failpoint::NODE_SYNC_MOVE_LATE) {
                    tokio::time::sleep(Duration::from_millis(failpoint::NODE_ADOPT_MOVE_SLOW_MS)).await;
                }
                if let Err(e) = node.adopt_layout(l).await {
                    tracing::warn!(error = %e, "adopting the metadata layout");
                }
            }
            if rx.changed().await.is_err() {
                return; // the metadata group shut down
            }
        }
    }
    let mut next_member = 0usize;
    loop {
        let layout = node.layout();
        let members: Vec<(u64, String)> = layout
            .meta_replicas
            .iter()
            .filter_map(|m| layout.nodes.get(m).map(|a| (*m, a.clone())))
            .collect();
        if members.is_empty() {
            tracing::error!("the layout names no metadata member; cannot follow layout changes");
            return;
        }
        let (m, addr) = &members[next_member % members.len()];
        let polled = match node.pool.peer(*m, addr) {
            Ok(peer) => fetch_layout(&peer.channel, node.id, layout.epoch, LAYOUT_POLL_WAIT_MS).await,
            Err(e) => Err(e),
        };
        match polled {
            Ok(Polled { layout: Some(l), .. }) => {
                if let Err(e) = node.adopt_layout(l).await {
                    tracing::warn!(error = %e, "adopting a polled layout");
                }
            }
            Ok(Polled { layout: None, .. }) => {}
            Err(e) => {
                tracing::debug!(member = m, error = %e, "layout poll failed; trying the next member");
                next_member += 1;
                tokio::time::sleep(Duration::from_millis(LAYOUT_POLL_RETRY_MS)).await;
            }
        }
    }
}

/// Deletes replicas left on disk that the recorded layout no longer
/// assigns to this node (a crash between adopting a layout and deleting).
pub(super) async fn drop_orphans(node: &Arc<Node>) {
    let layout = node.layout();
    let desired = crate::placement::hosted_by(&layout, node.id);
    let mut found = BTreeSet::new();
    for cf in [Cf::RaftState, Cf::RaftLog] {
        let mut it = node.db.raw().raw_iterator_cf(node.db.cf(cf));
        it.seek_to_first();
        while let Some(k) = it.key() {
            let Some(prefix) = k.get(..8).and_then(|p| <[u8; 8]>::try_from(p).ok()) else {
                break;
            };
            let id = u64::from_be_bytes(prefix);
            if id == keys::NODE_RECORDS {
                break;
            }
            found.insert(id);
            // Jump to the next shard.
            it.seek(keys::shard_prefix(id + 1));
        }
    }
    for id in found.difference(&desired).copied().filter(|id| *id != META_SHARD_ID) {
        // A shard the layout does not know may be the new half of a split
        // this node applied before it learned of the layout: keep it.
        let Some(ranges) = layout.shards.get(&id).map(|s| s.ranges.clone()) else {
            tracing::info!(shard = id, "keeping state of a shard the layout does not know yet");
            continue;
        };
        match node.delete_shard_data(id, &ranges).await {
            Ok(()) => tracing::info!(shard = id, "deleted a replica the layout no longer assigns here"),
            Err(e) => tracing::warn!(shard = id, error = %e, "deleting an orphaned replica"),
        }
    }
}

impl MembershipView {
    /// The view a shard leader reported.
    pub fn from_response(r: &ShardMembershipResponse) -> Self {
        MembershipView {
            leader: r.leader,
            voters: r.voters.iter().copied().collect(),
            learners: r.learners.iter().copied().collect(),
            joint: r.joint,
            last_log_index: r.last_log_index,
            matched: r
                .matched_nodes
                .iter()
                .copied()
                .zip(r.matched_index.iter().copied())
                .collect(),
        }
    }
}

/// Ends a leadership hand-off started by `Node::transfer_leader`, when
/// dropped: heartbeats back on, the hand-off unregistered.
struct HandOffUndo<'a> {
    node: &'a Node,
    shard: &'a Shard,
}

impl Drop for HandOffUndo<'_> {
    fn drop(&mut self) {
        self.shard.raft.runtime_config().heartbeat(true);
        self.node
            .transfers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.shard.id);
    }
}
