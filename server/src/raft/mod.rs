//! Consensus: openraft type configuration, per-shard Raft settings and the
//! node-to-node network (batched per peer).
//!
//! Owns how shards talk Raft to each other. Does not store anything (see
//! `storage`) and does not serve clients (see `service`).

pub mod lease;
pub mod network;
pub mod read_index;
pub mod throttle;
pub mod types;

use std::sync::Arc;

use crate::config::RaftConfig;

/// Whether a replica must decline vote requests: it has Raft history (a
/// vote or log entries; a replica deleted and re-created on this node
/// starts from its old vote, see `keys::META_VOTE_TOMBSTONE`) but is not a
/// voter in the membership it knows. Such a replica is being added back
/// as a learner or was removed; its vote can only help a stale candidate
/// whose old configuration still lists this node. Declining a vote is
/// always safe. A pristine replica (no vote, no log: a new group at
/// cluster bootstrap, before the first membership reached it) votes, as
/// the bootstrap expects.
pub fn refuses_votes(
    me: types::NodeId,
    vote: &types::Vote,
    last_log_index: Option<u64>,
    mut voters: impl Iterator<Item = types::NodeId>,
) -> bool {
    let pristine = *vote == types::Vote::default() && last_log_index.is_none();
    !pristine && !voters.any(|v| v == me)
}

/// openraft settings of one shard group.
pub fn openraft_config(shard_id: u64, cfg: &RaftConfig) -> Result<Arc<openraft::Config>, openraft::ConfigError> {
    let c = openraft::Config {
        cluster_name: format!("ringkv-shard-{shard_id}"),
        heartbeat_interval: cfg.heartbeat_interval_ms,
        election_timeout_min: cfg.election_timeout_ms_min,
        election_timeout_max: cfg.election_timeout_ms_max,
        // The last chunk's RPC also covers installing the whole snapshot on
        // the receiver: a deadline shorter than that install makes the
        // sender resend the entire snapshot (seen with 1 GiB shards).
        install_snapshot_timeout: cfg.install_snapshot_timeout_ms,
        max_payload_entries: cfg.append_entries_max,
        replication_lag_threshold: cfg.snapshot_logs_since_last,
        snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(cfg.snapshot_logs_since_last),
        snapshot_max_chunk_size: cfg.snapshot_chunk_bytes_max,
        max_in_snapshot_log_to_keep: cfg.snapshot_logs_to_keep,
        ..Default::default()
    };
    Ok(Arc::new(c.validate()?))
}

#[cfg(test)]
mod tests {
    use super::refuses_votes;
    use super::types::Vote;

    #[test]
    fn only_a_replica_with_history_outside_the_voters_declines() {
        let none = Vote::default();
        let old = Vote::new(7, 2);
        // Pristine (bootstrap): votes even before it knows any membership.
        assert!(!refuses_votes(3, &none, None, [].into_iter()));
        // Re-created from a tombstone, or removed: declines.
        assert!(refuses_votes(3, &old, None, [].into_iter()));
        assert!(refuses_votes(3, &old, Some(40), [1, 2, 4].into_iter()));
        assert!(refuses_votes(3, &none, Some(1), [1, 2].into_iter()));
        // A voter votes, whatever its history.
        assert!(!refuses_votes(3, &old, Some(40), [1, 2, 3].into_iter()));
        assert!(!refuses_votes(3, &none, None, [3].into_iter()));
    }
}
