//! Short fault-injection runs on a real local cluster (part of `make
//! test`): each must come out valid, and a deliberately broken server
//! (linearizable reads without ReadIndex) must be caught as invalid.

use std::path::PathBuf;
use std::time::Duration;

use ringkv_jepsen::checker::Workload;
use ringkv_jepsen::report::Validity;
use ringkv_jepsen::runner::run;
use ringkv_jepsen::runner::Nemesis;
use ringkv_jepsen::runner::RunConfig;

/// Seconds of load per run.
const TIME_LIMIT_S: u64 = 15;

fn server() -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    let bin = exe
        .parent()
        .and_then(|d| d.parent())
        .expect("target dir")
        .join("ringkv-server");
    assert!(
        bin.exists(),
        "{} not found: cargo build --release -p ringkv-server",
        bin.display()
    );
    bin
}

fn seed() -> u64 {
    let s = std::env::var("RINGKV_JEPSEN_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(7);
    eprintln!("seed {s} (RINGKV_JEPSEN_SEED={s} replays it)");
    s
}

fn config(dir: &tempfile::TempDir, workload: Workload, nemesis: Nemesis, server_args: Vec<String>) -> RunConfig {
    RunConfig {
        server: server(),
        out: dir.path().to_path_buf(),
        workload,
        nemesis,
        nodes: 3,
        shards: 4,
        clients: 6,
        time_limit: Duration::from_secs(TIME_LIMIT_S),
        nemesis_interval: Duration::from_secs(6),
        seed: seed(),
        server_args,
    }
}

async fn expect(workload: Workload, nemesis: Nemesis, server_args: Vec<String>, want: Validity) {
    let dir = tempfile::tempdir().expect("tempdir");
    let results = run(config(&dir, workload, nemesis, server_args)).await.expect("run");
    if results.valid != want {
        let history = std::fs::read_to_string(dir.path().join("results.json")).unwrap_or_default();
        // Keep the evidence for a failing run.
        let keep = dir.keep();
        panic!(
            "{} under {nemesis:?}: {:?}, expected {want:?}; run kept in {}\n{history}",
            workload.name(),
            results.valid,
            keep.display()
        );
    }
    assert!(
        results.history.ok > 100,
        "too few successful operations: {:?}",
        results.history
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn register_under_kill_is_linearizable() {
    expect(Workload::Register, Nemesis::Kill, vec![], Validity::Valid).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn set_under_kill_loses_nothing() {
    expect(Workload::Set, Nemesis::Kill, vec![], Validity::Valid).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counter_under_pause_applies_once() {
    expect(Workload::Counter, Nemesis::Pause, vec![], Validity::Valid).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_without_read_index_are_caught() {
    let broken = vec!["--unsafe-reads-without-read-index".to_string()];
    expect(Workload::Register, Nemesis::Pause, broken, Validity::Invalid).await;
}

/// Runs the `ringkv-jepsen` binary (the partition nemesis re-executes it in
/// a private network namespace) and returns its exit status.
fn run_binary(nemesis: &str, extra: &[&str]) -> i32 {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_ringkv-jepsen"))
        .args(["run", "--workload", "register", "--nemesis", nemesis, "--time-limit"])
        .arg(TIME_LIMIT_S.to_string())
        .args(["--nemesis-interval", "5", "--seed"])
        .arg(seed().to_string())
        .arg("--server")
        .arg(server())
        .arg("--out")
        .arg(dir.path())
        .args(extra)
        .output()
        .expect("run ringkv-jepsen");
    let code = out.status.code().unwrap_or(-1);
    if code == 3 {
        panic!("ringkv-jepsen could not run:\n{}", String::from_utf8_lossy(&out.stderr));
    }
    eprintln!("{}", String::from_utf8_lossy(&out.stderr));
    code
}

#[test]
fn register_under_partitions_is_linearizable() {
    assert_eq!(run_binary("partition", &[]), 0, "expected a valid history");
}

#[test]
fn reads_without_read_index_are_caught_under_partitions() {
    let code = run_binary("partition", &["--server-arg=--unsafe-reads-without-read-index"]);
    assert_eq!(code, 1, "expected the broken build to be caught as invalid");
}
