//! A write whose reply is lost (its leader aborts right after the write
//! committed, before answering; failpoint `kv.abort_after_write`) is retried
//! by the client with the same client id and sequence and applied exactly
//! once: a CAS expect-absent -> "1" reports success, not a failed condition.
//!
//! Only node 1 carries the failpoint: a retry is proposed again (and
//! answered from the session table) on the new leader, so a failpoint on
//! every node would abort each new leader in turn and leave no quorum.

#[path = "../../server/tests/common/mod.rs"]
mod common;

use std::collections::BTreeMap;
use std::time::Duration;
use std::time::Instant;

use common::key_in_shard;
use common::Cluster;
use common::Opts;
use ringkv_client::Client;
use ringkv_client::Config;

const SHARDS: u32 = 6;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_reply_is_retried_and_applied_once() {
    let mut env = BTreeMap::new();
    env.insert(
        1,
        vec![("RINGKV_FAILPOINTS".to_string(), "kv.abort_after_write=1".to_string())],
    );
    let mut c = Cluster::start(Opts {
        shards: SHARDS,
        env,
        ..Opts::default()
    })
    .await;
    // A shard node 1 leads (bootstrap places leaders round-robin).
    let mut shard = None;
    for s in 1..=u64::from(SHARDS) {
        if c.leader_of(s).await == Some(1) {
            shard = Some(s);
            break;
        }
    }
    let shard = shard.expect("node 1 leads no shard after bootstrap");
    let key = key_in_shard("t20", shard, SHARDS);

    let cfg = Config {
        request_timeout: Duration::from_secs(90),
        max_attempts: 500,
        ..Config::default()
    };
    let client = Client::connect_with(c.nodes.values().map(|n| n.addr.clone()), cfg)
        .await
        .expect("connect");
    assert_eq!(client.shard_of(&key), Some(shard));
    assert_eq!(client.leader_hint(shard), Some(1), "client routes to node 1");

    let out = client
        .compare_and_swap(&key, None, Some(b"1"))
        .await
        .expect("CAS through a lost reply");
    assert!(out.succeeded, "the retry must return the first outcome, got {out:?}");
    assert_eq!(out.previous, None);

    // The failpoint really fired: node 1 is gone.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let exited = c
            .nodes
            .get_mut(&1)
            .and_then(|n| n.child.as_mut())
            .map(|ch| ch.try_wait().expect("wait").is_some())
            .unwrap_or(false);
        if exited {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "node 1 did not abort: the failpoint never fired"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let log = std::fs::read_to_string(&c.nodes[&1].log).unwrap_or_default();
    assert!(
        log.contains("kv.abort_after_write"),
        "node 1's log does not mention the failpoint"
    );
    assert!(
        client.stats().attempts >= 2,
        "the write was retried: {:?}",
        client.stats()
    );

    assert_eq!(client.get(&key).await.expect("get"), Some(b"1".to_vec()));
    // A second CAS on the same condition now fails: the first was applied once.
    let again = client
        .compare_and_swap(&key, None, Some(b"1"))
        .await
        .expect("second CAS");
    assert!(!again.succeeded);
    assert_eq!(again.previous, Some(b"1".to_vec()));

    // Node 1 back (without the failpoint): it agrees.
    c.kill(1);
    c.opts.env.clear();
    c.restart(1);
    c.wait_ready().await;
    let inc = client
        .compare_and_swap(&key, Some(b"1"), Some(b"2"))
        .await
        .expect("CAS 1 -> 2");
    assert!(inc.succeeded);
    assert_eq!(client.get(&key).await.expect("get"), Some(b"2".to_vec()));
}
