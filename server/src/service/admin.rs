//! `ringkv.v1.Admin`: cluster layout with live leader information, node
//! counters, and an on-demand snapshot + log purge of a shard.
//!
//! Read-only except `TriggerSnapshot`; never touches user data.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

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

fn ranges(rs: &[RingRange]) -> Vec<TokenRange> {
    rs.iter()
        .map(|r| TokenRange {
            start: r.start,
            end: r.end.unwrap_or(0),
            end_is_max: r.end.is_none(),
        })
        .collect()
}

impl AdminService {
    fn shard_status(&self, id: u64, replicas: &[u64], rs: &[RingRange]) -> ShardStatus {
        let mut st = ShardStatus {
            id,
            replicas: replicas.to_vec(),
            ranges: ranges(rs),
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
        node.read_barrier(id, crate::node::ReadConsistency::Linearizable, deadline)
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
            let res = crate::node::export_local(&node.db, id, |pairs| {
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
}
