//! A client that was given only node 1's address keeps reading and writing
//! every shard after node 1 is killed: it learned the other nodes from the
//! ring.

#[path = "../../server/tests/common/mod.rs"]
mod common;

use std::time::Duration;

use common::key_in_shard;
use common::Cluster;
use common::Opts;
use futures::TryStreamExt;
use ringkv_client::Client;
use ringkv_client::Config;

const SHARDS: u32 = 4;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn single_endpoint_client_survives_the_loss_of_that_node() {
    let mut c = Cluster::start(Opts {
        shards: SHARDS,
        ..Opts::default()
    })
    .await;
    let cfg = Config {
        request_timeout: Duration::from_secs(60),
        max_attempts: 200,
        ..Config::default()
    };
    let client = Client::connect_with([c.addr(1)], cfg)
        .await
        .expect("connect through node 1");
    let keys: Vec<Vec<u8>> = (1..=u64::from(SHARDS))
        .map(|s| key_in_shard("t30", s, SHARDS))
        .collect();
    for k in &keys {
        assert_eq!(
            client.shard_of(k),
            Some(common_shard(k)),
            "client ring agrees with the servers'"
        );
        client.put(k, b"before").await.expect("put before the kill");
        assert_eq!(client.get(k).await.expect("get"), Some(b"before".to_vec()));
    }

    c.kill(1);

    for round in 0..3 {
        for k in &keys {
            let v = format!("after-{round}");
            client.put(k, &v).await.expect("put after node 1 died");
            assert_eq!(
                client.get(k).await.expect("get after node 1 died"),
                Some(v.into_bytes())
            );
        }
    }
    let pairs: Vec<(Vec<u8>, Vec<u8>)> = keys.iter().map(|k| (k.clone(), b"batch".to_vec())).collect();
    client.batch_put(&pairs).await.expect("batch put across shards");
    let got = client.batch_get(&keys).await.expect("batch get across shards");
    assert!(got.iter().all(|v| v.as_deref() == Some(&b"batch"[..])), "{got:?}");
    let scanned: Vec<(Vec<u8>, Vec<u8>)> = client.scan("t30-", "t30.").try_collect().await.expect("scan");
    assert_eq!(scanned.len(), keys.len());
    let st = client.cluster_status().await.expect("status from a surviving node");
    assert_ne!(st.served_by, 1);
}

fn common_shard(k: &[u8]) -> u64 {
    let step = u64::MAX / u64::from(SHARDS) + 1;
    ringkv_server::ring::token_of(k) / step + 1
}
