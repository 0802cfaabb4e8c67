//! The routing cache: which shard owns a key, which nodes hold the shard,
//! which of them leads it, and where each node listens.
//!
//! [`RoutingTable`] is pure data learned from `Admin/ClusterStatus` and
//! versioned by the ring epoch: a table from an older epoch never replaces a
//! newer one. [`Router`] holds the current table and refreshes it on demand;
//! concurrent refresh requests share one round trip (single flight).

use std::collections::BTreeMap;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;
use std::sync::RwLock;

use ringkv_proto::v1::ClusterStatusResponse;

/// A key's position on the ring: XXH3-64 (seed 0) of its bytes, the same
/// function the servers use.
///
/// ```
/// assert_eq!(ringkv_client::token_of(b"a"), ringkv_client::token_of(b"a"));
/// ```
pub fn token_of(key: &[u8]) -> u64 {
    xxhash_rust::xxh3::xxh3_64(key)
}

/// One shard's placement as the client knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ShardRoute {
    pub replicas: Vec<u64>,
    /// Last known leader (a hint: it may have changed since).
    pub leader: Option<u64>,
}

/// Ring, shards and nodes at one epoch.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct RoutingTable {
    pub epoch: u64,
    /// Range start token -> (exclusive end, `None` = 2^64; shard).
    ring: BTreeMap<u64, (Option<u64>, u64)>,
    pub shards: BTreeMap<u64, ShardRoute>,
    /// Node id -> gRPC address (`host:port`).
    pub nodes: BTreeMap<u64, String>,
}

impl RoutingTable {
    /// Builds a table from a `ClusterStatus` answer; refuses one whose
    /// ranges overlap.
    pub fn from_status(st: &ClusterStatusResponse) -> Result<Self, String> {
        let mut t = RoutingTable {
            epoch: st.epoch,
            ..Default::default()
        };
        for n in &st.nodes {
            t.nodes.insert(n.id, n.addr.clone());
        }
        for s in &st.shards {
            for r in &s.ranges {
                let end = (!r.end_is_max).then_some(r.end);
                if end.is_some_and(|e| e <= r.start) {
                    return Err(format!(
                        "shard {} has an empty or inverted range {}..{}",
                        s.id, r.start, r.end
                    ));
                }
                if t.ring.insert(r.start, (end, s.id)).is_some() {
                    return Err(format!("two ranges start at token {}", r.start));
                }
            }
            t.shards.insert(
                s.id,
                ShardRoute {
                    replicas: s.replicas.clone(),
                    leader: (s.leader_id != 0).then_some(s.leader_id),
                },
            );
        }
        let mut prev_end: Option<Option<u64>> = None;
        for (start, (end, shard)) in &t.ring {
            let overlaps = match prev_end {
                Some(None) => true,
                Some(Some(pe)) => pe > *start,
                None => false,
            };
            if overlaps {
                return Err(format!(
                    "shard {shard}'s range starting at {start} overlaps the previous one"
                ));
            }
            prev_end = Some(*end);
        }
        Ok(t)
    }

    /// The shard owning `token`, if the ring covers it.
    pub fn shard_for_token(&self, token: u64) -> Option<u64> {
        let (start, (end, shard)) = self.ring.range(..=token).next_back()?;
        (token >= *start && end.is_none_or(|e| token < e)).then_some(*shard)
    }

    /// The first token `shard` owns (to route a request about the whole
    /// shard), if it owns any.
    pub fn first_token_of(&self, shard: u64) -> Option<u64> {
        self.ring
            .iter()
            .find(|(_, (_, s))| *s == shard)
            .map(|(start, _)| *start)
    }

    /// The shard owning `key`.
    pub fn shard_for_key(&self, key: &[u8]) -> Option<u64> {
        self.shard_for_token(token_of(key))
    }

    /// Records `leader` as the leader of `shard` (a node must be a replica).
    pub fn set_leader(&mut self, shard: u64, leader: u64) -> bool {
        match self.shards.get_mut(&shard) {
            Some(s) if s.replicas.contains(&leader) || s.replicas.is_empty() => {
                s.leader = Some(leader);
                true
            }
            _ => false,
        }
    }

    /// Forgets `node` as leader of every shard it was thought to lead.
    pub fn forget_leader(&mut self, node: u64) {
        for s in self.shards.values_mut() {
            if s.leader == Some(node) {
                s.leader = None;
            }
        }
    }

    /// Installs `newer` unless it is from an older epoch. Leader hints the
    /// new table lacks (its answering node did not know them) are kept when
    /// the shard's replicas did not change. Returns whether it was installed.
    pub fn replace_with(&mut self, mut newer: RoutingTable) -> bool {
        if newer.epoch < self.epoch {
            return false;
        }
        for (id, s) in newer.shards.iter_mut() {
            if s.leader.is_none() {
                if let Some(old) = self.shards.get(id) {
                    if old.replicas == s.replicas {
                        s.leader = old.leader;
                    }
                }
            }
        }
        *self = newer;
        true
    }

    /// Nodes to try for `shard`, best first: the leader hint, then the other
    /// replicas in placement order.
    pub fn candidates(&self, shard: u64) -> Vec<u64> {
        let Some(s) = self.shards.get(&shard) else {
            return vec![];
        };
        let mut out = Vec::with_capacity(s.replicas.len() + 1);
        if let Some(l) = s.leader {
            out.push(l);
        }
        out.extend(s.replicas.iter().copied().filter(|r| Some(*r) != s.leader));
        out
    }
}

/// The shared, refreshable routing table.
#[derive(Debug, Default)]
pub(crate) struct Router {
    table: RwLock<RoutingTable>,
    /// Bumped by every completed refresh; a caller that saw generation `g`
    /// before failing only refreshes if no one has since.
    generation: AtomicU64,
    /// Held while one refresh runs; others wait and then see the new table.
    pub(crate) refresh_lock: tokio::sync::Mutex<()>,
}

impl Router {
    pub fn read<R>(&self, f: impl FnOnce(&RoutingTable) -> R) -> R {
        f(&self.table.read().unwrap_or_else(|p| p.into_inner()))
    }

    pub fn write<R>(&self, f: impl FnOnce(&mut RoutingTable) -> R) -> R {
        f(&mut self.table.write().unwrap_or_else(|p| p.into_inner()))
    }

    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    pub fn bump_generation(&self) {
        self.generation.fetch_add(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use ringkv_proto::v1::NodeInfo;
    use ringkv_proto::v1::ShardStatus;
    use ringkv_proto::v1::TokenRange;

    use super::*;

    /// `shards` equal ranges over 3 nodes, shard n led by node ((n-1) % 3) + 1.
    fn status(epoch: u64, shards: u64) -> ClusterStatusResponse {
        let step = u64::MAX / shards + 1;
        ClusterStatusResponse {
            epoch,
            served_by: 1,
            nodes: (1..=3)
                .map(|id| NodeInfo {
                    id,
                    addr: format!("127.0.0.1:{}", 50050 + id),
                })
                .collect(),
            shards: (1..=shards)
                .map(|id| {
                    let start = (id - 1) * step;
                    ShardStatus {
                        id,
                        replicas: vec![1, 2, 3],
                        ranges: vec![TokenRange {
                            start,
                            end: if id == shards { 0 } else { id * step },
                            end_is_max: id == shards,
                        }],
                        leader_id: (id - 1) % 3 + 1,
                        hosted_here: true,
                        ..Default::default()
                    }
                })
                .collect(),
            metadata: None,
        }
    }

    #[test]
    fn range_lookup_covers_the_ring() {
        let t = RoutingTable::from_status(&status(1, 4)).unwrap();
        let step = u64::MAX / 4 + 1;
        assert_eq!(t.shard_for_token(0), Some(1));
        assert_eq!(t.shard_for_token(step - 1), Some(1));
        assert_eq!(t.shard_for_token(step), Some(2));
        assert_eq!(t.shard_for_token(3 * step), Some(4));
        assert_eq!(t.shard_for_token(u64::MAX), Some(4));
        let key = b"some-key";
        assert_eq!(t.shard_for_key(key), Some(token_of(key) / step + 1));
        assert_eq!(t.nodes[&2], "127.0.0.1:50052");
    }

    #[test]
    fn gaps_and_overlaps() {
        let mut st = status(1, 2);
        // Shard 1 now ends early: the tokens after it belong to no one.
        st.shards[0].ranges[0].end = 10;
        let t = RoutingTable::from_status(&st).unwrap();
        assert_eq!(t.shard_for_token(9), Some(1));
        assert_eq!(t.shard_for_token(10), None);
        let mut st = status(1, 2);
        st.shards[0].ranges[0].end_is_max = true;
        assert!(RoutingTable::from_status(&st).is_err(), "overlap accepted");
        let empty = RoutingTable::default();
        assert_eq!(empty.shard_for_token(5), None);
    }

    #[test]
    fn epoch_replacement_keeps_newer_tables() {
        let mut t = RoutingTable::from_status(&status(5, 4)).unwrap();
        let older = RoutingTable::from_status(&status(4, 8)).unwrap();
        assert!(!t.replace_with(older));
        assert_eq!(t.shards.len(), 4);
        let newer = RoutingTable::from_status(&status(6, 8)).unwrap();
        assert!(t.replace_with(newer));
        assert_eq!(t.epoch, 6);
        assert_eq!(t.shards.len(), 8);
        let step = u64::MAX / 8 + 1;
        assert_eq!(t.shard_for_token(7 * step), Some(8));
    }

    #[test]
    fn leader_hints_update_and_survive_refreshes_without_one() {
        let mut t = RoutingTable::from_status(&status(1, 3)).unwrap();
        assert_eq!(t.candidates(2), vec![2, 1, 3]);
        assert!(t.set_leader(2, 3));
        assert_eq!(t.candidates(2), vec![3, 1, 2]);
        assert!(!t.set_leader(2, 9), "a non-replica is not a leader");
        t.forget_leader(3);
        assert_eq!(t.shards[&2].leader, None);
        assert_eq!(t.shards[&3].leader, None);
        assert_eq!(t.candidates(2), vec![1, 2, 3]);
        assert!(t.set_leader(2, 1));
        // A refresh from a node that does not know shard 2's leader keeps the hint.
        let mut st = status(1, 3);
        st.shards[1].leader_id = 0;
        assert!(t.replace_with(RoutingTable::from_status(&st).unwrap()));
        assert_eq!(t.shards[&2].leader, Some(1));
        // ... but one that knows it wins.
        assert!(t.replace_with(RoutingTable::from_status(&status(1, 3)).unwrap()));
        assert_eq!(t.shards[&2].leader, Some(2));
        assert!(t.candidates(99).is_empty());
    }
}
