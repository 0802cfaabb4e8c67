//! Zone labels: four nodes in three zones (`RINGKV_ZONE`), bootstrapped with
//! round-robin placement that puts two replicas of some shards in one zone.
//! Each node records its zone in the layout, and the metadata leader moves
//! replicas until every shard has one replica per zone, while keys written
//! before stay readable.

#[path = "../../server/tests/common/mod.rs"]
mod common;

use std::collections::BTreeMap;
use std::collections::BTreeSet;
use std::time::Duration;
use std::time::Instant;

use common::Cluster;
use common::Opts;
use ringkv_client::Client;
use ringkv_client::Config;

const SHARDS: u32 = 4;
const ZONES: [&str; 4] = ["a", "a", "b", "c"];
const TIMEOUT: Duration = Duration::from_secs(180);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn placement_spreads_replicas_over_zones() {
    common::seed(74);
    let mut opts = Opts {
        nodes: 4,
        shards: SHARDS,
        extra_args: ["--placement-tick-ms", "200", "--node-alive-ms", "3000"]
            .map(String::from)
            .to_vec(),
        ..Opts::default()
    };
    for (i, z) in ZONES.iter().enumerate() {
        opts.env.insert(i as u64 + 1, vec![("RINGKV_ZONE".into(), (*z).into())]);
    }
    let c = Cluster::start(opts).await;
    let client = Client::connect_with(
        c.nodes.values().map(|n| n.addr.clone()),
        Config {
            request_timeout: Duration::from_secs(60),
            max_attempts: 1000,
            ..Config::default()
        },
    )
    .await
    .expect("connect");
    for i in 0..200 {
        client.put(format!("t74-{i}"), format!("v{i}")).await.expect("put");
    }
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let nodes = client.list_nodes().await.expect("list nodes");
        let zones: BTreeMap<u64, String> = nodes.nodes.iter().map(|n| (n.id, n.zone.clone())).collect();
        let shards = client.list_shards().await.expect("list shards");
        let ops = client.list_operations().await.expect("list ops");
        let labelled = zones.values().filter(|z| !z.is_empty()).count() == ZONES.len();
        let spread = shards.shards.iter().all(|s| {
            let zs: BTreeSet<&String> = s.replicas.iter().filter_map(|r| zones.get(r)).collect();
            zs.len() == 3 && s.replicas.len() == 3
        });
        if labelled && spread && ops.operations.is_empty() {
            eprintln!(
                "zones {zones:?}; shards {:?}",
                shards.shards.iter().map(|s| &s.replicas).collect::<Vec<_>>()
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "replicas not spread over zones in time: zones {zones:?}, shards {:?}",
            shards.shards.iter().map(|s| &s.replicas).collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    for i in 0..200 {
        assert_eq!(
            client.get(format!("t74-{i}")).await.expect("get"),
            Some(format!("v{i}").into_bytes()),
            "key {i}"
        );
    }
}
