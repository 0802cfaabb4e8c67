//! `ringkv-bench`: run a workload against one system, build the
//! comparison report from saved results, or measure a shard move.
//! `scripts/bench-compare.sh` (`make bench-compare`) starts the clusters
//! and calls the first two; `scripts/bench-move.sh` (`make bench-move`)
//! starts a 4-node cluster and calls `move-shard`; `scripts/bench-failover.sh`
//! (`make bench-failover`) starts a 3-node cluster and calls `failover`.

use std::io::Write as _;
use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use clap::Subcommand;
use ringkv_bench::backend::Backend;
use ringkv_bench::backend::Kind;
use ringkv_bench::failover;
use ringkv_bench::failover::FailoverConfig;
use ringkv_bench::fsync;
use ringkv_bench::move_shard;
use ringkv_bench::move_shard::MoveConfig;
use ringkv_bench::report;
use ringkv_bench::runner;
use ringkv_bench::runner::RunConfig;

#[derive(Parser)]
#[command(
    name = "ringkv-bench",
    version,
    about = "YCSB-style benchmarks: ringkv vs etcd vs local RocksDB"
)]
struct Args {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run one workload against one system; appends a JSON line to --out.
    Run {
        #[arg(long, value_enum)]
        backend: Kind,
        /// Node addresses, comma separated (host:port).
        #[arg(long, default_value = "127.0.0.1:50051,127.0.0.1:50052,127.0.0.1:50053")]
        endpoints: String,
        /// Database directory of the rocksdb-local backend.
        #[arg(long, default_value = "./data/bench-local")]
        data_dir: PathBuf,
        #[command(flatten)]
        cfg: RunConfig,
        /// Insert the records first.
        #[arg(long)]
        load: bool,
        /// JSON-lines file the result is appended to.
        #[arg(long)]
        out: Option<PathBuf>,
        /// ringkv backend: the client's `put_batch_keys_max` (1 = no put
        /// coalescing; default: the client's default).
        #[arg(long)]
        put_batch_keys_max: Option<usize>,
        /// ringkv backend: the client's `put_batches_in_flight_per_shard`.
        #[arg(long)]
        put_batches_in_flight: Option<usize>,
        /// ringkv backend: independent smart clients sharing the
        /// concurrency (task t uses client t mod N), as N application
        /// processes would; each has its own session and coalescing.
        #[arg(long, default_value_t = 1)]
        client_instances: usize,
        /// ringkv backend: the client's `get_batch_keys_max` (1 = no get
        /// coalescing).
        #[arg(long)]
        get_batch_keys_max: Option<usize>,
        /// ringkv backend: the client's `get_batches_in_flight_per_shard`.
        #[arg(long)]
        get_batches_in_flight: Option<usize>,
        /// The system's metrics pages (`host:port` serving `/metrics`:
        /// ringkv's status ports, etcd's client URLs), comma separated.
        /// When given, the result records the mean WAL fsync latency of the
        /// measured window, summed over these nodes.
        #[arg(long)]
        metrics: Option<String>,
    },
    /// Move a replica of a loaded shard to another node under foreground
    /// load; report the move rate and the latency before and during it.
    MoveShard {
        /// Node addresses, comma separated (host:port).
        #[arg(long, default_value = "127.0.0.1:50051,127.0.0.1:50052,127.0.0.1:50053")]
        endpoints: String,
        /// Bearer token of the Admin API, when the cluster requires one.
        #[arg(long, env = "RINGKV_ADMIN_TOKEN", hide_env_values = true)]
        admin_token: Option<String>,
        /// File holding the Admin token (instead of --admin-token).
        #[arg(long, conflicts_with = "admin_token")]
        admin_token_file: Option<PathBuf>,
        #[command(flatten)]
        cfg: MoveConfig,
        /// Folder of move.json and move.md (default:
        /// bench/results/move-<UTC timestamp>).
        #[arg(long)]
        out_dir: Option<PathBuf>,
    },
    /// Kill the node leading the most shards under an open-loop write load;
    /// report the longest write stall and where its time went.
    Failover {
        /// Node addresses, comma separated (host:port).
        #[arg(long, default_value = "127.0.0.1:50051,127.0.0.1:50052,127.0.0.1:50053")]
        endpoints: String,
        /// Bearer token of the Admin API, when the cluster requires one.
        #[arg(long, env = "RINGKV_ADMIN_TOKEN", hide_env_values = true)]
        admin_token: Option<String>,
        /// File holding the Admin token (instead of --admin-token).
        #[arg(long, conflicts_with = "admin_token")]
        admin_token_file: Option<PathBuf>,
        #[command(flatten)]
        cfg: FailoverConfig,
        /// Folder of failover.json and failover.md (default:
        /// bench/results/failover-<UTC timestamp>).
        #[arg(long)]
        out_dir: Option<PathBuf>,
    },
    /// Build results.json, results.md and throughput.svg from result lines.
    Report {
        #[arg(long)]
        results: PathBuf,
        #[arg(long)]
        out_dir: PathBuf,
        /// Markdown put at the top of results.md (what was run, on what).
        #[arg(long)]
        notes: Option<PathBuf>,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Args::parse().cmd {
        Cmd::Run {
            backend,
            endpoints,
            data_dir,
            cfg,
            load,
            out,
            put_batch_keys_max,
            put_batches_in_flight,
            client_instances,
            get_batch_keys_max,
            get_batches_in_flight,
            metrics,
        } => {
            cfg.validate()?;
            let probe = match metrics {
                Some(addrs) => {
                    let metric = fsync::metric_of(backend.name())
                        .with_context(|| format!("{} exports no fsync metrics", backend.name()))?;
                    Some(fsync::Probe::new(split_list(&addrs), metric)?)
                }
                None => None,
            };
            let endpoints = split_list(&endpoints);
            let mut client_cfg = ringkv_client::Config::default();
            if let Some(n) = put_batch_keys_max {
                client_cfg.put_batch_keys_max = n;
            }
            if let Some(n) = put_batches_in_flight {
                client_cfg.put_batches_in_flight_per_shard = n;
            }
            if let Some(n) = get_batch_keys_max {
                client_cfg.get_batch_keys_max = n;
            }
            if let Some(n) = get_batches_in_flight {
                client_cfg.get_batches_in_flight_per_shard = n;
            }
            let b = Backend::connect_instances(backend, &endpoints, &data_dir, client_cfg, client_instances).await?;
            if load {
                eprintln!("loading {} records into {}", cfg.records, backend.name());
                runner::load(&b, cfg.records, cfg.value_bytes, cfg.concurrency).await?;
            }
            eprintln!(
                "running {:?} on {} with {} clients for {}s (+{}s warm-up)",
                cfg.workload,
                backend.name(),
                cfg.concurrency,
                cfg.seconds,
                cfg.warmup_seconds
            );
            let r = runner::run(&b, backend.name(), cfg, probe).await?;
            let fsync = r.fsync.as_ref().map_or(String::new(), |f| {
                format!(", fsync {:.2} ms ({} syncs)", f.mean_ms, f.syncs)
            });
            println!(
                "{} {:?}: {:.0} ops/s, p50 {:.2} ms, p99 {:.2} ms, p99.9 {:.2} ms, max {:.2} ms, errors {}{fsync}",
                r.backend,
                r.config.workload,
                r.ops_per_second,
                r.latency.p50_us as f64 / 1e3,
                r.latency.p99_us as f64 / 1e3,
                r.latency.p999_us as f64 / 1e3,
                r.latency.max_us as f64 / 1e3,
                r.errors
            );
            if let Some(path) = out {
                let mut f = std::fs::OpenOptions::new().create(true).append(true).open(&path)?;
                writeln!(f, "{}", serde_json::to_string(&r)?)?;
            }
            Ok(())
        }
        Cmd::MoveShard {
            endpoints,
            admin_token,
            admin_token_file,
            cfg,
            out_dir,
        } => {
            let endpoints = split_list(&endpoints);
            let token = admin_token_of(admin_token, admin_token_file)?;
            let out_dir = out_dir.unwrap_or_else(|| move_shard::default_out_dir(std::time::SystemTime::now()));
            let r = move_shard::run(&endpoints, token, cfg).await?;
            move_shard::write_report(&r, &out_dir)?;
            print!("{}", move_shard::markdown(&r));
            let verdict = |ok: bool| if ok { "PASS" } else { "FAIL" };
            println!(
                "\nmove rate {:.1} MB/s (target >= {:.0}): {}",
                r.mb_per_second,
                r.config.target_mb_per_second,
                verdict(r.rate_ok)
            );
            println!(
                "foreground p99 {:.2} ms before, {:.2} ms during: {:.2}x (target <= {:.1}x): {}",
                r.before.all.p99_us as f64 / 1e3,
                r.during.all.p99_us as f64 / 1e3,
                r.p99_ratio,
                r.config.target_p99_ratio,
                verdict(r.latency_ok)
            );
            eprintln!("report written to {}", out_dir.display());
            Ok(())
        }
        Cmd::Failover {
            endpoints,
            admin_token,
            admin_token_file,
            cfg,
            out_dir,
        } => {
            let endpoints = split_list(&endpoints);
            let token = admin_token_of(admin_token, admin_token_file)?;
            let out_dir = out_dir.unwrap_or_else(|| failover::default_out_dir(std::time::SystemTime::now()));
            let r = failover::run(&endpoints, token, cfg).await?;
            failover::write_report(&r, &out_dir)?;
            print!("{}", failover::markdown(&r));
            let stall = r
                .analysis
                .longest_stall_ms
                .map_or("none (a shard never recovered)".to_string(), |v| format!("{v:.0} ms"));
            println!(
                "\nlongest write stall {stall} (target < {} ms): {}",
                r.target_stall_ms,
                if r.stall_ok { "PASS" } else { "FAIL" }
            );
            eprintln!("report written to {}", out_dir.display());
            Ok(())
        }
        Cmd::Report {
            results,
            out_dir,
            notes,
        } => {
            let rs = report::read_results(&results)?;
            let notes = match notes {
                Some(p) => Some(std::fs::read_to_string(&p).with_context(|| format!("read {}", p.display()))?),
                None => None,
            };
            report::write_report(&rs, &out_dir, notes.as_deref())?;
            print!("{}", report::markdown(&rs));
            Ok(())
        }
    }
}

/// A comma-separated list, each item trimmed.
fn split_list(s: &str) -> Vec<String> {
    s.split(',').map(|s| s.trim().to_string()).collect()
}

/// The Admin token: from its file when one is given, else the flag's.
fn admin_token_of(token: Option<String>, file: Option<PathBuf>) -> anyhow::Result<Option<String>> {
    match file {
        Some(f) => Ok(Some(
            std::fs::read_to_string(&f)
                .with_context(|| format!("read {}", f.display()))?
                .trim()
                .to_string(),
        )),
        None => Ok(token),
    }
}
