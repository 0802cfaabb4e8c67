//! `ringkv-bench failover`: how long writes stall, as a client sees them,
//! when the node leading the most shards dies with SIGKILL.
//!
//! Owns the failover benchmark: the load, the kill, the observation of the
//! surviving nodes, and the analysis and report. Against a running cluster
//! it
//! 1. waits until every shard has a leader and the leaders stay put (the
//!    placement's leader balancing has settled);
//! 2. connects the smart client (`ringkv-client`, default settings: every
//!    request bounded by its 10 s deadline, 256 in flight) and writes
//!    `--records` keys;
//! 3. runs an open-loop write load: `--rate` puts per second of
//!    `--value-bytes` values on keys drawn uniformly from the records (so
//!    from every shard), each with a fixed intended start; latency counts
//!    from that intended start, so a stall is never hidden by requests
//!    that were not sent (no coordinated omission);
//! 4. after `--kill-after-secs`, picks the victim (the node leading the
//!    most data shards, or `--victim`), notes the shards it leads, runs
//!    `--kill-cmd` with `{node}` replaced by its id and notes the instant
//!    the command returned: the kill instant;
//! 5. keeps the load running for `--after-secs`, while polling every
//!    surviving node's own view of each shard's leader and term
//!    (`Admin/ClusterStatus`, every `--poll-ms`): when the followers gave
//!    up on the dead leader and when a new one was elected;
//! 6. reports ([`analyze`], [`markdown`]) in `failover.json` and
//!    `failover.md`: per shard the victim led, the time from the kill to
//!    the first successful write (the stall; the worst shard's is "the
//!    longest write stall", judged against `--target-stall-ms`), split into
//!    election and client recovery; the longest latency of the writes in
//!    flight at the kill or issued after it; errors by kind; p50/p99
//!    before the kill; and a 100 ms timeline around the kill.
//!
//! Every loop is bounded: the load by its duration, every request by the
//! client's deadline, every wait for the cluster by a timeout.

use std::collections::BTreeMap;
use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::path::Path;
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use std::time::Instant;
use std::time::SystemTime;

use anyhow::Context;
use hdrhistogram::Histogram;
use rand::Rng;
use rand::SeedableRng;
use ringkv_client::CallOptions;
use ringkv_client::Client;
use ringkv_client::ClientStats;
use ringkv_proto::v1::ListNodesResponse;
use ringkv_proto::v1::ListShardsResponse;
use ringkv_proto::v1::ShardPlacement;
use serde::Deserialize;
use serde::Serialize;

use crate::admin::Admin;
use crate::move_shard::in_ranges;
use crate::move_shard::node_addr;
use crate::runner::Latency;
use crate::workload::key_of;

/// Most `--records`.
pub const RECORDS_MAX: u64 = 1_000_000;
/// Largest `--value-bytes`.
pub const VALUE_BYTES_MAX: usize = 1024 * 1024;
/// Highest `--rate`.
pub const RATE_MAX: f64 = 100_000.0;
/// Most load workers.
pub const CONCURRENCY_MAX: usize = 16_384;
/// Longest `--kill-after-secs` and `--after-secs`.
pub const PHASE_SECS_MAX: u64 = 600;
/// Width of one window of the timeline.
pub const TIMELINE_WINDOW_MS: u64 = 100;
/// The timeline starts this long before the kill.
pub const TIMELINE_BEFORE_MS: u64 = 2_000;
/// The markdown timeline goes on this long after the last shard recovered
/// (the JSON has all of it).
const TIMELINE_MD_AFTER_MS: i64 = 2_000;
/// Pairs per BatchPut when writing the records.
const LOAD_BATCH_KEYS: usize = 100;
/// Deadline of one record batch, retries included.
const LOAD_BATCH_TIMEOUT: Duration = Duration::from_secs(30);
/// Interval of the ListShards polls while waiting for stable leaders.
const SETTLE_POLL: Duration = Duration::from_millis(250);
/// Deadline of one ClusterStatus poll of a node.
const POLL_CALL_TIMEOUT: Duration = Duration::from_millis(500);
/// Longest the kill command may run.
const KILL_CMD_TIMEOUT: Duration = Duration::from_secs(10);
/// The leader polls start this long before the kill (their first answers
/// are the state the kill changes).
const POLL_LEAD: Duration = Duration::from_secs(1);
/// Successful replies arriving this soon after the kill can be answers the
/// victim sent before it died; the stall of a shard is the gap that begins
/// before this (see [`ShardRecovery::first_ok_ms`]).
pub const STRAY_REPLY_GRACE: Duration = Duration::from_millis(100);
/// Failed writes listed one by one in the report.
pub const FAILED_LISTED_MAX: usize = 50;
/// An arrival started this late counts as missed (still measured).
const MISSED_AFTER: Duration = Duration::from_secs(1);
/// Highest latency the histograms track (µs).
const LATENCY_US_MAX: u64 = 600_000_000;

/// The flags of `ringkv-bench failover`.
#[derive(Debug, Clone, Serialize, Deserialize, clap::Args)]
pub struct FailoverConfig {
    /// Shell command that kills a node; `{node}` is replaced by the
    /// victim's node id, e.g. `kill -9 $(cat /tmp/c/n{node}.pid)`.
    #[arg(long)]
    pub kill_cmd: String,
    /// Node to kill (default: the node leading the most data shards).
    #[arg(long)]
    pub victim: Option<u64>,
    /// Writes per second (open loop).
    #[arg(long, default_value_t = 1000.0)]
    pub rate: f64,
    /// Keys written first; the load draws its keys uniformly from them.
    #[arg(long, default_value_t = 1000)]
    pub records: u64,
    /// Value size of every write.
    #[arg(long, default_value_t = 100)]
    pub value_bytes: usize,
    /// Load workers: most writes started and not answered; arrivals beyond
    /// wait (and their wait counts in their latency). The client's own
    /// in-flight limit (256 by default) applies below this.
    #[arg(long, default_value_t = 4096)]
    pub concurrency: usize,
    /// Seconds of load before the kill.
    #[arg(long, default_value_t = 10)]
    pub kill_after_secs: u64,
    /// First seconds of the load left out of the before-kill latency.
    #[arg(long, default_value_t = 2)]
    pub warmup_secs: u64,
    /// Seconds of load after the kill.
    #[arg(long, default_value_t = 10)]
    pub after_secs: u64,
    /// Interval of the surviving nodes' leader polls (0 = no polls: no
    /// election times in the report).
    #[arg(long, default_value_t = 20)]
    pub poll_ms: u64,
    /// Leaders must stay unchanged this long before the load starts.
    #[arg(long, default_value_t = 3)]
    pub settle_secs: u64,
    /// Give up when the leaders have not settled after this long.
    #[arg(long, default_value_t = 90)]
    pub settle_timeout_secs: u64,
    /// Target: the longest write stall (kill to the first successful write
    /// on the worst shard) stays under this.
    #[arg(long, default_value_t = 1000)]
    pub target_stall_ms: u64,
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// How the cluster was set up (server flags, ...), printed in the
    /// report as is.
    #[arg(long, default_value = "")]
    #[serde(default)]
    pub cluster_note: String,
}

impl FailoverConfig {
    pub fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!(!self.kill_cmd.trim().is_empty(), "kill-cmd must not be empty");
        anyhow::ensure!(
            self.rate > 0.0 && self.rate <= RATE_MAX,
            "rate must be > 0 and <= {RATE_MAX}"
        );
        anyhow::ensure!(
            (1..=RECORDS_MAX).contains(&self.records),
            "records must be 1..={RECORDS_MAX}"
        );
        anyhow::ensure!(
            (1..=VALUE_BYTES_MAX).contains(&self.value_bytes),
            "value-bytes must be 1..={VALUE_BYTES_MAX}"
        );
        anyhow::ensure!(
            (1..=CONCURRENCY_MAX).contains(&self.concurrency),
            "concurrency must be 1..={CONCURRENCY_MAX}"
        );
        anyhow::ensure!(
            (2..=PHASE_SECS_MAX).contains(&self.kill_after_secs),
            "kill-after-secs must be 2..={PHASE_SECS_MAX}"
        );
        anyhow::ensure!(
            self.warmup_secs < self.kill_after_secs,
            "warmup-secs must be below kill-after-secs"
        );
        anyhow::ensure!(
            (1..=PHASE_SECS_MAX).contains(&self.after_secs),
            "after-secs must be 1..={PHASE_SECS_MAX}"
        );
        anyhow::ensure!(
            self.poll_ms == 0 || (5..=1000).contains(&self.poll_ms),
            "poll-ms must be 0 or 5..=1000"
        );
        anyhow::ensure!(self.settle_secs <= 60, "settle-secs must be <= 60");
        anyhow::ensure!(
            (1..=3600).contains(&self.settle_timeout_secs),
            "settle-timeout-secs must be 1..=3600"
        );
        anyhow::ensure!(self.target_stall_ms >= 1, "target-stall-ms must be >= 1");
        Ok(())
    }
}

/// `template` with every `{node}` replaced by `node`.
pub fn render_kill_cmd(template: &str, node: u64) -> String {
    template.replace("{node}", &node.to_string())
}

/// The data shards each node leads, by `ListShards` (node -> shards).
pub fn leaders_of(shards: &ListShardsResponse) -> BTreeMap<u64, Vec<u64>> {
    let mut out: BTreeMap<u64, Vec<u64>> = BTreeMap::new();
    for s in shards.shards.iter().filter(|s| s.id != 0 && s.leader_id != 0) {
        out.entry(s.leader_id).or_default().push(s.id);
    }
    out
}

/// The node to kill: `given` (checked to be a listed node), else the node
/// leading the most data shards (the lowest id on a tie).
pub fn pick_victim(shards: &ListShardsResponse, nodes: &ListNodesResponse, given: Option<u64>) -> anyhow::Result<u64> {
    let known = |id: u64| nodes.nodes.iter().any(|n| n.id == id);
    if let Some(v) = given {
        anyhow::ensure!(known(v), "node {v} is not a member of the cluster");
        return Ok(v);
    }
    leaders_of(shards)
        .into_iter()
        .filter(|(n, _)| known(*n))
        .max_by(|(a, sa), (b, sb)| sa.len().cmp(&sb.len()).then(b.cmp(a)))
        .map(|(n, _)| n)
        .context("no shard has a known leader")
}

/// The data shard whose ranges hold `token`.
pub fn shard_of_token(token: u64, shards: &[ShardPlacement]) -> Option<u64> {
    shards
        .iter()
        .filter(|s| s.id != 0)
        .find(|s| in_ranges(token, &s.ranges))
        .map(|s| s.id)
}

/// One write of the load.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WriteRecord {
    /// Intended start, µs after the load started.
    pub intended_us: u64,
    /// From the intended start to the answer, µs.
    pub latency_us: u64,
    pub shard: u64,
    /// `None` for a success, else the client's error kind.
    pub error: Option<String>,
}

impl WriteRecord {
    fn done_us(&self) -> u64 {
        self.intended_us.saturating_add(self.latency_us)
    }
}

/// A change in one node's view of one shard, seen by polling it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaderView {
    /// When the answer arrived, µs after the load started.
    pub at_us: u64,
    /// The node answering.
    pub node: u64,
    /// Shard id (0 = the metadata group).
    pub shard: u64,
    /// Leader in that node's view (0 = none: an election is on).
    pub leader: u64,
    pub term: u64,
}

/// Everything one run observed; [`analyze`] turns it into the results.
#[derive(Debug, Clone, Default)]
pub struct Observed {
    pub writes: Vec<WriteRecord>,
    /// The kill command started and returned (µs after the load started);
    /// the stall counts from its return.
    pub kill_started_us: u64,
    pub kill_us: u64,
    /// Before-kill latency counts writes intended from here on.
    pub measure_from_us: u64,
    pub victim: u64,
    /// Data shards the victim led at the kill.
    pub victim_shards: BTreeSet<u64>,
    /// Changes of the nodes' views, in the order seen.
    pub views: Vec<LeaderView>,
}

/// The stall of one class of writes, as a client sees it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ClassStall {
    /// Writes in the stall window: intended from the kill minus the worst
    /// before-kill latency on, or still unanswered at the kill.
    pub writes: u64,
    pub ok: u64,
    pub errors: u64,
    /// Longest latency of a successful write in the window.
    pub max_latency_ms: f64,
    /// Its intended start, from the kill (negative: before it).
    pub max_latency_at_ms: f64,
    /// Longest time a failed write took to fail.
    pub max_error_latency_ms: f64,
    /// Successful writes in the window slower than the target.
    pub ok_over_target: u64,
    pub errors_by_kind: BTreeMap<String, u64>,
    /// Longest time after the kill with no successful write of the class
    /// completing, and when it began (ms from the kill): the stall of the
    /// class as a whole.
    pub longest_gap_ms: f64,
    pub longest_gap_from_ms: f64,
}

/// How one shard the victim led came back.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ShardRecovery {
    pub shard: u64,
    /// First time a surviving node no longer named the victim as leader
    /// (its election timer fired, or it learned of a candidate), ms after
    /// the kill.
    pub noticed_ms: Option<f64>,
    /// First time a surviving node named a new leader, ms after the kill.
    pub elected_ms: Option<f64>,
    pub new_leader: Option<u64>,
    /// The new leader's term (and the term before the kill).
    pub term: Option<u64>,
    pub term_before: Option<u64>,
    /// Elections started (distinct terms seen after the kill).
    pub terms_after_kill: u64,
    /// Leaders seen after the first new one (placement hand-offs, further
    /// elections): (ms after the kill, leader, term).
    pub later_leaders: Vec<(f64, u64, u64)>,
    /// The first successful write after the failover, ms after the kill:
    /// the shard's write stall. It ends the longest stretch without a
    /// successful write on the shard that began before the kill or within
    /// [`STRAY_REPLY_GRACE`] after it (replies the victim sent before it
    /// died can still arrive just after the kill).
    pub first_ok_ms: Option<f64>,
    /// first_ok - elected: the client's share (rediscovery, backoff).
    pub client_ms: Option<f64>,
    /// Writes to the shard that failed after the kill.
    pub failed: u64,
    /// Longest latency of a successful write to the shard in the window.
    pub max_latency_ms: f64,
}

/// One [`TIMELINE_WINDOW_MS`] window of writes by intended start.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Window {
    /// Window start, ms from the kill (negative: before).
    pub from_ms: i64,
    pub ok: u64,
    pub errors: u64,
    /// Slowest write of the window, ok or failed.
    pub max_ms: f64,
    /// The same for writes to the victim's shards.
    pub victim_ok: u64,
    pub victim_errors: u64,
    pub victim_max_ms: f64,
    /// Successful writes that completed (not started) in this window.
    pub completed_ok: u64,
}

/// A write that failed, for the report.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct FailedWrite {
    pub shard: u64,
    /// Intended start, ms from the kill.
    pub intended_ms: f64,
    pub latency_ms: f64,
    pub kind: String,
}

/// The results [`analyze`] computes from an [`Observed`].
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Analysis {
    /// Writes done before the kill, intended after the warm-up.
    pub before: Latency,
    /// Stall window: writes intended from here on (ms from the kill; minus
    /// the worst before-kill latency), or unanswered at the kill.
    pub window_from_ms: f64,
    pub victim_shards: ClassStall,
    pub other_shards: ClassStall,
    pub all: ClassStall,
    pub shards: Vec<ShardRecovery>,
    /// The worst shard's stall (`None`: a shard never took a write again).
    pub longest_stall_ms: Option<f64>,
    pub longest_stall_shard: Option<u64>,
    /// Longest election (kill to a new leader seen) over the victim's shards.
    pub longest_election_ms: Option<f64>,
    /// The metadata group's leader changes after the kill, if it had one
    /// on the victim: ms to its new leader.
    pub metadata_elected_ms: Option<f64>,
    pub errors_by_kind: BTreeMap<String, u64>,
    /// Leaderships of the other shards that changed after the kill (the
    /// placement's leader balancing): (shard, ms after the kill, leader,
    /// term).
    pub other_leader_changes: Vec<(u64, f64, u64, u64)>,
    /// The writes that failed after the kill (the first
    /// [`FAILED_LISTED_MAX`]).
    pub failed_writes: Vec<FailedWrite>,
    pub timeline: Vec<Window>,
    /// Writes made over the whole run.
    pub writes_total: u64,
}

fn ms(us: u64) -> f64 {
    us as f64 / 1000.0
}

/// Signed milliseconds from `origin_us` to `at_us`.
fn rel_ms(at_us: u64, origin_us: u64) -> f64 {
    (at_us as f64 - origin_us as f64) / 1000.0
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, LATENCY_US_MAX, 3).expect("valid histogram bounds")
}

/// The stall of the writes `pick` selects among `in_window`.
fn class_stall<'a>(
    in_window: impl Iterator<Item = &'a WriteRecord>,
    kill_us: u64,
    target_ms: u64,
    pick: impl Fn(&WriteRecord) -> bool,
) -> ClassStall {
    let mut c = ClassStall::default();
    let mut worst: Option<&WriteRecord> = None;
    for w in in_window.filter(|w| pick(w)) {
        c.writes += 1;
        match &w.error {
            None => {
                c.ok += 1;
                if worst.is_none_or(|x| w.latency_us > x.latency_us) {
                    worst = Some(w);
                }
                if w.latency_us > target_ms * 1000 {
                    c.ok_over_target += 1;
                }
            }
            Some(kind) => {
                c.errors += 1;
                *c.errors_by_kind.entry(kind.clone()).or_default() += 1;
                c.max_error_latency_ms = c.max_error_latency_ms.max(ms(w.latency_us));
            }
        }
    }
    if let Some(w) = worst {
        c.max_latency_ms = ms(w.latency_us);
        c.max_latency_at_ms = rel_ms(w.intended_us, kill_us);
    }
    c
}

/// The longest stretch after `kill_us` without a successful write among
/// those `pick` selects completing, up to the last completion: (length,
/// start), in µs.
fn completion_gap(writes: &[WriteRecord], kill_us: u64, pick: impl Fn(&WriteRecord) -> bool) -> (u64, u64) {
    let mut done: Vec<u64> = writes
        .iter()
        .filter(|w| w.error.is_none() && w.done_us() >= kill_us && pick(w))
        .map(WriteRecord::done_us)
        .collect();
    done.sort_unstable();
    let mut best = (0, kill_us);
    let mut prev = kill_us;
    for d in done {
        if d - prev > best.0 {
            best = (d - prev, prev);
        }
        prev = d;
    }
    best
}

/// The stall of one class: [`class_stall`] over the window plus the
/// completion gap over every write.
fn class_summary(
    o: &Observed,
    window: &[&WriteRecord],
    target_ms: u64,
    pick: impl Fn(&WriteRecord) -> bool + Copy,
) -> ClassStall {
    let mut c = class_stall(window.iter().copied(), o.kill_us, target_ms, pick);
    let (gap, from) = completion_gap(&o.writes, o.kill_us, pick);
    c.longest_gap_ms = ms(gap);
    c.longest_gap_from_ms = rel_ms(from, o.kill_us);
    c
}

/// Leaders of `shard` the survivors saw after the kill, in order, each
/// once: (µs, leader, term), leaderless views left out.
fn leaders_after(views: &[LeaderView], shard: u64, victim: u64, kill_us: u64) -> Vec<(u64, u64, u64)> {
    let mut out: Vec<(u64, u64, u64)> = Vec::new();
    let mut seen = BTreeSet::new();
    for v in views
        .iter()
        .filter(|v| v.shard == shard && v.node != victim && v.at_us >= kill_us && v.leader != 0)
    {
        if seen.insert((v.leader, v.term)) {
            out.push((v.at_us, v.leader, v.term));
        }
    }
    out.sort_by_key(|x| x.0);
    out
}

/// When `shard` took a write again after the kill: the end of the longest
/// gap between two successful completions on it that began before the kill
/// or within [`STRAY_REPLY_GRACE`] after it and ended after the kill
/// (µs; `None`: no write succeeded after the kill).
fn recovery_after(writes: &[WriteRecord], shard: u64, kill_us: u64) -> Option<u64> {
    let grace_end = kill_us + STRAY_REPLY_GRACE.as_micros() as u64;
    let mut done: Vec<u64> = writes
        .iter()
        .filter(|w| w.shard == shard && w.error.is_none())
        .map(WriteRecord::done_us)
        .collect();
    done.sort_unstable();
    let mut prev = None::<u64>;
    let mut best: Option<(u64, u64)> = None;
    for d in done {
        let from = prev.unwrap_or(kill_us).min(d);
        if d >= kill_us && from < grace_end && best.is_none_or(|(gap, _)| d - from > gap) {
            best = Some((d - from, d));
        }
        if d >= grace_end {
            break;
        }
        prev = Some(d);
    }
    best.map(|(_, d)| d)
}

/// The first view after `kill_us` of `shard` from a node other than
/// `victim` that satisfies `pred`.
fn first_view(
    views: &[LeaderView],
    shard: u64,
    victim: u64,
    kill_us: u64,
    pred: impl Fn(&LeaderView) -> bool,
) -> Option<&LeaderView> {
    views
        .iter()
        .filter(|v| v.shard == shard && v.node != victim && v.at_us >= kill_us)
        .filter(|v| pred(v))
        .min_by_key(|v| v.at_us)
}

/// How `shard` (led by the victim) came back after the kill.
fn shard_recovery(o: &Observed, shard: u64, window: &[&WriteRecord], target_ms: u64) -> ShardRecovery {
    let kill = o.kill_us;
    let noticed = first_view(&o.views, shard, o.victim, kill, |v| v.leader != o.victim);
    let elected = first_view(&o.views, shard, o.victim, kill, |v| {
        v.leader != o.victim && v.leader != 0
    });
    let term_before = o
        .views
        .iter()
        .filter(|v| v.shard == shard && v.at_us < kill)
        .max_by_key(|v| v.at_us)
        .map(|v| v.term);
    let terms_after: BTreeSet<u64> = o
        .views
        .iter()
        .filter(|v| v.shard == shard && v.at_us >= kill && term_before.is_none_or(|t| v.term > t))
        .map(|v| v.term)
        .collect();
    let first_ok = recovery_after(&o.writes, shard, kill);
    let failed = o
        .writes
        .iter()
        .filter(|w| w.shard == shard && w.error.is_some() && w.done_us() >= kill)
        .count() as u64;
    let stall = class_stall(window.iter().copied(), kill, target_ms, |w| w.shard == shard);
    let first_ok_ms = first_ok.map(|d| rel_ms(d, kill));
    let later_leaders = leaders_after(&o.views, shard, o.victim, kill)
        .into_iter()
        .skip(1)
        .map(|(at, l, t)| (rel_ms(at, kill), l, t))
        .collect();
    let elected_ms = elected.map(|v| rel_ms(v.at_us, kill));
    ShardRecovery {
        shard,
        noticed_ms: noticed.map(|v| rel_ms(v.at_us, kill)),
        elected_ms,
        new_leader: elected.map(|v| v.leader),
        term: elected.map(|v| v.term),
        term_before,
        terms_after_kill: terms_after.len() as u64,
        later_leaders,
        first_ok_ms,
        client_ms: first_ok_ms.zip(elected_ms).map(|(f, e)| f - e),
        failed,
        max_latency_ms: stall.max_latency_ms,
    }
}

/// The timeline from [`TIMELINE_BEFORE_MS`] before the kill to the last
/// intended start, by intended start (and completions by completion time).
pub fn timeline(writes: &[WriteRecord], victim_shards: &BTreeSet<u64>, kill_us: u64) -> Vec<Window> {
    let origin = kill_us.saturating_sub(TIMELINE_BEFORE_MS * 1000);
    let width = TIMELINE_WINDOW_MS * 1000;
    let Some(last) = writes.iter().map(|w| w.intended_us.max(w.done_us())).max() else {
        return vec![];
    };
    if last < origin {
        return vec![];
    }
    let n = ((last - origin) / width + 1) as usize;
    let mut out: Vec<Window> = (0..n)
        .map(|i| Window {
            from_ms: (origin + i as u64 * width) as i64 / 1000 - kill_us as i64 / 1000,
            ..Window::default()
        })
        .collect();
    for w in writes {
        if w.intended_us >= origin {
            let win = &mut out[((w.intended_us - origin) / width) as usize];
            let l = ms(w.latency_us);
            win.max_ms = win.max_ms.max(l);
            let ok = w.error.is_none();
            if ok {
                win.ok += 1;
            } else {
                win.errors += 1;
            }
            if victim_shards.contains(&w.shard) {
                win.victim_max_ms = win.victim_max_ms.max(l);
                if ok {
                    win.victim_ok += 1;
                } else {
                    win.victim_errors += 1;
                }
            }
        }
        if w.error.is_none() && w.done_us() >= origin {
            out[((w.done_us() - origin) / width) as usize].completed_ok += 1;
        }
    }
    // Windows after the last intended start only hold completions.
    while out.last().is_some_and(|w| w.ok + w.errors == 0 && w.completed_ok == 0) {
        out.pop();
    }
    out
}

/// Computes the report's numbers from what a run observed.
pub fn analyze(o: &Observed, target_stall_ms: u64) -> Analysis {
    let kill = o.kill_us;
    let mut before = histogram();
    let mut worst_before_us = 0u64;
    for w in &o.writes {
        if w.intended_us >= o.measure_from_us && w.done_us() < kill && w.error.is_none() {
            before.saturating_record(w.latency_us.clamp(1, LATENCY_US_MAX));
            worst_before_us = worst_before_us.max(w.latency_us);
        }
    }
    // In flight at the kill or issued after it: intended no earlier than
    // the worst before-kill latency ahead of the kill, or unanswered at it.
    let window_from = kill.saturating_sub(worst_before_us);
    let window: Vec<&WriteRecord> = o
        .writes
        .iter()
        .filter(|w| w.intended_us >= window_from || w.done_us() >= kill)
        .collect();
    let victim = |w: &WriteRecord| o.victim_shards.contains(&w.shard);
    let shards: Vec<ShardRecovery> = o
        .victim_shards
        .iter()
        .map(|s| shard_recovery(o, *s, &window, target_stall_ms))
        .collect();
    let (longest, longest_shard) = if shards.iter().any(|s| s.first_ok_ms.is_none()) {
        (None, shards.iter().find(|s| s.first_ok_ms.is_none()).map(|s| s.shard))
    } else {
        shards
            .iter()
            .filter_map(|s| s.first_ok_ms.map(|f| (f, s.shard)))
            .max_by(|a, b| a.0.total_cmp(&b.0))
            .map_or((None, None), |(f, s)| (Some(f), Some(s)))
    };
    let meta_led_by_victim = o
        .views
        .iter()
        .filter(|v| v.shard == 0 && v.at_us < kill && v.node != o.victim)
        .max_by_key(|v| v.at_us)
        .is_some_and(|v| v.leader == o.victim);
    // Other shards whose leader changed after the kill: the survivors'
    // views before it name their leader.
    let mut before_leader: BTreeMap<u64, (u64, u64)> = BTreeMap::new();
    for v in o
        .views
        .iter()
        .filter(|v| v.at_us < kill && v.node != o.victim && v.leader != 0)
    {
        before_leader.insert(v.shard, (v.leader, v.term));
    }
    let mut other_changes = Vec::new();
    for (shard, was) in before_leader
        .iter()
        .filter(|(s, _)| **s != 0 && !o.victim_shards.contains(s))
    {
        for (at, l, t) in leaders_after(&o.views, *shard, o.victim, kill) {
            if (l, t) != *was {
                other_changes.push((*shard, rel_ms(at, kill), l, t));
            }
        }
    }
    other_changes.sort_by(|a, b| a.1.total_cmp(&b.1));
    let mut errors_by_kind = BTreeMap::new();
    for kind in o.writes.iter().filter_map(|w| w.error.as_ref()) {
        *errors_by_kind.entry(kind.clone()).or_default() += 1;
    }
    Analysis {
        before: Latency::of(&before),
        window_from_ms: rel_ms(window_from, kill),
        victim_shards: class_summary(o, &window, target_stall_ms, victim),
        other_shards: class_summary(o, &window, target_stall_ms, |w| !victim(w)),
        all: class_summary(o, &window, target_stall_ms, |_| true),
        longest_stall_ms: longest,
        longest_stall_shard: longest_shard,
        longest_election_ms: if shards.iter().all(|s| s.elected_ms.is_some()) {
            shards.iter().filter_map(|s| s.elected_ms).max_by(f64::total_cmp)
        } else {
            None
        },
        metadata_elected_ms: meta_led_by_victim
            .then(|| first_view(&o.views, 0, o.victim, kill, |v| v.leader != o.victim && v.leader != 0))
            .flatten()
            .map(|v| rel_ms(v.at_us, kill)),
        shards,
        errors_by_kind,
        other_leader_changes: other_changes,
        failed_writes: o
            .writes
            .iter()
            .filter(|w| w.error.is_some() && w.done_us() >= kill)
            .take(FAILED_LISTED_MAX)
            .map(|w| FailedWrite {
                shard: w.shard,
                intended_ms: rel_ms(w.intended_us, kill),
                latency_ms: ms(w.latency_us),
                kind: w.error.clone().unwrap_or_default(),
            })
            .collect(),
        timeline: timeline(&o.writes, &o.victim_shards, kill),
        writes_total: o.writes.len() as u64,
    }
}

/// Client counters (attempts, refreshes, NOT_LEADER answers) over a span.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientCounters {
    pub operations: u64,
    pub attempts: u64,
    pub routing_refreshes: u64,
    pub not_leader: u64,
    pub forwarded: u64,
}

impl ClientCounters {
    fn between(a: ClientStats, b: ClientStats) -> Self {
        Self {
            operations: b.operations - a.operations,
            attempts: b.attempts - a.attempts,
            routing_refreshes: b.routing_refreshes - a.routing_refreshes,
            not_leader: b.not_leader - a.not_leader,
            forwarded: b.forwarded - a.forwarded,
        }
    }
}

/// How well one node's leader views were sampled after the kill.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct PollStats {
    pub answered: u64,
    pub failed: u64,
    pub max_gap_ms: f64,
}

/// The result of one run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FailoverReport {
    pub config: FailoverConfig,
    pub victim: u64,
    /// Whether the victim was given (`--victim`) or picked.
    pub victim_given: bool,
    /// The kill command as run.
    pub kill_command: String,
    /// Kill instant: seconds after the load started, UTC wall clock (to
    /// find it in the nodes' logs) and how long the command took.
    pub kill_at_s: f64,
    pub kill_utc: String,
    pub kill_command_ms: f64,
    /// Data shards, and those the victim led at the kill.
    pub shards_total: u64,
    pub victim_shards: Vec<u64>,
    /// Leaders (node -> data shards) by ListShards before the load and
    /// after the run.
    pub leaders_before: BTreeMap<u64, Vec<u64>>,
    pub leaders_after: BTreeMap<u64, Vec<u64>>,
    /// Leader of the metadata group at the kill, in a survivor's view.
    pub metadata_leader: Option<u64>,
    /// The victim still answered ClusterStatus 200 ms after the kill.
    pub victim_answered_after_kill: bool,
    /// Why the victim did not answer then.
    #[serde(default)]
    pub victim_check: String,
    /// Per polled node: polls answered after the kill and the longest gap
    /// between two answers (ms): the resolution of the election times.
    #[serde(default)]
    pub polls: BTreeMap<u64, PollStats>,
    /// Every change of a node's view of a shard's leader or term.
    #[serde(default)]
    pub views: Vec<LeaderView>,
    pub records: u64,
    /// Writes a worker took more than 1 s after their intended start.
    pub missed_arrivals: u64,
    /// Client counters from the load's start to the kill, and from the
    /// kill to the end.
    pub client_before: ClientCounters,
    pub client_after: ClientCounters,
    pub analysis: Analysis,
    pub target_stall_ms: u64,
    pub stall_ok: bool,
    pub load_average: Option<String>,
}

fn opt_ms(v: Option<f64>) -> String {
    v.map_or("-".to_string(), |x| format!("{x:.0}"))
}

fn kinds(m: &BTreeMap<String, u64>) -> String {
    if m.is_empty() {
        return "-".into();
    }
    m.iter().map(|(k, n)| format!("{k} {n}")).collect::<Vec<_>>().join(", ")
}

/// The markdown report.
pub fn markdown(r: &FailoverReport) -> String {
    let a = &r.analysis;
    let mut s = String::new();
    let verdict = if r.stall_ok { "PASS" } else { "FAIL" };
    let _ = writeln!(
        s,
        "# Leader failover: node {} killed with {} of {} shards led\n",
        r.victim,
        r.victim_shards.len(),
        r.shards_total
    );
    let _ = writeln!(s, "| measure | value | target | verdict |");
    let _ = writeln!(s, "|---|---:|---:|---|");
    let stall = match (a.longest_stall_ms, a.longest_stall_shard) {
        (Some(v), Some(sh)) => format!("{v:.0} ms (shard {sh})"),
        (None, Some(sh)) => format!("no write on shard {sh} succeeded in {} s", r.config.after_secs),
        _ => "-".into(),
    };
    let _ = writeln!(
        s,
        "| longest write stall (kill to the first successful write, worst shard) | {stall} | < {} ms | {verdict} |",
        r.target_stall_ms
    );
    let _ = writeln!(s);
    let _ = writeln!(
        s,
        "- load: {:.0} writes/s open loop (latency from each write's intended start), {}-byte values, \
         keys uniform over {} records in {} shards; smart client, default settings",
        r.config.rate, r.config.value_bytes, r.records, r.shards_total
    );
    if !r.config.cluster_note.is_empty() {
        let _ = writeln!(s, "- cluster: {}", r.config.cluster_note);
    }
    let how = if r.victim_given {
        "given"
    } else {
        "the node leading the most data shards"
    };
    let shards: Vec<String> = r.victim_shards.iter().map(u64::to_string).collect();
    let _ = writeln!(
        s,
        "- victim: node {} ({how}), leading shards {}; metadata leader at the kill: {}",
        r.victim,
        shards.join(", "),
        r.metadata_leader.map_or("unknown".to_string(), |n| format!("node {n}"))
    );
    let _ = writeln!(
        s,
        "- kill: `{}` returned {:.3} s into the load ({}; it took {:.1} ms); load went on for {} s",
        r.kill_command, r.kill_at_s, r.kill_utc, r.kill_command_ms, r.config.after_secs
    );
    if r.victim_answered_after_kill {
        let _ = writeln!(s, "- WARNING: the victim still answered 200 ms after the kill command");
    }
    let polls: Vec<String> = r
        .polls
        .iter()
        .filter(|(n, _)| **n != r.victim)
        .map(|(n, p)| format!("node {n}: {} answers, longest gap {:.0} ms", p.answered, p.max_gap_ms))
        .collect();
    if !polls.is_empty() {
        let _ = writeln!(
            s,
            "- leader views polled after the kill (every {} ms asked): {}",
            r.config.poll_ms,
            polls.join("; ")
        );
    }
    let _ = writeln!(
        s,
        "- before the kill ({} writes done before it, after {} s of warm-up): p50 {:.2} ms, p99 {:.2} ms, \
         max {:.2} ms",
        a.before.count,
        r.config.warmup_secs,
        ms(a.before.p50_us),
        ms(a.before.p99_us),
        ms(a.before.max_us)
    );
    let _ = writeln!(
        s,
        "- errors over the whole run: {}; arrivals started over 1 s late: {}",
        kinds(&a.errors_by_kind),
        r.missed_arrivals
    );
    let c = &r.client_after;
    let _ = writeln!(
        s,
        "- client after the kill: {} operations, {} attempts, {} routing refreshes, {} NOT_LEADER answers, \
         {} forwarded",
        c.operations, c.attempts, c.routing_refreshes, c.not_leader, c.forwarded
    );
    if let Some(l) = &r.load_average {
        let _ = writeln!(s, "- load average at the end: {l}");
    }

    let _ = writeln!(
        s,
        "\n## Stall as the client sees it\n\nWrites in flight at the kill or issued after it (intended from \
         {:.0} ms, the kill minus the worst before-kill latency, or unanswered at the kill).\n",
        a.window_from_ms
    );
    let _ = writeln!(
        s,
        "| writes | count | ok | errors | max latency ms (ok) | its intended start ms | ok over {} ms | \
         slowest failure ms | errors by kind | longest gap without a completed write ms (from) |",
        r.target_stall_ms
    );
    let _ = writeln!(s, "|---|---:|---:|---:|---:|---:|---:|---:|---|---:|");
    for (name, c) in [
        ("victim's shards", &a.victim_shards),
        ("other shards", &a.other_shards),
        ("all", &a.all),
    ] {
        let _ = writeln!(
            s,
            "| {name} | {} | {} | {} | {:.1} | {:.0} | {} | {:.0} | {} | {:.0} ({:.0}) |",
            c.writes,
            c.ok,
            c.errors,
            c.max_latency_ms,
            c.max_latency_at_ms,
            c.ok_over_target,
            c.max_error_latency_ms,
            kinds(&c.errors_by_kind),
            c.longest_gap_ms,
            c.longest_gap_from_ms
        );
    }

    let _ = writeln!(
        s,
        "\n## The victim's shards\n\nms after the kill. \"gave up\": a survivor first no longer named the \
         victim as leader; \"elected\": a survivor first named the new leader (both from polling the \
         survivors' ClusterStatus every {} ms; a poll sees a change up to one poll gap late, so \"client\" can \
         come out negative); \"first ok\": the first write that succeeded after the kill (the shard's \
         stall); \"client\": first ok - elected; \"later leaders\": leaders seen after the first new one \
         (ms, node, term).\n",
        r.config.poll_ms
    );
    let _ = writeln!(
        s,
        "| shard | gave up | elected | new leader | term | elections | first ok | client | failed writes | \
         max latency ms | later leaders |"
    );
    let _ = writeln!(s, "|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|---|");
    for sh in &a.shards {
        let term = match (sh.term_before, sh.term) {
            (Some(b), Some(t)) => format!("{b} -> {t}"),
            (_, Some(t)) => t.to_string(),
            _ => "-".into(),
        };
        let later: Vec<String> = sh
            .later_leaders
            .iter()
            .map(|(at, l, t)| format!("{at:.0}: {l} (T{t})"))
            .collect();
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {term} | {} | {} | {} | {} | {:.0} | {} |",
            sh.shard,
            opt_ms(sh.noticed_ms),
            opt_ms(sh.elected_ms),
            sh.new_leader.map_or("-".into(), |n| n.to_string()),
            sh.terms_after_kill,
            opt_ms(sh.first_ok_ms),
            opt_ms(sh.client_ms),
            sh.failed,
            sh.max_latency_ms,
            if later.is_empty() { "-".into() } else { later.join(", ") }
        );
    }
    let _ = writeln!(
        s,
        "\nlongest election: {} ms; metadata group re-elected after: {} ms",
        opt_ms(a.longest_election_ms),
        opt_ms(a.metadata_elected_ms)
    );
    let others: Vec<String> = a
        .other_leader_changes
        .iter()
        .map(|(sh, at, l, t)| format!("shard {sh} to node {l} (T{t}) at {at:.0} ms"))
        .collect();
    let _ = writeln!(
        s,
        "\nother shards' leader changes after the kill: {}",
        if others.is_empty() {
            "none".to_string()
        } else {
            others.join("; ")
        }
    );
    if !a.failed_writes.is_empty() {
        let _ = writeln!(
            s,
            "\nfailed writes after the kill (shard, intended start ms from the kill, took ms, kind):"
        );
        for f in &a.failed_writes {
            let _ = writeln!(
                s,
                "- shard {}, {:.0}, {:.0}, {}",
                f.shard, f.intended_ms, f.latency_ms, f.kind
            );
        }
    }

    let last_ok = a.shards.iter().filter_map(|s| s.first_ok_ms).fold(0.0, f64::max) as i64;
    let _ = writeln!(
        s,
        "\n## Timeline\n\n{TIMELINE_WINDOW_MS} ms windows by intended start (ms from the kill), up to {} ms \
         after the last shard's first ok write (failover.json has all of it). \"done ok\": successful \
         writes that completed in the window.\n",
        TIMELINE_MD_AFTER_MS
    );
    let _ = writeln!(
        s,
        "| from ms | ok | errors | max ms | victim's shards ok | errors | max ms | done ok |"
    );
    let _ = writeln!(s, "|---:|---:|---:|---:|---:|---:|---:|---:|");
    for w in a
        .timeline
        .iter()
        .filter(|w| w.from_ms <= last_ok + TIMELINE_MD_AFTER_MS)
    {
        let _ = writeln!(
            s,
            "| {} | {} | {} | {:.0} | {} | {} | {:.0} | {} |",
            w.from_ms, w.ok, w.errors, w.max_ms, w.victim_ok, w.victim_errors, w.victim_max_ms, w.completed_ok
        );
    }
    s
}

/// Where the report goes by default: `bench/results/failover-<UTC timestamp>`.
pub fn default_out_dir(now: SystemTime) -> PathBuf {
    crate::report::results_dir("failover", now)
}

/// Writes `failover.json` and `failover.md` into `dir`.
pub fn write_report(r: &FailoverReport, dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    std::fs::write(dir.join("failover.json"), serde_json::to_string_pretty(r)?)?;
    std::fs::write(dir.join("failover.md"), markdown(r))?;
    Ok(())
}

/// Waits until every data shard has a leader and `ListShards` shows the
/// same leaders for `settle`; returns the last answer.
async fn settled_leaders(admin: &Admin, settle: Duration, timeout: Duration) -> anyhow::Result<ListShardsResponse> {
    let deadline = Instant::now() + timeout;
    let mut since: Option<(Instant, BTreeMap<u64, Vec<u64>>)> = None;
    loop {
        match admin.list_shards().await {
            Ok(shards) if shards.shards.iter().all(|s| s.id == 0 || s.leader_id != 0) => {
                let leaders = leaders_of(&shards);
                match &since {
                    Some((t, l)) if *l == leaders => {
                        if t.elapsed() >= settle {
                            return Ok(shards);
                        }
                    }
                    _ => since = Some((Instant::now(), leaders)),
                }
            }
            Ok(_) => since = None,
            Err(e) => {
                since = None;
                eprintln!("  waiting for leaders: {e}");
            }
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "leaders did not settle within {} s",
            timeout.as_secs()
        );
        tokio::time::sleep(SETTLE_POLL).await;
    }
}

/// The load's time base; `stop_at_us` (µs after `start`) ends it.
struct LoadClock {
    start: Instant,
    stop_at_us: AtomicU64,
}

impl LoadClock {
    fn us(&self, at: Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.start).as_micros()).unwrap_or(u64::MAX)
    }
}

/// Runs the open-loop write load until `clock.stop_at_us`; returns every
/// write and the arrivals started over [`MISSED_AFTER`] late.
async fn write_load(
    client: Client,
    keys: Arc<Vec<(Vec<u8>, u64)>>,
    clock: Arc<LoadClock>,
    cfg: FailoverConfig,
) -> anyhow::Result<(Vec<WriteRecord>, u64)> {
    let tick = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::with_capacity(cfg.concurrency);
    for t in 0..cfg.concurrency {
        let (client, keys, clock, tick, cfg) = (client.clone(), keys.clone(), clock.clone(), tick.clone(), cfg.clone());
        tasks.push(tokio::spawn(async move {
            let mut rng = rand::rngs::StdRng::seed_from_u64(cfg.seed.wrapping_mul(1_000_003).wrapping_add(t as u64));
            let mut value = vec![0u8; cfg.value_bytes];
            let (mut out, mut missed) = (Vec::new(), 0u64);
            // The client's default deadline bounds every write.
            let opts = CallOptions::new();
            loop {
                let i = tick.fetch_add(1, Ordering::Relaxed);
                let at = clock.start + Duration::from_secs_f64(i as f64 / cfg.rate);
                let intended_us = clock.us(at);
                if intended_us >= clock.stop_at_us.load(Ordering::Acquire) {
                    return (out, missed);
                }
                let now = Instant::now();
                if at > now {
                    tokio::time::sleep_until(at.into()).await;
                } else if now - at > MISSED_AFTER {
                    missed += 1;
                }
                let (key, shard) = &keys[rng.gen_range(0..keys.len())];
                rng.fill(&mut value[..]);
                let res = client.put_with(key, &value, &opts).await;
                let latency_us = clock.us(Instant::now()).saturating_sub(intended_us);
                out.push(WriteRecord {
                    intended_us,
                    latency_us,
                    shard: *shard,
                    error: res.err().map(|e| format!("{:?}", e.kind())),
                });
            }
        }));
    }
    let (mut all, mut missed) = (Vec::new(), 0);
    for t in tasks {
        let (w, m) = t.await?;
        all.extend(w);
        missed += m;
    }
    all.sort_by_key(|w| w.intended_us);
    Ok((all, missed))
}

/// Polls `addr` (node `node`) every `every` until `stop`, recording each
/// change of its view of a shard's leader or term. A node that stops
/// answering (the victim after the kill) is simply not recorded.
async fn poll_views(
    admin: Arc<Admin>,
    node: u64,
    addr: String,
    every: Duration,
    clock: Arc<LoadClock>,
    stop: Arc<AtomicBool>,
) -> PollLog {
    let mut last: BTreeMap<u64, (u64, u64)> = BTreeMap::new();
    let mut log = PollLog {
        node,
        ..PollLog::default()
    };
    let mut next = Instant::now();
    while !stop.load(Ordering::Acquire) {
        match admin.cluster_status(&addr, POLL_CALL_TIMEOUT).await {
            Ok(st) => {
                let at_us = clock.us(Instant::now());
                log.answered_us.push(at_us);
                for sh in st.shards.iter().chain(st.metadata.iter()).filter(|s| s.hosted_here) {
                    let now = (sh.leader_id, sh.term);
                    if last.insert(sh.id, now) != Some(now) {
                        log.views.push(LeaderView {
                            at_us,
                            node,
                            shard: sh.id,
                            leader: sh.leader_id,
                            term: sh.term,
                        });
                    }
                }
            }
            Err(_) => log.failed_us.push(clock.us(Instant::now())),
        }
        next += every;
        let now = Instant::now();
        if next < now {
            next = now;
        }
        tokio::time::sleep_until(next.into()).await;
    }
    log
}

/// What polling one node recorded.
#[derive(Debug, Default)]
struct PollLog {
    node: u64,
    views: Vec<LeaderView>,
    /// When its answers arrived and its failures ended (µs after the
    /// load started).
    answered_us: Vec<u64>,
    failed_us: Vec<u64>,
}

impl PollLog {
    /// Answers and failures after `kill_us`, and the longest gap between
    /// two answers after it.
    fn stats(&self, kill_us: u64) -> PollStats {
        let after: Vec<u64> = self.answered_us.iter().copied().filter(|t| *t >= kill_us).collect();
        let max_gap = after.windows(2).map(|w| w[1] - w[0]).max().unwrap_or(0);
        PollStats {
            answered: after.len() as u64,
            failed: self.failed_us.iter().filter(|t| **t >= kill_us).count() as u64,
            max_gap_ms: ms(max_gap),
        }
    }
}

/// Runs the kill command for `victim`; returns when it started and ended.
async fn kill(template: &str, victim: u64) -> anyhow::Result<(String, Instant, Instant, SystemTime)> {
    let cmd = render_kill_cmd(template, victim);
    eprintln!("killing node {victim}: {cmd}");
    let started = Instant::now();
    let out = tokio::time::timeout(
        KILL_CMD_TIMEOUT,
        tokio::process::Command::new("sh")
            .arg("-c")
            .arg(&cmd)
            .kill_on_drop(true)
            .output(),
    )
    .await
    .with_context(|| format!("kill command {cmd:?} did not finish within {KILL_CMD_TIMEOUT:?}"))?
    .with_context(|| format!("run kill command {cmd:?}"))?;
    let (done, wall) = (Instant::now(), SystemTime::now());
    anyhow::ensure!(
        out.status.success(),
        "kill command {cmd:?} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok((cmd, started, done, wall))
}

/// Runs the whole benchmark against the cluster at `endpoints`.
pub async fn run(
    endpoints: &[String],
    admin_token: Option<String>,
    cfg: FailoverConfig,
) -> anyhow::Result<FailoverReport> {
    cfg.validate()?;
    let admin = Arc::new(Admin::new(endpoints, admin_token.clone())?);
    eprintln!("waiting for every shard to have a settled leader");
    let shards = settled_leaders(
        &admin,
        Duration::from_secs(cfg.settle_secs),
        Duration::from_secs(cfg.settle_timeout_secs),
    )
    .await?;
    let nodes = admin.list_nodes().await?;
    if let Some(v) = cfg.victim {
        pick_victim(&shards, &nodes, Some(v))?;
    }
    let leaders_before = leaders_of(&shards);
    let data_shards: Vec<ShardPlacement> = shards.shards.iter().filter(|s| s.id != 0).cloned().collect();
    eprintln!(
        "{} nodes, {} shards, leaders {leaders_before:?}",
        nodes.nodes.len(),
        data_shards.len()
    );

    let client_cfg = ringkv_client::Config {
        admin_token,
        ..Default::default()
    };
    let client = Client::connect_with(endpoints, client_cfg)
        .await
        .context("connect ringkv")?;
    let mut keys = Vec::with_capacity(cfg.records as usize);
    for n in 0..cfg.records {
        let k = key_of(n);
        let shard = shard_of_token(ringkv_client::token_of(&k), &data_shards)
            .with_context(|| format!("no shard owns key {}", String::from_utf8_lossy(&k)))?;
        keys.push((k, shard));
    }
    let used: BTreeSet<u64> = keys.iter().map(|(_, s)| *s).collect();
    if used.len() < data_shards.len() {
        eprintln!(
            "warning: {} records reach only {} of {} shards",
            cfg.records,
            used.len(),
            data_shards.len()
        );
    }
    eprintln!("writing {} records", cfg.records);
    let value = vec![b'v'; cfg.value_bytes];
    for part in keys.chunks(LOAD_BATCH_KEYS) {
        let pairs: Vec<(&[u8], &[u8])> = part.iter().map(|(k, _)| (k.as_slice(), value.as_slice())).collect();
        client
            .batch_put_with(&pairs, &CallOptions::new().timeout(LOAD_BATCH_TIMEOUT))
            .await
            .context("write the records")?;
    }

    let keys = Arc::new(keys);
    let clock = Arc::new(LoadClock {
        start: Instant::now(),
        stop_at_us: AtomicU64::new(u64::MAX),
    });
    eprintln!(
        "write load at {:.0}/s; kill after {} s, then {} s more",
        cfg.rate, cfg.kill_after_secs, cfg.after_secs
    );
    let load = tokio::spawn(write_load(client.clone(), keys.clone(), clock.clone(), cfg.clone()));
    let stats_start = client.stats();
    let result = around_kill(&admin, &client, &nodes, &shards, &clock, &cfg).await;
    // Whatever happened, the load stops (at once on an error).
    let stop_us = match &result {
        Ok(k) => k.kill_us + cfg.after_secs * 1_000_000,
        Err(_) => clock.us(Instant::now()),
    };
    clock.stop_at_us.store(stop_us, Ordering::Release);
    let (writes, missed) = load.await??;
    let k = result?;
    let stats_end = client.stats();
    let leaders_after = admin.list_shards().await.map(|s| leaders_of(&s)).unwrap_or_default();

    let observed = Observed {
        writes,
        kill_started_us: k.kill_started_us,
        kill_us: k.kill_us,
        measure_from_us: cfg.warmup_secs * 1_000_000,
        victim: k.victim,
        victim_shards: k.victim_shards.clone(),
        views: k.views.clone(),
    };
    let analysis = analyze(&observed, cfg.target_stall_ms);
    let stall_ok = analysis
        .longest_stall_ms
        .is_some_and(|v| v < cfg.target_stall_ms as f64);
    Ok(FailoverReport {
        victim: k.victim,
        victim_given: cfg.victim.is_some(),
        kill_command: k.command,
        kill_at_s: k.kill_us as f64 / 1e6,
        kill_utc: crate::report::utc_timestamp(k.kill_wall),
        kill_command_ms: ms(k.kill_us - k.kill_started_us),
        shards_total: data_shards.len() as u64,
        victim_shards: k.victim_shards.into_iter().collect(),
        leaders_before,
        leaders_after,
        metadata_leader: k.metadata_leader,
        victim_answered_after_kill: k.victim_answered,
        victim_check: k.victim_check,
        polls: k.polls,
        views: k.views,
        records: cfg.records,
        missed_arrivals: missed,
        client_before: ClientCounters::between(stats_start, k.stats),
        client_after: ClientCounters::between(k.stats, stats_end),
        analysis,
        target_stall_ms: cfg.target_stall_ms,
        stall_ok,
        load_average: crate::report::load_average(),
        config: cfg,
    })
}

/// What happened around the kill.
struct Killed {
    victim: u64,
    victim_shards: BTreeSet<u64>,
    command: String,
    kill_started_us: u64,
    kill_us: u64,
    kill_wall: SystemTime,
    metadata_leader: Option<u64>,
    victim_answered: bool,
    victim_check: String,
    polls: BTreeMap<u64, PollStats>,
    views: Vec<LeaderView>,
    /// The client's counters when the kill command returned.
    stats: ClientStats,
}

/// Waits for the kill time, picks the victim, polls the nodes' views,
/// kills, and keeps polling the survivors until the load ends.
async fn around_kill(
    admin: &Arc<Admin>,
    client: &Client,
    nodes: &ListNodesResponse,
    shards_at_start: &ListShardsResponse,
    clock: &Arc<LoadClock>,
    cfg: &FailoverConfig,
) -> anyhow::Result<Killed> {
    let kill_at = clock.start + Duration::from_secs(cfg.kill_after_secs);
    tokio::time::sleep_until((kill_at - POLL_LEAD).into()).await;
    let shards = admin.list_shards().await.unwrap_or_else(|_| shards_at_start.clone());
    let victim = pick_victim(&shards, nodes, cfg.victim)?;
    let stop_victim = Arc::new(AtomicBool::new(false));
    let stop_all = Arc::new(AtomicBool::new(false));
    let mut pollers = Vec::new();
    if cfg.poll_ms > 0 {
        for n in &nodes.nodes {
            let stop = if n.id == victim {
                stop_victim.clone()
            } else {
                stop_all.clone()
            };
            pollers.push(tokio::spawn(poll_views(
                admin.clone(),
                n.id,
                n.addr.clone(),
                Duration::from_millis(cfg.poll_ms),
                clock.clone(),
                stop,
            )));
        }
    }
    tokio::time::sleep_until(kill_at.into()).await;
    // The victim's shards: by its own view now, else by ListShards (the
    // leaders the nodes last reported to the metadata group).
    let victim_addr = node_addr(nodes, victim)?;
    let by_list: BTreeSet<u64> = leaders_of(&shards)
        .remove(&victim)
        .unwrap_or_default()
        .into_iter()
        .collect();
    let victim_shards: BTreeSet<u64> = match admin.cluster_status(&victim_addr, POLL_CALL_TIMEOUT).await {
        Ok(st) => st
            .shards
            .iter()
            .filter(|s| s.hosted_here && s.leader_id == victim)
            .map(|s| s.id)
            .collect(),
        Err(e) => {
            eprintln!("warning: {e}; taking the victim's shards from ListShards");
            by_list.clone()
        }
    };
    if victim_shards != by_list {
        eprintln!("note: node {victim} leads {victim_shards:?} by its own view, {by_list:?} by ListShards");
    }
    anyhow::ensure!(
        !victim_shards.is_empty(),
        "node {victim} leads no data shard: nothing fails over"
    );
    let survivor = nodes.nodes.iter().find(|n| n.id != victim).map(|n| n.addr.clone());
    let metadata_leader = match &survivor {
        Some(a) => admin
            .cluster_status(a, POLL_CALL_TIMEOUT)
            .await
            .ok()
            .and_then(|s| s.metadata)
            .map(|m| m.leader_id)
            .filter(|l| *l != 0),
        None => None,
    };
    eprintln!("victim: node {victim}, leading shards {victim_shards:?}; metadata leader {metadata_leader:?}");
    let (command, started, done, wall) = kill(&cfg.kill_cmd, victim).await?;
    let stats = client.stats();
    stop_victim.store(true, Ordering::Release);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let check = admin.cluster_status(&victim_addr, POLL_CALL_TIMEOUT).await;
    let victim_answered = check.is_ok();
    let victim_check = check.err().map_or("answered".to_string(), |e| format!("{e:#}"));
    if victim_answered {
        eprintln!("warning: node {victim} still answers after the kill command");
    }
    let end = done + Duration::from_secs(cfg.after_secs);
    tokio::time::sleep_until(end.into()).await;
    stop_all.store(true, Ordering::Release);
    let kill_us = clock.us(done);
    let (mut views, mut polls) = (Vec::new(), BTreeMap::new());
    for p in pollers {
        let log = p.await?;
        polls.insert(log.node, log.stats(kill_us));
        views.extend(log.views);
    }
    views.sort_by_key(|v| v.at_us);
    Ok(Killed {
        victim,
        victim_shards,
        command,
        kill_started_us: clock.us(started),
        kill_us,
        kill_wall: wall,
        metadata_leader,
        victim_answered,
        victim_check,
        polls,
        views,
        stats,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use ringkv_proto::v1::NodeStatus;
    use ringkv_proto::v1::TokenRange;

    const KILL: u64 = 10_000_000;

    fn placement(id: u64, leader: u64, start: u64, end: Option<u64>) -> ShardPlacement {
        ShardPlacement {
            id,
            replicas: vec![1, 2, 3],
            leader_id: leader,
            ranges: vec![TokenRange {
                start,
                end: end.unwrap_or(0),
                end_is_max: end.is_none(),
            }],
            ..Default::default()
        }
    }

    fn nodes(ids: &[u64]) -> ListNodesResponse {
        ListNodesResponse {
            nodes: ids
                .iter()
                .map(|id| NodeStatus {
                    id: *id,
                    addr: format!("127.0.0.1:{}", 52090 + id),
                    up: true,
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }
    }

    fn cfg() -> FailoverConfig {
        FailoverConfig {
            kill_cmd: "kill -9 $(cat /tmp/n{node}.pid)".into(),
            victim: None,
            rate: 1000.0,
            records: 1000,
            value_bytes: 100,
            concurrency: 4096,
            kill_after_secs: 10,
            warmup_secs: 2,
            after_secs: 10,
            poll_ms: 20,
            settle_secs: 3,
            settle_timeout_secs: 90,
            target_stall_ms: 1000,
            seed: 1,
            cluster_note: "3 nodes, default settings".into(),
        }
    }

    #[test]
    fn config_is_checked_and_the_kill_command_names_the_victim() {
        cfg().validate().unwrap();
        for bad in [
            FailoverConfig {
                kill_cmd: " ".into(),
                ..cfg()
            },
            FailoverConfig { rate: 0.0, ..cfg() },
            FailoverConfig {
                warmup_secs: 10,
                ..cfg()
            },
            FailoverConfig { poll_ms: 1, ..cfg() },
            FailoverConfig { after_secs: 0, ..cfg() },
        ] {
            assert!(bad.validate().is_err(), "{bad:?}");
        }
        assert_eq!(
            render_kill_cmd("kill -9 $(cat /tmp/n{node}.pid) # {node}", 3),
            "kill -9 $(cat /tmp/n3.pid) # 3"
        );
    }

    #[test]
    fn the_victim_leads_the_most_shards() {
        let q = u64::MAX / 4;
        let shards = ListShardsResponse {
            epoch: 1,
            shards: vec![
                placement(1, 2, 0, Some(q)),
                placement(2, 3, q, Some(2 * q)),
                placement(3, 2, 2 * q, Some(3 * q)),
                placement(4, 0, 3 * q, None),
            ],
        };
        let ns = nodes(&[1, 2, 3]);
        assert_eq!(pick_victim(&shards, &ns, None).unwrap(), 2);
        assert_eq!(pick_victim(&shards, &ns, Some(1)).unwrap(), 1);
        assert!(pick_victim(&shards, &ns, Some(9)).is_err(), "not a member");
        assert_eq!(leaders_of(&shards), BTreeMap::from([(2, vec![1, 3]), (3, vec![2])]));
        // A tie goes to the lowest id.
        let mut tie = shards.clone();
        tie.shards[2].leader_id = 3;
        tie.shards[3].leader_id = 2;
        assert_eq!(pick_victim(&tie, &ns, None).unwrap(), 2);
        tie.shards[0].leader_id = 1;
        tie.shards[3].leader_id = 1;
        assert_eq!(pick_victim(&tie, &ns, None).unwrap(), 1);
        let none = ListShardsResponse {
            epoch: 1,
            shards: vec![placement(1, 0, 0, None)],
        };
        assert!(pick_victim(&none, &ns, None).is_err());
        assert_eq!(shard_of_token(5, &shards.shards), Some(1));
        assert_eq!(shard_of_token(u64::MAX, &shards.shards), Some(4));
        assert_eq!(shard_of_token(2 * q, &shards.shards), Some(3));
    }

    fn w(intended_us: u64, latency_us: u64, shard: u64, error: Option<&str>) -> WriteRecord {
        WriteRecord {
            intended_us,
            latency_us,
            shard,
            error: error.map(str::to_string),
        }
    }

    fn view(at_us: u64, node: u64, shard: u64, leader: u64, term: u64) -> LeaderView {
        LeaderView {
            at_us,
            node,
            shard,
            leader,
            term,
        }
    }

    /// Shard 1 (led by node 2) and shard 3 (led by node 1), a write every
    /// 10 ms on each from 0 to 12 s; node 2 dies at 10 s, with the write
    /// intended at 9.990 s still in flight. Shard 1 takes writes again at
    /// 11.3 s; shard 3 never notices.
    fn observed() -> Observed {
        let mut writes = Vec::new();
        for t in (0..12_000_000u64).step_by(10_000) {
            // Shard 3: 2 ms, one slow write of 6 ms before the kill.
            let lat = if t == 9_000_000 { 6_000 } else { 2_000 };
            writes.push(w(t, lat, 3, None));
            // Shard 1: normal until 4 ms before the kill, then every write
            // intended before 11.3 s completes at 11.3 s (+1 ms each).
            let stalled_until = KILL + 1_300_000;
            if t + 10_000 < KILL {
                writes.push(w(t, 2_000, 1, None));
            } else if t == KILL + 500_000 {
                writes.push(w(t, 4_000_000, 1, Some("DeadlineExceeded")));
            } else if t < stalled_until {
                writes.push(w(t, stalled_until - t + 1_000, 1, None));
            } else {
                writes.push(w(t, 2_000, 1, None));
            }
        }
        writes.sort_by_key(|w| w.intended_us);
        Observed {
            writes,
            kill_started_us: KILL - 3_000,
            kill_us: KILL,
            measure_from_us: 2_000_000,
            victim: 2,
            victim_shards: BTreeSet::from([1]),
            views: vec![
                view(KILL - 900_000, 2, 1, 2, 5),
                view(KILL - 900_000, 3, 1, 2, 5),
                view(KILL - 900_000, 1, 1, 2, 5),
                view(KILL - 900_000, 1, 0, 2, 7),
                view(KILL - 900_000, 3, 0, 2, 7),
                view(KILL + 900_000, 3, 1, 0, 6),
                view(KILL + 1_000_000, 3, 1, 3, 6),
                view(KILL + 1_050_000, 1, 1, 3, 6),
                view(KILL + 1_100_000, 3, 0, 1, 8),
                // A hand-off of shard 1 to node 1 after the failover.
                view(KILL + 3_000_000, 1, 1, 1, 7),
                view(KILL + 3_010_000, 3, 1, 1, 7),
                // Shard 3's leadership moves to node 3 (balancing).
                view(KILL - 900_000, 3, 3, 1, 4),
                view(KILL + 2_500_000, 3, 3, 3, 5),
            ],
        }
    }

    #[test]
    fn analysis_finds_the_stall_and_splits_it() {
        let a = analyze(&observed(), 1000);
        // Before: writes done before the kill, intended after 2 s.
        assert!((5_990..=6_010).contains(&a.before.max_us), "{:?}", a.before);
        assert!(a.before.p50_us >= 1_990 && a.before.p50_us <= 2_010, "{:?}", a.before);
        // The window opens at the kill minus the worst before-kill latency.
        assert_eq!(a.window_from_ms, -6.0);
        let s = &a.shards[0];
        assert_eq!(s.shard, 1);
        assert_eq!(s.noticed_ms, Some(900.0));
        assert_eq!(s.elected_ms, Some(1000.0));
        assert_eq!((s.new_leader, s.term_before, s.term), (Some(3), Some(5), Some(6)));
        assert_eq!(s.terms_after_kill, 2);
        assert_eq!(s.later_leaders, vec![(3000.0, 1, 7)]);
        assert_eq!(a.other_leader_changes, vec![(3, 2500.0, 3, 5)]);
        assert_eq!(s.first_ok_ms, Some(1301.0));
        assert_eq!(s.client_ms, Some(301.0));
        assert_eq!(s.failed, 1);
        assert_eq!(a.longest_stall_ms, Some(1301.0));
        assert_eq!(a.longest_stall_shard, Some(1));
        assert_eq!(a.longest_election_ms, Some(1000.0));
        assert_eq!(a.metadata_elected_ms, Some(1100.0));
        // The slowest is the one left unanswered at the kill (intended
        // 9.990 s, before the window opens).
        assert_eq!(a.victim_shards.max_latency_ms, 1311.0);
        assert_eq!(a.victim_shards.max_latency_at_ms, -10.0);
        assert_eq!(
            a.victim_shards.errors_by_kind,
            BTreeMap::from([("DeadlineExceeded".to_string(), 1)])
        );
        assert_eq!(a.victim_shards.max_error_latency_ms, 4000.0);
        assert_eq!(a.victim_shards.ok_over_target, 32, "writes intended in [-10, 300] ms");
        assert_eq!(a.other_shards.max_latency_ms, 2.0);
        assert_eq!(a.other_shards.errors, 0);
        assert_eq!(a.all.max_latency_ms, 1311.0);
        assert_eq!(a.all.writes, a.victim_shards.writes + a.other_shards.writes);
        assert_eq!(a.errors_by_kind.values().sum::<u64>(), 1);
        assert_eq!(
            a.failed_writes,
            vec![FailedWrite {
                shard: 1,
                intended_ms: 500.0,
                latency_ms: 4000.0,
                kind: "DeadlineExceeded".into()
            }]
        );
        // Nothing of shard 1 completes from the kill to 1301 ms; shard 3
        // completes a write every 10 ms.
        assert_eq!(
            (a.victim_shards.longest_gap_ms, a.victim_shards.longest_gap_from_ms),
            (1301.0, 0.0)
        );
        assert_eq!(a.other_shards.longest_gap_ms, 10.0);
        assert_eq!(a.all.longest_gap_ms, 10.0);
        assert_eq!(a.writes_total, 2400);
    }

    #[test]
    fn a_reply_arriving_just_after_the_kill_does_not_end_the_stall() {
        let mut o = observed();
        // A write answered by the victim before it died, read 3 ms after
        // the kill.
        o.writes.push(w(KILL - 8_000, 11_000, 1, None));
        let a = analyze(&o, 1000);
        assert_eq!(a.shards[0].first_ok_ms, Some(1301.0));
        assert_eq!(recovery_after(&o.writes, 1, KILL), Some(KILL + 1_301_000));
        // A shard with no write before the kill: counted from the kill.
        let late = vec![w(KILL + 500_000, 1_000, 9, None), w(KILL + 600_000, 1_000, 9, None)];
        assert_eq!(recovery_after(&late, 9, KILL), Some(KILL + 501_000));
        assert_eq!(recovery_after(&late, 8, KILL), None);
        // Only completions well after the kill: the first one ends it.
        let quick = vec![w(KILL - 20_000, 2_000, 9, None), w(KILL + 150_000, 1_000, 9, None)];
        assert_eq!(recovery_after(&quick, 9, KILL), Some(KILL + 151_000));
    }

    #[test]
    fn a_shard_that_never_recovers_has_no_stall_value() {
        let mut o = observed();
        o.writes.retain(|w| w.shard != 1 || w.done_us() < KILL);
        o.views.retain(|v| v.at_us < KILL);
        let a = analyze(&o, 1000);
        assert_eq!(a.longest_stall_ms, None);
        assert_eq!(a.longest_stall_shard, Some(1));
        assert_eq!(a.longest_election_ms, None);
        assert_eq!(a.shards[0].first_ok_ms, None);
        assert_eq!(a.metadata_elected_ms, None);
    }

    #[test]
    fn timeline_counts_by_intended_start_and_completion() {
        let o = observed();
        let t = timeline(&o.writes, &o.victim_shards, o.kill_us);
        assert_eq!(t[0].from_ms, -2000);
        assert_eq!(t[1].from_ms, -1900);
        // Last intended start 11.99 s: 2 s before + 2 s after the kill.
        assert_eq!(t.last().unwrap().from_ms, 1900);
        let at = |ms: i64| t.iter().find(|w| w.from_ms == ms).unwrap();
        assert_eq!(
            (at(-1000).ok, at(-1000).victim_ok, at(-1000).completed_ok),
            (20, 10, 20)
        );
        assert_eq!(at(-100).victim_max_ms, 1311.0);
        // 0..100 ms after the kill: shard 1's writes wait until 1301 ms.
        let w0 = at(0);
        assert_eq!((w0.ok, w0.victim_ok, w0.errors), (20, 10, 0));
        assert_eq!(w0.victim_max_ms, 1301.0);
        assert_eq!(w0.max_ms, 1301.0);
        // Nothing of shard 1 completes between the kill and 1.3 s; then the
        // whole backlog does (131 writes intended in [-10, 1300) ms minus
        // the failed one, plus the on-time ones of both shards).
        assert_eq!(at(500).errors, 1);
        assert_eq!(at(500).completed_ok, 10);
        assert_eq!(at(1300).completed_ok, 130 + 20);
        assert!(timeline(&[], &o.victim_shards, KILL).is_empty());
    }

    #[test]
    fn poll_stats_count_after_the_kill() {
        let log = PollLog {
            node: 1,
            views: vec![],
            answered_us: vec![KILL - 20_000, KILL + 10_000, KILL + 30_000, KILL + 95_000],
            failed_us: vec![KILL - 1, KILL + 50_000],
        };
        assert_eq!(
            log.stats(KILL),
            PollStats {
                answered: 3,
                failed: 1,
                max_gap_ms: 65.0
            }
        );
        assert_eq!(PollLog::default().stats(KILL), PollStats::default());
    }

    fn report() -> FailoverReport {
        let o = observed();
        let analysis = analyze(&o, 1000);
        FailoverReport {
            config: cfg(),
            victim: 2,
            victim_given: false,
            kill_command: render_kill_cmd(&cfg().kill_cmd, 2),
            kill_at_s: 10.0,
            kill_utc: "2026-11-30T00:53:20.123Z".into(),
            kill_command_ms: 3.0,
            shards_total: 2,
            victim_shards: vec![1],
            leaders_before: BTreeMap::from([(2, vec![1]), (1, vec![3])]),
            leaders_after: BTreeMap::from([(3, vec![1]), (1, vec![3])]),
            metadata_leader: Some(2),
            victim_answered_after_kill: false,
            victim_check: "ClusterStatus on 127.0.0.1:52092: connection refused".into(),
            polls: BTreeMap::from([(
                1,
                PollStats {
                    answered: 400,
                    failed: 0,
                    max_gap_ms: 35.0,
                },
            )]),
            views: o.views.clone(),
            records: 1000,
            missed_arrivals: 0,
            client_before: ClientCounters::default(),
            client_after: ClientCounters {
                operations: 10,
                attempts: 30,
                ..Default::default()
            },
            stall_ok: analysis.longest_stall_ms.is_some_and(|v| v < 1000.0),
            analysis,
            target_stall_ms: 1000,
            load_average: Some("1.00 1.00 1.00".into()),
        }
    }

    #[test]
    fn report_renders_the_verdict_and_round_trips() {
        let r = report();
        let md = markdown(&r);
        assert!(
            md.contains("| longest write stall (kill to the first successful write, worst shard) | 1301 ms (shard 1) | < 1000 ms | FAIL |"),
            "{md}"
        );
        assert!(
            md.contains("| 1 | 900 | 1000 | 3 | 5 -> 6 | 2 | 1301 | 301 | 1 | 1311 | 3000: 1 (T7) |"),
            "{md}"
        );
        assert!(md.contains("shard 3 to node 3 (T5) at 2500 ms"), "{md}");
        assert!(md.contains("- shard 1, 500, 4000, DeadlineExceeded"), "{md}");
        assert!(md.contains("node 1: 400 answers, longest gap 35 ms"), "{md}");
        assert!(
            md.contains(
                "| victim's shards | 201 | 200 | 1 | 1311.0 | -10 | 32 | 4000 | DeadlineExceeded 1 | 1301 (0) |"
            ),
            "{md}"
        );
        assert!(md.contains("| victim's shards | "), "{md}");
        assert!(md.contains("kill -9 $(cat /tmp/n2.pid)"), "{md}");
        assert!(md.contains("- cluster: 3 nodes, default settings\n"), "{md}");
        assert!(md.contains("metadata group re-elected after: 1100 ms"), "{md}");
        // The markdown timeline stops 2 s after the last recovery (3.3 s).
        assert!(md.contains("\n| -2000 | "), "{md}");
        assert!(md.contains("\n| 1900 | "), "{md}");
        let mut never = r.clone();
        never.analysis.longest_stall_ms = None;
        assert!(markdown(&never).contains("no write on shard 1 succeeded in 10 s"));
        let dir = tempfile::tempdir().unwrap();
        write_report(&r, dir.path()).unwrap();
        let back: FailoverReport =
            serde_json::from_str(&std::fs::read_to_string(dir.path().join("failover.json")).unwrap()).unwrap();
        assert_eq!(back.analysis, r.analysis);
        assert!(dir.path().join("failover.md").exists());
        let t = std::time::UNIX_EPOCH + Duration::from_secs(1_796_000_000);
        assert_eq!(
            default_out_dir(t),
            PathBuf::from("bench/results/failover-20261130T005320Z")
        );
    }
}
