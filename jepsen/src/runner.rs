//! `ringkv-jepsen run`: a real cluster, concurrent client processes running
//! a workload through ringkv's gRPC API, a nemesis injecting faults on a
//! seeded schedule, then healing, final reads, the history on disk and the
//! checkers' verdict.
//!
//! A client records `ok` only on definite success, `fail` only when the
//! operation certainly did not take effect, otherwise `info`, after which
//! the worker continues as a new process (Jepsen's rule). Every loop is
//! bounded by the time limit and an operation count.

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
use crate::history::Event;
use crate::history::EventType;
use crate::history::History;
use crate::history::Process;
use crate::history::F;
use crate::report::Results;

/// Deadline of one client operation.
pub const OP_TIMEOUT: Duration = Duration::from_secs(2);
/// Most operations one run issues, whatever its time limit.
pub const OPS_MAX: u64 = 100_000;
/// Registers the register workload spreads over.
const REGISTER_KEYS: u64 = 5;

/// Faults to inject.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Nemesis {
    None,
    /// kill -9 a random node, restart it a few seconds later.
    Kill,
    /// SIGSTOP a random node, SIGCONT it a few seconds later.
    Pause,
    /// Cut a random node off from the others with iptables DROP rules (the
    /// clients still reach every node), heal a few seconds later. Runs in a
    /// private network namespace.
    Partition,
}

/// What to run.
#[derive(Debug, Clone)]
pub struct RunConfig {
    pub server: PathBuf,
    pub out: PathBuf,
    pub workload: Workload,
    pub nemesis: Nemesis,
    pub nodes: u64,
    pub shards: u32,
    pub clients: u64,
    pub time_limit: Duration,
    /// Seconds between the start of two faults.
    pub nemesis_interval: Duration,
    pub seed: u64,
    /// Extra flags for every server (e.g. the test-only broken reads).
    pub server_args: Vec<String>,
}

/// Appends events with increasing indexes and monotonic times.
struct Recorder {
    start: Instant,
    events: Mutex<Vec<Event>>,
}

impl Recorder {
    fn record(
        &self,
        kind: EventType,
        f: F,
        key: Option<String>,
        value: Value,
        process: Process,
        error: Option<String>,
    ) {
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
}

/// How an operation ended.
enum Done {
    Ok(Value),
    Fail(String),
    Info(String),
}

fn error_code(s: &tonic::Status) -> Option<ErrorCode> {
    ringkv_proto::decode_error_detail(s.details()).and_then(|d| ErrorCode::try_from(d.code).ok())
}

/// A write's error: `fail` only when the server certainly did not propose
/// it, otherwise `info`.
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
        Err(s) => Done::Fail(format!("{:?}: {}", s.code(), s.message())),
    }
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
async fn read_all(kv: &mut KvClient<Channel>) -> Done {
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
            Err(s) => return Done::Fail(format!("{:?}: {}", s.code(), s.message())),
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

/// One worker: issues operations as consecutive processes until the end.
#[allow(clippy::too_many_arguments)]
async fn worker(
    w: u64,
    cfg: RunConfig,
    addrs: Vec<String>,
    rec: Arc<Recorder>,
    end: Instant,
    next_value: Arc<AtomicU64>,
    ops: Arc<AtomicU64>,
) -> anyhow::Result<()> {
    let mut rng = StdRng::seed_from_u64(cfg.seed.wrapping_mul(1000).wrapping_add(w));
    let mut clients: Vec<KvClient<Channel>> = addrs.iter().map(|a| connect(a)).collect::<Result<_, _>>()?;
    let mut process = w;
    let mut sequence = 0u64;
    let mut client_id = [0u8; 16];
    rng.fill(&mut client_id);
    while Instant::now() < end && ops.fetch_add(1, Ordering::Relaxed) < OPS_MAX {
        let kv = &mut clients[rng.gen_range(0..addrs.len())];
        let p = Process::Client(process);
        let (f, key, invoke_value, done) = match cfg.workload {
            Workload::Register => {
                let key = format!("r{}", rng.gen_range(0..REGISTER_KEYS));
                match rng.gen_range(0..10) {
                    0..=3 => {
                        rec.record(EventType::Invoke, F::Read, Some(key.clone()), Value::Null, p, None);
                        (F::Read, key.clone(), Value::Null, read(kv, &key).await)
                    }
                    4..=7 => {
                        let v = next_value.fetch_add(1, Ordering::Relaxed) as i64;
                        rec.record(EventType::Invoke, F::Write, Some(key.clone()), Value::from(v), p, None);
                        (F::Write, key.clone(), Value::from(v), write(kv, &key, v, None).await)
                    }
                    _ => {
                        let expected = rng.gen_range(0..next_value.load(Ordering::Relaxed).max(1)) as i64;
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
                rec.record(EventType::Invoke, F::Add, Some("s".into()), Value::from(e), p, None);
                (F::Add, "s".into(), Value::from(e), write(kv, &key, e, None).await)
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
            Done::Ok(v) => rec.record(EventType::Ok, f, Some(key), v, p, None),
            Done::Fail(e) => rec.record(EventType::Fail, f, Some(key), echo, p, Some(e)),
            Done::Info(e) => {
                rec.record(EventType::Info, f, Some(key), echo, p, Some(e));
                // Jepsen's rule: the process may still act; continue as a new one.
                process += cfg.clients;
            }
        }
    }
    Ok(())
}

/// Set (by `ringkv-jepsen run`) in the process it re-executed inside a
/// private network namespace.
pub const IN_NETNS_ENV: &str = "RINGKV_JEPSEN_IN_NETNS";

fn iptables(args: &[&str]) -> anyhow::Result<()> {
    let st = std::process::Command::new("iptables").args(args).status()?;
    anyhow::ensure!(st.success(), "iptables {} failed", args.join(" "));
    Ok(())
}

/// Drops every packet between `node` and the other nodes (both ways).
fn isolate(node: u64, nodes: u64) -> anyhow::Result<()> {
    let me = crate::cluster::node_ip(node);
    for other in (1..=nodes).filter(|o| *o != node) {
        let peer = crate::cluster::node_ip(other);
        iptables(&["-A", "INPUT", "-s", &me, "-d", &peer, "-j", "DROP"])?;
        iptables(&["-A", "INPUT", "-s", &peer, "-d", &me, "-j", "DROP"])?;
    }
    Ok(())
}

/// Removes every partition rule.
fn heal_network() -> anyhow::Result<()> {
    iptables(&["-F", "INPUT"])
}

/// Injects faults on the seeded schedule until `end`.
async fn nemesis(
    cfg: RunConfig,
    cluster: Arc<tokio::sync::Mutex<Cluster>>,
    rec: Arc<Recorder>,
    end: Instant,
) -> anyhow::Result<()> {
    if cfg.nemesis == Nemesis::None {
        return Ok(());
    }
    let mut rng = StdRng::seed_from_u64(cfg.seed ^ 0x6e65_6d65);
    let fault = cfg.nemesis_interval / 2;
    loop {
        tokio::time::sleep(cfg.nemesis_interval - fault).await;
        if Instant::now() + fault >= end {
            return Ok(());
        }
        let node = rng.gen_range(1..=cfg.nodes);
        let (start_f, stop_f) = match cfg.nemesis {
            Nemesis::Kill => ("kill", "start"),
            Nemesis::Pause => ("pause", "resume"),
            Nemesis::Partition => ("start-partition", "stop-partition"),
            Nemesis::None => return Ok(()),
        };
        rec.record(
            EventType::Info,
            F::from(start_f),
            None,
            json!(format!("n{node}")),
            Process::Nemesis,
            None,
        );
        {
            let mut c = cluster.lock().await;
            match cfg.nemesis {
                Nemesis::Kill => c.kill(node),
                Nemesis::Partition => isolate(node, cfg.nodes)?,
                _ => c.pause(node)?,
            }
        }
        tokio::time::sleep(fault).await;
        {
            let mut c = cluster.lock().await;
            match cfg.nemesis {
                Nemesis::Kill => c.restart(node)?,
                Nemesis::Partition => heal_network()?,
                _ => c.resume(node)?,
            }
        }
        rec.record(
            EventType::Info,
            F::from(stop_f),
            None,
            json!(format!("n{node}")),
            Process::Nemesis,
            None,
        );
    }
}

/// Runs one test and returns its checked results; writes `history.jsonl`
/// and `results.json` into `cfg.out`.
pub async fn run(cfg: RunConfig) -> anyhow::Result<Results> {
    anyhow::ensure!(cfg.clients >= 1 && cfg.clients <= 256, "clients must be 1..=256");
    anyhow::ensure!(cfg.nodes >= 1 && cfg.nodes <= 9, "nodes must be 1..=9");
    anyhow::ensure!(
        cfg.nemesis_interval >= Duration::from_secs(1),
        "nemesis interval must be >= 1 s"
    );
    std::fs::create_dir_all(&cfg.out)?;
    eprintln!(
        "ringkv-jepsen: {} workload, {:?} nemesis, {} nodes, {} clients, {:?}, seed {} (replay with --seed {})",
        cfg.workload.name(),
        cfg.nemesis,
        cfg.nodes,
        cfg.clients,
        cfg.time_limit,
        cfg.seed,
        cfg.seed
    );
    let own = cfg.nemesis == Nemesis::Partition;
    if own {
        anyhow::ensure!(
            std::env::var_os(IN_NETNS_ENV).is_some(),
            "the partition nemesis runs inside a private network namespace: use `ringkv-jepsen run`"
        );
    }
    let cluster = Cluster::start(&cfg.server, &cfg.out, cfg.nodes, cfg.shards, &cfg.server_args, own).await?;
    let addrs = cluster.addrs();
    let cluster = Arc::new(tokio::sync::Mutex::new(cluster));
    let rec = Arc::new(Recorder {
        start: Instant::now(),
        events: Mutex::new(Vec::new()),
    });
    let end = Instant::now() + cfg.time_limit;
    let next_value = Arc::new(AtomicU64::new(1));
    let ops = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for w in 0..cfg.clients {
        tasks.push(tokio::spawn(worker(
            w,
            cfg.clone(),
            addrs.clone(),
            rec.clone(),
            end,
            next_value.clone(),
            ops.clone(),
        )));
    }
    let nem = tokio::spawn(nemesis(cfg.clone(), cluster.clone(), rec.clone(), end));
    for t in tasks {
        t.await??;
    }
    nem.await??;

    // Heal, wait, and read the final state.
    {
        let mut c = cluster.lock().await;
        if own {
            heal_network()?;
        }
        c.heal()?;
        c.wait_ready().await?;
    }
    let final_process = Process::Client(1_000_000);
    let mut kv = connect(&addrs[0])?;
    let deadline = Instant::now() + Duration::from_secs(60);
    let finals: Vec<(F, String)> = match cfg.workload {
        Workload::Register => (0..REGISTER_KEYS).map(|k| (F::Read, format!("r{k}"))).collect(),
        Workload::Set => vec![(F::ReadAll, "s".into())],
        Workload::Counter => vec![(F::Read, "c".into())],
    };
    for (f, key) in finals {
        loop {
            rec.record(
                EventType::Invoke,
                f.clone(),
                Some(key.clone()),
                Value::Null,
                final_process,
                None,
            );
            let done = if f == F::ReadAll {
                read_all(&mut kv).await
            } else {
                read(&mut kv, &key).await
            };
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
                    anyhow::ensure!(Instant::now() < deadline, "final read of {key} kept failing: {e}");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
    }
    let events = std::mem::take(&mut *rec.events.lock().unwrap_or_else(|p| p.into_inner()));
    let path = cfg.out.join("history.jsonl");
    History::write_jsonl(&events, std::io::BufWriter::new(std::fs::File::create(&path)?))?;
    let history = History::from_events(events)?;
    let results = checker::check(&history, &[cfg.workload], Budget::default(), Some(Path::new(&path)));
    results.write(&cfg.out.join("results.json"))?;
    eprint!("{}", results.summary());
    Ok(results)
}
