//! Fault-injection runs on a real local cluster (part of `make test`):
//! about a minute each of the three workloads together under kill -9,
//! pause, partitions and the topology faults (moves, splits, leader
//! transfers, joins, decommissions), and a shorter one under clock skew,
//! each of which
//! must come out valid; and a deliberately broken server (linearizable
//! reads without ReadIndex) that must be caught as invalid under pauses and
//! under partitions.

use std::path::PathBuf;
use std::time::Duration;

use ringkv_jepsen::checker::Workload;
use ringkv_jepsen::nemesis::Kind;
use ringkv_jepsen::nemesis::NemesisSpec;
use ringkv_jepsen::report::Validity;
use ringkv_jepsen::runner::run;
use ringkv_jepsen::runner::RunConfig;

/// Seconds of load of a run that must come out valid.
const VALID_RUN_S: u64 = 60;
/// Seconds of load of the clock-skew run.
const SKEW_RUN_S: u64 = 30;
/// Seconds of load of a run against the broken build.
const BROKEN_RUN_S: u64 = 15;
/// Mean seconds between faults: long runs, and the short broken-build runs
/// (which need faults early and often).
const INTERVAL_S: u64 = 8;
const BROKEN_INTERVAL_S: u64 = 5;
/// Mean seconds between topology faults: one at a time, so a shorter
/// interval fits a join, decommissions, moves, splits and transfers into
/// one minute.
const TOPOLOGY_INTERVAL_S: u64 = 5;

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

fn config(
    dir: &tempfile::TempDir,
    workloads: &[Workload],
    nemesis: Kind,
    secs: u64,
    server_args: Vec<String>,
) -> RunConfig {
    RunConfig {
        server: server(),
        out: dir.path().to_path_buf(),
        workloads: workloads.to_vec(),
        nemesis: NemesisSpec::of(&[nemesis]),
        nodes: 3,
        shards: 4,
        clients: 6,
        time_limit: Duration::from_secs(secs),
        nemesis_interval: Duration::from_secs(if secs <= BROKEN_RUN_S {
            BROKEN_INTERVAL_S
        } else {
            INTERVAL_S
        }),
        seed: seed(),
        server_args,
        progress: false,
    }
}

/// Runs `cfg`, checks the verdict and the files, and hands the run folder
/// back for further checks.
async fn expect(cfg: RunConfig, dir: tempfile::TempDir, want: Validity) -> tempfile::TempDir {
    let what = format!("{:?} under {}", cfg.workloads, cfg.nemesis);
    let results = run(cfg).await.expect("run");
    if results.valid != want {
        let report = std::fs::read_to_string(dir.path().join("summary.txt")).unwrap_or_default();
        // Keep the evidence for a failing run.
        let keep = dir.keep();
        panic!(
            "{what}: {:?}, expected {want:?}; run kept in {}\n{report}",
            results.valid,
            keep.display()
        );
    }
    assert!(
        results.history.ok > 100,
        "too few successful operations: {:?}",
        results.history
    );
    assert!(
        results.history.nemesis_events >= 2,
        "no fault injected: {:?}",
        results.history
    );
    for f in ["latency.svg", "throughput.svg", "summary.txt", "nemesis-schedule.json"] {
        assert!(dir.path().join(f).exists(), "{f} not written");
    }
    dir
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_workloads_under_kill_are_valid() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = config(&dir, &Workload::ALL, Kind::Kill, VALID_RUN_S, vec![]);
    expect(cfg, dir, Validity::Valid).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_workloads_under_pause_are_valid() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = config(&dir, &Workload::ALL, Kind::Pause, VALID_RUN_S, vec![]);
    expect(cfg, dir, Validity::Valid).await;
}

/// Replica moves, splits, leader transfers, a node join (first: three
/// nodes hold every replica, so a move needs a fourth) and decommissions
/// during the load. The topology faults must have happened, not only been
/// scheduled: some ended `done`, and every node that left was stopped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_workloads_under_topology_changes_are_valid() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cfg = config(&dir, &Workload::ALL, Kind::Move, VALID_RUN_S, vec![]);
    cfg.nemesis = NemesisSpec::of(&Kind::TOPOLOGY);
    cfg.nemesis_interval = Duration::from_secs(TOPOLOGY_INTERVAL_S);
    let dir = expect(cfg, dir, Validity::Valid).await;
    let history = std::fs::read_to_string(dir.path().join("history.jsonl")).expect("history");
    // (stop f, outcome) of every topology fault, and the heal phase's record.
    let mut ends: Vec<(String, String)> = Vec::new();
    let mut settled = false;
    for line in history.lines().filter(|l| l.contains("\"nemesis\"")) {
        let ev: serde_json::Value = serde_json::from_str(line).expect("event");
        let f = ev["f"].as_str().unwrap_or_default().to_string();
        settled |= f == "settle-topology";
        if let Some(o) = ev["value"]["outcome"].as_str() {
            ends.push((f, o.to_string()));
        }
    }
    eprintln!("topology faults ended: {ends:?}");
    let done = |f: &str| ends.iter().any(|(g, o)| g == f && o == "done");
    assert!(done("join-done"), "no node joined: {ends:?}");
    assert!(
        ["move-done", "split-done", "transfer-done", "decommission-done"]
            .iter()
            .any(|f| done(f)),
        "no move, split, transfer or decommission completed: {ends:?}"
    );
    assert!(settled, "no settle-topology event");
}

/// Clock skew through libfaketime; without the library the nemesis is
/// skipped (with a notice) and the run must still be valid.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_workloads_under_clock_skew_are_valid() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = config(&dir, &Workload::ALL, Kind::Skew, SKEW_RUN_S, vec![]);
    if ringkv_jepsen::cluster::FakeTime::find().is_none() {
        eprintln!("notice: libfaketime not installed (Debian package faketime): clock skew is skipped");
        let results = run(cfg).await.expect("run");
        assert_eq!(results.valid, Validity::Valid);
        assert_eq!(results.history.nemesis_events, 0);
        return;
    }
    expect(cfg, dir, Validity::Valid).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_without_read_index_are_caught() {
    let dir = tempfile::tempdir().expect("tempdir");
    let broken = vec!["--unsafe-reads-without-read-index".to_string()];
    let cfg = config(&dir, &[Workload::Register], Kind::Pause, BROKEN_RUN_S, broken);
    expect(cfg, dir, Validity::Invalid).await;
}

/// Runs the `ringkv-jepsen` binary (the partition nemesis re-executes it in
/// a private network namespace) and returns its exit status.
fn run_binary(workload: &str, nemesis: &str, secs: u64, extra: &[&str]) -> i32 {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_ringkv-jepsen"))
        .args([
            "run",
            "--quiet",
            "--workload",
            workload,
            "--nemesis",
            nemesis,
            "--time-limit",
        ])
        .arg(secs.to_string())
        .arg("--nemesis-interval")
        .arg(
            if secs <= BROKEN_RUN_S {
                BROKEN_INTERVAL_S
            } else {
                INTERVAL_S
            }
            .to_string(),
        )
        .arg("--seed")
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
fn all_workloads_under_partitions_are_valid() {
    assert_eq!(
        run_binary("all", "partition", VALID_RUN_S, &[]),
        0,
        "expected a valid history"
    );
}

#[test]
fn reads_without_read_index_are_caught_under_partitions() {
    let code = run_binary(
        "register",
        "partition",
        BROKEN_RUN_S,
        &["--server-arg=--unsafe-reads-without-read-index"],
    );
    assert_eq!(code, 1, "expected the broken build to be caught as invalid");
}
