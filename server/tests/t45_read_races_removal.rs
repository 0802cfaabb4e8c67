//! A read that passed its barrier on a replica which then leaves the node
//! (its data deleted) must not answer from the deleted data. The
//! `kv.read_waits_for_removal` failpoint holds a stale read on node 3
//! until the node has unregistered the shard and deleted its data, while a
//! `MoveReplica` moves that replica to a fourth node. The read must then be
//! answered by a node that still holds the shard (forwarded), with the
//! value written before, and the node counts one discarded read.

mod common;

use std::time::Duration;
use std::time::Instant;

use common::Cluster;
use common::Opts;
use ringkv_proto::v1::Consistency;
use ringkv_proto::v1::GetRequest;
use ringkv_proto::v1::ListOperationsRequest;
use ringkv_proto::v1::MoveReplicaRequest;
use ringkv_proto::v1::RequestHeader;

const SHARDS: u32 = 4;
const SHARD: u64 = 1;
const MOVE_TIMEOUT: Duration = Duration::from_secs(180);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_racing_its_replicas_removal_is_answered_elsewhere() {
    let mut opts = Opts {
        nodes: 4,
        shards: SHARDS,
        extra_args: ["--placement-tick-ms", "200"].map(String::from).to_vec(),
        status_ports: true,
        ..Opts::default()
    };
    // The replica that moves away: node 3's (forwarded reads land on the
    // other nodes, which must not hold them).
    let from = 3u64;
    opts.env.insert(
        from,
        vec![("RINGKV_FAILPOINTS".into(), "kv.read_waits_for_removal=1".into())],
    );
    let c = Cluster::start(opts).await;
    let mut admin = c.rebalance_off(1).await;

    let key = common::key_in_shard("t45", SHARD, SHARDS);
    let deadline = Instant::now() + MOVE_TIMEOUT;
    c.put_retry(&key, b"before-the-move", deadline).await.expect("put");

    // Shard 1 lives on nodes 1, 2, 3 at bootstrap. A stale read is served
    // by the replica it reaches, leader or not.
    let leader = c.leader_of(SHARD).await.expect("shard leader");
    let mut kv = c.kv(from).await.expect("kv");
    let read = tokio::spawn({
        let key = key.clone();
        async move {
            let mut req = tonic::Request::new(GetRequest {
                header: Some(RequestHeader {
                    consistency: Consistency::Stale as i32,
                    ..Default::default()
                }),
                key,
            });
            req.set_timeout(MOVE_TIMEOUT);
            kv.get(req).await
        }
    });

    let op = admin
        .move_replica(c.admin_request(MoveReplicaRequest {
            shard_id: SHARD,
            from_node: from,
            to_node: 4,
        }))
        .await
        .expect("move replica")
        .into_inner()
        .operation_id;
    eprintln!("move {op}: shard {SHARD} from node {from} to node 4 (leader {leader})");

    let got = tokio::time::timeout(MOVE_TIMEOUT, read)
        .await
        .expect("the held read answers once the move is done")
        .expect("read task")
        .expect("the read is forwarded to a node that still holds the shard")
        .into_inner();
    assert!(
        got.found && got.value == b"before-the-move",
        "a read served from a deleted replica: {got:?}"
    );

    // The move really finished and the source really deleted its copy.
    let ops = admin
        .list_operations(c.admin_request(ListOperationsRequest {}))
        .await
        .expect("list operations")
        .into_inner();
    assert!(ops.operations.iter().all(|o| o.id != op), "move {op} still running");
    let st = c.status(from).await.expect("status");
    assert!(
        !st.shards.iter().any(|s| s.id == SHARD && s.hosted_here),
        "node {from} still hosts shard {SHARD}"
    );
    let status = c.nodes[&from].status_addr.clone().expect("status port");
    assert_eq!(
        common::metric(&status, "ringkv_reads_raced_removal_total"),
        Some(1.0),
        "node {from} did not count the discarded read"
    );
}
