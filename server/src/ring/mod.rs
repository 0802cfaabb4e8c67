//! The consistent-hash ring: key -> token -> shard, and the bootstrap layout.
//!
//! Pure data and functions, no I/O. A key's token is XXH3-64 (seed 0) of its
//! bytes: a fixed, documented algorithm that never changes between versions,
//! so data written by one release is found by the next. Each shard owns one or
//! more half-open token ranges; together the ranges cover the whole ring
//! exactly once.

use std::collections::BTreeMap;
use std::collections::BTreeSet;

use serde::Deserialize;
use serde::Serialize;

/// Shard id of the metadata Raft group. Data shards are numbered from 1.
pub const META_SHARD_ID: u64 = 0;
/// Replicas per data shard when enough nodes exist.
pub const REPLICATION_FACTOR: usize = 3;
/// Most members of the metadata group.
pub const META_REPLICAS_MAX: usize = 3;

/// The ring position of a key.
pub fn token_of(key: &[u8]) -> u64 {
    xxhash_rust::xxh3::xxh3_64(key)
}

/// A half-open token range `[start, end)`; `end == None` runs to 2^64.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenRange {
    pub start: u64,
    pub end: Option<u64>,
}

impl TokenRange {
    pub fn contains(&self, token: u64) -> bool {
        token >= self.start && self.end.is_none_or(|e| token < e)
    }
}

/// Whether the union of `ranges` contains every token of `wanted`.
pub fn covers(ranges: &[TokenRange], wanted: &TokenRange) -> bool {
    if wanted.end.is_some_and(|e| e <= wanted.start) {
        return true;
    }
    let mut from = wanted.start;
    // Every step moves `from` past the end of one range, so at most
    // `ranges.len()` steps.
    for _ in 0..=ranges.len() {
        let Some(r) = ranges.iter().find(|r| r.contains(from)) else {
            return false;
        };
        match (r.end, wanted.end) {
            (None, _) => return true,
            (Some(e), Some(w)) if e >= w => return true,
            (Some(e), _) => from = e,
        }
    }
    false
}

/// One data shard's placement.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardInfo {
    pub id: u64,
    /// Node ids holding a replica, in preference order.
    pub replicas: Vec<u64>,
    pub ranges: Vec<TokenRange>,
    /// Nodes receiving a copy of the shard as non-voting learners: the
    /// targets of in-flight moves. They host the group but serve nothing.
    pub learners: Vec<u64>,
}

impl ShardInfo {
    /// Nodes that must host a Raft group of this shard: replicas and learners.
    pub fn members(&self) -> impl Iterator<Item = u64> + '_ {
        self.replicas.iter().chain(self.learners.iter()).copied()
    }
}

/// An in-flight replica move of one shard: `to` joins as a learner, catches
/// up, replaces `from` among the voters, and the layout then names `to`
/// instead of `from`. Recorded in the layout (committed by the metadata group)
/// before any step is taken, so whichever node leads the metadata group
/// resumes it after a crash. See `placement` for the steps.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MoveOp {
    pub id: u64,
    pub shard: u64,
    pub from: u64,
    pub to: u64,
    /// Why the move was started (operator, rebalance, decommission, ...).
    pub reason: String,
    /// Wall-clock milliseconds of the metadata leader that recorded it.
    pub created_ms: u64,
    /// Set when the move is to be rolled back: the learner is removed and the
    /// shard keeps its replicas. Only possible before `to` became a voter.
    pub cancelled: bool,
}

/// A recorded split of `shard` at token `at`: the tokens `>= at` go to
/// `new_shard` on the same replicas. Recorded before the split command is
/// proposed in the shard, so a new metadata leader finishes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SplitOp {
    pub shard: u64,
    pub new_shard: u64,
    pub at: u64,
    pub reason: String,
    pub created_ms: u64,
}

/// Everything the metadata group stores: nodes, shards, ring and epoch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterLayout {
    /// Bumped by every change to the ring or to placement.
    pub epoch: u64,
    /// Node id -> advertised gRPC address.
    pub nodes: BTreeMap<u64, String>,
    /// Members of the metadata group.
    pub meta_replicas: Vec<u64>,
    pub shards: BTreeMap<u64, ShardInfo>,
    /// Range start token -> owning shard; the first key is always 0.
    pub ring: BTreeMap<u64, u64>,
    /// In-flight replica moves by id; at most one per shard.
    pub ops: BTreeMap<u64, MoveOp>,
    /// Id the next recorded operation gets.
    pub next_op_id: u64,
    /// Nodes being decommissioned: every replica moves away, then the node
    /// leaves `nodes`.
    pub draining: BTreeSet<u64>,
    /// Whether the metadata leader starts moves on its own to balance
    /// replicas. Moves off draining nodes happen either way.
    pub rebalance_enabled: bool,
    /// Splits recorded and not yet reflected in `shards`, by shard.
    pub splits: BTreeMap<u64, SplitOp>,
    /// Id the next shard created by a split gets.
    pub next_shard_id: u64,
    /// Failure-domain label of each node that has one.
    pub zones: BTreeMap<u64, String>,
}

/// Errors in a layout; they indicate a bug or corrupt metadata.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RingError {
    #[error("ring is empty or does not start at token 0")]
    NoStart,
    #[error("ring names shard {0} which has no shard entry")]
    UnknownShard(u64),
    #[error("shard {0} ranges disagree with the ring")]
    RangeMismatch(u64),
    #[error("shard {0} names replica {1} which is not a node")]
    UnknownReplica(u64, u64),
    #[error("shard {0} lists node {1} twice among its replicas and learners")]
    DuplicateMember(u64, u64),
    #[error("operation {0} is inconsistent with its shard: {1}")]
    BadOp(u64, String),
}

impl ClusterLayout {
    /// The deterministic layout every node computes from the same
    /// `initial_cluster` and shard count: equal token ranges, replicas
    /// placed round-robin so leaders and load spread evenly.
    pub fn bootstrap(nodes: &BTreeMap<u64, String>, shard_count: u32) -> Self {
        assert!(!nodes.is_empty(), "bootstrap needs at least one node");
        assert!(shard_count > 0, "bootstrap needs at least one shard");
        let ids: Vec<u64> = nodes.keys().copied().collect();
        let rf = REPLICATION_FACTOR.min(ids.len());
        let step = u64::MAX / u64::from(shard_count) + 1;
        let mut shards = BTreeMap::new();
        let mut ring = BTreeMap::new();
        for i in 0..u64::from(shard_count) {
            let id = i + 1;
            let start = i * step;
            let end = if i + 1 == u64::from(shard_count) {
                None
            } else {
                Some((i + 1) * step)
            };
            let replicas = (0..rf).map(|k| ids[(i as usize + k) % ids.len()]).collect();
            ring.insert(start, id);
            shards.insert(
                id,
                ShardInfo {
                    id,
                    replicas,
                    ranges: vec![TokenRange { start, end }],
                    learners: vec![],
                },
            );
        }
        let layout = ClusterLayout {
            epoch: 1,
            nodes: nodes.clone(),
            meta_replicas: ids.iter().copied().take(META_REPLICAS_MAX).collect(),
            shards,
            ring,
            ops: BTreeMap::new(),
            next_op_id: 1,
            draining: BTreeSet::new(),
            rebalance_enabled: true,
            splits: BTreeMap::new(),
            next_shard_id: u64::from(shard_count) + 1,
            zones: BTreeMap::new(),
        };
        debug_assert_eq!(layout.check(), Ok(()));
        layout
    }

    /// The shard owning `token`.
    pub fn shard_for_token(&self, token: u64) -> Option<u64> {
        self.ring.range(..=token).next_back().map(|(_, s)| *s)
    }

    /// The shard owning `key`.
    pub fn shard_for_key(&self, key: &[u8]) -> Option<u64> {
        self.shard_for_token(token_of(key))
    }

    /// Shards that have a replica on `node_id`.
    pub fn shards_on(&self, node_id: u64) -> impl Iterator<Item = &ShardInfo> {
        self.shards.values().filter(move |s| s.replicas.contains(&node_id))
    }

    /// Shards `node_id` must host a Raft group of: as a replica or as the
    /// learner of an in-flight move.
    pub fn groups_on(&self, node_id: u64) -> impl Iterator<Item = &ShardInfo> {
        self.shards.values().filter(move |s| s.members().any(|m| m == node_id))
    }

    /// The in-flight move of `shard`, if any.
    pub fn op_of(&self, shard: u64) -> Option<&MoveOp> {
        self.ops.values().find(|o| o.shard == shard)
    }

    /// The zone label of `node`, if it has one.
    pub fn zone_of(&self, node: u64) -> Option<&str> {
        self.zones.get(&node).map(String::as_str)
    }

    /// Whether `shard` has a move or a split in flight.
    pub fn busy(&self, shard: u64) -> bool {
        self.op_of(shard).is_some() || self.splits.contains_key(&shard)
    }

    /// Verifies the layout's internal consistency.
    pub fn check(&self) -> Result<(), RingError> {
        if self.ring.keys().next() != Some(&0) {
            return Err(RingError::NoStart);
        }
        let starts: Vec<(u64, u64)> = self.ring.iter().map(|(t, s)| (*t, *s)).collect();
        for (i, (start, shard)) in starts.iter().enumerate() {
            let info = self.shards.get(shard).ok_or(RingError::UnknownShard(*shard))?;
            let end = starts.get(i + 1).map(|(t, _)| *t);
            if !info.ranges.contains(&TokenRange { start: *start, end }) {
                return Err(RingError::RangeMismatch(*shard));
            }
        }
        for info in self.shards.values() {
            if info.ranges.iter().any(|r| self.ring.get(&r.start) != Some(&info.id)) {
                return Err(RingError::RangeMismatch(info.id));
            }
            if let Some(r) = info.members().find(|r| !self.nodes.contains_key(r)) {
                return Err(RingError::UnknownReplica(info.id, r));
            }
            let mut seen = BTreeSet::new();
            if let Some(r) = info.members().find(|r| !seen.insert(*r)) {
                return Err(RingError::DuplicateMember(info.id, r));
            }
        }
        let mut op_shards = BTreeSet::new();
        for op in self.ops.values() {
            let bad = |why: &str| Err(RingError::BadOp(op.id, why.to_string()));
            let Some(info) = self.shards.get(&op.shard) else {
                return bad("unknown shard");
            };
            if !op_shards.insert(op.shard) {
                return bad("a second operation on the same shard");
            }
            if op.id >= self.next_op_id {
                return bad("id not below next_op_id");
            }
            if !info.replicas.contains(&op.from) {
                return bad("source is not a replica");
            }
            if !info.learners.contains(&op.to) {
                return bad("target is not a learner");
            }
        }
        for sp in self.splits.values() {
            let bad = |why: &str| Err(RingError::BadOp(0, format!("split of shard {}: {why}", sp.shard)));
            let Some(info) = self.shards.get(&sp.shard) else {
                return bad("unknown shard");
            };
            if op_shards.contains(&sp.shard) {
                return bad("the shard also has a move in flight");
            }
            let [r] = info.ranges[..] else {
                return bad("the shard owns several ranges");
            };
            if !(r.start < sp.at && r.contains(sp.at)) {
                return bad("the token is not strictly inside the shard's range");
            }
            if self.shards.contains_key(&sp.new_shard) || sp.new_shard >= self.next_shard_id || sp.new_shard == 0 {
                return bad("bad new shard id");
            }
        }
        for info in self.shards.values() {
            for l in &info.learners {
                if !self.ops.values().any(|o| o.shard == info.id && o.to == *l) {
                    return Err(RingError::BadOp(
                        0,
                        format!("learner {l} of shard {} has no operation", info.id),
                    ));
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(start: u64, end: Option<u64>) -> TokenRange {
        TokenRange { start, end }
    }

    #[test]
    fn covers_needs_every_token_of_the_wanted_range() {
        let halves = [r(100, None), r(0, Some(100))];
        assert!(covers(&halves, &r(0, None)));
        assert!(covers(&halves, &r(50, Some(150))));
        assert!(covers(&[r(0, Some(100))], &r(10, Some(100))));
        assert!(!covers(&[r(0, Some(100))], &r(10, Some(101))));
        assert!(!covers(&[r(0, Some(100))], &r(0, None)));
        // A gap in the middle.
        assert!(!covers(&[r(0, Some(10)), r(11, None)], &r(0, None)));
        assert!(!covers(&[], &r(5, Some(6))));
        // An empty wanted range needs nothing.
        assert!(covers(&[], &r(5, Some(5))));
    }

    fn nodes(n: u64) -> BTreeMap<u64, String> {
        (1..=n).map(|i| (i, format!("127.0.0.1:{}", 50050 + i))).collect()
    }

    #[test]
    fn token_is_stable_xxh3() {
        // Pinned values: changing them would orphan every stored key.
        assert_eq!(token_of(b""), 0x2d06800538d394c2);
        assert_eq!(token_of(b"hello"), 0x9555e8555c62dcfd);
    }

    #[test]
    fn bootstrap_covers_ring_once() {
        for shards in [1u32, 2, 3, 16, 17, 1000] {
            let l = ClusterLayout::bootstrap(&nodes(3), shards);
            l.check().unwrap();
            assert_eq!(l.shards.len(), shards as usize);
            assert_eq!(l.shard_for_token(0), Some(1));
            assert_eq!(l.shard_for_token(u64::MAX), Some(u64::from(shards)));
            for s in l.shards.values() {
                assert_eq!(s.replicas.len(), 3);
                for r in &s.ranges {
                    assert_eq!(l.shard_for_token(r.start), Some(s.id));
                    if let Some(e) = r.end {
                        assert_eq!(l.shard_for_token(e - 1), Some(s.id));
                        assert!(!r.contains(e));
                    }
                }
            }
        }
    }

    #[test]
    fn replicas_spread_round_robin() {
        let l = ClusterLayout::bootstrap(&nodes(5), 10);
        let mut first = BTreeMap::<u64, usize>::new();
        for s in l.shards.values() {
            *first.entry(s.replicas[0]).or_default() += 1;
            let mut r = s.replicas.clone();
            r.dedup();
            assert_eq!(r.len(), 3);
        }
        assert!(first.values().all(|c| *c == 2), "{first:?}");
        assert_eq!(l.meta_replicas, vec![1, 2, 3]);
        assert_eq!(ClusterLayout::bootstrap(&nodes(1), 4).shards[&1].replicas, vec![1]);
    }

    #[test]
    fn check_detects_holes() {
        let mut l = ClusterLayout::bootstrap(&nodes(3), 4);
        let second = *l.ring.keys().nth(1).unwrap();
        l.ring.remove(&second);
        assert!(l.check().is_err());
    }
}
