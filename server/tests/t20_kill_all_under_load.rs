//! kill -9 all three nodes in the middle of a concurrent write load;
//! restart them; every acknowledged write is present.

mod common;

use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;
use std::time::Instant;

use common::Cluster;
use common::Opts;
use ringkv_proto::v1::PutRequest;

/// Concurrent writers; each writes its own keys in sequence.
const WRITERS: u64 = 8;
/// Most writes one writer attempts.
const WRITES_PER_WRITER_MAX: u64 = 2_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_writes_survive_killing_every_node() {
    let seed = common::seed(20);
    let mut c = Cluster::start(Opts::default()).await;
    let acked: Arc<Mutex<Vec<(String, String)>>> = Arc::new(Mutex::new(Vec::new()));
    let mut tasks = Vec::new();
    for w in 0..WRITERS {
        let node = w % 3 + 1;
        let Some(mut kv) = c.kv(node).await else {
            panic!("connect node {node}")
        };
        let acked = acked.clone();
        tasks.push(tokio::spawn(async move {
            let stop = Instant::now() + Duration::from_secs(60);
            for i in 0..WRITES_PER_WRITER_MAX {
                if Instant::now() > stop {
                    break;
                }
                let k = format!("t20-{w}-{i}");
                let v = format!("v-{seed}-{w}-{i}");
                let req = PutRequest {
                    header: None,
                    key: k.clone().into_bytes(),
                    value: v.clone().into_bytes(),
                };
                match kv.put(req).await {
                    Ok(_) => acked.lock().unwrap().push((k, v)),
                    // Connection gone: the nodes were killed.
                    Err(s) if s.code() == tonic::Code::Unavailable || s.code() == tonic::Code::Unknown => {
                        if acked.lock().unwrap().len() > 50 {
                            break;
                        }
                    }
                    Err(_) => {}
                }
            }
        }));
    }
    // Kill while the load runs: after some writes were acknowledged.
    let deadline = Instant::now() + Duration::from_secs(120);
    while acked.lock().unwrap().len() < 300 {
        assert!(Instant::now() < deadline, "load made no progress");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for id in [1u64, 2, 3] {
        c.kill(id);
    }
    for t in tasks {
        let _ = t.await;
    }
    let acked = acked.lock().unwrap().clone();
    eprintln!("{} writes acknowledged before the kill", acked.len());
    for id in [1u64, 2, 3] {
        c.restart(id);
    }
    c.wait_ready().await;
    let deadline = Instant::now() + Duration::from_secs(180);
    for (k, v) in &acked {
        let got = c
            .get_retry(k.as_bytes(), deadline)
            .await
            .unwrap_or_else(|e| panic!("get {k}: {e}"));
        assert_eq!(got.as_deref(), Some(v.as_bytes()), "acknowledged write {k} lost");
    }
}
