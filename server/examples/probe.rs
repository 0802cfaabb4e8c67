//! Measurement tool for a running cluster (the playground by default).
//! Not a test: it reports figures, it asserts nothing.
//!
//! ```text
//! cargo run --release --example probe -- load --writers 64 --seconds 10
//! cargo run --release --example probe -- failover
//! cargo run --release --example probe -- memory
//! ```
//! `load` runs N concurrent writers (each one write in flight) spread over
//! the nodes and reports writes/s and, from every node's NodeStats, client
//! writes and log writes per WAL sync. `failover` kill -9s the local
//! `ringkv-server` process leading the most shards and measures how long
//! until a write to every shard succeeds again. `memory` prints each node's
//! resident memory.

use std::time::Duration;
use std::time::Instant;

use anyhow::Context;
use clap::Parser;
use clap::Subcommand;
use ringkv_proto::v1::admin_client::AdminClient;
use ringkv_proto::v1::kv_client::KvClient;
use ringkv_proto::v1::*;
use tonic::transport::Channel;

/// Most writers `load` accepts.
const WRITERS_MAX: usize = 4096;
/// Longest `load` run.
const LOAD_SECONDS_MAX: u64 = 600;
/// Longest `failover` waits for every shard.
const FAILOVER_WAIT_MAX: Duration = Duration::from_secs(60);

#[derive(Parser)]
struct Args {
    /// Node addresses (comma separated).
    #[arg(long, default_value = "127.0.0.1:50051,127.0.0.1:50052,127.0.0.1:50053")]
    nodes: String,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    Load {
        #[arg(long, default_value_t = 64)]
        writers: usize,
        #[arg(long, default_value_t = 10)]
        seconds: u64,
        #[arg(long, default_value_t = 100)]
        value_bytes: usize,
    },
    Failover,
    Memory,
}

async fn connect(addr: &str) -> anyhow::Result<Channel> {
    tonic::transport::Endpoint::from_shared(format!("http://{addr}"))?
        .connect_timeout(Duration::from_secs(2))
        .timeout(Duration::from_secs(10))
        .connect()
        .await
        .with_context(|| format!("connect {addr}"))
}

async fn stats(addrs: &[String]) -> Vec<Option<NodeStatsResponse>> {
    let mut out = Vec::new();
    for a in addrs {
        let s = match connect(a).await {
            Ok(ch) => AdminClient::new(ch)
                .node_stats(NodeStatsRequest {})
                .await
                .ok()
                .map(|r| r.into_inner()),
            Err(_) => None,
        };
        out.push(s);
    }
    out
}

async fn load(addrs: &[String], writers: usize, seconds: u64, value_bytes: usize) -> anyhow::Result<()> {
    anyhow::ensure!(
        writers > 0 && writers <= WRITERS_MAX,
        "writers must be 1..={WRITERS_MAX}"
    );
    anyhow::ensure!(
        seconds > 0 && seconds <= LOAD_SECONDS_MAX,
        "seconds must be 1..={LOAD_SECONDS_MAX}"
    );
    let mut channels = Vec::new();
    for a in addrs {
        channels.push(connect(a).await?);
    }
    let before = stats(addrs).await;
    let start = Instant::now();
    let stop = start + Duration::from_secs(seconds);
    let mut tasks = Vec::new();
    for w in 0..writers {
        let mut kv = KvClient::new(channels[w % channels.len()].clone());
        let value = vec![b'v'; value_bytes];
        tasks.push(tokio::spawn(async move {
            let (mut ok, mut failed) = (0u64, 0u64);
            let mut i = 0u64;
            while Instant::now() < stop {
                let req = PutRequest {
                    header: None,
                    key: format!("probe-{w}-{i}").into_bytes(),
                    value: value.clone(),
                };
                i += 1;
                match kv.put(req).await {
                    Ok(_) => ok += 1,
                    Err(_) => failed += 1,
                }
            }
            (ok, failed)
        }));
    }
    let (mut ok, mut failed) = (0, 0);
    for t in tasks {
        let (o, f) = t.await?;
        ok += o;
        failed += f;
    }
    let secs = start.elapsed().as_secs_f64();
    let after = stats(addrs).await;
    println!("writers={writers} value_bytes={value_bytes} seconds={secs:.1}");
    println!(
        "acknowledged writes={ok} failed={failed} writes/s={:.0}",
        ok as f64 / secs
    );
    for (i, (b, a)) in before.iter().zip(after.iter()).enumerate() {
        if let (Some(b), Some(a)) = (b, a) {
            let syncs = a.wal_syncs - b.wal_syncs;
            let reqs = a.log_write_requests - b.log_write_requests;
            let led = a.client_writes - b.client_writes;
            let per = |n: u64| if syncs == 0 { 0.0 } else { n as f64 / syncs as f64 };
            println!(
                "node {} ({}): wal_syncs={syncs} log_write_requests={reqs} ({:.2}/sync) leader_writes={led} syncs/s={:.0}",
                a.node_id,
                addrs[i],
                per(reqs),
                syncs as f64 / secs
            );
        }
    }
    let total_syncs: u64 = before
        .iter()
        .zip(after.iter())
        .filter_map(|(b, a)| Some(a.as_ref()?.wal_syncs - b.as_ref()?.wal_syncs))
        .sum();
    let nodes = addrs.len() as f64;
    if total_syncs > 0 {
        // Every write is synced on every replica: compare each node's syncs
        // with the writes the whole cluster acknowledged.
        println!(
            "writes per WAL sync (acknowledged writes / average syncs per node) = {:.2}",
            ok as f64 / (total_syncs as f64 / nodes)
        );
    }
    Ok(())
}

fn pid_of_node(node_id: u64) -> Option<u32> {
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(cmd) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let args: Vec<String> = cmd
            .split(|b| *b == 0)
            .map(|s| String::from_utf8_lossy(s).into_owned())
            .collect();
        let is_server = args.first().is_some_and(|a| a.ends_with("ringkv-server"));
        let has_id = args
            .windows(2)
            .any(|w| w[0] == "--node-id" && w[1] == node_id.to_string());
        if is_server && has_id {
            return Some(pid);
        }
    }
    None
}

async fn failover(addrs: &[String]) -> anyhow::Result<()> {
    let st = AdminClient::new(connect(&addrs[0]).await?)
        .cluster_status(ClusterStatusRequest {})
        .await?
        .into_inner();
    let mut counts = std::collections::BTreeMap::<u64, usize>::new();
    for s in &st.shards {
        *counts.entry(s.leader_id).or_default() += 1;
    }
    let (&victim, &led) = counts.iter().max_by_key(|(_, c)| **c).context("no leaders")?;
    let pid = pid_of_node(victim).with_context(|| format!("no local ringkv-server process for node {victim}"))?;
    let shards = st.shards.len() as u64;
    let survivors: Vec<String> = st
        .nodes
        .iter()
        .filter(|n| n.id != victim)
        .map(|n| n.addr.clone())
        .collect();
    println!("killing node {victim} (pid {pid}), leader of {led} of {shards} shards");
    let status = std::process::Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status()?;
    anyhow::ensure!(status.success(), "kill -9 {pid} failed");
    let killed = Instant::now();
    let mut kvs = Vec::new();
    for a in &survivors {
        kvs.push(KvClient::new(connect(a).await?));
    }
    // One probe key per shard, written until it succeeds.
    let mut pending: Vec<(u64, Vec<u8>)> = st.shards.iter().map(|s| (s.id, key_for_shard(s))).collect();
    let mut worst = Duration::ZERO;
    let mut i = 0usize;
    while !pending.is_empty() {
        anyhow::ensure!(
            killed.elapsed() < FAILOVER_WAIT_MAX,
            "shards still unwritable: {pending:?}"
        );
        let mut still = Vec::new();
        for (s, key) in pending {
            i += 1;
            let kv = &mut kvs[i % survivors.len()];
            let mut req = tonic::Request::new(PutRequest {
                header: None,
                key: key.clone(),
                value: b"failover".to_vec(),
            });
            req.set_timeout(Duration::from_millis(500));
            match kv.put(req).await {
                Ok(_) => {
                    let t = killed.elapsed();
                    println!("shard {s:>3} writable after {:>5} ms", t.as_millis());
                    worst = worst.max(t);
                }
                Err(_) => still.push((s, key)),
            }
        }
        pending = still;
        if !pending.is_empty() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    println!(
        "worst case: every shard writable {} ms after kill -9",
        worst.as_millis()
    );
    Ok(())
}

/// A key whose token falls in one of `shard`'s ranges.
fn key_for_shard(shard: &ShardStatus) -> Vec<u8> {
    let owns = |t: u64| shard.ranges.iter().any(|r| t >= r.start && (r.end_is_max || t < r.end));
    (0..10_000_000u64)
        .map(|i| format!("failover-{i}").into_bytes())
        .find(|k| owns(ringkv_server::ring::token_of(k)))
        .unwrap_or_default()
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let addrs: Vec<String> = args.nodes.split(',').map(|s| s.trim().to_string()).collect();
    match args.cmd {
        Cmd::Load {
            writers,
            seconds,
            value_bytes,
        } => load(&addrs, writers, seconds, value_bytes).await,
        Cmd::Failover => failover(&addrs).await,
        Cmd::Memory => {
            for (a, s) in addrs.iter().zip(stats(&addrs).await) {
                match s {
                    Some(s) => println!(
                        "node {} ({a}): resident {:.1} MiB, {} shards hosted, {} leading",
                        s.node_id,
                        s.resident_memory_bytes as f64 / (1024.0 * 1024.0),
                        s.shards_hosted,
                        s.shards_leading
                    ),
                    None => println!("{a}: unreachable"),
                }
            }
            Ok(())
        }
    }
}
