//! A node started with other bootstrap flags than its peers (here another
//! shard count) must not serve with different shard ranges: it sees the
//! metadata group's layout differ from its own and exits with status 2,
//! while the correctly configured nodes keep serving.

mod common;

use std::process::Command;
use std::process::Stdio;
use std::time::Duration;
use std::time::Instant;

use ringkv_proto::v1::kv_client::KvClient;
use ringkv_proto::v1::PutRequest;

/// Kills the nodes however the test ends.
struct Nodes(Vec<std::process::Child>);

impl Drop for Nodes {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_with_another_shard_count_exits() {
    let dir = tempfile::tempdir().expect("tempdir");
    let addrs: Vec<String> = (0..3).map(|_| format!("127.0.0.1:{}", common::free_port())).collect();
    let initial = format!("1={},2={},3={}", addrs[0], addrs[1], addrs[2]);
    let mut children = Nodes(Vec::new());
    for (i, shards) in [(1u64, "4"), (2, "4"), (3, "8")] {
        let log = std::fs::File::create(dir.path().join(format!("node{i}.log"))).expect("log");
        let child = Command::new(common::server_bin())
            .args(["--node-id", &i.to_string(), "--listen", &addrs[i as usize - 1]])
            .args([
                "--data-dir",
                dir.path().join(format!("node{i}")).to_str().expect("utf8"),
            ])
            .args(["--initial-cluster", &initial, "--shards", shards])
            .args(["--heartbeat-interval-ms", "200", "--election-timeout-ms-min", "1500"])
            .args(["--election-timeout-ms-max", "3000"])
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup"))
            .stderr(log)
            .spawn()
            .expect("spawn");
        children.0.push(child);
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    let status = loop {
        if let Some(s) = children.0[2].try_wait().expect("wait") {
            break s;
        }
        assert!(Instant::now() < deadline, "the misconfigured node kept running");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(status.code(), Some(2), "exit status of the misconfigured node");
    let log = std::fs::read_to_string(dir.path().join("node3.log")).expect("read log");
    assert!(log.contains("different initial_cluster or shard count"), "{log}");

    // Nodes 1 and 2 keep serving: a majority of every 4-shard group.
    let ch = tonic::transport::Endpoint::from_shared(format!("http://{}", addrs[0]))
        .expect("uri")
        .timeout(Duration::from_secs(10))
        .connect_lazy();
    let mut kv = KvClient::new(ch);
    loop {
        let req = PutRequest {
            header: None,
            key: b"still-serving".to_vec(),
            value: b"yes".to_vec(),
        };
        match kv.put(req).await {
            Ok(_) => break,
            Err(s) => assert!(Instant::now() < deadline, "nodes 1 and 2 stopped serving: {s:?}"),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
