//! `ringkv-bench move-shard`: how fast a replica of a loaded shard moves to
//! another node, and what the move does to foreground latency.
//!
//! Against a running cluster it
//! 1. turns automatic rebalancing off (the planner must not interfere);
//! 2. picks a shard, the replica to move (a follower by default) and a
//!    target node that holds no copy ([`plan`]);
//! 3. loads `--bytes` of values into that shard only: keys are chosen by
//!    token ([`keys_in_ranges`]) and written with batched puts, a bounded
//!    number of batches in flight;
//! 4. snapshots the shard on its leader, purging the log, so the target
//!    catches up the way it would in a long-running cluster: by snapshot;
//! 5. runs an open-loop foreground load (fixed arrival rate, latency from
//!    each request's intended start, reads and writes on the moved shard and
//!    on the other shards) for a baseline period, then starts `MoveReplica`
//!    and keeps the load running until `ListOperations` no longer lists the
//!    move and `ListShards` shows the target in place of the source;
//! 6. reports the move's size, duration and rate, the foreground latency
//!    before and during the move and the p99 ratio, as JSON and markdown,
//!    with the verdict against the targets.
//!
//! While the move runs it also records the move's steps and the snapshot
//! counters of the shard leader and the target ([`Sample`]), which show
//! where the time went (snapshot build, transfer, install, promotion).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;
use std::path::PathBuf;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use std::time::Instant;

use anyhow::Context;
use hdrhistogram::Histogram;
use rand::Rng;
use rand::SeedableRng;
use ringkv_client::CallOptions;
use ringkv_client::Client;
use ringkv_proto::v1::ListNodesResponse;
use ringkv_proto::v1::ListShardsResponse;
use ringkv_proto::v1::NodeStatsResponse;
use ringkv_proto::v1::ShardPlacement;
use ringkv_proto::v1::TokenRange;
use serde::Deserialize;
use serde::Serialize;

use crate::admin::Admin;
use crate::runner::Latency;

/// Largest `--bytes`.
pub const LOAD_BYTES_MAX: u64 = 64 * 1024 * 1024 * 1024;
/// Largest value of the loaded keys.
pub const VALUE_BYTES_MAX: usize = 1024 * 1024;
/// Largest BatchPut of the load, in pairs (the server's default limit).
pub const BATCH_KEYS_MAX: usize = 1000;
/// Largest BatchPut of the load, in bytes (below the server's 16 MiB).
pub const BATCH_BYTES_MAX: usize = 8 * 1024 * 1024;
/// Most load batches or foreground requests in flight.
pub const CONCURRENCY_MAX: usize = 4096;
/// Longest baseline.
pub const BASELINE_SECONDS_MAX: u64 = 3600;
/// Most foreground keys per class.
pub const FOREGROUND_KEYS_MAX: usize = 1_000_000;
/// Candidate keys tried per key wanted in a shard's ranges before giving up
/// (a shard owning 1/4096 of the ring needs about 4096).
const KEY_SEARCH_TRIES_PER_KEY: u64 = 1 << 20;
/// Highest latency the histograms track (µs); slower requests are clamped.
const LATENCY_US_MAX: u64 = 600_000_000;
/// Interval of the load's progress lines.
const PROGRESS_EVERY: Duration = Duration::from_secs(5);
/// Deadline of one load batch, retries included.
const LOAD_BATCH_TIMEOUT: Duration = Duration::from_secs(120);
/// Deadline of one foreground request, retries included.
const FOREGROUND_TIMEOUT: Duration = Duration::from_secs(30);
/// A foreground arrival started this late counts as missed (still measured).
const MISSED_AFTER: Duration = Duration::from_secs(1);
/// Width of one window of the foreground timeline during the move.
pub const TIMELINE_WINDOW_MS: u64 = 500;
/// Consecutive failed polls of the move's progress before giving up.
const POLL_FAILURES_MAX: u32 = 50;

/// The flags of `ringkv-bench move-shard`.
#[derive(Debug, Clone, Serialize, Deserialize, clap::Args)]
pub struct MoveConfig {
    /// Shard to move (default: the lowest id with a node that holds no copy).
    #[arg(long)]
    pub shard: Option<u64>,
    /// Node the replica leaves (default: the lowest-id follower).
    #[arg(long)]
    pub from: Option<u64>,
    /// Node the replica goes to (default: an up node without a copy, the one
    /// with the fewest replicas).
    #[arg(long)]
    pub to: Option<u64>,
    /// Bytes of keys and values loaded into the shard before the move.
    #[arg(long, default_value_t = 1 << 30)]
    pub bytes: u64,
    /// Value size of the loaded keys.
    #[arg(long, default_value_t = 16 * 1024)]
    pub value_bytes: usize,
    /// Pairs per BatchPut of the load. Each batch is one Raft entry: with
    /// large entries (1 MiB) a follower that falls behind cannot catch up,
    /// as openraft sends up to `raft.append_entries_max` entries per append
    /// within one heartbeat interval (see docs/performance.md).
    #[arg(long, default_value_t = 4)]
    pub batch_keys: usize,
    /// Load batches in flight.
    #[arg(long, default_value_t = 8)]
    pub load_concurrency: usize,
    /// Do not snapshot the shard (and purge its log) after loading: the
    /// target then catches up from the log where it is still there.
    #[arg(long)]
    pub no_snapshot: bool,
    /// Foreground arrivals per second (open loop).
    #[arg(long, default_value_t = 500.0)]
    pub rate: f64,
    /// Most foreground requests in flight; arrivals beyond wait (and their
    /// wait counts in their latency).
    #[arg(long, default_value_t = 64)]
    pub concurrency: usize,
    /// Fraction of foreground requests on the moved shard (the rest go to
    /// the other shards).
    #[arg(long, default_value_t = 0.5)]
    pub moved_fraction: f64,
    /// Fraction of foreground requests that are reads (the rest are puts).
    #[arg(long, default_value_t = 0.5)]
    pub read_fraction: f64,
    /// Foreground keys per class (moved shard, other shards).
    #[arg(long, default_value_t = 1000)]
    pub foreground_keys: usize,
    /// Value size of foreground writes.
    #[arg(long, default_value_t = 100)]
    pub foreground_value_bytes: usize,
    /// Foreground seconds before the baseline is measured.
    #[arg(long, default_value_t = 3)]
    pub warmup_seconds: u64,
    /// Measured foreground seconds before the move starts.
    #[arg(long, default_value_t = 20)]
    pub baseline_seconds: u64,
    /// Give up (and fail) when the move has not finished after this long.
    #[arg(long, default_value_t = 1800)]
    pub move_timeout_seconds: u64,
    /// Interval of the progress polls during the move.
    #[arg(long, default_value_t = 200)]
    pub poll_ms: u64,
    /// Target move rate (MB/s, 10^6 bytes) for the verdict.
    #[arg(long, default_value_t = 50.0)]
    pub target_mb_per_second: f64,
    /// Target p99 ratio (during / before) for the verdict.
    #[arg(long, default_value_t = 3.0)]
    pub target_p99_ratio: f64,
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
}

impl MoveConfig {
    pub fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!(
            (1..=LOAD_BYTES_MAX).contains(&self.bytes),
            "bytes must be 1..={LOAD_BYTES_MAX}"
        );
        anyhow::ensure!(
            (1..=VALUE_BYTES_MAX).contains(&self.value_bytes),
            "value-bytes must be 1..={VALUE_BYTES_MAX}"
        );
        anyhow::ensure!(
            (1..=BATCH_KEYS_MAX).contains(&self.batch_keys),
            "batch-keys must be 1..={BATCH_KEYS_MAX}"
        );
        anyhow::ensure!(
            self.batch_keys * (self.value_bytes + 64) <= BATCH_BYTES_MAX,
            "batch-keys x value-bytes must stay under {BATCH_BYTES_MAX} bytes per batch"
        );
        for (name, v) in [
            ("load-concurrency", self.load_concurrency),
            ("concurrency", self.concurrency),
        ] {
            anyhow::ensure!(
                (1..=CONCURRENCY_MAX).contains(&v),
                "{name} must be 1..={CONCURRENCY_MAX}"
            );
        }
        anyhow::ensure!(self.rate > 0.0 && self.rate.is_finite(), "rate must be > 0");
        for (name, v) in [
            ("moved-fraction", self.moved_fraction),
            ("read-fraction", self.read_fraction),
        ] {
            anyhow::ensure!((0.0..=1.0).contains(&v), "{name} must be 0..=1");
        }
        anyhow::ensure!(
            (1..=FOREGROUND_KEYS_MAX).contains(&self.foreground_keys),
            "foreground-keys must be 1..={FOREGROUND_KEYS_MAX}"
        );
        anyhow::ensure!(
            self.foreground_value_bytes <= VALUE_BYTES_MAX,
            "foreground-value-bytes must be <= {VALUE_BYTES_MAX}"
        );
        anyhow::ensure!(
            (1..=BASELINE_SECONDS_MAX).contains(&self.baseline_seconds),
            "baseline-seconds must be 1..={BASELINE_SECONDS_MAX}"
        );
        anyhow::ensure!(self.warmup_seconds <= BASELINE_SECONDS_MAX, "warmup too long");
        anyhow::ensure!(self.move_timeout_seconds >= 1, "move-timeout-seconds must be >= 1");
        anyhow::ensure!((10..=60_000).contains(&self.poll_ms), "poll-ms must be 10..=60000");
        Ok(())
    }
}

/// The move to make.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Plan {
    pub shard: u64,
    pub from: u64,
    pub to: u64,
    /// The shard's leader when the plan was made (0 = unknown).
    pub leader: u64,
}

/// Chooses the shard, source and target from the cluster's placement;
/// every given choice is checked, the others are filled in.
pub fn plan(
    shards: &ListShardsResponse,
    nodes: &ListNodesResponse,
    shard: Option<u64>,
    from: Option<u64>,
    to: Option<u64>,
) -> anyhow::Result<Plan> {
    let usable = |id: u64| nodes.nodes.iter().any(|n| n.id == id && n.up && !n.draining);
    let holds = |s: &ShardPlacement, id: u64| s.replicas.contains(&id) || s.learners.contains(&id);
    let target_for = |s: &ShardPlacement| -> Option<u64> {
        match to {
            Some(t) => (!holds(s, t) && usable(t)).then_some(t),
            None => nodes
                .nodes
                .iter()
                .filter(|n| n.up && !n.draining && !holds(s, n.id))
                .min_by_key(|n| (n.replicas, n.id))
                .map(|n| n.id),
        }
    };
    let s = match shard {
        Some(id) => shards
            .shards
            .iter()
            .find(|s| s.id == id)
            .with_context(|| format!("shard {id} does not exist"))?,
        None => shards
            .shards
            .iter()
            .filter(|s| s.operation_id == 0 && target_for(s).is_some())
            .min_by_key(|s| s.id)
            .context("no shard has an up node without a copy to move to (a cluster of 4 nodes or more is needed)")?,
    };
    anyhow::ensure!(
        s.operation_id == 0,
        "shard {} already has operation {} in flight",
        s.id,
        s.operation_id
    );
    let to = target_for(s).with_context(|| match to {
        Some(t) => format!(
            "node {t} cannot receive shard {}: it holds a copy, is down, draining or unknown",
            s.id
        ),
        None => format!("no up node without a copy of shard {}", s.id),
    })?;
    let from = match from {
        Some(f) => {
            anyhow::ensure!(s.replicas.contains(&f), "node {f} holds no replica of shard {}", s.id);
            f
        }
        None => s
            .replicas
            .iter()
            .copied()
            .filter(|r| *r != s.leader_id)
            .min()
            .with_context(|| format!("shard {} has no follower to move", s.id))?,
    };
    Ok(Plan {
        shard: s.id,
        from,
        to,
        leader: s.leader_id,
    })
}

/// Whether `token` falls in one of `ranges` (start inclusive, end exclusive).
pub fn in_ranges(token: u64, ranges: &[TokenRange]) -> bool {
    ranges
        .iter()
        .any(|r| token >= r.start && (r.end_is_max || token < r.end))
}

/// `n` distinct keys `<prefix>-<i>` whose tokens fall inside `ranges`
/// (`inside`) or outside them (`!inside`), in order of `i`.
pub fn keys_in_ranges(prefix: &str, ranges: &[TokenRange], n: usize, inside: bool) -> anyhow::Result<Vec<Vec<u8>>> {
    let mut out = Vec::with_capacity(n);
    let budget = (n as u64)
        .saturating_mul(KEY_SEARCH_TRIES_PER_KEY)
        .max(KEY_SEARCH_TRIES_PER_KEY);
    for i in 0..budget {
        if out.len() == n {
            return Ok(out);
        }
        let k = format!("{prefix}-{i}").into_bytes();
        if in_ranges(ringkv_client::token_of(&k), ranges) == inside {
            out.push(k);
        }
    }
    anyhow::ensure!(out.len() == n, "found only {} of {n} keys for the ranges", out.len());
    Ok(out)
}

/// Loads about `bytes` of keys and values into the shard owning `ranges`;
/// returns the bytes written (keys plus values) and the number of keys.
pub async fn load_shard(client: &Client, ranges: &[TokenRange], cfg: &MoveConfig) -> anyhow::Result<(u64, u64)> {
    let key_len_guess = 16u64;
    let per_key = cfg.value_bytes as u64 + key_len_guess;
    let n = cfg.bytes.div_ceil(per_key);
    let n = usize::try_from(n).context("too many keys")?;
    let keys = Arc::new(keys_in_ranges("move-bench", ranges, n, true)?);
    let batches = keys.len().div_ceil(cfg.batch_keys);
    let next = Arc::new(AtomicU64::new(0));
    let written = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for t in 0..cfg.load_concurrency {
        let (client, keys, next, written) = (client.clone(), keys.clone(), next.clone(), written.clone());
        let (batch_keys, value_bytes, seed) = (cfg.batch_keys, cfg.value_bytes, cfg.seed);
        tasks.push(tokio::spawn(async move {
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed.wrapping_mul(1000).wrapping_add(t as u64));
            let opts = CallOptions::new().timeout(LOAD_BATCH_TIMEOUT);
            loop {
                let b = next.fetch_add(1, Ordering::Relaxed) as usize;
                if b >= batches {
                    return anyhow::Ok(());
                }
                let part = &keys[b * batch_keys..((b + 1) * batch_keys).min(keys.len())];
                // Random values: RocksDB compresses (lz4), and constant
                // values would shrink the shard far below `bytes`.
                let pairs: Vec<(&[u8], Vec<u8>)> = part
                    .iter()
                    .map(|k| {
                        let mut v = vec![0u8; value_bytes];
                        rng.fill(&mut v[..]);
                        (k.as_slice(), v)
                    })
                    .collect();
                let size: usize = pairs.iter().map(|(k, v)| k.len() + v.len()).sum();
                client
                    .batch_put_with(&pairs, &opts)
                    .await
                    .with_context(|| format!("load batch {b}"))?;
                written.fetch_add(size as u64, Ordering::Relaxed);
            }
        }));
    }
    let progress = {
        let (written, total) = (written.clone(), cfg.bytes);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(PROGRESS_EVERY).await;
                let w = written.load(Ordering::Relaxed);
                eprintln!(
                    "  loaded {:.0} MB of {:.0} MB ({:.1} MB/s)",
                    w as f64 / 1e6,
                    total as f64 / 1e6,
                    w as f64 / 1e6 / started.elapsed().as_secs_f64()
                );
            }
        })
    };
    let mut result = Ok(());
    for t in &mut tasks {
        if let Err(e) = t.await.map_err(anyhow::Error::from).and_then(|r| r) {
            result = Err(e);
            break;
        }
    }
    // On an error, the other loaders stop too.
    tasks.iter().for_each(|t| t.abort());
    progress.abort();
    result?;
    let w = written.load(Ordering::Relaxed);
    eprintln!(
        "  loaded {:.0} MB in {:.1} s ({:.1} MB/s)",
        w as f64 / 1e6,
        started.elapsed().as_secs_f64(),
        w as f64 / 1e6 / started.elapsed().as_secs_f64()
    );
    Ok((w, keys.len() as u64))
}

/// Foreground phases a request is counted in, by its intended start.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Phase {
    Warmup,
    Before,
    During,
    After,
}

/// Where a foreground request goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Class {
    Moved,
    Other,
}

/// Phase boundaries, in nanoseconds since the load started (`u64::MAX`
/// until known).
struct Clock {
    start: Instant,
    before_from: u64,
    during_from: AtomicU64,
    after_from: AtomicU64,
    stop_at: AtomicU64,
}

impl Clock {
    fn since_start(&self, at: Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.start).as_nanos()).unwrap_or(u64::MAX)
    }

    fn phase(&self, intended: u64) -> Phase {
        if intended < self.before_from {
            Phase::Warmup
        } else if intended < self.during_from.load(Ordering::Acquire) {
            Phase::Before
        } else if intended < self.after_from.load(Ordering::Acquire) {
            Phase::During
        } else {
            Phase::After
        }
    }
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, LATENCY_US_MAX, 3).expect("valid histogram bounds")
}

/// One worker's measurements, merged at the end.
#[derive(Default)]
struct Tally {
    hists: BTreeMap<(Phase, Class, bool), Histogram<u64>>,
    errors: BTreeMap<Phase, u64>,
    missed: BTreeMap<Phase, u64>,
    /// Successful requests of the move phase by [`TIMELINE_WINDOW_MS`]
    /// window of their intended start (counted from the move's start):
    /// (requests, slowest latency in microseconds).
    windows: BTreeMap<u64, (u64, u64)>,
}

impl Tally {
    fn merge(&mut self, other: Tally) -> anyhow::Result<()> {
        for (k, h) in other.hists {
            self.hists
                .entry(k)
                .or_insert_with(histogram)
                .add(&h)
                .map_err(|e| anyhow::anyhow!("merge histograms: {e:?}"))?;
        }
        for (p, n) in other.errors {
            *self.errors.entry(p).or_default() += n;
        }
        for (p, n) in other.missed {
            *self.missed.entry(p).or_default() += n;
        }
        for (w, (n, max_us)) in other.windows {
            let e = self.windows.entry(w).or_default();
            e.0 += n;
            e.1 = e.1.max(max_us);
        }
        Ok(())
    }

    /// Latency of `phase`, of one class (or both) and reads, writes or both.
    fn latency(&self, phase: Phase, class: Option<Class>, read: Option<bool>) -> anyhow::Result<Latency> {
        let mut h = histogram();
        for ((p, c, r), x) in &self.hists {
            if *p == phase && class.is_none_or(|k| k == *c) && read.is_none_or(|k| k == *r) {
                h.add(x).map_err(|e| anyhow::anyhow!("merge histograms: {e:?}"))?;
            }
        }
        Ok(Latency::of(&h))
    }
}

/// The keys the foreground load uses.
struct ForegroundKeys {
    moved: Vec<Vec<u8>>,
    other: Vec<Vec<u8>>,
}

/// Runs the open-loop foreground load until `clock.stop_at` is set and
/// passed; returns the merged measurements.
async fn foreground(
    client: Client,
    keys: Arc<ForegroundKeys>,
    clock: Arc<Clock>,
    cfg: MoveConfig,
) -> anyhow::Result<Tally> {
    let tick = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for t in 0..cfg.concurrency {
        let (client, keys, clock, tick, cfg) = (client.clone(), keys.clone(), clock.clone(), tick.clone(), cfg.clone());
        tasks.push(tokio::spawn(async move {
            let mut rng = rand::rngs::StdRng::seed_from_u64(cfg.seed.wrapping_add(1 + t as u64));
            let opts = CallOptions::new().timeout(FOREGROUND_TIMEOUT);
            let mut out = Tally::default();
            let mut value = vec![0u8; cfg.foreground_value_bytes];
            loop {
                let i = tick.fetch_add(1, Ordering::Relaxed);
                let at = clock.start + Duration::from_secs_f64(i as f64 / cfg.rate);
                let intended = clock.since_start(at);
                if intended >= clock.stop_at.load(Ordering::Acquire) {
                    return out;
                }
                let now = Instant::now();
                if at > now {
                    tokio::time::sleep_until(at.into()).await;
                } else if now - at > MISSED_AFTER {
                    *out.missed.entry(clock.phase(intended)).or_default() += 1;
                }
                let class = if rng.gen_bool(cfg.moved_fraction) {
                    Class::Moved
                } else {
                    Class::Other
                };
                let set = match class {
                    Class::Moved => &keys.moved,
                    Class::Other => &keys.other,
                };
                let key = &set[rng.gen_range(0..set.len())];
                let read = rng.gen_bool(cfg.read_fraction);
                let res = if read {
                    client.get_with(key, &opts).await.map(|_| ())
                } else {
                    rng.fill(&mut value[..]);
                    client.put_with(key, &value, &opts).await
                };
                let done = Instant::now();
                // The phase by intended start: a request that arrived before
                // the move but was slowed by it counts before (it is rare
                // and conservative for the ratio).
                let phase = clock.phase(intended);
                match res {
                    Ok(()) => {
                        let us = (done - at).as_micros().clamp(1, u128::from(LATENCY_US_MAX)) as u64;
                        out.hists
                            .entry((phase, class, read))
                            .or_insert_with(histogram)
                            .saturating_record(us);
                        if phase == Phase::During {
                            let since_move = intended.saturating_sub(clock.during_from.load(Ordering::Acquire));
                            let e = out
                                .windows
                                .entry(since_move / 1_000_000 / TIMELINE_WINDOW_MS)
                                .or_default();
                            e.0 += 1;
                            e.1 = e.1.max(us);
                        }
                    }
                    Err(e) => {
                        if *out.errors.entry(phase).or_default() == 0 {
                            eprintln!("  foreground error ({phase:?}): {e}");
                        }
                        *out.errors.entry(phase).or_default() += 1;
                    }
                }
            }
        }));
    }
    let mut all = Tally::default();
    for t in tasks {
        all.merge(t.await?)?;
    }
    Ok(all)
}

/// One observation of the move, `at_ms` after `MoveReplica` returned.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Sample {
    pub at_ms: u64,
    /// The operation's next step (`done` once it is no longer listed).
    pub step: String,
    pub entries_behind: i64,
    /// Shard leader's counters: snapshots built, chunks sent (all shards).
    pub leader_snapshots_built: Option<u64>,
    pub leader_chunks_sent: Option<u64>,
    /// Target's counter: snapshots installed (all shards).
    pub target_snapshots_installed: Option<u64>,
}

/// Where the move's time went, derived from the samples.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Breakdown {
    /// Milliseconds spent with each step as the next one, in order of first
    /// appearance (resolution: the poll interval).
    pub steps_ms: Vec<(String, u64)>,
    /// First and last time the leader's chunk counter was seen rising.
    pub first_chunk_ms: Option<u64>,
    pub last_chunk_ms: Option<u64>,
    pub chunks_sent: Option<u64>,
    /// When the target's installed counter was first seen higher.
    pub installed_ms: Option<u64>,
    /// Snapshots the leader built during the move.
    pub snapshots_built: Option<u64>,
}

/// Reads the phases of the move out of the samples.
pub fn breakdown(samples: &[Sample]) -> Breakdown {
    let mut b = Breakdown::default();
    for w in samples.windows(2) {
        let (prev, cur) = (&w[0], &w[1]);
        let dt = cur.at_ms.saturating_sub(prev.at_ms);
        match b.steps_ms.iter_mut().find(|(s, _)| *s == prev.step) {
            Some((_, ms)) => *ms += dt,
            None => b.steps_ms.push((prev.step.clone(), dt)),
        }
        if let (Some(p), Some(c)) = (prev.leader_chunks_sent, cur.leader_chunks_sent) {
            if c > p {
                b.first_chunk_ms.get_or_insert(prev.at_ms);
                b.last_chunk_ms = Some(cur.at_ms);
            }
        }
        if let (Some(p), Some(c)) = (prev.target_snapshots_installed, cur.target_snapshots_installed) {
            if c > p && b.installed_ms.is_none() {
                b.installed_ms = Some(cur.at_ms);
            }
        }
    }
    let delta = |f: fn(&Sample) -> Option<u64>| {
        let first = samples.iter().find_map(f)?;
        let last = samples.iter().rev().find_map(f)?;
        Some(last.saturating_sub(first))
    };
    b.chunks_sent = delta(|s| s.leader_chunks_sent);
    b.snapshots_built = delta(|s| s.leader_snapshots_built);
    b
}

/// One [`TIMELINE_WINDOW_MS`] window of the foreground load during the
/// move, by intended start counted from `MoveReplica`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Window {
    pub from_ms: u64,
    pub requests: u64,
    pub max_ms: f64,
}

/// Foreground latency of one phase.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct PhaseLatency {
    pub all: Latency,
    pub moved_shard: Latency,
    pub other_shards: Latency,
    pub reads: Latency,
    pub writes: Latency,
    pub errors: u64,
    pub missed_arrivals: u64,
}

/// The result of one run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MoveReport {
    pub config: MoveConfig,
    pub plan: Plan,
    pub operation_id: u64,
    /// Bytes of keys and values the benchmark wrote into the shard.
    pub loaded_bytes: u64,
    pub loaded_keys: u64,
    /// The shard's size as the leader's RocksDB estimates it, before the move.
    pub approximate_bytes: u64,
    pub move_seconds: f64,
    /// `loaded_bytes` / move duration, in 10^6 bytes per second.
    pub mb_per_second: f64,
    /// `approximate_bytes` / move duration.
    pub approximate_mb_per_second: f64,
    pub before: PhaseLatency,
    pub during: PhaseLatency,
    /// p99 during / p99 before, all foreground requests.
    pub p99_ratio: f64,
    pub p99_ratio_moved_shard: f64,
    pub p99_ratio_other_shards: f64,
    pub rate_ok: bool,
    pub latency_ok: bool,
    pub breakdown: Breakdown,
    pub samples: Vec<Sample>,
    /// The slowest foreground request of each window during the move: it
    /// shows which step of the move the latency comes from.
    #[serde(default)]
    pub timeline: Vec<Window>,
    /// `uptime` load averages when the move finished (Linux only).
    pub load_average: Option<String>,
}

fn ratio(during: &Latency, before: &Latency) -> f64 {
    if before.p99_us == 0 {
        return f64::NAN;
    }
    during.p99_us as f64 / before.p99_us as f64
}

fn ms(us: u64) -> f64 {
    us as f64 / 1000.0
}

/// Picks one latency out of a phase's.
type Pick = fn(&PhaseLatency) -> &Latency;

/// The markdown summary.
pub fn markdown(r: &MoveReport) -> String {
    let mut s = String::new();
    let verdict = |ok: bool| if ok { "PASS" } else { "FAIL" };
    let _ = writeln!(
        s,
        "# Shard move: shard {} from node {} to node {}\n",
        r.plan.shard, r.plan.from, r.plan.to
    );
    let _ = writeln!(s, "| measure | value | target | verdict |");
    let _ = writeln!(s, "|---|---:|---:|---|");
    let _ = writeln!(
        s,
        "| move rate (loaded bytes) | {:.1} MB/s | >= {:.0} MB/s | {} |",
        r.mb_per_second,
        r.config.target_mb_per_second,
        verdict(r.rate_ok)
    );
    let _ = writeln!(
        s,
        "| foreground p99 during / before | {:.2}x | <= {:.1}x | {} |",
        r.p99_ratio,
        r.config.target_p99_ratio,
        verdict(r.latency_ok)
    );
    let _ = writeln!(s);
    let _ = writeln!(
        s,
        "- loaded {:.1} MB ({} values of {} bytes); the leader estimates the shard at {:.1} MB \
         ({:.1} MB/s by that estimate)",
        r.loaded_bytes as f64 / 1e6,
        r.loaded_keys,
        r.config.value_bytes,
        r.approximate_bytes as f64 / 1e6,
        r.approximate_mb_per_second
    );
    let _ = writeln!(
        s,
        "- move (operation {}) took {:.1} s, from MoveReplica to the target replacing the source",
        r.operation_id, r.move_seconds
    );
    let b = &r.breakdown;
    let steps: Vec<String> = b
        .steps_ms
        .iter()
        .map(|(st, ms)| format!("{st} {:.1} s", *ms as f64 / 1000.0))
        .collect();
    let _ = writeln!(s, "- steps: {}", steps.join(", "));
    if let (Some(f), Some(l)) = (b.first_chunk_ms, b.last_chunk_ms) {
        let _ = writeln!(
            s,
            "- snapshot chunks sent by the leader: {} between {:.1} s and {:.1} s; target installed \
             at {}; snapshots built during the move: {}",
            b.chunks_sent.unwrap_or(0),
            f as f64 / 1000.0,
            l as f64 / 1000.0,
            b.installed_ms
                .map_or("-".to_string(), |t| format!("{:.1} s", t as f64 / 1000.0)),
            b.snapshots_built.unwrap_or(0)
        );
    }
    let _ = writeln!(
        s,
        "- foreground: {:.0} requests/s open loop, {:.0}% on the moved shard, {:.0}% reads",
        r.config.rate,
        r.config.moved_fraction * 100.0,
        r.config.read_fraction * 100.0
    );
    if let Some(l) = &r.load_average {
        let _ = writeln!(s, "- load average at the end: {l}");
    }
    let _ = writeln!(s);
    let _ = writeln!(
        s,
        "| foreground | phase | requests | p50 ms | p99 ms | max ms | errors | p99 ratio |"
    );
    let _ = writeln!(s, "|---|---|---:|---:|---:|---:|---:|---:|");
    let rows: [(&str, Pick, f64); 5] = [
        ("all", |p| &p.all, r.p99_ratio),
        ("moved shard", |p| &p.moved_shard, r.p99_ratio_moved_shard),
        ("other shards", |p| &p.other_shards, r.p99_ratio_other_shards),
        ("reads", |p| &p.reads, ratio(&r.during.reads, &r.before.reads)),
        ("writes", |p| &p.writes, ratio(&r.during.writes, &r.before.writes)),
    ];
    for (name, f, q) in rows {
        for (phase, p) in [("before", &r.before), ("during", &r.during)] {
            let l = f(p);
            let q = if phase == "during" {
                format!("{q:.2}x")
            } else {
                "-".into()
            };
            let errors = if name == "all" { p.errors.to_string() } else { "".into() };
            let _ = writeln!(
                s,
                "| {name} | {phase} | {} | {:.2} | {:.2} | {:.2} | {errors} | {q} |",
                l.count,
                ms(l.p50_us),
                ms(l.p99_us),
                ms(l.max_us)
            );
        }
    }
    // Windows whose slowest request took more than 3x the baseline p99.
    let slow_ms = 3.0 * ms(r.before.all.p99_us);
    let slow: Vec<String> = r
        .timeline
        .iter()
        .filter(|w| w.max_ms > slow_ms)
        .map(|w| format!("{:.1} s: {:.0} ms", w.from_ms as f64 / 1000.0, w.max_ms))
        .collect();
    let _ = writeln!(
        s,
        "\nslow {TIMELINE_WINDOW_MS} ms windows during the move (slowest request > {slow_ms:.1} ms, by \
         intended start after MoveReplica): {}",
        if slow.is_empty() {
            "none".to_string()
        } else {
            slow.join(", ")
        }
    );
    s
}

/// Writes `move.json` and `move.md` into `dir`.
pub fn write_report(r: &MoveReport, dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    std::fs::write(dir.join("move.json"), serde_json::to_string_pretty(r)?)?;
    std::fs::write(dir.join("move.md"), markdown(r))?;
    Ok(())
}

pub(crate) fn node_addr(nodes: &ListNodesResponse, id: u64) -> anyhow::Result<String> {
    nodes
        .nodes
        .iter()
        .find(|n| n.id == id)
        .map(|n| n.addr.clone())
        .with_context(|| format!("node {id} is not listed"))
}

/// The shard's placement now.
async fn shard_now(admin: &Admin, shard: u64) -> anyhow::Result<ShardPlacement> {
    admin
        .list_shards()
        .await?
        .shards
        .into_iter()
        .find(|s| s.id == shard)
        .with_context(|| format!("shard {shard} is no longer listed"))
}

/// A node's stats, or `None` when it does not answer (it is only progress).
async fn stats_of(admin: &Admin, addr: &str) -> Option<NodeStatsResponse> {
    admin.node_stats(addr).await.ok()
}

/// Polls the move until it is done; returns the samples. Fails when the
/// move was rolled back, or on timeout.
async fn follow_move(
    admin: &Admin,
    plan: &Plan,
    op_id: u64,
    leader_addr: &str,
    target_addr: &str,
    cfg: &MoveConfig,
) -> anyhow::Result<(Vec<Sample>, Instant)> {
    let started = Instant::now();
    let deadline = started + Duration::from_secs(cfg.move_timeout_seconds);
    let mut samples = Vec::new();
    let mut failures = 0u32;
    let mut last_step = String::new();
    loop {
        let ops = admin.list_operations().await;
        let (leader, target) = tokio::join!(stats_of(admin, leader_addr), stats_of(admin, target_addr));
        let at_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
        let ops = match ops {
            Ok(o) => {
                failures = 0;
                o
            }
            Err(e) => {
                failures += 1;
                anyhow::ensure!(failures < POLL_FAILURES_MAX, "cannot follow the move: {e}");
                tokio::time::sleep(Duration::from_millis(cfg.poll_ms)).await;
                continue;
            }
        };
        let op = ops.operations.iter().find(|o| o.id == op_id);
        let (step, behind) = match op {
            Some(o) => (o.step.clone(), o.entries_behind),
            None => ("done".to_string(), 0),
        };
        if step != last_step {
            eprintln!(
                "  {:>7.1} s  step {step} (entries behind {behind})",
                at_ms as f64 / 1000.0
            );
            last_step = step.clone();
        }
        samples.push(Sample {
            at_ms,
            step,
            entries_behind: behind,
            leader_snapshots_built: leader.as_ref().map(|s| s.snapshots_built),
            leader_chunks_sent: leader.as_ref().map(|s| s.snapshot_chunks_sent),
            target_snapshots_installed: target.as_ref().map(|s| s.snapshots_installed),
        });
        if op.is_none() {
            let done = Instant::now();
            let s = shard_now(admin, plan.shard).await?;
            anyhow::ensure!(
                s.replicas.contains(&plan.to) && !s.replicas.contains(&plan.from),
                "move {op_id} ended without completing: shard {} replicas are {:?}",
                plan.shard,
                s.replicas
            );
            return Ok((samples, done));
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "move {op_id} did not finish within {} s",
            cfg.move_timeout_seconds
        );
        tokio::time::sleep(Duration::from_millis(cfg.poll_ms)).await;
    }
}

/// Runs the whole benchmark against the cluster at `endpoints`.
pub async fn run(endpoints: &[String], admin_token: Option<String>, cfg: MoveConfig) -> anyhow::Result<MoveReport> {
    cfg.validate()?;
    let admin = Admin::new(endpoints, admin_token.clone())?;
    let enabled = admin.set_rebalance(false).await?;
    anyhow::ensure!(!enabled, "rebalancing is still on");
    eprintln!("rebalancing off");

    let (shards, nodes) = (admin.list_shards().await?, admin.list_nodes().await?);
    let plan = plan(&shards, &nodes, cfg.shard, cfg.from, cfg.to)?;
    let ranges = shards
        .shards
        .iter()
        .find(|s| s.id == plan.shard)
        .map(|s| s.ranges.clone())
        .context("planned shard vanished")?;
    eprintln!(
        "moving shard {} from node {} to node {} (leader {})",
        plan.shard, plan.from, plan.to, plan.leader
    );

    let client_cfg = ringkv_client::Config {
        request_timeout: FOREGROUND_TIMEOUT,
        max_attempts: 1000,
        admin_token,
        ..Default::default()
    };
    let client = Client::connect_with(endpoints, client_cfg)
        .await
        .context("connect ringkv")?;

    eprintln!("loading {:.0} MB into shard {}", cfg.bytes as f64 / 1e6, plan.shard);
    let (loaded_bytes, loaded_keys) = load_shard(&client, &ranges, &cfg).await?;

    let fg = Arc::new(ForegroundKeys {
        moved: keys_in_ranges("move-fg", &ranges, cfg.foreground_keys, true)?,
        other: keys_in_ranges("move-fg", &ranges, cfg.foreground_keys, false)?,
    });
    let value = vec![b'v'; cfg.foreground_value_bytes];
    for set in [&fg.moved, &fg.other] {
        for part in set.chunks(cfg.batch_keys.max(1)) {
            let pairs: Vec<(&[u8], &[u8])> = part.iter().map(|k| (k.as_slice(), value.as_slice())).collect();
            client
                .batch_put_with(&pairs, &CallOptions::new().timeout(LOAD_BATCH_TIMEOUT))
                .await
                .context("load foreground keys")?;
        }
    }

    // The shard leader now (it may have changed while loading).
    let placement = shard_now(&admin, plan.shard).await?;
    anyhow::ensure!(
        placement.ranges == ranges,
        "shard {} changed its ranges while loading (split?): the loaded keys are no longer all in it",
        plan.shard
    );
    let plan = Plan {
        leader: placement.leader_id,
        ..plan
    };
    anyhow::ensure!(plan.leader != 0, "shard {} has no known leader", plan.shard);
    let leader_addr = node_addr(&nodes, plan.leader)?;
    let target_addr = node_addr(&nodes, plan.to)?;
    if !cfg.no_snapshot {
        let t = Instant::now();
        let r = admin.trigger_snapshot(&leader_addr, plan.shard).await?;
        eprintln!(
            "snapshot of shard {} on its leader (node {}) at index {} in {:.1} s; log purged up to {}",
            plan.shard,
            plan.leader,
            r.snapshot_index,
            t.elapsed().as_secs_f64(),
            r.purged_upto
        );
        // The followers too: each builds its own snapshot once enough
        // entries were applied, and a follower building a 1 GiB snapshot
        // in the middle of the move would be measured as the move's cost.
        for id in placement.replicas.iter().filter(|id| **id != plan.leader) {
            let t = Instant::now();
            let r = admin.trigger_snapshot(&node_addr(&nodes, *id)?, plan.shard).await?;
            eprintln!(
                "snapshot of shard {} on follower node {id} at index {} in {:.1} s",
                plan.shard,
                r.snapshot_index,
                t.elapsed().as_secs_f64()
            );
        }
    }
    let approximate_bytes = shard_now(&admin, plan.shard).await?.approximate_bytes;

    let start = Instant::now();
    let before_from = Duration::from_secs(cfg.warmup_seconds);
    let during_from = before_from + Duration::from_secs(cfg.baseline_seconds);
    let clock = Arc::new(Clock {
        start,
        before_from: u64::try_from(before_from.as_nanos()).unwrap_or(u64::MAX),
        during_from: AtomicU64::new(u64::MAX),
        after_from: AtomicU64::new(u64::MAX),
        stop_at: AtomicU64::new(u64::MAX),
    });
    eprintln!(
        "foreground load at {:.0}/s: {} s warm-up, {} s baseline",
        cfg.rate, cfg.warmup_seconds, cfg.baseline_seconds
    );
    let load = tokio::spawn(foreground(client.clone(), fg, clock.clone(), cfg.clone()));
    let stop_load = |clock: &Clock| {
        clock
            .stop_at
            .store(clock.since_start(Instant::now()), Ordering::Release)
    };

    tokio::time::sleep_until((start + during_from).into()).await;
    clock
        .during_from
        .store(clock.since_start(Instant::now()), Ordering::Release);
    let move_started = Instant::now();
    let resp = match admin.move_replica(plan.shard, plan.from, plan.to).await {
        Ok(r) => r,
        Err(e) => {
            stop_load(&clock);
            let _ = load.await;
            return Err(e);
        }
    };
    eprintln!("move started: operation {} (epoch {})", resp.operation_id, resp.epoch);
    let followed = follow_move(&admin, &plan, resp.operation_id, &leader_addr, &target_addr, &cfg).await;
    let (samples, done) = match followed {
        Ok(x) => x,
        Err(e) => {
            stop_load(&clock);
            let _ = load.await;
            return Err(e);
        }
    };
    clock.after_from.store(clock.since_start(done), Ordering::Release);
    stop_load(&clock);
    let tally = load.await??;
    let move_seconds = done.duration_since(move_started).as_secs_f64();
    eprintln!("move done in {move_seconds:.1} s");

    let phase = |p: Phase| -> anyhow::Result<PhaseLatency> {
        Ok(PhaseLatency {
            all: tally.latency(p, None, None)?,
            moved_shard: tally.latency(p, Some(Class::Moved), None)?,
            other_shards: tally.latency(p, Some(Class::Other), None)?,
            reads: tally.latency(p, None, Some(true))?,
            writes: tally.latency(p, None, Some(false))?,
            errors: tally.errors.get(&p).copied().unwrap_or(0),
            missed_arrivals: tally.missed.get(&p).copied().unwrap_or(0),
        })
    };
    let (before, during) = (phase(Phase::Before)?, phase(Phase::During)?);
    let mb_per_second = loaded_bytes as f64 / 1e6 / move_seconds;
    let p99_ratio = ratio(&during.all, &before.all);
    let report = MoveReport {
        plan,
        operation_id: resp.operation_id,
        loaded_bytes,
        loaded_keys,
        approximate_bytes,
        move_seconds,
        mb_per_second,
        approximate_mb_per_second: approximate_bytes as f64 / 1e6 / move_seconds,
        p99_ratio,
        p99_ratio_moved_shard: ratio(&during.moved_shard, &before.moved_shard),
        p99_ratio_other_shards: ratio(&during.other_shards, &before.other_shards),
        rate_ok: mb_per_second >= cfg.target_mb_per_second,
        latency_ok: p99_ratio <= cfg.target_p99_ratio,
        breakdown: breakdown(&samples),
        samples,
        timeline: tally
            .windows
            .iter()
            .map(|(w, (n, max_us))| Window {
                from_ms: w * TIMELINE_WINDOW_MS,
                requests: *n,
                max_ms: ms(*max_us),
            })
            .collect(),
        before,
        during,
        load_average: crate::report::load_average(),
        config: cfg,
    };
    Ok(report)
}

/// Where the report goes by default: `bench/results/move-<UTC timestamp>`.
pub fn default_out_dir(now: std::time::SystemTime) -> PathBuf {
    crate::report::results_dir("move", now)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ringkv_proto::v1::NodeStatus;

    fn range(start: u64, end: Option<u64>) -> TokenRange {
        TokenRange {
            start,
            end: end.unwrap_or(0),
            end_is_max: end.is_none(),
        }
    }

    fn shard(id: u64, replicas: &[u64], leader: u64) -> ShardPlacement {
        ShardPlacement {
            id,
            replicas: replicas.to_vec(),
            leader_id: leader,
            ranges: vec![range(id * 100, Some(id * 100 + 100))],
            ..Default::default()
        }
    }

    fn nodes(up: &[u64], replicas: &[(u64, u64)]) -> ListNodesResponse {
        ListNodesResponse {
            nodes: replicas
                .iter()
                .map(|(id, r)| NodeStatus {
                    id: *id,
                    addr: format!("127.0.0.1:{}", 5000 + id),
                    up: up.contains(id),
                    replicas: *r,
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }
    }

    #[test]
    fn plan_picks_a_follower_and_a_node_without_a_copy() {
        let shards = ListShardsResponse {
            epoch: 3,
            shards: vec![shard(1, &[1, 2, 3], 1), shard(2, &[2, 3, 4], 3)],
        };
        let ns = nodes(&[1, 2, 3, 4], &[(1, 1), (2, 2), (3, 2), (4, 1)]);
        let p = plan(&shards, &ns, None, None, None).unwrap();
        assert_eq!(
            p,
            Plan {
                shard: 1,
                from: 2,
                to: 4,
                leader: 1
            }
        );
        // Node 4 down: shard 1 cannot move, shard 2 can (to node 1).
        let ns_down = nodes(&[1, 2, 3], &[(1, 1), (2, 2), (3, 2), (4, 1)]);
        let p = plan(&shards, &ns_down, None, None, None).unwrap();
        assert_eq!((p.shard, p.from, p.to), (2, 2, 1));
        // Explicit choices are checked.
        assert!(
            plan(&shards, &ns, Some(1), Some(4), None).is_err(),
            "4 holds no replica"
        );
        assert!(plan(&shards, &ns, Some(1), None, Some(2)).is_err(), "2 holds a copy");
        assert!(plan(&shards, &ns, Some(9), None, None).is_err(), "no shard 9");
        let p = plan(&shards, &ns, Some(2), Some(3), Some(1)).unwrap();
        assert_eq!((p.shard, p.from, p.to), (2, 3, 1));
        // A shard with a move in flight is refused.
        let mut busy = shards.clone();
        busy.shards[0].operation_id = 7;
        assert!(plan(&busy, &ns, Some(1), None, None).is_err());
        assert_eq!(plan(&busy, &ns, None, None, None).unwrap().shard, 2);
        // Three nodes: nowhere to go.
        let three = ListShardsResponse {
            epoch: 1,
            shards: vec![shard(1, &[1, 2, 3], 1)],
        };
        assert!(plan(&three, &nodes(&[1, 2, 3], &[(1, 1), (2, 1), (3, 1)]), None, None, None).is_err());
    }

    #[test]
    fn keys_fall_inside_or_outside_the_ranges() {
        let quarter = u64::MAX / 4;
        let ranges = vec![range(quarter, Some(2 * quarter)), range(3 * quarter, None)];
        let inside = keys_in_ranges("k", &ranges, 500, true).unwrap();
        let outside = keys_in_ranges("k", &ranges, 500, false).unwrap();
        assert_eq!(inside.len(), 500);
        assert!(inside.iter().all(|k| in_ranges(ringkv_client::token_of(k), &ranges)));
        assert!(outside.iter().all(|k| !in_ranges(ringkv_client::token_of(k), &ranges)));
        let mut all: Vec<_> = inside.iter().chain(&outside).collect();
        all.sort();
        all.dedup();
        assert_eq!(all.len(), 1000, "keys are distinct");
        assert!(in_ranges(u64::MAX, &ranges) && !in_ranges(0, &ranges));
        assert!(keys_in_ranges("k", &[], 1, true).is_err(), "no range: no key");
    }

    fn sample(at_ms: u64, step: &str, chunks: u64, installed: u64) -> Sample {
        Sample {
            at_ms,
            step: step.into(),
            entries_behind: -1,
            leader_snapshots_built: Some(4),
            leader_chunks_sent: Some(chunks),
            target_snapshots_installed: Some(installed),
        }
    }

    #[test]
    fn breakdown_splits_the_move_into_steps_and_transfer() {
        let samples = vec![
            sample(0, "add_learner", 10, 0),
            sample(500, "catch_up", 10, 0),
            sample(1000, "catch_up", 30, 0),
            sample(1500, "catch_up", 60, 0),
            sample(2000, "catch_up", 60, 1),
            sample(2500, "change_voters", 60, 1),
            sample(3000, "done", 60, 1),
        ];
        let b = breakdown(&samples);
        assert_eq!(
            b.steps_ms,
            vec![
                ("add_learner".to_string(), 500),
                ("catch_up".to_string(), 2000),
                ("change_voters".to_string(), 500)
            ]
        );
        assert_eq!((b.first_chunk_ms, b.last_chunk_ms), (Some(500), Some(1500)));
        assert_eq!(b.chunks_sent, Some(50));
        assert_eq!(b.installed_ms, Some(2000));
        assert_eq!(b.snapshots_built, Some(0));
        assert_eq!(breakdown(&[]), Breakdown::default());
    }

    #[test]
    fn report_renders_verdicts_and_ratios() {
        let lat = |p99_us| Latency {
            count: 100,
            p50_us: 1000,
            p99_us,
            max_us: p99_us * 2,
            ..Latency::default()
        };
        let phase = |p99| PhaseLatency {
            all: lat(p99),
            moved_shard: lat(p99),
            other_shards: lat(p99),
            reads: lat(p99),
            writes: lat(p99),
            errors: 0,
            missed_arrivals: 0,
        };
        let cfg = MoveConfig {
            shard: None,
            from: None,
            to: None,
            bytes: 1 << 30,
            value_bytes: 16384,
            batch_keys: 64,
            load_concurrency: 4,
            no_snapshot: false,
            rate: 500.0,
            concurrency: 64,
            moved_fraction: 0.5,
            read_fraction: 0.5,
            foreground_keys: 1000,
            foreground_value_bytes: 100,
            warmup_seconds: 3,
            baseline_seconds: 20,
            move_timeout_seconds: 1800,
            poll_ms: 200,
            target_mb_per_second: 50.0,
            target_p99_ratio: 3.0,
            seed: 1,
        };
        cfg.validate().unwrap();
        let r = MoveReport {
            plan: Plan {
                shard: 1,
                from: 2,
                to: 4,
                leader: 1,
            },
            operation_id: 1,
            loaded_bytes: 1_000_000_000,
            loaded_keys: 61_000,
            approximate_bytes: 990_000_000,
            move_seconds: 25.0,
            mb_per_second: 40.0,
            approximate_mb_per_second: 39.6,
            before: phase(4000),
            during: phase(10000),
            p99_ratio: 2.5,
            p99_ratio_moved_shard: 2.5,
            p99_ratio_other_shards: 2.5,
            rate_ok: false,
            latency_ok: true,
            breakdown: breakdown(&[sample(0, "catch_up", 0, 0), sample(1000, "done", 5, 1)]),
            samples: vec![],
            timeline: vec![
                Window {
                    from_ms: 0,
                    requests: 250,
                    max_ms: 5.0,
                },
                Window {
                    from_ms: 500,
                    requests: 240,
                    max_ms: 20.0,
                },
            ],
            load_average: Some("1.00 1.00 1.00".into()),
            config: cfg.clone(),
        };
        let md = markdown(&r);
        assert!(
            md.contains("| move rate (loaded bytes) | 40.0 MB/s | >= 50 MB/s | FAIL |"),
            "{md}"
        );
        assert!(md.contains("| 2.50x | <= 3.0x | PASS |"), "{md}");
        assert!(
            md.contains("| all | during | 100 | 1.00 | 10.00 | 20.00 | 0 | 2.50x |"),
            "{md}"
        );
        // Only the window slower than 3x the baseline p99 (4 ms) is listed.
        assert!(md.contains("intended start after MoveReplica): 0.5 s: 20 ms\n"), "{md}");
        let dir = tempfile::tempdir().unwrap();
        write_report(&r, dir.path()).unwrap();
        let back: MoveReport =
            serde_json::from_str(&std::fs::read_to_string(dir.path().join("move.json")).unwrap()).unwrap();
        assert_eq!(back.plan, r.plan);
        assert!(MoveConfig {
            rate: 0.0,
            ..cfg.clone()
        }
        .validate()
        .is_err());
        assert!(MoveConfig {
            batch_keys: 1000,
            value_bytes: 1 << 20,
            ..cfg
        }
        .validate()
        .is_err());
    }

    #[test]
    fn default_out_dir_is_a_utc_timestamp() {
        let t = std::time::UNIX_EPOCH + Duration::from_secs(1_796_000_000);
        assert_eq!(default_out_dir(t), PathBuf::from("bench/results/move-20261130T005320Z"));
    }

    #[test]
    fn phases_follow_the_clock() {
        let clock = Clock {
            start: Instant::now(),
            before_from: 100,
            during_from: AtomicU64::new(u64::MAX),
            after_from: AtomicU64::new(u64::MAX),
            stop_at: AtomicU64::new(u64::MAX),
        };
        assert_eq!(clock.phase(50), Phase::Warmup);
        assert_eq!(clock.phase(150), Phase::Before);
        clock.during_from.store(200, Ordering::Release);
        assert_eq!(clock.phase(250), Phase::During);
        clock.after_from.store(300, Ordering::Release);
        assert_eq!((clock.phase(299), clock.phase(300)), (Phase::During, Phase::After));
    }
}
