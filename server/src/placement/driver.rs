//! The placement driver: on the metadata leader, every `placement.tick_ms`,
//! probes the nodes, advances every in-flight move by one step, rolls back
//! moves whose target is gone, removes drained nodes and starts the moves
//! the planner asks for.
//!
//! All decisions come from `placement` (pure); this module only observes
//! (RPCs to nodes and shard leaders) and acts (membership RPCs, layout
//! compare-and-swap). Everything it needs to resume lives in the committed
//! layout, so a new metadata leader picks up where the old one stopped.

use std::collections::BTreeMap;
use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;
use std::time::Instant;

use ringkv_proto::v1::raft_transport_client::RaftTransportClient;
use ringkv_proto::v1::MembershipAction;
use ringkv_proto::v1::ShardMembershipRequest;
use ringkv_proto::v1::ShardMembershipResponse;

use super::MembershipView;
use super::Step;
use crate::error::ServerError;
use crate::node::membership::fetch_layout;
use crate::node::Node;
use crate::ring::ClusterLayout;
use crate::ring::MoveOp;
use crate::ring::SplitOp;

/// Longest a liveness probe of one node may take.
const PROBE_TIMEOUT_MS: u64 = 1_000;
/// Hops followed from a replica to a shard's leader.
const LEADER_HOPS_MAX: usize = 4;
/// Longest one membership RPC may take (the change itself is bounded on
/// the leader).
const MEMBERSHIP_RPC_TIMEOUT_MS: u64 = 15_000;

/// When each node last answered the metadata leader.
#[derive(Debug, Default)]
pub struct Liveness {
    inner: std::sync::Mutex<LivenessInner>,
}

#[derive(Debug, Default)]
struct LivenessInner {
    /// When this node started watching (became metadata leader).
    since: Option<Instant>,
    last_seen: BTreeMap<u64, Instant>,
}

impl Liveness {
    /// Starts (or restarts, on a new leadership) watching.
    pub fn reset(&self) {
        let mut g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        g.since = Some(Instant::now());
        g.last_seen.clear();
    }

    pub fn mark(&self, node: u64) {
        let mut g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        g.last_seen.insert(node, Instant::now());
    }

    /// How long since `node` answered (`None`: never since watching began).
    pub fn silent_for(&self, node: u64) -> Option<Duration> {
        let g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        g.last_seen.get(&node).map(|t| t.elapsed())
    }

    /// Nodes of `nodes` that answered within `alive_ms`, and those silent
    /// for longer than `down_ms` (counting from when watching began for a
    /// node never heard from).
    pub fn classify(
        &self,
        nodes: impl Iterator<Item = u64>,
        alive_ms: u64,
        down_ms: u64,
    ) -> (BTreeSet<u64>, BTreeSet<u64>) {
        let g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        let (mut up, mut down) = (BTreeSet::new(), BTreeSet::new());
        for n in nodes {
            let silent = match g.last_seen.get(&n).or(g.since.as_ref()) {
                Some(t) => now.duration_since(*t),
                None => Duration::ZERO,
            };
            if g.last_seen.contains_key(&n) && silent <= Duration::from_millis(alive_ms) {
                up.insert(n);
            }
            if silent > Duration::from_millis(down_ms) {
                down.insert(n);
            }
        }
        (up, down)
    }
}

/// What the driver saw, for the Admin API.
#[derive(Debug, Default)]
pub struct DriverState {
    pub liveness: Liveness,
    /// Shards each node said it leads, at the last probe.
    pub leaders_seen: std::sync::Mutex<BTreeMap<u64, Vec<u64>>>,
    /// Operation id -> (next step, entries behind or -1).
    pub progress: std::sync::Mutex<BTreeMap<u64, (String, i64)>>,
    /// Shard -> approximate bytes, as its leader last reported.
    pub sizes: std::sync::Mutex<BTreeMap<u64, u64>>,
}

impl DriverState {
    /// The last known leader of `shard` among the probed nodes.
    pub fn leader_of(&self, shard: u64) -> Option<u64> {
        let g = self.leaders_seen.lock().unwrap_or_else(|p| p.into_inner());
        g.iter().find(|(_, s)| s.contains(&shard)).map(|(n, _)| *n)
    }
}

/// Runs forever; acts only while this node leads the metadata group.
pub async fn run(node: Arc<Node>) {
    let tick = Duration::from_millis(node.cfg.placement.tick_ms);
    let mut leading = false;
    loop {
        tokio::time::sleep(tick).await;
        if !node.is_meta_leader() {
            leading = false;
            continue;
        }
        if !leading {
            node.placement.liveness.reset();
            leading = true;
            tracing::info!("placement driver active on this node (metadata leader)");
        }
        if let Err(e) = tick_once(&node).await {
            tracing::warn!(error = %e, "placement tick");
        }
    }
}

async fn tick_once(node: &Arc<Node>) -> Result<(), ServerError> {
    let layout = node.committed_layout().await?;
    probe_nodes(node, &layout).await;
    let p = &node.cfg.placement;
    for op in layout.ops.values() {
        if let Err(e) = drive(node, &layout, op).await {
            tracing::info!(op = op.id, shard = op.shard, error = %e, "move step did not complete; retrying next tick");
        }
    }
    let (up, down) =
        node.placement
            .liveness
            .classify(layout.nodes.keys().copied(), p.node_alive_ms, p.node_down_replace_ms);
    let (_, target_gone) =
        node.placement
            .liveness
            .classify(layout.nodes.keys().copied(), p.node_alive_ms, p.move_target_down_ms);
    for op in layout
        .ops
        .values()
        .filter(|o| !o.cancelled && target_gone.contains(&o.to))
    {
        tracing::warn!(
            op = op.id,
            shard = op.shard,
            to = op.to,
            "move target is gone: rolling back"
        );
        let id = op.id;
        node.change_layout(|l| match l.ops.get(&id) {
            Some(o) if !o.cancelled => super::cancel_move(l, id).map(Some),
            _ => Ok(None),
        })
        .await?;
    }
    for sp in layout.splits.values() {
        if let Err(e) = drive_split(node, &layout, sp).await {
            tracing::info!(shard = sp.shard, error = %e, "split did not complete; retrying next tick");
        }
    }
    node.change_layout(|l| Ok(super::remove_drained(l))).await?;
    let layout = node.committed_layout().await?;
    if layout.rebalance_enabled && layout.ops.is_empty() && layout.splits.is_empty() {
        let sizes = node.placement.sizes.lock().unwrap_or_else(|e| e.into_inner()).clone();
        if let Some((shard, why)) = super::plan_split(&layout, &sizes, p.split_shard_bytes, p.shards_per_node_min) {
            tracing::info!(
                shard,
                bytes = sizes.get(&shard).copied().unwrap_or(0),
                reason = why.as_str(),
                shards = layout.shards.len(),
                "splitting a shard"
            );
            let now = crate::node::now_ms();
            node.change_layout(|l| super::start_split(l, shard, None, why.as_str(), now).map(Some))
                .await?;
        }
    }
    if layout.rebalance_enabled && layout.ops.is_empty() {
        let leaders = node
            .placement
            .leaders_seen
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        if let Some((shard, from, to)) = super::plan_leader_transfer(&layout, &leaders, &up) {
            tracing::info!(shard, from, to, "balancing leaders: handing off a leadership");
            let req = ShardMembershipRequest {
                shard_id: shard,
                action: MembershipAction::TransferLeader as i32,
                nodes: vec![to],
                addr: String::new(),
                split_token: 0,
            };
            if let Err(e) = call_leader(node, &layout, req).await {
                tracing::info!(shard, to, error = %e, "leadership hand-off did not happen");
            }
        }
    }
    for m in super::plan_moves(&layout, &up, &down, p.moves_in_flight_max) {
        tracing::info!(
            shard = m.shard,
            from = m.from,
            to = m.to,
            reason = m.reason,
            "starting a move"
        );
        let now = crate::node::now_ms();
        let res = node
            .change_layout(|l| super::start_move(l, m.shard, m.from, m.to, m.reason, now).map(Some))
            .await;
        if let Err(e) = res {
            tracing::info!(shard = m.shard, error = %e, "planned move not started");
        }
    }
    Ok(())
}

/// Asks every node for the shards it leads; a node that answers is up.
async fn probe_nodes(node: &Arc<Node>, layout: &ClusterLayout) {
    let probes = layout.nodes.iter().map(|(id, addr)| async move {
        if *id == node.id {
            let leading: Vec<(u64, u64)> = node.leading().into_iter().zip(node.leading_sizes()).collect();
            return (*id, Ok(leading));
        }
        let res = match node.pool.peer(*id, addr) {
            Ok(peer) => tokio::time::timeout(
                Duration::from_millis(PROBE_TIMEOUT_MS),
                fetch_layout(&peer.channel, node.id, u64::MAX, 0),
            )
            .await
            .map_err(|_| "probe timed out".to_string())
            .and_then(|r| r.map(|p| p.leading)),
            Err(e) => Err(e),
        };
        (*id, res)
    });
    let results = futures::future::join_all(probes).await;
    let mut seen = node.placement.leaders_seen.lock().unwrap_or_else(|p| p.into_inner());
    let mut sizes = node.placement.sizes.lock().unwrap_or_else(|p| p.into_inner());
    seen.retain(|n, _| layout.nodes.contains_key(n));
    sizes.retain(|s, _| layout.shards.contains_key(s));
    for (id, res) in results {
        match res {
            Ok(leading) => {
                node.placement.liveness.mark(id);
                seen.insert(id, leading.iter().map(|(s, _)| *s).collect());
                sizes.extend(leading);
            }
            Err(e) => tracing::debug!(node = id, error = %e, "probe failed"),
        }
    }
}

/// Advances one move by one step.
async fn drive(node: &Arc<Node>, layout: &ClusterLayout, op: &MoveOp) -> Result<(), ServerError> {
    let read = ShardMembershipRequest {
        shard_id: op.shard,
        action: MembershipAction::Read as i32,
        ..Default::default()
    };
    let view = MembershipView::from_response(&call_leader(node, layout, read).await?);
    let step = super::next_step(layout, op, &view);
    let (name, behind) = match &step {
        Step::AddLearner => ("add_learner", -1),
        Step::WaitCatchUp { behind } => ("catch_up", behind.map_or(-1, |b| b as i64)),
        Step::ChangeVoters(_) => ("change_voters", 0),
        Step::RemoveLearner => ("remove_learner", -1),
        Step::Finish => ("finish", 0),
        Step::Abandon => ("abandon", -1),
    };
    node.placement
        .progress
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert(op.id, (name.to_string(), behind));
    let change = |action: MembershipAction, nodes: Vec<u64>, addr: String| ShardMembershipRequest {
        shard_id: op.shard,
        action: action as i32,
        nodes,
        addr,
        split_token: 0,
    };
    match step {
        Step::AddLearner => {
            let addr = layout.nodes.get(&op.to).cloned().unwrap_or_default();
            call_leader(node, layout, change(MembershipAction::AddLearner, vec![op.to], addr)).await?;
        }
        Step::WaitCatchUp { .. } => {}
        Step::ChangeVoters(voters) => {
            let req = change(MembershipAction::SetVoters, voters.into_iter().collect(), String::new());
            call_leader(node, layout, req).await?;
        }
        Step::RemoveLearner => {
            call_leader(
                node,
                layout,
                change(MembershipAction::RemoveLearner, vec![op.to], String::new()),
            )
            .await?;
        }
        Step::Finish | Step::Abandon => {
            let id = op.id;
            let finish = matches!(step, Step::Finish);
            node.change_layout(|l| {
                if !l.ops.contains_key(&id) {
                    return Ok(None);
                }
                if finish {
                    super::finish_move(l, id).map(Some)
                } else {
                    super::abandon_move(l, id).map(Some)
                }
            })
            .await?;
            node.placement
                .progress
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&id);
            tracing::info!(
                op = id,
                shard = op.shard,
                from = op.from,
                to = op.to,
                finish,
                "move done"
            );
        }
    }
    Ok(())
}

/// Has the shard's leader apply a recorded split, then records it done.
async fn drive_split(node: &Arc<Node>, layout: &ClusterLayout, sp: &SplitOp) -> Result<(), ServerError> {
    let req = ShardMembershipRequest {
        shard_id: sp.shard,
        action: MembershipAction::Split as i32,
        nodes: vec![sp.new_shard],
        addr: String::new(),
        split_token: sp.at,
    };
    call_leader(node, layout, req).await?;
    if crate::failpoint::fire(crate::failpoint::PLACEMENT_SPLIT_DONE_LATE) {
        tokio::time::sleep(Duration::from_millis(crate::failpoint::PLACEMENT_SPLIT_DONE_LATE_MS)).await;
    }
    let shard = sp.shard;
    node.change_layout(|l| {
        if l.splits.contains_key(&shard) {
            super::finish_split(l, shard).map(Some)
        } else {
            Ok(None)
        }
    })
    .await?;
    tracing::info!(shard, new_shard = sp.new_shard, at = sp.at, "split done");
    Ok(())
}

/// Sends a membership request to the shard's leader, following hints.
pub(crate) async fn call_leader(
    node: &Arc<Node>,
    layout: &ClusterLayout,
    req: ShardMembershipRequest,
) -> Result<ShardMembershipResponse, ServerError> {
    let shard = layout.shards.get(&req.shard_id).ok_or(ServerError::UnknownShard {
        shard_id: req.shard_id,
        node_id: node.id,
    })?;
    let mut candidates: Vec<u64> = node.placement.leader_of(req.shard_id).into_iter().collect();
    candidates.extend(shard.replicas.iter().copied());
    let mut tried = BTreeSet::new();
    let mut last = ServerError::ShardUnavailable {
        shard_id: req.shard_id,
        reason: "no replica answered".into(),
    };
    let mut next = candidates.first().copied();
    for _ in 0..LEADER_HOPS_MAX + shard.replicas.len() {
        let Some(target) = next
            .take()
            .or_else(|| candidates.iter().copied().find(|c| !tried.contains(c)))
        else {
            break;
        };
        tried.insert(target);
        let res = if target == node.id {
            node.shard_membership(req.clone()).await
        } else {
            remote_membership(node, layout, target, req.clone()).await
        };
        match res {
            Ok(r) => return Ok(r),
            Err(ServerError::NotLeader { leader_id: Some(l), .. }) if !tried.contains(&l) => next = Some(l),
            Err(e) => last = e,
        }
    }
    Err(last)
}

async fn remote_membership(
    node: &Arc<Node>,
    layout: &ClusterLayout,
    target: u64,
    req: ShardMembershipRequest,
) -> Result<ShardMembershipResponse, ServerError> {
    let addr = layout
        .nodes
        .get(&target)
        .ok_or_else(|| ServerError::Internal(format!("node {target} has no address")))?;
    let peer = node.pool.peer(target, addr).map_err(ServerError::Internal)?;
    let mut r = tonic::Request::new(req);
    r.set_timeout(Duration::from_millis(MEMBERSHIP_RPC_TIMEOUT_MS));
    let started = Instant::now();
    RaftTransportClient::new(peer.channel.clone())
        .shard_membership(r)
        .await
        .map(|r| r.into_inner())
        .map_err(|status| match ServerError::from_status(&status) {
            Some((e, _)) => e,
            None => ServerError::ShardUnavailable {
                shard_id: 0,
                reason: format!(
                    "node {target} did not answer after {} ms: {}",
                    started.elapsed().as_millis(),
                    status.message()
                ),
            },
        })
}
