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
