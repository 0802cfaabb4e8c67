//! Placement decisions: how the cluster layout changes (moves, joins,
//! decommissions) and what the next step of an in-flight move is.
//!
//! Pure functions over [`ClusterLayout`] and what a shard leader reports
//! about its Raft membership: no I/O, no clocks (times are arguments), so
//! every decision is unit-tested and replayable. The driver in `driver.rs`
//! runs on the metadata leader and carries the decisions out; it must not
//! decide anything itself.
//!
//! A move of shard S from node F to node T goes through these states, each
//! derived from the layout (what was recorded) and the shard's current Raft
//! membership (what has happened), never from memory:
//!
//! 1. recorded: the layout lists T as a learner of S and holds the
//!    [`MoveOp`]; T opens an empty group for S;
//! 2. the shard leader adds T as a Raft learner; T catches up by snapshot
//!    and log;
//! 3. once T is within [`CATCH_UP_LAG_MAX`] entries, the leader changes the
//!    voters from `R` to `R - F + T` (joint consensus inside openraft);
//! 4. the layout replaces F with T and drops the operation (epoch + 1);
//!    F sees it is no longer a member and deletes its copy.
//!
//! A move is rolled back (the learner removed, the layout restored) only
//! while T is not a voter; after that it can only go forward.

pub mod driver;

use std::collections::BTreeMap;
use std::collections::BTreeSet;

use crate::ring::ClusterLayout;
use crate::ring::MoveOp;
use crate::ring::ShardInfo;
use crate::ring::SplitOp;
use crate::ring::TokenRange;
use crate::ring::META_SHARD_ID;
use crate::ring::REPLICATION_FACTOR;

/// A learner this many log entries (or fewer) behind the leader's last
/// entry counts as caught up and may be promoted.
pub const CATCH_UP_LAG_MAX: u64 = 64;
/// Most moves in flight at once, whatever the configuration says.
pub const MOVES_IN_FLIGHT_MAX: usize = 16;

/// Errors of a requested layout change; they reach the operator.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlacementError {
    #[error("shard {0} does not exist")]
    UnknownShard(u64),
    #[error("node {0} is not a member of the cluster")]
    UnknownNode(u64),
    #[error("node {node} does not hold a replica of shard {shard}")]
    NotAReplica { shard: u64, node: u64 },
    #[error("node {node} already holds a replica of shard {shard}")]
    AlreadyAReplica { shard: u64, node: u64 },
    #[error("shard {shard} already has operation {op} in flight")]
    ShardBusy { shard: u64, op: u64 },
    #[error("node {0} is being decommissioned and cannot receive replicas")]
    NodeDraining(u64),
    #[error("node {0} is a member of the metadata group, which cannot change membership yet")]
    MetaMember(u64),
    #[error("node {id} is already a member with address {addr}")]
    NodeExists { id: u64, addr: String },
    #[error("address {addr} is already used by node {id}")]
    AddressInUse { id: u64, addr: String },
    #[error("node {node} is in zone {zone:?}, which already holds a replica of shard {shard}")]
    ZoneConflict { shard: u64, node: u64, zone: String },
    #[error("shard {0} has a split in flight")]
    SplitPending(u64),
    #[error("shard {shard} cannot split: {why}")]
    CannotSplit { shard: u64, why: String },
    #[error("operation {0} does not exist")]
    UnknownOp(u64),
    #[error("operation {0} cannot be cancelled: its target is already a voter")]
    NotCancellable(u64),
    #[error("the resulting layout is inconsistent: {0}")]
    Inconsistent(String),
}

/// The next layout: `layout` changed by `f`, epoch bumped and checked.
fn next_layout(
    layout: &ClusterLayout,
    f: impl FnOnce(&mut ClusterLayout) -> Result<(), PlacementError>,
) -> Result<ClusterLayout, PlacementError> {
    let mut next = layout.clone();
    f(&mut next)?;
    next.epoch = layout.epoch + 1;
    next.check().map_err(|e| PlacementError::Inconsistent(e.to_string()))?;
    Ok(next)
}

/// Records a move of `shard` from `from` to `to`.
pub fn start_move(
    layout: &ClusterLayout,
    shard: u64,
    from: u64,
    to: u64,
    reason: &str,
    now_ms: u64,
) -> Result<ClusterLayout, PlacementError> {
    let info = layout.shards.get(&shard).ok_or(PlacementError::UnknownShard(shard))?;
    if !layout.nodes.contains_key(&to) {
        return Err(PlacementError::UnknownNode(to));
    }
    if !info.replicas.contains(&from) {
        return Err(PlacementError::NotAReplica { shard, node: from });
    }
    if info.members().any(|m| m == to) {
        return Err(PlacementError::AlreadyAReplica { shard, node: to });
    }
    if let Some(op) = layout.op_of(shard) {
        return Err(PlacementError::ShardBusy { shard, op: op.id });
    }
    if layout.splits.contains_key(&shard) {
        return Err(PlacementError::SplitPending(shard));
    }
    if layout.draining.contains(&to) {
        return Err(PlacementError::NodeDraining(to));
    }
    next_layout(layout, |l| {
        let id = l.next_op_id;
        l.next_op_id += 1;
        l.ops.insert(
            id,
            MoveOp {
                id,
                shard,
                from,
                to,
                reason: reason.to_string(),
                created_ms: now_ms,
                cancelled: false,
            },
        );
        if let Some(s) = l.shards.get_mut(&shard) {
            s.learners.push(to);
        }
        Ok(())
    })
}

/// Refuses an operator's move that would put two replicas of the shard in
/// one zone while enough zones exist (the planner never does that either;
/// it only accepts it to keep three replicas when a node is gone).
pub fn check_zones_of_move(layout: &ClusterLayout, shard: u64, from: u64, to: u64) -> Result<(), PlacementError> {
    let info = layout.shards.get(&shard).ok_or(PlacementError::UnknownShard(shard))?;
    let zones = zones_among(
        layout,
        layout.nodes.keys().copied().filter(|n| !layout.draining.contains(n)),
    );
    if zone_ok(layout, info, to, Some(from), zones) {
        Ok(())
    } else {
        Err(PlacementError::ZoneConflict {
            shard,
            node: to,
            zone: layout.zone_of(to).unwrap_or("").to_string(),
        })
    }
}

/// The layout after move `op_id` completed: `to` replaces `from`.
pub fn finish_move(layout: &ClusterLayout, op_id: u64) -> Result<ClusterLayout, PlacementError> {
    let op = layout.ops.get(&op_id).ok_or(PlacementError::UnknownOp(op_id))?.clone();
    next_layout(layout, |l| {
        l.ops.remove(&op_id);
        let s = l
            .shards
            .get_mut(&op.shard)
            .ok_or(PlacementError::UnknownShard(op.shard))?;
        s.learners.retain(|n| *n != op.to);
        for r in s.replicas.iter_mut() {
            if *r == op.from {
                *r = op.to;
            }
        }
        Ok(())
    })
}

/// The layout after move `op_id` was rolled back: the shard keeps its replicas.
pub fn abandon_move(layout: &ClusterLayout, op_id: u64) -> Result<ClusterLayout, PlacementError> {
    let op = layout.ops.get(&op_id).ok_or(PlacementError::UnknownOp(op_id))?.clone();
    next_layout(layout, |l| {
        l.ops.remove(&op_id);
        if let Some(s) = l.shards.get_mut(&op.shard) {
            s.learners.retain(|n| *n != op.to);
        }
        Ok(())
    })
}

/// Marks move `op_id` for roll-back.
pub fn cancel_move(layout: &ClusterLayout, op_id: u64) -> Result<ClusterLayout, PlacementError> {
    if !layout.ops.contains_key(&op_id) {
        return Err(PlacementError::UnknownOp(op_id));
    }
    next_layout(layout, |l| {
        if let Some(op) = l.ops.get_mut(&op_id) {
            op.cancelled = true;
        }
        Ok(())
    })
}

/// Records a split of `shard` at token `at` (`None`: the middle of its
/// range). The new shard gets the next shard id.
pub fn start_split(
    layout: &ClusterLayout,
    shard: u64,
    at: Option<u64>,
    reason: &str,
    now_ms: u64,
) -> Result<ClusterLayout, PlacementError> {
    let info = layout.shards.get(&shard).ok_or(PlacementError::UnknownShard(shard))?;
    if let Some(op) = layout.op_of(shard) {
        return Err(PlacementError::ShardBusy { shard, op: op.id });
    }
    if layout.splits.contains_key(&shard) {
        return Err(PlacementError::SplitPending(shard));
    }
    let cannot = |why: String| PlacementError::CannotSplit { shard, why };
    let [range] = info.ranges[..] else {
        return Err(cannot("it owns several token ranges".into()));
    };
    let end = range.end.map_or(u128::from(u64::MAX) + 1, u128::from);
    let at = match at {
        Some(t) => t,
        None => ((u128::from(range.start) + end) / 2) as u64,
    };
    if !(range.start < at && range.contains(at)) {
        return Err(cannot(format!(
            "token {at} is not strictly inside its range [{}, {})",
            range.start,
            range.end.map_or("2^64".to_string(), |e| e.to_string())
        )));
    }
    next_layout(layout, |l| {
        let new_shard = l.next_shard_id;
        l.next_shard_id += 1;
        l.splits.insert(
            shard,
            SplitOp {
                shard,
                new_shard,
                at,
                reason: reason.to_string(),
                created_ms: now_ms,
            },
        );
        Ok(())
    })
}

/// The layout after the split of `shard` was applied by the shard: the new
/// shard owns the upper part, on the same replicas.
pub fn finish_split(layout: &ClusterLayout, shard: u64) -> Result<ClusterLayout, PlacementError> {
    let sp = layout
        .splits
        .get(&shard)
        .ok_or(PlacementError::UnknownShard(shard))?
        .clone();
    next_layout(layout, |l| {
        l.splits.remove(&shard);
        let s = l.shards.get_mut(&shard).ok_or(PlacementError::UnknownShard(shard))?;
        let [range] = s.ranges[..] else {
            return Err(PlacementError::CannotSplit {
                shard,
                why: "it owns several token ranges".into(),
            });
        };
        s.ranges = vec![TokenRange {
            start: range.start,
            end: Some(sp.at),
        }];
        let new = ShardInfo {
            id: sp.new_shard,
            replicas: s.replicas.clone(),
            ranges: vec![TokenRange {
                start: sp.at,
                end: range.end,
            }],
            learners: vec![],
        };
        l.shards.insert(sp.new_shard, new);
        l.ring.insert(sp.at, sp.new_shard);
        Ok(())
    })
}

/// Upper bound on `placement.shards_per_node_min`.
pub const SHARDS_PER_NODE_MIN_MAX: u32 = 64;

/// Why [`plan_split`] picked a shard; the text goes into the split's record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SplitReason {
    /// Larger than `placement.split_shard_bytes`.
    Size,
    /// Fewer data shards than `placement.shards_per_node_min` per member
    /// node, so some node could lead nothing.
    NodeCount,
}

impl SplitReason {
    pub fn as_str(self) -> &'static str {
        match self {
            SplitReason::Size => "size",
            SplitReason::NodeCount => "shards_per_node_min",
        }
    }
}

/// The shard to split at its middle next, if any:
/// - the largest shard (by `sizes`: shard -> bytes) above `split_bytes`
///   (`0` = never by size);
/// - else, while the cluster has fewer data shards than
///   `shards_per_node_min` per node that is not draining (`0` = off), the
///   largest shard, so a grown cluster gets a shard for every node to lead.
///
/// Only shards with one token range and no operation in flight qualify; ties
/// go to the lowest id. Pure: the driver supplies sizes and starts the split.
pub fn plan_split(
    layout: &ClusterLayout,
    sizes: &BTreeMap<u64, u64>,
    split_bytes: u64,
    shards_per_node_min: u32,
) -> Option<(u64, SplitReason)> {
    let size = |s: u64| sizes.get(&s).copied().unwrap_or(0);
    let largest = |min_bytes: u64| {
        layout
            .shards
            .values()
            .filter(|i| i.ranges.len() == 1 && !layout.busy(i.id) && size(i.id) >= min_bytes)
            .max_by_key(|i| (size(i.id), std::cmp::Reverse(i.id)))
            .map(|i| i.id)
    };
    if split_bytes > 0 {
        if let Some(s) = largest(split_bytes.saturating_add(1)) {
            return Some((s, SplitReason::Size));
        }
    }
    let nodes = layout.nodes.keys().filter(|n| !layout.draining.contains(n)).count() as u64;
    let wanted = (nodes * u64::from(shards_per_node_min)).min(u64::from(crate::config::SHARDS_MAX));
    if (layout.shards.len() as u64) < wanted {
        return largest(0).map(|s| (s, SplitReason::NodeCount));
    }
    None
}

/// Adds a node (idempotent for the same id, address and zone); `zone`
/// (empty = none) labels it, and relabels a node that is already a member.
pub fn add_node(
    layout: &ClusterLayout,
    id: u64,
    addr: &str,
    zone: &str,
) -> Result<Option<ClusterLayout>, PlacementError> {
    let set_zone = |l: &mut ClusterLayout| {
        if zone.is_empty() {
            l.zones.remove(&id);
        } else {
            l.zones.insert(id, zone.to_string());
        }
    };
    if let Some(a) = layout.nodes.get(&id) {
        if a != addr {
            return Err(PlacementError::NodeExists { id, addr: a.clone() });
        }
        if layout.zone_of(id).unwrap_or("") == zone {
            return Ok(None);
        }
        return next_layout(layout, |l| {
            set_zone(l);
            Ok(())
        })
        .map(Some);
    }
    if let Some((other, _)) = layout.nodes.iter().find(|(_, a)| a.as_str() == addr) {
        return Err(PlacementError::AddressInUse {
            id: *other,
            addr: addr.to_string(),
        });
    }
    next_layout(layout, |l| {
        l.nodes.insert(id, addr.to_string());
        set_zone(l);
        Ok(())
    })
    .map(Some)
}

/// A node's failure domain for placement: its zone label, or the node
/// itself when it has none (so unlabeled nodes never constrain).
fn zone_key(layout: &ClusterLayout, node: u64) -> String {
    match layout.zone_of(node) {
        Some(z) => format!("zone:{z}"),
        None => format!("node:{node}"),
    }
}

/// Distinct failure domains among `nodes`.
fn zones_among(layout: &ClusterLayout, nodes: impl Iterator<Item = u64>) -> usize {
    nodes.map(|n| zone_key(layout, n)).collect::<BTreeSet<_>>().len()
}

/// Whether a replica of `shard` on `to` (with `leaving` moving away) shares
/// no zone with the shard's other members, or sharing cannot be avoided
/// because fewer than [`REPLICATION_FACTOR`] zones (`zones_available`)
/// can take replicas.
fn zone_ok(layout: &ClusterLayout, shard: &ShardInfo, to: u64, leaving: Option<u64>, zones_available: usize) -> bool {
    let key = zone_key(layout, to);
    let shared = shard
        .members()
        .filter(|m| Some(*m) != leaving && *m != to)
        .any(|m| zone_key(layout, m) == key);
    !shared || zones_available < REPLICATION_FACTOR
}

/// Starts decommissioning `node`: its replicas move away, then it leaves.
pub fn drain_node(layout: &ClusterLayout, node: u64) -> Result<Option<ClusterLayout>, PlacementError> {
    if !layout.nodes.contains_key(&node) {
        return Err(PlacementError::UnknownNode(node));
    }
    if layout.meta_replicas.contains(&node) {
        return Err(PlacementError::MetaMember(node));
    }
    if layout.draining.contains(&node) {
        return Ok(None);
    }
    next_layout(layout, |l| {
        l.draining.insert(node);
        Ok(())
    })
    .map(Some)
}

/// Turns automatic rebalancing on or off.
pub fn set_rebalance(layout: &ClusterLayout, enabled: bool) -> Result<Option<ClusterLayout>, PlacementError> {
    if layout.rebalance_enabled == enabled {
        return Ok(None);
    }
    next_layout(layout, |l| {
        l.rebalance_enabled = enabled;
        Ok(())
    })
    .map(Some)
}

/// Draining nodes that hold nothing any more leave the layout.
pub fn remove_drained(layout: &ClusterLayout) -> Option<ClusterLayout> {
    let done: Vec<u64> = layout
        .draining
        .iter()
        .copied()
        .filter(|n| layout.groups_on(*n).next().is_none())
        .collect();
    if done.is_empty() {
        return None;
    }
    next_layout(layout, |l| {
        for n in &done {
            l.draining.remove(n);
            l.nodes.remove(n);
        }
        Ok(())
    })
    .ok()
}

/// A shard's Raft membership as its leader reports it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct MembershipView {
    pub leader: u64,
    /// Voters of the last configuration (the new one while joint).
    pub voters: BTreeSet<u64>,
    pub learners: BTreeSet<u64>,
    /// Whether the configuration is joint (a voter change is half done).
    pub joint: bool,
    /// The leader's last log index.
    pub last_log_index: u64,
    /// Highest log index known replicated to each node.
    pub matched: BTreeMap<u64, u64>,
}

/// What the driver does next for one move.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Ask the leader to add `to` as a learner.
    AddLearner,
    /// The learner is catching up; `behind` entries to go (`None`: nothing
    /// replicated yet).
    WaitCatchUp { behind: Option<u64> },
    /// Ask the leader to make these the voters (removing `from`).
    ChangeVoters(BTreeSet<u64>),
    /// Ask the leader to remove the learner `to` (roll-back).
    RemoveLearner,
    /// Record the finished move in the layout.
    Finish,
    /// Record the rolled-back move in the layout.
    Abandon,
}

/// The voters a move ends with.
pub fn target_voters(layout: &ClusterLayout, op: &MoveOp) -> BTreeSet<u64> {
    let mut v: BTreeSet<u64> = layout
        .shards
        .get(&op.shard)
        .map(|s| s.replicas.iter().copied().collect())
        .unwrap_or_default();
    v.remove(&op.from);
    v.insert(op.to);
    v
}

/// The next step of `op`, from the layout and the shard's membership.
pub fn next_step(layout: &ClusterLayout, op: &MoveOp, view: &MembershipView) -> Step {
    let target = target_voters(layout, op);
    let to_is_voter = view.voters.contains(&op.to);
    if to_is_voter || !op.cancelled {
        if view.voters == target && !view.joint {
            return Step::Finish;
        }
        if to_is_voter || view.joint {
            return Step::ChangeVoters(target);
        }
        if view.learners.contains(&op.to) {
            let matched = view.matched.get(&op.to).copied();
            return match matched {
                Some(m) if m + CATCH_UP_LAG_MAX >= view.last_log_index => Step::ChangeVoters(target),
                m => Step::WaitCatchUp {
                    behind: m.map(|m| view.last_log_index.saturating_sub(m)),
                },
            };
        }
        return Step::AddLearner;
    }
    if view.learners.contains(&op.to) {
        Step::RemoveLearner
    } else {
        Step::Abandon
    }
}

/// A move the planner wants started.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedMove {
    pub shard: u64,
    pub from: u64,
    pub to: u64,
    pub reason: &'static str,
}

/// Replicas (and incoming learners) per node, every node listed.
fn load_per_node(layout: &ClusterLayout) -> BTreeMap<u64, usize> {
    let mut load: BTreeMap<u64, usize> = layout.nodes.keys().map(|n| (*n, 0)).collect();
    for s in layout.shards.values() {
        // An in-flight move counts at its target, not its source.
        let leaving = layout.op_of(s.id).map(|o| o.from);
        for m in s.members().filter(|m| Some(*m) != leaving) {
            *load.entry(m).or_default() += 1;
        }
    }
    load
}

/// Moves to start now so that, in order of priority: replicas leave draining
/// nodes, replicas on nodes down for long leave them, and (when rebalancing
/// is on) replica counts per node end within one of each other. Never two
/// replicas of a shard on one node; at most `moves_max` moves in flight in
/// total. `down` are nodes to treat as gone (down longer than the
/// configured time); `up` are nodes that answered recently: only they
/// receive replicas.
pub fn plan_moves(
    layout: &ClusterLayout,
    up: &BTreeSet<u64>,
    down: &BTreeSet<u64>,
    moves_max: usize,
) -> Vec<PlannedMove> {
    let moves_max = moves_max.min(MOVES_IN_FLIGHT_MAX);
    let mut l = layout.clone();
    let mut out = Vec::new();
    let receivers = |l: &ClusterLayout| -> Vec<u64> {
        l.nodes
            .keys()
            .copied()
            .filter(|n| up.contains(n) && !down.contains(n) && !l.draining.contains(n))
            .collect()
    };
    // Add a planned move to the scratch layout so later choices see it;
    // false when the layout refuses it (then planning stops for this tick).
    let record = |l: &mut ClusterLayout, m: PlannedMove, out: &mut Vec<PlannedMove>| -> bool {
        match start_move(l, m.shard, m.from, m.to, m.reason, 0) {
            Ok(next) => {
                *l = next;
                out.push(m);
                true
            }
            Err(_) => false,
        }
    };
    loop {
        if l.ops.len() >= moves_max {
            return out;
        }
        let load = load_per_node(&l);
        let zones = zones_among(&l, receivers(&l).into_iter());
        // The least loaded receiver that may hold a replica of `shard`
        // while `leaving` moves away.
        let least_loaded_for = |l: &ClusterLayout, shard: u64, leaving: u64| -> Option<u64> {
            let info = l.shards.get(&shard)?;
            receivers(l)
                .into_iter()
                .filter(|n| !info.members().any(|m| m == *n))
                .filter(|n| zone_ok(l, info, *n, Some(leaving), zones))
                .min_by_key(|n| (load.get(n).copied().unwrap_or(0), *n))
        };
        // Shards without an operation, with a replica on a node that must
        // be emptied: draining first, then down.
        let evacuate = l.shards.values().filter(|s| !l.busy(s.id)).find_map(|s| {
            let from = s
                .replicas
                .iter()
                .copied()
                .find(|r| l.draining.contains(r))
                .map(|r| (r, "decommission"))
                .or_else(|| {
                    s.replicas
                        .iter()
                        .copied()
                        .find(|r| down.contains(r))
                        .map(|r| (r, "node down"))
                })?;
            Some((s.id, from))
        });
        if let Some((shard, (from, reason))) = evacuate {
            // Three replicas matter more than the zone spread: fall back to
            // any receiver (the spread is repaired once a zone has room).
            let any_receiver = || {
                let info = l.shards.get(&shard)?;
                receivers(&l)
                    .into_iter()
                    .filter(|n| !info.members().any(|m| m == *n))
                    .min_by_key(|n| (load.get(n).copied().unwrap_or(0), *n))
            };
            let Some(to) = least_loaded_for(&l, shard, from).or_else(any_receiver) else {
                return out; // nowhere to go; try again when a node appears
            };
            if !record(
                &mut l,
                PlannedMove {
                    shard,
                    from,
                    to,
                    reason,
                },
                &mut out,
            ) {
                return out;
            }
            continue;
        }
        // Two replicas of a shard in one zone while another zone could
        // take one: move the one on the busier node.
        if zones >= REPLICATION_FACTOR {
            let spread = l.shards.values().filter(|s| !l.busy(s.id)).find_map(|s| {
                let mut dup: Vec<u64> = s
                    .replicas
                    .iter()
                    .copied()
                    .filter(|r| {
                        s.replicas
                            .iter()
                            .any(|o| o != r && zone_key(&l, *o) == zone_key(&l, *r))
                    })
                    .collect();
                dup.sort_by_key(|r| std::cmp::Reverse((load.get(r).copied().unwrap_or(0), *r)));
                dup.into_iter()
                    .find_map(|from| least_loaded_for(&l, s.id, from).map(|to| (s.id, from, to)))
            });
            if let Some((shard, from, to)) = spread {
                let m = PlannedMove {
                    shard,
                    from,
                    to,
                    reason: "zone spread",
                };
                if !record(&mut l, m, &mut out) {
                    return out;
                }
                continue;
            }
        }
        if !l.rebalance_enabled {
            return out;
        }
        // From the most loaded node to the least loaded one that may take
        // one of its shards, while their counts differ by more than one.
        let mut targets: Vec<u64> = receivers(&l);
        targets.sort_by_key(|n| (load[n], *n));
        let mut sources: Vec<(usize, u64)> = load
            .iter()
            .filter(|(n, _)| !down.contains(n))
            .map(|(n, c)| (*c, *n))
            .collect();
        sources.sort_by(|a, b| b.cmp(a));
        let pick = sources.iter().find_map(|(from_load, from)| {
            targets.iter().filter(|to| load[to] + 1 < *from_load).find_map(|to| {
                l.shards
                    .values()
                    .filter(|s| !l.busy(s.id))
                    .find(|s| {
                        s.replicas.contains(from)
                            && !s.members().any(|m| m == *to)
                            && zone_ok(&l, s, *to, Some(*from), zones)
                    })
                    .map(|s| (s.id, *from, *to))
            })
        });
        match pick {
            Some((shard, from, to)) => {
                let m = PlannedMove {
                    shard,
                    from,
                    to,
                    reason: "rebalance",
                };
                if !record(&mut l, m, &mut out) {
                    return out;
                }
            }
            None => return out,
        }
    }
}

/// One leadership hand-off that brings the leader counts per node closer,
/// when the most and least loaded nodes differ by more than one:
/// - directly from the node leading most shards to the least loaded node
///   holding a replica of one of them, if there is such a node;
/// - else the last hop of the shortest chain of hand-offs from a most
///   loaded node to an underloaded one (A leads a shard with a replica on B,
///   B one with a replica on C, ...). With few shards per node the replicas
///   of a busy node's shards may all sit on nodes that lead as much as it
///   does minus one; a hand-off there keeps the spread and shortens the
///   chain, so the next ticks finish it.
///
/// Only up nodes that are not draining take part; shards with a move in
/// flight are left alone. `leaders`: node -> shards it leads.
///
/// Nothing is handed off while a node that holds replicas is not up: its
/// shards have just elected new leaders (or it is about to come back), and
/// each hand-off would make one more shard unavailable for an election in
/// the middle of a failover. Balancing resumes once it answers again, or
/// once its replicas were re-created elsewhere.
pub fn plan_leader_transfer(
    layout: &ClusterLayout,
    leaders: &BTreeMap<u64, Vec<u64>>,
    up: &BTreeSet<u64>,
) -> Option<(u64, u64, u64)> {
    if layout
        .shards
        .values()
        .flat_map(|s| s.replicas.iter())
        .any(|r| !up.contains(r))
    {
        return None;
    }
    let eligible = |n: &u64| up.contains(n) && !layout.draining.contains(n) && layout.nodes.contains_key(n);
    let mut count: BTreeMap<u64, usize> = layout.nodes.keys().filter(|n| eligible(n)).map(|n| (*n, 0)).collect();
    for (n, shards) in leaders {
        if let Some(c) = count.get_mut(n) {
            *c = shards.iter().filter(|s| layout.shards.contains_key(s)).count();
        }
    }
    // The hand-offs open to `from`: (target's count, target, shard).
    let hand_offs = |from: u64| -> Vec<(usize, u64, u64)> {
        let mut v: Vec<(usize, u64, u64)> = leaders
            .get(&from)
            .into_iter()
            .flatten()
            .filter(|s| !layout.busy(**s))
            .filter_map(|s| layout.shards.get(s))
            .flat_map(|s| {
                let count = &count;
                s.replicas
                    .iter()
                    .filter(move |r| **r != from)
                    .filter_map(move |r| count.get(r).map(|c| (*c, *r, s.id)))
            })
            .collect();
        v.sort_unstable();
        v
    };
    let mut by_load: Vec<(usize, u64)> = count.iter().map(|(n, c)| (*c, *n)).collect();
    by_load.sort_by(|a, b| b.cmp(a));
    for (from_count, from) in &by_load {
        if let Some((_, to, shard)) = hand_offs(*from).into_iter().find(|(c, _, _)| c + 1 < *from_count) {
            return Some((shard, *from, to));
        }
    }
    let max = by_load.first().map_or(0, |(c, _)| *c);
    // Breadth first from the most loaded nodes to any node at least two
    // below them; the hop that reaches it is the one to make now.
    let mut queue: std::collections::VecDeque<u64> =
        by_load.iter().filter(|(c, _)| *c == max).map(|(_, n)| *n).collect();
    let mut seen: BTreeSet<u64> = queue.iter().copied().collect();
    while let Some(a) = queue.pop_front() {
        for (c, b, shard) in hand_offs(a) {
            if !seen.insert(b) {
                continue;
            }
            if c + 2 <= max {
                return Some((shard, a, b));
            }
            queue.push_back(b);
        }
    }
    assert!(seen.len() <= count.len(), "the search visits each node once");
    None
}

/// Whether the replicas per node of `layout` are within one of each other
/// (over nodes not draining) and no shard has two replicas on one node.
pub fn is_balanced(layout: &ClusterLayout) -> bool {
    let load = load_per_node(layout);
    let counts: Vec<usize> = load
        .iter()
        .filter(|(n, _)| !layout.draining.contains(n))
        .map(|(_, c)| *c)
        .collect();
    let spread = counts.iter().max().unwrap_or(&0) - counts.iter().min().unwrap_or(&0);
    spread <= 1
        && layout.shards.values().all(|s| {
            let set: BTreeSet<u64> = s.replicas.iter().copied().collect();
            set.len() == s.replicas.len() && s.replicas.len() <= REPLICATION_FACTOR
        })
}

/// Shard ids a node must host, the metadata group included.
pub fn hosted_by(layout: &ClusterLayout, node: u64) -> BTreeSet<u64> {
    let mut s: BTreeSet<u64> = layout.groups_on(node).map(|s| s.id).collect();
    if layout.meta_replicas.contains(&node) {
        s.insert(META_SHARD_ID);
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nodes(n: u64) -> BTreeMap<u64, String> {
        (1..=n).map(|i| (i, format!("127.0.0.1:{}", 50050 + i))).collect()
    }

    fn all(n: u64) -> BTreeSet<u64> {
        (1..=n).collect()
    }

    #[test]
    fn a_move_is_recorded_then_finished() {
        let l = ClusterLayout::bootstrap(&nodes(4), 4);
        let s1 = l.shards[&1].clone();
        assert_eq!(s1.replicas, vec![1, 2, 3]);
        let l2 = start_move(&l, 1, 2, 4, "test", 7).unwrap();
        assert_eq!(l2.epoch, l.epoch + 1);
        assert_eq!(l2.shards[&1].learners, vec![4]);
        let op = l2.op_of(1).unwrap().clone();
        assert_eq!((op.from, op.to, op.created_ms), (2, 4, 7));
        assert!(matches!(
            start_move(&l2, 1, 3, 4, "again", 0),
            Err(PlacementError::AlreadyAReplica { .. })
        ));
        assert!(matches!(
            start_move(&l2, 1, 1, 2, "busy", 0),
            Err(PlacementError::AlreadyAReplica { .. }) | Err(PlacementError::ShardBusy { .. })
        ));
        let l3 = finish_move(&l2, op.id).unwrap();
        assert_eq!(l3.shards[&1].replicas, vec![1, 4, 3]);
        assert!(l3.shards[&1].learners.is_empty() && l3.ops.is_empty());
        let l4 = abandon_move(&l2, op.id).unwrap();
        assert_eq!(l4.shards[&1].replicas, vec![1, 2, 3]);
        assert!(l4.ops.is_empty() && l4.shards[&1].learners.is_empty());
    }

    #[test]
    fn invalid_moves_are_refused() {
        let l = ClusterLayout::bootstrap(&nodes(4), 4);
        assert_eq!(start_move(&l, 99, 1, 4, "", 0), Err(PlacementError::UnknownShard(99)));
        assert_eq!(start_move(&l, 1, 1, 9, "", 0), Err(PlacementError::UnknownNode(9)));
        assert_eq!(
            start_move(&l, 1, 4, 1, "", 0),
            Err(PlacementError::NotAReplica { shard: 1, node: 4 })
        );
        let d = drain_node(&l, 4).unwrap().unwrap();
        assert_eq!(start_move(&d, 1, 1, 4, "", 0), Err(PlacementError::NodeDraining(4)));
        assert_eq!(drain_node(&l, 1), Err(PlacementError::MetaMember(1)));
    }

    fn view(voters: &[u64], learners: &[u64], joint: bool, last: u64, matched: &[(u64, u64)]) -> MembershipView {
        MembershipView {
            leader: voters[0],
            voters: voters.iter().copied().collect(),
            learners: learners.iter().copied().collect(),
            joint,
            last_log_index: last,
            matched: matched.iter().copied().collect(),
        }
    }

    #[test]
    fn steps_follow_the_membership() {
        let l = start_move(&ClusterLayout::bootstrap(&nodes(4), 4), 1, 2, 4, "t", 0).unwrap();
        let op = l.op_of(1).unwrap().clone();
        let target: BTreeSet<u64> = [1, 3, 4].into();
        assert_eq!(
            next_step(&l, &op, &view(&[1, 2, 3], &[], false, 10, &[])),
            Step::AddLearner
        );
        assert_eq!(
            next_step(&l, &op, &view(&[1, 2, 3], &[4], false, 1000, &[])),
            Step::WaitCatchUp { behind: None }
        );
        assert_eq!(
            next_step(&l, &op, &view(&[1, 2, 3], &[4], false, 1000, &[(4, 10)])),
            Step::WaitCatchUp { behind: Some(990) }
        );
        assert_eq!(
            next_step(&l, &op, &view(&[1, 2, 3], &[4], false, 1000, &[(4, 990)])),
            Step::ChangeVoters(target.clone())
        );
        // Half done (joint) or a voter already: always forward.
        assert_eq!(
            next_step(&l, &op, &view(&[1, 3, 4], &[], true, 1000, &[])),
            Step::ChangeVoters(target.clone())
        );
        assert_eq!(
            next_step(&l, &op, &view(&[1, 3, 4], &[], false, 1000, &[])),
            Step::Finish
        );
        // Cancelled: roll back unless the target is a voter already.
        let c = cancel_move(&l, op.id).unwrap();
        let cop = c.op_of(1).unwrap().clone();
        assert_eq!(
            next_step(&c, &cop, &view(&[1, 2, 3], &[4], false, 10, &[])),
            Step::RemoveLearner
        );
        assert_eq!(
            next_step(&c, &cop, &view(&[1, 2, 3], &[], false, 10, &[])),
            Step::Abandon
        );
        assert_eq!(
            next_step(&c, &cop, &view(&[1, 2, 3, 4], &[], true, 10, &[])),
            Step::ChangeVoters(target)
        );
    }

    /// Applies every planned move at once, as if each completed.
    fn settle(mut l: ClusterLayout, up: &BTreeSet<u64>, down: &BTreeSet<u64>) -> (ClusterLayout, usize) {
        let mut moves = 0;
        for _ in 0..1000 {
            let plan = plan_moves(&l, up, down, 4);
            if plan.is_empty() && l.ops.is_empty() {
                return (l, moves);
            }
            for m in plan {
                l = start_move(&l, m.shard, m.from, m.to, m.reason, 0).unwrap();
                moves += 1;
            }
            let ids: Vec<u64> = l.ops.keys().copied().collect();
            for id in ids {
                l = finish_move(&l, id).unwrap();
            }
            if let Some(n) = remove_drained(&l) {
                l = n;
            }
        }
        panic!("placement did not converge");
    }

    #[test]
    fn growing_from_three_to_five_balances_within_one() {
        let mut l = ClusterLayout::bootstrap(&nodes(3), 16);
        for id in [4, 5] {
            l = add_node(&l, id, &format!("127.0.0.1:{}", 50050 + id), "")
                .unwrap()
                .unwrap();
        }
        assert!(!is_balanced(&l));
        let (l, moves) = settle(l, &all(5), &BTreeSet::new());
        assert!(is_balanced(&l), "{:?}", load_per_node(&l));
        assert!(moves <= 20, "{moves} moves");
        for s in l.shards.values() {
            assert_eq!(s.replicas.len(), 3);
        }
    }

    #[test]
    fn decommission_empties_the_node_and_removes_it() {
        let l = ClusterLayout::bootstrap(&nodes(5), 16);
        let l = drain_node(&l, 5).unwrap().unwrap();
        let (l, _) = settle(l, &all(5), &BTreeSet::new());
        assert!(!l.nodes.contains_key(&5));
        assert!(l.shards.values().all(|s| !s.replicas.contains(&5)));
        assert!(is_balanced(&l));
    }

    #[test]
    fn replicas_of_a_down_node_are_recreated_elsewhere_even_without_rebalance() {
        let l = ClusterLayout::bootstrap(&nodes(4), 8);
        let l = set_rebalance(&l, false).unwrap().unwrap();
        let up: BTreeSet<u64> = [1, 2, 3].into();
        let (l, moves) = settle(l, &up, &[4].into());
        assert!(moves > 0);
        assert!(l
            .shards
            .values()
            .all(|s| !s.replicas.contains(&4) && s.replicas.len() == 3));
    }

    #[test]
    fn plans_respect_the_bound_and_never_double_a_replica() {
        let mut l = ClusterLayout::bootstrap(&nodes(3), 32);
        for id in 4..=7 {
            l = add_node(&l, id, &format!("a{id}"), "").unwrap().unwrap();
        }
        let plan = plan_moves(&l, &all(7), &BTreeSet::new(), 3);
        assert_eq!(plan.len(), 3);
        let shards: BTreeSet<u64> = plan.iter().map(|m| m.shard).collect();
        assert_eq!(shards.len(), 3, "one move per shard");
        assert!(plan_moves(&l, &all(7), &BTreeSet::new(), 0).is_empty());
    }

    #[test]
    fn leader_transfers_even_out_leader_counts() {
        let l = ClusterLayout::bootstrap(&nodes(3), 6);
        // Node 1 leads everything.
        let mut leaders: BTreeMap<u64, Vec<u64>> = BTreeMap::from([(1, (1..=6).collect()), (2, vec![]), (3, vec![])]);
        let mut transfers = 0;
        while let Some((shard, from, to)) = plan_leader_transfer(&l, &leaders, &all(3)) {
            assert!(l.shards[&shard].replicas.contains(&to));
            leaders.get_mut(&from).unwrap().retain(|s| *s != shard);
            leaders.get_mut(&to).unwrap().push(shard);
            transfers += 1;
            assert!(transfers <= 6, "does not converge: {leaders:?}");
        }
        let counts: Vec<usize> = leaders.values().map(Vec::len).collect();
        assert_eq!(counts, vec![2, 2, 2]);
        // Down nodes get nothing.
        let leaders = BTreeMap::from([(1, vec![1, 2, 3]), (2, vec![4, 5, 6]), (3, vec![])]);
        assert_eq!(plan_leader_transfer(&l, &leaders, &[1, 2].into()), None);
        // Right after a failover the survivors may be uneven; no hand-off
        // while the lost node still holds replicas, one once it is back.
        let leaders = BTreeMap::from([(1, vec![1, 2, 3, 4]), (2, vec![5, 6]), (3, vec![])]);
        assert_eq!(plan_leader_transfer(&l, &leaders, &[1, 2].into()), None);
        assert!(plan_leader_transfer(&l, &leaders, &all(3)).is_some());
    }

    #[test]
    fn leader_transfers_chain_when_no_direct_hand_off_helps() {
        // Seen in t71: five nodes, five shards, node 4 leads two shards
        // that have no replica on node 5, which leads nothing.
        let mut l = ClusterLayout::bootstrap(&nodes(5), 5);
        let replicas: [(u64, [u64; 3]); 5] = [
            (1, [1, 3, 4]),
            (2, [5, 3, 4]),
            (3, [5, 1, 2]),
            (4, [5, 2, 3]),
            (5, [1, 2, 4]),
        ];
        for (s, r) in replicas {
            l.shards.get_mut(&s).unwrap().replicas = r.to_vec();
        }
        let mut leaders: BTreeMap<u64, Vec<u64>> =
            BTreeMap::from([(1, vec![3]), (2, vec![4]), (3, vec![2]), (4, vec![1, 5]), (5, vec![])]);
        let mut transfers = 0;
        while let Some((shard, from, to)) = plan_leader_transfer(&l, &leaders, &all(5)) {
            assert!(
                l.shards[&shard].replicas.contains(&to),
                "{shard} has no replica on {to}"
            );
            assert!(leaders[&from].contains(&shard));
            let spread = |m: &BTreeMap<u64, Vec<u64>>| {
                let c: Vec<usize> = m.values().map(Vec::len).collect();
                c.iter().max().unwrap() - c.iter().min().unwrap()
            };
            let before = spread(&leaders);
            leaders.get_mut(&from).unwrap().retain(|s| *s != shard);
            leaders.get_mut(&to).unwrap().push(shard);
            assert!(spread(&leaders) <= before, "a hand-off widened the spread: {leaders:?}");
            transfers += 1;
            assert!(transfers <= 4, "does not converge: {leaders:?}");
        }
        let counts: Vec<usize> = leaders.values().map(Vec::len).collect();
        assert_eq!(counts, vec![1, 1, 1, 1, 1], "{leaders:?}");
    }

    #[test]
    fn splits_halve_a_range_and_keep_the_ring_whole() {
        let l = ClusterLayout::bootstrap(&nodes(4), 2);
        let r2 = l.shards[&2].ranges[0];
        assert_eq!(r2.end, None);
        let s = start_split(&l, 2, None, "test", 0).unwrap();
        let sp = s.splits[&2].clone();
        assert_eq!(sp.new_shard, 3);
        assert!(sp.at > r2.start);
        assert_eq!(l.shards[&2].replicas, vec![2, 3, 4]);
        assert!(matches!(
            start_move(&s, 2, 2, 1, "", 0),
            Err(PlacementError::SplitPending(2))
        ));
        assert!(matches!(
            start_split(&s, 2, None, "", 0),
            Err(PlacementError::SplitPending(2))
        ));
        let f = finish_split(&s, 2).unwrap();
        f.check().unwrap();
        assert_eq!(f.shards.len(), 3);
        assert_eq!(f.shard_for_token(sp.at), Some(3));
        assert_eq!(f.shard_for_token(sp.at - 1), Some(2));
        assert_eq!(f.shard_for_token(u64::MAX), Some(3));
        assert_eq!(f.shards[&3].replicas, f.shards[&2].replicas);
        assert_eq!(f.next_shard_id, 4);
        // A token outside, or at the start, is refused.
        assert!(start_split(&l, 1, Some(0), "", 0).is_err());
        assert!(start_split(&l, 1, Some(r2.start), "", 0).is_err());
        // Auto split picks the largest shard over the threshold.
        let sizes = BTreeMap::from([(1, 10), (2, 500)]);
        assert_eq!(plan_split(&l, &sizes, 100, 0), Some((2, SplitReason::Size)));
        assert_eq!(plan_split(&l, &sizes, 1000, 0), None);
        assert_eq!(plan_split(&l, &sizes, 0, 0), None);
        assert_eq!(plan_split(&s, &sizes, 100, 0), None, "busy shards are not split again");
    }

    #[test]
    fn split_until_every_node_can_lead_a_shard() {
        // Three shards, one per initial node; two more nodes join.
        let mut l = ClusterLayout::bootstrap(&nodes(3), 3);
        for id in 4..=5 {
            l = add_node(&l, id, &format!("127.0.0.1:{}", 5000 + id), "")
                .unwrap()
                .unwrap();
        }
        let sizes = BTreeMap::from([(1, 10), (2, 30), (3, 20)]);
        assert_eq!(plan_split(&l, &sizes, 0, 0), None, "0 turns the rule off");
        assert_eq!(plan_split(&l, &sizes, 0, 1), Some((2, SplitReason::NodeCount)));
        assert_eq!(
            plan_split(&l, &BTreeMap::new(), 0, 1),
            Some((1, SplitReason::NodeCount)),
            "unknown sizes count as 0, ties go to the lowest id"
        );
        assert_eq!(
            plan_split(&l, &sizes, 25, 1),
            Some((2, SplitReason::Size)),
            "a size split comes first"
        );
        // One split in flight: the others wait for it (the driver plans
        // only when nothing is in flight; busy shards never qualify).
        let s = start_split(&l, 2, None, "t", 0).unwrap();
        assert_eq!(plan_split(&s, &sizes, 0, 1), Some((3, SplitReason::NodeCount)));
        let mut f = finish_split(&s, 2).unwrap();
        f = finish_split(&start_split(&f, 3, None, "t", 0).unwrap(), 3).unwrap();
        assert_eq!(f.shards.len(), 5);
        assert_eq!(plan_split(&f, &sizes, 0, 1), None, "five shards for five nodes");
        assert_eq!(plan_split(&f, &sizes, 0, 2).map(|p| p.1), Some(SplitReason::NodeCount));
        // A draining node does not count.
        let d = drain_node(&f, 5).unwrap().unwrap();
        assert_eq!(plan_split(&d, &sizes, 0, 1), None);
    }

    fn zoned(n: u64, zones: &[&str]) -> ClusterLayout {
        let mut l = ClusterLayout::bootstrap(&nodes(n), 12);
        for id in 1..=n {
            let z = zones[(id as usize - 1) % zones.len()];
            l = add_node(&l, id, &l.nodes[&id].clone(), z).unwrap().unwrap();
        }
        l
    }

    fn zones_of(l: &ClusterLayout, s: &ShardInfo) -> BTreeSet<String> {
        s.replicas.iter().map(|r| zone_key(l, *r)).collect()
    }

    #[test]
    fn replicas_spread_one_per_zone_when_zones_allow() {
        // Six nodes in three zones, two each: round-robin puts some shards
        // twice in one zone.
        let l = zoned(6, &["a", "a", "b", "b", "c", "c"]);
        assert!(l.shards.values().any(|s| zones_of(&l, s).len() < 3));
        let (l, moves) = settle(l, &all(6), &BTreeSet::new());
        assert!(moves > 0);
        for s in l.shards.values() {
            assert_eq!(zones_of(&l, s).len(), 3, "shard {} has {:?}", s.id, s.replicas);
        }
        assert!(is_balanced(&l), "{:?}", load_per_node(&l));
        // Operators cannot break the spread either.
        let s = l.shards.values().next().unwrap().clone();
        let from = s.replicas[0];
        let same_zone_free = (1..=6).find(|n| !s.replicas.contains(n) && l.zone_of(*n) == l.zone_of(s.replicas[1]));
        if let Some(to) = same_zone_free {
            assert!(matches!(
                check_zones_of_move(&l, s.id, from, to),
                Err(PlacementError::ZoneConflict { .. })
            ));
        }
    }

    #[test]
    fn a_dead_nodes_replicas_are_recreated_even_if_zones_then_repeat() {
        // Zone b has only node 2; when it dies, three replicas matter more.
        let l = zoned(4, &["a", "b", "c", "a"]);
        let up: BTreeSet<u64> = [1, 3, 4].into();
        let (l, _) = settle(l, &up, &[2].into());
        assert!(l
            .shards
            .values()
            .all(|s| s.replicas.len() == 3 && !s.replicas.contains(&2)));
    }

    #[test]
    fn fewer_zones_than_replicas_still_places_and_converges() {
        let l = zoned(4, &["a", "b"]);
        let (l, _) = settle(l, &all(4), &BTreeSet::new());
        assert!(is_balanced(&l));
        let l = drain_node(&l, 4).unwrap().unwrap();
        let (l, _) = settle(l, &all(4), &BTreeSet::new());
        assert!(l
            .shards
            .values()
            .all(|s| s.replicas.len() == 3 && !s.replicas.contains(&4)));
    }

    #[test]
    fn joins_are_idempotent_and_conflicts_refused() {
        let l = ClusterLayout::bootstrap(&nodes(3), 2);
        let l2 = add_node(&l, 4, "h:4", "").unwrap().unwrap();
        assert_eq!(add_node(&l2, 4, "h:4", ""), Ok(None));
        assert!(matches!(
            add_node(&l2, 4, "h:5", ""),
            Err(PlacementError::NodeExists { .. })
        ));
        assert!(matches!(
            add_node(&l2, 5, "h:4", ""),
            Err(PlacementError::AddressInUse { .. })
        ));
        let l3 = add_node(&l2, 4, "h:4", "eu-1").unwrap().unwrap();
        assert_eq!(l3.zone_of(4), Some("eu-1"));
        assert_eq!(add_node(&l3, 4, "h:4", "eu-1"), Ok(None));
    }
}
