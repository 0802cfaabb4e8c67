//! A replica moved off a node and later back onto it starts from the vote
//! its deleted predecessor held (the vote tombstone), not from no vote at
//! all, so a stale leader of an old term cannot count it. The re-created
//! replica still catches up, becomes a voter, can be elected, and serves.

mod common;

use std::time::Duration;
use std::time::Instant;

use common::Cluster;
use common::Opts;
use ringkv_proto::v1::GetRequest;
use ringkv_proto::v1::ListOperationsRequest;
use ringkv_proto::v1::MoveReplicaRequest;
use ringkv_proto::v1::TransferLeaderRequest;

const SHARDS: u32 = 4;
const SHARD: u64 = 1;
const TIMEOUT: Duration = Duration::from_secs(120);

/// Moves `SHARD`'s replica from `from` to `to` and waits until the move is
/// done and `from` no longer hosts the shard.
async fn move_replica(c: &Cluster, from: u64, to: u64) {
    let mut a = c.admin(1).await.expect("admin");
    let deadline = Instant::now() + TIMEOUT;
    a.move_replica(c.admin_request(MoveReplicaRequest {
        shard_id: SHARD,
        from_node: from,
        to_node: to,
    }))
    .await
    .expect("move replica");
    loop {
        let ops = a
            .list_operations(c.admin_request(ListOperationsRequest {}))
            .await
            .map(|r| r.into_inner().operations);
        let gone = c
            .status(from)
            .await
            .is_some_and(|st| !st.shards.iter().any(|s| s.id == SHARD && s.hosted_here));
        if ops.is_ok_and(|o| o.is_empty()) && gone {
            return;
        }
        assert!(Instant::now() < deadline, "move {from} -> {to} did not finish");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_readded_replica_starts_from_its_old_vote_and_can_lead() {
    let c = Cluster::start(Opts {
        nodes: 4,
        shards: SHARDS,
        extra_args: ["--placement-tick-ms", "200"].map(String::from).to_vec(),
        ..Opts::default()
    })
    .await;
    let mut admin = c.rebalance_off(1).await;
    let deadline = Instant::now() + TIMEOUT;
    let key = common::key_in_shard("t46", SHARD, SHARDS);
    c.put_retry(&key, b"one", deadline).await.expect("put");

    // Shard 1 starts on nodes 1, 2, 3: away from node 3 and back.
    move_replica(&c, 3, 4).await;
    c.put_retry(&key, b"two", deadline).await.expect("put while away");
    move_replica(&c, 4, 3).await;

    let log = std::fs::read_to_string(&c.nodes[&3].log).expect("node 3 log");
    assert!(
        log.lines()
            .any(|l| l.contains("re-created replica starts from its old vote") && l.contains("shard=1")),
        "node 3 re-created shard 1 without its old vote"
    );

    // The re-created replica votes again once it is a voter: it can win an
    // election and then serve linearizable reads and writes.
    loop {
        if c.leader_of(SHARD).await == Some(3) {
            break;
        }
        let _ = admin
            .transfer_leader(c.admin_request(TransferLeaderRequest {
                shard_id: SHARD,
                to_node: 3,
            }))
            .await;
        assert!(Instant::now() < deadline, "node 3 never led shard {SHARD} again");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let mut kv = c.kv(3).await.expect("kv 3");
    let got = kv
        .get(GetRequest {
            header: None,
            key: key.clone(),
        })
        .await
        .expect("read on node 3")
        .into_inner();
    assert!(got.found && got.value == b"two", "node 3 read {got:?}");
    c.put_retry(&key, b"three", deadline).await.expect("put after");
    assert_eq!(c.get_retry(&key, deadline).await.expect("get"), Some(b"three".to_vec()));
}
