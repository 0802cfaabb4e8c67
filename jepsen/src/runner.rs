//! `ringkv-jepsen run`: a real cluster, concurrent client processes running
//! one or more workloads through ringkv's gRPC API, a nemesis injecting
//! faults on a schedule generated from the seed (see `nemesis`), then
//! healing, final reads, the history on disk, the checkers' verdict, plots
//! and a summary.
//!
//! Several workloads run concurrently in one cluster on disjoint keys
//! (register `r<n>`, set `s/<n>`, counter `c`): client `w` runs workload
//! `w mod count`. Register keys rotate every [`REGISTER_KEY_ROTATION`] so
//! each key's history stays small enough for the linearizability search.
//!
//! A client records `ok` only on definite success, `fail` only when the
//! operation certainly did not take effect, otherwise `info`, after which
//! the worker continues as a new process (Jepsen's rule). Every loop is
//! bounded by the time limit and an operation count.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::io::IsTerminal;
use std::io::Write as _;
use std::path::Path;
use std::path::PathBuf;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;
use std::time::Instant;

use rand::rngs::StdRng;
use rand::Rng;
use rand::SeedableRng;
use ringkv_proto::v1::compare_and_swap_request::Action;
use ringkv_proto::v1::compare_and_swap_request::Expected;
use ringkv_proto::v1::kv_client::KvClient;
use ringkv_proto::v1::*;
use serde_json::json;
use serde_json::Value;
use tonic::transport::Channel;

use crate::checker;
use crate::checker::Budget;
use crate::checker::Workload;
use crate::cluster::Cluster;
use crate::cluster::FakeTime;
use crate::history::Event;
use crate::history::EventType;
use crate::history::History;
use crate::history::Outcome;
use crate::history::Process;
use crate::history::F;
use crate::nemesis;
use crate::nemesis::Kind;
use crate::nemesis::NemesisSpec;
use crate::report::Results;

/// Deadline of one client operation.
pub const OP_TIMEOUT: Duration = Duration::from_secs(2);
/// Most operations one run issues, whatever its time limit.
pub const OPS_MAX: u64 = 2_000_000;
/// Registers the register workload uses at a time.
const REGISTER_KEYS: u64 = 5;
/// How long one generation of register keys is used before the workload
/// moves on to fresh keys.
pub const REGISTER_KEY_ROTATION: Duration = Duration::from_secs(15);
/// Pause of a worker after a failed or indeterminate operation, so a node
/// that refuses at once (no leader, not the leader, connection refused)
/// does not turn the worker into a busy loop on a starved CPU.
const FAIL_BACKOFF: Duration = Duration::from_millis(50);
/// Longest the final reads may keep failing after the cluster is healed.
const FINAL_READS_TIMEOUT: Duration = Duration::from_secs(60);
/// Progress redraw period on a terminal, and line period otherwise.
const PROGRESS_TTY: Duration = Duration::from_secs(1);
const PROGRESS_LOG: Duration = Duration::from_secs(10);

/// Set (by `ringkv-jepsen run`) in the process it re-executed inside a
/// private network namespace.
pub const IN_NETNS_ENV: &str = "RINGKV_JEPSEN_IN_NETNS";

/// What to run.
#[derive(Debug, Clone)]
pub struct RunConfig {
    pub server: PathBuf,
    pub out: PathBuf,
    /// Workloads run concurrently on disjoint keys.
    pub workloads: Vec<Workload>,
    pub nemesis: NemesisSpec,
    pub nodes: u64,
    pub shards: u32,
    pub clients: u64,
    pub time_limit: Duration,
    /// Mean time between the starts of two faults.
    pub nemesis_interval: Duration,
    pub seed: u64,
    /// Extra flags for every server (e.g. the test-only broken reads).
    pub server_args: Vec<String>,
    /// Draw a progress line on stderr.
    pub progress: bool,
}

impl RunConfig {
    /// The command line that replays this run.
    pub fn replay_command(&self) -> String {
        let workloads: Vec<&str> = self.workloads.iter().map(|w| w.name()).collect();
        let mut cmd = format!(
            "ringkv-jepsen run --workload {} --nemesis {} --nodes {} --shards {} --clients {} \
             --time-limit {} --nemesis-interval {} --seed {}",
            workloads.join(","),
            self.nemesis,
            self.nodes,
            self.shards,
            self.clients,
            self.time_limit.as_secs(),
            self.nemesis_interval.as_secs(),
            self.seed
        );
        for a in &self.server_args {
            let _ = write!(cmd, " --server-arg={a}");
        }
        cmd
    }
}

/// Appends events with increasing indexes and monotonic times, and counts
/// completions for the progress line.
pub struct Recorder {
    start: Instant,
    /// Wall clock at `start`, in ms since the Unix epoch: node logs stamp
    /// wall time.
    start_unix_ms: u64,
    events: Mutex<Vec<Event>>,
    ok: AtomicU64,
    info: AtomicU64,
    fail: AtomicU64,
    nemesis: AtomicU64,
}

impl Recorder {
    pub fn new() -> Recorder {
        let start_unix_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        Recorder {
            start: Instant::now(),
            start_unix_ms,
            events: Mutex::new(Vec::new()),
            ok: AtomicU64::new(0),
            info: AtomicU64::new(0),
            fail: AtomicU64::new(0),
            nemesis: AtomicU64::new(0),
        }
    }

    pub fn record(
        &self,
        kind: EventType,
        f: F,
        key: Option<String>,
        value: Value,
        process: Process,
        error: Option<String>,
    ) {
        if process == Process::Nemesis {
            self.nemesis.fetch_add(1, Ordering::Relaxed);
        } else {
            match kind {
                EventType::Ok => self.ok.fetch_add(1, Ordering::Relaxed),
                EventType::Info => self.info.fetch_add(1, Ordering::Relaxed),
                EventType::Fail => self.fail.fetch_add(1, Ordering::Relaxed),
                EventType::Invoke => 0,
            };
        }
        let mut ev = self.events.lock().unwrap_or_else(|p| p.into_inner());
        // Time and index are taken under the lock, so both only grow.
        let time = self.start.elapsed().as_nanos() as u64;
        let index = ev.len() as u64;
        ev.push(Event {
            index,
            kind,
            f,
            key,
            value,
            process,
            time,
            error: error.map(Value::String),
        });
    }

    /// Completions so far: (ok, info, fail).
    fn counts(&self) -> (u64, u64, u64) {
        (
            self.ok.load(Ordering::Relaxed),
            self.info.load(Ordering::Relaxed),
            self.fail.load(Ordering::Relaxed),
        )
    }
}

impl Default for Recorder {
    fn default() -> Recorder {
        Recorder::new()
    }
}

/// How an operation ended.
enum Done {
    Ok(Value),
    Fail(String),
    Info(String),
}

/// The leader address a NOT_LEADER answer names, for the final reads to
/// follow.
fn leader_hint(s: &tonic::Status) -> Option<String> {
    let d = ringkv_proto::decode_error_detail(s.details())?;
    (!d.leader_addr.is_empty()).then_some(d.leader_addr)
}

fn error_code(s: &tonic::Status) -> Option<ErrorCode> {
    ringkv_proto::decode_error_detail(s.details()).and_then(|d| ErrorCode::try_from(d.code).ok())
}

/// A write's error: `fail` only when the server certainly did not propose
/// it, otherwise `info`. `NOT_LEADER` is definite even for a write that
/// reached Raft: openraft 0.9 answers a pending write `ForwardToLeader`
/// only when its entry is truncated (`DeleteConflictLog`), never merely
/// because the leader stepped down (that write waits for its apply).
fn write_error(s: tonic::Status) -> Done {
    let definite = matches!(
        error_code(&s),
        Some(
            ErrorCode::NotLeader
                | ErrorCode::WrongShard
                | ErrorCode::UnknownShard
                | ErrorCode::InvalidArgument
                | ErrorCode::Overloaded
                | ErrorCode::StaleSequence
        )
    );
    let msg = format!("{:?}: {}", s.code(), s.message());
    if definite {
        Done::Fail(msg)
    } else {
        Done::Info(msg)
    }
}

fn parse_int(v: &[u8]) -> Value {
    std::str::from_utf8(v)
        .ok()
        .and_then(|s| s.parse::<i64>().ok())
        .map_or_else(|| Value::String(String::from_utf8_lossy(v).into_owned()), Value::from)
}

async fn with_timeout<T>(fut: impl std::future::Future<Output = Result<T, tonic::Status>>) -> Result<T, tonic::Status> {
    match tokio::time::timeout(OP_TIMEOUT, fut).await {
        Ok(r) => r,
        Err(_) => Err(tonic::Status::deadline_exceeded("client timeout")),
    }
}

fn req<T>(msg: T) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    r.set_timeout(OP_TIMEOUT);
    r
}

async fn read(kv: &mut KvClient<Channel>, key: &str) -> Done {
    read_hinted(kv, key, &mut None).await
}

async fn read_hinted(kv: &mut KvClient<Channel>, key: &str, hint: &mut Option<String>) -> Done {
    let r = with_timeout(kv.get(req(GetRequest {
        header: None,
        key: key.as_bytes().to_vec(),
    })))
    .await;
    match r {
        Ok(r) => {
            let r = r.into_inner();
            Done::Ok(if r.found { parse_int(&r.value) } else { Value::Null })
        }
        // A read changes nothing: any error is a definite failure.
        Err(s) => {
            *hint = leader_hint(&s);
            Done::Fail(format!("{:?}: {}", s.code(), s.message()))
        }
    }
}

/// Half of the plain writes carry the worker's exactly-once session (the
/// next sequence), half none: shard leaders merge concurrent writes of
/// both kinds into shared entries, and both must keep their guarantees.
fn maybe_session(rng: &mut StdRng, client_id: &[u8; 16], sequence: &mut u64) -> Option<RequestHeader> {
    if !rng.gen_bool(0.5) {
        return None;
    }
    *sequence += 1;
    Some(RequestHeader {
        client_id: client_id.to_vec(),
        sequence: *sequence,
        ..RequestHeader::default()
    })
}

async fn write(kv: &mut KvClient<Channel>, key: &str, v: i64, header: Option<RequestHeader>) -> Done {
    let r = with_timeout(kv.put(req(PutRequest {
        header,
        key: key.as_bytes().to_vec(),
        value: v.to_string().into_bytes(),
    })))
    .await;
    match r {
        Ok(_) => Done::Ok(Value::from(v)),
        Err(s) => write_error(s),
    }
}

async fn cas(
    kv: &mut KvClient<Channel>,
    key: &str,
    expected: Option<i64>,
    new: i64,
    header: Option<RequestHeader>,
) -> Done {
    let r = with_timeout(kv.compare_and_swap(req(CompareAndSwapRequest {
        header,
        key: key.as_bytes().to_vec(),
        expected: Some(match expected {
            Some(e) => Expected::ExpectedValue(e.to_string().into_bytes()),
            None => Expected::ExpectAbsent(true),
        }),
        action: Some(Action::NewValue(new.to_string().into_bytes())),
    })))
    .await;
    match r {
        Ok(r) if r.get_ref().succeeded => Done::Ok(json!([expected, new])),
        Ok(_) => Done::Fail("compare failed".into()),
        Err(s) => write_error(s),
    }
}

/// Reads every element of the set (keys `s/<n>`), paging with the scan
/// continuation.
async fn read_all(kv: &mut KvClient<Channel>, hint: &mut Option<String>) -> Done {
    let mut out = Vec::new();
    let mut continuation = Vec::new();
    for _ in 0..10_000 {
        let r = with_timeout(kv.scan(req(ScanRequest {
            header: None,
            start_key: b"s/".to_vec(),
            end_key: b"s0".to_vec(),
            limit: 1000,
            continuation: continuation.clone(),
        })))
        .await;
        match r {
            Ok(r) => {
                let r = r.into_inner();
                out.extend(r.pairs.iter().map(|p| parse_int(&p.value)));
                if r.continuation.is_empty() {
                    return Done::Ok(Value::Array(out));
                }
                continuation = r.continuation;
            }
            Err(s) => {
                *hint = leader_hint(&s);
                return Done::Fail(format!("{:?}: {}", s.code(), s.message()));
            }
        }
    }
    Done::Fail("set read did not finish".into())
}

fn connect(addr: &str) -> anyhow::Result<KvClient<Channel>> {
    let ch = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))?
        .connect_timeout(Duration::from_millis(500))
        .connect_lazy();
    Ok(KvClient::new(ch))
}

/// What the workers share.
struct Shared {
    rec: Arc<Recorder>,
    end: Instant,
    next_value: AtomicU64,
    ops: AtomicU64,
    /// Every register key used, for the final reads.
    register_keys: Mutex<BTreeSet<String>>,
}

/// One worker: issues operations of `workload` as consecutive processes
/// until the end.
async fn worker(
    w: u64,
    workload: Workload,
    cfg: RunConfig,
    addrs: Vec<String>,
    shared: Arc<Shared>,
) -> anyhow::Result<()> {
    let (rec, end, next_value, ops) = (&shared.rec, shared.end, &shared.next_value, &shared.ops);
    let mut rng = StdRng::seed_from_u64(cfg.seed.wrapping_mul(1000).wrapping_add(w));
    let mut clients: Vec<KvClient<Channel>> = addrs.iter().map(|a| connect(a)).collect::<Result<_, _>>()?;
    // The last value this worker saw in each register, so its CAS
    // operations have a fair chance to succeed.
    let mut last_seen: std::collections::HashMap<String, i64> = std::collections::HashMap::new();
    let mut process = w;
    let mut sequence = 0u64;
    let mut client_id = [0u8; 16];
    rng.fill(&mut client_id);
    while Instant::now() < end && ops.fetch_add(1, Ordering::Relaxed) < OPS_MAX {
        let kv = &mut clients[rng.gen_range(0..addrs.len())];
        let p = Process::Client(process);
        let (f, key, invoke_value, done) = match workload {
            Workload::Register => {
                let generation = rec.start.elapsed().as_millis() / REGISTER_KEY_ROTATION.as_millis().max(1);
                let key = format!(
                    "r{}",
                    generation as u64 * REGISTER_KEYS + rng.gen_range(0..REGISTER_KEYS)
                );
                shared
                    .register_keys
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(key.clone());
                match rng.gen_range(0..10) {
                    0..=3 => {
                        rec.record(EventType::Invoke, F::Read, Some(key.clone()), Value::Null, p, None);
                        (F::Read, key.clone(), Value::Null, read(kv, &key).await)
                    }
                    4..=7 => {
                        let v = next_value.fetch_add(1, Ordering::Relaxed) as i64;
                        let header = maybe_session(&mut rng, &client_id, &mut sequence);
                        rec.record(EventType::Invoke, F::Write, Some(key.clone()), Value::from(v), p, None);
                        (F::Write, key.clone(), Value::from(v), write(kv, &key, v, header).await)
                    }
                    _ => {
                        let expected = match last_seen.get(&key) {
                            Some(&v) if rng.gen_bool(0.8) => v,
                            _ => rng.gen_range(0..next_value.load(Ordering::Relaxed).max(1)) as i64,
                        };
                        let new = next_value.fetch_add(1, Ordering::Relaxed) as i64;
                        let v = json!([expected, new]);
                        rec.record(EventType::Invoke, F::Cas, Some(key.clone()), v.clone(), p, None);
                        (F::Cas, key.clone(), v, cas(kv, &key, Some(expected), new, None).await)
                    }
                }
            }
            Workload::Set => {
                let e = next_value.fetch_add(1, Ordering::Relaxed) as i64;
                let key = format!("s/{e:012}");
                let header = maybe_session(&mut rng, &client_id, &mut sequence);
                rec.record(EventType::Invoke, F::Add, Some("s".into()), Value::from(e), p, None);
                (F::Add, "s".into(), Value::from(e), write(kv, &key, e, header).await)
            }
            Workload::Counter => {
                if rng.gen_range(0..4) == 0 {
                    rec.record(EventType::Invoke, F::Read, Some("c".into()), Value::Null, p, None);
                    (F::Read, "c".into(), Value::Null, read(kv, "c").await)
                } else {
                    // Increment: read, then CAS with an exactly-once session.
                    rec.record(EventType::Invoke, F::Incr, Some("c".into()), Value::from(1), p, None);
                    let done = match read(kv, "c").await {
                        Done::Ok(cur) => {
                            let cur = cur.as_i64();
                            sequence += 1;
                            let header = RequestHeader {
                                client_id: client_id.to_vec(),
                                sequence,
                                ..RequestHeader::default()
                            };
                            match cas(kv, "c", cur, cur.unwrap_or(0) + 1, Some(header)).await {
                                Done::Ok(_) => Done::Ok(Value::from(1)),
                                other => other,
                            }
                        }
                        _ => Done::Fail("read before increment failed".into()),
                    };
                    (F::Incr, "c".into(), Value::from(1), done)
                }
            }
        };
        // Failed and indeterminate writes repeat their invocation's value.
        let echo = if f.returns_value() { Value::Null } else { invoke_value };
        match done {
            Done::Ok(v) => {
                if workload == Workload::Register {
                    let seen = match f {
                        F::Cas => v.get(1).and_then(Value::as_i64),
                        _ => v.as_i64(),
                    };
                    if let Some(seen) = seen {
                        last_seen.insert(key.clone(), seen);
                    }
                }
                rec.record(EventType::Ok, f, Some(key), v, p, None)
            }
            Done::Fail(e) => {
                rec.record(EventType::Fail, f, Some(key), echo, p, Some(e));
                tokio::time::sleep(FAIL_BACKOFF.min(end.saturating_duration_since(Instant::now()))).await;
            }
            Done::Info(e) => {
                rec.record(EventType::Info, f, Some(key), echo, p, Some(e));
                // Jepsen's rule: the process may still act; continue as a new one.
                process += cfg.clients;
                tokio::time::sleep(FAIL_BACKOFF.min(end.saturating_duration_since(Instant::now()))).await;
            }
        }
    }
    Ok(())
}

/// Draws the progress line until `end`: a bar on a terminal, a line every
/// [`PROGRESS_LOG`] otherwise.
async fn progress(rec: Arc<Recorder>, load_start: Instant, end: Instant, active: nemesis::Active) {
    let tty = std::io::stderr().is_terminal();
    let period = if tty { PROGRESS_TTY } else { PROGRESS_LOG };
    let total = end.saturating_duration_since(load_start).as_secs().max(1);
    let mut next = load_start + period;
    while next < end {
        tokio::time::sleep_until(next.into()).await;
        next += period;
        let elapsed = load_start.elapsed().as_secs().min(total);
        let (ok, info, fail) = rec.counts();
        let faults: Vec<String> = active
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect();
        let faults = if faults.is_empty() {
            "none".to_string()
        } else {
            faults.join(", ")
        };
        const WIDTH: u64 = 30;
        let filled = (elapsed * WIDTH / total) as usize;
        let bar = format!("{}{}", "#".repeat(filled), "-".repeat(WIDTH as usize - filled));
        let line = format!(
            "[{bar}] {elapsed:>4}/{total}s  ok {ok} info {info} fail {fail} ({:.0} ops/s)  \
             nemesis events {}, now: {faults}",
            (ok + info + fail) as f64 / elapsed.max(1) as f64,
            rec.nemesis.load(Ordering::Relaxed)
        );
        let mut err = std::io::stderr().lock();
        if tty {
            // Clear the line, then redraw it in place.
            let _ = write!(err, "\r\x1b[2K{line}");
        } else {
            let _ = writeln!(err, "{line}");
        }
        let _ = err.flush();
    }
    if tty {
        let _ = writeln!(std::io::stderr());
    }
}

/// Files a run writes into its folder.
#[derive(Debug, Clone)]
pub struct RunFiles {
    pub history: PathBuf,
    pub results: PathBuf,
    pub schedule: PathBuf,
    pub latency_svg: PathBuf,
    pub throughput_svg: PathBuf,
    pub summary: PathBuf,
    /// Written only when the run is not valid ([`crate::evidence`]).
    pub evidence: PathBuf,
}

impl RunFiles {
    fn in_dir(dir: &Path) -> RunFiles {
        RunFiles {
            history: dir.join("history.jsonl"),
            results: dir.join("results.json"),
            schedule: dir.join("nemesis-schedule.json"),
            latency_svg: dir.join("latency.svg"),
            throughput_svg: dir.join("throughput.svg"),
            summary: dir.join("summary.txt"),
            evidence: dir.join("evidence.txt"),
        }
    }
}

/// The end-of-run summary: ops by workload, operation and outcome, nemesis
/// events by fault, the checkers' verdicts, and where the files are.
pub fn summary(cfg: &RunConfig, history: &History, results: &Results, files: &RunFiles, skipped: &str) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "== ringkv-jepsen run summary ==");
    let _ = writeln!(
        s,
        "workloads {}, nemesis {}, {} nodes, {} shards, {} clients, {} s, seed {}",
        cfg.workloads.iter().map(|w| w.name()).collect::<Vec<_>>().join(","),
        cfg.nemesis,
        cfg.nodes,
        cfg.shards,
        cfg.clients,
        cfg.time_limit.as_secs(),
        cfg.seed
    );
    let _ = writeln!(s, "replay: {}", cfg.replay_command());
    let _ = writeln!(
        s,
        "\n{:<10} {:<9} {:>8} {:>8} {:>8} {:>8}",
        "workload", "op", "total", "ok", "info", "fail"
    );
    for &w in &cfg.workloads {
        let keys = checker::keys_for(history, w);
        let mut by_f: std::collections::BTreeMap<String, [u64; 3]> = std::collections::BTreeMap::new();
        for op in keys.values().flatten() {
            let c = by_f.entry(op.f.as_str().to_string()).or_default();
            match op.outcome {
                Outcome::Ok => c[0] += 1,
                Outcome::Info => c[1] += 1,
                Outcome::Fail => c[2] += 1,
            }
        }
        let mut total = [0u64; 3];
        for (f, c) in &by_f {
            let _ = writeln!(
                s,
                "{:<10} {:<9} {:>8} {:>8} {:>8} {:>8}",
                w.name(),
                f,
                c.iter().sum::<u64>(),
                c[0],
                c[1],
                c[2]
            );
            (0..3).for_each(|i| total[i] += c[i]);
        }
        let _ = writeln!(
            s,
            "{:<10} {:<9} {:>8} {:>8} {:>8} {:>8}",
            w.name(),
            "all",
            total.iter().sum::<u64>(),
            total[0],
            total[1],
            total[2]
        );
    }
    let mut faults: std::collections::BTreeMap<String, u64> = std::collections::BTreeMap::new();
    let mut outcomes: std::collections::BTreeMap<String, std::collections::BTreeMap<String, u64>> =
        std::collections::BTreeMap::new();
    let mut starts = 0;
    for &i in &history.nemesis {
        let ev = &history.events[i];
        if let Some(name) = ev.value.get("fault").and_then(Value::as_str) {
            // Two events per fault (start and stop): count the first.
            if nemesis::START_FS.iter().any(|(f, _)| *f == ev.f.as_str()) {
                *faults.entry(name.to_string()).or_default() += 1;
                starts += 1;
            }
            // Topology faults say in their stop event how they ended.
            if let Some(o) = ev.value.get("outcome").and_then(Value::as_str) {
                if nemesis::STOP_FS.iter().any(|(f, _)| *f == ev.f.as_str()) {
                    *outcomes
                        .entry(name.to_string())
                        .or_default()
                        .entry(o.to_string())
                        .or_default() += 1;
                }
            }
        }
    }
    let list: Vec<String> = faults.iter().map(|(k, v)| format!("{k} {v}")).collect();
    let _ = writeln!(
        s,
        "\nnemesis: {starts} faults, {} events{}{}",
        history.nemesis.len(),
        if list.is_empty() {
            String::new()
        } else {
            format!(": {}", list.join(", "))
        },
        skipped
    );
    if !outcomes.is_empty() {
        let list: Vec<String> = outcomes
            .iter()
            .map(|(fault, by)| {
                let by: Vec<String> = by.iter().map(|(o, n)| format!("{n} {o}")).collect();
                format!("{fault} {}", by.join(" "))
            })
            .collect();
        let _ = writeln!(s, "topology outcomes: {}", list.join(", "));
    }
    let _ = writeln!(s);
    s.push_str(&results.summary());
    let _ = writeln!(s, "\nfiles:");
    for (what, p) in [
        ("history", &files.history),
        ("results", &files.results),
        ("nemesis schedule", &files.schedule),
        ("latency plot", &files.latency_svg),
        ("throughput plot", &files.throughput_svg),
        ("this summary", &files.summary),
    ] {
        let _ = writeln!(s, "  {what:<17} {}", p.display());
    }
    let _ = writeln!(s, "  {:<17} {}", "node logs", cfg.out.join("node*.log").display());
    s
}

/// Runs one test and returns its checked results; writes the history,
/// results, nemesis schedule, plots and summary into `cfg.out`.
pub async fn run(cfg: RunConfig) -> anyhow::Result<Results> {
    anyhow::ensure!(cfg.clients >= 1 && cfg.clients <= 256, "clients must be 1..=256");
    anyhow::ensure!(cfg.nodes >= 1 && cfg.nodes <= 9, "nodes must be 1..=9");
    anyhow::ensure!(!cfg.workloads.is_empty(), "no workload");
    anyhow::ensure!(
        cfg.clients >= cfg.workloads.len() as u64,
        "need at least one client per workload"
    );
    anyhow::ensure!(
        cfg.nemesis_interval >= Duration::from_secs(1),
        "nemesis interval must be >= 1 s"
    );
    // A node data dir left by an earlier run would resume that cluster.
    anyhow::ensure!(
        !cfg.out.join("node1").exists(),
        "{} holds an earlier run (node1/): remove it or pick another --out",
        cfg.out.display()
    );
    std::fs::create_dir_all(&cfg.out)?;
    let files = RunFiles::in_dir(&cfg.out);
    eprintln!(
        "ringkv-jepsen: workloads {}, nemesis {}, {} nodes, {} clients, {:?}, seed {} (replay with --seed {})",
        cfg.workloads.iter().map(|w| w.name()).collect::<Vec<_>>().join(","),
        cfg.nemesis,
        cfg.nodes,
        cfg.clients,
        cfg.time_limit,
        cfg.seed,
        cfg.seed
    );
    let own = cfg.nemesis.needs_netns();
    if own {
        anyhow::ensure!(
            std::env::var_os(IN_NETNS_ENV).is_some(),
            "the partition nemesis runs inside a private network namespace: use `ringkv-jepsen run`"
        );
    }
    let mut skipped = String::new();
    let faketime = if cfg.nemesis.has(Kind::Skew) {
        let ft = FakeTime::find();
        if ft.is_none() {
            skipped = format!(
                " (clock skew skipped: libfaketime not found; install Debian's faketime package or set {})",
                crate::cluster::LIBFAKETIME_ENV
            );
            eprintln!("ringkv-jepsen: notice:{skipped}");
        }
        ft
    } else {
        None
    };
    let steps = nemesis::schedule(
        &cfg.nemesis,
        &nemesis::ScheduleParams {
            seed: cfg.seed,
            nodes: cfg.nodes,
            shards: cfg.shards,
            time_limit: cfg.time_limit,
            interval: cfg.nemesis_interval,
        },
    );
    std::fs::write(&files.schedule, serde_json::to_string_pretty(&steps)? + "\n")?;
    eprintln!(
        "ringkv-jepsen: {} scheduled faults ({})",
        steps.len(),
        files.schedule.display()
    );
    let skew_available = faketime.is_some();
    let cluster = Cluster::start(
        &cfg.server,
        &cfg.out,
        cfg.nodes,
        cfg.shards,
        &cfg.server_args,
        own,
        faketime,
    )
    .await?;
    let addrs = cluster.addrs();
    let cluster = Arc::new(tokio::sync::Mutex::new(cluster));
    let rec = Arc::new(Recorder::new());
    let load_start = Instant::now();
    let end = load_start + cfg.time_limit;
    let shared = Arc::new(Shared {
        rec: rec.clone(),
        end,
        next_value: AtomicU64::new(1),
        ops: AtomicU64::new(0),
        register_keys: Mutex::new(BTreeSet::new()),
    });
    let mut tasks = Vec::new();
    for w in 0..cfg.clients {
        let workload = cfg.workloads[(w % cfg.workloads.len() as u64) as usize];
        tasks.push(tokio::spawn(worker(
            w,
            workload,
            cfg.clone(),
            addrs.clone(),
            shared.clone(),
        )));
    }
    let active = nemesis::Active::default();
    let nem = tokio::spawn(nemesis::execute(
        steps,
        cluster.clone(),
        rec.clone(),
        load_start.into(),
        cfg.seed,
        skew_available,
        active.clone(),
    ));
    let bar = cfg
        .progress
        .then(|| tokio::spawn(progress(rec.clone(), load_start, end, active)));
    let mut failure = None;
    for t in tasks {
        if let Err(e) = t.await? {
            failure.get_or_insert(e);
        }
    }
    if let Err(e) = nem.await? {
        failure.get_or_insert(e.into());
    }
    if let Some(b) = bar {
        b.await?;
    }

    // Heal everything (also after a failed nemesis step), wait, and read
    // the final state.
    {
        let mut c = cluster.lock().await;
        if own {
            nemesis::heal_network()?;
        }
        if c.has_faketime() {
            for id in 1..=cfg.nodes {
                c.set_clock_offset(id, 0)?;
            }
        }
        c.heal()?;
        if let Some(e) = failure {
            return Err(e.context("run aborted"));
        }
    }
    // Moves, splits and drains the topology nemesis (or the rebalancer
    // after a join) started finish before the final reads, bounded.
    if cfg.nemesis.kinds.iter().any(|k| k.is_topology()) {
        crate::topology::settle(&cluster, &rec).await;
    }
    // A cluster that does not recover is a finding too: the history is
    // still written and checked (final reads missing), then the run fails.
    let ready = cluster.lock().await.wait_ready().await;
    let final_process = Process::Client(1_000_000);
    // Final reads try the nodes in turn: a node that hosts no replica of
    // the key's shard may forward to a replica that is not the leader.
    let kvs: Vec<KvClient<Channel>> = addrs.iter().map(|a| connect(a)).collect::<Result<_, _>>()?;
    let mut attempt = 0usize;
    let deadline = Instant::now() + FINAL_READS_TIMEOUT;
    let mut finals: Vec<(F, String)> = Vec::new();
    for w in &cfg.workloads {
        match w {
            Workload::Register => {
                let keys = shared.register_keys.lock().unwrap_or_else(|p| p.into_inner()).clone();
                finals.extend(keys.into_iter().map(|k| (F::Read, k)));
            }
            Workload::Set => finals.push((F::ReadAll, "s".into())),
            Workload::Counter => finals.push((F::Read, "c".into())),
        }
    }
    // A final read that keeps failing ends the reads; the history is
    // still written and checked (the checkers report what they cannot
    // decide as unknown), then the run fails.
    let mut final_failure = ready.err().map(|e| e.context("after healing"));
    if final_failure.is_some() {
        finals.clear();
    }
    'finals: for (f, key) in finals {
        loop {
            rec.record(
                EventType::Invoke,
                f.clone(),
                Some(key.clone()),
                Value::Null,
                final_process,
                None,
            );
            let mut kv = kvs[attempt % kvs.len()].clone();
            attempt += 1;
            let mut hint = None;
            let done = if f == F::ReadAll {
                read_all(&mut kv, &mut hint).await
            } else {
                read_hinted(&mut kv, &key, &mut hint).await
            };
            // Next, the leader a refusing node named, else the next node.
            if let Some(i) = hint.and_then(|h| addrs.iter().position(|a| *a == h)) {
                attempt = i;
            }
            match done {
                Done::Ok(v) => {
                    rec.record(EventType::Ok, f.clone(), Some(key.clone()), v, final_process, None);
                    break;
                }
                Done::Fail(e) | Done::Info(e) => {
                    rec.record(
                        EventType::Fail,
                        f.clone(),
                        Some(key.clone()),
                        Value::Null,
                        final_process,
                        Some(e.clone()),
                    );
                    if Instant::now() >= deadline {
                        final_failure = Some(anyhow::anyhow!(
                            "final read of {key} kept failing for {FINAL_READS_TIMEOUT:?}: {e}"
                        ));
                        break 'finals;
                    }
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
    }
    let events = std::mem::take(&mut *rec.events.lock().unwrap_or_else(|p| p.into_inner()));
    History::write_jsonl(&events, std::io::BufWriter::new(std::fs::File::create(&files.history)?))?;
    let history = History::from_events(events)?;
    let results = checker::check(&history, &cfg.workloads, Budget::default(), Some(&files.history));
    results.write(&files.results)?;
    std::fs::write(&files.latency_svg, crate::plot::latency_svg(&history))?;
    std::fs::write(&files.throughput_svg, crate::plot::throughput_svg(&history))?;
    let text = summary(&cfg, &history, &results, &files, &skipped);
    std::fs::write(&files.summary, &text)?;
    eprint!("{text}");
    if results.valid != crate::report::Validity::Valid || final_failure.is_some() {
        // The run folder may not outlive this process (a test's temporary
        // folder, a CI machine): its output carries the evidence.
        let evidence = crate::evidence::digest(&cfg.out, &history, rec.start_unix_ms);
        std::fs::write(&files.evidence, &evidence)?;
        eprint!("\n{evidence}");
    }
    if let Some(e) = final_failure {
        // An anomaly the checkers found is the stronger finding: report it
        // as invalid (exit 1), not as a run that could not finish.
        if results.valid == crate::report::Validity::Invalid {
            eprintln!("error: {e:#} (the history is invalid regardless)");
            return Ok(results);
        }
        return Err(e);
    }
    Ok(results)
}
