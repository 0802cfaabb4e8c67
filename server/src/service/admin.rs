//! `ringkv.v1.Admin`: cluster layout with live leader information, node
//! counters, an on-demand snapshot + log purge of a shard, shard exports,
//! and the placement calls (nodes, shards, moves, decommission).
//!
//! Placement calls run on the metadata leader: any other node forwards them
//! there, with the caller's credentials, at most
//! `META_FORWARD_HOPS_MAX` hops. Never touches user data.

use std::future::Future;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use ringkv_proto::v1::admin_client::AdminClient;
use tonic::transport::Channel;

use ringkv_proto::v1::admin_server::Admin;
use ringkv_proto::v1::*;
use tonic::Request;
use tonic::Response;
use tonic::Status;

use crate::error::ServerError;
use crate::node::stats::resident_memory_bytes;
use crate::node::stats::NodeStats;
use crate::node::Node;
use crate::ring::TokenRange as RingRange;
use crate::ring::META_SHARD_ID;

/// Longest `TriggerSnapshot` waits for the snapshot to be built.
pub const TRIGGER_SNAPSHOT_TIMEOUT_MS: u64 = 60_000;
/// Metadata key counting how often a placement call was forwarded.
const ADMIN_HOPS_METADATA_KEY: &str = "ringkv-admin-hops";
/// Longest SplitShard waits for the split to reach the layout.
const SPLIT_WAIT_MS: u64 = 25_000;
/// Deadline of a forwarded placement call.
const ADMIN_FORWARD_TIMEOUT_MS: u64 = 30_000;

/// Checks the `authorization: Bearer <token>` metadata of an Admin call
/// when a token is configured. Compares in constant time.
#[allow(clippy::result_large_err)] // the interceptor signature is tonic's
pub fn authorize(token: Option<&str>, epoch: u64, req: Request<()>) -> Result<Request<()>, Status> {
    let Some(token) = token else { return Ok(req) };
    let sent = req
        .metadata()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    let (a, b) = (sent.as_bytes(), token.as_bytes());
    let same = a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0;
    if same {
        Ok(req)
    } else {
        Err(ServerError::Unauthenticated(
            "ringkv.v1.Admin needs the metadata 'authorization: Bearer <token>' with the configured admin token".into(),
        )
        .to_status(epoch))
    }
}

pub struct AdminService {
    pub node: Arc<Node>,
}

impl AdminService {
    fn shard_status(&self, id: u64, replicas: &[u64], rs: &[RingRange]) -> ShardStatus {
        let mut st = ShardStatus {
            id,
            replicas: replicas.to_vec(),
            ranges: super::proto_ranges(rs),
            ..ShardStatus::default()
        };
        if let Some(s) = self.node.shard(id) {
            let m = s.raft.metrics().borrow().clone();
            st.hosted_here = true;
            st.leader_id = m.current_leader.unwrap_or(0);
            st.term = m.current_term;
            st.last_applied_index = m.last_applied.map_or(0, |l| l.index);
        }
        st
    }
}

impl AdminService {
    /// Runs `local` when this node leads the metadata group, else forwards
    /// the call (`remote`) towards the leader.
    async fn on_meta_leader<Req, Resp, L, LF, R, RF>(
        &self,
        req: Request<Req>,
        local: L,
        remote: R,
    ) -> Result<Response<Resp>, Status>
    where
        Req: Clone,
        L: FnOnce(Arc<Node>, Req) -> LF,
        LF: Future<Output = Result<Resp, ServerError>>,
        R: Fn(AdminClient<Channel>, Request<Req>) -> RF,
        RF: Future<Output = Result<Response<Resp>, Status>>,
    {
        let node = self.node.clone();
        let epoch = node.epoch();
        if node.is_meta_leader() {
            return local(node, req.into_inner())
                .await
                .map(Response::new)
                .map_err(|e| e.to_status(epoch));
        }
        let hops: u32 = req
            .metadata()
            .get(ADMIN_HOPS_METADATA_KEY)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let unavailable = |reason: String| {
            ServerError::ShardUnavailable {
                shard_id: META_SHARD_ID,
                reason,
            }
            .to_status(epoch)
        };
        if hops >= crate::node::membership::META_FORWARD_HOPS_MAX {
            return Err(unavailable(
                "the metadata leader could not be reached (too many hops)".into(),
            ));
        }
        let layout = node.layout();
        let targets: Vec<u64> = match node.meta_leader() {
            Some(l) => vec![l],
            None if node.hosts(META_SHARD_ID) => {
                return Err(unavailable("the metadata group has no leader right now; retry".into()))
            }
            // Not a member: ask the members in turn; each knows its leader.
            None => layout.meta_replicas.iter().copied().filter(|m| *m != node.id).collect(),
        };
        let (mut meta, _, inner) = req.into_parts();
        meta.insert(
            ADMIN_HOPS_METADATA_KEY,
            (hops + 1)
                .to_string()
                .parse()
                .map_err(|_| unavailable("bad hop count".into()))?,
        );
        meta.remove("grpc-timeout");
        let mut last = unavailable("no metadata member known".into());
        for target in targets {
            let Some(addr) = layout.nodes.get(&target).cloned() else {
                continue;
            };
            let peer = node.pool.peer(target, &addr).map_err(unavailable)?;
            let mut r = Request::from_parts(meta.clone(), Default::default(), inner.clone());
            r.set_timeout(Duration::from_millis(ADMIN_FORWARD_TIMEOUT_MS));
            match remote(AdminClient::new(peer.channel.clone()), r).await {
                // A typed answer (success or error) is the leader's word.
                Ok(resp) => return Ok(resp),
                Err(status) if ServerError::from_status(&status).is_some() => return Err(status),
                Err(status) => {
                    last = unavailable(format!("metadata member {target} at {addr}: {}", status.message()));
                }
            }
        }
        Err(last)
    }
}

fn op_to_proto(node: &Node, op: &crate::ring::MoveOp) -> Operation {
    let progress = node
        .placement
        .progress
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .get(&op.id)
        .cloned();
    let (step, behind) = progress.unwrap_or_else(|| ("unknown".into(), -1));
    Operation {
        id: op.id,
        shard_id: op.shard,
        from_node: op.from,
        to_node: op.to,
        reason: op.reason.clone(),
        step,
        entries_behind: behind,
        age_ms: crate::node::now_ms().saturating_sub(op.created_ms),
        cancelled: op.cancelled,
    }
}

/// Chunks an export may run ahead of the caller.
const EXPORT_QUEUE_CHUNKS: usize = 4;

#[tonic::async_trait]
impl Admin for AdminService {
    type ExportShardStream = std::pin::Pin<Box<dyn futures::Stream<Item = Result<ExportShardChunk, Status>> + Send>>;

    async fn export_shard(
        &self,
        request: Request<ExportShardRequest>,
    ) -> Result<Response<Self::ExportShardStream>, Status> {
        let id = request.into_inner().shard_id;
        let node = self.node.clone();
        let epoch = node.epoch();
        if !node.layout().shards.contains_key(&id) {
            return Err(ServerError::WrongShard { shard_id: id, epoch }.to_status(epoch));
        }
        let deadline = std::time::Instant::now() + Duration::from_millis(node.cfg.raft.leader_wait_ms);
        let replica = node
            .read_barrier(id, crate::node::ReadConsistency::Linearizable, deadline)
            .await
            .map_err(|e| e.to_status(epoch))?;
        let applied_index = node
            .shard(id)
            .and_then(|s| s.raft.metrics().borrow().last_applied)
            .map_or(0, |l| l.index);
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<ExportShardChunk, Status>>(EXPORT_QUEUE_CHUNKS);
        tokio::task::spawn_blocking(move || {
            let chunk = |pairs: Vec<(Vec<u8>, Vec<u8>)>, last: bool| {
                let pairs: Vec<KeyValue> = pairs.into_iter().map(|(key, value)| KeyValue { key, value }).collect();
                ExportShardChunk {
                    shard_id: id,
                    applied_index,
                    crc32: ringkv_proto::export_chunk_crc(&pairs),
                    pairs,
                    last,
                }
            };
            let mut pending: Option<Vec<(Vec<u8>, Vec<u8>)>> = None;
            // Hold one chunk back so the final one can be marked `last`.
            let taken = || node.read_replica(&replica, || Ok(()));
            let res = crate::node::export_local(&node.db, id, taken, |pairs| {
                let prev = pending.replace(pairs);
                prev.is_none_or(|p| tx.blocking_send(Ok(chunk(p, false))).is_ok())
            });
            let end = match res {
                Ok(()) => Ok(chunk(pending.unwrap_or_default(), true)),
                Err(e) => Err(e.to_status(epoch)),
            };
            let _ = tx.blocking_send(end);
        });
        Ok(Response::new(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))))
    }

    async fn cluster_status(
        &self,
        _request: Request<ClusterStatusRequest>,
    ) -> Result<Response<ClusterStatusResponse>, Status> {
        let l = self.node.layout();
        let shards = l
            .shards
            .values()
            .map(|s| self.shard_status(s.id, &s.replicas, &s.ranges))
            .collect();
        Ok(Response::new(ClusterStatusResponse {
            epoch: l.epoch,
            served_by: self.node.id,
            nodes: l
                .nodes
                .iter()
                .map(|(id, addr)| NodeInfo {
                    id: *id,
                    addr: addr.clone(),
                })
                .collect(),
            shards,
            metadata: Some(self.shard_status(META_SHARD_ID, &l.meta_replicas, &[])),
        }))
    }

    async fn node_stats(&self, _request: Request<NodeStatsRequest>) -> Result<Response<NodeStatsResponse>, Status> {
        let n = &self.node;
        let hosted = n.shard_list();
        let leading = hosted
            .iter()
            .filter(|s| s.id != META_SHARD_ID && s.raft.metrics().borrow().current_leader == Some(n.id))
            .count();
        let (rounds, reads) = hosted.iter().fold((0, 0), |(a, b), s| {
            (
                a + s.reads.rounds.load(Ordering::Relaxed),
                b + s.reads.reads.load(Ordering::Relaxed),
            )
        });
        let net = &n.pool.stats;
        Ok(Response::new(NodeStatsResponse {
            node_id: n.id,
            resident_memory_bytes: resident_memory_bytes(),
            shards_hosted: hosted.iter().filter(|s| s.id != META_SHARD_ID).count() as u64,
            shards_leading: leading as u64,
            log_write_requests: n.gc.stats.requests.load(Ordering::Relaxed),
            wal_syncs: n.gc.stats.syncs.load(Ordering::Relaxed),
            client_writes: NodeStats::get(&n.stats.client_writes),
            snapshots_built: n.sm_stats.snapshots_built.load(Ordering::Relaxed),
            snapshots_installed: n.sm_stats.snapshots_installed.load(Ordering::Relaxed),
            snapshot_chunks_sent: net.snapshot_chunks_sent.load(Ordering::Relaxed),
            snapshot_chunks_rejected: NodeStats::get(&n.stats.snapshot_chunks_rejected),
            read_index_rounds: rounds,
            linearizable_reads: reads,
            forwarded_requests: NodeStats::get(&n.stats.forwarded_requests),
            raft_batches_sent: net.batches_sent.load(Ordering::Relaxed),
            raft_messages_sent: net.messages_sent.load(Ordering::Relaxed),
            lease_reads: NodeStats::get(&n.stats.lease_reads),
        }))
    }

    async fn trigger_snapshot(
        &self,
        request: Request<TriggerSnapshotRequest>,
    ) -> Result<Response<TriggerSnapshotResponse>, Status> {
        let id = request.into_inner().shard_id;
        let epoch = self.node.epoch();
        let Some(shard) = self.node.shard(id) else {
            return Err(ServerError::UnknownShard {
                shard_id: id,
                node_id: self.node.id,
            }
            .to_status(epoch));
        };
        let unavailable = |reason: String| ServerError::ShardUnavailable { shard_id: id, reason }.to_status(epoch);
        let applied = shard.raft.metrics().borrow().last_applied;
        let Some(applied) = applied else {
            return Err(unavailable("nothing applied yet".into()));
        };
        shard
            .raft
            .trigger()
            .snapshot()
            .await
            .map_err(|e| unavailable(e.to_string()))?;
        let timeout = Duration::from_millis(TRIGGER_SNAPSHOT_TIMEOUT_MS);
        let m = shard
            .raft
            .wait(Some(timeout))
            .metrics(
                |m| m.snapshot.is_some_and(|s| s.index >= applied.index),
                "snapshot built",
            )
            .await
            .map_err(|e| unavailable(format!("snapshot not built: {e}")))?;
        let snap = m.snapshot.map_or(0, |s| s.index);
        shard
            .raft
            .trigger()
            .purge_log(snap)
            .await
            .map_err(|e| unavailable(e.to_string()))?;
        let purged = shard
            .raft
            .wait(Some(timeout))
            .metrics(|m| m.purged.is_some_and(|p| p.index >= snap), "log purged")
            .await
            .map(|m| m.purged.map_or(0, |p| p.index))
            .unwrap_or(0);
        Ok(Response::new(TriggerSnapshotResponse {
            snapshot_index: snap,
            purged_upto: purged,
        }))
    }

    async fn list_nodes(&self, request: Request<ListNodesRequest>) -> Result<Response<ListNodesResponse>, Status> {
        self.on_meta_leader(
            request,
            |node, _| async move {
                let l = node.committed_layout().await?;
                let p = &node.cfg.placement;
                let (up, _) =
                    node.placement
                        .liveness
                        .classify(l.nodes.keys().copied(), p.node_alive_ms, p.node_down_replace_ms);
                let leaders = node
                    .placement
                    .leaders_seen
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .clone();
                let nodes = l
                    .nodes
                    .iter()
                    .map(|(id, addr)| NodeStatus {
                        id: *id,
                        addr: addr.clone(),
                        up: up.contains(id),
                        last_seen_ms_ago: node
                            .placement
                            .liveness
                            .silent_for(*id)
                            .map_or(0, |d| d.as_millis() as u64),
                        draining: l.draining.contains(id),
                        metadata_member: l.meta_replicas.contains(id),
                        replicas: l.shards_on(*id).count() as u64,
                        leaders: leaders.get(id).map_or(0, |s| s.len() as u64),
                        zone: l.zone_of(*id).unwrap_or("").to_string(),
                    })
                    .collect();
                Ok(ListNodesResponse {
                    epoch: l.epoch,
                    nodes,
                    rebalance_enabled: l.rebalance_enabled,
                })
            },
            |mut c, r| async move { c.list_nodes(r).await },
        )
        .await
    }

    async fn list_shards(&self, request: Request<ListShardsRequest>) -> Result<Response<ListShardsResponse>, Status> {
        self.on_meta_leader(
            request,
            |node, _| async move {
                let l = node.committed_layout().await?;
                let shards = l
                    .shards
                    .values()
                    .map(|s| ShardPlacement {
                        id: s.id,
                        replicas: s.replicas.clone(),
                        learners: s.learners.clone(),
                        ranges: super::proto_ranges(&s.ranges),
                        leader_id: node.placement.leader_of(s.id).unwrap_or(0),
                        approximate_bytes: if node.hosts(s.id) {
                            node.approximate_bytes(&s.ranges)
                        } else {
                            0
                        },
                        operation_id: l.op_of(s.id).map_or(0, |o| o.id),
                    })
                    .collect();
                Ok(ListShardsResponse { epoch: l.epoch, shards })
            },
            |mut c, r| async move { c.list_shards(r).await },
        )
        .await
    }

    async fn add_node(&self, request: Request<AddNodeRequest>) -> Result<Response<AddNodeResponse>, Status> {
        self.on_meta_leader(
            request,
            |node, req| async move {
                if req.node_id == 0 || req.node_id == crate::storage::keys::NODE_RECORDS {
                    return Err(ServerError::InvalidArgument(format!(
                        "node id {} is reserved",
                        req.node_id
                    )));
                }
                if let Err(e) = crate::config::check_zone(&req.zone) {
                    return Err(ServerError::InvalidArgument(e));
                }
                if req.addr.parse::<std::net::SocketAddr>().is_err() {
                    return Err(ServerError::InvalidArgument(format!(
                        "address {:?} is not ip:port",
                        req.addr
                    )));
                }
                let before = node.committed_layout().await?.epoch;
                let l = node
                    .change_layout(|l| crate::placement::add_node(l, req.node_id, &req.addr, &req.zone))
                    .await?;
                tracing::info!(node = req.node_id, addr = %req.addr, epoch = l.epoch, "node added to the layout");
                Ok(AddNodeResponse {
                    epoch: l.epoch,
                    added: l.epoch > before,
                })
            },
            |mut c, r| async move { c.add_node(r).await },
        )
        .await
    }

    async fn remove_node(&self, request: Request<RemoveNodeRequest>) -> Result<Response<RemoveNodeResponse>, Status> {
        self.on_meta_leader(
            request,
            |node, req| async move {
                let l = node
                    .change_layout(|l| crate::placement::drain_node(l, req.node_id))
                    .await?;
                tracing::info!(node = req.node_id, epoch = l.epoch, "decommissioning node");
                Ok(RemoveNodeResponse { epoch: l.epoch })
            },
            |mut c, r| async move { c.remove_node(r).await },
        )
        .await
    }

    async fn move_replica(
        &self,
        request: Request<MoveReplicaRequest>,
    ) -> Result<Response<MoveReplicaResponse>, Status> {
        self.on_meta_leader(
            request,
            |node, req| async move {
                let now = crate::node::now_ms();
                let l = node
                    .change_layout(|l| {
                        crate::placement::check_zones_of_move(l, req.shard_id, req.from_node, req.to_node)?;
                        crate::placement::start_move(l, req.shard_id, req.from_node, req.to_node, "operator", now)
                            .map(Some)
                    })
                    .await?;
                let op = l
                    .op_of(req.shard_id)
                    .map(|o| o.id)
                    .ok_or_else(|| ServerError::Internal("the recorded move is missing".into()))?;
                tracing::info!(
                    op,
                    shard = req.shard_id,
                    from = req.from_node,
                    to = req.to_node,
                    "move recorded"
                );
                Ok(MoveReplicaResponse {
                    epoch: l.epoch,
                    operation_id: op,
                })
            },
            |mut c, r| async move { c.move_replica(r).await },
        )
        .await
    }

    async fn cancel_operation(
        &self,
        request: Request<CancelOperationRequest>,
    ) -> Result<Response<CancelOperationResponse>, Status> {
        self.on_meta_leader(
            request,
            |node, req| async move {
                let l = node
                    .change_layout(|l| match l.ops.get(&req.operation_id) {
                        Some(o) if o.cancelled => Ok(None),
                        _ => crate::placement::cancel_move(l, req.operation_id).map(Some),
                    })
                    .await?;
                Ok(CancelOperationResponse { epoch: l.epoch })
            },
            |mut c, r| async move { c.cancel_operation(r).await },
        )
        .await
    }

    async fn set_rebalance(
        &self,
        request: Request<SetRebalanceRequest>,
    ) -> Result<Response<SetRebalanceResponse>, Status> {
        self.on_meta_leader(
            request,
            |node, req| async move {
                let l = node
                    .change_layout(|l| crate::placement::set_rebalance(l, req.enabled))
                    .await?;
                Ok(SetRebalanceResponse {
                    epoch: l.epoch,
                    enabled: l.rebalance_enabled,
                })
            },
            |mut c, r| async move { c.set_rebalance(r).await },
        )
        .await
    }

    async fn list_operations(
        &self,
        request: Request<ListOperationsRequest>,
    ) -> Result<Response<ListOperationsResponse>, Status> {
        self.on_meta_leader(
            request,
            |node, _| async move {
                let l = node.committed_layout().await?;
                Ok(ListOperationsResponse {
                    epoch: l.epoch,
                    operations: l.ops.values().map(|o| op_to_proto(&node, o)).collect(),
                })
            },
            |mut c, r| async move { c.list_operations(r).await },
        )
        .await
    }

    async fn transfer_leader(
        &self,
        request: Request<TransferLeaderRequest>,
    ) -> Result<Response<TransferLeaderResponse>, Status> {
        self.on_meta_leader(
            request,
            |node, req| async move {
                let layout = node.committed_layout().await?;
                let shard = layout
                    .shards
                    .get(&req.shard_id)
                    .ok_or(crate::placement::PlacementError::UnknownShard(req.shard_id))?;
                if !shard.replicas.contains(&req.to_node) {
                    return Err(crate::placement::PlacementError::NotAReplica {
                        shard: req.shard_id,
                        node: req.to_node,
                    }
                    .into());
                }
                let call = ShardMembershipRequest {
                    shard_id: req.shard_id,
                    action: MembershipAction::TransferLeader as i32,
                    nodes: vec![req.to_node],
                    addr: String::new(),
                    split_token: 0,
                };
                let r = crate::placement::driver::call_leader(&node, &layout, call).await?;
                Ok(TransferLeaderResponse { leader_id: r.leader })
            },
            |mut c, r| async move { c.transfer_leader(r).await },
        )
        .await
    }

    async fn split_shard(&self, request: Request<SplitShardRequest>) -> Result<Response<SplitShardResponse>, Status> {
        self.on_meta_leader(
            request,
            |node, req| async move {
                let at = (req.split_token != 0).then_some(req.split_token);
                let now = crate::node::now_ms();
                let l = node
                    .change_layout(|l| crate::placement::start_split(l, req.shard_id, at, "operator", now).map(Some))
                    .await?;
                let sp = l
                    .splits
                    .get(&req.shard_id)
                    .cloned()
                    .ok_or_else(|| ServerError::Internal("the recorded split is missing".into()))?;
                tracing::info!(shard = sp.shard, new_shard = sp.new_shard, at = sp.at, "split recorded");
                // The driver carries it out; answer once it is in the layout.
                let mut rx = node.subscribe_layout();
                let done = tokio::time::timeout(
                    Duration::from_millis(SPLIT_WAIT_MS),
                    rx.wait_for(|l| l.shards.contains_key(&sp.new_shard)),
                )
                .await;
                match done {
                    Ok(Ok(l)) => Ok(SplitShardResponse {
                        epoch: l.epoch,
                        new_shard_id: sp.new_shard,
                        split_token: sp.at,
                    }),
                    _ => Err(ServerError::DeadlineExceeded(format!(
                        "split of shard {} into {} recorded but not finished within {SPLIT_WAIT_MS} ms; \
                         it continues in the background (see ListShards)",
                        sp.shard, sp.new_shard
                    ))),
                }
            },
            |mut c, r| async move { c.split_shard(r).await },
        )
        .await
    }
}
