//! The `ringkv` binary against a real cluster: put/get round trip,
//! `cluster status --json`, the placement subcommands (rebalance, nodes,
//! split, shards, a refused move, ops), exit codes, and one-line errors for a bad
//! endpoint and an oversized value.

#[path = "../../server/tests/common/mod.rs"]
mod common;

use std::io::Write;
use std::process::Command;
use std::process::Output;
use std::process::Stdio;

use common::Cluster;
use common::Opts;

fn ringkv(endpoints: &str, args: &[&str]) -> Output {
    ringkv_stdin(endpoints, args, None)
}

fn ringkv_stdin(endpoints: &str, args: &[&str], stdin: Option<&[u8]>) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_ringkv"))
        .args(["--endpoints", endpoints, "--timeout", "30s"])
        .args(args)
        .env_remove("RINGKV_ENDPOINTS")
        .stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run ringkv");
    if let Some(data) = stdin {
        child.stdin.take().expect("stdin").write_all(data).expect("write stdin");
    }
    child.wait_with_output().expect("ringkv output")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[track_caller]
fn assert_code(o: &Output, code: i32, what: &str) {
    assert_eq!(
        o.status.code(),
        Some(code),
        "{what}: stdout {:?} stderr {:?}",
        text(&o.stdout),
        text(&o.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_round_trips_reports_status_and_fails_in_one_line() {
    let c = Cluster::start(Opts::default()).await;
    let eps = c.nodes.values().map(|n| n.addr.clone()).collect::<Vec<_>>().join(",");

    // put / get round trip, from an argument and from stdin.
    let o = ringkv(&eps, &["put", "greeting", "hello world"]);
    assert_code(&o, 0, "put");
    let o = ringkv(&eps, &["get", "greeting"]);
    assert_code(&o, 0, "get");
    assert_eq!(text(&o.stdout), "hello world\n");
    let o = ringkv_stdin(&eps, &["put", "piped", "-"], Some(b"from stdin"));
    assert_code(&o, 0, "put from stdin");
    let o = ringkv(&eps, &["--json", "get", "piped"]);
    assert_code(&o, 0, "get --json");
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("get --json is JSON");
    assert_eq!(v["value"], "from stdin");
    assert_eq!(v["found"], true);

    // Absent key: exit 1, CAS semantics and exit codes.
    let o = ringkv(&eps, &["get", "nope"]);
    assert_code(&o, 1, "get of an absent key");
    let o = ringkv(&eps, &["cas", "ctr", "--expect-absent", "--new", "1"]);
    assert_code(&o, 0, "cas create");
    let o = ringkv(&eps, &["cas", "ctr", "--expect-absent", "--new", "1"]);
    assert_code(&o, 1, "cas whose condition fails");
    let o = ringkv(&eps, &["cas", "ctr", "--expect", "1", "--delete"]);
    assert_code(&o, 0, "cas delete");
    let o = ringkv(&eps, &["--json", "del", "greeting"]);
    assert_code(&o, 0, "del");
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("del --json is JSON");
    assert_eq!(v["existed"], true);

    // Scan sees what is left, in key order.
    let o = ringkv(&eps, &["scan"]);
    assert_code(&o, 0, "scan");
    assert_eq!(text(&o.stdout), "piped\tfrom stdin\n");

    // cluster status: a table, and JSON with 3 nodes.
    let o = ringkv(&eps, &["cluster", "status"]);
    assert_code(&o, 0, "cluster status");
    assert!(text(&o.stdout).contains("SHARD"), "{}", text(&o.stdout));
    let o = ringkv(&eps, &["cluster", "status", "--json"]);
    assert_code(&o, 0, "cluster status --json");
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("status --json is JSON");
    assert_eq!(v["nodes"].as_array().expect("nodes").len(), 3);
    assert_eq!(v["shards"].as_array().expect("shards").len(), 4);
    assert!(v["epoch"].as_u64().expect("epoch") >= 1);

    // Placement: rebalancing off, nodes, a split, shards, a refused move.
    let o = ringkv(&eps, &["cluster", "rebalance", "off"]);
    assert_code(&o, 0, "cluster rebalance off");
    let o = ringkv(&eps, &["cluster", "nodes", "--json"]);
    assert_code(&o, 0, "cluster nodes --json");
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("nodes --json is JSON");
    assert_eq!(v["rebalance_enabled"], serde_json::Value::Bool(false));
    assert_eq!(v["nodes"].as_array().expect("nodes").len(), 3);
    let o = ringkv(&eps, &["cluster", "split", "2", "--json"]);
    assert_code(&o, 0, "cluster split 2");
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("split --json is JSON");
    assert_eq!(v["new_shard"].as_u64(), Some(5));
    let o = ringkv(&eps, &["cluster", "shards"]);
    assert_code(&o, 0, "cluster shards");
    assert_eq!(text(&o.stdout).lines().count(), 2 + 5, "{}", text(&o.stdout));
    let o = ringkv(&eps, &["get", "piped"]);
    assert_code(&o, 0, "get after the split");
    assert_eq!(text(&o.stdout), "from stdin\n", "reads survive the split");
    // Every node already holds shard 1: a precondition error, one line.
    let o = ringkv(&eps, &["cluster", "move", "1", "1", "2"]);
    assert_code(&o, 6, "move to a node that holds the shard");
    let err = text(&o.stderr);
    assert!(
        err.contains("PRECONDITION_FAILED") && err.lines().count() == 1,
        "{err:?}"
    );
    let o = ringkv(&eps, &["cluster", "ops", "--json"]);
    assert_code(&o, 0, "cluster ops");

    // A bad endpoint: non-zero (unavailable), exactly one stderr line.
    let o = ringkv("127.0.0.1:1", &["get", "greeting"]);
    assert_code(&o, 3, "unreachable endpoint");
    assert_eq!(text(&o.stderr).lines().count(), 1, "stderr: {:?}", text(&o.stderr));
    // A malformed one: usage.
    let o = ringkv("not-an-endpoint", &["get", "greeting"]);
    assert_code(&o, 2, "malformed endpoint");
    assert_eq!(text(&o.stderr).lines().count(), 1, "stderr: {:?}", text(&o.stderr));

    // An oversized value from a file: invalid argument, one stderr line
    // naming the limit.
    let dir = tempfile::tempdir().expect("tempdir");
    let big = dir.path().join("big");
    std::fs::write(&big, vec![b'x'; 1024 * 1024 + 1]).expect("write big file");
    let o = ringkv(&eps, &["put", "big", "--file", big.to_str().expect("utf8")]);
    assert_code(&o, 4, "oversized value");
    let err = text(&o.stderr);
    assert_eq!(err.lines().count(), 1, "stderr: {err:?}");
    assert!(err.contains("value"), "stderr names the limit: {err:?}");
    // A missing file: usage, one line.
    let o = ringkv(&eps, &["put", "k", "--file", "/nonexistent/file"]);
    assert_code(&o, 2, "missing file");
    assert_eq!(text(&o.stderr).lines().count(), 1);
}
