//! SIGTERM under a write load: the node hands its leaderships to peers,
//! drains and exits 0 within a bounded time, and every acknowledged write is
//! still there afterwards.

mod common;

use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;
use std::time::Instant;

use common::Cluster;
use common::Opts;
use ringkv_proto::v1::PutRequest;

/// Concurrent writers during the shutdown.
const WRITERS: u64 = 4;
/// Most writes per writer.
const WRITES_MAX: u64 = 1_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_and_exits_zero() {
    common::seed(85);
    let mut c = Cluster::start(Opts::default()).await;
    let acked = Arc::new(Mutex::new(Vec::new()));
    let mut tasks = Vec::new();
    for w in 0..WRITERS {
        // Writers talk to nodes 2 and 3, which stay up.
        let mut kv = c.kv(2 + w % 2).await.expect("connect");
        let acked = acked.clone();
        tasks.push(tokio::spawn(async move {
            let stop = Instant::now() + Duration::from_secs(20);
            for i in 0..WRITES_MAX {
                if Instant::now() > stop {
                    break;
                }
                let k = format!("t85-{w}-{i}");
                let req = PutRequest {
                    header: None,
                    key: k.clone().into_bytes(),
                    value: k.clone().into_bytes(),
                };
                if kv.put(req).await.is_ok() {
                    acked.lock().unwrap().push(k);
                }
            }
        }));
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while acked.lock().unwrap().len() < 100 {
        assert!(Instant::now() < deadline, "no write progress");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let sigterm_at = Instant::now();
    let status = c.terminate(1, Duration::from_secs(30));
    eprintln!("node 1 exited {:?} after SIGTERM", sigterm_at.elapsed());
    assert!(status.success(), "node 1 exited with {status:?}");
    // Before stopping, node 1 handed every leadership it held to a peer.
    let log = std::fs::read_to_string(&c.nodes[&1].log).expect("node 1 log");
    let line = log
        .lines()
        .find(|l| l.contains("leaderships handed off"))
        .unwrap_or_else(|| panic!("node 1 handed off no leadership:\n{log}"));
    let field = |name: &str| -> u64 {
        let at = line
            .find(&format!("{name}="))
            .unwrap_or_else(|| panic!("no {name} in {line}"));
        line[at + name.len() + 1..]
            .split(|c: char| !c.is_ascii_digit())
            .next()
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("bad {name} in {line}"))
    };
    eprintln!("{line}");
    assert!(field("of") >= 1, "{line}");
    assert_eq!(
        field("handed"),
        field("of"),
        "some leaderships were not handed off: {line}"
    );
    for t in tasks {
        t.await.expect("writer");
    }
    let acked = acked.lock().unwrap().clone();
    c.restart(1);
    c.wait_ready().await;
    let deadline = Instant::now() + Duration::from_secs(120);
    for k in &acked {
        let got = c
            .get_retry(k.as_bytes(), deadline)
            .await
            .unwrap_or_else(|e| panic!("get {k}: {e}"));
        assert_eq!(got.as_deref(), Some(k.as_bytes()), "acknowledged write {k} lost");
    }
}
