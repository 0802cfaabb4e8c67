//! A node that stays down longer than `placement.node_down_replace_ms` has
//! its replicas re-created on the other nodes, under load: every shard
//! returns to three replicas on live nodes, each of which hosts and serves
//! it, and the load sees no error and no lost write.

#[path = "../../server/tests/common/mod.rs"]
mod common;
mod load;

use std::time::Duration;
use std::time::Instant;

use common::Cluster;
use common::Opts;
use ringkv_proto::v1::ListOperationsRequest;
use ringkv_proto::v1::ListShardsRequest;

const SHARDS: u32 = 4;
const DEAD: u64 = 4;
const REPAIR_TIMEOUT: Duration = Duration::from_secs(240);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_of_a_dead_node_are_recreated_elsewhere() {
    let seed = common::seed(72);
    let opts = Opts {
        nodes: 4,
        shards: SHARDS,
        extra_args: [
            "--placement-tick-ms",
            "200",
            "--node-alive-ms",
            "3000",
            "--node-down-replace-ms",
            "8000",
        ]
        .map(String::from)
        .to_vec(),
        ..Opts::default()
    };
    let mut c = Cluster::start(opts).await;
    let client = load::patient_client(&c).await;
    let load = load::Load::start(client.clone(), "t72", 4, seed);
    load.wait_ops(300, Duration::from_secs(60)).await;

    c.kill(DEAD);
    let killed_at = Instant::now();
    let mut a = c.admin(1).await.expect("admin 1");
    let deadline = Instant::now() + REPAIR_TIMEOUT;
    let shards = loop {
        let ops = a.list_operations(c.admin_request(ListOperationsRequest {})).await;
        let shards = a.list_shards(c.admin_request(ListShardsRequest {})).await;
        if let (Ok(ops), Ok(shards)) = (ops, shards) {
            let shards = shards.into_inner().shards;
            let repaired = shards
                .iter()
                .all(|s| s.replicas.len() == 3 && !s.replicas.contains(&DEAD) && s.learners.is_empty());
            if ops.into_inner().operations.is_empty() && repaired {
                break shards;
            }
        }
        assert!(
            Instant::now() < deadline,
            "replicas of node {DEAD} not re-created in time"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    let took = killed_at.elapsed();
    eprintln!("repaired {took:?} after the kill");
    assert!(
        took >= Duration::from_secs(8),
        "repair started before node_down_replace_ms"
    );
    for s in &shards {
        for r in &s.replicas {
            loop {
                let st = c.status(*r).await.expect("status");
                let here = st.shards.iter().find(|x| x.id == s.id).expect("shard");
                if here.hosted_here && here.last_applied_index > 0 {
                    break;
                }
                assert!(Instant::now() < deadline, "node {r} does not host shard {}", s.id);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    load.wait_ops(300, Duration::from_secs(60)).await;
    let report = load.finish(&client).await;
    eprintln!("load: {} ops, {} keys checked", report.ops, report.keys);
    assert!(report.errors.is_empty(), "client-visible errors: {:#?}", report.errors);
}
