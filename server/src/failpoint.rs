//! Failpoints: named fault injections switched on by tests through the
//! `RINGKV_FAILPOINTS` environment variable, e.g.
//! `RINGKV_FAILPOINTS=snapshot.corrupt_chunk=2` corrupts the next two snapshot
//! chunks this node sends (after their crc32 was computed).
//!
//! Owns only the counters. A failpoint that is not named in the variable
//! costs one map lookup and never fires.

use std::collections::HashMap;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;
use std::sync::OnceLock;

/// Environment variable read once at first use.
pub const FAILPOINTS_ENV: &str = "RINGKV_FAILPOINTS";

/// Aborts the process after a client write was applied on this node (its
/// leader) and before the reply is sent: the client sees a lost reply.
pub const KV_ABORT_AFTER_WRITE: &str = "kv.abort_after_write";

/// Corrupts one byte of an outgoing snapshot chunk.
pub const SNAPSHOT_CORRUPT_CHUNK: &str = "snapshot.corrupt_chunk";

/// Delays the receipt of an incoming snapshot chunk by
/// [`SNAPSHOT_SLOW_RECEIVE_MS`], so tests can act in the middle of a
/// replica's catch-up.
pub const SNAPSHOT_SLOW_RECEIVE: &str = "snapshot.slow_receive";
pub const SNAPSHOT_SLOW_RECEIVE_MS: u64 = 300;

/// Pauses a snapshot install for [`SNAPSHOT_INSTALL_SLOW_MS`] at its most
/// torn moment: the replica's old data is deleted and the snapshot's data
/// not yet ingested. Tests read the replica meanwhile.
pub const SNAPSHOT_INSTALL_SLOW: &str = "snapshot.install_slow";
pub const SNAPSHOT_INSTALL_SLOW_MS: u64 = 3_000;

/// Holds a read that passed its read barrier until the node no longer
/// hosts the shard and has deleted its data (at most
/// [`KV_READ_WAITS_FOR_REMOVAL_MS_MAX`]): the race of a read against the
/// removal of its replica, made certain.
pub const KV_READ_WAITS_FOR_REMOVAL: &str = "kv.read_waits_for_removal";
pub const KV_READ_WAITS_FOR_REMOVAL_MS_MAX: u64 = 120_000;

/// Holds the metadata leader for [`PLACEMENT_SPLIT_DONE_LATE_MS`] between
/// a shard's applying a split and the layout's showing the new shard, so
/// tests can act while every node's layout lags the split.
pub const PLACEMENT_SPLIT_DONE_LATE: &str = "placement.split_done_late";
pub const PLACEMENT_SPLIT_DONE_LATE_MS: u64 = 3_000;

/// Pauses a node for [`NODE_ADOPT_MOVE_SLOW_MS`] while it adopts a layout
/// with a replica move in it: after it records and routes with the layout,
/// before it opens or deletes replicas to match it. Tests drop the RPC that
/// made the change meanwhile.
pub const NODE_ADOPT_MOVE_SLOW: &str = "node.adopt_move_slow";
pub const NODE_ADOPT_MOVE_SLOW_MS: u64 = 3_000;

/// A joining node skips its check of the seed's layout before it asks to
/// be added, as if the seed's layout lagged the metadata group: tests
/// check that the metadata leader's answer still refuses a member that
/// lost its data dir.
pub const NODE_JOIN_SKIP_LAYOUT_CHECK: &str = "node.join_skip_layout_check";

/// Delays a metadata member's background adoption of a layout with a
/// replica move in it (from its local metadata replica) by
/// [`NODE_ADOPT_MOVE_SLOW_MS`], so that the RPC that made the change
/// adopts it first.
pub const NODE_SYNC_MOVE_LATE: &str = "node.sync_move_late";

/// Holds each of this node's leader log appends that return before their
/// sync for [`STORAGE_LEADER_SYNC_SLOW_MS`] before they are even written
/// (the whole group commit waits): tests check that nothing commits while
/// the leader's copy is not on disk.
pub const STORAGE_LEADER_SYNC_SLOW: &str = "storage.leader_sync_slow";
pub const STORAGE_LEADER_SYNC_SLOW_MS: u64 = 1_500;

/// Fails the group-commit batch carrying this node's next leader log append
/// that returned before its sync (the batch is not written): the node must
/// abort, since Raft already counts the append as flushed.
pub const STORAGE_LEADER_SYNC_FAIL: &str = "storage.leader_sync_fail";

fn table() -> &'static HashMap<String, AtomicU64> {
    static TABLE: OnceLock<HashMap<String, AtomicU64>> = OnceLock::new();
    TABLE.get_or_init(|| parse(&std::env::var(FAILPOINTS_ENV).unwrap_or_default()))
}

fn parse(spec: &str) -> HashMap<String, AtomicU64> {
    spec.split(',')
        .filter_map(|part| {
            let (name, count) = part.trim().split_once('=')?;
            Some((name.trim().to_string(), AtomicU64::new(count.trim().parse().ok()?)))
        })
        .collect()
}

/// Returns true (and uses up one firing) when `name` still has firings left.
pub fn fire(name: &str) -> bool {
    let Some(left) = table().get(name) else { return false };
    left.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_counts_and_ignores_junk() {
        let t = parse("a=2, b = 1,junk,c=x");
        assert_eq!(t.len(), 2);
        assert_eq!(t["a"].load(Ordering::SeqCst), 2);
        assert_eq!(t["b"].load(Ordering::SeqCst), 1);
        assert!(!fire("never-configured"));
    }
}
