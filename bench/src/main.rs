//! `ringkv-bench`: run a workload against one system, or build the
//! comparison report from saved results. `scripts/bench-compare.sh`
//! (`make bench-compare`) starts the clusters and calls both.

use std::io::Write as _;
use std::path::PathBuf;

use clap::Parser;
use clap::Subcommand;
use ringkv_bench::backend::Backend;
use ringkv_bench::backend::Kind;
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
    },
    /// Build results.json, results.md and throughput.svg from result lines.
    Report {
        #[arg(long)]
        results: PathBuf,
        #[arg(long)]
        out_dir: PathBuf,
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
        } => {
            cfg.validate()?;
            let endpoints: Vec<String> = endpoints.split(',').map(|s| s.trim().to_string()).collect();
            let b = Backend::connect(backend, &endpoints, &data_dir).await?;
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
            let r = runner::run(&b, backend.name(), cfg).await?;
            println!(
                "{} {:?}: {:.0} ops/s, p50 {:.2} ms, p99 {:.2} ms, p99.9 {:.2} ms, max {:.2} ms, errors {}",
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
        Cmd::Report { results, out_dir } => {
            let rs = report::read_results(&results)?;
            report::write_report(&rs, &out_dir)?;
            print!("{}", report::markdown(&rs));
            Ok(())
        }
    }
}
