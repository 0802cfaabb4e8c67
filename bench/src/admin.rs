//! A thin `ringkv.v1.Admin` caller for the benchmarks: one channel per node
//! address, the optional bearer token on every request, a deadline on every
//! call. Placement calls (`ListShards`, `MoveReplica`, ...) may go to any
//! node, which forwards them to the metadata leader; `TriggerSnapshot` and
//! `NodeStats` and `ClusterStatus` concern the node they are sent to.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

use anyhow::Context;
use ringkv_proto::v1::admin_client::AdminClient;
use ringkv_proto::v1::ClusterStatusRequest;
use ringkv_proto::v1::ClusterStatusResponse;
use ringkv_proto::v1::ListNodesRequest;
use ringkv_proto::v1::ListNodesResponse;
use ringkv_proto::v1::ListOperationsRequest;
use ringkv_proto::v1::ListOperationsResponse;
use ringkv_proto::v1::ListShardsRequest;
use ringkv_proto::v1::ListShardsResponse;
use ringkv_proto::v1::MoveReplicaRequest;
use ringkv_proto::v1::MoveReplicaResponse;
use ringkv_proto::v1::NodeStatsRequest;
use ringkv_proto::v1::NodeStatsResponse;
use ringkv_proto::v1::SetRebalanceRequest;
use ringkv_proto::v1::TriggerSnapshotRequest;
use ringkv_proto::v1::TriggerSnapshotResponse;
use tonic::metadata::Ascii;
use tonic::metadata::MetadataValue;
use tonic::transport::Channel;
use tonic::transport::Endpoint;

/// Deadline of one ordinary Admin call.
pub const ADMIN_CALL_TIMEOUT: Duration = Duration::from_secs(20);
/// Deadline of `TriggerSnapshot`: writing a large shard to a file.
pub const SNAPSHOT_CALL_TIMEOUT: Duration = Duration::from_secs(600);
/// Connect timeout to one node.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest Admin answer accepted.
const ADMIN_MESSAGE_BYTES_MAX: usize = 64 * 1024 * 1024;

/// Admin API of a cluster, reached through its nodes' addresses.
pub struct Admin {
    /// Addresses tried in order for placement calls.
    endpoints: Vec<String>,
    /// `Bearer <token>`, checked once.
    token: Option<MetadataValue<Ascii>>,
    channels: Mutex<BTreeMap<String, Channel>>,
}

impl Admin {
    /// `endpoints` are `host:port`; nothing connects until the first call.
    pub fn new(endpoints: &[String], token: Option<String>) -> anyhow::Result<Self> {
        anyhow::ensure!(!endpoints.is_empty(), "no endpoint given");
        let token = token
            .map(|t| format!("Bearer {t}").parse())
            .transpose()
            .context("admin token is not valid gRPC metadata")?;
        Ok(Self {
            endpoints: endpoints.to_vec(),
            token,
            channels: Mutex::new(BTreeMap::new()),
        })
    }

    fn client(&self, addr: &str) -> anyhow::Result<AdminClient<Channel>> {
        let mut g = self.channels.lock().unwrap_or_else(|p| p.into_inner());
        let ch = match g.get(addr) {
            Some(ch) => ch.clone(),
            None => {
                let ch = Endpoint::from_shared(format!("http://{addr}"))
                    .with_context(|| format!("bad address {addr:?}"))?
                    .connect_timeout(CONNECT_TIMEOUT)
                    .tcp_nodelay(true)
                    .connect_lazy();
                g.insert(addr.to_string(), ch.clone());
                ch
            }
        };
        Ok(AdminClient::new(ch).max_decoding_message_size(ADMIN_MESSAGE_BYTES_MAX))
    }

    fn request<T>(&self, msg: T, timeout: Duration) -> tonic::Request<T> {
        let mut req = tonic::Request::new(msg);
        req.set_timeout(timeout);
        if let Some(tok) = &self.token {
            req.metadata_mut().insert("authorization", tok.clone());
        }
        req
    }

    /// Runs `call` against each endpoint in turn until one answers.
    async fn any<T, F, Fut>(&self, what: &str, call: F) -> anyhow::Result<T>
    where
        F: Fn(AdminClient<Channel>) -> Fut,
        Fut: std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        let mut last = None;
        for addr in &self.endpoints {
            let client = self.client(addr)?;
            match call(client).await {
                Ok(r) => return Ok(r.into_inner()),
                // A refusal is the cluster's answer: do not ask elsewhere.
                Err(s) if is_definite(&s) => anyhow::bail!("{what} via {addr}: {}: {}", s.code(), s.message()),
                Err(s) => last = Some(format!("{what} via {addr}: {}: {}", s.code(), s.message())),
            }
        }
        anyhow::bail!(last.unwrap_or_else(|| format!("{what}: no endpoint")))
    }

    pub async fn list_nodes(&self) -> anyhow::Result<ListNodesResponse> {
        let req = || self.request(ListNodesRequest {}, ADMIN_CALL_TIMEOUT);
        self.any("ListNodes", |mut c| {
            let r = req();
            async move { c.list_nodes(r).await }
        })
        .await
    }

    pub async fn list_shards(&self) -> anyhow::Result<ListShardsResponse> {
        let req = || self.request(ListShardsRequest {}, ADMIN_CALL_TIMEOUT);
        self.any("ListShards", |mut c| {
            let r = req();
            async move { c.list_shards(r).await }
        })
        .await
    }

    pub async fn list_operations(&self) -> anyhow::Result<ListOperationsResponse> {
        let req = || self.request(ListOperationsRequest {}, ADMIN_CALL_TIMEOUT);
        self.any("ListOperations", |mut c| {
            let r = req();
            async move { c.list_operations(r).await }
        })
        .await
    }

    /// Turns automatic rebalancing on or off; returns the new setting.
    pub async fn set_rebalance(&self, enabled: bool) -> anyhow::Result<bool> {
        let req = || self.request(SetRebalanceRequest { enabled }, ADMIN_CALL_TIMEOUT);
        let r = self
            .any("SetRebalance", |mut c| {
                let r = req();
                async move { c.set_rebalance(r).await }
            })
            .await?;
        Ok(r.enabled)
    }

    pub async fn move_replica(
        &self,
        shard_id: u64,
        from_node: u64,
        to_node: u64,
    ) -> anyhow::Result<MoveReplicaResponse> {
        let msg = MoveReplicaRequest {
            shard_id,
            from_node,
            to_node,
        };
        let req = || self.request(msg, ADMIN_CALL_TIMEOUT);
        self.any("MoveReplica", |mut c| {
            let r = req();
            async move { c.move_replica(r).await }
        })
        .await
    }

    /// Builds a snapshot of `shard_id` on the node at `addr` and purges the
    /// log it covers.
    pub async fn trigger_snapshot(&self, addr: &str, shard_id: u64) -> anyhow::Result<TriggerSnapshotResponse> {
        let mut c = self.client(addr)?;
        let req = self.request(TriggerSnapshotRequest { shard_id }, SNAPSHOT_CALL_TIMEOUT);
        let r = c
            .trigger_snapshot(req)
            .await
            .map_err(|s| anyhow::anyhow!("TriggerSnapshot on {addr}: {}: {}", s.code(), s.message()))?;
        Ok(r.into_inner())
    }

    /// The node at `addr`'s own view of the cluster: every shard's leader
    /// and term as its local Raft replica sees them. `timeout` bounds the
    /// call (short, for polling).
    pub async fn cluster_status(&self, addr: &str, timeout: Duration) -> anyhow::Result<ClusterStatusResponse> {
        let mut c = self.client(addr)?;
        let req = self.request(ClusterStatusRequest {}, timeout);
        let r = tokio::time::timeout(timeout, c.cluster_status(req))
            .await
            .map_err(|_| anyhow::anyhow!("ClusterStatus on {addr}: no answer within {timeout:?}"))?
            .map_err(|s| anyhow::anyhow!("ClusterStatus on {addr}: {}: {}", s.code(), s.message()))?;
        Ok(r.into_inner())
    }

    /// Counters of the node at `addr`.
    pub async fn node_stats(&self, addr: &str) -> anyhow::Result<NodeStatsResponse> {
        let mut c = self.client(addr)?;
        let req = self.request(NodeStatsRequest {}, ADMIN_CALL_TIMEOUT);
        let r = c
            .node_stats(req)
            .await
            .map_err(|s| anyhow::anyhow!("NodeStats on {addr}: {}: {}", s.code(), s.message()))?;
        Ok(r.into_inner())
    }
}

/// Whether a failed call was refused by the cluster (asking another node
/// would get the same answer) rather than not delivered.
fn is_definite(s: &tonic::Status) -> bool {
    matches!(
        s.code(),
        tonic::Code::InvalidArgument
            | tonic::Code::FailedPrecondition
            | tonic::Code::Unauthenticated
            | tonic::Code::PermissionDenied
            | tonic::Code::NotFound
            | tonic::Code::AlreadyExists
    )
}
