//! Grows a 3-node cluster to 5 under continuous smart-client reads and
//! writes (two nodes started with `--join`), waits for the metadata
//! leader's rebalancer to even out replicas and leaders, then decommissions
//! one of the new nodes under the same load. The load must see no error
//! and no lost write; afterwards replica and leader counts per node are
//! within one of each other, and the decommissioned node holds nothing and
//! has left the layout.

#[path = "../../server/tests/common/mod.rs"]
mod common;
mod load;

use std::collections::BTreeMap;
use std::time::Duration;
use std::time::Instant;

use common::Cluster;
use common::Opts;
use ringkv_proto::v1::admin_client::AdminClient;
use ringkv_proto::v1::ListNodesRequest;
use ringkv_proto::v1::ListNodesResponse;
use ringkv_proto::v1::ListOperationsRequest;
use ringkv_proto::v1::ListShardsRequest;
use ringkv_proto::v1::RemoveNodeRequest;
use tonic::transport::Channel;

const SHARDS: u32 = 8;
const SETTLE_TIMEOUT: Duration = Duration::from_secs(300);

fn spread(counts: impl Iterator<Item = u64>) -> u64 {
    let v: Vec<u64> = counts.collect();
    v.iter().max().unwrap_or(&0) - v.iter().min().unwrap_or(&0)
}

/// Replicas and leaders per node once no move is in flight, or `None`.
async fn settled(c: &Cluster, a: &mut AdminClient<Channel>) -> Option<ListNodesResponse> {
    let ops = a
        .list_operations(c.admin_request(ListOperationsRequest {}))
        .await
        .ok()?
        .into_inner();
    if !ops.operations.is_empty() {
        return None;
    }
    let shards = a
        .list_shards(c.admin_request(ListShardsRequest {}))
        .await
        .ok()?
        .into_inner();
    if shards
        .shards
        .iter()
        .any(|s| !s.learners.is_empty() || s.replicas.len() != 3)
    {
        return None;
    }
    Some(
        a.list_nodes(c.admin_request(ListNodesRequest {}))
            .await
            .ok()?
            .into_inner(),
    )
}

/// Waits until the nodes of `expected` are all up and hold balanced replica
/// and leader counts; returns the final listing.
async fn wait_balanced(c: &Cluster, a: &mut AdminClient<Channel>, expected: &[u64]) -> ListNodesResponse {
    let deadline = Instant::now() + SETTLE_TIMEOUT;
    let mut last = None;
    loop {
        if let Some(n) = settled(c, a).await {
            let ids: Vec<u64> = n.nodes.iter().map(|n| n.id).collect();
            let all_up = n.nodes.iter().all(|n| n.up);
            if ids == expected && all_up {
                let replicas = spread(n.nodes.iter().map(|n| n.replicas));
                let leaders = spread(n.nodes.iter().map(|n| n.leaders));
                let total: u64 = n.nodes.iter().map(|n| n.leaders).sum();
                if replicas <= 1 && leaders <= 1 && total == u64::from(SHARDS) {
                    return n;
                }
            }
            last = Some(n);
        }
        assert!(
            Instant::now() < deadline,
            "not balanced within {SETTLE_TIMEOUT:?}; last listing: {last:#?}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// A plain gRPC client (no routing) reads a key of every shard through
/// every node: nodes that do not host a shard forward to its leader, also
/// when the first replica they know of does not lead it.
async fn every_node_serves_every_shard(c: &Cluster, nodes: &[u64]) {
    for n in nodes {
        let mut kv = c.kv(*n).await.expect("kv");
        for shard in 1..=u64::from(SHARDS) {
            let key = common::key_in_shard("t71-forward", shard, SHARDS);
            let mut last = None;
            for _ in 0..3 {
                let r = kv
                    .get(ringkv_proto::v1::GetRequest {
                        header: None,
                        key: key.clone(),
                    })
                    .await;
                match r {
                    Ok(_) => {
                        last = None;
                        break;
                    }
                    Err(s) => last = Some(s),
                }
            }
            assert!(last.is_none(), "node {n}, shard {shard}: {last:?}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grow_three_to_five_then_decommission_under_load() {
    let seed = common::seed(71);
    let opts = Opts {
        nodes: 3,
        shards: SHARDS,
        extra_args: ["--placement-tick-ms", "200", "--node-alive-ms", "3000"]
            .map(String::from)
            .to_vec(),
        ..Opts::default()
    };
    let mut c = Cluster::start(opts).await;
    let client = load::patient_client(&c).await;
    let load = load::Load::start(client.clone(), "t71", 4, seed);
    load.wait_ops(300, Duration::from_secs(60)).await;

    let four = c.add_joining_node(1, vec![]);
    let five = c.add_joining_node(2, vec![]);
    assert_eq!((four, five), (4, 5));
    let mut a = c.admin(1).await.expect("admin 1");
    let grown = wait_balanced(&c, &mut a, &[1, 2, 3, 4, 5]).await;
    eprintln!("grown: {grown:#?}");
    for n in &grown.nodes {
        assert!(n.replicas >= 4, "node {} holds only {} replicas", n.id, n.replicas);
        assert!(n.leaders >= 1, "node {} leads nothing", n.id);
    }
    load.wait_ops(300, Duration::from_secs(60)).await;
    every_node_serves_every_shard(&c, &[1, 2, 3, 4, 5]).await;

    a.remove_node(c.admin_request(RemoveNodeRequest { node_id: 5 }))
        .await
        .expect("decommission node 5");
    let shrunk = wait_balanced(&c, &mut a, &[1, 2, 3, 4]).await;
    eprintln!("after decommission: {shrunk:#?}");
    // Node 5 deletes every replica it held.
    let deadline = Instant::now() + SETTLE_TIMEOUT;
    loop {
        let st = c.status(5).await.expect("node 5 still answers");
        let hosted: Vec<u64> = st.shards.iter().filter(|s| s.hosted_here).map(|s| s.id).collect();
        if hosted.is_empty() && !st.nodes.iter().any(|n| n.id == 5) {
            break;
        }
        assert!(Instant::now() < deadline, "node 5 still hosts {hosted:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    load.wait_ops(300, Duration::from_secs(60)).await;

    // Every node hosts exactly what the layout assigns it.
    let shards = a
        .list_shards(c.admin_request(ListShardsRequest {}))
        .await
        .expect("list shards")
        .into_inner();
    let mut expected: BTreeMap<u64, Vec<u64>> = BTreeMap::new();
    for s in &shards.shards {
        for r in &s.replicas {
            expected.entry(*r).or_default().push(s.id);
        }
    }
    for (node, want) in expected {
        let st = c.status(node).await.expect("status");
        let hosted: Vec<u64> = st.shards.iter().filter(|s| s.hosted_here).map(|s| s.id).collect();
        assert_eq!(hosted, want, "node {node} hosts other shards than the layout says");
    }

    let report = load.finish(&client).await;
    eprintln!("load: {} ops, {} keys checked", report.ops, report.keys);
    assert!(report.errors.is_empty(), "client-visible errors: {:#?}", report.errors);
}
