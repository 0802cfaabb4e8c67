//! Consensus: openraft type configuration, per-shard Raft settings and the
//! node-to-node network (batched per peer).
//!
//! Owns how shards talk Raft to each other. Does not store anything (see
//! `storage`) and does not serve clients (see `service`).

pub mod network;
pub mod read_index;
pub mod throttle;
pub mod types;

use std::sync::Arc;

use crate::config::RaftConfig;

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
