//! Nemeses: which faults a run injects, the schedule of those faults
//! generated from the run's seed, and the task that carries it out.
//!
//! A [`NemesisSpec`] is what `--nemesis` names: `none`, one kind (`kill`,
//! `pause`, `partition`, `skew`, `move`, `split`, `transfer`,
//! `membership`), `topology` for the last four, a comma list of kinds, or
//! `all` (alias `combined`) for every kind. [`schedule`] turns a spec, the cluster's size
//! and the seed into a list of [`Step`]s, each a [`Fault`] with a start time
//! and a duration. The schedule is a pure function of its inputs: the same
//! seed gives the same schedule, which is written to `nemesis-schedule.json`
//! in the run folder. Only "the leader of shard *k*" is resolved when the
//! step starts (it depends on elections); the node actually hit is recorded
//! in the history.
//!
//! Faults of one class (process: kill and pause; network: partitions;
//! clock: skew; topology: moves, splits, leader transfers, joins and
//! decommissions) never overlap, so each can be undone without bookkeeping
//! across faults; faults of different classes may overlap (a pause during a
//! partition, a kill while a node's clock is off). Every step ends before
//! the time limit, and [`execute`] records a start and a stop event
//! (`"process":"nemesis"`) for every step it carries out, with the step's
//! `id` in both so that plots and readers can pair them.
//!
//! Topology faults change the cluster's layout through the Admin API
//! (`ringkv.v1.Admin`, on any node, forwarded to the metadata leader): a
//! replica move, a shard split, a leader transfer, a node join (a new
//! `ringkv-server --join`) or a decommission (`RemoveNode` of a joined
//! node; the bootstrap nodes host the metadata group and are never
//! removed). Which shard, which replica and which destination are resolved
//! when the step starts, from `ListShards` and `ListNodes`, and recorded in
//! the start event. They run in their own task (`crate::topology`), one at a
//! time: a step ends when its operation finished (the move left
//! `ListOperations`, the new shard has a leader, the joined node is up, the
//! decommissioned node left the layout) or at its scheduled end, whichever
//! comes first; the stop event says which (`"outcome"`: `done`, `timeout`,
//! `failed` with the Admin error, or `skipped` with the reason). An Admin
//! error is part of the record, not a harness failure.

use std::collections::BTreeMap;
use std::collections::BTreeSet;
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::Rng;
use rand::SeedableRng;
use serde::Deserialize;
use serde::Serialize;
use serde_json::json;
use serde_json::Value;
use tokio::time::Instant;

use crate::cluster::Cluster;
use crate::history::EventType;
use crate::history::Process;
use crate::history::F;
use crate::runner::Recorder;

/// Most steps one schedule holds, whatever the time limit.
pub const STEPS_MAX: usize = 10_000;
/// Largest clock offset the skew nemesis applies. It stays below the
/// default `sessions.ttl_ms` (10 minutes): a leader whose clock jumps
/// further ahead than the TTL expires every idle session by design.
pub const SKEW_MAX: Duration = Duration::from_secs(300);
/// Salt mixed into the seed so the schedule's random stream differs from
/// the clients'.
const SCHEDULE_SALT: u64 = 0x6e65_6d65_7369_7321;

/// One kind of fault `--nemesis` can name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// kill -9 and restart: one random node, the leader of a shard, or all nodes.
    Kill,
    /// SIGSTOP and SIGCONT: one random node or the leader of a shard.
    Pause,
    /// iptables DROP rules between nodes (private network namespace).
    Partition,
    /// Wall-clock offsets through libfaketime.
    Skew,
    /// Admin `MoveReplica` of one replica of a shard to a node without a copy.
    Move,
    /// Admin `SplitShard` at the middle of a shard's range.
    Split,
    /// Admin `TransferLeader` of a shard to another of its voters.
    Transfer,
    /// A node joins (`ringkv-server --join`), or a joined node is
    /// decommissioned (Admin `RemoveNode`) and stopped.
    Membership,
}

impl Kind {
    pub const ALL: [Kind; 8] = [
        Kind::Kill,
        Kind::Pause,
        Kind::Partition,
        Kind::Skew,
        Kind::Move,
        Kind::Split,
        Kind::Transfer,
        Kind::Membership,
    ];
    /// The kinds `topology` names.
    pub const TOPOLOGY: [Kind; 4] = [Kind::Move, Kind::Split, Kind::Transfer, Kind::Membership];

    pub fn name(self) -> &'static str {
        match self {
            Kind::Kill => "kill",
            Kind::Pause => "pause",
            Kind::Partition => "partition",
            Kind::Skew => "skew",
            Kind::Move => "move",
            Kind::Split => "split",
            Kind::Transfer => "transfer",
            Kind::Membership => "membership",
        }
    }

    /// Faults of one class never overlap.
    fn class(self) -> usize {
        match self {
            Kind::Kill | Kind::Pause => 0,
            Kind::Partition => 1,
            Kind::Skew => 2,
            Kind::Move | Kind::Split | Kind::Transfer | Kind::Membership => TOPOLOGY_CLASS,
        }
    }

    pub fn is_topology(self) -> bool {
        self.class() == TOPOLOGY_CLASS
    }
}

/// Number of fault classes (see [`Kind::class`]).
const CLASSES: usize = 4;
/// The class of the faults that change the layout.
const TOPOLOGY_CLASS: usize = 3;
/// Replicas per shard (the server's fixed replication factor).
pub const REPLICAS: u64 = 3;
/// Most joined nodes in the cluster at once: a join is scheduled only
/// below it, a decommission at it.
pub const JOINED_MAX: usize = 2;

/// Which faults a run injects (`--nemesis`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct NemesisSpec {
    pub kinds: BTreeSet<Kind>,
}

impl NemesisSpec {
    pub fn none() -> NemesisSpec {
        NemesisSpec::default()
    }

    pub fn of(kinds: &[Kind]) -> NemesisSpec {
        NemesisSpec {
            kinds: kinds.iter().copied().collect(),
        }
    }

    pub fn all() -> NemesisSpec {
        NemesisSpec::of(&Kind::ALL)
    }

    pub fn has(&self, k: Kind) -> bool {
        self.kinds.contains(&k)
    }

    /// Partitions need a private network namespace.
    pub fn needs_netns(&self) -> bool {
        self.has(Kind::Partition)
    }
}

impl fmt::Display for NemesisSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.kinds.is_empty() {
            return f.write_str("none");
        }
        let names: Vec<&str> = self.kinds.iter().map(|k| k.name()).collect();
        f.write_str(&names.join(","))
    }
}

impl FromStr for NemesisSpec {
    type Err = String;
    fn from_str(s: &str) -> Result<NemesisSpec, String> {
        let mut kinds = BTreeSet::new();
        for part in s.split(',').map(str::trim) {
            match part {
                "none" => {}
                "all" | "combined" => kinds.extend(Kind::ALL),
                "kill" => drop(kinds.insert(Kind::Kill)),
                "pause" => drop(kinds.insert(Kind::Pause)),
                "partition" => drop(kinds.insert(Kind::Partition)),
                "skew" | "clock" => drop(kinds.insert(Kind::Skew)),
                "move" => drop(kinds.insert(Kind::Move)),
                "split" => drop(kinds.insert(Kind::Split)),
                "transfer" | "transfer-leader" => drop(kinds.insert(Kind::Transfer)),
                "membership" | "join" | "decommission" => drop(kinds.insert(Kind::Membership)),
                "topology" => kinds.extend(Kind::TOPOLOGY),
                other => {
                    return Err(format!(
                        "unknown nemesis {other:?} (expected none, kill, pause, partition, skew, \
                         move, split, transfer, membership, topology, all/combined, or a comma list)"
                    ))
                }
            }
        }
        Ok(NemesisSpec { kinds })
    }
}

/// Which node(s) a process fault hits.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "target")]
pub enum Target {
    Node {
        node: u64,
    },
    /// The leader of the `shard`-th data shard (in id order), looked up when
    /// the step starts; a random node if no leader is known then.
    LeaderOf {
        shard: u32,
    },
    All,
}

/// A network partition: which pairs of nodes cannot talk.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "shape")]
pub enum Partition {
    /// One node cut off from all others.
    Isolate { node: u64 },
    /// `minority` (the smaller half) cut off from the rest.
    Halves { minority: Vec<u64> },
    /// Two halves that only `bridge` connects (5 nodes or more).
    Bridge {
        bridge: u64,
        left: Vec<u64>,
        right: Vec<u64>,
    },
    /// Nodes in a ring, each seeing only itself and its two neighbours: every
    /// node sees a majority, no two the same one (exactly 5 nodes).
    MajoritiesRing { ring: Vec<u64> },
}

impl Partition {
    /// The node pairs (a < b) that are cut, among the cluster's current
    /// `nodes` (the bootstrap nodes the shape names and any joined ones).
    pub fn cuts(&self, nodes: &[u64]) -> Vec<(u64, u64)> {
        let mut cuts = BTreeSet::new();
        let mut cut = |a: u64, b: u64| {
            if a != b {
                cuts.insert((a.min(b), a.max(b)));
            }
        };
        match self {
            Partition::Isolate { node } => nodes.iter().for_each(|&o| cut(*node, o)),
            Partition::Halves { minority } => {
                for a in minority {
                    nodes.iter().filter(|o| !minority.contains(o)).for_each(|&b| cut(*a, b));
                }
            }
            Partition::Bridge { left, right, .. } => {
                for a in left {
                    right.iter().for_each(|b| cut(*a, *b));
                }
            }
            Partition::MajoritiesRing { ring } => {
                let n = ring.len();
                for i in 0..n {
                    for j in i + 1..n {
                        let d = j - i;
                        if d != 1 && d != n - 1 {
                            cut(ring[i], ring[j]);
                        }
                    }
                }
            }
        }
        cuts.into_iter().collect()
    }

    fn name(&self) -> &'static str {
        match self {
            Partition::Isolate { .. } => "partition-isolate",
            Partition::Halves { .. } => "partition-halves",
            Partition::Bridge { .. } => "partition-bridge",
            Partition::MajoritiesRing { .. } => "partition-majorities-ring",
        }
    }
}

/// One fault.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "kind")]
pub enum Fault {
    Kill(Target),
    Pause(Target),
    Partition(Partition),
    /// Wall-clock offsets in milliseconds, per node.
    Skew {
        offsets_ms: Vec<(u64, i64)>,
    },
    /// Move one replica of the `shard`-th data shard (in id order, modulo
    /// the shards at the time) to a node that holds no copy; replica and
    /// destination are picked when the step starts.
    Move {
        shard: u32,
    },
    /// Split the `shard`-th data shard at the middle of its range.
    Split {
        shard: u32,
    },
    /// Hand the `shard`-th data shard's leadership to another voter.
    TransferLeader {
        shard: u32,
    },
    /// Start node `node` with `--join` through a bootstrap node.
    Join {
        node: u64,
    },
    /// Decommission the joined node `node`, then stop it.
    Decommission {
        node: u64,
    },
}

impl Fault {
    pub fn kind(&self) -> Kind {
        match self {
            Fault::Kill(_) => Kind::Kill,
            Fault::Pause(_) => Kind::Pause,
            Fault::Partition(_) => Kind::Partition,
            Fault::Skew { .. } => Kind::Skew,
            Fault::Move { .. } => Kind::Move,
            Fault::Split { .. } => Kind::Split,
            Fault::TransferLeader { .. } => Kind::Transfer,
            Fault::Join { .. } | Fault::Decommission { .. } => Kind::Membership,
        }
    }

    /// A name for counts and plots, e.g. `kill-leader`, `partition-bridge`.
    pub fn name(&self) -> &'static str {
        match self {
            Fault::Kill(Target::Node { .. }) => "kill-node",
            Fault::Kill(Target::LeaderOf { .. }) => "kill-leader",
            Fault::Kill(Target::All) => "kill-all",
            Fault::Pause(Target::Node { .. }) => "pause-node",
            Fault::Pause(Target::LeaderOf { .. }) => "pause-leader",
            Fault::Pause(Target::All) => "pause-all",
            Fault::Partition(p) => p.name(),
            Fault::Skew { offsets_ms } if offsets_ms.len() == 1 => "skew-node",
            Fault::Skew { .. } => "skew-all",
            Fault::Move { .. } => "move-replica",
            Fault::Split { .. } => "split-shard",
            Fault::TransferLeader { .. } => "transfer-leader",
            Fault::Join { .. } => "join-node",
            Fault::Decommission { .. } => "decommission-node",
        }
    }

    /// The history's `f` for the start and the stop of this fault.
    pub fn f_names(&self) -> (&'static str, &'static str) {
        match self {
            Fault::Kill(_) => ("kill", "start"),
            Fault::Pause(_) => ("pause", "resume"),
            Fault::Partition(_) => ("start-partition", "stop-partition"),
            Fault::Skew { .. } => ("bump-clock", "reset-clock"),
            Fault::Move { .. } => ("move", "move-done"),
            Fault::Split { .. } => ("split", "split-done"),
            Fault::TransferLeader { .. } => ("transfer-leader", "transfer-done"),
            Fault::Join { .. } => ("join", "join-done"),
            Fault::Decommission { .. } => ("decommission", "decommission-done"),
        }
    }
}

/// Every nemesis event `f` that starts a fault, with its kind's name, and
/// every one that stops one (for counts and plots).
pub const START_FS: [(&str, &str); 9] = [
    ("kill", "kill"),
    ("pause", "pause"),
    ("start-partition", "partition"),
    ("bump-clock", "skew"),
    ("move", "move"),
    ("split", "split"),
    ("transfer-leader", "transfer"),
    ("join", "membership"),
    ("decommission", "membership"),
];
pub const STOP_FS: [(&str, &str); 9] = [
    ("start", "kill"),
    ("resume", "pause"),
    ("stop-partition", "partition"),
    ("reset-clock", "skew"),
    ("move-done", "move"),
    ("split-done", "split"),
    ("transfer-done", "transfer"),
    ("join-done", "membership"),
    ("decommission-done", "membership"),
];

/// One scheduled fault.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Step {
    pub id: u64,
    /// Since the start of the load.
    pub start_ms: u64,
    pub duration_ms: u64,
    pub fault: Fault,
}

/// What a schedule is generated for.
#[derive(Debug, Clone)]
pub struct ScheduleParams {
    pub seed: u64,
    pub nodes: u64,
    pub shards: u32,
    pub time_limit: Duration,
    /// Mean time between the starts of two faults.
    pub interval: Duration,
}

/// The seeded schedule: steps sorted by start time, each ending before the
/// time limit.
pub fn schedule(spec: &NemesisSpec, p: &ScheduleParams) -> Vec<Step> {
    let kinds: Vec<Kind> = spec.kinds.iter().copied().collect();
    if kinds.is_empty() || p.nodes == 0 {
        return Vec::new();
    }
    let mut rng = StdRng::seed_from_u64(p.seed ^ SCHEDULE_SALT);
    let limit = p.time_limit.as_millis() as u64;
    let interval = (p.interval.as_millis() as u64).max(1000);
    // Shortest fault worth scheduling, and the recovery time between two
    // faults of one class.
    let min_duration = interval / 2;
    let settle = interval / 4;
    let mut class_free = [0u64; CLASSES];
    let mut steps = Vec::new();
    let mut members = Members {
        next_id: p.nodes + 1,
        joined: Vec::new(),
    };
    // Moves need a node without a copy of the shard: with no more nodes
    // than replicas, the first topology fault is a join.
    let mut join_first = p.nodes <= REPLICAS && (spec.has(Kind::Move) || spec.has(Kind::Membership));
    // The first fault after a quiet start, so the load is under way.
    let mut t = interval / 2;
    while t < limit && steps.len() < STEPS_MAX {
        let kind = kinds[rng.gen_range(0..kinds.len())];
        let fault = if kind.is_topology() && join_first {
            join_first = false;
            members.join()
        } else {
            pick_fault(kind, p, &mut rng, &mut members)
        };
        // Joins and decommissions wait for the rebalancer's or the drain's
        // replica copies: they get one to two intervals.
        let (shortest, longest) = if kind == Kind::Membership {
            (interval, interval * 2)
        } else {
            (min_duration, interval)
        };
        let duration = rng.gen_range(shortest..=longest);
        let gap = rng.gen_range(interval / 2..=interval * 3 / 2);
        let start = t.max(class_free[kind.class()]);
        t += gap;
        if start + min_duration > limit {
            continue;
        }
        let duration = duration.min(limit - start);
        class_free[kind.class()] = start + duration + settle;
        steps.push(Step {
            id: 0,
            start_ms: start,
            duration_ms: duration,
            fault,
        });
    }
    steps.sort_by_key(|s| s.start_ms);
    for (i, s) in steps.iter_mut().enumerate() {
        s.id = i as u64 + 1;
    }
    steps
}

fn random_node(p: &ScheduleParams, rng: &mut StdRng) -> u64 {
    rng.gen_range(1..=p.nodes)
}

/// The joined nodes as the schedule plans them (topology steps run one at
/// a time, in schedule order, so this is the order they happen in).
/// Joined nodes get fresh ids after the bootstrap's; an id is never
/// reused, since a removed node's data dir belongs to a former member.
struct Members {
    next_id: u64,
    joined: Vec<u64>,
}

impl Members {
    fn join(&mut self) -> Fault {
        let node = self.next_id;
        self.next_id += 1;
        self.joined.push(node);
        Fault::Join { node }
    }
}

/// A concrete fault of `kind` for a cluster of `p.nodes` bootstrap nodes.
/// Process, network and clock faults hit bootstrap nodes only (or, for
/// "the leader of shard k", whichever node leads it then).
fn pick_fault(kind: Kind, p: &ScheduleParams, rng: &mut StdRng, members: &mut Members) -> Fault {
    let shard = rng.gen_range(0..p.shards.max(1));
    match kind {
        Kind::Move => Fault::Move { shard },
        Kind::Split => Fault::Split { shard },
        Kind::Transfer => Fault::TransferLeader { shard },
        Kind::Membership => {
            let n = members.joined.len();
            if n == 0 || (n < JOINED_MAX && rng.gen_bool(0.5)) {
                members.join()
            } else {
                let node = members.joined.remove(rng.gen_range(0..n));
                Fault::Decommission { node }
            }
        }
        Kind::Kill => match rng.gen_range(0..8) {
            0..=3 => Fault::Kill(Target::Node {
                node: random_node(p, rng),
            }),
            4..=6 => Fault::Kill(Target::LeaderOf { shard }),
            _ => Fault::Kill(Target::All),
        },
        Kind::Pause => match rng.gen_range(0..2) {
            0 => Fault::Pause(Target::Node {
                node: random_node(p, rng),
            }),
            _ => Fault::Pause(Target::LeaderOf { shard }),
        },
        Kind::Partition => {
            let mut shapes = vec![0, 1];
            if p.nodes >= 5 {
                shapes.push(2);
            }
            if p.nodes == 5 {
                shapes.push(3);
            }
            let mut order: Vec<u64> = (1..=p.nodes).collect();
            order.shuffle(rng);
            let half = (p.nodes / 2) as usize;
            Fault::Partition(match shapes[rng.gen_range(0..shapes.len())] {
                0 => Partition::Isolate { node: order[0] },
                1 => Partition::Halves {
                    minority: sorted(&order[..half.max(1)]),
                },
                2 => Partition::Bridge {
                    bridge: order[0],
                    left: sorted(&order[1..=half]),
                    right: sorted(&order[half + 1..]),
                },
                _ => Partition::MajoritiesRing { ring: order },
            })
        }
        Kind::Skew => {
            let targets: Vec<u64> = if rng.gen_range(0..2) == 0 {
                vec![random_node(p, rng)]
            } else {
                (1..=p.nodes).collect()
            };
            let offsets_ms = targets.into_iter().map(|n| (n, skew_offset(rng))).collect();
            Fault::Skew { offsets_ms }
        }
    }
}

fn sorted(nodes: &[u64]) -> Vec<u64> {
    let mut v = nodes.to_vec();
    v.sort_unstable();
    v
}

/// A clock offset: small (0.1-2 s), medium (2-60 s) or large (1-5 min),
/// ahead or behind.
fn skew_offset(rng: &mut StdRng) -> i64 {
    let max = SKEW_MAX.as_millis() as i64;
    let magnitude = match rng.gen_range(0..3) {
        0 => rng.gen_range(100..=2_000),
        1 => rng.gen_range(2_000..=60_000),
        _ => rng.gen_range(60_000..=max),
    };
    if rng.gen_bool(0.5) {
        magnitude
    } else {
        -magnitude
    }
}

/// Faults currently in effect, for the progress line.
pub type Active = Arc<std::sync::Mutex<BTreeMap<u64, String>>>;

/// What a started step actually did, needed to undo it.
struct Applied {
    nodes: Vec<u64>,
    value: Value,
}

/// Errors of the nemesis.
#[derive(Debug, thiserror::Error)]
pub enum NemesisError {
    #[error("iptables {args}: {reason}")]
    Iptables { args: String, reason: String },
    #[error("step {id} ({name}): {cause:#}")]
    Cluster {
        id: u64,
        name: &'static str,
        cause: anyhow::Error,
    },
}

fn iptables(args: &[&str]) -> Result<(), NemesisError> {
    let err = |reason: String| NemesisError::Iptables {
        args: args.join(" "),
        reason,
    };
    let st = std::process::Command::new("iptables")
        .args(args)
        .status()
        .map_err(|e| err(e.to_string()))?;
    if st.success() {
        Ok(())
    } else {
        Err(err(format!("exit status {st}")))
    }
}

/// Drops every packet between the nodes of each pair, both ways.
fn cut(pairs: &[(u64, u64)]) -> Result<(), NemesisError> {
    for &(a, b) in pairs {
        let (a, b) = (crate::cluster::node_ip(a), crate::cluster::node_ip(b));
        iptables(&["-A", "INPUT", "-s", &a, "-d", &b, "-j", "DROP"])?;
        iptables(&["-A", "INPUT", "-s", &b, "-d", &a, "-j", "DROP"])?;
    }
    Ok(())
}

/// Removes every partition rule.
pub fn heal_network() -> Result<(), NemesisError> {
    iptables(&["-F", "INPUT"])
}

/// Carries out `steps` (from [`schedule`]) against the cluster, recording
/// a start and a stop event for each. Skew steps are skipped (with one
/// notice) when `skew_available` is false. Topology steps run in their own
/// task (`crate::topology`), beside the others. Returns with every process,
/// network and clock fault it started undone (layout changes stay: the
/// layout after a run is a new normal, not a fault to undo).
pub async fn execute(
    steps: Vec<Step>,
    cluster: Arc<tokio::sync::Mutex<Cluster>>,
    rec: Arc<Recorder>,
    load_start: Instant,
    seed: u64,
    skew_available: bool,
    active: Active,
) -> Result<(), NemesisError> {
    let (topo, other): (Vec<Step>, Vec<Step>) = steps.into_iter().partition(|s| s.fault.kind().is_topology());
    let (a, b) = tokio::join!(
        faults(
            other,
            cluster.clone(),
            rec.clone(),
            load_start,
            seed,
            skew_available,
            active.clone()
        ),
        crate::topology::run(topo, cluster, rec, load_start, seed, active),
    );
    a.and(b)
}

/// Process, network and clock faults, in time order.
async fn faults(
    steps: Vec<Step>,
    cluster: Arc<tokio::sync::Mutex<Cluster>>,
    rec: Arc<Recorder>,
    load_start: Instant,
    seed: u64,
    skew_available: bool,
    active: Active,
) -> Result<(), NemesisError> {
    // (time, 0 = stop before 1 = start at the same time, step index)
    let mut actions: Vec<(u64, u8, usize)> = Vec::new();
    for (i, s) in steps.iter().enumerate() {
        if s.fault.kind() == Kind::Skew && !skew_available {
            continue;
        }
        actions.push((s.start_ms, 1, i));
        actions.push((s.start_ms + s.duration_ms, 0, i));
    }
    actions.sort_unstable();
    let mut rng = StdRng::seed_from_u64(seed ^ SCHEDULE_SALT ^ 1);
    let mut applied: BTreeMap<usize, Applied> = BTreeMap::new();
    for (at, is_start, i) in actions {
        tokio::time::sleep_until(load_start + Duration::from_millis(at)).await;
        let step = &steps[i];
        let (start_f, stop_f) = step.fault.f_names();
        let name = step.fault.name();
        if is_start == 1 {
            let a = begin(step, &cluster, &mut rng)
                .await
                .map_err(|cause| NemesisError::Cluster {
                    id: step.id,
                    name,
                    cause,
                })?;
            record(&rec, start_f, &a.value);
            active
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(step.id, format!("{name} {:?}", a.nodes));
            applied.insert(i, a);
        } else if let Some(a) = applied.remove(&i) {
            finish(step, &a, &cluster)
                .await
                .map_err(|cause| NemesisError::Cluster {
                    id: step.id,
                    name,
                    cause,
                })?;
            record(&rec, stop_f, &a.value);
            active.lock().unwrap_or_else(|p| p.into_inner()).remove(&step.id);
        }
    }
    Ok(())
}

fn record(rec: &Recorder, f: &str, value: &Value) {
    rec.record(EventType::Info, F::from(f), None, value.clone(), Process::Nemesis, None);
}

/// Resolves a process fault's target to nodes.
async fn resolve(target: &Target, cluster: &Arc<tokio::sync::Mutex<Cluster>>, rng: &mut StdRng) -> Vec<u64> {
    let c = cluster.lock().await;
    let members = c.members();
    match target {
        Target::Node { node } => vec![*node],
        Target::All => members,
        Target::LeaderOf { shard } => {
            let (addrs, up) = c.addrs_up();
            drop(c);
            match crate::cluster::leader_of(&addrs, &up, *shard).await {
                Some(l) => vec![l],
                None => vec![*members.choose(rng).unwrap_or(&1)],
            }
        }
    }
}

async fn begin(step: &Step, cluster: &Arc<tokio::sync::Mutex<Cluster>>, rng: &mut StdRng) -> anyhow::Result<Applied> {
    let mut value = json!({"id": step.id, "fault": step.fault.name()});
    let nodes = match &step.fault {
        Fault::Kill(t) | Fault::Pause(t) => {
            let nodes = resolve(t, cluster, rng).await;
            let mut c = cluster.lock().await;
            for &n in &nodes {
                if matches!(step.fault, Fault::Kill(_)) {
                    c.kill(n);
                } else {
                    c.pause(n)?;
                }
            }
            if let Target::LeaderOf { shard } = t {
                value["shard"] = json!(shard);
            }
            nodes
        }
        Fault::Partition(p) => {
            let members = cluster.lock().await.members();
            let cuts = p.cuts(&members);
            cut(&cuts)?;
            value["partition"] = serde_json::to_value(p)?;
            value["cuts"] = json!(cuts);
            let touched: BTreeSet<u64> = cuts.iter().flat_map(|&(a, b)| [a, b]).collect();
            touched.into_iter().collect()
        }
        Fault::Skew { offsets_ms } => {
            let c = cluster.lock().await;
            for &(n, ms) in offsets_ms {
                c.set_clock_offset(n, ms)?;
            }
            value["offsets_ms"] = json!(offsets_ms);
            offsets_ms.iter().map(|(n, _)| *n).collect()
        }
        Fault::Move { .. }
        | Fault::Split { .. }
        | Fault::TransferLeader { .. }
        | Fault::Join { .. }
        | Fault::Decommission { .. } => {
            anyhow::bail!("topology faults run in their own task")
        }
    };
    value["nodes"] = json!(nodes);
    Ok(Applied { nodes, value })
}

async fn finish(step: &Step, a: &Applied, cluster: &Arc<tokio::sync::Mutex<Cluster>>) -> anyhow::Result<()> {
    let mut c = cluster.lock().await;
    match &step.fault {
        Fault::Kill(_) => a.nodes.iter().try_for_each(|&n| c.restart(n)),
        Fault::Pause(_) => a.nodes.iter().try_for_each(|&n| c.resume(n)),
        Fault::Partition(_) => Ok(heal_network()?),
        Fault::Skew { .. } => a.nodes.iter().try_for_each(|&n| c.set_clock_offset(n, 0)),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(seed: u64, nodes: u64) -> ScheduleParams {
        ScheduleParams {
            seed,
            nodes,
            shards: 4,
            time_limit: Duration::from_secs(300),
            interval: Duration::from_secs(8),
        }
    }

    #[test]
    fn spec_parses_names_lists_and_all() {
        assert_eq!("none".parse::<NemesisSpec>().unwrap(), NemesisSpec::none());
        assert_eq!("all".parse::<NemesisSpec>().unwrap(), NemesisSpec::all());
        assert_eq!("combined".parse::<NemesisSpec>().unwrap(), NemesisSpec::all());
        let s: NemesisSpec = "pause, kill".parse().unwrap();
        assert_eq!(s, NemesisSpec::of(&[Kind::Kill, Kind::Pause]));
        assert_eq!(s.to_string(), "kill,pause");
        assert!(!s.needs_netns());
        assert!("kill,bogus".parse::<NemesisSpec>().is_err());
        let t: NemesisSpec = "topology".parse().unwrap();
        assert_eq!(t, NemesisSpec::of(&Kind::TOPOLOGY));
        assert_eq!(t.to_string(), "move,split,transfer,membership");
        assert_eq!(t.to_string().parse::<NemesisSpec>().unwrap(), t);
        assert!(NemesisSpec::all().kinds.is_superset(&t.kinds));
        let k: NemesisSpec = "kill,transfer,join".parse().unwrap();
        assert_eq!(k, NemesisSpec::of(&[Kind::Kill, Kind::Transfer, Kind::Membership]));
    }

    /// The topology steps in order, with the joined nodes they leave.
    fn topology_steps(spec: &NemesisSpec, p: &ScheduleParams) -> Vec<Step> {
        schedule(spec, p)
            .into_iter()
            .filter(|s| s.fault.kind().is_topology())
            .collect()
    }

    #[test]
    fn topology_schedules_join_first_and_decommission_only_joined_nodes() {
        for seed in 0..50 {
            for (spec, nodes) in [
                (NemesisSpec::all(), 3),
                (NemesisSpec::of(&Kind::TOPOLOGY), 3),
                (NemesisSpec::of(&[Kind::Kill, Kind::Move, Kind::Membership]), 3),
                (NemesisSpec::of(&Kind::TOPOLOGY), 5),
            ] {
                let p = params(seed, nodes);
                let steps = topology_steps(&spec, &p);
                assert!(!steps.is_empty(), "seed {seed}: no topology step");
                if nodes == 3 {
                    assert!(
                        matches!(steps[0].fault, Fault::Join { node: 4 }),
                        "seed {seed}: a 3-node run must join a node first: {:?}",
                        steps[0]
                    );
                }
                // One at a time, and the layout the schedule assumes.
                let mut joined: Vec<u64> = Vec::new();
                let mut next = nodes + 1;
                for w in steps.windows(2) {
                    assert!(w[1].start_ms >= w[0].start_ms + w[0].duration_ms, "seed {seed}: {w:?}");
                }
                for s in &steps {
                    match s.fault {
                        Fault::Join { node } => {
                            assert_eq!(node, next, "seed {seed}: ids are handed out in order");
                            next += 1;
                            joined.push(node);
                            assert!(joined.len() <= JOINED_MAX, "seed {seed}: too many joined nodes");
                        }
                        Fault::Decommission { node } => {
                            assert!(node > nodes && node > 3, "seed {seed}: bootstrap node {node} removed");
                            let at = joined.iter().position(|&j| j == node);
                            assert!(at.is_some(), "seed {seed}: node {node} removed before it joined");
                            joined.remove(at.unwrap_or_default());
                        }
                        Fault::Move { shard } | Fault::Split { shard } | Fault::TransferLeader { shard } => {
                            assert!(shard < p.shards)
                        }
                        _ => panic!("seed {seed}: not a topology fault: {s:?}"),
                    }
                }
            }
        }
    }

    #[test]
    fn topology_kinds_alone_schedule_only_their_faults() {
        let p = params(3, 3);
        let splits = schedule(&NemesisSpec::of(&[Kind::Split]), &p);
        assert!(!splits.is_empty());
        assert!(splits.iter().all(|s| matches!(s.fault, Fault::Split { .. })));
        let transfers = schedule(&NemesisSpec::of(&[Kind::Transfer]), &p);
        assert!(transfers
            .iter()
            .all(|s| matches!(s.fault, Fault::TransferLeader { .. })));
        // A move needs a destination: with three nodes a join comes first.
        let moves = schedule(&NemesisSpec::of(&[Kind::Move]), &p);
        assert!(matches!(moves[0].fault, Fault::Join { node: 4 }));
        assert!(moves[1..].iter().all(|s| matches!(s.fault, Fault::Move { .. })));
        // With more nodes than replicas it does not.
        let moves = schedule(&NemesisSpec::of(&[Kind::Move]), &params(3, 5));
        assert!(moves.iter().all(|s| matches!(s.fault, Fault::Move { .. })));
    }

    #[test]
    fn same_seed_same_schedule_other_seed_other_schedule() {
        let spec = NemesisSpec::all();
        let a = schedule(&spec, &params(42, 5));
        assert_eq!(a, schedule(&spec, &params(42, 5)));
        assert_ne!(a, schedule(&spec, &params(43, 5)));
        assert!(a.len() >= 20, "{} steps", a.len());
    }

    #[test]
    fn schedules_heal_in_time_and_never_overlap_within_a_class() {
        for seed in 0..50 {
            for nodes in [3, 5] {
                let p = params(seed, nodes);
                let steps = schedule(&NemesisSpec::all(), &p);
                let limit = p.time_limit.as_millis() as u64;
                for s in &steps {
                    assert!(s.start_ms + s.duration_ms <= limit, "seed {seed}: {s:?}");
                    assert!(s.duration_ms > 0);
                }
                for a in &steps {
                    for b in steps
                        .iter()
                        .filter(|b| b.id > a.id && b.fault.kind().class() == a.fault.kind().class())
                    {
                        assert!(
                            b.start_ms >= a.start_ms + a.duration_ms,
                            "seed {seed}: {a:?} overlaps {b:?}"
                        );
                    }
                }
                let overlapping = steps
                    .windows(2)
                    .any(|w| w[1].start_ms < w[0].start_ms + w[0].duration_ms);
                assert!(
                    overlapping,
                    "seed {seed}: expected faults of different classes to overlap"
                );
                if nodes == 3 {
                    assert!(steps.iter().all(|s| !matches!(
                        s.fault,
                        Fault::Partition(Partition::Bridge { .. } | Partition::MajoritiesRing { .. })
                    )));
                }
            }
        }
    }

    #[test]
    fn five_node_schedules_use_every_fault_shape() {
        let mut names = BTreeSet::new();
        for seed in 0..20 {
            for s in schedule(&NemesisSpec::all(), &params(seed, 5)) {
                names.insert(s.fault.name());
            }
        }
        for want in [
            "kill-node",
            "kill-leader",
            "kill-all",
            "pause-node",
            "pause-leader",
            "partition-isolate",
            "partition-halves",
            "partition-bridge",
            "partition-majorities-ring",
            "skew-node",
            "skew-all",
            "move-replica",
            "split-shard",
            "transfer-leader",
            "join-node",
            "decommission-node",
        ] {
            assert!(names.contains(want), "{want} never scheduled: {names:?}");
        }
    }

    #[test]
    fn partition_shapes_cut_the_right_pairs() {
        assert_eq!(Partition::Isolate { node: 2 }.cuts(&[1, 2, 3]), vec![(1, 2), (2, 3)]);
        // A joined node is cut off from the isolated one too.
        assert_eq!(
            Partition::Isolate { node: 2 }.cuts(&[1, 2, 3, 5]),
            vec![(1, 2), (2, 3), (2, 5)]
        );
        assert_eq!(
            Partition::Halves { minority: vec![1, 4] }.cuts(&[1, 2, 3, 4, 5]),
            vec![(1, 2), (1, 3), (1, 5), (2, 4), (3, 4), (4, 5)]
        );
        let bridge = Partition::Bridge {
            bridge: 3,
            left: vec![1, 2],
            right: vec![4, 5],
        };
        assert_eq!(bridge.cuts(&[1, 2, 3, 4, 5]), vec![(1, 4), (1, 5), (2, 4), (2, 5)]);
        // Ring 1-2-3-4-5-1: every node keeps its two neighbours.
        let ring = Partition::MajoritiesRing {
            ring: vec![1, 2, 3, 4, 5],
        };
        assert_eq!(
            ring.cuts(&[1, 2, 3, 4, 5]),
            vec![(1, 3), (1, 4), (2, 4), (2, 5), (3, 5)]
        );
    }

    #[test]
    fn no_kinds_no_steps() {
        assert!(schedule(&NemesisSpec::none(), &params(1, 3)).is_empty());
        let kills = schedule(&NemesisSpec::of(&[Kind::Kill]), &params(1, 3));
        assert!(!kills.is_empty() && kills.iter().all(|s| s.fault.kind() == Kind::Kill));
    }
}
