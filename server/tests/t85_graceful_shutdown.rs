//! SIGTERM under a write load: the node drains and exits 0 within a bounded
//! time, and every acknowledged write is still there afterwards.

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
    let status = c.terminate(1, Duration::from_secs(15));
    assert!(status.success(), "node 1 exited with {status:?}");
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
