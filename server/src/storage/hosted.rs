//! The token ranges of the data shards this node hosts, as the cluster
//! layout assigns them, shared by every shard's state machine on the node.
//!
//! All shards of a node keep their data in one column family keyed by
//! token, so a state machine that replays an old history must not write
//! into a range another local shard owns now. That happens when a replica
//! of a shard that was split is re-created on a node that still hosts the
//! split-off half: it installs a snapshot from before the split and replays
//! the split. It also records which data shards the layout has, so a
//! replayed split can tell whether its new shard was already placed on
//! other nodes. Owns only these maps; the node keeps them current (before
//! it opens or deletes groups) and the state machines read them.

use std::collections::BTreeMap;
use std::collections::BTreeSet;
use std::sync::RwLock;

use crate::ring::ClusterLayout;
use crate::ring::TokenRange;
use crate::ring::META_SHARD_ID;

#[derive(Debug, Default)]
pub struct HostedRanges {
    by_shard: RwLock<BTreeMap<u64, Vec<TokenRange>>>,
    /// Every data shard the layout has (a split's new shard enters it when
    /// the split is recorded done).
    known: RwLock<BTreeSet<u64>>,
}

impl HostedRanges {
    /// Replaces the map with the data shards `layout` puts on `node`
    /// (learners included).
    pub fn set_from(&self, layout: &ClusterLayout, node: u64) {
        let map: BTreeMap<u64, Vec<TokenRange>> = layout
            .groups_on(node)
            .filter(|s| s.id != META_SHARD_ID)
            .map(|s| (s.id, s.ranges.clone()))
            .collect();
        let known: BTreeSet<u64> = layout
            .shards
            .keys()
            .copied()
            .filter(|id| *id != META_SHARD_ID)
            .collect();
        *self.by_shard.write().unwrap_or_else(|p| p.into_inner()) = map;
        *self.known.write().unwrap_or_else(|p| p.into_inner()) = known;
    }

    /// Records one shard's ranges (tests and tools; the node uses
    /// [`HostedRanges::set_from`]).
    pub fn set_shard(&self, shard: u64, ranges: Vec<TokenRange>) {
        self.by_shard
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(shard, ranges);
    }

    /// Records that the layout has `shard` (tests and tools).
    pub fn set_known(&self, shard: u64) {
        self.known.write().unwrap_or_else(|p| p.into_inner()).insert(shard);
    }

    /// Whether the layout has `shard`, hosted here or not.
    pub fn knows(&self, shard: u64) -> bool {
        self.known.read().unwrap_or_else(|p| p.into_inner()).contains(&shard) || self.hosts(shard)
    }

    /// Whether `shard` is hosted here.
    pub fn hosts(&self, shard: u64) -> bool {
        self.by_shard
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .contains_key(&shard)
    }

    /// The ranges of every hosted shard but `shard`.
    pub fn others(&self, shard: u64) -> Vec<TokenRange> {
        self.by_shard
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .filter(|(id, _)| **id != shard)
            .flat_map(|(_, r)| r.iter().copied())
            .collect()
    }
}

/// `ranges` minus every range in `minus`, as a sorted list of disjoint
/// ranges (an install deletes only what is its own).
pub fn subtract(ranges: &[TokenRange], minus: &[TokenRange]) -> Vec<TokenRange> {
    let mut out: Vec<TokenRange> = ranges.to_vec();
    for m in minus {
        let mut next = Vec::with_capacity(out.len() + 1);
        for r in out {
            let (r_end, m_end) = (
                r.end.map_or(u128::from(u64::MAX) + 1, u128::from),
                m.end.map_or(u128::from(u64::MAX) + 1, u128::from),
            );
            let overlaps = u128::from(m.start) < r_end && u128::from(r.start) < m_end;
            if !overlaps {
                next.push(r);
                continue;
            }
            if r.start < m.start {
                next.push(TokenRange {
                    start: r.start,
                    end: Some(m.start),
                });
            }
            if m_end < r_end {
                // m.end is Some here: an open m reaches the end of the ring.
                if let Some(e) = m.end {
                    next.push(TokenRange { start: e, end: r.end });
                }
            }
        }
        out = next;
    }
    out.sort_by_key(|r| r.start);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(start: u64, end: Option<u64>) -> TokenRange {
        TokenRange { start, end }
    }

    #[test]
    fn subtract_cuts_holes_and_ends() {
        assert_eq!(subtract(&[r(0, Some(100))], &[]), vec![r(0, Some(100))]);
        assert_eq!(subtract(&[r(0, Some(100))], &[r(50, Some(100))]), vec![r(0, Some(50))]);
        assert_eq!(
            subtract(&[r(0, Some(100))], &[r(20, Some(30))]),
            vec![r(0, Some(20)), r(30, Some(100))]
        );
        assert_eq!(subtract(&[r(10, None)], &[r(50, None)]), vec![r(10, Some(50))]);
        assert_eq!(subtract(&[r(10, None)], &[r(0, Some(20))]), vec![r(20, None)]);
        assert_eq!(subtract(&[r(10, Some(20))], &[r(0, None)]), vec![]);
        assert_eq!(
            subtract(&[r(0, Some(10)), r(50, Some(60))], &[r(5, Some(55))]),
            vec![r(0, Some(5)), r(55, Some(60))]
        );
    }
}
