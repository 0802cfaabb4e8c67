//! The topology nemesis: replica moves, shard splits, leader transfers,
//! node joins and decommissions, through the Admin API while the load runs.
//!
//! Steps run one at a time in schedule order (one class, see
//! `nemesis`), beside the process, network and clock faults. A step:
//!
//! 1. resolves what it acts on from the cluster (`ListShards`,
//!    `ListNodes`): which shard (the `k`-th in id order, modulo the shards
//!    there are now, skipping shards with an operation in flight for a
//!    move), which replica and which destination (a running node without a
//!    copy), and records that choice in its start event;
//! 2. makes the Admin call (or, for a join, starts `ringkv-server --join`);
//! 3. waits until the operation finished or the step's scheduled end,
//!    whichever comes first, and records the stop event with `"outcome"`:
//!    `done`, `timeout` (the operation continues in the background),
//!    `failed` (the Admin error, e.g. `FAILED_PRECONDITION` because the
//!    placement driver has a move of that shard in flight), `unknown` (the
//!    call timed out: the change may still happen) or `skipped` (nothing
//!    to act on, e.g. no node without a copy).
//!
//! An Admin error is part of the history, never a harness failure; only a
//! node process that cannot be started is. A decommissioned node is
//! retired once it left the layout (its process stopped, never restarted);
//! a join that did not make it into the layout by the step's end is
//! retired too. [`settle`] runs in the heal phase: it waits, bounded, for
//! in-flight operations and drains to finish.

use std::collections::BTreeSet;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use ringkv_proto::v1::admin_client::AdminClient;
use ringkv_proto::v1::ListNodesRequest;
use ringkv_proto::v1::ListOperationsRequest;
use ringkv_proto::v1::ListShardsRequest;
use ringkv_proto::v1::MoveReplicaRequest;
use ringkv_proto::v1::NodeStatus;
use ringkv_proto::v1::Operation;
use ringkv_proto::v1::RemoveNodeRequest;
use ringkv_proto::v1::ShardPlacement;
use ringkv_proto::v1::SplitShardRequest;
use ringkv_proto::v1::TransferLeaderRequest;
use serde_json::json;
use serde_json::Value;
use tokio::time::Instant;
use tonic::transport::Channel;

use crate::cluster::Cluster;
use crate::history::EventType;
use crate::history::Process;
use crate::history::F;
use crate::nemesis::Active;
use crate::nemesis::Fault;
use crate::nemesis::NemesisError;
use crate::nemesis::Step;
use crate::runner::Recorder;

/// Deadline of one read-only Admin call (listings).
const LIST_TIMEOUT: Duration = Duration::from_secs(5);
/// Shortest and longest deadline of a call that changes the layout (a
/// split answers once the new shard is in the layout: up to 25 s).
const CHANGE_TIMEOUT_MIN: Duration = Duration::from_secs(5);
const CHANGE_TIMEOUT_MAX: Duration = Duration::from_secs(30);
/// Connection deadline to one node (a paused node accepts TCP and then
/// says nothing).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// Polling period while a step waits for its operation.
const POLL: Duration = Duration::from_millis(250);
/// No split once the cluster has this many data shards.
pub const SHARDS_MAX: usize = 64;
/// Longest wait in the heal phase for in-flight operations and drains.
pub const SETTLE_TIMEOUT: Duration = Duration::from_secs(90);
/// Salt of the random choices made when steps start.
const TOPOLOGY_SALT: u64 = 0x746f_706f_6c6f_6779;

type Shared = Arc<tokio::sync::Mutex<Cluster>>;

/// How a step ended.
enum Outcome {
    Done,
    Timeout,
    Failed(String),
    /// The change call timed out: it may or may not have happened.
    Unknown(String),
    Skipped(String),
}

/// What a started step waits for.
enum Pending {
    Move { op: u64 },
    Split { new_shard: u64 },
    Join { node: u64 },
    Decommission { node: u64 },
}

enum Started {
    Wait(Pending),
    Ended(Outcome),
}

fn status_text(s: &tonic::Status) -> String {
    format!("{:?}: {}", s.code(), s.message())
}

/// Calls the Admin service on the running nodes in turn (from a rotating
/// first one, so one unresponsive node does not starve every call): the
/// first answer wins. A read-only call (`retry_all`) moves on to the next
/// node on any error; a change moves on only when the node could not be
/// reached or answered UNAVAILABLE, since after a timeout it may have
/// happened.
async fn admin_call<T, C, Fut>(
    cluster: &Shared,
    turn: &mut usize,
    timeout: Duration,
    retry_all: bool,
    call: C,
) -> Result<T, tonic::Status>
where
    C: Fn(AdminClient<Channel>) -> Fut,
    Fut: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
{
    let addrs: Vec<String> = {
        let c = cluster.lock().await;
        let (addrs, up) = c.addrs_up();
        up.iter().map(|&id| addrs[(id - 1) as usize].clone()).collect()
    };
    let mut last = tonic::Status::unavailable("no node is running");
    *turn = turn.wrapping_add(1);
    for k in 0..addrs.len() {
        let addr = &addrs[(*turn + k) % addrs.len()];
        let Ok(ep) = tonic::transport::Endpoint::from_shared(format!("http://{addr}")) else {
            continue;
        };
        let ep = ep.connect_timeout(CONNECT_TIMEOUT).timeout(timeout);
        let ch = match tokio::time::timeout(CONNECT_TIMEOUT, ep.connect()).await {
            Ok(Ok(ch)) => ch,
            _ => {
                last = tonic::Status::unavailable(format!("cannot connect to {addr}"));
                continue;
            }
        };
        match tokio::time::timeout(timeout + CONNECT_TIMEOUT, call(AdminClient::new(ch))).await {
            Ok(Ok(r)) => return Ok(r.into_inner()),
            Ok(Err(s)) if retry_all || s.code() == tonic::Code::Unavailable => last = s,
            Ok(Err(s)) => return Err(s),
            Err(_) => {
                last = tonic::Status::deadline_exceeded(format!("{addr} did not answer within {timeout:?}"));
                if !retry_all {
                    return Err(last);
                }
            }
        }
    }
    Err(last)
}

/// The data shards in id order.
async fn list_shards(cluster: &Shared, turn: &mut usize) -> Result<Vec<ShardPlacement>, tonic::Status> {
    let mut shards = admin_call(cluster, turn, LIST_TIMEOUT, true, |mut c| async move {
        c.list_shards(ListShardsRequest {}).await
    })
    .await?
    .shards;
    shards.sort_by_key(|s| s.id);
    Ok(shards)
}

async fn list_nodes(cluster: &Shared, turn: &mut usize) -> Result<Vec<NodeStatus>, tonic::Status> {
    Ok(admin_call(cluster, turn, LIST_TIMEOUT, true, |mut c| async move {
        c.list_nodes(ListNodesRequest {}).await
    })
    .await?
    .nodes)
}

async fn list_operations(cluster: &Shared, turn: &mut usize) -> Result<Vec<Operation>, tonic::Status> {
    Ok(admin_call(cluster, turn, LIST_TIMEOUT, true, |mut c| async move {
        c.list_operations(ListOperationsRequest {}).await
    })
    .await?
    .operations)
}

/// Retires the decommissioned nodes (whose step ended before their drain
/// did) that have left the layout since; returns the ids retired.
async fn reap_drained(cluster: &Shared, turn: &mut usize) -> Vec<u64> {
    if cluster.lock().await.draining.is_empty() {
        return Vec::new();
    }
    let Ok(nodes) = list_nodes(cluster, turn).await else {
        return Vec::new();
    };
    let listed: BTreeSet<u64> = nodes.iter().map(|n| n.id).collect();
    let mut c = cluster.lock().await;
    let gone: Vec<u64> = c.draining.iter().copied().filter(|n| !listed.contains(n)).collect();
    for &n in &gone {
        c.retire(n);
        c.draining.remove(&n);
    }
    gone
}

/// Deadline of a change made at `now` by a step ending at `deadline`.
fn change_timeout(deadline: Instant) -> Duration {
    deadline
        .saturating_duration_since(Instant::now())
        .clamp(CHANGE_TIMEOUT_MIN, CHANGE_TIMEOUT_MAX)
}

/// Carries out the topology steps one after the other, recording a start
/// and a stop event for each.
pub async fn run(
    steps: Vec<Step>,
    cluster: Shared,
    rec: Arc<Recorder>,
    load_start: Instant,
    seed: u64,
    active: Active,
) -> Result<(), NemesisError> {
    let mut rng = StdRng::seed_from_u64(seed ^ TOPOLOGY_SALT);
    let mut turn = 0usize;
    for step in steps {
        tokio::time::sleep_until(load_start + Duration::from_millis(step.start_ms)).await;
        let deadline = load_start + Duration::from_millis(step.start_ms + step.duration_ms);
        let (start_f, stop_f) = step.fault.f_names();
        let name = step.fault.name();
        let harness = |cause| NemesisError::Cluster {
            id: step.id,
            name,
            cause,
        };
        let mut value = json!({"id": step.id, "fault": name});
        let retired = reap_drained(&cluster, &mut turn).await;
        if !retired.is_empty() {
            // Earlier decommissions that finished after their step.
            value["retired_before"] = json!(retired);
        }
        // The start event is recorded when the change is asked for (the
        // call's result goes into the stop event), or here if nothing was
        // asked (skipped, or a listing failed).
        let mut recorded = false;
        let started = begin(
            &step.fault,
            &cluster,
            &mut rng,
            &mut turn,
            deadline,
            &mut value,
            &mut |v: &Value| {
                record(&rec, start_f, v);
                recorded = true;
            },
        )
        .await
        .map_err(harness)?;
        if !recorded {
            record(&rec, start_f, &value);
        }
        let what: Vec<String> = ["shard", "from", "to", "node"]
            .iter()
            .filter_map(|k| value.get(*k).map(|v| format!("{k} {v}")))
            .collect();
        active
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(step.id, format!("{name} [{}]", what.join(", ")));
        let outcome = match started {
            Started::Ended(o) => o,
            Started::Wait(p) => wait(p, &cluster, &mut turn, deadline, &mut value).await,
        };
        let (o, detail) = match outcome {
            Outcome::Done => ("done", None),
            Outcome::Timeout => ("timeout", None),
            Outcome::Failed(e) => ("failed", Some(e)),
            Outcome::Unknown(e) => ("unknown", Some(e)),
            Outcome::Skipped(e) => ("skipped", Some(e)),
        };
        value["outcome"] = json!(o);
        if let Some(d) = detail {
            value["error"] = json!(d);
        }
        record(&rec, stop_f, &value);
        active.lock().unwrap_or_else(|p| p.into_inner()).remove(&step.id);
    }
    Ok(())
}

fn record(rec: &Recorder, f: &str, value: &Value) {
    rec.record(EventType::Info, F::from(f), None, value.clone(), Process::Nemesis, None);
}

/// Resolves the step against the cluster and starts it, calling `mark`
/// with the choice just before the Admin call (or the join's process
/// start), so the start event's time is when the change was asked for. An
/// `Err` is a harness failure (a process that cannot be started).
async fn begin(
    fault: &Fault,
    cluster: &Shared,
    rng: &mut StdRng,
    turn: &mut usize,
    deadline: Instant,
    value: &mut Value,
    mark: &mut (dyn FnMut(&Value) + Send),
) -> anyhow::Result<Started> {
    // A change whose call timed out (our deadline: CANCELLED; the
    // server's: DEADLINE_EXCEEDED) may still happen: its outcome is
    // unknown, not failed.
    // Nothing was asked when a listing failed.
    let list_failed =
        |s: tonic::Status| -> anyhow::Result<Started> { Ok(Started::Ended(Outcome::Failed(status_text(&s)))) };
    let failed = |s: tonic::Status| -> anyhow::Result<Started> {
        let text = status_text(&s);
        Ok(Started::Ended(match s.code() {
            tonic::Code::Cancelled | tonic::Code::DeadlineExceeded => Outcome::Unknown(text),
            _ => Outcome::Failed(text),
        }))
    };
    match *fault {
        Fault::Move { shard } => {
            let shards = match list_shards(cluster, turn).await {
                Ok(s) => s,
                Err(s) => return list_failed(s),
            };
            if shards.is_empty() {
                return Ok(Started::Ended(Outcome::Skipped("the layout lists no shard".into())));
            }
            let nodes = match list_nodes(cluster, turn).await {
                Ok(n) => n,
                Err(s) => return list_failed(s),
            };
            let n = shards.len();
            let Some(s) = (0..n)
                .map(|k| &shards[(shard as usize + k) % n])
                .find(|s| s.operation_id == 0 && s.learners.is_empty())
            else {
                return Ok(Started::Ended(Outcome::Skipped(
                    "every shard has an operation in flight".into(),
                )));
            };
            value["shard"] = json!(s.id);
            value["replicas"] = json!(s.replicas);
            let holders: BTreeSet<u64> = s.replicas.iter().chain(&s.learners).copied().collect();
            let running = cluster.lock().await.addrs_up().1;
            let targets: Vec<u64> = nodes
                .iter()
                .filter(|n| n.up && !n.draining && !holders.contains(&n.id) && running.contains(&n.id))
                .map(|n| n.id)
                .collect();
            let (Some(&from), Some(&to)) = (s.replicas.choose(rng), targets.choose(rng)) else {
                return Ok(Started::Ended(Outcome::Skipped(format!(
                    "no running node without a copy of shard {}",
                    s.id
                ))));
            };
            value["from"] = json!(from);
            value["to"] = json!(to);
            let req = MoveReplicaRequest {
                shard_id: s.id,
                from_node: from,
                to_node: to,
            };
            mark(value);
            let r = admin_call(cluster, turn, change_timeout(deadline), false, |mut c| async move {
                c.move_replica(req).await
            })
            .await;
            match r {
                Ok(r) => {
                    value["operation"] = json!(r.operation_id);
                    value["epoch"] = json!(r.epoch);
                    Ok(Started::Wait(Pending::Move { op: r.operation_id }))
                }
                Err(s) => failed(s),
            }
        }
        Fault::Split { shard } => {
            let shards = match list_shards(cluster, turn).await {
                Ok(s) => s,
                Err(s) => return list_failed(s),
            };
            if shards.is_empty() {
                return Ok(Started::Ended(Outcome::Skipped("the layout lists no shard".into())));
            }
            if shards.len() >= SHARDS_MAX {
                return Ok(Started::Ended(Outcome::Skipped(format!(
                    "{} shards already (at most {SHARDS_MAX})",
                    shards.len()
                ))));
            }
            // The k-th shard, or the next one without an operation in
            // flight (the driver refuses to split a shard that is moving).
            let n = shards.len();
            let s = (0..n)
                .map(|k| &shards[(shard as usize + k) % n])
                .find(|s| s.operation_id == 0 && s.learners.is_empty())
                .unwrap_or(&shards[shard as usize % n]);
            value["shard"] = json!(s.id);
            let req = SplitShardRequest {
                shard_id: s.id,
                split_token: 0,
            };
            mark(value);
            let r = admin_call(cluster, turn, change_timeout(deadline), false, |mut c| async move {
                c.split_shard(req).await
            })
            .await;
            match r {
                Ok(r) => {
                    value["new_shard"] = json!(r.new_shard_id);
                    value["split_token"] = json!(r.split_token);
                    value["epoch"] = json!(r.epoch);
                    Ok(Started::Wait(Pending::Split {
                        new_shard: r.new_shard_id,
                    }))
                }
                Err(s) => failed(s),
            }
        }
        Fault::TransferLeader { shard } => {
            let shards = match list_shards(cluster, turn).await {
                Ok(s) => s,
                Err(s) => return list_failed(s),
            };
            if shards.is_empty() {
                return Ok(Started::Ended(Outcome::Skipped("the layout lists no shard".into())));
            }
            let s = &shards[shard as usize % shards.len()];
            value["shard"] = json!(s.id);
            value["from"] = json!(s.leader_id);
            let others: Vec<u64> = s.replicas.iter().copied().filter(|&r| r != s.leader_id).collect();
            let Some(&to) = others.choose(rng) else {
                return Ok(Started::Ended(Outcome::Skipped(format!(
                    "shard {} has no other voter",
                    s.id
                ))));
            };
            value["to"] = json!(to);
            let req = TransferLeaderRequest {
                shard_id: s.id,
                to_node: to,
            };
            mark(value);
            let r = admin_call(cluster, turn, change_timeout(deadline), false, |mut c| async move {
                c.transfer_leader(req).await
            })
            .await;
            match r {
                // The call answers once the hand-off is over.
                Ok(r) => {
                    value["leader_after"] = json!(r.leader_id);
                    Ok(Started::Ended(Outcome::Done))
                }
                Err(s) => failed(s),
            }
        }
        Fault::Join { node } => {
            let mut c = cluster.lock().await;
            let bootstrap: Vec<u64> = c
                .nodes
                .iter()
                .filter(|n| n.join.is_none() && c.is_up(n.id))
                .map(|n| n.id)
                .collect();
            value["node"] = json!(node);
            let Some(&via) = bootstrap.choose(rng) else {
                return Ok(Started::Ended(Outcome::Skipped(
                    "no bootstrap node is running to join through".into(),
                )));
            };
            c.add_joining_node(node, via)?;
            value["via"] = json!(via);
            value["addr"] = json!(c.nodes[(node - 1) as usize].addr);
            mark(value);
            Ok(Started::Wait(Pending::Join { node }))
        }
        Fault::Decommission { node } => {
            value["node"] = json!(node);
            if !cluster.lock().await.is_member(node) {
                return Ok(Started::Ended(Outcome::Skipped(format!(
                    "node {node} is not a member (its join did not complete)"
                ))));
            }
            let req = RemoveNodeRequest { node_id: node };
            mark(value);
            let r = admin_call(cluster, turn, change_timeout(deadline), false, |mut c| async move {
                c.remove_node(req).await
            })
            .await;
            match r {
                Ok(r) => {
                    value["epoch"] = json!(r.epoch);
                    Ok(Started::Wait(Pending::Decommission { node }))
                }
                Err(s) => failed(s),
            }
        }
        _ => anyhow::bail!("not a topology fault"),
    }
}

/// Polls until the step's operation finished or `deadline` passed.
async fn wait(p: Pending, cluster: &Shared, turn: &mut usize, deadline: Instant, value: &mut Value) -> Outcome {
    loop {
        let done = match p {
            Pending::Move { op } => list_operations(cluster, turn)
                .await
                .is_ok_and(|ops| !ops.iter().any(|o| o.id == op)),
            Pending::Split { new_shard } => list_shards(cluster, turn)
                .await
                .is_ok_and(|s| s.iter().any(|s| s.id == new_shard && s.leader_id != 0)),
            Pending::Join { node } => {
                if cluster.lock().await.exited(node) {
                    let mut c = cluster.lock().await;
                    c.retire(node);
                    value["retired"] = json!(true);
                    return Outcome::Failed(format!("node {node} exited (see node{node}.log)"));
                }
                list_nodes(cluster, turn)
                    .await
                    .is_ok_and(|ns| ns.iter().any(|n| n.id == node && n.up))
            }
            Pending::Decommission { node } => {
                let left = list_nodes(cluster, turn)
                    .await
                    .is_ok_and(|ns| !ns.iter().any(|n| n.id == node));
                if left {
                    cluster.lock().await.retire(node);
                    value["retired"] = json!(true);
                }
                left
            }
        };
        if done {
            return Outcome::Done;
        }
        if Instant::now() + POLL >= deadline {
            break;
        }
        tokio::time::sleep(POLL).await;
    }
    // Out of time: a join that is not in the layout is given up (its
    // process stopped, its id never reused); a drain goes on and the heal
    // phase waits for it.
    match p {
        Pending::Join { node } => {
            let listed = list_nodes(cluster, turn)
                .await
                .map(|ns| ns.iter().any(|n| n.id == node));
            if matches!(listed, Ok(false)) {
                cluster.lock().await.retire(node);
                value["retired"] = json!(true);
            }
        }
        Pending::Decommission { node } => {
            cluster.lock().await.draining.insert(node);
        }
        Pending::Move { .. } | Pending::Split { .. } => {}
    }
    Outcome::Timeout
}

/// The heal phase's topology step: waits, at most [`SETTLE_TIMEOUT`], until
/// no operation is in flight and every draining node left the layout;
/// retires the nodes that left (and joined nodes the layout never listed);
/// records what it found as a `settle-topology` nemesis event.
pub async fn settle(cluster: &Shared, rec: &Recorder) {
    let start = Instant::now();
    let deadline = start + SETTLE_TIMEOUT;
    let mut turn = 0usize;
    let mut last = json!(null);
    let mut settled = false;
    while Instant::now() < deadline {
        reap_drained(cluster, &mut turn).await;
        let (ops, nodes) = (
            list_operations(cluster, &mut turn).await,
            list_nodes(cluster, &mut turn).await,
        );
        if let (Ok(ops), Ok(nodes)) = (ops, nodes) {
            let listed: BTreeSet<u64> = nodes.iter().map(|n| n.id).collect();
            let draining: Vec<u64> = nodes.iter().filter(|n| n.draining).map(|n| n.id).collect();
            last = json!({
                "operations": ops.iter().map(|o| json!({"id": o.id, "shard": o.shard_id, "from": o.from_node,
                    "to": o.to_node, "reason": o.reason, "step": o.step})).collect::<Vec<_>>(),
                "draining": draining,
                "nodes": listed,
            });
            if ops.is_empty() && draining.is_empty() {
                settled = true;
                break;
            }
        }
        tokio::time::sleep(POLL).await;
    }
    // Joined nodes the layout does not list are stopped: they would never
    // become ready.
    if let Ok(nodes) = list_nodes(cluster, &mut turn).await {
        let listed: BTreeSet<u64> = nodes.iter().map(|n| n.id).collect();
        let mut c = cluster.lock().await;
        let strays: Vec<u64> = c
            .nodes
            .iter()
            .filter(|n| n.join.is_some() && !n.retired && !listed.contains(&n.id))
            .map(|n| n.id)
            .collect();
        for n in strays {
            c.retire(n);
        }
    }
    let shards = list_shards(cluster, &mut turn).await.map(|s| s.len()).unwrap_or(0);
    let mut v = json!({
        "outcome": if settled { "done" } else { "timeout" },
        "waited_ms": start.elapsed().as_millis() as u64,
        "shards": shards,
    });
    if let (Some(v), Some(l)) = (v.as_object_mut(), last.as_object()) {
        v.extend(l.clone());
    }
    eprintln!("ringkv-jepsen: topology after the run: {v}");
    record(rec, "settle-topology", &v);
}
