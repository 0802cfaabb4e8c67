//! A ringkv node: owns the database, the group committer, the peer
//! connections and one openraft instance per hosted shard (plus the metadata
//! group when this node is one of its members).
//!
//! Owns bootstrap and restart, routing a key to its shard, and the local
//! halves of the request path: proposing a write on a leader and making a
//! linearizable read safe. It does not speak gRPC to clients (see `service`)
//! and does not decide what a command does (see `storage::state_machine`).

pub mod membership;
pub mod proposals;
pub mod stats;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use std::time::Instant;

use openraft::error::ClientWriteError;
use openraft::error::InitializeError;
use openraft::error::RaftError;
use openraft::BasicNode;
use serde::Deserialize;
use serde::Serialize;
use tokio::sync::watch;

use crate::config::Config;
use crate::error::ServerError;
use crate::failpoint;
use crate::raft::lease::Lease;
use crate::raft::network::PeerPool;
use crate::raft::read_index::ReadIndex;
use crate::raft::types::decode;
use crate::raft::types::encode;
use crate::raft::types::Command;
use crate::raft::types::Raft;
use crate::raft::types::RaftRequest;
use crate::raft::types::RaftResponse;
use crate::raft::types::SessionId;
use crate::ring::ClusterLayout;
use crate::ring::ShardInfo;
use crate::ring::TokenRange;
use crate::ring::META_SHARD_ID;
use crate::storage::group_commit::GroupCommit;
use crate::storage::group_commit::WriteOp;
use crate::storage::hosted::HostedRanges;
use crate::storage::keys;
use crate::storage::state_machine::AppliedRanges;
use crate::storage::state_machine::SmStats;
use crate::storage::Cf;
use crate::storage::Db;
use stats::NodeStats;

/// A fresh replica that is not its group's first waits this many maximal
/// election timeouts for the first replica before initializing the group
/// itself.
const INIT_FALLBACK_ELECTIONS: u64 = 4;
/// How often the bootstrap task retries installing the layout.
const META_INIT_RETRY_MS: u64 = 500;

/// Errors starting a node.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error(transparent)]
    Storage(#[from] crate::storage::StorageError),
    #[error("raft: {0}")]
    Raft(String),
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
    #[error("cannot read admin token: {0}")]
    AdminToken(String),
    #[error("data dir belongs to node {found}, not node {configured}")]
    WrongNode { found: u64, configured: u64 },
    #[error(
        "node {id} is already a member of the cluster (at {addr}, layout epoch {epoch}) but its data dir \
         is empty: its data was lost, or an earlier join stopped halfway. Joining empty could lose \
         acknowledged writes (the node would have forgotten its Raft votes and log). Decommission it \
         first (Admin/RemoveNode {{\"nodeId\": {id}}}), wait until Admin/ListNodes no longer lists it, \
         then start it again"
    )]
    AlreadyMember { id: u64, addr: String, epoch: u64 },
}

/// What a node writes once it has bootstrapped, so a restart resumes the same
/// cluster whatever the flags say.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct BootstrapRecord {
    node_id: u64,
    layout: ClusterLayout,
}

/// One hosted shard.
pub struct Shard {
    pub id: u64,
    pub info: ShardInfo,
    pub raft: Raft,
    pub reads: Arc<ReadIndex>,
    /// Acknowledgements behind lease reads (`raft::lease`).
    pub lease: Arc<Lease>,
    /// The token ranges the replica owns as of its last applied entry.
    pub applied_ranges: AppliedRanges,
    /// Until when the replica declines vote requests: it had a vote or log
    /// entries when this process opened it, so it may have acknowledged a
    /// leader just before and must not vote until that leader's lease is
    /// over (`LeaseConfig::votes_withheld_until`).
    pub votes_withheld_until: Option<Instant>,
}

/// A replica that passed [`Node::read_barrier`]: local reads go through
/// it ([`Node::read_replica`]), which checks the replica was not removed
/// from the node while they ran.
pub struct ReadReplica {
    shard: Arc<Shard>,
}

/// Key-value pairs in key order.
pub type KvPairs = Vec<(Vec<u8>, Vec<u8>)>;

/// Consistency asked for by a read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadConsistency {
    Linearizable,
    Stale,
}

/// A running node.
pub struct Node {
    pub id: u64,
    pub cfg: Config,
    pub db: Arc<Db>,
    pub gc: GroupCommit,
    pub pool: Arc<PeerPool>,
    /// The ring this node routes with: the bootstrap layout, replaced by
    /// newer layouts the metadata group commits (epochs only grow).
    layout: watch::Sender<Arc<ClusterLayout>>,
    /// Serializes changes to the set of hosted groups.
    reconcile_lock: tokio::sync::Mutex<()>,
    /// Hosted shards by id, the metadata group included. Never held across
    /// an await.
    shards: std::sync::RwLock<BTreeMap<u64, Arc<Shard>>>,
    /// Layout installed in the metadata group (`None` until committed, or
    /// when this node is not a metadata member).
    pub meta_layout: Option<watch::Receiver<Option<ClusterLayout>>>,
    pub stats: NodeStats,
    /// TLS settings of the gRPC server (`None` = plaintext).
    pub tls: Option<crate::tls::TlsMaterial>,
    /// Bearer token the Admin API requires (`None` = none).
    pub admin_token: Option<String>,
    pub metrics: crate::metrics::Metrics,
    /// Set once the metadata group's committed layout is known to equal this
    /// node's bootstrap layout. Until then data writes are refused: a node
    /// bootstrapped with other flags must never apply writes with other
    /// shard ranges than its peers.
    layout_confirmed: std::sync::atomic::AtomicBool,
    pub sm_stats: Arc<SmStats>,
    /// Ranges of the data shards the layout puts here, for the state
    /// machines (see `storage::hosted`).
    pub hosted_ranges: Arc<HostedRanges>,
    /// What the placement driver observed (metadata leader only).
    pub placement: crate::placement::driver::DriverState,
    /// Shards this node is handing its leadership off, to which node. While
    /// listed, the shard takes no new requests here (see `transfer_leader`).
    transfers: std::sync::Mutex<BTreeMap<u64, u64>>,
    /// Sessionless puts waiting to share a Raft entry (see `proposals`).
    pub proposals: proposals::SharedQueues,
}

/// How a node came up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StartMode {
    /// First start with `initial_cluster`: compute and initialize the layout.
    Bootstrap,
    /// First start with `join`: the layout came from the cluster.
    Join,
    /// The data dir holds a node: resume its recorded layout.
    Resume,
}

impl Node {
    /// Opens the data dir and starts every hosted shard. On first start the
    /// deterministic bootstrap layout is computed from `initial_cluster` and
    /// every shard group is initialized with its replicas.
    pub async fn start(cfg: Config) -> Result<Arc<Self>, NodeError> {
        cfg.validate()?;
        let db = Db::open(&cfg.data_dir, &cfg.storage)?;
        let gc = GroupCommit::start(db.clone(), cfg.storage.group_commit_requests_max)?;
        let record_key = keys::tagged(keys::NODE_RECORDS, keys::NODE_BOOTSTRAP);
        let existing: Option<BootstrapRecord> = match db.get(Cf::Meta, &record_key)? {
            None => None,
            Some(b) => Some(decode(&b).map_err(|e| crate::storage::StorageError::Corrupt {
                what: "bootstrap record",
                detail: e.to_string(),
            })?),
        };
        let id = cfg.node_id;
        let tls = crate::tls::load(&cfg.tls)?;
        let source = cfg.peer_source_address.parse().ok();
        let pool = PeerPool::new(
            id,
            tls.as_ref().map(|t| t.client.clone()),
            source,
            cfg.raft.snapshot_send_bytes_per_sec,
        );
        let admin_token = read_admin_token(&cfg.admin.token_file)?;
        let (layout, mode) = match existing {
            Some(r) => {
                if r.node_id != cfg.node_id {
                    return Err(NodeError::WrongNode {
                        found: r.node_id,
                        configured: cfg.node_id,
                    });
                }
                tracing::info!(node = cfg.node_id, epoch = r.layout.epoch, "resuming from data dir");
                (r.layout, StartMode::Resume)
            }
            None if !cfg.join.is_empty() => {
                let l = membership::join_cluster(&cfg, &pool, admin_token.as_deref()).await?;
                tracing::info!(node = id, epoch = l.epoch, via = %cfg.join, "joined the cluster");
                (l, StartMode::Join)
            }
            None => {
                let l = ClusterLayout::bootstrap(&cfg.initial_nodes()?, cfg.bootstrap_shards()?);
                tracing::info!(
                    node = cfg.node_id,
                    shards = l.shards.len(),
                    "bootstrapping a new cluster"
                );
                (l, StartMode::Bootstrap)
            }
        };
        if let Err(e) = layout.check() {
            return Err(NodeError::Raft(format!("invalid layout: {e}")));
        }
        let sm_stats = Arc::new(SmStats::default());
        let hosted_ranges = Arc::new(HostedRanges::default());
        hosted_ranges.set_from(&layout, id);
        let sm_shared = membership::SmShared {
            stats: sm_stats.clone(),
            hosted: hosted_ranges.clone(),
        };
        let mut shards = BTreeMap::new();
        let mut meta_layout = None;
        for shard_id in crate::placement::hosted_by(&layout, id) {
            let info = group_info(&layout, shard_id);
            let members: BTreeMap<u64, BasicNode> = info
                .replicas
                .iter()
                .map(|r| (*r, BasicNode::new(layout.nodes.get(r).cloned().unwrap_or_default())))
                .collect();
            let bootstrap_members = (mode == StartMode::Bootstrap).then(|| members.clone());
            let (shard, meta, start) = membership::open_group(
                id,
                &cfg,
                &db,
                &gc,
                &pool,
                &sm_shared,
                membership::GroupToOpen {
                    info: info.clone(),
                    bootstrap_members,
                },
            )
            .await?;
            if meta.is_some() {
                meta_layout = meta;
            }
            // The first replica starts at once and so becomes the first
            // leader: leaders start spread round-robin like the replicas.
            let first = info.replicas.first() == Some(&id);
            match start {
                // Only a bootstrapping node initializes the metadata group:
                // a replica that joins later gets its state from the leader.
                // The others initialize only if the first replica has not
                // reached them in a while (it may be down).
                membership::GroupStart::Empty if mode == StartMode::Bootstrap => {
                    let delay_ms = if first {
                        0
                    } else {
                        INIT_FALLBACK_ELECTIONS * cfg.raft.election_timeout_ms_max
                    };
                    tokio::spawn(initialize_group(shard.raft.clone(), info.id, members, delay_ms));
                }
                // Seeded data shards know their voters. The others hold
                // their own elections back for the same while, so the
                // first replica normally wins.
                membership::GroupStart::Seeded if first => {
                    tokio::spawn(elect_first_leader(shard.raft.clone(), info.id));
                }
                membership::GroupStart::Seeded => {
                    let hold_ms = INIT_FALLBACK_ELECTIONS * cfg.raft.election_timeout_ms_max;
                    shard.raft.runtime_config().elect(false);
                    tokio::spawn(hold_elections_until_a_leader(shard.raft.clone(), hold_ms));
                }
                _ => {}
            }
            shards.insert(shard_id, shard);
        }
        if mode != StartMode::Resume {
            let rec = BootstrapRecord {
                node_id: id,
                layout: layout.clone(),
            };
            gc.write(vec![WriteOp::Put(Cf::Meta, record_key.to_vec(), encode(&rec))])
                .await?;
        }
        let (limits_keys_max, limits_bytes_max) = (cfg.limits.batch_keys_max, cfg.limits.batch_bytes_max);
        let node = Arc::new(Node {
            id,
            cfg,
            db,
            gc,
            pool,
            layout: watch::Sender::new(Arc::new(layout)),
            reconcile_lock: tokio::sync::Mutex::new(()),
            shards: std::sync::RwLock::new(shards),
            meta_layout,
            stats: NodeStats::default(),
            tls,
            admin_token,
            metrics: crate::metrics::Metrics::default(),
            layout_confirmed: std::sync::atomic::AtomicBool::new(false),
            sm_stats,
            hosted_ranges,
            placement: Default::default(),
            transfers: std::sync::Mutex::new(BTreeMap::new()),
            proposals: Arc::new(std::sync::Mutex::new(proposals::Queues::new(proposals::Limits {
                keys_max: limits_keys_max,
                bytes_max: limits_bytes_max,
            }))),
        });
        membership::drop_orphans(&node).await;
        if mode == StartMode::Bootstrap && node.hosts(META_SHARD_ID) {
            tokio::spawn(install_layout(node.clone()));
            tokio::spawn(confirm_layout(node.clone()));
        } else {
            // Resumed or joined: the layout came from the cluster. (A node
            // bootstrapping without the metadata group has nothing local to
            // compare with.)
            node.layout_confirmed.store(true, std::sync::atomic::Ordering::Release);
        }
        tokio::spawn(membership::sync_layout(node.clone()));
        tokio::spawn(membership::register_zone(node.clone()));
        tokio::spawn(crate::placement::driver::run(node.clone()));
        Ok(node)
    }

    /// The current routing layout.
    pub fn layout(&self) -> Arc<ClusterLayout> {
        self.layout.borrow().clone()
    }

    /// Watches the routing layout.
    pub fn subscribe_layout(&self) -> watch::Receiver<Arc<ClusterLayout>> {
        self.layout.subscribe()
    }

    /// A hosted shard.
    pub fn shard(&self, id: u64) -> Option<Arc<Shard>> {
        self.shards.read().unwrap_or_else(|p| p.into_inner()).get(&id).cloned()
    }

    /// Whether this node hosts a replica of `id`.
    pub fn hosts(&self, id: u64) -> bool {
        self.shards.read().unwrap_or_else(|p| p.into_inner()).contains_key(&id)
    }

    /// Every hosted shard, the metadata group included, by id.
    pub fn shard_list(&self) -> Vec<Arc<Shard>> {
        self.shards
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect()
    }

    /// Stops every Raft group.
    pub async fn shutdown(&self) {
        for s in self.shard_list() {
            if let Err(e) = s.raft.shutdown().await {
                tracing::warn!(shard = s.id, error = %e, "raft shutdown");
            }
        }
    }

    pub fn epoch(&self) -> u64 {
        self.layout().epoch
    }

    /// The data shard owning `key`.
    pub fn shard_for_key(&self, key: &[u8]) -> Result<u64, ServerError> {
        self.layout()
            .shard_for_key(key)
            .ok_or_else(|| ServerError::Internal("ring does not cover a token".into()))
    }

    pub fn addr_of(&self, node_id: u64) -> Option<String> {
        self.layout().nodes.get(&node_id).cloned()
    }

    /// A best guess of the leader of a shard this node does not host.
    pub fn remote_hint(&self, shard_id: u64) -> ServerError {
        let first = self
            .layout()
            .shards
            .get(&shard_id)
            .and_then(|s| s.replicas.first().copied());
        match first {
            Some(n) => ServerError::NotLeader {
                node_id: self.id,
                shard_id,
                leader_id: Some(n),
                leader_addr: self.addr_of(n),
            },
            None => ServerError::UnknownShard {
                shard_id,
                node_id: self.id,
            },
        }
    }

    fn hosted(&self, shard_id: u64) -> Result<Arc<Shard>, ServerError> {
        match self.shard(shard_id) {
            Some(s) => Ok(s),
            None => Err(self.remote_hint(shard_id)),
        }
    }

    /// Waits (until `deadline`, at most `leader_wait_ms`) for the shard to
    /// have a leader; errors with NOT_LEADER when it is another node.
    pub async fn ensure_leader(&self, shard: &Shard, deadline: Instant) -> Result<(), ServerError> {
        let wait_until = deadline.min(Instant::now() + Duration::from_millis(self.cfg.raft.leader_wait_ms));
        let mut metrics = shard.raft.metrics();
        let leader = loop {
            let leader = metrics.borrow_and_update().current_leader;
            if let Some(l) = leader {
                break l;
            }
            let left = wait_until.saturating_duration_since(Instant::now());
            if left.is_zero() || tokio::time::timeout(left, metrics.changed()).await.is_err() {
                return Err(ServerError::ShardUnavailable {
                    shard_id: shard.id,
                    reason: "no leader elected yet".into(),
                });
            }
        };
        let handing_to = self
            .transfers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&shard.id)
            .copied();
        if let Some(to) = handing_to.filter(|_| leader == self.id) {
            // Leadership is being handed off: the new leader will serve.
            return Err(ServerError::NotLeader {
                node_id: self.id,
                shard_id: shard.id,
                leader_id: Some(to),
                leader_addr: self.addr_of(to),
            });
        }
        if leader == self.id {
            Ok(())
        } else {
            Err(ServerError::NotLeader {
                node_id: self.id,
                shard_id: shard.id,
                leader_id: Some(leader),
                leader_addr: self.addr_of(leader),
            })
        }
    }

    /// Proposes a command on the local leader of `shard_id` and returns its
    /// applied result.
    pub async fn write(
        &self,
        shard_id: u64,
        command: Command,
        session: Option<SessionId>,
        deadline: Instant,
    ) -> Result<RaftResponse, ServerError> {
        let shard = self.hosted(shard_id)?;
        if shard_id != META_SHARD_ID && !self.layout_confirmed.load(std::sync::atomic::Ordering::Acquire) {
            return Err(ServerError::ShardUnavailable {
                shard_id,
                reason: "the cluster layout is not yet confirmed by the metadata group".into(),
            });
        }
        self.ensure_leader(&shard, deadline).await?;
        let deadline_exceeded = || {
            ServerError::DeadlineExceeded(format!(
                "write to shard {shard_id} not committed before the deadline; outcome unknown, retry with the same client id and sequence"
            ))
        };
        let res = match mergeable(shard_id, session, command, self.cfg.sessions.merge_puts) {
            Ok(pairs) => self
                .propose_merged(&shard, pairs, session, deadline)
                .await?
                .ok_or_else(deadline_exceeded)?,
            Err(command) => {
                let req = RaftRequest {
                    command,
                    session,
                    timestamp_ms: now_ms(),
                };
                let left = deadline.saturating_duration_since(Instant::now());
                tokio::time::timeout(left, shard.raft.client_write(req))
                    .await
                    .map_err(|_| deadline_exceeded())?
            }
        };
        self.stats.inc(&self.stats.client_writes);
        if shard_id != META_SHARD_ID && res.is_ok() && failpoint::fire(failpoint::KV_ABORT_AFTER_WRITE) {
            tracing::error!(
                shard_id,
                "failpoint {}: aborting before the reply",
                failpoint::KV_ABORT_AFTER_WRITE
            );
            std::process::abort();
        }
        match res {
            Ok(r) => match r.data {
                RaftResponse::Rejected { reason } => Err(ServerError::WrongShard {
                    shard_id,
                    epoch: self.epoch(),
                })
                .inspect_err(|_| tracing::warn!(shard_id, %reason, "command rejected by state machine")),
                RaftResponse::StaleSequence { last_sequence } => Err(ServerError::StaleSequence {
                    sequence: session.map_or(0, |s| s.sequence),
                    last_sequence,
                }),
                other => Ok(other),
            },
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => Err(ServerError::NotLeader {
                node_id: self.id,
                shard_id,
                leader_id: f.leader_id,
                leader_addr: f.leader_node.map(|n| n.addr),
            }),
            Err(RaftError::APIError(ClientWriteError::ChangeMembershipError(e))) => {
                Err(ServerError::Internal(format!("unexpected membership error: {e}")))
            }
            Err(RaftError::Fatal(e)) => Err(ServerError::ShardUnavailable {
                shard_id,
                reason: e.to_string(),
            }),
        }
    }

    /// Queues puts to share the shard's next Raft entry with the others
    /// waiting (see `proposals`) and waits for that entry's outcome, this
    /// caller's part of it (`None`: the deadline passed first, outcome
    /// unknown). With every queue full the puts are proposed alone.
    async fn propose_merged(
        &self,
        shard: &Arc<Shard>,
        pairs: proposals::Pairs,
        session: Option<SessionId>,
        deadline: Instant,
    ) -> Result<proposals::Outcome, ServerError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let pending = proposals::Pending {
            pairs,
            session,
            deadline,
            reply: tx,
        };
        let pushed = self
            .proposals
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(shard.id, pending);
        let left = deadline.saturating_duration_since(Instant::now());
        match pushed {
            Ok(start) => {
                if start {
                    tokio::spawn(proposals::drain(
                        self.proposals.clone(),
                        shard.raft.clone(),
                        shard.id,
                        now_ms,
                        self.cfg.sessions.merge_puts,
                    ));
                }
                match tokio::time::timeout(left, rx).await {
                    Ok(Ok(outcome)) => Ok(outcome),
                    Err(_) => Ok(None),
                    Ok(Err(_)) => Err(ServerError::ShardUnavailable {
                        shard_id: shard.id,
                        reason: "the shard's proposal task stopped before the write's outcome was known".into(),
                    }),
                }
            }
            Err(alone) => {
                let req = RaftRequest {
                    command: proposals::command_of(alone.pairs),
                    session: alone.session,
                    timestamp_ms: now_ms(),
                };
                Ok(tokio::time::timeout(left, shard.raft.client_write(req)).await.ok())
            }
        }
    }

    /// Makes a read of `shard_id` safe at the requested consistency: for a
    /// linearizable read, confirms leadership with a (shared) quorum round
    /// and waits until the local state machine caught up. Read the replica
    /// through the returned [`ReadReplica`] only.
    pub async fn read_barrier(
        &self,
        shard_id: u64,
        consistency: ReadConsistency,
        deadline: Instant,
    ) -> Result<ReadReplica, ServerError> {
        let shard = self.hosted(shard_id)?;
        if consistency == ReadConsistency::Linearizable && !self.cfg.testing.unsafe_reads_without_read_index {
            self.ensure_leader(&shard, deadline).await?;
            if self.holds_read_lease(&shard) {
                self.stats.inc(&self.stats.lease_reads);
            } else {
                let left = deadline.saturating_duration_since(Instant::now());
                shard.reads.linearize(left).await.map_err(|reason| {
                    if Instant::now() >= deadline {
                        ServerError::DeadlineExceeded(reason)
                    } else {
                        ServerError::ShardUnavailable { shard_id, reason }
                    }
                })?;
            }
        }
        if shard_id != META_SHARD_ID && failpoint::fire(failpoint::KV_READ_WAITS_FOR_REMOVAL) {
            self.wait_for_removal(shard_id).await;
        }
        Ok(ReadReplica { shard })
    }

    /// Whether this node may serve a linearizable read of `shard` now from
    /// its leader lease (`raft::lease`), without a quorum round: it leads
    /// under a committed vote, has applied an entry of its own term (so
    /// every entry of earlier leaders, and with it every write they
    /// acknowledged), and a quorum acknowledged an append it sent within
    /// the read lease. Checked when the read starts, which is what
    /// linearizability needs: a write acknowledged before that instant came
    /// from this leader, no other one can exist yet.
    fn holds_read_lease(&self, shard: &Shard) -> bool {
        let cfg = self.cfg.raft.lease();
        if !cfg.enabled() {
            return false;
        }
        let m = shard.raft.metrics();
        let m = m.borrow();
        let vote = m.vote;
        let leading = m.state == openraft::ServerState::Leader
            && m.current_leader == Some(self.id)
            && vote.is_committed()
            && vote.leader_id().voted_for() == Some(self.id);
        let own_term_applied = m
            .last_applied
            .is_some_and(|a| a.leader_id.term == vote.leader_id().term && a.leader_id.node_id == self.id);
        if !leading || !own_term_applied {
            return false;
        }
        let joint = m.membership_config.membership().get_joint_config();
        shard
            .lease
            .valid_until(self.id, &vote, joint, &cfg, Instant::now())
            .is_ok()
    }

    /// Failpoint [`failpoint::KV_READ_WAITS_FOR_REMOVAL`]: holds a read that
    /// passed its barrier until this node has unregistered the shard and
    /// finished deleting it, or [`failpoint::KV_READ_WAITS_FOR_REMOVAL_MS_MAX`].
    async fn wait_for_removal(&self, shard_id: u64) {
        let until = Instant::now() + Duration::from_millis(failpoint::KV_READ_WAITS_FOR_REMOVAL_MS_MAX);
        tracing::warn!(shard = shard_id, "failpoint: a read waits for its replica's removal");
        while self.hosts(shard_id) && Instant::now() < until {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // Removal deletes the data under the reconcile lock.
        drop(self.reconcile_lock.lock().await);
    }

    /// Runs `read` on the local data of `replica`, then confirms the replica
    /// is still the one registered here. A replica that leaves the node is
    /// unregistered before its data is deleted (`reconcile_locked`), so a
    /// read that finished while it was still registered saw that data
    /// intact; otherwise (a removal raced the read after its barrier) the
    /// answer is discarded and the caller gets the hint of a non-hosted
    /// shard, as if the read had arrived a moment later.
    ///
    /// A read that overlapped a snapshot install of the replica (whose
    /// data is torn until it ends) is refused as SHARD_UNAVAILABLE: the
    /// client retries, on another replica or once the install is done.
    pub fn read_replica<T>(
        &self,
        replica: &ReadReplica,
        read: impl FnOnce() -> Result<T, ServerError>,
    ) -> Result<T, ServerError> {
        let installing = || {
            self.stats.inc(&self.stats.reads_during_install);
            ServerError::ShardUnavailable {
                shard_id: replica.shard.id,
                reason: format!("its replica on node {} is installing a snapshot", self.id),
            }
        };
        let ranges = &replica.shard.applied_ranges;
        let generation = ranges.read_generation().ok_or_else(installing)?;
        let out = read()?;
        if !ranges.unchanged_since(generation) {
            return Err(installing());
        }
        match self.shard(replica.shard.id) {
            Some(s) if Arc::ptr_eq(&s, &replica.shard) => Ok(out),
            _ => {
                self.stats.inc(&self.stats.reads_raced_removal);
                Err(self.remote_hint(replica.shard.id))
            }
        }
    }

    /// Reads a key from the local replica that passed a read barrier.
    ///
    /// The shard must own the key in its applied state: after the read
    /// barrier its applied index covers every split committed before the
    /// read, and the row of a key it split off is the new shard's (whose
    /// local replica may lag). A node whose layout has not caught up with
    /// the split answers WRONG_SHARD, and the client retries.
    pub fn read_local(&self, replica: &ReadReplica, key: &[u8]) -> Result<Option<Vec<u8>>, ServerError> {
        let token = crate::ring::token_of(key);
        let shard = &replica.shard;
        if shard.id != META_SHARD_ID && !shard.applied_ranges.contains(token) {
            return Err(ServerError::WrongShard {
                shard_id: shard.id,
                epoch: self.epoch(),
            });
        }
        let dk = keys::data_key(token, key);
        self.read_replica(replica, || Ok(self.db.get(Cf::Data, &dk)?))
    }

    /// Up to `limit` pairs of the replica's shard with `start <= key < end`
    /// (`end` empty = unbounded), in key order, from the local replica, and
    /// the token ranges the shard owned in the state they were read from.
    ///
    /// The ranges are read after the scan's RocksDB snapshot; a split
    /// publishes its smaller ranges before writing (`AppliedRanges`), so
    /// the snapshot holds every key of the ranges returned. The caller
    /// checks them against the ranges its layout gives the shard: a layout
    /// that lags a split would otherwise miss the split-off keys.
    pub fn scan_local(
        &self,
        replica: &ReadReplica,
        start: &[u8],
        end: &[u8],
        limit: usize,
    ) -> Result<(KvPairs, Vec<TokenRange>), ServerError> {
        self.read_replica(replica, || {
            let pairs = self.scan_unchecked(replica.shard.id, start, end, limit)?;
            Ok((pairs, replica.shard.applied_ranges.get()))
        })
    }

    fn scan_unchecked(&self, shard_id: u64, start: &[u8], end: &[u8], limit: usize) -> Result<KvPairs, ServerError> {
        let from = keys::index_key(shard_id, start);
        let upper = if end.is_empty() {
            keys::shard_prefix(shard_id + 1).to_vec()
        } else {
            keys::index_key(shard_id, end)
        };
        let mut opts = rocksdb::ReadOptions::default();
        opts.set_iterate_upper_bound(upper);
        // A snapshot keeps index and data consistent with each other.
        let snap = self.db.raw().snapshot();
        opts.set_snapshot(&snap);
        let it = self.db.raw().iterator_cf_opt(
            self.db.cf(Cf::KeyIndex),
            opts,
            rocksdb::IteratorMode::From(&from, rocksdb::Direction::Forward),
        );
        let mut out = Vec::new();
        for item in it {
            if out.len() >= limit {
                break;
            }
            let (k, _) = item.map_err(|e| ServerError::Storage(e.into_string()))?;
            let key = &k[8..];
            let dk = keys::data_key(crate::ring::token_of(key), key);
            let v = snap
                .get_cf(self.db.cf(Cf::Data), &dk)
                .map_err(|e| ServerError::Storage(e.into_string()))?;
            match v {
                Some(v) => out.push((key.to_vec(), v)),
                None => {
                    return Err(ServerError::Storage(format!(
                        "key index of shard {shard_id} names a key without data"
                    )))
                }
            }
        }
        Ok(out)
    }
}

/// The `ShardInfo` a hosted group is opened with; the metadata group has
/// no token ranges.
fn group_info(layout: &ClusterLayout, shard_id: u64) -> ShardInfo {
    match layout.shards.get(&shard_id) {
        Some(s) => s.clone(),
        None => ShardInfo {
            id: META_SHARD_ID,
            replicas: layout.meta_replicas.clone(),
            ranges: vec![],
            learners: vec![],
        },
    }
}

/// Initializes a fresh group with its bootstrap members after `delay_ms`,
/// unless it has heard of a membership by then.
async fn initialize_group(raft: Raft, shard: u64, members: BTreeMap<u64, BasicNode>, delay_ms: u64) {
    if delay_ms > 0 {
        let heard = raft
            .wait(Some(Duration::from_millis(delay_ms)))
            .metrics(
                |m| m.membership_config.membership().voter_ids().next().is_some(),
                "membership known",
            )
            .await;
        if heard.is_ok() {
            return;
        }
    }
    match raft.initialize(members).await {
        Ok(()) => tracing::info!(shard, "initialized shard group"),
        // Already initialized: restarted before the bootstrap record was
        // written, or another replica's log reached us first.
        Err(RaftError::APIError(InitializeError::NotAllowed(_))) => {}
        Err(e) => tracing::error!(shard, error = %e, "cannot initialize shard group"),
    }
}

/// Has the first replica of a seeded data shard stand for election at once.
async fn elect_first_leader(raft: Raft, shard: u64) {
    if let Err(e) = raft.trigger().elect().await {
        tracing::error!(shard, error = %e, "cannot start the first election");
    }
}

/// Lets a seeded replica that is not its shard's first stand for election
/// again once it has heard of a leader, or after `hold_ms` (the first
/// replica may be down).
async fn hold_elections_until_a_leader(raft: Raft, hold_ms: u64) {
    let _ = raft
        .wait(Some(Duration::from_millis(hold_ms)))
        .metrics(|m| m.current_leader.is_some(), "a leader known")
        .await;
    raft.runtime_config().elect(true);
}

/// Most bytes of pairs in one export chunk.
pub const EXPORT_CHUNK_BYTES_MAX: usize = 1024 * 1024;

/// Streams every pair of `shard_id` on this replica, in key order, from one
/// RocksDB snapshot, as chunks of at most [`EXPORT_CHUNK_BYTES_MAX`] bytes
/// (or one pair, if larger). Blocking: run it on a blocking thread. Stops
/// early, without error, when the receiver is gone. `taken` runs once the
/// RocksDB snapshot exists and fails the export if the replica is gone by
/// then (see [`Node::read_replica`]).
pub fn export_local(
    db: &Db,
    shard_id: u64,
    taken: impl FnOnce() -> Result<(), ServerError>,
    mut send: impl FnMut(Vec<(Vec<u8>, Vec<u8>)>) -> bool,
) -> Result<(), ServerError> {
    let upper = keys::shard_prefix(shard_id + 1).to_vec();
    let from = keys::shard_prefix(shard_id);
    let snap = db.raw().snapshot();
    taken()?;
    let mut opts = rocksdb::ReadOptions::default();
    opts.set_iterate_upper_bound(upper);
    opts.set_snapshot(&snap);
    let it = db.raw().iterator_cf_opt(
        db.cf(Cf::KeyIndex),
        opts,
        rocksdb::IteratorMode::From(&from, rocksdb::Direction::Forward),
    );
    let mut chunk = Vec::new();
    let mut bytes = 0usize;
    for item in it {
        let (k, _) = item.map_err(|e| ServerError::Storage(e.into_string()))?;
        let key = &k[8..];
        let dk = keys::data_key(crate::ring::token_of(key), key);
        let v = snap
            .get_cf(db.cf(Cf::Data), &dk)
            .map_err(|e| ServerError::Storage(e.into_string()))?
            .ok_or_else(|| ServerError::Storage(format!("key index of shard {shard_id} names a key without data")))?;
        if bytes > 0 && bytes + key.len() + v.len() > EXPORT_CHUNK_BYTES_MAX {
            if !send(std::mem::take(&mut chunk)) {
                return Ok(());
            }
            bytes = 0;
        }
        bytes += key.len() + v.len();
        chunk.push((key.to_vec(), v));
    }
    send(chunk);
    Ok(())
}

/// Installs the bootstrap layout into the metadata group once, from its leader.
async fn install_layout(node: Arc<Node>) {
    let Some(mut installed) = node.meta_layout.clone() else {
        return;
    };
    loop {
        if installed.borrow_and_update().is_some() {
            return;
        }
        let deadline = Instant::now() + Duration::from_millis(node.cfg.raft.leader_wait_ms);
        let cmd = Command::InitCluster((*node.layout()).clone());
        match node.write(META_SHARD_ID, cmd, None, deadline).await {
            Ok(_) => {
                tracing::info!(
                    epoch = node.layout().epoch,
                    "cluster layout installed in the metadata group"
                );
                return;
            }
            Err(ServerError::NotLeader { .. }) | Err(ServerError::ShardUnavailable { .. }) => {}
            Err(e) => tracing::warn!(error = %e, "installing cluster layout"),
        }
        if let Ok(Err(_)) = tokio::time::timeout(Duration::from_millis(META_INIT_RETRY_MS), installed.changed()).await {
            return; // the metadata group shut down
        }
    }
}

/// Waits for the metadata group's layout and compares it with this node's:
/// equal (or newer with the same nodes, metadata members and ring), writes
/// open; different, the node was started with other
/// `initial_cluster`/`shards` than the cluster and exits before it can
/// apply a write with the wrong shard ranges.
async fn confirm_layout(node: Arc<Node>) {
    let Some(mut installed) = node.meta_layout.clone() else {
        return;
    };
    let committed = match installed.wait_for(|l| l.is_some()).await {
        Ok(l) => l.clone(),
        Err(_) => return, // shutting down
    };
    let Some(committed) = committed else { return };
    let local = node.layout();
    // The cluster may have moved on before this node looked (another node
    // recorded its zone, the planner started a move): then what the
    // bootstrap flags decide must still agree.
    let same_bootstrap = committed.nodes == local.nodes
        && committed.meta_replicas == local.meta_replicas
        && committed.ring == local.ring;
    if committed == *local || (committed.epoch > local.epoch && same_bootstrap) {
        node.layout_confirmed.store(true, std::sync::atomic::Ordering::Release);
        tracing::info!(epoch = committed.epoch, "cluster layout confirmed");
        return;
    }
    tracing::error!(
        local_shards = local.shards.len(),
        cluster_shards = committed.shards.len(),
        local_nodes = ?local.nodes,
        cluster_nodes = ?committed.nodes,
        "this node was bootstrapped with a different initial_cluster or shard count than the cluster; \
         refusing to serve: wipe its data dir and start it with the cluster's flags"
    );
    std::process::exit(2);
}

/// Largest admin token file accepted.
const ADMIN_TOKEN_BYTES_MAX: u64 = 4096;
/// Shortest admin token accepted.
const ADMIN_TOKEN_CHARS_MIN: usize = 16;

/// Reads the Admin bearer token (trimmed), if a file is configured.
fn read_admin_token(path: &std::path::Path) -> Result<Option<String>, NodeError> {
    if path.as_os_str().is_empty() {
        return Ok(None);
    }
    let shown = path.display();
    let meta = std::fs::metadata(path).map_err(|e| NodeError::AdminToken(format!("{shown}: {e}")))?;
    if meta.len() > ADMIN_TOKEN_BYTES_MAX {
        return Err(NodeError::AdminToken(format!(
            "{shown} is larger than {ADMIN_TOKEN_BYTES_MAX} bytes"
        )));
    }
    let token = std::fs::read_to_string(path).map_err(|e| NodeError::AdminToken(format!("{shown}: {e}")))?;
    let token = token.trim().to_string();
    if token.len() < ADMIN_TOKEN_CHARS_MIN || token.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(NodeError::AdminToken(format!(
            "{shown}: the token must be at least {ADMIN_TOKEN_CHARS_MIN} characters without spaces"
        )));
    }
    Ok(Some(token))
}

/// The pairs of a put that may share a Raft entry with others: a `Put` or
/// `BatchPut` to a data shard, without a session or, when `sessions` (the
/// `sessions.merge_puts` setting), with one. Anything else is handed back.
fn mergeable(
    shard_id: u64,
    session: Option<SessionId>,
    command: Command,
    sessions: bool,
) -> Result<proposals::Pairs, Command> {
    if (session.is_some() && !sessions) || shard_id == META_SHARD_ID {
        return Err(command);
    }
    match command {
        Command::Put { key, value } => Ok(vec![(key, value)]),
        Command::BatchPut { pairs } => Ok(pairs),
        other => Err(other),
    }
}

/// Wall-clock milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
