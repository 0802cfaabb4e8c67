//! Node configuration: the TOML file format, its defaults, command-line
//! overrides and validation.
//!
//! Owns every tunable limit of a node. Does no I/O besides reading the config
//! file; every other module receives an already validated [`Config`].

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;
use serde::Serialize;

/// Upper bound on shards a cluster may be bootstrapped with.
pub const SHARDS_MAX: u32 = 4096;
/// Upper bound on the nodes named in `initial_cluster`.
pub const INITIAL_NODES_MAX: usize = 64;
/// Most addresses in `join`.
pub const JOIN_SEEDS_MAX: usize = 16;

/// Errors in configuration; reported once at startup.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("cannot parse config file {path}: {source}")]
    Parse { path: PathBuf, source: toml::de::Error },
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

/// Whole node configuration. Every field has a default, so an empty file is
/// valid apart from the required identity fields.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// This node's id; must appear in `initial_cluster`.
    pub node_id: u64,
    /// Address the gRPC server binds to (may be a wildcard such as
    /// `0.0.0.0:50051`). Peers and clients reach the node at its address in
    /// `initial_cluster`, as etcd's `initial-advertise-peer-urls`.
    pub listen: String,
    /// Source IP address of this node's outgoing connections to peers
    /// (empty = chosen by the OS). Lets fault tests cut one node off with
    /// address-based firewall rules on a shared loopback.
    pub peer_source_address: String,
    /// HTTP address of the status port (`/metrics`, `/healthz`); empty =
    /// no status port.
    pub status_listen: String,
    /// Directory holding this node's RocksDB.
    pub data_dir: PathBuf,
    /// `id=host:port` pairs, comma separated, of the nodes that bootstrap
    /// the cluster. Ignored when the data dir already holds a cluster.
    pub initial_cluster: String,
    /// Number of data shards the ring is split into at bootstrap; 0 (the
    /// default) = one per node in `initial_cluster`, so every node can lead
    /// one group. Fewer, larger groups put more requests in each Raft entry
    /// (see docs/performance.md); shards split as they grow.
    pub shards: u32,
    /// `host:port` of members of a running cluster (an IP address or a DNS
    /// name, resolved when joining), comma-separated (one is enough; several
    /// let the join go through whichever answers): on first start the node
    /// joins that cluster instead of bootstrapping one (then
    /// `initial_cluster` and `shards` are not used). Ignored on restarts.
    pub join: String,
    /// Address peers and clients reach this node at. Empty = its address in
    /// `initial_cluster`, else `listen`.
    pub advertise: String,
    /// Failure-domain label (rack, zone; empty = none). Placement keeps at
    /// most one replica of a shard per zone while enough zones have nodes.
    pub zone: String,
    pub raft: RaftConfig,
    pub placement: PlacementConfig,
    pub limits: LimitsConfig,
    pub sessions: SessionConfig,
    pub storage: StorageConfig,
    pub log: LogConfig,
    pub tls: TlsConfig,
    pub admin: AdminConfig,
    pub testing: TestingConfig,
}

/// Raft timing and log compaction, applied to every shard group.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct RaftConfig {
    pub heartbeat_interval_ms: u64,
    pub election_timeout_ms_min: u64,
    pub election_timeout_ms_max: u64,
    /// Build a snapshot after this many entries were applied since the last.
    pub snapshot_logs_since_last: u64,
    /// Entries kept in the log behind a snapshot (0 = purge all it covers).
    pub snapshot_logs_to_keep: u64,
    /// Largest snapshot chunk sent in one RPC.
    pub snapshot_chunk_bytes_max: u64,
    /// Deadline of one snapshot chunk RPC; the last one includes installing
    /// the whole snapshot on the receiver, so it must cover that.
    pub install_snapshot_timeout_ms: u64,
    /// Snapshot bytes this node sends per second, over all shards and
    /// peers (0 = unlimited). Bounds what a shard move or a snapshot
    /// catch-up takes from client traffic; also bounds how fast a move can
    /// copy a shard.
    pub snapshot_send_bytes_per_sec: u64,
    /// Most entries in one append-entries RPC.
    pub append_entries_max: u64,
    /// How long a request waits for a shard to elect a leader.
    pub leader_wait_ms: u64,
    /// Lease reads: a leader serves a linearizable read without a quorum
    /// round while a quorum acknowledged an append it sent less than this
    /// share of `election_timeout_ms_max` ago (followers refuse to vote for
    /// `election_timeout_ms_max` after accepting an append, so no other
    /// leader can exist in that time; the rest is the margin for clock-rate
    /// drift between nodes). 0 turns lease reads off: every linearizable
    /// read then takes a quorum round. At most `READ_LEASE_PERCENT_MAX`.
    pub read_lease_percent: u64,
    /// A leader sends new entries to its followers while its own WAL sync
    /// of them runs, instead of after it; a follower's acceptance still
    /// counts only once the leader's copy is on disk too, so an entry
    /// commits on the same durable quorum either way. Shortens every
    /// write by about one fsync. Off: the leader syncs, then replicates.
    pub overlap_leader_sync: bool,
}

/// Largest `raft.read_lease_percent`: at least a tenth of the follower
/// lease stays as the drift margin.
pub const READ_LEASE_PERCENT_MAX: u64 = 90;

impl RaftConfig {
    /// The lease durations of every shard group of this node.
    pub fn lease(&self) -> crate::raft::lease::LeaseConfig {
        crate::raft::lease::LeaseConfig {
            read_lease: Duration::from_millis(self.election_timeout_ms_max * self.read_lease_percent / 100),
            follower_lease: Duration::from_millis(self.election_timeout_ms_max),
        }
    }
}

/// Replica placement, run by the metadata group's leader.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct PlacementConfig {
    /// How often the metadata leader checks nodes and drives moves.
    pub tick_ms: u64,
    /// Replica moves in flight at once (operator, rebalance and repair
    /// moves together); bounds the copy traffic competing with clients.
    pub moves_in_flight_max: usize,
    /// A node is "up" if it answered the metadata leader within this time.
    pub node_alive_ms: u64,
    /// A node silent for longer is treated as gone: its replicas are
    /// re-created on other nodes.
    pub node_down_replace_ms: u64,
    /// A move whose target stays silent this long is rolled back (only
    /// before the target became a voter).
    pub move_target_down_ms: u64,
    /// A shard whose leader estimates it larger than this is split at the
    /// middle of its range, while rebalancing is on (0 = never).
    pub split_shard_bytes: u64,
    /// While the cluster has fewer data shards than this many per member
    /// node (draining nodes aside), the largest shard is split, so nodes
    /// that join get shards to lead; while rebalancing is on (0 = never).
    pub shards_per_node_min: u32,
}

impl Default for PlacementConfig {
    fn default() -> Self {
        Self {
            tick_ms: 500,
            moves_in_flight_max: 2,
            node_alive_ms: 5_000,
            node_down_replace_ms: 10 * 60 * 1000,
            move_target_down_ms: 60_000,
            split_shard_bytes: 1 << 30,
            // With the bootstrap default of one shard per node, a node that
            // joins gets a shard to lead.
            shards_per_node_min: 1,
        }
    }
}

/// Limits checked at the edge, on every request.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsConfig {
    pub key_bytes_max: usize,
    pub value_bytes_max: usize,
    pub batch_keys_max: usize,
    /// Sum of key and value bytes in one BatchPut.
    pub batch_bytes_max: usize,
    /// Largest page a Scan returns; also the page size when none is asked.
    pub scan_limit_max: u32,
    /// Requests executing on this node at once; more are refused with
    /// OVERLOADED.
    pub inflight_requests_max: usize,
    /// Deadline of a forwarded request when the caller gave none.
    pub forward_timeout_ms: u64,
    /// Requests per second one client (client id, else IP address) may
    /// start on this node; more are refused with OVERLOADED. 0 = no limit.
    pub client_requests_per_second: u32,
    /// Burst a client may send above its rate (>= 1 when the rate is set).
    pub client_burst: u32,
}

/// Exactly-once session table.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct SessionConfig {
    /// A client idle for longer (by log timestamps) loses its session entry.
    pub ttl_ms: u64,
    /// A shard leader merges concurrent puts of different callers (many
    /// smart clients, plain gRPC callers) into one Raft entry of one part
    /// per caller. Turn it off while nodes of a release without such
    /// entries (before 2026-12-07) are still in the cluster: they cannot
    /// read them. Off, only puts without a session are merged, into one
    /// `BatchPut` that a split race refuses as a whole.
    pub merge_puts: bool,
}

/// TLS for every connection of the node's gRPC port: clients, operators and
/// peers. All paths empty = plaintext (the playground default).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(default, deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM certificate chain of this node: its server certificate, and its
    /// client certificate towards peers. Must name the node's address (IP
    /// SAN) as written in `initial_cluster`.
    pub cert_file: PathBuf,
    /// PEM private key of `cert_file`.
    pub key_file: PathBuf,
    /// PEM CA bundle that signs the peers' (and, with
    /// `require_client_cert`, the clients') certificates.
    pub ca_file: PathBuf,
    /// Mutual TLS: refuse every connection without a certificate signed by
    /// `ca_file` (clients, operators and peers alike).
    pub require_client_cert: bool,
}

impl TlsConfig {
    pub fn enabled(&self) -> bool {
        !self.cert_file.as_os_str().is_empty()
    }
}

/// Deliberately broken behaviour for fault-testing the fault tests. Never
/// set in production: the node logs an error at startup when any is on.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(default, deny_unknown_fields)]
pub struct TestingConfig {
    /// Serve "linearizable" reads from the local replica without a
    /// ReadIndex round, on any replica: reads may be stale. The Jepsen
    /// harness must catch this.
    pub unsafe_reads_without_read_index: bool,
}

/// Access to `ringkv.v1.Admin`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(default, deny_unknown_fields)]
pub struct AdminConfig {
    /// File holding the bearer token Admin calls must send as
    /// `authorization: Bearer <token>`. Empty = no token (then only mutual
    /// TLS, if on, guards the Admin API).
    pub token_file: PathBuf,
}

/// Log output.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    /// `text` (human readable) or `json` (one object per line).
    pub format: LogFormat,
    /// Kv requests slower than this are logged at WARN with method, shard
    /// and duration; 0 disables the slow-request log.
    pub slow_request_ms: u64,
}

/// Log line format.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            format: LogFormat::Text,
            slow_request_ms: 1_000,
        }
    }
}

/// RocksDB tuning.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct StorageConfig {
    /// Shared block cache for all column families.
    pub block_cache_bytes: usize,
    /// Memtable size per column family.
    pub write_buffer_bytes: usize,
    /// Most log-write requests merged into one group-commit write batch.
    pub group_commit_requests_max: usize,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            node_id: 0,
            listen: "127.0.0.1:50051".to_string(),
            status_listen: String::new(),
            peer_source_address: String::new(),
            data_dir: PathBuf::from("./data/ringkv"),
            initial_cluster: String::new(),
            shards: 0,
            join: String::new(),
            advertise: String::new(),
            zone: String::new(),
            raft: RaftConfig::default(),
            placement: PlacementConfig::default(),
            limits: LimitsConfig::default(),
            sessions: SessionConfig::default(),
            storage: StorageConfig::default(),
            log: LogConfig::default(),
            tls: TlsConfig::default(),
            admin: AdminConfig::default(),
            testing: TestingConfig::default(),
        }
    }
}

impl Default for RaftConfig {
    fn default() -> Self {
        Self {
            heartbeat_interval_ms: 100,
            // A follower campaigns only after openraft's leader lease (one
            // election_timeout_ms_max since the leader last reached it) plus
            // its own election timeout: 650-800 ms, so a dead leader's shards
            // take writes again within a second (`make bench-failover`).
            election_timeout_ms_min: 250,
            election_timeout_ms_max: 400,
            snapshot_logs_since_last: 10_000,
            snapshot_logs_to_keep: 1_000,
            snapshot_chunk_bytes_max: 1024 * 1024,
            install_snapshot_timeout_ms: 60_000,
            snapshot_send_bytes_per_sec: 64 * 1024 * 1024,
            append_entries_max: 256,
            leader_wait_ms: 3_000,
            // 300 ms of the 400 ms follower lease; heartbeats every 100 ms
            // renew it.
            read_lease_percent: 75,
            overlap_leader_sync: true,
        }
    }
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            key_bytes_max: 4096,
            value_bytes_max: 1024 * 1024,
            batch_keys_max: 1000,
            batch_bytes_max: 16 * 1024 * 1024,
            scan_limit_max: 10_000,
            inflight_requests_max: 4096,
            forward_timeout_ms: 5_000,
            client_requests_per_second: 0,
            client_burst: 100,
        }
    }
}

impl Default for SessionConfig {
    fn default() -> Self {
        Self {
            ttl_ms: 10 * 60 * 1000,
            merge_puts: true,
        }
    }
}

impl Default for StorageConfig {
    fn default() -> Self {
        Self {
            block_cache_bytes: 32 * 1024 * 1024,
            write_buffer_bytes: 8 * 1024 * 1024,
            group_commit_requests_max: 1024,
        }
    }
}

impl Config {
    /// Reads a TOML config file.
    pub fn from_file(path: &std::path::Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        toml::from_str(&text).map_err(|source| ConfigError::Parse {
            path: path.to_path_buf(),
            source,
        })
    }

    /// Parses `initial_cluster` into node id -> address.
    pub fn initial_nodes(&self) -> Result<BTreeMap<u64, String>, ConfigError> {
        parse_initial_cluster(&self.initial_cluster)
    }

    /// The members a joining node asks, in order, from `join`.
    pub fn join_seeds(&self) -> Result<Vec<String>, ConfigError> {
        parse_join(&self.join)
    }

    /// The data shards a bootstrap creates: `shards`, or one per node of
    /// `initial_cluster` when it is 0. Every node of a bootstrap computes the
    /// same number from the same flags.
    pub fn bootstrap_shards(&self) -> Result<u32, ConfigError> {
        if self.shards != 0 {
            return Ok(self.shards);
        }
        let nodes = self.initial_nodes()?.len();
        assert!(
            (1..=INITIAL_NODES_MAX).contains(&nodes),
            "parse_initial_cluster bounds the node count"
        );
        Ok(nodes as u32)
    }

    /// Checks every field and the relations between them.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |m: String| Err(ConfigError::Invalid(m));
        if self.node_id == 0 {
            return bad("node_id must be set and non-zero".into());
        }
        if self.listen.parse::<SocketAddr>().is_err() {
            return bad(format!("listen {:?} is not an ip:port address", self.listen));
        }
        if !self.peer_source_address.is_empty() && self.peer_source_address.parse::<std::net::IpAddr>().is_err() {
            return bad(format!(
                "peer_source_address {:?} is not an IP address",
                self.peer_source_address
            ));
        }
        if !self.status_listen.is_empty() && self.status_listen.parse::<SocketAddr>().is_err() {
            return bad(format!(
                "status_listen {:?} is not an ip:port address",
                self.status_listen
            ));
        }
        let t = &self.tls;
        let set = |p: &PathBuf| !p.as_os_str().is_empty();
        if set(&t.cert_file) != set(&t.key_file) {
            return bad("tls.cert_file and tls.key_file must be set together".into());
        }
        if t.enabled() && !set(&t.ca_file) {
            return bad("tls.ca_file is required with TLS: peers verify each other with it".into());
        }
        if !t.enabled() && (set(&t.ca_file) || t.require_client_cert) {
            return bad("tls.ca_file and tls.require_client_cert need tls.cert_file and tls.key_file".into());
        }
        if self.shards > SHARDS_MAX {
            return bad(format!(
                "shards must be 0 (one per initial node) or 1..={SHARDS_MAX}, got {}",
                self.shards
            ));
        }
        if let Err(e) = check_zone(&self.zone) {
            return bad(e);
        }
        if !self.advertise.is_empty() && self.advertise.parse::<SocketAddr>().is_err() {
            return bad(format!("advertise {:?} is not an ip:port address", self.advertise));
        }
        if self.join.is_empty() {
            let nodes = self.initial_nodes()?;
            if !nodes.contains_key(&self.node_id) {
                return bad(format!(
                    "node_id {} does not appear in initial_cluster {:?}",
                    self.node_id, self.initial_cluster
                ));
            }
        } else {
            self.join_seeds()?;
            if self
                .advertise_addr()
                .parse::<SocketAddr>()
                .is_ok_and(|a| a.ip().is_unspecified())
            {
                return bad("a joining node needs `advertise` when `listen` is a wildcard address".into());
            }
        }
        let p = &self.placement;
        if p.shards_per_node_min > crate::placement::SHARDS_PER_NODE_MIN_MAX {
            return bad(format!(
                "placement.shards_per_node_min must be <= {}",
                crate::placement::SHARDS_PER_NODE_MIN_MAX
            ));
        }
        if p.tick_ms == 0 || p.tick_ms > 60_000 {
            return bad("placement.tick_ms must be 1..=60000".into());
        }
        if p.moves_in_flight_max > crate::placement::MOVES_IN_FLIGHT_MAX {
            return bad(format!(
                "placement.moves_in_flight_max must be <= {}",
                crate::placement::MOVES_IN_FLIGHT_MAX
            ));
        }
        if p.node_alive_ms < 2 * p.tick_ms {
            return bad("placement.node_alive_ms must be at least twice placement.tick_ms".into());
        }
        if p.node_down_replace_ms < p.node_alive_ms || p.move_target_down_ms < p.node_alive_ms {
            return bad(
                "placement.node_down_replace_ms and placement.move_target_down_ms must be >= placement.node_alive_ms"
                    .into(),
            );
        }
        let r = &self.raft;
        if r.heartbeat_interval_ms == 0 {
            return bad("raft.heartbeat_interval_ms must be > 0".into());
        }
        if r.election_timeout_ms_min <= r.heartbeat_interval_ms {
            return bad("raft.election_timeout_ms_min must exceed raft.heartbeat_interval_ms".into());
        }
        if r.election_timeout_ms_max <= r.election_timeout_ms_min {
            return bad("raft.election_timeout_ms_max must exceed raft.election_timeout_ms_min".into());
        }
        if r.snapshot_logs_since_last == 0 {
            return bad("raft.snapshot_logs_since_last must be > 0".into());
        }
        if r.snapshot_chunk_bytes_max < 1024 || r.snapshot_chunk_bytes_max > 64 * 1024 * 1024 {
            return bad("raft.snapshot_chunk_bytes_max must be 1 KiB..=64 MiB".into());
        }
        if r.install_snapshot_timeout_ms < r.election_timeout_ms_max {
            return bad("raft.install_snapshot_timeout_ms must be >= raft.election_timeout_ms_max".into());
        }
        if r.snapshot_send_bytes_per_sec != 0 && r.snapshot_send_bytes_per_sec < r.snapshot_chunk_bytes_max {
            return bad(
                "raft.snapshot_send_bytes_per_sec must be 0 (unlimited) or at least raft.snapshot_chunk_bytes_max"
                    .into(),
            );
        }
        if r.append_entries_max == 0 {
            return bad("raft.append_entries_max must be > 0".into());
        }
        if r.read_lease_percent > READ_LEASE_PERCENT_MAX {
            return bad(format!(
                "raft.read_lease_percent must be 0 (off) ..= {READ_LEASE_PERCENT_MAX}, got {}",
                r.read_lease_percent
            ));
        }
        let l = &self.limits;
        if l.key_bytes_max == 0 || l.key_bytes_max > 64 * 1024 {
            return bad("limits.key_bytes_max must be 1..=65536".into());
        }
        if l.value_bytes_max > 64 * 1024 * 1024 {
            return bad("limits.value_bytes_max must be <= 64 MiB".into());
        }
        if l.batch_keys_max == 0 || l.batch_keys_max > 100_000 {
            return bad("limits.batch_keys_max must be 1..=100000".into());
        }
        if l.batch_bytes_max < l.key_bytes_max + l.value_bytes_max {
            return bad("limits.batch_bytes_max must hold at least one maximal key and value".into());
        }
        if l.batch_bytes_max > 256 * 1024 * 1024 {
            return bad("limits.batch_bytes_max must be <= 256 MiB".into());
        }
        if l.scan_limit_max == 0 {
            return bad("limits.scan_limit_max must be > 0".into());
        }
        if l.client_requests_per_second > 0 && l.client_burst == 0 {
            return bad("limits.client_burst must be >= 1 when limits.client_requests_per_second is set".into());
        }
        if l.inflight_requests_max == 0 {
            return bad("limits.inflight_requests_max must be > 0".into());
        }
        if self.sessions.ttl_ms == 0 {
            return bad("sessions.ttl_ms must be > 0".into());
        }
        if self.storage.group_commit_requests_max == 0 {
            return bad("storage.group_commit_requests_max must be > 0".into());
        }
        Ok(())
    }

    /// The address peers and clients reach this node at.
    pub fn advertise_addr(&self) -> String {
        if !self.advertise.is_empty() {
            return self.advertise.clone();
        }
        self.initial_nodes()
            .ok()
            .and_then(|n| n.get(&self.node_id).cloned())
            .unwrap_or_else(|| self.listen.clone())
    }

    /// Largest gRPC message a node accepts: one maximal batch plus framing.
    pub fn grpc_message_bytes_max(&self) -> usize {
        self.limits.batch_bytes_max + 1024 * 1024
    }
}

/// Longest zone label.
pub const ZONE_CHARS_MAX: usize = 64;

/// Checks a zone label: at most [`ZONE_CHARS_MAX`] of `[A-Za-z0-9._-]`.
pub fn check_zone(zone: &str) -> Result<(), String> {
    if zone.len() > ZONE_CHARS_MAX || !zone.chars().all(|c| c.is_ascii_alphanumeric() || "._-".contains(c)) {
        return Err(format!(
            "zone {zone:?} must be at most {ZONE_CHARS_MAX} characters of letters, digits, '.', '_' and '-'"
        ));
    }
    Ok(())
}

/// Parses `join`: `host:port[,host:port...]` (a host is an IP address or a
/// DNS name, resolved when the node joins), at least one, at most
/// [`JOIN_SEEDS_MAX`].
pub fn parse_join(s: &str) -> Result<Vec<String>, ConfigError> {
    let mut seeds: Vec<String> = Vec::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        if part.parse::<SocketAddr>().is_err() && !is_host_port(part) {
            return Err(ConfigError::Invalid(format!(
                "join entry {part:?} is not host:port (an IP address or a DNS name, and a port)"
            )));
        }
        if !seeds.iter().any(|a| a == part) {
            seeds.push(part.to_string());
        }
    }
    if seeds.is_empty() {
        return Err(ConfigError::Invalid(format!("join {s:?} names no address")));
    }
    if seeds.len() > JOIN_SEEDS_MAX {
        return Err(ConfigError::Invalid(format!(
            "join names more than {JOIN_SEEDS_MAX} addresses"
        )));
    }
    Ok(seeds)
}

/// Whether `s` is `name:port` with a DNS name (letters, digits, `-` and
/// `.`, at most 253 characters, no label starting or ending with `-`) and
/// a non-zero port.
fn is_host_port(s: &str) -> bool {
    let Some((host, port)) = s.rsplit_once(':') else {
        return false;
    };
    let port_ok = port.parse::<u16>().is_ok_and(|p| p != 0);
    let labels_ok = host.split('.').all(|l| {
        !l.is_empty()
            && l.len() <= 63
            && !l.starts_with('-')
            && !l.ends_with('-')
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
    });
    port_ok && !host.is_empty() && host.len() <= 253 && labels_ok
}

/// Parses `1=host:port,2=host:port`.
pub fn parse_initial_cluster(s: &str) -> Result<BTreeMap<u64, String>, ConfigError> {
    let mut nodes = BTreeMap::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (id, addr) = part
            .split_once('=')
            .ok_or_else(|| ConfigError::Invalid(format!("initial_cluster entry {part:?} is not id=host:port")))?;
        let id: u64 = id
            .trim()
            .parse()
            .map_err(|_| ConfigError::Invalid(format!("initial_cluster entry {part:?}: id is not a number")))?;
        if id == 0 {
            return Err(ConfigError::Invalid("initial_cluster: node id 0 is reserved".into()));
        }
        let addr = addr.trim();
        if addr.parse::<SocketAddr>().is_err() {
            return Err(ConfigError::Invalid(format!(
                "initial_cluster entry {part:?}: {addr:?} is not ip:port"
            )));
        }
        if nodes.insert(id, addr.to_string()).is_some() {
            return Err(ConfigError::Invalid(format!("initial_cluster names node {id} twice")));
        }
    }
    if nodes.is_empty() {
        return Err(ConfigError::Invalid("initial_cluster is empty".into()));
    }
    if nodes.len() > INITIAL_NODES_MAX {
        return Err(ConfigError::Invalid(format!(
            "initial_cluster names more than {INITIAL_NODES_MAX} nodes"
        )));
    }
    Ok(nodes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn valid() -> Config {
        Config {
            node_id: 1,
            initial_cluster: "1=127.0.0.1:1,2=127.0.0.1:2,3=127.0.0.1:3".into(),
            ..Config::default()
        }
    }

    #[test]
    fn default_with_identity_is_valid() {
        valid().validate().unwrap();
    }

    #[test]
    fn bootstrap_shards_default_to_one_per_initial_node() {
        let mut c = valid();
        assert_eq!(c.bootstrap_shards().unwrap(), 3);
        c.initial_cluster = "7=127.0.0.1:7".into();
        assert_eq!(c.bootstrap_shards().unwrap(), 1);
        c.shards = 16;
        assert_eq!(c.bootstrap_shards().unwrap(), 16);
    }

    #[test]
    fn example_file_parses_and_validates() {
        let text = include_str!("../../ringkv.example.toml");
        let cfg: Config = toml::from_str(text).unwrap();
        cfg.validate().unwrap();
    }

    #[test]
    fn rejects_bad_values() {
        let mut c = valid();
        c.node_id = 4;
        assert!(c.validate().is_err());
        let mut c = valid();
        c.raft.election_timeout_ms_max = c.raft.election_timeout_ms_min;
        assert!(c.validate().is_err());
        let mut c = valid();
        c.shards = SHARDS_MAX + 1;
        assert!(c.validate().is_err());
        let mut c = valid();
        c.placement.shards_per_node_min = crate::placement::SHARDS_PER_NODE_MIN_MAX + 1;
        assert!(c.validate().is_err());
        assert!(parse_initial_cluster("1=foo").is_err());
        assert!(parse_initial_cluster("1=127.0.0.1:1,1=127.0.0.1:2").is_err());
        assert!(parse_initial_cluster("").is_err());
    }

    #[test]
    fn join_takes_one_or_more_addresses() {
        let mut c = valid();
        c.node_id = 4;
        c.join = "127.0.0.1:1".into();
        c.validate().unwrap();
        assert_eq!(c.join_seeds().unwrap(), ["127.0.0.1:1"]);
        c.join = " 127.0.0.1:1, [::1]:2,127.0.0.1:1,".into();
        c.validate().unwrap();
        assert_eq!(
            c.join_seeds().unwrap(),
            ["127.0.0.1:1", "[::1]:2"],
            "in order, once each"
        );
        c.join = "127.0.0.1:1,ringkv-0.ringkv-headless.ns.svc:50051,localhost:2".into();
        c.validate().unwrap();
        for bad in [
            ",",
            "127.0.0.1",
            "ringkv-0",
            "ringkv-0:0",
            "-x:1",
            "a..b:1",
            "a_b:1",
            "[::1:2",
        ] {
            c.join = bad.into();
            assert!(c.validate().is_err(), "join {bad:?} accepted");
        }
        c.join = (1..=JOIN_SEEDS_MAX + 1)
            .map(|p| format!("127.0.0.1:{p}"))
            .collect::<Vec<_>>()
            .join(",");
        assert!(c.validate().is_err(), "more than JOIN_SEEDS_MAX seeds accepted");
        c.join = "127.0.0.1:1".into();
        c.listen = "0.0.0.0:7".into();
        c.initial_cluster.clear();
        assert!(c.validate().is_err(), "a wildcard listen without advertise");
        c.advertise = "10.0.0.4:7".into();
        c.validate().unwrap();
    }

    #[test]
    fn unknown_keys_are_errors() {
        assert!(toml::from_str::<Config>("nodeid = 3").is_err());
    }
}
