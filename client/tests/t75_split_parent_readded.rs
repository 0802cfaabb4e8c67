//! Reproduces a data loss found by `ringkv-jepsen` (topology nemesis, seed
//! 2026): shard S splits into N on nodes {a, b, c}; S's replica moves from
//! a to node 4 (a keeps N), N takes a write; then S's replica moves back
//! to a. Node a, a learner of S again, receives S's snapshot from before
//! the split (whose install clears S's whole pre-split token range in the
//! shared data column family, N's half included) and replays S's log,
//! including the split, which seeds N's state again (key index, applied
//! log id 0). N's replica on a has lost the write; once a leads N, reads
//! return the value from before the split (or fail with "key index of
//! shard N names a key without data").
//!
//! Fixed by `storage::hosted`: a replica never writes into ranges another
//! shard on its node owns.

#[path = "../../server/tests/common/mod.rs"]
mod common;

use std::time::Duration;
use std::time::Instant;

use common::Cluster;
use common::Opts;
use ringkv_proto::v1::GetRequest;
use ringkv_proto::v1::ListOperationsRequest;
use ringkv_proto::v1::ListShardsRequest;
use ringkv_proto::v1::MoveReplicaRequest;
use ringkv_proto::v1::PutRequest;
use ringkv_proto::v1::SplitShardRequest;
use ringkv_proto::v1::TransferLeaderRequest;
use ringkv_proto::v1::TriggerSnapshotRequest;

const SHARDS: u32 = 2;
const SHARD: u64 = 1;
const TIMEOUT: Duration = Duration::from_secs(60);

async fn wait_no_operations(c: &Cluster) {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let mut a = c.admin(4).await.expect("admin");
        if let Ok(r) = a.list_operations(c.admin_request(ListOperationsRequest {})).await {
            if r.into_inner().operations.is_empty() {
                return;
            }
        }
        assert!(Instant::now() < deadline, "operations still in flight");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn put(c: &Cluster, key: &[u8], v: &str) {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let mut kv = c.kv(4).await.expect("kv");
        let r = kv
            .put(PutRequest {
                header: None,
                key: key.to_vec(),
                value: v.as_bytes().to_vec(),
            })
            .await;
        match r {
            Ok(_) => return,
            Err(e) => assert!(Instant::now() < deadline, "put: {e:?}"),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn get(c: &Cluster, key: &[u8]) -> Result<Option<String>, tonic::Status> {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let mut kv = c.kv(4).await.expect("kv");
        let r = kv
            .get(GetRequest {
                header: None,
                key: key.to_vec(),
            })
            .await;
        match r {
            Ok(r) => {
                let r = r.into_inner();
                return Ok(r.found.then(|| String::from_utf8_lossy(&r.value).into_owned()));
            }
            Err(e) if e.code() == tonic::Code::Internal => return Err(e),
            Err(e) => assert!(Instant::now() < deadline, "get: {e:?}"),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn moving_the_parent_back_after_a_split_keeps_the_childs_writes() {
    let opts = Opts {
        nodes: 4,
        shards: SHARDS,
        extra_args: ["--placement-tick-ms", "200", "--node-alive-ms", "3000"]
            .map(String::from)
            .to_vec(),
        ..Opts::default()
    };
    let c = Cluster::start(opts).await;
    let mut a = c.rebalance_off(4).await;
    // A key in the upper half of shard 1 (the half the split hands to N).
    let key = common::key_in_shard("t75", 2, 4);
    put(&c, &key, "before-split").await;
    // The parent's latest snapshot (and the start of its log) predates the
    // split, as in the run that found it: a new replica of the parent gets
    // that snapshot and replays the split from the log.
    for n in 1..=3 {
        let mut na = c.admin(n).await.expect("admin");
        let mut req = c.admin_request(TriggerSnapshotRequest { shard_id: SHARD });
        req.set_timeout(Duration::from_secs(30));
        let r = na.trigger_snapshot(req).await;
        eprintln!("snapshot of shard {SHARD} on node {n}: {r:?}");
    }

    let r = a
        .split_shard(c.admin_request(SplitShardRequest {
            shard_id: SHARD,
            split_token: 0,
        }))
        .await
        .expect("split")
        .into_inner();
    let child = r.new_shard_id;
    let shards = a
        .list_shards(c.admin_request(ListShardsRequest {}))
        .await
        .expect("shards")
        .into_inner();
    let replicas = shards
        .shards
        .iter()
        .find(|s| s.id == SHARD)
        .expect("parent")
        .replicas
        .clone();
    assert!(
        !replicas.contains(&4),
        "node 4 must not host shard {SHARD}: {replicas:?}"
    );
    let (node_a, node_b) = (replicas[0], replicas[1]);
    eprintln!("split {SHARD} -> {child} on {replicas:?}");

    // The parent leaves node a (which keeps the child) ...
    a.move_replica(c.admin_request(MoveReplicaRequest {
        shard_id: SHARD,
        from_node: node_a,
        to_node: 4,
    }))
    .await
    .expect("move parent a -> 4");
    wait_no_operations(&c).await;
    // ... the child takes a write ...
    put(&c, &key, "after-split").await;
    assert_eq!(get(&c, &key).await.expect("read").as_deref(), Some("after-split"));
    // ... and the parent comes back to node a.
    a.move_replica(c.admin_request(MoveReplicaRequest {
        shard_id: SHARD,
        from_node: node_b,
        to_node: node_a,
    }))
    .await
    .expect("move parent b -> a");
    wait_no_operations(&c).await;

    // Node a leads the child: its copy must still hold the write.
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let r = a
            .transfer_leader(c.admin_request(TransferLeaderRequest {
                shard_id: child,
                to_node: node_a,
            }))
            .await;
        match r {
            Ok(r) if r.get_ref().leader_id == node_a => break,
            other => assert!(Instant::now() < deadline, "transfer to {node_a}: {other:?}"),
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let v = get(&c, &key).await;
    assert_eq!(
        v.as_ref().ok().and_then(|v| v.as_deref()),
        Some("after-split"),
        "node {node_a} lost shard {child}'s write: {v:?}"
    );
}
