//! Node metrics in the Prometheus text exposition format (version 0.0.4).
//!
//! Owns the request counters and latency histograms the Kv service feeds,
//! the fsync latency histogram the group committer feeds, and the rendering
//! of everything else (Raft, RocksDB, node counters) read at scrape time.
//! It never blocks the request path: recording is a few relaxed atomic adds.

pub mod histogram;

use std::fmt::Write as _;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;

use histogram::Histogram;
use ringkv_proto::v1::ErrorCode;

use crate::node::Node;

/// Kv methods, in the order of [`Method`].
pub const METHODS: [&str; 7] = ["Get", "Put", "Delete", "CompareAndSwap", "BatchGet", "BatchPut", "Scan"];

/// A Kv method (index into [`METHODS`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(usize)]
pub enum Method {
    Get = 0,
    Put,
    Delete,
    CompareAndSwap,
    BatchGet,
    BatchPut,
    Scan,
}

impl Method {
    pub fn name(self) -> &'static str {
        METHODS[self as usize]
    }
}

/// Outcomes a request is counted under: `ok` (0), an [`ErrorCode`] name
/// (its number), or `other` (a gRPC error without a ringkv code).
const OUTCOMES: usize = 12;
const OUTCOME_OTHER: usize = OUTCOMES - 1;

/// How a request ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Ok,
    Error(ErrorCode),
    Other,
}

fn outcome_index(o: Outcome) -> usize {
    match o {
        Outcome::Ok => 0,
        Outcome::Error(c) => (c as usize).clamp(1, OUTCOME_OTHER),
        Outcome::Other => OUTCOME_OTHER,
    }
}

fn outcome_name(i: usize) -> &'static str {
    match i {
        0 => "ok",
        OUTCOME_OTHER => "other",
        _ => ErrorCode::try_from(i as i32).map_or("other", |c| c.as_str_name()),
    }
}

/// Counters and histograms recorded while serving.
pub struct Metrics {
    requests: [[AtomicU64; OUTCOMES]; METHODS.len()],
    latency: [Histogram; METHODS.len()],
}

impl Default for Metrics {
    fn default() -> Self {
        Self {
            requests: std::array::from_fn(|_| std::array::from_fn(|_| AtomicU64::new(0))),
            latency: std::array::from_fn(|_| Histogram::default()),
        }
    }
}

impl Metrics {
    /// Records one finished Kv request.
    pub fn request(&self, method: Method, outcome: Outcome, seconds: f64) {
        self.requests[method as usize][outcome_index(outcome)].fetch_add(1, Ordering::Relaxed);
        self.latency[method as usize].observe(seconds);
    }
}

/// Writes one metric family header.
fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

fn sample(out: &mut String, name: &str, labels: &str, value: impl std::fmt::Display) {
    if labels.is_empty() {
        let _ = writeln!(out, "{name} {value}");
    } else {
        let _ = writeln!(out, "{name}{{{labels}}} {value}");
    }
}

/// Renders every metric of `node`.
pub fn render(node: &Node) -> String {
    let m = &node.metrics;
    let mut out = String::with_capacity(16 * 1024);
    let node_label = format!("node=\"{}\"", node.id);

    family(
        &mut out,
        "ringkv_requests_total",
        "counter",
        "Kv requests finished, by method and outcome.",
    );
    for (mi, method) in METHODS.iter().enumerate() {
        for oi in 0..OUTCOMES {
            let n = m.requests[mi][oi].load(Ordering::Relaxed);
            if n > 0 || oi == 0 {
                // Outcome 0 always, so every method has a series from the start.
                let labels = format!("{node_label},method=\"{method}\",outcome=\"{}\"", outcome_name(oi));
                sample(&mut out, "ringkv_requests_total", &labels, n);
            }
        }
    }
    family(
        &mut out,
        "ringkv_request_duration_seconds",
        "histogram",
        "Kv request latency as served by this node, including forwarding.",
    );
    for (mi, method) in METHODS.iter().enumerate() {
        m.latency[mi].render(
            &mut out,
            "ringkv_request_duration_seconds",
            &format!("{node_label},method=\"{method}\""),
        );
    }
    family(
        &mut out,
        "ringkv_wal_sync_duration_seconds",
        "histogram",
        "Duration of one group-commit write batch including its WAL fsync.",
    );
    let gc = &node.gc.stats;
    gc.sync_seconds
        .render(&mut out, "ringkv_wal_sync_duration_seconds", &node_label);

    family(&mut out, "ringkv_wal_syncs_total", "counter", "Group-commit WAL syncs.");
    sample(
        &mut out,
        "ringkv_wal_syncs_total",
        &node_label,
        gc.syncs.load(Ordering::Relaxed),
    );
    family(
        &mut out,
        "ringkv_log_write_requests_total",
        "counter",
        "Durable log writes (appends, votes, truncations, purges) merged into WAL syncs.",
    );
    sample(
        &mut out,
        "ringkv_log_write_requests_total",
        &node_label,
        gc.requests.load(Ordering::Relaxed),
    );
    family(
        &mut out,
        "ringkv_raft_leader_appends_before_sync_total",
        "counter",
        "Leader log appends handed to Raft before their WAL sync, so replication overlapped it.",
    );
    sample(
        &mut out,
        "ringkv_raft_leader_appends_before_sync_total",
        &node_label,
        gc.appends_before_sync.load(Ordering::Relaxed),
    );
    let net = &node.pool.stats;
    family(
        &mut out,
        "ringkv_raft_messages_sent_total",
        "counter",
        "Raft messages (appends, heartbeats, votes) this node sent to peers.",
    );
    sample(
        &mut out,
        "ringkv_raft_messages_sent_total",
        &node_label,
        net.messages_sent.load(Ordering::Relaxed),
    );
    family(
        &mut out,
        "ringkv_raft_empty_appends_sent_total",
        "counter",
        "Of those messages, appends without entries (heartbeats and commit-index notices).",
    );
    sample(
        &mut out,
        "ringkv_raft_empty_appends_sent_total",
        &node_label,
        net.empty_appends_sent.load(Ordering::Relaxed),
    );
    family(
        &mut out,
        "ringkv_raft_batches_sent_total",
        "counter",
        "Transport Batch RPCs carrying those messages.",
    );
    sample(
        &mut out,
        "ringkv_raft_batches_sent_total",
        &node_label,
        net.batches_sent.load(Ordering::Relaxed),
    );
    family(
        &mut out,
        "ringkv_client_writes_total",
        "counter",
        "Writes proposed to a local leader.",
    );
    sample(
        &mut out,
        "ringkv_client_writes_total",
        &node_label,
        node.stats.client_writes.load(Ordering::Relaxed),
    );
    let (merged_entries, merged_requests, refused) = node.proposals.lock().unwrap_or_else(|p| p.into_inner()).merged();
    family(
        &mut out,
        "ringkv_merged_entries_total",
        "counter",
        "Raft entries a local leader proposed for more than one request (merged puts).",
    );
    sample(&mut out, "ringkv_merged_entries_total", &node_label, merged_entries);
    family(
        &mut out,
        "ringkv_merged_requests_total",
        "counter",
        "Requests that rode in those merged entries.",
    );
    sample(&mut out, "ringkv_merged_requests_total", &node_label, merged_requests);
    family(
        &mut out,
        "ringkv_merged_parts_refused_total",
        "counter",
        "Callers' parts of merged entries refused because a split moved their keys first (they retry).",
    );
    sample(&mut out, "ringkv_merged_parts_refused_total", &node_label, refused);
    family(
        &mut out,
        "ringkv_forwarded_requests_total",
        "counter",
        "Requests forwarded to another node.",
    );
    sample(
        &mut out,
        "ringkv_forwarded_requests_total",
        &node_label,
        node.stats.forwarded_requests.load(Ordering::Relaxed),
    );
    family(
        &mut out,
        "ringkv_reads_raced_removal_total",
        "counter",
        "Local reads discarded because the replica was removed while they ran.",
    );
    sample(
        &mut out,
        "ringkv_reads_raced_removal_total",
        &node_label,
        node.stats.reads_raced_removal.load(Ordering::Relaxed),
    );
    family(
        &mut out,
        "ringkv_reads_during_install_total",
        "counter",
        "Local reads refused because their replica was installing a snapshot.",
    );
    sample(
        &mut out,
        "ringkv_reads_during_install_total",
        &node_label,
        node.stats.reads_during_install.load(Ordering::Relaxed),
    );

    family(
        &mut out,
        "ringkv_lease_reads_total",
        "counter",
        "Linearizable reads (or read batches) a leader served from its lease, without a quorum round.",
    );
    sample(
        &mut out,
        "ringkv_lease_reads_total",
        &node_label,
        node.stats.lease_reads.load(Ordering::Relaxed),
    );

    render_raft(node, &node_label, &mut out);
    render_rocksdb(node, &node_label, &mut out);
    render_placement(node, &node_label, &mut out);
    out
}

/// Layout epoch, in-flight placement operations and, on the metadata
/// leader, each move's progress.
fn render_placement(node: &Node, node_label: &str, out: &mut String) {
    let layout = node.layout();
    family(
        out,
        "ringkv_layout_epoch",
        "gauge",
        "Epoch of the cluster layout this node routes with.",
    );
    sample(out, "ringkv_layout_epoch", node_label, layout.epoch);
    family(
        out,
        "ringkv_placement_operations_in_flight",
        "gauge",
        "Replica moves and shard splits recorded in the layout and not finished.",
    );
    sample(
        out,
        "ringkv_placement_operations_in_flight",
        &format!("{node_label},kind=\"move\""),
        layout.ops.len(),
    );
    sample(
        out,
        "ringkv_placement_operations_in_flight",
        &format!("{node_label},kind=\"split\""),
        layout.splits.len(),
    );
    family(
        out,
        "ringkv_placement_driver_active",
        "gauge",
        "1 on the metadata leader, whose driver runs moves, splits and balancing.",
    );
    sample(
        out,
        "ringkv_placement_driver_active",
        node_label,
        u8::from(node.is_meta_leader()),
    );
    family(
        out,
        "ringkv_placement_move_entries_behind",
        "gauge",
        "Log entries a move's target is behind its shard leader (-1: nothing copied yet); metadata leader only.",
    );
    let progress = node
        .placement
        .progress
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    for op in layout.ops.values() {
        if let Some((step, behind)) = progress.get(&op.id) {
            let labels = format!(
                "{node_label},op=\"{}\",shard=\"{}\",from=\"{}\",to=\"{}\",step=\"{step}\"",
                op.id, op.shard, op.from, op.to
            );
            sample(out, "ringkv_placement_move_entries_behind", &labels, behind);
        }
    }
}

fn render_raft(node: &Node, node_label: &str, out: &mut String) {
    let hosted = node.shard_list();
    let shards: Vec<_> = hosted
        .iter()
        .map(|s| (s.id, s.raft.metrics().borrow().clone()))
        .collect();
    family(
        out,
        "ringkv_shards_hosted",
        "gauge",
        "Raft groups hosted here (the metadata group included).",
    );
    sample(out, "ringkv_shards_hosted", node_label, shards.len());
    family(
        out,
        "ringkv_snapshot_installing",
        "gauge",
        "1 while the shard's replica here installs a snapshot, or after an install failed until one succeeds: it refuses reads meanwhile.",
    );
    for s in hosted.iter() {
        let v = u8::from(s.applied_ranges.installing());
        sample(
            out,
            "ringkv_snapshot_installing",
            &format!("{node_label},shard=\"{}\"", s.id),
            v,
        );
    }
    family(out, "ringkv_shards_leading", "gauge", "Raft groups this node leads.");
    let leading = shards.iter().filter(|(_, m)| m.current_leader == Some(node.id)).count();
    sample(out, "ringkv_shards_leading", node_label, leading);
    family(out, "ringkv_raft_term", "gauge", "Current Raft term per shard.");
    for (id, m) in &shards {
        sample(
            out,
            "ringkv_raft_term",
            &format!("{node_label},shard=\"{id}\""),
            m.current_term,
        );
    }
    family(
        out,
        "ringkv_raft_is_leader",
        "gauge",
        "1 when this node leads the shard.",
    );
    for (id, m) in &shards {
        let v = u8::from(m.current_leader == Some(node.id));
        sample(out, "ringkv_raft_is_leader", &format!("{node_label},shard=\"{id}\""), v);
    }
    family(
        out,
        "ringkv_raft_apply_lag_entries",
        "gauge",
        "Log entries appended locally but not yet applied, per shard.",
    );
    for (id, m) in &shards {
        let last = m.last_log_index.unwrap_or(0);
        let applied = m.last_applied.map_or(0, |l| l.index);
        let labels = format!("{node_label},shard=\"{id}\"");
        sample(
            out,
            "ringkv_raft_apply_lag_entries",
            &labels,
            last.saturating_sub(applied),
        );
    }
    family(
        out,
        "ringkv_raft_last_applied_index",
        "gauge",
        "Last applied log index per shard.",
    );
    for (id, m) in &shards {
        let labels = format!("{node_label},shard=\"{id}\"");
        sample(
            out,
            "ringkv_raft_last_applied_index",
            &labels,
            m.last_applied.map_or(0, |l| l.index),
        );
    }
    family(
        out,
        "ringkv_raft_replication_lag_entries",
        "gauge",
        "On a leader: entries each follower is behind the leader's last log index.",
    );
    for (id, m) in &shards {
        let (Some(repl), Some(last)) = (&m.replication, m.last_log_index) else {
            continue;
        };
        for (follower, matched) in repl {
            let lag = last.saturating_sub(matched.map_or(0, |l| l.index));
            let labels = format!("{node_label},shard=\"{id}\",follower=\"{follower}\"");
            sample(out, "ringkv_raft_replication_lag_entries", &labels, lag);
        }
    }
}

fn render_rocksdb(node: &Node, node_label: &str, out: &mut String) {
    use rocksdb::properties as p;
    // (name, help, property, summed over column families or db-wide)
    let props: [(&str, &str, &p::PropName, bool); 5] = [
        (
            "ringkv_rocksdb_live_sst_bytes",
            "Size of the live SST files.",
            p::LIVE_SST_FILES_SIZE,
            true,
        ),
        (
            "ringkv_rocksdb_memtable_bytes",
            "Size of all memtables.",
            p::SIZE_ALL_MEM_TABLES,
            true,
        ),
        (
            "ringkv_rocksdb_pending_compaction_bytes",
            "Estimated bytes compaction still has to rewrite.",
            p::ESTIMATE_PENDING_COMPACTION_BYTES,
            true,
        ),
        (
            "ringkv_rocksdb_write_stopped",
            "1 while RocksDB stops writes (stall).",
            p::IS_WRITE_STOPPED,
            false,
        ),
        (
            "ringkv_rocksdb_delayed_write_rate_bytes",
            "Write rate RocksDB throttles to while slowing writes down (0 = not throttling).",
            p::ACTUAL_DELAYED_WRITE_RATE,
            false,
        ),
    ];
    for (name, help, prop, per_cf) in props {
        let v = if per_cf {
            node.db.property_sum(prop)
        } else {
            node.db.property_db(prop)
        };
        family(out, name, "gauge", help);
        sample(out, name, node_label, v);
    }
    family(
        out,
        "ringkv_resident_memory_bytes",
        "gauge",
        "Resident memory of the process.",
    );
    sample(
        out,
        "ringkv_resident_memory_bytes",
        node_label,
        crate::node::stats::resident_memory_bytes(),
    );
}
