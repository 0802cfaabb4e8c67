//! The `ringkv-jepsen` command line.
//!
//! `ringkv-jepsen check FILE` re-checks a saved history, prints a summary and writes
//! `results.json` next to the history (or to `--out`). Exit status: 0 valid, 1 invalid,
//! 2 unknown, 3 usage, parse or I/O error.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

use ringkv_jepsen::checker::{self, Budget, Workload};
use ringkv_jepsen::history::History;
use ringkv_jepsen::nemesis::NemesisSpec;

/// Exit status for usage, parse and I/O errors.
const EXIT_ERROR: u8 = 3;

#[derive(Parser)]
#[command(name = "ringkv-jepsen", version, about = "Jepsen-style fault testing for ringkv")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Check a saved history (JSON lines) and write results.json.
    ///
    /// Exit status: 0 valid, 1 invalid, 2 unknown, 3 usage/parse error.
    Check(CheckArgs),
    /// Run a workload against a fresh local cluster under a nemesis, then
    /// check it. Writes history.jsonl, results.json and node logs to --out.
    ///
    /// Exit status: 0 valid, 1 invalid, 2 unknown, 3 usage or setup error.
    Run(RunArgs),
}

#[derive(Args)]
struct RunArgs {
    /// register, set, counter, a comma list, or all: several workloads run
    /// concurrently on disjoint keys of one cluster.
    #[arg(long, default_value = "register", value_parser = parse_workloads)]
    workload: WorkloadList,
    /// none, kill, pause, partition, skew, move, split, transfer,
    /// membership (node join and decommission), topology (the last four), a
    /// comma list, or all (alias combined). The fault schedule is generated
    /// from --seed.
    #[arg(long, default_value = "kill")]
    nemesis: NemesisSpec,
    /// Seconds of load and faults.
    #[arg(long, default_value_t = 60)]
    time_limit: u64,
    /// Mean seconds between the starts of two faults.
    #[arg(long, default_value_t = 8)]
    nemesis_interval: u64,
    /// Nodes in the cluster (5 enables the bridge and majorities-ring partitions).
    #[arg(long, default_value_t = 3)]
    nodes: u64,
    #[arg(long, default_value_t = 4)]
    shards: u32,
    /// Client workers (split round-robin over the workloads).
    #[arg(long, default_value_t = 6)]
    clients: u64,
    /// Seed of the clients and of the fault schedule (default: random,
    /// printed so the run can be replayed).
    #[arg(long)]
    seed: Option<u64>,
    /// No progress line.
    #[arg(long)]
    quiet: bool,
    /// Folder for the history, results and node logs.
    #[arg(long, default_value = "./data/jepsen")]
    out: PathBuf,
    /// The ringkv-server binary (default: next to this binary).
    #[arg(long)]
    server: Option<PathBuf>,
    /// Extra flags for every server, e.g. --server-arg=--unsafe-reads-without-read-index.
    #[arg(long = "server-arg", allow_hyphen_values = true)]
    server_args: Vec<String>,
}

#[derive(Clone)]
struct WorkloadList(Vec<Workload>);

fn parse_workloads(s: &str) -> Result<WorkloadList, String> {
    if s == "all" {
        return Ok(WorkloadList(Workload::ALL.to_vec()));
    }
    let mut out: Vec<Workload> = Vec::new();
    for part in s.split(',').map(str::trim) {
        let w: Workload = part.parse()?;
        if !out.contains(&w) {
            out.push(w);
        }
    }
    Ok(WorkloadList(out))
}

#[derive(Clone, Copy, ValueEnum)]
enum WorkloadArg {
    Register,
    Set,
    Counter,
    /// Every workload that has operations in the history.
    All,
}

#[derive(Args)]
struct CheckArgs {
    /// The history file, one JSON event per line.
    file: PathBuf,
    /// Which checkers to run.
    #[arg(long, value_enum, default_value_t = WorkloadArg::All)]
    workload: WorkloadArg,
    /// Linearizability search: maximum memoised states per key (0 = no limit); a key that
    /// needs more is reported unknown.
    #[arg(long, default_value_t = Budget::DEFAULT_MAX_STATES)]
    budget_states: u64,
    /// Linearizability search: maximum milliseconds per key (0 = no limit).
    #[arg(long, default_value_t = Budget::DEFAULT_MAX_TIME.as_millis() as u64)]
    budget_ms: u64,
    /// Linearizability search: maximum MiB of memoised states per key (0 = no limit).
    #[arg(long, default_value_t = (Budget::DEFAULT_MAX_MEMORY >> 20) as u64)]
    budget_mb: u64,
    /// Where to write the results (default: results.json next to FILE).
    #[arg(long)]
    out: Option<PathBuf>,
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { EXIT_ERROR } else { 0 });
        }
    };
    match cli.command {
        Command::Check(args) => check(&args),
        Command::Run(args) => run(args),
    }
}

/// Re-runs this command inside a private network namespace (`unshare -n`),
/// where the partition nemesis may change firewall rules; the namespace and
/// its rules vanish with the process.
fn rerun_in_netns(seed: u64) -> ExitCode {
    let Ok(exe) = std::env::current_exe() else {
        eprintln!("error: cannot find this executable");
        return ExitCode::from(EXIT_ERROR);
    };
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    if !args.iter().any(|a| a == "--seed" || a.starts_with("--seed=")) {
        args.push(format!("--seed={seed}"));
    }
    let script = "ip link set lo up && exec \"$0\" \"$@\"";
    let status = std::process::Command::new("unshare")
        .args(["-n", "--", "sh", "-c", script])
        .arg(&exe)
        .args(&args)
        .env(ringkv_jepsen::runner::IN_NETNS_ENV, "1")
        .status();
    match status {
        Ok(s) => ExitCode::from(s.code().map_or(EXIT_ERROR, |c| c as u8)),
        Err(e) => {
            eprintln!("error: unshare -n (needs root and util-linux): {e}");
            ExitCode::from(EXIT_ERROR)
        }
    }
}

fn run(args: RunArgs) -> ExitCode {
    // Pick the seed before a re-execution in a namespace, so both halves
    // agree and it is printed once.
    let Some(seed) = args.seed else {
        let seed = rand::random::<u32>() as u64;
        return run(RunArgs {
            seed: Some(seed),
            ..args
        });
    };
    if args.nemesis.needs_netns() && std::env::var_os(ringkv_jepsen::runner::IN_NETNS_ENV).is_none() {
        return rerun_in_netns(seed);
    }
    let server = args.server.clone().unwrap_or_else(|| {
        std::env::current_exe()
            .ok()
            .and_then(|e| e.parent().map(|d| d.join("ringkv-server")))
            .unwrap_or_else(|| PathBuf::from("ringkv-server"))
    });
    let cfg = ringkv_jepsen::runner::RunConfig {
        server,
        out: args.out,
        workloads: args.workload.0,
        nemesis: args.nemesis,
        nodes: args.nodes,
        shards: args.shards,
        clients: args.clients,
        time_limit: Duration::from_secs(args.time_limit),
        nemesis_interval: Duration::from_secs(args.nemesis_interval),
        seed,
        server_args: args.server_args,
        progress: !args.quiet,
    };
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: tokio runtime: {e}");
            return ExitCode::from(EXIT_ERROR);
        }
    };
    match rt.block_on(ringkv_jepsen::runner::run(cfg)) {
        Ok(results) => ExitCode::from(results.valid.exit_code()),
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(EXIT_ERROR)
        }
    }
}

fn check(args: &CheckArgs) -> ExitCode {
    let history = match History::load(&args.file) {
        Ok(h) => h,
        Err(e) => {
            eprintln!("error: {}: {e}", args.file.display());
            return ExitCode::from(EXIT_ERROR);
        }
    };
    let workloads: Vec<Workload> = match args.workload {
        WorkloadArg::Register => vec![Workload::Register],
        WorkloadArg::Set => vec![Workload::Set],
        WorkloadArg::Counter => vec![Workload::Counter],
        WorkloadArg::All => {
            let present: Vec<Workload> = Workload::ALL
                .into_iter()
                .filter(|&w| !checker::keys_for(&history, w).is_empty())
                .collect();
            if present.is_empty() {
                Workload::ALL.to_vec()
            } else {
                present
            }
        }
    };
    let budget = Budget {
        max_states: (args.budget_states > 0).then_some(args.budget_states),
        max_time: (args.budget_ms > 0).then(|| Duration::from_millis(args.budget_ms)),
        max_memory: (args.budget_mb > 0).then(|| usize::try_from(args.budget_mb << 20).unwrap_or(usize::MAX)),
    };
    let results = checker::check(&history, &workloads, budget, Some(&args.file));
    // Ignore stdout errors (e.g. a closed pipe): the verdict is in the exit status and the file.
    let _ = std::io::stdout().write_all(results.summary().as_bytes());
    let out = args.out.clone().unwrap_or_else(|| default_out(&args.file));
    if let Err(e) = results.write(&out) {
        eprintln!("error: cannot write {}: {e}", out.display());
        return ExitCode::from(EXIT_ERROR);
    }
    let _ = writeln!(std::io::stdout(), "results: {}", out.display());
    ExitCode::from(results.valid.exit_code())
}

fn default_out(file: &Path) -> PathBuf {
    match file.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.join("results.json"),
        _ => PathBuf::from("results.json"),
    }
}
