//! Write 1,000 keys; kill -9 each node in turn and restart it; every value
//! reads back exactly, after each restart.

mod common;

use std::time::Duration;
use std::time::Instant;

use common::Cluster;
use common::Opts;

fn value_of(i: u32, seed: u64) -> Vec<u8> {
    format!("value-{i}-{seed}").into_bytes()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_and_restart_each_node_keeps_every_value() {
    let seed = common::seed(10);
    let mut c = Cluster::start(Opts::default()).await;
    let keys = 1_000u32;
    let deadline = Instant::now() + Duration::from_secs(300);
    for i in 0..keys {
        let k = format!("t10-{i}");
        c.put_retry(k.as_bytes(), &value_of(i, seed), deadline)
            .await
            .unwrap_or_else(|e| panic!("put {k}: {e}"));
    }
    for victim in [1u64, 2, 3] {
        c.kill(victim);
        c.restart(victim);
        c.wait_ready().await;
        let deadline = Instant::now() + Duration::from_secs(180);
        for i in 0..keys {
            let k = format!("t10-{i}");
            let got = c
                .get_retry(k.as_bytes(), deadline)
                .await
                .unwrap_or_else(|e| panic!("get {k}: {e}"));
            assert_eq!(
                got.as_deref(),
                Some(value_of(i, seed).as_slice()),
                "key {k} after restarting node {victim}"
            );
        }
    }
}
