//! Moves a replica of a shard holding ~16 MiB to a fourth node under
//! continuous smart-client load, driven with the real `grpcurl` binary, and
//! kills the target with -9 in the middle of its catch-up (its snapshot
//! receipt is slowed by the `snapshot.slow_receive` failpoint). The target
//! restarts, the move resumes and completes: the shard ends with three
//! healthy replicas (the target among them, holding every key), the source
//! deletes its copy, and the load saw no error and no lost write.

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
use ringkv_proto::v1::RequestHeader;
use ringkv_proto::v1::TriggerSnapshotRequest;

const SHARDS: u32 = 4;
const SHARD: u64 = 1;
const BIG_KEYS: usize = 256;
const BIG_VALUE_BYTES: usize = 64 * 1024;
const MOVE_TIMEOUT: Duration = Duration::from_secs(240);

fn big_value(i: usize) -> Vec<u8> {
    let mut v = format!("t70-big-{i}-").into_bytes();
    v.resize(BIG_VALUE_BYTES, b'a' + (i % 26) as u8);
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn move_replica_survives_a_target_crash_mid_catch_up() {
    let seed = common::seed(70);
    let mut opts = Opts {
        nodes: 4,
        shards: SHARDS,
        extra_args: ["--placement-tick-ms", "200", "--node-alive-ms", "3000"]
            .map(String::from)
            .to_vec(),
        ..Opts::default()
    };
    opts.env.insert(
        4,
        vec![("RINGKV_FAILPOINTS".into(), "snapshot.slow_receive=1000".into())],
    );
    let mut c = Cluster::start(opts).await;
    let addr1 = c.addr(1).to_string();

    // Rebalancing off: the planner would otherwise move replicas back.
    let r = load::grpcurl(&addr1, "SetRebalance", r#"{"enabled": false}"#);
    assert_eq!(r.get("enabled"), None, "rebalance still on: {r}");

    let client = load::patient_client(&c).await;

    // Shard 1 lives on nodes 1, 2, 3 at bootstrap; fill it.
    let big_keys: Vec<Vec<u8>> = (0..BIG_KEYS)
        .map(|i| common::key_in_shard(&format!("t70-big-{i}"), SHARD, SHARDS))
        .collect();
    for (i, k) in big_keys.iter().enumerate() {
        client.put(k, big_value(i)).await.expect("fill shard");
    }
    // Purge the leader's log so the new replica must receive a snapshot.
    let leader = c.leader_of(SHARD).await.expect("shard leader");
    let mut admin = c.admin(leader).await.expect("admin");
    let mut req = c.admin_request(TriggerSnapshotRequest { shard_id: SHARD });
    req.set_timeout(Duration::from_secs(70));
    admin.trigger_snapshot(req).await.expect("snapshot and purge");

    let load = load::Load::start(client.clone(), "t70", 4, seed);
    load.wait_ops(200, Duration::from_secs(60)).await;

    // Move a replica that is not the leader from its node to node 4.
    let from = [1u64, 2, 3].into_iter().find(|n| *n != leader).expect("a follower");
    let r = load::grpcurl(
        &addr1,
        "MoveReplica",
        &format!(r#"{{"shardId": {SHARD}, "fromNode": {from}, "toNode": 4}}"#),
    );
    let op: u64 = r["operationId"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .expect("operation id");
    eprintln!("move {op}: shard {SHARD} from node {from} to node 4 (leader {leader})");

    // Wait until node 4 is catching up, then kill it.
    let deadline = Instant::now() + MOVE_TIMEOUT;
    loop {
        let ops = load::grpcurl(&addr1, "ListOperations", "{}");
        let step = ops["operations"][0]["step"].as_str().unwrap_or("").to_string();
        if step == "catch_up" {
            break;
        }
        assert!(Instant::now() < deadline, "move never reached catch_up: {ops}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Let a few slowed chunks arrive, so the kill lands mid-transfer.
    load.wait_ops(100, Duration::from_secs(60)).await;
    c.kill(4);
    eprintln!("node 4 killed mid catch-up");
    load.wait_ops(200, Duration::from_secs(60)).await;
    c.restart(4);

    // The move completes.
    let mut a1 = c.admin(1).await.expect("admin 1");
    loop {
        let ops = a1
            .list_operations(c.admin_request(ListOperationsRequest {}))
            .await
            .map(|r| r.into_inner().operations);
        let shards = a1
            .list_shards(c.admin_request(ListShardsRequest {}))
            .await
            .map(|r| r.into_inner().shards);
        if let (Ok(ops), Ok(shards)) = (ops, shards) {
            let s = shards.iter().find(|s| s.id == SHARD).expect("shard listed");
            if ops.is_empty() && s.learners.is_empty() {
                let mut replicas = s.replicas.clone();
                replicas.sort_unstable();
                let mut expected: Vec<u64> = [1, 2, 3, 4].into_iter().filter(|n| *n != from).collect();
                expected.sort_unstable();
                assert_eq!(replicas, expected, "the move rolled back instead of completing");
                break;
            }
        }
        assert!(
            Instant::now() < deadline,
            "move did not complete within {MOVE_TIMEOUT:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    eprintln!("move {op} complete");
    load.wait_ops(200, Duration::from_secs(60)).await;

    // Node 4 holds every big key on its own replica; the source dropped its copy.
    let mut kv4 = c.kv(4).await.expect("kv 4");
    for (i, k) in big_keys.iter().enumerate() {
        let got = loop {
            let r = kv4
                .get(GetRequest {
                    header: Some(RequestHeader {
                        consistency: Consistency::Stale as i32,
                        ..Default::default()
                    }),
                    key: k.clone(),
                })
                .await;
            match r {
                Ok(r) if r.get_ref().found => break r.into_inner().value,
                _ => {
                    assert!(Instant::now() < deadline, "node 4 never served big key {i}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        };
        assert!(got == big_value(i), "big key {i} differs on node 4");
    }
    loop {
        let st = c.status(from).await.expect("status of the source");
        let hosted = st.shards.iter().any(|s| s.id == SHARD && s.hosted_here);
        if !hosted {
            break;
        }
        assert!(Instant::now() < deadline, "node {from} still hosts shard {SHARD}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The restarted target installed a snapshot (the log was purged).
    let installed = c.node_stats(4).await.map_or(0, |s| s.snapshots_installed);
    assert!(installed >= 1, "node 4 caught up without a snapshot");
    // Three healthy replicas: every one has applied recent writes.
    for n in [1u64, 2, 3, 4].into_iter().filter(|n| *n != from) {
        let st = c.status(n).await.expect("status");
        let s = st.shards.iter().find(|s| s.id == SHARD).expect("shard");
        assert!(s.hosted_here && s.last_applied_index > 0, "node {n}: {s:?}");
    }

    let report = load.finish(&client).await;
    eprintln!("load: {} ops, {} keys checked", report.ops, report.keys);
    assert!(report.errors.is_empty(), "client-visible errors: {:#?}", report.errors);
}
