//! A follower that is down while its shard's log is purged catches up by
//! snapshot when it comes back, and a corrupted snapshot chunk (failpoint
//! `snapshot.corrupt_chunk`) is refused and resent, never installed.
//!
//! Shard 1's follower F is killed, 300 keys are written and both survivors
//! snapshot and purge the log; then the leader is stopped too and F
//! restarted, so the other survivor (whose failpoint is still armed) leads
//! and sends F the snapshot. F must refuse one chunk, install the snapshot
//! and serve every key from its own replica (stale reads).

mod common;

use std::collections::BTreeMap;
use std::time::Duration;
use std::time::Instant;

use common::Cluster;
use common::Opts;
use ringkv_proto::v1::Consistency;
use ringkv_proto::v1::GetRequest;
use ringkv_proto::v1::NodeStatsResponse;
use ringkv_proto::v1::RequestHeader;

const SHARD: u64 = 1;
const KEYS: usize = 300;

fn value_of(i: usize, seed: u64) -> Vec<u8> {
    format!("t40-value-{i}-{seed}").into_bytes()
}

async fn all_stats(c: &Cluster) -> BTreeMap<u64, NodeStatsResponse> {
    let mut out = BTreeMap::new();
    for id in c.running() {
        if let Some(s) = c.node_stats(id).await {
            out.insert(id, s);
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follower_catches_up_by_snapshot_despite_a_corrupt_chunk() {
    let seed = common::seed(40);
    let shards = 2;
    let env: BTreeMap<u64, Vec<(String, String)>> = (1..=3u64)
        .map(|id| {
            (
                id,
                vec![("RINGKV_FAILPOINTS".to_string(), "snapshot.corrupt_chunk=1".to_string())],
            )
        })
        .collect();
    let mut c = Cluster::start(Opts {
        shards,
        extra_args: ["--snapshot-logs-since-last", "50", "--snapshot-logs-to-keep", "0"]
            .iter()
            .map(|s| s.to_string())
            .collect(),
        env,
        ..Opts::default()
    })
    .await;

    // The follower F of shard 1 goes down.
    let leader = c.leader_of(SHARD).await.expect("shard 1 has a leader");
    let follower = (1..=3u64).rev().find(|id| *id != leader).expect("a follower");
    let f_applied = c
        .applied_on(follower, SHARD)
        .await
        .expect("follower answers ClusterStatus");
    eprintln!("shard {SHARD}: leader {leader}, follower {follower} (applied {f_applied}) goes down");
    c.kill(follower);

    // 300 keys of shard 1 written through the survivors.
    let keys: Vec<Vec<u8>> = (0..KEYS)
        .map(|i| common::key_in_shard(&format!("t40-{seed}-{i}"), SHARD, shards))
        .collect();
    let deadline = Instant::now() + Duration::from_secs(240);
    for (i, k) in keys.iter().enumerate() {
        c.put_retry(k, &value_of(i, seed), deadline)
            .await
            .unwrap_or_else(|e| panic!("put key {i} with node {follower} down: {e}"));
    }

    // Snapshot and purge shard 1 on both survivors, past everything F has.
    let survivors = c.running();
    let deadline = Instant::now() + Duration::from_secs(180);
    let mut purged: BTreeMap<u64, u64> = BTreeMap::new();
    let mut last = String::new();
    while purged.len() < survivors.len() {
        let todo: Vec<u64> = survivors
            .iter()
            .copied()
            .filter(|id| !purged.contains_key(id))
            .collect();
        for id in todo {
            match c.trigger_snapshot(id, SHARD).await {
                Ok(r) if r.purged_upto > f_applied + 10 => {
                    eprintln!("TriggerSnapshot on node {id}: {r:?}");
                    purged.insert(id, r.purged_upto);
                }
                Ok(r) => last = format!("node {id} answered {r:?} (follower applied {f_applied})"),
                Err(e) => last = e,
            }
        }
        assert!(
            Instant::now() < deadline,
            "shard {SHARD}: log never purged past the follower's applied index {f_applied} on every survivor: {last}"
        );
        if purged.len() < survivors.len() {
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
    assert!(purged.values().all(|p| *p > 0), "purged_upto must be > 0: {purged:?}");

    // The failpoint counts chunks a process tries to send, and the leader
    // has been trying to send F a snapshot since its log was purged, so its
    // one corruption went to the dead node. The other survivor has sent no
    // chunk (checked below) and still holds its corruption: stop the current
    // leader so that this survivor leads when F returns and sends it the
    // snapshot, its first chunk corrupted.
    let sender_gone = c
        .leader_of(SHARD)
        .await
        .filter(|l| *l != follower)
        .expect("shard 1 leader");
    let sender = *survivors
        .iter()
        .find(|id| **id != sender_gone)
        .expect("the other survivor");
    let before = all_stats(&c).await;
    eprintln!("stats before the follower returns: {before:#?}");
    if before.get(&sender).map_or(0, |s| s.snapshot_chunks_sent) > 0 {
        // It did send chunks (it led shard 1 at some point): a fresh process
        // has its failpoint back.
        eprintln!("node {sender} already sent snapshot chunks; restarting it to re-arm its failpoint");
        c.kill(sender);
        c.restart(sender);
        let deadline = Instant::now() + Duration::from_secs(60);
        while c.status(sender).await.is_none() {
            assert!(Instant::now() < deadline, "node {sender} did not come back within 60 s");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    eprintln!("stopping shard {SHARD} leader {sender_gone}; node {sender} will send the snapshot");
    c.kill(sender_gone);

    // F comes back and must be sent a snapshot.
    c.restart(follower);
    let deadline = Instant::now() + Duration::from_secs(120);
    let f_stats = loop {
        if let Some(s) = c.node_stats(follower).await {
            if s.snapshots_installed >= 1 {
                break s;
            }
        }
        assert!(
            Instant::now() < deadline,
            "node {follower} installed no snapshot within 120 s of its restart (log purged: {purged:?})"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    eprintln!("follower {follower} after catch-up: {f_stats:?}");
    let after = all_stats(&c).await;
    let rejected: u64 = after.values().map(|s| s.snapshot_chunks_rejected).sum();
    let sent: u64 = after.values().map(|s| s.snapshot_chunks_sent).sum();
    eprintln!("snapshot chunks: sent {sent}, rejected {rejected}; per node {after:#?}");
    assert!(
        rejected >= 1,
        "no node refused a snapshot chunk although every sender corrupts its first one"
    );
    let f_rejected = after
        .get(&follower)
        .map_or(f_stats.snapshot_chunks_rejected, |s| s.snapshot_chunks_rejected);
    assert!(
        f_rejected >= 1,
        "the restarted follower {follower} refused no corrupted chunk from node {sender} (rejections on all nodes: {rejected})"
    );

    // F's own replica has every key: stale reads are served locally.
    let mut kv = c.kv(follower).await.expect("connect to the follower");
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut pending: Vec<usize> = (0..KEYS).collect();
    while !pending.is_empty() {
        let mut still = Vec::new();
        let mut last = String::new();
        for i in pending {
            let req = GetRequest {
                header: Some(RequestHeader {
                    consistency: Consistency::Stale as i32,
                    ..RequestHeader::default()
                }),
                key: keys[i].clone(),
            };
            match kv.get(req).await {
                Ok(r) => {
                    let r = r.into_inner();
                    let h = r.header.unwrap_or_default();
                    assert_eq!(
                        h.served_by, follower,
                        "stale read of key {i} was not served by node {follower}: {h:?}"
                    );
                    assert!(!h.forwarded, "stale read of key {i} was forwarded: {h:?}");
                    if !(r.found && r.value == value_of(i, seed)) {
                        last = format!(
                            "key {i}: found {} value {:?}",
                            r.found,
                            String::from_utf8_lossy(&r.value)
                        );
                        still.push(i);
                    }
                }
                Err(s) => {
                    last = format!("key {i}: {:?} {}", s.code(), s.message());
                    still.push(i);
                }
            }
        }
        pending = still;
        if pending.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "node {follower} still lacks {} of {KEYS} keys in its local replica; last: {last}",
            pending.len()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
        if let Some(k) = c.kv(follower).await {
            kv = k;
        }
    }
    eprintln!("node {follower} serves all {KEYS} keys from its own replica");

    // The stopped leader rejoins; the cluster is whole again.
    c.restart(sender_gone);
    c.wait_ready().await;
}
