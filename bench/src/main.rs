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
use ringkv_bench::workload::Distribution;
use ringkv_bench::workload::Workload;

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
        #[arg(long, value_enum, default_value = "a")]
        workload: Workload,
        #[arg(long, value_enum, default_value = "uniform")]
        distribution: Distribution,
        #[arg(long, default_value_t = 10_000)]
        records: u64,
        #[arg(long, default_value_t = 100)]
        value_bytes: usize,
        #[arg(long, default_value_t = 64)]
        concurrency: usize,
        #[arg(long, default_value_t = 20)]
        seconds: u64,
        #[arg(long, default_value_t = 3)]
        warmup_seconds: u64,
        /// Open loop at this many ops/s (default: closed loop).
        #[arg(long)]
        rate: Option<f64>,
        #[arg(long, default_value_t = 1)]
        seed: u64,
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
            workload,
            distribution,
            records,
            value_bytes,
            concurrency,
            seconds,
            warmup_seconds,
            rate,
            seed,
            load,
            out,
        } => {
            let cfg = RunConfig {
                workload,
                distribution,
                records,
                value_bytes,
                concurrency,
                seconds,
                warmup_seconds,
                rate,
                seed,
            };
            cfg.validate()?;
            let endpoints: Vec<String> = endpoints.split(',').map(|s| s.trim().to_string()).collect();
            let b = Backend::connect(backend, &endpoints, &data_dir).await?;
            if load {
                eprintln!("loading {records} records into {}", backend.name());
                runner::load(&b, records, value_bytes, concurrency).await?;
            }
            eprintln!(
                "running {:?} on {} with {concurrency} clients for {seconds}s (+{warmup_seconds}s warm-up)",
                workload,
                backend.name()
            );
            let r = runner::run(&b, backend.name(), cfg).await?;
            println!(
                "{} {:?}: {:.0} ops/s, p50 {:.2} ms, p99 {:.2} ms, p99.9 {:.2} ms, max {:.2} ms, errors {}",
                r.backend,
                workload,
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
