//! Splits a shard under continuous smart-client reads and writes, through
//! the real `grpcurl` binary: the split is one Raft command applied at the
//! same log index on every replica, the new shard gets its own Raft group on
//! the same nodes, the epoch bumps and clients refresh. Both halves serve
//! afterwards, every key reads its latest acknowledged value, the new shard
//! holds the keys of its half on all three replicas, and one of its
//! replicas can then move. One replica is down during the split and comes
//! back only after the others purged their logs past the split and its old
//! leader was stopped: it never applies the split itself and must receive
//! both halves by snapshot.

#[path = "../../server/tests/common/mod.rs"]
mod common;
mod load;

use std::time::Duration;
use std::time::Instant;

use common::Cluster;
use common::Opts;
use ringkv_proto::v1::Consistency;
use ringkv_proto::v1::GetRequest;
use ringkv_proto::v1::ListOperationsRequest;
use ringkv_proto::v1::ListShardsRequest;
use ringkv_proto::v1::MoveReplicaRequest;
use ringkv_proto::v1::RequestHeader;
use ringkv_proto::v1::TriggerSnapshotRequest;

const SHARDS: u32 = 2;
const SHARD: u64 = 1;
const KEYS: usize = 300;
const TIMEOUT: Duration = Duration::from_secs(180);

fn value(i: usize) -> Vec<u8> {
    format!("t73-value-{i}").into_bytes()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn split_under_load_keeps_every_key_and_both_halves_serve() {
    let seed = common::seed(73);
    let opts = Opts {
        nodes: 4,
        shards: SHARDS,
        extra_args: ["--placement-tick-ms", "200", "--node-alive-ms", "3000"]
            .map(String::from)
            .to_vec(),
        ..Opts::default()
    };
    let mut c = Cluster::start(opts).await;
    // Node 4 holds no replica of shard 1: it stays up and forwards.
    let addr = c.addr(4).to_string();
    // No rebalancing: the test moves a replica itself at the end.
    load::grpcurl(&addr, "SetRebalance", r#"{"enabled": false}"#);
    let client = load::patient_client(&c).await;
    let keys: Vec<Vec<u8>> = (0..KEYS)
        .map(|i| common::key_in_shard(&format!("t73-{i}"), SHARD, SHARDS))
        .collect();
    for (i, k) in keys.iter().enumerate() {
        client.put(k, value(i)).await.expect("fill");
    }
    let epoch_before = client.epoch();
    let load = load::Load::start(client.clone(), "t73", 4, seed);
    load.wait_ops(300, Duration::from_secs(60)).await;
    // A follower of the shard misses the split.
    let leader = c.leader_of(SHARD).await.expect("leader");
    let before = c.status(4).await.expect("status");
    let replicas = before
        .shards
        .iter()
        .find(|s| s.id == SHARD)
        .expect("shard")
        .replicas
        .clone();
    let victim = replicas.iter().copied().find(|n| *n != leader).expect("a follower");
    c.kill(victim);
    eprintln!("node {victim} (a follower of shard {SHARD}) is down during the split");

    let r = load::grpcurl(&addr, "SplitShard", &format!(r#"{{"shardId": {SHARD}}}"#));
    let new_shard: u64 = r["newShardId"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .expect("new shard id");
    let at: u64 = r["splitToken"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .expect("split token");
    eprintln!("shard {SHARD} split at {at} into {new_shard}: {r}");
    assert_eq!(new_shard, u64::from(SHARDS) + 1);
    load.wait_ops(500, Duration::from_secs(60)).await;
    // Both live replicas purge the old shard's log past the split; the
    // leader (whose purge may wait for the victim) stops, the victim comes
    // back: the other survivor leads and can only send snapshots.
    let leader = c.leader_of(SHARD).await.expect("leader");
    let survivors: Vec<u64> = replicas.iter().copied().filter(|n| *n != victim).collect();
    for n in &survivors {
        let mut na = c.admin(*n).await.expect("admin");
        let mut req = c.admin_request(TriggerSnapshotRequest { shard_id: SHARD });
        req.set_timeout(Duration::from_secs(70));
        na.trigger_snapshot(req).await.expect("snapshot and purge");
    }
    c.kill(leader);
    c.restart(victim);
    eprintln!("node {leader} stopped, node {victim} back");
    load.wait_ops(300, Duration::from_secs(120)).await;
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let installed = c.node_stats(victim).await.map_or(0, |s| s.snapshots_installed);
        if installed >= 2 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "node {victim} installed {installed} snapshots, expected both halves"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    c.restart(leader);

    // Both halves in the layout, on the same replicas.
    // The metadata group may still be electing after the restarts.
    let mut a = c.admin(4).await.expect("admin");
    let shards = loop {
        match a.list_shards(c.admin_request(ListShardsRequest {})).await {
            Ok(r) => break r.into_inner(),
            Err(e) => {
                assert!(Instant::now() < deadline, "list shards: {e:?}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    };
    assert!(shards.epoch > epoch_before);
    let old = shards.shards.iter().find(|s| s.id == SHARD).expect("old half").clone();
    let new = shards
        .shards
        .iter()
        .find(|s| s.id == new_shard)
        .expect("new half")
        .clone();
    assert_eq!(old.replicas, new.replicas);
    assert_eq!(old.ranges[0].end, at);
    assert_eq!(new.ranges[0].start, at);

    // Every replica of the new shard serves its half from its own copy.
    let upper: Vec<(usize, &Vec<u8>)> = keys
        .iter()
        .enumerate()
        .filter(|(_, k)| ringkv_client::token_of(k) >= at)
        .collect();
    assert!(
        !upper.is_empty() && upper.len() < KEYS,
        "the split should divide the keys"
    );
    for node in &new.replicas {
        let mut kv = c.kv(*node).await.expect("kv");
        for (i, k) in &upper {
            loop {
                let r = kv
                    .get(GetRequest {
                        header: Some(RequestHeader {
                            consistency: Consistency::Stale as i32,
                            shard_id: new_shard,
                            ..Default::default()
                        }),
                        key: (*k).clone(),
                    })
                    .await;
                match r {
                    Ok(r) if r.get_ref().found => {
                        assert_eq!(r.into_inner().value, value(*i), "node {node}, key {i}");
                        break;
                    }
                    other => {
                        assert!(Instant::now() < deadline, "node {node} never served key {i}: {other:?}");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            }
        }
    }
    // Every key (both halves) still reads its value through the client.
    for (i, k) in keys.iter().enumerate() {
        assert_eq!(client.get(k).await.expect("read"), Some(value(i)), "key {i}");
    }

    // The new shard can move like any other: to the node not holding it.
    let from = new.replicas[0];
    let to = [1u64, 2, 3, 4]
        .into_iter()
        .find(|n| !new.replicas.contains(n))
        .expect("a free node");
    let mut retried = false;
    loop {
        let req = c.admin_request(MoveReplicaRequest {
            shard_id: new_shard,
            from_node: from,
            to_node: to,
        });
        match a.move_replica(req).await {
            Ok(_) => break,
            // An earlier attempt that answered "unavailable" was recorded.
            Err(e) if retried && e.code() == tonic::Code::FailedPrecondition => break,
            Err(e) if e.code() == tonic::Code::Unavailable && Instant::now() < deadline => {
                retried = true;
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("move the new shard: {e:?}"),
        }
    }
    loop {
        let ops = a.list_operations(c.admin_request(ListOperationsRequest {})).await;
        if ops.is_ok_and(|o| o.into_inner().operations.is_empty()) {
            break;
        }
        assert!(Instant::now() < deadline, "move of the new shard did not finish");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    load.wait_ops(300, Duration::from_secs(60)).await;
    for (i, k) in keys.iter().enumerate() {
        assert_eq!(
            client.get(k).await.expect("read"),
            Some(value(i)),
            "key {i} after the move"
        );
    }
    let report = load.finish(&client).await;
    eprintln!("load: {} ops, {} keys checked", report.ops, report.keys);
    assert!(report.errors.is_empty(), "client-visible errors: {:#?}", report.errors);
}
