//! The operator's placement calls of `ringkv.v1.Admin` (nodes, shards,
//! moves, splits, leader hand-offs, decommissions, rebalancing) on
//! [`Client`].
//!
//! Any node answers: the server forwards each call to the metadata leader.
//! A call is sent to one reachable node at a time; only a node that cannot
//! be reached (or does not answer) is skipped for the next. A typed answer
//! (success or a ringkv error) ends the call: placement changes are not
//! retried blindly, since the first attempt may have been recorded.

use ringkv_proto::v1::admin_client::AdminClient;
use ringkv_proto::v1::*;
use tonic::transport::Channel;

use crate::client::Client;
use crate::error::AttemptError;
use crate::Error;

impl Client {
    /// Runs one Admin call against the first node that answers.
    async fn admin_call<Req, Resp, F, Fut>(&self, msg: Req, call: F) -> Result<Resp, Error>
    where
        Req: Clone,
        F: Fn(AdminClient<Channel>, tonic::Request<Req>) -> Fut,
        Fut: std::future::Future<Output = Result<tonic::Response<Resp>, tonic::Status>>,
    {
        let mut last = String::from("no endpoint to ask");
        for (addr, ch, timeout, token) in self.admin_targets()? {
            let mut req = tonic::Request::new(msg.clone());
            req.set_timeout(timeout);
            if let Some(t) = &token {
                let v = format!("Bearer {t}")
                    .parse()
                    .map_err(|_| Error::Config("admin token is not valid metadata".into()))?;
                req.metadata_mut().insert("authorization", v);
            }
            match tokio::time::timeout(timeout, call(AdminClient::new(ch), req)).await {
                Ok(Ok(r)) => return Ok(r.into_inner()),
                Ok(Err(status)) => match AttemptError::from_status(&status) {
                    AttemptError::Server { code, detail } => {
                        return Err(crate::error::terminal(code, &detail).unwrap_or(Error::Server {
                            code: code.as_str_name().to_string(),
                            message: detail.message.clone(),
                        }))
                    }
                    e => last = format!("{addr}: {}", e.message()),
                },
                Err(_) => last = format!("{addr}: no answer within {timeout:?}"),
            }
        }
        Err(Error::Transport { message: last })
    }

    /// Every node with liveness, draining flag, replica and leader counts.
    pub async fn list_nodes(&self) -> Result<ListNodesResponse, Error> {
        self.admin_call(ListNodesRequest {}, |mut a, r| async move { a.list_nodes(r).await })
            .await
    }

    /// Every shard with replicas, learners, leader, ranges and size.
    pub async fn list_shards(&self) -> Result<ListShardsResponse, Error> {
        self.admin_call(ListShardsRequest {}, |mut a, r| async move { a.list_shards(r).await })
            .await
    }

    /// In-flight moves with their step and progress.
    pub async fn list_operations(&self) -> Result<ListOperationsResponse, Error> {
        self.admin_call(ListOperationsRequest {}, |mut a, r| async move {
            a.list_operations(r).await
        })
        .await
    }

    /// Records a move of one replica of `shard_id` from `from_node` to
    /// `to_node`; it runs in the background (see [`Client::list_operations`]).
    pub async fn move_replica(
        &self,
        shard_id: u64,
        from_node: u64,
        to_node: u64,
    ) -> Result<MoveReplicaResponse, Error> {
        let req = MoveReplicaRequest {
            shard_id,
            from_node,
            to_node,
        };
        self.admin_call(req, |mut a, r| async move { a.move_replica(r).await })
            .await
    }

    /// Rolls back an in-flight move whose target is not a voter yet.
    pub async fn cancel_operation(&self, operation_id: u64) -> Result<CancelOperationResponse, Error> {
        self.admin_call(CancelOperationRequest { operation_id }, |mut a, r| async move {
            a.cancel_operation(r).await
        })
        .await
    }

    /// Splits `shard_id` at `split_token` (`None`: the middle of its range).
    pub async fn split_shard(&self, shard_id: u64, split_token: Option<u64>) -> Result<SplitShardResponse, Error> {
        let req = SplitShardRequest {
            shard_id,
            split_token: split_token.unwrap_or(0),
        };
        self.admin_call(req, |mut a, r| async move { a.split_shard(r).await })
            .await
    }

    /// Hands the leadership of `shard_id` to its voter `to_node`.
    pub async fn transfer_leader(&self, shard_id: u64, to_node: u64) -> Result<TransferLeaderResponse, Error> {
        let req = TransferLeaderRequest { shard_id, to_node };
        self.admin_call(req, |mut a, r| async move { a.transfer_leader(r).await })
            .await
    }

    /// Decommissions `node_id`: its replicas move away, then it leaves.
    pub async fn remove_node(&self, node_id: u64) -> Result<RemoveNodeResponse, Error> {
        self.admin_call(RemoveNodeRequest { node_id }, |mut a, r| async move {
            a.remove_node(r).await
        })
        .await
    }

    /// Turns automatic rebalancing (moves, splits, leader balance) on or off.
    pub async fn set_rebalance(&self, enabled: bool) -> Result<SetRebalanceResponse, Error> {
        self.admin_call(SetRebalanceRequest { enabled }, |mut a, r| async move {
            a.set_rebalance(r).await
        })
        .await
    }
}
