//! Logs: `--log-format json` writes one JSON object per line, and the
//! slow-request log names the method and shard of a slow Kv call.

mod common;

use std::time::Duration;
use std::time::Instant;

use common::Cluster;
use common::Opts;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_and_the_slow_request_log() {
    let c = Cluster::start(Opts {
        nodes: 1,
        shards: 2,
        extra_args: vec![
            "--log-format".into(),
            "json".into(),
            "--slow-request-ms".into(),
            "1".into(),
        ],
        ..Opts::default()
    })
    .await;
    let deadline = Instant::now() + Duration::from_secs(60);
    c.put_retry(b"slow-key", b"v", deadline).await.expect("put");
    let log_path = c.nodes[&1].log.clone();
    // A write waits for a synced log append, which usually takes more than
    // the 1 ms threshold; on a very fast disk, keep writing (larger values)
    // until one is logged.
    let mut i = 0u32;
    loop {
        let text = std::fs::read_to_string(&log_path).expect("read log");
        let events: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("log line is not JSON ({e}): {l}")))
            .collect();
        let slow = events
            .iter()
            .find(|e| e["fields"]["message"] == "slow request" && e["fields"]["method"] == "Put");
        if let Some(e) = slow {
            assert!(e["fields"]["shard"].as_u64().is_some_and(|s| s >= 1), "{e}");
            assert!(e["fields"]["took_ms"].as_u64().is_some(), "{e}");
            assert_eq!(e["level"], "WARN");
            return;
        }
        assert!(
            Instant::now() < deadline,
            "no slow-request line after {i} puts:\n{text}"
        );
        c.put_retry(format!("slow-{i}").as_bytes(), &[0u8; 64 * 1024], deadline)
            .await
            .expect("put");
        i += 1;
    }
}
