//! Server side of the Raft transport: unpacks a peer's batch, hands each
//! message to its shard's openraft instance, and answers per message.
//!
//! Malformed payloads, unknown shards and bad snapshot chunks become
//! per-message errors; nothing a peer sends can panic the node.

use std::sync::Arc;

use openraft::error::InstallSnapshotError;
use openraft::error::RaftError;
use openraft::raft::AppendEntriesRequest;
use openraft::raft::InstallSnapshotRequest;
use openraft::raft::VoteRequest;
use openraft::raft::VoteResponse;
use ringkv_proto::v1::raft_transport_server::RaftTransport;
use ringkv_proto::v1::ErrorCode;
use ringkv_proto::v1::ErrorDetail;
use ringkv_proto::v1::FetchLayoutRequest;
use ringkv_proto::v1::FetchLayoutResponse;
use ringkv_proto::v1::RaftBatchRequest;
use ringkv_proto::v1::RaftBatchResponse;
use ringkv_proto::v1::RaftMessage;
use ringkv_proto::v1::RaftReply;
use ringkv_proto::v1::RaftRpcKind;
use ringkv_proto::v1::ShardMembershipRequest;
use ringkv_proto::v1::ShardMembershipResponse;
use ringkv_proto::v1::SnapshotChunk;
use ringkv_proto::v1::SnapshotChunkResponse;
use tonic::Request;
use tonic::Response;
use tonic::Status;

use crate::node::Node;
use crate::raft::network::RAFT_BATCH_MESSAGES_MAX;
use crate::raft::types::decode;
use crate::raft::types::encode;
use crate::raft::types::TypeConfig;

pub struct TransportService {
    pub node: Arc<Node>,
}

fn detail(code: ErrorCode, message: String) -> ErrorDetail {
    ErrorDetail {
        code: code as i32,
        message,
        ..ErrorDetail::default()
    }
}

fn error_reply(code: ErrorCode, message: String) -> RaftReply {
    RaftReply {
        payload: vec![],
        error: Some(detail(code, message)),
    }
}

impl TransportService {
    fn check_addressed(&self, to_node: u64) -> Result<(), Status> {
        if to_node != self.node.id {
            return Err(Status::failed_precondition(format!(
                "message for node {to_node} reached node {}",
                self.node.id
            )));
        }
        Ok(())
    }

    async fn handle(&self, m: RaftMessage) -> RaftReply {
        let Some(shard) = self.node.shard(m.shard_id) else {
            return error_reply(
                ErrorCode::UnknownShard,
                format!("shard {} is not hosted on node {}", m.shard_id, self.node.id),
            );
        };
        let bad = |e: bincode::Error| error_reply(ErrorCode::InvalidArgument, format!("undecodable payload: {e}"));
        let payload = match RaftRpcKind::try_from(m.kind) {
            Ok(RaftRpcKind::AppendEntries) => match decode::<AppendEntriesRequest<TypeConfig>>(&m.payload) {
                Ok(req) => {
                    // Before openraft sees it: a leader that follows
                    // another one from here on must not serve from its lease.
                    shard.lease.saw_vote(&req.vote);
                    encode(&shard.raft.append_entries(req).await)
                }
                Err(e) => return bad(e),
            },
            Ok(RaftRpcKind::Vote) => match decode::<VoteRequest<u64>>(&m.payload) {
                Ok(req) => {
                    // Before openraft may grant it (see `raft::lease`).
                    shard.lease.saw_vote(&req.vote);
                    let declined = {
                        let m = shard.raft.metrics();
                        let m = m.borrow();
                        let voters = m.membership_config.membership().voter_ids();
                        let why = if crate::raft::refuses_votes(self.node.id, &m.vote, m.last_log_index, voters) {
                            Some("not a voter here")
                        } else if shard
                            .votes_withheld_until
                            .is_some_and(|until| std::time::Instant::now() < until)
                        {
                            Some("restarted within a leader lease")
                        } else {
                            None
                        };
                        why.map(|why| {
                            (
                                why,
                                VoteResponse {
                                    vote: m.vote,
                                    vote_granted: false,
                                    last_log_id: None,
                                },
                            )
                        })
                    };
                    match declined {
                        Some((why, resp)) => {
                            tracing::info!(shard = m.shard_id, candidate = %req.vote, "declined a vote: {why}");
                            encode(&Ok::<_, openraft::error::RaftError<u64>>(resp))
                        }
                        None => encode(&shard.raft.vote(req).await),
                    }
                }
                Err(e) => return bad(e),
            },
            _ => return error_reply(ErrorCode::InvalidArgument, format!("unknown message kind {}", m.kind)),
        };
        RaftReply { payload, error: None }
    }
}

#[tonic::async_trait]
impl RaftTransport for TransportService {
    async fn batch(&self, request: Request<RaftBatchRequest>) -> Result<Response<RaftBatchResponse>, Status> {
        let req = request.into_inner();
        self.check_addressed(req.to_node)?;
        if req.messages.len() > RAFT_BATCH_MESSAGES_MAX {
            return Err(Status::invalid_argument(format!(
                "batch of {} messages exceeds {RAFT_BATCH_MESSAGES_MAX}",
                req.messages.len()
            )));
        }
        let replies = futures::future::join_all(req.messages.into_iter().map(|m| self.handle(m))).await;
        Ok(Response::new(RaftBatchResponse { replies }))
    }

    async fn install_snapshot_chunk(
        &self,
        request: Request<SnapshotChunk>,
    ) -> Result<Response<SnapshotChunkResponse>, Status> {
        let chunk = request.into_inner();
        self.check_addressed(chunk.to_node)?;
        if crate::failpoint::fire(crate::failpoint::SNAPSHOT_SLOW_RECEIVE) {
            tokio::time::sleep(std::time::Duration::from_millis(
                crate::failpoint::SNAPSHOT_SLOW_RECEIVE_MS,
            ))
            .await;
        }
        let refuse = |code: ErrorCode, message: String| {
            Ok(Response::new(SnapshotChunkResponse {
                payload: vec![],
                error: Some(detail(code, message)),
            }))
        };
        let got = crc32fast::hash(&chunk.data);
        if got != chunk.crc32 {
            self.node.stats.inc(&self.node.stats.snapshot_chunks_rejected);
            tracing::warn!(
                shard = chunk.shard_id,
                from = chunk.from_node,
                "refusing snapshot chunk: crc32 {got:08x} != {:08x}",
                chunk.crc32
            );
            return refuse(
                ErrorCode::InvalidArgument,
                format!(
                    "snapshot chunk crc32 mismatch: computed {got:08x}, sent {:08x}",
                    chunk.crc32
                ),
            );
        }
        let Some(shard) = self.node.shard(chunk.shard_id) else {
            return refuse(
                ErrorCode::UnknownShard,
                format!("shard {} is not hosted on node {}", chunk.shard_id, self.node.id),
            );
        };
        let mut req: InstallSnapshotRequest<TypeConfig> = match decode(&chunk.request) {
            Ok(r) => r,
            Err(e) => return refuse(ErrorCode::InvalidArgument, format!("undecodable snapshot request: {e}")),
        };
        req.data = chunk.data;
        let res: Result<_, RaftError<u64, InstallSnapshotError>> = shard.raft.install_snapshot(req).await;
        Ok(Response::new(SnapshotChunkResponse {
            payload: encode(&res),
            error: None,
        }))
    }

    async fn fetch_layout(
        &self,
        request: Request<FetchLayoutRequest>,
    ) -> Result<Response<FetchLayoutResponse>, Status> {
        let req = request.into_inner();
        let layout = self.node.layout_after(req.known_epoch, req.wait_ms).await;
        Ok(Response::new(FetchLayoutResponse {
            epoch: self.node.epoch(),
            layout: layout.map(|l| encode(&*l)).unwrap_or_default(),
            leading_bytes: self.node.leading_sizes(),
            leading: self.node.leading(),
        }))
    }

    async fn shard_membership(
        &self,
        request: Request<ShardMembershipRequest>,
    ) -> Result<Response<ShardMembershipResponse>, Status> {
        let epoch = self.node.epoch();
        self.node
            .shard_membership(request.into_inner())
            .await
            .map(Response::new)
            .map_err(|e| e.to_status(epoch))
    }
}
