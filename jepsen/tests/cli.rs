//! The `ringkv-jepsen check` command: exit status, summary and results.json.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use ringkv_jepsen::report::{Results, Validity};

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(format!("{name}.jsonl"))
}

fn ringkv_jepsen(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ringkv-jepsen"))
        .args(args)
        .output()
        .expect("run ringkv-jepsen")
}

fn check(name: &str, out: &Path, extra: &[&str]) -> (i32, String, Results) {
    let file = fixture(name);
    let mut args = vec!["check", file.to_str().unwrap(), "--out", out.to_str().unwrap()];
    args.extend_from_slice(extra);
    let o = ringkv_jepsen(&args);
    let stdout = String::from_utf8_lossy(&o.stdout).into_owned();
    let results: Results = serde_json::from_slice(&std::fs::read(out).expect("results.json written")).unwrap();
    (o.status.code().unwrap(), stdout, results)
}

#[test]
fn exit_status_follows_the_verdict() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("results.json");

    let (code, stdout, r) = check("mixed_valid", &out, &[]);
    assert_eq!(code, 0, "{stdout}");
    assert_eq!(r.valid, Validity::Valid);
    assert_eq!(r.checkers.len(), 3);
    assert!(stdout.contains("overall: VALID"), "{stdout}");

    let (code, stdout, r) = check("register_stale_read", &out, &["--workload", "register"]);
    assert_eq!(code, 1, "{stdout}");
    assert_eq!(r.valid, Validity::Invalid);
    assert!(stdout.contains("nonlinearizable"), "{stdout}");
    let raw: serde_json::Value = serde_json::from_slice(&std::fs::read(&out).unwrap()).unwrap();
    assert_eq!(raw["valid"], false);
    assert_eq!(raw["checkers"]["register"]["valid"], false);

    let (code, stdout, r) = check("register_concurrent", &out, &["--budget-states", "1"]);
    assert_eq!(code, 2, "{stdout}");
    assert_eq!(r.valid, Validity::Unknown);
    let raw: serde_json::Value = serde_json::from_slice(&std::fs::read(&out).unwrap()).unwrap();
    assert_eq!(raw["valid"], "unknown");
}

#[test]
fn results_default_to_the_history_folder() {
    let dir = tempfile::tempdir().unwrap();
    let history = dir.path().join("history.jsonl");
    std::fs::copy(fixture("set_lost"), &history).unwrap();
    let o = ringkv_jepsen(&["check", history.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
    let r: Results = serde_json::from_slice(&std::fs::read(dir.path().join("results.json")).unwrap()).unwrap();
    assert_eq!(r.checkers["set"].anomalies[0].kind, "lost");
}

#[test]
fn usage_and_parse_errors_exit_3() {
    let o = ringkv_jepsen(&["check", fixture("malformed").to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(3));
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(stderr.contains("line 3"), "{stderr}");

    let o = ringkv_jepsen(&["check", "/nonexistent/history.jsonl"]);
    assert_eq!(o.status.code(), Some(3));
    assert_eq!(ringkv_jepsen(&["check"]).status.code(), Some(3));
    assert_eq!(
        ringkv_jepsen(&["check", "x", "--workload", "bank"]).status.code(),
        Some(3)
    );
    assert_eq!(ringkv_jepsen(&["frobnicate"]).status.code(), Some(3));
    assert_eq!(ringkv_jepsen(&["--help"]).status.code(), Some(0));
}
